//! Functions whose output size the client chooses — `lpad` / `rpad` (a length), `repeat` (a count), `array_repeat`
//! and the scalar `range` / `generate_series` (integer bounds) — wrapped so that a call whose output would pass
//! its limit is refused with 54000 ("requested length too large", as PostgreSQL says) before anything is
//! allocated. Without it `lpad('a', 2147483647)` asks the allocator for 2 GiB per row, outside the memory pool.
//! The wrappers change nothing else: same name, signature, types and results.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::compute::kernels::length::length;
use datafusion::arrow::datatypes::{DataType, FieldRef, Int64Type};
use datafusion::common::Result;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};
use datafusion::prelude::SessionContext;

use crate::error::KfsqlError;

/// The most one call may produce, summed over the rows of the batch it is called on: characters of padded
/// strings or bytes of repeated strings ([`MAX_OUTPUT`]), or list elements ([`MAX_ELEMENTS`]).
pub const MAX_OUTPUT: i128 = 64 << 20;
pub const MAX_ELEMENTS: i128 = 8 << 20;

/// How a function's output size follows from its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Size {
    /// `lpad(s, n [, fill])`: n characters.
    Length,
    /// `repeat(s, n)`: n times the bytes of s.
    Repeat,
    /// `array_repeat(x, n)`: n elements.
    Count,
    /// `range(start, stop [, step])`: (stop - start) / step elements.
    Range,
}

impl Size {
    /// The most one call may produce, and of what.
    fn bound(self) -> (i128, &'static str) {
        match self {
            Size::Length => (MAX_OUTPUT, "characters"),
            Size::Repeat => (MAX_OUTPUT, "bytes"),
            Size::Count | Size::Range => (MAX_ELEMENTS, "elements"),
        }
    }
}

/// Replace the functions with bounded ones in `ctx`.
pub fn register(ctx: &SessionContext) {
    let state = ctx.state();
    for (name, size) in [
        ("lpad", Size::Length),
        ("rpad", Size::Length),
        ("repeat", Size::Repeat),
        ("array_repeat", Size::Count),
        ("range", Size::Range),
        ("generate_series", Size::Range),
    ] {
        if let Some(inner) = state.scalar_functions().get(name) {
            ctx.register_udf(ScalarUDF::new_from_impl(Bounded { inner: inner.clone(), size }));
        }
    }
}

#[derive(Debug)]
struct Bounded {
    inner: Arc<ScalarUDF>,
    size: Size,
}

impl PartialEq for Bounded {
    fn eq(&self, other: &Self) -> bool {
        self.size == other.size && self.inner == other.inner
    }
}

impl Eq for Bounded {}

impl Hash for Bounded {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.inner.name().hash(state);
        self.size.hash(state);
    }
}

impl Bounded {
    /// The output the call would produce; an error when it passes its kind's [`Size::bound`].
    fn check(&self, args: &ScalarFunctionArgs) -> Result<()> {
        let rows = args.number_rows;
        let ints = |i: usize| -> Result<Option<ArrayRef>> {
            match args.args.get(i) {
                Some(v) if v.data_type().is_integer() => Ok(Some(cast(&v.to_array(rows)?, &DataType::Int64)?)),
                _ => Ok(None),
            }
        };
        let sum = |a: &ArrayRef, f: &dyn Fn(usize, i128) -> i128| -> i128 {
            let a = a.as_primitive::<Int64Type>();
            (0..a.len()).filter(|i| a.is_valid(*i)).map(|i| f(i, i128::from(a.value(i)).max(0))).sum()
        };
        let requested = match self.size {
            Size::Length | Size::Count => match ints(1)? {
                Some(n) => sum(&n, &|_, n| n),
                None => 0,
            },
            Size::Repeat => match (args.args.first(), ints(1)?) {
                (Some(s), Some(n))
                    if matches!(s.data_type(), DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) =>
                {
                    let bytes = cast(&length(&s.to_array(rows)?)?, &DataType::Int64)?;
                    let bytes = bytes.as_primitive::<Int64Type>();
                    sum(&n, &|i, n| n * i128::from(if bytes.is_valid(i) { bytes.value(i) } else { 0 }))
                }
                _ => 0,
            },
            Size::Range => match (ints(0)?, ints(1)?) {
                (Some(start), Some(stop)) => {
                    let (start, stop) = (start.as_primitive::<Int64Type>(), stop.as_primitive::<Int64Type>());
                    let step = ints(2)?;
                    let step = step.as_ref().map(|s| s.as_primitive::<Int64Type>());
                    (0..rows.min(start.len()).min(stop.len()))
                        .filter(|&i| start.is_valid(i) && stop.is_valid(i))
                        .map(|i| {
                            let by = step.filter(|s| s.is_valid(i)).map_or(1, |s| i128::from(s.value(i))).abs().max(1);
                            (i128::from(stop.value(i)) - i128::from(start.value(i))).abs() / by + 1
                        })
                        .sum()
                }
                _ => 0,
            },
        };
        let (limit, unit) = self.size.bound();
        if requested > limit {
            return Err(KfsqlError::LimitExceeded(format!(
                "requested length too large: {}() would produce {requested} {unit} (at most {limit} per call)",
                self.inner.name(),
            ))
            .into_datafusion());
        }
        Ok(())
    }
}

impl ScalarUDFImpl for Bounded {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }
    fn signature(&self) -> &Signature {
        self.inner.signature()
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        self.check(&args)?;
        self.inner.invoke_with_args(args)
    }
    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
}

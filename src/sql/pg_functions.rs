//! PostgreSQL functions that client catalog queries call and neither DataFusion nor datafusion-pg-catalog provide:
//! `version()` worded as PostgreSQL's (clients parse the server version out of it), `to_regtype(text)`,
//! `pg_get_serial_sequence(table, column)` (Kafka tables have no sequences), `pg_collation_is_visible`,
//! `pg_function_is_visible`, `json_build_object(k, v, …)`, `kfsql_expandarray` (pgjdbc's
//! `information_schema._pg_expandarray`, see [`super::pg_rewrite`]) and the definition functions
//! `pg_get_constraintdef` / `pg_get_indexdef` / `pg_get_triggerdef`, which take any argument types PostgreSQL
//! accepts (clients pass untyped parameters) and answer NULL: kfsql relations have no constraints, indexes or
//! triggers, and PostgreSQL answers NULL for an OID that is none.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int32Array, Int32Builder, ListArray, ListBuilder, StringBuilder,
    StructArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Fields};
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility, create_udf,
};
use datafusion::prelude::SessionContext;

/// Register them all.
pub fn register(ctx: &SessionContext) {
    ctx.register_udf(version());
    ctx.register_udf(pg_get_serial_sequence());
    ctx.register_udf(pg_collation_is_visible());
    ctx.register_udf(like_escape());
    ctx.register_udf(to_regtype());
    ctx.register_udf(ScalarUDF::new_from_impl(JsonBuildObject::new()));
    ctx.register_udf(ScalarUDF::new_from_impl(ExpandArray::new()));
    ctx.register_udf(subscripts());
    ctx.register_udf(current_setting());
    for name in [
        "pg_get_constraintdef",
        "pg_get_indexdef",
        "pg_get_triggerdef",
        "pg_get_function_result",
        "pg_get_function_arguments",
        "pg_get_function_sqlbody",
    ] {
        // objects kfsql does not have: NULL, as PostgreSQL answers for an OID that is none
        ctx.register_udf(Fixed::udf(name, Signature::variadic_any(Volatility::Stable), DataType::Utf8, Answer::Null));
    }
    ctx.register_udf(pg_size_pretty());
    // the size of a Kafka table is the broker's to know, not a catalog fact: unknown, as PostgreSQL answers NULL
    // for a relation it has no size for
    for name in ["pg_table_size", "pg_database_size"] {
        ctx.register_udf(Fixed::udf(name, Signature::any(1, Volatility::Stable), DataType::Int64, Answer::Null));
    }
    // true for a table, whether the OID comes as a number or as text (psql passes a quoted literal)
    ctx.register_udf(Fixed::udf(
        "pg_relation_is_publishable",
        Signature::any(1, Volatility::Stable),
        DataType::Boolean,
        Answer::TrueUnlessNull,
    ));
    // types, functions, operators, … all live in pg_catalog, which is always on the search path
    for name in [
        "pg_type_is_visible",
        "pg_function_is_visible",
        "pg_operator_is_visible",
        "pg_opclass_is_visible",
        "pg_opfamily_is_visible",
        "pg_conversion_is_visible",
        "pg_statistics_obj_is_visible",
        "pg_ts_config_is_visible",
        "pg_ts_dict_is_visible",
        "pg_ts_parser_is_visible",
        "pg_ts_template_is_visible",
    ] {
        let signature = Signature::exact(vec![DataType::Int32], Volatility::Stable);
        ctx.register_udf(Fixed::udf(name, signature, DataType::Boolean, Answer::TrueUnlessNull));
    }
    // kfsql keeps everything in the default tablespace, whose location PostgreSQL reports as ''
    ctx.register_udf(create_udf(
        "pg_tablespace_location",
        vec![DataType::Int32],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(|_| Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(String::new()))))),
    ));
}

/// `pg_size_pretty(bytes)`, PostgreSQL's rounding: bytes below 10 kB, then kB, MB, GB, TB, halving rounded up.
fn pg_size_pretty() -> ScalarUDF {
    create_udf(
        "pg_size_pretty",
        vec![DataType::Int64],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let sizes = ColumnarValue::values_to_arrays(args)?;
            let sizes = datafusion::arrow::compute::cast(&sizes[0], &DataType::Int64)?;
            let sizes = sizes.as_primitive::<datafusion::arrow::datatypes::Int64Type>();
            let mut out = StringBuilder::new();
            for size in sizes.iter() {
                out.append_option(size.map(size_pretty));
            }
            Ok(ColumnarValue::Array(Arc::new(out.finish())))
        }),
    )
}

pub fn size_pretty(bytes: i64) -> String {
    let mut size = bytes;
    for unit in ["bytes", "kB", "MB", "GB", "TB"] {
        if size.abs() < 10 * 1024 || unit == "TB" {
            return format!("{size} {unit}");
        }
        // the next unit, rounded half up
        size = (size / 512 + if size < 0 { -1 } else { 1 }) / 2;
    }
    format!("{size} PB")
}

/// A function whose answer does not depend on its arguments' values: NULL for each row, or true for each row
/// whose first argument is not NULL. It takes the argument types PostgreSQL accepts (clients pass untyped
/// parameters and quoted OIDs).
#[derive(Debug, PartialEq, Eq, Hash)]
struct Fixed {
    name: &'static str,
    signature: Signature,
    returns: DataType,
    answer: Answer,
}

#[derive(Debug, PartialEq, Eq, Hash, Clone, Copy)]
enum Answer {
    Null,
    TrueUnlessNull,
}

impl Fixed {
    fn udf(name: &'static str, signature: Signature, returns: DataType, answer: Answer) -> ScalarUDF {
        ScalarUDF::new_from_impl(Self { name, signature, returns, answer })
    }
}

impl ScalarUDFImpl for Fixed {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(self.returns.clone())
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        match self.answer {
            Answer::Null => Ok(ColumnarValue::Scalar(ScalarValue::try_from(&self.returns)?)),
            Answer::TrueUnlessNull => {
                let arrays = ColumnarValue::values_to_arrays(&args.args)?;
                let out: BooleanArray = (0..arrays[0].len()).map(|i| arrays[0].is_valid(i).then_some(true)).collect();
                Ok(ColumnarValue::Array(Arc::new(out)))
            }
        }
    }
}

/// The function [`super::pg_rewrite`] puts under `unnest(…)` for `generate_subscripts(a, 1)`.
pub const SUBSCRIPTS: &str = "kfsql_subscripts";

/// `kfsql_subscripts(a)`: `[1, 2, …, cardinality(a)]`, NULL for NULL.
fn subscripts() -> ScalarUDF {
    let list = |t: DataType| DataType::List(Arc::new(Field::new("item", t, true)));
    create_udf(
        SUBSCRIPTS,
        vec![list(DataType::Int16)],
        list(DataType::Int32),
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let Some(list) = arrays[0].as_list_opt::<i32>() else {
                return exec_err!("generate_subscripts expects an array");
            };
            let mut out = ListBuilder::new(Int32Builder::new());
            for row in 0..list.len() {
                if list.is_null(row) {
                    out.append(false);
                } else {
                    out.values().append_slice(&(1..=list.value_length(row)).collect::<Vec<i32>>());
                    out.append(true);
                }
            }
            Ok(ColumnarValue::Array(Arc::new(out.finish())))
        }),
    )
}

/// `current_setting(name)`: the server settings clients ask for, with PostgreSQL 15's values; an unknown name is
/// an error, as in PostgreSQL.
fn current_setting() -> ScalarUDF {
    create_udf(
        "current_setting",
        vec![DataType::Utf8],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(|args: &[ColumnarValue]| {
            let names = ColumnarValue::values_to_arrays(args)?;
            let names = datafusion::arrow::compute::cast(&names[0], &DataType::Utf8)?;
            let mut out = StringBuilder::new();
            for name in names.as_string::<i32>().iter() {
                match name.map(|n| setting(&n.to_ascii_lowercase())) {
                    Some(Some(value)) => out.append_value(value),
                    Some(None) => {
                        return exec_err!("unrecognized configuration parameter \"{}\"", name.unwrap_or_default());
                    }
                    None => out.append_null(),
                }
            }
            Ok(ColumnarValue::Array(Arc::new(out.finish())))
        }),
    )
}

/// Server settings as PostgreSQL 15 reports them by default: `current_setting(name)` and `pg_settings`.
pub const SETTINGS: &[(&str, &str)] = &[
    ("server_version", "15.0"),
    ("server_version_num", "150000"),
    ("server_encoding", "UTF8"),
    ("client_encoding", "UTF8"),
    ("standard_conforming_strings", "on"),
    ("integer_datetimes", "on"),
    ("default_table_access_method", "heap"),
    ("search_path", "\"$user\", public"),
    ("datestyle", "ISO, MDY"),
    ("timezone", "UTC"),
    ("intervalstyle", "postgres"),
    ("transaction_isolation", "read committed"),
    ("default_transaction_isolation", "read committed"),
    ("transaction_read_only", "off"),
    ("default_transaction_read_only", "off"),
    ("max_index_keys", "32"),
    ("max_identifier_length", "63"),
    ("lc_collate", "C.UTF-8"),
    ("lc_ctype", "C.UTF-8"),
    ("block_size", "8192"),
    ("is_superuser", "on"),
];

/// The value of a server setting.
pub fn setting(name: &str) -> Option<&'static str> {
    SETTINGS.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

/// The function [`super::pg_rewrite`] puts under `unnest(…)` for `information_schema._pg_expandarray(a)`.
pub const EXPAND_ARRAY: &str = "kfsql_expandarray";

/// `kfsql_expandarray(a)`: the array of records `(x, n)`, each element with its 1-based position.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ExpandArray {
    signature: Signature,
}

impl ExpandArray {
    fn new() -> Self {
        Self { signature: Signature::any(1, Volatility::Immutable) }
    }

    fn record(element: &DataType) -> Fields {
        Fields::from(vec![Field::new("x", element.clone(), true), Field::new("n", DataType::Int32, false)])
    }
}

impl ScalarUDFImpl for ExpandArray {
    fn name(&self) -> &str {
        EXPAND_ARRAY
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        match args.first() {
            Some(DataType::List(f)) => {
                Ok(DataType::List(Arc::new(Field::new("item", DataType::Struct(Self::record(f.data_type())), true))))
            }
            other => exec_err!("_pg_expandarray expects an array, got {other:?}"),
        }
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let Some(list) = arrays[0].as_list_opt::<i32>() else {
            return exec_err!("_pg_expandarray expects an array");
        };
        let offsets = list.offsets();
        let mut positions = vec![0i32; list.values().len()];
        for row in 0..list.len() {
            let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
            for (i, p) in positions[start..end].iter_mut().enumerate() {
                *p = i as i32 + 1;
            }
        }
        let fields = Self::record(list.values().data_type());
        let records = StructArray::try_new(
            fields.clone(),
            vec![list.values().clone(), Arc::new(Int32Array::from(positions))],
            None,
        )?;
        let field = Arc::new(Field::new("item", DataType::Struct(fields), true));
        let out = ListArray::try_new(field, offsets.clone(), Arc::new(records), list.nulls().cloned())?;
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

fn version() -> ScalarUDF {
    let text = format!(
        "PostgreSQL 15.0 (kfsql {} on Apache DataFusion) on {}-pc-linux-gnu, compiled by rustc, 64-bit",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH
    );
    create_udf(
        "version",
        vec![],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(move |_| Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(text.clone()))))),
    )
}

fn pg_get_serial_sequence() -> ScalarUDF {
    create_udf(
        "pg_get_serial_sequence",
        vec![DataType::Utf8, DataType::Utf8],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(|_| Ok(ColumnarValue::Scalar(ScalarValue::Utf8(None)))),
    )
}

/// The function [`super::pg_rewrite`] calls for `LIKE p ESCAPE 'c'` when `p` is not a literal.
pub const LIKE_ESCAPE: &str = "kfsql_like_escape";

/// `kfsql_like_escape(pattern, c)`: a LIKE pattern escaped with `c`, escaped with backslashes instead.
fn like_escape() -> ScalarUDF {
    create_udf(
        LIKE_ESCAPE,
        vec![DataType::Utf8, DataType::Utf8],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let patterns = datafusion::arrow::compute::cast(&arrays[0], &DataType::Utf8)?;
            let escapes = datafusion::arrow::compute::cast(&arrays[1], &DataType::Utf8)?;
            let (patterns, escapes) = (
                datafusion::arrow::array::AsArray::as_string::<i32>(&patterns),
                datafusion::arrow::array::AsArray::as_string::<i32>(&escapes),
            );
            let mut out = StringBuilder::with_capacity(patterns.len(), 64);
            for (p, e) in patterns.iter().zip(escapes.iter()) {
                match (p, e.and_then(|e| e.chars().next())) {
                    (Some(p), Some(e)) => out.append_value(super::pg_rewrite::with_backslash_escapes(p, e)),
                    (p, _) => out.append_option(p),
                }
            }
            let array: ArrayRef = Arc::new(out.finish());
            Ok(if args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_))) {
                ColumnarValue::Scalar(ScalarValue::try_from_array(&array, 0)?)
            } else {
                ColumnarValue::Array(array)
            })
        }),
    )
}

/// Collations: kfsql has only the default one, on every search path.
fn pg_collation_is_visible() -> ScalarUDF {
    create_udf(
        "pg_collation_is_visible",
        vec![DataType::Int32],
        DataType::Boolean,
        Volatility::Stable,
        Arc::new(|_| Ok(ColumnarValue::Scalar(ScalarValue::Boolean(Some(true))))),
    )
}

/// The OIDs of the types kfsql's columns and catalog can have (PostgreSQL's own numbers, as in pg_type).
pub const TYPE_OIDS: &[(&str, i32)] = &[
    ("bool", 16),
    ("boolean", 16),
    ("bytea", 17),
    ("char", 18),
    ("name", 19),
    ("int8", 20),
    ("bigint", 20),
    ("int2", 21),
    ("smallint", 21),
    ("int4", 23),
    ("integer", 23),
    ("int", 23),
    ("regproc", 24),
    ("text", 25),
    ("oid", 26),
    ("json", 114),
    ("float4", 700),
    ("real", 700),
    ("float8", 701),
    ("double precision", 701),
    ("bpchar", 1042),
    ("character", 1042),
    ("varchar", 1043),
    ("character varying", 1043),
    ("date", 1082),
    ("time", 1083),
    ("time without time zone", 1083),
    ("timestamp", 1114),
    ("timestamp without time zone", 1114),
    ("timestamptz", 1184),
    ("timestamp with time zone", 1184),
    ("interval", 1186),
    ("numeric", 1700),
    ("decimal", 1700),
    ("regclass", 2205),
    ("regtype", 2206),
    ("uuid", 2950),
    ("jsonb", 3802),
];

/// `to_regtype('name')`: the type's OID, NULL for a type that does not exist (like PostgreSQL, never an error).
fn to_regtype() -> ScalarUDF {
    create_udf(
        "to_regtype",
        vec![DataType::Utf8],
        DataType::Int32,
        Volatility::Stable,
        Arc::new(|args: &[ColumnarValue]| {
            let lookup = |name: &str| {
                let n = name.trim().trim_start_matches("pg_catalog.").trim_matches('"').to_ascii_lowercase();
                TYPE_OIDS.iter().find(|(t, _)| *t == n).map(|(_, oid)| *oid)
            };
            match &args[0] {
                ColumnarValue::Scalar(v) => {
                    let name = match v {
                        ScalarValue::Utf8(s) | ScalarValue::Utf8View(s) | ScalarValue::LargeUtf8(s) => s.clone(),
                        _ => None,
                    };
                    Ok(ColumnarValue::Scalar(ScalarValue::Int32(name.as_deref().and_then(lookup))))
                }
                ColumnarValue::Array(a) => {
                    let a = datafusion::arrow::compute::cast(a, &DataType::Utf8)?;
                    let strings = datafusion::arrow::array::AsArray::as_string::<i32>(&a);
                    let mut out = Int32Builder::with_capacity(strings.len());
                    for s in strings.iter() {
                        out.append_option(s.and_then(lookup));
                    }
                    Ok(ColumnarValue::Array(Arc::new(out.finish()) as ArrayRef))
                }
            }
        }),
    )
}

/// `json_build_object(k1, v1, k2, v2, …)` as JSON text.
#[derive(Debug, PartialEq, Eq, Hash)]
struct JsonBuildObject {
    signature: Signature,
}

impl JsonBuildObject {
    fn new() -> Self {
        Self { signature: Signature::variadic_any(Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for JsonBuildObject {
    fn name(&self) -> &str {
        "json_build_object"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if !args.args.len().is_multiple_of(2) {
            return exec_err!("json_build_object: argument list must have even number of elements");
        }
        let rows = args.number_rows;
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let mut out = StringBuilder::with_capacity(rows, rows * 32);
        for row in 0..rows {
            let mut object = serde_json::Map::new();
            for pair in arrays.chunks(2) {
                let key = ScalarValue::try_from_array(&pair[0], row)?;
                if key.is_null() {
                    return exec_err!("json_build_object: a key cannot be null");
                }
                let key = match key {
                    ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)) | ScalarValue::LargeUtf8(Some(s)) => s,
                    other => other.to_string(),
                };
                object.insert(key, json_value(&pair[1], row)?);
            }
            out.append_value(serde_json::Value::Object(object).to_string());
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

fn json_value(array: &ArrayRef, row: usize) -> Result<serde_json::Value> {
    use serde_json::Value;
    if array.data_type() == &DataType::Null || array.is_null(row) {
        return Ok(Value::Null);
    }
    Ok(match ScalarValue::try_from_array(array, row)? {
        ScalarValue::Boolean(Some(b)) => Value::Bool(b),
        ScalarValue::Int8(Some(v)) => v.into(),
        ScalarValue::Int16(Some(v)) => v.into(),
        ScalarValue::Int32(Some(v)) => v.into(),
        ScalarValue::Int64(Some(v)) => v.into(),
        ScalarValue::UInt8(Some(v)) => v.into(),
        ScalarValue::UInt16(Some(v)) => v.into(),
        ScalarValue::UInt32(Some(v)) => v.into(),
        ScalarValue::UInt64(Some(v)) => v.into(),
        ScalarValue::Float32(Some(v)) => {
            serde_json::Number::from_f64(v as f64).map(Value::Number).unwrap_or(Value::Null)
        }
        ScalarValue::Float64(Some(v)) => serde_json::Number::from_f64(v).map(Value::Number).unwrap_or(Value::Null),
        ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)) | ScalarValue::LargeUtf8(Some(s)) => {
            Value::String(s)
        }
        other => Value::String(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn postgres_functions_answer_like_postgres() {
        let ctx = SessionContext::new();
        register(&ctx);
        let sql = "SELECT version() LIKE 'PostgreSQL 15.%', to_regtype('int8'), to_regtype('hstore'), \
                   json_build_object('a', 1, 'b', 'x', 'c', NULL, 'd', true), pg_get_serial_sequence('t', 'c')";
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches).unwrap().to_string();
        assert!(text.contains("| true "), "{text}");
        assert!(text.contains("| 20 "), "{text}");
        assert!(text.contains(r#"{"a":1,"b":"x","c":null,"d":true}"#), "{text}");
        assert_eq!(
            [1000, 10240, 10485760, 5 << 30].map(size_pretty),
            ["1000 bytes", "10 kB", "10 MB", "5120 MB"].map(String::from)
        );
        assert_eq!(setting("server_version_num"), Some("150000"));
        assert_eq!(setting("no_such_setting"), None);
    }
}

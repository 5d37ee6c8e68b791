//! Integer arithmetic that fails on overflow, as PostgreSQL's does (`SELECT 9223372036854775807 + 1` is
//! `ERROR: bigint out of range`, SQLSTATE 22003), where DataFusion's `+`, `-` and `*` wrap around silently.
//!
//! DataFusion's physical `BinaryExpr` has a checked mode, but its physical planner never turns it on and offers no
//! hook to. So an analyzer rule, run right after type coercion (before constant folding, which would otherwise
//! fold `9223372036854775807 + 1` into a wrapped literal), replaces `a + b`, `a - b` and `a * b` whose operands are
//! both of one integer type with the checked functions `int_add`, `int_sub` and `int_mul`, computed by arrow's
//! checked kernels (the same kernels the checked `BinaryExpr` would call). Output names are kept, so a column
//! still reads `a + b`. Anything else — floats, decimals, `timestamp + interval` — is left as it is.

use std::sync::Arc;

use datafusion::arrow::array::Datum;
use datafusion::arrow::compute::kernels::numeric;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::error::ArrowError;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DFSchema, DataFusionError, Result, ScalarValue};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::{
    BinaryExpr, ColumnarValue, Expr, ExprSchemable, LogicalPlan, Operator, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, Volatility,
};
use datafusion::optimizer::AnalyzerRule;

/// The analyzer rule that makes integer `+`, `-`, `*` checked.
#[derive(Debug)]
pub struct CheckedArithmetic {
    add: Arc<ScalarUDF>,
    sub: Arc<ScalarUDF>,
    mul: Arc<ScalarUDF>,
}

impl Default for CheckedArithmetic {
    fn default() -> Self {
        Self::new()
    }
}

impl CheckedArithmetic {
    pub fn new() -> Self {
        let udf = |op| Arc::new(ScalarUDF::new_from_impl(CheckedOp::new(op)));
        CheckedArithmetic { add: udf(Op::Add), sub: udf(Op::Sub), mul: udf(Op::Mul) }
    }

    /// Rewrite one expression of a node whose inputs have `schema`.
    fn rewrite(&self, expr: Expr, schema: &DFSchema) -> Result<Transformed<Expr>> {
        expr.transform_up(|e| {
            let Expr::BinaryExpr(BinaryExpr { left, op, right }) = &e else { return Ok(Transformed::no(e)) };
            let udf = match op {
                Operator::Plus => &self.add,
                Operator::Minus => &self.sub,
                Operator::Multiply => &self.mul,
                _ => return Ok(Transformed::no(e)),
            };
            let (Ok(l), Ok(r)) = (left.get_type(schema), right.get_type(schema)) else {
                return Ok(Transformed::no(e));
            };
            if l != r || !l.is_integer() {
                return Ok(Transformed::no(e));
            }
            let args = vec![left.as_ref().clone(), right.as_ref().clone()];
            Ok(Transformed::yes(Expr::ScalarFunction(ScalarFunction::new_udf(Arc::clone(udf), args))))
        })
    }
}

impl AnalyzerRule for CheckedArithmetic {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        plan.transform_up_with_subqueries(|node| {
            let mut schema = DFSchema::empty();
            for input in node.inputs() {
                schema.merge(input.schema());
            }
            if node.inputs().is_empty() {
                schema.merge(node.schema());
            }
            let names = NamePreserver::new(&node);
            node.map_expressions(|expr| {
                let saved = names.save(&expr);
                Ok(self.rewrite(expr, &schema)?.update_data(|e| saved.restore(e)))
            })
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "kfsql_checked_arithmetic"
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Op {
    Add,
    Sub,
    Mul,
}

/// `int_add` / `int_sub` / `int_mul` of two integers of one type.
#[derive(Debug, PartialEq, Eq, Hash)]
struct CheckedOp {
    op: Op,
    signature: Signature,
}

impl CheckedOp {
    fn new(op: Op) -> Self {
        CheckedOp { op, signature: Signature::any(2, Volatility::Immutable) }
    }
}

/// PostgreSQL's name of an integer type, for its "out of range" error.
fn pg_name(t: &DataType) -> &'static str {
    match t {
        DataType::Int8 | DataType::UInt8 | DataType::Int16 => "smallint",
        DataType::Int32 | DataType::UInt16 => "integer",
        _ => "bigint",
    }
}

impl ScalarUDFImpl for CheckedOp {
    fn name(&self) -> &str {
        match self.op {
            Op::Add => "int_add",
            Op::Sub => "int_sub",
            Op::Mul => "int_mul",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        match args {
            [l, r] if l == r && l.is_integer() => Ok(l.clone()),
            _ => {
                Err(DataFusionError::Plan(format!("{}: expected two integers of one type, got {args:?}", self.name())))
            }
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [l, r] = args.args.as_slice() else {
            return Err(DataFusionError::Internal(format!("{} takes two arguments", self.name())));
        };
        let scalar = matches!((l, r), (ColumnarValue::Scalar(_), ColumnarValue::Scalar(_)));
        let datum = |v: &ColumnarValue| -> Result<Box<dyn Datum>> {
            Ok(match v {
                ColumnarValue::Array(a) => Box::new(Arc::clone(a)),
                ColumnarValue::Scalar(s) => Box::new(s.to_scalar()?),
            })
        };
        let (ld, rd) = (datum(l)?, datum(r)?);
        let kernel = match self.op {
            Op::Add => numeric::add,
            Op::Sub => numeric::sub,
            Op::Mul => numeric::mul,
        };
        let out = kernel(ld.as_ref(), rd.as_ref()).map_err(|e| match e {
            ArrowError::ArithmeticOverflow(_) => DataFusionError::ArrowError(
                Box::new(ArrowError::ArithmeticOverflow(format!("{} out of range", pg_name(&l.data_type())))),
                None,
            ),
            other => DataFusionError::ArrowError(Box::new(other), None),
        })?;
        if scalar {
            Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?))
        } else {
            Ok(ColumnarValue::Array(out))
        }
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::record_batch::RecordBatch;
    use datafusion::arrow::util::display::array_value_to_string;
    use datafusion::prelude::SessionContext;

    async fn run(sql: &str) -> Result<Vec<RecordBatch>, String> {
        let state = datafusion::execution::session_state::SessionStateBuilder::new()
            .with_default_features()
            .with_analyzer_rule(std::sync::Arc::new(super::CheckedArithmetic::new()))
            .build();
        let ctx = SessionContext::new_with_state(state);
        ctx.sql(sql).await.map_err(|e| e.to_string())?.collect().await.map_err(|e| e.to_string())
    }

    /// Row `r` of the first batch as text, NULL as "NULL".
    fn row(batches: &[RecordBatch], r: usize) -> Vec<String> {
        let b = &batches[0];
        b.columns()
            .iter()
            .map(|c| if c.is_null(r) { "NULL".into() } else { array_value_to_string(c, r).expect("formats") })
            .collect()
    }

    #[tokio::test]
    async fn integer_overflow_is_an_error_not_a_wrap() {
        for sql in [
            "SELECT 9223372036854775807 + 1",
            "SELECT -9223372036854775807 - 2",
            "SELECT 4611686018427387904 * 2",
            "SELECT x + 1 FROM (VALUES (9223372036854775807)) t(x)",
            "SELECT sum(x * x) FROM (VALUES (CAST(3037000500 AS BIGINT))) t(x)",
            "SELECT 1 FROM (VALUES (CAST(9223372036854775807 AS BIGINT))) t(x) WHERE x + 1 > 0",
            "SELECT (SELECT max(x) + 1 FROM (VALUES (9223372036854775807)) t(x))",
        ] {
            let err = run(sql).await.expect_err(sql);
            assert!(err.contains("bigint out of range"), "{sql}: {err}");
        }
        let err = run("SELECT CAST(2147483647 AS INT) + CAST(1 AS INT)").await.expect_err("int4 overflow");
        assert!(err.contains("integer out of range"), "{err}");
    }

    #[tokio::test]
    async fn in_range_arithmetic_keeps_its_answers_and_names() {
        let sql = "SELECT x + 1, x - 1, x * 3, 2.5 + 1, x / 2 FROM (VALUES (CAST(7 AS BIGINT)), (NULL)) t(x)";
        let batches = run(sql).await.expect("runs");
        let names: Vec<String> = batches[0].schema().fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(
            names,
            ["t.x + Int64(1)", "t.x - Int64(1)", "t.x * Int64(3)", "Float64(2.5) + Int64(1)", "t.x / Int64(2)"]
        );
        assert_eq!(row(&batches, 0), ["8", "6", "21", "3.5", "3"]);
        assert_eq!(row(&batches, 1), ["NULL", "NULL", "NULL", "3.5", "NULL"]);
    }

    #[tokio::test]
    async fn timestamps_and_intervals_are_untouched() {
        let batches = run("SELECT TIMESTAMP '2026-01-01 00:00:00' + INTERVAL '1 day'").await.expect("runs");
        assert_eq!(row(&batches, 0), ["2026-01-02T00:00:00"]);
    }
}

//! The `AsofJoin` logical node.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use datafusion::common::{DFSchemaRef, Result};
use datafusion::logical_expr::logical_plan::builder::build_join_schema;
use datafusion::logical_expr::{Expr, JoinType, LogicalPlan, Operator, UserDefinedLogicalNodeCore};

/// The comparison of the match condition, always written `left_time <op> right_time`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd)]
pub enum AsofOp {
    /// The newest right row at or before the left time (the training-set case).
    GtEq,
    /// The newest right row strictly before.
    Gt,
    /// The oldest right row at or after.
    LtEq,
    /// The oldest right row strictly after.
    Lt,
}

impl AsofOp {
    pub fn from_operator(op: Operator) -> Option<Self> {
        match op {
            Operator::GtEq => Some(AsofOp::GtEq),
            Operator::Gt => Some(AsofOp::Gt),
            Operator::LtEq => Some(AsofOp::LtEq),
            Operator::Lt => Some(AsofOp::Lt),
            _ => None,
        }
    }

    pub fn symbol(&self) -> &'static str {
        match self {
            AsofOp::GtEq => ">=",
            AsofOp::Gt => ">",
            AsofOp::LtEq => "<=",
            AsofOp::Lt => "<",
        }
    }
}

/// `left ASOF JOIN right MATCH_CONDITION (left_time op right_time) ON left_keys = right_keys`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AsofJoin {
    pub left: LogicalPlan,
    pub right: LogicalPlan,
    pub on: Vec<(Expr, Expr)>,
    pub left_time: Expr,
    pub right_time: Expr,
    pub op: AsofOp,
    /// Right rows further than this (nanoseconds) from the left row are no match.
    pub ttl_nanos: Option<i64>,
    pub schema: DFSchemaRef,
}

impl AsofJoin {
    pub fn try_new(
        left: LogicalPlan,
        right: LogicalPlan,
        on: Vec<(Expr, Expr)>,
        left_time: Expr,
        right_time: Expr,
        op: AsofOp,
        ttl_nanos: Option<i64>,
    ) -> Result<Self> {
        let schema = Arc::new(build_join_schema(left.schema(), right.schema(), &JoinType::Left)?);
        Ok(Self { left, right, on, left_time, right_time, op, ttl_nanos, schema })
    }
}

impl PartialOrd for AsofJoin {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        (self == other).then_some(Ordering::Equal)
    }
}

impl UserDefinedLogicalNodeCore for AsofJoin {
    fn name(&self) -> &str {
        "AsofJoin"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.left, &self.right]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    /// Keys in pairs (left, right), then the two times.
    fn expressions(&self) -> Vec<Expr> {
        let mut v: Vec<Expr> = self.on.iter().flat_map(|(l, r)| [l.clone(), r.clone()]).collect();
        v.push(self.left_time.clone());
        v.push(self.right_time.clone());
        v
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "AsofJoin: match=[{} {} {}]", self.left_time, self.op.symbol(), self.right_time)?;
        let on: Vec<String> = self.on.iter().map(|(l, r)| format!("{l} = {r}")).collect();
        write!(f, ", on=[{}]", on.join(", "))?;
        if let Some(t) = self.ttl_nanos {
            write!(f, ", ttl={:?}", std::time::Duration::from_nanos(t.max(0) as u64))?;
        }
        Ok(())
    }

    fn with_exprs_and_inputs(&self, mut exprs: Vec<Expr>, mut inputs: Vec<LogicalPlan>) -> Result<Self> {
        let right = inputs
            .pop()
            .ok_or_else(|| datafusion::error::DataFusionError::Internal("AsofJoin needs two inputs".into()))?;
        let left = inputs
            .pop()
            .ok_or_else(|| datafusion::error::DataFusionError::Internal("AsofJoin needs two inputs".into()))?;
        let right_time =
            exprs.pop().ok_or_else(|| datafusion::error::DataFusionError::Internal("AsofJoin expressions".into()))?;
        let left_time =
            exprs.pop().ok_or_else(|| datafusion::error::DataFusionError::Internal("AsofJoin expressions".into()))?;
        let on = exprs.chunks(2).filter(|c| c.len() == 2).map(|c| (c[0].clone(), c[1].clone())).collect();
        AsofJoin::try_new(left, right, on, left_time, right_time, self.op, self.ttl_nanos)
    }
}

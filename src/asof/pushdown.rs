//! Filters on the left side of an ASOF join move below it.
//!
//! An ASOF join keeps every left row once and picks its right row from that left row's own keys and time, so a
//! predicate over left columns alone gives the same answer before the join as after it — and before it, it reaches
//! the left scan, where `_partition`, `_offset` and `_timestamp` predicates prune what is read. That is what makes a
//! Spark task's `WHERE _partition >= p AND _partition < p + 1` (its JDBC `partitionColumn`) read one Kafka
//! partition of each co-partitioned side instead of joining everything and filtering the result.
//!
//! DataFusion's own filter pushdown cannot do this for an extension node: it pushes a predicate into every input
//! and tells columns apart by name only, while both sides of a Kafka ASOF join have a `_partition`.

use std::sync::Arc;

use datafusion::common::tree_node::Transformed;
use datafusion::error::Result;
use datafusion::logical_expr::utils::{conjunction, split_conjunction_owned};
use datafusion::logical_expr::{Extension, Filter, LogicalPlan};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};

use super::AsofJoin;

/// The rule; see the module documentation.
#[derive(Debug, Default)]
pub struct AsofFilterPushdown;

impl OptimizerRule for AsofFilterPushdown {
    fn name(&self) -> &str {
        "asof_filter_pushdown"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::TopDown)
    }

    fn rewrite(&self, plan: LogicalPlan, _config: &dyn OptimizerConfig) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Filter(filter) = plan else { return Ok(Transformed::no(plan)) };
        let LogicalPlan::Extension(ext) = filter.input.as_ref() else {
            return Ok(Transformed::no(LogicalPlan::Filter(filter)));
        };
        let Some(join) = ext.node.as_any().downcast_ref::<AsofJoin>() else {
            return Ok(Transformed::no(LogicalPlan::Filter(filter)));
        };
        let left_schema = join.left.schema();
        let (mut down, mut keep) = (Vec::new(), Vec::new());
        for p in split_conjunction_owned(filter.predicate.clone()) {
            let refs = p.column_refs();
            let left_only = !refs.is_empty() && refs.iter().all(|c| left_schema.has_column(c)) && !p.is_volatile();
            if left_only { down.push(p) } else { keep.push(p) }
        }
        let Some(down) = conjunction(down) else { return Ok(Transformed::no(LogicalPlan::Filter(filter))) };
        let left = LogicalPlan::Filter(Filter::try_new(down, Arc::new(join.left.clone()))?);
        let moved = AsofJoin::try_new(
            left,
            join.right.clone(),
            join.on.clone(),
            join.left_time.clone(),
            join.right_time.clone(),
            join.op,
            join.ttl_nanos,
        )?;
        let joined = LogicalPlan::Extension(Extension { node: Arc::new(moved) });
        Ok(Transformed::yes(match conjunction(keep) {
            Some(rest) => LogicalPlan::Filter(Filter::try_new(rest, Arc::new(joined))?),
            None => joined,
        }))
    }
}

//! Co-partitioning: when both sides of an ASOF join read Kafka tables partitioned by the join key (same partitioner,
//! same partition count, same key type), partition p of the left side can only match partition p of the right side
//! (DESIGN.md "Keys and partitions"), so the join runs partition by partition with no shuffle and only one partition's
//! right side in memory.
//!
//! Found by walking down each physical input through operators that keep rows in their partition (projections,
//! filters, cooperative wrappers) to a [`KafkaScanExec`], following the join key column.

use std::sync::Arc;

use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;

use crate::table::scan::{KafkaScanExec, KeyPartitioning};

/// One unit of a partition-wise join: the left and right output partitions that hold the same Kafka partition (no
/// right partition: that side read nothing there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionPair {
    pub left: usize,
    pub right: Option<usize>,
}

/// The partition pairs of a co-partitioned join, or None when the sides are not provably co-partitioned.
pub fn partition_pairs(
    left: &Arc<dyn ExecutionPlan>,
    right: &Arc<dyn ExecutionPlan>,
    left_keys: &[Arc<dyn PhysicalExpr>],
    right_keys: &[Arc<dyn PhysicalExpr>],
) -> Option<Vec<PartitionPair>> {
    // Rows equal on every key pair are equal on any one: one co-partitioned pair is enough.
    left_keys.iter().zip(right_keys).find_map(|(l, r)| {
        let (l, r) = (key_partitioning(left, l)?, key_partitioning(right, r)?);
        if !l.compatible(&r) {
            return None;
        }
        let pairs = l
            .kafka_partitions
            .iter()
            .enumerate()
            .map(|(i, &p)| PartitionPair { left: i, right: r.kafka_partitions.iter().position(|&q| q == p) })
            .collect();
        Some(pairs)
    })
}

/// How `plan` places the values of `key` (a column of its output) in its output partitions.
pub fn key_partitioning(plan: &Arc<dyn ExecutionPlan>, key: &Arc<dyn PhysicalExpr>) -> Option<KeyPartitioning> {
    let column = key.downcast_ref::<Column>()?.index();
    source_column(plan, column)
}

fn source_column(plan: &Arc<dyn ExecutionPlan>, column: usize) -> Option<KeyPartitioning> {
    let any = plan.as_ref();
    if let Some(scan) = any.downcast_ref::<KafkaScanExec>() {
        return scan.key_partitioning(column);
    }
    if let Some(p) = any.downcast_ref::<ProjectionExec>() {
        let expr = &p.expr().get(column)?.expr;
        let inner = expr.downcast_ref::<Column>()?.index();
        return source_column(p.input(), inner);
    }
    if let Some(f) = any.downcast_ref::<FilterExec>() {
        let inner = match f.projection() {
            Some(p) => *p.get(column)?,
            None => column,
        };
        return source_column(f.input(), inner);
    }
    if let Some(c) = any.downcast_ref::<CooperativeExec>() {
        return source_column(c.input(), column);
    }
    None
}

/// Physical optimizer rule: keeps a co-partitioned ASOF join partition-wise when DataFusion's distribution pass has
/// spread one of its inputs round-robin (it does so under a filter whose scan reads fewer Kafka partitions than
/// the target parallelism — a Spark task's `_partition` range). The round-robin repartitions between the join and
/// its Kafka scans are dropped when, without them, the sides are co-partitioned; the join then runs one Kafka
/// partition at a time, which is parallel enough, and reads only the right partitions its left side holds.
#[derive(Debug, Default)]
pub struct KeepCopartitioned;

impl datafusion::physical_optimizer::PhysicalOptimizerRule for KeepCopartitioned {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &datafusion::config::ConfigOptions,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        use datafusion::common::tree_node::{Transformed, TreeNode};
        plan.transform_up(|node| {
            let Some(join) = node.as_ref().downcast_ref::<super::AsofJoinExec>() else {
                return Ok(Transformed::no(node));
            };
            if join.is_partition_wise() {
                return Ok(Transformed::no(node));
            }
            let children: Vec<Arc<dyn ExecutionPlan>> = node.children().into_iter().cloned().collect();
            let stripped =
                children.iter().map(|c| without_round_robin(c)).collect::<datafusion::error::Result<Vec<_>>>()?;
            if stripped.iter().zip(&children).all(|(s, c)| Arc::ptr_eq(s, c)) {
                return Ok(Transformed::no(node));
            }
            let candidate =
                datafusion::physical_plan::execution_plan::replace_children_if_necessary(node.clone(), stripped)?;
            match candidate.as_ref().downcast_ref::<super::AsofJoinExec>() {
                Some(j) if j.is_partition_wise() => Ok(Transformed::yes(candidate)),
                _ => Ok(Transformed::no(node)),
            }
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "kfsql_keep_copartitioned"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// `plan` without the round-robin repartitions among its partition-keeping operators (the ones
/// [`key_partitioning`] walks through); the same Arc when there are none.
fn without_round_robin(plan: &Arc<dyn ExecutionPlan>) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
    use datafusion::physical_plan::Partitioning;
    use datafusion::physical_plan::repartition::RepartitionExec;
    let any = plan.as_ref();
    if let Some(r) = any.downcast_ref::<RepartitionExec>()
        && matches!(r.partitioning(), Partitioning::RoundRobinBatch(_))
        && !r.preserve_order()
    {
        return without_round_robin(r.input());
    }
    if any.downcast_ref::<ProjectionExec>().is_some()
        || any.downcast_ref::<FilterExec>().is_some()
        || any.downcast_ref::<CooperativeExec>().is_some()
    {
        let child = plan.children()[0].clone();
        let stripped = without_round_robin(&child)?;
        if Arc::ptr_eq(&stripped, &child) {
            return Ok(plan.clone());
        }
        return datafusion::physical_plan::execution_plan::replace_children_if_necessary(plan.clone(), vec![stripped]);
    }
    Ok(plan.clone())
}

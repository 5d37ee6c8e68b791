//! `COPY … TO 'file'`: how many rows have gone into files so far, for the CLI's progress line.
//!
//! A physical optimizer rule puts a [`CountRowsExec`] under every file sink; it passes batches through unchanged
//! and adds their rows to one counter of the engine as they go by (the sink writes them moments later).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::config::ConfigOptions;
use datafusion::datasource::sink::DataSinkExec;
use datafusion::error::Result;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::StreamExt;

/// Rows handed to file sinks since the engine started.
pub type RowsExported = Arc<AtomicU64>;

/// Passes its input through, counting rows into a shared counter.
#[derive(Debug)]
pub struct CountRowsExec {
    input: Arc<dyn ExecutionPlan>,
    counter: RowsExported,
    metrics: ExecutionPlanMetricsSet,
}

impl CountRowsExec {
    pub fn new(input: Arc<dyn ExecutionPlan>, counter: RowsExported) -> Self {
        Self { input, counter, metrics: ExecutionPlanMetricsSet::new() }
    }
}

impl DisplayAs for CountRowsExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "CountRowsExec: rows into the file")
    }
}

impl ExecutionPlan for CountRowsExec {
    fn name(&self) -> &str {
        "CountRowsExec"
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn datafusion::physical_expr::PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn with_new_children(self: Arc<Self>, mut children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        let input = children
            .pop()
            .ok_or_else(|| datafusion::error::DataFusionError::Internal("CountRowsExec has one child".into()))?;
        Ok(Arc::new(CountRowsExec::new(input, self.counter.clone())))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let schema = input.schema();
        let (counter, baseline) = (self.counter.clone(), BaselineMetrics::new(&self.metrics, partition));
        let counted = input.map(move |batch| {
            if let Ok(b) = &batch {
                counter.fetch_add(b.num_rows() as u64, Ordering::Relaxed);
                baseline.record_output(b.num_rows());
            }
            batch
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, counted)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

/// Puts a [`CountRowsExec`] under every [`DataSinkExec`].
#[derive(Debug)]
pub struct CountExported(pub RowsExported);

impl PhysicalOptimizerRule for CountExported {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            if node.as_ref().downcast_ref::<DataSinkExec>().is_none() {
                return Ok(Transformed::no(node));
            }
            let input = node.children()[0].clone();
            if input.as_ref().downcast_ref::<CountRowsExec>().is_some() {
                return Ok(Transformed::no(node));
            }
            let counted: Arc<dyn ExecutionPlan> = Arc::new(CountRowsExec::new(input, self.0.clone()));
            Ok(Transformed::yes(datafusion::physical_plan::execution_plan::replace_children_if_necessary(
                node,
                vec![counted],
            )?))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "kfsql_count_exported"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

//! `AsofJoinExec`: the physical ASOF join. The right side is read into memory (accounted in DataFusion's memory
//! pool: too large a right side is a resources-exhausted error, not an OOM kill) and indexed by key, each key's rows
//! sorted by (time, offset, partition); every left batch then streams through with one binary search per row.
//!
//! Two modes:
//! * **global**: the whole right side is indexed once and shared by every left partition, probed in parallel;
//! * **partition-wise**, when both sides are Kafka tables co-partitioned by the join key (see [`super::copartition`]):
//!   Kafka partition p's right rows are indexed, partition p's left rows probe them, the index is dropped, then the
//!   next partition. No shuffle, and at most one partition's right side is in memory at any time.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{cast, concat_batches, take};
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning, PlanProperties, execute_stream,
};
use futures::{StreamExt, TryStreamExt};
use tokio::sync::OnceCell;

use super::copartition::{PartitionPair, key_partitioning, partition_pairs};
use super::node::AsofOp;

/// The ASOF join operator.
#[derive(Debug)]
pub struct AsofJoinExec {
    left: Arc<dyn ExecutionPlan>,
    right: Arc<dyn ExecutionPlan>,
    left_keys: Vec<Arc<dyn PhysicalExpr>>,
    right_keys: Vec<Arc<dyn PhysicalExpr>>,
    left_time: Arc<dyn PhysicalExpr>,
    right_time: Arc<dyn PhysicalExpr>,
    op: AsofOp,
    ttl_nanos: Option<i64>,
    /// Columns of the right side breaking ties between equal times: `_offset`, then `_partition`.
    tie: [Option<usize>; 2],
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
    /// Global mode: the right side's index, built by the first partition that needs it and shared.
    index: Arc<OnceCell<Arc<RightIndex>>>,
    /// Partition-wise mode: the (left, right) partitions of each Kafka partition, joined in turn.
    pairs: Option<Vec<PartitionPair>>,
    metrics: ExecutionPlanMetricsSet,
}

/// The hashable bytes of each row's key: a single string key as its own bytes (no copy), anything else in Arrow's
/// row format. Both sides of a join encode the same way, as the probe side is cast to the build side's types.
enum Keys {
    Utf8(ArrayRef),
    Rows(datafusion::arrow::row::Rows),
}

impl Keys {
    fn new(arrays: &[ArrayRef], converter: &RowConverter) -> Result<Self> {
        match arrays {
            [a] if matches!(a.data_type(), DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) => {
                Ok(Keys::Utf8(a.clone()))
            }
            _ => Ok(Keys::Rows(converter.convert_columns(arrays)?)),
        }
    }

    fn get(&self, i: usize) -> &[u8] {
        use datafusion::arrow::array::AsArray;
        match self {
            Keys::Utf8(a) => match a.data_type() {
                DataType::Utf8View => a.as_string_view().value(i).as_bytes(),
                DataType::LargeUtf8 => a.as_string::<i64>().value(i).as_bytes(),
                _ => a.as_string::<i32>().value(i).as_bytes(),
            },
            Keys::Rows(r) => r.row(i).data(),
        }
    }
}

/// Encoded key → that key's (time, row) pairs. aHash: the default SipHash made the build three times slower.
type KeyMap = std::collections::HashMap<Box<[u8]>, Vec<(i64, u32)>, ahash::RandomState>;

/// The right side, indexed by key.
#[derive(Debug)]
struct RightIndex {
    batch: RecordBatch,
    /// Per key: (time, row) sorted by time then tie-breakers.
    groups: KeyMap,
    converter: RowConverter,
    key_types: Vec<DataType>,
    /// The memory pool's account of this index; released with it.
    _reservation: MemoryReservation,
}

impl AsofJoinExec {
    /// Whether the join runs Kafka partition by Kafka partition (its sides are co-partitioned by the key).
    pub fn is_partition_wise(&self) -> bool {
        self.pairs.is_some()
    }

    #[allow(clippy::too_many_arguments)]
    pub fn try_new(
        left: Arc<dyn ExecutionPlan>,
        right: Arc<dyn ExecutionPlan>,
        left_keys: Vec<Arc<dyn PhysicalExpr>>,
        right_keys: Vec<Arc<dyn PhysicalExpr>>,
        left_time: Arc<dyn PhysicalExpr>,
        right_time: Arc<dyn PhysicalExpr>,
        op: AsofOp,
        ttl_nanos: Option<i64>,
        tie: [Option<usize>; 2],
        schema: SchemaRef,
    ) -> Result<Self> {
        if let Ok(f) = right.schema().field_with_name(HISTORY_COLUMN)
            && f.data_type() != &DataType::Boolean
        {
            return Err(DataFusionError::Plan(format!(
                "the ASOF join fills the right side's column {HISTORY_COLUMN}: it must be BOOLEAN, not {}",
                f.data_type()
            )));
        }
        let pairs = partition_pairs(&left, &right, &left_keys, &right_keys);
        let partitioning = match &pairs {
            Some(_) => Partitioning::UnknownPartitioning(1),
            None => left.output_partitioning().clone(),
        };
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            partitioning,
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(Self {
            left,
            right,
            left_keys,
            right_keys,
            left_time,
            right_time,
            op,
            ttl_nanos,
            tie,
            schema,
            properties: Arc::new(properties),
            index: Arc::new(OnceCell::new()),
            pairs,
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }
}

impl DisplayAs for AsofJoinExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let keys: Vec<String> =
            self.left_keys.iter().zip(&self.right_keys).map(|(l, r)| format!("{l} = {r}")).collect();
        write!(
            f,
            "AsofJoinExec: match=[{} {} {}], on=[{}]",
            self.left_time,
            self.op.symbol(),
            self.right_time,
            keys.join(", ")
        )?;
        if let Some(t) = self.ttl_nanos {
            write!(f, ", ttl={:?}", std::time::Duration::from_nanos(t.max(0) as u64))?;
        }
        if let Some(pairs) = &self.pairs {
            write!(f, ", partition_wise=[{} Kafka partitions, one at a time]", pairs.len())?;
        }
        Ok(())
    }
}

/// A right-side column the join fills: true where the left row found no match while history it might have matched
/// is gone from Kafka, false otherwise.
pub const HISTORY_COLUMN: &str = "_history_gone";

impl AsofJoinExec {
    /// The counter of left rows without history, when the right side reads truncated Kafka partitions.
    fn without_history(&self, partition: usize) -> Option<WithoutHistory> {
        let truncated: Vec<i32> = crate::table::history::in_plan(&self.right)
            .into_iter()
            .flat_map(|t| t.partitions.into_iter().map(|(p, _)| p))
            .collect();
        if truncated.is_empty() {
            return None;
        }
        let placement = self.right_keys.iter().enumerate().find_map(|(i, k)| {
            let kp = key_partitioning(&self.right, k)?;
            Some((i, kp.partitioner, kp.partition_count, truncated.clone()))
        });
        Some(WithoutHistory {
            count: MetricBuilder::new(&self.metrics).counter("left_without_history", partition),
            placement,
        })
    }
}

impl ExecutionPlan for AsofJoinExec {
    fn name(&self) -> &str {
        "AsofJoinExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.left, &self.right]
    }

    /// A repartition under a partition-wise join would break its co-partitioning; the global mode's right side is
    /// read whole anyway.
    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![self.pairs.is_none(), false]
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        for e in self.left_keys.iter().chain(&self.right_keys).chain([&self.left_time, &self.right_time]) {
            if f(e)? == TreeNodeRecursion::Stop {
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(self: Arc<Self>, mut children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        let (Some(right), Some(left)) = (children.pop(), children.pop()) else {
            return Err(DataFusionError::Internal("AsofJoinExec has two children".into()));
        };
        Ok(Arc::new(AsofJoinExec::try_new(
            left,
            right,
            self.left_keys.clone(),
            self.right_keys.clone(),
            self.left_time.clone(),
            self.right_time.clone(),
            self.op,
            self.ttl_nanos,
            self.tie,
            self.schema.clone(),
        )?))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let build = IndexSpec {
            keys: self.right_keys.clone(),
            time: self.right_time.clone(),
            tie: self.tie,
            peak: MetricBuilder::new(&self.metrics).gauge("right_mem_peak", partition),
        };
        let probe_spec = Arc::new(ProbeSpec {
            keys: self.left_keys.clone(),
            time: self.left_time.clone(),
            op: self.op,
            ttl: self.ttl_nanos,
            schema: self.schema.clone(),
            // a right side read from truncated Kafka partitions: count the left rows that found nothing to match,
            // since a value Kafka no longer holds could have matched them (EXPLAIN ANALYZE: left_without_history)
            without_history: self.without_history(partition),
            history_column: self.right.schema().index_of(HISTORY_COLUMN).ok(),
        });
        let Some(pairs) = self.pairs.clone() else {
            let left = self.left.execute(partition, context.clone())?;
            let (right, index) = (self.right.clone(), self.index.clone());
            let stream = futures::stream::once(async move {
                let idx = index
                    .get_or_try_init(|| async {
                        let input = execute_stream(right, context.clone())?;
                        build.build(input, &context).await.map(Arc::new)
                    })
                    .await?
                    .clone();
                Ok::<_, DataFusionError>(probe_all(left, idx, probe_spec))
            })
            .try_flatten();
            return Ok(Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), stream)));
        };
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "a partition-wise AsofJoinExec has one partition, not {partition}"
            )));
        }
        let (left, right) = (self.left.clone(), self.right.clone());
        let build = Arc::new(build);
        // One Kafka partition at a time: `then` builds the next index only after `try_flatten` has drained (and
        // dropped) the previous partition's probe stream, which owns that partition's index.
        let stream = futures::stream::iter(pairs)
            .then(move |pair| {
                let (left, right, context) = (left.clone(), right.clone(), context.clone());
                let (build, probe_spec) = (build.clone(), probe_spec.clone());
                async move {
                    // start reading the left partition while its right side is indexed
                    let left = left.execute(pair.left, context.clone())?;
                    let input = match pair.right {
                        Some(r) => right.execute(r, context.clone())?,
                        None => Box::pin(RecordBatchStreamAdapter::new(right.schema(), futures::stream::empty())),
                    };
                    let idx = Arc::new(build.build(input, &context).await?);
                    Ok::<_, DataFusionError>(probe_all(left, idx, probe_spec))
                }
            })
            .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), stream)))
    }
}

/// What the probe side needs, shared by the streams of one execution.
struct ProbeSpec {
    keys: Vec<Arc<dyn PhysicalExpr>>,
    time: Arc<dyn PhysicalExpr>,
    op: AsofOp,
    ttl: Option<i64>,
    schema: SchemaRef,
    without_history: Option<WithoutHistory>,
    /// The right side's [`HISTORY_COLUMN`], if it has one.
    history_column: Option<usize>,
}

/// Counts left rows that found no right row to match while the right side's history is truncated.
struct WithoutHistory {
    count: datafusion::physical_plan::metrics::Count,
    /// When the right key is a Kafka message key: which key column, how keys were placed, and the truncated
    /// partitions; only rows whose key lives in one of those count. None: every unmatched row counts.
    placement: Option<(usize, crate::kafka::Partitioner, i32, Vec<i32>)>,
}

impl WithoutHistory {
    fn counts(&self, keys: &[ArrayRef], row: usize) -> bool {
        let Some((column, partitioner, count, truncated)) = &self.placement else { return true };
        let Some(key) =
            keys.get(*column).and_then(|k| datafusion::arrow::array::AsArray::as_string_opt::<i32>(k.as_ref()))
        else {
            return true;
        };
        partitioner.partition_for(key.value(row).as_bytes(), *count).is_none_or(|p| truncated.contains(&p))
    }
}

/// Probe every batch of `left` against `idx`; the stream owns the index and frees it when done.
fn probe_all(
    left: SendableRecordBatchStream,
    idx: Arc<RightIndex>,
    spec: Arc<ProbeSpec>,
) -> impl futures::Stream<Item = Result<RecordBatch>> + Send {
    left.and_then(move |batch| futures::future::ready(probe(&idx, &batch, &spec)))
}

/// Key columns in a type both sides can agree on: integers as Int64, dictionaries unpacked. (Strings keep their
/// representation; the probe side is cast to the build side's.)
fn normalize_key(a: ArrayRef) -> Result<ArrayRef> {
    let target = match a.data_type() {
        DataType::Dictionary(_, v) => Some(v.as_ref().clone()),
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::UInt8 | DataType::UInt16 | DataType::UInt32 => {
            Some(DataType::Int64)
        }
        _ => None,
    };
    match target {
        Some(t) => Ok(cast(&a, &t)?),
        None => Ok(a),
    }
}

/// Times as i64: timestamps in nanoseconds, dates in days, integers as they are.
fn time_values(a: ArrayRef) -> Result<Int64Array> {
    let as_i64 = match a.data_type() {
        DataType::Timestamp(_, _) => {
            cast(&cast(&a, &DataType::Timestamp(TimeUnit::Nanosecond, None))?, &DataType::Int64)?
        }
        DataType::Date32 | DataType::Date64 => {
            cast(&cast(&a, &DataType::Timestamp(TimeUnit::Nanosecond, None))?, &DataType::Int64)?
        }
        _ => cast(&a, &DataType::Int64)?,
    };
    as_i64
        .as_any()
        .downcast_ref::<Int64Array>()
        .cloned()
        .ok_or_else(|| DataFusionError::Internal("ASOF time did not cast to Int64".into()))
}

fn eval(exprs: &[Arc<dyn PhysicalExpr>], batch: &RecordBatch) -> Result<Vec<ArrayRef>> {
    exprs.iter().map(|e| e.evaluate(batch)?.into_array(batch.num_rows()).and_then(normalize_key)).collect()
}

/// How to index the right side.
struct IndexSpec {
    keys: Vec<Arc<dyn PhysicalExpr>>,
    time: Arc<dyn PhysicalExpr>,
    tie: [Option<usize>; 2],
    /// The most memory one index held (EXPLAIN ANALYZE shows it).
    peak: datafusion::physical_plan::metrics::Gauge,
}

impl IndexSpec {
    async fn build(&self, input: SendableRecordBatchStream, context: &Arc<TaskContext>) -> Result<RightIndex> {
        let index = build_index(input, &self.keys, &self.time, self.tie, context).await?;
        self.peak.set_max(index._reservation.size());
        Ok(index)
    }
}

async fn build_index(
    mut input: SendableRecordBatchStream,
    keys: &[Arc<dyn PhysicalExpr>],
    time: &Arc<dyn PhysicalExpr>,
    tie: [Option<usize>; 2],
    context: &Arc<TaskContext>,
) -> Result<RightIndex> {
    let schema = input.schema();
    let reservation = MemoryConsumer::new("AsofJoinExec right side").register(context.memory_pool());
    let mut batches = Vec::new();
    while let Some(b) = input.next().await {
        let b = b?;
        reservation.try_grow(b.get_array_memory_size())?;
        batches.push(b);
    }
    drop(input);
    let batch = concat_batches(&schema, &batches)?;
    drop(batches);
    let key_arrays = eval(keys, &batch)?;
    let key_types: Vec<DataType> = key_arrays.iter().map(|a| a.data_type().clone()).collect();
    let converter = RowConverter::new(key_types.iter().map(|t| SortField::new(t.clone())).collect())?;
    let rows = Keys::new(&key_arrays, &converter)?;
    let times = time_values(time.evaluate(&batch)?.into_array(batch.num_rows())?)?;
    let tie_cols: Vec<Int64Array> =
        tie.iter().flatten().map(|&i| time_values(batch.column(i).clone())).collect::<Result<_>>()?;
    let mut groups = KeyMap::default();
    let any_null = times.null_count() > 0 || key_arrays.iter().any(|k| k.null_count() > 0);
    for i in 0..batch.num_rows() {
        if any_null && (times.is_null(i) || key_arrays.iter().any(|k| k.is_null(i))) {
            continue;
        }
        let key = rows.get(i);
        let entry = (times.value(i), i as u32);
        // look up before inserting: only a key's first row allocates
        match groups.get_mut(key) {
            Some(g) => g.push(entry),
            None => {
                groups.insert(key.into(), vec![entry]);
            }
        }
    }
    reservation.try_grow(batch.num_rows() * 24 + groups.len() * 64)?;
    let tie_of = |row: u32| -> [i64; 2] {
        let value = |i: usize| {
            tie_cols.get(i).map_or(i64::MIN, |c| if c.is_null(row as usize) { i64::MIN } else { c.value(row as usize) })
        };
        [value(0), value(1)]
    };
    for v in groups.values_mut() {
        if tie_cols.is_empty() {
            v.sort_unstable_by_key(|(t, row)| (*t, *row));
        } else {
            v.sort_unstable_by_key(|(t, row)| (*t, tie_of(*row), *row));
        }
    }
    Ok(RightIndex { batch, groups, converter, key_types, _reservation: reservation })
}

fn probe(idx: &RightIndex, batch: &RecordBatch, spec: &ProbeSpec) -> Result<RecordBatch> {
    let ProbeSpec { keys, time, op, ttl, schema, without_history, history_column } = spec;
    let (op, ttl) = (*op, *ttl);
    let n = batch.num_rows();
    let key_arrays = eval(keys, batch)?
        .into_iter()
        .zip(&idx.key_types)
        .map(|(a, t)| if a.data_type() == t { Ok(a) } else { Ok(cast(&a, t)?) })
        .collect::<Result<Vec<_>>>()?;
    let rows = Keys::new(&key_arrays, &idx.converter)?;
    let times = time_values(time.evaluate(batch)?.into_array(n)?)?;
    let mut picks: Vec<Option<u32>> = Vec::with_capacity(n);
    let mut gone = vec![false; if history_column.is_some() { n } else { 0 }];
    for i in 0..n {
        if times.is_null(i) || key_arrays.iter().any(|k| k.is_null(i)) {
            picks.push(None);
            continue;
        }
        let t = times.value(i);
        let group = idx.groups.get(rows.get(i));
        let picked = group.and_then(|g| pick(g, t, op, ttl));
        if let Some(w) = without_history
            && picked.is_none()
            && !group.is_some_and(|g| has_candidate(g, t, op))
            && w.counts(&key_arrays, i)
        {
            w.count.add(1);
            if let Some(g) = gone.get_mut(i) {
                *g = true;
            }
        }
        picks.push(picked);
    }
    let indices = UInt32Array::from(picks);
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    for (j, c) in idx.batch.columns().iter().enumerate() {
        if Some(j) == *history_column {
            columns.push(Arc::new(datafusion::arrow::array::BooleanArray::from(std::mem::take(&mut gone))));
        } else {
            columns.push(take(c.as_ref(), &indices, None)?);
        }
    }
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// Whether one key's sorted rows hold any row the condition allows for left time `t`, the TTL aside.
fn has_candidate(g: &[(i64, u32)], t: i64, op: AsofOp) -> bool {
    match op {
        AsofOp::GtEq => g.first().is_some_and(|e| e.0 <= t),
        AsofOp::Gt => g.first().is_some_and(|e| e.0 < t),
        AsofOp::LtEq => g.last().is_some_and(|e| e.0 >= t),
        AsofOp::Lt => g.last().is_some_and(|e| e.0 > t),
    }
}

/// The matching row of one key's sorted rows for left time `t`.
fn pick(g: &[(i64, u32)], t: i64, op: AsofOp, ttl: Option<i64>) -> Option<u32> {
    let (found, gap) = match op {
        AsofOp::GtEq | AsofOp::Gt => {
            let end = if op == AsofOp::GtEq { g.partition_point(|e| e.0 <= t) } else { g.partition_point(|e| e.0 < t) };
            // the last of the newest time: the greatest tie-breaker
            let e = g.get(end.checked_sub(1)?)?;
            (e, t.checked_sub(e.0))
        }
        AsofOp::LtEq | AsofOp::Lt => {
            let start =
                if op == AsofOp::LtEq { g.partition_point(|e| e.0 < t) } else { g.partition_point(|e| e.0 <= t) };
            let first = g.get(start)?;
            let last_same = g.partition_point(|e| e.0 <= first.0) - 1;
            let e = &g[last_same];
            (e, e.0.checked_sub(t))
        }
    };
    match (ttl, gap) {
        (Some(ttl), Some(gap)) if gap > ttl => None,
        _ => Some(found.1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_follow_the_operator_ties_and_ttl() {
        // times 10, 20, 20, 30 (rows 0..3; rows 1 and 2 tie, 2 sorts last: the greater tie-breaker)
        let g = [(10, 0), (20, 1), (20, 2), (30, 3)];
        assert_eq!(pick(&g, 5, AsofOp::GtEq, None), None);
        assert_eq!(pick(&g, 10, AsofOp::GtEq, None), Some(0));
        assert_eq!(pick(&g, 10, AsofOp::Gt, None), None);
        assert_eq!(pick(&g, 20, AsofOp::GtEq, None), Some(2));
        assert_eq!(pick(&g, 25, AsofOp::Gt, None), Some(2));
        assert_eq!(pick(&g, 99, AsofOp::GtEq, None), Some(3));
        assert_eq!(pick(&g, 15, AsofOp::LtEq, None), Some(2));
        assert_eq!(pick(&g, 20, AsofOp::LtEq, None), Some(2));
        assert_eq!(pick(&g, 20, AsofOp::Lt, None), Some(3));
        assert_eq!(pick(&g, 30, AsofOp::Lt, None), None);
        assert_eq!(pick(&g, 99, AsofOp::GtEq, Some(69)), Some(3));
        assert_eq!(pick(&g, 99, AsofOp::GtEq, Some(68)), None);
        assert_eq!(pick(&g, 0, AsofOp::LtEq, Some(10)), Some(0));
        assert_eq!(pick(&g, 0, AsofOp::LtEq, Some(9)), None);
    }
}

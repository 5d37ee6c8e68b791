//! The bounded scan of a Kafka table: [`KafkaScanExec`] has one output partition per Kafka partition it reads, each
//! an offset range `[start, end)` fixed when the query was planned (end = the high watermark then). Each range is read
//! by its own consumer on its own thread, decoded into Arrow batches there, and handed to DataFusion through a small
//! channel; dropping the stream (a finished LIMIT, a cancelled query, a client gone) stops the thread.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{
    ArrayRef, Int32Array, Int64Array, RecordBatch, RecordBatchOptions, StringBuilder, TimestampNanosecondArray,
};
use datafusion::arrow::compute::filter;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties};
use futures::StreamExt;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::codec::MessageDecoder;
use crate::error::KfsqlError;
use crate::kafka::{KfsqlConsumer, KfsqlContext, Partitioner};
use crate::table::stats::TableStats;

/// Messages decoded per Arrow batch.
pub const BATCH_SIZE: usize = 8192;
// the JSON decoder keeps its decoders for batches up to this size
const _: () = assert!(BATCH_SIZE <= crate::codec::json::SCAN_BATCH);

/// The offsets `[start, end)` of one partition that a scan reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionRange {
    pub partition: i32,
    pub start: i64,
    pub end: i64,
}

/// Everything a partition reader needs, shared by all partitions of one scan.
#[derive(Debug)]
pub struct ScanSpec {
    pub table: String,
    pub topic: String,
    pub partition_count: i32,
    pub consumer_config: ClientConfig,
    pub decoder: MessageDecoder,
    /// Number of payload columns; metadata columns follow them in the full schema.
    pub payload_columns: usize,
    /// Indices into the full schema; None: all.
    pub projection: Option<Vec<usize>>,
    pub projected_schema: SchemaRef,
    pub partitioner: Partitioner,
    /// The declared key column, whose text is the message key (see DESIGN.md "Keys and partitions").
    pub key_column: Option<String>,
    pub limit: Option<usize>,
    /// How long a partition may go without delivering a message before the scan fails.
    pub stall_timeout: Duration,
    pub stats: Arc<TableStats>,
    /// What pushdown did, for EXPLAIN.
    pub pushdown: String,
    /// Partitions read from a log start above 0 that the query did not ask for: `(partition, log start)`.
    pub truncated: Vec<(i32, i64)>,
}

/// The place of `_key` among the metadata columns that follow the payload columns (`_partition`, `_offset`,
/// `_timestamp`, `_key`); it is the last of them.
const META_KEY: usize = 3;

impl ScanSpec {
    /// Whether the output holds metadata column `m` (0 `_partition`, 1 `_offset`, 2 `_timestamp`, 3 `_key`): the
    /// reader only gathers what some column needs.
    fn wants_meta(&self, m: usize) -> bool {
        self.projection.as_ref().is_none_or(|p| p.contains(&(self.payload_columns + m)))
    }
}

/// How a scan's output partitions hold keys (see [`KafkaScanExec::key_partitioning`]).
#[derive(Debug, Clone, PartialEq)]
pub struct KeyPartitioning {
    pub partitioner: Partitioner,
    pub partition_count: i32,
    pub data_type: datafusion::arrow::datatypes::DataType,
    /// The Kafka partition behind each output partition.
    pub kafka_partitions: Vec<i32>,
}

impl KeyPartitioning {
    /// Equal keys land in the same Kafka partition number on both sides.
    pub fn compatible(&self, other: &KeyPartitioning) -> bool {
        self.partitioner == other.partitioner
            && self.partition_count == other.partition_count
            && self.data_type == other.data_type
    }
}

/// Reads Kafka partitions as a bounded DataFusion source.
#[derive(Debug)]
pub struct KafkaScanExec {
    spec: Arc<ScanSpec>,
    ranges: Vec<PartitionRange>,
    properties: Arc<PlanProperties>,
}

impl KafkaScanExec {
    pub fn new(spec: ScanSpec, ranges: Vec<PartitionRange>) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(spec.projected_schema.clone()),
            Partitioning::UnknownPartitioning(ranges.len().max(1)),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self { spec: Arc::new(spec), ranges, properties: Arc::new(properties) }
    }

    pub fn ranges(&self) -> &[PartitionRange] {
        &self.ranges
    }

    /// How output column `column` places rows in partitions, when it is the message key (the declared key column or
    /// `_key`) and the table's partitioner is known: then output partition `i` holds exactly the keys hashing to Kafka
    /// partition `kafka_partitions[i]`. Two scans with equal [`KeyPartitioning::compatible`] are co-partitioned.
    pub fn key_partitioning(&self, column: usize) -> Option<KeyPartitioning> {
        let field = self.spec.projected_schema.fields().get(column)?;
        let is_key = field.name() == crate::table::definition::META_KEY
            || self.spec.key_column.as_deref() == Some(field.name().as_str());
        if !is_key || self.spec.partitioner == Partitioner::None {
            return None;
        }
        Some(KeyPartitioning {
            partitioner: self.spec.partitioner,
            partition_count: self.spec.partition_count,
            data_type: field.data_type().clone(),
            kafka_partitions: self.ranges.iter().map(|r| r.partition).collect(),
        })
    }

    /// The partitions this scan reads whose earlier messages Kafka no longer holds, if any.
    pub fn truncation(&self) -> Option<crate::table::history::Truncation> {
        (!self.spec.truncated.is_empty()).then(|| crate::table::history::Truncation {
            table: self.spec.table.clone(),
            topic: self.spec.topic.clone(),
            partitions: self.spec.truncated.clone(),
        })
    }

    /// Messages this scan will read at most.
    pub fn message_count(&self) -> i64 {
        self.ranges.iter().map(|r| (r.end - r.start).max(0)).sum()
    }
}

impl DisplayAs for KafkaScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let ranges = self
            .ranges
            .iter()
            .map(|r| format!("{}:[{}..{})", r.partition, r.start, r.end))
            .collect::<Vec<_>>()
            .join(", ");
        write!(
            f,
            "KafkaScanExec: topic={}, partitions={}/{} [{}], messages={}",
            self.spec.topic,
            self.ranges.len(),
            self.spec.partition_count,
            ranges,
            self.message_count()
        )?;
        if !self.spec.pushdown.is_empty() {
            write!(f, ", pushdown=[{}]", self.spec.pushdown)?;
        }
        if let Some(p) = &self.spec.projection {
            let names: Vec<_> = self.spec.projected_schema.fields().iter().map(|f| f.name().as_str()).collect();
            if p.len() <= self.spec.payload_columns + META_KEY {
                write!(f, ", projection=[{}]", names.join(", "))?;
            }
        }
        if let Some(l) = self.spec.limit {
            write!(f, ", limit={l}")?;
        }
        if !self.spec.truncated.is_empty() {
            let parts: Vec<String> = self.spec.truncated.iter().map(|(p, o)| format!("{p}:{o}")).collect();
            write!(f, ", history_truncated=[{}]", parts.join(", "))?;
        }
        Ok(())
    }
}

impl ExecutionPlan for KafkaScanExec {
    fn name(&self) -> &str {
        "KafkaScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> DfResult<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            Err(DataFusionError::Internal("KafkaScanExec has no children".into()))
        }
    }

    fn execute(&self, partition: usize, _context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        let schema = self.spec.projected_schema.clone();
        let Some(range) = self.ranges.get(partition).copied() else {
            return Ok(Box::pin(RecordBatchStreamAdapter::new(schema, futures::stream::empty())));
        };
        if range.start >= range.end {
            return Ok(Box::pin(RecordBatchStreamAdapter::new(schema, futures::stream::empty())));
        }
        let (tx, rx) = mpsc::channel::<DfResult<RecordBatch>>(2);
        let spec = self.spec.clone();
        // the reader logs in the statement's span (its connection and statement ids)
        let span = tracing::info_span!("scan", table = %spec.table, partition = range.partition);
        std::thread::Builder::new()
            .name(format!("kfsql-scan-{}-{}", spec.topic, range.partition))
            .spawn(move || {
                crate::scheduler::lower_priority(crate::scheduler::QUERY_NICENESS);
                let _in_span = span.enter();
                if let Err(e) = read_partition(&spec, range, &tx) {
                    let _ = tx.blocking_send(Err(e.into_datafusion()));
                }
            })
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        self.spec.stats.add(&self.spec.stats.scans, 1);
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, ReceiverStream::new(rx).fuse())))
    }
}

/// Messages of one batch, accumulated before decoding.
struct Pending {
    payload: Vec<u8>,
    ends: Vec<usize>,
    offsets: Vec<i64>,
    timestamps: Vec<Option<i64>>,
    keys: StringBuilder,
    /// The raw message keys, when the table reads columns from them.
    raw_keys: Vec<Option<Box<[u8]>>>,
}

impl Pending {
    fn new() -> Self {
        Self {
            payload: Vec::with_capacity(BATCH_SIZE * 128),
            ends: Vec::with_capacity(BATCH_SIZE),
            offsets: Vec::with_capacity(BATCH_SIZE),
            timestamps: Vec::with_capacity(BATCH_SIZE),
            keys: StringBuilder::with_capacity(BATCH_SIZE, BATCH_SIZE * 8),
            raw_keys: Vec::new(),
        }
    }

    fn len(&self) -> usize {
        self.offsets.len()
    }

    /// Emptied for the next batch, keeping what it allocated (a fresh megabyte per batch is a page fault per 4 KiB).
    fn clear(&mut self) {
        self.payload.clear();
        self.ends.clear();
        self.offsets.clear();
        self.timestamps.clear();
        self.raw_keys.clear();
    }
}

/// Read `range` of one partition, sending decoded batches on `tx`. Returns when the range is done, the receiver is
/// gone, or on error.
fn read_partition(
    spec: &ScanSpec,
    range: PartitionRange,
    tx: &mpsc::Sender<DfResult<RecordBatch>>,
) -> Result<(), KfsqlError> {
    let consumer: KfsqlConsumer = spec
        .consumer_config
        .create_with_context(KfsqlContext)
        .map_err(|e| KfsqlError::Kafka(format!("cannot create a consumer: {e}")))?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&spec.topic, range.partition, Offset::Offset(range.start))
        .map_err(|e| KfsqlError::Kafka(e.to_string()))?;
    consumer
        .assign(&tpl)
        .map_err(|e| KfsqlError::Kafka(format!("assigning {}[{}]: {e}", spec.topic, range.partition)))?;
    let mut reader = Reader {
        spec,
        range,
        consumer,
        pending: Pending::new(),
        counts: Counts::default(),
        emitted: 0,
        next: range.start,
        last_progress: Instant::now(),
        progressed: false,
        want_keys: spec.wants_meta(META_KEY),
    };
    let result = reader.run(tx);
    reader.counts.publish(&spec.stats);
    result
}

/// Messages read but not yet added to the table's counters: counted locally and published per batch, because shared
/// atomics per message would contend across partitions.
#[derive(Default)]
struct Counts {
    messages: u64,
    bytes: u64,
    tombstones: u64,
    misrouted: u64,
}

impl Counts {
    fn publish(&mut self, stats: &TableStats) {
        stats.add(&stats.messages, self.messages);
        stats.add(&stats.bytes, self.bytes);
        stats.add(&stats.tombstones, self.tombstones);
        stats.add(&stats.misrouted, self.misrouted);
        *self = Counts::default();
    }
}

/// The state of one partition's read.
struct Reader<'a> {
    spec: &'a ScanSpec,
    range: PartitionRange,
    consumer: KfsqlConsumer,
    pending: Pending,
    counts: Counts,
    /// Rows sent so far (for LIMIT).
    emitted: usize,
    /// The next offset expected.
    next: i64,
    /// When the reader last noticed progress: the first empty poll after messages (reading the clock per message
    /// costs more than the stall timeout's precision is worth).
    last_progress: Instant,
    /// Messages arrived since `last_progress` was taken.
    progressed: bool,
    /// Whether the output has `_key`.
    want_keys: bool,
}

impl Reader<'_> {
    /// The consumer's fetch position in this partition: the offset of the next message it will deliver.
    fn position(&self) -> Option<i64> {
        let tpl = self.consumer.position().ok()?;
        match tpl.find_partition(&self.spec.topic, self.range.partition)?.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        }
    }

    /// Whether no message arrived for the stall timeout; called after an empty or failed poll.
    fn stalled(&mut self) -> bool {
        if std::mem::take(&mut self.progressed) {
            self.last_progress = Instant::now();
            return false;
        }
        self.last_progress.elapsed() > self.spec.stall_timeout
    }

    fn run(&mut self, tx: &mpsc::Sender<DfResult<RecordBatch>>) -> Result<(), KfsqlError> {
        let (spec, range) = (self.spec, self.range);
        loop {
            if self.next >= range.end || spec.limit.is_some_and(|l| self.emitted >= l) || tx.is_closed() {
                break;
            }
            match self.consumer.poll(Duration::from_millis(100)) {
                None => {
                    if self.stalled() {
                        return Err(KfsqlError::Kafka(format!(
                            "no data from {}[{}] for {:?} while reading offsets {}..{} (at {}); is the broker up?",
                            spec.topic, range.partition, spec.stall_timeout, range.start, range.end, self.next
                        )));
                    }
                }
                // The broker says the partition ends before the watermark this scan planned to: a new consumer
                // can be told so before its first fetch lands. Keep reading; the stall timeout bounds the wait.
                // End of what the broker holds. Done if that reaches the planned end (the last offsets may be
                // control records no message is delivered for); otherwise the consumer was told so before its
                // first fetch landed, and reading goes on, bounded by the stall timeout.
                Some(Err(KafkaError::PartitionEOF(_))) => {
                    if self.position().is_some_and(|p| p >= range.end) {
                        break;
                    }
                    tracing::debug!(
                        "{}[{}]: end of partition before offset {}",
                        spec.topic,
                        range.partition,
                        range.end
                    );
                }
                Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset))) => {
                    return Err(KfsqlError::HistoryGone(format!(
                        "offset {} of {}[{}] is no longer in Kafka (retention or DeleteRecords removed it while the \
                         query read offsets {}..{}); run the query again to read what the partition still holds",
                        self.next, spec.topic, range.partition, range.start, range.end
                    )));
                }
                // librdkafka reconnects by itself: a dropped connection only ends the scan if no data comes back
                // before the stall timeout
                Some(Err(e)) if crate::kafka::is_transient(&e) => {
                    tracing::debug!("reading {}[{}]: {e} (retrying)", spec.topic, range.partition);
                    if self.stalled() {
                        return Err(KfsqlError::Kafka(format!(
                            "reading {}[{}]: {e} for {:?}; is the broker up?",
                            spec.topic, range.partition, spec.stall_timeout
                        )));
                    }
                }
                Some(Err(e)) => {
                    return Err(KfsqlError::Kafka(format!("reading {}[{}]: {e}", spec.topic, range.partition)));
                }
                Some(Ok(m)) => {
                    self.progressed = true;
                    let offset = m.offset();
                    if offset >= range.end {
                        break;
                    }
                    self.next = offset + 1;
                    self.counts.messages += 1;
                    let key = m.key();
                    let key_format = spec.decoder.key_format();
                    if let Some(k) = key
                        && spec
                            .partitioner
                            .partition_for(key_format.partition_bytes(k), spec.partition_count)
                            .is_some_and(|p| p != range.partition)
                    {
                        self.counts.misrouted += 1;
                    }
                    let Some(payload) = m.payload() else {
                        self.counts.tombstones += 1;
                        continue;
                    };
                    self.counts.bytes += payload.len() as u64;
                    self.pending.payload.extend_from_slice(payload);
                    self.pending.ends.push(self.pending.payload.len());
                    self.pending.offsets.push(offset);
                    self.pending.timestamps.push(m.timestamp().to_millis());
                    if self.want_keys {
                        match key {
                            Some(k) => self.pending.keys.append_value(key_format.key_text(k)),
                            None => self.pending.keys.append_null(),
                        }
                    }
                    if spec.decoder.needs_keys() {
                        self.pending.raw_keys.push(key.map(Into::into));
                    }
                    if self.pending.len() >= BATCH_SIZE {
                        let batch = decode(spec, range.partition, &mut self.pending)?;
                        self.counts.publish(&spec.stats);
                        self.emitted += batch.num_rows();
                        if tx.blocking_send(Ok(batch)).is_err() {
                            return Ok(());
                        }
                    }
                }
            }
        }
        if self.pending.len() > 0 && !tx.is_closed() {
            let batch = decode(spec, range.partition, &mut self.pending)?;
            let _ = tx.blocking_send(Ok(batch));
        }
        Ok(())
    }
}

/// Decode one batch of messages and assemble the projected output columns.
/// `p` is left empty for the next batch, its buffers kept.
fn decode(spec: &ScanSpec, partition: i32, p: &mut Pending) -> Result<RecordBatch, KfsqlError> {
    let batch = assemble(spec, partition, p);
    p.clear();
    batch
}

fn assemble(spec: &ScanSpec, partition: i32, p: &mut Pending) -> Result<RecordBatch, KfsqlError> {
    let mut slices = Vec::with_capacity(p.ends.len());
    let mut start = 0;
    for &end in &p.ends {
        slices.push(&p.payload[start..end]);
        start = end;
    }
    let keys: Vec<Option<&[u8]>> = p.raw_keys.iter().map(|k| k.as_deref()).collect();
    let decoded = spec.decoder.decode(&keys, &slices).map_err(|bad| {
        KfsqlError::BadMessage(format!(
            "message at {}[{}] offset {} does not match table '{}': {} (the table has bad_messages = 'fail'; declare 'skip' or 'null' to read past it)",
            spec.topic,
            partition,
            p.offsets.get(bad.index).copied().unwrap_or(-1),
            spec.table,
            bad.reason
        ))
    })?;
    spec.stats.add_bad(&decoded.bad);

    let n = p.offsets.len();
    // only the metadata columns the output holds are built
    let mut column = |i: usize| -> Result<ArrayRef, KfsqlError> {
        let Some(m) = i.checked_sub(spec.payload_columns) else { return Ok(decoded.batch.column(i).clone()) };
        let all: ArrayRef = match m {
            0 => Arc::new(Int32Array::from(vec![partition; n])),
            1 => Arc::new(Int64Array::from(p.offsets.clone())),
            2 => Arc::new(TimestampNanosecondArray::from_iter(
                p.timestamps.iter().map(|t| t.and_then(|ms| ms.checked_mul(1_000_000))),
            )),
            _ => Arc::new(p.keys.finish()),
        };
        match &decoded.keep {
            Some(keep) => filter(all.as_ref(), keep).map_err(|e| KfsqlError::Internal(e.to_string())),
            None => Ok(all),
        }
    };
    let rows = decoded.batch.num_rows();
    let columns: Vec<ArrayRef> = match &spec.projection {
        Some(p) => p.iter().map(|&i| column(i)).collect::<Result<_, _>>()?,
        None => (0..=spec.payload_columns + META_KEY).map(column).collect::<Result<_, _>>()?,
    };
    RecordBatch::try_new_with_options(
        spec.projected_schema.clone(),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(rows)),
    )
    .map_err(|e| KfsqlError::Internal(format!("assembling a batch of {}: {e}", spec.table)))
}

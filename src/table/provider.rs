//! [`KafkaTable`]: a Kafka topic as a DataFusion `TableProvider`. Planning a scan snapshots each partition's
//! watermarks and turns the pushed-down filters into the offset ranges [`KafkaScanExec`] reads.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::datasource::sink::DataSinkExec;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::scalar::ScalarValue;

use crate::codec::{JsonDecoder, MessageDecoder};
use crate::error::{KfsqlError, Result};
use crate::kafka::{KafkaCluster, Partitioner};
use crate::table::definition::{META_OFFSET, META_PARTITION, TableDefinition, TableOptions, full_schema};
use crate::table::pushdown::{self, ScanBounds};
use crate::table::scan::{KafkaScanExec, PartitionRange, ScanSpec};
use crate::table::stats::TableStats;

/// What a scan will read, decided at planning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanPlan {
    pub partition_count: i32,
    pub ranges: Vec<PartitionRange>,
    /// What pushdown did, for EXPLAIN.
    pub notes: Vec<String>,
    /// Partitions whose read begins at a log start above 0 the query did not ask for: `(partition, log start)`.
    pub truncated: Vec<(i32, i64)>,
}

/// A Kafka topic with a declared schema.
#[derive(Debug)]
pub struct KafkaTable {
    def: TableDefinition,
    options: TableOptions,
    schema: SchemaRef,
    decoder: MessageDecoder,
    cluster: Arc<KafkaCluster>,
    stats: Arc<TableStats>,
    stall_timeout: Duration,
    /// INSERT defaults of the NOT NULL metadata columns.
    meta_defaults: Vec<(String, Expr)>,
}

impl KafkaTable {
    pub fn new(
        def: TableDefinition,
        cluster: Arc<KafkaCluster>,
        stats: Arc<TableStats>,
        stall_timeout: Duration,
    ) -> Result<Self> {
        let declared = def.payload_schema()?;
        let options = TableOptions::parse(&def.options, &declared)?;
        let mut decoder =
            MessageDecoder::new(&declared, options.key_format, options.key.as_deref(), options.bad_messages);
        if let Some(column) = &options.event_time {
            decoder = decoder.with_time_range(column, options.event_time_range.0, options.event_time_range.1);
        }
        let schema = full_schema(&JsonDecoder::output_schema(&declared, options.bad_messages));
        let meta_defaults = vec![
            (META_PARTITION.to_string(), Expr::Literal(ScalarValue::Int32(Some(-1)), None)),
            (META_OFFSET.to_string(), Expr::Literal(ScalarValue::Int64(Some(-1)), None)),
        ];
        Ok(Self { def, options, schema, decoder, cluster, stats, stall_timeout, meta_defaults })
    }

    pub fn definition(&self) -> &TableDefinition {
        &self.def
    }

    pub fn options(&self) -> &TableOptions {
        &self.options
    }

    pub fn decoder(&self) -> &MessageDecoder {
        &self.decoder
    }

    pub fn stats(&self) -> &Arc<TableStats> {
        &self.stats
    }

    pub fn topic(&self) -> &str {
        &self.def.topic
    }

    pub fn cluster(&self) -> &Arc<KafkaCluster> {
        &self.cluster
    }

    /// A scan of exactly `ranges` (a pipeline reads the offsets it has not read yet this way).
    pub fn scan_exec(
        &self,
        partition_count: i32,
        ranges: Vec<PartitionRange>,
        projection: Option<&Vec<usize>>,
        limit: Option<usize>,
        pushdown: String,
        truncated: Vec<(i32, i64)>,
    ) -> DfResult<KafkaScanExec> {
        let projected_schema = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => self.schema.clone(),
        };
        let spec = ScanSpec {
            table: self.def.name.clone(),
            topic: self.def.topic.clone(),
            partition_count,
            consumer_config: {
                // a planned offset that retention removes before it is read is an error, never a silent jump
                let mut c = self.cluster.consumer_config();
                c.set("auto.offset.reset", "error");
                c
            },
            decoder: self.decoder.clone(),
            payload_columns: self.schema.fields().len() - 4,
            projection: projection.cloned(),
            projected_schema,
            partitioner: self.options.partitioner,
            key_column: self.options.key.clone(),
            limit,
            stall_timeout: self.stall_timeout,
            stats: self.stats.clone(),
            pushdown,
            truncated,
        };
        Ok(KafkaScanExec::new(spec, ranges))
    }

    /// The offset ranges a scan with these bounds reads, as of now.
    pub async fn plan_ranges(&self, bounds: &ScanBounds) -> Result<ScanPlan> {
        let topic = &self.def.topic;
        let count = self.cluster.partition_count(topic).await?;
        let mut notes = Vec::new();
        let mut parts: BTreeSet<i32> = (0..count).collect();
        if let Some(p) = &bounds.partitions {
            parts = parts.intersection(p).copied().collect();
            notes.push(format!("_partition IN {p:?}"));
        }
        if let Some((lo, hi)) = bounds.partition_range {
            parts.retain(|p| (lo..hi).contains(&i64::from(*p)));
            let lower = (lo > i64::MIN).then(|| format!("_partition >= {lo}"));
            let upper = (hi < i64::MAX).then(|| format!("_partition < {hi}"));
            notes.push(lower.into_iter().chain(upper).collect::<Vec<_>>().join(" AND "));
        }
        if let Some(keys) = &bounds.keys
            && self.options.partitioner != Partitioner::None
        {
            let routed: BTreeSet<i32> =
                keys.iter().filter_map(|k| self.options.partitioner.partition_for(k.as_bytes(), count)).collect();
            parts = parts.intersection(&routed).copied().collect();
            notes.push(format!("{} key(s) → partition(s) {routed:?} by {}", keys.len(), self.options.partitioner));
        }
        if bounds.empty {
            parts.clear();
            notes.push("contradictory filters".into());
        }
        let parts: Vec<i32> = parts.into_iter().collect();
        if parts.is_empty() {
            return Ok(ScanPlan { partition_count: count, ranges: Vec::new(), notes, truncated: Vec::new() });
        }
        let marks = self.cluster.watermarks(topic, &parts).await?;
        let from_time = match bounds.timestamp_min_ms {
            Some(ts) if !self.cluster.supports_offsets_for_times() => {
                notes.push(format!("_timestamp >= {ts}ms filtered (this cluster cannot look up offsets by time)"));
                None
            }
            Some(ts) => {
                notes.push(format!("_timestamp >= {ts}ms via offsets_for_times"));
                Some(self.cluster.offsets_for_time(topic, &parts, ts).await?)
            }
            None => None,
        };
        if let Some(o) = bounds.offset_min {
            notes.push(format!("_offset >= {o}"));
        }
        if let Some(o) = bounds.offset_end {
            notes.push(format!("_offset < {o}"));
        }
        let mut truncated = Vec::new();
        let ranges = parts
            .iter()
            .enumerate()
            .map(|(i, &partition)| {
                let wm = marks[i];
                let mut start = wm.low.max(bounds.offset_min.unwrap_or(0));
                if let Some(answers) = &from_time {
                    // No offset for that time means no message that new: nothing to read. An answer outside the
                    // readable range is clamped (some brokers answer 0 for a time past the end).
                    start = start.max(answers[i].unwrap_or(wm.high));
                }
                let end = wm.high.min(bounds.offset_end.unwrap_or(i64::MAX));
                // the read begins at a log start above 0 that the query's bounds did not ask for: earlier messages
                // it wanted are gone (see table::history)
                if wm.low > 0 && start == wm.low && bounds.offset_min.unwrap_or(0) < wm.low {
                    truncated.push((partition, wm.low));
                }
                PartitionRange { partition, start, end: end.max(start) }
            })
            .collect();
        Ok(ScanPlan { partition_count: count, ranges, notes, truncated })
    }
}

#[async_trait]
impl TableProvider for KafkaTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(pushdown::pushdown_kinds(filters, self.options.key.as_deref()))
    }

    /// Metadata columns are Kafka's to assign: an INSERT that leaves them out gets these placeholders (ignored).
    fn get_column_default(&self, column: &str) -> Option<&Expr> {
        self.meta_defaults.iter().find(|(c, _)| c == column).map(|(_, e)| e)
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if self.options.key_format.carries_columns() {
            return Err(KfsqlError::Unsupported(format!(
                "INSERT into '{}': its key_format '{}' belongs to the application that writes the topic",
                self.def.name, self.options.key_format
            ))
            .into_datafusion());
        }
        if insert_op != InsertOp::Append {
            return Err(KfsqlError::Unsupported(format!(
                "{insert_op} on a Kafka table: a topic is append-only (use INSERT INTO)"
            ))
            .into_datafusion());
        }
        let declared = self.def.payload_schema().map_err(KfsqlError::into_datafusion)?;
        let payload_columns = self.schema.fields().len() - 4;
        let not_null = (0..payload_columns).filter(|&i| !declared.field(i).is_nullable()).collect();
        let key_index = self.options.key.as_ref().and_then(|k| self.schema.index_of(k).ok());
        let sink = crate::table::sink::KafkaSink {
            table: self.def.name.clone(),
            topic: self.def.topic.clone(),
            schema: self.schema.clone(),
            payload_columns,
            not_null,
            key_index,
            producer: self.cluster.producer().clone(),
        };
        Ok(Arc::new(DataSinkExec::new(input, Arc::new(sink), None)))
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let bounds = pushdown::bounds(filters, self.options.key.as_deref());
        let plan = self.plan_ranges(&bounds).await.map_err(KfsqlError::into_datafusion)?;
        let exec = self.scan_exec(
            plan.partition_count,
            plan.ranges,
            projection,
            limit,
            plan.notes.join("; "),
            plan.truncated,
        )?;
        Ok(Arc::new(exec))
    }
}

/// The Kafka table behind a provider, if it is one.
pub fn as_kafka(t: &dyn TableProvider) -> Option<&KafkaTable> {
    let any: &dyn std::any::Any = t;
    any.downcast_ref::<KafkaTable>()
}

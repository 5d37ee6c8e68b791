//! History Kafka no longer holds. Retention (`retention.ms`, `retention.bytes`), `DeleteRecords` and the embedded
//! mock cluster's 5 MiB-per-partition limit move a partition's log start offset forward; a read can only begin
//! there, so an answer over such a partition may lack rows that once existed. kfsql says so instead of answering as
//! if it were complete (see docs/DESIGN.md "History that is gone"):
//! - [`Truncation`]s found in a physical plan (scans that start at a log start above 0) become NOTICEs before the
//!   rows and show in EXPLAIN;
//! - [`read`] gives each partition's log start offset and the oldest event still held, for `kfsql.table_stats`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, TimeUnit, TimestampNanosecondType};
use datafusion::physical_plan::ExecutionPlan;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::error::{KfsqlError, Result};
use crate::kafka::{KfsqlConsumer, KfsqlContext};
use crate::table::provider::KafkaTable;
use crate::table::scan::KafkaScanExec;

/// A scan that reads partitions whose earlier messages are gone: `(partition, log start offset)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    pub table: String,
    pub topic: String,
    pub partitions: Vec<(i32, i64)>,
}

impl Truncation {
    /// The NOTICE a client gets before the rows of a query that reads this scan.
    pub fn notice(&self) -> String {
        let parts: Vec<String> = self.partitions.iter().map(|(p, o)| format!("{p} from offset {o}")).collect();
        format!(
            "table \"{}\" reads partitions of topic '{}' whose earlier messages Kafka no longer holds (retention): {}; \
             the answer covers only what remains (kfsql.table_stats shows the oldest event still held)",
            self.table,
            self.topic,
            parts.join(", ")
        )
    }
}

/// Every scan in `plan` that reads a truncated partition, in plan order.
pub fn in_plan(plan: &Arc<dyn ExecutionPlan>) -> Vec<Truncation> {
    let mut out = Vec::new();
    collect(plan, &mut out);
    out
}

fn collect(plan: &Arc<dyn ExecutionPlan>, out: &mut Vec<Truncation>) {
    if let Some(scan) = plan.as_ref().downcast_ref::<KafkaScanExec>()
        && let Some(t) = scan.truncation()
        && !out.contains(&t)
    {
        out.push(t);
    }
    for child in plan.children() {
        collect(child, out);
    }
}

/// One partition's history as Kafka holds it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionHistory {
    pub partition: i32,
    /// The first offset still held (0 unless retention or DeleteRecords removed messages).
    pub log_start: i64,
    pub high_watermark: i64,
    /// The event time (ns) of the first message still held, when the table has an event time and it decodes.
    pub oldest_event_ns: Option<i64>,
}

/// Each partition's log start offset and oldest held event time: watermarks, then the first message of each
/// non-empty partition (read with the table's decoder), bounded by the cluster's timeout.
pub async fn read(table: &KafkaTable) -> Result<Vec<PartitionHistory>> {
    let cluster = table.cluster().clone();
    let topic = table.topic().to_string();
    let count = cluster.partition_count(&topic).await?;
    let parts: Vec<i32> = (0..count).collect();
    let marks = cluster.watermarks(&topic, &parts).await?;
    let mut out: Vec<PartitionHistory> = parts
        .iter()
        .zip(&marks)
        .map(|(&partition, m)| PartitionHistory {
            partition,
            log_start: m.low,
            high_watermark: m.high,
            oldest_event_ns: None,
        })
        .collect();
    let time_column = table.options().event_time.clone();
    let Some(time_column) = time_column else { return Ok(out) };
    let wanted: Vec<(i32, i64)> =
        out.iter().filter(|h| h.log_start < h.high_watermark).map(|h| (h.partition, h.log_start)).collect();
    if wanted.is_empty() {
        return Ok(out);
    }
    let (config, timeout, decoder) = (cluster.consumer_config(), cluster.timeout(), table.decoder().clone());
    let schema = datafusion::catalog::TableProvider::schema(table);
    let time_index = schema.index_of(&time_column).map_err(|e| KfsqlError::Internal(e.to_string()))?;
    let firsts = tokio::task::spawn_blocking(move || -> Result<Vec<(i32, Option<i64>)>> {
        let consumer: KfsqlConsumer =
            config.create_with_context(KfsqlContext).map_err(|e| KfsqlError::Kafka(format!("consumer: {e}")))?;
        let mut tpl = TopicPartitionList::new();
        for (p, start) in &wanted {
            tpl.add_partition_offset(&topic, *p, Offset::Offset(*start))
                .map_err(|e| KfsqlError::Kafka(e.to_string()))?;
        }
        consumer.assign(&tpl).map_err(|e| KfsqlError::Kafka(e.to_string()))?;
        let deadline = Instant::now() + timeout;
        let mut found: Vec<(i32, Option<i64>)> = Vec::new();
        while found.len() < wanted.len() && Instant::now() < deadline {
            let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else { continue };
            if found.iter().any(|(p, _)| *p == m.partition()) {
                continue;
            }
            let t = m.payload().and_then(|payload| {
                let d = decoder.decode(&[m.key()], &[payload]).ok()?;
                if d.batch.num_rows() != 1 {
                    return None;
                }
                let col = cast(d.batch.column(time_index), &DataType::Timestamp(TimeUnit::Nanosecond, None)).ok()?;
                let col = col.as_primitive::<TimestampNanosecondType>();
                (!col.is_null(0)).then(|| col.value(0))
            });
            found.push((m.partition(), t));
        }
        Ok(found)
    })
    .await
    .map_err(|e| KfsqlError::Internal(format!("history task: {e}")))??;
    for (p, t) in firsts {
        if let Some(h) = out.iter_mut().find(|h| h.partition == p) {
            h.oldest_event_ns = t;
        }
    }
    Ok(out)
}

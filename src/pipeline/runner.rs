//! One pipeline's loop: read what the source topic gained, compute, write, checkpoint.
//!
//! Each round reads every source partition from where the pipeline stands up to the high watermark snapshotted
//! for the round (at most [`ROUND_MESSAGES`] in all), then:
//! - **stateless** query (projections, filters): runs it over the round's rows;
//! - **windowed** query: adds the rows to a buffer of the windows still open, advances the watermark and, for the
//!   windows it closed, runs the query over the buffered rows, keeping only those windows. Each window is emitted
//!   once, complete, when the watermark passes its end.
//!
//! Its outputs go through `INSERT INTO` the feature table (idempotent producer, `acks=all`, returns once every
//! message is acknowledged); only then is the [`Checkpoint`] written. After a crash the pipeline resumes from the
//! last checkpoint: it re-reads the rows of the windows it had not emitted and emits those windows from complete
//! data, and never emits a window it had emitted, so each (key, window)'s newest message in the feature topic is the
//! value an uninterrupted run writes.
//!
//! **Watermark**: the greatest event time read, or while some partitions have a backlog, the least of their
//! greatest event times (a partition that is behind holds windows open); minus the allowed lateness. It only moves
//! forward, and only when events arrive. An event whose windows were already emitted is late: it is counted
//! (`kfsql.pipelines.late_events`) and left out of those windows, and logged.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use datafusion::arrow::array::{Array, AsArray, BooleanArray, RecordBatch, TimestampNanosecondArray};
use datafusion::arrow::compute::{cast, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, Int32Type, Int64Type, TimeUnit, TimestampNanosecondType};
use datafusion::datasource::{MemTable, TableProvider};
use datafusion::prelude::SessionContext;

use super::PipelineStatus;
use super::checkpoint::{Checkpoint, CheckpointStore};
use super::spec::{self, Window};
use super::window::WindowRelationPlanner;
use crate::error::{KfsqlError, Result};
use crate::table::KafkaTable;
use crate::table::Tables;
use crate::table::scan::PartitionRange;

/// Messages read per round, at most, spread over the partitions that have some (a backfill proceeds in rounds of
/// this size, so the windows each round closes, and the memory computing them takes, stay bounded).
pub const ROUND_MESSAGES: i64 = 100_000;
/// Rows (after expansion into their windows) one emitting query may aggregate.
const EMIT_BUDGET: usize = 100_000;
/// Pause between rounds that found nothing new.
const IDLE: Duration = Duration::from_millis(100);
/// The name the output table has in the pipeline's own session.
const OUTPUT: &str = "__kfsql_output";

/// Runs pipeline `name` until it is dropped or the engine is gone; failures are reported in its status and the
/// pipeline restarts from its last checkpoint.
pub async fn run(name: String, engine: Weak<dyn Tables>, store: CheckpointStore, status: Arc<PipelineStatus>) {
    let mut backoff = Duration::from_millis(500);
    loop {
        match attempt(&name, &engine, &store, &status).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!("pipeline '{name}': {e}; restarting from its last checkpoint in {backoff:?}");
                status.set_error(e.to_string());
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Everything a running pipeline holds.
struct Pipeline {
    name: String,
    source: String,
    source_table: Arc<dyn TableProvider>,
    window: Option<Window>,
    lateness_ns: i64,
    ctx: SessionContext,
    planner: Arc<WindowRelationPlanner>,
    insert_sql: String,
    payload_columns: usize,
    /// Next offset to read, per partition.
    position: BTreeMap<i32, i64>,
    /// Offsets below these were read before the last restart.
    replay_until: BTreeMap<i32, i64>,
    emitted_until: Option<i64>,
    watermark: Option<i64>,
    /// Greatest event time read per partition.
    max_time: BTreeMap<i32, i64>,
    /// Rows of windows not yet emitted.
    buffer: Vec<Buffered>,
    /// Commits the checkpoint's resume offsets to the consumer group `kfsql-pipeline-<name>`, so Kafka's own tools
    /// (`kafka-consumer-groups --describe`) show the pipeline's position and lag.
    group: Option<Arc<crate::kafka::KfsqlConsumer>>,
    topic: String,
}

/// Buffered source rows with their event times as nanoseconds (computed once, when read).
struct Buffered {
    rows: RecordBatch,
    times: TimestampNanosecondArray,
}

async fn attempt(
    name: &str,
    engine: &Weak<dyn Tables>,
    store: &CheckpointStore,
    status: &Arc<PipelineStatus>,
) -> Result<()> {
    let Some(mut p) = Pipeline::open(name, engine, store, status).await? else { return Ok(()) };
    loop {
        let Some(e) = engine.upgrade() else { return Ok(()) };
        if e.definitions().get(name).is_none_or(|d| d.pipeline.is_none()) {
            return Ok(()); // dropped
        }
        let worked = p.round(e.as_ref(), store, status).await?;
        drop(e);
        if !worked {
            tokio::time::sleep(IDLE).await;
        }
    }
}

impl Pipeline {
    async fn open(
        name: &str,
        engine: &Weak<dyn Tables>,
        store: &CheckpointStore,
        status: &Arc<PipelineStatus>,
    ) -> Result<Option<Pipeline>> {
        let Some(e) = engine.upgrade() else { return Ok(None) };
        let Some(def) = e.definitions().get(name).cloned() else { return Ok(None) };
        let Some(pipeline) = def.pipeline.clone() else { return Ok(None) };
        let query = match crate::sql::parse(&pipeline.query)?.pop_front() {
            Some(datafusion::sql::parser::Statement::Statement(s)) => match *s {
                datafusion::sql::sqlparser::ast::Statement::Query(q) => q,
                _ => return Err(KfsqlError::Internal(format!("pipeline '{name}' holds no query"))),
            },
            _ => return Err(KfsqlError::Internal(format!("pipeline '{name}' holds no query"))),
        };
        let source = spec::source_table(&query)?;
        status.set_state(&format!("waiting for table {source}"));
        let source_table = e.kafka_table(&source).await?;
        let kafka = as_kafka(&source_table)?;
        let database = e.database().to_string();
        let analysis = spec::analyse(&query, &source_table.schema(), &database).await?;
        let output = e.kafka_table(name).await?;
        let (ctx, planner) = spec::pipeline_context(&database);
        ctx.register_table(OUTPUT, output).map_err(KfsqlError::from_datafusion)?;
        let columns: Vec<String> = def.columns.iter().map(|c| format!("\"{}\"", c.name.replace('"', "\"\""))).collect();
        let insert_sql = format!("INSERT INTO {OUTPUT} ({}) {}", columns.join(", "), pipeline.query);

        let checkpoint = store.load(name).await?.unwrap_or_default();
        let topic = kafka.topic().to_string();
        let cluster = e.factory().cluster().clone();
        let group = cluster
            .consumer_config()
            .set("group.id", format!("kfsql-pipeline-{name}"))
            .create_with_context(crate::kafka::KfsqlContext)
            .map_err(|e| tracing::warn!("pipeline '{name}': no consumer group commits: {e}"))
            .ok()
            .map(Arc::new);
        let count = cluster.partition_count(kafka.topic()).await?;
        let marks = cluster.watermarks(kafka.topic(), &(0..count).collect::<Vec<_>>()).await?;
        // a new pipeline starts at the beginning of the source: its backfill
        let position =
            (0..count).map(|p| (p, checkpoint.resume.get(&p).copied().unwrap_or(marks[p as usize].low))).collect();
        status.set_state(if checkpoint.emitted_until.is_some() || !checkpoint.resume.is_empty() {
            "resuming"
        } else {
            "backfilling"
        });
        status.emitted_until.store(checkpoint.emitted_until.unwrap_or(i64::MIN), std::sync::atomic::Ordering::Relaxed);
        Ok(Some(Pipeline {
            name: name.to_string(),
            source,
            payload_columns: source_table.schema().fields().len() - 4,
            source_table,
            window: analysis.window,
            lateness_ns: i64::try_from(pipeline.allowed_lateness_ms).unwrap_or(i64::MAX / 1_000_000) * 1_000_000,
            ctx,
            planner,
            insert_sql,
            position,
            replay_until: checkpoint.read.clone(),
            emitted_until: checkpoint.emitted_until,
            watermark: checkpoint.emitted_until,
            max_time: BTreeMap::new(),
            buffer: Vec::new(),
            group,
            topic,
        }))
    }

    /// One round; whether it read anything.
    async fn round(&mut self, e: &dyn Tables, store: &CheckpointStore, status: &PipelineStatus) -> Result<bool> {
        use std::sync::atomic::Ordering::Relaxed;
        let kafka = as_kafka(&self.source_table)?;
        let cluster = e.factory().cluster().clone();
        let parts: Vec<i32> = self.position.keys().copied().collect();
        let marks = cluster.watermarks(kafka.topic(), &parts).await?;
        let mut ranges = Vec::new();
        let mut backlog = Vec::new();
        let with_data = parts.iter().enumerate().filter(|(i, p)| marks[*i].high > self.position[*p]).count();
        let per_partition = (ROUND_MESSAGES / with_data.max(1) as i64).max(1_000);
        for (i, &p) in parts.iter().enumerate() {
            let start = self.position[&p].max(marks[i].low);
            let end = marks[i].high.min(start.saturating_add(per_partition));
            if end > start {
                ranges.push(PartitionRange { partition: p, start, end });
            }
            if end < marks[i].high {
                backlog.push(p);
            }
        }
        if ranges.is_empty() {
            status.input_lag.store(0, Relaxed);
            if status.state() != "running" {
                status.set_state("running");
            }
            return Ok(false);
        }
        let exec = kafka
            .scan_exec(parts.len() as i32, ranges.clone(), None, None, "pipeline round".into(), Vec::new())
            .map_err(KfsqlError::from_datafusion)?;
        let batches = datafusion::physical_plan::collect(Arc::new(exec), e.task_context())
            .await
            .map_err(KfsqlError::from_datafusion)?;
        let read: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        status.rows_in.fetch_add(read, Relaxed);
        for r in &ranges {
            self.position.insert(r.partition, r.end);
        }
        let lag: i64 = parts.iter().enumerate().map(|(i, p)| (marks[i].high - self.position[p]).max(0)).sum();
        status.input_lag.store(lag, Relaxed);

        let written = match self.window {
            None => self.emit(batches, None).await?,
            Some(w) => {
                for b in batches {
                    self.ingest(b, w, status)?;
                }
                self.advance_watermark(&backlog);
                status.watermark.store(self.watermark.unwrap_or(i64::MIN), Relaxed);
                let lo = self.emitted_until;
                let hi = self.watermark.map(|wm| w.end_at_or_before(wm.saturating_sub(self.lateness_ns)));
                match hi {
                    Some(hi) if lo.is_none_or(|lo| hi > lo) => {
                        let n = self.emit_windows(w, lo, hi).await?;
                        self.emitted_until = Some(hi);
                        status.emitted_until.store(hi, Relaxed);
                        self.evict(w, hi)?;
                        n
                    }
                    _ => 0,
                }
            }
        };
        status.rows_out.fetch_add(written, Relaxed);
        let checkpoint = self.checkpoint();
        store.save(&self.name, &checkpoint).await?;
        status.checkpoints.fetch_add(1, Relaxed);
        status.checkpointed_at.store(crate::latest::view::now_ns(), Relaxed);
        self.commit_group(&checkpoint).await;
        status.set_state(if backlog.is_empty() { "running" } else { "backfilling" });
        status.clear_error();
        Ok(true)
    }

    /// Run the query over `rows` (the source, for this run) and write its output; the count written.
    async fn emit(&self, rows: Vec<RecordBatch>, windows: Option<(i64, i64)>) -> Result<u64> {
        if rows.iter().all(|b| b.num_rows() == 0) {
            return Ok(0);
        }
        let table = MemTable::try_new(self.source_table.schema(), vec![rows]).map_err(KfsqlError::from_datafusion)?;
        self.ctx.deregister_table(self.source.as_str()).map_err(KfsqlError::from_datafusion)?;
        self.ctx.register_table(self.source.as_str(), Arc::new(table)).map_err(KfsqlError::from_datafusion)?;
        self.planner.emitting(windows);
        let df = self.ctx.sql(&self.insert_sql).await.map_err(KfsqlError::from_datafusion)?;
        let out = df.collect().await.map_err(KfsqlError::from_datafusion)?;
        Ok(out
            .first()
            .and_then(|b| {
                b.column(0).as_primitive_opt::<datafusion::arrow::datatypes::UInt64Type>().map(|a| a.value(0))
            })
            .unwrap_or(0))
    }

    /// Add a batch read from the source to the buffer, counting and leaving out late events.
    fn ingest(&mut self, batch: RecordBatch, w: Window, status: &PipelineStatus) -> Result<()> {
        let times = times_ns(&batch, w.time_index)?;
        let parts = batch.column(self.payload_columns).as_primitive::<Int32Type>();
        let offsets = batch.column(self.payload_columns + 1).as_primitive::<Int64Type>();
        let mut keep = Vec::with_capacity(batch.num_rows());
        let mut late = 0u64;
        let emitted = self.emitted_until.unwrap_or(i64::MIN);
        for i in 0..batch.num_rows() {
            if times.is_null(i) {
                keep.push(false); // in no window
                continue;
            }
            let (t, p, o) = (times.value(i), parts.value(i), offsets.value(i));
            let m = self.max_time.entry(p).or_insert(t);
            *m = (*m).max(t);
            let replay = self.replay_until.get(&p).is_some_and(|&r| o < r);
            if w.last_end(t) <= emitted {
                keep.push(false);
                late += u64::from(!replay);
            } else {
                keep.push(true);
                late += u64::from(!replay && w.first_end(t) <= emitted);
            }
        }
        if late > 0 {
            status.late_events.fetch_add(late, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(
                "pipeline '{}': {late} late event(s) left out of windows already emitted (see kfsql.pipelines)",
                self.name
            );
        }
        let kept = Buffered::filter(&batch, &times, &BooleanArray::from(keep))?;
        if kept.rows.num_rows() > 0 {
            self.buffer.push(kept);
        }
        Ok(())
    }

    fn advance_watermark(&mut self, backlog: &[i32]) {
        let candidate = if backlog.is_empty() {
            self.max_time.values().copied().max()
        } else {
            // a partition that is behind and has shown no event yet holds everything
            backlog
                .iter()
                .map(|p| self.max_time.get(p).copied())
                .collect::<Option<Vec<_>>>()
                .and_then(|v| v.into_iter().min())
        };
        if let Some(c) = candidate {
            self.watermark = Some(self.watermark.map_or(c, |w| w.max(c)));
        }
    }

    /// Emit the windows ending in `(lo, hi]`, a few window ends per query: as many as keep the rows the query
    /// expands into windows under [`EMIT_BUDGET`] (at least one window end). Per-group state is not small (count
    /// distinct keeps a hash set per group), so a backfill round spanning hours must not become one query.
    async fn emit_windows(&self, w: Window, lo: Option<i64>, hi: i64) -> Result<u64> {
        let mut times: Vec<i64> = self.buffer.iter().flat_map(|b| b.times.values().iter().copied()).collect();
        times.sort_unstable();
        let Some(&earliest) = times.first() else { return Ok(0) };
        let first = match lo {
            Some(lo) => lo.saturating_add(w.slide_ns),
            None => w.first_end(earliest),
        };
        // rows with a time in [from, to)
        let count = |from: i64, to: i64| times.partition_point(|t| *t < to) - times.partition_point(|t| *t < from);
        let per_row = (w.size_ns / w.slide_ns) as usize;
        let mut written = 0;
        let mut start = first; // first window end of the chunk
        while start <= hi {
            let mut end = start;
            while end < hi {
                let next = end.saturating_add(w.slide_ns);
                if count(start.saturating_sub(w.size_ns), next) * per_row > EMIT_BUDGET {
                    break;
                }
                end = next;
            }
            // the rows of the windows ending in [start, end]: [start - size, end)
            let from = start.saturating_sub(w.size_ns);
            let rows = self.filter_buffer(|t| t >= from && t < end)?.into_iter().map(|b| b.rows).collect();
            written += self.emit(rows, Some((start - w.slide_ns, end))).await?;
            start = end.saturating_add(w.slide_ns);
        }
        Ok(written)
    }

    /// Drop rows that no window ending after `hi` needs.
    fn evict(&mut self, w: Window, hi: i64) -> Result<()> {
        let floor = hi.saturating_add(w.slide_ns).saturating_sub(w.size_ns);
        self.buffer = self.filter_buffer(|t| t >= floor)?;
        Ok(())
    }

    /// The buffered rows whose event time passes `keep`.
    fn filter_buffer(&self, keep: impl Fn(i64) -> bool) -> Result<Vec<Buffered>> {
        let mut out = Vec::with_capacity(self.buffer.len());
        for b in &self.buffer {
            let mask: BooleanArray = b.times.values().iter().map(|t| Some(keep(*t))).collect();
            let kept = Buffered::filter(&b.rows, &b.times, &mask)?;
            if kept.rows.num_rows() > 0 {
                out.push(kept);
            }
        }
        Ok(out)
    }

    /// Mirror the checkpoint in the consumer group (best effort: the checkpoint is what a restart reads).
    async fn commit_group(&self, checkpoint: &Checkpoint) {
        use rdkafka::consumer::{CommitMode, Consumer};
        let Some(group) = self.group.clone() else { return };
        let mut tpl = rdkafka::TopicPartitionList::new();
        for (&p, &o) in &checkpoint.resume {
            if tpl.add_partition_offset(&self.topic, p, rdkafka::Offset::Offset(o)).is_err() {
                return;
            }
        }
        let name = self.name.clone();
        let done = tokio::task::spawn_blocking(move || group.commit(&tpl, CommitMode::Sync)).await;
        if let Ok(Err(e)) = done {
            tracing::debug!("pipeline '{name}': consumer group commit failed: {e}");
        }
    }

    /// Where a restart resumes: per partition the oldest buffered offset, else the next unread one.
    fn checkpoint(&self) -> Checkpoint {
        let mut resume = self.position.clone();
        for Buffered { rows: b, .. } in &self.buffer {
            let parts = b.column(self.payload_columns).as_primitive::<Int32Type>();
            let offsets = b.column(self.payload_columns + 1).as_primitive::<Int64Type>();
            for i in 0..b.num_rows() {
                let r = resume.entry(parts.value(i)).or_insert(i64::MAX);
                *r = (*r).min(offsets.value(i));
            }
        }
        Checkpoint { version: 1, resume, read: self.position.clone(), emitted_until: self.emitted_until }
    }
}

impl Buffered {
    /// The rows (and their times) that `mask` keeps.
    fn filter(rows: &RecordBatch, times: &TimestampNanosecondArray, mask: &BooleanArray) -> Result<Buffered> {
        let rows = filter_record_batch(rows, mask).map_err(arrow_err)?;
        let times = datafusion::arrow::compute::filter(times, mask).map_err(arrow_err)?;
        Ok(Buffered { rows, times: times.as_primitive::<TimestampNanosecondType>().clone() })
    }
}

fn as_kafka(t: &Arc<dyn TableProvider>) -> Result<&KafkaTable> {
    crate::table::provider::as_kafka(t.as_ref())
        .ok_or_else(|| KfsqlError::InvalidParameter("a materialized view reads a Kafka table".into()))
}

/// A time column as nanoseconds since the epoch.
fn times_ns(batch: &RecordBatch, index: usize) -> Result<TimestampNanosecondArray> {
    let ns = cast(batch.column(index), &DataType::Timestamp(TimeUnit::Nanosecond, None)).map_err(arrow_err)?;
    Ok(ns.as_primitive::<TimestampNanosecondType>().clone())
}

fn arrow_err(e: datafusion::arrow::error::ArrowError) -> KfsqlError {
    KfsqlError::Internal(format!("pipeline: {e}"))
}

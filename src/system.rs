//! The `kfsql` schema: system tables computed when they are read — `kfsql.tables` (every Kafka table and its
//! options), `kfsql.table_stats` (what scans have read: messages, bytes, bad messages, tombstones, misrouted keys;
//! and, asked of the brokers when read, each partition's log start offset and oldest event still held)
//! `kfsql.freshness` (per latest view: readiness, consumer lag, newest event time applied and when) and
//! `kfsql.pipelines` (per materialized view: state, input lag, rows in / out, late events, watermark, last error).

use std::sync::{Arc, Weak};

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, Int64Builder, ListBuilder, RecordBatch, StringArray, TimestampNanosecondBuilder, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{MemorySchemaProvider, SchemaProvider, Session};
use datafusion::datasource::{MemTable, TableProvider, TableType};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

use crate::latest::LatestViews;
use crate::pipeline::Pipelines;
use crate::table::Tables;

type BatchFn = fn(&Sources) -> DfResult<RecordBatch>;
type AsyncBatchFn = fn(Sources) -> futures::future::BoxFuture<'static, DfResult<RecordBatch>>;

/// What the system tables read: the engine's tables (through its narrow handle), the latest views and the
/// pipelines. Held weakly, since the engine's session holds the system tables.
#[derive(Clone)]
pub struct Handles {
    pub tables: Weak<dyn Tables>,
    pub latest: Weak<LatestViews>,
    pub pipelines: Weak<Pipelines>,
}

impl std::fmt::Debug for Handles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Handles")
    }
}

/// [`Handles`] while a system table is read.
#[derive(Clone)]
struct Sources {
    tables: Arc<dyn Tables>,
    latest: Arc<LatestViews>,
    pipelines: Arc<Pipelines>,
}

impl Handles {
    fn upgrade(&self) -> DfResult<Sources> {
        let gone = || DataFusionError::Execution("kfsql is shutting down".into());
        Ok(Sources {
            tables: self.tables.upgrade().ok_or_else(gone)?,
            latest: self.latest.upgrade().ok_or_else(gone)?,
            pipelines: self.pipelines.upgrade().ok_or_else(gone)?,
        })
    }
}

/// How a system table computes its rows: from the engine's state, or by also asking the brokers.
#[derive(Debug, Clone, Copy)]
enum Rows {
    State(BatchFn),
    Brokers(AsyncBatchFn),
}

/// A table whose rows are computed from the engine's state each time it is scanned.
#[derive(Debug)]
struct SystemTable {
    schema: SchemaRef,
    handles: Handles,
    rows: Rows,
}

#[async_trait]
impl TableProvider for SystemTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
    fn table_type(&self) -> TableType {
        TableType::View
    }
    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let sources = self.handles.upgrade()?;
        let batch = match self.rows {
            Rows::State(f) => f(&sources)?,
            Rows::Brokers(f) => f(sources).await?,
        };
        MemTable::try_new(self.schema.clone(), vec![vec![batch]])?.scan(state, projection, filters, limit).await
    }
}

/// The `kfsql` schema with its system tables.
pub fn schema(handles: Handles) -> DfResult<Arc<dyn SchemaProvider>> {
    let s = MemorySchemaProvider::new();
    s.register_table(
        "tables".into(),
        Arc::new(SystemTable { schema: tables_schema(), handles: handles.clone(), rows: Rows::State(tables_rows) }),
    )?;
    s.register_table(
        "table_stats".into(),
        Arc::new(SystemTable {
            schema: stats_schema(),
            handles: handles.clone(),
            rows: Rows::Brokers(|e| Box::pin(stats_rows(e))),
        }),
    )?;
    s.register_table(
        "freshness".into(),
        Arc::new(SystemTable {
            schema: freshness_schema(),
            handles: handles.clone(),
            rows: Rows::State(freshness_rows),
        }),
    )?;
    s.register_table(
        "pipelines".into(),
        Arc::new(SystemTable { schema: pipelines_schema(), handles, rows: Rows::State(pipelines_rows) }),
    )?;
    Ok(Arc::new(s))
}

pub fn tables_schema() -> SchemaRef {
    let f = |n: &str| Field::new(n, DataType::Utf8, true);
    Arc::new(Schema::new(vec![
        Field::new("table_name", DataType::Utf8, false),
        Field::new("topic", DataType::Utf8, false),
        f("format"),
        f("key"),
        f("event_time"),
        f("partitioner"),
        f("bad_messages"),
        f("ttl"),
        f("online"),
    ]))
}

fn tables_rows(sources: &Sources) -> DfResult<RecordBatch> {
    let engine = &sources.tables;
    let defs = engine.definitions();
    let mut cols: Vec<Vec<Option<String>>> = vec![Vec::new(); 9];
    for d in defs.values() {
        let o = d.table_options().map_err(|e| e.into_datafusion())?;
        let row = [
            Some(d.name.clone()),
            Some(d.topic.clone()),
            Some(o.format.to_string()),
            o.key.clone(),
            o.event_time.clone(),
            Some(o.partitioner.to_string()),
            Some(o.bad_messages.to_string()),
            o.ttl.map(|t| humantime::format_duration(t).to_string()),
            Some(o.online.to_string()),
        ];
        for (c, v) in cols.iter_mut().zip(row) {
            c.push(v);
        }
    }
    let arrays: Vec<ArrayRef> = cols.into_iter().map(|c| Arc::new(StringArray::from(c)) as ArrayRef).collect();
    Ok(RecordBatch::try_new(tables_schema(), arrays)?)
}

fn stats_schema() -> SchemaRef {
    let u = |n: &str| Field::new(n, DataType::UInt64, false);
    Arc::new(Schema::new(vec![
        Field::new("table_name", DataType::Utf8, false),
        Field::new("topic", DataType::Utf8, false),
        u("scans"),
        u("messages"),
        u("bytes"),
        u("bad_messages"),
        u("tombstones"),
        u("misrouted"),
        Field::new("history_truncated", DataType::Boolean, true),
        Field::new("log_start_offsets", DataType::List(Arc::new(Field::new("item", DataType::Int64, true))), true),
        Field::new(
            "oldest_event_times",
            DataType::List(Arc::new(Field::new(
                "item",
                DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Nanosecond, None),
                true,
            ))),
            true,
        ),
    ]))
}

async fn stats_rows(sources: Sources) -> DfResult<RecordBatch> {
    let engine = sources.tables;
    let defs = engine.definitions();
    // per table, per partition: what Kafka still holds (NULL when the brokers do not answer)
    let histories = futures::future::join_all(defs.values().map(|d| {
        let engine = engine.clone();
        async move {
            let table = engine.kafka_table(&d.name).await.ok()?;
            let kafka = crate::table::provider::as_kafka(table.as_ref())?;
            match crate::table::history::read(kafka).await {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::warn!("kfsql.table_stats: the history of '{}': {e}", d.name);
                    None
                }
            }
        }
    }))
    .await;
    let mut truncated = datafusion::arrow::array::BooleanBuilder::new();
    let mut starts = ListBuilder::new(Int64Builder::new());
    let mut oldest = ListBuilder::new(TimestampNanosecondBuilder::new());
    for h in &histories {
        match h {
            Some(h) => {
                truncated.append_value(h.iter().any(|p| p.log_start > 0));
                for p in h {
                    starts.values().append_value(p.log_start);
                    oldest.values().append_option(p.oldest_event_ns);
                }
                starts.append(true);
                oldest.append(true);
            }
            None => {
                truncated.append_null();
                starts.append(false);
                oldest.append(false);
            }
        }
    }
    let (mut names, mut topics) = (Vec::new(), Vec::new());
    let mut nums: Vec<Vec<u64>> = vec![Vec::new(); 6];
    for d in defs.values() {
        let s = engine.factory().stats_for(&d.name).snapshot();
        names.push(d.name.clone());
        topics.push(d.topic.clone());
        for (c, v) in nums.iter_mut().zip([s.scans, s.messages, s.bytes, s.bad_messages, s.tombstones, s.misrouted]) {
            c.push(v);
        }
    }
    let mut arrays: Vec<ArrayRef> = vec![Arc::new(StringArray::from(names)), Arc::new(StringArray::from(topics))];
    arrays.extend(nums.into_iter().map(|c| Arc::new(UInt64Array::from(c)) as ArrayRef));
    arrays.push(Arc::new(truncated.finish()));
    arrays.push(Arc::new(starts.finish()));
    arrays.push(Arc::new(oldest.finish()));
    Ok(RecordBatch::try_new(stats_schema(), arrays)?)
}

fn freshness_schema() -> SchemaRef {
    let ts = || DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Nanosecond, None);
    Arc::new(Schema::new(vec![
        Field::new("table_name", DataType::Utf8, false),
        Field::new("topic", DataType::Utf8, false),
        Field::new("ready", DataType::Boolean, false),
        Field::new("load_seconds", DataType::Float64, true),
        Field::new("keys", DataType::UInt64, false),
        Field::new("lag_messages", DataType::Int64, false),
        Field::new("newest_event_time", ts(), true),
        Field::new("last_applied_at", ts(), true),
        Field::new("caught_up_at", ts(), true),
        Field::new("staleness_ms", DataType::Int64, false),
        Field::new("messages", DataType::UInt64, false),
        Field::new("tombstones", DataType::UInt64, false),
        Field::new("bad_messages", DataType::UInt64, false),
        Field::new("lookups", DataType::UInt64, false),
        Field::new("payload_bytes", DataType::UInt64, false),
        Field::new("memory_bytes", DataType::UInt64, false),
        Field::new("last_error", DataType::Utf8, true),
    ]))
}

fn freshness_rows(sources: &Sources) -> DfResult<RecordBatch> {
    use datafusion::arrow::array::{BooleanArray, Float64Array, Int64Array, TimestampNanosecondArray};
    use std::sync::atomic::Ordering::Relaxed;
    let views = sources.latest.all();
    let now = crate::latest::view::now_ns();
    let when = |ns: i64| (ns > 0).then_some(ns);
    let mut sizes = Vec::new();
    for v in &views {
        let st = v.state.read().unwrap_or_else(|p| p.into_inner());
        sizes.push((st.len() as u64, st.payload_bytes() as u64, st.memory_bytes() as u64));
    }
    fn f(v: &crate::latest::LatestView) -> &crate::latest::view::Freshness {
        &v.fresh
    }
    let arrays: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(views.iter().map(|v| v.name.clone()))),
        Arc::new(StringArray::from_iter_values(views.iter().map(|v| v.topic.clone()))),
        Arc::new(BooleanArray::from(views.iter().map(|v| v.ready.load(Relaxed)).collect::<Vec<_>>())),
        Arc::new(Float64Array::from_iter(views.iter().map(|v| {
            let ns = v.load_ns.load(Relaxed);
            (ns > 0).then(|| ns as f64 / 1e9)
        }))),
        Arc::new(UInt64Array::from_iter_values(sizes.iter().map(|s| s.0))),
        Arc::new(Int64Array::from_iter_values(views.iter().map(|v| f(v).lag.load(Relaxed)))),
        Arc::new(TimestampNanosecondArray::from_iter(views.iter().map(|v| {
            let t = f(v).newest_event_ns.load(Relaxed);
            (t != i64::MIN).then_some(t)
        }))),
        Arc::new(TimestampNanosecondArray::from_iter(views.iter().map(|v| when(f(v).last_applied_ns.load(Relaxed))))),
        Arc::new(TimestampNanosecondArray::from_iter(views.iter().map(|v| when(f(v).caught_up_ns.load(Relaxed))))),
        Arc::new(Int64Array::from_iter_values(views.iter().map(|v| {
            let since = when(f(v).caught_up_ns.load(Relaxed)).unwrap_or(v.started_ns);
            (now - since).max(0) / 1_000_000
        }))),
        Arc::new(UInt64Array::from_iter_values(views.iter().map(|v| f(v).messages.load(Relaxed)))),
        Arc::new(UInt64Array::from_iter_values(views.iter().map(|v| f(v).tombstones.load(Relaxed)))),
        Arc::new(UInt64Array::from_iter_values(views.iter().map(|v| f(v).bad.load(Relaxed)))),
        Arc::new(UInt64Array::from_iter_values(views.iter().map(|v| f(v).lookups.load(Relaxed)))),
        Arc::new(UInt64Array::from_iter_values(sizes.iter().map(|s| s.1))),
        Arc::new(UInt64Array::from_iter_values(sizes.iter().map(|s| s.2))),
        Arc::new(StringArray::from_iter(
            views.iter().map(|v| f(v).last_error.lock().unwrap_or_else(|p| p.into_inner()).clone()),
        )),
    ];
    Ok(RecordBatch::try_new(freshness_schema(), arrays)?)
}

fn pipelines_schema() -> SchemaRef {
    let ts = || DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Nanosecond, None);
    Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("state", DataType::Utf8, false),
        Field::new("input_lag", DataType::Int64, false),
        Field::new("rows_in", DataType::UInt64, false),
        Field::new("rows_out", DataType::UInt64, false),
        Field::new("late_events", DataType::UInt64, false),
        Field::new("watermark", ts(), true),
        Field::new("emitted_until", ts(), true),
        Field::new("checkpoints", DataType::UInt64, false),
        Field::new("checkpointed_at", ts(), true),
        Field::new("last_error", DataType::Utf8, true),
        Field::new("query", DataType::Utf8, false),
    ]))
}

fn pipelines_rows(sources: &Sources) -> DfResult<RecordBatch> {
    use crate::pipeline::PipelineStatus;
    use datafusion::arrow::array::{Int64Array, TimestampNanosecondArray};
    use std::sync::atomic::Ordering::Relaxed;
    let all = sources.pipelines.statuses();
    let arrays: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(all.iter().map(|p| p.name.clone()))),
        Arc::new(StringArray::from_iter_values(all.iter().map(|p| p.state()))),
        Arc::new(Int64Array::from_iter_values(all.iter().map(|p| p.input_lag.load(Relaxed)))),
        Arc::new(UInt64Array::from_iter_values(all.iter().map(|p| p.rows_in.load(Relaxed)))),
        Arc::new(UInt64Array::from_iter_values(all.iter().map(|p| p.rows_out.load(Relaxed)))),
        Arc::new(UInt64Array::from_iter_values(all.iter().map(|p| p.late_events.load(Relaxed)))),
        Arc::new(TimestampNanosecondArray::from_iter(all.iter().map(|p| PipelineStatus::time(&p.watermark)))),
        Arc::new(TimestampNanosecondArray::from_iter(all.iter().map(|p| PipelineStatus::time(&p.emitted_until)))),
        Arc::new(UInt64Array::from_iter_values(all.iter().map(|p| p.checkpoints.load(Relaxed)))),
        Arc::new(TimestampNanosecondArray::from_iter(all.iter().map(|p| PipelineStatus::time(&p.checkpointed_at)))),
        Arc::new(StringArray::from_iter(all.iter().map(|p| p.last_error()))),
        Arc::new(StringArray::from_iter_values(all.iter().map(|p| p.query.clone()))),
    ];
    Ok(RecordBatch::try_new(pipelines_schema(), arrays)?)
}

//! The `kfsql` schema: system tables computed when they are read — `kfsql.tables` (every Kafka table and its
//! options) and `kfsql.table_stats` (what scans have read: messages, bytes, bad messages, tombstones, misrouted keys).

use std::sync::{Arc, Weak};

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{MemorySchemaProvider, SchemaProvider, Session};
use datafusion::datasource::{MemTable, TableProvider, TableType};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

use crate::engine::EngineInner;

type BatchFn = fn(&EngineInner) -> DfResult<RecordBatch>;

/// A table whose rows are computed from the engine's state each time it is scanned.
#[derive(Debug)]
struct SystemTable {
    schema: SchemaRef,
    engine: Weak<EngineInner>,
    rows: BatchFn,
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
        let engine =
            self.engine.upgrade().ok_or_else(|| DataFusionError::Execution("kfsql is shutting down".into()))?;
        let batch = (self.rows)(&engine)?;
        MemTable::try_new(self.schema.clone(), vec![vec![batch]])?.scan(state, projection, filters, limit).await
    }
}

/// The `kfsql` schema with its system tables.
pub fn schema(engine: Weak<EngineInner>) -> DfResult<Arc<dyn SchemaProvider>> {
    let s = MemorySchemaProvider::new();
    s.register_table(
        "tables".into(),
        Arc::new(SystemTable { schema: tables_schema(), engine: engine.clone(), rows: tables_rows }),
    )?;
    s.register_table("table_stats".into(), Arc::new(SystemTable { schema: stats_schema(), engine, rows: stats_rows }))?;
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

pub fn tables_rows(engine: &EngineInner) -> DfResult<RecordBatch> {
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
    ]))
}

fn stats_rows(engine: &EngineInner) -> DfResult<RecordBatch> {
    let defs = engine.definitions();
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
    Ok(RecordBatch::try_new(stats_schema(), arrays)?)
}

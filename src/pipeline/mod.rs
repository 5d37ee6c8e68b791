//! Feature pipelines: `CREATE MATERIALIZED VIEW name WITH (…) AS SELECT …` is a continuous query that reads a raw
//! Kafka table and writes a feature topic, which is itself declared as a Kafka table (queryable, ASOF-joinable and,
//! with `online`, served from `latest.*`). The view's definition — its query included — lives in the catalog topic,
//! so every server that reads the catalog runs it, resumes it after a restart, and stops it on DROP.
//!
//! - [`window`]: `TUMBLE` / `HOP` in FROM (plain logical plans, usable in any query over history);
//! - [`spec`]: what a query is as a pipeline (source, window, output), and what is refused;
//! - [`runner`]: the read → compute → write → checkpoint loop, its watermark and delivery guarantee;
//! - [`checkpoint`]: the committed progress each restart resumes from.

pub mod checkpoint;
pub mod runner;
pub mod spec;
pub mod window;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::table::Tables;
use checkpoint::CheckpointStore;

/// A running pipeline's counters, as `kfsql.pipelines` shows them.
#[derive(Debug)]
pub struct PipelineStatus {
    pub name: String,
    pub query: String,
    state: Mutex<String>,
    last_error: Mutex<Option<String>>,
    /// Source messages not read yet.
    pub input_lag: AtomicI64,
    pub rows_in: AtomicU64,
    pub rows_out: AtomicU64,
    pub late_events: AtomicU64,
    /// ns since the epoch; i64::MIN: none yet.
    pub watermark: AtomicI64,
    pub emitted_until: AtomicI64,
    /// Checkpoints written since this server started the pipeline, and when the last one was (ns).
    pub checkpoints: AtomicU64,
    pub checkpointed_at: AtomicI64,
}

impl PipelineStatus {
    fn new(name: &str, query: &str) -> Self {
        Self {
            name: name.to_string(),
            query: query.to_string(),
            state: Mutex::new("starting".into()),
            last_error: Mutex::new(None),
            input_lag: AtomicI64::new(0),
            rows_in: AtomicU64::new(0),
            rows_out: AtomicU64::new(0),
            late_events: AtomicU64::new(0),
            watermark: AtomicI64::new(i64::MIN),
            emitted_until: AtomicI64::new(i64::MIN),
            checkpoints: AtomicU64::new(0),
            checkpointed_at: AtomicI64::new(i64::MIN),
        }
    }

    pub fn state(&self) -> String {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_state(&self, state: &str) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = state.to_string();
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_error(&self, e: String) {
        self.set_state("failed, retrying");
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
    }

    fn clear_error(&self) {
        self.last_error.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// A time counter, None while unset.
    pub fn time(counter: &AtomicI64) -> Option<i64> {
        Some(counter.load(Ordering::Relaxed)).filter(|t| *t != i64::MIN)
    }
}

/// The pipelines this server runs.
#[derive(Debug)]
pub struct Pipelines {
    store: CheckpointStore,
    running: Mutex<HashMap<String, Running>>,
}

#[derive(Debug)]
struct Running {
    query: String,
    status: Arc<PipelineStatus>,
    task: tokio::task::JoinHandle<()>,
}

impl Pipelines {
    pub fn new(store: CheckpointStore) -> Arc<Self> {
        Arc::new(Self { store, running: Mutex::new(HashMap::new()) })
    }

    pub fn store(&self) -> &CheckpointStore {
        &self.store
    }

    /// Run pipeline `name` (a materialized view whose definition holds `query`), unless it already runs that query.
    pub fn sync(&self, name: &str, query: &str, engine: Weak<dyn Tables>) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = running.get(name)
            && r.query == query
            && !r.task.is_finished()
        {
            return;
        }
        if let Some(old) = running.remove(name) {
            old.task.abort();
        }
        let status = Arc::new(PipelineStatus::new(name, query));
        let span = tracing::info_span!(parent: None, "pipeline", name);
        let task = crate::scheduler::query_runtime().spawn(tracing::Instrument::instrument(
            runner::run(name.to_string(), engine, self.store.clone(), status.clone()),
            span,
        ));
        running.insert(name.to_string(), Running { query: query.to_string(), status, task });
    }

    /// Stop pipeline `name` where it stands (as a crash would: its last checkpoint is where it resumes).
    pub fn stop(&self, name: &str) {
        if let Some(r) = self.running.lock().unwrap_or_else(|p| p.into_inner()).remove(name) {
            r.task.abort();
        }
    }

    /// Stop every pipeline (the engine is going away).
    pub fn stop_all(&self) {
        for (_, r) in self.running.lock().unwrap_or_else(|p| p.into_inner()).drain() {
            r.task.abort();
        }
    }

    pub fn status(&self, name: &str) -> Option<Arc<PipelineStatus>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner()).get(name).map(|r| r.status.clone())
    }

    /// Wait until every pipeline has read its source to the end and runs live; false on timeout.
    pub async fn wait_caught_up(&self, timeout: std::time::Duration) -> bool {
        crate::wait::until(timeout, || {
            self.statuses().iter().all(|s| s.state() == "running" && s.input_lag.load(Ordering::Relaxed) == 0)
        })
        .await
    }

    pub fn statuses(&self) -> Vec<Arc<PipelineStatus>> {
        let mut v: Vec<_> =
            self.running.lock().unwrap_or_else(|p| p.into_inner()).values().map(|r| r.status.clone()).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}

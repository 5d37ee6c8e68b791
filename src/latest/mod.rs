//! Online serving: `latest.<table>` for every Kafka table declared `'online' 'true'` — one row per key, the value
//! with the greatest event time (ties: greatest offset), tombstones delete, values older than the TTL are not served
//! (DESIGN.md "Latest view").
//!
//! * [`state`]: the per-key map, holding raw payloads;
//! * [`follow`]: the background consumer that keeps a view fresh, and the replay behind time travel;
//! * [`view`]: one view, its freshness and readiness, and its rows as Arrow;
//! * [`table`]: the DataFusion tables (`latest.<table>`, and `… FOR SYSTEM_TIME AS OF T`);
//! * [`lookup`]: the point-lookup fast path that answers `key = v` / `key IN (…)` without DataFusion planning.
//!
//! [`LatestViews`] owns them all and the `latest` schema they appear in.

pub mod follow;
pub mod lookup;
pub mod state;
pub mod table;
pub mod view;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{MemorySchemaProvider, SchemaProvider};

use crate::error::{KfsqlError, Result};
use crate::kafka::KafkaCluster;
use crate::table::KafkaTable;
pub use table::{AS_OF_FUNCTION, LatestAsOfFunction, LatestTable};
pub use view::LatestView;

/// Every latest view of an engine, and the `latest` schema.
#[derive(Debug)]
pub struct LatestViews {
    views: RwLock<HashMap<String, Arc<LatestView>>>,
    schema: Arc<MemorySchemaProvider>,
    cluster: Arc<KafkaCluster>,
}

impl LatestViews {
    pub fn new(cluster: Arc<KafkaCluster>) -> Arc<Self> {
        Arc::new(Self { views: RwLock::default(), schema: Arc::new(MemorySchemaProvider::new()), cluster })
    }

    pub fn schema_provider(&self) -> Arc<dyn SchemaProvider> {
        self.schema.clone()
    }

    pub fn get(&self, name: &str) -> Option<Arc<LatestView>> {
        self.views.read().unwrap_or_else(|p| p.into_inner()).get(name).cloned()
    }

    pub fn all(&self) -> Vec<Arc<LatestView>> {
        let mut v: Vec<_> = self.views.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Make `latest.<table>` follow `table` if it is online (restarting it if its definition changed), or remove
    /// it if the table is no longer online.
    pub fn sync(&self, table: &KafkaTable) -> Result<()> {
        let name = table.definition().name.clone();
        if !table.options().online {
            self.stop(&name);
            return Ok(());
        }
        if self.get(&name).is_some_and(|v| &v.definition == table.definition()) {
            return Ok(());
        }
        self.stop(&name);
        let view = Arc::new(LatestView::new(table)?);
        self.schema
            .register_table(name.clone(), Arc::new(LatestTable { view: view.clone() }))
            .map_err(KfsqlError::from_datafusion)?;
        self.views.write().unwrap_or_else(|p| p.into_inner()).insert(name.clone(), view.clone());
        let config = self.cluster.consumer_config();
        std::thread::Builder::new()
            .name(format!("kfsql-latest-{name}"))
            .spawn(move || follow::follow(view, config))
            .map_err(|e| KfsqlError::Internal(format!("cannot start the consumer of latest.{name}: {e}")))?;
        Ok(())
    }

    /// Wait until every view is ready and has applied everything its topic held when this was called (the broker
    /// confirmed it is at the end since then); false on timeout.
    pub async fn wait_caught_up(&self, timeout: std::time::Duration) -> bool {
        let since = view::now_ns();
        let caught_up = |v: &Arc<LatestView>| {
            v.ready.load(Ordering::Acquire) && v.fresh.caught_up_ns.load(Ordering::Acquire) >= since
        };
        crate::wait::until(timeout, || self.all().iter().all(caught_up)).await
    }

    /// Stop following `name` and remove `latest.<name>`.
    pub fn stop(&self, name: &str) {
        if let Some(v) = self.views.write().unwrap_or_else(|p| p.into_inner()).remove(name) {
            v.stopped.store(true, Ordering::Relaxed);
            let _ = self.schema.deregister_table(name);
        }
    }

    /// `latest.<view> FOR SYSTEM_TIME AS OF at_ms`: replayed from the log up to the current high watermarks, TTL
    /// relative to `at_ms`.
    pub async fn as_of(&self, view: &Arc<LatestView>, at_ms: i64) -> Result<RecordBatch> {
        let count = self.cluster.partition_count(&view.topic).await?;
        let parts: Vec<i32> = (0..count).collect();
        let marks = self.cluster.watermarks(&view.topic, &parts).await?;
        let ranges: Vec<(i32, i64, i64)> = parts.iter().zip(&marks).map(|(&p, w)| (p, w.low, w.high)).collect();
        let (v, config, stall) = (view.clone(), self.cluster.consumer_config(), self.cluster.timeout());
        let state = tokio::task::spawn_blocking(move || {
            follow::replay(&v.applier, &config, &v.topic, &ranges, at_ms, stall.max(std::time::Duration::from_secs(10)))
        })
        .await
        .map_err(|e| KfsqlError::Internal(format!("replaying latest.{}: {e}", view.name)))??;
        view.rows(&state, None, at_ms.saturating_mul(1_000_000))
    }
}

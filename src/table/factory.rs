//! `CREATE EXTERNAL TABLE … STORED AS KAFKA`: the DataFusion [`TableProviderFactory`] that validates a declaration
//! (options, key and event-time columns, the topic's existence) and builds its [`KafkaTable`]. Persisting the
//! definition is the engine's job, after this succeeds, so that a failed CREATE leaves nothing behind.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use datafusion::catalog::{Session, TableProviderFactory};
use datafusion::datasource::TableProvider;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::CreateExternalTable;

use crate::error::{KfsqlError, Result};
use crate::kafka::KafkaCluster;
use crate::table::definition::TableDefinition;
use crate::table::provider::KafkaTable;
use crate::table::stats::TableStats;

/// Builds Kafka tables; owns the per-table counters so they survive re-registration.
#[derive(Debug)]
pub struct KafkaTableFactory {
    cluster: Arc<KafkaCluster>,
    stats: Mutex<HashMap<String, Arc<TableStats>>>,
    stall_timeout: Duration,
}

impl KafkaTableFactory {
    pub fn new(cluster: Arc<KafkaCluster>, stall_timeout: Duration) -> Self {
        Self { cluster, stats: Mutex::new(HashMap::new()), stall_timeout }
    }

    pub fn cluster(&self) -> &Arc<KafkaCluster> {
        &self.cluster
    }

    /// Counters of table `name` (created on first use).
    pub fn stats_for(&self, name: &str) -> Arc<TableStats> {
        let mut m = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(name.to_string()).or_default().clone()
    }

    /// Messages and bytes all scans of all tables have read so far (progress of long statements).
    pub fn read_totals(&self) -> (u64, u64) {
        let m = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        m.values().map(|s| s.snapshot()).fold((0, 0), |(n, b), s| (n + s.messages, b + s.bytes))
    }

    /// Build a table from a definition already validated (e.g. read back from the catalog topic).
    pub fn table_from_definition(&self, def: TableDefinition) -> Result<KafkaTable> {
        let stats = self.stats_for(&def.name);
        KafkaTable::new(def, self.cluster.clone(), stats, self.stall_timeout)
    }

    /// Validate a CREATE EXTERNAL TABLE and build its table; checks that the topic exists.
    pub async fn create_from_command(&self, cmd: &CreateExternalTable) -> Result<KafkaTable> {
        if cmd.locations.len() != 1 {
            return Err(KfsqlError::InvalidParameter("LOCATION must name exactly one Kafka topic".into()));
        }
        if !cmd.table_partition_cols.is_empty() {
            return Err(KfsqlError::Unsupported(
                "PARTITIONED BY on a Kafka table (Kafka partitions are exposed as _partition)".into(),
            ));
        }
        let payload = cmd.schema.as_arrow().clone();
        let options: BTreeMap<String, String> = cmd.options.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let def = TableDefinition::new(cmd.name.table(), &cmd.locations[0], &payload, options)?;
        self.cluster.partition_count(&def.topic).await?;
        self.table_from_definition(def)
    }
}

#[async_trait]
impl TableProviderFactory for KafkaTableFactory {
    async fn create(&self, _state: &dyn Session, cmd: &CreateExternalTable) -> DfResult<Arc<dyn TableProvider>> {
        Ok(Arc::new(self.create_from_command(cmd).await.map_err(KfsqlError::into_datafusion)?))
    }
}

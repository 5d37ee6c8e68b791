//! [`Tables`]: the narrow handle on the engine that pipelines and system tables hold — the Kafka tables by name,
//! the factory that made them (the cluster, scan statistics) and a task context to run plans in (the statement
//! memory pool included). They get this, not the engine: neither imports the engine, and the engine owns them
//! without an import cycle.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::datasource::TableProvider;
use datafusion::execution::TaskContext;

use crate::error::Result;
use crate::table::{KafkaTableFactory, TableDefinition};

/// What the engine shows of itself to the parts it runs.
#[async_trait]
pub trait Tables: Send + Sync {
    /// The database name clients connect to.
    fn database(&self) -> &str;

    /// Definitions of all Kafka tables, by name.
    fn definitions(&self) -> BTreeMap<String, TableDefinition>;

    /// Kafka table `name` of schema public (42P01 when there is none, 22023 when `name` is another kind).
    async fn kafka_table(&self, name: &str) -> Result<Arc<dyn TableProvider>>;

    /// The factory of Kafka tables: their cluster and the counters their scans keep.
    fn factory(&self) -> &Arc<KafkaTableFactory>;

    /// A task context of the engine's session (memory pool and settings included).
    fn task_context(&self) -> Arc<TaskContext>;
}

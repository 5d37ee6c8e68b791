//! kfsql: Kafka topics as an ML feature store, queried with SQL over the Postgres wire protocol.
//!
//! The modules follow the data path: [`kafka`] (brokers, offsets, partitioners) → [`codec`] (bytes → Arrow) →
//! [`table`] (DataFusion providers and scans) → [`asof`] (point-in-time joins), [`latest`] (online latest-value
//! views) → [`engine`] (statements, catalog, timeouts) → [`server`] (pg-wire).
//! [`catalog`] persists table definitions in a compacted topic; [`system`] exposes the `kfsql.*` tables; [`demo`]
//! loads the fraud example into the embedded cluster.

pub mod asof;
pub mod catalog;
pub mod codec;
pub mod demo;
pub mod engine;
pub mod error;
pub mod export;
pub mod kafka;
pub mod latest;
pub mod memory;
pub mod pipeline;
pub mod scheduler;
pub mod server;
pub mod sql;
pub mod system;
pub mod table;
pub mod wait;

pub use engine::{Engine, EngineConfig, Output, Partitioned};
pub use error::{KfsqlError, Result};
pub use sql::command::Command;

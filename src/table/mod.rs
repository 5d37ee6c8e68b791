//! Kafka topics as DataFusion tables: the definition ([`definition`]), the `STORED AS KAFKA` factory
//! ([`factory`]), the [`provider`] with its filter [`pushdown`], the bounded per-partition [`scan`], the
//! [`sink`] behind `INSERT INTO`, the counters scans keep ([`stats`]), what they say about history Kafka no
//! longer holds ([`history`]), and the narrow handle on the engine the parts it runs hold ([`tables`]).

pub mod definition;
pub mod factory;
pub mod history;
pub mod provider;
pub mod pushdown;
pub mod scan;
pub mod sink;
pub mod stats;
pub mod tables;

pub use definition::{TableDefinition, TableOptions};
pub use factory::KafkaTableFactory;
pub use provider::KafkaTable;
pub use stats::TableStats;
pub use tables::Tables;

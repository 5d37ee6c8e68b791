//! Kafka topics as DataFusion tables: the definition ([`definition`]), the `STORED AS KAFKA` factory
//! ([`factory`]), the [`provider`] with its filter [`pushdown`], the bounded per-partition [`scan`], the
//! [`sink`] behind `INSERT INTO`, the counters scans keep ([`stats`]), and what they say about history Kafka no
//! longer holds ([`history`]).

pub mod definition;
pub mod factory;
pub mod history;
pub mod provider;
pub mod pushdown;
pub mod scan;
pub mod sink;
pub mod stats;

pub use definition::{TableDefinition, TableOptions};
pub use factory::KafkaTableFactory;
pub use provider::KafkaTable;
pub use stats::TableStats;

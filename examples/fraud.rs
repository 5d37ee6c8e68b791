//! The fraud example end to end, with kfsql as a library: an embedded Kafka with generated transactions and labels,
//! the tables of `sql/fraud/tables.sql`, a few history queries, and the point-in-time training set exported to
//! Parquet.
//!
//!     cargo run --release --example fraud

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::util::pretty::pretty_format_batches;
use kfsql::kafka::KafkaCluster;
use kfsql::{Engine, EngineConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cluster = Arc::new(KafkaCluster::embedded(1, Duration::from_secs(10))?);
    let engine = Engine::start(cluster.clone(), EngineConfig::default()).await?;
    kfsql::demo::load(&engine, &cluster, 20_000, 1_000).await?;
    println!("embedded Kafka at {} holds the demo topics", cluster.bootstrap_servers());

    let queries = [
        "SELECT count(*) AS txns, count(DISTINCT user_id) AS users, round(avg(amount), 2) AS avg_amount FROM transactions",
        "SELECT txn_id, amount, country, event_time, _partition, _offset FROM transactions WHERE user_id = 'u42' ORDER BY event_time LIMIT 5",
        "SELECT count(*) AS last_hour FROM transactions WHERE _timestamp >= now() - INTERVAL '1 hour'",
        "SELECT count(*) AS known_12h_ago FROM transactions FOR SYSTEM_TIME AS OF now() - INTERVAL '12 hours'",
    ];
    for sql in queries {
        println!("\n{sql}");
        for (_, batches, _) in engine.query(sql).await? {
            println!("{}", pretty_format_batches(&batches)?);
        }
    }

    // The training set: each label with the user's history strictly before the labelled transaction.
    let training = include_str!("../sql/fraud/training_set.sql");
    for (schema, batches, tag) in engine.query(training).await? {
        if schema.is_some() {
            println!("{}", pretty_format_batches(&batches)?);
        } else {
            println!("{tag}");
        }
    }
    println!("training set written to {}", std::path::absolute("exports/training/fraud.parquet")?.display());
    Ok(())
}

//! ASOF JOIN throughput on Parquet files made by scripts/bench-asof.sh (which also times DuckDB on the same files
//! and prints the ratio). Prints the best of three runs and a checksum to compare with DuckDB's.
//!
//!     KFSQL_BENCH_DIR=/tmp/asof cargo bench --bench asof

use std::sync::Arc;
use std::time::{Duration, Instant};

use kfsql::kafka::KafkaCluster;
use kfsql::{Engine, EngineConfig};

fn main() {
    let dir = std::env::var("KFSQL_BENCH_DIR").unwrap_or_else(|_| "target/bench-asof".into());
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async move {
        let cluster = Arc::new(KafkaCluster::embedded(1, Duration::from_secs(10)).expect("embedded kafka"));
        let config = EngineConfig { query_timeout: Duration::from_secs(3600), ..Default::default() };
        let engine = Engine::start(cluster, config).await.expect("engine");
        engine
            .query(&format!(
                "CREATE EXTERNAL TABLE labels STORED AS PARQUET LOCATION '{dir}/labels.parquet'; \
                 CREATE EXTERNAL TABLE features STORED AS PARQUET LOCATION '{dir}/features.parquet'"
            ))
            .await
            .expect("tables");
        let sql = "SELECT count(*), count(f.v), sum(f.v) FROM labels l \
                   ASOF JOIN features f MATCH_CONDITION (l.t >= f.t) ON l.k = f.k";
        let mut best = Duration::MAX;
        let mut answer = String::new();
        for round in 1..=3 {
            let start = Instant::now();
            let out = engine.query(sql).await.expect("asof");
            let took = start.elapsed();
            let (_, batches, _) = &out[0];
            answer = datafusion::arrow::util::pretty::pretty_format_batches(batches).expect("fmt").to_string();
            eprintln!("round {round}: {:.3}s", took.as_secs_f64());
            best = best.min(took);
        }
        println!("{answer}");
        println!("kfsql_seconds={:.3}", best.as_secs_f64());
    });
}

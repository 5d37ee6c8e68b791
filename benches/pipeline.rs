//! Feature pipeline throughput: events per second a windowed materialized view sustains from the raw topic to its
//! feature topic, printed beside the broker's raw produce rate measured in the same run (the anchor).
//!
//! 1. produce N fraud transactions (the demo generator, 5 000 users over 24 hours) with a bulk producer: the
//!    broker's raw produce rate;
//! 2. `CREATE MATERIALIZED VIEW` with a keyed hopping window (5 minutes / 1 hour: every event is in 12 windows) and
//!    count, sum, avg, max, count distinct, last value; the time until it has read all N events and emitted every
//!    closed window (acknowledged by the broker, checkpoint written) is the pipeline's rate.
//!
//! ```text
//! cargo bench --bench pipeline                                   # embedded Kafka
//! KFSQL_BENCH_BROKERS=127.0.0.1:9092 cargo bench --bench pipeline
//! KFSQL_BENCH_EVENTS=200000 cargo bench --bench pipeline
//! ```

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use kfsql::{Engine, EngineConfig};

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let events: usize = env("KFSQL_BENCH_EVENTS", 1_000_000);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async move {
        let cluster = common::cluster(Duration::from_secs(60));
        let partitions: i32 = env("KFSQL_BENCH_PARTITIONS", if cluster.is_embedded() { 32 } else { 8 });
        let id = std::process::id();
        let config = EngineConfig {
            catalog_topic: format!("_bench_pipeline_catalog_{id}"),
            query_timeout: Duration::from_secs(600),
            ..Default::default()
        };
        let engine = Engine::start(cluster.clone(), config).await.expect("engine");
        let (raw, features) = (format!("bench_txns_{id}"), format!("bench_features_{id}"));
        common::topic(&cluster, &raw, partitions).await;

        // 1. the anchor: the broker's raw produce rate for these messages
        let txns = kfsql::demo::generate(events, 5_000, Duration::from_secs(24 * 3600), chrono::Utc::now(), 1);
        let payloads: Vec<String> = txns.iter().map(|t| serde_json::to_string(t).expect("json")).collect();
        let producer = common::producer(&cluster, 5);
        let t0 = Instant::now();
        for (t, p) in txns.iter().zip(&payloads) {
            common::send(&producer, &raw, &t.user_id, p);
        }
        rdkafka::producer::Producer::flush(&producer, Duration::from_secs(600)).expect("flush");
        let produce = t0.elapsed();
        let produce_rate = events as f64 / produce.as_secs_f64();
        println!("broker:   produced {events} transactions in {:.2}s: {produce_rate:>9.0} events/s", produce.as_secs_f64());

        // 2. the pipeline: backfill the whole topic through a hopping window
        engine
            .query(&format!(
                "CREATE EXTERNAL TABLE transactions (txn_id VARCHAR NOT NULL, user_id VARCHAR NOT NULL, amount DOUBLE, \
                 merchant VARCHAR, country VARCHAR, event_time TIMESTAMP NOT NULL) STORED AS KAFKA LOCATION '{raw}' \
                 OPTIONS ('key' 'user_id', 'event_time' 'event_time')"
            ))
            .await
            .expect("create table");
        let t0 = Instant::now();
        engine
            .query(&format!(
                "CREATE MATERIALIZED VIEW user_txn_features WITH (topic = '{features}', key = 'user_id') AS \
                 SELECT user_id, window_end, count(*) AS txn_count_1h, sum(amount) AS amount_sum_1h, \
                        avg(amount) AS amount_avg_1h, max(amount) AS amount_max_1h, \
                        count(DISTINCT country) AS countries_1h, last_value(country ORDER BY event_time) AS last_country \
                 FROM HOP(transactions, event_time, INTERVAL '5 minutes', INTERVAL '1 hour') GROUP BY user_id, window_end"
            ))
            .await
            .expect("create materialized view");
        let status = engine.pipelines().status("user_txn_features").expect("pipeline");
        let last = txns.iter().map(|t| t.event_time_ms).max().unwrap_or(0) * 1_000_000;
        let five_min = 300_000_000_000i64;
        let until = last.div_euclid(five_min) * five_min;
        loop {
            let done = status.rows_in.load(Ordering::Relaxed) as usize >= events
                && status.emitted_until.load(Ordering::Relaxed) >= until
                && status.input_lag.load(Ordering::Relaxed) == 0;
            if done {
                break;
            }
            if let Some(e) = status.last_error() {
                eprintln!("pipeline error: {e}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let took = t0.elapsed();
        let rate = events as f64 / took.as_secs_f64();
        let out = status.rows_out.load(Ordering::Relaxed);
        println!(
            "pipeline: {events} events through HOP(5 min, 1 h) with 6 aggregates in {:.2}s: {rate:>9.0} events/s, \
             {out} feature rows written",
            took.as_secs_f64()
        );
        println!("ratio pipeline / raw produce rate: {:.2}", rate / produce_rate);
    });
}

//! ASOF JOIN throughput on Parquet files made by scripts/bench-asof.sh (which also times DuckDB on the same files
//! and prints the ratios). Prints the best of the runs and a checksum to compare with DuckDB's.
//!
//! Three shapes of the same join:
//! * `kfsql_seconds`: labels and features from the Parquet files;
//! * `kafka_seconds`: labels from Parquet, the feature rows read from a Kafka topic (JSON, decoded by the scan);
//! * `kafka_pw_seconds`: labels from a second Kafka topic keyed the same way, so the join runs partition-wise;
//! * `kafka_read_seconds`: only reading the feature topic (`count(*), sum(v)`), what the Kafka shapes cost before
//!   any joining.
//!
//! The topics live in the embedded Kafka (librdkafka's mock cluster, over loopback), or on the broker named by
//! `KFSQL_BENCH_BROKERS`. The mock keeps only the newest 5 MiB of each partition, so the features are spread over
//! 192 partitions there. `KFSQL_BENCH_KAFKA=0` skips the Kafka shapes.
//!
//!     KFSQL_BENCH_DIR=/tmp/asof cargo bench --bench asof

mod common;

use std::time::{Duration, Instant};

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::{Int64Type, TimestampMicrosecondType, TimestampNanosecondType};
use futures::TryStreamExt;
use kfsql::kafka::KafkaCluster;
use kfsql::{Engine, EngineConfig, Output};
use rdkafka::producer::Producer;

const SQL: &str = "SELECT count(*), count(f.v), sum(f.v) FROM labels l \
                   ASOF JOIN features f MATCH_CONDITION (l.t >= f.t) ON l.k = f.k";

async fn time_query(engine: &Engine, sql: &str, rounds: usize, what: &str) -> (Duration, String) {
    let mut best = Duration::MAX;
    let mut answer = String::new();
    for round in 1..=rounds {
        let start = Instant::now();
        let out = engine.query(sql).await.unwrap_or_else(|e| panic!("{what}: {e}"));
        let took = start.elapsed();
        let (_, batches, _) = &out[0];
        answer = datafusion::arrow::util::pretty::pretty_format_batches(batches).expect("fmt").to_string();
        eprintln!("{what} round {round}: {:.3}s", took.as_secs_f64());
        best = best.min(took);
    }
    (best, answer)
}

/// The time column of a batch as milliseconds since the epoch.
fn millis(batch: &RecordBatch, i: usize) -> Vec<i64> {
    let c = batch.column(i);
    if let Some(a) = c.as_primitive_opt::<TimestampMicrosecondType>() {
        a.values().iter().map(|v| v / 1000).collect()
    } else if let Some(a) = c.as_primitive_opt::<TimestampNanosecondType>() {
        a.values().iter().map(|v| v / 1_000_000).collect()
    } else {
        panic!("unexpected time type {}", c.data_type())
    }
}

/// Copy `SELECT k, t, <extra>` from a Parquet table into `topic` as JSON messages keyed by k.
async fn load_topic(engine: &Engine, cluster: &KafkaCluster, table: &str, extra: &str, topic: &str) -> usize {
    let producer = common::producer(cluster, 20);
    let stmt = engine.parse(&format!("SELECT k, t, {extra} FROM {table}")).expect("parse").remove(0);
    let Output::Rows(stream) =
        engine.execute(kfsql::Command::classify(stmt).expect("a query")).await.expect("read parquet")
    else {
        panic!("rows expected")
    };
    let batches: Vec<RecordBatch> = stream.try_collect().await.expect("rows");
    let mut n = 0;
    let mut json = String::new();
    for b in &batches {
        let keys = b.column(0).as_string_view_opt().map(|a| a.iter().map(|s| s.unwrap_or("").to_string()).collect());
        let keys: Vec<String> = keys
            .unwrap_or_else(|| b.column(0).as_string::<i32>().iter().map(|s| s.unwrap_or("").to_string()).collect());
        let times = millis(b, 1);
        let extra_values = b.column(2).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            let t = chrono::DateTime::from_timestamp_millis(times[i]).expect("time").naive_utc();
            json.clear();
            json.push_str(&format!(
                r#"{{"k":"{}","t":"{}","{extra}":{}}}"#,
                keys[i],
                t.format("%Y-%m-%dT%H:%M:%S"),
                extra_values.value(i)
            ));
            common::send(&producer, topic, &keys[i], &json);
            n += 1;
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(600)).expect("flush");
    n
}

fn main() {
    let dir = std::env::var("KFSQL_BENCH_DIR").unwrap_or_else(|_| "target/bench-asof".into());
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async move {
        let timeout = Duration::from_secs(60);
        let cluster = common::cluster(timeout);
        let config = EngineConfig {
            catalog_topic: format!("_bench_asof_catalog_{}", std::process::id()),
            query_timeout: Duration::from_secs(3600),
            ..Default::default()
        };
        let engine = Engine::start(cluster.clone(), config).await.expect("engine");
        engine
            .query(&format!(
                "CREATE EXTERNAL TABLE labels STORED AS PARQUET LOCATION '{dir}/labels.parquet'; \
                 CREATE EXTERNAL TABLE features STORED AS PARQUET LOCATION '{dir}/features.parquet'"
            ))
            .await
            .expect("tables");
        let (best, answer) = time_query(&engine, SQL, 3, "parquet").await;
        println!("{answer}");
        println!("kfsql_seconds={:.3}", best.as_secs_f64());
        if std::env::var("KFSQL_BENCH_KAFKA").is_ok_and(|v| v == "0") {
            return;
        }

        let partitions: i32 = std::env::var("KFSQL_BENCH_PARTITIONS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(if cluster.is_embedded() { 192 } else { 8 });
        let id = std::process::id();
        let (ft, lt) = (format!("bench_asof_features_{id}"), format!("bench_asof_labels_{id}"));
        for t in [&ft, &lt] {
            common::topic(&cluster, t, partitions).await;
        }
        let t0 = Instant::now();
        let nf = load_topic(&engine, &cluster, "features", "v", &ft).await;
        let nl = load_topic(&engine, &cluster, "labels", "id", &lt).await;
        eprintln!(
            "loaded {nf} features and {nl} labels into {partitions} partitions in {:.1}s",
            t0.elapsed().as_secs_f64()
        );
        engine
            .query(&format!(
                "CREATE EXTERNAL TABLE kfeatures (k VARCHAR NOT NULL, t TIMESTAMP NOT NULL, v BIGINT) STORED AS KAFKA \
                 LOCATION '{ft}' OPTIONS ('key' 'k', 'event_time' 't'); \
                 CREATE EXTERNAL TABLE klabels (k VARCHAR NOT NULL, t TIMESTAMP NOT NULL, id BIGINT) STORED AS KAFKA \
                 LOCATION '{lt}' OPTIONS ('key' 'k', 'event_time' 't')"
            ))
            .await
            .expect("kafka tables");
        // the anchor for the Kafka shapes: just reading (consuming and decoding) the feature topic
        let (read, _) =
            time_query(&engine, "SELECT count(*), sum(v) FROM kfeatures", 2, "read features from kafka").await;
        println!("kafka_read_seconds={:.3}", read.as_secs_f64());
        let from_kafka = SQL.replace("features f", "kfeatures f");
        let (best, kafka_answer) = time_query(&engine, &from_kafka, 2, "features from kafka").await;
        assert_eq!(kafka_answer, answer, "the Kafka-sourced join gives the Parquet join's answer");
        println!("kafka_seconds={:.3}", best.as_secs_f64());
        let both = from_kafka.replace("FROM labels l", "FROM klabels l");
        let plan = engine.query(&format!("EXPLAIN {both}")).await.expect("explain");
        let plan = datafusion::arrow::util::pretty::pretty_format_batches(&plan[0].1).expect("fmt").to_string();
        assert!(plan.contains("partition_wise"), "labels and features keyed alike join partition-wise:\n{plan}");
        let (best, pw_answer) = time_query(&engine, &both, 2, "labels and features from kafka, partition-wise").await;
        assert_eq!(pw_answer, answer, "the partition-wise join gives the Parquet join's answer");
        println!("kafka_pw_seconds={:.3}", best.as_secs_f64());
    });
}

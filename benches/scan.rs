//! Scan throughput: kfsql's `SELECT count(*), avg(amount)` over a topic vs. a raw rdkafka consume of the same topic
//! (one consumer thread per partition from its low watermark, messages counted, nothing decoded), measured in the same run, with the ratio.
//!
//!     scripts/bench-scan.sh                      # embedded mock cluster, 1M messages
//!     KFSQL_BENCH_BROKERS=127.0.0.1:9092 KFSQL_BENCH_MESSAGES=2000000 cargo bench --bench scan
//!
//! The topic (`bench_scan_<n>`, 4 partitions) is loaded once per broker and reused.

mod common;

use std::time::{Duration, Instant};

use chrono::Utc;
use futures::TryStreamExt;
use kfsql::kafka::{KafkaCluster, KfsqlConsumer, KfsqlContext};
use kfsql::{Engine, EngineConfig, Output};
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

const ROUNDS: usize = 5;

fn raw_consume(cluster: &KafkaCluster, topic: &str, highs: &[i64]) -> (u64, Duration) {
    let start = Instant::now();
    let handles: Vec<_> = (0..highs.len() as i32)
        .map(|p| {
            let config = cluster.consumer_config();
            let topic = topic.to_string();
            let end = highs[p as usize];
            std::thread::spawn(move || {
                let consumer: KfsqlConsumer = config.create_with_context(KfsqlContext).expect("consumer");
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition_offset(&topic, p, Offset::Beginning).expect("tpl");
                consumer.assign(&tpl).expect("assign");
                let (mut n, mut bytes) = (0u64, 0u64);
                loop {
                    match consumer.poll(Duration::from_millis(100)) {
                        Some(Ok(m)) => {
                            n += 1;
                            bytes += m.payload().map_or(0, |p| p.len() as u64);
                            if m.offset() + 1 >= end {
                                break;
                            }
                        }
                        Some(Err(KafkaError::PartitionEOF(_))) => break,
                        Some(Err(e)) => panic!("{e}"),
                        None => {}
                    }
                }
                std::hint::black_box(bytes);
                n
            })
        })
        .collect();
    let n = handles.into_iter().map(|h| h.join().expect("thread")).sum();
    (n, start.elapsed())
}

async fn kfsql_scan(engine: &Engine) -> (u64, Duration) {
    let start = Instant::now();
    let stmt = engine.parse("SELECT count(*), avg(amount) FROM bench").expect("parse").remove(0);
    let Output::Rows(stream) = engine.execute(kfsql::Command::classify(stmt).expect("a query")).await.expect("query")
    else {
        panic!("rows expected")
    };
    let batches: Vec<_> = stream.try_collect().await.expect("rows");
    let n =
        batches[0].column(0).as_any().downcast_ref::<datafusion::arrow::array::Int64Array>().expect("count").value(0);
    (n as u64, start.elapsed())
}

fn main() {
    let messages: usize = std::env::var("KFSQL_BENCH_MESSAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async move {
        let timeout = Duration::from_secs(30);
        let cluster = common::cluster(timeout);
        // The embedded mock keeps only the newest 5 MiB of each partition: spread 1M messages over 32 of them.
        let partitions: i32 = std::env::var("KFSQL_BENCH_PARTITIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(if cluster.is_embedded() { 32 } else { 4 });
        let topic = format!("bench_scan_{messages}_{partitions}");
        common::topic(&cluster, &topic, partitions).await;
        let parts: Vec<i32> = (0..partitions).collect();
        let have: i64 = cluster.watermarks(&topic, &parts).await.expect("marks").iter().map(|w| w.high - w.low).sum();
        if (have as usize) < messages {
            eprintln!("loading {messages} messages into {topic} …");
            let t0 = Instant::now();
            let mut done = 0;
            while done < messages {
                let chunk = (messages - done).min(100_000);
                let txns = kfsql::demo::generate(chunk, 100_000, Duration::from_secs(86_400), Utc::now(), done as u64);
                kfsql::demo::produce_transactions(cluster.producer(), &topic, &txns).await.expect("produce");
                done += chunk;
            }
            eprintln!("loaded in {:.1}s", t0.elapsed().as_secs_f64());
        }
        let marks = cluster.watermarks(&topic, &parts).await.expect("marks");
        let highs: Vec<i64> = marks.iter().map(|w| w.high).collect();
        let total: i64 = marks.iter().map(|w| w.high - w.low).sum();
        let config = EngineConfig { catalog_topic: format!("_bench_catalog_{}", std::process::id()), query_timeout: Duration::from_secs(600), ..Default::default() };
        let engine = Engine::start(cluster.clone(), config).await.expect("engine");
        engine
            .query(&format!(
                "CREATE EXTERNAL TABLE bench (txn_id VARCHAR NOT NULL, user_id VARCHAR NOT NULL, amount DOUBLE, merchant VARCHAR, \
                 country VARCHAR, event_time TIMESTAMP NOT NULL) STORED AS KAFKA LOCATION '{topic}' OPTIONS ('key' 'user_id')"
            ))
            .await
            .expect("create");
        let (mut raws, mut sqls) = (Vec::new(), Vec::new());
        for round in 1..=ROUNDS {
            let c = cluster.clone();
            let (t, h) = (topic.clone(), highs.clone());
            let (n_raw, d_raw) = tokio::task::spawn_blocking(move || raw_consume(&c, &t, &h)).await.expect("raw");
            let (n_sql, d_sql) = kfsql_scan(&engine).await;
            assert_eq!(n_raw as i64, total, "raw consume saw every message");
            assert_eq!(n_sql as i64, total, "kfsql counted every message");
            eprintln!("round {round}: raw {:.0} msg/s, kfsql {:.0} rows/s", n_raw as f64 / d_raw.as_secs_f64(), n_sql as f64 / d_sql.as_secs_f64());
            raws.push(d_raw);
            sqls.push(d_sql);
        }
        raws.sort();
        sqls.sort();
        let (best_raw, best_sql) = (raws[0], sqls[0]);
        let (median_raw, median_sql) = (raws[raws.len() / 2], sqls[sqls.len() / 2]);
        let raw = total as f64 / best_raw.as_secs_f64();
        let sql = total as f64 / best_sql.as_secs_f64();
        println!("scan of {total} messages in {partitions} partitions ({}), {ROUNDS} rounds:", if cluster.is_embedded() { "embedded mock cluster" } else { cluster.bootstrap_servers() });
        println!("  raw rdkafka consume            {raw:>12.0} msg/s  ({:.3}s)", best_raw.as_secs_f64());
        println!("  kfsql count(*), avg(amount)    {sql:>12.0} rows/s ({:.3}s)", best_sql.as_secs_f64());
        println!("  ratio kfsql / raw, best        {:>12.2}", sql / raw);
        println!("  ratio kfsql / raw, median      {:>12.2}", median_raw.as_secs_f64() / median_sql.as_secs_f64());
    });
}

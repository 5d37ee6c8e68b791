//! Shared test fixtures: a Kafka cluster (the broker named by KFSQL_TEST_BROKERS, e.g. Tansu started by
//! scripts/test.sh, or else a fresh in-process mock cluster), unique topic names, engines and producers.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use kfsql::kafka::KafkaCluster;
use kfsql::{Engine, EngineConfig};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// The broker under test: real (KFSQL_TEST_BROKERS) or the in-process mock.
pub fn cluster() -> Arc<KafkaCluster> {
    let timeout = Duration::from_secs(10);
    let c = match std::env::var("KFSQL_TEST_BROKERS") {
        Ok(b) if !b.is_empty() => KafkaCluster::connect(&b, timeout, vec![]).expect("connect"),
        _ => {
            if std::env::var("KFSQL_REQUIRE_BROKER").is_ok() {
                panic!("KFSQL_REQUIRE_BROKER is set but KFSQL_TEST_BROKERS is not");
            }
            KafkaCluster::embedded(1, timeout).expect("embedded cluster")
        }
    };
    Arc::new(c)
}

/// A name no other test (or earlier run against the same broker) uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}_{}", std::process::id(), rand::random::<u32>())
}

pub async fn engine(cluster: &Arc<KafkaCluster>, catalog: &str) -> Engine {
    let config = EngineConfig {
        catalog_topic: catalog.to_string(),
        query_timeout: Duration::from_secs(30),
        ..Default::default()
    };
    Engine::start(cluster.clone(), config).await.expect("engine starts")
}

/// Create `topic` and wait until metadata shows it.
pub async fn topic(cluster: &KafkaCluster, name: &str, partitions: i32) {
    cluster.create_topic(name, partitions, &[]).await.expect("create topic");
    for _ in 0..100 {
        if cluster.partition_count(name).await.ok() == Some(partitions) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("topic {name} did not appear");
}

/// One message to produce: key, payload (None = tombstone), timestamp in ms, and optionally a fixed partition.
pub struct Msg {
    pub key: Option<String>,
    pub payload: Option<String>,
    pub ts: Option<i64>,
    pub partition: Option<i32>,
}

impl Msg {
    pub fn new(key: &str, payload: &str) -> Self {
        Msg { key: Some(key.into()), payload: Some(payload.into()), ts: None, partition: None }
    }
    pub fn at(mut self, ts: i64) -> Self {
        self.ts = Some(ts);
        self
    }
    pub fn to_partition(mut self, p: i32) -> Self {
        self.partition = Some(p);
        self
    }
}

/// Produce and wait for every acknowledgement.
pub async fn produce(producer: &FutureProducer, topic: &str, msgs: Vec<Msg>) {
    let mut acks = Vec::new();
    for m in &msgs {
        let mut r: FutureRecord<'_, String, String> = FutureRecord::to(topic);
        if let Some(k) = &m.key {
            r = r.key(k);
        }
        if let Some(p) = &m.payload {
            r = r.payload(p);
        }
        if let Some(ts) = m.ts {
            r = r.timestamp(ts);
        }
        if let Some(p) = m.partition {
            r = r.partition(p);
        }
        acks.push(producer.send_result(r).map_err(|(e, _)| e).expect("enqueue"));
    }
    for a in acks {
        a.await.expect("delivery").expect("ack");
    }
}

/// Run SQL, returning the rows of the last statement as text.
pub async fn rows(engine: &Engine, sql: &str) -> Vec<Vec<String>> {
    let out = engine.query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    let (_, batches, _) = out.into_iter().last().expect("a statement");
    to_text(&batches)
}

pub fn to_text(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    let opts = FormatOptions::default().with_null("NULL");
    let mut out = Vec::new();
    for b in batches {
        let fmts: Vec<ArrayFormatter> = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref() as &dyn Array, &opts).expect("formatter"))
            .collect();
        for r in 0..b.num_rows() {
            out.push(fmts.iter().map(|f| f.value(r).to_string()).collect());
        }
    }
    out
}

/// A single value.
pub async fn scalar(engine: &Engine, sql: &str) -> String {
    let r = rows(engine, sql).await;
    assert_eq!(r.len(), 1, "{sql}: expected one row, got {r:?}");
    r[0][0].clone()
}

/// The EXPLAIN text of a query.
pub async fn explain(engine: &Engine, sql: &str) -> String {
    rows(engine, &format!("EXPLAIN {sql}")).await.into_iter().map(|r| r.join(" ")).collect::<Vec<_>>().join("\n")
}

pub fn create_table_sql(name: &str, topic: &str, extra_options: &str) -> String {
    format!(
        "CREATE EXTERNAL TABLE {name} (txn_id VARCHAR NOT NULL, user_id VARCHAR NOT NULL, amount DOUBLE, merchant VARCHAR, \
         country VARCHAR, event_time TIMESTAMP NOT NULL) STORED AS KAFKA LOCATION '{topic}' \
         OPTIONS ('format' 'json', 'key' 'user_id', 'event_time' 'event_time'{extra_options})"
    )
}

/// A Tansu broker this test owns (started on `port`, data in `dir`), killed when dropped.
pub struct Tansu {
    child: std::process::Child,
}

impl Tansu {
    pub fn start(bin: &str, dir: &std::path::Path, port: u16) -> Tansu {
        let url = format!("tcp://127.0.0.1:{port}");
        let child = std::process::Command::new(bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "sqlite://tansu.db",
            ])
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start tansu");
        let start = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < std::time::Duration::from_secs(10), "tansu did not start");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Tansu { child }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Tansu binary to start and stop brokers with (KFSQL_TANSU_BIN, set by scripts/test.sh), or None to skip.
pub fn tansu_bin() -> Option<String> {
    match std::env::var("KFSQL_TANSU_BIN") {
        Ok(bin) => Some(bin),
        Err(_) => {
            assert!(
                std::env::var("KFSQL_REQUIRE_BROKER").is_err(),
                "KFSQL_REQUIRE_BROKER is set but KFSQL_TANSU_BIN is not"
            );
            eprintln!("skipped: set KFSQL_TANSU_BIN to run broker outage tests");
            None
        }
    }
}

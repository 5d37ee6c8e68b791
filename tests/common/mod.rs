//! Shared test fixtures: a Kafka cluster (the broker named by KFSQL_TEST_BROKERS, Apache Kafka started by
//! scripts/test.sh, or else a fresh in-process mock cluster), clusters a test owns and kills brokers of
//! ([`OwnKafka`]), unique topic names, engines and producers.
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
        // waits while the producer's queue is full (a broker down holds messages back)
        acks.push(kfsql::kafka::send_with_retry(producer, r).await.expect("enqueue"));
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

/// An Apache Kafka cluster this test owns: `scripts/kafka.sh` run in a temporary directory (1 or 3 KRaft nodes on
/// free loopback ports), stopped when dropped. Tests that kill and restart brokers use it.
pub struct OwnKafka {
    dir: tempfile::TempDir,
    pub bootstrap: String,
}

impl OwnKafka {
    /// Starts a cluster of `nodes` nodes when KFSQL_OWN_KAFKA is set (scripts/test.sh sets it); otherwise the test is
    /// skipped, unless KFSQL_REQUIRE_BROKER is set too, which makes a skip a failure.
    pub fn start(nodes: u32) -> Option<OwnKafka> {
        required_env("KFSQL_OWN_KAFKA", "permission to start its own Apache Kafka, as scripts/test.sh gives")?;
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Self::script(&["start", "-n", &nodes.to_string(), &dir.path().to_string_lossy()]);
        let bootstrap = out.lines().last().expect("bootstrap list").trim().to_string();
        Some(OwnKafka { dir, bootstrap })
    }

    fn script(args: &[&str]) -> String {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka.sh");
        let out = std::process::Command::new("bash").arg(script).args(args).output().expect("run scripts/kafka.sh");
        assert!(
            out.status.success(),
            "scripts/kafka.sh {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn path(&self) -> String {
        self.dir.path().to_string_lossy().into_owned()
    }

    /// SIGKILL node `node` (1-based), as a crash would.
    pub fn kill(&self, node: u32) {
        Self::script(&["kill", &node.to_string(), &self.path()]);
    }

    /// Start node `node` again on its port and data, and wait until it serves.
    pub fn revive(&self, node: u32) {
        Self::script(&["revive", &node.to_string(), &self.path()]);
    }

    /// The node id (1-based) that leads `topic`'s partition, from the cluster's metadata.
    pub fn leader(&self, cluster: &KafkaCluster, topic: &str, partition: i32) -> u32 {
        use rdkafka::consumer::Consumer;
        let client: rdkafka::consumer::BaseConsumer = cluster.consumer_config().create().expect("client");
        let md = client.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
        let t = md.topics().iter().find(|t| t.name() == topic).expect("topic in metadata");
        let p = t.partitions().iter().find(|p| p.id() == partition).expect("partition in metadata");
        p.leader() as u32
    }
}

impl Drop for OwnKafka {
    fn drop(&mut self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka.sh");
        let _ = std::process::Command::new("bash").arg(script).args(["stop", &self.path()]).output();
    }
}

/// The broker under test when it is a real one (KFSQL_TEST_BROKERS), for tests of what only a real Kafka does
/// (topic configs, retention, compaction, LogAppendTime). None skips the test, unless KFSQL_REQUIRE_BROKER is set.
pub fn real_cluster() -> Option<Arc<KafkaCluster>> {
    required_env("KFSQL_TEST_BROKERS", "a real broker").map(|_| cluster())
}

/// The value of `var`, which a test needs (`what` it names). When it is unset the test is skipped, unless
/// KFSQL_REQUIRE_BROKER is set (scripts/test.sh sets it): then a skip is a failure, so CI never passes by skipping.
pub fn required_env(var: &str, what: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            assert!(
                std::env::var("KFSQL_REQUIRE_BROKER").is_err(),
                "KFSQL_REQUIRE_BROKER is set but {var} ({what}) is not"
            );
            eprintln!("skipped: needs {what} (set {var})");
            None
        }
    }
}

/// Run one of Apache Kafka's own command-line tools (a main class of the Kafka jars scripts/kafka.sh fetched) and
/// return what it printed.
pub fn kafka_tool(class: &str, args: &[&str]) -> String {
    let lib = concat!(env!("CARGO_MANIFEST_DIR"), "/target/kafka/lib/*");
    let out = std::process::Command::new("java")
        .args(["-Xmx256m", "-cp", lib, class])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {class}: {e}"));
    assert!(out.status.success(), "{class} {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A client of the kfsql server on 127.0.0.1:`port`, retrying while the server starts (up to 60 s).
pub async fn connect_when_up(port: u16) -> tokio_postgres::Client {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let conn = format!("host=127.0.0.1 port={port} user=kfsql dbname=kfsql");
        if let Ok((client, conn)) = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await {
            tokio::spawn(conn);
            return client;
        }
        assert!(std::time::Instant::now() < deadline, "kfsql never accepted connections");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

//! The fraud demo: a generated stream of card transactions (users, merchants, countries, a fraud pattern) and its
//! labels, produced into Kafka with the user as message key and the event time as Kafka timestamp, plus the table
//! definitions of `sql/fraud/tables.sql` and the feature pipelines of `sql/fraud/features.sql`. Used by the embedded
//! default and by tests and benchmarks.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde::Serialize;

use crate::engine::Engine;
use crate::error::{KfsqlError, Result};
use crate::kafka::{KafkaCluster, await_deliveries, send_with_retry};

/// The fraud example's table definitions.
pub const TABLES_SQL: &str = include_str!("../sql/fraud/tables.sql");

/// The fraud example's feature pipelines.
pub const FEATURES_SQL: &str = include_str!("../sql/fraud/features.sql");

const COUNTRIES: &[&str] = &["FR", "DE", "ES", "IT", "GB", "US", "NL", "BE", "PT", "PL"];

#[derive(Debug, Clone, Serialize)]
pub struct Transaction {
    pub txn_id: String,
    pub user_id: String,
    pub amount: f64,
    pub merchant: String,
    pub country: String,
    /// RFC 3339, UTC.
    pub event_time: String,
    #[serde(skip)]
    pub event_time_ms: i64,
    #[serde(skip)]
    pub is_fraud: bool,
}

#[derive(Debug, Clone, Serialize)]
struct Label<'a> {
    txn_id: &'a str,
    user_id: &'a str,
    is_fraud: bool,
    event_time: String,
}

/// A stream of card transactions of a fixed population of users. About 2% of users are compromised: once
/// [`Generator::compromise`] is called, part of their transactions are large, in a foreign country, in bursts.
pub struct Generator {
    rng: StdRng,
    home: Vec<&'static str>,
    compromised: Vec<bool>,
    active_fraud: bool,
    id_prefix: String,
    next_id: u64,
}

impl Generator {
    /// `users` users; deterministic per seed. Transaction ids are `t0`, `t1`, …
    pub fn new(users: usize, seed: u64) -> Self {
        Self::with_ids(users, seed, "t")
    }

    /// The same, with transaction ids `<prefix>0`, `<prefix>1`, …
    pub fn with_ids(users: usize, seed: u64, id_prefix: &str) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let users = users.max(1);
        let home = (0..users).map(|_| COUNTRIES[rng.random_range(0..COUNTRIES.len())]).collect();
        let compromised = (0..users).map(|_| rng.random_bool(0.02)).collect();
        Self { rng, home, compromised, active_fraud: false, id_prefix: id_prefix.to_string(), next_id: 0 }
    }

    /// From now on, compromised users' cards are used by fraudsters.
    pub fn compromise(&mut self) {
        self.active_fraud = true;
    }

    /// The next transaction, at `t_ms`.
    pub fn next(&mut self, t_ms: i64) -> Transaction {
        let rng = &mut self.rng;
        let u = rng.random_range(0..self.home.len());
        let fraud = self.compromised[u] && self.active_fraud && rng.random_bool(0.6);
        let (amount, country) = if fraud {
            (rng.random_range(300.0..3000.0), COUNTRIES[rng.random_range(0..COUNTRIES.len())])
        } else {
            (rng.random_range(2.0..150.0), self.home[u])
        };
        let id = self.next_id;
        self.next_id += 1;
        Transaction {
            txn_id: format!("{}{id}", self.id_prefix),
            user_id: format!("u{u}"),
            amount: (amount * 100.0f64).round() / 100.0,
            merchant: format!("m{}", rng.random_range(0..500)),
            country: country.to_string(),
            event_time: iso(t_ms),
            event_time_ms: t_ms,
            is_fraud: fraud,
        }
    }
}

/// Generate `n` transactions of `users` users over the `span` before `end`, in time order. Deterministic per seed.
/// Fraud starts half-way through.
pub fn generate(n: usize, users: usize, span: Duration, end: DateTime<Utc>, seed: u64) -> Vec<Transaction> {
    let mut g = Generator::new(users, seed);
    let start_ms = end.timestamp_millis() - span.as_millis() as i64;
    let step = (span.as_millis() as f64 / n.max(1) as f64).max(1.0);
    (0..n)
        .map(|i| {
            if i == n / 2 + 1 {
                g.compromise();
            }
            let t = start_ms + (i as f64 * step) as i64 + g.rng.random_range(0..step as i64 + 1);
            g.next(t)
        })
        .collect()
}

/// Produce a live stream: `rate` transactions per second, timed now, and their labels, until `count` were sent
/// (forever with None). Users' cards get compromised after the first minute.
pub async fn stream(producer: &FutureProducer, users: usize, rate: f64, count: Option<u64>) -> Result<u64> {
    // ids of their own, so that they never collide with the demo's or another stream's
    let seed: u64 = rand::random();
    let mut g = Generator::with_ids(users, seed, &format!("t{:x}-", seed >> 40));
    let started = std::time::Instant::now();
    let tick = Duration::from_millis(100);
    let mut sent = 0u64;
    let mut interval = tokio::time::interval(tick);
    loop {
        interval.tick().await;
        if started.elapsed() > Duration::from_secs(60) {
            g.compromise();
        }
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        let due = count.map_or(due, |c| due.min(c));
        if due > sent {
            let now = Utc::now().timestamp_millis();
            let batch: Vec<Transaction> = (sent..due).map(|_| g.next(now)).collect();
            produce_transactions(producer, "transactions", &batch).await?;
            produce_labels(producer, "labels", &batch).await?;
            sent = due;
            tracing::debug!("{sent} transactions produced");
        }
        if count.is_some_and(|c| sent >= c) {
            return Ok(sent);
        }
    }
}

fn iso(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms).unwrap_or_default().format("%Y-%m-%dT%H:%M:%S%.3f").to_string()
}

/// Produce `txns` to `topic` (key = user_id, timestamp = event time), waiting for every acknowledgement.
pub async fn produce_transactions(producer: &FutureProducer, topic: &str, txns: &[Transaction]) -> Result<()> {
    let mut pending = Vec::with_capacity(txns.len());
    for t in txns {
        let payload = serde_json::to_vec(t).map_err(|e| KfsqlError::Internal(e.to_string()))?;
        let record = FutureRecord::to(topic).key(&t.user_id).payload(&payload).timestamp(t.event_time_ms);
        pending.push(send_with_retry(producer, record).await.map_err(|e| KfsqlError::Kafka(e.to_string()))?);
    }
    await_deliveries(topic, pending).await?;
    producer.flush(Duration::from_secs(30)).map_err(|e| KfsqlError::Kafka(e.to_string()))
}

/// Produce one label per transaction, arriving a while after it.
pub async fn produce_labels(producer: &FutureProducer, topic: &str, txns: &[Transaction]) -> Result<()> {
    let mut pending = Vec::with_capacity(txns.len());
    for t in txns {
        let label =
            Label { txn_id: &t.txn_id, user_id: &t.user_id, is_fraud: t.is_fraud, event_time: t.event_time.clone() };
        let payload = serde_json::to_vec(&label).map_err(|e| KfsqlError::Internal(e.to_string()))?;
        let record = FutureRecord::to(topic).key(&t.user_id).payload(&payload).timestamp(t.event_time_ms + 60_000);
        pending.push(send_with_retry(producer, record).await.map_err(|e| KfsqlError::Kafka(e.to_string()))?);
    }
    await_deliveries(topic, pending).await
}

/// Create the demo topics, fill them and declare the tables: the embedded default's starting state.
pub async fn load(engine: &Engine, cluster: &KafkaCluster, transactions: usize, users: usize) -> Result<()> {
    cluster.create_topic("transactions", 4, &[]).await?;
    cluster.create_topic("labels", 4, &[]).await?;
    let txns = generate(transactions, users, Duration::from_secs(24 * 3600), Utc::now(), 42);
    produce_transactions(cluster.producer(), "transactions", &txns).await?;
    produce_labels(cluster.producer(), "labels", &txns).await?;
    engine.query(TABLES_SQL).await?;
    engine.query(FEATURES_SQL).await?;
    // serve once the pipelines have computed the demo's features and the online views hold them
    let wait = Duration::from_secs(120);
    if !engine.pipelines().wait_caught_up(wait).await {
        tracing::warn!("the demo's feature pipelines are still backfilling; see kfsql.pipelines");
    }
    if !engine.latest().wait_caught_up(wait).await {
        tracing::warn!("the demo's latest views are still loading; see kfsql.freshness");
    }
    // the embedded Kafka keeps only the newest 5 MiB of each partition: say so if the demo outgrew it
    let truncated = engine.query("SELECT table_name FROM kfsql.table_stats WHERE history_truncated").await?;
    for (_, batches, _) in truncated {
        for b in batches {
            let names = datafusion::arrow::array::AsArray::as_string::<i32>(b.column(0));
            for name in names.iter().flatten() {
                tracing::warn!(
                    "table '{name}' lost its oldest messages (the embedded Kafka keeps the newest 5 MiB per partition): \
                     queries over it say so with a NOTICE; use fewer --demo-transactions or a real Kafka"
                );
            }
        }
    }
    Ok(())
}

//! Online serving, measured in one run (scripts/bench-latest.sh):
//!
//! 1. **rebuild**: 1M keys produced to a topic, then the table declared online: seconds until `latest.*` is ready,
//!    and bytes held per key against the payload bytes per key;
//! 2. **freshness**: produce one value, time until the view serves it (p50 / p99 over many values);
//! 3. **point lookups**: 32 concurrent pg-wire clients (tokio-postgres, prepared `WHERE user_id = $1`) against
//!    kfsql's `latest.user_txn_features`, then the same client code against PostgreSQL 15 doing primary-key lookups
//!    on the same rows (a server started by the script: `KFSQL_BENCH_PG="host=… port=… user=…"`); QPS, p50 / p99
//!    and the ratio.
//!
//!     KFSQL_BENCH_PG="host=127.0.0.1 port=5499 user=postgres" cargo bench --bench latest

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kfsql::{Engine, EngineConfig};
use rand::Rng;
use rdkafka::producer::{BaseRecord, Producer};

const CLIENTS: usize = 32;

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The fraud features of one user, as JSON.
fn feature(user: usize, version: u64, event_time: &str) -> String {
    let countries = ["FR", "DE", "US", "GB", "ES", "IT", "NL", "BR"];
    format!(
        r#"{{"user_id":"u{user}","txn_count_1h":{},"amount_sum_1h":{:.2},"amount_avg_1h":{:.2},"last_country":"{}","event_time":"{event_time}"}}"#,
        (user as u64 + version) % 17,
        (user as f64 * 3.7) % 1000.0,
        (user as f64 * 1.3) % 200.0,
        countries[user % countries.len()]
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// 32 clients doing prepared point lookups for `secs` seconds; (QPS, p50, p99).
async fn lookups(conn: &str, sql: &str, keys: usize, secs: u64) -> (f64, Duration, Duration) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for client_no in 0..CLIENTS {
        let (conn, sql, stop) = (conn.to_string(), sql.to_string(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let (client, c) = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await.expect("connect");
            tokio::spawn(c);
            let stmt = client.prepare(&sql).await.expect("prepare");
            let mut lat = Vec::with_capacity(100_000);
            let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(client_no as u64);
            while !stop.load(Ordering::Relaxed) {
                let key = format!("u{}", rng.random_range(0..keys));
                let t = Instant::now();
                let rows = client.query(&stmt, &[&key]).await.expect("lookup");
                lat.push(t.elapsed());
                assert_eq!(rows.len(), 1, "{key}");
            }
            lat
        }));
    }
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("client"));
    }
    let took = start.elapsed();
    all.sort();
    (all.len() as f64 / took.as_secs_f64(), percentile(&all, 0.5), percentile(&all, 0.99))
}

fn main() {
    let keys: usize = env("KFSQL_BENCH_KEYS", 1_000_000);
    let secs: u64 = env("KFSQL_BENCH_SECONDS", 10);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async move {
        let timeout = Duration::from_secs(60);
        let cluster = common::cluster(timeout);
        // the mock cluster keeps 5 MiB per partition: 1M feature messages need about 40 partitions
        let partitions: i32 = env("KFSQL_BENCH_PARTITIONS", if cluster.is_embedded() { 64 } else { 8 });
        let config = EngineConfig {
            catalog_topic: format!("_bench_latest_catalog_{}", std::process::id()),
            query_timeout: Duration::from_secs(600),
            ..Default::default()
        };
        let engine = Engine::start(cluster.clone(), config).await.expect("engine");
        let topic = format!("bench_latest_{}", std::process::id());
        common::topic(&cluster, &topic, partitions).await;

        // 1. rebuild
        let producer = common::producer(&cluster, 5);
        let now = chrono::Utc::now().naive_utc().format("%Y-%m-%dT%H:%M:%S%.3f").to_string();
        let t0 = Instant::now();
        let mut payload_bytes = 0usize;
        for user in 0..keys {
            let json = feature(user, 0, &now);
            payload_bytes += json.len();
            let key = format!("u{user}");
            common::send(&producer, &topic, &key, &json);
        }
        producer.flush(Duration::from_secs(300)).expect("flush");
        eprintln!("produced {keys} feature messages in {:.1}s", t0.elapsed().as_secs_f64());
        engine
            .query(&format!(
                "CREATE EXTERNAL TABLE user_txn_features (user_id VARCHAR NOT NULL, txn_count_1h BIGINT, \
                 amount_sum_1h DOUBLE, amount_avg_1h DOUBLE, last_country VARCHAR, event_time TIMESTAMP NOT NULL) \
                 STORED AS KAFKA LOCATION '{topic}' \
                 OPTIONS ('key' 'user_id', 'event_time' 'event_time', 'online' 'true', 'ttl' '2 hours')"
            ))
            .await
            .expect("create");
        let view = engine.latest().get("user_txn_features").expect("view");
        while !view.ready.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let load = Duration::from_nanos(view.load_ns.load(Ordering::Relaxed));
        let (held, n, payload) = {
            let s = view.state.read().expect("state");
            (s.memory_bytes(), s.len(), s.payload_bytes())
        };
        assert_eq!(n, keys, "every key loaded");
        println!("rebuild: {keys} keys ready in {:.2}s ({:.0} keys/s)", load.as_secs_f64(), keys as f64 / load.as_secs_f64());
        println!(
            "memory: {:.0} B per key held for {:.0} B of payload per key: {:.2}x the payload (produced {:.0} B/key)",
            held as f64 / n as f64,
            payload as f64 / n as f64,
            held as f64 / payload as f64,
            payload_bytes as f64 / keys as f64
        );

        // 2. freshness: produce → visible, with a producer tuned for latency (no linger)
        let producer = common::producer(&cluster, 0);
        let mut lat = Vec::new();
        for i in 0..env("KFSQL_BENCH_FRESHNESS_SAMPLES", 500u64) {
            let user = (i as usize * 7919) % keys;
            let key = format!("u{user}");
            let json = feature(user, i + 1, &chrono::Utc::now().naive_utc().format("%Y-%m-%dT%H:%M:%S%.6f").to_string());
            let t = Instant::now();
            producer.send(BaseRecord::to(&topic).key(key.as_str()).payload(json.as_str())).map_err(|(e, _)| e).expect("send");
            producer.poll(Duration::ZERO);
            loop {
                let seen = view.state.read().expect("state").get(&key).is_some_and(|e| &e.payload[..] == json.as_bytes());
                if seen {
                    break;
                }
                assert!(t.elapsed() < Duration::from_secs(10), "value never became visible");
                std::thread::yield_now();
            }
            lat.push(t.elapsed());
            producer.poll(Duration::ZERO);
        }
        lat.sort();
        println!(
            "freshness: produce -> visible in latest.* over {} values: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            lat.len(),
            percentile(&lat, 0.5).as_secs_f64() * 1e3,
            percentile(&lat, 0.99).as_secs_f64() * 1e3,
            lat[lat.len() - 1].as_secs_f64() * 1e3
        );

        // 3. point lookups over pg-wire: kfsql, then PostgreSQL
        let (addr, _server) = kfsql::server::start(engine.clone(), "127.0.0.1:0").await.expect("server");
        let kconn = format!("host={} port={} user=kfsql dbname=kfsql", addr.ip(), addr.port());
        let sql = "SELECT user_id, txn_count_1h, amount_sum_1h, amount_avg_1h, last_country, event_time \
                   FROM latest.user_txn_features WHERE user_id = $1";
        let (kq, k50, k99) = lookups(&kconn, sql, keys, secs).await;
        println!(
            "kfsql      {CLIENTS} clients, prepared lookups: {kq:>9.0} QPS, p50 {:.3} ms, p99 {:.3} ms",
            k50.as_secs_f64() * 1e3,
            k99.as_secs_f64() * 1e3
        );
        let Ok(pg) = std::env::var("KFSQL_BENCH_PG") else {
            println!("(KFSQL_BENCH_PG not set: no PostgreSQL comparison)");
            return;
        };
        let (client, c) = tokio_postgres::connect(&pg, tokio_postgres::NoTls).await.expect("connect to PostgreSQL");
        tokio::spawn(c);
        client
            .batch_execute(
                "DROP TABLE IF EXISTS user_txn_features; CREATE TABLE user_txn_features (user_id TEXT PRIMARY KEY, \
                 txn_count_1h BIGINT, amount_sum_1h DOUBLE PRECISION, amount_avg_1h DOUBLE PRECISION, \
                 last_country TEXT, event_time TIMESTAMP NOT NULL)",
            )
            .await
            .expect("create in PostgreSQL");
        // the same rows: what the view serves now
        let out = engine
            .query("COPY (SELECT user_id, txn_count_1h, amount_sum_1h, amount_avg_1h, last_country, event_time FROM latest.user_txn_features) TO 'bench-latest/rows.csv'")
            .await
            .expect("export the view");
        drop(out);
        let csv = std::path::absolute("exports/bench-latest/rows.csv").expect("path");
        let copy = format!("COPY user_txn_features FROM '{}' WITH (FORMAT csv, HEADER true)", csv.display());
        client.batch_execute(&copy).await.expect("load PostgreSQL (the server must be able to read the file)");
        client.batch_execute("VACUUM ANALYZE user_txn_features").await.expect("analyze");
        let pg_sql = sql.replace("latest.user_txn_features", "user_txn_features");
        let (pq, p50, p99) = lookups(&pg, &pg_sql, keys, secs).await;
        println!(
            "PostgreSQL {CLIENTS} clients, prepared lookups: {pq:>9.0} QPS, p50 {:.3} ms, p99 {:.3} ms",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        );
        println!("ratio kfsql / PostgreSQL QPS: {:.2}", kq / pq);
    });
    std::process::exit(0);
}

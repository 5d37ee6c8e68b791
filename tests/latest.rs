//! Latest views (`latest.<table>` of online tables) against oracles computed from what was produced: newest value
//! by event time with ties to the greater offset, tombstones, TTL, point lookups (SQL and prepared over pg-wire),
//! time travel equal to the ASOF join at T for every key, freshness and readiness.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kfsql::kafka::KafkaCluster;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const TABLE: &str = "(user_id VARCHAR NOT NULL, score BIGINT, event_time TIMESTAMP NOT NULL)";

fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).expect("time").naive_utc().format("%Y-%m-%dT%H:%M:%S%.3f").to_string()
}

/// One produced message: key, (score, event time ms) or a tombstone, and its Kafka timestamp.
#[derive(Debug, Clone)]
struct Produced {
    key: String,
    value: Option<(i64, i64)>,
    arrival_ms: i64,
}

async fn produce(cluster: &Arc<KafkaCluster>, topic: &str, msgs: &[Produced]) {
    let out = msgs
        .iter()
        .map(|m| {
            let mut msg = common::Msg::new(&m.key, "").at(m.arrival_ms);
            msg.payload = m
                .value
                .map(|(score, et)| format!(r#"{{"user_id":"{}","score":{score},"event_time":"{}"}}"#, m.key, iso(et)));
            msg
        })
        .collect();
    common::produce(cluster.producer(), topic, out).await;
}

/// The latest view by definition: messages in produce order (= offset order per key's partition).
fn oracle(msgs: &[Produced], arrived_by: i64, ttl_floor: i64) -> BTreeMap<String, i64> {
    let mut cur: BTreeMap<String, (i64, i64)> = BTreeMap::new(); // key -> (event time, score)
    for m in msgs.iter().filter(|m| m.arrival_ms <= arrived_by) {
        match m.value {
            None => {
                cur.remove(&m.key);
            }
            Some((score, et)) => {
                // equal event time: the later message (greater offset) wins
                if cur.get(&m.key).is_none_or(|(t, _)| et >= *t) {
                    cur.insert(m.key.clone(), (et, score));
                }
            }
        }
    }
    cur.into_iter().filter(|(_, (t, _))| *t >= ttl_floor).map(|(k, (_, s))| (k, s)).collect()
}

async fn wait_ready(engine: &kfsql::Engine, table: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = common::rows(engine, &format!("SELECT ready FROM kfsql.freshness WHERE table_name = '{table}'")).await;
        if r.first().is_some_and(|r| r[0] == "true") {
            return;
        }
        assert!(Instant::now() < deadline, "latest.{table} did not become ready: {r:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Create a topic, produce `msgs` to it and declare it as the online table `name` (extra options appended); waits
/// until its view is ready and returns the topic.
async fn online_table(
    cluster: &Arc<KafkaCluster>,
    engine: &kfsql::Engine,
    name: &str,
    partitions: i32,
    msgs: &[Produced],
    extra: &str,
) -> String {
    let topic = common::unique(name);
    common::topic(cluster, &topic, partitions).await;
    produce(cluster, &topic, msgs).await;
    engine
        .query(&format!(
            "CREATE EXTERNAL TABLE {name} {TABLE} STORED AS KAFKA LOCATION '{topic}' \
             OPTIONS ('key' 'user_id', 'event_time' 'event_time', 'online' 'true'{extra})"
        ))
        .await
        .expect("create");
    wait_ready(engine, name).await;
    topic
}

fn as_map(rows: Vec<Vec<String>>) -> BTreeMap<String, i64> {
    rows.into_iter().map(|r| (r[0].clone(), r[1].parse().expect("score"))).collect()
}

fn random_messages(rng: &mut StdRng, n: usize, keys: usize, now_ms: i64, tombstones: bool) -> Vec<Produced> {
    let hour = 3_600_000;
    (0..n)
        .map(|i| {
            let key = format!("u{}", rng.random_range(0..keys));
            // event times over the last 4 hours, in no particular order, many equal (ties)
            let et = now_ms - rng.random_range(0..16) * hour / 4;
            // arrival after the event, by up to an hour (late data), and increasing with i
            let arrival = (et + rng.random_range(0..hour)).min(now_ms - 1000).max(et) + i as i64;
            let value = if tombstones && rng.random_bool(0.05) { None } else { Some((i as i64, et)) };
            Produced { key, value, arrival_ms: arrival.max(et) }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_view_holds_the_newest_value_per_key_with_tombstones_and_ttl() {
    let cluster = common::cluster();
    let engine = common::engine(&cluster, &common::unique("catalog")).await;
    let now = chrono::Utc::now().timestamp_millis();
    let mut rng = StdRng::seed_from_u64(7);
    let msgs = random_messages(&mut rng, 3000, 200, now, true);
    let topic = online_table(&cluster, &engine, "feats", 4, &msgs, ", 'ttl' '2 hours'").await;
    // the TTL is measured from the query's now: keep a minute of margin on both sides of the edge
    let floor = chrono::Utc::now().timestamp_millis() - 2 * 3_600_000;
    let want = oracle(&msgs, i64::MAX, floor);
    assert!(want.len() > 50, "enough keys survive the TTL to mean something: {}", want.len());
    let got = as_map(common::rows(&engine, "SELECT user_id, score FROM latest.feats").await);
    assert_eq!(got, want);
    let all_time = oracle(&msgs, i64::MAX, i64::MIN);
    assert!(all_time.len() > want.len(), "the TTL hides some keys");

    // point lookups: one key, several (one missing, one repeated), through SQL
    let some: Vec<&String> = want.keys().take(3).collect();
    let one =
        common::rows(&engine, &format!("SELECT user_id, score FROM latest.feats WHERE user_id = '{}'", some[0])).await;
    assert_eq!(as_map(one), want.iter().take(1).map(|(k, v)| (k.clone(), *v)).collect());
    let sql = format!(
        "SELECT user_id, score FROM latest.feats WHERE user_id IN ('{}', '{}', 'nobody', '{}', '{}')",
        some[0], some[1], some[2], some[0]
    );
    let many = common::rows(&engine, &sql).await;
    assert_eq!(many.len(), 3, "{many:?}");
    assert_eq!(as_map(many), want.iter().take(3).map(|(k, v)| (k.clone(), *v)).collect());
    // an ordinary table to SQL: aggregates and joins
    let n = common::scalar(&engine, "SELECT count(*) FROM latest.feats").await;
    assert_eq!(n, want.len().to_string());
    let joined = common::scalar(
        &engine,
        "SELECT count(*) FROM latest.feats l JOIN feats f ON l.user_id = f.user_id AND l._offset = f._offset AND l._partition = f._partition",
    )
    .await;
    assert_eq!(joined, want.len().to_string(), "each latest row is a message of the table");

    // freshness: a new value shows up, lag drains to 0
    let key = some[0].clone();
    let t = chrono::Utc::now().timestamp_millis();
    produce(&cluster, &topic, &[Produced { key: key.clone(), value: Some((-1, t)), arrival_ms: t }]).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = common::rows(&engine, &format!("SELECT score FROM latest.feats WHERE user_id = '{key}'")).await;
        if r == vec![vec!["-1".to_string()]] {
            break;
        }
        assert!(Instant::now() < deadline, "the new value never showed: {r:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let f = common::rows(
        &engine,
        "SELECT keys, lag_messages, messages, tombstones, newest_event_time IS NOT NULL, last_error FROM kfsql.freshness WHERE table_name = 'feats'",
    )
    .await;
    let tombstones = msgs.iter().filter(|m| m.value.is_none()).count();
    assert_eq!(f[0][1], "0", "{f:?}");
    assert_eq!(f[0][2], (msgs.len() + 1).to_string(), "{f:?}");
    assert_eq!(f[0][3], tombstones.to_string(), "{f:?}");
    assert_eq!(f[0][4], "true");
    assert_eq!(f[0][5], "NULL");

    // dropping the table removes its view
    engine.query("DROP TABLE feats").await.expect("drop");
    let err = engine.query("SELECT * FROM latest.feats").await.expect_err("gone");
    assert_eq!(err.sqlstate(), "42P01", "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_as_of_t_equals_the_asof_join_at_t_for_every_key() {
    let cluster = common::cluster();
    let engine = common::engine(&cluster, &common::unique("catalog")).await;
    let now = chrono::Utc::now().timestamp_millis();
    let mut rng = StdRng::seed_from_u64(11);
    // no tombstones: an ASOF join does not know them
    let msgs = random_messages(&mut rng, 1500, 60, now, false);
    online_table(&cluster, &engine, "tt", 3, &msgs, "").await;
    let mut times: Vec<i64> = (0..6).map(|_| now - rng.random_range(0..5 * 3_600_000)).collect();
    times.push(now + 60_000); // after everything: the live view
    for at in times {
        let ts = format!("TIMESTAMP '{}'", iso(at).replace('T', " "));
        let latest = as_map(
            common::rows(&engine, &format!("SELECT user_id, score FROM latest.tt FOR SYSTEM_TIME AS OF {ts}")).await,
        );
        let asof = as_map(
            common::rows(
                &engine,
                &format!(
                    "SELECT p.k, f.score FROM (SELECT DISTINCT user_id AS k, {ts} AS at FROM tt) p \
                     ASOF JOIN (SELECT * FROM tt FOR SYSTEM_TIME AS OF {ts}) f \
                     MATCH_CONDITION (p.at >= f.event_time) ON p.k = f.user_id WHERE f.score IS NOT NULL"
                ),
            )
            .await,
        );
        assert_eq!(latest, asof, "latest.tt as of {ts} vs the ASOF join at {ts}");
        assert_eq!(latest, oracle(&msgs, at, i64::MIN), "latest.tt as of {ts} vs the oracle");
    }
    let live = as_map(common::rows(&engine, "SELECT user_id, score FROM latest.tt").await);
    assert_eq!(live, oracle(&msgs, i64::MAX, i64::MIN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_point_lookups_over_pg_wire() {
    let cluster = common::cluster();
    let engine = common::engine(&cluster, &common::unique("catalog")).await;
    let now = chrono::Utc::now().timestamp_millis();
    let mut rng = StdRng::seed_from_u64(5);
    let msgs = random_messages(&mut rng, 500, 50, now, true);
    online_table(&cluster, &engine, "pg", 2, &msgs, "").await;
    let want = oracle(&msgs, i64::MAX, i64::MIN);
    let (addr, _task) = kfsql::server::start(engine.clone(), "127.0.0.1:0").await.expect("server");
    let (client, conn) = tokio_postgres::connect(
        &format!("host={} port={} user=kfsql dbname=kfsql", addr.ip(), addr.port()),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connect");
    tokio::spawn(conn);
    let one =
        client.prepare("SELECT user_id, score, event_time FROM latest.pg WHERE user_id = $1").await.expect("prepare");
    for k in 0..60 {
        let key = format!("u{k}");
        let rows = client.query(&one, &[&key]).await.expect("lookup");
        match want.get(&key) {
            Some(score) => {
                assert_eq!(rows.len(), 1, "{key}");
                assert_eq!(rows[0].get::<_, Option<i64>>(1), Some(*score), "{key}");
            }
            None => assert!(rows.is_empty(), "{key} has no value: {rows:?}"),
        }
    }
    let three =
        client.prepare("SELECT user_id, score FROM latest.pg WHERE user_id IN ($1, $2, $3)").await.expect("prepare");
    let keys: Vec<String> = want.keys().take(2).cloned().chain(["nobody".to_string()]).collect();
    let rows = client.query(&three, &[&keys[0], &keys[1], &keys[2]]).await.expect("lookup");
    let got: BTreeMap<String, i64> =
        rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, Option<i64>>(1).unwrap_or(0))).collect();
    assert_eq!(got, want.iter().take(2).map(|(k, v)| (k.clone(), *v)).collect());
    // every one of those executions took the fast path (no DataFusion planning)
    let lookups = common::scalar(&engine, "SELECT lookups FROM kfsql.freshness WHERE table_name = 'pg'").await;
    assert_eq!(lookups, "61", "prepared lookups answered from the map");
}

async fn freshness(engine: &kfsql::Engine, table: &str) -> Vec<String> {
    let sql = format!(
        "SELECT ready, keys, lag_messages, messages, staleness_ms, last_error FROM kfsql.freshness WHERE table_name = '{table}'"
    );
    common::rows(engine, &sql).await.into_iter().next().expect("a freshness row")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_rebuilds_the_view_from_the_topic() {
    let cluster = common::cluster();
    let catalog = common::unique("catalog");
    let engine = common::engine(&cluster, &catalog).await;
    let now = chrono::Utc::now().timestamp_millis();
    let msgs = random_messages(&mut StdRng::seed_from_u64(3), 2000, 300, now, true);
    online_table(&cluster, &engine, "rs", 3, &msgs, "").await;
    let before = as_map(common::rows(&engine, "SELECT user_id, score FROM latest.rs").await);
    assert_eq!(before, oracle(&msgs, i64::MAX, i64::MIN));
    drop(engine);
    // a new server on the same catalog finds the online table and rebuilds its view before reporting ready
    let again = common::engine(&cluster, &catalog).await;
    wait_ready(&again, "rs").await;
    assert_eq!(as_map(common::rows(&again, "SELECT user_id, score FROM latest.rs").await), before);
    let f = freshness(&again, "rs").await;
    assert_eq!(f[3], msgs.len().to_string(), "the rebuild read every message: {f:?}");
}

/// Starts its own Apache Kafka (KFSQL_OWN_KAFKA): the broker is killed under a live view and restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_keeps_serving_and_catching_up_loses_nothing() {
    let Some(kafka) = common::OwnKafka::start(1) else { return };
    let cluster = Arc::new(KafkaCluster::connect(&kafka.bootstrap, Duration::from_secs(2), vec![]).expect("client"));
    common::topic(&cluster, "online", 2).await;
    let now = chrono::Utc::now().timestamp_millis();
    let first: Vec<Produced> =
        (0..100).map(|i| Produced { key: format!("u{i}"), value: Some((1, now - 1000)), arrival_ms: now }).collect();
    produce(&cluster, "online", &first).await;
    let config = kfsql::EngineConfig {
        catalog_topic: "_catalog".into(),
        query_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    let engine = kfsql::Engine::start(cluster.clone(), config).await.expect("engine");
    engine
        .query(&format!(
            "CREATE EXTERNAL TABLE o {TABLE} STORED AS KAFKA LOCATION 'online' \
             OPTIONS ('key' 'user_id', 'event_time' 'event_time', 'online' 'true')"
        ))
        .await
        .expect("create");
    wait_ready(&engine, "o").await;
    assert_eq!(common::scalar(&engine, "SELECT sum(score) FROM latest.o").await, "100");

    kafka.kill(1);
    // the view keeps serving its last values while staleness grows and the error is shown
    let start = Instant::now();
    loop {
        let f = freshness(&engine, "o").await;
        if f[4].parse::<i64>().is_ok_and(|ms| ms >= 2000) && f[5] != "NULL" {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "staleness did not grow during the outage: {f:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(common::scalar(&engine, "SELECT score FROM latest.o WHERE user_id = 'u7'").await, "1");
    assert_eq!(common::scalar(&engine, "SELECT count(*) FROM latest.o").await, "100");

    kafka.revive(1);
    let later = chrono::Utc::now().timestamp_millis();
    let second: Vec<Produced> =
        (0..150).map(|i| Produced { key: format!("u{i}"), value: Some((2, later)), arrival_ms: later }).collect();
    // the producer may need a moment to find the broker again
    produce(&cluster, "online", &second).await;
    let start = Instant::now();
    loop {
        let sum = common::scalar(&engine, "SELECT sum(score) FROM latest.o").await;
        if sum == "300" {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "did not catch up: sum {sum}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let start = Instant::now();
    loop {
        let f = freshness(&engine, "o").await;
        if f[1] == "150" && f[2] == "0" && f[3] == "250" {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "freshness after catching up: {f:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

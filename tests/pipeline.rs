//! Feature pipelines (`CREATE MATERIALIZED VIEW`) against oracles computed from what was produced: a hopping window
//! with every aggregate, its feature topic checked per (key, window) against a brute-force oracle while the pipeline
//! is crashed and restarted at random points; a stateless projection; a `date_bin` tumbling window with late events;
//! `kfsql.pipelines`, SHOW and DROP.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kfsql::Engine;
use kfsql::kafka::KafkaCluster;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const MINUTE: i64 = 60_000;
/// 2026-11-20T00:00:00Z in ms.
const BASE: i64 = 1_795_132_800_000;

fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).expect("time").naive_utc().format("%Y-%m-%dT%H:%M:%S%.3f").to_string()
}

#[derive(Debug, Clone)]
struct Txn {
    id: usize,
    user: String,
    amount: f64,
    country: &'static str,
    t: i64,
}

impl Txn {
    fn json(&self) -> String {
        format!(
            r#"{{"txn_id":"t{}","user_id":"{}","amount":{},"merchant":"m{}","country":"{}","event_time":"{}"}}"#,
            self.id,
            self.user,
            self.amount,
            self.id % 7,
            self.country,
            iso(self.t)
        )
    }
}

async fn produce(cluster: &Arc<KafkaCluster>, topic: &str, txns: &[Txn]) {
    let msgs = txns.iter().map(|t| common::Msg::new(&t.user, &t.json())).collect();
    common::produce(cluster.producer(), topic, msgs).await;
}

/// Feature values per (user, window end ms), as text.
type Features = BTreeMap<(String, i64), Vec<String>>;

/// The hopping-window features by definition: each event counts in every window `[end - size, end)` holding it.
fn oracle(txns: &[Txn], slide: i64, size: i64, emitted_until: i64) -> Features {
    let mut groups: BTreeMap<(String, i64), Vec<&Txn>> = BTreeMap::new();
    for t in txns {
        let first = t.t.div_euclid(slide) * slide + slide;
        let mut end = first;
        while end <= first - slide + size {
            if end <= emitted_until {
                groups.entry((t.user.clone(), end)).or_default().push(t);
            }
            end += slide;
        }
    }
    groups
        .into_iter()
        .map(|(k, ts)| {
            let sum: f64 = ts.iter().map(|t| t.amount).sum();
            let min = ts.iter().map(|t| t.amount).fold(f64::INFINITY, f64::min);
            let max = ts.iter().map(|t| t.amount).fold(f64::NEG_INFINITY, f64::max);
            let countries: BTreeSet<&str> = ts.iter().map(|t| t.country).collect();
            let last = ts.iter().max_by_key(|t| t.t).map(|t| t.country).unwrap_or_default();
            let v = vec![
                ts.len().to_string(),
                format!("{sum:.2}"),
                format!("{:.2}", sum / ts.len() as f64),
                format!("{min:.2}"),
                format!("{max:.2}"),
                countries.len().to_string(),
                last.to_string(),
            ];
            (k, v)
        })
        .collect()
}

/// The feature topic's newest message per (key, window): the pipeline's answer.
async fn features(engine: &Engine, table: &str) -> Features {
    let sql = format!(
        "SELECT user_id, CAST(window_end AS BIGINT) / 1000000 AS end_ms, n, total, mean, lo, hi, countries, last_country \
         FROM (SELECT *, row_number() OVER (PARTITION BY user_id, window_end ORDER BY _offset DESC) AS rn FROM {table}) \
         WHERE rn = 1"
    );
    common::rows(engine, &sql)
        .await
        .into_iter()
        .map(|r| {
            let num = |s: &str| format!("{:.2}", s.parse::<f64>().expect("number"));
            let key = (r[0].clone(), r[1].parse::<i64>().expect("end"));
            (key, vec![r[2].clone(), num(&r[3]), num(&r[4]), num(&r[5]), num(&r[6]), r[7].clone(), r[8].clone()])
        })
        .collect()
}

/// A pipeline's row of kfsql.pipelines: (state, input_lag, rows_in, rows_out, late_events, emitted_until ms).
async fn status(engine: &Engine, name: &str) -> Option<(String, i64, u64, u64, u64, Option<i64>)> {
    let r = common::rows(
        engine,
        &format!(
            "SELECT state, input_lag, rows_in, rows_out, late_events, CAST(emitted_until AS BIGINT) / 1000000, \
             last_error FROM kfsql.pipelines WHERE name = '{name}'"
        ),
    )
    .await;
    let r = r.first()?;
    Some((
        r[0].clone(),
        r[1].parse().ok()?,
        r[2].parse().ok()?,
        r[3].parse().ok()?,
        r[4].parse().ok()?,
        r[5].parse().ok(),
    ))
}

/// Wait until the pipeline has emitted every window ending by `until` (ms).
async fn wait_emitted(engine: &Engine, name: &str, until: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = status(engine, name).await;
        if let Some((_, lag, _, _, _, Some(e))) = &s
            && *e >= until
            && *lag == 0
        {
            return;
        }
        assert!(Instant::now() < deadline, "pipeline {name} never emitted up to {}: {s:?}", iso(until));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn transactions(rng: &mut StdRng, n: usize, users: usize, from: i64) -> Vec<Txn> {
    const COUNTRIES: [&str; 5] = ["FR", "DE", "US", "BR", "JP"];
    (0..n)
        .map(|i| Txn {
            id: i,
            user: format!("u{}", rng.random_range(0..users)),
            amount: (rng.random_range(100..100_000) as f64) / 100.0,
            country: COUNTRIES[rng.random_range(0..COUNTRIES.len())],
            // distinct times, so "last value" has one answer
            t: from + i as i64 * 1_000 + rng.random_range(0..1_000),
        })
        .collect()
}

/// A hopping window with count, sum, min, max, count distinct and last value, crashed and restarted at random points:
/// every (key, window) in the feature topic equals the brute-force oracle, and so does the same query over history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hopping_window_survives_crashes_and_equals_the_oracle() {
    let cluster = common::cluster();
    let catalog = common::unique("_cat_pipe");
    let (raw, out) = (common::unique("txn_raw"), common::unique("txn_feats"));
    common::topic(&cluster, &raw, 4).await;
    let mut engine = common::engine(&cluster, &catalog).await;
    common::rows(&engine, &common::create_table_sql("transactions", &raw, "")).await;

    let mut rng = StdRng::seed_from_u64(7);
    let all = transactions(&mut rng, 2_400, 25, BASE);
    // history first: the view backfills it
    let (history, live) = all.split_at(800);
    produce(&cluster, &raw, history).await;
    let (slide, size) = (10 * MINUTE, 30 * MINUTE);
    common::rows(
        &engine,
        &format!(
            "CREATE MATERIALIZED VIEW feats WITH (topic = '{out}', key = 'user_id', allowed_lateness = '4 minutes') AS \
             SELECT user_id, window_end, count(*) AS n, sum(amount) AS total, avg(amount) AS mean, min(amount) AS lo, \
                    max(amount) AS hi, count(DISTINCT country) AS countries, \
                    last_value(country ORDER BY event_time) AS last_country \
             FROM HOP(transactions, event_time, INTERVAL '10 minutes', INTERVAL '30 minutes') \
             GROUP BY user_id, window_end"
        ),
    )
    .await;

    // the live part in rounds of 200 events (~200 s of event time), shuffled within each round: within the allowed
    // lateness, which also covers a real broker showing one partition's share of a round before another's. After
    // each round the server "crashes" at a random moment and a new one takes over from the catalog.
    for (round, chunk) in live.chunks(200).enumerate() {
        let mut chunk = chunk.to_vec();
        chunk.shuffle(&mut rng);
        produce(&cluster, &raw, &chunk).await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..400))).await;
        if round % 2 == 1 {
            engine.pipelines().stop("feats");
            drop(engine);
            engine = common::engine(&cluster, &catalog).await;
        }
    }
    let last = all.iter().map(|t| t.t).max().expect("events");
    // an event far later moves the watermark past every window of the data above
    let closer = Txn { id: 99_999, user: "u_closer".into(), amount: 1.0, country: "FR", t: last + 2 * size };
    produce(&cluster, &raw, std::slice::from_ref(&closer)).await;
    let until = (last + size).div_euclid(slide) * slide + slide;
    wait_emitted(&engine, "feats", until).await;

    let got = features(&engine, "feats").await;
    let want = oracle(&all, slide, size, until);
    assert_eq!(got.len(), want.len(), "windows in the feature topic");
    for (k, v) in &want {
        assert_eq!(got.get(k), Some(v), "user {} window ending {}", k.0, iso(k.1));
    }
    // the same SQL over the topic's history agrees
    let batch = common::rows(
        &engine,
        &format!(
            "SELECT user_id, CAST(window_end AS BIGINT) / 1000000, count(*) \
             FROM HOP(transactions, event_time, INTERVAL '10 minutes', INTERVAL '30 minutes') \
             WHERE window_end <= TIMESTAMP '{}' GROUP BY user_id, window_end",
            iso(until)
        ),
    )
    .await;
    let batch: BTreeMap<(String, i64), String> =
        batch.into_iter().map(|r| ((r[0].clone(), r[1].parse().expect("end")), r[2].clone())).collect();
    let counts: BTreeMap<(String, i64), String> = got.iter().map(|(k, v)| (k.clone(), v[0].clone())).collect();
    assert_eq!(batch, counts, "pipeline and batch query disagree");
    let (_, _, _, _, late, _) = status(&engine, "feats").await.expect("status");
    assert_eq!(late, 0, "no event was late");

    // the consumer group mirrors the checkpoint: Kafka's tools see the pipeline's position
    let committed = committed(&cluster, "kfsql-pipeline-feats", &raw, 4).await;
    let highs = cluster.watermarks(&raw, &[0, 1, 2, 3]).await.expect("watermarks");
    for (p, c) in committed.iter().enumerate() {
        assert!(*c >= 0 && *c <= highs[p].high, "partition {p}: committed {c}, high {}", highs[p].high);
    }
    assert!(committed.iter().sum::<i64>() > 0, "offsets committed: {committed:?}");
}

/// The offsets consumer group `group` committed on `topic`'s partitions (-1: none).
async fn committed(cluster: &Arc<KafkaCluster>, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = cluster.consumer_config().set("group.id", group).create().expect("consumer");
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = tokio::task::spawn_blocking(move || consumer.committed_offsets(tpl, Duration::from_secs(10)))
        .await
        .expect("join")
        .expect("committed offsets");
    (0..partitions)
        .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(rdkafka::Offset::Offset(o)) => o,
            _ => -1,
        })
        .collect()
}

/// A stateless projection and filter; a `date_bin` tumbling window whose late events are counted and left out;
/// kfsql.pipelines, SHOW MATERIALIZED VIEWS and DROP MATERIALIZED VIEW.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateless_and_date_bin_pipelines_count_late_events() {
    let cluster = common::cluster();
    let catalog = common::unique("_cat_pipe2");
    let raw = common::unique("txn_raw2");
    common::topic(&cluster, &raw, 2).await;
    let engine = common::engine(&cluster, &catalog).await;
    common::rows(&engine, &common::create_table_sql("transactions", &raw, "")).await;
    let mut rng = StdRng::seed_from_u64(11);
    let txns = transactions(&mut rng, 600, 10, BASE);
    produce(&cluster, &raw, &txns).await;

    let big = common::unique("big_txns");
    common::rows(
        &engine,
        &format!(
            "CREATE MATERIALIZED VIEW big_txns WITH (topic = '{big}', key = 'user_id', event_time = 'event_time') AS \
             SELECT txn_id, user_id, amount * 100 AS cents, event_time FROM transactions WHERE amount > 500"
        ),
    )
    .await;
    let hourly = common::unique("hourly");
    common::rows(
        &engine,
        &format!(
            "CREATE MATERIALIZED VIEW hourly WITH (topic = '{hourly}', key = 'user_id', event_time = 'window_end') AS \
             SELECT user_id, date_bin(INTERVAL '5 minutes', event_time) + INTERVAL '5 minutes' AS window_end, \
                    count(*) AS n, avg(amount) AS mean \
             FROM transactions GROUP BY user_id, date_bin(INTERVAL '5 minutes', event_time)"
        ),
    )
    .await;
    let want_big = txns.iter().filter(|t| t.amount > 500.0).count();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n: usize = common::scalar(&engine, "SELECT count(*) FROM big_txns").await.parse().expect("count");
        if n >= want_big {
            assert_eq!(n, want_big, "each row written once");
            break;
        }
        assert!(Instant::now() < deadline, "big_txns has {n} of {want_big} rows");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cents = common::scalar(&engine, "SELECT CAST(round(sum(cents)) AS BIGINT) FROM big_txns").await;
    let want_cents: f64 = txns.iter().filter(|t| t.amount > 500.0).map(|t| t.amount * 100.0).sum();
    assert_eq!(cents, format!("{}", want_cents.round() as i64));

    let last = txns.iter().map(|t| t.t).max().expect("events");
    let bin = 5 * MINUTE;
    let emitted = last.div_euclid(bin) * bin;
    wait_emitted(&engine, "hourly", emitted).await;
    // two events for windows already emitted: late, counted, and not in the output
    let late = vec![
        Txn { id: 50_000, user: "u1".into(), amount: 1.0, country: "FR", t: BASE + 1_000 },
        Txn { id: 50_001, user: "u2".into(), amount: 1.0, country: "FR", t: BASE + 2_000 },
    ];
    produce(&cluster, &raw, &late).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(&engine, "hourly").await.is_none_or(|s| s.4 < 2) {
        assert!(Instant::now() < deadline, "late events not counted: {:?}", status(&engine, "hourly").await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got: BTreeMap<(String, i64), String> = common::rows(
        &engine,
        "SELECT user_id, CAST(window_end AS BIGINT) / 1000000, n FROM \
         (SELECT *, row_number() OVER (PARTITION BY user_id, window_end ORDER BY _offset DESC) AS rn FROM hourly) WHERE rn = 1",
    )
    .await
    .into_iter()
    .map(|r| ((r[0].clone(), r[1].parse().expect("end")), r[2].clone()))
    .collect();
    let mut want: BTreeMap<(String, i64), usize> = BTreeMap::new();
    for t in &txns {
        let end = t.t.div_euclid(bin) * bin + bin;
        if end <= emitted {
            *want.entry((t.user.clone(), end)).or_default() += 1;
        }
    }
    let want: BTreeMap<(String, i64), String> = want.into_iter().map(|(k, v)| (k, v.to_string())).collect();
    assert_eq!(got, want, "tumbling windows by date_bin");

    let shown = common::rows(&engine, "SHOW MATERIALIZED VIEWS").await;
    let names: Vec<&str> = shown.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(names, vec!["big_txns", "hourly"]);
    common::rows(&engine, "DROP MATERIALIZED VIEW big_txns").await;
    assert!(engine.pipelines().status("big_txns").is_none());
    assert!(engine.query("SELECT * FROM big_txns").await.is_err(), "dropped view is gone");
}

/// What a pipeline cannot compute is refused at CREATE, with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_pipelines_are_refused() {
    let cluster = common::cluster();
    let raw = common::unique("txn_raw3");
    common::topic(&cluster, &raw, 1).await;
    let engine = common::engine(&cluster, &common::unique("_cat_pipe3")).await;
    common::rows(&engine, &common::create_table_sql("transactions", &raw, "")).await;
    for (sql, why) in [
        ("SELECT user_id, count(*) AS n FROM transactions GROUP BY user_id", "without a window"),
        ("SELECT * FROM transactions ORDER BY amount", "ORDER BY"),
        ("SELECT user_id FROM transactions", "WITH (key"),
    ] {
        let with = if why == "WITH (key" { "topic = 'x'" } else { "key = 'user_id'" };
        let err = engine
            .query(&format!("CREATE MATERIALIZED VIEW v WITH ({with}) AS {sql}"))
            .await
            .expect_err(sql)
            .to_string();
        assert!(err.contains(why), "{sql}: {err}");
    }
}

/// The `kfsql` binary serving on `port` against the test broker, killed (SIGKILL) when dropped.
struct Server(std::process::Child);

impl Server {
    fn start(brokers: &str, catalog: &str, port: u16) -> Server {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_kfsql"))
            .args(["serve", "--brokers", brokers, "--catalog-topic", catalog, "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .env("KFSQL_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("kfsql starts");
        Server(child)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill(); // SIGKILL: no shutdown code runs
        let _ = self.0.wait();
    }
}

async fn text_rows(client: &tokio_postgres::Client, sql: &str) -> Vec<Vec<String>> {
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).unwrap_or("NULL").to_string()).collect())
            }
            _ => None,
        })
        .collect()
}

/// The real server process, killed with SIGKILL mid-stream and restarted three times while transactions keep
/// arriving: the feature topic's newest value per (key, window) equals the oracle. Needs a broker that outlives the
/// process (KFSQL_TEST_BROKERS); the embedded Kafka dies with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_resumes_its_pipelines() {
    let Some(brokers) = common::required_env("KFSQL_TEST_BROKERS", "a broker outside this process") else { return };
    let cluster = common::cluster();
    let catalog = common::unique("_cat_kill");
    let (raw, out) = (common::unique("txn_kill"), common::unique("feat_kill"));
    common::topic(&cluster, &raw, 3).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let mut server = Server::start(&brokers, &catalog, port);
    let client = common::connect_when_up(port).await;
    text_rows(&client, &common::create_table_sql("transactions", &raw, "")).await;
    text_rows(
        &client,
        &format!(
            "CREATE MATERIALIZED VIEW per_minute WITH (topic = '{out}', key = 'user_id', allowed_lateness = '5 minutes') AS \
             SELECT user_id, window_end, count(*) AS n, sum(amount) AS total, avg(amount) AS mean, min(amount) AS lo, \
                    max(amount) AS hi, count(DISTINCT country) AS countries, \
                    last_value(country ORDER BY event_time) AS last_country \
             FROM TUMBLE(transactions, event_time, INTERVAL '1 minute') GROUP BY user_id, window_end"
        ),
    )
    .await;
    drop(client);

    // Each chunk below is 250 events over ~250 s of event time, produced in one burst to 3 partitions. A real broker
    // makes each partition's share visible on its own schedule, so a round may read one partition's whole share
    // before another's: the allowed lateness covers a chunk's span, and the test checks that no event was late.
    let mut rng = StdRng::seed_from_u64(23);
    let all = transactions(&mut rng, 3_000, 20, BASE);
    let mut kills = 0;
    for (round, chunk) in all.chunks(250).enumerate() {
        produce(&cluster, &raw, chunk).await;
        if round % 4 == 3 {
            // kill once this server's pipeline has committed progress, at a random moment after
            let client = common::connect_when_up(port).await;
            let deadline = Instant::now() + Duration::from_secs(60);
            while text_rows(&client, "SELECT checkpoints FROM kfsql.pipelines WHERE name = 'per_minute'")
                .await
                .first()
                .is_none_or(|r| r[0] == "0")
            {
                assert!(Instant::now() < deadline, "the pipeline never wrote a checkpoint");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            drop(client);
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
            drop(server); // kill -9, mid-stream
            kills += 1;
            server = Server::start(&brokers, &catalog, port);
        }
    }
    assert_eq!(kills, 3);
    let last = all.iter().map(|t| t.t).max().expect("events");
    let closer = Txn { id: 99_999, user: "u_closer".into(), amount: 1.0, country: "FR", t: last + 10 * MINUTE };
    produce(&cluster, &raw, std::slice::from_ref(&closer)).await;
    let until = last.div_euclid(MINUTE) * MINUTE + MINUTE;
    let client = common::connect_when_up(port).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let r = text_rows(
            &client,
            "SELECT CAST(emitted_until AS BIGINT) / 1000000, input_lag, last_error, late_events FROM kfsql.pipelines \
             WHERE name = 'per_minute'",
        )
        .await;
        if r.first().is_some_and(|r| r[0].parse::<i64>().is_ok_and(|e| e >= until) && r[1] == "0") {
            assert_eq!(r[0][3], "0", "late events");
            break;
        }
        assert!(Instant::now() < deadline, "pipeline did not catch up after the kills: {r:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let got: Features = text_rows(
        &client,
        "SELECT user_id, CAST(window_end AS BIGINT) / 1000000, n, total, mean, lo, hi, countries, last_country \
         FROM (SELECT *, row_number() OVER (PARTITION BY user_id, window_end ORDER BY _offset DESC) AS rn FROM per_minute) \
         WHERE rn = 1",
    )
    .await
    .into_iter()
    .map(|r| {
        let num = |s: &str| format!("{:.2}", s.parse::<f64>().expect("number"));
        ((r[0].clone(), r[1].parse().expect("end")), vec![r[2].clone(), num(&r[3]), num(&r[4]), num(&r[5]), num(&r[6]), r[7].clone(), r[8].clone()])
    })
    .collect();
    let want = oracle(&all, MINUTE, MINUTE, until);
    assert_eq!(got.len(), want.len(), "windows in the feature topic");
    for (k, v) in &want {
        assert_eq!(got.get(k), Some(v), "user {} window ending {}", k.0, iso(k.1));
    }
    drop(server);
}

//! The Kafka Streams example (examples/kafka-streams) end to end on Apache Kafka: the application computes hourly
//! per-user features from the fraud demo's transactions and writes them with Kafka Streams' windowed keys; kfsql
//! declares that topic (`key_format 'windowed_string'`) and serves it. Every window the application wrote equals the
//! same hopping-window query run by kfsql over the raw transactions; key pushdown reads one partition and finds
//! nothing misrouted (Kafka Streams places windowed records by the user key); the training set equals a brute-force
//! ASOF oracle over the windows; `latest.*` holds each user's newest window.
//!
//! Needs a real broker (KFSQL_TEST_BROKERS) and the example built (KFSQL_STREAMS_CP, its classpath; scripts/test.sh
//! builds it with Maven).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use kfsql::demo;

/// The application as a child process, killed when dropped.
struct StreamsApp(std::process::Child);

impl Drop for StreamsApp {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn classpath() -> Option<String> {
    common::required_env("KFSQL_STREAMS_CP", "the built Kafka Streams example's classpath")
}

/// (user, window_end ms) → (window_start ms, count, sum rounded to cents, max)
type Windows = BTreeMap<(String, i64), (i64, i64, String, String)>;

fn windows(rows: Vec<Vec<String>>) -> Windows {
    rows.into_iter()
        .map(|r| {
            let num = |s: &str| format!("{:.2}", s.parse::<f64>().expect("number"));
            (
                (r[0].clone(), r[2].parse().expect("end")),
                (r[1].parse().expect("start"), r[3].parse().expect("count"), num(&r[4]), num(&r[5])),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_streams_features_are_served_by_kfsql() {
    let Some(cluster) = common::real_cluster() else { return };
    let Some(cp) = classpath() else { return };
    let (txn_topic, label_topic, out_topic) =
        (common::unique("st_transactions"), common::unique("st_labels"), common::unique("st_features"));
    for t in [&txn_topic, &label_topic, &out_topic] {
        common::topic(&cluster, t, 4).await;
    }
    let end = Utc.with_ymd_and_hms(2026, 11, 20, 12, 0, 0).single().expect("time");
    let txns = demo::generate(3_000, 100, Duration::from_secs(6 * 3600), end, 17);
    demo::produce_transactions(cluster.producer(), &txn_topic, &txns).await.expect("transactions");
    demo::produce_labels(cluster.producer(), &label_topic, &txns).await.expect("labels");

    let app_id = common::unique("user-txn-features");
    let _app = StreamsApp(
        std::process::Command::new("java")
            .args(["-Xmx384m", "-cp", &cp, "kfsql.examples.UserTxnFeatures"])
            .args([cluster.bootstrap_servers(), &txn_topic, &out_topic, &app_id])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("java starts the Kafka Streams application"),
    );

    let engine = common::engine(&cluster, &common::unique("_cat_streams")).await;
    common::rows(&engine, &common::create_table_sql("transactions", &txn_topic, "")).await;
    common::rows(
        &engine,
        &format!(
            "CREATE EXTERNAL TABLE labels (txn_id VARCHAR NOT NULL, user_id VARCHAR NOT NULL, is_fraud BOOLEAN, \
             event_time TIMESTAMP NOT NULL) STORED AS KAFKA LOCATION '{label_topic}' \
             OPTIONS ('key' 'user_id', 'event_time' 'event_time')"
        ),
    )
    .await;
    common::rows(
        &engine,
        &format!(
            "CREATE EXTERNAL TABLE feats (user_id VARCHAR NOT NULL, window_start TIMESTAMP NOT NULL, \
             window_end TIMESTAMP NOT NULL, txn_count_1h BIGINT, amount_sum_1h DOUBLE, amount_max_1h DOUBLE) \
             STORED AS KAFKA LOCATION '{out_topic}' OPTIONS ('format' 'json', 'key' 'user_id', \
             'key_format' 'windowed_string', 'window_size' '1 hour', 'event_time' 'window_end', 'online' 'true')"
        ),
    )
    .await;

    // the application has written what it will write once its output stops growing
    let ms = |c: &str| format!("CAST({c} AS BIGINT) / 1000000");
    let streams_sql = format!(
        "SELECT user_id, {}, {}, txn_count_1h, amount_sum_1h, amount_max_1h FROM feats",
        ms("window_start"),
        ms("window_end")
    );
    let deadline = Instant::now() + Duration::from_secs(180);
    let (mut last, mut stable_since) = (0usize, Instant::now());
    let written = loop {
        let n: usize = common::scalar(&engine, "SELECT count(*) FROM feats").await.parse().expect("count");
        if n != last {
            (last, stable_since) = (n, Instant::now());
        } else if n > 0 && stable_since.elapsed() > Duration::from_secs(8) {
            break n;
        }
        assert!(Instant::now() < deadline, "Kafka Streams wrote {n} windows and was still writing");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let streams = windows(common::rows(&engine, &streams_sql).await);
    assert_eq!(streams.len(), written, "one record per (user, window): suppress emits final results once");
    assert!(written > 1_000, "{written} windows");

    // every window equals kfsql's own hopping-window query over the raw transactions
    let batch = windows(
        common::rows(
            &engine,
            &format!(
                "SELECT user_id, {}, {}, count(*), sum(amount), max(amount) \
                 FROM HOP(transactions, event_time, INTERVAL '5 minutes', INTERVAL '1 hour') \
                 GROUP BY user_id, window_start, window_end",
                ms("window_start"),
                ms("window_end")
            ),
        )
        .await,
    );
    for (k, v) in &streams {
        assert_eq!(batch.get(k), Some(v), "window {k:?}: Kafka Streams wrote {v:?}");
    }

    // key pushdown reads the user's one partition and finds nothing misrouted
    let plan = common::explain(&engine, "SELECT * FROM feats WHERE user_id = 'u7'").await;
    assert!(plan.contains("partitions=1/4"), "{plan}");
    let u7 = streams.keys().filter(|(u, _)| u == "u7").count();
    assert_eq!(common::scalar(&engine, "SELECT count(*) FROM feats WHERE user_id = 'u7'").await, u7.to_string());
    assert_eq!(
        common::scalar(&engine, "SELECT misrouted FROM kfsql.table_stats WHERE table_name = 'feats'").await,
        "0"
    );
    assert_eq!(common::scalar(&engine, "SELECT count(*) FROM feats WHERE _key <> user_id").await, "0");

    // the training set: each label with the newest window that had closed by its time (brute force over the windows)
    let labels = common::rows(&engine, &format!("SELECT txn_id, user_id, {} FROM labels", ms("event_time"))).await;
    let got: BTreeMap<String, String> = common::rows(
        &engine,
        &format!(
            "SELECT l.txn_id, {} FROM labels l \
             ASOF JOIN feats f MATCH_CONDITION (l.event_time >= f.window_end) ON l.user_id = f.user_id",
            ms("f.window_end")
        ),
    )
    .await
    .into_iter()
    .map(|r| (r[0].clone(), r[1].clone()))
    .collect();
    assert_eq!(got.len(), labels.len(), "every label once");
    let mut matched = 0;
    for l in &labels {
        let t: i64 = l[2].parse().expect("time");
        let want = streams.keys().filter(|(u, end)| *u == l[1] && *end <= t).map(|(_, end)| *end).max();
        matched += usize::from(want.is_some());
        let want = want.map_or("NULL".to_string(), |e| e.to_string());
        assert_eq!(got[&l[0]], want, "label {}", l[0]);
    }
    assert!(matched > labels.len() / 2, "{matched} of {} labels found features", labels.len());

    // online: each user's newest window
    let deadline = Instant::now() + Duration::from_secs(30);
    while common::scalar(&engine, "SELECT ready FROM kfsql.freshness WHERE table_name = 'feats'").await != "true" {
        assert!(Instant::now() < deadline, "latest.feats never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut newest: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for ((u, end), (_, n, _, _)) in &streams {
        let e = newest.entry(u.clone()).or_insert((*end, *n));
        if *end > e.0 {
            *e = (*end, *n);
        }
    }
    let online: BTreeMap<String, (i64, i64)> =
        common::rows(&engine, &format!("SELECT user_id, {}, txn_count_1h FROM latest.feats", ms("window_end")))
            .await
            .into_iter()
            .map(|r| (r[0].clone(), (r[1].parse().expect("end"), r[2].parse().expect("count"))))
            .collect();
    assert_eq!(online, newest);
    let one =
        common::rows(&engine, &format!("SELECT {} FROM latest.feats WHERE user_id = 'u7'", ms("window_start"))).await;
    assert_eq!(
        one,
        vec![vec![(newest["u7"].0 - 3_600_000).to_string()]],
        "a point lookup reads the window from the key"
    );
}

//! Kafka tables end to end against a broker (Apache Kafka when KFSQL_TEST_BROKERS is set, else the in-process mock):
//! declaration, bounded scans, every pushdown checked against a full-scan oracle, bad messages, the catalog topic,
//! and failures.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use common::*;
use kfsql::KfsqlError;
use kfsql::demo;
use kfsql::kafka::KafkaCluster;

/// A topic of generated transactions and a table over it; returns (engine, table, transactions).
async fn fraud_table(
    partitions: i32,
    n: usize,
) -> (std::sync::Arc<KafkaCluster>, kfsql::Engine, String, Vec<demo::Transaction>) {
    let cluster = cluster();
    let topic_name = unique("txns");
    topic(&cluster, &topic_name, partitions).await;
    let end = Utc.with_ymd_and_hms(2026, 11, 20, 12, 0, 0).single().expect("time");
    let txns = demo::generate(n, 50, Duration::from_secs(3600), end, 7);
    demo::produce_transactions(cluster.producer(), &topic_name, &txns).await.expect("produce");
    let engine = engine(&cluster, &unique("catalog")).await;
    engine.query(&create_table_sql("tx", &topic_name, "")).await.expect("create");
    (cluster, engine, topic_name, txns)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_reads_every_message_once() {
    let (_c, engine, _t, txns) = fraud_table(4, 2000).await;
    assert_eq!(scalar(&engine, "SELECT count(*) FROM tx").await, txns.len().to_string());
    let sum: f64 = txns.iter().map(|t| t.amount).sum();
    let got: f64 = scalar(&engine, "SELECT sum(amount) FROM tx").await.parse().expect("number");
    assert!((got - sum).abs() < 1e-6 * sum.abs(), "sum {got} vs {sum}");
    // every txn id exactly once, with its own values
    let r = rows(&engine, "SELECT txn_id, user_id, amount, country FROM tx").await;
    let by_id: BTreeMap<_, _> = r.iter().map(|row| (row[0].clone(), row.clone())).collect();
    assert_eq!(by_id.len(), txns.len());
    for t in &txns {
        let row = &by_id[&t.txn_id];
        assert_eq!((row[1].as_str(), row[3].as_str()), (t.user_id.as_str(), t.country.as_str()));
        assert_eq!(row[2].parse::<f64>().expect("amount"), t.amount);
    }
    // metadata columns: keys are the user ids, offsets dense per partition
    let r = rows(&engine, "SELECT count(*) FROM tx WHERE _key <> user_id OR _key IS NULL").await;
    assert_eq!(r[0][0], "0");
    let r = rows(&engine, "SELECT _partition, min(_offset), max(_offset), count(*) FROM tx GROUP BY _partition").await;
    for row in r {
        let (min, max, n): (i64, i64, i64) =
            (row[1].parse().expect("min"), row[2].parse().expect("max"), row[3].parse().expect("n"));
        assert_eq!((min, max - min + 1), (0, n), "partition {}", row[0]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_filter_reads_only_the_keys_partition_and_matches_full_scan() {
    let (_c, engine, _t, txns) = fraud_table(4, 1500).await;
    for user in ["u1", "u7", "u42", "nobody"] {
        let pruned = rows(&engine, &format!("SELECT txn_id FROM tx WHERE user_id = '{user}' ORDER BY txn_id")).await;
        // the same filter, written so that it cannot be pushed down
        let full =
            rows(&engine, &format!("SELECT txn_id FROM tx WHERE user_id || '' = '{user}' ORDER BY txn_id")).await;
        assert_eq!(pruned, full, "user {user}");
        let expected = txns.iter().filter(|t| t.user_id == user).count();
        assert_eq!(pruned.len(), expected, "user {user}");
        let plan = explain(&engine, &format!("SELECT * FROM tx WHERE user_id = '{user}'")).await;
        assert!(plan.contains("partitions=1/4"), "{plan}");
    }
    let plan = explain(&engine, "SELECT * FROM tx WHERE user_id IN ('u1', 'u2', 'u3')").await;
    assert!(plan.contains("3 key(s)"), "{plan}");
    let n = scalar(&engine, "SELECT count(*) FROM tx WHERE user_id IN ('u1', 'u2', 'u3')").await;
    assert_eq!(n, txns.iter().filter(|t| ["u1", "u2", "u3"].contains(&t.user_id.as_str())).count().to_string());
    // nothing was found in a partition its key does not hash to
    assert_eq!(scalar(&engine, "SELECT misrouted FROM kfsql.table_stats WHERE table_name = 'tx'").await, "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_and_offset_filters_bound_the_read() {
    let (_c, engine, _t, _txns) = fraud_table(3, 900).await;
    let r = rows(
        &engine,
        "SELECT _partition, _offset FROM tx WHERE _partition = 1 AND _offset >= 5 AND _offset < 10 ORDER BY _offset",
    )
    .await;
    assert_eq!(r, (5..10).map(|o| vec!["1".to_string(), o.to_string()]).collect::<Vec<_>>());
    let plan = explain(&engine, "SELECT * FROM tx WHERE _partition = 1 AND _offset >= 5 AND _offset < 10").await;
    assert!(plan.contains("partitions=1/3 [1:[5..10)]"), "{plan}");
    assert_eq!(scalar(&engine, "SELECT count(*) FROM tx WHERE _partition IN (0, 2) AND _partition = 1").await, "0");
    let both = scalar(&engine, "SELECT count(*) FROM tx WHERE _partition IN (0, 2)").await;
    let oracle = scalar(&engine, "SELECT count(*) FROM tx WHERE _partition + 0 IN (0, 2)").await;
    assert_eq!(both, oracle);
    assert_eq!(scalar(&engine, "SELECT count(*) FROM tx WHERE _offset = 3").await, "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arrival_time_filters_and_time_travel_match_the_oracle() {
    let cluster = cluster();
    let t = unique("times");
    topic(&cluster, &t, 2).await;
    // Arrival timestamps one second apart, deliberately not in key order.
    let base = 1_795_000_000_000i64;
    let msgs: Vec<Msg> = (0..200)
        .map(|i| Msg::new(&format!("k{}", i % 13), &format!(r#"{{"k":"k{}","v":{i}}}"#, i % 13)).at(base + i * 1000))
        .collect();
    produce(cluster.producer(), &t, msgs).await;
    let engine = engine(&cluster, &unique("catalog")).await;
    engine
        .query(&format!(
            "CREATE EXTERNAL TABLE ev (k VARCHAR NOT NULL, v BIGINT) STORED AS KAFKA LOCATION '{t}' OPTIONS ('key' 'k')"
        ))
        .await
        .expect("create");
    for cut in [0i64, 1, 57, 150, 199, 250] {
        let ts = Utc.timestamp_millis_opt(base + cut * 1000).single().expect("ts").format("%Y-%m-%d %H:%M:%S%.3f");
        let newer = scalar(&engine, &format!("SELECT count(*) FROM ev WHERE _timestamp >= TIMESTAMP '{ts}'")).await;
        assert_eq!(newer, (200 - cut.min(200)).to_string(), "_timestamp >= cut {cut}");
        let as_of = scalar(&engine, &format!("SELECT count(*) FROM ev FOR SYSTEM_TIME AS OF TIMESTAMP '{ts}'")).await;
        assert_eq!(as_of, (cut + 1).min(200).to_string(), "AS OF cut {cut}");
        let max_v = scalar(&engine, &format!("SELECT max(v) FROM ev FOR SYSTEM_TIME AS OF TIMESTAMP '{ts}'")).await;
        assert_eq!(max_v, cut.min(199).to_string(), "newest value as of cut {cut}");
    }
    let plan = explain(&engine, "SELECT * FROM ev FOR SYSTEM_TIME AS OF TIMESTAMP '2026-11-20 12:00:00'").await;
    assert!(plan.contains("_timestamp <="), "{plan}");
    if cluster.supports_offsets_for_times() {
        let ts = Utc.timestamp_millis_opt(base + 150_000).single().expect("ts").format("%Y-%m-%d %H:%M:%S");
        let plan = explain(&engine, &format!("SELECT * FROM ev WHERE _timestamp >= TIMESTAMP '{ts}'")).await;
        assert!(plan.contains("messages=50"), "offsets_for_times should start at message 150: {plan}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_stops_consuming_early() {
    let (_c, engine, _t, txns) = fraud_table(1, 30_000).await;
    let before: u64 =
        scalar(&engine, "SELECT messages FROM kfsql.table_stats WHERE table_name = 'tx'").await.parse().expect("n");
    assert_eq!(rows(&engine, "SELECT * FROM tx LIMIT 5").await.len(), 5);
    let after: u64 =
        scalar(&engine, "SELECT messages FROM kfsql.table_stats WHERE table_name = 'tx'").await.parse().expect("n");
    assert!(after - before < txns.len() as u64 / 2, "LIMIT 5 read {} of {} messages", after - before, txns.len());
}

fn bad_batch() -> Vec<Msg> {
    vec![
        Msg::new("u1", r#"{"txn_id":"a","user_id":"u1","amount":1.5,"event_time":"2026-11-20T10:00:00"}"#),
        Msg::new("u1", "this is not json"),
        Msg::new("u1", r#"{"txn_id":"b","user_id":"u1","amount":"lots","event_time":"2026-11-20T10:00:00"}"#),
        Msg::new("u1", "[1,2,3]"),
        Msg::new("u1", r#"{"txn_id":"c","amount":3,"event_time":"2026-11-20T10:00:00"}"#),
        Msg::new("u1", r#"{"txn_id":"d","user_id":"u1","amount":4,"event_time":"2026-11-20T10:00:01Z"}"#),
        Msg { key: Some("u1".into()), payload: None, ts: None, partition: None },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_follow_the_table_policy_and_are_counted() {
    let cluster = cluster();
    let t = unique("bad");
    topic(&cluster, &t, 1).await;
    produce(cluster.producer(), &t, bad_batch()).await;
    let engine = engine(&cluster, &unique("catalog")).await;
    for (name, policy) in [("skipper", "skip"), ("nuller", "null"), ("failer", "fail")] {
        engine.query(&create_table_sql(name, &t, &format!(", 'bad_messages' '{policy}'"))).await.expect("create");
    }
    assert_eq!(rows(&engine, "SELECT txn_id FROM skipper ORDER BY txn_id").await, vec![vec!["a"], vec!["d"]]);
    let stats =
        rows(&engine, "SELECT bad_messages, tombstones FROM kfsql.table_stats WHERE table_name = 'skipper'").await;
    assert_eq!(stats, vec![vec!["4", "1"]]);
    let r = rows(&engine, "SELECT _offset, txn_id, amount FROM nuller ORDER BY _offset").await;
    assert_eq!(r.len(), 6, "{r:?}");
    assert_eq!(r[1], vec!["1", "NULL", "NULL"]);
    assert_eq!(r[4], vec!["4", "NULL", "NULL"], "a message missing its NOT NULL key is blanked whole");
    let err = engine.query("SELECT * FROM failer").await.expect_err("fail policy");
    assert_eq!(err.sqlstate(), "22P02", "{err}");
    assert!(err.to_string().contains("offset 1") && err.to_string().contains("bad_messages"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misrouted_keys_are_counted() {
    let cluster = cluster();
    let t = unique("routes");
    topic(&cluster, &t, 4).await;
    let p = kfsql::kafka::Partitioner::Murmur2.partition_for(b"u9", 4).expect("partition");
    let wrong = (p + 1) % 4;
    produce(
        cluster.producer(),
        &t,
        vec![
            Msg::new("u9", r#"{"txn_id":"x","user_id":"u9","event_time":"2026-11-20T10:00:00"}"#).to_partition(p),
            Msg::new("u9", r#"{"txn_id":"y","user_id":"u9","event_time":"2026-11-20T10:00:00"}"#).to_partition(wrong),
        ],
    )
    .await;
    let engine = engine(&cluster, &unique("catalog")).await;
    engine.query(&create_table_sql("r", &t, "")).await.expect("create");
    assert_eq!(scalar(&engine, "SELECT count(*) FROM r").await, "2");
    assert_eq!(scalar(&engine, "SELECT misrouted FROM kfsql.table_stats WHERE table_name = 'r'").await, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_topic_is_shared_and_survives_restarts() {
    let cluster = cluster();
    let t = unique("shared");
    topic(&cluster, &t, 2).await;
    produce(
        cluster.producer(),
        &t,
        vec![Msg::new("u1", r#"{"txn_id":"a","user_id":"u1","event_time":"2026-11-20T10:00:00"}"#)],
    )
    .await;
    let catalog = unique("catalog");
    let a = engine(&cluster, &catalog).await;
    a.query(&create_table_sql("shared_tx", &t, ", 'ttl' '2 hours'")).await.expect("create");
    // a second server on the same brokers sees it at start…
    let b = engine(&cluster, &catalog).await;
    assert_eq!(scalar(&b, "SELECT count(*) FROM shared_tx").await, "1");
    assert_eq!(scalar(&b, "SELECT ttl FROM kfsql.tables WHERE table_name = 'shared_tx'").await, "2h");
    // …and follows changes made by the first
    a.query(&create_table_sql("later_tx", &t, "")).await.expect("create 2");
    wait_until(|| b.definitions().contains_key("later_tx")).await;
    a.query("DROP TABLE shared_tx").await.expect("drop");
    wait_until(|| !b.definitions().contains_key("shared_tx")).await;
    assert!(b.query("SELECT * FROM shared_tx").await.is_err());
    // a restarted server reads the compacted state
    drop(a);
    let c = engine(&cluster, &catalog).await;
    assert_eq!(c.definitions().keys().cloned().collect::<Vec<_>>(), vec!["later_tx".to_string()]);
    // IF NOT EXISTS is quiet, a plain duplicate is 42P07
    c.query(
        &create_table_sql("later_tx", &t, "").replace("CREATE EXTERNAL TABLE", "CREATE EXTERNAL TABLE IF NOT EXISTS"),
    )
    .await
    .expect("if not exists");
    assert_eq!(c.query(&create_table_sql("later_tx", &t, "")).await.expect_err("dup").sqlstate(), "42P07");
}

/// CREATE registers the table itself and the catalog follower then sees the same record: that second registration must
/// leave the table in place, so a query issued right after CREATE returned never finds the name missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_created_table_stays_visible_while_the_catalog_follower_catches_up() {
    let cluster = cluster();
    let t = unique("visible");
    topic(&cluster, &t, 1).await;
    let engine = engine(&cluster, &unique("catalog")).await;
    for i in 0..30 {
        let name = format!("visible_{i}");
        engine.query(&create_table_sql(&name, &t, "")).await.expect("create");
        // the follower is waiting on the topic and applies the record within milliseconds: query without pause
        let until = Instant::now() + Duration::from_millis(250);
        let mut queries = 0;
        while Instant::now() < until {
            if let Err(e) = engine.query(&format!("SELECT count(*) FROM {name}")).await {
                panic!("query {queries} after CREATE {name}: {e}");
            }
            queries += 1;
        }
        assert!(queries > 0);
    }
}

async fn wait_until(f: impl Fn() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(15), "condition not reached");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ddl_is_refused_and_registers_nothing() {
    let cluster = cluster();
    let t = unique("ddl");
    topic(&cluster, &t, 1).await;
    let catalog = unique("catalog");
    let engine = engine(&cluster, &catalog).await;
    let cases = [
        (create_table_sql("x", &t, ", 'colour' 'red'"), "unknown option 'colour'"),
        (create_table_sql("x", &t, "").replace("'key' 'user_id'", "'key' 'nope'"), "key column 'nope'"),
        (
            create_table_sql("x", &t, "").replace("'event_time' 'event_time'", "'event_time' 'amount'"),
            "must be a TIMESTAMP",
        ),
        (create_table_sql("x", &unique("missing"), ""), "does not exist"),
        (create_table_sql("x", &t, ", 'bad_messages' 'explode'"), "skip, null or fail"),
        (create_table_sql("x", &t, ", 'format' 'avro'"), "not supported yet"),
        ("CREATE EXTERNAL TABLE x (_offset BIGINT) STORED AS KAFKA LOCATION 'x'".to_string(), "reserved"),
    ];
    for (sql, expected) in cases {
        let err = engine.query(&sql).await.expect_err(&sql);
        assert!(err.to_string().contains(expected), "{sql}\n→ {err}");
        assert_eq!(err.sqlstate(), "22023", "{err}");
    }
    assert!(engine.definitions().is_empty());
    let fresh = common::engine(&cluster, &catalog).await;
    assert!(fresh.definitions().is_empty(), "nothing half-registered in the catalog topic");
    let err = engine.query("SELECT * FROM no_such_table").await.expect_err("unknown table");
    assert_eq!(err.sqlstate(), "42P01", "{err}");
    assert_eq!(engine.query("DROP TABLE no_such_table").await.expect_err("drop").sqlstate(), "42P01");
    engine.query("DROP TABLE IF EXISTS no_such_table").await.expect("if exists");
    assert_eq!(engine.query("SELEC 1").await.expect_err("syntax").sqlstate(), "42601");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_brokers_fail_fast_with_a_clear_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener); // nothing listens there now
    let cluster = std::sync::Arc::new(
        KafkaCluster::connect(&format!("127.0.0.1:{port}"), Duration::from_secs(2), vec![]).expect("client"),
    );
    let start = Instant::now();
    let config =
        kfsql::EngineConfig { catalog_topic: "c".into(), query_timeout: Duration::from_secs(3), ..Default::default() };
    let err = kfsql::Engine::start(cluster, config).await.err().expect("no broker");
    assert!(start.elapsed() < Duration::from_secs(10), "took {:?}", start.elapsed());
    assert!(matches!(err, KfsqlError::Kafka(_)), "{err:?}");
    assert!(err.to_string().contains(&format!("127.0.0.1:{port}")), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_into_a_kafka_table_produces_keyed_messages_all_or_nothing() {
    let cluster = common::cluster();
    let engine = common::engine(&cluster, &common::unique("catalog")).await;
    let t = common::unique("ins");
    common::topic(&cluster, &t, 4).await;
    engine.query(&common::create_table_sql("tx", &t, "")).await.expect("create");
    let out = engine
        .query(
            "INSERT INTO tx VALUES ('t1', 'u42', 12.5, 'm7', 'FR', TIMESTAMP '2026-11-20 12:00:00'), \
             ('t2', 'u7', NULL, 'm1', 'DE', TIMESTAMP '2026-11-20 12:05:00.250')",
        )
        .await
        .expect("insert");
    assert_eq!(out[0].2, "INSERT 0 2");
    let rows = common::rows(
        &engine,
        "SELECT txn_id, user_id, amount, merchant, country, event_time, _key FROM tx ORDER BY txn_id",
    )
    .await;
    assert_eq!(
        rows,
        vec![
            vec!["t1", "u42", "12.5", "m7", "FR", "2026-11-20T12:00:00", "u42"],
            vec!["t2", "u7", "NULL", "m1", "DE", "2026-11-20T12:05:00.250", "u7"],
        ]
    );
    // keyed like Java clients: key pushdown finds the rows in the partition their key hashes to
    assert_eq!(common::scalar(&engine, "SELECT txn_id FROM tx WHERE user_id = 'u42'").await, "t1");
    assert!(common::explain(&engine, "SELECT * FROM tx WHERE user_id = 'u42'").await.contains("partitions=1/4"));
    // INSERT … SELECT
    let out = engine
        .query("INSERT INTO tx SELECT txn_id || '-copy', user_id, amount * 2, merchant, country, event_time FROM tx")
        .await
        .expect("insert select");
    assert_eq!(out[0].2, "INSERT 0 2");
    assert_eq!(common::scalar(&engine, "SELECT count(*) FROM tx").await, "4");
    assert_eq!(common::scalar(&engine, "SELECT misrouted FROM kfsql.table_stats WHERE table_name = 'tx'").await, "0");
    // a NOT NULL violation anywhere, or a value of the wrong type, fails the statement with nothing written
    for bad in [
        "INSERT INTO tx VALUES ('t3', 'u1', 1.0, 'm', 'FR', TIMESTAMP '2026-11-20 12:00:00'), ('t4', NULL, 1.0, 'm', 'FR', TIMESTAMP '2026-11-20 12:00:00')",
        "INSERT INTO tx VALUES ('t5', 'u1', 1.0, 'm', 'FR', NULL)",
        "INSERT INTO tx VALUES ('t6', 'u1', 'lots', 'm', 'FR', TIMESTAMP '2026-11-20 12:00:00')",
    ] {
        let err = engine.query(bad).await.expect_err(bad);
        assert!(!err.to_string().is_empty(), "{bad}");
        assert_eq!(common::scalar(&engine, "SELECT count(*) FROM tx").await, "4", "{bad} wrote something: {err}");
    }
    let err = engine
        .query("INSERT INTO tx VALUES ('t7', NULL, 1.0, 'm', 'FR', TIMESTAMP '2026-11-20 12:00:00')")
        .await
        .expect_err("null key");
    assert!(err.to_string().contains("null"), "{err}");
    assert_eq!(err.sqlstate(), "23502", "{err}");
    // INSERT … SELECT of a NULL key is caught by the sink, which names the column
    let err = engine
        .query("INSERT INTO tx SELECT txn_id || '-x', CASE WHEN txn_id = 't1' THEN NULL ELSE user_id END, amount, merchant, country, event_time FROM tx")
        .await
        .expect_err("null key from a query");
    assert_eq!(err.sqlstate(), "23502", "{err}");
    assert_eq!(common::scalar(&engine, "SELECT count(*) FROM tx").await, "4", "nothing written: {err}");
}

/// The embedded default (`cargo run --release`) keeps everything its demo writes: no table lost history to the mock
/// cluster's 5 MiB-per-partition limit, the feature topic holds exactly the windows the same HOP query over the
/// transactions finds (up to what the pipeline has emitted), and the training set finds features for exactly as many
/// labels as the same ASOF join over that query (with the table's 2-hour TTL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_demo_keeps_everything_it_writes() {
    let cluster = std::sync::Arc::new(KafkaCluster::embedded(1, Duration::from_secs(10)).expect("embedded Kafka"));
    let engine = engine(&cluster, "_kfsql_catalog").await;
    demo::load(&engine, &cluster, 20_000, 1_000).await.expect("demo");
    let stats = rows(&engine, "SELECT table_name, history_truncated FROM kfsql.table_stats ORDER BY 1").await;
    let names: Vec<&str> = stats.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(names, ["labels", "transactions", "user_daily_spend", "user_txn_features"]);
    assert!(stats.iter().all(|r| r[1] == "false"), "history lost: {stats:?}");
    let emitted = scalar(&engine, "SELECT emitted_until FROM kfsql.pipelines WHERE name = 'user_txn_features'").await;
    let hop = format!(
        "(SELECT user_id, window_end FROM HOP(transactions, event_time, INTERVAL '5 minutes', INTERVAL '1 hour') \
         GROUP BY user_id, window_end HAVING window_end <= TIMESTAMP '{emitted}')"
    );
    let windows = scalar(&engine, &format!("SELECT count(*) FROM {hop}")).await;
    let written = scalar(&engine, "SELECT count(DISTINCT (user_id, window_end)) FROM user_txn_features").await;
    assert_eq!(written, windows, "windows written up to {emitted}");
    assert!(windows.parse::<u64>().expect("count") > 100_000, "{windows} windows");
    let from_topic = scalar(
        &engine,
        "SELECT count(f.window_end) FROM labels l \
         ASOF JOIN user_txn_features f MATCH_CONDITION (l.event_time >= f.window_end) ON l.user_id = f.user_id",
    )
    .await;
    let from_query = scalar(
        &engine,
        &format!(
            "SELECT count(*) FILTER (WHERE l.event_time - h.window_end <= INTERVAL '2 hours') FROM labels l \
             ASOF JOIN {hop} h MATCH_CONDITION (l.event_time >= h.window_end) ON l.user_id = h.user_id"
        ),
    )
    .await;
    assert_eq!(from_topic, from_query, "labels with features");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_to_parquet_counts_the_rows_it_writes() {
    let cluster = cluster();
    let topic_name = unique("txns");
    topic(&cluster, &topic_name, 3).await;
    let end = Utc.with_ymd_and_hms(2026, 11, 20, 12, 0, 0).single().expect("time");
    let txns = demo::generate(1500, 40, Duration::from_secs(3600), end, 11);
    demo::produce_transactions(cluster.producer(), &topic_name, &txns).await.expect("produce");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = kfsql::EngineConfig {
        catalog_topic: unique("catalog"),
        export_dir: dir.path().to_path_buf(),
        ..Default::default()
    };
    let engine = kfsql::Engine::start(cluster.clone(), config).await.expect("engine");
    engine.query(&create_table_sql("tx", &topic_name, "")).await.expect("create");
    assert_eq!(engine.rows_exported(), 0);
    let out = engine.query("COPY (SELECT * FROM tx WHERE amount > 50) TO 'big.parquet'").await.expect("copy");
    let want: usize = txns.iter().filter(|t| t.amount > 50.0).count();
    assert_eq!(out[0].2, format!("COPY {want}"));
    assert_eq!(engine.rows_exported(), want as u64, "the progress counter counts exactly the rows written");
    engine.query("COPY (SELECT txn_id FROM tx) TO 'ids.parquet'").await.expect("copy");
    assert_eq!(engine.rows_exported(), (want + txns.len()) as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_splits_into_one_independent_partition_per_kafka_partition() {
    use futures::TryStreamExt;
    let (_c, engine, _t, txns) = fraud_table(4, 1200).await;
    let read = |sql: &'static str| {
        let engine = engine.clone();
        async move {
            let stmt = engine.parse(sql).expect("parse").remove(0);
            let plan = engine.plan(stmt).await.expect("plan");
            let planned = engine.plan_partitioned(plan, None).await.expect("partitioned");
            let mut parts = Vec::new();
            // read the partitions last to first: each must stand on its own
            for p in (0..planned.partitions()).rev() {
                let rows = engine.execute_partition(&planned, p, None).await.expect("execute");
                let batches: Vec<_> = rows.try_collect().await.expect("rows");
                parts.push(common::to_text(&batches));
            }
            parts
        }
    };
    let parts = read("SELECT txn_id, _partition FROM tx WHERE amount >= 0").await;
    assert_eq!(parts.len(), 4, "one partition per Kafka partition");
    for p in &parts {
        let kafka: std::collections::BTreeSet<_> = p.iter().map(|r| r[1].clone()).collect();
        assert!(kafka.len() <= 1, "a partition holds one Kafka partition: {kafka:?}");
    }
    let mut all: Vec<String> = parts.iter().flatten().map(|r| r[0].clone()).collect();
    all.sort();
    let mut want: Vec<String> = txns.iter().map(|t| t.txn_id.clone()).collect();
    want.sort();
    assert_eq!(all, want);
    // an aggregate shuffles between partitions: one partition, the whole answer
    let parts = read("SELECT user_id, count(*) FROM tx GROUP BY user_id").await;
    assert_eq!(parts.len(), 1);
    assert_eq!(parts[0].iter().map(|r| r[1].parse::<usize>().expect("n")).sum::<usize>(), txns.len());
}

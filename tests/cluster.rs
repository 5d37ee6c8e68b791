//! What only a real Apache Kafka shows, checked against Kafka's own answers.
//!
//! On the broker under test (KFSQL_TEST_BROKERS, one KRaft node): ListOffsets by timestamp against Kafka's
//! `GetOffsetShell`, LogAppendTime topics, a compacted catalog topic that the log cleaner really compacted, and log
//! start offsets moving under a running scan (DeleteRecords) and by `retention.bytes`.
//!
//! On a 3-node cluster this test starts itself (KFSQL_OWN_KAFKA; replication factor 3, min.insync.replicas 2): the
//! broker leading partitions is killed in the middle of a scan, of a latest view's catch-up, of an
//! `INSERT … SELECT` and of a pipeline's backfill, and each finishes with the answer an undisturbed run gives.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kfsql::kafka::KafkaCluster;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

const TABLE: &str = "(id BIGINT NOT NULL, user_id VARCHAR NOT NULL, v BIGINT NOT NULL, event_time TIMESTAMP NOT NULL)";
/// 2026-11-20T00:00:00Z in ms.
const BASE: i64 = 1_795_132_800_000;

fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).expect("time").naive_utc().format("%Y-%m-%dT%H:%M:%S%.3f").to_string()
}

fn row(id: i64, users: i64, t: i64) -> common::Msg {
    let user = format!("u{}", id % users);
    common::Msg::new(
        &user,
        &format!(r#"{{"id":{id},"user_id":"{user}","v":{},"event_time":"{}"}}"#, id * 7 % 1000, iso(t)),
    )
}

async fn admin_topic(cluster: &KafkaCluster, name: &str, partitions: i32, replication: i32, configs: &[(&str, &str)]) {
    let admin: AdminClient<DefaultClientContext> = cluster.consumer_config().create().expect("admin");
    let mut t = NewTopic::new(name, partitions, TopicReplication::Fixed(replication));
    for (k, v) in configs {
        t = t.set(k, v);
    }
    let res = admin.create_topics([&t], &AdminOptions::new()).await.expect("create topics");
    for r in res {
        r.unwrap_or_else(|(n, e)| panic!("creating {n}: {e}"));
    }
    for _ in 0..100 {
        if cluster.partition_count(name).await.ok() == Some(partitions) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("topic {name} did not appear");
}

async fn declare(engine: &kfsql::Engine, name: &str, topic: &str, extra: &str) {
    common::rows(
        engine,
        &format!(
            "CREATE EXTERNAL TABLE {name} {TABLE} STORED AS KAFKA LOCATION '{topic}' \
             OPTIONS ('key' 'user_id', 'event_time' 'event_time'{extra})"
        ),
    )
    .await;
}

/// Start offsets per partition of the scan EXPLAIN shows (`partitions=n/m [p:[start..end), …]`).
fn planned_starts(explain: &str) -> BTreeMap<i32, (i64, i64)> {
    let Some(at) = explain.find("partitions=") else { return BTreeMap::new() };
    let rest = &explain[at..];
    let (open, close) = (rest.find('[').expect("ranges"), rest.find("], messages").expect("ranges end"));
    rest[open + 1..close]
        .split(", ")
        .filter(|s| !s.is_empty())
        .map(|s| {
            let (p, r) = s.split_once(":[").expect("p:[a..b)");
            let (a, b) = r.trim_end_matches(')').split_once("..").expect("a..b");
            (p.parse().expect("partition"), (a.parse().expect("start"), b.parse().expect("end")))
        })
        .collect()
}

/// Kafka's own answer to ListOffsets for `time` (a timestamp in ms, or -2 for the earliest offsets), per partition:
/// what `GetOffsetShell` prints as `topic:partition:offset` lines.
fn kafka_offsets(cluster: &KafkaCluster, topic: &str, time: &str) -> BTreeMap<i32, i64> {
    common::kafka_tool(
        "org.apache.kafka.tools.GetOffsetShell",
        &["--bootstrap-server", cluster.bootstrap_servers(), "--topic", topic, "--time", time],
    )
    .lines()
    .filter_map(|l| {
        let mut it = l.trim().rsplitn(3, ':');
        let (o, p) = (it.next()?.parse::<i64>().ok()?, it.next()?.parse::<i32>().ok()?);
        Some((p, o))
    })
    .collect()
}

/// ListOffsets by timestamp: the offsets a `_timestamp >= t` scan starts at are Kafka's own answers
/// (`GetOffsetShell --time t`), and "no offset that late" reads nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_for_times_are_kafkas_answers() {
    let Some(cluster) = common::real_cluster() else { return };
    let topic = common::unique("by_time");
    common::topic(&cluster, &topic, 3).await;
    // CreateTime timestamps a second apart, each partition holding every third second
    let msgs = (0..300).map(|i| row(i, 30, BASE + i * 1000).at(BASE + i * 1000).to_partition((i % 3) as i32)).collect();
    common::produce(cluster.producer(), &topic, msgs).await;
    let engine = common::engine(&cluster, &common::unique("_cat_time")).await;
    declare(&engine, "t", &topic, "").await;
    for probe in [BASE - 5000, BASE, BASE + 1000, BASE + 150_500, BASE + 299_000, BASE + 299_001, BASE + 900_000] {
        let kafka = kafka_offsets(&cluster, &topic, &probe.to_string());
        let ts = format!("TIMESTAMP '{}'", iso(probe));
        let plan =
            planned_starts(&common::explain(&engine, &format!("SELECT * FROM t WHERE _timestamp >= {ts}")).await);
        assert_eq!(plan.len(), 3, "every partition planned at {probe}");
        for (p, (start, end)) in &plan {
            // Kafka answers -1 (or nothing) when no message is that late: the scan then reads nothing
            let want = kafka.get(p).copied().filter(|&o| o >= 0).unwrap_or(*end);
            assert_eq!(
                *start,
                want,
                "partition {p} at {}: kfsql starts at {start}, Kafka answers {kafka:?}",
                iso(probe)
            );
        }
        let n = common::scalar(&engine, &format!("SELECT count(*) FROM t WHERE _timestamp >= {ts}")).await;
        let want = (0..300).filter(|i| BASE + i * 1000 >= probe).count();
        assert_eq!(n, want.to_string(), "rows at or after {}", iso(probe));
    }
}

/// A LogAppendTime topic: `_timestamp` is the broker's append time, not what the producer wrote, and time travel and
/// time pushdown follow it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_append_time_topics_use_the_brokers_clock() {
    let Some(cluster) = common::real_cluster() else { return };
    let topic = common::unique("append_time");
    admin_topic(&cluster, &topic, 2, 1, &[("message.timestamp.type", "LogAppendTime")]).await;
    let before = chrono::Utc::now().timestamp_millis();
    tokio::time::sleep(Duration::from_millis(20)).await;
    // the producer claims the year 2001
    let msgs = (0..100).map(|i| row(i, 10, BASE).at(978_307_200_000 + i)).collect();
    common::produce(cluster.producer(), &topic, msgs).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let after = chrono::Utc::now().timestamp_millis();
    let engine = common::engine(&cluster, &common::unique("_cat_lat")).await;
    declare(&engine, "t", &topic, "").await;
    let r = common::rows(
        &engine,
        "SELECT count(*), CAST(min(_timestamp) AS BIGINT) / 1000000, CAST(max(_timestamp) AS BIGINT) / 1000000 FROM t",
    )
    .await;
    let (lo, hi): (i64, i64) = (r[0][1].parse().expect("min"), r[0][2].parse().expect("max"));
    assert_eq!(r[0][0], "100");
    assert!(before <= lo && hi <= after, "append times {lo}..{hi} outside the produce window {before}..{after}");
    let at = |ms: i64| format!("TIMESTAMP '{}'", iso(ms));
    assert_eq!(
        common::scalar(&engine, &format!("SELECT count(*) FROM t FOR SYSTEM_TIME AS OF {}", at(before))).await,
        "0"
    );
    assert_eq!(
        common::scalar(&engine, &format!("SELECT count(*) FROM t FOR SYSTEM_TIME AS OF {}", at(after))).await,
        "100"
    );
    assert_eq!(
        common::scalar(&engine, &format!("SELECT count(*) FROM t WHERE _timestamp >= {}", at(before))).await,
        "100"
    );
    assert_eq!(common::scalar(&engine, &format!("SELECT count(*) FROM t WHERE _timestamp > {}", at(after))).await, "0");
}

/// Messages in a topic as a plain consumer sees them (offset order per partition).
fn raw_messages(cluster: &KafkaCluster, topic: &str) -> Vec<(Option<String>, Option<String>)> {
    let consumer: BaseConsumer = cluster.consumer_config().create().expect("consumer");
    let (low, high) = consumer.fetch_watermarks(topic, 0, Duration::from_secs(10)).expect("watermarks");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(low)).expect("tpl");
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while out.last().map(|(o, _, _)| *o + 1 < high).unwrap_or(low < high) {
        assert!(Instant::now() < deadline, "could not read {topic} to {high}");
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                use rdkafka::Message;
                let text = |b: Option<&[u8]>| b.map(|b| String::from_utf8_lossy(b).into_owned());
                out.push((m.offset(), text(m.key()), text(m.payload())));
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
            _ => {}
        }
    }
    out.into_iter().map(|(_, k, v)| (k, v)).collect()
}

/// The catalog topic is compacted by Kafka's log cleaner: after many versions and drops have been cleaned away
/// (fewer messages left than were written, tombstones gone), a new server loads exactly the current definitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_catalog_loads_the_current_definitions() {
    let Some(cluster) = common::real_cluster() else { return };
    let catalog = common::unique("_cat_compact");
    // kfsql creates its catalog compacted; this one also rolls segments and cleans quickly
    admin_topic(
        &cluster,
        &catalog,
        1,
        1,
        &[
            ("cleanup.policy", "compact"),
            ("segment.ms", "100"),
            ("min.cleanable.dirty.ratio", "0.01"),
            ("delete.retention.ms", "100"),
            ("min.compaction.lag.ms", "0"),
        ],
    )
    .await;
    let topic = common::unique("compact_data");
    common::topic(&cluster, &topic, 1).await;
    common::produce(cluster.producer(), &topic, vec![row(1, 1, BASE)]).await;
    let engine = common::engine(&cluster, &catalog).await;
    for round in 0..5 {
        for name in ["kept", "dropped"] {
            declare(&engine, name, &topic, &format!(", 'ttl' '{} hours'", round + 1)).await;
            tokio::time::sleep(Duration::from_millis(120)).await;
            if round < 4 || name == "dropped" {
                common::rows(&engine, &format!("DROP TABLE {name}")).await;
            }
        }
    }
    drop(engine);
    // keep writing something unrelated so segments roll and the cleaner gets to the old ones
    let deadline = Instant::now() + Duration::from_secs(60);
    let filler = common::engine(&cluster, &catalog).await;
    let cleaned = loop {
        declare(&filler, "filler", &topic, "").await;
        common::rows(&filler, "DROP TABLE filler").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let msgs = raw_messages(&cluster, &catalog);
        let live_kept = msgs.iter().filter(|(k, _)| k.as_deref() == Some("kept")).count();
        let dropped_left = msgs.iter().filter(|(k, _)| k.as_deref() == Some("dropped")).count();
        if live_kept == 1 && dropped_left == 0 {
            break msgs;
        }
        assert!(Instant::now() < deadline, "Kafka's cleaner did not compact {catalog}: {} messages", msgs.len());
    };
    drop(filler);
    let written = cluster.watermarks(&catalog, &[0]).await.expect("watermarks")[0].high;
    assert!((cleaned.len() as i64) < written / 2, "compaction left {} of {written} messages", cleaned.len());
    let fresh = common::engine(&cluster, &catalog).await;
    let tables =
        common::rows(&fresh, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'").await;
    assert_eq!(tables, vec![vec!["kept".to_string()]], "after compaction: {cleaned:?}");
    let ttl = common::scalar(&fresh, "SELECT ttl FROM kfsql.tables WHERE table_name = 'kept'").await;
    assert_eq!(ttl, "5h", "the newest version of 'kept' won");
    assert_eq!(common::scalar(&fresh, "SELECT count(*) FROM kept").await, "1");
}

/// The node leading most of `topic`'s partitions (ties: the lowest partition's leader).
fn busiest_leader(kafka: &common::OwnKafka, cluster: &KafkaCluster, topic: &str, partitions: i32) -> u32 {
    let mut led: BTreeMap<u32, usize> = BTreeMap::new();
    for p in 0..partitions {
        *led.entry(kafka.leader(cluster, topic, p)).or_default() += 1;
    }
    led.into_iter().max_by_key(|(node, n)| (*n, std::cmp::Reverse(*node))).expect("a leader").0
}

/// Poll `f` until it answers Some, or fail after `secs` seconds with `what`.
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    secs: u64,
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what} within {secs} s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A 3-node cluster (replication factor 3, min.insync.replicas 2) loses the broker leading most partitions in the
/// middle of a scan, of a latest view's catch-up, of an `INSERT … SELECT` and of a pipeline's backfill. Each finishes
/// with the answer an undisturbed run gives: every row exactly once, nothing lost, nothing duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_brokers_fail_over_under_reads_writes_and_pipelines() {
    let Some(kafka) = common::OwnKafka::start(3) else { return };
    // small prefetch, so a scan is still fetching when its leader dies
    let extra = vec![("queued.min.messages".to_string(), "500".to_string())];
    let cluster = Arc::new(
        KafkaCluster::connect(&kafka.bootstrap, Duration::from_secs(10), extra).expect("client").with_replication(3),
    );
    let config = kfsql::EngineConfig {
        catalog_topic: "_catalog".into(),
        query_timeout: Duration::from_secs(90),
        ..Default::default()
    };
    let engine = kfsql::Engine::start(cluster.clone(), config).await.expect("engine");
    const N: i64 = 120_000;
    const USERS: i64 = 600;
    let src = "events";
    admin_topic(&cluster, src, 4, 3, &[]).await;
    let msgs = (0..N).map(|i| row(i, USERS, BASE + i * 1000)).collect();
    common::produce(cluster.producer(), src, msgs).await;
    declare(&engine, "events", src, "").await;
    let want_sum: i64 = (0..N).map(|i| i * 7 % 1000).sum();

    // 1. a scan: read one batch, kill the busiest leader, read the rest
    let stmt = engine.parse("SELECT id, v FROM events").expect("parse").remove(0);
    let kfsql::Output::Rows(mut stream) =
        engine.execute(kfsql::Command::classify(stmt).expect("a query")).await.expect("scan starts")
    else {
        panic!("rows")
    };
    let mut ids = std::collections::BTreeSet::new();
    let mut sum = 0i64;
    let mut take = |b: &datafusion::arrow::array::RecordBatch, ids: &mut std::collections::BTreeSet<i64>| {
        use datafusion::arrow::array::{AsArray, types::Int64Type};
        let (id, v) = (b.column(0).as_primitive::<Int64Type>(), b.column(1).as_primitive::<Int64Type>());
        for i in 0..b.num_rows() {
            assert!(ids.insert(id.value(i)), "row {} delivered twice", id.value(i));
            sum += v.value(i);
        }
    };
    take(&stream.next().await.expect("a first batch").expect("first batch"), &mut ids);
    let victim = busiest_leader(&kafka, &cluster, src, 4);
    kafka.kill(victim);
    eprintln!("scan: killed node {victim} after {} rows", ids.len());
    while let Some(b) = stream.next().await {
        match b {
            Ok(b) => take(&b, &mut ids),
            Err(e) => {
                // a failover the scan cannot ride out must be a clear error, never a short answer
                let e = kfsql::KfsqlError::from_datafusion(e);
                panic!("scan failed during failover ({}): {e}", e.sqlstate());
            }
        }
    }
    drop(take);
    assert_eq!(ids.len() as i64, N, "every row once after the failover");
    assert_eq!(sum, want_sum);
    kafka.revive(victim);

    // 2. a latest view's catch-up
    let online = "online";
    admin_topic(&cluster, online, 4, 3, &[]).await;
    let msgs = (0..N).map(|i| row(i, 5_000, BASE + i * 1000)).collect();
    common::produce(cluster.producer(), online, msgs).await;
    declare(&engine, "online", online, ", 'online' 'true'").await;
    let victim = busiest_leader(&kafka, &cluster, online, 4);
    // kfsql.freshness is watched from the kill on: the producer below waits out the failover itself, so by the
    // time it returns most of the staleness may be over
    let worst_staleness = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
    let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = {
        let (engine, worst, watching) = (engine.clone(), worst_staleness.clone(), watching.clone());
        tokio::spawn(async move {
            while watching.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(out) =
                    engine.query("SELECT staleness_ms FROM kfsql.freshness WHERE table_name = 'online'").await
                    && let Some(s) = out.last().and_then(|o| common::to_text(&o.1).first()?.first().cloned())
                {
                    worst.fetch_max(s.parse().unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    kafka.kill(victim);
    eprintln!("latest: killed node {victim} during catch-up");
    let more = (N..N + 20_000).map(|i| row(i, 5_000, BASE + i * 1000)).collect();
    common::produce(cluster.producer(), online, more).await; // acks=all: two replicas are enough
    // newest per key by event time = the highest id per key
    let want_sum: i64 = (N + 20_000 - 5_000..N + 20_000).map(|i| i * 7 % 1000).sum();
    eventually(120, "the latest view converges after the failover", || {
        let (engine, worst) = (&engine, &worst_staleness);
        async move {
            let f = common::rows(
                engine,
                "SELECT ready, lag_messages, staleness_ms FROM kfsql.freshness WHERE table_name = 'online'",
            )
            .await;
            worst.fetch_max(f[0][2].parse().unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
            if f[0][0] != "true" || f[0][1] != "0" {
                return None;
            }
            let r = common::rows(engine, "SELECT count(*), sum(v) FROM latest.online").await;
            (r[0] == vec!["5000".to_string(), want_sum.to_string()]).then_some(())
        }
    })
    .await;
    // the view could not confirm it was current while the partition's leader was being replaced (Kafka notices a
    // dead broker after its 9 s session timeout), and kfsql.freshness said so
    watching.store(false, std::sync::atomic::Ordering::Relaxed);
    watcher.await.expect("freshness watcher");
    let worst = worst_staleness.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("latest: converged; the greatest staleness_ms seen during the failover was {worst}");
    assert!(worst >= 1_000, "kfsql.freshness showed at most {worst} ms of staleness during the failover");
    kafka.revive(victim);

    // 3. INSERT … SELECT while the leader of the target's partitions dies
    let copy = "copy";
    admin_topic(&cluster, copy, 4, 3, &[]).await;
    declare(&engine, "copy", copy, "").await;
    let insert = {
        let engine = engine.clone();
        tokio::spawn(
            async move { engine.query("INSERT INTO copy SELECT id, user_id, v, event_time FROM events").await },
        )
    };
    eventually(60, "the INSERT starts writing", || {
        let cluster = cluster.clone();
        async move {
            let marks = cluster.watermarks(copy, &[0, 1, 2, 3]).await.ok()?;
            (marks.iter().map(|m| m.high).sum::<i64>() > 0).then_some(())
        }
    })
    .await;
    let victim = busiest_leader(&kafka, &cluster, copy, 4);
    kafka.kill(victim);
    eprintln!("insert: killed node {victim} mid-INSERT");
    let out = insert.await.expect("insert task").expect("INSERT rides out the failover");
    assert_eq!(out.last().map(|o| o.2.clone()), Some(format!("INSERT 0 {N}")));
    let r = common::rows(&engine, "SELECT count(*), count(DISTINCT id), sum(v) FROM copy").await;
    let want_sum: i64 = (0..N).map(|i| i * 7 % 1000).sum();
    assert_eq!(r[0], vec![N.to_string(), N.to_string(), want_sum.to_string()], "nothing lost, nothing duplicated");
    kafka.revive(victim);

    // 4. a pipeline backfilling while the leader of its feature topic dies
    common::rows(
        &engine,
        "CREATE MATERIALIZED VIEW hourly WITH (topic = 'hourly', key = 'user_id') AS \
         SELECT user_id, window_end, count(*) AS n, sum(v) AS total \
         FROM TUMBLE(events, event_time, INTERVAL '1 hour') GROUP BY user_id, window_end",
    )
    .await;
    let victim = busiest_leader(&kafka, &cluster, "hourly", 4);
    kafka.kill(victim);
    eprintln!("pipeline: killed node {victim} during the backfill");
    // the last event's hour stays open (nothing later closes it); every earlier hour must be written
    let last_closed = (BASE + (N - 1) * 1000) / 3_600_000 * 3_600_000;
    eventually(180, "the pipeline writes every closed window", || {
        let engine = &engine;
        async move {
            let r = common::rows(
                engine,
                "SELECT CAST(emitted_until AS BIGINT) / 1000000, input_lag FROM kfsql.pipelines WHERE name = 'hourly'",
            )
            .await;
            (r[0][0].parse::<i64>().is_ok_and(|e| e >= last_closed) && r[0][1] == "0").then_some(())
        }
    })
    .await;
    let newest = "SELECT user_id, CAST(window_end AS BIGINT) / 1000000, n, total FROM \
        (SELECT *, row_number() OVER (PARTITION BY user_id, window_end ORDER BY _offset DESC) AS rn FROM hourly) \
        WHERE rn = 1 ORDER BY 1, 2";
    let batch = format!(
        "SELECT user_id, CAST(window_end AS BIGINT) / 1000000, count(*), sum(v) \
         FROM TUMBLE(events, event_time, INTERVAL '1 hour') \
         GROUP BY user_id, window_end HAVING CAST(window_end AS BIGINT) / 1000000 <= {last_closed} ORDER BY 1, 2"
    );
    let (got, want) = (common::rows(&engine, newest).await, common::rows(&engine, &batch).await);
    assert!(want.len() > 10_000, "{} windows", want.len());
    assert_eq!(got.len(), want.len(), "one newest row per (user, window)");
    assert!(got == want, "the feature topic equals the same query over history");
    kafka.revive(victim);
}

/// A pg-wire client that keeps the NOTICEs the server sends.
async fn noticing_client(
    addr: std::net::SocketAddr,
) -> (tokio_postgres::Client, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let conn = format!("host=127.0.0.1 port={} user=kfsql dbname=kfsql", addr.port());
    let (client, mut connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await.expect("connect");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(m) = futures::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match m {
                Ok(tokio_postgres::AsyncMessage::Notice(n)) => {
                    let _ = tx.send(format!("{} {}", n.code().code(), n.message()));
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    (client, rx)
}

/// `retention.bytes` removes a feature topic's oldest segments. kfsql says so everywhere it answers from what is
/// left: `kfsql.table_stats` shows each partition's log start (Kafka's own earliest offsets) and its oldest event,
/// EXPLAIN marks the partitions, a scan and an ASOF join send a NOTICE over pg-wire, and the ASOF join counts the
/// labels that found no feature while features of their partition are gone (equal to an oracle).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removing_history_is_reported_never_silent() {
    let Some(cluster) = common::real_cluster() else { return };
    let feats = common::unique("retained");
    admin_topic(&cluster, &feats, 2, 1, &[("retention.bytes", "1048576"), ("segment.bytes", "1048576")]).await;
    let pad = "x".repeat(400);
    let n = 12_000i64;
    let msgs = (0..n)
        .map(|i| {
            let user = format!("u{}", i % 50);
            common::Msg::new(
                &user,
                &format!(
                    r#"{{"id":{i},"user_id":"{user}","v":{i},"event_time":"{}","pad":"{pad}"}}"#,
                    iso(BASE + i * 1000)
                ),
            )
        })
        .collect();
    common::produce(cluster.producer(), &feats, msgs).await;
    // Kafka deletes whole segments once a partition holds more than retention.bytes (checked every 2 s here)
    let marks = eventually(60, "retention moves both log starts", || {
        let cluster = cluster.clone();
        let feats = feats.clone();
        async move {
            let m = cluster.watermarks(&feats, &[0, 1]).await.ok()?;
            m.iter().all(|w| w.low > 0).then_some(m)
        }
    })
    .await;
    let labels = common::unique("retained_labels");
    common::topic(&cluster, &labels, 2).await;
    let label_msgs = (0..400i64).map(|i| row(i, 50, BASE + i * 30_000)).collect();
    common::produce(cluster.producer(), &labels, label_msgs).await;
    let engine = common::engine(&cluster, &common::unique("_cat_retained")).await;
    declare(&engine, "feats", &feats, "").await;
    declare(&engine, "labels", &labels, "").await;

    // table_stats: Kafka's earliest offsets, and the event time of the first message still held
    let earliest = kafka_offsets(&cluster, &feats, "-2"); // -2: the earliest offsets
    assert_eq!(earliest.len(), 2);
    assert_eq!((earliest[&0], earliest[&1]), (marks[0].low, marks[1].low));
    let stats = common::rows(
        &engine,
        "SELECT history_truncated, log_start_offsets, oldest_event_times FROM kfsql.table_stats WHERE table_name = 'feats'",
    )
    .await;
    assert_eq!(stats[0][0], "true");
    assert_eq!(stats[0][1], format!("[{}, {}]", earliest[&0], earliest[&1]));
    let firsts = common::rows(
        &engine,
        &format!(
            "SELECT event_time FROM feats WHERE (_partition = 0 AND _offset = {}) OR (_partition = 1 AND _offset = {}) \
             ORDER BY _partition",
            earliest[&0], earliest[&1]
        ),
    )
    .await;
    assert_eq!(stats[0][2], format!("[{}, {}]", firsts[0][0], firsts[1][0]));
    let untouched = common::rows(
        &engine,
        "SELECT history_truncated, log_start_offsets FROM kfsql.table_stats WHERE table_name = 'labels'",
    )
    .await;
    assert_eq!(untouched[0], vec!["false".to_string(), "[0, 0]".to_string()]);

    // EXPLAIN marks the partitions; a scan from an explicit later offset is not truncated
    let plan = common::explain(&engine, "SELECT * FROM feats").await;
    assert!(plan.contains(&format!("history_truncated=[0:{}, 1:{}]", earliest[&0], earliest[&1])), "{plan}");
    let plan =
        common::explain(&engine, &format!("SELECT * FROM feats WHERE _partition = 0 AND _offset >= {}", earliest[&0]))
            .await;
    assert!(!plan.contains("history_truncated"), "{plan}");
    let held = marks[0].high - marks[0].low + marks[1].high - marks[1].low;
    assert_eq!(common::scalar(&engine, "SELECT count(*) FROM feats").await, held.to_string());

    // over pg-wire: a NOTICE before the rows of a scan and of an ASOF join
    let (addr, _server) = kfsql::server::start(engine.clone(), "127.0.0.1:0").await.expect("server");
    let (client, mut notices) = noticing_client(addr).await;
    let count: i64 = client.query_one("SELECT count(*) FROM feats", &[]).await.expect("scan").get(0);
    assert_eq!(count, held);
    let notice = notices.recv().await.expect("a notice");
    let want = format!("0 from offset {}, 1 from offset {}", earliest[&0], earliest[&1]);
    assert!(notice.starts_with("01000 ") && notice.contains("\"feats\"") && notice.contains(&want), "{notice}");
    let asof = "SELECT l.id, f.v FROM labels l ASOF JOIN feats f MATCH_CONDITION (l.event_time >= f.event_time) \
                ON l.user_id = f.user_id";
    let joined = client.query(asof, &[]).await.expect("asof");
    assert_eq!(joined.len(), 400, "every label once");
    let notice = notices.recv().await.expect("a notice for the ASOF join");
    assert!(notice.contains("\"feats\"") && notice.contains(&want), "{notice}");
    assert!(notices.try_recv().is_err(), "one notice per truncated table");

    // the labels that found nothing while their user's feature partition lost history: an oracle over what is held
    let held_rows =
        common::rows(&engine, "SELECT user_id, CAST(event_time AS BIGINT) / 1000000, _partition FROM feats").await;
    let mut first_held: BTreeMap<String, i64> = BTreeMap::new();
    for r in &held_rows {
        let t: i64 = r[1].parse().expect("time");
        let e = first_held.entry(r[0].clone()).or_insert(t);
        *e = (*e).min(t);
    }
    let want = (0..400i64)
        .filter(|i| {
            let user = format!("u{}", i % 50);
            first_held.get(&user).is_none_or(|&t| t > BASE + i * 30_000)
        })
        .count();
    assert!(want > 0, "some labels precede the history still held");
    let analyzed = common::rows(&engine, &format!("EXPLAIN ANALYZE {asof}")).await;
    let text: String = analyzed.iter().map(|r| r.join(" ")).collect::<Vec<_>>().join("\n");
    assert!(text.contains(&format!("left_without_history={want}")), "want left_without_history={want} in {text}");
    // the same verdict per row, in the optional column the join fills when the right side carries it
    let per_row = common::rows(
        &engine,
        "SELECT f._history_gone, f.v IS NULL, count(*) FROM labels l \
         ASOF JOIN (SELECT *, CAST(NULL AS BOOLEAN) AS _history_gone FROM feats) f \
         MATCH_CONDITION (l.event_time >= f.event_time) ON l.user_id = f.user_id GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .await;
    let mut expected = vec![vec!["false".to_string(), "false".to_string(), (400 - want).to_string()]];
    expected.push(vec!["true".to_string(), "true".to_string(), want.to_string()]);
    assert_eq!(per_row, expected, "[_history_gone, unmatched, labels]");
}

/// `DeleteRecords` removes offsets a running scan has not read yet: the scan fails with SQLSTATE 72000 ("snapshot
/// too old") instead of jumping past them and answering a short count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_records_under_a_running_scan_fails_it_clearly() {
    let Some(shared) = common::real_cluster() else { return };
    // a consumer that fetches little ahead, so most of the partition is still unread when records are deleted
    let extra =
        [("queued.min.messages", "100"), ("fetch.message.max.bytes", "65536"), ("queued.max.messages.kbytes", "64")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .to_vec();
    let cluster =
        Arc::new(KafkaCluster::connect(shared.bootstrap_servers(), Duration::from_secs(10), extra).expect("client"));
    let topic = common::unique("deleted_under_scan");
    common::topic(&cluster, &topic, 1).await;
    let n = 100_000i64;
    common::produce(cluster.producer(), &topic, (0..n).map(|i| row(i, 10, BASE + i)).collect()).await;
    let engine = common::engine(&cluster, &common::unique("_cat_deleted")).await;
    declare(&engine, "t", &topic, "").await;
    let stmt = engine.parse("SELECT id FROM t").expect("parse").remove(0);
    let kfsql::Output::Rows(mut stream) =
        engine.execute(kfsql::Command::classify(stmt).expect("a query")).await.expect("scan starts")
    else {
        panic!("rows")
    };
    let mut seen = stream.next().await.expect("a batch").expect("first batch").num_rows();
    let admin: AdminClient<DefaultClientContext> = cluster.consumer_config().create().expect("admin");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Offset(90_000)).expect("tpl");
    admin.delete_records(&tpl, &AdminOptions::new()).await.expect("DeleteRecords");
    let err = loop {
        match stream.next().await {
            Some(Ok(b)) => seen += b.num_rows(),
            Some(Err(e)) => break kfsql::KfsqlError::from_datafusion(e),
            None => panic!("the scan answered {seen} of {n} rows as if complete"),
        }
    };
    assert_eq!(err.sqlstate(), "72000", "{err}");
    assert!(err.to_string().contains("no longer in Kafka"), "{err}");
}

//! ASOF JOIN against a brute-force oracle on randomized data: thousands of cases with duplicate times, ties broken by
//! `_offset`, out-of-order arrival, NULL keys and times, empty sides, every operator, and two ASOF joins in one
//! query. Plus TTL on a Kafka table and the fraud example's training set.

mod common;

use std::sync::Arc;

use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone)]
struct Right {
    k: Option<String>,
    k2: i64,
    t: Option<i64>,
    v: i64,
    offset: i64,
}

#[derive(Debug, Clone)]
struct Left {
    id: i64,
    k: Option<String>,
    k2: i64,
    t: Option<i64>,
}

fn key(rng: &mut StdRng) -> Option<String> {
    if rng.random_bool(0.1) { None } else { Some(format!("k{}", rng.random_range(0..4))) }
}

fn time(rng: &mut StdRng) -> Option<i64> {
    if rng.random_bool(0.05) { None } else { Some(rng.random_range(0..12)) }
}

fn right_batch(rows: &[Right]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, true),
        Field::new("k2", DataType::Int64, false),
        Field::new("t", DataType::Int64, true),
        Field::new("v", DataType::Int64, false),
        Field::new("_offset", DataType::Int64, false),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(rows.iter().map(|r| r.k.clone()).collect::<Vec<_>>())),
            Arc::new(Int64Array::from(rows.iter().map(|r| r.k2).collect::<Vec<_>>())),
            Arc::new(Int64Array::from(rows.iter().map(|r| r.t).collect::<Vec<_>>())),
            Arc::new(Int64Array::from(rows.iter().map(|r| r.v).collect::<Vec<_>>())),
            Arc::new(Int64Array::from(rows.iter().map(|r| r.offset).collect::<Vec<_>>())),
        ],
    )
    .expect("batch")
}

fn left_batch(rows: &[Left]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("k", DataType::Utf8, true),
        Field::new("k2", DataType::Int64, false),
        Field::new("t", DataType::Int64, true),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(rows.iter().map(|r| r.id).collect::<Vec<_>>())),
            Arc::new(StringArray::from(rows.iter().map(|r| r.k.clone()).collect::<Vec<_>>())),
            Arc::new(Int64Array::from(rows.iter().map(|r| r.k2).collect::<Vec<_>>())),
            Arc::new(Int64Array::from(rows.iter().map(|r| r.t).collect::<Vec<_>>())),
        ],
    )
    .expect("batch")
}

/// The right row an ASOF join must pick for `l`, by definition (`two_keys`: also on k2).
fn oracle(l: &Left, right: &[Right], op: &str, two_keys: bool) -> Option<i64> {
    let (lk, lt) = (l.k.as_ref()?, l.t?);
    let candidates = right.iter().filter(|r| {
        r.k.as_ref() == Some(lk)
            && (!two_keys || r.k2 == l.k2)
            && r.t.is_some_and(|rt| match op {
                ">=" => lt >= rt,
                ">" => lt > rt,
                "<=" => lt <= rt,
                _ => lt < rt,
            })
    });
    let best = match op {
        ">=" | ">" => candidates.max_by_key(|r| (r.t, r.offset)),
        _ => candidates.max_by_key(|r| (std::cmp::Reverse(r.t), r.offset)),
    };
    best.map(|r| r.v)
}

fn random_right(rng: &mut StdRng, base: i64) -> Vec<Right> {
    let n = if rng.random_bool(0.1) { 0 } else { rng.random_range(1..40) };
    let mut offsets: Vec<i64> = (0..n as i64).collect();
    offsets.shuffle(rng); // arrival order unrelated to event time
    (0..n)
        .map(|i| Right {
            k: key(rng),
            k2: rng.random_range(0..2),
            t: time(rng),
            v: base + i as i64,
            offset: offsets[i],
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asof_join_matches_the_brute_force_oracle() {
    let cluster = common::cluster();
    let engine = common::engine(&cluster, &common::unique("catalog")).await;
    let ctx = engine.context().clone();
    let mut rng = StdRng::seed_from_u64(20261125);
    let ops = [">=", ">", "<=", "<"];
    let cases = 1500;
    for case in 0..cases {
        let n_left = if rng.random_bool(0.05) { 0 } else { rng.random_range(1..30) };
        let left: Vec<Left> = (0..n_left)
            .map(|i| Left { id: i as i64, k: key(&mut rng), k2: rng.random_range(0..2), t: time(&mut rng) })
            .collect();
        let r1 = random_right(&mut rng, 1000);
        let r2 = random_right(&mut rng, 2000);
        for name in ["l", "r1", "r2"] {
            let _ = ctx.deregister_table(name);
        }
        ctx.register_batch("l", left_batch(&left)).expect("l");
        ctx.register_batch("r1", right_batch(&r1)).expect("r1");
        ctx.register_batch("r2", right_batch(&r2)).expect("r2");
        let (op1, op2) = (ops[case % 4], ops[rng.random_range(0..4)]);
        let flip = rng.random_bool(0.5); // write the condition either way round
        let cond1 = if flip { format!("a.t {op1} l.t").replace(op1, mirror(op1)) } else { format!("l.t {op1} a.t") };
        let two_keys = rng.random_bool(0.5); // a second, integer key: the row-format key path
        let on1 = if two_keys { "l.k = a.k AND a.k2 = l.k2" } else { "l.k = a.k" };
        let sql = format!(
            "SELECT l.id, a.v, b.v FROM l ASOF JOIN r1 a MATCH_CONDITION ({cond1}) ON {on1} \
             ASOF JOIN r2 b MATCH_CONDITION (l.t {op2} b.t) ON b.k = l.k ORDER BY l.id"
        );
        let got = common::rows(&engine, &sql).await;
        let want: Vec<Vec<String>> = left
            .iter()
            .map(|l| {
                let show = |v: Option<i64>| v.map_or("NULL".to_string(), |v| v.to_string());
                vec![l.id.to_string(), show(oracle(l, &r1, op1, two_keys)), show(oracle(l, &r2, op2, false))]
            })
            .collect();
        assert_eq!(got, want, "case {case}: {sql}\nleft {left:?}\nr1 {r1:?}\nr2 {r2:?}");
    }
}

fn mirror(op: &str) -> &'static str {
    match op {
        ">=" => "<=",
        ">" => "<",
        "<=" => ">=",
        _ => ">",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_on_a_kafka_table_and_asof_over_subqueries() {
    let cluster = common::cluster();
    let engine = common::engine(&cluster, &common::unique("catalog")).await;
    let t = common::unique("feat");
    common::topic(&cluster, &t, 2).await;
    // features of u1 at 10:00 and 11:00
    common::produce(
        cluster.producer(),
        &t,
        vec![
            common::Msg::new("u1", r#"{"user_id":"u1","score":1,"event_time":"2026-11-20T10:00:00"}"#),
            common::Msg::new("u1", r#"{"user_id":"u1","score":2,"event_time":"2026-11-20T11:00:00"}"#),
        ],
    )
    .await;
    engine
        .query(&format!(
            "CREATE EXTERNAL TABLE feats (user_id VARCHAR NOT NULL, score BIGINT, event_time TIMESTAMP NOT NULL) \
             STORED AS KAFKA LOCATION '{t}' OPTIONS ('key' 'user_id', 'event_time' 'event_time', 'ttl' '30 minutes')"
        ))
        .await
        .expect("create");
    let sql = "SELECT l.ts, f.score FROM (VALUES ('u1', TIMESTAMP '2026-11-20 09:59:00'), ('u1', TIMESTAMP '2026-11-20 10:29:59'), \
               ('u1', TIMESTAMP '2026-11-20 10:30:01'), ('u1', TIMESTAMP '2026-11-20 11:30:00'), ('u1', TIMESTAMP '2026-11-20 11:30:01'), \
               ('u2', TIMESTAMP '2026-11-20 11:00:00')) AS l(user_id, ts) \
               ASOF JOIN feats f MATCH_CONDITION (l.ts >= f.event_time) ON l.user_id = f.user_id ORDER BY l.user_id, l.ts";
    let got: Vec<String> = common::rows(&engine, sql).await.into_iter().map(|r| r[1].clone()).collect();
    assert_eq!(
        got,
        vec!["NULL", "1", "NULL", "2", "NULL", "NULL"],
        "TTL 30 minutes: exactly 30 min old still matches, older does not"
    );
    let plan = common::explain(&engine, sql).await;
    assert!(plan.contains("AsofJoinExec") && plan.contains("ttl=1800s"), "{plan}");
    // the right side can be any relation: a subquery over the Kafka table (no TTL there)
    let sub = sql.replace("ASOF JOIN feats f", "ASOF JOIN (SELECT * FROM feats WHERE score > 0) f");
    let got: Vec<String> = common::rows(&engine, &sub).await.into_iter().map(|r| r[1].clone()).collect();
    assert_eq!(got, vec!["NULL", "1", "1", "2", "2", "NULL"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fraud_training_set_never_sees_the_future() {
    let cluster = common::cluster();
    let engine = common::engine(&cluster, &common::unique("catalog")).await;
    let t = common::unique("txns");
    common::topic(&cluster, &t, 4).await;
    let txns = kfsql::demo::generate(3000, 40, std::time::Duration::from_secs(3600), chrono::Utc::now(), 9);
    kfsql::demo::produce_transactions(cluster.producer(), &t, &txns).await.expect("produce");
    engine.query(&common::create_table_sql("tx", &t, "")).await.expect("create");
    // each transaction as a label, joined with the user's previous transaction (strictly before)
    let sql = "SELECT l.txn_id, p.txn_id, l.event_time, p.event_time FROM tx l \
               ASOF JOIN tx p MATCH_CONDITION (l.event_time > p.event_time) ON l.user_id = p.user_id";
    let rows = common::rows(&engine, sql).await;
    assert_eq!(rows.len(), txns.len());
    let by_id: std::collections::HashMap<&str, &kfsql::demo::Transaction> =
        txns.iter().map(|t| (t.txn_id.as_str(), t)).collect();
    for r in rows {
        let l = by_id[r[0].as_str()];
        let expected = txns
            .iter()
            .filter(|p| p.user_id == l.user_id && p.event_time_ms < l.event_time_ms)
            .max_by_key(|p| p.event_time_ms);
        match expected {
            None => assert_eq!(r[1], "NULL", "{r:?}"),
            Some(p) => {
                let got = by_id[r[1].as_str()];
                assert_eq!(got.event_time_ms, p.event_time_ms, "{r:?}");
                assert!(got.event_time_ms < l.event_time_ms, "a feature from the future leaked: {r:?}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_known_at_excludes_values_that_arrived_later() {
    let cluster = common::cluster();
    let engine = common::engine(&cluster, &common::unique("catalog")).await;
    let t = common::unique("late");
    common::topic(&cluster, &t, 1).await;
    let ms = |h: u32| {
        chrono::NaiveDate::from_ymd_opt(2026, 11, 20)
            .and_then(|d| d.and_hms_opt(h, 0, 0))
            .map(|d| d.and_utc().timestamp_millis())
            .expect("time")
    };
    // score 1 happened at 09:00 and arrived at 09:00; score 2 happened at 10:00 but only arrived at 12:00 (late data)
    common::produce(
        cluster.producer(),
        &t,
        vec![
            common::Msg::new("u1", r#"{"user_id":"u1","score":1,"event_time":"2026-11-20T09:00:00"}"#).at(ms(9)),
            common::Msg::new("u1", r#"{"user_id":"u1","score":2,"event_time":"2026-11-20T10:00:00"}"#).at(ms(12)),
        ],
    )
    .await;
    engine
        .query(&format!(
            "CREATE EXTERNAL TABLE late (user_id VARCHAR NOT NULL, score BIGINT, event_time TIMESTAMP NOT NULL) \
             STORED AS KAFKA LOCATION '{t}' OPTIONS ('key' 'user_id', 'event_time' 'event_time')"
        ))
        .await
        .expect("create");
    let label = "(VALUES ('u1', TIMESTAMP '2026-11-20 11:00:00')) AS l(user_id, ts)";
    let by_event = format!(
        "SELECT f.score FROM {label} ASOF JOIN late f MATCH_CONDITION (l.ts >= f.event_time) ON l.user_id = f.user_id"
    );
    let as_known = format!(
        "SELECT f.score FROM {label} ASOF JOIN late f MATCH_CONDITION (l.ts >= f._timestamp) ON l.user_id = f.user_id"
    );
    assert_eq!(common::scalar(&engine, &by_event).await, "2", "by event time, the 10:00 value was true at 11:00");
    assert_eq!(common::scalar(&engine, &as_known).await, "1", "as known at 11:00, the 10:00 value had not arrived yet");
}

/// Two Kafka tables keyed by user_id on 4 partitions each: the fraud shape of a training set.
struct CoPartitioned {
    engine: kfsql::Engine,
    catalog: String,
    labels: Vec<(i64, String, i64)>,
}

async fn co_partitioned(cluster: &Arc<kfsql::kafka::KafkaCluster>, features: usize, keys: usize) -> CoPartitioned {
    let catalog = common::unique("catalog");
    let engine = common::engine(cluster, &catalog).await;
    let (ft, lt) = (common::unique("pw_feat"), common::unique("pw_label"));
    common::topic(cluster, &ft, 4).await;
    common::topic(cluster, &lt, 4).await;
    let mut rng = StdRng::seed_from_u64(20261128);
    let base =
        chrono::NaiveDate::from_ymd_opt(2026, 11, 20).and_then(|d| d.and_hms_opt(0, 0, 0)).expect("date").and_utc();
    let at = |m: i64| (base + chrono::Duration::minutes(m)).format("%Y-%m-%dT%H:%M:%S").to_string();
    let feats: Vec<common::Msg> = (0..features)
        .map(|i| {
            let (k, m) = (format!("u{}", rng.random_range(0..keys)), rng.random_range(0..300i64));
            let json = format!(r#"{{"user_id":"{k}","v":{i},"m":{m},"event_time":"{}"}}"#, at(m));
            common::Msg::new(&k, &json)
        })
        .collect();
    // some label keys have no features at all
    let labels: Vec<(i64, String, i64)> = (0..features / 5)
        .map(|i| (i as i64, format!("u{}", rng.random_range(0..keys + keys / 10)), rng.random_range(0..300i64)))
        .collect();
    let label_msgs = labels
        .iter()
        .map(|(id, k, m)| {
            common::Msg::new(k, &format!(r#"{{"id":{id},"user_id":"{k}","m":{m},"event_time":"{}"}}"#, at(*m)))
        })
        .collect();
    common::produce(cluster.producer(), &ft, feats).await;
    common::produce(cluster.producer(), &lt, label_msgs).await;
    engine
        .query(&format!(
            "CREATE EXTERNAL TABLE pw_f (user_id VARCHAR NOT NULL, v BIGINT, m BIGINT, event_time TIMESTAMP NOT NULL) \
             STORED AS KAFKA LOCATION '{ft}' OPTIONS ('key' 'user_id', 'event_time' 'event_time'); \
             CREATE EXTERNAL TABLE pw_l (id BIGINT, user_id VARCHAR NOT NULL, m BIGINT, event_time TIMESTAMP NOT NULL) \
             STORED AS KAFKA LOCATION '{lt}' OPTIONS ('key' 'user_id', 'event_time' 'event_time')"
        ))
        .await
        .expect("create");
    CoPartitioned { engine, catalog, labels }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn co_partitioned_kafka_tables_join_partition_wise_and_match_the_oracle() {
    let cluster = common::cluster();
    let t = co_partitioned(&cluster, 3000, 40).await;
    // the feature rows as Kafka holds them, with the offsets and partitions that break ties
    let feats: Vec<(String, i64, i64, i64, i64)> =
        common::rows(&t.engine, "SELECT user_id, v, m, _offset, _partition FROM pw_f")
            .await
            .into_iter()
            .map(|r| {
                (
                    r[0].clone(),
                    r[1].parse().unwrap(),
                    r[2].parse().unwrap(),
                    r[3].parse().unwrap(),
                    r[4].parse().unwrap(),
                )
            })
            .collect();
    assert_eq!(feats.len(), 3000);
    for (right, keep) in [("pw_f", None), ("(SELECT * FROM pw_f WHERE _partition IN (0, 2, 3))", Some(1))] {
        for op in [">=", ">", "<=", "<"] {
            let sql = format!(
                "SELECT l.id, f.v FROM pw_l l ASOF JOIN {right} f \
                 MATCH_CONDITION (l.event_time {op} f.event_time) ON l.user_id = f.user_id ORDER BY l.id"
            );
            let plan = common::explain(&t.engine, &sql).await;
            assert!(plan.contains("partition_wise=[4 Kafka partitions"), "{sql}\n{plan}");
            let got = common::rows(&t.engine, &sql).await;
            let want: Vec<Vec<String>> = t
                .labels
                .iter()
                .map(|(id, k, lm)| {
                    let candidates = feats.iter().filter(|f| {
                        &f.0 == k
                            && keep.is_none_or(|skip| f.4 != skip)
                            && match op {
                                ">=" => *lm >= f.2,
                                ">" => *lm > f.2,
                                "<=" => *lm <= f.2,
                                _ => *lm < f.2,
                            }
                    });
                    let best = match op {
                        ">=" | ">" => candidates.max_by_key(|f| (f.2, f.3, f.4)),
                        _ => candidates.max_by_key(|f| (std::cmp::Reverse(f.2), f.3, f.4)),
                    };
                    vec![id.to_string(), best.map_or("NULL".into(), |f| f.1.to_string())]
                })
                .collect();
            assert_eq!(got, want, "{sql}");
        }
    }
    // a right side that is not keyed the same way is joined globally, with the same answers
    let global = "SELECT l.id, f.v FROM pw_l l ASOF JOIN (SELECT upper(user_id) AS uk, * FROM pw_f) f \
                  MATCH_CONDITION (l.event_time >= f.event_time) ON upper(l.user_id) = f.uk ORDER BY l.id";
    let plan = common::explain(&t.engine, global).await;
    assert!(plan.contains("AsofJoinExec") && !plan.contains("partition_wise"), "{plan}");
    let pw = "SELECT l.id, f.v FROM pw_l l ASOF JOIN pw_f f \
              MATCH_CONDITION (l.event_time >= f.event_time) ON l.user_id = f.user_id ORDER BY l.id";
    assert_eq!(common::rows(&t.engine, global).await, common::rows(&t.engine, pw).await);
}

/// The peak memory of the ASOF join's right-side index(es) while running `sql`, and its answer.
async fn asof_peak(engine: &kfsql::Engine, sql: &str) -> kfsql::Result<(usize, Vec<Vec<String>>)> {
    use datafusion::physical_plan::ExecutionPlan;
    let stmt = engine.parse(sql)?.remove(0);
    let plan = engine.plan(stmt).await?;
    let state = engine.context().state();
    let physical = state.create_physical_plan(&plan).await?;
    let batches = datafusion::physical_plan::collect(physical.clone(), engine.context().task_ctx()).await?;
    fn find(p: &Arc<dyn ExecutionPlan>) -> Option<usize> {
        if p.name() == "AsofJoinExec" {
            return p.metrics()?.sum_by_name("right_mem_peak").map(|v| v.as_usize());
        }
        p.children().into_iter().find_map(find)
    }
    Ok((find(&physical).expect("an AsofJoinExec with metrics"), common::to_text(&batches)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_wise_join_holds_one_partition_of_the_right_side() {
    let cluster = common::cluster();
    let t = co_partitioned(&cluster, 20_000, 400).await;
    let pw = "SELECT count(*), count(f.v), sum(f.v) FROM pw_l l ASOF JOIN pw_f f \
              MATCH_CONDITION (l.event_time >= f.event_time) ON l.user_id = f.user_id";
    // the same join with keys the planner cannot prove co-partitioned: the whole right side at once
    let global = "SELECT count(*), count(f.v), sum(f.v) FROM pw_l l ASOF JOIN (SELECT upper(user_id) AS uk, * FROM pw_f) f \
                  MATCH_CONDITION (l.event_time >= f.event_time) ON upper(l.user_id) = f.uk";
    let (pw_peak, pw_answer) = asof_peak(&t.engine, pw).await.expect("partition-wise");
    let (global_peak, global_answer) = asof_peak(&t.engine, global).await.expect("global");
    assert_eq!(pw_answer, global_answer);
    eprintln!("right side peak: partition-wise {pw_peak} B, whole {global_peak} B");
    assert!(pw_peak * 2 < global_peak, "partition-wise peak {pw_peak} B vs whole right side {global_peak} B");
    // under a memory limit between the two, only the partition-wise join fits
    let limit = (pw_peak + global_peak) / 2;
    let config = kfsql::EngineConfig {
        catalog_topic: t.catalog.clone(),
        memory_limit: Some(limit),
        query_timeout: std::time::Duration::from_secs(30),
        ..Default::default()
    };
    let limited = kfsql::Engine::start(cluster.clone(), config).await.expect("engine");
    assert_eq!(common::rows(&limited, pw).await, pw_answer, "partition-wise within {limit} B");
    let err = limited.query(global).await.expect_err("the whole right side does not fit");
    assert_eq!(err.sqlstate(), "53200", "{err}");
}

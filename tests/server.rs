//! The pg-wire server with a real Postgres client library (tokio-postgres): extended protocol with typed
//! parameters and binary results, session statements, a client that vanishes mid-query, a CancelRequest, and a broker outage
//! (with KFSQL_OWN_KAFKA: an Apache Kafka broker is killed and restarted under a live server).

mod common;

use std::time::{Duration, Instant};

use chrono::NaiveDateTime;
use tokio_postgres::{Client, NoTls};

async fn connect(addr: std::net::SocketAddr) -> Client {
    let (client, conn) =
        tokio_postgres::connect(&format!("host={} port={} user=kfsql dbname=kfsql", addr.ip(), addr.port()), NoTls)
            .await
            .expect("connect");
    tokio::spawn(conn);
    client
}

async fn demo_server(transactions: usize) -> std::net::SocketAddr {
    let cluster = common::cluster();
    let engine = common::engine(&cluster, &common::unique("catalog")).await;
    let t = common::unique("txns");
    common::topic(&cluster, &t, 4).await;
    let end = chrono::Utc::now();
    let txns = kfsql::demo::generate(transactions, 100, Duration::from_secs(3600), end, 3);
    kfsql::demo::produce_transactions(cluster.producer(), &t, &txns).await.expect("produce");
    engine.query(&common::create_table_sql("tx", &t, "")).await.expect("create");
    let (addr, _task) = kfsql::server::start(engine, "127.0.0.1:0").await.expect("server");
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_with_parameters_and_binary_results() {
    let addr = demo_server(2000).await;
    let client = connect(addr).await;
    // tokio-postgres prepares (Parse/Describe) and binds typed parameters, and reads results in binary.
    let stmt = client
        .prepare("SELECT txn_id, amount, event_time, _partition, _offset FROM tx WHERE user_id = $1 ORDER BY _offset")
        .await
        .expect("prepare");
    let all = client.query("SELECT count(*) FROM tx WHERE user_id = 'u5'", &[]).await.expect("count");
    let expected: i64 = all[0].get(0);
    for _ in 0..3 {
        let rows = client.query(&stmt, &[&"u5"]).await.expect("execute");
        assert_eq!(rows.len() as i64, expected);
        for r in &rows {
            let _id: &str = r.get(0);
            let amount: Option<f64> = r.get(1);
            assert!(amount.is_some());
            let _t: NaiveDateTime = r.get(2);
            let _p: i32 = r.get(3);
            let _o: i64 = r.get(4);
        }
    }
    let n: i64 =
        client.query_one("SELECT count(*) FROM tx WHERE _offset < $1", &[&10i64]).await.expect("int param").get(0);
    assert!(n > 0 && n <= 40, "{n}");
    // session statements clients send
    client
        .batch_execute("SET application_name = 'kfsql-test'; SET extra_float_digits = 3; BEGIN; COMMIT")
        .await
        .expect("session");
    let v = client.simple_query("SHOW application_name").await.expect("show");
    let row = v.iter().find_map(|m| {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m { Some(r.get(0).map(String::from)) } else { None }
    });
    assert_eq!(row.flatten().as_deref(), Some("kfsql-test"));
    // an error leaves the connection usable
    let err = client.query("SELECT * FROM missing_table", &[]).await.expect_err("missing");
    assert_eq!(err.code().map(|c| c.code()), Some("42P01"));
    let one: i64 = client.query_one("SELECT 1::bigint", &[]).await.expect("after error").get(0);
    assert_eq!(one, 1);
}

/// Send a simple query over a raw socket, read until the first data row, then vanish.
async fn query_and_vanish(addr: std::net::SocketAddr, sql: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut startup = Vec::new();
    startup.extend_from_slice(&196608i32.to_be_bytes());
    for kv in ["user", "kfsql", "database", "kfsql"] {
        startup.extend_from_slice(kv.as_bytes());
        startup.push(0);
    }
    startup.push(0);
    let mut msg = ((startup.len() + 4) as i32).to_be_bytes().to_vec();
    msg.extend_from_slice(&startup);
    sock.write_all(&msg).await.expect("startup");
    // wait for ReadyForQuery ('Z')
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.contains(&b'Z') {
        let n = sock.read(&mut buf).await.expect("read");
        assert!(n > 0, "server closed during startup");
        seen.extend_from_slice(&buf[..n]);
    }
    let mut q = vec![b'Q'];
    q.extend_from_slice(&((sql.len() + 5) as i32).to_be_bytes());
    q.extend_from_slice(sql.as_bytes());
    q.push(0);
    sock.write_all(&q).await.expect("query");
    // read until a DataRow ('D') shows up, then drop the socket without reading the rest
    let mut got = Vec::new();
    while !got.contains(&b'D') {
        let n = sock.read(&mut buf).await.expect("read");
        assert!(n > 0, "server closed before rows");
        got.extend_from_slice(&buf[..n]);
    }
}

async fn messages_read(c: &Client) -> i64 {
    let v: String = c
        .query_one("SELECT CAST(messages AS VARCHAR) FROM kfsql.table_stats WHERE table_name = 'tx'", &[])
        .await
        .expect("stats")
        .get(0);
    v.parse().expect("number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_vanishing_mid_query_stops_its_scan() {
    let cluster = common::cluster();
    let engine = common::engine(&cluster, &common::unique("catalog")).await;
    let t = common::unique("big");
    // 4 partitions of 30 000: the embedded mock keeps only the newest 5 MiB of each partition.
    common::topic(&cluster, &t, 4).await;
    let total = 120_000;
    let txns = kfsql::demo::generate(total, 1000, Duration::from_secs(3600), chrono::Utc::now(), 5);
    kfsql::demo::produce_transactions(cluster.producer(), &t, &txns).await.expect("produce");
    engine.query(&common::create_table_sql("tx", &t, "")).await.expect("create");
    let (addr, _task) = kfsql::server::start(engine, "127.0.0.1:0").await.expect("server");
    query_and_vanish(addr, "SELECT * FROM tx").await;
    let client = connect(addr).await;
    // The abandoned query stops reading: its readers end when the server drops its stream.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let first = messages_read(&client).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let second = messages_read(&client).await;
    assert_eq!(first, second, "the abandoned scan is still reading");
    assert!(
        first < total as i64,
        "the abandoned scan read all {total} messages although its client left after the first row"
    );
    // the server still serves
    let n: i64 = client.query_one("SELECT count(*) FROM tx", &[]).await.expect("still serving").get(0);
    assert_eq!(n, total as i64);
}

/// Starts its own Apache Kafka (KFSQL_OWN_KAFKA, set by scripts/test.sh) to take down and bring back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_gives_errors_within_the_timeout_and_the_server_recovers() {
    let Some(kafka) = common::OwnKafka::start(1) else { return };
    let cluster = std::sync::Arc::new(
        kfsql::kafka::KafkaCluster::connect(&kafka.bootstrap, Duration::from_secs(2), vec![]).expect("client"),
    );
    common::topic(&cluster, "outage", 2).await;
    let msgs = (0..100).map(|i| common::Msg::new(&format!("k{i}"), &format!(r#"{{"k":"k{i}","v":{i}}}"#))).collect();
    common::produce(cluster.producer(), "outage", msgs).await;
    let config = kfsql::EngineConfig {
        catalog_topic: "_catalog".into(),
        query_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    let engine = kfsql::Engine::start(cluster.clone(), config).await.expect("engine");
    engine.query("CREATE EXTERNAL TABLE o (k VARCHAR NOT NULL, v BIGINT) STORED AS KAFKA LOCATION 'outage' OPTIONS ('key' 'k')").await.expect("create");
    let (addr, _task) = kfsql::server::start(engine, "127.0.0.1:0").await.expect("server");
    let client = connect(addr).await;
    let n: i64 = client.query_one("SELECT count(*) FROM o", &[]).await.expect("before").get(0);
    assert_eq!(n, 100);

    kafka.kill(1);
    let start = Instant::now();
    let err = client.query_one("SELECT count(*) FROM o", &[]).await.expect_err("broker is down");
    let took = start.elapsed();
    assert!(took < Duration::from_secs(9), "error after {took:?}, past the 5 s query timeout");
    let code = err.code().map(|c| c.code().to_string()).unwrap_or_default();
    assert!(code == "08006" || code == "57014", "{err:?}");
    // the server keeps serving what does not need the broker
    let one: i64 = client.query_one("SELECT 1::bigint", &[]).await.expect("still serving").get(0);
    assert_eq!(one, 1);

    kafka.revive(1);
    let start = Instant::now();
    loop {
        match client.query_one("SELECT count(*) FROM o", &[]).await {
            Ok(r) => {
                assert_eq!(r.get::<_, i64>(0), 100, "the data survived the restart");
                break;
            }
            Err(e) => assert!(start.elapsed() < Duration::from_secs(30), "no recovery: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_types_in_binary_and_text() {
    let addr = demo_server(10).await;
    let client = connect(addr).await;
    // binary (tokio-postgres' extended protocol reads results in binary)
    let r = client
        .query_one(
            "SELECT 1::smallint, 2::int, 3::bigint, 1.5::real, 2.25::double precision, 'x'::varchar, true, \
             DATE '2026-01-02', TIMESTAMP '2026-11-20 12:00:00.5', E'\\\\x0102'::bytea",
            &[],
        )
        .await
        .expect("binary row");
    assert_eq!(r.get::<_, i16>(0), 1);
    assert_eq!(r.get::<_, i32>(1), 2);
    assert_eq!(r.get::<_, i64>(2), 3);
    assert_eq!(r.get::<_, f32>(3), 1.5);
    assert_eq!(r.get::<_, f64>(4), 2.25);
    assert_eq!(r.get::<_, &str>(5), "x");
    assert!(r.get::<_, bool>(6));
    assert_eq!(r.get::<_, chrono::NaiveDate>(7), chrono::NaiveDate::from_ymd_opt(2026, 1, 2).expect("date"));
    assert_eq!(r.get::<_, NaiveDateTime>(8).to_string(), "2026-11-20 12:00:00.500");
    let tz: chrono::DateTime<chrono::Utc> = client
        .query_one("SELECT arrow_cast(TIMESTAMP '2026-11-20 11:00:00', 'Timestamp(ns, \"+00:00\")')", &[])
        .await
        .expect("tz")
        .get(0);
    assert_eq!(tz.to_rfc3339(), "2026-11-20T11:00:00+00:00");
    // text (simple protocol), including the types without a convenient binary reader here
    let msgs = client
        .simple_query(
            "SELECT 12.34::numeric(10,2), INTERVAL '1 hour 30 minutes', true, 2.5::double precision, NULL::int",
        )
        .await
        .expect("text row");
    let row = msgs
        .iter()
        .find_map(|m| if let tokio_postgres::SimpleQueryMessage::Row(r) = m { Some(r) } else { None })
        .expect("row");
    assert_eq!(row.get(0), Some("12.34"));
    assert_eq!(row.get(1), Some("01:30:00"));
    assert_eq!(row.get(2), Some("t"));
    assert_eq!(row.get(3), Some("2.5"));
    assert_eq!(row.get(4), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_request_stops_a_statement_whose_rows_are_running() {
    let addr = demo_server(1000).await;
    let client = connect(addr).await;
    let token = client.cancel_token();
    let start = Instant::now();
    // planned at once; the cross join runs while pgwire streams its (one) row
    let running = tokio::spawn(async move {
        client
            .simple_query("SELECT count(*) FROM tx a, tx b, tx c")
            .await
            .map(|_| ())
            .map_err(|e| (e.code().map(|c| c.code().to_string()), e.as_db_error().map(|d| d.message().to_string())))
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    token.cancel_query(NoTls).await.expect("CancelRequest sent");
    let outcome =
        tokio::time::timeout(Duration::from_secs(20), running).await.expect("the statement stops").expect("task");
    let (code, message) = outcome.expect_err("a cancelled statement is an error");
    assert_eq!(code.as_deref(), Some("57014"));
    assert_eq!(message.as_deref(), Some("canceling statement due to user request"));
    assert!(start.elapsed() < Duration::from_secs(20), "{:?}", start.elapsed());
    // the server goes on serving
    let again = connect(addr).await;
    let n: i64 = again.query_one("SELECT count(*) FROM tx", &[]).await.expect("count").get(0);
    assert_eq!(n, 1000);
}

/// Backend messages in `bytes` (type, body), as far as they are complete.
fn backend_messages(bytes: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 5 <= bytes.len() {
        let len = u32::from_be_bytes([bytes[at + 1], bytes[at + 2], bytes[at + 3], bytes[at + 4]]) as usize;
        if at + 1 + len > bytes.len() {
            break;
        }
        out.push((bytes[at], &bytes[at + 5..at + 1 + len]));
        at += 1 + len;
    }
    out
}

/// A raw connection past its startup (ReadyForQuery seen).
async fn raw_session(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut raw = tokio::net::TcpStream::connect(addr).await.expect("raw");
    let mut body = vec![0, 3, 0, 0];
    body.extend_from_slice(b"user\0kfsql\0database\0kfsql\0\0");
    let mut startup = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    startup.extend(body);
    raw.write_all(&startup).await.expect("startup");
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 8192];
    while !backend_messages(&seen).iter().any(|(t, _)| *t == b'Z') {
        let n = tokio::time::timeout(Duration::from_secs(10), raw.read(&mut buf))
            .await
            .expect("startup answer")
            .expect("read");
        assert!(n > 0, "closed during startup");
        seen.extend_from_slice(&buf[..n]);
    }
    raw
}

/// Everything the server sends until it closes the connection (at most 10 s).
async fn until_closed(raw: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let (mut answer, mut buf) = (Vec::new(), vec![0u8; 8192]);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), raw.read(&mut buf)).await.expect("the server closes") {
            Ok(0) | Err(_) => return answer,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
}

/// Frontend messages whose bodies do not hold what their type requires (a Bind cut inside its parameter count, a
/// parameter longer than the message, a length below 4) are answered with a FATAL 08P01 ErrorResponse, then the
/// connection closes; nothing panics and everyone else is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_answered_with_08p01() {
    use tokio::io::AsyncWriteExt;
    let addr = demo_server(10).await;
    let cases: [&[u8]; 3] = [
        &[b'B', 0, 0, 0, 7, 0, 0, 0xff],
        &[b'B', 0, 0, 0, 16, 0, 0, 0, 0, 0, 1, 0x7f, 0xff, 0xff, 0xff, b'x', b'y'],
        &[b'P', 0, 0, 0, 2, b'S'],
    ];
    for case in cases {
        let mut raw = raw_session(addr).await;
        raw.write_all(case).await.expect("malformed");
        let answer = until_closed(&mut raw).await;
        let messages = backend_messages(&answer);
        let fatal_08p01 =
            |body: &[u8]| body.windows(5).any(|w| w == b"08P01") && body.windows(5).any(|w| w == b"FATAL");
        assert!(matches!(messages.as_slice(), [(b'E', body)] if fatal_08p01(body)), "{case:?}: {messages:?}");
    }
    let other = connect(addr).await;
    let n: i64 = other.query_one("SELECT count(*) FROM tx", &[]).await.expect("count").get(0);
    assert_eq!(n, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_message_ends_that_connection_only() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = demo_server(10).await;
    let mut raw = raw_session(addr).await;
    let mut buf = vec![0u8; 8192];
    // a Query claiming 2 GiB, past what any message may hold
    raw.write_all(&[b'Q', 0x7f, 0xff, 0xff, 0xf0, b'S', b'E']).await.expect("oversize header");
    let mut answer = Vec::new();
    let start = Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), raw.read(&mut buf))
            .await
            .expect("the server answers, not waits for 2 GiB")
        {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    assert!(start.elapsed() < Duration::from_secs(10));
    let messages = backend_messages(&answer);
    assert!(messages.iter().all(|(t, _)| *t == b'E'), "only an error, then the end: {messages:?}");
    // everyone else is served
    let other = connect(addr).await;
    let n: i64 = other.query_one("SELECT count(*) FROM tx", &[]).await.expect("count").get(0);
    assert_eq!(n, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_past_the_timeout_are_cancelled_with_57014() {
    let cluster = common::cluster();
    let t = common::unique("slow");
    common::topic(&cluster, &t, 1).await;
    let txns = kfsql::demo::generate(3000, 10, Duration::from_secs(60), chrono::Utc::now(), 1);
    kfsql::demo::produce_transactions(cluster.producer(), &t, &txns).await.expect("produce");
    let config = kfsql::EngineConfig {
        catalog_topic: common::unique("catalog"),
        query_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let engine = kfsql::Engine::start(cluster, config).await.expect("engine");
    engine.query(&common::create_table_sql("tx", &t, "")).await.expect("create");
    let start = Instant::now();
    let err = engine.query("SELECT count(*) FROM tx a, tx b, tx c").await.expect_err("too slow");
    assert_eq!(err.sqlstate(), "57014", "{err}");
    assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());
    // The engine serves again once the runaway is aborted. Each try has the same 1 s limit, which a broker busy with
    // other tests can exceed once or twice; a runaway still holding the query runtime would fail every try.
    let mut tries = 0;
    loop {
        match engine.query("SELECT count(*) FROM tx").await {
            Ok(out) => {
                assert_eq!(common::to_text(&out[0].1), vec![vec!["3000".to_string()]]);
                break;
            }
            Err(e) => {
                tries += 1;
                assert!(tries < 10, "the engine did not recover from the timed-out query: {e}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_passwords_and_a_read_only_role() {
    let cluster = common::cluster();
    let engine = common::engine(&cluster, &common::unique("catalog")).await;
    let t = common::unique("auth");
    common::topic(&cluster, &t, 2).await;
    engine.query(&common::create_table_sql("tx", &t, "")).await.expect("create");
    let users = kfsql::server::auth::Users::parse("alice:s3cret, bob:pw:readonly").expect("users");
    let security = kfsql::server::auth::Security { users: Some(std::sync::Arc::new(users)), ..Default::default() };
    let (addr, _task) = kfsql::server::start_with(engine, "127.0.0.1:0", security).await.expect("server");
    let login = |user: &str, password: &str| {
        format!("host={} port={} user={user} password={password} dbname=kfsql", addr.ip(), addr.port())
    };
    let refused = |r: Result<(Client, tokio_postgres::Connection<_, _>), tokio_postgres::Error>| match r {
        Ok(_) => panic!("logged in without the right password"),
        Err(e) => e.code().map(|c| c.code().to_string()).unwrap_or_else(|| e.to_string()),
    };
    assert_eq!(refused(tokio_postgres::connect(&login("alice", "wrong"), NoTls).await), "28P01");
    assert_eq!(refused(tokio_postgres::connect(&login("mallory", "s3cret"), NoTls).await), "28P01");
    // garbage instead of a startup message: that connection fails, the server goes on
    {
        use tokio::io::AsyncWriteExt;
        let mut raw = tokio::net::TcpStream::connect(addr).await.expect("raw");
        let _ = raw.write_all(&[0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]).await;
    }
    let (alice, conn) = tokio_postgres::connect(&login("alice", "s3cret"), NoTls).await.expect("alice logs in");
    tokio::spawn(conn);
    let out = alice
        .simple_query("INSERT INTO tx VALUES ('t1', 'u1', 1.5, 'm', 'FR', TIMESTAMP '2026-11-20 12:00:00')")
        .await
        .expect("alice may write");
    assert!(matches!(out.last(), Some(tokio_postgres::SimpleQueryMessage::CommandComplete(1))), "{out:?}");
    let (bob, conn) = tokio_postgres::connect(&login("bob", "pw"), NoTls).await.expect("bob logs in");
    tokio::spawn(conn);
    let n: i64 = bob.query_one("SELECT count(*) FROM tx", &[]).await.expect("bob may read").get(0);
    assert_eq!(n, 1);
    bob.simple_query("EXPLAIN SELECT * FROM tx").await.expect("bob may explain");
    for write in [
        "INSERT INTO tx VALUES ('t2', 'u1', 1.5, 'm', 'FR', TIMESTAMP '2026-11-20 12:00:00')",
        "CREATE EXTERNAL TABLE t2 (a BIGINT) STORED AS KAFKA LOCATION 'x'",
        "DROP TABLE tx",
        "COPY (SELECT * FROM tx) TO 'out.csv'",
        "EXPLAIN ANALYZE INSERT INTO tx VALUES ('t3', 'u1', 1.5, 'm', 'FR', TIMESTAMP '2026-11-20 12:00:00')",
    ] {
        let err = bob.simple_query(write).await.expect_err(write);
        assert_eq!(err.code().map(|c| c.code()), Some("42501"), "{write}: {err:?}");
    }
    let n: i64 = alice.query_one("SELECT count(*) FROM tx", &[]).await.expect("count").get(0);
    assert_eq!(n, 1, "bob's writes were refused before doing anything");
}

/// A placeholder number a client writes sizes the statement's parameter slots: past the 65 535 a Bind can carry it
/// is refused (42P02) at Parse, and the server keeps serving, rather than allocating gigabytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placeholder_numbers_past_the_protocol_limit_are_refused() {
    let addr = demo_server(10).await;
    let client = connect(addr).await;
    let err = client.prepare("SELECT $2000000000::int").await.expect_err("refused");
    assert_eq!(err.code().map(|c| c.code()), Some("42P02"), "{err:?}");
    let err = client.prepare("SELECT $65536::int").await.expect_err("refused");
    assert_eq!(err.code().map(|c| c.code()), Some("42P02"), "{err:?}");
    let ok = client.prepare("SELECT $3::int AS c").await.expect("three parameters are fine");
    assert_eq!(ok.params().len(), 3);
    let one: i64 = client.query_one("SELECT count(*) FROM tx", &[]).await.expect("still serving").get(0);
    assert_eq!(one, 10);
}

/// Settings, cursors and their limits belong to one connection: one client's `statement_timeout` cancels its own
/// runaway (57014) while another's is untouched, no client changes the engine's shared settings, and a cursor is
/// neither visible from another connection nor left behind when its connection goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_own_their_settings_and_cursors() {
    let addr = demo_server(300).await;
    let (a, b) = (connect(addr).await, connect(addr).await);
    let code = |e: tokio_postgres::Error| e.code().map(|c| c.code().to_string()).unwrap_or_else(|| format!("{e}"));

    a.batch_execute("SET statement_timeout = '300ms'").await.expect("set");
    let start = Instant::now();
    let err = a.simple_query("SELECT count(*) FROM tx x, tx y, tx z").await.expect_err("past a's timeout");
    assert_eq!(code(err), "57014");
    assert!(start.elapsed() < Duration::from_secs(10), "{:?}", start.elapsed());
    let shown: String = b.query_one("SHOW statement_timeout", &[]).await.expect("show").get(0);
    assert_eq!(shown, "0", "a's SET is a's alone");
    let n: i64 = b.query_one("SELECT count(*) FROM tx", &[]).await.expect("b runs").get(0);
    assert_eq!(n, 300);

    let err = a.batch_execute("SET datafusion.execution.batch_size = 1").await.expect_err("server setting");
    assert_eq!(code(err), "42501");

    a.batch_execute("BEGIN; DECLARE c CURSOR WITH HOLD FOR SELECT user_id FROM tx; COMMIT").await.expect("declare");
    let rows = a.simple_query("FETCH 2 FROM c").await.expect("fetch");
    assert_eq!(rows.iter().filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_))).count(), 2);
    let err = b.simple_query("FETCH 1 FROM c").await.expect_err("a's cursor");
    assert_eq!(code(err), "34000");
    b.batch_execute("BEGIN; DECLARE c CURSOR WITH HOLD FOR SELECT 1; COMMIT").await.expect("b's own c");
    drop(a);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let c = connect(addr).await;
    let err = c.simple_query("FETCH 1 FROM c").await.expect_err("gone with a");
    assert_eq!(code(err), "34000");
    let rows = b.simple_query("FETCH ALL FROM c").await.expect("b's cursor");
    assert_eq!(rows.iter().filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_))).count(), 1);

    // the per-connection limit on open cursors
    let mut declared = 0;
    let err = loop {
        match c.batch_execute(&format!("BEGIN; DECLARE k{declared} CURSOR WITH HOLD FOR SELECT 1; COMMIT")).await {
            Ok(()) => declared += 1,
            Err(e) => break e,
        }
        assert!(declared <= 64, "no limit on cursors");
    };
    assert_eq!((declared, code(err).as_str()), (64, "54000"));
}

/// Past `max_connections`, a new client is refused with FATAL 53300 (PostgreSQL's "too many clients") and the
/// connected ones are untouched; a slot freed is a slot usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_refused_with_53300() {
    let cluster = common::cluster();
    let engine = common::engine(&cluster, &common::unique("catalog")).await;
    let security = kfsql::server::auth::Security { max_connections: Some(2), ..Default::default() };
    let (addr, _task) = kfsql::server::start_with(engine, "127.0.0.1:0", security).await.expect("server");
    let (a, b) = (connect(addr).await, connect(addr).await);
    let refused =
        tokio_postgres::connect(&format!("host={} port={} user=kfsql dbname=kfsql", addr.ip(), addr.port()), NoTls)
            .await
            .map(|_| ())
            .expect_err("a third client");
    assert_eq!(refused.code().map(|c| c.code()), Some("53300"), "{refused:?}");
    for c in [&a, &b] {
        let one: i64 = c.query_one("SELECT 1", &[]).await.expect("still served").get(0);
        assert_eq!(one, 1);
    }
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(10);
    let c = loop {
        match tokio_postgres::connect(
            &format!("host={} port={} user=kfsql dbname=kfsql", addr.ip(), addr.port()),
            NoTls,
        )
        .await
        {
            Ok((client, conn)) => {
                tokio::spawn(conn);
                break client;
            }
            Err(e) => {
                assert!(Instant::now() < deadline, "the freed slot was never reusable: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let one: i64 = c.query_one("SELECT 1", &[]).await.expect("served in the freed slot").get(0);
    assert_eq!(one, 1);
}

/// SQL PREPARE / EXECUTE / DEALLOCATE are the connection's own, as in PostgreSQL: another connection neither sees
/// nor collides with them, DISCARD ALL and the connection's end drop them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_prepared_statements_belong_to_their_connection() {
    let addr = demo_server(10).await;
    let (a, b) = (connect(addr).await, connect(addr).await);
    let code = |e: tokio_postgres::Error| e.code().map(|c| c.code().to_string()).unwrap_or_else(|| format!("{e}"));
    let first = |rows: Vec<tokio_postgres::SimpleQueryMessage>| {
        rows.into_iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
    };
    a.batch_execute("PREPARE p AS SELECT count(*) + $1 FROM tx").await.expect("prepare");
    assert_eq!(first(a.simple_query("EXECUTE p(32)").await.expect("execute")).as_deref(), Some("42"));
    assert_eq!(code(b.simple_query("EXECUTE p(1)").await.expect_err("a's statement")), "26000");
    assert_eq!(code(a.simple_query("EXECUTE p(1, 2)").await.expect_err("one parameter, two values")), "42601");
    b.batch_execute("PREPARE p AS SELECT 'b'").await.expect("b's own p");
    assert_eq!(first(b.simple_query("EXECUTE p").await.expect("b's p")).as_deref(), Some("b"));
    assert_eq!(code(a.batch_execute("PREPARE p AS SELECT 1").await.expect_err("taken")), "42P05");
    a.batch_execute("PREPARE typed(BIGINT) AS SELECT $1 * 2").await.expect("typed");
    assert_eq!(first(a.simple_query("EXECUTE typed(-21)").await.expect("execute")).as_deref(), Some("-42"));
    assert_eq!(code(a.simple_query("EXECUTE typed(1, 2)").await.expect_err("two values for one")), "42601");
    a.batch_execute("DEALLOCATE p").await.expect("deallocate");
    assert_eq!(code(a.simple_query("EXECUTE p(1)").await.expect_err("deallocated")), "26000");
    a.batch_execute("DISCARD ALL").await.expect("discard");
    assert_eq!(code(a.simple_query("EXECUTE typed(1)").await.expect_err("discarded")), "26000");
    drop(b);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let c = connect(addr).await;
    assert_eq!(code(c.simple_query("EXECUTE p").await.expect_err("gone with b")), "26000");
}

/// `--statement-workers N` bounds every statement's plan to N partitions (so N tasks on the query runtime), and no
/// client can lift it: the setting is the server's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_workers_bound_each_plan_and_clients_cannot_lift_them() {
    let cluster = common::cluster();
    let t = common::unique("workers");
    common::topic(&cluster, &t, 4).await;
    let config = kfsql::EngineConfig {
        catalog_topic: common::unique("catalog"),
        statement_workers: Some(1),
        ..Default::default()
    };
    let engine = kfsql::Engine::start(cluster, config).await.expect("engine");
    engine.query(&common::create_table_sql("tx", &t, "")).await.expect("create");
    let (addr, _task) = kfsql::server::start(engine, "127.0.0.1:0").await.expect("server");
    let client = connect(addr).await;
    let shown = |rows: Vec<tokio_postgres::SimpleQueryMessage>| {
        rows.into_iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(1).map(str::to_string),
                _ => None,
            })
            .expect("a row")
    };
    let sql = "SHOW datafusion.execution.target_partitions";
    assert_eq!(shown(client.simple_query(sql).await.expect("show")), "1");
    let err = client.simple_query("SET datafusion.execution.target_partitions = 8").await.expect_err("refused");
    assert_eq!(err.code().map(|c| c.code()), Some("42501"), "{err}");
    assert_eq!(shown(client.simple_query(sql).await.expect("show")), "1");
    // a plan over 4 Kafka partitions runs as one partition: no repartitioning for a parallel aggregate
    let plan: Vec<String> = client
        .simple_query("EXPLAIN SELECT user_id, count(*) FROM tx GROUP BY user_id")
        .await
        .expect("explain")
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(1).map(str::to_string),
            _ => None,
        })
        .collect();
    let plan = plan.join("\n");
    assert!(!plan.contains("RepartitionExec"), "{plan}");
}

/// Named statements and portals of the extended protocol are bounded per connection like SQL `PREPARE`d ones:
/// the 1 025th is refused with 54000, the connection goes on, and closing one makes room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_statements_are_bounded_per_connection() {
    let cluster = common::cluster();
    let engine = common::engine(&cluster, &common::unique("catalog")).await;
    let (addr, _task) = kfsql::server::start(engine, "127.0.0.1:0").await.expect("server");
    let client = connect(addr).await;
    let mut kept = Vec::new();
    for i in 0..1024 {
        kept.push(client.prepare(&format!("SELECT {i}")).await.unwrap_or_else(|e| panic!("statement {i}: {e}")));
    }
    let err = client.prepare("SELECT 1024").await.expect_err("one past the limit");
    assert_eq!(err.code().map(|c| c.code()), Some("54000"), "{err}");
    let other = connect(addr).await;
    other.prepare("SELECT 1").await.expect("another connection has its own room");
    kept.truncate(1000); // tokio-postgres closes the dropped ones
    client.simple_query("SELECT 1").await.expect("sync");
    let s = client.prepare("SELECT 1025").await.expect("room again");
    let n: i64 = client.query_one(&s, &[]).await.expect("runs").get(0);
    assert_eq!(n, 1025);
}

/// A frontend message: type byte, length, body.
fn frontend(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![kind];
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// As in PostgreSQL, the answers to Parse, Bind, Describe and Execute are written at the next Sync (or Flush), all in
/// one go: sent without a Sync, nothing comes back; after it, every answer in order. (pgwire flushed after each
/// Describe: pgbench's Bind, Describe, Execute, Sync cost two writes and two client wake-ups per lookup.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_answers_wait_for_sync() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = demo_server(200).await;
    let mut raw = raw_session(addr).await;
    let mut parse = b"s1\0SELECT count(*) AS n FROM tx WHERE amount > $1\0".to_vec();
    parse.extend_from_slice(&0u16.to_be_bytes());
    let mut bind = b"\0s1\0".to_vec();
    bind.extend_from_slice(&0u16.to_be_bytes()); // parameter formats: text
    bind.extend_from_slice(&1u16.to_be_bytes());
    bind.extend_from_slice(&1u32.to_be_bytes());
    bind.extend_from_slice(b"0");
    bind.extend_from_slice(&0u16.to_be_bytes()); // result formats: text
    let mut batch = frontend(b'P', &parse);
    batch.extend(frontend(b'D', b"Ss1\0"));
    batch.extend(frontend(b'B', &bind));
    batch.extend(frontend(b'D', b"P\0"));
    batch.extend(frontend(b'E', &[0, 0, 0, 0, 0]));
    raw.write_all(&batch).await.expect("send");
    let mut buf = vec![0u8; 8192];
    match tokio::time::timeout(Duration::from_millis(500), raw.read(&mut buf)).await {
        Err(_) => {}
        Ok(r) => panic!(
            "answered before Sync: {:?}",
            r.map(|n| backend_messages(&buf[..n]).iter().map(|m| m.0 as char).collect::<String>())
        ),
    }
    raw.write_all(&frontend(b'S', b"")).await.expect("sync");
    let mut seen = Vec::new();
    while !backend_messages(&seen).iter().any(|(t, _)| *t == b'Z') {
        let n = tokio::time::timeout(Duration::from_secs(10), raw.read(&mut buf)).await.expect("answer").expect("read");
        assert!(n > 0, "closed");
        seen.extend_from_slice(&buf[..n]);
    }
    let kinds: String = backend_messages(&seen).iter().map(|(t, _)| *t as char).collect();
    assert_eq!(
        kinds, "1tT2TDCZ",
        "ParseComplete, ParameterDescription, RowDescription, BindComplete, RowDescription, DataRow, CommandComplete, ReadyForQuery"
    );
}

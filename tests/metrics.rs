//! `GET /metrics`: the server's counts (connections, statements by outcome and SQLSTATE) and the system tables'
//! (messages read per table, the memory pool) in Prometheus' text format. Its own test binary, so the process-wide
//! counts are this test's alone.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use tokio_postgres::NoTls;

fn scrape(addr: std::net::SocketAddr) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("metrics listener");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").expect("request");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("response");
    assert!(body.starts_with("HTTP/1.1 200") || body.starts_with("HTTP/1.0 200"), "{body}");
    body
}

/// The value of the sample named exactly `name` (with its labels), if present.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_connections_statements_and_reads() {
    let cluster = common::cluster();
    let engine = common::engine(&cluster, &common::unique("catalog")).await;
    let t = common::unique("txns");
    common::topic(&cluster, &t, 2).await;
    let txns = kfsql::demo::generate(37, 5, Duration::from_secs(600), chrono::Utc::now(), 1);
    kfsql::demo::produce_transactions(cluster.producer(), &t, &txns).await.expect("produce");
    // bad messages, one per reason the payload decoder has: not JSON, no value for a NOT NULL column, an event
    // time outside the table's range
    let bad = [
        "not json",
        r#"{"txn_id":"b2","amount":1.0,"event_time":"2026-01-01T00:00:00Z"}"#,
        r#"{"txn_id":"b3","user_id":"u","amount":1.0,"event_time":"2250-01-01T00:00:00Z"}"#,
    ];
    common::produce(cluster.producer(), &t, bad.iter().map(|p| common::Msg::new("u", p)).collect()).await;
    engine.query(&common::create_table_sql("tx", &t, "")).await.expect("create");
    let metrics = kfsql::server::metrics::serve("127.0.0.1:0", engine.clone()).expect("metrics");
    let (addr, _task) = kfsql::server::start(engine, "127.0.0.1:0").await.expect("server");

    let before = scrape(metrics);
    assert_eq!(sample(&before, "kfsql_connections"), Some(0.0), "{before}");
    let (client, conn) =
        tokio_postgres::connect(&format!("host=127.0.0.1 port={} user=kfsql dbname=kfsql", addr.port()), NoTls)
            .await
            .expect("connect");
    tokio::spawn(conn);
    let n: i64 = client.query_one("SELECT count(*) FROM tx", &[]).await.expect("count").get(0);
    assert_eq!(n, 37, "the bad messages are skipped");
    for _ in 0..3 {
        client.simple_query("SELECT * FROM no_such_table").await.expect_err("42P01");
    }
    client.simple_query("SELECT 1/0").await.expect_err("22012");

    let text = scrape(metrics);
    assert_eq!(sample(&text, "kfsql_connections"), Some(1.0), "{text}");
    assert_eq!(sample(&text, r#"kfsql_statements_total{outcome="error",sqlstate="42P01"}"#), Some(3.0), "{text}");
    assert_eq!(sample(&text, r#"kfsql_statements_total{outcome="error",sqlstate="22012"}"#), Some(1.0), "{text}");
    assert!(sample(&text, r#"kfsql_statements_total{outcome="ok",sqlstate="00000"}"#).is_some_and(|n| n >= 1.0));
    assert_eq!(sample(&text, r#"kfsql_table_messages_total{table="tx"}"#), Some(40.0), "{text}");
    for (reason, n) in [("malformed", 1.0), ("missing_value", 1.0), ("event_time", 1.0), ("key", 0.0)] {
        let name = format!(r#"kfsql_table_bad_messages_total{{table="tx",reason="{reason}"}}"#);
        assert_eq!(sample(&text, &name), Some(n), "{name}: {text}");
    }
    assert!(sample(&text, "kfsql_memory_pool_reserved_bytes").is_some(), "{text}");
    assert!(text.contains("# TYPE kfsql_statement_answer_seconds histogram"), "{text}");
    drop(client);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sample(&scrape(metrics), "kfsql_connections"), Some(0.0));
}

/// Structured logs: the real binary with `--log-format json` writes one JSON object per line, and a statement's
/// failure is logged with its SQLSTATE inside the spans of its connection (`conn`) and statement (`stmt`) — so the
/// lines of two clients can be told apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_name_the_connection_and_the_statement() {
    let log = std::env::temp_dir().join(format!("{}.log", common::unique("kfsql_json_log")));
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kfsql"))
        .args(["serve", "--no-demo", "--log-format", "json", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .env("KFSQL_LOG", "kfsql=debug")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("kfsql starts");
    let (a, b) = (common::connect_when_up(port).await, common::connect_when_up(port).await);
    a.simple_query("SELECT * FROM table_of_client_a").await.expect_err("42P01");
    b.simple_query("SELECT 1/0").await.expect_err("22012");
    b.simple_query("SELECT 1").await.expect("ok");
    drop((a, b));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = child.kill();
    let _ = child.wait();

    let text = std::fs::read_to_string(&log).expect("log");
    let _ = std::fs::remove_file(&log);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {l}")))
        .collect();
    // (conn, stmt, sqlstate) of each failed statement, read from the line's span list
    let span_field = |line: &serde_json::Value, span: &str, field: &str| {
        line["spans"].as_array().and_then(|s| s.iter().find(|s| s["name"] == span)).map(|s| s[field].clone())
    };
    let failed: Vec<(u64, u64, String)> = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "statement failed")
        .map(|l| {
            let conn = span_field(l, "connection", "conn").and_then(|v| v.as_u64()).expect("conn id");
            let stmt = span_field(l, "statement", "stmt").and_then(|v| v.as_u64()).expect("stmt id");
            (conn, stmt, l["fields"]["sqlstate"].as_str().unwrap_or_default().to_string())
        })
        .collect();
    assert_eq!(failed.len(), 2, "{failed:?}\n{text}");
    assert_eq!(failed[0].2, "42P01");
    assert_eq!(failed[1].2, "22012");
    assert_ne!(failed[0].0, failed[1].0, "two clients, two connection ids");
    assert_ne!(failed[0].1, failed[1].1, "two statements, two statement ids");
    let connected =
        lines.iter().filter(|l| l["fields"]["message"] == "connected" && span_field(l, "connection", "peer").is_some());
    assert!(connected.count() >= 2, "each connection logs its peer: {text}");
}

/// A panic in the server's code fails its statement with XX000 (at the statement's start or in the middle of its
/// rows, never as rows that just stop), is counted in `kfsql_panics_total`, and the connection and the server go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_fails_its_statement_loudly_and_is_counted() {
    use datafusion::arrow::datatypes::DataType;
    use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};
    kfsql::server::metrics::Metrics::count_panics();
    let cluster = common::cluster();
    let engine = common::engine(&cluster, &common::unique("catalog")).await;
    // a function that panics on the value 7: a stand-in for a bug anywhere in a statement's code
    let bug = create_udf(
        "explode_on_7",
        vec![DataType::Int64],
        DataType::Int64,
        Volatility::Volatile,
        std::sync::Arc::new(|args: &[ColumnarValue]| {
            let v = args[0].to_array(1)?;
            let v = v.as_any().downcast_ref::<datafusion::arrow::array::Int64Array>().expect("int64");
            assert!(!v.values().contains(&7), "a bug in a statement's code");
            Ok(ColumnarValue::Array(std::sync::Arc::new(v.clone())))
        }),
    );
    engine.context().register_udf(ScalarUDF::from(bug));
    let metrics = kfsql::server::metrics::serve("127.0.0.1:0", engine.clone()).expect("metrics");
    let (addr, _task) = kfsql::server::start(engine, "127.0.0.1:0").await.expect("server");
    let (client, conn) =
        tokio_postgres::connect(&format!("host=127.0.0.1 port={} user=kfsql dbname=kfsql", addr.port()), NoTls)
            .await
            .expect("connect");
    tokio::spawn(conn);
    let before = sample(&scrape(metrics), "kfsql_panics_total").unwrap_or(0.0);
    // rows 1..=8192 go out in batches; the one holding 7 panics after the statement started
    let err = client
        .simple_query("SELECT explode_on_7(x) FROM unnest(range(1, 20000)) AS t(x)")
        .await
        .expect_err("the panic is an error, not a short answer");
    assert_eq!(err.code().map(|c| c.code()), Some("XX000"), "{err}");
    let err = client.query("SELECT explode_on_7(7)", &[]).await.expect_err("XX000");
    assert_eq!(err.code().map(|c| c.code()), Some("XX000"), "{err}");
    let n: i64 = client.query_one("SELECT count(*) FROM unnest(range(1, 100))", &[]).await.expect("served").get(0);
    assert_eq!(n, 99, "the connection goes on");
    let after = sample(&scrape(metrics), "kfsql_panics_total").expect("counted");
    assert!(after >= before + 2.0, "{before} -> {after}");
}

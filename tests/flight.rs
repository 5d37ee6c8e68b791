//! The Arrow Flight SQL endpoint, driven by arrow-flight's own Flight SQL client: results split by Kafka partition
//! and equal to the whole, tickets read once and only by their user, read-only users, prepared statements, and the
//! connection limit.

mod common;

use std::sync::Arc;
use std::time::Duration;

use arrow_flight::sql::client::FlightSqlServiceClient;
use datafusion::arrow::array::{Array, Int64Array};
use datafusion::arrow::record_batch::RecordBatch;
use futures::TryStreamExt;
use kfsql::server::auth::Users;
use kfsql::server::flight::{FlightConfig, start};
use tonic::transport::{Channel, Endpoint};

async fn server(max_connections: Option<usize>) -> (std::net::SocketAddr, usize) {
    let cluster = common::cluster();
    let engine = common::engine(&cluster, &common::unique("catalog")).await;
    let t = common::unique("txns");
    common::topic(&cluster, &t, 4).await;
    let txns = kfsql::demo::generate(1000, 60, Duration::from_secs(3600), chrono::Utc::now(), 5);
    kfsql::demo::produce_transactions(cluster.producer(), &t, &txns).await.expect("produce");
    engine.query(&common::create_table_sql("tx", &t, "")).await.expect("create");
    let users = Arc::new(Users::parse("alice:pw,bob:pw2:readonly").expect("users"));
    let config = FlightConfig { users: Some(users), tls: None, max_connections };
    let (addr, _task) = start(engine, "127.0.0.1:0", config).await.expect("flight");
    (addr, txns.len())
}

async fn client(addr: std::net::SocketAddr, user: &str, password: &str) -> FlightSqlServiceClient<Channel> {
    let channel = Endpoint::from_shared(format!("http://{addr}")).expect("uri").connect().await.expect("connect");
    let mut c = FlightSqlServiceClient::new(channel);
    c.handshake(user, password).await.expect("handshake");
    c
}

async fn read(
    c: &mut FlightSqlServiceClient<Channel>,
    ticket: arrow_flight::Ticket,
) -> Result<Vec<RecordBatch>, String> {
    match c.do_get(ticket).await {
        Ok(stream) => stream.try_collect().await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

fn rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(|b| b.num_rows()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_per_partition_read_once_by_their_user() {
    let (addr, total) = server(None).await;
    let mut alice = client(addr, "alice", "pw").await;
    let info = alice.execute("SELECT txn_id, _partition FROM tx".into(), None).await.expect("execute");
    assert_eq!(info.endpoint.len(), 4, "one endpoint per Kafka partition");
    let tickets: Vec<_> = info.endpoint.iter().map(|e| e.ticket.clone().expect("ticket")).collect();
    // another user cannot read alice's result
    let mut bob = client(addr, "bob", "pw2").await;
    let err = read(&mut bob, tickets[0].clone()).await.expect_err("bob reads alice's ticket");
    assert!(err.contains("no such result"), "{err}");
    let mut seen = 0;
    for t in &tickets {
        let batches = read(&mut alice, t.clone()).await.expect("read");
        seen += rows(&batches);
        let err = read(&mut alice, t.clone()).await.expect_err("a ticket is read once");
        assert!(err.contains("no such result"), "{err}");
    }
    assert_eq!(seen, total, "the endpoints' union is the whole table");
    // rights: bob may query but not drop; a wrong password is refused
    let info = bob.execute("SELECT count(*) AS n FROM tx".into(), None).await.expect("bob queries");
    let batches = read(&mut bob, info.endpoint[0].ticket.clone().expect("ticket")).await.expect("read");
    let n = batches[0].column(0).as_any().downcast_ref::<Int64Array>().expect("count").value(0);
    assert_eq!(n as usize, total);
    let err = bob.execute("DROP TABLE tx".into(), None).await.expect_err("read-only");
    assert!(err.to_string().contains("42501"), "{err}");
    let channel = Endpoint::from_shared(format!("http://{addr}")).expect("uri").connect().await.expect("connect");
    let err = FlightSqlServiceClient::new(channel).handshake("alice", "nope").await.expect_err("wrong password");
    assert!(err.to_string().contains("password authentication failed"), "{err}");
}

/// A cross join whose probe side is a 10-row series emits one 10-row batch per row of the table; sent as they come,
/// each would be one IPC message. They arrive merged into full batches, every row once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_batches_arrive_merged() {
    let (addr, total) = server(None).await;
    let mut alice = client(addr, "alice", "pw").await;
    let sql = "SELECT t.txn_id, g.copy_no FROM tx t CROSS JOIN (SELECT unnest(range(0, 10)) AS copy_no) g";
    let info = alice.execute(sql.into(), None).await.expect("execute");
    let mut batches = Vec::new();
    for e in &info.endpoint {
        batches.extend(read(&mut alice, e.ticket.clone().expect("ticket")).await.expect("read"));
    }
    assert_eq!(rows(&batches), total * 10);
    // at most one partly filled batch per endpoint beyond the full ones
    let most = (total * 10).div_ceil(8192) + info.endpoint.len();
    assert!(batches.len() <= most, "{} batches for {} rows (at most {most})", batches.len(), total * 10);
    let mut pairs: Vec<(String, i64)> = batches
        .iter()
        .flat_map(|b| {
            let ids = datafusion::arrow::compute::cast(b.column(0), &datafusion::arrow::datatypes::DataType::Utf8)
                .expect("ids as text");
            let ids = ids.as_any().downcast_ref::<datafusion::arrow::array::StringArray>().expect("ids");
            let nos = b.column(1).as_any().downcast_ref::<Int64Array>().expect("copy_no");
            (0..b.num_rows()).map(|i| (ids.value(i).to_string(), nos.value(i))).collect::<Vec<_>>()
        })
        .collect();
    pairs.sort();
    pairs.dedup();
    assert_eq!(pairs.len(), total * 10, "every (row, copy) exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_bind_parameters() {
    let (addr, _) = server(None).await;
    let mut alice = client(addr, "alice", "pw").await;
    let mut prepared =
        alice.prepare("SELECT count(*) AS n FROM tx WHERE amount > $1".into(), None).await.expect("prepare");
    let schema = prepared.parameter_schema().expect("parameter schema").clone();
    assert_eq!(schema.fields().len(), 1);
    let mut counts = Vec::new();
    for threshold in [0.0f64, 100.0, 1e12] {
        let value = datafusion::arrow::array::Float64Array::from(vec![threshold]);
        let params = RecordBatch::try_new(
            Arc::new(datafusion::arrow::datatypes::Schema::new(vec![datafusion::arrow::datatypes::Field::new(
                "$1",
                datafusion::arrow::datatypes::DataType::Float64,
                true,
            )])),
            vec![Arc::new(value)],
        )
        .expect("parameters");
        prepared.set_parameters(params).expect("bind");
        let info = prepared.execute().await.expect("execute");
        let batches = read(&mut alice, info.endpoint[0].ticket.clone().expect("ticket")).await.expect("read");
        let col = batches[0].column(0);
        counts.push(col.as_any().downcast_ref::<Int64Array>().expect("count").value(0));
        assert_eq!(col.len(), 1);
    }
    assert!(counts[0] > counts[1] && counts[1] > 0 && counts[2] == 0, "{counts:?}");
    prepared.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_closed() {
    let (addr, _) = server(Some(1)).await;
    let _alice = client(addr, "alice", "pw").await;
    let second = async {
        let channel = Endpoint::from_shared(format!("http://{addr}")).ok()?.connect().await.ok()?;
        FlightSqlServiceClient::new(channel).handshake("alice", "pw").await.ok()
    };
    let got = tokio::time::timeout(Duration::from_secs(10), second).await;
    assert!(!matches!(got, Ok(Some(_))), "a second connection was served past a limit of one");
}

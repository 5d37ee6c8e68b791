//! sqllogictest: every `tests/slt/*.slt` file runs against a live kfsql over the Postgres wire protocol, the way
//! DataFusion, RisingWave and Databend specify SQL behaviour. The server runs in this process on a free port, over
//! the broker under test (Apache Kafka with KFSQL_TEST_BROKERS, else the in-process mock), with the fraud demo loaded.
//! Errors surface as "SQLSTATE <code>: <message>" so files can assert the code.

mod common;

use std::path::PathBuf;

use async_trait::async_trait;
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType, Runner};
use tokio_postgres::{NoTls, SimpleQueryMessage};

#[derive(Debug)]
struct SltError(String);

impl std::fmt::Display for SltError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for SltError {}

struct Pg {
    client: tokio_postgres::Client,
}

#[async_trait]
impl AsyncDB for Pg {
    type Error = SltError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SltError> {
        let msgs = self.client.simple_query(sql).await.map_err(|e| match e.as_db_error() {
            Some(db) => SltError(format!("SQLSTATE {}: {}", db.code().code(), db.message())),
            None => SltError(e.to_string()),
        })?;
        let mut rows = Vec::new();
        let mut columns = None;
        let mut count = 0;
        for m in msgs {
            match m {
                SimpleQueryMessage::RowDescription(cols) => columns = Some(cols.len()),
                SimpleQueryMessage::Row(r) => {
                    columns = Some(r.len());
                    rows.push((0..r.len()).map(|i| r.get(i).unwrap_or("NULL").to_string()).collect());
                }
                SimpleQueryMessage::CommandComplete(n) => count = n,
                _ => {}
            }
        }
        Ok(match columns {
            Some(n) => DBOutput::Rows { types: vec![DefaultColumnType::Any; n], rows },
            None => DBOutput::StatementComplete(count),
        })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "kfsql"
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let failures = rt.block_on(async {
        let cluster = common::cluster();
        let engine = common::engine(&cluster, &common::unique("slt_catalog")).await;
        // The demo topics have fixed names: on a shared broker, only the first run loads them.
        if !cluster.topic_exists("transactions").await.expect("metadata") {
            kfsql::demo::load(&engine, &cluster, 5000, 200).await.expect("demo data");
        } else {
            engine.query(kfsql::demo::TABLES_SQL).await.expect("tables");
        }
        let (addr, _server) = kfsql::server::start(engine, "127.0.0.1:0").await.expect("server");
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/slt");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .expect("tests/slt")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "slt"))
            .collect();
        files.sort();
        let mut failures = Vec::new();
        for file in &files {
            let conn = format!("host={} port={} user=kfsql dbname=kfsql", addr.ip(), addr.port());
            let mut runner = Runner::new(move || {
                let conn = conn.clone();
                async move {
                    let (client, connection) =
                        tokio_postgres::connect(&conn, NoTls).await.map_err(|e| SltError(e.to_string()))?;
                    tokio::spawn(connection);
                    Ok(Pg { client })
                }
            });
            runner.with_column_validator(|_, _| true);
            let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            match runner.run_file_async(file).await {
                Ok(()) => println!("test slt::{name} ... ok"),
                Err(e) => {
                    println!("test slt::{name} ... FAILED\n{e}");
                    failures.push(name);
                }
            }
        }
        println!("\nslt: {} passed, {} failed", files.len() - failures.len(), failures.len());
        failures
    });
    if !failures.is_empty() {
        std::process::exit(1);
    }
}

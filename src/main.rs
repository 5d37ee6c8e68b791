//! The `kfsql` command: `serve` (the default) runs the feature store over pg-wire; `query` runs SQL once and prints
//! the result. With no brokers configured it starts an embedded Kafka and loads the fraud demo.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use datafusion::arrow::util::pretty::pretty_format_batches;
use kfsql::kafka::KafkaCluster;
use kfsql::{Engine, EngineConfig};

/// mimalloc: the query engine allocates and frees many small buffers from many threads, where glibc's allocator
/// spent a fifth of a point-lookup benchmark's time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "kfsql",
    version,
    about = "Kafka topics as an ML feature store, queried with SQL over the Postgres wire protocol"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    common: Common,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve SQL over the Postgres wire protocol (the default).
    Serve {
        /// Address to listen on for Postgres clients.
        #[arg(long, env = "KFSQL_LISTEN", default_value = "127.0.0.1:5433")]
        listen: String,
        /// Serve Prometheus metrics on this address (`GET /metrics`), e.g. 127.0.0.1:9187.
        #[arg(long, env = "KFSQL_METRICS_LISTEN")]
        metrics_listen: Option<String>,
        /// Serve Arrow Flight SQL on this address too (e.g. 127.0.0.1:50051): the same tables, users and TLS
        /// certificate, results as Arrow batches read in parallel.
        #[arg(long, env = "KFSQL_FLIGHT_LISTEN")]
        flight_listen: Option<String>,
        #[command(flatten)]
        security: SecurityArgs,
    },
    /// Run SQL once and print the result (for scripts).
    Query {
        /// One or more SQL statements; the result of each is printed.
        sql: String,
    },
    /// Produce a live stream of the fraud example's card transactions (and their labels) into the `transactions` and
    /// `labels` topics, timed now: for watching the feature pipelines and latest views move.
    Generate {
        /// Transactions per second.
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
        /// How many users make them.
        #[arg(long, default_value_t = 1000)]
        users: usize,
        /// Stop after this many transactions (default: run until interrupted).
        #[arg(long)]
        count: Option<u64>,
    },
}

/// Authentication and TLS for `serve`.
#[derive(Args, Debug, Default)]
struct SecurityArgs {
    /// File of users, one `name:password` or `name:password:readonly` per line; clients log in with SCRAM-SHA-256.
    #[arg(long, env = "KFSQL_USERS_FILE")]
    users_file: Option<std::path::PathBuf>,
    /// Users inline, comma-separated `name:password[:readonly]` (prefer --users-file: the environment is visible
    /// to other processes of the same user).
    #[arg(long, env = "KFSQL_USERS", hide_env_values = true)]
    users: Option<String>,
    /// Accept connections without passwords. Without users this is the default only on a loopback address.
    #[arg(long, env = "KFSQL_TRUST")]
    trust: bool,
    /// PEM certificate chain for TLS (with --tls-key); clients may then use sslmode=require.
    #[arg(long, env = "KFSQL_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// PEM private key for TLS.
    #[arg(long, env = "KFSQL_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Client connections served at once; one more is refused with FATAL 53300 (too many clients).
    #[arg(long, env = "KFSQL_MAX_CONNECTIONS", default_value_t = kfsql::server::auth::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
}

impl SecurityArgs {
    /// The TLS certificate and key as PEM bytes (Arrow Flight's server takes them so).
    fn tls_pem(&self) -> Result<Option<kfsql::server::flight::TlsPem>, Box<dyn std::error::Error>> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(c), Some(k)) => {
                let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("reading {}: {e}", p.display()));
                Ok(Some(kfsql::server::flight::TlsPem { cert: read(c)?, key: read(k)? }))
            }
            _ => Ok(None),
        }
    }

    fn security(&self, listen: &str) -> Result<kfsql::server::auth::Security, Box<dyn std::error::Error>> {
        use kfsql::server::auth::{Security, Users, tls_acceptor};
        let users = match (&self.users_file, &self.users) {
            (Some(f), _) => Some(Arc::new(Users::from_file(f)?)),
            (None, Some(inline)) => Some(Arc::new(Users::parse(inline)?)),
            (None, None) => None,
        };
        let loopback = listen
            .parse::<std::net::SocketAddr>()
            .map(|a| a.ip().is_loopback())
            .unwrap_or_else(|_| listen.starts_with("localhost:"));
        if users.is_some() && self.trust {
            return Err("--trust and users exclude each other: with users, everyone logs in with a password".into());
        }
        if users.is_none() && !self.trust && !loopback {
            return Err(format!(
                "refusing to serve {listen} without authentication: configure users (--users-file) or pass --trust"
            )
            .into());
        }
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(c), Some(k)) => Some(tls_acceptor(c, k)?),
            _ => None,
        };
        Ok(Security { users, tls, max_connections: Some(self.max_connections) })
    }
}

#[derive(Args, Debug)]
struct Common {
    /// Log lines as text, or as JSON objects (one per line, with the connection and statement ids as fields).
    /// Levels come from KFSQL_LOG (e.g. kfsql=debug).
    #[arg(long, env = "KFSQL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    /// Kafka bootstrap servers (host:port,…). Without it, kfsql starts an embedded Kafka with demo data.
    #[arg(long, env = "KFSQL_BROKERS", global = true)]
    brokers: Option<String>,
    /// Compacted topic that holds table definitions.
    #[arg(long, env = "KFSQL_CATALOG_TOPIC", default_value = "_kfsql_catalog", global = true)]
    catalog_topic: String,
    /// Longest a statement may run, and how long to wait for brokers (e.g. 30s, 2m).
    #[arg(long, env = "KFSQL_QUERY_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration, global = true)]
    query_timeout: Duration,
    /// Timeout for Kafka metadata and admin calls.
    #[arg(long, env = "KFSQL_KAFKA_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    kafka_timeout: Duration,
    /// Replication factor for topics kfsql creates.
    #[arg(long, env = "KFSQL_REPLICATION_FACTOR", default_value_t = 1, global = true)]
    replication_factor: i32,
    /// Extra librdkafka client properties, e.g. -X security.protocol=SSL (repeatable).
    #[arg(short = 'X', value_parser = parse_kv, global = true)]
    kafka_property: Vec<(String, String)>,
    /// Load the fraud demo (topics, data, tables) into the configured brokers too.
    #[arg(long, env = "KFSQL_DEMO", global = true)]
    demo: bool,
    /// With the embedded Kafka: do not load the fraud demo.
    #[arg(long, env = "KFSQL_NO_DEMO", global = true)]
    no_demo: bool,
    /// Directory that `COPY … TO 'file'` writes into (paths may not leave it).
    #[arg(long, env = "KFSQL_EXPORT_DIR", default_value = "exports", global = true)]
    export_dir: std::path::PathBuf,
    /// Memory queries may hold together (ASOF right sides, sorts, aggregations), e.g. 4GiB, 512MiB; beyond it a
    /// query fails with a resources-exhausted error. Unlimited by default.
    #[arg(long, env = "KFSQL_MEMORY_LIMIT", value_parser = parse_bytes, global = true)]
    memory_limit: Option<usize>,
    /// The most workers one statement may use (its plan's partitions), e.g. 4: with fewer than the cores, a heavy
    /// statement leaves cores to the others. One per core by default.
    #[arg(long, env = "KFSQL_STATEMENT_WORKERS", global = true)]
    statement_workers: Option<usize>,
    /// With the embedded Kafka: how many demo transactions to generate.
    #[arg(long, default_value_t = 20_000, global = true)]
    demo_transactions: usize,
}

fn parse_bytes(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: usize = n.parse().map_err(|_| format!("expected a size such as 512MiB or 4GiB, got '{s}'"))?;
    let mult: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("unknown size unit '{other}' in '{s}' (use KiB, MiB or GiB)")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("size '{s}' is too large"))
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .ok_or_else(|| format!("expected key=value, got '{s}'"))
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KFSQL_LOG").unwrap_or_else(|_| "kfsql=info,warn".into()),
        )
        .with_writer(std::io::stderr);
    match cli.common.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().with_current_span(false).init(),
    }
    if let Err(e) = run(cli).await {
        eprintln!("kfsql: {e}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let command = match cli.command {
        Some(c) => c,
        // plain `kfsql`: serve, with the flags' defaults and environment
        None => match Cli::parse_from(["kfsql", "serve"]).command {
            Some(c) => c,
            None => return Err("no command".into()),
        },
    };
    // refuse a bad security setup before doing anything else
    let security = match &command {
        Command::Serve { listen, security, flight_listen, .. } => {
            if let Some(f) = flight_listen {
                security.security(f)?; // the same refusal of a non-loopback address without users
            }
            Some(security.security(listen)?)
        }
        Command::Query { .. } | Command::Generate { .. } => None,
    };
    let c = &cli.common;
    let cluster = match &c.brokers {
        Some(b) => KafkaCluster::connect(b, c.kafka_timeout, c.kafka_property.clone())?,
        None => KafkaCluster::embedded(1, c.kafka_timeout)?,
    }
    .with_replication(c.replication_factor);
    let cluster = Arc::new(cluster);
    let config = EngineConfig {
        catalog_topic: c.catalog_topic.clone(),
        query_timeout: c.query_timeout,
        export_dir: c.export_dir.clone(),
        memory_limit: c.memory_limit,
        statement_workers: c.statement_workers,
        ..Default::default()
    };
    if let Command::Generate { rate, users, count } = command {
        if cluster.is_embedded() {
            return Err("generate needs --brokers: the Kafka that `kfsql serve` prints as its bootstrap".into());
        }
        for topic in ["transactions", "labels"] {
            if !cluster.topic_exists(topic).await? {
                cluster.create_topic(topic, 4, &[]).await?;
            }
        }
        eprintln!("producing {rate} transactions/s to 'transactions' and 'labels' on {}", cluster.bootstrap_servers());
        let sent = kfsql::demo::stream(cluster.producer(), users, rate, count).await?;
        eprintln!("{sent} transactions produced");
        return Ok(());
    }
    let engine = Engine::start(cluster.clone(), config).await?;
    if (cluster.is_embedded() && !c.no_demo) || c.demo {
        tracing::info!("loading the fraud demo ({} transactions)…", c.demo_transactions);
        kfsql::demo::load(&engine, &cluster, c.demo_transactions, 1000).await?;
    }
    match command {
        Command::Generate { .. } => Ok(()),
        Command::Query { sql } => {
            // A spinner while statements run (long exports), when a person is watching: elapsed time and the Kafka
            // messages read so far, with their rate.
            let progress = std::io::stderr().is_terminal().then(|| {
                let bar = indicatif::ProgressBar::new_spinner();
                bar.set_style(
                    indicatif::ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
                );
                bar.set_message("running");
                bar.enable_steady_tick(Duration::from_millis(120));
                let (ticker, factory, exporter) = (bar.clone(), engine.factory().clone(), engine.clone());
                let (start_messages, start_bytes) = factory.read_totals();
                let start_exported = exporter.rows_exported();
                let started = std::time::Instant::now();
                tokio::spawn(async move {
                    while !ticker.is_finished() {
                        tokio::time::sleep(Duration::from_millis(250)).await;
                        let (messages, bytes) = factory.read_totals();
                        let n = messages - start_messages.min(messages);
                        let rate = n as f64 / started.elapsed().as_secs_f64().max(0.001);
                        let written = exporter.rows_exported().saturating_sub(start_exported);
                        let written = if written > 0 { format!(", {written} rows written") } else { String::new() };
                        ticker.set_message(format!(
                            "running: {n} Kafka messages read ({:.0} k/s, {} MiB){written}",
                            rate / 1000.0,
                            bytes.saturating_sub(start_bytes) >> 20
                        ));
                    }
                });
                bar
            });
            let started = std::time::Instant::now();
            let results = engine.query(&sql).await;
            if let Some(bar) = progress {
                bar.finish_and_clear();
                eprintln!("done in {:.2?}", started.elapsed());
            }
            for (schema, batches, tag) in results? {
                if schema.is_some() {
                    println!("{}", pretty_format_batches(&batches)?);
                }
                println!("{tag}");
            }
            // Exit without tearing down the Kafka clients one by one (the embedded cluster would log every
            // disconnect on the way out).
            use std::io::Write;
            let _ = std::io::stdout().flush();
            std::process::exit(0)
        }
        Command::Serve { listen, metrics_listen, flight_listen, security: security_args } => {
            kfsql::memory::start_trimmer();
            kfsql::server::metrics::Metrics::count_panics();
            // the banner: for people at a terminal, or one log event each when logs are JSON
            let json = cli.common.log_format == LogFormat::Json;
            let say = |line: String| if json { tracing::info!("{line}") } else { eprintln!("{line}") };
            let security = security.unwrap_or_default();
            if let Some(m) = &metrics_listen {
                let bound = kfsql::server::metrics::serve(m, engine.clone())?;
                say(format!("  Prometheus metrics on http://{bound}/metrics"));
            }
            let auth = match &security.users {
                Some(u) => format!("SCRAM-SHA-256, {} user(s)", u.len()),
                None => "trust (no passwords)".into(),
            };
            let tls = if security.tls.is_some() { ", TLS" } else { "" };
            let flight = match &flight_listen {
                Some(f) => {
                    let config = kfsql::server::flight::FlightConfig {
                        users: security.users.clone(),
                        tls: security_args.tls_pem()?,
                        max_connections: security.max_connections,
                    };
                    let (bound, task) = kfsql::server::flight::start(engine.clone(), f, config).await?;
                    Some((bound, task))
                }
                None => None,
            };
            let (addr, task) = kfsql::server::start_with(engine, &listen, security).await?;
            say(format!("kfsql {} serving Postgres clients on {addr} ({auth}{tls})", env!("CARGO_PKG_VERSION")));
            say(format!("  psql -h {} -p {} -U kfsql -d kfsql", addr.ip(), addr.port()));
            let flight_task = match flight {
                Some((bound, task)) => {
                    let scheme = if tls.is_empty() { "grpc" } else { "grpc+tls" };
                    say(format!("  Arrow Flight SQL on {scheme}://{bound} ({auth}{tls})"));
                    task
                }
                None => tokio::spawn(futures::future::pending()),
            };
            say(format!(
                "  Kafka bootstrap: {}{}",
                cluster.bootstrap_servers(),
                if cluster.is_embedded() { " (embedded; produce here with any Kafka client)" } else { "" }
            ));
            tokio::select! {
                r = task => { r??; }
                r = flight_task => { r??; }
                _ = tokio::signal::ctrl_c() => {
                    eprintln!("kfsql: shutting down");
                    std::process::exit(0)
                }
            }
            Ok(())
        }
    }
}

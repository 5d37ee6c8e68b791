//! Prometheus metrics for operators: `kfsql serve --metrics-listen ADDR` serves `GET /metrics` in the text format.
//!
//! The server counts what happens on the wire (connections, statements by outcome and SQLSTATE, time to answer).
//! When scraped, the per-table figures are the scans' own counters (scans, messages, bytes, and bad messages by
//! reason — the counters `kfsql.table_stats` shows, read without asking the brokers anything), the rest is read
//! from the system tables through SQL like any client's (`kfsql.freshness`: lag, staleness, keys and lookups per
//! latest view; `kfsql.pipelines`: input lag, rows and late events per pipeline), plus the memory pool's use.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::Engine;

/// The statement outcome labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
    sqlstate: String,
}

/// What the server counts.
pub struct Metrics {
    registry: Registry,
    connections: Gauge,
    connections_total: Counter,
    connections_refused: Counter,
    statements: Family<Outcome, Counter>,
    answer_seconds: Histogram,
    panics: Counter,
}

impl Metrics {
    /// The process's metrics.
    pub fn global() -> &'static Metrics {
        static METRICS: OnceLock<Metrics> = OnceLock::new();
        METRICS.get_or_init(|| {
            let mut registry = Registry::with_prefix("kfsql");
            let connections = Gauge::default();
            let connections_total = Counter::default();
            let connections_refused = Counter::default();
            let statements = Family::<Outcome, Counter>::default();
            let answer_seconds = Histogram::new(exponential_buckets(0.0001, 4.0, 12));
            registry.register("connections", "Open client connections", connections.clone());
            registry.register("connections_accepted", "Client connections accepted", connections_total.clone());
            registry.register(
                "connections_refused",
                "Client connections refused past max_connections (53300)",
                connections_refused.clone(),
            );
            registry.register("statements", "Statements answered, by outcome and SQLSTATE", statements.clone());
            registry.register(
                "statement_answer_seconds",
                "Time from a statement's arrival to the start of its answer",
                answer_seconds.clone(),
            );
            let panics = Counter::default();
            registry.register(
                "panics",
                "Panics in the server's code (each answered as an error to its client, never a silent drop)",
                panics.clone(),
            );
            Metrics {
                registry,
                connections,
                connections_total,
                connections_refused,
                statements,
                answer_seconds,
                panics,
            }
        })
    }

    /// A connection opened; the guard counts it closed when dropped.
    pub fn connection(&'static self) -> ConnectionGuard {
        self.connections.inc();
        self.connections_total.inc();
        ConnectionGuard(self)
    }

    /// Count every panic of the process in `kfsql_panics_total`, and log it (in the span of the connection and
    /// statement it happened in) as well as printing it as Rust does. Installed once, by `kfsql serve`.
    pub fn count_panics() {
        static INSTALLED: std::sync::Once = std::sync::Once::new();
        INSTALLED.call_once(|| {
            let default = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                Metrics::global().panics.inc();
                tracing::error!("panic: {info}");
                default(info);
            }));
        });
    }

    /// A connection refused past the limit.
    pub fn refused(&self) {
        self.connections_refused.inc();
    }

    /// A statement answered: `sqlstate` None for success.
    pub fn statement(&self, sqlstate: Option<&str>, elapsed: Duration) {
        let outcome = Outcome {
            outcome: if sqlstate.is_some() { "error" } else { "ok" },
            sqlstate: sqlstate.unwrap_or("00000").to_string(),
        };
        self.statements.get_or_create(&outcome).inc();
        self.answer_seconds.observe(elapsed.as_secs_f64());
    }

    /// The exposition: the server's own metrics, then those read from the system tables.
    pub async fn render(&self, engine: &Engine) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode_registry(&mut out, &self.registry) {
            tracing::warn!("metrics: {e}");
        }
        let mut system = SystemMetrics::default();
        system.gauge(
            "memory_pool_reserved_bytes",
            "Bytes reserved in the statement memory pool",
            &[],
            engine.memory_reserved() as f64,
        );
        // per table: the scans' own counters (no broker is asked, so a scrape never waits on Kafka)
        for name in engine.definitions().keys() {
            let stats = engine.factory().stats_for(name).snapshot();
            let table = [("table", name.as_str())];
            system.add("table_scans", "counter", "Scans of a Kafka table", &table, stats.scans as f64);
            system.add("table_messages", "counter", "Messages read by scans", &table, stats.messages as f64);
            system.add("table_bytes", "counter", "Bytes read by scans", &table, stats.bytes as f64);
            for (reason, n) in crate::codec::BadCounts::REASONS.iter().zip(stats.bad_by_reason) {
                system.add(
                    "table_bad_messages",
                    "counter",
                    "Messages scans could not decode, by reason, handled under the table's policy",
                    &[("table", name.as_str()), ("reason", reason)],
                    n as f64,
                );
            }
        }
        let per_view = [
            ("lag_messages", "gauge", "Messages a latest view has not applied yet"),
            ("staleness_ms", "gauge", "How far a latest view is behind its topic"),
            ("keys", "gauge", "Keys held by a latest view"),
            ("lookups", "counter", "Point lookups served by a latest view"),
            ("bad_messages", "counter", "Messages a latest view could not decode"),
        ];
        let per_pipeline = [
            ("input_lag", "gauge", "Source messages a pipeline has not read yet"),
            ("rows_in", "counter", "Rows a pipeline read"),
            ("rows_out", "counter", "Rows a pipeline wrote"),
            ("late_events", "counter", "Events that came after their window was written"),
        ];
        for (prefix, table, key, label, columns) in [
            ("latest", "kfsql.freshness", "table_name", "view", &per_view[..]),
            ("pipeline", "kfsql.pipelines", "name", "pipeline", &per_pipeline[..]),
        ] {
            let names: Vec<&str> = columns.iter().map(|c| c.0).collect();
            let sql = format!("SELECT {key}, {} FROM {table}", names.join(", "));
            match engine.query(&sql).await {
                Ok(results) => {
                    let batches = results.into_iter().next().map(|r| r.1).unwrap_or_default();
                    for (i, (column, kind, help)) in columns.iter().enumerate() {
                        for (name, value) in values(&batches, i + 1) {
                            let metric = format!("{prefix}_{column}");
                            system.add(&metric, kind, help, &[(label, &name)], value);
                        }
                    }
                }
                Err(e) => tracing::warn!("metrics: {table}: {e}"),
            }
        }
        out.push_str(&system.text());
        out
    }
}

/// A statement's rows, counted in [`Metrics`] when they end: by the SQLSTATE of the first error among them, else
/// as a success (also when the client stops reading early).
pub struct Counted {
    rows: pgwire::api::results::SendableRowStream,
    start: std::time::Instant,
    span: tracing::Span,
    counted: bool,
}

impl Counted {
    pub fn new(rows: pgwire::api::results::SendableRowStream, start: std::time::Instant, span: tracing::Span) -> Self {
        Counted { rows, start, span, counted: false }
    }

    fn count(&mut self, sqlstate: Option<&str>) {
        if !self.counted {
            self.counted = true;
            ended(&self.span, sqlstate, self.start.elapsed());
        }
    }
}

/// A statement ended, with `sqlstate` when it failed: counted in [`Metrics`], and logged in its span (which names
/// the connection and the statement) — failures at info, successes at debug.
pub fn ended(span: &tracing::Span, sqlstate: Option<&str>, elapsed: Duration) {
    Metrics::global().statement(sqlstate, elapsed);
    let ms = elapsed.as_secs_f64() * 1e3;
    // entered rather than named as the parent: the JSON formatter lists the current spans only
    span.in_scope(|| match sqlstate {
        Some(code) => tracing::info!(sqlstate = code, elapsed_ms = ms, "statement failed"),
        None => tracing::debug!(elapsed_ms = ms, "statement done"),
    })
}

impl futures::Stream for Counted {
    type Item = pgwire::error::PgWireResult<pgwire::messages::data::DataRow>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let next = self.rows.as_mut().poll_next(cx);
        match &next {
            std::task::Poll::Ready(Some(Err(pgwire::error::PgWireError::UserError(info)))) => {
                let code = info.code.clone();
                self.count(Some(&code));
            }
            std::task::Poll::Ready(Some(Err(_))) => self.count(Some("08006")),
            std::task::Poll::Ready(None) => self.count(None),
            _ => {}
        }
        next
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.count(None);
    }
}

/// Counts a connection closed when dropped.
pub struct ConnectionGuard(&'static Metrics);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections.dec();
    }
}

/// (key, value) of column `column` in the rows: column 0 is the key.
fn values(batches: &[RecordBatch], column: usize) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for b in batches {
        let (Ok(keys), Ok(vals)) = (
            datafusion::arrow::compute::cast(b.column(0), &datafusion::arrow::datatypes::DataType::Utf8),
            datafusion::arrow::compute::cast(b.column(column), &datafusion::arrow::datatypes::DataType::Float64),
        ) else {
            continue;
        };
        use datafusion::arrow::array::{Array, AsArray};
        let (keys, vals) = (keys.as_string::<i32>(), vals.as_primitive::<datafusion::arrow::datatypes::Float64Type>());
        for i in 0..b.num_rows() {
            if keys.is_valid(i) && vals.is_valid(i) {
                out.push((keys.value(i).to_string(), vals.value(i)));
            }
        }
    }
    out
}

/// Metric families read from the system tables, in the text format.
#[derive(Default)]
struct SystemMetrics {
    families: Vec<(String, String, String, Vec<String>)>,
}

impl SystemMetrics {
    fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.add(name, "gauge", help, labels, value);
    }

    fn add(&mut self, name: &str, kind: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        let full = format!("kfsql_{name}{}", if kind == "counter" { "_total" } else { "" });
        let labels = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")))
            .collect::<Vec<_>>()
            .join(",");
        let sample = if labels.is_empty() { format!("{full} {value}") } else { format!("{full}{{{labels}}} {value}") };
        match self.families.iter_mut().find(|f| f.0 == name) {
            Some(f) => f.3.push(sample),
            None => self.families.push((name.to_string(), kind.to_string(), help.to_string(), vec![sample])),
        }
    }

    fn text(&self) -> String {
        let mut out = String::new();
        for (name, kind, help, samples) in &self.families {
            let _ = writeln!(out, "# HELP kfsql_{name} {help}.");
            let _ = writeln!(out, "# TYPE kfsql_{name} {kind}");
            for s in samples {
                let _ = writeln!(out, "{s}");
            }
        }
        out
    }
}

/// Serve `GET /metrics` on `addr` from a thread of its own; returns the bound address.
pub fn serve(addr: &str, engine: Engine) -> std::io::Result<std::net::SocketAddr> {
    let server = tiny_http::Server::http(addr).map_err(std::io::Error::other)?;
    let bound =
        server.server_addr().to_ip().ok_or_else(|| std::io::Error::other("metrics listener has no IP address"))?;
    let runtime = tokio::runtime::Handle::current();
    std::thread::Builder::new().name("kfsql-metrics".into()).spawn(move || {
        for request in server.incoming_requests() {
            let response = if request.url() == "/metrics" && *request.method() == tiny_http::Method::Get {
                let body = runtime.block_on(Metrics::global().render(&engine));
                let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"text/plain; version=0.0.4"[..]);
                let mut r = tiny_http::Response::from_string(body);
                if let Ok(h) = header {
                    r = r.with_header(h);
                }
                r
            } else {
                tiny_http::Response::from_string("kfsql serves /metrics\n").with_status_code(404)
            };
            if let Err(e) = request.respond(response) {
                tracing::debug!("metrics: {e}");
            }
        }
    })?;
    Ok(bound)
}

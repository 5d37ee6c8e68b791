//! Arrow Flight SQL: the engine's rows as Arrow batches, with no per-value encoding on either side.
//!
//! The same engine, catalog and users as pg-wire (basic authentication against the SCRAM user file, answered with a
//! bearer token; read-only users may only query; TLS with the same certificate). A query's result is planned once
//! at `GetFlightInfo` and offered as one endpoint per output partition of its physical plan — one per Kafka
//! partition when every operator keeps rows in their partition — so a client reads them concurrently. Results and
//! prepared statements belong to the user that made them, are bounded in number, and expire unread.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult,
    CommandGetCatalogs, CommandGetDbSchemas, CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables,
    CommandPreparedStatementQuery, CommandPreparedStatementUpdate, CommandStatementQuery, CommandStatementUpdate,
    DoPutPreparedStatementResult, ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    Action, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, IpcMessage, SchemaAsIpc,
    Ticket,
};
use base64::Engine as _;
use bytes::Bytes;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use datafusion::arrow::ipc::writer::IpcWriteOptions;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::ScalarValue;
use datafusion::datasource::TableType;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::{Expr, LogicalPlan};
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::metadata::MetadataValue;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::auth::Users;
use crate::engine::{Engine, Output, Partitioned};
use crate::error::KfsqlError;
use crate::sql::command::Command;

/// Results planned but not yet read, across all users; one more is refused (RESOURCE_EXHAUSTED).
pub const MAX_RESULTS: usize = 1024;
/// Prepared statements per user.
pub const MAX_PREPARED_PER_USER: usize = 1024;
/// A result or prepared statement not touched for this long is dropped.
pub const IDLE_EXPIRY: Duration = Duration::from_secs(600);
/// How long a bearer token from a handshake stays valid.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Placeholders one statement may have (the Postgres protocol's limit, kept here too).
pub const MAX_PARAMETERS: usize = u16::MAX as usize;
/// Bytes of parameter values one prepared statement may be sent.
pub const MAX_PARAMETER_BYTES: usize = 16 << 20;

/// How the Flight SQL endpoint is served.
#[derive(Clone, Default)]
pub struct FlightConfig {
    /// None: every caller is trusted (as on pg-wire without users).
    pub users: Option<Arc<Users>>,
    /// The server's certificate and key.
    pub tls: Option<TlsPem>,
    /// Connections served at once (None: [`super::auth::DEFAULT_MAX_CONNECTIONS`]); more are closed at once.
    pub max_connections: Option<usize>,
}

/// A certificate chain and its private key, PEM.
#[derive(Clone)]
pub struct TlsPem {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

/// Bind `listen` and serve Flight SQL on it in the background: the address bound and the server's task.
pub async fn start(
    engine: Engine,
    listen: &str,
    config: FlightConfig,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<Result<(), tonic::transport::Error>>)> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let limit = Arc::new(Semaphore::new(config.max_connections.unwrap_or(super::auth::DEFAULT_MAX_CONNECTIONS)));
    let incoming = futures::stream::unfold((listener, limit), |(listener, limit)| async move {
        loop {
            match listener.accept().await {
                Ok((io, _)) => match limit.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let _ = io.set_nodelay(true);
                        return Some((Ok::<_, std::io::Error>(Limited { io, _permit: permit }), (listener, limit)));
                    }
                    Err(_) => tracing::warn!("Flight SQL: too many connections; one refused"),
                },
                // a failed accept (out of descriptors, a reset) is the one connection's, not the server's
                Err(e) => {
                    tracing::warn!("Flight SQL: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    let service = KfsqlFlight::new(engine, config.users.clone());
    let mut builder = tonic::transport::Server::builder()
        .concurrency_limit_per_connection(64)
        .max_concurrent_streams(Some(64))
        .http2_keepalive_interval(Some(Duration::from_secs(30)));
    if let Some(pem) = &config.tls {
        let identity = tonic::transport::Identity::from_pem(&pem.cert, &pem.key);
        builder = builder
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("Flight SQL TLS: {e}")))?;
    }
    let router = builder.add_service(FlightServiceServer::new(service));
    Ok((addr, tokio::spawn(router.serve_with_incoming(incoming))))
}

/// An accepted connection holding its place under the connection limit until it closes.
struct Limited {
    io: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl Connected for Limited {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl AsyncRead for Limited {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Limited {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Who is calling.
#[derive(Debug, Clone)]
struct Login {
    user: String,
    read_only: bool,
}

/// A result planned at `GetFlightInfo`, read at `DoGet`.
struct Stored {
    owner: String,
    touched: Mutex<Instant>,
    body: Body,
}

enum Body {
    /// A query's plan: each output partition is one endpoint, read once.
    Plan { planned: Partitioned, unread: Mutex<Vec<bool>> },
    /// The rows of a statement that is not a plain query (EXPLAIN, SHOW …), read once.
    Once { schema: SchemaRef, rows: Mutex<Option<SendableRecordBatchStream>> },
    /// A statement with no rows (DDL, INSERT): an empty result.
    Empty,
}

/// A prepared statement: its plan, and the parameter values bound last.
struct PreparedQuery {
    owner: String,
    touched: Mutex<Instant>,
    plan: LogicalPlan,
    /// The placeholders' types as planned, in order ($1, $2, …); None where planning could not tell.
    parameters: Vec<Option<DataType>>,
    bound: Mutex<Vec<ScalarValue>>,
}

/// The Flight SQL service.
pub struct KfsqlFlight {
    engine: Engine,
    users: Option<Arc<Users>>,
    tokens: Mutex<HashMap<String, (Login, Instant)>>,
    results: Mutex<HashMap<u64, Arc<Stored>>>,
    prepared: Mutex<HashMap<u64, Arc<PreparedQuery>>>,
    sql_info: SqlInfoData,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A kfsql error as a gRPC status: the code by its SQLSTATE's class, the SQLSTATE in the message.
fn status(e: KfsqlError) -> Status {
    let code = e.sqlstate();
    let message = format!("{e} (SQLSTATE {code})");
    match code {
        "42501" => Status::permission_denied(message),
        c if c.starts_with("28") => Status::unauthenticated(message),
        "0A000" => Status::unimplemented(message),
        "57014" => Status::cancelled(message),
        c if c.starts_with("53") || c.starts_with("54") => Status::resource_exhausted(message),
        c if c.starts_with("XX") => Status::internal(message),
        c if c.starts_with("08") || c.starts_with("58") => Status::unavailable(message),
        _ => Status::invalid_argument(message),
    }
}

fn encode_schema(schema: &Schema) -> Result<Bytes, Status> {
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(|e: datafusion::arrow::error::ArrowError| Status::internal(format!("encoding a schema: {e}")))?;
    Ok(bytes)
}

/// A ticket names a stored result and one of its partitions: 8 bytes of handle, 4 of partition.
fn ticket(handle: u64, partition: u32) -> Ticket {
    let mut b = Vec::with_capacity(12);
    b.extend_from_slice(&handle.to_be_bytes());
    b.extend_from_slice(&partition.to_be_bytes());
    Ticket::new(TicketStatementQuery { statement_handle: b.into() }.as_any().encode_to_vec())
}

fn read_ticket(handle: &[u8]) -> Result<(u64, usize), Status> {
    let bad = || Status::invalid_argument("not a ticket of this server");
    let (h, p) = (handle.get(0..8).ok_or_else(bad)?, handle.get(8..12).ok_or_else(bad)?);
    if handle.len() != 12 {
        return Err(bad());
    }
    let h = u64::from_be_bytes(h.try_into().map_err(|_| bad())?);
    let p = u32::from_be_bytes(p.try_into().map_err(|_| bad())?);
    Ok((h, p as usize))
}

fn prepared_handle(bytes: &[u8]) -> Result<u64, Status> {
    let b: [u8; 8] =
        bytes.try_into().map_err(|_| Status::invalid_argument("not a prepared statement of this server"))?;
    Ok(u64::from_be_bytes(b))
}

type FlightStream = Pin<Box<dyn Stream<Item = Result<arrow_flight::FlightData, Status>> + Send + 'static>>;

/// Rows per Flight data message, at least (smaller batches are merged; see [`crate::export::coalesced`]).
const FLIGHT_BATCH_ROWS: usize = 8192;

/// Rows as Flight data messages.
fn flight_stream(schema: SchemaRef, rows: SendableRecordBatchStream) -> FlightStream {
    let rows = crate::export::coalesced(rows, FLIGHT_BATCH_ROWS)
        .map_err(|e| FlightError::Tonic(Box::new(status(KfsqlError::from_datafusion(e)))));
    Box::pin(FlightDataEncoderBuilder::new().with_schema(schema).build(rows).map_err(Status::from))
}

fn one_batch(batch: Result<RecordBatch, FlightError>) -> Result<FlightStream, Status> {
    let batch = batch.map_err(|e| Status::internal(format!("building a catalog answer: {e}")))?;
    let schema = batch.schema();
    let stream = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(futures::stream::once(async move { Ok(batch) }))
        .map_err(Status::from);
    Ok(Box::pin(stream))
}

fn info_for(
    schema: &Schema,
    descriptor: FlightDescriptor,
    tickets: impl IntoIterator<Item = Ticket>,
) -> Result<FlightInfo, Status> {
    let mut info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(format!("encoding a schema: {e}")))?
        .with_descriptor(descriptor)
        .with_ordered(false);
    for t in tickets {
        info = info.with_endpoint(FlightEndpoint::new().with_ticket(t));
    }
    Ok(info)
}

impl KfsqlFlight {
    pub fn new(engine: Engine, users: Option<Arc<Users>>) -> Self {
        let mut info = SqlInfoDataBuilder::new();
        info.append(SqlInfo::FlightSqlServerName, "kfsql");
        info.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
        info.append(SqlInfo::FlightSqlServerArrowVersion, "1.3");
        info.append(SqlInfo::FlightSqlServerReadOnly, false);
        info.append(SqlInfo::FlightSqlServerSql, true);
        info.append(SqlInfo::FlightSqlServerSubstrait, false);
        info.append(SqlInfo::FlightSqlServerTransaction, 0i32); // no transactions
        info.append(SqlInfo::FlightSqlServerCancel, false);
        info.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
        info.append(SqlInfo::SqlDdlCatalog, false);
        info.append(SqlInfo::SqlDdlSchema, false);
        info.append(SqlInfo::SqlDdlTable, true);
        let sql_info = match info.build() {
            Ok(i) => i,
            Err(e) => {
                tracing::error!("Flight SQL info: {e}");
                SqlInfoDataBuilder::new().build().unwrap_or_else(|_| unreachable!("an empty SqlInfo builds"))
            }
        };
        Self {
            engine,
            users,
            tokens: Mutex::default(),
            results: Mutex::default(),
            prepared: Mutex::default(),
            sql_info,
        }
    }

    /// The caller, from a bearer token of a handshake or basic credentials sent with the call; anyone when the
    /// server has no users.
    #[allow(clippy::result_large_err)]
    fn login<T>(&self, request: &Request<T>) -> Result<Login, Status> {
        let Some(users) = &self.users else {
            return Ok(Login { user: "kfsql".into(), read_only: false });
        };
        let header = request.metadata().get("authorization").and_then(|v| v.to_str().ok()).ok_or_else(|| {
            Status::unauthenticated("authentication required: handshake with basic credentials first")
        })?;
        if let Some(token) = header.strip_prefix("Bearer ") {
            let mut tokens = lock(&self.tokens);
            return match tokens.get(token) {
                Some((login, expires)) if *expires > Instant::now() => Ok(login.clone()),
                Some(_) => {
                    tokens.remove(token);
                    Err(Status::unauthenticated("the session token expired: handshake again"))
                }
                None => Err(Status::unauthenticated("unknown session token")),
            };
        }
        let (user, password) = basic_credentials(header)?;
        match users.verify(&user, &password) {
            Some(read_only) => Ok(Login { user, read_only }),
            None => Err(Status::unauthenticated(format!("password authentication failed for user \"{user}\""))),
        }
    }

    /// Keep a result under a fresh handle, dropping what expired; refused past [`MAX_RESULTS`].
    #[allow(clippy::result_large_err)]
    fn store(&self, owner: &str, body: Body) -> Result<u64, Status> {
        let mut results = lock(&self.results);
        results.retain(|_, r| lock(&r.touched).elapsed() < IDLE_EXPIRY);
        if results.len() >= MAX_RESULTS {
            return Err(Status::resource_exhausted(format!(
                "{MAX_RESULTS} results are waiting to be read; read or drop some first (SQLSTATE 53000)"
            )));
        }
        let handle = loop {
            let h = rand::random::<u64>();
            if !results.contains_key(&h) {
                break h;
            }
        };
        results.insert(handle, Arc::new(Stored { owner: owner.into(), touched: Mutex::new(Instant::now()), body }));
        Ok(handle)
    }

    /// Plan or run one statement and describe its result: endpoints to read it from.
    async fn flight_info(&self, login: &Login, sql: &str, descriptor: FlightDescriptor) -> Result<FlightInfo, Status> {
        let cmd = self.command(login, sql)?;
        let span = tracing::info_span!("statement", kind = cmd.kind(), user = %login.user);
        self.answer(login, cmd, descriptor).instrument(span).await
    }

    async fn answer(&self, login: &Login, cmd: Command, descriptor: FlightDescriptor) -> Result<FlightInfo, Status> {
        match cmd {
            Command::Query(stmt) => {
                let plan = self.engine.plan(stmt).await.map_err(status)?;
                self.plan_info(login, plan, descriptor).await
            }
            other => {
                let out = self.engine.execute(other).await.map_err(status)?;
                let (notices, out) = out.take_notices();
                for n in notices {
                    tracing::info!("NOTICE: {n}");
                }
                let (schema, body) = match out {
                    Output::Rows(rows) => {
                        let schema = rows.schema();
                        (schema.clone(), Body::Once { schema, rows: Mutex::new(Some(rows)) })
                    }
                    _ => (Arc::new(Schema::empty()), Body::Empty),
                };
                let handle = self.store(&login.user, body)?;
                info_for(&schema, descriptor, [ticket(handle, 0)])
            }
        }
    }

    /// A planned query as a result of one endpoint per independent partition.
    async fn plan_info(
        &self,
        login: &Login,
        plan: LogicalPlan,
        descriptor: FlightDescriptor,
    ) -> Result<FlightInfo, Status> {
        let planned = self.engine.plan_partitioned(plan, None).await.map_err(status)?;
        for n in &planned.notices {
            tracing::info!("NOTICE: {n}");
        }
        let (schema, n) = (planned.schema.clone(), planned.partitions());
        let handle = self.store(&login.user, Body::Plan { planned, unread: Mutex::new(vec![true; n]) })?;
        info_for(&schema, descriptor, (0..n as u32).map(|p| ticket(handle, p)))
    }

    /// One statement of SQL text, classified, with the rights check made; what needs a Postgres session is refused.
    #[allow(clippy::result_large_err)]
    fn command(&self, login: &Login, sql: &str) -> Result<Command, Status> {
        let mut stmts = self.engine.parse(sql).map_err(status)?;
        if stmts.len() != 1 {
            return Err(Status::invalid_argument(format!(
                "one statement per call, not {} (SQLSTATE 42601)",
                stmts.len()
            )));
        }
        let cmd = Command::classify(stmts.remove(0)).map_err(status)?;
        if login.read_only && cmd.writes() {
            return Err(status(KfsqlError::PermissionDenied(format!(
                "user \"{}\" is read-only: it may query but not create, drop, insert or export",
                login.user
            ))));
        }
        match cmd {
            Command::Query(_)
            | Command::Statement(_)
            | Command::DropTables { .. }
            | Command::DropMaterializedViews { .. }
            | Command::CreateMaterializedView(_)
            | Command::ShowTables
            | Command::ShowMaterializedViews => Ok(cmd),
            other => Err(Status::unimplemented(format!(
                "{} needs a Postgres session (settings, cursors, COPY TO STDOUT): use pg-wire for it (SQLSTATE 0A000)",
                other.kind()
            ))),
        }
    }

    #[allow(clippy::result_large_err)]
    fn prepared(&self, login: &Login, handle: &[u8]) -> Result<Arc<PreparedQuery>, Status> {
        let h = prepared_handle(handle)?;
        let p = lock(&self.prepared).get(&h).cloned();
        match p {
            Some(p) if p.owner == login.user => {
                *lock(&p.touched) = Instant::now();
                Ok(p)
            }
            _ => Err(Status::not_found("no such prepared statement (SQLSTATE 26000)")),
        }
    }

    /// A prepared statement's plan with its bound parameter values.
    #[allow(clippy::result_large_err)]
    fn bind(&self, p: &PreparedQuery) -> Result<LogicalPlan, Status> {
        let bound = lock(&p.bound).clone();
        if p.parameters.is_empty() && bound.is_empty() {
            return Ok(p.plan.clone());
        }
        let fields: Vec<FieldRef> = p
            .parameters
            .iter()
            .zip(&bound)
            .enumerate()
            .map(|(i, (t, v))| {
                Arc::new(Field::new(format!("${}", i + 1), t.clone().unwrap_or_else(|| v.data_type()), true))
            })
            .collect();
        let fields = if fields.len() == bound.len() { fields } else { Vec::new() };
        let values = bound.into_iter().map(|v| Expr::Literal(v, None)).collect();
        self.engine.bind(&p.plan, &fields, values).map_err(status)
    }

    /// A statement run to its end for its row count (DDL and DML over `DoPut`).
    async fn run_update(&self, cmd: Command) -> Result<i64, Status> {
        let out = self.engine.execute(cmd).await.map_err(status)?;
        match out.take_notices().1 {
            Output::Command { rows, .. } => Ok(rows.map_or(0, |n| n as i64)),
            Output::Rows(rows) => {
                let batches: Vec<RecordBatch> =
                    rows.try_collect().await.map_err(|e| status(KfsqlError::from_datafusion(e)))?;
                Ok(batches.iter().map(|b| b.num_rows() as i64).sum())
            }
            Output::Noticed { .. } => Ok(0),
        }
    }
}

/// `Basic base64(user:password)`.
#[allow(clippy::result_large_err)]
fn basic_credentials(header: &str) -> Result<(String, String), Status> {
    let encoded = header
        .strip_prefix("Basic ")
        .ok_or_else(|| Status::unauthenticated("authorization must be Basic (handshake) or Bearer"))?;
    // padded or not: Go's Flight client (ADBC) sends it unpadded
    const EITHER: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let decoded = EITHER.decode(encoded.trim()).map_err(|_| Status::unauthenticated("malformed basic credentials"))?;
    let text = String::from_utf8(decoded).map_err(|_| Status::unauthenticated("malformed basic credentials"))?;
    let (user, password) =
        text.split_once(':').ok_or_else(|| Status::unauthenticated("malformed basic credentials"))?;
    Ok((user.to_string(), password.to_string()))
}

/// The parameter values of one execution: one row of the batches a client sent, bounded in size.
async fn read_parameters(request: Request<PeekableFlightDataStream>) -> Result<Vec<ScalarValue>, Status> {
    let mut batches = arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(
        request.into_inner().map_err(FlightError::from),
    );
    let (mut values, mut rows, mut bytes) = (Vec::new(), 0usize, 0usize);
    while let Some(batch) = batches.next().await {
        let batch = batch.map_err(|e| Status::invalid_argument(format!("reading parameters: {e}")))?;
        bytes += batch.get_array_memory_size();
        rows += batch.num_rows();
        if bytes > MAX_PARAMETER_BYTES {
            return Err(Status::resource_exhausted(format!(
                "parameters larger than {} MiB (SQLSTATE 54000)",
                MAX_PARAMETER_BYTES >> 20
            )));
        }
        if rows > 1 {
            return Err(Status::unimplemented(
                "one row of parameters per execution; send each row as its own execution (SQLSTATE 0A000)",
            ));
        }
        if batch.num_rows() == 1 {
            values = batch
                .columns()
                .iter()
                .map(|c| ScalarValue::try_from_array(c, 0))
                .collect::<datafusion::error::Result<_>>()
                .map_err(|e| Status::invalid_argument(format!("reading parameters: {e}")))?;
        }
    }
    Ok(values)
}

fn placeholder_types(plan: &LogicalPlan) -> Result<Vec<Option<DataType>>, KfsqlError> {
    let types = plan.get_parameter_types().map_err(KfsqlError::from_datafusion)?;
    let mut numbered: Vec<(usize, Option<DataType>)> = Vec::with_capacity(types.len());
    for (name, t) in types {
        let n = name
            .strip_prefix('$')
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| (1..=MAX_PARAMETERS).contains(n))
            .ok_or_else(|| KfsqlError::Syntax(format!("placeholder {name}: write $1, $2, …")))?;
        numbered.push((n, t));
    }
    numbered.sort_by_key(|(n, _)| *n);
    let count = numbered.last().map_or(0, |(n, _)| *n);
    let mut out = vec![None; count];
    for (n, t) in numbered {
        out[n - 1] = t;
    }
    Ok(out)
}

#[tonic::async_trait]
impl FlightSqlService for KfsqlFlight {
    type FlightService = KfsqlFlight;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>, Status> {
        let login = match &self.users {
            None => Login { user: "kfsql".into(), read_only: false },
            Some(_) => {
                let header = request
                    .metadata()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| Status::unauthenticated("basic credentials required"))?;
                let (user, password) = basic_credentials(header)?;
                let users = self.users.as_ref().ok_or_else(|| Status::internal("no users"))?;
                let read_only = users.verify(&user, &password).ok_or_else(|| {
                    Status::unauthenticated(format!("password authentication failed for user \"{user}\""))
                })?;
                Login { user, read_only }
            }
        };
        let token: String = rand::random::<[u8; 24]>().iter().map(|b| format!("{b:02x}")).collect();
        {
            let mut tokens = lock(&self.tokens);
            let now = Instant::now();
            tokens.retain(|_, (_, expires)| *expires > now);
            tokens.insert(token.clone(), (login, now + TOKEN_LIFETIME));
        }
        let answer = HandshakeResponse { protocol_version: 0, payload: token.clone().into() };
        let mut response: Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>> =
            Response::new(Box::pin(futures::stream::iter([Ok(answer)])));
        let header = MetadataValue::try_from(format!("Bearer {token}")).map_err(|e| Status::internal(e.to_string()))?;
        response.metadata_mut().insert("authorization", header);
        Ok(response)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let login = self.login(&request)?;
        Ok(Response::new(self.flight_info(&login, &query.query, request.into_inner()).await?))
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let login = self.login(&request)?;
        let p = self.prepared(&login, &query.prepared_statement_handle)?;
        let plan = self.bind(&p)?;
        Ok(Response::new(self.plan_info(&login, plan, request.into_inner()).await?))
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let login = self.login(&request)?;
        let (handle, partition) = read_ticket(&ticket.statement_handle)?;
        let gone = || Status::not_found("no such result: it was read already, expired, or is another user's");
        let stored = lock(&self.results).get(&handle).cloned().filter(|s| s.owner == login.user).ok_or_else(gone)?;
        *lock(&stored.touched) = Instant::now();
        let stream = match &stored.body {
            Body::Plan { planned, unread } => {
                let all_read = {
                    let mut unread = lock(unread);
                    match unread.get_mut(partition) {
                        Some(u) if *u => *u = false,
                        _ => return Err(gone()),
                    }
                    unread.iter().all(|u| !u)
                };
                if all_read {
                    lock(&self.results).remove(&handle);
                }
                let rows = self.engine.execute_partition(planned, partition, None).await.map_err(status)?;
                flight_stream(planned.schema.clone(), rows)
            }
            Body::Once { schema, rows } => {
                let rows = lock(rows).take().ok_or_else(gone)?;
                lock(&self.results).remove(&handle);
                flight_stream(schema.clone(), rows)
            }
            Body::Empty => {
                lock(&self.results).remove(&handle);
                let schema = Arc::new(Schema::empty());
                Box::pin(
                    FlightDataEncoderBuilder::new()
                        .with_schema(schema)
                        .build(futures::stream::empty())
                        .map_err(Status::from),
                )
            }
        };
        Ok(Response::new(stream))
    }

    async fn do_put_statement_update(
        &self,
        update: CommandStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let login = self.login(&request)?;
        let cmd = self.command(&login, &update.query)?;
        let span = tracing::info_span!("statement", kind = cmd.kind(), user = %login.user);
        self.run_update(cmd).instrument(span).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let login = self.login(&request)?;
        let stmt = match self.command(&login, &query.query)? {
            Command::Query(stmt) | Command::Statement(stmt) => stmt,
            other => {
                return Err(Status::unimplemented(format!(
                    "{} cannot be prepared; run it as a statement (SQLSTATE 0A000)",
                    other.kind()
                )));
            }
        };
        let plan = self.engine.plan(stmt).await.map_err(status)?;
        let parameters = placeholder_types(&plan).map_err(status)?;
        let parameter_schema = Schema::new(
            parameters
                .iter()
                .enumerate()
                .map(|(i, t)| Field::new(format!("${}", i + 1), t.clone().unwrap_or(DataType::Utf8), true))
                .collect::<Vec<_>>(),
        );
        let dataset_schema = plan.schema().as_arrow().clone();
        let handle = {
            let mut prepared = lock(&self.prepared);
            prepared.retain(|_, p| lock(&p.touched).elapsed() < IDLE_EXPIRY);
            if prepared.values().filter(|p| p.owner == login.user).count() >= MAX_PREPARED_PER_USER {
                return Err(Status::resource_exhausted(format!(
                    "{MAX_PREPARED_PER_USER} prepared statements are open; close some first (SQLSTATE 54000)"
                )));
            }
            let handle = loop {
                let h = rand::random::<u64>();
                if !prepared.contains_key(&h) {
                    break h;
                }
            };
            prepared.insert(
                handle,
                Arc::new(PreparedQuery {
                    owner: login.user.clone(),
                    touched: Mutex::new(Instant::now()),
                    plan,
                    parameters,
                    bound: Mutex::new(Vec::new()),
                }),
            );
            handle
        };
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: Bytes::copy_from_slice(&handle.to_be_bytes()),
            dataset_schema: encode_schema(&dataset_schema)?,
            parameter_schema: encode_schema(&parameter_schema)?,
        })
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let login = self.login(&request)?;
        let p = self.prepared(&login, &query.prepared_statement_handle)?;
        let values = read_parameters(request).await?;
        *lock(&p.bound) = values;
        Ok(DoPutPreparedStatementResult { prepared_statement_handle: Some(query.prepared_statement_handle) })
    }

    async fn do_put_prepared_statement_update(
        &self,
        query: CommandPreparedStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let login = self.login(&request)?;
        let p = self.prepared(&login, &query.prepared_statement_handle)?;
        let values = read_parameters(request).await?;
        if !values.is_empty() {
            *lock(&p.bound) = values;
        }
        let plan = self.bind(&p)?;
        let out = self.engine.execute_plan(plan).await.map_err(status)?;
        match out.take_notices().1 {
            Output::Command { rows, .. } => Ok(rows.map_or(0, |n| n as i64)),
            _ => Ok(0),
        }
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<(), Status> {
        let login = self.login(&request)?;
        let h = prepared_handle(&query.prepared_statement_handle)?;
        let mut prepared = lock(&self.prepared);
        if prepared.get(&h).is_some_and(|p| p.owner == login.user) {
            prepared.remove(&h);
        }
        Ok(())
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.login(&request)?;
        let t = Ticket::new(query.as_any().encode_to_vec());
        Ok(Response::new(info_for(&query.into_builder().schema(), request.into_inner(), [t])?))
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.login(&request)?;
        let mut builder = query.into_builder();
        for c in self.engine.context().catalog_names() {
            builder.append(c);
        }
        Ok(Response::new(one_batch(builder.build())?))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.login(&request)?;
        let t = Ticket::new(query.as_any().encode_to_vec());
        Ok(Response::new(info_for(&query.into_builder().schema(), request.into_inner(), [t])?))
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.login(&request)?;
        let ctx = self.engine.context();
        let mut builder = query.into_builder();
        for c in ctx.catalog_names() {
            if let Some(catalog) = ctx.catalog(&c) {
                for s in catalog.schema_names() {
                    builder.append(&c, s);
                }
            }
        }
        Ok(Response::new(one_batch(builder.build())?))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.login(&request)?;
        let t = Ticket::new(query.as_any().encode_to_vec());
        Ok(Response::new(info_for(&query.into_builder().schema(), request.into_inner(), [t])?))
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.login(&request)?;
        let ctx = self.engine.context();
        let mut builder = query.into_builder();
        for c in ctx.catalog_names() {
            let Some(catalog) = ctx.catalog(&c) else { continue };
            for s in catalog.schema_names() {
                let Some(schema) = catalog.schema(&s) else { continue };
                let mut names = schema.table_names();
                names.sort();
                for t in names {
                    // a table that fails to open (its topic gone) is left out rather than failing the listing
                    let Ok(Some(table)) = schema.table(&t).await else { continue };
                    let kind = match table.table_type() {
                        TableType::View => "VIEW",
                        TableType::Temporary => "LOCAL TEMPORARY",
                        TableType::Base => "TABLE",
                    };
                    builder
                        .append(&c, &s, &t, kind, table.schema().as_ref())
                        .map_err(|e| Status::internal(format!("listing tables: {e}")))?;
                }
            }
        }
        Ok(Response::new(one_batch(builder.build())?))
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.login(&request)?;
        let t = Ticket::new(query.as_any().encode_to_vec());
        Ok(Response::new(info_for(&query.into_builder().schema(), request.into_inner(), [t])?))
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.login(&request)?;
        let mut builder = query.into_builder();
        for t in ["LOCAL TEMPORARY", "TABLE", "VIEW"] {
            builder.append(t);
        }
        Ok(Response::new(one_batch(builder.build())?))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.login(&request)?;
        let t = Ticket::new(query.as_any().encode_to_vec());
        let schema = query.into_builder(&self.sql_info).schema();
        Ok(Response::new(info_for(&schema, request.into_inner(), [t])?))
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.login(&request)?;
        Ok(Response::new(one_batch(query.into_builder(&self.sql_info).build())?))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_padded_or_not() {
        // "alice:wrong" is 11 bytes: its base64 needs one '=' of padding, which Go's client leaves out
        for header in ["Basic YWxpY2U6d3Jvbmc=", "Basic YWxpY2U6d3Jvbmc"] {
            assert_eq!(basic_credentials(header).unwrap(), ("alice".into(), "wrong".into()));
        }
        assert_eq!(basic_credentials("Basic YTpiOmM=").unwrap(), ("a".into(), "b:c".into()));
        for bad in ["Bearer x", "Basic !!!", "Basic YWxpY2U=", "Basic //79"] {
            assert_eq!(basic_credentials(bad).unwrap_err().code(), tonic::Code::Unauthenticated, "{bad}");
        }
    }

    #[test]
    fn tickets_round_trip_and_reject_others() {
        let t = ticket(0x0102_0304_0506_0708, 7);
        let any = arrow_flight::sql::Any::decode(t.ticket).unwrap();
        let query: TicketStatementQuery = any.unpack().unwrap().unwrap();
        assert_eq!(read_ticket(&query.statement_handle).unwrap(), (0x0102_0304_0506_0708, 7));
        for bad in [&b""[..], &[0; 11], &[0; 13]] {
            assert!(read_ticket(bad).is_err());
        }
        assert!(prepared_handle(&[1; 7]).is_err());
    }

    #[test]
    fn placeholders_in_order_and_bounded() {
        use datafusion::logical_expr::{LogicalPlanBuilder, placeholder};
        let plan = LogicalPlanBuilder::empty(false)
            .project(vec![placeholder("$2").alias("b"), placeholder("$1").alias("a")])
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(placeholder_types(&plan).unwrap().len(), 2);
        let plan = LogicalPlanBuilder::empty(false).project(vec![placeholder("$70000")]).unwrap().build().unwrap();
        assert!(placeholder_types(&plan).is_err(), "a placeholder number past the protocol's limit");
    }
}

//! The Postgres wire protocol front end (pgwire): accepts connections, answers the simple and extended query
//! protocols from the [`Engine`], encodes Arrow results as Postgres text or binary values (arrow-pg), and maps every
//! failure to an ErrorResponse with a SQLSTATE. One slow or broken client never affects the others: each connection
//! is its own task, and a client that disconnects drops its query's stream, which stops the Kafka readers.

pub mod auth;
mod cancel;
mod coalesce;
mod copy_out;
mod cursor;
mod error;
pub mod flight;
pub mod metrics;
mod prepared;
pub mod session;

use metrics::Metrics;

use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::Arc;

use arrow_pg::datatypes::df::deserialize_parameters;
use arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch, into_pg_type};
use async_trait::async_trait;
use datafusion::arrow::datatypes::DataType;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
use futures::{Sink, StreamExt, stream};
use pgwire::api::auth::noop::NoopStartupHandler;
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::sasl::scram::ScramAuth;
use pgwire::api::auth::{DefaultServerParameterProvider, StartupHandler};
use pgwire::api::cancel::{CancelHandler, DefaultCancelHandler};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{DataRowEncoder, FieldFormat, FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, ConnectionManager, PgWireServerHandlers, Type};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::types::format::FormatOptions;
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::engine::{Engine, Output};
use crate::error::KfsqlError;
use crate::sql::command::{Command, SessionCommand};
pub use error::to_pg;

/// A statement prepared through the extended protocol: parsed once, and for queries planned once.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub sql: String,
    pub command: Option<Command>,
    /// The logical plan of a query, with `$n` placeholders; None for commands.
    pub plan: Option<LogicalPlan>,
    /// A point lookup on a latest view, recognised once here and answered from memory at each execution.
    pub lookup: Option<Arc<crate::latest::lookup::Lookup>>,
    /// The parameter types, in `$1, $2, …` order.
    pub param_types: Vec<Option<DataType>>,
}

/// pgwire handlers backed by one engine.
pub struct Handlers {
    engine: Engine,
    parser: Arc<KfsqlParser>,
    connections: Arc<ConnectionManager>,
    cancel: Arc<cancel::Cancel>,
    security: auth::Security,
}

impl Handlers {
    pub fn new(engine: Engine, security: auth::Security) -> Self {
        let connections = Arc::new(ConnectionManager::new());
        Self {
            parser: Arc::new(KfsqlParser { engine: engine.clone() }),
            engine,
            cancel: Arc::new(cancel::Cancel::new(DefaultCancelHandler::new(connections.clone()))),
            connections,
            security,
        }
    }

    /// A startup handler for one new connection (the SASL exchange keeps per-connection state).
    fn startup(&self) -> Startup {
        match &self.security.users {
            None => Startup::Trust(Trust { connections: self.connections.clone() }),
            Some(users) => {
                let mut scram = ScramAuth::new(Arc::new(auth::UserAuthSource(users.clone())));
                scram.set_iterations(auth::ITERATIONS);
                Startup::Scram(
                    SASLAuthStartupHandler::new(Arc::new(server_parameters()))
                        .with_scram(scram)
                        .with_connection_manager(self.connections.clone()),
                )
            }
        }
    }
}

/// Connections without passwords (only when explicitly trusted).
pub struct Trust {
    connections: Arc<ConnectionManager>,
}

#[async_trait]
impl NoopStartupHandler for Trust {
    fn connection_manager(&self) -> Option<Arc<ConnectionManager>> {
        Some(self.connections.clone())
    }

    /// pgwire's trusted startup reports its own server version; clients keep the last value reported, so kfsql's
    /// (the version whose catalog it answers, see [`server_parameters`]) follows it before ReadyForQuery.
    async fn post_startup<C>(&self, client: &mut C, _message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        use futures::SinkExt;
        let version = server_parameters().server_version;
        client
            .feed(PgWireBackendMessage::ParameterStatus(pgwire::messages::startup::ParameterStatus::new(
                "server_version".into(),
                version,
            )))
            .await?;
        Ok(())
    }
}

/// The parameters reported at startup: pgwire's, with kfsql's server version (PostgreSQL 15's catalog and
/// behaviour, as `SHOW server_version` and `version()` say).
fn server_parameters() -> DefaultServerParameterProvider {
    let mut p = DefaultServerParameterProvider::default();
    p.server_version = session::DEFAULTS
        .iter()
        .find(|(k, _)| *k == "server_version")
        .map(|(_, v)| v.to_string())
        .unwrap_or_else(|| "15.0".into());
    p
}

/// How connections start: trusted, or SCRAM-SHA-256 passwords.
pub enum Startup {
    Trust(Trust),
    Scram(SASLAuthStartupHandler<DefaultServerParameterProvider>),
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match self {
            Startup::Trust(t) => t.on_startup(client, message).await,
            // libpq leaves the SCRAM user name empty (the startup message names the user): say whose password failed
            Startup::Scram(s) => match s.on_startup(client, message).await {
                Err(PgWireError::InvalidPassword(_)) => {
                    let user = client.metadata().get(pgwire::api::METADATA_USER).cloned().unwrap_or_default();
                    Err(PgWireError::UserError(Box::new(pgwire::error::ErrorInfo::new(
                        "FATAL".into(),
                        "28P01".into(),
                        format!("password authentication failed for user \"{user}\""),
                    ))))
                }
                other => other,
            },
        }
    }
}

/// Serve pg-wire on `listener` until the process ends, trusting every connection.
pub async fn serve(engine: Engine, listener: TcpListener) -> std::io::Result<()> {
    serve_with(engine, listener, auth::Security::default()).await
}

/// Serve pg-wire on `listener` with the given authentication and TLS.
pub async fn serve_with(engine: Engine, listener: TcpListener, security: auth::Security) -> std::io::Result<()> {
    let tls = security.tls.clone();
    let slots =
        Arc::new(tokio::sync::Semaphore::new(security.max_connections.unwrap_or(auth::DEFAULT_MAX_CONNECTIONS)));
    let handlers = Arc::new(ServerHandlers(Arc::new(Handlers::new(engine, security))));
    loop {
        let (mut socket, addr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let _ = socket.write_all(&too_many_clients()).await;
                let _ = socket.shutdown().await;
            });
            Metrics::global().refused();
            continue;
        };
        let (handlers, tls) = (handlers.clone(), tls.clone());
        let counted = Metrics::global().connection();
        static NEXT_CONNECTION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = NEXT_CONNECTION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // every log line of the connection's statements carries its id and peer
        let span = tracing::info_span!("connection", conn = id, peer = %addr);
        tokio::spawn(
            async move {
                let (_counted, _slot) = (counted, slot);
                tracing::debug!("connected");
                match pgwire::tokio::process_socket(socket, tls, handlers).await {
                    Ok(()) => tracing::debug!("disconnected"),
                    Err(e) => tracing::debug!("disconnected: {e}"),
                }
            }
            .instrument(span),
        );
    }
}

/// PostgreSQL's answer past `max_connections`, sent before reading anything: an ErrorResponse, FATAL 53300.
fn too_many_clients() -> Vec<u8> {
    let mut body = Vec::new();
    for (field, value) in [(b'S', "FATAL"), (b'V', "FATAL"), (b'C', "53300"), (b'M', "sorry, too many clients already")]
    {
        body.push(field);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut message = vec![b'E'];
    message.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    message.extend(body);
    message
}

/// Bind `addr` and serve; returns the bound address (useful with port 0) and the serving task.
pub async fn start(
    engine: Engine,
    addr: &str,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    start_with(engine, addr, auth::Security::default()).await
}

/// [`start`] with authentication and TLS.
pub async fn start_with(
    engine: Engine,
    addr: &str,
    security: auth::Security,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((local, tokio::spawn(serve_with(engine, listener, security))))
}

struct ServerHandlers(Arc<Handlers>);

impl PgWireServerHandlers for ServerHandlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.0.clone()
    }
    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.0.clone()
    }
    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::new(self.0.startup())
    }
    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        self.0.cancel.clone()
    }
}

impl Handlers {
    /// Run one statement for a client and turn the result into a pgwire response, counted in [`Metrics`].
    async fn run<C>(
        &self,
        client: &mut C,
        cmd: Command,
        plan: Option<LogicalPlan>,
        format: &Format,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        static NEXT_STATEMENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = NEXT_STATEMENT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let span = tracing::info_span!("statement", stmt = id, kind = cmd.kind());
        let start = std::time::Instant::now();
        // a panic while answering (the statement's task is caught by its runtime; this is the connection's own
        // code) fails the statement with XX000 instead of dropping the connection without a word
        let answered =
            futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(self.answer(client, cmd, plan, format)))
                .instrument(span.clone())
                .await;
        let mut response = answered.unwrap_or_else(|_| Err(to_pg(KfsqlError::panicked())));
        let sqlstate = match &mut response {
            // rows may still fail while they stream: the stream counts the statement when it ends
            Ok(Response::Query(q)) => {
                let rows = std::mem::replace(q.data_rows(), Box::pin(stream::empty()));
                *q.data_rows() = Box::pin(metrics::Counted::new(rows, start, span));
                return response;
            }
            Ok(Response::Error(info)) => Some(info.code.as_str()),
            Err(PgWireError::UserError(info)) => Some(info.code.as_str()),
            Err(_) => Some("08006"), // the connection failed while answering
            Ok(_) => None,
        };
        metrics::ended(&span, sqlstate, start.elapsed());
        response
    }

    /// Answer one command: the rights check, then the connection's own state or the engine, by the command's kind.
    async fn answer<C>(
        &self,
        client: &mut C,
        cmd: Command,
        plan: Option<LogicalPlan>,
        format: &Format,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        self.may_run(client, &cmd)?;
        let limit = session::statement_timeout(client.metadata());
        match cmd {
            Command::Session(cmd) => Ok(self.session_command(client, cmd, format)),
            Command::Prepare { statement, .. } => {
                use datafusion::logical_expr::{Prepare, Statement as PlanStatement};
                match self.engine.plan_within(statement, limit).await.map_err(to_pg)? {
                    LogicalPlan::Statement(PlanStatement::Prepare(Prepare { name, fields, input })) => {
                        let plan = input.as_ref().clone();
                        prepared_statements(client)
                            .prepare(&name, prepared::SqlPrepared { fields, plan })
                            .map_err(to_pg)?;
                        Ok(Response::Execution(Tag::new("PREPARE")))
                    }
                    _ => Err(to_pg(KfsqlError::Internal("PREPARE planned into something else".into()))),
                }
            }
            Command::Execute(statement) => {
                use datafusion::logical_expr::{Execute, Statement as PlanStatement};
                match self.engine.plan_within(statement, limit).await.map_err(to_pg)? {
                    LogicalPlan::Statement(PlanStatement::Execute(Execute { name, parameters })) => {
                        let prepared = prepared_statements(client).get(&name).map_err(to_pg)?;
                        let plan = self.engine.bind(&prepared.plan, &prepared.fields, parameters).map_err(to_pg)?;
                        let out = self.engine.execute_plan_within(plan, limit).await.map_err(to_pg)?;
                        self.output_response(client, out, format).await
                    }
                    _ => Err(to_pg(KfsqlError::Internal("EXECUTE planned into something else".into()))),
                }
            }
            Command::Deallocate(name) => {
                prepared_statements(client).deallocate(name.as_deref()).map_err(to_pg)?;
                Ok(Response::Execution(Tag::new("DEALLOCATE")))
            }
            Command::Declare { name, hold, query } => {
                let plan = match plan {
                    Some(plan) => plan,
                    None => self
                        .engine
                        .plan_within(DFStatement::Statement(Box::new(SqlStatement::Query(query))), limit)
                        .await
                        .map_err(to_pg)?,
                };
                let (notices, out) = self.engine.execute_plan_within(plan, limit).await.map_err(to_pg)?.take_notices();
                notify(client, notices).await?;
                match out {
                    Output::Rows(rows) => cursors(client).declare(&name, rows, hold).map_err(to_pg)?,
                    Output::Command { .. } | Output::Noticed { .. } => {
                        return Err(to_pg(KfsqlError::Unsupported("a cursor over a statement without rows".into())));
                    }
                }
                Ok(Response::Execution(Tag::new("DECLARE CURSOR")))
            }
            Command::Fetch { name, direction } => {
                let count = cursor::fetch_count(&direction).map_err(to_pg)?;
                let (schema, batches) = cursors(client).fetch(&name, count).await.map_err(to_pg)?;
                let rows = RecordBatchStreamAdapter::new(schema, stream::iter(batches.into_iter().map(Ok)));
                rows_response(client, Box::pin(rows), format, None).map(|r| match r {
                    Response::Query(mut q) => {
                        q.set_command_tag("FETCH");
                        Response::Query(q)
                    }
                    other => other,
                })
            }
            Command::Close(which) => {
                cursors(client).close(&which).map_err(to_pg)?;
                Ok(Response::Execution(Tag::new("CLOSE CURSOR")))
            }
            Command::CopyOut(copy) => {
                let query = Command::Query(DFStatement::Statement(Box::new(SqlStatement::Query(copy.query.clone()))));
                let (notices, output) = self.engine.execute_within(query, limit).await.map_err(to_pg)?.take_notices();
                notify(client, notices).await?;
                match output {
                    Output::Rows(rows) => copy_out::response(&copy, rows),
                    Output::Command { .. } | Output::Noticed { .. } => {
                        Err(to_pg(KfsqlError::Unsupported("COPY of a statement that returns no rows".into())))
                    }
                }
            }
            cmd => {
                let out = match plan {
                    Some(plan) => self.engine.execute_plan_within(plan, limit).await,
                    None => self.engine.execute_within(cmd, limit).await,
                }
                .map_err(to_pg)?;
                self.output_response(client, out, format).await
            }
        }
    }

    /// The rights check, made once per command (for PREPARE, on the statement prepared): a read-only user may not
    /// run a command that writes (42501).
    fn may_run<C: ClientInfo>(&self, client: &C, cmd: &Command) -> PgWireResult<()> {
        let user = client.metadata().get(pgwire::api::METADATA_USER);
        if self.security.is_read_only(user.map(String::as_str)) && cmd.writes() {
            return Err(to_pg(KfsqlError::PermissionDenied(format!(
                "user \"{}\" is read-only: it may query but not create, drop, insert or export",
                user.map(String::as_str).unwrap_or_default()
            ))));
        }
        Ok(())
    }

    /// A statement's output as a pgwire response: its NOTICEs first, then rows or a command tag.
    async fn output_response<C>(&self, client: &mut C, out: Output, format: &Format) -> PgWireResult<Response>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let (notices, out) = out.take_notices();
        notify(client, notices).await?;
        match out {
            Output::Rows(stream) => rows_response(client, stream, format, Some(self.cancel.statement(client))),
            Output::Command { tag, rows } => {
                let mut t = if tag.starts_with("INSERT") { Tag::new("INSERT").with_oid(0) } else { Tag::new(&tag) };
                if let Some(n) = rows {
                    t = t.with_rows(n);
                }
                Ok(Response::Execution(t))
            }
            Output::Noticed { .. } => Err(to_pg(KfsqlError::Internal("notices left wrapped".into()))),
        }
    }

    /// A session statement, answered from and applied to the connection's own state.
    fn session_command<C: ClientInfo>(&self, client: &mut C, cmd: SessionCommand, format: &Format) -> Response {
        match cmd {
            SessionCommand::Set { name, value } => match session::check(&name, &value) {
                Ok(value) => {
                    session::set(client.metadata_mut(), &name, &value);
                    Response::Execution(Tag::new("SET"))
                }
                Err(e) => Response::Error(Box::new(pgwire::error::ErrorInfo::new(
                    "ERROR".into(),
                    e.sqlstate().into(),
                    e.to_string(),
                ))),
            },
            SessionCommand::Reset(name) => {
                session::reset(client.metadata_mut(), &name);
                Response::Execution(Tag::new("RESET"))
            }
            SessionCommand::Show(name) => match session::show(client.metadata(), &name) {
                Some(v) => single_text_row(&name, &v, format),
                None => Response::Error(Box::new(pgwire::error::ErrorInfo::new(
                    "ERROR".into(),
                    "42704".into(),
                    format!("unrecognized configuration parameter \"{name}\""),
                ))),
            },
            SessionCommand::Begin => Response::TransactionStart(Tag::new("BEGIN")),
            SessionCommand::Commit => {
                cursors(client).end_transaction();
                Response::TransactionEnd(Tag::new("COMMIT"))
            }
            SessionCommand::Rollback => {
                cursors(client).end_transaction();
                Response::TransactionEnd(Tag::new("ROLLBACK"))
            }
            SessionCommand::RollbackToSavepoint => Response::TransactionStart(Tag::new("ROLLBACK")),
            SessionCommand::Discard => {
                // the session's own state goes: cursors, prepared statements and settings
                client.session_extensions().insert(cursor::Cursors::default());
                client.session_extensions().insert(prepared::PreparedStatements::default());
                session::reset(client.metadata_mut(), "all");
                Response::Execution(Tag::new("DISCARD ALL"))
            }
            SessionCommand::NoOp(tag) => Response::Execution(Tag::new(tag)),
        }
    }
}

/// The connection's cursors: they live in its session state, so they die with it.
fn cursors<C: ClientInfo>(client: &C) -> Arc<cursor::Cursors> {
    client.session_extensions().get_or_insert_with(cursor::Cursors::default)
}

/// The connection's SQL-level prepared statements, in its session state like its cursors.
fn prepared_statements<C: ClientInfo>(client: &C) -> Arc<prepared::PreparedStatements> {
    client.session_extensions().get_or_insert_with(prepared::PreparedStatements::default)
}

/// Send `notices` to the client as NoticeResponses (SQLSTATE 01000, warning), ahead of the statement's answer.
async fn notify<C>(client: &mut C, notices: Vec<String>) -> PgWireResult<()>
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    for n in notices {
        let info = pgwire::error::ErrorInfo::new("WARNING".into(), "01000".into(), n);
        futures::SinkExt::feed(client, PgWireBackendMessage::NoticeResponse(info.into())).await?;
    }
    Ok(())
}

fn single_text_row(name: &str, value: &str, format: &Format) -> Response {
    let fields = Arc::new(vec![FieldInfo::new(name.to_string(), None, None, Type::TEXT, format.format_for(0))]);
    let mut enc = DataRowEncoder::new(fields.clone());
    let row = enc.encode_field(&value.to_string()).map(|_| enc.take_row());
    Response::Query(QueryResponse::new(fields, stream::iter(vec![row])))
}

#[async_trait]
impl SimpleQueryHandler for Handlers {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let stmts = self.engine.parse(query).map_err(to_pg)?;
        if stmts.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        let mut out = Vec::with_capacity(stmts.len());
        for stmt in stmts {
            let answered = match Command::classify(stmt) {
                Ok(cmd) => self.run(client, cmd, None, &Format::UnifiedText).await,
                Err(e) => Err(to_pg(e)),
            };
            match answered {
                Ok(r) => out.push(r),
                Err(PgWireError::UserError(info)) => {
                    // Postgres stops a multi-statement query at the first error.
                    out.push(Response::Error(info));
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

/// Parses and plans statements for the extended protocol.
pub struct KfsqlParser {
    engine: Engine,
}

#[async_trait]
impl QueryParser for KfsqlParser {
    type Statement = Prepared;

    async fn parse_sql<C>(&self, client: &C, sql: &str, _types: &[Option<Type>]) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let mut stmts = self.engine.parse(sql).map_err(to_pg)?;
        if stmts.len() > 1 {
            return Err(to_pg(KfsqlError::Syntax("cannot insert multiple commands into a prepared statement".into())));
        }
        let Some(stmt) = stmts.pop() else { return Ok(None) };
        let command = Command::classify(stmt).map_err(to_pg)?;
        // a query's plan, made now for its parameters and result shape (a cursor's too, for Describe of its portal)
        let plan = match command.query_to_plan() {
            Some(query) => Some(
                self.engine.plan_within(query, session::statement_timeout(client.metadata())).await.map_err(to_pg)?,
            ),
            None => None,
        };
        let lookup = plan.as_ref().and_then(crate::latest::lookup::Lookup::from_plan).map(Arc::new);
        let param_types = ordered_parameter_types(plan.as_ref())?;
        Ok(Some(Prepared { sql: sql.to_string(), command: Some(command), plan, lookup, param_types }))
    }

    fn get_parameter_types(&self, stmt: &Prepared) -> PgWireResult<Vec<Type>> {
        Ok(ordered_parameter_types(stmt.plan.as_ref())?
            .into_iter()
            .map(|t| t.and_then(|t| into_pg_type(&t).ok()).unwrap_or(Type::UNKNOWN))
            .collect())
    }

    fn get_result_schema(&self, stmt: &Prepared, format: Option<&Format>) -> PgWireResult<Vec<FieldInfo>> {
        if matches!(stmt.command, Some(Command::Declare { .. })) {
            return Ok(Vec::new());
        }
        match &stmt.plan {
            Some(plan) => {
                let default = Format::UnifiedText;
                arrow_schema_to_pg_fields(plan.schema().as_arrow(), format.unwrap_or(&default), None)
                    .map_err(error::encoding_error)
            }
            None => Ok(match &stmt.command {
                Some(Command::Session(SessionCommand::Show(name))) => {
                    vec![FieldInfo::new(
                        name.clone(),
                        None,
                        None,
                        Type::TEXT,
                        format.map(|f| f.format_for(0)).unwrap_or(FieldFormat::Text),
                    )]
                }
                _ => Vec::new(),
            }),
        }
    }
}

/// Rows as a query response, encoded in the client's formats as they stream; a fired `cancel` ends them with 57014.
fn rows_response<C: ClientInfo>(
    client: &C,
    rows: SendableRecordBatchStream,
    format: &Format,
    cancel: Option<tokio_util::sync::CancellationToken>,
) -> PgWireResult<Response> {
    let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
    let fields =
        Arc::new(arrow_schema_to_pg_fields(&rows.schema(), format, Some(options)).map_err(error::encoding_error)?);
    let f = fields.clone();
    let encoded = rows
        .map(move |batch| -> Box<dyn Iterator<Item = PgWireResult<_>> + Send + Sync> {
            match batch {
                Ok(b) => Box::new(encode_recordbatch(f.clone(), b).map(|r| r.map_err(error::encoding_error))),
                Err(e) => Box::new(std::iter::once(Err(error::df_to_pg(e)))),
            }
        })
        .flat_map(stream::iter);
    let Some(token) = cancel else { return Ok(Response::Query(QueryResponse::new(fields, encoded))) };
    let fired = token.clone();
    // marks the statement done (for pruning) when the rows end or are dropped
    let done = token.clone().drop_guard();
    let encoded = encoded.take_until(token.cancelled_owned()).chain(
        stream::once(async move {
            let cancelled = fired.is_cancelled();
            drop(done);
            cancelled
        })
        .filter_map(|cancelled| async move {
            cancelled.then(|| {
                Err(PgWireError::UserError(Box::new(pgwire::error::ErrorInfo::new(
                    "ERROR".into(),
                    "57014".into(),
                    "canceling statement due to user request".into(),
                ))))
            })
        }),
    );
    Ok(Response::Query(QueryResponse::new(fields, encoded)))
}

/// The most named statements, and the most named portals, one connection may keep through the extended protocol
/// (as many as SQL `PREPARE`d statements: see [`prepared::MAX_PER_CONNECTION`]).
const MAX_PROTOCOL_STATEMENTS: usize = prepared::MAX_PER_CONNECTION;

/// Whether a connection holding `count` named `what` may store one under `name`: the unnamed one and a name it
/// already holds replace what is there; a new name past [`MAX_PROTOCOL_STATEMENTS`] is refused (54000).
fn room_for(name: &str, known: bool, count: usize, what: &str) -> PgWireResult<()> {
    if name.is_empty() || known || count < MAX_PROTOCOL_STATEMENTS {
        return Ok(());
    }
    Err(to_pg(KfsqlError::LimitExceeded(format!(
        "at most {MAX_PROTOCOL_STATEMENTS} {what} per connection: close some first"
    ))))
}

/// The plan's parameter types in `$1, $2, …` order.
/// The most parameters a Bind can carry (its count is an unsigned 16-bit field), as in PostgreSQL.
const MAX_PARAMETERS: usize = 65_535;

fn ordered_parameter_types(plan: Option<&LogicalPlan>) -> PgWireResult<Vec<Option<DataType>>> {
    let Some(plan) = plan else { return Ok(Vec::new()) };
    let types = plan.get_parameter_types().map_err(error::df_to_pg)?;
    let mut indexed: Vec<(usize, Option<DataType>)> = types
        .into_iter()
        .filter_map(|(name, t)| name.trim_start_matches('$').parse::<usize>().ok().map(|i| (i, t)))
        .collect();
    indexed.sort_by_key(|(i, _)| *i);
    let n = indexed.last().map(|(i, _)| *i).unwrap_or(0);
    // the slots are sized by the highest placeholder a client wrote: bounded by what the protocol can bind
    if n > MAX_PARAMETERS {
        return Err(PgWireError::UserError(Box::new(pgwire::error::ErrorInfo::new(
            "ERROR".into(),
            "42P02".into(),
            format!("there is no parameter ${n}: a statement binds at most {MAX_PARAMETERS} parameters"),
        ))));
    }
    let mut out = vec![None; n];
    for (i, t) in indexed {
        if i >= 1 {
            out[i - 1] = t;
        }
    }
    Ok(out)
}

#[async_trait]
impl ExtendedQueryHandler for Handlers {
    type Statement = Prepared;
    type QueryParser = KfsqlParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.parser.clone()
    }

    /// A named statement past the connection's [`MAX_PROTOCOL_STATEMENTS`] is refused (54000); otherwise as
    /// pgwire does: parse (and plan), store, `ParseComplete` (written out at the next `Sync`).
    async fn on_parse<C>(&self, client: &mut C, message: pgwire::messages::extendedquery::Parse) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let name = message.name.clone().unwrap_or_default();
        let store = client.portal_store();
        room_for(&name, store.get_statement(&name).is_some(), store.statement_count(), "prepared statements")?;
        match pgwire::api::stmt::StoredStatement::parse(client, &message, self.parser.clone()).await? {
            Some(stmt) => client.portal_store().put_statement(Arc::new(stmt)),
            None => client.portal_store().put_empty_statement(&name),
        }
        // as PostgreSQL: ParseComplete goes out with the answers to what follows, at the next Sync or Flush
        futures::SinkExt::feed(
            client,
            PgWireBackendMessage::ParseComplete(pgwire::messages::extendedquery::ParseComplete::new()),
        )
        .await?;
        Ok(())
    }

    /// A named portal past the connection's [`MAX_PROTOCOL_STATEMENTS`] is refused (54000); `BindComplete` waits for
    /// the `Sync` flush (see [`coalesce`]).
    async fn on_bind<C>(&self, client: &mut C, message: pgwire::messages::extendedquery::Bind) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let portal = message.portal_name.clone().unwrap_or_default();
        let store = client.portal_store();
        room_for(&portal, store.get_portal(&portal).is_some(), store.portal_count(), "open portals")?;
        coalesce::bind(client, message).await
    }

    /// `ParameterDescription` / `RowDescription` / `NoData` wait for the `Sync` flush too, as in PostgreSQL (pgwire
    /// flushed them at once: pgbench's `Bind, Describe, Execute, Sync` cost two writes per lookup).
    async fn on_describe<C>(
        &self,
        client: &mut C,
        message: pgwire::messages::extendedquery::Describe,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        self._on_describe(&mut coalesce::Coalesced(client), message).await
    }

    /// The rows and `CommandComplete` wait for the `Sync` flush (see [`coalesce`]).
    async fn on_execute<C>(&self, client: &mut C, message: pgwire::messages::extendedquery::Execute) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        self._on_execute(&mut coalesce::Coalesced(client), message).await
    }

    async fn do_query<C>(&self, client: &mut C, portal: &Portal<Prepared>, _max_rows: usize) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let prepared = &portal.statement.statement;
        if let Some(lookup) = &prepared.lookup {
            let refs: Vec<Option<&DataType>> = prepared.param_types.iter().map(|t| t.as_ref()).collect();
            let params = deserialize_parameters(portal, &refs)?;
            let values: Vec<datafusion::scalar::ScalarValue> = match params {
                datafusion::common::ParamValues::List(v) => v.into_iter().map(|p| p.value).collect(),
                datafusion::common::ParamValues::Map(_) => Vec::new(),
            };
            let batch = lookup.run_with(&values).map_err(to_pg)?;
            let schema = batch.schema();
            let rows = RecordBatchStreamAdapter::new(schema, stream::once(async { Ok(batch) }));
            return rows_response(client, Box::pin(rows), &portal.result_column_format, None);
        }
        let Some(cmd) = prepared.command.clone() else { return Ok(Response::EmptyQuery) };
        let plan = match &prepared.plan {
            Some(plan) => {
                let refs: Vec<Option<&DataType>> = prepared.param_types.iter().map(|t| t.as_ref()).collect();
                let params = deserialize_parameters(portal, &refs)?;
                Some(plan.clone().replace_params_with_values(&params).map_err(error::df_to_pg)?)
            }
            None => None,
        };
        let cursor = match &cmd {
            Command::Declare { name, query, .. } => Some((name.clone(), query.to_string())),
            _ => None,
        };
        let response = self.run(client, cmd, plan, &portal.result_column_format).await?;
        if let Some((name, query)) = cursor {
            // the cursor is a portal too: clients Describe it by name before they FETCH
            let parse = pgwire::messages::extendedquery::Parse::new(Some(name.clone()), query, Vec::new());
            if let Some(stored) = pgwire::api::stmt::StoredStatement::parse(client, &parse, self.parser.clone()).await?
            {
                client.portal_store().put_portal(Arc::new(Portal::new_cursor(name, Arc::new(stored))));
            }
        }
        Ok(response)
    }
}

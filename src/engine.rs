//! The query engine: one DataFusion `SessionContext` with the Kafka table factory, `pg_catalog`, the `kfsql`
//! system schema and the catalog topic behind it. It turns SQL text into [`Output`]s — row streams or command
//! tags — under the query timeout. The pg-wire server and the CLI both go through here.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::TableReference;
use datafusion::error::Result as DfResult;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::{DdlStatement, DmlStatement, LogicalPlan, WriteOp};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{RecordBatchStream, collect, execute_stream};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
use datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use futures::{Stream, StreamExt, TryStreamExt};

use crate::catalog::{CatalogChange, CatalogStore};
use crate::error::{KfsqlError, Result};
use crate::kafka::KafkaCluster;
use crate::scheduler::Lane;
use crate::sql;
use crate::sql::command::Command;
use crate::table::{KafkaTable, KafkaTableFactory, TableDefinition, Tables};

/// Settings of one engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The compacted topic that holds table definitions.
    pub catalog_topic: String,
    /// Longest a statement may run (planning and reading its rows).
    pub query_timeout: Duration,
    /// The database name clients connect to (DataFusion's catalog name).
    pub database: String,
    /// Where `COPY … TO 'file'` writes; paths are relative to it and may not leave it.
    pub export_dir: PathBuf,
    /// Memory the operators that hold data (ASOF right sides, sorts, aggregations) may use together; a query that
    /// needs more fails with a resources-exhausted error instead of exhausting the machine. None: unlimited.
    pub memory_limit: Option<usize>,
    /// The most partitions (so, concurrent tasks on the query runtime) one statement's plan may use: with fewer
    /// than the cores, a heavy statement leaves workers to the others. None: one per core.
    pub statement_workers: Option<usize>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            catalog_topic: "_kfsql_catalog".into(),
            query_timeout: Duration::from_secs(60),
            database: "kfsql".into(),
            export_dir: PathBuf::from("exports"),
            memory_limit: None,
            statement_workers: None,
        }
    }
}

/// What a statement produced.
pub enum Output {
    /// Rows, streamed.
    Rows(SendableRecordBatchStream),
    /// A command tag such as `CREATE EXTERNAL TABLE` and, for DML, a row count.
    Command { tag: String, rows: Option<usize> },
    /// Either of the above, with NOTICEs a client should see before it (e.g. history Kafka no longer holds).
    Noticed { notices: Vec<String>, output: Box<Output> },
}

impl Output {
    /// `output`, with `notices` attached when there are any.
    pub fn with_notices(notices: Vec<String>, output: Output) -> Output {
        if notices.is_empty() { output } else { Output::Noticed { notices, output: Box::new(output) } }
    }

    /// The notices, and the rows or command they came with.
    pub fn take_notices(self) -> (Vec<String>, Output) {
        match self {
            Output::Noticed { mut notices, output } => {
                let (more, output) = output.take_notices();
                notices.extend(more);
                (notices, output)
            }
            other => (Vec::new(), other),
        }
    }
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Output::Rows(s) => write!(f, "Rows({:?})", s.schema()),
            Output::Command { tag, rows } => write!(f, "Command({tag}, {rows:?})"),
            Output::Noticed { notices, output } => write!(f, "Noticed({notices:?}, {output:?})"),
        }
    }
}

/// A handle to a running engine; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
}

struct EngineInner {
    ctx: SessionContext,
    factory: Arc<KafkaTableFactory>,
    catalog: CatalogStore,
    config: EngineConfig,
    defs: RwLock<BTreeMap<String, TableDefinition>>,
    /// Held while a table is (re)registered in the session context.
    registering: std::sync::Mutex<()>,
    /// datafusion-pg-catalog's statement rewrites kfsql applies (see [`sql::pg_rewrite::compat_rules`]).
    compat: Vec<Arc<dyn datafusion_pg_catalog::sql::rules::SqlStatementRewriteRule>>,
    /// The pg_catalog relations that hold no rows, for [`sql::pg_rewrite::rewrite_with`].
    empty_relations: std::collections::HashSet<String>,
    latest: Arc<crate::latest::LatestViews>,
    pipelines: Arc<crate::pipeline::Pipelines>,
    /// Rows written into files by `COPY … TO` so far.
    exported: crate::export::RowsExported,
    /// This engine, as the pipelines it starts see it.
    me: std::sync::Weak<dyn Tables>,
}

impl Engine {
    /// Build the engine, read the catalog topic to its end and start following it.
    pub async fn start(cluster: Arc<KafkaCluster>, config: EngineConfig) -> Result<Self> {
        let factory = Arc::new(KafkaTableFactory::new(cluster.clone(), config.query_timeout));
        let mut session_config = SessionConfig::new()
            .with_information_schema(true)
            .with_default_catalog_and_schema(&config.database, "public");
        if let Some(n) = config.statement_workers {
            session_config = session_config.with_target_partitions(n.max(1));
        }
        let mut runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new();
        if let Some(limit) = config.memory_limit {
            runtime =
                runtime.with_memory_pool(Arc::new(datafusion::execution::memory_pool::GreedyMemoryPool::new(limit)));
        }
        let runtime = runtime.build_arc().map_err(KfsqlError::from_datafusion)?;
        let exported = crate::export::RowsExported::default();
        let state = SessionStateBuilder::new()
            .with_config(session_config)
            .with_runtime_env(runtime)
            .with_default_features()
            .with_table_factory("KAFKA".into(), factory.clone())
            .with_query_planner(Arc::new(crate::asof::AsofQueryPlanner))
            .with_optimizer_rules(optimizer_rules())
            .with_physical_optimizer_rule(Arc::new(crate::asof::KeepCopartitioned))
            .with_physical_optimizer_rule(Arc::new(crate::export::CountExported(exported.clone())))
            .with_analyzer_rule(Arc::new(sql::checked::CheckedArithmetic::new()))
            .build();
        let ctx = SessionContext::new_with_state(state);
        datafusion_pg_catalog::setup_pg_catalog(&ctx, &config.database, EmptyContextProvider)
            .map_err(|e| KfsqlError::Internal(format!("setting up pg_catalog: {e}")))?;
        let mut empty_relations = std::collections::HashSet::new();
        if let Some(db) = ctx.catalog(&config.database)
            && let Some(pg) = db.schema("pg_catalog")
        {
            let pg = Arc::new(sql::pg_catalog::PgCatalog::new(pg));
            empty_relations = pg.empty_relations().await;
            db.register_schema("pg_catalog", pg)?;
        }
        sql::pg_functions::register(&ctx);
        sql::bounded::register(&ctx);
        ctx.register_relation_planner(Arc::new(crate::asof::AsofRelationPlanner))?;
        let catalog = CatalogStore::new(cluster.clone(), &config.catalog_topic);
        let pipelines = crate::pipeline::Pipelines::new(crate::pipeline::checkpoint::CheckpointStore::new(
            crate::catalog::KeyedTopic::new(cluster.clone(), &format!("{}_pipelines", config.catalog_topic)),
        ));
        ctx.register_relation_planner(crate::pipeline::window::WindowRelationPlanner::new(
            ctx.state().catalog_list().clone(),
            &config.database,
        ))?;
        let latest = crate::latest::LatestViews::new(cluster);
        ctx.register_udtf(
            crate::latest::AS_OF_FUNCTION,
            Arc::new(crate::latest::LatestAsOfFunction { views: Arc::downgrade(&latest) }),
        );
        let inner = Arc::new_cyclic(|weak: &std::sync::Weak<EngineInner>| {
            let db = ctx.catalog(&config.database);
            if let Some(db) = db {
                let tables: std::sync::Weak<dyn Tables> = weak.clone();
                let handles = crate::system::Handles {
                    tables,
                    latest: Arc::downgrade(&latest),
                    pipelines: Arc::downgrade(&pipelines),
                };
                if let Ok(schema) = crate::system::schema(handles) {
                    let _ = db.register_schema("kfsql", schema);
                }
                let _ = db.register_schema("latest", latest.schema_provider());
            }
            EngineInner {
                ctx,
                factory,
                catalog,
                config,
                defs: RwLock::new(BTreeMap::new()),
                registering: std::sync::Mutex::new(()),
                compat: sql::pg_rewrite::compat_rules(),
                empty_relations,
                latest,
                pipelines,
                exported,
                me: weak.clone(),
            }
        });

        inner.catalog.ensure_topic().await?;
        let (defs, next) = inner.catalog.load().await?;
        for def in defs.into_values() {
            let name = def.name.clone();
            if let Err(e) = inner.apply(CatalogChange::Upsert(def)) {
                tracing::warn!("table '{name}' from the catalog could not be registered: {e}");
            }
        }
        let weak = Arc::downgrade(&inner);
        inner.catalog.follow(next, move |change| match weak.upgrade() {
            Some(engine) => {
                if let Some(c) = change
                    && let Err(e) = engine.apply(c)
                {
                    tracing::warn!("catalog change not applied: {e}");
                }
                true
            }
            None => false,
        })?;
        Ok(Engine { inner })
    }

    pub fn context(&self) -> &SessionContext {
        &self.inner.ctx
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// The latest views of online tables.
    pub fn latest(&self) -> &Arc<crate::latest::LatestViews> {
        &self.inner.latest
    }

    /// The pipelines of materialized views.
    pub fn pipelines(&self) -> &Arc<crate::pipeline::Pipelines> {
        &self.inner.pipelines
    }

    /// The factory of Kafka tables: their cluster and scan counters.
    pub fn factory(&self) -> &Arc<KafkaTableFactory> {
        &self.inner.factory
    }

    /// A prepared plan with its placeholders replaced by `parameters` (an EXECUTE's values: literals, simplified
    /// first so `-1` or `'a' || 'b'` are literals too), cast to the declared `fields` when there are any.
    pub fn bind(
        &self,
        plan: &LogicalPlan,
        fields: &[datafusion::arrow::datatypes::FieldRef],
        parameters: Vec<datafusion::logical_expr::Expr>,
    ) -> Result<LogicalPlan> {
        use datafusion::logical_expr::simplify::SimplifyContext;
        use datafusion::optimizer::simplify_expressions::ExprSimplifier;
        let state = self.inner.ctx.state();
        let context = SimplifyContext::builder()
            .with_schema(Arc::clone(plan.schema()))
            .with_config_options(Arc::clone(state.config_options()))
            .with_query_execution_start_time(state.execution_props().query_execution_start_time)
            .build();
        let simplifier = ExprSimplifier::new(context);
        let mut values = Vec::with_capacity(parameters.len());
        for p in parameters {
            match simplifier.simplify(p).map_err(KfsqlError::from_datafusion)? {
                datafusion::logical_expr::Expr::Literal(scalar, metadata) => {
                    values.push(datafusion::common::metadata::ScalarAndMetadata::new(scalar, metadata))
                }
                other => {
                    return Err(KfsqlError::Unsupported(format!("EXECUTE parameter {other}: only constant values")));
                }
            }
        }
        let expected = plan.get_parameter_types().map_err(KfsqlError::from_datafusion)?.len().max(fields.len());
        if values.len() != expected {
            return Err(KfsqlError::Syntax(format!(
                "wrong number of parameters for prepared statement: expected {expected}, got {}",
                values.len()
            )));
        }
        if !fields.is_empty() {
            values = values
                .into_iter()
                .zip(fields)
                .map(|(v, f)| v.cast_storage_to(f.data_type()))
                .collect::<DfResult<_>>()
                .map_err(KfsqlError::from_datafusion)?;
        }
        plan.clone()
            .replace_params_with_values(&datafusion::common::ParamValues::List(values))
            .map_err(KfsqlError::from_datafusion)
    }

    /// Rows `COPY … TO 'file'` statements have written so far (all of them, since the engine started).
    pub fn rows_exported(&self) -> u64 {
        self.inner.exported.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Bytes reserved in the statement memory pool now.
    pub fn memory_reserved(&self) -> usize {
        self.inner.ctx.runtime_env().memory_pool.reserved()
    }

    /// Definitions of all Kafka tables, by name.
    pub fn definitions(&self) -> BTreeMap<String, TableDefinition> {
        self.inner.definitions()
    }

    /// Parse SQL text into statements with kfsql's dialect (Postgres, plus CREATE EXTERNAL TABLE, COPY, EXPLAIN and
    /// time travel), or else as plain PostgreSQL (`COPY (query) TO STDOUT`, which DataFusion's COPY does not read).
    /// The rewrites that give Postgres meaning to what DataFusion reads differently happen when a statement is
    /// prepared for planning.
    pub fn parse(&self, sql_text: &str) -> Result<Vec<DFStatement>> {
        match sql::parse(sql_text) {
            Ok(stmts) => Ok(stmts.into_iter().collect()),
            // too deep for either parser: the nesting check runs before kfsql's, and must not be bypassed here
            Err(e @ KfsqlError::TooComplex(_)) => Err(e),
            Err(first) => datafusion::sql::sqlparser::parser::Parser::parse_sql(
                &datafusion::sql::sqlparser::dialect::PostgreSqlDialect {},
                sql_text,
            )
            .map(|stmts| stmts.into_iter().map(|s| DFStatement::Statement(Box::new(s))).collect())
            .map_err(|_| first),
        }
    }

    /// Run every statement of `sql_text`, collecting the rows of each.
    pub async fn query(&self, sql_text: &str) -> Result<Vec<(Option<SchemaRef>, Vec<RecordBatch>, String)>> {
        let mut out = Vec::new();
        for stmt in self.parse(sql_text)? {
            let (notices, output) = self.execute(Command::classify(stmt)?).await?.take_notices();
            for n in notices {
                tracing::info!("NOTICE: {n}");
            }
            match output {
                Output::Rows(stream) => {
                    let schema = stream.schema();
                    let batches: Vec<RecordBatch> = stream.try_collect().await.map_err(KfsqlError::from_datafusion)?;
                    let n: usize = batches.iter().map(|b| b.num_rows()).sum();
                    out.push((Some(schema), batches, format!("SELECT {n}")));
                }
                Output::Command { tag, rows } => out.push((
                    None,
                    Vec::new(),
                    match rows {
                        Some(n) => format!("{tag} {n}"),
                        None => tag,
                    },
                )),
                Output::Noticed { .. } => unreachable!("take_notices unwraps every notice"),
            }
        }
        Ok(out)
    }

    /// Plan a statement into a DataFusion logical plan (after kfsql's rewrites), without running it.
    pub async fn plan(&self, stmt: DFStatement) -> Result<LogicalPlan> {
        self.plan_within(stmt, None).await
    }

    /// [`Self::plan`] under `limit` when that is shorter than the query timeout (a session's `statement_timeout`).
    ///
    /// Planning runs like execution: on the statement's [`Lane`] runtime, under the deadline, and it stops when the
    /// caller goes.
    pub async fn plan_within(&self, stmt: DFStatement, limit: Option<Duration>) -> Result<LogicalPlan> {
        let inner = self.inner.clone();
        let lane = Lane::of_statement(&stmt);
        on_lane(lane, self.timeout(limit), async move {
            let stmt = inner.prepare(stmt)?;
            inner.ctx.state().statement_to_plan(stmt).await.map_err(KfsqlError::from_datafusion)
        })
        .await
    }

    /// The deadline of a statement: the server's query timeout, or a session's shorter `limit` (a client may
    /// shorten the server's limit, never lift it).
    fn timeout(&self, limit: Option<Duration>) -> Duration {
        limit.map_or(self.inner.config.query_timeout, |l| l.min(self.inner.config.query_timeout))
    }

    /// Run one command under the query timeout.
    pub async fn execute(&self, cmd: Command) -> Result<Output> {
        self.execute_within(cmd, None).await
    }

    /// Run one statement under the query timeout, or under `limit` when that is shorter (a session's
    /// `statement_timeout`: a client may shorten the server's limit, never lift it).
    pub async fn execute_within(&self, cmd: Command, limit: Option<Duration>) -> Result<Output> {
        let lane = match &cmd {
            Command::Query(stmt) | Command::Statement(stmt) => Lane::of_statement(stmt),
            _ => Lane::Query,
        };
        self.with_deadline(lane, limit, move |inner| Box::pin(async move { inner.execute(cmd).await })).await
    }

    /// Run an already-planned statement (extended protocol: plan once at Parse, execute at Execute).
    pub async fn execute_plan(&self, plan: LogicalPlan) -> Result<Output> {
        self.execute_plan_within(plan, None).await
    }

    /// [`Self::execute_plan`] under `limit` when that is shorter than the query timeout.
    pub async fn execute_plan_within(&self, plan: LogicalPlan, limit: Option<Duration>) -> Result<Output> {
        let lane = Lane::of_plan(&plan);
        self.with_deadline(lane, limit, move |inner| Box::pin(async move { inner.run_plan(plan).await })).await
    }

    /// Plan a query for reading in parallel (Arrow Flight SQL's endpoints): its physical plan, whose output
    /// partitions a client may read independently and at once — one per Kafka partition when every operator keeps
    /// rows in their partition, else one (see [`Partitioned::partitions`]).
    pub async fn plan_partitioned(&self, plan: LogicalPlan, limit: Option<Duration>) -> Result<Partitioned> {
        let inner = self.inner.clone();
        let lane = Lane::of_plan(&plan);
        on_lane(lane, self.timeout(limit), async move {
            let schema = Arc::new(plan.schema().as_arrow().clone());
            let (physical, task, notices) = inner.physical(plan).await?;
            let physical = if independent_partitions(&physical) {
                physical
            } else {
                Arc::new(datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec::new(physical)) as _
            };
            Ok(Partitioned { schema, plan: physical, task, notices, lane })
        })
        .await
    }

    /// The rows of output partition `partition` of a [`Partitioned`] plan, run like any statement: on its lane's
    /// runtime, under the query timeout (or a shorter `limit`), stopped when the stream is dropped.
    pub async fn execute_partition(
        &self,
        planned: &Partitioned,
        partition: usize,
        limit: Option<Duration>,
    ) -> Result<SendableRecordBatchStream> {
        if partition >= planned.partitions() {
            return Err(KfsqlError::InvalidParameter(format!(
                "partition {partition} of a result with {} partitions",
                planned.partitions()
            )));
        }
        let (plan, task) = (planned.plan.clone(), planned.task.clone());
        let out = self
            .with_deadline(planned.lane, limit, move |_| {
                Box::pin(async move {
                    Ok(Output::Rows(plan.execute(partition, task).map_err(KfsqlError::from_datafusion)?))
                })
            })
            .await?;
        match out.take_notices().1 {
            Output::Rows(rows) => Ok(rows),
            other => Err(KfsqlError::Internal(format!("a partition answered {other:?}"))),
        }
    }

    /// Run a statement on its lane's runtime under the query timeout.
    ///
    /// Planning and execution happen on the [`Lane`]'s runtime (see [`crate::scheduler`]), away from the runtime
    /// that serves connections and timers, so a statement that computes for long without yielding cannot starve
    /// other clients, lookups or its own deadline. Rows come back through a small channel; dropping the returned stream (done, timed out, client
    /// gone) aborts the statement's task.
    async fn with_deadline(
        &self,
        lane: Lane,
        limit: Option<Duration>,
        run: impl FnOnce(Arc<EngineInner>) -> futures::future::BoxFuture<'static, Result<Output>> + Send + 'static,
    ) -> Result<Output> {
        let timeout = self.timeout(limit);
        let deadline = tokio::time::Instant::now() + timeout;
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<Result<Started>>();
        let (rows_tx, rows_rx) = tokio::sync::mpsc::channel::<DfResult<RecordBatch>>(2);
        let inner = self.inner.clone();
        // a panic in the statement's code is an internal error of that statement (XX000), at its start or in its
        // rows: never a stream that just ends early, which would read as a complete answer
        let task = lane.runtime().spawn(tracing::Instrument::in_current_span(async move {
            use futures::FutureExt;
            let ran = std::panic::AssertUnwindSafe(run(inner))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| Err(KfsqlError::panicked()));
            let (notices, output) = match ran {
                Ok(o) => {
                    let (n, o) = o.take_notices();
                    (n, Ok(o))
                }
                Err(e) => (Vec::new(), Err(e)),
            };
            match output {
                Ok(Output::Rows(mut stream)) => {
                    if started_tx.send(Ok(Started::Rows(stream.schema(), notices))).is_err() {
                        return;
                    }
                    loop {
                        let next = match std::panic::AssertUnwindSafe(stream.next()).catch_unwind().await {
                            Ok(Some(batch)) => batch,
                            Ok(None) => return,
                            Err(_) => Err(KfsqlError::panicked().into_datafusion()),
                        };
                        let failed = next.is_err();
                        if rows_tx.send(next).await.is_err() || failed {
                            return; // the consumer is gone, or the rows ended with an error
                        }
                    }
                }
                Ok(Output::Command { tag, rows }) => {
                    let _ = started_tx.send(Ok(Started::Command { tag, rows, notices }));
                }
                Ok(Output::Noticed { .. }) => {
                    let _ = started_tx.send(Err(KfsqlError::Internal("notices left wrapped".into())));
                }
                Err(e) => {
                    let _ = started_tx.send(Err(e));
                }
            }
        }));
        let abort = AbortOnDrop(task.abort_handle());
        let started = tokio::time::timeout_at(deadline, started_rx)
            .await
            .map_err(|_| KfsqlError::Timeout(timeout))?
            .map_err(|_| KfsqlError::Internal("the statement's task ended without an answer".into()))??;
        Ok(match started {
            Started::Command { tag, rows, notices } => Output::with_notices(notices, Output::Command { tag, rows }),
            Started::Rows(schema, notices) => Output::with_notices(
                notices,
                Output::Rows(Box::pin(DeadlineStream {
                    inner: Box::pin(RecordBatchStreamAdapter::new(
                        schema,
                        tokio_stream::wrappers::ReceiverStream::new(rows_rx),
                    )),
                    sleep: Box::pin(tokio::time::sleep_until(deadline)),
                    timeout,
                    done: false,
                    _task: abort,
                })),
            ),
        })
    }
}

/// DataFusion's optimizer rules with kfsql's ASOF filter pushdown right after DataFusion's filter pushdown, which
/// leaves filters above the ASOF join (and before projection pruning, which would otherwise lift them back over the
/// join's projection).
fn optimizer_rules() -> Vec<Arc<dyn datafusion::optimizer::OptimizerRule + Send + Sync>> {
    let mut rules = datafusion::optimizer::Optimizer::new().rules;
    let at = rules.iter().position(|r| r.name() == "push_down_filter").map_or(rules.len(), |i| i + 1);
    rules.insert(at, Arc::new(crate::asof::AsofFilterPushdown));
    rules
}

/// A query planned for parallel reading; see [`Engine::plan_partitioned`].
pub struct Partitioned {
    /// The rows' schema (as the logical plan names them).
    pub schema: SchemaRef,
    plan: Arc<dyn datafusion::physical_plan::ExecutionPlan>,
    task: Arc<datafusion::execution::TaskContext>,
    /// NOTICEs about the rows (history Kafka no longer holds).
    pub notices: Vec<String>,
    lane: Lane,
}

impl Partitioned {
    /// How many output partitions the rows come in; each may be read on its own, concurrently with the others.
    pub fn partitions(&self) -> usize {
        use datafusion::physical_plan::ExecutionPlanProperties;
        self.plan.output_partitioning().partition_count()
    }
}

/// Whether the output partitions of `plan` can be run one at a time, in any order: no operator hands rows between
/// partitions (a repartition runs all of its inputs for any one output and buffers what the other outputs have not
/// read yet). A subtree that ends in one partition is run whole by its parent, so what lies under it does not matter.
fn independent_partitions(plan: &Arc<dyn datafusion::physical_plan::ExecutionPlan>) -> bool {
    use datafusion::physical_plan::ExecutionPlanProperties;
    if plan.as_ref().downcast_ref::<datafusion::physical_plan::repartition::RepartitionExec>().is_some() {
        return false;
    }
    plan.children().into_iter().all(|c| c.output_partitioning().partition_count() == 1 || independent_partitions(c))
}

/// How a statement started on the query runtime.
enum Started {
    Rows(SchemaRef, Vec<String>),
    Command { tag: String, rows: Option<usize>, notices: Vec<String> },
}

/// Run `work` on `lane`'s runtime, in the caller's span: its answer within `timeout`, and the work aborted when
/// the time is up or the caller goes.
async fn on_lane<T: Send + 'static>(
    lane: Lane,
    timeout: Duration,
    work: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    let task = lane.runtime().spawn(tracing::Instrument::in_current_span(work));
    let _abort = AbortOnDrop(task.abort_handle());
    match tokio::time::timeout(timeout, task).await {
        Ok(Ok(answer)) => answer,
        // the task is only aborted once nobody awaits it, so a failed join is a panic
        Ok(Err(_)) => Err(KfsqlError::panicked()),
        Err(_) => Err(KfsqlError::Timeout(timeout)),
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Drop for EngineInner {
    fn drop(&mut self) {
        self.pipelines.stop_all();
    }
}

#[async_trait::async_trait]
impl crate::table::Tables for EngineInner {
    fn database(&self) -> &str {
        &self.config.database
    }

    fn definitions(&self) -> BTreeMap<String, TableDefinition> {
        self.defs.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn kafka_table(&self, name: &str) -> Result<Arc<dyn datafusion::datasource::TableProvider>> {
        let t = self
            .ctx
            .table_provider(public(name))
            .await
            .map_err(|_| KfsqlError::UndefinedTable(format!("relation \"{name}\" does not exist")))?;
        if crate::table::provider::as_kafka(t.as_ref()).is_none() {
            return Err(KfsqlError::InvalidParameter(format!("\"{name}\" is not a Kafka table")));
        }
        Ok(t)
    }

    fn factory(&self) -> &Arc<KafkaTableFactory> {
        &self.factory
    }

    fn task_context(&self) -> Arc<datafusion::execution::TaskContext> {
        self.ctx.task_ctx()
    }
}

impl EngineInner {
    /// Apply a catalog change to the session (idempotent).
    fn apply(&self, change: CatalogChange) -> Result<()> {
        match change {
            CatalogChange::Upsert(def) => {
                if self.defs.read().unwrap_or_else(|p| p.into_inner()).get(&def.name) == Some(&def) {
                    return Ok(());
                }
                let table = self.factory.table_from_definition(def.clone())?;
                self.register(table)
            }
            CatalogChange::Drop(name) => {
                let removed = self.defs.write().unwrap_or_else(|p| p.into_inner()).remove(&name);
                if removed.is_some() {
                    self.ctx.deregister_table(public(&name))?;
                }
                self.latest.stop(&name);
                self.pipelines.stop(&name);
                Ok(())
            }
        }
    }

    fn register(&self, table: KafkaTable) -> Result<()> {
        // a CREATE and the catalog follower may register the same table at once: one after the other
        let _one_at_a_time = self.registering.lock().unwrap_or_else(|p| p.into_inner());
        let def = table.definition().clone();
        // The loser of that race must not replace the table: between its deregister and register the name would be
        // missing for a query that the winner (say a CREATE that has already returned) let run.
        if self.defs.read().unwrap_or_else(|p| p.into_inner()).get(&def.name) == Some(&def) {
            return Ok(());
        }
        let name = public(&def.name);
        self.ctx.deregister_table(name.clone())?;
        self.latest.sync(&table)?;
        self.ctx.register_table(name, Arc::new(table))?;
        self.defs.write().unwrap_or_else(|p| p.into_inner()).insert(def.name.clone(), def.clone());
        match &def.pipeline {
            Some(p) => self.pipelines.sync(&def.name, &p.query, self.me.clone()),
            None => self.pipelines.stop(&def.name),
        }
        Ok(())
    }

    /// `INSERT INTO <kafka table> VALUES (…)` / `SELECT …` without a column list means the declared columns, not the
    /// metadata columns Kafka assigns: name them, so the rows need not carry `_partition`, `_offset`, ….
    fn name_insert_columns(&self, stmt: &mut SqlStatement) {
        use datafusion::sql::sqlparser::ast::{Ident, ObjectName, TableObject};
        let SqlStatement::Insert(insert) = stmt else { return };
        let TableObject::TableName(name) = &insert.table else { return };
        if !insert.columns.is_empty() {
            return;
        }
        let parts: Vec<String> = name.0.iter().map(|p| p.to_string().trim_matches('"').to_string()).collect();
        let table = match parts.as_slice() {
            [t] | [_, t] | [_, _, t] => t.clone(),
            _ => return,
        };
        let defs = self.defs.read().unwrap_or_else(|p| p.into_inner());
        if let Some(def) = defs.get(&table) {
            insert.columns =
                def.columns.iter().map(|c| ObjectName::from(vec![Ident::with_quote('"', c.name.clone())])).collect();
        }
    }

    /// kfsql's AST rewrites: time travel, then Postgres-compatibility rules for catalog queries.
    fn prepare(&self, stmt: DFStatement) -> Result<DFStatement> {
        Ok(match stmt {
            DFStatement::Statement(mut s) => {
                self.name_insert_columns(&mut s);
                sql::time_travel::rewrite(&mut s)?;
                crate::asof::rewrite(&mut s);
                sql::pg_rewrite::rewrite_before_compat(&mut s);
                let mut s = self.compat.iter().fold(*s, |s, rule| rule.rewrite(s));
                sql::pg_rewrite::rewrite_with(&mut s, &self.empty_relations);
                DFStatement::Statement(Box::new(s))
            }
            DFStatement::Explain(mut e) => {
                e.statement = Box::new(self.prepare(*e.statement)?);
                DFStatement::Explain(e)
            }
            DFStatement::CopyTo(mut c) => {
                c.target = export_path(&self.config.export_dir, &c.target)?.to_string_lossy().into_owned();
                if let datafusion::sql::parser::CopyToSource::Query(q) = &mut c.source {
                    let mut stmt = SqlStatement::Query(q.clone());
                    sql::time_travel::rewrite(&mut stmt)?;
                    crate::asof::rewrite(&mut stmt);
                    if let SqlStatement::Query(rewritten) = stmt {
                        *q = rewritten;
                    }
                }
                DFStatement::CopyTo(c)
            }
            other => other,
        })
    }

    /// Run a command: kfsql's own statements here, every other one planned by DataFusion. Commands on a
    /// connection's own state (settings, cursors, prepared statements, COPY TO STDOUT) are the server's.
    async fn execute(&self, cmd: Command) -> Result<Output> {
        match cmd {
            Command::DropTables { names, if_exists } => self.drop_tables(names, if_exists).await,
            Command::DropMaterializedViews { names, if_exists } => self.drop_materialized_views(names, if_exists).await,
            Command::CreateMaterializedView(view) => self.create_materialized_view(&view).await,
            Command::ShowMaterializedViews => {
                self.run_sql(
                    "SELECT name, state, input_lag, rows_in, rows_out, late_events, watermark, emitted_until, \
                     last_error FROM kfsql.pipelines ORDER BY name",
                )
                .await
            }
            Command::ShowTables => self.run_sql("SELECT * FROM kfsql.tables ORDER BY table_name").await,
            Command::Query(stmt) | Command::Statement(stmt) => {
                let stmt = self.prepare(stmt)?;
                let plan = self.ctx.state().statement_to_plan(stmt).await.map_err(KfsqlError::from_datafusion)?;
                self.run_plan(plan).await
            }
            other => Err(KfsqlError::Unsupported(format!(
                "{other:?} belongs to a client connection's session: connect over the Postgres protocol"
            ))),
        }
    }

    /// Run one of kfsql's own queries (over its system tables).
    async fn run_sql(&self, sql_text: &str) -> Result<Output> {
        let stmt = sql::parse(sql_text)?.pop_front().ok_or_else(|| KfsqlError::Internal("empty".into()))?;
        let plan = self.ctx.state().statement_to_plan(stmt).await?;
        self.run_plan(plan).await
    }

    async fn run_plan(&self, plan: LogicalPlan) -> Result<Output> {
        if let Some(lookup) = crate::latest::lookup::Lookup::from_plan(&plan) {
            let batch = lookup.run()?;
            let schema = batch.schema();
            let rows = futures::stream::once(futures::future::ready(Ok(batch)));
            return Ok(Output::Rows(Box::pin(RecordBatchStreamAdapter::new(schema, rows))));
        }
        match plan {
            LogicalPlan::Ddl(DdlStatement::CreateExternalTable(cmd)) if cmd.file_type.eq_ignore_ascii_case("kafka") => {
                self.create_kafka_table(&cmd).await
            }
            LogicalPlan::Ddl(ddl) => {
                allowed_ddl(&ddl)?;
                let tag = ddl_tag(&ddl);
                self.run_to_end(LogicalPlan::Ddl(ddl)).await?;
                Ok(Output::Command { tag, rows: None })
            }
            LogicalPlan::Dml(DmlStatement { ref op, .. }) if !matches!(op, WriteOp::Ctas) => {
                let tag = match op {
                    WriteOp::Insert(_) => "INSERT 0",
                    WriteOp::Update => "UPDATE",
                    WriteOp::Delete => "DELETE",
                    _ => "COPY",
                }
                .to_string();
                let (batches, notices) = self.run_to_end(plan).await?;
                Ok(Output::with_notices(notices, Output::Command { tag, rows: Some(count_from(&batches)) }))
            }
            LogicalPlan::Copy(_) => {
                let (batches, notices) = self.run_to_end(plan).await?;
                Ok(Output::with_notices(
                    notices,
                    Output::Command { tag: "COPY".into(), rows: Some(count_from(&batches)) },
                ))
            }
            LogicalPlan::Statement(_) => {
                self.run_to_end(plan).await?;
                Ok(Output::Command { tag: "SET".into(), rows: None })
            }
            plan => {
                let (physical, task, notices) = self.physical(plan).await?;
                let rows = execute_stream(physical, task).map_err(KfsqlError::from_datafusion)?;
                Ok(Output::with_notices(notices, Output::Rows(rows)))
            }
        }
    }

    /// Run `plan` to its end, collecting its rows and the notices its reads give.
    async fn run_to_end(&self, plan: LogicalPlan) -> Result<(Vec<RecordBatch>, Vec<String>)> {
        let (physical, task, notices) = self.physical(plan).await?;
        let batches = collect(physical, task).await.map_err(KfsqlError::from_datafusion)?;
        Ok((batches, notices))
    }

    /// The physical plan of `plan`, the context to run it in, and the NOTICEs it gives: a scan of history Kafka no
    /// longer holds is said before the rows (see [`crate::table::history`]).
    async fn physical(
        &self,
        plan: LogicalPlan,
    ) -> Result<(Arc<dyn datafusion::physical_plan::ExecutionPlan>, Arc<datafusion::execution::TaskContext>, Vec<String>)>
    {
        let df = self.ctx.execute_logical_plan(plan).await.map_err(KfsqlError::from_datafusion)?;
        let task = Arc::new(df.task_ctx());
        let physical = df.create_physical_plan().await.map_err(KfsqlError::from_datafusion)?;
        let notices = crate::table::history::in_plan(&physical).iter().map(|t| t.notice()).collect();
        Ok((physical, task, notices))
    }

    /// Whether a CREATE of relation `name` goes ahead: false when it exists and IF NOT EXISTS makes that a no-op,
    /// an error when it exists and neither OR REPLACE nor IF NOT EXISTS was given.
    fn may_create(&self, name: &str, or_replace: bool, if_not_exists: bool) -> Result<bool> {
        let exists = self.defs.read().unwrap_or_else(|p| p.into_inner()).contains_key(name)
            || self.ctx.table_exist(public(name))?;
        match (exists && !or_replace, if_not_exists) {
            (false, _) => Ok(true),
            (true, true) => Ok(false),
            (true, false) => Err(KfsqlError::DuplicateTable(format!("relation \"{name}\" already exists"))),
        }
    }

    async fn create_kafka_table(&self, cmd: &datafusion::logical_expr::CreateExternalTable) -> Result<Output> {
        let tag = Output::Command { tag: "CREATE EXTERNAL TABLE".into(), rows: None };
        if let Some(schema) = cmd.name.schema()
            && schema != "public"
        {
            return Err(KfsqlError::InvalidParameter(format!("Kafka tables live in schema 'public', not '{schema}'")));
        }
        let name = cmd.name.table().to_string();
        if !self.may_create(&name, cmd.or_replace, cmd.if_not_exists)? {
            return Ok(tag);
        }
        // Validate everything (options, columns, topic) before anything is written.
        let table = self.factory.create_from_command(cmd).await?;
        self.catalog.put(table.definition()).await?;
        self.register(table)?;
        Ok(tag)
    }

    /// `CREATE MATERIALIZED VIEW name WITH (key = …, …) AS SELECT …`: declare the feature table (creating its topic)
    /// and persist it with its query; registering it starts the pipeline, here and on every server that follows the
    /// catalog.
    async fn create_materialized_view(&self, view: &datafusion::sql::sqlparser::ast::CreateView) -> Result<Output> {
        use datafusion::sql::sqlparser::ast::{CreateTableOptions, SqlOption};
        let tag = Output::Command { tag: "CREATE MATERIALIZED VIEW".into(), rows: None };
        let name = view.name.0.last().and_then(|p| p.as_ident()).map(|i| i.value.clone()).unwrap_or_default();
        if !self.may_create(&name, view.or_replace, view.if_not_exists)? {
            return Ok(tag);
        }
        let mut options = BTreeMap::new();
        let given = match &view.options {
            CreateTableOptions::With(o) | CreateTableOptions::Options(o) | CreateTableOptions::Plain(o) => o.clone(),
            _ => Vec::new(),
        };
        for o in given {
            let SqlOption::KeyValue { key, value } = o else {
                return Err(KfsqlError::InvalidParameter(format!(
                    "materialized view option {o}: expected name = 'value'"
                )));
            };
            let value = value.to_string();
            let value =
                value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')).unwrap_or(&value).replace("''", "'");
            options.insert(key.value.to_ascii_lowercase(), value);
        }
        let source = crate::pipeline::spec::source_table(&view.query)?;
        let source_table = self.kafka_table(&source).await?;
        let analysis = crate::pipeline::spec::analyse(&view.query, &source_table.schema(), self.database()).await?;
        let partitions =
            match options.get("partitions") {
                Some(p) => p.parse::<i32>().ok().filter(|n| *n > 0).ok_or_else(|| {
                    KfsqlError::InvalidParameter(format!("partitions '{p}': expected a positive number"))
                })?,
                None => {
                    let topic = crate::table::provider::as_kafka(source_table.as_ref()).map(|k| k.topic().to_string());
                    self.factory.cluster().partition_count(&topic.unwrap_or_default()).await?
                }
            };
        let def = crate::pipeline::spec::target_definition(&name, &view.query, &analysis, options)?;
        let cluster = self.factory.cluster();
        if !cluster.topic_exists(&def.topic).await? {
            cluster.create_topic(&def.topic, partitions, &[]).await?;
        }
        let table = self.factory.table_from_definition(def)?;
        // a replaced view starts over: its new query backfills from the source's beginning
        self.pipelines.stop(&name);
        self.pipelines.store().delete(&name).await?;
        self.catalog.put(table.definition()).await?;
        self.register(table)?;
        Ok(tag)
    }

    async fn drop_materialized_views(&self, names: Vec<String>, if_exists: bool) -> Result<Output> {
        for full in names {
            let name = bare_name(&full);
            let is_view =
                self.defs.read().unwrap_or_else(|p| p.into_inner()).get(&name).is_some_and(|d| d.pipeline.is_some());
            if is_view {
                self.pipelines.stop(&name);
                self.catalog.delete(&name).await?;
                self.apply(CatalogChange::Drop(name.clone()))?;
                self.pipelines.store().delete(&name).await?;
            } else if !if_exists {
                return Err(KfsqlError::UndefinedTable(format!("materialized view \"{full}\" does not exist")));
            }
        }
        Ok(Output::Command { tag: "DROP MATERIALIZED VIEW".into(), rows: None })
    }

    async fn drop_tables(&self, names: Vec<String>, if_exists: bool) -> Result<Output> {
        for full in names {
            // only schema public holds droppable tables: latest.<t> is a view of Kafka table <t>, and kfsql,
            // pg_catalog and information_schema are the system's
            if let Some((schema, _)) = full.rsplit_once('.') {
                let schema = schema.rsplit('.').next().unwrap_or(schema).trim_matches('"');
                if schema != "public" {
                    return Err(KfsqlError::PermissionDenied(format!(
                        "\"{full}\" is in system schema \"{schema}\" and cannot be dropped{}",
                        if schema == "latest" {
                            " (a latest view follows its Kafka table: drop that, or declare it 'online' 'false')"
                        } else {
                            ""
                        }
                    )));
                }
            }
            let name = bare_name(&full);
            let is_kafka = self.defs.read().unwrap_or_else(|p| p.into_inner()).contains_key(&name);
            if is_kafka {
                self.catalog.delete(&name).await?;
                self.apply(CatalogChange::Drop(name))?;
            } else if self.ctx.table_exist(full.as_str())? {
                self.ctx.deregister_table(full.as_str())?;
            } else if !if_exists {
                return Err(KfsqlError::UndefinedTable(format!("table \"{full}\" does not exist")));
            }
        }
        Ok(Output::Command { tag: "DROP TABLE".into(), rows: None })
    }
}

/// The schemas the system owns: no client may drop them.
const SYSTEM_SCHEMAS: &[&str] = &["public", "latest", "kfsql", "pg_catalog", "information_schema"];

/// Whether a client may run this DDL (Kafka tables and materialized views are handled before it).
///
/// kfsql's relations are Kafka topics and the views over them: a file-backed external table would read the server's
/// files (`STORED AS CSV LOCATION '/etc/passwd'`) and an in-memory table would hold a client's rows in the server's
/// memory, outside Kafka and lost on restart, so both are refused. System schemas cannot be dropped.
fn allowed_ddl(ddl: &DdlStatement) -> Result<()> {
    match ddl {
        DdlStatement::CreateExternalTable(cmd) => Err(KfsqlError::PermissionDenied(format!(
            "tables are Kafka topics: STORED AS KAFKA (STORED AS {} would read files on the server)",
            cmd.file_type
        ))),
        DdlStatement::CreateMemoryTable(_) => Err(KfsqlError::Unsupported(
            "CREATE TABLE: kfsql's tables are Kafka topics; declare one with CREATE EXTERNAL TABLE … STORED AS KAFKA, \
             or write a query's rows to a topic with CREATE MATERIALIZED VIEW"
                .into(),
        )),
        DdlStatement::CreateFunction(_) | DdlStatement::DropFunction(_) | DdlStatement::CreateIndex(_) => {
            Err(KfsqlError::Unsupported(format!("{} (kfsql has no user-defined functions or indexes)", ddl_tag(ddl))))
        }
        DdlStatement::DropCatalogSchema(drop) if SYSTEM_SCHEMAS.contains(&drop.name.schema_name()) => {
            Err(KfsqlError::DependentObjects(format!(
                "cannot drop schema {} because it is required by the database system",
                drop.name.schema_name()
            )))
        }
        _ => Ok(()),
    }
}

/// Resolve a COPY target inside the export directory, refusing anything that would leave it: `..`, absolute paths
/// elsewhere, symbolic links on the way (a link inside the directory may point anywhere), and URLs (`s3://…`:
/// kfsql writes local files only).
fn export_path(dir: &Path, target: &str) -> Result<PathBuf> {
    if target.contains("://") {
        return Err(KfsqlError::Unsupported(format!(
            "COPY to '{target}': only files in the export directory {} are written (no object stores)",
            dir.display()
        )));
    }
    let io = |what: &Path, e: std::io::Error| KfsqlError::Internal(format!("{}: {e}", what.display()));
    let base = std::path::absolute(dir).map_err(|e| io(dir, e))?;
    let requested = Path::new(target);
    let relative = if requested.is_absolute() {
        requested.strip_prefix(&base).map(Path::to_path_buf).map_err(|_| {
            KfsqlError::PermissionDenied(format!(
                "COPY may only write inside the export directory {} (got {target})",
                base.display()
            ))
        })?
    } else {
        requested.to_path_buf()
    };
    if relative.as_os_str().is_empty() || relative.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(KfsqlError::PermissionDenied(format!(
            "COPY target '{target}' must be a file path inside the export directory {}, without '..'",
            dir.display()
        )));
    }
    std::fs::create_dir_all(&base).map_err(|e| io(&base, e))?;
    let mut path = base;
    let count = relative.components().count();
    for (i, part) in relative.components().enumerate() {
        path.push(part);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(KfsqlError::PermissionDenied(format!(
                    "COPY target '{target}' goes through a symbolic link ({}); links may lead out of the export \
                     directory",
                    path.display()
                )));
            }
            Ok(m) if i + 1 < count && !m.is_dir() => {
                return Err(KfsqlError::InvalidParameter(format!(
                    "COPY target '{target}': {} is a file",
                    path.display()
                )));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && i + 1 < count => {
                std::fs::create_dir(&path).map_err(|e| io(&path, e))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path, e)),
        }
    }
    Ok(path)
}

/// A statement with nothing kfsql-specific in it: a query or session statement without time travel.
/// `schema.name` or `"name"` as the bare name the catalog keys tables by.
fn bare_name(full: &str) -> String {
    full.rsplit('.').next().unwrap_or(full).trim_matches('"').to_string()
}

fn public(name: &str) -> TableReference {
    TableReference::partial("public", name)
}

fn ddl_tag(ddl: &DdlStatement) -> String {
    match ddl {
        DdlStatement::CreateExternalTable(_) => "CREATE EXTERNAL TABLE",
        DdlStatement::CreateMemoryTable(_) => "CREATE TABLE",
        DdlStatement::CreateView(_) => "CREATE VIEW",
        DdlStatement::CreateCatalogSchema(_) => "CREATE SCHEMA",
        DdlStatement::CreateCatalog(_) => "CREATE DATABASE",
        DdlStatement::CreateIndex(_) => "CREATE INDEX",
        DdlStatement::DropTable(_) => "DROP TABLE",
        DdlStatement::DropView(_) => "DROP VIEW",
        DdlStatement::DropCatalogSchema(_) => "DROP SCHEMA",
        DdlStatement::CreateFunction(_) => "CREATE FUNCTION",
        DdlStatement::DropFunction(_) => "DROP FUNCTION",
    }
    .to_string()
}

fn count_from(batches: &[RecordBatch]) -> usize {
    use datafusion::arrow::array::{Array, UInt64Array};
    batches
        .first()
        .filter(|b| b.num_columns() > 0 && b.num_rows() > 0)
        .and_then(|b| {
            b.column(0).as_any().downcast_ref::<UInt64Array>().filter(|a| !a.is_null(0)).map(|a| a.value(0) as usize)
        })
        .unwrap_or(0)
}

/// A row stream that fails with a timeout error once the statement's deadline passes.
struct DeadlineStream {
    inner: SendableRecordBatchStream,
    sleep: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
    done: bool,
    /// The task producing the rows; aborted when this stream is dropped.
    _task: AbortOnDrop,
}

impl Stream for DeadlineStream {
    type Item = DfResult<RecordBatch>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            self.done = true;
            return Poll::Ready(Some(Err(KfsqlError::Timeout(self.timeout).into_datafusion())));
        }
        self.inner.as_mut().poll_next(cx)
    }
}

impl RecordBatchStream for DeadlineStream {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_paths_stay_in_the_export_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        let exports = dir.path().join("exports");
        let ok = export_path(&exports, "daily/set.parquet").expect("a path inside");
        assert!(ok.starts_with(std::path::absolute(&exports).expect("abs")) && exports.join("daily").is_dir());
        let code = |t: &str| export_path(&exports, t).map(|_| ()).map_err(|e| e.sqlstate());
        assert_eq!(code("../x.csv"), Err("42501"));
        assert_eq!(code("/etc/x.csv"), Err("42501"));
        assert_eq!(code("s3://bucket/x.parquet"), Err("0A000"));
        std::os::unix::fs::symlink(outside.path(), exports.join("link")).expect("symlink");
        assert_eq!(code("link/x.csv"), Err("42501"));
        assert_eq!(code("link/deeper/x.csv"), Err("42501"));
        assert!(!outside.path().join("deeper").exists(), "nothing created through the link");
        std::os::unix::fs::symlink(outside.path().join("f.csv"), exports.join("f.csv")).expect("symlink");
        assert_eq!(code("f.csv"), Err("42501"));
        assert!(!std::path::Path::new("s3:").exists());
    }
}

//! Window table functions in FROM, with RisingWave's syntax:
//!
//! ```sql
//! SELECT user_id, window_end, count(*) FROM TUMBLE(transactions, event_time, INTERVAL '1 hour') GROUP BY 1, 2;
//! SELECT user_id, window_end, count(*) FROM HOP(transactions, event_time, INTERVAL '5 minutes', INTERVAL '1 hour') …
//! ```
//!
//! Each yields the table's rows with `window_start` and `window_end` added: once for a tumbling window, `size / slide`
//! times for a hopping one (one row per window the event falls in). Windows are `[start, end)`, aligned to the Unix
//! epoch, and an event without a time falls in none. Both are plain logical plans — `date_bin` for the start, and for
//! HOP a cross join with the `size / slide` window offsets — so they work in any query over history, and a pipeline
//! computes exactly what the same query computes over the topic (see [`super`]).
//!
//! A pipeline plans its query with [`WindowRelationPlanner::emitting`], which keeps only the windows whose end lies in
//! the range being emitted.

use std::sync::{Arc, RwLock};

use datafusion::catalog::CatalogProviderList;
use datafusion::common::{DFSchema, Result, ScalarValue, TableReference, plan_err};
use datafusion::datasource::{TableProvider, provider_as_source};
use datafusion::functions::datetime::date_bin;
use datafusion::logical_expr::planner::{PlannedRelation, RelationPlanner, RelationPlannerContext, RelationPlanning};
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::logical_expr::{Cast, Expr, LogicalPlanBuilder, col, lit};
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
use datafusion::sql::sqlparser::ast::{FunctionArg, FunctionArgExpr, ObjectName, TableFactor};
use futures::FutureExt;

pub const WINDOW_START: &str = "window_start";
pub const WINDOW_END: &str = "window_end";
const HOP_OFFSET: &str = "__kfsql_hop_offset";

/// A window declared in FROM.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowFn {
    /// The table the window function reads.
    pub table: ObjectName,
    pub time_column: String,
    pub size_ns: i64,
    /// Equal to `size_ns` for a tumbling window.
    pub slide_ns: i64,
}

/// Plans `TUMBLE(…)` and `HOP(…)` in FROM.
///
/// The table they read is named inside the call, where DataFusion's planner does not look for table references
/// ahead of planning, so the planner finds it in the session's catalogs itself.
#[derive(Debug)]
pub struct WindowRelationPlanner {
    catalogs: Arc<dyn CatalogProviderList>,
    /// Default catalog (database) name; the default schema is `public`.
    database: String,
    /// Only windows with `lo < window_end <= hi` (nanoseconds since the epoch).
    emit: RwLock<Option<(i64, i64)>>,
    /// The last window planned, for a pipeline to learn its shape.
    last: RwLock<Option<WindowFn>>,
}

impl WindowRelationPlanner {
    /// A planner for the session whose catalogs are `catalogs`.
    pub fn new(catalogs: Arc<dyn CatalogProviderList>, database: &str) -> Arc<Self> {
        Arc::new(Self { catalogs, database: database.to_string(), emit: RwLock::new(None), last: RwLock::new(None) })
    }

    /// The table `name` refers to (`t`, `schema.t` or `catalog.schema.t`).
    fn table(&self, name: &ObjectName) -> Result<(TableReference, Arc<dyn TableProvider>)> {
        let parts: Vec<String> = name.0.iter().filter_map(|p| p.as_ident()).map(|i| i.value.clone()).collect();
        let (catalog, schema, table) = match parts.as_slice() {
            [t] => (self.database.clone(), "public".to_string(), t.clone()),
            [s, t] => (self.database.clone(), s.clone(), t.clone()),
            [c, s, t] => (c.clone(), s.clone(), t.clone()),
            _ => return plan_err!("window function over '{name}': not a table name"),
        };
        let provider = self
            .catalogs
            .catalog(&catalog)
            .and_then(|c| c.schema(&schema))
            .and_then(|s| s.table(&table).now_or_never())
            .transpose()?
            .flatten();
        match provider {
            Some(p) => Ok((TableReference::full(catalog, schema, table), p)),
            None => Err(datafusion::error::DataFusionError::Plan(format!("table '{schema}.{table}' not found"))),
        }
    }

    /// Plan the next queries keeping only windows ending in `(lo, hi]`.
    pub fn emitting(&self, range: Option<(i64, i64)>) {
        *self.emit.write().unwrap_or_else(|p| p.into_inner()) = range;
    }

    /// The window of the last query planned, if it had one.
    pub fn last_window(&self) -> Option<WindowFn> {
        self.last.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The window function a FROM item calls, with its arguments as SQL, if it is one.
fn window_call(relation: &TableFactor) -> Option<(bool, &[FunctionArg])> {
    let TableFactor::Table { name, args: Some(args), .. } = relation else { return None };
    let [part] = name.0.as_slice() else { return None };
    let fname = part.as_ident()?.value.to_ascii_lowercase();
    match fname.as_str() {
        "tumble" => Some((false, &args.args)),
        "hop" => Some((true, &args.args)),
        _ => None,
    }
}

/// The table a window function's first argument names.
pub fn table_name(arg: &datafusion::sql::sqlparser::ast::Expr) -> Option<ObjectName> {
    use datafusion::sql::sqlparser::ast::Expr as SqlExpr;
    match arg {
        SqlExpr::Identifier(i) => Some(ObjectName::from(vec![i.clone()])),
        SqlExpr::CompoundIdentifier(parts) => Some(ObjectName::from(parts.clone())),
        _ => None,
    }
}

impl RelationPlanner for WindowRelationPlanner {
    fn plan_relation(&self, relation: TableFactor, ctx: &mut dyn RelationPlannerContext) -> Result<RelationPlanning> {
        let Some((hop, args)) = window_call(&relation) else {
            return Ok(RelationPlanning::Original(Box::new(relation)));
        };
        let fname = if hop { "HOP" } else { "TUMBLE" };
        let usage = if hop {
            "HOP(table, time_column, INTERVAL 'slide', INTERVAL 'size')"
        } else {
            "TUMBLE(table, time_column, INTERVAL 'size')"
        };
        let exprs: Vec<&datafusion::sql::sqlparser::ast::Expr> = args
            .iter()
            .map(|a| match a {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
                _ => None,
            })
            .collect::<Option<_>>()
            .ok_or_else(|| datafusion::error::DataFusionError::Plan(format!("{fname} takes {usage}")))?;
        let (table, time, intervals) = match (hop, exprs.as_slice()) {
            (false, [t, c, size]) => (*t, *c, vec![*size, *size]),
            (true, [t, c, slide, size]) => (*t, *c, vec![*slide, *size]),
            _ => return plan_err!("{fname} takes {usage}"),
        };
        let Some(table) = table_name(table) else {
            return plan_err!("{fname}: the first argument must be a table name, not {table}");
        };
        let time_column = match time {
            datafusion::sql::sqlparser::ast::Expr::Identifier(i) => ctx.normalize_ident(i.clone()),
            other => return plan_err!("{fname}: the second argument must be a time column, not {other}"),
        };
        let mut ns = Vec::new();
        for e in intervals {
            let planned = ctx.sql_to_expr(e.clone(), &DFSchema::empty())?;
            ns.push(interval_ns(planned, fname)?);
        }
        let (slide_ns, size_ns) = (ns[0], ns[1]);
        if size_ns % slide_ns != 0 {
            return plan_err!("{fname}: the window size must be a multiple of the slide");
        }

        let alias = match &relation {
            TableFactor::Table { alias, .. } => alias.clone(),
            _ => None,
        };
        let (reference, provider) = self.table(&table)?;
        let source = LogicalPlanBuilder::scan(reference, provider_as_source(provider), None)?.build()?;
        let time_field = source.schema().qualified_field_with_unqualified_name(&time_column)?;
        let time_type = time_field.1.data_type().clone();
        if !matches!(time_type, datafusion::arrow::datatypes::DataType::Timestamp(_, _)) {
            return plan_err!("{fname}: '{time_column}' is {time_type}, not a TIMESTAMP");
        }
        let time = Expr::Column(datafusion::common::Column::from(time_field));
        let interval = |n: i64| lit(ScalarValue::new_interval_mdn(0, 0, n));
        let columns: Vec<Expr> = source.schema().columns().into_iter().map(Expr::Column).collect();
        let bound = |v: i64| {
            Expr::Cast(Cast::new(Box::new(lit(ScalarValue::TimestampNanosecond(Some(v), None))), time_type.clone()))
        };
        let emit = *self.emit.read().unwrap_or_else(|p| p.into_inner());
        let builder = match emit {
            // one window end E: exactly the events in [E - size, E), each in that one window (no expansion)
            Some((lo, hi)) if hi.checked_sub(lo) == Some(slide_ns) && hi.rem_euclid(slide_ns) == 0 => {
                let from = hi.saturating_sub(size_ns);
                let mut projection = columns;
                projection.push(bound(from).alias(WINDOW_START));
                projection.push(bound(hi).alias(WINDOW_END));
                LogicalPlanBuilder::from(source)
                    .filter(time.clone().gt_eq(bound(from)).and(time.lt(bound(hi))))?
                    .project(projection)?
            }
            _ => {
                let binned = date_bin().call(vec![interval(slide_ns), time.clone()]);
                let mut builder = LogicalPlanBuilder::from(source).filter(time.is_not_null())?;
                let start = if size_ns == slide_ns {
                    binned
                } else {
                    // one row per window the event falls in: starts at bin, bin - slide, …, bin - (size - slide)
                    let offsets: Vec<Vec<Expr>> =
                        (0..size_ns / slide_ns).map(|i| vec![interval(i * slide_ns)]).collect();
                    let offsets = LogicalPlanBuilder::values(offsets)?
                        .project(vec![col("column1").alias(HOP_OFFSET)])?
                        .build()?;
                    builder = LogicalPlanBuilder::from(offsets).cross_join(builder.build()?)?;
                    binned - col(HOP_OFFSET)
                };
                let end = start.clone() + interval(size_ns);
                let mut projection = columns;
                projection.push(start.alias(WINDOW_START));
                projection.push(end.alias(WINDOW_END));
                let mut builder = builder.project(projection)?;
                if let Some((lo, hi)) = emit {
                    let end = col(WINDOW_END);
                    builder = builder.filter(end.clone().gt(bound(lo)).and(end.lt_eq(bound(hi))))?;
                }
                builder
            }
        };
        *self.last.write().unwrap_or_else(|p| p.into_inner()) =
            Some(WindowFn { table, time_column, size_ns, slide_ns });
        let plan = builder.build()?;
        Ok(RelationPlanning::Planned(Box::new(PlannedRelation::new(plan, alias))))
    }
}

/// A constant interval of fixed length, in nanoseconds (months have none).
pub fn interval_ns(e: Expr, what: &str) -> Result<i64> {
    let info = SimplifyContext::builder().with_schema(Arc::new(DFSchema::empty())).build();
    let simplified = ExprSimplifier::new(info).simplify(e)?;
    let value = match &simplified {
        Expr::Literal(v, _) => v.clone(),
        other => return plan_err!("{what}: expected a constant INTERVAL, got {other}"),
    };
    let ns = match value {
        ScalarValue::IntervalMonthDayNano(Some(v)) if v.months == 0 => {
            (v.days as i64).checked_mul(86_400_000_000_000).and_then(|d| d.checked_add(v.nanoseconds))
        }
        ScalarValue::IntervalDayTime(Some(v)) => {
            Some(v.days as i64 * 86_400_000_000_000 + v.milliseconds as i64 * 1_000_000)
        }
        ScalarValue::IntervalMonthDayNano(Some(_)) | ScalarValue::IntervalYearMonth(Some(_)) => {
            return plan_err!("{what}: windows of months or years have no fixed length; use days");
        }
        other => return plan_err!("{what}: expected an INTERVAL, got {other}"),
    };
    match ns {
        Some(n) if n > 0 => Ok(n),
        _ => plan_err!("{what}: the interval must be positive"),
    }
}

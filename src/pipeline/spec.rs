//! What a materialized view's query is, as a pipeline: the one Kafka table it reads, the window its GROUP BY closes
//! (from `TUMBLE` / `HOP` in FROM or `date_bin(…)` in GROUP BY), and the output it writes. Everything a pipeline
//! cannot compute incrementally is refused here, at CREATE time, with a reason.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::MemTable;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::{LogicalPlan, lit};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::sqlparser::ast::{
    Expr as SqlExpr, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr, Query, SelectItem, SetExpr,
    TableFactor, Value,
};

use super::window::{WindowRelationPlanner, interval_ns};
use crate::error::{KfsqlError, Result};

/// The window a pipeline's GROUP BY closes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub size_ns: i64,
    pub slide_ns: i64,
    /// Index of the event-time column in the source table's schema.
    pub time_index: usize,
}

impl Window {
    /// End of the last window holding an event at `t`.
    pub fn last_end(&self, t: i64) -> i64 {
        t.div_euclid(self.slide_ns) * self.slide_ns + self.size_ns
    }

    /// End of the first window holding an event at `t`.
    pub fn first_end(&self, t: i64) -> i64 {
        t.div_euclid(self.slide_ns) * self.slide_ns + self.slide_ns
    }

    /// The greatest window end at or before `t`.
    pub fn end_at_or_before(&self, t: i64) -> i64 {
        t.div_euclid(self.slide_ns) * self.slide_ns
    }
}

/// A pipeline query, analysed.
#[derive(Debug, Clone)]
pub struct Analysis {
    /// The Kafka table read.
    pub source: String,
    /// None: a stateless pipeline (projections and filters), each source row computed once.
    pub window: Option<Window>,
    /// The query's output columns.
    pub output: SchemaRef,
}

/// A session for planning and running one pipeline's query: the source table is whatever rows the pipeline
/// registers under its name, and window functions keep only the windows being emitted.
pub fn pipeline_context(database: &str) -> (SessionContext, Arc<WindowRelationPlanner>) {
    let config = SessionConfig::new().with_default_catalog_and_schema(database, "public");
    let state = SessionStateBuilder::new().with_config(config).with_default_features().build();
    let ctx = SessionContext::new_with_state(state);
    let planner = WindowRelationPlanner::new(ctx.state().catalog_list().clone(), database);
    // registering a relation planner only fails for a duplicate, and this session is new
    let _ = ctx.register_relation_planner(planner.clone());
    (ctx, planner)
}

/// The single table a query reads (through a window function or directly).
pub fn source_table(query: &Query) -> Result<String> {
    let unsupported = |what: &str| {
        KfsqlError::Unsupported(format!(
            "{what} in a materialized view: a pipeline reads one Kafka table (directly, or through TUMBLE / HOP)"
        ))
    };
    if query.with.is_some() {
        return Err(unsupported("WITH"));
    }
    if query.order_by.is_some() || query.limit_clause.is_some() || query.fetch.is_some() {
        return Err(KfsqlError::Unsupported(
            "ORDER BY / LIMIT in a materialized view: a pipeline's output is an unbounded stream of upserts".into(),
        ));
    }
    let SetExpr::Select(select) = query.body.as_ref() else { return Err(unsupported("a set operation")) };
    let [from] = select.from.as_slice() else { return Err(unsupported("a FROM with several items")) };
    if !from.joins.is_empty() {
        return Err(unsupported("a JOIN"));
    }
    let TableFactor::Table { name, args, .. } = &from.relation else { return Err(unsupported("a subquery")) };
    let name = match args {
        None => name.clone(),
        Some(args) => match args.args.first() {
            Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(e))) => {
                super::window::table_name(e).ok_or_else(|| unsupported(&format!("table function {name}")))?
            }
            _ => return Err(unsupported(&format!("table function {name}"))),
        },
    };
    let last = name.0.last().and_then(|p| p.as_ident()).map(|i| i.value.clone());
    last.ok_or_else(|| unsupported("this FROM item"))
}

/// `date_bin(INTERVAL …, column)` in the GROUP BY (directly, by output position or by alias): its SQL arguments.
fn date_bin_group(query: &Query) -> Option<(SqlExpr, String)> {
    let SetExpr::Select(select) = query.body.as_ref() else { return None };
    let GroupByExpr::Expressions(exprs, _) = &select.group_by else { return None };
    let projected = |e: &SqlExpr| -> Option<SqlExpr> {
        match e {
            SqlExpr::Value(v) => match &v.value {
                Value::Number(n, _) => {
                    let i: usize = n.parse().ok()?;
                    match select.projection.get(i.checked_sub(1)?)? {
                        SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => Some(e.clone()),
                        _ => None,
                    }
                }
                _ => None,
            },
            SqlExpr::Identifier(id) => select.projection.iter().find_map(|item| match item {
                SelectItem::ExprWithAlias { expr, alias } if alias.value.eq_ignore_ascii_case(&id.value) => {
                    Some(expr.clone())
                }
                _ => None,
            }),
            other => Some(other.clone()),
        }
    };
    exprs.iter().filter_map(projected).find_map(|e| {
        let SqlExpr::Function(f) = &e else { return None };
        let name = f.name.0.last()?.as_ident()?.value.to_ascii_lowercase();
        if name != "date_bin" {
            return None;
        }
        let FunctionArguments::List(list) = &f.args else { return None };
        match list.args.as_slice() {
            [FunctionArg::Unnamed(FunctionArgExpr::Expr(stride)), FunctionArg::Unnamed(FunctionArgExpr::Expr(col))] => {
                let col = match col {
                    SqlExpr::Identifier(i) => i.value.clone(),
                    SqlExpr::CompoundIdentifier(p) => p.last()?.value.clone(),
                    _ => return None,
                };
                Some((stride.clone(), col))
            }
            _ => None,
        }
    })
}

/// Analyse `query` against the source table's schema; refuses what a pipeline cannot compute.
pub async fn analyse(query: &Query, source_schema: &SchemaRef, database: &str) -> Result<Analysis> {
    let source = source_table(query)?;
    let (ctx, planner) = pipeline_context(database);
    let empty = MemTable::try_new(source_schema.clone(), vec![vec![]]).map_err(KfsqlError::from_datafusion)?;
    ctx.register_table(source.as_str(), Arc::new(empty)).map_err(KfsqlError::from_datafusion)?;
    let df = ctx.sql(&query.to_string()).await.map_err(KfsqlError::from_datafusion)?;
    let plan = df.logical_plan().clone();
    let mut aggregates = false;
    let mut refused = None;
    plan.apply(|node| {
        match node {
            LogicalPlan::Aggregate(_) | LogicalPlan::Distinct(_) => aggregates = true,
            LogicalPlan::Window(_) => refused = Some("window functions (OVER …)"),
            _ => {}
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .map_err(KfsqlError::from_datafusion)?;
    if let Some(what) = refused {
        return Err(KfsqlError::Unsupported(format!("{what} in a materialized view")));
    }
    let time_index = |column: &str| {
        source_schema.index_of(column).map_err(|_| {
            KfsqlError::InvalidParameter(format!("the window's time column '{column}' is not a column of {source}"))
        })
    };
    let window = if let Some(w) = planner.last_window() {
        Some(Window { size_ns: w.size_ns, slide_ns: w.slide_ns, time_index: time_index(&w.time_column)? })
    } else if let Some((stride, column)) = date_bin_group(query) {
        let df = ctx.sql(&format!("SELECT {stride}")).await.map_err(KfsqlError::from_datafusion)?;
        let values = df.collect().await.map_err(KfsqlError::from_datafusion)?;
        let value = values
            .first()
            .filter(|b| b.num_rows() == 1)
            .map(|b| ScalarValue::try_from_array(b.column(0), 0))
            .transpose()
            .map_err(KfsqlError::from_datafusion)?
            .ok_or_else(|| KfsqlError::InvalidParameter("date_bin: the stride must be a constant INTERVAL".into()))?;
        let size = interval_ns(lit(value), "date_bin").map_err(KfsqlError::from_datafusion)?;
        let time_index = time_index(&column)?;
        if !matches!(source_schema.field(time_index).data_type(), DataType::Timestamp(_, _)) {
            return Err(KfsqlError::InvalidParameter(format!("date_bin over '{column}', which is not a TIMESTAMP")));
        }
        Some(Window { size_ns: size, slide_ns: size, time_index })
    } else {
        None
    };
    if aggregates && window.is_none() {
        return Err(KfsqlError::Unsupported(
            "an aggregation without a window in a materialized view: group by a window on the event time \
             (FROM TUMBLE(t, ts, INTERVAL '1 hour'), HOP(t, ts, slide, size), or GROUP BY date_bin(INTERVAL '1 hour', ts)) \
             so that each result becomes final when its window closes"
                .into(),
        ));
    }
    if window.is_some() && !aggregates {
        return Err(KfsqlError::Unsupported(
            "a window without GROUP BY in a materialized view: aggregate per window (count(*), sum(…), …)".into(),
        ));
    }
    let output = Arc::new(normalized(plan.schema().as_arrow()));
    Ok(Analysis { source, window, output })
}

/// The output schema as the feature topic declares it: string views as strings (JSON has one string type).
fn normalized(schema: &Schema) -> Schema {
    Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| {
                let dt = match f.data_type() {
                    DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
                    other => other.clone(),
                };
                f.as_ref().clone().with_data_type(dt)
            })
            .collect::<Vec<_>>(),
    )
}

/// Options of `CREATE MATERIALIZED VIEW … WITH (…)` that configure the pipeline rather than the feature table.
pub const PIPELINE_OPTIONS: [&str; 3] = ["topic", "partitions", "allowed_lateness"];

/// The feature table a materialized view declares: its output columns, the table options given (`key`,
/// `event_time` — by default `window_end` when selected —, `online`, `ttl`, …) and the pipeline.
pub fn target_definition(
    name: &str,
    query: &Query,
    analysis: &Analysis,
    mut options: std::collections::BTreeMap<String, String>,
) -> Result<crate::table::TableDefinition> {
    let topic = options.remove("topic").unwrap_or_else(|| name.to_string());
    options.remove("partitions");
    let lateness = match options.remove("allowed_lateness") {
        None => std::time::Duration::ZERO,
        Some(v) => humantime::parse_duration(v.trim()).map_err(|e| {
            KfsqlError::InvalidParameter(format!("allowed_lateness '{v}' is not a duration like '5 seconds' ({e})"))
        })?,
    };
    if !options.contains_key("key") {
        return Err(KfsqlError::InvalidParameter(
            "a materialized view needs WITH (key = '<column>'): its output rows are upserts keyed by it".into(),
        ));
    }
    if !options.contains_key("event_time") && analysis.output.field_with_name(super::window::WINDOW_END).is_ok() {
        options.insert("event_time".into(), super::window::WINDOW_END.into());
    }
    let mut def = crate::table::TableDefinition::new(name, &topic, &analysis.output, options)?;
    def.pipeline = Some(crate::table::definition::PipelineDefinition {
        query: query.to_string(),
        allowed_lateness_ms: u64::try_from(lateness.as_millis()).unwrap_or(u64::MAX),
    });
    Ok(def)
}

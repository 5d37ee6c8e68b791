//! The point-lookup fast path. A plan of the shape
//! `Projection(columns) → Filter(key = v | key IN (v, …)) → TableScan(latest.t)` — `SELECT … FROM latest.t WHERE
//! key = $1` — is answered straight from the view's map: no optimizer, no physical planning, no DataFusion
//! execution. The server recognises it once, when a statement is prepared, and then only binds the keys at each
//! execution ([`Lookup::run_with`]); the engine also recognises it in any plan it runs ([`Lookup::run`]).
//! Everything else goes the normal way (where [`super::LatestTable`] still looks up only the keys a filter names).

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::ScalarValue;
use datafusion::datasource::source_as_provider;
use datafusion::logical_expr::{BinaryExpr, Expr, LogicalPlan, Operator};

use super::table::LatestTable;
use super::view::{LatestView, now_ns};
use crate::error::{KfsqlError, Result};

/// Where a looked-up key comes from.
#[derive(Debug, Clone)]
enum KeySource {
    Literal(String),
    /// Parameter `$n` (1-based).
    Param(usize),
}

/// A lookup recognised in a plan.
#[derive(Debug)]
pub struct Lookup {
    view: Arc<LatestView>,
    keys: Vec<KeySource>,
    /// Output columns as indices into the view's full schema.
    columns: Vec<usize>,
    schema: SchemaRef,
}

impl Lookup {
    /// Recognise the fast-path shape; None for any other plan.
    pub fn from_plan(plan: &LogicalPlan) -> Option<Lookup> {
        let (exprs, mut node) = match plan {
            LogicalPlan::Projection(p) => (Some(&p.expr), p.input.as_ref()),
            other => (None, other),
        };
        while let LogicalPlan::SubqueryAlias(a) = node {
            node = a.input.as_ref();
        }
        let LogicalPlan::Filter(filter) = node else { return None };
        let mut node = filter.input.as_ref();
        while let LogicalPlan::SubqueryAlias(a) = node {
            node = a.input.as_ref();
        }
        let LogicalPlan::TableScan(scan) = node else { return None };
        if !scan.filters.is_empty() || scan.fetch.is_some() {
            return None;
        }
        let provider = source_as_provider(&scan.source).ok()?;
        let any: &dyn std::any::Any = provider.as_ref();
        let view = any.downcast_ref::<LatestTable>()?.view.clone();
        let keys = keys_of(&filter.predicate, &view.key_column)?;
        let scan_index = |name: &str| -> Option<usize> {
            let i = scan.projected_schema.index_of_column_by_name(None, name)?;
            Some(match &scan.projection {
                Some(p) => *p.get(i)?,
                None => i,
            })
        };
        let columns = match exprs {
            Some(exprs) => exprs
                .iter()
                .map(|e| match e {
                    Expr::Column(c) => scan_index(&c.name),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()?,
            None => (0..scan.projected_schema.fields().len())
                .map(|i| scan_index(scan.projected_schema.field(i).name()))
                .collect::<Option<Vec<_>>>()?,
        };
        let schema = Arc::new(plan.schema().as_arrow().clone());
        // the output must be the view's columns as they are (no casts hidden in the plan)
        for (i, &c) in columns.iter().enumerate() {
            if schema.field(i).data_type() != view.schema.field(c).data_type() {
                return None;
            }
        }
        Some(Lookup { view, keys, columns, schema })
    }

    /// Run a lookup whose keys are all literals.
    pub fn run(&self) -> Result<RecordBatch> {
        self.run_with(&[])
    }

    /// Run with the bound parameter values (`params[0]` is `$1`).
    pub fn run_with(&self, params: &[ScalarValue]) -> Result<RecordBatch> {
        let mut keys = Vec::with_capacity(self.keys.len());
        for k in &self.keys {
            match k {
                KeySource::Literal(s) => keys.push(s.clone()),
                KeySource::Param(n) => {
                    let v = params
                        .get(n - 1)
                        .ok_or_else(|| KfsqlError::InvalidParameter(format!("no value bound for parameter ${n}")))?;
                    // NULL matches no key
                    if let Some(text) = scalar_text(v) {
                        keys.push(text);
                    } else if !v.is_null() {
                        return Err(KfsqlError::InvalidParameter(format!("${n}: {v} cannot be a key")));
                    }
                }
            }
        }
        self.lookup(&keys)
    }

    fn lookup(&self, keys: &[String]) -> Result<RecordBatch> {
        self.view.check_ready()?;
        self.view.fresh.lookups.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let full = {
            let state = self.view.state.read().unwrap_or_else(|p| p.into_inner());
            self.view.rows(&state, Some(keys), now_ns())?
        };
        let columns = self.columns.iter().map(|&c| full.column(c).clone()).collect();
        RecordBatch::try_new(self.schema.clone(), columns)
            .map_err(|e| KfsqlError::Internal(format!("latest.{} lookup: {e}", self.view.name)))
    }
}

/// The keys of `key = v`, `v = key`, `key IN (v, …)` or an OR of equalities.
fn keys_of(predicate: &Expr, key: &str) -> Option<Vec<KeySource>> {
    match predicate {
        Expr::BinaryExpr(BinaryExpr { left, op: Operator::Eq, right }) => {
            let (col, value) = match (left.as_ref(), right.as_ref()) {
                (Expr::Column(c), v) | (v, Expr::Column(c)) => (c, v),
                _ => return None,
            };
            (col.name == key).then(|| key_source(value)).flatten().map(|v| vec![v])
        }
        Expr::BinaryExpr(BinaryExpr { left, op: Operator::Or, right }) => {
            let mut keys = keys_of(left, key)?;
            keys.extend(keys_of(right, key)?);
            Some(keys)
        }
        Expr::InList(list) if !list.negated => match list.expr.as_ref() {
            Expr::Column(c) if c.name == key => list.list.iter().map(key_source).collect(),
            _ => None,
        },
        _ => None,
    }
}

/// A literal key (as the view stores it: its text) or a parameter.
fn key_source(e: &Expr) -> Option<KeySource> {
    match e {
        Expr::Literal(v, _) => scalar_text(v).map(KeySource::Literal),
        Expr::Placeholder(p) => p.id.strip_prefix('$')?.parse().ok().filter(|n| *n >= 1).map(KeySource::Param),
        Expr::Cast(c) => key_source(&c.expr),
        _ => None,
    }
}

fn scalar_text(v: &ScalarValue) -> Option<String> {
    crate::table::pushdown::key_text(v)
}

//! Latest views as DataFusion tables: [`LatestTable`] (`latest.<table>`, served from memory; key equality and IN
//! lists look up only those keys) and [`LatestAsOfTable`] (`latest.<table> FOR SYSTEM_TIME AS OF T`, rebuilt from
//! the log as known at T), created by the table function behind the time-travel rewrite.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl};
use datafusion::common::{DFSchema, ScalarValue, plan_err};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
use datafusion::physical_plan::ExecutionPlan;

use super::LatestViews;
use super::view::{LatestView, now_ns};
use crate::error::KfsqlError;
use crate::table::pushdown;

/// `latest.<table>`: one row per key, from memory.
#[derive(Debug)]
pub struct LatestTable {
    pub view: Arc<LatestView>,
}

#[async_trait]
impl TableProvider for LatestTable {
    fn schema(&self) -> SchemaRef {
        self.view.schema.clone()
    }

    /// A table to clients (psql `\dt latest.*`, BI tools), though kfsql maintains it.
    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(pushdown::pushdown_kinds(filters, Some(&self.view.key_column)))
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.view.check_ready().map_err(KfsqlError::into_datafusion)?;
        let bounds = pushdown::bounds(filters, Some(&self.view.key_column));
        let keys: Option<Vec<String>> = bounds.keys.map(|k| k.into_iter().collect());
        let batch = {
            let state = self.view.state.read().unwrap_or_else(|p| p.into_inner());
            self.view.rows(&state, keys.as_deref(), now_ns()).map_err(KfsqlError::into_datafusion)?
        };
        Ok(MemorySourceConfig::try_new_exec(&[vec![batch]], self.view.schema.clone(), projection.cloned())?)
    }
}

/// `latest.<table>` as known at a past time: replayed from the topic when scanned.
#[derive(Debug)]
pub struct LatestAsOfTable {
    view: Arc<LatestView>,
    at_ms: i64,
    views: Arc<LatestViews>,
}

#[async_trait]
impl TableProvider for LatestAsOfTable {
    fn schema(&self) -> SchemaRef {
        self.view.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let batch = self.views.as_of(&self.view, self.at_ms).await.map_err(KfsqlError::into_datafusion)?;
        Ok(MemorySourceConfig::try_new_exec(&[vec![batch]], self.view.schema.clone(), projection.cloned())?)
    }
}

/// `kfsql_latest_as_of('table', timestamp)`: what `latest.table FOR SYSTEM_TIME AS OF timestamp` becomes.
#[derive(Debug)]
pub struct LatestAsOfFunction {
    pub views: std::sync::Weak<LatestViews>,
}

pub const AS_OF_FUNCTION: &str = "kfsql_latest_as_of";

impl TableFunctionImpl for LatestAsOfFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> DfResult<Arc<dyn TableProvider>> {
        let Some(views) = self.views.upgrade() else { return plan_err!("kfsql is shutting down") };
        let [name, at] = args.exprs() else {
            return plan_err!("{AS_OF_FUNCTION}(table, timestamp) takes two arguments");
        };
        let Expr::Literal(ScalarValue::Utf8(Some(name)), _) = name else {
            return plan_err!("{AS_OF_FUNCTION}: the table must be a string");
        };
        let Some(view) = views.get(name) else {
            return Err(
                KfsqlError::UndefinedTable(format!("relation \"latest.{name}\" does not exist")).into_datafusion()
            );
        };
        let info = SimplifyContext::builder().with_schema(Arc::new(DFSchema::empty())).with_current_time().build();
        let simplifier = ExprSimplifier::new(info);
        let at = simplifier.simplify(Expr::Cast(datafusion::logical_expr::Cast::new(
            Box::new(at.clone()),
            datafusion::arrow::datatypes::DataType::Timestamp(
                datafusion::arrow::datatypes::TimeUnit::Millisecond,
                None,
            ),
        )))?;
        let Expr::Literal(ScalarValue::TimestampMillisecond(Some(at_ms), _), _) = at else {
            return plan_err!("FOR SYSTEM_TIME AS OF needs a constant timestamp, got {at}");
        };
        Ok(Arc::new(LatestAsOfTable { view, at_ms, views }))
    }
}

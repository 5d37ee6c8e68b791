//! Getting ASOF joins through DataFusion's planners: the AST rewrite, the relation planner that builds
//! [`AsofJoin`] nodes, and the query planner that turns them into [`AsofJoinExec`].

use std::any::Any;
use std::ops::ControlFlow;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::{Column, DFSchema, Result, plan_err};
use datafusion::datasource::source_as_provider;
use datafusion::error::DataFusionError;
use datafusion::execution::context::QueryPlanner;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::planner::{PlannedRelation, RelationPlanner, RelationPlannerContext, RelationPlanning};
use datafusion::logical_expr::utils::split_conjunction_owned;
use datafusion::logical_expr::{
    BinaryExpr, Expr, Extension, JoinType, LogicalPlan, LogicalPlanBuilder, Operator, UserDefinedLogicalNode,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};
use datafusion::sql::sqlparser::ast::{
    Join, JoinConstraint, JoinOperator, Query, SetExpr, Statement, TableFactor, TableWithJoins, VisitMut, VisitorMut,
};

use super::exec::AsofJoinExec;
use super::node::{AsofJoin, AsofOp};
use crate::table::KafkaTable;

/// Wrap every FROM item containing an ASOF join into a nested join, so that [`AsofRelationPlanner`] sees it.
pub fn rewrite(stmt: &mut Statement) {
    struct Wrap;
    impl VisitorMut for Wrap {
        type Break = ();
        fn pre_visit_query(&mut self, q: &mut Query) -> ControlFlow<()> {
            wrap_set_expr(&mut q.body);
            ControlFlow::Continue(())
        }
    }
    let _ = stmt.visit(&mut Wrap);
}

fn wrap_set_expr(body: &mut SetExpr) {
    match body {
        SetExpr::Select(select) => {
            for item in select.from.iter_mut().filter(|t| has_asof(t)) {
                let placeholder = TableWithJoins { relation: item.relation.clone(), joins: vec![] };
                let inner = std::mem::replace(item, placeholder);
                *item = TableWithJoins {
                    relation: TableFactor::NestedJoin { table_with_joins: Box::new(inner), alias: None },
                    joins: vec![],
                };
            }
        }
        SetExpr::SetOperation { left, right, .. } => {
            wrap_set_expr(left);
            wrap_set_expr(right);
        }
        _ => {}
    }
}

fn has_asof(t: &TableWithJoins) -> bool {
    t.joins.iter().any(|j| matches!(j.join_operator, JoinOperator::AsOf { .. }))
}

/// Plans nested joins that contain ASOF joins.
#[derive(Debug, Default)]
pub struct AsofRelationPlanner;

impl RelationPlanner for AsofRelationPlanner {
    fn plan_relation(&self, relation: TableFactor, ctx: &mut dyn RelationPlannerContext) -> Result<RelationPlanning> {
        let TableFactor::NestedJoin { table_with_joins, alias } = relation else {
            return Ok(RelationPlanning::Original(Box::new(relation)));
        };
        if !has_asof(&table_with_joins) {
            return Ok(RelationPlanning::Original(Box::new(TableFactor::NestedJoin { table_with_joins, alias })));
        }
        let TableWithJoins { relation, joins } = *table_with_joins;
        let mut plan = ctx.plan(relation)?;
        for Join { relation, join_operator, .. } in joins {
            let ttl = ttl_of(&relation, ctx);
            let right = ctx.plan(relation)?;
            plan = match join_operator {
                JoinOperator::AsOf { match_condition, constraint } => {
                    plan_asof(plan, right, match_condition, constraint, ttl, ctx)?
                }
                JoinOperator::Inner(c) | JoinOperator::Join(c) => plan_join(plan, right, JoinType::Inner, c, ctx)?,
                JoinOperator::Left(c) | JoinOperator::LeftOuter(c) => plan_join(plan, right, JoinType::Left, c, ctx)?,
                JoinOperator::CrossJoin(_) => LogicalPlanBuilder::from(plan).cross_join(right)?.build()?,
                other => return datafusion::common::not_impl_err!("{other:?} beside an ASOF join"),
            };
        }
        Ok(RelationPlanning::Planned(Box::new(PlannedRelation::new(plan, alias))))
    }
}

/// The TTL of a right relation that is a Kafka table declaring one.
fn ttl_of(relation: &TableFactor, ctx: &mut dyn RelationPlannerContext) -> Option<i64> {
    let TableFactor::Table { name, .. } = relation else { return None };
    let reference = ctx.object_name_to_table_reference(name.clone()).ok()?;
    let source = ctx.context_provider().get_table_source(reference).ok()?;
    let provider = source_as_provider(&source).ok()?;
    let any: &dyn Any = provider.as_ref();
    let kafka = any.downcast_ref::<KafkaTable>()?;
    kafka.options().ttl.and_then(|d| i64::try_from(d.as_nanos()).ok())
}

fn plan_join(
    left: LogicalPlan,
    right: LogicalPlan,
    join_type: JoinType,
    c: JoinConstraint,
    ctx: &mut dyn RelationPlannerContext,
) -> Result<LogicalPlan> {
    let builder = LogicalPlanBuilder::from(left.clone());
    match c {
        JoinConstraint::On(expr) => {
            let schema = left.schema().join(right.schema())?;
            let on = ctx.sql_to_expr(expr, &schema)?;
            builder.join_on(right, join_type, vec![on])?.build()
        }
        JoinConstraint::Using(names) => {
            let cols: Vec<Column> = names.iter().map(|n| Column::from_name(n.to_string())).collect();
            builder.join_using(right, join_type, cols)?.build()
        }
        JoinConstraint::None | JoinConstraint::Natural => plan_err!("a join beside an ASOF join needs ON or USING"),
    }
}

/// Which side of the join an expression reads: Some(true) left only, Some(false) right only, None mixed or neither.
fn side(expr: &Expr, left: &DFSchema, right: &DFSchema) -> Option<bool> {
    let cols = expr.column_refs();
    if cols.is_empty() {
        return None;
    }
    if cols.iter().all(|c| left.has_column(c)) {
        Some(true)
    } else if cols.iter().all(|c| right.has_column(c)) {
        Some(false)
    } else {
        None
    }
}

fn plan_asof(
    left: LogicalPlan,
    right: LogicalPlan,
    match_condition: datafusion::sql::sqlparser::ast::Expr,
    constraint: JoinConstraint,
    ttl: Option<i64>,
    ctx: &mut dyn RelationPlannerContext,
) -> Result<LogicalPlan> {
    let schema = left.schema().join(right.schema())?;
    let (ls, rs) = (left.schema().clone(), right.schema().clone());
    let cond = ctx.sql_to_expr(match_condition, &schema)?;
    let Expr::BinaryExpr(BinaryExpr { left: a, op, right: b }) = cond else {
        return plan_err!("MATCH_CONDITION must compare a left and a right time with >=, >, <= or <, got {cond}");
    };
    let (left_time, op, right_time) = match (side(&a, &ls, &rs), side(&b, &ls, &rs)) {
        (Some(true), Some(false)) => (*a, op, *b),
        (Some(false), Some(true)) => match op.swap() {
            Some(op) => (*b, op, *a),
            None => return plan_err!("MATCH_CONDITION operator {op} cannot be mirrored"),
        },
        _ => {
            return plan_err!("MATCH_CONDITION must compare a column of the left side with a column of the right side");
        }
    };
    let Some(op) = AsofOp::from_operator(op) else {
        return plan_err!("MATCH_CONDITION must use >=, >, <= or <, not {op}");
    };
    let on = match constraint {
        JoinConstraint::On(expr) => {
            let e = ctx.sql_to_expr(expr, &schema)?;
            let mut pairs = Vec::new();
            for conj in split_conjunction_owned(e) {
                let Expr::BinaryExpr(BinaryExpr { left: a, op: Operator::Eq, right: b }) = conj else {
                    return plan_err!("the ON of an ASOF join must be equalities joined by AND, got {conj}");
                };
                match (side(&a, &ls, &rs), side(&b, &ls, &rs)) {
                    (Some(true), Some(false)) => pairs.push((*a, *b)),
                    (Some(false), Some(true)) => pairs.push((*b, *a)),
                    _ => {
                        return plan_err!(
                            "each ON equality of an ASOF join must compare a left column with a right column"
                        );
                    }
                }
            }
            pairs
        }
        JoinConstraint::Using(names) => names
            .iter()
            .map(|n| {
                let name = n.to_string();
                let l = ls
                    .qualified_field_with_unqualified_name(&name)
                    .map(|(q, f)| Expr::Column(Column::new(q.cloned(), f.name())))?;
                let r = rs
                    .qualified_field_with_unqualified_name(&name)
                    .map(|(q, f)| Expr::Column(Column::new(q.cloned(), f.name())))?;
                Ok((l, r))
            })
            .collect::<Result<Vec<_>>>()?,
        JoinConstraint::None => Vec::new(),
        JoinConstraint::Natural => return plan_err!("NATURAL is not supported for ASOF joins"),
    };
    let node = AsofJoin::try_new(left, right, on, left_time, right_time, op, ttl)?;
    Ok(LogicalPlan::Extension(Extension { node: Arc::new(node) }))
}

/// DataFusion's physical planner plus the ASOF join.
#[derive(Debug, Default)]
pub struct AsofQueryPlanner;

#[async_trait]
impl QueryPlanner for AsofQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(AsofExtensionPlanner)])
            .create_physical_plan(logical_plan, session)
            .await
    }
}

struct AsofExtensionPlanner;

#[async_trait]
impl ExtensionPlanner for AsofExtensionPlanner {
    async fn plan_extension(
        &self,
        planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        session: &dyn Session,
        planning_ctx: &PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(join) = node.as_any().downcast_ref::<AsofJoin>() else { return Ok(None) };
        let [left_l, right_l] = logical_inputs else {
            return Err(DataFusionError::Internal("AsofJoin has two inputs".into()));
        };
        let [left, right] = physical_inputs else {
            return Err(DataFusionError::Internal("AsofJoin has two inputs".into()));
        };
        let phys = |e: &Expr, s: &DFSchema| planner.create_physical_expr(e, s, session, planning_ctx);
        let left_keys = join.on.iter().map(|(l, _)| phys(l, left_l.schema())).collect::<Result<Vec<_>>>()?;
        let right_keys = join.on.iter().map(|(_, r)| phys(r, right_l.schema())).collect::<Result<Vec<_>>>()?;
        let left_time = phys(&join.left_time, left_l.schema())?;
        let right_time = phys(&join.right_time, right_l.schema())?;
        let tie = ["_offset", "_partition"].map(|n| right_l.schema().as_arrow().index_of(n).ok());
        Ok(Some(Arc::new(AsofJoinExec::try_new(
            left.clone(),
            right.clone(),
            left_keys,
            right_keys,
            left_time,
            right_time,
            join.op,
            join.ttl_nanos,
            tie,
            Arc::new(join.schema.as_arrow().clone()),
        )?)))
    }
}

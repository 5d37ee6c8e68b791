//! Scalar subqueries in the shape client catalog queries write them, made plannable by DataFusion's decorrelation
//! (which needs equality correlations and an aggregate) without changing their answer:
//!
//! - `(SELECT e FROM t WHERE outer.flag AND t.k = outer.k)`: a conjunct that reads only the outer row moves out,
//!   `CASE WHEN outer.flag THEN (SELECT e FROM t WHERE t.k = outer.k) END`, the same value for every row;
//! - a correlated subquery over catalog relations only, not aggregated, selects `first_value(e)`: catalog lookups
//!   go by key (an OID, a relation and attribute number) and find at most one row, where the aggregate changes
//!   nothing. Subqueries over Kafka tables are left as written, so DataFusion's own rules decide them;
//! - a catalog lookup whose value reads the outer row (`json_build_object('always', outer.x = 'a', 'start', s.v)`)
//!   or whose condition compares inner and outer columns other than by equality becomes the same expression over
//!   looked-up values, each its own aggregated subquery, when the row exists;
//! - `ARRAY(SELECT e FROM … ORDER BY o)` → `(SELECT array_agg(e ORDER BY o) FROM …)`.

use std::collections::HashSet;
use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    BinaryOperator, Expr, Function, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr, Ident, JoinOperator,
    Query, Select, SelectItem, SetExpr, TableFactor, TableWithJoins, Visit, VisitMut, Visitor, VisitorMut,
};

use super::parse_expr;

const AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "min",
    "max",
    "avg",
    "array_agg",
    "string_agg",
    "bool_and",
    "bool_or",
    "every",
    "first_value",
    "last_value",
    "json_agg",
    "jsonb_agg",
];

/// The relations of the query a subquery sits in: the name each is known by → the relation's (qualified) name.
pub type Scope = std::collections::HashMap<String, String>;

pub fn scope_of(query: &Query) -> Scope {
    let mut scope = Scope::new();
    if let SetExpr::Select(select) = query.body.as_ref() {
        for t in &select.from {
            for factor in std::iter::once(&t.relation).chain(t.joins.iter().map(|j| &j.relation)) {
                if let TableFactor::Table { name, alias, args: None, .. } = factor {
                    let known = match alias {
                        Some(a) => a.name.value.to_ascii_lowercase(),
                        None => name
                            .0
                            .last()
                            .and_then(|p| p.as_ident())
                            .map(|i| i.value.to_ascii_lowercase())
                            .unwrap_or_default(),
                    };
                    scope.insert(known, name.to_string());
                }
            }
        }
    }
    scope
}

/// `expr` is a scalar subquery in a query whose relations are `outer`: hoist its outer-only conjuncts and aggregate
/// it where that is exact.
pub fn decorrelatable(expr: &mut Expr, outer: Option<&Scope>) {
    let Expr::Subquery(query) = expr else { return };
    let Some(select) = simple_select(query) else { return };
    let inner = relation_names(&select.from);
    let mut hoisted = Vec::new();
    let mut mixed: Vec<Expr> = Vec::new();
    if let Some(selection) = select.selection.take() {
        let mut kept = Vec::new();
        for conjunct in conjuncts(selection) {
            let refs = References::of(&conjunct, &inner);
            if refs.outer && !refs.inner && !refs.unqualified && !refs.subquery {
                hoisted.push(conjunct);
            } else if refs.outer
                && (refs.inner || refs.unqualified)
                && !refs.subquery
                && !is_correlation_equality(&conjunct, &inner)
            {
                mixed.push(conjunct);
            } else {
                kept.push(conjunct);
            }
        }
        select.selection = and_all(kept);
    }
    let correlated = is_correlated(select, &inner) || !mixed.is_empty();
    let catalog_lookup = correlated && only_catalog_relations(&select.from);
    let aggregated = matches!(&select.projection[0],
        SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } if is_aggregate(e));
    if catalog_lookup
        && aggregated
        && mixed.len() == 1
        && let Some(outer) = outer
        && let Some((array, element)) = any_of_outer_array(&mixed[0], &inner)
        && let Some(relation) = qualifier(&array).and_then(|q| outer.get(&q).map(|r| (q, r)))
    {
        // `k = ANY(o.arr)` under an aggregate: group by the distinct arrays of o's relation, then correlate by
        // equality with `o.arr`.
        let (alias, table) = relation;
        let any = format!("(SELECT DISTINCT {array} AS kfsql_arr FROM {table} AS {alias}) AS kfsql_any");
        let condition = format!("array_has(kfsql_any.kfsql_arr, {element}) AND kfsql_any.kfsql_arr = {array}");
        if let (Some(condition), Ok(mut factor)) = (
            parse_expr(&condition),
            datafusion::sql::sqlparser::parser::Parser::new(&datafusion::sql::sqlparser::dialect::PostgreSqlDialect {})
                .try_with_sql(&any)
                .and_then(|mut p| p.parse_table_factor()),
        ) {
            if let TableFactor::Derived { .. } = &mut factor {
                select.from.push(TableWithJoins { relation: factor, joins: vec![] });
                select.selection = and_all(select.selection.take().into_iter().chain([condition]).collect());
                mixed.clear();
            }
        }
    }
    if catalog_lookup && aggregated {
        // an aggregate over several rows: nothing to lift
    } else if catalog_lookup {
        let (SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. }) = &mut select.projection[0] else {
            return;
        };
        let outer_in_value = References::of(e, &inner).outer;
        if outer_in_value || !mixed.is_empty() {
            // DataFusion decorrelates neither outer columns inside the subquery's value nor correlations other than
            // equalities. With at most one row found, `f(inner, outer)` is `f((lookup of inner), outer)`, and a
            // mixed condition is the same condition over the looked-up values, when the row exists.
            let value = e.clone();
            let lookup = Lookup::new(&select.from, select.selection.as_ref(), &inner);
            let mut guard = vec![lookup.exists()];
            guard.extend(mixed.iter().map(|m| lookup.lifted(m)));
            let condition = hoisted.iter().map(|h| h.to_string()).chain(guard).collect::<Vec<_>>().join(" AND ");
            if let Some(case) = parse_expr(&format!("CASE WHEN {condition} THEN {} END", lookup.lifted(&value))) {
                *expr = case;
            }
            return;
        }
        if !aggregated && let Some(wrapped) = parse_expr(&format!("first_value({e})")) {
            *e = wrapped;
        }
    }
    if !mixed.is_empty() {
        // not ours to reshape: put the conditions back as written
        select.selection = and_all(select.selection.take().into_iter().chain(mixed).collect());
    }
    if let Some(condition) = and_all(hoisted)
        && let Some(case) = parse_expr(&format!("CASE WHEN {condition} THEN ({query}) END"))
    {
        *expr = case;
    }
}

/// `inner_expr = ANY(o.arr)` (or `array_contains(o.arr, inner_expr)`, its form after datafusion-pg-catalog): `(o.arr, inner_expr)`.
fn any_of_outer_array(conjunct: &Expr, inner: &HashSet<String>) -> Option<(Expr, Expr)> {
    let (array, element) = match conjunct {
        Expr::AnyOp { left, compare_op: BinaryOperator::Eq, right, .. } => {
            (right.as_ref().clone(), left.as_ref().clone())
        }
        Expr::Function(f)
            if ["array_has", "array_contains"].iter().any(|n| f.name.to_string().eq_ignore_ascii_case(n)) =>
        {
            let FunctionArguments::List(list) = &f.args else { return None };
            let [FunctionArg::Unnamed(FunctionArgExpr::Expr(a)), FunctionArg::Unnamed(FunctionArgExpr::Expr(x))] =
                list.args.as_slice()
            else {
                return None;
            };
            (a.clone(), x.clone())
        }
        _ => return None,
    };
    let array = match array {
        Expr::Nested(a) => *a,
        a => a,
    };
    let (a, x) = (References::of(&array, inner), References::of(&element, inner));
    (matches!(array, Expr::CompoundIdentifier(_)) && a.outer && !x.outer).then_some((array, element))
}

fn qualifier(column: &Expr) -> Option<String> {
    match column {
        Expr::CompoundIdentifier(parts) if parts.len() >= 2 => Some(parts[parts.len() - 2].value.to_ascii_lowercase()),
        _ => None,
    }
}

/// `inner_expr = outer_expr` (either way round), which DataFusion turns into a join key.
fn is_correlation_equality(conjunct: &Expr, inner: &HashSet<String>) -> bool {
    let Expr::BinaryOp { left, op: BinaryOperator::Eq, right } = conjunct else { return false };
    let (l, r) = (References::of(left, inner), References::of(right, inner));
    let only_inner = |x: &References| (x.inner || x.unqualified) && !x.outer && !x.subquery;
    let only_outer = |x: &References| x.outer && !x.inner && !x.unqualified && !x.subquery;
    (only_inner(&l) && only_outer(&r)) || (only_outer(&l) && only_inner(&r))
}

/// The catalog lookup a correlated subquery performs, as separate scalar subqueries.
struct Lookup<'a> {
    from: &'a [TableWithJoins],
    selection: Option<&'a Expr>,
    inner: &'a HashSet<String>,
    /// The lookup split per relation, when it splits (see [`Lookup::per_relation`]).
    parts: Option<Vec<(String, String, Option<Expr>)>>,
}

impl<'a> Lookup<'a> {
    fn new(from: &'a [TableWithJoins], selection: Option<&'a Expr>, inner: &'a HashSet<String>) -> Self {
        let mut lookup = Lookup { from, selection, inner, parts: None };
        lookup.parts = lookup.per_relation();
        lookup
    }

    fn query(&self, value: &str) -> String {
        let from = self.from.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", ");
        match self.selection {
            Some(w) => format!("SELECT {value} FROM {from} WHERE {w}"),
            None => format!("SELECT {value} FROM {from}"),
        }
    }

    /// The lookup as one lookup per relation, when the relations are listed apart (`FROM a, b`) and every condition
    /// reads one of them: `[(name, FROM text, its conditions)]`. Looking each up on its own finds the same row,
    /// without the product of the relations that DataFusion would otherwise aggregate.
    fn per_relation(&self) -> Option<Vec<(String, String, Option<Expr>)>> {
        if self.from.len() < 2 || self.from.iter().any(|t| !t.joins.is_empty()) {
            return None;
        }
        let mut parts: Vec<(String, String, Vec<Expr>)> = Vec::new();
        for t in self.from {
            let names = relation_names(std::slice::from_ref(t));
            let name = names.into_iter().next()?;
            parts.push((name, t.to_string(), Vec::new()));
        }
        for conjunct in self.selection.cloned().map(conjuncts).unwrap_or_default() {
            let read = relations_read(&conjunct, self.inner)?;
            let [only] = read.as_slice() else { return None };
            parts.iter_mut().find(|(n, _, _)| n == only)?.2.push(conjunct);
        }
        Some(parts.into_iter().map(|(n, from, w)| (n, from, and_all(w))).collect())
    }

    /// `(the lookup finds a row) > 0`, as a condition.
    fn exists(&self) -> String {
        match &self.parts {
            Some(parts) => parts
                .iter()
                .map(|(_, from, w)| match w {
                    Some(w) => format!("(SELECT count(*) FROM {from} WHERE {w}) > 0"),
                    None => format!("(SELECT count(*) FROM {from}) > 0"),
                })
                .collect::<Vec<_>>()
                .join(" AND "),
            None => format!("({}) > 0", self.query("count(*)")),
        }
    }

    /// The looked-up value of `part`: from its one relation when the lookup splits, else from the whole lookup.
    fn value(&self, part: &Expr) -> String {
        let value = format!("first_value({part})");
        if let Some(parts) = &self.parts
            && let Some(read) = relations_read(part, self.inner)
            && let [only] = read.as_slice()
            && let Some((_, from, w)) = parts.iter().find(|(n, _, _)| n == only)
        {
            return match w {
                Some(w) => format!("SELECT {value} FROM {from} WHERE {w}"),
                None => format!("SELECT {value} FROM {from}"),
            };
        }
        self.query(&value)
    }

    /// `e` with each largest part that reads only the subquery's relations replaced by its looked-up value.
    fn lifted(&self, e: &Expr) -> String {
        let mut e = e.clone();
        let mut parts = Lift { inner: self.inner, found: Vec::new() };
        let _ = VisitMut::visit(&mut e, &mut parts);
        let mut text = e.to_string();
        for (i, part) in parts.found.iter().enumerate() {
            text = text.replace(&marker(i), &format!("({})", self.value(part)));
        }
        text
    }
}

/// The subquery's relations `e` reads (by the name they are known by); None when it has an unqualified column.
fn relations_read(e: &Expr, inner: &HashSet<String>) -> Option<Vec<String>> {
    struct Read<'a> {
        inner: &'a HashSet<String>,
        found: Vec<String>,
        unqualified: bool,
    }
    impl Visitor for Read<'_> {
        type Break = ();
        fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
            match expr {
                Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
                    let q = parts[parts.len() - 2].value.to_ascii_lowercase();
                    if self.inner.contains(&q) && !self.found.contains(&q) {
                        self.found.push(q);
                    }
                }
                Expr::Identifier(_) => self.unqualified = true,
                _ => {}
            }
            ControlFlow::Continue(())
        }
    }
    let mut read = Read { inner, found: Vec::new(), unqualified: false };
    let _ = e.visit(&mut read);
    (!read.unqualified).then_some(read.found)
}

fn marker(i: usize) -> String {
    format!("kfsql_lookup_{i}_")
}

struct Lift<'a> {
    inner: &'a HashSet<String>,
    found: Vec<Expr>,
}

impl VisitorMut for Lift<'_> {
    type Break = ();

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        let refs = References::of(expr, self.inner);
        if (refs.inner || refs.unqualified) && !refs.outer && !refs.subquery {
            self.found.push(expr.clone());
            *expr = Expr::Identifier(Ident::new(marker(self.found.len() - 1)));
        }
        ControlFlow::Continue(())
    }
}

/// A SELECT (or each SELECT of a set operation) whose FROM inner-joins a relation in `empty` returns no rows, so its
/// SELECT list is never evaluated: correlated subqueries in it, which DataFusion may not be able to plan, are NULL.
pub fn over_no_rows(query: &mut Query, empty: &HashSet<String>) {
    fn visit(body: &mut SetExpr, empty: &HashSet<String>) {
        match body {
            SetExpr::Select(select) => {
                let is_empty = |factor: &TableFactor| {
                    matches!(factor, TableFactor::Table { name, args: None, .. }
                        if name.0.last().and_then(|p| p.as_ident()).is_some_and(|i| empty.contains(&i.value.to_ascii_lowercase())))
                };
                let no_rows = select.from.iter().any(|t| {
                    is_empty(&t.relation)
                        || t.joins.iter().any(|j| {
                            matches!(j.join_operator, JoinOperator::Inner(_) | JoinOperator::Join(_))
                                && is_empty(&j.relation)
                        })
                });
                if !no_rows {
                    return;
                }
                for item in &mut select.projection {
                    if let SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } = item {
                        let _ = VisitMut::visit(e, &mut NullSubqueries);
                    }
                }
            }
            SetExpr::SetOperation { left, right, .. } => {
                visit(left, empty);
                visit(right, empty);
            }
            _ => {}
        }
    }
    if !empty.is_empty() {
        visit(&mut query.body, empty);
    }
}

struct NullSubqueries;

impl VisitorMut for NullSubqueries {
    type Break = ();

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        if matches!(expr, Expr::Subquery(_)) {
            *expr = Expr::value(datafusion::sql::sqlparser::ast::Value::Null);
        }
        ControlFlow::Continue(())
    }
}

/// `ARRAY(subquery)`, PostgreSQL's array constructor.
pub fn is_array_constructor(f: &Function) -> bool {
    matches!(f.args, FunctionArguments::Subquery(_))
        && f.name.0.len() == 1
        && f.name.0[0].as_ident().is_some_and(|i| i.value.eq_ignore_ascii_case("array"))
}

pub fn array_constructor(expr: &mut Expr, outer: Option<&Scope>) {
    let Expr::Function(f) = expr else { return };
    let FunctionArguments::Subquery(query) = &f.args else { return };
    let mut query = query.clone();
    let order_by = query.order_by.take();
    let Some(select) = simple_select(&mut query) else { return };
    let (SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. }) = &mut select.projection[0] else {
        return;
    };
    let order = match order_by {
        // `ORDER BY 1` names the (only) output column
        Some(o) => o.to_string().replace("ORDER BY 1", &format!("ORDER BY {e}")),
        None => String::new(),
    };
    let Some(aggregated) = parse_expr(&format!("array_agg({e} {order})")) else { return };
    *e = aggregated;
    *expr = Expr::Subquery(query);
    decorrelatable(expr, outer);
}

/// The SELECT of `query` when it is one plain SELECT of one column: no grouping, DISTINCT, LIMIT or CTE.
fn simple_select(query: &mut Query) -> Option<&mut Select> {
    if query.with.is_some() || query.limit_clause.is_some() || query.fetch.is_some() {
        return None;
    }
    let SetExpr::Select(select) = query.body.as_mut() else { return None };
    let no_grouping = matches!(&select.group_by, GroupByExpr::Expressions(g, _) if g.is_empty());
    let one_column = select.projection.len() == 1
        && matches!(select.projection[0], SelectItem::UnnamedExpr(_) | SelectItem::ExprWithAlias { .. });
    (no_grouping && one_column && select.distinct.is_none() && select.having.is_none()).then_some(select.as_mut())
}

/// The names the subquery's relations are known by: an alias, or else the table's own (unqualified) name.
fn relation_names(from: &[TableWithJoins]) -> HashSet<String> {
    let mut names = HashSet::new();
    let mut add = |factor: &TableFactor| match factor {
        TableFactor::Table { alias: Some(a), .. } | TableFactor::Derived { alias: Some(a), .. } => {
            names.insert(a.name.value.to_ascii_lowercase());
        }
        TableFactor::Table { name, alias: None, .. } => {
            if let Some(last) = name.0.last().and_then(|p| p.as_ident()) {
                names.insert(last.value.to_ascii_lowercase());
            }
        }
        other => {
            if let Some(a) = table_factor_alias(other) {
                names.insert(a);
            }
        }
    };
    for t in from {
        add(&t.relation);
        for j in &t.joins {
            add(&j.relation);
        }
    }
    names
}

fn table_factor_alias(factor: &TableFactor) -> Option<String> {
    match factor {
        TableFactor::Function { alias: Some(a), .. } | TableFactor::UNNEST { alias: Some(a), .. } => {
            Some(a.name.value.to_ascii_lowercase())
        }
        _ => None,
    }
}

/// Every relation is a catalog one (`pg_catalog.*`, `information_schema.*`, or a `pg_*` name).
fn only_catalog_relations(from: &[TableWithJoins]) -> bool {
    let catalog = |factor: &TableFactor| match factor {
        TableFactor::Table { name, args: None, .. } => {
            let parts: Vec<String> =
                name.0.iter().filter_map(|p| p.as_ident()).map(|i| i.value.to_ascii_lowercase()).collect();
            match parts.as_slice() {
                [schema, _] => schema == "pg_catalog" || schema == "information_schema",
                [table] => table.starts_with("pg_"),
                _ => false,
            }
        }
        _ => false,
    };
    !from.is_empty() && from.iter().all(|t| catalog(&t.relation) && t.joins.iter().all(|j| catalog(&j.relation)))
}

fn conjuncts(expr: Expr) -> Vec<Expr> {
    match expr {
        Expr::BinaryOp { left, op: BinaryOperator::And, right } => {
            let mut out = conjuncts(*left);
            out.extend(conjuncts(*right));
            out
        }
        Expr::Nested(inner) if matches!(*inner, Expr::BinaryOp { op: BinaryOperator::And, .. }) => conjuncts(*inner),
        other => vec![other],
    }
}

fn and_all(exprs: Vec<Expr>) -> Option<Expr> {
    exprs.into_iter().reduce(|a, b| Expr::BinaryOp { left: Box::new(a), op: BinaryOperator::And, right: Box::new(b) })
}

fn is_aggregate(expr: &Expr) -> bool {
    matches!(expr, Expr::Function(f) if f.name.0.last().and_then(|p| p.as_ident())
        .is_some_and(|i| AGGREGATES.contains(&i.value.to_ascii_lowercase().as_str())))
}

/// What the column references of an expression resolve to, seen from a subquery with relations `inner`.
#[derive(Default)]
struct References<'a> {
    inner_names: Option<&'a HashSet<String>>,
    outer: bool,
    inner: bool,
    unqualified: bool,
    subquery: bool,
}

impl Visitor for References<'_> {
    type Break = ();

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        match expr {
            Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
                let qualifier = parts[parts.len() - 2].value.to_ascii_lowercase();
                if self.inner_names.is_some_and(|n| n.contains(&qualifier)) {
                    self.inner = true;
                } else {
                    self.outer = true;
                }
            }
            Expr::Identifier(_) => self.unqualified = true,
            Expr::Subquery(_) | Expr::Exists { .. } | Expr::InSubquery { .. } => self.subquery = true,
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

impl<'a> References<'a> {
    fn of(expr: &Expr, inner: &'a HashSet<String>) -> Self {
        let mut refs = References { inner_names: Some(inner), ..Default::default() };
        let _ = expr.visit(&mut refs);
        refs
    }
}

fn is_correlated(select: &Select, inner: &HashSet<String>) -> bool {
    let mut refs = References { inner_names: Some(inner), ..Default::default() };
    let _ = select.visit(&mut refs);
    refs.outer
}

#[cfg(test)]
mod tests {
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    fn rewritten(sql: &str) -> String {
        let mut stmts = Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap();
        super::super::rewrite_keeping_names(&mut stmts[0]);
        stmts[0].to_string()
    }

    #[test]
    fn outer_only_conjuncts_move_out_and_catalog_lookups_aggregate() {
        let out = rewritten(
            "SELECT (SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_catalog.pg_attrdef d \
             WHERE a.atthasdef AND d.adrelid = a.attrelid) FROM pg_catalog.pg_attribute a",
        );
        assert_eq!(
            out,
            "SELECT CASE WHEN a.atthasdef THEN (SELECT first_value(pg_get_expr(d.adbin, d.adrelid)) \
             FROM pg_catalog.pg_attrdef d WHERE d.adrelid = a.attrelid) END FROM pg_catalog.pg_attribute a"
        );
    }

    #[test]
    fn unaliased_relations_are_known_by_their_name() {
        let out = rewritten(
            "SELECT (SELECT pg_catalog.pg_type.typcollation FROM pg_catalog.pg_type \
             WHERE pg_catalog.pg_type.oid = pg_catalog.pg_attribute.atttypid) FROM pg_catalog.pg_attribute",
        );
        assert!(out.contains("SELECT first_value(pg_catalog.pg_type.typcollation) FROM pg_catalog.pg_type"), "{out}");
        assert!(!out.contains("CASE"), "{out}");
    }

    #[test]
    fn kafka_tables_and_uncorrelated_subqueries_are_left_alone() {
        let kafka = "SELECT (SELECT l.label FROM labels AS l WHERE l.txn_id = t.txn_id) FROM transactions AS t";
        assert_eq!(rewritten(kafka), kafka);
        let plain = "SELECT (SELECT max(oid) FROM pg_catalog.pg_class) FROM pg_catalog.pg_namespace";
        assert_eq!(rewritten(plain), plain);
    }

    #[test]
    fn outer_columns_in_the_value_or_a_mixed_condition_are_lifted() {
        let out = rewritten(
            "SELECT (SELECT json_build_object('always', a.attidentity = 'a', 'start', s.seqstart) \
             FROM pg_catalog.pg_sequence s WHERE s.seqrelid = a.attrelid) FROM pg_catalog.pg_attribute a",
        );
        assert_eq!(
            out,
            "SELECT CASE WHEN (SELECT count(*) FROM pg_catalog.pg_sequence s WHERE s.seqrelid = a.attrelid) > 0 \
             THEN json_build_object('always', a.attidentity = 'a', 'start', (SELECT first_value(s.seqstart) \
             FROM pg_catalog.pg_sequence s WHERE s.seqrelid = a.attrelid)) END FROM pg_catalog.pg_attribute a"
        );
        let out = rewritten(
            "SELECT (SELECT c.collname FROM pg_catalog.pg_collation c, pg_catalog.pg_type t \
             WHERE c.oid = a.attcollation AND t.oid = a.atttypid AND a.attcollation <> t.typcollation) \
             FROM pg_catalog.pg_attribute a",
        );
        // two relations looked up apart: no product of pg_collation and pg_type
        assert_eq!(
            out,
            "SELECT CASE WHEN (SELECT count(*) FROM pg_catalog.pg_collation c WHERE c.oid = a.attcollation) > 0 \
             AND (SELECT count(*) FROM pg_catalog.pg_type t WHERE t.oid = a.atttypid) > 0 \
             AND a.attcollation <> (SELECT first_value(t.typcollation) FROM pg_catalog.pg_type t WHERE t.oid = a.atttypid) \
             THEN (SELECT first_value(c.collname) FROM pg_catalog.pg_collation c WHERE c.oid = a.attcollation) END \
             FROM pg_catalog.pg_attribute a"
        );
    }

    #[test]
    fn any_of_an_outer_array_correlates_by_the_array() {
        let out = rewritten(
            "SELECT ARRAY(SELECT rolname FROM pg_catalog.pg_roles WHERE oid = ANY (pol.polroles) ORDER BY 1) \
             FROM pg_catalog.pg_policy pol",
        );
        assert!(
            out.contains(
                "(SELECT DISTINCT pol.polroles AS kfsql_arr FROM pg_catalog.pg_policy AS pol) AS kfsql_any \
                          WHERE array_has(kfsql_any.kfsql_arr, oid) AND kfsql_any.kfsql_arr = pol.polroles"
            ),
            "{out}"
        );
    }

    #[test]
    fn array_constructors_aggregate() {
        let out = rewritten(
            "SELECT ARRAY(SELECT b.rolname FROM pg_catalog.pg_auth_members m JOIN pg_catalog.pg_roles b \
             ON (m.roleid = b.oid) WHERE m.member = r.oid ORDER BY 1) FROM pg_catalog.pg_roles r",
        );
        assert!(
            out.contains("(SELECT array_agg(b.rolname ORDER BY b.rolname) FROM pg_catalog.pg_auth_members"),
            "{out}"
        );
    }
}

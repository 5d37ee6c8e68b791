//! Rewrites that give PostgreSQL's meaning to constructs client catalog queries use and DataFusion reads
//! differently, whatever the query:
//! - `pg_table_is_visible(e)` → `e IN (the OIDs of pg_class relations in schemas public and pg_catalog)`: a relation
//!   is visible when its schema is on the search path (kfsql's is `public`; `latest` and `kfsql` are reached
//!   qualified), so `\dt`, SQLAlchemy and JDBC list each table once;
//! - `x LIKE p ESCAPE 'c'` with an escape character other than backslash → the same pattern escaped with
//!   backslashes, which DataFusion supports (converted here for a literal, by `kfsql_like_escape` for a parameter);
//! - scalar subqueries, made plannable by DataFusion's decorrelation without changing their answer
//!   ([`subqueries`]): conjuncts that test only the outer row move out into a `CASE WHEN`, and a correlated
//!   subquery over catalog relations is aggregated with `first_value` (a catalog lookup by key finds at most one row);
//! - `ARRAY(SELECT e FROM …)` → `(SELECT array_agg(e ORDER BY …) FROM …)`;
//! - `information_schema._pg_expandarray(a)` (pgjdbc) → `unnest(kfsql_expandarray(a))`, the `(x, n)` records, and
//!   `generate_subscripts(a, 1)` → `unnest(kfsql_subscripts(a))`; `(record).field` → `get_field(record, 'field')`;
//! - `array = '{0}'`: the literal in PostgreSQL's array text form becomes an array;
//! - a SELECT that inner-joins a catalog relation holding no rows (kfsql has no publications, policies, triggers…)
//!   has no rows: the correlated subqueries in its SELECT list are never evaluated, so they become NULL rather than
//!   stop the planning;
//! - `'[schema.]name'::regproc` → `'name'`, the text form catalog columns such as `pg_type.typinput` hold
//!   ([`rewrite_before_compat`], run before datafusion-pg-catalog's rules turn it into an OID).

mod subqueries;

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion_pg_catalog::sql::rules::{
    AliasDuplicatedProjectionRewrite, CurrentUserVariableToSessionUserFunctionCall, FixArrayLiteral,
    FixVersionColumnName, PrependUnqualifiedPgTableName, ResolveUnqualifiedIdentifier, RewriteArrayAnyAllOperation,
    RewritePgCatalogOperator, RewriteRegCastToSubquery, SqlStatementRewriteRule, StripCallableQualifier, StripCollate,
};

use datafusion::sql::sqlparser::ast::{
    AccessExpr, BinaryOperator, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Ident, Query, SelectItem,
    SetExpr, Statement, Value, ValueWithSpan, VisitMut, VisitorMut,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

/// Apply every rewrite to `stmt`.
pub fn rewrite(stmt: &mut Statement) {
    rewrite_with(stmt, &HashSet::new());
}

/// Apply every rewrite to `stmt`, knowing which catalog relations hold no rows (see [`crate::sql::pg_catalog`]).
pub fn rewrite_with(stmt: &mut Statement, empty_relations: &HashSet<String>) {
    let _ = stmt.visit(&mut Rewriter { scopes: Vec::new(), empty_relations });
    if let Statement::Query(q) = stmt {
        postgres_output_names(&mut q.body);
    }
}

/// The rewrites without [`postgres_output_names`], for tests of the others.
#[cfg(test)]
fn rewrite_keeping_names(stmt: &mut Statement) {
    let _ = stmt.visit(&mut Rewriter { scopes: Vec::new(), empty_relations: &HashSet::new() });
}

/// The result columns a query returns carry PostgreSQL's names: an unaliased `count(*)` is `count`, `x::text` is
/// `x`, `'a'::text` is `text`, `CASE …` is `case`, a literal or an operator is `?column?`. (DataFusion would name
/// them after the whole expression.) Only names that stay distinct are given; only the statement's own SELECT.
fn postgres_output_names(body: &mut SetExpr) {
    let select = match body {
        SetExpr::Select(select) => select,
        SetExpr::SetOperation { left, .. } => return postgres_output_names(left),
        _ => return,
    };
    let names: Vec<Option<String>> = select
        .projection
        .iter()
        .map(|item| match item {
            SelectItem::UnnamedExpr(e) if !matches!(e, Expr::Identifier(_) | Expr::CompoundIdentifier(_)) => {
                Some(postgres_name(e).0)
            }
            _ => None,
        })
        .collect();
    let taken: Vec<String> = select
        .projection
        .iter()
        .filter_map(|item| match item {
            SelectItem::ExprWithAlias { alias, .. } => Some(alias.value.clone()),
            SelectItem::UnnamedExpr(Expr::Identifier(i)) => Some(i.value.clone()),
            SelectItem::UnnamedExpr(Expr::CompoundIdentifier(p)) => p.last().map(|i| i.value.clone()),
            _ => None,
        })
        .collect();
    for (item, name) in select.projection.iter_mut().zip(&names) {
        let Some(name) = name else { continue };
        let unique = names.iter().filter(|n| n.as_ref() == Some(name)).count() == 1 && !taken.contains(name);
        if let SelectItem::UnnamedExpr(e) = item
            && unique
        {
            *item = SelectItem::ExprWithAlias { expr: e.clone(), alias: Ident::with_quote('"', name.clone()) };
        }
    }
}

/// PostgreSQL's name for an output expression (its `FigureColname`), and whether it is a real name (a column or a
/// function) rather than a fallback.
fn postgres_name(e: &Expr) -> (String, bool) {
    match e {
        Expr::Identifier(i) => (i.value.clone(), true),
        Expr::CompoundIdentifier(p) => (p.last().map(|i| i.value.clone()).unwrap_or_default(), true),
        Expr::Nested(inner) => postgres_name(inner),
        Expr::Function(f) => match function_name(f) {
            Some(name) => (name, true),
            None => ("?column?".into(), false),
        },
        Expr::Cast { expr, data_type, .. } => match postgres_name(expr) {
            (name, true) => (name, true),
            _ => (postgres_type_name(&data_type.to_string()), false),
        },
        Expr::Case { else_result: Some(r), .. } if postgres_name(r).1 => postgres_name(r),
        Expr::Case { .. } => ("case".into(), false),
        Expr::Array(_) => ("array".into(), false),
        Expr::Exists { .. } => ("exists".into(), false),
        Expr::Subquery(q) => match q.body.as_ref() {
            SetExpr::Select(s) => match s.projection.first() {
                Some(SelectItem::ExprWithAlias { alias, .. }) => (alias.value.clone(), true),
                Some(SelectItem::UnnamedExpr(e)) => postgres_name(e),
                _ => ("?column?".into(), false),
            },
            _ => ("?column?".into(), false),
        },
        _ => ("?column?".into(), false),
    }
}

/// The name PostgreSQL gives a type in a cast's column name (`int4` for INTEGER, `text` for TEXT, …).
fn postgres_type_name(sql_type: &str) -> String {
    let t = sql_type.to_ascii_lowercase();
    let t = t.trim_start_matches("pg_catalog.");
    match t {
        "int" | "integer" => "int4",
        "bigint" => "int8",
        "smallint" => "int2",
        "real" => "float4",
        "double precision" | "double" => "float8",
        "boolean" => "bool",
        "varchar" | "character varying" => "varchar",
        "timestamp" | "timestamp without time zone" => "timestamp",
        "timestamptz" | "timestamp with time zone" => "timestamptz",
        other => other,
    }
    .to_string()
}

/// datafusion-pg-catalog's rewrite rules, all but two of what its `PostgresCompatibilityParser` applies: its
/// blacklist (whole client queries matched token by token and swapped for others) is left out, as is
/// `RemoveSubqueryFromProjection`, which answers NULL for every correlated subquery in a SELECT list; kfsql makes
/// those subqueries plannable instead ([`subqueries`]).
pub fn compat_rules() -> Vec<Arc<dyn SqlStatementRewriteRule>> {
    vec![
        Arc::new(AliasDuplicatedProjectionRewrite),
        Arc::new(ResolveUnqualifiedIdentifier),
        Arc::new(RewriteArrayAnyAllOperation),
        Arc::new(PrependUnqualifiedPgTableName),
        Arc::new(StripCallableQualifier),
        Arc::new(FixArrayLiteral),
        Arc::new(CurrentUserVariableToSessionUserFunctionCall),
        Arc::new(StripCollate),
        Arc::new(RewritePgCatalogOperator),
        Arc::new(RewriteRegCastToSubquery::new()),
        Arc::new(FixVersionColumnName),
    ]
}

/// The rewrites that must see the statement before datafusion-pg-catalog's rules.
pub fn rewrite_before_compat(stmt: &mut Statement) {
    let _ = stmt.visit(&mut RegprocLiterals);
}

struct RegprocLiterals;

impl VisitorMut for RegprocLiterals {
    type Break = ();

    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        if let Expr::Cast { expr: inner, data_type, .. } = expr
            && data_type.to_string().to_ascii_lowercase().trim_start_matches("pg_catalog.") == "regproc"
            && let Expr::Value(ValueWithSpan { value: Value::SingleQuotedString(name), .. }) = inner.as_ref()
        {
            let bare = name.rsplit('.').next().unwrap_or(name).trim_matches('"').to_string();
            *expr = Expr::value(Value::SingleQuotedString(bare));
        }
        ControlFlow::Continue(())
    }
}

/// Walks a statement; `scopes` holds the relations of each query being visited, innermost last.
struct Rewriter<'a> {
    scopes: Vec<subqueries::Scope>,
    empty_relations: &'a HashSet<String>,
}

const VISIBLE_OIDS: &str = "SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n \
                            ON n.oid = c.relnamespace WHERE n.nspname IN ('public', 'pg_catalog')";

impl VisitorMut for Rewriter<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        distinct_output_names(&mut query.body);
        subqueries::over_no_rows(query, self.empty_relations);
        self.scopes.push(subqueries::scope_of(query));
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _query: &mut Query) -> ControlFlow<()> {
        self.scopes.pop();
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        match expr {
            Expr::Subquery(_) => subqueries::decorrelatable(expr, self.scopes.last()),
            // `array_column = '{0}'`: an array literal in PostgreSQL's text form, compared with an array
            Expr::BinaryOp { left, op: BinaryOperator::Eq | BinaryOperator::NotEq, right } => {
                for side in [left, right] {
                    if let Expr::Value(ValueWithSpan { value: Value::SingleQuotedString(text), .. }) = side.as_ref()
                        && let Some(array) = array_literal(text)
                    {
                        **side = array;
                    }
                }
            }
            Expr::Function(f) if subqueries::is_array_constructor(f) => {
                subqueries::array_constructor(expr, self.scopes.last())
            }
            Expr::Function(f)
                if matches!(
                    function_name(f).as_deref(),
                    Some("obj_description" | "col_description" | "shobj_description")
                ) =>
            {
                if let Some(lookup) = description_lookup(f) {
                    *expr = lookup;
                    subqueries::decorrelatable(expr, self.scopes.last());
                }
            }
            Expr::Function(f)
                if matches!(function_name(f).as_deref(), Some("_pg_expandarray" | "generate_subscripts")) =>
            {
                let FunctionArguments::List(list) = &f.args else { return ControlFlow::Continue(()) };
                let (function, arg) = match (function_name(f).as_deref(), list.args.as_slice()) {
                    (Some("_pg_expandarray"), [FunctionArg::Unnamed(FunctionArgExpr::Expr(arg))]) => {
                        (super::pg_functions::EXPAND_ARRAY, arg)
                    }
                    // generate_subscripts(a, 1): the subscripts of a one-dimensional array
                    (Some("generate_subscripts"), [FunctionArg::Unnamed(FunctionArgExpr::Expr(arg)), _]) => {
                        (super::pg_functions::SUBSCRIPTS, arg)
                    }
                    _ => return ControlFlow::Continue(()),
                };
                if let Some(call) = parse_expr(&format!("unnest({function}({arg}))")) {
                    *expr = call;
                }
            }
            // `(record).field` → get_field(record, 'field')
            Expr::CompoundFieldAccess { root, access_chain }
                if matches!(root.as_ref(), Expr::Nested(_))
                    && matches!(access_chain.first(), Some(AccessExpr::Dot(Expr::Identifier(_)))) =>
            {
                let (Expr::Nested(record), AccessExpr::Dot(Expr::Identifier(field))) =
                    (root.as_ref(), access_chain.remove(0))
                else {
                    return ControlFlow::Continue(());
                };
                let Some(get) = parse_expr(&format!("get_field({record}, '{}')", field.value.replace('\'', "''")))
                else {
                    return ControlFlow::Continue(());
                };
                *expr = if access_chain.is_empty() {
                    get
                } else {
                    Expr::CompoundFieldAccess { root: Box::new(get), access_chain: std::mem::take(access_chain) }
                };
            }
            Expr::Function(f) => {
                if function_name(f).as_deref() != Some("pg_table_is_visible") {
                    return ControlFlow::Continue(());
                }
                let FunctionArguments::List(list) = &f.args else { return ControlFlow::Continue(()) };
                let [FunctionArg::Unnamed(FunctionArgExpr::Expr(arg))] = list.args.as_slice() else {
                    return ControlFlow::Continue(());
                };
                let Ok(query) =
                    Parser::new(&PostgreSqlDialect {}).try_with_sql(VISIBLE_OIDS).and_then(|mut p| p.parse_query())
                else {
                    return ControlFlow::Continue(());
                };
                *expr = Expr::Nested(Box::new(Expr::InSubquery {
                    expr: Box::new(arg.clone()),
                    subquery: query,
                    negated: false,
                }));
            }
            Expr::Like { pattern, escape_char, .. } | Expr::ILike { pattern, escape_char, .. } => {
                let Some(esc) = escape_char.as_ref().and_then(|v| match &v.value {
                    Value::SingleQuotedString(s) => s.chars().next(),
                    _ => None,
                }) else {
                    return ControlFlow::Continue(());
                };
                if esc == '\\' {
                    return ControlFlow::Continue(());
                }
                match pattern.as_mut() {
                    Expr::Value(ValueWithSpan { value: Value::SingleQuotedString(p), .. }) => {
                        *p = with_backslash_escapes(p, esc);
                    }
                    // a parameter or an expression: converted when it is known
                    other => {
                        let call = format!(
                            "{}({other}, '{}')",
                            super::pg_functions::LIKE_ESCAPE,
                            esc.to_string().replace('\'', "''")
                        );
                        let Ok(converted) =
                            Parser::new(&PostgreSqlDialect {}).try_with_sql(&call).and_then(|mut p| p.parse_expr())
                        else {
                            return ControlFlow::Continue(());
                        };
                        *other = converted;
                    }
                }
                *escape_char = None;
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

/// PostgreSQL lets a SELECT list repeat an output name (`SELECT NULL, NULL`); DataFusion needs them distinct, so a
/// repeated unaliased expression is named `?column?2`, `?column?3`, ….
fn distinct_output_names(body: &mut SetExpr) {
    match body {
        SetExpr::Select(select) => {
            let mut seen = std::collections::HashSet::new();
            for item in &mut select.projection {
                match item {
                    SelectItem::UnnamedExpr(e) if !matches!(e, Expr::Identifier(_) | Expr::CompoundIdentifier(_)) => {
                        let name = e.to_string();
                        if !seen.insert(name) {
                            let alias = (2..).map(|n| format!("?column?{n}")).find(|a| seen.insert(a.clone()));
                            if let Some(alias) = alias {
                                *item =
                                    SelectItem::ExprWithAlias { expr: e.clone(), alias: Ident::with_quote('"', alias) };
                            }
                        }
                    }
                    SelectItem::ExprWithAlias { alias, .. } => {
                        seen.insert(alias.value.clone());
                    }
                    _ => {}
                }
            }
        }
        SetExpr::SetOperation { left, right, .. } => {
            distinct_output_names(left);
            distinct_output_names(right);
        }
        _ => {}
    }
}

/// `obj_description(oid, 'catalog')`, `shobj_description(oid, 'catalog')` and `col_description(table, column)` as PostgreSQL defines them (SQL functions
/// over `pg_description`), for the catalogs whose OIDs PostgreSQL fixes.
fn description_lookup(f: &datafusion::sql::sqlparser::ast::Function) -> Option<Expr> {
    let FunctionArguments::List(list) = &f.args else { return None };
    let args: Vec<&Expr> = list
        .args
        .iter()
        .map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
            _ => None,
        })
        .collect::<Option<_>>()?;
    let sql = match (function_name(f)?.as_str(), args.as_slice()) {
        ("obj_description", [object, Expr::Value(ValueWithSpan { value: Value::SingleQuotedString(c), .. })]) => {
            let class = catalog_oid(c)?;
            format!(
                "(SELECT kfsql_d.description FROM pg_catalog.pg_description kfsql_d \
                 WHERE kfsql_d.objoid = {object} AND kfsql_d.classoid = {class} AND kfsql_d.objsubid = 0)"
            )
        }
        ("shobj_description", [object, Expr::Value(ValueWithSpan { value: Value::SingleQuotedString(c), .. })]) => {
            let class = catalog_oid(c)?;
            format!(
                "(SELECT kfsql_d.description FROM pg_catalog.pg_shdescription kfsql_d \
                 WHERE kfsql_d.objoid = {object} AND kfsql_d.classoid = {class})"
            )
        }
        ("col_description", [table, column]) => format!(
            "(SELECT kfsql_d.description FROM pg_catalog.pg_description kfsql_d \
             WHERE kfsql_d.objoid = {table} AND kfsql_d.classoid = 1259 AND kfsql_d.objsubid = {column})"
        ),
        _ => return None,
    };
    parse_expr(&sql)
}

/// The OIDs PostgreSQL gives its catalogs (fixed since their creation).
fn catalog_oid(name: &str) -> Option<u32> {
    Some(match name.trim_start_matches("pg_catalog.") {
        "pg_class" => 1259,
        "pg_type" => 1247,
        "pg_proc" => 1255,
        "pg_namespace" => 2615,
        "pg_constraint" => 2606,
        "pg_database" => 1262,
        "pg_am" => 2601,
        "pg_attribute" => 1249,
        "pg_trigger" => 2620,
        "pg_extension" => 3079,
        "pg_collation" => 3456,
        "pg_authid" => 1260,
        "pg_tablespace" => 1213,
        "pg_operator" => 2617,
        "pg_opclass" => 2616,
        "pg_opfamily" => 2753,
        "pg_aggregate" => 2600,
        "pg_cast" => 2605,
        "pg_conversion" => 2607,
        "pg_language" => 2612,
        "pg_rewrite" => 2618,
        "pg_index" => 2610,
        "pg_ts_config" => 3602,
        "pg_ts_dict" => 3600,
        "pg_ts_parser" => 3601,
        "pg_ts_template" => 3764,
        "pg_event_trigger" => 3466,
        "pg_foreign_data_wrapper" => 2328,
        "pg_foreign_server" => 1417,
        "pg_policy" => 3256,
        "pg_publication" => 6104,
        "pg_subscription" => 6100,
        _ => return None,
    })
}

/// `'{1,2}'` → `[1, 2]`, `'{a,b}'` → `['a', 'b']`; None for any other text.
fn array_literal(text: &str) -> Option<Expr> {
    let inner = text.strip_prefix('{')?.strip_suffix('}')?;
    let items: Vec<&str> = inner.split(',').map(str::trim).filter(|i| !i.is_empty()).collect();
    let numeric = items.iter().all(|i| i.parse::<i64>().is_ok());
    let values = items
        .iter()
        .map(|i| if numeric { i.to_string() } else { format!("'{}'", i.trim_matches('"').replace('\'', "''")) })
        .collect::<Vec<_>>()
        .join(", ");
    parse_expr(&format!("make_array({values})"))
}

fn function_name(f: &datafusion::sql::sqlparser::ast::Function) -> Option<String> {
    f.name.0.last().and_then(|p| p.as_ident()).map(|i| i.value.to_ascii_lowercase())
}

fn parse_expr(sql: &str) -> Option<Expr> {
    Parser::new(&PostgreSqlDialect {}).try_with_sql(sql).and_then(|mut p| p.parse_expr()).ok()
}

/// A LIKE pattern escaped with `esc`, escaped with backslashes instead.
pub fn with_backslash_escapes(pattern: &str, esc: char) -> String {
    let mut out = String::with_capacity(pattern.len() + 4);
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c == esc {
            match chars.next() {
                Some(n) => {
                    out.push('\\');
                    out.push(n);
                }
                None => out.push(c),
            }
        } else if c == '\\' {
            out.push_str("\\\\");
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(sql: &str) -> String {
        let mut stmts = Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap();
        rewrite(&mut stmts[0]);
        stmts[0].to_string()
    }

    #[test]
    fn visibility_becomes_a_search_path_membership() {
        let out = rewritten("SELECT relname FROM pg_catalog.pg_class c WHERE pg_catalog.pg_table_is_visible(c.oid)");
        assert!(out.contains("c.oid IN (SELECT c.oid FROM pg_catalog.pg_class"), "{out}");
        assert!(out.contains("'public', 'pg_catalog'"), "{out}");
    }

    #[test]
    fn result_columns_carry_postgres_names() {
        assert_eq!(
            rewritten("SELECT count(*), 1, x::text, 'a'::text, CASE WHEN b THEN 1 END, t.c, max(y) AS m FROM t"),
            "SELECT count(*) AS \"count\", 1 AS \"?column?\", x::TEXT AS \"x\", 'a'::TEXT AS \"text\", \
             CASE WHEN b THEN 1 END AS \"case\", t.c, max(y) AS m FROM t"
        );
        // names that would repeat are left to DataFusion
        assert_eq!(rewritten("SELECT count(a), count(b) FROM t"), "SELECT count(a), count(b) FROM t");
    }

    #[test]
    fn descriptions_are_lookups_in_pg_description() {
        let out = rewritten("SELECT obj_description(n.oid, 'pg_namespace') FROM pg_catalog.pg_namespace n");
        assert!(
            out.contains(
                "(SELECT first_value(kfsql_d.description) FROM pg_catalog.pg_description kfsql_d \
                          WHERE kfsql_d.objoid = n.oid AND kfsql_d.classoid = 2615 AND kfsql_d.objsubid = 0)"
            ),
            "{out}"
        );
        // an unknown catalog stays a call (and fails as an unknown function would)
        assert!(rewritten("SELECT obj_description(1, 'pg_nope')").contains("obj_description(1, 'pg_nope')"));
    }

    #[test]
    fn like_escape_characters_become_backslashes() {
        assert_eq!(with_backslash_escapes("pg/_%", '/'), "pg\\_%");
        assert_eq!(with_backslash_escapes("a\\b//", '/'), "a\\\\b\\/");
        let out = rewritten("SELECT 1 WHERE 'pg_x' NOT LIKE 'pg/_%' ESCAPE '/'");
        assert!(out.contains("NOT LIKE 'pg\\_%'") && !out.contains("ESCAPE"), "{out}");
    }
}

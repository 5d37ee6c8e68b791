//! Rewrites that give PostgreSQL's meaning to constructs client catalog queries use and DataFusion reads
//! differently, whatever the query:
//! - `pg_table_is_visible(e)` → `e IN (the OIDs of pg_class relations in schemas public and pg_catalog)`: a relation
//!   is visible when its schema is on the search path (kfsql's is `public`; `latest` and `kfsql` are reached
//!   qualified), so `\dt`, SQLAlchemy and JDBC list each table once;
//! - `x LIKE p ESCAPE 'c'` with an escape character other than backslash → the same pattern escaped with
//!   backslashes, which DataFusion supports (converted here for a literal, by `kfsql_like_escape` for a parameter).

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Statement, Value, ValueWithSpan, VisitMut, VisitorMut,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

/// Apply every rewrite to `stmt`.
pub fn rewrite(stmt: &mut Statement) {
    let _ = stmt.visit(&mut Rewriter);
}

struct Rewriter;

const VISIBLE_OIDS: &str = "SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n \
                            ON n.oid = c.relnamespace WHERE n.nspname IN ('public', 'pg_catalog')";

impl VisitorMut for Rewriter {
    type Break = ();

    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        match expr {
            Expr::Function(f) => {
                let name = f.name.0.last().and_then(|p| p.as_ident()).map(|i| i.value.to_ascii_lowercase());
                if name.as_deref() != Some("pg_table_is_visible") {
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
    fn like_escape_characters_become_backslashes() {
        assert_eq!(with_backslash_escapes("pg/_%", '/'), "pg\\_%");
        assert_eq!(with_backslash_escapes("a\\b//", '/'), "a\\\\b\\/");
        let out = rewritten("SELECT 1 WHERE 'pg_x' NOT LIKE 'pg/_%' ESCAPE '/'");
        assert!(out.contains("NOT LIKE 'pg\\_%'") && !out.contains("ESCAPE"), "{out}");
    }
}

//! `t FOR SYSTEM_TIME AS OF ts`: the table as it was known at `ts`, i.e. only messages that had arrived by then
//! (`_timestamp <= ts`, Kafka's arrival clock; see DESIGN.md "Time").
//!
//! DataFusion would silently ignore the parsed version, so every version clause is rewritten here, in the AST, into
//! a derived table `(SELECT * FROM t WHERE _timestamp <= ts) AS t` before planning; any other kind of version clause
//! is refused. On a latest view (`latest.t FOR SYSTEM_TIME AS OF ts`) the same clause means "the newest value per
//! key among what had arrived by ts" and becomes the table function that replays the log
//! (see [`crate::latest::table`]).

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{SetExpr, Statement, TableFactor, TableVersion, VisitMut, VisitorMut};
use datafusion::sql::sqlparser::parser::Parser;

use super::dialect::KfsqlDialect;
use crate::error::KfsqlError;
use crate::latest::AS_OF_FUNCTION;
use crate::table::definition::META_TIMESTAMP;

/// Rewrite every `FOR SYSTEM_TIME AS OF` in `stmt`. Returns whether anything changed.
pub fn rewrite(stmt: &mut Statement) -> Result<bool, KfsqlError> {
    let mut v = Rewriter { changed: false };
    match stmt.visit(&mut v) {
        ControlFlow::Continue(()) => Ok(v.changed),
        ControlFlow::Break(e) => Err(e),
    }
}

struct Rewriter {
    changed: bool,
}

impl VisitorMut for Rewriter {
    type Break = KfsqlError;

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<Self::Break> {
        let TableFactor::Table { name, alias, version: Some(version), .. } = factor else {
            return ControlFlow::Continue(());
        };
        let TableVersion::ForSystemTimeAsOf(at) = version else {
            return ControlFlow::Break(KfsqlError::Unsupported(format!(
                "table version clause '{version}': kfsql supports FOR SYSTEM_TIME AS OF <timestamp>"
            )));
        };
        let alias_sql = match alias {
            Some(a) => a.to_string().trim_start_matches("AS ").to_string(),
            None => name.0.last().map(|p| p.to_string()).unwrap_or_else(|| name.to_string()),
        };
        let parts: Vec<String> = name.0.iter().map(|p| p.to_string().trim_matches('"').to_string()).collect();
        let sql = match parts.as_slice() {
            // a latest view as known at T: the newest value per key among what had arrived by T, from the log
            [schema, table] if schema.eq_ignore_ascii_case("latest") => {
                let table = table.replace('\'', "''");
                format!("SELECT * FROM {AS_OF_FUNCTION}('{table}', ({at})) AS {alias_sql}")
            }
            _ => format!("SELECT * FROM (SELECT * FROM {name} WHERE {META_TIMESTAMP} <= ({at})) AS {alias_sql}"),
        };
        match derived_factor(&sql) {
            Some(derived) => {
                *factor = derived;
                self.changed = true;
                ControlFlow::Continue(())
            }
            None => {
                ControlFlow::Break(KfsqlError::Syntax(format!("cannot apply FOR SYSTEM_TIME AS OF {at} to {name}")))
            }
        }
    }
}

fn derived_factor(sql: &str) -> Option<TableFactor> {
    let mut stmts = Parser::parse_sql(&KfsqlDialect::default(), sql).ok()?;
    let Statement::Query(q) = stmts.pop()? else { return None };
    let SetExpr::Select(select) = *q.body else { return None };
    select.from.into_iter().next().map(|t| t.relation)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rw(sql: &str) -> String {
        let mut s = Parser::parse_sql(&KfsqlDialect::default(), sql).unwrap().remove(0);
        rewrite(&mut s).unwrap();
        s.to_string()
    }

    #[test]
    fn rewrites_into_an_arrival_time_filter() {
        let out = rw("SELECT count(*) FROM transactions FOR SYSTEM_TIME AS OF TIMESTAMP '2026-11-20 12:00:00'");
        assert_eq!(
            out,
            "SELECT count(*) FROM (SELECT * FROM transactions WHERE _timestamp <= (TIMESTAMP '2026-11-20 12:00:00')) AS transactions"
        );
        let out = rw("SELECT t.a FROM public.tx FOR SYSTEM_TIME AS OF now() AS t JOIN u ON t.a = u.a");
        assert!(out.contains("FROM (SELECT * FROM public.tx WHERE _timestamp <= (now())) AS t JOIN u"), "{out}");
    }

    #[test]
    fn leaves_plain_queries_alone() {
        let mut s = Parser::parse_sql(&KfsqlDialect::default(), "SELECT * FROM t").unwrap().remove(0);
        assert!(!rewrite(&mut s).unwrap());
    }
}

//! SQL front end: kfsql's [`dialect`] (Postgres + time travel), statement parsing into DataFusion statements, the
//! AST rewrites that must happen before planning ([`time_travel`], and [`pg_rewrite`] for PostgreSQL's meaning of
//! what clients write), the `pg_catalog` schema clients read ([`pg_catalog`]) and the PostgreSQL functions they call
//! ([`pg_functions`]).

pub mod dialect;
pub mod pg_catalog;
pub mod pg_functions;
pub mod pg_rewrite;
pub mod time_travel;

use std::collections::VecDeque;

use datafusion::sql::parser::{DFParserBuilder, Statement};

pub use dialect::KfsqlDialect;

use crate::error::{KfsqlError, Result};

/// Parse `sql` (one or more statements) with kfsql's dialect.
pub fn parse(sql: &str) -> Result<VecDeque<Statement>> {
    let dialect = KfsqlDialect::default();
    DFParserBuilder::new(sql)
        .with_dialect(&dialect)
        .build()
        .and_then(|mut p| p.parse_statements())
        .map_err(|e| KfsqlError::Syntax(strip_prefix(&e.to_string())))
}

fn strip_prefix(msg: &str) -> String {
    msg.trim_start_matches("SQL error: ").trim_start_matches("ParserError(\"").trim_end_matches("\")").to_string()
}

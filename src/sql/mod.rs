//! SQL front end: kfsql's [`dialect`] (Postgres + time travel), statement parsing into DataFusion statements, the
//! AST rewrites that must happen before planning ([`time_travel`], and [`pg_rewrite`] for PostgreSQL's meaning of
//! what clients write), the `pg_catalog` schema clients read ([`pg_catalog`]) and the PostgreSQL functions they call
//! ([`pg_functions`]), and the bounds on functions whose output size a client picks ([`bounded`]).

pub mod bounded;
pub mod checked;
pub mod command;
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
    check_nesting(sql)?;
    let dialect = KfsqlDialect::default();
    DFParserBuilder::new(sql).with_dialect(&dialect).build().and_then(|mut p| p.parse_statements()).map_err(|e| {
        match strip_prefix(&e.to_string()) {
            m if m.contains("RecursionLimitExceeded") => {
                KfsqlError::TooComplex(format!("statement nested too deeply for the parser ({m})"))
            }
            m => KfsqlError::Syntax(m),
        }
    })
}

/// The deepest nesting of parentheses and brackets a statement may have (the SQL parser recurses per level).
pub const MAX_NESTING: usize = 40;

/// The deepest nesting of square brackets. The parser backtracks on each unclosed `[` (`ARRAY[ARRAY[…`), so its time
/// doubles per level (6 s at 20 levels, minutes at 24); PostgreSQL's arrays have at most 6 dimensions.
pub const MAX_BRACKET_NESTING: usize = 8;

/// Refuse SQL nested deeper than [`MAX_NESTING`] or [`MAX_BRACKET_NESTING`] before parsing it, counting brackets
/// outside quotes and `--` comments. PostgreSQL answers too deep a statement with 54001.
pub fn check_nesting(sql: &str) -> Result<()> {
    let (mut open, mut brackets): (Vec<char>, usize) = (Vec::new(), 0);
    let mut quote: Option<char> = None;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '-') if chars.peek() == Some(&'-') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            (None, '(' | '[') => {
                open.push(c);
                brackets += usize::from(c == '[');
            }
            (None, ')' | ']') => {
                if open.pop() == Some('[') {
                    brackets -= 1;
                }
            }
            (None, _) => {}
        }
        // checked at every character, so the deepest level so far is the current one
        if open.len() > MAX_NESTING || brackets > MAX_BRACKET_NESTING {
            return Err(KfsqlError::TooComplex(format!(
                "statement nested too deeply: at most {MAX_NESTING} levels of parentheses and brackets, \
                 {MAX_BRACKET_NESTING} of them square brackets"
            )));
        }
    }
    Ok(())
}

fn strip_prefix(msg: &str) -> String {
    msg.trim_start_matches("SQL error: ").trim_start_matches("ParserError(\"").trim_end_matches("\")").to_string()
}

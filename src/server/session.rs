//! Per-connection session statements that never reach the query engine: `SET`, `SHOW`, `RESET`, transaction
//! control (`BEGIN`/`COMMIT`/`ROLLBACK`, savepoints: kfsql is read-mostly and autocommit, so they only move the transaction
//! status clients expect), `DISCARD`, `DEALLOCATE`. Values live in the connection's metadata, so each client sees
//! its own settings.

use std::collections::HashMap;
use std::time::Duration;

use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{Expr, Set, Statement, Value};

use crate::error::KfsqlError;

/// Server parameters reported to clients and answered by `SHOW` (Postgres names, lower case).
pub const DEFAULTS: &[(&str, &str)] = &[
    ("server_version", "15.0 (kfsql)"),
    ("server_version_num", "150000"),
    ("server_encoding", "UTF8"),
    ("client_encoding", "UTF8"),
    ("datestyle", "ISO, MDY"),
    ("intervalstyle", "postgres"),
    ("timezone", "UTC"),
    ("integer_datetimes", "on"),
    ("standard_conforming_strings", "on"),
    ("transaction_isolation", "read committed"),
    ("default_transaction_isolation", "read committed"),
    ("transaction_read_only", "off"),
    ("search_path", "\"$user\", public"),
    ("max_identifier_length", "63"),
    ("extra_float_digits", "1"),
    ("application_name", ""),
    ("is_superuser", "off"),
    ("lc_collate", "C"),
    ("lc_ctype", "C"),
    ("statement_timeout", "0"),
];

/// What a session statement does.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionCommand {
    Set {
        name: String,
        value: String,
    },
    Show(String),
    Reset(String),
    Begin,
    Commit,
    Rollback,
    /// `ROLLBACK TO SAVEPOINT`: the transaction goes on (and is usable again after an error).
    RollbackToSavepoint,
    /// Accepted and answered with this tag, nothing else to do (DISCARD, DEALLOCATE).
    NoOp(&'static str),
}

const METADATA_PREFIX: &str = "kfsql.setting.";

/// Recognise a session statement. `SHOW datafusion.*` is left to the engine; `SET datafusion.*` is a session
/// statement that [`check`] refuses.
pub fn classify(stmt: &DFStatement) -> Option<SessionCommand> {
    let s = match stmt {
        DFStatement::Statement(s) => s,
        DFStatement::Reset(r) => {
            return Some(SessionCommand::Reset(normalize(r.to_string().trim_start_matches("RESET "))));
        }
        _ => return None,
    };
    match s.as_ref() {
        Statement::Set(Set::SingleAssignment { variable, values, .. }) => {
            let name = normalize(&variable.to_string());
            let value = values.iter().map(value_text).collect::<Vec<_>>().join(", ");
            Some(SessionCommand::Set { name, value })
        }
        Statement::Set(Set::SetTimeZone { value, .. }) => {
            Some(SessionCommand::Set { name: "timezone".into(), value: value_text(value) })
        }
        Statement::Set(Set::SetNames { charset_name, .. }) => {
            Some(SessionCommand::Set { name: "client_encoding".into(), value: charset_name.to_string() })
        }
        Statement::Set(Set::SetTransaction { .. })
        | Statement::Set(Set::SetSessionParam(_))
        | Statement::Set(Set::SetRole { .. }) => Some(SessionCommand::NoOp("SET")),
        Statement::ShowVariable { variable } => {
            let name = normalize(&variable.iter().map(|i| i.value.clone()).collect::<Vec<_>>().join(" "));
            if name.starts_with("datafusion.") {
                return None;
            }
            Some(SessionCommand::Show(name))
        }
        Statement::StartTransaction { .. } => Some(SessionCommand::Begin),
        Statement::Commit { .. } => Some(SessionCommand::Commit),
        Statement::Rollback { savepoint: Some(_), .. } => Some(SessionCommand::RollbackToSavepoint),
        Statement::Rollback { .. } => Some(SessionCommand::Rollback),
        // psycopg 3 wraps statements in savepoints inside transactions; nothing kfsql does needs undoing
        Statement::Savepoint { .. } => Some(SessionCommand::NoOp("SAVEPOINT")),
        Statement::ReleaseSavepoint { .. } => Some(SessionCommand::NoOp("RELEASE")),
        Statement::Discard { .. } => Some(SessionCommand::NoOp("DISCARD ALL")),
        Statement::Deallocate { .. } => Some(SessionCommand::NoOp("DEALLOCATE")),
        _ => None,
    }
}

fn normalize(name: &str) -> String {
    let n = name.trim().trim_matches('"').to_ascii_lowercase();
    match n.as_str() {
        "transaction isolation level" => "transaction_isolation".into(),
        "time zone" => "timezone".into(),
        _ => n,
    }
}

fn value_text(e: &Expr) -> String {
    match e {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s.clone(),
            other => other.to_string(),
        },
        Expr::Identifier(i) => i.value.clone(),
        other => other.to_string(),
    }
}

/// Check a `SET name = value` before it is stored, returning the value to store.
///
/// Settings are per connection. The engine's own settings (`datafusion.*`: memory limit, batch size, parallelism)
/// are the server's, shared by every client and set when kfsql starts, so no client may change them (42501). The
/// settings kfsql acts on are validated as PostgreSQL does (22023 for a bad value).
pub fn check(name: &str, value: &str) -> Result<String, KfsqlError> {
    if name.starts_with("datafusion.") {
        return Err(KfsqlError::PermissionDenied(format!(
            "\"{name}\" is a server setting, shared by every client: it is set when kfsql starts"
        )));
    }
    let invalid = || KfsqlError::InvalidParameter(format!("invalid value for parameter \"{name}\": \"{value}\""));
    match name {
        "extra_float_digits" => match value.trim().parse::<i32>() {
            Ok(n) if (-15..=3).contains(&n) => Ok(n.to_string()),
            _ => Err(invalid()),
        },
        "statement_timeout" => duration_ms(value).map(|ms| ms.to_string()).ok_or_else(invalid),
        _ => Ok(value.to_string()),
    }
}

/// A PostgreSQL time setting in milliseconds: a number (milliseconds) or a number with a unit (`us`, `ms`, `s`,
/// `min`, `h`, `d`).
fn duration_ms(value: &str) -> Option<u64> {
    let v = value.trim();
    let split = v.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(v.len());
    let (number, unit) = (v[..split].trim().parse::<f64>().ok()?, v[split..].trim());
    let per_unit = match unit {
        "" | "ms" => 1.0,
        "us" => 0.001,
        "s" => 1_000.0,
        "min" => 60_000.0,
        "h" => 3_600_000.0,
        "d" => 86_400_000.0,
        _ => return None,
    };
    let ms = (number * per_unit).round();
    (ms.is_finite() && (0.0..=i32::MAX as f64).contains(&ms)).then_some(ms as u64)
}

/// The connection's `statement_timeout`, None when it is 0 (no limit of its own).
pub fn statement_timeout(metadata: &HashMap<String, String>) -> Option<Duration> {
    show(metadata, "statement_timeout").and_then(|v| duration_ms(&v)).filter(|ms| *ms > 0).map(Duration::from_millis)
}

/// The current value of `name` for a connection: its own SET, else the startup parameter, else the default.
pub fn show(metadata: &HashMap<String, String>, name: &str) -> Option<String> {
    if let Some(v) = metadata.get(&format!("{METADATA_PREFIX}{name}")) {
        return Some(v.clone());
    }
    if let Some(v) = metadata.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone()) {
        return Some(v);
    }
    DEFAULTS.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
}

pub fn set(metadata: &mut HashMap<String, String>, name: &str, value: &str) {
    metadata.insert(format!("{METADATA_PREFIX}{name}"), value.to_string());
}

pub fn reset(metadata: &mut HashMap<String, String>, name: &str) {
    if name == "all" {
        metadata.retain(|k, _| !k.starts_with(METADATA_PREFIX));
    } else {
        metadata.remove(&format!("{METADATA_PREFIX}{name}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(sql: &str) -> Option<SessionCommand> {
        classify(&crate::sql::parse(sql).unwrap()[0])
    }

    #[test]
    fn recognises_client_session_statements() {
        assert_eq!(
            cmd("SET extra_float_digits = 3"),
            Some(SessionCommand::Set { name: "extra_float_digits".into(), value: "3".into() })
        );
        assert_eq!(
            cmd("SET application_name = 'PostgreSQL JDBC Driver'"),
            Some(SessionCommand::Set { name: "application_name".into(), value: "PostgreSQL JDBC Driver".into() })
        );
        assert_eq!(cmd("SHOW transaction isolation level"), Some(SessionCommand::Show("transaction_isolation".into())));
        assert_eq!(
            cmd("show standard_conforming_strings"),
            Some(SessionCommand::Show("standard_conforming_strings".into()))
        );
        assert_eq!(cmd("BEGIN"), Some(SessionCommand::Begin));
        assert_eq!(cmd("COMMIT"), Some(SessionCommand::Commit));
        assert_eq!(cmd("ROLLBACK"), Some(SessionCommand::Rollback));
        assert_eq!(
            cmd("SET datafusion.execution.batch_size = 100"),
            Some(SessionCommand::Set { name: "datafusion.execution.batch_size".into(), value: "100".into() })
        );
        assert_eq!(cmd("SELECT 1"), None);
    }

    #[test]
    fn settings_are_checked_as_postgres_does() {
        assert_eq!(check("extra_float_digits", "3").ok().as_deref(), Some("3"));
        assert_eq!(check("extra_float_digits", "abc").map_err(|e| e.sqlstate()), Err("22023"));
        assert_eq!(check("extra_float_digits", "4").map_err(|e| e.sqlstate()), Err("22023"));
        assert_eq!(check("statement_timeout", "1.5s").ok().as_deref(), Some("1500"));
        assert_eq!(check("statement_timeout", "2min").ok().as_deref(), Some("120000"));
        assert_eq!(check("statement_timeout", "250").ok().as_deref(), Some("250"));
        assert_eq!(check("statement_timeout", "abc").map_err(|e| e.sqlstate()), Err("22023"));
        assert_eq!(check("statement_timeout", "5 fortnights").map_err(|e| e.sqlstate()), Err("22023"));
        assert_eq!(check("datafusion.runtime.memory_limit", "1K").map_err(|e| e.sqlstate()), Err("42501"));
        assert_eq!(check("application_name", "x").ok().as_deref(), Some("x"));
        let mut m = HashMap::new();
        assert_eq!(statement_timeout(&m), None);
        set(&mut m, "statement_timeout", "1500");
        assert_eq!(statement_timeout(&m), Some(Duration::from_millis(1500)));
        set(&mut m, "statement_timeout", "0");
        assert_eq!(statement_timeout(&m), None);
    }

    #[test]
    fn set_then_show() {
        let mut m = HashMap::new();
        assert_eq!(show(&m, "datestyle").as_deref(), Some("ISO, MDY"));
        set(&mut m, "datestyle", "ISO");
        assert_eq!(show(&m, "datestyle").as_deref(), Some("ISO"));
        reset(&mut m, "datestyle");
        assert_eq!(show(&m, "datestyle").as_deref(), Some("ISO, MDY"));
        assert_eq!(show(&m, "no_such_setting"), None);
    }
}

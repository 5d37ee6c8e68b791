//! A connection's settings, read and written by the session statements ([`crate::sql::command::SessionCommand`]:
//! `SET`, `SHOW`, `RESET`, `DISCARD ALL`) that never reach the query engine. Values live in the connection's
//! metadata, so each client sees its own settings. (Transaction control only moves the transaction status
//! clients expect: kfsql is read-mostly and autocommit.)

use std::collections::HashMap;
use std::time::Duration;

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

const METADATA_PREFIX: &str = "kfsql.setting.";

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

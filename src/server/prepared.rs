//! SQL-level `PREPARE name [(types)] AS statement`, `EXECUTE name [(values)]` and `DEALLOCATE [PREPARE] name | ALL`,
//! per connection as in PostgreSQL: a statement one client prepares is invisible to the others, and goes with its
//! connection (the store lives in the connection's session state). The engine plans and binds; this module only
//! keeps the plans, at most [`MAX_PER_CONNECTION`] of them.

use std::collections::HashMap;
use std::sync::Mutex;

use datafusion::arrow::datatypes::FieldRef;
use datafusion::logical_expr::LogicalPlan;

use crate::error::KfsqlError;

/// The most statements one connection may keep prepared.
pub const MAX_PER_CONNECTION: usize = 1024;

/// One prepared statement: its declared parameter types (may be empty) and its plan, with placeholders.
#[derive(Clone)]
pub struct SqlPrepared {
    pub fields: Vec<FieldRef>,
    pub plan: LogicalPlan,
}

/// The statements a connection prepared, by name.
#[derive(Default)]
pub struct PreparedStatements {
    by_name: Mutex<HashMap<String, SqlPrepared>>,
}

impl PreparedStatements {
    pub fn prepare(&self, name: &str, prepared: SqlPrepared) -> Result<(), KfsqlError> {
        let mut all = self.by_name.lock().map_err(|_| KfsqlError::Internal("prepared statements poisoned".into()))?;
        if all.contains_key(name) {
            return Err(KfsqlError::DuplicatePrepared(format!("prepared statement \"{name}\" already exists")));
        }
        if all.len() >= MAX_PER_CONNECTION {
            return Err(KfsqlError::LimitExceeded(format!(
                "at most {MAX_PER_CONNECTION} prepared statements per connection (DEALLOCATE some)"
            )));
        }
        all.insert(name.to_string(), prepared);
        Ok(())
    }

    pub fn get(&self, name: &str) -> Result<SqlPrepared, KfsqlError> {
        let all = self.by_name.lock().map_err(|_| KfsqlError::Internal("prepared statements poisoned".into()))?;
        all.get(name).cloned().ok_or_else(|| unknown(name))
    }

    /// DEALLOCATE name, or ALL for None.
    pub fn deallocate(&self, name: Option<&str>) -> Result<(), KfsqlError> {
        let mut all = self.by_name.lock().map_err(|_| KfsqlError::Internal("prepared statements poisoned".into()))?;
        match name {
            None => all.clear(),
            Some(n) => {
                all.remove(n).ok_or_else(|| unknown(n))?;
            }
        }
        Ok(())
    }
}

fn unknown(name: &str) -> KfsqlError {
    KfsqlError::UnknownPrepared(format!("prepared statement \"{name}\" does not exist"))
}

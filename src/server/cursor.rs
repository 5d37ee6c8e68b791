//! SQL cursors: `DECLARE name [BINARY] [NO SCROLL] CURSOR [WITH[OUT] HOLD] FOR query`, `FETCH [FORWARD] n | ALL |
//! NEXT FROM name`, `CLOSE name | ALL` (psycopg's named cursors, psycopg2's `name=` cursors). A cursor holds its
//! query's running stream, so FETCH reads on from where the last one stopped, without re-running anything. Cursors
//! belong to their connection (they live in its session state and die with it, so a vanished client leaves nothing
//! behind); those not declared `WITH HOLD` close when the transaction ends, as in PostgreSQL.
//! Cursors scan forward only (`NO SCROLL`): a backward or absolute FETCH is refused with 0A000.

use std::collections::HashMap;
use std::sync::Mutex;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::sql::sqlparser::ast::{CloseCursor, FetchDirection, Value};
use futures::StreamExt;

use crate::error::KfsqlError;

/// The most cursors one connection may hold open.
const MAX_PER_CONNECTION: usize = 64;

/// An open cursor: the rest of its query's rows.
pub struct Cursor {
    rows: SendableRecordBatchStream,
    /// Rows read from the stream and not fetched yet.
    pending: Option<RecordBatch>,
    hold: bool,
}

/// How many rows a FETCH asks for; None for ALL.
pub fn fetch_count(direction: &FetchDirection) -> Result<Option<usize>, KfsqlError> {
    let number = |v: &Value| match v {
        Value::Number(n, _) => n.parse::<usize>().map_err(|_| KfsqlError::Syntax(format!("invalid FETCH count {n}"))),
        other => Err(KfsqlError::Syntax(format!("invalid FETCH count {other}"))),
    };
    match direction {
        FetchDirection::Next => Ok(Some(1)),
        FetchDirection::Forward { limit: None } => Ok(Some(1)),
        FetchDirection::Count { limit } | FetchDirection::Forward { limit: Some(limit) } => {
            number(&limit.value).map(Some)
        }
        FetchDirection::All | FetchDirection::ForwardAll => Ok(None),
        other => Err(KfsqlError::Unsupported(format!("cursor can only scan forward (FETCH {other})"))),
    }
}

/// The cursors of one connection, by name.
#[derive(Default)]
pub struct Cursors {
    open: Mutex<HashMap<String, Cursor>>,
}

impl Cursors {
    pub fn declare(&self, name: &str, rows: SendableRecordBatchStream, hold: bool) -> Result<(), KfsqlError> {
        let mut open = self.open.lock().map_err(|_| KfsqlError::Internal("cursor table poisoned".into()))?;
        if open.contains_key(name) {
            return Err(KfsqlError::DuplicateCursor(name.to_string()));
        }
        if open.len() >= MAX_PER_CONNECTION {
            return Err(KfsqlError::LimitExceeded(format!("at most {MAX_PER_CONNECTION} open cursors per connection")));
        }
        open.insert(name.to_string(), Cursor { rows, pending: None, hold });
        Ok(())
    }

    /// The next `count` rows (all the rest for None), as batches, with the cursor's schema.
    pub async fn fetch(&self, name: &str, count: Option<usize>) -> Result<(SchemaRef, Vec<RecordBatch>), KfsqlError> {
        let key = name.to_string();
        // taken out while it reads, so no lock is held across the stream's awaits
        let mut cursor = self
            .open
            .lock()
            .map_err(|_| KfsqlError::Internal("cursor table poisoned".into()))?
            .remove(&key)
            .ok_or_else(|| KfsqlError::UnknownCursor(name.to_string()))?;
        let schema = cursor.rows.schema();
        let mut out = Vec::new();
        let mut wanted = count.unwrap_or(usize::MAX);
        let mut failure = None;
        while wanted > 0 {
            let batch = match cursor.pending.take() {
                Some(b) => b,
                None => match cursor.rows.next().await {
                    Some(Ok(b)) => b,
                    Some(Err(e)) => {
                        failure = Some(KfsqlError::from_datafusion(e));
                        break;
                    }
                    None => break,
                },
            };
            if batch.num_rows() > wanted {
                out.push(batch.slice(0, wanted));
                cursor.pending = Some(batch.slice(wanted, batch.num_rows() - wanted));
                wanted = 0;
            } else {
                wanted -= batch.num_rows();
                out.push(batch);
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        self.open.lock().map_err(|_| KfsqlError::Internal("cursor table poisoned".into()))?.insert(key, cursor);
        Ok((schema, out))
    }

    /// CLOSE name / CLOSE ALL.
    pub fn close(&self, which: &CloseCursor) -> Result<(), KfsqlError> {
        let mut open = self.open.lock().map_err(|_| KfsqlError::Internal("cursor table poisoned".into()))?;
        match which {
            CloseCursor::All => open.clear(),
            CloseCursor::Specific { name } => {
                if open.remove(&name.value).is_none() {
                    return Err(KfsqlError::UnknownCursor(name.value.clone()));
                }
            }
        }
        Ok(())
    }

    /// The transaction ended: close the connection's cursors not declared WITH HOLD.
    pub fn end_transaction(&self) {
        if let Ok(mut open) = self.open.lock() {
            open.retain(|_, cursor| cursor.hold);
        }
    }
}

//! [`LatestView`]: one online table's latest values, its freshness counters and readiness, and how its rows become
//! Arrow batches (payloads decoded with the table's own decoder, plus the metadata columns).

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use datafusion::arrow::array::{
    ArrayRef, Int32Array, Int64Array, RecordBatch, RecordBatchOptions, StringArray, TimestampNanosecondArray,
};
use datafusion::arrow::datatypes::SchemaRef;

use super::follow::{Applied, Applier};
use super::state::{Entry, LatestState};
use crate::error::{KfsqlError, Result};
use crate::table::KafkaTable;

/// How fresh a view is (`kfsql.freshness`).
#[derive(Debug, Default)]
pub struct Freshness {
    /// Messages between what the view applied and the high watermarks its consumer last saw.
    pub lag: AtomicI64,
    pub messages: AtomicU64,
    pub tombstones: AtomicU64,
    pub bad: AtomicU64,
    /// Point lookups answered by the fast path.
    pub lookups: AtomicU64,
    /// Newest event time applied (ns; i64::MIN: none).
    pub newest_event_ns: AtomicI64,
    /// Wall clock (ns) of the last applied message, and of the last moment the consumer was at the end of every
    /// partition (0: never).
    pub last_applied_ns: AtomicI64,
    pub caught_up_ns: AtomicI64,
    pub last_error: Mutex<Option<String>>,
}

pub fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

impl Freshness {
    pub fn applied(&self, a: &Applied) {
        self.messages.fetch_add(a.messages, Ordering::Relaxed);
        self.tombstones.fetch_add(a.tombstones, Ordering::Relaxed);
        self.bad.fetch_add(a.bad, Ordering::Relaxed);
        if let Some(t) = a.newest_event_ns {
            self.newest_event_ns.fetch_max(t, Ordering::Relaxed);
        }
        self.last_applied_ns.store(now_ns(), Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    pub fn caught_up(&self) {
        self.caught_up_ns.store(now_ns(), Ordering::Relaxed);
    }

    pub fn set_error(&self, e: String) {
        tracing::warn!("latest view: {e}");
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
    }
}

/// The latest value per key of one online Kafka table.
#[derive(Debug)]
pub struct LatestView {
    pub name: String,
    pub topic: String,
    /// The Kafka table's full schema (payload columns, then `_partition`, `_offset`, `_timestamp`, `_key`).
    pub schema: SchemaRef,
    pub key_column: String,
    pub ttl: Option<Duration>,
    pub applier: Applier,
    pub state: RwLock<LatestState>,
    pub fresh: Freshness,
    pub ready: AtomicBool,
    /// When the view started loading, and how long the initial load took (ns; 0 until ready).
    pub started: std::time::Instant,
    /// Wall clock (ns) when the view started, the staleness baseline until it first catches up.
    pub started_ns: i64,
    pub load_ns: AtomicU64,
    pub stopped: AtomicBool,
    /// The definition this view follows (a changed definition restarts the view).
    pub definition: crate::table::TableDefinition,
}

impl LatestView {
    pub fn new(table: &KafkaTable) -> Result<Self> {
        let def = table.definition().clone();
        let options = table.options();
        let key_column = options
            .key
            .clone()
            .ok_or_else(|| KfsqlError::InvalidParameter(format!("online table '{}' needs a 'key'", def.name)))?;
        let schema = datafusion::catalog::TableProvider::schema(table);
        let key_index = schema.index_of(&key_column).map_err(|e| KfsqlError::Internal(e.to_string()))?;
        let time_index = match &options.event_time {
            Some(c) => Some(schema.index_of(c).map_err(|e| KfsqlError::Internal(e.to_string()))?),
            None => None,
        };
        let fresh = Freshness { newest_event_ns: AtomicI64::new(i64::MIN), ..Default::default() };
        Ok(Self {
            name: def.name.clone(),
            topic: def.topic.clone(),
            schema,
            key_column,
            ttl: options.ttl,
            applier: Applier { decoder: table.decoder().clone(), key_index, time_index },
            state: RwLock::new(LatestState::default()),
            fresh,
            ready: AtomicBool::new(false),
            started: std::time::Instant::now(),
            started_ns: now_ns(),
            load_ns: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            definition: def,
        })
    }

    pub fn mark_ready(&self) {
        // the initial load reached the high watermarks seen at start: up to date as of now
        self.fresh.caught_up();
        let n = {
            let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
            state.shrink_to_fit();
            state.len()
        };
        self.load_ns.store(self.started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.ready.store(true, Ordering::Release);
        tracing::info!("latest.{} ready: {n} keys loaded in {:.2?}", self.name, self.started.elapsed());
    }

    /// Fail unless the initial load is done (a half-loaded view would serve stale values as if they were current).
    pub fn check_ready(&self) -> Result<()> {
        if self.ready.load(Ordering::Acquire) {
            return Ok(());
        }
        Err(KfsqlError::NotReady(format!(
            "latest.{} is still loading from topic '{}' ({} messages so far); SELECT * FROM kfsql.freshness shows when it is ready",
            self.name,
            self.topic,
            self.fresh.messages.load(Ordering::Relaxed)
        )))
    }

    /// The oldest event time still served at `now_ns` under the TTL.
    pub fn ttl_floor(&self, now: i64) -> i64 {
        match self.ttl {
            Some(ttl) => now.saturating_sub(ttl.as_nanos().min(i64::MAX as u128) as i64),
            None => i64::MIN,
        }
    }

    pub fn evict_expired(&self) {
        if self.ttl.is_some() && self.applier.time_index.is_some() {
            let floor = self.ttl_floor(now_ns());
            self.state.write().unwrap_or_else(|p| p.into_inner()).evict_older_than(floor);
        }
    }

    /// Rows for `keys` (None: every key) from `state`, as of `now` for the TTL.
    pub fn rows(&self, state: &LatestState, keys: Option<&[String]>, now: i64) -> Result<RecordBatch> {
        let floor = if self.applier.time_index.is_some() { self.ttl_floor(now) } else { i64::MIN };
        let live = |e: &&Entry| e.event_ns >= floor;
        let picked: Vec<(&str, &Entry)> = match keys {
            Some([key]) => state.get(key).filter(live).map(|e| (key.as_str(), e)).into_iter().collect(),
            Some(keys) => {
                let mut seen = std::collections::HashSet::new();
                keys.iter()
                    .filter(|k| seen.insert(k.as_str()))
                    .filter_map(|k| state.get(k).filter(live).map(|e| (k.as_str(), e)))
                    .collect()
            }
            None => state.iter().filter(|(_, e)| live(e)).collect(),
        };
        self.batch(&picked)
    }

    fn batch(&self, picked: &[(&str, &Entry)]) -> Result<RecordBatch> {
        let payloads: Vec<&[u8]> = picked.iter().map(|(_, e)| &e.payload[..]).collect();
        let keys: Vec<Option<&[u8]>> = if self.applier.decoder.needs_keys() {
            picked.iter().map(|(_, e)| e.key.as_deref()).collect()
        } else {
            Vec::new()
        };
        let n_payload = self.schema.fields().len() - 4;
        let mut columns: Vec<ArrayRef> = if payloads.is_empty() {
            self.schema.fields()[..n_payload]
                .iter()
                .map(|f| datafusion::arrow::array::new_empty_array(f.data_type()))
                .collect()
        } else {
            let d = self
                .applier
                .decoder
                .decode(&keys, &payloads)
                .map_err(|b| KfsqlError::Internal(format!("a stored value no longer decodes: {}", b.reason)))?;
            if d.batch.num_rows() != payloads.len() {
                return Err(KfsqlError::Internal("stored values decoded to fewer rows".into()));
            }
            d.batch.columns().to_vec()
        };
        columns.push(Arc::new(Int32Array::from_iter_values(picked.iter().map(|(_, e)| e.partition))));
        columns.push(Arc::new(Int64Array::from_iter_values(picked.iter().map(|(_, e)| e.offset))));
        columns.push(Arc::new(TimestampNanosecondArray::from_iter(
            picked.iter().map(|(_, e)| e.timestamp_ms().and_then(|t| t.checked_mul(1_000_000))),
        )));
        columns.push(Arc::new(StringArray::from_iter_values(picked.iter().map(|(k, _)| *k))));
        RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(picked.len())),
        )
        .map_err(|e| KfsqlError::Internal(format!("assembling latest.{}: {e}", self.name)))
    }
}

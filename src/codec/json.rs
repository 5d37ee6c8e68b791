//! JSON payloads → Arrow record batches with arrow-json's tape decoder.
//!
//! The fast path feeds every payload of a batch to one decoder and flushes once. Only when that fails (a malformed,
//! non-object or wrong-typed message) does the batch take the slow path: each message is checked on its own, bad ones
//! are replaced by `{}` and the batch is decoded again, so one bad message costs one batch, not the whole scan.
//! Columns declared NOT NULL are checked after decoding: a message without its key is a bad message too.

use std::sync::Arc;

use arrow_json::ReaderBuilder;
use datafusion::arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use datafusion::arrow::compute::{cast, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit, TimestampNanosecondType};
use datafusion::arrow::error::ArrowError;

use super::{BadCounts, BadMessagePolicy};

/// Decodes batches of JSON payloads into a fixed schema.
#[derive(Debug, Clone)]
pub struct JsonDecoder {
    /// The schema decoded into: the declared payload columns, all nullable (NOT NULL is checked by hand).
    decode_schema: SchemaRef,
    /// Indices of the columns declared NOT NULL.
    not_null: Vec<usize>,
    policy: BadMessagePolicy,
    /// Decoders reused by small batches (a point lookup decodes a handful of stored values per call).
    pool: Arc<DecoderPool>,
    /// A TIMESTAMP column (index) whose values must lie in `[lo, hi)` ns, or the message is bad.
    time_range: Option<(usize, i64, i64)>,
}

/// Idle arrow-json decoders, kept with the buffers they grew: small ones for batches of up to [`POOLED_BATCH`]
/// payloads (a point lookup decodes a handful of stored values per call), and up to [`POOLED_SCANS`] for a scan's
/// batches of up to [`SCAN_BATCH`] (a fresh decoder grows its tape by reallocation on every batch).
#[derive(Default)]
struct DecoderPool {
    small: std::sync::Mutex<Vec<arrow_json::reader::Decoder>>,
    large: std::sync::Mutex<Vec<arrow_json::reader::Decoder>>,
}

const POOLED_BATCH: usize = 64;
/// The largest batch a pooled scan decoder takes (a scan's batches are at most this: see `table::scan`).
pub const SCAN_BATCH: usize = 8192;
/// Scan decoders kept per table (one per partition read at once on a small machine; each holds a few MiB).
const POOLED_SCANS: usize = 4;

impl std::fmt::Debug for DecoderPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DecoderPool")
    }
}

/// One decoded batch.
#[derive(Debug)]
pub struct Decoded {
    /// Payload columns, one row per kept message.
    pub batch: RecordBatch,
    /// Which input messages are kept (None: all of them). Under `skip` bad ones are dropped.
    pub keep: Option<BooleanArray>,
    /// Messages that did not decode, by reason.
    pub bad: BadCounts,
    /// Whether the fast path (one decode for the whole batch) was enough.
    pub fast_path: bool,
}

/// A bad message under `bad_messages = 'fail'`: which one, and why.
#[derive(Debug, Clone)]
pub struct BadMessage {
    pub index: usize,
    pub reason: String,
}

impl JsonDecoder {
    /// `schema` is the declared payload schema (its nullability is the NOT NULL contract).
    pub fn new(schema: &Schema, policy: BadMessagePolicy) -> Self {
        let not_null = schema.fields().iter().enumerate().filter(|(_, f)| !f.is_nullable()).map(|(i, _)| i).collect();
        let fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect();
        Self { decode_schema: Arc::new(Schema::new(fields)), not_null, policy, pool: Arc::default(), time_range: None }
    }

    /// Messages whose TIMESTAMP column `column` lies outside `[lo, hi)` (ns since the epoch) are bad messages: a
    /// time the decoder clamped (`1e300`, year 99999) would otherwise freeze a key's latest value and every
    /// pipeline's watermark far in the future.
    pub fn with_time_range(mut self, column: &str, lo: i64, hi: i64) -> Self {
        self.time_range = self.decode_schema.index_of(column).ok().map(|i| (i, lo, hi));
        self
    }

    /// The rows of `batch` whose time is outside the range, with the first one's reason.
    fn out_of_range(&self, batch: &RecordBatch) -> Option<(Vec<bool>, String)> {
        let (c, lo, hi) = self.time_range?;
        let col = batch.column(c);
        let times = cast(col, &DataType::Timestamp(TimeUnit::Nanosecond, None)).ok()?;
        let times = times.as_primitive::<TimestampNanosecondType>();
        let out: Vec<bool> =
            (0..times.len()).map(|i| times.is_valid(i) && !(lo..hi).contains(&times.value(i))).collect();
        let first = out.iter().position(|b| *b)?;
        let show = |ns: i64| chrono::DateTime::from_timestamp_nanos(ns).format("%Y-%m-%d %H:%M:%S").to_string();
        let reason = format!(
            "column '{}' holds {}, outside the table's event_time_range [{}, {})",
            batch.schema().field(c).name(),
            show(times.value(first)),
            show(lo),
            show(hi)
        );
        Some((out, reason))
    }

    /// The schema rows come out in: all nullable under `null`, the declared one otherwise.
    pub fn output_schema(declared: &Schema, policy: BadMessagePolicy) -> Schema {
        if policy == BadMessagePolicy::Null {
            Schema::new(declared.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<_>>())
        } else {
            declared.clone()
        }
    }

    /// Decode `payloads` (one JSON document each). Errors only under `fail`.
    pub fn decode<P: AsRef<[u8]>>(&self, payloads: &[P]) -> Result<Decoded, BadMessage> {
        let n = payloads.len();
        if let Some(batch) = self.try_decode_all(payloads.iter().map(|p| p.as_ref())) {
            // Structurally fine; NOT NULL may still be violated.
            return self.finish(payloads, batch, vec![false; n], true);
        }
        // Slow path: find the bad ones one by one.
        let mut bad = vec![false; n];
        let mut first_reason = None;
        for (i, p) in payloads.iter().enumerate() {
            if let Err(reason) = self.check_one(p.as_ref()) {
                bad[i] = true;
                if first_reason.is_none() {
                    first_reason = Some((i, reason));
                }
            }
        }
        let batch = self
            .try_decode_all(payloads.iter().zip(&bad).map(|(p, b)| if *b { &b"{}"[..] } else { p.as_ref() }))
            .ok_or_else(|| BadMessage {
                index: 0,
                reason: "batch failed to decode after removing bad messages".into(),
            })?;
        if self.policy == BadMessagePolicy::Fail
            && let Some((index, reason)) = first_reason
        {
            // an earlier message may be bad by its values (NOT NULL, time range): `fail` names the first one
            return Err(match self.finish(payloads, batch, bad, false) {
                Err(earlier) if earlier.index < index => earlier,
                _ => BadMessage { index, reason },
            });
        }
        self.finish(payloads, batch, bad, false)
    }

    /// Apply the NOT NULL contract and the policy to a decoded batch whose known-bad rows are `bad`.
    fn finish<P: AsRef<[u8]>>(
        &self,
        payloads: &[P],
        mut batch: RecordBatch,
        mut bad: Vec<bool>,
        fast_path: bool,
    ) -> Result<Decoded, BadMessage> {
        // rows already bad are those that did not parse as the declared document
        let mut counts = BadCounts { malformed: bad.iter().filter(|b| **b).count() as u64, ..BadCounts::default() };
        // bad rows found here decoded into values, which `null` must blank
        let mut blank_rows = false;
        for &c in &self.not_null {
            let col = batch.column(c);
            if col.null_count() == 0 {
                continue;
            }
            for (row, is_bad) in bad.iter_mut().enumerate() {
                if col.is_null(row) && !*is_bad {
                    *is_bad = true;
                    blank_rows = true;
                    counts.missing_value += 1;
                    if self.policy == BadMessagePolicy::Fail {
                        return Err(BadMessage {
                            index: row,
                            reason: format!(
                                "column '{}' is declared NOT NULL but the message has no value for it",
                                batch.schema().field(c).name()
                            ),
                        });
                    }
                }
            }
        }
        if let Some((outside, reason)) = self.out_of_range(&batch) {
            for (row, is_bad) in bad.iter_mut().enumerate() {
                if outside[row] && !*is_bad {
                    if self.policy == BadMessagePolicy::Fail {
                        return Err(BadMessage { index: row, reason });
                    }
                    *is_bad = true;
                    blank_rows = true;
                    counts.event_time += 1;
                }
            }
        }
        if counts.total() == 0 {
            return Ok(Decoded { batch, keep: None, bad: counts, fast_path });
        }
        match self.policy {
            // `fail` returned at the first bad message above.
            BadMessagePolicy::Fail => Err(BadMessage { index: 0, reason: "bad message".into() }),
            BadMessagePolicy::Null => {
                if blank_rows {
                    // Blank whole rows, not just the missing column: a bad message contributes no payload values.
                    batch = self
                        .try_decode_all(
                            payloads.iter().zip(&bad).map(|(p, b)| if *b { &b"{}"[..] } else { p.as_ref() }),
                        )
                        .ok_or_else(|| BadMessage { index: 0, reason: "batch failed to decode".into() })?;
                }
                Ok(Decoded { batch, keep: None, bad: counts, fast_path })
            }
            BadMessagePolicy::Skip => {
                let keep = BooleanArray::from(bad.iter().map(|b| !*b).collect::<Vec<bool>>());
                let batch =
                    filter_record_batch(&batch, &keep).map_err(|e| BadMessage { index: 0, reason: e.to_string() })?;
                Ok(Decoded { batch, keep: Some(keep), bad: counts, fast_path })
            }
        }
    }

    /// Decode every payload into one batch; None when any of them is not exactly one valid object.
    fn try_decode_all<'a>(&self, payloads: impl ExactSizeIterator<Item = &'a [u8]>) -> Option<RecordBatch> {
        let n = payloads.len();
        let (pool, size, keep) = if n <= POOLED_BATCH {
            (Some(&self.pool.small), POOLED_BATCH, 64)
        } else if n <= SCAN_BATCH {
            (Some(&self.pool.large), SCAN_BATCH, POOLED_SCANS)
        } else {
            (None, n, 0)
        };
        let idle = pool.and_then(|p| p.lock().unwrap_or_else(|p| p.into_inner()).pop());
        let mut decoder = match idle {
            Some(d) => d,
            None => ReaderBuilder::new(self.decode_schema.clone()).with_batch_size(size).build_decoder().ok()?,
        };
        let mut rows = 0usize;
        for p in payloads {
            let used = decoder.decode(p).ok()?;
            rows += 1;
            if used != p.len() || decoder.len() != rows {
                return None;
            }
        }
        let batch = match decoder.flush() {
            Ok(Some(batch)) if batch.num_rows() == rows => Some(batch),
            Ok(None) if rows == 0 => Some(RecordBatch::new_empty(self.decode_schema.clone())),
            _ => return None,
        };
        // only a decoder that finished cleanly is clean enough to reuse
        if let Some(pool) = pool {
            let mut idle = pool.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < keep {
                idle.push(decoder);
            }
        }
        batch
    }

    /// Whether one payload decodes on its own, and why not.
    fn check_one(&self, payload: &[u8]) -> Result<(), String> {
        let trimmed = payload.trim_ascii_start();
        if trimmed.first() != Some(&b'{') {
            return Err(format!("not a JSON object: {}", preview(payload)));
        }
        let mut decoder = ReaderBuilder::new(self.decode_schema.clone()).build_decoder().map_err(|e| e.to_string())?;
        let used = decoder.decode(payload).map_err(|e| describe(e, payload))?;
        if used != payload.len() || decoder.len() != 1 {
            return Err(format!("expected exactly one JSON object: {}", preview(payload)));
        }
        match decoder.flush() {
            Ok(Some(b)) if b.num_rows() == 1 => Ok(()),
            Ok(_) => Err(format!("expected exactly one JSON object: {}", preview(payload))),
            Err(e) => Err(describe(e, payload)),
        }
    }
}

fn describe(e: ArrowError, payload: &[u8]) -> String {
    format!("{e} in {}", preview(payload))
}

fn preview(payload: &[u8]) -> String {
    let s = String::from_utf8_lossy(&payload[..payload.len().min(120)]).into_owned();
    if payload.len() > 120 { format!("{s}…") } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Float64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, TimeUnit};

    fn schema() -> Schema {
        Schema::new(vec![
            Field::new("user_id", DataType::Utf8, false),
            Field::new("amount", DataType::Float64, true),
            Field::new("event_time", DataType::Timestamp(TimeUnit::Nanosecond, None), true),
        ])
    }

    const GOOD: &[&str] = &[
        r#"{"user_id":"u1","amount":1.5,"event_time":"2026-11-20T12:00:00"}"#,
        r#"{"user_id":"u2","amount":2,"event_time":"2026-11-20T12:00:01.5Z","extra":"ignored"}"#,
    ];

    #[test]
    fn fast_path_decodes_all() {
        let d = JsonDecoder::new(&schema(), BadMessagePolicy::Skip);
        let out = d.decode(GOOD).unwrap();
        assert!(out.fast_path);
        assert_eq!(out.batch.num_rows(), 2);
        assert_eq!(out.bad.total(), 0);
        let amounts = out.batch.column(1).as_any().downcast_ref::<Float64Array>().unwrap();
        assert_eq!(amounts.value(1), 2.0);
    }

    fn mixed() -> Vec<&'static str> {
        vec![
            GOOD[0],
            "not json",
            r#"{"user_id":"u3","amount":"abc"}"#,
            "42",
            r#"{"amount":3}"#, // missing NOT NULL key
            r#"{"user_id":"u4"}{"user_id":"u5"}"#,
            GOOD[1],
        ]
    }

    #[test]
    fn skip_drops_and_counts_bad_messages() {
        let d = JsonDecoder::new(&schema(), BadMessagePolicy::Skip);
        let out = d.decode(&mixed()).unwrap();
        assert_eq!(out.bad.total(), 5);
        assert_eq!(out.batch.num_rows(), 2);
        let keep = out.keep.unwrap();
        assert_eq!(
            keep.iter().map(|b| b.unwrap()).collect::<Vec<_>>(),
            vec![true, false, false, false, false, false, true]
        );
        let ids = out.batch.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!((ids.value(0), ids.value(1)), ("u1", "u2"));
    }

    #[test]
    fn null_keeps_rows_with_null_payload() {
        let d = JsonDecoder::new(&schema(), BadMessagePolicy::Null);
        let out = d.decode(&mixed()).unwrap();
        assert_eq!(out.bad.total(), 5);
        assert_eq!(out.batch.num_rows(), 7);
        // the missing-key message is blanked entirely, not just its key
        assert!(out.batch.column(1).is_null(4));
        assert!(out.batch.column(0).is_null(2));
        assert!(!out.batch.column(0).is_null(6));
    }

    #[test]
    fn fail_names_the_first_bad_message() {
        let d = JsonDecoder::new(&schema(), BadMessagePolicy::Fail);
        let err = d.decode(&mixed()).unwrap_err();
        assert_eq!(err.index, 1);
        assert!(err.reason.contains("not a JSON object"), "{}", err.reason);
        let err = d.decode(&[GOOD[0], r#"{"amount":3}"#]).unwrap_err();
        assert_eq!(err.index, 1);
        assert!(err.reason.contains("NOT NULL"));
    }

    #[test]
    fn empty_batch() {
        let d = JsonDecoder::new(&schema(), BadMessagePolicy::Skip);
        let out = d.decode::<&str>(&[]).unwrap();
        assert_eq!(out.batch.num_rows(), 0);
    }

    #[test]
    fn event_times_outside_the_range_are_bad_messages() {
        let (lo, hi) = (crate::codec::DEFAULT_TIME_RANGE.0, crate::codec::DEFAULT_TIME_RANGE.1);
        let far = [
            GOOD[0],
            r#"{"user_id":"u9","amount":1,"event_time":1e300}"#,
            r#"{"user_id":"u9","amount":1,"event_time":"2500-01-01T00:00:00"}"#,
            r#"{"user_id":"u9","amount":1,"event_time":"1800-01-01T00:00:00"}"#,
            GOOD[1],
        ];
        let skip = JsonDecoder::new(&schema(), BadMessagePolicy::Skip).with_time_range("event_time", lo, hi);
        let out = skip.decode(&far).unwrap();
        // 1e300 is no timestamp arrow can hold (malformed); 2500 and 1800 are timestamps outside the range
        assert_eq!((out.bad.malformed, out.bad.event_time, out.bad.total()), (1, 2, 3));
        let ids = out.batch.column(0).as_string::<i32>();
        assert_eq!(ids.iter().collect::<Vec<_>>(), vec![Some("u1"), Some("u2")]);
        let null = JsonDecoder::new(&schema(), BadMessagePolicy::Null).with_time_range("event_time", lo, hi);
        let out = null.decode(&far).unwrap();
        assert_eq!((out.bad.total(), out.batch.num_rows(), out.batch.column(0).null_count()), (3, 5, 3));
        let fail = JsonDecoder::new(&schema(), BadMessagePolicy::Fail).with_time_range("event_time", lo, hi);
        let err = fail.decode(&far).unwrap_err();
        assert_eq!(err.index, 1);
        assert!(err.reason.contains("outside the table's event_time_range"), "{}", err.reason);
    }
}

//! A table's messages → its declared columns: the value decoded by the payload format ([`JsonDecoder`]), the
//! columns a key carries ([`KeyFormat`]) read from the message key. Scans and latest views decode through it, so
//! both read a message the same way.

use std::sync::Arc;

use datafusion::arrow::array::TimestampMillisecondArray;
use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, RecordBatchOptions, StringArray};
use datafusion::arrow::compute::{and, cast, filter_record_batch};
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};

use super::BadMessagePolicy;
use super::json::{BadMessage, Decoded, JsonDecoder};
use super::key::{KeyFormat, WINDOW_END, WINDOW_START};

/// Where a declared column's values come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Column `i` of the decoded value.
    Value(usize),
    Key,
    WindowStart,
    WindowEnd,
}

/// Decodes a table's messages (keys and values) into its declared payload columns.
#[derive(Debug, Clone)]
pub struct MessageDecoder {
    value: JsonDecoder,
    key_format: KeyFormat,
    sources: Vec<Source>,
    /// The declared columns, all nullable (as decoded; NOT NULL is checked while decoding).
    schema: SchemaRef,
    policy: BadMessagePolicy,
}

impl MessageDecoder {
    /// `declared` is the table's payload schema; `key_column` its `key` option.
    pub fn new(declared: &Schema, key_format: KeyFormat, key_column: Option<&str>, policy: BadMessagePolicy) -> Self {
        let mut sources = Vec::with_capacity(declared.fields().len());
        let mut value_fields = Vec::new();
        for f in declared.fields() {
            let from_key = key_format.carries_columns().then(|| match f.name().as_str() {
                n if Some(n) == key_column => Some(Source::Key),
                WINDOW_START => Some(Source::WindowStart),
                WINDOW_END => Some(Source::WindowEnd),
                _ => None,
            });
            match from_key.flatten() {
                Some(s) => sources.push(s),
                None => {
                    sources.push(Source::Value(value_fields.len()));
                    value_fields.push(f.as_ref().clone());
                }
            }
        }
        let value = JsonDecoder::new(&Schema::new(value_fields), policy);
        let schema = Arc::new(Schema::new(
            declared.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<Field>>(),
        ));
        Self { value, key_format, sources, schema, policy }
    }

    /// Messages whose `column` (a TIMESTAMP of the value) is outside `[lo, hi)` ns are bad messages.
    pub fn with_time_range(mut self, column: &str, lo: i64, hi: i64) -> Self {
        self.value = self.value.with_time_range(column, lo, hi);
        self
    }

    pub fn key_format(&self) -> KeyFormat {
        self.key_format
    }

    /// Whether [`MessageDecoder::decode`] reads the message keys (otherwise `keys` may be empty).
    pub fn needs_keys(&self) -> bool {
        self.sources.iter().any(|s| !matches!(s, Source::Value(_)))
    }

    /// Decode messages: `payloads[i]` with key `keys[i]` (`keys` may be empty when [`Self::needs_keys`] is false).
    /// Errors only under `bad_messages = 'fail'`.
    pub fn decode<P: AsRef<[u8]>>(&self, keys: &[Option<&[u8]>], payloads: &[P]) -> Result<Decoded, BadMessage> {
        let d = self.value.decode(payloads)?;
        if !self.needs_keys() {
            return Ok(d);
        }
        let n = payloads.len();
        let parsed: Vec<_> =
            (0..n).map(|i| keys.get(i).copied().flatten().and_then(|k| self.key_format.parse_key(k))).collect();
        let kept: Vec<usize> = match &d.keep {
            Some(k) => (0..n).filter(|&i| k.value(i)).collect(),
            None => (0..n).collect(),
        };
        let bad_keys: Vec<usize> = kept.iter().copied().filter(|&i| parsed[i].is_none()).collect();
        if self.policy == BadMessagePolicy::Fail
            && let Some(&index) = bad_keys.first()
        {
            return Err(BadMessage {
                index,
                reason: format!(
                    "its key is not a {} key{}",
                    self.key_format,
                    match self.key_format {
                        KeyFormat::WindowedString { .. } =>
                            " (Kafka Streams' windowed key: the key's UTF-8 bytes, then the window start as 8 bytes)",
                        KeyFormat::String => "",
                    }
                ),
            });
        }
        let Decoded { mut batch, mut keep, mut bad, fast_path } = d;
        let mut rows = kept;
        if self.policy == BadMessagePolicy::Skip && !bad_keys.is_empty() {
            let mask: BooleanArray = rows.iter().map(|&i| Some(parsed[i].is_some())).collect();
            batch = filter_record_batch(&batch, &mask).map_err(|e| internal(e.to_string()))?;
            let ok: BooleanArray = (0..n).map(|i| Some(parsed[i].is_some())).collect();
            keep = Some(match keep {
                Some(k) => and(&k, &ok).map_err(|e| internal(e.to_string()))?,
                None => ok,
            });
            rows.retain(|&i| parsed[i].is_some());
        }
        bad.key += bad_keys.len() as u64;
        let key_text = || -> ArrayRef {
            Arc::new(StringArray::from_iter(
                rows.iter().map(|&i| parsed[i].and_then(|k| std::str::from_utf8(k.key).ok())),
            ))
        };
        let window = |end: bool| -> ArrayRef {
            Arc::new(TimestampMillisecondArray::from_iter(
                rows.iter().map(|&i| parsed[i].and_then(|k| k.window).map(|(s, e)| if end { e } else { s })),
            ))
        };
        let mut columns = Vec::with_capacity(self.sources.len());
        for (field, source) in self.schema.fields().iter().zip(&self.sources) {
            let raw = match source {
                Source::Value(j) => batch.column(*j).clone(),
                Source::Key => key_text(),
                Source::WindowStart => window(false),
                Source::WindowEnd => window(true),
            };
            let col = if raw.data_type() == field.data_type() {
                raw
            } else {
                cast(&raw, field.data_type()).map_err(|e| internal(format!("column '{}': {e}", field.name())))?
            };
            columns.push(col);
        }
        let batch = RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows.len())),
        )
        .map_err(|e| internal(e.to_string()))?;
        Ok(Decoded { batch, keep, bad, fast_path })
    }
}

fn internal(reason: String) -> BadMessage {
    BadMessage { index: 0, reason }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, TimeUnit};
    use datafusion::arrow::util::pretty::pretty_format_batches;

    fn windowed(user: &str, start_ms: i64) -> Vec<u8> {
        let mut k = user.as_bytes().to_vec();
        k.extend_from_slice(&start_ms.to_be_bytes());
        k
    }

    #[test]
    fn windowed_keys_fill_the_key_and_window_columns() {
        let ts = DataType::Timestamp(TimeUnit::Nanosecond, None);
        let declared = Schema::new(vec![
            Field::new("user_id", DataType::Utf8, false),
            Field::new("window_start", ts.clone(), false),
            Field::new("window_end", ts, false),
            Field::new("n", DataType::Int64, true),
        ]);
        let format = KeyFormat::WindowedString { size_ms: 3_600_000 };
        let d = MessageDecoder::new(&declared, format, Some("user_id"), BadMessagePolicy::Skip);
        let (k1, k2) = (windowed("u1", 0), windowed("u2", 3_600_000));
        let keys = [Some(&k1[..]), Some(&b"bad"[..]), Some(&k2[..]), None];
        let values = [&br#"{"n":1}"#[..], br#"{"n":2}"#, br#"{"n":3}"#, br#"{"n":4}"#];
        let out = d.decode(&keys, &values).unwrap();
        assert_eq!(out.bad.key, 2, "a key too short and a missing key are bad messages");
        assert_eq!(out.bad.total(), 2);
        let keep: Vec<bool> = out.keep.unwrap().iter().map(|b| b.unwrap()).collect();
        assert_eq!(keep, vec![true, false, true, false]);
        let text = pretty_format_batches(&[out.batch]).unwrap().to_string();
        assert!(text.contains("| u1      | 1970-01-01T00:00:00 | 1970-01-01T01:00:00 | 1 |"), "{text}");
        assert!(text.contains("| u2      | 1970-01-01T01:00:00 | 1970-01-01T02:00:00 | 3 |"), "{text}");
        let fail = MessageDecoder::new(&declared, format, Some("user_id"), BadMessagePolicy::Fail);
        assert_eq!(fail.decode(&keys, &values).unwrap_err().index, 1);
    }
}

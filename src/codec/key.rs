//! Message keys → the entity key, and the columns a key carries.
//!
//! A table's `key_format` says how its producers serialized the key:
//! - `string` (the default): the key column's value as UTF-8 text, as Kafka's `StringSerializer` writes it.
//! - `windowed_string`: Kafka Streams' time-windowed key (`WindowedSerdes.timeWindowedSerdeFrom(String.class, size)`):
//!   the user key's UTF-8 bytes followed by the window start as an 8-byte big-endian epoch-millisecond long. The
//!   table's `key` column and its `window_start` / `window_end` columns (TIMESTAMP, the end being start plus the
//!   table's `window_size`, as Kafka Streams' own deserializer computes it) are read from the key, not the value.
//!   Kafka Streams places these records by the user key alone (`WindowedStreamPartitioner`), so key pushdown hashes
//!   the user key's bytes.

use std::fmt;

/// How a table's message keys are serialized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyFormat {
    #[default]
    String,
    /// Kafka Streams' time-windowed string key; windows last `size_ms`.
    WindowedString { size_ms: i64 },
}

/// Columns of the declared schema filled from the key.
pub const WINDOW_START: &str = "window_start";
pub const WINDOW_END: &str = "window_end";

/// What one message key says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedKey<'a> {
    /// The entity key's bytes (what producers hashed to pick the partition).
    pub key: &'a [u8],
    /// Window start and end, epoch milliseconds (windowed keys only).
    pub window: Option<(i64, i64)>,
}

impl KeyFormat {
    /// Parse `window_size` and `key_format` option values.
    pub fn parse(format: &str, window_size: Option<std::time::Duration>) -> Result<Self, String> {
        match format.to_ascii_lowercase().as_str() {
            "string" => match window_size {
                None => Ok(KeyFormat::String),
                Some(_) => Err("'window_size' goes with key_format 'windowed_string'".into()),
            },
            "windowed_string" => {
                let size = window_size.ok_or("key_format 'windowed_string' needs 'window_size' (e.g. '1 hour')")?;
                let size_ms = i64::try_from(size.as_millis()).map_err(|_| "window_size is too large".to_string())?;
                if size_ms <= 0 {
                    return Err("window_size must be at least a millisecond".into());
                }
                Ok(KeyFormat::WindowedString { size_ms })
            }
            other => Err(format!("key_format '{other}' is not supported: expected string or windowed_string")),
        }
    }

    /// Whether columns are read from the key (so values need not carry them).
    pub fn carries_columns(&self) -> bool {
        !matches!(self, KeyFormat::String)
    }

    /// The entity key and window of one message key; None when the bytes are not of this format.
    pub fn parse_key<'a>(&self, key: &'a [u8]) -> Option<ParsedKey<'a>> {
        match *self {
            KeyFormat::String => Some(ParsedKey { key, window: None }),
            KeyFormat::WindowedString { size_ms } => {
                let split = key.len().checked_sub(8)?;
                let (inner, start) = key.split_at(split);
                std::str::from_utf8(inner).ok()?;
                let start = i64::from_be_bytes(start.try_into().ok()?);
                Some(ParsedKey { key: inner, window: Some((start, start.checked_add(size_ms)?)) })
            }
        }
    }

    /// The bytes the producer's partitioner hashed for this message key (the whole key, or the user key of a
    /// windowed one); the key as it is when it does not parse.
    pub fn partition_bytes<'a>(&self, key: &'a [u8]) -> &'a [u8] {
        self.parse_key(key).map_or(key, |k| k.key)
    }

    /// The text `_key` shows and a latest view keys by.
    pub fn key_text<'a>(&self, key: &'a [u8]) -> std::borrow::Cow<'a, str> {
        String::from_utf8_lossy(self.partition_bytes(key))
    }
}

impl fmt::Display for KeyFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyFormat::String => f.write_str("string"),
            KeyFormat::WindowedString { .. } => f.write_str("windowed_string"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn windowed_keys_are_the_user_key_then_the_window_start() {
        let f = KeyFormat::parse("windowed_string", Some(Duration::from_secs(3600))).unwrap();
        // what Kafka Streams' TimeWindowedSerializer writes for ("u42", window starting at 1_795_132_800_000)
        let mut bytes = b"u42".to_vec();
        bytes.extend_from_slice(&1_795_132_800_000i64.to_be_bytes());
        let k = f.parse_key(&bytes).unwrap();
        assert_eq!(k.key, b"u42");
        assert_eq!(k.window, Some((1_795_132_800_000, 1_795_136_400_000)));
        assert_eq!(f.partition_bytes(&bytes), b"u42");
        assert_eq!(f.key_text(&bytes), "u42");
        // too short to hold a window, or not UTF-8 before it
        assert_eq!(f.parse_key(b"short"), None);
        let mut bad = vec![0xff, 0xfe];
        bad.extend_from_slice(&0i64.to_be_bytes());
        assert_eq!(f.parse_key(&bad), None);
    }

    #[test]
    fn options_are_checked() {
        assert_eq!(KeyFormat::parse("string", None), Ok(KeyFormat::String));
        assert!(KeyFormat::parse("windowed_string", None).unwrap_err().contains("needs 'window_size'"));
        assert!(KeyFormat::parse("string", Some(Duration::from_secs(1))).unwrap_err().contains("goes with"));
        assert!(KeyFormat::parse("avro", None).unwrap_err().contains("not supported"));
        assert!(!KeyFormat::String.carries_columns());
    }
}

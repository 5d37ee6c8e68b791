//! Messages → Arrow. One module per format: payloads ([`json`]) and keys ([`key`]); [`message`] puts a table's
//! key and value decoders together. Decoders never panic on bad bytes: each bad message is counted and handled by
//! the table's [`BadMessagePolicy`].

pub mod json;
pub mod key;
pub mod message;

use std::fmt;
use std::str::FromStr;

pub use json::JsonDecoder;
pub use key::KeyFormat;
pub use message::MessageDecoder;

/// The event times a table accepts unless its `event_time_range` option says otherwise: [1900-01-01, 2200-01-01),
/// in nanoseconds since the epoch. A message outside is a bad message.
pub const DEFAULT_TIME_RANGE: (i64, i64) = (-2_208_988_800_000_000_000, 7_258_118_400_000_000_000);

/// Bad messages of one decoded batch, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BadCounts {
    /// Not a document of the declared shape: not JSON, not an object, a value of the wrong type.
    pub malformed: u64,
    /// No value for a column declared NOT NULL (the key column included).
    pub missing_value: u64,
    /// An event time outside the table's `event_time_range`.
    pub event_time: u64,
    /// A Kafka key that does not parse in the table's `key_format`.
    pub key: u64,
}

impl BadCounts {
    /// The reasons' names, in the order of [`Self::by_reason`] (Prometheus' `reason` label).
    pub const REASONS: [&'static str; 4] = ["malformed", "missing_value", "event_time", "key"];

    pub fn total(&self) -> u64 {
        self.malformed + self.missing_value + self.event_time + self.key
    }

    pub fn by_reason(&self) -> [u64; 4] {
        [self.malformed, self.missing_value, self.event_time, self.key]
    }
}

/// What a scan does with a message whose payload does not decode into the table's schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BadMessagePolicy {
    /// Leave the message out and count it (the default).
    #[default]
    Skip,
    /// Keep a row for it with every payload column NULL (metadata columns still set), and count it.
    Null,
    /// Fail the query, naming the partition and offset.
    Fail,
}

impl BadMessagePolicy {
    pub fn as_str(&self) -> &'static str {
        match self {
            BadMessagePolicy::Skip => "skip",
            BadMessagePolicy::Null => "null",
            BadMessagePolicy::Fail => "fail",
        }
    }
}

impl fmt::Display for BadMessagePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BadMessagePolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "skip" => Ok(Self::Skip),
            "null" => Ok(Self::Null),
            "fail" => Ok(Self::Fail),
            other => Err(format!("unknown bad_messages policy '{other}': expected skip, null or fail")),
        }
    }
}

/// Payload formats a Kafka table can declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Json,
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "json" => Ok(Format::Json),
            "avro" | "protobuf" => Err(format!("format '{s}' is not supported yet: only json is")),
            other => Err(format!("unknown format '{other}': expected json")),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("json")
    }
}

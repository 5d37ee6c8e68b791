//! What a Kafka table *is*: its topic, declared columns and options, validated once and persisted as JSON in the
//! catalog topic (format version [`DEFINITION_VERSION`]).

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};

use crate::codec::key::{WINDOW_END, WINDOW_START};
use crate::codec::{BadMessagePolicy, Format, KeyFormat};
use crate::error::{KfsqlError, Result};
use crate::kafka::Partitioner;

/// Version of the JSON written to the catalog topic.
pub const DEFINITION_VERSION: u32 = 1;

/// Names of the columns every Kafka table exposes besides its payload.
pub const META_PARTITION: &str = "_partition";
pub const META_OFFSET: &str = "_offset";
pub const META_TIMESTAMP: &str = "_timestamp";
pub const META_KEY: &str = "_key";
pub const META_COLUMNS: [&str; 4] = [META_PARTITION, META_OFFSET, META_TIMESTAMP, META_KEY];

/// The option names a Kafka table accepts.
pub const KNOWN_OPTIONS: [&str; 10] = [
    "format",
    "key",
    "event_time",
    "event_time_range",
    "partitioner",
    "bad_messages",
    "ttl",
    "online",
    "key_format",
    "window_size",
];

/// A declared column, as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnDef {
    pub name: String,
    /// Arrow data type, in arrow's own text form (`Utf8`, `Float64`, `Timestamp(ns)` …).
    pub data_type: String,
    pub nullable: bool,
}

/// A Kafka table definition, as persisted in the catalog topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableDefinition {
    pub version: u32,
    pub name: String,
    pub topic: String,
    pub columns: Vec<ColumnDef>,
    /// Options as given (lower-case keys), validated by [`TableOptions::parse`].
    pub options: BTreeMap<String, String>,
    /// Set when the table is a materialized view's output: the continuous query that writes its topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<PipelineDefinition>,
}

/// The continuous query behind a materialized view (see [`crate::pipeline`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineDefinition {
    /// The defining `SELECT`, as SQL text.
    pub query: String,
    /// How far behind the newest event time an event may arrive and still count (milliseconds).
    pub allowed_lateness_ms: u64,
}

/// Typed, validated options of a Kafka table.
#[derive(Debug, Clone, PartialEq)]
pub struct TableOptions {
    pub format: Format,
    /// The entity key column: its value, serialized by `key_format`, is the Kafka message key.
    pub key: Option<String>,
    pub key_format: KeyFormat,
    /// The event-time column (a TIMESTAMP).
    pub event_time: Option<String>,
    /// The event times accepted, `[from, to)` in ns: a message outside is a bad message (`'1900-01-01/2200-01-01'`).
    pub event_time_range: (i64, i64),
    pub partitioner: Partitioner,
    pub bad_messages: BadMessagePolicy,
    pub ttl: Option<Duration>,
    pub online: bool,
}

impl TableOptions {
    /// Parse raw options (keys may carry DataFusion's `format.` prefix) against the payload schema.
    pub fn parse(options: &BTreeMap<String, String>, payload: &Schema) -> Result<Self> {
        let mut out = TableOptions {
            format: Format::Json,
            key: None,
            key_format: KeyFormat::String,
            event_time: None,
            event_time_range: crate::codec::DEFAULT_TIME_RANGE,
            partitioner: Partitioner::Murmur2,
            bad_messages: BadMessagePolicy::Skip,
            ttl: None,
            online: false,
        };
        let mut key_format: Option<&str> = None;
        let mut window_size = None;
        for (k, v) in options {
            let invalid = |msg: String| KfsqlError::InvalidParameter(format!("option '{k}': {msg}"));
            match k.as_str() {
                "format" => out.format = Format::from_str(v).map_err(invalid)?,
                "key" => out.key = Some(column_named(payload, v, "key")?),
                "event_time" => {
                    let col = column_named(payload, v, "event_time")?;
                    let dt = payload
                        .field_with_name(&col)
                        .map(|f| f.data_type().clone())
                        .map_err(|e| invalid(e.to_string()))?;
                    if !matches!(dt, DataType::Timestamp(_, _)) {
                        return Err(invalid(format!("event_time column '{col}' must be a TIMESTAMP, not {dt}")));
                    }
                    out.event_time = Some(col);
                }
                "event_time_range" => out.event_time_range = time_range(v).map_err(invalid)?,
                "partitioner" => out.partitioner = Partitioner::from_str(v).map_err(invalid)?,
                "bad_messages" => out.bad_messages = BadMessagePolicy::from_str(v).map_err(invalid)?,
                "ttl" => {
                    let d = humantime::parse_duration(v.trim())
                        .map_err(|e| invalid(format!("'{v}' is not a duration like '2 hours' ({e})")))?;
                    out.ttl = Some(d);
                }
                "online" => {
                    out.online = match v.to_ascii_lowercase().as_str() {
                        "true" | "on" | "yes" | "1" => true,
                        "false" | "off" | "no" | "0" => false,
                        other => return Err(invalid(format!("expected true or false, got '{other}'"))),
                    }
                }
                "key_format" => key_format = Some(v.as_str()),
                "window_size" => {
                    let d = humantime::parse_duration(v.trim())
                        .map_err(|e| invalid(format!("'{v}' is not a duration like '1 hour' ({e})")))?;
                    window_size = Some(d);
                }
                other => {
                    return Err(KfsqlError::InvalidParameter(format!(
                        "unknown option '{other}' for a Kafka table; known options: {}",
                        KNOWN_OPTIONS.join(", ")
                    )));
                }
            }
        }
        out.key_format = KeyFormat::parse(key_format.unwrap_or("string"), window_size)
            .map_err(|m| KfsqlError::InvalidParameter(format!("option 'key_format': {m}")))?;
        if out.key_format.carries_columns() {
            let Some(key) = &out.key else {
                return Err(KfsqlError::InvalidParameter(format!(
                    "key_format '{}' needs a 'key' column to hold the key",
                    out.key_format
                )));
            };
            let text = |name: &str| payload.field_with_name(name).map(|f| f.data_type().clone()).ok();
            if !matches!(text(key), Some(DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)) {
                return Err(KfsqlError::InvalidParameter(format!(
                    "with key_format '{}' the key column '{key}' must be VARCHAR",
                    out.key_format
                )));
            }
            for w in [WINDOW_START, WINDOW_END] {
                if let Some(dt) = text(w)
                    && !matches!(dt, DataType::Timestamp(_, _))
                {
                    return Err(KfsqlError::InvalidParameter(format!(
                        "column '{w}' is read from the windowed key and must be a TIMESTAMP, not {dt}"
                    )));
                }
            }
        }
        if out.online && out.key.is_none() {
            return Err(KfsqlError::InvalidParameter("option 'online' needs a 'key' column".into()));
        }
        Ok(out)
    }
}

fn column_named(schema: &Schema, name: &str, what: &str) -> Result<String> {
    schema
        .fields()
        .iter()
        .find(|f| f.name() == name)
        .or_else(|| schema.fields().iter().find(|f| f.name().eq_ignore_ascii_case(name)))
        .map(|f| f.name().clone())
        .ok_or_else(|| {
            KfsqlError::InvalidParameter(format!(
                "{what} column '{name}' is not a column of the table (columns: {})",
                schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", ")
            ))
        })
}

impl TableDefinition {
    /// Build from a declared payload schema; validates options and column names.
    pub fn new(name: &str, topic: &str, payload: &Schema, options: BTreeMap<String, String>) -> Result<Self> {
        if topic.trim().is_empty() {
            return Err(KfsqlError::InvalidParameter("LOCATION must name a Kafka topic".into()));
        }
        if payload.fields().is_empty() {
            return Err(KfsqlError::InvalidParameter("a Kafka table needs at least one column".into()));
        }
        for f in payload.fields() {
            if META_COLUMNS.contains(&f.name().as_str()) {
                return Err(KfsqlError::InvalidParameter(format!(
                    "column '{}' is reserved: every Kafka table has {} already",
                    f.name(),
                    META_COLUMNS.join(", ")
                )));
            }
        }
        let options: BTreeMap<String, String> = options
            .into_iter()
            .map(|(k, v)| (k.strip_prefix("format.").unwrap_or(&k).to_ascii_lowercase(), v))
            .collect();
        TableOptions::parse(&options, payload)?;
        let columns = payload
            .fields()
            .iter()
            .map(|f| ColumnDef {
                name: f.name().clone(),
                data_type: f.data_type().to_string(),
                nullable: f.is_nullable(),
            })
            .collect();
        Ok(Self {
            version: DEFINITION_VERSION,
            name: name.to_string(),
            topic: topic.to_string(),
            columns,
            options,
            pipeline: None,
        })
    }

    /// The declared payload schema.
    pub fn payload_schema(&self) -> Result<Schema> {
        let fields = self
            .columns
            .iter()
            .map(|c| {
                DataType::from_str(&c.data_type).map(|dt| Field::new(&c.name, dt, c.nullable)).map_err(|e| {
                    KfsqlError::Internal(format!(
                        "table '{}': column '{}' has unreadable type '{}': {e}",
                        self.name, c.name, c.data_type
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Schema::new(fields))
    }

    pub fn table_options(&self) -> Result<TableOptions> {
        TableOptions::parse(&self.options, &self.payload_schema()?)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let def: TableDefinition = serde_json::from_slice(bytes)
            .map_err(|e| KfsqlError::Internal(format!("unreadable catalog entry: {e}")))?;
        if def.version > DEFINITION_VERSION {
            return Err(KfsqlError::Internal(format!(
                "catalog entry '{}' has format version {} but this kfsql reads up to {DEFINITION_VERSION}: upgrade kfsql",
                def.name, def.version
            )));
        }
        Ok(def)
    }
}

/// The metadata columns every Kafka table exposes after its payload columns.
pub fn metadata_fields() -> Vec<Field> {
    vec![
        Field::new(META_PARTITION, DataType::Int32, false),
        Field::new(META_OFFSET, DataType::Int64, false),
        Field::new(META_TIMESTAMP, DataType::Timestamp(TimeUnit::Nanosecond, None), true),
        Field::new(META_KEY, DataType::Utf8, true),
    ]
}

/// Payload columns (as scans output them) followed by the metadata columns.
pub fn full_schema(payload_out: &Schema) -> SchemaRef {
    let mut fields: Vec<Field> = payload_out.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.extend(metadata_fields());
    Arc::new(Schema::new(fields))
}

/// `'FROM/TO'`, each a date or a timestamp (UTC): the nanoseconds `[from, to)`.
fn time_range(v: &str) -> std::result::Result<(i64, i64), String> {
    let at = |t: &str| -> Option<i64> {
        let t = t.trim();
        let dt = chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S")
            .or_else(|_| chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S"))
            .ok()
            .or_else(|| chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d").ok()?.and_hms_opt(0, 0, 0))?;
        dt.and_utc().timestamp_nanos_opt()
    };
    let expected = || format!("'{v}' is not a range like '1900-01-01/2200-01-01' (between 1677 and 2262)");
    let (from, to) = v.split_once('/').ok_or_else(expected)?;
    match (at(from), at(to)) {
        (Some(lo), Some(hi)) if lo < hi => Ok((lo, hi)),
        _ => Err(expected()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload() -> Schema {
        Schema::new(vec![
            Field::new("user_id", DataType::Utf8, false),
            Field::new("amount", DataType::Float64, true),
            Field::new("event_time", DataType::Timestamp(TimeUnit::Nanosecond, None), false),
        ])
    }

    fn opts(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn definition_roundtrips_through_json() {
        let def = TableDefinition::new(
            "transactions",
            "transactions",
            &payload(),
            opts(&[
                ("format.format", "json"),
                ("format.key", "user_id"),
                ("format.event_time", "event_time"),
                ("format.ttl", "2 hours"),
            ]),
        )
        .unwrap();
        assert_eq!(def.options.get("key").map(String::as_str), Some("user_id"));
        let back = TableDefinition::from_json(&def.to_json()).unwrap();
        assert_eq!(back, def);
        assert_eq!(back.payload_schema().unwrap(), payload());
        let o = back.table_options().unwrap();
        assert_eq!(o.ttl, Some(Duration::from_secs(7200)));
        assert_eq!(o.key.as_deref(), Some("user_id"));
    }

    #[test]
    fn rejects_bad_options() {
        let p = payload();
        let err = |o: &[(&str, &str)]| TableDefinition::new("t", "t", &p, opts(o)).unwrap_err().to_string();
        assert!(err(&[("colour", "red")]).contains("unknown option 'colour'"));
        assert!(err(&[("key", "nope")]).contains("key column 'nope' is not a column"));
        assert!(err(&[("event_time", "amount")]).contains("must be a TIMESTAMP"));
        assert!(err(&[("partitioner", "fnv")]).contains("unknown partitioner"));
        assert!(err(&[("bad_messages", "explode")]).contains("skip, null or fail"));
        assert!(err(&[("event_time_range", "2200-01-01/1900-01-01")]).contains("not a range"));
        assert!(err(&[("event_time_range", "1900-01-01")]).contains("not a range"));
        assert!(err(&[("event_time_range", "0001-01-01/2200-01-01")]).contains("not a range"));
        assert!(err(&[("format", "avro")]).contains("not supported yet"));
        assert!(err(&[("ttl", "soon")]).contains("not a duration"));
        assert!(err(&[("online", "true")]).contains("needs a 'key'"));
        let reserved = Schema::new(vec![Field::new("_offset", DataType::Int64, true)]);
        assert!(
            TableDefinition::new("t", "t", &reserved, BTreeMap::new()).unwrap_err().to_string().contains("reserved")
        );
    }

    #[test]
    fn newer_format_version_is_refused() {
        let mut def = TableDefinition::new("t", "t", &payload(), BTreeMap::new()).unwrap();
        def.version = DEFINITION_VERSION + 1;
        assert!(TableDefinition::from_json(&def.to_json()).unwrap_err().to_string().contains("upgrade kfsql"));
    }
}

//! The catalog topic: kfsql's only persistent state. A compacted topic (default `_kfsql_catalog`) whose message key is
//! an object's name and whose value is its definition as JSON; a tombstone drops it. Every server reads it to the end
//! before serving and then follows it, so restarted servers and servers side by side agree on the tables.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};

use crate::error::{KfsqlError, Result};
use crate::kafka::{KafkaCluster, KfsqlConsumer, KfsqlContext};
use crate::table::TableDefinition;

/// One change read from the catalog topic.
#[derive(Debug, Clone, PartialEq)]
pub enum CatalogChange {
    Upsert(TableDefinition),
    Drop(String),
}

/// A compacted, single-partition topic of keyed records: the latest value per key is the state, a tombstone deletes.
/// The catalog and the pipelines' checkpoints are both kept this way.
#[derive(Debug, Clone)]
pub struct KeyedTopic {
    cluster: Arc<KafkaCluster>,
    topic: String,
}

/// One record of a keyed topic: its key and value (None: a tombstone).
pub type KeyedRecord = (String, Option<Vec<u8>>);

impl KeyedTopic {
    pub fn new(cluster: Arc<KafkaCluster>, topic: &str) -> Self {
        Self { cluster, topic: topic.to_string() }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Create the topic (one partition, compacted) if it does not exist.
    pub async fn ensure_topic(&self) -> Result<()> {
        if self.cluster.topic_exists(&self.topic).await? {
            return Ok(());
        }
        self.cluster.create_topic(&self.topic, 1, &[("cleanup.policy", "compact")]).await?;
        // Wait until metadata shows it, so the first read does not race the creation.
        let deadline = Instant::now() + self.cluster.timeout();
        while !self.cluster.topic_exists(&self.topic).await? {
            if Instant::now() > deadline {
                return Err(KfsqlError::Kafka(format!(
                    "topic '{}' was created but does not show up in metadata",
                    self.topic
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Every record up to the current end, in order, and the offset to follow from.
    pub async fn read_all(&self) -> Result<(Vec<KeyedRecord>, i64)> {
        let marks = self.cluster.watermarks(&self.topic, &[0]).await?;
        let (low, high) = (marks[0].low, marks[0].high);
        if high <= low {
            return Ok((Vec::new(), high));
        }
        let consumer = self.consumer(low)?;
        let timeout = self.cluster.timeout();
        let topic = self.topic.clone();
        let records = tokio::task::spawn_blocking(move || -> Result<Vec<KeyedRecord>> {
            let mut out = Vec::new();
            let mut last = Instant::now();
            loop {
                match consumer.poll(Duration::from_millis(100)) {
                    Some(Ok(m)) => {
                        last = Instant::now();
                        if let Some(r) = record(&m) {
                            out.push(r);
                        }
                        if m.offset() + 1 >= high {
                            return Ok(out);
                        }
                    }
                    Some(Err(KafkaError::PartitionEOF(_))) => return Ok(out),
                    Some(Err(e)) => return Err(KfsqlError::Kafka(format!("reading topic '{topic}': {e}"))),
                    None if last.elapsed() > timeout => {
                        return Err(KfsqlError::Kafka(format!("reading topic '{topic}' stalled for {timeout:?}")));
                    }
                    None => {}
                }
            }
        })
        .await
        .map_err(|e| KfsqlError::Internal(e.to_string()))??;
        Ok((records, high))
    }

    /// The latest value of every key (tombstoned keys left out).
    pub async fn latest(&self) -> Result<BTreeMap<String, Vec<u8>>> {
        let mut out = BTreeMap::new();
        for (key, value) in self.read_all().await?.0 {
            match value {
                Some(v) => out.insert(key, v),
                None => out.remove(&key),
            };
        }
        Ok(out)
    }

    /// Follow the topic from `offset` on a background thread, calling `apply` for each record (and with `None` when
    /// idle) until it returns false: its owner is gone.
    pub fn follow(&self, offset: i64, apply: impl Fn(Option<KeyedRecord>) -> bool + Send + 'static) -> Result<()> {
        let consumer = self.consumer(offset)?;
        let topic = self.topic.clone();
        std::thread::Builder::new()
            .name("kfsql-follow".into())
            .spawn(move || {
                loop {
                    match consumer.poll(Duration::from_millis(200)) {
                        Some(Ok(m)) => {
                            if let Some(r) = record(&m)
                                && !apply(Some(r))
                            {
                                return;
                            }
                        }
                        Some(Err(KafkaError::PartitionEOF(_))) | None => {
                            if !apply(None) {
                                return;
                            }
                        }
                        Some(Err(e)) => tracing::debug!("following {topic}: {e}"),
                    }
                }
            })
            .map_err(|e| KfsqlError::Internal(e.to_string()))?;
        Ok(())
    }

    /// Write `value` for `key` (None: a tombstone); returns once the broker acknowledged it.
    pub async fn send(&self, key: &str, value: Option<&[u8]>) -> Result<()> {
        let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&self.topic).key(key).partition(0);
        if let Some(v) = value {
            record = record.payload(v);
        }
        self.cluster
            .producer()
            .send(record, self.cluster.timeout())
            .await
            .map(|_| ())
            .map_err(|(e, _)| KfsqlError::Kafka(format!("writing to topic '{}': {e}", self.topic)))
    }

    fn consumer(&self, offset: i64) -> Result<KfsqlConsumer> {
        let consumer: KfsqlConsumer = self
            .cluster
            .consumer_config()
            .create_with_context(KfsqlContext)
            .map_err(|e| KfsqlError::Kafka(format!("cannot create a consumer for '{}': {e}", self.topic)))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, 0, Offset::Offset(offset))
            .map_err(|e| KfsqlError::Kafka(e.to_string()))?;
        consumer.assign(&tpl).map_err(|e| KfsqlError::Kafka(e.to_string()))?;
        Ok(consumer)
    }
}

fn record<M: Message>(m: &M) -> Option<KeyedRecord> {
    let key = std::str::from_utf8(m.key()?).ok()?.to_string();
    Some((key, m.payload().map(|p| p.to_vec())))
}

/// Reads and writes the catalog topic.
#[derive(Debug, Clone)]
pub struct CatalogStore {
    topic: KeyedTopic,
}

impl CatalogStore {
    pub fn new(cluster: Arc<KafkaCluster>, topic: &str) -> Self {
        Self { topic: KeyedTopic::new(cluster, topic) }
    }

    pub fn topic(&self) -> &str {
        self.topic.topic()
    }

    /// Create the catalog topic (one partition, compacted) if it does not exist.
    pub async fn ensure_topic(&self) -> Result<()> {
        self.topic.ensure_topic().await
    }

    /// Read the whole catalog (up to the current end). Returns the definitions and the offset to follow from.
    pub async fn load(&self) -> Result<(BTreeMap<String, TableDefinition>, i64)> {
        let (records, high) = self.topic.read_all().await?;
        let mut defs = BTreeMap::new();
        for c in records.into_iter().filter_map(decode_change) {
            match c {
                CatalogChange::Upsert(d) => {
                    defs.insert(d.name.clone(), d);
                }
                CatalogChange::Drop(name) => {
                    defs.remove(&name);
                }
            }
        }
        Ok((defs, high))
    }

    /// Follow the catalog from `offset` on a background thread, calling `apply` for each change (and with `None`
    /// when idle) until it returns false: its owner is gone.
    pub fn follow(&self, offset: i64, apply: impl Fn(Option<CatalogChange>) -> bool + Send + 'static) -> Result<()> {
        self.topic.follow(offset, move |record| match record {
            Some(r) => match decode_change(r) {
                Some(c) => apply(Some(c)),
                None => true,
            },
            None => apply(None),
        })
    }

    /// Write (or replace) a definition; returns once the broker acknowledged it.
    pub async fn put(&self, def: &TableDefinition) -> Result<()> {
        let value = def.to_json();
        self.topic.send(&def.name, Some(&value)).await
    }

    /// Write a tombstone for `name`.
    pub async fn delete(&self, name: &str) -> Result<()> {
        self.topic.send(name, None).await
    }
}

fn decode_change((key, value): KeyedRecord) -> Option<CatalogChange> {
    match value {
        None => Some(CatalogChange::Drop(key)),
        Some(v) => match TableDefinition::from_json(&v) {
            Ok(d) if d.name == key => Some(CatalogChange::Upsert(d)),
            Ok(d) => {
                tracing::warn!("catalog entry key '{key}' holds a definition named '{}'; ignored", d.name);
                None
            }
            Err(e) => {
                tracing::warn!("catalog entry '{key}' ignored: {e}");
                None
            }
        },
    }
}

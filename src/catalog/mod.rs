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

/// Reads and writes the catalog topic.
#[derive(Debug, Clone)]
pub struct CatalogStore {
    cluster: Arc<KafkaCluster>,
    topic: String,
}

impl CatalogStore {
    pub fn new(cluster: Arc<KafkaCluster>, topic: &str) -> Self {
        Self { cluster, topic: topic.to_string() }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Create the catalog topic (one partition, compacted) if it does not exist.
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
                    "catalog topic '{}' was created but does not show up in metadata",
                    self.topic
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Read the whole catalog (up to the current end). Returns the definitions and the offset to follow from.
    pub async fn load(&self) -> Result<(BTreeMap<String, TableDefinition>, i64)> {
        let marks = self.cluster.watermarks(&self.topic, &[0]).await?;
        let (low, high) = (marks[0].low, marks[0].high);
        let mut defs = BTreeMap::new();
        if high <= low {
            return Ok((defs, high));
        }
        let consumer = self.consumer(low)?;
        let timeout = self.cluster.timeout();
        let topic = self.topic.clone();
        let changes = tokio::task::spawn_blocking(move || -> Result<Vec<CatalogChange>> {
            let mut out = Vec::new();
            let mut last = Instant::now();
            loop {
                match consumer.poll(Duration::from_millis(100)) {
                    Some(Ok(m)) => {
                        last = Instant::now();
                        if let Some(c) = decode_change(&m) {
                            out.push(c);
                        }
                        if m.offset() + 1 >= high {
                            return Ok(out);
                        }
                    }
                    Some(Err(KafkaError::PartitionEOF(_))) => return Ok(out),
                    Some(Err(e)) => return Err(KfsqlError::Kafka(format!("reading catalog topic '{topic}': {e}"))),
                    None if last.elapsed() > timeout => {
                        return Err(KfsqlError::Kafka(format!(
                            "reading catalog topic '{topic}' stalled for {timeout:?}"
                        )));
                    }
                    None => {}
                }
            }
        })
        .await
        .map_err(|e| KfsqlError::Internal(e.to_string()))??;
        for c in changes {
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
        let consumer = self.consumer(offset)?;
        std::thread::Builder::new()
            .name("kfsql-catalog".into())
            .spawn(move || {
                loop {
                    match consumer.poll(Duration::from_millis(200)) {
                        Some(Ok(m)) => {
                            if let Some(c) = decode_change(&m)
                                && !apply(Some(c))
                            {
                                return;
                            }
                        }
                        Some(Err(KafkaError::PartitionEOF(_))) | None => {
                            if !apply(None) {
                                return;
                            }
                        }
                        Some(Err(e)) => tracing::debug!("catalog follower: {e}"),
                    }
                }
            })
            .map_err(|e| KfsqlError::Internal(e.to_string()))?;
        Ok(())
    }

    /// Write (or replace) a definition; returns once the broker acknowledged it.
    pub async fn put(&self, def: &TableDefinition) -> Result<()> {
        let value = def.to_json();
        self.send(&def.name, Some(&value)).await
    }

    /// Write a tombstone for `name`.
    pub async fn delete(&self, name: &str) -> Result<()> {
        self.send(name, None).await
    }

    async fn send(&self, key: &str, value: Option<&[u8]>) -> Result<()> {
        let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&self.topic).key(key).partition(0);
        if let Some(v) = value {
            record = record.payload(v);
        }
        self.cluster
            .producer()
            .send(record, self.cluster.timeout())
            .await
            .map(|_| ())
            .map_err(|(e, _)| KfsqlError::Kafka(format!("writing to catalog topic '{}': {e}", self.topic)))
    }

    fn consumer(&self, offset: i64) -> Result<KfsqlConsumer> {
        let consumer: KfsqlConsumer = self
            .cluster
            .consumer_config()
            .create_with_context(KfsqlContext)
            .map_err(|e| KfsqlError::Kafka(format!("cannot create a catalog consumer: {e}")))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, 0, Offset::Offset(offset))
            .map_err(|e| KfsqlError::Kafka(e.to_string()))?;
        consumer.assign(&tpl).map_err(|e| KfsqlError::Kafka(e.to_string()))?;
        Ok(consumer)
    }
}

fn decode_change<M: Message>(m: &M) -> Option<CatalogChange> {
    let key = std::str::from_utf8(m.key()?).ok()?.to_string();
    match m.payload() {
        None => Some(CatalogChange::Drop(key)),
        Some(v) => match TableDefinition::from_json(v) {
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

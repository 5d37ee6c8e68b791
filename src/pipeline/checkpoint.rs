//! A pipeline's committed progress, one record per pipeline in a compacted topic beside the catalog
//! (`<catalog topic>_pipelines`): where to resume reading each source partition and which windows were already
//! emitted. It is written only after the outputs it covers are acknowledged, as one message, so a restart resumes
//! from a consistent point whatever moment the previous process died at.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::catalog::KeyedTopic;
use crate::error::{KfsqlError, Result};

/// What a pipeline has durably done.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub version: u32,
    /// Per source partition, the offset to resume reading from: the oldest message still needed by a window not
    /// yet emitted, or the next unread one.
    pub resume: BTreeMap<i32, i64>,
    /// Per source partition, the next unread offset when this was written (messages before it are replays).
    pub read: BTreeMap<i32, i64>,
    /// Every window ending at or before this (ns since the epoch) has been emitted.
    pub emitted_until: Option<i64>,
}

/// Reads and writes checkpoints.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    topic: KeyedTopic,
    /// Set once the topic is known to exist (it is created with the first pipeline).
    created: std::sync::Arc<tokio::sync::OnceCell<()>>,
}

impl CheckpointStore {
    pub fn new(topic: KeyedTopic) -> Self {
        Self { topic, created: Default::default() }
    }

    async fn ensure_topic(&self) -> Result<()> {
        self.created.get_or_try_init(|| self.topic.ensure_topic()).await.map(|_| ())
    }

    /// The last checkpoint of pipeline `name`, if it has one.
    pub async fn load(&self, name: &str) -> Result<Option<Checkpoint>> {
        self.ensure_topic().await?;
        let all = self.topic.latest().await?;
        all.get(name)
            .map(|v| {
                serde_json::from_slice(v)
                    .map_err(|e| KfsqlError::Internal(format!("checkpoint of pipeline '{name}' is unreadable: {e}")))
            })
            .transpose()
    }

    pub async fn save(&self, name: &str, checkpoint: &Checkpoint) -> Result<()> {
        let value = serde_json::to_vec(checkpoint).map_err(|e| KfsqlError::Internal(e.to_string()))?;
        self.ensure_topic().await?;
        self.topic.send(name, Some(&value)).await
    }

    /// Forget a dropped pipeline's progress.
    pub async fn delete(&self, name: &str) -> Result<()> {
        self.ensure_topic().await?;
        self.topic.send(name, None).await
    }
}

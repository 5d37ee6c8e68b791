//! The embedded Kafka: librdkafka's in-process mock cluster, so `kfsql` works on a laptop with nothing installed.
//! It listens on a loopback port that other Kafka clients can produce to while the process lives. It has no admin
//! API, so topics are created through the mock API.

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

use crate::error::{KfsqlError, Result};

/// Owns the mock cluster for the life of the process.
pub struct EmbeddedCluster {
    inner: MockCluster<'static, DefaultProducerContext>,
}

// SAFETY: the mock cluster is driven by its own librdkafka thread; the handle only enqueues operations on it
// (rd_kafka_mock_* functions are thread-safe), and it is never dropped while another thread uses it because
// `KafkaCluster` owns it for the life of the server.
unsafe impl Send for EmbeddedCluster {}
unsafe impl Sync for EmbeddedCluster {}

impl EmbeddedCluster {
    pub fn start(brokers: i32) -> Result<Self> {
        let inner = MockCluster::new(brokers)
            .map_err(|e| KfsqlError::Kafka(format!("cannot start the embedded Kafka: {e}")))?;
        Ok(Self { inner })
    }

    pub fn bootstrap_servers(&self) -> String {
        self.inner.bootstrap_servers()
    }

    pub fn create_topic(&self, topic: &str, partitions: i32) -> Result<()> {
        self.inner
            .create_topic(topic, partitions, 1)
            .map_err(|e| KfsqlError::Kafka(format!("creating topic '{topic}' on the embedded Kafka: {e}")))
    }
}

//! Kafka access: one [`KafkaCluster`] per server holds the bootstrap address, a metadata client and a producer, and
//! answers the questions the rest of kfsql asks of the brokers (partitions, watermarks, offsets for times, topic
//! creation). Every call is bounded by a timeout and answers a clear [`KfsqlError::Kafka`] when brokers are down.
//! With no brokers configured it starts librdkafka's in-process mock cluster ([`mock`]).

pub mod mock;
pub mod partitioner;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::ToBytes;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::error::{KfsqlError, Result};
pub use mock::EmbeddedCluster;
pub use partitioner::Partitioner;

/// Client context for every kfsql consumer: routes librdkafka's errors to tracing, minus the end-of-partition
/// events scans ask for (`enable.partition.eof`) that librdkafka also reports globally.
#[derive(Debug, Clone, Copy, Default)]
pub struct KfsqlContext;

impl ClientContext for KfsqlContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) {
            return;
        }
        tracing::warn!("kafka: {error}: {reason}");
    }
}

impl ConsumerContext for KfsqlContext {}

/// Errors a consumer reports while librdkafka reconnects on its own (a broker connection dropped or destroyed, all
/// connections momentarily down, a request timed out): worth waiting out, up to a caller's stall timeout.
pub fn is_transient(e: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    let code = match e {
        KafkaError::MessageConsumption(c) | KafkaError::Global(c) | KafkaError::MetadataFetch(c) => *c,
        _ => return false,
    };
    matches!(
        code,
        C::AllBrokersDown
            | C::BrokerTransportFailure
            | C::NetworkException
            | C::RequestTimedOut
            | C::OperationTimedOut
            | C::BrokerNotAvailable
            | C::LeaderNotAvailable
            | C::NotLeaderForPartition
            // librdkafka destroys the handle of a broker that left the cluster's metadata (a killed leader) while
            // a request still waits on it; the retry goes to the live brokers
            | C::DestroyBroker
    )
}

/// Enqueue `record`, waiting while the producer's local queue is full.
pub async fn send_with_retry<'a, K, P>(
    producer: &FutureProducer,
    mut record: FutureRecord<'a, K, P>,
) -> std::result::Result<DeliveryFuture, KafkaError>
where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    loop {
        match producer.send_result(record) {
            Ok(delivery) => return Ok(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// Wait until every message sent to `topic` is acknowledged; the first failure is the error.
pub async fn await_deliveries(topic: &str, deliveries: Vec<DeliveryFuture>) -> Result<()> {
    for d in deliveries {
        match d.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => return Err(KfsqlError::Kafka(format!("producing to {topic}: {e}"))),
            Err(_) => return Err(KfsqlError::Kafka(format!("producing to {topic}: the producer went away"))),
        }
    }
    Ok(())
}

/// The consumer type kfsql uses everywhere (partitions are assigned, never subscribed).
pub type KfsqlConsumer = BaseConsumer<KfsqlContext>;

/// How long kfsql rides out a leader failover: Kafka notices a dead broker after its 9 s session timeout and then
/// moves leadership. It is the least time a produced message may take to be acknowledged before it counts as
/// failed, and how long a metadata call (watermarks, offsets by time, partition counts) keeps retrying while brokers
/// answer but a partition has no reachable leader.
pub const FAILOVER_BUDGET: Duration = Duration::from_secs(30);

/// How long the "does the cluster still answer?" probe between metadata retries waits.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The low and high watermark of one partition: offsets `[low, high)` are readable now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermarks {
    pub low: i64,
    pub high: i64,
}

/// A connection to one Kafka cluster (real brokers or the embedded mock).
pub struct KafkaCluster {
    bootstrap: String,
    timeout: Duration,
    replication: i32,
    extra: Vec<(String, String)>,
    metadata: Arc<KfsqlConsumer>,
    producer: FutureProducer,
    embedded: Option<EmbeddedCluster>,
}

impl std::fmt::Debug for KafkaCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaCluster")
            .field("bootstrap", &self.bootstrap)
            .field("embedded", &self.embedded.is_some())
            .finish()
    }
}

impl KafkaCluster {
    /// Connect to `bootstrap` (comma-separated host:port). Nothing is sent until the first call.
    pub fn connect(bootstrap: &str, timeout: Duration, extra: Vec<(String, String)>) -> Result<Self> {
        Self::build(bootstrap.to_string(), timeout, extra, None)
    }

    /// Start an in-process mock cluster with `brokers` brokers and connect to it.
    pub fn embedded(brokers: i32, timeout: Duration) -> Result<Self> {
        let mock = EmbeddedCluster::start(brokers)?;
        Self::build(mock.bootstrap_servers(), timeout, Vec::new(), Some(mock))
    }

    fn build(
        bootstrap: String,
        timeout: Duration,
        extra: Vec<(String, String)>,
        embedded: Option<EmbeddedCluster>,
    ) -> Result<Self> {
        let mut base = ClientConfig::new();
        base.set("bootstrap.servers", &bootstrap).set("client.id", "kfsql");
        for (k, v) in &extra {
            base.set(k, v);
        }
        let metadata: KfsqlConsumer = base
            .clone()
            .set("allow.auto.create.topics", "false")
            .set("enable.auto.commit", "false")
            .create_with_context(KfsqlContext)
            .map_err(|e| KfsqlError::Kafka(format!("cannot create a client for {bootstrap}: {e}")))?;
        let producer: FutureProducer = base
            .clone()
            .set("enable.idempotence", "true")
            // Place keys as Java clients do, so tables' default partitioner (murmur2) prunes correctly.
            .set("partitioner", "murmur2_random")
            .set("acks", "all")
            .set("linger.ms", "5")
            // long enough to ride out a leader failover (a dead broker is noticed after its 9 s session timeout)
            .set("message.timeout.ms", timeout.as_millis().max(FAILOVER_BUDGET.as_millis()).to_string())
            .create()
            .map_err(|e| KfsqlError::Kafka(format!("cannot create a producer for {bootstrap}: {e}")))?;
        Ok(Self { bootstrap, timeout, replication: 1, extra, metadata: Arc::new(metadata), producer, embedded })
    }

    /// Replication factor for topics kfsql creates (the catalog topic, feature topics).
    pub fn with_replication(mut self, replication: i32) -> Self {
        self.replication = replication;
        self
    }

    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    pub fn is_embedded(&self) -> bool {
        self.embedded.is_some()
    }

    /// Whether ListOffsets by timestamp can be trusted to start scans. librdkafka's mock cluster answers "end" for
    /// every timestamp, so the embedded Kafka scans from the start and filters instead.
    pub fn supports_offsets_for_times(&self) -> bool {
        self.embedded.is_none()
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Client settings for a new consumer of this cluster. kfsql assigns partitions itself and never commits;
    /// librdkafka still wants a `group.id` for `assign`.
    pub fn consumer_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap)
            .set("client.id", "kfsql")
            .set("group.id", "kfsql")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("allow.auto.create.topics", "false")
            .set("fetch.wait.max.ms", "50")
            .set("queued.min.messages", "200000")
            .set("fetch.message.max.bytes", "4194304");
        for (k, v) in &self.extra {
            c.set(k, v);
        }
        c
    }

    pub fn producer(&self) -> &FutureProducer {
        &self.producer
    }

    /// Run a blocking call on the metadata client off the async runtime; broker errors become clear messages.
    ///
    /// A call that fails transiently while the cluster still answers (a partition's leader died and Kafka has not
    /// yet moved leadership: it notices a dead broker after its 9 s session timeout) is retried for up to
    /// [`FAILOVER_BUDGET`], as the producer rides out the same failover. When no broker answers at all, the first
    /// failure is the answer after a short probe, so a cluster that is down fails within one timeout plus
    /// [`PROBE_TIMEOUT`].
    async fn on_metadata_client<T: Send + 'static>(
        &self,
        f: impl Fn(&KfsqlConsumer, Duration) -> std::result::Result<T, KafkaError> + Send + 'static,
    ) -> Result<T> {
        let (md, timeout, bootstrap) = (self.metadata.clone(), self.timeout, self.bootstrap.clone());
        let budget = timeout.max(FAILOVER_BUDGET);
        blocking(move || {
            let start = Instant::now();
            loop {
                match f(&md, timeout) {
                    Ok(v) => return Ok(v),
                    Err(e)
                        if is_transient(&e)
                            && start.elapsed() + timeout <= budget
                            && md.fetch_metadata(None, timeout.min(PROBE_TIMEOUT)).is_ok() =>
                    {
                        tracing::debug!("kafka: {e}; the cluster answers, so retrying while leadership moves");
                        std::thread::sleep(Duration::from_millis(250));
                    }
                    Err(e) => return Err(unreachable_err(&bootstrap, timeout, e)),
                }
            }
        })
        .await
    }

    /// Number of partitions of `topic`; a clear error when the topic does not exist or brokers are unreachable.
    pub async fn partition_count(&self, topic: &str) -> Result<i32> {
        let name = topic.to_string();
        let meta = self.on_metadata_client(move |md, timeout| md.fetch_metadata(Some(&name), timeout)).await?;
        let t = meta
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .ok_or_else(|| KfsqlError::InvalidParameter(format!("Kafka topic '{topic}' does not exist")))?;
        if let Some(err) = t.error() {
            let code = RDKafkaErrorCode::from(err);
            return Err(
                if code == RDKafkaErrorCode::UnknownTopicOrPartition || code == RDKafkaErrorCode::UnknownTopic {
                    KfsqlError::InvalidParameter(format!("Kafka topic '{topic}' does not exist (create it first)"))
                } else {
                    KfsqlError::Kafka(format!("metadata for topic '{topic}': {code}"))
                },
            );
        }
        if t.partitions().is_empty() {
            return Err(KfsqlError::InvalidParameter(format!("Kafka topic '{topic}' does not exist (no partitions)")));
        }
        Ok(t.partitions().len() as i32)
    }

    /// Whether `topic` exists.
    pub async fn topic_exists(&self, topic: &str) -> Result<bool> {
        match self.partition_count(topic).await {
            Ok(_) => Ok(true),
            Err(KfsqlError::InvalidParameter(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Watermarks of each listed partition, in order.
    pub async fn watermarks(&self, topic: &str, partitions: &[i32]) -> Result<Vec<Watermarks>> {
        let (topic, partitions) = (topic.to_string(), partitions.to_vec());
        self.on_metadata_client(move |md, timeout| {
            partitions
                .iter()
                .map(|&p| md.fetch_watermarks(&topic, p, timeout).map(|(low, high)| Watermarks { low, high }))
                .collect()
        })
        .await
    }

    /// For each partition, the earliest offset whose timestamp is >= `timestamp_ms`, or None when there is none.
    /// The broker's answer is not trusted blindly: callers clamp it to the partition's watermarks.
    pub async fn offsets_for_time(
        &self,
        topic: &str,
        partitions: &[i32],
        timestamp_ms: i64,
    ) -> Result<Vec<Option<i64>>> {
        let (topic, partitions) = (topic.to_string(), partitions.to_vec());
        self.on_metadata_client(move |md, timeout| {
            let mut tpl = TopicPartitionList::new();
            for &p in &partitions {
                tpl.add_partition_offset(&topic, p, Offset::Offset(timestamp_ms))?;
            }
            let answer = md.offsets_for_times(tpl, timeout)?;
            Ok(partitions
                .iter()
                .map(|&p| match answer.find_partition(&topic, p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) if o >= 0 => Some(o),
                    _ => None,
                })
                .collect())
        })
        .await
    }

    /// Create `topic` (idempotent: an existing topic is fine). `configs` are topic configs such as cleanup.policy.
    pub async fn create_topic(&self, topic: &str, partitions: i32, configs: &[(&str, &str)]) -> Result<()> {
        if let Some(mock) = &self.embedded {
            if self.topic_exists(topic).await? {
                return Ok(());
            }
            return mock.create_topic(topic, partitions);
        }
        let admin: AdminClient<DefaultClientContext> = self
            .consumer_config()
            .create()
            .map_err(|e| KfsqlError::Kafka(format!("cannot create an admin client: {e}")))?;
        let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(self.replication));
        for (k, v) in configs {
            new = new.set(k, v);
        }
        let opts = AdminOptions::new().operation_timeout(Some(self.timeout)).request_timeout(Some(self.timeout));
        let res = tokio::time::timeout(self.timeout + Duration::from_secs(1), admin.create_topics([&new], &opts))
            .await
            .map_err(|_| {
                KfsqlError::Kafka(format!(
                    "creating topic '{topic}' timed out after {:?} (brokers {})",
                    self.timeout, self.bootstrap
                ))
            })?
            .map_err(|e| unreachable_err(&self.bootstrap, self.timeout, e))?;
        for r in res {
            match r {
                Ok(_) => {}
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => return Err(KfsqlError::Kafka(format!("creating topic '{name}': {code}"))),
            }
        }
        Ok(())
    }
}

fn unreachable_err(bootstrap: &str, timeout: Duration, e: KafkaError) -> KfsqlError {
    match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::OperationTimedOut)
        | Some(RDKafkaErrorCode::AllBrokersDown)
        | Some(RDKafkaErrorCode::BrokerTransportFailure) => KfsqlError::Kafka(format!(
            "Kafka brokers at {bootstrap} did not answer within {timeout:?} ({e}); check that they are up and reachable"
        )),
        _ => KfsqlError::Kafka(format!("{e} (brokers {bootstrap})")),
    }
}

/// Run a blocking librdkafka call off the async runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| KfsqlError::Internal(format!("kafka task failed: {e}")))?
}

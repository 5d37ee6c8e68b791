//! What the benches share: the broker they run against, topic creation, and a bulk producer.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use kfsql::kafka::KafkaCluster;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord};

/// The allocator the `kfsql` binary uses (see src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The broker named by `KFSQL_BENCH_BROKERS`, or an embedded Kafka (librdkafka's mock cluster).
pub fn cluster(timeout: Duration) -> Arc<KafkaCluster> {
    Arc::new(match std::env::var("KFSQL_BENCH_BROKERS") {
        Ok(b) if !b.is_empty() => KafkaCluster::connect(&b, timeout, vec![]).expect("connect"),
        _ => KafkaCluster::embedded(1, timeout).expect("embedded kafka"),
    })
}

/// Create `topic` and wait until metadata shows all its partitions.
pub async fn topic(cluster: &KafkaCluster, topic: &str, partitions: i32) {
    cluster.create_topic(topic, partitions, &[]).await.expect("topic");
    while cluster.partition_count(topic).await.ok() != Some(partitions) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A producer for loading data fast: keys placed by murmur2 like kfsql's tables expect, batched by `linger_ms`.
pub fn producer(cluster: &KafkaCluster, linger_ms: u32) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("partitioner", "murmur2_random")
        .set("linger.ms", linger_ms.to_string())
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer")
}

/// Send one message, waiting while the local queue is full.
pub fn send(producer: &BaseProducer, topic: &str, key: &str, payload: &str) {
    let mut record = BaseRecord::to(topic).key(key).payload(payload);
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                producer.poll(Duration::from_millis(5));
            }
            Err((e, _)) => panic!("produce: {e}"),
        }
    }
}

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::{Ack, KafkaConfig, PublishError, Publisher, RawRecord};

/// A compacted topic that makes a component's keyed state durable.
///
/// Partition `p` of the changelog holds the state derived from partition `p` of the
/// component's input, so a partition's state moves with the partition on a rebalance. The
/// latest value per key wins; a tombstone deletes the key. A component writes its state
/// changes here *before* it stores the input offsets they came from.
#[derive(Clone)]
pub struct Changelog {
    topic: String,
    config: KafkaConfig,
    publisher: Publisher,
}

impl Changelog {
    /// A changelog on the broker-side topic `topic`.
    pub fn new(topic: String, config: KafkaConfig, publisher: Publisher) -> Self {
        Self { topic, config, publisher }
    }

    /// The broker-side topic name.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Writes `key = value` (or deletes `key`) to `partition`; completes on acknowledgement.
    pub async fn write(
        &self,
        partition: i32,
        key: &str,
        value: Option<Vec<u8>>,
    ) -> Result<Ack, PublishError> {
        self.publisher
            .send(RawRecord {
                topic: self.topic.clone(),
                key: Some(key.as_bytes().to_vec()),
                payload: value,
                headers: Vec::new(),
                partition: Some(partition),
            })
            .await
    }

    /// Reads `partition` from its beginning to the high watermark at the time of the call
    /// and returns the latest value of every live key.
    pub async fn restore(&self, partition: i32) -> Result<HashMap<String, Vec<u8>>, KafkaError> {
        let topic = self.topic.clone();
        let config = self.config.clone();
        tokio::task::spawn_blocking(move || restore_blocking(&config, &topic, partition))
            .await
            .map_err(|_| KafkaError::Canceled)?
    }
}

fn restore_blocking(
    config: &KafkaConfig,
    topic: &str,
    partition: i32,
) -> Result<HashMap<String, Vec<u8>>, KafkaError> {
    let consumer: BaseConsumer = config
        .client_config("erpstream-restore")
        .set("group.id", format!("{topic}.restore"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("fetch.wait.max.ms", config.fetch_wait.as_millis().max(1).to_string())
        .create()?;
    let (low, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
    let mut state = HashMap::new();
    if high <= low {
        return Ok(state);
    }
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    consumer.assign(&assignment)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    loop {
        if std::time::Instant::now() > deadline {
            return Err(KafkaError::Canceled);
        }
        let Some(message) = consumer.poll(Duration::from_millis(500)) else { continue };
        let message = message?;
        if let Some(key) = message.key() {
            let key = String::from_utf8_lossy(key).into_owned();
            match message.payload() {
                Some(value) => {
                    state.insert(key, value.to_vec());
                }
                None => {
                    state.remove(&key);
                }
            }
        }
        if message.offset() + 1 >= high {
            return Ok(state);
        }
    }
}

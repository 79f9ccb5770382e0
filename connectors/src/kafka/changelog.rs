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
        Self {
            topic,
            config,
            publisher,
        }
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

    /// Reads each of `partitions` from its beginning to its high watermark at the time of
    /// the call, with one consumer, and returns the latest value of every live key per
    /// partition.
    pub async fn restore(
        &self,
        partitions: &[i32],
    ) -> Result<HashMap<i32, HashMap<String, Vec<u8>>>, KafkaError> {
        let topic = self.topic.clone();
        let config = self.config.clone();
        let partitions = partitions.to_vec();
        tokio::task::spawn_blocking(move || restore_blocking(&config, &topic, &partitions))
            .await
            .map_err(|_| KafkaError::Canceled)?
    }
}

fn restore_blocking(
    config: &KafkaConfig,
    topic: &str,
    partitions: &[i32],
) -> Result<HashMap<i32, HashMap<String, Vec<u8>>>, KafkaError> {
    let consumer: BaseConsumer = config
        .client_config("erpstream-restore")
        .set("group.id", format!("{topic}.restore"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set(
            "fetch.wait.max.ms",
            config.fetch_wait.as_millis().max(1).to_string(),
        )
        .create()?;
    let mut state: HashMap<i32, HashMap<String, Vec<u8>>> = HashMap::new();
    let mut ends = HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for &partition in partitions {
        state.insert(partition, HashMap::new());
        let (low, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
        if high > low {
            ends.insert(partition, high);
            assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
        }
    }
    if ends.is_empty() {
        return Ok(state);
    }
    consumer.assign(&assignment)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    while !ends.is_empty() {
        if std::time::Instant::now() > deadline {
            return Err(KafkaError::Canceled);
        }
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = message?;
        let partition = message.partition();
        if let (Some(key), Some(keys)) = (message.key(), state.get_mut(&partition)) {
            let key = String::from_utf8_lossy(key).into_owned();
            match message.payload() {
                Some(value) => {
                    keys.insert(key, value.to_vec());
                }
                None => {
                    keys.remove(&key);
                }
            }
        }
        if ends
            .get(&partition)
            .is_some_and(|high| message.offset() + 1 >= *high)
        {
            ends.remove(&partition);
        }
    }
    Ok(state)
}

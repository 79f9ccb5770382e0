use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
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
        let mut state: HashMap<i32, HashMap<String, Vec<u8>>> =
            partitions.iter().map(|p| (*p, HashMap::new())).collect();
        let mut entries = self.read(partitions);
        while let Some(chunk) = entries.next().await {
            for entry in chunk? {
                let keys = state.entry(entry.partition).or_default();
                match entry.value {
                    Some(value) => keys.insert(entry.key, value),
                    None => keys.remove(&entry.key),
                };
            }
        }
        Ok(state)
    }

    /// Reads each of `partitions` from its beginning to its high watermark at the time of
    /// the call (or to its end, where the last offsets are transaction markers; records of
    /// aborted transactions are never read), with one consumer on a blocking thread, and yields every record in chunks,
    /// in changelog order per partition (a later entry for a key replaces an earlier one; a
    /// tombstone deletes it). A failure is the last item. Memory stays bounded: the reader
    /// waits while a few chunks are not taken yet, so a caller that applies entries as they
    /// come never holds the whole changelog.
    pub fn read(
        &self,
        partitions: &[i32],
    ) -> impl futures::Stream<Item = Result<Vec<Entry>, KafkaError>> + Send + Unpin + 'static {
        let (sender, receiver) = tokio::sync::mpsc::channel(READ_AHEAD);
        let topic = self.topic.clone();
        let config = self.config.clone();
        let partitions = partitions.to_vec();
        tokio::task::spawn_blocking(move || {
            if let Err(err) = read_blocking(&config, &topic, &partitions, &sender) {
                let _ = sender.blocking_send(Err(err));
            }
        });
        Box::pin(futures::stream::unfold(
            receiver,
            |mut receiver| async move { receiver.recv().await.map(|item| (item, receiver)) },
        ))
    }
}

/// What following a changelog yields (see [`Changelog::follow`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Followed {
    /// The changelog's partitions, first of all.
    Partitions(Vec<i32>),
    /// Records, in changelog order per partition.
    Entries(Vec<Entry>),
    /// Everything the partition held when following began has been yielded.
    CaughtUp(i32),
}

impl Changelog {
    /// Follows every partition of the changelog from its beginning, for as long as the
    /// stream is read: records in chunks as they come (a chunk is handed over when full or
    /// when the broker has nothing more for now), and once per partition when it is caught
    /// up with what it held at the start; the partitions come first. Broker failures are logged and waited out; the
    /// stream ends only if the topic cannot be described. Fetches wait up to `idle_poll`
    /// (at most 1 s) with idle pausing on, else `fetch_wait`: a read copy may lag that long.
    pub fn follow(
        &self,
    ) -> impl futures::Stream<Item = Result<Followed, KafkaError>> + Send + Unpin + 'static {
        let (sender, receiver) = tokio::sync::mpsc::channel(READ_AHEAD);
        let topic = self.topic.clone();
        let config = self.config.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(err) = follow_blocking(&config, &topic, &sender) {
                let _ = sender.blocking_send(Err(err));
            }
        });
        Box::pin(futures::stream::unfold(
            receiver,
            |mut receiver| async move { receiver.recv().await.map(|item| (item, receiver)) },
        ))
    }
}

/// One changelog record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Partition (of the changelog and of the component's input).
    pub partition: i32,
    /// The state's key.
    pub key: String,
    /// The value; `None` deletes the key.
    pub value: Option<Vec<u8>>,
}

/// Longest a following fetch waits with idle pausing on (a read copy lags at most that).
const FOLLOW_WAIT: Duration = Duration::from_secs(1);
/// Entries per chunk handed over by [`Changelog::read`].
const CHUNK: usize = 10_000;
/// Chunks read ahead of the caller.
const READ_AHEAD: usize = 4;
/// Largest fetch response of a restore (Apache Kafka brokers cap it at their own
/// `fetch.max.bytes`, 55 MiB by default): a restore reads whole partitions, and brokers that
/// scan from the fetch offset (tansu's sqlite store) answer fewer, larger fetches far faster;
/// the client's read-ahead is held to the same size, so a restore's buffers stay bounded.
const RESTORE_FETCH_BYTES: usize = 64 << 20;

/// The restore consumer's context: the end of a partition is how a restore knows it is done,
/// not an error to log.
struct RestoreContext;

impl ClientContext for RestoreContext {
    fn error(&self, error: KafkaError, reason: &str) {
        let end = matches!(
            error,
            KafkaError::PartitionEOF(_)
                | KafkaError::Global(rdkafka::types::RDKafkaErrorCode::PartitionEOF)
        );
        if !end {
            tracing::error!(error = %error, reason, "restore consumer");
        }
    }
}

impl ConsumerContext for RestoreContext {}

/// A consumer that reads a changelog whole, assigned by hand, fetches waiting `fetch_wait`.
fn reader(
    config: &KafkaConfig,
    topic: &str,
    fetch_wait: Duration,
) -> Result<BaseConsumer<RestoreContext>, KafkaError> {
    config
        .client_config("erpstream-restore")?
        .set("group.id", format!("{topic}.restore"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // The last offsets of a partition written in transactions are commit markers, which
        // are never delivered: the end of such a partition shows as its end-of-partition.
        .set("enable.partition.eof", "true")
        .set(
            "max.partition.fetch.bytes",
            (RESTORE_FETCH_BYTES / 2).to_string(),
        )
        .set("fetch.max.bytes", RESTORE_FETCH_BYTES.to_string())
        .set(
            "queued.max.messages.kbytes",
            (RESTORE_FETCH_BYTES >> 10).to_string(),
        )
        .set(
            "fetch.wait.max.ms",
            fetch_wait.as_millis().max(1).to_string(),
        )
        .create_with_context(RestoreContext)
}

fn read_blocking(
    config: &KafkaConfig,
    topic: &str,
    partitions: &[i32],
    sender: &tokio::sync::mpsc::Sender<Result<Vec<Entry>, KafkaError>>,
) -> Result<(), KafkaError> {
    let consumer = reader(config, topic, config.fetch_wait)?;
    let mut ends = HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for &partition in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
        if high > low {
            ends.insert(partition, high);
            assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
        }
    }
    if ends.is_empty() {
        return Ok(());
    }
    consumer.assign(&assignment)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    let mut chunk = Vec::with_capacity(CHUNK);
    while !ends.is_empty() {
        if std::time::Instant::now() > deadline {
            return Err(KafkaError::Canceled);
        }
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        match message {
            Err(KafkaError::PartitionEOF(partition)) => {
                ends.remove(&partition);
            }
            message => {
                let message = message?;
                let partition = message.partition();
                if let Some(key) = message.key() {
                    chunk.push(Entry {
                        partition,
                        key: String::from_utf8_lossy(key).into_owned(),
                        value: message.payload().map(<[u8]>::to_vec),
                    });
                }
                if ends
                    .get(&partition)
                    .is_some_and(|high| message.offset() + 1 >= *high)
                {
                    ends.remove(&partition);
                }
            }
        }
        if chunk.len() >= CHUNK || ends.is_empty() {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
            if sender.blocking_send(Ok(full)).is_err() {
                return Ok(()); // the caller stopped reading
            }
        }
    }
    Ok(())
}

fn follow_blocking(
    config: &KafkaConfig,
    topic: &str,
    sender: &tokio::sync::mpsc::Sender<Result<Followed, KafkaError>>,
) -> Result<(), KafkaError> {
    let wait = if config.idle_pause.is_zero() {
        config.fetch_wait
    } else {
        config.idle_poll.min(FOLLOW_WAIT).max(config.fetch_wait)
    };
    let consumer = reader(config, topic, wait)?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(30))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if sender
        .blocking_send(Ok(Followed::Partitions(partitions.clone())))
        .is_err()
    {
        return Ok(());
    }
    let mut ends = HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for &partition in &partitions {
        let (low, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(30))?;
        if high > low {
            ends.insert(partition, high);
        } else if sender
            .blocking_send(Ok(Followed::CaughtUp(partition)))
            .is_err()
        {
            return Ok(());
        }
        assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let mut chunk = Vec::with_capacity(CHUNK);
    let mut caught_up = Vec::new();
    while !sender.is_closed() {
        let message = consumer.poll(Duration::from_millis(200));
        match message {
            Some(Err(KafkaError::PartitionEOF(partition))) if ends.remove(&partition).is_some() => {
                caught_up.push(partition);
            }
            None | Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(err)) => {
                tracing::warn!(error = %err, topic, "following the changelog");
                std::thread::sleep(Duration::from_millis(500));
            }
            Some(Ok(message)) => {
                let partition = message.partition();
                if let Some(key) = message.key() {
                    chunk.push(Entry {
                        partition,
                        key: String::from_utf8_lossy(key).into_owned(),
                        value: message.payload().map(<[u8]>::to_vec),
                    });
                }
                if ends
                    .get(&partition)
                    .is_some_and(|high| message.offset() + 1 >= *high)
                {
                    ends.remove(&partition);
                    caught_up.push(partition);
                }
                if chunk.len() < CHUNK && caught_up.is_empty() {
                    continue;
                }
            }
        }
        if !chunk.is_empty() {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
            if sender.blocking_send(Ok(Followed::Entries(full))).is_err() {
                return Ok(());
            }
        }
        for partition in caught_up.drain(..) {
            if sender
                .blocking_send(Ok(Followed::CaughtUp(partition)))
                .is_err()
            {
                return Ok(());
            }
        }
    }
    Ok(())
}

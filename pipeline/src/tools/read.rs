//! Reading a topic between two points, partition by partition, without a consumer group.

use std::collections::HashMap;
use std::time::Duration;

use erpstream_connectors::kafka::KafkaConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};

use super::{Doing, ToolError};

/// Broker calls made while planning a read.
const METADATA_TIMEOUT: Duration = Duration::from_secs(15);
/// A bounded read that receives nothing for this long has stalled.
const STALL: Duration = Duration::from_secs(60);
/// A time window's read of a partition ends at the first record this much after the
/// window's end; records between are skipped. Producers' clocks and latencies differ, so
/// a partition's timestamps may step back a little.
const LATE: i64 = 60_000;

/// Where reading starts in every partition.
#[derive(Debug, Clone)]
pub enum From {
    /// The oldest record kept.
    Beginning,
    /// After the newest record (only what arrives from now on).
    End,
    /// The first record whose timestamp is at or after this time (epoch ms).
    Time(i64),
    /// This offset in every partition (clamped to what the partition holds).
    Offset(i64),
    /// These offsets; partitions not listed are not read.
    Offsets(HashMap<i32, i64>),
}

/// Where reading stops.
#[derive(Debug, Clone, Copy)]
pub enum Until {
    /// Records stamped before this time (epoch ms); see [`TopicReader`].
    Time(i64),
    /// At the end of what the partitions held when reading began.
    End,
    /// Never: keep reading what arrives.
    Follow,
}

/// The record at `offset` of `topic`'s `partition`, or a usage error naming `what` when
/// the partition holds no record there (compacted away, expired, or not written yet).
pub async fn record_at(
    kafka: &KafkaConfig,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<OwnedMessage, ToolError> {
    let mut reader = TopicReader::open(
        kafka,
        topic,
        From::Offsets(HashMap::from([(partition, offset)])),
        Until::End,
    )
    .await?;
    let mut skipped = 0;
    reader
        .next(&mut skipped)
        .await?
        .filter(|m| m.partition() == partition && m.offset() == offset)
        .ok_or_else(|| {
            ToolError::usage(format!(
                "{topic}/{partition}/{offset}: no such record (compacted away, expired or not written)"
            ))
        })
}

/// One partition's part of the read: offsets `start..end`.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: i64,
    /// Exclusive; `None` when following.
    end: Option<i64>,
}

/// A topic read from [`From`] to [`Until`] by a consumer of its own.
///
/// A time window `[from, to)` is read from the broker's time index for `from` (the first
/// offset stamped at or after it) and, per partition, until the end as of the start or the
/// first record stamped a minute or more after `to`, whichever comes first; records in
/// between stamped outside the window are skipped. The index is only a starting point: a
/// broker that answers too early an offset (tansu 0.6.0 answers the first offset for any
/// time) costs reading time, never records.
pub struct TopicReader {
    consumer: StreamConsumer<EofIsNews>,
    topic: String,
    spans: HashMap<i32, Span>,
    window: (Option<i64>, Option<i64>),
    follow: bool,
}

impl TopicReader {
    /// Plans the read (partitions, watermarks, offsets for times) and assigns the partitions.
    pub async fn open(
        kafka: &KafkaConfig,
        topic: &str,
        from: From,
        until: Until,
    ) -> Result<Self, ToolError> {
        let consumer: StreamConsumer<EofIsNews> = kafka
            .client_config("erpstream-tools")
            .doing(|| "could not configure a Kafka consumer".into())?
            .set(
                "group.id",
                format!("erpstream-tools-{}", uuid::Uuid::new_v4()),
            )
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set(
                "fetch.wait.max.ms",
                kafka.fetch_wait.as_millis().max(1).to_string(),
            )
            .create_with_context(EofIsNews)
            .doing(|| "could not create a Kafka consumer".into())?;
        let topic = topic.to_string();
        let window_from = match from {
            From::Time(t) => Some(t),
            _ => None,
        };
        let (consumer, spans) = tokio::task::spawn_blocking(move || {
            let spans = plan(&consumer, &topic, from, until);
            (consumer, spans.map(|s| (topic, s)))
        })
        .await
        .map_err(|e| ToolError::usage(format!("planning the read failed: {e}")))?;
        let (topic, spans) = spans?;
        let mut assignment = TopicPartitionList::new();
        for (partition, span) in &spans {
            assignment
                .add_partition_offset(&topic, *partition, Offset::Offset(span.start))
                .doing(|| format!("assigning {topic}/{partition}"))?;
        }
        consumer
            .assign(&assignment)
            .doing(|| format!("assigning the partitions of {topic}"))?;
        Ok(Self {
            consumer,
            topic,
            window: (
                window_from,
                match until {
                    Until::Time(t) => Some(t),
                    _ => None,
                },
            ),
            follow: matches!(until, Until::Follow),
            spans,
        })
    }

    /// Offsets to read in all (an upper bound on the records: compaction leaves gaps);
    /// `None` when following.
    pub fn total(&self) -> Option<u64> {
        self.spans
            .values()
            .map(|s| s.end.map(|end| (end - s.start).max(0) as u64))
            .sum()
    }

    /// The partitions being read and their `start..end` offsets.
    pub fn spans(&self) -> Vec<(i32, i64, Option<i64>)> {
        let mut spans: Vec<_> = self
            .spans
            .iter()
            .map(|(p, s)| (*p, s.start, s.end))
            .collect();
        spans.sort_unstable();
        spans
    }

    /// The next record in the window, `None` once every partition reached its end. Records
    /// outside the time window are skipped; `skipped` counts them.
    pub async fn next(&mut self, skipped: &mut u64) -> Result<Option<OwnedMessage>, ToolError> {
        loop {
            if !self.follow && self.spans.is_empty() {
                return Ok(None);
            }
            let received = if self.follow {
                self.consumer.recv().await
            } else {
                match tokio::time::timeout(STALL, self.consumer.recv()).await {
                    Ok(received) => received,
                    Err(_) => {
                        return Err(ToolError::data(
                            &self.topic,
                            format!(
                                "no record for {} s while partitions {:?} still had offsets to \
                                 read; is the broker reachable?",
                                STALL.as_secs(),
                                self.spans()
                            ),
                        ));
                    }
                }
            };
            let message = match received {
                Ok(message) => message.detach(),
                Err(KafkaError::PartitionEOF(partition)) => {
                    if !self.follow {
                        self.spans.remove(&partition);
                    }
                    continue;
                }
                Err(err) => return Err(err).doing(|| format!("reading {}", self.topic)),
            };
            let partition = message.partition();
            let Some(span) = self.spans.get(&partition).copied() else {
                continue;
            };
            if let Some(end) = span.end {
                if message.offset() >= end {
                    self.spans.remove(&partition);
                    continue;
                }
                if message.offset() + 1 >= end {
                    self.spans.remove(&partition);
                }
            }
            let at = message.timestamp().to_millis().unwrap_or(0);
            let (from, to) = self.window;
            if to.is_some_and(|t| at >= t + LATE) {
                self.spans.remove(&partition);
                *skipped += 1;
                continue;
            }
            if from.is_some_and(|f| at < f) || to.is_some_and(|t| at >= t) {
                *skipped += 1;
                continue;
            }
            return Ok(Some(message));
        }
    }
}

/// A client context that does not log the end of a partition as an error: a bounded read
/// waits for exactly that.
struct EofIsNews;

impl rdkafka::ClientContext for EofIsNews {
    fn error(&self, error: KafkaError, reason: &str) {
        let eof = matches!(
            error,
            KafkaError::PartitionEOF(_)
                | KafkaError::Global(rdkafka::types::RDKafkaErrorCode::PartitionEOF)
        );
        if !eof {
            tracing::error!(error = %error, reason, "librdkafka error");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for EofIsNews {}

/// Every partition's span; partitions with nothing to read are left out.
fn plan(
    consumer: &StreamConsumer<EofIsNews>,
    topic: &str,
    from: From,
    until: Until,
) -> Result<HashMap<i32, Span>, ToolError> {
    let metadata = consumer
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .doing(|| format!("could not read the metadata of {topic}"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(ToolError::NoSuchTopic(topic.to_string()));
    }
    let mut watermarks = HashMap::new();
    for &partition in &partitions {
        let marks = consumer
            .fetch_watermarks(topic, partition, METADATA_TIMEOUT)
            .doing(|| format!("could not read the offsets of {topic}/{partition}"))?;
        watermarks.insert(partition, marks);
    }
    let at_time = |time: i64| -> Result<HashMap<i32, i64>, ToolError> {
        let mut query = TopicPartitionList::new();
        for &partition in &partitions {
            query
                .add_partition_offset(topic, partition, Offset::Offset(time))
                .doing(|| format!("looking up offsets by time in {topic}"))?;
        }
        let found = consumer
            .offsets_for_times(query, METADATA_TIMEOUT)
            .doing(|| format!("could not look up offsets by time in {topic}"))?;
        Ok(found
            .elements()
            .iter()
            .map(|e| {
                let high = watermarks[&e.partition()].1;
                let offset = match e.offset() {
                    Offset::Offset(o) => o.min(high),
                    _ => high,
                };
                (e.partition(), offset)
            })
            .collect())
    };
    let starts: HashMap<i32, i64> = match from {
        From::Beginning => watermarks.iter().map(|(p, (low, _))| (*p, *low)).collect(),
        From::End => watermarks
            .iter()
            .map(|(p, (_, high))| (*p, *high))
            .collect(),
        From::Offset(offset) => watermarks
            .iter()
            .map(|(p, (low, high))| (*p, offset.clamp(*low, *high)))
            .collect(),
        From::Time(time) => at_time(time)?,
        From::Offsets(offsets) => watermarks
            .iter()
            .map(|(p, (low, high))| {
                let start = offsets.get(p).map_or(*high, |o| (*o).clamp(*low, *high));
                (*p, start)
            })
            .collect(),
    };
    let ends: HashMap<i32, Option<i64>> = match until {
        Until::Follow => partitions.iter().map(|p| (*p, None)).collect(),
        Until::End | Until::Time(_) => watermarks
            .iter()
            .map(|(p, (_, high))| (*p, Some(*high)))
            .collect(),
    };
    Ok(partitions
        .into_iter()
        .map(|p| {
            (
                p,
                Span {
                    start: starts[&p],
                    end: ends[&p],
                },
            )
        })
        .filter(|(_, span)| span.end.is_none_or(|end| end > span.start))
        .collect())
}

/// The newest offset of each of `keys` in `topic` at or after `after[partition]`, read up to
/// the end: which records a newer one with the same key supersedes.
pub async fn newest_offsets(
    kafka: &KafkaConfig,
    topic: &str,
    after: HashMap<i32, i64>,
    keys: &std::collections::HashSet<Vec<u8>>,
) -> Result<HashMap<(i32, Vec<u8>), i64>, ToolError> {
    let mut newest = HashMap::new();
    if after.is_empty() || keys.is_empty() {
        return Ok(newest);
    }
    let mut reader = TopicReader::open(kafka, topic, From::Offsets(after), Until::End).await?;
    let mut skipped = 0;
    while let Some(message) = reader.next(&mut skipped).await? {
        let key = message.key().map(<[u8]>::to_vec).unwrap_or_default();
        if keys.contains(&key) {
            newest.insert((message.partition(), key), message.offset());
        }
    }
    Ok(newest)
}

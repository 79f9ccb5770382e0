//! The data team's and operator's tools: `tail`, `replay`, `reconcile` and `dlq`.
//!
//! Contract: every tool works against a running pipeline without disturbing it. Topics are
//! read by consumers that are assigned partitions directly (no consumer group, nothing
//! committed), so no component loses a partition or an offset. The only writes are the
//! explicit ones: `replay --live`, `reconcile --repair` and `dlq redrive` publish records
//! marked with an `erpstream.*` header naming the operation, and those records go through
//! the same dedupe and version guards as any other.
//!
//! Human output (progress, summaries) goes to stderr; stdout carries only data (JSON
//! lines), so every tool can be piped.

pub mod dlq;
mod error;
mod read;
pub mod reconcile;
pub mod replay;
mod report;
pub mod tail;
mod time;

pub use error::{Doing, ToolError};
pub use read::{From, TopicReader, Until, newest_offsets, record_at};
pub use report::{Progress, Records, json_record};
pub use time::{parse_time, rfc3339};

use erpstream_connectors::kafka::{KafkaConfig, RawRecord};
use erpstream_schemas::Codec;
use rdkafka::message::{Message, OwnedMessage};

use std::time::Duration;

use crate::topology::Topology;

/// What every tool needs from the topology: the broker, the registry and the names.
pub struct Tools {
    /// The validated topology.
    pub topology: Topology,
    /// Its Kafka section.
    pub kafka: KafkaConfig,
    /// A codec on its registry.
    pub codec: Codec,
}

impl Tools {
    /// Loads `topology` (validated as `erpstream run` would) and checks that the brokers
    /// accept this client (credentials, certificates) as the pipeline does at start-up.
    pub async fn load(path: &std::path::Path) -> Result<Self, ToolError> {
        let topology = Topology::load(path).map_err(|source| ToolError::Topology {
            path: path.display().to_string(),
            source,
        })?;
        topology.kafka.probe(Duration::from_secs(10)).await?;
        let codec = topology.registry.codec()?;
        Ok(Self {
            kafka: topology.kafka.clone(),
            codec,
            topology,
        })
    }

    /// The broker-side name of a topic given by the user: logical names get the topology's
    /// `topic_prefix`, names that already carry it are kept.
    pub fn topic(&self, name: &str) -> String {
        let prefix = &self.kafka.topic_prefix;
        if prefix.is_empty() || name.starts_with(prefix.as_str()) {
            name.to_string()
        } else {
            self.kafka.topic(name)
        }
    }

    /// The logical name of a broker-side topic (the prefix removed).
    pub fn logical<'a>(&self, topic: &'a str) -> &'a str {
        topic
            .strip_prefix(self.kafka.topic_prefix.as_str())
            .unwrap_or(topic)
    }

    /// Whether the topology declares the (logical) topic compacted: only the newest record
    /// per key counts there, so an older record must never be written after a newer one.
    pub fn compacted(&self, logical: &str) -> bool {
        self.topology
            .topics
            .get(logical)
            .is_some_and(|t| t.compacted)
    }
}

/// `message` again for `topic`, in `partition`: its key, value and headers, without the
/// `erpstream.*` ones of an earlier failure or operation, plus `marks` (the headers that name
/// this operation). Replays and redrives publish these.
pub fn resend(
    message: &OwnedMessage,
    topic: &str,
    partition: i32,
    marks: Vec<(String, Vec<u8>)>,
) -> RawRecord {
    let mut headers = erpstream_connectors::kafka::headers::foreign_headers_of(message);
    headers.extend(marks);
    RawRecord {
        topic: topic.to_string(),
        key: message.key().map(<[u8]>::to_vec),
        payload: message.payload().map(<[u8]>::to_vec),
        headers,
        partition: Some(partition),
    }
}

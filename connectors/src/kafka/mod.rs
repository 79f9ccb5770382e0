//! The Kafka transport every component shares: one configuration, an acknowledged
//! producer, group consumers with manual offset storage, changelog-backed state and topic
//! creation.
//!
//! Contract: a [`Publisher`] send completes only when the broker has acknowledged the record
//! (`acks=all`, idempotent producer unless `kafka.idempotence` is off); consumers never store an offset on their own
//! (`enable.auto.offset.store=false`): a component stores the offset of a record only once
//! the record's effects are durable, and the client commits stored offsets periodically and
//! at shutdown. After a crash, records after the last commit are seen again, so every
//! consumer tolerates repeats.

mod admin;
mod changelog;
mod config;
mod consumer;
mod dead_letter;
mod producer;

pub use admin::{TopicSpec, ensure_topics};
pub use changelog::Changelog;
pub use config::KafkaConfig;
pub use consumer::{GroupConsumer, TrackingContext, commit_stored, group_consumer};
pub use dead_letter::{ERROR_TYPE_HEADER, Failure, dead_letter, headers_of};
pub use producer::{Ack, PendingAck, PublishError, Publisher, RawRecord};

/// Kafka header carrying the W3C trace context.
pub const TRACEPARENT_HEADER: &str = erpstream_schemas::trace::HEADER;

/// Reads a header's value from a consumed message.
pub fn header<'a, M: rdkafka::message::Message>(message: &'a M, name: &str) -> Option<&'a [u8]> {
    use rdkafka::message::Headers;
    message
        .headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
}

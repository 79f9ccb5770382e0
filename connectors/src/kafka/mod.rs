//! The Kafka transport every component shares: one configuration, an acknowledged
//! producer, group consumers with manual offset storage, changelog-backed state and topic
//! creation — and the consumer kit every consuming component is built from: offsets stored
//! only behind durable effects ([`OffsetTracker`]), waiting out outages instead of skipping
//! records ([`retrying`], [`decode`]), dead letters with one set of headers
//! ([`DeadLetter`], [`headers`]).
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
pub mod headers;
mod idle;
mod offsets;
mod producer;
mod retrying;
mod security;
mod transactions;

pub use admin::{TopicSpec, ensure_topics};
pub use changelog::{Changelog, Entry, Followed};
pub use config::KafkaConfig;
pub use consumer::{
    GroupConsumer, TrackingContext, commit_stored, group_consumer, list_offsets, next_batch,
    positions, subscribe,
};
pub use dead_letter::{DeadLetter, ERROR_TYPE_HEADER, Failure};
pub use headers::{header, header_text, headers_of, trace_of};
pub use idle::IdlePause;
pub use offsets::OffsetTracker;
pub use producer::{Ack, AckObserver, PendingAck, PublishError, Publisher, RawRecord};
pub use retrying::{Backoff, Retriable, never, retrying, shutdown_requested, sleep_or_shutdown};
pub use security::{ConnectError, KafkaSecurity, Mechanism, Protocol, Sasl};
pub use transactions::{TransactionError, Transactions};

/// Kafka header carrying the W3C trace context.
pub const TRACEPARENT_HEADER: &str = headers::TRACEPARENT;

/// Decodes a consumed record's value as `E`, waiting out a registry outage (a writer
/// schema this process has not cached yet cannot be fetched). `None` if shutdown came
/// first; `Some(Err)` if the bytes can never be decoded as `E` (dead-letter the record).
pub async fn decode<E: erpstream_schemas::Event>(
    codec: &erpstream_schemas::Codec,
    payload: &[u8],
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> Option<Result<E, erpstream_schemas::CodecError>> {
    retrying(
        "decoding a record through the schema registry",
        shutdown,
        || codec.decode::<E>(payload),
    )
    .await
}

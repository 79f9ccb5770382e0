//! The headers erpstream reads and writes on Kafka records: their names (the only place
//! an `erpstream.*` literal is written), reading them off a consumed record, and the trace
//! context every record carries.

use erpstream_schemas::Traceparent;
use rdkafka::message::{Headers, Message};

/// Kafka header carrying the W3C trace context.
pub const TRACEPARENT: &str = erpstream_schemas::trace::HEADER;

/// Prefix of every header erpstream itself sets.
pub const PREFIX: &str = "erpstream.";
/// Dead letters: why the record failed, in words.
pub const ERROR: &str = "erpstream.error";
/// Dead letters: the [`Failure`](super::Failure) class (`dlq --error-type` filters on it).
pub const ERROR_TYPE: &str = "erpstream.error_type";
/// Dead letters: the id of the component that gave up on the record.
pub const SOURCE: &str = "erpstream.source";
/// Dead letters: attempts made before giving up.
pub const ATTEMPTS: &str = "erpstream.attempts";
/// Dead letters: epoch ms of the failure.
pub const FAILED_AT: &str = "erpstream.failed_at";
/// Dead letters of consumed records: the topic the record was read from.
pub const ORIGINAL_TOPIC: &str = "erpstream.original.topic";
/// Dead letters of consumed records: its partition.
pub const ORIGINAL_PARTITION: &str = "erpstream.original.partition";
/// Dead letters of consumed records: its offset.
pub const ORIGINAL_OFFSET: &str = "erpstream.original.offset";
/// Dead letters of source rows: the prefix of the row's origin (`table`, `lsn`, `resource`).
pub const ORIGINAL_PREFIX: &str = "erpstream.original.";
/// Records re-published by `erpstream replay --live`.
pub const REPLAY: &str = "erpstream.replay";
/// Records re-published by `erpstream replay --live`: the original record's position.
pub const REPLAY_OF: &str = "erpstream.replay.of";
/// Records re-published by `erpstream dlq redrive`: the dead letter's id.
pub const REDRIVE_OF: &str = "erpstream.redrive.of";
/// Corrections published by `erpstream reconcile --repair`.
pub const REPAIR: &str = "erpstream.repair";

/// A header's value on a consumed record.
pub fn header<'a, M: Message>(message: &'a M, name: &str) -> Option<&'a [u8]> {
    message
        .headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
}

/// A header's value as text (lossy UTF-8).
pub fn header_text<M: Message>(message: &M, name: &str) -> Option<String> {
    header(message, name).map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Every header of a consumed record, in order.
pub fn headers_of<M: Message>(message: &M) -> Vec<(String, Vec<u8>)> {
    message
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                .collect()
        })
        .unwrap_or_default()
}

/// The headers of `message` without erpstream's own (those of an earlier failure, replay or
/// redrive), for a record that is sent again.
pub fn foreign_headers_of<M: Message>(message: &M) -> Vec<(String, Vec<u8>)> {
    let mut headers = headers_of(message);
    headers.retain(|(k, _)| !k.starts_with(PREFIX));
    headers
}

/// The trace context a consumed record carries, if it carries a valid one.
pub fn trace_of<M: Message>(message: &M) -> Option<Traceparent> {
    header(message, TRACEPARENT)
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(Traceparent::parse)
}

/// The header pair that carries `trace`.
pub fn trace_header(trace: &Traceparent) -> (String, Vec<u8>) {
    (TRACEPARENT.to_string(), trace.to_string().into_bytes())
}

#[cfg(test)]
mod tests {
    use rdkafka::message::{Header, OwnedHeaders, OwnedMessage, Timestamp};

    use super::*;

    fn message(headers: &[(&str, &str)]) -> OwnedMessage {
        let mut owned = OwnedHeaders::new();
        for (key, value) in headers {
            owned = owned.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        OwnedMessage::new(
            Some(b"v".to_vec()),
            Some(b"k".to_vec()),
            "t".into(),
            Timestamp::NotAvailable,
            0,
            7,
            Some(owned),
        )
    }

    #[test]
    fn the_trace_is_read_only_when_valid() {
        let trace = Traceparent::new_root();
        let good = message(&[(TRACEPARENT, &trace.to_string())]);
        assert_eq!(trace_of(&good), Some(trace));
        assert_eq!(trace_of(&message(&[(TRACEPARENT, "00-zz-zz-01")])), None);
        assert_eq!(trace_of(&message(&[])), None);
    }

    #[test]
    fn resent_records_lose_only_erpstreams_own_headers() {
        let message = message(&[
            (TRACEPARENT, "x"),
            (ERROR, "boom"),
            (REDRIVE_OF, "a/0/1"),
            ("tenant", "t1"),
        ]);
        let kept: Vec<String> = foreign_headers_of(&message)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(kept, ["traceparent", "tenant"]);
        assert_eq!(header_text(&message, ERROR).as_deref(), Some("boom"));
    }
}

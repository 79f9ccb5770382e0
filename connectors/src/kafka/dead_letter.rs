use rdkafka::message::{Headers, Message, OwnedMessage};

use super::RawRecord;

/// Every header of a consumed record, in order.
pub fn headers_of(message: &OwnedMessage) -> Vec<(String, Vec<u8>)> {
    message
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                .collect()
        })
        .unwrap_or_default()
}

/// Why a record was dead-lettered: the `erpstream.error_type` header, which
/// `erpstream dlq list|redrive --error-type` filter on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The value could not be decoded; redriving it cannot help until the data is fixed.
    Undecodable,
    /// The receiver refused it (a 4xx other than 408/429).
    Rejected,
    /// Every attempt of the retry schedule failed (outage, timeouts, 5xx).
    RetriesExhausted,
    /// The sink refused its content (e.g. an unknown sku), perhaps only for now.
    Refused,
    /// A source row that does not fit its mapping or contract.
    Mapping,
}

impl Failure {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Undecodable => "undecodable",
            Failure::Rejected => "rejected",
            Failure::RetriesExhausted => "retries_exhausted",
            Failure::Refused => "refused",
            Failure::Mapping => "mapping",
        }
    }
}

/// Header naming the [`Failure`].
pub const ERROR_TYPE_HEADER: &str = "erpstream.error_type";

/// The dead-letter copy of `message` for `dlq_topic`: its key, value and headers unchanged,
/// plus `erpstream.error`, `erpstream.error_type` ([`Failure`]), `erpstream.source` (the
/// component), `erpstream.attempts`,
/// `erpstream.original.{topic,partition,offset}` and `erpstream.failed_at` (epoch ms).
/// Headers of an earlier dead-lettering are replaced, so a redriven record that fails again
/// carries only its latest failure.
pub fn dead_letter(
    message: &OwnedMessage,
    dlq_topic: &str,
    failure: Failure,
    error: &str,
    source: &str,
    attempts: u32,
) -> RawRecord {
    let mut headers = headers_of(message);
    headers.retain(|(k, _)| !k.starts_with("erpstream."));
    headers.extend([
        ("erpstream.error".to_string(), error.as_bytes().to_vec()),
        (
            ERROR_TYPE_HEADER.to_string(),
            failure.as_str().as_bytes().to_vec(),
        ),
        ("erpstream.source".to_string(), source.as_bytes().to_vec()),
        (
            "erpstream.attempts".to_string(),
            attempts.to_string().into_bytes(),
        ),
        (
            "erpstream.original.topic".to_string(),
            message.topic().as_bytes().to_vec(),
        ),
        (
            "erpstream.original.partition".to_string(),
            message.partition().to_string().into_bytes(),
        ),
        (
            "erpstream.original.offset".to_string(),
            message.offset().to_string().into_bytes(),
        ),
        (
            "erpstream.failed_at".to_string(),
            erpstream_schemas::now_millis().to_string().into_bytes(),
        ),
    ]);
    RawRecord {
        topic: dlq_topic.to_string(),
        key: message.key().map(<[u8]>::to_vec),
        payload: message.payload().map(<[u8]>::to_vec),
        headers,
        partition: None,
    }
}

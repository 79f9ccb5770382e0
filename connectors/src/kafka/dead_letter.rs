//! Dead letters: records (or source rows) a component gave up on, on `<topic>.dlq`, with
//! headers that say why, so `erpstream dlq` can list, filter and redrive them.
//!
//! Only what needs a person is dead-lettered: an outage (the registry, the broker, a
//! database) is waited out and retried, never dead-lettered.

use erpstream_schemas::Traceparent;
use rdkafka::message::{Message, OwnedMessage};

use super::RawRecord;
use super::headers::{self, foreign_headers_of};

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
    /// The sink refused its content (e.g. a period that is no month, or a sku whose product
    /// never arrived within the wait).
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
pub const ERROR_TYPE_HEADER: &str = headers::ERROR_TYPE;

/// Why and by whom a record was given up on; builds the dead-letter record.
#[derive(Debug, Clone, Copy)]
pub struct DeadLetter<'a> {
    failure: Failure,
    error: &'a str,
    component: &'a str,
    attempts: u32,
}

impl<'a> DeadLetter<'a> {
    /// Component `component` gave up on a record after one attempt, because of `error`.
    pub fn new(failure: Failure, error: &'a str, component: &'a str) -> Self {
        Self {
            failure,
            error,
            component,
            attempts: 1,
        }
    }

    /// After `attempts` attempts.
    pub fn attempts(self, attempts: u32) -> Self {
        Self { attempts, ..self }
    }

    /// The dead-letter copy of a consumed record for `dlq_topic`: its key, value and headers
    /// unchanged, plus [`ERROR`](headers::ERROR), [`ERROR_TYPE`](headers::ERROR_TYPE),
    /// [`SOURCE`](headers::SOURCE), [`ATTEMPTS`](headers::ATTEMPTS),
    /// `erpstream.original.{topic,partition,offset}` and [`FAILED_AT`](headers::FAILED_AT).
    /// Headers of an earlier dead-lettering are replaced, so a redriven record that fails
    /// again carries only its latest failure.
    pub fn of_record(&self, message: &OwnedMessage, dlq_topic: &str) -> RawRecord {
        let mut headers = foreign_headers_of(message);
        headers.extend(self.headers());
        headers.extend([
            (
                headers::ORIGINAL_TOPIC.to_string(),
                message.topic().as_bytes().to_vec(),
            ),
            (
                headers::ORIGINAL_PARTITION.to_string(),
                message.partition().to_string().into_bytes(),
            ),
            (
                headers::ORIGINAL_OFFSET.to_string(),
                message.offset().to_string().into_bytes(),
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

    /// The dead letter of a source row that never became an event: the row as JSON, keyed
    /// by its identity, with `erpstream.original.<name>` headers naming where it came from
    /// (a table and LSN, a polled resource). It has no original topic, so it is listed but
    /// never redriven: the source data must be fixed.
    pub fn of_row(
        &self,
        dlq_topic: &str,
        key: &str,
        row_json: Vec<u8>,
        origin: &[(&str, &str)],
        trace: &Traceparent,
    ) -> RawRecord {
        let mut headers = self.headers();
        headers.extend(origin.iter().map(|(name, value)| {
            (
                format!("{}{name}", headers::ORIGINAL_PREFIX),
                value.as_bytes().to_vec(),
            )
        }));
        headers.push(headers::trace_header(trace));
        RawRecord {
            topic: dlq_topic.to_string(),
            key: Some(key.as_bytes().to_vec()),
            payload: Some(row_json),
            headers,
            partition: None,
        }
    }

    fn headers(&self) -> Vec<(String, Vec<u8>)> {
        vec![
            (headers::ERROR.to_string(), self.error.as_bytes().to_vec()),
            (
                headers::ERROR_TYPE.to_string(),
                self.failure.as_str().as_bytes().to_vec(),
            ),
            (
                headers::SOURCE.to_string(),
                self.component.as_bytes().to_vec(),
            ),
            (
                headers::ATTEMPTS.to_string(),
                self.attempts.to_string().into_bytes(),
            ),
            (
                headers::FAILED_AT.to_string(),
                erpstream_schemas::now_millis().to_string().into_bytes(),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::message::{Header, OwnedHeaders, Timestamp};

    use super::*;

    fn text<'a>(record: &'a RawRecord, name: &str) -> Option<&'a str> {
        record
            .headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    #[test]
    fn a_dead_lettered_record_names_its_failure_and_origin_and_only_its_latest() {
        let earlier = OwnedHeaders::new()
            .insert(Header {
                key: headers::ERROR,
                value: Some("an earlier failure".as_bytes()),
            })
            .insert(Header {
                key: "tenant",
                value: Some("t1".as_bytes()),
            });
        let message = OwnedMessage::new(
            Some(b"value".to_vec()),
            Some(b"SKU-1".to_vec()),
            "inventory.available".into(),
            Timestamp::NotAvailable,
            2,
            41,
            Some(earlier),
        );
        let record = DeadLetter::new(Failure::RetriesExhausted, "503 from storefront", "sf")
            .attempts(3)
            .of_record(&message, "inventory.available.dlq");
        assert_eq!(record.topic, "inventory.available.dlq");
        assert_eq!(record.key.as_deref(), Some(&b"SKU-1"[..]));
        assert_eq!(record.payload.as_deref(), Some(&b"value"[..]));
        assert_eq!(text(&record, headers::ERROR), Some("503 from storefront"));
        assert_eq!(
            text(&record, headers::ERROR_TYPE),
            Some("retries_exhausted")
        );
        assert_eq!(text(&record, headers::ATTEMPTS), Some("3"));
        assert_eq!(text(&record, headers::SOURCE), Some("sf"));
        assert_eq!(
            text(&record, headers::ORIGINAL_TOPIC),
            Some("inventory.available")
        );
        assert_eq!(text(&record, headers::ORIGINAL_PARTITION), Some("2"));
        assert_eq!(text(&record, headers::ORIGINAL_OFFSET), Some("41"));
        assert_eq!(text(&record, "tenant"), Some("t1"));
        let errors = record.headers.iter().filter(|(k, _)| k == headers::ERROR);
        assert_eq!(errors.count(), 1);
    }

    #[test]
    fn a_dead_lettered_row_has_no_original_topic() {
        let record = DeadLetter::new(Failure::Mapping, "sku: is required", "erp_db").of_row(
            "inventory.change.dlq",
            "public.bin:X/WH",
            b"{}".to_vec(),
            &[("table", "public.bin"), ("lsn", "0/16B")],
            &Traceparent::new_root(),
        );
        assert_eq!(text(&record, headers::ERROR_TYPE), Some("mapping"));
        assert_eq!(
            text(&record, "erpstream.original.table"),
            Some("public.bin")
        );
        assert_eq!(text(&record, "erpstream.original.lsn"), Some("0/16B"));
        assert_eq!(text(&record, headers::ORIGINAL_TOPIC), None);
    }
}

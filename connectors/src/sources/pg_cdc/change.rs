//! One captured row change → the record it becomes: the mapped event, a tombstone, or a
//! dead letter naming the field that does not fit.

use super::*;

impl PgCdcSource {
    pub(super) fn envelope<'a>(&'a self, key: &'a str, occurred_at: i64) -> Envelope<'a> {
        Envelope {
            idempotency_key: key,
            source: &self.id,
            source_system: &self.config.source_system,
            occurred_at,
            ingested_at: now_millis(),
        }
    }

    /// Queues the record (or dead-letter record) for one change; `None` if nothing is sent.
    pub(super) async fn publish(
        &self,
        table: &Table,
        change: Change,
        identity: &str,
        position: &str,
    ) -> Result<Option<PendingAck>, CdcError> {
        metrics::counter!(m::RECEIVED_EVENTS, m::COMPONENT_ID => self.id.clone(),
            m::COMPONENT_TYPE => TYPE)
        .increment(1);
        let trace = Traceparent::new_root();
        let record = match change {
            Change::Event(event) => RawRecord {
                topic: table.topic.clone(),
                key: Some(event.key().as_bytes().to_vec()),
                payload: Some(
                    event
                        .encode(self.publisher.codec(), &table.topic)
                        .await
                        .map_err(PublishError::from)?,
                ),
                headers: vec![crate::kafka::headers::trace_header(&trace)],
                partition: None,
            },
            Change::Tombstone(key) => RawRecord {
                topic: table.topic.clone(),
                key: Some(key.into_bytes()),
                payload: None,
                headers: vec![crate::kafka::headers::trace_header(&trace)],
                partition: None,
            },
            Change::Skip => return Ok(None),
            Change::Refused { error, row } => {
                tracing::warn!(table = %table.name, row = identity, %error, "row does not fit its contract; dead-lettered");
                metrics::counter!(m::DEAD_LETTERED, m::COMPONENT_ID => self.id.clone(),
                    m::COMPONENT_TYPE => TYPE)
                .increment(1);
                crate::kafka::DeadLetter::new(
                    crate::kafka::Failure::Mapping,
                    &error.to_string(),
                    &self.id,
                )
                .of_row(
                    &table.dlq_topic,
                    identity,
                    row.into_bytes(),
                    &[("table", &table.name), ("lsn", position)],
                    &trace,
                )
            }
        };
        Ok(Some(self.publisher.enqueue(record).await?))
    }
}

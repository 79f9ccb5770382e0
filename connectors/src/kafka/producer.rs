use std::time::Duration;

use erpstream_schemas::{Codec, CodecError, Event, Traceparent};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use super::{KafkaConfig, TRACEPARENT_HEADER};

/// Where the broker stored an acknowledged record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Ack {
    /// Broker-side topic name.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// An already-encoded record.
#[derive(Debug, Clone, Default)]
pub struct RawRecord {
    /// Broker-side topic name.
    pub topic: String,
    /// Key bytes; records with equal keys land on the same partition.
    pub key: Option<Vec<u8>>,
    /// Value bytes; `None` is a tombstone.
    pub payload: Option<Vec<u8>>,
    /// Headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Explicit partition (changelogs mirror their input partition).
    pub partition: Option<i32>,
}

impl RawRecord {
    /// The value of header `name`, as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

/// The broker's acknowledgement of a queued record, still to come.
pub type PendingAck = futures::future::BoxFuture<'static, Result<Ack, PublishError>>;

/// Why a publish failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The event could not be encoded (or the registry is unreachable).
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The broker did not acknowledge the record in time, or refused it.
    #[error("the broker did not acknowledge the record: {0}")]
    Broker(#[source] KafkaError),
}

impl PublishError {
    /// Whether trying again later may succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            PublishError::Codec(e) => e.is_retriable(),
            PublishError::Broker(KafkaError::MessageProduction(code)) => !matches!(
                code,
                RDKafkaErrorCode::MessageSizeTooLarge
                    | RDKafkaErrorCode::InvalidRecord
                    | RDKafkaErrorCode::TopicAuthorizationFailed
            ),
            PublishError::Broker(_) => true,
        }
    }
}

/// Told of every acknowledged record, with when it was queued (the admission gate follows
/// the queues it watches this way).
pub trait AckObserver: Send + Sync {
    /// The broker stored `ack`'s record, which was queued at `queued_at`.
    fn acknowledged(&self, ack: &Ack, queued_at: std::time::Instant);
}

/// An idempotent, `acks=all` producer whose sends complete on the broker's acknowledgement.
#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer,
    codec: Codec,
    observer: Option<std::sync::Arc<dyn AckObserver>>,
}

impl Publisher {
    /// Creates the producer (no I/O until the first send).
    pub fn new(config: &KafkaConfig, client_id: &str, codec: Codec) -> Result<Self, KafkaError> {
        Self::with(config, client_id, codec, |_| {})
    }

    /// The same, with more client settings applied last (a transactional id).
    pub(super) fn with(
        config: &KafkaConfig,
        client_id: &str,
        codec: Codec,
        more: impl FnOnce(&mut rdkafka::ClientConfig),
    ) -> Result<Self, KafkaError> {
        let mut client = config.client_config(client_id)?;
        client
            .set("acks", "all")
            .set("enable.idempotence", config.idempotence.to_string());
        if !config.idempotence {
            client.set("max.in.flight.requests.per.connection", "1");
        }
        client
            .set("linger.ms", config.linger.as_millis().to_string())
            .set(
                "message.timeout.ms",
                config.delivery_timeout.as_millis().max(1).to_string(),
            )
            .set(
                "request.timeout.ms",
                config.delivery_timeout.as_millis().max(1).to_string(),
            );
        more(&mut client);
        let producer = client.create()?;
        Ok(Self {
            producer,
            codec,
            observer: None,
        })
    }

    /// The same producer, telling `observer` of every acknowledgement awaited through it.
    pub fn observed(mut self, observer: std::sync::Arc<dyn AckObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The underlying producer (for [`super::Transactions`]).
    pub(super) fn producer(&self) -> &FutureProducer {
        &self.producer
    }

    /// The codec this publisher encodes with.
    pub fn codec(&self) -> &Codec {
        &self.codec
    }

    /// Encodes `event` and sends it keyed by [`Event::key`], with a `traceparent` header.
    pub async fn publish<E: Event>(
        &self,
        topic: &str,
        event: &E,
        trace: &Traceparent,
    ) -> Result<Ack, PublishError> {
        let payload = self.codec.encode(topic, event).await?;
        self.send(RawRecord {
            topic: topic.to_string(),
            key: Some(event.key().as_bytes().to_vec()),
            payload: Some(payload),
            headers: vec![(
                TRACEPARENT_HEADER.to_string(),
                trace.to_string().into_bytes(),
            )],
            partition: None,
        })
        .await
    }

    /// Sends an encoded record and waits for the acknowledgement.
    pub async fn send(&self, record: RawRecord) -> Result<Ack, PublishError> {
        self.enqueue(record).await?.await
    }

    /// Queues an encoded record now (waiting only while the client's queue is full) and
    /// returns the wait for the broker's acknowledgement. Records queued one after another
    /// keep that order within their partition, so a caller can have many in flight.
    pub async fn enqueue(&self, record: RawRecord) -> Result<PendingAck, PublishError> {
        let queued_at = std::time::Instant::now();
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (key, value) in &record.headers {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        let mut future = FutureRecord::<[u8], [u8]>::to(&record.topic).headers(headers);
        if let Some(key) = &record.key {
            future = future.key(key);
        }
        if let Some(payload) = &record.payload {
            future = future.payload(payload);
        }
        if let Some(partition) = record.partition {
            future = future.partition(partition);
        }
        let delivery = loop {
            match self.producer.send_result(future) {
                Ok(delivery) => break delivery,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    future = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((err, _)) => return Err(PublishError::Broker(err)),
            }
        };
        let topic = record.topic;
        let observer = self.observer.clone();
        Ok(Box::pin(async move {
            match delivery.await {
                Ok(Ok(delivery)) => {
                    let ack = Ack {
                        topic,
                        partition: delivery.partition,
                        offset: delivery.offset,
                    };
                    if let Some(observer) = observer {
                        observer.acknowledged(&ack, queued_at);
                    }
                    super::idle::written(&ack.topic);
                    Ok(ack)
                }
                Ok(Err((err, _))) => Err(PublishError::Broker(err)),
                Err(_) => Err(PublishError::Broker(KafkaError::Canceled)),
            }
        }))
    }

    /// Waits until every queued record is acknowledged or `timeout` passes.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout)
    }

    /// Whether the broker answers a metadata request within `timeout` (for `/readyz`).
    pub async fn broker_reachable(&self, timeout: Duration) -> bool {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, timeout)
                .is_ok_and(|m| !m.brokers().is_empty())
        })
        .await
        .unwrap_or(false)
    }
}

//! `storefront_webhook`: delivers stock (`inventory.available`) and catalog
//! (`catalog.update`) changes to the storefront as signed webhooks in the shapes of the sales
//! interface spec §4, with `new_quantity` = available to sell.
//!
//! Contract:
//! - Per delivery key (sku + location, or catalog group) at most one request is in flight,
//!   and updates waiting behind it collapse to the newest: the storefront may skip an
//!   intermediate figure but never receives an older one after a newer one.
//! - A guard remembers, per key, the last delivered version (and, for catalog records, the
//!   idempotency keys seen within `dedupe_window`); it is written to a changelog topic after
//!   each 2xx and restored when a partition is assigned, so repeats from reprocessing are
//!   not delivered again.
//! - 408, 429, 5xx and timeouts are retried with capped exponential backoff and jitter; after
//!   `retry.max_attempts`, or at once for other 4xx, the input record goes to `<topic>.dlq`
//!   with `erpstream.error`, `erpstream.error_type` (`retries_exhausted`, `rejected`),
//!   `erpstream.source` and `erpstream.attempts` headers. `erpstream dlq redrive` publishes
//!   it to its topic again; the guard then delivers it unless a newer figure was delivered.
//! - An input offset is stored only when every delivery it produced is durable: delivered
//!   and guarded, superseded by a newer delivery that is, or dead-lettered. The one window
//!   left is a crash between a 2xx and its guard write; the repeat then carries the same
//!   `webhook-id`, so the storefront can recognise it.

mod config;
mod control;
mod service;
#[cfg(test)]
mod tests;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use erpstream_schemas::{Codec, EventKind};
use futures::future::join_all;
use rdkafka::consumer::Consumer;
use rdkafka::message::{Message, OwnedMessage};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use config::StorefrontWebhookConfig;
pub use service::DeliveryService;

use crate::retry::{Outcome, backoff};

use crate::admission::QueueWatch;
use crate::component::{Component, Context, Names, Port, Readiness, Running, Shadow};
use crate::kafka::TopicSpec;
use crate::kafka::{
    self, Changelog, DeadLetter, Failure, GroupConsumer, OffsetTracker, Publisher, TrackingContext,
};
use crate::metrics as m;
use crate::validation::{Checks, Problem};

mod payload;

/// Component type name in the topology.
pub const TYPE: &str = "storefront_webhook";
/// How long shutdown waits for deliveries in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);
/// How often an idle sink looks at its assignment (to restore guards of new partitions).
const ASSIGNMENT_CHECK: Duration = Duration::from_millis(100);

/// Why the sink could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Kafka refused a consumer operation.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The HTTP client could not be built.
    #[error("http client: {0}")]
    Http(#[from] reqwest::Error),
    /// `ca_file` cannot be used.
    #[error("ca_file: {0}")]
    CaFile(#[from] crate::tls::TlsFileError),
    /// A secret could not be read.
    #[error(transparent)]
    Secret(#[from] crate::SecretError),
    /// The broker refused a guard write or a dead letter for good.
    #[error("a record the sink depends on cannot be published: {0}")]
    Publish(#[from] crate::kafka::PublishError),
    /// An input topic carries a contract this sink cannot deliver.
    #[error("input {0} carries {1:?}, which the storefront sink cannot deliver")]
    UnsupportedInput(String, EventKind),
}

/// One input topic and where its state and failures go.
#[derive(Clone)]
struct Input {
    /// Contract of its records.
    kind: EventKind,
    /// Changelog of the delivery guard for this topic.
    changelog: Changelog,
    /// Broker-side dead-letter topic.
    dlq_topic: String,
}

/// A running `storefront_webhook` sink.
pub struct StorefrontWebhookSink {
    id: String,
    config: StorefrontWebhookConfig,
    service: Arc<DeliveryService>,
    consumer: Arc<GroupConsumer>,
    inputs: HashMap<String, Input>,
    codec: Codec,
    publisher: Publisher,
    /// Tells the admission gate which of its inputs' records are delivered (or superseded).
    queues: QueueWatch,
}

impl StorefrontWebhookSink {
    /// Builds the sink: reads the secret, creates the consumer (group `group_id`) and the
    /// HTTP client. No delivery happens until [`run`](Self::run).
    pub fn build(config: StorefrontWebhookConfig, context: &Context) -> Result<Self, SinkError> {
        let mut inputs = HashMap::new();
        for logical in &config.inputs {
            let Some(resolved) = context.resolve(logical) else {
                continue;
            };
            if !ACCEPTS.contains(&resolved.contract) {
                return Err(SinkError::UnsupportedInput(
                    resolved.topic,
                    resolved.contract,
                ));
            }
            let input = Input {
                changelog: context.changelog(Some(logical)),
                kind: resolved.contract,
                dlq_topic: resolved.dlq,
            };
            inputs.insert(resolved.topic, input);
        }
        let id = &context.id;
        let topics: Vec<String> = inputs.keys().cloned().collect();
        let secret = config.secret.resolve()?;
        let service = DeliveryService::new(
            config.url.clone(),
            config.ca_file.as_deref(),
            secret,
            config.request_timeout,
            id,
        )?;
        let tracking = TrackingContext::new(Readiness::not_yet("starting"), true);
        let consumer =
            crate::kafka::group_consumer(&context.kafka, &context.group(), id, tracking)?;
        Ok(Self {
            id: id.to_string(),
            service: Arc::new(service),
            consumer: Arc::new(consumer),
            inputs,
            codec: context.codec().clone(),
            publisher: context.publisher.clone(),
            queues: context.admission.watch(id, &topics),
            config,
        })
    }

    /// Ready while the sink holds its group's assignment and the delivery guard of every
    /// assigned partition is restored (for `/readyz`).
    pub fn readiness(&self) -> Readiness {
        self.context().readiness()
    }

    fn context(&self) -> &TrackingContext {
        self.consumer.context()
    }

    /// Consumes and delivers until `shutdown` turns true, then drains deliveries in flight
    /// (up to 15 s) and commits the offsets that are safe to commit.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), SinkError> {
        let topics: Vec<&str> = self.inputs.keys().map(String::as_str).collect();
        crate::kafka::subscribe(&self.consumer, &topics)?;
        let mut state = State::new();
        let mut assignment_check = tokio::time::interval(ASSIGNMENT_CHECK);
        assignment_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pause = crate::kafka::IdlePause::new(&self.consumer, &topics);
        loop {
            if !state.sync_assignment(&self, &mut shutdown).await {
                break;
            }
            state.dispatch(&self);
            let receiving = state.pending_count < self.config.max_pending;
            if !receiving {
                // Full, not idle: records wait in the fetch queue.
                pause.took();
            }
            let next_retry = state.next_retry();
            tokio::select! {
                biased;
                _ = kafka::shutdown_requested(&mut shutdown) => break,
                Some(done) = state.tasks.join_next() => match done {
                    Ok(done) => state.complete(&self, done)?,
                    Err(err) => tracing::error!(error = %err, "delivery task failed"),
                },
                _ = sleep_until(next_retry), if next_retry.is_some() => state.wake_retries(),
                _ = assignment_check.tick() => {}
                () = pause.change(&self.consumer), if receiving => {}
                message = self.consumer.recv(), if receiving => {
                    match message {
                        Ok(message) => {
                            pause.took();
                            let message = message.detach();
                            if !state.take(&self, message, &mut shutdown).await {
                                break;
                            }
                        }
                        Err(err) => {
                            tracing::warn!(error = %err, "consume failed");
                            metrics::counter!(m::ERRORS, m::COMPONENT_ID => self.id.clone(),
                                m::COMPONENT_TYPE => TYPE, m::ERROR_TYPE => "consume", m::STAGE => "receive").increment(1);
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            }
            state.store_offsets(&self);
        }
        tracing::info!(in_flight = state.tasks.len(), "draining deliveries");
        let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        while !state.tasks.is_empty() {
            match tokio::time::timeout_at(deadline, state.tasks.join_next()).await {
                Ok(Some(Ok(done))) => state.complete_draining(&self, done),
                Ok(Some(Err(err))) => tracing::error!(error = %err, "delivery task failed"),
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        left = state.tasks.len(),
                        "drain timed out; undelivered records will be redelivered after restart"
                    );
                    break;
                }
            }
            state.store_offsets(&self);
        }
        state.store_offsets(&self);
        kafka::commit_stored(&self.consumer);
        Ok(())
    }
}

/// The requests the sink would send for one record of contract `kind`, regardless of what
/// it delivered already, as `{key, webhook_id, body}` objects: one per location of a stock
/// record, one per catalog record. Its shadow mode (`erpstream replay --into <sink>`).
async fn requests(
    codec: &Codec,
    kind: EventKind,
    payload: &[u8],
) -> Result<Vec<serde_json::Value>, String> {
    let request = |key: String, webhook_id: String, body: bytes::Bytes| {
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        serde_json::json!({"key": key, "webhook_id": webhook_id, "body": body})
    };
    match kind {
        EventKind::InventoryAvailable => {
            let record: erpstream_schemas::InventoryAvailable =
                codec.decode(payload).await.map_err(|e| e.to_string())?;
            Ok(record
                .locations
                .iter()
                .map(|location| {
                    request(
                        format!("stock|{}|{}", record.sku, location.location_code),
                        stock_webhook_id(&record, location),
                        payload::stock(&record, location),
                    )
                })
                .collect())
        }
        EventKind::CatalogUpdate => {
            let record: erpstream_schemas::CatalogUpdate =
                codec.decode(payload).await.map_err(|e| e.to_string())?;
            Ok(vec![request(
                format!("catalog|{}", record.group_id),
                catalog_webhook_id(&record),
                payload::catalog(&record),
            )])
        }
        other => Err(format!("the storefront sink does not deliver {other:?}")),
    }
}

/// What the sink accepts.
const ACCEPTS: &[EventKind] = &[EventKind::InventoryAvailable, EventKind::CatalogUpdate];

impl Component for StorefrontWebhookConfig {
    fn validate(&self, at: &str) -> Vec<Problem> {
        Checks::new(at)
            .http_url("url", &self.url)
            .ca_file("ca_file", &self.url, self.ca_file.as_deref())
            .listed("inputs", &self.inputs, "topic")
            .positive("request_timeout", !self.request_timeout.is_zero())
            .positive("concurrency", self.concurrency > 0)
            .positive("max_pending", self.max_pending > 0)
            .extend(self.retry.validate(&format!("{at}.retry")))
            .done()
    }

    fn inputs(&self) -> Vec<Port> {
        Port::list("inputs", &self.inputs, ACCEPTS)
    }

    /// Each input's dead-letter topic and the changelog of its delivery guard.
    fn topics(&self, id: &str, names: &Names, partitions: &dyn Fn(&str) -> i32) -> Vec<TopicSpec> {
        let mut specs = Vec::new();
        for input in &self.inputs {
            let partitions = partitions(input);
            specs.push(TopicSpec {
                name: names.dlq(input),
                partitions,
                compacted: false,
            });
            specs.push(TopicSpec {
                name: names.changelog(id, Some(input)),
                partitions,
                compacted: true,
            });
        }
        specs
    }

    async fn build(&self, context: Context) -> Result<Running, crate::Error> {
        let sink = StorefrontWebhookSink::build(self.clone(), &context)?;
        let control = Arc::new(control::StorefrontControl {
            service: sink.service.clone(),
            consumer: sink.consumer.clone(),
            target: crate::postgres::redacted(&self.url),
        });
        Ok(Running::new(sink.readiness(), move |shutdown| async move {
            Ok(sink.run(shutdown).await?)
        })
        .control(control))
    }

    fn shadow(&self) -> Option<Shadow> {
        Some(|codec, kind, payload| Box::pin(requests(codec, kind, payload)))
    }
}

fn stock_webhook_id(
    record: &erpstream_schemas::InventoryAvailable,
    location: &erpstream_schemas::LocationStock,
) -> String {
    format!(
        "stock:{}:{}:{}",
        record.sku, location.location_code, location.version
    )
}

fn catalog_webhook_id(record: &erpstream_schemas::CatalogUpdate) -> String {
    format!("catalog:{}", record.event_id)
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// A topic partition of the input.
type Tp = (String, i32);

/// What the guard remembers per key; written to the changelog as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum GuardEntry {
    /// Last delivered stock figure of a sku at a location.
    Stock { version: i64, available: String },
    /// ERP time of the last delivered catalog record of a group.
    Catalog { occurred_at: i64 },
    /// An idempotency key already delivered, and when.
    Seen { at: i64 },
}

/// One delivery waiting or in flight.
struct Delivery {
    tp: Tp,
    key: String,
    /// Compared per key: stock version, or catalog ERP time.
    order: i64,
    /// Guard entries to record once delivered.
    record: Vec<(String, GuardEntry)>,
    body: bytes::Bytes,
    webhook_id: String,
    traceparent: Option<String>,
    ingested_at: i64,
    occurred_at: i64,
    /// Input offsets (in `tp`) that are done once this delivery is.
    covers: Vec<i64>,
    /// The input record, for the dead-letter topic.
    source: Arc<OwnedMessage>,
    attempts: u32,
    last_error: String,
    /// Why it failed, once it has.
    failure: Failure,
}

#[derive(Default)]
struct Slot {
    in_flight: Option<i64>,
    pending: Option<Delivery>,
    waiting_until: Option<Instant>,
}

enum Done {
    Attempt(Box<Delivery>, Outcome),
    Finalized(Tp, Vec<i64>),
    /// The broker refused a guard write or dead letter for good; the sink stops.
    Failed(crate::kafka::PublishError),
}

struct State {
    guard: HashMap<Tp, HashMap<String, GuardEntry>>,
    slots: HashMap<(Tp, String), Slot>,
    ready: VecDeque<(Tp, String)>,
    retries: BinaryHeap<Reverse<(Instant, Tp, String)>>,
    offsets: OffsetTracker,
    tasks: JoinSet<Done>,
    pending_count: usize,
    /// The assignment generation the guard was last brought in line with.
    synced: Option<u64>,
}

impl State {
    fn new() -> Self {
        Self {
            guard: HashMap::new(),
            slots: HashMap::new(),
            ready: VecDeque::new(),
            retries: BinaryHeap::new(),
            offsets: OffsetTracker::default(),
            tasks: JoinSet::new(),
            pending_count: 0,
            synced: None,
        }
    }

    /// Forgets revoked partitions and restores the guard of every assigned partition that
    /// has none yet, every input topic side by side; the sink is ready once it has. `false` if
    /// shutdown interrupted the restore.
    async fn sync_assignment(
        &mut self,
        sink: &StorefrontWebhookSink,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        let generation = sink.context().generation();
        if self.synced == Some(generation) {
            return true;
        }
        for revoked in sink.context().take_revoked() {
            self.guard.remove(&revoked);
            self.offsets.revoke(&revoked.0, revoked.1);
        }
        let assignment = sink.context().assignment();
        sink.queues.assigned(&assignment);
        let mut missing: HashMap<String, Vec<i32>> = HashMap::new();
        for tp in assignment {
            if !self.guard.contains_key(&tp) {
                missing.entry(tp.0).or_default().push(tp.1);
            }
        }
        if !missing.is_empty() && !self.restore(sink, missing, shutdown).await {
            return false;
        }
        sink.context().restored(generation);
        self.synced = Some(generation);
        true
    }

    /// Takes one input record: turns it into deliveries and queues them (restoring its
    /// partition's guard first if the assignment check has not yet). `false` if shutdown
    /// came while the record waited for the registry; its offset is not stored.
    async fn take(
        &mut self,
        sink: &StorefrontWebhookSink,
        message: OwnedMessage,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        let tp: Tp = (message.topic().to_string(), message.partition());
        let offset = message.offset();
        let Some(input) = sink.inputs.get(&tp.0).cloned() else {
            return true;
        };
        metrics::counter!(m::RECEIVED_EVENTS, m::COMPONENT_ID => sink.id.clone(), m::COMPONENT_TYPE => TYPE).increment(1);
        if !self.guard.contains_key(&tp)
            && !self
                .restore(sink, HashMap::from([(tp.0.clone(), vec![tp.1])]), shutdown)
                .await
        {
            return false;
        }
        let message = Arc::new(message);
        let deliveries = match self.deliveries(sink, &input, &tp, &message, shutdown).await {
            None => return false,
            Some(Ok(deliveries)) => deliveries,
            Some(Err(reason)) => {
                // Undecodable: nothing can ever deliver it, so it goes to the DLQ right away.
                tracing::warn!(topic = %tp.0, partition = tp.1, offset, error = %reason, "undecodable record");
                self.offsets.take(&tp.0, tp.1, offset, 1);
                let delivery = Delivery {
                    tp: tp.clone(),
                    key: String::new(),
                    order: 0,
                    record: vec![],
                    body: bytes::Bytes::new(),
                    webhook_id: String::new(),
                    traceparent: None,
                    ingested_at: 0,
                    occurred_at: 0,
                    covers: vec![offset],
                    source: message,
                    attempts: 0,
                    last_error: reason,
                    failure: Failure::Undecodable,
                };
                self.dead_letter(sink, delivery);
                return true;
            }
        };
        self.offsets
            .take(&tp.0, tp.1, offset, deliveries.len() as u32);
        for delivery in deliveries {
            self.enqueue(sink, delivery);
        }
        true
    }

    /// Restores the guard of `partitions` per input topic, the topics side by side; `false`
    /// if shutdown came first.
    async fn restore(
        &mut self,
        sink: &StorefrontWebhookSink,
        partitions: HashMap<String, Vec<i32>>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        let horizon =
            erpstream_schemas::now_millis() - sink.config.dedupe_window.as_millis() as i64;
        let reads = partitions.into_iter().filter_map(|(topic, partitions)| {
            let input = sink.inputs.get(&topic)?.clone();
            let mut shutdown = shutdown.clone();
            Some(async move {
                let restored =
                    kafka::retrying("restoring the delivery guard", &mut shutdown, || {
                        input.changelog.restore(&partitions)
                    })
                    .await;
                (topic, restored)
            })
        });
        for (topic, restored) in join_all(reads).await {
            // KafkaError is always retriable: only shutdown ends the wait.
            let Some(Ok(restored)) = restored else {
                return false;
            };
            for (partition, raw) in restored {
                let mut entries = HashMap::new();
                for (key, value) in raw {
                    match serde_json::from_slice::<GuardEntry>(&value) {
                        Ok(GuardEntry::Seen { at }) if at < horizon => {}
                        Ok(entry) => {
                            entries.insert(key, entry);
                        }
                        Err(err) => {
                            tracing::warn!(error = %err, "skipping unreadable guard entry")
                        }
                    }
                }
                tracing::info!(%topic, partition, keys = entries.len(), "delivery guard restored");
                self.guard.insert((topic.clone(), partition), entries);
            }
        }
        true
    }

    /// The deliveries one record asks for, after the guard and the queue have had their say.
    /// `None` if shutdown came while the record waited for the registry; `Some(Err)` with
    /// the reason if it can never be delivered.
    async fn deliveries(
        &mut self,
        sink: &StorefrontWebhookSink,
        input: &Input,
        tp: &Tp,
        message: &Arc<OwnedMessage>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<Result<Vec<Delivery>, String>> {
        let Some(payload) = message.payload() else {
            return Some(Err("record has no value".into()));
        };
        let traceparent = kafka::trace_of(message.as_ref()).map(|t| t.child().to_string());
        let undecodable = |e: erpstream_schemas::CodecError| Some(Err(e.to_string()));
        let mut out = Vec::new();
        match input.kind {
            EventKind::InventoryAvailable => {
                let record: erpstream_schemas::InventoryAvailable =
                    match kafka::decode(&sink.codec, payload, shutdown).await? {
                        Ok(record) => record,
                        Err(err) => return undecodable(err),
                    };
                let guard = self.guard.get(tp);
                for location in &record.locations {
                    let key = format!("stock|{}|{}", record.sku, location.location_code);
                    let available = location.available.normalize().to_string();
                    let delivered = match guard.and_then(|g| g.get(&key)) {
                        Some(GuardEntry::Stock { version, available }) => {
                            Some((*version, available.as_str()))
                        }
                        _ => None,
                    };
                    let queued = self.queued_order(tp, &key);
                    let newest_known = delivered.map(|d| d.0).into_iter().chain(queued).max();
                    if newest_known.is_some_and(|v| location.version <= v) {
                        self.drop_metric(sink, "stale");
                        continue;
                    }
                    if queued.is_none() && delivered.is_some_and(|d| d.1 == available) {
                        self.drop_metric(sink, "unchanged");
                        continue;
                    }
                    out.push(Delivery {
                        tp: tp.clone(),
                        order: location.version,
                        record: vec![(
                            key.clone(),
                            GuardEntry::Stock {
                                version: location.version,
                                available,
                            },
                        )],
                        body: payload::stock(&record, location),
                        webhook_id: stock_webhook_id(&record, location),
                        traceparent: traceparent.clone(),
                        ingested_at: record.ingested_at,
                        occurred_at: record.occurred_at,
                        covers: vec![message.offset()],
                        source: message.clone(),
                        attempts: 0,
                        last_error: String::new(),
                        failure: Failure::RetriesExhausted,
                        key,
                    });
                }
            }
            EventKind::CatalogUpdate => {
                let record: erpstream_schemas::CatalogUpdate =
                    match kafka::decode(&sink.codec, payload, shutdown).await? {
                        Ok(record) => record,
                        Err(err) => return undecodable(err),
                    };
                let guard = self.guard.get(tp);
                let key = format!("catalog|{}", record.group_id);
                let seen_key = format!("seen|{}", record.idempotency_key);
                if guard.is_some_and(|g| g.contains_key(&seen_key)) {
                    self.drop_metric(sink, "duplicate");
                    return Some(Ok(out));
                }
                let delivered = match guard.and_then(|g| g.get(&key)) {
                    Some(GuardEntry::Catalog { occurred_at }) => Some(*occurred_at),
                    _ => None,
                };
                let newest_known = delivered
                    .into_iter()
                    .chain(self.queued_order(tp, &key))
                    .max();
                if newest_known.is_some_and(|t| record.occurred_at < t) {
                    self.drop_metric(sink, "stale");
                    return Some(Ok(out));
                }
                let now = erpstream_schemas::now_millis();
                out.push(Delivery {
                    tp: tp.clone(),
                    order: record.occurred_at,
                    record: vec![
                        (
                            key.clone(),
                            GuardEntry::Catalog {
                                occurred_at: record.occurred_at,
                            },
                        ),
                        (seen_key, GuardEntry::Seen { at: now }),
                    ],
                    body: payload::catalog(&record),
                    webhook_id: catalog_webhook_id(&record),
                    traceparent,
                    ingested_at: record.ingested_at,
                    occurred_at: record.occurred_at,
                    covers: vec![message.offset()],
                    source: message.clone(),
                    attempts: 0,
                    last_error: String::new(),
                    failure: Failure::RetriesExhausted,
                    key,
                });
            }
            other => return Some(Err(format!("unsupported contract {other:?}"))),
        }
        Some(Ok(out))
    }

    fn queued_order(&self, tp: &Tp, key: &str) -> Option<i64> {
        let slot = self.slots.get(&(tp.clone(), key.to_string()))?;
        slot.pending
            .as_ref()
            .map(|p| p.order)
            .into_iter()
            .chain(slot.in_flight)
            .max()
    }

    fn drop_metric(&self, sink: &StorefrontWebhookSink, reason: &'static str) {
        metrics::counter!(m::DROPPED_EVENTS, m::COMPONENT_ID => sink.id.clone(),
            m::COMPONENT_TYPE => TYPE, m::REASON => reason)
        .increment(1);
    }

    fn release(&mut self, tp: &Tp, offsets: &[i64]) {
        for offset in offsets {
            self.offsets.done(&tp.0, tp.1, *offset);
        }
    }

    /// Queues a delivery, collapsing it with a waiting one for the same key.
    fn enqueue(&mut self, sink: &StorefrontWebhookSink, mut delivery: Delivery) {
        let slot_key = (delivery.tp.clone(), delivery.key.clone());
        let slot = self.slots.entry(slot_key.clone()).or_default();
        if let Some(older) = slot.pending.take() {
            // The newer figure replaces the waiting one; the older records are done when it is.
            delivery.covers.extend(older.covers);
            delivery.attempts = older.attempts;
            metrics::counter!(m::DROPPED_EVENTS, m::COMPONENT_ID => sink.id.clone(),
                m::COMPONENT_TYPE => TYPE, m::REASON => "superseded")
            .increment(1);
        } else {
            self.pending_count += 1;
        }
        let ready = slot.in_flight.is_none() && slot.waiting_until.is_none();
        slot.pending = Some(delivery);
        if ready {
            self.ready.push_back(slot_key);
        }
        metrics::gauge!(m::PENDING, m::COMPONENT_ID => sink.id.clone())
            .set(self.pending_count as f64);
    }

    /// Starts deliveries while there is room.
    fn dispatch(&mut self, sink: &StorefrontWebhookSink) {
        while self.tasks.len() < sink.config.concurrency {
            let Some(slot_key) = self.ready.pop_front() else {
                break;
            };
            let Some(slot) = self.slots.get_mut(&slot_key) else {
                continue;
            };
            if slot.in_flight.is_some() || slot.waiting_until.is_some() {
                continue;
            }
            let Some(delivery) = slot.pending.take() else {
                continue;
            };
            self.pending_count -= 1;
            slot.in_flight = Some(delivery.order);
            let service = sink.service.clone();
            self.tasks.spawn(async move {
                let outcome = service
                    .send(
                        delivery.body.clone(),
                        &delivery.webhook_id,
                        delivery.traceparent.as_deref(),
                    )
                    .await;
                Done::Attempt(Box::new(delivery), outcome)
            });
        }
    }

    fn next_retry(&self) -> Option<Instant> {
        self.retries.peek().map(|Reverse((at, _, _))| *at)
    }

    fn wake_retries(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((at, _, _))) = self.retries.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, tp, key))) = self.retries.pop() else {
                break;
            };
            let slot_key = (tp, key);
            if let Some(slot) = self.slots.get_mut(&slot_key) {
                slot.waiting_until = None;
                if slot.pending.is_some() && slot.in_flight.is_none() {
                    self.ready.push_back(slot_key);
                }
            }
        }
    }

    fn complete(&mut self, sink: &StorefrontWebhookSink, done: Done) -> Result<(), SinkError> {
        match done {
            Done::Failed(err) => return Err(err.into()),
            Done::Finalized(tp, covers) => self.release(&tp, &covers),
            Done::Attempt(delivery, outcome) => {
                let mut delivery = *delivery;
                let slot_key = (delivery.tp.clone(), delivery.key.clone());
                delivery.attempts += 1;
                match outcome {
                    Outcome::Delivered => self.delivered(sink, delivery),
                    Outcome::Reject { reason } => {
                        delivery.last_error = reason;
                        delivery.failure = Failure::Rejected;
                        self.finish_slot(&slot_key);
                        self.dead_letter(sink, delivery);
                    }
                    Outcome::Retry {
                        reason,
                        retry_after,
                    } => {
                        metrics::counter!(m::RETRIES, m::COMPONENT_ID => sink.id.clone(), m::COMPONENT_TYPE => TYPE).increment(1);
                        tracing::debug!(key = %delivery.key, attempts = delivery.attempts, reason = %reason, "delivery failed");
                        delivery.last_error = reason;
                        let max_attempts = sink.config.retry.max_attempts;
                        let attempts = delivery.attempts;
                        let slot = self.slots.entry(slot_key.clone()).or_default();
                        slot.in_flight = None;
                        // A newer figure waiting supersedes the failed one; otherwise the failed
                        // one waits for its retry. Either way the streak's attempts carry over.
                        let give_up = match slot.pending.as_mut() {
                            Some(newer) => {
                                newer.covers.append(&mut delivery.covers);
                                newer.attempts = newer.attempts.max(attempts);
                                newer.last_error = delivery.last_error.clone();
                                if newer.attempts >= max_attempts {
                                    self.pending_count -= 1;
                                    slot.pending.take()
                                } else {
                                    None
                                }
                            }
                            None if attempts >= max_attempts => Some(delivery),
                            None => {
                                slot.pending = Some(delivery);
                                self.pending_count += 1;
                                None
                            }
                        };
                        match give_up {
                            Some(failed) => {
                                self.finish_slot(&slot_key);
                                self.dead_letter(sink, failed);
                            }
                            None => self.schedule_retry(sink, slot_key, attempts, retry_after),
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// During shutdown: record what finished, start nothing new.
    fn complete_draining(&mut self, sink: &StorefrontWebhookSink, done: Done) {
        match done {
            Done::Attempt(delivery, Outcome::Delivered) => self.delivered(sink, *delivery),
            Done::Attempt(..) => {}
            Done::Finalized(tp, covers) => self.release(&tp, &covers),
            Done::Failed(err) => {
                tracing::error!(error = %err, "a guard write or dead letter was refused")
            }
        }
    }

    fn schedule_retry(
        &mut self,
        sink: &StorefrontWebhookSink,
        slot_key: (Tp, String),
        attempts: u32,
        hint: Option<Duration>,
    ) {
        let at = Instant::now() + backoff(&sink.config.retry, attempts, hint);
        if let Some(slot) = self.slots.get_mut(&slot_key) {
            slot.waiting_until = Some(at);
        }
        self.retries.push(Reverse((at, slot_key.0, slot_key.1)));
    }

    /// The slot's request ended; start the next waiting figure, or forget the slot.
    fn finish_slot(&mut self, slot_key: &(Tp, String)) {
        if let Some(slot) = self.slots.get_mut(slot_key) {
            slot.in_flight = None;
            if slot.pending.is_some() {
                if slot.waiting_until.is_none() {
                    self.ready.push_back(slot_key.clone());
                }
            } else {
                self.slots.remove(slot_key);
            }
        }
    }

    fn delivered(&mut self, sink: &StorefrontWebhookSink, delivery: Delivery) {
        let now = erpstream_schemas::now_millis();
        metrics::counter!(m::SENT_EVENTS, m::COMPONENT_ID => sink.id.clone(), m::COMPONENT_TYPE => TYPE).increment(1);
        metrics::histogram!(m::END_TO_END_LATENCY, m::COMPONENT_ID => sink.id.clone())
            .record(((now - delivery.ingested_at).max(0) as f64) / 1000.0);
        metrics::histogram!(m::ERP_TO_SINK_LATENCY, m::COMPONENT_ID => sink.id.clone())
            .record(((now - delivery.occurred_at).max(0) as f64) / 1000.0);
        let slot_key = (delivery.tp.clone(), delivery.key.clone());
        let guard = self.guard.entry(delivery.tp.clone()).or_default();
        for (key, entry) in &delivery.record {
            guard.insert(key.clone(), entry.clone());
        }
        self.finish_slot(&slot_key);
        let Some(input) = sink.inputs.get(&delivery.tp.0) else {
            return;
        };
        let changelog = input.changelog.clone();
        let (tp, covers, record) = (delivery.tp, delivery.covers, delivery.record);
        self.tasks.spawn(async move {
            let writes = record.iter().map(|(key, entry)| {
                let value = serde_json::to_vec(entry).ok();
                let changelog = &changelog;
                let partition = tp.1;
                async move {
                    // Finishes even during shutdown (bounded by the drain deadline): the
                    // delivery happened, and its guard keeps a restart from repeating it.
                    kafka::retrying("writing the delivery guard", &mut kafka::never(), || {
                        changelog.write(partition, key, value.clone())
                    })
                    .await
                }
            });
            let written = join_all(writes).await;
            match written.into_iter().flatten().find_map(Result::err) {
                None => Done::Finalized(tp, covers),
                Some(err) => Done::Failed(err),
            }
        });
    }

    fn dead_letter(&mut self, sink: &StorefrontWebhookSink, delivery: Delivery) {
        let Some(input) = sink.inputs.get(&delivery.tp.0) else {
            return;
        };
        metrics::counter!(m::DEAD_LETTERED, m::COMPONENT_ID => sink.id.clone(), m::COMPONENT_TYPE => TYPE).increment(1);
        tracing::warn!(key = %delivery.key, attempts = delivery.attempts, error = %delivery.last_error, "dead-lettering record");
        let record = DeadLetter::new(delivery.failure, &delivery.last_error, &sink.id)
            .attempts(delivery.attempts)
            .of_record(&delivery.source, &input.dlq_topic);
        let publisher = sink.publisher.clone();
        let (tp, covers) = (delivery.tp, delivery.covers);
        self.tasks.spawn(async move {
            let sent = kafka::retrying("publishing a dead letter", &mut kafka::never(), || {
                publisher.send(record.clone())
            })
            .await;
            match sent {
                Some(Err(err)) => Done::Failed(err),
                _ => Done::Finalized(tp, covers),
            }
        });
    }

    /// Stores, per partition, the offset below which every record is done.
    fn store_offsets(&mut self, sink: &StorefrontWebhookSink) {
        for ((topic, partition), next) in self.offsets.store(sink.consumer.as_ref()) {
            sink.queues.read_up_to(&topic, partition, next);
        }
    }
}

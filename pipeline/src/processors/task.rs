//! The consumer task that runs one processor chain: consume a batch, process it record by
//! record, make its effects durable in order (emitted records, then changelogs from the last
//! processor of the chain to the first), then store the batch's offsets.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use erpstream_connectors::kafka::{
    Changelog, GroupConsumer, Publisher, RawRecord, TRACEPARENT_HEADER, TrackingContext,
};
use erpstream_connectors::metrics as m;
use erpstream_schemas::{Codec, CodecError, EventKind, Traceparent};
use futures::StreamExt;
use futures::future::join_all;
use rdkafka::consumer::Consumer;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;

use super::{Decoded, Effects, Emit, Processor, Record};

/// Most records taken into one batch.
const MAX_BATCH: usize = 1_000;
/// How often processors get a [`Processor::tick`].
const TICK: Duration = Duration::from_secs(1);

/// One processor chain and its consumer.
pub struct StreamTask {
    name: String,
    consumer: GroupConsumer,
    context: TrackingContext,
    /// Broker-side input topic → its contract and dead-letter topic.
    inputs: HashMap<String, (EventKind, String)>,
    chain: Vec<Box<dyn Processor>>,
    changelogs: Vec<Changelog>,
    publisher: Publisher,
    codec: Codec,
    restored: HashSet<i32>,
    ready: Arc<AtomicBool>,
}

impl StreamTask {
    /// A task over `inputs` (broker topic, contract, dead-letter topic) running `chain`,
    /// whose processor `i` persists to `changelogs[i]`.
    pub fn new(
        name: String,
        (consumer, context): (GroupConsumer, TrackingContext),
        inputs: Vec<(String, EventKind, String)>,
        chain: Vec<Box<dyn Processor>>,
        changelogs: Vec<Changelog>,
        publisher: Publisher,
    ) -> Self {
        Self {
            name,
            consumer,
            context,
            inputs: inputs.into_iter().map(|(t, k, d)| (t, (k, d))).collect(),
            chain,
            changelogs,
            codec: publisher.codec().clone(),
            publisher,
            restored: HashSet::new(),
            ready: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Turns true once the group assigned this task its partitions and their state is
    /// restored (for `/readyz`).
    pub fn ready(&self) -> Arc<AtomicBool> {
        self.ready.clone()
    }

    /// Runs until `shutdown` turns true; the batch in progress is finished first.
    pub async fn run(
        mut self,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), rdkafka::error::KafkaError> {
        let topics: Vec<String> = self.inputs.keys().cloned().collect();
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        self.consumer.subscribe(&topics)?;
        tracing::info!(task = %self.name, ?topics, "processor chain started");
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let batch: Option<Vec<OwnedMessage>> = {
                let mut stream = self.consumer.stream().ready_chunks(MAX_BATCH);
                tokio::select! {
                    biased;
                    _ = shutdown.changed() => break,
                    _ = ticker.tick() => None,
                    batch = stream.next() => match batch {
                        Some(batch) => Some(batch.into_iter().filter_map(|m| match m {
                            Ok(m) => Some(m.detach()),
                            Err(err) => {
                                tracing::warn!(error = %err, "consume failed");
                                None
                            }
                        }).collect()),
                        None => break,
                    },
                }
            };
            let Some(batch) = batch else {
                self.tick(&mut shutdown).await;
                continue;
            };
            if batch.is_empty() {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            self.process_batch(batch, &mut shutdown).await;
        }
        erpstream_connectors::kafka::commit_stored(&self.consumer);
        Ok(())
    }

    async fn process_batch(
        &mut self,
        batch: Vec<OwnedMessage>,
        shutdown: &mut watch::Receiver<bool>,
    ) {
        self.sync_assignment(batch.iter().map(|m| m.partition()))
            .await;
        let mut effects = Effects::default();
        let mut offsets: HashMap<(String, i32), i64> = HashMap::new();
        let mut dead_letters = Vec::new();
        for message in batch {
            let partition = message.partition();
            offsets.insert(
                (message.topic().to_string(), partition),
                message.offset() + 1,
            );
            metrics::counter!(m::RECEIVED_EVENTS, m::COMPONENT_ID => self.name.clone(),
                m::COMPONENT_TYPE => "processor")
            .increment(1);
            if message.payload().is_none() {
                // A tombstone (a deleted source row): nothing to process or dead-letter.
                metrics::counter!(m::DROPPED_EVENTS, m::COMPONENT_ID => self.name.clone(),
                    m::REASON => "tombstone")
                .increment(1);
                continue;
            }
            match self.decode(&message).await {
                Ok(record) => {
                    for (index, processor) in self.chain.iter_mut().enumerate() {
                        if !processor.process(index, &record, &mut effects) {
                            break;
                        }
                    }
                }
                Err(err) if err.is_retriable() => {
                    // The registry is unreachable: retry this record rather than skip it.
                    tracing::warn!(error = %err, "decode needs the registry; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    offsets.remove(&(message.topic().to_string(), partition));
                    self.seek_back(&message);
                    break;
                }
                Err(err) => dead_letters.push((message, err.to_string())),
            }
        }
        if !self.make_durable(effects, dead_letters, shutdown).await {
            return;
        }
        let mut list = TopicPartitionList::new();
        for ((topic, partition), next) in offsets {
            let _ = list.add_partition_offset(&topic, partition, Offset::Offset(next));
        }
        if let Err(err) = self.consumer.store_offsets(&list) {
            tracing::debug!(error = %err, "offset store refused (partition revoked?)");
        }
    }

    /// Forgets revoked partitions and restores every assigned (or `seen`) partition not
    /// restored yet, in one pass. Runs before each batch and on each tick, so the state
    /// (and the snapshot API) is complete soon after start even when no record arrives.
    async fn sync_assignment(&mut self, seen: impl Iterator<Item = i32>) {
        for (_, partition) in self.context.take_revoked() {
            self.restored.remove(&partition);
            for processor in &mut self.chain {
                processor.revoke(partition);
            }
        }
        let mut unrestored: BTreeSet<i32> = seen.filter(|p| !self.restored.contains(p)).collect();
        if let Ok(assignment) = self.consumer.assignment() {
            unrestored.extend(
                assignment
                    .elements()
                    .iter()
                    .map(|e| e.partition())
                    .filter(|p| !self.restored.contains(p)),
            );
        }
        if !unrestored.is_empty() {
            self.restore(&unrestored.into_iter().collect::<Vec<_>>())
                .await;
        }
        if self.context.joined().load(Ordering::SeqCst) {
            self.ready.store(true, Ordering::SeqCst);
        }
    }

    /// Lets every processor make its time-driven changes and makes them durable.
    async fn tick(&mut self, shutdown: &mut watch::Receiver<bool>) {
        self.sync_assignment(std::iter::empty()).await;
        let now = erpstream_schemas::now_millis();
        let mut effects = Effects::default();
        for (index, processor) in self.chain.iter_mut().enumerate() {
            processor.tick(index, now, &mut effects);
        }
        if !effects.emit.is_empty() || !effects.changelog.is_empty() {
            self.make_durable(effects, Vec::new(), shutdown).await;
        }
    }

    fn seek_back(&self, message: &OwnedMessage) {
        if let Err(err) = self.consumer.seek(
            message.topic(),
            message.partition(),
            Offset::Offset(message.offset()),
            Duration::from_secs(5),
        ) {
            tracing::warn!(error = %err, "seek failed");
        }
    }

    async fn restore(&mut self, partitions: &[i32]) {
        for (processor, changelog) in self.chain.iter_mut().zip(&self.changelogs) {
            let mut attempt = 0u32;
            let mut restored = loop {
                match changelog.restore(partitions).await {
                    Ok(restored) => break restored,
                    Err(err) => {
                        attempt += 1;
                        tracing::warn!(error = %err, attempt, "state restore failed; retrying");
                        tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt.min(25))))
                            .await;
                    }
                }
            };
            for &partition in partitions {
                let entries = restored.remove(&partition).unwrap_or_default();
                tracing::info!(
                    processor = processor.id(),
                    partition,
                    keys = entries.len(),
                    "state restored"
                );
                processor.restore(partition, entries);
            }
        }
        self.restored.extend(partitions.iter().copied());
    }

    async fn decode(&self, message: &OwnedMessage) -> Result<Record, CodecError> {
        let (kind, _) = self.inputs[message.topic()];
        let payload = message.payload().unwrap_or_default();
        let event = match kind {
            EventKind::InventoryChange => {
                Decoded::InventoryChange(self.codec.decode(payload).await?)
            }
            EventKind::CatalogUpdate => Decoded::CatalogUpdate(self.codec.decode(payload).await?),
            EventKind::SalesOrder => Decoded::SalesOrder(self.codec.decode(payload).await?),
            EventKind::InventoryAvailable => {
                Decoded::InventoryAvailable(self.codec.decode(payload).await?)
            }
            EventKind::InventoryAdjustment => {
                Decoded::InventoryAdjustment(self.codec.decode(payload).await?)
            }
            EventKind::Reservation => Decoded::Reservation(self.codec.decode(payload).await?),
            EventKind::DemandActual => Decoded::DemandActual(self.codec.decode(payload).await?),
        };
        let headers = erpstream_connectors::kafka::headers_of(message);
        let trace = headers
            .iter()
            .find(|(k, _)| k == TRACEPARENT_HEADER)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
            .and_then(Traceparent::parse);
        Ok(Record {
            topic: message.topic().to_string(),
            partition: message.partition(),
            offset: message.offset(),
            raw: RawRecord {
                topic: message.topic().to_string(),
                key: message.key().map(<[u8]>::to_vec),
                payload: message.payload().map(<[u8]>::to_vec),
                headers,
                partition: None,
            },
            trace,
            event,
        })
    }

    /// Publishes emitted records and dead letters, then changelog writes from the last
    /// processor back to the first, retrying until each is acknowledged: skipping one would
    /// lose data, and stopping halfway is safe because the offsets are not stored yet.
    async fn make_durable(
        &self,
        effects: Effects,
        dead_letters: Vec<(OwnedMessage, String)>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        let mut records = Vec::with_capacity(effects.emit.len() + dead_letters.len());
        for emit in effects.emit {
            match emit {
                Emit::Raw(raw) => records.push(raw),
                Emit::Available(topic, event, trace) => {
                    let payload = loop {
                        match self.codec.encode(&topic, event.as_ref()).await {
                            Ok(payload) => break payload,
                            Err(err) => {
                                tracing::error!(error = %err, "encode failed; retrying");
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                        }
                    };
                    records.push(RawRecord {
                        topic,
                        key: Some(event.sku.clone().into_bytes()),
                        payload: Some(payload),
                        headers: vec![(
                            TRACEPARENT_HEADER.to_string(),
                            trace.to_string().into_bytes(),
                        )],
                        partition: None,
                    });
                }
            }
        }
        for (message, error) in dead_letters {
            let dlq = self.inputs[message.topic()].1.clone();
            metrics::counter!(m::DEAD_LETTERED, m::COMPONENT_ID => self.name.clone(), m::COMPONENT_TYPE => "processor").increment(1);
            tracing::warn!(topic = message.topic(), offset = message.offset(), error = %error, "dead-lettering undecodable record");
            records.push(erpstream_connectors::kafka::dead_letter(
                &message,
                &dlq,
                erpstream_connectors::kafka::Failure::Undecodable,
                &error,
                &self.name,
                1,
            ));
        }
        if !self.send_all(records, shutdown).await {
            return false;
        }
        for index in (0..self.chain.len()).rev() {
            let writes: Vec<RawRecord> = effects
                .changelog
                .iter()
                .filter(|(i, ..)| *i == index)
                .map(|(_, partition, key, value)| RawRecord {
                    topic: self.changelogs[index].topic().to_string(),
                    key: Some(key.clone().into_bytes()),
                    payload: value.clone(),
                    headers: Vec::new(),
                    partition: Some(*partition),
                })
                .collect();
            if !self.send_all(writes, shutdown).await {
                return false;
            }
        }
        true
    }

    /// Sends every record, retrying failures; `false` if shutdown interrupted it.
    async fn send_all(
        &self,
        records: Vec<RawRecord>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        let mut pending = records;
        let mut wait = Duration::from_millis(100);
        while !pending.is_empty() {
            // Sends are queued in order, so records of one key keep their order.
            let results = join_all(pending.iter().cloned().map(|r| self.publisher.send(r))).await;
            let failed: Vec<RawRecord> = pending
                .into_iter()
                .zip(results)
                .filter_map(|(record, result)| match result {
                    Ok(_) => None,
                    Err(err) => {
                        tracing::warn!(topic = %record.topic, error = %err, "publish failed; retrying");
                        Some(record)
                    }
                })
                .collect();
            if failed.is_empty() {
                return true;
            }
            metrics::counter!(m::ERRORS, m::COMPONENT_ID => self.name.clone(), m::COMPONENT_TYPE => "processor",
                m::ERROR_TYPE => "publish", m::STAGE => "emit").increment(failed.len() as u64);
            if *shutdown.borrow() {
                tracing::warn!(
                    "shutting down with unpublished effects; the batch will be re-processed after restart"
                );
                return false;
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
            pending = failed;
        }
        true
    }
}

//! The consumer task that runs one processor chain: consume a batch, process it record by
//! record, make its effects durable — emitted records, dead letters and every processor's
//! changelog writes in one flush, a single wait for the broker — then store the batch's
//! offsets. After a restore, each processor emits again what its state took from records at
//! or after the group's committed offsets (see the contract in [`super`]), before the first
//! batch of the partition.
//!
//! A record whose writer schema cannot be fetched (the registry is down) is waited for, not
//! skipped: nothing after it in the batch is processed before it, and no offset of the
//! batch is stored before all of it is durable. A shutdown during the wait drops the
//! batch's effects; the batch is read again after the restart.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use erpstream_connectors::admission::QueueWatch;
use erpstream_connectors::component::Readiness;
use erpstream_connectors::kafka::{
    self, Changelog, DeadLetter, Failure, GroupConsumer, OffsetTracker, PublishError, Publisher,
    RawRecord, TrackingContext,
};
use erpstream_connectors::metrics as m;
use erpstream_schemas::{Codec, CodecError, EventKind};
use futures::StreamExt;
use futures::future::join_all;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use tokio::sync::watch;

use super::{Decoded, Effects, Emit, Processor, Record};

/// Most records taken into one batch.
const MAX_BATCH: usize = 1_000;
/// How often processors get a [`Processor::tick`].
const TICK: Duration = Duration::from_secs(1);

/// Why a processor chain stopped.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// The consumer could not subscribe.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The broker refused an effect for good (too large, not authorized): the batch can
    /// neither be made durable nor skipped.
    #[error("an effect of the batch cannot be published: {0}")]
    Publish(#[from] PublishError),
    /// An emitted record does not fit its contract (a defect).
    #[error("an emitted record cannot be encoded: {0}")]
    Encode(#[from] CodecError),
}

/// How a set of effects is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flush {
    /// Everything at once: effects of input records, which the processors recognise when
    /// they are read again.
    Together,
    /// Emitted records, then changelog writes: effects without an input record (time-driven
    /// changes), which nothing would emit again.
    OutputsFirst,
}

/// One processor chain and its consumer.
pub struct StreamTask {
    name: String,
    consumer: GroupConsumer,
    /// Broker-side input topic → its contract and dead-letter topic.
    inputs: HashMap<String, (EventKind, String)>,
    chain: Vec<Box<dyn Processor>>,
    changelogs: Vec<Changelog>,
    publisher: Publisher,
    codec: Codec,
    restored: HashSet<i32>,
    offsets: OffsetTracker,
    /// Tells the admission gate how far this chain has processed its inputs.
    queues: QueueWatch,
}

impl StreamTask {
    /// A task over `inputs` (broker topic, contract, dead-letter topic) running `chain`,
    /// whose processor `i` persists to `changelogs[i]`; its consumer joins group `group`;
    /// how far it has processed its inputs goes to `queues`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: String,
        kafka_config: &kafka::KafkaConfig,
        group: &str,
        inputs: Vec<(String, EventKind, String)>,
        chain: Vec<Box<dyn Processor>>,
        changelogs: Vec<Changelog>,
        publisher: Publisher,
        queues: QueueWatch,
    ) -> Result<Self, TaskError> {
        let context = TrackingContext::new(Readiness::not_yet("starting"), true);
        let consumer = kafka::group_consumer(kafka_config, group, &name, context)?;
        Ok(Self {
            name,
            consumer,
            inputs: inputs.into_iter().map(|(t, k, d)| (t, (k, d))).collect(),
            chain,
            changelogs,
            codec: publisher.codec().clone(),
            publisher,
            restored: HashSet::new(),
            offsets: OffsetTracker::default(),
            queues,
        })
    }

    /// Ready while the group's assignment is held and every processor's state for it is
    /// restored (for `/readyz`).
    pub fn readiness(&self) -> Readiness {
        self.context().readiness()
    }

    fn context(&self) -> &TrackingContext {
        self.consumer.context()
    }

    /// Runs until `shutdown` turns true; the batch in progress is finished first.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<(), TaskError> {
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
                    _ = kafka::shutdown_requested(&mut shutdown) => break,
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
                self.tick(&mut shutdown).await?;
                continue;
            };
            if batch.is_empty() {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            self.process_batch(batch, &mut shutdown).await?;
        }
        kafka::commit_stored(&self.consumer);
        Ok(())
    }

    async fn process_batch(
        &mut self,
        batch: Vec<OwnedMessage>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), TaskError> {
        if !self
            .sync_assignment(batch.iter().map(|m| m.partition()), shutdown)
            .await?
        {
            return Ok(());
        }
        let mut effects = Effects::default();
        let mut dead_letters = Vec::new();
        for message in &batch {
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
            match self.decode(message, shutdown).await {
                // Shutdown while the registry is away: nothing of this batch is durable or
                // stored; it is read again after the restart.
                None => return Ok(()),
                Some(Ok(record)) => {
                    for (index, processor) in self.chain.iter_mut().enumerate() {
                        if !processor.process(index, &record, &mut effects) {
                            break;
                        }
                    }
                }
                Some(Err(err)) => dead_letters.push((message, err.to_string())),
            }
        }
        if !self
            .make_durable(effects, dead_letters, Flush::Together, shutdown)
            .await?
        {
            return Ok(());
        }
        for message in &batch {
            self.offsets
                .take(message.topic(), message.partition(), message.offset(), 0);
        }
        for ((topic, partition), next) in self.offsets.store(&self.consumer) {
            self.queues.read_up_to(&topic, partition, next);
        }
        Ok(())
    }

    /// Forgets revoked partitions and restores every assigned (or `seen`) partition not
    /// restored yet, in one pass, every processor's changelog side by side. Runs before each
    /// batch and on each tick, so the state (and the snapshot API) is complete soon after an
    /// assignment even when no record arrives; the task is ready once it is. `false` if
    /// shutdown interrupted the restore.
    async fn sync_assignment(
        &mut self,
        seen: impl Iterator<Item = i32>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<bool, TaskError> {
        let generation = self.context().generation();
        for (topic, partition) in self.context().take_revoked() {
            self.offsets.revoke(&topic, partition);
            if self.restored.remove(&partition) {
                for processor in &mut self.chain {
                    processor.revoke(partition);
                }
            }
        }
        let mut unrestored: BTreeSet<i32> = seen.filter(|p| !self.restored.contains(p)).collect();
        let assignment = self.context().assignment();
        self.queues.assigned(&assignment);
        unrestored.extend(
            assignment
                .into_iter()
                .map(|(_, partition)| partition)
                .filter(|p| !self.restored.contains(p)),
        );
        if !unrestored.is_empty()
            && !self
                .restore(&unrestored.into_iter().collect::<Vec<_>>(), shutdown)
                .await?
        {
            return Ok(false);
        }
        self.context().restored(generation);
        Ok(true)
    }

    /// Lets every processor make its time-driven changes and makes them durable.
    async fn tick(&mut self, shutdown: &mut watch::Receiver<bool>) -> Result<(), TaskError> {
        if !self.sync_assignment(std::iter::empty(), shutdown).await? {
            return Ok(());
        }
        let now = erpstream_schemas::now_millis();
        let mut effects = Effects::default();
        for (index, processor) in self.chain.iter_mut().enumerate() {
            processor.tick(index, now, &mut effects);
        }
        if !effects.emit.is_empty() || !effects.changelog.is_empty() {
            self.make_durable(effects, Vec::new(), Flush::OutputsFirst, shutdown)
                .await?;
        }
        Ok(())
    }

    /// Restores `partitions` of every processor, the changelogs read side by side, then
    /// makes durable what the processors emit again on resuming; `false` if shutdown came
    /// first.
    async fn restore(
        &mut self,
        partitions: &[i32],
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<bool, TaskError> {
        // A broker error is always an outage here: only shutdown ends the wait.
        let mut backoff = kafka::Backoff::default();
        while let Err(err) = self.read_changelogs(partitions).await {
            tracing::warn!(error = %err, "restoring processor state failed; retrying");
            if backoff.sleep(shutdown).await {
                return Ok(false);
            }
        }
        let Some(committed) = self.committed(partitions, shutdown).await else {
            return Ok(false);
        };
        let mut effects = Effects::default();
        for (index, processor) in self.chain.iter_mut().enumerate() {
            for partition in partitions {
                let from = committed.get(partition).cloned().unwrap_or_default();
                processor.resume(index, *partition, &from, &mut effects);
            }
        }
        if !self
            .make_durable(effects, Vec::new(), Flush::Together, shutdown)
            .await?
        {
            return Ok(false);
        }
        self.restored.extend(partitions.iter().copied());
        Ok(true)
    }

    /// Reads every processor's changelog of `partitions` into its state, side by side,
    /// applying the entries as they come (the whole changelog is never held at once).
    async fn read_changelogs(&mut self, partitions: &[i32]) -> Result<(), KafkaError> {
        for processor in &mut self.chain {
            for &partition in partitions {
                processor.restore_begin(partition);
            }
        }
        let reads = self
            .changelogs
            .iter()
            .enumerate()
            .map(|(index, changelog)| changelog.read(partitions).map(move |chunk| (index, chunk)));
        let mut reads = futures::stream::select_all(reads);
        let mut entries = vec![0usize; self.chain.len()];
        while let Some((index, chunk)) = reads.next().await {
            let processor = &mut self.chain[index];
            let chunk = chunk?;
            entries[index] += chunk.len();
            for entry in chunk {
                processor.restore_entry(entry.partition, entry.key, entry.value.as_deref());
            }
        }
        for (processor, entries) in self.chain.iter().zip(entries) {
            tracing::info!(
                processor = processor.id(),
                ?partitions,
                entries,
                "state restored"
            );
        }
        Ok(())
    }

    /// Per partition, the group's committed offset of each input topic (topics without one
    /// are left out), waiting out an unreachable coordinator; `None` on shutdown.
    async fn committed(
        &self,
        partitions: &[i32],
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<HashMap<i32, HashMap<String, i64>>> {
        let mut wanted = rdkafka::TopicPartitionList::new();
        for topic in self.inputs.keys() {
            for &partition in partitions {
                wanted.add_partition(topic, partition);
            }
        }
        let list = kafka::retrying("reading the committed offsets", shutdown, || async {
            // A short blocking call to the group coordinator, once per restore.
            tokio::task::block_in_place(|| {
                self.consumer
                    .committed_offsets(wanted.clone(), Duration::from_secs(10))
            })
        })
        .await?
        .ok()?;
        let mut committed: HashMap<i32, HashMap<String, i64>> = HashMap::new();
        for element in list.elements() {
            if let rdkafka::Offset::Offset(offset) = element.offset() {
                committed
                    .entry(element.partition())
                    .or_default()
                    .insert(element.topic().to_string(), offset);
            }
        }
        Some(committed)
    }

    /// Decodes a record for the chain, waiting out a registry outage; `None` on shutdown,
    /// `Some(Err)` if it can never be decoded.
    async fn decode(
        &self,
        message: &OwnedMessage,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<Result<Record, CodecError>> {
        let (kind, _) = self.inputs[message.topic()];
        let payload = message.payload().unwrap_or_default();
        let event = kafka::retrying(
            "decoding a record through the schema registry",
            shutdown,
            || Decoded::decode(&self.codec, kind, payload),
        )
        .await?;
        Some(event.map(|event| Record {
            topic: message.topic().to_string(),
            partition: message.partition(),
            offset: message.offset(),
            raw: RawRecord {
                topic: message.topic().to_string(),
                key: message.key().map(<[u8]>::to_vec),
                payload: message.payload().map(<[u8]>::to_vec),
                headers: kafka::headers_of(message),
                partition: None,
            },
            trace: kafka::trace_of(message),
            event,
        }))
    }

    /// Publishes emitted records, dead letters and changelog writes (in one flush, or the
    /// changelog writes after the rest is acknowledged), waiting out broker outages:
    /// skipping one would lose data, and stopping halfway is safe because the offsets are
    /// not stored yet. `false` if shutdown interrupted it; an error the broker will never
    /// accept stops the task.
    async fn make_durable(
        &self,
        effects: Effects,
        dead_letters: Vec<(&OwnedMessage, String)>,
        flush: Flush,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<bool, TaskError> {
        let mut records = Vec::with_capacity(effects.emit.len() + dead_letters.len());
        for emit in effects.emit {
            match emit {
                Emit::Raw(raw) => records.push(raw),
                Emit::Available(topic, event, trace) => {
                    let encoded = kafka::retrying("encoding inventory.available", shutdown, || {
                        self.codec.encode(&topic, event.as_ref())
                    })
                    .await;
                    let payload = match encoded {
                        None => return Ok(false),
                        Some(result) => result?,
                    };
                    records.push(RawRecord {
                        topic,
                        key: Some(event.sku.clone().into_bytes()),
                        payload: Some(payload),
                        headers: vec![kafka::headers::trace_header(&trace)],
                        partition: None,
                    });
                }
            }
        }
        for (message, error) in dead_letters {
            let dlq = &self.inputs[message.topic()].1;
            metrics::counter!(m::DEAD_LETTERED, m::COMPONENT_ID => self.name.clone(), m::COMPONENT_TYPE => "processor").increment(1);
            tracing::warn!(topic = message.topic(), offset = message.offset(), error = %error, "dead-lettering undecodable record");
            records.push(
                DeadLetter::new(Failure::Undecodable, &error, &self.name).of_record(message, dlq),
            );
        }
        let writes = effects
            .changelog
            .into_iter()
            .map(|(index, partition, key, value)| RawRecord {
                topic: self.changelogs[index].topic().to_string(),
                key: Some(key.into_bytes()),
                payload: value,
                headers: Vec::new(),
                partition: Some(partition),
            });
        match flush {
            Flush::Together => {
                records.extend(writes);
                self.send_all(records, shutdown).await.map_err(Into::into)
            }
            Flush::OutputsFirst => Ok(self.send_all(records, shutdown).await?
                && self.send_all(writes.collect(), shutdown).await?),
        }
    }

    /// Sends every record, re-sending the ones that failed until all are acknowledged;
    /// `false` if shutdown interrupted it.
    async fn send_all(
        &self,
        records: Vec<RawRecord>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<bool, PublishError> {
        let pending = std::sync::Mutex::new(records);
        let sent = kafka::retrying("publishing a batch's effects", shutdown, || async {
            let batch = std::mem::take(&mut *pending.lock().unwrap_or_else(|p| p.into_inner()));
            // Sends are queued in order, so records of one key keep their order.
            let results = join_all(batch.iter().cloned().map(|r| self.publisher.send(r))).await;
            let mut failed = Vec::new();
            let mut error: Option<PublishError> = None;
            for (record, result) in batch.into_iter().zip(results) {
                if let Err(err) = result {
                    failed.push(record);
                    // A failure that lasts is the one to report.
                    if error.as_ref().is_none_or(|e| e.is_retriable()) {
                        error = Some(err);
                    }
                }
            }
            if !failed.is_empty() {
                metrics::counter!(m::ERRORS, m::COMPONENT_ID => self.name.clone(), m::COMPONENT_TYPE => "processor",
                    m::ERROR_TYPE => "publish", m::STAGE => "emit").increment(failed.len() as u64);
            }
            *pending.lock().unwrap_or_else(|p| p.into_inner()) = failed;
            error.map_or(Ok(()), Err)
        })
        .await;
        match sent {
            None => {
                tracing::warn!(
                    "shutting down with unpublished effects; the batch will be re-processed after restart"
                );
                Ok(false)
            }
            Some(result) => result.map(|()| true),
        }
    }
}

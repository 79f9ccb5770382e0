//! The consumer task that runs one processor chain: consume a batch, process it record by
//! record, make its effects durable — emitted records, dead letters and every processor's
//! changelog writes in one flush, a single wait for the broker — then store the batch's
//! offsets. After a restore, each processor emits again what its state took from records at
//! or after the group's committed offsets (see the contract in [`super`]), before the first
//! batch of the partition. Records of inputs that must wait for a processor's first inputs
//! are held back, their offsets not stored, until those are read far enough
//! ([`FirstInputs`]).
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
    RawRecord, TrackingContext, TransactionError, Transactions,
};
use erpstream_connectors::metrics as m;
use erpstream_schemas::{Codec, CodecError, EventKind};
use futures::StreamExt;
use futures::future::join_all;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;

use super::reads_first::FirstInputs;
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
    /// The transactional producer cannot go on: another replica with the same
    /// `instance_id` fenced it, or the broker has no transactions (`kafka.transactions`).
    #[error(
        "{0} (with kafka.transactions the broker must support transactions and every replica needs its own instance_id)"
    )]
    Transaction(TransactionError),
}

impl From<TransactionError> for TaskError {
    fn from(err: TransactionError) -> Self {
        TaskError::Transaction(err)
    }
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
    /// With `kafka.transactions`: the transaction calls of `publisher`, this chain's own
    /// transactional producer. Each batch's effects and input offsets then commit together.
    transactions: Option<Transactions>,
    codec: Codec,
    restored: HashSet<i32>,
    offsets: OffsetTracker,
    /// Holds records back until the processors' first inputs are read far enough.
    first: FirstInputs,
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
        let codec = publisher.codec().clone();
        let (transactions, publisher) = match &kafka_config.instance_id {
            Some(instance) if kafka_config.transactions => {
                let id = format!("{group}.{instance}");
                let (transactions, own) =
                    Transactions::new(kafka_config, &name, &id, codec.clone())?;
                (Some(transactions), own)
            }
            _ => (None, publisher),
        };
        let first_kinds: HashSet<EventKind> = chain
            .iter()
            .flat_map(|p| p.reads_first().iter().copied())
            .collect();
        let first = inputs
            .iter()
            .filter(|(_, kind, _)| first_kinds.contains(kind))
            .map(|(topic, _, _)| topic.clone())
            .collect();
        Ok(Self {
            name,
            consumer,
            inputs: inputs.into_iter().map(|(t, k, d)| (t, (k, d))).collect(),
            chain,
            changelogs,
            codec,
            publisher,
            transactions,
            restored: HashSet::new(),
            offsets: OffsetTracker::default(),
            first: FirstInputs::new(first),
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
        if !self.init_transactions(&mut shutdown).await? {
            return Ok(());
        }
        kafka::subscribe(&self.consumer, &topics)?;
        tracing::info!(task = %self.name, ?topics, transactions = self.transactions.is_some(),
            "processor chain started");
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pause = kafka::IdlePause::new(&self.consumer, &topics);
        loop {
            if self.first.holding() {
                // Records wait for others still to be fetched: not idle.
                pause.took();
            }
            let batch: Option<Vec<OwnedMessage>> = {
                let mut stream = self.consumer.stream().ready_chunks(MAX_BATCH);
                tokio::select! {
                    biased;
                    _ = kafka::shutdown_requested(&mut shutdown) => break,
                    _ = ticker.tick() => None,
                    () = pause.change(&self.consumer) => continue,
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
            pause.took();
            self.process_batch(batch, &mut shutdown).await?;
        }
        kafka::commit_stored(&self.consumer);
        Ok(())
    }

    /// Processes the records just `read` that may go now, and the held ones that may go
    /// with them ([`FirstInputs`]).
    async fn process_batch(
        &mut self,
        read: Vec<OwnedMessage>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), TaskError> {
        if !self
            .sync_assignment(read.iter().map(|m| m.partition()), shutdown)
            .await?
        {
            return Ok(());
        }
        let batch = self.first.admit(&self.consumer, read);
        if batch.is_empty() {
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
        let mut next: HashMap<(&str, i32), i64> = HashMap::new();
        for message in &batch {
            let at = next
                .entry((message.topic(), message.partition()))
                .or_default();
            *at = (*at).max(message.offset() + 1);
        }
        let mut offsets = TopicPartitionList::new();
        for ((topic, partition), next) in &next {
            offsets.add_partition_offset(topic, *partition, Offset::Offset(*next))?;
        }
        let dead_letters = dead_letters
            .into_iter()
            .map(|(message, error)| self.dead_letter(message, &error))
            .collect();
        if !self
            .make_durable(effects, dead_letters, Flush::Together, &offsets, shutdown)
            .await?
        {
            return Ok(());
        }
        if self.transactions.is_some() {
            // The offsets were committed with the transaction.
            for ((topic, partition), next) in next {
                self.queues.read_up_to(topic, partition, next);
            }
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

    /// Registers the transactional producer (aborting what this replica's previous run
    /// left open), waiting out an unreachable coordinator; `false` on shutdown.
    async fn init_transactions(
        &self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<bool, TaskError> {
        let Some(transactions) = &self.transactions else {
            return Ok(true);
        };
        let mut backoff = kafka::Backoff::default();
        loop {
            match transactions.init() {
                Ok(()) => return Ok(true),
                Err(err @ TransactionError::Retriable(_)) => {
                    tracing::warn!(task = %self.name, error = %err, "registering the transactional producer failed; retrying");
                    if backoff.sleep(shutdown).await {
                        return Ok(false);
                    }
                }
                Err(err) => return Err(err.into()),
            }
        }
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
            self.first.revoke(&topic, partition);
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

    /// Processes the held records that may go now (their wait can end without a record
    /// read: a position moving past transaction markers), then lets every processor make its
    /// time-driven changes and makes them durable.
    async fn tick(&mut self, shutdown: &mut watch::Receiver<bool>) -> Result<(), TaskError> {
        if self.first.holding() {
            self.process_batch(Vec::new(), shutdown).await?;
        }
        if !self.sync_assignment(std::iter::empty(), shutdown).await? {
            return Ok(());
        }
        let now = erpstream_schemas::now_millis();
        let mut effects = Effects::default();
        for (index, processor) in self.chain.iter_mut().enumerate() {
            processor.tick(index, now, &mut effects);
        }
        if !effects.emit.is_empty() || !effects.changelog.is_empty() {
            let none = TopicPartitionList::new();
            self.make_durable(effects, Vec::new(), Flush::OutputsFirst, &none, shutdown)
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
        for (partition, topics) in &committed {
            for (topic, offset) in topics {
                self.first.committed(topic, *partition, *offset);
            }
        }
        let mut effects = Effects::default();
        for (index, processor) in self.chain.iter_mut().enumerate() {
            for partition in partitions {
                let from = committed.get(partition).cloned().unwrap_or_default();
                processor.resume(index, *partition, &from, &mut effects);
            }
        }
        // Marked restored first: an aborted transaction below forgets them again.
        self.restored.extend(partitions.iter().copied());
        let none = TopicPartitionList::new();
        let nothing = effects.emit.is_empty() && effects.changelog.is_empty();
        if !nothing
            && !self
                .make_durable(effects, Vec::new(), Flush::Together, &none, shutdown)
                .await?
        {
            return Ok(false);
        }
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
        for processor in &mut self.chain {
            for &partition in partitions {
                processor.restore_end(partition);
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

    /// The dead letter of a record that can never be decoded.
    fn dead_letter(&self, message: &OwnedMessage, error: &str) -> RawRecord {
        let dlq = &self.inputs[message.topic()].1;
        metrics::counter!(m::DEAD_LETTERED, m::COMPONENT_ID => self.name.clone(), m::COMPONENT_TYPE => "processor").increment(1);
        tracing::warn!(topic = message.topic(), offset = message.offset(), error = %error, "dead-lettering undecodable record");
        DeadLetter::new(Failure::Undecodable, error, &self.name).of_record(message, dlq)
    }

    /// Publishes emitted records, dead letters and changelog writes, waiting out broker
    /// outages: skipping one would lose data. `false` if shutdown interrupted it, or — with
    /// transactions — if the transaction was aborted (the state is then restored again and
    /// the input read again from the committed offsets); an error the broker will never
    /// accept stops the task.
    ///
    /// Without transactions the records go in one flush, or the changelog writes after the
    /// rest is acknowledged (`flush`), and the caller stores the input offsets afterwards;
    /// stopping halfway is safe because they are not stored yet. With transactions,
    /// everything and `offsets` commit together.
    async fn make_durable(
        &mut self,
        effects: Effects,
        dead_letters: Vec<RawRecord>,
        flush: Flush,
        offsets: &TopicPartitionList,
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
        records.extend(dead_letters);
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
        if self.transactions.is_some() {
            records.extend(writes);
            return self.transact(records, offsets, shutdown).await;
        }
        match flush {
            Flush::Together => {
                records.extend(writes);
                self.send_all(records, shutdown).await.map_err(Into::into)
            }
            Flush::OutputsFirst => Ok(self.send_all(records, shutdown).await?
                && self.send_all(writes.collect(), shutdown).await?),
        }
    }

    /// Sends `records` and commits them with `offsets` in one transaction. A transaction
    /// that cannot commit is aborted and the task rewound ([`StreamTask::rewind`]): `false`,
    /// as on shutdown.
    async fn transact(
        &mut self,
        records: Vec<RawRecord>,
        offsets: &TopicPartitionList,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<bool, TaskError> {
        let Some(transactions) = &self.transactions else {
            return Ok(false);
        };
        transactions.begin()?;
        let mut pending = Vec::with_capacity(records.len());
        let mut failed: Option<PublishError> = None;
        for record in records {
            match self.publisher.enqueue(record).await {
                Ok(ack) => pending.push(ack),
                Err(err) => {
                    failed = Some(err);
                    break;
                }
            }
        }
        for result in join_all(pending).await {
            if let Err(err) = result {
                failed.get_or_insert(err);
            }
        }
        let mut backoff = kafka::Backoff::default();
        let mut offsets_sent = false;
        let committed = loop {
            if failed.is_some() {
                break Ok(false);
            }
            let step = if offsets_sent {
                transactions.commit()
            } else {
                transactions
                    .send_offsets(offsets, self.consumer.group_metadata().as_ref())
                    .inspect(|()| offsets_sent = true)
                    .and_then(|()| transactions.commit())
            };
            match step {
                Ok(()) => break Ok(true),
                Err(err @ TransactionError::Retriable(_)) => {
                    // A retried offset send sends them again; a retried commit resumes.
                    tracing::warn!(task = %self.name, error = %err, "committing the transaction failed; retrying");
                    if backoff.sleep(shutdown).await {
                        // Left open: the coordinator aborts it, or this replica's next run.
                        return Ok(false);
                    }
                }
                Err(err @ (TransactionError::Abortable(_) | TransactionError::NotMember)) => {
                    tracing::warn!(task = %self.name, error = %err, "transaction cannot commit");
                    break Ok(false);
                }
                Err(err) => break Err(err),
            }
        };
        let outcome = |outcome: &'static str| {
            metrics::counter!(m::TRANSACTIONS, m::COMPONENT_ID => self.name.clone(),
                m::OUTCOME => outcome)
            .increment(1);
        };
        match committed {
            Ok(true) => {
                outcome("committed");
                return Ok(true);
            }
            Ok(false) => {}
            Err(err) => return Err(err.into()),
        }
        if let Some(err) = &failed {
            metrics::counter!(m::ERRORS, m::COMPONENT_ID => self.name.clone(), m::COMPONENT_TYPE => "processor",
                m::ERROR_TYPE => "publish", m::STAGE => "emit").increment(1);
            if !err.is_retriable() {
                transactions.abort().ok();
                return Err(TaskError::Publish(failed.expect("checked")));
            }
            tracing::warn!(task = %self.name, error = %err, "a record of the transaction was not acknowledged");
        }
        let mut backoff = kafka::Backoff::default();
        loop {
            match transactions.abort() {
                Ok(()) => break,
                Err(err @ TransactionError::Retriable(_)) => {
                    tracing::warn!(task = %self.name, error = %err, "aborting the transaction failed; retrying");
                    if backoff.sleep(shutdown).await {
                        return Ok(false);
                    }
                }
                Err(err) => return Err(err.into()),
            }
        }
        outcome("aborted");
        tracing::info!(task = %self.name, "transaction aborted; restoring the state and reading again from the committed offsets");
        self.rewind(shutdown).await;
        Ok(false)
    }

    /// After an aborted transaction the state holds changes nothing made durable, and the
    /// consumer is past records whose offsets were not committed: every partition's state is
    /// forgotten (restored again before the next batch) and the consumer goes back to the
    /// committed offsets.
    async fn rewind(&mut self, shutdown: &mut watch::Receiver<bool>) {
        self.first.clear();
        let partitions: Vec<i32> = self.restored.drain().collect();
        for &partition in &partitions {
            for processor in &mut self.chain {
                processor.revoke(partition);
            }
        }
        let assigned: Vec<(String, i32)> = self.context().assignment();
        let mine: Vec<i32> = assigned
            .iter()
            .map(|(_, p)| *p)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let Some(committed) = self.committed(&mine, shutdown).await else {
            return;
        };
        for (topic, partition) in assigned {
            let offset = committed
                .get(&partition)
                .and_then(|topics| topics.get(&topic))
                .map_or(Offset::Beginning, |o| Offset::Offset(*o));
            let sought = tokio::task::block_in_place(|| {
                self.consumer
                    .seek(&topic, partition, offset, Duration::from_secs(10))
            });
            if let Err(err) = sought {
                // Revoked meanwhile, most likely: its next owner reads from the commit.
                tracing::warn!(task = %self.name, topic, partition, error = %err, "seeking back after an aborted transaction failed");
            }
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

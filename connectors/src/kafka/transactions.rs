//! A transactional producer for consume–transform–produce (`kafka.transactions`): the
//! records sent between [`Transactions::begin`] and [`Transactions::commit`] and the input
//! offsets handed to the commit become visible together, or — after
//! [`Transactions::abort`] — never. Consumers read with librdkafka's default
//! `isolation.level=read_committed`, so they never see an aborted record.
//!
//! The producer's `transactional.id` is stable per replica and chain, so a restarted replica
//! aborts what its previous run left open as soon as it starts, and the commit carries the
//! consumer group's metadata (KIP-447), so a replica that lost the partitions to another is
//! fenced instead of committing over it.
//!
//! librdkafka's transaction calls block the calling thread (they wait for the transaction
//! coordinator), so they run in `block_in_place`: they need tokio's multi-threaded runtime.

use std::time::Duration;

use erpstream_schemas::Codec;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaError, RDKafkaErrorCode};
use rdkafka::producer::Producer;

use super::{KafkaConfig, Publisher};

/// Most time a transaction may stay open before the coordinator aborts it on its own (a
/// replica that died mid-batch and is not restarted holds read_committed readers back this
/// long at most).
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(10);

/// What a failed transaction call means for the caller. The message carries librdkafka's
/// reason (it is not chained as a source, so a report shows it once).
#[derive(Debug, thiserror::Error)]
pub enum TransactionError {
    /// The transaction cannot commit (a send failed, the group rebalanced, a timeout): abort
    /// it and process its input again.
    #[error("the transaction must be aborted: {0}")]
    Abortable(KafkaError),
    /// Offsets were to be committed while the consumer is not a group member (between
    /// assignments): abort, like [`TransactionError::Abortable`].
    #[error("the transaction must be aborted: the consumer is not a member of its group")]
    NotMember,
    /// The same call may succeed if made again (the coordinator is moving or unreachable).
    #[error("transaction call failed, may be retried: {0}")]
    Retriable(KafkaError),
    /// The producer can never transact again: another instance with the same
    /// `transactional.id` fenced it, or the broker does not support transactions.
    #[error("the transactional producer failed for good: {0}")]
    Fatal(KafkaError),
}

impl TransactionError {
    fn of(err: KafkaError) -> Self {
        let rd: Option<&RDKafkaError> = match &err {
            KafkaError::Transaction(rd) => Some(rd),
            _ => None,
        };
        match rd {
            // librdkafka flags a broker without EndTxn as retriable; it never gets it.
            Some(rd) if rd.code() == RDKafkaErrorCode::UnsupportedFeature => {
                TransactionError::Fatal(err)
            }
            Some(rd) if rd.is_fatal() => TransactionError::Fatal(err),
            Some(rd) if rd.txn_requires_abort() => TransactionError::Abortable(err),
            Some(rd) if rd.is_retriable() => TransactionError::Retriable(err),
            // Unsupported by the broker, or a state the producer cannot leave.
            Some(_) => TransactionError::Fatal(err),
            None => TransactionError::Retriable(err),
        }
    }
}

/// The transaction calls of one transactional producer; its sends go through the
/// [`Publisher`] returned with it.
pub struct Transactions {
    publisher: Publisher,
    timeout: Duration,
}

impl Transactions {
    /// A transactional producer named `transactional_id` and the [`Publisher`] that sends
    /// through it. No I/O until [`Transactions::init`].
    pub fn new(
        config: &KafkaConfig,
        client_id: &str,
        transactional_id: &str,
        codec: Codec,
    ) -> Result<(Self, Publisher), KafkaError> {
        let timeout = TRANSACTION_TIMEOUT.max(config.delivery_timeout * 2);
        let publisher = Publisher::with(config, client_id, codec, |client| {
            client
                .set("transactional.id", transactional_id)
                .set("transaction.timeout.ms", timeout.as_millis().to_string());
        })?;
        Ok((
            Self {
                publisher: publisher.clone(),
                timeout,
            },
            publisher,
        ))
    }

    /// Registers the producer with its coordinator, aborting whatever an earlier producer
    /// with the same id left open (and fencing that producer).
    pub fn init(&self) -> Result<(), TransactionError> {
        self.call(|p, timeout| p.init_transactions(timeout))
    }

    /// Starts a transaction (local; no I/O).
    pub fn begin(&self) -> Result<(), TransactionError> {
        self.call(|p, _| p.begin_transaction())
    }

    /// Adds the consumer's `offsets` (the next offset to read, per partition) to the
    /// transaction; nothing to do for an empty list.
    pub fn send_offsets(
        &self,
        offsets: &TopicPartitionList,
        group: Option<&ConsumerGroupMetadata>,
    ) -> Result<(), TransactionError> {
        if offsets.count() == 0 {
            return Ok(());
        }
        let group = group.ok_or(TransactionError::NotMember)?;
        self.call(|p, timeout| p.send_offsets_to_transaction(offsets, group, timeout))
    }

    /// Commits the transaction; every record sent since [`begin`] must have been
    /// acknowledged or failed. After a [`TransactionError::Retriable`] the commit is still
    /// under way: call this again (not [`send_offsets`]).
    ///
    /// [`begin`]: Transactions::begin
    /// [`send_offsets`]: Transactions::send_offsets
    pub fn commit(&self) -> Result<(), TransactionError> {
        self.call(|p, timeout| p.commit_transaction(timeout))
    }

    /// Aborts the open transaction: nothing sent since [`Transactions::begin`] becomes
    /// visible.
    pub fn abort(&self) -> Result<(), TransactionError> {
        self.call(|p, timeout| p.abort_transaction(timeout))
    }

    fn call(
        &self,
        call: impl FnOnce(&rdkafka::producer::FutureProducer, Duration) -> Result<(), KafkaError>,
    ) -> Result<(), TransactionError> {
        let producer = self.publisher.producer();
        tokio::task::block_in_place(|| call(producer, self.timeout)).map_err(TransactionError::of)
    }
}

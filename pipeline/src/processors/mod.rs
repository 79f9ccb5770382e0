//! Stream processors: consume topics, keep keyed state, emit derived records.
//!
//! A chain of processors (`dedupe` → `inventory`) runs in one consumer task ([`task`]).
//! Contract of a [`Processor`]:
//! - Input is at-least-once: after a crash, records after the last committed offset come
//!   again. Processing a record twice must leave the same state and emit the same records
//!   (the same versions), so repeats are harmless downstream.
//! - State is per input partition and lives in memory, made durable through a changelog
//!   topic (partition `p` of the changelog belongs to input partition `p`); it is restored
//!   before the first record of a partition is processed and dropped when the partition is
//!   revoked.
//! - The task makes a batch's emitted records and changelog writes durable together (one
//!   flush), and only then stores the input offsets. A crash before every write is
//!   acknowledged re-runs the batch on whatever part of the state became durable, so a
//!   processor must (a) recognise an input record it already took in — by its offset, kept
//!   in its state — and change nothing for it, and (b) on [`Processor::resume`], emit again
//!   what its state took from records at or after the committed offsets, since those
//!   records' outputs may be the part that was lost. Emitted records carry versions, so an
//!   output that was durable after all is recognised downstream as a repeat.
//! - Time-driven changes ([`Processor::tick`]) have no input offset: their emitted records
//!   are made durable before their changelog writes.
//! - Inputs are read side by side, in order within each partition but with no order between
//!   topics, unless a processor names contracts that come first
//!   ([`Processor::reads_first`]).

pub mod dedupe;
pub mod inventory;
mod reads_first;
pub mod task;

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;

use erpstream_connectors::component::{Graph, Names, SnapshotService};
use erpstream_connectors::kafka::RawRecord;
use erpstream_connectors::validation::Problem;
use erpstream_schemas::{
    CatalogUpdate, DemandActual, EventKind, InventoryAdjustment, InventoryAvailable,
    InventoryChange, Reservation, SalesOrder, Traceparent,
};
use serde::de::DeserializeOwned;

/// An input record as processors see it: the raw record and its decoded event.
pub struct Record {
    /// Broker-side topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// The encoded record, for pass-through and dead-lettering.
    pub raw: RawRecord,
    /// Trace context of the record, if it carried one.
    pub trace: Option<Traceparent>,
    /// The decoded value.
    pub event: Decoded,
}

/// A decoded record value.
#[derive(Debug, Clone)]
pub enum Decoded {
    /// `inventory.change`.
    InventoryChange(InventoryChange),
    /// `catalog.update`.
    CatalogUpdate(CatalogUpdate),
    /// `sales.order`.
    SalesOrder(SalesOrder),
    /// `inventory.available`.
    InventoryAvailable(InventoryAvailable),
    /// `inventory.adjustment`.
    InventoryAdjustment(InventoryAdjustment),
    /// `inventory.reservation`.
    Reservation(Reservation),
    /// `demand.actual`.
    DemandActual(DemandActual),
}

/// `Decoded::$kind(codec.decode(payload))` for the kind at hand: variants are named as
/// their contracts.
macro_rules! decode_as {
    ($kind:expr, $codec:expr, $payload:expr, [$($variant:ident),*]) => {
        match $kind {
            $(EventKind::$variant => Decoded::$variant($codec.decode($payload).await?),)*
        }
    };
}

impl Decoded {
    /// Decodes a value of contract `kind`.
    pub async fn decode(
        codec: &erpstream_schemas::Codec,
        kind: EventKind,
        payload: &[u8],
    ) -> Result<Self, erpstream_schemas::CodecError> {
        Ok(decode_as!(
            kind,
            codec,
            payload,
            [
                InventoryChange,
                CatalogUpdate,
                SalesOrder,
                InventoryAvailable,
                InventoryAdjustment,
                Reservation,
                DemandActual
            ]
        ))
    }

    /// The event's idempotency key.
    pub fn idempotency_key(&self) -> &str {
        use erpstream_schemas::Event;
        match self {
            Decoded::InventoryChange(e) => e.idempotency_key(),
            Decoded::CatalogUpdate(e) => e.idempotency_key(),
            Decoded::SalesOrder(e) => e.idempotency_key(),
            Decoded::InventoryAvailable(e) => e.idempotency_key(),
            Decoded::InventoryAdjustment(e) => e.idempotency_key(),
            Decoded::Reservation(e) => e.idempotency_key(),
            Decoded::DemandActual(e) => e.idempotency_key(),
        }
    }
}

/// The input topics the state of one processor names, each once: its keys refer to a topic
/// by its place here (4 bytes, not a name per key).
#[derive(Debug, Clone, Default)]
pub struct Topics(Vec<Box<str>>);

impl Topics {
    /// The place of `name`, added if new.
    pub fn index(&mut self, name: &str) -> u32 {
        match self.0.iter().position(|t| **t == *name) {
            Some(i) => i as u32,
            None => {
                self.0.push(Box::from(name));
                (self.0.len() - 1) as u32
            }
        }
    }

    /// The name at `index` (a place [`Topics::index`] gave).
    pub fn name(&self, index: u32) -> &str {
        &self.0[index as usize]
    }
}

/// A record a processor asks to publish.
pub enum Emit {
    /// A new `inventory.available` state on the broker-side topic.
    Available(String, Box<InventoryAvailable>, Traceparent),
    /// An input record passed on unchanged.
    Raw(RawRecord),
}

/// What processing a batch asks the task to make durable.
#[derive(Default)]
pub struct Effects {
    /// Records to publish, in order.
    pub emit: Vec<Emit>,
    /// Changelog writes: (processor index, partition, key, value or tombstone).
    pub changelog: Vec<(usize, i32, String, Option<Vec<u8>>)>,
}

/// One stage of a chain. See the module documentation for the contract.
pub trait Processor: Send + Sync {
    /// The processor's id in the topology.
    fn id(&self) -> &str;
    /// Starts restoring `partition`: its state is emptied, and [`restore_entry`] gives it the
    /// changelog's records.
    ///
    /// [`restore_entry`]: Processor::restore_entry
    fn restore_begin(&mut self, partition: i32);
    /// One changelog record of `partition`, in changelog order: it replaces what an earlier
    /// one for `key` set; `None` deletes the key.
    fn restore_entry(&mut self, partition: i32, key: String, value: Option<&[u8]>);
    /// Every changelog record of `partition` was given: the state may settle (e.g. pack
    /// what it built entry by entry).
    fn restore_end(&mut self, _partition: i32) {}
    /// Replaces the state of `partition` with the changelog's latest values.
    fn restore(&mut self, partition: i32, entries: HashMap<String, Vec<u8>>) {
        self.restore_begin(partition);
        for (key, value) in entries {
            self.restore_entry(partition, key, Some(&value));
        }
        self.restore_end(partition);
    }
    /// Forgets the state of a revoked partition.
    fn revoke(&mut self, partition: i32);
    /// Processes one record. `index` is this processor's place in the chain (for changelog
    /// writes). Returns whether the record goes on to the next processor.
    fn process(&mut self, index: usize, record: &Record, effects: &mut Effects) -> bool;
    /// Called after [`restore`](Processor::restore) with, per input topic of the chain, the
    /// offset of `partition` the chain will read from (the group's committed offset; a topic
    /// missing has none). A batch's emitted records and changelog writes become durable
    /// together, so a crash can leave state taken from records at or after those offsets
    /// whose emitted records were lost: the processor emits what that state says again.
    fn resume(
        &mut self,
        _index: usize,
        _partition: i32,
        _from: &HashMap<String, i64>,
        _effects: &mut Effects,
    ) {
    }
    /// Called about once a second between batches, for time-driven changes (expiry).
    /// `now` is epoch ms.
    fn tick(&mut self, _index: usize, _now: i64, _effects: &mut Effects) {}
    /// Contracts whose records on a partition must be processed before any record of the
    /// chain's other inputs that was read after they were written there (see
    /// [`reads_first`]); the task holds the others back until then.
    fn reads_first(&self) -> &'static [EventKind] {
        &[]
    }
}

/// A processor type, implemented on its configuration (deserialized from the entry's
/// settings, `type:` removed). The pipeline's registry maps `type:` names to these.
///
/// A chain starts at a processor that reads topics; the next one reads the previous one by
/// id and sees every record the previous one let through ([`Processor::process`] returned
/// `true`). The built [`Processor`] keeps the contract in the module documentation.
pub trait ProcessorConfig: DeserializeOwned + Debug + Clone + Send + Sync + 'static {
    /// The `type:` name.
    const TYPE: &'static str;

    /// Checks the settings alone: no I/O, every problem with its path below `at`.
    fn validate(&self, at: &str) -> Vec<Problem>;

    /// Topics or processor ids it reads.
    fn inputs(&self) -> &[String];

    /// The logical topic it writes, if any.
    fn output(&self) -> Option<&str>;

    /// The contracts it takes.
    fn accepts(&self) -> &'static [EventKind];

    /// The contracts it writes or lets through to the next processor, given those it reads.
    fn produces(&self, inputs: &[EventKind]) -> Vec<EventKind>;

    /// Whether another processor may read it by id (it lets records through rather than
    /// writing a topic of its own).
    fn chains(&self) -> bool {
        self.output().is_none()
    }

    /// Whether its built form offers a snapshot of its state ([`Built::snapshot`]).
    fn keeps_snapshot(&self) -> bool {
        false
    }

    /// Checks against the rest of the topology (co-partitioning of what it writes); no I/O.
    fn check(&self, _at: &str, _graph: &dyn Graph) -> Vec<Problem> {
        Vec::new()
    }

    /// Builds processor `id`.
    fn build(&self, id: &str, names: &Names) -> Built;
}

/// A built processor, and the snapshot of its state it offers other components.
pub struct Built {
    /// The stage to run in its chain.
    pub processor: Box<dyn Processor>,
    /// Its state as a snapshot service (`storefront_api`'s `snapshot:` names it).
    pub snapshot: Option<Arc<dyn SnapshotService>>,
    /// A read copy of its state for every partition, which the runtime keeps following the
    /// processor's changelog (on every replica, whichever partitions the replica owns).
    pub copy: Option<Box<dyn Follower>>,
}

/// A read copy of a processor's state, fed with its whole changelog as it is written.
pub trait Follower: Send {
    /// The changelog's partitions, before any record.
    fn partitions(&mut self, partitions: &[i32]);
    /// Records, in changelog order per partition (a later one for a key replaces an earlier
    /// one; `None` deletes the key).
    fn apply(&mut self, entries: Vec<erpstream_connectors::kafka::Entry>);
    /// `partition` holds everything its changelog held when following began.
    fn caught_up(&mut self, partition: i32);
}

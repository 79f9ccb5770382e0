//! Inputs read first ([`Processor::reads_first`](super::Processor::reads_first)).
//!
//! A chain's input topics are fetched side by side, with no order between them: after a
//! restart, a backlog of ERP figures can come before the holds acknowledged before those
//! figures were even sent, and the figure would show the held units as available until the
//! holds come. A processor names the contracts that must come first; the task then keeps
//! this order on each partition `p`:
//!
//! > a record of another input is processed only after every record of a first input that
//! > was written to partition `p` before it was read.
//!
//! Those records lie below the first input's high watermark of `p` read just after the
//! record. So such a record is held, with that watermark, until the consumer's position on
//! the first input's partition reaches it; records of the first inputs are never held.
//! A held record's offset is neither stored nor committed, so a crash reads it again, and
//! the records after it on its partition wait behind it. Records of first-input partitions
//! this consumer does not own are not waited for (the chain's inputs are co-partitioned, so
//! that happens only during a rebalance).
//!
//! The wait is one fetch of the first input's partition when it has news, and nothing when
//! it has none; the cost is one ListOffsets request per broker per batch.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use erpstream_connectors::kafka::{self, GroupConsumer};
use rdkafka::Offset;
use rdkafka::consumer::Consumer;
use rdkafka::message::{Message, OwnedMessage};

/// How long the task waits for the brokers' watermarks; without them the records stay held
/// and the look is tried again at the next batch or tick.
const WATERMARK_WAIT: Duration = Duration::from_secs(2);
/// A record held this long is logged (once per such period): a first input's partition is
/// not being fetched.
const LONG_WAIT: Duration = Duration::from_secs(30);

/// The order between a chain's first inputs and its other inputs (module documentation).
#[derive(Default)]
pub struct FirstInputs {
    /// The first inputs' broker-side topics; empty: nothing is ever held.
    topics: Vec<String>,
    /// Records of other inputs not processed yet, in the order they were read.
    held: VecDeque<Held>,
    /// Per first-input partition, the offset the group had committed when the partition was
    /// restored: the consumer's position before it hands out a record.
    committed: HashMap<(String, i32), i64>,
    /// When a long wait was last logged.
    warned: Option<Instant>,
}

struct Held {
    message: OwnedMessage,
    read_at: Instant,
    /// Per first input (as in `topics`), its high watermark on the record's partition just
    /// after the record was read; `None` until the brokers answered.
    ends: Option<Vec<i64>>,
}

impl FirstInputs {
    /// Orders the first inputs `topics` (broker-side) before the chain's others.
    pub fn new(topics: Vec<String>) -> Self {
        Self {
            topics,
            ..Self::default()
        }
    }

    /// Whether records are held.
    pub fn holding(&self) -> bool {
        !self.held.is_empty()
    }

    /// The group's committed offset of a first input's partition, read at its restore.
    pub fn committed(&mut self, topic: &str, partition: i32, offset: i64) {
        if self.topics.iter().any(|t| t == topic) {
            self.committed
                .insert((topic.to_string(), partition), offset);
        }
    }

    /// Forgets what was read from a revoked partition: its next owner reads it again.
    pub fn revoke(&mut self, topic: &str, partition: i32) {
        self.held
            .retain(|h| h.message.partition() != partition || h.message.topic() != topic);
        self.committed.remove(&(topic.to_string(), partition));
    }

    /// Forgets every held record: the consumer went back to the committed offsets.
    pub fn clear(&mut self) {
        self.held.clear();
    }

    /// Takes the records just read and returns the ones to process now, in order: the first
    /// inputs' records, then the held records whose partition's first inputs are read far
    /// enough (on each partition, in the order they were read, stopping at the first that
    /// must still wait).
    pub fn admit(
        &mut self,
        consumer: &GroupConsumer,
        read: Vec<OwnedMessage>,
    ) -> Vec<OwnedMessage> {
        if self.topics.is_empty() {
            return read;
        }
        let mut now = Vec::with_capacity(read.len());
        for message in read {
            if self.topics.iter().any(|t| t == message.topic()) {
                now.push(message);
            } else {
                self.held.push_back(Held {
                    message,
                    read_at: Instant::now(),
                    ends: None,
                });
            }
        }
        if self.held.is_empty() {
            return now;
        }
        self.measure(consumer);
        let Some(standing) = self.standing(consumer) else {
            return now;
        };
        let mut waiting: HashSet<(String, i32)> = HashSet::new();
        let mut kept = VecDeque::with_capacity(self.held.len());
        for held in std::mem::take(&mut self.held) {
            let own = (held.message.topic().to_string(), held.message.partition());
            if !waiting.contains(&own) && self.read_far_enough(&held, &standing) {
                now.push(held.message);
            } else {
                waiting.insert(own);
                kept.push_back(held);
            }
        }
        self.held = kept;
        self.warn_if_long(&standing);
        now
    }

    /// Logs the oldest held record if it has waited [`LONG_WAIT`] (at most once per
    /// [`LONG_WAIT`]).
    fn warn_if_long(&mut self, standing: &HashMap<(String, i32), i64>) {
        let Some(oldest) = self.held.front() else {
            return;
        };
        let waited = oldest.read_at.elapsed();
        if waited < LONG_WAIT || self.warned.is_some_and(|at| at.elapsed() < LONG_WAIT) {
            return;
        }
        self.warned = Some(Instant::now());
        let partition = oldest.message.partition();
        let positions: Vec<(&str, Option<&i64>)> = self
            .topics
            .iter()
            .map(|t| (t.as_str(), standing.get(&(t.clone(), partition))))
            .collect();
        tracing::warn!(topic = oldest.message.topic(), partition, offset = oldest.message.offset(),
            waited_s = waited.as_secs(), watermarks = ?oldest.ends, ?positions, held = self.held.len(),
            "records wait for the first inputs to be read up to the watermarks they had");
    }

    /// Reads the first inputs' high watermarks of the partitions of held records that have
    /// none yet (one request per broker).
    fn measure(&mut self, consumer: &GroupConsumer) {
        let partitions: HashSet<i32> = self
            .held
            .iter()
            .filter(|h| h.ends.is_none())
            .map(|h| h.message.partition())
            .collect();
        if partitions.is_empty() {
            return;
        }
        let wanted: Vec<(String, i32)> = partitions
            .iter()
            .flat_map(|&p| self.topics.iter().map(move |t| (t.clone(), p)))
            .collect();
        let list = match kafka::list_offsets(consumer, wanted.iter(), Offset::End, WATERMARK_WAIT) {
            Ok(list) => list,
            Err(err) => {
                return tracing::debug!(error = %err,
                    "watermarks of the first inputs unknown; the records wait");
            }
        };
        let mut ends: HashMap<i32, Vec<i64>> = HashMap::new();
        for &partition in &partitions {
            let found: Option<Vec<i64>> = self
                .topics
                .iter()
                .map(|topic| {
                    list.find_partition(topic, partition)
                        .filter(|e| e.error().is_ok())
                        .and_then(|e| e.offset().to_raw())
                        .filter(|offset| *offset >= 0)
                })
                .collect();
            if let Some(found) = found {
                ends.insert(partition, found);
            }
        }
        for held in self.held.iter_mut().filter(|h| h.ends.is_none()) {
            held.ends = ends.get(&held.message.partition()).cloned();
        }
    }

    /// Per first-input partition this consumer owns, the offset of the next record it hands
    /// out; `None` if the client cannot say.
    fn standing(&self, consumer: &GroupConsumer) -> Option<HashMap<(String, i32), i64>> {
        let mut standing = HashMap::new();
        let positions = consumer.position().ok()?;
        let mut unknown = Vec::new();
        for element in positions.elements() {
            let tp = (element.topic().to_string(), element.partition());
            if !self.topics.contains(&tp.0) {
                continue;
            }
            match element.offset() {
                Offset::Offset(offset) => {
                    standing.insert(tp, offset);
                }
                // Nothing handed out since the assignment: the consumer starts at the
                // committed offset, or at the first record the partition still has.
                _ => unknown.push(tp),
            }
        }
        if !unknown.is_empty() {
            let first =
                kafka::list_offsets(consumer, unknown.iter(), Offset::Beginning, WATERMARK_WAIT)
                    .ok();
            for tp in unknown {
                let start = first
                    .as_ref()
                    .and_then(|l| l.find_partition(&tp.0, tp.1))
                    .and_then(|e| e.offset().to_raw())
                    .unwrap_or(0);
                let committed = self.committed.get(&tp).copied().unwrap_or(0);
                standing.insert(tp, committed.max(start));
            }
        }
        Some(standing)
    }

    /// Whether the consumer's position on each first input's partition of `held` reached
    /// the watermark it had when `held` was read (partitions it does not own are not waited
    /// for).
    fn read_far_enough(&self, held: &Held, standing: &HashMap<(String, i32), i64>) -> bool {
        let Some(ends) = &held.ends else {
            return false;
        };
        let partition = held.message.partition();
        self.topics.iter().zip(ends).all(|(topic, end)| {
            standing
                .get(&(topic.clone(), partition))
                .is_none_or(|at| at >= end)
        })
    }
}

//! Which input offsets a consumer may store.

use std::collections::{BTreeMap, HashMap};

use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};

/// Per-partition progress of a consumer whose records finish out of order.
///
/// A record is *taken* with the number of effects it still has to make durable (deliveries,
/// dead letters, rows); it holds back its partition's offset until every one of them is
/// [`done`](Self::done). [`store`](Self::store) stores, per partition, the first offset not
/// yet done, so a stored offset never passes a record whose effects (or an earlier record's)
/// could still be lost.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<(String, i32), Progress>,
}

#[derive(Debug)]
struct Progress {
    /// Offsets taken and not yet done, with their pending effect counts.
    outstanding: BTreeMap<i64, u32>,
    /// One past the highest offset taken.
    next: i64,
    /// The offset last stored.
    stored: i64,
}

impl OffsetTracker {
    /// Record `offset` of `topic`/`partition` was taken with `pending` effects to make
    /// durable (0: nothing to do, it is done at once).
    pub fn take(&mut self, topic: &str, partition: i32, offset: i64, pending: u32) {
        let progress = self
            .partitions
            .entry((topic.to_string(), partition))
            .or_insert_with(|| Progress {
                outstanding: BTreeMap::new(),
                next: offset,
                stored: offset,
            });
        progress.next = progress.next.max(offset + 1);
        if pending > 0 {
            *progress.outstanding.entry(offset).or_default() += pending;
        }
    }

    /// One effect of the record at `offset` is durable.
    pub fn done(&mut self, topic: &str, partition: i32, offset: i64) {
        let Some(progress) = self.partitions.get_mut(&(topic.to_string(), partition)) else {
            return; // revoked meanwhile: the partition's new owner reads the record again
        };
        if let Some(count) = progress.outstanding.get_mut(&offset) {
            *count -= 1;
            if *count == 0 {
                progress.outstanding.remove(&offset);
            }
        }
    }

    /// Forgets a revoked partition: effects still finishing for it no longer count, and its
    /// records come again to whichever consumer owns it now.
    pub fn revoke(&mut self, topic: &str, partition: i32) {
        self.partitions.remove(&(topic.to_string(), partition));
    }

    /// Per partition, the offset that became safe to store since the last call (the first
    /// offset not yet done).
    pub fn advanced(&mut self) -> Vec<((String, i32), i64)> {
        let mut out = Vec::new();
        for (tp, progress) in &mut self.partitions {
            let safe = progress
                .outstanding
                .keys()
                .next()
                .copied()
                .unwrap_or(progress.next);
            if safe > progress.stored {
                progress.stored = safe;
                out.push((tp.clone(), safe));
            }
        }
        out
    }

    /// Stores the [`advanced`](Self::advanced) offsets with `consumer` (committed by the
    /// client's auto-commit and at shutdown) and returns them (for the admission gate's queue
    /// watch).
    pub fn store<C: Consumer<X>, X: rdkafka::consumer::ConsumerContext>(
        &mut self,
        consumer: &C,
    ) -> Vec<((String, i32), i64)> {
        let advanced = self.advanced();
        if advanced.is_empty() {
            return advanced;
        }
        let mut list = TopicPartitionList::new();
        for ((topic, partition), next) in &advanced {
            let _ = list.add_partition_offset(topic, *partition, Offset::Offset(*next));
        }
        if let Err(err) = consumer.store_offsets(&list) {
            tracing::debug!(error = %err, "offset store refused (partition revoked?)");
        }
        advanced
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offset_waits_for_every_earlier_record_of_its_partition() {
        let mut t = OffsetTracker::default();
        t.take("a", 0, 10, 1);
        t.take("a", 0, 11, 2);
        t.take("a", 0, 12, 0);
        t.take("a", 1, 5, 0);
        assert_eq!(t.advanced(), vec![(("a".into(), 1), 6)]);
        t.done("a", 0, 11);
        t.done("a", 0, 11);
        assert!(t.advanced().is_empty(), "offset 10 is still outstanding");
        t.done("a", 0, 10);
        assert_eq!(t.advanced(), vec![(("a".into(), 0), 13)]);
        assert!(t.advanced().is_empty(), "nothing new since");
    }

    #[test]
    fn a_partially_done_record_holds_its_offset() {
        let mut t = OffsetTracker::default();
        t.take("a", 0, 3, 2);
        t.take("a", 0, 4, 0);
        t.done("a", 0, 3);
        assert!(
            t.advanced().is_empty(),
            "one of its two effects is outstanding"
        );
        t.done("a", 0, 3);
        assert_eq!(t.advanced(), vec![(("a".into(), 0), 5)]);
    }

    #[test]
    fn a_revoked_partition_starts_afresh() {
        let mut t = OffsetTracker::default();
        t.take("a", 0, 3, 1);
        t.revoke("a", 0);
        t.done("a", 0, 3);
        assert!(t.advanced().is_empty());
        t.take("a", 0, 7, 0);
        assert_eq!(t.advanced(), vec![(("a".into(), 0), 8)]);
    }
}

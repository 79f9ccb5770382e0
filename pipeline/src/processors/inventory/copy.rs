//! The read copy: every partition's inventory state, followed from the changelog on every
//! replica, so the snapshot API (and `erpstream reconcile` through it) answers for every sku
//! whichever replica is asked. It lags the owner by a changelog write and a fetch (see
//! [`Changelog::follow`](erpstream_connectors::kafka::Changelog::follow)); the snapshot
//! serves the partitions this replica owns from the live state instead.

use compact_str::CompactString;
use erpstream_connectors::kafka::Entry;

use super::{InventoryView, SkuState};
use crate::processors::{Follower, Topics};

/// An inventory state kept from the changelog, read-only.
#[derive(Default)]
pub struct ReadCopy {
    view: InventoryView,
    topics: Topics,
}

impl ReadCopy {
    /// The copy as the snapshot reads it.
    pub fn view(&self) -> InventoryView {
        self.view.clone()
    }
}

impl Follower for ReadCopy {
    fn partitions(&mut self, partitions: &[i32]) {
        let mut state = self.view.write();
        for &partition in partitions {
            state.entry(partition).or_default();
        }
    }

    fn apply(&mut self, entries: Vec<Entry>) {
        let mut state = self.view.write();
        for entry in entries {
            let skus = state.entry(entry.partition).or_default();
            let sku = CompactString::from(entry.key);
            match entry
                .value
                .map(|v| SkuState::from_bytes(&v, &mut self.topics))
            {
                Some(Ok(value)) => {
                    skus.insert(sku, Box::new(value));
                }
                Some(Err(err)) => {
                    tracing::error!(error = %err, sku = %sku, "unreadable inventory state in changelog; not copied");
                }
                None => {
                    skus.remove(&sku);
                }
            }
        }
    }

    fn caught_up(&mut self, partition: i32) {
        self.view.set_whole(partition, true);
    }
}

//! `inventory`: the materialized stock of every sku at every location.
//!
//! Per sku and location it keeps `on_hand` (the ERP's absolute figure), `reserved` (open
//! online orders the ERP has not reflected yet; filled by a later connector) and
//! `available = max(0, on_hand − reserved − safety_stock)`. Absolute ERP updates are ordered
//! by (ERP time, input offset): an update not newer than the one applied is ignored, so late,
//! repeated or replayed webhooks never move stock backwards. A relative adjustment older than
//! the last absolute figure is already included in it and is ignored too.
//!
//! Every change of a location's figures bumps its `version` and emits the sku's full state
//! to `inventory.available` (compacted, keyed by sku). Re-processing a record after a crash
//! starts from the restored state and so re-emits the same versions.

mod state;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};

use erpstream_connectors::metrics as m;
use erpstream_connectors::validation::Problem;
use erpstream_schemas::{InventoryAvailable, InventoryChange, Traceparent};
use rust_decimal::Decimal;
use serde::Deserialize;

pub use state::{LocationState, SkuState};

use super::{Decoded, Effects, Emit, Processor, Record};

/// Component type name in the topology.
pub const TYPE: &str = "inventory";

/// Configuration of an `inventory` processor.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventoryConfig {
    /// `inventory.change` topics, or a `dedupe` processor reading them.
    pub inputs: Vec<String>,
    /// Topic for `inventory.available` records.
    pub output: String,
    /// Stock held back from sale.
    #[serde(default)]
    pub safety_stock: SafetyStock,
}

/// Safety stock: a default and per-sku overrides.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SafetyStock {
    /// Held back for every sku without an override.
    #[serde(default)]
    pub default: Decimal,
    /// Per-sku overrides.
    #[serde(default)]
    pub skus: BTreeMap<String, Decimal>,
}

impl InventoryConfig {
    /// Checks the rules no type can express.
    pub fn validate(&self, at: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.safety_stock.default.is_sign_negative() && !self.safety_stock.default.is_zero() {
            problems.push(Problem::new(
                format!("{at}.safety_stock.default"),
                "must be >= 0",
            ));
        }
        for (sku, value) in &self.safety_stock.skus {
            if value.is_sign_negative() && !value.is_zero() {
                problems.push(Problem::new(
                    format!("{at}.safety_stock.skus.{sku}"),
                    "must be >= 0",
                ));
            }
        }
        problems
    }
}

/// A running `inventory` processor.
pub struct Inventory {
    id: String,
    output: String,
    safety_stock: SafetyStock,
    state: HashMap<i32, HashMap<String, SkuState>>,
}

impl Inventory {
    /// A processor emitting to the broker-side topic `output`.
    pub fn new(id: &str, config: &InventoryConfig, output: String) -> Self {
        Self {
            id: id.to_string(),
            output,
            safety_stock: config.safety_stock.clone(),
            state: HashMap::new(),
        }
    }

    /// The current state of a sku, if this instance owns its partition.
    pub fn sku(&self, sku: &str) -> Option<&SkuState> {
        self.state.values().find_map(|skus| skus.get(sku))
    }

    fn safety_for(&self, sku: &str) -> Decimal {
        self.safety_stock
            .skus
            .get(sku)
            .copied()
            .unwrap_or(self.safety_stock.default)
    }

    fn dropped(&self, reason: &'static str) {
        metrics::counter!(m::DROPPED_EVENTS, m::COMPONENT_ID => self.id.clone(),
            m::COMPONENT_TYPE => TYPE, m::REASON => reason)
        .increment(1);
    }

    fn apply(
        &mut self,
        index: usize,
        record: &Record,
        change: &InventoryChange,
        effects: &mut Effects,
    ) {
        let safety = self.safety_for(&change.sku);
        let now = erpstream_schemas::now_millis();
        let skus = self.state.entry(record.partition).or_default();
        let sku = skus.entry(change.sku.clone()).or_default();
        let outcome = sku.apply(change, record.offset, safety, now);
        match outcome {
            state::Applied::Stale => {
                self.dropped("stale");
                return;
            }
            state::Applied::Unchanged => {
                // Nothing to tell anyone, but the newer ERP time must survive a restart.
                let value = serde_json::to_vec(&*sku).ok();
                effects
                    .changelog
                    .push((index, record.partition, change.sku.clone(), value));
                self.dropped("unchanged");
                return;
            }
            state::Applied::Changed => {}
        }
        let available = InventoryAvailable {
            event_id: uuid::Uuid::now_v7().to_string(),
            idempotency_key: format!("{}@{}", change.sku, sku.version),
            source_system: change.source_system.clone(),
            source: self.id.clone(),
            occurred_at: change.occurred_at,
            ingested_at: change.ingested_at,
            sku: change.sku.clone(),
            locations: sku.to_locations(),
            version: sku.version,
        };
        let value = serde_json::to_vec(&*sku).ok();
        effects
            .changelog
            .push((index, record.partition, change.sku.clone(), value));
        let trace = record
            .trace
            .map(|t| t.child())
            .unwrap_or_else(Traceparent::new_root);
        effects.emit.push(Emit::Available(
            self.output.clone(),
            Box::new(available),
            trace,
        ));
        metrics::counter!(m::SENT_EVENTS, m::COMPONENT_ID => self.id.clone(), m::COMPONENT_TYPE => TYPE).increment(1);
    }
}

impl Processor for Inventory {
    fn id(&self) -> &str {
        &self.id
    }

    fn restore(&mut self, partition: i32, entries: HashMap<String, Vec<u8>>) {
        let skus = entries
            .into_iter()
            .filter_map(|(sku, value)| match serde_json::from_slice::<SkuState>(&value) {
                Ok(state) => Some((sku, state)),
                Err(err) => {
                    tracing::error!(error = %err, "unreadable inventory state in changelog; skipping key");
                    None
                }
            })
            .collect();
        self.state.insert(partition, skus);
    }

    fn revoke(&mut self, partition: i32) {
        self.state.remove(&partition);
    }

    fn process(&mut self, index: usize, record: &Record, effects: &mut Effects) -> bool {
        metrics::counter!(m::RECEIVED_EVENTS, m::COMPONENT_ID => self.id.clone(), m::COMPONENT_TYPE => TYPE).increment(1);
        if let Decoded::InventoryChange(change) = &record.event {
            self.apply(index, record, change, effects);
        }
        false
    }
}

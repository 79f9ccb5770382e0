//! `inventory`: the materialized stock of every sku at every location.
//!
//! Per sku and location it keeps `on_hand` (the ERP's absolute figure), `reserved` (open
//! holds of storefront orders and deductions the ERP has not reflected yet, from
//! `inventory.reservation` records) and `available = max(0, on_hand − reserved −
//! safety_stock)`. Absolute ERP updates are ordered by (ERP time, input offset): an update
//! not newer than the one applied is ignored, so late, repeated or replayed webhooks never
//! move stock backwards. A relative ERP adjustment older than the last absolute figure is
//! already included in it and is ignored too. How holds end is described in [`state`].
//!
//! Every change of a location's figures bumps its `version` and emits the sku's full state
//! to `inventory.available` (compacted, keyed by sku). Re-processing a record after a crash
//! starts from the restored state and so re-emits the same versions.
//!
//! The state is shared read-only with the snapshot API through an [`InventoryView`].

mod copy;
pub mod snapshot;
mod state;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use compact_str::CompactString;
use erpstream_connectors::component::{Graph, Names, SnapshotService};
use erpstream_connectors::metrics as m;
use erpstream_connectors::validation::Problem;
use erpstream_schemas::{EventKind, InventoryAvailable, Traceparent};
use rust_decimal::Decimal;
use serde::Deserialize;

pub use state::{Hold, LocationState, Locations, SkuState, StoredError};

use super::{Built, Decoded, Effects, Emit, Processor, ProcessorConfig, Record, Topics};

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
    /// How holds of storefront orders expire.
    #[serde(default)]
    pub reservations: ReservationConfig,
    /// Keep a read copy of every partition's state, followed from the changelog, so the
    /// snapshot API answers for every sku on every replica (the default). `false` saves that
    /// memory where one replica runs: the snapshot then holds this replica's partitions only.
    #[serde(default = "default_read_copy")]
    pub read_copy: bool,
}

fn default_read_copy() -> bool {
    true
}

/// How holds expire.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReservationConfig {
    /// A hold the ERP has not confirmed (write-back acknowledged, then a newer ERP figure)
    /// or cancelled within this time is released, and counted in
    /// `erpstream_reservations_expired_total`.
    #[serde(default = "default_expiry", with = "humantime_serde")]
    pub expiry: Duration,
    /// How long an ended hold is remembered, so a late repeat of it is not held again.
    #[serde(default = "default_remember", with = "humantime_serde")]
    pub remember: Duration,
}

impl Default for ReservationConfig {
    fn default() -> Self {
        Self {
            expiry: default_expiry(),
            remember: default_remember(),
        }
    }
}

fn default_expiry() -> Duration {
    Duration::from_secs(30 * 60)
}
fn default_remember() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

/// Metric: holds released because nothing confirmed them in time.
pub const RESERVATIONS_EXPIRED: &str = "erpstream_reservations_expired_total";
/// Metric: open holds, by processor.
pub const RESERVATIONS_OPEN: &str = "erpstream_reservations_open";

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

impl ProcessorConfig for InventoryConfig {
    const TYPE: &'static str = TYPE;

    /// Checks the rules no type can express.
    fn validate(&self, at: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.reservations.expiry.is_zero() {
            problems.push(Problem::new(
                format!("{at}.reservations.expiry"),
                "must be > 0",
            ));
        }
        if self.reservations.remember < self.reservations.expiry {
            problems.push(Problem::new(
                format!("{at}.reservations.remember"),
                "must be at least reservations.expiry",
            ));
        }
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

    fn inputs(&self) -> &[String] {
        &self.inputs
    }

    fn output(&self) -> Option<&str> {
        Some(&self.output)
    }

    fn accepts(&self) -> &'static [EventKind] {
        &[EventKind::InventoryChange, EventKind::Reservation]
    }

    fn produces(&self, _inputs: &[EventKind]) -> Vec<EventKind> {
        vec![EventKind::InventoryAvailable]
    }

    fn keeps_snapshot(&self) -> bool {
        true
    }

    /// Its output is keyed by sku like its inputs: equal partition counts.
    fn check(&self, at: &str, graph: &dyn Graph) -> Vec<Problem> {
        let Some(out) = graph.partitions(&self.output) else {
            return Vec::new();
        };
        self.inputs
            .iter()
            .filter(|input| graph.partitions(input).is_some_and(|p| p != out))
            .map(|input| {
                Problem::new(
                    format!("{at}.output"),
                    format!(
                        "{} must have as many partitions as {input} (both keyed by sku)",
                        self.output
                    ),
                )
            })
            .collect()
    }

    fn build(&self, id: &str, names: &Names) -> Built {
        let processor = Inventory::new(id, self, names.topic(&self.output));
        let copy = self.read_copy.then(copy::ReadCopy::default);
        let snapshot: Arc<dyn SnapshotService> = Arc::new(snapshot::Views {
            live: processor.view(),
            copy: copy.as_ref().map(copy::ReadCopy::view),
            expiry: self.reservations.expiry,
        });
        Built {
            processor: Box::new(processor),
            snapshot: Some(snapshot),
            copy: copy.map(|copy| Box::new(copy) as Box<dyn super::Follower>),
        }
    }
}

/// The skus of one partition, sku → state. The states are boxed: a B-tree node then holds
/// eleven 32-byte entries instead of eleven whole states (most of a half-full node of states
/// would be empty space).
pub type Skus = BTreeMap<CompactString, Box<SkuState>>;

/// Per input partition, its skus.
pub type Partitions = HashMap<i32, Skus>;

/// Read access to an inventory processor's state, shared with the snapshot API. Readers hold
/// the lock briefly (one chunk of skus at a time), so every sku is read whole.
#[derive(Clone, Default)]
pub struct InventoryView {
    partitions: Arc<RwLock<Partitions>>,
    /// The partitions whose state is whole: restored (for a read copy: caught up with the
    /// changelog).
    whole: Arc<Mutex<HashSet<i32>>>,
}

impl InventoryView {
    /// Locks for reading.
    pub fn read(&self) -> RwLockReadGuard<'_, Partitions> {
        self.partitions.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Partitions> {
        self.partitions.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the state of `partition` is whole.
    pub fn is_whole(&self, partition: i32) -> bool {
        self.whole_set().contains(&partition)
    }

    fn set_whole(&self, partition: i32, whole: bool) {
        let mut set = self.whole_set();
        if whole {
            set.insert(partition);
        } else {
            set.remove(&partition);
        }
    }

    fn whole_set(&self) -> std::sync::MutexGuard<'_, HashSet<i32>> {
        self.whole.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running `inventory` processor.
pub struct Inventory {
    id: String,
    output: String,
    safety_stock: SafetyStock,
    reservations: ReservationConfig,
    state: InventoryView,
    /// Per partition, skus with open or remembered holds (visited by `tick`).
    tracked: HashMap<i32, HashSet<CompactString>>,
    /// The input topics every sku's [`state::ReadUpTo`] refers to.
    topics: Topics,
    last_forget: i64,
    counters: Counters,
}

/// Metric handles, registered once (a `counter!` per record costs a registry lookup).
struct Counters {
    received: metrics::Counter,
    sent: metrics::Counter,
    stale: metrics::Counter,
    unchanged: metrics::Counter,
    /// Records read again after a crash that the state had already taken in.
    replayed: metrics::Counter,
}

impl Counters {
    fn new(id: &str) -> Self {
        let dropped = |reason: &'static str| {
            metrics::counter!(m::DROPPED_EVENTS, m::COMPONENT_ID => id.to_string(),
                m::COMPONENT_TYPE => TYPE, m::REASON => reason)
        };
        Self {
            received: metrics::counter!(m::RECEIVED_EVENTS, m::COMPONENT_ID => id.to_string(),
                m::COMPONENT_TYPE => TYPE),
            sent: metrics::counter!(m::SENT_EVENTS, m::COMPONENT_ID => id.to_string(),
                m::COMPONENT_TYPE => TYPE),
            stale: dropped("stale"),
            unchanged: dropped("unchanged"),
            replayed: dropped("replayed"),
        }
    }
}

/// What triggered an emitted state: for the record's provenance fields.
struct Cause<'a> {
    source_system: &'a str,
    occurred_at: i64,
    ingested_at: i64,
    trace: Option<Traceparent>,
    /// The input record (topic, offset), unless time drove the change.
    input: Option<(&'a str, i64)>,
}

impl Cause<'_> {
    /// erpstream's own change at `now` (epoch ms): time-driven, or a restored state.
    fn time(now: i64) -> Self {
        Cause {
            source_system: "erpstream",
            occurred_at: now,
            ingested_at: now,
            trace: None,
            input: None,
        }
    }
}

/// What a change did, as far as the processor is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The state's rules decided (see [`state::Applied`]).
    Applied(state::Applied),
    /// The input record was taken in before (read again after a crash).
    Replayed,
}

impl Inventory {
    /// A processor emitting to the broker-side topic `output`.
    pub fn new(id: &str, config: &InventoryConfig, output: String) -> Self {
        Self {
            id: id.to_string(),
            output,
            safety_stock: config.safety_stock.clone(),
            reservations: config.reservations.clone(),
            state: InventoryView::default(),
            tracked: HashMap::new(),
            topics: Topics::default(),
            last_forget: 0,
            counters: Counters::new(id),
        }
    }

    /// The shared view of this processor's state.
    pub fn view(&self) -> InventoryView {
        self.state.clone()
    }

    /// The current state of a sku, if this instance owns its partition.
    pub fn sku(&self, sku: &str) -> Option<SkuState> {
        self.state
            .read()
            .values()
            .find_map(|skus| skus.get(sku).map(|state| (**state).clone()))
    }

    fn safety_for(&self, sku: &str) -> Decimal {
        self.safety_stock
            .skus
            .get(sku)
            .copied()
            .unwrap_or(self.safety_stock.default)
    }

    /// Applies `change` to the state of `sku`, records what must become durable in
    /// `effects` and returns the outcome.
    fn update(
        &mut self,
        index: usize,
        partition: i32,
        sku: &str,
        cause: Cause<'_>,
        effects: &mut Effects,
        change: impl FnOnce(&mut SkuState, Decimal) -> state::Applied,
    ) -> Outcome {
        let safety = self.safety_for(sku);
        let input = cause
            .input
            .map(|(topic, offset)| (self.topics.index(topic), offset));
        let mut partitions = self.state.write();
        let skus = partitions.entry(partition).or_default();
        if !skus.contains_key(sku) {
            skus.insert(sku.into(), Box::default());
        }
        let state = skus.get_mut(sku).expect("inserted above");
        if let Some((topic, offset)) = &input
            && state.read.covers(*topic, *offset)
        {
            return Outcome::Replayed;
        }
        let outcome = change(state, safety);
        if outcome == state::Applied::Stale {
            return Outcome::Applied(outcome);
        }
        if let Some((topic, offset)) = &input {
            state.read.advance(*topic, *offset);
        }
        if state.has_any_holds() {
            self.tracked
                .entry(partition)
                .or_default()
                .insert(sku.into());
        }
        // Even when nothing is published, what was accepted must survive a restart.
        let value = Some(state.to_bytes(&self.topics));
        let available =
            (outcome == state::Applied::Changed).then(|| self.available(sku, state, &cause));
        drop(partitions);
        effects
            .changelog
            .push((index, partition, sku.to_string(), value));
        if let Some(available) = available {
            let trace = cause
                .trace
                .map(|t| t.child())
                .unwrap_or_else(Traceparent::new_root);
            effects.emit.push(Emit::Available(
                self.output.clone(),
                Box::new(available),
                trace,
            ));
            self.counters.sent.increment(1);
        }
        Outcome::Applied(outcome)
    }

    /// The `inventory.available` record of `sku`'s state.
    fn available(&self, sku: &str, state: &SkuState, cause: &Cause<'_>) -> InventoryAvailable {
        InventoryAvailable {
            event_id: uuid::Uuid::now_v7().to_string(),
            idempotency_key: format!("{sku}@{}", state.version),
            source_system: cause.source_system.to_string(),
            source: self.id.clone(),
            occurred_at: cause.occurred_at,
            ingested_at: cause.ingested_at,
            sku: sku.to_string(),
            locations: state.to_locations(),
            version: state.version,
        }
    }

    fn open_holds(&self) -> usize {
        let partitions = self.state.read();
        self.tracked
            .iter()
            .flat_map(|(p, skus)| skus.iter().map(move |s| (p, s)))
            .filter_map(|(p, s)| partitions.get(p)?.get(s))
            .map(|s| s.locations.values().map(|l| l.holds().len()).sum::<usize>())
            .sum()
    }
}

impl Processor for Inventory {
    fn id(&self) -> &str {
        &self.id
    }

    fn restore_begin(&mut self, partition: i32) {
        self.state.set_whole(partition, false);
        self.state.write().insert(partition, Default::default());
        self.tracked.insert(partition, HashSet::new());
    }

    fn restore_entry(&mut self, partition: i32, sku: String, value: Option<&[u8]>) {
        let state = match value.map(|value| SkuState::from_bytes(value, &mut self.topics)) {
            Some(Ok(state)) => Some(state),
            Some(Err(err)) => {
                tracing::error!(error = %err, sku, "unreadable inventory state in changelog; skipping key");
                None
            }
            None => None,
        };
        let sku = CompactString::from(sku);
        let tracked = self.tracked.entry(partition).or_default();
        let mut partitions = self.state.write();
        let skus = partitions.entry(partition).or_default();
        match state {
            Some(state) => {
                if state.has_any_holds() {
                    tracked.insert(sku.clone());
                } else {
                    tracked.remove(&sku);
                }
                skus.insert(sku, Box::new(state));
            }
            None => {
                tracked.remove(&sku);
                skus.remove(&sku);
            }
        }
    }

    /// Packs the restored B-tree: built entry by entry, its nodes are half to two thirds
    /// full; `append` merges two trees by filling new nodes from both, in order, freeing the
    /// old ones as it goes (no copy of the whole partition in between). A million skus:
    /// ~30 MB less.
    fn restore_end(&mut self, partition: i32) {
        let mut partitions = self.state.write();
        if let Some(skus) = partitions.get_mut(&partition)
            && let Some((sku, state)) = skus.pop_first()
        {
            let mut packed = Skus::from([(sku, state)]);
            packed.append(skus);
            *skus = packed;
        }
        drop(partitions);
        self.state.set_whole(partition, true);
    }

    fn revoke(&mut self, partition: i32) {
        self.state.set_whole(partition, false);
        self.state.write().remove(&partition);
        self.tracked.remove(&partition);
    }

    fn resume(
        &mut self,
        _index: usize,
        partition: i32,
        from: &HashMap<String, i64>,
        effects: &mut Effects,
    ) {
        let now = erpstream_schemas::now_millis();
        let cause = Cause::time(now);
        let partitions = self.state.read();
        let Some(skus) = partitions.get(&partition) else {
            return;
        };
        let unconfirmed = skus.iter().filter(|(_, state)| {
            state.version > 0
                && state.read.iter().any(|(topic, offset)| {
                    offset >= from.get(self.topics.name(topic)).copied().unwrap_or(-1)
                })
        });
        let mut again = 0;
        for (sku, state) in unconfirmed {
            let available = self.available(sku, state, &cause);
            effects.emit.push(Emit::Available(
                self.output.clone(),
                Box::new(available),
                Traceparent::new_root(),
            ));
            again += 1;
        }
        if again > 0 {
            tracing::info!(processor = %self.id, partition, skus = again,
                "emitting again the state taken from records after the committed offsets");
        }
    }

    /// A hold acknowledged before an ERP figure was sent is applied before the figure, or the
    /// figure would show the held units as available until the hold came.
    fn reads_first(&self) -> &'static [EventKind] {
        &[EventKind::Reservation]
    }

    fn process(&mut self, index: usize, record: &Record, effects: &mut Effects) -> bool {
        self.counters.received.increment(1);
        let now = erpstream_schemas::now_millis();
        let outcome = match &record.event {
            Decoded::InventoryChange(change) => {
                let cause = Cause {
                    source_system: &change.source_system,
                    occurred_at: change.occurred_at,
                    ingested_at: change.ingested_at,
                    trace: record.trace,
                    input: Some((&record.topic, record.offset)),
                };
                self.update(
                    index,
                    record.partition,
                    &change.sku,
                    cause,
                    effects,
                    |state, safety| state.apply(change, record.offset, safety, now),
                )
            }
            Decoded::Reservation(step) => {
                let cause = Cause {
                    source_system: &step.source_system,
                    occurred_at: step.occurred_at,
                    ingested_at: step.ingested_at,
                    trace: record.trace,
                    input: Some((&record.topic, record.offset)),
                };
                self.update(
                    index,
                    record.partition,
                    &step.sku,
                    cause,
                    effects,
                    |state, safety| state.reserve(step, safety, now),
                )
            }
            _ => return false,
        };
        match outcome {
            Outcome::Applied(state::Applied::Stale) => self.counters.stale.increment(1),
            Outcome::Applied(state::Applied::Unchanged) => self.counters.unchanged.increment(1),
            Outcome::Applied(state::Applied::Changed) => {}
            Outcome::Replayed => self.counters.replayed.increment(1),
        }
        false
    }

    fn tick(&mut self, index: usize, now: i64, effects: &mut Effects) {
        let deadline = now - self.reservations.expiry.as_millis() as i64;
        let forget = now - self.last_forget >= 60_000;
        let horizon = now - self.reservations.remember.as_millis() as i64;
        let held: Vec<(i32, CompactString)> = self
            .tracked
            .iter()
            .flat_map(|(p, skus)| skus.iter().map(move |s| (*p, s.clone())))
            .collect();
        let mut expired_total = 0;
        for (partition, sku) in held {
            let due = {
                let partitions = self.state.read();
                partitions
                    .get(&partition)
                    .and_then(|s| s.get(&sku))
                    .is_some_and(|s| {
                        s.locations.values().any(|l| {
                            l.holds().values().any(|h| h.held_at < deadline)
                                || (forget && l.ended().values().any(|at| *at < horizon))
                        })
                    })
            };
            if !due {
                continue;
            }
            let cause = Cause::time(now);
            let mut expired = 0;
            self.update(index, partition, &sku, cause, effects, |state, safety| {
                let (count, outcome) = state.expire(deadline, safety, now);
                expired = count;
                if forget {
                    state.forget_ended(horizon);
                }
                outcome
            });
            expired_total += expired;
            let still = self
                .state
                .read()
                .get(&partition)
                .and_then(|s| s.get(&sku))
                .is_some_and(|s| s.has_any_holds());
            if !still && let Some(skus) = self.tracked.get_mut(&partition) {
                skus.remove(&sku);
            }
        }
        if expired_total > 0 {
            tracing::warn!(
                processor = %self.id,
                expired = expired_total,
                "reservations expired without ERP confirmation"
            );
            metrics::counter!(RESERVATIONS_EXPIRED, m::COMPONENT_ID => self.id.clone())
                .increment(expired_total as u64);
        }
        if forget {
            self.last_forget = now;
        }
        metrics::gauge!(RESERVATIONS_OPEN, m::COMPONENT_ID => self.id.clone())
            .set(self.open_holds() as f64);
    }
}

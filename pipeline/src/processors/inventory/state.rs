//! Per-sku inventory state and the rules that change it.
//!
//! A location's `reserved` is the sum of its open holds. A hold is taken by a storefront
//! document (order line or negative adjustment) and ends in one of three ways:
//! - confirmed: the ERP acknowledged the write-back at time `t` and an absolute ERP figure
//!   with ERP time after `t` is applied (in either order) — that figure includes the sale;
//! - released: the ERP reported the order cancelled;
//! - expired: neither happened within the processor's `reservation_expiry`.
//!
//! Ended holds are remembered for a while (`ended`) so a repeated or late HOLD for the same
//! reference never takes the stock a second time.

mod stored;

use std::collections::BTreeMap;

use compact_str::CompactString;
use erpstream_schemas::{InventoryChange, LocationStock, Reservation, ReservationAction};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

pub use stored::StoredError;

/// The state of one sku, as written to the changelog ([`SkuState::to_bytes`]).
///
/// Kept small: a restored pipeline holds one per sku (a million skus must fit in a few
/// hundred MB), so the common case — one or two input topics, one location, no holds —
/// lives in this one allocation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SkuState {
    /// Bumped on every change of any location.
    pub version: i64,
    /// Per location.
    pub locations: Locations,
    /// Per input topic, the offset of the last record this state took in.
    pub read: ReadUpTo,
}

/// Per input topic, by its place in the processor's [`Topics`](crate::processors::Topics), the offset of the last
/// record a sku's state took in (`-1`: none from that topic): a record at or before it was
/// applied already (read again after a crash) and changes nothing. A processor reads a few
/// topics, so the offsets are a short vector indexed by place, the first two in place.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReadUpTo(SmallVec<[i64; 2]>);

impl ReadUpTo {
    /// Whether the record at `offset` of `topic` was taken in already.
    pub fn covers(&self, topic: u32, offset: i64) -> bool {
        self.0
            .get(topic as usize)
            .is_some_and(|read| *read >= 0 && *read >= offset)
    }

    /// Records that the record at `offset` of `topic` was taken in.
    pub fn advance(&mut self, topic: u32, offset: i64) {
        let place = topic as usize;
        if self.0.len() <= place {
            self.0.resize(place + 1, -1);
        }
        self.0[place] = self.0[place].max(offset);
    }

    /// Topics and offsets, for the topics a record was taken in from.
    pub fn iter(&self) -> impl Iterator<Item = (u32, i64)> {
        self.0
            .iter()
            .enumerate()
            .filter(|(_, read)| **read >= 0)
            .map(|(place, read)| (place as u32, *read))
    }

    /// How many topics a record was taken in from.
    fn len(&self) -> usize {
        self.iter().count()
    }
}

/// The locations of one sku, sorted by code. A sorted vector holding the first location
/// in place, not a map: most skus are held at one or a few locations, and a B-tree node
/// would cost ~2 KB per sku. In the JSON form (snapshots, changelog values of earlier
/// versions) it is an object `{code: state}`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Locations(SmallVec<[(CompactString, LocationState); 1]>);

impl Locations {
    fn find(&self, code: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(c, _)| c.as_str().cmp(code))
    }

    /// The state at `code`, created empty if missing.
    pub fn entry_or_default(&mut self, code: &str) -> &mut LocationState {
        let index = match self.find(code) {
            Ok(i) => i,
            Err(i) => {
                self.0.insert(i, (code.into(), LocationState::default()));
                i
            }
        };
        &mut self.0[index].1
    }

    /// Sets the state at `code`.
    pub fn insert(&mut self, code: &str, state: LocationState) {
        *self.entry_or_default(code) = state;
    }

    /// The state at `code`.
    pub fn get(&self, code: &str) -> Option<&LocationState> {
        self.find(code).ok().map(|i| &self.0[i].1)
    }

    /// Whether `code` is held.
    pub fn contains_key(&self, code: &str) -> bool {
        self.find(code).is_ok()
    }

    /// Codes and states, by code.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &LocationState)> {
        self.0.iter().map(|(c, l)| (c.as_str(), l))
    }

    /// States, by code.
    pub fn values(&self) -> impl Iterator<Item = &LocationState> {
        self.0.iter().map(|(_, l)| l)
    }

    /// Mutable states, by code.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut LocationState> {
        self.0.iter_mut().map(|(_, l)| l)
    }

    /// The codes, by code.
    fn codes(&self) -> Vec<CompactString> {
        self.0.iter().map(|(c, _)| c.clone()).collect()
    }
}

impl std::ops::Index<&str> for Locations {
    type Output = LocationState;
    fn index(&self, code: &str) -> &LocationState {
        self.get(code).expect("no such location")
    }
}

impl Serialize for Locations {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Locations {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<String, LocationState>::deserialize(deserializer)?;
        Ok(Locations(
            map.into_iter().map(|(c, l)| (c.into(), l)).collect(),
        ))
    }
}

/// The state of one sku at one location. `reserved` and `available` are derived from the
/// holds and the figures ([`LocationState::reserved`], [`LocationState::available`]), not
/// stored twice.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "LocationJson", into = "LocationJson")]
pub struct LocationState {
    /// Absolute ERP quantity (plus later relative ERP adjustments).
    pub on_hand: Decimal,
    /// Safety stock applied at the last change.
    pub safety_stock: Decimal,
    /// Bumped on every change of this location.
    pub version: i64,
    /// When this location last changed (epoch ms).
    pub as_of: i64,
    /// ERP time of the newest absolute figure applied.
    pub erp_time: i64,
    /// Input offset of that figure (orders equal ERP times).
    pub erp_offset: i64,
    /// Open and ended holds; `None` (one word) for the many locations that have neither.
    holds: Option<Box<Holds>>,
}

/// The holds of one location.
#[derive(Debug, Clone, Default, PartialEq)]
struct Holds {
    /// Open holds by reference (order transaction id or adjustment reference id).
    open: ByReference<Hold>,
    /// References whose hold ended, with the time it ended (epoch ms).
    ended: ByReference<i64>,
}

/// No holds, for locations without any.
static NO_HOLDS: ByReference<Hold> = ByReference(Vec::new());
/// No ended holds, for locations without any.
static NOTHING_ENDED: ByReference<i64> = ByReference(Vec::new());

/// Values by document reference, sorted by reference. A vector, not a map: a location holds
/// a few references at a time, and a B-tree leaf costs ~700 bytes even for one.
#[derive(Debug, Clone, PartialEq)]
pub struct ByReference<V>(Vec<(String, V)>);

impl<V> Default for ByReference<V> {
    fn default() -> Self {
        ByReference(Vec::new())
    }
}

impl<V> ByReference<V> {
    fn find(&self, reference: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(r, _)| r.as_str().cmp(reference))
    }

    /// Whether `reference` has a value.
    pub fn contains_key(&self, reference: &str) -> bool {
        self.find(reference).is_ok()
    }

    /// How many references.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// References and values, by reference.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        self.0.iter().map(|(r, v)| (r.as_str(), v))
    }

    /// Values, by reference.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.0.iter().map(|(_, v)| v)
    }

    fn insert(&mut self, reference: String, value: V) {
        match self.find(&reference) {
            Ok(i) => self.0[i].1 = value,
            Err(i) => self.0.insert(i, (reference, value)),
        }
    }

    fn remove(&mut self, reference: &str) {
        if let Ok(i) = self.find(reference) {
            self.0.remove(i);
        }
    }

    /// The value of `reference`, `value()` inserted if missing.
    fn get_or_insert(&mut self, reference: &str, value: impl FnOnce() -> V) -> &mut V {
        let i = match self.find(reference) {
            Ok(i) => i,
            Err(i) => {
                self.0.insert(i, (reference.to_string(), value()));
                i
            }
        };
        &mut self.0[i].1
    }

    fn retain(&mut self, mut keep: impl FnMut(&V) -> bool) {
        self.0.retain(|(_, v)| keep(v));
        self.0.shrink_to_fit();
    }
}

/// The JSON form of a location (snapshots, changelog values of earlier versions).
#[derive(Clone, Serialize, Deserialize)]
struct LocationJson {
    on_hand: Decimal,
    reserved: Decimal,
    safety_stock: Decimal,
    available: Decimal,
    version: i64,
    as_of: i64,
    erp_time: i64,
    erp_offset: i64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    holds: BTreeMap<String, Hold>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    ended: BTreeMap<String, i64>,
}

impl From<LocationJson> for LocationState {
    /// `reserved` and `available` are derived again, from the holds and the figures.
    fn from(json: LocationJson) -> Self {
        let mut state = LocationState {
            on_hand: json.on_hand,
            safety_stock: json.safety_stock,
            version: json.version,
            as_of: json.as_of,
            erp_time: json.erp_time,
            erp_offset: json.erp_offset,
            holds: None,
        };
        for (reference, hold) in json.holds {
            state.hold(reference, hold);
        }
        for (reference, at) in json.ended {
            state.ended_at(reference, at);
        }
        state
    }
}

impl From<LocationState> for LocationJson {
    fn from(state: LocationState) -> Self {
        let (reserved, available) = (state.reserved(), state.available());
        let holds = state.holds.map(|h| *h).unwrap_or_default();
        LocationJson {
            on_hand: state.on_hand,
            reserved,
            safety_stock: state.safety_stock,
            available,
            version: state.version,
            as_of: state.as_of,
            erp_time: state.erp_time,
            erp_offset: state.erp_offset,
            holds: holds.open.0.into_iter().collect(),
            ended: holds.ended.0.into_iter().collect(),
        }
    }
}

/// Stock held for one document at one location.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hold {
    /// Units held.
    pub quantity: Decimal,
    /// When the hold was taken (epoch ms, erpstream's clock); expiry counts from here.
    pub held_at: i64,
    /// When the ERP acknowledged the write-back (epoch ms), if it did.
    pub written_back_at: Option<i64>,
}

/// What a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Older than what is applied, or already applied: ignored.
    Stale,
    /// Accepted (the state records it), but no published figure moved.
    Unchanged,
    /// Figures moved; versions bumped.
    Changed,
}

impl LocationState {
    /// A location whose ERP figure `on_hand` (ERP time `erp_time`, read at input offset
    /// `erp_offset`) was applied as `version` at `as_of`; no safety stock, no holds.
    pub fn applied(
        on_hand: Decimal,
        version: i64,
        as_of: i64,
        erp_time: i64,
        erp_offset: i64,
    ) -> Self {
        LocationState {
            on_hand,
            version,
            as_of,
            erp_time,
            erp_offset,
            ..LocationState::default()
        }
    }

    /// Sum of the open holds.
    pub fn reserved(&self) -> Decimal {
        self.holds().values().map(|h| h.quantity).sum()
    }

    /// What may be sold: max(0, on_hand − reserved − safety_stock).
    pub fn available(&self) -> Decimal {
        (self.on_hand - self.reserved() - self.safety_stock).max(Decimal::ZERO)
    }

    /// Open holds by reference (order transaction id or adjustment reference id).
    pub fn holds(&self) -> &ByReference<Hold> {
        self.holds.as_ref().map_or(&NO_HOLDS, |h| &h.open)
    }

    /// References whose hold ended, with the time it ended (epoch ms).
    pub fn ended(&self) -> &ByReference<i64> {
        self.holds.as_ref().map_or(&NOTHING_ENDED, |h| &h.ended)
    }

    /// Whether the location has open or remembered holds.
    pub fn has_any_holds(&self) -> bool {
        !self.holds().is_empty() || !self.ended().is_empty()
    }

    /// Sets the open hold of `reference` (for building a state; the rules take holds
    /// through [`SkuState::reserve`]).
    pub fn hold(&mut self, reference: String, hold: Hold) {
        self.holds_mut().open.insert(reference, hold);
    }

    /// Remembers that the hold of `reference` ended at `at` (epoch ms).
    pub fn ended_at(&mut self, reference: String, at: i64) {
        self.holds_mut().ended.insert(reference, at);
    }

    fn holds_mut(&mut self) -> &mut Holds {
        self.holds.get_or_insert_with(Default::default)
    }

    /// Drops the holds' storage once nothing is open or remembered.
    fn tidy(&mut self) {
        if self
            .holds
            .as_ref()
            .is_some_and(|h| h.open.is_empty() && h.ended.is_empty())
        {
            self.holds = None;
        }
    }

    fn figures(&self) -> (Decimal, Decimal, Decimal, Decimal) {
        (
            self.on_hand,
            self.reserved(),
            self.available(),
            self.safety_stock,
        )
    }

    /// Ends every hold the applied ERP figure confirms; returns how many.
    fn confirm_written_back(&mut self, now: i64) -> usize {
        let erp_time = self.erp_time;
        let confirmed: Vec<String> = self
            .holds()
            .iter()
            .filter(|(_, h)| h.written_back_at.is_some_and(|t| t < erp_time))
            .map(|(r, _)| r.to_string())
            .collect();
        for reference in &confirmed {
            self.end_hold(reference, now);
        }
        confirmed.len()
    }

    fn end_hold(&mut self, reference: &str, now: i64) {
        let holds = self.holds_mut();
        holds.open.remove(reference);
        holds.ended.insert(reference.to_string(), now);
    }
}

impl SkuState {
    /// Applies an ERP change read at input `offset`.
    pub fn apply(
        &mut self,
        change: &InventoryChange,
        offset: i64,
        safety: Decimal,
        now: i64,
    ) -> Applied {
        let location = self.locations.entry_or_default(&change.location_code);
        let before = location.figures();
        if let Some(quantity) = change.new_quantity {
            if (change.occurred_at, offset) <= (location.erp_time, location.erp_offset) {
                return Applied::Stale;
            }
            location.on_hand = quantity;
            location.erp_time = change.occurred_at;
            location.erp_offset = offset;
            location.confirm_written_back(now);
        } else if let Some(delta) = change.quantity_change {
            if change.occurred_at < location.erp_time {
                return Applied::Stale;
            }
            location.on_hand += delta;
        }
        self.settle(&change.location_code, before, safety, now)
    }

    /// Applies one step of a hold. `now` is erpstream's clock. A `Release` without a
    /// location releases the reference at every location of the sku.
    pub fn reserve(&mut self, step: &Reservation, safety: Decimal, now: i64) -> Applied {
        if step.action == ReservationAction::Release && step.location_code.is_empty() {
            let codes: Vec<CompactString> = self
                .locations
                .0
                .iter()
                .filter(|(_, l)| l.holds().contains_key(&step.reference_id))
                .map(|(c, _)| c.clone())
                .collect();
            let mut outcome = Applied::Stale;
            for code in codes {
                let location = self.locations.entry_or_default(&code);
                let before = location.figures();
                location.end_hold(&step.reference_id, now);
                outcome = self.settle(&code, before, safety, now);
            }
            return outcome;
        }
        let location = self.locations.entry_or_default(&step.location_code);
        let before = location.figures();
        let reference = &step.reference_id;
        if location.ended().contains_key(reference) {
            return Applied::Stale;
        }
        match step.action {
            ReservationAction::Hold => {
                if location.holds().contains_key(reference) {
                    return Applied::Stale;
                }
                location.hold(
                    reference.clone(),
                    Hold {
                        quantity: step.quantity,
                        held_at: now,
                        written_back_at: None,
                    },
                );
            }
            ReservationAction::WrittenBack => {
                // The write-back may overtake the hold (they come from different
                // components); then it takes the hold itself.
                let hold = location.holds_mut().open.get_or_insert(reference, || Hold {
                    quantity: step.quantity,
                    held_at: now,
                    written_back_at: None,
                });
                if hold.written_back_at.is_some() {
                    return Applied::Stale;
                }
                hold.written_back_at = Some(step.occurred_at);
                location.confirm_written_back(now);
            }
            ReservationAction::Release => location.end_hold(reference, now),
        }
        self.settle(&step.location_code, before, safety, now)
    }

    /// Ends holds taken before `deadline` (epoch ms); returns how many ended.
    pub fn expire(&mut self, deadline: i64, safety: Decimal, now: i64) -> (usize, Applied) {
        let mut expired = 0;
        let mut outcome = Applied::Unchanged;
        for code in self.locations.codes() {
            let location = self.locations.entry_or_default(&code);
            let before = location.figures();
            let old: Vec<String> = location
                .holds()
                .iter()
                .filter(|(_, h)| h.held_at < deadline)
                .map(|(r, _)| r.to_string())
                .collect();
            if old.is_empty() {
                continue;
            }
            expired += old.len();
            for reference in &old {
                location.end_hold(reference, now);
            }
            if self.settle(&code, before, safety, now) == Applied::Changed {
                outcome = Applied::Changed;
            }
        }
        (expired, outcome)
    }

    /// Forgets ended holds older than `horizon` (epoch ms); whether anything was forgotten.
    pub fn forget_ended(&mut self, horizon: i64) -> bool {
        let mut forgot = false;
        for location in self.locations.values_mut() {
            if let Some(holds) = &mut location.holds {
                let before = holds.ended.len();
                holds.ended.retain(|at| *at >= horizon);
                forgot |= holds.ended.len() != before;
            }
            location.tidy();
        }
        forgot
    }

    /// Whether any location has an open or a remembered hold (one that time may end or
    /// forget).
    pub fn has_any_holds(&self) -> bool {
        self.locations.values().any(LocationState::has_any_holds)
    }

    /// Records the safety stock applied and bumps versions if any figure moved.
    fn settle(
        &mut self,
        code: &str,
        before: (Decimal, Decimal, Decimal, Decimal),
        safety: Decimal,
        now: i64,
    ) -> Applied {
        let location = self.locations.entry_or_default(code);
        location.safety_stock = safety;
        location.tidy();
        if location.figures() == before && location.version > 0 {
            return Applied::Unchanged;
        }
        location.version += 1;
        location.as_of = now;
        self.version += 1;
        Applied::Changed
    }

    /// Available to sell over all locations, or at one.
    pub fn available(&self, location: Option<&str>) -> Decimal {
        self.locations
            .iter()
            .filter(|(code, _)| location.is_none_or(|l| l == *code))
            .map(|(_, l)| l.available())
            .sum()
    }

    /// The figures of every location, as published.
    pub fn to_locations(&self) -> Vec<LocationStock> {
        self.locations
            .iter()
            .map(|(code, l)| LocationStock {
                location_code: code.to_string(),
                on_hand: l.on_hand,
                reserved: l.reserved(),
                safety_stock: l.safety_stock,
                available: l.available(),
                version: l.version,
                as_of: l.as_of,
            })
            .collect()
    }
}

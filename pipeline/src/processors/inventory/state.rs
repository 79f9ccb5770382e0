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
use std::sync::Arc;

use erpstream_schemas::{InventoryChange, LocationStock, Reservation, ReservationAction};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

pub use stored::StoredError;

/// The state of one sku, as written to the changelog ([`SkuState::to_bytes`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SkuState {
    /// Bumped on every change of any location.
    pub version: i64,
    /// Per location.
    pub locations: Locations,
    /// Per input topic, the offset of the last record this state took in.
    #[serde(default, skip_serializing_if = "ReadUpTo::is_empty")]
    pub read: ReadUpTo,
}

/// Per input topic, the offset of the last record a sku's state took in: a record at or
/// before it was applied already (read again after a crash) and changes nothing. In the
/// JSON form an object `{topic: offset}`; in memory the topic names are shared.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReadUpTo(Vec<(Arc<str>, i64)>);

impl ReadUpTo {
    /// Whether no record was taken in yet.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the record at `offset` of `topic` was taken in already.
    pub fn covers(&self, topic: &str, offset: i64) -> bool {
        self.0
            .iter()
            .any(|(t, read)| **t == *topic && *read >= offset)
    }

    /// Records that the record at `offset` of `topic` was taken in.
    pub fn advance(&mut self, topic: &Arc<str>, offset: i64) {
        match self.0.iter_mut().find(|(t, _)| **t == **topic) {
            Some((_, read)) => *read = (*read).max(offset),
            None => self.0.push((Arc::clone(topic), offset)),
        }
    }

    /// Topics and offsets.
    pub fn iter(&self) -> impl Iterator<Item = (&str, i64)> {
        self.0.iter().map(|(t, o)| (&**t, *o))
    }

    /// Replaces each topic name by the shared copy `intern` gives.
    pub fn share(&mut self, mut intern: impl FnMut(&str) -> Arc<str>) {
        for (topic, _) in &mut self.0 {
            *topic = intern(topic);
        }
    }
}

impl Serialize for ReadUpTo {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for ReadUpTo {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<String, i64>::deserialize(deserializer)?;
        Ok(ReadUpTo(
            map.into_iter().map(|(t, o)| (Arc::from(t), o)).collect(),
        ))
    }
}

/// The locations of one sku, sorted by code. A sorted vector, not a map: most skus are held
/// at one or a few locations, and a B-tree node would cost ~2 KB per sku. In the JSON form
/// (snapshots, changelog values of earlier versions) it is an object `{code: state}`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Locations(Vec<(String, LocationState)>);

impl Locations {
    fn find(&self, code: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(c, _)| c.as_str().cmp(code))
    }

    /// The state at `code`, created empty if missing.
    pub fn entry_or_default(&mut self, code: &str) -> &mut LocationState {
        let index = match self.find(code) {
            Ok(i) => i,
            Err(i) => {
                self.0
                    .insert(i, (code.to_string(), LocationState::default()));
                i
            }
        };
        &mut self.0[index].1
    }

    /// Sets the state at `code`.
    pub fn insert(&mut self, code: String, state: LocationState) {
        *self.entry_or_default(&code) = state;
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
    pub fn iter(&self) -> impl Iterator<Item = (&String, &LocationState)> {
        self.0.iter().map(|(c, l)| (c, l))
    }

    /// States, by code.
    pub fn values(&self) -> impl Iterator<Item = &LocationState> {
        self.0.iter().map(|(_, l)| l)
    }

    /// Mutable states, by code.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut LocationState> {
        self.0.iter_mut().map(|(_, l)| l)
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
        Ok(Locations(map.into_iter().collect()))
    }
}

/// The state of one sku at one location.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LocationState {
    /// Absolute ERP quantity (plus later relative ERP adjustments).
    pub on_hand: Decimal,
    /// Sum of the open holds.
    pub reserved: Decimal,
    /// Safety stock applied at the last change.
    pub safety_stock: Decimal,
    /// What may be sold: max(0, on_hand − reserved − safety_stock).
    pub available: Decimal,
    /// Bumped on every change of this location.
    pub version: i64,
    /// When this location last changed (epoch ms).
    pub as_of: i64,
    /// ERP time of the newest absolute figure applied.
    pub erp_time: i64,
    /// Input offset of that figure (orders equal ERP times).
    pub erp_offset: i64,
    /// Open holds by reference (order transaction id or adjustment reference id).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub holds: BTreeMap<String, Hold>,
    /// References whose hold ended, with the time it ended (epoch ms).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ended: BTreeMap<String, i64>,
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
    fn figures(&self) -> (Decimal, Decimal, Decimal, Decimal) {
        (
            self.on_hand,
            self.reserved,
            self.available,
            self.safety_stock,
        )
    }

    /// Ends every hold the applied ERP figure confirms; returns how many.
    fn confirm_written_back(&mut self, now: i64) -> usize {
        let erp_time = self.erp_time;
        let confirmed: Vec<String> = self
            .holds
            .iter()
            .filter(|(_, h)| h.written_back_at.is_some_and(|t| t < erp_time))
            .map(|(r, _)| r.clone())
            .collect();
        for reference in &confirmed {
            self.end_hold(reference, now);
        }
        confirmed.len()
    }

    fn end_hold(&mut self, reference: &str, now: i64) {
        self.holds.remove(reference);
        self.ended.insert(reference.to_string(), now);
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
            let codes: Vec<String> = self
                .locations
                .iter()
                .filter(|(_, l)| l.holds.contains_key(&step.reference_id))
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
        if location.ended.contains_key(reference) {
            return Applied::Stale;
        }
        match step.action {
            ReservationAction::Hold => {
                if location.holds.contains_key(reference) {
                    return Applied::Stale;
                }
                location.holds.insert(
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
                let hold = location.holds.entry(reference.clone()).or_insert(Hold {
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
        let codes: Vec<String> = self.locations.iter().map(|(c, _)| c.clone()).collect();
        for code in codes {
            let location = self.locations.entry_or_default(&code);
            let before = location.figures();
            let old: Vec<String> = location
                .holds
                .iter()
                .filter(|(_, h)| h.held_at < deadline)
                .map(|(r, _)| r.clone())
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
            let before = location.ended.len();
            location.ended.retain(|_, at| *at >= horizon);
            forgot |= location.ended.len() != before;
        }
        forgot
    }

    /// Whether any location has an open hold.
    pub fn has_holds(&self) -> bool {
        self.locations.values().any(|l| !l.holds.is_empty())
    }

    /// Recomputes a location's derived figures and bumps versions if any figure moved.
    fn settle(
        &mut self,
        code: &str,
        before: (Decimal, Decimal, Decimal, Decimal),
        safety: Decimal,
        now: i64,
    ) -> Applied {
        let location = self.locations.entry_or_default(code);
        location.reserved = location.holds.values().map(|h| h.quantity).sum();
        location.safety_stock = safety;
        location.available = (location.on_hand - location.reserved - safety).max(Decimal::ZERO);
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
            .filter(|(code, _)| location.is_none_or(|l| l == code.as_str()))
            .map(|(_, l)| l.available)
            .sum()
    }

    /// The figures of every location, as published.
    pub fn to_locations(&self) -> Vec<LocationStock> {
        self.locations
            .iter()
            .map(|(code, l)| LocationStock {
                location_code: code.clone(),
                on_hand: l.on_hand,
                reserved: l.reserved,
                safety_stock: l.safety_stock,
                available: l.available,
                version: l.version,
                as_of: l.as_of,
            })
            .collect()
    }
}

//! Per-sku inventory state and the rules that change it.

use std::collections::BTreeMap;

use erpstream_schemas::{InventoryChange, LocationStock};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// The state of one sku, as written to the changelog.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SkuState {
    /// Bumped on every change of any location.
    pub version: i64,
    /// Per location.
    pub locations: BTreeMap<String, LocationState>,
}

/// The state of one sku at one location.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LocationState {
    /// Absolute ERP quantity (plus later relative adjustments).
    pub on_hand: Decimal,
    /// Open reservations not yet reflected by the ERP.
    pub reserved: Decimal,
    /// Safety stock applied at the last change.
    pub safety_stock: Decimal,
    /// What may be sold.
    pub available: Decimal,
    /// Bumped on every change of this location.
    pub version: i64,
    /// When this location last changed (epoch ms).
    pub as_of: i64,
    /// ERP time of the newest absolute figure applied.
    pub erp_time: i64,
    /// Input offset of that figure (orders equal ERP times).
    pub erp_offset: i64,
}

/// What a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Older than what is applied: ignored.
    Stale,
    /// Accepted, but no figure moved.
    Unchanged,
    /// Figures moved; versions bumped.
    Changed,
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
        let location = self
            .locations
            .entry(change.location_code.clone())
            .or_default();
        let before = (location.on_hand, location.available, location.safety_stock);
        if let Some(quantity) = change.new_quantity {
            if (change.occurred_at, offset) <= (location.erp_time, location.erp_offset) {
                return Applied::Stale;
            }
            location.on_hand = quantity;
            location.erp_time = change.occurred_at;
            location.erp_offset = offset;
        } else if let Some(delta) = change.quantity_change {
            if change.occurred_at < location.erp_time {
                return Applied::Stale;
            }
            location.on_hand += delta;
        }
        location.safety_stock = safety;
        location.available = (location.on_hand - location.reserved - safety).max(Decimal::ZERO);
        if (location.on_hand, location.available, location.safety_stock) == before
            && location.version > 0
        {
            return Applied::Unchanged;
        }
        location.version += 1;
        location.as_of = now;
        self.version += 1;
        Applied::Changed
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

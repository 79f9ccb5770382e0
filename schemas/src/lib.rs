//! Event contracts of erpstream.
//!
//! The `.avsc` files in `schemas/avro/` are the single source of truth: this crate embeds
//! them, mirrors them as Rust types ([`events`]) and encodes/decodes those types in the
//! Confluent wire format (magic byte 0, 4-byte big-endian schema id, Avro binary) through a
//! schema registry ([`codec`]). Subjects follow the TopicNameStrategy: `<topic>-value`.
//!
//! Quantities are Avro `decimal(18,3)` and money `decimal(18,4)`; no binary floats anywhere.

pub mod codec;
pub mod decimal;
pub mod events;
pub mod trace;

pub use codec::{Codec, CodecError};
pub use events::{
    AdjustmentLine, CatalogUpdate, DemandActual, Event, EventKind, Holds, InventoryAdjustment,
    InventoryAvailable, InventoryChange, LineItem, LocationStock, OrderStatus, Reservation,
    ReservationAction, SalesOrder, Variant,
};
pub use trace::Traceparent;

/// Milliseconds since the Unix epoch, the unit of every `timestamp-millis` field.
pub fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// An epoch-ms time as RFC 3339 in UTC with milliseconds (`2026-12-08T10:15:00.000Z`); a
/// time outside chrono's range reads as the epoch.
pub fn rfc3339(millis: i64) -> String {
    chrono::DateTime::from_timestamp_millis(millis)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

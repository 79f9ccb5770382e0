//! Rust mirrors of the `.avsc` contracts. Field names and order follow the schema files;
//! `codec` tests check that every type round-trips through its schema.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::decimal::{money, quantity};

/// The event contracts erpstream publishes, one per topic family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// `catalog.update`, keyed by `group_id`.
    CatalogUpdate,
    /// `inventory.change`, keyed by `sku`.
    InventoryChange,
    /// `sales.order`, keyed by `transaction_id`.
    SalesOrder,
    /// `inventory.available`, keyed by `sku`, compacted.
    InventoryAvailable,
    /// `inventory.adjustment`, keyed by `reference_id`.
    InventoryAdjustment,
    /// `inventory.reservation` (internal), keyed by `sku`.
    Reservation,
    /// `demand.actual`, keyed by `sku`.
    DemandActual,
}

impl EventKind {
    /// Every kind, for registration at start-up.
    pub const ALL: [EventKind; 7] = [
        EventKind::CatalogUpdate,
        EventKind::InventoryChange,
        EventKind::SalesOrder,
        EventKind::InventoryAvailable,
        EventKind::InventoryAdjustment,
        EventKind::Reservation,
        EventKind::DemandActual,
    ];

    /// The default topic name of this kind (SPEC §2); deployments may prefix it.
    pub fn topic(self) -> &'static str {
        match self {
            EventKind::CatalogUpdate => "catalog.update",
            EventKind::InventoryChange => "inventory.change",
            EventKind::SalesOrder => "sales.order",
            EventKind::InventoryAvailable => "inventory.available",
            EventKind::InventoryAdjustment => "inventory.adjustment",
            EventKind::Reservation => "inventory.reservation",
            EventKind::DemandActual => "demand.actual",
        }
    }

    /// The kind whose default topic is `topic`.
    pub fn from_topic(topic: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.topic() == topic)
    }

    /// The Avro schema text (the `.avsc` file).
    pub fn schema_text(self) -> &'static str {
        match self {
            EventKind::CatalogUpdate => include_str!("../avro/catalog.update.avsc"),
            EventKind::InventoryChange => include_str!("../avro/inventory.change.avsc"),
            EventKind::SalesOrder => include_str!("../avro/sales.order.avsc"),
            EventKind::InventoryAvailable => include_str!("../avro/inventory.available.avsc"),
            EventKind::InventoryAdjustment => include_str!("../avro/inventory.adjustment.avsc"),
            EventKind::Reservation => include_str!("../avro/inventory.reservation.avsc"),
            EventKind::DemandActual => include_str!("../avro/demand.actual.avsc"),
        }
    }

    /// The record's full name, e.g. `io.erpstream.events.InventoryChange`.
    pub fn record_name(self) -> &'static str {
        match self {
            EventKind::CatalogUpdate => "io.erpstream.events.CatalogUpdate",
            EventKind::InventoryChange => "io.erpstream.events.InventoryChange",
            EventKind::SalesOrder => "io.erpstream.events.SalesOrder",
            EventKind::InventoryAvailable => "io.erpstream.events.InventoryAvailable",
            EventKind::InventoryAdjustment => "io.erpstream.events.InventoryAdjustment",
            EventKind::Reservation => "io.erpstream.events.Reservation",
            EventKind::DemandActual => "io.erpstream.events.DemandActual",
        }
    }
}

/// What every event type shares: its contract and the common fields of SPEC §2.
pub trait Event: Serialize + for<'de> Deserialize<'de> + Send + Sync {
    /// The contract this type mirrors.
    const KIND: EventKind;
    /// The Kafka key (plain UTF-8): sku, group_id or transaction_id.
    fn key(&self) -> &str;
    /// Equal for repeated deliveries of the same source change.
    fn idempotency_key(&self) -> &str;
    /// Unique id of the event.
    fn event_id(&self) -> &str;
    /// ERP time of the change, epoch milliseconds.
    fn occurred_at(&self) -> i64;
    /// When erpstream accepted it, epoch milliseconds.
    fn ingested_at(&self) -> i64;
}

macro_rules! impl_event {
    ($ty:ty, $kind:expr, $key:ident) => {
        impl Event for $ty {
            const KIND: EventKind = $kind;
            fn key(&self) -> &str {
                &self.$key
            }
            fn idempotency_key(&self) -> &str {
                &self.idempotency_key
            }
            fn event_id(&self) -> &str {
                &self.event_id
            }
            fn occurred_at(&self) -> i64 {
                self.occurred_at
            }
            fn ingested_at(&self) -> i64 {
                self.ingested_at
            }
        }
    };
}

/// A stock movement (`inventory.change`): absolute (`new_quantity`) or relative
/// (`quantity_change`), never both.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InventoryChange {
    /// Unique id of this event (UUID).
    pub event_id: String,
    /// Equal for deliveries of the same source change.
    pub idempotency_key: String,
    /// The system of record.
    pub source_system: String,
    /// The connector id that produced it.
    pub source: String,
    /// ERP time, epoch ms.
    pub occurred_at: i64,
    /// Ingest time, epoch ms.
    pub ingested_at: i64,
    /// Stock keeping unit.
    pub sku: String,
    /// Warehouse or store.
    pub location_code: String,
    /// Absolute on-hand quantity.
    #[serde(with = "quantity::option")]
    pub new_quantity: Option<Decimal>,
    /// Allocated quantity, if the ERP reports it.
    #[serde(with = "quantity::option")]
    pub allocated_qty: Option<Decimal>,
    /// In-transit quantity, if the ERP reports it.
    #[serde(with = "quantity::option")]
    pub in_transit_qty: Option<Decimal>,
    /// Relative adjustment.
    #[serde(with = "quantity::option")]
    pub quantity_change: Option<Decimal>,
    /// ERP reason code.
    pub change_reason: Option<String>,
    /// Business reference of a relative adjustment.
    pub reference_id: Option<String>,
}
impl_event!(InventoryChange, EventKind::InventoryChange, sku);

/// Shipped or invoiced quantity of a sku in one month, region and channel (`demand.actual`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DemandActual {
    /// Unique id of this event (UUID).
    pub event_id: String,
    /// Equal for deliveries of the same source change.
    pub idempotency_key: String,
    /// The system of record.
    pub source_system: String,
    /// The connector id that produced it.
    pub source: String,
    /// ERP time, epoch ms; a newer figure replaces an older one.
    pub occurred_at: i64,
    /// Ingest time, epoch ms.
    pub ingested_at: i64,
    /// Stock keeping unit.
    pub sku: String,
    /// First day of the month, `YYYY-MM-01`.
    pub period: String,
    /// The month's quantity.
    #[serde(with = "quantity")]
    pub actual_qty: Decimal,
    /// Sales region.
    pub region: String,
    /// Sales channel.
    pub channel: String,
}
impl_event!(DemandActual, EventKind::DemandActual, sku);

/// One sellable variant of a catalog group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Variant {
    /// Unique sku.
    pub sku: String,
    /// Display title.
    pub variant_title: Option<String>,
    /// Selling price.
    #[serde(with = "money::option")]
    pub selling_price: Option<Decimal>,
    /// Maximum retail price.
    #[serde(with = "money::option")]
    pub mrp: Option<Decimal>,
    /// Absolute ERP stock as reported in the catalog record.
    #[serde(with = "quantity::option")]
    pub current_stock: Option<Decimal>,
    /// Dynamic attributes.
    pub specifications: std::collections::BTreeMap<String, String>,
    /// Public image URLs.
    pub media_assets: Vec<String>,
}

impl Variant {
    /// A variant that is only its sku (planning products, which carry no shop attributes).
    pub fn of_sku(sku: &str) -> Self {
        Self {
            sku: sku.to_string(),
            variant_title: None,
            selling_price: None,
            mrp: None,
            current_stock: None,
            specifications: Default::default(),
            media_assets: Vec::new(),
        }
    }
}

/// A product group with its variants (`catalog.update`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogUpdate {
    /// Unique id of this event (UUID).
    pub event_id: String,
    /// Equal for deliveries of the same source change.
    pub idempotency_key: String,
    /// The system of record.
    pub source_system: String,
    /// The connector id that produced it.
    pub source: String,
    /// ERP time, epoch ms.
    pub occurred_at: i64,
    /// Ingest time, epoch ms.
    pub ingested_at: i64,
    /// Parent style id.
    pub group_id: String,
    /// Display name.
    pub group_name: String,
    /// Long description.
    pub description: Option<String>,
    /// Category breadcrumb, root first.
    pub category_path: Vec<String>,
    /// Tax classification code.
    pub tax_code: Option<String>,
    /// Whether the group is sellable.
    pub is_active: bool,
    /// Planning product family.
    pub product_family: Option<String>,
    /// Planning lead time in days.
    pub lead_time_days: Option<i32>,
    /// Sellable variants.
    pub variants: Vec<Variant>,
}
impl_event!(CatalogUpdate, EventKind::CatalogUpdate, group_id);

/// Lifecycle of an order as far as stock is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum OrderStatus {
    /// Placed; its lines reserve stock.
    Open,
    /// Cancelled; its reservations are released.
    Cancelled,
}

/// One order line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LineItem {
    /// Ordered sku.
    pub sku: String,
    /// Ordered quantity.
    #[serde(with = "quantity")]
    pub quantity: Decimal,
    /// Price per unit.
    #[serde(with = "money")]
    pub unit_price: Decimal,
    /// Fulfilment location, if known.
    pub location_code: Option<String>,
}

/// An online or ERP sales order (`sales.order`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SalesOrder {
    /// Unique id of this event (UUID).
    pub event_id: String,
    /// The transaction id.
    pub idempotency_key: String,
    /// The system that took the order.
    pub source_system: String,
    /// The connector id that produced it.
    pub source: String,
    /// Transaction date, epoch ms.
    pub occurred_at: i64,
    /// Ingest time, epoch ms.
    pub ingested_at: i64,
    /// Order id.
    pub transaction_id: String,
    /// Open or cancelled.
    pub status: OrderStatus,
    /// Customer name.
    pub customer_name: Option<String>,
    /// Customer tax id.
    pub customer_tax_id: Option<String>,
    /// Order lines.
    pub line_items: Vec<LineItem>,
}
impl_event!(SalesOrder, EventKind::SalesOrder, transaction_id);

/// Stock figures of one sku at one location.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocationStock {
    /// Warehouse or store.
    pub location_code: String,
    /// Absolute ERP quantity.
    #[serde(with = "quantity")]
    pub on_hand: Decimal,
    /// Open reservations not yet reflected by the ERP.
    #[serde(with = "quantity")]
    pub reserved: Decimal,
    /// Stock held back from sale.
    #[serde(with = "quantity")]
    pub safety_stock: Decimal,
    /// max(0, on_hand - reserved - safety_stock).
    #[serde(with = "quantity")]
    pub available: Decimal,
    /// Increases by one with every change of this location.
    pub version: i64,
    /// When this location last changed, epoch ms.
    pub as_of: i64,
}

/// Materialized stock of one sku (`inventory.available`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InventoryAvailable {
    /// Unique id of this record (UUID).
    pub event_id: String,
    /// `<sku>@<version>`.
    pub idempotency_key: String,
    /// Source system of the triggering change.
    pub source_system: String,
    /// The inventory processor id.
    pub source: String,
    /// ERP time of the triggering change, epoch ms.
    pub occurred_at: i64,
    /// Ingest time of the triggering change, epoch ms.
    pub ingested_at: i64,
    /// Stock keeping unit.
    pub sku: String,
    /// Every location of the sku.
    pub locations: Vec<LocationStock>,
    /// Increases by one with every change of any location.
    pub version: i64,
}
impl_event!(InventoryAvailable, EventKind::InventoryAvailable, sku);

/// One line of a storefront stock adjustment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdjustmentLine {
    /// Adjusted sku.
    pub sku: String,
    /// Relative change; negative deducts stock.
    #[serde(with = "quantity")]
    pub quantity_change: Decimal,
    /// Location of the stock.
    pub location_code: String,
}

/// A storefront stock adjustment to write back to the ERP (`inventory.adjustment`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InventoryAdjustment {
    /// Unique id of this event (UUID).
    pub event_id: String,
    /// The reference id.
    pub idempotency_key: String,
    /// The system that sent it.
    pub source_system: String,
    /// The connector id that produced it.
    pub source: String,
    /// Request time, epoch ms.
    pub occurred_at: i64,
    /// Ingest time, epoch ms.
    pub ingested_at: i64,
    /// Business reference, e.g. the order id.
    pub reference_id: String,
    /// Per-sku changes.
    pub adjustments: Vec<AdjustmentLine>,
}
impl_event!(
    InventoryAdjustment,
    EventKind::InventoryAdjustment,
    reference_id
);

/// What a [`Reservation`] record does to a hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReservationAction {
    /// Takes stock from what is available.
    Hold,
    /// The ERP acknowledged the document; the next ERP figure releases the hold.
    WrittenBack,
    /// Gives the stock back (order cancelled).
    Release,
}

impl ReservationAction {
    /// The schema symbol, as used in idempotency keys.
    pub fn symbol(self) -> &'static str {
        match self {
            ReservationAction::Hold => "HOLD",
            ReservationAction::WrittenBack => "WRITTEN_BACK",
            ReservationAction::Release => "RELEASE",
        }
    }
}

/// One step of a stock hold for one sku at one location (`inventory.reservation`, internal).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reservation {
    /// Unique id of this event (UUID).
    pub event_id: String,
    /// `<action>:<reference_id>:<sku>:<location_code>`.
    pub idempotency_key: String,
    /// The system the hold came from.
    pub source_system: String,
    /// The component that produced it.
    pub source: String,
    /// When the step happened (for `WrittenBack`, the ERP's acknowledgement), epoch ms.
    pub occurred_at: i64,
    /// When the document was accepted, epoch ms.
    pub ingested_at: i64,
    /// Held sku.
    pub sku: String,
    /// Location of the held stock.
    pub location_code: String,
    /// Order transaction id or adjustment reference id.
    pub reference_id: String,
    /// Units held (positive).
    #[serde(with = "quantity")]
    pub quantity: Decimal,
    /// What this step does.
    pub action: ReservationAction,
}
impl_event!(Reservation, EventKind::Reservation, sku);

impl Reservation {
    /// A step for one line of document `reference_id`, with its idempotency key.
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        action: ReservationAction,
        (source_system, source): (&str, &str),
        reference_id: &str,
        sku: &str,
        location_code: &str,
        quantity: Decimal,
        occurred_at: i64,
        ingested_at: i64,
    ) -> Self {
        Self {
            event_id: uuid::Uuid::now_v7().to_string(),
            idempotency_key: format!("{}:{reference_id}:{sku}:{location_code}", action.symbol()),
            source_system: source_system.to_string(),
            source: source.to_string(),
            occurred_at,
            ingested_at,
            sku: sku.to_string(),
            location_code: location_code.to_string(),
            reference_id: reference_id.to_string(),
            quantity,
            action,
        }
    }
}

/// Units held per (sku, location) while a document is not yet reflected by the ERP.
pub type Holds = std::collections::BTreeMap<(String, String), Decimal>;

impl SalesOrder {
    /// What an open order holds: its lines' quantities per (sku, location), lines of the
    /// same pair summed; lines without a location hold nothing.
    pub fn holds(&self) -> Holds {
        let mut holds = Holds::new();
        for line in &self.line_items {
            if let Some(location) = &line.location_code {
                *holds
                    .entry((line.sku.clone(), location.clone()))
                    .or_insert(Decimal::ZERO) += line.quantity;
            }
        }
        holds
    }
}

impl InventoryAdjustment {
    /// What an adjustment holds: the net deduction of every (sku, location) whose lines sum
    /// to less than zero. Net additions hold nothing; they count once the ERP reports them.
    pub fn holds(&self) -> Holds {
        let mut net = Holds::new();
        for line in &self.adjustments {
            *net.entry((line.sku.clone(), line.location_code.clone()))
                .or_insert(Decimal::ZERO) += line.quantity_change;
        }
        net.into_iter()
            .filter(|(_, change)| *change < Decimal::ZERO)
            .map(|(pair, change)| (pair, -change))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: i64) -> Decimal {
        Decimal::from(n)
    }

    #[test]
    fn holds_sum_lines_per_sku_and_location() {
        let line = |sku: &str, q: i64, loc: Option<&str>| LineItem {
            sku: sku.into(),
            quantity: d(q),
            unit_price: d(1),
            location_code: loc.map(str::to_string),
        };
        let order = SalesOrder {
            event_id: "e".into(),
            idempotency_key: "T".into(),
            source_system: "s".into(),
            source: "api".into(),
            occurred_at: 0,
            ingested_at: 0,
            transaction_id: "T".into(),
            status: OrderStatus::Open,
            customer_name: None,
            customer_tax_id: None,
            line_items: vec![
                line("A", 1, Some("W")),
                line("A", 2, Some("W")),
                line("B", 1, None),
            ],
        };
        assert_eq!(
            order.holds(),
            Holds::from([(("A".into(), "W".into()), d(3))])
        );
        let adjust = |sku: &str, q: i64| AdjustmentLine {
            sku: sku.into(),
            quantity_change: d(q),
            location_code: "W".into(),
        };
        let adjustment = InventoryAdjustment {
            event_id: "e".into(),
            idempotency_key: "R".into(),
            source_system: "s".into(),
            source: "api".into(),
            occurred_at: 0,
            ingested_at: 0,
            reference_id: "R".into(),
            adjustments: vec![adjust("A", -3), adjust("A", 1), adjust("B", 4)],
        };
        assert_eq!(
            adjustment.holds(),
            Holds::from([(("A".into(), "W".into()), d(2))])
        );
    }
}

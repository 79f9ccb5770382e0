//! The sync envelope (`{meta, items}`, Epicor guide §3) and per-item validation (§6 BAQ
//! output schemas): each item is accepted or rejected on its own, with every field error.

use chrono::{Datelike, NaiveDate};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::openapi::schema::{
    AdditionalProperties, AnyOfBuilder, ArrayBuilder, ObjectBuilder, Schema,
};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{PartialSchema, ToSchema};

use crate::sources::fields::{
    FieldError, Quantity, Text, check_decimal, deserialize_at, refuse_nul, require_text,
    require_utf8,
};

/// Which sync endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/erp/products/sync`.
    Products,
    /// `/erp/inventory/sync`.
    Inventory,
    /// `/erp/demand-actuals/sync`.
    DemandActuals,
}

impl Endpoint {
    /// Its path segment.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Products => "products",
            Endpoint::Inventory => "inventory",
            Endpoint::DemandActuals => "demand-actuals",
        }
    }
}

/// `meta`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    /// The sending system (required).
    #[schema(value_type = Text)]
    pub source_system: String,
    /// Unique per execution (recommended).
    #[serde(default)]
    #[schema(value_type = Option<Text>)]
    pub batch_id: Option<String>,
    /// Replay safety (recommended): a repeat returns the first response.
    #[serde(default)]
    #[schema(value_type = Option<Text>)]
    pub idempotency_key: Option<String>,
    /// Validate only.
    #[serde(default)]
    pub dry_run: bool,
}

/// The envelope, items still raw.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// `meta`.
    pub meta: Meta,
    /// `items`.
    pub items: Vec<Value>,
}

/// The documented body of a sync request of items `T`: `{meta, items}`. [`envelope`] reads
/// `meta` and keeps the items raw, so that [`item`] checks each on its own: an item that is
/// not a `T` does not refuse the request, it is answered `rejected` (with its problems) among
/// the results. Hence the items' schema: a `T`, or any value.
fn sync_request<T: ToSchema>() -> RefOr<Schema> {
    let item = AnyOfBuilder::new()
        .item(Ref::from_schema_name(T::name()))
        .item(utoipa::openapi::schema::empty())
        .description(Some(format!(
            "A {}; anything else is answered rejected, with its problems",
            T::name()
        )));
    ObjectBuilder::new()
        .property("meta", Ref::from_schema_name(Meta::name()))
        .property("items", ArrayBuilder::new().items(item))
        .required("meta")
        .required("items")
        .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false)))
        .into()
}

/// The schemas [`sync_request`] refers to.
fn sync_request_schemas<T: ToSchema>(schemas: &mut Vec<(String, RefOr<Schema>)>) {
    schemas.push((Meta::name().into(), <Meta as PartialSchema>::schema()));
    schemas.push((T::name().into(), T::schema()));
    Meta::schemas(schemas);
    T::schemas(schemas);
}

macro_rules! sync_request {
    ($name:ident, $item:ty, $doc:literal) => {
        #[doc = $doc]
        pub struct $name;

        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                sync_request::<$item>()
            }
        }

        impl ToSchema for $name {
            fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
                sync_request_schemas::<$item>(schemas);
            }
        }
    };
}

sync_request!(ProductsSync, ProductItem, "The body of a products sync.");
sync_request!(
    InventorySync,
    InventoryItem,
    "The body of an inventory sync."
);
sync_request!(
    DemandActualsSync,
    DemandItem,
    "The body of a demand-actuals sync."
);

/// Parses the envelope, naming the field of any refusal.
pub fn envelope(body: &[u8]) -> Result<Envelope, FieldError> {
    require_utf8(body)?;
    let mut de = serde_json::Deserializer::from_slice(body);
    let envelope: Envelope = deserialize_at("", &mut de)?;
    require_text("meta.source_system", &envelope.meta.source_system)?;
    for (field, value) in [
        ("meta.batch_id", &envelope.meta.batch_id),
        ("meta.idempotency_key", &envelope.meta.idempotency_key),
    ] {
        if let Some(value) = value {
            require_text(field, value)?;
        }
    }
    Ok(envelope)
}

/// A products item.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProductItem {
    /// Part number.
    #[schema(value_type = Text)]
    pub sku: String,
    /// Description.
    #[schema(value_type = Text)]
    pub name: String,
    /// Category.
    #[serde(default)]
    pub category_name: Option<String>,
    /// Product family.
    #[serde(default)]
    pub product_family: Option<String>,
    /// Planning lead time.
    #[serde(default, deserialize_with = "crate::sources::fields::whole_i32")]
    #[schema(minimum = 0, maximum = 2147483647)]
    pub lead_time_days: Option<i32>,
}

/// An inventory item.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InventoryItem {
    /// Part number.
    #[schema(value_type = Text)]
    pub sku: String,
    /// Warehouse (and bin).
    #[schema(value_type = Text)]
    pub location: String,
    /// On hand.
    #[schema(value_type = Quantity)]
    pub on_hand_qty: Decimal,
    /// Allocated.
    #[serde(default)]
    #[schema(value_type = Quantity)]
    pub allocated_qty: Decimal,
    /// In transit.
    #[serde(default)]
    #[schema(value_type = Quantity)]
    pub in_transit_qty: Decimal,
}

/// A demand-actuals item.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DemandItem {
    /// Part number.
    #[schema(value_type = Text)]
    pub sku: String,
    /// First day of the month.
    #[schema(pattern = "^[0-9]{4}-(0[1-9]|1[0-2])-01$", example = "2026-02-01")]
    pub period: String,
    /// Shipped or invoiced quantity.
    #[schema(value_type = Quantity)]
    pub actual_qty: Decimal,
    /// Region.
    #[serde(default = "global")]
    pub region: String,
    /// Channel.
    #[serde(default = "all")]
    pub channel: String,
}

fn global() -> String {
    "Global".into()
}
fn all() -> String {
    "All".into()
}

/// The answer to a sync request (stored, and given again to a repeat of its key).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SyncResponse {
    /// `validated` (a dry run), `accepted`, `partially_accepted` or `rejected`.
    pub status: SyncStatus,
    /// `products`, `inventory` or `demand-actuals`.
    pub endpoint: String,
    /// `meta.source_system`.
    pub source_system: String,
    /// `meta.batch_id`.
    pub batch_id: Option<String>,
    /// `meta.idempotency_key`.
    pub idempotency_key: Option<String>,
    /// `meta.dry_run`.
    pub dry_run: bool,
    /// Counts.
    pub summary: SyncSummary,
    /// One result per item, in request order.
    pub results: Vec<ItemResult>,
}

/// The outcome of a whole sync request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SyncStatus {
    /// A dry run: the items were checked, nothing was published.
    Validated,
    /// Every item was published.
    Accepted,
    /// Some items were published, the others rejected.
    PartiallyAccepted,
    /// Every item was rejected.
    Rejected,
}

/// How many items were received, accepted and rejected.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SyncSummary {
    /// Items in the request.
    pub received: usize,
    /// Items published (or valid, in a dry run).
    pub accepted: usize,
    /// Items rejected.
    pub rejected: usize,
}

/// The outcome of one item.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ItemResult {
    /// Its index in `items`.
    pub index: usize,
    /// Its sku, when it has one.
    pub sku: Option<String>,
    /// `accepted` or `rejected`.
    pub status: ItemStatus,
    /// The published event (accepted items, not in a dry run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// Broker-side topic of the published event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Its partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<i32>,
    /// Its offset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<i64>,
    /// Every problem found (rejected items).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldError>>,
}

/// The outcome of one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ItemStatus {
    /// Published (or valid, in a dry run).
    Accepted,
    /// Not published: see `errors`.
    Rejected,
}

/// A valid item of any endpoint.
#[derive(Debug, Clone)]
pub enum Item {
    /// Products.
    Product(ProductItem),
    /// Inventory.
    Inventory(InventoryItem),
    /// Demand actuals.
    Demand(DemandItem),
}

impl Item {
    /// Its sku.
    pub fn sku(&self) -> &str {
        match self {
            Item::Product(p) => &p.sku,
            Item::Inventory(i) => &i.sku,
            Item::Demand(d) => &d.sku,
        }
    }
}

/// Validates item `index`: the item, or every field error found (paths like `items[3].sku`).
pub fn item(endpoint: Endpoint, index: usize, value: &Value) -> Result<Item, Vec<FieldError>> {
    let prefix = format!("items[{index}].");
    let one = |e: FieldError| vec![e];
    refuse_nul(&format!("items[{index}]"), value).map_err(one)?;
    let mut errors = Vec::new();
    let item = match endpoint {
        Endpoint::Products => {
            let p: ProductItem = deserialize_at(&prefix, value).map_err(one)?;
            for (field, text) in [("sku", &p.sku), ("name", &p.name)] {
                if let Err(e) = require_text(&format!("{prefix}{field}"), text) {
                    errors.push(e);
                }
            }
            if p.lead_time_days.is_some_and(|d| d < 0) {
                errors.push(FieldError::new(
                    format!("{prefix}lead_time_days"),
                    "must be >= 0",
                ));
            }
            Item::Product(p)
        }
        Endpoint::Inventory => {
            let i: InventoryItem = deserialize_at(&prefix, value).map_err(one)?;
            for (field, text) in [("sku", &i.sku), ("location", &i.location)] {
                if let Err(e) = require_text(&format!("{prefix}{field}"), text) {
                    errors.push(e);
                }
            }
            for (field, qty) in [
                ("on_hand_qty", i.on_hand_qty),
                ("allocated_qty", i.allocated_qty),
                ("in_transit_qty", i.in_transit_qty),
            ] {
                if let Err(e) = check_decimal(&format!("{prefix}{field}"), Some(qty), 3) {
                    errors.push(e);
                }
            }
            Item::Inventory(i)
        }
        Endpoint::DemandActuals => {
            let d: DemandItem = deserialize_at(&prefix, value).map_err(one)?;
            if let Err(e) = require_text(&format!("{prefix}sku"), &d.sku) {
                errors.push(e);
            }
            match NaiveDate::parse_from_str(&d.period, "%Y-%m-%d") {
                Ok(date) if date.day() == 1 => {}
                _ => errors.push(FieldError::new(
                    format!("{prefix}period"),
                    "must be the first day of a month, YYYY-MM-01",
                )),
            }
            if let Err(e) = check_decimal(&format!("{prefix}actual_qty"), Some(d.actual_qty), 3) {
                errors.push(e);
            }
            Item::Demand(d)
        }
    };
    if errors.is_empty() {
        Ok(item)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_guides_examples_validate_and_mistakes_name_their_field() {
        let product = json!({"sku": "FG-1001", "name": "Widget A", "category_name": "Finished Goods",
            "product_family": "Widgets", "lead_time_days": 14});
        assert!(item(Endpoint::Products, 0, &product).is_ok());
        let stock = json!({"sku": "FG-1001", "location": "MAIN-WH", "on_hand_qty": 1250,
            "allocated_qty": 200, "in_transit_qty": 75});
        assert!(item(Endpoint::Inventory, 0, &stock).is_ok());
        let demand = json!({"sku": "FG-1001", "period": "2026-02-01", "actual_qty": 980,
            "region": "NA", "channel": "Direct"});
        assert!(item(Endpoint::DemandActuals, 0, &demand).is_ok());

        let bad = item(
            Endpoint::DemandActuals,
            4,
            &json!({"sku": "", "period": "2026-02-15", "actual_qty": 1.0005}),
        )
        .expect_err("three mistakes");
        let fields: Vec<&str> = bad.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["items[4].sku", "items[4].period", "items[4].actual_qty"]
        );
        let missing = item(
            Endpoint::Inventory,
            1,
            &json!({"sku": "A", "location": "W"}),
        )
        .expect_err("no on_hand_qty");
        assert_eq!(missing[0].field, "items[1].on_hand_qty");
        assert_eq!(missing[0].reason, "is required");
    }
}

//! The ERP webhook payloads of the sales interface spec §4 (`catalog.update`,
//! `inventory.change`), validated field by field. Every refusal names the field and the rule.

use std::collections::BTreeMap;

use erpstream_schemas::decimal::{MONEY_SCALE, QUANTITY_SCALE};
use rust_decimal::Decimal;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa::openapi::schema::{AllOfBuilder, Schema};

pub use crate::sources::fields::FieldError;
use crate::sources::fields::{Money, Quantity, Text};
use crate::sources::fields::{check_decimal, deserialize_at, json_value, require_text};

/// A webhook body (sales interface spec §4), as documented: `parse` reads the same shape
/// field by field, to name the field a refusal is about.
#[derive(ToSchema)]
#[serde(tag = "event_type")]
#[allow(dead_code)] // never built: it describes what `parse` reads
pub enum WebhookBody {
    /// Stock of a sku at a location: absolute (`new_quantity`) or relative (`quantity_change`).
    #[serde(rename = "inventory.change")]
    InventoryChange {
        /// When the change happened in the ERP (RFC 3339); a late one is never refused.
        #[schema(format = DateTime)]
        timestamp: String,
        /// The stock: `new_quantity` or `quantity_change`, exactly one of them.
        #[schema(schema_with = inventory_data)]
        data: InventoryData,
    },
    /// A product group and its variants.
    #[serde(rename = "catalog.update")]
    CatalogUpdate {
        /// When the change happened in the ERP (RFC 3339).
        #[schema(format = DateTime)]
        timestamp: String,
        /// The product.
        data: CatalogData,
    },
    /// An order the ERP cancelled (needs the source's `orders_topic`): its holds are released.
    #[serde(rename = "sales.order")]
    SalesOrder {
        /// When the order was cancelled in the ERP (RFC 3339).
        #[schema(format = DateTime)]
        timestamp: String,
        /// The order.
        data: OrderData,
    },
}

/// [`InventoryData`] with the rule `validate_inventory` keeps: an absolute figure or a
/// relative change, exactly one of them.
fn inventory_data() -> Schema {
    use utoipa::openapi::Ref;
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    let one = |given: &str, absent: &str| {
        ObjectBuilder::new()
            .property(given, Ref::from_schema_name("Quantity"))
            .property(absent, ObjectBuilder::new().schema_type(Type::Null))
            .required(given)
    };
    AllOfBuilder::new()
        .item(Ref::from_schema_name("InventoryData"))
        .item(
            OneOfBuilder::new()
                .item(one("new_quantity", "quantity_change"))
                .item(one("quantity_change", "new_quantity")),
        )
        .build()
        .into()
}

#[derive(Deserialize)]
struct Envelope {
    event_type: String,
    timestamp: String,
    data: serde_json::Value,
}

/// `data` of an `inventory.change` webhook.
#[derive(Debug, Clone, PartialEq, Deserialize, ToSchema)]
pub struct InventoryData {
    /// Stock keeping unit.
    #[schema(value_type = Text)]
    pub sku: String,
    /// Warehouse or store.
    #[schema(value_type = Text)]
    pub location_code: String,
    /// Absolute quantity now on hand.
    #[serde(default)]
    #[schema(value_type = Option<Quantity>)]
    pub new_quantity: Option<Decimal>,
    /// Relative adjustment, instead of `new_quantity`.
    #[serde(default)]
    #[schema(value_type = Option<Quantity>)]
    pub quantity_change: Option<Decimal>,
    /// Allocated quantity.
    #[serde(default)]
    #[schema(value_type = Option<Quantity>)]
    pub allocated_qty: Option<Decimal>,
    /// In-transit quantity.
    #[serde(default)]
    #[schema(value_type = Option<Quantity>)]
    pub in_transit_qty: Option<Decimal>,
    /// ERP reason code.
    #[serde(default)]
    pub change_reason: Option<String>,
    /// Business reference of a relative adjustment.
    #[serde(default)]
    pub reference_id: Option<String>,
}

/// One variant in a `catalog.update` webhook.
#[derive(Debug, Clone, PartialEq, Deserialize, ToSchema)]
pub struct VariantData {
    /// Unique sku.
    #[schema(value_type = Text)]
    pub sku: String,
    /// Display title.
    #[serde(default)]
    pub variant_title: Option<String>,
    /// Selling price.
    #[serde(default)]
    #[schema(value_type = Option<Money>)]
    pub selling_price: Option<Decimal>,
    /// Maximum retail price.
    #[serde(default)]
    #[schema(value_type = Option<Money>)]
    pub mrp: Option<Decimal>,
    /// Absolute stock.
    #[serde(default)]
    #[schema(value_type = Option<Quantity>)]
    pub current_stock: Option<Decimal>,
    /// Dynamic attributes (values rendered as text).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub specifications: BTreeMap<String, serde_json::Value>,
    /// Image URLs.
    #[serde(default)]
    pub media_assets: Vec<String>,
}

/// `data` of a `catalog.update` webhook.
#[derive(Debug, Clone, PartialEq, Deserialize, ToSchema)]
pub struct CatalogData {
    /// Parent style id.
    #[schema(value_type = Text)]
    pub group_id: String,
    /// Display name.
    #[schema(value_type = Text)]
    pub group_name: String,
    /// Description.
    #[serde(default)]
    pub description: Option<String>,
    /// Category breadcrumb.
    #[serde(default)]
    pub category_path: Vec<String>,
    /// Tax code.
    #[serde(default)]
    pub tax_code: Option<String>,
    /// Whether sellable.
    #[serde(default = "default_active")]
    pub is_active: bool,
    /// Planning product family.
    #[serde(default)]
    pub product_family: Option<String>,
    /// Planning lead time.
    #[serde(default, deserialize_with = "crate::sources::fields::whole_i32")]
    #[schema(minimum = 0, maximum = 2147483647)]
    pub lead_time_days: Option<i32>,
    /// Variants.
    #[serde(default)]
    pub variants: Vec<VariantData>,
}

fn default_active() -> bool {
    true
}

/// One line of an order the ERP reports.
#[derive(Debug, Clone, PartialEq, Deserialize, ToSchema)]
pub struct OrderLineData {
    /// Ordered sku.
    #[schema(value_type = Text)]
    pub sku: String,
    /// Ordered quantity.
    #[serde(default)]
    #[schema(value_type = Option<Quantity>)]
    pub quantity: Option<Decimal>,
    /// Price per unit.
    #[serde(default)]
    #[schema(value_type = Option<Money>)]
    pub unit_price: Option<Decimal>,
    /// Warehouse; absent means every location of the sku.
    #[serde(default)]
    #[schema(value_type = Option<Text>)]
    pub location_code: Option<String>,
}

/// `data` of a `sales.order` webhook: the ERP reporting an order's status. Only
/// `cancelled` is acted on (it releases the order's holds).
#[derive(Debug, Clone, PartialEq, Deserialize, ToSchema)]
pub struct OrderData {
    /// The order id (the storefront's `transaction_id` for online orders).
    #[schema(value_type = Text)]
    pub transaction_id: String,
    /// `cancelled`.
    #[schema(pattern = "^[Cc][Aa][Nn][Cc][Ee][Ll][Ll][Ee][Dd]$")]
    pub status: String,
    /// The order's lines.
    #[schema(min_items = 1)]
    pub line_items: Vec<OrderLineData>,
}

/// A validated webhook.
#[derive(Debug, Clone, PartialEq)]
pub enum ErpEvent {
    /// `inventory.change`.
    Inventory(InventoryData),
    /// `catalog.update`.
    Catalog(CatalogData),
    /// `sales.order` with status `cancelled`.
    OrderCancelled(OrderData),
}

/// A validated webhook with its ERP time (epoch ms).
#[derive(Debug, Clone, PartialEq)]
pub struct ErpWebhook {
    /// The payload.
    pub event: ErpEvent,
    /// The envelope's `timestamp`.
    pub occurred_at: i64,
}

/// Parses and validates a webhook body.
pub fn parse(body: &[u8]) -> Result<ErpWebhook, FieldError> {
    let json = json_value(body)?;
    if !json.is_object() {
        return Err(FieldError::new(
            "body",
            "must be a JSON object with event_type, timestamp and data",
        ));
    }
    let envelope: Envelope = deserialize_at("", json)?;
    let occurred_at = chrono::DateTime::parse_from_rfc3339(envelope.timestamp.trim())
        .map_err(|_| {
            FieldError::new(
                "timestamp",
                "must be an RFC 3339 date-time, e.g. 2024-01-20T10:05:00Z",
            )
        })?
        .timestamp_millis();
    if !envelope.data.is_object() {
        return Err(FieldError::new("data", "must be an object"));
    }
    let event = match envelope.event_type.as_str() {
        "inventory.change" => {
            let data: InventoryData = deserialize_at("data.", envelope.data)?;
            validate_inventory(&data)?;
            ErpEvent::Inventory(data)
        }
        "catalog.update" => {
            let data: CatalogData = deserialize_at("data.", envelope.data)?;
            validate_catalog(&data)?;
            ErpEvent::Catalog(data)
        }
        "sales.order" => {
            let data: OrderData = deserialize_at("data.", envelope.data)?;
            validate_order(&data)?;
            ErpEvent::OrderCancelled(data)
        }
        _ => {
            return Err(FieldError::new(
                "event_type",
                "must be catalog.update, inventory.change or sales.order",
            ));
        }
    };
    Ok(ErpWebhook { event, occurred_at })
}

fn validate_inventory(data: &InventoryData) -> Result<(), FieldError> {
    require_text("data.sku", &data.sku)?;
    require_text("data.location_code", &data.location_code)?;
    match (data.new_quantity, data.quantity_change) {
        (None, None) => {
            return Err(FieldError::new(
                "data.new_quantity",
                "is required (or quantity_change for a relative adjustment)",
            ));
        }
        (Some(_), Some(_)) => {
            return Err(FieldError::new(
                "data.quantity_change",
                "must not be sent together with new_quantity",
            ));
        }
        _ => {}
    }
    check_decimal("data.new_quantity", data.new_quantity, QUANTITY_SCALE)?;
    check_decimal("data.quantity_change", data.quantity_change, QUANTITY_SCALE)?;
    check_decimal("data.allocated_qty", data.allocated_qty, QUANTITY_SCALE)?;
    check_decimal("data.in_transit_qty", data.in_transit_qty, QUANTITY_SCALE)?;
    Ok(())
}

fn validate_order(data: &OrderData) -> Result<(), FieldError> {
    require_text("data.transaction_id", &data.transaction_id)?;
    if !data.status.eq_ignore_ascii_case("cancelled") {
        return Err(FieldError::new(
            "data.status",
            "must be cancelled (the only order status erpstream acts on)",
        ));
    }
    if data.line_items.is_empty() {
        return Err(FieldError::new(
            "data.line_items",
            "must contain at least one line",
        ));
    }
    for (i, line) in data.line_items.iter().enumerate() {
        let at = |f: &str| format!("data.line_items[{i}].{f}");
        require_text(&at("sku"), &line.sku)?;
        check_decimal(&at("quantity"), line.quantity, QUANTITY_SCALE)?;
        check_decimal(&at("unit_price"), line.unit_price, MONEY_SCALE)?;
        if line
            .unit_price
            .is_some_and(|p| p.is_sign_negative() && !p.is_zero())
        {
            return Err(FieldError::new(at("unit_price"), "must not be negative"));
        }
        if let Some(location) = &line.location_code {
            require_text(&at("location_code"), location)?;
        }
    }
    Ok(())
}

fn validate_catalog(data: &CatalogData) -> Result<(), FieldError> {
    require_text("data.group_id", &data.group_id)?;
    require_text("data.group_name", &data.group_name)?;
    if data.lead_time_days.is_some_and(|d| d < 0) {
        return Err(FieldError::new("data.lead_time_days", "must be >= 0"));
    }
    for (i, variant) in data.variants.iter().enumerate() {
        let at = |f: &str| format!("data.variants[{i}].{f}");
        require_text(&at("sku"), &variant.sku)?;
        check_decimal(&at("selling_price"), variant.selling_price, MONEY_SCALE)?;
        check_decimal(&at("mrp"), variant.mrp, MONEY_SCALE)?;
        check_decimal(&at("current_stock"), variant.current_stock, QUANTITY_SCALE)?;
        for price in [
            ("selling_price", variant.selling_price),
            ("mrp", variant.mrp),
        ] {
            if price
                .1
                .is_some_and(|p| p.is_sign_negative() && !p.is_zero())
            {
                return Err(FieldError::new(at(price.0), "must not be negative"));
            }
        }
    }
    Ok(())
}

/// Renders a specification value as text (numbers keep their exact digits).
pub fn spec_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

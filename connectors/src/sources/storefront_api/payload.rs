//! The storefront's request bodies (sales interface spec §5.1 and §5.2), validated field by
//! field. Shape errors (bad JSON, wrong types, missing fields) are 400; values that break a
//! business rule are 422. Both name the field.

use erpstream_schemas::decimal::{MONEY_SCALE, QUANTITY_SCALE};
use rust_decimal::Decimal;
use serde::Deserialize;
use utoipa::ToSchema;

use crate::sources::fields::{
    FieldError, Money, PositiveQuantity, QuantityChange, Text, check_decimal, deserialize_at,
    json_value, require_text,
};

/// Why a body was refused.
#[derive(Debug)]
pub enum Invalid {
    /// Not the expected shape (400).
    Shape(FieldError),
    /// A value breaks a rule (422).
    Rule(FieldError),
}

/// §5.1 `customer_details`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct Customer {
    /// Customer name.
    #[serde(default)]
    pub name: Option<String>,
    /// Tax id.
    #[serde(default)]
    pub tax_id: Option<String>,
}

/// §5.1 line item, with an optional `location_code`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct OrderLine {
    /// Ordered sku.
    #[schema(value_type = Text)]
    pub sku: String,
    /// Ordered quantity (> 0).
    #[schema(value_type = PositiveQuantity)]
    pub quantity: Decimal,
    /// Price per unit (>= 0).
    #[schema(value_type = Money)]
    pub unit_price: Decimal,
    /// Fulfilment location; the source's `default_location` when absent.
    #[serde(default)]
    #[schema(value_type = Option<Text>)]
    pub location_code: Option<String>,
}

/// §5.1 body.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct OrderRequest {
    /// The storefront's order id; the idempotency key.
    #[schema(value_type = Text)]
    pub transaction_id: String,
    /// RFC 3339 time of the purchase.
    #[schema(format = DateTime)]
    pub transaction_date: String,
    /// Customer.
    #[serde(default)]
    pub customer_details: Customer,
    /// Lines (at least one).
    #[schema(min_items = 1)]
    pub line_items: Vec<OrderLine>,
}

/// §5.2 line.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct AdjustmentLineRequest {
    /// Adjusted sku.
    #[schema(value_type = Text)]
    pub sku: String,
    /// Relative change (≠ 0); negative deducts.
    #[schema(value_type = QuantityChange)]
    pub quantity_change: Decimal,
    /// Location; the source's `default_location` when absent.
    #[serde(default)]
    #[schema(value_type = Option<Text>)]
    pub location_code: Option<String>,
}

/// §5.2 body.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct AdjustmentRequest {
    /// The business reference (e.g. the order id); the idempotency key.
    #[schema(value_type = Text)]
    pub reference_id: String,
    /// Lines (at least one).
    #[schema(min_items = 1)]
    pub adjustments: Vec<AdjustmentLineRequest>,
}

/// A validated order: the request, its time and its lines with locations resolved.
#[derive(Debug, Clone)]
pub struct Order {
    /// The request.
    pub request: OrderRequest,
    /// `transaction_date`, epoch ms.
    pub occurred_at: i64,
    /// `(sku, location)` of each line, in request order.
    pub locations: Vec<String>,
}

/// A validated adjustment with locations resolved.
#[derive(Debug, Clone)]
pub struct Adjustment {
    /// The request.
    pub request: AdjustmentRequest,
    /// Location of each line, in request order.
    pub locations: Vec<String>,
}

fn json_object(body: &[u8]) -> Result<serde_json::Value, Invalid> {
    let json = json_value(body).map_err(Invalid::Shape)?;
    if !json.is_object() {
        return Err(Invalid::Shape(FieldError::new(
            "body",
            "must be a JSON object",
        )));
    }
    Ok(json)
}

fn resolve_location(
    field: String,
    given: Option<&String>,
    default: Option<&str>,
) -> Result<String, FieldError> {
    match given {
        Some(code) => {
            require_text(&field, code)?;
            Ok(code.trim().to_string())
        }
        None => default.map(str::to_string).ok_or_else(|| {
            FieldError::new(field, "is required (no default_location is configured)")
        }),
    }
}

/// Parses and validates a §5.1 body.
pub fn order(body: &[u8], default_location: Option<&str>) -> Result<Order, Invalid> {
    let request: OrderRequest = deserialize_at("", json_object(body)?).map_err(Invalid::Shape)?;
    let rule = |r: Result<(), FieldError>| r.map_err(Invalid::Rule);
    rule(require_text("transaction_id", &request.transaction_id))?;
    let occurred_at = chrono::DateTime::parse_from_rfc3339(request.transaction_date.trim())
        .map_err(|_| {
            Invalid::Rule(FieldError::new(
                "transaction_date",
                "must be an RFC 3339 date-time, e.g. 2024-01-20T10:15:00Z",
            ))
        })?
        .timestamp_millis();
    if request.line_items.is_empty() {
        return Err(Invalid::Rule(FieldError::new(
            "line_items",
            "must contain at least one line",
        )));
    }
    let mut locations = Vec::with_capacity(request.line_items.len());
    for (i, line) in request.line_items.iter().enumerate() {
        let at = |f: &str| format!("line_items[{i}].{f}");
        rule(require_text(&at("sku"), &line.sku))?;
        rule(check_decimal(
            &at("quantity"),
            Some(line.quantity),
            QUANTITY_SCALE,
        ))?;
        if line.quantity <= Decimal::ZERO {
            return Err(Invalid::Rule(FieldError::new(
                at("quantity"),
                "must be > 0",
            )));
        }
        rule(check_decimal(
            &at("unit_price"),
            Some(line.unit_price),
            MONEY_SCALE,
        ))?;
        if line.unit_price.is_sign_negative() && !line.unit_price.is_zero() {
            return Err(Invalid::Rule(FieldError::new(
                at("unit_price"),
                "must not be negative",
            )));
        }
        locations.push(
            resolve_location(
                at("location_code"),
                line.location_code.as_ref(),
                default_location,
            )
            .map_err(Invalid::Rule)?,
        );
    }
    Ok(Order {
        request,
        occurred_at,
        locations,
    })
}

/// Parses and validates a §5.2 body.
pub fn adjustment(body: &[u8], default_location: Option<&str>) -> Result<Adjustment, Invalid> {
    let request: AdjustmentRequest =
        deserialize_at("", json_object(body)?).map_err(Invalid::Shape)?;
    let rule = |r: Result<(), FieldError>| r.map_err(Invalid::Rule);
    rule(require_text("reference_id", &request.reference_id))?;
    if request.adjustments.is_empty() {
        return Err(Invalid::Rule(FieldError::new(
            "adjustments",
            "must contain at least one line",
        )));
    }
    let mut locations = Vec::with_capacity(request.adjustments.len());
    for (i, line) in request.adjustments.iter().enumerate() {
        let at = |f: &str| format!("adjustments[{i}].{f}");
        rule(require_text(&at("sku"), &line.sku))?;
        rule(check_decimal(
            &at("quantity_change"),
            Some(line.quantity_change),
            QUANTITY_SCALE,
        ))?;
        if line.quantity_change.is_zero() {
            return Err(Invalid::Rule(FieldError::new(
                at("quantity_change"),
                "must not be 0",
            )));
        }
        locations.push(
            resolve_location(
                at("location_code"),
                line.location_code.as_ref(),
                default_location,
            )
            .map_err(Invalid::Rule)?,
        );
    }
    Ok(Adjustment { request, locations })
}

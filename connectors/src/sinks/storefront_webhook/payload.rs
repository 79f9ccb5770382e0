//! Storefront bodies in the shapes of the sales interface spec §4. Quantities and prices are
//! JSON numbers with their exact decimal digits.

use erpstream_schemas::decimal::json_number as number;
use erpstream_schemas::{CatalogUpdate, InventoryAvailable, LocationStock, rfc3339};
use serde_json::{Value, json};

/// What the storefront learns when available-to-sell changes: §4.2 with
/// `new_quantity` = available and the location's `version` for its own ordering checks.
pub fn stock(record: &InventoryAvailable, location: &LocationStock) -> bytes::Bytes {
    let body = json!({
        "event_type": "inventory.change",
        "timestamp": rfc3339(location.as_of),
        "data": {
            "sku": record.sku,
            "location_code": location.location_code,
            "new_quantity": number(location.available),
            "change_reason": "AVAILABLE_TO_SELL",
            "version": location.version,
        }
    });
    bytes::Bytes::from(body.to_string())
}

/// §4.1, as the ERP sent it.
pub fn catalog(record: &CatalogUpdate) -> bytes::Bytes {
    let variants: Vec<Value> = record
        .variants
        .iter()
        .map(|v| {
            json!({
                "sku": v.sku,
                "variant_title": v.variant_title,
                "selling_price": v.selling_price.map(number),
                "mrp": v.mrp.map(number),
                "current_stock": v.current_stock.map(number),
                "specifications": v.specifications,
                "media_assets": v.media_assets,
            })
        })
        .collect();
    let body = json!({
        "event_type": "catalog.update",
        "timestamp": rfc3339(record.occurred_at),
        "data": {
            "group_id": record.group_id,
            "group_name": record.group_name,
            "description": record.description,
            "category_path": record.category_path,
            "tax_code": record.tax_code,
            "is_active": record.is_active,
            "variants": variants,
        }
    });
    bytes::Bytes::from(body.to_string())
}

use std::str::FromStr;

use erpstream_schemas::{InventoryAvailable, LocationStock};
use rust_decimal::Decimal;

use super::payload;

#[test]
fn stock_body_has_the_spec_shape_with_available_as_new_quantity() {
    let location = LocationStock {
        location_code: "WH-TECH-01".into(),
        on_hand: Decimal::from(14),
        reserved: Decimal::from(3),
        safety_stock: Decimal::ZERO,
        available: Decimal::from_str("11.500").unwrap(),
        version: 7,
        as_of: 1_705_745_100_000,
    };
    let record = InventoryAvailable {
        event_id: "e".into(),
        idempotency_key: "k".into(),
        source_system: "ERP".into(),
        source: "inventory".into(),
        occurred_at: 1,
        ingested_at: 2,
        sku: "DRONE-X1-PRO-KIT".into(),
        locations: vec![location.clone()],
        version: 7,
    };
    let body: serde_json::Value =
        serde_json::from_slice(&payload::stock(&record, &location)).unwrap();
    assert_eq!(body["event_type"], "inventory.change");
    assert_eq!(body["timestamp"], "2024-01-20T10:05:00.000Z");
    assert_eq!(body["data"]["sku"], "DRONE-X1-PRO-KIT");
    assert_eq!(body["data"]["location_code"], "WH-TECH-01");
    assert_eq!(body["data"]["new_quantity"].to_string(), "11.5");
    assert_eq!(body["data"]["version"], 7);
}

use axum::http::HeaderMap;
use serde_json::json;

use super::ApiAuth;
use super::payload::{self, Invalid};

fn body(value: serde_json::Value) -> Vec<u8> {
    value.to_string().into_bytes()
}

fn field(result: Result<impl std::fmt::Debug, Invalid>) -> (u16, String) {
    match result.expect_err("refused") {
        Invalid::Shape(e) => (400, e.field),
        Invalid::Rule(e) => (422, e.field),
    }
}

#[test]
fn the_spec_example_order_parses_and_takes_the_default_location() {
    let order = payload::order(
        &body(json!({
            "transaction_id": "ORD-WEB-2024-999",
            "transaction_date": "2024-01-20T10:15:00Z",
            "customer_details": {"name": "Jane Doe", "tax_id": "GSTIN12345"},
            "line_items": [
                {"sku": "DRONE-X1-PRO-KIT", "quantity": 1, "unit_price": 45000.00},
                {"sku": "PROP-GUARD-X1", "quantity": 2, "unit_price": 500.00,
                 "location_code": "WH-2"}
            ]
        })),
        Some("WH-TECH-01"),
    )
    .expect("valid");
    assert_eq!(order.occurred_at, 1_705_745_700_000);
    assert_eq!(order.locations, ["WH-TECH-01", "WH-2"]);
    assert_eq!(order.request.line_items[0].unit_price, 45000.into());
}

#[test]
fn refusals_name_the_field() {
    let line = |quantity: serde_json::Value| {
        body(
            json!({"transaction_id": "T", "transaction_date": "2024-01-20T10:15:00Z",
                    "line_items": [{"sku": "A", "quantity": quantity, "unit_price": 1}]}),
        )
    };
    assert_eq!(field(payload::order(b"{", None)), (400, "body".into()));
    assert_eq!(
        field(payload::order(&line(json!(1)), None)),
        (422, "line_items[0].location_code".into())
    );
    assert_eq!(
        field(payload::order(&line(json!(-1)), Some("WH"))),
        (422, "line_items[0].quantity".into())
    );
    assert_eq!(
        field(payload::order(&line(json!(0.0001)), Some("WH"))),
        (422, "line_items[0].quantity".into())
    );
    assert_eq!(
        field(payload::adjustment(
            &body(json!({"reference_id": " ", "adjustments": []})),
            None
        )),
        (422, "reference_id".into())
    );
}

#[test]
fn bearer_and_api_key_are_both_accepted() {
    let auth = ApiAuth::new(vec!["old".to_string().into(), "new".to_string().into()]);
    let mut headers = HeaderMap::new();
    assert!(auth.check(&headers).is_err());
    headers.insert("authorization", "Bearer new".parse().unwrap());
    assert!(auth.check(&headers).is_ok());
    let mut headers = HeaderMap::new();
    headers.insert("x-api-key", "old".parse().unwrap());
    assert!(auth.check(&headers).is_ok());
    headers.insert("x-api-key", "olde".parse().unwrap());
    assert_eq!(auth.check(&headers), Err("invalid token"));
}

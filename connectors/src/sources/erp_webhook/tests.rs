use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue};
use secrecy::SecretString;

use super::payload::{ErpEvent, parse};
use crate::signing::{SignatureError, Verifier, sign_hex, sign_standard};

fn verifier(secrets: &[&str]) -> Verifier {
    Verifier::new(
        secrets
            .iter()
            .map(|s| SecretString::from(s.to_string()))
            .collect(),
        true,
        true,
        Duration::from_secs(300),
    )
}

fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        map.insert(*k, HeaderValue::from_str(v).unwrap());
    }
    map
}

#[test]
fn x_signature_with_any_active_secret() {
    let body = br#"{"a":1}"#;
    let v = verifier(&["old", "new"]);
    for secret in ["old", "new"] {
        let sig = sign_hex(secret.as_bytes(), body);
        assert_eq!(
            v.verify(&headers(&[("x-signature", sig.clone())]), body, 0),
            Ok(())
        );
        assert_eq!(
            v.verify(
                &headers(&[("x-signature", format!("sha256={sig}"))]),
                body,
                0
            ),
            Ok(())
        );
    }
    let wrong = sign_hex(b"other", body);
    assert_eq!(
        v.verify(&headers(&[("x-signature", wrong)]), body, 0),
        Err(SignatureError::Mismatch)
    );
    assert_eq!(
        v.verify(&HeaderMap::new(), body, 0),
        Err(SignatureError::Missing)
    );
    assert_eq!(
        v.verify(&headers(&[("x-signature", "zz".into())]), body, 0),
        Err(SignatureError::Malformed("X-Signature"))
    );
}

#[test]
fn standard_webhooks_checks_signature_and_tolerance() {
    let body = br#"{"a":1}"#;
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let v = verifier(&[secret]);
    let now = 1_700_000_000;
    let sig = sign_standard(secret, "msg_1", now, body);
    let h = |ts: i64, sig: String| {
        headers(&[
            ("webhook-id", "msg_1".into()),
            ("webhook-timestamp", ts.to_string()),
            ("webhook-signature", sig),
        ])
    };
    assert_eq!(v.verify(&h(now, sig.clone()), body, now + 10), Ok(()));
    assert_eq!(
        v.verify(&h(now, sig.clone()), body, now + 301),
        Err(SignatureError::Stale)
    );
    assert_eq!(
        v.verify(&h(now, format!("v1,bm9wZQ== {sig}")), body, now),
        Ok(())
    );
    assert_eq!(
        v.verify(&h(now, sig), b"tampered", now),
        Err(SignatureError::Mismatch)
    );
}

#[test]
fn frappe_signature_is_base64() {
    use base64::Engine as _;
    let body = br#"{"a":1}"#;
    let hex_sig = sign_hex(b"s", body);
    let b64 = base64::engine::general_purpose::STANDARD.encode(hex::decode(hex_sig).unwrap());
    assert_eq!(
        verifier(&["s"]).verify(&headers(&[("x-frappe-webhook-signature", b64)]), body, 0),
        Ok(())
    );
}

#[test]
fn parses_the_spec_inventory_payload_exactly() {
    let body = br#"{"event_type":"inventory.change","timestamp":"2024-01-20T10:05:00Z",
        "data":{"sku":"DRONE-X1-PRO-KIT","location_code":"WH-TECH-01","new_quantity":14,"change_reason":"POS_SALE"}}"#;
    let parsed = parse(body).unwrap();
    assert_eq!(parsed.occurred_at, 1_705_745_100_000);
    let ErpEvent::Inventory(data) = parsed.event else {
        panic!("not inventory")
    };
    assert_eq!(data.new_quantity.unwrap().to_string(), "14");
}

#[test]
fn keeps_money_exact() {
    let body = br#"{"event_type":"catalog.update","timestamp":"2024-01-20T10:00:00Z",
        "data":{"group_id":"G","group_name":"N","variants":[{"sku":"S","selling_price":45000.00,"mrp":0.1}]}}"#;
    let ErpEvent::Catalog(data) = parse(body).unwrap().event else {
        panic!("not catalog")
    };
    assert_eq!(
        data.variants[0].selling_price.unwrap().to_string(),
        "45000.00"
    );
    assert_eq!(data.variants[0].mrp.unwrap().to_string(), "0.1");
}

#[test]
fn names_the_offending_field() {
    let cases: [(&[u8], &str); 8] = [
        (b"{not json", "body"),
        (br#"{"timestamp":"2024-01-20T10:05:00Z","data":{}}"#, "event_type"),
        (br#"{"event_type":"x","timestamp":"2024-01-20T10:05:00Z","data":{}}"#, "event_type"),
        (br#"{"event_type":"inventory.change","timestamp":"yesterday","data":{}}"#, "timestamp"),
        (br#"{"event_type":"inventory.change","timestamp":"2024-01-20T10:05:00Z","data":{"location_code":"L","new_quantity":1}}"#, "data.sku"),
        (br#"{"event_type":"inventory.change","timestamp":"2024-01-20T10:05:00Z","data":{"sku":"A","location_code":"L","new_quantity":"lots"}}"#, "data.new_quantity"),
        (br#"{"event_type":"inventory.change","timestamp":"2024-01-20T10:05:00Z","data":{"sku":"A","location_code":"L","new_quantity":1.0001}}"#, "data.new_quantity"),
        (br#"{"event_type":"catalog.update","timestamp":"2024-01-20T10:05:00Z","data":{"group_id":"G","group_name":"N","variants":[{"sku":""}]}}"#, "data.variants[0].sku"),
    ];
    for (body, field) in cases {
        let err = parse(body).expect_err(std::str::from_utf8(body).unwrap());
        assert_eq!(
            err.field,
            field,
            "{}: {}",
            String::from_utf8_lossy(body),
            err.reason
        );
    }
}

#[test]
fn a_standard_webhooks_timestamp_at_the_edge_of_i64_is_stale_not_a_panic() {
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let v = verifier(&[secret]);
    for ts in [i64::MIN, i64::MAX] {
        let sig = sign_standard(secret, "msg_1", ts, b"{}");
        let h = headers(&[
            ("webhook-id", "msg_1".into()),
            ("webhook-timestamp", ts.to_string()),
            ("webhook-signature", sig),
        ]);
        assert_eq!(
            v.verify(&h, b"{}", 1_700_000_000),
            Err(SignatureError::Stale)
        );
    }
}

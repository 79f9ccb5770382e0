//! ERP webhook requests: the signature headers of each scheme, then the body, as the
//! `erp_webhook` source reads them. Input: one mode byte, then the body.
//!
//! Mode bits 0–1 pick the scheme (X-Signature, Standard Webhooks, Frappe, or a header
//! value taken from the body's first bytes); bit 2 signs the body correctly, so the parser
//! behind the signature check is reached.
#![no_main]

use std::sync::LazyLock;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue};
use erpstream_connectors::signing::{self, Verifier};
use erpstream_connectors::sources::erp_webhook::payload;
use libfuzzer_sys::fuzz_target;
use secrecy::SecretString;

const SECRET: &str = "whsec_Zm9vYmFyYmF6";
const NOW: i64 = 1_700_000_000;

static VERIFIER: LazyLock<Verifier> = LazyLock::new(|| {
    Verifier::new(
        vec![SecretString::from("old-secret"), SecretString::from(SECRET)],
        true,
        true,
        Duration::from_secs(300),
    )
});

fuzz_target!(|input: &[u8]| {
    let Some((&mode, body)) = input.split_first() else {
        return;
    };
    let signed = mode & 4 != 0;
    let mut headers = HeaderMap::new();
    let mut put = |name: &'static str, value: &[u8]| {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.insert(name, value);
        }
    };
    match mode & 3 {
        0 => {
            let signature = signing::sign_hex(SECRET.as_bytes(), body);
            let value = if signed {
                signature
            } else {
                format!("sha256={}", &signature[1..])
            };
            put(signing::X_SIGNATURE, value.as_bytes());
        }
        1 => {
            let timestamp = if signed { NOW } else { NOW - 301 };
            let signature = signing::sign_standard(SECRET, "msg_1", NOW, body);
            put(signing::WEBHOOK_ID, b"msg_1");
            put(signing::WEBHOOK_TIMESTAMP, timestamp.to_string().as_bytes());
            put(
                signing::WEBHOOK_SIGNATURE,
                format!("v1,bad {signature}").as_bytes(),
            );
        }
        2 => {
            use base64::Engine as _;
            let mac = hex::decode(signing::sign_hex(SECRET.as_bytes(), body)).expect("hex");
            let mut value = base64::engine::general_purpose::STANDARD.encode(mac);
            if !signed {
                value.insert(0, '!');
            }
            put(signing::X_FRAPPE_SIGNATURE, value.as_bytes());
        }
        _ => {
            let (value, _) = body.split_at(body.len().min(64));
            let name = [
                signing::X_SIGNATURE,
                signing::WEBHOOK_SIGNATURE,
                signing::WEBHOOK_TIMESTAMP,
                signing::X_FRAPPE_SIGNATURE,
            ][usize::from(mode >> 3) % 4];
            put(signing::WEBHOOK_ID, b"msg_1");
            put(signing::WEBHOOK_TIMESTAMP, NOW.to_string().as_bytes());
            if name == signing::WEBHOOK_TIMESTAMP {
                // A signature header too, so the timestamp is read.
                put(signing::WEBHOOK_SIGNATURE, b"v1,bm9wZQ==");
            }
            put(name, value);
        }
    }
    let verified = VERIFIER.verify(&headers, body, NOW);
    if signed && mode & 3 != 3 {
        assert_eq!(verified, Ok(()), "a correctly signed body is accepted");
    }
    if verified.is_ok() {
        if let Err(refused) = payload::parse(body) {
            assert!(
                !refused.field.is_empty(),
                "the refusal names the field: {refused:?}"
            );
        }
    }
});

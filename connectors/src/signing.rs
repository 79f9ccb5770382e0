//! Webhook signatures, both ways: the `erp_webhook` source verifies what the ERP sends and
//! the `storefront_webhook` sink signs what it delivers, with the same headers and HMAC.
//!
//! `X-Signature` (hex HMAC-SHA256 of the raw body, optional `sha256=` prefix), Standard
//! Webhooks (`webhook-id`/`webhook-timestamp`/`webhook-signature`) and ERPNext's
//! `X-Frappe-Webhook-Signature` (base64). Every comparison is constant-time
//! (`Mac::verify_slice`), and every configured secret is tried so secrets can be rotated.

use std::time::Duration;

use axum::http::HeaderMap;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Header carrying the hex HMAC of the body.
pub const X_SIGNATURE: &str = "x-signature";
/// ERPNext's base64 HMAC header.
pub const X_FRAPPE_SIGNATURE: &str = "x-frappe-webhook-signature";
/// Standard Webhooks: message id.
pub const WEBHOOK_ID: &str = "webhook-id";
/// Standard Webhooks: send time, Unix seconds.
pub const WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
/// Standard Webhooks: `v1,<base64>` signatures, space separated.
pub const WEBHOOK_SIGNATURE: &str = "webhook-signature";

/// Why a request's signature was refused; the reason is safe to return to the caller.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    /// No signature header at all.
    #[error(
        "missing signature: send X-Signature (hex HMAC-SHA256 of the body) or Standard Webhooks headers"
    )]
    Missing,
    /// A header is present but cannot be parsed.
    #[error("malformed {0} header")]
    Malformed(&'static str),
    /// No configured secret produces this signature.
    #[error("signature does not match")]
    Mismatch,
    /// The signed send time is too far from now.
    #[error("webhook-timestamp is outside the allowed tolerance")]
    Stale,
}

/// Verifies requests against a set of secrets.
pub struct Verifier {
    secrets: Vec<SecretString>,
    standard_webhooks: bool,
    frappe: bool,
    tolerance: Duration,
}

impl Verifier {
    /// A verifier accepting any of `secrets`.
    pub fn new(
        secrets: Vec<SecretString>,
        standard_webhooks: bool,
        frappe: bool,
        tolerance: Duration,
    ) -> Self {
        Self {
            secrets,
            standard_webhooks,
            frappe,
            tolerance,
        }
    }

    /// Verifies `body` against the signature headers; `now` is Unix seconds.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8], now: i64) -> Result<(), SignatureError> {
        if self.standard_webhooks && headers.contains_key(WEBHOOK_SIGNATURE) {
            return self.verify_standard(headers, body, now);
        }
        if let Some(value) = headers.get(X_SIGNATURE) {
            let text = value
                .to_str()
                .map_err(|_| SignatureError::Malformed("X-Signature"))?
                .trim();
            let text = text.strip_prefix("sha256=").unwrap_or(text);
            let expected =
                hex::decode(text).map_err(|_| SignatureError::Malformed("X-Signature"))?;
            return self.check(|key| mac(key, &[body]), &expected, false);
        }
        if self.frappe
            && let Some(value) = headers.get(X_FRAPPE_SIGNATURE)
        {
            let expected = value
                .to_str()
                .ok()
                .and_then(|t| BASE64.decode(t.trim()).ok())
                .ok_or(SignatureError::Malformed("X-Frappe-Webhook-Signature"))?;
            return self.check(|key| mac(key, &[body]), &expected, false);
        }
        Err(SignatureError::Missing)
    }

    fn verify_standard(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<(), SignatureError> {
        let get = |name: &'static str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .ok_or(SignatureError::Malformed(name))
        };
        let id = get(WEBHOOK_ID)?;
        let timestamp_text = get(WEBHOOK_TIMESTAMP)?;
        let timestamp: i64 = timestamp_text
            .trim()
            .parse()
            .map_err(|_| SignatureError::Malformed(WEBHOOK_TIMESTAMP))?;
        if now.abs_diff(timestamp) > self.tolerance.as_secs() {
            return Err(SignatureError::Stale);
        }
        let signatures = get(WEBHOOK_SIGNATURE)?;
        for candidate in signatures.split_whitespace() {
            let Some(encoded) = candidate.strip_prefix("v1,") else {
                continue;
            };
            let Ok(expected) = BASE64.decode(encoded) else {
                continue;
            };
            let parts: [&[u8]; 5] = [id.as_bytes(), b".", timestamp_text.as_bytes(), b".", body];
            if self.check(|key| mac(key, &parts), &expected, true).is_ok() {
                return Ok(());
            }
        }
        Err(SignatureError::Mismatch)
    }

    fn check(
        &self,
        compute: impl Fn(&[u8]) -> HmacSha256,
        expected: &[u8],
        standard: bool,
    ) -> Result<(), SignatureError> {
        for secret in &self.secrets {
            let key = secret_key(secret.expose_secret(), standard);
            if compute(&key).verify_slice(expected).is_ok() {
                return Ok(());
            }
        }
        Err(SignatureError::Mismatch)
    }
}

/// Standard Webhooks secrets are `whsec_<base64>`; the key is the decoded bytes.
fn secret_key(secret: &str, standard: bool) -> Vec<u8> {
    if standard
        && let Some(encoded) = secret.strip_prefix("whsec_")
        && let Ok(key) = BASE64.decode(encoded)
    {
        return key;
    }
    secret.as_bytes().to_vec()
}

fn mac(key: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    for part in parts {
        mac.update(part);
    }
    mac
}

/// Lowercase hex HMAC-SHA256 of `body` with `secret`: what an ERP puts in `X-Signature`.
pub fn sign_hex(secret: &[u8], body: &[u8]) -> String {
    hex::encode(mac(secret, &[body]).finalize().into_bytes())
}

/// A Standard Webhooks `webhook-signature` value (`v1,<base64>`).
pub fn sign_standard(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let key = secret_key(secret, true);
    let ts = timestamp.to_string();
    let digest = mac(&key, &[id.as_bytes(), b".", ts.as_bytes(), b".", body])
        .finalize()
        .into_bytes();
    format!("v1,{}", BASE64.encode(digest))
}

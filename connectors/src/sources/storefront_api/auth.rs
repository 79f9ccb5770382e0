//! API tokens: `Authorization: Bearer <token>` or `X-API-Key: <token>`, compared in
//! constant time against every configured token.

use axum::http::HeaderMap;
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

/// The configured tokens.
pub struct ApiAuth {
    tokens: Vec<SecretString>,
}

impl ApiAuth {
    /// Accepts any of `tokens`.
    pub fn new(tokens: Vec<SecretString>) -> Self {
        Self { tokens }
    }

    /// The `401` for a request [`check`](Self::check) refused.
    pub fn refuse(reason: &str) -> axum::response::Response {
        crate::sources::http::unauthorized(reason, Some("Bearer"))
    }

    /// `Ok` if the request carries a configured token; else why not.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), &'static str> {
        let bearer = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            });
        let key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
        let Some(presented) = bearer.or(key).map(str::trim) else {
            return Err("missing credentials: send Authorization: Bearer <token> or X-API-Key");
        };
        let mut matched = 0u8;
        for token in &self.tokens {
            matched |= token
                .expose_secret()
                .as_bytes()
                .ct_eq(presented.as_bytes())
                .unwrap_u8();
        }
        if matched == 1 {
            Ok(())
        } else {
            Err("invalid token")
        }
    }
}

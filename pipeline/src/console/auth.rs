//! Who is calling: console logins and connector-API bearer tokens.
//!
//! A login (`POST /console/login` with an operator token) sets a session cookie holding the
//! token's name, role, a fingerprint of the token and the expiry, signed with a key derived
//! from every configured token: every replica with the same configuration accepts it, and
//! removing or rotating a token ends its sessions. The cookie is `HttpOnly`,
//! `SameSite=Strict`, limited to `/console` and `Secure` when the listener serves HTTPS.
//!
//! Every state-changing console request carries a CSRF token bound to the session (a form
//! field `csrf` or the header `X-CSRF-Token`), and, when the browser sends one, an `Origin`
//! of this listener. The login form carries a token of its own, the same in a short-lived
//! cookie and the form (double submit), so no other site can log a browser in.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use erpstream_connectors::secret::SecretError;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::config::{ConsoleConfig, Role};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "erpstream_console";
/// The login form's double-submit cookie.
pub const LOGIN_COOKIE: &str = "erpstream_console_login";
/// The header htmx requests carry the CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

type HmacSha256 = Hmac<Sha256>;

/// One configured token, read at start.
struct Token {
    secret: SecretString,
    role: Role,
    name: String,
    fingerprint: String,
}

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    /// The token's name.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The CSRF token of its session (empty for bearer-token callers, who need none).
    pub csrf: String,
}

/// What a session cookie holds.
#[derive(Serialize, Deserialize)]
struct Claims {
    /// Token name.
    n: String,
    /// Role.
    r: String,
    /// Token fingerprint.
    f: String,
    /// Expiry, epoch ms.
    e: i64,
}

/// The console's tokens and signing key.
pub struct Auth {
    tokens: Vec<Token>,
    key: [u8; 32],
    session_ms: i64,
    /// Whether cookies are marked `Secure` (the listener serves HTTPS).
    pub secure: bool,
}

impl Auth {
    /// Reads every configured token (a token that cannot be read stops the start).
    pub fn new(config: &ConsoleConfig, secure: bool) -> Result<Self, SecretError> {
        let mut tokens = Vec::with_capacity(config.tokens.len());
        let mut key = Sha256::new();
        key.update(b"erpstream console session key\0");
        for token in &config.tokens {
            let secret = token.token.resolve()?;
            let fingerprint = fingerprint(&secret);
            key.update(secret.expose_secret().as_bytes());
            key.update(b"\0");
            tokens.push(Token {
                secret,
                role: token.role,
                name: token.name.trim().to_string(),
                fingerprint,
            });
        }
        Ok(Self {
            tokens,
            key: key.finalize().into(),
            session_ms: i64::try_from(config.session.as_millis()).unwrap_or(i64::MAX),
            secure,
        })
    }

    /// The token presented, if it is one of the configured ones (compared in constant time,
    /// every token tried).
    fn token(&self, presented: &str) -> Option<&Token> {
        let mut found = None;
        for token in &self.tokens {
            if bool::from(
                token
                    .secret
                    .expose_secret()
                    .as_bytes()
                    .ct_eq(presented.as_bytes()),
            ) {
                found = Some(token);
            }
        }
        found
    }

    /// The caller of the connector API, from `Authorization: Bearer <token>`.
    pub fn bearer(&self, authorization: Option<&str>) -> Option<Operator> {
        let presented = authorization?.strip_prefix("Bearer ")?.trim();
        self.token(presented).map(|token| Operator {
            name: token.name.clone(),
            role: token.role,
            csrf: String::new(),
        })
    }

    /// Logs in with `presented`: the session cookie's value, and who it is.
    pub fn login(&self, presented: &str, now_ms: i64) -> Option<(String, Operator)> {
        let token = self.token(presented.trim())?;
        let claims = Claims {
            n: token.name.clone(),
            r: token.role.name().to_string(),
            f: token.fingerprint.clone(),
            e: now_ms.saturating_add(self.session_ms),
        };
        let payload = B64.encode(serde_json::to_vec(&claims).ok()?);
        let cookie = format!("{payload}.{}", B64.encode(self.mac(b"session", &payload)));
        let operator = Operator {
            name: token.name.clone(),
            role: token.role,
            csrf: B64.encode(self.mac(b"csrf", &payload)),
        };
        Some((cookie, operator))
    }

    /// Who a session cookie belongs to, if it is genuine, unexpired and its token still
    /// configured.
    pub fn session(&self, cookie: &str, now_ms: i64) -> Option<Operator> {
        let (payload, mac) = cookie.split_once('.')?;
        let mac = B64.decode(mac).ok()?;
        let mut check = HmacSha256::new_from_slice(&self.key).ok()?;
        check.update(b"session\0");
        check.update(payload.as_bytes());
        check.verify_slice(&mac).ok()?;
        let claims: Claims = serde_json::from_slice(&B64.decode(payload).ok()?).ok()?;
        if claims.e <= now_ms {
            return None;
        }
        let token = self
            .tokens
            .iter()
            .find(|t| t.name == claims.n && t.fingerprint == claims.f)?;
        (token.role.name() == claims.r).then(|| Operator {
            name: token.name.clone(),
            role: token.role,
            csrf: B64.encode(self.mac(b"csrf", payload)),
        })
    }

    /// How long a session lasts, in seconds (the cookie's `Max-Age`).
    pub fn session_seconds(&self) -> i64 {
        self.session_ms / 1000
    }

    fn mac(&self, purpose: &[u8], payload: &str) -> Vec<u8> {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("any key length");
        mac.update(purpose);
        mac.update(b"\0");
        mac.update(payload.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }
}

/// Whether a presented CSRF token is the session's (constant time).
pub fn csrf_matches(operator: &Operator, presented: &str) -> bool {
    !operator.csrf.is_empty() && bool::from(operator.csrf.as_bytes().ct_eq(presented.as_bytes()))
}

/// A fresh random token for the login form's double submit.
pub fn login_nonce() -> String {
    B64.encode(rand::random::<[u8; 24]>())
}

/// Whether the login form's token matches its cookie (constant time).
pub fn login_nonce_matches(cookie: &str, form: &str) -> bool {
    !cookie.is_empty() && bool::from(cookie.as_bytes().ct_eq(form.as_bytes()))
}

/// A short, non-reversible name of a token, so a session ends when its token changes.
fn fingerprint(secret: &SecretString) -> String {
    let digest = Sha256::digest(secret.expose_secret().as_bytes());
    B64.encode(&digest[..9])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::config::ConsoleToken;
    use erpstream_connectors::secret::SecretRef;
    use std::time::Duration;

    /// Token files under the temp directory: (file, secret).
    fn token_file(secret: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!(
            "erpstream-console-test-{}-{secret}",
            std::process::id()
        ));
        std::fs::write(&path, secret).expect("token file");
        path
    }

    fn configured(tokens: &[(&str, Role, &str)]) -> Auth {
        let config = ConsoleConfig {
            tokens: tokens
                .iter()
                .map(|(secret, role, name)| ConsoleToken {
                    token: SecretRef::File(token_file(secret)),
                    role: *role,
                    name: (*name).to_string(),
                })
                .collect(),
            session: Duration::from_secs(3600),
        };
        Auth::new(&config, false).expect("tokens")
    }

    #[test]
    fn a_login_gives_a_session_only_this_configuration_accepts_until_it_expires() {
        let auth = configured(&[
            ("operator-secret-1", Role::Operator, "ops"),
            ("viewer-secret-1", Role::Viewer, "watcher"),
        ]);
        assert!(auth.login("wrong", 0).is_none());
        let (cookie, who) = auth.login("viewer-secret-1", 1_000).expect("login");
        assert_eq!((who.name.as_str(), who.role), ("watcher", Role::Viewer));
        assert!(!cookie.contains("viewer-secret-1"));
        assert_eq!(auth.session(&cookie, 2_000), Some(who.clone()));
        assert_eq!(auth.session(&cookie, 1_000 + 3_600_000), None, "expired");
        let mut forged = cookie.clone();
        forged.replace_range(0..1, if cookie.starts_with('e') { "f" } else { "e" });
        assert_eq!(auth.session(&forged, 2_000), None, "tampered");
        let other = configured(&[
            ("operator-secret-1", Role::Operator, "ops"),
            ("other-secret-1", Role::Viewer, "watcher"),
        ]);
        assert_eq!(other.session(&cookie, 2_000), None, "token rotated");
        assert!(csrf_matches(&who, &who.csrf));
        assert!(!csrf_matches(&who, "x"));
    }

    #[test]
    fn bearer_tokens_name_their_caller() {
        let auth = configured(&[("operator-secret-1", Role::Operator, "ops")]);
        let who = auth
            .bearer(Some("Bearer operator-secret-1"))
            .expect("known");
        assert_eq!((who.name.as_str(), who.role), ("ops", Role::Operator));
        assert!(auth.bearer(Some("Bearer nope")).is_none());
        assert!(auth.bearer(Some("operator-secret-1")).is_none());
        assert!(auth.bearer(None).is_none());
        assert!(!csrf_matches(&who, ""), "a bearer caller has no CSRF token");
    }
}

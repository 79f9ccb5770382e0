use std::time::Duration;

use serde::Deserialize;

use crate::retry::RetryConfig;
use crate::secret::SecretRef;

/// Configuration of a `storefront_webhook` sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorefrontWebhookConfig {
    /// Logical topics to deliver: `inventory.available` and/or `catalog.update` contracts.
    pub inputs: Vec<String>,
    /// URL every delivery is POSTed to.
    pub url: String,
    /// CA bundle (PEM) the server's certificate must chain to (an https `url`); without
    /// it, the system's CAs. Invalid certificates are always refused.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// The storefront's secret; deliveries carry `X-Signature` (hex HMAC-SHA256 of the body).
    pub secret: SecretRef,
    /// Longest time one request may take before it counts as failed (and is retried).
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Deliveries in flight at once (never more than one per sku and location).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Keys waiting for delivery before consumption pauses.
    #[serde(default = "default_max_pending")]
    pub max_pending: usize,
    /// How long an event's idempotency key is remembered to drop repeats.
    #[serde(default = "default_dedupe_window", with = "humantime_serde")]
    pub dedupe_window: Duration,
    /// Retry schedule for 408, 429, 5xx and timeouts.
    #[serde(default)]
    pub retry: RetryConfig,
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_concurrency() -> usize {
    32
}
fn default_max_pending() -> usize {
    100_000
}
fn default_dedupe_window() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

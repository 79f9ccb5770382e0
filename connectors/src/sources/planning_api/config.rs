use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use crate::retry::RetryConfig;
use crate::secret::SecretRef;

/// Configuration of a `planning_api` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanningApiConfig {
    /// Postgres URL of the planning database (idempotency records, plans, audit).
    pub database: String,
    /// Bearer tokens and the role each grants.
    pub tokens: Vec<TokenConfig>,
    /// Largest request body.
    #[serde(default = "default_max_body")]
    pub max_body: ByteSize,
    /// Most items in one request.
    #[serde(default = "default_max_items")]
    pub max_items: usize,
    /// Topic of product items (`catalog.update` contract).
    #[serde(default = "default_products_topic")]
    pub products_topic: String,
    /// Topic of inventory items.
    #[serde(default = "default_inventory_topic")]
    pub inventory_topic: String,
    /// Topic of demand actuals.
    #[serde(default = "default_demand_topic")]
    pub demand_topic: String,
    /// Where approved plans are published.
    pub publish: PublishConfig,
}

/// One token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The secret.
    pub token: SecretRef,
    /// `admin`, `sop_coordinator`, or any other role (which may call nothing here).
    pub role: String,
    /// Who it is, for the audit (default: the role).
    #[serde(default)]
    pub name: Option<String>,
}

/// Publish-back to the ERP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishConfig {
    /// Base URL of the ERP's plan endpoints (`POST <url>/api/plans/{demand,supply}`).
    pub url: String,
    /// CA bundle (PEM) the server's certificate must chain to (an https `url`); without
    /// it, the system's CAs. Invalid certificates are always refused.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// Bearer token for the ERP.
    #[serde(default)]
    pub token: Option<SecretRef>,
    /// Lines whose period starts before today + this are not published (frozen horizon).
    #[serde(default = "default_frozen_horizon", with = "humantime_serde")]
    pub frozen_horizon: Duration,
    /// Time one ERP request may take.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Retries on 408/429/5xx/timeouts within one publish call.
    #[serde(default = "default_retry")]
    pub retry: RetryConfig,
}

fn default_max_body() -> ByteSize {
    ByteSize::mib(8)
}
fn default_max_items() -> usize {
    10_000
}
fn default_products_topic() -> String {
    "catalog.update".into()
}
fn default_inventory_topic() -> String {
    "inventory.change".into()
}
fn default_demand_topic() -> String {
    "demand.actual".into()
}
fn default_frozen_horizon() -> Duration {
    Duration::from_secs(14 * 86_400)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_retry() -> RetryConfig {
    RetryConfig {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(200),
        max_backoff: Duration::from_secs(2),
    }
}

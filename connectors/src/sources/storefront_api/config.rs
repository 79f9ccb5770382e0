use bytesize::ByteSize;
use serde::Deserialize;

use crate::secret::SecretRef;

/// Configuration of a `storefront_api` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorefrontApiConfig {
    /// Accepted API tokens, sent as `Authorization: Bearer <token>` or `X-API-Key: <token>`;
    /// list more than one while rotating.
    pub tokens: Vec<SecretRef>,
    /// Postgres URL of the store that remembers answered requests (idempotency).
    pub database: String,
    /// Location held for order lines that name none; without it such lines are refused.
    #[serde(default)]
    pub default_location: Option<String>,
    /// Largest accepted request body, e.g. `1MiB`.
    #[serde(default = "default_max_body")]
    pub max_body: ByteSize,
    /// Value of `source_system` on the events.
    #[serde(default = "default_source_system")]
    pub source_system: String,
    /// Logical topic for orders.
    #[serde(default = "default_orders_topic")]
    pub orders_topic: String,
    /// Logical topic for adjustments.
    #[serde(default = "default_adjustments_topic")]
    pub adjustments_topic: String,
    /// Logical topic for per-sku holds (keyed by sku, co-partitioned with
    /// `inventory.change`).
    #[serde(default = "default_reservations_topic")]
    pub reservations_topic: String,
    /// Id of the `inventory` processor whose state `GET /api/inventory/snapshot` serves.
    #[serde(default)]
    pub snapshot: Option<String>,
}

fn default_max_body() -> ByteSize {
    ByteSize::mib(1)
}
fn default_source_system() -> String {
    "storefront".into()
}
fn default_orders_topic() -> String {
    "sales.order".into()
}
fn default_adjustments_topic() -> String {
    "inventory.adjustment".into()
}
fn default_reservations_topic() -> String {
    "inventory.reservation".into()
}

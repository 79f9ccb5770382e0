use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use crate::secret::SecretRef;

/// Configuration of an `erp_webhook` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErpWebhookConfig {
    /// HTTP path the ERP posts to.
    #[serde(default = "default_path")]
    pub path: String,
    /// Shared HMAC secrets; list more than one while rotating (any of them verifies).
    pub secrets: Vec<SecretRef>,
    /// Accept Standard Webhooks headers (`webhook-id`, `webhook-timestamp`,
    /// `webhook-signature`) as an alternative to `X-Signature`.
    #[serde(default = "default_true")]
    pub standard_webhooks: bool,
    /// Accept ERPNext's `X-Frappe-Webhook-Signature` (base64 HMAC-SHA256 of the body).
    #[serde(default)]
    pub frappe_signature: bool,
    /// Largest allowed difference between a signed send time (`webhook-timestamp`) and now.
    #[serde(default = "default_tolerance", with = "humantime_serde")]
    pub timestamp_tolerance: Duration,
    /// Largest accepted request body, e.g. `1MiB`.
    #[serde(default = "default_max_body")]
    pub max_body: ByteSize,
    /// Value of `source_system` on the events (the ERP's name).
    #[serde(default = "default_source_system")]
    pub source_system: String,
    /// Logical topic for `catalog.update` events.
    #[serde(default = "default_catalog_topic")]
    pub catalog_topic: String,
    /// Logical topic for `inventory.change` events.
    #[serde(default = "default_inventory_topic")]
    pub inventory_topic: String,
    /// Logical topic for orders the ERP reports cancelled; `sales.order` webhooks are
    /// refused unless it and `reservations_topic` are set.
    #[serde(default)]
    pub orders_topic: Option<String>,
    /// Logical topic of the holds a cancellation releases.
    #[serde(default)]
    pub reservations_topic: Option<String>,
}

fn default_path() -> String {
    "/webhooks/erp".into()
}
fn default_true() -> bool {
    true
}
fn default_tolerance() -> Duration {
    Duration::from_secs(300)
}
fn default_max_body() -> ByteSize {
    ByteSize::mib(1)
}
fn default_source_system() -> String {
    "ERP".into()
}
fn default_catalog_topic() -> String {
    "catalog.update".into()
}
fn default_inventory_topic() -> String {
    "inventory.change".into()
}

use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use crate::secret::SecretRef;
use crate::validation::Problem;

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

impl ErpWebhookConfig {
    /// Checks the rules no type can express; `at` is this component's path in the file.
    pub(super) fn validate_settings(&self, at: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        if !self.path.starts_with('/') {
            problems.push(Problem::new(format!("{at}.path"), "must start with /"));
        }
        if self.secrets.is_empty() {
            problems.push(Problem::new(
                format!("{at}.secrets"),
                "must list at least one secret",
            ));
        }
        if self.timestamp_tolerance.is_zero() {
            problems.push(Problem::new(
                format!("{at}.timestamp_tolerance"),
                "must be > 0",
            ));
        }
        if self.max_body.as_u64() == 0 {
            problems.push(Problem::new(format!("{at}.max_body"), "must be > 0"));
        }
        if self.orders_topic.is_some() != self.reservations_topic.is_some() {
            problems.push(Problem::new(
                format!("{at}.reservations_topic"),
                "orders_topic and reservations_topic are set together (a cancellation releases holds)",
            ));
        }
        if self.source_system.trim().is_empty() {
            problems.push(Problem::new(
                format!("{at}.source_system"),
                "must not be empty",
            ));
        }
        problems
    }
}

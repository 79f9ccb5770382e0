use std::time::Duration;

use serde::Deserialize;

use crate::retry::RetryConfig;
use crate::secret::SecretRef;

/// Configuration of an `erp_rest` sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErpRestConfig {
    /// Logical topics to write back: `sales.order` and/or `inventory.adjustment` contracts.
    pub inputs: Vec<String>,
    /// Ids of the sources whose documents are written back (the storefront API); documents
    /// that came from the ERP itself are never sent back to it.
    pub sources: Vec<String>,
    /// Base URL of the ERP, e.g. `https://erp.example.com`.
    pub url: String,
    /// CA bundle (PEM) the server's certificate must chain to (an https `url`); without
    /// it, the system's CAs. Invalid certificates are always refused.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// API shape of the ERP.
    #[serde(default)]
    pub preset: Preset,
    /// Credential: sent as `Authorization: Bearer <token>` (`generic`) or
    /// `Authorization: token <api_key:api_secret>` (`erpnext`).
    #[serde(default)]
    pub token: Option<SecretRef>,
    /// `generic` only: how orders are written: `orders` (§5.1 `POST /api/sales/orders`) or
    /// `adjustments` (§5.2 `POST /api/inventory/adjust`, for ERPs without order intake).
    #[serde(default)]
    pub orders_as: OrdersAs,
    /// `erpnext` only: settings of the created Sales Orders.
    #[serde(default)]
    pub erpnext: ErpNextSettings,
    /// Logical topic of the reservation records that tell the inventory processor a
    /// document was acknowledged by the ERP.
    #[serde(default = "default_reservations_topic")]
    pub reservations_topic: String,
    /// Longest time one request may take before it counts as failed (and is retried).
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Retry schedule for 408, 429, 5xx and timeouts; then the record is dead-lettered.
    #[serde(default)]
    pub retry: RetryConfig,
    /// How long a fetch may wait for new documents (overrides `kafka.fetch_wait`: stock
    /// holds are taken at once by the API, so write-back can afford to poll slowly).
    #[serde(default = "default_fetch_wait", with = "humantime_serde")]
    pub fetch_wait: Duration,
}

/// The ERP's API shape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// The sales interface spec §5 endpoints, with an `Idempotency-Key` header.
    #[default]
    Generic,
    /// Frappe/ERPNext: `Sales Order` documents through `/api/resource/Sales Order`.
    Erpnext,
}

/// How the `generic` preset writes orders.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrdersAs {
    /// §5.1.
    #[default]
    Orders,
    /// §5.2, one deduction per line.
    Adjustments,
}

/// Fields of ERPNext Sales Orders that the storefront does not send.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErpNextSettings {
    /// Customer used when the order names none that exists in ERPNext.
    #[serde(default = "default_customer")]
    pub customer: String,
    /// Submit the order (docstatus 1) so ERPNext reserves the stock.
    #[serde(default = "default_submit")]
    pub submit: bool,
    /// Days from the order date to `delivery_date`.
    #[serde(default)]
    pub delivery_days: u32,
}

impl Default for ErpNextSettings {
    fn default() -> Self {
        Self {
            customer: default_customer(),
            submit: default_submit(),
            delivery_days: 0,
        }
    }
}

fn default_customer() -> String {
    "Web Customer".into()
}
fn default_submit() -> bool {
    true
}
fn default_reservations_topic() -> String {
    "inventory.reservation".into()
}
fn default_fetch_wait() -> Duration {
    Duration::from_millis(250)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}

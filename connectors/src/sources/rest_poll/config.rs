use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::retry::RetryConfig;
use crate::secret::SecretRef;
use crate::sources::mapping::{FieldSource, Mapping, OnDelete};
use crate::validation::Problem;

/// Configuration of a `rest_poll` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestPollConfig {
    /// The API's dialect.
    pub preset: Preset,
    /// Base URL of the ERP (`https://erp.example.com`; for `odata`, up to but excluding
    /// `/api/v2/odata`).
    pub url: String,
    /// CA bundle (PEM) the server's certificate must chain to (an https `url`); without
    /// it, the system's CAs. Invalid certificates are always refused.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// Credentials.
    pub auth: AuthConfig,
    /// Epicor company (`odata` only): `/api/v2/odata/{company}/BaqSvc/...`.
    #[serde(default)]
    pub company: Option<String>,
    /// Postgres URL of erpstream's own database, where cursors and record hashes are kept.
    pub state_database: String,
    /// Time between the end of one poll and the start of the next.
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Each poll re-reads changes this far behind the stored cursor: records written late
    /// (clock skew, long ERP transactions) or in the cursor's own second are not missed, and
    /// unchanged ones are recognised by their hash and not published again.
    #[serde(default = "default_look_back", with = "humantime_serde")]
    pub look_back: Duration,
    /// Records per request.
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    /// Requests per second at most, retries included.
    #[serde(default = "default_rate")]
    pub max_requests_per_second: f64,
    /// Time one request may take.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Retries of one request on 408, 429 (honouring `Retry-After`), 5xx and timeouts.
    #[serde(default = "default_retry")]
    pub retry: RetryConfig,
    /// When the source stops calling a failing ERP.
    #[serde(default)]
    pub circuit: CircuitConfig,
    /// How often every record's key is listed to find deletions the cursor cannot see; `0s`
    /// turns it off.
    #[serde(default = "default_deletion_check", with = "humantime_serde")]
    pub deletion_check: Duration,
    /// Value of `source_system` on the events.
    #[serde(default = "default_source_system")]
    pub source_system: String,
    /// What is read, by resource name (used in state, metrics and idempotency keys).
    pub resources: BTreeMap<String, ResourceConfig>,
}

/// The API's dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// Frappe REST (`/api/resource/<DocType>`, `Authorization: token key:secret`).
    Erpnext,
    /// OData v4 over Epicor Kinetic BAQs (`/api/v2/odata/{company}/BaqSvc/{baq}/Data`,
    /// `X-API-Key` plus basic auth).
    Odata,
}

impl Preset {
    /// Name used in logs and errors.
    pub fn peer(self) -> &'static str {
        match self {
            Preset::Erpnext => "ERPNext",
            Preset::Odata => "the OData service",
        }
    }
}

/// Credentials; which ones a preset needs is checked by `validate`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// ERPNext API key; the OData service's `X-API-Key`.
    pub api_key: SecretRef,
    /// ERPNext API secret.
    #[serde(default)]
    pub api_secret: Option<SecretRef>,
    /// OData basic-auth user.
    #[serde(default)]
    pub username: Option<SecretRef>,
    /// OData basic-auth password.
    #[serde(default)]
    pub password: Option<SecretRef>,
}

/// The circuit: after `failures` polls in a row fail (each request already retried), the
/// source reports not ready and waits `open_for` before one test request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitConfig {
    /// Failed polls in a row that open the circuit.
    #[serde(default = "default_failures")]
    pub failures: u32,
    /// Time the circuit stays open before a test request.
    #[serde(default = "default_open_for", with = "humantime_serde")]
    pub open_for: Duration,
}

impl Default for CircuitConfig {
    fn default() -> Self {
        Self {
            failures: default_failures(),
            open_for: default_open_for(),
        }
    }
}

/// One collection read from the ERP and how its records become events.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceConfig {
    /// ERPNext DocType (`Item`, `Bin`, `Sales Order`, `Supplier`).
    #[serde(default)]
    pub doctype: Option<String>,
    /// OData: the BAQ (`/BaqSvc/{baq}/Data`).
    #[serde(default)]
    pub baq: Option<String>,
    /// Fixed conditions: ERPNext filters (`[["disabled", "=", 0]]`); for OData, a `$filter`
    /// expression string.
    #[serde(default)]
    pub filters: Option<serde_json::Value>,
    /// Fields identifying a record (`[item_code, warehouse]`); default `[name]` for ERPNext.
    #[serde(default)]
    pub key: Vec<String>,
    /// The record's change timestamp, the cursor's field; default `modified` for ERPNext.
    #[serde(default)]
    pub changed_field: Option<String>,
    /// Logical topic the records go to.
    pub topic: String,
    /// Event field path → source field, constant or transform.
    pub fields: BTreeMap<String, FieldSource>,
    /// Source field holding the change's time; default: the poll's time.
    #[serde(default)]
    pub occurred_at: Option<String>,
    /// What a record that disappeared from the ERP becomes (its key fields are known).
    #[serde(default)]
    pub on_delete: OnDelete,
}

impl ResourceConfig {
    /// The mapping part.
    pub fn mapping(&self) -> Mapping {
        Mapping {
            topic: self.topic.clone(),
            fields: self.fields.clone(),
            occurred_at: self.occurred_at.clone(),
            on_delete: self.on_delete.clone(),
        }
    }

    /// Key fields, with the preset's default.
    pub fn key_fields(&self, preset: Preset) -> Vec<String> {
        match (self.key.is_empty(), preset) {
            (true, Preset::Erpnext) => vec!["name".into()],
            _ => self.key.clone(),
        }
    }

    /// The cursor's field, with the preset's default.
    pub fn changed_field(&self, preset: Preset) -> Option<String> {
        match (&self.changed_field, preset) {
            (Some(field), _) => Some(field.clone()),
            (None, Preset::Erpnext) => Some("modified".into()),
            (None, Preset::Odata) => None,
        }
    }
}

fn default_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_look_back() -> Duration {
    Duration::from_secs(60)
}
fn default_page_size() -> u32 {
    5_000
}
fn default_rate() -> f64 {
    10.0
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_retry() -> RetryConfig {
    RetryConfig {
        max_attempts: 5,
        initial_backoff: Duration::from_millis(500),
        max_backoff: Duration::from_secs(30),
    }
}
fn default_failures() -> u32 {
    3
}
fn default_open_for() -> Duration {
    Duration::from_secs(30)
}
fn default_deletion_check() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_source_system() -> String {
    "ERP".into()
}

impl RestPollConfig {
    /// Checks the rules no type can express; `at` is this component's path in the file.
    /// Field paths are checked against the topics' contracts by the topology.
    pub(super) fn validate_settings(&self, at: &str) -> Vec<Problem> {
        let mut problems = crate::validation::Checks::new(at)
            .ca_file("ca_file", &self.url, self.ca_file.as_deref())
            .done();
        match reqwest::Url::parse(&self.url) {
            Ok(url) if url.scheme() == "http" || url.scheme() == "https" => {}
            _ => problems.push(Problem::new(
                format!("{at}.url"),
                "must be an http:// or https:// URL",
            )),
        }
        problems.extend(crate::postgres::check_url(
            &format!("{at}.state_database"),
            &self.state_database,
        ));
        match self.preset {
            Preset::Erpnext => {
                if self.auth.api_secret.is_none() {
                    problems.push(Problem::new(
                        format!("{at}.auth.api_secret"),
                        "is required by the erpnext preset (Authorization: token key:secret)",
                    ));
                }
            }
            Preset::Odata => {
                if self.auth.username.is_none() || self.auth.password.is_none() {
                    problems.push(Problem::new(
                        format!("{at}.auth"),
                        "the odata preset needs username and password (basic auth) besides api_key",
                    ));
                }
                if self.company.as_deref().is_none_or(|c| c.trim().is_empty()) {
                    problems.push(Problem::new(
                        format!("{at}.company"),
                        "is required by the odata preset",
                    ));
                }
            }
        }
        if self.interval < Duration::from_millis(100) {
            problems.push(Problem::new(
                format!("{at}.interval"),
                "must be at least 100ms",
            ));
        }
        if self.page_size == 0 {
            problems.push(Problem::new(format!("{at}.page_size"), "must be > 0"));
        }
        if !(self.max_requests_per_second > 0.0 && self.max_requests_per_second.is_finite()) {
            problems.push(Problem::new(
                format!("{at}.max_requests_per_second"),
                "must be a positive number",
            ));
        }
        if self.request_timeout.is_zero() {
            problems.push(Problem::new(format!("{at}.request_timeout"), "must be > 0"));
        }
        problems.extend(self.retry.validate(&format!("{at}.retry")));
        if self.circuit.failures == 0 {
            problems.push(Problem::new(
                format!("{at}.circuit.failures"),
                "must be > 0",
            ));
        }
        if self.source_system.trim().is_empty() {
            problems.push(Problem::new(
                format!("{at}.source_system"),
                "must not be empty",
            ));
        }
        if self.resources.is_empty() {
            problems.push(Problem::new(
                format!("{at}.resources"),
                "must list at least one resource",
            ));
        }
        for (name, resource) in &self.resources {
            let at = format!("{at}.resources.{name}");
            if !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                problems.push(Problem::new(&at, "name must be letters, digits, _ or -"));
            }
            match (self.preset, &resource.doctype, &resource.baq) {
                (Preset::Erpnext, Some(d), None) if !d.trim().is_empty() => {}
                (Preset::Erpnext, _, _) => problems.push(Problem::new(
                    format!("{at}.doctype"),
                    "the erpnext preset reads a doctype (and no baq)",
                )),
                (Preset::Odata, None, Some(b)) if !b.trim().is_empty() => {}
                (Preset::Odata, _, _) => problems.push(Problem::new(
                    format!("{at}.baq"),
                    "the odata preset reads a baq (and no doctype)",
                )),
            }
            match (self.preset, &resource.filters) {
                (_, None) | (Preset::Odata, Some(serde_json::Value::String(_))) => {}
                (Preset::Erpnext, Some(serde_json::Value::Array(conditions)))
                    if conditions.iter().all(|c| {
                        c.as_array()
                            .is_some_and(|c| c.len() == 3 && c[0].is_string() && c[1].is_string())
                    }) => {}
                (Preset::Erpnext, Some(_)) => problems.push(Problem::new(
                    format!("{at}.filters"),
                    "must be a list of [field, operator, value] conditions",
                )),
                (Preset::Odata, Some(_)) => problems.push(Problem::new(
                    format!("{at}.filters"),
                    "must be a $filter expression string",
                )),
            }
            if resource.key_fields(self.preset).is_empty() {
                problems.push(Problem::new(
                    format!("{at}.key"),
                    "must name the fields identifying a record",
                ));
            }
            if resource.changed_field(self.preset).is_none() {
                problems.push(Problem::new(
                    format!("{at}.changed_field"),
                    "must name the records' change timestamp (the cursor)",
                ));
            }
            let names = resource
                .key
                .iter()
                .chain(resource.changed_field.as_ref())
                .map(String::as_str);
            if names.clone().any(|n| n.trim().is_empty()) {
                problems.push(Problem::new(&at, "key and changed_field must name fields"));
            }
            problems.extend(resource.mapping().validate_inputs(&at, "field"));
        }
        problems
    }
}

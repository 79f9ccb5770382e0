//! The ERP's REST API as the poller sees it: paced, retried requests for pages of records in
//! the dialect of a preset (Frappe's `/api/resource`, OData's `$filter/$top/$skip`).

use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use chrono::NaiveDateTime;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use secrecy::ExposeSecret;
use serde_json::{Map, Value, json};
use tokio::sync::Mutex;

use super::config::{Preset, RestPollConfig};
use crate::metrics as m;
use crate::retry::{RetryConfig, backoff, error_chain, retry_after};

/// Requests, by `component_id` and `status` (the HTTP status, `timeout` or `error`).
pub const REQUESTS: &str = "erpstream_rest_poll_requests_total";

/// Why a request gave no page.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 401/403: the credentials are wrong, disabled or lack the permission.
    #[error(
        "{peer} refused the credentials ({status}) for {what}: {detail}; check the api key and secret and the user's read permission"
    )]
    Credentials {
        /// Preset's peer name.
        peer: &'static str,
        /// Status code.
        status: u16,
        /// What was asked for.
        what: String,
        /// The server's message.
        detail: String,
    },
    /// Another 4xx: the request itself is wrong (unknown doctype, bad filter).
    #[error("{peer} refused the request for {what} ({status}): {detail}")]
    Refused {
        /// Preset's peer name.
        peer: &'static str,
        /// Status code.
        status: u16,
        /// What was asked for.
        what: String,
        /// The server's message.
        detail: String,
    },
    /// 408/429/5xx, timeouts or connection failures, on every attempt.
    #[error("{peer} did not answer {what} after {attempts} attempts: {reason}")]
    Unavailable {
        /// Preset's peer name.
        peer: &'static str,
        /// What was asked for.
        what: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        reason: String,
    },
    /// 2xx with a body that is not what the preset answers.
    #[error("{peer} answered {what} with something that is not {expected}")]
    Malformed {
        /// Preset's peer name.
        peer: &'static str,
        /// What was asked for.
        what: String,
        /// What was expected.
        expected: &'static str,
    },
    /// A secret could not be read.
    #[error("credentials: {0}")]
    Secret(#[from] crate::SecretError),
}

/// What one page request asks for.
#[derive(Debug, Clone)]
pub struct PageQuery<'a> {
    /// DocType or BAQ.
    pub collection: &'a str,
    /// The resource's fixed conditions.
    pub filters: Option<&'a Value>,
    /// Fields to return.
    pub select: &'a [String],
    /// Fields to order by, ascending.
    pub order_by: &'a [String],
    /// `(changed field, lower bound)`: only records changed at or after it.
    pub since: Option<(&'a str, NaiveDateTime)>,
    /// `(field, value)` equalities (one record by its key).
    pub equal: &'a [(String, Value)],
    /// Records to skip.
    pub offset: u64,
    /// Records to return at most.
    pub limit: u32,
}

/// One page of records.
#[derive(Debug)]
pub struct Page {
    /// The records, in the requested order.
    pub rows: Vec<Map<String, Value>>,
    /// The server says there is more (a full page, or an OData next link).
    pub more: bool,
}

impl Page {
    /// Reads a page body as `preset` answers it — ERPNext `{"data": [records]}`, OData
    /// `{"value": [records], "@odata.nextLink": …}` — for a request of `limit` records. The
    /// body comes from the ERP, so anything may arrive (the fuzz target `rest_poll_page`
    /// feeds it arbitrary bytes); `Err` is what the body should have been.
    pub fn read(preset: Preset, body: &[u8], limit: u32) -> Result<Page, &'static str> {
        let body: Value = serde_json::from_slice(body).map_err(|_| "JSON")?;
        let (rows, next_link) = match preset {
            Preset::Erpnext => (body.get("data"), false),
            Preset::Odata => (
                body.get("value"),
                body.get("@odata.nextLink").is_some_and(|v| !v.is_null()),
            ),
        };
        let expected = match preset {
            Preset::Erpnext => "{\"data\": [records]}",
            Preset::Odata => "{\"value\": [records]}",
        };
        let rows = rows
            .and_then(Value::as_array)
            .ok_or(expected)?
            .iter()
            .map(|r| r.as_object().cloned().ok_or(expected))
            .collect::<Result<Vec<_>, _>>()?;
        let more = next_link || rows.len() as u64 >= u64::from(limit);
        Ok(Page { rows, more })
    }
}

/// A paced, retrying client of one ERP.
pub struct Api {
    http: reqwest::Client,
    base: String,
    preset: Preset,
    company: String,
    headers: HeaderMap,
    retry: RetryConfig,
    spacing: Duration,
    next_slot: Mutex<Instant>,
    id: String,
}

impl Api {
    /// Reads the credentials and builds the client (no I/O).
    pub fn new(id: &str, config: &RestPollConfig) -> Result<Self, ApiError> {
        let mut headers = HeaderMap::new();
        let key = config.auth.api_key.resolve()?;
        match config.preset {
            Preset::Erpnext => {
                let secret = match &config.auth.api_secret {
                    Some(secret) => secret.resolve()?,
                    None => {
                        return Err(ApiError::Secret(crate::SecretError::Empty(
                            "api_secret".into(),
                        )));
                    }
                };
                headers.insert(
                    AUTHORIZATION,
                    sensitive(&format!(
                        "token {}:{}",
                        key.expose_secret(),
                        secret.expose_secret()
                    )),
                );
            }
            Preset::Odata => {
                headers.insert("x-api-key", sensitive(key.expose_secret()));
                if let (Some(user), Some(password)) = (&config.auth.username, &config.auth.password)
                {
                    let pair = format!(
                        "{}:{}",
                        user.resolve()?.expose_secret(),
                        password.resolve()?.expose_secret()
                    );
                    let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
                    headers.insert(AUTHORIZATION, sensitive(&format!("Basic {encoded}")));
                }
            }
        }
        headers.insert("accept", HeaderValue::from_static("application/json"));
        let builder = crate::tls::trusting(
            reqwest::Client::builder().timeout(config.request_timeout),
            config.ca_file.as_deref(),
        )
        .map_err(|e| ApiError::Unavailable {
            peer: config.preset.peer(),
            what: "its CA file".into(),
            attempts: 0,
            reason: e.to_string(),
        })?;
        let http = builder.build().map_err(|e| ApiError::Unavailable {
            peer: config.preset.peer(),
            what: "an HTTP client".into(),
            attempts: 0,
            reason: error_chain(&e),
        })?;
        Ok(Self {
            http,
            base: config.url.trim_end_matches('/').to_string(),
            preset: config.preset,
            company: config.company.clone().unwrap_or_default(),
            headers,
            retry: config.retry.clone(),
            spacing: Duration::from_secs_f64(1.0 / config.max_requests_per_second),
            next_slot: Mutex::new(Instant::now()),
            id: id.to_string(),
        })
    }

    /// Checks the credentials with the cheapest authenticated call: ERPNext's
    /// `frappe.auth.get_logged_user` (answers the API user), one record of an OData BAQ.
    /// `retry`: off while the circuit is open (one request per test, not a burst).
    pub async fn test_connection(
        &self,
        any_collection: &str,
        retry: bool,
    ) -> Result<String, ApiError> {
        let attempts = if retry { self.retry.max_attempts } else { 1 };
        match self.preset {
            Preset::Erpnext => {
                let url = format!("{}/api/method/frappe.auth.get_logged_user", self.base);
                let body = self.get(&url, &[], "the logged-in user", attempts).await?;
                serde_json::from_slice::<Value>(&body)
                    .ok()
                    .as_ref()
                    .and_then(|body| body.get("message"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or(ApiError::Malformed {
                        peer: self.preset.peer(),
                        what: "frappe.auth.get_logged_user".into(),
                        expected: "{\"message\": user}",
                    })
            }
            Preset::Odata => {
                let query = PageQuery {
                    collection: any_collection,
                    filters: None,
                    select: &[],
                    order_by: &[],
                    since: None,
                    equal: &[],
                    offset: 0,
                    limit: 1,
                };
                self.fetch(&query, attempts).await?;
                Ok("api key accepted".into())
            }
        }
    }

    /// One page of records.
    pub async fn page(&self, query: &PageQuery<'_>) -> Result<Page, ApiError> {
        self.fetch(query, self.retry.max_attempts).await
    }

    async fn fetch(&self, query: &PageQuery<'_>, attempts: u32) -> Result<Page, ApiError> {
        let (url, params) = match self.preset {
            Preset::Erpnext => erpnext_request(&self.base, query),
            Preset::Odata => odata_request(&self.base, &self.company, query),
        };
        let what = query.collection.to_string();
        let body = self.get(&url, &params, &what, attempts).await?;
        Page::read(self.preset, &body, query.limit).map_err(|expected| ApiError::Malformed {
            peer: self.preset.peer(),
            what,
            expected,
        })
    }

    /// GET with pacing and up to `attempts` attempts; the body of a 2xx.
    async fn get(
        &self,
        url: &str,
        params: &[(String, String)],
        what: &str,
        attempts: u32,
    ) -> Result<Bytes, ApiError> {
        let peer = self.preset.peer();
        let url = reqwest::Url::parse_with_params(url, params).map_err(|e| ApiError::Refused {
            peer,
            status: 0,
            what: what.to_string(),
            detail: format!("the URL cannot be built: {e}"),
        })?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.pace().await;
            let request = self.http.get(url.clone()).headers(self.headers.clone());
            let started = Instant::now();
            let result = request.send().await;
            metrics::histogram!(m::REQUEST_DURATION, m::COMPONENT_ID => self.id.clone())
                .record(started.elapsed().as_secs_f64());
            let (reason, hint) = match result {
                Err(err) => {
                    let status = if err.is_timeout() { "timeout" } else { "error" };
                    metrics::counter!(REQUESTS, m::COMPONENT_ID => self.id.clone(), "status" => status)
                        .increment(1);
                    let reason = if err.is_timeout() {
                        "request timed out".to_string()
                    } else {
                        format!("request failed: {}", error_chain(&err))
                    };
                    (reason, None)
                }
                Ok(response) => {
                    let status = response.status();
                    metrics::counter!(REQUESTS, m::COMPONENT_ID => self.id.clone(),
                        "status" => status.as_u16().to_string())
                    .increment(1);
                    if status.is_success() {
                        return response.bytes().await.map_err(|e| ApiError::Unavailable {
                            peer,
                            what: what.to_string(),
                            attempts: attempt,
                            reason: format!("reading the body: {}", error_chain(&e)),
                        });
                    }
                    let hint = retry_after(response.headers());
                    let detail = detail(response).await;
                    match status.as_u16() {
                        401 | 403 => {
                            return Err(ApiError::Credentials {
                                peer,
                                status: status.as_u16(),
                                what: what.to_string(),
                                detail,
                            });
                        }
                        408 | 429 | 500..=599 => (format!("answered {status}: {detail}"), hint),
                        code => {
                            return Err(ApiError::Refused {
                                peer,
                                status: code,
                                what: what.to_string(),
                                detail,
                            });
                        }
                    }
                }
            };
            if attempt >= attempts {
                return Err(ApiError::Unavailable {
                    peer,
                    what: what.to_string(),
                    attempts: attempt,
                    reason,
                });
            }
            metrics::counter!(m::RETRIES, m::COMPONENT_ID => self.id.clone(),
                m::COMPONENT_TYPE => super::TYPE)
            .increment(1);
            let wait = backoff(&self.retry, attempt, hint);
            tracing::warn!(%what, attempt, wait_ms = wait.as_millis() as u64, %reason, "{peer} request failed; retrying");
            tokio::time::sleep(wait).await;
        }
    }

    /// Waits for this request's slot under `max_requests_per_second`.
    async fn pace(&self) {
        let wait = {
            let mut next = self.next_slot.lock().await;
            let now = Instant::now();
            let slot = (*next).max(now);
            *next = slot + self.spacing;
            slot - now
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

fn sensitive(value: &str) -> HeaderValue {
    let mut header = HeaderValue::from_str(value).unwrap_or_else(|_| HeaderValue::from_static(""));
    header.set_sensitive(true);
    header
}

/// The server's own words: Frappe's `exception`/`message`, OData's `error.message`, or the
/// start of the body.
async fn detail(response: reqwest::Response) -> String {
    let text = response.text().await.unwrap_or_default();
    let parsed: Option<Value> = serde_json::from_str(&text).ok();
    let found = parsed.as_ref().and_then(|v| {
        v.get("exception")
            .or_else(|| v.get("message"))
            .or_else(|| v.pointer("/error/message"))
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    let mut detail = found.unwrap_or(text);
    if detail.len() > 300 {
        let mut end = 300;
        while !detail.is_char_boundary(end) {
            end -= 1;
        }
        detail.truncate(end);
        detail.push('…');
    }
    if detail.trim().is_empty() {
        "no details".into()
    } else {
        detail
    }
}

/// Frappe: `GET /api/resource/<DocType>?fields=[..]&filters=[..]&order_by=..&limit_start=..&limit_page_length=..`.
fn erpnext_request(base: &str, q: &PageQuery) -> (String, Vec<(String, String)>) {
    let url = format!("{base}/api/resource/{}", q.collection);
    let mut filters: Vec<Value> = q
        .filters
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if let Some((field, since)) = q.since {
        filters.push(json!([
            field,
            ">=",
            since.format("%Y-%m-%d %H:%M:%S%.6f").to_string()
        ]));
    }
    for (field, value) in q.equal {
        filters.push(json!([field, "=", value]));
    }
    let mut params = vec![
        (
            "fields".to_string(),
            Value::from(q.select.to_vec()).to_string(),
        ),
        ("limit_start".to_string(), q.offset.to_string()),
        ("limit_page_length".to_string(), q.limit.to_string()),
    ];
    if !filters.is_empty() {
        params.push(("filters".into(), Value::Array(filters).to_string()));
    }
    if !q.order_by.is_empty() {
        let order: Vec<String> = q.order_by.iter().map(|f| format!("{f} asc")).collect();
        params.push(("order_by".into(), order.join(", ")));
    }
    (url, params)
}

/// OData v4: `GET .../BaqSvc/<baq>/Data?$select=..&$filter=..&$orderby=..&$top=..&$skip=..`.
fn odata_request(base: &str, company: &str, q: &PageQuery) -> (String, Vec<(String, String)>) {
    let url = format!("{base}/api/v2/odata/{company}/BaqSvc/{}/Data", q.collection);
    let mut conditions: Vec<String> = Vec::new();
    if let Some(Value::String(filter)) = q.filters {
        conditions.push(format!("({filter})"));
    }
    if let Some((field, since)) = q.since {
        conditions.push(format!(
            "{field} ge {}",
            since.and_utc().format("%Y-%m-%dT%H:%M:%S%.6fZ")
        ));
    }
    for (field, value) in q.equal {
        conditions.push(format!("{field} eq {}", odata_literal(value)));
    }
    let mut params = vec![
        ("$top".to_string(), q.limit.to_string()),
        ("$skip".to_string(), q.offset.to_string()),
    ];
    if !q.select.is_empty() {
        params.push(("$select".into(), q.select.join(",")));
    }
    if !conditions.is_empty() {
        params.push(("$filter".into(), conditions.join(" and ")));
    }
    if !q.order_by.is_empty() {
        let order: Vec<String> = q.order_by.iter().map(|f| format!("{f} asc")).collect();
        params.push(("$orderby".into(), order.join(",")));
    }
    (url, params)
}

fn odata_literal(value: &Value) -> String {
    match value {
        Value::String(s) => format!("'{}'", s.replace('\'', "''")),
        Value::Null => "null".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query<'a>(
        since: Option<(&'a str, NaiveDateTime)>,
        equal: &'a [(String, Value)],
    ) -> PageQuery<'a> {
        PageQuery {
            collection: "Bin",
            filters: None,
            select: &[],
            order_by: &[],
            since,
            equal,
            offset: 10,
            limit: 5,
        }
    }

    #[test]
    fn erpnext_pages_filter_on_modified_and_page_by_limit_start() {
        let select = ["item_code".to_string(), "modified".to_string()];
        let order = ["modified".to_string(), "name".to_string()];
        let filters = json!([["disabled", "=", 0]]);
        let since = chrono::NaiveDate::from_ymd_opt(2026, 11, 27)
            .and_then(|d| d.and_hms_micro_opt(10, 0, 1, 5))
            .expect("time");
        let mut q = query(Some(("modified", since)), &[]);
        q.select = &select;
        q.order_by = &order;
        q.filters = Some(&filters);
        let (url, params) = erpnext_request("http://erp", &q);
        assert_eq!(url, "http://erp/api/resource/Bin");
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("fields"), Some(r#"["item_code","modified"]"#));
        assert_eq!(
            get("filters"),
            Some(r#"[["disabled","=",0],["modified",">=","2026-11-27 10:00:01.000005"]]"#)
        );
        assert_eq!(get("order_by"), Some("modified asc, name asc"));
        assert_eq!(get("limit_start"), Some("10"));
        assert_eq!(get("limit_page_length"), Some("5"));
    }

    #[test]
    fn odata_pages_use_filter_top_and_skip() {
        let equal = [("PartNum".to_string(), json!("O'Neil"))];
        let filter = json!("Plant eq 'MfgSys'");
        let mut q = query(None, &equal);
        q.filters = Some(&filter);
        let (url, params) = odata_request("https://kinetic/server", "EPIC06", &q);
        assert_eq!(
            url,
            "https://kinetic/server/api/v2/odata/EPIC06/BaqSvc/Bin/Data"
        );
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(
            get("$filter"),
            Some("(Plant eq 'MfgSys') and PartNum eq 'O''Neil'")
        );
        assert_eq!(get("$top"), Some("5"));
        assert_eq!(get("$skip"), Some("10"));
    }
}

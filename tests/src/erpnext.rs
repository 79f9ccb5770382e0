//! An ERP that speaks Frappe's REST dialect (ERPNext) and OData over BAQs (Epicor Kinetic), for
//! `rest_poll` tests and benchmarks: documents in memory, `fields`/`filters`/`order_by`/
//! `limit_start`/`limit_page_length` (and `$select/$filter/$orderby/$top/$skip`), token or
//! API key + basic auth enforced, every request counted, and faults on demand: statuses
//! (429 with `Retry-After`, 500) and slow pages.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use chrono::NaiveDateTime;
use serde_json::{Map, Value, json};

/// The API key and secret the server accepts unless told otherwise.
pub const API_KEY: &str = "erp-test-key";
/// The matching secret.
pub const API_SECRET: &str = "erp-test-secret";
/// OData basic-auth user and password.
pub const ODATA_USER: (&str, &str) = ("manager", "kinetic-pass");

/// A fault to inject into the next matching requests.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer this status (with `Retry-After: retry_after` seconds, if given).
    Status(u16, Option<u64>),
    /// Wait this long, then answer normally.
    Delay(Duration),
}

#[derive(Default)]
struct Inner {
    docs: HashMap<String, Vec<Map<String, Value>>>,
    /// doctype → name → position in `docs`.
    index: HashMap<String, HashMap<String, usize>>,
    token: String,
    faults: VecDeque<Fault>,
    always: Option<Fault>,
    calls: u64,
    data_calls: u64,
    first_call: Option<std::time::Instant>,
    clock: i64,
}

/// The fake ERP; clones share it.
#[derive(Clone)]
pub struct FakeErp {
    inner: Arc<Mutex<Inner>>,
    /// Its base URL.
    pub url: String,
}

impl FakeErp {
    /// Starts it on a free port.
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            token: format!("token {API_KEY}:{API_SECRET}"),
            clock: chrono::Utc::now().timestamp_micros(),
            ..Inner::default()
        }));
        let app = axum::Router::new()
            .route(
                "/api/method/frappe.auth.get_logged_user",
                axum::routing::get(logged_user),
            )
            .route("/api/resource/{doctype}", axum::routing::get(resource))
            .route(
                "/api/v2/odata/{company}/BaqSvc/{baq}/Data",
                axum::routing::get(odata),
            )
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake ERP");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { inner, url }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A `modified` value one microsecond after the last one handed out (Frappe's form).
    pub fn tick(&self) -> String {
        let mut inner = self.lock();
        inner.clock += 1;
        format_time(inner.clock)
    }

    /// Inserts or replaces (by `name`) documents of `doctype`; each without `modified` gets a
    /// new one.
    pub fn put(&self, doctype: &str, docs: Vec<Value>) {
        let mut inner = self.lock();
        for doc in docs {
            let Value::Object(mut doc) = doc else {
                panic!("a document is an object")
            };
            if !doc.contains_key("modified") {
                inner.clock += 1;
                doc.insert("modified".into(), Value::String(format_time(inner.clock)));
            }
            let name = doc
                .get("name")
                .and_then(Value::as_str)
                .expect("a document has a name")
                .to_string();
            let Inner { docs, index, .. } = &mut *inner;
            let list = docs.entry(doctype.to_string()).or_default();
            let positions = index.entry(doctype.to_string()).or_default();
            match positions.get(&name) {
                Some(at) => list[*at] = doc,
                None => {
                    positions.insert(name, list.len());
                    list.push(doc);
                }
            }
        }
    }

    /// Changes fields of the document `name` and stamps a new `modified` (unless `fields`
    /// sets one).
    pub fn update(&self, doctype: &str, name: &str, fields: Value) {
        let mut inner = self.lock();
        inner.clock += 1;
        let stamp = format_time(inner.clock);
        let at = inner
            .index
            .get(doctype)
            .and_then(|p| p.get(name))
            .copied()
            .unwrap_or_else(|| panic!("no {doctype} {name}"));
        let doc = &mut inner
            .docs
            .get_mut(doctype)
            .unwrap_or_else(|| panic!("no {doctype}"))[at];
        doc.insert("modified".into(), Value::String(stamp));
        if let Value::Object(fields) = fields {
            doc.extend(fields);
        }
    }

    /// Removes the document `name`.
    pub fn delete(&self, doctype: &str, name: &str) {
        let mut inner = self.lock();
        let Inner { docs, index, .. } = &mut *inner;
        if let Some(list) = docs.get_mut(doctype) {
            list.retain(|d| d.get("name") != Some(&json!(name)));
            let positions = list
                .iter()
                .enumerate()
                .filter_map(|(i, d)| Some((d.get("name")?.as_str()?.to_string(), i)))
                .collect();
            index.insert(doctype.to_string(), positions);
        }
    }

    /// The `Authorization` value accepted from now on.
    pub fn accept_token(&self, key: &str, secret: &str) {
        self.lock().token = format!("token {key}:{secret}");
    }

    /// A `rest_poll` source `id` (ERPNext preset) of this server's bins into
    /// `inventory.change`, polling every `interval`, its state in the stack's Postgres (YAML
    /// indented under `sources:`).
    pub fn bin_source(&self, id: &str, interval: &str) -> String {
        format!(
            r#"  {id}:
    type: rest_poll
    preset: erpnext
    url: {url}
    auth:
      api_key: {{ env: TEST_ERPNEXT_KEY }}
      api_secret: {{ env: TEST_ERPNEXT_SECRET }}
    state_database: {state}
    source_system: ERPNext
    interval: {interval}
    resources:
      stock:
        doctype: Bin
        key: [item_code, warehouse]
        topic: inventory.change
        fields:
          sku: item_code
          location_code: warehouse
          new_quantity: actual_qty
          change_reason: {{ const: ERP_POLL }}
        occurred_at: modified
        on_delete: skip"#,
            url = self.url,
            state = crate::Stack::from_env().database,
        )
    }

    /// Queues faults for the next requests, in order.
    pub fn inject(&self, faults: impl IntoIterator<Item = Fault>) {
        self.lock().faults.extend(faults);
    }

    /// A fault for every request until cleared with `None`.
    pub fn fail_always(&self, fault: Option<Fault>) {
        self.lock().always = fault;
    }

    /// Requests answered so far (all paths), and of those, reads of documents.
    pub fn calls(&self) -> (u64, u64) {
        let inner = self.lock();
        (inner.calls, inner.data_calls)
    }

    /// When the first request arrived.
    pub fn first_call(&self) -> Option<std::time::Instant> {
        self.lock().first_call
    }
}

/// Microseconds since the epoch → `2026-11-27 10:00:00.123456`.
pub fn format_time(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.naive_utc().format("%Y-%m-%d %H:%M:%S%.6f").to_string())
        .unwrap_or_default()
}

type Shared = Arc<Mutex<Inner>>;

/// Counts the request and plays the next fault, if any.
async fn admit(state: &Shared, data: bool) -> Option<Response> {
    let fault = {
        let mut inner = state.lock().unwrap_or_else(|e| e.into_inner());
        inner.calls += 1;
        inner.first_call.get_or_insert_with(std::time::Instant::now);
        if data {
            inner.data_calls += 1;
        }
        inner.faults.pop_front().or_else(|| inner.always.clone())
    };
    match fault {
        None => None,
        Some(Fault::Delay(wait)) => {
            tokio::time::sleep(wait).await;
            None
        }
        Some(Fault::Status(status, retry_after)) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut response = (
                status,
                axum::Json(
                    json!({"exc_type": "Injected", "exception": format!("injected {status}")}),
                ),
            )
                .into_response();
            if let Some(seconds) = retry_after {
                response.headers_mut().insert("retry-after", seconds.into());
            }
            Some(response)
        }
    }
}

fn authorized(state: &Shared, headers: &HeaderMap) -> bool {
    let expected = state
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .token
        .clone();
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == expected)
}

fn auth_error() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        axum::Json(json!({"exc_type": "AuthenticationError", "exception": "frappe.exceptions.AuthenticationError", "message": "Invalid token"})),
    )
        .into_response()
}

async fn logged_user(State(state): State<Shared>, headers: HeaderMap) -> Response {
    if let Some(fault) = admit(&state, false).await {
        return fault;
    }
    if !authorized(&state, &headers) {
        return auth_error();
    }
    axum::Json(json!({"message": "erp-bot@example.com"})).into_response()
}

async fn resource(
    State(state): State<Shared>,
    Path(doctype): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(fault) = admit(&state, true).await {
        return fault;
    }
    if !authorized(&state, &headers) {
        return auth_error();
    }
    let bad = |reason: &str| {
        (
            StatusCode::EXPECTATION_FAILED,
            axum::Json(json!({"exc_type": "DataError", "exception": reason})),
        )
            .into_response()
    };
    let fields: Vec<String> = match params.get("fields").map(|f| serde_json::from_str(f)) {
        None => vec!["name".into()],
        Some(Ok(fields)) => fields,
        Some(Err(_)) => return bad("fields must be a JSON list"),
    };
    let conditions: Vec<(String, String, Value)> = match params.get("filters") {
        None => Vec::new(),
        Some(text) => match serde_json::from_str::<Vec<(String, String, Value)>>(text) {
            Ok(c) => c,
            Err(_) => return bad("filters must be a list of [field, operator, value]"),
        },
    };
    let order: Vec<String> = params
        .get("order_by")
        .map(|o| {
            o.split(',')
                .map(|part| part.trim().trim_end_matches(" asc").trim().to_string())
                .collect()
        })
        .unwrap_or_else(|| vec!["modified".into()]);
    let start: usize = params
        .get("limit_start")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let length: usize = params
        .get("limit_page_length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let rows = select(
        &state,
        &doctype,
        &conditions,
        &order,
        start,
        length,
        &fields,
    );
    axum::Json(json!({"data": rows})).into_response()
}

async fn odata(
    State(state): State<Shared>,
    Path((_company, baq)): Path<(String, String)>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(fault) = admit(&state, true).await {
        return fault;
    }
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", ODATA_USER.0, ODATA_USER.1))
    );
    let key_ok = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == API_KEY);
    let basic_ok = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == basic);
    if !key_ok || !basic_ok {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(
                json!({"error": {"code": "401", "message": "Invalid API key or credentials"}}),
            ),
        )
            .into_response();
    }
    let mut conditions = Vec::new();
    if let Some(filter) = params.get("$filter") {
        for part in filter.split(" and ") {
            let part = part.trim().trim_start_matches('(').trim_end_matches(')');
            let mut words = part.splitn(3, ' ');
            let (Some(field), Some(op), Some(value)) = (words.next(), words.next(), words.next())
            else {
                return (StatusCode::BAD_REQUEST, "bad $filter").into_response();
            };
            let op = match op {
                "eq" => "=",
                "ne" => "!=",
                "ge" => ">=",
                "gt" => ">",
                "le" => "<=",
                "lt" => "<",
                _ => return (StatusCode::BAD_REQUEST, "bad $filter operator").into_response(),
            };
            let value = match value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
                Some(text) => Value::String(text.replace("''", "'")),
                None => serde_json::from_str(value).unwrap_or(Value::String(value.to_string())),
            };
            conditions.push((field.to_string(), op.to_string(), value));
        }
    }
    let list = |name: &str| -> Vec<String> {
        params
            .get(name)
            .map(|v| {
                v.split(',')
                    .map(|p| p.trim().trim_end_matches(" asc").trim().to_string())
                    .filter(|p| !p.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    };
    let fields = list("$select");
    let order = list("$orderby");
    let top: usize = params
        .get("$top")
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let skip: usize = params
        .get("$skip")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let rows = select(&state, &baq, &conditions, &order, skip, top, &fields);
    axum::Json(json!({"@odata.context": "$metadata", "value": rows})).into_response()
}

fn select(
    state: &Shared,
    collection: &str,
    conditions: &[(String, String, Value)],
    order: &[String],
    start: usize,
    length: usize,
    fields: &[String],
) -> Vec<Value> {
    let inner = state.lock().unwrap_or_else(|e| e.into_inner());
    let mut rows: Vec<&Map<String, Value>> = inner
        .docs
        .get(collection)
        .map(|l| l.iter().collect())
        .unwrap_or_default();
    rows.retain(|doc| {
        conditions.iter().all(|(field, op, value)| {
            let ordering = compare(doc.get(field).unwrap_or(&Value::Null), value);
            match op.as_str() {
                "=" => ordering == std::cmp::Ordering::Equal,
                "!=" => ordering != std::cmp::Ordering::Equal,
                ">" => ordering == std::cmp::Ordering::Greater,
                ">=" => ordering != std::cmp::Ordering::Less,
                "<" => ordering == std::cmp::Ordering::Less,
                "<=" => ordering != std::cmp::Ordering::Greater,
                _ => false,
            }
        })
    });
    rows.sort_by(|a, b| {
        order
            .iter()
            .map(|f| {
                compare(
                    a.get(f).unwrap_or(&Value::Null),
                    b.get(f).unwrap_or(&Value::Null),
                )
            })
            .find(|o| o.is_ne())
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let length = if length == 0 { usize::MAX } else { length };
    rows.into_iter()
        .skip(start)
        .take(length)
        .map(|doc| {
            if fields.is_empty() || fields.iter().any(|f| f == "*") {
                return Value::Object(doc.clone());
            }
            Value::Object(
                fields
                    .iter()
                    .map(|f| (f.clone(), doc.get(f).cloned().unwrap_or(Value::Null)))
                    .collect(),
            )
        })
        .collect()
}

/// Numbers as numbers, times as times (either form), anything else as text. Texts of equal
/// length compare as text (the same timestamp format sorts correctly that way, and it keeps
/// sorting 30k rows cheap).
fn compare(a: &Value, b: &Value) -> std::cmp::Ordering {
    let number = |v: &Value| match v {
        Value::Number(n) => n.to_string().parse::<f64>().ok(),
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        _ => None,
    };
    if let (Some(x), Some(y)) = (number(a), number(b)) {
        return x.total_cmp(&y);
    }
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let (x, y) = (text(a), text(b));
    if x.len() == y.len() {
        return x.cmp(&y);
    }
    match (time(&x), time(&y)) {
        (Some(x), Some(y)) => x.cmp(&y),
        _ => x.cmp(&y),
    }
}

fn time(text: &str) -> Option<NaiveDateTime> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Some(t.naive_utc());
    }
    ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())
}

//! A test ERP for the write-back path: the sales interface spec §5 endpoints and the plan
//! publish endpoint `/api/plans/{kind}` (bearer token, `Idempotency-Key` honoured) and ERPNext's `/api/resource/Sales Order` (token auth, lookup
//! by `po_no`). It can be told to fail, and records every request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::{Value, json};

use crate::ERP_TOKEN;

/// A document the ERP created, in creation order.
#[derive(Clone, Debug)]
pub struct Created {
    /// Endpoint path.
    pub path: String,
    /// Idempotency key (generic) or `po_no` (ERPNext).
    pub key: String,
    /// The body.
    pub body: Value,
}

#[derive(Default)]
struct ErpState {
    created: Mutex<Vec<Created>>,
    requests: Mutex<Vec<(String, u16)>>,
    fail_with: AtomicU16,
    failing_keys: Mutex<Vec<String>>,
}

/// The test ERP on a random port.
#[derive(Clone)]
pub struct Erp {
    state: Arc<ErpState>,
    /// Base URL.
    pub url: String,
}

impl Erp {
    /// Starts the server.
    pub async fn start() -> Self {
        let state = Arc::new(ErpState::default());
        let app = axum::Router::new()
            .route("/api/sales/orders", post(generic))
            .route("/api/inventory/adjust", post(generic))
            .route("/api/plans/{kind}", post(generic))
            .route(
                "/api/resource/{doctype}",
                axum::routing::get(erpnext_list).post(erpnext_create),
            )
            .route(
                "/api/method/frappe.auth.get_logged_user",
                axum::routing::get(erpnext_user),
            )
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind erp");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            state,
            url: format!("http://{addr}"),
        }
    }

    /// Answer every request with `status` (0 = healthy again).
    pub fn fail_with(&self, status: u16) {
        self.state.fail_with.store(status, Ordering::SeqCst);
    }

    /// Answer 503 to requests for document `key` until [`Erp::heal_key`].
    pub fn fail_key(&self, key: &str) {
        self.state
            .failing_keys
            .lock()
            .expect("lock")
            .push(key.to_string());
    }

    /// Stop failing requests for `key`.
    pub fn heal_key(&self, key: &str) {
        self.state
            .failing_keys
            .lock()
            .expect("lock")
            .retain(|k| k != key);
    }

    /// Documents created, in order (each key once).
    pub fn created(&self) -> Vec<Created> {
        self.state.created.lock().expect("lock").clone()
    }

    /// Every request: (path, status answered).
    pub fn requests(&self) -> Vec<(String, u16)> {
        self.state.requests.lock().expect("lock").clone()
    }
}

impl ErpState {
    /// The status to answer, after recording the request.
    fn gate(&self, path: &str, headers: &HeaderMap, scheme: &str) -> Option<StatusCode> {
        let expected = format!("{scheme} {ERP_TOKEN}");
        let status = if headers.get("authorization").and_then(|v| v.to_str().ok())
            != Some(expected.as_str())
        {
            401
        } else {
            self.fail_with.load(Ordering::SeqCst)
        };
        self.requests
            .lock()
            .expect("lock")
            .push((path.to_string(), if status == 0 { 200 } else { status }));
        (status != 0).then(|| StatusCode::from_u16(status).expect("status"))
    }

    /// Creates the document unless `key` exists: whether it was new, and its number.
    fn create(&self, path: &str, key: &str, body: Value) -> (bool, usize) {
        let mut created = self.created.lock().expect("lock");
        if let Some(at) = created.iter().position(|c| c.path == path && c.key == key) {
            return (false, at + 1);
        }
        created.push(Created {
            path: path.to_string(),
            key: key.to_string(),
            body,
        });
        (true, created.len())
    }
}

async fn generic(
    State(state): State<Arc<ErpState>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> (StatusCode, axum::Json<Value>) {
    let path = uri.path().to_string();
    if let Some(status) = state.gate(&path, &headers, "Bearer") {
        return (status, axum::Json(json!({"error": "refused"})));
    }
    let Some(key) = headers.get("idempotency-key").and_then(|v| v.to_str().ok()) else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "Idempotency-Key required"})),
        );
    };
    if state
        .failing_keys
        .lock()
        .expect("lock")
        .iter()
        .any(|k| k == key)
    {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"error": "try later"})),
        );
    }
    let (new, number) = state.create(&path, key, body);
    let reference = format!("ERP-DOC-{number:05}");
    if new {
        (
            StatusCode::CREATED,
            axum::Json(json!({"status": "created", "external_reference_id": reference})),
        )
    } else {
        (
            StatusCode::OK,
            axum::Json(json!({"status": "already exists", "external_reference_id": reference})),
        )
    }
}

/// ERPNext's "who am I": the API user of a valid token.
async fn erpnext_user(
    State(state): State<Arc<ErpState>>,
    headers: HeaderMap,
) -> (StatusCode, axum::Json<Value>) {
    match state.gate("/api/method/frappe.auth.get_logged_user", &headers, "token") {
        Some(status) => (status, axum::Json(json!({"exc": "refused"}))),
        None => (
            StatusCode::OK,
            axum::Json(json!({"message": "erp-writer@example.com"})),
        ),
    }
}

async fn erpnext_list(
    State(state): State<Arc<ErpState>>,
    axum::extract::Path(doctype): axum::extract::Path<String>,
    Query(query): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> (StatusCode, axum::Json<Value>) {
    let path = format!("/api/resource/{doctype}");
    if let Some(status) = state.gate(&path, &headers, "token") {
        return (status, axum::Json(json!({"exc": "refused"})));
    }
    let filters: Value = query
        .get("filters")
        .and_then(|f| serde_json::from_str(f).ok())
        .unwrap_or(Value::Null);
    let po_no = filters[0][2].as_str().unwrap_or_default().to_string();
    let data: Vec<Value> = state
        .created
        .lock()
        .expect("lock")
        .iter()
        .enumerate()
        .filter(|(_, c)| c.path == path && c.key == po_no)
        .map(|(i, _)| json!({"name": format!("SAL-ORD-{:04}", i + 1)}))
        .collect();
    (StatusCode::OK, axum::Json(json!({"data": data})))
}

async fn erpnext_create(
    State(state): State<Arc<ErpState>>,
    axum::extract::Path(doctype): axum::extract::Path<String>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> (StatusCode, axum::Json<Value>) {
    let path = format!("/api/resource/{doctype}");
    if let Some(status) = state.gate(&path, &headers, "token") {
        return (status, axum::Json(json!({"exc": "refused"})));
    }
    let po_no = body["po_no"].as_str().unwrap_or_default().to_string();
    // ERPNext itself would create a second document; the sink must look it up first.
    state.created.lock().expect("lock").push(Created {
        path,
        key: po_no,
        body: body.clone(),
    });
    (StatusCode::OK, axum::Json(json!({"data": body})))
}

//! The world around the pipeline in a chaos run, as the checks need to see it: the ERP
//! (its stock per sku, the write-back endpoints that change it, every figure it reported)
//! and the storefront (every request it received, and an outage mode).
//!
//! The ERP applies a written-back order or adjustment (`Idempotency-Key` honoured, as the
//! sales interface spec asks) before it answers, and then reports the sku's new figure,
//! like an ERP whose stock webhook fires on every change. That is the model the inventory
//! processor's hold rules assume: a figure with an ERP time after the write-back includes it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use erpstream_connectors::signing::sign_hex;
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// How a figure came to be sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FigureKind {
    /// The ERP's current stock at its ERP time.
    Current,
    /// A stale figure: an ERP time before the sku's newest one, sent after it was accepted.
    Older,
}

/// A stock figure the ERP reported by webhook (repeats of it are the same figure).
#[derive(Clone, Debug)]
pub struct Figure {
    pub sku: String,
    pub quantity: i64,
    /// ERP time, epoch ms.
    pub erp_time: i64,
    pub kind: FigureKind,
    /// The exact body (repeats resend these bytes).
    pub body: Vec<u8>,
    /// First send attempt.
    pub first_sent: Option<Instant>,
    /// First `202`.
    pub accepted: Option<Instant>,
}

/// A storefront document that holds stock: an order line or a negative adjustment.
#[derive(Clone, Debug)]
pub struct Document {
    /// `transaction_id` or `reference_id` (the ERP's idempotency key).
    pub reference: String,
    /// `api/sales/orders` or `api/inventory/adjust`.
    pub path: &'static str,
    pub sku: String,
    /// Units held.
    pub quantity: i64,
    pub first_sent: Option<Instant>,
    /// First `202` from the storefront API.
    pub accepted: Option<Instant>,
    /// The ERP time at which the ERP applied it.
    pub applied_erp_time: Option<i64>,
    /// Write-back requests the ERP answered 2xx for it (more than one: a repeat its
    /// idempotency key absorbed).
    pub erp_answers: u32,
    /// Distinct ERP documents created for its transaction (must be exactly 1).
    pub created: u32,
}

/// The ERP's state.
#[derive(Default)]
pub struct Model {
    pub stock: HashMap<String, i64>,
    last_time: HashMap<String, i64>,
    pub figures: Vec<Figure>,
    /// Index into `figures` of each sku's newest current figure.
    pub newest: HashMap<String, usize>,
    pub documents: Vec<Document>,
    by_reference: HashMap<String, usize>,
    /// Idempotency keys the ERP has created a document for.
    keys: std::collections::HashSet<String>,
    /// Write-backs for references the storefront API never saw.
    pub unknown_writebacks: u64,
}

impl Model {
    /// A new ERP time for `sku`: now, strictly after its last one, and never ahead of the
    /// clock (a figure stamped ahead would claim to include a write-back the ERP had not
    /// applied yet, and confirm its hold too early).
    fn tick(&mut self, sku: &str) -> i64 {
        let last = self.last_time.get(sku).copied().unwrap_or(0);
        let mut now = chrono::Utc::now().timestamp_millis();
        while now <= last {
            std::thread::sleep(Duration::from_micros(200));
            now = chrono::Utc::now().timestamp_millis();
        }
        self.last_time.insert(sku.to_string(), now);
        now
    }

    /// Records the current figure of `sku` and returns its index.
    pub fn report(&mut self, sku: &str, location: &str) -> usize {
        let quantity = self.stock.get(sku).copied().unwrap_or(0);
        let time = self.tick(sku);
        let index = self.figure(sku, location, quantity, time, FigureKind::Current);
        self.newest.insert(sku.to_string(), index);
        index
    }

    /// Records a stale figure of the sku of figure `of`: `quantity` at an ERP time `back_ms`
    /// before that figure's (so older than every figure accepted after it, too).
    pub fn stale(&mut self, of: usize, location: &str, quantity: i64, back_ms: i64) -> usize {
        let (sku, time) = (
            self.figures[of].sku.clone(),
            self.figures[of].erp_time - back_ms,
        );
        self.figure(&sku, location, quantity, time, FigureKind::Older)
    }

    fn figure(
        &mut self,
        sku: &str,
        location: &str,
        quantity: i64,
        erp_time: i64,
        kind: FigureKind,
    ) -> usize {
        let timestamp = chrono::DateTime::from_timestamp_millis(erp_time)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let body = json!({"event_type": "inventory.change", "timestamp": timestamp,
            "data": {"sku": sku, "location_code": location, "new_quantity": quantity,
                     "change_reason": "ERP_STOCK"}})
        .to_string()
        .into_bytes();
        self.figures.push(Figure {
            sku: sku.to_string(),
            quantity,
            erp_time,
            kind,
            body,
            first_sent: None,
            accepted: None,
        });
        self.figures.len() - 1
    }

    /// Records a document the storefront is about to send and returns its index.
    pub fn document(&mut self, reference: &str, path: &'static str, sku: &str, quantity: i64) {
        self.by_reference
            .insert(reference.to_string(), self.documents.len());
        self.documents.push(Document {
            reference: reference.to_string(),
            path,
            sku: sku.to_string(),
            quantity,
            first_sent: None,
            accepted: None,
            applied_erp_time: None,
            erp_answers: 0,
            created: 0,
        });
    }

    pub fn document_mut(&mut self, reference: &str) -> Option<&mut Document> {
        let at = *self.by_reference.get(reference)?;
        self.documents.get_mut(at)
    }
}

/// The ERP: its model, and the write-back server on a port of its own.
pub struct Erp {
    model: Mutex<Model>,
    token: String,
    location: String,
    down: AtomicBool,
    /// Figures to send (indexes into the model's figures), for the webhook sender.
    figures: mpsc::UnboundedSender<usize>,
}

impl Erp {
    /// Starts the write-back server; figures the ERP reports go to `figures`.
    pub async fn start(
        token: String,
        location: &str,
        figures: mpsc::UnboundedSender<usize>,
    ) -> anyhow::Result<(Arc<Self>, String)> {
        let erp = Arc::new(Self {
            model: Mutex::new(Model::default()),
            token,
            location: location.to_string(),
            down: AtomicBool::new(false),
            figures,
        });
        let app = axum::Router::new()
            .route("/api/sales/orders", axum::routing::post(write_back))
            .route("/api/inventory/adjust", axum::routing::post(write_back))
            .with_state(erp.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok((erp, url))
    }

    pub fn model(&self) -> MutexGuard<'_, Model> {
        self.model.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Down (every request answered 503) or up.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Changes `sku`'s stock by `delta` and reports the new figure.
    pub fn change_stock(&self, sku: &str, delta: i64) {
        let index = {
            let mut model = self.model();
            *model.stock.entry(sku.to_string()).or_default() += delta;
            model.report(sku, &self.location)
        };
        let _ = self.figures.send(index);
    }
}

async fn write_back(
    State(erp): State<Arc<Erp>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, axum::Json<Value>) {
    if erp.down.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"error": "maintenance"})),
        );
    }
    let authorized = headers.get("authorization").and_then(|v| v.to_str().ok())
        == Some(format!("Bearer {}", erp.token).as_str());
    if !authorized {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": "bad token"})),
        );
    }
    let Some(key) = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
    else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "Idempotency-Key required"})),
        );
    };
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "not JSON"})),
        );
    };
    // What the body says the document is, independent of the key it came under.
    let reference = body["transaction_id"]
        .as_str()
        .or(body["reference_id"].as_str())
        .unwrap_or_default()
        .to_string();
    let changes: Vec<(String, i64)> = if uri.path().ends_with("orders") {
        lines(&body["line_items"], "quantity", -1)
    } else {
        lines(&body["adjustments"], "quantity_change", 1)
    };
    let mut changed = Vec::new();
    {
        let mut model = erp.model();
        let Some(document) = model.document_mut(&reference) else {
            model.unknown_writebacks += 1;
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                axum::Json(json!({"error": "unknown document"})),
            );
        };
        document.erp_answers += 1;
        if model.keys.insert(key) {
            // A key the ERP has not seen: a new document, and its stock moves (a second
            // key for the same transaction would move it twice, as a real ERP would).
            if let Some(document) = model.document_mut(&reference) {
                document.created += 1;
            }
            for (sku, delta) in &changes {
                *model.stock.entry(sku.clone()).or_default() += delta;
                let index = model.report(sku, &erp.location);
                changed.push(index);
            }
            let applied = changed
                .first()
                .map(|i| model.figures[*i].erp_time)
                .unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
            if let Some(document) = model.document_mut(&reference) {
                document.applied_erp_time.get_or_insert(applied);
            }
        }
    }
    for index in changed {
        let _ = erp.figures.send(index);
    }
    (
        StatusCode::CREATED,
        axum::Json(
            json!({"status": "created", "external_reference_id": format!("ERP-{reference}")}),
        ),
    )
}

/// (sku, signed quantity change) of each line.
fn lines(lines: &Value, field: &str, sign: i64) -> Vec<(String, i64)> {
    lines
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|line| {
            let sku = line["sku"].as_str()?.to_string();
            let quantity = line[field].as_f64()? as i64;
            Some((sku, sign * quantity))
        })
        .collect()
}

/// One request the storefront received.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub arrived: Instant,
    pub sku: String,
    pub location: String,
    pub available: Option<f64>,
    pub version: Option<i64>,
    pub event_type: String,
    /// What the storefront answered (0: it held the request past the sender's timeout).
    pub status: u16,
}

impl Delivery {
    /// Taken: answered 2xx.
    pub fn taken(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// The storefront receiver: checks signatures, records every request, and in an outage
/// answers half of them with 503 or holds them past the sender's timeout.
pub struct Storefront {
    secret: String,
    deliveries: Mutex<Vec<Delivery>>,
    bad_signatures: Mutex<u64>,
    degraded: AtomicBool,
    /// How long a "timeout" holds a request (past the sink's request_timeout).
    hold: Duration,
}

impl Storefront {
    pub async fn start(secret: String, hold: Duration) -> anyhow::Result<(Arc<Self>, String)> {
        let storefront = Arc::new(Self {
            secret,
            deliveries: Mutex::new(Vec::new()),
            bad_signatures: Mutex::new(0),
            degraded: AtomicBool::new(false),
            hold,
        });
        let app = axum::Router::new()
            .route("/storefront", axum::routing::post(receive))
            .with_state(storefront.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/storefront", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok((storefront, url))
    }

    pub fn set_degraded(&self, degraded: bool) {
        self.degraded.store(degraded, Ordering::SeqCst);
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.deliveries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn bad_signatures(&self) -> u64 {
        *self
            .bad_signatures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, delivery: Delivery) {
        self.deliveries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(delivery);
    }
}

async fn receive(
    State(storefront): State<Arc<Storefront>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let arrived = Instant::now();
    let signature = headers.get("x-signature").and_then(|v| v.to_str().ok());
    if signature != Some(sign_hex(storefront.secret.as_bytes(), &body).as_str()) {
        *storefront
            .bad_signatures
            .lock()
            .unwrap_or_else(|p| p.into_inner()) += 1;
        return StatusCode::UNAUTHORIZED;
    }
    let payload: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut delivery = Delivery {
        arrived,
        sku: payload["data"]["sku"]
            .as_str()
            .or(payload["data"]["group_id"].as_str())
            .unwrap_or_default()
            .to_string(),
        location: payload["data"]["location_code"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        available: payload["data"]["new_quantity"].as_f64(),
        version: payload["data"]["version"].as_i64(),
        event_type: payload["event_type"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        status: 200,
    };
    if storefront.degraded.load(Ordering::SeqCst) {
        match rand::random_range(0..4) {
            0 => {
                delivery.status = 503;
                storefront.record(delivery);
                return StatusCode::SERVICE_UNAVAILABLE;
            }
            1 => {
                // Held past the sender's timeout: whatever it gets after, it gave up.
                delivery.status = 0;
                storefront.record(delivery);
                tokio::time::sleep(storefront.hold).await;
                return StatusCode::GATEWAY_TIMEOUT;
            }
            _ => {}
        }
    }
    storefront.record(delivery);
    StatusCode::OK
}

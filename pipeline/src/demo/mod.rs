//! `erpstream demo`: a realistic signed ERP load against a running pipeline, and a storefront
//! receiver that verifies every delivery's signature and measures end-to-end latency; then
//! online orders through the storefront API and a demo ERP they are written back to
//! ([`orders`]).
//!
//! The load is open-loop: webhook `i` is due at `start + i / rate`, and latency is measured
//! from that scheduled time, so a lagging generator cannot hide delay. Every inventory
//! update of a sku and location carries a quantity that key never had before (random start
//! in a wide range, then counting up, so earlier runs do not collide), so each delivered
//! quantity identifies the webhook that caused it.

pub mod orders;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use erpstream_connectors::signing::sign_hex;
use rand::Rng;
use rand::seq::IndexedRandom;
use serde_json::{Value, json};

/// Why the demo could not run (a pipeline that loses or reorders is reported, not an error).
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The demo storefront or ERP could not listen.
    #[error("could not listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A request to the pipeline failed.
    #[error("the pipeline did not answer: {0}")]
    Http(#[from] reqwest::Error),
}

/// Settings of a demo run.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Base URL of the pipeline (`http://127.0.0.1:8080`).
    pub target: String,
    /// Where the storefront receiver listens.
    pub listen: SocketAddr,
    /// Inventory and catalog webhooks to send (duplicates excluded).
    pub events: usize,
    /// Webhooks per second.
    pub rate: f64,
    /// Distinct skus.
    pub skus: usize,
    /// Locations per sku.
    pub locations: usize,
    /// Share of webhooks sent twice (ERP retries).
    pub duplicate_share: f64,
    /// Secret the ERP signs with.
    pub erp_secret: String,
    /// Secret the storefront verifies with.
    pub storefront_secret: String,
    /// How long to wait for deliveries after the last send.
    pub settle: Duration,
    /// The orders half, if any.
    pub orders: Option<orders::OrdersConfig>,
}

/// What a demo run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DemoReport {
    /// Webhooks sent, duplicates included.
    pub sent: usize,
    /// Answered 202.
    pub accepted: usize,
    /// Not answered 202.
    pub failed: usize,
    /// Of those sent, repeats of an earlier body.
    pub duplicates_sent: usize,
    /// Storefront deliveries received with a valid signature.
    pub delivered: usize,
    /// Deliveries with a bad signature.
    pub bad_signatures: usize,
    /// Deliveries of a quantity older than one already delivered for the same key.
    pub out_of_order: usize,
    /// sku/locations whose last delivered quantity is the last one the ERP sent.
    pub keys_consistent: usize,
    /// sku/locations the ERP updated.
    pub keys_total: usize,
    /// Latency from scheduled send to storefront receipt, milliseconds.
    pub latency_ms: Percentiles,
    /// Achieved send rate.
    pub rate_achieved: f64,
    /// The orders half.
    pub orders: Option<orders::OrdersReport>,
}

impl DemoReport {
    /// Nothing lost, reordered or badly signed, every key ends on the ERP's last figure,
    /// and every order was accepted, answered the same when repeated and written back once.
    pub fn is_healthy(&self) -> bool {
        self.failed == 0
            && self.bad_signatures == 0
            && self.out_of_order == 0
            && self.keys_consistent == self.keys_total
            && self.orders.as_ref().is_none_or(|o| {
                o.accepted == o.placed
                    && o.repeats_answered_first == o.placed
                    && o.written_back == o.placed
                    && o.erp_unauthorized == 0
            })
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th.
    pub p90: f64,
    /// 99th.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Percentiles {
    /// Percentiles of `samples` (milliseconds).
    pub fn of(mut samples: Vec<f64>) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_by(|a, b| a.total_cmp(b));
        let at = |q: f64| {
            samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1]
        };
        Self {
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

#[derive(Default)]
struct Receiver {
    /// (sku, location, quantity) → when the webhook that set it was due.
    due: HashMap<(String, String, String), Instant>,
    /// (sku, location) → versions delivered, in arrival order.
    delivered: HashMap<(String, String), Vec<(i64, String)>>,
    latencies: Vec<f64>,
    bad_signatures: usize,
    deliveries: usize,
}

struct ReceiverState {
    secret: String,
    inner: Mutex<Receiver>,
}

/// Runs the demo and returns its report.
pub async fn run(config: DemoConfig) -> Result<DemoReport, DemoError> {
    let state = Arc::new(ReceiverState {
        secret: config.storefront_secret.clone(),
        inner: Mutex::new(Receiver::default()),
    });
    let app = Router::new()
        .route("/storefront", post(receive))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| DemoError::Listen {
            addr: config.listen,
            source,
        })?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    eprintln!("storefront receiver on http://{}/storefront", config.listen);

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(30))
        .build()?;
    let url = format!("{}/webhooks/erp", config.target.trim_end_matches('/'));
    let skus: Vec<String> = (0..config.skus)
        .map(|i| format!("DEMO-SKU-{i:05}"))
        .collect();
    let locations: Vec<String> = (0..config.locations)
        .map(|i| format!("WH-{:02}", i + 1))
        .collect();
    let mut quantities: HashMap<(String, String), i64> = HashMap::new();
    let mut last_sent: HashMap<(String, String), String> = HashMap::new();
    let mut bodies: Vec<Vec<u8>> = Vec::new();
    let mut sends = tokio::task::JoinSet::new();
    let start = Instant::now();
    let base_time = chrono::Utc::now();
    let mut duplicates_sent = 0;
    let mut rng = rand::rng();
    let progress_every = (config.events / 10).max(1);
    for i in 0..config.events {
        let due = start + Duration::from_secs_f64(i as f64 / config.rate);
        tokio::time::sleep_until(due.into()).await;
        let erp_time = base_time + chrono::Duration::milliseconds(i as i64);
        let body = if i % 10 == 9 {
            let group = rng.random_range(0..config.skus.div_ceil(4).max(1));
            json!({"event_type": "catalog.update", "timestamp": erp_time.to_rfc3339(), "data": {
                "group_id": format!("DEMO-GRP-{group:04}"), "group_name": format!("Demo group {group}"),
                "category_path": ["Demo"], "is_active": true,
                "variants": [{"sku": skus[(group * 4) % skus.len()], "selling_price": 45000.00, "mrp": 55000.00}]}})
        } else {
            let sku = skus.choose(&mut rng).cloned().unwrap_or_default();
            let location = locations.choose(&mut rng).cloned().unwrap_or_default();
            let key = (sku.clone(), location.clone());
            let quantity = quantities
                .entry(key.clone())
                .and_modify(|q| *q += 1)
                .or_insert(rng.random_range(10..10_000_000));
            let quantity = quantity.to_string();
            state
                .inner
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .due
                .insert((sku.clone(), location.clone(), quantity.clone()), due);
            last_sent.insert(key, quantity.clone());
            json!({"event_type": "inventory.change", "timestamp": erp_time.to_rfc3339(), "data": {
                "sku": sku, "location_code": location, "new_quantity": quantity.parse::<i64>().unwrap_or(0),
                "change_reason": "POS_SALE"}})
        };
        let body = body.to_string().into_bytes();
        bodies.push(body.clone());
        spawn_send(&mut sends, &client, &url, &config.erp_secret, body);
        if rng.random_bool(config.duplicate_share.clamp(0.0, 1.0))
            && let Some(previous) = bodies.choose(&mut rng)
        {
            duplicates_sent += 1;
            spawn_send(
                &mut sends,
                &client,
                &url,
                &config.erp_secret,
                previous.clone(),
            );
        }
        if (i + 1) % progress_every == 0 {
            eprintln!("  sent {}/{} webhooks", i + 1, config.events);
        }
    }
    let send_elapsed = start.elapsed().as_secs_f64();
    let (mut accepted, mut failed) = (0, 0);
    while let Some(result) = sends.join_next().await {
        match result {
            Ok(true) => accepted += 1,
            _ => failed += 1,
        }
    }
    eprintln!(
        "all webhooks answered ({accepted} accepted, {failed} failed); waiting for deliveries"
    );
    let deadline = Instant::now() + config.settle;
    loop {
        let consistent = consistent_keys(&state, &last_sent);
        if consistent == last_sent.len() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let report = {
        let receiver = state.inner.lock().unwrap_or_else(|p| p.into_inner());
        let out_of_order = receiver
            .delivered
            .values()
            .map(|versions| versions.windows(2).filter(|w| w[1].0 <= w[0].0).count())
            .sum();
        DemoReport {
            sent: config.events + duplicates_sent,
            accepted,
            failed,
            duplicates_sent,
            delivered: receiver.deliveries,
            bad_signatures: receiver.bad_signatures,
            out_of_order,
            keys_consistent: 0,
            keys_total: last_sent.len(),
            latency_ms: Percentiles::of(receiver.latencies.clone()),
            rate_achieved: config.events as f64 / send_elapsed.max(1e-9),
            orders: None,
        }
    };
    let orders = match &config.orders {
        Some(orders) => {
            Some(orders::run(orders, &config.target, &config.erp_secret, config.settle).await?)
        }
        None => None,
    };
    Ok(DemoReport {
        keys_consistent: consistent_keys(&state, &last_sent),
        orders,
        ..report
    })
}

fn consistent_keys(state: &ReceiverState, last_sent: &HashMap<(String, String), String>) -> usize {
    let receiver = state.inner.lock().unwrap_or_else(|p| p.into_inner());
    last_sent
        .iter()
        .filter(|(key, quantity)| {
            receiver
                .delivered
                .get(*key)
                .and_then(|v| v.last())
                .is_some_and(|(_, q)| q == *quantity)
        })
        .count()
}

/// Spawns one signed ERP webhook POST; the task yields whether it was answered 202. Like an
/// ERP, it sends again after `Retry-After` when the answer is 503 (the pipeline shedding load
/// or the broker away), a few times.
fn spawn_send(
    sends: &mut tokio::task::JoinSet<bool>,
    client: &reqwest::Client,
    url: &str,
    secret: &str,
    body: Vec<u8>,
) {
    let request = client
        .post(url)
        .header("content-type", "application/json")
        .header("x-signature", sign_hex(secret.as_bytes(), &body))
        .body(body);
    sends.spawn(async move {
        for _ in 0..SEND_ATTEMPTS {
            let Some(attempt) = request.try_clone() else {
                return false;
            };
            let Ok(response) = attempt.send().await else {
                return false;
            };
            if response.status() != StatusCode::SERVICE_UNAVAILABLE {
                return response.status() == StatusCode::ACCEPTED;
            }
            let wait = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .unwrap_or(1)
                .clamp(1, 10);
            tokio::time::sleep(Duration::from_secs(wait)).await;
        }
        false
    });
}

/// How many times the demo's ERP sends a webhook that keeps being answered 503.
const SEND_ATTEMPTS: usize = 5;

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> StatusCode {
    let arrived = Instant::now();
    let mut receiver = state.inner.lock().unwrap_or_else(|p| p.into_inner());
    let signed = headers.get("x-signature").and_then(|v| v.to_str().ok());
    if signed != Some(sign_hex(state.secret.as_bytes(), &body).as_str()) {
        receiver.bad_signatures += 1;
        return StatusCode::UNAUTHORIZED;
    }
    receiver.deliveries += 1;
    let Ok(payload) = serde_json::from_slice::<Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    if payload["event_type"] == "inventory.change" {
        let data = &payload["data"];
        let sku = data["sku"].as_str().unwrap_or_default().to_string();
        let location = data["location_code"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let quantity = data["new_quantity"].to_string();
        let version = data["version"].as_i64().unwrap_or_default();
        if let Some(due) = receiver
            .due
            .get(&(sku.clone(), location.clone(), quantity.clone()))
        {
            let latency = arrived.saturating_duration_since(*due).as_secs_f64() * 1000.0;
            receiver.latencies.push(latency);
        }
        receiver
            .delivered
            .entry((sku, location))
            .or_default()
            .push((version, quantity));
    }
    StatusCode::OK
}

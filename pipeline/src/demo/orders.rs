//! The storefront-to-ERP half of the demo: online orders through `POST /api/sales/orders`
//! (each one repeated once, as a storefront retry would), and a demo ERP that checks the
//! bearer token and counts what the `erp_rest` sink writes back. Orders use skus of their
//! own (`DEMO-ORDER-*`), so the stock load's quantity checks stay exact.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use erpstream_connectors::signing::sign_hex;
use serde_json::{Value, json};

/// Settings of the orders half.
#[derive(Debug, Clone)]
pub struct OrdersConfig {
    /// Orders to place.
    pub orders: usize,
    /// Where the demo ERP listens (the topology's `erp_rest` URL must point here).
    pub erp_listen: SocketAddr,
    /// Token the storefront calls the API with.
    pub api_token: String,
    /// Token the ERP expects from the write-back sink.
    pub erp_token: String,
}

/// What the orders half saw.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct OrdersReport {
    /// Orders placed (each sent twice).
    pub placed: usize,
    /// First sends answered 202.
    pub accepted: usize,
    /// Repeats answered with the first answer (`Idempotent-Replayed`).
    pub repeats_answered_first: usize,
    /// Orders the demo ERP received, each counted once.
    pub written_back: usize,
    /// Write-back requests for an order the ERP already had (harmless: same key).
    pub erp_repeats: usize,
    /// Write-back requests with a wrong or missing token.
    pub erp_unauthorized: usize,
    /// Sum of the order skus' `reserved` in the snapshot after the run.
    pub reserved_in_snapshot: f64,
}

#[derive(Default)]
struct Erp {
    token: String,
    received: Mutex<HashMap<String, usize>>,
    unauthorized: Mutex<usize>,
}

/// Places the orders and waits (up to `settle`) until the ERP has them all.
pub async fn run(
    config: &OrdersConfig,
    target: &str,
    erp_secret: &str,
    settle: Duration,
) -> Result<OrdersReport, super::DemoError> {
    let erp = Arc::new(Erp {
        token: config.erp_token.clone(),
        ..Erp::default()
    });
    let app = Router::new()
        .route("/api/sales/orders", post(receive))
        .route("/api/inventory/adjust", post(receive))
        .with_state(erp.clone());
    let listener = tokio::net::TcpListener::bind(config.erp_listen)
        .await
        .map_err(|source| super::DemoError::Listen {
            addr: config.erp_listen,
            source,
        })?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    eprintln!("demo ERP on http://{}", config.erp_listen);
    let client = reqwest::Client::new();
    let target = target.trim_end_matches('/');
    let run = chrono::Utc::now().timestamp_millis();
    let skus: Vec<String> = (0..10).map(|i| format!("DEMO-ORDER-{i:02}")).collect();
    for sku in &skus {
        let body =
            json!({"event_type": "inventory.change", "timestamp": chrono::Utc::now().to_rfc3339(),
            "data": {"sku": sku, "location_code": "WH-TECH-01", "new_quantity": 1_000_000}})
            .to_string();
        client
            .post(format!("{target}/webhooks/erp"))
            .header(
                "x-signature",
                sign_hex(erp_secret.as_bytes(), body.as_bytes()),
            )
            .body(body)
            .send()
            .await?
            .error_for_status()?;
    }
    let mut report = OrdersReport {
        placed: config.orders,
        ..OrdersReport::default()
    };
    for i in 0..config.orders {
        let order = json!({
            "transaction_id": format!("ORD-DEMO-{run}-{i:05}"),
            "transaction_date": chrono::Utc::now().to_rfc3339(),
            "customer_details": {"name": "Demo Customer", "tax_id": "GSTIN-DEMO"},
            "line_items": [{"sku": skus[i % skus.len()], "quantity": 1, "unit_price": 45000.00,
                            "location_code": "WH-TECH-01"}]
        });
        for attempt in 0..2 {
            let response = client
                .post(format!("{target}/api/sales/orders"))
                .bearer_auth(&config.api_token)
                .json(&order)
                .send()
                .await?;
            let replayed = response.headers().contains_key("idempotent-replayed");
            match (attempt, response.status().as_u16(), replayed) {
                (0, 202, false) => report.accepted += 1,
                (1, 202, true) => report.repeats_answered_first += 1,
                (_, status, _) => eprintln!("  order {i}: attempt {attempt} answered {status}"),
            }
        }
    }
    eprintln!(
        "{} orders placed; waiting for the ERP write-back",
        config.orders
    );
    let deadline = Instant::now() + settle;
    while erp.received.lock().unwrap_or_else(|p| p.into_inner()).len() < report.accepted
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    {
        let received = erp.received.lock().unwrap_or_else(|p| p.into_inner());
        report.written_back = received.len();
        report.erp_repeats = received.values().map(|n| n - 1).sum();
    }
    report.erp_unauthorized = *erp.unauthorized.lock().unwrap_or_else(|p| p.into_inner());
    let snapshot: Value = client
        .get(format!("{target}/api/inventory/snapshot?detail=true"))
        .header("x-api-key", &config.api_token)
        .send()
        .await?
        .json()
        .await?;
    report.reserved_in_snapshot = snapshot
        .as_array()
        .into_iter()
        .flatten()
        .filter(|item| skus.iter().any(|s| item["sku"] == s.as_str()))
        .flat_map(|item| item["locations"].as_array().cloned().unwrap_or_default())
        .filter_map(|l| l["reserved"].as_f64())
        .sum();
    Ok(report)
}

async fn receive(State(erp): State<Arc<Erp>>, headers: HeaderMap) -> StatusCode {
    let expected = format!("Bearer {}", erp.token);
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        *erp.unauthorized.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        return StatusCode::UNAUTHORIZED;
    }
    let Some(key) = headers.get("idempotency-key").and_then(|v| v.to_str().ok()) else {
        return StatusCode::BAD_REQUEST;
    };
    let mut received = erp.received.lock().unwrap_or_else(|p| p.into_inner());
    let count = received.entry(key.to_string()).or_insert(0);
    *count += 1;
    if *count == 1 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

//! `GET /api/inventory/snapshot` (SPEC §3): every sku's available-to-sell from the
//! materialized state, as a JSON array streamed in chunks.
//!
//! `[{"sku": ..., "qty": ...}]` with `qty` = available summed over locations;
//! `?location=CODE` keeps that location only (skus not held there are left out);
//! `?detail=true` adds `locations` with on_hand, reserved, safety_stock and available.
//! The state lock is held for one chunk of skus at a time, so the body is never built in
//! memory and the processor keeps running; every sku is read whole (consistent per sku).
//! Partition by partition, skus in lexical order within each. Serves the partitions this
//! instance owns; with several instances, query each (or read `inventory.available`).

use std::convert::Infallible;
use std::ops::Bound;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use erpstream_connectors::sources::storefront_api::{ApiAuth, SNAPSHOT_PATH};
use erpstream_schemas::decimal::json_number;
use serde::Deserialize;
use serde_json::json;

use super::{InventoryView, SkuState};

/// Skus serialized per lock acquisition.
const CHUNK: usize = 2_000;

/// Query parameters.
#[derive(Debug, Default, Deserialize)]
pub struct SnapshotQuery {
    /// Only this location.
    pub location: Option<String>,
    /// Per-location figures.
    #[serde(default)]
    pub detail: bool,
}

struct Snapshot {
    view: InventoryView,
    auth: Arc<ApiAuth>,
}

/// The snapshot route over `view`, behind the storefront API's tokens.
pub fn router(view: InventoryView, auth: Arc<ApiAuth>) -> Router {
    Router::new()
        .route(SNAPSHOT_PATH, get(handle))
        .with_state(Arc::new(Snapshot { view, auth }))
}

async fn handle(
    State(snapshot): State<Arc<Snapshot>>,
    headers: HeaderMap,
    query: Result<Query<SnapshotQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(reason) = snapshot.auth.check(&headers) {
        let mut response = (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": "unauthorized", "reason": reason})),
        )
            .into_response();
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    let Query(query) = match query {
        Ok(query) => query,
        Err(rejection) => {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"error": "invalid query", "field": "query",
                    "reason": rejection.body_text()})),
            )
                .into_response();
        }
    };
    let mut partitions: Vec<i32> = snapshot.view.read().keys().copied().collect();
    partitions.sort_unstable();
    let cursor = Cursor {
        view: snapshot.view.clone(),
        partitions,
        index: 0,
        after: None,
        started: false,
        finished: false,
        written: 0,
        query,
    };
    let stream = futures::stream::unfold(cursor, |mut cursor| async move {
        let chunk = cursor.next_chunk()?;
        Some((Ok::<Bytes, Infallible>(chunk), cursor))
    });
    let mut response = Response::new(Body::from_stream(stream));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Where the streamed body is.
struct Cursor {
    view: InventoryView,
    partitions: Vec<i32>,
    index: usize,
    after: Option<String>,
    started: bool,
    finished: bool,
    written: usize,
    query: SnapshotQuery,
}

impl Cursor {
    /// The next piece of the body, or `None` after the closing bracket.
    fn next_chunk(&mut self) -> Option<Bytes> {
        if self.finished {
            return None;
        }
        let mut out = Vec::with_capacity(64 * 1024);
        if !self.started {
            out.push(b'[');
            self.started = true;
        }
        let mut taken = 0;
        while taken < CHUNK && self.index < self.partitions.len() {
            let partitions = self.view.read();
            let Some(skus) = partitions.get(&self.partitions[self.index]) else {
                self.index += 1;
                self.after = None;
                continue;
            };
            let lower = match &self.after {
                Some(after) => Bound::Excluded(after.as_str()),
                None => Bound::Unbounded,
            };
            let mut exhausted = true;
            for (sku, state) in skus.range::<str, _>((lower, Bound::Unbounded)) {
                if taken == CHUNK {
                    exhausted = false;
                    break;
                }
                taken += 1;
                self.after = Some(sku.clone());
                if let Some(item) = self.item(sku, state) {
                    if self.written > 0 {
                        out.push(b',');
                    }
                    self.written += 1;
                    // Writing a `Value` to a Vec cannot fail.
                    let _ = serde_json::to_writer(&mut out, &item);
                }
            }
            if exhausted {
                self.index += 1;
                self.after = None;
            }
        }
        if self.index >= self.partitions.len() {
            out.push(b']');
            self.finished = true;
        }
        Some(Bytes::from(out))
    }

    fn item(&self, sku: &str, state: &SkuState) -> Option<serde_json::Value> {
        let location = self.query.location.as_deref();
        if let Some(code) = location
            && !state.locations.contains_key(code)
        {
            return None;
        }
        let qty = json_number(state.available(location));
        if !self.query.detail {
            return Some(json!({"sku": sku, "qty": qty}));
        }
        let locations: Vec<serde_json::Value> = state
            .locations
            .iter()
            .filter(|(code, _)| location.is_none_or(|l| l == code.as_str()))
            .map(|(code, l)| {
                json!({
                    "location_code": code,
                    "on_hand": json_number(l.on_hand),
                    "reserved": json_number(l.reserved),
                    "safety_stock": json_number(l.safety_stock),
                    "available": json_number(l.available),
                    "version": l.version,
                })
            })
            .collect();
        Some(json!({"sku": sku, "qty": qty, "locations": locations}))
    }
}

//! `GET /api/inventory/snapshot` (SPEC §3): every sku's available-to-sell from the
//! materialized state, as a JSON array streamed in chunks.
//!
//! `[{"sku": ..., "qty": ...}]` with `qty` = available summed over locations;
//! `?location=CODE` keeps that location only (skus not held there are left out);
//! `?detail=true` adds the sku's `partition` and `locations` with on_hand, reserved,
//! safety_stock, available, version, and `erp_time` / `erp_offset`: the ERP time and input
//! offset (in that partition) of the last absolute figure applied — the event that set
//! on_hand, which `erpstream reconcile` reports next to a difference.
//! The state lock is held for one chunk of skus at a time, so the body is never built in
//! memory and the processor keeps running; every sku is read whole (consistent per sku).
//! Partition by partition, skus in lexical order within each. The partitions this replica
//! owns come from its live state, the others from its read copy (see [`super::copy`]), so
//! every replica answers for every sku; while a partition is neither restored here nor
//! caught up in the copy (start-up, a rebalance) the answer is 503 with `Retry-After`,
//! never a partial list. Without a read copy (`read_copy: false`) only the partitions this
//! replica owns are served.

use std::convert::Infallible;
use std::ops::Bound;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use erpstream_connectors::component::SnapshotService;
use erpstream_connectors::sources::fields::{Quantity, Text};
use erpstream_connectors::sources::http::{ErrorBody, SecuritySchemes};
use erpstream_connectors::sources::storefront_api::{ApiAuth, SNAPSHOT_PATH};
use serde::Deserialize;
use utoipa::{IntoParams, OpenApi, ToSchema};

use super::{InventoryView, SkuState};

/// Skus serialized per lock acquisition.
const CHUNK: usize = 2_000;

/// Query parameters.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SnapshotQuery {
    /// Only this location.
    pub location: Option<String>,
    /// Per-location figures.
    #[serde(default)]
    pub detail: bool,
}

/// One sku of the snapshot, as [`Cursor::write_item`] writes it.
#[derive(ToSchema)]
#[allow(dead_code)] // never built: the body is written straight from the state
pub struct SnapshotItem {
    /// The sku.
    #[schema(value_type = Text)]
    sku: String,
    /// Available to sell, summed over its locations (or at `location`).
    #[schema(value_type = Quantity)]
    qty: f64,
    /// Its partition of `inventory.available` (`detail=true`).
    #[schema(required = false)]
    partition: i32,
    /// Per location (`detail=true`).
    #[schema(required = false)]
    locations: Vec<LocationFigures>,
}

/// A sku's figures at one location (`detail=true`).
#[derive(ToSchema)]
#[allow(dead_code)] // never built: the body is written straight from the state
pub struct LocationFigures {
    /// The location.
    location_code: String,
    /// The ERP's last absolute figure.
    #[schema(value_type = Quantity)]
    on_hand: f64,
    /// Held by open orders and adjustments.
    #[schema(value_type = Quantity)]
    reserved: f64,
    /// Kept back from sale.
    #[schema(value_type = Quantity)]
    safety_stock: f64,
    /// `max(0, on_hand - reserved - safety_stock)`.
    #[schema(value_type = Quantity)]
    available: f64,
    /// Bumped by every change; what the storefront sink orders deliveries by.
    version: i64,
    /// ERP time (epoch ms) of the figure behind `on_hand`.
    erp_time: i64,
    /// Input offset of that figure in its partition.
    erp_offset: i64,
}

#[derive(OpenApi)]
#[openapi(paths(handle), modifiers(&SecuritySchemes))]
struct Api;

/// The states a snapshot reads: the live one, and the read copy of every partition.
#[derive(Clone)]
pub struct Views {
    /// The processor's own state (the partitions this replica owns).
    pub live: InventoryView,
    /// The read copy, if the processor keeps one.
    pub copy: Option<InventoryView>,
    /// How long a hold lasts (`reservations.expiry`), for the expiry shown with each.
    pub expiry: std::time::Duration,
}

impl Views {
    /// Per partition, in order, the state to read it from; or the partitions not whole yet.
    fn plan(&self) -> Result<Vec<(i32, InventoryView)>, Vec<i32>> {
        let Some(copy) = &self.copy else {
            let mut partitions: Vec<i32> = self.live.read().keys().copied().collect();
            partitions.sort_unstable();
            return Ok(partitions
                .into_iter()
                .map(|p| (p, self.live.clone()))
                .collect());
        };
        let mut partitions: Vec<i32> = copy.read().keys().copied().collect();
        if partitions.is_empty() {
            // The copy has not described the changelog yet.
            return Err(self.live.read().keys().copied().collect());
        }
        partitions.sort_unstable();
        let mut plan = Vec::with_capacity(partitions.len());
        let mut missing = Vec::new();
        for partition in partitions {
            if self.live.is_whole(partition) {
                plan.push((partition, self.live.clone()));
            } else if copy.is_whole(partition) {
                plan.push((partition, copy.clone()));
            } else {
                missing.push(partition);
            }
        }
        if missing.is_empty() {
            Ok(plan)
        } else {
            Err(missing)
        }
    }
}

struct Snapshot {
    views: Views,
    auth: Arc<ApiAuth>,
}

impl SnapshotService for Views {
    /// The snapshot route over these states, behind the storefront API's tokens.
    fn router(&self, auth: Arc<ApiAuth>) -> Router {
        Router::new()
            .route(SNAPSHOT_PATH, get(handle))
            .with_state(Arc::new(Snapshot {
                views: self.clone(),
                auth,
            }))
    }

    fn api(&self) -> utoipa::openapi::OpenApi {
        Api::openapi()
    }

    fn sku(&self, sku: &str) -> Option<serde_json::Value> {
        let found = |view: &InventoryView| {
            view.read().iter().find_map(|(partition, skus)| {
                skus.get(sku).map(|state| (*partition, (**state).clone()))
            })
        };
        let (partition, state) =
            found(&self.live).or_else(|| self.copy.as_ref().and_then(found))?;
        let mut json = serde_json::json!({
            "sku": sku,
            "partition": partition,
            "version": state.version,
            "available": decimal_text(state.available(None)),
            "locations": state.locations,
        });
        // Each open hold with its expiry; ended ones are bookkeeping, not for people.
        let expiry = self.expiry.as_millis() as i64;
        if let Some(locations) = json["locations"].as_object_mut() {
            for location in locations.values_mut() {
                if let Some(location) = location.as_object_mut() {
                    location.remove("ended");
                    for hold in location
                        .get_mut("holds")
                        .and_then(serde_json::Value::as_object_mut)
                        .into_iter()
                        .flat_map(|holds| holds.values_mut())
                    {
                        let held_at = hold["held_at"].as_i64().unwrap_or_default();
                        hold["expires_at"] = (held_at + expiry).into();
                    }
                }
            }
        }
        Some(json)
    }

    fn detail(&self) -> Result<Vec<u8>, String> {
        let partitions = self.plan().map_err(|missing| {
            format!("the state of partition(s) {missing:?} is still being read; retry shortly")
        })?;
        let mut cursor = Cursor::new(
            partitions,
            SnapshotQuery {
                location: None,
                detail: true,
            },
        );
        let mut body = Vec::new();
        while let Some(chunk) = cursor.next_chunk() {
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// Every sku's available-to-sell from the materialized state, streamed (1M skus in well
/// under a second); partition by partition, skus in order within each.
#[utoipa::path(
    get,
    path = "/api/inventory/snapshot",
    tag = "storefront",
    params(SnapshotQuery),
    responses(
        (status = 200, description = "Every sku (held at `location`, if given)", body = Vec<SnapshotItem>),
        (status = 400, description = "A query parameter of the wrong type (named)", body = ErrorBody),
        (status = 401, description = "No or an unknown API token", body = ErrorBody),
        (status = 503, description = "A partition's state is still being read (start-up, a rebalance); never a partial list",
            body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ),
    security(("storefront_token" = []), ("storefront_key" = [])),
)]
async fn handle(
    State(snapshot): State<Arc<Snapshot>>,
    headers: HeaderMap,
    query: Result<Query<SnapshotQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(reason) = snapshot.auth.check(&headers) {
        return ApiAuth::refuse(reason);
    }
    let Query(query) = match query {
        Ok(query) => query,
        Err(rejection) => {
            return ErrorBody::new("invalid query")
                .field("query")
                .reason(rejection.body_text())
                .respond(StatusCode::BAD_REQUEST);
        }
    };
    let partitions = match snapshot.views.plan() {
        Ok(plan) => plan,
        Err(missing) => {
            return ErrorBody::new("state not read yet")
                .reason(format!(
                    "the state of partition(s) {missing:?} is still being read; retry shortly"
                ))
                .respond_later(StatusCode::SERVICE_UNAVAILABLE, 1);
        }
    };
    let cursor = Cursor::new(partitions, query);
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
    /// Per partition, the state it is read from.
    partitions: Vec<(i32, InventoryView)>,
    index: usize,
    after: Option<String>,
    started: bool,
    finished: bool,
    written: usize,
    query: SnapshotQuery,
}

impl Cursor {
    fn new(partitions: Vec<(i32, InventoryView)>, query: SnapshotQuery) -> Self {
        Self {
            partitions,
            index: 0,
            after: None,
            started: false,
            finished: false,
            written: 0,
            query,
        }
    }

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
            let (partition, view) = &self.partitions[self.index];
            let partitions = view.read();
            let Some(skus) = partitions.get(partition) else {
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
                self.after = Some(sku.to_string());
                let before = out.len();
                if self.written > 0 {
                    out.push(b',');
                }
                if self.write_item(&mut out, sku, state) {
                    self.written += 1;
                } else {
                    out.truncate(before);
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

    /// Writes `{"sku":…,"qty":…[,"locations":[…]]}`; `false` (and garbage to truncate) if
    /// the sku is not held at the requested location.
    fn write_item(&self, out: &mut Vec<u8>, sku: &str, state: &SkuState) -> bool {
        let location = self.query.location.as_deref();
        if let Some(code) = location
            && !state.locations.contains_key(code)
        {
            return false;
        }
        // Writing JSON into a Vec cannot fail.
        out.extend_from_slice(b"{\"sku\":");
        let _ = serde_json::to_writer(&mut *out, sku);
        out.extend_from_slice(b",\"qty\":");
        out.extend_from_slice(decimal_text(state.available(location)).as_bytes());
        if self.query.detail {
            out.extend_from_slice(
                format!(",\"partition\":{}", self.partitions[self.index].0).as_bytes(),
            );
            out.extend_from_slice(b",\"locations\":[");
            let mut first = true;
            for (code, l) in state
                .locations
                .iter()
                .filter(|(code, _)| location.is_none_or(|c| c == *code))
            {
                if !first {
                    out.push(b',');
                }
                first = false;
                out.extend_from_slice(b"{\"location_code\":");
                let _ = serde_json::to_writer(&mut *out, code);
                for (name, value) in [
                    ("on_hand", l.on_hand),
                    ("reserved", l.reserved()),
                    ("safety_stock", l.safety_stock),
                    ("available", l.available()),
                ] {
                    out.extend_from_slice(
                        format!(",\"{name}\":{}", decimal_text(value)).as_bytes(),
                    );
                }
                out.extend_from_slice(
                    format!(
                        ",\"version\":{},\"erp_time\":{},\"erp_offset\":{}}}",
                        l.version, l.erp_time, l.erp_offset
                    )
                    .as_bytes(),
                );
            }
            out.push(b']');
        }
        out.push(b'}');
        true
    }
}

/// A decimal as an exact JSON number (`14`, `2.5`).
fn decimal_text(value: rust_decimal::Decimal) -> String {
    value.normalize().to_string()
}

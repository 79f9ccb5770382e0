//! `storefront_api`: the storefront's calls to "the ERP" (sales interface spec §5):
//! `POST /api/sales/orders` (§5.1) and `POST /api/inventory/adjust` (§5.2).
//!
//! Contract:
//! - Authenticated by bearer token or `X-API-Key` (401 otherwise); bodies validated field by
//!   field (400 shape, 422 rule, both naming the field; 413 over `max_body`).
//! - Accepting a document publishes, in this order, one `HOLD` record per (sku, location)
//!   to the reservations topic (keyed by sku, so the inventory processor takes the stock
//!   at once), then the document itself (`sales.order` keyed by transaction id,
//!   `inventory.adjustment` keyed by reference id), and answers `202` only after the broker
//!   acknowledged all of them. If anything fails the answer is `503` with `Retry-After`: the
//!   caller retries, and holds already published are repeats the processor ignores (or, if
//!   the caller gives up, they expire). Holds never wait for the document, so stock is
//!   never sold twice in between.
//! - Idempotent on `transaction_id` / `reference_id`: the first `202` is stored in Postgres
//!   and a repeat with the same body gets it again (with `Idempotent-Replayed: true`)
//!   without publishing; a repeat with a different body is `409`.

mod auth;
mod config;
pub mod payload;
mod store;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use erpstream_schemas::{
    AdjustmentLine, EventKind, InventoryAdjustment, LineItem, OrderStatus, Reservation,
    ReservationAction, SalesOrder, Traceparent, now_millis,
};
use futures::future::{BoxFuture, try_join_all};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tracing::Instrument;
use utoipa::{OpenApi, ToSchema};

pub use auth::ApiAuth;
pub use config::StorefrontApiConfig;
use payload::Invalid;
use store::{Answer, RequestStore};

use crate::component::{Component, Context, Exchange, Graph, History, Port, Route, Running};
use crate::kafka::{KafkaConfig, PublishError, Publisher};
use crate::metrics as m;
use crate::postgres::PgError;
use crate::sources::fields::{Quantity, Text};
use crate::sources::http::{self, ErrorBody, SecuritySchemes};
use crate::validation::{Checks, Problem};

/// Component type name in the topology.
pub const TYPE: &str = "storefront_api";
/// Path of the orders endpoint (SPEC §3).
pub const ORDERS_PATH: &str = "/api/sales/orders";
/// Path of the adjustments endpoint (SPEC §3).
pub const ADJUST_PATH: &str = "/api/inventory/adjust";
/// Path of the snapshot endpoint (SPEC §3), served by the pipeline from the inventory state.
pub const SNAPSHOT_PATH: &str = "/api/inventory/snapshot";
/// Seconds a caller should wait before retrying a 503.
const RETRY_AFTER_SECS: u64 = 2;

/// A running `storefront_api` source.
pub struct StorefrontApiSource {
    id: String,
    config: StorefrontApiConfig,
    auth: Arc<ApiAuth>,
    store: Arc<RequestStore>,
    publisher: Publisher,
    orders_topic: String,
    adjustments_topic: String,
    reservations_topic: String,
}

/// The kinds of document, as stored for idempotency.
#[derive(Clone, Copy)]
enum Kind {
    Order,
    Adjustment,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Order => "order",
            Kind::Adjustment => "adjustment",
        }
    }
    fn key_field(self) -> &'static str {
        match self {
            Kind::Order => "transaction_id",
            Kind::Adjustment => "reference_id",
        }
    }
}

/// A validated document ready to publish.
enum Document {
    Order(payload::Order),
    Adjustment(payload::Adjustment),
}

impl Document {
    fn key(&self) -> &str {
        match self {
            Document::Order(o) => &o.request.transaction_id,
            Document::Adjustment(a) => &a.request.reference_id,
        }
    }
}

impl Component for StorefrontApiConfig {
    fn validate(&self, at: &str) -> Vec<Problem> {
        let location = self.default_location.as_deref();
        Checks::new(at)
            .listed("tokens", &self.tokens, "token")
            .postgres_url("database", &self.database)
            .rule(
                location.is_none_or(|l| !l.trim().is_empty()),
                "default_location",
                "must not be empty",
            )
            .positive("max_body", self.max_body.as_u64() > 0)
            .text("source_system", &self.source_system)
            .done()
    }

    fn outputs(&self) -> Vec<Port> {
        vec![
            Port::new("orders_topic", &self.orders_topic, &[EventKind::SalesOrder]),
            Port::new(
                "adjustments_topic",
                &self.adjustments_topic,
                &[EventKind::InventoryAdjustment],
            ),
            Port::new(
                "reservations_topic",
                &self.reservations_topic,
                &[EventKind::Reservation],
            ),
        ]
    }

    fn routes(&self) -> Vec<Route> {
        let snapshot = self.snapshot.as_ref().map(|_| SNAPSHOT_PATH);
        [Some(ORDERS_PATH), Some(ADJUST_PATH), snapshot]
            .into_iter()
            .flatten()
            .map(|path| Route {
                field: None,
                path: path.into(),
            })
            .collect()
    }

    /// Holds are keyed by sku and taken by the processor that reads `inventory.change`:
    /// the two topics need equal partition counts; `snapshot` must name an inventory
    /// processor.
    fn check(&self, at: &str, graph: &dyn Graph) -> Vec<Problem> {
        let mut problems = Vec::new();
        let stock = EventKind::InventoryChange.topic();
        if let (Some(holds), Some(changes)) = (
            graph.partitions(&self.reservations_topic),
            graph.partitions(stock),
        ) && holds != changes
        {
            problems.push(Problem::new(
                format!("{at}.reservations_topic"),
                format!(
                    "{} must have as many partitions as {stock} (both keyed by sku)",
                    self.reservations_topic
                ),
            ));
        }
        if let Some(snapshot) = &self.snapshot
            && !graph.has_snapshot(snapshot)
        {
            problems.push(Problem::new(
                format!("{at}.snapshot"),
                format!("{snapshot} is not an inventory processor"),
            ));
        }
        problems
    }

    async fn build(&self, context: Context) -> Result<Running, crate::Error> {
        let source = Arc::new(StorefrontApiSource::build(
            &context.id,
            self.clone(),
            &context.kafka,
            context.publisher.clone(),
        )?);
        self.database
            .parse::<crate::postgres::PgTarget>()?
            .check("request store")
            .await?;
        let mut routes = context
            .admission
            .guard(&context.id, source.clone().router());
        let mut api = source.api();
        if let Some(id) = &self.snapshot {
            let snapshot = context.snapshot(id).ok_or_else(|| crate::Error::Wiring {
                setting: format!("sources.{}.snapshot", context.id),
                reason: format!("{id} keeps no snapshot"),
            })?;
            routes = routes.merge(snapshot.router(source.auth()));
            api.merge(snapshot.api());
        }
        Ok(Running::default()
            .routes(routes)
            .api(api)
            .history(source.clone())
            .probe(move || {
                let source = source.clone();
                async move { source.store_reachable().await }
            }))
    }
}

impl StorefrontApiSource {
    /// Builds the source: resolves its tokens and topic names (no network I/O).
    pub fn build(
        id: &str,
        config: StorefrontApiConfig,
        kafka: &KafkaConfig,
        publisher: Publisher,
    ) -> Result<Self, crate::Error> {
        let tokens = config
            .tokens
            .iter()
            .map(|s| s.resolve())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            id: id.to_string(),
            auth: Arc::new(ApiAuth::new(tokens)),
            store: Arc::new(RequestStore::new(&config.database)?),
            orders_topic: kafka.topic(&config.orders_topic),
            adjustments_topic: kafka.topic(&config.adjustments_topic),
            reservations_topic: kafka.topic(&config.reservations_topic),
            publisher,
            config,
        })
    }

    /// The token check, shared with the snapshot endpoint.
    pub fn auth(&self) -> Arc<ApiAuth> {
        self.auth.clone()
    }

    /// The HTTP routes of this source.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route(ORDERS_PATH, post(place_order))
            .route(ADJUST_PATH, post(adjust_stock))
            .with_state(self)
    }

    /// The OpenAPI document of this source's routes (the snapshot's is its processor's).
    pub fn api(&self) -> utoipa::openapi::OpenApi {
        Api::openapi()
    }

    async fn accept(&self, kind: Kind, headers: &HeaderMap, body: Body) -> Response {
        let started = Instant::now();
        metrics::counter!(m::RECEIVED_EVENTS, m::COMPONENT_ID => self.id.clone(),
            m::COMPONENT_TYPE => TYPE)
        .increment(1);
        let response = match self.try_accept(kind, headers, body).await {
            Ok(response) => response,
            Err(refusal) => {
                metrics::counter!(m::ERRORS, m::COMPONENT_ID => self.id.clone(),
                    m::COMPONENT_TYPE => TYPE, m::ERROR_TYPE => refusal.kind(),
                    m::STAGE => "receive")
                .increment(1);
                refusal.into_response()
            }
        };
        metrics::histogram!(m::INGEST_LATENCY, m::COMPONENT_ID => self.id.clone())
            .record(started.elapsed().as_secs_f64());
        response
    }

    async fn try_accept(
        &self,
        kind: Kind,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Response, Refusal> {
        self.auth.check(headers).map_err(Refusal::Unauthorized)?;
        let bytes = http::read_limited(headers, body, self.config.max_body.as_u64() as usize)
            .await
            .map_err(Refusal::Body)?;
        let default_location = self.config.default_location.as_deref();
        let document = match kind {
            Kind::Order => Document::Order(payload::order(&bytes, default_location)?),
            Kind::Adjustment => {
                Document::Adjustment(payload::adjustment(&bytes, default_location)?)
            }
        };
        let sha = hex::encode(Sha256::digest(&bytes));
        let key = document.key().to_string();
        if let Some(previous) = self
            .store
            .get(&self.id, kind.name(), &key)
            .await
            .map_err(Refusal::Store)?
        {
            return self.repeat(kind, &key, &sha, previous);
        }
        let trace = http::trace_of(headers);
        let response = self
            .publish(document, &trace)
            .await
            .map_err(Refusal::Broker)?;
        let first = self
            .store
            .put(
                &self.id,
                kind.name(),
                &key,
                &Answer {
                    request_sha256: sha.clone(),
                    status: StatusCode::ACCEPTED.as_u16(),
                    response,
                },
            )
            .await
            .map_err(Refusal::Store)?;
        if first.request_sha256 != sha {
            // A concurrent request with the same key and another body won the race; ours
            // was published but is a repeat of its key, which the processors drop.
            return self.repeat(kind, &key, &sha, first);
        }
        metrics::counter!(m::SENT_EVENTS, m::COMPONENT_ID => self.id.clone(),
            m::COMPONENT_TYPE => TYPE)
        .increment(1);
        Ok(answer_response(&first, false))
    }

    fn repeat(
        &self,
        kind: Kind,
        key: &str,
        sha: &str,
        previous: Answer,
    ) -> Result<Response, Refusal> {
        metrics::counter!(m::DROPPED_EVENTS, m::COMPONENT_ID => self.id.clone(),
            m::COMPONENT_TYPE => TYPE, m::REASON => "duplicate")
        .increment(1);
        if previous.request_sha256 != sha {
            return Err(Refusal::Conflict(kind.key_field(), key.to_string()));
        }
        Ok(answer_response(&previous, true))
    }

    /// Publishes the holds, then the document; returns the 202 body.
    async fn publish(
        &self,
        document: Document,
        trace: &Traceparent,
    ) -> Result<Value, PublishError> {
        let ingested_at = now_millis();
        let event_id = uuid::Uuid::now_v7().to_string();
        let reference = document.key().to_string();
        let event = match document {
            Document::Order(order) => {
                let request = order.request;
                Built::Order(SalesOrder {
                    event_id: event_id.clone(),
                    idempotency_key: request.transaction_id.clone(),
                    source_system: self.config.source_system.clone(),
                    source: self.id.clone(),
                    occurred_at: order.occurred_at,
                    ingested_at,
                    transaction_id: request.transaction_id,
                    status: OrderStatus::Open,
                    customer_name: request.customer_details.name,
                    customer_tax_id: request.customer_details.tax_id,
                    line_items: request
                        .line_items
                        .into_iter()
                        .zip(order.locations)
                        .map(|(line, location)| LineItem {
                            sku: line.sku,
                            quantity: line.quantity,
                            unit_price: line.unit_price,
                            location_code: Some(location),
                        })
                        .collect(),
                })
            }
            Document::Adjustment(adjustment) => {
                let request = adjustment.request;
                Built::Adjustment(InventoryAdjustment {
                    event_id: event_id.clone(),
                    idempotency_key: request.reference_id.clone(),
                    source_system: self.config.source_system.clone(),
                    source: self.id.clone(),
                    occurred_at: ingested_at,
                    ingested_at,
                    reference_id: request.reference_id,
                    adjustments: request
                        .adjustments
                        .into_iter()
                        .zip(adjustment.locations)
                        .map(|(line, location)| AdjustmentLine {
                            sku: line.sku,
                            quantity_change: line.quantity_change,
                            location_code: location,
                        })
                        .collect(),
                })
            }
        };
        let holds = match &event {
            Built::Order(order) => order.holds(),
            Built::Adjustment(adjustment) => adjustment.holds(),
        };
        let source = (self.config.source_system.as_str(), self.id.as_str());
        let steps: Vec<Reservation> = holds
            .iter()
            .map(|((sku, location), quantity)| {
                Reservation::step(
                    ReservationAction::Hold,
                    source,
                    &reference,
                    sku,
                    location,
                    *quantity,
                    ingested_at,
                    ingested_at,
                )
            })
            .collect();
        try_join_all(steps.iter().map(|step| {
            self.publisher
                .publish(&self.reservations_topic, step, trace)
        }))
        .await?;
        let (ack, transaction_id, reference_id) = match &event {
            Built::Order(order) => (
                self.publisher
                    .publish(&self.orders_topic, order, trace)
                    .await?,
                Some(reference),
                None,
            ),
            Built::Adjustment(adjustment) => (
                self.publisher
                    .publish(&self.adjustments_topic, adjustment, trace)
                    .await?,
                None,
                Some(reference),
            ),
        };
        let reserved = holds
            .into_iter()
            .map(|((sku, location_code), quantity)| Held {
                sku,
                location_code,
                quantity: erpstream_schemas::decimal::json_number(quantity),
            })
            .collect();
        let accepted = DocumentAccepted {
            status: AcceptedStatus::Accepted,
            transaction_id,
            reference_id,
            event_id,
            topic: ack.topic,
            partition: ack.partition,
            offset: ack.offset,
            reserved,
        };
        Ok(serde_json::to_value(accepted).unwrap_or(Value::Null))
    }

    /// Whether the request store answers (for readiness).
    pub async fn store_reachable(&self) -> bool {
        self.store.reachable().await
    }
}

impl History for StorefrontApiSource {
    /// Orders and adjustments as answered: accepted ones with their document record and
    /// the stock they hold, refused ones (a 4xx stored for their key) with the reason.
    fn exchanges(
        &self,
        filter: &str,
        limit: i64,
    ) -> BoxFuture<'static, Result<Vec<Exchange>, String>> {
        let (store, id, filter) = (self.store.clone(), self.id.clone(), filter.to_string());
        Box::pin(async move {
            let rows = store
                .recent(&id, &filter, limit)
                .await
                .map_err(|e| format!("the request store: {e}"))?;
            Ok(rows
                .into_iter()
                .map(|(kind, key, status, response, at)| {
                    let accepted = serde_json::from_value::<DocumentAccepted>(response.clone());
                    match accepted {
                        Ok(doc) => Exchange {
                            at: erpstream_schemas::rfc3339(at),
                            kind,
                            key,
                            actor: None,
                            outcome: "accepted".into(),
                            ok: true,
                            records: vec![format!(
                                "{}/{}/{}",
                                doc.topic, doc.partition, doc.offset
                            )],
                            holds: doc
                                .reserved
                                .into_iter()
                                .map(|h| (h.sku, h.location_code))
                                .collect(),
                        },
                        Err(_) => Exchange {
                            at: erpstream_schemas::rfc3339(at),
                            kind,
                            key,
                            actor: None,
                            outcome: format!(
                                "refused ({status}): {}",
                                response["reason"]
                                    .as_str()
                                    .or(response["error"].as_str())
                                    .unwrap_or("see the stored answer")
                            ),
                            ok: false,
                            records: Vec::new(),
                            holds: Vec::new(),
                        },
                    }
                })
                .collect())
        })
    }
}

/// A document as published.
enum Built {
    Order(SalesOrder),
    Adjustment(InventoryAdjustment),
}

fn answer_response(answer: &Answer, replayed: bool) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::ACCEPTED);
    let mut response = (status, axum::Json(answer.response.clone())).into_response();
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

/// The body of a 202, and of every replay of it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DocumentAccepted {
    /// Always `accepted`.
    pub status: AcceptedStatus,
    /// The order's id (orders).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction_id: Option<String>,
    /// The adjustment's reference (adjustments).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_id: Option<String>,
    /// Id of the published document event.
    pub event_id: String,
    /// Broker-side topic of the document.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// The stock held for it, per sku and location.
    pub reserved: Vec<Held>,
}

/// The status of an accepted document.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AcceptedStatus {
    /// Stored on the broker, stock held.
    Accepted,
}

/// Stock held for a document at one location.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Held {
    /// The sku.
    #[schema(value_type = Text)]
    pub sku: String,
    /// The location.
    #[schema(value_type = Text)]
    pub location_code: String,
    /// The quantity held (negative adjustments hold; positive ones hold nothing).
    #[schema(value_type = Quantity)]
    pub quantity: Value,
}

#[derive(OpenApi)]
#[openapi(
    paths(place_order, adjust_stock),
    components(schemas(DocumentAccepted, ErrorBody)),
    modifiers(&SecuritySchemes)
)]
struct Api;

/// The answers of both document routes (an order, an adjustment).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // never built: the handlers answer with these statuses and bodies
enum DocumentAnswer {
    /// Stored: the holds and the document were acknowledged by the broker; a replay of the
    /// same request gets the same body.
    #[response(status = 202,
        headers(("Idempotent-Replayed" = String, description = "true on a replay of the first answer")))]
    Accepted(DocumentAccepted),
    /// Not JSON, or a field of the wrong type or missing (named).
    #[response(status = 400)]
    Malformed(ErrorBody),
    /// No or an unknown API token.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// The body did not arrive in time.
    #[response(status = 408)]
    Incomplete(ErrorBody),
    /// The document's id (`transaction_id`, `reference_id`) was used before for another body.
    #[response(status = 409)]
    Conflict(ErrorBody),
    /// The body is over max_body.
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// A value breaks a rule (named): a quantity not above 0, a change of 0, a date that is
    /// not RFC 3339, no location.
    #[response(status = 422)]
    Rule(ErrorBody),
    /// Not stored (the broker or the request store is away, or the pipeline is overloaded);
    /// send again after Retry-After.
    #[response(status = 503, headers(("Retry-After" = u64, description = "Seconds to wait")))]
    RetryLater(ErrorBody),
}

/// Places an online order (the sales interface spec §5.1): its stock is held at once and the
/// order is written back to the ERP. Idempotent on `transaction_id`.
#[utoipa::path(
    post,
    path = "/api/sales/orders",
    tag = "storefront",
    request_body(content = payload::OrderRequest, content_type = "application/json"),
    responses(DocumentAnswer),
    security(("storefront_token" = []), ("storefront_key" = [])),
)]
async fn place_order(
    State(source): State<Arc<StorefrontApiSource>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(source, Kind::Order, headers, body).await
}

/// Adjusts stock (the sales interface spec §5.2): negative changes are held at once; the
/// adjustment is written back to the ERP. Idempotent on `reference_id`.
#[utoipa::path(
    post,
    path = "/api/inventory/adjust",
    tag = "storefront",
    request_body(content = payload::AdjustmentRequest, content_type = "application/json"),
    responses(DocumentAnswer),
    security(("storefront_token" = []), ("storefront_key" = [])),
)]
async fn adjust_stock(
    State(source): State<Arc<StorefrontApiSource>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(source, Kind::Adjustment, headers, body).await
}

async fn handle(
    source: Arc<StorefrontApiSource>,
    kind: Kind,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let span = tracing::info_span!("component", component_kind = "source",
        component_id = %source.id, component_type = TYPE);
    source.accept(kind, &headers, body).instrument(span).await
}

/// Why a request was not accepted, and the reply that says so.
#[derive(Debug)]
enum Refusal {
    Body(http::BodyError),
    Unauthorized(&'static str),
    Invalid(Invalid),
    Conflict(&'static str, String),
    Store(PgError),
    Broker(PublishError),
}

impl From<Invalid> for Refusal {
    fn from(invalid: Invalid) -> Self {
        Refusal::Invalid(invalid)
    }
}

impl Refusal {
    fn kind(&self) -> &'static str {
        match self {
            Refusal::Body(e) => e.kind(),
            Refusal::Unauthorized(_) => "unauthorized",
            Refusal::Invalid(_) => "invalid_payload",
            Refusal::Conflict(..) => "idempotency_conflict",
            Refusal::Store(_) => "store_unavailable",
            Refusal::Broker(_) => "broker_unavailable",
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Body(e) => e.into_response(),
            Refusal::Unauthorized(reason) => ApiAuth::refuse(reason),
            Refusal::Invalid(Invalid::Shape(e)) => http::invalid(StatusCode::BAD_REQUEST, &e),
            Refusal::Invalid(Invalid::Rule(e)) => {
                http::invalid(StatusCode::UNPROCESSABLE_ENTITY, &e)
            }
            Refusal::Conflict(field, key) => ErrorBody::new("idempotency conflict")
                .field(field)
                .reason(format!("{key} was already used for a different request"))
                .respond(StatusCode::CONFLICT),
            Refusal::Store(e) => {
                tracing::warn!(error = %e, "request store unavailable");
                http::retry_later(&format!("request store unavailable: {e}"), RETRY_AFTER_SECS)
            }
            Refusal::Broker(e) => {
                tracing::warn!(error = %e, "document not stored");
                http::retry_later(&e.to_string(), RETRY_AFTER_SECS)
            }
        }
    }
}

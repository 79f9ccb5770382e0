//! `erp_webhook`: ERP pushes (`POST /webhooks/erp`) become `catalog.update` and
//! `inventory.change` events; with `orders_topic` set, a `sales.order` push with status
//! `cancelled` releases the order's stock holds and is published as a cancelled order.
//!
//! Contract: `202 {event_id, topic, partition, offset}` is sent only after the broker
//! acknowledged the record (`acks=all`); anything the broker did not take is answered `503`
//! with `Retry-After`, so the ERP retries and nothing acknowledged is lost. The event's
//! `idempotency_key` is the Standard Webhooks `webhook-id` (or an `Idempotency-Key` header),
//! else the SHA-256 of the body, so an ERP retry carries the same key; a retry seen recently
//! by this process is answered with the first reply without publishing again, and older
//! repeats are dropped by the `dedupe` processor. The ERP's `timestamp` is never a reason to
//! refuse: stale quantities are the inventory processor's business.

mod config;
pub mod payload;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use erpstream_schemas::{
    CatalogUpdate, EventKind, InventoryChange, LineItem, OrderStatus, Reservation,
    ReservationAction, SalesOrder, Traceparent, Variant, now_millis,
};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tracing::Instrument;
use utoipa::{OpenApi, ToSchema};

use crate::signing::{self, Verifier};
pub use config::ErpWebhookConfig;
use payload::{ErpEvent, ErpWebhook as ParsedWebhook};

use crate::component::{Component, Context, Port, Route, Running};
use crate::kafka::{KafkaConfig, PublishError, Publisher};
use crate::metrics as m;
use crate::secret::SecretError;
use crate::sources::http::{self, ErrorBody, SecuritySchemes};
use crate::validation::{Checks, Problem};

/// Component type name in the topology.
pub const TYPE: &str = "erp_webhook";
/// Seconds an ERP should wait before retrying a 503.
const RETRY_AFTER_SECS: u64 = 5;
/// How many recent acknowledgements are kept to answer retries without republishing.
const RECENT_ACKS: usize = 100_000;

#[derive(OpenApi)]
#[openapi(
    paths(handle),
    components(schemas(payload::InventoryData, crate::sources::fields::Quantity)),
    modifiers(&SecuritySchemes)
)]
struct Api;

/// The body of a 202.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Accepted {
    /// Id of the published event.
    pub event_id: String,
    /// Broker-side topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

impl Component for ErpWebhookConfig {
    fn validate(&self, at: &str) -> Vec<Problem> {
        Checks::new(at)
            .rule(self.path.starts_with('/'), "path", "must start with /")
            .listed("secrets", &self.secrets, "secret")
            .positive("timestamp_tolerance", !self.timestamp_tolerance.is_zero())
            .positive("max_body", self.max_body.as_u64() > 0)
            .rule(
                self.orders_topic.is_some() == self.reservations_topic.is_some(),
                "reservations_topic",
                "orders_topic and reservations_topic are set together (a cancellation releases holds)",
            )
            .text("source_system", &self.source_system)
            .done()
    }

    fn outputs(&self) -> Vec<Port> {
        let mut ports = vec![
            Port::new(
                "catalog_topic",
                &self.catalog_topic,
                &[EventKind::CatalogUpdate],
            ),
            Port::new(
                "inventory_topic",
                &self.inventory_topic,
                &[EventKind::InventoryChange],
            ),
        ];
        if let Some(topic) = &self.orders_topic {
            ports.push(Port::new("orders_topic", topic, &[EventKind::SalesOrder]));
        }
        if let Some(topic) = &self.reservations_topic {
            ports.push(Port::new(
                "reservations_topic",
                topic,
                &[EventKind::Reservation],
            ));
        }
        ports
    }

    fn routes(&self) -> Vec<Route> {
        vec![Route {
            field: Some("path"),
            path: self.path.clone(),
        }]
    }

    async fn build(&self, context: Context) -> Result<Running, crate::Error> {
        let source = ErpWebhookSource::build(
            &context.id,
            self.clone(),
            &context.kafka,
            context.publisher.clone(),
        )?;
        let api = source.api();
        let routes = context
            .admission
            .guard(&context.id, Arc::new(source).router());
        Ok(Running::default().routes(routes).api(api))
    }
}

/// A running `erp_webhook` source.
pub struct ErpWebhookSource {
    id: String,
    config: ErpWebhookConfig,
    verifier: Verifier,
    publisher: Publisher,
    catalog_topic: String,
    inventory_topic: String,
    /// Broker-side orders and reservations topics, if cancellations are enabled.
    order_topics: Option<(String, String)>,
    recent: Mutex<RecentAcks>,
}

impl ErpWebhookSource {
    /// Builds the source: resolves its secrets and topic names (no network I/O).
    pub fn build(
        id: &str,
        config: ErpWebhookConfig,
        kafka: &KafkaConfig,
        publisher: Publisher,
    ) -> Result<Self, SecretError> {
        let secrets = config
            .secrets
            .iter()
            .map(|s| s.resolve())
            .collect::<Result<Vec<_>, _>>()?;
        let verifier = Verifier::new(
            secrets,
            config.standard_webhooks,
            config.frappe_signature,
            config.timestamp_tolerance,
        );
        Ok(Self {
            id: id.to_string(),
            catalog_topic: kafka.topic(&config.catalog_topic),
            inventory_topic: kafka.topic(&config.inventory_topic),
            order_topics: config
                .orders_topic
                .as_ref()
                .zip(config.reservations_topic.as_ref())
                .map(|(o, r)| (kafka.topic(o), kafka.topic(r))),
            verifier,
            publisher,
            config,
            recent: Mutex::new(RecentAcks::default()),
        })
    }

    /// The OpenAPI document of the route of this source, at its configured path.
    pub fn api(&self) -> utoipa::openapi::OpenApi {
        http::at_path(Api::openapi(), &self.config.path)
    }

    /// The HTTP route of this source.
    pub fn router(self: Arc<Self>) -> Router {
        let path = self.config.path.clone();
        Router::new().route(&path, post(handle)).with_state(self)
    }

    async fn accept(&self, headers: &HeaderMap, body: Body) -> Result<Accepted, Refusal> {
        let started = Instant::now();
        let bytes = http::read_limited(headers, body, self.config.max_body.as_u64() as usize)
            .await
            .map_err(Refusal::Body)?;
        self.verifier
            .verify(headers, &bytes, now_millis() / 1000)
            .map_err(|e| Refusal::Unauthorized(e.to_string()))?;
        let parsed = payload::parse(&bytes).map_err(Refusal::Invalid)?;
        if matches!(parsed.event, ErpEvent::OrderCancelled(_)) && self.order_topics.is_none() {
            return Err(Refusal::Invalid(payload::FieldError::new(
                "event_type",
                "sales.order is not enabled on this source (set orders_topic and reservations_topic)",
            )));
        }
        let key = idempotency_key(&self.id, headers, &bytes);
        if let Some(previous) = self.recent_ack(&key) {
            metrics::counter!(m::DROPPED_EVENTS, m::COMPONENT_ID => self.id.clone(),
                m::COMPONENT_TYPE => TYPE, m::REASON => "duplicate")
            .increment(1);
            return Ok(previous);
        }
        let trace = http::trace_of(headers);
        let accepted = self
            .publish(parsed, key.clone(), &trace)
            .await
            .map_err(Refusal::Broker)?;
        self.remember(key, accepted.clone());
        metrics::histogram!(m::INGEST_LATENCY, m::COMPONENT_ID => self.id.clone())
            .record(started.elapsed().as_secs_f64());
        Ok(accepted)
    }

    async fn publish(
        &self,
        webhook: ParsedWebhook,
        idempotency_key: String,
        trace: &Traceparent,
    ) -> Result<Accepted, PublishError> {
        let event_id = uuid::Uuid::now_v7().to_string();
        let ingested_at = now_millis();
        let ack = match webhook.event {
            ErpEvent::Inventory(data) => {
                let event = InventoryChange {
                    event_id: event_id.clone(),
                    idempotency_key,
                    source_system: self.config.source_system.clone(),
                    source: self.id.clone(),
                    occurred_at: webhook.occurred_at,
                    ingested_at,
                    sku: data.sku,
                    location_code: data.location_code,
                    new_quantity: data.new_quantity,
                    allocated_qty: data.allocated_qty,
                    in_transit_qty: data.in_transit_qty,
                    quantity_change: data.quantity_change,
                    change_reason: data.change_reason,
                    reference_id: data.reference_id,
                };
                self.publisher
                    .publish(&self.inventory_topic, &event, trace)
                    .await?
            }
            ErpEvent::Catalog(data) => {
                let event = CatalogUpdate {
                    event_id: event_id.clone(),
                    idempotency_key,
                    source_system: self.config.source_system.clone(),
                    source: self.id.clone(),
                    occurred_at: webhook.occurred_at,
                    ingested_at,
                    group_id: data.group_id,
                    group_name: data.group_name,
                    description: data.description,
                    category_path: data.category_path,
                    tax_code: data.tax_code,
                    is_active: data.is_active,
                    product_family: data.product_family,
                    lead_time_days: data.lead_time_days,
                    variants: data
                        .variants
                        .into_iter()
                        .map(|v| Variant {
                            sku: v.sku,
                            variant_title: v.variant_title,
                            selling_price: v.selling_price,
                            mrp: v.mrp,
                            current_stock: v.current_stock,
                            specifications: v
                                .specifications
                                .iter()
                                .map(|(k, v)| (k.clone(), payload::spec_text(v)))
                                .collect(),
                            media_assets: v.media_assets,
                        })
                        .collect(),
                };
                self.publisher
                    .publish(&self.catalog_topic, &event, trace)
                    .await?
            }
            ErpEvent::OrderCancelled(data) => {
                let (orders_topic, reservations_topic) =
                    self.order_topics.as_ref().expect("checked in accept");
                self.publish_cancellation(
                    data,
                    (orders_topic, reservations_topic),
                    (&event_id, idempotency_key, webhook.occurred_at, ingested_at),
                    trace,
                )
                .await?
            }
        };
        Ok(Accepted {
            event_id,
            topic: ack.topic,
            partition: ack.partition,
            offset: ack.offset,
        })
    }

    /// A cancelled order: first a `RELEASE` per (sku, location) of its lines (an absent
    /// location releases the order's hold at every location of the sku), then the order
    /// itself with status `CANCELLED`.
    async fn publish_cancellation(
        &self,
        data: payload::OrderData,
        (orders_topic, reservations_topic): (&str, &str),
        (event_id, idempotency_key, occurred_at, ingested_at): (&str, String, i64, i64),
        trace: &Traceparent,
    ) -> Result<crate::kafka::Ack, PublishError> {
        let mut pairs: Vec<(String, String)> = data
            .line_items
            .iter()
            .map(|l| (l.sku.clone(), l.location_code.clone().unwrap_or_default()))
            .collect();
        pairs.sort();
        pairs.dedup();
        let source = (self.config.source_system.as_str(), self.id.as_str());
        let steps: Vec<Reservation> = pairs
            .iter()
            .map(|(sku, location)| {
                Reservation::step(
                    ReservationAction::Release,
                    source,
                    &data.transaction_id,
                    sku,
                    location,
                    rust_decimal::Decimal::ZERO,
                    occurred_at,
                    ingested_at,
                )
            })
            .collect();
        futures::future::try_join_all(
            steps
                .iter()
                .map(|step| self.publisher.publish(reservations_topic, step, trace)),
        )
        .await?;
        let order = SalesOrder {
            event_id: event_id.to_string(),
            idempotency_key,
            source_system: self.config.source_system.clone(),
            source: self.id.clone(),
            occurred_at,
            ingested_at,
            transaction_id: data.transaction_id,
            status: OrderStatus::Cancelled,
            customer_name: None,
            customer_tax_id: None,
            line_items: data
                .line_items
                .into_iter()
                .map(|l| LineItem {
                    sku: l.sku,
                    quantity: l.quantity.unwrap_or_default(),
                    unit_price: l.unit_price.unwrap_or_default(),
                    location_code: l.location_code,
                })
                .collect(),
        };
        self.publisher.publish(orders_topic, &order, trace).await
    }

    fn recent_ack(&self, key: &str) -> Option<Accepted> {
        self.recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
    }

    fn remember(&self, key: String, accepted: Accepted) {
        self.recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, accepted);
    }
}

/// Takes an ERP webhook (the sales interface spec §4). Signed with `X-Signature` (hex
/// HMAC-SHA256 of the body, optionally `sha256=`-prefixed), Standard Webhooks
/// (`webhook-id`, `webhook-timestamp`, `webhook-signature`) or ERPNext's
/// `X-Frappe-Webhook-Signature`, as the source is configured. A repeated delivery (same
/// `webhook-id` or `Idempotency-Key`, or the same body) is answered like the first.
#[utoipa::path(
    post,
    path = "/webhooks/erp",
    tag = "erp",
    operation_id = "erp_webhook",
    request_body(content = payload::WebhookBody, content_type = "application/json"),
    params(
        ("webhook-id" = Option<String>, Header,
            description = "Standard Webhooks message id: the delivery's idempotency key"),
        ("Idempotency-Key" = Option<String>, Header,
            description = "The delivery's idempotency key, when there is no webhook-id"),
    ),
    responses(
        (status = 202, description = "Stored: the broker acknowledged the event", body = Accepted),
        (status = 400, description = "Not JSON, or a field missing or invalid (named)", body = ErrorBody),
        (status = 401, description = "The signature is missing, wrong or stale", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = ErrorBody),
        (status = 413, description = "The body is over the source's max_body", body = ErrorBody),
        (status = 503, description = "Not stored: the broker did not take it, or the pipeline is overloaded; send again after Retry-After",
            body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ),
    security(("signature" = []), ("standard_webhooks" = []), ("frappe_signature" = [])),
)]
async fn handle(
    State(source): State<Arc<ErpWebhookSource>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let span = tracing::info_span!("component", component_kind = "source",
        component_id = %source.id, component_type = TYPE);
    async move {
        metrics::counter!(m::RECEIVED_EVENTS, m::COMPONENT_ID => source.id.clone(),
            m::COMPONENT_TYPE => TYPE)
        .increment(1);
        match source.accept(&headers, body).await {
            Ok(accepted) => {
                metrics::counter!(m::SENT_EVENTS, m::COMPONENT_ID => source.id.clone(),
                    m::COMPONENT_TYPE => TYPE)
                .increment(1);
                (StatusCode::ACCEPTED, axum::Json(accepted)).into_response()
            }
            Err(refusal) => {
                metrics::counter!(m::ERRORS, m::COMPONENT_ID => source.id.clone(),
                    m::COMPONENT_TYPE => TYPE, m::ERROR_TYPE => refusal.kind(),
                    m::STAGE => "receive")
                .increment(1);
                refusal.into_response()
            }
        }
    }
    .instrument(span)
    .await
}

/// Why a webhook was not accepted, and the reply that says so.
#[derive(Debug)]
enum Refusal {
    Body(http::BodyError),
    Unauthorized(String),
    Invalid(payload::FieldError),
    Broker(PublishError),
}

impl Refusal {
    fn kind(&self) -> &'static str {
        match self {
            Refusal::Body(e) => e.kind(),
            Refusal::Unauthorized(_) => "unauthorized",
            Refusal::Invalid(_) => "invalid_payload",
            Refusal::Broker(_) => "broker_unavailable",
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Body(e) => e.into_response(),
            Refusal::Unauthorized(reason) => http::unauthorized(&reason, None),
            Refusal::Invalid(e) => http::invalid(StatusCode::BAD_REQUEST, &e),
            Refusal::Broker(e) => {
                tracing::warn!(error = %e, "webhook not stored");
                http::retry_later(&e.to_string(), RETRY_AFTER_SECS)
            }
        }
    }
}

/// The key that is equal for every delivery of the same ERP change.
fn idempotency_key(source: &str, headers: &HeaderMap, body: &[u8]) -> String {
    let header_key = [signing::WEBHOOK_ID, "idempotency-key"]
        .iter()
        .find_map(|name| headers.get(*name).and_then(|v| v.to_str().ok()))
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= 200);
    match header_key {
        Some(key) => format!("{source}:{key}"),
        None => format!("{source}:sha256:{}", hex::encode(Sha256::digest(body))),
    }
}

/// A bounded first-in-first-out map of recent acknowledgements.
#[derive(Default)]
struct RecentAcks {
    by_key: HashMap<String, Accepted>,
    order: VecDeque<String>,
}

impl RecentAcks {
    fn get(&self, key: &str) -> Option<Accepted> {
        self.by_key.get(key).cloned()
    }

    fn insert(&mut self, key: String, accepted: Accepted) {
        if self.by_key.insert(key.clone(), accepted).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > RECENT_ACKS {
            if let Some(old) = self.order.pop_front() {
                self.by_key.remove(&old);
            }
        }
    }
}

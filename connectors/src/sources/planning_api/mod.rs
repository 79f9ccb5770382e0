//! `planning_api`: the planning integration endpoints (Epicor guide §2–§4, blueprint §3).
//!
//! - `POST /api/v1/integrations/erp/{products,inventory,demand-actuals}/sync` with the
//!   `{meta, items}` envelope. Bearer tokens carry a role; only `admin` and
//!   `sop_coordinator` may call (`403` otherwise, `401` without a known token). Each item is
//!   validated on its own (unknown skus of inventory and demand included) and answered
//!   `accepted` or `rejected` with every field error. `dry_run` validates and publishes
//!   nothing. Accepted items become events on the topics (`catalog.update`,
//!   `inventory.change`, `demand.actual`) — the `planning_pg` sink, not the API, writes the
//!   tables — and the answer comes after the broker acknowledged them. A request with an
//!   `idempotency_key` seen before gets the stored first answer and publishes nothing (the
//!   key is taken under a lock for the request's duration, so two concurrent repeats do not
//!   both publish; a dry run does not take the key).
//! - `POST /api/v1/integrations/erp/publish/{demand-plan,supply-plan}/{plan_id}`: see
//!   [`publish`].

mod config;
mod history;
pub mod payload;
pub mod publish;
mod routes;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use erpstream_schemas::{
    CatalogUpdate, DemandActual, Event, EventKind, InventoryChange, Traceparent, Variant,
    now_millis,
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use subtle::ConstantTimeEq;
use tokio::sync::OnceCell;

pub use config::{PlanningApiConfig, PublishConfig, TokenConfig};
use payload::{Endpoint, Item, ItemResult, ItemStatus, SyncResponse, SyncStatus, SyncSummary};

use crate::component::{Component, Context, Port, Route, Running};
use crate::kafka::{Ack, PendingAck, PublishError, Publisher, RawRecord, TRACEPARENT_HEADER};
use crate::metrics as m;
use crate::planning;
use crate::postgres::{PgError, PgTarget};
use crate::sources::http::{ErrorBody, invalid, read_limited, retry_later, trace_of};
use crate::validation::{Checks, Problem};

/// Component type name in the topology.
pub const TYPE: &str = "planning_api";
/// Roles allowed to call the planning endpoints.
pub const ROLES: [&str; 2] = ["admin", "sop_coordinator"];

/// Why the API could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PlanningApiError {
    /// A token or the ERP token could not be read.
    #[error(transparent)]
    Secret(#[from] crate::SecretError),
    /// The HTTP client could not be built.
    #[error("http client: {0}")]
    Http(#[from] reqwest::Error),
    /// `publish.ca_file` cannot be used.
    #[error("publish.ca_file: {0}")]
    CaFile(#[from] crate::tls::TlsFileError),
    /// The planning database URL cannot be used.
    #[error("database: {0}")]
    Database(#[from] PgError),
}

/// Connections to the planning database held at most (one per concurrent request).
const POOL_SIZE: usize = 8;

/// Who called.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Token name (or role).
    pub name: String,
    /// Role.
    pub role: String,
}

/// Broker-side topics the items go to.
#[derive(Debug, Clone)]
pub struct Topics {
    /// Products.
    pub products: String,
    /// Inventory.
    pub inventory: String,
    /// Demand actuals.
    pub demand: String,
}

impl Component for PlanningApiConfig {
    fn validate(&self, at: &str) -> Vec<Problem> {
        let mut checks = Checks::new(at);
        checks
            .postgres_url("database", &self.database)
            .listed("tokens", &self.tokens, "token")
            .positive("max_items", self.max_items > 0)
            .http_url("publish.url", &self.publish.url)
            .ca_file(
                "publish.ca_file",
                &self.publish.url,
                self.publish.ca_file.as_deref(),
            )
            .extend(self.publish.retry.validate(&format!("{at}.publish.retry")));
        for (i, token) in self.tokens.iter().enumerate() {
            checks.rule(
                !token.role.trim().is_empty(),
                &format!("tokens[{i}].role"),
                "must name a role (admin, sop_coordinator, ...)",
            );
        }
        checks.done()
    }

    fn outputs(&self) -> Vec<Port> {
        vec![
            Port::new(
                "products_topic",
                &self.products_topic,
                &[EventKind::CatalogUpdate],
            ),
            Port::new(
                "inventory_topic",
                &self.inventory_topic,
                &[EventKind::InventoryChange],
            ),
            Port::new(
                "demand_topic",
                &self.demand_topic,
                &[EventKind::DemandActual],
            ),
        ]
    }

    fn routes(&self) -> Vec<Route> {
        routes::PATHS
            .map(|path| Route {
                field: None,
                path: path.into(),
            })
            .into()
    }

    async fn build(&self, context: Context) -> Result<Running, crate::Error> {
        let topics = Topics {
            products: context.topic(&self.products_topic),
            inventory: context.topic(&self.inventory_topic),
            demand: context.topic(&self.demand_topic),
        };
        let api = Arc::new(PlanningApi::build(
            &context.id,
            self.clone(),
            topics,
            context.publisher.clone(),
        )?);
        self.database
            .parse::<PgTarget>()?
            .check("planning database")
            .await?;
        let probe = api.clone();
        Ok(Running::default()
            .routes(api.clone().router(&context.admission, &context.id))
            .api(routes::api())
            .history(Arc::new(history::PlanningHistory(api.clone())))
            .probe(move || {
                let api = probe.clone();
                async move { api.store_reachable().await }
            }))
    }
}

/// An accepted item's event id and where the broker stored it.
type Published = (String, Ack);

/// The running API.
pub struct PlanningApi {
    id: String,
    config: PlanningApiConfig,
    tokens: Vec<(SecretString, Caller)>,
    topics: Topics,
    publisher: Publisher,
    db: deadpool_postgres::Pool,
    migrated: OnceCell<()>,
    erp: publish::ErpClient,
}

impl PlanningApi {
    /// Reads the tokens and builds the ERP client (no I/O).
    pub fn build(
        id: &str,
        config: PlanningApiConfig,
        topics: Topics,
        publisher: Publisher,
    ) -> Result<Self, PlanningApiError> {
        let tokens = config
            .tokens
            .iter()
            .map(|t| {
                Ok((
                    t.token.resolve()?,
                    Caller {
                        name: t.name.clone().unwrap_or_else(|| t.role.clone()),
                        role: t.role.clone(),
                    },
                ))
            })
            .collect::<Result<Vec<_>, crate::SecretError>>()?;
        let erp = publish::ErpClient::new(&config.publish)?;
        let db = config.database.parse::<PgTarget>()?.pool(POOL_SIZE)?;
        Ok(Self {
            id: id.to_string(),
            config,
            tokens,
            topics,
            publisher,
            db,
            migrated: OnceCell::new(),
            erp,
        })
    }

    /// Whether the planning database answers (for `/readyz`).
    pub async fn store_reachable(&self) -> bool {
        self.database().await.is_ok()
    }

    /// The caller, or why not (`401`/`403`).
    fn caller(&self, headers: &HeaderMap) -> Result<Caller, Refusal> {
        let presented = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or(Refusal::Unauthorized(
                "missing credentials: send Authorization: Bearer <token>",
            ))?;
        let mut found = None;
        for (token, caller) in &self.tokens {
            if bool::from(token.expose_secret().as_bytes().ct_eq(presented.as_bytes())) {
                found = Some(caller.clone());
            }
        }
        let caller = found.ok_or(Refusal::Unauthorized("invalid token"))?;
        if !ROLES.contains(&caller.role.as_str()) {
            return Err(Refusal::Forbidden(caller.role));
        }
        Ok(caller)
    }

    /// A connection of the pool to the planning database (migrated on first use).
    async fn database(&self) -> Result<deadpool_postgres::Object, PgError> {
        let mut client = self.db.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => PgError::Postgres(e),
            other => PgError::Pool(other.to_string()),
        })?;
        self.migrated
            .get_or_try_init(|| async { planning::migrate(&mut client).await.map(drop) })
            .await?;
        Ok(client)
    }

    async fn sync(&self, endpoint: Endpoint, headers: &HeaderMap, body: Body) -> Response {
        metrics::counter!(m::RECEIVED_EVENTS, m::COMPONENT_ID => self.id.clone(),
            m::COMPONENT_TYPE => TYPE)
        .increment(1);
        let caller = match self.caller(headers) {
            Ok(caller) => caller,
            Err(refusal) => return refusal.into_response(),
        };
        let limit = self.config.max_body.as_u64() as usize;
        let bytes = match read_limited(headers, body, limit).await {
            Ok(bytes) => bytes,
            Err(refused) => return refused.into_response(),
        };
        let envelope = match payload::envelope(&bytes) {
            Ok(envelope) => envelope,
            Err(error) => return invalid(StatusCode::BAD_REQUEST, &error),
        };
        if envelope.items.len() > self.config.max_items {
            return invalid(
                StatusCode::PAYLOAD_TOO_LARGE,
                &crate::sources::fields::FieldError::new(
                    "items",
                    format!("at most {} items per request", self.config.max_items),
                ),
            );
        }
        match self
            .sync_items(endpoint, &caller, envelope, trace_of(headers))
            .await
        {
            Ok(response) => response,
            Err(SyncError::Database(err)) => {
                tracing::warn!(error = %err, "planning database unavailable");
                retry_later("planning database unavailable", 5)
            }
            Err(SyncError::Publish(err)) => {
                tracing::warn!(error = %err, "sync items not stored on the broker");
                retry_later("the broker did not take the items", 5)
            }
        }
    }

    async fn sync_items(
        &self,
        endpoint: Endpoint,
        caller: &Caller,
        envelope: payload::Envelope,
        trace: Traceparent,
    ) -> Result<Response, SyncError> {
        let meta = envelope.meta;
        let mut db = self.database().await?;
        // The key is held for the whole request: a concurrent repeat waits, then replays.
        let tx = db.transaction().await?;
        if let (Some(key), false) = (&meta.idempotency_key, meta.dry_run) {
            tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[key])
                .await?;
            if let Some(row) = tx
                .query_opt(
                    "SELECT endpoint, response FROM planning.sync_requests WHERE idempotency_key = $1",
                    &[key],
                )
                .await?
            {
                let (stored_endpoint, response): (String, Value) = (row.get(0), row.get(1));
                if stored_endpoint != endpoint.name() {
                    return Ok(ErrorBody::new("idempotency key reused")
                        .field("meta.idempotency_key")
                        .reason(format!("already used for the {stored_endpoint} sync"))
                        .respond(StatusCode::CONFLICT));
                }
                metrics::counter!(m::DROPPED_EVENTS, m::COMPONENT_ID => self.id.clone(),
                    m::COMPONENT_TYPE => TYPE, m::REASON => "duplicate")
                .increment(1);
                return Ok((
                    StatusCode::OK,
                    [("idempotent-replayed", "true")],
                    axum::Json(response),
                )
                    .into_response());
            }
        }
        let mut results = Vec::with_capacity(envelope.items.len());
        let mut valid: Vec<(usize, Item)> = Vec::new();
        for (index, value) in envelope.items.iter().enumerate() {
            match payload::item(endpoint, index, value) {
                Ok(item) => valid.push((index, item)),
                Err(errors) => results.push((
                    index,
                    // The answer is stored: a sku Postgres cannot hold is left out.
                    value
                        .get("sku")
                        .and_then(Value::as_str)
                        .filter(|sku| !sku.contains('\0'))
                        .map(str::to_string),
                    errors,
                )),
            }
        }
        if endpoint != Endpoint::Products {
            let skus: Vec<String> = valid.iter().map(|(_, i)| i.sku().to_string()).collect();
            // A product this API accepted is known, even before the sink has written it (the
            // sink holds the item's row until the product row is there).
            let known: std::collections::HashSet<String> = tx
                .query(
                    "SELECT sku FROM planning.products WHERE sku = ANY($1)
                     UNION SELECT sku FROM planning.accepted_products WHERE sku = ANY($1)",
                    &[&skus],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            valid.retain(|(index, item)| {
                if known.contains(item.sku()) {
                    return true;
                }
                results.push((
                    *index,
                    Some(item.sku().to_string()),
                    vec![crate::sources::fields::FieldError::new(
                        format!("items[{index}].sku"),
                        format!(
                            "unknown sku {}: sync it as a product first, then send this item \
                             again under a new idempotency_key",
                            item.sku()
                        ),
                    )],
                ));
                false
            });
        }
        let run = meta
            .idempotency_key
            .clone()
            .or_else(|| meta.batch_id.clone())
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        // (index, sku, the event id and where it was published; none in a dry run)
        let mut accepted: Vec<(usize, String, Option<Published>)> = Vec::new();
        if !meta.dry_run {
            let now = now_millis();
            let mut pending: Vec<PendingAck> = Vec::new();
            let mut events = Vec::new();
            for (index, item) in &valid {
                let key = format!("sync:{}:{run}:{index}", endpoint.name());
                let record = self
                    .record(item, &key, &meta.source_system, now, &trace)
                    .await?;
                events.push((*index, item.sku().to_string(), record.0));
                pending.push(self.publisher.enqueue(record.1).await?);
            }
            let acks = futures::future::try_join_all(pending).await?;
            accepted.extend(
                events
                    .into_iter()
                    .zip(acks)
                    .map(|((index, sku, event_id), ack)| (index, sku, Some((event_id, ack)))),
            );
        } else {
            accepted.extend(
                valid
                    .iter()
                    .map(|(index, item)| (*index, item.sku().to_string(), None)),
            );
        }
        let accepted_skus: Vec<String> = if meta.dry_run {
            Vec::new()
        } else {
            accepted.iter().map(|(_, sku, _)| sku.clone()).collect()
        };
        let mut results: Vec<ItemResult> = accepted
            .into_iter()
            .map(|(index, sku, published)| {
                let (event_id, record) = published.unzip();
                ItemResult {
                    index,
                    sku: Some(sku),
                    status: ItemStatus::Accepted,
                    event_id,
                    topic: record.as_ref().map(|ack| ack.topic.clone()),
                    partition: record.as_ref().map(|ack| ack.partition),
                    offset: record.as_ref().map(|ack| ack.offset),
                    errors: None,
                }
            })
            .chain(results.into_iter().map(|(index, sku, errors)| ItemResult {
                index,
                sku,
                status: ItemStatus::Rejected,
                event_id: None,
                topic: None,
                partition: None,
                offset: None,
                errors: Some(errors),
            }))
            .collect();
        results.sort_by_key(|r| r.index);
        let total = results.len();
        let rejected = results
            .iter()
            .filter(|r| r.status == ItemStatus::Rejected)
            .count();
        let status = match (meta.dry_run, rejected) {
            (true, _) => SyncStatus::Validated,
            (false, 0) => SyncStatus::Accepted,
            (false, r) if r == total => SyncStatus::Rejected,
            (false, _) => SyncStatus::PartiallyAccepted,
        };
        let answer = SyncResponse {
            status,
            endpoint: endpoint.name().to_string(),
            source_system: meta.source_system.clone(),
            batch_id: meta.batch_id.clone(),
            idempotency_key: meta.idempotency_key.clone(),
            dry_run: meta.dry_run,
            summary: SyncSummary {
                received: total,
                accepted: total - rejected,
                rejected,
            },
            results,
        };
        let response = serde_json::to_value(&answer).unwrap_or(Value::Null);
        if endpoint == Endpoint::Products && !accepted_skus.is_empty() {
            tx.execute(
                "INSERT INTO planning.accepted_products (sku) SELECT unnest($1::text[])
                 ON CONFLICT (sku) DO NOTHING",
                &[&accepted_skus],
            )
            .await?;
        }
        if let (Some(key), false) = (&meta.idempotency_key, meta.dry_run) {
            tx.execute(
                "INSERT INTO planning.sync_requests
                     (idempotency_key, endpoint, batch_id, source_system, actor, response)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    key,
                    &endpoint.name(),
                    &meta.batch_id,
                    &meta.source_system,
                    &caller.name,
                    &response,
                ],
            )
            .await?;
        }
        tx.commit().await?;
        metrics::counter!(m::SENT_EVENTS, m::COMPONENT_ID => self.id.clone(),
            m::COMPONENT_TYPE => TYPE)
        .increment(if meta.dry_run {
            0
        } else {
            (total - rejected) as u64
        });
        tracing::info!(endpoint = endpoint.name(), caller = %caller.name, ?status, total, rejected,
            dry_run = meta.dry_run, "sync request");
        Ok((StatusCode::OK, axum::Json(response)).into_response())
    }

    /// The event for one item: (event id, record).
    async fn record(
        &self,
        item: &Item,
        idempotency_key: &str,
        source_system: &str,
        now: i64,
        trace: &Traceparent,
    ) -> Result<(String, RawRecord), PublishError> {
        let event_id = uuid::Uuid::now_v7().to_string();
        let codec = self.publisher.codec();
        let (topic, key, payload) = match item {
            Item::Product(p) => {
                let event = CatalogUpdate {
                    event_id: event_id.clone(),
                    idempotency_key: idempotency_key.to_string(),
                    source_system: source_system.to_string(),
                    source: self.id.clone(),
                    occurred_at: now,
                    ingested_at: now,
                    group_id: p.sku.clone(),
                    group_name: p.name.clone(),
                    description: None,
                    category_path: p.category_name.iter().cloned().collect(),
                    tax_code: None,
                    is_active: true,
                    product_family: p.product_family.clone(),
                    lead_time_days: p.lead_time_days,
                    variants: vec![Variant::of_sku(&p.sku)],
                };
                let payload = codec.encode(&self.topics.products, &event).await?;
                (&self.topics.products, event.key().to_string(), payload)
            }
            Item::Inventory(i) => {
                let event = InventoryChange {
                    event_id: event_id.clone(),
                    idempotency_key: idempotency_key.to_string(),
                    source_system: source_system.to_string(),
                    source: self.id.clone(),
                    occurred_at: now,
                    ingested_at: now,
                    sku: i.sku.clone(),
                    location_code: i.location.clone(),
                    new_quantity: Some(i.on_hand_qty),
                    allocated_qty: Some(i.allocated_qty),
                    in_transit_qty: Some(i.in_transit_qty),
                    quantity_change: None,
                    change_reason: Some("PLANNING_SYNC".into()),
                    reference_id: None,
                };
                let payload = codec.encode(&self.topics.inventory, &event).await?;
                (&self.topics.inventory, event.key().to_string(), payload)
            }
            Item::Demand(d) => {
                let event = DemandActual {
                    event_id: event_id.clone(),
                    idempotency_key: idempotency_key.to_string(),
                    source_system: source_system.to_string(),
                    source: self.id.clone(),
                    occurred_at: now,
                    ingested_at: now,
                    sku: d.sku.clone(),
                    period: d.period.clone(),
                    actual_qty: d.actual_qty,
                    region: d.region.clone(),
                    channel: d.channel.clone(),
                };
                let payload = codec.encode(&self.topics.demand, &event).await?;
                (&self.topics.demand, event.key().to_string(), payload)
            }
        };
        Ok((
            event_id,
            RawRecord {
                topic: topic.clone(),
                key: Some(key.into_bytes()),
                payload: Some(payload),
                headers: vec![(
                    TRACEPARENT_HEADER.to_string(),
                    trace.child().to_string().into_bytes(),
                )],
                partition: None,
            },
        ))
    }
}

/// A caller refused.
#[derive(Debug)]
enum Refusal {
    /// No or an unknown token.
    Unauthorized(&'static str),
    /// A known token whose role may not call.
    Forbidden(String),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Unauthorized(reason) => {
                crate::sources::http::unauthorized(reason, Some("Bearer"))
            }
            Refusal::Forbidden(role) => ErrorBody::new("forbidden")
                .reason(format!(
                    "role {role} may not call the planning integration; it needs admin or \
                     sop_coordinator"
                ))
                .respond(StatusCode::FORBIDDEN),
        }
    }
}

/// Why a sync request could not be answered (the caller retries).
#[derive(Debug, thiserror::Error)]
enum SyncError {
    #[error("planning database: {0}")]
    Database(#[from] PgError),
    #[error(transparent)]
    Publish(#[from] PublishError),
}

impl From<tokio_postgres::Error> for SyncError {
    fn from(err: tokio_postgres::Error) -> Self {
        SyncError::Database(PgError::Postgres(err))
    }
}

impl From<erpstream_schemas::CodecError> for SyncError {
    fn from(err: erpstream_schemas::CodecError) -> Self {
        SyncError::Publish(PublishError::Codec(err))
    }
}

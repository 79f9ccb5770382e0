//! The planning integration's routes and their OpenAPI document: one operation per sync
//! endpoint and per plan kind, each with the body it takes and every answer it gives.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::post;
use utoipa::OpenApi;

use super::PlanningApi;
use super::payload::{DemandActualsSync, Endpoint, InventorySync, ProductsSync, SyncResponse};
use super::publish::{PlanKind, PublishResponse};
use crate::admission::Admission;
use crate::sources::http::{ErrorBody, SecuritySchemes};

const PRODUCTS: &str = "/api/v1/integrations/erp/products/sync";
const INVENTORY: &str = "/api/v1/integrations/erp/inventory/sync";
const DEMAND_ACTUALS: &str = "/api/v1/integrations/erp/demand-actuals/sync";
const DEMAND_PLAN: &str = "/api/v1/integrations/erp/publish/demand-plan/{plan_id}";
const SUPPLY_PLAN: &str = "/api/v1/integrations/erp/publish/supply-plan/{plan_id}";

/// Every path the planning integration serves.
pub const PATHS: [&str; 5] = [
    PRODUCTS,
    INVENTORY,
    DEMAND_ACTUALS,
    DEMAND_PLAN,
    SUPPLY_PLAN,
];

#[derive(OpenApi)]
#[openapi(
    paths(
        sync_products,
        sync_inventory,
        sync_demand_actuals,
        publish_demand_plan,
        publish_supply_plan
    ),
    components(schemas(SyncResponse, PublishResponse, ErrorBody)),
    modifiers(&SecuritySchemes)
)]
struct Api;

/// The answers of a sync endpoint.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // never built: the handlers answer with these statuses and bodies
enum SyncAnswer {
    /// Every item accepted or rejected (with each field's problem); the broker holds the
    /// accepted ones.
    #[response(status = 200,
        headers(("idempotent-replayed" = String, description = "true on a replay of the first answer")))]
    Answered(SyncResponse),
    /// Not JSON, or the envelope is malformed (the field named).
    #[response(status = 400)]
    Malformed(ErrorBody),
    /// No or an unknown bearer token.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// The token's role is neither admin nor sop_coordinator.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// The body did not arrive in time.
    #[response(status = 408)]
    Incomplete(ErrorBody),
    /// The idempotency_key was used for another endpoint.
    #[response(status = 409)]
    KeyReused(ErrorBody),
    /// Over max_body or max_items.
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// Nothing stored (the planning database or the broker is away, or the pipeline is
    /// overloaded); send again after Retry-After.
    #[response(status = 503, headers(("Retry-After" = u64, description = "Seconds to wait")))]
    RetryLater(ErrorBody),
}

/// The answers of a publish endpoint; every outcome but 400 to 403 and 503 is audited.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // never built: the handler answers with these statuses and bodies
enum PublishAnswer {
    /// Published now (accepted) or before (already_published).
    #[response(status = 200)]
    Published(PublishResponse),
    /// plan_id is not a number.
    #[response(status = 400)]
    Malformed(ErrorBody),
    /// No or an unknown bearer token.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// The token's role is neither admin nor sop_coordinator.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// No such plan (rejected).
    #[response(status = 404)]
    NoPlan(PublishResponse),
    /// Rejected: not approved, another kind of plan, or every line inside the frozen horizon.
    #[response(status = 409)]
    Rejected(PublishResponse),
    /// The ERP refused the plan.
    #[response(status = 422)]
    Refused(PublishResponse),
    /// The ERP could not be reached (failed).
    #[response(status = 502)]
    Failed(PublishResponse),
    /// The planning database is away; send again after Retry-After.
    #[response(status = 503, headers(("Retry-After" = u64, description = "Seconds to wait")))]
    RetryLater(ErrorBody),
}

/// The OpenAPI document of the planning integration.
pub fn api() -> utoipa::openapi::OpenApi {
    Api::openapi()
}

impl PlanningApi {
    /// The routes; the sync routes (data in) pass `admission`, component `id`'s gate.
    pub fn router(self: Arc<Self>, admission: &Admission, id: &str) -> Router {
        let sync = Router::new()
            .route(PRODUCTS, post(sync_products))
            .route(INVENTORY, post(sync_inventory))
            .route(DEMAND_ACTUALS, post(sync_demand_actuals));
        admission
            .guard(id, sync)
            .route(DEMAND_PLAN, post(publish_demand_plan))
            .route(SUPPLY_PLAN, post(publish_supply_plan))
            .with_state(self)
    }
}

/// Syncs the ERP's product master (Epicor guide §3–§4): each item is accepted or rejected on
/// its own; accepted ones become `catalog.update` events. A repeated `idempotency_key` gets
/// the first answer and publishes nothing.
#[utoipa::path(
    post,
    path = "/api/v1/integrations/erp/products/sync",
    tag = "planning",
    request_body(content = ProductsSync, content_type = "application/json"),
    responses(SyncAnswer),
    security(("planning_token" = [])),
)]
async fn sync_products(
    State(api): State<Arc<PlanningApi>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    api.sync(Endpoint::Products, &headers, body).await
}

/// Syncs on-hand stock per sku and location (Epicor guide §4.2); accepted items become
/// `inventory.change` events. An item whose sku is not a known product is rejected.
#[utoipa::path(
    post,
    path = "/api/v1/integrations/erp/inventory/sync",
    tag = "planning",
    request_body(content = InventorySync, content_type = "application/json"),
    responses(SyncAnswer),
    security(("planning_token" = [])),
)]
async fn sync_inventory(
    State(api): State<Arc<PlanningApi>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    api.sync(Endpoint::Inventory, &headers, body).await
}

/// Syncs monthly demand actuals (Epicor guide §4.3); accepted items become `demand.actual`
/// events. An item whose sku is not a known product is rejected.
#[utoipa::path(
    post,
    path = "/api/v1/integrations/erp/demand-actuals/sync",
    tag = "planning",
    request_body(content = DemandActualsSync, content_type = "application/json"),
    responses(SyncAnswer),
    security(("planning_token" = [])),
)]
async fn sync_demand_actuals(
    State(api): State<Arc<PlanningApi>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    api.sync(Endpoint::DemandActuals, &headers, body).await
}

/// Publishes an approved demand plan to the ERP (blueprint §3): lines inside the frozen
/// horizon are held back; a plan published before answers `already_published`. Every
/// attempt is audited.
#[utoipa::path(
    post,
    path = "/api/v1/integrations/erp/publish/demand-plan/{plan_id}",
    tag = "planning",
    params(("plan_id" = i64, Path, description = "The plan's id in planning.plans",
        minimum = -9007199254740991_i64, maximum = 9007199254740991_i64)),
    responses(PublishAnswer),
    security(("planning_token" = [])),
)]
async fn publish_demand_plan(
    State(api): State<Arc<PlanningApi>>,
    Path(plan_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    api.publish(PlanKind::Demand, &plan_id, &headers).await
}

/// Publishes an approved supply plan to the ERP, as the demand plan's endpoint does.
#[utoipa::path(
    post,
    path = "/api/v1/integrations/erp/publish/supply-plan/{plan_id}",
    tag = "planning",
    params(("plan_id" = i64, Path, description = "The plan's id in planning.plans",
        minimum = -9007199254740991_i64, maximum = 9007199254740991_i64)),
    responses(PublishAnswer),
    security(("planning_token" = [])),
)]
async fn publish_supply_plan(
    State(api): State<Arc<PlanningApi>>,
    Path(plan_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    api.publish(PlanKind::Supply, &plan_id, &headers).await
}

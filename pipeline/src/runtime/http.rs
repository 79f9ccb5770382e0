//! Operations endpoints: `/metrics` (Prometheus), `/healthz` (the process answers),
//! `/readyz` (the broker, the registry and every database a component uses are reachable,
//! and every component says it can work: each consumer holds its group's assignment and the
//! state for it is restored, so a pipeline that answers ready processes what it is sent
//! without waiting for a rebalance; `not_ready` names the components that cannot, and
//! `reasons` says why; `standby` names the components another replica runs, with the
//! holder of their lease — they do not make the replica unready), `/openapi.json` (the
//! OpenAPI 3.1 document of every route the listener serves, built from the handlers' own
//! annotations and types).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use erpstream_connectors::component::{Probe, Readiness};
use erpstream_connectors::kafka::Publisher;
use erpstream_schemas::Codec;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use super::listener;

#[derive(Clone)]
struct Ops {
    metrics: PrometheusHandle,
    publisher: Publisher,
    codec: Codec,
    probes: Vec<Probe>,
    components: Arc<Vec<(String, Readiness)>>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "erpstream",
        description = "ERP webhooks, the storefront API, the planning integration and the \
                       operations endpoints of one erpstream pipeline. Every refusal is an \
                       ErrorBody naming the field and the reason. A JSON body holding the NUL \
                       character (U+0000) in any string or key is refused with 400: no \
                       database column downstream could hold it."
    ),
    paths(metrics_text, health, ready, openapi_json)
)]
struct Api;

/// The OpenAPI document of the listener: the components' routes (`components`), the
/// operations routes and the refusals the listener itself gives.
pub fn document(components: Vec<utoipa::openapi::OpenApi>) -> utoipa::openapi::OpenApi {
    let mut doc = Api::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    for api in components {
        doc.merge(api);
    }
    listener::document_refusals(&mut doc);
    doc
}

/// The operations routes; `/openapi.json` serves `api`.
pub fn operations(
    metrics: PrometheusHandle,
    publisher: Publisher,
    codec: Codec,
    probes: Vec<Probe>,
    components: Vec<(String, Readiness)>,
    api: utoipa::openapi::OpenApi,
) -> Router {
    let ops = Ops {
        metrics,
        publisher,
        codec,
        probes,
        components: Arc::new(components),
    };
    let api = Arc::new(api);
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(health))
        .route("/readyz", get(ready))
        .with_state(ops)
        .route("/openapi.json", get(move || openapi_json(api.clone())))
}

/// The Prometheus metrics of this process.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition format",
        body = String, content_type = "text/plain; version=0.0.4")))]
async fn metrics_text(State(ops): State<Ops>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        ops.metrics.render(),
    )
}

/// `/healthz`: the process answers.
#[derive(Debug, Serialize, ToSchema)]
struct Health {
    /// Always `ok`.
    status: &'static str,
}

/// Whether the process answers (liveness).
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process answers", body = Health)))]
async fn health() -> axum::Json<Health> {
    axum::Json(Health { status: "ok" })
}

/// `/readyz`: what the pipeline can reach and which components can work.
#[derive(Debug, Serialize, ToSchema)]
struct Ready<'a> {
    /// `ready` or `not ready`.
    status: &'static str,
    /// `ok` or `unreachable`, per dependency.
    checks: Checks,
    /// The components that cannot work now.
    not_ready: Vec<&'a str>,
    /// Why, per component in `not_ready`.
    reasons: BTreeMap<&'a str, String>,
    /// Components another replica runs, with the holder of their lease.
    standby: BTreeMap<&'a str, String>,
}

/// The dependencies `/readyz` checks.
#[derive(Debug, Serialize, ToSchema)]
struct Checks {
    /// The broker.
    broker: &'static str,
    /// The schema registry.
    registry: &'static str,
    /// Every database a component uses.
    database: &'static str,
}

/// Whether the pipeline can work now (readiness): the broker, the registry and every
/// database answer, and every component holds its assignment with its state restored.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Ready),
        (status = 503, description = "Not ready: the checks and reasons say why", body = Ready),
    ))]
async fn ready(State(ops): State<Ops>) -> impl IntoResponse {
    let broker = ops.publisher.broker_reachable(Duration::from_secs(2)).await;
    let registry = ops.codec.reachable(Duration::from_secs(2)).await;
    let mut database = true;
    for probe in &ops.probes {
        database &= probe().await;
    }
    let reasons: BTreeMap<&str, String> = ops
        .components
        .iter()
        .filter_map(|(name, readiness)| Some((name.as_str(), readiness.status().err()?)))
        .collect();
    let not_ready: Vec<&str> = reasons.keys().copied().collect();
    let standby: BTreeMap<&str, String> = ops
        .components
        .iter()
        .filter_map(|(name, readiness)| Some((name.as_str(), readiness.standing_by()?)))
        .collect();
    let status = if broker && registry && database && not_ready.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = |ok: bool| if ok { "ok" } else { "unreachable" };
    let body = Ready {
        status: if status == StatusCode::OK {
            "ready"
        } else {
            "not ready"
        },
        checks: Checks {
            broker: word(broker),
            registry: word(registry),
            database: word(database),
        },
        not_ready,
        reasons,
        standby,
    };
    (status, axum::Json(body)).into_response()
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document of every route",
        body = Object)))]
async fn openapi_json(
    api: Arc<utoipa::openapi::OpenApi>,
) -> axum::Json<Arc<utoipa::openapi::OpenApi>> {
    axum::Json(api)
}

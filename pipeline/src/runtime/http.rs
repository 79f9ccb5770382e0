//! Operations endpoints: `/metrics` (Prometheus), `/healthz` (the process answers),
//! `/readyz` (the broker, the registry and every database a component uses are reachable,
//! and every component says it can work: each consumer holds its group's assignment and the
//! state for it is restored, so a pipeline that answers ready processes what it is sent
//! without waiting for a rebalance; `not_ready` names the components that cannot, and
//! `reasons` says why; `standby` names the components another replica runs, with the
//! holder of their lease — they do not make the replica unready).

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
use serde_json::json;

#[derive(Clone)]
struct Ops {
    metrics: PrometheusHandle,
    publisher: Publisher,
    codec: Codec,
    probes: Vec<Probe>,
    components: Arc<Vec<(String, Readiness)>>,
}

/// The operations routes.
pub fn operations(
    metrics: PrometheusHandle,
    publisher: Publisher,
    codec: Codec,
    probes: Vec<Probe>,
    components: Vec<(String, Readiness)>,
) -> Router {
    let ops = Ops {
        metrics,
        publisher,
        codec,
        probes,
        components: Arc::new(components),
    };
    Router::new()
        .route("/metrics", get(metrics_text))
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .route("/readyz", get(ready))
        .with_state(ops)
}

async fn metrics_text(State(ops): State<Ops>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        ops.metrics.render(),
    )
}

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
    (
        status,
        axum::Json(json!({
            "status": if status == StatusCode::OK { "ready" } else { "not ready" },
            "checks": {"broker": word(broker), "registry": word(registry),
                "database": word(database)},
            "not_ready": not_ready,
            "reasons": reasons,
            "standby": standby,
        })),
    )
}

//! The connector API: what the *Connectors* page shows and does, for the CLI and scripts.
//! `Authorization: Bearer <console token>`; `viewer` tokens read, `operator` tokens act.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use erpstream_connectors::component::{Control, Outcome, Standing};
use erpstream_connectors::sources::http::{ErrorBody, SecuritySchemes, unauthorized};
use futures::future::BoxFuture;
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use super::auth::Operator;
use super::{Console, Section};

/// The connector API's routes.
pub fn routes() -> Router<Arc<Console>> {
    Router::new()
        .route("/api/connectors/status", get(status))
        .route("/api/connectors/{id}/test", post(test))
        .route("/api/connectors/{id}/sync", post(sync))
}

/// The OpenAPI document of the connector API.
#[derive(OpenApi)]
#[openapi(
    paths(status, test, sync),
    modifiers(&SecuritySchemes)
)]
pub struct ConnectorApi;

/// Every source and sink and where it stands.
#[derive(Debug, Serialize, ToSchema)]
pub struct Connectors {
    /// In topology order: sources, then sinks.
    pub connectors: Vec<ConnectorStatus>,
}

/// One source or sink.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectorStatus {
    /// Its id in the topology.
    pub id: String,
    /// `source` or `sink`.
    pub section: &'static str,
    /// Its `type:`.
    #[serde(rename = "type")]
    pub type_name: String,
    /// Whether it can work now on this replica.
    pub ready: bool,
    /// Why not, when it cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The replica that runs it instead (components that run on one replica at a time).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub standby: Option<String>,
    /// Where it stands, in its own terms.
    pub standing: Standing,
    /// This replica's figures.
    pub figures: Rates,
    /// The label of its sync action (`POST /api/connectors/{id}/sync`), if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync: Option<&'static str>,
}

/// A component's figures on this replica.
#[derive(Debug, Serialize, ToSchema)]
pub struct Rates {
    /// Events taken in per second, lately.
    pub received_per_second: f64,
    /// Events published or delivered per second, lately.
    pub sent_per_second: f64,
    /// Failures since this process started.
    pub errors: f64,
    /// Records dead-lettered since this process started.
    pub dead_lettered: f64,
    /// Records its consumer group has not committed on this replica's partitions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumer_lag: Option<f64>,
}

/// Why the API refused a caller.
enum Refused {
    /// No token, or not a console token.
    Unauthorized(&'static str),
    /// A viewer token where an operator token is needed: its name.
    Viewer(String),
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::Unauthorized(reason) => unauthorized(reason, Some("Bearer")),
            Refused::Viewer(name) => ErrorBody::new("forbidden")
                .reason(format!(
                    "{name} is a viewer token; testing and syncing need an operator token"
                ))
                .respond(StatusCode::FORBIDDEN),
        }
    }
}

fn caller(console: &Console, headers: &HeaderMap) -> Result<Operator, Refused> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match console.auth.bearer(authorization) {
        Some(operator) => Ok(operator),
        None if authorization.is_none() => Err(Refused::Unauthorized(
            "missing credentials: send Authorization: Bearer <console token>",
        )),
        None => Err(Refused::Unauthorized("not a console token")),
    }
}

fn acting(console: &Console, headers: &HeaderMap) -> Result<Operator, Refused> {
    let operator = caller(console, headers)?;
    if operator.role.may_act() {
        Ok(operator)
    } else {
        Err(Refused::Viewer(operator.name))
    }
}

fn unknown(id: &str, why: &str) -> Response {
    ErrorBody::new("not found")
        .field("id")
        .reason(format!("{id} {why}"))
        .respond(StatusCode::NOT_FOUND)
}

/// The controls of source or sink `id`, or the 404 that says why there are none.
fn connector(console: &Console, id: &str) -> Result<Arc<dyn Control>, Box<Response>> {
    let node = console
        .node(id)
        .filter(|n| n.section != Section::Processor)
        .ok_or_else(|| Box::new(unknown(id, "is not a source or sink of this topology")))?;
    node.control
        .clone()
        .ok_or_else(|| Box::new(unknown(id, "has no controls")))
}

/// Every source and sink of the topology and where it stands on this replica.
#[utoipa::path(get, path = "/api/connectors/status", tag = "connectors",
    responses(
        (status = 200, description = "Every source and sink", body = Connectors),
        (status = 401, description = "No console token, or not one", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "Bearer"))),
    ),
    security(("console_token" = [])))]
async fn status(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    if let Err(refusal) = caller(&console, &headers) {
        return refusal.into_response();
    }
    let connectors = console
        .nodes
        .iter()
        .filter(|n| n.section != Section::Processor)
        .map(|node| {
            let readiness = node.readiness.as_ref();
            let figures = console.live.of(&node.id);
            ConnectorStatus {
                id: node.id.clone(),
                section: node.section.name(),
                type_name: node.type_name.clone(),
                ready: readiness.is_none_or(|r| r.is_ready()),
                reason: readiness.and_then(|r| r.status().err()),
                standby: readiness.and_then(|r| r.standing_by()),
                standing: node
                    .control
                    .as_ref()
                    .map(|c| c.standing())
                    .unwrap_or_default(),
                figures: Rates {
                    received_per_second: figures.received_per_s,
                    sent_per_second: figures.sent_per_s,
                    errors: figures.errors,
                    dead_lettered: figures.dead_lettered,
                    consumer_lag: figures.consumer_lag,
                },
                sync: node.control.as_ref().and_then(|c| c.sync_action()),
            }
        })
        .collect();
    Json(Connectors { connectors }).into_response()
}

/// Checks what a source or sink connects to, the way it does itself, changing nothing
/// there. `ok: false` with the reason when the peer does not answer as it should.
#[utoipa::path(post, path = "/api/connectors/{id}/test", tag = "connectors",
    params(("id" = String, Path, description = "A source's or sink's id")),
    responses(
        (status = 200, description = "The test ran; what it found", body = Outcome),
        (status = 401, description = "No console token, or not one", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "Bearer"))),
        (status = 403, description = "A viewer token", body = ErrorBody),
        (status = 404, description = "No such source or sink, or it has no test", body = ErrorBody),
    ),
    security(("console_token" = [])))]
async fn test(
    State(console): State<Arc<Console>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    act(&console, &id, &headers, "connection tested", |control| {
        Some(control.test())
    })
    .await
}

/// Fetches now (a `rest_poll` poll) or takes a new snapshot (`pg_cdc`), instead of waiting.
#[utoipa::path(post, path = "/api/connectors/{id}/sync", tag = "connectors",
    params(("id" = String, Path, description = "A source's id")),
    responses(
        (status = 200, description = "The sync ran or was started; what happened", body = Outcome),
        (status = 401, description = "No console token, or not one", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "Bearer"))),
        (status = 403, description = "A viewer token", body = ErrorBody),
        (status = 404, description = "No such source or sink, or it has nothing to sync", body = ErrorBody),
    ),
    security(("console_token" = [])))]
async fn sync(
    State(console): State<Arc<Console>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    act(&console, &id, &headers, "sync triggered", |control| {
        control.sync()
    })
    .await
}

/// An operator's action on connector `id` through the API: `action` gives its future (none:
/// the connector has no such action, 404); the outcome is logged as `done` and answered.
async fn act(
    console: &Console,
    id: &str,
    headers: &HeaderMap,
    done: &'static str,
    action: impl FnOnce(&dyn Control) -> Option<BoxFuture<'static, Outcome>>,
) -> Response {
    let operator = match acting(console, headers) {
        Ok(operator) => operator,
        Err(refusal) => return refusal.into_response(),
    };
    let running = match connector(console, id) {
        Ok(control) => action(control.as_ref()),
        Err(refusal) => return *refusal,
    };
    let Some(running) = running else {
        return unknown(id, "has nothing to sync (only polled and CDC sources do)");
    };
    let outcome = running.await;
    tracing::info!(operator = %operator.name, component = %id, ok = outcome.ok, "{done} through the API");
    Json(outcome).into_response()
}

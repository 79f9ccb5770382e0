//! *Connectors*: a card per source and sink — type, target, state, last success, circuit,
//! position, live figures, its settings (redacted) — with "test connection" and, for
//! sources that fetch, "sync now".

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use erpstream_connectors::component::Outcome;
use maud::{Markup, html};

use super::{Console, Node, Refusal, Section, actor, layout, viewer};

/// `GET /console/connectors`.
pub async fn page(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let operator = match viewer(&console, &headers, "/console/connectors") {
        Ok(operator) => operator,
        Err(refusal) => return refusal.into_response(),
    };
    let connectors: Vec<&Node> = console
        .nodes
        .iter()
        .filter(|n| n.section != Section::Processor)
        .collect();
    let content = html! {
        @if connectors.is_empty() {
            p.empty { "This topology has no sources or sinks." }
        }
        div.cards {
            @for node in connectors {
                (card(&console, node, operator.role.may_act()))
            }
        }
    };
    layout::page("Connectors", "/console/connectors", &operator, content).into_response()
}

fn card(console: &Console, node: &Node, may_act: bool) -> Markup {
    let standing = node
        .control
        .as_ref()
        .map(|c| c.standing())
        .unwrap_or_default();
    let figures = console.live.of(&node.id);
    let state = node
        .readiness
        .as_ref()
        .map(|r| (r.standing_by(), r.status()));
    let sync = node.control.as_ref().and_then(|c| c.sync_action());
    html! {
        article #(format!("connector-{}", node.id)) data-component=(node.id) {
            header {
                strong { (node.id) } " · " code { (node.type_name) } " " small { (node.section.name()) }
            }
            dl {
                @if let Some(target) = &standing.target { dt { "Target" } dd { (target) } }
                dt { "State" }
                dd {
                    @match &state {
                        Some((Some(holder), _)) => span.status-idle { "standing by: " (holder) },
                        Some((None, Err(reason))) => span.status-bad { "not ready: " (reason) },
                        _ => span.status-ok { "ready" },
                    }
                }
                // Only components that keep it say; the others' activity is in the rates.
                @if let Some(success) = &standing.last_success { dt { "Last success" } dd { (success) } }
                @if let Some(error) = &standing.last_error { dt { "Last error" } dd.status-bad { (error) } }
                @if let Some(circuit) = &standing.circuit { dt { "Circuit" } dd { (circuit) } }
                @if let Some(position) = &standing.position { dt { "Position" } dd { code { (position) } } }
                dt { "Events /s" }
                dd { (format!("{:.1} in, {:.1} out", figures.received_per_s, figures.sent_per_s)) }
                @if let Some(lag) = figures.consumer_lag { dt { "Consumer lag" } dd { (lag) " records" } }
            }
            details {
                summary { "Settings" }
                pre { code { (node.settings) } }
            }
            @if may_act && node.control.is_some() {
                div role="group" {
                    button.secondary hx-post=(format!("/console/connectors/{}/test", node.id))
                        hx-target=(format!("#result-{}", node.id)) hx-disabled-elt="this" {
                        "Test connection"
                    }
                    @if let Some(action) = sync {
                        button hx-post=(format!("/console/connectors/{}/sync", node.id))
                            hx-target=(format!("#result-{}", node.id)) hx-disabled-elt="this" {
                            (action)
                        }
                    }
                }
            }
            output #(format!("result-{}", node.id)) aria-live="polite" {}
        }
    }
}

/// The result of a test or sync, as a fragment.
fn outcome(outcome: &Outcome) -> Markup {
    html! {
        @if outcome.ok {
            p.status-ok role="status" { "✓ " (outcome.detail) }
        } @else {
            p.status-bad role="alert" { "✗ " (outcome.detail) }
        }
    }
}

/// `POST /console/connectors/{id}/test`.
pub async fn test(
    State(console): State<Arc<Console>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let operator = match actor(&console, &headers, None, "test connections") {
        Ok(operator) => operator,
        Err(refusal) => return refusal.into_response(),
    };
    let Some(control) = console.node(&id).and_then(|n| n.control.clone()) else {
        return Refusal::NotFound(format!("{id} has no connection test")).into_response();
    };
    let result = control.test().await;
    tracing::info!(operator = %operator.name, component = %id, ok = result.ok, "connection tested from the console");
    outcome(&result).into_response()
}

/// `POST /console/connectors/{id}/sync`.
pub async fn sync(
    State(console): State<Arc<Console>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let operator = match actor(&console, &headers, None, "trigger syncs") {
        Ok(operator) => operator,
        Err(refusal) => return refusal.into_response(),
    };
    let Some(sync) = console
        .node(&id)
        .and_then(|n| n.control.as_ref())
        .and_then(|c| c.sync())
    else {
        return Refusal::NotFound(format!("{id} has nothing to sync")).into_response();
    };
    let result = sync.await;
    tracing::info!(operator = %operator.name, component = %id, ok = result.ok, "sync triggered from the console");
    outcome(&result).into_response()
}

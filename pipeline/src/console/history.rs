//! *Sync history*: what the sources that take requests have exchanged — storefront orders
//! and adjustments, planning sync requests and plan publications — newest first, filtered
//! by source and key, each linked to the records it published. A storefront order also
//! shows its write-back: the ERP has it (its hold says when), the hold is still waiting,
//! or its `sales.order` record was dead-lettered.

use std::collections::HashSet;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use erpstream_connectors::component::{Exchange, SnapshotService};
use maud::{Markup, html};
use serde::Deserialize;

use super::records::{self, problem};
use super::{Console, layout, viewer};
use crate::tools::dlq::{self, Filter};
use crate::tools::rfc3339;

/// Exchanges read per source.
const LIMIT: i64 = 200;

#[derive(Debug, Default, Deserialize)]
pub struct HistoryQuery {
    #[serde(default)]
    source: String,
    #[serde(default)]
    key: String,
}

/// `GET /console/history`.
pub async fn page(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Query(query): Query<HistoryQuery>,
) -> Response {
    let operator = match viewer(&console, &headers, "/console/history") {
        Ok(operator) => operator,
        Err(refusal) => return refusal.into_response(),
    };
    let sources: Vec<_> = console
        .nodes
        .iter()
        .filter_map(|n| Some((n.id.as_str(), n.history.as_ref()?)))
        .collect();
    let key = query.key.trim();
    let mut exchanges: Vec<(&str, Exchange)> = Vec::new();
    let mut problems = Vec::new();
    for (id, history) in &sources {
        if !query.source.is_empty() && query.source != *id {
            continue;
        }
        match history.exchanges(key, LIMIT).await {
            Ok(found) => exchanges.extend(found.into_iter().map(|e| (*id, e))),
            Err(reason) => problems.push(format!("{id}: {reason}")),
        }
    }
    exchanges.sort_by(|a, b| b.1.at.cmp(&a.1.at));
    let dead = dead_lettered(&console, &exchanges).await;
    let content = html! {
        form.filters method="get" action="/console/history" {
            div.grid {
                label {
                    "Source"
                    select name="source" {
                        option value="" selected[query.source.is_empty()] { "every source" }
                        @for (id, _) in &sources {
                            option value=(id) selected[query.source == *id] { (id) }
                        }
                    }
                }
                label { "Key contains" input type="search" name="key" value=(key) placeholder="an order id, an idempotency key, a plan id"; }
            }
            button.secondary type="submit" { "Filter" }
        }
        @for reason in &problems {
            (problem("Could not read the history", reason))
        }
        @if sources.is_empty() {
            p.empty { "No source of this topology takes requests (storefront_api and planning_api do)." }
        } @else if exchanges.is_empty() && problems.is_empty() {
            p.empty { "Nothing exchanged" @if !key.is_empty() { " with a key containing " code { (key) } } " yet." }
        } @else if !exchanges.is_empty() {
            div.overflow-auto {
                table #history .compact {
                    thead { tr {
                        th scope="col" { "When" } th scope="col" { "Source" } th scope="col" { "What" }
                        th scope="col" { "Key" } th scope="col" { "By" } th scope="col" { "Outcome" }
                        th scope="col" { "Records" } th scope="col" { "Write-back" }
                    } }
                    tbody {
                        @for (source, exchange) in &exchanges {
                            tr data-key=(exchange.key) {
                                td { (exchange.at) }
                                td { (source) }
                                td { (exchange.kind) }
                                td { code { (exchange.key) } }
                                td { (exchange.actor.as_deref().unwrap_or("—")) }
                                td class=(if exchange.ok { "status-ok" } else { "status-bad" }) { (exchange.outcome) }
                                td { (links(&exchange.records)) }
                                td.write-back { (write_back(console.stock.as_deref(), exchange, &dead)) }
                            }
                        }
                    }
                }
            }
        }
    };
    layout::page("Sync history", "/console/history", &operator, content).into_response()
}

fn links(records: &[String]) -> Markup {
    html! {
        @for (i, at) in records.iter().enumerate() {
            @if i > 0 { ", " }
            @match dlq::parse_id(at) {
                Ok((topic, partition, offset)) => (records::link(&topic, partition, offset)),
                Err(_) => code { (at) },
            }
        }
    }
}

/// The keys of the exchanges' document records that wait in their topics' dead letters.
async fn dead_lettered(console: &Console, exchanges: &[(&str, Exchange)]) -> HashSet<String> {
    let topics: HashSet<String> = exchanges
        .iter()
        .filter(|(_, e)| !e.holds.is_empty())
        .filter_map(|(_, e)| e.records.first())
        .filter_map(|at| dlq::parse_id(at).ok().map(|(topic, _, _)| topic))
        .collect();
    let mut keys = HashSet::new();
    for topic in topics {
        let filter = Filter {
            topic: Some(topic),
            ..Filter::default()
        };
        if let Ok(entries) = dlq::list(&console.tools, &filter).await {
            keys.extend(entries.into_iter().filter_map(|e| e.key));
        }
    }
    keys
}

/// Whether the ERP has a storefront document: its record dead-lettered, its holds written
/// back (when), waiting, or ended.
fn write_back(
    stock: Option<&dyn SnapshotService>,
    exchange: &Exchange,
    dead: &HashSet<String>,
) -> Markup {
    if exchange.holds.is_empty() {
        return html! { "—" };
    }
    if dead.contains(&exchange.key) {
        return html! {
            a.status-bad href=(format!("/console/dead-letters?key={}", super::urlencoding(&exchange.key))) {
                "dead-lettered"
            }
        };
    }
    let Some(stock) = stock else {
        return html! { "—" };
    };
    let holds: Vec<Option<serde_json::Value>> = exchange
        .holds
        .iter()
        .map(|(sku, location)| {
            stock
                .sku(sku)
                .map(|state| state["locations"][location]["holds"][&exchange.key].clone())
                .filter(|hold| !hold.is_null())
        })
        .collect();
    let written: Vec<i64> = holds
        .iter()
        .flatten()
        .filter_map(|h| h["written_back_at"].as_i64())
        .collect();
    let open = holds.iter().flatten().count();
    html! {
        @if open == 0 {
            span.status-idle { "hold ended (written back and settled, expired or cancelled)" }
        } @else if written.len() == open {
            span.status-ok { "written back " (rfc3339(written.iter().copied().max().unwrap_or_default())) }
        } @else {
            span.status-warn { "waiting for the ERP" }
        }
    }
}

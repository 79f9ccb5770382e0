//! *Stock*: one sku as the inventory processor holds it — on_hand, holds (their orders or
//! adjustments, when taken, when they expire, whether the ERP has them), available per
//! location — and the `inventory.change` event that set each on_hand.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::Value;

use super::{Console, layout, records, viewer};
use crate::tools::rfc3339;

#[derive(Deserialize)]
pub struct StockQuery {
    #[serde(default)]
    sku: String,
}

/// `GET /console/stock[?sku=...]`.
pub async fn page(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Query(StockQuery { sku }): Query<StockQuery>,
) -> Response {
    let sku = sku.trim().to_string();
    let path = format!("/console/stock?sku={}", super::urlencoding(&sku));
    let operator = match viewer(&console, &headers, &path) {
        Ok(operator) => operator,
        Err(refusal) => return refusal.into_response(),
    };
    let content = html! {
        form.lookup method="get" action="/console/stock" role="search" {
            label for="sku" { "Sku" }
            input #sku type="search" name="sku" value=(sku) required autofocus placeholder="e.g. SKU-1";
            button type="submit" { "Look up" }
        }
        @match (&console.stock, sku.is_empty()) {
            (None, _) => p.empty { "This topology keeps no inventory state (it has no inventory processor)." },
            (Some(_), true) => p.empty { "Enter a sku to see its figures, holds and the events that set them." },
            (Some(stock), false) => @match stock.sku(&sku) {
                None => p.empty #not-found {
                    "No sku " code { (sku) } " in the inventory state: no event has named it yet, "
                    "or its partition's state is still being read."
                },
                Some(state) => (figures(&console, &state)),
            },
        }
    };
    layout::page("Stock", "/console/stock", &operator, content).into_response()
}

fn figures(console: &Console, state: &Value) -> Markup {
    let partition = state["partition"].as_i64().unwrap_or_default() as i32;
    let changes = console.tools.kafka.topic("inventory.change");
    let text = |v: &Value| match v {
        Value::String(s) => s
            .parse::<rust_decimal::Decimal>()
            .map(|d| d.normalize().to_string())
            .unwrap_or_else(|_| s.clone()),
        Value::Null => "—".into(),
        other => other.to_string(),
    };
    let time = |v: &Value| {
        v.as_i64()
            .filter(|t| *t > 0)
            .map(rfc3339)
            .unwrap_or("—".into())
    };
    let empty = serde_json::Map::new();
    let locations = state["locations"].as_object().unwrap_or(&empty);
    let holds: Vec<(&String, &String, &Value)> = locations
        .iter()
        .flat_map(|(code, l)| {
            l["holds"]
                .as_object()
                .into_iter()
                .flatten()
                .map(move |(reference, hold)| (code, reference, hold))
        })
        .collect();
    html! {
        article #stock data-sku=(text(&state["sku"])) {
            header {
                strong { (text(&state["sku"])) } " · available to sell "
                strong #available { (text(&state["available"])) }
                " · version " (text(&state["version"]))
            }
            h2 { "Per location" }
            div.overflow-auto {
                table #locations .compact {
                    thead { tr {
                        th scope="col" { "Location" } th scope="col" { "On hand" }
                        th scope="col" { "Held" } th scope="col" { "Safety stock" }
                        th scope="col" { "Available" } th scope="col" { "Changed" }
                        th scope="col" { "On hand set by" }
                    } }
                    tbody {
                        @for (code, l) in locations {
                            tr data-location=(code) {
                                td { code { (code) } }
                                td.on-hand { (text(&l["on_hand"])) }
                                td.reserved { (text(&l["reserved"])) }
                                td { (text(&l["safety_stock"])) }
                                td.available { (text(&l["available"])) }
                                td { (time(&l["as_of"])) }
                                td {
                                    @match l["erp_offset"].as_i64().filter(|o| *o >= 0 && l["erp_time"].as_i64().unwrap_or(0) > 0) {
                                        Some(offset) => { "the ERP figure of " (time(&l["erp_time"])) ", "
                                            (records::link(&changes, partition, offset)) }
                                        None => "no absolute ERP figure yet",
                                    }
                                }
                            }
                        }
                    }
                }
            }
            h2 { "Open holds" }
            @if holds.is_empty() {
                p.empty { "No open holds." }
            } @else {
                div.overflow-auto {
                    table #holds .compact {
                        thead { tr {
                            th scope="col" { "Order or adjustment" } th scope="col" { "Location" }
                            th scope="col" { "Units" } th scope="col" { "Held since" }
                            th scope="col" { "Expires" } th scope="col" { "In the ERP" }
                        } }
                        tbody {
                            @for (code, reference, hold) in holds {
                                tr data-reference=(reference) {
                                    td { code { (reference) } }
                                    td { code { (code) } }
                                    td { (text(&hold["quantity"])) }
                                    td { (time(&hold["held_at"])) }
                                    td { (time(&hold["expires_at"])) }
                                    td { @match hold["written_back_at"].as_i64() {
                                        Some(at) => { "written back " (rfc3339(at)) },
                                        None => "not yet",
                                    } }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

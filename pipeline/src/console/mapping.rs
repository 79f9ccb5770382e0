//! *Mapping tester*: a sample record (an ERP row, a Frappe or OData page or one of its items)
//! pasted for one of a source's mappings, mapped by the running source's own code
//! ([`Control::try_mapping`](erpstream_connectors::component::Control::try_mapping)): the
//! event each record would be published as, or the field path and reason it would be
//! dead-lettered for. Nothing is published; viewers may use it too.

use std::sync::Arc;

use axum::extract::{Form, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::records::json;
use super::{Console, Refusal, layout, reader, viewer};

/// The mapping chosen: `<source id>/<mapping name>`.
#[derive(Debug, Default, Deserialize)]
pub struct Chosen {
    #[serde(default)]
    mapping: String,
}

/// Every mapping the topology's sources run: (`<source>/<name>`, source, name).
fn mappings(console: &Console) -> Vec<(String, String, String)> {
    console
        .nodes
        .iter()
        .filter_map(|node| Some((node, node.control.as_ref()?)))
        .flat_map(|(node, control)| {
            control
                .mappings()
                .into_iter()
                .map(|name| (format!("{}/{name}", node.id), node.id.clone(), name))
        })
        .collect()
}

/// `GET /console/mapping`.
pub async fn page(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Query(chosen): Query<Chosen>,
) -> Response {
    let operator = match viewer(&console, &headers, "/console/mapping") {
        Ok(operator) => operator,
        Err(refusal) => return refusal.into_response(),
    };
    let all = mappings(&console);
    let content = html! {
        @if all.is_empty() {
            p.empty { "No source of this topology maps records with a mapping (rest_poll resources and pg_cdc tables do)." }
        } @else {
            div.grid {
                form #mapping-tester hx-post="/console/mapping" hx-target="#mapped" hx-disabled-elt="find button" {
                    label {
                        "Mapping"
                        select name="mapping" required {
                            @for (value, source, name) in &all {
                                option value=(value) selected[chosen.mapping == *value] { (source) " · " (name) }
                            }
                        }
                    }
                    label {
                        "Sample"
                        textarea name="sample" rows="10" required spellcheck="false"
                            placeholder=r#"{"item_code": "SKU-1", "warehouse": "Stores - AC", "actual_qty": 5, "modified": "2026-12-01 10:00:00"}"# {}
                        small { "One record as JSON, an array of records, or a whole page as the ERP answers it ("
                            code { "{\"data\": [...]}" } ", " code { "{\"value\": [...]}" } "); for a table, a row as "
                            code { "{\"column\": value}" } "." }
                    }
                    button type="submit" { "Map" }
                }
                output #mapped aria-live="polite" {}
            }
        }
    };
    layout::page("Mapping tester", "/console/mapping", &operator, content).into_response()
}

/// The form of a trial.
#[derive(Deserialize)]
pub struct Trial {
    mapping: String,
    sample: String,
    csrf: Option<String>,
}

/// `POST /console/mapping`: the sample's records mapped, as a fragment.
pub async fn try_it(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Form(trial): Form<Trial>,
) -> Response {
    if let Err(refusal) = reader(&console, &headers, trial.csrf.as_deref()) {
        return refusal.into_response();
    }
    let Some((source, name)) = trial.mapping.split_once('/') else {
        return Refusal::Invalid("mapping: choose one of the list".into()).into_response();
    };
    let tried = console
        .node(source)
        .and_then(|node| node.control.as_ref())
        .and_then(|control| control.try_mapping(name, trial.sample.as_bytes()));
    match tried {
        None => {
            Refusal::NotFound(format!("mapping: {source} has no mapping {name}")).into_response()
        }
        Some(Err(reason)) => Refusal::Invalid(format!("sample: {reason}")).into_response(),
        Some(Ok(records)) => outcome(&records).into_response(),
    }
}

fn outcome(records: &[erpstream_connectors::component::Tried]) -> Markup {
    let failed = records.iter().filter(|r| r.is_err()).count();
    html! {
        article #mapping-outcome data-failed=(failed) {
            header {
                strong { (records.len()) " record(s): " (records.len() - failed) " map, " (failed) " would be dead-lettered" }
            }
            @if records.is_empty() { p.empty { "The sample holds no records." } }
            @for (i, record) in records.iter().enumerate() {
                @match record {
                    Ok(event) => {
                        details.mapped open[records.len() == 1] {
                            summary.status-ok { "✓ record " (i + 1) }
                            (json(event))
                        }
                    }
                    Err(problem) => {
                        p.status-bad.problem role="alert" {
                            "✗ record " (i + 1) ": " code { (problem.field) } " — " (problem.reason)
                        }
                    }
                }
            }
        }
    }
}

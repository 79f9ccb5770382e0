//! One record of a topic, decoded (`/console/record?at=<topic>/<partition>/<offset>`): what
//! *Stock*, *Reconciliation*, *Sync history* and *Dead letters* link to for "the event that
//! set it". Only the topology's topics and their dead letters are shown.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::Value;

use super::{Console, layout, viewer};
use crate::tools::{self, ToolError, dlq};

/// Where a record is: `<topic>/<partition>/<offset>` (broker-side topic name).
#[derive(Deserialize)]
pub struct At {
    at: String,
}

/// The link to the record at `topic`/`partition`/`offset`.
pub fn link(topic: &str, partition: i32, offset: i64) -> Markup {
    let at = format!("{topic}/{partition}/{offset}");
    html! {
        a href=(format!("/console/record?at={}", super::urlencoding(&at))) { code { (at) } }
    }
}

/// `GET /console/record`.
pub async fn page(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Query(At { at }): Query<At>,
) -> Response {
    let path = format!("/console/record?at={}", super::urlencoding(&at));
    let operator = match viewer(&console, &headers, &path) {
        Ok(operator) => operator,
        Err(refusal) => return refusal.into_response(),
    };
    let content = match read(&console, &at).await {
        Ok(record) => view(&record),
        Err(err) => problem(&format!("Could not read {at}"), &err),
    };
    layout::page("Record", "", &operator, content).into_response()
}

async fn read(console: &Console, at: &str) -> Result<Value, ToolError> {
    let (topic, partition, offset) = dlq::parse_id(at)?;
    let tools = &console.tools;
    // This pipeline's topics and their dead letters only, whatever else its credentials
    // may read on the cluster.
    let logical = tools.logical(&topic);
    let declared = |name: &str| console.topics.iter().any(|t| t == name);
    let unprefixed = topic == logical && !tools.kafka.topic_prefix.is_empty();
    if unprefixed || !(declared(logical) || logical.strip_suffix(".dlq").is_some_and(declared)) {
        return Err(ToolError::usage(format!(
            "{topic} is not a topic of this pipeline (nor one's dead letters)"
        )));
    }
    let message = tools::record_at(&tools.kafka, &topic, partition, offset).await?;
    Ok(tools::json_record(&tools.codec, &message, true).await)
}

/// A decoded record ([`tools::json_record`] with headers): where it is, its key and time,
/// its headers and its value.
pub fn view(record: &Value) -> Markup {
    let text = |name: &str| match &record[name] {
        Value::String(s) => s.clone(),
        Value::Null => "—".into(),
        other => other.to_string(),
    };
    html! {
        dl.record {
            dt { "Topic" } dd { code { (text("topic")) } }
            dt { "Partition / offset" } dd { (text("partition")) " / " (text("offset")) }
            dt { "Key" } dd { code { (text("key")) } }
            dt { "Timestamp" } dd { (text("timestamp")) }
        }
        @if let Some(headers) = record["headers"].as_object().filter(|h| !h.is_empty()) {
            h2 { "Headers" }
            table.compact {
                thead { tr { th scope="col" { "Name" } th scope="col" { "Value" } } }
                tbody {
                    @for (name, value) in headers {
                        tr { td { code { (name) } } td { (value.as_str().unwrap_or_default()) } }
                    }
                }
            }
        }
        h2 { "Value" }
        (json(&record["value"]))
    }
}

/// A JSON value, pretty-printed.
pub fn json(value: &Value) -> Markup {
    html! { pre.json { code { (serde_json::to_string_pretty(value).unwrap_or_default()) } } }
}

/// The error state of a page whose data could not be read (the broker, the registry or a
/// database down): what failed and why.
pub fn problem(what: &str, err: &dyn std::fmt::Display) -> Markup {
    html! {
        p.error-box role="alert" { strong { (what) } ": " (err.to_string()) }
    }
}

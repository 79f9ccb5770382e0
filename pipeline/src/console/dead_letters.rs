//! *Dead letters*: every `<topic>.dlq` of the topology, filtered by topic, error type, key
//! and state; a record opened (decoded, headers, error); selected records redriven, after a
//! dry-run preview of what each would do. The same code as `erpstream dlq list|show|redrive`
//! ([`crate::tools::dlq`]): a redrive publishes the original record to its topic again,
//! where the consumers' dedupe and version guards decide, and marks it in the ledger so it
//! is not redriven twice.

use std::collections::HashSet;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::records::{self, problem};
use super::{Console, Refusal, actor, layout, viewer};
use crate::tools::Tools;
use crate::tools::dlq::{self, Entry, Filter, RedriveSummary};

/// The filters of the list, as the page's form sends them.
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    topic: String,
    #[serde(default)]
    error_type: String,
    #[serde(default)]
    key: String,
    /// `all` includes records already redriven or superseded.
    #[serde(default)]
    state: String,
}

impl ListQuery {
    fn filter(&self) -> Filter {
        let given = |s: &str| Some(s.trim().to_string()).filter(|s| !s.is_empty());
        Filter {
            topic: given(&self.topic),
            error_type: given(&self.error_type),
            key: given(&self.key),
            all: self.state == "all",
            ..Filter::default()
        }
    }
}

/// `GET /console/dead-letters`.
pub async fn page(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> Response {
    let operator = match viewer(&console, &headers, "/console/dead-letters") {
        Ok(operator) => operator,
        Err(refusal) => return refusal.into_response(),
    };
    let may_act = operator.role.may_act();
    let listed = dlq::list(&console.tools, &query.filter()).await;
    let content = html! {
        (filters(&console, &query))
        @match &listed {
            Err(err) => (problem("Could not read the dead-letter topics", err)),
            Ok(entries) if entries.is_empty() => {
                p.empty { "No dead letters" @if query.state != "all" { " waiting" } " here. "
                    "Records a sink or processor gave up on, and rows a source could not map, "
                    "appear here." }
            }
            Ok(entries) => {
                form #redrive {
                    (table(&console.tools, entries, may_act))
                    @if may_act {
                        div role="group" {
                            button.secondary type="button" hx-post="/console/dead-letters/redrive?dry_run=true"
                                hx-target="#redrive-result" hx-disabled-elt="this" {
                                "Preview redrive of selected"
                            }
                            button type="button" hx-post="/console/dead-letters/redrive"
                                hx-target="#redrive-result" hx-disabled-elt="this" {
                                "Redrive selected"
                            }
                        }
                    }
                }
                output #redrive-result aria-live="polite" {}
            }
        }
    };
    layout::page("Dead letters", "/console/dead-letters", &operator, content).into_response()
}

fn filters(console: &Console, query: &ListQuery) -> Markup {
    html! {
        form.filters method="get" action="/console/dead-letters" {
            div.grid {
                label {
                    "Topic"
                    select name="topic" {
                        option value="" selected[query.topic.is_empty()] { "every topic" }
                        @for topic in &console.topics {
                            option value=(topic) selected[&query.topic == topic] { (topic) }
                        }
                    }
                }
                label {
                    "Error type"
                    select name="error_type" {
                        option value="" selected[query.error_type.is_empty()] { "any" }
                        @for kind in ["retries_exhausted", "rejected", "refused", "undecodable", "mapping"] {
                            option value=(kind) selected[query.error_type == kind] { (kind) }
                        }
                    }
                }
                label { "Key" input type="search" name="key" value=(query.key); }
                label {
                    "State"
                    select name="state" {
                        option value="" selected[query.state != "all"] { "waiting" }
                        option value="all" selected[query.state == "all"] { "all, redriven too" }
                    }
                }
            }
            button.secondary type="submit" { "Filter" }
        }
    }
}

fn table(tools: &Tools, entries: &[Entry], may_act: bool) -> Markup {
    html! {
        div.overflow-auto {
            table #dead-letters .compact {
                thead {
                    tr {
                        @if may_act { th scope="col" { span.visually-hidden { "Select" } } }
                        th scope="col" { abbr title="partition/offset in the dead-letter topic" { "Record" } }
                        th scope="col" { "Topic" }
                        th scope="col" { "Key" }
                        th scope="col" { "Error type" }
                        th scope="col" { "From" }
                        th scope="col" { "Attempts" }
                        th scope="col" { "Age" }
                        th scope="col" { "State" }
                        th scope="col" { "Error" }
                    }
                }
                tbody {
                    @for entry in entries {
                        tr data-id=(entry.id) {
                            @if may_act {
                                td {
                                    @if entry.state == "pending" {
                                        input type="checkbox" name="id" value=(entry.id)
                                            aria-label=(format!("select {}", entry.id));
                                    }
                                }
                            }
                            td {
                                a href=(format!("/console/dead-letters/record?id={}", super::urlencoding(&entry.id)))
                                    title=(entry.id) {
                                    (dlq::parse_id(&entry.id).map(|(_, p, o)| format!("{p}/{o}")).unwrap_or(entry.id.clone()))
                                }
                            }
                            td { (entry.original_topic.as_deref().map(|t| tools.logical(t)).unwrap_or("— (source row)")) }
                            td { code { (entry.key.as_deref().unwrap_or("—")) } }
                            td { (entry.error_type) }
                            td { (entry.source) }
                            td { (entry.attempts) }
                            td title=(entry.failed_at) { (age(entry.age_seconds)) }
                            td { (entry.state) }
                            td.error-text title=(entry.error) { (shorten(&entry.error, 90)) }
                        }
                    }
                }
            }
        }
    }
}

/// `42 s`, `5 min`, `3 h`, `2 d`.
fn age(seconds: i64) -> String {
    match seconds {
        s if s < 120 => format!("{s} s"),
        s if s < 7_200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3_600),
        s => format!("{} d", s / 86_400),
    }
}

fn shorten(text: &str, at: usize) -> String {
    if text.chars().count() <= at {
        text.to_string()
    } else {
        text.chars().take(at - 1).collect::<String>() + "…"
    }
}

#[derive(Deserialize)]
pub struct RecordQuery {
    id: String,
}

/// `GET /console/dead-letters/record?id=...`.
pub async fn record(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Query(RecordQuery { id }): Query<RecordQuery>,
) -> Response {
    let path = format!(
        "/console/dead-letters/record?id={}",
        super::urlencoding(&id)
    );
    let operator = match viewer(&console, &headers, &path) {
        Ok(operator) => operator,
        Err(refusal) => return refusal.into_response(),
    };
    let content = match dlq::show(&console.tools, &id).await {
        Err(err) => problem(&format!("Could not read {id}"), &err),
        Ok(shown) => {
            let text = |name: &str| shown[name].as_str().unwrap_or("—").to_string();
            html! {
                p { a href="/console/dead-letters" { "← Dead letters" } }
                article {
                    header { strong { "Why it is here" } }
                    dl {
                        dt { "Error" } dd.status-bad { (text("error")) }
                        dt { "Error type" } dd { (text("error_type")) }
                        dt { "Dead-lettered by" } dd { (text("source")) " after " (shown["attempts"]) " attempt(s)" }
                        dt { "When" } dd { (text("failed_at")) }
                        dt { "State" } dd { (text("state")) }
                        @if let (Some(topic), Some(partition), Some(offset)) = (
                            shown["original_topic"].as_str(),
                            shown["original_partition"].as_i64(),
                            shown["original_offset"].as_i64(),
                        ) {
                            dt { "Failed on" } dd { (records::link(topic, partition as i32, offset)) }
                        }
                    }
                }
                (records::view(&shown["record"]))
            }
        }
    };
    layout::page("Dead letter", "/console/dead-letters", &operator, content).into_response()
}

#[derive(Deserialize)]
pub struct RedriveQuery {
    #[serde(default)]
    dry_run: bool,
}

/// `POST /console/dead-letters/redrive[?dry_run=true]`, the form's selected `id`s.
pub async fn redrive(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Query(RedriveQuery { dry_run }): Query<RedriveQuery>,
    body: Bytes,
) -> Response {
    let ids: HashSet<String> = form_urlencoded::parse(&body)
        .filter(|(name, _)| name == "id")
        .map(|(_, id)| id.into_owned())
        .collect();
    let form_csrf = form_urlencoded::parse(&body)
        .find(|(name, _)| name == "csrf")
        .map(|(_, value)| value.into_owned());
    let operator = match actor(
        &console,
        &headers,
        form_csrf.as_deref(),
        "redrive dead letters",
    ) {
        Ok(operator) => operator,
        Err(refusal) => return refusal.into_response(),
    };
    if ids.is_empty() {
        return Refusal::Invalid("Select the records to redrive first.".into()).into_response();
    }
    let filter = Filter {
        ids: ids.clone(),
        ..Filter::default()
    };
    match dlq::redrive(&console.tools, &filter, dry_run).await {
        Err(err) => problem("The redrive failed", &err).into_response(),
        Ok(summary) => {
            if !dry_run {
                tracing::info!(operator = %operator.name, redriven = summary.redriven,
                    superseded = summary.superseded, "dead letters redriven from the console");
            }
            outcome(&summary, &ids).into_response()
        }
    }
}

/// What a redrive did, or (dry) would do, to each selected record.
fn outcome(summary: &RedriveSummary, selected: &HashSet<String>) -> Markup {
    let gone: Vec<&String> = selected
        .iter()
        .filter(|id| !summary.outcomes.contains_key(*id))
        .collect();
    html! {
        article #redrive-outcome data-dry-run=(summary.dry_run) {
            header {
                strong {
                    @if summary.dry_run { "Preview — nothing was sent: " } @else { "Redrive done: " }
                    (summary)
                }
            }
            table.compact {
                thead { tr { th scope="col" { "Record" } th scope="col" { "Outcome" } } }
                tbody {
                    @for (id, what) in &summary.outcomes {
                        tr data-id=(id) {
                            td { code { (id) } }
                            td.outcome {
                                @match (what.as_str(), summary.dry_run) {
                                    ("redriven", true) => "would deliver: published again to its topic, where the consumers' guards apply it unless something newer arrived",
                                    ("redriven", false) => { "published again as " code { (summary.to.get(id).map(String::as_str).unwrap_or("?")) } }
                                    ("superseded", _) => "superseded: a newer record with its key is on the topic, so it is not sent",
                                    _ => "a source row: it never reached a topic; fix the data at the source",
                                }
                            }
                        }
                    }
                    @for id in gone {
                        tr data-id=(id) { td { code { (id) } } td { "no longer waiting (redriven or superseded already)" } }
                    }
                }
            }
            @if !summary.dry_run {
                p { a href="/console/dead-letters" { "Reload the list" } }
            }
        }
    }
}

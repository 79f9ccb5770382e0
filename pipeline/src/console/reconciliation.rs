//! *Reconciliation*: `erpstream reconcile` from the browser. An operator uploads a stock
//! picture (a CSV or JSON file: an ERP export, an ERPNext `Bin` list, an OData result) or
//! names a URL; it is compared with the inventory processor's state held by this process
//! ([`SnapshotService::detail`](erpstream_connectors::component::SnapshotService::detail),
//! the same body as `GET /api/inventory/snapshot?detail=true`) by the same code as the CLI
//! ([`crate::tools::reconcile::compare`]). The differences are listed with the event that
//! set each of erpstream's figures; a repair, after a confirmation page, publishes the
//! correcting events exactly as `reconcile --repair` does, stamped with the picture's time.
//!
//! Reports are kept on the compacted topic `<app_id>.console.reconciliations` (key: the
//! report's id), so every replica lists them and they outlive restarts. A kept report holds
//! at most [`KEPT_DIFFERENCES`] differences per kind (the counts stay whole), which keeps a
//! record well under the brokers' 1 MB default; a repair corrects what the report holds.

use std::sync::Arc;

use axum::extract::{Multipart, Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use erpstream_connectors::kafka::{Publisher, RawRecord, TopicSpec, ensure_topics};
use maud::{Markup, html};
use serde::{Deserialize, Serialize};

use super::records::{self, problem};
use super::{Console, Refusal, actor, layout, viewer};
use crate::tools::reconcile::{self, Diff, Difference, ReconcileOptions, Report};
use crate::tools::{Doing, From, Progress, ToolError, TopicReader, Until, parse_time};

/// Differences kept per kind (missing, extra, differing) in a kept report.
pub const KEPT_DIFFERENCES: usize = 1_000;

/// The largest picture an upload may carry.
pub const MAX_UPLOAD: usize = 64 * 1024 * 1024;

/// A report as kept on the topic.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Kept {
    id: String,
    /// When it ran (epoch ms).
    at: i64,
    /// Who ran it.
    by: String,
    report: Report,
    /// Some differences were left out (more than [`KEPT_DIFFERENCES`] of a kind).
    truncated: bool,
    repair: Option<Repair>,
}

/// A repair of a kept report.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Repair {
    at: i64,
    by: String,
    /// Correcting events published.
    events: u64,
}

fn topic(console: &Console) -> String {
    console.tools.kafka.topic(&format!(
        "{}.console.reconciliations",
        console.tools.topology.app_id
    ))
}

/// Every kept report, newest first.
async fn kept(console: &Console) -> Result<Vec<Kept>, ToolError> {
    let mut reader = match TopicReader::open(
        &console.tools.kafka,
        &topic(console),
        From::Beginning,
        Until::End,
    )
    .await
    {
        Ok(reader) => reader,
        Err(ToolError::NoSuchTopic(_)) => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    let mut by_id = std::collections::HashMap::new();
    let mut skipped = 0;
    while let Some(message) = reader.next(&mut skipped).await? {
        use rdkafka::Message;
        if let Some(kept) = message
            .payload()
            .and_then(|p| serde_json::from_slice::<Kept>(p).ok())
        {
            by_id.insert(kept.id.clone(), kept);
        }
    }
    let mut reports: Vec<Kept> = by_id.into_values().collect();
    reports.sort_by_key(|k| std::cmp::Reverse(k.at));
    Ok(reports)
}

async fn keep(console: &Console, kept: &Kept) -> Result<(), ToolError> {
    let tools = &console.tools;
    let topic = topic(console);
    ensure_topics(
        &tools.kafka,
        &[TopicSpec {
            name: topic.clone(),
            partitions: 1,
            compacted: true,
        }],
    )
    .await
    .doing(|| format!("creating {topic}"))?;
    let publisher = Publisher::new(&tools.kafka, "erpstream-console", tools.codec.clone())
        .doing(|| "creating the producer".into())?;
    publisher
        .enqueue(RawRecord {
            topic,
            key: Some(kept.id.clone().into_bytes()),
            payload: Some(serde_json::to_vec(kept)?),
            headers: vec![],
            partition: Some(0),
        })
        .await?
        .await?;
    Ok(())
}

/// `GET /console/reconciliation`.
pub async fn page(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let operator = match viewer(&console, &headers, "/console/reconciliation") {
        Ok(operator) => operator,
        Err(refusal) => return refusal.into_response(),
    };
    let reports = kept(&console).await;
    let content = html! {
        @if console.stock.is_none() {
            p.empty { "This topology keeps no inventory state (it has no inventory processor), so there is nothing to reconcile." }
        } @else if operator.role.may_act() {
            article {
                header { strong { "Compare a stock picture with erpstream's state" } }
                form method="post" action="/console/reconciliation" enctype="multipart/form-data" {
                    input type="hidden" name="csrf" value=(operator.csrf);
                    label {
                        "A file (CSV or JSON: sku, location and quantity columns; an ERPNext Bin list; an OData result)"
                        input type="file" name="file" accept=".csv,.json,text/csv,application/json";
                    }
                    label {
                        "or a URL the pipeline fetches it from"
                        input type="url" name="url" placeholder="https://erp.example.com/api/stock";
                    }
                    button type="submit" { "Compare" }
                    small { "Nothing is changed by comparing. A repair is offered afterwards, with a confirmation." }
                }
            }
        }
        h2 { "Reports" }
        @match &reports {
            Err(err) => (problem("Could not read the kept reports", err)),
            Ok(reports) if reports.is_empty() => p.empty { "No reconciliation has run from the console yet." },
            Ok(reports) => {
                table #reports .compact {
                    thead { tr {
                        th scope="col" { "Run" } th scope="col" { "By" } th scope="col" { "Picture" }
                        th scope="col" { "Matching" } th scope="col" { "Differences" } th scope="col" { "Repair" }
                    } }
                    tbody {
                        @for kept in reports {
                            @let counts = &kept.report.state.counts;
                            tr {
                                td { a href=(format!("/console/reconciliation/{}", kept.id)) { (crate::tools::rfc3339(kept.at)) } }
                                td { (kept.by) }
                                td { (kept.report.against) }
                                td { (counts.matching) }
                                td { (counts.missing + counts.extra + counts.differing) }
                                td { @match &kept.repair { Some(r) => { (r.events) " events by " (r.by) }, None => "—" } }
                            }
                        }
                    }
                }
            }
        }
    };
    layout::page(
        "Reconciliation",
        "/console/reconciliation",
        &operator,
        content,
    )
    .into_response()
}

/// The picture a run compares: an uploaded file or a URL.
enum Picture {
    File { name: String, bytes: Vec<u8> },
    Url(String),
}

/// `POST /console/reconciliation` (multipart: `csrf`, `file` or `url`).
pub async fn run(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    mut form: Multipart,
) -> Response {
    let (mut csrf, mut file, mut url) = (None, None, None);
    loop {
        let field = match form.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(err) => {
                return Refusal::Invalid(format!(
                    "The form could not be read: {}",
                    err.body_text()
                ))
                .into_response();
            }
        };
        let name = field.name().unwrap_or_default().to_string();
        let file_name = field.file_name().map(str::to_string);
        let bytes = match field.bytes().await {
            Ok(bytes) => bytes,
            Err(err) => {
                return Refusal::Invalid(format!("field {name}: {}", err.body_text()))
                    .into_response();
            }
        };
        match name.as_str() {
            "csrf" => csrf = Some(String::from_utf8_lossy(&bytes).into_owned()),
            "file" if !bytes.is_empty() => {
                file = Some(Picture::File {
                    name: file_name.unwrap_or_else(|| "upload".into()),
                    bytes: bytes.to_vec(),
                })
            }
            "url" if !bytes.trim_ascii().is_empty() => {
                url = Some(Picture::Url(
                    String::from_utf8_lossy(bytes.trim_ascii()).into_owned(),
                ))
            }
            _ => {}
        }
    }
    let operator = match actor(&console, &headers, csrf.as_deref(), "run reconciliations") {
        Ok(operator) => operator,
        Err(refusal) => return refusal.into_response(),
    };
    let picture = match (file, url) {
        (Some(_), Some(_)) => {
            return Refusal::Invalid("Give a file or a URL, not both.".into()).into_response();
        }
        (None, None) => {
            return Refusal::Invalid("Choose a file or give a URL.".into()).into_response();
        }
        (Some(picture), None) | (None, Some(picture)) => picture,
    };
    if let Picture::Url(url) = &picture
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        return Refusal::Invalid(format!("url: {url:?} is not an http(s) URL")).into_response();
    }
    let id = uuid::Uuid::now_v7().to_string();
    match compare(&console, picture).await {
        Err(err) => {
            let content = html! {
                (problem("The reconciliation could not run", &err))
                p { a href="/console/reconciliation" { "← Reconciliation" } }
            };
            layout::page(
                "Reconciliation",
                "/console/reconciliation",
                &operator,
                content,
            )
            .into_response()
        }
        Ok(mut report) => {
            let truncated = [
                &mut report.state.missing,
                &mut report.state.extra,
                &mut report.state.differing,
            ]
            .into_iter()
            .fold(false, |cut, list| {
                let over = list.len() > KEPT_DIFFERENCES;
                list.truncate(KEPT_DIFFERENCES);
                cut || over
            });
            let kept = Kept {
                id: id.clone(),
                at: erpstream_schemas::now_millis(),
                by: operator.name.clone(),
                report,
                truncated,
                repair: None,
            };
            if let Err(err) = keep(&console, &kept).await {
                return problem("The report could not be kept", &err).into_response();
            }
            tracing::info!(operator = %operator.name, report = %id, clean = kept.report.is_clean(),
                "reconciliation run from the console");
            Redirect::to(&format!("/console/reconciliation/{id}")).into_response()
        }
    }
}

async fn compare(console: &Console, picture: Picture) -> Result<Report, ToolError> {
    let Some(stock) = &console.stock else {
        return Err(ToolError::usage("this topology keeps no inventory state"));
    };
    let state = stock
        .detail()
        .map_err(|reason| ToolError::data("erpstream's state", reason))?;
    let (against, bytes, fetched_at) = match picture {
        Picture::File { name, bytes } => (name, bytes, erpstream_schemas::now_millis()),
        Picture::Url(url) => {
            let (bytes, at) = reconcile::load(&url, &[]).await?;
            (url, bytes, at)
        }
    };
    let options = ReconcileOptions {
        against,
        headers: Vec::new(),
        state: None,
        state_token: None,
        planning: None,
        storefront: None,
        as_of: None,
        repair: false,
        events_topic: "inventory.change".into(),
    };
    reconcile::compare(
        &console.tools,
        options,
        bytes,
        fetched_at,
        "this process",
        state,
        Progress::new(None, "reconciling"),
    )
    .await
}

async fn find(console: &Console, id: &str) -> Result<Kept, Response> {
    match kept(console).await {
        Err(err) => Err(problem("Could not read the kept reports", &err).into_response()),
        Ok(reports) => reports
            .into_iter()
            .find(|k| k.id == id)
            .ok_or_else(|| Refusal::NotFound(format!("No report {id}.")).into_response()),
    }
}

/// `GET /console/reconciliation/{id}`.
pub async fn report(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let operator = match viewer(&console, &headers, &format!("/console/reconciliation/{id}")) {
        Ok(operator) => operator,
        Err(refusal) => return refusal.into_response(),
    };
    let kept = match find(&console, &id).await {
        Ok(kept) => kept,
        Err(response) => return response,
    };
    let report = &kept.report;
    let diff = &report.state;
    let repairable = !diff.is_clean() && report.level == "location" && kept.repair.is_none();
    let content = html! {
        p { a href="/console/reconciliation" { "← Reconciliation" } }
        article #report data-clean=(diff.is_clean()) {
            header {
                strong { (report.against) } " against erpstream's state, per " (report.level)
            }
            dl {
                dt { "Run" } dd { (crate::tools::rfc3339(kept.at)) " by " (kept.by) }
                dt { "Picture as of" } dd { (report.as_of) }
                dt { "Counts" }
                dd #counts {
                    (diff.counts.matching) " matching, " (diff.counts.missing) " missing, "
                    (diff.counts.extra) " extra, " (diff.counts.differing) " differing"
                }
                @if let Some(repair) = &kept.repair {
                    dt { "Repaired" }
                    dd.status-ok { (repair.events) " correcting events published " (crate::tools::rfc3339(repair.at)) " by " (repair.by) }
                }
            }
            @if diff.is_clean() {
                p.status-ok { "✓ The picture and erpstream's state agree." }
            } @else {
                (differences(diff))
                @if kept.truncated {
                    p.status-warn { "Only the first " (KEPT_DIFFERENCES) " differences of each kind are kept; run the CLI for every one." }
                }
            }
            @if repairable && operator.role.may_act() {
                footer { a role="button" href=(format!("/console/reconciliation/{}/repair", kept.id)) { "Repair…" } }
            } @else if report.level == "sku" && !diff.is_clean() {
                footer { small { "This picture is per sku; a repair needs one per sku and location." } }
            }
        }
    };
    layout::page(
        "Reconciliation report",
        "/console/reconciliation",
        &operator,
        content,
    )
    .into_response()
}

fn differences(diff: &Diff) -> Markup {
    let rows = diff
        .missing
        .iter()
        .map(|d| ("missing", d))
        .chain(diff.extra.iter().map(|d| ("extra", d)))
        .chain(diff.differing.iter().map(|d| ("differing", d)));
    let figure = |q: &Option<rust_decimal::Decimal>| {
        q.map(|q| q.normalize().to_string()).unwrap_or("—".into())
    };
    html! {
        div.overflow-auto {
            table #differences .compact {
                thead { tr {
                    th scope="col" { "Kind" } th scope="col" { "Sku" } th scope="col" { "Location" }
                    th scope="col" { "Picture" } th scope="col" { "erpstream" } th scope="col" { "Difference" }
                    th scope="col" { "Last event" }
                } }
                tbody {
                    @for (kind, d) in rows {
                        tr data-sku=(d.sku) data-location=(d.location.as_deref().unwrap_or("")) {
                            td { (kind) }
                            td { a href=(format!("/console/stock?sku={}", super::urlencoding(&d.sku))) { code { (d.sku) } } }
                            td { (d.location.as_deref().unwrap_or("—")) }
                            td.external { (figure(&d.external)) }
                            td.erpstream { (figure(&d.erpstream)) }
                            td { (d.difference.normalize()) }
                            td { (last_event(d)) }
                        }
                    }
                }
            }
        }
    }
}

fn last_event(d: &Difference) -> Markup {
    match &d.last_event {
        Some(e) => html! { (e.erp_time) ", " (records::link(&e.topic, e.partition, e.offset)) },
        None => html! { "—" },
    }
}

/// `GET /console/reconciliation/{id}/repair`: what a repair would publish, and the button.
pub async fn confirm(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let path = format!("/console/reconciliation/{id}/repair");
    let operator = match viewer(&console, &headers, &path) {
        Ok(operator) => operator,
        Err(refusal) => return refusal.into_response(),
    };
    if !operator.role.may_act() {
        return Refusal::Forbidden("repair stock").into_response();
    }
    let kept = match find(&console, &id).await {
        Ok(kept) => kept,
        Err(response) => return response,
    };
    let diff = &kept.report.state;
    let events = diff.missing.len() + diff.extra.len() + diff.differing.len();
    let content = html! {
        article #confirm-repair {
            header { strong { "Publish " (events) " correcting event(s)?" } }
            p {
                "Each difference below becomes an absolute " code { "inventory.change" }
                " carrying the picture's figure (0 for extra ones), stamped with the picture's time ("
                (kept.report.as_of) "). Where the ERP has reported a newer figure since, the inventory "
                "processor keeps the newer one. The storefront, the planning database and the ERP sink "
                "see the corrected figures like any others."
            }
            (differences(diff))
            form method="post" action=(path) {
                input type="hidden" name="csrf" value=(operator.csrf);
                div role="group" {
                    a.secondary role="button" href=(format!("/console/reconciliation/{id}")) { "Cancel" }
                    button type="submit" { "Yes, publish " (events) " event(s)" }
                }
            }
        }
    };
    layout::page(
        "Confirm repair",
        "/console/reconciliation",
        &operator,
        content,
    )
    .into_response()
}

#[derive(Deserialize)]
pub struct CsrfForm {
    csrf: Option<String>,
}

/// `POST /console/reconciliation/{id}/repair`.
pub async fn repair(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    axum::extract::Form(form): axum::extract::Form<CsrfForm>,
) -> Response {
    let operator = match actor(&console, &headers, form.csrf.as_deref(), "repair stock") {
        Ok(operator) => operator,
        Err(refusal) => return refusal.into_response(),
    };
    let mut kept = match find(&console, &id).await {
        Ok(kept) => kept,
        Err(response) => return response,
    };
    let done = |kept: &Kept| Redirect::to(&format!("/console/reconciliation/{}", kept.id));
    if kept.repair.is_some() {
        return done(&kept).into_response();
    }
    if kept.report.level != "location" {
        return Refusal::Invalid("A repair needs a picture per sku and location.".into())
            .into_response();
    }
    let as_of = match parse_time(&kept.report.as_of) {
        Ok(at) => at,
        Err(err) => return problem("The report's time could not be read", &err).into_response(),
    };
    let events = match reconcile::repair(&console.tools, &kept.report.state, as_of).await {
        Ok(events) => events,
        Err(err) => return problem("The repair failed", &err).into_response(),
    };
    kept.repair = Some(Repair {
        at: erpstream_schemas::now_millis(),
        by: operator.name.clone(),
        events,
    });
    tracing::info!(operator = %operator.name, report = %id, events, "stock repaired from the console");
    if let Err(err) = keep(&console, &kept).await {
        return problem(
            &format!("{events} correcting events were published, but the report could not be marked repaired"),
            &err,
        )
        .into_response();
    }
    done(&kept).into_response()
}

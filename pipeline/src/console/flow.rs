//! *Flow*: the topology as a picture — sources → topics → processors → sinks — each node
//! with its readiness and live figures, and the same as a table; refreshed every
//! [`live::EVERY`](super::live::EVERY).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};

use super::live::{BUDGET_SECONDS, Figures};
use super::{Console, Node, Section, layout, viewer};

const BOX_W: f64 = 190.0;
const BOX_H: f64 = 50.0;
const COLUMN: f64 = 240.0;
const ROW: f64 = 66.0;

/// `GET /console/flow`.
pub async fn page(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let operator = match viewer(&console, &headers, "/console/flow") {
        Ok(operator) => operator,
        Err(refusal) => return refusal.into_response(),
    };
    let content = html! {
        p { "Every source, topic, processor and sink of this pipeline, with this replica's "
            "figures. Refreshes every 2 seconds." }
        (live_view(&console))
    };
    layout::page("Flow", "/console/flow", &operator, content).into_response()
}

/// `GET /console/flow/live`: the picture and the table, for the refresh.
pub async fn live(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    match viewer(&console, &headers, "/console/flow") {
        Ok(_) => live_view(&console).into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

/// How a node is doing, for its colour and the table.
enum Health {
    Ready,
    Standby(String),
    Unready(String),
}

fn health(node: &Node) -> Health {
    let Some(readiness) = &node.readiness else {
        return Health::Ready;
    };
    if let Some(holder) = readiness.standing_by() {
        return Health::Standby(holder);
    }
    match readiness.status() {
        Ok(()) => Health::Ready,
        Err(reason) => Health::Unready(reason),
    }
}

fn live_view(console: &Console) -> Markup {
    let taken = console
        .live
        .taken_at()
        .map(|at| at.format("%H:%M:%S UTC").to_string());
    html! {
        div #flow hx-get="/console/flow/live" hx-trigger="every 2s" hx-swap="outerHTML" {
            figure.flow { (picture(console)) }
            @if let Some(taken) = taken {
                p.who { "Figures as of " (taken) "." }
            } @else {
                p.empty { "No figures yet: they are read every 2 seconds." }
            }
            table.compact {
                thead { tr {
                    th scope="col" { "Component" } th scope="col" { "Type" }
                    th scope="col" { "State" } th scope="col" { "In /s" }
                    th scope="col" { "Out /s" } th scope="col" { "Errors" }
                    th scope="col" { "Lag" } th scope="col" { "Latency p99 (budget 5 s)" }
                } }
                tbody {
                    @for node in &console.nodes {
                        (row(node, &console.live.of(&node.id)))
                    }
                }
            }
        }
    }
}

fn row(node: &Node, figures: &Figures) -> Markup {
    html! {
        tr data-component=(node.id) data-in=(format!("{:.2}", figures.received_per_s))
            data-out=(format!("{:.2}", figures.sent_per_s)) {
            th scope="row" { (node.id) }
            td { (node.section.name()) " " code { (node.type_name) } }
            td {
                @match health(node) {
                    Health::Ready => span.status-ok { "ready" },
                    Health::Standby(holder) => span.status-idle { "standing by: " (holder) },
                    Health::Unready(reason) => span.status-bad { "not ready: " (reason) },
                }
            }
            td { (rate(figures.received_per_s)) }
            td { (rate(figures.sent_per_s)) }
            td {
                @if figures.errors > 0.0 {
                    span.status-bad { (figures.errors) }
                } @else { "0" }
                @if figures.dead_lettered > 0.0 {
                    " (" (figures.dead_lettered) " dead-lettered)"
                }
            }
            td { (lag(figures)) }
            td { (latency(figures)) }
        }
    }
}

fn rate(per_s: f64) -> String {
    if per_s >= 10.0 {
        format!("{per_s:.0}")
    } else {
        format!("{per_s:.1}")
    }
}

fn lag(figures: &Figures) -> Markup {
    html! {
        @if let Some(records) = figures.consumer_lag {
            (records) " records"
        } @else if let Some(bytes) = figures.slot_lag_bytes {
            (bytesize::ByteSize::b(bytes.max(0.0) as u64).to_string()) " of WAL"
        } @else { "–" }
    }
}

fn latency(figures: &Figures) -> Markup {
    html! {
        @match figures.latency_p99 {
            Some((p99, count)) if p99 <= BUDGET_SECONDS => span.budget-ok {
                "≤ " (seconds(p99)) " (" (count) " deliveries)"
            },
            Some((p99, count)) => span.budget-over {
                "over budget: ≤ " (seconds(p99)) " (" (count) " deliveries)"
            },
            None => "–",
        }
    }
}

fn seconds(value: f64) -> String {
    if value.is_infinite() {
        "∞".into()
    } else if value < 1.0 {
        format!("{:.0} ms", value * 1000.0)
    } else {
        format!("{value:.1} s")
    }
}

/// A vertex of the picture.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Vertex {
    Topic(String),
    Component(usize),
}

/// The picture: longest-path layers from the sources, one column per layer.
fn picture(console: &Console) -> Markup {
    let mut edges: BTreeSet<(Vertex, Vertex)> = BTreeSet::new();
    let processor_ids: BTreeMap<&str, usize> = console
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.section == Section::Processor)
        .map(|(i, n)| (n.id.as_str(), i))
        .collect();
    for (i, node) in console.nodes.iter().enumerate() {
        for input in &node.inputs {
            let from = match processor_ids.get(input.as_str()) {
                Some(p) => Vertex::Component(*p),
                None => Vertex::Topic(input.clone()),
            };
            edges.insert((from, Vertex::Component(i)));
        }
        for output in &node.outputs {
            edges.insert((Vertex::Component(i), Vertex::Topic(output.clone())));
        }
    }
    let mut layer: BTreeMap<Vertex, usize> = BTreeMap::new();
    for topic in &console.topics {
        layer.insert(Vertex::Topic(topic.clone()), 0);
    }
    for (i, _) in console.nodes.iter().enumerate() {
        layer.insert(Vertex::Component(i), 0);
    }
    for (from, to) in &edges {
        layer.entry(from.clone()).or_insert(0);
        layer.entry(to.clone()).or_insert(0);
    }
    // Longest path; a cycle cannot occur (validation refuses it), but the bound keeps a
    // wrong guess from looping.
    for _ in 0..layer.len() {
        let mut changed = false;
        for (from, to) in &edges {
            let wanted = layer[from] + 1;
            if layer[to] < wanted {
                layer.insert(to.clone(), wanted);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let mut columns: BTreeMap<usize, Vec<Vertex>> = BTreeMap::new();
    for (vertex, l) in &layer {
        columns.entry(*l).or_default().push(vertex.clone());
    }
    let mut at: BTreeMap<Vertex, (f64, f64)> = BTreeMap::new();
    for (l, vertices) in &columns {
        for (row, vertex) in vertices.iter().enumerate() {
            at.insert(
                vertex.clone(),
                (10.0 + *l as f64 * COLUMN, 10.0 + row as f64 * ROW),
            );
        }
    }
    let width = 20.0 + columns.len() as f64 * COLUMN;
    let height = 20.0 + columns.values().map(Vec::len).max().unwrap_or(1) as f64 * ROW;
    html! {
        svg xmlns="http://www.w3.org/2000/svg" viewBox=(format!("0 0 {width} {height}"))
            role="img" aria-label="The pipeline's topology: sources, topics, processors and sinks" {
            @for (from, to) in &edges {
                @if let (Some((x1, y1)), Some((x2, y2))) = (at.get(from), at.get(to)) {
                    path.edge d=(curve(x1 + BOX_W, y1 + BOX_H / 2.0, *x2, y2 + BOX_H / 2.0)) {}
                }
            }
            @for (vertex, (x, y)) in &at {
                @match vertex {
                    Vertex::Topic(name) => g.node.topic transform=(format!("translate({x},{y})")) {
                        title { "topic " (name) }
                        rect width=(BOX_W) height=(BOX_H) {}
                        text x="8" y="20" { (clip(name)) }
                        text.detail x="8" y="38" { "topic" }
                    },
                    Vertex::Component(i) => (component_box(&console.nodes[*i], &console.live.of(&console.nodes[*i].id), *x, *y)),
                }
            }
        }
    }
}

fn component_box(node: &Node, figures: &Figures, x: f64, y: f64) -> Markup {
    let (class, state) = match health(node) {
        Health::Ready => ("node ready", "ready".to_string()),
        Health::Standby(_) => ("node standby", "standing by".to_string()),
        Health::Unready(reason) => ("node unready", format!("not ready: {reason}")),
    };
    let detail = match node.section {
        Section::Source => format!(
            "{} /s out",
            rate(figures.sent_per_s.max(figures.received_per_s))
        ),
        _ => format!(
            "{} /s in · lag {}",
            rate(figures.received_per_s),
            figures
                .consumer_lag
                .map_or("–".to_string(), |l| format!("{l}"))
        ),
    };
    html! {
        g class=(class) transform=(format!("translate({x},{y})")) {
            title { (node.section.name()) " " (node.id) " (" (node.type_name) "): " (state) }
            rect width=(BOX_W) height=(BOX_H) {}
            text x="8" y="20" { (clip(&node.id)) " · " (node.type_name) }
            text.detail x="8" y="38" { (detail) }
        }
    }
}

fn curve(x1: f64, y1: f64, x2: f64, y2: f64) -> String {
    let mid = (x1 + x2) / 2.0;
    format!("M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}")
}

/// A name short enough for a box.
fn clip(name: &str) -> String {
    if name.chars().count() <= 24 {
        name.to_string()
    } else {
        name.chars().take(23).chain(['…']).collect()
    }
}

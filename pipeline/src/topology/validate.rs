//! Topology validation: every problem at once, each with its path in the file.

use std::collections::{BTreeMap, BTreeSet};

use erpstream_connectors::validation::Problem;
use erpstream_schemas::EventKind;
use serde::de::DeserializeOwned;
use serde_yaml_ng::{Mapping, Value};

use super::*;

const SECTIONS: [&str; 8] = [
    "app_id",
    "http",
    "kafka",
    "registry",
    "topics",
    "sources",
    "processors",
    "sinks",
];

pub(super) fn parse(text: &str) -> Result<Topology, TopologyErrors> {
    let text = interpolate(text, |name| std::env::var(name).ok()).map_err(TopologyErrors)?;
    let root: Value = serde_yaml_ng::from_str(&text).map_err(|e| {
        let at = e
            .location()
            .map(|l| format!("line {}, column {}", l.line(), l.column()))
            .unwrap_or_else(|| "file".into());
        TopologyErrors(vec![Problem::new(at, format!("is not valid YAML: {e}"))])
    })?;
    let Value::Mapping(root) = root else {
        return Err(TopologyErrors(vec![Problem::new(
            "(root)",
            "must be a mapping of sections",
        )]));
    };
    let mut problems = Vec::new();
    for key in root.keys() {
        let name = key.as_str().unwrap_or("?");
        if !SECTIONS.contains(&name) {
            problems.push(Problem::new(
                name,
                format!("unknown section; expected one of {}", SECTIONS.join(", ")),
            ));
        }
    }

    let app_id: Option<String> = section(&root, "app_id", &mut problems, true);
    if let Some(id) = &app_id
        && (id.is_empty()
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)))
    {
        problems.push(Problem::new(
            "app_id",
            "must be non-empty and use only letters, digits, '.', '_' and '-'",
        ));
    }
    let http: Option<HttpConfig> = section(&root, "http", &mut problems, false);
    let kafka: Option<KafkaConfig> = section(&root, "kafka", &mut problems, true);
    let registry: Option<RegistryConfig> = section(&root, "registry", &mut problems, true);
    if let Some(registry) = &registry
        && reqwest::Url::parse(&registry.url).is_err()
    {
        problems.push(Problem::new("registry.url", "must be a URL"));
    }
    let topics: BTreeMap<String, TopicConfig> =
        section(&root, "topics", &mut problems, true).unwrap_or_default();
    for (name, topic) in &topics {
        if topic.partitions < 1 {
            problems.push(Problem::new(
                format!("topics.{name}.partitions"),
                "must be >= 1",
            ));
        }
        let contract = topic.contract.as_deref().unwrap_or(name);
        if EventKind::from_topic(contract).is_none() {
            let field = if topic.contract.is_some() {
                format!("topics.{name}.contract")
            } else {
                format!("topics.{name}")
            };
            problems.push(Problem::new(
                field,
                format!(
                    "names no contract; set contract to one of {}",
                    EventKind::ALL.map(|k| k.topic()).join(", ")
                ),
            ));
        }
    }

    let sources = components(
        &root,
        "sources",
        &mut problems,
        |kind, value, at, problems| match kind {
            "erp_webhook" => typed::<ErpWebhookConfig>(value, at, problems).map(|c| {
                problems.extend(c.validate(at));
                SourceConfig::ErpWebhook(c)
            }),
            "storefront_api" => typed::<StorefrontApiConfig>(value, at, problems).map(|c| {
                problems.extend(c.validate(at));
                SourceConfig::StorefrontApi(c)
            }),
            "pg_cdc" => typed::<PgCdcConfig>(value, at, problems).map(|c| {
                problems.extend(c.validate(at));
                SourceConfig::PgCdc(c)
            }),
            "rest_poll" => typed::<RestPollConfig>(value, at, problems).map(|c| {
                problems.extend(c.validate(at));
                SourceConfig::RestPoll(c)
            }),
            "planning_api" => typed::<PlanningApiConfig>(value, at, problems).map(|c| {
                problems.extend(c.validate(at));
                SourceConfig::PlanningApi(c)
            }),
            _ => unknown_type(
                at,
                &[
                    "erp_webhook",
                    "storefront_api",
                    "pg_cdc",
                    "rest_poll",
                    "planning_api",
                ],
                problems,
            ),
        },
    );
    let processors = components(
        &root,
        "processors",
        &mut problems,
        |kind, value, at, problems| match kind {
            "dedupe" => typed::<DedupeConfig>(value, at, problems).map(|c| {
                problems.extend(c.validate(at));
                ProcessorConfig::Dedupe(c)
            }),
            "inventory" => typed::<InventoryConfig>(value, at, problems).map(|c| {
                problems.extend(c.validate(at));
                ProcessorConfig::Inventory(c)
            }),
            _ => unknown_type(at, &["dedupe", "inventory"], problems),
        },
    );
    let sinks = components(
        &root,
        "sinks",
        &mut problems,
        |kind, value, at, problems| match kind {
            "storefront_webhook" => {
                typed::<StorefrontWebhookConfig>(value, at, problems).map(|c| {
                    problems.extend(c.validate(at));
                    SinkConfig::StorefrontWebhook(c)
                })
            }
            "erp_rest" => typed::<ErpRestConfig>(value, at, problems).map(|c| {
                problems.extend(c.validate(at));
                SinkConfig::ErpRest(c)
            }),
            "planning_pg" => typed::<PlanningPgConfig>(value, at, problems).map(|c| {
                problems.extend(c.validate(at));
                SinkConfig::PlanningPg(c)
            }),
            _ => unknown_type(
                at,
                &["storefront_webhook", "erp_rest", "planning_pg"],
                problems,
            ),
        },
    );

    // The graph rules need no broker or registry settings: check them even when those
    // sections are broken (the placeholders never leave this function, as problems exist).
    let topology = Topology {
        app_id: app_id.unwrap_or_default(),
        http: http.unwrap_or_default(),
        kafka: kafka.unwrap_or_else(|| KafkaConfig::new("")),
        registry: registry.unwrap_or(RegistryConfig { url: String::new() }),
        topics,
        sources,
        processors,
        sinks,
    };
    check_graph(&topology, &mut problems);
    if problems.is_empty() {
        Ok(topology)
    } else {
        Err(TopologyErrors(problems))
    }
}

/// Deserializes one top-level section; `None` (with a problem) if missing or malformed.
fn section<T: DeserializeOwned>(
    root: &Mapping,
    name: &str,
    problems: &mut Vec<Problem>,
    required: bool,
) -> Option<T> {
    match root.get(name) {
        None if required => {
            problems.push(Problem::new(name, "is required"));
            None
        }
        None => None,
        Some(value) => typed(value, name, problems),
    }
}

fn typed<T: DeserializeOwned>(value: &Value, at: &str, problems: &mut Vec<Problem>) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value.clone()) {
        Ok(v) => Some(v),
        Err(err) => {
            let path = err.path().to_string();
            let path = if path == "." || path == "?" {
                at.to_string()
            } else {
                format!("{at}.{path}")
            };
            problems.push(Problem::new(path, err.into_inner().to_string()));
            None
        }
    }
}

fn unknown_type<T>(at: &str, known: &[&str], problems: &mut Vec<Problem>) -> Option<T> {
    problems.push(Problem::new(
        format!("{at}.type"),
        format!("must be one of {}", known.join(", ")),
    ));
    None
}

/// Deserializes a `sources`/`processors`/`sinks` map, dispatching on each entry's `type`.
fn components<T>(
    root: &Mapping,
    name: &str,
    problems: &mut Vec<Problem>,
    build: impl Fn(&str, &Value, &str, &mut Vec<Problem>) -> Option<T>,
) -> BTreeMap<String, T> {
    let mut out = BTreeMap::new();
    let Some(value) = root.get(name) else {
        return out;
    };
    let Value::Mapping(entries) = value else {
        problems.push(Problem::new(
            name,
            "must be a mapping of component id to settings",
        ));
        return out;
    };
    for (id, settings) in entries {
        let Some(id) = id.as_str() else {
            problems.push(Problem::new(name, "component ids must be strings"));
            continue;
        };
        let at = format!("{name}.{id}");
        if id.is_empty()
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c))
        {
            problems.push(Problem::new(
                &at,
                "id must use only letters, digits, '_' and '-'",
            ));
        }
        let Value::Mapping(map) = settings else {
            problems.push(Problem::new(&at, "must be a mapping"));
            continue;
        };
        let Some(kind) = map.get("type").and_then(Value::as_str) else {
            problems.push(Problem::new(format!("{at}.type"), "is required"));
            continue;
        };
        let mut rest = map.clone();
        rest.remove("type");
        if let Some(component) = build(kind, &Value::Mapping(rest), &at, problems) {
            out.insert(id.to_string(), component);
        }
    }
    out
}

/// Cross-component rules: unique ids, known inputs, matching contracts, no cycles,
/// co-partitioning.
fn check_graph(t: &Topology, problems: &mut Vec<Problem>) {
    let mut seen = BTreeMap::new();
    for (kind, ids) in [
        ("sources", t.sources.keys().collect::<Vec<_>>()),
        ("processors", t.processors.keys().collect()),
        ("sinks", t.sinks.keys().collect()),
    ] {
        for id in ids {
            if let Some(first) = seen.insert(id.clone(), kind) {
                problems.push(Problem::new(
                    format!("{kind}.{id}"),
                    format!("id is already used in {first}"),
                ));
            }
            if t.topics.contains_key(id) {
                problems.push(Problem::new(
                    format!("{kind}.{id}"),
                    "id is also a topic name; inputs would be ambiguous",
                ));
            }
        }
    }

    let mut paths = BTreeSet::new();
    let mut api_sources = 0;
    for (id, source) in &t.sources {
        let at = format!("sources.{id}");
        match source {
            SourceConfig::ErpWebhook(c) => {
                if !paths.insert(c.path.clone()) {
                    problems.push(Problem::new(
                        format!("{at}.path"),
                        "is already served by another source",
                    ));
                }
                expect_topic(
                    t,
                    &format!("{at}.catalog_topic"),
                    &c.catalog_topic,
                    &[EventKind::CatalogUpdate],
                    problems,
                );
                expect_topic(
                    t,
                    &format!("{at}.inventory_topic"),
                    &c.inventory_topic,
                    &[EventKind::InventoryChange],
                    problems,
                );
                if let Some(topic) = &c.orders_topic {
                    let path = format!("{at}.orders_topic");
                    expect_topic(t, &path, topic, &[EventKind::SalesOrder], problems);
                }
                if let Some(topic) = &c.reservations_topic {
                    let path = format!("{at}.reservations_topic");
                    expect_topic(t, &path, topic, &[EventKind::Reservation], problems);
                }
            }
            SourceConfig::PgCdc(c) => {
                for (name, table) in &c.tables {
                    let table_at = format!("{at}.tables.{name}");
                    let topic_at = format!("{table_at}.topic");
                    expect_topic(
                        t,
                        &topic_at,
                        &table.topic,
                        &erpstream_connectors::sources::mapping::MAPPABLE,
                        problems,
                    );
                    if let Some(kind) = t.contract(&table.topic) {
                        for (field, reason) in
                            erpstream_connectors::sources::mapping::check(table, kind)
                        {
                            problems.push(Problem::new(format!("{table_at}.{field}"), reason));
                        }
                    }
                }
            }
            SourceConfig::PlanningApi(c) => {
                for (field, topic, kind) in [
                    (
                        "products_topic",
                        &c.products_topic,
                        EventKind::CatalogUpdate,
                    ),
                    (
                        "inventory_topic",
                        &c.inventory_topic,
                        EventKind::InventoryChange,
                    ),
                    ("demand_topic", &c.demand_topic, EventKind::DemandActual),
                ] {
                    expect_topic(t, &format!("{at}.{field}"), topic, &[kind], problems);
                }
            }
            SourceConfig::RestPoll(c) => {
                for (name, resource) in &c.resources {
                    let resource_at = format!("{at}.resources.{name}");
                    let topic_at = format!("{resource_at}.topic");
                    expect_topic(
                        t,
                        &topic_at,
                        &resource.topic,
                        &erpstream_connectors::sources::mapping::MAPPABLE,
                        problems,
                    );
                    if let Some(kind) = t.contract(&resource.topic) {
                        let mapping = resource.mapping();
                        for (field, reason) in
                            erpstream_connectors::sources::mapping::check(&mapping, kind)
                        {
                            problems.push(Problem::new(format!("{resource_at}.{field}"), reason));
                        }
                    }
                }
            }
            SourceConfig::StorefrontApi(c) => {
                api_sources += 1;
                if api_sources > 1 {
                    problems.push(Problem::new(
                        &at,
                        "only one storefront_api source may run (its paths are fixed)",
                    ));
                }
                for (field, topic, kind) in [
                    ("orders_topic", &c.orders_topic, EventKind::SalesOrder),
                    (
                        "adjustments_topic",
                        &c.adjustments_topic,
                        EventKind::InventoryAdjustment,
                    ),
                    (
                        "reservations_topic",
                        &c.reservations_topic,
                        EventKind::Reservation,
                    ),
                ] {
                    expect_topic(t, &format!("{at}.{field}"), topic, &[kind], problems);
                }
                if let (Some(reservations), Some(inventory)) = (
                    t.topics.get(&c.reservations_topic),
                    t.topics.get(EventKind::InventoryChange.topic()),
                ) && reservations.partitions != inventory.partitions
                {
                    problems.push(Problem::new(
                        format!("{at}.reservations_topic"),
                        format!(
                            "{} must have as many partitions as inventory.change (both keyed by sku)",
                            c.reservations_topic
                        ),
                    ));
                }
                if let Some(snapshot) = &c.snapshot
                    && !matches!(
                        t.processors.get(snapshot),
                        Some(ProcessorConfig::Inventory(_))
                    )
                {
                    problems.push(Problem::new(
                        format!("{at}.snapshot"),
                        format!("{snapshot} is not an inventory processor"),
                    ));
                }
            }
        }
    }

    let mut consumers_of: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (id, processor) in &t.processors {
        let at = format!("processors.{id}");
        let accepts: &[EventKind] = match processor {
            ProcessorConfig::Dedupe(_) => &EventKind::ALL,
            ProcessorConfig::Inventory(_) => &[EventKind::InventoryChange, EventKind::Reservation],
        };
        if processor.inputs().is_empty() {
            problems.push(Problem::new(
                format!("{at}.inputs"),
                "must list at least one input",
            ));
        }
        let mut partitions = BTreeSet::new();
        for (i, input) in processor.inputs().iter().enumerate() {
            let path = format!("{at}.inputs[{i}]");
            if let Some(upstream) = t.processors.get(input) {
                consumers_of.entry(input.as_str()).or_default().push(id);
                if upstream.output().is_some() && matches!(upstream, ProcessorConfig::Dedupe(_)) {
                    problems.push(Problem::new(
                        &path,
                        format!("processor {input} writes a topic; read that topic instead"),
                    ));
                }
                for kind in contracts_of(t, input, &mut BTreeSet::new()) {
                    if !accepts.contains(&kind) {
                        problems.push(Problem::new(
                            &path,
                            format!(
                                "{input} carries {}, which this processor does not take",
                                kind.topic()
                            ),
                        ));
                    }
                }
            } else if t.topics.contains_key(input) {
                expect_topic(t, &path, input, accepts, problems);
                partitions.insert(t.topics[input].partitions);
            } else {
                problems.push(Problem::new(
                    &path,
                    format!("{input} is neither a declared topic nor a processor"),
                ));
            }
        }
        if partitions.len() > 1 {
            problems.push(Problem::new(
                format!("{at}.inputs"),
                "input topics must have equal partition counts (co-partitioning)",
            ));
        }
        if let Some(output) = processor.output() {
            let produces: &[EventKind] = match processor {
                ProcessorConfig::Inventory(_) => &[EventKind::InventoryAvailable],
                ProcessorConfig::Dedupe(_) => &EventKind::ALL,
            };
            expect_topic(t, &format!("{at}.output"), output, produces, problems);
            if let (ProcessorConfig::Inventory(c), Some(out)) = (processor, t.topics.get(output)) {
                for input in &c.inputs {
                    if let Some(topic) = t.topics.get(input)
                        && topic.partitions != out.partitions
                    {
                        problems.push(Problem::new(format!("{at}.output"), format!(
                                "{output} must have as many partitions as {input} (both keyed by sku)")));
                    }
                }
            }
        } else if !consumers_of.contains_key(id.as_str())
            && !t.processors.values().any(|p| p.inputs().contains(id))
        {
            problems.push(Problem::new(
                format!("{at}.output"),
                "is required when no processor reads this one",
            ));
        }
    }
    for (id, readers) in &consumers_of {
        if readers.len() > 1 {
            problems.push(Problem::new(
                format!("processors.{id}"),
                format!(
                    "is read by {} processors; a processor feeds at most one",
                    readers.join(", ")
                ),
            ));
        }
    }
    for id in t.processors.keys() {
        let mut path = BTreeSet::new();
        let mut current = id.as_str();
        while let Some(next) = t
            .processors
            .get(current)
            .and_then(|p| p.inputs().iter().find(|i| t.processors.contains_key(*i)))
        {
            if !path.insert(current.to_string()) {
                problems.push(Problem::new(
                    format!("processors.{id}.inputs"),
                    "forms a cycle",
                ));
                break;
            }
            current = next;
        }
    }

    for (id, sink) in &t.sinks {
        let accepts: &[EventKind] = match sink {
            SinkConfig::StorefrontWebhook(_) => {
                &[EventKind::InventoryAvailable, EventKind::CatalogUpdate]
            }
            SinkConfig::ErpRest(_) => &[EventKind::SalesOrder, EventKind::InventoryAdjustment],
            SinkConfig::PlanningPg(_) => &[
                EventKind::CatalogUpdate,
                EventKind::InventoryChange,
                EventKind::DemandActual,
            ],
        };
        for (i, input) in sink.inputs().iter().enumerate() {
            let path = format!("sinks.{id}.inputs[{i}]");
            if t.processors.contains_key(input) {
                problems.push(Problem::new(
                    &path,
                    "sinks read topics; name the processor's output topic",
                ));
            } else {
                expect_topic(t, &path, input, accepts, problems);
            }
        }
        if let SinkConfig::ErpRest(c) = sink {
            for (i, source) in c.sources.iter().enumerate() {
                if !t.sources.contains_key(source) {
                    problems.push(Problem::new(
                        format!("sinks.{id}.sources[{i}]"),
                        format!("{source} is not a source of this topology"),
                    ));
                }
            }
            expect_topic(
                t,
                &format!("sinks.{id}.reservations_topic"),
                &c.reservations_topic,
                &[EventKind::Reservation],
                problems,
            );
        }
    }
}

fn contracts_of(t: &Topology, id: &str, visiting: &mut BTreeSet<String>) -> Vec<EventKind> {
    if !visiting.insert(id.to_string()) {
        return vec![];
    }
    match t.processors.get(id) {
        Some(ProcessorConfig::Inventory(_)) => vec![EventKind::InventoryAvailable],
        Some(p @ ProcessorConfig::Dedupe(_)) => p
            .inputs()
            .iter()
            .flat_map(|i| {
                if t.topics.contains_key(i) {
                    t.contract(i).into_iter().collect()
                } else {
                    contracts_of(t, i, visiting)
                }
            })
            .collect(),
        None => t.contract(id).into_iter().collect(),
    }
}

fn expect_topic(
    t: &Topology,
    path: &str,
    topic: &str,
    allowed: &[EventKind],
    problems: &mut Vec<Problem>,
) {
    if !t.topics.contains_key(topic) {
        problems.push(Problem::new(
            path,
            format!("topic {topic} is not declared in topics"),
        ));
        return;
    }
    if let Some(kind) = t.contract(topic)
        && !allowed.contains(&kind)
    {
        problems.push(Problem::new(
            path,
            format!(
                "topic {topic} carries {}; expected {}",
                kind.topic(),
                allowed
                    .iter()
                    .map(|k| k.topic())
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
        ));
    }
}

/// Replaces `${NAME}` and `${NAME:-default}` with environment values, so one file serves
/// several environments. Secrets still belong in `{ env: NAME }` references, which are read
/// by the component and never end up in the parsed configuration.
fn interpolate(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, Vec<Problem>> {
    let mut out = String::with_capacity(text.len());
    let mut problems = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            problems.push(Problem::new(
                format!("line {}", line_of(text, rest, start)),
                "has an unclosed ${",
            ));
            out.push_str(&rest[start..]);
            rest = "";
            break;
        };
        let expr = &after[..end];
        let (name, default) = match expr.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (expr, None),
        };
        match (lookup(name).filter(|v| !v.is_empty()), default) {
            (Some(value), _) => out.push_str(&value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => problems.push(Problem::new(
                format!("line {}", line_of(text, rest, start)),
                format!("environment variable {name} is not set (write ${{{name}:-default}} for a default)"),
            )),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

fn line_of(text: &str, rest: &str, offset: usize) -> usize {
    let position = text.len() - rest.len() + offset;
    text[..position].matches('\n').count() + 1
}

//! Topology validation: every problem at once, each with its path in the file.

use std::collections::{BTreeMap, BTreeSet};

use erpstream_connectors::validation::Problem;
use erpstream_schemas::EventKind;
use serde::de::DeserializeOwned;
use serde_yaml_ng::{Mapping, Value};

use erpstream_connectors::component::Kind;

use super::*;
use crate::components::{self, Configured, PROCESSORS};

const SECTIONS: [&str; 9] = [
    "app_id",
    "http",
    "kafka",
    "registry",
    "topics",
    "sources",
    "processors",
    "sinks",
    "console",
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
    if let Some(http) = &http {
        problems.extend(http.admission.validate("http.admission"));
        problems.extend(http.limits.validate("http.limits"));
        if let Some(tls) = &http.tls {
            problems.extend(tls.validate("http.tls"));
        }
    }
    let kafka: Option<KafkaConfig> = section(&root, "kafka", &mut problems, true);
    if let Some(kafka) = &kafka {
        problems.extend(kafka.validate("kafka"));
    }
    let registry: Option<RegistryConfig> = section(&root, "registry", &mut problems, true);
    if let Some(registry) = &registry {
        problems.extend(registry.validate("registry"));
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

    let sources = components(&root, Kind::Source, &mut problems);
    let processors = entries(
        &root,
        "processors",
        &mut problems,
        |kind, value, at, problems| match PROCESSORS.iter().find(|t| t.name == kind) {
            Some(t) => (t.parse)(value, at, problems),
            None => unknown_type(at, PROCESSORS.iter().map(|t| t.name), problems),
        },
    );
    let sinks = components(&root, Kind::Sink, &mut problems);
    let console: Option<crate::console::ConsoleConfig> =
        section(&root, "console", &mut problems, false);
    if let Some(console) = &console {
        problems.extend(console.validate("console"));
    }
    let mut settings = BTreeMap::new();
    for name in ["sources", "processors", "sinks"] {
        if let Some(Value::Mapping(entries)) = root.get(name) {
            for (id, value) in entries {
                if let Some(id) = id.as_str() {
                    settings.insert(format!("{name}.{id}"), value.clone());
                }
            }
        }
    }

    // The graph rules need no broker or registry settings: check them even when those
    // sections are broken (the placeholders never leave this function, as problems exist).
    let topology = Topology {
        app_id: app_id.unwrap_or_default(),
        http: http.unwrap_or_default(),
        kafka: kafka.unwrap_or_else(|| KafkaConfig::new("")),
        registry: registry.unwrap_or_else(|| RegistryConfig::at("")),
        topics,
        sources,
        processors,
        sinks,
        console,
        settings,
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
    crate::components::deserialize(value, at, problems)
}

fn unknown_type<T>(
    at: &str,
    known: impl Iterator<Item = &'static str>,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    problems.push(Problem::new(
        format!("{at}.type"),
        format!("must be one of {}", known.collect::<Vec<_>>().join(", ")),
    ));
    None
}

/// The `sources` or `sinks` section, each entry read by its registered type.
fn components(
    root: &Mapping,
    kind: Kind,
    problems: &mut Vec<Problem>,
) -> BTreeMap<String, Configured> {
    entries(
        root,
        kind.section(),
        problems,
        |name, value, at, problems| match components::types(kind).find(|t| t.name == name) {
            Some(t) => t.parse(value, at, problems),
            None => unknown_type(at, components::types(kind).map(|t| t.name), problems),
        },
    )
}

/// Deserializes a `sources`/`processors`/`sinks` map, dispatching on each entry's `type`.
fn entries<T>(
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

/// Cross-component rules: unique ids, one owner per HTTP path, declared topics with the
/// right contracts, each component's own checks, known processor inputs, no cycles,
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

    let mut served: BTreeMap<String, String> = BTreeMap::new();
    for (id, component) in t.components() {
        let at = format!("{}.{id}", component.kind().section());
        for route in component.routes() {
            let path = match route.field {
                Some(field) => format!("{at}.{field}"),
                None => at.clone(),
            };
            match served.get(&route.path) {
                Some(owner) => problems.push(Problem::new(
                    path,
                    format!("{} is already served by {owner}", route.path),
                )),
                None => {
                    served.insert(route.path, at.clone());
                }
            }
        }
        for port in component.outputs() {
            let path = format!("{at}.{}", port.field);
            expect_topic(t, &path, &port.topic, port.contracts, problems);
        }
        for port in component.inputs() {
            let path = format!("{at}.{}", port.field);
            if t.processors.contains_key(&port.topic) {
                problems.push(Problem::new(
                    &path,
                    "sinks read topics; name the processor's output topic",
                ));
            } else {
                expect_topic(t, &path, &port.topic, port.contracts, problems);
            }
        }
        problems.extend(component.check(&at, t));
    }

    let mut readers: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (id, processor) in &t.processors {
        let at = format!("processors.{id}");
        let accepts = processor.accepts();
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
                readers.entry(input.as_str()).or_default().push(id);
                if !upstream.chains() {
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
            let produces = processor.produces(&contracts_of(t, id, &mut BTreeSet::new()));
            if !t.topics.contains_key(output) {
                problems.push(Problem::new(
                    format!("{at}.output"),
                    format!("topic {output} is not declared in topics"),
                ));
            } else if let Some(kind) = t.contract(output)
                && !produces.is_empty()
                && !produces.contains(&kind)
            {
                problems.push(Problem::new(
                    format!("{at}.output"),
                    format!(
                        "topic {output} carries {}; this processor writes {}",
                        kind.topic(),
                        either(&produces)
                    ),
                ));
            }
        } else if !t.processors.values().any(|p| p.inputs().contains(id)) {
            problems.push(Problem::new(
                format!("{at}.output"),
                "is required when no processor reads this one",
            ));
        }
        problems.extend(processor.check(&at, t));
    }
    for (id, readers) in &readers {
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
}

/// The contracts processor (or topic) `id` carries: a topic's own, a processor's from what
/// it reads.
fn contracts_of(t: &Topology, id: &str, visiting: &mut BTreeSet<String>) -> Vec<EventKind> {
    if !visiting.insert(id.to_string()) {
        return vec![];
    }
    match t.processors.get(id) {
        Some(processor) => {
            let read: Vec<EventKind> = processor
                .inputs()
                .iter()
                .flat_map(|i| contracts_of(t, i, visiting))
                .collect();
            processor.produces(&read)
        }
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
                either(allowed)
            ),
        ));
    }
}

/// `a or b or c`, by contract name.
fn either(kinds: &[EventKind]) -> String {
    let names: Vec<&str> = kinds.iter().map(|k| k.topic()).collect();
    names.join(" or ")
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

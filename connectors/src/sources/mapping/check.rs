//! A mapping checked against its contract before anything runs: every path names a field,
//! constants and transforms fit the field's type, the key and every required field are set.

use erpstream_schemas::EventKind;
use erpstream_schemas::codec::bundled_schema;

use super::config::{FieldSource, Mapping, OnDelete};
use super::convert::constant;
use apache_avro::Schema;

use super::path::{Leaf, Segment, Target, render, target};
use super::{ENVELOPE, MAPPABLE};
use crate::component::Graph;
use crate::validation::Problem;

/// Every mapping (at its path in the file) against the contract of its topic; a topic that
/// carries no mappable contract is refused with its port, not here.
pub fn check_all<'a>(
    graph: &dyn Graph,
    mappings: impl IntoIterator<Item = (String, std::borrow::Cow<'a, Mapping>)>,
) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (at, mapping) in mappings {
        if let Some(kind) = graph.contract(&mapping.topic)
            && MAPPABLE.contains(&kind)
        {
            for (field, reason) in check(&mapping, kind) {
                problems.push(Problem::new(format!("{at}.{field}"), reason));
            }
        }
    }
    problems
}

/// Whether a transform can produce the target's type: scaling makes numbers, bucketing dates.
pub(super) fn transform_fits(target: &Target, source: &FieldSource) -> Result<(), String> {
    match source {
        FieldSource::Transform(t) if t.scale.is_some() => match target.leaf {
            Leaf::Decimal(_) | Leaf::Integer => Ok(()),
            _ => Err("scale applies to decimal and integer fields".into()),
        },
        FieldSource::Transform(t) if t.bucket.is_some() => match target.leaf {
            Leaf::String | Leaf::Timestamp => Ok(()),
            _ => Err("bucket applies to text and timestamp fields".into()),
        },
        FieldSource::Concat(_) => match target.leaf {
            Leaf::String | Leaf::Enum(_) => Ok(()),
            _ => Err("concat applies to text fields".into()),
        },
        _ => Ok(()),
    }
}

/// The field whose value is the record key of `kind`.
pub(super) fn key_field(kind: EventKind) -> &'static str {
    match kind {
        EventKind::CatalogUpdate => "group_id",
        EventKind::SalesOrder => "transaction_id",
        _ => "sku",
    }
}

/// Checks `mapping` against the contract `kind` without a database: every path names a
/// field of the contract, constants fit, the record key and every required field are set.
/// Returns (field path, reason) pairs.
pub fn check(mapping: &Mapping, kind: EventKind) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    if !MAPPABLE.contains(&kind) {
        problems.push((
            "topic".to_string(),
            format!(
                "carries {}; sources map records to {}",
                kind.topic(),
                MAPPABLE.map(|k| k.topic()).join(", ")
            ),
        ));
        return problems;
    }
    let mut set: Vec<Vec<Segment>> = Vec::new();
    for (path, source) in &mapping.fields {
        match target(kind, path) {
            Err(reason) => problems.push((format!("fields.{path}"), reason)),
            Ok(target) => {
                if let FieldSource::Const(c) = source
                    && let Err(reason) = constant(&target, &c.value)
                {
                    problems.push((format!("fields.{path}"), reason));
                }
                if let Err(reason) = transform_fits(&target, source) {
                    problems.push((format!("fields.{path}"), reason));
                }
                set.push(target.segments);
            }
        }
    }
    let key = key_field(kind);
    if !mapping.fields.contains_key(key) {
        problems.push((
            format!("fields.{key}"),
            "is required (it is the record key)".into(),
        ));
    }
    if let Ok(schema) = bundled_schema(kind) {
        let mut missing = Vec::new();
        missing_required(schema, &[], &set, &mut missing);
        // The record key is reported once, as the key.
        missing.retain(|(path, _)| !problems.iter().any(|(p, _)| p == path));
        problems.extend(missing);
    }
    if let OnDelete::Event { set } = &mapping.on_delete {
        for (path, value) in set {
            match target(kind, path) {
                Err(reason) => problems.push((format!("on_delete.set.{path}"), reason)),
                Ok(target) => {
                    if let Err(reason) = constant(&target, value) {
                        problems.push((format!("on_delete.set.{path}"), reason));
                    }
                }
            }
        }
    }
    problems
}

/// Required fields (no Avro default, not filled by the source) under `prefix` that no path sets.
pub(super) fn missing_required(
    schema: &Schema,
    prefix: &[Segment],
    set: &[Vec<Segment>],
    problems: &mut Vec<(String, String)>,
) {
    let Schema::Record(record) = schema else {
        return;
    };
    for field in &record.fields {
        if prefix.is_empty() && ENVELOPE.contains(&field.name.as_str()) {
            continue;
        }
        let mut here = prefix.to_vec();
        here.push(Segment::Field(field.name.clone()));
        let touched: Vec<&Vec<Segment>> = set.iter().filter(|p| p.starts_with(&here)).collect();
        if touched.is_empty() {
            if field.default.is_none() {
                problems.push((
                    format!("fields.{}", render(&here)),
                    "is required by the contract".into(),
                ));
            }
            continue;
        }
        if let Schema::Array(array) = &field.schema {
            let indices: std::collections::BTreeSet<usize> = touched
                .iter()
                .filter_map(|p| match p.get(here.len()) {
                    Some(Segment::Index(i)) => Some(*i),
                    _ => None,
                })
                .collect();
            for i in indices {
                let mut item = here.clone();
                item.push(Segment::Index(i));
                missing_required(&array.items, &item, set, problems);
            }
        }
    }
}

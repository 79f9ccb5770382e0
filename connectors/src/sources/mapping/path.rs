//! Event field paths (`variants[0].sku`) resolved against the contract's Avro schema, and
//! the JSON object an event is built in.

use apache_avro::Schema;
use erpstream_schemas::EventKind;
use erpstream_schemas::codec::bundled_schema;
use serde_json::{Map, Value};

use super::ENVELOPE;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Segment {
    Field(String),
    Index(usize),
}

pub(super) fn render(segments: &[Segment]) -> String {
    let mut out = String::new();
    for s in segments {
        match s {
            Segment::Field(f) if out.is_empty() => out.push_str(f),
            Segment::Field(f) => {
                out.push('.');
                out.push_str(f);
            }
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

pub(super) fn parse_path(path: &str) -> Option<Vec<Segment>> {
    let mut segments = Vec::new();
    for part in path.split('.') {
        let (name, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if name.is_empty() {
            return None;
        }
        segments.push(Segment::Field(name.to_string()));
        while let Some(inner) = rest.strip_prefix('[') {
            let end = inner.find(']')?;
            segments.push(Segment::Index(inner[..end].parse().ok()?));
            rest = &inner[end + 1..];
        }
        if !rest.is_empty() {
            return None;
        }
    }
    Some(segments)
}

/// The type of a leaf field.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Leaf {
    String,
    Integer,
    Timestamp,
    Decimal(u32),
    Boolean,
    Enum(Vec<String>),
    StringArray,
    StringMap,
}

#[derive(Debug, Clone)]
pub(super) struct Target {
    /// Where in the event.
    pub(super) segments: Vec<Segment>,
    /// What type it takes.
    pub(super) leaf: Leaf,
    /// Whether it may be null.
    pub(super) nullable: bool,
}

/// Resolves a field path of `kind` to a leaf type.
pub(super) fn target(kind: EventKind, path: &str) -> Result<Target, String> {
    let segments = parse_path(path).ok_or("is not a field path like sku or variants[0].sku")?;
    if let Some(Segment::Field(first)) = segments.first()
        && ENVELOPE.contains(&first.as_str())
    {
        return Err(if first == "occurred_at" {
            "is set by the source; use the table's occurred_at option to read it from a column"
                .into()
        } else {
            "is set by the source".into()
        });
    }
    let mut schema = bundled_schema(kind).map_err(|e| e.to_string())?;
    let mut nullable = false;
    let mut iter = segments.iter().peekable();
    while let Some(segment) = iter.next() {
        let (inner, is_nullable) = unwrap_null(schema);
        schema = inner;
        nullable = is_nullable;
        match (segment, schema) {
            (Segment::Field(name), Schema::Record(record)) => {
                let field = record
                    .lookup
                    .get(name)
                    .map(|i| &record.fields[*i])
                    .ok_or_else(|| {
                        format!(
                            "is not a field of {} (fields: {})",
                            kind.topic(),
                            record
                                .fields
                                .iter()
                                .map(|f| f.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    })?;
                schema = &field.schema;
                if matches!(schema, Schema::Array(a) if matches!(*a.items, Schema::Record(_)))
                    && !matches!(iter.peek(), Some(Segment::Index(_)))
                {
                    return Err(format!(
                        "{name} is a list of records; name an item, e.g. {name}[0]"
                    ));
                }
            }
            (Segment::Index(_), Schema::Array(array)) => schema = &array.items,
            _ => return Err("does not match the contract's shape".into()),
        }
    }
    let (schema, is_nullable) = unwrap_null(schema);
    nullable |= is_nullable;
    let leaf = match schema {
        Schema::String | Schema::Uuid(_) => Leaf::String,
        Schema::Int | Schema::Long => Leaf::Integer,
        Schema::TimestampMillis => Leaf::Timestamp,
        Schema::Decimal(d) => Leaf::Decimal(d.scale as u32),
        Schema::Boolean => Leaf::Boolean,
        Schema::Enum(e) => Leaf::Enum(e.symbols.clone()),
        Schema::Array(a) if matches!(*a.items, Schema::String) => Leaf::StringArray,
        Schema::Map(m) if matches!(*m.types, Schema::String) => Leaf::StringMap,
        _ => return Err("is not a single value; name a field inside it".into()),
    };
    Ok(Target {
        segments,
        leaf,
        nullable,
    })
}

pub(super) fn unwrap_null(schema: &Schema) -> (&Schema, bool) {
    if let Schema::Union(union) = schema {
        let variants = union.variants();
        if variants.len() == 2 && variants[0] == Schema::Null {
            return (&variants[1], true);
        }
    }
    (schema, false)
}

pub(super) fn set_path(object: &mut Map<String, Value>, segments: &[Segment], value: Value) {
    let mut slot: &mut Value = match segments.first() {
        Some(Segment::Field(name)) => object.entry(name.clone()).or_insert(Value::Null),
        _ => return,
    };
    for segment in &segments[1..] {
        slot = match segment {
            Segment::Field(name) => {
                if !slot.is_object() {
                    *slot = Value::Object(Map::new());
                }
                slot.as_object_mut()
                    .map(|o| o.entry(name.clone()).or_insert(Value::Null))
                    .unwrap_or_else(|| unreachable!("made an object above"))
            }
            Segment::Index(i) => {
                if !slot.is_array() {
                    *slot = Value::Array(Vec::new());
                }
                let array = slot
                    .as_array_mut()
                    .unwrap_or_else(|| unreachable!("made an array above"));
                while array.len() <= *i {
                    array.push(Value::Null);
                }
                &mut array[*i]
            }
        };
    }
    *slot = value;
}

/// Adds the Avro default of every absent field, so optional fields need no mapping.
pub(super) fn fill_defaults(schema: &Schema, value: &mut Value) {
    let (schema, _) = unwrap_null(schema);
    match (schema, value) {
        (Schema::Record(record), Value::Object(object)) => {
            for field in &record.fields {
                match object.get_mut(&field.name) {
                    Some(inner) => fill_defaults(&field.schema, inner),
                    None => {
                        if let Some(default) = &field.default {
                            object.insert(field.name.clone(), default.clone());
                        }
                    }
                }
            }
        }
        (Schema::Array(array), Value::Array(items)) => {
            for item in items.iter_mut() {
                fill_defaults(&array.items, item);
            }
        }
        _ => {}
    }
}

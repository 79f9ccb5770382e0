//! Source records → events, as declared in the topology (field mapping as data): each event
//! field path names a source field (a column, an API record's field), a constant, a
//! concatenation or a transformed field (exact unit scaling, date bucketing). Values are
//! converted from their text form to the field's Avro type (read from the bundled contract),
//! so a mapping is checked against the contract before anything runs and a record that does
//! not fit is refused with the field and the reason. Shared by `pg_cdc` and `rest_poll`.

mod config;

pub use config::{Bucket, Concat, Const, DeleteMode, FieldSource, Mapping, OnDelete, Transform};

use apache_avro::Schema;
use erpstream_schemas::codec::bundled_schema;
use erpstream_schemas::decimal;
use erpstream_schemas::{
    CatalogUpdate, Codec, CodecError, DemandActual, Event, EventKind, InventoryChange, SalesOrder,
};
use std::borrow::Cow;

use rust_decimal::Decimal;
use serde_json::{Map, Value};

/// Contracts a table can be mapped to.
pub const MAPPABLE: [EventKind; 4] = [
    EventKind::InventoryChange,
    EventKind::CatalogUpdate,
    EventKind::SalesOrder,
    EventKind::DemandActual,
];
/// Fields every event carries that the source fills in itself.
const ENVELOPE: [&str; 6] = [
    "event_id",
    "idempotency_key",
    "source_system",
    "source",
    "occurred_at",
    "ingested_at",
];

/// One field of a source record as the source currently knows it (a table's column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Field name.
    pub name: String,
    /// Part of the record's identity (a primary key column, an API record's key field).
    pub key: bool,
}

/// One value of a record, in text form (Postgres' output form, a JSON scalar's text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cell<'a> {
    /// SQL NULL.
    Null,
    /// The value's text form.
    Text(&'a str),
    /// An unchanged TOASTed value the change does not carry.
    Unchanged,
    /// A column a key-only old row does not carry.
    Missing,
}

/// A mapped event, ready to encode.
#[derive(Debug, Clone)]
pub enum Mapped {
    /// `inventory.change`.
    InventoryChange(InventoryChange),
    /// `catalog.update`.
    CatalogUpdate(CatalogUpdate),
    /// `sales.order`.
    SalesOrder(SalesOrder),
    /// `demand.actual`.
    DemandActual(DemandActual),
}

impl Mapped {
    /// The record key.
    pub fn key(&self) -> &str {
        match self {
            Mapped::InventoryChange(e) => e.key(),
            Mapped::CatalogUpdate(e) => e.key(),
            Mapped::SalesOrder(e) => e.key(),
            Mapped::DemandActual(e) => e.key(),
        }
    }

    /// Confluent wire-format bytes for `topic`.
    pub async fn encode(&self, codec: &Codec, topic: &str) -> Result<Vec<u8>, CodecError> {
        match self {
            Mapped::InventoryChange(e) => codec.encode(topic, e).await,
            Mapped::CatalogUpdate(e) => codec.encode(topic, e).await,
            Mapped::SalesOrder(e) => codec.encode(topic, e).await,
            Mapped::DemandActual(e) => codec.encode(topic, e).await,
        }
    }
}

/// The event fields the source fills in for one row.
#[derive(Debug, Clone)]
pub struct Envelope<'a> {
    /// Equal for every reading of the same row version.
    pub idempotency_key: &'a str,
    /// Connector id.
    pub source: &'a str,
    /// `source_system`.
    pub source_system: &'a str,
    /// Commit or poll time, epoch ms; used unless the mapping's `occurred_at` names a field.
    pub occurred_at: i64,
    /// Now, epoch ms.
    pub ingested_at: i64,
}

/// Why a row could not become an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct RowError {
    /// Event field path (or column).
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

impl RowError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// A table mapping bound to the table's current columns.
#[derive(Debug, Clone)]
pub struct Bound {
    kind: EventKind,
    fields: Vec<BoundField>,
    occurred_at: Option<usize>,
    keys: Vec<usize>,
    /// Index of the column (or constant) giving the record key, for tombstones.
    key_field: usize,
    delete: BoundDelete,
}

#[derive(Debug, Clone)]
struct BoundField {
    path: String,
    target: Target,
    source: BoundSource,
    noun: &'static str,
}

#[derive(Debug, Clone)]
enum BoundSource {
    Column {
        index: usize,
        name: String,
    },
    Const(Value),
    Concat {
        parts: Vec<usize>,
        separator: String,
    },
    Scaled {
        index: usize,
        factor: Decimal,
    },
    Bucket {
        index: usize,
        bucket: Bucket,
    },
}

#[derive(Debug, Clone)]
enum BoundDelete {
    Tombstone,
    Skip,
    Event(Vec<(String, Target, Value)>),
}

/// What a delete becomes.
#[derive(Debug, Clone)]
pub enum Deleted {
    /// A null value under this key.
    Tombstone(String),
    /// Nothing.
    Skip,
    /// An event.
    Event(Box<Mapped>),
}

impl Bound {
    /// Binds `mapping` to `columns`: every column it reads must exist.
    /// `noun` names a source field in messages ("column", "field").
    pub fn new(
        mapping: &Mapping,
        kind: EventKind,
        columns: &[Column],
        noun: &'static str,
    ) -> Result<Self, RowError> {
        let index_of = |path: &str, name: &str| {
            columns
                .iter()
                .position(|c| c.name == name)
                .ok_or_else(|| RowError::new(path, format!("{noun} {name} does not exist")))
        };
        let mut fields = Vec::new();
        for (path, source) in &mapping.fields {
            let target = target(kind, path).map_err(|reason| RowError::new(path, reason))?;
            transform_fits(&target, source).map_err(|reason| RowError::new(path, reason))?;
            let source = match source {
                FieldSource::Column(name) => BoundSource::Column {
                    index: index_of(path, name)?,
                    name: name.clone(),
                },
                FieldSource::Const(c) => BoundSource::Const(
                    constant(&target, &c.value).map_err(|r| RowError::new(path, r))?,
                ),
                FieldSource::Concat(c) => BoundSource::Concat {
                    parts: c
                        .concat
                        .iter()
                        .map(|name| index_of(path, name))
                        .collect::<Result<_, _>>()?,
                    separator: c.separator.clone(),
                },
                FieldSource::Transform(t) => {
                    let index = index_of(path, &t.field)?;
                    match (t.scale, t.bucket) {
                        (Some(factor), None) => BoundSource::Scaled { index, factor },
                        (None, Some(bucket)) => BoundSource::Bucket { index, bucket },
                        _ => {
                            return Err(RowError::new(path, "give exactly one of scale or bucket"));
                        }
                    }
                }
            };
            fields.push(BoundField {
                path: path.clone(),
                target,
                source,
                noun,
            });
        }
        let occurred_at = mapping
            .occurred_at
            .as_deref()
            .map(|name| index_of("occurred_at", name))
            .transpose()?;
        let keys: Vec<usize> = (0..columns.len()).filter(|i| columns[*i].key).collect();
        if keys.is_empty() {
            return Err(RowError::new(
                "table",
                "has no primary key or replica identity columns",
            ));
        }
        let key_path = key_field(kind);
        let key_field = fields
            .iter()
            .position(|f| f.path == key_path)
            .ok_or_else(|| RowError::new(key_path, "is required (it is the record key)"))?;
        let delete = match &mapping.on_delete {
            OnDelete::Mode(DeleteMode::Tombstone) => BoundDelete::Tombstone,
            OnDelete::Mode(DeleteMode::Skip) => BoundDelete::Skip,
            OnDelete::Event { set } => BoundDelete::Event(
                set.iter()
                    .map(|(path, value)| {
                        let target = target(kind, path)
                            .map_err(|r| RowError::new(format!("on_delete.set.{path}"), r))?;
                        let value = constant(&target, value)
                            .map_err(|r| RowError::new(format!("on_delete.set.{path}"), r))?;
                        Ok((path.clone(), target, value))
                    })
                    .collect::<Result<_, RowError>>()?,
            ),
        };
        Ok(Self {
            kind,
            fields,
            occurred_at,
            keys,
            key_field,
            delete,
        })
    }

    /// The row's replica identity values joined by `/` (its identity in idempotency keys).
    pub fn identity(&self, row: &[Cell]) -> String {
        self.keys
            .iter()
            .map(|i| match row.get(*i) {
                Some(Cell::Text(t)) => *t,
                _ => "",
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    /// The event for a row as inserted or updated. `old` is the row before an update, when
    /// the change carries it (replica identity FULL): unchanged TOASTed values are taken from
    /// it, and without it such a value is an error, never a placeholder.
    pub fn event(
        &self,
        row: &[Cell],
        old: Option<&[Cell]>,
        envelope: &Envelope,
    ) -> Result<Mapped, RowError> {
        let mut object = Map::new();
        for field in &self.fields {
            set_path(&mut object, &field.target.segments, field.value(row, old)?);
        }
        let occurred_at = match self.occurred_at {
            None => envelope.occurred_at,
            Some(index) => match row.get(index).copied().unwrap_or(Cell::Null) {
                Cell::Text(text) => parse_time(text).ok_or_else(|| {
                    RowError::new("occurred_at", format!("{text:?} is not a timestamp"))
                })?,
                Cell::Null | Cell::Unchanged | Cell::Missing => envelope.occurred_at,
            },
        };
        self.finish(object, envelope, occurred_at)
    }

    /// What a deleted row (its replica identity columns, or all of them with FULL) becomes.
    pub fn deleted(&self, old: &[Cell], envelope: &Envelope) -> Result<Deleted, RowError> {
        match &self.delete {
            BoundDelete::Skip => Ok(Deleted::Skip),
            BoundDelete::Tombstone => {
                let field = &self.fields[self.key_field];
                let key = match field.value(old, None)? {
                    Value::String(key) => key,
                    other => other.to_string(),
                };
                Ok(Deleted::Tombstone(key))
            }
            BoundDelete::Event(overrides) => {
                let mut object = Map::new();
                for field in &self.fields {
                    if overrides.iter().any(|(p, _, _)| *p == field.path) {
                        continue;
                    }
                    set_path(&mut object, &field.target.segments, field.value(old, None)?);
                }
                for (_, target, value) in overrides {
                    set_path(&mut object, &target.segments, value.clone());
                }
                self.finish(object, envelope, envelope.occurred_at)
                    .map(|e| Deleted::Event(Box::new(e)))
            }
        }
    }

    fn finish(
        &self,
        mut object: Map<String, Value>,
        envelope: &Envelope,
        occurred_at: i64,
    ) -> Result<Mapped, RowError> {
        object.insert(
            "event_id".into(),
            Value::String(uuid::Uuid::now_v7().to_string()),
        );
        object.insert(
            "idempotency_key".into(),
            Value::String(envelope.idempotency_key.to_string()),
        );
        object.insert(
            "source_system".into(),
            Value::String(envelope.source_system.to_string()),
        );
        object.insert("source".into(), Value::String(envelope.source.to_string()));
        object.insert("occurred_at".into(), Value::from(occurred_at));
        object.insert("ingested_at".into(), Value::from(envelope.ingested_at));
        let schema =
            bundled_schema(self.kind).map_err(|e| RowError::new("contract", e.to_string()))?;
        let mut value = Value::Object(object);
        fill_defaults(schema, &mut value);
        let field_error = |e: serde_path_to_error::Error<serde_json::Error>| {
            RowError::new(e.path().to_string(), e.into_inner().to_string())
        };
        Ok(match self.kind {
            EventKind::CatalogUpdate => {
                Mapped::CatalogUpdate(serde_path_to_error::deserialize(value).map_err(field_error)?)
            }
            EventKind::SalesOrder => {
                Mapped::SalesOrder(serde_path_to_error::deserialize(value).map_err(field_error)?)
            }
            EventKind::DemandActual => {
                Mapped::DemandActual(serde_path_to_error::deserialize(value).map_err(field_error)?)
            }
            _ => Mapped::InventoryChange(
                serde_path_to_error::deserialize(value).map_err(field_error)?,
            ),
        })
    }
}

impl BoundField {
    /// The field's value from `row`; unchanged TOASTed values are taken from `old`.
    fn value(&self, row: &[Cell], old: Option<&[Cell]>) -> Result<Value, RowError> {
        let cell = |index: usize| {
            let cell = row.get(index).copied().unwrap_or(Cell::Null);
            match (cell, old) {
                (Cell::Unchanged, Some(old)) => old.get(index).copied().unwrap_or(Cell::Unchanged),
                _ => cell,
            }
        };
        let error = |reason: String| RowError::new(&self.path, reason);
        match &self.source {
            BoundSource::Const(value) => Ok(value.clone()),
            BoundSource::Column { index, name } => convert(&self.target, cell(*index))
                .map_err(|r| error(format!("{} {name} {r}", self.noun))),
            BoundSource::Scaled { index, factor } => match cell(*index) {
                Cell::Text(text) => {
                    let value = parse_decimal(text).map_err(error)?;
                    let scaled = value
                        .checked_mul(*factor)
                        .ok_or_else(|| error(format!("{text} × {factor} overflows")))?
                        .normalize()
                        .to_string();
                    convert(&self.target, Cell::Text(&scaled)).map_err(error)
                }
                other => convert(&self.target, other).map_err(error),
            },
            BoundSource::Bucket { index, bucket } => match cell(*index) {
                Cell::Text(text) => {
                    let start = bucket_start(text, *bucket)
                        .ok_or_else(|| error(format!("{text:?} is not a date or timestamp")))?;
                    convert(&self.target, Cell::Text(&start)).map_err(error)
                }
                other => convert(&self.target, other).map_err(error),
            },
            BoundSource::Concat { parts, separator } => {
                let mut joined: Vec<Cow<str>> = Vec::new();
                for index in parts {
                    match cell(*index) {
                        Cell::Text(text) => joined.push(Cow::Borrowed(text)),
                        Cell::Null => {}
                        other => return convert(&self.target, other).map_err(error),
                    }
                }
                if joined.is_empty() {
                    return convert(&self.target, Cell::Null).map_err(error);
                }
                convert(&self.target, Cell::Text(&joined.join(separator))).map_err(error)
            }
        }
    }
}

fn parse_decimal(text: &str) -> Result<Decimal, String> {
    text.trim()
        .parse()
        .or_else(|_| Decimal::from_scientific(text.trim()))
        .map_err(|_| format!("{text:?} is not a decimal number"))
}

/// The first day (`YYYY-MM-DD`) of the period of `bucket` holding the date or timestamp `text`.
fn bucket_start(text: &str, bucket: Bucket) -> Option<String> {
    use chrono::{Datelike, NaiveDate};
    let date = chrono::DateTime::from_timestamp_millis(parse_time(text)?)?.date_naive();
    let start = match bucket {
        Bucket::Day => date,
        Bucket::Week => date - chrono::Days::new(u64::from(date.weekday().num_days_from_monday())),
        Bucket::Month => NaiveDate::from_ymd_opt(date.year(), date.month(), 1)?,
        Bucket::Quarter => NaiveDate::from_ymd_opt(date.year(), (date.month0() / 3) * 3 + 1, 1)?,
        Bucket::Year => NaiveDate::from_ymd_opt(date.year(), 1, 1)?,
    };
    Some(start.format("%Y-%m-%d").to_string())
}

/// Whether a transform can produce the target's type: scaling makes numbers, bucketing dates.
fn transform_fits(target: &Target, source: &FieldSource) -> Result<(), String> {
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
fn key_field(kind: EventKind) -> &'static str {
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
fn missing_required(
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

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Field(String),
    Index(usize),
}

fn render(segments: &[Segment]) -> String {
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

fn parse_path(path: &str) -> Option<Vec<Segment>> {
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
enum Leaf {
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
struct Target {
    segments: Vec<Segment>,
    leaf: Leaf,
    nullable: bool,
}

/// Resolves a field path of `kind` to a leaf type.
fn target(kind: EventKind, path: &str) -> Result<Target, String> {
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

fn unwrap_null(schema: &Schema) -> (&Schema, bool) {
    if let Schema::Union(union) = schema {
        let variants = union.variants();
        if variants.len() == 2 && variants[0] == Schema::Null {
            return (&variants[1], true);
        }
    }
    (schema, false)
}

/// A configured constant converted like a column's text.
fn constant(target: &Target, value: &Value) -> Result<Value, String> {
    match value {
        Value::Null => convert(target, Cell::Null),
        Value::String(s) => convert(target, Cell::Text(s)),
        Value::Array(_) | Value::Object(_) => convert(target, Cell::Text(&value.to_string())),
        other => convert(target, Cell::Text(&other.to_string())),
    }
    .map_err(|r| format!("the constant {r}"))
}

/// Converts one cell to the JSON the event struct deserializes for `target`.
fn convert(target: &Target, cell: Cell) -> Result<Value, String> {
    let text = match cell {
        Cell::Text(t) => t,
        // A deleted record's non-key fields are unknown: null where the contract allows.
        Cell::Null | Cell::Missing if target.nullable => return Ok(Value::Null),
        Cell::Null => return Err("is NULL; the field is required".into()),
        Cell::Unchanged => {
            return Err(
                "is an unchanged TOASTed value the change does not carry; set REPLICA IDENTITY FULL on the table"
                    .into(),
            );
        }
        Cell::Missing => {
            return Err(
                "is not in the change (a deleted row carries only its replica identity columns unless REPLICA IDENTITY FULL)"
                    .into(),
            );
        }
    };
    match &target.leaf {
        Leaf::String => Ok(Value::String(text.to_string())),
        Leaf::Integer => text
            .trim()
            .parse::<i64>()
            .map(Value::from)
            .map_err(|_| format!("{text:?} is not an integer")),
        Leaf::Timestamp => parse_time(text)
            .map(Value::from)
            .ok_or_else(|| format!("{text:?} is not a timestamp")),
        Leaf::Decimal(scale) => {
            let value = parse_decimal(text)?;
            let bytes = decimal::avro_bytes(value, *scale).map_err(|e| format!("{text} {e}"))?;
            Ok(Value::Array(bytes.into_iter().map(Value::from).collect()))
        }
        Leaf::Boolean => match text.trim() {
            "t" | "true" | "TRUE" | "1" | "y" | "yes" | "on" => Ok(Value::Bool(true)),
            "f" | "false" | "FALSE" | "0" | "n" | "no" | "off" => Ok(Value::Bool(false)),
            _ => Err(format!("{text:?} is not a boolean")),
        },
        Leaf::Enum(symbols) => symbols
            .iter()
            .find(|s| s.eq_ignore_ascii_case(text.trim()))
            .map(|s| Value::String(s.clone()))
            .ok_or_else(|| format!("{text:?} is not one of {}", symbols.join(", "))),
        Leaf::StringArray => parse_text_array(text)
            .map(|items| Value::Array(items.into_iter().map(Value::String).collect()))
            .ok_or_else(|| format!("{text:?} is not an array of text")),
        Leaf::StringMap => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => Ok(Value::Object(
                map.into_iter()
                    .map(|(k, v)| {
                        let v = match v {
                            Value::String(s) => s,
                            other => other.to_string(),
                        };
                        (k, Value::String(v))
                    })
                    .collect(),
            )),
            _ => Err(format!("{text:?} is not a JSON object")),
        },
    }
}

/// A Postgres timestamp (`2026-11-27 10:00:00.5+00`, with or without zone; without is UTC),
/// a date, RFC 3339, or epoch milliseconds → epoch ms.
pub fn parse_time(text: &str) -> Option<i64> {
    use chrono::{DateTime, NaiveDate, NaiveDateTime};
    let text = text.trim();
    if let Ok(ms) = text.parse::<i64>() {
        return Some(ms);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.timestamp_millis());
    }
    if let Ok(t) = DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z") {
        return Some(t.timestamp_millis());
    }
    if let Ok(t) = NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f") {
        return Some(t.and_utc().timestamp_millis());
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp_millis())
}

/// A JSON array of strings, or a one-dimensional Postgres array literal (`{a,"b c"}`).
fn parse_text_array(text: &str) -> Option<Vec<String>> {
    let text = text.trim();
    if text.starts_with('[') {
        let items: Vec<Value> = serde_json::from_str(text).ok()?;
        return items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Some(s),
                Value::Null => None,
                other => Some(other.to_string()),
            })
            .collect();
    }
    let inner = text.strip_prefix('{')?.strip_suffix('}')?;
    let mut items = Vec::new();
    if inner.is_empty() {
        return Some(items);
    }
    let mut chars = inner.chars().peekable();
    loop {
        let mut item = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '\\' => item.push(chars.next()?),
                    '"' => break,
                    c => item.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek().copied() {
                if c == ',' {
                    break;
                }
                item.push(c);
                chars.next();
            }
            if item == "NULL" {
                return None;
            }
        }
        items.push(item);
        match chars.next() {
            Some(',') => continue,
            None => return Some(items),
            Some(_) => return None,
        }
    }
}

fn set_path(object: &mut Map<String, Value>, segments: &[Segment], value: Value) {
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
fn fill_defaults(schema: &Schema, value: &mut Value) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(yaml: &str) -> Mapping {
        serde_yaml_ng::from_str(yaml).expect("mapping")
    }

    fn columns(names: &[(&str, bool)]) -> Vec<Column> {
        names
            .iter()
            .map(|(n, key)| Column {
                name: n.to_string(),
                key: *key,
            })
            .collect()
    }

    fn envelope() -> Envelope<'static> {
        Envelope {
            idempotency_key: "k",
            source: "db",
            source_system: "postgres",
            occurred_at: 1_000,
            ingested_at: 2_000,
        }
    }

    const STOCK: &str = "topic: inventory.change\nfields:\n  sku: item\n  location_code: { const: WH-1 }\n  new_quantity: qty\n";

    #[test]
    fn a_row_becomes_a_typed_event_with_exact_decimals() {
        let bound = Bound::new(
            &mapping(STOCK),
            EventKind::InventoryChange,
            &columns(&[("id", true), ("item", false), ("qty", false)]),
            "column",
        )
        .expect("bound");
        let row = [
            Cell::Text("1"),
            Cell::Text("SKU-1"),
            Cell::Text("45000.125"),
        ];
        let Mapped::InventoryChange(event) = bound.event(&row, None, &envelope()).expect("event")
        else {
            panic!("wrong kind")
        };
        assert_eq!(event.sku, "SKU-1");
        assert_eq!(event.location_code, "WH-1");
        assert_eq!(
            event.new_quantity,
            Some("45000.125".parse().expect("decimal"))
        );
        assert_eq!(event.occurred_at, 1_000);
        assert_eq!(event.quantity_change, None);
        assert_eq!(bound.identity(&row), "1");
    }

    #[test]
    fn bad_values_name_the_field_and_column() {
        let bound = Bound::new(
            &mapping(STOCK),
            EventKind::InventoryChange,
            &columns(&[("id", true), ("item", false), ("qty", false)]),
            "column",
        )
        .expect("bound");
        let err = bound
            .event(
                &[Cell::Text("1"), Cell::Text("S"), Cell::Text("1.0005")],
                None,
                &envelope(),
            )
            .expect_err("too precise");
        assert_eq!(err.field, "new_quantity");
        assert!(err.reason.contains("column qty"), "{err}");
        let err = bound
            .event(
                &[Cell::Text("1"), Cell::Null, Cell::Text("1")],
                None,
                &envelope(),
            )
            .expect_err("null sku");
        assert_eq!(err.field, "sku");
        let err = bound
            .event(
                &[Cell::Text("1"), Cell::Unchanged, Cell::Text("1")],
                None,
                &envelope(),
            )
            .expect_err("toast");
        assert!(err.reason.contains("REPLICA IDENTITY FULL"), "{err}");
        let from_old = bound
            .event(
                &[Cell::Text("1"), Cell::Unchanged, Cell::Text("1")],
                Some(&[Cell::Text("1"), Cell::Text("OLD"), Cell::Text("0")]),
                &envelope(),
            )
            .expect("from the old row");
        assert_eq!(from_old.key(), "OLD");
    }

    #[test]
    fn a_missing_column_is_refused_at_bind() {
        let err = Bound::new(
            &mapping(STOCK),
            EventKind::InventoryChange,
            &columns(&[("id", true), ("item", false)]),
            "column",
        )
        .expect_err("qty is gone");
        assert_eq!(err.field, "new_quantity");
        assert!(err.reason.contains("column qty does not exist"));
    }

    #[test]
    fn mappings_are_checked_against_the_contract() {
        let bad = mapping(
            "topic: catalog.update\nfields:\n  group_id: id\n  colour: c\n  variants[0].selling_price: { const: abc }\n  idempotency_key: x\n",
        );
        let problems = check(&bad, EventKind::CatalogUpdate);
        let paths: Vec<&str> = problems.iter().map(|(p, _)| p.as_str()).collect();
        assert!(paths.contains(&"fields.colour"), "{problems:?}");
        assert!(
            paths.contains(&"fields.variants[0].selling_price"),
            "{problems:?}"
        );
        assert!(paths.contains(&"fields.idempotency_key"), "{problems:?}");
        assert!(paths.contains(&"fields.group_name"), "{problems:?}");
        assert!(paths.contains(&"fields.variants[0].sku"), "{problems:?}");
        assert!(check(&mapping(STOCK), EventKind::InventoryChange).is_empty());
    }

    #[test]
    fn nested_lists_and_arrays_map_from_one_row() {
        let m = mapping(
            "topic: catalog.update\nfields:\n  group_id: id\n  group_name: name\n  is_active: active\n  category_path: path\n  variants[0].sku: id\n  variants[0].selling_price: price\n",
        );
        assert!(
            check(&m, EventKind::CatalogUpdate).is_empty(),
            "{:?}",
            check(&m, EventKind::CatalogUpdate)
        );
        let bound = Bound::new(
            &m,
            EventKind::CatalogUpdate,
            &columns(&[
                ("id", true),
                ("name", false),
                ("active", false),
                ("path", false),
                ("price", false),
            ]),
            "column",
        )
        .expect("bound");
        let row = [
            Cell::Text("G1"),
            Cell::Text("Shirt"),
            Cell::Text("t"),
            Cell::Text("{Men,\"Shirts, formal\"}"),
            Cell::Text("19.99"),
        ];
        let Mapped::CatalogUpdate(event) = bound.event(&row, None, &envelope()).expect("event")
        else {
            panic!("wrong kind")
        };
        assert_eq!(event.category_path, vec!["Men", "Shirts, formal"]);
        assert!(event.is_active);
        assert_eq!(event.variants.len(), 1);
        assert_eq!(
            event.variants[0].selling_price,
            Some("19.99".parse().expect("decimal"))
        );
    }

    #[test]
    fn deletes_become_tombstones_or_events() {
        let cols = columns(&[("item", true), ("qty", false)]);
        let m = mapping(
            "topic: inventory.change\nfields:\n  sku: item\n  location_code: { const: W }\n  new_quantity: qty\non_delete: { set: { new_quantity: 0, change_reason: DELETED } }\n",
        );
        let bound = Bound::new(&m, EventKind::InventoryChange, &cols, "column").expect("bound");
        let Deleted::Event(event) = bound
            .deleted(&[Cell::Text("S1"), Cell::Null], &envelope())
            .expect("delete")
        else {
            panic!("not an event")
        };
        let Mapped::InventoryChange(event) = *event else {
            panic!("wrong kind")
        };
        assert_eq!(event.new_quantity, Some(Decimal::ZERO));
        assert_eq!(event.change_reason.as_deref(), Some("DELETED"));
        let tombstone = Bound::new(
            &mapping(STOCK),
            EventKind::InventoryChange,
            &columns(&[("item", true), ("qty", false)]),
            "column",
        )
        .expect("bound");
        assert!(matches!(
            tombstone.deleted(&[Cell::Text("S1"), Cell::Null], &envelope()),
            Ok(Deleted::Tombstone(k)) if k == "S1"
        ));
    }

    #[test]
    fn transforms_concat_scale_and_bucket() {
        let m = mapping(
            "topic: inventory.change\nfields:\n  sku: { concat: [item, variant], separator: '-' }\n  location_code: { field: day, bucket: month }\n  new_quantity: { field: grams, scale: 0.001 }\n  change_reason: { field: day, bucket: week }\n",
        );
        assert!(check(&m, EventKind::InventoryChange).is_empty());
        let cols = columns(&[
            ("item", true),
            ("variant", true),
            ("day", false),
            ("grams", false),
        ]);
        let bound = Bound::new(&m, EventKind::InventoryChange, &cols, "field").expect("bound");
        let row = [
            Cell::Text("SHIRT"),
            Cell::Text("XL"),
            Cell::Text("2026-11-27 10:00:00"),
            Cell::Text("1250"),
        ];
        let Mapped::InventoryChange(event) = bound.event(&row, None, &envelope()).expect("event")
        else {
            panic!("wrong kind")
        };
        assert_eq!(event.sku, "SHIRT-XL");
        assert_eq!(event.location_code, "2026-11-01");
        assert_eq!(event.change_reason.as_deref(), Some("2026-11-23"));
        assert_eq!(event.new_quantity, Some("1.25".parse().expect("decimal")));
        let too_fine = [row[0], row[1], row[2], Cell::Text("0.5")];
        let err = bound
            .event(&too_fine, None, &envelope())
            .expect_err("0.0005 kg");
        assert_eq!(err.field, "new_quantity");
        let bad = mapping(
            "topic: inventory.change\nfields:\n  sku: item\n  location_code: { field: w, scale: 2 }\n  new_quantity: { field: d, bucket: month }\n",
        );
        let paths: Vec<String> = check(&bad, EventKind::InventoryChange)
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        assert_eq!(paths, ["fields.location_code", "fields.new_quantity"]);
    }

    #[test]
    fn postgres_timestamps_parse() {
        assert_eq!(parse_time("1970-01-01 00:00:01.5+00"), Some(1_500));
        assert_eq!(parse_time("1970-01-01 01:00:01+01"), Some(1_000));
        assert_eq!(parse_time("1970-01-01 00:00:02"), Some(2_000));
        assert_eq!(parse_time("1970-01-02"), Some(86_400_000));
        assert_eq!(parse_time("soon"), None);
    }
}

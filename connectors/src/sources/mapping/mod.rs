//! Source records → events, as declared in the topology (field mapping as data): each event
//! field path names a source field (a column, an API record's field), a constant, a
//! concatenation or a transformed field (exact unit scaling, date bucketing). Values are
//! converted from their text form to the field's Avro type (read from the bundled contract),
//! so a mapping is checked against the contract before anything runs and a record that does
//! not fit is refused with the field and the reason. Shared by `pg_cdc` and `rest_poll`.

mod check;
mod config;
mod convert;
mod path;

pub use check::{check, check_all};
pub use config::{Bucket, Concat, Const, DeleteMode, FieldSource, Mapping, OnDelete, Transform};
pub use convert::parse_time;

use check::{key_field, transform_fits};
use convert::{bucket_start, constant, convert, parse_decimal};
use path::{Target, fill_defaults, set_path, target};

use erpstream_schemas::codec::bundled_schema;
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

    /// The event as JSON (its Avro fields by name), for people.
    pub fn to_json(&self) -> Value {
        let json = match self {
            Mapped::InventoryChange(e) => serde_json::to_value(e),
            Mapped::CatalogUpdate(e) => serde_json::to_value(e),
            Mapped::SalesOrder(e) => serde_json::to_value(e),
            Mapped::DemandActual(e) => serde_json::to_value(e),
        };
        json.unwrap_or_else(|e| Value::String(e.to_string()))
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

/// One row given as JSON (column → value) through `mapping`, as a table with exactly these
/// columns would be mapped: values in their text form (strings as they are, numbers in
/// their exact JSON form, `true`/`false`, objects and arrays as JSON, `null` as NULL), every
/// column part of the identity. The operator console's mapping tester for `pg_cdc`; the
/// envelope is left empty (`occurred_at` 0 unless the mapping names a column).
pub fn map_json_row(
    mapping: &Mapping,
    kind: EventKind,
    row: &Map<String, Value>,
    noun: &'static str,
) -> Result<Mapped, RowError> {
    let columns: Vec<Column> = row
        .keys()
        .map(|name| Column {
            name: name.clone(),
            key: true,
        })
        .collect();
    let bound = Bound::new(mapping, kind, &columns, noun)?;
    let texts: Vec<Option<Cow<str>>> = row
        .values()
        .map(|value| match value {
            Value::Null => None,
            Value::String(s) => Some(Cow::Borrowed(s.as_str())),
            other => Some(Cow::Owned(other.to_string())),
        })
        .collect();
    let cells: Vec<Cell> = texts
        .iter()
        .map(|t| t.as_deref().map_or(Cell::Null, Cell::Text))
        .collect();
    bound.event(&cells, None, &Envelope::TESTER)
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

impl Envelope<'static> {
    /// The empty envelope a mapping tester maps with: no key, no source, time 0.
    pub const TESTER: Envelope<'static> = Envelope {
        idempotency_key: "",
        source: "",
        source_system: "",
        occurred_at: 0,
        ingested_at: 0,
    };
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

#[cfg(test)]
mod tests;

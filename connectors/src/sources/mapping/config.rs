use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer};

use crate::validation::Problem;

/// How one source record (a table row, an API record) becomes an event.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    /// Logical topic the records go to; its contract decides the event's fields.
    pub topic: String,
    /// Event field path (`sku`, `variants[0].selling_price`) → where its value comes from.
    pub fields: BTreeMap<String, FieldSource>,
    /// Source field holding the change's time; default: the source's own notion (commit
    /// time, poll time).
    #[serde(default)]
    pub occurred_at: Option<String>,
    /// What a deleted record becomes.
    #[serde(default)]
    pub on_delete: OnDelete,
}

/// Where an event field's value comes from. Source fields are columns for `pg_cdc` and
/// field names (dotted for nested objects) for `rest_poll`.
#[derive(Debug, Clone, Deserialize)]
#[serde(
    untagged,
    expecting = "a source field name, { const: V }, { field: F, scale: N }, { field: F, bucket: day|week|month|quarter|year } or { concat: [F, ...], separator: S }"
)]
pub enum FieldSource {
    /// A source field, converted to the event field's type (a rename).
    Column(String),
    /// A fixed value: `{ const: WH-01 }`.
    Const(Const),
    /// Source fields joined: `{ concat: [warehouse, bin], separator: "/" }`; null parts are
    /// left out.
    Concat(Concat),
    /// A source field transformed: `{ field: qty_g, scale: 0.001 }` (exact decimal
    /// multiplication), `{ field: invoice_date, bucket: month }` (the period's first day).
    Transform(Transform),
}

/// `{ const: V }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Const {
    /// The value.
    #[serde(rename = "const")]
    pub value: serde_json::Value,
}

/// `{ concat: [...], separator: S }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Concat {
    /// Source fields, in order.
    pub concat: Vec<String>,
    /// Put between parts; default none.
    #[serde(default)]
    pub separator: String,
}

/// `{ field: F, scale: N }` or `{ field: F, bucket: B }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transform {
    /// The source field.
    pub field: String,
    /// Multiplies a number exactly (unit conversion: `0.001` for grams → kilograms).
    #[serde(default, deserialize_with = "exact_decimal")]
    pub scale: Option<Decimal>,
    /// Replaces a date or timestamp with the first day of its period.
    #[serde(default)]
    pub bucket: Option<Bucket>,
}

/// A calendar period (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bucket {
    /// The date.
    Day,
    /// The ISO week's Monday.
    Week,
    /// The month's first day.
    Month,
    /// The quarter's first day.
    Quarter,
    /// January 1st.
    Year,
}

/// What a deleted record becomes.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OnDelete {
    /// `tombstone` (a null value under the record's key) or `skip`.
    Mode(DeleteMode),
    /// `{ set: { new_quantity: 0 } }`: an event built from what is known of the deleted
    /// record (its key fields) with these fields overridden.
    Event {
        /// Field path → fixed value.
        set: BTreeMap<String, serde_json::Value>,
    },
}

impl Default for OnDelete {
    fn default() -> Self {
        OnDelete::Mode(DeleteMode::Tombstone)
    }
}

/// A delete handled without building an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeleteMode {
    /// A record with the key and no value.
    Tombstone,
    /// Nothing is published.
    Skip,
}

impl FieldSource {
    /// The source fields it reads.
    pub fn inputs(&self) -> Vec<&str> {
        match self {
            FieldSource::Column(name) => vec![name.as_str()],
            FieldSource::Const(_) => Vec::new(),
            FieldSource::Concat(c) => c.concat.iter().map(String::as_str).collect(),
            FieldSource::Transform(t) => vec![t.field.as_str()],
        }
    }
}

impl Mapping {
    /// Every source field the mapping reads (fields and `occurred_at`), once each, in order
    /// of first use.
    pub fn inputs(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        let all = self
            .fields
            .values()
            .flat_map(FieldSource::inputs)
            .chain(self.occurred_at.as_deref());
        for name in all {
            if !names.contains(&name) {
                names.push(name);
            }
        }
        names
    }

    /// Checks what needs no contract: every source field reference names something, and a
    /// transform does one thing. `what` names a source field for the messages ("column").
    pub fn validate_inputs(&self, at: &str, what: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        for (path, source) in &self.fields {
            let at = format!("{at}.fields.{path}");
            if source.inputs().iter().any(|n| n.trim().is_empty()) {
                problems.push(Problem::new(&at, format!("must name a {what}")));
            }
            match source {
                FieldSource::Concat(c) if c.concat.is_empty() => {
                    problems.push(Problem::new(&at, "concat must list at least one field"));
                }
                FieldSource::Transform(t) if t.scale.is_some() == t.bucket.is_some() => {
                    problems.push(Problem::new(&at, "give exactly one of scale or bucket"));
                }
                FieldSource::Transform(t) if t.scale.is_some_and(|s| s.is_zero()) => {
                    problems.push(Problem::new(&at, "scale must not be 0"));
                }
                _ => {}
            }
        }
        if self
            .occurred_at
            .as_ref()
            .is_some_and(|c| c.trim().is_empty())
        {
            problems.push(Problem::new(
                format!("{at}.occurred_at"),
                format!("must name a {what}"),
            ));
        }
        problems
    }
}

/// A decimal written as a YAML number or string, read from its text so `0.001` is exact.
fn exact_decimal<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Decimal>, D::Error> {
    let value = serde_json::Value::deserialize(deserializer)?;
    let text = match &value {
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::String(s) => s.clone(),
        _ => return Err(serde::de::Error::custom("must be a number")),
    };
    text.trim()
        .parse::<Decimal>()
        .or_else(|_| Decimal::from_scientific(text.trim()))
        .map(Some)
        .map_err(|_| serde::de::Error::custom(format!("{text:?} is not a decimal number")))
}

//! Source values (text cells, JSON fields) converted to what the contract's field takes:
//! exact decimals, timestamps, dates, arrays, bucketed periods.

use erpstream_schemas::decimal;
use rust_decimal::Decimal;
use serde_json::Value;

use super::Cell;
use super::config::Bucket;
use super::path::{Leaf, Target};

pub(super) fn parse_decimal(text: &str) -> Result<Decimal, String> {
    text.trim()
        .parse()
        .or_else(|_| Decimal::from_scientific(text.trim()))
        .map_err(|_| format!("{text:?} is not a decimal number"))
}

/// The first day (`YYYY-MM-DD`) of the period of `bucket` holding the date or timestamp `text`.
pub(super) fn bucket_start(text: &str, bucket: Bucket) -> Option<String> {
    use chrono::{Datelike, NaiveDate};
    let date = chrono::DateTime::from_timestamp_millis(parse_time(text)?)?.date_naive();
    let start = match bucket {
        Bucket::Day => date,
        // The first week of the calendar has no Monday before it: no period, not a panic.
        Bucket::Week => date.checked_sub_days(chrono::Days::new(u64::from(
            date.weekday().num_days_from_monday(),
        )))?,
        Bucket::Month => NaiveDate::from_ymd_opt(date.year(), date.month(), 1)?,
        Bucket::Quarter => NaiveDate::from_ymd_opt(date.year(), (date.month0() / 3) * 3 + 1, 1)?,
        Bucket::Year => NaiveDate::from_ymd_opt(date.year(), 1, 1)?,
    };
    Some(start.format("%Y-%m-%d").to_string())
}

/// A configured constant converted like a column's text.
pub(super) fn constant(target: &Target, value: &Value) -> Result<Value, String> {
    match value {
        Value::Null => convert(target, Cell::Null),
        Value::String(s) => convert(target, Cell::Text(s)),
        Value::Array(_) | Value::Object(_) => convert(target, Cell::Text(&value.to_string())),
        other => convert(target, Cell::Text(&other.to_string())),
    }
    .map_err(|r| format!("the constant {r}"))
}

/// Converts one cell to the JSON the event struct deserializes for `target`.
pub(super) fn convert(target: &Target, cell: Cell) -> Result<Value, String> {
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
pub(super) fn parse_text_array(text: &str) -> Option<Vec<String>> {
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

//! Field-by-field validation of JSON request bodies: every refusal names the field (a dotted
//! path such as `line_items[0].sku`) and the rule.

use erpstream_schemas::decimal;
use rust_decimal::Decimal;
use serde::de::DeserializeOwned;

/// A refused field: `field` is a dotted path such as `data.variants[0].sku`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    /// Path of the offending field in the body.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl FieldError {
    pub(crate) fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

pub(crate) fn deserialize_at<'de, T, D>(prefix: &str, deserializer: D) -> Result<T, FieldError>
where
    T: DeserializeOwned,
    D: serde::Deserializer<'de>,
    D::Error: std::fmt::Display,
{
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner().to_string();
        if let Some(name) = missing_field(&inner) {
            let parent = if path == "." {
                String::new()
            } else {
                format!("{path}.")
            };
            return FieldError::new(format!("{prefix}{parent}{name}"), "is required");
        }
        let field = if path == "." || path == "?" {
            prefix.trim_end_matches('.').to_string()
        } else {
            format!("{prefix}{path}")
        };
        let field = if field.is_empty() {
            "body".to_string()
        } else {
            field
        };
        FieldError::new(field, clean_reason(&inner))
    })
}

fn missing_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("missing field `")?;
    rest.split('`').next()
}

pub(crate) fn clean_reason(message: &str) -> String {
    // serde_json appends " at line L column C"; the field path already says where.
    match message.find(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

pub(crate) fn require_text(field: &str, value: &str) -> Result<(), FieldError> {
    if value.trim().is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    if value.len() > 256 {
        return Err(FieldError::new(field, "must be at most 256 characters"));
    }
    Ok(())
}

pub(crate) fn check_decimal(
    field: &str,
    value: Option<Decimal>,
    scale: u32,
) -> Result<(), FieldError> {
    match value {
        Some(v) => decimal::check(v, scale).map_err(|e| FieldError::new(field, e.to_string())),
        None => Ok(()),
    }
}

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
        // With `arbitrary_precision`, a number is a map with this one key inside serde_json;
        // the field is the number itself.
        let path = err
            .path()
            .to_string()
            .replace(".$serde_json::private::Number", "");
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

/// The body as a JSON value: a refusal says whether it is not UTF-8 (and where), nested too
/// deep, or not JSON (with the line and column).
pub(crate) fn json_value(body: &[u8]) -> Result<serde_json::Value, FieldError> {
    require_utf8(body)?;
    serde_json::from_slice(body).map_err(|e| {
        let message = e.to_string();
        let reason = match message.strip_prefix("recursion limit exceeded") {
            Some(at) => {
                format!("is nested more than 128 levels deep (recursion limit exceeded{at})")
            }
            None => format!("is not valid JSON: {message}"),
        };
        FieldError::new("body", reason)
    })
}

/// Refuses a body that is not UTF-8, naming the first bad byte.
pub(crate) fn require_utf8(body: &[u8]) -> Result<(), FieldError> {
    std::str::from_utf8(body).map(|_| ()).map_err(|e| {
        FieldError::new(
            "body",
            format!(
                "is not UTF-8: byte {} starts an invalid sequence",
                e.valid_up_to()
            ),
        )
    })
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

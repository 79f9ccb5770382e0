//! Field-by-field validation of JSON request bodies: every refusal names the field (a dotted
//! path such as `line_items[0].sku`) and the rule.

use erpstream_schemas::decimal;
use rust_decimal::Decimal;
use serde::de::DeserializeOwned;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::{PartialSchema, ToSchema};

/// A refused field: `field` is a dotted path such as `data.variants[0].sku`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, ToSchema)]
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
    let value = serde_json::from_slice(body).map_err(|e| {
        let message = e.to_string();
        let reason = match message.strip_prefix("recursion limit exceeded") {
            Some(at) => {
                format!("is nested more than 128 levels deep (recursion limit exceeded{at})")
            }
            None => format!("is not valid JSON: {message}"),
        };
        FieldError::new("body", reason)
    })?;
    refuse_nul("", &value)?;
    Ok(value)
}

/// Refuses a text anywhere in `value` (a key or a string) holding U+0000, which no Postgres
/// text column holds: the request stores, the planning tables and the ERP's own database
/// would refuse it later, where nobody can tell the sender. `prefix` is `value`'s path.
pub(crate) fn refuse_nul(prefix: &str, value: &serde_json::Value) -> Result<(), FieldError> {
    use serde_json::Value;
    let refusal = |path: String| {
        // The path may hold the NUL itself (a key); the answer is stored in Postgres too.
        let field = if path.is_empty() {
            "body".into()
        } else {
            path.replace('\0', "\\u0000")
        };
        FieldError::new(field, "must not contain the NUL character (U+0000)")
    };
    match value {
        Value::String(text) if text.contains('\0') => Err(refusal(prefix.to_string())),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, item)| refuse_nul(&format!("{prefix}[{i}]"), item)),
        Value::Object(fields) => fields.iter().try_for_each(|(key, field)| {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            if key.contains('\0') {
                return Err(refusal(path));
            }
            refuse_nul(&path, field)
        }),
        _ => Ok(()),
    }
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

/// The most characters a text field (a sku, a location, an id) may have.
pub const TEXT_MAX_CHARS: usize = 256;

pub(crate) fn require_text(field: &str, value: &str) -> Result<(), FieldError> {
    if value.trim().is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    if value.contains('\0') {
        return Err(FieldError::new(
            field,
            "must not contain the NUL character (U+0000)",
        ));
    }
    if value.chars().count() > TEXT_MAX_CHARS {
        return Err(FieldError::new(
            field,
            format!("must be at most {TEXT_MAX_CHARS} characters"),
        ));
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

/// Reads an optional whole number that fits an `i32`, written as JSON writes it: `14`, and
/// also `14.0` (JSON Schema's `integer` takes both, and so do JavaScript senders).
pub(crate) fn whole_i32<'de, D>(deserializer: D) -> Result<Option<i32>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::Deserialize;
    use serde::de::Error;
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    let text = number.to_string();
    let value = text
        .parse::<Decimal>()
        .or_else(|_| Decimal::from_scientific(&text))
        .map_err(|_| D::Error::custom("must be a whole number"))?;
    if !value.fract().is_zero() {
        return Err(D::Error::custom("must be a whole number"));
    }
    rust_decimal::prelude::ToPrimitive::to_i32(&value)
        .map(Some)
        .ok_or_else(|| D::Error::custom("must be between -2147483648 and 2147483647"))
}

/// The characters `str::trim` takes for blanks (Unicode `White_Space`), as ranges: spelled
/// out for the document, because `\s` means other sets in other regex engines.
const WHITE_SPACE: [(char, char); 10] = [
    ('\u{9}', '\u{d}'),
    (' ', ' '),
    ('\u{85}', '\u{85}'),
    ('\u{a0}', '\u{a0}'),
    ('\u{1680}', '\u{1680}'),
    ('\u{2000}', '\u{200a}'),
    ('\u{2028}', '\u{2029}'),
    ('\u{202f}', '\u{202f}'),
    ('\u{205f}', '\u{205f}'),
    ('\u{3000}', '\u{3000}'),
];

/// What [`require_text`] takes, as an ECMA-262 pattern: no NUL, and some character that is
/// neither NUL nor blank.
fn text_pattern() -> String {
    let escape = |c: char| format!("\\u{:04X}", u32::from(c));
    let blanks: String = WHITE_SPACE
        .iter()
        .map(|&(from, to)| {
            if from == to {
                escape(from)
            } else {
                format!("{}-{}", escape(from), escape(to))
            }
        })
        .collect();
    format!("^[^\\u0000]*[^\\u0000{blanks}][^\\u0000]*$")
}

/// The OpenAPI shape of a field [`require_text`] checks: 1 to 256 characters, not blank.
pub struct Text;

/// The OpenAPI shape of a quantity [`check_decimal`] checks: a number with at most 3
/// decimal places and 18 digits.
pub struct Quantity;

/// A [`Quantity`] above 0 (an ordered quantity).
pub struct PositiveQuantity;

/// A [`Quantity`] other than 0 (a relative change).
pub struct QuantityChange;

/// The OpenAPI shape of an amount of money [`check_decimal`] checks, not negative: a number
/// with at most 4 decimal places and 18 digits.
pub struct Money;

impl PartialSchema for Text {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(TEXT_MAX_CHARS))
            .pattern(Some(text_pattern()))
            .description(Some(
                "1 to 256 characters, not only blanks, without the NUL character",
            ))
            .into()
    }
}

impl ToSchema for Text {}

/// Which values of an exact decimal a field takes.
#[derive(Clone, Copy)]
enum Sign {
    Any,
    Positive,
    Negative,
    NotNegative,
}

/// A number with at most `scale` decimal places and 18 digits, of `sign`. The bound is the
/// first value with 19 digits, which (unlike the largest with 18) a JSON Schema number holds
/// exactly.
fn exact_number(scale: u32, sign: Sign) -> ObjectBuilder {
    let step = 10f64.powi(-(scale as i32));
    let bound = 10f64.powi(18 - scale as i32);
    let number = ObjectBuilder::new()
        .schema_type(Type::Number)
        .multiple_of(Some(step));
    let (low, high) = match sign {
        Sign::Any => (Some(-bound), Some(bound)),
        Sign::Positive => (Some(0.0), Some(bound)),
        Sign::Negative => (Some(-bound), Some(0.0)),
        Sign::NotNegative => (None, Some(bound)),
    };
    let number = number.exclusive_minimum(low).exclusive_maximum(high);
    match sign {
        Sign::NotNegative => number.minimum(Some(0.0)),
        _ => number,
    }
}

fn described(number: ObjectBuilder, scale: u32, what: &str) -> RefOr<Schema> {
    number
        .description(Some(format!(
            "{what}: an exact decimal with at most {scale} decimal places and 18 digits \
             (more places are refused, never rounded)"
        )))
        .into()
}

impl PartialSchema for Quantity {
    fn schema() -> RefOr<Schema> {
        let scale = decimal::QUANTITY_SCALE;
        described(exact_number(scale, Sign::Any), scale, "A quantity")
    }
}

impl ToSchema for Quantity {}

impl PartialSchema for PositiveQuantity {
    fn schema() -> RefOr<Schema> {
        let scale = decimal::QUANTITY_SCALE;
        described(
            exact_number(scale, Sign::Positive),
            scale,
            "A quantity above 0",
        )
    }
}

impl ToSchema for PositiveQuantity {}

impl PartialSchema for QuantityChange {
    fn schema() -> RefOr<Schema> {
        let scale = decimal::QUANTITY_SCALE;
        OneOfBuilder::new()
            .item(exact_number(scale, Sign::Negative))
            .item(exact_number(scale, Sign::Positive))
            .description(Some(format!(
                "A relative change other than 0 (negative deducts): an exact decimal with at \
                 most {scale} decimal places and 18 digits"
            )))
            .into()
    }
}

impl ToSchema for QuantityChange {}

impl PartialSchema for Money {
    fn schema() -> RefOr<Schema> {
        let scale = decimal::MONEY_SCALE;
        described(
            exact_number(scale, Sign::NotNegative),
            scale,
            "An amount, not negative",
        )
    }
}

impl ToSchema for Money {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_blanks_are_the_ones_trim_takes() {
        for c in (0..=0x10FFFF).filter_map(char::from_u32) {
            let listed = WHITE_SPACE
                .iter()
                .any(|&(from, to)| (from..=to).contains(&c));
            assert_eq!(listed, c.is_whitespace(), "U+{:04X}", u32::from(c));
        }
        assert_eq!(
            text_pattern(),
            "^[^\\u0000]*[^\\u0000\\u0009-\\u000D\\u0020\\u0085\\u00A0\\u1680\\u2000-\\u200A\\u2028-\\u2029\\u202F\\u205F\\u3000][^\\u0000]*$"
        );
    }

    #[test]
    fn whole_numbers_are_read_with_or_without_a_fraction_of_zero() {
        #[derive(serde::Deserialize)]
        struct Days {
            #[serde(default, deserialize_with = "whole_i32")]
            days: Option<i32>,
        }
        let days = |json: &str| serde_json::from_str::<Days>(json).map(|d| d.days);
        assert_eq!(days(r#"{"days": 14}"#).ok(), Some(Some(14)));
        assert_eq!(days(r#"{"days": 936.0}"#).ok(), Some(Some(936)));
        assert_eq!(days(r#"{"days": 1e2}"#).ok(), Some(Some(100)));
        assert_eq!(days(r#"{"days": null}"#).ok(), Some(None));
        assert_eq!(days("{}").ok(), Some(None));
        assert!(days(r#"{"days": 1.5}"#).is_err());
        assert!(days(r#"{"days": 2147483648}"#).is_err());
        assert!(days(r#"{"days": "14"}"#).is_err());
    }

    #[test]
    fn a_nul_anywhere_in_a_body_is_refused_with_its_path() {
        let refused = json_value(br#"{"a": [{"b": "x\u0000y"}]}"#).expect_err("NUL");
        assert_eq!(refused.field, "a[0].b");
        let refused = json_value(br#"{"k\u0000": 1}"#).expect_err("NUL in a key");
        assert_eq!(refused.field, "k\\u0000");
        assert!(require_text("sku", "A\u{0}").is_err());
        assert!(require_text("sku", &"é".repeat(TEXT_MAX_CHARS)).is_ok());
    }
}

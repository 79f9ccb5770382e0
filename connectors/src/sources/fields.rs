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

/// The most characters a text field (a sku, a location, an id) may have.
pub const TEXT_MAX_CHARS: usize = 256;

pub(crate) fn require_text(field: &str, value: &str) -> Result<(), FieldError> {
    if value.trim().is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
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
            .pattern(Some(r"\S"))
            .description(Some("1 to 256 characters, not only blanks"))
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

/// A number with at most `scale` decimal places and 18 digits, of `sign`.
fn exact_number(scale: u32, sign: Sign) -> ObjectBuilder {
    let step = 10f64.powi(-(scale as i32));
    let max = 10f64.powi(18 - scale as i32) - step;
    let number = ObjectBuilder::new()
        .schema_type(Type::Number)
        .multiple_of(Some(step))
        .minimum(Some(-max))
        .maximum(Some(max));
    match sign {
        Sign::Any => number,
        Sign::Positive => number.exclusive_minimum(Some(0.0)),
        Sign::Negative => number.exclusive_maximum(Some(0.0)),
        Sign::NotNegative => number.minimum(Some(0.0)),
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

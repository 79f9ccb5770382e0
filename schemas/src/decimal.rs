//! Exact decimals in Avro's `decimal` logical type (bytes: big-endian two's complement of the
//! unscaled value). Quantities use scale 3 and money scale 4; a value with more fractional
//! digits than its schema allows is refused rather than rounded.

use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serializer, de::Error as _, ser::Error as _};

/// Scale of every quantity field (`decimal(18,3)`).
pub const QUANTITY_SCALE: u32 = 3;
/// Scale of every money field (`decimal(18,4)`).
pub const MONEY_SCALE: u32 = 4;
/// Largest unscaled value that fits `precision = 18`.
const MAX_UNSCALED: i128 = 999_999_999_999_999_999;

/// Why a decimal does not fit its Avro field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecimalError {
    /// More fractional digits than the field's scale.
    #[error("has more than {0} decimal places")]
    TooPrecise(u32),
    /// More than 18 significant digits at the field's scale.
    #[error("is too large (at most 18 digits)")]
    TooLarge,
}

/// An exact JSON number with the value's significant digits (`14`, `45000.5`), relying on
/// serde_json's `arbitrary_precision`.
pub fn json_number(value: Decimal) -> serde_json::Value {
    value
        .normalize()
        .to_string()
        .parse::<serde_json::Number>()
        .map(serde_json::Value::Number)
        .unwrap_or(serde_json::Value::Null)
}

/// The unscaled integer of `value` at `scale`, refusing rounding and overflow.
pub fn unscaled(value: Decimal, scale: u32) -> Result<i128, DecimalError> {
    let normalized = value.normalize();
    if normalized.scale() > scale {
        return Err(DecimalError::TooPrecise(scale));
    }
    let mantissa = normalized.mantissa() * 10i128.pow(scale - normalized.scale());
    if mantissa.abs() > MAX_UNSCALED {
        return Err(DecimalError::TooLarge);
    }
    Ok(mantissa)
}

/// Checks that `value` fits a field of `scale`; used to validate input before it is accepted.
pub fn check(value: Decimal, scale: u32) -> Result<(), DecimalError> {
    unscaled(value, scale).map(|_| ())
}

/// `value` as the bytes of an Avro `decimal` of `scale` (8 bytes, big-endian two's
/// complement), refusing rounding and overflow.
pub fn avro_bytes(value: Decimal, scale: u32) -> Result<Vec<u8>, DecimalError> {
    // Always 8 bytes (sign-extended): apache-avro refuses a `bytes` decimal shorter than its
    // precision needs, and 8 bytes hold every 18-digit value. Readers accept any length.
    let unscaled = i64::try_from(unscaled(value, scale)?).map_err(|_| DecimalError::TooLarge)?;
    Ok(unscaled.to_be_bytes().to_vec())
}

fn from_bytes(bytes: &[u8], scale: u32) -> Option<Decimal> {
    if bytes.is_empty() || bytes.len() > 16 {
        return None;
    }
    let fill = if bytes[0] & 0x80 != 0 { 0xff } else { 0x00 };
    let mut buf = [fill; 16];
    buf[16 - bytes.len()..].copy_from_slice(bytes);
    Decimal::try_from_i128_with_scale(i128::from_be_bytes(buf), scale).ok()
}

macro_rules! scaled_module {
    ($name:ident, $scale:expr, $doc:literal) => {
        #[doc = $doc]
        pub mod $name {
            use super::*;

            /// Serializes as Avro decimal bytes.
            pub fn serialize<S: Serializer>(value: &Decimal, s: S) -> Result<S::Ok, S::Error> {
                let bytes = avro_bytes(*value, $scale).map_err(S::Error::custom)?;
                s.serialize_bytes(&bytes)
            }

            /// Deserializes from Avro decimal bytes.
            pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
                let bytes = serde_bytes_like(d)?;
                from_bytes(&bytes, $scale).ok_or_else(|| D::Error::custom("invalid decimal bytes"))
            }

            /// The same for optional fields (Avro union with null).
            pub mod option {
                use super::*;

                /// Serializes `None` as null, `Some` as Avro decimal bytes.
                pub fn serialize<S: Serializer>(
                    value: &Option<Decimal>,
                    s: S,
                ) -> Result<S::Ok, S::Error> {
                    match value {
                        None => s.serialize_none(),
                        Some(v) => {
                            let bytes = avro_bytes(*v, $scale).map_err(S::Error::custom)?;
                            s.serialize_some(&serde_bytes_wrapper(&bytes))
                        }
                    }
                }

                /// Deserializes null or Avro decimal bytes.
                pub fn deserialize<'de, D: Deserializer<'de>>(
                    d: D,
                ) -> Result<Option<Decimal>, D::Error> {
                    let bytes: Option<ByteBuf> = Option::deserialize(d)?;
                    bytes
                        .map(|b| {
                            from_bytes(&b.0, $scale)
                                .ok_or_else(|| D::Error::custom("invalid decimal bytes"))
                        })
                        .transpose()
                }
            }
        }
    };
}

scaled_module!(
    quantity,
    QUANTITY_SCALE,
    "Serde for quantity fields, `decimal(18,3)`."
);
scaled_module!(
    money,
    MONEY_SCALE,
    "Serde for money fields, `decimal(18,4)`."
);

/// Owned bytes that deserialize from Avro `bytes` (or a sequence of u8).
struct ByteBuf(Vec<u8>);

impl<'de> Deserialize<'de> for ByteBuf {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ByteBuf;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("decimal bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<ByteBuf, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = a.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(ByteBuf(out))
            }
        }
        d.deserialize_bytes(V)
    }
}

fn serde_bytes_like<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    ByteBuf::deserialize(d).map(|b| b.0)
}

/// Serializes a byte slice as `bytes` (not as a sequence) inside `serialize_some`.
struct BytesRef<'a>(&'a [u8]);

impl serde::Serialize for BytesRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

fn serde_bytes_wrapper(bytes: &[u8]) -> BytesRef<'_> {
    BytesRef(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn round_trips_exactly() {
        for text in [
            "45000.00",
            "0.001",
            "-1",
            "-128.5",
            "999999999999999.999",
            "0",
        ] {
            let d = Decimal::from_str(text).unwrap();
            let bytes = avro_bytes(d, QUANTITY_SCALE).unwrap();
            assert_eq!(
                from_bytes(&bytes, QUANTITY_SCALE).unwrap().normalize(),
                d.normalize()
            );
        }
    }

    #[test]
    fn big_endian_twos_complement() {
        assert_eq!(
            avro_bytes(Decimal::from(1), 0).unwrap(),
            vec![0, 0, 0, 0, 0, 0, 0, 0x01]
        );
        assert_eq!(avro_bytes(Decimal::from(-1), 0).unwrap(), vec![0xff; 8]);
        assert_eq!(from_bytes(&[0xff, 0x7f], 0).unwrap(), Decimal::from(-129));
        assert_eq!(from_bytes(&[0x00, 0x80], 0).unwrap(), Decimal::from(128));
    }

    #[test]
    fn refuses_rounding_and_overflow() {
        let d = Decimal::from_str("1.0005").unwrap();
        assert_eq!(check(d, QUANTITY_SCALE), Err(DecimalError::TooPrecise(3)));
        let big = Decimal::from_str("1000000000000000").unwrap();
        assert_eq!(check(big, QUANTITY_SCALE), Err(DecimalError::TooLarge));
    }
}

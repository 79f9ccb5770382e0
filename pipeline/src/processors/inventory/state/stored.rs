//! A sku's state as its changelog value: a compact binary layout, written and read without
//! a text step (the JSON this replaced cost more than the state change itself, per change,
//! and a restore parsed every value).
//!
//! Layout (integers little-endian, lengths `u32`, strings UTF-8 with their length first,
//! decimals as `rust_decimal`'s 16-byte form):
//! ```text
//! 0x02  version:i64
//!       read:    count, then (topic, offset:i64) each
//!       locations: count, then per location (by code):
//!         code  on_hand reserved safety_stock available  version as_of erp_time erp_offset
//!         holds: count, then (reference, quantity, held_at:i64, 0 | 1 written_back_at:i64)
//!         ended: count, then (reference, at:i64)
//! ```
//! A value that does not start with `0x02` is the JSON form of earlier versions (read, never
//! written).

use std::collections::BTreeMap;

use compact_str::CompactString;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use super::{Hold, LocationState, Locations, ReadUpTo, SkuState};
use crate::processors::Topics;

/// First byte of the binary form.
const BINARY: u8 = 2;

/// Why a changelog value could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StoredError {
    /// The binary form ends early or holds an impossible field.
    #[error("binary inventory state: {0} at byte {1}")]
    Binary(&'static str, usize),
    /// The JSON form of earlier versions does not parse.
    #[error("inventory state (JSON): {0}")]
    Json(#[from] serde_json::Error),
}

/// The JSON form of earlier versions: read offsets by topic name.
#[derive(Serialize, Deserialize)]
struct SkuJson {
    version: i64,
    locations: Locations,
    #[serde(default)]
    read: BTreeMap<String, i64>,
}

impl SkuState {
    /// The changelog value; `topics` names the read offsets' topics.
    pub fn to_bytes(&self, topics: &Topics) -> Vec<u8> {
        let mut out = Writer(Vec::with_capacity(24 + 160 * self.locations.0.len()));
        out.0.push(BINARY);
        out.i64(self.version);
        out.len(self.read.len());
        for (topic, offset) in self.read.iter() {
            out.str(topics.name(topic));
            out.i64(offset);
        }
        out.len(self.locations.0.len());
        for (code, l) in self.locations.iter() {
            out.str(code);
            for figure in [l.on_hand, l.reserved(), l.safety_stock, l.available()] {
                out.0.extend_from_slice(&figure.serialize());
            }
            for number in [l.version, l.as_of, l.erp_time, l.erp_offset] {
                out.i64(number);
            }
            out.len(l.holds().len());
            for (reference, hold) in l.holds().iter() {
                out.str(reference);
                out.0.extend_from_slice(&hold.quantity.serialize());
                out.i64(hold.held_at);
                match hold.written_back_at {
                    None => out.0.push(0),
                    Some(at) => {
                        out.0.push(1);
                        out.i64(at);
                    }
                }
            }
            out.len(l.ended().len());
            for (reference, at) in l.ended().iter() {
                out.str(reference);
                out.i64(*at);
            }
        }
        out.0
    }

    /// A changelog value, binary or (from earlier versions) JSON; its topics are added to
    /// `topics`.
    pub fn from_bytes(value: &[u8], topics: &mut Topics) -> Result<Self, StoredError> {
        match value.split_first() {
            Some((&BINARY, _)) => Reader { value, at: 1 }.sku(topics),
            _ => {
                let json: SkuJson = serde_json::from_slice(value)?;
                let mut read = ReadUpTo::default();
                for (topic, offset) in json.read {
                    read.advance(topics.index(&topic), offset);
                }
                Ok(SkuState {
                    version: json.version,
                    locations: json.locations,
                    read,
                })
            }
        }
    }

    /// The JSON form of earlier versions (for tests of reading it).
    #[cfg(test)]
    pub fn to_json(&self, topics: &Topics) -> Vec<u8> {
        let json = SkuJson {
            version: self.version,
            locations: self.locations.clone(),
            read: self
                .read
                .iter()
                .map(|(topic, offset)| (topics.name(topic).to_string(), offset))
                .collect(),
        };
        serde_json::to_vec(&json).expect("a state serializes")
    }
}

struct Writer(Vec<u8>);

impl Writer {
    fn i64(&mut self, n: i64) {
        self.0.extend_from_slice(&n.to_le_bytes());
    }
    fn len(&mut self, n: usize) {
        self.0
            .extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        self.len(s.len());
        self.0.extend_from_slice(s.as_bytes());
    }
}

struct Reader<'a> {
    value: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StoredError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.value.len())
            .ok_or(StoredError::Binary("ends early", self.at))?;
        let bytes = &self.value[self.at..end];
        self.at = end;
        Ok(bytes)
    }
    fn i64(&mut self) -> Result<i64, StoredError> {
        let bytes = self.take(8)?;
        Ok(i64::from_le_bytes(bytes.try_into().expect("8 bytes")))
    }
    fn len(&mut self) -> Result<usize, StoredError> {
        let bytes = self.take(4)?;
        Ok(u32::from_le_bytes(bytes.try_into().expect("4 bytes")) as usize)
    }
    /// A count of items at least `min_size` bytes each: never more than the bytes left
    /// could hold, so a corrupt count cannot make a huge allocation.
    fn count(&mut self, min_size: usize) -> Result<usize, StoredError> {
        let at = self.at;
        let n = self.len()?;
        if n.saturating_mul(min_size) > self.value.len() - self.at {
            return Err(StoredError::Binary("count larger than the value", at));
        }
        Ok(n)
    }
    fn str(&mut self) -> Result<&'a str, StoredError> {
        let n = self.len()?;
        let at = self.at;
        let bytes = self.take(n)?;
        std::str::from_utf8(bytes).map_err(|_| StoredError::Binary("not UTF-8", at))
    }
    fn string(&mut self) -> Result<String, StoredError> {
        self.str().map(str::to_string)
    }
    fn decimal(&mut self) -> Result<Decimal, StoredError> {
        let at = self.at;
        let bytes: [u8; 16] = self.take(16)?.try_into().expect("16 bytes");
        // Flags: scale in bits 16..24 (at most 28), sign in bit 31, nothing else.
        let flags = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes"));
        if flags & 0x7F00_FFFF != 0 || (flags >> 16) & 0xFF > 28 {
            return Err(StoredError::Binary("not a decimal", at));
        }
        Ok(Decimal::deserialize(bytes))
    }

    fn sku(mut self, topics: &mut Topics) -> Result<SkuState, StoredError> {
        let version = self.i64()?;
        // Exact capacities: a million restored states must not each carry a grown vector's
        // spare room.
        let count = self.count(12)?;
        let mut read = ReadUpTo::default();
        for _ in 0..count {
            let topic = topics.index(self.str()?);
            let at = self.at;
            let offset = self.i64()?;
            if offset < 0 {
                return Err(StoredError::Binary("negative offset", at));
            }
            read.advance(topic, offset);
        }
        let count = self.count(108)?;
        let mut locations = SmallVec::with_capacity(count);
        for _ in 0..count {
            let code = CompactString::from(self.str()?);
            let on_hand = self.decimal()?;
            // `reserved` and `available` are derived from the rest: read past them.
            self.decimal()?;
            let safety_stock = self.decimal()?;
            self.decimal()?;
            let mut l = LocationState {
                on_hand,
                safety_stock,
                version: self.i64()?,
                as_of: self.i64()?,
                erp_time: self.i64()?,
                erp_offset: self.i64()?,
                ..LocationState::default()
            };
            for _ in 0..self.count(29)? {
                let reference = self.string()?;
                let quantity = self.decimal()?;
                let held_at = self.i64()?;
                let at = self.at;
                let written_back_at = match self.take(1)?[0] {
                    0 => None,
                    1 => Some(self.i64()?),
                    _ => return Err(StoredError::Binary("not a flag", at)),
                };
                l.hold(
                    reference,
                    Hold {
                        quantity,
                        held_at,
                        written_back_at,
                    },
                );
            }
            for _ in 0..self.count(12)? {
                let reference = self.string()?;
                let at = self.i64()?;
                l.ended_at(reference, at);
            }
            if locations.last().is_some_and(|(last, _)| *last >= code) {
                return Err(StoredError::Binary("locations out of order", self.at));
            }
            locations.push((code, l));
        }
        if self.at != self.value.len() {
            return Err(StoredError::Binary("bytes after the state", self.at));
        }
        Ok(SkuState {
            version,
            locations: Locations(locations),
            read,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The topics [`state`] names.
    fn topics() -> Topics {
        let mut topics = Topics::default();
        topics.index("t.inventory.change");
        topics.index("t.inventory.reservation");
        topics
    }

    fn state() -> SkuState {
        let mut state = SkuState {
            version: 7,
            ..SkuState::default()
        };
        state.read.advance(0, 41);
        state.read.advance(1, 9);
        let mut holds = BTreeMap::new();
        holds.insert(
            "ORD-1".to_string(),
            Hold {
                quantity: Decimal::new(15, 1),
                held_at: 1_764_000_000_000,
                written_back_at: Some(1_764_000_000_500),
            },
        );
        holds.insert(
            "ORD-2".to_string(),
            Hold {
                quantity: Decimal::from(2),
                held_at: 1_764_000_000_001,
                written_back_at: None,
            },
        );
        let mut a = LocationState {
            on_hand: Decimal::new(-12345, 3),
            safety_stock: Decimal::ONE,
            version: 5,
            as_of: 1_764_000_000_002,
            erp_time: 1_764_000_000_003,
            erp_offset: 40,
            ..LocationState::default()
        };
        for (reference, hold) in holds {
            a.hold(reference, hold);
        }
        a.ended_at("ORD-0".to_string(), 1_763_000_000_000);
        state.locations.insert("WH-A", a);
        state.locations.insert(
            "WH-B",
            LocationState {
                on_hand: Decimal::from(3),
                version: 2,
                ..LocationState::default()
            },
        );
        state
    }

    #[test]
    fn the_binary_form_reads_back_as_the_same_state() {
        let state = state();
        let bytes = state.to_bytes(&topics());
        assert_eq!(bytes[0], BINARY);
        assert_eq!(SkuState::from_bytes(&bytes, &mut topics()).unwrap(), state);
        assert!(bytes.len() < state.to_json(&topics()).len());
    }

    #[test]
    fn the_json_of_earlier_versions_still_reads() {
        let state = state();
        let json = state.to_json(&topics());
        assert_eq!(
            SkuState::from_bytes(&json, &mut Topics::default()).unwrap(),
            state
        );
    }

    #[test]
    fn a_damaged_value_is_an_error_never_a_panic_or_a_huge_allocation() {
        let bytes = state().to_bytes(&topics());
        for end in 1..bytes.len() {
            assert!(
                SkuState::from_bytes(&bytes[..end], &mut topics()).is_err(),
                "cut at {end} read as a state"
            );
        }
        let mut huge = vec![BINARY];
        huge.extend_from_slice(&0i64.to_le_bytes());
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        let error = SkuState::from_bytes(&huge, &mut topics())
            .unwrap_err()
            .to_string();
        assert!(error.contains("count larger than the value"), "{error}");
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(SkuState::from_bytes(&trailing, &mut topics()).is_err());
        let mut flipped = bytes;
        // The first location's on_hand flags (after version, read and the code).
        let flags = 1 + 8 + 4 + (4 + 18 + 8) + (4 + 23 + 8) + 4 + (4 + 4);
        flipped[flags + 2] = 99; // scale 99
        assert!(SkuState::from_bytes(&flipped, &mut topics()).is_err());
    }
}

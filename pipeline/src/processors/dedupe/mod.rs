//! `dedupe`: drops records whose idempotency key was already seen within `retention`.
//!
//! State: per input partition, idempotency key → when it was first seen (epoch ms) and the
//! record that carried it (input topic and offset). Keys older than the retention are
//! skipped at restore and purged (with tombstones) as processing goes on, so the compacted
//! changelog stays bounded. Repeats of the same key always land in the same partition
//! because the record key (sku, group id) is part of what the sender repeats.
//!
//! The record that first carried a key is let through again when it is read again (a batch
//! re-run after a crash: its changelog write may have become durable while the next
//! processor's did not); the next processor recognises what it already applied by offset.
//!
//! Changelog value: `0x01`, first-seen ms and offset (8 bytes each, big-endian), then the
//! topic name. A value written before origins were kept is the ms as decimal text.

use std::collections::HashMap;
use std::time::Duration;

use erpstream_connectors::validation::Problem;
use serde::Deserialize;

use erpstream_connectors::component::Names;
use erpstream_schemas::EventKind;

use super::{Built, Effects, Emit, Processor, ProcessorConfig, Record, Topics};
use erpstream_connectors::metrics as m;

/// Component type name in the topology.
pub const TYPE: &str = "dedupe";
/// Records processed between two purges of expired keys.
const PURGE_EVERY: u64 = 10_000;

/// Configuration of a `dedupe` processor.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupeConfig {
    /// Topics (or an upstream processor) to read.
    pub inputs: Vec<String>,
    /// How long an idempotency key is remembered.
    #[serde(default = "default_retention", with = "humantime_serde")]
    pub retention: Duration,
    /// Topic to write surviving records to, when no processor reads this one.
    #[serde(default)]
    pub output: Option<String>,
}

fn default_retention() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

impl ProcessorConfig for DedupeConfig {
    const TYPE: &'static str = TYPE;

    /// Checks the rules no type can express.
    fn validate(&self, at: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.retention.is_zero() {
            problems.push(Problem::new(format!("{at}.retention"), "must be > 0"));
        }
        problems
    }

    fn inputs(&self) -> &[String] {
        &self.inputs
    }

    fn output(&self) -> Option<&str> {
        self.output.as_deref()
    }

    fn accepts(&self) -> &'static [EventKind] {
        &EventKind::ALL
    }

    /// What it reads, less the repeats.
    fn produces(&self, inputs: &[EventKind]) -> Vec<EventKind> {
        inputs.to_vec()
    }

    fn build(&self, id: &str, names: &Names) -> Built {
        let output = self.output.as_deref().map(|o| names.topic(o));
        Built {
            processor: Box::new(Dedupe::new(id, self, output)),
            snapshot: None,
            copy: None,
        }
    }
}

/// A running `dedupe` processor.
pub struct Dedupe {
    id: String,
    retention_ms: i64,
    output: Option<String>,
    seen: HashMap<i32, HashMap<String, Seen>>,
    /// No key was first seen before this (epoch ms; it may be older than the oldest key
    /// still held): a purge that could find nothing is skipped.
    oldest: i64,
    /// Input topic names, by the place every [`Seen`] names them by.
    topics: Topics,
    processed: u64,
    duplicates: metrics::Counter,
}

/// When a key was first seen, and the record that carried it.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    at: i64,
    /// Input topic (its place in the processor's [`Topics`]) and offset; unknown for keys
    /// restored from values without it.
    origin: Option<(u32, i64)>,
}

/// First byte of a changelog value that names its origin.
const WITH_ORIGIN: u8 = 1;

impl Seen {
    fn encode(&self, topics: &Topics) -> Vec<u8> {
        match &self.origin {
            Some((topic, offset)) => {
                let topic = topics.name(*topic);
                let mut value = Vec::with_capacity(17 + topic.len());
                value.push(WITH_ORIGIN);
                value.extend_from_slice(&self.at.to_be_bytes());
                value.extend_from_slice(&offset.to_be_bytes());
                value.extend_from_slice(topic.as_bytes());
                value
            }
            None => self.at.to_string().into_bytes(),
        }
    }

    /// A changelog value; the topic it names is given a place in `topics`.
    fn decode(value: &[u8], topics: &mut Topics) -> Option<Self> {
        match value {
            [WITH_ORIGIN, rest @ ..] if rest.len() >= 16 => {
                let at = i64::from_be_bytes(rest[..8].try_into().ok()?);
                let offset = i64::from_be_bytes(rest[8..16].try_into().ok()?);
                let topic = std::str::from_utf8(&rest[16..]).ok()?;
                Some(Seen {
                    at,
                    origin: Some((topics.index(topic), offset)),
                })
            }
            text => Some(Seen {
                at: std::str::from_utf8(text).ok()?.parse().ok()?,
                origin: None,
            }),
        }
    }

    /// Whether `record` is the very record that carried the key (read again).
    fn is(&self, record: &Record, topics: &Topics) -> bool {
        self.origin.is_some_and(|(topic, offset)| {
            offset == record.offset && topics.name(topic) == record.topic
        })
    }
}

impl Dedupe {
    /// A processor writing survivors to the broker-side `output` topic, if any.
    pub fn new(id: &str, config: &DedupeConfig, output: Option<String>) -> Self {
        Self {
            id: id.to_string(),
            retention_ms: config.retention.as_millis() as i64,
            output,
            seen: HashMap::new(),
            oldest: i64::MAX,
            topics: Topics::default(),
            processed: 0,
            duplicates: metrics::counter!(m::DROPPED_EVENTS, m::COMPONENT_ID => id.to_string(),
                m::COMPONENT_TYPE => TYPE, m::REASON => "duplicate"),
        }
    }

    fn purge(&mut self, index: usize, now: i64, effects: &mut Effects) {
        let horizon = now - self.retention_ms;
        if self.oldest >= horizon {
            return;
        }
        let mut oldest = i64::MAX;
        for (partition, keys) in &mut self.seen {
            keys.retain(|key, seen| {
                let keep = seen.at >= horizon;
                if keep {
                    oldest = oldest.min(seen.at);
                } else {
                    effects
                        .changelog
                        .push((index, *partition, key.clone(), None));
                }
                keep
            });
        }
        self.oldest = oldest;
    }
}

impl Processor for Dedupe {
    fn id(&self) -> &str {
        &self.id
    }

    fn restore_begin(&mut self, partition: i32) {
        self.seen.insert(partition, HashMap::new());
    }

    fn restore_entry(&mut self, partition: i32, key: String, value: Option<&[u8]>) {
        let horizon = erpstream_schemas::now_millis() - self.retention_ms;
        let keys = self.seen.entry(partition).or_default();
        match value.and_then(|value| Seen::decode(value, &mut self.topics)) {
            Some(seen) if seen.at >= horizon => {
                self.oldest = self.oldest.min(seen.at);
                keys.insert(key, seen);
            }
            _ => {
                keys.remove(&key);
            }
        }
    }

    fn revoke(&mut self, partition: i32) {
        self.seen.remove(&partition);
    }

    fn process(&mut self, index: usize, record: &Record, effects: &mut Effects) -> bool {
        let now = erpstream_schemas::now_millis();
        self.processed += 1;
        if self.processed.is_multiple_of(PURGE_EVERY) {
            self.purge(index, now, effects);
        }
        let key = record.event.idempotency_key();
        let keys = self.seen.entry(record.partition).or_default();
        match keys.get(key) {
            Some(seen) if seen.at >= now - self.retention_ms => {
                if !seen.is(record, &self.topics) {
                    self.duplicates.increment(1);
                    return false;
                }
                // The record that carried the key, read again: on it goes.
            }
            _ => {
                let seen = Seen {
                    at: now,
                    origin: Some((self.topics.index(&record.topic), record.offset)),
                };
                effects.changelog.push((
                    index,
                    record.partition,
                    key.to_string(),
                    Some(seen.encode(&self.topics)),
                ));
                self.oldest = self.oldest.min(seen.at);
                keys.insert(key.to_string(), seen);
            }
        }
        if let Some(output) = &self.output {
            let mut raw = record.raw.clone();
            raw.topic = output.clone();
            effects.emit.push(Emit::Raw(raw));
        }
        true
    }
}

#[cfg(test)]
mod tests;

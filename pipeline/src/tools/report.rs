//! Records as JSON lines, and progress on a terminal.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use erpstream_schemas::Codec;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rdkafka::message::{Headers, Message, OwnedMessage};
use serde_json::{Map, Value, json};

/// One record as a JSON object: `topic`, `partition`, `offset`, `timestamp` (RFC 3339),
/// `key`, `value` and, with `headers`, `headers` (name → text).
///
/// The value is decoded through the registry when it is in the Confluent wire format; a
/// JSON value (the rows sources dead-letter) is shown as that JSON; anything else as
/// `{"undecodable": reason, "bytes": hex}`; a tombstone as `null`.
pub async fn json_record(codec: &Codec, message: &OwnedMessage, headers: bool) -> Value {
    let value = match message.payload() {
        None => Value::Null,
        Some(payload) if payload.first() == Some(&0) => match codec.decode_json(payload).await {
            Ok(value) => value,
            Err(err) => json!({"undecodable": err.to_string(), "bytes": hex::encode(payload)}),
        },
        Some(payload) => serde_json::from_slice(payload).unwrap_or_else(
            |_| json!({"undecodable": "neither Avro nor JSON", "bytes": hex::encode(payload)}),
        ),
    };
    let mut out = Map::new();
    out.insert("topic".into(), message.topic().into());
    out.insert("partition".into(), message.partition().into());
    out.insert("offset".into(), message.offset().into());
    out.insert(
        "timestamp".into(),
        message
            .timestamp()
            .to_millis()
            .map(|t| Value::String(super::rfc3339(t)))
            .unwrap_or(Value::Null),
    );
    out.insert(
        "key".into(),
        message
            .key()
            .map(|k| Value::String(String::from_utf8_lossy(k).into_owned()))
            .unwrap_or(Value::Null),
    );
    out.insert("value".into(), value);
    if headers {
        let mut map = Map::new();
        if let Some(list) = message.headers() {
            for header in list.iter() {
                let text = header
                    .value
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default();
                map.insert(header.key.to_string(), Value::String(text));
            }
        }
        out.insert("headers".into(), Value::Object(map));
    }
    Value::Object(out)
}

/// Counts of what an operation went through, for its summary.
#[derive(Debug, Default)]
pub struct Records {
    /// Records taken.
    pub records: u64,
    /// Distinct keys among them.
    pub keys: HashSet<Vec<u8>>,
}

impl Records {
    /// Counts `message`.
    pub fn add(&mut self, message: &OwnedMessage) {
        self.records += 1;
        self.keys
            .insert(message.key().map(<[u8]>::to_vec).unwrap_or_default());
    }
}

/// A progress bar on stderr when stderr is a terminal; silent otherwise.
pub struct Progress {
    bar: ProgressBar,
    started: Instant,
}

impl Progress {
    /// A bar for `total` steps (a spinner when unknown).
    pub fn new(total: Option<u64>, what: &str) -> Self {
        let bar = match total {
            Some(total) => ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
                .with_style(
                    ProgressStyle::with_template(
                        "{msg} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                ),
            None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
        };
        bar.set_message(what.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        Self {
            bar,
            started: Instant::now(),
        }
    }

    /// Names the phase under way.
    pub fn phase(&self, what: &str) {
        self.bar.set_message(what.to_string());
    }

    /// One more step done.
    pub fn step(&self) {
        self.bar.inc(1);
    }

    /// Removes the bar; returns the time since it was made.
    pub fn finish(self) -> Duration {
        self.bar.finish_and_clear();
        self.started.elapsed()
    }
}

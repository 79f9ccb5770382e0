//! `jsonl_file`: appends the records of its topics to a file as JSON lines, values decoded
//! through the registry — an audit trail or an export a data team can read with any tool.
//!
//! Contract:
//! - Each line is `{"topic", "partition", "offset", "key", "timestamp", "value"}`; `value` is
//!   the record decoded with its writer's schema (decimals exact), `null` for a tombstone.
//! - A batch is appended and synced to disk (`fsync`) before its offsets are stored: nothing
//!   acknowledged is lost. A crash between the sync and the offset commit writes those lines
//!   again after the restart; `topic`/`partition`/`offset` tell the repeats.
//! - A registry outage is waited out; a record that can never be decoded goes to
//!   `<topic>.dlq` (`undecodable`), and a file that cannot be written is retried until it can
//!   (a full disk), never skipped.

mod config;

use std::io::Write;
use std::path::Path;

use erpstream_schemas::EventKind;
use rdkafka::consumer::Consumer;
use rdkafka::message::{Message, OwnedMessage};
use serde_json::{Value, json};
use tokio::sync::watch;

pub use config::JsonlFileConfig;

use crate::component::{Component, Context, Port, Readiness, Running};
use crate::kafka::{self, DeadLetter, Failure, GroupConsumer, OffsetTracker, TrackingContext};
use crate::metrics as m;
use crate::validation::{Checks, Problem};

/// Component type name in the topology.
pub const TYPE: &str = "jsonl_file";

impl Component for JsonlFileConfig {
    fn validate(&self, at: &str) -> Vec<Problem> {
        let file = !self.path.as_os_str().is_empty() && !self.path.is_dir();
        Checks::new(at)
            .listed("inputs", &self.inputs, "topic")
            .rule(file, "path", "must name a file")
            .positive("batch_size", self.batch_size > 0)
            .done()
    }

    fn inputs(&self) -> Vec<Port> {
        Port::list("inputs", &self.inputs, &EventKind::ALL)
    }

    async fn build(&self, context: Context) -> Result<Running, crate::Error> {
        let readiness = Readiness::not_yet("starting");
        let tracking = TrackingContext::new(readiness.clone(), false);
        let consumer =
            kafka::group_consumer(&context.kafka, &context.group(), &context.id, tracking)?;
        let sink = JsonlFileSink {
            topics: self
                .inputs
                .iter()
                .filter_map(|t| context.resolve(t))
                .map(|r| (r.topic, r.dlq))
                .collect(),
            consumer,
            config: self.clone(),
            context,
        };
        Ok(Running::default()
            .readiness(readiness)
            .task(move |shutdown| sink.run(shutdown)))
    }
}

/// A running `jsonl_file` sink.
struct JsonlFileSink {
    config: JsonlFileConfig,
    context: Context,
    consumer: GroupConsumer,
    /// Broker-side topic → its dead-letter topic.
    topics: Vec<(String, String)>,
}

impl JsonlFileSink {
    async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), crate::Error> {
        let topics: Vec<&str> = self.topics.iter().map(|(t, _)| t.as_str()).collect();
        crate::kafka::subscribe(&self.consumer, &topics)?;
        tracing::info!(?topics, path = %self.config.path.display(), "jsonl file sink started");
        let mut offsets = OffsetTracker::default();
        let mut pause = kafka::IdlePause::new(&self.consumer, &topics);
        while let Some(batch) = kafka::next_batch(
            &self.consumer,
            self.config.batch_size,
            self.config.batch_wait,
            None,
            &mut pause,
            &mut shutdown,
        )
        .await
        {
            for (topic, partition) in self.consumer.context().take_revoked() {
                offsets.revoke(&topic, partition);
            }
            let Some(lines) = self.lines(&batch, &mut shutdown).await? else {
                break;
            };
            let path = self.config.path.clone();
            let written = kafka::retrying("appending to the file", &mut shutdown, || {
                let (path, lines) = (path.clone(), lines.clone());
                async move {
                    tokio::task::spawn_blocking(move || append(&path, &lines))
                        .await
                        .unwrap_or_else(|e| Err(FileError(std::io::Error::other(e))))
                }
            })
            .await;
            match written {
                None => break,
                Some(result) => result.map_err(|FileError(source)| crate::Error::Io {
                    path: self.config.path.display().to_string(),
                    source,
                })?,
            }
            metrics::counter!(m::SENT_EVENTS, m::COMPONENT_ID => self.context.id.clone(),
                m::COMPONENT_TYPE => TYPE)
            .increment(batch.len() as u64);
            for message in &batch {
                offsets.take(message.topic(), message.partition(), message.offset(), 0);
            }
            offsets.store(&self.consumer);
        }
        kafka::commit_stored(&self.consumer);
        Ok(())
    }

    /// The batch as JSON lines, dead-lettering what can never be decoded; `None` if shutdown
    /// came while a record waited for the registry.
    async fn lines(
        &self,
        batch: &[OwnedMessage],
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Option<Vec<u8>>, crate::Error> {
        let codec = self.context.codec();
        let mut out = Vec::new();
        for message in batch {
            metrics::counter!(m::RECEIVED_EVENTS, m::COMPONENT_ID => self.context.id.clone(),
                m::COMPONENT_TYPE => TYPE)
            .increment(1);
            let value = match message.payload() {
                None => Value::Null,
                Some(payload) => {
                    let decoded = kafka::retrying(
                        "decoding a record through the schema registry",
                        shutdown,
                        || codec.decode_json(payload),
                    )
                    .await;
                    match decoded {
                        None => return Ok(None),
                        Some(Ok(value)) => value,
                        Some(Err(err)) => {
                            if !self
                                .dead_letter(message, &err.to_string(), shutdown)
                                .await?
                            {
                                return Ok(None);
                            }
                            continue;
                        }
                    }
                }
            };
            let line = json!({
                "topic": message.topic(),
                "partition": message.partition(),
                "offset": message.offset(),
                "key": message.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                "timestamp": message.timestamp().to_millis(),
                "value": value,
            });
            serde_json::to_writer(&mut out, &line)
                .map_err(std::io::Error::from)
                .map_err(|source| crate::Error::Io {
                    path: self.config.path.display().to_string(),
                    source,
                })?;
            out.push(b'\n');
        }
        Ok(Some(out))
    }

    /// Publishes the dead letter of `message`; `false` on shutdown.
    async fn dead_letter(
        &self,
        message: &OwnedMessage,
        error: &str,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<bool, crate::Error> {
        let Some((_, dlq)) = self.topics.iter().find(|(t, _)| t == message.topic()) else {
            return Ok(true);
        };
        tracing::warn!(topic = message.topic(), offset = message.offset(), %error, "undecodable record dead-lettered");
        metrics::counter!(m::DEAD_LETTERED, m::COMPONENT_ID => self.context.id.clone(),
            m::COMPONENT_TYPE => TYPE)
        .increment(1);
        let record =
            DeadLetter::new(Failure::Undecodable, error, &self.context.id).of_record(message, dlq);
        let publisher = &self.context.publisher;
        match kafka::retrying("publishing a dead letter", shutdown, || {
            publisher.send(record.clone())
        })
        .await
        {
            None => Ok(false),
            Some(result) => result.map(|_| true).map_err(crate::Error::from),
        }
    }
}

/// A failed append; a file that cannot be written now (full disk, a remount) may be later.
#[derive(Debug)]
struct FileError(std::io::Error);

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl kafka::Retriable for FileError {
    fn is_retriable(&self) -> bool {
        !matches!(
            self.0.kind(),
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::IsADirectory
        )
    }
}

/// Appends `lines` to `path` and syncs them to disk.
fn append(path: &Path, lines: &[u8]) -> Result<(), FileError> {
    let open = || -> std::io::Result<std::fs::File> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    };
    let mut file = open().map_err(FileError)?;
    file.write_all(lines).map_err(FileError)?;
    file.sync_data().map_err(FileError)
}

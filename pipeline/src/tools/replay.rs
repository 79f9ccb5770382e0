//! `erpstream replay`: a topic's records of a time window, to a file, stdout, or a sink.
//!
//! Side-effect-free unless `--live`: `stdout`/`file` write JSON lines; a sink id runs the
//! sink in shadow mode, which computes what it would do and does nothing: the requests a
//! `storefront_webhook` sink would send, the rows a `planning_pg` sink would upsert
//! (written with `--out`). `--live` re-publishes the window's records to their topic, marked
//! `erpstream.replay`; every consumer of the topic then takes them through its own dedupe
//! and version guards, so a replay never moves a figure backwards. On a compacted topic, a
//! record a newer one with the same key supersedes is not re-published (compaction would
//! otherwise keep the older one as the key's value).

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;

use erpstream_connectors::component::Shadow;
use erpstream_connectors::kafka::Publisher;
use erpstream_schemas::EventKind;
use rdkafka::message::{Message, OwnedMessage};
use serde::Serialize;

use super::{
    Doing, From, Progress, Records, ToolError, Tools, TopicReader, Until, json_record,
    newest_offsets, resend, rfc3339,
};

/// Header marking a re-published record with the replay's id.
pub const REPLAY_HEADER: &str = erpstream_connectors::kafka::headers::REPLAY;

/// Where the window goes.
#[derive(Debug, Clone)]
pub enum Target {
    /// JSON lines on stdout.
    Stdout,
    /// JSON lines in a file.
    File(PathBuf),
    /// A sink of the topology, by id.
    Sink(String),
}

/// What to replay.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// Topic (logical or broker-side name).
    pub topic: String,
    /// Window start (epoch ms, inclusive).
    pub from: i64,
    /// Window end (epoch ms, exclusive).
    pub to: i64,
    /// Where it goes.
    pub target: Target,
    /// Shadow mode: where the computed requests are written (JSON lines).
    pub out: Option<PathBuf>,
    /// Re-publish for real (sink targets only).
    pub live: bool,
    /// Nothing is written anywhere but the summary, even with `live`.
    pub dry_run: bool,
    /// Only records with this key.
    pub key: Option<String>,
}

/// The summary of a replay.
#[derive(Debug, Default, Serialize)]
pub struct ReplaySummary {
    /// Broker-side topic.
    pub topic: String,
    /// Window start, RFC 3339.
    pub from: String,
    /// Window end, RFC 3339.
    pub to: String,
    /// `stdout`, `file`, `shadow`, `live` or `dry-run`.
    pub mode: String,
    /// Records in the window (after the key filter).
    pub records: u64,
    /// Distinct keys among them.
    pub keys: usize,
    /// Records read past but outside the window's timestamps.
    pub outside_window: u64,
    /// Partition → `[start, end)` offsets read.
    pub partitions: Vec<(i32, i64, Option<i64>)>,
    /// Shadow mode: requests (storefront) or rows (planning) the sink would send or write.
    pub computed: u64,
    /// Shadow mode: records the sink would refuse (dead-letter).
    pub refused: u64,
    /// Live: records re-published.
    pub republished: u64,
    /// Live, compacted topic: records not re-published because a newer one has their key.
    pub superseded: u64,
    /// Components that read the topic (who sees a live replay).
    pub consumers: Vec<String>,
    /// Seconds taken.
    pub seconds: f64,
}

impl std::fmt::Display for ReplaySummary {
    /// The one-line summary a terminal gets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "replayed {} records ({} keys) of {} from {} to {} in {:.2} s [{}]",
            self.records, self.keys, self.topic, self.from, self.to, self.seconds, self.mode
        )?;
        match self.mode.as_str() {
            "shadow" => write!(
                f,
                "; {} requests/rows computed, {} refused, none sent or written",
                self.computed, self.refused
            ),
            "live" => write!(
                f,
                "; {} re-published, {} superseded; seen by {}",
                self.republished,
                self.superseded,
                self.consumers.join(", ")
            ),
            _ => Ok(()),
        }
    }
}

/// Runs a replay and returns its summary.
pub async fn run(tools: &Tools, options: ReplayOptions) -> Result<ReplaySummary, ToolError> {
    if options.from >= options.to {
        return Err(ToolError::usage("--from must be before --to"));
    }
    let topic = tools.topic(&options.topic);
    let logical = tools.logical(&topic).to_string();
    let sink = match &options.target {
        Target::Sink(id) => Some(sink_for(tools, id, &logical, options.live)?),
        _ => None,
    };
    if options.live && sink.is_none() {
        return Err(ToolError::usage(
            "--live re-sends through a sink: give --into <sink id>",
        ));
    }
    let mut summary = ReplaySummary {
        topic: topic.clone(),
        from: rfc3339(options.from),
        to: rfc3339(options.to),
        mode: match (&options.target, options.live, options.dry_run) {
            (_, _, true) => "dry-run",
            (Target::Stdout, ..) => "stdout",
            (Target::File(_), ..) => "file",
            (Target::Sink(_), true, _) => "live",
            (Target::Sink(_), false, _) => "shadow",
        }
        .into(),
        consumers: consumers_of(tools, &logical),
        ..Default::default()
    };
    let mut reader = TopicReader::open(
        &tools.kafka,
        &topic,
        From::Time(options.from),
        Until::Time(options.to),
    )
    .await?;
    summary.partitions = reader.spans();
    let progress = Progress::new(reader.total(), "replaying");
    let mut out: Option<Box<dyn Write>> = match (&options.target, &options.out) {
        _ if options.dry_run => None,
        (Target::Stdout, _) => Some(Box::new(std::io::BufWriter::new(std::io::stdout()))),
        (Target::File(path), _) | (Target::Sink(_), Some(path)) => {
            Some(Box::new(std::io::BufWriter::new(
                std::fs::File::create(path)
                    .doing(|| format!("could not create {}", path.display()))?,
            )))
        }
        (Target::Sink(_), None) => None,
    };
    let mut counted = Records::default();
    let mut live: Vec<OwnedMessage> = Vec::new();
    let mut first_refusal: Option<String> = None;
    while let Some(message) = reader.next(&mut summary.outside_window).await? {
        progress.step();
        if let Some(key) = &options.key
            && message.key() != Some(key.as_bytes())
        {
            continue;
        }
        counted.add(&message);
        match (&sink, options.live) {
            (None, _) => {
                if let Some(out) = out.as_mut() {
                    let line = json_record(&tools.codec, &message, true).await;
                    serde_json::to_writer(&mut *out, &line)?;
                    out.write_all(b"\n").doing(|| "writing the replay".into())?;
                }
            }
            (Some(_), true) => live.push(message),
            (Some(sink), false) => {
                let payload = message.payload().unwrap_or_default();
                let computed = match sink.shadow {
                    Some(shadow) => shadow(&tools.codec, sink.kind, payload).await,
                    None => Ok(Vec::new()),
                };
                match computed {
                    Ok(lines) => {
                        for mut line in lines {
                            summary.computed += 1;
                            if let Some(out) = out.as_mut() {
                                line["from"] = serde_json::json!({
                                    "partition": message.partition(),
                                    "offset": message.offset(),
                                });
                                serde_json::to_writer(&mut *out, &line)?;
                                out.write_all(b"\n")
                                    .doing(|| "writing the requests".into())?;
                            }
                        }
                    }
                    Err(reason) => {
                        summary.refused += 1;
                        first_refusal.get_or_insert(reason);
                    }
                }
            }
        }
    }
    if let Some(mut out) = out {
        out.flush().doing(|| "writing the replay".into())?;
    }
    if !live.is_empty() {
        let (republished, superseded) =
            republish(tools, &topic, &logical, live, options.dry_run).await?;
        summary.republished = republished;
        summary.superseded = superseded;
    }
    summary.records = counted.records;
    summary.keys = counted.keys.len();
    summary.seconds = progress.finish().as_secs_f64();
    if let Some(reason) = first_refusal {
        tracing::warn!(refused = summary.refused, first = %reason, "records the sink cannot deliver");
    }
    Ok(summary)
}

/// The sink a replay goes into: the contract of the replayed topic and the sink's shadow
/// mode.
struct SinkTarget {
    kind: EventKind,
    shadow: Option<Shadow>,
}

/// Sink `id`, which must read `logical`; without `--live` it must have a shadow mode.
fn sink_for(tools: &Tools, id: &str, logical: &str, live: bool) -> Result<SinkTarget, ToolError> {
    let Some(sink) = tools.topology.sinks.get(id) else {
        let known: Vec<&str> = tools.topology.sinks.keys().map(String::as_str).collect();
        return Err(ToolError::usage(format!(
            "--into {id}: not stdout, file or a sink of the topology ({known:?})"
        )));
    };
    let inputs: Vec<String> = sink.inputs().into_iter().map(|p| p.topic).collect();
    if !inputs.iter().any(|i| i == logical) {
        return Err(ToolError::usage(format!(
            "sink {id} does not read {logical} (it reads {inputs:?})"
        )));
    }
    let kind = tools.topology.contract(logical).ok_or_else(|| {
        ToolError::usage(format!("topic {logical} has no contract in the topology"))
    })?;
    let shadow = sink.shadow();
    if shadow.is_none() && !live {
        return Err(ToolError::usage(format!(
            "sink {id} ({}) has no shadow mode; replay {logical} --into file or stdout to \
             inspect it, or --live to re-send it",
            sink.type_name()
        )));
    }
    Ok(SinkTarget { kind, shadow })
}

/// Components whose inputs include `logical`.
fn consumers_of(tools: &Tools, logical: &str) -> Vec<String> {
    let topology = &tools.topology;
    let sinks = topology
        .sinks
        .iter()
        .filter(|(_, s)| s.inputs().iter().any(|p| p.topic == logical))
        .map(|(id, _)| id.clone());
    let processors = topology
        .processors
        .iter()
        .filter(|(_, p)| p.inputs().iter().any(|i| i == logical))
        .map(|(id, _)| id.clone());
    sinks.chain(processors).collect()
}

/// Re-publishes `messages` to `topic` in their partitions and order, marked with
/// [`REPLAY_HEADER`]; on a compacted topic, skips those a newer record supersedes.
/// Returns (re-published, superseded).
async fn republish(
    tools: &Tools,
    topic: &str,
    logical: &str,
    messages: Vec<OwnedMessage>,
    dry_run: bool,
) -> Result<(u64, u64), ToolError> {
    let newest = if tools.compacted(logical) {
        let mut after: HashMap<i32, i64> = HashMap::new();
        let mut keys = HashSet::new();
        for message in &messages {
            let start = after.entry(message.partition()).or_insert(message.offset());
            *start = (*start).min(message.offset());
            keys.insert(message.key().map(<[u8]>::to_vec).unwrap_or_default());
        }
        newest_offsets(&tools.kafka, topic, after, &keys).await?
    } else {
        HashMap::new()
    };
    let replay_id = uuid::Uuid::now_v7().to_string();
    let publisher = Publisher::new(&tools.kafka, "erpstream-replay", tools.codec.clone())
        .doing(|| "creating the producer".into())?;
    let progress = Progress::new(Some(messages.len() as u64), "re-publishing");
    let mut pending = Vec::new();
    let mut superseded = 0;
    for message in messages {
        progress.step();
        let key = message.key().map(<[u8]>::to_vec).unwrap_or_default();
        if newest
            .get(&(message.partition(), key))
            .is_some_and(|newest| *newest > message.offset())
        {
            superseded += 1;
            continue;
        }
        if dry_run {
            continue;
        }
        let marks = vec![
            (REPLAY_HEADER.into(), replay_id.clone().into_bytes()),
            (
                erpstream_connectors::kafka::headers::REPLAY_OF.to_string(),
                format!("{topic}/{}/{}", message.partition(), message.offset()).into_bytes(),
            ),
        ];
        let record = resend(&message, topic, message.partition(), marks);
        pending.push(publisher.enqueue(record).await?);
    }
    let republished = pending.len() as u64;
    futures::future::try_join_all(pending).await?;
    progress.finish();
    Ok((republished, superseded))
}

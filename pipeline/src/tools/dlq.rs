//! `erpstream dlq list|show|redrive`: dead-lettered records, and sending them again.
//!
//! Every `<topic>.dlq` of the topology's topics is read from its beginning. A record's
//! error, error type, failing component, attempts and time come from the `erpstream.*`
//! headers the dead-lettering component wrote (see `kafka::dead_letter`).
//!
//! Redrive publishes the original record (key, value, headers without the `erpstream.*`
//! ones, plus `erpstream.redrive.of`) to the topic and partition it came from, so it takes
//! the normal path again: every consumer of that topic sees it and its dedupe and version
//! guards decide, so a redrive delivers at most what is still missing and never moves a
//! figure backwards. After the broker acknowledged it, the DLQ record is marked redriven in
//! the compacted ledger topic `<app_id>.dlq.redriven` and is not redriven again (a crash in
//! between can redrive it twice; the guards absorb that). Records a source dead-lettered
//! (rows that did not fit their mapping) have no original topic and are listed only. On a
//! compacted topic, a record that a newer one with the same key superseded is marked
//! `superseded` instead of being redriven.

use std::collections::{BTreeMap, HashMap, HashSet};

use erpstream_connectors::kafka::{
    ERROR_TYPE_HEADER, Publisher, RawRecord, TopicSpec, ensure_topics, header_text, headers,
};
use rdkafka::message::{Message, OwnedMessage};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    Doing, From, Progress, ToolError, Tools, TopicReader, Until, json_record, newest_offsets,
    record_at, resend, rfc3339,
};

/// Header naming the DLQ record a redriven record came from.
pub const REDRIVE_HEADER: &str = headers::REDRIVE_OF;

/// Which dead-lettered records.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this original topic's DLQ (logical or broker-side name).
    pub topic: Option<String>,
    /// Only this `erpstream.error_type` (`retries_exhausted`, `rejected`, `refused`, ...).
    pub error_type: Option<String>,
    /// Only this key.
    pub key: Option<String>,
    /// Only records this component dead-lettered.
    pub source: Option<String>,
    /// Only these records (ids as [`Entry::id`]); empty: every one.
    pub ids: HashSet<String>,
    /// Include records already redriven or superseded.
    pub all: bool,
}

/// One dead-lettered record.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// `<dlq topic>/<partition>/<offset>`: what `dlq show` takes.
    pub id: String,
    /// The record's key.
    pub key: Option<String>,
    /// Topic it failed on (absent for source rows).
    pub original_topic: Option<String>,
    /// Partition there.
    pub original_partition: Option<i32>,
    /// Offset there.
    pub original_offset: Option<i64>,
    /// The failure.
    pub error: String,
    /// Its class.
    pub error_type: String,
    /// Component that dead-lettered it.
    pub source: String,
    /// Attempts made.
    pub attempts: u32,
    /// When it was dead-lettered (RFC 3339).
    pub failed_at: String,
    /// Seconds since then.
    pub age_seconds: i64,
    /// `pending`, `redriven`, `superseded`, or `source row` (cannot be redriven).
    pub state: String,
    #[serde(skip)]
    message: Option<OwnedMessage>,
}

/// What the ledger remembers of a redriven record.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Mark {
    /// `redriven` or `superseded`.
    state: String,
    /// When (epoch ms).
    at: i64,
    /// Where the record went (`topic/partition/offset`), when redriven.
    to: Option<String>,
}

/// Every dead-lettered record matching `filter`, oldest first per DLQ topic.
pub async fn list(tools: &Tools, filter: &Filter) -> Result<Vec<Entry>, ToolError> {
    let ledger = read_ledger(tools).await?;
    let now = erpstream_schemas::now_millis();
    let mut entries = Vec::new();
    for dlq in dlq_topics(tools, filter.topic.as_deref()) {
        let mut reader =
            match TopicReader::open(&tools.kafka, &dlq, From::Beginning, Until::End).await {
                Ok(reader) => reader,
                Err(ToolError::NoSuchTopic(_)) => continue,
                Err(err) => return Err(err),
            };
        let mut skipped = 0;
        while let Some(message) = reader.next(&mut skipped).await? {
            let entry = entry(message, &ledger, now);
            if matches(&entry, filter) {
                entries.push(entry);
            }
        }
    }
    Ok(entries)
}

/// One record by id, with its decoded value and every header.
pub async fn show(tools: &Tools, id: &str) -> Result<Value, ToolError> {
    let (topic, partition, offset) = parse_id(id)?;
    let message = record_at(&tools.kafka, &topic, partition, offset).await?;
    let ledger = read_ledger(tools).await?;
    let entry = entry(message.clone(), &ledger, erpstream_schemas::now_millis());
    let mut shown = serde_json::to_value(&entry)?;
    shown["record"] = json_record(&tools.codec, &message, true).await;
    Ok(shown)
}

/// What a redrive did.
#[derive(Debug, Default, Serialize)]
pub struct RedriveSummary {
    /// Pending records matching the filter.
    pub matched: u64,
    /// Published again to their topic.
    pub redriven: u64,
    /// Not redriven: a newer record with the same key exists on the compacted topic.
    pub superseded: u64,
    /// Not redrivable: source rows without an original topic.
    pub source_rows: u64,
    /// Where each redriven record went: DLQ id → `topic/partition/offset`.
    pub to: BTreeMap<String, String>,
    /// What became (or, dry, would become) of each matched record: DLQ id → `redriven`,
    /// `superseded` or `source row`.
    pub outcomes: BTreeMap<String, String>,
    /// Only reported what it would do.
    pub dry_run: bool,
}

impl std::fmt::Display for RedriveSummary {
    /// The one-line summary a terminal gets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} pending matched: {} {}redriven, {} superseded by a newer record, {} source rows (fix the source data)",
            self.matched,
            self.redriven,
            if self.dry_run { "would be " } else { "" },
            self.superseded,
            self.source_rows
        )
    }
}

/// Redrives the pending records matching `filter` (see the module docs); with `dry_run`
/// reports what it would do.
pub async fn redrive(
    tools: &Tools,
    filter: &Filter,
    dry_run: bool,
) -> Result<RedriveSummary, ToolError> {
    let filter = Filter {
        all: false,
        ..filter.clone()
    };
    let entries = list(tools, &filter).await?;
    let mut summary = RedriveSummary {
        matched: entries.len() as u64,
        dry_run,
        ..Default::default()
    };
    // Superseded records, per compacted original topic.
    let mut superseded: HashSet<String> = HashSet::new();
    let mut by_topic: HashMap<String, Vec<&Entry>> = HashMap::new();
    for entry in &entries {
        if let Some(topic) = &entry.original_topic {
            by_topic.entry(topic.clone()).or_default().push(entry);
        }
    }
    for (topic, group) in &by_topic {
        if !tools.compacted(tools.logical(topic)) {
            continue;
        }
        let mut after: HashMap<i32, i64> = HashMap::new();
        let mut keys = HashSet::new();
        for entry in group {
            if let (Some(p), Some(o)) = (entry.original_partition, entry.original_offset) {
                let start = after.entry(p).or_insert(o);
                *start = (*start).min(o);
                keys.insert(entry.key.clone().unwrap_or_default().into_bytes());
            }
        }
        let newest = newest_offsets(&tools.kafka, topic, after, &keys).await?;
        for entry in group {
            let key = entry.key.clone().unwrap_or_default().into_bytes();
            if let (Some(p), Some(o)) = (entry.original_partition, entry.original_offset)
                && newest.get(&(p, key)).is_some_and(|n| *n > o)
            {
                superseded.insert(entry.id.clone());
            }
        }
    }
    let publisher = Publisher::new(&tools.kafka, "erpstream-dlq", tools.codec.clone())
        .doing(|| "creating the producer".into())?;
    let progress = Progress::new(Some(entries.len() as u64), "redriving");
    let mut marks = Vec::new();
    let mut pending = Vec::new();
    for entry in &entries {
        progress.step();
        let (Some(topic), Some(message)) = (&entry.original_topic, &entry.message) else {
            summary.source_rows += 1;
            summary
                .outcomes
                .insert(entry.id.clone(), "source row".into());
            continue;
        };
        if superseded.contains(&entry.id) {
            summary.superseded += 1;
            summary
                .outcomes
                .insert(entry.id.clone(), "superseded".into());
            marks.push((entry.id.clone(), mark("superseded", None)));
            continue;
        }
        summary.redriven += 1;
        summary.outcomes.insert(entry.id.clone(), "redriven".into());
        if dry_run {
            continue;
        }
        let partition = entry.original_partition.unwrap_or(message.partition());
        let marks = vec![(REDRIVE_HEADER.into(), entry.id.clone().into_bytes())];
        let ack = publisher
            .enqueue(resend(message, topic, partition, marks))
            .await?;
        pending.push((entry.id.clone(), ack));
    }
    for (id, ack) in pending {
        let ack = ack.await?;
        let to = format!("{}/{}/{}", ack.topic, ack.partition, ack.offset);
        summary.to.insert(id.clone(), to.clone());
        marks.push((id, mark("redriven", Some(to))));
    }
    if !dry_run && !marks.is_empty() {
        let ledger = ledger_topic(tools);
        ensure_topics(
            &tools.kafka,
            &[TopicSpec {
                name: ledger.clone(),
                partitions: 1,
                compacted: true,
            }],
        )
        .await
        .doing(|| format!("creating {ledger}"))?;
        let mut acks = Vec::new();
        for (id, mark) in marks {
            acks.push(
                publisher
                    .enqueue(RawRecord {
                        topic: ledger.clone(),
                        key: Some(id.into_bytes()),
                        payload: Some(serde_json::to_vec(&mark)?),
                        headers: vec![],
                        partition: Some(0),
                    })
                    .await?,
            );
        }
        futures::future::try_join_all(acks).await?;
    }
    progress.finish();
    Ok(summary)
}

fn mark(state: &str, to: Option<String>) -> Mark {
    Mark {
        state: state.into(),
        at: erpstream_schemas::now_millis(),
        to,
    }
}

/// The ledger topic of redriven records.
fn ledger_topic(tools: &Tools) -> String {
    tools
        .kafka
        .topic(&format!("{}.dlq.redriven", tools.topology.app_id))
}

async fn read_ledger(tools: &Tools) -> Result<HashMap<String, Mark>, ToolError> {
    let mut ledger = HashMap::new();
    let mut reader = match TopicReader::open(
        &tools.kafka,
        &ledger_topic(tools),
        From::Beginning,
        Until::End,
    )
    .await
    {
        Ok(reader) => reader,
        Err(ToolError::NoSuchTopic(_)) => return Ok(ledger),
        Err(err) => return Err(err),
    };
    let mut skipped = 0;
    while let Some(message) = reader.next(&mut skipped).await? {
        let (Some(key), Some(value)) = (message.key(), message.payload()) else {
            continue;
        };
        if let Ok(mark) = serde_json::from_slice::<Mark>(value) {
            ledger.insert(String::from_utf8_lossy(key).into_owned(), mark);
        }
    }
    Ok(ledger)
}

/// The DLQ topics to read: every declared topic's, or the one of `only`.
fn dlq_topics(tools: &Tools, only: Option<&str>) -> Vec<String> {
    match only {
        Some(topic) => {
            let topic = tools.topic(topic.trim_end_matches(".dlq"));
            vec![format!("{topic}.dlq")]
        }
        None => tools
            .topology
            .topics
            .keys()
            .map(|t| format!("{}.dlq", tools.kafka.topic(t)))
            .collect(),
    }
}

fn entry(message: OwnedMessage, ledger: &HashMap<String, Mark>, now: i64) -> Entry {
    let text = |name: &str| header_text(&message, name);
    let id = format!(
        "{}/{}/{}",
        message.topic(),
        message.partition(),
        message.offset()
    );
    let failed_at = text(headers::FAILED_AT)
        .and_then(|t| t.parse::<i64>().ok())
        .or_else(|| message.timestamp().to_millis())
        .unwrap_or(now);
    let original_topic = text(headers::ORIGINAL_TOPIC);
    let state = match (ledger.get(&id), &original_topic) {
        (Some(mark), _) => mark.state.clone(),
        (None, None) => "source row".into(),
        (None, Some(_)) => "pending".into(),
    };
    Entry {
        key: message
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned()),
        original_partition: text(headers::ORIGINAL_PARTITION).and_then(|t| t.parse().ok()),
        original_offset: text(headers::ORIGINAL_OFFSET).and_then(|t| t.parse().ok()),
        error: text(headers::ERROR).unwrap_or_default(),
        error_type: text(ERROR_TYPE_HEADER).unwrap_or_else(|| "unknown".into()),
        source: text(headers::SOURCE).unwrap_or_default(),
        attempts: text(headers::ATTEMPTS)
            .and_then(|t| t.parse().ok())
            .unwrap_or(0),
        failed_at: rfc3339(failed_at),
        age_seconds: (now - failed_at).max(0) / 1000,
        original_topic,
        state,
        id,
        message: Some(message),
    }
}

fn matches(entry: &Entry, filter: &Filter) -> bool {
    (filter.all || entry.state == "pending" || entry.state == "source row")
        && filter
            .error_type
            .as_ref()
            .is_none_or(|t| &entry.error_type == t)
        && filter
            .key
            .as_ref()
            .is_none_or(|k| entry.key.as_ref() == Some(k))
        && filter.source.as_ref().is_none_or(|s| &entry.source == s)
        && (filter.ids.is_empty() || filter.ids.contains(&entry.id))
}

/// `<topic>/<partition>/<offset>` taken apart.
pub fn parse_id(id: &str) -> Result<(String, i32, i64), ToolError> {
    let mut parts = id.rsplitn(3, '/');
    let (Some(offset), Some(partition), Some(topic)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(ToolError::usage(format!(
            "{id:?}: expected <dlq topic>/<partition>/<offset>, as `dlq list` shows"
        )));
    };
    Ok((
        topic.to_string(),
        partition.parse().map_err(|_| {
            ToolError::usage(format!("{id:?}: partition {partition:?} is not a number"))
        })?,
        offset
            .parse()
            .map_err(|_| ToolError::usage(format!("{id:?}: offset {offset:?} is not a number")))?,
    ))
}

/// `dlq list` as a table for people.
pub fn table(entries: &[Entry]) -> String {
    let mut out = format!(
        "{:<40} {:<24} {:<18} {:<14} {:>8} {:>9} {:<10} ERROR\n",
        "ID", "KEY", "ERROR TYPE", "SOURCE", "ATTEMPTS", "AGE", "STATE"
    );
    for e in entries {
        let mut error = e.error.replace('\n', " ");
        if error.chars().count() > 80 {
            error = error.chars().take(77).collect::<String>() + "...";
        }
        out.push_str(&format!(
            "{:<40} {:<24} {:<18} {:<14} {:>8} {:>9} {:<10} {}\n",
            e.id,
            e.key.as_deref().unwrap_or("-"),
            e.error_type,
            e.source,
            e.attempts,
            humantime::format_duration(std::time::Duration::from_secs(e.age_seconds as u64))
                .to_string()
                .split(' ')
                .take(2)
                .collect::<Vec<_>>()
                .join(""),
            e.state,
            error
        ));
    }
    out
}

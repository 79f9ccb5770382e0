//! Idle consumers stop fetching.
//!
//! A broker that holds every empty fetch for the full `fetch.wait.max.ms` (tansu 0.6.0)
//! cannot be asked for records every few milliseconds by idle consumers without working for
//! nothing: each empty fetch is queries per partition on its store. With `kafka.idle_pause`
//! set, a consumer that took no record for that long pauses its caught-up partitions and
//! fetches them again
//! - at once when this process has a record stored on one of their topics (every
//!   acknowledgement a [`Publisher`](super::Publisher) receives is announced here), and
//! - when a look at the partitions' high watermarks every `kafka.idle_poll` (one request per
//!   broker) finds records other processes wrote: a replay, a dead-letter redrive, another
//!   replica.
//!
//! Pausing keeps the consumer's place: librdkafka drops what it fetched ahead of the
//! application and fetches again from the record after the last one handed out. A write
//! announced while the consumer was still fetching keeps it fetching for another window, so a
//! record stored just before the pause is not left waiting for the poll.

use std::collections::HashMap;
use std::sync::{LazyLock, RwLock};
use std::time::Duration;

use rdkafka::TopicPartitionList;
use rdkafka::consumer::Consumer;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};

use super::GroupConsumer;
use crate::metrics as m;

/// Per broker-side topic, a counter of this process's acknowledged writes to it (only for
/// topics some consumer here watches).
static WRITES: LazyLock<RwLock<HashMap<String, watch::Sender<u64>>>> =
    LazyLock::new(RwLock::default);

/// This process had a record stored on `topic`: its paused consumers of it fetch again.
pub(super) fn written(topic: &str) {
    let writes = WRITES.read().unwrap_or_else(|p| p.into_inner());
    if let Some(counter) = writes.get(topic) {
        counter.send_modify(|n| *n = n.wrapping_add(1));
    }
}

fn watch(topic: &str) -> watch::Receiver<u64> {
    let mut writes = WRITES.write().unwrap_or_else(|p| p.into_inner());
    writes
        .entry(topic.to_string())
        .or_insert_with(|| watch::channel(0).0)
        .subscribe()
}

/// One consumer loop's idle pausing (see the module documentation): the loop calls
/// [`took`](Self::took) for every record it is handed and polls [`change`](Self::change)
/// beside its receive.
///
/// Only partitions the client's statistics show caught up are paused (fetching, at the high
/// watermark the broker last reported, nothing fetched ahead): their watermark is what the
/// poll compares with. Partitions that catch up later are paused at a later check.
pub struct IdlePause {
    /// Zero: never pause.
    after: Duration,
    poll: Duration,
    /// [`m::CONSUMER_PAUSED`] of this consumer.
    gauge: metrics::Gauge,
    writes: Vec<watch::Receiver<u64>>,
    took: bool,
    check_at: Instant,
    /// Paused now, each with the high watermark it had reached; empty while fetching all.
    paused: Vec<((String, i32), i64)>,
    /// When the paused partitions' watermarks are looked at next.
    poll_at: Instant,
}

impl IdlePause {
    /// Pausing for `consumer`, subscribed to `topics` (broker-side names), as the
    /// configuration it was created with says (`kafka.idle_pause`, `kafka.idle_poll`).
    pub fn new(consumer: &GroupConsumer, topics: &[&str]) -> Self {
        let settings = consumer.context().idle();
        let gauge =
            metrics::gauge!(m::CONSUMER_PAUSED, m::COMPONENT_ID => settings.component.clone());
        gauge.set(0.0);
        let now = Instant::now();
        Self {
            after: settings.after,
            poll: settings.poll,
            gauge,
            writes: if settings.after.is_zero() {
                Vec::new()
            } else {
                topics.iter().map(|topic| watch(topic)).collect()
            },
            took: false,
            check_at: now + settings.after,
            paused: Vec::new(),
            poll_at: now,
        }
    }

    /// The consumer handed out a record, or the loop is too busy to take one: not idle.
    pub fn took(&mut self) {
        self.took = true;
    }

    /// Waits for the next step and takes it: at every window's end, pauses the caught-up
    /// partitions if the window passed without a record or an announced write; resumes every
    /// paused one when a write is announced or the poll finds one. Never completes when
    /// pausing is off. Cancel-safe: a wait dropped before it completes changes nothing.
    pub async fn change(&mut self, consumer: &GroupConsumer) {
        if self.after.is_zero() {
            return std::future::pending().await;
        }
        let paused = !self.paused.is_empty();
        tokio::select! {
            () = sleep_until(self.check_at) => self.check(consumer),
            () = announced(&mut self.writes), if paused => self.resume(consumer, "written here"),
            () = sleep_until(self.poll_at), if paused => self.poll(consumer),
        }
    }

    fn check(&mut self, consumer: &GroupConsumer) {
        self.check_at = Instant::now() + self.after;
        if self.writes.iter().any(|w| w.has_changed().unwrap_or(false)) {
            // Written while fetching: what was written may still be on its way.
            return self.resume(consumer, "written here");
        }
        if std::mem::take(&mut self.took) {
            return;
        }
        let idle: Vec<((String, i32), i64)> = consumer
            .context()
            .caught_up()
            .into_iter()
            .filter(|(tp, _)| !self.paused.iter().any(|(p, _)| p == tp))
            .collect();
        if idle.is_empty() {
            return;
        }
        if let Err(err) = consumer.pause(&list(idle.iter().map(|(tp, _)| tp))) {
            return tracing::warn!(error = %err, "pausing idle partitions failed");
        }
        if self.paused.is_empty() {
            self.poll_at = Instant::now() + self.poll;
        }
        self.paused.extend(idle);
        self.gauge.set(self.paused.len() as f64);
        tracing::debug!(partitions = self.paused.len(), "idle partitions paused");
    }

    /// Resumes the paused partitions if any high watermark moved past the one it had
    /// reached (or the broker could not say).
    fn poll(&mut self, consumer: &GroupConsumer) {
        self.poll_at = Instant::now() + self.poll;
        match ends(consumer, self.paused.iter().map(|(tp, _)| tp)) {
            Ok(ends) => {
                let moved = self.paused.iter().any(|((topic, partition), end)| {
                    ends.find_partition(topic, *partition)
                        .and_then(|e| e.offset().to_raw())
                        .is_some_and(|now| now > *end)
                });
                if moved {
                    self.resume(consumer, "written elsewhere");
                }
            }
            Err(err) => {
                tracing::debug!(error = %err, "watermarks of idle partitions unknown");
                self.resume(consumer, "watermarks unknown");
            }
        }
    }

    fn resume(&mut self, consumer: &GroupConsumer, why: &'static str) {
        for write in &mut self.writes {
            write.borrow_and_update();
        }
        self.took = false;
        self.check_at = Instant::now() + self.after;
        if self.paused.is_empty() {
            return;
        }
        let partitions = list(self.paused.iter().map(|(tp, _)| tp));
        // Partitions revoked meanwhile are not the client's any more: nothing to resume.
        if let Err(err) = consumer.resume(&partitions) {
            tracing::warn!(error = %err, "resuming idle partitions failed");
        }
        // librdkafka does not wake its fetcher on a resume: a consumer whose partitions
        // were all paused would leave them unfetched for up to a second (its broker thread
        // sleeps on I/O that long; confluent-kafka-go#630 shows the same). A request to
        // the partitions' brokers wakes their threads, which then fetch the resumed ones.
        let _ = ends(consumer, self.paused.iter().map(|(tp, _)| tp));
        tracing::debug!(
            partitions = self.paused.len(),
            why,
            "idle partitions resumed"
        );
        self.paused.clear();
        self.gauge.set(0.0);
    }
}

/// How long a watermark look waits for the brokers' answers.
const ENDS_WAIT: Duration = Duration::from_millis(200);

/// The high watermarks of `partitions` (at most [`ENDS_WAIT`] for the answer).
fn ends<'a>(
    consumer: &GroupConsumer,
    partitions: impl Iterator<Item = &'a (String, i32)>,
) -> rdkafka::error::KafkaResult<TopicPartitionList> {
    super::consumer::list_offsets(consumer, partitions, rdkafka::Offset::End, ENDS_WAIT)
}

fn list<'a>(partitions: impl Iterator<Item = &'a (String, i32)>) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    for (topic, partition) in partitions {
        list.add_partition(topic, *partition);
    }
    list
}

/// Completes when any of `writes` announces a write it has not seen.
async fn announced(writes: &mut [watch::Receiver<u64>]) {
    if writes.is_empty() {
        return std::future::pending().await;
    }
    let changed = writes.iter_mut().map(|w| Box::pin(w.changed()));
    let _ = futures::future::select_all(changed).await;
}

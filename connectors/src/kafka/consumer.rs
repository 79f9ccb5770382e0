use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use rdkafka::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::KafkaConfig;
use crate::component::Readiness;
use crate::metrics as m;

/// A group consumer whose context follows its assignment.
pub type GroupConsumer = StreamConsumer<TrackingContext>;

/// Where a group consumer stands on each partition assigned to it, for people:
/// `topic: p0@120, p1@98` per topic (the offset of the next record it reads), or that it
/// holds no partition (another replica does, or the group is rebalancing).
pub fn positions<C: ConsumerContext>(consumer: &StreamConsumer<C>) -> String {
    let Ok(list) = consumer.position() else {
        return "unknown (the consumer did not say)".into();
    };
    let mut by_topic: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for element in list.elements() {
        let at = match element.offset() {
            rdkafka::Offset::Offset(offset) => offset.to_string(),
            _ => "start".into(),
        };
        by_topic
            .entry(element.topic().to_string())
            .or_default()
            .push(format!("p{}@{at}", element.partition()));
    }
    if by_topic.is_empty() {
        return "no partition assigned here".into();
    }
    by_topic
        .into_iter()
        .map(|(topic, parts)| format!("{topic}: {}", parts.join(", ")))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Follows a group consumer's assignment: remembers partitions taken away by a rebalance
/// (so state kept for them is dropped, and restored afresh if they come back) and keeps the
/// component's [`Readiness`] true to it.
///
/// The consumer is not ready from the moment a rebalance revokes partitions until the next
/// assignment arrives and, for a component that keeps state per partition, until the
/// component says that state is restored ([`restored`](Self::restored)) for that very
/// assignment: a later rebalance in between keeps it not ready.
#[derive(Clone)]
pub struct TrackingContext {
    tracking: Arc<Mutex<Tracking>>,
    readiness: Readiness,
    /// Whether the component restores state for what it is assigned.
    stateful: bool,
    /// Set by [`group_consumer`].
    idle: IdleSettings,
}

/// What a consumer's [`IdlePause`](super::IdlePause) needs from its configuration.
#[derive(Clone, Default)]
pub(super) struct IdleSettings {
    /// `kafka.idle_pause`.
    pub after: std::time::Duration,
    /// `kafka.idle_poll`.
    pub poll: std::time::Duration,
    /// The consumer's client id (its component), for the metric.
    pub component: String,
}

#[derive(Default)]
struct Tracking {
    revoked: HashSet<(String, i32)>,
    /// What the group assigned, as the rebalance callbacks reported it.
    partitions: HashSet<(String, i32)>,
    /// Counts rebalances (revokes and assignments); the restore a component reports is for
    /// one of them, and a component that saw this number unchanged has nothing to sync.
    generation: u64,
    assigned: bool,
    /// Since when the consumer has had no assignment (created, or revoked and not assigned
    /// again); `None` while it has one.
    unassigned_since: Option<std::time::Instant>,
    /// The topics the consumer subscribed to ([`subscribe`]).
    topics: Vec<String>,
    /// Partitions the client's last statistics showed caught up — fetching, their fetch
    /// position at the high watermark the broker last reported, nothing fetched ahead
    /// waiting — with that watermark: only those may be paused when idle (see
    /// [`IdlePause`](super::IdlePause)).
    caught_up: HashMap<(String, i32), i64>,
}

/// How often a consumer reports its lag when idle pausing does not ask for more.
pub const LAG_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

impl TrackingContext {
    /// A context reporting to `readiness`; `stateful`: the component restores state for its
    /// partitions before it is ready (see [`restored`](Self::restored)).
    pub fn new(readiness: Readiness, stateful: bool) -> Self {
        readiness.not_ready("joining its consumer group");
        Self {
            tracking: Arc::new(Mutex::new(Tracking {
                unassigned_since: Some(std::time::Instant::now()),
                ..Tracking::default()
            })),
            readiness,
            stateful,
            idle: IdleSettings::default(),
        }
    }

    /// How long the consumer may go without a record before it pauses, and how often it
    /// polls while paused (see [`IdlePause`](super::IdlePause)).
    pub(super) fn idle(&self) -> &IdleSettings {
        &self.idle
    }

    /// The readiness this context keeps.
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// Partitions revoked since the last call.
    pub fn take_revoked(&self) -> HashSet<(String, i32)> {
        std::mem::take(&mut self.lock().revoked)
    }

    /// The partitions assigned now, as the rebalance callbacks reported them — read without
    /// a round trip through the client's main thread (`Consumer::assignment` is one, far
    /// too dear to ask per record).
    pub fn assignment(&self) -> Vec<(String, i32)> {
        self.lock().partitions.iter().cloned().collect()
    }

    /// Assigned partitions the client's last statistics showed caught up, each with the
    /// high watermark it had reached (a later one means records came since).
    pub(super) fn caught_up(&self) -> Vec<((String, i32), i64)> {
        let tracking = self.lock();
        tracking
            .caught_up
            .iter()
            .filter(|(tp, _)| tracking.partitions.contains(*tp))
            .map(|(tp, end)| (tp.clone(), *end))
            .collect()
    }

    /// The current rebalance's number: read it before restoring, hand it to
    /// [`restored`](Self::restored) after.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// The component restored its state for assignment `generation`; it is ready unless a
    /// rebalance came since.
    pub fn restored(&self, generation: u64) {
        let tracking = self.lock();
        if tracking.assigned && tracking.generation == generation {
            self.readiness.ready();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tracking> {
        self.tracking.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ClientContext for TrackingContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        // Lag per topic over the partitions this member holds (librdkafka: high watermark
        // minus the committed offset; unknown partitions left out).
        let mut lag: HashMap<&str, i64> = HashMap::new();
        {
            let tracking = self.lock();
            for (name, topic) in &statistics.topics {
                for (partition, p) in &topic.partitions {
                    if *partition >= 0
                        && p.consumer_lag >= 0
                        && tracking.partitions.contains(&(name.clone(), *partition))
                    {
                        *lag.entry(name.as_str()).or_default() += p.consumer_lag;
                    }
                }
            }
        }
        for (topic, records) in lag {
            metrics::gauge!(m::CONSUMER_LAG, m::COMPONENT_ID => self.idle.component.clone(),
                "topic" => topic.to_string())
            .set(records as f64);
        }
        let caught_up = statistics
            .topics
            .into_iter()
            .flat_map(|(name, topic)| {
                topic
                    .partitions
                    .into_iter()
                    .filter(|(partition, p)| {
                        *partition >= 0
                            && p.fetch_state == "active"
                            && p.hi_offset >= 0
                            && p.next_offset >= p.hi_offset
                            && p.fetchq_cnt == 0
                    })
                    .map(move |(partition, p)| ((name.clone(), partition), p.hi_offset))
            })
            .collect();
        self.lock().caught_up = caught_up;
    }
}

impl ConsumerContext for TrackingContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let mut tracking = self.lock();
            tracking.assigned = false;
            tracking.unassigned_since = Some(std::time::Instant::now());
            tracking.generation += 1;
            for element in list.elements() {
                let tp = (element.topic().to_string(), element.partition());
                tracking.partitions.remove(&tp);
                tracking.caught_up.remove(&tp);
                tracking.revoked.insert(tp);
            }
            self.readiness.not_ready(format!(
                "rebalancing: {} partition(s) revoked, waiting for the new assignment",
                list.count()
            ));
            tracing::info!(partitions = list.count(), "partitions revoked");
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let mut tracking = self.lock();
                tracking.generation += 1;
                tracking.assigned = true;
                tracking.unassigned_since = None;
                for element in list.elements() {
                    tracking
                        .partitions
                        .insert((element.topic().to_string(), element.partition()));
                }
                if self.stateful && list.count() > 0 {
                    self.readiness.not_ready(format!(
                        "restoring state for {} assigned partition(s)",
                        list.count()
                    ));
                } else {
                    self.readiness.ready();
                }
                tracing::info!(partitions = list.count(), "partitions assigned");
            }
            Rebalance::Error(err) => {
                self.readiness.not_ready(format!("rebalance failed: {err}"));
                tracing::warn!(error = %err, "rebalance failed");
            }
            Rebalance::Revoke(_) => {}
        }
    }
}

/// A consumer in group `group_id` that stores offsets only when told to; `context` follows
/// its assignment (the consumer's [`context()`](rdkafka::consumer::Consumer::context) hands
/// it back).
///
/// With `kafka.instance_id` set (and `static_membership` on), the member is static
/// (`group.instance.id` = `<group>.<instance_id>`): a restarted process takes its partitions
/// back at once instead of waiting for the dead member's session to expire.
///
/// Every consumer reports its lag per topic every [`LAG_EVERY`] (more often with idle pausing).
pub fn group_consumer(
    config: &KafkaConfig,
    group_id: &str,
    client_id: &str,
    mut context: TrackingContext,
) -> Result<GroupConsumer, KafkaError> {
    context.idle = IdleSettings {
        after: config.idle_pause,
        poll: config.idle_poll,
        component: client_id.to_string(),
    };
    let mut client = config.client_config(client_id)?;
    if let Some(instance) = &config.instance_id
        && config.static_membership
    {
        client.set("group.instance.id", format!("{group_id}.{instance}"));
    }
    if !config.idle_pause.is_zero() {
        // The statistics say which partitions are caught up (see `TrackingContext::caught_up`).
        let interval = (config.idle_pause / 2).max(std::time::Duration::from_millis(100));
        client.set("statistics.interval.ms", interval.as_millis().to_string());
    } else {
        // The statistics give the consumer lag (`erpstream_consumer_lag_records`).
        client.set("statistics.interval.ms", LAG_EVERY.as_millis().to_string());
    }
    let watched = (Arc::downgrade(&context.tracking), client.clone());
    let consumer = client
        .set("group.id", group_id)
        .set("enable.auto.offset.store", "false")
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "200")
        .set("auto.offset.reset", "earliest")
        .set(
            "fetch.wait.max.ms",
            config.fetch_wait.as_millis().max(1).to_string(),
        )
        .set("fetch.min.bytes", "1")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .create_with_context(context)?;
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        let (tracking, client) = watched;
        runtime.spawn(watch_stranding(
            tracking,
            client,
            group_id.to_string(),
            client_id.to_string(),
        ));
    }
    Ok(consumer)
}

/// How long a consumer may go without an assignment before it nudges its group.
pub const STRANDED_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

/// Nudges the group of a consumer that has had no assignment for [`STRANDED_AFTER`] (and
/// again every [`STRANDED_AFTER`] while that lasts), until the consumer is dropped.
///
/// Why: tansu 0.6.0 (the local broker) can strand a group. When it answers a static
/// member's heartbeat with "unknown member", the member rejoins under a new member id, but
/// the group keeps the old id as its leader; tansu drops members that stopped calling only
/// when a *dynamic* member joins or any member leaves, so every rejoin of the static member is
/// told the rebalance is in progress, for ever (seen in `bench/chaos.sh`). The nudge is a
/// short-lived dynamic member of the same group, subscribed to the same topics, that joins
/// and leaves: its join makes tansu drop the dead leader, and the stranded member leads the
/// next round. It commits nothing. On Apache Kafka & co. a group is not stranded this way
/// (a static member that stays away is expired after the session timeout), so the nudge
/// does not happen there, and if it ever did it would cost one rebalance.
async fn watch_stranding(
    tracking: std::sync::Weak<Mutex<Tracking>>,
    client: rdkafka::ClientConfig,
    group_id: String,
    client_id: String,
) {
    let mut last_nudge: Option<std::time::Instant> = None;
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        let Some(tracking) = tracking.upgrade() else {
            return;
        };
        let (since, topics) = {
            let tracking = tracking.lock().unwrap_or_else(|p| p.into_inner());
            (tracking.unassigned_since, tracking.topics.clone())
        };
        drop(tracking);
        let stranded = since.is_some_and(|s| s.elapsed() >= STRANDED_AFTER)
            && last_nudge.is_none_or(|n| n.elapsed() >= STRANDED_AFTER);
        if !stranded || topics.is_empty() {
            continue;
        }
        last_nudge = Some(std::time::Instant::now());
        tracing::warn!(
            group = %group_id,
            unassigned_s = since.map(|s| s.elapsed().as_secs()).unwrap_or(0),
            "no partitions assigned for a long time; nudging the consumer group"
        );
        metrics::counter!(m::GROUP_NUDGES, m::COMPONENT_ID => client_id.clone()).increment(1);
        let (client, group) = (client.clone(), group_id.clone());
        let outcome = tokio::task::spawn_blocking(move || nudge(client, &group, &topics)).await;
        if let Ok(Err(err)) = outcome {
            tracing::warn!(group = %group_id, error = %err, "nudging the consumer group failed");
        }
    }
}

/// Joins `group` as a dynamic member subscribed to `topics`, polls until it has taken part
/// in a rebalance (or a few seconds), and leaves. Nothing is committed.
fn nudge(
    mut client: rdkafka::ClientConfig,
    group: &str,
    topics: &[String],
) -> Result<(), KafkaError> {
    let consumer: BaseConsumer = client
        .remove("group.instance.id")
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("session.timeout.ms", "10000")
        .create()?;
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < until {
        // Any record fetched is dropped unread: the nudge consumes nothing.
        let _ = consumer.poll(std::time::Duration::from_millis(200));
        if consumer.assignment().is_ok_and(|a| a.count() > 0) {
            break;
        }
    }
    consumer.unsubscribe();
    drop(consumer);
    Ok(())
}

/// Subscribes `consumer` to `topics`, remembered for the nudge of a stranded group (see
/// [`STRANDED_AFTER`]).
pub fn subscribe(consumer: &GroupConsumer, topics: &[&str]) -> Result<(), KafkaError> {
    consumer.context().lock().topics = topics.iter().map(|t| t.to_string()).collect();
    consumer.subscribe(topics)
}

/// The offsets of `partitions` at `at` (`Offset::End`: their high watermarks,
/// `Offset::Beginning`: their first records), one ListOffsets request per broker, waiting at
/// most `wait`. Blocks for the round trip, telling the runtime so where it can.
pub fn list_offsets<'a>(
    consumer: &GroupConsumer,
    partitions: impl Iterator<Item = &'a (String, i32)>,
    at: rdkafka::Offset,
    wait: std::time::Duration,
) -> Result<rdkafka::TopicPartitionList, KafkaError> {
    let mut wanted = rdkafka::TopicPartitionList::new();
    for (topic, partition) in partitions {
        wanted.add_partition_offset(topic, *partition, at)?;
    }
    let look = || consumer.offsets_for_times(wanted, wait);
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) if runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(look)
        }
        _ => look(),
    }
}

/// Commits the stored offsets synchronously at shutdown; "nothing stored since the last
/// commit" is not an error.
pub fn commit_stored(consumer: &GroupConsumer) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(err) => tracing::warn!(error = %err, "final offset commit failed"),
    }
}

/// A batch of up to `size` records: waits for the first, then at most `wait` for more.
/// `None` once shutdown is asked for; with `idle`, an empty batch after that long without a
/// record (for components with time-driven work). Pauses and resumes the consumer's
/// partitions as `pause` says while it waits for the first.
pub async fn next_batch(
    consumer: &GroupConsumer,
    size: usize,
    wait: std::time::Duration,
    idle: Option<std::time::Duration>,
    pause: &mut super::IdlePause,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> Option<Vec<rdkafka::message::OwnedMessage>> {
    let idle = async {
        match idle {
            Some(idle) => tokio::time::sleep(idle).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(idle);
    let first = loop {
        tokio::select! {
            biased;
            _ = super::shutdown_requested(shutdown) => return None,
            _ = &mut idle => return Some(Vec::new()),
            () = pause.change(consumer) => {}
            message = consumer.recv() => match message {
                Ok(message) => break message.detach(),
                Err(err) => {
                    tracing::warn!(error = %err, "consume failed");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            },
        }
    };
    pause.took();
    let mut batch = vec![first];
    let until = tokio::time::Instant::now() + wait;
    while batch.len() < size {
        match tokio::time::timeout_at(until, consumer.recv()).await {
            Ok(Ok(message)) => batch.push(message.detach()),
            Ok(Err(err)) => tracing::warn!(error = %err, "consume failed"),
            Err(_) => break,
        }
    }
    Some(batch)
}

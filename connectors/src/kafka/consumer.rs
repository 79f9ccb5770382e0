use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rdkafka::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::KafkaConfig;

/// A group consumer whose context records revoked partitions.
pub type GroupConsumer = StreamConsumer<TrackingContext>;

/// Remembers partitions taken away by a rebalance, so that state kept for them is dropped
/// and restored afresh if they come back, and whether the consumer has joined its group.
#[derive(Default, Clone)]
pub struct TrackingContext {
    revoked: Arc<Mutex<HashSet<(String, i32)>>>,
    joined: Arc<AtomicBool>,
}

impl TrackingContext {
    /// Set once the group gave this consumer its (possibly empty) assignment.
    pub fn joined(&self) -> Arc<AtomicBool> {
        self.joined.clone()
    }

    /// Partitions revoked since the last call.
    pub fn take_revoked(&self) -> HashSet<(String, i32)> {
        std::mem::take(&mut *self.revoked.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl ClientContext for TrackingContext {}

impl ConsumerContext for TrackingContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let mut revoked = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
            for element in list.elements() {
                revoked.insert((element.topic().to_string(), element.partition()));
            }
            tracing::info!(partitions = list.count(), "partitions revoked");
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            self.joined.store(true, Ordering::SeqCst);
            tracing::info!(partitions = list.count(), "partitions assigned");
        }
    }
}

/// A consumer in group `group_id` that stores offsets only when told to.
///
/// With `kafka.instance_id` set, the member is static (`group.instance.id` =
/// `<group>.<instance_id>`): a restarted process takes its partitions back at once instead
/// of waiting for the dead member's session to expire.
pub fn group_consumer(
    config: &KafkaConfig,
    group_id: &str,
    client_id: &str,
) -> Result<(GroupConsumer, TrackingContext), KafkaError> {
    let context = TrackingContext::default();
    let mut client = config.client_config(client_id);
    if let Some(instance) = &config.instance_id {
        client.set("group.instance.id", format!("{group_id}.{instance}"));
    }
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
        .create_with_context(context.clone())?;
    Ok((consumer, context))
}

/// Commits the stored offsets synchronously at shutdown; "nothing stored since the last
/// commit" is not an error.
pub fn commit_stored(consumer: &GroupConsumer) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(err) => tracing::warn!(error = %err, "final offset commit failed"),
    }
}

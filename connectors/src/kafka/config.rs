use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use serde::Deserialize;

use super::security::{ConnectError, KafkaSecurity, probe};
use crate::validation::Problem;

/// The `kafka:` section of the topology.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port...]`.
    pub brokers: String,
    /// Prepended to every topic name, e.g. `staging.`; empty in production by default.
    #[serde(default)]
    pub topic_prefix: String,
    /// Replication factor of topics erpstream creates (use 3 on a production cluster).
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i32,
    /// How long the producer waits to batch records before sending.
    #[serde(default = "default_linger", with = "humantime_serde")]
    pub linger: Duration,
    /// Longest time a fetch waits on the broker for new data (low values cut latency).
    #[serde(default = "default_fetch_wait", with = "humantime_serde")]
    pub fetch_wait: Duration,
    /// After this long without a record, a consumer stops fetching until this process
    /// writes to one of its topics, or `idle_poll` passes (see `idle`); `0s` (the default)
    /// never pauses. For brokers that hold every empty fetch for the full `fetch_wait`
    /// (tansu): there idle consumers at a short `fetch_wait` keep the broker busy. Brokers
    /// that answer a fetch as soon as a record arrives (Apache Kafka, Redpanda, MSK,
    /// Confluent Cloud) need no pausing: give them a long `fetch_wait` instead.
    #[serde(default, with = "humantime_serde")]
    pub idle_pause: Duration,
    /// How often a paused consumer looks at its partitions' high watermarks (one request per
    /// broker) for records other processes wrote: a replay, a dead-letter redrive, another
    /// replica.
    #[serde(default = "default_idle_poll", with = "humantime_serde")]
    pub idle_poll: Duration,
    /// How long a produce may wait for the broker's acknowledgement before it counts as
    /// failed (the webhook then answers 503).
    #[serde(default = "default_delivery_timeout", with = "humantime_serde")]
    pub delivery_timeout: Duration,
    /// Idempotent producer (no duplicates or reordering from producer retries). Keep it on
    /// with real Kafka; tansu 0.6.0 can panic in its sequence check and stop serving, so the
    /// local stack turns it off. Without it retries may duplicate a record (dedupe and the
    /// version guards absorb that) and one request is in flight per connection to keep order.
    #[serde(default = "default_idempotence")]
    pub idempotence: bool,
    /// Consume–transform–produce in Kafka transactions: each processor batch's emitted
    /// records, changelog writes and input offsets commit together or not at all, and a
    /// replica that lost its partitions to another is fenced. Needs a broker with
    /// transactions (Apache Kafka, Confluent Cloud, MSK, Redpanda; tansu 0.6.0 has none), the
    /// idempotent producer and an `instance_id`. Off, a batch's effects are made durable in
    /// one flush before its offsets are stored, and the processors recognise a batch read
    /// again (see `erpstream_pipeline::processors`).
    #[serde(default)]
    pub transactions: bool,
    /// Stable id of this deployment instance (one per replica, e.g. the pod name). When set,
    /// consumers are static group members and a restart does not wait for a rebalance; with
    /// `transactions`, it names the replica's transactional producers, so a restarted replica
    /// aborts what its previous run left open at once.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// With an `instance_id`, consumers are static group members (the default): a restart
    /// keeps the partitions. Apache Kafka & co. expire a static member that stays away for
    /// the session timeout (10 s); tansu 0.6.0 never does, so `false` (dynamic members) is
    /// the choice there — though tansu was seen handing a dead dynamic member partitions too
    /// (README, "Replicas"): run several replicas on a real Kafka.
    #[serde(default = "default_static_membership")]
    pub static_membership: bool,
    /// TLS and SASL (see [`KafkaSecurity`]); plaintext by default.
    #[serde(default)]
    pub security: KafkaSecurity,
    /// Extra librdkafka properties, for what `security` does not cover (never secrets).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_idempotence() -> bool {
    true
}
fn default_static_membership() -> bool {
    true
}
fn default_replication_factor() -> i32 {
    1
}
fn default_linger() -> Duration {
    Duration::from_millis(1)
}
fn default_fetch_wait() -> Duration {
    Duration::from_millis(5)
}
fn default_idle_poll() -> Duration {
    Duration::from_secs(1)
}
fn default_delivery_timeout() -> Duration {
    Duration::from_secs(5)
}

impl KafkaConfig {
    /// A configuration with defaults for `brokers`.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            topic_prefix: String::new(),
            replication_factor: default_replication_factor(),
            linger: default_linger(),
            fetch_wait: default_fetch_wait(),
            idle_pause: Duration::ZERO,
            idle_poll: default_idle_poll(),
            delivery_timeout: default_delivery_timeout(),
            idempotence: default_idempotence(),
            transactions: false,
            instance_id: None,
            static_membership: default_static_membership(),
            security: KafkaSecurity::default(),
            properties: BTreeMap::new(),
        }
    }

    /// Checks the rules serde cannot express; every problem with its path below `at`.
    pub fn validate(&self, at: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.transactions && !self.idempotence {
            problems.push(Problem::new(
                format!("{at}.idempotence"),
                "must be true with transactions (a transactional producer is idempotent)",
            ));
        }
        if self.transactions && self.instance_id.as_deref().is_none_or(str::is_empty) {
            problems.push(Problem::new(
                format!("{at}.instance_id"),
                "is required with transactions: it names this replica's transactional producers",
            ));
        }
        if !self.idle_pause.is_zero() && self.idle_poll.is_zero() {
            problems.push(Problem::new(
                format!("{at}.idle_poll"),
                "must be > 0 with idle_pause: a paused consumer would never see records other processes write",
            ));
        }
        problems.extend(self.security.validate(
            &format!("{at}.security"),
            &self.properties,
            &format!("{at}.properties"),
        ));
        problems
    }

    /// The broker-side name of a logical topic.
    pub fn topic(&self, logical: &str) -> String {
        format!("{}{logical}", self.topic_prefix)
    }

    /// Base client settings shared by producers, consumers and admin clients; the SASL
    /// password is read now (a client creation error if it cannot be).
    pub fn client_config(&self, client_id: &str) -> Result<ClientConfig, KafkaError> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", client_id)
            .set("broker.address.family", "v4")
            .set("log_level", "4");
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        self.security.apply(&mut config).map_err(|e| {
            KafkaError::ClientCreation(format!("kafka.security.sasl.password: {e}"))
        })?;
        Ok(config)
    }

    /// Connects to the brokers and reads their metadata, waiting up to `patience` for one to
    /// answer; refused credentials or certificates end the wait at once (see [`probe`]).
    pub async fn probe(&self, patience: Duration) -> Result<(), ConnectError> {
        let config = self.client_config("erpstream-probe")?;
        let brokers = self.brokers.clone();
        tokio::task::spawn_blocking(move || probe(config, &brokers, patience))
            .await
            .map_err(|_| ConnectError::Client(KafkaError::Canceled))?
    }
}

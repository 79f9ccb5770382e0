//! The topology file: which sources, topics, processors and sinks run, and how they connect.
//!
//! Loading is two-phase, as in Vector's config compiler: [`Topology::load`] parses and
//! validates without any I/O and returns *every* problem at once, each with its path in the
//! file; only a valid topology is handed to the runtime, which then connects to things.

mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use erpstream_connectors::kafka::KafkaConfig;
use erpstream_connectors::sinks::erp_rest::ErpRestConfig;
use erpstream_connectors::sinks::planning_pg::PlanningPgConfig;
use erpstream_connectors::sinks::storefront_webhook::StorefrontWebhookConfig;
use erpstream_connectors::sources::erp_webhook::ErpWebhookConfig;
use erpstream_connectors::sources::pg_cdc::PgCdcConfig;
use erpstream_connectors::sources::planning_api::PlanningApiConfig;
use erpstream_connectors::sources::rest_poll::RestPollConfig;
use erpstream_connectors::sources::storefront_api::StorefrontApiConfig;
use erpstream_connectors::validation::Problem;
use erpstream_schemas::EventKind;
use serde::Deserialize;

use crate::processors::dedupe::DedupeConfig;
use crate::processors::inventory::InventoryConfig;

/// A validated topology.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Names consumer groups and internal topics; two deployments with the same `app_id`
    /// share state.
    pub app_id: String,
    /// The HTTP listener.
    pub http: HttpConfig,
    /// The broker.
    pub kafka: KafkaConfig,
    /// The schema registry.
    pub registry: RegistryConfig,
    /// Declared topics by logical name.
    pub topics: BTreeMap<String, TopicConfig>,
    /// Sources by id.
    pub sources: BTreeMap<String, SourceConfig>,
    /// Processors by id.
    pub processors: BTreeMap<String, ProcessorConfig>,
    /// Sinks by id.
    pub sinks: BTreeMap<String, SinkConfig>,
}

/// The `http:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the one HTTP listener (webhooks, APIs, metrics, health).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}

/// The `registry:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Base URL of a Confluent-compatible schema registry.
    pub url: String,
}

/// One entry of `topics:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    /// Partition count; topics keyed by sku that are processed together must be equal.
    pub partitions: i32,
    /// Log compaction (for state topics such as `inventory.available`).
    #[serde(default)]
    pub compacted: bool,
    /// The contract of its values; defaults to the contract named like the topic.
    #[serde(default)]
    pub contract: Option<String>,
}

/// A source, by `type`.
#[derive(Debug, Clone)]
pub enum SourceConfig {
    /// `erp_webhook`.
    ErpWebhook(ErpWebhookConfig),
    /// `storefront_api`.
    StorefrontApi(StorefrontApiConfig),
    /// `pg_cdc`.
    PgCdc(PgCdcConfig),
    /// `rest_poll`.
    RestPoll(RestPollConfig),
    /// `planning_api`.
    PlanningApi(PlanningApiConfig),
}

/// A processor, by `type`.
#[derive(Debug, Clone)]
pub enum ProcessorConfig {
    /// `dedupe`.
    Dedupe(DedupeConfig),
    /// `inventory`.
    Inventory(InventoryConfig),
}

impl ProcessorConfig {
    /// Topics or processor ids this processor reads.
    pub fn inputs(&self) -> &[String] {
        match self {
            ProcessorConfig::Dedupe(c) => &c.inputs,
            ProcessorConfig::Inventory(c) => &c.inputs,
        }
    }

    /// The topic it writes, if any.
    pub fn output(&self) -> Option<&str> {
        match self {
            ProcessorConfig::Dedupe(c) => c.output.as_deref(),
            ProcessorConfig::Inventory(c) => Some(&c.output),
        }
    }
}

/// A sink, by `type`.
#[derive(Debug, Clone)]
pub enum SinkConfig {
    /// `storefront_webhook`.
    StorefrontWebhook(StorefrontWebhookConfig),
    /// `erp_rest`.
    ErpRest(ErpRestConfig),
    /// `planning_pg`.
    PlanningPg(PlanningPgConfig),
}

impl SinkConfig {
    /// Topics this sink reads.
    pub fn inputs(&self) -> &[String] {
        match self {
            SinkConfig::StorefrontWebhook(c) => &c.inputs,
            SinkConfig::ErpRest(c) => &c.inputs,
            SinkConfig::PlanningPg(c) => &c.inputs,
        }
    }
}

/// Every problem found in a topology file.
#[derive(Debug, thiserror::Error)]
#[error("{} problem(s) in the topology:\n{}", .0.len(), .0.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
pub struct TopologyErrors(pub Vec<Problem>);

impl Topology {
    /// Reads and validates a topology file (reading the file is the only I/O).
    pub fn load(path: &std::path::Path) -> Result<Self, TopologyErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            TopologyErrors(vec![Problem::new(
                path.display().to_string(),
                format!("could not be read: {e}"),
            )])
        })?;
        Self::parse(&text)
    }

    /// Validates topology text.
    pub fn parse(text: &str) -> Result<Self, TopologyErrors> {
        validate::parse(text)
    }

    /// The contract carried by a declared topic.
    pub fn contract(&self, topic: &str) -> Option<EventKind> {
        let config = self.topics.get(topic)?;
        EventKind::from_topic(config.contract.as_deref().unwrap_or(topic))
    }
}

//! The topology file: which sources, topics, processors and sinks run, and how they connect.
//!
//! Loading is two-phase, as in Vector's config compiler: [`Topology::load`] parses and
//! validates without any I/O and returns *every* problem at once, each with its path in the
//! file; only a valid topology is handed to the runtime, which then connects to things.

mod registry;
#[cfg(test)]
mod tests;
mod validate;

pub use registry::{BasicAuth, RegistryAccessError, RegistryConfig};

use std::collections::BTreeMap;
use std::net::SocketAddr;

use std::sync::Arc;

use erpstream_connectors::admission::AdmissionConfig;
use erpstream_connectors::component::{Graph, Names};
use erpstream_connectors::kafka::KafkaConfig;
use erpstream_connectors::validation::Problem;
use erpstream_schemas::EventKind;
use serde::Deserialize;

use crate::components::{Configured, ConfiguredProcessor};
use crate::runtime::listener::{HttpLimits, HttpTls};

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
    pub sources: BTreeMap<String, Configured>,
    /// Processors by id.
    pub processors: BTreeMap<String, Arc<dyn ConfiguredProcessor>>,
    /// Sinks by id.
    pub sinks: BTreeMap<String, Configured>,
    /// The operator console and connector API, if served.
    pub console: Option<crate::console::ConsoleConfig>,
    /// Each source's, processor's and sink's settings as written (after `${VAR}`
    /// substitution), by `<section>.<id>`: what the console shows, redacted.
    pub settings: BTreeMap<String, serde_yaml_ng::Value>,
}

/// The `http:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the one HTTP listener (webhooks, APIs, metrics, health).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// When the routes that take data in refuse requests (`503` + `Retry-After`) because
    /// the broker or the pipeline is behind.
    #[serde(default)]
    pub admission: AdmissionConfig,
    /// What one client may hold of the listener: connections, deadlines, head size,
    /// requests per route.
    #[serde(default)]
    pub limits: HttpLimits,
    /// HTTPS: the certificate and key served (re-read when the files change); plain HTTP
    /// without it.
    #[serde(default)]
    pub tls: Option<HttpTls>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            admission: AdmissionConfig::default(),
            limits: HttpLimits::default(),
            tls: None,
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
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

    /// How this deployment names topics, groups and changelogs.
    pub fn names(&self) -> Names {
        Names::new(&self.app_id, &self.kafka)
    }

    /// The sources and sinks, with their ids.
    pub fn components(&self) -> impl Iterator<Item = (&String, &Configured)> {
        self.sources.iter().chain(&self.sinks)
    }
}

impl Graph for Topology {
    fn contract(&self, topic: &str) -> Option<EventKind> {
        Topology::contract(self, topic)
    }
    fn partitions(&self, topic: &str) -> Option<i32> {
        self.topics.get(topic).map(|t| t.partitions)
    }
    fn has_source(&self, id: &str) -> bool {
        self.sources.contains_key(id)
    }
    fn has_snapshot(&self, processor: &str) -> bool {
        self.processors
            .get(processor)
            .is_some_and(|p| p.keeps_snapshot())
    }
}

//! What the runtime hands a component when it builds it: its names, the broker, the
//! topology's topics and the services of other components.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use erpstream_schemas::{Codec, EventKind};

use crate::admission::Admission;
use crate::kafka::{Changelog, KafkaConfig, Publisher};
use crate::sources::storefront_api::ApiAuth;

/// How erpstream names what belongs to a component: broker-side topics, dead-letter topics,
/// changelogs, consumer groups and state keys. Validation (which topics to create) and the
/// built components use the same rules.
#[derive(Debug, Clone)]
pub struct Names {
    app_id: String,
    kafka: KafkaConfig,
}

impl Names {
    /// The names of deployment `app_id` on the broker `kafka` describes.
    pub fn new(app_id: &str, kafka: &KafkaConfig) -> Self {
        Self {
            app_id: app_id.to_string(),
            kafka: kafka.clone(),
        }
    }

    /// The broker-side name of a logical topic (with the configured prefix).
    pub fn topic(&self, logical: &str) -> String {
        self.kafka.topic(logical)
    }

    /// The dead-letter topic of a logical topic: `<topic>.dlq`, broker-side.
    pub fn dlq(&self, logical: &str) -> String {
        format!("{}.dlq", self.topic(logical))
    }

    /// The changelog of `component`'s state (one per `qualifier`, e.g. per input topic).
    pub fn changelog(&self, component: &str, qualifier: Option<&str>) -> String {
        match qualifier {
            Some(q) => self.topic(&format!("{}.{component}.{q}.changelog", self.app_id)),
            None => self.topic(&format!("{}.{component}.changelog", self.app_id)),
        }
    }

    /// The consumer group of `component`, which is also the key of its state in databases
    /// (a replication slot's snapshot bookkeeping, a poll cursor): `<app_id>.<component>`.
    pub fn group(&self, component: &str) -> String {
        format!("{}.{component}", self.app_id)
    }
}

/// A logical topic as a component uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The broker-side name.
    pub topic: String,
    /// Its broker-side dead-letter topic.
    pub dlq: String,
    /// The contract it carries (validation made sure there is one).
    pub contract: EventKind,
}

/// A materialized stock state that a source serves behind its own authentication (the
/// inventory processor's snapshot, served by `storefront_api`).
pub trait SnapshotService: Send + Sync {
    /// The snapshot routes, checking requests with `auth`.
    fn router(&self, auth: Arc<ApiAuth>) -> axum::Router;
    /// The OpenAPI document of those routes.
    fn api(&self) -> utoipa::openapi::OpenApi;
    /// One sku's whole state for people (the operator console's *Stock*): its `partition`
    /// and, per location, the figures, the ERP time and input offset of the figure that set
    /// `on_hand`, and the open holds with when they were taken and expire; `None` when no
    /// state read here holds the sku.
    fn sku(&self, sku: &str) -> Option<serde_json::Value>;
    /// The whole `?detail=true` snapshot body, as the route serves it (the console's
    /// reconciliation compares against it); `Err` names the partitions still being read.
    fn detail(&self) -> Result<Vec<u8>, String>;
}

/// What a component is built with.
#[derive(Clone)]
pub struct Context {
    /// The component's id in the topology.
    pub id: String,
    /// Naming rules.
    pub names: Names,
    /// The broker settings.
    pub kafka: KafkaConfig,
    /// The shared, acknowledged producer (its codec talks to the registry).
    pub publisher: Publisher,
    /// The gate of the routes that take data in (see [`crate::admission`]).
    pub admission: Admission,
    contracts: Arc<BTreeMap<String, EventKind>>,
    snapshots: Arc<HashMap<String, Arc<dyn SnapshotService>>>,
}

impl Context {
    /// The context of component `id`: `contracts` are the declared topics' contracts,
    /// `snapshots` the snapshot services of processors by id.
    pub fn new(
        id: &str,
        names: Names,
        kafka: KafkaConfig,
        publisher: Publisher,
        admission: Admission,
        contracts: Arc<BTreeMap<String, EventKind>>,
        snapshots: Arc<HashMap<String, Arc<dyn SnapshotService>>>,
    ) -> Self {
        Self {
            id: id.to_string(),
            names,
            kafka,
            publisher,
            admission,
            contracts,
            snapshots,
        }
    }

    /// A logical topic's broker-side name, dead-letter topic and contract. Validation made
    /// sure every topic a component names is declared with a contract; `None` otherwise.
    pub fn resolve(&self, logical: &str) -> Option<Resolved> {
        Some(Resolved {
            topic: self.names.topic(logical),
            dlq: self.names.dlq(logical),
            contract: *self.contracts.get(logical)?,
        })
    }

    /// The logical topics a component reads, resolved (see [`resolve`](Self::resolve)).
    pub fn inputs(&self, logical: &[String]) -> Vec<Resolved> {
        logical.iter().filter_map(|t| self.resolve(t)).collect()
    }

    /// The broker-side name of a logical topic.
    pub fn topic(&self, logical: &str) -> String {
        self.names.topic(logical)
    }

    /// This component's consumer group and state key.
    pub fn group(&self) -> String {
        self.names.group(&self.id)
    }

    /// The lease in erpstream's `database` under which this component's work runs on one
    /// replica at a time (named by its state key, held for this replica's `instance_id`).
    pub fn lease(&self, database: &str) -> Result<super::Lease, crate::postgres::PgError> {
        let holder = match &self.kafka.instance_id {
            Some(instance) => format!("instance {instance}"),
            None => format!("process {}", std::process::id()),
        };
        super::Lease::new(database, &self.group(), &holder)
    }

    /// This component's changelog for `qualifier`.
    pub fn changelog(&self, qualifier: Option<&str>) -> Changelog {
        Changelog::new(
            self.names.changelog(&self.id, qualifier),
            self.kafka.clone(),
            self.publisher.clone(),
        )
    }

    /// The codec of the shared producer.
    pub fn codec(&self) -> &Codec {
        self.publisher.codec()
    }

    /// The snapshot service of processor `id`.
    pub fn snapshot(&self, id: &str) -> Option<Arc<dyn SnapshotService>> {
        self.snapshots.get(id).cloned()
    }
}

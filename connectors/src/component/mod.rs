//! The component model: what a source or sink type provides from its own folder, and what
//! the runtime hands it.
//!
//! A type implements [`Component`] on its configuration struct: its checks, the topics it
//! reads and writes with the contracts it takes and makes, the topics it needs for itself,
//! and how it is built into a [`Running`] component. The pipeline's registry gives each
//! implementation its `type:` name and section; the topology, its validation, the runtime
//! and the tools go through the registry and name no concrete type.
//!
//! # What an implementation must keep
//!
//! - **Input is at-least-once.** A consuming component sees every record of its inputs at
//!   least once: after a crash or a rebalance, records after the last committed offset come
//!   again. Its effects must be idempotent (a version guard, an idempotency key, an upsert).
//! - **Offsets follow durability.** An input offset is stored only once the effect of that
//!   record and of every earlier record of its partition is durable: delivered, written,
//!   superseded by a newer record that is, or dead-lettered. [`OffsetTracker`] keeps this.
//! - **Outages are waited out, not dead-lettered.** An error that may pass by itself (the
//!   registry, the broker or a database away) is retried with backoff until it passes or
//!   shutdown comes ([`retrying`]); only what can never succeed is dead-lettered, with a
//!   reason a person can act on; an error the broker will never accept stops the component.
//! - **Per-key order.** Effects for one key happen in input order and never move a key
//!   backwards.
//! - **A 202, a stored offset, a confirmed LSN or a cursor moves only after the write it
//!   depends on is durable.**
//! - **Readiness tells the truth.** [`Running::readiness`] is ready only while the component
//!   can do its work: a consumer holds its assignment and the state for it is restored.
//! - **Shutdown is signalled once** through the `watch` channel given to the task: the task
//!   finishes or abandons the work in hand (abandoned work is redone after the restart) and
//!   returns.
//!
//! [`OffsetTracker`]: crate::kafka::OffsetTracker
//! [`retrying`]: crate::kafka::retrying

mod context;
mod control;
mod history;
mod lease;
mod readiness;

use std::fmt::Debug;
use std::sync::Arc;

use erpstream_schemas::{Codec, EventKind};
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

pub use context::{Context, Names, Resolved, SnapshotService};
pub use control::{Control, Outcome, Standing, Tried};
pub use history::{Exchange, History};
pub use lease::{Lease, LeaseError};
pub use readiness::Readiness;

use crate::kafka::TopicSpec;
use crate::validation::Problem;

/// Sources write topics from the outside world; sinks deliver topics to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Under `sources:`.
    Source,
    /// Under `sinks:`.
    Sink,
}

impl Kind {
    /// The topology section.
    pub fn section(self) -> &'static str {
        match self {
            Kind::Source => "sources",
            Kind::Sink => "sinks",
        }
    }

    /// The `component_kind` of its logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Source => "source",
            Kind::Sink => "sink",
        }
    }
}

/// A topic a component reads or writes, named by the setting that names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// The setting's path below the component, e.g. `inputs[0]` or `tables.public.bin.topic`.
    pub field: String,
    /// The logical topic.
    pub topic: String,
    /// The contracts it may carry.
    pub contracts: &'static [EventKind],
    /// Whether the component writes `<topic>.dlq` for records of this port (what it reads;
    /// source rows that do not fit their mapping).
    pub dead_letters: bool,
}

impl Port {
    /// A port at `field` for `topic`, carrying one of `contracts`.
    pub fn new(
        field: impl Into<String>,
        topic: impl Into<String>,
        contracts: &'static [EventKind],
    ) -> Self {
        Self {
            field: field.into(),
            topic: topic.into(),
            contracts,
            dead_letters: false,
        }
    }

    /// A topic whose rows that do not fit its contract a source dead-letters: a mapped
    /// topic, carrying one of the contracts a mapping can make.
    pub fn mapped(field: impl Into<String>, topic: impl Into<String>) -> Self {
        Self {
            dead_letters: true,
            ..Self::new(field, topic, &crate::sources::mapping::MAPPABLE)
        }
    }

    /// One port per entry of a list setting such as `inputs`.
    pub fn list(field: &str, topics: &[String], contracts: &'static [EventKind]) -> Vec<Self> {
        topics
            .iter()
            .enumerate()
            .map(|(i, topic)| Self {
                dead_letters: true,
                ..Self::new(format!("{field}[{i}]"), topic, contracts)
            })
            .collect()
    }
}

/// An HTTP path a component serves, and the setting that names it (`None`: a fixed path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The setting below the component, if the path is configurable.
    pub field: Option<&'static str>,
    /// The path.
    pub path: String,
}

/// What a component's cross-component checks may look up in the rest of the topology.
pub trait Graph {
    /// The contract of a declared logical topic.
    fn contract(&self, topic: &str) -> Option<EventKind>;
    /// The partition count of a declared logical topic.
    fn partitions(&self, topic: &str) -> Option<i32>;
    /// Whether a source with this id exists.
    fn has_source(&self, id: &str) -> bool;
    /// Whether this id is a processor that keeps an inventory snapshot.
    fn has_snapshot(&self, processor: &str) -> bool;
}

/// A source or sink type, implemented on its configuration (deserialized from the entry's
/// settings, `type:` removed); the registry line gives it its `type:` name and section.
/// See the module documentation for the guarantees an implementation keeps.
pub trait Component: DeserializeOwned + Debug + Clone + Send + Sync + 'static {
    /// Checks the settings alone: no I/O, every problem with its path below `at` (the
    /// component's path, e.g. `sinks.storefront`).
    fn validate(&self, at: &str) -> Vec<Problem>;

    /// Topics it reads, with the contracts it accepts on each.
    fn inputs(&self) -> Vec<Port> {
        Vec::new()
    }

    /// Topics it writes, with the contracts it may write to each.
    fn outputs(&self) -> Vec<Port> {
        Vec::new()
    }

    /// HTTP paths it serves (one path, one component).
    fn routes(&self) -> Vec<Route> {
        Vec::new()
    }

    /// Checks against the rest of the topology (its mappings against the contracts of its
    /// topics, ids it names, co-partitioning), beyond the declared and contract-checked
    /// ports; no I/O.
    fn check(&self, _at: &str, _graph: &dyn Graph) -> Vec<Problem> {
        Vec::new()
    }

    /// The topics component `id` needs besides the declared ones: dead-letter topics of
    /// what it reads or maps, changelogs of its state. `partitions` gives a declared topic's
    /// count. By default: the dead-letter topic of every port that has one.
    fn topics(&self, _id: &str, names: &Names, partitions: &dyn Fn(&str) -> i32) -> Vec<TopicSpec> {
        let ports: Vec<Port> = self.inputs().into_iter().chain(self.outputs()).collect();
        dead_letter_topics(&ports, names, partitions)
    }

    /// Builds the running component. It may check what it connects to (a database that can
    /// never work stops the start); it must not deliver or consume anything before its task
    /// runs.
    fn build(&self, context: Context)
    -> impl Future<Output = Result<Running, crate::Error>> + Send;

    /// What a sink would do with one record of contract `kind`, as JSON objects (requests
    /// it would send, rows it would write), without doing it: `erpstream replay --into
    /// <sink>` in shadow mode. `None`: the type has no shadow mode.
    fn shadow(&self) -> Option<Shadow> {
        None
    }
}

/// The dead-letter topic of each port's topic that has one, partitioned like it.
pub fn dead_letter_topics(
    ports: &[Port],
    names: &Names,
    partitions: &dyn Fn(&str) -> i32,
) -> Vec<TopicSpec> {
    ports
        .iter()
        .filter(|port| port.dead_letters)
        .map(|port| TopicSpec {
            name: names.dlq(&port.topic),
            partitions: partitions(&port.topic),
            compacted: false,
        })
        .collect()
}

/// A sink's shadow mode: what it would do with one record's value of contract `kind`;
/// `Err` with the reason if it would refuse the record.
pub type Shadow = for<'a> fn(
    &'a Codec,
    EventKind,
    &'a [u8],
) -> BoxFuture<'a, Result<Vec<serde_json::Value>, String>>;

/// The task of a running component: runs until shutdown is signalled, then returns.
pub type Task = BoxFuture<'static, Result<(), crate::Error>>;

/// Whether a component's own store (a database) answers, for `/readyz`.
pub type Probe = Arc<dyn Fn() -> BoxFuture<'static, bool> + Send + Sync>;

/// A built component: what it serves, what it runs, and what it tells `/readyz`.
#[derive(Default)]
pub struct Running {
    /// Its HTTP routes, merged into the one listener.
    pub routes: Option<axum::Router>,
    /// The OpenAPI document of its routes, merged into the listener's `/openapi.json`.
    pub api: Option<utoipa::openapi::OpenApi>,
    /// Its work until shutdown.
    pub task: Option<Box<dyn FnOnce(watch::Receiver<bool>) -> Task + Send>>,
    /// Whether it can work now (absent: always, once built).
    pub readiness: Option<Readiness>,
    /// Whether its store answers.
    pub probe: Option<Probe>,
    /// What operators may ask it (the console, `/api/connectors`).
    pub control: Option<Arc<dyn Control>>,
    /// What it has exchanged, for sources that take requests (the console's *Sync history*).
    pub history: Option<Arc<dyn History>>,
}

impl Running {
    /// A component that runs `task` until shutdown and reports `readiness`.
    pub fn new<F, Fut>(readiness: Readiness, task: F) -> Self
    where
        F: FnOnce(watch::Receiver<bool>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), crate::Error>> + Send + 'static,
    {
        Self::default().readiness(readiness).task(task)
    }

    /// A component that serves `routes`.
    pub fn routes(mut self, routes: axum::Router) -> Self {
        self.routes = Some(routes);
        self
    }

    /// A component whose routes `api` documents.
    pub fn api(mut self, api: utoipa::openapi::OpenApi) -> Self {
        self.api = Some(api);
        self
    }

    /// A component that runs `task` until shutdown.
    pub fn task<F, Fut>(mut self, task: F) -> Self
    where
        F: FnOnce(watch::Receiver<bool>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), crate::Error>> + Send + 'static,
    {
        self.task = Some(Box::new(move |shutdown| Box::pin(task(shutdown))));
        self
    }

    /// A component that reports `readiness`.
    pub fn readiness(mut self, readiness: Readiness) -> Self {
        self.readiness = Some(readiness);
        self
    }

    /// A component operators may ask `control`.
    pub fn control(mut self, control: Arc<dyn Control>) -> Self {
        self.control = Some(control);
        self
    }

    /// A component that keeps `history` of what it exchanged.
    pub fn history(mut self, history: Arc<dyn History>) -> Self {
        self.history = Some(history);
        self
    }

    /// A component whose store `probe` checks.
    pub fn probe<F, Fut>(mut self, probe: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = bool> + Send + 'static,
    {
        self.probe = Some(Arc::new(move || Box::pin(probe())));
        self
    }
}

//! Every component type erpstream runs, by `type:` name: the one list a new source,
//! processor or sink type is added to (its folder provides the rest; see "Adding a
//! component" in the README).
//!
//! The topology, its validation, the runtime and the tools reach components only through
//! [`Configured`] and [`ConfiguredProcessor`], which name no concrete type.

use std::fmt::Debug;
use std::sync::Arc;

use erpstream_connectors::component::{
    Component, Context, Graph, Kind, Names, Port, Route, Running, Shadow,
};
use erpstream_connectors::kafka::TopicSpec;
use erpstream_connectors::sinks::erp_rest::{self, ErpRestConfig};
use erpstream_connectors::sinks::jsonl_file::{self, JsonlFileConfig};
use erpstream_connectors::sinks::planning_pg::{self, PlanningPgConfig};
use erpstream_connectors::sinks::storefront_webhook::{self, StorefrontWebhookConfig};
use erpstream_connectors::sources::erp_webhook::{self, ErpWebhookConfig};
use erpstream_connectors::sources::pg_cdc::{self, PgCdcConfig};
use erpstream_connectors::sources::planning_api::{self, PlanningApiConfig};
use erpstream_connectors::sources::rest_poll::{self, RestPollConfig};
use erpstream_connectors::sources::storefront_api::{self, StorefrontApiConfig};
use erpstream_connectors::validation::Problem;
use erpstream_schemas::EventKind;
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde_yaml_ng::Value;

use crate::processors::dedupe::DedupeConfig;
use crate::processors::inventory::InventoryConfig;
use crate::processors::{Built, ProcessorConfig};

/// Source and sink types, by `type:` name.
pub static COMPONENTS: &[ComponentType] = &[
    source::<ErpWebhookConfig>(erp_webhook::TYPE),
    source::<StorefrontApiConfig>(storefront_api::TYPE),
    source::<PgCdcConfig>(pg_cdc::TYPE),
    source::<RestPollConfig>(rest_poll::TYPE),
    source::<PlanningApiConfig>(planning_api::TYPE),
    sink::<StorefrontWebhookConfig>(storefront_webhook::TYPE),
    sink::<ErpRestConfig>(erp_rest::TYPE),
    sink::<PlanningPgConfig>(planning_pg::TYPE),
    sink::<JsonlFileConfig>(jsonl_file::TYPE),
];

/// Processor types.
pub static PROCESSORS: &[ProcessorType] =
    &[processor::<DedupeConfig>(), processor::<InventoryConfig>()];

/// Reads one entry's settings (`type:` removed) at path `at`, recording every problem:
/// deserialization first, then the type's own checks.
type Parse<T> = fn(&Value, &str, &mut Vec<Problem>) -> Option<Arc<T>>;

/// A registered source or sink type.
pub struct ComponentType {
    /// The `type:` name.
    pub name: &'static str,
    /// Its section.
    pub kind: Kind,
    parse: Parse<dyn DynComponent>,
}

impl ComponentType {
    /// Reads an entry of this type at `at`, recording every problem.
    pub fn parse(
        &self,
        value: &Value,
        at: &str,
        problems: &mut Vec<Problem>,
    ) -> Option<Configured> {
        let inner = (self.parse)(value, at, problems)?;
        Some(Configured {
            type_name: self.name,
            kind: self.kind,
            inner,
        })
    }
}

/// A registered processor type.
pub struct ProcessorType {
    /// The `type:` name.
    pub name: &'static str,
    /// Reads an entry of this type.
    pub parse: Parse<dyn ConfiguredProcessor>,
}

const fn source<C: Component>(name: &'static str) -> ComponentType {
    component::<C>(name, Kind::Source)
}

const fn sink<C: Component>(name: &'static str) -> ComponentType {
    component::<C>(name, Kind::Sink)
}

const fn component<C: Component>(name: &'static str, kind: Kind) -> ComponentType {
    ComponentType {
        name,
        kind,
        parse: |value, at, problems| {
            let config: C = deserialize(value, at, problems)?;
            problems.extend(config.validate(at));
            Some(Arc::new(config))
        },
    }
}

const fn processor<P: ProcessorConfig>() -> ProcessorType {
    ProcessorType {
        name: P::TYPE,
        parse: |value, at, problems| {
            let config: P = deserialize(value, at, problems)?;
            problems.extend(config.validate(at));
            Some(Arc::new(config))
        },
    }
}

/// The types of `kind`, by name.
pub fn types(kind: Kind) -> impl Iterator<Item = &'static ComponentType> {
    COMPONENTS.iter().filter(move |t| t.kind == kind)
}

/// Deserializes `value` as `T`; a problem with the offending field's path if it does not fit.
pub fn deserialize<T: DeserializeOwned>(
    value: &Value,
    at: &str,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value.clone()) {
        Ok(v) => Some(v),
        Err(err) => {
            let path = err.path().to_string();
            let path = if path == "." || path == "?" {
                at.to_string()
            } else {
                format!("{at}.{path}")
            };
            problems.push(Problem::new(path, err.into_inner().to_string()));
            None
        }
    }
}

/// A configured source or sink, whatever its type (see [`Component`] for each method).
#[derive(Debug, Clone)]
pub struct Configured {
    type_name: &'static str,
    kind: Kind,
    inner: Arc<dyn DynComponent>,
}

impl Configured {
    /// The `type:` name.
    pub fn type_name(&self) -> &'static str {
        self.type_name
    }
    /// Its section.
    pub fn kind(&self) -> Kind {
        self.kind
    }
    /// Topics it reads.
    pub fn inputs(&self) -> Vec<Port> {
        self.inner.inputs()
    }
    /// Topics it writes.
    pub fn outputs(&self) -> Vec<Port> {
        self.inner.outputs()
    }
    /// HTTP paths it serves.
    pub fn routes(&self) -> Vec<Route> {
        self.inner.routes()
    }
    /// Checks against the rest of the topology.
    pub fn check(&self, at: &str, graph: &dyn Graph) -> Vec<Problem> {
        self.inner.check(at, graph)
    }
    /// Topics component `id` needs besides the declared ones.
    pub fn topics(
        &self,
        id: &str,
        names: &Names,
        partitions: &dyn Fn(&str) -> i32,
    ) -> Vec<TopicSpec> {
        self.inner.topics(id, names, partitions)
    }
    /// Builds it.
    pub fn build(
        &self,
        context: Context,
    ) -> BoxFuture<'_, Result<Running, erpstream_connectors::Error>> {
        self.inner.build(context)
    }
    /// Its shadow mode, if it has one.
    pub fn shadow(&self) -> Option<Shadow> {
        self.inner.shadow()
    }
}

/// [`Component`] as an object.
trait DynComponent: Debug + Send + Sync {
    fn inputs(&self) -> Vec<Port>;
    fn outputs(&self) -> Vec<Port>;
    fn routes(&self) -> Vec<Route>;
    fn check(&self, at: &str, graph: &dyn Graph) -> Vec<Problem>;
    fn topics(&self, id: &str, names: &Names, partitions: &dyn Fn(&str) -> i32) -> Vec<TopicSpec>;
    fn build(
        &self,
        context: Context,
    ) -> BoxFuture<'_, Result<Running, erpstream_connectors::Error>>;
    fn shadow(&self) -> Option<Shadow>;
}

impl<C: Component> DynComponent for C {
    fn inputs(&self) -> Vec<Port> {
        Component::inputs(self)
    }
    fn outputs(&self) -> Vec<Port> {
        Component::outputs(self)
    }
    fn routes(&self) -> Vec<Route> {
        Component::routes(self)
    }
    fn check(&self, at: &str, graph: &dyn Graph) -> Vec<Problem> {
        Component::check(self, at, graph)
    }
    fn topics(&self, id: &str, names: &Names, partitions: &dyn Fn(&str) -> i32) -> Vec<TopicSpec> {
        Component::topics(self, id, names, partitions)
    }
    fn build(
        &self,
        context: Context,
    ) -> BoxFuture<'_, Result<Running, erpstream_connectors::Error>> {
        Box::pin(Component::build(self, context))
    }
    fn shadow(&self) -> Option<Shadow> {
        Component::shadow(self)
    }
}

/// A configured processor, whatever its type (see [`ProcessorConfig`] for each method).
pub trait ConfiguredProcessor: Debug + Send + Sync {
    /// The `type:` name.
    fn type_name(&self) -> &'static str;
    /// Topics or processor ids it reads.
    fn inputs(&self) -> &[String];
    /// The topic it writes.
    fn output(&self) -> Option<&str>;
    /// The contracts it takes.
    fn accepts(&self) -> &'static [EventKind];
    /// The contracts it writes or lets through.
    fn produces(&self, inputs: &[EventKind]) -> Vec<EventKind>;
    /// Whether another processor may read it by id.
    fn chains(&self) -> bool;
    /// Whether it offers a snapshot of its state.
    fn keeps_snapshot(&self) -> bool;
    /// Checks against the rest of the topology.
    fn check(&self, at: &str, graph: &dyn Graph) -> Vec<Problem>;
    /// Builds it.
    fn build(&self, id: &str, names: &Names) -> Built;
}

impl<P: ProcessorConfig> ConfiguredProcessor for P {
    fn type_name(&self) -> &'static str {
        P::TYPE
    }
    fn inputs(&self) -> &[String] {
        ProcessorConfig::inputs(self)
    }
    fn output(&self) -> Option<&str> {
        ProcessorConfig::output(self)
    }
    fn accepts(&self) -> &'static [EventKind] {
        ProcessorConfig::accepts(self)
    }
    fn produces(&self, inputs: &[EventKind]) -> Vec<EventKind> {
        ProcessorConfig::produces(self, inputs)
    }
    fn chains(&self) -> bool {
        ProcessorConfig::chains(self)
    }
    fn keeps_snapshot(&self) -> bool {
        ProcessorConfig::keeps_snapshot(self)
    }
    fn check(&self, at: &str, graph: &dyn Graph) -> Vec<Problem> {
        ProcessorConfig::check(self, at, graph)
    }
    fn build(&self, id: &str, names: &Names) -> Built {
        ProcessorConfig::build(self, id, names)
    }
}

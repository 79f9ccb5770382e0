//! Builds a validated [`Topology`] into running components and runs them until SIGTERM.
//!
//! Start-up order: register every contract with the registry (a refusal stops the start),
//! create missing topics (a partition-count mismatch stops the start), build sources,
//! processor chains and sinks, then open the HTTP listener. Shutdown order: stop accepting
//! HTTP requests (requests in flight finish), let every processor finish its batch and every
//! sink drain its deliveries in flight, commit stored offsets, flush the producer.

mod http;
pub mod telemetry;

use std::sync::Arc;
use std::time::Duration;

use std::collections::HashMap;

use futures::future::BoxFuture;

use erpstream_connectors::kafka::{self, Changelog, KafkaConfig, Publisher, TopicSpec};
use erpstream_connectors::sinks::erp_rest::{self, ErpRestSink};
use erpstream_connectors::sinks::planning_pg::{self, PlanningPgSink};
use erpstream_connectors::sinks::storefront_webhook::{self, StorefrontWebhookSink};
use erpstream_connectors::sources::erp_webhook::ErpWebhookSource;
use erpstream_connectors::sources::pg_cdc::{self, PgCdcSource};
use erpstream_connectors::sources::planning_api::{self, PlanningApi};
use erpstream_connectors::sources::rest_poll::{self, RestPollSource};
use erpstream_connectors::sources::storefront_api::StorefrontApiSource;
use erpstream_schemas::{Codec, CodecError};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::processors::Processor;
use crate::processors::dedupe::Dedupe;
use crate::processors::inventory::{self, Inventory, InventoryView};
use crate::processors::task::StreamTask;
use crate::topology::{ProcessorConfig, SinkConfig, SourceConfig, Topology};

/// Why the pipeline could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The registry refused a contract or stayed unreachable.
    #[error("schema registry: {0}")]
    Registry(#[from] CodecError),
    /// The broker refused an operation.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// A secret could not be read.
    #[error("{0}")]
    Secret(#[from] erpstream_connectors::SecretError),
    /// A sink could not be built.
    #[error("{0}")]
    Sink(#[from] storefront_webhook::SinkError),
    /// The ERP write-back sink could not be built.
    #[error("{0}")]
    ErpRest(#[from] erp_rest::ErpRestError),
    /// A change-data-capture source cannot work against its database.
    #[error("{0}")]
    Cdc(#[from] pg_cdc::CdcError),
    /// The planning API could not be set up.
    #[error(transparent)]
    PlanningApi(#[from] planning_api::PlanningApiError),
    /// The planning sink could not be set up.
    #[error(transparent)]
    Planning(#[from] planning_pg::PlanningError),
    /// A polled source could not be set up.
    #[error(transparent)]
    Poll(#[from] rest_poll::PollError),
    /// The HTTP listener could not be opened.
    #[error("could not listen on {addr}: {source}")]
    Listen {
        /// The configured address.
        addr: std::net::SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A processor chain could not be built.
    #[error(transparent)]
    Task(#[from] crate::processors::task::TaskError),
    /// A component stopped with an error.
    #[error("component {0} failed: {1}")]
    Component(String, String),
}

/// Dead-letter topic of a broker-side topic.
pub fn dlq_topic(topic: &str) -> String {
    format!("{topic}.dlq")
}

/// The broker-side topic, its dead-letter topic and its contract, for a logical topic a
/// source maps records to (`None` if the topology does not know the contract; validation
/// has refused that already).
fn mapped(
    topology: &Topology,
    logical: &str,
) -> Option<(String, String, erpstream_schemas::EventKind)> {
    let kind = topology.contract(logical)?;
    let topic = topology.kafka.topic(logical);
    Some((topic.clone(), dlq_topic(&topic), kind))
}

/// Changelog topic of a component's state (broker-side).
pub fn changelog_topic(
    kafka: &KafkaConfig,
    app_id: &str,
    component: &str,
    qualifier: Option<&str>,
) -> String {
    match qualifier {
        Some(q) => kafka.topic(&format!("{app_id}.{component}.{q}.changelog")),
        None => kafka.topic(&format!("{app_id}.{component}.changelog")),
    }
}

/// Runs `topology` until SIGTERM or SIGINT.
pub async fn run(topology: Topology, metrics: PrometheusHandle) -> Result<(), RuntimeError> {
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let kafka = topology.kafka.clone();
    let codec = Codec::new(&topology.registry.url)?;
    register_contracts(&topology, &codec).await?;
    create_topics(&kafka, &topology).await?;
    let publisher = Publisher::new(
        &kafka,
        &format!("{}-producer", topology.app_id),
        codec.clone(),
    )?;

    let mut tasks: JoinSet<(String, Result<(), String>)> = JoinSet::new();
    let (processors, views) = processor_tasks(&topology, &publisher)?;
    let mut readiness = Vec::new();
    for (name, task) in processors {
        readiness.push((name.clone(), task.readiness()));
        let span =
            tracing::info_span!("component", component_kind = "processor", component_id = %name);
        let rx = shutdown_rx.clone();
        tasks.spawn(
            async move { (name, task.run(rx).await.map_err(|e| e.to_string())) }.instrument(span),
        );
    }

    let mut router = axum::Router::new();
    let mut apis = Vec::new();
    for (id, source) in &topology.sources {
        match source {
            SourceConfig::ErpWebhook(config) => {
                let source =
                    ErpWebhookSource::build(id, config.clone(), &kafka, publisher.clone())?;
                router = router.merge(Arc::new(source).router());
            }
            SourceConfig::StorefrontApi(config) => {
                let source = Arc::new(StorefrontApiSource::build(
                    id,
                    config.clone(),
                    &kafka,
                    publisher.clone(),
                )?);
                if let Some(view) = config.snapshot.as_ref().and_then(|p| views.get(p)) {
                    router = router.merge(inventory::snapshot::router(view.clone(), source.auth()));
                }
                router = router.merge(source.clone().router());
                apis.push(http::Store::Storefront(source));
            }
            SourceConfig::PgCdc(config) => {
                let tables = config
                    .tables
                    .iter()
                    .filter_map(|(name, mapping)| {
                        let (topic, dlq_topic, kind) = mapped(&topology, &mapping.topic)?;
                        Some(pg_cdc::Table {
                            name: name.clone(),
                            mapping: mapping.clone(),
                            kind,
                            dlq_topic,
                            topic,
                        })
                    })
                    .collect();
                let state_key = format!("{}.{id}", topology.app_id);
                let source =
                    PgCdcSource::build(id, &state_key, config.clone(), tables, publisher.clone())?;
                preflight(&source).await?;
                readiness.push((id.clone(), source.readiness()));
                let span = tracing::info_span!("component", component_kind = "source",
                    component_id = %id, component_type = pg_cdc::TYPE);
                let (name, rx) = (id.clone(), shutdown_rx.clone());
                tasks.spawn(
                    async move { (name, source.run(rx).await.map_err(|e| e.to_string())) }
                        .instrument(span),
                );
            }
            SourceConfig::PlanningApi(config) => {
                let topics = planning_api::Topics {
                    products: kafka.topic(&config.products_topic),
                    inventory: kafka.topic(&config.inventory_topic),
                    demand: kafka.topic(&config.demand_topic),
                };
                let api = Arc::new(PlanningApi::build(
                    id,
                    config.clone(),
                    topics,
                    publisher.clone(),
                )?);
                router = router.merge(api.clone().router());
                apis.push(http::Store::Planning(api));
            }
            SourceConfig::RestPoll(config) => {
                let resources = config
                    .resources
                    .iter()
                    .filter_map(|(name, resource)| {
                        let (topic, dlq_topic, kind) = mapped(&topology, &resource.topic)?;
                        Some(rest_poll::Resource {
                            name: name.clone(),
                            config: resource.clone(),
                            kind,
                            dlq_topic,
                            topic,
                        })
                    })
                    .collect();
                let state_key = format!("{}.{id}", topology.app_id);
                let source = RestPollSource::build(
                    id,
                    &state_key,
                    config.clone(),
                    resources,
                    publisher.clone(),
                )?;
                readiness.push((id.clone(), source.readiness()));
                let span = tracing::info_span!("component", component_kind = "source",
                    component_id = %id, component_type = rest_poll::TYPE);
                let (name, rx) = (id.clone(), shutdown_rx.clone());
                tasks.spawn(
                    async move { (name, source.run(rx).await.map_err(|e| e.to_string())) }
                        .instrument(span),
                );
            }
        }
    }

    for (id, sink) in &topology.sinks {
        let group = format!("{}.{id}", topology.app_id);
        let rx = shutdown_rx.clone();
        let (component_type, ready, run) = match sink {
            SinkConfig::StorefrontWebhook(config) => {
                let inputs = config
                    .inputs
                    .iter()
                    .map(|logical| {
                        let topic = kafka.topic(logical);
                        storefront_webhook::Input {
                            kind: topology
                                .contract(logical)
                                .unwrap_or(erpstream_schemas::EventKind::InventoryAvailable),
                            changelog: Changelog::new(
                                changelog_topic(&kafka, &topology.app_id, id, Some(logical)),
                                kafka.clone(),
                                publisher.clone(),
                            ),
                            dlq_topic: dlq_topic(&topic),
                            topic,
                        }
                    })
                    .collect();
                let sink = StorefrontWebhookSink::build(
                    id,
                    config.clone(),
                    inputs,
                    &kafka,
                    &group,
                    publisher.clone(),
                )?;
                let ready = sink.readiness();
                let run: BoxFuture<'static, Result<(), String>> =
                    Box::pin(async move { sink.run(rx).await.map_err(|e| e.to_string()) });
                (storefront_webhook::TYPE, ready, run)
            }
            SinkConfig::ErpRest(config) => {
                let inputs = config
                    .inputs
                    .iter()
                    .map(|logical| {
                        let topic = kafka.topic(logical);
                        erp_rest::Input {
                            kind: topology
                                .contract(logical)
                                .unwrap_or(erpstream_schemas::EventKind::SalesOrder),
                            dlq_topic: dlq_topic(&topic),
                            topic,
                        }
                    })
                    .collect();
                let sink = ErpRestSink::build(
                    id,
                    config.clone(),
                    inputs,
                    &kafka,
                    &group,
                    publisher.clone(),
                )?;
                let ready = sink.readiness();
                let run: BoxFuture<'static, Result<(), String>> =
                    Box::pin(async move { sink.run(rx).await.map_err(|e| e.to_string()) });
                (erp_rest::TYPE, ready, run)
            }
            SinkConfig::PlanningPg(config) => {
                let inputs = config
                    .inputs
                    .iter()
                    .filter_map(|logical| {
                        let topic = kafka.topic(logical);
                        Some(planning_pg::Input {
                            kind: topology.contract(logical)?,
                            dlq_topic: dlq_topic(&topic),
                            topic,
                        })
                    })
                    .collect();
                let sink = PlanningPgSink::build(
                    id,
                    config.clone(),
                    inputs,
                    &kafka,
                    &group,
                    publisher.clone(),
                )?;
                let ready = sink.readiness();
                let run: BoxFuture<'static, Result<(), String>> =
                    Box::pin(async move { sink.run(rx).await.map_err(|e| e.to_string()) });
                (planning_pg::TYPE, ready, run)
            }
        };
        readiness.push((id.clone(), ready));
        let span = tracing::info_span!("component", component_kind = "sink", component_id = %id,
            component_type);
        let name = id.clone();
        tasks.spawn(async move { (name, run.await) }.instrument(span));
    }

    let router = router.merge(http::operations(
        metrics,
        publisher.clone(),
        &topology.registry.url,
        apis,
        readiness,
    ));
    let listener = tokio::net::TcpListener::bind(topology.http.listen)
        .await
        .map_err(|source| RuntimeError::Listen {
            addr: topology.http.listen,
            source,
        })?;
    tracing::info!(listen = %topology.http.listen, "erpstream is running");
    let mut http_shutdown = shutdown_rx.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = http_shutdown.changed().await;
            })
            .await
    });

    let mut failure = None;
    tokio::select! {
        _ = telemetry::termination() => tracing::info!("shutting down"),
        Some(done) = tasks.join_next() => {
            let (name, result) = done.unwrap_or_else(|e| ("task".into(), Err(e.to_string())));
            let reason = result.err().unwrap_or_else(|| "stopped unexpectedly".into());
            tracing::error!(component = %name, error = %reason, "component stopped; shutting down");
            failure = Some(RuntimeError::Component(name, reason));
        }
    }
    let _ = shutdown_tx.send(true);
    let _ = server.await;
    while let Some(done) = tasks.join_next().await {
        if let Ok((name, Err(reason))) = done {
            tracing::error!(component = %name, error = %reason, "component failed during shutdown");
        }
    }
    let flush = publisher.clone();
    let _ = tokio::task::spawn_blocking(move || flush.flush(Duration::from_secs(10))).await;
    tracing::info!("stopped");
    failure.map_or(Ok(()), Err)
}

/// Checks a CDC source's database before anything runs, waiting out one that is still
/// starting; a database that cannot work (wal_level, privileges, tables) stops the start.
async fn preflight(source: &PgCdcSource) -> Result<(), RuntimeError> {
    let mut attempt = 0;
    loop {
        match source.preflight().await {
            Ok(()) => return Ok(()),
            Err(err) if err.is_retriable() && attempt < 30 => {
                attempt += 1;
                tracing::warn!(error = %err, attempt, "source database not reachable yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(err) => return Err(err.into()),
        }
    }
}

async fn register_contracts(topology: &Topology, codec: &Codec) -> Result<(), RuntimeError> {
    for logical in topology.topics.keys() {
        let Some(kind) = topology.contract(logical) else {
            continue;
        };
        let topic = topology.kafka.topic(logical);
        let mut attempt = 0;
        loop {
            match codec.register(&topic, kind).await {
                Ok(id) => {
                    tracing::info!(subject = %erpstream_schemas::codec::subject(&topic), id, "contract registered");
                    break;
                }
                Err(err) if err.is_retriable() && attempt < 30 => {
                    attempt += 1;
                    tracing::warn!(error = %err, attempt, "registry not reachable yet; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(err) => return Err(err.into()),
            }
        }
    }
    Ok(())
}

/// Creates missing topics, waiting out a broker that is slow to answer (it may have just
/// started); a partition-count mismatch stops the start at once.
async fn create_topics(kafka: &KafkaConfig, topology: &Topology) -> Result<(), RuntimeError> {
    let specs = topic_specs(topology);
    let mut attempt = 0;
    loop {
        match kafka::ensure_topics(kafka, &specs).await {
            Ok(()) => return Ok(()),
            Err(rdkafka::error::KafkaError::AdminOp(code))
                if attempt < 30
                    && !matches!(code, rdkafka::types::RDKafkaErrorCode::InvalidPartitions) =>
            {
                attempt += 1;
                tracing::warn!(error = %code, attempt, "broker did not create topics yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(err) => return Err(err.into()),
        }
    }
}

/// Every topic the topology needs: declared ones, dead-letter topics of consumed topics, and
/// changelogs (compacted) of stateful components.
pub fn topic_specs(topology: &Topology) -> Vec<TopicSpec> {
    let kafka = &topology.kafka;
    let mut specs = Vec::new();
    let mut add = |name: String, partitions: i32, compacted: bool| {
        if !specs.iter().any(|s: &TopicSpec| s.name == name) {
            specs.push(TopicSpec {
                name,
                partitions,
                compacted,
            });
        }
    };
    for (logical, topic) in &topology.topics {
        add(kafka.topic(logical), topic.partitions, topic.compacted);
    }
    for source in topology.sources.values() {
        let mapped: Vec<&String> = match source {
            SourceConfig::PgCdc(config) => config.tables.values().map(|t| &t.topic).collect(),
            SourceConfig::RestPoll(config) => config.resources.values().map(|r| &r.topic).collect(),
            _ => Vec::new(),
        };
        for topic in mapped {
            let partitions = topology.topics.get(topic).map_or(1, |t| t.partitions);
            add(dlq_topic(&kafka.topic(topic)), partitions, false);
        }
    }
    for chain in chains(topology) {
        let partitions = chain_partitions(topology, &chain);
        for input in topology.processors[&chain[0]].inputs() {
            add(dlq_topic(&kafka.topic(input)), partitions, false);
        }
        for id in &chain {
            add(
                changelog_topic(kafka, &topology.app_id, id, None),
                partitions,
                true,
            );
        }
    }
    for (id, sink) in &topology.sinks {
        for input in sink.inputs() {
            let partitions = topology.topics.get(input).map_or(1, |t| t.partitions);
            add(dlq_topic(&kafka.topic(input)), partitions, false);
            if let SinkConfig::StorefrontWebhook(_) = sink {
                add(
                    changelog_topic(kafka, &topology.app_id, id, Some(input)),
                    partitions,
                    true,
                );
            }
        }
    }
    specs
}

/// Processor chains, each starting at a processor that reads topics only.
fn chains(topology: &Topology) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (id, processor) in &topology.processors {
        if processor
            .inputs()
            .iter()
            .any(|i| topology.processors.contains_key(i))
        {
            continue;
        }
        let mut chain = vec![id.clone()];
        while let Some((next, _)) = topology
            .processors
            .iter()
            .find(|(_, p)| p.inputs().iter().any(|i| i == chain.last().unwrap_or(id)))
        {
            if chain.contains(next) {
                break;
            }
            chain.push(next.clone());
        }
        out.push(chain);
    }
    out
}

fn chain_partitions(topology: &Topology, chain: &[String]) -> i32 {
    topology.processors[&chain[0]]
        .inputs()
        .iter()
        .filter_map(|i| topology.topics.get(i))
        .map(|t| t.partitions)
        .max()
        .unwrap_or(1)
}

/// Processor chains by name, and the state views of inventory processors by id.
type Chains = (Vec<(String, StreamTask)>, HashMap<String, InventoryView>);

/// The processor chains as tasks, and the state views of inventory processors by id.
fn processor_tasks(topology: &Topology, publisher: &Publisher) -> Result<Chains, RuntimeError> {
    let kafka = &topology.kafka;
    let mut tasks = Vec::new();
    let mut views = HashMap::new();
    for chain in chains(topology) {
        let mut processors: Vec<Box<dyn Processor>> = Vec::new();
        let mut changelogs = Vec::new();
        for id in &chain {
            let processor: Box<dyn Processor> = match &topology.processors[id] {
                ProcessorConfig::Dedupe(c) => Box::new(Dedupe::new(
                    id,
                    c,
                    c.output.as_deref().map(|o| kafka.topic(o)),
                )),
                ProcessorConfig::Inventory(c) => {
                    let processor = Inventory::new(id, c, kafka.topic(&c.output));
                    views.insert(id.clone(), processor.view());
                    Box::new(processor)
                }
            };
            processors.push(processor);
            changelogs.push(Changelog::new(
                changelog_topic(kafka, &topology.app_id, id, None),
                kafka.clone(),
                publisher.clone(),
            ));
        }
        let inputs = topology.processors[&chain[0]]
            .inputs()
            .iter()
            .filter_map(|logical| {
                let kind = topology.contract(logical)?;
                let topic = kafka.topic(logical);
                Some((topic.clone(), kind, dlq_topic(&topic)))
            })
            .collect();
        let name = chain.join("+");
        let group = format!("{}.{}", topology.app_id, chain[0]);
        let task = StreamTask::new(
            name.clone(),
            kafka,
            &group,
            inputs,
            processors,
            changelogs,
            publisher.clone(),
        )?;
        tasks.push((name, task));
    }
    Ok((tasks, views))
}

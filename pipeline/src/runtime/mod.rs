//! Builds a validated [`Topology`] into running components and runs them until SIGTERM.
//!
//! Start-up order: register every contract with the registry (a refusal stops the start),
//! create missing topics (a partition-count mismatch stops the start), build sources,
//! processor chains and sinks, then open the HTTP listener. Shutdown order: stop accepting
//! HTTP requests (requests in flight finish), let every processor finish its batch and every
//! sink drain its deliveries in flight, commit stored offsets, flush the producer.

mod http;
pub mod listener;
pub mod telemetry;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use erpstream_connectors::admission::Admission;
use erpstream_connectors::component::{
    Context, Control, History, Names, Probe, Readiness, SnapshotService,
};
use erpstream_connectors::kafka::{self, Changelog, KafkaConfig, Publisher, TopicSpec};
use erpstream_schemas::{Codec, CodecError};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::console;
use crate::processors::task::{StreamTask, TaskError};
use crate::processors::{Follower, Processor};
use crate::topology::Topology;
use utoipa::OpenApi;

/// Why the pipeline could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The registry refused a contract or stayed unreachable.
    #[error(transparent)]
    Registry(#[from] CodecError),
    /// The registry client could not be built (its CA file, its password).
    #[error(transparent)]
    RegistryAccess(#[from] crate::topology::RegistryAccessError),
    /// The brokers refused this client or did not answer.
    #[error(transparent)]
    Connect(#[from] kafka::ConnectError),
    /// The broker refused an operation.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// A source or sink could not be built.
    #[error("{id} could not start: {source}")]
    Build {
        /// The component's id.
        id: String,
        /// Why.
        #[source]
        source: erpstream_connectors::Error,
    },
    /// A processor chain could not be built.
    #[error(transparent)]
    Task(#[from] TaskError),
    /// The HTTP listener could not be opened.
    #[error("could not listen on {addr}: {source}")]
    Listen {
        /// The configured address.
        addr: std::net::SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A component stopped with an error.
    #[error("component {id} failed: {failure}")]
    Component {
        /// The component's id.
        id: String,
        /// Why (in the message, not chained as a source: a report shows it once).
        failure: ComponentFailure,
    },
    /// A component's task ended although no shutdown was asked for.
    #[error("component {0} stopped unexpectedly")]
    Stopped(String),
    /// A console token could not be read.
    #[error("console.tokens: {0}")]
    Console(#[from] erpstream_connectors::secret::SecretError),
}

/// Why a running component stopped.
#[derive(Debug, thiserror::Error)]
pub enum ComponentFailure {
    /// A source or sink.
    #[error(transparent)]
    Connector(#[from] erpstream_connectors::Error),
    /// A processor chain.
    #[error(transparent)]
    Chain(#[from] TaskError),
    /// Its task panicked or was cancelled.
    #[error("task aborted: {0}")]
    Aborted(String),
}

/// The running tasks, each ending with its component's id and result.
type Tasks = JoinSet<(String, Result<(), ComponentFailure>)>;

/// How long start-up waits for a broker to answer (it may be starting too).
const BROKER_PATIENCE: Duration = Duration::from_secs(30);

/// Runs `topology` until SIGTERM or SIGINT.
pub async fn run(topology: Topology, metrics: PrometheusHandle) -> Result<(), RuntimeError> {
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let kafka = topology.kafka.clone();
    let names = topology.names();
    let codec = topology.registry.codec()?;
    kafka.probe(BROKER_PATIENCE).await?;
    register_contracts(&topology, &codec).await?;
    create_topics(&kafka, &topology).await?;
    let admission = Admission::new(topology.http.admission.clone());
    let publisher = Publisher::new(
        &kafka,
        &format!("{}-producer", topology.app_id),
        codec.clone(),
    )?
    .observed(Arc::new(admission.clone()));

    let mut tasks: Tasks = JoinSet::new();
    let mut readiness: Vec<(String, Readiness)> = Vec::new();
    let mut probes: Vec<Probe> = Vec::new();
    let (chains, snapshots, copies) = processor_tasks(&topology, &names, &publisher, &admission)?;
    for (name, changelog, copy) in copies {
        let ready = Readiness::not_yet("starting");
        readiness.push((name.clone(), ready.clone()));
        let span =
            tracing::info_span!("component", component_kind = "processor", component_id = %name);
        let rx = shutdown_rx.clone();
        tasks.spawn(
            async move { (name, follow(changelog, copy, ready, rx).await) }.instrument(span),
        );
    }
    for (name, task) in chains {
        readiness.push((name.clone(), task.readiness()));
        let span =
            tracing::info_span!("component", component_kind = "processor", component_id = %name);
        let rx = shutdown_rx.clone();
        tasks.spawn(
            async move { (name, task.run(rx).await.map_err(ComponentFailure::from)) }
                .instrument(span),
        );
    }

    let contracts: Arc<BTreeMap<String, erpstream_schemas::EventKind>> = Arc::new(
        topology
            .topics
            .keys()
            .filter_map(|t| Some((t.clone(), topology.contract(t)?)))
            .collect(),
    );
    let snapshots = Arc::new(snapshots);
    let mut router = axum::Router::new();
    let mut apis = Vec::new();
    let mut controls: HashMap<String, Arc<dyn Control>> = HashMap::new();
    let mut stores: HashMap<String, Probe> = HashMap::new();
    let mut histories: HashMap<String, Arc<dyn History>> = HashMap::new();
    for (id, component) in topology.components() {
        let context = Context::new(
            id,
            names.clone(),
            kafka.clone(),
            publisher.clone(),
            admission.clone(),
            contracts.clone(),
            snapshots.clone(),
        );
        let running = component
            .build(context)
            .await
            .map_err(|source| RuntimeError::Build {
                id: id.clone(),
                source,
            })?;
        if let Some(routes) = running.routes {
            router = router.merge(routes);
        }
        apis.extend(running.api);
        if let Some(ready) = running.readiness {
            readiness.push((id.clone(), ready));
        }
        if let Some(probe) = &running.probe {
            stores.insert(id.clone(), probe.clone());
        }
        probes.extend(running.probe);
        if let Some(control) = running.control {
            controls.insert(id.clone(), control);
        }
        if let Some(history) = running.history {
            histories.insert(id.clone(), history);
        }
        if let Some(task) = running.task {
            let kind = component.kind().name();
            let span = tracing::info_span!("component", component_kind = kind,
                component_id = %id, component_type = component.type_name());
            let (name, task) = (id.clone(), task(shutdown_rx.clone()));
            tasks.spawn(
                async move { (name, task.await.map_err(ComponentFailure::from)) }.instrument(span),
            );
        }
    }

    if let Some(config) = &topology.console {
        let auth = console::auth::Auth::new(config, topology.http.tls.is_some())?;
        let live = console::live::Live::default();
        tokio::spawn(live.clone().run(metrics.clone()));
        let nodes = console_nodes(&topology, &readiness, controls, stores, histories);
        let tools = crate::tools::Tools {
            topology: topology.clone(),
            kafka: kafka.clone(),
            codec: codec.clone(),
        };
        router = router.merge(console::routes(console::Console {
            auth,
            live,
            nodes,
            topics: topology.topics.keys().cloned().collect(),
            tools: Arc::new(tools),
            stock: snapshots
                .iter()
                .min_by_key(|(id, _)| *id)
                .map(|(_, stock)| stock.clone()),
        }));
        apis.push(console::ConnectorApi::openapi());
    }
    let router = router.merge(http::operations(
        metrics,
        publisher.clone(),
        codec.clone(),
        probes,
        readiness,
        http::document(apis),
    ));
    let mut http_shutdown = shutdown_rx.clone();
    let server = listener::serve(
        topology.http.listen,
        topology.http.tls.as_ref(),
        &topology.http.limits,
        router,
        async move {
            kafka::shutdown_requested(&mut http_shutdown).await;
        },
    )
    .await
    .map_err(|source| RuntimeError::Listen {
        addr: topology.http.listen,
        source,
    })?;
    tracing::info!(listen = %topology.http.listen, tls = topology.http.tls.is_some(), "erpstream is running");

    let mut failure = None;
    tokio::select! {
        _ = telemetry::termination() => tracing::info!("shutting down"),
        Some(done) = tasks.join_next() => {
            let (id, result) = done.unwrap_or_else(|e| {
                ("task".into(), Err(ComponentFailure::Aborted(e.to_string())))
            });
            failure = Some(match result {
                Ok(()) => RuntimeError::Stopped(id),
                Err(failure) => RuntimeError::Component { id, failure },
            });
            if let Some(err) = &failure {
                tracing::error!(error = %err, "component stopped; shutting down");
            }
        }
    }
    let _ = shutdown_tx.send(true);
    let _ = server.await;
    while let Some(done) = tasks.join_next().await {
        if let Ok((id, Err(err))) = done {
            tracing::error!(component = %id, error = %err, "component failed during shutdown");
        }
    }
    let flush = publisher.clone();
    let _ = tokio::task::spawn_blocking(move || flush.flush(Duration::from_secs(10))).await;
    tracing::info!("stopped");
    failure.map_or(Ok(()), Err)
}

/// The console's view of every source, processor and sink: its ports, settings (redacted),
/// readiness (a processor's is its chain's) and controls (its own, or the basic ones over
/// the brokers and its store's probe in `stores`).
fn console_nodes(
    topology: &Topology,
    readiness: &[(String, Readiness)],
    mut controls: HashMap<String, Arc<dyn Control>>,
    mut stores: HashMap<String, Probe>,
    mut histories: HashMap<String, Arc<dyn History>>,
) -> Vec<console::Node> {
    let settings = |section: &str, id: &str| {
        topology
            .settings
            .get(&format!("{section}.{id}"))
            .map(console::redact::settings)
            .unwrap_or_default()
    };
    let ready = |id: &str| {
        readiness
            .iter()
            .find(|(name, _)| name == id || name.split('+').any(|part| part == id))
            .map(|(_, r)| r.clone())
    };
    let mut nodes = Vec::new();
    for (section, components) in [
        (console::Section::Source, &topology.sources),
        (console::Section::Sink, &topology.sinks),
    ] {
        for (id, component) in components {
            nodes.push(console::Node {
                id: id.clone(),
                section,
                type_name: component.type_name().to_string(),
                inputs: component.inputs().into_iter().map(|p| p.topic).collect(),
                outputs: component.outputs().into_iter().map(|p| p.topic).collect(),
                settings: settings(&format!("{}s", section.name()), id),
                readiness: ready(id),
                control: Some(controls.remove(id).unwrap_or_else(|| {
                    let written = topology.settings.get(&format!("{}s.{id}", section.name()));
                    Arc::new(console::basic::BasicControl {
                        target: console::basic::BasicControl::target_of(written),
                        probe: stores.remove(id),
                        kafka: topology.kafka.clone(),
                    })
                })),
                history: histories.remove(id),
            });
        }
    }
    for (id, processor) in &topology.processors {
        nodes.push(console::Node {
            id: id.clone(),
            section: console::Section::Processor,
            type_name: processor.type_name().to_string(),
            inputs: processor.inputs().to_vec(),
            outputs: processor.output().map(str::to_string).into_iter().collect(),
            settings: settings("processors", id),
            readiness: ready(id),
            control: None,
            history: None,
        });
    }
    nodes.sort_by_key(|n| match n.section {
        console::Section::Source => 0,
        console::Section::Processor => 1,
        console::Section::Sink => 2,
    });
    nodes
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

/// Every topic the topology needs: declared ones, what each source and sink needs for
/// itself (dead-letter topics, changelogs), and each processor chain's dead-letter topics
/// and changelogs (compacted).
pub fn topic_specs(topology: &Topology) -> Vec<TopicSpec> {
    let names = topology.names();
    let partitions = |logical: &str| topology.topics.get(logical).map_or(1, |t| t.partitions);
    let mut specs: Vec<TopicSpec> = Vec::new();
    let mut add = |spec: TopicSpec| {
        if !specs.iter().any(|s| s.name == spec.name) {
            specs.push(spec);
        }
    };
    for (logical, topic) in &topology.topics {
        add(TopicSpec {
            name: names.topic(logical),
            partitions: topic.partitions,
            compacted: topic.compacted,
        });
    }
    for (id, component) in topology.components() {
        for spec in component.topics(id, &names, &partitions) {
            add(spec);
        }
    }
    for chain in chains(topology) {
        let partitions = chain_partitions(topology, &chain);
        for input in topology.processors[&chain[0]].inputs() {
            add(TopicSpec {
                name: names.dlq(input),
                partitions,
                compacted: false,
            });
        }
        for id in &chain {
            add(TopicSpec {
                name: names.changelog(id, None),
                partitions,
                compacted: true,
            });
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

/// Processor chains by name, the snapshot services of processors by id, and the read
/// copies to keep with the changelog each follows.
type Chains = (
    Vec<(String, StreamTask)>,
    HashMap<String, Arc<dyn SnapshotService>>,
    Vec<(String, Changelog, Box<dyn Follower>)>,
);

/// The processor chains as tasks, and the snapshot services of processors by id.
fn processor_tasks(
    topology: &Topology,
    names: &Names,
    publisher: &Publisher,
    admission: &Admission,
) -> Result<Chains, RuntimeError> {
    let kafka = &topology.kafka;
    let mut tasks = Vec::new();
    let mut snapshots = HashMap::new();
    let mut copies = Vec::new();
    for chain in chains(topology) {
        let mut processors: Vec<Box<dyn Processor>> = Vec::new();
        let mut changelogs = Vec::new();
        for id in &chain {
            let built = topology.processors[id].build(id, names);
            if let Some(snapshot) = built.snapshot {
                snapshots.insert(id.clone(), snapshot);
            }
            processors.push(built.processor);
            let changelog =
                Changelog::new(names.changelog(id, None), kafka.clone(), publisher.clone());
            if let Some(copy) = built.copy {
                copies.push((format!("{id}.read_copy"), changelog.clone(), copy));
            }
            changelogs.push(changelog);
        }
        let inputs: Vec<_> = topology.processors[&chain[0]]
            .inputs()
            .iter()
            .filter_map(|logical| {
                let kind = topology.contract(logical)?;
                Some((names.topic(logical), kind, names.dlq(logical)))
            })
            .collect();
        let name = chain.join("+");
        let queues = admission.watch(
            &name,
            &inputs
                .iter()
                .map(|(topic, _, _)| topic.clone())
                .collect::<Vec<_>>(),
        );
        let task = StreamTask::new(
            name.clone(),
            kafka,
            &names.group(&chain[0]),
            inputs,
            processors,
            changelogs,
            publisher.clone(),
            queues,
        )?;
        tasks.push((name, task));
    }
    Ok((tasks, snapshots, copies))
}

/// Keeps `copy` with every partition of `changelog` until shutdown; `ready` once every
/// partition is caught up. A broker that cannot be asked for the changelog's partitions is
/// waited out (following starts again from the beginning, which leaves the copy as it was).
async fn follow(
    changelog: Changelog,
    mut copy: Box<dyn Follower>,
    ready: Readiness,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ComponentFailure> {
    use erpstream_connectors::kafka::Followed;
    use futures::StreamExt;
    let mut backoff = kafka::Backoff::default();
    loop {
        let mut followed = changelog.follow();
        let mut partitions = 0;
        let mut caught_up = std::collections::HashSet::new();
        loop {
            let item = tokio::select! {
                item = followed.next() => item,
                _ = kafka::shutdown_requested(&mut shutdown) => return Ok(()),
            };
            match item {
                Some(Ok(Followed::Partitions(all))) => {
                    partitions = all.len();
                    copy.partitions(&all);
                    ready.not_ready(format!("reading the state of {partitions} partition(s)"));
                }
                Some(Ok(Followed::Entries(entries))) => copy.apply(entries),
                Some(Ok(Followed::CaughtUp(partition))) => {
                    copy.caught_up(partition);
                    caught_up.insert(partition);
                    if caught_up.len() >= partitions {
                        ready.ready();
                    } else {
                        ready.not_ready(format!(
                            "reading the state of {partitions} partition(s): {} caught up",
                            caught_up.len()
                        ));
                    }
                }
                Some(Err(err)) => {
                    tracing::warn!(error = %err, topic = changelog.topic(), "cannot follow the changelog; retrying");
                    break;
                }
                None => break,
            }
        }
        if backoff.sleep(&mut shutdown).await {
            return Ok(());
        }
    }
}

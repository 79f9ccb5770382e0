//! What the process-level benchmarks share: a pipeline process stopped on drop, the broker
//! it runs against, a free port, and waiting on a source's acknowledged-records counter.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

/// A pipeline process that is killed when dropped.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until the source `component` reports `target` acknowledged records.
pub async fn wait_sent(
    client: &reqwest::Client,
    metrics_url: &str,
    component: &str,
    target: f64,
    within: Duration,
) -> anyhow::Result<()> {
    let until = Instant::now() + within;
    loop {
        let sent = match client.get(metrics_url).send().await {
            Ok(r) => r
                .text()
                .await
                .unwrap_or_default()
                .lines()
                .filter(|l| {
                    l.starts_with("erpstream_component_sent_events_total")
                        && l.contains(&format!("component_id=\"{component}\""))
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum(),
            Err(_) => 0.0,
        };
        if sent >= target {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < until,
            "only {sent} of {target} records acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// CPU seconds (user + system) a process used so far.
pub fn cpu_seconds(pid: u32) -> f64 {
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let fields: Vec<&str> = s.rsplit(')').next()?.split_whitespace().collect();
            Some(fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?)
        })
        .unwrap_or(0.0);
    ticks / 100.0
}

/// The local broker's pid (from the stack's pid file).
pub fn broker_pid() -> u32 {
    std::env::var("ERPSTREAM_STATE_DIR")
        .ok()
        .and_then(|dir| std::fs::read_to_string(format!("{dir}/run/tansu.pid")).ok())
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits until the pipeline on `port` answers `/readyz` with 200.
pub async fn wait_ready(client: &reqwest::Client, port: u16) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(120);
    while Instant::now() < until {
        if client
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the pipeline did not get ready")
}

/// Which broker a process-level benchmark runs its pipeline against.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BrokerKind {
    /// The bench stack's broker (`--brokers`; tansu on a fresh store).
    Stack,
    /// librdkafka's mock cluster, hosted in this benchmark process: a broker that is not
    /// the limit. Hosted here rather than by `erpstream-bench broker` because these
    /// benchmarks name their topics per run, and the mock cannot create topics on request.
    Mock,
}

impl BrokerKind {
    /// The results file of `benchmark` on this broker (`cdc`, `cdc-mock`).
    pub fn file_name(self, benchmark: &str) -> String {
        match self {
            BrokerKind::Stack => benchmark.to_string(),
            BrokerKind::Mock => format!("{benchmark}-mock"),
        }
    }

    /// What the results name it.
    pub fn describe(self) -> &'static str {
        match self {
            BrokerKind::Stack => "tansu 0.6.0 (sqlite), fresh store",
            BrokerKind::Mock => {
                "librdkafka 2.12.1 mock cluster (1 broker, in memory), hosted in the benchmark process (its CPU includes the load)"
            }
        }
    }
}

/// The broker of a process-level benchmark.
pub enum Broker {
    /// The stack's, at these bootstrap servers.
    Stack(String),
    /// A mock cluster living as long as this value.
    Mock(MockCluster<'static, DefaultProducerContext>),
}

impl Broker {
    /// The broker of `kind`; `stack` is the stack's bootstrap servers.
    pub fn new(kind: BrokerKind, stack: &str) -> anyhow::Result<Self> {
        Ok(match kind {
            BrokerKind::Stack => Broker::Stack(stack.to_string()),
            BrokerKind::Mock => {
                Broker::Mock(MockCluster::new(1).context("starting librdkafka's mock cluster")?)
            }
        })
    }

    /// Bootstrap servers.
    pub fn bootstrap(&self) -> String {
        match self {
            Broker::Stack(brokers) => brokers.clone(),
            Broker::Mock(cluster) => cluster.bootstrap_servers(),
        }
    }

    /// The process whose CPU is the broker's: the stack's broker, or this one (the mock's
    /// threads, plus the benchmark's own load generation).
    pub fn pid(&self) -> u32 {
        match self {
            Broker::Stack(_) => broker_pid(),
            Broker::Mock(_) => std::process::id(),
        }
    }

    /// Creates the topics `topology` needs (the mock has no CreateTopics; the stack's
    /// broker creates them when the pipeline asks).
    fn create_topics(&self, topology: &Path) -> anyhow::Result<()> {
        for (name, partitions) in crate::broker::topics_of(topology)? {
            self.create_topic(&name, partitions)?;
        }
        Ok(())
    }

    /// Creates `name` on the mock (which has no CreateTopics) unless it exists; nothing on
    /// the stack's broker, which creates topics when asked.
    pub fn create_topic(&self, name: &str, partitions: i32) -> anyhow::Result<()> {
        let Broker::Mock(cluster) = self else {
            return Ok(());
        };
        match cluster.create_topic(name, partitions, 1) {
            // The same pipeline started again.
            Ok(())
            | Err(rdkafka::error::KafkaError::MockCluster(
                rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists,
            )) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }
}

/// Where and how a benchmark pipeline runs.
pub struct Pipeline<'a> {
    /// The erpstream binary.
    pub bin: &'a str,
    /// App id, topic prefix and temp directory name.
    pub name: &'a str,
    /// HTTP port.
    pub port: u16,
    /// Broker.
    pub broker: &'a Broker,
    /// Registry.
    pub registry: &'a str,
}

impl Pipeline<'_> {
    /// Writes a topology (app id, listener, broker with `linger: 5ms` — the idempotent
    /// producer on the mock, off on tansu as the local stack has it —, registry, then `body`
    /// from `topics:` on), creates its topics on a mock broker, and starts `erpstream run` on
    /// it with `env`; its log goes to `<temp>/<name>/pipeline.log`.
    pub fn start(&self, body: &str, env: &[(&str, &str)]) -> anyhow::Result<Running> {
        let dir = std::env::temp_dir().join(self.name);
        std::fs::create_dir_all(&dir)?;
        let topology = dir.join("topology.yaml");
        std::fs::write(
            &topology,
            format!(
                "app_id: {name}\nhttp:\n  listen: 127.0.0.1:{port}\nkafka:\n  brokers: {brokers}\n  topic_prefix: \"{name}.\"\n  linger: 5ms\n  idempotence: {idempotence}\nregistry:\n  url: {registry}\n{body}",
                name = self.name,
                port = self.port,
                brokers = self.broker.bootstrap(),
                idempotence = matches!(self.broker, Broker::Mock(_)),
                registry = self.registry,
            ),
        )?;
        self.broker.create_topics(&topology)?;
        let log = std::fs::File::create(dir.join("pipeline.log"))?;
        let child = Command::new(self.bin)
            .arg("run")
            .arg("--topology")
            .arg(&topology)
            .env("RUST_LOG", "info,rdkafka=warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        Ok(Running(child))
    }
}

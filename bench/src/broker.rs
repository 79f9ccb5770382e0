//! The bench broker: librdkafka's mock cluster on real TCP sockets on 127.0.0.1, hosted for
//! as long as this command runs, with every topic of the given topologies pre-created (the
//! mock has no CreateTopics; the pipeline finds them present and goes on).
//!
//! It is a broker that is not the limit — produce, fetch, consumer groups, the idempotent
//! producer and transactions in memory — so a benchmark against it measures erpstream. It
//! is never the product's default: it keeps at most a few MiB per partition, has no
//! compaction and forgets everything when it stops.
//!
//! The bootstrap address is printed on stdout and written to `--address-file`, which the
//! bench scripts read (`BROKER=mock bench/latency.sh`).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use erpstream_pipeline::runtime::topic_specs;
use erpstream_pipeline::topology::Topology;
use rdkafka::mocking::MockCluster;

/// Options of `erpstream-bench broker`.
#[derive(clap::Args)]
pub struct Args {
    /// Topology files whose topics (declared, dead-letter, changelog) are created before the
    /// address is published. Environment references in them are resolved as `erpstream run`
    /// resolves them.
    #[arg(long = "topology", required = true)]
    topologies: Vec<PathBuf>,
    /// More topics, as `name:partitions` (the benchmarks that write their own topology).
    #[arg(long = "topic")]
    topics: Vec<String>,
    /// Where the bootstrap address is written once every topic exists.
    #[arg(long)]
    address_file: PathBuf,
}

/// Every topic the topology at `path` needs (declared, dead-letter, changelog), with its
/// partition count, as `erpstream run` would create them.
pub fn topics_of(path: &Path) -> anyhow::Result<Vec<(String, i32)>> {
    let topology = Topology::load(path).with_context(|| format!("loading {}", path.display()))?;
    Ok(topic_specs(&topology)
        .into_iter()
        .map(|spec| (spec.name, spec.partitions))
        .collect())
}

/// Hosts the mock cluster until SIGINT or SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut topics: Vec<(String, i32)> = Vec::new();
    for path in &args.topologies {
        topics.extend(topics_of(path)?);
    }
    for topic in &args.topics {
        let (name, partitions) = topic
            .rsplit_once(':')
            .with_context(|| format!("--topic {topic}: expected name:partitions"))?;
        let partitions = partitions
            .parse::<i32>()
            .ok()
            .filter(|n| *n > 0)
            .with_context(|| format!("--topic {topic}: partitions must be a positive number"))?;
        topics.push((name.to_string(), partitions));
    }
    let cluster = MockCluster::new(1).context("starting librdkafka's mock cluster")?;
    for (name, partitions) in &topics {
        cluster
            .create_topic(name, *partitions, 1)
            .with_context(|| format!("creating topic {name}"))?;
    }
    let address = cluster.bootstrap_servers();
    if let Some(dir) = args.address_file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Written whole under another name, then renamed: a reader never sees half an address.
    let partial = args.address_file.with_extension("partial");
    std::fs::write(&partial, format!("{address}\n"))?;
    std::fs::rename(&partial, &args.address_file)?;
    println!("{address}");
    eprintln!(
        "[broker] librdkafka mock cluster on {address}, {} topics; address in {}",
        topics.len(),
        args.address_file.display()
    );
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    let _ = std::fs::remove_file(&args.address_file);
    drop(cluster);
    Ok(())
}

//! `erpstream-bench`: benchmarks as commands. Each writes `bench/results/<name>.json` (the
//! figures, the median of the repeated runs, and the machine and settings they were taken
//! on) and prints a readable summary. Benchmarks are never timed tests.

mod broker;
mod cdc;
mod chaos;
mod fill;
mod footprint;
mod latency;
mod planning;
mod process;
mod processors;
mod reconcile;
mod report;
mod rest_poll;
mod snapshot;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "erpstream-bench", about = "erpstream benchmarks")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Hosts librdkafka's mock cluster with a topology's topics pre-created: a broker that
    /// is not the limit, for measuring erpstream itself (`BROKER=mock bench/latency.sh`).
    Broker(broker::Args),
    /// Signed webhooks at a fixed open-loop rate through a running pipeline to a storefront
    /// receiver: p50/p99/p99.9 from each webhook's scheduled send time (see bench/latency.sh).
    Latency(latency::Args),
    /// Merges the per-rate latency results into bench/results/latency.json.
    LatencySummary,
    /// Postgres → Kafka through a pg_cdc source: snapshot and stream rows/s, commit → ack
    /// latency (see bench/cdc.sh).
    Cdc(cdc::Args),
    /// A polled ERPNext (the test suite's ERP-shaped server): N items with stock in three
    /// warehouses to the broker, HTTP calls and seconds (see bench/rest_poll.sh).
    RestPoll(rest_poll::Args),
    /// The planning_pg sink: N inventory records (and their products) already on the broker
    /// into a fresh planning database; records/s end to end and inside its transactions
    /// (see bench/planning.sh).
    Planning(planning::Args),
    /// `erpstream reconcile` of N sku × location pairs with planted differences: time and
    /// peak memory, every planted difference found exactly (see bench/reconcile.sh).
    Reconcile(reconcile::Args),
    /// N keys of inventory state through a real changelog topic: restore time and RSS.
    Footprint(footprint::Args),
    /// Writes N records to a topic of their own, so a benchmark runs on a store that has
    /// already taken them (`PREFILL=N bench/latency.sh`).
    Fill(fill::Args),
    /// The dedupe → inventory chain in process with Avro decode/encode: events/s per core.
    Processors(processors::Args),
    /// `GET /api/inventory/snapshot` over a materialized state of N skus: time to first byte,
    /// total time, throughput and peak memory of the whole process.
    Snapshot(snapshot::Args),
    /// The default topology on the local stack under a mixed load and a seeded schedule of
    /// faults (pipeline SIGKILLs, broker and Postgres restarts, storefront, ERP and registry
    /// outages), then the checks: nothing lost, nothing older after newer, nothing oversold,
    /// every order written back once, planning and reconcile clean (see bench/chaos.sh).
    Chaos(chaos::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().bench {
        Bench::Broker(args) => broker::run(args).await,
        Bench::Latency(args) => latency::run(args).await,
        Bench::LatencySummary => latency::summarize(),
        Bench::Cdc(args) => cdc::run(args).await,
        Bench::RestPoll(args) => rest_poll::run(args).await,
        Bench::Planning(args) => planning::run(args).await,
        Bench::Reconcile(args) => reconcile::run(args).await,
        Bench::Footprint(args) => footprint::run(args).await,
        Bench::Fill(args) => fill::run(args).await,
        Bench::Processors(args) => processors::run(args).await,
        Bench::Snapshot(args) => snapshot::run(args).await,
        Bench::Chaos(args) => chaos::run(args).await,
    }
}

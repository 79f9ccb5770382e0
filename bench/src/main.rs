//! `erpstream-bench`: benchmarks as commands. Each writes `bench/results/<name>.json` (the
//! figures, the median of the repeated runs, and the machine and settings they were taken
//! on) and prints a readable summary. Benchmarks are never timed tests.

mod report;
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
    /// `GET /api/inventory/snapshot` over a materialized state of N skus: time to first byte,
    /// total time, throughput and peak memory of the whole process.
    Snapshot(snapshot::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().bench {
        Bench::Snapshot(args) => snapshot::run(args).await,
    }
}

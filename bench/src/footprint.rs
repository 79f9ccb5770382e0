//! The footprint benchmark: N sku×location keys of inventory state written to a real,
//! compacted changelog topic on the running broker, then restored the way a starting
//! pipeline restores it (one consumer reading every partition to its high watermark, then the
//! inventory processor's restore), with the process RSS before and after.

use std::time::Instant;

use erpstream_connectors::kafka::{Changelog, RawRecord};
use erpstream_pipeline::processors::Processor;
use erpstream_pipeline::processors::inventory::{Inventory, InventoryConfig};
use futures::StreamExt;
use serde_json::json;

use crate::process::{Broker, BrokerKind};
use crate::snapshot::{self, sku_state};
use crate::{fill, report};

/// Arguments of `erpstream-bench footprint`.
#[derive(clap::Args)]
pub struct Args {
    /// Bootstrap servers of the running broker.
    #[arg(long, env = "ERPSTREAM_BROKERS")]
    brokers: String,
    /// Skus (each at `--locations` locations).
    #[arg(long, default_value_t = 1_000_000)]
    skus: usize,
    /// Locations per sku.
    #[arg(long, default_value_t = 1)]
    locations: usize,
    /// Changelog partitions.
    #[arg(long, default_value_t = 3)]
    partitions: i32,
    /// The broker: the stack's, or librdkafka's mock cluster in this process (which keeps
    /// ~5 MiB per partition: give it enough partitions for the keys).
    #[arg(long, value_enum, default_value = "stack")]
    broker: BrokerKind,
}

/// Runs the benchmark and writes `bench/results/footprint.json`.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let broker = Broker::new(args.broker, &args.brokers)?;
    let (kafka, publisher, topic) =
        fill::new_topic(&broker, "bench.footprint.changelog", args.partitions, true).await?;
    eprintln!("[footprint] writing {} keys to {topic}", args.skus);
    let started = Instant::now();
    let topics = snapshot::topics();
    let record = |i: usize| RawRecord {
        topic: topic.clone(),
        key: Some(format!("SKU-{i:08}").into_bytes()),
        payload: Some(sku_state(i, args.locations).to_bytes(&topics)),
        headers: Vec::new(),
        partition: Some((i % args.partitions as usize) as i32),
    };
    fill::write_waves(&publisher, args.skus, record, |written| {
        eprintln!("  {written} written")
    })
    .await?;
    let write_seconds = started.elapsed().as_secs_f64();

    let baseline_rss = report::proc_status_bytes("VmRSS:");
    let changelog = Changelog::new(topic.clone(), kafka.clone(), publisher.clone());
    let partitions: Vec<i32> = (0..args.partitions).collect();
    let config: InventoryConfig = serde_json::from_value(json!({
        "inputs": ["inventory.change"], "output": "inventory.available"
    }))?;
    let mut inventory = Inventory::new("inventory", &config, "inventory.available".into());
    // As the processor task restores: entries applied as the changelog is read.
    let started = Instant::now();
    for partition in &partitions {
        inventory.restore_begin(*partition);
    }
    let mut entries = changelog.read(&partitions);
    let mut applying = std::time::Duration::ZERO;
    while let Some(chunk) = entries.next().await {
        let applied = Instant::now();
        for entry in chunk? {
            inventory.restore_entry(entry.partition, entry.key, entry.value.as_deref());
        }
        applying += applied.elapsed();
    }
    let restore_seconds = started.elapsed().as_secs_f64();
    let keys: usize = inventory
        .view()
        .read()
        .values()
        .map(|skus| skus.len())
        .sum();
    let state_rss = report::proc_status_bytes("VmRSS:");
    let peak_rss = report::proc_status_bytes("VmHWM:");
    let result = json!({
        "benchmark": "footprint",
        "machine": report::machine(),
        "settings": {
            "skus": args.skus, "locations_per_sku": args.locations, "partitions": args.partitions,
            "keys": keys, "brokers": broker.bootstrap(), "broker": match args.broker {
                BrokerKind::Stack => std::env::var("ERPSTREAM_BENCH_BROKER").unwrap_or_else(|_| "as given".into()),
                BrokerKind::Mock => args.broker.describe().to_string(),
            },
        },
        "results": {
            "write_seconds": write_seconds,
            "write_records_per_second": args.skus as f64 / write_seconds,
            "restore_total_seconds": restore_seconds,
            "restore_applying_seconds": applying.as_secs_f64(),
            "process_rss_after_restore_bytes": state_rss,
            "rss_above_baseline_bytes": state_rss.saturating_sub(baseline_rss),
            "peak_rss_bytes": peak_rss,
        },
    });
    anyhow::ensure!(
        keys == args.skus,
        "restored {keys} keys, wrote {}",
        args.skus
    );
    std::hint::black_box(&inventory);
    let path = report::write(&args.broker.file_name("footprint"), &result)?;
    println!("{}", serde_json::to_string_pretty(&result["results"])?);
    eprintln!("[footprint] written to {}", path.display());
    Ok(())
}

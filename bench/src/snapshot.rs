//! The snapshot benchmark: N skus of materialized inventory state (restored through the
//! inventory processor's own changelog path), served by the real
//! `GET /api/inventory/snapshot` route over loopback HTTP and read by a streaming client.
//!
//! Figures: restore time, process RSS with the state loaded, then per run the time to the
//! first byte, the total time, skus/s and the peak RSS above the loaded state (how much the
//! response costs in memory; the whole body would be tens of MB). The median of `--runs`.

use std::sync::Arc;
use std::time::Instant;

use erpstream_connectors::component::SnapshotService;
use erpstream_connectors::sources::storefront_api::ApiAuth;
use erpstream_pipeline::processors::inventory::{
    Hold, Inventory, InventoryConfig, LocationState, SkuState,
};
use erpstream_pipeline::processors::{Processor, Topics};
use futures::StreamExt;
use rust_decimal::Decimal;
use serde_json::json;

use crate::report;

/// Arguments of `erpstream-bench snapshot`.
#[derive(clap::Args)]
pub struct Args {
    /// Skus in the state.
    #[arg(long, default_value_t = 1_000_000)]
    skus: usize,
    /// Locations per sku.
    #[arg(long, default_value_t = 1)]
    locations: usize,
    /// Input partitions the state is spread over.
    #[arg(long, default_value_t = 3)]
    partitions: i32,
    /// Measured runs (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Ask for `?detail=true`.
    #[arg(long)]
    detail: bool,
}

const TOKEN: &str = "bench-token";

/// The input topics [`sku_state`]'s read offsets name.
pub fn topics() -> Topics {
    let mut topics = Topics::default();
    topics.index("inventory.change");
    topics.index("inventory.reservation");
    topics
}

/// A plausible sku state: `locations` locations, every tenth sku with an open hold; read
/// offsets on the change topic, and on the reservation topic for skus with a hold.
pub fn sku_state(i: usize, locations: usize) -> SkuState {
    let mut state = SkuState {
        version: 3,
        ..SkuState::default()
    };
    state.read.advance(0, i as i64);
    if i.is_multiple_of(10) {
        state.read.advance(1, i as i64 / 10);
    }
    for l in 0..locations {
        let on_hand = Decimal::from((i * 7 + l * 13) % 500);
        let mut location =
            LocationState::applied(on_hand, 3, 1_764_000_000_000, 1_764_000_000_000, i as i64);
        if i.is_multiple_of(10) {
            location.hold(
                format!("ORD-{i}"),
                Hold {
                    quantity: Decimal::from(1),
                    held_at: 1_764_000_000_000,
                    written_back_at: None,
                },
            );
        }
        state.locations.insert(&format!("WH-{l:02}"), location);
    }
    state
}

/// Runs the benchmark and writes `bench/results/snapshot.json`.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let baseline_rss = report::proc_status_bytes("VmRSS:");
    let config: InventoryConfig = serde_json::from_value(json!({
        "inputs": ["inventory.change"], "output": "inventory.available"
    }))?;
    let mut inventory = Inventory::new("inventory", &config, "inventory.available".into());
    eprintln!(
        "[snapshot] building {} skus × {} locations",
        args.skus, args.locations
    );
    // As a pipeline restores: entries applied one by one in changelog order, never all
    // held at once.
    let topics = topics();
    let started = Instant::now();
    for partition in 0..args.partitions {
        inventory.restore_begin(partition);
        for i in (0..args.skus).filter(|i| (*i as i32) % args.partitions == partition) {
            let value = sku_state(i, args.locations).to_bytes(&topics);
            inventory.restore_entry(partition, format!("SKU-{i:08}"), Some(&value));
        }
        inventory.restore_end(partition);
    }
    let restore_seconds = started.elapsed().as_secs_f64();
    let state_rss = report::proc_status_bytes("VmRSS:");
    eprintln!(
        "[snapshot] restored in {restore_seconds:.2}s; RSS {} MiB",
        state_rss / (1024 * 1024)
    );

    let auth = Arc::new(ApiAuth::new(vec![TOKEN.to_string().into()]));
    let app = erpstream_pipeline::processors::inventory::snapshot::Views {
        live: inventory.view(),
        copy: None,
        expiry: std::time::Duration::from_secs(1800),
    }
    .router(auth);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!(
        "http://{}/api/inventory/snapshot{}",
        listener.local_addr()?,
        if args.detail { "?detail=true" } else { "" }
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::new();

    let (mut totals, mut firsts, mut peaks) = (Vec::new(), Vec::new(), Vec::new());
    let mut bytes = 0usize;
    let mut items = 0usize;
    for run in 0..args.runs {
        report::reset_peak_rss();
        let before = report::proc_status_bytes("VmRSS:");
        let started = Instant::now();
        let response = client.get(&url).bearer_auth(TOKEN).send().await?;
        anyhow::ensure!(
            response.status() == 200,
            "snapshot answered {}",
            response.status()
        );
        let mut stream = response.bytes_stream();
        let mut first = None;
        let (mut run_bytes, mut run_items) = (0usize, 0usize);
        let mut carry: Vec<u8> = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            first.get_or_insert_with(|| started.elapsed().as_secs_f64());
            run_bytes += chunk.len();
            // Items may straddle chunks: count over the previous chunk's tail too.
            carry.extend_from_slice(&chunk);
            run_items += carry.windows(7).filter(|w| w == b"{\"sku\":").count();
            carry.drain(..carry.len().saturating_sub(6));
        }
        let total = started.elapsed().as_secs_f64();
        let peak = report::proc_status_bytes("VmHWM:").saturating_sub(before);
        eprintln!(
            "[snapshot] run {}: {run_items} skus, {} MiB in {total:.2}s (first byte {:.1} ms), peak +{} MiB",
            run + 1,
            run_bytes / (1024 * 1024),
            first.unwrap_or(total) * 1000.0,
            peak / (1024 * 1024)
        );
        anyhow::ensure!(
            run_items == args.skus,
            "expected {} skus, got {run_items}",
            args.skus
        );
        totals.push(total);
        firsts.push(first.unwrap_or(total));
        peaks.push(peak as f64);
        bytes = run_bytes;
        items = run_items;
    }
    // One more read, parsed, to prove the body is one valid JSON array.
    let body = client
        .get(&url)
        .bearer_auth(TOKEN)
        .send()
        .await?
        .bytes()
        .await?;
    let parsed: Vec<serde_json::Value> = serde_json::from_slice(&body)?;
    anyhow::ensure!(parsed.len() == args.skus, "parsed {} items", parsed.len());

    let total = report::median(&mut totals);
    let result = json!({
        "benchmark": "snapshot",
        "machine": report::machine(),
        "settings": {
            "skus": args.skus, "locations_per_sku": args.locations,
            "partitions": args.partitions, "runs": args.runs, "detail": args.detail,
            "transport": "loopback HTTP/1.1, streaming client",
        },
        "results": {
            "restore_seconds": restore_seconds,
            "state_rss_bytes": state_rss.saturating_sub(baseline_rss),
            "process_rss_bytes": state_rss,
            "response_bytes": bytes,
            "items": items,
            "median_total_seconds": total,
            "median_first_byte_seconds": report::median(&mut firsts),
            "median_skus_per_second": items as f64 / total,
            "median_peak_rss_above_state_bytes": report::median(&mut peaks),
        },
    });
    let path = report::write("snapshot", &result)?;
    println!("{}", serde_json::to_string_pretty(&result["results"])?);
    eprintln!("[snapshot] written to {}", path.display());
    Ok(())
}

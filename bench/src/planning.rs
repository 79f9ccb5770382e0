//! `planning_pg` sink throughput: the sink's batch writer (decode, newest-per-key, version-
//! guarded upserts and the offsets, one transaction per batch, the next batch decoded on
//! another task while one is written, as the sink does) fed N `inventory.change`
//! records and one `catalog.update` per sku, already encoded in the wire format, into a fresh
//! planning database. The broker is left out on purpose: tansu, the only broker here, cannot
//! serve a consumer group this volume (fetches of a 125k-record store time out), so what is
//! measured is the sink's own rate, which is what a Kafka cluster would be asked to keep up
//! with. Per run: records/s and rows/s over the whole load, and the median batch time.

use std::time::Instant;

use clap::Args as ClapArgs;
use erpstream_connectors::component::Resolved;
use erpstream_connectors::kafka::{KafkaConfig, Publisher};
use erpstream_connectors::planning;
use erpstream_connectors::sinks::planning_pg::{BatchWriter, Offsets, PlanningPgConfig};
use erpstream_schemas::{CatalogUpdate, Codec, EventKind, InventoryChange, Variant, now_millis};
use rdkafka::Timestamp;
use rdkafka::message::OwnedMessage;
use serde_json::json;

use crate::report;

/// Options of `erpstream-bench planning`.
#[derive(ClapArgs)]
pub struct Args {
    /// Inventory records (skus × 4 locations).
    #[arg(long, default_value_t = 200_000)]
    rows: usize,
    /// Records per transaction (the sink's default).
    #[arg(long, default_value_t = 10_000)]
    batch_size: usize,
    /// Repetitions (medians are reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Postgres URL of the bench stack (each run creates its own planning database).
    #[arg(long, env = "ERPSTREAM_DATABASE_URL")]
    database: String,
    /// Registry (the contracts are registered for the encoded records).
    #[arg(long, env = "ERPSTREAM_REGISTRY_URL")]
    registry: String,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let admin = erpstream_connectors::postgres::connect(&args.database, "bench").await?;
    let codec = Codec::new(&args.registry)?;
    let (catalog, inventory) = (
        "bench.planning.catalog.update",
        "bench.planning.inventory.change",
    );
    codec.register(catalog, EventKind::CatalogUpdate).await?;
    codec
        .register(inventory, EventKind::InventoryChange)
        .await?;
    // Refusals would be published; none are expected, so the producer never connects.
    let publisher = Publisher::new(&KafkaConfig::new("127.0.0.1:9"), "bench", codec.clone())?;
    let config: PlanningPgConfig = serde_json::from_value(serde_json::json!({
        "inputs": [catalog, inventory],
        "database": args.database,
        "batch_size": args.batch_size,
    }))?;
    let writer = BatchWriter::new(
        "bench",
        &config,
        vec![
            Resolved {
                topic: catalog.into(),
                contract: EventKind::CatalogUpdate,
                dlq: format!("{catalog}.dlq"),
            },
            Resolved {
                topic: inventory.into(),
                contract: EventKind::InventoryChange,
                dlq: format!("{inventory}.dlq"),
            },
        ],
        publisher,
    );
    let skus = args.rows.div_ceil(4);
    let t = now_millis();
    let mut messages = Vec::with_capacity(skus + args.rows);
    for i in 0..skus {
        let sku = format!("SKU-{i:07}");
        let payload = codec.encode(catalog, &product(&sku, t)).await?;
        messages.push(message(
            catalog,
            &sku,
            payload,
            (i % 3) as i32,
            (i / 3) as i64,
        ));
    }
    for i in 0..args.rows {
        let sku = format!("SKU-{:07}", i / 4);
        let payload = codec
            .encode(
                inventory,
                &stock(&sku, &format!("WH-{}", i % 4), i as i64, t + 1),
            )
            .await?;
        messages.push(message(
            inventory,
            &sku,
            payload,
            (i % 3) as i32,
            (i / 3) as i64,
        ));
    }
    let records = messages.len();
    let mut records_per_second = Vec::new();
    let mut batch_ms = Vec::new();
    for run in 0..args.runs {
        let name = format!("bench_planning_{}_{run}", std::process::id());
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        let url = match args.database.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => anyhow::bail!("database URL without a name"),
        };
        let mut db = erpstream_connectors::postgres::connect(&url, "planning database").await?;
        planning::migrate(&mut db).await?;
        let mut stored = Offsets::new();
        let mut batches = Vec::new();
        let started = Instant::now();
        // As the sink runs: the next batch is decoded on another task while one is written.
        let mut chunks = messages.chunks(args.batch_size);
        let decode = |chunk: &[OwnedMessage], stored: &Offsets| {
            let (writer, chunk, stored) = (writer.clone(), chunk.to_vec(), stored.clone());
            tokio::spawn(async move {
                writer
                    .prepare(chunk, &stored, &mut erpstream_connectors::kafka::never())
                    .await
            })
        };
        let mut current = match chunks.next() {
            Some(chunk) => decode(chunk, &stored).await?,
            None => None,
        };
        while let Some(mut prepared) = current.take() {
            let next = chunks.next().map(|chunk| decode(chunk, &stored));
            let at = Instant::now();
            writer.write(&mut db, &mut prepared, &mut stored).await?;
            batches.push(at.elapsed().as_secs_f64() * 1000.0);
            current = match next {
                Some(handle) => handle.await?,
                None => None,
            };
        }
        let seconds = started.elapsed().as_secs_f64();
        let rows: i64 = db
            .query_one(
                "SELECT (SELECT count(*) FROM planning.inventory) + (SELECT count(*) FROM planning.products)",
                &[],
            )
            .await?
            .get(0);
        anyhow::ensure!(
            rows as usize == skus * 5,
            "{rows} rows written, expected {}",
            skus * 5
        );
        records_per_second.push(records as f64 / seconds);
        batch_ms.push(report::median(&mut batches));
        eprintln!(
            "run {run}: {records} records ({rows} rows) in {seconds:.2} s = {:.0} records/s",
            records as f64 / seconds
        );
        drop(db);
        admin
            .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .await?;
    }
    let result = json!({
        "machine": report::machine(),
        "settings": {
            "inventory_records": args.rows, "product_records": skus, "batch_size": args.batch_size,
            "runs": args.runs, "postgres": "15, local, fsync on, one connection",
            "broker": "none: records pre-encoded in the Confluent wire format",
        },
        "records_per_second": report::median(&mut records_per_second.clone()),
        "median_batch_ms": report::median(&mut batch_ms.clone()),
        "runs": {"records_per_second": records_per_second, "median_batch_ms": batch_ms},
    });
    let path = report::write("planning", &result)?;
    println!(
        "planning_pg: {:.0} records/s ({} per transaction, median batch {:.1} ms)  ({})",
        result["records_per_second"].as_f64().unwrap_or_default(),
        args.batch_size,
        result["median_batch_ms"].as_f64().unwrap_or_default(),
        path.display()
    );
    Ok(())
}

fn message(topic: &str, key: &str, payload: Vec<u8>, partition: i32, offset: i64) -> OwnedMessage {
    OwnedMessage::new(
        Some(payload),
        Some(key.as_bytes().to_vec()),
        topic.to_string(),
        Timestamp::NotAvailable,
        partition,
        offset,
        None,
    )
}

fn product(sku: &str, at: i64) -> CatalogUpdate {
    CatalogUpdate {
        event_id: uuid::Uuid::now_v7().to_string(),
        idempotency_key: format!("bench:{sku}"),
        source_system: "bench".into(),
        source: "bench".into(),
        occurred_at: at,
        ingested_at: at,
        group_id: sku.into(),
        group_name: format!("Product {sku}"),
        description: None,
        category_path: vec!["Finished Goods".into()],
        tax_code: None,
        is_active: true,
        product_family: Some("Widgets".into()),
        lead_time_days: Some(14),
        variants: vec![Variant::of_sku(sku)],
    }
}

fn stock(sku: &str, location: &str, quantity: i64, at: i64) -> InventoryChange {
    InventoryChange {
        event_id: uuid::Uuid::now_v7().to_string(),
        idempotency_key: format!("bench:{sku}:{location}"),
        source_system: "bench".into(),
        source: "bench".into(),
        occurred_at: at,
        ingested_at: at,
        sku: sku.into(),
        location_code: location.into(),
        new_quantity: Some(quantity.into()),
        allocated_qty: Some(1.into()),
        in_transit_qty: None,
        quantity_change: None,
        change_reason: None,
        reference_id: None,
    }
}

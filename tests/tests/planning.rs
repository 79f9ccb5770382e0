//! End-to-end: `catalog.update`, `inventory.change`, `demand.actual` → the `planning_pg` sink
//! → the planning tables, on a planning database of each test's own and a broker of its own.

use std::time::{Duration, Instant};

use erpstream_e2e::*;
use erpstream_schemas::{
    CatalogUpdate, Codec, DemandActual, Event, InventoryChange, Variant, now_millis,
};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_postgres::Client;

/// A new planning database on the stack's Postgres: (URL, client).
async fn planning_database() -> (String, Client) {
    let admin_url = Stack::from_env().database;
    let admin = pg(&admin_url).await;
    let name = unique("planning_").replace(['-', '.'], "_").to_lowercase();
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create database");
    let url = match admin_url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("database URL without a name"),
    };
    let client = pg(&url).await;
    (url, client)
}

fn body(database: &str, batch_size: usize) -> String {
    format!(
        r#"topics:
  catalog.update: {{ partitions: 2 }}
  inventory.change: {{ partitions: 2 }}
  demand.actual: {{ partitions: 2 }}
sources: {{}}
sinks:
  planning:
    type: planning_pg
    inputs: [catalog.update, inventory.change, demand.actual]
    database: {database}
    batch_size: {batch_size}
    batch_wait: 50ms
"#
    )
}

fn envelope(key: &str) -> (String, String) {
    (uuid::Uuid::now_v7().to_string(), key.to_string())
}

fn product(sku: &str, name: &str, at: i64) -> CatalogUpdate {
    let (event_id, idempotency_key) = envelope(&format!("p:{sku}:{at}"));
    CatalogUpdate {
        event_id,
        idempotency_key,
        source_system: "EpicorKinetic".into(),
        source: "test".into(),
        occurred_at: at,
        ingested_at: now_millis(),
        group_id: sku.into(),
        group_name: name.into(),
        description: None,
        category_path: vec!["Finished Goods".into()],
        tax_code: None,
        is_active: true,
        product_family: Some("Widgets".into()),
        lead_time_days: Some(14),
        variants: vec![Variant {
            sku: sku.into(),
            variant_title: None,
            selling_price: None,
            mrp: None,
            current_stock: None,
            specifications: Default::default(),
            media_assets: Vec::new(),
        }],
    }
}

fn stock(sku: &str, location: &str, on_hand: i64, at: i64) -> InventoryChange {
    let (event_id, idempotency_key) = envelope(&format!("s:{sku}:{location}:{at}"));
    InventoryChange {
        event_id,
        idempotency_key,
        source_system: "EpicorKinetic".into(),
        source: "test".into(),
        occurred_at: at,
        ingested_at: now_millis(),
        sku: sku.into(),
        location_code: location.into(),
        new_quantity: Some(on_hand.into()),
        allocated_qty: Some(2.into()),
        in_transit_qty: None,
        quantity_change: None,
        change_reason: None,
        reference_id: None,
    }
}

fn demand(sku: &str, period: &str, qty: i64, at: i64) -> DemandActual {
    let (event_id, idempotency_key) = envelope(&format!("d:{sku}:{period}:{at}"));
    DemandActual {
        event_id,
        idempotency_key,
        source_system: "EpicorKinetic".into(),
        source: "test".into(),
        occurred_at: at,
        ingested_at: now_millis(),
        sku: sku.into(),
        period: period.into(),
        actual_qty: qty.into(),
        region: "NA".into(),
        channel: "Direct".into(),
    }
}

/// Encodes and produces `events` to `topic` in order, waiting for every acknowledgement.
async fn produce<E: Event>(brokers: &str, topic: &str, events: &[E]) {
    let codec = Codec::new(&Stack::from_env().registry).expect("codec");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("max.in.flight.requests.per.connection", "1")
        .create()
        .expect("producer");
    let mut pending = Vec::new();
    for event in events {
        let payload = codec.encode(topic, event).await.expect("encode");
        let producer = producer.clone();
        let topic = topic.to_string();
        let key = event.key().to_string();
        pending.push(async move {
            producer
                .send(
                    FutureRecord::to(&topic).key(&key).payload(&payload),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)
                .expect("produced");
        });
        if pending.len() >= 1000 {
            futures::future::join_all(pending.drain(..)).await;
        }
    }
    futures::future::join_all(pending).await;
}

async fn count(db: &Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).await.expect("count").get(0)
}

/// Waits until the sink's stored offsets cover `records` records.
async fn wait_consumed(db: &Client, pipeline: &Pipeline, records: i64, within: Duration) {
    let until = Instant::now() + within;
    loop {
        let consumed = db
            .query_one(
                "SELECT coalesce(sum(next_offset), 0)::bigint FROM planning.sink_offsets",
                &[],
            )
            .await
            .map(|r| r.get::<_, i64>(0))
            .unwrap_or(0);
        if consumed >= records {
            return;
        }
        assert!(
            Instant::now() < until,
            "sink consumed {consumed} of {records}; log:\n{}",
            pipeline.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn out_of_order_records_leave_the_newest_values_and_refusals_are_dead_lettered() {
    let broker = Broker::start();
    let mut options = TopologyOptions::new("http://127.0.0.1:9");
    options.brokers = broker.brokers.clone();
    let (url, db) = planning_database().await;
    let mut pipeline = Pipeline::custom(&options, &body(&url, 500));
    pipeline.start().await;
    let t = now_millis() - 60_000;

    produce(
        &options.brokers,
        &pipeline.topic("catalog.update"),
        &[
            product("FG-1001", "Widget A", t),
            product("FG-1002", "Widget B", t),
        ],
    )
    .await;
    // Newest first, then two older figures, then a replay of the newest.
    let newest = stock("FG-1001", "MAIN-WH", 1250, t + 3_000);
    produce(
        &options.brokers,
        &pipeline.topic("inventory.change"),
        &[
            newest.clone(),
            stock("FG-1001", "MAIN-WH", 10, t + 1_000),
            stock("FG-1001", "MAIN-WH", 20, t + 2_000),
            newest,
            stock("FG-1002", "MAIN-WH", 7, t),
            stock("NOT-A-PRODUCT", "MAIN-WH", 1, t),
        ],
    )
    .await;
    produce(
        &options.brokers,
        &pipeline.topic("demand.actual"),
        &[
            demand("FG-1001", "2026-02-01", 980, t + 1_000),
            demand("FG-1001", "2026-02-01", 900, t),
            demand("FG-1001", "2026-02-15", 5, t),
        ],
    )
    .await;
    // 2 + 6 + 3 records, every one consumed.
    wait_consumed(&db, &pipeline, 11, Duration::from_secs(60)).await;

    let row = db
        .query_one(
            "SELECT on_hand_qty::text, allocated_qty::text, in_transit_qty::text,
                    source_version, (extract(epoch FROM updated_at) * 1000)::bigint
             FROM planning.inventory WHERE sku = 'FG-1001' AND location = 'MAIN-WH'",
            &[],
        )
        .await
        .expect("FG-1001 stock");
    assert_eq!(
        row.get::<_, String>(0),
        "1250.000",
        "the newest figure stays"
    );
    assert_eq!(row.get::<_, String>(1), "2.000");
    assert_eq!(row.get::<_, String>(2), "0.000");
    assert_eq!(row.get::<_, i64>(3), t + 3_000);
    assert_eq!(
        row.get::<_, i64>(4),
        t + 3_000,
        "updated_at is the ERP time"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM planning.inventory").await,
        2
    );
    let product = db
        .query_one(
            "SELECT name, category_name, product_family, lead_time_days FROM planning.products WHERE sku = 'FG-1001'",
            &[],
        )
        .await
        .expect("product");
    assert_eq!(product.get::<_, String>(0), "Widget A");
    assert_eq!(
        product.get::<_, Option<String>>(1).as_deref(),
        Some("Finished Goods")
    );
    assert_eq!(
        product.get::<_, Option<String>>(2).as_deref(),
        Some("Widgets")
    );
    assert_eq!(product.get::<_, Option<i32>>(3), Some(14));
    let demand = db
        .query_one(
            "SELECT actual_qty::text, period::text, region, channel FROM planning.demand_actuals",
            &[],
        )
        .await
        .expect("one demand row");
    assert_eq!(demand.get::<_, String>(0), "980.000");
    assert_eq!(demand.get::<_, String>(1), "2026-02-01");

    let refused: Vec<String> = read_topic(
        &options.brokers,
        &(pipeline.topic("inventory.change") + ".dlq"),
    )
    .into_iter()
    .chain(read_topic(
        &options.brokers,
        &(pipeline.topic("demand.actual") + ".dlq"),
    ))
    .map(|r| r.headers["erpstream.error"].clone())
    .collect();
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(
        refused
            .iter()
            .any(|e| e.contains("unknown sku NOT-A-PRODUCT")),
        "{refused:?}"
    );
    assert!(
        refused
            .iter()
            .any(|e| e.contains("not the first day of a month")),
        "{refused:?}"
    );
    pipeline.terminate();
}

#[tokio::test]
async fn a_sink_killed_mid_batch_ends_with_exactly_the_expected_rows() {
    let broker = Broker::start();
    let mut options = TopologyOptions::new("http://127.0.0.1:9");
    options.brokers = broker.brokers.clone();
    let (url, db) = planning_database().await;
    let mut pipeline = Pipeline::custom(&options, &body(&url, 200));
    pipeline.start().await;
    let t = now_millis() - 600_000;
    let skus = 2_000;
    let products: Vec<CatalogUpdate> = (0..skus)
        .map(|i| product(&format!("SKU-{i:05}"), &format!("Product {i}"), t))
        .collect();
    produce(
        &options.brokers,
        &pipeline.topic("catalog.update"),
        &products,
    )
    .await;
    // Two locations per sku, each with a newer figure and an older one arriving after it.
    let mut changes = Vec::new();
    for i in 0..skus {
        for location in ["WH-1", "WH-2"] {
            let sku = format!("SKU-{i:05}");
            changes.push(stock(&sku, location, i + 100, t + 2_000));
            changes.push(stock(&sku, location, i, t + 1_000));
        }
    }
    produce(
        &options.brokers,
        &pipeline.topic("inventory.change"),
        &changes,
    )
    .await;
    let total = (products.len() + changes.len()) as i64;

    // Kill as soon as part of it is written.
    let until = Instant::now() + Duration::from_secs(60);
    while count(&db, "SELECT count(*) FROM planning.inventory").await < 500 {
        assert!(Instant::now() < until, "{}", pipeline.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pipeline.kill();
    let at_kill = count(&db, "SELECT count(*) FROM planning.inventory").await;
    assert!(at_kill < 2 * skus, "killed mid-way ({at_kill} rows)");

    pipeline.start().await;
    wait_consumed(&db, &pipeline, total, Duration::from_secs(120)).await;
    assert_eq!(
        count(&db, "SELECT count(*) FROM planning.products").await,
        skus
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM planning.inventory").await,
        2 * skus
    );
    let wrong = count(
        &db,
        "SELECT count(*) FROM planning.inventory
         WHERE on_hand_qty <> substring(sku FROM 5)::int + 100 OR source_version <> (SELECT max(source_version) FROM planning.inventory)",
    )
    .await;
    assert_eq!(wrong, 0, "every row holds its newest figure");
    assert_eq!(
        count(
            &db,
            "SELECT sum(next_offset)::bigint FROM planning.sink_offsets"
        )
        .await,
        total,
        "stored offsets cover every record once"
    );
    pipeline.terminate();
}

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

fn body(database: &str, batch_size: usize) -> String {
    body_waiting(database, batch_size, "7d")
}

/// A topology whose planning sink lets stock and demand wait `product_wait` for their product.
fn body_waiting(database: &str, batch_size: usize, product_wait: &str) -> String {
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
    product_wait: {product_wait}
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
        variants: vec![Variant::of_sku(sku)],
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
async fn out_of_order_records_leave_the_newest_values_and_stock_waits_for_its_product() {
    let (_broker, options) = TopologyOptions::own_broker();
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
    // Only what can never apply is dead-lettered; stock of an unknown sku waits for it.
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        refused[0].contains("not the first day of a month"),
        "{refused:?}"
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM planning.waiting WHERE sku = 'NOT-A-PRODUCT'"
        )
        .await,
        1,
        "the stock of an unknown sku waits"
    );

    // Shadow replay into the sink: the rows it would write, none written.
    let dir = std::env::temp_dir().join(unique("planning-shadow-"));
    std::fs::create_dir_all(&dir).expect("dir");
    let rows_file = dir.join("rows.jsonl");
    let run = pipeline.tool(&[
        "replay",
        "--topic",
        "demand.actual",
        "--from",
        "1h",
        "--into",
        "planning",
        "--out",
        rows_file.to_str().expect("path"),
    ]);
    assert!(run.success, "shadow replay failed: {}", run.stderr);
    assert!(
        run.stderr.contains("2 requests/rows computed, 1 refused"),
        "{}",
        run.stderr
    );
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(&rows_file)
        .expect("rows")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(rows[0]["table"], "planning.demand_actuals");
    assert_eq!(rows[0]["values"]["actual_qty"], "980.000");
    assert_eq!(
        count(&db, "SELECT count(*) FROM planning.demand_actuals").await,
        1
    );

    // The product arrives late (on another partition, perhaps another replica): the
    // waiting stock lands by itself, once.
    produce(
        &options.brokers,
        &pipeline.topic("catalog.update"),
        &[crate::product("NOT-A-PRODUCT", "Late product", t)],
    )
    .await;
    wait_consumed(&db, &pipeline, 12, Duration::from_secs(60)).await;
    let until = Instant::now() + Duration::from_secs(30);
    while count(&db, "SELECT count(*) FROM planning.waiting").await > 0 {
        assert!(
            Instant::now() < until,
            "the stock still waits; log:\n{}",
            pipeline.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let row = db
        .query_one(
            "SELECT on_hand_qty::text, source_version FROM planning.inventory
             WHERE sku = 'NOT-A-PRODUCT' AND location = 'MAIN-WH'",
            &[],
        )
        .await
        .expect("the waiting stock is written once its product is there");
    assert_eq!(row.get::<_, String>(0), "1.000");
    assert_eq!(row.get::<_, i64>(1), t);
    pipeline.terminate();
}

#[tokio::test]
async fn stock_whose_product_never_comes_is_dead_lettered_after_the_wait_and_redriven_later() {
    let (_broker, options) = TopologyOptions::own_broker();
    let (url, db) = planning_database().await;
    let mut pipeline = Pipeline::custom(&options, &body_waiting(&url, 500, "2s"));
    pipeline.start().await;
    let t = now_millis() - 60_000;
    produce(
        &options.brokers,
        &pipeline.topic("inventory.change"),
        &[
            stock("NEVER-1", "MAIN-WH", 3, t),
            stock("NEVER-1", "MAIN-WH", 4, t + 1_000),
        ],
    )
    .await;
    produce(
        &options.brokers,
        &pipeline.topic("demand.actual"),
        &[demand("NEVER-1", "2026-02-01", 12, t)],
    )
    .await;
    wait_consumed(&db, &pipeline, 3, Duration::from_secs(60)).await;
    // After product_wait (and the sink's idle check) the newest figure of each key is
    // dead-lettered with a reason an operator can act on; the superseded one is not.
    let dead_letters =
        |topic: &str| read_topic(&options.brokers, &(pipeline.topic(topic) + ".dlq"));
    let until = Instant::now() + Duration::from_secs(30);
    let letters = loop {
        let letters: Vec<_> = dead_letters("inventory.change")
            .into_iter()
            .chain(dead_letters("demand.actual"))
            .collect();
        if letters.len() >= 2 {
            break letters;
        }
        assert!(
            Instant::now() < until,
            "nothing dead-lettered; log:\n{}",
            pipeline.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(letters.len(), 2, "{letters:?}");
    for letter in &letters {
        let error = &letter.headers["erpstream.error"];
        assert!(
            error.contains("unknown sku NEVER-1: no product arrived within 2s"),
            "{error}"
        );
        assert_eq!(letter.headers["erpstream.error_type"], "refused");
        assert_eq!(letter.headers["erpstream.source"], "planning");
    }
    assert_eq!(count(&db, "SELECT count(*) FROM planning.waiting").await, 0);

    // Once the product is synced, the redriven stock and demand land.
    produce(
        &options.brokers,
        &pipeline.topic("catalog.update"),
        &[product("NEVER-1", "Finally", t)],
    )
    .await;
    wait_consumed(&db, &pipeline, 4, Duration::from_secs(60)).await;
    let run = pipeline.tool(&[
        "dlq",
        "redrive",
        "--source",
        "planning",
        "--error-type",
        "refused",
    ]);
    assert!(run.success, "redrive failed: {}", run.stderr);
    let summary: serde_json::Value = serde_json::from_str(&run.stdout).expect("summary");
    assert_eq!(summary["redriven"], 2, "{summary}");
    wait_consumed(&db, &pipeline, 6, Duration::from_secs(60)).await;
    let on_hand: String = db
        .query_one(
            "SELECT on_hand_qty::text FROM planning.inventory WHERE sku = 'NEVER-1'",
            &[],
        )
        .await
        .expect("redriven stock")
        .get(0);
    assert_eq!(on_hand, "4.000", "the newest figure, once");
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM planning.demand_actuals WHERE sku = 'NEVER-1'"
        )
        .await,
        1
    );
    pipeline.terminate();
}

#[tokio::test]
async fn a_sink_killed_mid_batch_ends_with_exactly_the_expected_rows() {
    let (_broker, options) = TopologyOptions::own_broker();
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
    // The products are in before their stock is sent: the sink reads the two topics in no
    // particular order, and stock of a sku it does not know yet would wait for it.
    wait_consumed(&db, &pipeline, skus, Duration::from_secs(60)).await;
    // Two locations per sku, each with a newer figure and an older one arriving after it.
    let mut changes = Vec::new();
    for i in 0..skus {
        for location in ["WH-1", "WH-2"] {
            let sku = format!("SKU-{i:05}");
            changes.push(stock(&sku, location, i + 100, t + 2_000));
            changes.push(stock(&sku, location, i, t + 1_000));
        }
    }
    let total = (products.len() + changes.len()) as i64;
    // The sink writes faster than the broker takes records: kill it while they are still
    // being produced, as soon as part of them is written, so it stops mid-stream.
    let producing = {
        let (brokers, topic) = (options.brokers.clone(), pipeline.topic("inventory.change"));
        tokio::spawn(async move { produce(&brokers, &topic, &changes).await })
    };
    let until = Instant::now() + Duration::from_secs(60);
    while count(&db, "SELECT count(*) FROM planning.inventory").await < 500 {
        assert!(Instant::now() < until, "{}", pipeline.log_text());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    pipeline.kill();
    let at_kill = count(&db, "SELECT count(*) FROM planning.inventory").await;
    producing.await.expect("produced");
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

/// A topology with the planning API (publishing to `erp`) and the planning sink.
fn api_body(database: &str, erp: &str) -> String {
    format!(
        r#"topics:
  catalog.update: {{ partitions: 2 }}
  inventory.change: {{ partitions: 2 }}
  demand.actual: {{ partitions: 2 }}
sources:
  planning_api:
    type: planning_api
    database: {database}
    tokens:
      - {{ token: {{ env: TEST_PLANNING_ADMIN }}, role: admin, name: ops-admin }}
      - {{ token: {{ env: TEST_PLANNING_COORDINATOR }}, role: sop_coordinator, name: sop-lead }}
      - {{ token: {{ env: TEST_PLANNING_VIEWER }}, role: viewer }}
    publish:
      url: {erp}
      token: {{ env: TEST_ERP_TOKEN }}
      frozen_horizon: 14days
      retry: {{ max_attempts: 2, initial_backoff: 50ms, max_backoff: 100ms }}
sinks:
  planning:
    type: planning_pg
    inputs: [catalog.update, inventory.change, demand.actual]
    database: {database}
    batch_wait: 20ms
"#
    )
}

async fn post(url: &str, token: Option<&str>, body: &str) -> (u16, serde_json::Value, bool) {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let replayed = response.headers().contains_key("idempotent-replayed");
    (status, response.json().await.unwrap_or_default(), replayed)
}

async fn wait_row(db: &Client, sql: &str, within: Duration) {
    let until = Instant::now() + within;
    while count(db, sql).await == 0 {
        assert!(Instant::now() < until, "no row for {sql}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The three requests of the Epicor guide §4.1–§4.3, bodies as written there.
const PRODUCTS: &str = r#"{
    "meta": {
      "source_system": "EpicorKinetic",
      "batch_id": "KIN-PROD-20260227-001",
      "idempotency_key": "kin-prod-001",
      "dry_run": false
    },
    "items": [
      {
        "sku": "FG-1001",
        "name": "Widget A",
        "category_name": "Finished Goods",
        "product_family": "Widgets",
        "lead_time_days": 14
      }
    ]
  }"#;
const INVENTORY: &str = r#"{
    "meta": {
      "source_system": "EpicorKinetic",
      "batch_id": "KIN-INV-20260227-001",
      "idempotency_key": "kin-inv-001",
      "dry_run": false
    },
    "items": [
      {
        "sku": "FG-1001",
        "location": "MAIN-WH",
        "on_hand_qty": 1250,
        "allocated_qty": 200,
        "in_transit_qty": 75
      }
    ]
  }"#;
const DEMAND: &str = r#"{
    "meta": {
      "source_system": "EpicorKinetic",
      "batch_id": "KIN-DA-20260227-001",
      "idempotency_key": "kin-da-001",
      "dry_run": false
    },
    "items": [
      {
        "sku": "FG-1001",
        "period": "2026-02-01",
        "actual_qty": 980,
        "region": "NA",
        "channel": "Direct"
      }
    ]
  }"#;

#[tokio::test]
async fn the_guides_sync_requests_land_in_the_planning_tables_once() {
    let (_broker, mut options) = TopologyOptions::own_broker();
    options.console = true;
    let (url, db) = planning_database().await;
    let erp = erp::Erp::start().await;
    let mut pipeline = Pipeline::custom(&options, &api_body(&url, &erp.url));
    pipeline.start().await;
    let base = format!("{}/api/v1/integrations/erp", pipeline.url);
    let admin = Some(PLANNING_TOKENS[0].1);

    let (status, answer, _) = post(&format!("{base}/products/sync"), admin, PRODUCTS).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "accepted");
    assert_eq!(answer["summary"]["accepted"], 1);

    // The guide's sequence: inventory right after the products were accepted, before the
    // sink has written the product row. A product the API accepted is known.
    let (status, first, _) = post(&format!("{base}/inventory/sync"), admin, INVENTORY).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["results"][0]["status"], "accepted", "{first}");
    // Each accepted item says where its event is.
    let item = &first["results"][0];
    assert!(
        item["topic"]
            .as_str()
            .is_some_and(|t| t.ends_with("inventory.change"))
            && item["partition"].is_i64()
            && item["offset"].is_i64(),
        "{first}"
    );
    wait_row(&db, "SELECT count(*) FROM planning.products WHERE sku = 'FG-1001' AND name = 'Widget A' AND lead_time_days = 14", Duration::from_secs(20)).await;
    let coordinator = Some(PLANNING_TOKENS[1].1);
    let (status, answer, _) =
        post(&format!("{base}/demand-actuals/sync"), coordinator, DEMAND).await;
    assert_eq!(status, 200, "{answer}");
    wait_row(&db, "SELECT count(*) FROM planning.inventory WHERE sku = 'FG-1001' AND location = 'MAIN-WH' AND on_hand_qty = 1250 AND allocated_qty = 200 AND in_transit_qty = 75", Duration::from_secs(20)).await;
    wait_row(&db, "SELECT count(*) FROM planning.demand_actuals WHERE sku = 'FG-1001' AND period = '2026-02-01' AND actual_qty = 980 AND region = 'NA' AND channel = 'Direct'", Duration::from_secs(20)).await;
    let inventory_topic = pipeline.topic("inventory.change");
    let published = topic_size(&options.brokers, &inventory_topic);
    assert_eq!(published, 1);

    // The same request again: the first answer, nothing new published.
    let (status, again, replayed) = post(&format!("{base}/inventory/sync"), admin, INVENTORY).await;
    assert_eq!(status, 200);
    assert!(replayed);
    assert_eq!(again, first);
    // A dry run with a new figure: validated, nothing published or written.
    let dry = INVENTORY
        .replace("\"dry_run\": false", "\"dry_run\": true")
        .replace("1250", "9999")
        .replace("kin-inv-001", "kin-inv-002");
    let (status, answer, _) = post(&format!("{base}/inventory/sync"), admin, &dry).await;
    assert_eq!(status, 200);
    assert_eq!(answer["status"], "validated");
    // The real run after the dry run with the same key is not swallowed by it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(topic_size(&options.brokers, &inventory_topic), published);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM planning.inventory WHERE on_hand_qty = 9999"
        )
        .await,
        0
    );
    let real = dry.replace("\"dry_run\": true", "\"dry_run\": false");
    let (_, answer, replayed) = post(&format!("{base}/inventory/sync"), admin, &real).await;
    assert!(!replayed);
    assert_eq!(answer["status"], "accepted");
    wait_row(
        &db,
        "SELECT count(*) FROM planning.inventory WHERE on_hand_qty = 9999",
        Duration::from_secs(20),
    )
    .await;

    // Per-item results name the field; unknown skus are refused; roles are enforced.
    let mixed = r#"{"meta": {"source_system": "EpicorKinetic"}, "items": [
        {"sku": "FG-1001", "period": "2026-03-01", "actual_qty": 5},
        {"sku": "FG-1001", "period": "2026-03-15", "actual_qty": 5},
        {"sku": "FG-9999", "period": "2026-03-01", "actual_qty": 5}]}"#;
    let (status, answer, _) = post(&format!("{base}/demand-actuals/sync"), admin, mixed).await;
    assert_eq!(status, 200);
    assert_eq!(answer["status"], "partially_accepted");
    assert_eq!(
        answer["results"][1]["errors"][0]["field"],
        "items[1].period"
    );
    assert!(
        answer["results"][2]["errors"][0]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("unknown sku FG-9999")
    );
    let (status, _, _) = post(
        &format!("{base}/products/sync"),
        Some(PLANNING_TOKENS[2].1),
        PRODUCTS,
    )
    .await;
    assert_eq!(status, 403);
    let (status, _, _) = post(&format!("{base}/products/sync"), None, PRODUCTS).await;
    assert_eq!(status, 401);
    let (status, answer, _) = post(
        &format!("{base}/products/sync"),
        admin,
        r#"{"meta": {}, "items": []}"#,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(answer["field"], "meta.source_system");

    // A NUL (U+0000) in an item, even in a key: that item is rejected naming where, and the
    // answer (stored for its key in Postgres, which holds no NUL) is given again.
    let nul = r#"{"meta": {"source_system": "EpicorKinetic", "idempotency_key": "kin-nul-1"},
        "items": [{"sku": "FG-1001", "period": "2026-04-01", "actual_qty": 1, "re\u0000gion": "NA"},
                  {"sku": "FG-\u00001", "period": "2026-04-01", "actual_qty": 1}]}"#;
    let (status, answer, _) = post(&format!("{base}/demand-actuals/sync"), admin, nul).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "rejected", "{answer}");
    assert_eq!(
        answer["results"][0]["errors"][0]["field"],
        "items[0].re\\u0000gion"
    );
    assert_eq!(answer["results"][1]["errors"][0]["field"], "items[1].sku");
    let (status, again, replayed) = post(&format!("{base}/demand-actuals/sync"), admin, nul).await;
    assert_eq!((status, replayed), (200, true), "{again}");
    assert_eq!(again, answer);

    // The console's sync history: the requests by key, with the records they published.
    let (status, page) = pipeline
        .console_page(CONSOLE_TOKENS[1].1, "/console/history?key=kin-inv-001")
        .await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("inventory sync") && page.contains("accepted: 1 of 1 accepted"),
        "{page}"
    );
    assert!(page.contains(&format!("{}/", pipeline.topic("inventory.change"))));
    assert!(!page.contains("Could not read"), "{page}");
    pipeline.terminate();
}

#[tokio::test]
async fn publishing_plans_is_governed_idempotent_and_audited() {
    let (_broker, options) = TopologyOptions::own_broker();
    let (url, db) = planning_database().await;
    let erp = erp::Erp::start().await;
    let mut pipeline = Pipeline::custom(&options, &api_body(&url, &erp.url));
    pipeline.start().await;
    // The schema is there once the sink or the API started.
    let until = Instant::now() + Duration::from_secs(20);
    while db
        .execute("SELECT 1 FROM planning.plans", &[])
        .await
        .is_err()
    {
        assert!(Instant::now() < until, "planning schema not created");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    db.batch_execute(
        "INSERT INTO planning.products (sku, name, source_system, source_version) VALUES ('FG-1001', 'Widget A', 'test', 1);
         INSERT INTO planning.plans (plan_id, kind, name, status) VALUES (1, 'demand', 'Draft plan', 'draft');
         INSERT INTO planning.plans (plan_id, kind, name, status, approved_by, approved_at)
             VALUES (2, 'demand', 'Q3 demand', 'approved', 'sop-lead', now()),
                    (3, 'supply', 'Frozen only', 'approved', 'sop-lead', now()),
                    (4, 'supply', 'Supply', 'approved', 'sop-lead', now());
         INSERT INTO planning.plan_lines (plan_id, line_no, sku, location, period, quantity) VALUES
             (2, 1, 'FG-1001', 'MAIN-WH', date_trunc('month', current_date), 100),
             (2, 2, 'FG-1001', 'MAIN-WH', date_trunc('month', current_date + 62), 120),
             (2, 3, 'FG-1001', 'MAIN-WH', date_trunc('month', current_date + 93), 130),
             (3, 1, 'FG-1001', 'MAIN-WH', current_date, 10),
             (4, 1, 'FG-1001', 'MAIN-WH', date_trunc('month', current_date + 62), 40);",
    )
    .await
    .expect("plans");
    let base = format!("{}/api/v1/integrations/erp/publish", pipeline.url);
    let coordinator = Some(PLANNING_TOKENS[1].1);

    let (status, answer, _) = post(&format!("{base}/demand-plan/1"), coordinator, "").await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["status"], "rejected");
    assert!(
        answer["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("only approved plans")
    );

    let (status, answer, _) = post(&format!("{base}/demand-plan/2"), coordinator, "").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "accepted");
    assert_eq!(answer["published_lines"], 2);
    assert_eq!(
        answer["held_lines"].as_array().map(Vec::len),
        Some(1),
        "{answer}"
    );
    assert_eq!(answer["held_lines"][0]["line_no"], 1);
    let reference = answer["external_reference_id"].clone();
    assert!(reference.is_string());
    let created = erp.created();
    assert_eq!(created.len(), 1);
    assert!(
        created[0].key.starts_with("plan-demand-2-"),
        "{:?}",
        created[0].key
    );
    assert_eq!(created[0].body["lines"].as_array().map(Vec::len), Some(2));

    let (status, again, _) = post(&format!("{base}/demand-plan/2"), coordinator, "").await;
    assert_eq!(status, 200);
    assert_eq!(again["status"], "already_published");
    assert_eq!(again["external_reference_id"], reference);
    assert_eq!(erp.created().len(), 1, "not sent again");

    let (status, answer, _) = post(&format!("{base}/supply-plan/2"), coordinator, "").await;
    assert_eq!(status, 409);
    assert_eq!(answer["status"], "rejected");
    let (status, answer, _) = post(&format!("{base}/supply-plan/3"), coordinator, "").await;
    assert_eq!(status, 409);
    assert!(
        answer["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("frozen horizon")
    );

    // The ERP down: failed, audited, nothing recorded as published; then it works.
    erp.fail_with(503);
    let (status, answer, _) = post(&format!("{base}/supply-plan/4"), coordinator, "").await;
    assert_eq!(status, 502, "{answer}");
    assert_eq!(answer["status"], "failed");
    erp.fail_with(0);
    let (status, answer, _) = post(
        &format!("{base}/supply-plan/4"),
        Some(PLANNING_TOKENS[0].1),
        "",
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "accepted");
    let (status, _, _) = post(
        &format!("{base}/supply-plan/4"),
        Some(PLANNING_TOKENS[2].1),
        "",
    )
    .await;
    assert_eq!(status, 403);

    let audit: Vec<(i64, String, String)> = db
        .query(
            "SELECT plan_id, status, actor FROM planning.publish_audit ORDER BY id",
            &[],
        )
        .await
        .expect("audit")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let expected: Vec<(i64, &str, &str)> = vec![
        (1, "rejected", "sop-lead"),
        (2, "accepted", "sop-lead"),
        (2, "already_published", "sop-lead"),
        (2, "rejected", "sop-lead"),
        (3, "rejected", "sop-lead"),
        (4, "failed", "sop-lead"),
        (4, "accepted", "ops-admin"),
    ];
    assert_eq!(
        audit
            .iter()
            .map(|(p, s, a)| (*p, s.as_str(), a.as_str()))
            .collect::<Vec<_>>(),
        expected
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM planning.plans WHERE status = 'published'"
        )
        .await,
        2
    );
    pipeline.terminate();
}

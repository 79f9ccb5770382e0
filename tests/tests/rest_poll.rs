//! End-to-end: a polled ERP (`rest_poll`, ERPNext and OData presets) against an ERP-shaped
//! test server → `catalog.update` / `inventory.change`, with the state in the stack's Postgres
//! and the local broker.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use erpstream_e2e::erpnext::{self, FakeErp, Fault};
use erpstream_e2e::*;
use erpstream_schemas::{CatalogUpdate, Codec, InventoryChange};
use serde_json::{Value, json};

/// The `rest_poll` source block (ERPNext preset) with `settings` (indented four spaces).
fn erpnext_source(erp: &FakeErp, secret_env: &str, settings: &str) -> String {
    let state = Stack::from_env().database;
    format!(
        r#"  erp:
    type: rest_poll
    preset: erpnext
    url: {url}
    auth:
      api_key: {{ env: TEST_ERPNEXT_KEY }}
      api_secret: {{ env: {secret_env} }}
    state_database: {state}
    source_system: ERPNext
{settings}
    resources:
      items:
        doctype: Item
        filters: [["disabled", "=", 0]]
        topic: catalog.update
        fields:
          group_id: name
          group_name: item_name
          variants[0].sku: name
          variants[0].selling_price: standard_rate
        occurred_at: modified
        on_delete: skip
      stock:
        doctype: Bin
        key: [item_code, warehouse]
        topic: inventory.change
        fields:
          sku: item_code
          location_code: warehouse
          new_quantity: actual_qty
          allocated_qty: reserved_qty
          change_reason: {{ const: ERP_POLL }}
        occurred_at: modified
        on_delete: {{ set: {{ new_quantity: 0, change_reason: DELETED }} }}"#,
        url = erp.url,
    )
}

fn body(source: &str) -> String {
    format!(
        "topics:\n  catalog.update: {{ partitions: 2 }}\n  inventory.change: {{ partitions: 2 }}\nsources:\n{source}\n"
    )
}

/// `items` items with stock in three warehouses.
fn stock_erp(erp: &FakeErp, items: usize) {
    let docs = (0..items)
        .map(|i| {
            json!({"name": format!("ITEM-{i:05}"), "item_name": format!("Item {i}"),
                "standard_rate": 12.5, "disabled": 0})
        })
        .chain([
            json!({"name": "ITEM-OLD", "item_name": "Retired", "standard_rate": 1, "disabled": 1}),
        ])
        .collect();
    erp.put("Item", docs);
    let bins = (0..items)
        .flat_map(|i| {
            ["WH-1", "WH-2", "WH-3"].map(|w| {
                json!({"name": format!("BIN-{i:05}-{w}"), "item_code": format!("ITEM-{i:05}"),
                    "warehouse": w, "actual_qty": i, "reserved_qty": 0.5})
            })
        })
        .collect();
    erp.put("Bin", bins);
}

async fn catalog(brokers: &str, pipeline: &Pipeline) -> Vec<CatalogUpdate> {
    let codec = Codec::new(&Stack::from_env().registry).expect("codec");
    let mut out = Vec::new();
    for record in read_topic(brokers, &pipeline.topic("catalog.update")) {
        out.push(codec.decode(&record.payload).await.expect("decodes"));
    }
    out
}

async fn stock(brokers: &str, pipeline: &Pipeline) -> Vec<Option<InventoryChange>> {
    let codec = Codec::new(&Stack::from_env().registry).expect("codec");
    let mut out = Vec::new();
    for record in read_topic(brokers, &pipeline.topic("inventory.change")) {
        if record.payload.is_empty() {
            out.push(None);
        } else {
            out.push(Some(codec.decode(&record.payload).await.expect("decodes")));
        }
    }
    out
}

async fn wait_size(
    brokers: &str,
    pipeline: &Pipeline,
    logical: &str,
    at_least: i64,
    within: Duration,
) -> i64 {
    let topic = pipeline.topic(logical);
    let until = Instant::now() + within;
    loop {
        let size = topic_size(brokers, &topic);
        if size >= at_least {
            return size;
        }
        assert!(
            Instant::now() < until,
            "{logical}: {size} records, expected {at_least}; log:\n{}",
            pipeline.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn items_and_stock_arrive_in_pages_and_only_real_changes_are_published() {
    let erp = FakeErp::start().await;
    stock_erp(&erp, 300);
    let (_broker, options) = TopologyOptions::own_broker();
    let source = erpnext_source(
        &erp,
        "TEST_ERPNEXT_SECRET",
        "    interval: 300ms\n    look_back: 0s\n    page_size: 100\n    deletion_check: 1s",
    );
    let mut pipeline = Pipeline::custom(&options, &body(&source));
    pipeline.start().await;

    wait_size(
        &options.brokers,
        &pipeline,
        "catalog.update",
        300,
        Duration::from_secs(60),
    )
    .await;
    wait_size(
        &options.brokers,
        &pipeline,
        "inventory.change",
        900,
        Duration::from_secs(60),
    )
    .await;
    let items = catalog(&options.brokers, &pipeline).await;
    assert_eq!(
        items.len(),
        300,
        "one event per active item, the disabled one filtered"
    );
    let seven = items
        .iter()
        .find(|i| i.group_id == "ITEM-00007")
        .expect("ITEM-00007");
    assert_eq!(seven.group_name, "Item 7");
    assert_eq!(
        seven.variants[0].selling_price,
        Some("12.50".parse().expect("decimal"))
    );
    let bins = stock(&options.brokers, &pipeline).await;
    let bin = bins
        .iter()
        .flatten()
        .find(|c| c.sku == "ITEM-00042" && c.location_code == "WH-2")
        .expect("bin");
    assert_eq!(bin.new_quantity, Some(42.into()));
    assert_eq!(bin.allocated_qty, Some("0.5".parse().expect("decimal")));
    assert_eq!(bin.change_reason.as_deref(), Some("ERP_POLL"));

    // Polls go on (every 300 ms); nothing unchanged is published again, and a change to a
    // field the mapping does not read moves `modified` without publishing.
    erp.update("Item", "ITEM-00003", json!({"description": "not mapped"}));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        topic_size(&options.brokers, &pipeline.topic("catalog.update")),
        300
    );
    assert_eq!(
        topic_size(&options.brokers, &pipeline.topic("inventory.change")),
        900
    );
    let metrics = pipeline.metrics().await;
    assert!(
        metric(
            &metrics,
            "erpstream_rest_poll_records_total",
            &["outcome=\"unchanged\""]
        ) >= 1.0,
        "{metrics}"
    );

    // A real change is published once.
    erp.update("Bin", "BIN-00005-WH-2", json!({"actual_qty": 77}));
    erp.update("Item", "ITEM-00004", json!({"item_name": "Renamed"}));
    wait_size(
        &options.brokers,
        &pipeline,
        "inventory.change",
        901,
        Duration::from_secs(20),
    )
    .await;
    wait_size(
        &options.brokers,
        &pipeline,
        "catalog.update",
        301,
        Duration::from_secs(20),
    )
    .await;

    // A record written with exactly the cursor's change time (same second, same microsecond)
    // after the cursor moved there is still read: pages continue with >=, not >.
    let cursor = erp.tick();
    erp.update(
        "Bin",
        "BIN-00006-WH-1",
        json!({"actual_qty": 66, "modified": cursor}),
    );
    wait_size(
        &options.brokers,
        &pipeline,
        "inventory.change",
        902,
        Duration::from_secs(20),
    )
    .await;
    erp.put(
        "Bin",
        vec![
            json!({"name": "BIN-LATE", "item_code": "ITEM-LATE", "warehouse": "WH-1",
            "actual_qty": 5, "reserved_qty": 0, "modified": cursor}),
        ],
    );
    wait_size(
        &options.brokers,
        &pipeline,
        "inventory.change",
        903,
        Duration::from_secs(20),
    )
    .await;

    // A deleted Bin is found by the key-set check and becomes its on_delete event.
    erp.delete("Bin", "BIN-00009-WH-3");
    wait_size(
        &options.brokers,
        &pipeline,
        "inventory.change",
        904,
        Duration::from_secs(20),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let changes: Vec<InventoryChange> = stock(&options.brokers, &pipeline)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(changes.len(), 904, "nothing else published");
    let last_of = |sku: &str, location: &str| {
        changes
            .iter()
            .rev()
            .find(|c| c.sku == sku && c.location_code == location)
            .cloned()
            .expect("change")
    };
    assert_eq!(last_of("ITEM-00005", "WH-2").new_quantity, Some(77.into()));
    assert_eq!(last_of("ITEM-00006", "WH-1").new_quantity, Some(66.into()));
    assert_eq!(last_of("ITEM-LATE", "WH-1").new_quantity, Some(5.into()));
    let deleted = last_of("ITEM-00009", "WH-3");
    assert_eq!(deleted.new_quantity, Some(0.into()));
    assert_eq!(deleted.change_reason.as_deref(), Some("DELETED"));
    let dlq = pipeline.topic("inventory.change") + ".dlq";
    assert_eq!(
        topic_size(&options.brokers, &dlq),
        0,
        "nothing dead-lettered"
    );
    let items = catalog(&options.brokers, &pipeline).await;
    let renamed: Vec<&str> = items
        .iter()
        .filter(|c| c.group_id == "ITEM-00004")
        .map(|c| c.group_name.as_str())
        .collect();
    assert_eq!(renamed, ["Item 4", "Renamed"]);
    pipeline.terminate();
}

#[tokio::test]
async fn a_restart_mid_poll_skips_nothing_and_republishes_nothing_unchanged() {
    let erp = FakeErp::start().await;
    stock_erp(&erp, 1000);
    // Slow pages, so the poll is mid-way when the process dies.
    erp.fail_always(Some(Fault::Delay(Duration::from_millis(150))));
    let (_broker, options) = TopologyOptions::own_broker();
    let source = erpnext_source(
        &erp,
        "TEST_ERPNEXT_SECRET",
        "    interval: 500ms\n    look_back: 10s\n    page_size: 50\n    deletion_check: 0s",
    );
    let mut pipeline = Pipeline::custom(&options, &body(&source));
    pipeline.start().await;
    let catalog_topic = pipeline.topic("catalog.update");
    let until = Instant::now() + Duration::from_secs(60);
    while topic_size(&options.brokers, &catalog_topic) < 350 {
        assert!(Instant::now() < until, "{}", pipeline.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pipeline.kill();
    let at_kill = topic_size(&options.brokers, &catalog_topic);
    assert!(at_kill < 1000, "killed mid-poll ({at_kill} of 1000 items)");
    erp.fail_always(None);
    pipeline.start().await;
    wait_size(
        &options.brokers,
        &pipeline,
        "catalog.update",
        1000,
        Duration::from_secs(60),
    )
    .await;
    wait_size(
        &options.brokers,
        &pipeline,
        "inventory.change",
        3000,
        Duration::from_secs(90),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let records = read_topic(&options.brokers, &catalog_topic);
    let codec = Codec::new(&options.registry).expect("codec");
    let mut keys_by_item: HashMap<String, HashSet<String>> = HashMap::new();
    for record in &records {
        let event: CatalogUpdate = codec.decode(&record.payload).await.expect("decodes");
        keys_by_item
            .entry(event.group_id)
            .or_default()
            .insert(event.idempotency_key);
    }
    assert_eq!(keys_by_item.len(), 1000, "every item arrived");
    assert!(
        keys_by_item.values().all(|keys| keys.len() == 1),
        "a record published twice carries the same idempotency key"
    );
    // Repeats are bounded by the page in flight at the kill.
    let repeats = records.len() - 1000;
    assert!(
        repeats <= 50,
        "{repeats} records repeated after the restart"
    );
    // Later polls re-read the look-back window and publish nothing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        topic_size(&options.brokers, &catalog_topic),
        records.len() as i64
    );
    pipeline.terminate();
}

#[tokio::test]
async fn bad_credentials_429_storms_and_a_failing_erp_are_reported_and_recovered_from() {
    let erp = FakeErp::start().await;
    stock_erp(&erp, 20);
    erp.accept_token(erpnext::API_KEY, "rotated-secret");
    let (_broker, options) = TopologyOptions::own_broker();
    let source = erpnext_source(
        &erp,
        "TEST_ERPNEXT_SECRET",
        "    interval: 200ms\n    page_size: 50\n    deletion_check: 0s\n    retry: { max_attempts: 3, initial_backoff: 50ms, max_backoff: 2s }\n    circuit: { failures: 2, open_for: 1s }",
    );
    let mut pipeline = Pipeline::custom(&options, &body(&source));
    pipeline.start_unready().await;

    // Wrong credentials: the circuit opens; not ready, said so in the log and the metrics,
    // nothing published.
    let until = Instant::now() + Duration::from_secs(20);
    while metric(
        &pipeline.metrics().await,
        "erpstream_rest_poll_circuit_open",
        &[],
    ) != 1.0
    {
        assert!(Instant::now() < until, "{}", pipeline.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, body) = pipeline.readyz().await;
    assert_eq!(status, 503);
    assert_eq!(body["not_ready"], json!(["erp"]));
    let log = pipeline.log_text();
    assert!(
        log.contains("ERPNext refused the credentials (401)"),
        "{log}"
    );
    let metrics = pipeline.metrics().await;
    assert!(
        metric(
            &metrics,
            "erpstream_rest_poll_requests_total",
            &["status=\"401\""]
        ) >= 1.0
    );
    assert_eq!(
        topic_size(&options.brokers, &pipeline.topic("catalog.update")),
        0
    );

    // The ERP accepts the key again (say, re-enabled): the source recovers by itself.
    erp.accept_token(erpnext::API_KEY, erpnext::API_SECRET);
    wait_size(
        &options.brokers,
        &pipeline,
        "catalog.update",
        20,
        Duration::from_secs(20),
    )
    .await;
    let (status, _) = pipeline.readyz().await;
    assert_eq!(status, 200);

    // A 429 storm (Retry-After: 1) for 1.5 s: requests wait as told instead of hammering
    // (two resources, about one attempt each per second), and the change still arrives.
    erp.update(
        "Item",
        "ITEM-00001",
        json!({"item_name": "After the storm"}),
    );
    let (before_storm, _) = erp.calls();
    erp.fail_always(Some(Fault::Status(429, Some(1))));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    erp.fail_always(None);
    let (after_storm, _) = erp.calls();
    assert!(
        after_storm - before_storm <= 6,
        "{} requests in a 1.5 s storm with Retry-After: 1",
        after_storm - before_storm
    );
    wait_size(
        &options.brokers,
        &pipeline,
        "catalog.update",
        21,
        Duration::from_secs(20),
    )
    .await;
    let metrics = pipeline.metrics().await;
    assert!(
        metric(
            &metrics,
            "erpstream_rest_poll_requests_total",
            &["status=\"429\""]
        ) >= 2.0
    );
    assert!(
        metric(
            &metrics,
            "erpstream_component_retries_total",
            &["component_id=\"erp\""]
        ) >= 1.0
    );

    // An ERP that answers 500 to everything opens the circuit: not ready, few calls.
    erp.fail_always(Some(Fault::Status(500, None)));
    let until = Instant::now() + Duration::from_secs(20);
    while pipeline.readyz().await.0 != 503 {
        assert!(Instant::now() < until, "{}", pipeline.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (calls_open, _) = erp.calls();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (calls_later, _) = erp.calls();
    assert!(
        calls_later - calls_open <= 4,
        "an open circuit tests the ERP about once per open_for, not {} calls in 3 s",
        calls_later - calls_open
    );
    assert!(pipeline.log_text().contains("circuit open"));
    let metrics = pipeline.metrics().await;
    assert_eq!(
        metric(&metrics, "erpstream_rest_poll_circuit_open", &[]),
        1.0
    );
    assert!(
        metric(
            &metrics,
            "erpstream_rest_poll_requests_total",
            &["status=\"500\""]
        ) >= 3.0
    );

    // It heals; the source closes the circuit and carries on.
    erp.fail_always(None);
    erp.update(
        "Item",
        "ITEM-00002",
        json!({"item_name": "After the outage"}),
    );
    wait_size(
        &options.brokers,
        &pipeline,
        "catalog.update",
        22,
        Duration::from_secs(20),
    )
    .await;
    let until = Instant::now() + Duration::from_secs(10);
    while pipeline.readyz().await.0 != 200 {
        assert!(Instant::now() < until, "{}", pipeline.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(pipeline.log_text().contains("circuit closed"));
    pipeline.terminate();
}

#[tokio::test]
async fn an_odata_baq_is_paged_with_top_and_skip_and_mapped_with_transforms() {
    let erp = FakeErp::start().await;
    let start = chrono::Utc::now() - chrono::Duration::hours(1);
    // The first 100 rows share one change time (a bulk import): whole pages of it are
    // paged past with $skip; the rest change ten per second.
    let changed_at = |i: i64| if i < 100 { 0 } else { i / 10 };
    let rows: Vec<Value> = (0..150)
        .map(|i| {
            json!({"name": format!("r{i}"), "PartNum": format!("FG-{i:04}"), "Warehouse": "MAIN",
                "BinNum": format!("B{}", i % 4), "OnhandGrams": i * 1000 + 250,
                "ChangeDate": (start + chrono::Duration::seconds(changed_at(i))).to_rfc3339()})
        })
        .collect();
    erp.put("Inventory_Snapshot", rows);
    let (_broker, options) = TopologyOptions::own_broker();
    let state = Stack::from_env().database;
    let source = format!(
        r#"  kinetic:
    type: rest_poll
    preset: odata
    url: {url}
    company: EPIC06
    auth:
      api_key: {{ env: TEST_ERPNEXT_KEY }}
      username: {{ env: TEST_ODATA_USER }}
      password: {{ env: TEST_ODATA_PASSWORD }}
    state_database: {state}
    source_system: EpicorKinetic
    interval: 300ms
    page_size: 40
    resources:
      inventory:
        baq: Inventory_Snapshot
        filters: "Warehouse eq 'MAIN'"
        key: [PartNum, Warehouse, BinNum]
        changed_field: ChangeDate
        topic: inventory.change
        fields:
          sku: PartNum
          location_code: {{ concat: [Warehouse, BinNum], separator: "/" }}
          new_quantity: {{ field: OnhandGrams, scale: 0.001 }}
        occurred_at: ChangeDate"#,
        url = erp.url,
    );
    let mut pipeline = Pipeline::custom(&options, &body(&source));
    pipeline.start().await;
    wait_size(
        &options.brokers,
        &pipeline,
        "inventory.change",
        150,
        Duration::from_secs(30),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let changes: Vec<InventoryChange> = stock(&options.brokers, &pipeline)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(changes.len(), 150);
    let skus: HashSet<&str> = changes.iter().map(|c| c.sku.as_str()).collect();
    assert_eq!(skus.len(), 150, "every row once");
    let one = changes
        .iter()
        .find(|c| c.sku == "FG-0123")
        .expect("FG-0123");
    assert_eq!(one.location_code, "MAIN/B3");
    assert_eq!(one.new_quantity, Some("123.25".parse().expect("decimal")));
    assert_eq!(one.source_system, "EpicorKinetic");
    assert_eq!(
        one.occurred_at,
        (start + chrono::Duration::seconds(12)).timestamp_millis()
    );
    pipeline.terminate();
}

#[test]
fn validate_names_every_rest_poll_mistake_by_its_path() {
    let dir = std::env::temp_dir().join(unique("validate-rest-"));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("broken.yaml");
    std::fs::write(
        &file,
        r#"
app_id: demo
kafka: { brokers: "127.0.0.1:9092" }
registry: { url: "http://127.0.0.1:8081" }
topics:
  inventory.change: { partitions: 3 }
  inventory.available: { partitions: 3 }
sources:
  kinetic:
    type: rest_poll
    preset: odata
    url: "kinetic.example.com"
    auth: { api_key: { env: K } }
    state_database: postgres://localhost/erpstream
    page_size: 0
    resources:
      stock:
        doctype: PartBin
        filters: [["Plant", "=", "MfgSys"]]
        key: [PartNum]
        changed_field: ChangeDate
        topic: inventory.change
        fields:
          sku: PartNum
          location_code: { field: Warehouse, scale: 2 }
          new_quantity: { field: OnHand, bucket: month }
          colour: Colour
      orders:
        baq: Orders
        changed_field: ChangeDate
        topic: inventory.available
        fields: { sku: PartNum }
"#,
    )
    .expect("write");
    let output = std::process::Command::new(binary())
        .arg("validate")
        .arg(&file)
        .output()
        .expect("run validate");
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    for path in [
        "sources.kinetic.url",
        "sources.kinetic.auth",
        "sources.kinetic.company",
        "sources.kinetic.page_size",
        "sources.kinetic.resources.stock.baq",
        "sources.kinetic.resources.stock.filters",
        "sources.kinetic.resources.stock.fields.location_code",
        "sources.kinetic.resources.stock.fields.new_quantity",
        "sources.kinetic.resources.stock.fields.colour",
        "sources.kinetic.resources.orders.key",
        "sources.kinetic.resources.orders.topic",
    ] {
        assert!(
            text.contains(&format!("{path}:")),
            "missing {path} in:\n{text}"
        );
    }
}

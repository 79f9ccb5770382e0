//! End-to-end: the data team's tools (`tail`, `replay`, `reconcile`, `dlq`) against a running
//! pipeline, on the local stack.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use erpstream_e2e::*;
use erpstream_schemas::{Codec, Event, InventoryChange};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;

const MINUTE: i64 = 60_000;

fn rfc3339(millis: i64) -> String {
    chrono::DateTime::from_timestamp_millis(millis)
        .expect("time")
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// An absolute stock record stamped `at` (ERP time and record timestamp alike).
fn stock(sku: &str, location: &str, quantity: &str, at: i64) -> InventoryChange {
    InventoryChange {
        event_id: uuid::Uuid::new_v4().to_string(),
        idempotency_key: format!("test:{}", uuid::Uuid::new_v4()),
        source_system: "ERP".into(),
        source: "test".into(),
        occurred_at: at,
        ingested_at: at,
        sku: sku.into(),
        location_code: location.into(),
        new_quantity: Some(quantity.parse().expect("decimal")),
        allocated_qty: None,
        in_transit_qty: None,
        quantity_change: None,
        change_reason: Some("RECEIPT".into()),
        reference_id: None,
    }
}

/// Produces `events` to `topic`, each with its `occurred_at` as the record timestamp.
async fn produce_stamped(topic: &str, events: &[InventoryChange]) {
    let stack = Stack::from_env();
    let codec = Codec::new(&stack.registry).expect("codec");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &stack.brokers)
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let mut pending = Vec::new();
    for event in events {
        let payload = codec.encode(topic, event).await.expect("encode");
        let producer = producer.clone();
        let (topic, key, at) = (
            topic.to_string(),
            event.key().to_string(),
            event.occurred_at,
        );
        pending.push(async move {
            producer
                .send(
                    FutureRecord::to(&topic)
                        .key(&key)
                        .payload(&payload)
                        .timestamp(at),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)
                .expect("produced");
        });
    }
    futures::future::join_all(pending).await;
}

fn read_json(path: &std::path::Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).expect("read report")).expect("json report")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_hour_holds_exactly_its_records_and_shadow_mode_sends_nothing() {
    let storefront = Storefront::start().await;
    let mut pipeline = Pipeline::configure(&TopologyOptions::new(&storefront.url));
    pipeline.start().await;
    let topic = pipeline.topic("inventory.change");

    // Four hours of ERP stock, one record a minute, 20 skus at 2 locations.
    let now = erpstream_schemas::now_millis();
    let start = now - 4 * 60 * MINUTE;
    let events: Vec<InventoryChange> = (0..240)
        .map(|i| {
            let sku = format!("SKU-{:02}", i % 20);
            let location = if i % 40 < 20 { "WH-A" } else { "WH-B" };
            stock(
                &sku,
                location,
                &format!("{}.250", 100 + i),
                start + i * MINUTE,
            )
        })
        .collect();
    produce_stamped(&topic, &events).await;

    // The second hour, [start + 1h, start + 2h): exactly minutes 60..119.
    let dir = std::env::temp_dir().join(unique("replay-"));
    std::fs::create_dir_all(&dir).expect("dir");
    let out = dir.join("hour.jsonl");
    let report = dir.join("hour.json");
    let from = rfc3339(start + 60 * MINUTE);
    let to = rfc3339(start + 120 * MINUTE);
    let run = pipeline.tool(&[
        "replay",
        "--topic",
        "inventory.change",
        "--from",
        &from,
        "--to",
        &to,
        "--into",
        "file",
        "--out",
        out.to_str().expect("path"),
        "--report",
        report.to_str().expect("path"),
    ]);
    assert!(run.success, "replay failed: {}", run.stderr);
    let replayed: BTreeSet<String> = std::fs::read_to_string(&out)
        .expect("replay file")
        .lines()
        .map(|l| {
            let record: Value = serde_json::from_str(l).expect("json line");
            record["value"]["event_id"]
                .as_str()
                .expect("event_id")
                .to_string()
        })
        .collect();
    let expected: BTreeSet<String> = events[60..120].iter().map(|e| e.event_id.clone()).collect();
    assert_eq!(
        replayed, expected,
        "the window's records, no more, no fewer"
    );
    let summary = read_json(&report);
    assert_eq!(summary["records"], 60);
    assert_eq!(summary["keys"], 20);
    assert!(
        run.stderr.contains("replayed 60 records (20 keys)"),
        "{}",
        run.stderr
    );

    // tail: one key's records as JSON lines, quantities exact.
    let tail = pipeline
        .tool(&[
            "tail",
            "inventory.change",
            "--offset",
            "0",
            "--no-follow",
            "--key",
            "SKU-07",
        ])
        .json_lines();
    assert_eq!(tail.len(), 12);
    assert!(tail.iter().all(|r| r["key"] == "SKU-07"));
    assert_eq!(tail[0]["value"]["new_quantity"].to_string(), "107.250");
    let limited = pipeline
        .tool(&[
            "tail",
            "inventory.change",
            "--from",
            &from,
            "--no-follow",
            "--limit",
            "3",
            "--headers",
        ])
        .json_lines();
    assert_eq!(limited.len(), 3);
    assert!(limited[0]["headers"].is_object());

    // The pipeline delivers every key's newest figure to the storefront; then it is quiet.
    wait_for("every key delivered", Duration::from_secs(60), || {
        let keys: BTreeSet<(String, String)> = storefront
            .deliveries()
            .iter()
            .filter(|d| d.status == 200)
            .map(|d| {
                let data = &d.body["data"];
                (data["sku"].to_string(), data["location_code"].to_string())
            })
            .collect();
        (keys.len() == 40).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = storefront.deliveries().len();

    // Shadow mode: the storefront sink computes its requests and sends none.
    let shadow = dir.join("shadow.jsonl");
    let shadow_report = dir.join("shadow.json");
    let run = pipeline.tool(&[
        "replay",
        "--topic",
        "inventory.available",
        "--from",
        &rfc3339(now - MINUTE),
        "--into",
        "storefront",
        "--out",
        shadow.to_str().expect("path"),
        "--report",
        shadow_report.to_str().expect("path"),
    ]);
    assert!(run.success, "shadow replay failed: {}", run.stderr);
    let summary = read_json(&shadow_report);
    assert_eq!(summary["mode"], "shadow");
    let computed = std::fs::read_to_string(&shadow)
        .expect("shadow file")
        .lines()
        .count();
    assert!(
        computed >= 40,
        "one request per sku and location at least: {computed}"
    );
    assert_eq!(summary["computed"], computed);
    let first: Value = serde_json::from_str(
        std::fs::read_to_string(&shadow)
            .expect("shadow")
            .lines()
            .next()
            .expect("a line"),
    )
    .expect("json");
    assert_eq!(first["body"]["event_type"], "inventory.change");

    // --live re-publishes the newest record of every key; the sink's version guard has
    // delivered each already, so the storefront sees nothing new either.
    let live_report = dir.join("live.json");
    let run = pipeline.tool(&[
        "replay",
        "--topic",
        "inventory.available",
        "--from",
        &rfc3339(now - MINUTE),
        "--into",
        "storefront",
        "--live",
        "--report",
        live_report.to_str().expect("path"),
    ]);
    assert!(run.success, "live replay failed: {}", run.stderr);
    let summary = read_json(&live_report);
    assert_eq!(summary["republished"], 20, "{summary}");
    assert_eq!(
        summary["superseded"].as_u64().expect("n") + 20,
        summary["records"].as_u64().expect("n"),
        "{summary}"
    );
    wait_for(
        "the replay on the topic, marked",
        Duration::from_secs(30),
        || {
            let tail = pipeline
                .tool(&[
                    "tail",
                    "inventory.available",
                    "--offset",
                    "0",
                    "--no-follow",
                    "--headers",
                ])
                .json_lines();
            let marked = tail
                .iter()
                .filter(|r| r["headers"]["erpstream.replay"].is_string())
                .count();
            (marked == 20).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        storefront.deliveries().len(),
        before,
        "neither shadow nor guarded live replay sent the storefront anything"
    );

    // Bad input is refused with the reason.
    let run = pipeline.tool(&[
        "replay",
        "--topic",
        "inventory.change",
        "--from",
        "soon",
        "--into",
        "stdout",
    ]);
    assert!(
        !run.success && run.stderr.contains("is not a time"),
        "{}",
        run.stderr
    );
    let run = pipeline.tool(&[
        "replay",
        "--topic",
        "inventory.change",
        "--from",
        "1h",
        "--into",
        "nowhere",
    ]);
    assert!(
        !run.success && run.stderr.contains("not stdout, file or a sink"),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_dead_lettered_by_a_storefront_outage_is_redriven_once_after_recovery() {
    let storefront = Storefront::start().await;
    let mut options = TopologyOptions::new(&storefront.url);
    options.max_attempts = 3;
    let mut pipeline = Pipeline::configure(&options);
    pipeline.start().await;

    storefront.fail_with(503);
    for (sku, quantity) in [("OUT-1", 7), ("OUT-2", 5)] {
        let body = inventory_body(sku, "WH-A", quantity, &rfc3339_now(0));
        let (status, _, _) = pipeline.post_webhook(&body, Some(ERP_SECRET)).await;
        assert_eq!(status, 202);
    }
    let listed = wait_for(
        "both records dead-lettered",
        Duration::from_secs(60),
        || {
            let entries = pipeline
                .tool(&["dlq", "list", "--topic", "inventory.available", "--json"])
                .json_lines();
            (entries.len() == 2).then_some(entries)
        },
    )
    .await;
    for entry in &listed {
        assert_eq!(entry["error_type"], "retries_exhausted", "{entry}");
        assert_eq!(entry["source"], "storefront");
        assert_eq!(entry["attempts"], 3);
        assert_eq!(entry["state"], "pending");
        assert!(
            entry["error"].as_str().expect("error").contains("503"),
            "{entry}"
        );
    }
    let id = listed[0]["id"].as_str().expect("id");
    let shown: Value =
        serde_json::from_str(&pipeline.tool(&["dlq", "show", id]).stdout).expect("show json");
    assert_eq!(shown["record"]["value"]["sku"], listed[0]["key"]);

    // The storefront recovers; OUT-2 moves on meanwhile, so its dead letter is outdated.
    storefront.fail_with(0);
    let body = inventory_body("OUT-2", "WH-A", 9, &rfc3339_now(0));
    assert_eq!(pipeline.post_webhook(&body, Some(ERP_SECRET)).await.0, 202);
    wait_for(
        "OUT-2's newer figure delivered",
        Duration::from_secs(30),
        || (storefront.stock_of("OUT-2").len() == 1).then_some(()),
    )
    .await;
    assert!(storefront.stock_of("OUT-1").is_empty());

    let run = pipeline.tool(&["dlq", "redrive", "--topic", "inventory.available"]);
    assert!(run.success, "redrive failed: {}", run.stderr);
    let summary: Value = serde_json::from_str(&run.stdout).expect("summary");
    assert_eq!(summary["matched"], 2, "{summary}");
    assert_eq!(summary["redriven"], 1, "{summary}");
    assert_eq!(summary["superseded"], 1, "{summary}");
    let delivered = wait_for(
        "OUT-1 delivered after the redrive",
        Duration::from_secs(30),
        || {
            let stock = storefront.stock_of("OUT-1");
            (!stock.is_empty()).then_some(stock)
        },
    )
    .await;
    assert_eq!(delivered[0]["new_quantity"], 7);

    // Nothing left to redrive; a second redrive sends nothing; each figure arrived once.
    let again = pipeline.tool(&["dlq", "redrive", "--topic", "inventory.available"]);
    let summary: Value = serde_json::from_str(&again.stdout).expect("summary");
    assert_eq!(summary["matched"], 0, "{summary}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(storefront.stock_of("OUT-1").len(), 1, "delivered once");
    let out2: Vec<i64> = storefront
        .stock_of("OUT-2")
        .iter()
        .map(|d| d["new_quantity"].as_i64().expect("qty"))
        .collect();
    assert_eq!(out2, vec![9], "the outdated 5 never followed the 9");
    let all = pipeline
        .tool(&[
            "dlq",
            "list",
            "--topic",
            "inventory.available",
            "--all",
            "--json",
        ])
        .json_lines();
    let states: HashMap<String, String> = all
        .iter()
        .map(|e| {
            (
                e["key"].as_str().expect("key").into(),
                e["state"].as_str().expect("s").into(),
            )
        })
        .collect();
    assert_eq!(states["OUT-1"], "redriven");
    assert_eq!(states["OUT-2"], "superseded");
    assert!(
        pipeline
            .tool(&["dlq", "list", "--topic", "inventory.available", "--json"])
            .stdout
            .trim()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_reports_each_difference_with_its_last_event_and_repairs_them() {
    let storefront = Storefront::start().await;
    let mut pipeline = Pipeline::configure(&TopologyOptions::new(&storefront.url));
    pipeline.start().await;
    let topic = pipeline.topic("inventory.change");
    let now = erpstream_schemas::now_millis();
    let mut events = Vec::new();
    for sku in ["R-1", "R-2", "R-3", "R-4"] {
        for location in ["WH-A", "WH-B"] {
            events.push(stock(sku, location, "10", now - 10 * MINUTE));
        }
    }
    produce_stamped(&topic, &events).await;
    let until = std::time::Instant::now() + Duration::from_secs(60);
    while pipeline.snapshot("").await.1.as_array().map_or(0, Vec::len) < 4 {
        assert!(
            std::time::Instant::now() < until,
            "stock not in the state after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dir = std::env::temp_dir().join(unique("reconcile-"));
    std::fs::create_dir_all(&dir).expect("dir");
    // The ERP's Bin export: R-2/WH-B differs, R-5/WH-A is missing from erpstream, R-4/WH-B
    // is not in the ERP (extra); R-6 with 0 is in step with erpstream not knowing it.
    let picture = dir.join("bins.csv");
    std::fs::write(
        &picture,
        "Item Code,Warehouse,Actual Qty\nR-1,WH-A,10\nR-1,WH-B,10.000\nR-2,WH-A,10\nR-2,WH-B,12.5\n\
         R-3,WH-A,10\nR-3,WH-B,10\nR-4,WH-A,10\nR-5,WH-A,3\nR-6,WH-A,0\n",
    )
    .expect("write picture");
    // The planning database holds the ERP's figures but one (R-3/WH-B 9).
    let (planning_url, mut planning) = planning_database().await;
    erpstream_connectors::planning::migrate(&mut planning)
        .await
        .expect("migrate");
    for (sku, location, quantity) in [
        ("R-1", "WH-A", "10"),
        ("R-1", "WH-B", "10"),
        ("R-2", "WH-A", "10"),
        ("R-2", "WH-B", "12.5"),
        ("R-3", "WH-A", "10"),
        ("R-3", "WH-B", "9"),
        ("R-4", "WH-A", "10"),
        ("R-5", "WH-A", "3"),
    ] {
        planning
            .execute(
                "INSERT INTO planning.inventory (sku, location, on_hand_qty, updated_at, source_system, source_version)
                 VALUES ($1, $2, $3::text::numeric, now(), 'ERP', 1)",
                &[&sku, &location, &quantity],
            )
            .await
            .expect("insert");
    }
    // The storefront's view: what it was sent, newest per key, with R-1/WH-A mis-applied.
    wait_for("every key delivered", Duration::from_secs(30), || {
        let keys: BTreeSet<String> = storefront
            .deliveries()
            .iter()
            .map(|d| {
                format!(
                    "{}|{}",
                    d.body["data"]["sku"], d.body["data"]["location_code"]
                )
            })
            .collect();
        (keys.len() == 8).then_some(())
    })
    .await;
    let mut shown: HashMap<(String, String), Value> = HashMap::new();
    for delivery in storefront.deliveries() {
        let data = &delivery.body["data"];
        let key = (
            data["sku"].as_str().expect("sku").to_string(),
            data["location_code"].as_str().expect("loc").to_string(),
        );
        shown.insert(key, data["new_quantity"].clone());
    }
    shown.insert(("R-1".into(), "WH-A".into()), Value::from(11));
    let view: Vec<Value> = shown
        .into_iter()
        .map(|((sku, location), qty)| serde_json::json!({"sku": sku, "location": location, "qty": qty}))
        .collect();
    let view_file = dir.join("storefront.json");
    std::fs::write(&view_file, serde_json::to_vec(&view).expect("json")).expect("write view");

    let report = dir.join("report.json");
    let run = pipeline.tool(&[
        "reconcile",
        "--against",
        picture.to_str().expect("path"),
        "--as-of",
        &rfc3339(now),
        "--state",
        &format!("{}/api/inventory/snapshot?detail=true", pipeline.url),
        "--planning",
        &planning_url,
        "--storefront",
        view_file.to_str().expect("path"),
        "--report",
        report.to_str().expect("path"),
    ]);
    assert!(run.success, "reconcile failed: {}", run.stderr);
    let diff = read_json(&report);
    let counts = &diff["state"]["counts"];
    assert_eq!(counts["missing"], 1, "{diff}");
    assert_eq!(counts["extra"], 1, "{diff}");
    assert_eq!(counts["differing"], 1, "{diff}");
    assert_eq!(counts["matching"], 7, "{diff}");
    let missing = &diff["state"]["missing"][0];
    assert_eq!(
        (missing["sku"].as_str(), missing["location"].as_str()),
        (Some("R-5"), Some("WH-A"))
    );
    let extra = &diff["state"]["extra"][0];
    assert_eq!(
        (extra["sku"].as_str(), extra["location"].as_str()),
        (Some("R-4"), Some("WH-B"))
    );
    let differing = &diff["state"]["differing"][0];
    assert_eq!(differing["sku"], "R-2");
    assert_eq!(differing["external"].to_string(), "12.5");
    assert_eq!(differing["erpstream"].to_string(), "10");
    // The last event is the record that set the figure.
    let last = &differing["last_event"];
    assert_eq!(last["topic"], topic);
    let offset = last["offset"].as_i64().expect("offset");
    let partition = last["partition"].as_i64().expect("partition");
    let records = pipeline
        .tool(&[
            "tail",
            "inventory.change",
            "--offset",
            &offset.to_string(),
            "--no-follow",
        ])
        .json_lines();
    let record = records
        .iter()
        .find(|r| r["partition"] == partition && r["offset"] == offset)
        .expect("the last event");
    assert_eq!(record["value"]["sku"], "R-2");
    assert_eq!(record["value"]["location_code"], "WH-B");
    assert!(
        run.stderr.contains("1 missing, 1 extra, 1 differing"),
        "{}",
        run.stderr
    );
    let planning_diff = &diff["planning"];
    assert_eq!(planning_diff["counts"]["differing"], 1, "{planning_diff}");
    assert_eq!(
        planning_diff["counts"]["missing"].as_u64().expect("n")
            + planning_diff["counts"]["extra"].as_u64().expect("n"),
        0,
        "{planning_diff}"
    );
    assert_eq!(planning_diff["differing"][0]["sku"], "R-3");
    assert_eq!(planning_diff["differing"][0]["erpstream"].to_string(), "9");
    let storefront_diff = &diff["storefront"];
    assert_eq!(
        storefront_diff["counts"]["differing"], 1,
        "{storefront_diff}"
    );
    assert_eq!(
        storefront_diff["counts"]["matching"], 7,
        "{storefront_diff}"
    );
    assert_eq!(storefront_diff["differing"][0]["sku"], "R-1");
    assert_eq!(storefront_diff["differing"][0]["external"], 11);

    // --repair publishes one marked correction per difference; then the pictures agree.
    let run = pipeline.tool(&[
        "reconcile",
        "--against",
        picture.to_str().expect("path"),
        "--as-of",
        &rfc3339(now),
        "--repair",
        "--report",
        report.to_str().expect("path"),
    ]);
    assert!(run.success, "repair failed: {}", run.stderr);
    assert_eq!(read_json(&report)["repaired"], 3);
    wait_for(
        "the repaired state to match the picture",
        Duration::from_secs(30),
        || {
            let run = pipeline.tool(&[
                "reconcile",
                "--against",
                picture.to_str().expect("path"),
                "--fail-on-diff",
                "--report",
                report.to_str().expect("path"),
            ]);
            run.success.then_some(())
        },
    )
    .await;
    let repairs: Vec<Value> = pipeline
        .tool(&[
            "tail",
            "inventory.change",
            "--offset",
            "0",
            "--no-follow",
            "--headers",
        ])
        .json_lines()
        .into_iter()
        .filter(|r| r["headers"]["erpstream.repair"].is_string())
        .collect();
    assert_eq!(repairs.len(), 3);
    assert!(
        repairs
            .iter()
            .all(|r| r["value"]["change_reason"] == "RECONCILE")
    );

    // A picture without the columns is refused with the reason.
    std::fs::write(&picture, "code,amount\nR-1,3\n").expect("write");
    let run = pipeline.tool(&["reconcile", "--against", picture.to_str().expect("path")]);
    assert!(
        !run.success && run.stderr.contains("no sku column"),
        "{}",
        run.stderr
    );
}

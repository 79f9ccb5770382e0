//! End-to-end: ERP webhook → Avro on Kafka → inventory state → signed storefront webhook,
//! against the real local stack.

use std::time::Duration;

use erpstream_e2e::*;
use erpstream_schemas::{Codec, InventoryChange};

const LONG: Duration = Duration::from_secs(60);

fn options(storefront: &Storefront) -> TopologyOptions {
    TopologyOptions::new(&storefront.url)
}

async fn started(storefront: &Storefront) -> Pipeline {
    let mut pipeline = Pipeline::configure(&options(storefront));
    pipeline.start().await;
    pipeline
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_inventory_change_reaches_the_storefront_and_decodes_through_the_registry() {
    let storefront = Storefront::start().await;
    let pipeline = started(&storefront).await;
    let body = inventory_body("DRONE-X1-PRO-KIT", "WH-TECH-01", 14, "2024-01-20T10:05:00Z");
    let (status, _, reply) = pipeline.post_webhook(&body, Some(ERP_SECRET)).await;
    assert_eq!(status, 202, "{reply}");
    assert_eq!(reply["topic"], pipeline.topic("inventory.change"));
    assert!(
        reply["event_id"].as_str().is_some_and(|id| id.len() == 36),
        "{reply}"
    );
    assert!(
        reply["offset"].as_i64().is_some() && reply["partition"].as_i64().is_some(),
        "{reply}"
    );

    let delivered = wait_for("storefront delivery", LONG, || {
        storefront.stock_of("DRONE-X1-PRO-KIT").pop()
    })
    .await;
    assert_eq!(delivered["new_quantity"], 14);
    assert_eq!(delivered["location_code"], "WH-TECH-01");
    assert!(
        storefront.deliveries().iter().all(|d| d.signed),
        "every delivery carries a valid X-Signature"
    );

    let stack = Stack::from_env();
    let records = read_topic(&stack.brokers, &pipeline.topic("inventory.change"));
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(record.key, "DRONE-X1-PRO-KIT");
    assert_eq!(record.payload[0], 0, "Confluent wire format magic byte");
    assert!(
        record
            .headers
            .get("traceparent")
            .is_some_and(|t| t.starts_with("00-")),
        "{:?}",
        record.headers
    );
    let codec = Codec::new(&stack.registry).expect("codec");
    let event: InventoryChange = codec
        .decode(&record.payload)
        .await
        .expect("decodes through the registry");
    assert_eq!(
        event.new_quantity.map(|q| q.normalize().to_string()),
        Some("14".to_string())
    );
    assert_eq!(
        event.event_id,
        reply["event_id"].as_str().unwrap_or_default()
    );
    assert_eq!(event.occurred_at, 1_705_745_100_000);

    let metrics = pipeline.metrics().await;
    for series in [
        r#"erpstream_end_to_end_latency_seconds_count{component_id="storefront"} 1"#,
        r#"erpstream_component_sent_events_total{component_id="erp",component_type="erp_webhook"} 1"#,
        r#"erpstream_component_sent_events_total{component_id="storefront",component_type="storefront_webhook"} 1"#,
    ] {
        assert!(
            metrics.contains(series),
            "missing {series} in /metrics:\n{metrics}"
        );
    }
    let ready = reqwest::get(format!("{}/readyz", pipeline.url))
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repeated_webhook_is_delivered_once_even_across_a_restart() {
    let storefront = Storefront::start().await;
    let mut pipeline = started(&storefront).await;
    let body = inventory_body("DUP-1", "WH", 7, "2024-01-20T10:05:00Z");
    let (first, _, a) = pipeline.post_webhook(&body, Some(ERP_SECRET)).await;
    let (second, _, b) = pipeline.post_webhook(&body, Some(ERP_SECRET)).await;
    assert_eq!((first, second), (202, 202));
    assert_eq!(
        a["event_id"], b["event_id"],
        "a retry is answered like the first delivery"
    );
    wait_for("first delivery", LONG, || {
        storefront.stock_of("DUP-1").pop()
    })
    .await;

    // After a restart the in-process answer cache is gone: the repeat is published again
    // and must be dropped by the dedupe processor.
    pipeline.terminate();
    pipeline.start().await;
    let (third, _, _) = pipeline.post_webhook(&body, Some(ERP_SECRET)).await;
    assert_eq!(third, 202);
    pipeline
        .post_webhook(
            &inventory_body("DUP-SENTINEL", "WH", 1, "2024-01-20T10:06:00Z"),
            Some(ERP_SECRET),
        )
        .await;
    wait_for("sentinel delivery", LONG, || {
        storefront.stock_of("DUP-SENTINEL").pop()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        storefront.stock_of("DUP-1").len(),
        1,
        "{:?}",
        storefront.stock_of("DUP-1")
    );
    let stack = Stack::from_env();
    let published = read_topic(&stack.brokers, &pipeline.topic("inventory.change"));
    assert_eq!(
        published.iter().filter(|r| r.key == "DUP-1").count(),
        2,
        "the repeat after restart was published"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_are_refused_with_the_reason_and_nothing_is_published() {
    let storefront = Storefront::start().await;
    let pipeline = started(&storefront).await;
    let body = inventory_body("BAD-1", "WH", 1, "2024-01-20T10:05:00Z");

    let (status, _, reply) = pipeline.post_webhook(&body, Some("wrong-secret")).await;
    assert_eq!(status, 401, "{reply}");
    let (status, _, reply) = pipeline.post_webhook(&body, None).await;
    assert_eq!(status, 401, "{reply}");
    assert!(
        reply["reason"]
            .as_str()
            .is_some_and(|r| r.contains("missing signature")),
        "{reply}"
    );

    let (status, _, reply) = pipeline
        .post_webhook(b"{\"event_type\": ", Some(ERP_SECRET))
        .await;
    assert_eq!(status, 400, "{reply}");
    assert_eq!(reply["field"], "body");

    let missing_sku = br#"{"event_type":"inventory.change","timestamp":"2024-01-20T10:05:00Z","data":{"location_code":"WH","new_quantity":1}}"#;
    let (status, _, reply) = pipeline.post_webhook(missing_sku, Some(ERP_SECRET)).await;
    assert_eq!(status, 400, "{reply}");
    assert_eq!(reply["field"], "data.sku");
    assert_eq!(reply["reason"], "is required");

    let oversized = inventory_body(&"X".repeat(70 * 1024), "WH", 1, "2024-01-20T10:05:00Z");
    let (status, _, reply) = pipeline.post_webhook(&oversized, Some(ERP_SECRET)).await;
    assert_eq!(status, 413, "{reply}");

    // A rotated secret still verifies.
    let (status, _, _) = pipeline
        .post_webhook(
            &inventory_body("ROT-1", "WH", 1, "2024-01-20T10:05:00Z"),
            Some("rotated-out-secret"),
        )
        .await;
    assert_eq!(status, 202);

    let stack = Stack::from_env();
    let published = read_topic(&stack.brokers, &pipeline.topic("inventory.change"));
    assert_eq!(
        published.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
        vec!["ROT-1"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_older_quantity_posted_after_a_newer_one_never_reaches_the_storefront() {
    let storefront = Storefront::start().await;
    let pipeline = started(&storefront).await;
    let newer = inventory_body("ORDER-1", "WH", 10, "2024-01-20T10:10:00Z");
    let older = inventory_body("ORDER-1", "WH", 99, "2024-01-20T10:00:00Z");
    assert_eq!(pipeline.post_webhook(&newer, Some(ERP_SECRET)).await.0, 202);
    assert_eq!(
        pipeline.post_webhook(&older, Some(ERP_SECRET)).await.0,
        202,
        "a late ERP timestamp is never a reason to refuse"
    );
    pipeline
        .post_webhook(
            &inventory_body("ORDER-SENTINEL", "WH", 1, "2024-01-20T10:00:00Z"),
            Some(ERP_SECRET),
        )
        .await;
    wait_for("sentinel", LONG, || {
        storefront.stock_of("ORDER-SENTINEL").pop()
    })
    .await;
    wait_for("newer quantity", LONG, || {
        storefront.stock_of("ORDER-1").pop()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let quantities: Vec<i64> = storefront
        .stock_of("ORDER-1")
        .iter()
        .filter_map(|d| d["new_quantity"].as_i64())
        .collect();
    assert_eq!(quantities, vec![10]);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_between_receipt_and_delivery_delivers_everything_once() {
    let storefront = Storefront::start().await;
    let mut pipeline = started(&storefront).await;
    storefront.fail_with(503);
    let skus: Vec<String> = (0..20).map(|i| format!("KILL-{i:02}")).collect();
    for (i, sku) in skus.iter().enumerate() {
        let (status, _, reply) = pipeline
            .post_webhook(
                &inventory_body(sku, "WH", 100 + i as i64, "2024-01-20T10:05:00Z"),
                Some(ERP_SECRET),
            )
            .await;
        assert_eq!(status, 202, "{reply}");
    }
    // Deliveries are being attempted and refused: receipt done, delivery not.
    wait_for("delivery attempts", LONG, || {
        (storefront.deliveries().len() >= 5).then_some(())
    })
    .await;
    pipeline.kill();
    storefront.fail_with(0);
    pipeline.start().await;
    for (i, sku) in skus.iter().enumerate() {
        let delivered = wait_for(sku, LONG, || storefront.stock_of(sku).pop()).await;
        assert_eq!(delivered["new_quantity"], 100 + i as i64);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for sku in &skus {
        assert_eq!(
            storefront.stock_of(sku).len(),
            1,
            "{sku} delivered more than once"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn storefront_outage_resumes_in_order_and_a_permanent_failure_is_dead_lettered() {
    let storefront = Storefront::start().await;
    let mut options = options(&storefront);
    // 50 ms doubling to 500 ms: 8 attempts span about 2.3 s, longer than the outage below.
    options.max_attempts = 8;
    let mut pipeline = Pipeline::configure(&options);
    pipeline.start().await;

    // Outage: quantities keep coming; after recovery the storefront sees them in order and
    // ends on the newest.
    storefront.fail_with(500);
    for (i, minute) in ["01", "02", "03"].iter().enumerate() {
        let body = inventory_body(
            "OUTAGE-1",
            "WH",
            10 + i as i64,
            &format!("2024-01-20T10:{minute}:00Z"),
        );
        assert_eq!(pipeline.post_webhook(&body, Some(ERP_SECRET)).await.0, 202);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    storefront.fail_with(0);
    wait_for("newest quantity", LONG, || {
        storefront
            .stock_of("OUTAGE-1")
            .last()
            .filter(|d| d["new_quantity"] == 12)
            .cloned()
    })
    .await;
    let versions: Vec<i64> = storefront
        .stock_of("OUTAGE-1")
        .iter()
        .filter_map(|d| d["version"].as_i64())
        .collect();
    assert!(
        versions.windows(2).all(|w| w[0] < w[1]),
        "delivered out of order: {versions:?}"
    );

    // A storefront that always fails for one sku: the record ends in the DLQ.
    storefront.poison("POISON-1");
    assert_eq!(
        pipeline
            .post_webhook(
                &inventory_body("POISON-1", "WH", 5, "2024-01-20T10:05:00Z"),
                Some(ERP_SECRET)
            )
            .await
            .0,
        202
    );
    let stack = Stack::from_env();
    let dlq = pipeline.topic("inventory.available.dlq");
    let record = wait_for("dead letter", LONG, || {
        read_topic(&stack.brokers, &dlq)
            .into_iter()
            .find(|r| r.key == "POISON-1")
    })
    .await;
    assert_eq!(
        record.headers.get("erpstream.attempts").map(String::as_str),
        Some("8")
    );
    assert!(
        record
            .headers
            .get("erpstream.error")
            .is_some_and(|e| e.contains("500")),
        "{:?}",
        record.headers
    );
    assert_eq!(
        record.headers.get("erpstream.source").map(String::as_str),
        Some("storefront")
    );
    assert_eq!(storefront.stock_of("POISON-1").len(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_broker_is_answered_503_with_retry_after_and_never_202() {
    // A private broker, so stopping it does not disturb other tests.
    let port = free_port();
    let dir = std::env::temp_dir().join(unique("tansu-"));
    std::fs::create_dir_all(&dir).expect("dir");
    let mut broker = std::process::Command::new("tansu")
        .current_dir(&dir)
        .args([
            "broker",
            "--listener-url",
            &format!("tcp://127.0.0.1:{port}"),
            "--advertised-listener-url",
            &format!("tcp://127.0.0.1:{port}"),
            "--storage-engine",
            "sqlite://tansu.db",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("tansu on PATH (deploy/local/up.sh installs it)");
    let storefront = Storefront::start().await;
    let mut options = options(&storefront);
    options.brokers = format!("127.0.0.1:{port}");
    options.delivery_timeout = "2s";
    let mut pipeline = Pipeline::configure(&options);
    pipeline.start().await;
    assert_eq!(
        pipeline
            .post_webhook(
                &inventory_body("BRK-1", "WH", 1, "2024-01-20T10:05:00Z"),
                Some(ERP_SECRET)
            )
            .await
            .0,
        202
    );

    let _ = broker.kill();
    let _ = broker.wait();
    let (status, headers, reply) = pipeline
        .post_webhook(
            &inventory_body("BRK-2", "WH", 2, "2024-01-20T10:06:00Z"),
            Some(ERP_SECRET),
        )
        .await;
    assert_eq!(status, 503, "{reply}");
    assert!(headers.get("retry-after").is_some(), "{headers:?}");
    pipeline.kill();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn validate_lists_every_problem_with_its_path() {
    let dir = std::env::temp_dir().join(unique("validate-"));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("broken.yaml");
    std::fs::write(
        &file,
        r#"
app_id: demo
kafka: { brokers: "127.0.0.1:9092", fetch_wait: soon }
registry: { url: "http://127.0.0.1:8081" }
topics:
  inventory.change: { partitions: 3 }
  inventory.available: { partitions: 2 }
sources:
  erp: { type: erp_webhook, secrets: ["inline-secret"] }
processors:
  inventory: { type: inventory, inputs: [inventory.chnage], output: inventory.available }
sinks:
  storefront:
    type: storefront_webhook
    inputs: [inventory.available]
    url: "not a url"
    secret: { env: S }
    retry: { max_attempts: 0 }
  other: { type: carrier_pigeon }
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
        "kafka.fetch_wait",
        "sources.erp.secrets[0]",
        "processors.inventory.inputs[0]",
        "sinks.storefront.url",
        "sinks.storefront.retry.max_attempts",
        "sinks.other.type",
    ] {
        assert!(
            text.contains(&format!("{path}:")),
            "missing {path} in:\n{text}"
        );
    }
}

fn catalog_body(group: &str, price: &str, timestamp: &str) -> Vec<u8> {
    format!(
        r#"{{"event_type":"catalog.update","timestamp":"{timestamp}","data":{{"group_id":"{group}","group_name":"Falcon X1 Quadcopter","category_path":["Drones","Professional"],"tax_code":"HSN-8802","is_active":true,"variants":[{{"sku":"{group}-KIT","variant_title":"Pro Kit","selling_price":{price},"mrp":55000.00,"current_stock":15,"specifications":{{"Range":"5 km"}},"media_assets":["https://storage.example.com/img/x1.jpg"]}}]}}}}"#
    )
    .into_bytes()
}

fn catalog_deliveries(storefront: &Storefront, group: &str) -> Vec<serde_json::Value> {
    storefront
        .deliveries()
        .into_iter()
        .filter(|d| {
            d.status < 300
                && d.body["event_type"] == "catalog.update"
                && d.body["data"]["group_id"] == group
        })
        .map(|d| d.body["data"].clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn catalog_updates_reach_the_storefront_exactly_once_and_never_older_after_newer() {
    let storefront = Storefront::start().await;
    let mut pipeline = started(&storefront).await;
    let newer = catalog_body("GRP-UAV-X1", "45000.00", "2024-01-20T10:00:00Z");
    assert_eq!(pipeline.post_webhook(&newer, Some(ERP_SECRET)).await.0, 202);
    let delivered = wait_for("catalog delivery", LONG, || {
        catalog_deliveries(&storefront, "GRP-UAV-X1").pop()
    })
    .await;
    assert_eq!(
        delivered["variants"][0]["selling_price"].to_string(),
        "45000",
        "exact price, no float noise"
    );
    assert_eq!(delivered["variants"][0]["sku"], "GRP-UAV-X1-KIT");
    assert_eq!(
        delivered["category_path"],
        serde_json::json!(["Drones", "Professional"])
    );

    // After a restart (no answer cache) the same webhook is published again, and an older
    // catalog record arrives late: the storefront sees neither.
    pipeline.terminate();
    pipeline.start().await;
    assert_eq!(pipeline.post_webhook(&newer, Some(ERP_SECRET)).await.0, 202);
    let older = catalog_body("GRP-UAV-X1", "39999.99", "2024-01-20T09:00:00Z");
    assert_eq!(pipeline.post_webhook(&older, Some(ERP_SECRET)).await.0, 202);
    let sentinel = catalog_body("GRP-SENTINEL", "1.00", "2024-01-20T09:00:00Z");
    assert_eq!(
        pipeline.post_webhook(&sentinel, Some(ERP_SECRET)).await.0,
        202
    );
    wait_for("sentinel", LONG, || {
        catalog_deliveries(&storefront, "GRP-SENTINEL").pop()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let prices: Vec<String> = catalog_deliveries(&storefront, "GRP-UAV-X1")
        .iter()
        .map(|d| d["variants"][0]["selling_price"].to_string())
        .collect();
    assert_eq!(prices, vec!["45000"]);
}

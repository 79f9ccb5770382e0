//! End-to-end: with `kafka.idle_pause`, an idle pipeline stops fetching (the local broker
//! holds every empty fetch for the full `fetch_wait`, so idle consumers would keep it busy);
//! its own writes wake its consumers at once, and records other processes write are found by
//! the slow poll.

use std::time::Duration;

use erpstream_e2e::*;
use erpstream_schemas::{Codec, InventoryAvailable, LocationStock, now_millis};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

const LONG: Duration = Duration::from_secs(30);

/// Waits until both consumers of the test topology (the processor chain and the storefront
/// sink, 4 partitions each) have paused every partition.
async fn all_paused(pipeline: &Pipeline) {
    let until = std::time::Instant::now() + LONG;
    loop {
        let text = pipeline.metrics().await;
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("erpstream_consumer_paused_partitions{"))
            .collect();
        if series.len() == 2 && series.iter().all(|l| l.ends_with(" 4")) {
            return;
        }
        assert!(
            std::time::Instant::now() < until,
            "not every consumer paused within {LONG:?}: {series:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_pipeline_pauses_its_consumers_and_its_own_writes_wake_them() {
    let storefront = Storefront::start().await;
    let mut options = TopologyOptions::new(&storefront.url);
    // The poll never comes during the test: only the pipeline's own writes can wake it.
    options.idle = Some(("200ms", "1h"));
    let mut pipeline = Pipeline::configure(&options);
    pipeline.start().await;

    for round in 0..3 {
        all_paused(&pipeline).await;
        let sku = format!("IDLE-{round}");
        let body = inventory_body(&sku, "WH", 10 + round, &rfc3339_now(0));
        let (status, _, reply) = pipeline.post_webhook(&body, Some(ERP_SECRET)).await;
        assert_eq!(status, 202, "{reply}");
        // The webhook's record wakes the processors, their output the storefront sink.
        let delivered = wait_for(&sku, LONG, || storefront.stock_of(&sku).pop()).await;
        assert_eq!(delivered["new_quantity"], 10 + round, "{delivered}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_consumer_finds_what_another_process_wrote_at_its_poll() {
    let storefront = Storefront::start().await;
    let mut options = TopologyOptions::new(&storefront.url);
    options.idle = Some(("200ms", "1s"));
    let mut pipeline = Pipeline::configure(&options);
    pipeline.start().await;
    all_paused(&pipeline).await;

    // This test is the other process: it writes the storefront sink's input itself.
    let topic = pipeline.topic("inventory.available");
    let codec = Codec::new(&options.registry).expect("codec");
    let at = now_millis();
    let record = InventoryAvailable {
        event_id: uuid::Uuid::now_v7().to_string(),
        idempotency_key: "IDLE-OTHER@1".into(),
        source_system: "other".into(),
        source: "other-producer".into(),
        occurred_at: at,
        ingested_at: at,
        sku: "IDLE-OTHER".into(),
        locations: vec![LocationStock {
            location_code: "WH".into(),
            on_hand: 7.into(),
            reserved: 0.into(),
            safety_stock: 0.into(),
            available: 7.into(),
            version: 1,
            as_of: at,
        }],
        version: 1,
    };
    let payload = codec.encode(&topic, &record).await.expect("encode");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &options.brokers)
        .create()
        .expect("producer");
    producer
        .send(
            FutureRecord::to(&topic).key("IDLE-OTHER").payload(&payload),
            LONG,
        )
        .await
        .map_err(|(e, _)| e)
        .expect("produced");

    let delivered = wait_for("IDLE-OTHER", LONG, || {
        storefront.stock_of("IDLE-OTHER").pop()
    })
    .await;
    assert_eq!(delivered["new_quantity"], 7, "{delivered}");
}

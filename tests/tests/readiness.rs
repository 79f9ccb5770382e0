//! End-to-end: `/readyz` tells the truth. A pipeline that answers ready delivers at once; a
//! rebalance makes it unready until the moved partitions' state is restored.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use erpstream_e2e::*;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

const LONG: Duration = Duration::from_secs(60);

async fn deliver(pipeline: &Pipeline, storefront: &Storefront, sku: &str, quantity: i64) {
    let body = inventory_body(sku, "WH", quantity, &rfc3339_now(0));
    let (status, _, reply) = pipeline.post_webhook(&body, Some(ERP_SECRET)).await;
    assert_eq!(status, 202, "{reply}");
    wait_for(sku, LONG, || storefront.stock_of(sku).pop()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_pipeline_answers_ready_only_when_it_delivers_at_once() {
    let storefront = Storefront::start().await;
    let (_broker, mut options) = TopologyOptions::own_broker();
    options.storefront = storefront.url.clone();
    let mut pipeline = Pipeline::configure(&options);
    pipeline.start().await;
    // State to restore: guards, dedupe keys and stock of 100 skus.
    for i in 0..100 {
        let body = inventory_body(&format!("READY-{i:03}"), "WH", i, &rfc3339_now(0));
        assert_eq!(pipeline.post_webhook(&body, Some(ERP_SECRET)).await.0, 202);
    }
    deliver(&pipeline, &storefront, "READY-LAST", 1).await;
    pipeline.terminate();

    // `start` returns the moment /readyz answers 200.
    pipeline.start().await;
    let sent = Instant::now();
    let body = inventory_body("READY-NEW", "WH", 5, &rfc3339_now(0));
    assert_eq!(pipeline.post_webhook(&body, Some(ERP_SECRET)).await.0, 202);
    let delivered = wait_for("READY-NEW", LONG, || storefront.stock_of("READY-NEW").pop()).await;
    let took = sent.elapsed();
    assert_eq!(delivered["new_quantity"], 5);
    eprintln!("delivered {took:?} after ready");
    assert!(
        took <= Duration::from_secs(1),
        "delivered {took:?} after ready; log:\n{}",
        pipeline.log_text()
    );
    pipeline.terminate();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rebalance_makes_the_pipeline_unready_until_the_moved_partitions_are_restored() {
    let storefront = Storefront::start().await;
    let (_broker, mut options) = TopologyOptions::own_broker();
    options.storefront = storefront.url.clone();
    let mut pipeline = Pipeline::configure(&options);
    pipeline.start().await;
    deliver(&pipeline, &storefront, "MOVE-1", 1).await;

    // A second member joins the storefront sink's group: partitions move.
    let app = pipeline.prefix.trim_end_matches('.').to_string();
    let joined = Arc::new(AtomicBool::new(true));
    let member = {
        let (brokers, topic, joined) = (
            options.brokers.clone(),
            pipeline.topic("inventory.available"),
            joined.clone(),
        );
        let group = format!("{app}.storefront");
        std::thread::spawn(move || {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("group.id", &group)
                .set("enable.auto.commit", "false")
                .set("session.timeout.ms", "10000")
                .set("heartbeat.interval.ms", "500")
                .create()
                .expect("consumer");
            consumer.subscribe(&[&topic]).expect("subscribe");
            while joined.load(Ordering::SeqCst) {
                let _ = consumer.poll(Duration::from_millis(100));
            }
            consumer.unsubscribe();
        })
    };
    let mut seen_unready = None;
    let until = Instant::now() + LONG;
    loop {
        let (status, body) = pipeline.readyz().await;
        if status == 503 {
            seen_unready.get_or_insert(body.clone());
        } else if status == 200 && seen_unready.is_some() {
            break;
        }
        assert!(
            Instant::now() < until,
            "readyz never went through 503 and back (last {status} {body}); log:\n{}",
            pipeline.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let unready = seen_unready.expect("seen");
    assert_eq!(unready["status"], "not ready");
    let reason = unready["reasons"]["storefront"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        reason.contains("rebalancing") || reason.contains("restoring"),
        "{unready}"
    );
    // Ready again, and delivering for whatever it holds now; the member leaves.
    joined.store(false, Ordering::SeqCst);
    member.join().expect("member");
    let until = Instant::now() + LONG;
    while pipeline.readyz().await.0 != 200 {
        assert!(Instant::now() < until, "not ready after the member left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    deliver(&pipeline, &storefront, "MOVE-2", 2).await;
    pipeline.terminate();
}

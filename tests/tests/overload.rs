//! End-to-end: the admission gate. While a stage on the way to the storefront has left a
//! record unread (here the storefront sink, whose storefront fails) for longer than
//! `max_lag`, webhooks are refused at the door with `503` and `Retry-After`, nothing of them
//! reaches the broker and `/metrics` counts the shedding; once the stage catches up, the gate
//! opens again.

use std::time::{Duration, Instant};

use erpstream_e2e::*;

#[tokio::test]
async fn webhooks_are_refused_with_retry_after_while_the_pipeline_is_behind_and_taken_again_after()
{
    let storefront = Storefront::start().await;
    let mut options = TopologyOptions::new(&storefront.url);
    options.admission = Some("{ max_lag: 500ms }");
    let mut pipeline = Pipeline::configure(&options);
    pipeline.start().await;
    let stack = Stack::from_env();
    let post = |sku: &str, quantity: i64| {
        let body = inventory_body(sku, "WH-1", quantity, &rfc3339_now(0));
        let pipeline = &pipeline;
        async move { pipeline.post_webhook(&body, Some(ERP_SECRET)).await }
    };

    // The storefront fails: changes are accepted and their stock updates wait in the sink,
    // unread by it as far as the gate is concerned, until the oldest is older than
    // `max_lag` — then webhooks are refused.
    storefront.fail_with(500);
    let mut accepted = Vec::new();
    let until = Instant::now() + Duration::from_secs(20);
    let (refused, headers, json) = loop {
        let sku = unique("SHED");
        let (status, headers, json) = post(&sku, 5).await;
        if status == 503 {
            break (sku, headers, json);
        }
        assert_eq!(status, 202, "{json}");
        accepted.push(sku);
        assert!(
            Instant::now() < until,
            "no webhook refused while the storefront failed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        !accepted.is_empty(),
        "the first webhook found nothing behind"
    );
    let retry_after: u64 = headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After header in seconds");
    assert!((1..=30).contains(&retry_after), "Retry-After {retry_after}");
    let reason = json["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("overloaded:") && reason.contains("behind"),
        "{json}"
    );
    let metrics = pipeline.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("erpstream_http_shed_total")
                && l.contains("reason=\"pipeline_lag\"")
                && l.contains("component_id=\"erp\"")),
        "the shedding is counted:\n{metrics}"
    );

    // The storefront recovers: the waiting updates are delivered and the gate opens.
    storefront.fail_with(0);
    for sku in &accepted {
        wait_for("the waiting deliveries", Duration::from_secs(30), || {
            storefront.stock_of(sku).pop()
        })
        .await;
    }
    let after = unique("SHED-AFTER");
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, json) = post(&after, 7).await;
        if status == 202 {
            break;
        }
        assert_eq!(status, 503, "{json}");
        assert!(
            Instant::now() < until,
            "the gate stayed shut after the sink caught up: {json}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for(
        "the delivery after the gate opened",
        Duration::from_secs(30),
        || storefront.stock_of(&after).pop(),
    )
    .await;

    // The refused webhook stored nothing: the topic holds exactly the accepted ones.
    let keys: Vec<String> = read_topic(&stack.brokers, &pipeline.topic("inventory.change"))
        .into_iter()
        .map(|r| r.key)
        .collect();
    assert_eq!(keys.len(), accepted.len() + 1, "{keys:?}");
    assert!(!keys.iter().any(|k| k.contains(&refused)), "{keys:?}");
    assert!(storefront.stock_of(&refused).is_empty());
}

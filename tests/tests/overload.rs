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

    // The storefront fails: the first change is accepted and its stock update waits in the
    // sink, unread by it as far as the gate is concerned.
    storefront.fail_with(500);
    let first = unique("SHED-FIRST");
    let (status, _, json) = post(&first, 5).await;
    assert_eq!(status, 202, "{json}");
    tokio::time::sleep(Duration::from_millis(1_200)).await;

    let refused = unique("SHED-REFUSED");
    let (status, headers, json) = post(&refused, 6).await;
    assert_eq!(status, 503, "{json}");
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

    // The storefront recovers: the waiting update is delivered and the gate opens.
    storefront.fail_with(0);
    wait_for("the first delivery", Duration::from_secs(30), || {
        storefront.stock_of(&first).pop()
    })
    .await;
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
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(!keys.iter().any(|k| k.contains(&refused)), "{keys:?}");
    assert!(storefront.stock_of(&refused).is_empty());
}

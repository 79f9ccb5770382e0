//! End-to-end: the admission gate. While a stage on the way to the storefront is behind
//! (here: any lag at all, `max_lag: 1ms`), webhooks are refused at the door with `503` and
//! `Retry-After`, nothing of them reaches the broker, `/metrics` counts the shedding, and the
//! gate opens again once the stages stop reporting lag.

use std::time::Duration;

use erpstream_e2e::*;

#[tokio::test]
async fn webhooks_are_refused_with_retry_after_while_the_pipeline_is_behind_and_taken_again_after()
{
    let storefront = Storefront::start().await;
    let mut options = TopologyOptions::new(&storefront.url);
    options.admission = Some("{ max_lag: 1ms }");
    let mut pipeline = Pipeline::configure(&options);
    pipeline.start().await;
    let stack = Stack::from_env();

    // Every delivery reports the lag it saw (some milliseconds: more than 1 ms), so a webhook
    // sent right after one is delivered finds the gate closed. A machine that stalls for more
    // than the second a report counts may let one through; it is delivered and reports
    // again, so a few tries are allowed.
    let mut accepted = Vec::new();
    let mut refusal = None;
    for attempt in 0..5 {
        let sku = unique(&format!("SHED-{attempt}"));
        let body = inventory_body(&sku, "WH-1", 5, &rfc3339_now(0));
        let (status, headers, json) = pipeline.post_webhook(&body, Some(ERP_SECRET)).await;
        if status == 503 {
            refusal = Some((sku, headers, json));
            break;
        }
        assert_eq!(status, 202, "{json}");
        accepted.push(sku.clone());
        wait_for("the delivery", Duration::from_secs(30), || {
            storefront.stock_of(&sku).pop()
        })
        .await;
    }
    let (refused_sku, headers, json) =
        refusal.expect("a webhook right after a delivery is refused");
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
    assert!(reason.contains("behind"), "{json}");
    let metrics = pipeline.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("erpstream_http_shed_total")
                && l.contains("reason=\"pipeline_lag\"")
                && l.contains("component_id=\"erp\"")),
        "the shedding is counted:\n{metrics}"
    );

    // Once no stage has reported lag for a second, the gate is open again.
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    let after = unique("SHED-AFTER");
    let (status, _, json) = pipeline
        .post_webhook(
            &inventory_body(&after, "WH-1", 6, &rfc3339_now(0)),
            Some(ERP_SECRET),
        )
        .await;
    assert_eq!(status, 202, "{json}");
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
    assert!(!keys.iter().any(|k| k.contains(&refused_sku)), "{keys:?}");
    assert!(storefront.stock_of(&refused_sku).is_empty());
}

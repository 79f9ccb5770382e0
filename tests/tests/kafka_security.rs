//! End-to-end: the pipeline on a broker that takes only `SASL_SSL` clients (SCRAM-SHA-512,
//! a certificate from the test's own CA): a signed webhook reaches the storefront.

use std::time::Duration;

use erpstream_e2e::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_is_delivered_through_a_broker_that_takes_only_sasl_ssl() {
    let broker = SecureBroker::start();
    let storefront = Storefront::start().await;
    let mut options = TopologyOptions::new(&storefront.url);
    options.brokers = broker.brokers.clone();
    options.kafka_properties = broker.client_properties();
    let mut pipeline = Pipeline::configure(&options);
    pipeline.start().await;

    let body = inventory_body("TLS-1", "WH", 12, &rfc3339_now(0));
    let (status, _, reply) = pipeline.post_webhook(&body, Some(ERP_SECRET)).await;
    assert_eq!(status, 202, "{reply}");
    let delivered = wait_for("TLS-1", Duration::from_secs(30), || {
        storefront.stock_of("TLS-1").pop()
    })
    .await;
    assert_eq!(delivered["new_quantity"], 12, "{delivered}");
}

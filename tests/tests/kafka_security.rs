//! End-to-end: the pipeline and the tools on a broker that takes only `SASL_SSL` clients
//! (SCRAM-SHA-512, a certificate from the test's own CA), configured by `kafka.security`;
//! a wrong password or a CA the broker's certificate does not chain to stops the start at
//! once with the reason, instead of librdkafka's endless reconnecting.

use std::time::{Duration, Instant};

use erpstream_e2e::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_is_delivered_through_a_broker_that_takes_only_sasl_ssl() {
    let broker = SecureBroker::start();
    let storefront = Storefront::start().await;
    let mut options = TopologyOptions::new(&storefront.url);
    options.brokers = broker.brokers.clone();
    options.kafka_security = Some(broker.security(&broker.ca_file, "TEST_KAFKA_PASSWORD"));
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

    // The tools read the same section.
    let tail = pipeline.tool(&["tail", "inventory.change", "--offset", "0", "--no-follow"]);
    assert!(tail.success, "{}", tail.stderr);
    assert!(tail.stdout.contains("TLS-1"), "{}", tail.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_password_or_ca_is_refused_at_start_up_with_the_reason() {
    let broker = SecureBroker::start();
    let cases = [
        (
            broker.security(&broker.ca_file, "TEST_KAFKA_WRONG_PASSWORD"),
            "SASL authentication error",
        ),
        (
            broker.security(&broker.other_ca_file, "TEST_KAFKA_PASSWORD"),
            "certificate verify failed",
        ),
    ];
    for (security, reason) in cases {
        let mut options = TopologyOptions::new("http://127.0.0.1:9");
        options.brokers = broker.brokers.clone();
        options.kafka_security = Some(security);
        let mut pipeline = Pipeline::configure(&options);
        let started = Instant::now();
        let log = pipeline.start_refused().await;
        let took = started.elapsed();
        let line = log
            .lines()
            .find(|line| line.contains(&format!("kafka ({})", broker.brokers)))
            .unwrap_or_else(|| panic!("no line names the brokers; log:\n{log}"));
        assert!(line.contains(reason), "{reason} not in: {line}");
        assert!(line.contains("check kafka.security"), "{line}");
        assert!(!line.contains(KAFKA_PASSWORD), "{line}");
        assert!(
            took < Duration::from_secs(15),
            "refused only after {took:?}; log:\n{log}"
        );

        let tool = pipeline.tool(&["tail", "inventory.change", "--no-follow"]);
        assert!(!tool.success, "{}", tool.stdout);
        assert!(tool.stderr.contains(reason), "{}", tool.stderr);
    }
}

//! End-to-end: the pipeline's listener over HTTPS (`http.tls`, a certificate from the test's
//! own CA) — signed webhooks and API calls, a certificate rotated on disk while a load runs
//! (new connections get the new one, no request fails) — and the registry client over HTTPS
//! with basic credentials (`registry.ca_file`, `registry.basic_auth`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use erpstream_e2e::*;

/// Status of `GET <url>/healthz` through `client` on a new connection, or the error.
async fn healthz(client: &reqwest::Client, url: &str) -> Result<u16, String> {
    client
        .get(format!("{url}/healthz"))
        .header("connection", "close")
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| format!("{e:?}"))
}

/// POSTs a signed ERP webhook through `client`; its status, 0 if no answer came.
async fn signed_webhook(client: &reqwest::Client, url: &str, body: &[u8], secret: &str) -> u16 {
    client
        .post(format!("{url}/webhooks/erp"))
        .header("content-type", "application/json")
        .header("x-signature", sign(secret, body))
        .body(body.to_vec())
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread")]
async fn webhooks_and_api_calls_over_https_survive_a_certificate_rotation() {
    let dir = TempDir::new("erpstream-https-");
    let ca = TestCa::new(&dir.0, "listener-ca");
    let next_ca = TestCa::new(&dir.0, "next-ca");
    let served = ca.issue("listener");
    let storefront = Storefront::start().await;
    let mut options = TopologyOptions::new(&storefront.url);
    options.https = Some((served.cert.clone(), served.key.clone(), ca.cert.clone()));
    let mut pipeline = Pipeline::configure(&options);
    pipeline.start().await;

    // Only TLS is served, and only to clients that trust the CA.
    let plain = pipeline.url.replacen("https://", "http://", 1);
    assert!(healthz(&reqwest::Client::new(), &plain).await.is_err());
    let untrusting = reqwest::Client::new();
    let refused = healthz(&untrusting, &pipeline.url).await;
    assert!(refused.is_err(), "{refused:?}");

    let body = inventory_body("HTTPS-0", "WH", 3, &rfc3339_now(0));
    let (status, _, reply) = pipeline.post_webhook(&body, Some(ERP_SECRET)).await;
    assert_eq!(status, 202, "{reply}");
    let (status, snapshot) = pipeline.snapshot("").await;
    assert_eq!(status, 200, "{snapshot}");

    // A load over keep-alive connections from a client that trusts both CAs, while the
    // files are replaced (renamed over, as a mounted secret is) by a certificate of the other.
    let both = https_client(&[&ca.cert, &next_ca.cert]);
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (both, url, stop) = (both.clone(), pipeline.url.clone(), stop.clone());
        tokio::spawn(async move {
            let mut answers = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let sku = format!("HTTPS-{n}");
                let body = inventory_body(&sku, "WH", n, &rfc3339_now(0));
                let status = signed_webhook(&both, &url, &body, ERP_SECRET).await;
                answers.push((sku, status));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            answers
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let next = next_ca.issue("listener-next");
    std::fs::rename(&next.key, &served.key).expect("rotate key");
    std::fs::rename(&next.cert, &served.cert).expect("rotate certificate");
    let rotated = Instant::now();
    let next_only = https_client(&[&next_ca.cert]);
    while healthz(&next_only, &pipeline.url).await != Ok(200) {
        assert!(
            rotated.elapsed() < Duration::from_secs(10),
            "the new certificate was not served within 10 s; log:\n{}",
            pipeline.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let old_only = https_client(&[&ca.cert]);
    assert!(healthz(&old_only, &pipeline.url).await.is_err());
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let answers = load.await.expect("load");
    assert!(answers.len() > 20, "only {} requests sent", answers.len());
    let failed: Vec<_> = answers
        .iter()
        .filter(|(_, status)| *status != 202)
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
    for (sku, _) in &answers {
        wait_for(sku, Duration::from_secs(30), || {
            storefront.stock_of(sku).pop()
        })
        .await;
    }
    let metrics = pipeline.metrics().await;
    assert!(
        metric(&metrics, "erpstream_tls_certificate_reloads_total", &[]) >= 1.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_registry_is_reached_over_https_with_basic_credentials() {
    let dir = TempDir::new("erpstream-registry-tls-");
    let ca = TestCa::new(&dir.0, "registry-ca");
    let registry = Registry::start_secure(ca.issue("registry"), &ca.cert).await;
    // Without credentials the registry refuses.
    let anonymous = https_client(&[&ca.cert])
        .get(format!("{}/subjects", registry.url))
        .send()
        .await
        .expect("registry reachable");
    assert_eq!(anonymous.status(), 401);

    let storefront = Storefront::start().await;
    let mut options = TopologyOptions::new(&storefront.url);
    options.registry = registry.url.clone();
    options.registry_section = Some(registry.section());
    let mut pipeline = Pipeline::configure(&options);
    pipeline.start().await;
    let body = inventory_body("SR-TLS-1", "WH", 4, &rfc3339_now(0));
    let (status, _, reply) = pipeline.post_webhook(&body, Some(ERP_SECRET)).await;
    assert_eq!(status, 202, "{reply}");
    let delivered = wait_for("SR-TLS-1", Duration::from_secs(30), || {
        storefront.stock_of("SR-TLS-1").pop()
    })
    .await;
    assert_eq!(delivered["new_quantity"], 4, "{delivered}");

    // A wrong password stops the start, naming the registry and its answer.
    options.registry_section = Some(
        registry
            .section()
            .replace("TEST_REGISTRY_PASSWORD", "TEST_KAFKA_WRONG_PASSWORD"),
    );
    let mut refused = Pipeline::configure(&options);
    let log = refused.start_refused().await;
    let line = log
        .lines()
        .find(|line| line.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line; log:\n{log}"));
    assert!(line.contains("schema registry"), "{line}");
    assert!(line.contains("401"), "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_storefront_sink_checks_the_storefront_certificate_against_its_ca_file() {
    let dir = TempDir::new("erpstream-storefront-tls-");
    let ca = TestCa::new(&dir.0, "storefront-ca");
    let other_ca = TestCa::new(&dir.0, "other-ca");
    let storefront = Storefront::start().await;
    let plain: reqwest::Url = storefront.url.parse().expect("storefront URL");
    let terminator = TlsTerminator::start(
        &dir.0,
        &ca.issue("storefront"),
        plain.port().expect("storefront port"),
    );
    let https = format!("https://127.0.0.1:{}{}", terminator.port, plain.path());

    let mut options = TopologyOptions::new(&https);
    options.storefront_ca = Some(ca.cert.clone());
    options.console = true;
    let mut pipeline = Pipeline::configure(&options);
    pipeline.start().await;
    // The console's connection test asks the storefront with the sink's own client.
    let outcome = pipeline.connector("storefront", "test").await;
    assert_eq!(outcome["ok"], true, "{outcome}");
    let body = inventory_body("SF-TLS-1", "WH", 9, &rfc3339_now(0));
    let (status, _, reply) = pipeline.post_webhook(&body, Some(ERP_SECRET)).await;
    assert_eq!(status, 202, "{reply}");
    let delivered = wait_for("SF-TLS-1", Duration::from_secs(30), || {
        storefront.stock_of("SF-TLS-1").pop()
    })
    .await;
    assert_eq!(delivered["new_quantity"], 9, "{delivered}");
    pipeline.terminate();

    // Another CA's bundle: the storefront's certificate is refused, nothing is delivered
    // (the record is dead-lettered with the reason after its attempts).
    options.storefront_ca = Some(other_ca.cert.clone());
    options.max_attempts = 3;
    let mut pipeline = Pipeline::configure(&options);
    pipeline.start().await;
    let outcome = pipeline.connector("storefront", "test").await;
    assert_eq!(outcome["ok"], false, "{outcome}");
    assert!(
        outcome["detail"]
            .as_str()
            .is_some_and(|d| d.contains("UnknownIssuer")),
        "{outcome}"
    );
    let body = inventory_body("SF-TLS-2", "WH", 2, &rfc3339_now(0));
    let (status, _, reply) = pipeline.post_webhook(&body, Some(ERP_SECRET)).await;
    assert_eq!(status, 202, "{reply}");
    let refused = wait_for(
        "a refused certificate in the log",
        Duration::from_secs(30),
        || {
            pipeline
                .log_text()
                .lines()
                .find(|line| line.contains("SF-TLS-2") || line.contains("invalid peer certificate"))
                .filter(|line| line.contains("invalid peer certificate"))
                .map(str::to_string)
        },
    )
    .await;
    assert!(refused.contains("UnknownIssuer"), "{refused}");
    assert!(storefront.stock_of("SF-TLS-2").is_empty());
}

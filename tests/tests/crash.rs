//! The processors' commit paths under SIGKILL. Without transactions (the local broker) a
//! batch's outputs and changelog writes are made durable in one flush, so a kill can leave
//! any part of them behind; with `kafka.transactions` (librdkafka's mock cluster, which has
//! them) a kill leaves a transaction open that the restarted replica aborts. Relative ERP
//! changes are the records that show a mistake — applying one twice or not at all moves the
//! stock — so the test streams them while killing the pipeline at random moments, many
//! times, and checks the state, the storefront's view and the order of what it was sent.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use erpstream_e2e::*;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

const SKUS: usize = 6;
const CHANGES_PER_SKU: usize = 60;
/// Kills on the local broker. The mock cluster does not know static group members: each
/// restart waits out the killed member's 10 s session, so it gets fewer.
const KILLS: usize = 10;
const KILLS_ON_MOCK: usize = 5;
const BASE: i64 = 1_000;

/// POSTs a signed webhook until it is answered `202` (the pipeline may be down or starting:
/// the ERP's retry).
async fn deliver(client: &reqwest::Client, url: &str, body: &[u8]) {
    let until = Instant::now() + Duration::from_secs(240);
    loop {
        let sent = client
            .post(format!("{url}/webhooks/erp"))
            .header("content-type", "application/json")
            .header("x-signature", sign(ERP_SECRET, body))
            .body(body.to_vec())
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        match sent {
            Ok(response) if response.status() == 202 => return,
            Ok(response) if response.status().is_server_error() => {}
            Ok(response) => panic!(
                "webhook refused: {} {}",
                response.status(),
                response.text().await.unwrap_or_default()
            ),
            Err(_) => {}
        }
        assert!(Instant::now() < until, "webhook never accepted");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn change_body(sku: &str, delta: i64, at_ms: i64) -> Vec<u8> {
    json!({
        "event_type": "inventory.change",
        "timestamp": rfc3339_now(at_ms),
        "data": {"sku": sku, "location_code": "WH", "quantity_change": delta,
                 "change_reason": "POS_SALE"}
    })
    .to_string()
    .into_bytes()
}

/// Available per sku, from the snapshot API (no holds and no safety stock: on hand).
async fn available(pipeline: &Pipeline) -> Option<HashMap<String, i64>> {
    let (status, snapshot) = pipeline.snapshot("").await;
    (status == 200).then(|| {
        snapshot
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|i| Some((i["sku"].as_str()?.to_string(), i["qty"].as_i64()?)))
            .collect()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sigkill_at_random_points_of_batches_loses_and_doubles_no_relative_change() {
    let storefront = Storefront::start().await;
    let mut pipeline = Pipeline::configure(&TopologyOptions::new(&storefront.url));
    kill_while_streaming(&storefront, &mut pipeline, 16, KILLS).await;
    pipeline.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sigkill_mid_transaction_loses_and_doubles_no_relative_change() {
    let storefront = Storefront::start().await;
    let (_broker, mut pipeline) = transactional(&storefront);
    kill_while_streaming(&storefront, &mut pipeline, 17, KILLS_ON_MOCK).await;
    // The mock cluster accepts transactional offset commits but keeps none (each restart
    // reads from the beginning, and the replays change nothing), so what is checked is
    // that the batches committed as transactions.
    let committed = transactions(&pipeline, "committed").await;
    assert!(committed > 0.0, "no transaction committed");
    pipeline.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transaction_that_cannot_commit_is_aborted_and_its_batch_processed_again() {
    let storefront = Storefront::start().await;
    let (broker, mut pipeline) = transactional(&storefront);
    pipeline.start().await;
    let client = reqwest::Client::new();
    let sku = unique("ABORT-");
    let first = inventory_body(&sku, "WH", BASE, &rfc3339_now(-120_000));
    deliver(&client, &pipeline.url, &first).await;
    wait_for(
        "the first figure at the storefront",
        Duration::from_secs(30),
        || {
            let last = storefront.stock_of(&sku).last().cloned();
            last.filter(|d| d["new_quantity"] == BASE).map(|_| ())
        },
    )
    .await;

    // The group "rebalanced" under the next transactions' offset commits: they must abort,
    // and their batches come again from the committed offsets.
    broker.cluster().request_errors(
        rdkafka::types::RDKafkaApiKey::TxnOffsetCommit,
        &[rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_ILLEGAL_GENERATION; 2],
    );
    const CHANGES: i64 = 20;
    for i in 0..CHANGES {
        deliver(&client, &pipeline.url, &change_body(&sku, 1, -100_000 + i)).await;
    }
    let expected = BASE + CHANGES;
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let state = available(&pipeline).await.unwrap_or_default();
        if state.get(&sku) == Some(&expected) {
            break;
        }
        assert!(
            Instant::now() < until,
            "state {:?}, expected {expected} (a change lost or doubled); log:\n{}",
            state.get(&sku),
            pipeline.log_text()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    wait_for(
        "the true figure at the storefront",
        Duration::from_secs(30),
        || {
            let last = storefront.stock_of(&sku).last().cloned();
            last.filter(|d| d["new_quantity"] == expected).map(|_| ())
        },
    )
    .await;
    let versions: Vec<i64> = storefront
        .stock_of(&sku)
        .iter()
        .filter_map(|d| d["version"].as_i64())
        .collect();
    assert!(
        versions.windows(2).all(|w| w[0] <= w[1]),
        "versions delivered out of order: {versions:?}"
    );
    let aborted = transactions(&pipeline, "aborted").await;
    assert!(
        aborted >= 1.0,
        "no transaction was aborted; log:\n{}",
        pipeline.log_text()
    );
    pipeline.terminate();
}

/// A test pipeline with `kafka.transactions` on a mock cluster of its own (which has
/// transactions), its topics created.
fn transactional(storefront: &Storefront) -> (MockBroker, Pipeline) {
    let broker = MockBroker::start();
    let mut options = TopologyOptions::new(&storefront.url);
    options.brokers = broker.brokers.clone();
    options.transactions = true;
    let pipeline = Pipeline::configure(&options);
    broker.create_topics(&pipeline);
    (broker, pipeline)
}

/// The pipeline's count of processor transactions that ended with `outcome`.
async fn transactions(pipeline: &Pipeline, outcome: &str) -> f64 {
    metric(
        &pipeline.metrics().await,
        "erpstream_processor_transactions_total",
        &[&format!("outcome=\"{outcome}\"")],
    )
}

/// Streams relative changes (some sent twice) into `pipeline` while killing it `kills`
/// times at moments drawn from `seed`, then checks that every change counted once.
async fn kill_while_streaming(
    storefront: &Storefront,
    pipeline: &mut Pipeline,
    seed: u64,
    kills: usize,
) {
    pipeline.start().await;
    let client = reqwest::Client::new();
    let skus: Vec<String> = (0..SKUS).map(|i| unique(&format!("CRASH-{i}-"))).collect();

    // Absolute figures first (older than every relative change, which adds to them).
    for sku in &skus {
        deliver(
            &client,
            &pipeline.url,
            &inventory_body(sku, "WH", BASE, &rfc3339_now(-120_000)),
        )
        .await;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut expected: HashMap<String, i64> = skus.iter().map(|s| (s.clone(), BASE)).collect();
    let mut bodies = Vec::new();
    for i in 0..CHANGES_PER_SKU {
        for sku in &skus {
            let delta = if rng.random_bool(0.5) { 1 } else { -2 };
            *expected.get_mut(sku).expect("sku") += delta;
            let body = change_body(sku, delta, -100_000 + i as i64);
            // One in ten is sent twice, as an ERP retrying after a lost answer would.
            if rng.random_bool(0.1) {
                bodies.push(body.clone());
            }
            bodies.push(body);
        }
    }
    let url = pipeline.url.clone();
    let sender = tokio::spawn(async move {
        let client = reqwest::Client::new();
        for body in bodies {
            deliver(&client, &url, &body).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });

    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(rng.random_range(150..900))).await;
        pipeline.kill();
        pipeline.start().await;
    }
    sender.await.expect("sender");

    // The state: every change applied exactly once.
    let until = Instant::now() + Duration::from_secs(60);
    let mut state = HashMap::new();
    while Instant::now() < until {
        if let Some(now) = available(pipeline).await {
            state = now;
            if skus.iter().all(|s| state.get(s) == expected.get(s)) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for sku in &skus {
        assert_eq!(
            state.get(sku),
            expected.get(sku),
            "{sku}: state differs from the ERP's changes (a change lost or doubled); log:\n{}",
            pipeline.log_text()
        );
    }

    // The storefront: versions never went backwards, and it ends on the true figure.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let ends_right = skus.iter().all(|sku| {
            storefront
                .stock_of(sku)
                .last()
                .and_then(|d| d["new_quantity"].as_i64())
                == expected.get(sku).copied()
        });
        if ends_right {
            break;
        }
        assert!(
            Instant::now() < until,
            "the storefront does not end on the true figures; log:\n{}",
            pipeline.log_text()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for sku in &skus {
        let deliveries: Vec<Value> = storefront.stock_of(sku);
        let versions: Vec<i64> = deliveries
            .iter()
            .filter_map(|d| d["version"].as_i64())
            .collect();
        assert!(
            versions.windows(2).all(|w| w[0] <= w[1]),
            "{sku}: versions delivered out of order: {versions:?}"
        );
    }
    let log = pipeline.log_text();
    eprintln!(
        "{kills} kills; state emitted again after a restore {} times",
        log.matches("emitting again the state").count()
    );
}

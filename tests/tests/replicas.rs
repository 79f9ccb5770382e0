//! Several replicas of one topology sharing the work: three pipelines with their own
//! `instance_id`, signed webhooks and storefront orders sent to any of them, a `pg_cdc` and a
//! `rest_poll` source that each run on one replica at a time, and the replica holding them
//! SIGKILLed mid-load.
//!
//! The broker is librdkafka's mock cluster (with transactions, as production runs them):
//! the local broker, tansu 0.6.0, holds a group of several members, but never expires a
//! dead static member, and with dynamic members (`static_membership: false`) a dead member
//! was once seen keeping every partition for over two minutes (README, "Replicas").
//!
//! Deliveries are at least once: the replica that takes a storefront partition over may
//! deliver again the last version the dead one delivered before its offset was committed
//! (the same version, never an older one), which is counted and shown.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use erpstream_e2e::erp::Erp;
use erpstream_e2e::erpnext::FakeErp;
use erpstream_e2e::*;
use serde_json::{Value, json};

const SKUS: usize = 30;
const ROUNDS: usize = 80;
const KILL_AT: usize = 30;
const ORDERS: usize = 16;
const CDC_ROWS: usize = 5;
const POLLED_BINS: usize = 4;
const LONG: Duration = Duration::from_secs(120);

fn order(transaction_id: &str, sku: &str) -> Value {
    json!({
        "transaction_id": transaction_id,
        "transaction_date": rfc3339_now(0),
        "customer_details": {"name": "Jane Doe", "tax_id": "GSTIN12345"},
        "line_items": [{"sku": sku, "quantity": 1, "unit_price": 10.0}]
    })
}

/// Whether every load sku's storefront figure reached `quantity`.
fn delivered_at_least(storefront: &Storefront, quantity: i64) -> bool {
    (0..SKUS).all(|sku| {
        storefront
            .stock_of(&format!("SKU-{sku}"))
            .iter()
            .any(|d| d["new_quantity"].as_i64().is_some_and(|q| q >= quantity))
    })
}

/// Whether each of the lease-holding sources `ids` runs on one of `replicas` (ready there,
/// not standing by).
async fn all_held(replicas: &[&Pipeline], ids: &[&str]) -> bool {
    let mut held = vec![false; ids.len()];
    for replica in replicas {
        let (_, body) = replica.readyz().await;
        for (at, id) in ids.iter().enumerate() {
            let standing_by = body["standby"].get(*id).is_some();
            let unready = body["reasons"].get(*id).is_some();
            held[at] |= !standing_by && !unready;
        }
    }
    held.into_iter().all(|h| h)
}

/// `/readyz`'s `standby` map of `pipeline`.
async fn standby(pipeline: &Pipeline) -> BTreeMap<String, Value> {
    let (_, body) = pipeline.readyz().await;
    body["standby"]
        .as_object()
        .map(|m| m.clone().into_iter().collect())
        .unwrap_or_default()
}

/// Every sku's `(qty, locations)` in `pipeline`'s snapshot, if it answers 200.
async fn snapshot_of(pipeline: &Pipeline) -> Option<BTreeMap<String, i64>> {
    let (status, body) = pipeline.snapshot("").await;
    (status == 200).then(|| {
        body.as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| Some((i["sku"].as_str()?.to_string(), i["qty"].as_i64()?)))
            .collect()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_share_the_work_and_a_sigkilled_one_loses_nothing() {
    let cluster = PgCluster::start("logical");
    let erp_url = cluster.url("postgres");
    let erp_db = pg(&erp_url).await;
    erp_db
        .batch_execute(
            "CREATE TABLE stock (item_code text, warehouse text, actual_qty numeric(18,3) NOT NULL,
                 PRIMARY KEY (item_code, warehouse))",
        )
        .await
        .expect("ERP table");
    let storefront = Storefront::start().await;
    let erp = Erp::start().await;
    let broker = MockBroker::start();
    let mut options = TopologyOptions::new(&storefront.url);
    options.brokers = broker.brokers.clone();
    options.transactions = true;
    options.erp = Some((erp.url.clone(), "generic"));
    options.max_attempts = 10_000;
    let slot = unique("replicas_").to_lowercase().replace('-', "_");
    let erpnext = FakeErp::start().await;
    options.extra_sources = format!(
        "{}\n{}",
        stock_cdc_source(&erp_url, &Stack::from_env().database, &slot),
        erpnext.bin_source("poll", "200ms")
    );
    let first = Pipeline::configure(&options);
    broker.create_topics(&first);
    let mut replicas = vec![first.replica("a"), first.replica("b"), first.replica("c")];
    for replica in &mut replicas {
        replica.start().await;
    }

    // One replica streams from the slot; the other two stand by and say who holds it.
    let mut holder = None;
    for (i, replica) in replicas.iter().enumerate() {
        match standby(replica).await.get("db") {
            None => holder = Some(i),
            Some(reason) => assert!(
                reason
                    .as_str()
                    .is_some_and(|r| r.contains("held by instance")),
                "{reason}"
            ),
        }
    }
    let holder = holder.expect("one replica holds the pg_cdc lease");
    let others: Vec<usize> = (0..3).filter(|i| *i != holder).collect();
    for &i in &others {
        assert!(standby(&replicas[i]).await.contains_key("db"));
    }

    // ERP table writes all along: each row's quantity only grows.
    let stop = Arc::new(AtomicBool::new(false));
    let last_written = Arc::new(AtomicI64::new(0));
    let writer = {
        let (stop, last_written) = (stop.clone(), last_written.clone());
        let erp_db = pg(&erp_url).await;
        tokio::spawn(async move {
            let mut quantity = 0i64;
            while !stop.load(Ordering::SeqCst) {
                quantity += 1;
                for row in 0..CDC_ROWS {
                    erp_db
                        .execute(
                            "INSERT INTO stock VALUES ($1, 'WH-TECH-01', $2::bigint::numeric)
                             ON CONFLICT (item_code, warehouse) DO UPDATE SET actual_qty = excluded.actual_qty",
                            &[&format!("CDC-{row}"), &quantity],
                        )
                        .await
                        .expect("ERP write");
                }
                last_written.store(quantity, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            quantity
        })
    };

    // Order skus start with 100 each; the storefront orders hold one unit each.
    let order_skus: Vec<String> = (0..4).map(|i| format!("ORDER-SKU-{i}")).collect();
    for (i, sku) in order_skus.iter().enumerate() {
        let body = inventory_body(sku, DEFAULT_LOCATION, 100, &rfc3339_now(-200_000));
        let (status, _, reply) = replicas[i % 3].post_webhook(&body, Some(ERP_SECRET)).await;
        assert_eq!(status, 202, "{reply}");
    }

    let mut alive: Vec<usize> = (0..3).collect();
    let mut accepted: HashMap<String, i64> = HashMap::new();
    let mut orders = Vec::new();
    let mut killed_at = None;
    let mut first_after_kill = None;
    let (mut served_again, mut lease_taken) = (None, None);
    let mut sent = 0usize;
    for round in 0..ROUNDS {
        if round == KILL_AT {
            replicas[holder].kill();
            killed_at = Some(Instant::now());
            alive.retain(|i| *i != holder);
        }
        let mut posts = Vec::new();
        for sku in 0..SKUS {
            let target = alive[(round * SKUS + sku) % alive.len()];
            let name = format!("SKU-{sku}");
            let quantity = (round * 10 + 1) as i64;
            let body = inventory_body(
                &name,
                DEFAULT_LOCATION,
                quantity,
                &rfc3339_now(-180_000 + round as i64 * 1_000),
            );
            let pipeline = &replicas[target];
            posts.push(async move {
                let (status, _, reply) = pipeline.post_webhook(&body, Some(ERP_SECRET)).await;
                (name, quantity, status, reply)
            });
        }
        for (name, quantity, status, reply) in futures::future::join_all(posts).await {
            assert_eq!(status, 202, "{reply}");
            accepted.insert(name, quantity);
            sent += 1;
        }
        // The polled ERP's bins change every round too.
        erpnext.put(
            "Bin",
            (0..POLLED_BINS)
                .map(|bin| {
                    json!({"name": format!("POLL-{bin}"), "item_code": format!("POLL-{bin}"),
                        "warehouse": DEFAULT_LOCATION, "actual_qty": round + 1, "reserved_qty": 0})
                })
                .collect(),
        );
        if round % 5 == 0 && orders.len() < ORDERS {
            for _ in 0..2 {
                let id = unique("ORD-");
                let sku = &order_skus[orders.len() % order_skus.len()];
                let target = &replicas[alive[orders.len() % alive.len()]];
                let (status, _, reply) = target
                    .post_api("/api/sales/orders", &order(&id, sku), Some(API_TOKEN))
                    .await;
                assert_eq!(status, 202, "{reply}");
                orders.push(id);
            }
        }
        if round == KILL_AT {
            first_after_kill = Some(round);
        }
        if let (Some(killed), Some(probe_round)) = (killed_at, first_after_kill) {
            let probe = (probe_round * 10 + 1) as i64;
            if served_again.is_none() && delivered_at_least(&storefront, probe) {
                served_again = Some(killed.elapsed());
            }
            let survivors: Vec<&Pipeline> = alive.iter().map(|&i| &replicas[i]).collect();
            if lease_taken.is_none() && all_held(&survivors, &["db", "poll"]).await {
                lease_taken = Some(killed.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let killed_at: Instant = killed_at.expect("killed");
    let load_ended = killed_at.elapsed();
    let first_after_kill = first_after_kill.expect("posted after the kill");

    // Time until the dead replica's partitions are served again: every sku's figure of the
    // first round sent after the kill reached the storefront.
    let probe = (first_after_kill * 10 + 1) as i64;
    let served_again = match served_again {
        Some(at) => at,
        None => {
            wait_for("the first round after the kill delivered", LONG, || {
                delivered_at_least(&storefront, probe).then(|| killed_at.elapsed())
            })
            .await
        }
    };
    // Time until a survivor streams from the slot and polls the ERP (it stops standing by).
    let until = Instant::now() + LONG;
    let survivors: Vec<&Pipeline> = alive.iter().map(|&i| &replicas[i]).collect();
    while lease_taken.is_none() {
        if all_held(&survivors, &["db", "poll"]).await {
            lease_taken = Some(killed_at.elapsed());
        }
        assert!(
            Instant::now() < until,
            "the survivors did not take both leases"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lease_taken = lease_taken.expect("taken");
    stop.store(true, Ordering::SeqCst);
    let last_cdc = writer.await.expect("ERP writer");
    assert_eq!(last_cdc, last_written.load(Ordering::SeqCst));

    // Every accepted figure's last value, every ERP row's last value, once each, in order.
    let everything_at = Instant::now();
    wait_for("every sku's last figure delivered", LONG, || {
        let done = accepted.iter().all(|(sku, q)| {
            storefront
                .stock_of(sku)
                .last()
                .is_some_and(|d| d["new_quantity"] == *q)
        }) && (0..CDC_ROWS).all(|row| {
            storefront
                .stock_of(&format!("CDC-{row}"))
                .last()
                .is_some_and(|d| d["new_quantity"] == last_cdc)
        }) && (0..POLLED_BINS).all(|bin| {
            storefront
                .stock_of(&format!("POLL-{bin}"))
                .last()
                .is_some_and(|d| d["new_quantity"] == ROUNDS as i64)
        });
        done.then_some(())
    })
    .await;
    let settled = everything_at.elapsed();
    let mut keys: Vec<String> = accepted.keys().cloned().collect();
    keys.extend((0..CDC_ROWS).map(|row| format!("CDC-{row}")));
    keys.extend((0..POLLED_BINS).map(|bin| format!("POLL-{bin}")));
    let mut repeated = 0;
    for sku in &keys {
        let delivered = storefront.stock_of(sku);
        let versions: Vec<i64> = delivered
            .iter()
            .filter_map(|d| d["version"].as_i64())
            .collect();
        assert!(
            versions.windows(2).all(|w| w[0] <= w[1]),
            "{sku}: an older version after a newer one: {versions:?}"
        );
        repeated += versions.windows(2).filter(|w| w[0] == w[1]).count();
        let quantities: Vec<i64> = delivered
            .iter()
            .filter_map(|d| d["new_quantity"].as_i64())
            .collect();
        assert!(
            quantities.windows(2).all(|w| w[0] <= w[1]),
            "{sku}: an older figure after a newer one: {quantities:?}"
        );
    }
    // Every order written back to the ERP exactly once.
    wait_for("every order written back", LONG, || {
        let created = erp.created();
        orders
            .iter()
            .all(|id| created.iter().any(|c| c.key == *id))
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let created = erp.created();
    for id in &orders {
        let times = created.iter().filter(|c| c.key == *id).count();
        assert_eq!(times, 1, "order {id} written back {times} times");
    }

    // Each survivor's snapshot holds the whole state, the same on both.
    let mut expected: BTreeMap<String, i64> =
        accepted.iter().map(|(k, v)| (k.clone(), *v)).collect();
    for row in 0..CDC_ROWS {
        expected.insert(format!("CDC-{row}"), last_cdc);
    }
    for bin in 0..POLLED_BINS {
        expected.insert(format!("POLL-{bin}"), ROUNDS as i64);
    }
    let until = Instant::now() + LONG;
    let snapshots = loop {
        let a = snapshot_of(&replicas[alive[0]]).await;
        let b = snapshot_of(&replicas[alive[1]]).await;
        if let (Some(a), Some(b)) = (a, b) {
            let complete = expected
                .iter()
                .all(|(sku, q)| a.get(sku) == Some(q) && b.get(sku) == Some(q))
                && order_skus.iter().all(|s| a.contains_key(s));
            if complete && a == b {
                break (a, b);
            }
            assert!(
                Instant::now() < until,
                "the survivors' snapshots differ from the state:\n{a:?}\n{b:?}\nexpected {expected:?}"
            );
        }
        assert!(
            Instant::now() < until,
            "a survivor's snapshot never answered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for sku in &order_skus {
        let held = orders
            .iter()
            .enumerate()
            .filter(|(i, _)| order_skus[i % order_skus.len()] == *sku)
            .count() as i64;
        assert_eq!(snapshots.0[sku], 100 - held, "{sku}: 100 less its holds");
    }
    // `erpstream reconcile` on either survivor finds the ERP's on-hand figures in step.
    let dir = TempDir::new("erpstream-replicas-");
    std::fs::create_dir_all(&dir.0).expect("temp dir");
    let picture = dir.0.join("bins.csv");
    let mut csv = String::from("Item Code,Warehouse,Actual Qty\n");
    for (sku, quantity) in &expected {
        csv.push_str(&format!("{sku},{DEFAULT_LOCATION},{quantity}\n"));
    }
    for sku in &order_skus {
        csv.push_str(&format!("{sku},{DEFAULT_LOCATION},100\n"));
    }
    std::fs::write(&picture, csv).expect("write picture");
    for &i in &alive {
        let report = dir.0.join(format!("report-{i}.json"));
        let run = replicas[i].tool(&[
            "reconcile",
            "--against",
            picture.to_str().expect("path"),
            "--report",
            report.to_str().expect("path"),
        ]);
        assert!(run.success, "reconcile on replica {i}: {}", run.stderr);
        let diff: Value =
            serde_json::from_slice(&std::fs::read(&report).expect("report")).expect("json");
        let counts = &diff["state"]["counts"];
        assert_eq!(
            counts["matching"],
            expected.len() + order_skus.len(),
            "{diff}"
        );
        for kind in ["missing", "extra", "differing"] {
            assert_eq!(counts[kind], 0, "replica {i}: {diff}");
        }
    }

    eprintln!(
        "replicas: {sent} webhooks and {} orders over 3 replicas, the holder of the pg_cdc and rest_poll leases killed at round {KILL_AT}: \
         partitions served again {served_again:?} after the kill, both leases taken after {lease_taken:?}; \
         every figure delivered {settled:?} after the load ended ({load_ended:?} after the kill); \
         {repeated} version(s) delivered again after the takeover",
        orders.len()
    );
    for &i in &alive {
        replicas[i].terminate();
    }
}

/// On the local broker (tansu 0.6.0), which never drops a dead static member: the replica
/// that ran first dies for good, and the one started after it must still get every
/// partition. tansu keeps the dead member as the groups' leader, and every join of the
/// survivor is told the rebalance is still in progress; the survivor's consumers nudge their
/// groups after 30 s without partitions (a dynamic member joins and leaves, and tansu drops
/// the dead leader), so the survivor becomes ready and delivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_tansu_a_replica_that_died_for_good_does_not_strand_the_groups() {
    let storefront = Storefront::start().await;
    let (_broker, mut options) = TopologyOptions::own_broker();
    options.storefront = storefront.url.clone();
    let mut first = Pipeline::configure(&options);
    first.trace_groups();
    first.start().await;
    first.kill();

    let mut survivor = first.replica("survivor");
    let started = Instant::now();
    survivor.start().await;
    let ready_after = started.elapsed();
    let sku = unique("SURVIVOR-");
    let body = inventory_body(&sku, DEFAULT_LOCATION, 7, &rfc3339_now(0));
    let (status, _, reply) = survivor.post_webhook(&body, Some(ERP_SECRET)).await;
    assert_eq!(status, 202, "{reply}");
    wait_for("the survivor's delivery", Duration::from_secs(30), || {
        (!storefront.stock_of(&sku).is_empty()).then_some(())
    })
    .await;
    let nudges = metric_sum(
        &survivor.metrics().await,
        "erpstream_consumer_group_nudges_total",
    );
    eprintln!("survivor ready after {ready_after:?}, {nudges} group nudge(s)");
}

/// The sum of every series of counter `name`.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

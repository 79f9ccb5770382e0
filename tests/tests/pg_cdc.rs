//! End-to-end: Postgres logical replication (`pg_cdc`) → `inventory.change` → dedupe →
//! inventory state, against a Postgres cluster of each test's own and the local broker.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use erpstream_e2e::*;
use erpstream_schemas::{Codec, InventoryChange};
use tokio_postgres::Client;

/// The `pg_cdc` source block of a test topology, reading `public.stock` of `url`, its
/// state in the stack's database.
fn cdc_source(url: &str, slot: &str) -> String {
    stock_cdc_source(url, &Stack::from_env().database, slot)
}

async fn stock_table(client: &Client, skus: usize) {
    client
        .batch_execute(
            "CREATE TABLE stock (item_code text, warehouse text, actual_qty numeric(18,3) NOT NULL,
                 note text, PRIMARY KEY (item_code, warehouse));
             INSERT INTO stock SELECT 'SKU-' || i, 'WH-1', 0 FROM generate_series(0, 9999) i WHERE i < 0",
        )
        .await
        .expect("create table");
    client
        .execute(
            "INSERT INTO stock SELECT 'SKU-' || i, 'WH-1', 0 FROM generate_series(0, $1::int - 1) i",
            &[&(skus as i32)],
        )
        .await
        .expect("rows before start");
}

/// Decoded `inventory.change` records in topic order per partition: (sku, quantity, reason, key).
async fn changes(
    pipeline: &Pipeline,
    logical: &str,
) -> Vec<(String, String, Option<String>, String)> {
    changes_on(&Stack::from_env().brokers, pipeline, logical).await
}

async fn changes_on(
    brokers: &str,
    pipeline: &Pipeline,
    logical: &str,
) -> Vec<(String, String, Option<String>, String)> {
    let stack = Stack::from_env();
    let codec = Codec::new(&stack.registry).expect("codec");
    let mut out = Vec::new();
    for record in read_topic(brokers, &pipeline.topic(logical)) {
        let event: InventoryChange = codec.decode(&record.payload).await.expect("decodes");
        out.push((
            event.sku,
            event
                .new_quantity
                .map(|q| q.normalize().to_string())
                .unwrap_or_default(),
            event.change_reason,
            event.idempotency_key,
        ));
    }
    out
}

/// Updates random skus one transaction at a time until told to stop, setting quantities
/// `from + 1`, `from + 2`, …; returns each touched sku's history of quantities (with
/// `from = 0`, every sku's, starting with the 0 it was inserted with).
fn writer(
    url: String,
    skus: usize,
    from: i64,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<HashMap<String, Vec<i64>>> {
    tokio::spawn(async move {
        let client = pg(&url).await;
        let mut history: HashMap<String, Vec<i64>> = if from == 0 {
            (0..skus).map(|i| (format!("SKU-{i}"), vec![0])).collect()
        } else {
            HashMap::new()
        };
        let mut n = 0i64;
        while !stop.load(Ordering::SeqCst) {
            n += 1;
            let sku = format!("SKU-{}", ((from + n) * 7919) as usize % skus);
            client
                .execute(
                    "UPDATE stock SET actual_qty = $1::bigint WHERE item_code = $2",
                    &[&(from + n), &sku],
                )
                .await
                .expect("update");
            history.entry(sku).or_default().push(from + n);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        history
    })
}

/// Sets `changes` quantities 1, 2, … round-robin over the skus, `per_transaction` rows per
/// transaction; returns each sku's history (starting with the 0 it was inserted with).
fn batch_writer(
    url: String,
    skus: usize,
    changes: i64,
    per_transaction: i64,
) -> tokio::task::JoinHandle<HashMap<String, Vec<i64>>> {
    tokio::spawn(async move {
        let client = pg(&url).await;
        let mut history: HashMap<String, Vec<i64>> =
            (0..skus).map(|i| (format!("SKU-{i}"), vec![0])).collect();
        for first in (0..changes).step_by(per_transaction as usize) {
            let batch = first..(first + per_transaction).min(changes);
            let values: Vec<String> = batch
                .clone()
                .map(|q| format!("('SKU-{}', {})", q as usize % skus, q + 1))
                .collect();
            client
                .batch_execute(&format!(
                    "UPDATE stock SET actual_qty = v.q FROM (VALUES {}) v(sku, q) WHERE item_code = v.sku",
                    values.join(", ")
                ))
                .await
                .expect("update");
            for q in batch {
                history
                    .entry(format!("SKU-{}", q as usize % skus))
                    .or_default()
                    .push(q + 1);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        history
    })
}

/// SIGKILLs the pipeline once its `db` source has `acknowledged` records on the broker,
/// and starts it again.
async fn kill_and_restart_after(pipeline: &mut Pipeline, acknowledged: f64) {
    let until = Instant::now() + Duration::from_secs(120);
    while metric(
        &pipeline.metrics().await,
        "erpstream_component_sent_events_total",
        &["component_id=\"db\""],
    ) < acknowledged
    {
        assert!(
            Instant::now() < until,
            "the stream did not start; log:\n{}",
            pipeline.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pipeline.kill();
    pipeline.start().await;
}

/// Each sku's quantities on the topic must be a contiguous tail of its history (the
/// snapshot's value, then every later change once, in commit order).
fn assert_tails(seen: &HashMap<String, Vec<i64>>, history: &HashMap<String, Vec<i64>>) {
    for (sku, values) in seen {
        let full = &history[sku];
        let start = full.len() - values.len().min(full.len());
        assert_eq!(
            &full[start..],
            values.as_slice(),
            "{sku}: the topic's quantities are not the tail of its history {full:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rows_before_and_during_the_snapshot_and_later_changes_take_effect_once_in_commit_order() {
    let cluster = PgCluster::start("logical");
    let url = cluster.url("postgres");
    let client = pg(&url).await;
    stock_table(&client, 300).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writes = writer(url.clone(), 300, 0, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    let storefront = Storefront::start().await;
    let mut options = TopologyOptions::new(&storefront.url);
    options.extra_sources = cdc_source(&url, &unique("slot_").to_lowercase().replace('-', "_"));
    let mut pipeline = Pipeline::configure(&options);
    pipeline.start().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    let history = writes.await.expect("writer");
    client
        .batch_execute(
            "INSERT INTO stock VALUES ('SKU-NEW', 'WH-1', 7);
             DELETE FROM stock WHERE item_code = 'SKU-0'",
        )
        .await
        .expect("insert and delete");

    let until = Instant::now() + Duration::from_secs(60);
    let records = loop {
        let records = changes(&pipeline, "inventory.change").await;
        if records
            .iter()
            .any(|(sku, _, reason, _)| sku == "SKU-0" && reason.as_deref() == Some("DELETED"))
        {
            break records;
        }
        assert!(
            Instant::now() < until,
            "the delete did not arrive; log:\n{}",
            pipeline.log_text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // The topic is at-least-once (a produce retried after a lost acknowledgement, or a
    // replication session that starts again from its confirmed LSN, sends a change again):
    // a repeat carries the same idempotency key and is an identical copy, and the first
    // copies follow commit order. Effects are exactly once: dedupe drops every repeat.
    let mut first: HashMap<&String, (&String, &String, &Option<String>)> = HashMap::new();
    for (sku, quantity, reason, key) in &records {
        let original = *first.entry(key).or_insert((sku, quantity, reason));
        assert_eq!(
            original,
            (sku, quantity, reason),
            "{key} repeated with other content"
        );
    }
    let (_, repeats) = distinct_by_key(&records);
    let figures: Vec<_> = records
        .iter()
        .filter(|(sku, _, reason, _)| reason.is_none() && sku != "SKU-NEW")
        .cloned()
        .collect();
    let (seen, _) = distinct_by_key(&figures);
    assert_eq!(seen.len(), 300, "every row of the snapshot arrived");
    assert_tails(&seen, &history);
    let updated = history.values().filter(|h| h.len() > 1).count();
    assert!(updated > 100, "the writer touched {updated} skus");
    let new: Vec<_> = records.iter().filter(|r| r.0 == "SKU-NEW").collect();
    assert_eq!(new.len(), 1);
    assert_eq!(new[0].1, "7");
    let last_of_0 = records
        .iter()
        .rev()
        .find(|r| r.0 == "SKU-0")
        .expect("SKU-0");
    assert_eq!(
        (last_of_0.1.as_str(), last_of_0.2.as_deref()),
        ("0", Some("DELETED"))
    );

    // The inventory state agrees with the table.
    let expected = table_state(&client).await;
    let until = Instant::now() + Duration::from_secs(180);
    loop {
        let state = inventory_state(&pipeline).await;
        // Rows the table has agree; the deleted row reads 0.
        if expected.iter().all(|(k, v)| state.get(k) == Some(v))
            && state.get("SKU-0").map(String::as_str) == Some("0")
        {
            break;
        }
        assert!(
            Instant::now() < until,
            "inventory state differs from the table in {} skus",
            expected
                .iter()
                .filter(|(k, v)| state.get(*k) != Some(v))
                .count()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let dropped = dedupe_dropped(&pipeline).await;
        if dropped == repeats {
            break;
        }
        assert!(
            Instant::now() < until,
            "{repeats} repeats on the topic, dedupe dropped {dropped}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    pipeline.terminate();
}

/// Records the `dedupe` processor dropped as repeats, from `/metrics`.
async fn dedupe_dropped(pipeline: &Pipeline) -> usize {
    let text = pipeline.metrics().await;
    let dedupe: String = text
        .lines()
        .filter(|l| l.contains("component_id=\"dedupe\""))
        .collect::<Vec<_>>()
        .join("\n");
    metric(
        &dedupe,
        "erpstream_component_dropped_events_total{",
        &["reason=\"duplicate\""],
    ) as usize
}

/// sku → quantity as text, from the table.
async fn table_state(client: &Client) -> HashMap<String, String> {
    client
        .query(
            "SELECT item_code, trim_scale(actual_qty)::text FROM stock",
            &[],
        )
        .await
        .expect("table")
        .iter()
        .map(|r| {
            let quantity: String = r.get::<_, Option<String>>(1).unwrap_or_default();
            (r.get(0), quantity)
        })
        .collect()
}

/// sku → available quantity as text, from the pipeline's snapshot API.
async fn inventory_state(pipeline: &Pipeline) -> HashMap<String, String> {
    let (status, snapshot) = pipeline.snapshot("").await;
    assert_eq!(status, 200, "{snapshot}");
    snapshot
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|i| {
            (
                i["sku"].as_str().unwrap_or_default().to_string(),
                i["qty"].to_string(),
            )
        })
        .collect()
}

/// A pipeline reading `public.stock` of `url` with a fresh slot, delivering nowhere in
/// particular (the storefront receiver only keeps the sink healthy).
async fn cdc_pipeline(url: &str) -> (Pipeline, Storefront) {
    let storefront = Storefront::start().await;
    let mut options = TopologyOptions::new(&storefront.url);
    options.extra_sources = cdc_source(url, &unique("slot_").to_lowercase().replace('-', "_"));
    (Pipeline::configure(&options), storefront)
}

/// Waits until the pipeline's inventory state equals the table's rows.
async fn wait_for_table_state(pipeline: &Pipeline, client: &Client, within: Duration) {
    let expected = table_state(client).await;
    let until = Instant::now() + within;
    loop {
        let state = inventory_state(pipeline).await;
        if expected.iter().all(|(k, v)| state.get(k) == Some(v)) {
            return;
        }
        assert!(
            Instant::now() < until,
            "inventory state differs from the table in {} of {} skus; log:\n{}",
            expected
                .iter()
                .filter(|(k, v)| state.get(*k) != Some(v))
                .count(),
            expected.len(),
            pipeline.log_text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Per sku, the quantities of distinct idempotency keys in topic order; and how many
/// records repeated a key.
fn distinct_by_key(
    records: &[(String, String, Option<String>, String)],
) -> (HashMap<String, Vec<i64>>, usize) {
    let mut keys = HashSet::new();
    let mut seen: HashMap<String, Vec<i64>> = HashMap::new();
    let mut repeats = 0;
    for (sku, quantity, _, key) in records {
        if !keys.insert(key.clone()) {
            repeats += 1;
            continue;
        }
        seen.entry(sku.clone())
            .or_default()
            .push(quantity.parse().expect("integer quantity"));
    }
    (seen, repeats)
}

/// `value` of the Prometheus sample `name{...label...}` summed over matching lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sigkill_during_a_stream_of_changes_loses_nothing_and_repeats_are_identical() {
    // 50k changes stream and are confirmed here in ~15 s, but tansu 0.6.0 does not serve a
    // read-back of ~50k records within minutes; 10k keeps the check on every record.
    const SKUS: usize = 1000;
    const CHANGES: i64 = 10_000;
    const PER_TRANSACTION: i64 = 50;
    let cluster = PgCluster::start("logical");
    let url = cluster.url("postgres");
    let client = pg(&url).await;
    stock_table(&client, SKUS).await;
    let (broker, mut options) = TopologyOptions::own_broker();
    // tansu takes seconds for a large batch when busy; give acknowledgements time.
    options.delivery_timeout = "30s";
    // The source alone, on a broker of its own: the source's guarantees on the topic; the
    // crash test below runs the whole chain.
    let slot = unique("slot_").to_lowercase().replace('-', "_");
    let mut pipeline = Pipeline::custom(
        &options,
        &format!(
            "topics:\n  inventory.change: {{ partitions: 2 }}\nsources:\n{}\n",
            cdc_source(&url, &slot)
        ),
    );
    pipeline.start().await;

    // Updates, 50 per transaction, each setting a sku to a quantity never used before.
    let writes = batch_writer(url.clone(), SKUS, CHANGES, PER_TRANSACTION);
    kill_and_restart_after(&mut pipeline, 3_000.0).await;
    let history = writes.await.expect("writer");

    let expected = SKUS as i64 + CHANGES;
    let brokers = broker.brokers.clone();
    // Everything committed is acknowledged once the slot confirmed the WAL position after
    // the last commit (asked of Postgres, to spare the broker).
    let end: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .expect("lsn")
        .get(0);
    let until = Instant::now() + Duration::from_secs(300);
    loop {
        let done: bool = client
            .query_one(
                "SELECT bool_and(confirmed_flush_lsn >= $1::text::pg_lsn) FROM pg_replication_slots",
                &[&end],
            )
            .await
            .expect("slot")
            .get(0);
        if done {
            break;
        }
        assert!(
            Instant::now() < until,
            "the slot did not confirm {end}; log:\n{}",
            pipeline.log_text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let records = changes_on(&brokers, &pipeline, "inventory.change").await;
    let (seen, repeats) = distinct_by_key(&records);
    // Nothing missing: every sku's whole history, each change once, in commit order.
    assert_eq!(seen.len(), SKUS);
    for (sku, values) in &seen {
        assert_eq!(values, &history[sku], "{sku}");
    }
    // Every repeat is the same change: same key, same content, so dedupe drops it
    // (a_crash_mid_stream_... shows it dropped through the whole chain).
    let mut first: HashMap<&str, (&str, &str)> = HashMap::new();
    for (sku, quantity, _, key) in &records {
        let earlier = *first.entry(key).or_insert((sku, quantity));
        assert_eq!(
            earlier,
            (sku.as_str(), quantity.as_str()),
            "{key} repeated with other content"
        );
    }
    eprintln!(
        "inventory.change: {} records, {} distinct, {repeats} repeats",
        records.len(),
        records.len() - repeats
    );
    assert_eq!((records.len() - repeats) as i64, expected);
    pipeline.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_mid_stream_through_the_whole_chain_doubles_no_effect() {
    const SKUS: usize = 200;
    let cluster = PgCluster::start("logical");
    let url = cluster.url("postgres");
    let client = pg(&url).await;
    stock_table(&client, SKUS).await;
    let broker = Broker::start();
    let storefront = Storefront::start().await;
    let mut options = TopologyOptions::new(&storefront.url);
    options.brokers = broker.brokers.clone();
    options.extra_sources = cdc_source(&url, &unique("slot_").to_lowercase().replace('-', "_"));
    let mut pipeline = Pipeline::configure(&options);
    // Once in several clean-clone runs the restarted pipeline's storefront sink lost its
    // partitions 16 s after the restart and never got them back from tansu; the group log
    // says why if it happens again.
    pipeline.trace_groups();
    pipeline.start().await;

    let writes = batch_writer(url.clone(), SKUS, 5_000, 10);
    kill_and_restart_after(&mut pipeline, 1_500.0).await;
    writes.await.expect("writer");

    // The effects (the inventory state) equal the table; every repeat was dropped.
    wait_for_table_state(&pipeline, &client, Duration::from_secs(180)).await;
    let (_, repeats) =
        distinct_by_key(&changes_on(&broker.brokers, &pipeline, "inventory.change").await);
    let dropped = metric(
        &pipeline.metrics().await,
        "erpstream_component_dropped_events_total",
        &["reason=\"duplicate\""],
    );
    eprintln!(
        "{repeats} repeated records on inventory.change; dedupe dropped {dropped} after the restart"
    );
    assert!(
        dropped >= repeats as f64,
        "{repeats} repeats, {dropped} dropped"
    );
    pipeline.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_source_reconnects_after_postgres_restarts_and_misses_nothing() {
    let cluster = PgCluster::start("logical");
    let url = cluster.url("postgres");
    let client = pg(&url).await;
    stock_table(&client, 200).await;
    let (mut pipeline, _storefront) = cdc_pipeline(&url).await;
    pipeline.start().await;

    let stop = Arc::new(AtomicBool::new(false));
    let first = writer(url.clone(), 200, 0, stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    let mut history = first.await.expect("writer");
    // A crash, as far as clients can tell, while the stream may still be catching up.
    cluster.stop_immediate();
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.start_again();

    let client = pg(&url).await;
    let stop = Arc::new(AtomicBool::new(false));
    let second = writer(url.clone(), 200, 1_000_000, stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    for (sku, values) in second.await.expect("writer") {
        history.entry(sku).or_default().extend(values);
    }

    wait_for_table_state(&pipeline, &client, Duration::from_secs(120)).await;
    let (seen, _) = distinct_by_key(&changes(&pipeline, "inventory.change").await);
    for (sku, values) in &seen {
        assert_eq!(
            values, &history[sku],
            "{sku}: every change once, in commit order"
        );
    }
    assert!(
        pipeline.log_text().contains("reconnecting"),
        "the source did not notice the restart"
    );
    pipeline.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_slot_holds_no_wal_beyond_the_heartbeat() {
    let cluster = PgCluster::start("logical");
    let url = cluster.url("postgres");
    let client = pg(&url).await;
    stock_table(&client, 10).await;
    let (mut pipeline, _storefront) = cdc_pipeline(&url).await;
    pipeline.start().await;

    // About 20 MB of WAL in a table the source does not capture.
    let start: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .expect("lsn")
        .get(0);
    client
        .batch_execute(
            "CREATE TABLE other (id bigint PRIMARY KEY, payload text);
             INSERT INTO other SELECT i, repeat('x', 100) FROM generate_series(1, 150000) i;
             CHECKPOINT",
        )
        .await
        .expect("uncaptured writes");
    let lag = || async {
        let row = client
            .query_one(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint,
                        pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint
                 FROM pg_replication_slots",
                &[],
            )
            .await
            .expect("slot");
        (row.get::<_, i64>(0), row.get::<_, i64>(1))
    };
    let written: i64 = client
        .query_one(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn)::bigint",
            &[&start],
        )
        .await
        .expect("wal written")
        .get(0);
    assert!(
        written > 10 * 1024 * 1024,
        "the writes made only {written} bytes of WAL"
    );
    let before = lag().await;
    // Postgres moves a slot's restart point only to a running-xacts record (the CHECKPOINT
    // above writes one) that the client confirms *after* decoding it: the confirmation
    // may be the next heartbeat's (10 s) after the one that caught up, so two heartbeats.
    let until = Instant::now() + Duration::from_secs(25);
    let after = loop {
        let now = lag().await;
        if now.0 < 64 * 1024 && now.1 < 1024 * 1024 {
            break now;
        }
        assert!(
            Instant::now() < until,
            "the slot still holds WAL 25 s after the writes: confirmed lag {} bytes, retained {} bytes (right after: {before:?})",
            now.0,
            now.1
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!(
        "{written} bytes of WAL written; slot (confirmed lag, retained) right after {before:?}, then {after:?}"
    );
    let metrics = pipeline.metrics().await;
    assert!(
        metrics.contains("erpstream_cdc_slot_lag_bytes"),
        "slot lag is exported"
    );
    pipeline.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_column_is_picked_up_and_a_dropped_mapped_column_stops_the_source_by_name() {
    let cluster = PgCluster::start("logical");
    let url = cluster.url("postgres");
    let client = pg(&url).await;
    stock_table(&client, 5).await;
    let (mut pipeline, _storefront) = cdc_pipeline(&url).await;
    pipeline.start().await;

    client
        .batch_execute(
            "ALTER TABLE stock ADD COLUMN bin text;
             UPDATE stock SET actual_qty = 42, bin = 'A-1' WHERE item_code = 'SKU-1'",
        )
        .await
        .expect("add a column");
    let until = Instant::now() + Duration::from_secs(30);
    while !changes(&pipeline, "inventory.change")
        .await
        .iter()
        .any(|r| r.0 == "SKU-1" && r.1 == "42")
    {
        assert!(
            Instant::now() < until,
            "the change after ADD COLUMN did not arrive; log:\n{}",
            pipeline.log_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    client
        .batch_execute(
            "ALTER TABLE stock DROP COLUMN actual_qty;
             UPDATE stock SET bin = 'B-2' WHERE item_code = 'SKU-2'",
        )
        .await
        .expect("drop the mapped column");
    let status = pipeline.wait_exit(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| !s.success()),
        "the pipeline kept running ({status:?})"
    );
    let log = pipeline.log_text();
    assert!(
        log.contains("table public.stock: new_quantity: column actual_qty does not exist"),
        "{log}"
    );
    // Nothing of the refused change was published: SKU-2 has only its snapshot record.
    let sku2 = changes(&pipeline, "inventory.change")
        .await
        .into_iter()
        .filter(|r| r.0 == "SKU-2")
        .count();
    assert_eq!(sku2, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn databases_that_cannot_stream_are_refused_with_the_reason() {
    // wal_level = replica.
    let replica = PgCluster::start("replica");
    let url = replica.url("postgres");
    stock_table(&pg(&url).await, 1).await;
    let (mut pipeline, _s) = cdc_pipeline(&url).await;
    let log = pipeline.start_refused().await;
    assert!(log.contains("wal_level is replica"), "{log}");

    // A table without a primary key, and a user without REPLICATION.
    let cluster = PgCluster::start("logical");
    let client = pg(&cluster.url("postgres")).await;
    client
        .batch_execute(
            "CREATE TABLE stock (item_code text, warehouse text, actual_qty numeric);
             CREATE ROLE app LOGIN",
        )
        .await
        .expect("setup");
    let (mut pipeline, _s) = cdc_pipeline(&cluster.url("postgres")).await;
    let log = pipeline.start_refused().await;
    assert!(
        log.contains("table public.stock has no primary key"),
        "{log}"
    );

    client
        .batch_execute("ALTER TABLE stock ADD PRIMARY KEY (item_code)")
        .await
        .expect("primary key");
    let app = format!("postgres://app@127.0.0.1:{}/postgres", cluster.port);
    let (mut pipeline, _s) = cdc_pipeline(&app).await;
    let log = pipeline.start_refused().await;
    assert!(
        log.contains("user app lacks the REPLICATION attribute"),
        "{log}"
    );
}

/// `POST /api/connectors/db/test` with the console's operator token: the outcome.
async fn connection_test(pipeline: &Pipeline) -> serde_json::Value {
    pipeline.connector("db", "test").await
}

/// A cluster of its own with three stock rows, and a pipeline capturing them on a new slot
/// with the console on (its operator token may test and sync `db`).
struct Captured {
    _cluster: PgCluster,
    _storefront: Storefront,
    client: Client,
    pipeline: Pipeline,
    slot: String,
}

async fn captured() -> Captured {
    let cluster = PgCluster::start("logical");
    let url = cluster.url("postgres");
    let client = pg(&url).await;
    stock_table(&client, 3).await;
    let storefront = Storefront::start().await;
    let mut options = TopologyOptions::new(&storefront.url);
    let slot = unique("slot_").to_lowercase().replace('-', "_");
    options.extra_sources = cdc_source(&url, &slot);
    options.console = true;
    let mut pipeline = Pipeline::configure(&options);
    pipeline.start().await;
    Captured {
        _cluster: cluster,
        _storefront: storefront,
        client,
        pipeline,
        slot,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_connection_test_checks_server_tables_and_slot_and_names_what_is_wrong() {
    // Bound whole: the cluster and the storefront must live as long as the test.
    let captured = captured().await;
    let (client, pipeline, slot) = (&captured.client, &captured.pipeline, &captured.slot);

    let outcome = connection_test(pipeline).await;
    assert_eq!(outcome["ok"], true, "{outcome}");
    let detail = outcome["detail"].as_str().expect("detail");
    assert!(
        detail.contains("1 table(s) match") && detail.contains(&format!("slot {slot}: ready")),
        "{detail}"
    );

    // A mapped column renamed under the source (no change has flowed since, so the stream
    // has not met it yet): the test names the table and the column.
    client
        .batch_execute("ALTER TABLE stock RENAME COLUMN actual_qty TO qty")
        .await
        .expect("rename");
    let outcome = connection_test(pipeline).await;
    assert_eq!(outcome["ok"], false, "{outcome}");
    let detail = outcome["detail"].as_str().expect("detail");
    assert!(
        detail.contains("public.stock") && detail.contains("actual_qty"),
        "{detail}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_re_snapshot_reads_every_row_again_while_the_stream_goes_on() {
    let captured = captured().await;
    let (client, pipeline) = (&captured.client, &captured.pipeline);
    client
        .execute(
            "UPDATE stock SET actual_qty = 5 WHERE item_code = 'SKU-0'",
            &[],
        )
        .await
        .expect("update");
    let until = Instant::now() + Duration::from_secs(60);
    while changes(pipeline, "inventory.change").await.len() < 4 {
        assert!(Instant::now() < until, "no snapshot and update after 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Its card: where the stream stands, and when it last published.
    let status: serde_json::Value = pipeline
        .client
        .get(format!("{}/api/connectors/status", pipeline.url))
        .bearer_auth(CONSOLE_TOKENS[1].1)
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("json");
    let db = status["connectors"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["id"] == "db"))
        .expect("db's card");
    assert!(
        db["standing"]["position"]
            .as_str()
            .is_some_and(|p| p.contains("confirmed up to LSN")),
        "{db}"
    );
    assert_eq!(db["sync"], "Re-snapshot", "{db}");
    assert!(db["standing"]["last_success"].is_string(), "{db}");

    let outcome = pipeline.connector("db", "sync").await;
    assert_eq!(outcome["ok"], true, "{outcome}");
    assert!(
        outcome["detail"]
            .as_str()
            .is_some_and(|d| d.contains("read 3 row(s) of 1 table(s)")),
        "{outcome}"
    );
    // Acknowledged before the answer: every row is on the topic again, with a key of this
    // run (dedupe lets it through), carrying the table as it is now.
    let all = changes(pipeline, "inventory.change").await;
    assert_eq!(all.len(), 7, "{all:?}");
    let mut again: Vec<(String, String)> = all
        .iter()
        .filter(|(_, _, _, key)| key.contains(":r"))
        .map(|(sku, qty, _, _)| (sku.clone(), qty.clone()))
        .collect();
    again.sort();
    assert_eq!(
        again,
        vec![
            ("SKU-0".to_string(), "5".to_string()),
            ("SKU-1".to_string(), "0".to_string()),
            ("SKU-2".to_string(), "0".to_string())
        ]
    );

    // A change committed after the re-snapshot is newer than its rows and wins.
    client
        .execute(
            "UPDATE stock SET actual_qty = 9 WHERE item_code = 'SKU-1'",
            &[],
        )
        .await
        .expect("update");
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, snapshot) = pipeline.snapshot("").await;
        let of = |sku: &str| {
            snapshot
                .as_array()
                .into_iter()
                .flatten()
                .find(|i| i["sku"] == sku)
                .map(|i| i["qty"].to_string())
        };
        if of("SKU-1").as_deref() == Some("9") && of("SKU-0").as_deref() == Some("5") {
            break;
        }
        assert!(Instant::now() < until, "{snapshot}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

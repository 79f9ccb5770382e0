//! End-to-end: Postgres logical replication (`pg_cdc`) → `inventory.change` → dedupe →
//! inventory state, against a Postgres cluster of each test's own and the local broker.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use erpstream_e2e::*;
use erpstream_schemas::{Codec, InventoryChange};
use tokio_postgres::Client;

/// The `pg_cdc` source block of a test topology, reading `public.stock` of `url`.
fn cdc_source(url: &str, slot: &str) -> String {
    let state = Stack::from_env().database;
    format!(
        r#"  db:
    type: pg_cdc
    database: {url}
    state_database: {state}
    slot: {slot}
    publication: {slot}
    heartbeat: 1s
    snapshot_chunk: 100
    source_system: TestERP
    tables:
      public.stock:
        topic: inventory.change
        fields:
          sku: item_code
          location_code: warehouse
          new_quantity: actual_qty
        on_delete: {{ set: {{ new_quantity: 0, change_reason: DELETED }} }}"#
    )
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
async fn changes(pipeline: &Pipeline) -> Vec<(String, String, Option<String>, String)> {
    let stack = Stack::from_env();
    let codec = Codec::new(&stack.registry).expect("codec");
    let mut out = Vec::new();
    for record in read_topic(&stack.brokers, &pipeline.topic("inventory.change")) {
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

/// Updates random skus one transaction at a time until told to stop; returns each sku's
/// history of quantities (starting with the 0 it was inserted with).
fn writer(url: String, skus: usize, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<HashMap<String, Vec<i64>>> {
    tokio::spawn(async move {
        let client = pg(&url).await;
        let mut history: HashMap<String, Vec<i64>> =
            (0..skus).map(|i| (format!("SKU-{i}"), vec![0])).collect();
        let mut n = 0i64;
        while !stop.load(Ordering::SeqCst) {
            n += 1;
            let sku = format!("SKU-{}", (n * 7919) as usize % skus);
            client
                .execute(
                    "UPDATE stock SET actual_qty = $1::bigint WHERE item_code = $2",
                    &[&n, &sku],
                )
                .await
                .expect("update");
            history.entry(sku).or_default().push(n);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        history
    })
}

/// Each sku's quantities on the topic must be a contiguous tail of its history (the
/// snapshot's value, then every later change once, in commit order).
fn assert_tails(
    seen: &HashMap<String, Vec<i64>>,
    history: &HashMap<String, Vec<i64>>,
) {
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
async fn rows_before_and_during_the_snapshot_and_later_changes_arrive_once_in_commit_order() {
    let cluster = PgCluster::start("logical");
    let url = cluster.url("postgres");
    let client = pg(&url).await;
    stock_table(&client, 300).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writes = writer(url.clone(), 300, stop.clone());
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
        let records = changes(&pipeline).await;
        if records
            .iter()
            .any(|(sku, _, reason, _)| sku == "SKU-0" && reason.as_deref() == Some("DELETED"))
        {
            break records;
        }
        assert!(Instant::now() < until, "the delete did not arrive; log:\n{}", pipeline.log_text());
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut keys = HashSet::new();
    let mut seen: HashMap<String, Vec<i64>> = HashMap::new();
    for (sku, quantity, reason, key) in &records {
        assert!(keys.insert(key.clone()), "{key} published twice");
        if reason.is_none() && sku != "SKU-NEW" {
            seen.entry(sku.clone())
                .or_default()
                .push(quantity.parse().expect("integer quantity"));
        }
    }
    assert_eq!(seen.len(), 300, "every row of the snapshot arrived");
    assert_tails(&seen, &history);
    let updated = history.values().filter(|h| h.len() > 1).count();
    assert!(updated > 100, "the writer touched {updated} skus");
    let new: Vec<_> = records.iter().filter(|r| r.0 == "SKU-NEW").collect();
    assert_eq!(new.len(), 1);
    assert_eq!(new[0].1, "7");
    let last_of_0 = records.iter().rev().find(|r| r.0 == "SKU-0").expect("SKU-0");
    assert_eq!((last_of_0.1.as_str(), last_of_0.2.as_deref()), ("0", Some("DELETED")));

    // The inventory state agrees with the table.
    let expected = table_state(&client).await;
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let state = inventory_state(&pipeline).await;
        if state == expected {
            break;
        }
        assert!(
            Instant::now() < until,
            "inventory state differs from the table in {} skus",
            expected.iter().filter(|(k, v)| state.get(*k) != Some(v)).count()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    pipeline.terminate();
}

/// sku → quantity as text, from the table.
async fn table_state(client: &Client) -> HashMap<String, String> {
    client
        .query("SELECT item_code, trim_scale(actual_qty)::text FROM stock", &[])
        .await
        .expect("table")
        .iter()
        .map(|r| {
            let quantity: String = r.get::<_, Option<String>>(1).unwrap_or_default();
            (r.get(0), quantity)
        })
        .collect()
}

/// sku → available quantity as text, from the pipeline's snapshot API, for skus with stock
/// or at zero (a deleted row reports 0 and is left out, as the table no longer has it).
async fn inventory_state(pipeline: &Pipeline) -> HashMap<String, String> {
    let (status, snapshot) = pipeline.snapshot("").await;
    assert_eq!(status, 200, "{snapshot}");
    snapshot
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|i| i["sku"] != "SKU-0")
        .map(|i| (i["sku"].as_str().unwrap_or_default().to_string(), i["qty"].to_string()))
        .collect()
}

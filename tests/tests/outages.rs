//! End-to-end: the schema registry goes away while records written with a schema version
//! the pipeline has not seen yet are flowing; nothing is skipped, nothing dead-lettered.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use apache_avro::types::Value as Avro;
use erpstream_e2e::*;
use erpstream_schemas::{
    CatalogUpdate, Codec, Event, EventKind, InventoryAvailable, InventoryChange, LocationStock,
    Variant, now_millis,
};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

const SKUS: usize = 30;

fn body(storefront: &str, planning: &str) -> String {
    format!(
        r#"topics:
  catalog.update: {{ partitions: 3 }}
  inventory.change: {{ partitions: 3 }}
  inventory.reservation: {{ partitions: 3 }}
  inventory.available: {{ partitions: 3, compacted: true }}
sources: {{}}
processors:
  dedupe: {{ type: dedupe, inputs: [inventory.change, inventory.reservation] }}
  inventory: {{ type: inventory, inputs: [dedupe], output: inventory.available }}
sinks:
  storefront:
    type: storefront_webhook
    inputs: [inventory.available]
    url: {storefront}
    secret: {{ env: TEST_STOREFRONT_SECRET }}
    retry: {{ max_attempts: 3, initial_backoff: 50ms, max_backoff: 200ms }}
  planning:
    type: planning_pg
    inputs: [catalog.update, inventory.change]
    database: {planning}
    batch_wait: 20ms
"#
    )
}

/// The bundled schema of `kind` plus an optional field: a newer, BACKWARD-compatible
/// version another producer registered.
fn newer_schema(kind: EventKind) -> String {
    let mut schema: serde_json::Value =
        serde_json::from_str(kind.schema_text()).expect("bundled schema");
    schema["fields"]
        .as_array_mut()
        .expect("fields")
        .push(serde_json::json!({"name": "zone", "type": ["null", "string"], "default": null}));
    schema.to_string()
}

/// `event` in the wire format under schema `id`, written with `schema` (the bundled one
/// plus `zone`), as another producer would, without asking the registry.
fn encode_newer<E: Event>(
    codec: &Codec,
    schema: &apache_avro::Schema,
    id: u32,
    event: &E,
) -> Vec<u8> {
    let mut value = codec.to_value(event).expect("value");
    let Avro::Record(fields) = &mut value else {
        panic!("a record");
    };
    fields.push((
        "zone".into(),
        Avro::Union(1, Box::new(Avro::String("Z1".into()))),
    ));
    let mut out = vec![0];
    out.extend_from_slice(&id.to_be_bytes());
    let writer = apache_avro::writer::datum::GenericDatumWriter::builder(schema)
        .build()
        .expect("writer");
    out.extend(writer.write_value_to_vec(value).expect("datum"));
    out
}

fn stock(sku: &str, quantity: i64, at: i64) -> InventoryChange {
    InventoryChange {
        event_id: uuid::Uuid::now_v7().to_string(),
        idempotency_key: format!("stock:{sku}:{at}"),
        source_system: "ERP".into(),
        source: "test".into(),
        occurred_at: at,
        ingested_at: now_millis(),
        sku: sku.into(),
        location_code: "WH".into(),
        new_quantity: Some(quantity.into()),
        allocated_qty: None,
        in_transit_qty: None,
        quantity_change: None,
        change_reason: None,
        reference_id: None,
    }
}

fn product(sku: &str, at: i64) -> CatalogUpdate {
    CatalogUpdate {
        event_id: uuid::Uuid::now_v7().to_string(),
        idempotency_key: format!("product:{sku}"),
        source_system: "ERP".into(),
        source: "test".into(),
        occurred_at: at,
        ingested_at: now_millis(),
        group_id: sku.into(),
        group_name: sku.into(),
        description: None,
        category_path: vec![],
        tax_code: None,
        is_active: true,
        product_family: None,
        lead_time_days: None,
        variants: vec![Variant::of_sku(sku)],
    }
}

fn available(sku: &str, quantity: i64, at: i64) -> InventoryAvailable {
    InventoryAvailable {
        event_id: uuid::Uuid::now_v7().to_string(),
        idempotency_key: format!("{sku}@1"),
        source_system: "other".into(),
        source: "other-producer".into(),
        occurred_at: at,
        ingested_at: now_millis(),
        sku: sku.into(),
        locations: vec![LocationStock {
            location_code: "WH".into(),
            on_hand: quantity.into(),
            reserved: 0.into(),
            safety_stock: 0.into(),
            available: quantity.into(),
            version: 1,
            as_of: at,
        }],
        version: 1,
    }
}

async fn send(producer: &FutureProducer, topic: &str, key: &str, payload: &[u8]) {
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(payload),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("produced");
}

/// Committed offsets of `group` and the high watermarks of `topic`, per partition.
fn committed_and_ends(brokers: &str, group: &str, topic: &str) -> Vec<(i64, i64)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut list = TopicPartitionList::new();
    for partition in 0..3 {
        list.add_partition(topic, partition);
    }
    let committed = consumer
        .committed_offsets(list, Duration::from_secs(10))
        .expect("committed offsets");
    (0..3)
        .map(|partition| {
            let done = match committed
                .find_partition(topic, partition)
                .map(|e| e.offset())
            {
                Some(Offset::Offset(o)) => o,
                _ => 0,
            };
            let (_, high) = consumer
                .fetch_watermarks(topic, partition, Duration::from_secs(10))
                .expect("watermarks");
            (done, high)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_outage_while_a_new_schema_version_flows_skips_and_dead_letters_nothing() {
    let storefront = Storefront::start().await;
    let mut registry = Registry::start().await;
    let (_broker, mut options) = TopologyOptions::own_broker();
    options.registry = registry.url.clone();
    let (planning_url, planning) = planning_database().await;
    let mut pipeline = Pipeline::custom(&options, &body(&storefront.url, &planning_url));
    pipeline.start().await;
    let changes = pipeline.topic("inventory.change");
    let outputs = pipeline.topic("inventory.available");
    let codec = Codec::new(&registry.url).expect("codec");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &options.brokers)
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let t = now_millis() - 60_000;
    let skus: Vec<String> = (0..SKUS).map(|i| format!("OUT-{i:02}")).collect();
    let quantity = |i: usize| 100 + i as i64;

    // Products first, and a third of the stock, while the registry answers.
    for sku in &skus {
        let payload = codec
            .encode(&pipeline.topic("catalog.update"), &product(sku, t))
            .await
            .expect("encode");
        send(&producer, &pipeline.topic("catalog.update"), sku, &payload).await;
    }
    for (i, sku) in skus.iter().enumerate().take(SKUS / 3) {
        let payload = codec
            .encode(&changes, &stock(sku, quantity(i), t))
            .await
            .expect("encode");
        send(&producer, &changes, sku, &payload).await;
    }
    // Another producer registers newer versions the pipeline has not seen.
    let change_v2 = newer_schema(EventKind::InventoryChange);
    let change_v2_id = registry
        .register(&format!("{changes}-value"), &change_v2)
        .await;
    let change_v2 = apache_avro::Schema::parse_str(&change_v2).expect("schema");
    let available_v2 = newer_schema(EventKind::InventoryAvailable);
    let available_v2_id = registry
        .register(&format!("{outputs}-value"), &available_v2)
        .await;
    let available_v2 = apache_avro::Schema::parse_str(&available_v2).expect("schema");

    // Every other remaining record is written with the newer version; all are encoded now,
    // while the registry answers, and produced while it is away.
    let mut later = Vec::new();
    for (i, sku) in skus.iter().enumerate().skip(SKUS / 3) {
        let event = stock(sku, quantity(i), t);
        let payload = if i % 2 == 0 {
            encode_newer(&codec, &change_v2, change_v2_id, &event)
        } else {
            codec.encode(&changes, &event).await.expect("encode")
        };
        later.push((sku.clone(), payload));
    }
    let extras: Vec<(String, Vec<u8>)> = ["OUT-EXTRA-1", "OUT-EXTRA-2"]
        .iter()
        .enumerate()
        .map(|(i, sku)| {
            let event = available(sku, 7 + i as i64, t);
            (
                sku.to_string(),
                encode_newer(&codec, &available_v2, available_v2_id, &event),
            )
        })
        .collect();

    // The registry goes away for ~10 s; the rest of the stock flows meanwhile, on all three
    // partitions.
    registry.stop();
    for (sku, payload) in &later {
        send(&producer, &changes, sku, payload).await;
    }
    // Two stock figures another producer writes straight to the output topic.
    for (sku, payload) in &extras {
        send(&producer, &outputs, sku, payload).await;
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (status, ready) = pipeline.readyz().await;
    assert_eq!(status, 503, "not ready without the registry: {ready}");
    registry.start_again().await;

    // Every sku reaches the storefront and the planning database with its one figure.
    let until = Instant::now() + Duration::from_secs(60);
    let expected: BTreeMap<String, i64> = skus
        .iter()
        .enumerate()
        .map(|(i, sku)| (sku.clone(), quantity(i)))
        .chain([("OUT-EXTRA-1".into(), 7), ("OUT-EXTRA-2".into(), 8)])
        .collect();
    loop {
        let delivered: BTreeMap<String, i64> = expected
            .keys()
            .filter_map(|sku| {
                let last = storefront.stock_of(sku).pop()?;
                Some((sku.clone(), last["new_quantity"].as_i64()?))
            })
            .collect();
        if delivered == expected {
            break;
        }
        assert!(
            Instant::now() < until,
            "delivered {} of {}: {delivered:?}; log:\n{}",
            delivered.len(),
            expected.len(),
            pipeline.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let rows: i64 = planning
            .query_one(
                "SELECT count(*) FROM planning.inventory WHERE on_hand_qty = 100 + substr(sku, 5)::int",
                &[],
            )
            .await
            .expect("count")
            .get(0);
        if rows == SKUS as i64 {
            break;
        }
        assert!(
            Instant::now() < until,
            "planning holds {rows} of {SKUS} figures"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Processed exactly once: one state per sku emitted, none twice, none missing.
    let emitted: Vec<TopicRecord> = read_topic(&options.brokers, &outputs);
    let by_processor: Vec<&String> = emitted
        .iter()
        .map(|r| &r.key)
        .filter(|k| !k.starts_with("OUT-EXTRA"))
        .collect();
    assert_eq!(
        by_processor.len(),
        SKUS,
        "one state per sku: {by_processor:?}"
    );
    assert_eq!(
        by_processor.iter().collect::<HashSet<_>>().len(),
        SKUS,
        "no sku twice"
    );
    // Nothing dead-lettered anywhere.
    for topic in [
        "inventory.change",
        "inventory.reservation",
        "inventory.available",
        "catalog.update",
    ] {
        let dead = read_topic(&options.brokers, &(pipeline.topic(topic) + ".dlq"));
        assert!(dead.is_empty(), "{topic}.dlq holds {dead:?}");
    }
    // The processors' offsets reach the end of every partition, which every record made
    // it through: none was stored past one it had not processed.
    let app = pipeline.prefix.trim_end_matches('.');
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let offsets = committed_and_ends(&options.brokers, &format!("{app}.dedupe"), &changes);
        if offsets.iter().all(|(done, end)| done == end) {
            assert!(offsets.iter().all(|(_, end)| *end > 0), "{offsets:?}");
            break;
        }
        assert!(Instant::now() < until, "offsets {offsets:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    pipeline.terminate();
}

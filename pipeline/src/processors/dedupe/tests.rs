use std::collections::HashMap;
use std::time::Duration;

use erpstream_connectors::kafka::RawRecord;
use erpstream_schemas::InventoryChange;

use super::*;
use crate::processors::{Decoded, Effects, Processor, Record};

fn record(partition: i32, offset: i64, key: &str) -> Record {
    Record {
        topic: "inventory.change".into(),
        partition,
        offset,
        raw: RawRecord::default(),
        trace: None,
        event: Decoded::InventoryChange(InventoryChange {
            event_id: format!("e{offset}"),
            idempotency_key: key.into(),
            source_system: "ERP".into(),
            source: "erp".into(),
            occurred_at: 1,
            ingested_at: 1,
            sku: "A".into(),
            location_code: "L".into(),
            new_quantity: None,
            allocated_qty: None,
            in_transit_qty: None,
            quantity_change: None,
            change_reason: None,
            reference_id: None,
        }),
    }
}

fn config() -> DedupeConfig {
    DedupeConfig {
        inputs: vec!["inventory.change".into()],
        retention: Duration::from_secs(3600),
        output: None,
    }
}

/// A new instance restored from `effects`' changelog writes of partition 0.
fn restored(effects: Effects) -> Dedupe {
    let entries: HashMap<String, Vec<u8>> = effects
        .changelog
        .into_iter()
        .map(|(_, _, k, v)| (k, v.unwrap()))
        .collect();
    let mut restored = Dedupe::new("dedupe", &config(), None);
    restored.restore(0, entries);
    restored
}

#[test]
fn drops_repeats_and_survives_restore() {
    let mut dedupe = Dedupe::new("dedupe", &config(), None);
    let mut effects = Effects::default();
    assert!(dedupe.process(0, &record(0, 1, "k1"), &mut effects));
    assert!(!dedupe.process(0, &record(0, 2, "k1"), &mut effects));
    assert!(dedupe.process(0, &record(0, 3, "k2"), &mut effects));
    assert_eq!(effects.changelog.len(), 2);

    // A new instance restored from the changelog writes still drops the repeat.
    let mut restored = restored(effects);
    assert!(!restored.process(0, &record(0, 4, "k1"), &mut Effects::default()));
    assert!(restored.process(0, &record(0, 5, "k3"), &mut Effects::default()));
}

#[test]
fn forgets_keys_past_retention() {
    let mut dedupe = Dedupe::new("dedupe", &config(), None);
    let old = (erpstream_schemas::now_millis() - 7_200_000)
        .to_string()
        .into_bytes();
    dedupe.restore(0, HashMap::from([("k1".to_string(), old)]));
    assert!(dedupe.process(0, &record(0, 1, "k1"), &mut Effects::default()));
}

#[test]
fn the_record_that_carried_a_key_passes_again_when_it_is_read_again() {
    let mut dedupe = Dedupe::new("dedupe", &config(), None);
    let mut effects = Effects::default();
    assert!(dedupe.process(0, &record(0, 7, "k1"), &mut effects));
    // After a crash the batch is read again on the restored state.
    let mut restored = restored(effects);
    let mut again = Effects::default();
    assert!(
        restored.process(0, &record(0, 7, "k1"), &mut again),
        "the same record"
    );
    assert!(again.changelog.is_empty(), "nothing new to remember");
    assert!(
        !restored.process(0, &record(0, 8, "k1"), &mut again),
        "a repeat"
    );
    let mut other_topic = record(0, 7, "k1");
    other_topic.topic = "inventory.reservation".into();
    assert!(
        !restored.process(0, &other_topic, &mut again),
        "same offset, other topic"
    );
}

#[test]
fn values_written_before_origins_were_kept_still_drop_repeats() {
    let mut dedupe = Dedupe::new("dedupe", &config(), None);
    let at = erpstream_schemas::now_millis().to_string().into_bytes();
    dedupe.restore(0, HashMap::from([("k1".to_string(), at)]));
    assert!(!dedupe.process(0, &record(0, 1, "k1"), &mut Effects::default()));
}

#[test]
fn a_purge_tombstones_expired_keys_and_keeps_the_rest() {
    let mut dedupe = Dedupe::new("dedupe", &config(), None);
    // Within the hour's retention when restored, past it a second later.
    let old = (erpstream_schemas::now_millis() - 3_600_000 + 1_000)
        .to_string()
        .into_bytes();
    dedupe.restore(0, HashMap::from([("old".to_string(), old)]));
    std::thread::sleep(std::time::Duration::from_millis(1_100));
    let mut effects = Effects::default();
    for i in 0..super::PURGE_EVERY {
        dedupe.process(0, &record(0, i as i64, &format!("k{i}")), &mut effects);
    }
    let tombstones: Vec<&str> = effects
        .changelog
        .iter()
        .filter(|(_, _, _, value)| value.is_none())
        .map(|(_, _, key, _)| key.as_str())
        .collect();
    assert_eq!(tombstones, ["old"]);
    // Nothing is old enough at the next purge: only the new keys are written.
    let mut next = Effects::default();
    for i in 0..super::PURGE_EVERY {
        let offset = (super::PURGE_EVERY + i) as i64;
        dedupe.process(0, &record(0, offset, &format!("n{i}")), &mut next);
    }
    assert_eq!(next.changelog.len(), super::PURGE_EVERY as usize);
    assert!(next.changelog.iter().all(|(_, _, _, v)| v.is_some()));
}

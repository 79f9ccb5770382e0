use erpstream_schemas::{InventoryChange, Reservation, ReservationAction};
use rust_decimal::Decimal;

use super::state::{Applied, SkuState};

fn change(at: i64, qty: i64) -> InventoryChange {
    InventoryChange {
        event_id: "e".into(),
        idempotency_key: format!("k{at}"),
        source_system: "ERP".into(),
        source: "erp".into(),
        occurred_at: at,
        ingested_at: at,
        sku: "A".into(),
        location_code: "WH".into(),
        new_quantity: Some(Decimal::from(qty)),
        allocated_qty: None,
        in_transit_qty: None,
        quantity_change: None,
        change_reason: None,
        reference_id: None,
    }
}

#[test]
fn older_quantity_after_newer_is_ignored() {
    let mut sku = SkuState::default();
    assert_eq!(
        sku.apply(&change(2_000, 14), 1, Decimal::ZERO, 0),
        Applied::Changed
    );
    assert_eq!(
        sku.apply(&change(1_000, 15), 2, Decimal::ZERO, 0),
        Applied::Stale
    );
    assert_eq!(sku.locations["WH"].on_hand, Decimal::from(14));
    assert_eq!(sku.version, 1);
}

#[test]
fn reprocessing_the_same_record_changes_nothing() {
    let mut sku = SkuState::default();
    sku.apply(&change(1_000, 5), 7, Decimal::ZERO, 0);
    let before = sku.clone();
    assert_eq!(
        sku.apply(&change(1_000, 5), 7, Decimal::ZERO, 0),
        Applied::Stale
    );
    assert_eq!(sku, before);
}

#[test]
fn equal_erp_times_follow_topic_order() {
    let mut sku = SkuState::default();
    sku.apply(&change(1_000, 5), 1, Decimal::ZERO, 0);
    assert_eq!(
        sku.apply(&change(1_000, 4), 2, Decimal::ZERO, 0),
        Applied::Changed
    );
    assert_eq!(sku.locations["WH"].on_hand, Decimal::from(4));
}

#[test]
fn available_subtracts_safety_stock_and_never_goes_negative() {
    let mut sku = SkuState::default();
    sku.apply(&change(1, 5), 1, Decimal::from(2), 0);
    assert_eq!(sku.locations["WH"].available(), Decimal::from(3));
    sku.apply(&change(2, 1), 2, Decimal::from(2), 0);
    assert_eq!(sku.locations["WH"].available(), Decimal::ZERO);
    sku.apply(&change(3, -4), 3, Decimal::from(2), 0);
    assert_eq!(sku.locations["WH"].available(), Decimal::ZERO);
}

#[test]
fn same_quantity_again_is_unchanged_but_advances_erp_time() {
    let mut sku = SkuState::default();
    sku.apply(&change(1, 5), 1, Decimal::ZERO, 0);
    assert_eq!(
        sku.apply(&change(2, 5), 2, Decimal::ZERO, 0),
        Applied::Unchanged
    );
    assert_eq!(sku.locations["WH"].erp_time, 2);
    assert_eq!(sku.version, 1);
}

fn step(action: ReservationAction, reference: &str, qty: i64, at: i64) -> Reservation {
    Reservation::step(
        action,
        ("storefront", "api"),
        reference,
        "A",
        "WH",
        Decimal::from(qty),
        at,
        at,
    )
}

fn figures(sku: &SkuState) -> (Decimal, Decimal, Decimal) {
    let l = &sku.locations["WH"];
    (l.on_hand, l.reserved(), l.available())
}

fn d(n: i64) -> Decimal {
    Decimal::from(n)
}

#[test]
fn holds_never_make_available_negative() {
    let mut sku = SkuState::default();
    sku.apply(&change(1_000, 5), 1, Decimal::ZERO, 0);
    sku.reserve(
        &step(ReservationAction::Hold, "A1", 3, 2_000),
        Decimal::ZERO,
        2_000,
    );
    assert_eq!(figures(&sku), (d(5), d(3), d(2)));
    sku.reserve(
        &step(ReservationAction::Hold, "B2", 3, 2_001),
        Decimal::ZERO,
        2_001,
    );
    assert_eq!(figures(&sku), (d(5), d(6), d(0)));
}

#[test]
fn a_repeated_hold_takes_nothing_twice() {
    let mut sku = SkuState::default();
    sku.apply(&change(1_000, 5), 1, Decimal::ZERO, 0);
    let hold = step(ReservationAction::Hold, "A1", 3, 2_000);
    sku.reserve(&hold, Decimal::ZERO, 2_000);
    let before = sku.clone();
    assert_eq!(sku.reserve(&hold, Decimal::ZERO, 2_500), Applied::Stale);
    assert_eq!(sku, before);
}

#[test]
fn the_first_erp_figure_after_the_write_back_releases_the_hold() {
    let mut sku = SkuState::default();
    sku.apply(&change(1_000, 5), 1, Decimal::ZERO, 0);
    sku.reserve(
        &step(ReservationAction::Hold, "A1", 3, 2_000),
        Decimal::ZERO,
        2_000,
    );
    sku.reserve(
        &step(ReservationAction::Hold, "B2", 3, 2_000),
        Decimal::ZERO,
        2_000,
    );
    sku.reserve(
        &step(ReservationAction::WrittenBack, "A1", 3, 3_000),
        Decimal::ZERO,
        3_000,
    );
    // A figure from before the ERP took order A does not include it.
    sku.apply(&change(2_500, 5), 2, Decimal::ZERO, 3_100);
    assert_eq!(figures(&sku), (d(5), d(6), d(0)));
    // The ERP's figure after it does: A is released, B (not written back) stays held.
    sku.apply(&change(3_500, 2), 3, Decimal::ZERO, 3_600);
    assert_eq!(figures(&sku), (d(2), d(3), d(0)));
    // A late repeat of A's hold is not taken again.
    let before = sku.clone();
    sku.reserve(
        &step(ReservationAction::Hold, "A1", 3, 2_000),
        Decimal::ZERO,
        4_000,
    );
    assert_eq!(sku, before);
}

#[test]
fn a_write_back_acknowledged_before_an_applied_figure_releases_at_once() {
    let mut sku = SkuState::default();
    sku.reserve(
        &step(ReservationAction::Hold, "A1", 3, 2_000),
        Decimal::ZERO,
        2_000,
    );
    // The ERP's webhook overtook our record of its acknowledgement.
    sku.apply(&change(3_500, 2), 1, Decimal::ZERO, 3_600);
    assert_eq!(figures(&sku), (d(2), d(3), d(0)));
    sku.reserve(
        &step(ReservationAction::WrittenBack, "A1", 3, 3_000),
        Decimal::ZERO,
        3_700,
    );
    assert_eq!(figures(&sku), (d(2), d(0), d(2)));
}

#[test]
fn cancellation_and_expiry_give_the_stock_back() {
    let mut sku = SkuState::default();
    sku.apply(&change(1_000, 5), 1, Decimal::ZERO, 0);
    sku.reserve(
        &step(ReservationAction::Hold, "A1", 3, 2_000),
        Decimal::ZERO,
        2_000,
    );
    sku.reserve(
        &step(ReservationAction::Hold, "B2", 1, 5_000),
        Decimal::ZERO,
        5_000,
    );
    sku.reserve(
        &step(ReservationAction::Release, "B2", 1, 6_000),
        Decimal::ZERO,
        6_000,
    );
    assert_eq!(figures(&sku), (d(5), d(3), d(2)));
    let (expired, outcome) = sku.expire(2_001, Decimal::ZERO, 9_000);
    assert_eq!((expired, outcome), (1, Applied::Changed));
    assert_eq!(figures(&sku), (d(5), d(0), d(5)));
    assert!(sku.locations.values().all(|l| l.holds().is_empty()));
    assert!(sku.forget_ended(10_000));
}

#[test]
fn read_offsets_are_kept_per_topic_place_and_only_where_a_record_was_taken_in() {
    let mut read = super::state::ReadUpTo::default();
    read.advance(2, 5);
    read.advance(2, 3);
    assert!(!read.covers(0, 0), "nothing read from topic 0");
    assert!(read.covers(2, 5) && read.covers(2, 4) && !read.covers(2, 6));
    assert!(!read.covers(3, 0));
    assert_eq!(read.iter().collect::<Vec<_>>(), [(2, 5)]);
}

#[test]
fn state_with_holds_survives_the_changelog() {
    let mut sku = SkuState::default();
    sku.apply(&change(1_000, 5), 1, Decimal::ZERO, 0);
    sku.reserve(
        &step(ReservationAction::Hold, "A1", 3, 2_000),
        Decimal::ZERO,
        2_000,
    );
    sku.reserve(
        &step(ReservationAction::WrittenBack, "A1", 3, 3_000),
        Decimal::ZERO,
        3_000,
    );
    let mut topics = crate::processors::Topics::default();
    for json in [false, true] {
        let bytes = if json {
            sku.to_json(&topics)
        } else {
            sku.to_bytes(&topics)
        };
        assert_eq!(SkuState::from_bytes(&bytes, &mut topics).unwrap(), sku);
    }
}

#[test]
fn a_cancellation_without_location_releases_the_order_everywhere() {
    let mut sku = SkuState::default();
    sku.apply(&change(1_000, 5), 1, Decimal::ZERO, 0);
    sku.reserve(
        &step(ReservationAction::Hold, "A1", 3, 2_000),
        Decimal::ZERO,
        2_000,
    );
    let mut cancel = step(ReservationAction::Release, "A1", 0, 3_000);
    cancel.location_code = String::new();
    assert_eq!(sku.reserve(&cancel, Decimal::ZERO, 3_000), Applied::Changed);
    assert_eq!(figures(&sku), (d(5), d(0), d(5)));
    assert_eq!(sku.reserve(&cancel, Decimal::ZERO, 3_100), Applied::Stale);
}

mod commit_path {
    //! What makes one flush of a batch's outputs and changelog writes safe (see the
    //! processors' contract): records read again are recognised, and resuming emits again
    //! what may have been lost.
    use std::collections::HashMap;

    use erpstream_connectors::kafka::RawRecord;
    use erpstream_schemas::InventoryChange;
    use rust_decimal::Decimal;

    use super::super::{Inventory, InventoryConfig};
    use crate::processors::{Decoded, Effects, Emit, Processor, Record};

    const TOPIC: &str = "t.inventory.change";

    fn relative(sku: &str, offset: i64, delta: i64) -> Record {
        Record {
            topic: TOPIC.into(),
            partition: 0,
            offset,
            raw: RawRecord::default(),
            trace: None,
            event: Decoded::InventoryChange(InventoryChange {
                event_id: format!("e{offset}"),
                idempotency_key: format!("k{offset}"),
                source_system: "ERP".into(),
                source: "erp".into(),
                occurred_at: 1_000 + offset,
                ingested_at: 1_000 + offset,
                sku: sku.into(),
                location_code: "WH".into(),
                new_quantity: None,
                allocated_qty: None,
                in_transit_qty: None,
                quantity_change: Some(Decimal::from(delta)),
                change_reason: None,
                reference_id: None,
            }),
        }
    }

    fn inventory() -> Inventory {
        let config: InventoryConfig =
            serde_yaml_ng::from_str("{ inputs: [dedupe], output: available }").unwrap();
        Inventory::new("inventory", &config, "t.available".into())
    }

    /// A new processor restored from `effects`' changelog writes of partition 0.
    fn restored(effects: Effects) -> Inventory {
        let entries: HashMap<String, Vec<u8>> = effects
            .changelog
            .into_iter()
            .map(|(_, _, key, value)| (key, value.unwrap()))
            .collect();
        let mut inventory = inventory();
        inventory.restore(0, entries);
        inventory
    }

    fn on_hand(inventory: &Inventory, sku: &str) -> Decimal {
        inventory.sku(sku).unwrap().locations["WH"].on_hand
    }

    fn emitted_skus(effects: &Effects) -> Vec<String> {
        let mut skus: Vec<String> = effects
            .emit
            .iter()
            .filter_map(|e| match e {
                Emit::Available(_, available, _) => Some(available.sku.clone()),
                Emit::Raw(_) => None,
            })
            .collect();
        skus.sort();
        skus
    }

    #[test]
    fn a_relative_change_read_again_after_a_crash_is_not_applied_twice() {
        let mut first = inventory();
        let mut effects = Effects::default();
        first.process(1, &relative("A", 5, 3), &mut effects);
        assert_eq!(effects.emit.len(), 1);
        let mut inventory = restored(effects);
        let mut again = Effects::default();
        inventory.process(1, &relative("A", 5, 3), &mut again);
        assert!(
            again.emit.is_empty() && again.changelog.is_empty(),
            "nothing again"
        );
        assert_eq!(on_hand(&inventory, "A"), Decimal::from(3));
        inventory.process(1, &relative("A", 6, 2), &mut again);
        assert_eq!(
            on_hand(&inventory, "A"),
            Decimal::from(5),
            "the next one counts"
        );
    }

    #[test]
    fn resuming_emits_again_what_came_from_records_after_the_committed_offset() {
        let mut first = inventory();
        let mut effects = Effects::default();
        first.process(1, &relative("A", 5, 3), &mut effects);
        first.process(1, &relative("B", 9, 4), &mut effects);
        let mut inventory = restored(effects);
        let resumed = |inventory: &mut Inventory, from: &[(&str, i64)]| {
            let from = from.iter().map(|(t, o)| (t.to_string(), *o)).collect();
            let mut effects = Effects::default();
            inventory.resume(1, 0, &from, &mut effects);
            emitted_skus(&effects)
        };
        assert_eq!(resumed(&mut inventory, &[(TOPIC, 7)]), ["B"]);
        assert_eq!(
            resumed(&mut inventory, &[(TOPIC, 10)]),
            Vec::<String>::new()
        );
        assert_eq!(
            resumed(&mut inventory, &[]),
            ["A", "B"],
            "no committed offset"
        );
        // What is emitted again is the restored state, with its version.
        let mut effects = Effects::default();
        inventory.resume(1, 0, &HashMap::from([(TOPIC.to_string(), 9)]), &mut effects);
        match &effects.emit[..] {
            [Emit::Available(_, available, _)] => {
                assert_eq!(available.version, 1);
                assert_eq!(available.idempotency_key, "B@1");
                assert_eq!(available.locations[0].available, Decimal::from(4));
            }
            _ => panic!("expected one inventory.available"),
        }
    }

    #[test]
    fn a_restore_in_changelog_order_keeps_the_last_value_of_every_key() {
        let mut source = inventory();
        let mut effects = Effects::default();
        for round in 0..3 {
            for i in 0..500 {
                let sku = format!("S{:04}", (i * 7919) % 500);
                source.process(1, &relative(&sku, round * 500 + i, 1), &mut effects);
            }
        }
        let mut inventory = inventory();
        inventory.restore_begin(0);
        for (_, _, sku, value) in &effects.changelog {
            inventory.restore_entry(0, sku.clone(), value.as_deref());
        }
        inventory.restore_entry(0, "S0007".into(), None);
        inventory.restore_end(0);
        let view = inventory.view();
        let partitions = view.read();
        let skus = &partitions[&0];
        assert_eq!(skus.len(), 499, "every key once, the deleted one gone");
        for (sku, state) in skus {
            assert_eq!(**state, source.sku(sku).unwrap(), "{sku}");
            assert_eq!(state.locations["WH"].on_hand, Decimal::from(3));
        }
        assert!(!skus.contains_key("S0007"));
    }
}

use erpstream_schemas::InventoryChange;
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
    assert_eq!(sku.locations["WH"].available, Decimal::from(3));
    sku.apply(&change(2, 1), 2, Decimal::from(2), 0);
    assert_eq!(sku.locations["WH"].available, Decimal::ZERO);
    sku.apply(&change(3, -4), 3, Decimal::from(2), 0);
    assert_eq!(sku.locations["WH"].available, Decimal::ZERO);
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

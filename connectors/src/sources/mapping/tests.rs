//! Mapping unit tests: binding, conversion, checks.

use super::*;

fn mapping(yaml: &str) -> Mapping {
    serde_yaml_ng::from_str(yaml).expect("mapping")
}

fn columns(names: &[(&str, bool)]) -> Vec<Column> {
    names
        .iter()
        .map(|(n, key)| Column {
            name: n.to_string(),
            key: *key,
        })
        .collect()
}

fn envelope() -> Envelope<'static> {
    Envelope {
        idempotency_key: "k",
        source: "db",
        source_system: "postgres",
        occurred_at: 1_000,
        ingested_at: 2_000,
    }
}

const STOCK: &str = "topic: inventory.change\nfields:\n  sku: item\n  location_code: { const: WH-1 }\n  new_quantity: qty\n";

#[test]
fn a_row_becomes_a_typed_event_with_exact_decimals() {
    let bound = Bound::new(
        &mapping(STOCK),
        EventKind::InventoryChange,
        &columns(&[("id", true), ("item", false), ("qty", false)]),
        "column",
    )
    .expect("bound");
    let row = [
        Cell::Text("1"),
        Cell::Text("SKU-1"),
        Cell::Text("45000.125"),
    ];
    let Mapped::InventoryChange(event) = bound.event(&row, None, &envelope()).expect("event")
    else {
        panic!("wrong kind")
    };
    assert_eq!(event.sku, "SKU-1");
    assert_eq!(event.location_code, "WH-1");
    assert_eq!(
        event.new_quantity,
        Some("45000.125".parse().expect("decimal"))
    );
    assert_eq!(event.occurred_at, 1_000);
    assert_eq!(event.quantity_change, None);
    assert_eq!(bound.identity(&row), "1");
}

#[test]
fn bad_values_name_the_field_and_column() {
    let bound = Bound::new(
        &mapping(STOCK),
        EventKind::InventoryChange,
        &columns(&[("id", true), ("item", false), ("qty", false)]),
        "column",
    )
    .expect("bound");
    let err = bound
        .event(
            &[Cell::Text("1"), Cell::Text("S"), Cell::Text("1.0005")],
            None,
            &envelope(),
        )
        .expect_err("too precise");
    assert_eq!(err.field, "new_quantity");
    assert!(err.reason.contains("column qty"), "{err}");
    let err = bound
        .event(
            &[Cell::Text("1"), Cell::Null, Cell::Text("1")],
            None,
            &envelope(),
        )
        .expect_err("null sku");
    assert_eq!(err.field, "sku");
    let err = bound
        .event(
            &[Cell::Text("1"), Cell::Unchanged, Cell::Text("1")],
            None,
            &envelope(),
        )
        .expect_err("toast");
    assert!(err.reason.contains("REPLICA IDENTITY FULL"), "{err}");
    let from_old = bound
        .event(
            &[Cell::Text("1"), Cell::Unchanged, Cell::Text("1")],
            Some(&[Cell::Text("1"), Cell::Text("OLD"), Cell::Text("0")]),
            &envelope(),
        )
        .expect("from the old row");
    assert_eq!(from_old.key(), "OLD");
}

#[test]
fn a_missing_column_is_refused_at_bind() {
    let err = Bound::new(
        &mapping(STOCK),
        EventKind::InventoryChange,
        &columns(&[("id", true), ("item", false)]),
        "column",
    )
    .expect_err("qty is gone");
    assert_eq!(err.field, "new_quantity");
    assert!(err.reason.contains("column qty does not exist"));
}

#[test]
fn mappings_are_checked_against_the_contract() {
    let bad = mapping(
        "topic: catalog.update\nfields:\n  group_id: id\n  colour: c\n  variants[0].selling_price: { const: abc }\n  idempotency_key: x\n",
    );
    let problems = check(&bad, EventKind::CatalogUpdate);
    let paths: Vec<&str> = problems.iter().map(|(p, _)| p.as_str()).collect();
    assert!(paths.contains(&"fields.colour"), "{problems:?}");
    assert!(
        paths.contains(&"fields.variants[0].selling_price"),
        "{problems:?}"
    );
    assert!(paths.contains(&"fields.idempotency_key"), "{problems:?}");
    assert!(paths.contains(&"fields.group_name"), "{problems:?}");
    assert!(paths.contains(&"fields.variants[0].sku"), "{problems:?}");
    assert!(check(&mapping(STOCK), EventKind::InventoryChange).is_empty());
}

#[test]
fn nested_lists_and_arrays_map_from_one_row() {
    let m = mapping(
        "topic: catalog.update\nfields:\n  group_id: id\n  group_name: name\n  is_active: active\n  category_path: path\n  variants[0].sku: id\n  variants[0].selling_price: price\n",
    );
    assert!(
        check(&m, EventKind::CatalogUpdate).is_empty(),
        "{:?}",
        check(&m, EventKind::CatalogUpdate)
    );
    let bound = Bound::new(
        &m,
        EventKind::CatalogUpdate,
        &columns(&[
            ("id", true),
            ("name", false),
            ("active", false),
            ("path", false),
            ("price", false),
        ]),
        "column",
    )
    .expect("bound");
    let row = [
        Cell::Text("G1"),
        Cell::Text("Shirt"),
        Cell::Text("t"),
        Cell::Text("{Men,\"Shirts, formal\"}"),
        Cell::Text("19.99"),
    ];
    let Mapped::CatalogUpdate(event) = bound.event(&row, None, &envelope()).expect("event") else {
        panic!("wrong kind")
    };
    assert_eq!(event.category_path, vec!["Men", "Shirts, formal"]);
    assert!(event.is_active);
    assert_eq!(event.variants.len(), 1);
    assert_eq!(
        event.variants[0].selling_price,
        Some("19.99".parse().expect("decimal"))
    );
}

#[test]
fn deletes_become_tombstones_or_events() {
    let cols = columns(&[("item", true), ("qty", false)]);
    let m = mapping(
        "topic: inventory.change\nfields:\n  sku: item\n  location_code: { const: W }\n  new_quantity: qty\non_delete: { set: { new_quantity: 0, change_reason: DELETED } }\n",
    );
    let bound = Bound::new(&m, EventKind::InventoryChange, &cols, "column").expect("bound");
    let Deleted::Event(event) = bound
        .deleted(&[Cell::Text("S1"), Cell::Null], &envelope())
        .expect("delete")
    else {
        panic!("not an event")
    };
    let Mapped::InventoryChange(event) = *event else {
        panic!("wrong kind")
    };
    assert_eq!(event.new_quantity, Some(Decimal::ZERO));
    assert_eq!(event.change_reason.as_deref(), Some("DELETED"));
    let tombstone = Bound::new(
        &mapping(STOCK),
        EventKind::InventoryChange,
        &columns(&[("item", true), ("qty", false)]),
        "column",
    )
    .expect("bound");
    assert!(matches!(
        tombstone.deleted(&[Cell::Text("S1"), Cell::Null], &envelope()),
        Ok(Deleted::Tombstone(k)) if k == "S1"
    ));
}

#[test]
fn transforms_concat_scale_and_bucket() {
    let m = mapping(
        "topic: inventory.change\nfields:\n  sku: { concat: [item, variant], separator: '-' }\n  location_code: { field: day, bucket: month }\n  new_quantity: { field: grams, scale: 0.001 }\n  change_reason: { field: day, bucket: week }\n",
    );
    assert!(check(&m, EventKind::InventoryChange).is_empty());
    let cols = columns(&[
        ("item", true),
        ("variant", true),
        ("day", false),
        ("grams", false),
    ]);
    let bound = Bound::new(&m, EventKind::InventoryChange, &cols, "field").expect("bound");
    let row = [
        Cell::Text("SHIRT"),
        Cell::Text("XL"),
        Cell::Text("2026-11-27 10:00:00"),
        Cell::Text("1250"),
    ];
    let Mapped::InventoryChange(event) = bound.event(&row, None, &envelope()).expect("event")
    else {
        panic!("wrong kind")
    };
    assert_eq!(event.sku, "SHIRT-XL");
    assert_eq!(event.location_code, "2026-11-01");
    assert_eq!(event.change_reason.as_deref(), Some("2026-11-23"));
    assert_eq!(event.new_quantity, Some("1.25".parse().expect("decimal")));
    let too_fine = [row[0], row[1], row[2], Cell::Text("0.5")];
    let err = bound
        .event(&too_fine, None, &envelope())
        .expect_err("0.0005 kg");
    assert_eq!(err.field, "new_quantity");
    let bad = mapping(
        "topic: inventory.change\nfields:\n  sku: item\n  location_code: { field: w, scale: 2 }\n  new_quantity: { field: d, bucket: month }\n",
    );
    let paths: Vec<String> = check(&bad, EventKind::InventoryChange)
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert_eq!(paths, ["fields.location_code", "fields.new_quantity"]);
}

#[test]
fn postgres_timestamps_parse() {
    assert_eq!(parse_time("1970-01-01 00:00:01.5+00"), Some(1_500));
    assert_eq!(parse_time("1970-01-01 01:00:01+01"), Some(1_000));
    assert_eq!(parse_time("1970-01-01 00:00:02"), Some(2_000));
    assert_eq!(parse_time("1970-01-02"), Some(86_400_000));
    assert_eq!(parse_time("soon"), None);
}

#[test]
fn periods_at_the_edge_of_the_calendar_are_refused_not_a_panic() {
    let first = chrono::NaiveDate::MIN
        .and_hms_opt(0, 0, 0)
        .expect("midnight")
        .and_utc()
        .timestamp_millis();
    for bucket in [
        Bucket::Day,
        Bucket::Week,
        Bucket::Month,
        Bucket::Quarter,
        Bucket::Year,
    ] {
        for ms in [first, first + 1, i64::MIN, i64::MAX] {
            let _ = convert::bucket_start(&ms.to_string(), bucket);
        }
    }
}

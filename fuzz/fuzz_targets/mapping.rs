//! Mapping conversions: source values (Postgres text forms, JSON scalars' text) through
//! each kind of field source — renames into strings, exact decimals, integers, booleans,
//! timestamps, arrays; `scale`, `bucket`, `concat` and `const` — and deletes, with the
//! mappings of `fuzz/fixtures.yaml`.
//!
//! Input: one byte picking a mapping, then the row's values separated by 0xFF; a value of
//! the single byte 0xFE is NULL, 0xFD an unchanged TOASTed value, 0xFC a value a key-only
//! old row does not carry. Bit 7 of the first byte passes the row as its own old row.
#![no_main]

mod fixtures;

use std::sync::LazyLock;

use erpstream_connectors::sources::mapping::{Bound, Cell, Column, Envelope};
use libfuzzer_sys::fuzz_target;

static BOUND: LazyLock<Vec<Bound>> = LazyLock::new(|| {
    fixtures::load()
        .mappings
        .into_iter()
        .map(|fixture| {
            let columns: Vec<Column> = fixture
                .columns
                .into_iter()
                .enumerate()
                .map(|(i, name)| Column { name, key: i == 0 })
                .collect();
            let kind = fixtures::kind(&fixture.mapping.topic);
            Bound::new(&fixture.mapping, kind, &columns, "column").expect("bound")
        })
        .collect()
});

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    let bound = &BOUND[usize::from(mode & 0x7f) % BOUND.len()];
    let texts: Vec<String> = rest
        .split(|b| *b == 0xff)
        .map(|part| String::from_utf8_lossy(part).into_owned())
        .collect();
    let row: Vec<Cell> = rest
        .split(|b| *b == 0xff)
        .zip(&texts)
        .map(|(raw, text)| match raw {
            [0xfe] => Cell::Null,
            [0xfd] => Cell::Unchanged,
            [0xfc] => Cell::Missing,
            _ => Cell::Text(text),
        })
        .collect();
    let envelope = Envelope {
        idempotency_key: "k",
        source: "db",
        source_system: "postgres",
        occurred_at: 1_700_000_000_000,
        ingested_at: 1_700_000_000_001,
    };
    let old = (mode & 0x80 != 0).then_some(row.as_slice());
    let _ = bound.identity(&row);
    if let Err(e) = bound.event(&row, old, &envelope) {
        assert!(!e.field.is_empty(), "the refusal names the field: {e}");
    }
    if let Err(e) = bound.deleted(&row, &envelope) {
        assert!(!e.field.is_empty(), "the refusal names the field: {e}");
    }
});

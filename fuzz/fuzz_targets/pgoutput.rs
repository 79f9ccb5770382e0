//! pgoutput messages (Relation, Insert, Update, Delete, Truncate, …) through `pg_cdc`'s
//! decoding: relation binding against each table's mapping (`fuzz/fixtures.yaml`), tuples
//! into cells, the mapped event, tombstone or dead letter. Input: messages, each prefixed
//! by its length (u16, big-endian); all in one transaction.
#![no_main]

mod fixtures;

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use erpstream_connectors::sources::pg_cdc::{Change, Decoder, Position, Table};
use libfuzzer_sys::fuzz_target;

/// The captured tables of `fuzz/fixtures.yaml`, parsed once.
static CAPTURED: LazyLock<HashMap<String, (Arc<Table>, Vec<String>)>> = LazyLock::new(|| {
    fixtures::load()
        .tables
        .into_iter()
        .map(|fixture| {
            let kind = fixtures::kind(&fixture.mapping.topic);
            let table = Table {
                name: fixture.table.clone(),
                mapping: fixture.mapping,
                kind,
                topic: kind.topic().to_string(),
                dlq_topic: format!("{}.dlq", kind.topic()),
            };
            (fixture.table, (Arc::new(table), fixture.keys))
        })
        .collect()
});

fuzz_target!(|input: &[u8]| {
    let mut decoder = Decoder::new("erp_db", "ERPNext", CAPTURED.clone());
    let mut position = Position {
        commit_lsn: 0x16B_3748_u64.into(),
        commit_ms: 1_700_000_000_000,
        changes: 0,
    };
    let mut rest = input;
    while let [a, b, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*a, *b])).min(tail.len());
        let (message, tail) = tail.split_at(len);
        rest = tail;
        match decoder.decode(Bytes::copy_from_slice(message), Some(&mut position)) {
            Ok(Some(decided)) => {
                if let Change::Refused { error, row } = &decided.change {
                    assert!(
                        !error.field.is_empty(),
                        "the refusal names the field: {error}"
                    );
                    assert!(row.starts_with('['), "the dead letter carries the row");
                }
            }
            Ok(None) => {}
            // The stream stops here in production too.
            Err(_) => return,
        }
    }
});

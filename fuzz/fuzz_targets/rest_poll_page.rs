//! ERP pages as `rest_poll` reads them — ERPNext (`{"data": […]}`) and Epicor Kinetic
//! OData (`{"value": […], "@odata.nextLink": …}`) — then every record through its
//! resource's mapping (dotted fields, JSON numbers as exact text; `fuzz/fixtures.yaml`). Input: one byte picking
//! the preset and resource, then the body.
#![no_main]

mod fixtures;

use std::sync::LazyLock;

use erpstream_connectors::sources::rest_poll::{self, Preset, Resource};
use libfuzzer_sys::fuzz_target;

/// The resources of `fuzz/fixtures.yaml`.
static PARSED: LazyLock<Vec<(Preset, Resource)>> = LazyLock::new(|| {
    fixtures::load()
        .resources
        .into_iter()
        .enumerate()
        .map(|(i, fixture)| {
            let kind = fixtures::kind(&fixture.resource.topic);
            let resource = Resource {
                name: format!("r{i}"),
                config: fixture.resource,
                kind,
                topic: kind.topic().to_string(),
                dlq_topic: format!("{}.dlq", kind.topic()),
            };
            (fixture.preset, resource)
        })
        .collect()
});

fuzz_target!(|input: &[u8]| {
    let Some((&mode, body)) = input.split_first() else {
        return;
    };
    let (preset, resource) = &PARSED[usize::from(mode) % PARSED.len()];
    let Ok(records) = rest_poll::map_page(*preset, resource.clone(), body) else {
        return;
    };
    for record in records {
        if let Err(e) = record {
            assert!(!e.field.is_empty(), "the refusal names the field: {e}");
        }
    }
});

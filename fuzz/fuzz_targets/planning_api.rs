//! Planning API sync bodies (`/erp/{products,inventory,demand-actuals}/sync`) as the
//! `planning_api` source reads them: the envelope, then every item against its endpoint.
//! Input: one byte picking the endpoint, then the body.
#![no_main]

use erpstream_connectors::sources::planning_api::payload::{self, Endpoint};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&mode, body)) = input.split_first() else {
        return;
    };
    let endpoint = [
        Endpoint::Products,
        Endpoint::Inventory,
        Endpoint::DemandActuals,
    ][usize::from(mode) % 3];
    let envelope = match payload::envelope(body) {
        Ok(envelope) => envelope,
        Err(e) => {
            assert!(!e.field.is_empty(), "the refusal names the field: {e:?}");
            return;
        }
    };
    for (index, item) in envelope.items.iter().enumerate() {
        if let Err(errors) = payload::item(endpoint, index, item) {
            assert!(!errors.is_empty());
            for e in errors {
                assert!(
                    e.field.starts_with(&format!("items[{index}]")),
                    "the refusal names the item's field: {e:?}"
                );
            }
        }
    }
});

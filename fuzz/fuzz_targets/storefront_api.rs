//! Storefront API bodies (`POST /orders`, `POST /inventory/adjustments`) as the
//! `storefront_api` source reads them. Input: one mode byte, then the body; bit 0 picks
//! the endpoint, bit 1 whether the source has a default location.
#![no_main]

use erpstream_connectors::sources::storefront_api::payload::{self, Invalid};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&mode, body)) = input.split_first() else {
        return;
    };
    let location = (mode & 2 != 0).then_some("WH-1");
    let refused = if mode & 1 == 0 {
        payload::order(body, location).err()
    } else {
        payload::adjustment(body, location).err()
    };
    if let Some(Invalid::Shape(e) | Invalid::Rule(e)) = refused {
        assert!(!e.field.is_empty(), "the refusal names the field: {e:?}");
    }
});

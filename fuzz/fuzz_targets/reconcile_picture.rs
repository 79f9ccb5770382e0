//! Reconciliation pictures (CSV, JSON arrays, Frappe `{"data": …}` and OData
//! `{"value": …}` bodies) as `erpstream reconcile --against` reads them. Input: the file.
#![no_main]

use erpstream_pipeline::tools::reconcile::parse_picture;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    if let Err(reason) = parse_picture(input, "picture.csv") {
        assert!(!reason.is_empty());
    }
});

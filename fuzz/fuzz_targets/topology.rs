//! Topology files through parsing and validation (`erpstream check`, start-up). Input: the
//! file's text.
#![no_main]

use erpstream_pipeline::topology::Topology;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    if let Err(errors) = Topology::parse(text) {
        assert!(!errors.0.is_empty(), "a refusal lists its problems");
        for problem in &errors.0 {
            assert!(!problem.rule.is_empty(), "every problem says what is wrong");
        }
    }
});

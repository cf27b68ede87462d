//! libFuzzer target `tag_filter`: every input through `checks/filter.rs`, the same check the stable
//! replay test runs on the committed corpus (see docs/fuzzing.md).
#![no_main]

#[path = "../checks/filter.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::check(data));

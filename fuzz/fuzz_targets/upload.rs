//! libFuzzer target `upload`: every input through `checks/upload.rs`, the same check the stable
//! replay test runs on the committed corpus (see docs/fuzzing.md).
#![no_main]

#[path = "../checks/upload.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::check(data));

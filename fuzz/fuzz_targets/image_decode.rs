//! libFuzzer target `image_decode`: every input through `checks/image.rs`, the same check the stable
//! replay test runs on the committed corpus (see docs/fuzzing.md).
#![no_main]

#[path = "../checks/image.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::check(data));

//! Replays the `upload` and `tag_filter` fuzz targets' committed corpora and regressions on
//! stable, and drives the tag-filter check with proptest.
//!
//! It exists so that every input the fuzzer kept (`fuzz/corpus/<target>/`) or crashed on
//! (`fuzz/regressions/<target>/`) goes through the very check the target runs
//! (`fuzz/checks/*.rs`, included here with `#[path]`) in the normal `cargo test --workspace`,
//! without nightly or libFuzzer. See `docs/fuzzing.md`.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, RngSeed};

#[path = "../fuzz/checks/filter.rs"]
mod filter_checks;
#[path = "../fuzz/checks/replay.rs"]
mod replay;
#[path = "../fuzz/checks/upload.rs"]
mod upload_checks;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

#[test]
fn upload_corpus_replays() {
    assert!(replay::replay(&fuzz_dir(), "upload", upload_checks::check) > 0);
}

#[test]
fn tag_filter_corpus_replays() {
    assert!(replay::replay(&fuzz_dir(), "tag_filter", filter_checks::check) > 0);
}

/// Deterministic: a fixed seed, no persistence file.
fn config() -> Config {
    Config {
        cases: 512,
        rng_seed: RngSeed::Fixed(0x5eed_f117),
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// Text made of the filter's own alphabet (separators, braces, quotes, spaces, a few tag
    /// characters), which random bytes rarely hit, through the fuzz target's check.
    #[test]
    fn filter_like_text_holds_the_fuzz_invariants(
        text in r#"[ a-c:,|{}\[\]"\\\t]{0,40}|\{"all": ?\[(\[("[a-c: ]{0,6}",? ?){0,3}\],? ?){0,3}\]\}"#
    ) {
        filter_checks::check(text.as_bytes());
    }
}

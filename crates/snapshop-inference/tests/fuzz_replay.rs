//! Replays the `image_decode` fuzz target's committed corpus and regressions on stable.
//!
//! It exists so that every input the fuzzer kept (`fuzz/corpus/image_decode/`) or crashed on
//! (`fuzz/regressions/image_decode/`) goes through the very check the target runs
//! (`fuzz/checks/image.rs`) in the normal `cargo test --workspace`. See `docs/fuzzing.md`.

use std::path::Path;

#[path = "../../../fuzz/checks/image.rs"]
mod checks;
#[path = "../../../fuzz/checks/replay.rs"]
mod replay;

fn fuzz_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

#[test]
fn image_decode_corpus_replays() {
    let n = replay::replay(&fuzz_dir(), "image_decode", checks::check);
    assert!(n > 0);
}

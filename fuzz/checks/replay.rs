//! Replays a fuzz target's committed inputs through its check, for the stable test runs.
//!
//! It exists so that the corpus the fuzzer grew (`fuzz/corpus/<target>/`) and every crash it
//! found (`fuzz/regressions/<target>/`) keep being checked by `cargo test --workspace`, without
//! nightly or libFuzzer. Included with `#[path]` by `tests/fuzz_replay.rs` and
//! `crates/snapshop-inference/tests/fuzz_replay.rs`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// The files of one directory, sorted; none if it does not exist. `.gitkeep` is skipped.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .map(|e| e.expect("a readable directory entry").path())
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != ".gitkeep"))
        .collect();
    out.sort();
    out
}

/// Runs `check` on every file of `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/`
/// (`fuzz` is `fuzz_dir`), and fails, naming each file that failed, if any check panicked, or if
/// the corpus is missing or empty. Returns the number of inputs replayed.
pub fn replay(fuzz_dir: &Path, target: &str, check: fn(&[u8])) -> usize {
    let corpus = files(&fuzz_dir.join("corpus").join(target));
    assert!(
        !corpus.is_empty(),
        "the corpus of fuzz target `{target}` is missing or empty: {}",
        fuzz_dir.join("corpus").join(target).display()
    );
    let regressions = files(&fuzz_dir.join("regressions").join(target));
    let mut failed = Vec::new();
    for path in corpus.iter().chain(&regressions) {
        let data = std::fs::read(path).expect("a readable corpus file");
        if catch_unwind(AssertUnwindSafe(|| check(&data))).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "fuzz target `{target}`: {} of {} inputs fail their check:\n{}",
        failed.len(),
        corpus.len() + regressions.len(),
        failed.join("\n")
    );
    eprintln!(
        "fuzz target `{target}`: replayed {} corpus and {} regression inputs",
        corpus.len(),
        regressions.len()
    );
    corpus.len() + regressions.len()
}

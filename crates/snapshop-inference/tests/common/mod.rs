//! Shared helpers of the integration tests: where the ONNX Runtime library and the bundles are.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use snapshop_inference::runtime::{DEFAULT_DYLIB, DYLIB_ENV};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// `$ORT_DYLIB_PATH`, else the workspace's venv (tests run in the crate directory, so the
/// working-directory-relative default would not find it).
pub fn dylib() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(DYLIB_ENV).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let p = workspace_root().join(DEFAULT_DYLIB);
    p.is_file().then_some(p)
}

/// Loads ONNX Runtime, or explains why the test is skipped. Set `SNAPSHOP_REQUIRE_ORT=1` (CI) to
/// turn a missing library into a failure.
pub fn init_ort() -> bool {
    match dylib() {
        Some(p) => {
            snapshop_inference::init_runtime(Some(&p)).expect("ONNX Runtime loads");
            true
        }
        None => {
            assert!(
                std::env::var_os("SNAPSHOP_REQUIRE_ORT").is_none(),
                "ONNX Runtime library not found and SNAPSHOP_REQUIRE_ORT is set"
            );
            eprintln!("SKIPPED: ONNX Runtime library not found (set {DYLIB_ENV})");
            false
        }
    }
}

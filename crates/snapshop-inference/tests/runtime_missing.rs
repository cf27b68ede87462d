//! A library that cannot be loaded is an error, not a panic. Its own test binary, because ort
//! keeps the first library it loads for the life of the process.

use snapshop_inference::{init_runtime, InferenceError};

#[test]
fn unloadable_library_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("libonnxruntime.so");
    std::fs::write(&fake, b"not a shared library").unwrap();
    match init_runtime(Some(&fake)) {
        Err(InferenceError::Runtime(msg)) => {
            assert!(msg.contains("libonnxruntime.so"), "{msg}")
        }
        other => panic!("expected a runtime error, got {other:?}"),
    }
}

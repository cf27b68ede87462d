//! The one error type of the inference layer.
//!
//! It exists so that the HTTP service can map every failure of this crate onto a status code
//! without string matching: `Overloaded` → 503 with `Retry-After`, `Preprocess` → 4xx, the rest →
//! 5xx (or a refusal to start, for `Bundle`/`Runtime` at start-up). It must never carry a
//! backend-specific error type (ort's errors are turned into strings here) so that callers do not
//! depend on `ort`.

use std::path::PathBuf;

use crate::preprocess::PreprocessError;

/// Everything that can go wrong in `snapshop-inference`.
#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    /// The bounded inference queue is full. The request was not queued; the HTTP layer answers
    /// 503 with `Retry-After`.
    #[error("inference queue is full")]
    Overloaded,
    /// The worker thread that owns the backend has exited (it panicked, or the queue is shutting
    /// down). Requests will not be served until the service restarts.
    #[error("inference worker is gone")]
    WorkerGone,
    /// ONNX Runtime could not be loaded, or a session could not be created or run.
    #[error("onnx runtime: {0}")]
    Runtime(String),
    /// The model bundle is missing, unreadable, corrupted or inconsistent with its contract.
    #[error("model bundle: {0}")]
    Bundle(String),
    /// A tensor does not have the shape the model expects.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// The uploaded image was refused or could not be decoded.
    #[error(transparent)]
    Preprocess(#[from] PreprocessError),
    /// Reading a bundle file failed.
    #[error("reading {path}: {source}")]
    Io {
        /// The file that could not be read.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl InferenceError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        InferenceError::Io {
            path: path.into(),
            source,
        }
    }

    /// A copy of this error for each request of a failed batch. `InferenceError` is not `Clone`
    /// (it can hold an `io::Error`), so variants with a non-clonable payload are flattened into
    /// their message.
    pub(crate) fn replicate(&self) -> Self {
        match self {
            InferenceError::Overloaded => InferenceError::Overloaded,
            InferenceError::WorkerGone => InferenceError::WorkerGone,
            InferenceError::Runtime(m) => InferenceError::Runtime(m.clone()),
            InferenceError::Bundle(m) => InferenceError::Bundle(m.clone()),
            InferenceError::Shape(m) => InferenceError::Shape(m.clone()),
            other => InferenceError::Runtime(other.to_string()),
        }
    }
}

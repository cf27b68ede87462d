//! The crate's single error type.
//!
//! Exists so that every fallible path (bad vectors, bad snapshots, I/O, cancellation) reports
//! to the service through one enum it can match on. It must never carry a panic payload:
//! anything that reaches here is an expected, recoverable condition.

use crate::Key;

/// Everything that can go wrong in the index.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// A vector offered for insertion is not a finite unit vector.
    #[error("invalid vector for key {key}: {reason}")]
    InvalidVector {
        /// The key the caller tried to insert.
        key: Key,
        /// What was wrong (non-finite component, norm too far from 1, ...).
        reason: String,
    },
    /// A query vector is not a finite unit vector.
    #[error("invalid query vector: {reason}")]
    InvalidQuery {
        /// What was wrong.
        reason: String,
    },
    /// A vector (inserted or queried) or a snapshot has the wrong dimension.
    #[error("dimension mismatch: expected {expected}, got {got}")]
    DimensionMismatch {
        /// The dimension from [`crate::IndexConfig::dim`].
        expected: usize,
        /// The dimension that was offered.
        got: usize,
    },
    /// The configuration cannot be used (for example `max_connections` out of range).
    #[error("invalid index configuration: {0}")]
    InvalidConfig(String),
    /// Reading or writing a snapshot failed.
    #[error("snapshot i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A snapshot exists but cannot be trusted; the caller should rebuild from the store.
    #[error("corrupt snapshot: {0}")]
    CorruptSnapshot(String),
    /// A blocking build or rebuild saw its stop flag set and gave up.
    #[error("cancelled by stop flag")]
    Cancelled,
}

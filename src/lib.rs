//! snapshop: product-image search. Merchants upload tagged products; a phone photo finds them.
//!
//! The request path follows the paper's §4.1: a first pass over TagYNet shop embeddings with the
//! mean-pooled user embedding, then a CtxYNet re-rank of the top candidates. Modules follow the
//! data flow: `http` → the core (`search`, `ingest`, `swap`) → `model` and `view` (ANN index +
//! postings) → the store (`snapshop-store`) and `files`. See `docs/architecture.md`.

pub mod app;
pub mod auth;
pub mod bench;
pub mod config;
pub mod core;
pub mod error;
pub mod eval;
pub mod feed;
pub mod files;
pub mod http;
pub mod ids;
pub mod images;
pub mod import;
pub mod ingest;
pub mod jobs;
pub mod metrics;
pub mod model;
pub mod progress;
pub mod search;
pub mod swap;
pub mod view;

pub use app::{Application, Backend};
pub use config::Config;
pub use core::{AppState, Core};

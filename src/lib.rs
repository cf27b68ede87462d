//! snapshop: product-image search. Merchants upload tagged products; a phone photo finds them.
//!
//! The request path follows the paper's §4.1: a first pass over TagYNet shop embeddings with the
//! mean-pooled user embedding, then a CtxYNet re-rank of the top candidates. Modules are named
//! after the jobs a request passes through: `http` → `search`/`ingest` → `store` and the
//! `snapshop-index` / `snapshop-inference` crates.

pub mod app;
pub mod bench;
pub mod catalog;
pub mod config;
pub mod eval;
pub mod http;
pub mod images;
pub mod ingest;
pub mod metrics;
pub mod search;
pub mod state;
pub mod store;

pub use app::Application;
pub use config::Config;
pub use state::AppState;

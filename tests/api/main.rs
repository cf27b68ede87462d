//! End-to-end tests over HTTP against the real server, the real bundle and a temporary data
//! directory, one module per area of the API. `common` holds the harness: [`common::TestApp`]
//! (one method per endpoint) and the fixtures.

mod common;

mod admin;
mod bad_input;
mod bench;
mod heic;
mod import;
mod imports;
mod isolation;
mod keys;
mod openapi;
mod ops;
mod parity;
mod products;
mod replicas;
mod restart;
mod search;
mod writes;

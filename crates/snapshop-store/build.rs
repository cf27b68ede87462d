//! Build script: only makes Cargo rebuild this crate when `migrations/` (both backends' folders,
//! `migrations/sqlite/` and `migrations/postgres/`; Cargo scans a directory recursively) changes,
//! because `sqlx::migrate!` embeds the migration files at compile time but cannot itself tell
//! Cargo that a new file appeared. It must never generate code or touch the database.

fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}

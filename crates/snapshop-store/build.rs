//! Build script: only makes Cargo rebuild this crate when `migrations/` changes, because
//! `sqlx::migrate!` embeds the migration files at compile time but cannot itself tell Cargo
//! that a new file appeared. It must never generate code or touch the database.

fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}

//! Preprocessing speed on a generated 4000×3000 (12 MP) JPEG: decode and resize separately.
//! `cargo bench -p snapshop-inference --bench preprocess`
fn main() {}

//! The contract every [`crate::CatalogStore`] backend passes (filled in with the SQLite port).

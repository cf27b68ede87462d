//! The store's errors. Domain conflicts are mapped where the query is made; everything else is
//! a database failure the caller reports as internal.

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("product `{id}` of merchant `{merchant}` already exists")]
    ProductExists { merchant: String, id: String },
    #[error("product `{id}` of merchant `{merchant}` not found")]
    ProductNotFound { merchant: String, id: String },
    #[error("product `{id}` of merchant `{merchant}` is at version {actual}, not {expected}")]
    VersionConflict {
        merchant: String,
        id: String,
        expected: i64,
        actual: i64,
    },
    #[error("unsupported database URL `{0}` (expected sqlite://PATH)")]
    UnsupportedUrl(String),
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

pub type Result<T> = std::result::Result<T, StoreError>;

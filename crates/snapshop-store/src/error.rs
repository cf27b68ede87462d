//! The store's errors. Domain conflicts are mapped where the query is made; everything else is
//! a database failure the caller reports as internal.
//!
//! One error type for every backend, so the service maps errors to responses without knowing
//! which backend it talks to. It must never hide a conflict inside [`StoreError::Db`].

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The merchant already has a product with this external id.
    #[error("product `{id}` of merchant `{merchant}` already exists")]
    ProductExists { merchant: String, id: String },
    /// No such product (or no such merchant).
    #[error("product `{id}` of merchant `{merchant}` not found")]
    ProductNotFound { merchant: String, id: String },
    /// The product exists but has no image with this id (it may be another product's).
    #[error("product `{id}` of merchant `{merchant}` has no image {image_id}")]
    ImageNotFound {
        merchant: String,
        id: String,
        image_id: i64,
    },
    /// A compare-and-set write found the product at another version; nothing was changed.
    #[error("product `{id}` of merchant `{merchant}` is at version {actual}, not {expected}")]
    VersionConflict {
        merchant: String,
        id: String,
        expected: i64,
        actual: i64,
    },
    /// The write would take the merchant past its quota of `what` (`products` or `images`);
    /// nothing was changed.
    #[error("merchant `{merchant}` would exceed its quota of {limit} {what}")]
    QuotaExceeded {
        merchant: String,
        what: &'static str,
        limit: i64,
    },
    /// No API key with this id.
    #[error("no key with id {0}")]
    KeyNotFound(i64),
    /// The merchant has no import job with this id.
    #[error("no import job `{0}`")]
    JobNotFound(String),
    /// A key whose hash is already stored (a token given twice, e.g. the bootstrap key).
    #[error("a key with this token already exists")]
    KeyExists,
    /// [`crate::open`] was given a URL no backend handles.
    #[error("unsupported database URL `{0}` (expected sqlite://PATH or postgres://...)")]
    UnsupportedUrl(String),
    /// Stored data (or a request about it) that cannot be right, e.g. an undecodable vector
    /// or an embedding for an image of another product.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The database cannot be reached (refused, timed out, shutting down): a retry later may
    /// succeed. See [`StoreError::is_unavailable`], which also recognises such [`StoreError::Db`].
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// Any other database failure.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// Running the migrations failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl StoreError {
    /// Whether the failure is the database being out of reach rather than the request: a pool
    /// that cannot connect or times out, a lost connection, or a server shutting down or starting
    /// (SQLSTATE class 08, 57P01-57P03). The service answers these with 503 and `Retry-After`.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Unavailable(_) => true,
            StoreError::Db(e) => match e {
                sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
                sqlx::Error::Tls(_) | sqlx::Error::WorkerCrashed => true,
                sqlx::Error::Database(d) => d.code().is_some_and(|c| {
                    c.starts_with("08") || matches!(c.as_ref(), "57P01" | "57P02" | "57P03")
                }),
                sqlx::Error::Protocol(_) => true,
                _ => false,
            },
            _ => false,
        }
    }
}

/// A store result.
pub type Result<T> = std::result::Result<T, StoreError>;

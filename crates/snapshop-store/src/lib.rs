//! snapshop-store: the catalogue's source of truth (merchants, products, tags, images and
//! their embeddings) behind one async trait, [`CatalogStore`].
//!
//! Everything in memory (the search view, the ANN index) is rebuilt from a store, so a store must
//! be complete on its own: every write is one transaction, and what a write returns is exactly
//! what it committed. Backends are selected by URL ([`open`]); each one passes the same contract
//! suite ([`contract`]). This crate must never hold image bytes, call a model or know about HTTP.

pub mod access;
mod assemble;
pub mod contract;
mod error;
pub mod feed;
pub mod jobs;
pub mod postgres;
pub mod sqlite;
mod types;

use std::collections::HashSet;
use std::sync::Arc;

pub use access::AccessStore;
pub use error::{Result, StoreError};
pub use feed::{FeedCursor, FeedStore};
pub use jobs::JobStore;
pub use types::*;

/// What the service needs from its source of truth. Object-safe: held as `Arc<dyn CatalogStore>`.
///
/// Concurrency contract, which the contract suite checks:
/// - writes to different products never wait on each other beyond the database's own locking;
/// - every write to an existing product bumps its `version` by one, and a write given
///   `expect = Some(e)` fails with [`StoreError::VersionConflict`] unless the product is the
///   incarnation `e.product_id` at version `e.version` when the write commits (compare-and-set,
///   atomic with the write);
/// - product ids and embedding ids (the ANN keys) are never reused, even after a delete;
/// - a returned [`ProductState`] is the product's complete searchable state as committed by that
///   write, so applying states in any order, keeping the highest version, converges.
#[async_trait::async_trait]
pub trait CatalogStore: Send + Sync + 'static {
    /// A short name for logs and `/readyz`: `sqlite`, `postgres`, ...
    fn backend(&self) -> &'static str;

    /// A trivial round trip (readiness probe).
    async fn ping(&self) -> Result<()>;

    /// Closes the pool; later calls fail.
    async fn close(&self);

    /// Merchants and API keys, in the same database.
    fn access(&self) -> &dyn AccessStore;

    /// Import jobs, in the same database.
    fn jobs(&self) -> &dyn JobStore;

    /// The change feed replicas follow, in the same database.
    fn feed(&self) -> &dyn FeedStore;

    // ---- reads -----------------------------------------------------------------------------

    /// One product with its tags (sorted) and images (by id).
    async fn get_product(&self, merchant: &str, external_id: &str) -> Result<ProductRecord>;

    /// A page of a merchant's products in internal-id order, strictly after `after`. Loads tags
    /// and images for the whole page in batches (a fixed number of queries per page).
    async fn list_products(
        &self,
        merchant: &str,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<ProductRecord>>;

    /// Everything searchable for `model_version`: every product (also those without an
    /// embedding by that model) with its tags and its embeddings by that model.
    async fn load_states(&self, model_version: &str) -> Result<Vec<ProductState>>;

    /// Up to `limit` images without an embedding by `model_version`, by image id, each with
    /// what re-embedding it needs (the product's tags and version, the file path).
    async fn stale_images(&self, model_version: &str, limit: usize) -> Result<Vec<StaleImage>>;

    /// Of `paths` (relative image file paths), those that some image row still refers to.
    async fn referenced_paths(&self, paths: &[String]) -> Result<HashSet<String>>;

    /// Row counts, for metrics.
    async fn counts(&self) -> Result<Counts>;

    /// The latest committed change's place in the change sequence (`seq` 0 before any). Read
    /// it *before* [`CatalogStore::load_states`] when building a view: the states then reflect
    /// at least that change, so a view never claims to be fresher than it is.
    async fn last_change(&self) -> Result<ChangeStamp>;

    // ---- writes ----------------------------------------------------------------------------

    /// Inserts a product at version 1 with its tags, images and their embeddings by
    /// `model_version`. [`StoreError::ProductExists`] if the merchant already has `external_id`;
    /// [`StoreError::QuotaExceeded`] if the product or its images take the merchant past
    /// `product.quota` (its own overrides first). Merchants are registered on first use.
    async fn create_product(
        &self,
        product: NewProduct,
        images: Vec<NewImage>,
        model_version: &str,
    ) -> Result<Written>;

    /// Adds images (with embeddings by `model_version`) to an existing product, unless that
    /// takes its merchant past `quota` ([`StoreError::QuotaExceeded`]).
    async fn add_images(
        &self,
        merchant: &str,
        external_id: &str,
        expect: Option<Expect>,
        images: Vec<NewImage>,
        model_version: &str,
        quota: Quota,
    ) -> Result<Written>;

    /// Changes fields and tags, and replaces embeddings. Each image in `update.embeddings` loses
    /// every embedding it had (of any model version) and gets the given one by `model_version`,
    /// under a new id: keys are never reused. A tag change without new embeddings is allowed
    /// (the caller re-embeds); the old embeddings then stay until replaced.
    async fn update_product(
        &self,
        merchant: &str,
        external_id: &str,
        expect: Option<Expect>,
        update: ProductUpdate,
        model_version: &str,
    ) -> Result<Written>;

    /// Deletes a product with its tags, images and embeddings. Image files are not touched:
    /// unreferenced files are swept later by the caller ([`CatalogStore::referenced_paths`]).
    async fn delete_product(
        &self,
        merchant: &str,
        external_id: &str,
        expect: Option<Expect>,
    ) -> Result<Deleted>;

    /// Deletes one image of a product (its row and its embeddings of every model version),
    /// bumps the product's version and returns the product as committed: a product left
    /// without images stays (it is just not findable). [`StoreError::ImageNotFound`] when the
    /// image is not this product's. The file is not touched: it may be shared, and is swept
    /// later once unreferenced ([`CatalogStore::referenced_paths`]).
    async fn delete_image(
        &self,
        merchant: &str,
        external_id: &str,
        image_id: i64,
        expect: Option<Expect>,
        model_version: &str,
    ) -> Result<Written>;

    /// Deletes every product of `merchant` that `filter` matches (with their tags, images and
    /// embeddings), in one transaction: a product a concurrent write re-tags out of the filter
    /// before the purge takes it is kept. With `dry_run` nothing is deleted and the result says
    /// what would be. Files are swept later, as for [`CatalogStore::delete_product`].
    async fn purge(&self, merchant: &str, filter: &PurgeFilter, dry_run: bool) -> Result<Purged>;

    /// Stores embeddings by `model_version` for images whose product is still at the version
    /// the caller read (`product_version`); others are skipped (their product changed, so the
    /// embedding may have been made with stale tags). Replaces an existing embedding of the same
    /// image and version. Returns how many were written. Does not bump product versions.
    async fn put_embeddings(
        &self,
        model_version: &str,
        embeddings: Vec<NewEmbedding>,
    ) -> Result<usize>;

    /// Deletes every embedding not made by `keep` (after a model switch). Returns the count.
    async fn drop_other_versions(&self, keep: &str) -> Result<u64>;

    // ---- upkeep ----------------------------------------------------------------------------

    /// Brings the query planner's statistics up to date where the catalogue has changed since
    /// they were taken, and returns the tables it analysed. The background task calls it every
    /// maintenance interval. A store whose plans do not depend on statistics does nothing.
    async fn refresh_statistics(&self) -> Result<Vec<String>> {
        Ok(Vec::new())
    }
}

/// Encodes a vector as the stored BLOB: its values as little-endian `f32`, in order.
pub fn vector_to_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Decodes a BLOB written by [`vector_to_blob`]; [`StoreError::Corrupt`] unless its length is a
/// multiple of four.
pub fn blob_to_vector(b: &[u8]) -> Result<Vec<f32>> {
    if !b.len().is_multiple_of(4) {
        return Err(StoreError::Corrupt(format!(
            "vector blob of {} bytes",
            b.len()
        )));
    }
    Ok(b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// Opens the store a URL names and runs its migrations: `sqlite://PATH` (created if missing),
/// or `postgres://…` / `postgresql://…` (a libpq-style URL of an existing database).
pub async fn open(database_url: &str) -> Result<Arc<dyn CatalogStore>> {
    if let Some(path) = database_url
        .strip_prefix("sqlite://")
        .or_else(|| database_url.strip_prefix("sqlite:"))
    {
        return Ok(Arc::new(sqlite::SqliteStore::open(path.as_ref()).await?));
    }
    if database_url.starts_with("postgres://") || database_url.starts_with("postgresql://") {
        return Ok(Arc::new(postgres::PostgresStore::open(database_url).await?));
    }
    Err(StoreError::UnsupportedUrl(database_url.to_owned()))
}

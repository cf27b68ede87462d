//! Who may do what: merchants with their quotas, and API keys, behind [`AccessStore`].
//!
//! It lives beside the catalogue because quotas are checked inside the catalogue's own write
//! transactions (a merchant's row carries its counters), and because a replica must see a key's
//! revocation as soon as the database does. Both backends run the same SQL (SQLite and Postgres
//! accept `$n` parameters, `ON CONFLICT` and `RETURNING`), so the statements and the row
//! conversions are written once here and the trait is implemented by one macro per backend.
//! This module must never see a key's token: only its hash and its visible prefix.

use crate::{KeyKind, KeyQuery, KeyRecord, MerchantRecord, MerchantSettings, NewKey, Result};
use crate::{Quota, StoreError};

/// Merchants and keys. Object-safe; every backend that implements [`crate::CatalogStore`]
/// implements it too ([`crate::CatalogStore::access`]).
#[async_trait::async_trait]
pub trait AccessStore: Send + Sync + 'static {
    // ---- merchants ---------------------------------------------------------------------------

    /// A merchant with its counters, if it exists.
    async fn get_merchant(&self, name: &str) -> Result<Option<MerchantRecord>>;

    /// Every merchant, by name.
    async fn list_merchants(&self) -> Result<Vec<MerchantRecord>>;

    /// Registers the merchant if new, and sets its quota overrides.
    async fn put_merchant(&self, name: &str, settings: MerchantSettings) -> Result<MerchantRecord>;

    // ---- keys --------------------------------------------------------------------------------

    /// Stores a key (registering its merchant, if any). [`StoreError::KeyExists`] if the hash is
    /// already stored.
    async fn create_key(&self, key: NewKey) -> Result<KeyRecord>;

    /// The key with this token hash, whatever its state: the caller checks
    /// [`KeyRecord::is_active`].
    async fn key_by_hash(&self, hash: &str) -> Result<Option<KeyRecord>>;

    /// One key. [`StoreError::KeyNotFound`] if there is none.
    async fn get_key(&self, id: i64) -> Result<KeyRecord>;

    /// Keys, newest first.
    async fn list_keys(&self, query: KeyQuery, now_ms: i64) -> Result<Vec<KeyRecord>>;

    /// Revokes a key at `now_ms` (a second revoke keeps the first time) and returns it.
    async fn revoke_key(&self, id: i64, now_ms: i64) -> Result<KeyRecord>;

    /// Records a use of the key.
    async fn touch_key(&self, id: i64, now_ms: i64) -> Result<()>;

    /// Whether any admin key is active at `now_ms` (the bootstrap key is made only when none).
    async fn has_active_admin(&self, now_ms: i64) -> Result<bool>;
}

// ---- rows --------------------------------------------------------------------------------------

/// The columns [`KeyRow`] reads, in order.
pub(crate) const KEY_COLUMNS: &str = "id, kind, hash, prefix, label, merchant, merchants, origins, \
                                      rate_limits, created_at, expires_at, revoked_at, last_used_at";

/// The columns [`MerchantRow`] reads.
pub(crate) const MERCHANT_COLUMNS: &str =
    "name, created_at, product_count, image_count, max_products, max_images";

#[derive(sqlx::FromRow)]
pub(crate) struct KeyRow {
    id: i64,
    kind: String,
    hash: String,
    prefix: String,
    label: String,
    merchant: Option<String>,
    merchants: Option<String>,
    origins: String,
    rate_limits: Option<String>,
    created_at: i64,
    expires_at: Option<i64>,
    revoked_at: Option<i64>,
    last_used_at: Option<i64>,
}

impl KeyRow {
    pub(crate) fn into_record(self) -> Result<KeyRecord> {
        let json = |what: &str, text: &str| {
            serde_json::from_str::<serde_json::Value>(text)
                .map_err(|e| StoreError::Corrupt(format!("key {}: {what}: {e}", self.id)))
        };
        let strings = |what: &str, text: &str| -> Result<Vec<String>> {
            serde_json::from_value(json(what, text)?)
                .map_err(|e| StoreError::Corrupt(format!("key {}: {what}: {e}", self.id)))
        };
        Ok(KeyRecord {
            id: self.id,
            kind: KeyKind::parse(&self.kind).ok_or_else(|| {
                StoreError::Corrupt(format!("key {}: kind `{}`", self.id, self.kind))
            })?,
            merchants: self
                .merchants
                .as_deref()
                .map(|t| strings("merchants", t))
                .transpose()?,
            origins: strings("origins", &self.origins)?,
            rate_limits: self
                .rate_limits
                .as_deref()
                .map(|t| json("rate_limits", t))
                .transpose()?,
            hash: self.hash,
            prefix: self.prefix,
            label: self.label,
            merchant: self.merchant,
            created_at: self.created_at,
            expires_at: self.expires_at,
            revoked_at: self.revoked_at,
            last_used_at: self.last_used_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct MerchantRow {
    name: String,
    created_at: i64,
    product_count: i64,
    image_count: i64,
    max_products: Option<i64>,
    max_images: Option<i64>,
}

impl From<MerchantRow> for MerchantRecord {
    fn from(r: MerchantRow) -> Self {
        MerchantRecord {
            name: r.name,
            created_at: r.created_at,
            products: r.product_count,
            images: r.image_count,
            max_products: r.max_products,
            max_images: r.max_images,
        }
    }
}

// ---- statements --------------------------------------------------------------------------------

/// Registers a merchant: `$1` name, `$2` now.
pub(crate) const REGISTER_MERCHANT: &str =
    "INSERT INTO merchants (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING";

/// Counts one more product for merchant `$1` (by id) unless that passes its quota (`$2`: the
/// default). Returns a row only when it was counted.
pub(crate) const TAKE_PRODUCT: &str = "UPDATE merchants SET product_count = product_count + 1 \
     WHERE id = $1 AND product_count + 1 <= COALESCE(max_products, $2) RETURNING id";

/// Counts `$2` more images for the merchant of product `$1` unless that passes its quota (`$3`:
/// the default). Returns a row only when they were counted.
pub(crate) const TAKE_IMAGES: &str = "UPDATE merchants SET image_count = image_count + $2 \
     WHERE id = (SELECT merchant_id FROM products WHERE id = $1) \
     AND image_count + $2 <= COALESCE(max_images, $3) RETURNING id";

/// The effective limits of the merchant of product `$1`, for the error (`$2`, `$3`: defaults).
pub(crate) const LIMITS_OF_PRODUCT: &str =
    "SELECT m.name, COALESCE(m.max_products, $2), COALESCE(m.max_images, $3) \
     FROM merchants m JOIN products p ON p.merchant_id = m.id WHERE p.id = $1";

/// The name and effective product limit of merchant `$1` (by id; `$2`: the default).
pub(crate) const PRODUCT_LIMIT: &str =
    "SELECT name, COALESCE(max_products, $2) FROM merchants WHERE id = $1";

/// Takes product `$1` and its `$2` images off its merchant's counters (before a delete).
pub(crate) const RELEASE_PRODUCT: &str =
    "UPDATE merchants SET product_count = product_count - 1, image_count = image_count - $2 \
     WHERE id = (SELECT merchant_id FROM products WHERE id = $1)";

/// Takes `$2` images of product `$1` off its merchant's image counter (an image delete).
pub(crate) const RELEASE_IMAGES: &str = "UPDATE merchants SET image_count = image_count - $2 \
     WHERE id = (SELECT merchant_id FROM products WHERE id = $1)";

/// Takes `$2` products and `$3` images off merchant `$1`'s counters (a purge).
pub(crate) const RELEASE_PRODUCTS: &str =
    "UPDATE merchants SET product_count = product_count - $2, image_count = image_count - $3 \
     WHERE name = $1";

/// The error for a product past the merchant's quota.
pub(crate) fn products_exceeded(merchant: &str, limit: i64) -> StoreError {
    StoreError::QuotaExceeded {
        merchant: merchant.to_owned(),
        what: "products",
        limit,
    }
}

/// The error for images past the merchant's quota.
pub(crate) fn images_exceeded(merchant: String, limit: i64) -> StoreError {
    StoreError::QuotaExceeded {
        merchant,
        what: "images",
        limit,
    }
}

/// `quota` as the two SQL parameters.
pub(crate) fn limits(quota: Quota) -> (i64, i64) {
    (quota.max_products, quota.max_images)
}

/// A JSON array column.
pub(crate) fn json_array(items: &[String]) -> String {
    serde_json::Value::from(items.to_vec()).to_string()
}

/// The quota steps of a create and an image upload, for a backend whose connection type is
/// `$conn` (the statements above; the same for every backend).
macro_rules! quota_steps {
    ($conn:ty) => {
        /// Counts a new product and its `images` against its merchant's quotas, or fails the write.
        async fn take_quota(
            conn: &mut $conn,
            merchant_id: i64,
            product_id: i64,
            images: usize,
            quota: $crate::Quota,
        ) -> $crate::Result<()> {
            let (max_products, _) = $crate::access::limits(quota);
            let taken = sqlx::query($crate::access::TAKE_PRODUCT)
                .bind(merchant_id)
                .bind(max_products)
                .fetch_optional(&mut *conn)
                .await?;
            if taken.is_none() {
                let (name, limit): (String, i64) = sqlx::query_as($crate::access::PRODUCT_LIMIT)
                    .bind(merchant_id)
                    .bind(max_products)
                    .fetch_one(&mut *conn)
                    .await?;
                return Err($crate::access::products_exceeded(&name, limit));
            }
            take_images(conn, product_id, images, quota).await
        }

        /// Counts `n` more images of a product against its merchant's quota, or fails the write.
        async fn take_images(
            conn: &mut $conn,
            product_id: i64,
            n: usize,
            quota: $crate::Quota,
        ) -> $crate::Result<()> {
            let (max_products, max_images) = $crate::access::limits(quota);
            let n = i64::try_from(n).unwrap_or(i64::MAX);
            let taken = sqlx::query($crate::access::TAKE_IMAGES)
                .bind(product_id)
                .bind(n)
                .bind(max_images)
                .fetch_optional(&mut *conn)
                .await?;
            if taken.is_none() {
                let (name, _, limit): (String, i64, i64) =
                    sqlx::query_as($crate::access::LIMITS_OF_PRODUCT)
                        .bind(product_id)
                        .bind(max_products)
                        .bind(max_images)
                        .fetch_one(&mut *conn)
                        .await?;
                return Err($crate::access::images_exceeded(name, limit));
            }
            Ok(())
        }
    };
}

pub(crate) use quota_steps;

/// Implements [`AccessStore`] for a backend struct with a `pool` field of database `$db`.
macro_rules! impl_access_store {
    ($store:ty, $db:ty) => {
        #[async_trait::async_trait]
        impl $crate::access::AccessStore for $store {
            async fn get_merchant(&self, name: &str) -> Result<Option<$crate::MerchantRecord>> {
                let sql = format!(
                    "SELECT {} FROM merchants WHERE name = $1",
                    $crate::access::MERCHANT_COLUMNS
                );
                let row = sqlx::query_as::<$db, $crate::access::MerchantRow>(&sql)
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(row.map(Into::into))
            }

            async fn list_merchants(&self) -> Result<Vec<$crate::MerchantRecord>> {
                let sql = format!(
                    "SELECT {} FROM merchants ORDER BY name",
                    $crate::access::MERCHANT_COLUMNS
                );
                let rows = sqlx::query_as::<$db, $crate::access::MerchantRow>(&sql)
                    .fetch_all(&self.pool)
                    .await?;
                Ok(rows.into_iter().map(Into::into).collect())
            }

            async fn put_merchant(
                &self,
                name: &str,
                settings: $crate::MerchantSettings,
            ) -> Result<$crate::MerchantRecord> {
                let mut tx = self.pool.begin().await?;
                sqlx::query($crate::access::REGISTER_MERCHANT)
                    .bind(name)
                    .bind(now_ms())
                    .execute(&mut *tx)
                    .await?;
                let sql = format!(
                    "UPDATE merchants SET max_products = $2, max_images = $3 WHERE name = $1 \
                     RETURNING {}",
                    $crate::access::MERCHANT_COLUMNS
                );
                let row = sqlx::query_as::<$db, $crate::access::MerchantRow>(&sql)
                    .bind(name)
                    .bind(settings.max_products)
                    .bind(settings.max_images)
                    .fetch_one(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(row.into())
            }

            async fn create_key(&self, key: $crate::NewKey) -> Result<$crate::KeyRecord> {
                let mut tx = self.pool.begin().await?;
                if let Some(m) = &key.merchant {
                    sqlx::query($crate::access::REGISTER_MERCHANT)
                        .bind(m)
                        .bind(now_ms())
                        .execute(&mut *tx)
                        .await?;
                }
                let sql = format!(
                    "INSERT INTO api_keys (kind, hash, prefix, label, merchant, merchants, \
                     origins, rate_limits, created_at, expires_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING {}",
                    $crate::access::KEY_COLUMNS
                );
                let inserted = sqlx::query_as::<$db, $crate::access::KeyRow>(&sql)
                    .bind(key.kind.as_str())
                    .bind(&key.hash)
                    .bind(&key.prefix)
                    .bind(&key.label)
                    .bind(&key.merchant)
                    .bind(key.merchants.as_deref().map($crate::access::json_array))
                    .bind($crate::access::json_array(&key.origins))
                    .bind(key.rate_limits.as_ref().map(|v| v.to_string()))
                    .bind(now_ms())
                    .bind(key.expires_at)
                    .fetch_one(&mut *tx)
                    .await;
                let row = match inserted {
                    Ok(row) => row,
                    Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                        return Err(StoreError::KeyExists)
                    }
                    Err(e) => return Err(e.into()),
                };
                tx.commit().await?;
                row.into_record()
            }

            async fn key_by_hash(&self, hash: &str) -> Result<Option<$crate::KeyRecord>> {
                let sql = format!(
                    "SELECT {} FROM api_keys WHERE hash = $1",
                    $crate::access::KEY_COLUMNS
                );
                sqlx::query_as::<$db, $crate::access::KeyRow>(&sql)
                    .bind(hash)
                    .fetch_optional(&self.pool)
                    .await?
                    .map($crate::access::KeyRow::into_record)
                    .transpose()
            }

            async fn get_key(&self, id: i64) -> Result<$crate::KeyRecord> {
                let sql = format!(
                    "SELECT {} FROM api_keys WHERE id = $1",
                    $crate::access::KEY_COLUMNS
                );
                sqlx::query_as::<$db, $crate::access::KeyRow>(&sql)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?
                    .ok_or(StoreError::KeyNotFound(id))?
                    .into_record()
            }

            async fn list_keys(
                &self,
                query: $crate::KeyQuery,
                now_ms: i64,
            ) -> Result<Vec<$crate::KeyRecord>> {
                let sql = format!(
                    "SELECT {} FROM api_keys \
                     WHERE ($1 IS NULL OR merchant = $1) AND ($2 IS NULL OR kind = $2) \
                     AND ($3 OR (revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $4))) \
                     ORDER BY id DESC",
                    $crate::access::KEY_COLUMNS
                );
                sqlx::query_as::<$db, $crate::access::KeyRow>(&sql)
                    .bind(query.merchant)
                    .bind(query.kind.map(|k| k.as_str()))
                    .bind(query.include_inactive)
                    .bind(now_ms)
                    .fetch_all(&self.pool)
                    .await?
                    .into_iter()
                    .map($crate::access::KeyRow::into_record)
                    .collect()
            }

            async fn revoke_key(&self, id: i64, now_ms: i64) -> Result<$crate::KeyRecord> {
                let sql = format!(
                    "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1 \
                     RETURNING {}",
                    $crate::access::KEY_COLUMNS
                );
                sqlx::query_as::<$db, $crate::access::KeyRow>(&sql)
                    .bind(id)
                    .bind(now_ms)
                    .fetch_optional(&self.pool)
                    .await?
                    .ok_or(StoreError::KeyNotFound(id))?
                    .into_record()
            }

            async fn touch_key(&self, id: i64, now_ms: i64) -> Result<()> {
                sqlx::query("UPDATE api_keys SET last_used_at = $2 WHERE id = $1")
                    .bind(id)
                    .bind(now_ms)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn has_active_admin(&self, now_ms: i64) -> Result<bool> {
                let n: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM api_keys WHERE kind = 'admin' AND revoked_at IS NULL \
                     AND (expires_at IS NULL OR expires_at > $1)",
                )
                .bind(now_ms)
                .fetch_one(&self.pool)
                .await?;
                Ok(n > 0)
            }
        }
    };
}

pub(crate) use impl_access_store;

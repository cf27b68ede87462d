//! The catalogue's source of truth: merchants, products, tags, images and embeddings in SQL.
//!
//! Everything else (the ANN index, the in-memory catalogue) is rebuilt from here. Every write is
//! one transaction, and constraint violations are mapped to domain errors where the query is
//! made. The SQL stays portable (`$n` parameters, `ON CONFLICT`, `RETURNING`) so that a Postgres
//! backend can follow; this module must not hold image bytes or know about HTTP.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("product `{id}` of merchant `{merchant}` already exists")]
    ProductExists { merchant: String, id: String },
    #[error("product `{id}` of merchant `{merchant}` not found")]
    ProductNotFound { merchant: String, id: String },
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A product as stored, with its tags (sorted) and images.
#[derive(Debug, Clone, PartialEq)]
pub struct ProductRecord {
    /// Internal id (not exposed over HTTP).
    pub id: i64,
    pub merchant: String,
    pub external_id: String,
    pub title: String,
    pub attributes: serde_json::Value,
    pub tags: Vec<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub images: Vec<ImageRecord>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ImageRecord {
    pub id: i64,
    pub product_id: i64,
    pub sha256: String,
    pub byte_size: i64,
    pub width: u32,
    pub height: u32,
    pub format: String,
    /// Relative to the data directory.
    pub path: String,
}

/// An image to insert, with its embedding by the current model.
#[derive(Debug, Clone)]
pub struct NewImage {
    pub sha256: String,
    pub byte_size: i64,
    pub width: u32,
    pub height: u32,
    pub format: String,
    pub path: String,
    pub embedding: Vec<f32>,
}

/// An embedding row: `id` is the ANN index key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EmbeddingRef {
    pub id: i64,
    pub image_id: i64,
}

/// What a write changed in the searchable set.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    pub added: Vec<(EmbeddingRef, Vec<f32>)>,
    pub removed: Vec<i64>,
}

/// A product row without images, for bulk loads.
#[derive(Debug, Clone)]
pub struct ProductSummary {
    pub id: i64,
    pub merchant: String,
    pub external_id: String,
    pub title: String,
    pub tags: Vec<String>,
}

/// An image that has no embedding by the current model.
#[derive(Debug, Clone)]
pub struct StaleImage {
    pub image_id: i64,
    pub product_id: i64,
    pub path: String,
}

/// Changes to a product; `None` keeps the field.
#[derive(Debug, Clone, Default)]
pub struct ProductUpdate {
    pub title: Option<String>,
    pub attributes: Option<serde_json::Value>,
    pub tags: Option<Vec<String>>,
    /// New embeddings of (some of) the product's images by `model_version`.
    pub embeddings: Vec<(i64, Vec<f32>)>,
}

#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn vector_to_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

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

fn not_found(merchant: &str, id: &str) -> StoreError {
    StoreError::ProductNotFound {
        merchant: merchant.to_owned(),
        id: id.to_owned(),
    }
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `path` and runs the migrations.
    pub async fn open(path: &Path) -> Result<Self> {
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Self { pool })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn merchant_id(
        tx: &mut sqlx::SqliteConnection,
        merchant: &str,
        create: bool,
    ) -> Result<Option<i64>> {
        if create {
            sqlx::query("INSERT INTO merchants (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
                .bind(merchant)
                .bind(now_ms())
                .execute(&mut *tx)
                .await?;
        }
        Ok(
            sqlx::query_scalar("SELECT id FROM merchants WHERE name = $1")
                .bind(merchant)
                .fetch_optional(&mut *tx)
                .await?,
        )
    }

    async fn product_id(
        tx: &mut sqlx::SqliteConnection,
        merchant: &str,
        external_id: &str,
    ) -> Result<i64> {
        sqlx::query_scalar(
            "SELECT p.id FROM products p JOIN merchants m ON m.id = p.merchant_id \
             WHERE m.name = $1 AND p.external_id = $2",
        )
        .bind(merchant)
        .bind(external_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| not_found(merchant, external_id))
    }

    /// True when the merchant already has a product with this id (a cheap check before the
    /// expensive embedding; the insert still maps the UNIQUE violation).
    pub async fn product_exists(&self, merchant: &str, external_id: &str) -> Result<bool> {
        let mut conn = self.pool.acquire().await?;
        match Self::product_id(&mut conn, merchant, external_id).await {
            Ok(_) => Ok(true),
            Err(StoreError::ProductNotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn insert_images(
        tx: &mut sqlx::SqliteConnection,
        product_id: i64,
        images: Vec<NewImage>,
        model_version: &str,
        now: i64,
        changes: &mut Changes,
    ) -> Result<()> {
        for img in images {
            let image_id: i64 = sqlx::query_scalar(
                "INSERT INTO images (product_id, sha256, byte_size, width, height, format, path, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
            )
            .bind(product_id)
            .bind(&img.sha256)
            .bind(img.byte_size)
            .bind(img.width as i64)
            .bind(img.height as i64)
            .bind(&img.format)
            .bind(&img.path)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            let id =
                Self::insert_embedding(tx, image_id, model_version, &img.embedding, now).await?;
            changes
                .added
                .push((EmbeddingRef { id, image_id }, img.embedding));
        }
        Ok(())
    }

    async fn insert_embedding(
        tx: &mut sqlx::SqliteConnection,
        image_id: i64,
        model_version: &str,
        vector: &[f32],
        now: i64,
    ) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "INSERT INTO embeddings (image_id, model_version, dim, vector, created_at) \
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(image_id)
        .bind(model_version)
        .bind(vector.len() as i64)
        .bind(vector_to_blob(vector))
        .bind(now)
        .fetch_one(&mut *tx)
        .await?)
    }

    async fn replace_tags(
        tx: &mut sqlx::SqliteConnection,
        product_id: i64,
        tags: &[String],
    ) -> Result<()> {
        sqlx::query("DELETE FROM product_tags WHERE product_id = $1")
            .bind(product_id)
            .execute(&mut *tx)
            .await?;
        for tag in tags {
            sqlx::query(
                "INSERT INTO product_tags (product_id, tag) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            )
            .bind(product_id)
            .bind(tag)
            .execute(&mut *tx)
            .await?;
        }
        Ok(())
    }

    /// Inserts a product with its tags, images and embeddings in one transaction.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_product(
        &self,
        merchant: &str,
        external_id: &str,
        title: &str,
        attributes: &serde_json::Value,
        tags: &[String],
        images: Vec<NewImage>,
        model_version: &str,
    ) -> Result<(ProductRecord, Changes)> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let merchant_id = Self::merchant_id(&mut tx, merchant, true)
            .await?
            .expect("merchant row exists after upsert; this is a bug");
        let inserted = sqlx::query_scalar::<_, i64>(
            "INSERT INTO products (merchant_id, external_id, title, attributes, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $5) RETURNING id",
        )
        .bind(merchant_id)
        .bind(external_id)
        .bind(title)
        .bind(attributes.to_string())
        .bind(now)
        .fetch_one(&mut *tx)
        .await;
        let product_id = match inserted {
            Ok(id) => id,
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(StoreError::ProductExists {
                    merchant: merchant.to_owned(),
                    id: external_id.to_owned(),
                })
            }
            Err(e) => return Err(e.into()),
        };
        Self::replace_tags(&mut tx, product_id, tags).await?;
        let mut changes = Changes::default();
        Self::insert_images(
            &mut tx,
            product_id,
            images,
            model_version,
            now,
            &mut changes,
        )
        .await?;
        let record = Self::load_product(&mut tx, product_id).await?;
        tx.commit().await?;
        Ok((record, changes))
    }

    /// Adds images to an existing product.
    pub async fn add_images(
        &self,
        merchant: &str,
        external_id: &str,
        images: Vec<NewImage>,
        model_version: &str,
    ) -> Result<(ProductRecord, Changes)> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let product_id = Self::product_id(&mut tx, merchant, external_id).await?;
        let mut changes = Changes::default();
        Self::insert_images(
            &mut tx,
            product_id,
            images,
            model_version,
            now,
            &mut changes,
        )
        .await?;
        let record = Self::touch_and_commit(tx, product_id, now).await?;
        Ok((record, changes))
    }

    /// Updates fields, tags and embeddings of a product in one transaction. Replaced embeddings
    /// get new ids (index keys are never reused).
    pub async fn update_product(
        &self,
        merchant: &str,
        external_id: &str,
        update: ProductUpdate,
        model_version: &str,
    ) -> Result<(ProductRecord, Changes)> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let product_id = Self::product_id(&mut tx, merchant, external_id).await?;
        if let Some(title) = &update.title {
            sqlx::query("UPDATE products SET title = $1 WHERE id = $2")
                .bind(title)
                .bind(product_id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(attributes) = &update.attributes {
            sqlx::query("UPDATE products SET attributes = $1 WHERE id = $2")
                .bind(attributes.to_string())
                .bind(product_id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(tags) = &update.tags {
            Self::replace_tags(&mut tx, product_id, tags).await?;
        }
        let mut changes = Changes::default();
        for (image_id, vector) in update.embeddings {
            let old: Vec<i64> = sqlx::query_scalar(
                "SELECT e.id FROM embeddings e JOIN images i ON i.id = e.image_id \
                 WHERE e.image_id = $1 AND i.product_id = $2",
            )
            .bind(image_id)
            .bind(product_id)
            .fetch_all(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM embeddings WHERE image_id = $1")
                .bind(image_id)
                .execute(&mut *tx)
                .await?;
            let id = Self::insert_embedding(&mut tx, image_id, model_version, &vector, now).await?;
            changes.removed.extend(old);
            changes.added.push((EmbeddingRef { id, image_id }, vector));
        }
        let record = Self::touch_and_commit(tx, product_id, now).await?;
        Ok((record, changes))
    }

    /// Deletes a product and everything under it. Returns the removed index keys and the image
    /// files no other image refers to any more (the caller deletes them after the commit).
    pub async fn delete_product(
        &self,
        merchant: &str,
        external_id: &str,
    ) -> Result<(ProductRecord, Changes, Vec<String>)> {
        let mut tx = self.pool.begin().await?;
        let product_id = Self::product_id(&mut tx, merchant, external_id).await?;
        let record = Self::load_product(&mut tx, product_id).await?;
        let removed: Vec<i64> = sqlx::query_scalar(
            "SELECT e.id FROM embeddings e JOIN images i ON i.id = e.image_id WHERE i.product_id = $1",
        )
        .bind(product_id)
        .fetch_all(&mut *tx)
        .await?;
        // Explicit deletes rather than relying on ON DELETE CASCADE alone, so that a
        // connection without foreign keys enabled cannot leave orphans.
        sqlx::query("DELETE FROM embeddings WHERE image_id IN (SELECT id FROM images WHERE product_id = $1)")
            .bind(product_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM images WHERE product_id = $1")
            .bind(product_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM product_tags WHERE product_id = $1")
            .bind(product_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM products WHERE id = $1")
            .bind(product_id)
            .execute(&mut *tx)
            .await?;
        let mut orphaned = Vec::new();
        for img in &record.images {
            let still: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM images WHERE path = $1")
                .bind(&img.path)
                .fetch_one(&mut *tx)
                .await?;
            if still == 0 && !orphaned.contains(&img.path) {
                orphaned.push(img.path.clone());
            }
        }
        tx.commit().await?;
        let changes = Changes {
            added: Vec::new(),
            removed,
        };
        Ok((record, changes, orphaned))
    }

    pub async fn get_product(&self, merchant: &str, external_id: &str) -> Result<ProductRecord> {
        let mut conn = self.pool.acquire().await?;
        let id = Self::product_id(&mut conn, merchant, external_id).await?;
        Self::load_product(&mut conn, id).await
    }

    /// A page of a merchant's products in id order, starting after `after` (an internal id).
    pub async fn list_products(
        &self,
        merchant: &str,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<ProductRecord>> {
        let mut conn = self.pool.acquire().await?;
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT p.id FROM products p JOIN merchants m ON m.id = p.merchant_id \
             WHERE m.name = $1 AND p.id > $2 ORDER BY p.id LIMIT $3",
        )
        .bind(merchant)
        .bind(after.unwrap_or(0))
        .bind(limit as i64)
        .fetch_all(&mut *conn)
        .await?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.push(Self::load_product(&mut conn, id).await?);
        }
        Ok(out)
    }

    /// Stamps `updated_at`, reads the product back and commits: how every write to an existing
    /// product ends, so the record returned is exactly what was committed.
    async fn touch_and_commit(
        mut tx: sqlx::Transaction<'_, sqlx::Sqlite>,
        product_id: i64,
        now: i64,
    ) -> Result<ProductRecord> {
        sqlx::query("UPDATE products SET updated_at = $1 WHERE id = $2")
            .bind(now)
            .bind(product_id)
            .execute(&mut *tx)
            .await?;
        let record = Self::load_product(&mut tx, product_id).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn load_product(conn: &mut sqlx::SqliteConnection, id: i64) -> Result<ProductRecord> {
        let row = sqlx::query(
            "SELECT p.id, m.name, p.external_id, p.title, p.attributes, p.created_at, p.updated_at \
             FROM products p JOIN merchants m ON m.id = p.merchant_id WHERE p.id = $1",
        )
        .bind(id)
        .fetch_one(&mut *conn)
        .await?;
        let attributes: String = row.get(4);
        let attributes = serde_json::from_str(&attributes)
            .map_err(|e| StoreError::Corrupt(format!("attributes of product {id}: {e}")))?;
        let tags: Vec<String> =
            sqlx::query_scalar("SELECT tag FROM product_tags WHERE product_id = $1 ORDER BY tag")
                .bind(id)
                .fetch_all(&mut *conn)
                .await?;
        let images = sqlx::query(
            "SELECT id, product_id, sha256, byte_size, width, height, format, path \
             FROM images WHERE product_id = $1 ORDER BY id",
        )
        .bind(id)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|r| image_from_row(&r))
        .collect();
        Ok(ProductRecord {
            id: row.get(0),
            merchant: row.get(1),
            external_id: row.get(2),
            title: row.get(3),
            attributes,
            tags,
            created_at: row.get(5),
            updated_at: row.get(6),
            images,
        })
    }

    /// Every product with its tags, for the in-memory catalogue.
    pub async fn all_products(&self) -> Result<Vec<ProductSummary>> {
        let mut out: Vec<ProductSummary> = sqlx::query(
            "SELECT p.id, m.name, p.external_id, p.title FROM products p \
             JOIN merchants m ON m.id = p.merchant_id ORDER BY p.id",
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|r| ProductSummary {
            id: r.get(0),
            merchant: r.get(1),
            external_id: r.get(2),
            title: r.get(3),
            tags: Vec::new(),
        })
        .collect();
        let tags: Vec<(i64, String)> =
            sqlx::query_as("SELECT product_id, tag FROM product_tags ORDER BY product_id, tag")
                .fetch_all(&self.pool)
                .await?;
        let by_id: std::collections::HashMap<i64, usize> =
            out.iter().enumerate().map(|(i, p)| (p.id, i)).collect();
        for (pid, tag) in tags {
            if let Some(&i) = by_id.get(&pid) {
                out[i].tags.push(tag);
            }
        }
        Ok(out)
    }

    /// All images, for the in-memory catalogue.
    pub async fn all_images(&self) -> Result<Vec<ImageRecord>> {
        Ok(sqlx::query(
            "SELECT id, product_id, sha256, byte_size, width, height, format, path FROM images ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(image_from_row)
        .collect())
    }

    /// All embeddings made by `model_version`, with their vectors.
    pub async fn embeddings(&self, model_version: &str) -> Result<Vec<(EmbeddingRef, Vec<f32>)>> {
        let rows = sqlx::query(
            "SELECT id, image_id, vector FROM embeddings WHERE model_version = $1 ORDER BY id",
        )
        .bind(model_version)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let blob: Vec<u8> = r.get(2);
                Ok((
                    EmbeddingRef {
                        id: r.get(0),
                        image_id: r.get(1),
                    },
                    blob_to_vector(&blob)?,
                ))
            })
            .collect()
    }

    /// Images that have no embedding by `model_version` (made by another model, or never).
    pub async fn stale_images(&self, model_version: &str) -> Result<Vec<StaleImage>> {
        Ok(sqlx::query(
            "SELECT i.id, i.product_id, i.path FROM images i WHERE NOT EXISTS \
             (SELECT 1 FROM embeddings e WHERE e.image_id = i.id AND e.model_version = $1) ORDER BY i.id",
        )
        .bind(model_version)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|r| StaleImage {
            image_id: r.get(0),
            product_id: r.get(1),
            path: r.get(2),
        })
        .collect())
    }

    /// Stores an image's embedding by `model_version` and drops those of other versions.
    pub async fn replace_embedding(
        &self,
        image_id: i64,
        model_version: &str,
        vector: &[f32],
    ) -> Result<EmbeddingRef> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM embeddings WHERE image_id = $1")
            .bind(image_id)
            .execute(&mut *tx)
            .await?;
        let id = Self::insert_embedding(&mut tx, image_id, model_version, vector, now_ms()).await?;
        tx.commit().await?;
        Ok(EmbeddingRef { id, image_id })
    }

    /// A trivial query: the database answers (readiness probe).
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

fn image_from_row(r: &sqlx::sqlite::SqliteRow) -> ImageRecord {
    ImageRecord {
        id: r.get(0),
        product_id: r.get(1),
        sha256: r.get(2),
        byte_size: r.get(3),
        width: r.get::<i64, _>(4) as u32,
        height: r.get::<i64, _>(5) as u32,
        format: r.get(6),
        path: r.get(7),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(sha: &str, v: f32) -> NewImage {
        NewImage {
            sha256: sha.into(),
            byte_size: 10,
            width: 4,
            height: 3,
            format: "png".into(),
            path: format!("images/{sha}.png"),
            embedding: vec![v, 1.0 - v],
        }
    }

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("t.db")).await.unwrap();
        (dir, s)
    }

    #[tokio::test]
    async fn create_get_list_delete() {
        let (_d, s) = store().await;
        let tags = vec!["category:dress".to_string(), "color:red".to_string()];
        let attrs = serde_json::json!({"price": 10});
        let (p, ch) = s
            .create_product(
                "acme",
                "p1",
                "Red dress",
                &attrs,
                &tags,
                vec![image("aa", 0.5), image("bb", 0.25)],
                "v1",
            )
            .await
            .unwrap();
        assert_eq!(p.tags, tags);
        assert_eq!(p.images.len(), 2);
        assert_eq!(p.attributes, attrs);
        assert_eq!(ch.added.len(), 2);
        assert_eq!(ch.added[0].1, vec![0.5, 0.5]);

        let err = s
            .create_product("acme", "p1", "again", &attrs, &tags, vec![], "v1")
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::ProductExists { .. }), "{err}");
        // Same external id under another merchant is fine.
        s.create_product(
            "other",
            "p1",
            "x",
            &attrs,
            &[],
            vec![image("aa", 0.1)],
            "v1",
        )
        .await
        .unwrap();

        assert_eq!(s.get_product("acme", "p1").await.unwrap(), p);
        assert!(matches!(
            s.get_product("acme", "nope").await,
            Err(StoreError::ProductNotFound { .. })
        ));
        for i in 2..6 {
            s.create_product("acme", &format!("p{i}"), "t", &attrs, &[], vec![], "v1")
                .await
                .unwrap();
        }
        let page1 = s.list_products("acme", None, 3).await.unwrap();
        assert_eq!(page1.len(), 3);
        let page2 = s.list_products("acme", Some(page1[2].id), 3).await.unwrap();
        assert_eq!(page2.len(), 2);
        assert_eq!(page2[1].external_id, "p5");

        let embs = s.embeddings("v1").await.unwrap();
        assert_eq!(embs.len(), 3);
        let (_, ch, orphaned) = s.delete_product("acme", "p1").await.unwrap();
        assert_eq!(ch.removed.len(), 2);
        // `aa` is still used by the other merchant's product.
        assert_eq!(orphaned, vec!["images/bb.png".to_string()]);
        assert_eq!(s.embeddings("v1").await.unwrap().len(), 1);
        assert!(matches!(
            s.delete_product("acme", "p1").await,
            Err(StoreError::ProductNotFound { .. })
        ));
    }

    #[tokio::test]
    async fn update_replaces_tags_and_embeddings_with_new_keys() {
        let (_d, s) = store().await;
        let (p, ch) = s
            .create_product(
                "m",
                "p",
                "t",
                &serde_json::json!({}),
                &["a:b".into()],
                vec![image("cc", 0.5)],
                "v1",
            )
            .await
            .unwrap();
        let old_key = ch.added[0].0.id;
        let upd = ProductUpdate {
            title: Some("new".into()),
            tags: Some(vec!["c:d".into(), "e:f".into()]),
            embeddings: vec![(p.images[0].id, vec![1.0, 0.0])],
            ..Default::default()
        };
        let (p2, ch2) = s.update_product("m", "p", upd, "v1").await.unwrap();
        assert_eq!(p2.title, "new");
        assert_eq!(p2.tags, vec!["c:d".to_string(), "e:f".to_string()]);
        assert_eq!(ch2.removed, vec![old_key]);
        assert!(ch2.added[0].0.id > old_key);
        let embs = s.embeddings("v1").await.unwrap();
        assert_eq!(embs, vec![(ch2.added[0].0, vec![1.0, 0.0])]);
    }

    #[tokio::test]
    async fn stale_images_are_found_and_replaced() {
        let (_d, s) = store().await;
        s.create_product(
            "m",
            "p",
            "t",
            &serde_json::json!({}),
            &[],
            vec![image("dd", 0.5)],
            "old",
        )
        .await
        .unwrap();
        assert!(s.stale_images("old").await.unwrap().is_empty());
        let stale = s.stale_images("new").await.unwrap();
        assert_eq!(stale.len(), 1);
        s.replace_embedding(stale[0].image_id, "new", &[0.0, 1.0])
            .await
            .unwrap();
        assert!(s.stale_images("new").await.unwrap().is_empty());
        assert!(s.embeddings("old").await.unwrap().is_empty());
    }

    #[test]
    fn blobs_round_trip() {
        let v = vec![0.1f32, -2.5, f32::MIN_POSITIVE];
        assert_eq!(blob_to_vector(&vector_to_blob(&v)).unwrap(), v);
        assert!(blob_to_vector(&[1, 2, 3]).is_err());
    }
}

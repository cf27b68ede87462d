//! The SQLite backend of [`CatalogStore`]: one database file in WAL mode behind a small pool.
//!
//! It exists so that a single node needs nothing but a file. Every write is one
//! `BEGIN IMMEDIATE` transaction: it takes SQLite's write lock before it reads anything, so a
//! version check and the write it guards cannot interleave with another writer, and no deferred
//! transaction ever has to upgrade (which fails with `SQLITE_BUSY` instead of waiting). Multi-query
//! reads run inside one (deferred, read-only) transaction so that they see a single snapshot.
//! What a write returns is read back inside its own transaction, before the commit.
//!
//! This module must never touch image files (it only stores their relative paths), hold image
//! bytes, or issue a number of queries that grows with the number of products in a page or in
//! the catalogue: id lists go to SQLite as one JSON array bound to `json_each`.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, SqliteConnection, SqlitePool, Transaction};

use crate::access;
use crate::assemble;
use crate::feed::{
    self, ChangeOp, Checkin, Compacted, FeedBatch, FeedChange, FeedCursor, FeedStore, Recorded,
};
use crate::{
    blob_to_vector, vector_to_blob, CatalogStore, ChangeStamp, Counts, Deleted, Expect,
    ImageRecord, NewEmbedding, NewImage, NewProduct, ProductRecord, ProductState, ProductUpdate,
    PurgeFilter, Purged, Quota, Result, StaleImage, StoreError, StoredEmbedding, Written,
};

/// Paths per `referenced_paths` query (each chunk is one JSON array parameter).
const PATHS_PER_QUERY: usize = 500;

/// The columns [`product_from_row`] reads, in order, over [`PRODUCT_FROM`].
const PRODUCT_COLUMNS: &str = "p.id, m.name, p.external_id, p.title, p.attributes, p.version, \
                               p.created_at, p.updated_at";
const PRODUCT_FROM: &str = "FROM products p JOIN merchants m ON m.id = p.merchant_id";

/// The columns [`image_from_row`] reads, in order, from `images`.
const IMAGE_COLUMNS: &str = "id, product_id, sha256, byte_size, width, height, format, path";

/// A [`CatalogStore`] over one SQLite database file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn not_found(merchant: &str, external_id: &str) -> StoreError {
    StoreError::ProductNotFound {
        merchant: merchant.to_owned(),
        id: external_id.to_owned(),
    }
}

/// A `LIMIT` value for a `usize` limit (saturating: SQLite limits are signed 64-bit).
fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// `ids` as a JSON array, the single parameter of a `... IN (SELECT value FROM json_each($n))`.
fn json_ids(ids: &[i64]) -> String {
    serde_json::Value::from(ids.to_vec()).to_string()
}

impl SqliteStore {
    /// Opens (creating it if missing) the database file at `path`, with WAL journaling,
    /// `synchronous = NORMAL`, foreign keys on and a 10 s busy timeout, in a pool of 4
    /// connections, and runs the migrations.
    pub async fn open(path: &Path) -> Result<Self> {
        let options = SqliteConnectOptions::new()
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
        sqlx::migrate!("../../migrations/sqlite").run(&pool).await?;
        Ok(Self { pool })
    }

    /// A write transaction: `BEGIN IMMEDIATE` takes the write lock up front (waiting up to the
    /// busy timeout), so everything read inside it stays true until the commit.
    async fn write_tx(&self) -> Result<Transaction<'static, Sqlite>> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// A read transaction (deferred, never written in): one snapshot for several queries.
    async fn read_tx(&self) -> Result<Transaction<'static, Sqlite>> {
        Ok(self.pool.begin().await?)
    }
}

// ---- statements shared by several operations ------------------------------------------------

/// The internal id and version of a merchant's product.
async fn locate(
    conn: &mut SqliteConnection,
    merchant: &str,
    external_id: &str,
) -> Result<(i64, i64)> {
    sqlx::query_as::<_, (i64, i64)>(
        "SELECT p.id, p.version FROM products p JOIN merchants m ON m.id = p.merchant_id \
         WHERE m.name = $1 AND p.external_id = $2",
    )
    .bind(merchant)
    .bind(external_id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| not_found(merchant, external_id))
}

/// [`locate`] plus the compare-and-set check; inside a write transaction, so the version
/// cannot move before the commit. Returns the product's id.
async fn locate_for_write(
    conn: &mut SqliteConnection,
    merchant: &str,
    external_id: &str,
    expect: Option<Expect>,
) -> Result<i64> {
    let (id, actual) = locate(conn, merchant, external_id).await?;
    match expect {
        Some(e) if e.product_id != id || e.version != actual => Err(StoreError::VersionConflict {
            merchant: merchant.to_owned(),
            id: external_id.to_owned(),
            expected: e.version,
            actual,
        }),
        _ => Ok(id),
    }
}

/// Bumps the version and stamps `updated_at`: part of every write to an existing product.
async fn bump(conn: &mut SqliteConnection, product_id: i64, now: i64) -> Result<()> {
    sqlx::query("UPDATE products SET version = version + 1, updated_at = $1 WHERE id = $2")
        .bind(now)
        .bind(product_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn insert_embedding(
    conn: &mut SqliteConnection,
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
    .fetch_one(&mut *conn)
    .await?)
}

async fn insert_images(
    conn: &mut SqliteConnection,
    product_id: i64,
    images: &[NewImage],
    model_version: &str,
    now: i64,
) -> Result<()> {
    for img in images {
        let image_id: i64 = sqlx::query_scalar(
            "INSERT INTO images (product_id, sha256, byte_size, width, height, format, path, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        )
        .bind(product_id)
        .bind(&img.sha256)
        .bind(img.byte_size)
        .bind(i64::from(img.width))
        .bind(i64::from(img.height))
        .bind(&img.format)
        .bind(&img.path)
        .bind(now)
        .fetch_one(&mut *conn)
        .await?;
        insert_embedding(conn, image_id, model_version, &img.embedding, now).await?;
    }
    Ok(())
}

async fn replace_tags(conn: &mut SqliteConnection, product_id: i64, tags: &[String]) -> Result<()> {
    sqlx::query("DELETE FROM product_tags WHERE product_id = $1")
        .bind(product_id)
        .execute(&mut *conn)
        .await?;
    for tag in tags {
        sqlx::query(
            "INSERT INTO product_tags (product_id, tag) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(product_id)
        .bind(tag)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

fn product_from_row(r: &SqliteRow) -> Result<ProductRecord> {
    let id: i64 = r.get(0);
    let attributes: String = r.get(4);
    let attributes = serde_json::from_str(&attributes)
        .map_err(|e| StoreError::Corrupt(format!("attributes of product {id}: {e}")))?;
    Ok(ProductRecord {
        id,
        merchant: r.get(1),
        external_id: r.get(2),
        title: r.get(3),
        attributes,
        tags: Vec::new(),
        version: r.get(5),
        created_at: r.get(6),
        updated_at: r.get(7),
        images: Vec::new(),
    })
}

fn image_from_row(r: &SqliteRow) -> ImageRecord {
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

/// Tags (sorted) of the products `ids`, in one query.
async fn tags_of(conn: &mut SqliteConnection, ids: &[i64]) -> Result<HashMap<i64, Vec<String>>> {
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "SELECT product_id, tag FROM product_tags \
         WHERE product_id IN (SELECT value FROM json_each($1)) ORDER BY product_id, tag",
    )
    .bind(json_ids(ids))
    .fetch_all(&mut *conn)
    .await?;
    let mut out: HashMap<i64, Vec<String>> = HashMap::new();
    for (product_id, tag) in rows {
        out.entry(product_id).or_default().push(tag);
    }
    Ok(out)
}

/// Fills in tags and images of `products` with two queries, whatever their number.
async fn attach_children(
    conn: &mut SqliteConnection,
    products: &mut [ProductRecord],
) -> Result<()> {
    if products.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = products.iter().map(|p| p.id).collect();
    let mut tags = tags_of(conn, &ids).await?;
    let images = sqlx::query(&format!(
        "SELECT {IMAGE_COLUMNS} FROM images \
         WHERE product_id IN (SELECT value FROM json_each($1)) ORDER BY id"
    ))
    .bind(json_ids(&ids))
    .fetch_all(&mut *conn)
    .await?;
    let index: HashMap<i64, usize> = ids.iter().enumerate().map(|(i, &id)| (id, i)).collect();
    for p in products.iter_mut() {
        p.tags = tags.remove(&p.id).unwrap_or_default();
    }
    for row in &images {
        let image = image_from_row(row);
        if let Some(&i) = index.get(&image.product_id) {
            products[i].images.push(image);
        }
    }
    Ok(())
}

/// One product with its tags and images.
async fn load_product(conn: &mut SqliteConnection, id: i64) -> Result<ProductRecord> {
    let row = sqlx::query(&format!(
        "SELECT {PRODUCT_COLUMNS} {PRODUCT_FROM} WHERE p.id = $1"
    ))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| StoreError::Corrupt(format!("product {id} vanished mid-transaction")))?;
    let mut products = [product_from_row(&row)?];
    attach_children(conn, &mut products).await?;
    let [product] = products;
    Ok(product)
}

/// One product's embeddings by one model. CROSS JOIN fixes SQLite's join order: from the
/// product's images (`images_by_product`) to their embeddings (the `(image_id, model_version)`
/// key). Left to itself the planner walks `embeddings_by_model`, i.e. every embedding of the
/// model, inside every write transaction: a write then cost O(catalogue), and past ~25k images
/// concurrent writes waited out the busy timeout (`snapshop bench --catalogue` found it).
const EMBEDDINGS_OF_PRODUCT: &str = "SELECT e.id, e.image_id, e.vector \
     FROM images i CROSS JOIN embeddings e ON e.image_id = i.id \
     WHERE i.product_id = $1 AND e.model_version = $2 ORDER BY e.id";

/// Several products' embeddings by one model, with their product (the change feed's
/// `product_states`); the join order as in [`EMBEDDINGS_OF_PRODUCT`].
const EMBEDDINGS_OF_PRODUCTS: &str = "SELECT e.id, e.image_id, i.product_id, e.vector \
     FROM images i CROSS JOIN embeddings e ON e.image_id = i.id \
     WHERE i.product_id IN (SELECT value FROM json_each($1)) AND e.model_version = $2 \
     ORDER BY e.id";

/// The product's embeddings by `model_version`, by key.
async fn embeddings_of(
    conn: &mut SqliteConnection,
    product_id: i64,
    model_version: &str,
) -> Result<Vec<StoredEmbedding>> {
    let rows: Vec<(i64, i64, Vec<u8>)> = sqlx::query_as(EMBEDDINGS_OF_PRODUCT)
        .bind(product_id)
        .bind(model_version)
        .fetch_all(&mut *conn)
        .await?;
    rows.into_iter()
        .map(|(key, image_id, blob)| {
            Ok(StoredEmbedding {
                key,
                image_id,
                vector: blob_to_vector(&blob)?,
            })
        })
        .collect()
}

/// Takes the next places in the change sequence, one row per product in `what` (the change
/// feed's rows): part of every write that changes the catalogue, in its transaction. Returns the
/// highest place taken.
async fn record_change(
    conn: &mut SqliteConnection,
    now: i64,
    what: Recorded<'_>,
) -> Result<ChangeStamp> {
    let ids = json_ids(what.product_ids);
    let seqs: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO catalog_changes (at, op, merchant, product_id, image_id, model_version) \
         SELECT $1, $2, $3, value, $4, $5 FROM json_each($6) RETURNING seq",
    )
    .bind(now)
    .bind(what.op.as_str())
    .bind(what.merchant)
    .bind(what.image_id)
    .bind(what.model_version)
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    let seq = seqs
        .into_iter()
        .max()
        .ok_or_else(|| StoreError::Corrupt("a change without products".into()))?;
    Ok(ChangeStamp { seq, at: now })
}

/// What a write to `product_id` committed, with its place in the change sequence: read inside
/// the write's transaction, just before the commit.
async fn written(
    conn: &mut SqliteConnection,
    product_id: i64,
    model_version: &str,
    now: i64,
    image_id: Option<i64>,
) -> Result<Written> {
    let product = load_product(conn, product_id).await?;
    let embeddings = embeddings_of(conn, product_id, model_version).await?;
    let change = record_change(
        conn,
        now,
        Recorded {
            op: ChangeOp::Upsert,
            merchant: Some(&product.merchant),
            product_ids: &[product_id],
            image_id,
            model_version: Some(model_version),
        },
    )
    .await?;
    Ok(assemble::written(product, embeddings, change))
}

/// `AND EXISTS (...)` per group of `filter` over products `p`, with JSON-array parameters from
/// `$first` on; and the parameters to bind, in order.
fn filter_sql(filter: &PurgeFilter, first: usize) -> (String, Vec<String>) {
    let mut sql = String::new();
    let mut binds = Vec::with_capacity(filter.all.len());
    for (i, group) in filter.all.iter().enumerate() {
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM product_tags t WHERE t.product_id = p.id \
               AND t.tag IN (SELECT value FROM json_each(${})))",
            first + i
        ));
        binds.push(serde_json::Value::from(group.clone()).to_string());
    }
    (sql, binds)
}

#[async_trait::async_trait]
impl CatalogStore for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    fn access(&self) -> &dyn crate::AccessStore {
        self
    }

    fn jobs(&self) -> &dyn crate::JobStore {
        self
    }

    fn feed(&self) -> &dyn FeedStore {
        self
    }

    async fn get_product(&self, merchant: &str, external_id: &str) -> Result<ProductRecord> {
        let mut tx = self.read_tx().await?;
        let (id, _) = locate(&mut tx, merchant, external_id).await?;
        let product = load_product(&mut tx, id).await?;
        tx.commit().await?;
        Ok(product)
    }

    async fn list_products(
        &self,
        merchant: &str,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<ProductRecord>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut tx = self.read_tx().await?;
        let rows = sqlx::query(&format!(
            "SELECT {PRODUCT_COLUMNS} {PRODUCT_FROM} \
             WHERE m.name = $1 AND p.id > $2 ORDER BY p.id LIMIT $3"
        ))
        .bind(merchant)
        .bind(after.unwrap_or(i64::MIN))
        .bind(sql_limit(limit))
        .fetch_all(&mut *tx)
        .await?;
        let mut products = rows
            .iter()
            .map(product_from_row)
            .collect::<Result<Vec<_>>>()?;
        attach_children(&mut tx, &mut products).await?;
        tx.commit().await?;
        Ok(products)
    }

    async fn load_states(&self, model_version: &str) -> Result<Vec<ProductState>> {
        let mut tx = self.read_tx().await?;
        let products: Vec<assemble::ProductRow> = sqlx::query_as(&format!(
            "SELECT p.id, p.version, m.name, p.external_id, p.title {PRODUCT_FROM} ORDER BY p.id"
        ))
        .fetch_all(&mut *tx)
        .await?;
        let tags: Vec<(i64, String)> =
            sqlx::query_as("SELECT product_id, tag FROM product_tags ORDER BY product_id, tag")
                .fetch_all(&mut *tx)
                .await?;
        let embeddings: Vec<assemble::EmbeddingRow> = sqlx::query_as(
            "SELECT e.id, e.image_id, i.product_id, e.vector \
             FROM embeddings e JOIN images i ON i.id = e.image_id \
             WHERE e.model_version = $1 ORDER BY e.id",
        )
        .bind(model_version)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        assemble::states(products, tags, embeddings)
    }

    async fn stale_images(&self, model_version: &str, limit: usize) -> Result<Vec<StaleImage>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut tx = self.read_tx().await?;
        let rows: Vec<assemble::StaleRow> = sqlx::query_as(
            "SELECT i.id, i.product_id, p.version, i.path \
             FROM images i JOIN products p ON p.id = i.product_id \
             WHERE NOT EXISTS (SELECT 1 FROM embeddings e \
                               WHERE e.image_id = i.id AND e.model_version = $1) \
             ORDER BY i.id LIMIT $2",
        )
        .bind(model_version)
        .bind(sql_limit(limit))
        .fetch_all(&mut *tx)
        .await?;
        let product_ids = assemble::stale_product_ids(&rows);
        let tags = if product_ids.is_empty() {
            HashMap::new()
        } else {
            tags_of(&mut tx, &product_ids).await?
        };
        tx.commit().await?;
        Ok(assemble::stale(rows, &tags))
    }

    async fn referenced_paths(&self, paths: &[String]) -> Result<HashSet<String>> {
        let unique = assemble::unique_paths(paths);
        let mut out = HashSet::new();
        if unique.is_empty() {
            return Ok(out);
        }
        let mut tx = self.read_tx().await?;
        for chunk in unique.chunks(PATHS_PER_QUERY) {
            let found: Vec<String> = sqlx::query_scalar(
                "SELECT DISTINCT path FROM images WHERE path IN (SELECT value FROM json_each($1))",
            )
            .bind(serde_json::Value::from(chunk.to_vec()).to_string())
            .fetch_all(&mut *tx)
            .await?;
            out.extend(found);
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn last_change(&self) -> Result<ChangeStamp> {
        let row: Option<(i64, i64)> =
            sqlx::query_as("SELECT seq, at FROM catalog_changes ORDER BY seq DESC LIMIT 1")
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map_or(ChangeStamp::default(), |(seq, at)| ChangeStamp { seq, at }))
    }

    async fn counts(&self) -> Result<Counts> {
        let (merchants, products, images, embeddings): (i64, i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM merchants), (SELECT COUNT(*) FROM products), \
                    (SELECT COUNT(*) FROM images), (SELECT COUNT(*) FROM embeddings)",
        )
        .fetch_one(&self.pool)
        .await?;
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        Ok(Counts {
            merchants: n(merchants),
            products: n(products),
            images: n(images),
            embeddings: n(embeddings),
        })
    }

    async fn create_product(
        &self,
        product: NewProduct,
        images: Vec<NewImage>,
        model_version: &str,
    ) -> Result<Written> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO merchants (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&product.merchant)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let merchant_id: i64 = sqlx::query_scalar("SELECT id FROM merchants WHERE name = $1")
            .bind(&product.merchant)
            .fetch_one(&mut *tx)
            .await?;
        let inserted = sqlx::query_scalar::<_, i64>(
            "INSERT INTO products \
             (merchant_id, external_id, title, attributes, version, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, 1, $5, $5) RETURNING id",
        )
        .bind(merchant_id)
        .bind(&product.external_id)
        .bind(&product.title)
        .bind(product.attributes.to_string())
        .bind(now)
        .fetch_one(&mut *tx)
        .await;
        let product_id = match inserted {
            Ok(id) => id,
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(StoreError::ProductExists {
                    merchant: product.merchant,
                    id: product.external_id,
                })
            }
            Err(e) => return Err(e.into()),
        };
        take_quota(
            &mut tx,
            merchant_id,
            product_id,
            images.len(),
            product.quota,
        )
        .await?;
        replace_tags(&mut tx, product_id, &product.tags).await?;
        insert_images(&mut tx, product_id, &images, model_version, now).await?;
        let out = written(&mut tx, product_id, model_version, now, None).await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn add_images(
        &self,
        merchant: &str,
        external_id: &str,
        expect: Option<Expect>,
        images: Vec<NewImage>,
        model_version: &str,
        quota: Quota,
    ) -> Result<Written> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        let product_id = locate_for_write(&mut tx, merchant, external_id, expect).await?;
        take_images(&mut tx, product_id, images.len(), quota).await?;
        insert_images(&mut tx, product_id, &images, model_version, now).await?;
        bump(&mut tx, product_id, now).await?;
        let out = written(&mut tx, product_id, model_version, now, None).await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn update_product(
        &self,
        merchant: &str,
        external_id: &str,
        expect: Option<Expect>,
        update: ProductUpdate,
        model_version: &str,
    ) -> Result<Written> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        let product_id = locate_for_write(&mut tx, merchant, external_id, expect).await?;
        if !update.embeddings.is_empty() {
            let own: HashSet<i64> =
                sqlx::query_scalar("SELECT id FROM images WHERE product_id = $1")
                    .bind(product_id)
                    .fetch_all(&mut *tx)
                    .await?
                    .into_iter()
                    .collect();
            if let Some((foreign, _)) = update.embeddings.iter().find(|(id, _)| !own.contains(id)) {
                // Dropping `tx` rolls back; nothing was written yet anyway.
                return Err(StoreError::Corrupt(format!(
                    "image {foreign} is not an image of product `{external_id}` of merchant `{merchant}`"
                )));
            }
        }
        sqlx::query(
            "UPDATE products SET title = COALESCE($1, title), \
             attributes = COALESCE($2, attributes), version = version + 1, updated_at = $3 \
             WHERE id = $4",
        )
        .bind(update.title.as_deref())
        .bind(update.attributes.as_ref().map(|a| a.to_string()))
        .bind(now)
        .bind(product_id)
        .execute(&mut *tx)
        .await?;
        if let Some(tags) = &update.tags {
            replace_tags(&mut tx, product_id, tags).await?;
        }
        for (image_id, vector) in &update.embeddings {
            sqlx::query("DELETE FROM embeddings WHERE image_id = $1")
                .bind(image_id)
                .execute(&mut *tx)
                .await?;
            insert_embedding(&mut tx, *image_id, model_version, vector, now).await?;
        }
        let out = written(&mut tx, product_id, model_version, now, None).await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn delete_product(
        &self,
        merchant: &str,
        external_id: &str,
        expect: Option<Expect>,
    ) -> Result<Deleted> {
        let mut tx = self.write_tx().await?;
        let product_id = locate_for_write(&mut tx, merchant, external_id, expect).await?;
        let product = load_product(&mut tx, product_id).await?;
        sqlx::query(access::RELEASE_PRODUCT)
            .bind(product_id)
            .bind(product.images.len() as i64)
            .execute(&mut *tx)
            .await?;
        // Explicit deletes rather than ON DELETE CASCADE alone, so that a connection without
        // foreign keys enabled cannot leave orphans.
        sqlx::query(
            "DELETE FROM embeddings WHERE image_id IN (SELECT id FROM images WHERE product_id = $1)",
        )
        .bind(product_id)
        .execute(&mut *tx)
        .await?;
        for table in ["images", "product_tags"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE product_id = $1"))
                .bind(product_id)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM products WHERE id = $1")
            .bind(product_id)
            .execute(&mut *tx)
            .await?;
        let change = record_change(
            &mut tx,
            now_ms(),
            Recorded {
                op: ChangeOp::Delete,
                merchant: Some(merchant),
                product_ids: &[product_id],
                image_id: None,
                model_version: None,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(Deleted { product, change })
    }

    async fn delete_image(
        &self,
        merchant: &str,
        external_id: &str,
        image_id: i64,
        expect: Option<Expect>,
        model_version: &str,
    ) -> Result<Written> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        let product_id = locate_for_write(&mut tx, merchant, external_id, expect).await?;
        let owner: Option<i64> = sqlx::query_scalar("SELECT product_id FROM images WHERE id = $1")
            .bind(image_id)
            .fetch_optional(&mut *tx)
            .await?;
        if owner != Some(product_id) {
            return Err(StoreError::ImageNotFound {
                merchant: merchant.to_owned(),
                id: external_id.to_owned(),
                image_id,
            });
        }
        sqlx::query("DELETE FROM embeddings WHERE image_id = $1")
            .bind(image_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM images WHERE id = $1")
            .bind(image_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(access::RELEASE_IMAGES)
            .bind(product_id)
            .bind(1i64)
            .execute(&mut *tx)
            .await?;
        bump(&mut tx, product_id, now).await?;
        let out = written(&mut tx, product_id, model_version, now, Some(image_id)).await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn purge(&self, merchant: &str, filter: &PurgeFilter, dry_run: bool) -> Result<Purged> {
        // BEGIN IMMEDIATE: no write interleaves between choosing the products and deleting them.
        let mut tx = self.write_tx().await?;
        let (cond, binds) = filter_sql(filter, 2);
        let sql = format!("SELECT p.id {PRODUCT_FROM} WHERE m.name = $1{cond} ORDER BY p.id");
        let mut query = sqlx::query_scalar::<_, i64>(&sql).bind(merchant);
        for b in &binds {
            query = query.bind(b);
        }
        let product_ids: Vec<i64> = query.fetch_all(&mut *tx).await?;
        let ids = json_ids(&product_ids);
        let images: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM images WHERE product_id IN (SELECT value FROM json_each($1))",
        )
        .bind(&ids)
        .fetch_one(&mut *tx)
        .await?;
        let images = u64::try_from(images).unwrap_or(0);
        if dry_run || product_ids.is_empty() {
            tx.rollback().await?;
            return Ok(Purged {
                product_ids,
                images,
                change: None,
            });
        }
        sqlx::query(
            "DELETE FROM embeddings WHERE image_id IN (SELECT id FROM images \
             WHERE product_id IN (SELECT value FROM json_each($1)))",
        )
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
        for table in ["images", "product_tags"] {
            sqlx::query(&format!(
                "DELETE FROM {table} WHERE product_id IN (SELECT value FROM json_each($1))"
            ))
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("DELETE FROM products WHERE id IN (SELECT value FROM json_each($1))")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        sqlx::query(access::RELEASE_PRODUCTS)
            .bind(merchant)
            .bind(product_ids.len() as i64)
            .bind(images as i64)
            .execute(&mut *tx)
            .await?;
        let change = record_change(
            &mut tx,
            now_ms(),
            Recorded {
                op: ChangeOp::Delete,
                merchant: Some(merchant),
                product_ids: &product_ids,
                image_id: None,
                model_version: None,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(Purged {
            product_ids,
            images,
            change: Some(change),
        })
    }

    async fn put_embeddings(
        &self,
        model_version: &str,
        embeddings: Vec<NewEmbedding>,
    ) -> Result<usize> {
        if embeddings.is_empty() {
            return Ok(0);
        }
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        let mut written = 0;
        let mut products = Vec::new();
        for e in &embeddings {
            let current: Option<i64> = sqlx::query_scalar(
                "SELECT i.id FROM images i JOIN products p ON p.id = i.product_id \
                 WHERE i.id = $1 AND i.product_id = $2 AND p.version = $3",
            )
            .bind(e.image_id)
            .bind(e.product_id)
            .bind(e.product_version)
            .fetch_optional(&mut *tx)
            .await?;
            if current.is_none() {
                continue;
            }
            // Delete then insert: the replacement gets a new key (keys are never reused).
            sqlx::query("DELETE FROM embeddings WHERE image_id = $1 AND model_version = $2")
                .bind(e.image_id)
                .bind(model_version)
                .execute(&mut *tx)
                .await?;
            insert_embedding(&mut tx, e.image_id, model_version, &e.vector, now).await?;
            written += 1;
            products.push(e.product_id);
        }
        products.sort_unstable();
        products.dedup();
        if !products.is_empty() {
            record_change(
                &mut tx,
                now,
                Recorded {
                    op: ChangeOp::Embed,
                    merchant: None,
                    product_ids: &products,
                    image_id: None,
                    model_version: Some(model_version),
                },
            )
            .await?;
        }
        tx.commit().await?;
        Ok(written)
    }

    async fn drop_other_versions(&self, keep: &str) -> Result<u64> {
        // One statement: SQLite takes the write lock when it starts.
        Ok(
            sqlx::query("DELETE FROM embeddings WHERE model_version <> $1")
                .bind(keep)
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }
}

access::quota_steps!(SqliteConnection);

/// The feed's final point: with one writer at a time, every committed row is final.
async fn final_point(conn: &mut SqliteConnection) -> Result<FeedCursor> {
    let head: Option<i64> = sqlx::query_scalar("SELECT max(seq) FROM catalog_changes")
        .fetch_one(&mut *conn)
        .await?;
    Ok(FeedCursor {
        txid: head.unwrap_or(0),
        seq: i64::MAX,
    })
}

#[async_trait::async_trait]
impl FeedStore for SqliteStore {
    async fn feed_head(&self) -> Result<FeedCursor> {
        let mut conn = self.pool.acquire().await?;
        final_point(&mut conn).await
    }

    async fn changes_after(&self, after: FeedCursor, limit: usize) -> Result<FeedBatch> {
        let mut tx = self.pool.begin().await?;
        let horizon = final_point(&mut tx).await?;
        // The cursor's `txid` is the last `seq` read (see the module documentation).
        let rows: Vec<feed::ChangeRow> = sqlx::query_as(
            "SELECT seq, seq, at, op, merchant, product_id, image_id, model_version \
             FROM catalog_changes WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after.txid)
        .bind(feed::limit_of(limit))
        .fetch_all(&mut *tx)
        .await?;
        let changes: Vec<FeedChange> = rows.into_iter().map(feed::change_from_row).collect();
        let next = feed::next_cursor(after, &changes, limit, horizon);
        let (pending, oldest): (i64, Option<i64>) =
            sqlx::query_as("SELECT count(*), min(at) FROM catalog_changes WHERE seq > $1")
                .bind(next.txid)
                .fetch_one(&mut *tx)
                .await?;
        let (ctxid, cseq): (i64, i64) =
            sqlx::query_as("SELECT txid, seq FROM feed_compacted WHERE id = 1")
                .fetch_one(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(FeedBatch {
            changes,
            next,
            compacted: FeedCursor {
                txid: ctxid,
                seq: cseq,
            },
            pending: pending.max(0) as u64,
            oldest_pending_at: oldest,
        })
    }

    async fn product_states(&self, ids: &[i64], model_version: &str) -> Result<Vec<ProductState>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids = json_ids(ids);
        let mut tx = self.pool.begin().await?;
        let products: Vec<assemble::ProductRow> = sqlx::query_as(&format!(
            "SELECT p.id, p.version, m.name, p.external_id, p.title {PRODUCT_FROM} \
             WHERE p.id IN (SELECT value FROM json_each($1)) ORDER BY p.id"
        ))
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?;
        let tags: Vec<(i64, String)> = sqlx::query_as(
            "SELECT product_id, tag FROM product_tags \
             WHERE product_id IN (SELECT value FROM json_each($1)) ORDER BY product_id, tag",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?;
        let embeddings: Vec<assemble::EmbeddingRow> = sqlx::query_as(EMBEDDINGS_OF_PRODUCTS)
            .bind(&ids)
            .bind(model_version)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        assemble::states(products, tags, embeddings)
    }

    async fn checkin(&self, c: Checkin<'_>) -> Result<()> {
        sqlx::query(
            "INSERT INTO feed_replicas (replica, txid, seq, model_version, seen_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (replica) DO UPDATE SET \
             txid = excluded.txid, seq = excluded.seq, model_version = excluded.model_version, \
             seen_at = excluded.seen_at",
        )
        .bind(c.replica)
        .bind(c.cursor.txid)
        .bind(c.cursor.seq)
        .bind(c.model_version)
        .bind(c.now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn replicas(&self, since: i64) -> Result<Vec<feed::Replica>> {
        let rows: Vec<(String, i64, i64, String, i64)> = sqlx::query_as(
            "SELECT replica, txid, seq, model_version, seen_at FROM feed_replicas \
             WHERE seen_at >= $1 ORDER BY replica",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(feed::replica_from_row).collect())
    }

    async fn compact(&self, live_since: i64) -> Result<Compacted> {
        let mut tx = self.write_tx().await?;
        let replicas = sqlx::query("DELETE FROM feed_replicas WHERE seen_at < $1")
            .bind(live_since)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let slowest: Option<(i64, i64)> =
            sqlx::query_as("SELECT txid, seq FROM feed_replicas ORDER BY txid, seq LIMIT 1")
                .fetch_optional(&mut *tx)
                .await?;
        let through = match slowest {
            Some((txid, seq)) => FeedCursor { txid, seq },
            None => final_point(&mut tx).await?,
        };
        let changes = sqlx::query(
            "DELETE FROM catalog_changes WHERE seq <= $1 \
             AND seq < (SELECT max(seq) FROM catalog_changes)",
        )
        .bind(through.txid)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let (txid, seq): (i64, i64) = sqlx::query_as(
            "UPDATE feed_compacted SET txid = max(txid, $1), \
             seq = CASE WHEN (txid, seq) < ($1, $2) THEN $2 ELSE seq END \
             WHERE id = 1 RETURNING txid, seq",
        )
        .bind(through.txid)
        .bind(through.seq)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Compacted {
            changes,
            replicas,
            through: FeedCursor { txid, seq },
        })
    }

    async fn set_serving_model(&self, model: &feed::ServingModel) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO serving_model (id, model_version, bundle, set_at) VALUES (1, $1, $2, $3) \
             ON CONFLICT (id) DO UPDATE SET model_version = EXCLUDED.model_version, \
             bundle = EXCLUDED.bundle, set_at = EXCLUDED.set_at",
        )
        .bind(&model.model_version)
        .bind(&model.bundle)
        .bind(model.set_at)
        .execute(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO catalog_changes (at, op, model_version) VALUES ($1, 'model', $2)")
            .bind(model.set_at)
            .bind(&model.model_version)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn serving_model(&self) -> Result<Option<feed::ServingModel>> {
        let row: Option<(String, String, i64)> =
            sqlx::query_as("SELECT model_version, bundle, set_at FROM serving_model WHERE id = 1")
                .fetch_optional(&self.pool)
                .await?;
        Ok(
            row.map(|(model_version, bundle, set_at)| feed::ServingModel {
                model_version,
                bundle,
                set_at,
            }),
        )
    }

    async fn listen(&self, _wake: Arc<tokio::sync::Notify>) -> Result<bool> {
        Ok(false)
    }
}

access::impl_access_store!(SqliteStore, sqlx::Sqlite);
crate::jobs::impl_job_store!(SqliteStore, sqlx::Sqlite);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract;

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("t.db")).await.unwrap();
        (dir, s)
    }

    /// A write reads its product's embeddings through the product's images, never by walking
    /// every embedding of the model (which made each write O(catalogue)).
    #[tokio::test]
    async fn embedding_reads_start_from_the_products_images() {
        let (_dir, s) = store().await;
        for (sql, args) in [
            (EMBEDDINGS_OF_PRODUCT, ("1", "m")),
            (EMBEDDINGS_OF_PRODUCTS, ("[1, 2]", "m")),
        ] {
            let plan: Vec<(i64, i64, i64, String)> =
                sqlx::query_as(&format!("EXPLAIN QUERY PLAN {sql}"))
                    .bind(args.0)
                    .bind(args.1)
                    .fetch_all(&s.pool)
                    .await
                    .unwrap();
            let steps: Vec<&str> = plan.iter().map(|r| r.3.as_str()).collect();
            assert!(
                steps.iter().any(|d| d.contains("images_by_product")),
                "{steps:?}"
            );
            assert!(
                !steps.iter().any(|d| d.contains("embeddings_by_model")),
                "{steps:?}"
            );
        }
    }

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

    fn product(merchant: &str, id: &str, tags: &[&str]) -> NewProduct {
        NewProduct {
            merchant: merchant.into(),
            external_id: id.into(),
            title: "t".into(),
            attributes: serde_json::json!({"price": 10}),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            quota: Quota::UNLIMITED,
        }
    }

    #[test]
    fn blobs_round_trip() {
        let v = vec![0.1f32, -2.5, f32::MIN_POSITIVE, f32::MAX, -0.0];
        let blob = vector_to_blob(&v);
        assert_eq!(blob.len(), 4 * v.len());
        assert_eq!(&blob[..4], &0.1f32.to_le_bytes());
        assert_eq!(blob_to_vector(&blob).unwrap(), v);
        assert!(blob_to_vector(&[]).unwrap().is_empty());
        assert!(matches!(
            blob_to_vector(&[1, 2, 3]),
            Err(StoreError::Corrupt(_))
        ));
    }

    /// Each contract check on its own fresh file, so that a failure names the check.
    macro_rules! contract_checks {
        ($($check:ident),* $(,)?) => {
            mod contract_checks {
                $(
                    #[tokio::test]
                    async fn $check() {
                        let (_d, s) = super::store().await;
                        crate::contract::$check(&s).await;
                    }
                )*
            }
        };
    }

    contract_checks!(
        backend_and_ping,
        create_get_list,
        duplicate_create,
        not_found,
        versions,
        update_replaces_tags_and_embeddings,
        update_with_foreign_image_is_corrupt,
        written_states,
        load_states,
        stale_images_and_put_embeddings,
        referenced_paths,
        counts,
        concurrent_compare_and_set,
        concurrent_writes_to_different_products,
        quotas,
        merchant_overrides,
        concurrent_quota,
        keys,
        import_jobs,
        concurrent_job_claims,
        delete_image,
        purge,
        change_sequence,
        concurrent_purge_and_retag,
        change_feed,
        feed_compaction,
        drop_other_versions,
    );

    #[tokio::test]
    async fn contract_suite_on_a_fresh_file() {
        let (_d, s) = store().await;
        contract::run_all(&s).await;
    }

    #[tokio::test]
    async fn contract_suite_twice_on_one_file_through_open() {
        // A second run meets the first run's data: the checks must not depend on an empty
        // database. Also goes through the URL opener and a reopen (migrations run twice).
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("shared.db").display());
        let first = crate::open(&url).await.unwrap();
        assert_eq!(first.backend(), "sqlite");
        contract::run_all(first.as_ref()).await;
        first.close().await;
        let second = crate::open(&url).await.unwrap();
        contract::run_all(second.as_ref()).await;
        second.close().await;
    }

    #[tokio::test]
    async fn open_accepts_sqlite_urls_and_rejects_unknown_ones() {
        let dir = tempfile::tempdir().unwrap();
        let plain = format!("sqlite:{}", dir.path().join("plain.db").display());
        let s = crate::open(&plain).await.unwrap();
        s.ping().await.unwrap();
        s.close().await;
        // Postgres URLs go to the Postgres backend (`postgres::tests`); a near miss does not.
        for url in ["postgres:localhost/snapshop", "mysql://x", "/tmp/x.db", ""] {
            match crate::open(url).await {
                Err(StoreError::UnsupportedUrl(u)) => assert_eq!(u, url),
                Err(e) => panic!("{url}: expected UnsupportedUrl, got {e}"),
                Ok(_) => panic!("{url}: expected UnsupportedUrl, got a store"),
            }
        }
    }

    #[tokio::test]
    async fn close_makes_later_calls_fail() {
        let (_d, s) = store().await;
        s.ping().await.unwrap();
        s.close().await;
        assert!(s.ping().await.is_err());
        assert!(s.get_product("m", "p").await.is_err());
    }

    #[tokio::test]
    async fn migrations_add_version_and_path_index() {
        let (_d, s) = store().await;
        let w = s
            .create_product(product("m", "p", &[]), vec![image("aa", 0.5)], "v1")
            .await
            .unwrap();
        let version: i64 = sqlx::query_scalar("SELECT version FROM products WHERE id = $1")
            .bind(w.product.id)
            .fetch_one(&s.pool)
            .await
            .unwrap();
        assert_eq!(version, 1);
        let rows = sqlx::query(
            "EXPLAIN QUERY PLAN SELECT DISTINCT path FROM images \
             WHERE path IN (SELECT value FROM json_each($1))",
        )
        .bind("[\"images/aa.png\"]")
        .fetch_all(&s.pool)
        .await
        .unwrap();
        let details: Vec<String> = rows.iter().map(|r| r.get::<String, _>(3)).collect();
        assert!(
            details.iter().any(|d| d.contains("images_by_path")),
            "referenced_paths uses the path index: {details:?}"
        );
    }

    #[tokio::test]
    async fn create_get_list_delete() {
        let (_d, s) = store().await;
        let w = s
            .create_product(
                product("acme", "p1", &["category:dress", "color:red"]),
                vec![image("aa", 0.5), image("bb", 0.25)],
                "v1",
            )
            .await
            .unwrap();
        let p = &w.product;
        assert_eq!(p.tags, vec!["category:dress", "color:red"]);
        assert_eq!(p.images.len(), 2);
        assert_eq!(p.attributes, serde_json::json!({"price": 10}));
        assert_eq!(w.state.embeddings.len(), 2);
        assert_eq!(w.state.embeddings[0].vector, vec![0.5, 0.5]);

        let err = s
            .create_product(product("acme", "p1", &[]), vec![], "v1")
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::ProductExists { .. }), "{err}");
        s.create_product(product("other", "p1", &[]), vec![image("aa", 0.1)], "v1")
            .await
            .unwrap();

        assert_eq!(&s.get_product("acme", "p1").await.unwrap(), p);
        for i in 2..6 {
            s.create_product(product("acme", &format!("p{i}"), &[]), vec![], "v1")
                .await
                .unwrap();
        }
        let page1 = s.list_products("acme", None, 3).await.unwrap();
        assert_eq!(page1.len(), 3);
        let page2 = s.list_products("acme", Some(page1[2].id), 3).await.unwrap();
        assert_eq!(page2.len(), 2);
        assert_eq!(page2[1].external_id, "p5");

        assert_eq!(s.counts().await.unwrap().embeddings, 3);
        let d = s.delete_product("acme", "p1", None).await.unwrap();
        assert_eq!(&d.product, p);
        // `aa` is still used by the other merchant's product; `bb` is not.
        let refs = s
            .referenced_paths(&["images/aa.png".into(), "images/bb.png".into()])
            .await
            .unwrap();
        assert_eq!(refs, HashSet::from(["images/aa.png".to_string()]));
        assert_eq!(s.counts().await.unwrap().embeddings, 1);
        assert!(matches!(
            s.delete_product("acme", "p1", None).await,
            Err(StoreError::ProductNotFound { .. })
        ));
    }

    #[tokio::test]
    async fn update_replaces_tags_and_embeddings_with_new_keys() {
        let (_d, s) = store().await;
        let w = s
            .create_product(product("m", "p", &["a:b"]), vec![image("cc", 0.5)], "v1")
            .await
            .unwrap();
        let old_key = w.state.embeddings[0].key;
        let upd = ProductUpdate {
            title: Some("new".into()),
            tags: Some(vec!["c:d".into(), "e:f".into()]),
            embeddings: vec![(w.product.images[0].id, vec![1.0, 0.0])],
            ..Default::default()
        };
        let w2 = s.update_product("m", "p", None, upd, "v1").await.unwrap();
        assert_eq!(w2.product.title, "new");
        assert_eq!(w2.product.tags, vec!["c:d".to_string(), "e:f".to_string()]);
        assert_eq!(w2.product.version, 2);
        assert_eq!(w2.state.embeddings.len(), 1);
        assert!(w2.state.embeddings[0].key > old_key);
        assert_eq!(w2.state.embeddings[0].vector, vec![1.0, 0.0]);
        let states = s.load_states("v1").await.unwrap();
        assert_eq!(states, vec![w2.state]);
    }

    #[tokio::test]
    async fn stale_images_are_found_and_replaced() {
        let (_d, s) = store().await;
        s.create_product(product("m", "p", &["k:v"]), vec![image("dd", 0.5)], "old")
            .await
            .unwrap();
        assert!(s.stale_images("old", 10).await.unwrap().is_empty());
        let stale = s.stale_images("new", 10).await.unwrap();
        assert_eq!(stale.len(), 1);
        assert_eq!(stale[0].tags, vec!["k:v".to_string()]);
        assert_eq!(stale[0].product_version, 1);
        let n = s
            .put_embeddings(
                "new",
                vec![NewEmbedding {
                    image_id: stale[0].image_id,
                    product_id: stale[0].product_id,
                    product_version: stale[0].product_version,
                    vector: vec![0.0, 1.0],
                }],
            )
            .await
            .unwrap();
        assert_eq!(n, 1);
        assert!(s.stale_images("new", 10).await.unwrap().is_empty());
        assert_eq!(s.drop_other_versions("new").await.unwrap(), 1);
        assert_eq!(s.stale_images("old", 10).await.unwrap().len(), 1);
        assert!(s.load_states("old").await.unwrap()[0].embeddings.is_empty());
    }

    #[tokio::test]
    async fn purge_of_50k_products_removes_them_their_images_and_embeddings() {
        // 50k products with a tag, an image and an embedding each (bulk SQL, counters set as
        // the writes would), then one filtered purge of half and one of the rest.
        let (_d, s) = store().await;
        let mut tx = s.write_tx().await.unwrap();
        for sql in [
            "INSERT INTO merchants (name, created_at, product_count, image_count) \
             VALUES ('bulk', 0, 50000, 50000)",
            "WITH RECURSIVE g(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM g WHERE i < 49999) \
             INSERT INTO products (merchant_id, external_id, title, created_at, updated_at) \
             SELECT 1, 'p' || i, 't', 0, 0 FROM g",
            "INSERT INTO product_tags (product_id, tag) \
             SELECT id, CASE WHEN id % 2 = 0 THEN 'half:even' ELSE 'half:odd' END FROM products",
            "INSERT INTO images (product_id, sha256, byte_size, width, height, format, path, \
             created_at) SELECT id, 's' || id, 10, 4, 3, 'png', 'images/s' || id || '.png', 0 \
             FROM products",
            "INSERT INTO embeddings (image_id, model_version, dim, vector, created_at) \
             SELECT id, 'v1', 2, x'0000003f0000003f', 0 FROM images",
        ] {
            sqlx::query(sql).execute(&mut *tx).await.unwrap();
        }
        tx.commit().await.unwrap();
        let even = crate::PurgeFilter {
            all: vec![vec!["half:even".into()]],
        };
        let started = std::time::Instant::now();
        let purged = s.purge("bulk", &even, false).await.unwrap();
        let half = started.elapsed();
        assert_eq!((purged.product_ids.len(), purged.images), (25_000, 25_000));
        let started = std::time::Instant::now();
        let rest = s
            .purge("bulk", &crate::PurgeFilter::default(), false)
            .await
            .unwrap();
        let all = started.elapsed();
        assert_eq!(rest.product_ids.len(), 25_000);
        eprintln!("sqlite purge: 25k of 50k products by tag in {half:?}, the other 25k in {all:?}");
        assert_eq!(s.counts().await.unwrap().embeddings, 0);
        let m = crate::AccessStore::get_merchant(&s, "bulk")
            .await
            .unwrap()
            .unwrap();
        assert_eq!((m.products, m.images), (0, 0));
    }

    #[tokio::test]
    async fn load_states_scales_with_a_fixed_number_of_queries() {
        // 10k products in one transaction, then one load: a per-product query would show up as
        // a multi-second load here.
        let (_d, s) = store().await;
        let mut tx = s.write_tx().await.unwrap();
        sqlx::query("INSERT INTO merchants (name, created_at) VALUES ('bulk', 0)")
            .execute(&mut *tx)
            .await
            .unwrap();
        for i in 0..10_000i64 {
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO products (merchant_id, external_id, title, created_at, updated_at) \
                 VALUES (1, $1, 't', 0, 0) RETURNING id",
            )
            .bind(format!("p{i}"))
            .fetch_one(&mut *tx)
            .await
            .unwrap();
            sqlx::query("INSERT INTO product_tags (product_id, tag) VALUES ($1, 'k:v')")
                .bind(id)
                .execute(&mut *tx)
                .await
                .unwrap();
            insert_images(&mut tx, id, &[image(&format!("s{i}"), 0.5)], "v1", 0)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
        let started = std::time::Instant::now();
        let states = s.load_states("v1").await.unwrap();
        let took = started.elapsed();
        assert_eq!(states.len(), 10_000);
        assert!(states
            .iter()
            .all(|st| st.embeddings.len() == 1 && st.tags == ["k:v"] && st.version == 1));
        assert!(took < Duration::from_secs(10), "load_states took {took:?}");
        let page = s.list_products("bulk", None, 1000).await.unwrap();
        assert_eq!(page.len(), 1000);
        assert!(page
            .iter()
            .all(|p| p.images.len() == 1 && p.tags == ["k:v"]));
        assert_eq!(s.stale_images("v2", 5000).await.unwrap().len(), 5000);
    }
}

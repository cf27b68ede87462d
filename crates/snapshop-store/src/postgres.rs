//! The Postgres backend of [`CatalogStore`]: an existing database behind a pool of 8 connections,
//! with its own migrations (`migrations/postgres/`, the SQLite schema in Postgres SQL).
//!
//! It exists so that the catalogue can live in a database server that several processes share.
//! Everything the SQLite backend gets from its single writer, this one gets from the database
//! itself, never from a lock in this process:
//! - uniqueness by constraints (a duplicate product is the unique violation of
//!   `products_merchant_external_id`, mapped to [`StoreError::ProductExists`]);
//! - versions and compare-and-set: every write to an existing product first takes the product's
//!   row lock (`SELECT ... FOR UPDATE`), checks the expected version against the locked row and
//!   bumps it with `UPDATE ... WHERE id = $1 AND version = $2`, checking the rows affected; every
//!   writer of a product's tags, images or embeddings (also [`CatalogStore::put_embeddings`],
//!   which checks the product version under that lock) takes the same lock first, so what a
//!   write reads back before its commit is what it commits;
//! - keys that are never reused: identity columns (sequences never hand out a value twice).
//!
//! Write transactions run at READ COMMITTED under those row locks; multi-query reads run in one
//! `REPEATABLE READ, READ ONLY` transaction, so that they see a single snapshot. Id and path
//! lists go to Postgres as one array parameter (`= ANY($1)`), so the number of queries never
//! grows with the number of products in a page or in the catalogue.
//!
//! This module must never touch image files, hold image bytes, or take a process-wide lock.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgConnection, PgPool, Postgres, Row, Transaction};

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

/// Connections in the pool.
const POOL_SIZE: u32 = 8;
/// How long a query waits for a connection before the store reports itself unavailable.
const ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Paths per `referenced_paths` query (each chunk is one array parameter).
const PATHS_PER_QUERY: usize = 500;

/// Attempts of `drop_other_versions`, which may lose a deadlock against a concurrent write that
/// deletes the same embedding rows in another order (Postgres then aborts one of the two).
const DROP_ATTEMPTS: usize = 3;

/// The columns [`product_from_row`] reads, in order, over [`PRODUCT_FROM`].
const PRODUCT_COLUMNS: &str = "p.id, m.name, p.external_id, p.title, p.attributes, p.version, \
                               p.created_at, p.updated_at";
const PRODUCT_FROM: &str = "FROM products p JOIN merchants m ON m.id = p.merchant_id";

/// The columns [`image_from_row`] reads, in order, from `images`.
const IMAGE_COLUMNS: &str = "id, product_id, sha256, byte_size, width, height, format, path";

/// A [`CatalogStore`] over one Postgres database.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
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

/// A `LIMIT` value for a `usize` limit (saturating: Postgres limits are signed 64-bit).
fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// An `INTEGER` column's value for a `u32` (image sizes, vector dimensions).
fn sql_int(what: &str, v: u32) -> Result<i32> {
    i32::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} {v} exceeds 2^31 - 1")))
}

/// Whether `e` is Postgres aborting a transaction to break a deadlock or a serialization
/// conflict (SQLSTATE 40P01, 40001): the statement may simply be run again.
fn is_retryable(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if matches!(d.code().as_deref(), Some("40P01" | "40001")))
}

impl PostgresStore {
    /// Connects to the database a `postgres://` (or `postgresql://`) URL names and runs the
    /// migrations. The database must exist.
    pub async fn open(url: &str) -> Result<Self> {
        Self::connect_with(PgConnectOptions::from_str(url)?).await
    }

    /// [`PostgresStore::open`] with options built by the caller.
    pub async fn connect_with(options: PgConnectOptions) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            // Fail fast when the database is down: writes answer 503 rather than hang.
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(
                options
                    .application_name("snapshop")
                    // Plan every statement with its parameters and the tables' current sizes.
                    // sqlx prepares each query once per connection, and after five runs Postgres
                    // may switch to a generic plan that it keeps until the tables are next
                    // analysed. One made while the catalogue was empty walked every embedding,
                    // and where autovacuum is off (as on the dev VM) it was never replaced:
                    // `snapshop bench --catalogue 100000` on Postgres fell from ~480 to 133
                    // writes/s by 46k images, and one `ANALYZE` put it back at 742
                    // (docs/performance.md). EXPLAIN ANALYZE put the planning of the hot
                    // read-back at 0.1-0.6 ms on that catalogue.
                    .options([("plan_cache_mode", "force_custom_plan")]),
            )
            .await?;
        // Migrations take an advisory lock: processes starting together run them once.
        sqlx::migrate!("../../migrations/postgres")
            .run(&pool)
            .await?;
        Ok(Self { pool })
    }

    /// A write transaction (READ COMMITTED): it takes the row lock of every product it writes
    /// before it reads anything of it.
    async fn write_tx(&self) -> Result<Transaction<'static, Postgres>> {
        Ok(self.pool.begin().await?)
    }

    /// A read transaction: one snapshot for several queries.
    async fn read_tx(&self) -> Result<Transaction<'static, Postgres>> {
        Ok(self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await?)
    }
}

// ---- statements shared by several operations ------------------------------------------------

/// The internal id and version of a merchant's product (no lock: reads only).
async fn locate(conn: &mut PgConnection, merchant: &str, external_id: &str) -> Result<(i64, i64)> {
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

/// Locks the product's row (`FOR UPDATE`: a concurrent writer of the same product waits until
/// this transaction ends, then sees its commit) and checks the compare-and-set against the
/// locked row. Returns the product's id and version.
async fn lock_for_write(
    conn: &mut PgConnection,
    merchant: &str,
    external_id: &str,
    expect: Option<Expect>,
) -> Result<(i64, i64)> {
    let (id, actual) = sqlx::query_as::<_, (i64, i64)>(
        "SELECT p.id, p.version FROM products p JOIN merchants m ON m.id = p.merchant_id \
         WHERE m.name = $1 AND p.external_id = $2 FOR UPDATE OF p",
    )
    .bind(merchant)
    .bind(external_id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| not_found(merchant, external_id))?;
    match expect {
        Some(e) if e.product_id != id || e.version != actual => Err(StoreError::VersionConflict {
            merchant: merchant.to_owned(),
            id: external_id.to_owned(),
            expected: e.version,
            actual,
        }),
        _ => Ok((id, actual)),
    }
}

/// The rows affected by a version bump of a locked product: anything but one means the row
/// changed under its lock, which cannot happen.
fn check_bumped(rows: u64, product_id: i64, version: i64) -> Result<()> {
    if rows == 1 {
        Ok(())
    } else {
        Err(StoreError::Corrupt(format!(
            "product {product_id} left version {version} under its row lock"
        )))
    }
}

/// Bumps the version (compare-and-set on the version read under the lock) and stamps
/// `updated_at`: part of every write to an existing product.
async fn bump(conn: &mut PgConnection, product_id: i64, version: i64, now: i64) -> Result<()> {
    let rows = sqlx::query(
        "UPDATE products SET version = version + 1, updated_at = $1 WHERE id = $2 AND version = $3",
    )
    .bind(now)
    .bind(product_id)
    .bind(version)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    check_bumped(rows, product_id, version)
}

async fn insert_embedding(
    conn: &mut PgConnection,
    image_id: i64,
    model_version: &str,
    vector: &[f32],
    now: i64,
) -> Result<i64> {
    let dim = u32::try_from(vector.len()).unwrap_or(u32::MAX);
    Ok(sqlx::query_scalar(
        "INSERT INTO embeddings (image_id, model_version, dim, vector, created_at) \
         VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind(image_id)
    .bind(model_version)
    .bind(sql_int("vector dimension", dim)?)
    .bind(vector_to_blob(vector))
    .bind(now)
    .fetch_one(&mut *conn)
    .await?)
}

async fn insert_images(
    conn: &mut PgConnection,
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
        .bind(sql_int("image width", img.width)?)
        .bind(sql_int("image height", img.height)?)
        .bind(&img.format)
        .bind(&img.path)
        .bind(now)
        .fetch_one(&mut *conn)
        .await?;
        insert_embedding(conn, image_id, model_version, &img.embedding, now).await?;
    }
    Ok(())
}

/// Replaces the product's tags: one delete and one insert of the whole array.
async fn replace_tags(conn: &mut PgConnection, product_id: i64, tags: &[String]) -> Result<()> {
    sqlx::query("DELETE FROM product_tags WHERE product_id = $1")
        .bind(product_id)
        .execute(&mut *conn)
        .await?;
    if !tags.is_empty() {
        sqlx::query(
            "INSERT INTO product_tags (product_id, tag) SELECT $1, t FROM UNNEST($2::text[]) AS t \
             ON CONFLICT DO NOTHING",
        )
        .bind(product_id)
        .bind(tags)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

fn product_from_row(r: &PgRow) -> Result<ProductRecord> {
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

fn image_from_row(r: &PgRow) -> ImageRecord {
    ImageRecord {
        id: r.get(0),
        product_id: r.get(1),
        sha256: r.get(2),
        byte_size: r.get(3),
        width: r.get::<i32, _>(4) as u32,
        height: r.get::<i32, _>(5) as u32,
        format: r.get(6),
        path: r.get(7),
    }
}

/// Tags (sorted by bytes: the column's collation is "C") of the products `ids`, in one query.
async fn tags_of(conn: &mut PgConnection, ids: &[i64]) -> Result<HashMap<i64, Vec<String>>> {
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "SELECT product_id, tag FROM product_tags WHERE product_id = ANY($1) \
         ORDER BY product_id, tag",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    let mut out: HashMap<i64, Vec<String>> = HashMap::new();
    for (product_id, tag) in rows {
        out.entry(product_id).or_default().push(tag);
    }
    Ok(out)
}

/// Fills in tags and images of `products` with two queries, whatever their number.
async fn attach_children(conn: &mut PgConnection, products: &mut [ProductRecord]) -> Result<()> {
    if products.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = products.iter().map(|p| p.id).collect();
    let mut tags = tags_of(conn, &ids).await?;
    let images = sqlx::query(&format!(
        "SELECT {IMAGE_COLUMNS} FROM images WHERE product_id = ANY($1) ORDER BY id"
    ))
    .bind(&ids)
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
async fn load_product(conn: &mut PgConnection, id: i64) -> Result<ProductRecord> {
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

/// The product's embeddings by `model_version`, by key.
async fn embeddings_of(
    conn: &mut PgConnection,
    product_id: i64,
    model_version: &str,
) -> Result<Vec<StoredEmbedding>> {
    let rows: Vec<(i64, i64, Vec<u8>)> = sqlx::query_as(
        "SELECT e.id, e.image_id, e.vector FROM embeddings e JOIN images i ON i.id = e.image_id \
         WHERE i.product_id = $1 AND e.model_version = $2 ORDER BY e.id",
    )
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
/// feed's rows): part of every write that changes the catalogue, in its transaction. An identity
/// column, so concurrent writers never wait on each other for it; the row's `txid` defaults to
/// the writing transaction's id. Returns the highest place taken.
async fn record_change(
    conn: &mut PgConnection,
    now: i64,
    what: Recorded<'_>,
) -> Result<ChangeStamp> {
    let seq: Option<i64> = sqlx::query_scalar(
        "WITH rows AS (INSERT INTO catalog_changes \
             (at, op, merchant, product_id, image_id, model_version) \
             SELECT $1, $2, $3, unnest($4::bigint[]), $5, $6 RETURNING seq) \
         SELECT max(seq) FROM rows",
    )
    .bind(now)
    .bind(what.op.as_str())
    .bind(what.merchant)
    .bind(what.product_ids)
    .bind(what.image_id)
    .bind(what.model_version)
    .fetch_one(&mut *conn)
    .await?;
    let seq = seq.ok_or_else(|| StoreError::Corrupt("a change without products".into()))?;
    Ok(ChangeStamp { seq, at: now })
}

/// What a write to `product_id` committed, with its place in the change sequence: read inside
/// the write's transaction, under the product's row lock, just before the commit.
async fn written(
    conn: &mut PgConnection,
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

/// `AND EXISTS (...)` per group of `filter` over products `p`, with array parameters from
/// `$first` on.
fn filter_sql(filter: &PurgeFilter, first: usize) -> String {
    filter
        .all
        .iter()
        .enumerate()
        .map(|(i, _)| {
            format!(
                " AND EXISTS (SELECT 1 FROM product_tags t WHERE t.product_id = p.id \
                   AND t.tag = ANY(${}))",
                first + i
            )
        })
        .collect()
}

/// The tables whose statistics `refresh_statistics` keeps current: every one the catalogue's
/// queries join or filter on.
const ANALYZED_TABLES: [&str; 5] = [
    "products",
    "product_tags",
    "images",
    "embeddings",
    "catalog_changes",
];

/// The advisory lock that lets one process at a time (of several replicas) analyse.
const ANALYZE_LOCK: i64 = 0x736e_6170_616e_6c7a; // "snapanlz"

#[async_trait::async_trait]
impl CatalogStore for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
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
            let found: Vec<String> =
                sqlx::query_scalar("SELECT DISTINCT path FROM images WHERE path = ANY($1)")
                    .bind(chunk)
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
        // A concurrent creator of the same new merchant makes this wait for its commit; the
        // SELECT (a new statement, so a new snapshot at READ COMMITTED) then sees its row.
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
            // The unique constraint decides, also between concurrent creators (the second one
            // waits for the first to commit, then fails here). Dropping `tx` rolls back.
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
        let (product_id, version) = lock_for_write(&mut tx, merchant, external_id, expect).await?;
        take_images(&mut tx, product_id, images.len(), quota).await?;
        insert_images(&mut tx, product_id, &images, model_version, now).await?;
        bump(&mut tx, product_id, version, now).await?;
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
        let (product_id, version) = lock_for_write(&mut tx, merchant, external_id, expect).await?;
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
        let rows = sqlx::query(
            "UPDATE products SET title = COALESCE($1, title), \
             attributes = COALESCE($2, attributes), version = version + 1, updated_at = $3 \
             WHERE id = $4 AND version = $5",
        )
        .bind(update.title.as_deref())
        .bind(update.attributes.as_ref().map(|a| a.to_string()))
        .bind(now)
        .bind(product_id)
        .bind(version)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        check_bumped(rows, product_id, version)?;
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
        let (product_id, _) = lock_for_write(&mut tx, merchant, external_id, expect).await?;
        let product = load_product(&mut tx, product_id).await?;
        sqlx::query(access::RELEASE_PRODUCT)
            .bind(product_id)
            .bind(product.images.len() as i64)
            .execute(&mut *tx)
            .await?;
        // Explicit deletes, children first, as in the SQLite backend (ON DELETE CASCADE would do
        // the same here).
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
        let (product_id, version) = lock_for_write(&mut tx, merchant, external_id, expect).await?;
        // Under the product's lock: no other write adds or removes its images meanwhile.
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
        bump(&mut tx, product_id, version, now).await?;
        let out = written(&mut tx, product_id, model_version, now, Some(image_id)).await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn purge(&self, merchant: &str, filter: &PurgeFilter, dry_run: bool) -> Result<Purged> {
        let mut tx = self.write_tx().await?;
        let cond = filter_sql(filter, 2);
        // Lock the matching products in id order (as `put_embeddings` does, so two purges cannot
        // deadlock), then choose again among them with a new statement: at READ COMMITTED it
        // sees what concurrent writes committed while we waited for their locks, so a product
        // re-tagged out of the filter meanwhile is kept.
        let lock = format!(
            "SELECT p.id {PRODUCT_FROM} WHERE m.name = $1{cond} ORDER BY p.id FOR UPDATE OF p"
        );
        let mut query = sqlx::query_scalar::<_, i64>(&lock).bind(merchant);
        for group in &filter.all {
            query = query.bind(group);
        }
        let locked: Vec<i64> = query.fetch_all(&mut *tx).await?;
        let recheck = format!(
            "SELECT p.id {PRODUCT_FROM} WHERE m.name = $1 AND p.id = ANY(${}){cond} ORDER BY p.id",
            filter.all.len() + 2
        );
        let mut query = sqlx::query_scalar::<_, i64>(&recheck).bind(merchant);
        for group in &filter.all {
            query = query.bind(group);
        }
        let product_ids: Vec<i64> = query.bind(&locked).fetch_all(&mut *tx).await?;
        let images: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM images WHERE product_id = ANY($1)")
                .bind(&product_ids)
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
            "DELETE FROM embeddings WHERE image_id IN \
             (SELECT id FROM images WHERE product_id = ANY($1))",
        )
        .bind(&product_ids)
        .execute(&mut *tx)
        .await?;
        for table in ["images", "product_tags"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE product_id = ANY($1)"))
                .bind(&product_ids)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM products WHERE id = ANY($1)")
            .bind(&product_ids)
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
        // Lock every product named, in id order (so two batches cannot deadlock), and read
        // their versions under the locks: no write can move them before the commit.
        let mut product_ids: Vec<i64> = embeddings.iter().map(|e| e.product_id).collect();
        product_ids.sort_unstable();
        product_ids.dedup();
        let versions: HashMap<i64, i64> = sqlx::query_as::<_, (i64, i64)>(
            "SELECT id, version FROM products WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        )
        .bind(&product_ids)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
        let image_ids: Vec<i64> = embeddings.iter().map(|e| e.image_id).collect();
        let owners: HashMap<i64, i64> =
            sqlx::query_as::<_, (i64, i64)>("SELECT id, product_id FROM images WHERE id = ANY($1)")
                .bind(&image_ids)
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .collect();
        let mut written = 0;
        let mut products = Vec::new();
        for e in &embeddings {
            let current = versions.get(&e.product_id) == Some(&e.product_version)
                && owners.get(&e.image_id) == Some(&e.product_id);
            if !current {
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

    /// ANALYZE each catalogue table with more row changes since its last analysis than
    /// autovacuum's default trigger (50 + 10 % of its rows). Where autovacuum runs, it has
    /// usually done so already and this finds nothing; where it is off (the dev VM's server),
    /// nothing else would. Without statistics the change feed's several-product read
    /// (`= ANY($1)` over a few hundred ids) took 1.0-1.6 s at 60-90k images, and none was slow
    /// with them (docs/performance.md; the plan of a slow one was not captured).
    async fn refresh_statistics(&self) -> Result<Vec<String>> {
        let mut tx = self.pool.begin().await?;
        let mine: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(ANALYZE_LOCK)
            .fetch_one(&mut *tx)
            .await?;
        if !mine {
            return Ok(Vec::new()); // another replica is at it
        }
        let stale: Vec<String> = sqlx::query_scalar(
            "SELECT relname::text FROM pg_stat_user_tables \
             WHERE schemaname = current_schema() AND relname = ANY($1) \
               AND n_mod_since_analyze > 50 + 0.1 * n_live_tup ORDER BY relname",
        )
        .bind(&ANALYZED_TABLES[..])
        .fetch_all(&mut *tx)
        .await?;
        for table in &stale {
            // The names come from ANALYZED_TABLES, never from input.
            sqlx::query(&format!("ANALYZE {table}"))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(stale)
    }

    async fn drop_other_versions(&self, keep: &str) -> Result<u64> {
        // One statement (its own transaction); run again if it lost a deadlock.
        let mut attempt = 1;
        loop {
            match sqlx::query("DELETE FROM embeddings WHERE model_version <> $1")
                .bind(keep)
                .execute(&self.pool)
                .await
            {
                Ok(done) => return Ok(done.rows_affected()),
                Err(e) if attempt < DROP_ATTEMPTS && is_retryable(&e) => {
                    tracing::warn!(attempt, error = %e, "drop_other_versions: retrying");
                    attempt += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

access::quota_steps!(PgConnection);

/// The feed's final point in the current transaction's snapshot: every transaction below the
/// oldest one still running has finished.
async fn final_point(conn: &mut PgConnection) -> Result<FeedCursor> {
    let xmin: i64 =
        sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
            .fetch_one(&mut *conn)
            .await?;
    Ok(FeedCursor {
        txid: xmin - 1,
        seq: i64::MAX,
    })
}

#[async_trait::async_trait]
impl FeedStore for PostgresStore {
    async fn feed_head(&self) -> Result<FeedCursor> {
        let mut conn = self.pool.acquire().await?;
        final_point(&mut conn).await
    }

    async fn changes_after(&self, after: FeedCursor, limit: usize) -> Result<FeedBatch> {
        // One snapshot: the horizon and the rows agree.
        let mut tx = self.read_tx().await?;
        let horizon = final_point(&mut tx).await?;
        let rows: Vec<feed::ChangeRow> = sqlx::query_as(
            "SELECT txid, seq, at, op, merchant, product_id, image_id, model_version \
             FROM catalog_changes WHERE (txid, seq) > ($1, $2) AND txid <= $3 \
             ORDER BY txid, seq LIMIT $4",
        )
        .bind(after.txid)
        .bind(after.seq)
        .bind(horizon.txid)
        .bind(feed::limit_of(limit))
        .fetch_all(&mut *tx)
        .await?;
        let changes: Vec<FeedChange> = rows.into_iter().map(feed::change_from_row).collect();
        let next = feed::next_cursor(after, &changes, limit, horizon);
        let (pending, oldest): (i64, Option<i64>) = sqlx::query_as(
            "SELECT count(*), min(at) FROM catalog_changes WHERE (txid, seq) > ($1, $2)",
        )
        .bind(next.txid)
        .bind(next.seq)
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
        let mut tx = self.read_tx().await?;
        let products: Vec<assemble::ProductRow> = sqlx::query_as(&format!(
            "SELECT p.id, p.version, m.name, p.external_id, p.title {PRODUCT_FROM} \
             WHERE p.id = ANY($1) ORDER BY p.id"
        ))
        .bind(ids)
        .fetch_all(&mut *tx)
        .await?;
        let tags: Vec<(i64, String)> = sqlx::query_as(
            "SELECT product_id, tag FROM product_tags WHERE product_id = ANY($1) \
             ORDER BY product_id, tag",
        )
        .bind(ids)
        .fetch_all(&mut *tx)
        .await?;
        let embeddings: Vec<assemble::EmbeddingRow> = sqlx::query_as(
            "SELECT e.id, e.image_id, i.product_id, e.vector \
             FROM embeddings e JOIN images i ON i.id = e.image_id \
             WHERE i.product_id = ANY($1) AND e.model_version = $2 ORDER BY e.id",
        )
        .bind(ids)
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
             txid = EXCLUDED.txid, seq = EXCLUDED.seq, model_version = EXCLUDED.model_version, \
             seen_at = EXCLUDED.seen_at",
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
            "DELETE FROM catalog_changes WHERE (txid, seq) <= ($1, $2) \
             AND seq < (SELECT max(seq) FROM catalog_changes)",
        )
        .bind(through.txid)
        .bind(through.seq)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let (txid, seq): (i64, i64) = sqlx::query_as(
            "UPDATE feed_compacted SET txid = GREATEST(txid, $1), \
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

    async fn listen(&self, wake: Arc<tokio::sync::Notify>) -> Result<bool> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool).await?;
        listener.listen("snapshop_changes").await?;
        // Anything committed while no one listened: read once now.
        wake.notify_one();
        loop {
            // `None`: the connection was lost (and is re-opened by the next call); notifications
            // may have been missed meanwhile, so wake the follower either way.
            let got = listener.try_recv().await?;
            wake.notify_one();
            if got.is_none() {
                return Err(StoreError::Unavailable(
                    "the LISTEN connection was lost".into(),
                ));
            }
        }
    }
}

access::impl_access_store!(PostgresStore, sqlx::Postgres);
crate::jobs::impl_job_store!(PostgresStore, sqlx::Postgres);

#[cfg(test)]
mod tests {
    //! The contract suite against a real server: the one `SNAPSHOP_TEST_POSTGRES_URL` names
    //! (`scripts/test.sh` provides one). Every test works in a database of its own, created on
    //! that server for the test (`CREATE DATABASE snapshop_test_...`) and dropped at its end,
    //! so that tests running in parallel, or other users of the same server, never see each
    //! other's rows (`drop_other_versions` is global to a database). The URL's role must be
    //! allowed to create databases. Without the variable every test here is skipped with a
    //! message, unless `SNAPSHOP_REQUIRE_POSTGRES=1`: then it fails.

    use super::*;
    use crate::contract;
    use sqlx::{ConnectOptions, Connection, Executor};
    use std::future::Future;
    use std::sync::atomic::{AtomicU64, Ordering};

    const URL_VAR: &str = "SNAPSHOP_TEST_POSTGRES_URL";
    const REQUIRE_VAR: &str = "SNAPSHOP_REQUIRE_POSTGRES";

    /// The server URL, or `None` when the test is to be skipped (it says so on stderr).
    fn server_url(test: &str) -> Option<String> {
        match std::env::var(URL_VAR) {
            Ok(url) if !url.trim().is_empty() => Some(url),
            _ if std::env::var(REQUIRE_VAR).as_deref() == Ok("1") => panic!(
                "{test}: {REQUIRE_VAR}=1 but {URL_VAR} is unset; set it to \
                 postgres://USER@HOST:PORT/DB of a server where USER may create databases"
            ),
            _ => {
                eprintln!(
                    "SKIPPED postgres::{test}: {URL_VAR} is unset (set it to \
                     postgres://USER@HOST:PORT/DB of a server where USER may create databases; \
                     scripts/test.sh does, and sets {REQUIRE_VAR}=1)"
                );
                None
            }
        }
    }

    /// `url` with its database name replaced by `database` (query string kept).
    fn with_database(url: &str, database: &str) -> String {
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, format!("?{q}")),
            None => (url, String::new()),
        };
        let after_scheme = base.find("://").map_or(0, |i| i + 3);
        let authority_end = base[after_scheme..]
            .find('/')
            .map_or(base.len(), |i| after_scheme + i);
        format!("{}/{database}{query}", &base[..authority_end])
    }

    /// A database of its own on the server, dropped by [`FreshDb::drop`].
    struct FreshDb {
        server: PgConnectOptions,
        name: String,
        url: String,
    }

    impl FreshDb {
        async fn create(server_url: &str) -> FreshDb {
            static SEQ: AtomicU64 = AtomicU64::new(0);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let name = format!(
                "snapshop_test_{}_{nanos:x}_{}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            );
            let server = PgConnectOptions::from_str(server_url)
                .unwrap_or_else(|e| panic!("{URL_VAR} is not a Postgres URL: {e}"));
            let mut conn = server
                .connect()
                .await
                .unwrap_or_else(|e| panic!("connect to {URL_VAR} ({server_url}): {e}"));
            // template0: never connected to, so a session on template1 cannot make this fail.
            conn.execute(format!(r#"CREATE DATABASE "{name}" TEMPLATE template0"#).as_str())
                .await
                .unwrap_or_else(|e| {
                    panic!("CREATE DATABASE {name} (the {URL_VAR} role needs CREATEDB): {e}")
                });
            conn.close().await.ok();
            let url = with_database(server_url, &name);
            FreshDb { server, name, url }
        }

        fn options(&self) -> PgConnectOptions {
            self.server.clone().database(&self.name)
        }

        async fn drop(self) {
            match self.server.connect().await {
                Ok(mut conn) => {
                    let sql = format!(r#"DROP DATABASE IF EXISTS "{}" WITH (FORCE)"#, self.name);
                    if let Err(e) = conn.execute(sql.as_str()).await {
                        eprintln!("could not drop test database {}: {e}", self.name);
                    }
                    conn.close().await.ok();
                }
                Err(e) => eprintln!("could not drop test database {}: {e}", self.name),
            }
        }
    }

    /// Runs `check` on a store over a fresh database (skipped without a server), drops the
    /// database, then passes on the check's panic, if any.
    async fn on_fresh_db<F, Fut>(test: &str, check: F)
    where
        F: FnOnce(PostgresStore, String) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Some(url) = server_url(test) else { return };
        let db = FreshDb::create(&url).await;
        let store = match PostgresStore::connect_with(db.options()).await {
            Ok(store) => store,
            Err(e) => {
                db.drop().await;
                panic!("{test}: open the fresh database: {e}");
            }
        };
        let result = tokio::spawn(check(store.clone(), db.url.clone())).await;
        store.close().await;
        db.drop().await;
        if let Err(e) = result {
            if e.is_panic() {
                std::panic::resume_unwind(e.into_panic());
            }
            panic!("{test}: {e}");
        }
    }

    /// A feed row as a writer in transaction `tx` records it (product `pid`).
    async fn record_in(tx: &mut PgConnection, pid: i64) {
        sqlx::query(
            "INSERT INTO catalog_changes (at, op, merchant, product_id) VALUES (1, 'upsert', 'm', $1)",
        )
        .bind(pid)
        .execute(&mut *tx)
        .await
        .unwrap();
    }

    async fn feed_pids(store: &PostgresStore, after: FeedCursor) -> (Vec<i64>, FeedBatch) {
        let batch = store.changes_after(after, 100).await.unwrap();
        let pids = batch.changes.iter().filter_map(|c| c.product_id).collect();
        (pids, batch)
    }

    /// [`feed_pids`] again until it shows `want` rows: the horizon is the whole server's, so a
    /// transaction of another test (in another database) may hold rows back for a moment.
    async fn feed_until(
        store: &PostgresStore,
        after: FeedCursor,
        want: usize,
    ) -> (Vec<i64>, FeedBatch) {
        let started = std::time::Instant::now();
        loop {
            let (pids, batch) = feed_pids(store, after).await;
            if pids.len() >= want || started.elapsed() > std::time::Duration::from_secs(20) {
                return (pids, batch);
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// The sequence-gap race: a row with a lower `seq` that commits after one with a higher
    /// `seq` is still read, and a committed row is held back while an older transaction that
    /// could still commit a row before it runs. A cursor on `seq` alone would skip pid 1.
    #[tokio::test]
    async fn feed_never_skips_a_row_committed_late() {
        on_fresh_db(
            "feed_never_skips_a_row_committed_late",
            |store, _| async move {
                let head = store.feed_head().await.unwrap();
                // `early` takes its transaction id first; `late` records its row (seq s) first.
                let mut early = store.pool.begin().await.unwrap();
                sqlx::query("SELECT pg_current_xact_id()")
                    .execute(&mut *early)
                    .await
                    .unwrap();
                let mut late = store.pool.begin().await.unwrap();
                record_in(&mut late, 1).await;
                record_in(&mut early, 2).await; // seq s + 1
                early.commit().await.unwrap();
                let (pids, first) = feed_until(&store, head, 1).await;
                assert_eq!(pids, vec![2], "the committed row of the older transaction");
                late.commit().await.unwrap();
                let (pids, second) = feed_until(&store, first.next, 1).await;
                assert_eq!(
                    pids,
                    vec![1],
                    "the lower seq committed later is not skipped"
                );

                // A younger transaction's committed row waits for an older one still running.
                let mut old = store.pool.begin().await.unwrap();
                sqlx::query("SELECT pg_current_xact_id()")
                    .execute(&mut *old)
                    .await
                    .unwrap();
                let mut young = store.pool.begin().await.unwrap();
                record_in(&mut young, 3).await;
                young.commit().await.unwrap();
                let (pids, held) = feed_pids(&store, second.next).await;
                assert!(
                    pids.is_empty(),
                    "held back behind the running transaction: {pids:?}"
                );
                assert_eq!(held.pending, 1, "but counted as pending");
                assert!(held.oldest_pending_at.is_some());
                record_in(&mut old, 4).await;
                old.commit().await.unwrap();
                let (pids, _) = feed_until(&store, held.next, 2).await;
                assert_eq!(pids, vec![4, 3], "in transaction order");
            },
        )
        .await;
    }

    /// Each contract check on its own fresh database, so that a failure names the check.
    macro_rules! contract_checks {
        ($($check:ident),* $(,)?) => {
            mod contract_checks {
                $(
                    #[tokio::test]
                    async fn $check() {
                        super::on_fresh_db(stringify!($check), |s, _| async move {
                            crate::contract::$check(&s).await;
                        })
                        .await;
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
    async fn contract_suite_on_a_fresh_database() {
        on_fresh_db("contract_suite_on_a_fresh_database", |s, _| async move {
            contract::run_all(&s).await;
        })
        .await;
    }

    #[tokio::test]
    async fn contract_suite_twice_on_one_database_through_open() {
        // A second run meets the first run's data: the checks must not depend on an empty
        // database. Also goes through the URL opener, both schemes, and a reopen (the
        // migrations run twice).
        on_fresh_db(
            "contract_suite_twice_on_one_database_through_open",
            |_, url| async move {
                let first = crate::open(&url).await.unwrap();
                assert_eq!(first.backend(), "postgres");
                contract::run_all(first.as_ref()).await;
                first.close().await;
                let other_scheme = url.replacen("postgres://", "postgresql://", 1);
                let second = crate::open(&other_scheme).await.unwrap();
                assert_eq!(second.backend(), "postgres");
                contract::run_all(second.as_ref()).await;
                second.close().await;
            },
        )
        .await;
    }

    #[tokio::test]
    async fn postgres_urls_select_this_backend() {
        // A port that is no number fails while parsing the URL, before any connection (a
        // refused one would be retried for the pool's acquire timeout): the error is Postgres's
        // own, so the URL was taken for a Postgres one, not UnsupportedUrl. Needs no server.
        for url in [
            "postgres://u@127.0.0.1:x/db",
            "postgresql://u@127.0.0.1:x/db",
        ] {
            match crate::open(url).await {
                Err(StoreError::Db(sqlx::Error::Configuration(_))) => {}
                Err(e) => panic!("{url}: expected a URL (configuration) error, got {e}"),
                Ok(_) => panic!("{url}: connected?"),
            }
        }
    }

    #[test]
    fn database_names_in_urls_are_replaced() {
        for (url, want) in [
            ("postgres://u@h:5432/test", "postgres://u@h:5432/x"),
            ("postgres://u@h:5432", "postgres://u@h:5432/x"),
            (
                "postgresql://h/test?sslmode=disable",
                "postgresql://h/x?sslmode=disable",
            ),
            ("postgres:///test?host=/tmp", "postgres:///x?host=/tmp"),
        ] {
            assert_eq!(with_database(url, "x"), want, "{url}");
        }
    }

    #[tokio::test]
    async fn statements_are_planned_with_their_parameters() {
        // A generic plan cached while the catalogue was small outlives its growth when nothing
        // analyses the tables (see `connect_with`): every pooled connection plans each run.
        on_fresh_db(
            "statements_are_planned_with_their_parameters",
            |s, _| async move {
                for _ in 0..3 {
                    let mode: String = sqlx::query_scalar("SHOW plan_cache_mode")
                        .fetch_one(&s.pool)
                        .await
                        .unwrap();
                    assert_eq!(mode, "force_custom_plan");
                }
            },
        )
        .await;
    }

    #[tokio::test]
    async fn statistics_are_refreshed_where_the_catalogue_changed() {
        on_fresh_db(
            "statistics_are_refreshed_where_the_catalogue_changed",
            |s, _| async move {
                // No autovacuum may get there first in this test, whatever the server's setting.
                sqlx::query("ALTER TABLE catalog_changes SET (autovacuum_enabled = false)")
                    .execute(&s.pool)
                    .await
                    .unwrap();
                let mut conn = s.pool.acquire().await.unwrap();
                for pid in 0..200 {
                    record_in(&mut conn, pid).await;
                }
                // Statistics reach the shared counters asynchronously; flush them now.
                sqlx::query("SELECT pg_stat_force_next_flush()")
                    .execute(&mut *conn)
                    .await
                    .unwrap();
                drop(conn);
                let reltuples = |s: PostgresStore| async move {
                    sqlx::query_scalar::<_, f32>(
                        "SELECT reltuples FROM pg_class WHERE relname = 'catalog_changes'",
                    )
                    .fetch_one(&s.pool)
                    .await
                    .unwrap()
                };
                assert!(reltuples(s.clone()).await < 0.0, "never analysed yet");
                let analysed = s.refresh_statistics().await.unwrap();
                assert!(
                    analysed.iter().any(|t| t == "catalog_changes"),
                    "{analysed:?}"
                );
                assert_eq!(reltuples(s.clone()).await, 200.0);
            },
        )
        .await;
    }

    #[tokio::test]
    async fn close_makes_later_calls_fail() {
        on_fresh_db("close_makes_later_calls_fail", |s, _| async move {
            s.ping().await.unwrap();
            s.close().await;
            assert!(s.ping().await.is_err());
            assert!(s.get_product("m", "p").await.is_err());
        })
        .await;
    }

    #[tokio::test]
    async fn migrations_make_the_sqlite_schema() {
        on_fresh_db("migrations_make_the_sqlite_schema", |s, _| async move {
            let indexes: Vec<String> = sqlx::query_scalar(
                "SELECT indexname::text FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1",
            )
            .fetch_all(&s.pool)
            .await
            .unwrap();
            for want in [
                "embeddings_by_model",
                "embeddings_image_model",
                "images_by_path",
                "images_by_product",
                "images_by_sha256",
                "products_merchant_external_id",
                "product_tags_by_tag",
                "product_tags_pkey",
                "merchants_name_key",
                "api_keys_hash_key",
                "api_keys_by_merchant",
                "import_jobs_by_merchant",
                "import_jobs_unfinished",
                "import_jobs_public_id_key",
            ] {
                assert!(indexes.iter().any(|i| i == want), "{want} in {indexes:?}");
            }
            let identities: Vec<String> = sqlx::query_scalar(
                "SELECT table_name::text FROM information_schema.columns \
                 WHERE table_schema = 'public' AND column_name = 'id' \
                   AND is_identity = 'YES' AND identity_generation = 'ALWAYS' ORDER BY 1",
            )
            .fetch_all(&s.pool)
            .await
            .unwrap();
            assert_eq!(
                identities,
                [
                    "api_keys",
                    "embeddings",
                    "images",
                    "import_jobs",
                    "merchants",
                    "products"
                ]
            );
            let version: (String, Option<String>) = sqlx::query_as(
                "SELECT data_type::text, column_default::text FROM information_schema.columns \
                 WHERE table_name = 'products' AND column_name = 'version'",
            )
            .fetch_one(&s.pool)
            .await
            .unwrap();
            assert_eq!(version, ("bigint".to_string(), Some("1".to_string())));
            let seq: (String, String) = sqlx::query_as(
                "SELECT is_identity::text, identity_generation::text \
                 FROM information_schema.columns \
                 WHERE table_name = 'catalog_changes' AND column_name = 'seq'",
            )
            .fetch_one(&s.pool)
            .await
            .unwrap();
            assert_eq!(
                seq,
                ("YES".to_string(), "ALWAYS".to_string()),
                "change sequence numbers are never reused"
            );
            let applied: Vec<i64> =
                sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
                    .fetch_all(&s.pool)
                    .await
                    .unwrap();
            let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../migrations/sqlite");
            let mut sqlite: Vec<i64> = std::fs::read_dir(dir)
                .unwrap()
                .filter_map(|e| {
                    let name = e.unwrap().file_name().into_string().unwrap();
                    name.split('_').next()?.parse().ok()
                })
                .collect();
            sqlite.sort();
            assert_eq!(
                applied, sqlite,
                "the same version numbers as migrations/sqlite/"
            );
        })
        .await;
    }

    #[tokio::test]
    async fn tags_sort_by_bytes_as_in_sqlite() {
        on_fresh_db("tags_sort_by_bytes_as_in_sqlite", |s, _| async move {
            let mut tags: Vec<String> = ["é:1", "a:1", "Z:1", "ä:1", "a:10", "a:2"]
                .iter()
                .map(|t| t.to_string())
                .collect();
            tags.sort();
            let w = s
                .create_product(
                    NewProduct {
                        merchant: "m".into(),
                        external_id: "p".into(),
                        title: "t".into(),
                        attributes: serde_json::json!({}),
                        tags: tags.clone(),
                        quota: Quota::UNLIMITED,
                    },
                    vec![],
                    "v1",
                )
                .await
                .unwrap();
            assert_eq!(w.product.tags, tags, "as Rust sorts them (bytes)");
            assert_eq!(s.get_product("m", "p").await.unwrap().tags, tags);
            assert_eq!(s.load_states("v1").await.unwrap()[0].tags, tags);
        })
        .await;
    }

    #[tokio::test]
    async fn purge_of_50k_products_removes_them_their_images_and_embeddings() {
        on_fresh_db("purge_of_50k_products", |s, _| async move {
            let mut tx = s.write_tx().await.unwrap();
            for sql in [
                "INSERT INTO merchants (name, created_at, product_count, image_count) \
                 VALUES ('bulk', 0, 50000, 50000)",
                "INSERT INTO products (merchant_id, external_id, title, created_at, updated_at) \
                 SELECT (SELECT id FROM merchants WHERE name = 'bulk'), 'p' || g, 't', 0, 0 \
                 FROM generate_series(0, 49999) g",
                "INSERT INTO product_tags (product_id, tag) SELECT id, \
                 CASE WHEN id % 2 = 0 THEN 'half:even' ELSE 'half:odd' END FROM products",
                "INSERT INTO images (product_id, sha256, byte_size, width, height, format, path, \
                 created_at) SELECT id, 's' || id, 10, 4, 3, 'png', 'images/s' || id || '.png', 0 \
                 FROM products",
                "INSERT INTO embeddings (image_id, model_version, dim, vector, created_at) \
                 SELECT id, 'v1', 2, '\\x0000003f0000003f'::bytea, 0 FROM images",
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
            eprintln!(
                "postgres purge: 25k of 50k products by tag in {half:?}, the other 25k in {all:?}"
            );
            assert_eq!(s.counts().await.unwrap().embeddings, 0);
            let m = crate::AccessStore::get_merchant(&s, "bulk")
                .await
                .unwrap()
                .unwrap();
            assert_eq!((m.products, m.images), (0, 0));
        })
        .await;
    }

    #[tokio::test]
    async fn load_states_scales_with_a_fixed_number_of_queries() {
        // 10k products with a tag, an image and an embedding each, inserted in bulk, then one
        // load: a per-product query would show up as a multi-second load here.
        on_fresh_db("load_states_scales", |s, _| async move {
            let blob = vector_to_blob(&[0.5, 0.5]);
            let mut tx = s.write_tx().await.unwrap();
            for sql in [
                "INSERT INTO merchants (name, created_at) VALUES ('bulk', 0)",
                "INSERT INTO products (merchant_id, external_id, title, created_at, updated_at) \
                 SELECT (SELECT id FROM merchants WHERE name = 'bulk'), 'p' || g, 't', 0, 0 \
                 FROM generate_series(0, 9999) g",
                "INSERT INTO product_tags (product_id, tag) SELECT id, 'k:v' FROM products",
                "INSERT INTO images (product_id, sha256, byte_size, width, height, format, path, \
                 created_at) SELECT id, 's' || id, 10, 4, 3, 'png', 'images/s' || id || '.png', 0 \
                 FROM products",
            ] {
                sqlx::query(sql).execute(&mut *tx).await.unwrap();
            }
            sqlx::query(
                "INSERT INTO embeddings (image_id, model_version, dim, vector, created_at) \
                 SELECT id, 'v1', 2, $1, 0 FROM images",
            )
            .bind(&blob)
            .execute(&mut *tx)
            .await
            .unwrap();
            tx.commit().await.unwrap();
            let started = std::time::Instant::now();
            let states = s.load_states("v1").await.unwrap();
            let took = started.elapsed();
            assert_eq!(states.len(), 10_000);
            assert!(states
                .iter()
                .all(|st| st.embeddings.len() == 1 && st.tags == ["k:v"] && st.version == 1));
            assert!(
                took < std::time::Duration::from_secs(10),
                "load_states took {took:?}"
            );
            let page = s.list_products("bulk", None, 1000).await.unwrap();
            assert_eq!(page.len(), 1000);
            assert!(page
                .iter()
                .all(|p| p.images.len() == 1 && p.tags == ["k:v"]));
            assert_eq!(s.stale_images("v2", 5000).await.unwrap().len(), 5000);
        })
        .await;
    }
}

//! The change feed: what every replica follows to keep its search view in step with the store.
//!
//! Every committed write appends one row per product it changed to `catalog_changes`, in the same
//! transaction (the operation, the merchant, the product, the image, the model version). A
//! follower reads the rows after its cursor, loads the current state of the products they name
//! ([`FeedStore::product_states`]) and applies it: a state carries its version, so replaying a
//! change, or applying changes out of order, converges on the same view.
//!
//! The cursor must never skip a committed row. On Postgres a lower `seq` can commit after a
//! higher one (sequence values are taken before commit), so the feed is read in `(txid, seq)`
//! order and only up to the oldest transaction still running, `pg_snapshot_xmin(
//! pg_current_snapshot())`: a transaction below that horizon has finished, and none can start
//! below it, so every row before the cursor is final. SQLite has one writer at a time, so `seq`
//! order is commit order and the cursor is the `seq` alone.
//!
//! Followers check in their cursor ([`FeedStore::checkin`]); [`FeedStore::compact`] deletes the
//! rows every live follower has passed. A `LISTEN/NOTIFY` wake-up ([`FeedStore::listen`]) makes
//! a follower read at once; it is only a hint, since a disconnected listener misses
//! notifications, so followers poll too. This module must never apply anything: that is the
//! service's job.

use std::sync::Arc;

use crate::{ProductState, Result};

/// What a change row says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeOp {
    /// A product was created or changed (fields, tags, images, embeddings).
    Upsert,
    /// A product was deleted (alone or by a purge).
    Delete,
    /// Embeddings were stored for a product without changing it (a re-embedding).
    Embed,
    /// A replica switched the model every replica should serve ([`FeedStore::serving_model`]);
    /// the row names the model version and no product.
    Model,
    /// A row written before the feed existed: it does not say which product changed.
    Legacy,
}

impl ChangeOp {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeOp::Upsert => "upsert",
            ChangeOp::Delete => "delete",
            ChangeOp::Embed => "embed",
            ChangeOp::Model => "model",
            ChangeOp::Legacy => "write",
        }
    }

    fn parse(s: &str) -> ChangeOp {
        match s {
            "upsert" => ChangeOp::Upsert,
            "delete" => ChangeOp::Delete,
            "embed" => ChangeOp::Embed,
            "model" => ChangeOp::Model,
            _ => ChangeOp::Legacy,
        }
    }
}

/// What a write records, in its transaction (one row per product).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Recorded<'a> {
    pub op: ChangeOp,
    pub merchant: Option<&'a str>,
    pub product_ids: &'a [i64],
    pub image_id: Option<i64>,
    pub model_version: Option<&'a str>,
}

/// A place in the feed: every row at or before it has been read. Ordered as the feed is read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct FeedCursor {
    /// The writing transaction's id (Postgres `xid8`); the `seq` itself on SQLite.
    pub txid: i64,
    pub seq: i64,
}

/// One row of the feed.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedChange {
    pub cursor: FeedCursor,
    /// When it was written, milliseconds since the Unix epoch.
    pub at: i64,
    pub op: ChangeOp,
    pub merchant: Option<String>,
    /// `None` only for [`ChangeOp::Model`] and [`ChangeOp::Legacy`] rows.
    pub product_id: Option<i64>,
    pub image_id: Option<i64>,
    pub model_version: Option<String>,
}

/// What one read of the feed returns.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedBatch {
    /// The rows after the cursor asked for, in feed order.
    pub changes: Vec<FeedChange>,
    /// Where the next read starts: past the last row, or past everything final when the batch
    /// was not full (so the cursor moves on, and check-ins let compaction proceed).
    pub next: FeedCursor,
    /// How far the feed has been compacted: a follower whose cursor is behind it has missed rows.
    pub compacted: FeedCursor,
    /// Committed rows after `next` (not final yet, or beyond the batch): the follower's backlog.
    pub pending: u64,
    /// When the oldest of them was written.
    pub oldest_pending_at: Option<i64>,
}

/// A follower's check-in.
#[derive(Debug, Clone, Copy)]
pub struct Checkin<'a> {
    /// A name unique among the running replicas.
    pub replica: &'a str,
    pub cursor: FeedCursor,
    /// The model version it serves.
    pub model_version: &'a str,
    pub now: i64,
}

/// A replica as its last check-in left it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Replica {
    pub replica: String,
    pub cursor: FeedCursor,
    pub model_version: String,
    pub seen_at: i64,
}

/// The model every replica should serve, as the last hot swap recorded it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ServingModel {
    pub model_version: String,
    /// The bundle directory, as the swapping replica named it (replicas share the path).
    pub bundle: String,
    pub set_at: i64,
}

/// What a compaction did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Compacted {
    /// Rows deleted.
    pub changes: u64,
    /// Replicas dropped for not checking in since the cut-off.
    pub replicas: u64,
    /// The feed's compaction point afterwards.
    pub through: FeedCursor,
}

/// See the module documentation. Reached through [`crate::CatalogStore::feed`].
#[async_trait::async_trait]
pub trait FeedStore: Send + Sync {
    /// The feed's final point now: every row at or before it is committed and readable. Read it
    /// *before* [`crate::CatalogStore::load_states`] when building a view, and follow the feed
    /// from it: rows after it that the states already hold are applied again, harmlessly.
    async fn feed_head(&self) -> Result<FeedCursor>;

    /// Up to `limit` rows after `after`, in feed order, and where to go on from.
    async fn changes_after(&self, after: FeedCursor, limit: usize) -> Result<FeedBatch>;

    /// The current state of each product of `ids` that exists, with its embeddings by
    /// `model_version` (a product absent from the result has been deleted: ids are never reused).
    async fn product_states(&self, ids: &[i64], model_version: &str) -> Result<Vec<ProductState>>;

    /// Records a replica's cursor and model version.
    async fn checkin(&self, checkin: Checkin<'_>) -> Result<()>;

    /// The replicas that checked in since `since` (ms since the epoch), by name.
    async fn replicas(&self, since: i64) -> Result<Vec<Replica>>;

    /// Drops replicas not seen since `live_since` and deletes the rows every remaining one has
    /// passed (all final rows when none remains), keeping the latest row so that
    /// [`crate::CatalogStore::last_change`] never goes back.
    async fn compact(&self, live_since: i64) -> Result<Compacted>;

    /// Records the model every replica should serve, with a [`ChangeOp::Model`] feed row, in one
    /// transaction.
    async fn set_serving_model(&self, model: &ServingModel) -> Result<()>;

    /// The model every replica should serve, once a swap recorded one.
    async fn serving_model(&self) -> Result<Option<ServingModel>>;

    /// Wakes `wake` whenever a change may have been committed, until the store is closed or the
    /// connection fails (`Err`; the caller retries). Backends without notifications return
    /// `Ok(false)` at once: the follower then relies on polling alone.
    async fn listen(&self, wake: Arc<tokio::sync::Notify>) -> Result<bool>;
}

/// `(txid, seq, at, op, merchant, product id, image id, model version)` of a feed row.
pub(crate) type ChangeRow = (
    i64,
    i64,
    i64,
    String,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<String>,
);

pub(crate) fn change_from_row(row: ChangeRow) -> FeedChange {
    let (txid, seq, at, op, merchant, product_id, image_id, model_version) = row;
    let op = match ChangeOp::parse(&op) {
        ChangeOp::Model => ChangeOp::Model,
        _ if product_id.is_none() => ChangeOp::Legacy,
        op => op,
    };
    FeedChange {
        cursor: FeedCursor { txid, seq },
        at,
        op,
        merchant,
        product_id,
        image_id,
        model_version,
    }
}

/// Where a read goes on from: past the last row of a full batch, else past `final_point`.
pub(crate) fn next_cursor(
    after: FeedCursor,
    changes: &[FeedChange],
    limit: usize,
    final_point: FeedCursor,
) -> FeedCursor {
    let last = changes.last().map(|c| c.cursor);
    let next = if changes.len() >= limit {
        last.unwrap_or(after)
    } else {
        final_point.max(last.unwrap_or(after))
    };
    next.max(after)
}

/// A SQL `LIMIT` for `limit` (at least 1).
pub(crate) fn limit_of(limit: usize) -> i64 {
    i64::try_from(limit.max(1)).unwrap_or(i64::MAX)
}

pub(crate) fn replica_from_row(row: (String, i64, i64, String, i64)) -> Replica {
    let (replica, txid, seq, model_version, seen_at) = row;
    Replica {
        replica,
        cursor: FeedCursor { txid, seq },
        model_version,
        seen_at,
    }
}

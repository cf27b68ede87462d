//! The follower: applies every replica's committed writes to this replica's search view.
//!
//! Replicas share one store (Postgres). A write applies itself to the view of the replica that
//! made it; every other replica learns of it from the store's change feed
//! ([`snapshop_store::FeedStore`]). The follower reads the rows after its cursor (woken at once by
//! `LISTEN/NOTIFY`, and polling every `feed.poll_ms` in case a notification was missed), loads
//! the current state of the products they name and applies it. Applying a product's state is
//! idempotent and keeps the highest version, so a change applied twice (its own writes, the
//! replay after a snapshot) or out of order converges. A cursor behind the feed's compaction
//! point, or a row that does not say which product changed, makes it reload the whole view.
//!
//! It reports how far behind it is (`/readyz`, metrics, every search's `index_lag_ms`) and checks
//! its cursor in, so that compaction knows what every live replica has passed. It must never
//! write the catalogue, and never advance its cursor past a change it did not apply.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use snapshop_store::feed::{ChangeOp, Checkin, FeedBatch};
use snapshop_store::{ChangeStamp, FeedCursor};
use tokio::sync::Notify;

use crate::auth::now_ms;
use crate::core::AppState;
use crate::view::Change;

/// How often a replica compacts the feed (every replica does; they agree on what to delete).
const COMPACT_EVERY: Duration = Duration::from_secs(60);
/// The longest wait between retries after the store failed: short, since the first read that
/// succeeds again is what lets writes through again ([`crate::core::Core::check_store`]).
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How long a failed read marks the store unreachable for writes: a retry's connect timeout and
/// backoff, so that it stays marked while reads keep failing.
const STORE_DOWN_MS: i64 = 4_000;

/// Where this replica's follower stands; shared with `/readyz`, metrics and searches.
#[derive(Debug)]
pub struct FeedState {
    replica: String,
    cursor: Mutex<FeedCursor>,
    /// Milliseconds the oldest change not yet applied has waited (0 when caught up).
    lag_ms: AtomicI64,
    pending: AtomicU64,
    applied: AtomicU64,
    reloads: AtomicU64,
    /// When the last read succeeded (ms since the epoch; 0 before any).
    last_read_at: AtomicI64,
    listening: AtomicBool,
    error: Mutex<Option<String>>,
    stop: AtomicBool,
    wake: Arc<Notify>,
    /// Set after a model switch: the old model's embeddings are dropped once every live replica
    /// serves the new one (others may still be searching with the old).
    drop_pending: AtomicBool,
}

/// What `/readyz` shows of the follower.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct FeedStatus {
    /// This replica's name in the feed's check-ins.
    pub replica: String,
    /// The feed's transaction id and sequence number this replica has applied everything up to.
    pub cursor_txid: i64,
    pub cursor_seq: i64,
    /// How long the oldest committed change not yet applied here has waited (0: caught up).
    pub lag_ms: i64,
    /// Committed changes not yet applied here.
    pub pending: u64,
    /// Changes applied from the feed since start-up.
    pub applied: u64,
    /// Full reloads of the view (behind the compaction point, or a change without a product).
    pub reloads: u64,
    /// Whether a `LISTEN` connection is open (otherwise it polls only).
    pub listening: bool,
    /// The last read's failure, while the store cannot be read; `null` when reads succeed.
    pub error: Option<String>,
}

impl FeedState {
    /// A follower that starts reading after `cursor`.
    pub fn new(replica: String, cursor: FeedCursor) -> Self {
        Self {
            replica,
            cursor: Mutex::new(cursor),
            lag_ms: AtomicI64::new(0),
            pending: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
            last_read_at: AtomicI64::new(0),
            listening: AtomicBool::new(false),
            error: Mutex::new(None),
            stop: AtomicBool::new(false),
            wake: Arc::new(Notify::new()),
            drop_pending: AtomicBool::new(false),
        }
    }

    pub fn replica(&self) -> &str {
        &self.replica
    }

    pub fn cursor(&self) -> FeedCursor {
        *self.cursor.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_cursor(&self, c: FeedCursor) {
        let mut cur = self.cursor.lock().unwrap_or_else(|e| e.into_inner());
        if c > *cur {
            *cur = c;
        }
    }

    /// The lag in milliseconds: how long the oldest committed change not applied here has
    /// waited, as of the last read; while reads fail, also the time since the last success
    /// (nothing newer is known).
    pub fn lag_ms(&self) -> i64 {
        let lag = self.lag_ms.load(Ordering::Acquire);
        if self.error().is_some() {
            let last = self.last_read_at.load(Ordering::Acquire);
            if last > 0 {
                return lag.max(now_ms() - last);
            }
        }
        lag
    }

    fn error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn status(&self) -> FeedStatus {
        let c = self.cursor();
        FeedStatus {
            replica: self.replica.clone(),
            cursor_txid: c.txid,
            cursor_seq: c.seq,
            lag_ms: self.lag_ms(),
            pending: self.pending.load(Ordering::Acquire),
            applied: self.applied.load(Ordering::Acquire),
            reloads: self.reloads.load(Ordering::Acquire),
            listening: self.listening.load(Ordering::Acquire),
            error: self.error(),
        }
    }

    /// Asks for the other models' embeddings to be dropped once every live replica serves this
    /// one (after a model switch, or at start-up).
    pub fn drop_other_versions_later(&self) {
        self.drop_pending.store(true, Ordering::Release);
    }

    /// Asks the follower to stop after its current step.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    fn read_ok(&self, batch: &FeedBatch) {
        let now = now_ms();
        self.last_read_at.store(now, Ordering::Release);
        self.pending.store(batch.pending, Ordering::Release);
        let lag = batch.oldest_pending_at.map_or(0, |at| (now - at).max(0));
        self.lag_ms.store(lag, Ordering::Release);
        *self.error.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// The default replica name: host, process id and a random suffix (unique among replicas).
pub fn default_replica_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "snapshop".into());
    let suffix: u32 = rand::random();
    format!("{host}-{}-{suffix:08x}", std::process::id())
}

/// Reads and applies one batch. Returns whether more rows are waiting.
async fn step(core: &AppState, st: &FeedState) -> anyhow::Result<bool> {
    let cfg = &core.config().feed;
    // Held across the read and the apply, so that a view switch (a model swap) or a reload
    // happens wholly before or wholly after this batch: a batch can never be applied to a view
    // that is then replaced by one built from an older snapshot.
    let _feed = core.feed_lock().await;
    let cursor = st.cursor();
    let batch = core.store().feed().changes_after(cursor, cfg.batch).await?;
    let legacy = batch.changes.iter().any(|c| c.op == ChangeOp::Legacy);
    if batch.compacted > cursor || legacy {
        tracing::warn!(
            cursor = ?cursor,
            compacted = ?batch.compacted,
            legacy,
            "the change feed cannot be followed from here; reloading the search view"
        );
        let head = core.reconcile_holding_feed().await?;
        st.reloads.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("snapshop_feed_reloads_total").increment(1);
        st.set_cursor(head.max(batch.next));
        st.read_ok(&batch);
        return Ok(true);
    }
    let more = batch.changes.len() >= cfg.batch.max(1);
    if batch.changes.iter().any(|c| c.op == ChangeOp::Model) {
        follow_model(core).await;
    }
    if !batch.changes.is_empty() {
        let ids: BTreeSet<i64> = batch.changes.iter().filter_map(|c| c.product_id).collect();
        let ids: Vec<i64> = ids.into_iter().collect();
        let serving = core.serving();
        let states = core
            .store()
            .feed()
            .product_states(&ids, serving.model.version())
            .await?;
        let latest = batch
            .changes
            .iter()
            .max_by_key(|c| c.cursor.seq)
            .map(|c| ChangeStamp {
                seq: c.cursor.seq,
                at: c.at,
            })
            .unwrap_or_default();
        let found: BTreeSet<i64> = states.iter().map(|s| s.product_id).collect();
        let gone: Vec<i64> = ids.iter().copied().filter(|i| !found.contains(i)).collect();
        let mut changes: Vec<Change> = states.into_iter().map(Change::Upsert).collect();
        if !gone.is_empty() {
            changes.push(Change::DeleteMany { product_ids: gone });
        }
        for change in changes {
            core.apply(&serving.view, change, latest).await;
        }
        let n = batch.changes.len() as u64;
        st.applied.fetch_add(n, Ordering::Relaxed);
        metrics::counter!("snapshop_feed_changes_applied_total").increment(n);
    }
    st.set_cursor(batch.next);
    st.read_ok(&batch);
    Ok(more)
}

/// Another replica switched the model: swap to the same bundle (its embeddings are in the store
/// already, so the swap re-embeds only what was written with the old model since). Runs in the
/// background; the follower goes on applying to the current view until the switch.
async fn follow_model(core: &AppState) {
    let wanted = match core.store().feed().serving_model().await {
        Ok(Some(m)) => m,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the serving model");
            return;
        }
    };
    if wanted.model_version == core.serving().model.version() {
        return;
    }
    if let crate::swap::SwapStatus::Running { to_version, .. } = core.swap_status() {
        if to_version == wanted.model_version {
            return;
        }
    }
    tracing::info!(model_version = %wanted.model_version, bundle = %wanted.bundle, "another replica switched the model; following");
    let core = core.clone();
    tokio::spawn(async move {
        let bundle = std::path::PathBuf::from(&wanted.bundle);
        if let Err(e) = crate::swap::start_swap(&core, &bundle).await {
            tracing::error!(error = %e, bundle = %wanted.bundle, "cannot follow the model switch of another replica; still serving the old model");
        }
    });
}

/// Drops the other models' embeddings once every live replica checked in with this model.
async fn drop_when_all_switched(core: &AppState, st: &FeedState) {
    if !st.drop_pending.load(Ordering::Acquire) {
        return;
    }
    let live_since = now_ms() - (core.config().feed.replica_timeout_secs as i64) * 1000;
    let version = core.serving().model.version().to_owned();
    let replicas = match core.store().feed().replicas(live_since).await {
        Ok(r) => r,
        Err(_) => return,
    };
    if replicas.iter().any(|r| r.model_version != version) {
        return;
    }
    match core.store().drop_other_versions(&version).await {
        Ok(n) => {
            st.drop_pending.store(false, Ordering::Release);
            if n > 0 {
                tracing::info!(embeddings = n, model_version = %version, "every replica serves this model: dropped the others' embeddings");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot drop the old model's embeddings"),
    }
}

/// Whether a step failed because the store cannot be reached.
fn is_unavailable(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<snapshop_store::StoreError>()
            .is_some_and(|s| s.is_unavailable())
    })
}

/// Keeps a `LISTEN` connection open, waking the follower on every notification.
async fn listen(core: AppState, st: Arc<FeedState>) {
    let mut backoff = Duration::from_millis(200);
    loop {
        st.listening.store(true, Ordering::Release);
        let result = core.store().feed().listen(st.wake.clone()).await;
        st.listening.store(false, Ordering::Release);
        match result {
            Ok(false) => return, // no notifications from this backend: polling alone
            Ok(true) => backoff = Duration::from_millis(200),
            Err(e) => {
                tracing::debug!(error = %e, "the change feed's LISTEN connection failed; reconnecting");
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
        // A lost connection may have missed notifications: read once anyway.
        st.wake.notify_one();
        tokio::time::sleep(backoff).await;
        if st.stop.load(Ordering::Acquire) {
            return;
        }
    }
}

/// Checks the cursor in, and now and then compacts the feed.
async fn checkin(core: &AppState, st: &FeedState, last_compact: &mut Instant) {
    let cfg = &core.config().feed;
    let serving = core.serving();
    let c = Checkin {
        replica: &st.replica,
        cursor: st.cursor(),
        model_version: serving.model.version(),
        now: now_ms(),
    };
    if let Err(e) = core.store().feed().checkin(c).await {
        tracing::debug!(error = %e, "cannot check in the change feed cursor");
        return;
    }
    drop_when_all_switched(core, st).await;
    if last_compact.elapsed() >= COMPACT_EVERY {
        *last_compact = Instant::now();
        let live_since = now_ms() - (cfg.replica_timeout_secs as i64) * 1000;
        match core.store().feed().compact(live_since).await {
            Ok(c) if c.changes > 0 || c.replicas > 0 => {
                tracing::info!(changes = c.changes, replicas_dropped = c.replicas, through = ?c.through, "change feed compacted")
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "cannot compact the change feed"),
        }
    }
}

/// Follows the feed until [`FeedState::stop`]. A no-op without a follower.
pub async fn run(core: AppState) {
    let Some(st) = core.feed().cloned() else {
        return;
    };
    let cfg = core.config().feed.clone();
    let listener = tokio::spawn(listen(core.clone(), st.clone()));
    let poll = Duration::from_millis(cfg.poll_ms.max(10));
    let checkin_every = Duration::from_secs(cfg.checkin_secs.max(1));
    let mut last_checkin: Option<Instant> = None;
    let mut last_compact = Instant::now();
    let mut backoff = poll;
    tracing::info!(replica = %st.replica, cursor = ?st.cursor(), "following the change feed");
    while !st.stop.load(Ordering::Acquire) {
        let wait = match step(&core, &st).await {
            Ok(true) => {
                core.store_up();
                Duration::ZERO
            }
            Ok(false) => {
                core.store_up();
                backoff = poll;
                poll
            }
            Err(e) => {
                if is_unavailable(&e) {
                    core.store_down_for(STORE_DOWN_MS);
                }
                let text = format!("{e:#}");
                if st.error().is_none() {
                    tracing::warn!(error = %text, "cannot read the change feed; retrying");
                }
                metrics::counter!("snapshop_feed_errors_total").increment(1);
                *st.error.lock().unwrap_or_else(|e| e.into_inner()) = Some(text);
                backoff = (backoff * 2).min(MAX_BACKOFF);
                backoff
            }
        };
        if last_checkin.is_none_or(|t| t.elapsed() >= checkin_every) {
            last_checkin = Some(Instant::now());
            checkin(&core, &st, &mut last_compact).await;
        }
        if wait > Duration::ZERO {
            tokio::select! {
                _ = st.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
    listener.abort();
    // Leaving: checked in as never seen, so compaction stops waiting for this replica at once
    // (a restart checks in again before it loads its snapshot).
    let serving = core.serving();
    let c = Checkin {
        replica: &st.replica,
        cursor: st.cursor(),
        model_version: serving.model.version(),
        now: 0,
    };
    if let Err(e) = core.store().feed().checkin(c).await {
        tracing::debug!(error = %e, "cannot check out of the change feed");
    }
}

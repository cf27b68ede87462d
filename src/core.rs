//! The service core: what every request path shares, built once at start-up.
//!
//! [`Core`] holds the store, the image files, and the serving pair (model + search view) behind
//! one atomic pointer, so that a search always uses one model with the view that model made, and a
//! hot swap replaces both at once. Writes take the shared side of a write gate only around
//! "commit, then apply to the view"; the exclusive side is taken only for the instant of a model
//! switch or a view repair, so writes to different products never wait on each other. Nothing
//! here knows about HTTP.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use snapshop_inference::ImageLimits;
use snapshop_store::{CatalogStore, FeedCursor, KeyKind, KeyQuery};
use tokio::sync::{Notify, OwnedSemaphorePermit, RwLock, RwLockReadGuard, Semaphore};

use crate::auth::limit::RateLimiter;
use crate::auth::{now_ms, Authenticator, StoreHealth};
use crate::config::Config;
use crate::feed::FeedState;
use crate::files::ImageFiles;
use crate::model::{Model, ModelLoader};
use crate::swap::SwapStatus;
use crate::view::{Change, SearchView};

/// A model and the view of the catalogue its embeddings make: always used together.
#[derive(Debug)]
pub struct Serving {
    pub model: Arc<Model>,
    pub view: Arc<SearchView>,
}

/// See the module documentation.
pub struct Core {
    config: Arc<Config>,
    store: Arc<dyn CatalogStore>,
    files: ImageFiles,
    serving: ArcSwap<Serving>,
    loader: Arc<dyn ModelLoader>,
    search_permits: Arc<Semaphore>,
    write_gate: Arc<RwLock<()>>,
    swap: Mutex<SwapStatus>,
    /// Wakes the background task (a dirty view to repair, shutdown).
    wake: Notify,
    /// Wakes the import job runner (a job was submitted, or shutdown).
    imports: Notify,
    ready: AtomicBool,
    authenticator: Authenticator,
    rate_limiter: RateLimiter,
    /// The browser origins active search keys allow, refreshed every [`ORIGINS_TTL`] (CORS
    /// preflights only; the real request checks its own key).
    key_origins: Mutex<Option<(Instant, HashSet<String>)>>,
    /// The change feed's follower, when this replica follows one (`crate::feed`).
    feed: std::sync::OnceLock<Arc<FeedState>>,
    /// Held by the follower across reading and applying a batch, and by whatever replaces or
    /// rebuilds the view (a reload, a model switch): see `crate::feed`.
    feed_lock: tokio::sync::Mutex<()>,
    /// Whether the store was just found unreachable (see [`Core::check_store`]).
    health: Arc<StoreHealth>,
}

/// How long the cached set of search-key origins is used.
const ORIGINS_TTL: Duration = Duration::from_secs(5);

/// Shared by every handler.
pub type AppState = Arc<Core>;

/// Admission was refused: too many searches in flight.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("too many searches in flight; retry later")]
pub struct Overloaded;

impl Core {
    pub fn new(
        config: Arc<Config>,
        store: Arc<dyn CatalogStore>,
        serving: Serving,
        loader: Arc<dyn ModelLoader>,
        files: ImageFiles,
    ) -> Self {
        let health = Arc::new(StoreHealth::default());
        Self {
            files,
            search_permits: Arc::new(Semaphore::new(config.limits.max_concurrent_searches)),
            serving: ArcSwap::from_pointee(serving),
            loader,
            write_gate: Arc::new(RwLock::new(())),
            swap: Mutex::new(SwapStatus::Idle),
            wake: Notify::new(),
            imports: Notify::new(),
            ready: AtomicBool::new(false),
            authenticator: Authenticator::new(store.clone(), config.auth.dev_mode, health.clone()),
            rate_limiter: RateLimiter::new(config.rate_limits.clone()),
            key_origins: Mutex::new(None),
            feed: std::sync::OnceLock::new(),
            feed_lock: tokio::sync::Mutex::new(()),
            health,
            config,
            store,
        }
    }

    /// Records that the store was found unreachable: for `for_ms`, writes answer 503
    /// `store_unavailable` at once instead of each waiting out the pool's connect timeout, and
    /// keys are checked against their last lookup (the change feed's follower renews it while its
    /// reads fail, and clears it when one succeeds).
    pub fn store_down_for(&self, for_ms: i64) {
        self.health.mark_down(for_ms);
    }

    /// The store answered again.
    pub fn store_up(&self) {
        self.health.mark_up();
    }

    /// `Err` while the store is known to be unreachable (see [`Core::store_down_for`]).
    pub fn check_store(&self) -> Result<(), snapshop_store::StoreError> {
        self.health.check()
    }

    /// Attaches the change feed's follower state (once, at start-up).
    pub fn set_feed(&self, feed: Arc<FeedState>) {
        let _ = self.feed.set(feed);
    }

    /// The follower's state, when this replica follows the change feed.
    pub fn feed(&self) -> Option<&Arc<FeedState>> {
        self.feed.get()
    }

    /// See the `feed_lock` field.
    pub(crate) async fn feed_lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.feed_lock.lock().await
    }

    pub fn authenticator(&self) -> &Authenticator {
        &self.authenticator
    }

    pub fn rate_limiter(&self) -> &RateLimiter {
        &self.rate_limiter
    }

    /// Whether some active search key allows browser origin `origin`.
    pub async fn origin_of_some_key(&self, origin: &str) -> bool {
        let cached = {
            let guard = self.key_origins.lock().unwrap_or_else(|e| e.into_inner());
            guard
                .as_ref()
                .filter(|(at, _)| at.elapsed() < ORIGINS_TTL)
                .map(|(_, set)| set.contains(origin))
        };
        if let Some(hit) = cached {
            return hit;
        }
        let query = KeyQuery {
            kind: Some(KeyKind::Search),
            ..KeyQuery::default()
        };
        let set: HashSet<String> = match self.store.access().list_keys(query, now_ms()).await {
            Ok(keys) => keys.into_iter().flat_map(|k| k.origins).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list search keys for a CORS preflight");
                return false;
            }
        };
        let hit = set.contains(origin);
        *self.key_origins.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), set));
        hit
    }

    /// Forgets the cached search-key origins (after a key is created or revoked here).
    pub fn forget_key_origins(&self) {
        *self.key_origins.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn store(&self) -> &dyn CatalogStore {
        self.store.as_ref()
    }

    pub fn files(&self) -> &ImageFiles {
        &self.files
    }

    pub fn loader(&self) -> &Arc<dyn ModelLoader> {
        &self.loader
    }

    /// The current model and view, as one consistent pair.
    pub fn serving(&self) -> Arc<Serving> {
        self.serving.load_full()
    }

    /// Switches model and view together. Callers hold the exclusive write gate.
    pub(crate) fn switch(&self, serving: Serving) -> Arc<Serving> {
        self.serving.swap(Arc::new(serving))
    }

    pub fn image_limits(&self) -> ImageLimits {
        let l = &self.config.limits;
        ImageLimits {
            max_bytes: l.max_image_bytes,
            max_pixels: l.max_pixels,
            max_side: l.max_side,
        }
    }

    /// A search slot, or [`Overloaded`] at once when all are taken.
    pub fn admit_search(&self) -> Result<OwnedSemaphorePermit, Overloaded> {
        self.search_permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| Overloaded)
    }

    /// The shared side of the write gate: held by a write from before its commit until its
    /// change is applied to the view.
    pub async fn write_gate(&self) -> RwLockReadGuard<'_, ()> {
        self.write_gate.read().await
    }

    /// The exclusive side: no write commits while it is held.
    pub(crate) async fn exclusive_gate(&self) -> tokio::sync::OwnedRwLockWriteGuard<()> {
        self.write_gate.clone().write_owned().await
    }

    pub fn swap_status(&self) -> SwapStatus {
        self.swap.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn set_swap_status(&self, s: SwapStatus) {
        *self.swap.lock().unwrap_or_else(|e| e.into_inner()) = s;
    }

    /// Updates the swap status in place (progress counters).
    pub(crate) fn update_swap_status(&self, f: impl FnOnce(&mut SwapStatus)) {
        f(&mut self.swap.lock().unwrap_or_else(|e| e.into_inner()));
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub(crate) fn wake_background(&self) {
        self.wake.notify_one();
    }

    pub(crate) async fn woken(&self) {
        self.wake.notified().await
    }

    pub(crate) fn wake_imports(&self) {
        self.imports.notify_one();
    }

    pub(crate) async fn imports_woken(&self) {
        self.imports.notified().await
    }

    /// Applies a committed change to `view`. Never fails the write: if the view cannot take it,
    /// the view is marked dirty and the background task reconciles it from the store.
    pub async fn apply(
        &self,
        view: &Arc<SearchView>,
        change: Change,
        stamp: snapshop_store::ChangeStamp,
    ) {
        let v = view.clone();
        let result = tokio::task::spawn_blocking(move || v.apply(&change, stamp)).await;
        let failed = match result {
            Ok(Ok(())) => return,
            Ok(Err(e)) => format!("{e}"),
            Err(e) => format!("apply task failed: {e}"),
        };
        tracing::error!(error = %failed, "a committed write could not be applied to the search view; reconciling from the store");
        metrics::counter!("snapshop_view_apply_failures_total").increment(1);
        view.mark_dirty();
        self.wake_background();
    }

    /// Rebuilds the current view's contents from the store, with writes held at the gate.
    /// Returns the change feed's final point read before the states (a follower goes on from it).
    pub async fn reconcile(&self) -> anyhow::Result<FeedCursor> {
        let _feed = self.feed_lock().await;
        self.reconcile_holding_feed().await
    }

    /// [`Core::reconcile`] for a caller that holds [`Core::feed_lock`] already.
    pub(crate) async fn reconcile_holding_feed(&self) -> anyhow::Result<FeedCursor> {
        let _gate = self.exclusive_gate().await;
        let serving = self.serving();
        let started = Instant::now();
        // Before the states: the view then never claims a change they may not hold, and a
        // follower going on from `head` misses nothing.
        let head = self.store.feed().feed_head().await?;
        let position = self.store.last_change().await?;
        let states = self.store.load_states(serving.model.version()).await?;
        let view = serving.view.clone();
        let report =
            tokio::task::spawn_blocking(move || view.reconcile(states, position)).await??;
        tracing::info!(
            ?report,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "search view reconciled with the store"
        );
        Ok(head)
    }
}

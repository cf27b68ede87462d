//! The state every handler shares: one `Clone` struct of handles, built once at start-up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use snapshop_index::ShopIndex;
use snapshop_inference::{Bundle, ImageLimits, InferenceQueue, Preprocessor};
use tokio::sync::{Mutex, Semaphore};

use crate::catalog::Catalog;
use crate::config::Config;
use crate::store::Store;

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub bundle: Arc<Bundle>,
    pub preprocessor: Arc<Preprocessor>,
    pub queue: InferenceQueue,
    pub index: ShopIndex,
    pub store: Store,
    pub catalog: Arc<Catalog>,
    pub image_limits: ImageLimits,
    /// The device the models really run on (`cpu` or `cuda`).
    pub device: &'static str,
    /// Admission control for searches: past it, 503 at once instead of queueing.
    pub search_permits: Arc<Semaphore>,
    /// Serialises the "commit, then update index and catalogue" step of writes, so that the
    /// in-memory views apply changes in commit order.
    pub write_lock: Arc<Mutex<()>>,
    /// False while starting up or shutting down.
    pub ready: Arc<AtomicBool>,
}

impl AppState {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn model_version(&self) -> &str {
        self.bundle.model_version()
    }
}

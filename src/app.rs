//! Start-up and shutdown: load the models, open the store, bring the index in line with it,
//! serve, and on shutdown persist the index snapshot.
//!
//! Start-up refuses to continue with a clear message when the bundle, the runtime or the store
//! disagree; it never serves with a half-loaded model. The store is the source of truth: a
//! missing, corrupt or stale snapshot means a rebuild from it.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use snapshop_index::{IndexConfig, Key, ShopIndex};
use snapshop_inference::{
    ActiveDevice, Backend, Bundle, Device, ImageLimits, InferenceQueue, OrtBackend, Preprocessor,
    QueueConfig,
};
use tokio::sync::{Mutex, Notify, Semaphore};
use tokio::task::JoinHandle;

use crate::catalog::Catalog;
use crate::config::{Config, DeviceKind};
use crate::state::AppState;
use crate::store::{EmbeddingRef, Store};

/// A built application: state ready, listener bound, background tasks running.
pub struct Application {
    listener: tokio::net::TcpListener,
    state: AppState,
    background: Background,
}

/// The background maintenance task and what stops it.
pub struct Background {
    stop: Arc<AtomicBool>,
    notify: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Application {
    /// Loads everything and binds the listener; nothing is served until [`Self::run_until`].
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let state = init_state(config).await?;
        let listener = tokio::net::TcpListener::bind(state.config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", state.config.listen))?;
        let background = start_background(&state);
        state.ready.store(true, Ordering::Release);
        Ok(Self {
            listener,
            state,
            background,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address; this is a bug")
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then drains requests and saves the index snapshot.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Application {
            listener,
            state,
            background,
        } = self;
        tracing::info!(addr = %listener.local_addr()?, "serving");
        let router = crate::http::router(state.clone());
        let ready = state.ready.clone();
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                shutdown.await;
                ready.store(false, Ordering::Release);
                tracing::info!("shutting down");
            })
            .await
            .context("server error")?;
        shutdown_state(&state, background).await
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

pub fn index_config(config: &Config, dim: usize) -> IndexConfig {
    let s = &config.index;
    let mut c = IndexConfig::new(dim);
    c.max_connections = s.max_connections;
    c.ef_construction = s.ef_construction;
    c.ef_search = s.ef_search;
    c.fresh_capacity = s.fresh_capacity;
    c.exact_filter_fraction = s.exact_filter_fraction;
    c.exact_search_max_live = s.exact_search_max_live;
    c.rebuild_tombstone_fraction = s.rebuild_tombstone_fraction;
    c
}

/// Loads the models, the store, the index and the catalogue. Used by `serve` and `eval`.
pub async fn init_state(config: Config) -> anyhow::Result<AppState> {
    let started = Instant::now();
    let config = Arc::new(config);
    std::fs::create_dir_all(config.images_dir()).with_context(|| {
        format!(
            "cannot create the data directory {}",
            config.data_dir.display()
        )
    })?;

    let bundle_dir = config.bundle.clone();
    let bundle = tokio::task::spawn_blocking(move || Bundle::load(&bundle_dir))
        .await?
        .with_context(|| format!("cannot load the model bundle {}", config.bundle.display()))?;
    let bundle = Arc::new(bundle);
    let lib = snapshop_inference::init_runtime(config.ort_dylib.as_deref())
        .context("cannot load ONNX Runtime")?;
    tracing::info!(library = %lib.display(), "ONNX Runtime loaded");
    let device = match config.device {
        DeviceKind::Cpu => Device::Cpu,
        DeviceKind::Cuda => Device::Cuda,
    };
    let (b, threads) = (bundle.clone(), config.intra_threads);
    let backend = tokio::task::spawn_blocking(move || OrtBackend::load(&b, device, threads))
        .await?
        .with_context(|| {
            format!(
                "the model bundle {} does not match its graphs or cannot run",
                config.bundle.display()
            )
        })?;
    let active: &'static str = match backend.device() {
        ActiveDevice::Cpu => "cpu",
        ActiveDevice::Cuda => "cuda",
    };
    let queue = InferenceQueue::start(
        backend,
        QueueConfig {
            capacity: config.queue.capacity,
            max_batch_images: config.queue.max_batch_images,
            max_batch_queries: config.queue.max_batch_queries,
        },
    );
    let preprocessor = Arc::new(
        Preprocessor::new(&bundle.manifest)
            .context("the bundle's preprocessing is not supported")?,
    );
    let version = bundle.model_version().to_owned();
    tracing::info!(model_version = %version, device = active, "models loaded");

    let store = Store::open(&config.db_path())
        .await
        .with_context(|| format!("cannot open the database {}", config.db_path().display()))?;

    let embeddings = store.embeddings(&version).await?;
    let index = load_index(&config, bundle.embedding_dim(), &version, &embeddings).await?;
    let catalog = Catalog::load(
        store.all_products().await?,
        &store.all_images().await?,
        embeddings.iter().map(|(r, _)| (r.id as Key, r.image_id)),
    );
    drop(embeddings);

    let image_limits = ImageLimits {
        max_bytes: config.limits.max_image_bytes,
        max_pixels: config.limits.max_pixels,
        max_side: config.limits.max_side,
    };
    let state = AppState {
        search_permits: Arc::new(Semaphore::new(config.limits.max_concurrent_searches)),
        config,
        bundle: bundle.clone(),
        preprocessor,
        queue,
        index,
        store,
        catalog: Arc::new(catalog),
        image_limits,
        device: active,
        write_lock: Arc::new(Mutex::new(())),
        ready: Arc::new(AtomicBool::new(false)),
    };
    reembed_stale(&state).await?;
    crate::metrics::install();
    crate::metrics::model_info(&version, active, &bundle.manifest.backbone);
    crate::metrics::refresh(&state);
    tracing::info!(
        products = state.catalog.product_count(),
        vectors = state.index.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "state loaded"
    );
    Ok(state)
}

fn valid_vector(v: &[f32], dim: usize) -> bool {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.len() == dim && v.iter().all(|x| x.is_finite()) && (norm - 1.0).abs() <= 1e-2
}

/// Loads the snapshot and reconciles it with the store, or rebuilds from the store.
async fn load_index(
    config: &Config,
    dim: usize,
    version: &str,
    embeddings: &[(EmbeddingRef, Vec<f32>)],
) -> anyhow::Result<ShopIndex> {
    let cfg = index_config(config, dim);
    cfg.validate().context("invalid index configuration")?;
    let dir = config.index_dir();
    let mut wanted: HashMap<Key, &[f32]> = HashMap::with_capacity(embeddings.len());
    for (r, v) in embeddings {
        if valid_vector(v, dim) {
            wanted.insert(r.id as Key, v);
        } else {
            tracing::warn!(
                embedding = r.id,
                image = r.image_id,
                "skipping an invalid stored embedding"
            );
        }
    }
    let (c, d) = (cfg.clone(), dir.clone());
    let loaded = tokio::task::spawn_blocking(move || ShopIndex::load_snapshot(&d, c)).await?;
    let snapshot = match loaded {
        Ok(Some((index, meta))) if meta.model_version == version && meta.dim == dim => Some(index),
        Ok(Some((_, meta))) => {
            tracing::info!(snapshot_model = %meta.model_version, snapshot_dim = meta.dim, "index snapshot is stale; rebuilding from the store");
            None
        }
        Ok(None) => {
            tracing::info!("no index snapshot; building from the store");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "index snapshot unreadable; rebuilding from the store");
            None
        }
    };
    if let Some(index) = snapshot {
        let have: HashSet<Key> = index.keys().into_iter().collect();
        let extra: Vec<Key> = have
            .iter()
            .filter(|k| !wanted.contains_key(k))
            .copied()
            .collect();
        let missing: Vec<(Key, Vec<f32>)> = wanted
            .iter()
            .filter(|(k, _)| !have.contains(k))
            .map(|(k, v)| (*k, v.to_vec()))
            .collect();
        tracing::info!(
            snapshot = have.len(),
            store = wanted.len(),
            missing = missing.len(),
            extra = extra.len(),
            "reconciling the index snapshot with the store"
        );
        let idx = index.clone();
        tokio::task::spawn_blocking(move || {
            for k in extra {
                idx.remove(k);
            }
            for (k, v) in missing {
                if let Err(e) = idx.insert(k, &v) {
                    tracing::warn!(key = k, error = %e, "cannot index a stored embedding");
                }
            }
        })
        .await?;
        return Ok(index);
    }
    let items: Vec<(Key, Vec<f32>)> = wanted.iter().map(|(k, v)| (*k, v.to_vec())).collect();
    let started = Instant::now();
    let n = items.len();
    let index = tokio::task::spawn_blocking(move || {
        let stop = AtomicBool::new(false);
        if items.is_empty() {
            Ok(ShopIndex::new(cfg))
        } else {
            ShopIndex::build(cfg, items, &stop)
        }
    })
    .await?
    .context("cannot build the index")?;
    tracing::info!(
        vectors = n,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "index built"
    );
    Ok(index)
}

/// Re-embeds, from the stored files, images whose embedding was made by another model version.
async fn reembed_stale(state: &AppState) -> anyhow::Result<()> {
    let version = state.model_version().to_owned();
    let stale = state.store.stale_images(&version).await?;
    if stale.is_empty() {
        return Ok(());
    }
    tracing::warn!(images = stale.len(), model_version = %version, "re-embedding images made by another model version");
    let started = Instant::now();
    let mut by_product: HashMap<i64, Vec<(i64, String)>> = HashMap::new();
    for s in stale {
        by_product
            .entry(s.product_id)
            .or_default()
            .push((s.image_id, s.path));
    }
    let mut done = 0usize;
    for (product_id, files) in by_product {
        let Some(product) = state.catalog.product_of_image(files[0].0) else {
            tracing::warn!(product_id, "stale images of an unknown product; skipped");
            continue;
        };
        let embeddings = match crate::ingest::reembed_files(state, &product.tags, files).await {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(product_id, error = %e, "cannot re-embed a product's images; they stay unsearchable");
                continue;
            }
        };
        for (image_id, v) in embeddings {
            let r = state
                .store
                .replace_embedding(image_id, &version, &v)
                .await?;
            let index = state.index.clone();
            tokio::task::spawn_blocking(move || index.insert(r.id as Key, &v)).await??;
            state.catalog.add_key(r.id as Key, image_id);
            done += 1;
        }
    }
    tracing::info!(
        images = done,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "re-embedding done"
    );
    Ok(())
}

/// Starts periodic index maintenance.
pub fn start_background(state: &AppState) -> Background {
    let stop = Arc::new(AtomicBool::new(false));
    let notify = Arc::new(Notify::new());
    let (s, n, st) = (stop.clone(), notify.clone(), state.clone());
    let every = Duration::from_secs(state.config.index.maintain_interval_secs.max(1));
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {},
                _ = n.notified() => break,
            }
            if s.load(Ordering::Acquire) {
                break;
            }
            crate::metrics::refresh(&st);
            if !st.index.needs_maintenance() {
                continue;
            }
            let (index, stop) = (st.index.clone(), s.clone());
            let started = Instant::now();
            match tokio::task::spawn_blocking(move || index.maintain(&stop)).await {
                Ok(Ok(true)) => {
                    tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, stats = ?st.index.stats(), "index maintained");
                    if let Err(e) = save_snapshot(&st).await {
                        tracing::warn!(error = %e, "cannot save the index snapshot");
                    }
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "index maintenance failed"),
                Err(e) => tracing::error!(error = %e, "index maintenance task failed"),
            }
        }
    });
    Background { stop, notify, task }
}

async fn save_snapshot(state: &AppState) -> anyhow::Result<()> {
    let index = state.index.clone();
    let dir = state.config.index_dir();
    let version = state.model_version().to_owned();
    let meta = tokio::task::spawn_blocking(move || index.save_snapshot(&dir, &version)).await??;
    tracing::info!(count = meta.count, "index snapshot saved");
    Ok(())
}

/// Stops maintenance, saves the snapshot and closes the store.
pub async fn shutdown_state(state: &AppState, background: Background) -> anyhow::Result<()> {
    background.stop.store(true, Ordering::Release);
    background.notify.notify_one();
    let _ = background.task.await;
    let saved = save_snapshot(state).await;
    state.store.close().await;
    saved
}

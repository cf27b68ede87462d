//! Start-up and shutdown: load the model, open the store, re-embed what an earlier model left,
//! bring the search view in line with the store, serve, and on shutdown persist the index.
//!
//! Start-up refuses to continue with a clear message when the bundle, the runtime or the store
//! disagree; it never serves with a half-loaded model. The store is the source of truth: a
//! missing, corrupt or stale index snapshot means a rebuild from it. The background task does
//! index maintenance, snapshot saves, the image-file sweep and view repairs; SIGHUP reloads the
//! configured bundle as a hot swap.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use snapshop_inference::{Device, Threading};
use tokio::task::JoinHandle;

use crate::config::{Config, DeviceKind};
use crate::core::{AppState, Core, Serving};
use crate::model::{ActiveModel, FakeLoader, ModelLoader, OrtLoader};

/// Which backend runs the models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// ONNX Runtime (the service's default).
    #[default]
    Ort,
    /// The deterministic fake of `snapshop-inference`: tests and development only.
    Fake,
}

/// A built application: state ready, listener bound, background tasks running.
pub struct Application {
    listener: tokio::net::TcpListener,
    state: AppState,
    background: Background,
}

/// The background task and what stops it.
pub struct Background {
    stop: Arc<AtomicBool>,
    task: JoinHandle<()>,
    imports: JoinHandle<()>,
    feed: JoinHandle<()>,
    hup: Option<JoinHandle<()>>,
}

impl Application {
    /// Loads everything with ONNX Runtime and binds the listener; nothing is served until
    /// [`Self::run_until`].
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        Self::build_with(config, Backend::Ort).await
    }

    /// [`Self::build`] with a chosen model backend.
    pub async fn build_with(config: Config, backend: Backend) -> anyhow::Result<Self> {
        let state = init_state(config, backend).await?;
        let listener = tokio::net::TcpListener::bind(state.config().listen)
            .await
            .with_context(|| format!("cannot listen on {}", state.config().listen))?;
        let background = start_background(&state);
        state.set_ready(true);
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
        serve(listener, router, &state.config().limits, shutdown).await;
        state.set_ready(false);
        shutdown_state(&state, background).await
    }
}

/// The accept loop: hyper's HTTP/1 and HTTP/2 with a header-read timeout, a limit on open
/// connections, each request tagged with its peer's address (for per-address rate limits), and
/// a graceful drain at shutdown.
async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    limits: &crate::config::Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use tower::ServiceExt;

    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(limits.header_read_timeout_secs));
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(limits.header_read_timeout_secs));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!("snapshop_connections_refused_total").increment(1);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service =
            hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let mut req = req.map(axum::body::Body::new);
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                router.clone().oneshot(req)
            });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    tracing::info!("shutting down");
    let grace = Duration::from_secs(limits.shutdown_grace_secs);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_secs = grace.as_secs(),
            "connections still open after the grace period"
        );
    }
}

/// Stores the configured bootstrap admin key when no admin key is active, and warns about
/// development mode and about a deployment nobody can administer.
async fn bootstrap_keys(
    config: &Config,
    store: &dyn snapshop_store::CatalogStore,
) -> anyhow::Result<()> {
    if config.auth.dev_mode {
        tracing::warn!(
            "DEVELOPMENT MODE: auth.dev_mode is on, so API keys are not checked and anyone who              can reach the port may read, change and delete every merchant's catalogue; never              run this way where others can connect"
        );
        return Ok(());
    }
    let now = crate::auth::now_ms();
    let has_admin = store.access().has_active_admin(now).await?;
    match (&config.auth.bootstrap_admin_key, has_admin) {
        (Some(token), false) => {
            let spec = crate::auth::KeySpec {
                kind: snapshop_store::KeyKind::Admin,
                label: "bootstrap (SNAPSHOP_ADMIN_KEY)".into(),
                merchant: None,
                merchants: None,
                origins: vec![],
                rate_limits: None,
                expires_at: None,
            };
            match crate::auth::store_token(store, spec, token).await {
                Ok(k) => tracing::info!(key_id = k.id, "bootstrap admin key stored"),
                // The same token was stored before and has since been revoked or has expired:
                // it stays so.
                Err(snapshop_store::StoreError::KeyExists) => tracing::warn!(
                    "the bootstrap admin key was revoked or has expired; create a new admin key with `snapshop keys create --admin`"
                ),
                Err(e) => return Err(e.into()),
            }
        }
        (None, false) => tracing::warn!(
            "no admin key is active: create one with `snapshop keys create --admin`, or start with SNAPSHOP_ADMIN_KEY set"
        ),
        (_, true) => {}
    }
    Ok(())
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

/// The loader for `backend`; ONNX Runtime is initialised here, once per process.
pub fn loader(config: &Config, backend: Backend) -> anyhow::Result<Arc<dyn ModelLoader>> {
    Ok(match backend {
        Backend::Fake => Arc::new(FakeLoader {
            queue: config.queue.clone(),
        }),
        Backend::Ort => {
            let lib = snapshop_inference::init_runtime(config.ort_dylib.as_deref())
                .context("cannot load ONNX Runtime")?;
            tracing::info!(library = %lib.display(), "ONNX Runtime loaded");
            Arc::new(OrtLoader {
                device: match config.device {
                    DeviceKind::Cpu => Device::Cpu,
                    DeviceKind::Cuda => Device::Cuda,
                },
                threading: Threading {
                    intra_threads: config.intra_threads,
                    spinning: config.intra_spinning,
                },
                queue: config.queue.clone(),
            })
        }
    })
}

/// Loads the model, the store and the search view. Used by `serve`, `eval` and `bench`.
pub async fn init_state(config: Config, backend: Backend) -> anyhow::Result<AppState> {
    let started = Instant::now();
    let config = Arc::new(config);
    std::fs::create_dir_all(&config.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            config.data_dir.display()
        )
    })?;
    let url = config.database_url();
    let store = snapshop_store::open(&url)
        .await
        .with_context(|| format!("cannot open the catalogue store {url}"))?;
    let follows = config.feed.follows(store.backend());
    let loader = loader(&config, backend)?;
    // A hot swap is remembered across restarts, unless the configured bundle changed since. A
    // replica serves the model the store says every replica serves (the last swap of any).
    let shared = if follows {
        store
            .feed()
            .serving_model()
            .await?
            .map(|m| PathBuf::from(m.bundle))
    } else {
        None
    };
    let remembered = shared
        .or_else(|| ActiveModel::read(&config.data_dir, &config.bundle).map(|a| a.bundle.clone()));
    let bundle_dir: PathBuf = remembered.clone().unwrap_or_else(|| config.bundle.clone());
    let l = loader.clone();
    let dir = bundle_dir.clone();
    let model = match tokio::task::spawn_blocking(move || l.load(&dir)).await? {
        Ok(m) => m,
        Err(e) if remembered.is_some() => {
            tracing::warn!(bundle = %bundle_dir.display(), error = format!("{e:#}"), "the model last swapped to cannot load; using the configured bundle");
            let (l, dir) = (loader.clone(), config.bundle.clone());
            tokio::task::spawn_blocking(move || l.load(&dir)).await??
        }
        Err(e) => return Err(e),
    };
    let model = Arc::new(model);
    tracing::info!(model_version = %model.version(), device = model.device(), bundle = %model.dir().display(), "models loaded");

    bootstrap_keys(&config, store.as_ref()).await?;
    let files = crate::files::ImageFiles::open(&config).context("cannot open the image files")?;
    let t = Instant::now();
    let n = crate::swap::reembed_stale(
        store.as_ref(),
        &files,
        &model,
        reembed_progress(store.counts().await?.images, model.version()),
    )
    .await?;
    if n > 0 {
        tracing::warn!(images = n, elapsed_ms = t.elapsed().as_millis() as u64, model_version = %model.version(), "re-embedded images made by another model version");
    }
    // Embeddings of other models are of no use any more (an interrupted swap can leave some),
    // unless other replicas still serve another model: then the follower drops them once all
    // serve this one.
    let dropped = if follows {
        0
    } else {
        store.drop_other_versions(model.version()).await?
    };
    if dropped > 0 {
        tracing::info!(
            embeddings = dropped,
            "dropped embeddings of other model versions"
        );
    }
    // A replica follows the change feed from a point read before its snapshot (the states then
    // hold at least every change up to it), and checks in at once, so that compaction keeps
    // the changes it will replay.
    let follower = if follows {
        let head = store.feed().feed_head().await?;
        let name = config
            .feed
            .replica
            .clone()
            .unwrap_or_else(crate::feed::default_replica_name);
        store
            .feed()
            .checkin(snapshop_store::feed::Checkin {
                replica: &name,
                cursor: head,
                model_version: model.version(),
                now: crate::auth::now_ms(),
            })
            .await?;
        let state = crate::feed::FeedState::new(name, head);
        state.drop_other_versions_later();
        Some(Arc::new(state))
    } else {
        None
    };
    let view = crate::swap::build_view(&config, store.as_ref(), &model, true).await?;
    crate::metrics::install();
    crate::metrics::model_info(
        model.version(),
        model.device(),
        &model.bundle().manifest.backbone,
    );
    let serving = Serving { model, view };
    let core = Arc::new(Core::new(config, store, serving, loader, files));
    if let Some(f) = follower {
        core.set_feed(f);
    }
    crate::metrics::refresh(&core);
    let serving = core.serving();
    tracing::info!(
        products = serving.view.product_count(),
        vectors = serving.view.ann().len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "state loaded"
    );
    Ok(core)
}

/// Logs the start-up re-embedding's progress (done, rate, ETA) at most every 5 s: on a large
/// catalogue it can take minutes before the service is ready, and the log is all there is to
/// watch. `total` bounds it (every stored image).
fn reembed_progress(total: u64, model_version: &str) -> impl FnMut(u64) {
    let started = Instant::now();
    let mut last = started;
    let version = model_version.to_owned();
    move |done: u64| {
        if last.elapsed() < Duration::from_secs(5) {
            return;
        }
        last = Instant::now();
        let secs = started.elapsed().as_secs_f64();
        let rate = done as f64 / secs.max(1e-9);
        let eta_secs = if rate > 0.0 {
            (total.saturating_sub(done) as f64 / rate).round() as u64
        } else {
            0
        };
        tracing::info!(
            done,
            total,
            rate = format!("{rate:.1}/s"),
            eta_secs,
            model_version = %version,
            "re-embedding images made by another model version"
        );
    }
}

/// Starts periodic maintenance (and the SIGHUP reload).
pub fn start_background(state: &AppState) -> Background {
    let stop = Arc::new(AtomicBool::new(false));
    let (s, st) = (stop.clone(), state.clone());
    let every = Duration::from_secs(state.config().maintenance.interval_secs.max(1));
    let sweep_every = Duration::from_secs(state.config().maintenance.sweep_interval_secs.max(1));
    let grace = Duration::from_secs(state.config().maintenance.file_grace_secs);
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        let mut sweep = tokio::time::interval(sweep_every);
        tick.tick().await;
        sweep.tick().await;
        loop {
            let sweep_now = tokio::select! {
                _ = tick.tick() => false,
                _ = sweep.tick() => true,
                _ = st.woken() => false,
            };
            if s.load(Ordering::Acquire) {
                break;
            }
            crate::metrics::refresh(&st);
            if st.serving().view.is_dirty() {
                if let Err(e) = st.reconcile().await {
                    tracing::error!(
                        error = format!("{e:#}"),
                        "cannot reconcile the search view; retrying later"
                    );
                }
            }
            if sweep_now {
                if let Err(e) = st.files().sweep(st.store(), grace).await {
                    tracing::warn!(error = format!("{e:#}"), "image file sweep failed");
                }
                // Without a follower (one process) nobody needs old change rows: keep the
                // latest only. A follower compacts for the replicas itself (src/feed.rs).
                if st.feed().is_none() {
                    let live_since =
                        crate::auth::now_ms() - st.config().feed.replica_timeout_secs as i64 * 1000;
                    match st.store().feed().compact(live_since).await {
                        Ok(c) if c.changes > 0 => {
                            tracing::debug!(changes = c.changes, "change rows compacted")
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "cannot compact the change rows"),
                    }
                }
            }
            match st.store().refresh_statistics().await {
                Ok(t) if !t.is_empty() => {
                    tracing::debug!(tables = ?t, "store statistics refreshed")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot refresh the store's statistics"),
            }
            maintain_index(&st, &s).await;
        }
    });
    #[cfg(unix)]
    let hup = {
        let st = state.clone();
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(mut sig) => Some(tokio::spawn(async move {
                while sig.recv().await.is_some() {
                    let dir = st.config().bundle.clone();
                    tracing::info!(bundle = %dir.display(), "SIGHUP: reloading the configured bundle");
                    match crate::swap::start_swap(&st, &dir).await {
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "SIGHUP: no model swap"),
                    }
                }
            })),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP");
                None
            }
        }
    };
    #[cfg(not(unix))]
    let hup = None;
    let imports = tokio::spawn(crate::jobs::run(state.clone(), stop.clone()));
    let feed = tokio::spawn(crate::feed::run(state.clone()));
    Background {
        stop,
        task,
        imports,
        feed,
        hup,
    }
}

async fn maintain_index(st: &AppState, stop: &Arc<AtomicBool>) {
    let serving = st.serving();
    let ann = serving.view.ann().clone();
    if !ann.needs_maintenance() {
        return;
    }
    let s = stop.clone();
    let started = Instant::now();
    let a = ann.clone();
    match tokio::task::spawn_blocking(move || a.maintain(&s)).await {
        Ok(Ok(true)) => {
            tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, stats = ?ann.stats(), "index maintained");
            if let Err(e) = save_snapshot(st).await {
                tracing::warn!(error = %e, "cannot save the index snapshot");
            }
        }
        Ok(Ok(false)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "index maintenance failed"),
        Err(e) => tracing::error!(error = %e, "index maintenance task failed"),
    }
}

async fn save_snapshot(state: &AppState) -> anyhow::Result<()> {
    let serving = state.serving();
    let ann = serving.view.ann().clone();
    let version = serving.model.version().to_owned();
    tokio::task::spawn_blocking(move || ann.persist(&version)).await??;
    Ok(())
}

/// Stops maintenance, saves the snapshot and closes the store.
pub async fn shutdown_state(state: &AppState, background: Background) -> anyhow::Result<()> {
    background.stop.store(true, Ordering::Release);
    state.wake_background();
    state.wake_imports();
    let _ = background.task.await;
    // An import job saves its progress and ends its lease before this returns.
    let _ = background.imports.await;
    if let Some(f) = state.feed() {
        f.stop();
    }
    let _ = background.feed.await;
    if let Some(h) = background.hup {
        h.abort();
    }
    let saved = save_snapshot(state).await;
    state.store().close().await;
    saved
}

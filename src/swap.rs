//! Model hot-swap, and the re-embedding it is made of.
//!
//! A swap loads and checks a new bundle, re-embeds every stored image with it into the store
//! (next to the old model's embeddings) while the old pair keeps serving, builds a fresh search
//! view for it, and then, with writes held at the gate for a moment, catches up on what changed
//! meanwhile and switches model and view together. A search sees either the old pair or the new
//! one, never a mix. A failed swap leaves the old model serving and says why in `/readyz`. The
//! same re-embedding runs at start-up for images a previous model left. This module must never
//! switch a model whose view is incomplete.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use futures_util::stream::{self, StreamExt};
use serde::Serialize;
use snapshop_store::{CatalogStore, NewEmbedding, StaleImage};

use crate::config::Config;
use crate::core::{Core, Serving};
use crate::error::{Coded, ErrorCode};
use crate::files::ImageFiles;
use crate::ingest::unlimited;
use crate::model::{ActiveModel, Model};
use crate::view::{HnswAnn, SearchView};

/// Stale images fetched per round.
const BATCH: usize = 256;
/// Images decoded and embedded at once.
const IN_FLIGHT: usize = 8;

/// Where a model swap stands.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SwapStatus {
    /// No swap has run since start-up.
    Idle,
    Running {
        from_version: String,
        to_version: String,
        bundle: PathBuf,
        /// Images re-embedded so far, and how many were waiting when it started.
        done: u64,
        total: u64,
        started_at_ms: i64,
    },
    Done {
        from_version: String,
        to_version: String,
        images: u64,
        elapsed_ms: u64,
    },
    Failed {
        to_version: String,
        bundle: PathBuf,
        error: String,
    },
}

/// Why a swap could not start.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    #[error("the bundle cannot be used: {}", causes(.0))]
    Bundle(anyhow::Error),
    #[error("model version `{0}` is already serving")]
    SameVersion(String),
    #[error("a model swap is already running")]
    InProgress,
}

/// An error's cause chain on one line, without the repeats that wrapped I/O errors produce.
fn causes(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

impl Coded for SwapError {
    fn code(&self) -> ErrorCode {
        match self {
            SwapError::Bundle(_) => ErrorCode::BundleInvalid,
            SwapError::SameVersion(_) => ErrorCode::SameModelVersion,
            SwapError::InProgress => ErrorCode::SwapInProgress,
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn embed_one(
    files: &ImageFiles,
    model: &Model,
    s: &StaleImage,
) -> anyhow::Result<NewEmbedding> {
    let bytes = files
        .read(&s.path)
        .await
        .with_context(|| format!("image file {}", s.path))?;
    let prepared = model.prepare(bytes, unlimited()).await?;
    let vector = model.embed_shop(prepared.tensor, &s.tags).await?;
    Ok(NewEmbedding {
        image_id: s.image_id,
        product_id: s.product_id,
        product_version: s.product_version,
        vector,
    })
}

/// Embeds, with `model`, every stored image that has no embedding by it, until none is left.
/// An image that cannot be embedded (its file is gone, say) is logged and skipped, and stays
/// unsearchable for this model. Returns how many were written; `progress` hears each round.
pub async fn reembed_stale(
    store: &dyn CatalogStore,
    files: &ImageFiles,
    model: &Arc<Model>,
    mut progress: impl FnMut(u64),
) -> anyhow::Result<u64> {
    let version = model.version().to_owned();
    let mut failed: HashMap<i64, String> = HashMap::new();
    let mut written = 0u64;
    loop {
        let stale: Vec<StaleImage> = store
            .stale_images(&version, BATCH + failed.len())
            .await?
            .into_iter()
            .filter(|s| !failed.contains_key(&s.image_id))
            .collect();
        if stale.is_empty() {
            break;
        }
        let work = stale.into_iter().map(|s| {
            let (files, model) = (files.clone(), model.clone());
            async move { (s.image_id, embed_one(&files, &model, &s).await) }
        });
        let results: Vec<(i64, anyhow::Result<NewEmbedding>)> = stream::iter(work)
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        let mut batch = Vec::with_capacity(results.len());
        for (image_id, r) in results {
            match r {
                Ok(e) => batch.push(e),
                Err(e) => {
                    tracing::error!(
                        image_id,
                        error = format!("{e:#}"),
                        "cannot re-embed an image; it stays unsearchable for this model"
                    );
                    failed.insert(image_id, format!("{e:#}"));
                }
            }
        }
        // Images whose product changed meanwhile are skipped by the store and come back in the
        // next round with their new tags.
        written += store.put_embeddings(&version, batch).await? as u64;
        progress(written);
    }
    if !failed.is_empty() {
        metrics::counter!("snapshop_reembed_failures_total").increment(failed.len() as u64);
    }
    Ok(written)
}

/// A view for `model` over the store's current embeddings by it: the index snapshot in
/// `<data-dir>/index` when it was made by this model (reconciled with the store), else a new
/// index built from the store.
pub async fn build_view(
    config: &Config,
    store: &dyn CatalogStore,
    model: &Model,
    reuse_snapshot: bool,
) -> anyhow::Result<Arc<SearchView>> {
    let started = Instant::now();
    let mut cfg = config.index.clone();
    cfg.dim = model.embedding_dim();
    cfg.validate().context("invalid index configuration")?;
    let dir = config.data_dir.join("index");
    let version = model.version().to_owned();
    // Before the states: the view then never claims a change they may not hold.
    let position = store.last_change().await?;
    let states = store.load_states(&version).await?;
    let (c, d, v) = (cfg.clone(), dir.clone(), version.clone());
    let loaded = if reuse_snapshot {
        tokio::task::spawn_blocking(move || HnswAnn::load(c, d, &v)).await?
    } else {
        None
    };
    let ann = match loaded {
        Some(ann) => ann,
        None => {
            let items: Vec<(u64, Vec<f32>)> = states
                .iter()
                .flat_map(|s| s.embeddings.iter())
                .filter(|e| crate::model::check_embedding(&e.vector, cfg.dim).is_ok())
                .map(|e| (e.key as u64, e.vector.clone()))
                .collect();
            tokio::task::spawn_blocking(move || {
                HnswAnn::build(cfg, dir, items, &AtomicBool::new(false))
            })
            .await?
            .context("cannot build the index")?
        }
    };
    let view = Arc::new(SearchView::new(
        &version,
        model.embedding_dim(),
        Arc::new(ann),
    ));
    let v = view.clone();
    let report = tokio::task::spawn_blocking(move || v.reconcile(states, position)).await??;
    tracing::info!(?report, model_version = %version, elapsed_ms = started.elapsed().as_millis() as u64, "search view ready");
    Ok(view)
}

/// Loads and checks `bundle`, then swaps to it in the background. Errors come back at once for
/// a bundle that cannot be used, the version already serving, or a swap already running; the
/// swap's own outcome is reported by [`Core::swap_status`].
pub async fn start_swap(core: &Arc<Core>, bundle: &Path) -> Result<SwapStatus, SwapError> {
    if matches!(core.swap_status(), SwapStatus::Running { .. }) {
        return Err(SwapError::InProgress);
    }
    let loader = core.loader().clone();
    let dir = bundle.to_owned();
    let model = tokio::task::spawn_blocking(move || loader.load(&dir))
        .await
        .map_err(|e| SwapError::Bundle(anyhow::anyhow!("loader task failed: {e}")))?
        .map_err(SwapError::Bundle)?;
    let current = core.serving();
    if model.version() == current.model.version() {
        return Err(SwapError::SameVersion(model.version().to_owned()));
    }
    let status = SwapStatus::Running {
        from_version: current.model.version().to_owned(),
        to_version: model.version().to_owned(),
        bundle: bundle.to_owned(),
        done: 0,
        total: 0,
        started_at_ms: now_ms(),
    };
    {
        // Check-and-set under one lock: two concurrent calls cannot both start.
        let mut started = false;
        core.update_swap_status(|s| {
            if !matches!(s, SwapStatus::Running { .. }) {
                *s = status.clone();
                started = true;
            }
        });
        if !started {
            return Err(SwapError::InProgress);
        }
    }
    let core2 = core.clone();
    let model = Arc::new(model);
    let to_version = model.version().to_owned();
    let bundle = bundle.to_owned();
    tokio::spawn(async move {
        metrics::gauge!("snapshop_model_swap_running").set(1.0);
        let outcome = run_swap(&core2, model, current.model.version().to_owned()).await;
        metrics::gauge!("snapshop_model_swap_running").set(0.0);
        match outcome {
            Ok(done) => {
                metrics::counter!("snapshop_model_swaps_total", "result" => "done").increment(1);
                core2.set_swap_status(done);
            }
            Err(e) => {
                let error = format!("{e:#}");
                tracing::error!(%error, to_version, "model swap failed; the old model keeps serving");
                metrics::counter!("snapshop_model_swaps_total", "result" => "failed").increment(1);
                core2.set_swap_status(SwapStatus::Failed {
                    to_version,
                    bundle,
                    error,
                });
            }
        }
    });
    Ok(status)
}

async fn run_swap(core: &Arc<Core>, model: Arc<Model>, from: String) -> anyhow::Result<SwapStatus> {
    let started = Instant::now();
    let store = core.store();
    let to = model.version().to_owned();
    tracing::info!(from = %from, to = %to, "model swap: re-embedding the catalogue");
    let total = store.counts().await?.images;
    core.update_swap_status(|s| {
        if let SwapStatus::Running { total: t, .. } = s {
            *t = total;
        }
    });
    let report = |done: u64| {
        metrics::gauge!("snapshop_model_swap_images_done").set(done as f64);
        metrics::gauge!("snapshop_model_swap_images_total").set(total as f64);
        core.update_swap_status(|s| {
            if let SwapStatus::Running { done: d, .. } = s {
                *d = done;
            }
        });
    };
    let mut images = reembed_stale(store, core.files(), &model, report).await?;
    let view = build_view(core.config(), store, &model, false).await?;
    // The switch: no write commits from here until the new pair serves, and the change feed's
    // follower applies nothing until then (it goes on with the new view afterwards).
    let feed = core.feed_lock().await;
    let gate = core.exclusive_gate().await;
    images += reembed_stale(store, core.files(), &model, |_| {}).await?;
    let position = store.last_change().await?;
    let states = store.load_states(&to).await?;
    let v = view.clone();
    tokio::task::spawn_blocking(move || v.reconcile(states, position)).await??;
    let old = core.switch(Serving {
        model: model.clone(),
        view,
    });
    drop(gate);
    drop(feed);
    crate::metrics::model_info(&to, model.device(), &model.bundle().manifest.backbone);
    crate::metrics::forget_model_info(
        old.model.version(),
        old.model.device(),
        &old.model.bundle().manifest.backbone,
    );
    let active = ActiveModel {
        bundle: model.dir().to_owned(),
        configured: core.config().bundle.clone(),
        model_version: to.clone(),
    };
    if let Err(e) = active.write(&core.config().data_dir) {
        tracing::warn!(error = %e, "cannot record the active model; a restart will load the configured bundle");
    }
    if let Err(e) = core.serving().view.ann().persist(&to) {
        tracing::warn!(error = %e, "cannot save the new index snapshot");
    }
    if let Some(feed) = core.feed() {
        // Replicas: tell the others (they follow with the same bundle, finding its embeddings
        // stored), and drop the old model's embeddings only once every replica has switched.
        let serving = snapshop_store::feed::ServingModel {
            model_version: to.clone(),
            bundle: model.dir().display().to_string(),
            set_at: now_ms(),
        };
        let recorded = store.feed().serving_model().await.ok().flatten();
        if recorded.as_ref().map(|m| &m.model_version) != Some(&to) {
            if let Err(e) = store.feed().set_serving_model(&serving).await {
                tracing::warn!(error = %e, "cannot record the serving model for the other replicas");
            }
        }
        feed.drop_other_versions_later();
    } else {
        match store.drop_other_versions(&to).await {
            Ok(n) => tracing::info!(embeddings = n, "dropped the old model's embeddings"),
            Err(e) => tracing::warn!(error = %e, "cannot drop the old model's embeddings"),
        }
    }
    let elapsed_ms = started.elapsed().as_millis() as u64;
    tracing::info!(from = %from, to = %to, images, elapsed_ms, "model swap done");
    Ok(SwapStatus::Done {
        from_version: from,
        to_version: to,
        images,
        elapsed_ms,
    })
}

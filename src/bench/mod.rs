//! `snapshop bench`: per-stage search latency for one photo against a real catalogue, plus the
//! index build time and the first pass's recall@N against exact search.
//!
//! The catalogue is a split's gallery, ingested through the real ingest pipeline into a
//! temporary data directory; the latency is the real search pipeline's own stage timings.
//! [`catalogue`] grows that catalogue to N images and measures the service at that size.

pub mod catalogue;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use serde::Serialize;
use snapshop_index::{Key, ShopIndex};

use crate::config::Config;
use crate::core::AppState;
use crate::eval::{ingest_gallery, split_rows};
use crate::search::{self, RawOptions, Timings};

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub manifest: PathBuf,
    pub split: String,
    pub limit_products: Option<usize>,
    /// The query photo (e.g. a 12 MP JPEG).
    pub image: PathBuf,
    pub iterations: usize,
    /// User images of the split used to measure recall.
    pub recall_queries: usize,
    pub candidates: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub machine: String,
    pub device: String,
    pub model_version: String,
    pub catalogue_products: usize,
    pub catalogue_images: usize,
    pub ingest_seconds: f64,
    /// `ShopIndex::build` over the whole catalogue.
    pub index_build_seconds: f64,
    pub candidates: usize,
    /// Mean |HNSW top N ∩ exact top N| / N over `recall_queries` street photos.
    pub recall_at_candidates: f64,
    /// p50 of one HNSW graph search for N (the service scans small indexes exactly instead).
    pub graph_search_p50_ms: f64,
    pub recall_queries: usize,
    pub image: String,
    pub image_bytes: usize,
    pub iterations: usize,
    pub p50_ms: Timings,
    pub p90_ms: Timings,
}

pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpu}, {cores} cores available")
}

pub(crate) fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let i = ((values.len() - 1) as f64 * p).round() as usize;
    values[i]
}

pub(crate) fn percentiles(all: &[Timings], p: f64) -> Timings {
    let pick = |f: fn(&Timings) -> f64| {
        let mut v: Vec<f64> = all.iter().map(f).collect();
        percentile(&mut v, p)
    };
    Timings {
        decode: pick(|t| t.decode),
        embed: pick(|t| t.embed),
        ann: pick(|t| t.ann),
        rerank: pick(|t| t.rerank),
        total: pick(|t| t.total),
    }
}

/// A search of the top 20 over `candidates`, re-ranked or not, with the same defaults and bounds
/// as the HTTP API.
pub(crate) fn search_options(
    state: &AppState,
    candidates: usize,
    rerank: bool,
) -> anyhow::Result<search::SearchOptions> {
    Ok(RawOptions {
        k: Some(20),
        candidates: Some(candidates),
        rerank: Some(rerank),
        ..Default::default()
    }
    .resolve(&state.config().search)?)
}

pub async fn run(state: &AppState, opts: &BenchOptions) -> anyhow::Result<BenchReport> {
    let rows = split_rows(&opts.manifest, &opts.split, opts.limit_products)?;
    let started = Instant::now();
    let (products, images) = ingest_gallery(state, &rows, 4).await?;
    let ingest_seconds = started.elapsed().as_secs_f64();

    // Merge the fresh segment into the graph, so that searches go through HNSW as in steady state.
    let serving = state.serving();
    let ann = serving.view.ann().clone();
    tokio::task::spawn_blocking(move || ann.maintain(&AtomicBool::new(false))).await??;

    // Index build time over the same vectors, with a graph that is always used (the service
    // scans small indexes exactly; recall is measured on the graph itself).
    let vectors: Vec<(Key, Vec<f32>)> = state
        .store()
        .load_states(serving.model.version())
        .await?
        .into_iter()
        .flat_map(|s| s.embeddings)
        .map(|e| (e.key as Key, e.vector))
        .collect();
    let mut cfg = state.config().index.clone();
    cfg.dim = serving.model.embedding_dim();
    cfg.exact_search_max_live = 0;
    let built = Instant::now();
    let graph = tokio::task::spawn_blocking(move || {
        ShopIndex::build(cfg, vectors, &AtomicBool::new(false))
    })
    .await??;
    let index_build_seconds = built.elapsed().as_secs_f64();

    // Recall of the graph's first pass against exact search, with real query embeddings.
    let mut recalls = Vec::new();
    let mut graph_ms = Vec::new();
    let recall_rows: Vec<_> = rows
        .iter()
        .filter(|r| r.domain == "user")
        .take(opts.recall_queries)
        .collect();
    let bar = crate::progress::bar(recall_rows.len() as u64, "recall");
    for q in recall_rows {
        bar.inc(1);
        let bytes = Bytes::from(tokio::fs::read(&q.image).await?);
        let prepared = serving.model.prepare(bytes, state.image_limits()).await?;
        let user = serving.model.embed_user(prepared.tensor).await?;
        let (index, n) = (graph.clone(), opts.candidates);
        let (ann, exact, ms) = tokio::task::spawn_blocking(move || {
            let t = Instant::now();
            let ann = index.search(&user.embedding, n, None)?;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            anyhow::Ok((ann, index.search_exact(&user.embedding, n, None)?, ms))
        })
        .await??;
        graph_ms.push(ms);
        let truth: HashSet<Key> = exact.iter().map(|h| h.key).collect();
        if !truth.is_empty() {
            let got = ann.iter().filter(|h| truth.contains(&h.key)).count();
            recalls.push(got as f64 / truth.len() as f64);
        }
    }
    bar.finish_and_clear();
    let recall = recalls.iter().sum::<f64>() / recalls.len().max(1) as f64;
    let graph_search_p50_ms = percentile(&mut graph_ms, 0.5);

    // Per-stage latency of the whole search path, one request at a time.
    let photo = Bytes::from(
        tokio::fs::read(&opts.image)
            .await
            .with_context(|| format!("cannot read {}", opts.image.display()))?,
    );
    let search_opts = search_options(state, opts.candidates, true)?;
    for _ in 0..2 {
        search::search(state, photo.clone(), &search_opts).await?;
    }
    let mut timings = Vec::with_capacity(opts.iterations);
    let bar = crate::progress::bar(opts.iterations.max(1) as u64, "searches");
    for _ in 0..opts.iterations.max(1) {
        bar.inc(1);
        timings.push(
            search::search(state, photo.clone(), &search_opts)
                .await?
                .timings,
        );
    }
    bar.finish_and_clear();
    Ok(BenchReport {
        machine: machine(),
        device: serving.model.device().to_owned(),
        model_version: serving.model.version().to_owned(),
        catalogue_products: products,
        catalogue_images: images,
        ingest_seconds,
        index_build_seconds,
        candidates: opts.candidates,
        recall_at_candidates: recall,
        graph_search_p50_ms,
        recall_queries: recalls.len(),
        image: opts.image.display().to_string(),
        image_bytes: photo.len(),
        iterations: timings.len(),
        p50_ms: percentiles(&timings, 0.5),
        p90_ms: percentiles(&timings, 0.9),
    })
}

pub fn table(r: &BenchReport) -> String {
    let mut s = format!(
        "machine: {}\ndevice: {}, model {}\ncatalogue: {} products, {} images (ingest {:.1} s)\n\
         index build: {:.2} s; HNSW recall@{} vs exact: {:.4} over {} queries (graph search p50 {:.2} ms)\n\
         query: {} ({} bytes), {} iterations\n",
        r.machine,
        r.device,
        r.model_version,
        r.catalogue_products,
        r.catalogue_images,
        r.ingest_seconds,
        r.index_build_seconds,
        r.candidates,
        r.recall_at_candidates,
        r.recall_queries,
        r.graph_search_p50_ms,
        r.image,
        r.image_bytes,
        r.iterations
    );
    s.push_str(&format!(
        "{:<6}{:>10}{:>10}{:>10}{:>10}{:>10}\n",
        "ms", "decode", "embed", "ann", "rerank", "total"
    ));
    for (name, t) in [("p50", &r.p50_ms), ("p90", &r.p90_ms)] {
        s.push_str(&format!(
            "{name:<6}{:>10.1}{:>10.1}{:>10.2}{:>10.1}{:>10.1}\n",
            t.decode, t.embed, t.ann, t.rerank, t.total
        ));
    }
    s
}

/// Runs the benchmark over a temporary data directory.
pub async fn run_in_temp_dir(
    mut config: Config,
    backend: crate::app::Backend,
    opts: &BenchOptions,
) -> anyhow::Result<BenchReport> {
    let dir = tempfile::tempdir().context("cannot create a temporary data directory")?;
    config.data_dir = dir.path().to_owned();
    // Everything goes to the graph after ingest (see `run`).
    config.index.fresh_capacity = 0;
    let state = crate::app::init_state(config, backend).await?;
    let report = run(&state, opts).await;
    state.store().close().await;
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_middle() {
        let mut v = vec![5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(percentile(&mut v, 0.5), 3.0);
        assert_eq!(percentile(&mut v, 0.9), 5.0);
        assert!(percentile(&mut [], 0.5).is_nan());
    }
}

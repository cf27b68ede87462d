//! `snapshop bench --catalogue N`: the service's own store, search view and index grown to an
//! N-image catalogue, measured at sizes on the way (issue 9's goals table, docs/performance.md).
//!
//! The catalogue starts as a split's gallery, ingested through the model. It then grows with
//! perturbed copies of those real shop embeddings (Gaussian noise per dimension, renormalised),
//! written through the ingest path's own commit ([`ingest::create_product_embedded`]: the store
//! transaction, the view's postings, the index insert) while the background task merges the
//! fresh segment into the graph, as in service. No model runs per synthetic image, and each one
//! points at its source image's stored file, so the catalogue stays a valid one (a model swap
//! would re-embed it from those files).
//!
//! At each checkpoint size it measures the first pass (unfiltered, and filtered to about 1%, 10%
//! and 50% of the images), with recall against an exact scan of the same vectors; the whole
//! search path for a small and a large photo, with and without the re-rank; and the process's
//! RSS. At the end it ingests the gallery again through the model at full size, then restarts
//! the service on the same data directory and times how long it takes to be ready.
//!
//! It only ever works in a temporary data directory of its own; it must never be pointed at a
//! real catalogue.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use snapshop_index::{IndexConfig, IndexStats, Key};
use snapshop_store::NewImage;

use super::{machine, percentile, percentiles, search_options, BenchOptions};
use crate::app::{init_state, shutdown_state, start_background, Backend};
use crate::config::Config;
use crate::core::{AppState, Serving};
use crate::eval::{ingest_gallery, ingest_gallery_as, split_rows, ManifestRow, GALLERY_MERCHANT};
use crate::ids::Merchant;
use crate::ingest::{self, NewProduct};
use crate::search::filter::TagFilter;
use crate::search::{self, Timings};
use crate::view::SearchView;

/// What `--catalogue` adds to [`BenchOptions`].
#[derive(Debug, Clone)]
pub struct CatalogueOptions {
    /// Images in the final catalogue (the gallery included).
    pub images: usize,
    /// Catalogue sizes at which everything is measured (the final size is always one).
    pub checkpoints: Vec<usize>,
    /// Street photos of the split used as first-pass queries (their real user embeddings).
    pub queries: usize,
    /// Standard deviation of the per-dimension noise added to a copied embedding before it is
    /// renormalised: 0.03 on 256 dimensions leaves a cosine of about 0.9 to its source.
    pub noise: f32,
    /// Synthetic products are spread over this many merchants.
    pub merchants: usize,
    /// Synthetic products written at once.
    pub write_concurrency: usize,
    pub seed: u64,
}

/// Tags that pass a known share of the synthetic images, for the filtered first pass.
const FRACTION_TAGS: [(&str, u64); 3] = [("bench:p01", 100), ("bench:p10", 10), ("bench:p50", 2)];
/// Write-rate samples are taken every this many images.
const SAMPLE_EVERY: usize = 5_000;

#[derive(Debug, Clone, Serialize)]
pub struct CatalogueReport {
    pub machine: String,
    pub device: String,
    pub model_version: String,
    pub command: String,
    pub index_config: IndexConfig,
    pub gallery: IngestRate,
    pub noise: f32,
    /// Mean cosine of a synthetic image's embedding to its source's.
    pub mean_cosine_to_source: f64,
    pub merchants: usize,
    /// Cumulative write-path progress while the catalogue grew (no model calls).
    pub growth: Vec<GrowthSample>,
    pub checkpoints: Vec<Checkpoint>,
    /// The gallery ingested again through the model into the full catalogue.
    pub ingest_at_full_size: IngestRate,
    pub restart: Restart,
}

#[derive(Debug, Clone, Serialize)]
pub struct IngestRate {
    pub products: usize,
    pub images: usize,
    pub seconds: f64,
    pub images_per_s: f64,
    /// Catalogue images before this ingest.
    pub catalogue_before: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct GrowthSample {
    pub images: usize,
    /// Seconds spent writing so far (the checkpoints' measurements left out).
    pub seconds: f64,
    /// Images since the previous sample, and the rate over them.
    pub window_images: usize,
    pub images_per_s: f64,
    pub index: IndexStats,
}

#[derive(Debug, Clone, Serialize)]
pub struct Checkpoint {
    pub images: usize,
    pub products: usize,
    pub index: IndexStats,
    pub rss_bytes: u64,
    /// (RSS now − RSS after the gallery) / images added since.
    pub rss_bytes_per_added_image: Option<f64>,
    pub first_pass: Vec<FirstPass>,
    pub searches: Vec<SearchTimes>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FirstPass {
    /// `none`, or the tag filter.
    pub filter: String,
    pub passing_images: usize,
    pub passing_fraction: f64,
    pub queries: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Mean |first pass top N ∩ exact top N| / |exact top N|.
    pub recall: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SearchTimes {
    pub photo: String,
    pub rerank: bool,
    pub iterations: usize,
    pub p50_ms: Timings,
    pub p90_ms: Timings,
}

#[derive(Debug, Clone, Serialize)]
pub struct Restart {
    /// From the start of `init_state` to a loaded model, store and search view.
    pub ready_seconds: f64,
    pub vectors: usize,
    pub products: usize,
    pub index: IndexStats,
    /// The first search after the restart (the 12 MP photo, re-rank on).
    pub first_search_ms: f64,
}

/// One gallery product as a template for synthetic ones.
struct Source {
    tags: Vec<String>,
    images: Vec<(NewImage, Vec<f32>)>,
}

/// Runs the whole harness in a temporary data directory.
pub async fn run_in_temp_dir(
    mut config: Config,
    backend: Backend,
    opts: &BenchOptions,
    cat: &CatalogueOptions,
    command: String,
) -> anyhow::Result<CatalogueReport> {
    let dir = tempfile::tempdir().context("cannot create a temporary data directory")?;
    config.data_dir = dir.path().to_owned();
    let rows = split_rows(&opts.manifest, &opts.split, opts.limit_products)?;
    let queries_rows: Vec<&ManifestRow> = rows
        .iter()
        .filter(|r| r.domain == "user")
        .take(cat.queries.max(1))
        .collect();
    if queries_rows.is_empty() {
        bail!(
            "the split `{}` has no street photos to query with",
            opts.split
        );
    }
    let large = Bytes::from(
        tokio::fs::read(&opts.image)
            .await
            .with_context(|| format!("cannot read {}", opts.image.display()))?,
    );
    let small = Bytes::from(
        tokio::fs::read(&queries_rows[0].image)
            .await
            .with_context(|| format!("cannot read {}", queries_rows[0].image.display()))?,
    );

    let state = init_state(config.clone(), backend).await?;
    let background = start_background(&state);
    let serving = state.serving();
    let started = Instant::now();
    let (products, images) = ingest_gallery(&state, &rows, 4).await?;
    let gallery = rate(products, images, started, 0);
    tracing::info!(
        images,
        images_per_s = gallery.images_per_s,
        "gallery ingested"
    );
    if images >= cat.images {
        bail!(
            "--catalogue {} is not larger than the gallery ({images} images)",
            cat.images
        );
    }

    let mut queries = Vec::with_capacity(queries_rows.len());
    for r in &queries_rows {
        let bytes = Bytes::from(tokio::fs::read(&r.image).await?);
        let prepared = serving.model.prepare(bytes, state.image_limits()).await?;
        queries.push(serving.model.embed_user(prepared.tensor).await?.embedding);
    }
    let sources = sources(&state, &serving).await?;
    let source_images: usize = sources.iter().map(|s| s.images.len()).sum();
    tracing::info!(
        products = sources.len(),
        images = source_images,
        "gallery read back as templates"
    );

    let mut sizes: Vec<usize> = cat
        .checkpoints
        .iter()
        .copied()
        .filter(|&c| c > images && c < cat.images)
        .collect();
    sizes.push(cat.images);
    sizes.sort_unstable();
    sizes.dedup();

    let rss_gallery = rss_bytes();
    let mut grower = Grower {
        next: 0,
        images,
        writing: 0.0,
        last: (images, 0.0),
        samples: Vec::new(),
        cosines: (0.0, 0),
    };
    let mut checkpoints = Vec::new();
    for &size in &sizes {
        grower
            .grow_to(&state, &serving, &sources, cat, size)
            .await?;
        // Merge what the background task has not merged yet, as it would within its interval.
        let ann = serving.view.ann().clone();
        tokio::task::spawn_blocking(move || {
            ann.maintain(&std::sync::atomic::AtomicBool::new(false))
        })
        .await??;
        let cp = checkpoint(
            &state,
            &serving,
            &queries,
            opts,
            [("small", &small), ("12mp", &large)],
            grower.images,
            images,
            rss_gallery,
        )
        .await?;
        tracing::info!(images = cp.images, rss_mb = cp.rss_bytes / 1_000_000, first_pass = ?cp.first_pass.iter().map(|f| (f.filter.clone(), f.p50_ms, f.recall)).collect::<Vec<_>>(), "checkpoint");
        checkpoints.push(cp);
    }

    let before = grower.images;
    let started = Instant::now();
    let (p, i) = ingest_gallery_as(&state, &rows, 4, "late").await?;
    let ingest_at_full_size = rate(p, i, started, before);

    // Restart: stop maintenance, save the snapshot, close the store; then start again on the
    // same data directory.
    drop(serving);
    shutdown_state(&state, background).await?;
    drop(state);
    let t = Instant::now();
    let state = init_state(config, backend).await?;
    let ready_seconds = t.elapsed().as_secs_f64();
    let serving = state.serving();
    let search_opts = search_options(&state, opts.candidates, true)?;
    let t = Instant::now();
    search::search(&state, large.clone(), &search_opts).await?;
    let restart = Restart {
        ready_seconds,
        vectors: serving.view.ann().len(),
        products: serving.view.product_count(),
        index: serving.view.stats(),
        first_search_ms: t.elapsed().as_secs_f64() * 1e3,
    };
    let report = CatalogueReport {
        machine: machine(),
        device: serving.model.device().to_owned(),
        model_version: serving.model.version().to_owned(),
        command,
        index_config: state.config().index.clone(),
        gallery,
        noise: cat.noise,
        mean_cosine_to_source: grower.cosines.0 / grower.cosines.1.max(1) as f64,
        merchants: cat.merchants,
        growth: grower.samples,
        checkpoints,
        ingest_at_full_size,
        restart,
    };
    drop(serving);
    state.store().close().await;
    Ok(report)
}

fn rate(products: usize, images: usize, started: Instant, before: usize) -> IngestRate {
    let seconds = started.elapsed().as_secs_f64();
    IngestRate {
        products,
        images,
        seconds,
        images_per_s: images as f64 / seconds.max(1e-9),
        catalogue_before: before,
    }
}

/// The gallery's products with their image rows and embeddings, read back from the store.
async fn sources(state: &AppState, serving: &Serving) -> anyhow::Result<Vec<Source>> {
    let vectors: HashMap<i64, Vec<f32>> = state
        .store()
        .load_states(serving.model.version())
        .await?
        .into_iter()
        .flat_map(|s| s.embeddings)
        .map(|e| (e.image_id, e.vector))
        .collect();
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = state
            .store()
            .list_products(GALLERY_MERCHANT, after, 500)
            .await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        for p in page {
            let images = p
                .images
                .iter()
                .filter_map(|im| {
                    let v = vectors.get(&im.id)?.clone();
                    let row = NewImage {
                        sha256: im.sha256.clone(),
                        byte_size: im.byte_size,
                        width: im.width,
                        height: im.height,
                        format: im.format.clone(),
                        path: im.path.clone(),
                        embedding: Vec::new(),
                    };
                    Some((row, v))
                })
                .collect::<Vec<_>>();
            if !images.is_empty() {
                out.push(Source {
                    tags: p.tags,
                    images,
                });
            }
        }
    }
    if out.is_empty() {
        bail!("the gallery has no embedded images to copy");
    }
    Ok(out)
}

/// Grows the catalogue with synthetic products, sampling the write rate.
struct Grower {
    /// The next synthetic product's number.
    next: usize,
    /// Catalogue images so far.
    images: usize,
    /// Seconds spent in `grow_to` before the current call.
    writing: f64,
    /// (images, seconds) at the last sample.
    last: (usize, f64),
    samples: Vec<GrowthSample>,
    /// Sum and count of cosines to the source.
    cosines: (f64, usize),
}

impl Grower {
    async fn grow_to(
        &mut self,
        state: &AppState,
        serving: &Arc<Serving>,
        sources: &[Source],
        cat: &CatalogueOptions,
        target: usize,
    ) -> anyhow::Result<()> {
        let mut planned = Vec::new();
        let mut total = self.images;
        while total < target {
            let i = self.next;
            self.next += 1;
            let src = &sources[i % sources.len()];
            total += src.images.len();
            let (product, images, cos) = synthetic(i, src, cat);
            self.cosines.0 += cos;
            self.cosines.1 += images.len();
            planned.push((i, product, images));
        }
        let bar = crate::progress::bar((total - self.images) as u64, "catalogue");
        let started = Instant::now();
        let mut writes = stream::iter(planned.into_iter().map(|(i, product, images)| {
            let merchant = format!("bench-{:03}", i % cat.merchants.max(1));
            async move {
                let merchant = Merchant::parse(&merchant)
                    .map_err(|e| anyhow::anyhow!("merchant `{merchant}`: {e}"))?;
                let n = images.len();
                ingest::create_product_embedded(state, serving, &merchant, product, images)
                    .await
                    .with_context(|| format!("writing synthetic product {i}"))?;
                anyhow::Ok(n)
            }
        }))
        .buffer_unordered(cat.write_concurrency.max(1));
        while let Some(n) = writes.next().await {
            let n = n?;
            bar.inc(n as u64);
            self.images += n;
            if self.images - self.last.0 >= SAMPLE_EVERY || self.images >= target {
                let seconds = self.writing + started.elapsed().as_secs_f64();
                self.samples.push(GrowthSample {
                    images: self.images,
                    seconds,
                    window_images: self.images - self.last.0,
                    images_per_s: (self.images - self.last.0) as f64
                        / (seconds - self.last.1).max(1e-9),
                    index: serving.view.stats(),
                });
                self.last = (self.images, seconds);
            }
        }
        bar.finish_and_clear();
        self.writing += started.elapsed().as_secs_f64();
        Ok(())
    }
}

/// Synthetic product `i`: a copy of `src` with every embedding perturbed, its tags plus the
/// fraction tags it draws. Returns the product, its images and the sum of their cosines to
/// their sources.
fn synthetic(i: usize, src: &Source, cat: &CatalogueOptions) -> (NewProduct, Vec<NewImage>, f64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(cat.seed ^ splitmix(i as u64));
    let h = splitmix(i as u64 ^ 0x5eed);
    let mut tags = src.tags.clone();
    for (k, (tag, one_in)) in FRACTION_TAGS.iter().enumerate() {
        // Independent draws per tag from one hash.
        if (h >> (16 * k)).is_multiple_of(*one_in) {
            tags.push((*tag).to_owned());
        }
    }
    let mut cos = 0.0;
    let images = src
        .images
        .iter()
        .map(|(row, v)| {
            let e = perturbed(v, cat.noise, &mut rng);
            cos += v.iter().zip(&e).map(|(a, b)| f64::from(a * b)).sum::<f64>();
            NewImage {
                embedding: e,
                ..row.clone()
            }
        })
        .collect();
    let product = NewProduct {
        id: format!("s{i}"),
        title: format!("synthetic product {i}"),
        tags,
        attributes: serde_json::json!({}),
    };
    (product, images, cos)
}

/// `v` plus Gaussian noise of standard deviation `sigma` per dimension, renormalised.
fn perturbed(v: &[f32], sigma: f32, rng: &mut impl Rng) -> Vec<f32> {
    let mut e: Vec<f32> = v.iter().map(|x| x + sigma * gaussian(rng)).collect();
    let norm = e.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    e.iter_mut().for_each(|x| *x /= norm);
    e
}

/// A standard normal draw (Box-Muller).
fn gaussian(rng: &mut impl Rng) -> f32 {
    let u1: f64 = rng.random::<f64>().max(1e-300);
    let u2: f64 = rng.random::<f64>();
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[allow(clippy::too_many_arguments)]
async fn checkpoint(
    state: &AppState,
    serving: &Arc<Serving>,
    queries: &[Vec<f32>],
    opts: &BenchOptions,
    photos: [(&str, &Bytes); 2],
    images: usize,
    gallery_images: usize,
    rss_gallery: u64,
) -> anyhow::Result<Checkpoint> {
    let mut first_pass = Vec::new();
    let filters = std::iter::once("none").chain(FRACTION_TAGS.iter().map(|(t, _)| *t));
    for name in filters {
        let filter = if name == "none" {
            TagFilter::default()
        } else {
            TagFilter::parse(name).map_err(|e| anyhow::anyhow!("filter {name}: {e}"))?
        };
        let (view, q, n) = (serving.view.clone(), queries.to_vec(), opts.candidates);
        let label = name.to_owned();
        let fp =
            tokio::task::spawn_blocking(move || measure_first_pass(&view, &q, n, &filter, label))
                .await??;
        first_pass.push(fp);
    }
    let mut searches = Vec::new();
    for (photo, bytes) in photos {
        for rerank in [true, false] {
            let o = search_options(state, opts.candidates, rerank)?;
            for _ in 0..2 {
                search::search(state, bytes.clone(), &o).await?;
            }
            let mut t = Vec::with_capacity(opts.iterations);
            for _ in 0..opts.iterations.max(1) {
                t.push(search::search(state, bytes.clone(), &o).await?.timings);
            }
            searches.push(SearchTimes {
                photo: photo.to_owned(),
                rerank,
                iterations: t.len(),
                p50_ms: percentiles(&t, 0.5),
                p90_ms: percentiles(&t, 0.9),
            });
        }
    }
    let rss = rss_bytes();
    Ok(Checkpoint {
        images,
        products: serving.view.product_count(),
        index: serving.view.stats(),
        rss_bytes: rss,
        rss_bytes_per_added_image: (images > gallery_images)
            .then(|| (rss as f64 - rss_gallery as f64) / (images - gallery_images) as f64),
        first_pass,
        searches,
    })
}

/// The view's first pass for every query, timed one by one, and its recall against an exact
/// scan of the vectors the filter allows. Blocking.
fn measure_first_pass(
    view: &SearchView,
    queries: &[Vec<f32>],
    n: usize,
    filter: &TagFilter,
    label: String,
) -> anyhow::Result<FirstPass> {
    let mut ms = Vec::with_capacity(queries.len());
    let mut found = Vec::with_capacity(queries.len());
    for q in queries {
        let t = Instant::now();
        let hits = view.search(q, n, filter, None)?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        found.push(hits.into_iter().map(|h| h.key).collect::<Vec<Key>>());
    }
    let allowed: Vec<Key> = match view.allowed(filter, None) {
        Some(keys) => keys.iter().collect(),
        None => view.ann().keys(),
    };
    let truth = exact_top(view, queries, n, &allowed);
    let mut recalls = Vec::with_capacity(queries.len());
    for (got, want) in found.iter().zip(&truth) {
        if want.is_empty() {
            continue;
        }
        let want: std::collections::HashSet<Key> = want.iter().copied().collect();
        recalls.push(got.iter().filter(|k| want.contains(k)).count() as f64 / want.len() as f64);
    }
    let live = view.ann().len().max(1);
    Ok(FirstPass {
        filter: label,
        passing_images: allowed.len(),
        passing_fraction: allowed.len() as f64 / live as f64,
        queries: queries.len(),
        p50_ms: percentile(&mut ms, 0.5),
        p99_ms: percentile(&mut ms, 0.99),
        recall: recalls.iter().sum::<f64>() / recalls.len().max(1) as f64,
    })
}

/// Exact top `n` keys of `allowed` for every query (dot product), reading the index's vectors
/// in chunks so that no second copy of the catalogue is held.
fn exact_top(view: &SearchView, queries: &[Vec<f32>], n: usize, allowed: &[Key]) -> Vec<Vec<Key>> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    /// A score ordered by `total_cmp`, for the heap.
    struct Score(f32);
    impl PartialEq for Score {
        fn eq(&self, o: &Self) -> bool {
            self.cmp(o).is_eq()
        }
    }
    impl Eq for Score {}
    impl PartialOrd for Score {
        fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(o))
        }
    }
    impl Ord for Score {
        fn cmp(&self, o: &Self) -> std::cmp::Ordering {
            self.0.total_cmp(&o.0)
        }
    }
    let mut heaps: Vec<BinaryHeap<Reverse<(Score, Key)>>> = (0..queries.len())
        .map(|_| BinaryHeap::with_capacity(n + 1))
        .collect();
    for chunk in allowed.chunks(8_192) {
        let vectors = view.ann().vectors(chunk);
        for (key, v) in chunk.iter().zip(vectors) {
            let Some(v) = v else { continue };
            for (q, heap) in queries.iter().zip(heaps.iter_mut()) {
                let s: f32 = q.iter().zip(&v).map(|(a, b)| a * b).sum();
                if heap.len() < n {
                    heap.push(Reverse((Score(s), *key)));
                } else if heap.peek().is_some_and(|Reverse((m, _))| s > m.0) {
                    heap.pop();
                    heap.push(Reverse((Score(s), *key)));
                }
            }
        }
    }
    heaps
        .into_iter()
        .map(|h| h.into_iter().map(|Reverse((_, k))| k).collect())
        .collect()
}

/// The process's resident set size, from `/proc/self/status` (0 where there is none).
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

pub fn table(r: &CatalogueReport) -> String {
    let mut s = format!(
        "machine: {}\ndevice: {}, model {}\ngallery: {} images through the model in {:.1} s ({:.1} images/s)\n\
         synthetic copies: noise {} (mean cosine to source {:.3}), {} merchants\n",
        r.machine,
        r.device,
        r.model_version,
        r.gallery.images,
        r.gallery.seconds,
        r.gallery.images_per_s,
        r.noise,
        r.mean_cosine_to_source,
        r.merchants
    );
    if let Some(last) = r.growth.last() {
        let first = r.gallery.images;
        s.push_str(&format!(
            "write path: {} images in {:.1} s ({:.1} images/s overall, slowest sample {:.1}); graph rebuilds {}\n",
            last.images - first,
            last.seconds,
            (last.images - first) as f64 / last.seconds.max(1e-9),
            r.growth
                .iter()
                .filter(|g| g.window_images >= 1_000)
                .map(|g| g.images_per_s)
                .fold(f64::INFINITY, f64::min),
            last.index.rebuilds
        ));
    }
    for cp in &r.checkpoints {
        s.push_str(&format!(
            "\n{} images ({} products; graph {}, fresh {}), RSS {:.0} MB{}\n",
            cp.images,
            cp.products,
            cp.index.graph,
            cp.index.fresh,
            cp.rss_bytes as f64 / 1e6,
            cp.rss_bytes_per_added_image
                .map(|b| format!(" ({b:.0} B per added image)"))
                .unwrap_or_default()
        ));
        for f in &cp.first_pass {
            s.push_str(&format!(
                "  first pass {:<10} {:>6.2}% passing: p50 {:>7.2} ms, p99 {:>7.2} ms, recall {:.4}\n",
                f.filter,
                f.passing_fraction * 100.0,
                f.p50_ms,
                f.p99_ms,
                f.recall
            ));
        }
        for t in &cp.searches {
            s.push_str(&format!(
                "  search {:<5} rerank {:<5}: p50 total {:>7.1} ms (decode {:.1}, embed {:.1}, ann {:.2}, rerank {:.1})\n",
                t.photo, t.rerank, t.p50_ms.total, t.p50_ms.decode, t.p50_ms.embed, t.p50_ms.ann, t.p50_ms.rerank
            ));
        }
    }
    s.push_str(&format!(
        "\ningest through the model at {} images: {} images in {:.1} s ({:.1} images/s)\n\
         restart: ready in {:.2} s with {} vectors, {} products; first search {:.1} ms\n",
        r.ingest_at_full_size.catalogue_before,
        r.ingest_at_full_size.images,
        r.ingest_at_full_size.seconds,
        r.ingest_at_full_size.images_per_s,
        r.restart.ready_seconds,
        r.restart.vectors,
        r.restart.products,
        r.restart.first_search_ms
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perturbed_copies_are_unit_vectors_near_their_source() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut v: Vec<f32> = (0..256).map(|_| gaussian(&mut rng)).collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= norm);
        let e = perturbed(&v, 0.03, &mut rng);
        let n: f32 = e.iter().map(|x| x * x).sum();
        assert!((n - 1.0).abs() < 1e-5);
        let cos: f32 = v.iter().zip(&e).map(|(a, b)| a * b).sum();
        // 1 / sqrt(1 + 256 * 0.03^2) = 0.90
        assert!((0.85..0.95).contains(&cos), "cosine {cos}");
    }

    #[test]
    fn fraction_tags_pass_about_their_share() {
        let src = Source {
            tags: vec!["category:dress".into()],
            images: vec![],
        };
        let cat = CatalogueOptions {
            images: 0,
            checkpoints: vec![],
            queries: 1,
            noise: 0.03,
            merchants: 1,
            write_concurrency: 1,
            seed: 0,
        };
        let n = 20_000;
        let mut counts = [0usize; 3];
        for i in 0..n {
            let (p, _, _) = synthetic(i, &src, &cat);
            assert!(p.tags.contains(&"category:dress".to_owned()));
            for (k, (tag, _)) in FRACTION_TAGS.iter().enumerate() {
                counts[k] += usize::from(p.tags.iter().any(|t| t == tag));
            }
        }
        let share = |c: usize| c as f64 / n as f64;
        assert!((0.005..0.015).contains(&share(counts[0])), "{counts:?}");
        assert!((0.09..0.11).contains(&share(counts[1])), "{counts:?}");
        assert!((0.48..0.52).contains(&share(counts[2])), "{counts:?}");
    }
}

//! `snapshop eval`: the paper's P@K through the service's own ingest and search code.
//!
//! The gallery (every `shop` image of the split, distractor products included) is ingested with
//! the real ingest pipeline into a temporary data directory; every `user` image of the split is
//! then a query through the real search pipeline. A query is a hit at K when its product is
//! among the top K products (each at its best image), with the first pass alone and with the
//! CtxYNet re-rank of the first `candidates` images, as `models/snapshop_ml/evaluate.py` counts.
//! This is how the Rust path is held to the Python pipeline's figures.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use bytes::Bytes;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use serde::Serialize;

use crate::config::Config;
use crate::core::AppState;
use crate::ids::Merchant;
use crate::ingest::{self, NewProduct};
use crate::search::{self, Grouping, RawOptions};

/// One row of the CSV manifest (`image,product_id,domain,split,tags`).
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestRow {
    pub image: PathBuf,
    pub product_id: String,
    pub domain: String,
    pub split: String,
    pub tags: Vec<String>,
}

/// Reads the manifest; `image` paths are resolved against the CSV's directory.
pub fn read_manifest(path: &Path) -> anyhow::Result<Vec<ManifestRow>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the manifest {}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse_manifest(&text, base).with_context(|| format!("in {}", path.display()))
}

pub fn parse_manifest(text: &str, base: &Path) -> anyhow::Result<Vec<ManifestRow>> {
    let mut lines = text.lines().enumerate();
    let Some((_, header)) = lines.next() else {
        bail!("the manifest is empty");
    };
    let columns: Vec<&str> = header.trim().split(',').map(str::trim).collect();
    let col = |name: &str| {
        columns.iter().position(|c| *c == name).with_context(|| {
            format!(
                "the header has no `{name}` column (expected image,product_id,domain,split,tags)"
            )
        })
    };
    let (ci, cp, cd, cs, ct) = (
        col("image")?,
        col("product_id")?,
        col("domain")?,
        col("split")?,
        col("tags")?,
    );
    let mut rows = Vec::new();
    for (n, line) in lines {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != columns.len() {
            bail!(
                "line {}: {} fields, expected {}",
                n + 1,
                fields.len(),
                columns.len()
            );
        }
        let domain = fields[cd].trim().to_owned();
        if domain != "user" && domain != "shop" {
            bail!("line {}: domain `{domain}` is neither user nor shop", n + 1);
        }
        rows.push(ManifestRow {
            image: base.join(fields[ci].trim()),
            product_id: fields[cp].trim().to_owned(),
            domain,
            split: fields[cs].trim().to_owned(),
            tags: fields[ct]
                .split(';')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect(),
        });
    }
    Ok(rows)
}

/// A query's 0-based rank of its product: (first pass, re-rank).
type Ranks = (Option<usize>, Option<usize>);

/// What to evaluate.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub manifest: PathBuf,
    pub split: String,
    pub limit_products: Option<usize>,
    pub ks: Vec<usize>,
    /// First-pass candidates re-ranked (the paper's 256).
    pub candidates: usize,
    /// Rank products (as the pipeline's P@K does: a product at its best image) or images.
    pub unit: Grouping,
    /// Searches and uploads in flight at once (lets the inference queue batch).
    pub concurrency: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub model_version: String,
    pub device: String,
    pub manifest: String,
    pub split: String,
    pub unit: Grouping,
    pub candidates: usize,
    pub k: Vec<usize>,
    pub queries: usize,
    pub gallery_products: usize,
    pub gallery_images: usize,
    /// P@K by K, first pass only (TagYNet shop embeddings vs the mean-pooled query).
    pub first_pass: BTreeMap<String, f64>,
    /// P@K by K after the CtxYNet re-rank of the first `candidates`.
    pub rerank: BTreeMap<String, f64>,
    /// The pipeline's figures from the bundle manifest, when it has them.
    pub pipeline: serde_json::Value,
    pub ingest_seconds: f64,
    pub search_seconds: f64,
}

/// The rows of one split, optionally only its first `limit_products` products.
pub fn split_rows(
    manifest: &Path,
    split: &str,
    limit_products: Option<usize>,
) -> anyhow::Result<Vec<ManifestRow>> {
    let rows = read_manifest(manifest)?;
    let mut rows: Vec<ManifestRow> = rows.into_iter().filter(|r| r.split == split).collect();
    if rows.is_empty() {
        bail!("the manifest has no rows of split `{split}`");
    }
    if let Some(limit) = limit_products {
        let mut keep: Vec<&str> = Vec::new();
        for r in &rows {
            if !keep.contains(&r.product_id.as_str()) {
                if keep.len() == limit {
                    continue;
                }
                keep.push(&r.product_id);
            }
        }
        let keep: BTreeSet<String> = keep.into_iter().map(str::to_owned).collect();
        rows.retain(|r| keep.contains(&r.product_id));
    }
    Ok(rows)
}

/// The merchant [`ingest_gallery`] ingests under.
pub const GALLERY_MERCHANT: &str = "eval";

/// Ingests every shop image of `rows` through the ingest pipeline, one product per product id
/// (tags: the union of its shop rows' tags), under [`GALLERY_MERCHANT`]. Returns the number of
/// products and images.
pub async fn ingest_gallery(
    state: &AppState,
    rows: &[ManifestRow],
    concurrency: usize,
) -> anyhow::Result<(usize, usize)> {
    ingest_gallery_as(state, rows, concurrency, GALLERY_MERCHANT).await
}

/// [`ingest_gallery`] under another merchant (`snapshop bench --catalogue` ingests the gallery
/// again at full size).
pub async fn ingest_gallery_as(
    state: &AppState,
    rows: &[ManifestRow],
    concurrency: usize,
    merchant: &str,
) -> anyhow::Result<(usize, usize)> {
    let mut order: Vec<String> = Vec::new();
    let mut gallery: HashMap<String, (BTreeSet<String>, Vec<PathBuf>)> = HashMap::new();
    for r in rows.iter().filter(|r| r.domain == "shop") {
        let entry = gallery.entry(r.product_id.clone()).or_insert_with(|| {
            order.push(r.product_id.clone());
            Default::default()
        });
        entry.0.extend(r.tags.iter().cloned());
        entry.1.push(r.image.clone());
    }
    let gallery_images: usize = gallery.values().map(|(_, f)| f.len()).sum();
    let started = Instant::now();
    let batch_limit = state.config().limits.max_images_per_request;
    let merchant =
        &Merchant::parse(merchant).map_err(|e| anyhow::anyhow!("merchant `{merchant}`: {e}"))?;
    let bar = &crate::progress::bar(gallery_images as u64, "gallery");
    stream::iter(order.iter().map(|pid| {
        let (tags, files) = &gallery[pid];
        (
            pid.clone(),
            tags.iter().cloned().collect::<Vec<_>>(),
            files.clone(),
        )
    }))
    .map(|(pid, tags, files)| async move {
        let mut bytes = Vec::with_capacity(files.len());
        for f in &files {
            let b = tokio::fs::read(f)
                .await
                .with_context(|| format!("cannot read {}", f.display()))?;
            bytes.push(Bytes::from(b));
        }
        let rest = if bytes.len() > batch_limit {
            bytes.split_off(batch_limit)
        } else {
            Vec::new()
        };
        let product = NewProduct {
            id: pid.clone(),
            title: pid.clone(),
            tags,
            attributes: serde_json::json!({}),
        };
        ingest::create_product(state, merchant, product, bytes)
            .await
            .with_context(|| format!("ingesting product {pid}"))?;
        bar.inc(files.len().min(batch_limit) as u64);
        for chunk in rest.chunks(batch_limit) {
            ingest::add_images(state, merchant, &pid, chunk.to_vec(), None)
                .await
                .with_context(|| format!("ingesting product {pid}"))?;
            bar.inc(chunk.len() as u64);
        }
        anyhow::Ok(())
    })
    .buffer_unordered(concurrency.max(1))
    .try_collect::<Vec<()>>()
    .await?;
    bar.finish_and_clear();
    tracing::info!(
        products = order.len(),
        images = gallery_images,
        seconds = started.elapsed().as_secs_f64(),
        "gallery ingested"
    );
    Ok((order.len(), gallery_images))
}

/// Builds a state over a temporary data directory and runs the evaluation.
pub async fn run(state: &AppState, opts: &EvalOptions) -> anyhow::Result<EvalReport> {
    if opts.ks.is_empty() || opts.ks.contains(&0) {
        bail!("--k needs positive values");
    }
    let max_k = *opts.ks.iter().max().expect("ks is not empty");
    if opts.candidates < max_k {
        bail!(
            "--candidates ({}) must be at least the largest K ({max_k})",
            opts.candidates
        );
    }
    let rows = split_rows(&opts.manifest, &opts.split, opts.limit_products)?;
    let ingest_start = Instant::now();
    let (gallery_products, gallery_images) = ingest_gallery(state, &rows, opts.concurrency).await?;
    let ingest_seconds = ingest_start.elapsed().as_secs_f64();
    let queries: Vec<&ManifestRow> = rows.iter().filter(|r| r.domain == "user").collect();
    if queries.is_empty() {
        bail!("split `{}` has no user images to query with", opts.split);
    }
    // The same defaults and bounds as the HTTP API.
    let search_opts = RawOptions {
        k: Some(max_k),
        candidates: Some(opts.candidates),
        rerank: Some(true),
        group: Some(opts.unit),
        ..Default::default()
    }
    .resolve(&state.config().search)?;
    let search_start = Instant::now();
    let bar = &crate::progress::bar(queries.len() as u64, "queries");
    let ranks: Vec<Ranks> = stream::iter(queries.iter())
        .map(|q| {
            let search_opts = &search_opts;
            async move {
                let b = tokio::fs::read(&q.image)
                    .await
                    .with_context(|| format!("cannot read {}", q.image.display()))?;
                let outcome = search::search(state, Bytes::from(b), search_opts)
                    .await
                    .with_context(|| format!("searching with {}", q.image.display()))?;
                // As the pipeline counts: 0-based rank = results scoring strictly higher than
                // the query's product, so that exact ties do not depend on the order.
                let rank = |by_rerank: bool| {
                    let top = outcome.top(max_k, opts.unit, by_rerank);
                    let key = |c: &search::Candidate| {
                        if by_rerank {
                            c.score()
                        } else {
                            c.first_pass_score
                        }
                    };
                    let own = top.iter().find(|c| c.product.external_id == q.product_id)?;
                    Some(top.iter().filter(|c| key(c) > key(own)).count())
                };
                bar.inc(1);
                anyhow::Ok((rank(false), rank(outcome.reranked)))
            }
        })
        .buffered(opts.concurrency.max(1))
        .try_collect()
        .await?;
    bar.finish_and_clear();
    let search_seconds = search_start.elapsed().as_secs_f64();

    let p_at = |pick: fn(&Ranks) -> Option<usize>| {
        opts.ks
            .iter()
            .map(|&k| {
                let hits = ranks
                    .iter()
                    .filter(|r| pick(r).is_some_and(|p| p < k))
                    .count();
                (k.to_string(), hits as f64 / ranks.len() as f64)
            })
            .collect::<BTreeMap<_, _>>()
    };
    let serving = state.serving();
    Ok(EvalReport {
        model_version: serving.model.version().to_owned(),
        device: serving.model.device().to_owned(),
        manifest: opts.manifest.display().to_string(),
        split: opts.split.clone(),
        unit: opts.unit,
        candidates: opts.candidates,
        k: opts.ks.clone(),
        queries: ranks.len(),
        gallery_products,
        gallery_images,
        first_pass: p_at(|r| r.0),
        rerank: p_at(|r| r.1),
        pipeline: serving.model.bundle().manifest.evaluation.clone(),
        ingest_seconds,
        search_seconds,
    })
}

/// The pipeline's first-pass and re-rank P@K rows for `split` of the benchmark at `manifest`
/// (`Value::Null` when the bundle's evaluation has none).
///
/// `eval.json`'s `shipped.benchmarks` (written by `snapshop_ml.rerank`) names each benchmark's
/// manifest relative to the repository; it matches when `manifest` ends with that path. Older
/// bundles only have the synthetic benchmark's rows of the shipped chain.
pub fn pipeline_rows(
    pipeline: &serde_json::Value,
    manifest: &str,
    split: &str,
) -> (serde_json::Value, serde_json::Value) {
    let normalised = manifest.replace('\\', "/");
    if let Some(benchmarks) = pipeline["shipped"]["benchmarks"].as_object() {
        for b in benchmarks.values() {
            let Some(path) = b["manifest"].as_str() else {
                continue;
            };
            if normalised == path || normalised.ends_with(&format!("/{path}")) {
                return (b["first_pass"][split].clone(), b["rerank"][split].clone());
            }
        }
        return (serde_json::Value::Null, serde_json::Value::Null);
    }
    let rows = &pipeline["rows"];
    let chain = match pipeline["shipped_chain"].as_str() {
        Some("hard") => "ctxynet+batch-hard",
        _ => "ctxynet",
    };
    (
        rows[format!("{chain} first pass").as_str()][split].clone(),
        rows[chain][split].clone(),
    )
}

/// The report as a text table.
pub fn table(r: &EvalReport) -> String {
    let mut s = format!(
        "P@K on split `{}`: {} queries, gallery {} images of {} products, model {} on {}, unit {:?}, re-rank top {}\n",
        r.split, r.queries, r.gallery_images, r.gallery_products, r.model_version, r.device, r.unit, r.candidates
    );
    s.push_str(&format!("{:<12}", "K"));
    for k in &r.k {
        s.push_str(&format!("{k:>8}"));
    }
    s.push('\n');
    for (name, row) in [("first pass", &r.first_pass), ("re-rank", &r.rerank)] {
        s.push_str(&format!("{name:<12}"));
        for k in &r.k {
            s.push_str(&format!(
                "{:>8.4}",
                row.get(&k.to_string()).copied().unwrap_or(f64::NAN)
            ));
        }
        s.push('\n');
    }
    // The pipeline's own figures for the same benchmark and split, when the manifest carries
    // them: the `shipped` rows of the benchmark whose manifest this is (what the service should
    // return, re-rank fused as the manifest says), else the chain the bundle ships.
    let (first_pass_row, rerank_row) = pipeline_rows(&r.pipeline, &r.manifest, &r.split);
    for (name, row, ours) in [
        ("pipeline 1st", &first_pass_row, &r.first_pass),
        ("pipeline rr", &rerank_row, &r.rerank),
    ] {
        if !row.is_object() {
            continue;
        }
        s.push_str(&format!("{name:<12}"));
        let mut gaps = Vec::new();
        for k in &r.k {
            let theirs = row[k.to_string()].as_f64();
            s.push_str(&format!("{:>8.4}", theirs.unwrap_or(f64::NAN)));
            if let (Some(t), Some(o)) = (theirs, ours.get(&k.to_string())) {
                gaps.push(format!("P@{k} {:+.2} pt", 100.0 * (o - t)));
            }
        }
        s.push_str(&format!("   (service - pipeline: {})\n", gaps.join(", ")));
    }
    s.push_str(&format!(
        "ingest {:.1} s, search {:.1} s ({:.1} ms/query)\n",
        r.ingest_seconds,
        r.search_seconds,
        1e3 * r.search_seconds / r.queries.max(1) as f64
    ));
    s
}

/// Builds a state over a temporary data directory and runs the evaluation.
pub async fn run_in_temp_dir(
    mut config: Config,
    backend: crate::app::Backend,
    opts: &EvalOptions,
) -> anyhow::Result<EvalReport> {
    let dir = tempfile::tempdir().context("cannot create a temporary data directory")?;
    config.data_dir = dir.path().to_owned();
    let state = crate::app::init_state(config, backend).await?;
    state.set_ready(true);
    let report = run(&state, opts).await;
    state.store().close().await;
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_parses() {
        let text = "image,product_id,domain,split,tags\n\
                    img/a.jpg,p1,shop,test,category:dress;color:red\n\
                    img/b.jpg,p1,user,test,\n\r\n";
        let rows = parse_manifest(text, Path::new("/data")).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].image, PathBuf::from("/data/img/a.jpg"));
        assert_eq!(
            rows[0].tags,
            vec!["category:dress".to_string(), "color:red".to_string()]
        );
        assert!(rows[1].tags.is_empty());
        assert_eq!(rows[1].domain, "user");
        assert!(parse_manifest("a,b\n", Path::new(".")).is_err());
        assert!(parse_manifest(
            "image,product_id,domain,split,tags\nx,p,street,test,\n",
            Path::new(".")
        )
        .is_err());
        assert!(parse_manifest(
            "image,product_id,domain,split,tags\nx,p,user\n",
            Path::new(".")
        )
        .is_err());
    }

    #[test]
    fn pipeline_rows_pick_the_benchmark_of_the_manifest_evaluated() {
        let shipped = serde_json::json!({
            "rows": {"ctxynet+batch-hard": {"test": {"1": 0.1}},
                     "ctxynet+batch-hard first pass": {"test": {"1": 0.2}}},
            "shipped_chain": "hard",
            "shipped": {"benchmarks": {
                "synthetic": {"manifest": "data/street2shop/manifest.csv",
                              "first_pass": {"test": {"1": 0.3}}, "rerank": {"test": {"1": 0.4}}},
                "real": {"manifest": "data/realphoto/manifest.csv",
                         "first_pass": {"test": {"1": 0.5}}, "rerank": {"test": {"1": 0.6}}}
            }}
        });
        for (manifest, first, rr) in [
            ("data/realphoto/manifest.csv", 0.5, 0.6),
            ("/home/me/snapshop/data/realphoto/manifest.csv", 0.5, 0.6),
            ("../data/street2shop/manifest.csv", 0.3, 0.4),
        ] {
            let (f, r) = pipeline_rows(&shipped, manifest, "test");
            assert_eq!(
                (f["1"].as_f64(), r["1"].as_f64()),
                (Some(first), Some(rr)),
                "{manifest}"
            );
        }
        // a benchmark the pipeline never saw: nothing to compare with
        let (f, r) = pipeline_rows(&shipped, "data/other/manifest.csv", "test");
        assert!(f.is_null() && r.is_null());
        // no `shipped` block (older bundles): the shipped chain's rows
        let mut old = shipped.clone();
        old.as_object_mut().unwrap().remove("shipped");
        let (f, r) = pipeline_rows(&old, "anything.csv", "test");
        assert_eq!((f["1"].as_f64(), r["1"].as_f64()), (Some(0.2), Some(0.1)));
    }
}

//! The search path of the paper's §4.1, for one photo:
//! admission → decode → user branch (features + mean-pooled embedding) → ANN first pass over the
//! TagYNet shop embeddings (top N, after filters) → one CtxYNet re-rank call over all N
//! candidates → group by product (best image wins) → top k.
//!
//! Option defaults, bounds and admission live here, so HTTP, `snapshop eval` and `snapshop bench`
//! behave the same. One search uses one model and the view it made, start to end, even across a
//! hot swap. It must never block the async runtime: decoding and index calls go to the blocking
//! pool, the models to the inference queue.

pub mod filter;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use ndarray::Array2;
use serde::{Deserialize, Serialize};
use snapshop_index::{Hit, IndexError, Key};
use snapshop_inference::InferenceError;

use crate::config::SearchSettings;
use crate::core::{Core, Overloaded, Serving};
use crate::error::{Coded, ErrorCode};
use crate::images::ImageError;
use crate::view::ProductInfo;
use filter::TagFilter;

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("invalid filter: {0}")]
    Filter(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Overloaded(#[from] Overloaded),
    #[error("inference failed: {0}")]
    Inference(#[from] InferenceError),
    #[error("index failed: {0}")]
    Index(#[from] IndexError),
    #[error("{0}")]
    Internal(String),
}

impl Coded for SearchError {
    fn code(&self) -> ErrorCode {
        match self {
            SearchError::Image(e) => e.code(),
            SearchError::Filter(_) => ErrorCode::InvalidFilter,
            SearchError::Invalid(_) => ErrorCode::InvalidRequest,
            SearchError::Overloaded(_) => ErrorCode::Overloaded,
            SearchError::Inference(e) => e.code(),
            SearchError::Index(e) => e.code(),
            SearchError::Internal(_) => ErrorCode::Internal,
        }
    }
}

/// How results are grouped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Grouping {
    /// One result per product, its best-scoring image (the default).
    #[default]
    Product,
    /// One result per shop image (used to compare with the pipeline's image-level P@K).
    Image,
}

/// Options as a client gives them, every one optional (query parameters and the multipart
/// `options` part both deserialize into this; the part wins field by field).
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = SearchOptions, example = json!({"k": 5, "explain": true, "filter": {"all": [["category:dress"]]}}))]
pub struct RawOptions {
    /// Results returned: 1-`search.max_k` (default 20).
    #[schema(minimum = 1)]
    pub k: Option<usize>,
    /// First-pass candidates re-ranked: `k`-`search.max_candidates` (default 256).
    #[schema(minimum = 1)]
    pub candidates: Option<usize>,
    pub rerank: Option<bool>,
    /// A compact string (`a:b,c:d|e:f`) or a `{"all": [...]}` object (as a JSON string in a
    /// query parameter).
    #[schema(value_type = Option<filter::FilterSpec>)]
    pub filter: Option<serde_json::Value>,
    pub merchant: Option<String>,
    pub explain: Option<bool>,
    pub group: Option<Grouping>,
}

impl RawOptions {
    /// `self`, with the fields `over` sets replacing them.
    pub fn overridden_by(self, over: RawOptions) -> RawOptions {
        RawOptions {
            k: over.k.or(self.k),
            candidates: over.candidates.or(self.candidates),
            rerank: over.rerank.or(self.rerank),
            filter: match over.filter {
                None | Some(serde_json::Value::Null) => self.filter,
                f => f,
            },
            merchant: over.merchant.or(self.merchant),
            explain: over.explain.or(self.explain),
            group: over.group.or(self.group),
        }
    }

    /// Applies the defaults and checks the bounds of `settings`.
    pub fn resolve(self, s: &SearchSettings) -> Result<SearchOptions, SearchError> {
        let k = self.k.unwrap_or(s.default_k);
        if k == 0 || k > s.max_k {
            return Err(SearchError::Invalid(format!(
                "k must be between 1 and {}",
                s.max_k
            )));
        }
        let candidates = self.candidates.unwrap_or(s.default_candidates.max(k));
        if candidates == 0 || candidates > s.max_candidates {
            return Err(SearchError::Invalid(format!(
                "candidates must be between 1 and {}",
                s.max_candidates
            )));
        }
        if candidates < k {
            return Err(SearchError::Invalid("candidates must be at least k".into()));
        }
        let filter = match self.filter {
            None | Some(serde_json::Value::Null) => Ok(TagFilter::default()),
            Some(serde_json::Value::String(text)) => TagFilter::parse(&text),
            Some(v) => serde_json::from_value::<TagFilter>(v)
                .map_err(|e| e.to_string())
                .and_then(TagFilter::validated),
        }
        .map_err(SearchError::Filter)?;
        Ok(SearchOptions {
            k,
            candidates,
            rerank: self.rerank,
            filter,
            merchant: self.merchant.filter(|m| !m.is_empty()),
            scope: None,
            explain: self.explain.unwrap_or(false),
            group: self.group.unwrap_or_default(),
        })
    }
}

/// Validated search options.
#[derive(Debug, Clone)]
pub struct SearchOptions {
    pub k: usize,
    pub candidates: usize,
    /// `None`: as the model's bundle says (`manifest.rerank.default`).
    pub rerank: Option<bool>,
    pub filter: TagFilter,
    pub merchant: Option<String>,
    /// The merchants the caller may see (its key's scope); `None`: all.
    pub scope: Option<Vec<String>>,
    pub explain: bool,
    pub group: Grouping,
}

impl SearchOptions {
    /// The merchants the first pass may return: the requested one (which the caller checked is
    /// in scope), else the scope; `None`: every merchant.
    pub fn merchants(&self) -> Option<Vec<String>> {
        match (&self.merchant, &self.scope) {
            (Some(m), Some(scope)) if !scope.contains(m) => Some(Vec::new()),
            (Some(m), _) => Some(vec![m.clone()]),
            (None, scope) => scope.clone(),
        }
    }
}

/// Per-stage wall time in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, utoipa::ToSchema)]
pub struct Timings {
    pub decode: f64,
    pub embed: f64,
    pub ann: f64,
    pub rerank: f64,
    pub total: f64,
}

/// Attention of the query's locations given one candidate, row-major over the `h × w` grid.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Attention {
    pub h: usize,
    pub w: usize,
    /// `h * w` softmax weights, row-major (`l = row * w + col`), summing to 1.
    pub weights: Vec<f32>,
}

/// One first-pass candidate image.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub key: Key,
    pub product: Arc<ProductInfo>,
    pub image_id: i64,
    /// 1-based rank in the first pass.
    pub first_pass_rank: usize,
    pub first_pass_score: f32,
    /// The re-ranked score, when re-ranked: the CtxYNet score fused with the first-pass score
    /// as the bundle says (`manifest.rerank.fusion`; the CtxYNet score alone by default).
    pub rerank_score: Option<f32>,
    pub attention: Option<Vec<f32>>,
}

impl Candidate {
    /// The score the final order uses.
    pub fn score(&self) -> f32 {
        self.rerank_score.unwrap_or(self.first_pass_score)
    }
}

/// Everything one search found: all candidates in first-pass order, and the timings.
#[derive(Debug)]
pub struct SearchOutcome {
    /// The model (and view) that answered.
    pub model_version: String,
    pub candidates: Vec<Candidate>,
    pub reranked: bool,
    pub timings: Timings,
    pub grid: (usize, usize),
}

impl SearchOutcome {
    /// The final results: ordered by re-rank score (or first-pass score without re-rank),
    /// grouped, truncated to `k`. Ties keep the first-pass order.
    pub fn top(&self, k: usize, group: Grouping, by_rerank: bool) -> Vec<&Candidate> {
        let score = |c: &Candidate| {
            if by_rerank {
                c.score()
            } else {
                c.first_pass_score
            }
        };
        let mut order: Vec<&Candidate> = self.candidates.iter().collect();
        order.sort_by(|a, b| {
            score(b)
                .total_cmp(&score(a))
                .then(a.first_pass_rank.cmp(&b.first_pass_rank))
        });
        let mut out = Vec::with_capacity(k);
        let mut seen: HashSet<i64> = HashSet::new();
        for c in order {
            if out.len() == k {
                break;
            }
            if group == Grouping::Product && !seen.insert(c.product.id) {
                continue;
            }
            out.push(c);
        }
        out
    }
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

fn record_stage(stage: &'static str, ms: f64) {
    metrics::histogram!("snapshop_search_stage_duration_seconds", "stage" => stage)
        .record(ms / 1e3);
}

/// Runs the whole search for one uploaded photo: admission first (or [`Overloaded`] at once),
/// then one model and its view from start to end.
#[tracing::instrument(skip_all, fields(bytes = image.len(), k = opts.k, candidates = opts.candidates, rerank = ?opts.rerank))]
pub async fn search(
    core: &Core,
    image: bytes::Bytes,
    opts: &SearchOptions,
) -> Result<SearchOutcome, SearchError> {
    let _permit = core.admit_search()?;
    let serving = core.serving();
    let start = Instant::now();
    let t = Instant::now();
    let prepared = serving.model.prepare(image, core.image_limits()).await?;
    let decode = ms(t);
    record_stage("decode", decode);
    let mut outcome = search_prepared(&serving, prepared.tensor, opts).await?;
    outcome.timings.decode = decode;
    outcome.timings.total = ms(start);
    record_stage("total", outcome.timings.total);
    Ok(outcome)
}

/// The search from an already preprocessed query tensor, on one serving pair.
pub async fn search_prepared(
    serving: &Arc<Serving>,
    tensor: ndarray::Array3<f32>,
    opts: &SearchOptions,
) -> Result<SearchOutcome, SearchError> {
    let mut timings = Timings::default();
    let model = &serving.model;
    let grid = model.grid();

    let t = Instant::now();
    let user = model.embed_user(tensor).await?;
    timings.embed = ms(t);
    record_stage("embed", timings.embed);

    let t = Instant::now();
    let view = serving.view.clone();
    let (n, filter, merchants) = (opts.candidates, opts.filter.clone(), opts.merchants());
    let embedding = user.embedding;
    let found = tokio::task::spawn_blocking(move || {
        let hits: Vec<Hit> = view.search(&embedding, n, &filter, merchants.as_deref())?;
        let mut candidates: Vec<Candidate> = Vec::with_capacity(hits.len());
        for hit in hits {
            // A key can leave between the index and the postings (a concurrent delete).
            if let Some((product, image_id)) = view.lookup(hit.key) {
                // The postings restricted the search already; this keeps a foreign product out
                // even if they were wrong.
                if merchants
                    .as_ref()
                    .is_some_and(|m| !m.contains(&product.merchant))
                {
                    continue;
                }
                candidates.push(Candidate {
                    key: hit.key,
                    product,
                    image_id,
                    first_pass_rank: candidates.len() + 1,
                    first_pass_score: hit.score,
                    rerank_score: None,
                    attention: None,
                });
            }
        }
        Ok::<_, IndexError>(candidates)
    })
    .await
    .map_err(|e| SearchError::Internal(format!("index task failed: {e}")))??;
    let mut candidates = found;
    timings.ann = ms(t);
    record_stage("ann", timings.ann);

    let mut reranked = false;
    if opts.rerank.unwrap_or(model.rerank_by_default()) && !candidates.is_empty() {
        let t = Instant::now();
        let keys: Vec<Key> = candidates.iter().map(|c| c.key).collect();
        let view = serving.view.clone();
        let vectors = tokio::task::spawn_blocking(move || view.ann().vectors(&keys))
            .await
            .map_err(|e| SearchError::Internal(format!("index task failed: {e}")))?;
        let dim = model.embedding_dim();
        let mut kept = Vec::with_capacity(candidates.len());
        let mut flat = Vec::with_capacity(candidates.len() * dim);
        for (c, v) in candidates.into_iter().zip(vectors) {
            if let Some(v) = v {
                flat.extend_from_slice(&v);
                kept.push(c);
            }
        }
        candidates = kept;
        if !candidates.is_empty() {
            let matrix = Array2::from_shape_vec((candidates.len(), dim), flat)
                .map_err(|e| SearchError::Internal(format!("candidate matrix: {e}")))?;
            let out = model.rerank(Arc::new(user.features), matrix).await?;
            if out.scores.len() != candidates.len() {
                return Err(SearchError::Internal(format!(
                    "re-rank returned {} scores for {} candidates",
                    out.scores.len(),
                    candidates.len()
                )));
            }
            let fusion = model.fusion();
            for (i, c) in candidates.iter_mut().enumerate() {
                c.rerank_score =
                    Some(fusion.first_pass * c.first_pass_score + fusion.ctx * out.scores[i]);
                if opts.explain {
                    c.attention = Some(out.attention.row(i).to_vec());
                }
            }
            reranked = true;
        }
        timings.rerank = ms(t);
        record_stage("rerank", timings.rerank);
    }
    metrics::histogram!("snapshop_search_candidates").record(candidates.len() as f64);
    Ok(SearchOutcome {
        model_version: model.version().to_owned(),
        candidates,
        reranked,
        timings,
        grid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_resolve_with_defaults_and_bounds() {
        let s = SearchSettings::default();
        let o = RawOptions::default().resolve(&s).unwrap();
        assert_eq!((o.k, o.candidates, o.rerank), (20, 256, None));
        let bad = |r: RawOptions| r.resolve(&s).unwrap_err().code();
        assert_eq!(
            bad(RawOptions {
                k: Some(0),
                ..Default::default()
            }),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            bad(RawOptions {
                k: Some(10),
                candidates: Some(5),
                ..Default::default()
            }),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            bad(RawOptions {
                filter: Some(serde_json::json!("nocolon")),
                ..Default::default()
            }),
            ErrorCode::InvalidFilter
        );
        let merged = RawOptions {
            k: Some(3),
            merchant: Some("a".into()),
            ..Default::default()
        }
        .overridden_by(RawOptions {
            k: Some(5),
            ..Default::default()
        });
        assert_eq!((merged.k, merged.merchant.as_deref()), (Some(5), Some("a")));
        let f = RawOptions {
            filter: Some(serde_json::json!({"all": [["a:b"]]})),
            ..Default::default()
        }
        .resolve(&s)
        .unwrap();
        assert_eq!(f.filter.all, vec![vec!["a:b".to_string()]]);
    }

    fn cand(key: Key, product: i64, rank: usize, first: f32, rerank: Option<f32>) -> Candidate {
        Candidate {
            key,
            product: Arc::new(ProductInfo {
                id: product,
                merchant: "m".into(),
                external_id: format!("p{product}"),
                title: String::new(),
                tags: Vec::new(),
            }),
            image_id: key as i64,
            first_pass_rank: rank,
            first_pass_score: first,
            rerank_score: rerank,
            attention: None,
        }
    }

    #[test]
    fn results_are_grouped_by_product_best_image_first() {
        let outcome = SearchOutcome {
            model_version: "v".into(),
            candidates: vec![
                cand(1, 10, 1, 0.9, Some(0.2)),
                cand(2, 20, 2, 0.8, Some(0.7)),
                cand(3, 10, 3, 0.7, Some(0.6)),
                cand(4, 30, 4, 0.6, Some(0.7)),
            ],
            reranked: true,
            timings: Timings::default(),
            grid: (1, 1),
        };
        let keys = |v: Vec<&Candidate>| v.iter().map(|c| c.key).collect::<Vec<_>>();
        // Re-ranked: product 20 and 30 tie at 0.7 (first-pass order decides), product 10 at
        // its best image (key 3, 0.6).
        assert_eq!(
            keys(outcome.top(10, Grouping::Product, true)),
            vec![2, 4, 3]
        );
        assert_eq!(keys(outcome.top(2, Grouping::Product, true)), vec![2, 4]);
        // First pass only.
        assert_eq!(
            keys(outcome.top(10, Grouping::Product, false)),
            vec![1, 2, 4]
        );
        // Images, not products.
        assert_eq!(
            keys(outcome.top(10, Grouping::Image, true)),
            vec![2, 4, 3, 1]
        );
    }
}

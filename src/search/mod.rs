//! The search path of the paper's §4.1, for one photo:
//! admission → decode (and the optional `region` crop, [`region`]) → user branch (features + mean-pooled embedding) → ANN first pass over the
//! TagYNet shop embeddings (top N, after filters) → one CtxYNet re-rank call over all N
//! candidates → group by product (best image wins) → top k.
//!
//! Option defaults, bounds and admission live here, so HTTP, `snapshop eval` and `snapshop bench`
//! behave the same. One search uses one model and the view it made, start to end, even across a
//! hot swap. It must never block the async runtime: decoding and index calls go to the blocking
//! pool, the models to the inference queue.

pub mod filter;
pub mod region;

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
use region::{Region, RegionError};

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("invalid filter: {0}")]
    Filter(String),
    #[error("{0}")]
    Invalid(String),
    /// A well-formed option whose value cannot be used (a region outside the photo).
    #[error("{0}")]
    Field(String),
    #[error(transparent)]
    Overloaded(#[from] Overloaded),
    #[error("inference failed: {0}")]
    Inference(#[from] InferenceError),
    #[error("index failed: {0}")]
    Index(#[from] IndexError),
    #[error("{0}")]
    Internal(String),
}

impl From<RegionError> for SearchError {
    fn from(e: RegionError) -> Self {
        match e {
            RegionError::Invalid(m) => SearchError::Field(format!("region: {m}")),
            RegionError::Image(e) => SearchError::Image(e),
        }
    }
}

impl Coded for SearchError {
    fn code(&self) -> ErrorCode {
        match self {
            SearchError::Image(e) => e.code(),
            SearchError::Filter(_) => ErrorCode::InvalidFilter,
            SearchError::Invalid(_) => ErrorCode::InvalidRequest,
            SearchError::Field(_) => ErrorCode::InvalidField,
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
    /// Results with a lower score are left out (the score the results are sorted by).
    pub min_score: Option<f32>,
    /// Results skipped, after grouping and `min_score`: `offset + k` at most `candidates`.
    pub offset: Option<usize>,
    /// Search with this part of the photo only: `x,y,w,h` in pixels, `relative:x,y,w,h` in
    /// fractions, or `{"x", "y", "w", "h", "unit"}`.
    #[schema(value_type = Option<region::RegionSpec>)]
    pub region: Option<serde_json::Value>,
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
            min_score: over.min_score.or(self.min_score),
            offset: over.offset.or(self.offset),
            region: match over.region {
                None | Some(serde_json::Value::Null) => self.region,
                r => r,
            },
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
        let filter = parse_filter(self.filter)?;
        let offset = self.offset.unwrap_or(0);
        if offset.saturating_add(k) > candidates {
            return Err(SearchError::Invalid(format!(
                "offset + k ({offset} + {k}) must be at most candidates ({candidates}): a page \
                 must lie within the candidates re-ranked; ask for more candidates to page further"
            )));
        }
        if self.min_score.is_some_and(|m| !m.is_finite()) {
            return Err(SearchError::Invalid(
                "min_score must be a finite number".into(),
            ));
        }
        let region = match self.region {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => Some(Region::parse(v)?),
        };
        Ok(SearchOptions {
            k,
            candidates,
            rerank: self.rerank,
            filter,
            merchant: self.merchant.filter(|m| !m.is_empty()),
            scope: None,
            explain: self.explain.unwrap_or(false),
            group: self.group.unwrap_or_default(),
            min_score: self.min_score,
            offset,
            region,
        })
    }
}

/// A filter as a client sent it (a compact or JSON string, a `{"all": ...}` object, or nothing),
/// parsed and checked; 400 `invalid_filter` otherwise. Search and purge read filters alike.
pub fn parse_filter(value: Option<serde_json::Value>) -> Result<TagFilter, SearchError> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(TagFilter::default()),
        Some(serde_json::Value::String(text)) => TagFilter::parse(&text),
        Some(v) => serde_json::from_value::<TagFilter>(v)
            .map_err(|e| e.to_string())
            .and_then(TagFilter::validated),
    }
    .map_err(SearchError::Filter)
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
    pub min_score: Option<f32>,
    /// Results skipped (after grouping and `min_score`).
    pub offset: usize,
    /// The part of the photo to search with; `None`: all of it.
    pub region: Option<Region>,
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
    /// The view's place in the store's change sequence when the search began.
    pub index: snapshop_store::ChangeStamp,
}

/// One page of results.
#[derive(Debug)]
pub struct Page<'a> {
    pub results: Vec<&'a Candidate>,
    /// The `offset` of the next page, when more results follow this one.
    pub next_offset: Option<usize>,
}

impl SearchOutcome {
    /// The page the options ask for: results ordered by score (re-rank, else first pass),
    /// grouped, without those under `min_score`, `offset` skipped, then `k`.
    pub fn page(&self, opts: &SearchOptions) -> Page<'_> {
        let all = self.top(self.candidates.len(), opts.group, true);
        let kept: Vec<&Candidate> = all
            .into_iter()
            .take_while(|c| opts.min_score.is_none_or(|m| c.score() >= m))
            .collect();
        let end = opts.offset.saturating_add(opts.k);
        Page {
            next_offset: (kept.len() > end).then_some(end),
            results: kept.into_iter().skip(opts.offset).take(opts.k).collect(),
        }
    }

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
    let prepared = match opts.region {
        None => serving.model.prepare(image, core.image_limits()).await?,
        Some(r) => {
            crate::images::check_format(&image)?;
            let (pre, limits) = (serving.model.preprocessor().clone(), core.image_limits());
            let span = tracing::Span::current();
            tokio::task::spawn_blocking(move || {
                let _g = span.enter();
                region::prepare(&pre, &image, &limits, &r)
            })
            .await
            .map_err(|e| SearchError::Internal(format!("preprocessing task failed: {e}")))??
        }
    };
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
    // Before the first pass: the results reflect at least this change.
    let index = serving.view.position();

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
    let rerank = opts.rerank.unwrap_or(model.rerank_by_default());
    // `explain` needs CtxYNet's attention, which only the context graph computes: it runs the
    // graph even when the re-rank is off, but then leaves the first-pass order and scores alone.
    if (rerank || opts.explain) && !candidates.is_empty() {
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
                if rerank {
                    c.rerank_score =
                        Some(fusion.first_pass * c.first_pass_score + fusion.ctx * out.scores[i]);
                }
                if opts.explain {
                    c.attention = Some(out.attention.row(i).to_vec());
                }
            }
            reranked = rerank;
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
        index,
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
        // A page must lie within the candidates; a score bound must be a number.
        let paged = |k, candidates, offset| RawOptions {
            k: Some(k),
            candidates: Some(candidates),
            offset: Some(offset),
            ..Default::default()
        };
        assert_eq!(paged(10, 20, 10).resolve(&s).unwrap().offset, 10);
        assert_eq!(bad(paged(10, 20, 11)), ErrorCode::InvalidRequest);
        assert_eq!(bad(paged(10, 20, usize::MAX)), ErrorCode::InvalidRequest);
        assert_eq!(
            bad(RawOptions {
                min_score: Some(f32::NAN),
                ..Default::default()
            }),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            bad(RawOptions {
                region: Some(serde_json::json!("0,0,0,0")),
                ..Default::default()
            }),
            ErrorCode::InvalidField
        );
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
            index: Default::default(),
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

    #[test]
    fn pages_follow_grouping_and_min_score() {
        let outcome = SearchOutcome {
            model_version: "v".into(),
            candidates: vec![
                cand(1, 10, 1, 0.9, Some(0.9)),
                cand(2, 10, 2, 0.8, Some(0.8)),
                cand(3, 20, 3, 0.7, Some(0.7)),
                cand(4, 30, 4, 0.6, Some(0.6)),
                cand(5, 40, 5, 0.5, Some(0.5)),
            ],
            reranked: true,
            timings: Timings::default(),
            grid: (1, 1),
            index: Default::default(),
        };
        let opts = |k, offset, min_score| SearchOptions {
            k,
            offset,
            min_score,
            ..RawOptions::default()
                .resolve(&SearchSettings::default())
                .unwrap()
        };
        let keys = |p: Page<'_>| {
            (
                p.results.iter().map(|c| c.key).collect::<Vec<_>>(),
                p.next_offset,
            )
        };
        // Grouped by product first (key 2 is product 10's second image), then paged.
        assert_eq!(keys(outcome.page(&opts(2, 0, None))), (vec![1, 3], Some(2)));
        assert_eq!(keys(outcome.page(&opts(2, 2, None))), (vec![4, 5], None));
        assert_eq!(keys(outcome.page(&opts(2, 4, None))), (vec![], None));
        // min_score before the page: three products reach 0.6.
        assert_eq!(
            keys(outcome.page(&opts(2, 0, Some(0.6)))),
            (vec![1, 3], Some(2))
        );
        assert_eq!(keys(outcome.page(&opts(2, 2, Some(0.6)))), (vec![4], None));
        assert_eq!(keys(outcome.page(&opts(5, 0, Some(0.95)))), (vec![], None));
    }
}

//! `POST /v1/search`: a photo in, matching products out, with per-stage timings.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::extract::{ApiQuery, Upload};
use crate::search::filter::TagFilter;
use crate::search::{self, Attention, Grouping, SearchOptions, Timings};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/search", post(search_handler))
}

/// Options as query parameters.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchParams {
    pub k: Option<usize>,
    pub candidates: Option<usize>,
    pub rerank: Option<bool>,
    /// Compact (`a:b,c:d|e:f`) or JSON (`{"all": [...]}`) filter.
    pub filter: Option<String>,
    pub merchant: Option<String>,
    pub explain: Option<bool>,
    pub group: Option<Grouping>,
}

/// Options as the multipart JSON part `options`; they override the query parameters.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptionsPart {
    pub k: Option<usize>,
    pub candidates: Option<usize>,
    pub rerank: Option<bool>,
    /// A compact string or a `{"all": [...]}` object.
    pub filter: Option<serde_json::Value>,
    pub merchant: Option<String>,
    pub explain: Option<bool>,
    pub group: Option<Grouping>,
}

/// Merges and validates the options against the configured bounds.
pub fn resolve_options(
    state: &AppState,
    q: SearchParams,
    part: Option<OptionsPart>,
) -> Result<SearchOptions, ApiError> {
    let s = &state.config.search;
    let part = part.unwrap_or_default();
    let k = part.k.or(q.k).unwrap_or(s.default_k);
    if k == 0 || k > s.max_k {
        return Err(ApiError::InvalidRequest(format!(
            "k must be between 1 and {}",
            s.max_k
        )));
    }
    let candidates = part
        .candidates
        .or(q.candidates)
        .unwrap_or(s.default_candidates.max(k));
    if candidates == 0 || candidates > s.max_candidates {
        return Err(ApiError::InvalidRequest(format!(
            "candidates must be between 1 and {}",
            s.max_candidates
        )));
    }
    if candidates < k {
        return Err(ApiError::InvalidRequest(
            "candidates must be at least k".into(),
        ));
    }
    let filter = match part.filter {
        Some(serde_json::Value::String(s)) => TagFilter::parse(&s),
        Some(serde_json::Value::Null) | None => TagFilter::parse(q.filter.as_deref().unwrap_or("")),
        Some(v) => serde_json::from_value::<TagFilter>(v)
            .map_err(|e| e.to_string())
            .and_then(TagFilter::validated),
    }
    .map_err(ApiError::InvalidFilter)?;
    let merchant = part.merchant.or(q.merchant).filter(|m| !m.is_empty());
    Ok(SearchOptions {
        k,
        candidates,
        rerank: part.rerank.or(q.rerank).unwrap_or(true),
        filter,
        merchant,
        explain: part.explain.or(q.explain).unwrap_or(false),
        group: part.group.or(q.group).unwrap_or_default(),
    })
}

#[derive(Debug, Serialize)]
pub struct ResultBody {
    pub product_id: String,
    pub merchant: String,
    pub title: String,
    pub tags: Vec<String>,
    pub image_id: i64,
    /// The re-rank (CtxYNet) score; the first-pass score when re-ranking is off.
    pub score: f32,
    pub first_pass_rank: usize,
    pub first_pass_score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attention: Option<Attention>,
}

#[derive(Debug, Serialize)]
pub struct SearchBody {
    pub model_version: String,
    pub reranked: bool,
    /// First-pass candidates considered.
    pub candidates: usize,
    pub results: Vec<ResultBody>,
    pub timings_ms: Timings,
}

fn timing_headers(t: &Timings) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, v) in [
        ("x-decode-time", t.decode),
        ("x-embed-time", t.embed),
        ("x-ann-time", t.ann),
        ("x-rerank-time", t.rerank),
        ("x-total-time", t.total),
    ] {
        if let Ok(value) = HeaderValue::from_str(&format!("{v:.3}")) {
            h.insert(HeaderName::from_static(name), value);
        }
    }
    h
}

async fn search_handler(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<SearchParams>,
    mut upload: Upload,
) -> Result<(HeaderMap, Json<SearchBody>), ApiError> {
    upload.only_parts(&["options"])?;
    let part: Option<OptionsPart> = upload.json_part("options")?;
    let opts = resolve_options(&state, params, part)?;
    let image = match upload.images.len() {
        1 => upload.images.pop().expect("one image; this is a bug"),
        0 => {
            return Err(ApiError::InvalidRequest(
                "send one image (a part named `image` or an image/* body)".into(),
            ))
        }
        _ => {
            return Err(ApiError::InvalidRequest(
                "send exactly one image per search".into(),
            ))
        }
    };
    let _permit = state
        .search_permits
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::Overloaded)?;
    let outcome = search::search(&state, image, &opts).await?;
    let (h, w) = outcome.grid;
    let results = outcome
        .top(opts.k, opts.group, true)
        .into_iter()
        .map(|c| ResultBody {
            product_id: c.product.external_id.clone(),
            merchant: c.product.merchant.clone(),
            title: c.product.title.clone(),
            tags: c.product.tags.clone(),
            image_id: c.image_id,
            score: c.score(),
            first_pass_rank: c.first_pass_rank,
            first_pass_score: c.first_pass_score,
            attention: c
                .attention
                .clone()
                .map(|weights| Attention { h, w, weights }),
        })
        .collect();
    let body = SearchBody {
        model_version: state.model_version().to_owned(),
        reranked: outcome.reranked,
        candidates: outcome.candidates.len(),
        results,
        timings_ms: outcome.timings,
    };
    Ok((timing_headers(&outcome.timings), Json(body)))
}

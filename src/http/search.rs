//! `POST /v1/search`: a photo in, matching products out, with per-stage timings.
//!
//! The handler only gathers the options (query parameters, overridden by a multipart `options`
//! part) and the image; defaults, bounds and admission are the search core's.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::extract::{ApiQuery, Upload};
use crate::core::AppState;
use crate::error::ErrorCode;
use crate::search::{self, Attention, Grouping, RawOptions, Timings};

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

impl From<SearchParams> for RawOptions {
    fn from(q: SearchParams) -> Self {
        RawOptions {
            k: q.k,
            candidates: q.candidates,
            rerank: q.rerank,
            filter: q.filter.map(serde_json::Value::String),
            merchant: q.merchant,
            explain: q.explain,
            group: q.group,
        }
    }
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
    let part: Option<RawOptions> = upload.json_part("options")?;
    let raw = RawOptions::from(params).overridden_by(part.unwrap_or_default());
    let opts = raw.resolve(&state.config().search)?;
    let image = match upload.images.len() {
        1 => upload.images.pop().expect("one image; this is a bug"),
        0 => {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "send one image (a part named `image` or an image/* body)",
            ))
        }
        _ => {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "send exactly one image per search",
            ))
        }
    };
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
        model_version: outcome.model_version.clone(),
        reranked: outcome.reranked,
        candidates: outcome.candidates.len(),
        results,
        timings_ms: outcome.timings,
    };
    Ok((timing_headers(&outcome.timings), Json(body)))
}

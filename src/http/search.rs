//! `POST /v1/search`: a photo in, matching products out, with per-stage timings.
//!
//! The handler only gathers the options (query parameters, overridden by a multipart `options`
//! part) and the image; defaults, bounds and admission are the search core's.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::{forbidden, Caller};
use super::error::ApiError;
use super::extract::{ApiQuery, Upload};
use super::openapi::{errors, ImageFile};
use crate::auth::SearchScope;
use crate::core::AppState;
use crate::error::ErrorCode;
use crate::search::{self, Attention, Grouping, RawOptions, Timings};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(search_handler))
}

/// Options as query parameters.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SearchParams {
    /// Results returned: 1-`search.max_k` (100 by default); default 20.
    #[param(minimum = 1, example = 10)]
    pub k: Option<usize>,
    /// First-pass candidates re-ranked: `k`-`search.max_candidates` (1024 by default); default
    /// 256.
    #[param(minimum = 1)]
    pub candidates: Option<usize>,
    /// Re-rank with CtxYNet (default: the bundle's, `true` for the shipped one); `false`
    /// returns the first pass alone.
    pub rerank: Option<bool>,
    /// Compact (`a:b,c:d|e:f`: `,` between groups that must all match, `|` between
    /// alternatives) or JSON (`{"all": [...]}`) filter; 400 `invalid_filter` when it cannot be
    /// parsed.
    #[param(example = "category:dress,color:red|color:blue")]
    pub filter: Option<String>,
    /// Only this merchant's products.
    pub merchant: Option<String>,
    /// Add each result's attention over the query's `h × w` grid (with re-ranking on).
    pub explain: Option<bool>,
    #[param(inline)]
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

/// One match.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = SearchResult)]
pub struct ResultBody {
    pub product_id: String,
    pub merchant: String,
    pub title: String,
    pub tags: Vec<String>,
    /// The matched shop image (`GET /v1/merchants/{merchant}/products/{id}/images/{image_id}`).
    pub image_id: i64,
    /// The re-rank (CtxYNet) score; the first-pass score when re-ranking is off.
    pub score: f32,
    /// 1-based rank of the matched image in the first pass.
    pub first_pass_rank: usize,
    pub first_pass_score: f32,
    /// With `explain=true` and re-ranking on only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attention: Option<Attention>,
}

/// The answer to a search.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = SearchResponse, example = json!({
    "model_version": "ynet-mnv2-192-1", "reranked": true, "candidates": 256,
    "results": [{"product_id": "sku-1", "merchant": "acme", "title": "Red dress",
        "tags": ["category:dress", "color:red"], "image_id": 1, "score": 0.83,
        "first_pass_rank": 3, "first_pass_score": 0.71}],
    "timings_ms": {"decode": 41.2, "embed": 18.5, "ann": 0.9, "rerank": 12.3, "total": 73.4}
}))]
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

/// `multipart/form-data` for a search.
#[allow(dead_code)]
#[derive(ToSchema)]
struct SearchForm {
    /// The query photo (exactly one).
    image: ImageFile,
    /// Options as JSON: the fields of the query parameters, which they override; `filter` may
    /// be a string or an object here.
    options: Option<RawOptions>,
}

errors!(SearchErrors: InvalidRequest, MalformedJson, InvalidFilter, InvalidField,
    PayloadTooLarge, ImageTooLarge, UnsupportedMediaType, ImageUndecodable, Overloaded);

/// Search with a photo.
///
/// The photo is a raw image body, or `multipart/form-data` with one `image` part and an
/// optional JSON `options` part. Decode → user branch → first pass over the shop embeddings
/// (top `candidates`, after filters) → one CtxYNet re-rank → grouped by product → top `k`.
#[utoipa::path(
    post,
    path = "/v1/search",
    tag = "search",
    operation_id = "search",
    params(SearchParams),
    request_body(content(
        (ImageFile = "image/jpeg"),
        (ImageFile = "image/png"),
        (ImageFile = "image/webp"),
        (ImageFile = "application/octet-stream"),
        (SearchForm = "multipart/form-data"),
    )),
    responses(
        (status = 200, description = "The matches, best first.", body = SearchBody,
            headers(
                ("x-decode-time" = String, description = "Milliseconds decoding (3 decimals)."),
                ("x-embed-time" = String, description = "Milliseconds in the user branch."),
                ("x-ann-time" = String, description = "Milliseconds in the first pass."),
                ("x-rerank-time" = String, description = "Milliseconds re-ranking."),
                ("x-total-time" = String, description = "Milliseconds in all."),
            )),
        SearchErrors,
    ),
)]
async fn search_handler(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiQuery(params): ApiQuery<SearchParams>,
    mut upload: Upload,
) -> Result<(HeaderMap, Json<SearchBody>), ApiError> {
    upload.only_parts(&["options"])?;
    let part: Option<RawOptions> = upload.json_part("options")?;
    let raw = RawOptions::from(params).overridden_by(part.unwrap_or_default());
    let mut opts = raw.resolve(&state.config().search)?;
    // The key's scope: a merchant outside it is refused, and without one the search covers
    // only what the key may see.
    if let SearchScope::Only(scope) = caller.search_scope() {
        if let Some(m) = opts.merchant.as_ref().filter(|m| !scope.contains(m)) {
            return Err(forbidden(format!("this key may not search merchant `{m}`")));
        }
        opts.scope = Some(scope);
    }
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

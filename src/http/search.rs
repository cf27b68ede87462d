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
    /// Leave out results scoring below this (the `score` they are sorted by).
    #[param(example = 0.5)]
    pub min_score: Option<f32>,
    /// Results to skip (after grouping and `min_score`), for the next page: the previous
    /// answer's `next_offset`. `offset + k` must be at most `candidates` (400
    /// `invalid_request`). Each page is computed again, so pages agree while `index_version`
    /// does.
    #[param(minimum = 0, example = 20)]
    pub offset: Option<usize>,
    /// Search with part of the photo: `x,y,w,h` in whole pixels of the photo as displayed
    /// (EXIF orientation applied), or `relative:x,y,w,h` in fractions of its width and height
    /// (0-1). Empty, or outside the photo: 422 `invalid_field`.
    #[param(example = "relative:0.25,0.1,0.5,0.8")]
    pub region: Option<String>,
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
            min_score: q.min_score,
            offset: q.offset,
            region: q.region.map(serde_json::Value::String),
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
    "index_version": 1042, "index_updated_at": "2026-12-01T12:00:00.123Z", "index_lag_ms": 0,
    "results": [{"product_id": "sku-1", "merchant": "acme", "title": "Red dress",
        "tags": ["category:dress", "color:red"], "image_id": 1, "score": 0.83,
        "first_pass_rank": 3, "first_pass_score": 0.71}],
    "next_offset": 20,
    "timings_ms": {"decode": 41.2, "embed": 18.5, "ann": 0.9, "rerank": 12.3, "total": 73.4}
}))]
pub struct SearchBody {
    pub model_version: String,
    pub reranked: bool,
    /// First-pass candidates considered.
    pub candidates: usize,
    /// The catalogue change the search index reflects: the store's change sequence number of
    /// the latest write applied to it (0 before any). It only grows, also across restarts.
    pub index_version: i64,
    /// When that change was written (RFC 3339); `null` before any change.
    #[schema(format = DateTime)]
    pub index_updated_at: Option<String>,
    /// How long the oldest catalogue change this replica has not applied yet has waited, in
    /// milliseconds (0: caught up; always 0 for a single process, which applies its own writes).
    pub index_lag_ms: i64,
    pub results: Vec<ResultBody>,
    /// The `offset` of the next page when more results follow; `null` on the last page.
    pub next_offset: Option<usize>,
    pub timings_ms: Timings,
}

fn timing_headers(t: &Timings, index_version: i64) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        HeaderName::from_static("x-index-version"),
        HeaderValue::from(index_version),
    );
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
                ("x-index-version" = String, description = "The body's `index_version`."),
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
    let page = outcome.page(&opts);
    let results = page
        .results
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
        index_version: outcome.index.seq,
        index_updated_at: (outcome.index.seq > 0)
            .then(|| super::products::rfc3339(outcome.index.at)),
        index_lag_ms: state.feed().map_or(0, |f| f.lag_ms()),
        results,
        next_offset: page.next_offset,
        timings_ms: outcome.timings,
    };
    Ok((
        timing_headers(&outcome.timings, outcome.index.seq),
        Json(body),
    ))
}

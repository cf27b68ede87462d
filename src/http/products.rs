//! Merchant product routes: create, read, list, update, delete, add images.
//!
//! Handlers only translate HTTP to the ingest pipeline and back. The merchant comes from the
//! [`Merchant`] extractor (where authentication will plug in); every product response carries
//! its `ETag`, and PATCH, DELETE and image uploads honour `If-Match`. One route serves a stored
//! image file (the web page's result grid shows them).

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, ApiQuery, IfMatch, ProductPath, Upload};
use crate::core::AppState;
use crate::error::ErrorCode;
use crate::ids::{Cursor, Merchant};
use crate::ingest::{self, etag_of, Ingested, NewProduct, ProductPatch};
use snapshop_store::ProductRecord;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/merchants/{merchant}/products",
            post(create_product).get(list_products),
        )
        .route(
            "/v1/merchants/{merchant}/products/{id}",
            get(get_product)
                .patch(update_product)
                .delete(delete_product),
        )
        .route(
            "/v1/merchants/{merchant}/products/{id}/images",
            post(add_images),
        )
        .route(
            "/v1/merchants/{merchant}/products/{id}/images/{image_id}",
            get(get_image),
        )
}

#[derive(Debug, Serialize)]
pub struct ImageBody {
    pub id: i64,
    pub sha256: String,
    pub bytes: i64,
    pub width: u32,
    pub height: u32,
    pub format: String,
}

#[derive(Debug, Serialize)]
pub struct ProductBody {
    pub id: String,
    pub merchant: String,
    pub title: String,
    pub tags: Vec<String>,
    /// Tags that are stored and filterable but not in the model's vocabulary.
    pub unknown_to_model: Vec<String>,
    pub attributes: serde_json::Value,
    pub images: Vec<ImageBody>,
    /// 1 at creation, +1 with every change (also in the `ETag` header).
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

impl ProductBody {
    pub fn new(p: ProductRecord, unknown_to_model: Vec<String>) -> Self {
        Self {
            id: p.external_id,
            merchant: p.merchant,
            title: p.title,
            tags: p.tags,
            unknown_to_model,
            attributes: p.attributes,
            images: p
                .images
                .into_iter()
                .map(|i| ImageBody {
                    id: i.id,
                    sha256: i.sha256,
                    bytes: i.byte_size,
                    width: i.width,
                    height: i.height,
                    format: i.format,
                })
                .collect(),
            version: p.version,
            created_at: rfc3339(p.created_at),
            updated_at: rfc3339(p.updated_at),
        }
    }

    fn from_record(state: &AppState, p: ProductRecord) -> Self {
        let unknown = state.serving().model.unknown_tags(&p.tags);
        Self::new(p, unknown)
    }
}

fn etag_header(p: &ProductRecord) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&etag_of(p).header_value()) {
        h.insert(header::ETAG, v);
    }
    h
}

fn written(status: StatusCode, i: Ingested) -> impl IntoResponse {
    let headers = etag_header(&i.product);
    (
        status,
        headers,
        Json(ProductBody::new(i.product, i.unknown_to_model)),
    )
}

async fn create_product(
    State(state): State<AppState>,
    merchant: Merchant,
    mut upload: Upload,
) -> Result<impl IntoResponse, ApiError> {
    upload.only_parts(&["product"])?;
    let product: NewProduct = upload.json_part("product")?.ok_or_else(|| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            "a multipart part named `product` (JSON) is required",
        )
    })?;
    let out = ingest::create_product(&state, &merchant, product, upload.images).await?;
    Ok(written(StatusCode::CREATED, out))
}

async fn add_images(
    State(state): State<AppState>,
    path: ProductPath,
    IfMatch(if_match): IfMatch,
    upload: Upload,
) -> Result<impl IntoResponse, ApiError> {
    upload.only_parts(&[])?;
    let out = ingest::add_images(&state, &path.merchant, &path.id, upload.images, if_match).await?;
    Ok(written(StatusCode::CREATED, out))
}

async fn get_product(
    State(state): State<AppState>,
    path: ProductPath,
) -> Result<impl IntoResponse, ApiError> {
    let p = state
        .store()
        .get_product(path.merchant.as_str(), &path.id)
        .await?;
    let headers = etag_header(&p);
    Ok((headers, Json(ProductBody::from_record(&state, p))))
}

/// `GET …/products/{id}/images/{image_id}`: the stored bytes of one of the product's images.
/// Files are content-addressed, so the response is immutable and its `ETag` is the sha256.
async fn get_image(
    State(state): State<AppState>,
    merchant: Merchant,
    ApiPath((_, id, image_id)): ApiPath<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let not_found = || {
        ApiError::new(
            ErrorCode::ProductNotFound,
            format!("product {id:?} has no image {image_id:?}"),
        )
    };
    let wanted: i64 = image_id.parse().map_err(|_| not_found())?;
    let p = state.store().get_product(merchant.as_str(), &id).await?;
    let image = p
        .images
        .into_iter()
        .find(|i| i.id == wanted)
        .ok_or_else(not_found)?;
    let content_type = match image.format.as_str() {
        "jpeg" => "image/jpeg",
        "png" => "image/png",
        "webp" => "image/webp",
        _ => "application/octet-stream",
    };
    let etag = format!("\"{}\"", image.sha256);
    let mut out = HeaderMap::new();
    out.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    out.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    out.insert(
        header::ETAG,
        HeaderValue::from_str(&etag).map_err(ApiError::internal)?,
    );
    let cached = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            // Weak comparison, as RFC 9110 asks for `If-None-Match`.
            v.split(',')
                .map(|t| t.trim().trim_start_matches("W/"))
                .any(|t| t == etag || t == "*")
        });
    if cached {
        return Ok((StatusCode::NOT_MODIFIED, out).into_response());
    }
    let bytes = state
        .files()
        .read(&image.path)
        .await
        .map_err(ApiError::internal)?;
    out.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok((out, bytes).into_response())
}

async fn update_product(
    State(state): State<AppState>,
    path: ProductPath,
    IfMatch(if_match): IfMatch,
    ApiJson(patch): ApiJson<ProductPatch>,
) -> Result<impl IntoResponse, ApiError> {
    let out = ingest::update_product(&state, &path.merchant, &path.id, patch, if_match).await?;
    Ok(written(StatusCode::OK, out))
}

async fn delete_product(
    State(state): State<AppState>,
    path: ProductPath,
    IfMatch(if_match): IfMatch,
) -> Result<StatusCode, ApiError> {
    ingest::delete_product(&state, &path.merchant, &path.id, if_match).await?;
    Ok(StatusCode::NO_CONTENT)
}

const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 200;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    limit: Option<usize>,
    cursor: Option<String>,
}

#[derive(Debug, Serialize)]
struct ProductPage {
    products: Vec<ProductBody>,
    /// Pass as `cursor` to get the next page; absent on the last page. Opaque.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

async fn list_products(
    State(state): State<AppState>,
    merchant: Merchant,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<ProductPage>, ApiError> {
    let limit = params.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("limit must be between 1 and {MAX_PAGE}"),
        ));
    }
    let after = match params.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(Cursor::parse(c)?.0),
    };
    let records = state
        .store()
        .list_products(merchant.as_str(), after, limit)
        .await?;
    let next_cursor = (records.len() == limit)
        .then(|| records.last().map(|p| Cursor(p.id).encode()))
        .flatten();
    Ok(Json(ProductPage {
        products: records
            .into_iter()
            .map(|p| ProductBody::from_record(&state, p))
            .collect(),
        next_cursor,
    }))
}

//! Merchant product routes: create, read, list, update, delete, add images.
//!
//! Handlers only translate HTTP to the ingest pipeline and back; the merchant from the path is
//! passed into every write so that authentication can be enforced here later.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, ApiQuery, Upload};
use crate::ingest::{self, Ingested, NewProduct, ProductPatch};
use crate::state::AppState;
use crate::store::ProductRecord;

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
            created_at: rfc3339(p.created_at),
            updated_at: rfc3339(p.updated_at),
        }
    }

    fn from_ingested(i: Ingested) -> Self {
        Self::new(i.product, i.unknown_to_model)
    }

    fn from_record(state: &AppState, p: ProductRecord) -> Self {
        let (_, unknown) = state.bundle.tag_vector(&p.tags);
        Self::new(p, unknown)
    }
}

fn check_merchant(merchant: &str) -> Result<(), ApiError> {
    ingest::validate_merchant(merchant).map_err(ApiError::from)
}

async fn create_product(
    State(state): State<AppState>,
    ApiPath(merchant): ApiPath<String>,
    mut upload: Upload,
) -> Result<impl IntoResponse, ApiError> {
    check_merchant(&merchant)?;
    upload.only_parts(&["product"])?;
    let product: NewProduct = upload.json_part("product")?.ok_or_else(|| {
        ApiError::InvalidRequest("a multipart part named `product` (JSON) is required".into())
    })?;
    let out = ingest::create_product(&state, &merchant, product, upload.images).await?;
    Ok((StatusCode::CREATED, Json(ProductBody::from_ingested(out))))
}

async fn add_images(
    State(state): State<AppState>,
    ApiPath((merchant, id)): ApiPath<(String, String)>,
    upload: Upload,
) -> Result<impl IntoResponse, ApiError> {
    check_merchant(&merchant)?;
    upload.only_parts(&[])?;
    let out = ingest::add_images(&state, &merchant, &id, upload.images).await?;
    Ok((StatusCode::CREATED, Json(ProductBody::from_ingested(out))))
}

async fn get_product(
    State(state): State<AppState>,
    ApiPath((merchant, id)): ApiPath<(String, String)>,
) -> Result<Json<ProductBody>, ApiError> {
    check_merchant(&merchant)?;
    let p = state.store.get_product(&merchant, &id).await?;
    Ok(Json(ProductBody::from_record(&state, p)))
}

async fn update_product(
    State(state): State<AppState>,
    ApiPath((merchant, id)): ApiPath<(String, String)>,
    ApiJson(patch): ApiJson<ProductPatch>,
) -> Result<Json<ProductBody>, ApiError> {
    check_merchant(&merchant)?;
    let out = ingest::update_product(&state, &merchant, &id, patch).await?;
    Ok(Json(ProductBody::from_ingested(out)))
}

async fn delete_product(
    State(state): State<AppState>,
    ApiPath((merchant, id)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    check_merchant(&merchant)?;
    ingest::delete_product(&state, &merchant, &id).await?;
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
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

async fn list_products(
    State(state): State<AppState>,
    ApiPath(merchant): ApiPath<String>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<ProductPage>, ApiError> {
    check_merchant(&merchant)?;
    let limit = params.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::InvalidRequest(format!(
            "limit must be between 1 and {MAX_PAGE}"
        )));
    }
    let after = match params.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(
            c.parse::<i64>()
                .ok()
                .filter(|v| *v >= 0)
                .ok_or_else(|| ApiError::InvalidRequest("invalid cursor".into()))?,
        ),
    };
    let records = state.store.list_products(&merchant, after, limit).await?;
    let next_cursor = (records.len() == limit)
        .then(|| records.last().map(|p| p.id.to_string()))
        .flatten();
    Ok(Json(ProductPage {
        products: records
            .into_iter()
            .map(|p| ProductBody::from_record(&state, p))
            .collect(),
        next_cursor,
    }))
}

//! Merchant product routes: create, read, list, update, delete, add images.
//!
//! Handlers only translate HTTP to the ingest pipeline and back. The merchant comes from the
//! [`Merchant`] extractor (where authentication will plug in); every product response carries
//! its `ETag`, and PATCH, DELETE and image uploads honour `If-Match`. One route serves a stored
//! image file (the web page's result grid shows them).

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, ApiQuery, IfMatch, ProductPath, Upload, ViewedMerchant};
use super::openapi::{errors, ImageFile};
use crate::core::AppState;
use crate::error::ErrorCode;
use crate::ids::{Cursor, Merchant};
use crate::ingest::{self, etag_of, Ingested, NewProduct, ProductPatch};
use snapshop_store::ProductRecord;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_product, list_products))
        .routes(routes!(get_product, update_product, delete_product))
        .routes(routes!(add_images))
        .routes(routes!(get_image, delete_image))
        .routes(routes!(purge_products))
}

/// A stored image of a product.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"id": 1, "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "bytes": 48211, "width": 800, "height": 1200, "format": "jpeg"}))]
pub struct ImageBody {
    /// Its id, for `GET …/images/{image_id}`.
    pub id: i64,
    /// The file's SHA-256, hex (files are content-addressed).
    pub sha256: String,
    /// The file's size.
    pub bytes: i64,
    pub width: u32,
    pub height: u32,
    /// `jpeg`, `png` or `webp`.
    #[schema(examples("jpeg"))]
    pub format: String,
}

/// A product, as every product route answers it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Product, example = json!({
    "id": "sku-1", "merchant": "acme", "title": "Red dress",
    "tags": ["category:dress", "color:red"], "unknown_to_model": [],
    "attributes": {"price": 49.9},
    "images": [{"id": 1, "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "bytes": 48211, "width": 800, "height": 1200, "format": "jpeg"}],
    "version": 1, "created_at": "2026-11-27T10:00:00.123Z", "updated_at": "2026-11-27T10:00:00.123Z"
}))]
pub struct ProductBody {
    /// The merchant's own id.
    pub id: String,
    pub merchant: String,
    pub title: String,
    pub tags: Vec<String>,
    /// Tags that are stored and filterable but not in the model's vocabulary.
    pub unknown_to_model: Vec<String>,
    /// Free-form JSON object.
    #[schema(value_type = Object)]
    pub attributes: serde_json::Value,
    pub images: Vec<ImageBody>,
    /// 1 at creation, +1 with every change (also in the `ETag` header).
    pub version: i64,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub updated_at: String,
}

pub(super) fn rfc3339(ms: i64) -> String {
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

// ---------------------------------------------------------------------------------------------
// The contract (OpenAPI): parameters and bodies as the extractors and `crate::ingest` take them.

/// The `{merchant}` path parameter.
#[allow(dead_code)]
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
struct MerchantParams {
    /// The merchant: 1-64 characters of `A-Z a-z 0-9 . _ -` (422 `invalid_field` otherwise).
    #[param(pattern = r"^[A-Za-z0-9._-]{1,64}$", example = "acme")]
    merchant: String,
}

/// The `{merchant}` and `{id}` path parameters.
#[allow(dead_code)]
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
struct ProductParams {
    /// The merchant: 1-64 characters of `A-Z a-z 0-9 . _ -` (422 `invalid_field` otherwise).
    #[param(pattern = r"^[A-Za-z0-9._-]{1,64}$", example = "acme")]
    merchant: String,
    /// The merchant's own product id (1-256 bytes, no `/`, no control characters).
    #[param(min_length = 1, max_length = 256, example = "sku-1")]
    id: String,
}

/// The path parameters of an image file.
#[allow(dead_code)]
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
struct ImageParams {
    /// The merchant: 1-64 characters of `A-Z a-z 0-9 . _ -` (422 `invalid_field` otherwise).
    #[param(pattern = r"^[A-Za-z0-9._-]{1,64}$", example = "acme")]
    merchant: String,
    /// The merchant's own product id.
    #[param(min_length = 1, max_length = 256, example = "sku-1")]
    id: String,
    /// An `images[].id` of the product (or a search result's `image_id`).
    #[param(example = 1)]
    image_id: i64,
}

/// `If-Match`: the request applies only while the product is at that version.
#[allow(dead_code)]
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
struct IfMatchHeader {
    /// An `ETag` of the product as this API returned it (or `*`); 412 `version_conflict` when
    /// the product changed since, 400 `invalid_request` when it is not one of ours.
    #[param(rename = "If-Match", example = "\"YxEAAAAAAAAAAQAAAAAAAAA\"")]
    if_match: Option<String>,
}

/// A product as a merchant submits it (the JSON part `product`; `crate::ingest::NewProduct`).
#[allow(dead_code)]
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = NewProduct, example = json!({"id": "sku-1", "title": "Red dress",
    "tags": ["category:dress", "color:red"], "attributes": {"price": 49.9}}))]
struct NewProductSchema {
    /// The merchant's own id, unique per merchant: 1-256 bytes, no `/`, no control characters.
    #[schema(min_length = 1, max_length = 256)]
    id: String,
    /// 1-1024 bytes, not blank.
    #[schema(min_length = 1, max_length = 1024)]
    title: String,
    /// `key:value` tags (at most 256); trimmed, de-duplicated and sorted. Tags outside the
    /// model's vocabulary are kept and reported in `unknown_to_model`.
    #[serde(default)]
    #[schema(max_items = 256, example = json!(["category:dress", "color:red"]))]
    tags: Vec<String>,
    /// A free-form JSON object (default `{}`).
    #[serde(default)]
    #[schema(value_type = Object)]
    attributes: Option<serde_json::Value>,
}

/// The fields to change (`crate::ingest::ProductPatch`); absent fields are kept.
#[allow(dead_code)]
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ProductPatch, example = json!({"tags": ["category:dress", "color:blue"]}))]
struct ProductPatchSchema {
    #[schema(min_length = 1, max_length = 1024)]
    title: Option<String>,
    /// Replaces the tags; re-embeds every image of the product with the new tag vector.
    #[schema(max_items = 256)]
    tags: Option<Vec<String>>,
    /// Replaces the attributes (a JSON object).
    #[schema(value_type = Option<Object>)]
    attributes: Option<serde_json::Value>,
}

/// `multipart/form-data` for a new product.
#[allow(dead_code)]
#[derive(ToSchema)]
struct ProductForm {
    /// The product, as JSON.
    product: NewProductSchema,
    /// One or more image files (at most `limits.max_images_per_request`).
    #[schema(min_items = 1)]
    image: Vec<ImageFile>,
}

/// `multipart/form-data` with images to add.
#[allow(dead_code)]
#[derive(ToSchema)]
struct ImagesForm {
    /// One or more image files.
    #[schema(min_items = 1)]
    image: Vec<ImageFile>,
}

errors!(CreateErrors: InvalidRequest, MalformedJson, InvalidField, ProductExists,
    QuotaExceeded, PayloadTooLarge, ImageTooLarge, UnsupportedMediaType, ImageUndecodable, Overloaded,
    ImageStorageUnavailable);
errors!(AddImagesErrors: InvalidRequest, InvalidField, ProductNotFound, VersionConflict,
    QuotaExceeded, PayloadTooLarge, ImageTooLarge, UnsupportedMediaType, ImageUndecodable, Overloaded,
    ImageStorageUnavailable);
errors!(ReadErrors: InvalidRequest, InvalidField, ProductNotFound);
errors!(ReadImageErrors: InvalidRequest, InvalidField, ProductNotFound, ImageStorageUnavailable);
errors!(ListErrors: InvalidRequest, InvalidField);
errors!(UpdateErrors: InvalidRequest, MalformedJson, InvalidField, ProductNotFound,
    VersionConflict, PayloadTooLarge, UnsupportedMediaType, Overloaded, ImageStorageUnavailable);
errors!(DeleteErrors: InvalidRequest, InvalidField, ProductNotFound, VersionConflict, Overloaded);
errors!(DeleteImageErrors: InvalidRequest, InvalidField, ProductNotFound, ImageNotFound,
    VersionConflict, Overloaded);
errors!(PurgeErrors: InvalidRequest, MalformedJson, InvalidField, InvalidFilter,
    ConfirmationRequired, PayloadTooLarge, UnsupportedMediaType);

/// Create a product with its images.
///
/// Each image is decoded (EXIF orientation applied), embedded by the shop branch with the
/// product's tags, stored content-addressed and committed with its embedding. 201 comes only
/// after the commit; the product is searchable at once.
#[utoipa::path(
    post,
    path = "/v1/merchants/{merchant}/products",
    tag = "products",
    params(MerchantParams),
    request_body(content = ProductForm, content_type = "multipart/form-data"),
    responses(
        (status = 201, description = "Created (after the commit).", body = ProductBody,
            headers(("ETag" = String, description = "The product's version, for `If-Match`."))),
        CreateErrors,
    ),
)]
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

/// Add images to a product.
///
/// `multipart/form-data` with `image` parts, or one raw image body. Honours `If-Match`.
#[utoipa::path(
    post,
    path = "/v1/merchants/{merchant}/products/{id}/images",
    tag = "products",
    params(ProductParams, IfMatchHeader),
    request_body(content(
        (ImagesForm = "multipart/form-data"),
        (ImageFile = "image/jpeg"),
        (ImageFile = "image/png"),
        (ImageFile = "image/webp"),
        (ImageFile = "application/octet-stream"),
    )),
    responses(
        (status = 201, description = "The images are added (after the commit).", body = ProductBody,
            headers(("ETag" = String, description = "The product's new version."))),
        AddImagesErrors,
    ),
)]
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

/// Read a product.
#[utoipa::path(
    get,
    path = "/v1/merchants/{merchant}/products/{id}",
    tag = "products",
    params(ProductParams),
    responses(
        (status = 200, description = "The product.", body = ProductBody,
            headers(("ETag" = String, description = "The product's version, for `If-Match`."))),
        ReadErrors,
    ),
)]
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
#[utoipa::path(
    get,
    path = "/v1/merchants/{merchant}/products/{id}/images/{image_id}",
    tag = "products",
    summary = "An image file of a product",
    description = "The stored bytes, as uploaded. Content-addressed: cached as immutable, and \
        `If-None-Match` with the `ETag` answers 304. 404 `product_not_found` when the merchant \
        has no such product or the product no such image.",
    params(
        ImageParams,
        ("If-None-Match" = Option<String>, Header,
            description = "An `ETag` of this image (or `*`): 304 when it matches."),
    ),
    responses(
        (status = 200, description = "The image file.",
            content(
                (ImageFile = "image/jpeg"),
                (ImageFile = "image/png"),
                (ImageFile = "image/webp"),
                (ImageFile = "image/heic"),
                (ImageFile = "application/octet-stream"),
            ),
            headers(
                ("ETag" = String, description = "The quoted SHA-256 of the file."),
                ("Cache-Control" = String, description = "`public, max-age=31536000, immutable`"),
            )),
        (status = 304, description = "`If-None-Match` matches: not modified.",
            headers(
                ("ETag" = String, description = "The quoted SHA-256 of the file."),
                ("Cache-Control" = String, description = "`public, max-age=31536000, immutable`"),
            )),
        ReadImageErrors,
    ),
)]
async fn get_image(
    State(state): State<AppState>,
    ViewedMerchant(merchant): ViewedMerchant,
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
        "heic" => "image/heic",
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
    let bytes = state.files().read(&image.path).await?;
    out.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok((out, bytes).into_response())
}

/// Delete one image of a product.
///
/// The image leaves search results at once; the product's version moves on (a new `ETag`) and
/// the answer is the product as `GET` returns it. A product left without images stays: it is
/// readable but no search finds it. Honours `If-Match`. The file is deleted by the background
/// sweep once no image row refers to it (files are content-addressed and may be shared).
#[utoipa::path(
    delete,
    path = "/v1/merchants/{merchant}/products/{id}/images/{image_id}",
    tag = "products",
    params(ImageParams, IfMatchHeader),
    responses(
        (status = 200, description = "The product without the image (after the commit).",
            body = ProductBody,
            headers(("ETag" = String, description = "The product's new version."))),
        DeleteImageErrors,
    ),
)]
async fn delete_image(
    State(state): State<AppState>,
    merchant: Merchant,
    ApiPath((_, id, image_id)): ApiPath<(String, String, String)>,
    IfMatch(if_match): IfMatch,
) -> Result<impl IntoResponse, ApiError> {
    let wanted: i64 = image_id.parse().map_err(|_| {
        ApiError::new(
            ErrorCode::ImageNotFound,
            format!("product {id:?} has no image {image_id:?}"),
        )
    })?;
    let out = ingest::delete_image(&state, &merchant, &id, wanted, if_match).await?;
    Ok(written(StatusCode::OK, out))
}

/// The body of a purge.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = PurgeRequest, example = json!({"filter": "category:dress,color:red|color:blue", "force": true}))]
struct PurgeRequest {
    /// Which products go: the search filter's syntax (compact string or `{"all": [...]}`);
    /// absent or `null`: every product of the merchant.
    #[schema(value_type = Option<crate::search::filter::FilterSpec>)]
    filter: Option<serde_json::Value>,
    /// Must be `true` to delete (400 `confirmation_required` otherwise), as Google Vision's
    /// `productSets.purge` asks for `force`.
    #[serde(default)]
    force: bool,
    /// Only count what would be deleted; needs no `force`.
    #[serde(default)]
    dry_run: bool,
}

/// What a purge deleted.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = PurgeResult, example = json!({"deleted": 120, "matched": 120, "images": 410, "dry_run": false}))]
struct PurgeBody {
    /// Products deleted (0 on a dry run).
    deleted: usize,
    /// Products the filter matched (what a dry run would delete).
    matched: usize,
    /// Their images (the files are swept later, once unreferenced).
    images: u64,
    dry_run: bool,
}

/// Delete a merchant's products, all or those a tag filter matches.
///
/// `{"filter": …, "force": true}`: one transaction deletes every matching product with its
/// images, and they leave search results at once. Without `"force": true` nothing happens (400
/// `confirmation_required`); `"dry_run": true` answers the count and deletes nothing. A
/// custom method on the collection (`products:purge`, as Google's APIs spell them), so it never
/// clashes with a product whose id is `purge`.
#[utoipa::path(
    post,
    path = "/v1/merchants/{merchant}/products:purge",
    tag = "products",
    operation_id = "purge_products",
    params(MerchantParams),
    request_body(content = PurgeRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Deleted (after the commit), or counted on a dry run.",
            body = PurgeBody),
        PurgeErrors,
    ),
)]
async fn purge_products(
    State(state): State<AppState>,
    merchant: Merchant,
    ApiJson(req): ApiJson<PurgeRequest>,
) -> Result<Json<PurgeBody>, ApiError> {
    let filter = crate::search::parse_filter(req.filter)?;
    if !req.force && !req.dry_run {
        return Err(ApiError::new(
            ErrorCode::ConfirmationRequired,
            "a purge deletes products for good: send \"force\": true (or \"dry_run\": true to count them)",
        ));
    }
    let purged = ingest::purge(&state, &merchant, filter, req.dry_run).await?;
    let matched = purged.product_ids.len();
    Ok(Json(PurgeBody {
        deleted: if req.dry_run { 0 } else { matched },
        matched,
        images: purged.images,
        dry_run: req.dry_run,
    }))
}

/// Change a product's title, tags or attributes.
///
/// A tag change re-embeds every image of the product (from the stored files). Honours
/// `If-Match`.
#[utoipa::path(
    patch,
    path = "/v1/merchants/{merchant}/products/{id}",
    tag = "products",
    params(ProductParams, IfMatchHeader),
    request_body(content = ProductPatchSchema, content_type = "application/json"),
    responses(
        (status = 200, description = "The changed product.", body = ProductBody,
            headers(("ETag" = String, description = "The product's new version."))),
        UpdateErrors,
    ),
)]
async fn update_product(
    State(state): State<AppState>,
    path: ProductPath,
    IfMatch(if_match): IfMatch,
    ApiJson(patch): ApiJson<ProductPatch>,
) -> Result<impl IntoResponse, ApiError> {
    let out = ingest::update_product(&state, &path.merchant, &path.id, patch, if_match).await?;
    Ok(written(StatusCode::OK, out))
}

/// Delete a product; it leaves search results at once. Honours `If-Match`.
#[utoipa::path(
    delete,
    path = "/v1/merchants/{merchant}/products/{id}",
    tag = "products",
    params(ProductParams, IfMatchHeader),
    responses(
        (status = 204, description = "Deleted."),
        DeleteErrors,
    ),
)]
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

/// The query of a product listing.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListParams {
    /// Products per page, 1-200 (default 50).
    #[param(minimum = 1, maximum = 200, example = 50)]
    limit: Option<usize>,
    /// The `next_cursor` of the previous page (opaque; 400 `invalid_request` when this API did
    /// not issue it).
    cursor: Option<String>,
}

/// A page of products.
#[derive(Debug, Serialize, ToSchema)]
struct ProductPage {
    products: Vec<ProductBody>,
    /// Pass as `cursor` to get the next page; absent on the last page. Opaque.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// List a merchant's products, in creation order, paged by cursor.
#[utoipa::path(
    get,
    path = "/v1/merchants/{merchant}/products",
    tag = "products",
    params(MerchantParams, ListParams),
    responses(
        (status = 200, description = "A page of products.", body = ProductPage),
        ListErrors,
    ),
)]
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

//! Import job routes: submit a catalogue file, follow its progress, cancel it.
//!
//! `POST /v1/merchants/{merchant}/imports` stores the file with a queued job and answers 202 at
//! once; the job runs in the background ([`crate::jobs`]). Handlers only translate HTTP; they
//! must never parse or write products themselves.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use snapshop_store::jobs::{JobRecord, JobStatus};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::extract::{content_type_of, raw_body, ApiPath, ApiQuery};
use super::openapi::errors;
use super::products::rfc3339;
use crate::core::AppState;
use crate::error::ErrorCode;
use crate::ids::Merchant;
use crate::import::input::Format;
use crate::jobs::{self, JobOptions, Submission};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(submit, list_imports))
        .routes(routes!(get_import))
        .routes(routes!(cancel_import))
}

/// One row that could not be imported.
#[derive(Debug, Serialize, ToSchema)]
pub struct RowErrorBody {
    /// The line of the file (for a product, its first row's line; 0 when no line applies).
    pub row: u64,
    /// The product the row belongs to, when known.
    pub product_id: Option<String>,
    /// An error code of the API's table (`invalid_field`, `image_undecodable`, …).
    pub code: String,
    pub message: String,
}

/// An import job.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ImportJob, example = json!({
    "id": "imp_q3k5v7x2m4n6p8r2t4w6", "merchant": "acme", "status": "running", "format": "csv",
    "replace": false, "rows": 1200, "products": 400, "products_done": 120, "created": 100,
    "updated": 15, "unchanged": 4, "failed": 1, "images": 310, "error_count": 1,
    "errors": [{"row": 37, "product_id": "sku-12", "code": "image_undecodable",
        "message": "the image cannot be decoded"}],
    "cancel_requested": false, "attempts": 1, "message": null,
    "created_at": "2026-12-01T10:00:00Z", "started_at": "2026-12-01T10:00:00.2Z",
    "finished_at": null, "updated_at": "2026-12-01T10:00:05Z"}))]
pub struct ImportBody {
    /// The job's id (`imp_…`).
    pub id: String,
    pub merchant: String,
    /// `queued` and `running` are unfinished; `done`, `failed` and `cancelled` are final.
    #[schema(value_type = String, pattern = "^(queued|running|done|failed|cancelled)$")]
    pub status: JobStatus,
    /// `csv`, `jsonl` or `gcp`.
    pub format: String,
    /// Differing products are deleted and created again instead of patched.
    pub replace: bool,
    /// Rows in the file, and the products they make.
    pub rows: i64,
    pub products: i64,
    /// Products handled so far, in file order.
    pub products_done: i64,
    pub created: i64,
    pub updated: i64,
    pub unchanged: i64,
    /// Products that could not be written at all.
    pub failed: i64,
    /// Images written.
    pub images: i64,
    /// Row errors, all of them counted; `errors` holds the first ones (`import.max_errors_kept`).
    pub error_count: i64,
    pub errors: Vec<RowErrorBody>,
    pub cancel_requested: bool,
    /// How many times a runner started it: more than 1 after a restart resumed it.
    pub attempts: i64,
    /// Why it failed, or `cancelled`.
    pub message: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub started_at: Option<String>,
    #[schema(format = DateTime)]
    pub finished_at: Option<String>,
    #[schema(format = DateTime)]
    pub updated_at: String,
}

impl From<JobRecord> for ImportBody {
    fn from(j: JobRecord) -> Self {
        let replace = serde_json::from_value::<JobOptions>(j.options)
            .map(|o| o.replace)
            .unwrap_or(false);
        ImportBody {
            id: j.public_id,
            merchant: j.merchant,
            status: j.status,
            format: j.format,
            replace,
            rows: j.rows,
            products: j.products,
            products_done: j.progress.products_done,
            created: j.progress.created,
            updated: j.progress.updated,
            unchanged: j.progress.unchanged,
            failed: j.progress.failed,
            images: j.progress.images,
            error_count: j.progress.error_count,
            errors: j
                .progress
                .errors
                .into_iter()
                .map(|e| RowErrorBody {
                    row: e.row,
                    product_id: e.product_id,
                    code: e.code,
                    message: e.message,
                })
                .collect(),
            cancel_requested: j.cancel_requested,
            attempts: j.attempts,
            message: j.message,
            created_at: rfc3339(j.created_at),
            started_at: j.started_at.map(rfc3339),
            finished_at: j.finished_at.map(rfc3339),
            updated_at: rfc3339(j.updated_at),
        }
    }
}

/// The jobs of a merchant, newest first.
#[derive(Debug, Serialize, ToSchema)]
struct ImportList {
    imports: Vec<ImportBody>,
}

/// The query of a submission.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct SubmitParams {
    /// `csv`, `jsonl` or `gcp`; by default the content type (`text/csv`, `application/x-ndjson`)
    /// or else the first line decides, as for `snapshop import`.
    #[param(pattern = "^(csv|jsonl|gcp)$")]
    format: Option<String>,
    /// Delete and create again a product that differs, instead of patching it and adding the
    /// images it lacks (default false).
    replace: Option<bool>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListParams {
    /// Jobs returned, newest first: 1-100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<usize>,
}

/// The `{merchant}` and `{job}` path parameters.
#[allow(dead_code)]
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
struct JobParams {
    /// The merchant.
    #[param(pattern = r"^[A-Za-z0-9._-]{1,64}$", example = "acme")]
    merchant: String,
    /// The job's id, as `POST …/imports` answered it.
    #[param(example = "imp_q3k5v7x2m4n6p8r2t4w6")]
    job: String,
}

/// The `{merchant}` path parameter.
#[allow(dead_code)]
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
struct MerchantParams {
    #[param(pattern = r"^[A-Za-z0-9._-]{1,64}$", example = "acme")]
    merchant: String,
}

/// The file, as a raw body: bytes (its rows are what the job checks, not the body's type).
struct ImportFile;

impl utoipa::PartialSchema for ImportFile {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        super::openapi::schema_of(serde_json::json!({
            "type": "string",
            "format": "binary",
            "description": "The catalogue file: CSV (ours, or Google Cloud Vision Product Search's \
                bulk-import CSV) or JSONL, as `snapshop import` reads them (docs/import.md)."
        }))
    }
}

impl ToSchema for ImportFile {}

/// The raw body with the format its content type names, if any.
struct ImportUpload {
    format: Option<Format>,
    bytes: Bytes,
}

impl<S: Send + Sync> FromRequest<S> for ImportUpload {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (content_type, mime) = content_type_of(&req);
        let format = match mime.as_str() {
            "text/csv" => None, // ours or Google's: the first line tells
            "application/x-ndjson" | "application/jsonl" | "application/json-lines" => {
                Some(Format::Jsonl)
            }
            "text/plain" | "application/octet-stream" | "" => None,
            _ => {
                return Err(ApiError::new(
                    ErrorCode::UnsupportedMediaType,
                    format!("expected text/csv or application/x-ndjson, got `{content_type}`"),
                ))
            }
        };
        let bytes = raw_body(req, state).await?;
        Ok(ImportUpload { format, bytes })
    }
}

errors!(SubmitErrors: InvalidRequest, InvalidField, PayloadTooLarge, UnsupportedMediaType);
errors!(ReadErrors: InvalidRequest, InvalidField, ImportNotFound);
errors!(ListErrors: InvalidRequest, InvalidField);

/// Start an import job.
///
/// The body is the catalogue file, in one of `snapshop import`'s formats (our CSV, JSONL, or
/// Google Cloud Vision Product Search's bulk-import CSV; see docs/import.md). Images are paths
/// (or `file://` URIs) under the server's `import.root`, or `sha256:<hex>` of an image the
/// merchant already has; the server fetches no URL. The file is parsed at once (a file that
/// cannot be read at all is 422; bad rows are recorded in the job), stored with the job, and
/// written in the background. 202 comes once the job is stored: it survives a restart.
#[utoipa::path(
    post,
    path = "/v1/merchants/{merchant}/imports",
    tag = "imports",
    params(MerchantParams, SubmitParams),
    request_body(content(
        (ImportFile = "text/csv"),
        (ImportFile = "application/x-ndjson"),
    )),
    responses(
        (status = 202, description = "The job is stored and queued.", body = ImportBody,
            headers(("Location" = String, description = "The job's URL."))),
        SubmitErrors,
    ),
)]
async fn submit(
    State(state): State<AppState>,
    merchant: Merchant,
    ApiQuery(q): ApiQuery<SubmitParams>,
    upload: ImportUpload,
) -> Result<Response, ApiError> {
    let format = match q.format.as_deref() {
        None => upload.format,
        Some(f) => Some(Format::parse(f).ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidRequest,
                format!("format `{f}`: expected csv, jsonl or gcp"),
            )
        })?),
    };
    let job = jobs::submit(
        &state,
        Submission {
            merchant: merchant.clone(),
            format,
            options: JobOptions {
                replace: q.replace.unwrap_or(false),
            },
            input: upload.bytes,
        },
    )
    .await?;
    let location = format!("/v1/merchants/{merchant}/imports/{}", job.public_id);
    let mut response = (StatusCode::ACCEPTED, Json(ImportBody::from(job))).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    Ok(response)
}

/// List a merchant's import jobs, newest first.
#[utoipa::path(
    get,
    path = "/v1/merchants/{merchant}/imports",
    tag = "imports",
    params(MerchantParams, ListParams),
    responses(
        (status = 200, description = "The jobs, newest first.", body = ImportList),
        ListErrors,
    ),
)]
async fn list_imports(
    State(state): State<AppState>,
    merchant: Merchant,
    ApiQuery(q): ApiQuery<ListParams>,
) -> Result<Json<ImportList>, ApiError> {
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "limit must be between 1 and 100",
        ));
    }
    let jobs = state
        .store()
        .jobs()
        .list_jobs(merchant.as_str(), limit)
        .await?;
    Ok(Json(ImportList {
        imports: jobs.into_iter().map(ImportBody::from).collect(),
    }))
}

/// An import job: its status, progress and row errors.
#[utoipa::path(
    get,
    path = "/v1/merchants/{merchant}/imports/{job}",
    tag = "imports",
    params(JobParams),
    responses(
        (status = 200, description = "The job.", body = ImportBody),
        ReadErrors,
    ),
)]
async fn get_import(
    State(state): State<AppState>,
    merchant: Merchant,
    ApiPath((_, job)): ApiPath<(String, String)>,
) -> Result<Json<ImportBody>, ApiError> {
    let job = state
        .store()
        .jobs()
        .get_job(merchant.as_str(), &job)
        .await?;
    Ok(Json(job.into()))
}

/// Cancel an import job.
///
/// A queued job is cancelled at once (200). A running one stops after the products it is
/// writing (202: poll the job until `cancelled`); what it wrote stays. A finished job is left as
/// it is (200).
#[utoipa::path(
    post,
    path = "/v1/merchants/{merchant}/imports/{job}/cancel",
    tag = "imports",
    params(JobParams),
    responses(
        (status = 200, description = "The job is finished (cancelled now, or before).", body = ImportBody),
        (status = 202, description = "The running job stops soon.", body = ImportBody),
        ReadErrors,
    ),
)]
async fn cancel_import(
    State(state): State<AppState>,
    merchant: Merchant,
    ApiPath((_, job)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    let job = state
        .store()
        .jobs()
        .cancel_job(merchant.as_str(), &job, crate::auth::now_ms())
        .await?;
    let status = if job.status.is_final() {
        StatusCode::OK
    } else {
        state.wake_imports();
        StatusCode::ACCEPTED
    };
    Ok((status, Json(ImportBody::from(job))).into_response())
}

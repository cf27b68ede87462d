//! Admin routes: the model in service, and hot-swapping it.
//!
//! `POST /v1/admin/model {"bundle": DIR}` loads and checks a bundle at once (422 when it cannot
//! serve), then swaps to it in the background; `GET /v1/admin/model` (and `/readyz`) report the
//! progress. Both need an admin key ([`AdminKey`]); nothing here may let another caller change
//! the model.

use std::path::PathBuf;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::AdminKey;
use super::error::ApiError;
use super::extract::ApiJson;
use super::openapi::{errors, SwapStatusSchema};
use crate::core::AppState;
use crate::swap::{self, SwapStatus};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_model, swap_model))
}

/// The model serving.
#[derive(Serialize, ToSchema)]
struct ModelBody {
    model_version: String,
    /// The bundle directory, as the server sees it.
    #[schema(value_type = String)]
    bundle: PathBuf,
    /// `cpu` or `cuda`.
    #[schema(value_type = String, example = "cpu")]
    device: &'static str,
    /// The running or last swap.
    #[schema(value_type = SwapStatusSchema)]
    swap: SwapStatus,
}

errors!(SwapErrors: InvalidRequest, MalformedJson, InvalidField,
    UnsupportedMediaType, PayloadTooLarge, BundleInvalid, SwapInProgress, SameModelVersion);

/// The model serving and the running or last swap.
#[utoipa::path(
    get,
    path = "/v1/admin/model",
    tag = "admin",
    responses(
        (status = 200, description = "The model serving.", body = ModelBody),
    ),
)]
async fn get_model(State(state): State<AppState>, _: AdminKey) -> Json<ModelBody> {
    let serving = state.serving();
    Json(ModelBody {
        model_version: serving.model.version().to_owned(),
        bundle: serving.model.dir().to_owned(),
        device: serving.model.device(),
        swap: state.swap_status(),
    })
}

/// A model swap to start.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"bundle": "/srv/snapshop/models/next"}))]
struct SwapRequest {
    /// The bundle directory, as the server sees it.
    #[schema(value_type = String)]
    bundle: PathBuf,
}

/// Hot-swap the model.
///
/// The bundle is loaded and checked at once; the swap then runs in the background (progress in
/// `GET /v1/admin/model` and `/readyz`) while the old model keeps serving.
#[utoipa::path(
    post,
    path = "/v1/admin/model",
    tag = "admin",
    request_body(content = SwapRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "The swap is running.", body = SwapStatusSchema),
        SwapErrors,
    ),
)]
async fn swap_model(
    State(state): State<AppState>,
    _: AdminKey,
    ApiJson(req): ApiJson<SwapRequest>,
) -> Result<(StatusCode, Json<SwapStatus>), ApiError> {
    let status = swap::start_swap(&state, &req.bundle).await?;
    Ok((StatusCode::ACCEPTED, Json(status)))
}

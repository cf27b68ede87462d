//! Admin routes: the model in service, and hot-swapping it.
//!
//! `POST /v1/admin/model {"bundle": DIR}` loads and checks a bundle at once (422 when it cannot
//! serve), then swaps to it in the background; `GET /v1/admin/model` (and `/readyz`) report the
//! progress. Admin calls need `Authorization: Bearer <admin.token>`; with no token configured the
//! admin API is off. It must never let an unauthenticated call change the model.

use std::path::PathBuf;

use axum::extract::State;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::extract::ApiJson;
use crate::core::AppState;
use crate::error::ErrorCode;
use crate::swap::{self, SwapStatus};

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/admin/model", get(get_model).post(swap_model))
}

/// Proof that the caller presented the admin token.
pub struct Admin;

impl axum::extract::FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(token) = state.config().admin.token.as_deref() else {
            return Err(ApiError::new(
                ErrorCode::AdminDisabled,
                "the admin API is off: set admin.token (SNAPSHOP_ADMIN__TOKEN) to enable it",
            ));
        };
        let given = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        // Compare digests, so the comparison takes the same time whatever the input.
        if Sha256::digest(given.as_bytes()) == Sha256::digest(token.as_bytes()) {
            Ok(Admin)
        } else {
            Err(ApiError::new(
                ErrorCode::Unauthorized,
                "an admin token is required: Authorization: Bearer <token>",
            ))
        }
    }
}

#[derive(Serialize)]
struct ModelBody {
    model_version: String,
    bundle: PathBuf,
    device: &'static str,
    swap: SwapStatus,
}

async fn get_model(State(state): State<AppState>, _: Admin) -> Json<ModelBody> {
    let serving = state.serving();
    Json(ModelBody {
        model_version: serving.model.version().to_owned(),
        bundle: serving.model.dir().to_owned(),
        device: serving.model.device(),
        swap: state.swap_status(),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SwapRequest {
    /// The bundle directory, as the server sees it.
    bundle: PathBuf,
}

async fn swap_model(
    State(state): State<AppState>,
    _: Admin,
    ApiJson(req): ApiJson<SwapRequest>,
) -> Result<(StatusCode, Json<SwapStatus>), ApiError> {
    let status = swap::start_swap(&state, &req.bundle).await?;
    Ok((StatusCode::ACCEPTED, Json(status)))
}

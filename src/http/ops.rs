//! Operations routes: liveness, readiness, Prometheus metrics, and the model's tag vocabulary.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::json;

use super::error::ApiError;
use crate::core::AppState;
use crate::error::ErrorCode;
use crate::swap::SwapStatus;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_handler))
        .route("/v1/tags", get(tags))
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

#[derive(Serialize)]
struct Ready {
    status: &'static str,
    model_version: String,
    device: &'static str,
    store: &'static str,
    ann: &'static str,
    index: snapshop_index::IndexStats,
    products: usize,
    /// Moves with every change the search view applies.
    view_version: u64,
    /// True while the view lags the store after a failed apply (it is being reconciled).
    view_dirty: bool,
    queue_depth: usize,
    /// The running or last model swap.
    model_swap: SwapStatus,
}

async fn readyz(State(state): State<AppState>) -> Result<Json<Ready>, ApiError> {
    if !state.is_ready() {
        return Err(ApiError::new(
            ErrorCode::NotReady,
            "the service is not ready",
        ));
    }
    state
        .store()
        .ping()
        .await
        .map_err(|_| ApiError::new(ErrorCode::NotReady, "the store does not answer"))?;
    let serving = state.serving();
    Ok(Json(Ready {
        status: "ready",
        model_version: serving.model.version().to_owned(),
        device: serving.model.device(),
        store: state.store().backend(),
        ann: serving.view.ann().name(),
        index: serving.view.stats(),
        products: serving.view.product_count(),
        view_version: serving.view.version(),
        view_dirty: serving.view.is_dirty(),
        queue_depth: serving.model.queue_depth(),
        model_swap: state.swap_status(),
    }))
}

async fn metrics_handler(State(state): State<AppState>) -> impl IntoResponse {
    crate::metrics::refresh(&state);
    let handle = crate::metrics::install();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
}

async fn tags(State(state): State<AppState>) -> Json<serde_json::Value> {
    let serving = state.serving();
    let vocabulary = serving.model.vocabulary();
    Json(json!({
        "model_version": serving.model.version(),
        "count": vocabulary.len(),
        "tags": vocabulary,
    }))
}

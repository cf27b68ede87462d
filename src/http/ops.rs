//! Operations routes: liveness, readiness, Prometheus metrics, and the model's tag vocabulary.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::json;

use super::error::ApiError;
use crate::state::AppState;

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
    index: snapshop_index::IndexStats,
    products: usize,
    queue_depth: usize,
}

async fn readyz(State(state): State<AppState>) -> Result<Json<Ready>, ApiError> {
    if !state.is_ready() {
        return Err(ApiError::NotReady);
    }
    state.store.ping().await.map_err(|_| ApiError::NotReady)?;
    Ok(Json(Ready {
        status: "ready",
        model_version: state.model_version().to_owned(),
        device: state.device,
        index: state.index.stats(),
        products: state.catalog.product_count(),
        queue_depth: state.queue.queue_depth(),
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
    let vocabulary = state.bundle.vocabulary();
    Json(json!({
        "model_version": state.model_version(),
        "count": vocabulary.len(),
        "tags": vocabulary,
    }))
}

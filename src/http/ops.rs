//! Operations routes: liveness, readiness, Prometheus metrics, and the model's tag vocabulary.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::openapi::{errors, IndexStatsSchema, SwapStatusSchema};
use crate::core::AppState;
use crate::error::ErrorCode;
use crate::swap::SwapStatus;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics_handler))
        .routes(routes!(tags))
}

/// The liveness answer.
#[derive(Serialize, ToSchema)]
struct Health {
    /// Always `ok`.
    #[schema(value_type = String, example = "ok")]
    status: &'static str,
}

/// Liveness: 200 while the process serves.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "The process serves.", body = Health)),
)]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// The readiness answer.
#[derive(Serialize, ToSchema)]
struct Ready {
    /// Always `ready`.
    #[schema(value_type = String, example = "ready")]
    status: &'static str,
    model_version: String,
    /// `cpu` or `cuda`.
    #[schema(value_type = String, example = "cpu")]
    device: &'static str,
    /// The store's backend: `sqlite` or `postgres`.
    #[schema(value_type = String, example = "sqlite")]
    store: &'static str,
    /// The ANN index: `hnsw`.
    #[schema(value_type = String, example = "hnsw")]
    ann: &'static str,
    #[schema(value_type = IndexStatsSchema)]
    index: ReadyIndex,
    products: usize,
    /// Moves with every change the search view applies.
    view_version: u64,
    /// True while the view lags the store after a failed apply (it is being reconciled).
    view_dirty: bool,
    queue_depth: usize,
    /// The running or last model swap.
    #[schema(value_type = SwapStatusSchema)]
    model_swap: SwapStatus,
    /// Whether the store answered just now. A replica that follows the change feed stays ready
    /// without it: searches are answered from memory, writes get 503 `store_unavailable`.
    store_reachable: bool,
    /// The change feed's follower (replicas on Postgres); `null` when this process does not
    /// follow one.
    feed: Option<crate::feed::FeedStatus>,
}

/// The index counters with the view's freshness (a search's `index_version`).
#[derive(Serialize)]
struct ReadyIndex {
    version: i64,
    updated_at: Option<String>,
    #[serde(flatten)]
    stats: snapshop_index::IndexStats,
}

errors!(ReadyErrors: NotReady);

/// Readiness: models, store and index loaded.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready to serve.", body = Ready),
        ReadyErrors,
    ),
)]
async fn readyz(State(state): State<AppState>) -> Result<Json<Ready>, ApiError> {
    if !state.is_ready() {
        return Err(ApiError::new(
            ErrorCode::NotReady,
            "the service is not ready",
        ));
    }
    let store_reachable = state.store().ping().await.is_ok();
    let feed = state.feed().map(|f| f.status());
    match &feed {
        None if !store_reachable => {
            return Err(ApiError::new(
                ErrorCode::NotReady,
                "the store does not answer",
            ))
        }
        Some(f) if f.lag_ms > state.config().feed.max_lag_secs as i64 * 1000 => {
            return Err(ApiError::new(
                ErrorCode::NotReady,
                format!(
                    "the search view is {} ms behind the catalogue's change feed",
                    f.lag_ms
                ),
            ))
        }
        _ => {}
    }
    let serving = state.serving();
    Ok(Json(Ready {
        status: "ready",
        model_version: serving.model.version().to_owned(),
        device: serving.model.device(),
        store: state.store().backend(),
        ann: serving.view.ann().name(),
        index: {
            let at = serving.view.position();
            ReadyIndex {
                version: at.seq,
                updated_at: (at.seq > 0).then(|| super::products::rfc3339(at.at)),
                stats: serving.view.stats(),
            }
        },
        products: serving.view.product_count(),
        view_version: serving.view.version(),
        view_dirty: serving.view.is_dirty(),
        queue_depth: serving.model.queue_depth(),
        model_swap: state.swap_status(),
        store_reachable,
        feed,
    }))
}

/// Prometheus metrics (all names start with `snapshop_`).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    operation_id = "metrics",
    responses((status = 200, description = "The Prometheus text format.",
        content_type = "text/plain; version=0.0.4", body = String)),
)]
async fn metrics_handler(State(state): State<AppState>) -> impl IntoResponse {
    crate::metrics::refresh(&state);
    let handle = crate::metrics::install();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
}

/// The shop model's tag vocabulary.
#[derive(Serialize, ToSchema)]
struct Vocabulary {
    model_version: String,
    /// The number of tags.
    count: usize,
    /// The tags the model knows (`key:value`); others are accepted, see `unknown_to_model`.
    #[schema(example = json!(["category:coat", "color:red"]))]
    tags: Vec<String>,
}

/// The tags the shop model knows (the bundle manifest's vocabulary).
#[utoipa::path(
    get,
    path = "/v1/tags",
    tag = "vocabulary",
    operation_id = "list_tags",
    responses((status = 200, description = "The vocabulary.", body = Vocabulary)),
)]
async fn tags(State(state): State<AppState>) -> Json<Vocabulary> {
    let serving = state.serving();
    let vocabulary = serving.model.vocabulary();
    Json(Vocabulary {
        model_version: serving.model.version().to_owned(),
        count: vocabulary.len(),
        tags: vocabulary.to_vec(),
    })
}

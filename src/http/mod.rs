//! The HTTP surface: routes per area, the error type, extractors and the middleware stack.
//!
//! Handlers translate between HTTP and the pipelines; they must never do CPU-heavy work or talk
//! to the models or the index themselves.

pub mod admin;
pub mod auth;
pub mod error;
pub mod extract;
pub mod imports;
pub mod keys;
pub mod merchants;
pub mod openapi;
pub mod ops;
pub mod products;
pub mod search;
pub mod web;
pub mod whoami;

use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderName, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};

pub use error::ApiError;

use crate::core::AppState;
use crate::error::ErrorCode;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The whole application router.
pub fn router(state: AppState) -> Router {
    let body_limit = state.config().limits.max_body_bytes;
    Router::new()
        .merge(openapi::router())
        // On matched routes only, so that an unknown method is 405 before any key check.
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::authenticate))
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Inside `track`, so that preflights, 401s and 429s are counted and timed like any
        // response.
        .layer(middleware::from_fn_with_state(state.clone(), auth::cors_preflight))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(
            ServiceBuilder::new()
                // Keys never reach a log line, even at trace level.
                .layer(SetSensitiveRequestHeadersLayer::new([header::AUTHORIZATION]))
                .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
                .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
                    let route = req
                        .extensions()
                        .get::<MatchedPath>()
                        .map(|p| p.as_str())
                        .unwrap_or("unmatched");
                    let id = req
                        .headers()
                        .get(REQUEST_ID)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    tracing::info_span!("request", method = %req.method(), route, request_id = id)
                }).on_response(DefaultOnResponse::new().level(tracing::Level::INFO)))
                .layer(PropagateRequestIdLayer::new(REQUEST_ID))
                .layer(CatchPanicLayer::custom(|_| {
                    ApiError::internal(anyhow::anyhow!("a handler panicked")).into_response()
                })),
        )
        .with_state(state)
}

/// Request metrics by matched route, and the whole-request timeout.
async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().as_str().to_owned();
    let start = Instant::now();
    let timeout = Duration::from_secs(state.config().limits.request_timeout_secs);
    let response = match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::new(ErrorCode::Timeout, "the request took too long").into_response(),
    };
    let status = response.status().as_u16().to_string();
    metrics::counter!("snapshop_http_requests_total", "route" => route.clone(), "method" => method.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("snapshop_http_request_duration_seconds", "route" => route, "method" => method)
        .record(start.elapsed().as_secs_f64());
    response
}

async fn route_not_found(uri: Uri) -> ApiError {
    ApiError::new(
        ErrorCode::RouteNotFound,
        format!("no route for {}", uri.path()),
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(ErrorCode::MethodNotAllowed, "method not allowed")
}

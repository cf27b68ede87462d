//! The one HTTP error type: every failure a client can see, with a stable `code`.
//!
//! The mapping from variant to status is one exhaustive `match`; 5xx responses never carry
//! internal details (they are logged with their whole cause chain instead), and 503 carries
//! `Retry-After`. The codes are part of the API (documented in `docs/api.md`): never rename one.

use axum::extract::multipart::{MultipartError, MultipartRejection};
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::ingest::IngestError;
use crate::search::SearchError;
use crate::store::StoreError;

/// Seconds a client should wait before retrying an overloaded server.
const RETRY_AFTER_SECS: u64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the image could not be decoded: {0}")]
    ImageUndecodable(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    ImageTooLarge(String),
    #[error("product `{id}` of merchant `{merchant}` not found")]
    ProductNotFound { merchant: String, id: String },
    #[error("product `{id}` of merchant `{merchant}` already exists")]
    ProductExists { merchant: String, id: String },
    #[error("invalid filter: {0}")]
    InvalidFilter(String),
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// The request is syntactically wrong (missing part, bad parameter, bad multipart).
    #[error("{0}")]
    InvalidRequest(String),
    /// The request is well formed but a field's value is not acceptable.
    #[error("{0}")]
    InvalidField(String),
    #[error("no route for {0}")]
    RouteNotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("the server is overloaded; retry later")]
    Overloaded,
    #[error("the request took too long")]
    Timeout,
    #[error("the service is not ready")]
    NotReady,
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    code: &'a str,
    message: String,
}

impl ApiError {
    pub fn internal(e: impl Into<anyhow::Error>) -> Self {
        ApiError::Internal(e.into())
    }

    /// The HTTP status and the stable machine-readable code.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        use ApiError::*;
        match self {
            ImageUndecodable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "image_undecodable"),
            UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ImageTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "image_too_large"),
            ProductNotFound { .. } => (StatusCode::NOT_FOUND, "product_not_found"),
            ProductExists { .. } => (StatusCode::CONFLICT, "product_exists"),
            InvalidFilter(_) => (StatusCode::BAD_REQUEST, "invalid_filter"),
            MalformedJson(_) => (StatusCode::BAD_REQUEST, "malformed_json"),
            InvalidRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            InvalidField(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field"),
            RouteNotFound(_) => (StatusCode::NOT_FOUND, "route_not_found"),
            MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            Timeout => (StatusCode::SERVICE_UNAVAILABLE, "timeout"),
            NotReady => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
            Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        metrics::counter!("snapshop_errors_total", "code" => code).increment(1);
        let message = if status.is_server_error() {
            if let ApiError::Internal(e) = &self {
                tracing::error!(error = format!("{e:#}"), "internal error");
            } else {
                tracing::warn!(code, "{self}");
            }
            // Only our own fixed texts reach the client for 5xx.
            match &self {
                ApiError::Internal(_) => "internal error".to_owned(),
                other => other.to_string(),
            }
        } else {
            tracing::debug!(code, "{self}");
            self.to_string()
        };
        let mut response = (
            status,
            axum::Json(Body {
                error: Detail { code, message },
            }),
        )
            .into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::JsonSyntaxError(e) => ApiError::MalformedJson(e.body_text()),
            JsonRejection::JsonDataError(e) => ApiError::InvalidField(e.body_text()),
            JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType(
                "expected a body with `content-type: application/json`".into(),
            ),
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::PayloadTooLarge(other.body_text())
            }
            other => ApiError::InvalidRequest(other.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::InvalidRequest(r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::InvalidRequest(r.body_text())
    }
}

impl From<MultipartRejection> for ApiError {
    fn from(r: MultipartRejection) -> Self {
        ApiError::UnsupportedMediaType(format!(
            "expected a multipart/form-data body ({})",
            r.body_text()
        ))
    }
}

impl From<MultipartError> for ApiError {
    fn from(e: MultipartError) -> Self {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(e.body_text())
        } else {
            ApiError::InvalidRequest(format!("malformed multipart body: {}", e.body_text()))
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::ProductExists { merchant, id } => ApiError::ProductExists { merchant, id },
            StoreError::ProductNotFound { merchant, id } => {
                ApiError::ProductNotFound { merchant, id }
            }
            other => ApiError::internal(other),
        }
    }
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::Image(e) => e.into(),
            IngestError::Invalid(m) => ApiError::InvalidField(m),
            IngestError::Store(e) => e.into(),
            IngestError::Inference(e) => inference_error(e),
            other => ApiError::internal(other),
        }
    }
}

impl From<SearchError> for ApiError {
    fn from(e: SearchError) -> Self {
        match e {
            SearchError::Image(e) => e.into(),
            SearchError::Filter(m) => ApiError::InvalidFilter(m),
            SearchError::Invalid(m) => ApiError::InvalidRequest(m),
            SearchError::Inference(e) => inference_error(e),
            other => ApiError::internal(other),
        }
    }
}

impl From<crate::images::ImageError> for ApiError {
    fn from(e: crate::images::ImageError) -> Self {
        use crate::images::ImageError as E;
        match e {
            E::TooLarge(m) => ApiError::PayloadTooLarge(m),
            E::TooManyPixels(m) => ApiError::ImageTooLarge(m),
            E::UnsupportedFormat(m) => ApiError::UnsupportedMediaType(m),
            E::Undecodable(m) => ApiError::ImageUndecodable(m),
            E::Internal(m) => ApiError::internal(anyhow::anyhow!(m)),
        }
    }
}

fn inference_error(e: snapshop_inference::InferenceError) -> ApiError {
    match e {
        snapshop_inference::InferenceError::Overloaded => ApiError::Overloaded,
        other => ApiError::internal(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(e: ApiError) -> (StatusCode, Option<HeaderValue>, serde_json::Value) {
        let r = e.into_response();
        let status = r.status();
        let retry = r.headers().get(header::RETRY_AFTER).cloned();
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        (status, retry, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn codes_and_statuses_are_stable() {
        let cases = [
            (
                ApiError::ImageUndecodable("x".into()),
                422,
                "image_undecodable",
            ),
            (
                ApiError::UnsupportedMediaType("x".into()),
                415,
                "unsupported_media_type",
            ),
            (
                ApiError::PayloadTooLarge("x".into()),
                413,
                "payload_too_large",
            ),
            (ApiError::ImageTooLarge("x".into()), 413, "image_too_large"),
            (
                ApiError::ProductNotFound {
                    merchant: "m".into(),
                    id: "p".into(),
                },
                404,
                "product_not_found",
            ),
            (
                ApiError::ProductExists {
                    merchant: "m".into(),
                    id: "p".into(),
                },
                409,
                "product_exists",
            ),
            (ApiError::InvalidFilter("x".into()), 400, "invalid_filter"),
            (ApiError::MalformedJson("x".into()), 400, "malformed_json"),
            (ApiError::InvalidRequest("x".into()), 400, "invalid_request"),
            (ApiError::InvalidField("x".into()), 422, "invalid_field"),
            (ApiError::RouteNotFound("x".into()), 404, "route_not_found"),
            (ApiError::MethodNotAllowed, 405, "method_not_allowed"),
            (ApiError::Overloaded, 503, "overloaded"),
            (ApiError::Timeout, 503, "timeout"),
            (ApiError::NotReady, 503, "not_ready"),
        ];
        for (err, status, code) in cases {
            let (s, retry, body) = body_of(err).await;
            assert_eq!(s.as_u16(), status, "{code}");
            assert_eq!(body["error"]["code"], code);
            assert!(body["error"]["message"].is_string());
            assert_eq!(retry.is_some(), status == 503, "{code}");
        }
    }

    #[tokio::test]
    async fn internal_errors_hide_their_cause() {
        let e = ApiError::internal(anyhow::anyhow!("secret path /etc/shadow"));
        let (s, _, body) = body_of(e).await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["error"]["code"], "internal");
        assert!(!body.to_string().contains("shadow"));
    }

    #[test]
    fn store_conflicts_map_to_409() {
        let e: ApiError = StoreError::ProductExists {
            merchant: "m".into(),
            id: "p".into(),
        }
        .into();
        assert_eq!(e.status_and_code().1, "product_exists");
    }
}

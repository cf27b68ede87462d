//! The one HTTP error type: an [`ErrorCode`] from the table in `crate::error`, a message, and
//! for 5xx the hidden cause.
//!
//! Every domain error converts into it through [`Coded`], so there is no mapping to keep in step
//! here. 5xx responses never carry internal details (they are logged with their whole cause chain
//! instead), and 503/429 carry `Retry-After`. axum's own rejections (JSON, query, path,
//! multipart) are coded here too, so malformed input gets the same JSON body.

use axum::extract::multipart::{MultipartError, MultipartRejection};
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::error::{Coded, ErrorCode};

/// Seconds a client should wait before retrying an overloaded server.
const RETRY_AFTER_SECS: u64 = 1;

/// See the module documentation.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    message: String,
    /// The cause of a 5xx, for the log only.
    source: Option<anyhow::Error>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    code: &'a str,
    message: &'a str,
}

impl ApiError {
    /// An error with a message for the client.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            source: None,
        }
    }

    /// A 500 whose cause is logged, never shown.
    pub fn internal(e: impl Into<anyhow::Error>) -> Self {
        Self {
            code: ErrorCode::Internal,
            message: "internal error".into(),
            source: Some(e.into()),
        }
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// Every coded domain error becomes an `ApiError` with its own code.
impl<E: Coded> From<E> for ApiError {
    fn from(e: E) -> Self {
        let code = e.code();
        if code.is_server_error() {
            let message = match code {
                // Our own fixed texts only: they say what to do, not what broke.
                ErrorCode::Internal => "internal error".to_owned(),
                ErrorCode::StoreUnavailable => {
                    "the catalogue database is unavailable; retry later".to_owned()
                }
                _ => e.to_string(),
            };
            Self {
                code,
                message,
                source: Some(anyhow::Error::new(e)),
            }
        } else {
            Self::new(code, e.to_string())
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.code;
        let status =
            StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        metrics::counter!("snapshop_errors_total", "code" => code.as_str()).increment(1);
        if code.is_server_error() {
            match &self.source {
                Some(e) if code == ErrorCode::Internal => {
                    tracing::error!(error = format!("{e:#}"), "internal error")
                }
                Some(e) => tracing::warn!(
                    code = code.as_str(),
                    error = format!("{e:#}"),
                    "{}",
                    self.message
                ),
                None => tracing::warn!(code = code.as_str(), "{}", self.message),
            }
        } else {
            tracing::debug!(code = code.as_str(), "{}", self.message);
        }
        let mut response = (
            status,
            axum::Json(Body {
                error: Detail {
                    code: code.as_str(),
                    message: &self.message,
                },
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

// axum's rejections, coded (foreign types: implemented here, next to the extractors).

impl Coded for JsonRejection {
    fn code(&self) -> ErrorCode {
        match self {
            JsonRejection::JsonSyntaxError(_) => ErrorCode::MalformedJson,
            JsonRejection::JsonDataError(_) => ErrorCode::InvalidField,
            JsonRejection::MissingJsonContentType(_) => ErrorCode::UnsupportedMediaType,
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
            _ => ErrorCode::InvalidRequest,
        }
    }
}

impl Coded for QueryRejection {
    fn code(&self) -> ErrorCode {
        ErrorCode::InvalidRequest
    }
}

impl Coded for PathRejection {
    fn code(&self) -> ErrorCode {
        ErrorCode::InvalidRequest
    }
}

impl Coded for MultipartRejection {
    fn code(&self) -> ErrorCode {
        ErrorCode::UnsupportedMediaType
    }
}

impl Coded for MultipartError {
    fn code(&self) -> ErrorCode {
        if self.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ErrorCode::PayloadTooLarge
        } else {
            ErrorCode::InvalidRequest
        }
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
    async fn every_code_answers_its_status_and_body() {
        for &code in ErrorCode::ALL {
            let (s, retry, body) = body_of(ApiError::new(code, "x")).await;
            assert_eq!(s.as_u16(), code.status(), "{code}");
            assert_eq!(body["error"]["code"], code.as_str());
            assert!(body["error"]["message"].is_string());
            assert_eq!(
                retry.is_some(),
                matches!(code.status(), 503 | 429),
                "{code}"
            );
        }
    }

    #[tokio::test]
    async fn internal_errors_hide_their_cause() {
        let e = ApiError::internal(anyhow::anyhow!("secret path /etc/shadow"));
        let (s, _, body) = body_of(e).await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["error"]["code"], "internal");
        assert!(!body.to_string().contains("shadow"));
        let db: ApiError = snapshop_store::StoreError::Corrupt("row 7 of /var/db".into()).into();
        let (s, _, body) = body_of(db).await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!body.to_string().contains("/var/db"));
    }

    #[test]
    fn store_conflicts_map_to_their_codes() {
        let e: ApiError = snapshop_store::StoreError::ProductExists {
            merchant: "m".into(),
            id: "p".into(),
        }
        .into();
        assert_eq!(e.code, ErrorCode::ProductExists);
        let e: ApiError = snapshop_store::StoreError::VersionConflict {
            merchant: "m".into(),
            id: "p".into(),
            expected: 1,
            actual: 2,
        }
        .into();
        assert_eq!(e.code.status(), 412);
    }
}

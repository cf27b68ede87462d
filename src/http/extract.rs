//! Extractors that turn every malformed input into an [`ApiError`] with the JSON error body,
//! instead of axum's plain-text rejections.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Multipart, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// `axum::Json` with our rejections.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let axum::Json(v) = axum::Json::<T>::from_request(req, state).await?;
        Ok(ApiJson(v))
    }
}

/// `axum::extract::Query` with our rejections.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Query(v) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(ApiQuery(v))
    }
}

/// `axum::extract::Path` with our rejections.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(v) =
            axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(ApiPath(v))
    }
}

/// An upload: either `multipart/form-data` (parts named `image`, plus named JSON parts), or a
/// raw `image/*` (or `application/octet-stream`) body holding one image.
#[derive(Debug, Default)]
pub struct Upload {
    pub images: Vec<Bytes>,
    pub json_parts: Vec<(String, Bytes)>,
}

/// Names of the JSON parts an upload may carry.
const JSON_PARTS: &[&str] = &["product", "options"];

impl Upload {
    /// Takes the named JSON part, parsed. Missing → `None`.
    pub fn json_part<T: DeserializeOwned>(&mut self, name: &str) -> Result<Option<T>, ApiError> {
        let Some(pos) = self.json_parts.iter().position(|(n, _)| n == name) else {
            return Ok(None);
        };
        let (_, bytes) = self.json_parts.remove(pos);
        parse_json(&bytes, name).map(Some)
    }

    /// Rejects JSON parts other than `allowed`.
    pub fn only_parts(&self, allowed: &[&str]) -> Result<(), ApiError> {
        match self
            .json_parts
            .iter()
            .find(|(n, _)| !allowed.contains(&n.as_str()))
        {
            Some((n, _)) => Err(ApiError::InvalidRequest(format!(
                "unexpected multipart part `{n}`"
            ))),
            None => Ok(()),
        }
    }
}

/// Parses JSON with the error split of the API: syntax → `malformed_json`, shape →
/// `invalid_field`.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::InvalidField(format!("part `{what}`: {e}")),
        _ => ApiError::MalformedJson(format!("part `{what}`: {e}")),
    })
}

impl<S> FromRequest<S> for Upload
where
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let content_type = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let mime = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let mut upload = Upload::default();
        if mime == "multipart/form-data" {
            let mut multipart = Multipart::from_request(req, state).await?;
            while let Some(field) = multipart.next_field().await? {
                let name = field.name().unwrap_or("").to_owned();
                if name == "image" {
                    let bytes = field.bytes().await?;
                    if bytes.is_empty() {
                        return Err(ApiError::InvalidRequest("an `image` part is empty".into()));
                    }
                    upload.images.push(bytes);
                } else if JSON_PARTS.contains(&name.as_str()) {
                    if upload.json_parts.iter().any(|(n, _)| *n == name) {
                        return Err(ApiError::InvalidRequest(format!(
                            "part `{name}` given twice"
                        )));
                    }
                    let bytes = field.bytes().await?;
                    upload.json_parts.push((name, bytes));
                } else {
                    return Err(ApiError::InvalidRequest(format!(
                        "unexpected multipart part `{name}` (expected `image` or a JSON part)"
                    )));
                }
            }
        } else if mime.starts_with("image/") || mime == "application/octet-stream" {
            let bytes = Bytes::from_request(req, state).await.map_err(|r| {
                if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge(r.body_text())
                } else {
                    ApiError::InvalidRequest(r.body_text())
                }
            })?;
            if bytes.is_empty() {
                return Err(ApiError::InvalidRequest("the request body is empty".into()));
            }
            upload.images.push(bytes);
        } else {
            return Err(ApiError::UnsupportedMediaType(format!(
                "expected multipart/form-data or an image/* body, got `{}`",
                if content_type.is_empty() {
                    "no content type"
                } else {
                    &content_type
                }
            )));
        }
        Ok(upload)
    }
}

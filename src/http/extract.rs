//! Extractors: every malformed input becomes an [`ApiError`] with the JSON error body, instead of
//! axum's plain-text rejections; the merchant, the product path and `If-Match` are parsed here
//! once, so handlers never re-check them.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Multipart, RawPathParams, Request};
use axum::http::header::{CONTENT_TYPE, IF_MATCH};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::auth::{forbidden, Caller};
use super::error::ApiError;
use crate::auth::Principal;
use crate::error::ErrorCode;
use crate::ids::{ETag, Merchant};

/// `axum::Json` with our rejections, for bodies that must be JSON objects: serde would also
/// read a struct from an array of its fields (`[null, null]`), which no client means.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let axum::Json(value) = axum::Json::<serde_json::Value>::from_request(req, state).await?;
        if !value.is_object() {
            return Err(ApiError::new(
                ErrorCode::InvalidField,
                "the body must be a JSON object",
            ));
        }
        serde_json::from_value(value)
            .map(ApiJson)
            .map_err(|e| ApiError::new(ErrorCode::InvalidField, e.to_string()))
    }
}

/// `axum::extract::Query` with our rejections.
#[derive(Debug, Clone, Copy, Default, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// `axum::extract::Path` with our rejections.
#[derive(Debug, Clone, Copy, Default, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// The `{merchant}` of the path, parsed once, and checked against the caller's key: a handler
/// that holds a `Merchant` may read and write its catalogue (an admin key, or that merchant's
/// own merchant key; anything else is 403 `forbidden`, whether the merchant exists or not).
impl<S: Send + Sync> FromRequestParts<S> for Merchant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        authorised_merchant(parts, state, Principal::may_manage, "act for").await
    }
}

/// The `{merchant}` of the path, for routes that show what search results show (image files):
/// allowed to those who may manage the merchant and to keys whose search scope holds it.
#[derive(Debug, Clone)]
pub struct ViewedMerchant(pub Merchant);

impl<S: Send + Sync> FromRequestParts<S> for ViewedMerchant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        authorised_merchant(parts, state, Principal::may_view, "see")
            .await
            .map(ViewedMerchant)
    }
}

/// The path's merchant if the caller's key passes `rule` for it, else 403 `forbidden`.
async fn authorised_merchant<S: Send + Sync>(
    parts: &mut Parts,
    state: &S,
    rule: fn(&Principal, &str) -> bool,
    verb: &str,
) -> Result<Merchant, ApiError> {
    let Caller(principal) = Caller::from_request_parts(parts, state).await?;
    let merchant = merchant_of_path(parts, state).await?;
    if rule(&principal, merchant.as_str()) {
        Ok(merchant)
    } else {
        Err(forbidden(format!(
            "this key may not {verb} merchant `{}`",
            merchant.as_str()
        )))
    }
}

/// The `{merchant}` path parameter, parsed, without any authorisation.
async fn merchant_of_path<S: Send + Sync>(
    parts: &mut Parts,
    state: &S,
) -> Result<Merchant, ApiError> {
    {
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.body_text()))?;
        let raw = params
            .iter()
            .find(|(k, _)| *k == "merchant")
            .map(|(_, v)| v.to_owned())
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("route without {{merchant}}")))?;
        Ok(Merchant::parse(&raw)?)
    }
}

/// `{merchant}/products/{id}`: the merchant parsed, the product id as given.
#[derive(Debug, Clone)]
pub struct ProductPath {
    pub merchant: Merchant,
    pub id: String,
}

impl<S: Send + Sync> FromRequestParts<S> for ProductPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let merchant = Merchant::from_request_parts(parts, state).await?;
        let ApiPath((_, id)) =
            ApiPath::<(String, String)>::from_request_parts(parts, state).await?;
        Ok(ProductPath { merchant, id })
    }
}

/// The `If-Match` header: absent, or one strong entity tag this API issued.
#[derive(Debug, Clone, Copy, Default)]
pub struct IfMatch(pub Option<ETag>);

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let Some(v) = parts.headers.get(IF_MATCH) else {
            return Ok(IfMatch(None));
        };
        let text = v
            .to_str()
            .map_err(|_| ApiError::new(ErrorCode::InvalidRequest, "If-Match is not ASCII"))?;
        if text.trim() == "*" {
            // Any current version: the same as no precondition on an existing product.
            return Ok(IfMatch(None));
        }
        Ok(IfMatch(Some(ETag::parse(text)?)))
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
            Some((n, _)) => Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("unexpected multipart part `{n}`"),
            )),
            None => Ok(()),
        }
    }
}

/// Parses JSON with the error split of the API: syntax → `malformed_json`, shape →
/// `invalid_field`.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => {
            ApiError::new(ErrorCode::InvalidField, format!("part `{what}`: {e}"))
        }
        _ => ApiError::new(ErrorCode::MalformedJson, format!("part `{what}`: {e}")),
    })
}

/// A request's `Content-Type` as sent, and its media type alone, lowercase (`""` when none).
pub fn content_type_of(req: &Request) -> (String, String) {
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
    (content_type, mime)
}

/// The whole body, within the body limit (413 `payload_too_large` beyond it).
pub async fn raw_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(ErrorCode::PayloadTooLarge, r.body_text())
        } else {
            ApiError::new(ErrorCode::InvalidRequest, r.body_text())
        }
    })
}

impl<S> FromRequest<S> for Upload
where
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (content_type, mime) = content_type_of(&req);
        let mut upload = Upload::default();
        if mime == "multipart/form-data" {
            let mut multipart = Multipart::from_request(req, state).await?;
            while let Some(field) = multipart.next_field().await? {
                let name = field.name().unwrap_or("").to_owned();
                if name == "image" {
                    let bytes = field.bytes().await?;
                    if bytes.is_empty() {
                        return Err(ApiError::new(
                            ErrorCode::InvalidRequest,
                            "an `image` part is empty",
                        ));
                    }
                    upload.images.push(bytes);
                } else if JSON_PARTS.contains(&name.as_str()) {
                    if upload.json_parts.iter().any(|(n, _)| *n == name) {
                        return Err(ApiError::new(
                            ErrorCode::InvalidRequest,
                            format!("part `{name}` given twice"),
                        ));
                    }
                    let bytes = field.bytes().await?;
                    upload.json_parts.push((name, bytes));
                } else {
                    return Err(ApiError::new(
                        ErrorCode::InvalidRequest,
                        format!(
                            "unexpected multipart part `{name}` (expected `image` or a JSON part)"
                        ),
                    ));
                }
            }
        } else if mime.starts_with("image/") || mime == "application/octet-stream" {
            let bytes = raw_body(req, state).await?;
            if bytes.is_empty() {
                return Err(ApiError::new(
                    ErrorCode::InvalidRequest,
                    "the request body is empty",
                ));
            }
            upload.images.push(bytes);
        } else {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                format!(
                    "expected multipart/form-data or an image/* body, got `{}`",
                    if content_type.is_empty() {
                        "no content type"
                    } else {
                        &content_type
                    }
                ),
            ));
        }
        Ok(upload)
    }
}

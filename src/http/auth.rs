//! The authentication layer: every request's API key is checked here, before any handler, and
//! the caller's [`Principal`] is put in the request's extensions; then its rate limit is taken
//! and, for browser requests, its CORS headers are set.
//!
//! Deny by default: a route needs a valid key unless its path is one of the public ones
//! ([`openapi::PUBLIC`]: probes, metrics, the web page and the API docs). What a valid key may do
//! is decided by the extractors here ([`Caller`], [`AdminKey`]) and in `extract.rs` (`Merchant`),
//! which ask [`Principal`]'s rules; `tests/api/isolation.rs` checks every route against every
//! kind of key. This module must never log a token or its hash.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Request, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::openapi;
use crate::auth::limit::Class;
use crate::auth::{AuthError, Principal};
use crate::core::AppState;
use crate::error::ErrorCode;

/// Headers a browser may send cross-origin, and those it may read.
const ALLOW_HEADERS: &str = "authorization, content-type, if-match, x-request-id";
const EXPOSE_HEADERS: &str = "etag, location, retry-after, x-request-id, www-authenticate, \
     x-index-version, x-decode-time, x-embed-time, x-ann-time, x-rerank-time, x-total-time";
const ALLOW_METHODS: &str = "GET, POST, PUT, PATCH, DELETE, OPTIONS";

/// Whether a matched route needs no key.
fn is_public(route: Option<&str>) -> bool {
    match route {
        // The layer runs on matched routes only, which have a path; without one, deny.
        None => false,
        Some(r) => openapi::PUBLIC.contains(&r) || r.starts_with("/docs/"),
    }
}

/// The rate-limit class of a request.
fn class_of(method: &Method, route: Option<&str>) -> Class {
    if route == Some("/v1/search") {
        Class::Search
    } else if method == Method::GET || method == Method::HEAD {
        Class::Read
    } else {
        Class::Write
    }
}

/// The client address: the connection's, or the last `X-Forwarded-For` hop when configured.
fn client_address(state: &AppState, req: &Request) -> IpAddr {
    if state.config().auth.trust_forwarded_for {
        let forwarded = req
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|s| s.trim().parse::<IpAddr>().ok())
            .next_back();
        if let Some(ip) = forwarded {
            return ip;
        }
    }
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
}

/// A 401 with its challenge.
fn unauthenticated(e: &AuthError) -> Response {
    let mut r = ApiError::new(ErrorCode::Unauthenticated, e.to_string()).into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"snapshop\""),
    );
    r
}

/// A 429 saying when to come back.
fn rate_limited(wait: std::time::Duration) -> Response {
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    let mut r = ApiError::new(
        ErrorCode::RateLimited,
        format!("rate limit reached: retry in {secs} s"),
    )
    .into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    r
}

/// Whether the configured CORS origins allow `origin`.
fn globally_allowed(state: &AppState, origin: &str) -> bool {
    state
        .config()
        .auth
        .cors_origins
        .iter()
        .any(|o| o == "*" || o == origin)
}

fn cors_headers(headers: &mut HeaderMap, origin: &HeaderValue) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSE_HEADERS),
    );
    headers.append(header::VARY, HeaderValue::from_static("origin"));
}

/// A CORS preflight: allowed for the configured origins and for any origin an active search key
/// allows (the key itself is only known on the real request, which is checked again).
async fn preflight(state: &AppState, origin: &HeaderValue) -> Response {
    let text = origin.to_str().unwrap_or("");
    let allowed = globally_allowed(state, text) || state.origin_of_some_key(text).await;
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    h.append(header::VARY, HeaderValue::from_static("origin"));
    if allowed {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(ALLOW_METHODS),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOW_HEADERS),
        );
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(600));
    }
    r
}

/// CORS preflights, answered before routing (no route has an `OPTIONS` handler, and a
/// preflight carries no key). Everything else passes.
pub async fn cors_preflight(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        if let Some(origin) = req.headers().get(header::ORIGIN) {
            return preflight(&state, origin).await;
        }
    }
    next.run(req).await
}

/// The layer itself, on matched routes only (an unknown route or method gets its 404 or 405
/// whoever asks): see the module documentation.
pub async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let route = route.as_deref();
    let origin = req.headers().get(header::ORIGIN).cloned();
    if route == Some("/metrics") {
        if let Some(token) = state.config().auth.metrics_token.as_deref() {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            // Digests of equal length, compared in constant time.
            let ok = Sha256::digest(given.as_bytes()).ct_eq(&Sha256::digest(token.as_bytes()));
            if !bool::from(ok) {
                return unauthenticated(&AuthError::Missing);
            }
        }
        return next.run(req).await;
    }
    if is_public(route) {
        return next.run(req).await;
    }
    let address = client_address(&state, &req);
    let class = class_of(req.method(), route);
    let auth = state
        .authenticator()
        .authenticate(
            req.headers()
                .get(header::AUTHORIZATION)
                .map(|v| v.as_bytes()),
        )
        .await;
    let principal = match auth {
        Ok(p) => p,
        Err(AuthError::Store(e)) => return ApiError::from(e).into_response(),
        Err(e) => {
            // Failed attempts cost from the address's bucket: guessing keys is rate limited.
            if let Err(wait) = state.rate_limiter().check(None, address, class) {
                return rate_limited(wait);
            }
            return unauthenticated(&e);
        }
    };
    if let Err(wait) = state.rate_limiter().check(Some(&principal), address, class) {
        return rate_limited(wait);
    }
    // A key limited to some origins refuses browser requests from others.
    let origin_text = origin
        .as_ref()
        .and_then(|o| o.to_str().ok())
        .map(str::to_owned);
    let key_origins = principal.origins();
    let mut cors = None;
    if let Some(o) = origin_text.as_deref() {
        if !key_origins.is_empty() && !key_origins.iter().any(|k| k == o) {
            return ApiError::new(
                ErrorCode::Forbidden,
                format!("this key may not be used from origin `{o}`"),
            )
            .into_response();
        }
        if globally_allowed(&state, o) || key_origins.iter().any(|k| k == o) {
            cors = origin;
        }
    }
    req.extensions_mut().insert(principal);
    let mut response = next.run(req).await;
    if let Some(origin) = cors {
        cors_headers(response.headers_mut(), &origin);
    }
    response
}

/// The caller of a route that needs a key (any kind).
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .map(Caller)
            .ok_or_else(|| {
                ApiError::new(ErrorCode::Unauthenticated, AuthError::Missing.to_string())
            })
    }
}

/// Proof that the caller holds an admin key.
#[derive(Debug, Clone)]
pub struct AdminKey(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for AdminKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Caller(p) = Caller::from_request_parts(parts, state).await?;
        if p.is_admin() {
            Ok(AdminKey(p))
        } else {
            Err(forbidden("this route needs an admin key"))
        }
    }
}

/// A 403 `forbidden` with a message.
pub fn forbidden(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::Forbidden, message)
}

//! The web pages: `GET /` (search by photo), `GET /console` (the merchant console) and their
//! assets under `/assets/…`.
//!
//! The files in `web/` are embedded in the binary at compile time (`include_str!`): nothing is
//! read from disk or fetched at run time, and there is no build step. The pages link their
//! assets with `?v=<version>`, a hash of all of them, so that an asset asked for with the
//! current version can be cached for good (`immutable`) while the pages themselves are always
//! revalidated. The pages get a strict content security policy: scripts, styles, images and
//! requests from this origin only (plus `blob:` images: the query photo shown from the user's
//! own file, and product images fetched with the user's key). This module must never serve
//! anything but these embedded files, nor loosen that policy.

use std::sync::LazyLock;

use axum::extract::{Path, RawQuery};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::openapi::errors;
use crate::error::ErrorCode;

/// The page's content security policy.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' blob:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

const INDEX_HTML: &str = include_str!("../../web/index.html");
const CONSOLE_HTML: &str = include_str!("../../web/console.html");

/// The embedded assets: name under `/assets/`, content type, bytes.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../../web/app.css"),
    ),
    (
        "console.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/console.js"),
    ),
    (
        "console.css",
        "text/css; charset=utf-8",
        include_str!("../../web/console.css"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_str!("../../web/favicon.svg"),
    ),
];

/// A hash of the pages and every asset: what `?v=` carries.
static VERSION: LazyLock<String> = LazyLock::new(|| {
    let mut h = Sha256::new();
    h.update(INDEX_HTML);
    h.update([0]);
    h.update(CONSOLE_HTML);
    for (name, _, body) in ASSETS {
        h.update(name);
        h.update([0]);
        h.update(body);
    }
    hex::encode(&h.finalize()[..8])
});

/// The pages with their asset links versioned.
static PAGE: LazyLock<String> = LazyLock::new(|| INDEX_HTML.replace("{{version}}", &VERSION));
static CONSOLE: LazyLock<String> = LazyLock::new(|| CONSOLE_HTML.replace("{{version}}", &VERSION));

pub fn router<S: Clone + Send + Sync + 'static>() -> OpenApiRouter<S> {
    OpenApiRouter::new()
        .routes(routes!(page))
        .routes(routes!(console))
        .routes(routes!(asset))
}

fn common_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h
}

/// The search page (HTML): search by photo, with the results' attention as a heatmap.
#[utoipa::path(
    get,
    path = "/",
    tag = "web",
    responses((status = 200, description = "The page, under a strict content security policy.",
        content_type = "text/html; charset=utf-8", body = String,
        headers(
            ("Content-Security-Policy" = String, description = "Scripts, styles, images and requests from this origin only."),
            ("Cache-Control" = String, description = "`no-cache`"),
        ))),
)]
async fn page() -> Response {
    html(PAGE.as_str())
}

/// The merchant console (HTML): sign in with a merchant key; list, search, create, edit and
/// delete products and their images; start an import and watch it.
#[utoipa::path(
    get,
    path = "/console",
    tag = "web",
    responses((status = 200, description = "The page, under a strict content security policy.",
        content_type = "text/html; charset=utf-8", body = String,
        headers(
            ("Content-Security-Policy" = String, description = "Scripts, styles, images and requests from this origin only."),
            ("Cache-Control" = String, description = "`no-cache`"),
        ))),
)]
async fn console() -> Response {
    html(CONSOLE.as_str())
}

/// An HTML page with the headers both pages share.
fn html(body: &'static str) -> Response {
    let mut h = common_headers();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    (h, body).into_response()
}

errors!(AssetErrors: RouteNotFound);

/// A file of the pages (`app.js`, `app.css`, `console.js`, `console.css`, `favicon.svg`),
/// embedded in the binary.
///
/// Asked with the current `?v=` it is cached for good; otherwise revalidated.
#[utoipa::path(
    get,
    path = "/assets/{name}",
    tag = "web",
    params(
        ("name" = String, Path, description = "`app.js`, `app.css`, `console.js`, `console.css` or `favicon.svg`.",
            example = "app.js"),
        ("v" = Option<String>, Query, description = "The assets' version, as the page links them."),
        ("If-None-Match" = Option<String>, Header, description = "The `ETag` of the asset: 304 when current."),
    ),
    responses(
        (status = 200, description = "The file.",
            content(
                (String = "text/javascript; charset=utf-8"),
                (String = "text/css; charset=utf-8"),
                (String = "image/svg+xml"),
            ),
            headers(
                ("ETag" = String, description = "The assets' version, quoted."),
                ("Cache-Control" = String, description = "`public, max-age=31536000, immutable` at the current version, else `no-cache`."),
            )),
        (status = 304, description = "Not modified.",
            headers(
                ("ETag" = String, description = "The assets' version, quoted."),
                ("Cache-Control" = String, description = "As for 200."),
            )),
        AssetErrors,
    ),
)]
async fn asset(
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Some((_, content_type, body)) = ASSETS.iter().find(|(n, _, _)| *n == name) else {
        return Err(ApiError::new(
            ErrorCode::RouteNotFound,
            format!("no route for /assets/{name}"),
        ));
    };
    let current = query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .any(|pair| pair.strip_prefix("v=") == Some(VERSION.as_str()));
    let etag = format!("\"{}\"", *VERSION);
    let mut h = common_headers();
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(if current {
            "public, max-age=31536000, immutable"
        } else {
            "no-cache"
        }),
    );
    h.insert(
        header::ETAG,
        HeaderValue::from_str(&etag).map_err(ApiError::internal)?,
    );
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().trim_start_matches("W/") == etag)
        });
    if fresh {
        return Ok((StatusCode::NOT_MODIFIED, h).into_response());
    }
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok((h, *body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::{to_bytes, Body};
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get(uri: &str, if_none_match: Option<&str>) -> (StatusCode, HeaderMap, String) {
        let mut req = Request::get(uri);
        if let Some(v) = if_none_match {
            req = req.header(header::IF_NONE_MATCH, v);
        }
        let r = axum::Router::from(router::<()>())
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let (parts, body) = r.into_parts();
        let text = String::from_utf8(to_bytes(body, 1 << 20).await.unwrap().to_vec()).unwrap();
        (parts.status, parts.headers, text)
    }

    #[tokio::test]
    async fn the_pages_have_a_strict_policy_and_versioned_assets() {
        let mut linked = std::collections::BTreeSet::new();
        for path in ["/", "/console"] {
            let (status, h, body) = get(path, None).await;
            assert_eq!(status, 200, "{path}");
            assert_eq!(h[header::CONTENT_TYPE], "text/html; charset=utf-8");
            assert_eq!(h[header::CONTENT_SECURITY_POLICY], CONTENT_SECURITY_POLICY);
            assert_eq!(h[header::CACHE_CONTROL], "no-cache");
            assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
            assert!(!body.contains("{{version}}"), "{path}");
            // Every asset link of the page is to a served asset, at the current version.
            for link in body.split("/assets/").skip(1) {
                let link = &link[..link.find('"').expect("a quoted link")];
                let (name, version) = link.split_once("?v=").expect("a versioned link");
                assert_eq!(version, VERSION.as_str(), "{path}: {link}");
                assert!(
                    ASSETS.iter().any(|(n, _, _)| *n == name),
                    "{path} links {name}, which is not served"
                );
                linked.insert(name.to_owned());
            }
            // No script or style inline: the policy would block them.
            assert!(
                !body.contains("<style") && !body.contains(" style="),
                "{path}"
            );
            assert!(!body.contains("<script>"), "{path}");
            let inline_handler = body.split(" on").skip(1).any(|rest| {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase())
                    .collect();
                !name.is_empty() && rest[name.len()..].starts_with('=')
            });
            assert!(!inline_handler, "{path}: an inline event handler");
        }
        // Every served asset is linked by some page.
        for (name, _, _) in ASSETS {
            assert!(linked.contains(*name), "no page links {name}");
        }
    }

    #[tokio::test]
    async fn assets_have_their_types_and_are_immutable_at_the_current_version() {
        for (name, content_type, body) in ASSETS {
            let uri = format!("/assets/{name}?v={}", *VERSION);
            let (status, h, text) = get(&uri, None).await;
            assert_eq!(status, 200, "{uri}");
            assert_eq!(h[header::CONTENT_TYPE], *content_type);
            assert_eq!(
                h[header::CACHE_CONTROL],
                "public, max-age=31536000, immutable"
            );
            assert_eq!(text, *body);
            let etag = h[header::ETAG].to_str().unwrap().to_owned();
            let (status, _, _) = get(&uri, Some(&etag)).await;
            assert_eq!(status, 304);
        }
        // Another version (a stale page) is served, but revalidated.
        let (status, h, _) = get("/assets/app.js?v=old", None).await;
        assert_eq!(status, 200);
        assert_eq!(h[header::CACHE_CONTROL], "no-cache");
        let (status, _, body) = get("/assets/nope.js", None).await;
        assert_eq!(status, 404);
        assert!(body.contains("route_not_found"), "{body}");
    }
}

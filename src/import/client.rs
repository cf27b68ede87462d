//! The importer's HTTP side: the snapshop API calls it needs (read, create, change, add images,
//! delete a product), with retries, and the fetching of `http(s)://` images.
//!
//! It exists so that retries and error mapping live in one place: 429 and 503 (after their
//! `Retry-After`) and connection errors are retried with exponential backoff and full jitter, up
//! to `max_attempts`; every other answer is returned as it is, with the API's `error.code`. It
//! talks to the server over HTTP only, never to the store. It must never print, log or put in an
//! error message the API key, and never send it anywhere but the API (image hosts get no
//! `Authorization`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, IF_MATCH, RETRY_AFTER};
use reqwest::multipart::{Form, Part};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use serde_json::Value;

/// How failed calls are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts per call, the first one included (at least 1).
    pub max_attempts: u32,
    /// The backoff before the second attempt; doubled for every later one (with full jitter).
    pub base_delay: Duration,
    /// The longest wait between two attempts, `Retry-After` included.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// Full jitter: a uniform wait in `[0, min(max, base * 2^(attempt-1))]`, at least 10 ms.
    fn backoff(&self, attempt: u32) -> Duration {
        let cap = self
            .base_delay
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.max_delay);
        let ms = cap.as_millis().max(10) as u64;
        Duration::from_millis(rand::rng().random_range(10..=ms.max(10)))
    }

    /// `Retry-After` (seconds), plus up to a quarter of it (at least 100 ms) of jitter so that
    /// the workers that were refused together do not come back together.
    fn after(&self, secs: u64) -> Duration {
        let base = Duration::from_secs(secs).min(self.max_delay);
        let spread = (base.as_millis() as u64 / 4).max(100);
        base + Duration::from_millis(rand::rng().random_range(0..=spread))
    }
}

/// A failed call: the API's `error.code` and message, or one of the client's own codes
/// (`network`, `http_<status>`, `bad_response`, `image_fetch_failed`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallError {
    pub code: String,
    pub message: String,
    /// The HTTP status, when there was an answer.
    pub status: Option<u16>,
}

impl CallError {
    fn new(code: &str, message: impl Into<String>, status: Option<u16>) -> Self {
        Self {
            code: code.to_owned(),
            message: message.into(),
            status,
        }
    }

    /// Whether the error is about one of the images sent (so the others may go in alone).
    pub fn is_about_an_image(&self) -> bool {
        matches!(
            self.code.as_str(),
            "image_undecodable"
                | "unsupported_media_type"
                | "image_too_large"
                | "payload_too_large"
        )
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// A product as the API answers it, with its `ETag`.
#[derive(Debug, Clone)]
pub struct Remote {
    pub body: Value,
    pub etag: Option<String>,
}

impl Remote {
    /// The `sha256` of each image.
    pub fn image_shas(&self) -> Vec<String> {
        self.body["images"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|i| i["sha256"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// An image to upload.
#[derive(Debug, Clone)]
pub struct Upload {
    pub bytes: Bytes,
    pub file_name: String,
    pub mime: &'static str,
}

/// The API client of one import: one merchant, one key.
pub struct Client {
    http: reqwest::Client,
    base: Url,
    merchant: String,
    auth: HeaderValue,
    retry: RetryPolicy,
    retries: AtomicU64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .field("merchant", &self.merchant)
            .field("auth", &"<redacted>")
            .finish()
    }
}

impl Client {
    /// `base` is the server's URL (`http://127.0.0.1:8080`, maybe with a path prefix).
    pub fn new(base: &str, merchant: &str, key: &str, retry: RetryPolicy) -> Result<Self, String> {
        let base = Url::parse(base).map_err(|e| format!("--url {base}: {e}"))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(format!("--url {base}: not an http(s) URL"));
        }
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", key.trim()))
            .map_err(|_| "the API key holds characters a header cannot carry".to_owned())?;
        auth.set_sensitive(true);
        let http = reqwest::Client::builder()
            .user_agent(concat!("snapshop-import/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(300))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self {
            http,
            base,
            merchant: merchant.to_owned(),
            auth,
            retry,
            retries: AtomicU64::new(0),
        })
    }

    /// Retries made so far (all calls together).
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("checked in new")
            .pop_if_empty()
            .extend(segments);
        url
    }

    fn product_url(&self, id: &str, rest: &[&str]) -> Url {
        let mut segments = vec!["v1", "merchants", &self.merchant, "products", id];
        segments.extend_from_slice(rest);
        self.url(&segments)
    }

    fn api(&self, method: Method, url: Url) -> RequestBuilder {
        self.http
            .request(method, url)
            .header(AUTHORIZATION, self.auth.clone())
    }

    /// Sends the request `build` makes (once per attempt), retrying 429, 503 and connection
    /// errors.
    async fn send(&self, build: impl Fn() -> RequestBuilder) -> Result<Response, CallError> {
        let mut attempt = 1;
        loop {
            let result = build().send().await;
            let wait = match &result {
                Ok(r)
                    if r.status() == StatusCode::TOO_MANY_REQUESTS
                        || r.status() == StatusCode::SERVICE_UNAVAILABLE =>
                {
                    Some(match retry_after(r.headers()) {
                        Some(secs) => self.retry.after(secs),
                        None => self.retry.backoff(attempt),
                    })
                }
                Ok(_) => None,
                Err(e) if e.is_connect() || e.is_timeout() || e.is_request() => {
                    Some(self.retry.backoff(attempt))
                }
                Err(_) => None,
            };
            match wait {
                Some(wait) if attempt < self.retry.max_attempts => {
                    tracing::debug!(attempt, ?wait, "retrying");
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                _ => {
                    return result.map_err(|e| {
                        CallError::new(
                            "network",
                            format!("{} (after {attempt} attempts)", error_chain(&e)),
                            None,
                        )
                    })
                }
            }
        }
    }

    /// Sends and reads a JSON answer; an error status becomes a [`CallError`].
    async fn call(&self, build: impl Fn() -> RequestBuilder) -> Result<Remote, CallError> {
        let r = self.send(build).await?;
        let status = r.status();
        let etag = r
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = r
            .bytes()
            .await
            .map_err(|e| CallError::new("network", error_chain(&e), Some(status.as_u16())))?;
        if status.is_success() {
            let body = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).map_err(|e| {
                    CallError::new(
                        "bad_response",
                        format!("the server's answer is not JSON: {e}"),
                        Some(status.as_u16()),
                    )
                })?
            };
            return Ok(Remote { body, etag });
        }
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let code = body["error"]["code"]
            .as_str()
            .map_or_else(|| format!("http_{}", status.as_u16()), str::to_owned);
        let message = body["error"]["message"]
            .as_str()
            .map_or_else(|| format!("HTTP {status}"), |m| m.to_owned());
        Err(CallError::new(&code, message, Some(status.as_u16())))
    }

    /// `GET /v1/merchants/{m}`: checks the server, the key and its scope before the import.
    /// `Ok(false)` when the merchant does not exist yet (an admin key may create it).
    pub async fn check_merchant(&self) -> Result<bool, CallError> {
        let url = self.url(&["v1", "merchants", &self.merchant]);
        match self.call(|| self.api(Method::GET, url.clone())).await {
            Ok(_) => Ok(true),
            Err(e) if e.code == "merchant_not_found" => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `GET .../products/{id}`; `None` when there is none.
    pub async fn get(&self, id: &str) -> Result<Option<Remote>, CallError> {
        let url = self.product_url(id, &[]);
        match self.call(|| self.api(Method::GET, url.clone())).await {
            Ok(r) => Ok(Some(r)),
            Err(e) if e.code == "product_not_found" => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `POST .../products`: multipart, the `product` JSON part and the images.
    pub async fn create(&self, product: &Value, images: &[Upload]) -> Result<Remote, CallError> {
        let url = self.url(&["v1", "merchants", &self.merchant, "products"]);
        let json = product.to_string();
        self.call(|| {
            let part = Part::text(json.clone())
                .mime_str("application/json")
                .expect("a valid mime");
            let form = images
                .iter()
                .fold(Form::new().part("product", part), |f, im| {
                    f.part("image", image_part(im))
                });
            self.api(Method::POST, url.clone()).multipart(form)
        })
        .await
    }

    /// `POST .../products/{id}/images`, conditional on `etag` when given.
    pub async fn add_images(
        &self,
        id: &str,
        images: &[Upload],
        etag: Option<&str>,
    ) -> Result<Remote, CallError> {
        let url = self.product_url(id, &["images"]);
        self.call(|| {
            let form = images
                .iter()
                .fold(Form::new(), |f, im| f.part("image", image_part(im)));
            if_match(self.api(Method::POST, url.clone()), etag).multipart(form)
        })
        .await
    }

    /// `PATCH .../products/{id}`, conditional on `etag` when given.
    pub async fn patch(
        &self,
        id: &str,
        patch: &Value,
        etag: Option<&str>,
    ) -> Result<Remote, CallError> {
        let url = self.product_url(id, &[]);
        self.call(|| if_match(self.api(Method::PATCH, url.clone()), etag).json(patch))
            .await
    }

    /// `DELETE .../products/{id}`, conditional on `etag` when given.
    pub async fn delete(&self, id: &str, etag: Option<&str>) -> Result<(), CallError> {
        let url = self.product_url(id, &[]);
        match self
            .call(|| if_match(self.api(Method::DELETE, url.clone()), etag))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code == "product_not_found" => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Fetches an `http(s)://` image (no `Authorization`), with the same retries.
    pub async fn fetch(&self, url: &Url) -> Result<Bytes, CallError> {
        let r = self.send(|| self.http.get(url.clone())).await?;
        let status = r.status();
        if !status.is_success() {
            return Err(CallError::new(
                "image_fetch_failed",
                format!("GET {url}: HTTP {status}"),
                Some(status.as_u16()),
            ));
        }
        r.bytes()
            .await
            .map_err(|e| CallError::new("network", format!("GET {url}: {}", error_chain(&e)), None))
    }
}

fn if_match(rb: RequestBuilder, etag: Option<&str>) -> RequestBuilder {
    match etag {
        Some(e) => rb.header(IF_MATCH, e),
        None => rb,
    }
}

fn image_part(im: &Upload) -> Part {
    Part::stream_with_length(im.bytes.clone(), im.bytes.len() as u64)
        .file_name(im.file_name.clone())
        .mime_str(im.mime)
        .expect("a valid mime")
}

/// `Retry-After` as seconds (the API sends seconds; an HTTP date is not used by it).
fn retry_after(headers: &HeaderMap) -> Option<u64> {
    headers.get(RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()
}

/// An error with its sources (reqwest's own message is often just "error sending request").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        for attempt in 1..12 {
            let cap = (100u64 << (attempt - 1)).min(1000);
            for _ in 0..50 {
                let d = p.backoff(attempt).as_millis() as u64;
                assert!((10..=cap.max(10)).contains(&d), "attempt {attempt}: {d}");
            }
        }
        let d = p.after(0);
        assert!(d >= Duration::from_millis(0) && d <= Duration::from_millis(100));
        let d = p.after(60);
        assert!(
            d >= Duration::from_secs(1) && d <= Duration::from_millis(1250),
            "{d:?}"
        );
    }

    #[test]
    fn urls_encode_ids_and_keep_a_prefix() {
        let c = Client::new("http://h:1/api/", "acme", "sk_x", RetryPolicy::default()).unwrap();
        assert_eq!(
            c.product_url("a b?#%", &["images"]).as_str(),
            "http://h:1/api/v1/merchants/acme/products/a%20b%3F%23%25/images"
        );
        assert!(Client::new("ftp://h", "acme", "k", RetryPolicy::default()).is_err());
        assert!(Client::new("not a url", "acme", "k", RetryPolicy::default()).is_err());
        assert!(!format!("{c:?}").contains("sk_x"));
    }

    #[test]
    fn retry_after_seconds() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static(" 3 "));
        assert_eq!(retry_after(&h), Some(3));
    }
}

//! The test harness: start the real server on `127.0.0.1:0` with a temporary data directory and
//! the shipped bundle ([`spawn_app`], [`spawn_app_with`]), and talk to it with one method per
//! endpoint ([`TestApp`]). Every method returns a [`Call`]: await it to send the request and get
//! a [`TestResponse`] (status, headers, body read once), or add headers first:
//!
//! ```ignore
//! let r = app.patch_product(MERCHANT, "sku-1", &json!({"title": "x"})).header("if-match", etag).await;
//! let product = r.assert_status(200).json;
//! ```

use std::collections::BTreeMap;
use std::future::{Future, IntoFuture};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Once, OnceLock};

use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::{json, Value};
use snapshop::eval::{read_manifest, ManifestRow};
use snapshop::{Application, Backend, Config};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use reqwest::multipart::{Form, Part};

/// The merchant the catalogue is uploaded to.
pub const MERCHANT: &str = "acme";
/// A second merchant holding one copy of a catalogue product, for the merchant filter.
pub const OTHER_MERCHANT: &str = "other-shop";

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn init_logging() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Quiet unless asked: SNAPSHOP_TEST_LOG=debug cargo test ...
        if let Ok(level) = std::env::var("SNAPSHOP_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(level))
                .with_test_writer()
                .try_init();
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Start-up: the one place where the application is built.

pub fn test_config(data_dir: &Path) -> Config {
    let mut c = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.to_owned(),
        bundle: root().join("models/default"),
        intra_threads: 1,
        ..Config::default()
    };
    c.maintenance.interval_secs = 3600;
    c.auth.bootstrap_admin_key = Some(ADMIN_KEY.to_owned());
    // Limits the tests never reach, except those about rate limits (which set their own).
    let roomy = snapshop::auth::limit::Bucket::new(100_000.0, 100_000);
    let kind = snapshop::auth::limit::KindLimits {
        search: roomy,
        read: roomy,
        write: roomy,
    };
    c.rate_limits.anonymous = roomy;
    c.rate_limits.admin = kind.clone();
    c.rate_limits.merchant = kind.clone();
    c.rate_limits.search = kind;
    c
}

/// The admin key every test app starts with (`auth.bootstrap_admin_key`); every [`Call`] sends
/// it unless given another key ([`Call::key`]) or none ([`Call::anonymous`]).
pub const ADMIN_KEY: &str = "sk_admin_test0123456789abcdefghijklmnopqrstuv";

/// A new, empty temporary data directory.
pub fn new_data_dir() -> Arc<TempDir> {
    Arc::new(tempfile::tempdir().unwrap())
}

/// Starts the server on a new temporary data directory.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(new_data_dir(), |_| {}).await
}

/// Starts the server on `data_dir`, with config changes.
pub async fn spawn_app_with(data_dir: Arc<TempDir>, tweak: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_on(Backend::Ort, data_dir, tweak).await
}

/// Starts the server with the deterministic fake model (no ONNX Runtime): for the tests of the
/// core's behaviour rather than of retrieval quality.
pub async fn spawn_fake_app() -> TestApp {
    spawn_fake_app_with(new_data_dir(), |_| {}).await
}

/// [`spawn_fake_app`] on `data_dir`, with config changes.
pub async fn spawn_fake_app_with(
    data_dir: Arc<TempDir>,
    tweak: impl FnOnce(&mut Config),
) -> TestApp {
    spawn_app_on(Backend::Fake, data_dir, tweak).await
}

/// The one place the application is built.
pub async fn spawn_app_on(
    backend: Backend,
    data_dir: Arc<TempDir>,
    tweak: impl FnOnce(&mut Config),
) -> TestApp {
    init_logging();
    let mut config = test_config(data_dir.path());
    tweak(&mut config);
    let app = Application::build_with(config, backend)
        .await
        .expect("the app starts");
    let addr = app.local_addr();
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(app.run_until(async move {
        let _ = rx.await;
    }));
    TestApp {
        base: format!("http://{addr}"),
        client: reqwest::Client::new(),
        data_dir,
        shutdown: Some(tx),
        handle: Some(handle),
    }
}

// ---------------------------------------------------------------------------------------------
// Shared apps. In a debug build each start costs about 0.75 s of CPU (the bundle's 20 MB are
// hashed, the models loaded) and each catalogue upload about 1 s more, so the tests that only read
// share an app per process, started on a runtime of its own and never stopped. Tests that change
// what others look at, or need a config or an empty index of their own, start their own app with
// `spawn_app*`. Tests of the core's behaviour (not of retrieval quality) use the fake model
// backend (`spawn_fake_app*`), which needs no ONNX Runtime.

struct Shared {
    app: TestApp,
    catalogue: Option<Catalogue>,
    product: Option<FixtureProduct>,
}

/// What a shared app holds when it starts.
#[derive(Clone, Copy)]
enum Seed {
    Catalogue,
    OneProduct,
}

static CATALOGUE_APP: OnceLock<Shared> = OnceLock::new();
static CHANGES_APP: OnceLock<Shared> = OnceLock::new();
static ONE_PRODUCT_APP: OnceLock<Shared> = OnceLock::new();

/// The body limit of the apps for bad input (`limits.max_body_bytes`).
pub const BAD_INPUT_BODY_LIMIT: usize = 2 * 1024 * 1024;

/// The shared app with the catalogue uploaded ([`seed_catalogue`]), for tests that do not change
/// it.
pub async fn catalogue_app() -> (TestApp, &'static Catalogue) {
    let shared = shared(&CATALOGUE_APP, |_| {}, Seed::Catalogue).await;
    (shared.app.handle(), shared.catalogue.as_ref().unwrap())
}

/// Another shared app with the catalogue uploaded, for the tests that each change one product,
/// each a different one, and look at nothing else (`products.rs`: the PATCH test `products[3]`,
/// the add-images test `products[4]`, the delete test `queries()[1]`, which is `products[1]`).
pub async fn changes_app() -> (TestApp, &'static Catalogue) {
    let shared = shared(&CHANGES_APP, |_| {}, Seed::Catalogue).await;
    (shared.app.handle(), shared.catalogue.as_ref().unwrap())
}

/// The shared app for requests that change nothing (bad input, the vocabulary, metrics): a body
/// limit of [`BAD_INPUT_BODY_LIMIT`] and one product, [`seed_one_product`]. Nothing sent to it
/// may change it.
pub async fn one_product_app() -> (TestApp, &'static FixtureProduct) {
    let tweak = |c: &mut Config| c.limits.max_body_bytes = BAD_INPUT_BODY_LIMIT;
    let shared = shared(&ONE_PRODUCT_APP, tweak, Seed::OneProduct).await;
    (shared.app.handle(), shared.product.as_ref().unwrap())
}

async fn shared(
    slot: &'static OnceLock<Shared>,
    tweak: fn(&mut Config),
    seed: Seed,
) -> &'static Shared {
    let start = move || {
        // A runtime that outlives every test's own: the server and its tasks run there.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let rt: &'static tokio::runtime::Runtime = Box::leak(Box::new(rt));
            rt.block_on(async {
                // Bad input, the vocabulary and metrics do not depend on the model's quality:
                // the one-product app runs the fake backend.
                let backend = match seed {
                    Seed::Catalogue => Backend::Ort,
                    Seed::OneProduct => Backend::Fake,
                };
                let app = spawn_app_on(backend, shared_data_dir(), tweak).await;
                let (mut catalogue, mut product) = (None, None);
                match seed {
                    Seed::Catalogue => catalogue = Some(seed_catalogue(&app).await),
                    Seed::OneProduct => product = Some(seed_one_product(&app).await),
                }
                Shared {
                    app,
                    catalogue,
                    product,
                }
            })
        })
        .join()
        .expect("the shared app starts")
    };
    tokio::task::spawn_blocking(move || slot.get_or_init(start))
        .await
        .unwrap()
}

/// A data directory under cargo's target tmpdir: a shared app is never stopped, so its
/// directory outlives the process; those of earlier runs are removed after an hour.
fn shared_data_dir() -> Arc<TempDir> {
    const PREFIX: &str = "snapshop-api-shared-";
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    for entry in std::fs::read_dir(tmp).into_iter().flatten().flatten() {
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().unwrap_or_default().as_secs() > 3600);
        if stale && entry.file_name().to_string_lossy().starts_with(PREFIX) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    Arc::new(
        tempfile::Builder::new()
            .prefix(PREFIX)
            .tempdir_in(tmp)
            .unwrap(),
    )
}

/// A running server.
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub data_dir: Arc<TempDir>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    /// Another handle on this server, with a client of its own (a client's pooled connections
    /// belong to the runtime they were made on). It does not own the server: `stop` does nothing.
    pub fn handle(&self) -> TestApp {
        TestApp {
            base: self.base.clone(),
            client: reqwest::Client::new(),
            data_dir: self.data_dir.clone(),
            shutdown: None,
            handle: None,
        }
    }

    /// Graceful shutdown (saves the index snapshot); returns the data directory for a restart.
    pub async fn stop(mut self) -> Arc<TempDir> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.expect("server task").expect("clean shutdown");
        }
        self.data_dir.clone()
    }

    /// Any request: `path` starts with `/` and may carry a query string.
    pub fn request(&self, method: Method, path: &str) -> Call {
        Call(
            self.client.request(method, format!("{}{path}", self.base)),
            Some(format!("Bearer {ADMIN_KEY}")),
        )
    }

    // --- products ---

    /// `POST /v1/merchants/{merchant}/products`: the `product` JSON part and one `image` part
    /// per file.
    pub fn create_product(&self, merchant: &str, product: &Value, images: &[PathBuf]) -> Call {
        let part = Part::text(product.to_string())
            .mime_str("application/json")
            .unwrap();
        let form = images
            .iter()
            .fold(Form::new().part("product", part), |f, path| {
                f.part("image", image_part(path))
            });
        self.request(Method::POST, &products_path(merchant))
            .multipart(form)
    }

    /// `POST /v1/merchants/{merchant}/products` with a `product` part of any text (none when
    /// `None`, no content type) and the given `image` parts.
    pub fn create_product_raw(
        &self,
        merchant: &str,
        product: Option<&str>,
        images: Vec<Part>,
    ) -> Call {
        let form = product.map_or_else(Form::new, |p| {
            Form::new().part("product", Part::text(p.to_owned()))
        });
        let form = images.into_iter().fold(form, |f, p| f.part("image", p));
        self.request(Method::POST, &products_path(merchant))
            .multipart(form)
    }

    /// `GET /v1/merchants/{merchant}/products/{id}`
    pub fn get_product(&self, merchant: &str, id: &str) -> Call {
        self.request(Method::GET, &product_path(merchant, id))
    }

    /// `GET /v1/merchants/{merchant}/products?limit=…&cursor=…` (each only when given).
    pub fn list_products(&self, merchant: &str, limit: Option<u32>, cursor: Option<&str>) -> Call {
        let mut query = Vec::new();
        if let Some(l) = limit {
            query.push(format!("limit={l}"));
        }
        if let Some(c) = cursor {
            query.push(format!("cursor={c}"));
        }
        let mut path = products_path(merchant);
        if !query.is_empty() {
            path = format!("{path}?{}", query.join("&"));
        }
        self.request(Method::GET, &path)
    }

    /// `PATCH /v1/merchants/{merchant}/products/{id}` with a JSON body.
    pub fn patch_product(&self, merchant: &str, id: &str, patch: &Value) -> Call {
        self.request(Method::PATCH, &product_path(merchant, id))
            .json(patch)
    }

    /// `DELETE /v1/merchants/{merchant}/products/{id}`
    pub fn delete_product(&self, merchant: &str, id: &str) -> Call {
        self.request(Method::DELETE, &product_path(merchant, id))
    }

    /// `POST /v1/merchants/{merchant}/products/{id}/images`, multipart, one part per file.
    pub fn add_images(&self, merchant: &str, id: &str, images: &[PathBuf]) -> Call {
        let form = images
            .iter()
            .fold(Form::new(), |f, path| f.part("image", image_part(path)));
        self.request(
            Method::POST,
            &format!("{}/images", product_path(merchant, id)),
        )
        .multipart(form)
    }

    /// `POST /v1/merchants/{merchant}/products/{id}/images` with one raw image body.
    pub fn add_image_bytes(
        &self,
        merchant: &str,
        id: &str,
        content_type: &str,
        bytes: Vec<u8>,
    ) -> Call {
        self.request(
            Method::POST,
            &format!("{}/images", product_path(merchant, id)),
        )
        .content_type(content_type)
        .body(bytes)
    }

    /// `GET /v1/merchants/{merchant}/products/{id}/images/{image_id}`: the stored image file.
    pub fn get_image(&self, merchant: &str, id: &str, image_id: &str) -> Call {
        self.request(
            Method::GET,
            &format!("{}/images/{image_id}", product_path(merchant, id)),
        )
    }

    // --- search ---

    /// `POST /v1/search?{query}` with the image file as a raw body; `query` has no `?`.
    pub fn search(&self, image: &Path, query: &str) -> Call {
        self.search_bytes(mime_of(image), std::fs::read(image).unwrap(), query)
    }

    /// `POST /v1/search?{query}` with any raw body.
    pub fn search_bytes(&self, content_type: &str, body: Vec<u8>, query: &str) -> Call {
        self.request(Method::POST, &search_path(query))
            .content_type(content_type)
            .body(body)
    }

    /// `POST /v1/search`, multipart: the `image` part and the `options` JSON part.
    pub fn search_multipart(&self, image: &Path, options: &Value) -> Call {
        let form = Form::new()
            .part("image", image_part(image))
            .part("options", Part::text(options.to_string()));
        self.search_form(form)
    }

    /// `POST /v1/search` with any multipart form.
    pub fn search_form(&self, form: Form) -> Call {
        self.request(Method::POST, "/v1/search").multipart(form)
    }

    // --- operations ---

    /// `GET /v1/tags`
    pub fn tags(&self) -> Call {
        self.request(Method::GET, "/v1/tags")
    }

    /// `GET /healthz`
    pub fn healthz(&self) -> Call {
        self.request(Method::GET, "/healthz")
    }

    /// `GET /readyz`
    pub fn readyz(&self) -> Call {
        self.request(Method::GET, "/readyz")
    }

    /// `GET /metrics` (the Prometheus text is in [`TestResponse::text`]).
    pub fn metrics(&self) -> Call {
        self.request(Method::GET, "/metrics")
    }
}

/// Creates a key with the admin key (`body` as `POST /v1/keys` takes it); returns its token.
pub async fn create_key(app: &TestApp, body: &Value) -> String {
    let r = app
        .request(Method::POST, "/v1/keys")
        .json(body)
        .await
        .assert_status(201);
    r.json["key"].as_str().expect("a token").to_owned()
}

pub fn products_path(merchant: &str) -> String {
    format!("/v1/merchants/{merchant}/products")
}

pub fn product_path(merchant: &str, id: &str) -> String {
    format!("/v1/merchants/{merchant}/products/{id}")
}

fn search_path(query: &str) -> String {
    if query.is_empty() {
        "/v1/search".to_owned()
    } else {
        format!("/v1/search?{query}")
    }
}

// ---------------------------------------------------------------------------------------------
// Requests and responses.

/// A request not yet sent: add headers (or a body) and await it.
#[must_use = "a request is sent only when awaited"]
pub struct Call(reqwest::RequestBuilder, Option<String>);

impl Call {
    /// A header; `authorization` replaces the key the call would send.
    pub fn header(self, name: &str, value: &str) -> Self {
        if name.eq_ignore_ascii_case("authorization") {
            return Call(self.0, Some(value.to_owned()));
        }
        Call(self.0.header(name, value), self.1)
    }

    /// Sends `key` (`Authorization: Bearer <key>`) instead of the admin key.
    pub fn key(self, key: &str) -> Self {
        Call(self.0, Some(format!("Bearer {key}")))
    }

    /// Sends no key at all.
    pub fn anonymous(self) -> Self {
        Call(self.0, None)
    }

    pub fn content_type(self, value: &str) -> Self {
        self.header("content-type", value)
    }

    pub fn body(self, body: impl Into<reqwest::Body>) -> Self {
        Call(self.0.body(body), self.1)
    }

    pub fn json(self, body: &Value) -> Self {
        Call(self.0.json(body), self.1)
    }

    pub fn multipart(self, form: Form) -> Self {
        Call(self.0.multipart(form), self.1)
    }

    /// Sends the request and reads the whole response.
    pub async fn send(self) -> TestResponse {
        let rb = match self.1 {
            Some(auth) => self.0.header("authorization", auth),
            None => self.0,
        };
        let r = rb.send().await.expect("the request is sent");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let bytes = r.bytes().await.expect("the response body is read").to_vec();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        TestResponse {
            status,
            headers,
            text,
            json,
            bytes,
        }
    }
}

impl IntoFuture for Call {
    type Output = TestResponse;
    type IntoFuture = Pin<Box<dyn Future<Output = TestResponse> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.send())
    }
}

/// A response, read whole: `json` is `Null` when the body is not JSON.
#[derive(Debug)]
pub struct TestResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
    pub json: Value,
    /// The body as sent (`text` is its lossy UTF-8 reading).
    pub bytes: Vec<u8>,
}

impl TestResponse {
    /// A header's value, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts the status; returns the response for its body.
    #[track_caller]
    pub fn assert_status(self, status: u16) -> Self {
        assert_eq!(self.status, status, "{}", self.text);
        self
    }

    /// Asserts an error response's status and code; returns the body.
    #[track_caller]
    pub fn assert_error(self, status: u16, code: &str) -> Value {
        self.assert_error_for("the request", status, code)
    }

    /// [`TestResponse::assert_error`], naming the request (`what`) in the failure message.
    #[track_caller]
    pub fn assert_error_for(self, what: &str, status: u16, code: &str) -> Value {
        let (got, body) = (self.status, &self.json);
        assert_eq!(
            got, status,
            "{what}: expected {status} {code}, got {got}: {body}"
        );
        assert_eq!(body["error"]["code"], code, "{what}: {body}");
        assert!(body["error"]["message"].is_string(), "{what}: {body}");
        self.json
    }
}

pub fn mime_of(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("png") => "image/png",
        Some("webp") => "image/webp",
        Some("heic") => "image/heic",
        _ => "image/jpeg",
    }
}

/// A multipart part holding an image file, named and typed after it.
pub fn image_part(path: &Path) -> Part {
    Part::bytes(std::fs::read(path).unwrap())
        .file_name(path.file_name().unwrap().to_string_lossy().into_owned())
        .mime_str(mime_of(path))
        .unwrap()
}

/// A multipart part of any bytes, declared as a JPEG.
pub fn jpeg_part(bytes: Vec<u8>) -> Part {
    Part::bytes(bytes).mime_str("image/jpeg").unwrap()
}

/// The product ids of a search response, in order.
pub fn ids(results: &Value) -> Vec<String> {
    results["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["product_id"].as_str().unwrap().to_owned())
        .collect()
}

/// The results of a search response.
pub fn results(body: &Value) -> &Vec<Value> {
    body["results"].as_array().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Fixtures.

/// A labelled product of the fixture set.
#[derive(Debug, Clone)]
pub struct FixtureProduct {
    pub id: String,
    pub tags: Vec<String>,
    pub shop: Vec<PathBuf>,
    pub user: Vec<PathBuf>,
}

impl FixtureProduct {
    /// Its first street photo, else its first shop image.
    pub fn photo(&self) -> PathBuf {
        self.user.first().unwrap_or(&self.shop[0]).clone()
    }

    /// Its first tag `key:…`.
    pub fn first_tag(&self, key: &str) -> Option<String> {
        self.tags
            .iter()
            .find(|t| t.starts_with(&format!("{key}:")))
            .cloned()
    }
}

/// The committed evaluation subset, if the model lead's fixtures are present.
pub fn subset_dir() -> PathBuf {
    root().join("tests/fixtures/subset")
}

/// Products of a labelled manifest (the committed subset, else the generated test split).
pub fn fixture_products() -> (PathBuf, Vec<FixtureProduct>) {
    let candidates = [
        (subset_dir().join("manifest.csv"), None),
        (root().join("data/street2shop/manifest.csv"), Some("test")),
    ];
    let (manifest, split) = candidates
        .iter()
        .find(|(p, _)| p.is_file())
        .expect("no labelled images: tests/fixtures/subset/manifest.csv (or data/street2shop from scripts/setup.sh) is missing");
    let rows: Vec<ManifestRow> = read_manifest(manifest).unwrap();
    let mut products: BTreeMap<String, FixtureProduct> = BTreeMap::new();
    let mut order = Vec::new();
    for r in rows {
        if split.is_some_and(|s| r.split != s) {
            continue;
        }
        let p = products.entry(r.product_id.clone()).or_insert_with(|| {
            order.push(r.product_id.clone());
            FixtureProduct {
                id: r.product_id.clone(),
                tags: Vec::new(),
                shop: Vec::new(),
                user: Vec::new(),
            }
        });
        if r.domain == "shop" {
            for t in r.tags {
                if !p.tags.contains(&t) {
                    p.tags.push(t);
                }
            }
            p.shop.push(r.image);
        } else {
            p.user.push(r.image);
        }
    }
    let list = order
        .into_iter()
        .map(|id| products.remove(&id).unwrap())
        .collect();
    (manifest.clone(), list)
}

/// A copy of the shipped bundle in `dir/bundle-copy`, with `edit` applied to its manifest (the
/// graphs and their checksums stay as they are).
pub fn copy_bundle(dir: &Path, edit: impl FnOnce(&mut Value)) -> PathBuf {
    fn copy_dir(src: &Path, dst: &Path) {
        std::fs::create_dir_all(dst).unwrap();
        for entry in std::fs::read_dir(src).unwrap() {
            let entry = entry.unwrap();
            let to = dst.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_dir(&entry.path(), &to);
            } else {
                std::fs::copy(entry.path(), to).unwrap();
            }
        }
    }
    let dst = dir.join("bundle-copy");
    copy_dir(&root().join("models/default"), &dst);
    let path = dst.join("manifest.json");
    let mut manifest: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut manifest);
    std::fs::write(&path, serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
    dst
}

/// The first shop photo of each of the first `n` fixture products: `n` different images.
pub fn fixture_photos(n: usize) -> Vec<PathBuf> {
    let (_, products) = fixture_products();
    let photos: Vec<PathBuf> = products
        .iter()
        .filter_map(|p| p.shop.first().cloned())
        .take(n)
        .collect();
    assert_eq!(photos.len(), n, "the fixture set is too small");
    photos
}

/// Products with street photos, plus a couple of distractors without.
pub fn catalogue() -> Vec<FixtureProduct> {
    let (_, products) = fixture_products();
    let mut with_user: Vec<FixtureProduct> = products
        .iter()
        .filter(|p| !p.user.is_empty() && !p.shop.is_empty())
        .take(8)
        .cloned()
        .collect();
    with_user.extend(
        products
            .iter()
            .filter(|p| p.user.is_empty() && !p.shop.is_empty())
            .take(2)
            .cloned(),
    );
    assert!(with_user.len() >= 6, "the fixture set is too small");
    with_user
}

/// The tag only the first catalogue product carries, unknown to the model.
pub const OWN_TAG: &str = "brand:acme-own";

/// The uploaded catalogue: see [`seed_catalogue`].
pub struct Catalogue {
    /// Uploaded to [`MERCHANT`], in this order.
    pub products: Vec<FixtureProduct>,
    /// The 201 bodies of those uploads.
    pub created: Vec<Value>,
    /// The copy of `products[1]` uploaded to [`OTHER_MERCHANT`] with its first shop image.
    pub other: FixtureProduct,
}

impl Catalogue {
    /// The products that have street photos, in catalogue order.
    pub fn queries(&self) -> Vec<&FixtureProduct> {
        self.products
            .iter()
            .filter(|p| !p.user.is_empty())
            .collect()
    }

    /// The street photo the single-query tests search with.
    pub fn query_photo(&self) -> PathBuf {
        self.queries()[0].user[0].clone()
    }
}

/// Uploads [`catalogue`] to [`MERCHANT`]: product `i` is titled `Product {id}`, has the
/// fixture's tags (the first one also [`OWN_TAG`]), price `10 + i` and its shop images; then a
/// copy of `products[1]` to [`OTHER_MERCHANT`].
pub async fn seed_catalogue(app: &TestApp) -> Catalogue {
    let products = catalogue();
    let mut created = Vec::new();
    for (i, p) in products.iter().enumerate() {
        let mut tags = p.tags.clone();
        if i == 0 {
            tags.push(OWN_TAG.into());
        }
        let body = json!({"id": p.id, "title": format!("Product {}", p.id), "tags": tags, "attributes": {"price": 10 + i}});
        let r = app.create_product(MERCHANT, &body, &p.shop).await;
        created.push(r.assert_status(201).json);
    }
    let other = products[1].clone();
    let copy = json!({"id": other.id, "title": "copy", "tags": other.tags});
    app.create_product(OTHER_MERCHANT, &copy, &other.shop[..1])
        .await
        .assert_status(201);
    Catalogue {
        products,
        created,
        other,
    }
}

/// Uploads the first product of [`catalogue`] with its first shop image, titled `t`.
pub async fn seed_one_product(app: &TestApp) -> FixtureProduct {
    let p = catalogue().remove(0);
    let body = json!({"id": p.id, "title": "t", "tags": p.tags});
    let r = app.create_product(MERCHANT, &body, &p.shop[..1]).await;
    r.assert_status(201);
    p
}

/// A new app with the catalogue uploaded.
pub async fn spawn_seeded_app() -> (TestApp, Catalogue) {
    let app = spawn_app().await;
    let catalogue = seed_catalogue(&app).await;
    (app, catalogue)
}

/// Whether the bundle is a trained one (the preliminary bundle's eval.json has no figures), so
/// that retrieval quality can be asserted.
/// Whether the shipped bundle re-ranks searches that do not say (`manifest.rerank.default`,
/// absent meaning `true`).
pub fn shipped_rerank_default() -> bool {
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(root().join("models/default/manifest.json")).unwrap(),
    )
    .unwrap();
    manifest["rerank"]["default"].as_bool().unwrap_or(true)
}

pub fn trained_bundle() -> bool {
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(root().join("models/default/manifest.json")).unwrap(),
    )
    .unwrap();
    let eval = &manifest["evaluation"];
    let preliminary = eval.is_null()
        || eval
            .get("note")
            .is_some_and(|n| n.as_str().unwrap_or("").contains("preliminary"));
    if preliminary {
        eprintln!("the bundle is preliminary: retrieval quality is not asserted");
    }
    !preliminary
}

//! Shared helpers for the integration tests: start the real server on `127.0.0.1:0` with a
//! temporary data directory and the shipped bundle, and talk HTTP to it.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};

use snapshop::eval::{read_manifest, ManifestRow};
use snapshop::{Application, Config};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

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

/// A running server.
pub struct TestApp {
    pub addr: std::net::SocketAddr,
    pub base: String,
    pub client: reqwest::Client,
    pub data_dir: Arc<TempDir>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

pub fn test_config(data_dir: &Path) -> Config {
    let mut c = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.to_owned(),
        bundle: root().join("models/default"),
        intra_threads: 1,
        ..Config::default()
    };
    c.maintenance.interval_secs = 3600;
    c
}

/// Starts the server on a new temporary data directory.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(Arc::new(tempfile::tempdir().unwrap()), |_| {}).await
}

/// Starts the server on `data_dir`, with config changes.
pub async fn spawn_app_with(data_dir: Arc<TempDir>, tweak: impl FnOnce(&mut Config)) -> TestApp {
    init_logging();
    let mut config = test_config(data_dir.path());
    tweak(&mut config);
    let app = Application::build(config).await.expect("the app starts");
    let addr = app.local_addr();
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(app.run_until(async move {
        let _ = rx.await;
    }));
    TestApp {
        addr,
        base: format!("http://{addr}"),
        client: reqwest::Client::new(),
        data_dir,
        shutdown: Some(tx),
        handle: Some(handle),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
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

    pub async fn create_product(
        &self,
        merchant: &str,
        product: &serde_json::Value,
        images: &[PathBuf],
    ) -> reqwest::Response {
        let mut form = reqwest::multipart::Form::new().part(
            "product",
            reqwest::multipart::Part::text(product.to_string())
                .mime_str("application/json")
                .unwrap(),
        );
        for path in images {
            form = form.part("image", image_part(path));
        }
        self.client
            .post(self.url(&format!("/v1/merchants/{merchant}/products")))
            .multipart(form)
            .send()
            .await
            .unwrap()
    }

    /// Searches with a raw image body; `query` is the query string without `?`.
    pub async fn search(&self, image: &Path, query: &str) -> reqwest::Response {
        self.client
            .post(self.url(&format!("/v1/search?{query}")))
            .header("content-type", mime_of(image))
            .body(std::fs::read(image).unwrap())
            .send()
            .await
            .unwrap()
    }

    pub async fn search_json(&self, image: &Path, query: &str) -> serde_json::Value {
        let r = self.search(image, query).await;
        let status = r.status();
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(status, 200, "{body}");
        body
    }

    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

pub fn mime_of(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("png") => "image/png",
        Some("webp") => "image/webp",
        _ => "image/jpeg",
    }
}

pub fn image_part(path: &Path) -> reqwest::multipart::Part {
    reqwest::multipart::Part::bytes(std::fs::read(path).unwrap())
        .file_name(path.file_name().unwrap().to_string_lossy().into_owned())
        .mime_str(mime_of(path))
        .unwrap()
}

/// Asserts an error response's status and code.
pub async fn assert_error(r: reqwest::Response, status: u16, code: &str) -> serde_json::Value {
    let got = r.status().as_u16();
    let body: serde_json::Value = r.json().await.unwrap_or(serde_json::Value::Null);
    assert_eq!(got, status, "expected {status} {code}, got {got}: {body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    body
}

/// A labelled product of the fixture set.
#[derive(Debug, Clone)]
pub struct FixtureProduct {
    pub id: String,
    pub tags: Vec<String>,
    pub shop: Vec<PathBuf>,
    pub user: Vec<PathBuf>,
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

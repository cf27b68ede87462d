//! The service's one typed configuration.
//!
//! Layers, later wins: built-in defaults, then an optional TOML file, then `SNAPSHOP_*`
//! environment variables, then command-line flags. Nothing else in the crate reads the
//! environment for settings; everything gets a `Config` (or a part of it). The one exception:
//! an S3 image storage (`storage.images_url = "s3://…"`) takes its credentials, and what
//! `[storage]` leaves unset, from the `AWS_*` variables, as `object_store` reads them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Environment variables with this prefix override config keys. Nested keys use a double
/// underscore: `SNAPSHOP_SEARCH__MAX_K=50` sets `search.max_k`.
pub const ENV_PREFIX: &str = "SNAPSHOP_";

/// Variables with the prefix that are not config keys (read by clap or by logging).
const ENV_NOT_KEYS: &[&str] = &["SNAPSHOP_CONFIG", "SNAPSHOP_LOG", ADMIN_KEY_ENV];

/// The environment variable a bootstrap admin key may come from (`auth.bootstrap_admin_key`).
pub const ADMIN_KEY_ENV: &str = "SNAPSHOP_ADMIN_KEY";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("invalid value {value:?} in environment variable {var}: {message}")]
    Env {
        var: String,
        value: String,
        message: String,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Where the models run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Cpu,
    Cuda,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP server binds.
    pub listen: SocketAddr,
    /// Root of everything the service persists: `snapshop.db`, `images/`, `index/`.
    pub data_dir: PathBuf,
    /// The model bundle directory (see `models/BUNDLE.md`).
    pub bundle: PathBuf,
    /// `cpu` or `cuda`; cuda falls back to CPU with a warning when it cannot be used.
    pub device: DeviceKind,
    /// Path of `libonnxruntime.so`; unset means `ORT_DYLIB_PATH`, then
    /// `snapshop_inference::runtime::DEFAULT_DYLIB` (the pinned wheel in `./.venv`).
    pub ort_dylib: Option<PathBuf>,
    /// Intra-op threads per ONNX session; 0 lets ONNX Runtime choose.
    pub intra_threads: usize,
    /// Whether ONNX Runtime's idle intra-op threads spin before sleeping (its default).
    pub intra_spinning: bool,
    /// Log format on stderr.
    pub log_format: LogFormat,
    /// The catalogue store: `sqlite://PATH`, or `postgres://…` / `postgresql://…` (an existing
    /// Postgres database). Unset means `sqlite://<data_dir>/snapshop.db`.
    pub database_url: Option<String>,
    pub limits: Limits,
    pub search: SearchSettings,
    /// The inference queue in front of the models (`snapshop_inference::QueueConfig`).
    pub queue: snapshop_inference::QueueConfig,
    /// The ANN index (`snapshop_index::IndexConfig`; `dim` comes from the model).
    pub index: snapshop_index::IndexConfig,
    pub maintenance: Maintenance,
    pub auth: Auth,
    pub rate_limits: crate::auth::limit::RateLimits,
    pub quotas: Quotas,
    pub import: ImportSettings,
    pub feed: FeedSettings,
    pub storage: Storage,
}

/// The change feed a replica follows to apply other replicas' writes (`crate::feed`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeedSettings {
    /// Follow the feed: `auto` (on with Postgres, where replicas share the database; off with
    /// SQLite, where one process owns the file and its own writes reach its view directly),
    /// `on` or `off`.
    pub mode: FeedMode,
    /// This replica's name among those sharing the database (compaction waits for each).
    /// Unset: the host name, the process id and a random suffix.
    pub replica: Option<String>,
    /// Milliseconds between reads when no notification arrives (`LISTEN/NOTIFY` wakes the
    /// follower at once; polling covers notifications missed while disconnected).
    pub poll_ms: u64,
    /// Rows read per batch.
    pub batch: usize,
    /// `/readyz` answers 503 while the oldest change not yet applied is older than this.
    pub max_lag_secs: u64,
    /// Seconds between check-ins of this replica's cursor.
    pub checkin_secs: u64,
    /// A replica that has not checked in for this long is dropped from the compaction horizon
    /// (when it comes back it finds itself behind the compaction point and reloads its view).
    pub replica_timeout_secs: u64,
}

/// See [`FeedSettings::mode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeedMode {
    Auto,
    On,
    Off,
}

impl FeedSettings {
    /// Whether to follow the feed over a store of backend `backend`.
    pub fn follows(&self, backend: &str) -> bool {
        match self.mode {
            FeedMode::On => true,
            FeedMode::Off => false,
            FeedMode::Auto => backend == "postgres",
        }
    }
}

impl Default for FeedSettings {
    fn default() -> Self {
        Self {
            mode: FeedMode::Auto,
            replica: None,
            poll_ms: 500,
            batch: 1000,
            max_lag_secs: 30,
            checkin_secs: 5,
            replica_timeout_secs: 300,
        }
    }
}

/// Where the image files live (`src/files.rs`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Storage {
    /// Unset: `<data_dir>/images`. `file:///DIR`: that directory (replicas may share one).
    /// `s3://BUCKET[/PREFIX]`: an S3-compatible bucket, with credentials (and anything not set
    /// below) from the `AWS_*` environment variables.
    pub images_url: Option<String>,
    /// S3: the endpoint URL, for S3-compatible stores (MinIO, ...). Unset: AWS, or `AWS_ENDPOINT`.
    pub s3_endpoint: Option<String>,
    /// S3: the region. Unset: `AWS_DEFAULT_REGION`, else `us-east-1`.
    pub s3_region: Option<String>,
    /// S3: allow a plain `http://` endpoint (a local MinIO, say).
    pub s3_allow_http: bool,
}

/// Server-side import jobs (`POST /v1/merchants/{merchant}/imports`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImportSettings {
    /// The directory import files may name images under (relative paths and `file://` URIs);
    /// nothing outside it is read. Unset: an import may name only images already stored
    /// (`sha256:<hex>`).
    pub root: Option<PathBuf>,
    /// Products a job writes at once.
    pub concurrency: usize,
    /// Row errors kept per job (all are counted).
    pub max_errors_kept: usize,
    /// Seconds a runner holds a job without saving progress before another may take it over.
    pub lease_secs: u64,
}

impl Default for ImportSettings {
    fn default() -> Self {
        Self {
            root: None,
            concurrency: 4,
            max_errors_kept: 1000,
            lease_secs: 30,
        }
    }
}

/// Request and image limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest request body accepted, in bytes (413 `payload_too_large` beyond).
    pub max_body_bytes: usize,
    /// Largest single image file, in bytes.
    pub max_image_bytes: usize,
    /// Largest decoded image, in pixels (413 `image_too_large` beyond), checked from the header
    /// before decoding.
    pub max_pixels: u64,
    /// Longest decoded side, in pixels.
    pub max_side: u32,
    /// Most images in one product upload.
    pub max_images_per_request: usize,
    /// Whole-request timeout, in seconds (503 `timeout` beyond). It also bounds reading the
    /// body, so a body trickled byte by byte cannot hold a request open longer.
    pub request_timeout_secs: u64,
    /// A connection must send a request's complete headers within this many seconds of
    /// starting it (or of its previous response), or it is closed: slowloris clients cannot
    /// hold connections.
    pub header_read_timeout_secs: u64,
    /// Open connections at most; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Seconds in-flight requests get to finish at shutdown.
    pub shutdown_grace_secs: u64,
    /// Searches admitted at once; more get 503 `overloaded` at once.
    pub max_concurrent_searches: usize,
}

/// Search defaults and bounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchSettings {
    /// Results returned when `k` is not given.
    pub default_k: usize,
    /// Largest `k` accepted.
    pub max_k: usize,
    /// First-pass candidates re-ranked when `candidates` is not given (the paper's 256).
    pub default_candidates: usize,
    /// Largest `candidates` accepted.
    pub max_candidates: usize,
}

/// Background upkeep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Maintenance {
    /// Seconds between index maintenance checks (graph merges and rebuilds, snapshot saves).
    pub interval_secs: u64,
    /// Seconds between sweeps of unreferenced image files.
    pub sweep_interval_secs: u64,
    /// An unreferenced image file is deleted only once nobody wrote it for this long (it must
    /// be much longer than any request).
    pub file_grace_secs: u64,
}

/// Authentication: API keys, and what is open without one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Auth {
    /// No keys at all: every request may do everything. For development on a laptop only; the
    /// server logs a warning at start-up and on every request's span.
    pub dev_mode: bool,
    /// An admin key (at least 32 characters) stored at start-up when no admin key is active:
    /// the way to bootstrap a fresh deployment. Also `SNAPSHOP_ADMIN_KEY`.
    pub bootstrap_admin_key: Option<String>,
    /// A bearer token `/metrics` requires. Unset: `/metrics` is open, like `/healthz` and
    /// `/readyz`.
    pub metrics_token: Option<String>,
    /// Take the client address (for the per-address limits of requests without a valid key)
    /// from the last `X-Forwarded-For` entry. Only behind a proxy that sets it.
    pub trust_forwarded_for: bool,
    /// Browser origins every key may be used from (CORS), e.g. `https://shop.example`; `*`
    /// allows any. A search key's own `allowed_origins` add to these for that key.
    pub cors_origins: Vec<String>,
}

/// Default catalogue quotas per merchant (403 `quota_exceeded` beyond); an admin may set a
/// merchant's own (`PUT /v1/merchants/{merchant}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Quotas {
    pub max_products_per_merchant: i64,
    pub max_images_per_merchant: i64,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            max_products_per_merchant: 1_000_000,
            max_images_per_merchant: 5_000_000,
        }
    }
}

impl Quotas {
    pub fn store_quota(&self) -> snapshop_store::Quota {
        snapshop_store::Quota {
            max_products: self.max_products_per_merchant,
            max_images: self.max_images_per_merchant,
        }
    }
}

impl Default for Maintenance {
    fn default() -> Self {
        Self {
            interval_secs: 30,
            sweep_interval_secs: 600,
            file_grace_secs: 3600,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("data"),
            bundle: PathBuf::from("models/default"),
            device: DeviceKind::Cpu,
            ort_dylib: None,
            intra_threads: 0,
            intra_spinning: true,
            log_format: LogFormat::Text,
            database_url: None,
            limits: Limits::default(),
            search: SearchSettings::default(),
            queue: snapshop_inference::QueueConfig::default(),
            index: snapshop_index::IndexConfig::default(),
            maintenance: Maintenance::default(),
            auth: Auth::default(),
            rate_limits: crate::auth::limit::RateLimits::default(),
            quotas: Quotas::default(),
            import: ImportSettings::default(),
            feed: FeedSettings::default(),
            storage: Storage::default(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 32 * 1024 * 1024,
            max_image_bytes: 25 * 1024 * 1024,
            max_pixels: 50_000_000,
            max_side: 12_000,
            max_images_per_request: 32,
            request_timeout_secs: 60,
            header_read_timeout_secs: 10,
            max_connections: 1024,
            shutdown_grace_secs: 30,
            max_concurrent_searches: 64,
        }
    }
}

impl Default for SearchSettings {
    fn default() -> Self {
        Self {
            default_k: 20,
            max_k: 100,
            default_candidates: 256,
            max_candidates: 1024,
        }
    }
}

/// Values given on the command line; `None` leaves the lower layers in force.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    /// Address to listen on, e.g. 0.0.0.0:8080.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Data directory (database, image files, index snapshot).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Model bundle directory.
    #[arg(long)]
    pub bundle: Option<PathBuf>,
    /// Device for the models.
    #[arg(long, value_enum)]
    pub device: Option<DeviceKind>,
    /// Path of libonnxruntime.so.
    #[arg(long)]
    pub ort_dylib: Option<PathBuf>,
    /// Intra-op threads per ONNX session (0 = ONNX Runtime's choice).
    #[arg(long)]
    pub intra_threads: Option<usize>,
    /// Whether idle intra-op threads spin before sleeping (`--intra-spinning false` turns it off).
    #[arg(long)]
    pub intra_spinning: Option<bool>,
    /// Log format.
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Catalogue store URL (default: sqlite://<data-dir>/snapshop.db).
    #[arg(long)]
    pub database_url: Option<String>,
}

impl Config {
    /// Builds the configuration from all layers: defaults, `file`, `env`, `overrides`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let mut value = toml::Value::try_from(Config::default())
            .expect("the default config serialises; this is a bug");
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            let layer: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::File {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
            merge(&mut value, toml::Value::Table(layer));
            // Check the file on its own so that its errors name the file.
            Config::deserialize(value.clone()).map_err(|e| ConfigError::File {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        }
        let env: Vec<(String, String)> = env.into_iter().collect();
        let admin_key = env
            .iter()
            .find(|(k, _)| k == ADMIN_KEY_ENV)
            .map(|(_, v)| v.clone());
        let mut env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX) && !ENV_NOT_KEYS.contains(&k.as_str()))
            .collect();
        env.sort();
        for (var, raw) in env {
            apply_env(&mut value, &var, &raw)?;
        }
        let mut config =
            Config::deserialize(value).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if let Some(key) = admin_key.filter(|k| !k.is_empty()) {
            config.auth.bootstrap_admin_key = Some(key);
        }
        config.apply(overrides);
        config.validate()?;
        Ok(config)
    }

    fn apply(&mut self, o: &Overrides) {
        if let Some(v) = o.listen {
            self.listen = v;
        }
        if let Some(v) = &o.data_dir {
            self.data_dir = v.clone();
        }
        if let Some(v) = &o.bundle {
            self.bundle = v.clone();
        }
        if let Some(v) = o.device {
            self.device = v;
        }
        if let Some(v) = &o.ort_dylib {
            self.ort_dylib = Some(v.clone());
        }
        if let Some(v) = o.intra_threads {
            self.intra_threads = v;
        }
        if let Some(v) = o.intra_spinning {
            self.intra_spinning = v;
        }
        if let Some(v) = o.log_format {
            self.log_format = v;
        }
        if let Some(v) = &o.database_url {
            self.database_url = Some(v.clone());
        }
    }

    /// Rejects settings that cannot work together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.search;
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if s.default_k == 0 || s.default_k > s.max_k {
            return bad("search.default_k must be between 1 and search.max_k");
        }
        if s.default_candidates == 0 || s.default_candidates > s.max_candidates {
            return bad("search.default_candidates must be between 1 and search.max_candidates");
        }
        if self.limits.max_body_bytes == 0 || self.limits.max_image_bytes == 0 {
            return bad("limits.max_body_bytes and limits.max_image_bytes must be positive");
        }
        if self.limits.request_timeout_secs == 0
            || self.limits.header_read_timeout_secs == 0
            || self.limits.max_connections == 0
        {
            return bad("limits.request_timeout_secs, header_read_timeout_secs and max_connections must be positive");
        }
        if self.limits.max_concurrent_searches == 0 || self.queue.capacity == 0 {
            return bad("limits.max_concurrent_searches and queue.capacity must be positive");
        }
        if self.queue.max_batch_images == 0 || self.queue.max_batch_queries == 0 {
            return bad("queue batch sizes must be positive");
        }
        if self.queue.max_queue_delay_us > snapshop_inference::queue::MAX_QUEUE_DELAY_US {
            return bad("queue.max_queue_delay_us must be at most 1000000 (1 s)");
        }
        if !(0.0..=1.0).contains(&self.index.exact_filter_fraction)
            || !(0.0..=1.0).contains(&self.index.rebuild_tombstone_fraction)
        {
            return bad("index fractions must lie in [0, 1]");
        }
        let mut index = self.index.clone();
        index.dim = 1;
        index
            .validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if self.maintenance.interval_secs == 0 || self.maintenance.sweep_interval_secs == 0 {
            return bad("maintenance intervals must be positive");
        }
        self.rate_limits.validate().map_err(ConfigError::Invalid)?;
        if self.import.concurrency == 0 || self.import.lease_secs == 0 {
            return bad("import.concurrency and import.lease_secs must be positive");
        }
        if self.auth.bootstrap_admin_key.as_ref().is_some_and(|k| {
            k.len() < crate::auth::MIN_BOOTSTRAP_LEN || k.contains(char::is_whitespace)
        }) {
            return bad("auth.bootstrap_admin_key (SNAPSHOP_ADMIN_KEY) must be at least 32 characters, without spaces");
        }
        if self.quotas.max_products_per_merchant < 0 || self.quotas.max_images_per_merchant < 0 {
            return bad("quotas must not be negative");
        }
        if let Some(url) = &self.database_url {
            let known = ["sqlite:", "postgres://", "postgresql://"];
            if !known.iter().any(|scheme| url.starts_with(scheme)) {
                return bad("database_url must be sqlite://PATH or postgres://USER@HOST:PORT/DB");
            }
        }
        crate::files::Location::parse(self.storage.images_url.as_deref())
            .map_err(ConfigError::Invalid)?;
        Ok(())
    }

    /// The store URL in force.
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("snapshop.db").display()))
    }

    pub fn images_dir(&self) -> PathBuf {
        self.data_dir.join("images")
    }

    pub fn index_dir(&self) -> PathBuf {
        self.data_dir.join("index")
    }
}

fn merge(base: &mut toml::Value, layer: toml::Value) {
    match (base, layer) {
        (toml::Value::Table(b), toml::Value::Table(l)) => {
            for (k, v) in l {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, l) => *b = l,
    }
}

/// Sets one key from `SNAPSHOP_A__B=raw`, parsed as the type the key already has.
fn apply_env(value: &mut toml::Value, var: &str, raw: &str) -> Result<(), ConfigError> {
    let err = |message: String| ConfigError::Env {
        var: var.to_owned(),
        value: raw.to_owned(),
        message,
    };
    let path: Vec<String> = var[ENV_PREFIX.len()..]
        .split("__")
        .map(|s| s.to_ascii_lowercase())
        .collect();
    let mut table = value
        .as_table_mut()
        .expect("config is a table; this is a bug");
    for (i, key) in path.iter().enumerate() {
        let last = i + 1 == path.len();
        if last {
            let parsed = match table.get(key) {
                Some(toml::Value::Integer(_)) => raw
                    .trim()
                    .parse::<i64>()
                    .map(toml::Value::Integer)
                    .map_err(|e| err(e.to_string()))?,
                Some(toml::Value::Float(_)) => raw
                    .trim()
                    .parse::<f64>()
                    .map(toml::Value::Float)
                    .map_err(|e| err(e.to_string()))?,
                Some(toml::Value::Boolean(_)) => raw
                    .trim()
                    .parse::<bool>()
                    .map(toml::Value::Boolean)
                    .map_err(|e| err(e.to_string()))?,
                Some(toml::Value::Table(_)) => {
                    return Err(err("names a section, not a key".into()));
                }
                // Strings, and optional keys that are unset (only string-valued ones exist).
                _ => toml::Value::String(raw.to_owned()),
            };
            table.insert(key.clone(), parsed);
        } else {
            table = match table.get_mut(key) {
                Some(toml::Value::Table(t)) => t,
                _ => return Err(err(format!("no config section `{key}`"))),
            };
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::load(None, Vec::new(), &Overrides::default()).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.search.default_candidates, 256);
    }

    #[test]
    fn the_example_file_lists_the_defaults() {
        let file = concat!(env!("CARGO_MANIFEST_DIR"), "/config/snapshop.example.toml");
        let c = Config::load(Some(Path::new(file)), Vec::new(), &Overrides::default()).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.queue, snapshop_inference::QueueConfig::default());
        assert_eq!(c.queue.capacity, 256);
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("snapshop.toml");
        std::fs::write(
            &file,
            "data_dir = \"/from/file\"\nbundle = \"/bundle/file\"\n[search]\nmax_k = 50\ndefault_k = 10\n[index]\nef_search = 100\n",
        )
        .unwrap();
        let e = env(&[
            ("SNAPSHOP_DATA_DIR", "/from/env"),
            ("SNAPSHOP_SEARCH__MAX_K", "60"),
            ("SNAPSHOP_INDEX__EXACT_FILTER_FRACTION", "0.25"),
            ("SNAPSHOP_ORT_DYLIB", "/lib/ort.so"),
            ("SNAPSHOP_CONFIG", "ignored"),
            ("OTHER", "ignored"),
        ]);
        let o = Overrides {
            data_dir: Some("/from/flag".into()),
            device: Some(DeviceKind::Cuda),
            ..Default::default()
        };
        let c = Config::load(Some(&file), e, &o).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/from/flag"));
        assert_eq!(c.bundle, PathBuf::from("/bundle/file"));
        assert_eq!(c.search.max_k, 60);
        assert_eq!(c.search.default_k, 10);
        assert_eq!(c.index.ef_search, 100);
        assert_eq!(c.index.exact_filter_fraction, 0.25);
        assert_eq!(c.ort_dylib, Some(PathBuf::from("/lib/ort.so")));
        assert_eq!(c.device, DeviceKind::Cuda);
    }

    #[test]
    fn the_bootstrap_admin_key_comes_from_its_own_variable_and_is_checked() {
        let key = "sk_admin_0123456789abcdefghijklmnopqrstuvwxyz";
        let c = Config::load(None, env(&[(ADMIN_KEY_ENV, key)]), &Overrides::default()).unwrap();
        assert_eq!(c.auth.bootstrap_admin_key.as_deref(), Some(key));
        let err = Config::load(
            None,
            env(&[(ADMIN_KEY_ENV, "short")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("32 characters"), "{err}");
        let c = Config::load(
            None,
            env(&[
                ("SNAPSHOP_AUTH__DEV_MODE", "true"),
                ("SNAPSHOP_QUOTAS__MAX_IMAGES_PER_MERCHANT", "7"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert!(c.auth.dev_mode);
        assert_eq!(c.quotas.max_images_per_merchant, 7);
        let bad = env(&[("SNAPSHOP_LIMITS__HEADER_READ_TIMEOUT_SECS", "0")]);
        assert!(Config::load(None, bad, &Overrides::default()).is_err());
        let delay = env(&[("SNAPSHOP_QUEUE__MAX_QUEUE_DELAY_US", "2000")]);
        let c = Config::load(None, delay, &Overrides::default()).unwrap();
        assert_eq!(c.queue.max_queue_delay_us, 2000);
        let too_long = env(&[("SNAPSHOP_QUEUE__MAX_QUEUE_DELAY_US", "1000001")]);
        let err = Config::load(None, too_long, &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("max_queue_delay_us"), "{err}");
        let spin = env(&[("SNAPSHOP_INTRA_SPINNING", "false")]);
        assert!(
            !Config::load(None, spin, &Overrides::default())
                .unwrap()
                .intra_spinning
        );
    }

    #[test]
    fn bad_layers_are_reported() {
        let e = env(&[("SNAPSHOP_SEARCH__MAX_K", "many")]);
        let err = Config::load(None, e, &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("SNAPSHOP_SEARCH__MAX_K"), "{err}");

        let e = env(&[("SNAPSHOP_NO_SUCH_KEY", "1")]);
        assert!(Config::load(None, e, &Overrides::default()).is_err());

        let e = env(&[("SNAPSHOP_NOPE__KEY", "1")]);
        assert!(Config::load(None, e, &Overrides::default()).is_err());

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "[search]\nmax_kk = 3\n").unwrap();
        let err = Config::load(Some(&file), Vec::new(), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("bad.toml"), "{err}");

        for (url, ok) in [
            ("sqlite:///tmp/x.db", true),
            ("postgres://snapshop@127.0.0.1:5432/shop", true),
            ("postgresql://h/db", true),
            ("mysql://h/db", false),
        ] {
            let e = env(&[("SNAPSHOP_DATABASE_URL", url)]);
            assert_eq!(
                Config::load(None, e, &Overrides::default()).is_ok(),
                ok,
                "{url}"
            );
        }

        for (url, ok) in [
            ("file:///srv/images", true),
            ("s3://bucket/prefix", true),
            ("file://srv/images", false),
            ("gs://bucket", false),
        ] {
            let e = env(&[("SNAPSHOP_STORAGE__IMAGES_URL", url)]);
            assert_eq!(
                Config::load(None, e, &Overrides::default()).is_ok(),
                ok,
                "{url}"
            );
        }
        let e = env(&[
            ("SNAPSHOP_STORAGE__IMAGES_URL", "s3://b"),
            ("SNAPSHOP_STORAGE__S3_ALLOW_HTTP", "true"),
            ("SNAPSHOP_STORAGE__S3_ENDPOINT", "http://127.0.0.1:9000"),
        ]);
        let c = Config::load(None, e, &Overrides::default()).unwrap();
        assert!(c.storage.s3_allow_http);
        assert_eq!(
            c.storage.s3_endpoint.as_deref(),
            Some("http://127.0.0.1:9000")
        );

        let e = env(&[("SNAPSHOP_SEARCH__DEFAULT_K", "500")]);
        assert!(matches!(
            Config::load(None, e, &Overrides::default()),
            Err(ConfigError::Invalid(_))
        ));
    }
}

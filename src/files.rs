//! The image files: content-addressed (`ab/cd/<sha256>.<ext>`) and kept so that a later model
//! can re-embed them, behind the `object_store` crate. `storage.images_url` says where: unset,
//! the directory `<data-dir>/images`; `file:///DIR`, another local directory (which several
//! replicas may share); `s3://BUCKET/PREFIX`, an S3-compatible bucket. Rows keep the path
//! `images/ab/cd/<sha256>.<ext>` (relative to the data directory, as before there was a choice);
//! an object's key is that path without `images/`, so every existing data directory still works.
//!
//! A file's lifetime is tied to the committed rows by a background sweep, never by the request
//! that deletes a product: the same bytes are often shared by several products (variants,
//! re-listings), and a concurrent create may be about to commit a row that needs a file another
//! request just stopped using. Writing a file (or finding it present) refreshes its modification
//! time, and the sweep only deletes files that no row refers to *and* that nobody has written for
//! a grace period much longer than any request. A local file is touched; an S3 object's
//! `LastModified` changes only with a PUT, so a present object is put again (the same bytes)
//! once it is older than half the grace period: whoever stores a file can count on it for at
//! least half the grace period. Replicas that share a directory or bucket must share the catalogue
//! store too: the sweep deletes what *its* store does not refer to. This module must never delete
//! a referenced file.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use bytes::Bytes;
use futures_util::StreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions};
use snapshop_store::CatalogStore;

use crate::config::Config;
use crate::error::{Coded, ErrorCode};

/// How many paths one `referenced_paths` query checks.
const SWEEP_BATCH: usize = 512;

/// The prefix of every stored path (relative to the data directory); not part of the key.
const PREFIX: &str = "images/";

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct ImageFiles {
    store: Arc<dyn ObjectStore>,
    /// The same store when it is a local directory, whose files are touched rather than put
    /// again.
    local: Option<Arc<LocalFileSystem>>,
    /// A present object written longer ago than this is put again by [`Self::store`] (stores
    /// other than local directories, whose modification time only a put changes).
    refresh_after: Duration,
    /// Where the files are, for messages.
    location: Arc<str>,
}

/// Where the image files are: `storage.images_url`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// `<data-dir>/images` (no `images_url`).
    DataDir,
    /// `file:///DIR`: a local directory.
    Dir(PathBuf),
    /// `s3://BUCKET[/PREFIX]`.
    S3 { bucket: String, prefix: String },
}

const URL_FORMS: &str = "storage.images_url must be file:///ABSOLUTE/DIR or s3://BUCKET[/PREFIX]";

impl Location {
    pub fn parse(url: Option<&str>) -> Result<Self, String> {
        let Some(url) = url else {
            return Ok(Location::DataDir);
        };
        let bad = |why: &str| format!("{URL_FORMS}, not {url:?}: {why}");
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(bad("the directory must be absolute (file:///srv/images)"));
            }
            return Ok(Location::Dir(PathBuf::from(path)));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("no bucket"));
            }
            let prefix = prefix.trim_matches('/');
            if !prefix.is_empty() {
                Path::parse(prefix).map_err(|e| bad(&e.to_string()))?;
            }
            return Ok(Location::S3 {
                bucket: bucket.to_owned(),
                prefix: prefix.to_owned(),
            });
        }
        Err(bad("unknown scheme"))
    }
}

/// A failed read or write of an image file.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// A row names a file the storage does not have.
    #[error("image file {path} is not in {location}")]
    NotFound { path: String, location: String },
    /// The storage failed or refused (I/O, network, credentials): a retry may succeed. The
    /// message is the client's (503), so it names no detail; the cause is its source.
    #[error("the image file storage failed or does not answer; retry later")]
    Unavailable(#[source] StorageFailure),
    /// Anything else (a bug, or a store that does not implement what is asked).
    #[error("image file {path}: {source}")]
    Other {
        path: String,
        source: object_store::Error,
    },
    #[error("{0:?} is not an image file path (images/…)")]
    BadPath(String),
}

/// What failed where, behind [`FilesError::Unavailable`] (for the log).
#[derive(Debug, thiserror::Error)]
#[error("image file {path} in {location}")]
pub struct StorageFailure {
    path: String,
    location: String,
    source: object_store::Error,
}

impl FilesError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, FilesError::NotFound { .. })
    }
}

impl Coded for FilesError {
    fn code(&self) -> ErrorCode {
        match self {
            FilesError::Unavailable { .. } => ErrorCode::ImageStorageUnavailable,
            // A row whose file is gone is the server's fault, as it always was.
            FilesError::NotFound { .. } | FilesError::Other { .. } | FilesError::BadPath(_) => {
                ErrorCode::Internal
            }
        }
    }
}

impl ImageFiles {
    /// The image files `config` names (`storage`; the grace period of `maintenance`). A local
    /// directory is created when missing. Builds no connection: a bucket that cannot be reached
    /// shows in the first request that needs it (503 `image_storage_unavailable`).
    pub fn open(config: &Config) -> anyhow::Result<Self> {
        let grace = Duration::from_secs(config.maintenance.file_grace_secs);
        let s = &config.storage;
        let location = Location::parse(s.images_url.as_deref()).map_err(anyhow::Error::msg)?;
        match location {
            Location::DataDir => Self::local(&config.data_dir.join("images")),
            Location::Dir(dir) => Self::local(&dir),
            Location::S3 { bucket, prefix } => {
                let s3 = s3_builder(s, &bucket)
                    .build()
                    .with_context(|| format!("cannot use the image storage s3://{bucket}"))?;
                Ok(Self::s3(s3, &bucket, &prefix, grace))
            }
        }
    }

    /// The files in an S3 bucket, under `prefix`.
    fn s3(s3: object_store::aws::AmazonS3, bucket: &str, prefix: &str, grace: Duration) -> Self {
        let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
            Arc::new(s3)
        } else {
            Arc::new(object_store::prefix::PrefixStore::new(
                s3,
                Path::from(prefix),
            ))
        };
        Self::with_store(store, grace / 2, &format!("s3://{bucket}/{prefix}"))
    }

    /// The files in the local directory `dir`, created when missing.
    pub fn local(dir: &FsPath) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the image directory {}", dir.display()))?;
        let fs = Arc::new(
            LocalFileSystem::new_with_prefix(dir)
                .with_context(|| format!("cannot use the image directory {}", dir.display()))?,
        );
        Ok(Self {
            store: fs.clone(),
            local: Some(fs),
            refresh_after: Duration::ZERO,
            location: dir.display().to_string().into(),
        })
    }

    /// The files in any other store; a present object older than `refresh_after` is put again
    /// when stored (see the module documentation).
    pub fn with_store(
        store: Arc<dyn ObjectStore>,
        refresh_after: Duration,
        location: &str,
    ) -> Self {
        Self {
            store,
            local: None,
            refresh_after,
            location: location.into(),
        }
    }

    fn key(&self, relative: &str) -> Result<Path, FilesError> {
        // Exactly the key the path names: no `..`, no empty or leading or trailing segments.
        relative
            .strip_prefix(PREFIX)
            .and_then(|k| {
                Path::parse(k)
                    .ok()
                    .filter(|p| !k.is_empty() && p.as_ref() == k)
            })
            .ok_or_else(|| FilesError::BadPath(relative.to_owned()))
    }

    fn error(&self, relative: &str, e: object_store::Error) -> FilesError {
        use object_store::Error as E;
        let (path, location) = (relative.to_owned(), self.location.to_string());
        match e {
            E::NotFound { .. } => FilesError::NotFound { path, location },
            E::Generic { .. } | E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
                FilesError::Unavailable(StorageFailure {
                    path,
                    location,
                    source: e,
                })
            }
            _ => FilesError::Other { path, source: e },
        }
    }

    /// Writes the file unless it is there already (same name, same content), and in both cases
    /// marks it as just used (see the module documentation). A write never leaves a partial
    /// file: the local backend writes a staging file and links it in place, S3 puts are atomic.
    pub async fn store(&self, relative: &str, bytes: Bytes) -> Result<(), FilesError> {
        let key = self.key(relative)?;
        let err = |e| self.error(relative, e);
        if let Some(local) = &self.local {
            if touch(local, &key).await.map_err(err)? {
                return Ok(());
            }
            let create = PutOptions::from(PutMode::Create);
            return match self.store.put_opts(&key, bytes.into(), create).await {
                Ok(_) => Ok(()),
                // Written by someone else a moment ago: just as fresh.
                Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
                Err(e) => Err(err(e)),
            };
        }
        match self.store.head(&key).await {
            Ok(meta) if !older_than(meta.last_modified.into(), self.refresh_after) => {
                return Ok(());
            }
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(err(e)),
        }
        // Absent, or present but due for a refresh: an unconditional put. The bytes are the
        // same whoever writes them (content addressing), so racing writers agree, and no
        // conditional-put support is asked of the S3-compatible store.
        self.store
            .put_opts(&key, bytes.into(), PutMode::Overwrite.into())
            .await
            .map(drop)
            .map_err(err)
    }

    /// Reads a stored file.
    pub async fn read(&self, relative: &str) -> Result<Bytes, FilesError> {
        let key = self.key(relative)?;
        let got = self
            .store
            .get(&key)
            .await
            .map_err(|e| self.error(relative, e))?;
        got.bytes().await.map_err(|e| self.error(relative, e))
    }

    /// Deletes the files that no row refers to and that were not written for `grace`. Returns
    /// how many it deleted. The listing is checked against the store as it comes, one batch at
    /// a time.
    pub async fn sweep(&self, store: &dyn CatalogStore, grace: Duration) -> anyhow::Result<usize> {
        let mut listing = self.store.list(None);
        let mut batch = Vec::with_capacity(SWEEP_BATCH);
        let mut deleted = 0;
        let mut done = false;
        while !done {
            match listing.next().await {
                Some(Ok(meta)) if older_than(meta.last_modified.into(), grace) => {
                    batch.push(format!("{PREFIX}{}", meta.location));
                }
                Some(Ok(_)) => {}
                // A file name that is no object key (not UTF-8, say): not ours, left alone.
                Some(Err(e @ object_store::Error::InvalidPath { .. })) => {
                    tracing::debug!(error = %e, "image sweep: skipping a file");
                }
                Some(Err(e)) => {
                    return Err(e).with_context(|| format!("cannot list {}", self.location));
                }
                None => done = true,
            }
            if batch.len() >= SWEEP_BATCH || (done && !batch.is_empty()) {
                deleted += self.delete_unreferenced(store, &batch, grace).await?;
                batch.clear();
            }
        }
        if deleted > 0 {
            tracing::info!(files = deleted, "swept unreferenced image files");
        }
        Ok(deleted)
    }

    /// Deletes those of `paths` that no row refers to, once more checked to be old.
    async fn delete_unreferenced(
        &self,
        store: &dyn CatalogStore,
        paths: &[String],
        grace: Duration,
    ) -> anyhow::Result<usize> {
        let referenced = store.referenced_paths(paths).await?;
        let mut deleted = 0;
        for rel in paths.iter().filter(|p| !referenced.contains(*p)) {
            let key = self.key(rel)?;
            // Re-check right before deleting: a create may have refreshed it meanwhile.
            match self.store.head(&key).await {
                Ok(meta) if older_than(meta.last_modified.into(), grace) => {}
                Ok(_) | Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => {
                    tracing::warn!(path = rel, error = %e, "cannot check an unreferenced image file");
                    continue;
                }
            }
            match self.store.delete(&key).await {
                Ok(()) => deleted += 1,
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    tracing::warn!(path = rel, error = %e, "cannot delete an unreferenced image file")
                }
            }
        }
        Ok(deleted)
    }
}

/// S3 as `storage` says, the rest (credentials above all) from the `AWS_*` environment variables.
fn s3_builder(s: &crate::config::Storage, bucket: &str) -> object_store::aws::AmazonS3Builder {
    let mut builder = object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        // Fail within seconds, not the default three minutes, when the storage does not
        // answer: the request gets a 503 `image_storage_unavailable` rather than its timeout.
        .with_retry(object_store::RetryConfig {
            max_retries: 3,
            retry_timeout: Duration::from_secs(15),
            ..Default::default()
        });
    if let Some(endpoint) = &s.s3_endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    if let Some(region) = &s.s3_region {
        builder = builder.with_region(region);
    }
    if s.s3_allow_http {
        builder = builder.with_allow_http(true);
    }
    builder
}

/// Sets a local file's modification time to now; false when there is no such file.
async fn touch(local: &LocalFileSystem, key: &Path) -> Result<bool, object_store::Error> {
    let path = local.path_to_filesystem(key)?;
    let touched = tokio::task::spawn_blocking(move || {
        match std::fs::File::options().write(true).open(&path) {
            Ok(f) => f.set_modified(SystemTime::now()).map(|()| true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    })
    .await?;
    touched.map_err(|e| object_store::Error::Generic {
        store: "LocalFileSystem",
        source: Box::new(e),
    })
}

/// Whether `written` lies at least `age` in the past.
fn older_than(written: SystemTime, age: Duration) -> bool {
    SystemTime::now()
        .duration_since(written)
        .is_ok_and(|elapsed| elapsed >= age)
}

#[cfg(test)]
mod tests {
    use super::*;
    use snapshop_store::CatalogStore;

    fn rel(content: &[u8]) -> String {
        crate::images::relative_path(&crate::images::sha256_hex(content), "jpeg")
    }

    fn age(path: &FsPath, by: Duration) {
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(SystemTime::now() - by)
            .unwrap();
    }

    fn is_old(path: &FsPath) -> bool {
        let m = std::fs::metadata(path).unwrap().modified().unwrap();
        older_than(m, Duration::from_secs(60))
    }

    async fn sqlite(dir: &FsPath) -> Arc<dyn CatalogStore> {
        let url = format!("sqlite://{}", dir.join("snapshop.db").display());
        snapshop_store::open(&url).await.unwrap()
    }

    fn config(data_dir: &FsPath, images_url: Option<String>) -> Config {
        let mut c = Config {
            data_dir: data_dir.to_owned(),
            ..Config::default()
        };
        c.storage.images_url = images_url;
        c
    }

    #[test]
    fn images_urls_are_parsed() {
        assert_eq!(Location::parse(None), Ok(Location::DataDir));
        assert_eq!(
            Location::parse(Some("file:///srv/images")),
            Ok(Location::Dir("/srv/images".into()))
        );
        assert_eq!(
            Location::parse(Some("s3://bucket")),
            Ok(Location::S3 {
                bucket: "bucket".into(),
                prefix: String::new()
            })
        );
        assert_eq!(
            Location::parse(Some("s3://bucket/shop/images/")),
            Ok(Location::S3 {
                bucket: "bucket".into(),
                prefix: "shop/images".into()
            })
        );
        for bad in [
            "file://relative/dir",
            "/srv/images",
            "s3://",
            "s3:///prefix",
            "s3://b/a/../c",
            "gs://bucket",
        ] {
            let err = Location::parse(Some(bad)).unwrap_err();
            assert!(err.contains("storage.images_url"), "{bad}: {err}");
        }
    }

    #[tokio::test]
    async fn the_default_is_the_data_directorys_images_layout() {
        let dir = tempfile::tempdir().unwrap();
        let files = ImageFiles::open(&config(dir.path(), None)).unwrap();
        let rel = rel(b"x");
        files.store(&rel, Bytes::from_static(b"x")).await.unwrap();
        // Exactly where rows have always said, relative to the data directory.
        assert_eq!(std::fs::read(dir.path().join(&rel)).unwrap(), b"x");
        assert!(rel.starts_with("images/"));
    }

    #[tokio::test]
    async fn store_is_idempotent_and_refreshes() {
        let dir = tempfile::tempdir().unwrap();
        let files = ImageFiles::local(&dir.path().join("images")).unwrap();
        let rel = rel(b"x");
        files.store(&rel, Bytes::from_static(b"x")).await.unwrap();
        let path = dir.path().join(&rel);
        age(&path, Duration::from_secs(3600));
        assert!(is_old(&path));
        files.store(&rel, Bytes::from_static(b"x")).await.unwrap();
        assert!(!is_old(&path), "refreshed");
        assert_eq!(files.read(&rel).await.unwrap(), &b"x"[..]);
        // Nothing but the file itself is left in its directory (no staging files).
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[tokio::test]
    async fn missing_files_and_bad_paths_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let files = ImageFiles::local(&dir.path().join("images")).unwrap();
        let err = files.read(&rel(b"nothing")).await.unwrap_err();
        assert!(err.is_not_found(), "{err}");
        assert_eq!(err.code(), ErrorCode::Internal);
        for bad in [
            "elsewhere/ab/cd/x.jpeg",
            "images/../snapshop.db",
            "images//x",
            "images/x/",
            "images/",
        ] {
            let err = files.read(bad).await.unwrap_err();
            assert!(matches!(err, FilesError::BadPath(_)), "{bad}: {err}");
            assert!(files.store(bad, Bytes::new()).await.is_err());
        }
    }

    /// S3 as `storage` configures it, with static credentials.
    fn s3(
        storage: &crate::config::Storage,
        bucket: &str,
        prefix: &str,
        grace: Duration,
    ) -> ImageFiles {
        let s3 = s3_builder(storage, bucket)
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .build()
            .unwrap();
        ImageFiles::s3(s3, bucket, prefix, grace)
    }

    #[tokio::test]
    async fn an_unreachable_store_is_a_503() {
        // Nothing listens on port 9 of localhost: every request is refused at once.
        let storage = crate::config::Storage {
            images_url: Some("s3://bucket/prefix".into()),
            s3_endpoint: Some("http://127.0.0.1:9".into()),
            s3_region: Some("us-east-1".into()),
            s3_allow_http: true,
        };
        let files = s3(&storage, "bucket", "prefix", Duration::from_secs(3600));
        let err = files.read(&rel(b"x")).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::ImageStorageUnavailable, "{err}");
        // The client's message names nothing of the storage; the log's chain does.
        assert!(!err.to_string().contains("127.0.0.1"), "{err}");
        let chain = format!("{:#}", anyhow::Error::new(err));
        assert!(
            chain.contains("s3://bucket/prefix") && chain.contains("127.0.0.1:9"),
            "{chain}"
        );
        let err = files.store(&rel(b"x"), Bytes::new()).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::ImageStorageUnavailable, "{err}");
    }

    #[tokio::test]
    async fn sweep_keeps_referenced_and_fresh_files_and_deletes_old_unreferenced_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite(dir.path()).await;
        let files = ImageFiles::open(&config(dir.path(), None)).unwrap();
        // No rows refer to any of these: the store is empty.
        let (old, fresh) = (rel(b"old"), rel(b"fresh"));
        files.store(&old, Bytes::from_static(b"old")).await.unwrap();
        files
            .store(&fresh, Bytes::from_static(b"fresh"))
            .await
            .unwrap();
        age(&dir.path().join(&old), Duration::from_secs(3600));
        // A leftover of the old std::fs writer (a temporary file), old as well.
        let leftover = dir.path().join(&old).with_file_name(".tmpAbC123");
        std::fs::write(&leftover, b"partial").unwrap();
        age(&leftover, Duration::from_secs(3600));
        let grace = Duration::from_secs(60);
        assert_eq!(files.sweep(store.as_ref(), grace).await.unwrap(), 2);
        assert!(!dir.path().join(&old).exists());
        assert!(!leftover.exists());
        assert!(dir.path().join(&fresh).exists(), "a fresh file was swept");
        // Nothing left that may go.
        assert_eq!(files.sweep(store.as_ref(), grace).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn sweep_never_deletes_a_referenced_file() {
        use crate::config::Quotas;
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite(dir.path()).await;
        let files = ImageFiles::open(&config(dir.path(), None)).unwrap();
        let bytes = Bytes::from_static(b"kept");
        let path = rel(&bytes);
        files.store(&path, bytes.clone()).await.unwrap();
        let image = snapshop_store::NewImage {
            sha256: crate::images::sha256_hex(&bytes),
            byte_size: bytes.len() as i64,
            width: 1,
            height: 1,
            format: "jpeg".into(),
            path: path.clone(),
            embedding: vec![0.0; 4],
        };
        let product = snapshop_store::NewProduct {
            merchant: "m".into(),
            external_id: "p".into(),
            title: "P".into(),
            attributes: serde_json::json!({}),
            tags: vec![],
            quota: Quotas::default().store_quota(),
        };
        store
            .create_product(product, vec![image], "test-model")
            .await
            .unwrap();
        age(&dir.path().join(&path), Duration::from_secs(3600));
        assert_eq!(
            files
                .sweep(store.as_ref(), Duration::from_secs(60))
                .await
                .unwrap(),
            0
        );
        assert_eq!(files.read(&path).await.unwrap(), bytes);
    }

    /// Replicas with data directories of their own share one `images_url` directory: what one
    /// stores, the other reads, and the other's sweep respects its grace period.
    #[tokio::test]
    async fn replicas_share_one_images_url_directory() {
        let (a_dir, b_dir, shared) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let url = format!("file://{}", shared.path().join("images").display());
        let a = ImageFiles::open(&config(a_dir.path(), Some(url.clone()))).unwrap();
        let b = ImageFiles::open(&config(b_dir.path(), Some(url))).unwrap();
        let (one, two) = (rel(b"one"), rel(b"two"));
        a.store(&one, Bytes::from_static(b"one")).await.unwrap();
        b.store(&two, Bytes::from_static(b"two")).await.unwrap();
        assert_eq!(b.read(&one).await.unwrap(), &b"one"[..]);
        assert_eq!(a.read(&two).await.unwrap(), &b"two"[..]);
        // Not in either data directory: only in the shared one, under the same keys.
        assert!(!a_dir.path().join("images").exists());
        assert!(!b_dir.path().join(&one).exists());
        let key = one.strip_prefix("images/").unwrap();
        assert!(shared.path().join("images").join(key).is_file());
        // B's sweep (its own, empty store) leaves A's fresh file alone.
        let store = sqlite(b_dir.path()).await;
        assert_eq!(
            b.sweep(store.as_ref(), Duration::from_secs(60))
                .await
                .unwrap(),
            0
        );
        assert_eq!(b.read(&one).await.unwrap(), &b"one"[..]);
    }

    /// A store other than a local directory (in memory here, as S3 would be): a present object
    /// is put again only once it is older than `refresh_after`.
    #[tokio::test]
    async fn other_stores_refresh_by_putting_again() {
        let memory: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let path = rel(b"m");
        let key = Path::from(path.strip_prefix("images/").unwrap());
        let modified = |files: ImageFiles| {
            let (memory, key, path) = (memory.clone(), key.clone(), path.clone());
            async move {
                files.store(&path, Bytes::from_static(b"m")).await.unwrap();
                memory.head(&key).await.unwrap().last_modified
            }
        };
        let lazy = ImageFiles::with_store(memory.clone(), Duration::from_secs(3600), "memory");
        let eager = ImageFiles::with_store(memory.clone(), Duration::ZERO, "memory");
        let first = modified(lazy.clone()).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(modified(lazy.clone()).await, first, "fresh: not put again");
        let refreshed = modified(eager.clone()).await;
        assert!(refreshed > first, "due: put again");
        assert_eq!(lazy.read(&path).await.unwrap(), &b"m"[..]);
        let store_dir = tempfile::tempdir().unwrap();
        let store = sqlite(store_dir.path()).await;
        assert_eq!(
            lazy.sweep(store.as_ref(), Duration::from_secs(60))
                .await
                .unwrap(),
            0
        );
        assert_eq!(
            eager.sweep(store.as_ref(), Duration::ZERO).await.unwrap(),
            1
        );
        assert!(lazy.read(&path).await.unwrap_err().is_not_found());
    }

    /// Against a real S3-compatible server, when `SNAPSHOP_TEST_S3_ENDPOINT` names one (with
    /// the bucket `SNAPSHOP_TEST_S3_BUCKET`, default `snapshop-test`, already there; any
    /// credentials). Skipped otherwise. With moto (`pip install 'moto[server]==5.2.5'`):
    ///
    /// ```text
    /// moto_server -p 5055 & sleep 2; curl -s -X PUT http://127.0.0.1:5055/snapshop-test
    /// SNAPSHOP_TEST_S3_ENDPOINT=http://127.0.0.1:5055 cargo test --lib files::tests::s3
    /// ```
    #[tokio::test]
    async fn s3_server_when_one_is_named() {
        let Ok(endpoint) = std::env::var("SNAPSHOP_TEST_S3_ENDPOINT") else {
            eprintln!("skipped: SNAPSHOP_TEST_S3_ENDPOINT is not set");
            return;
        };
        let bucket =
            std::env::var("SNAPSHOP_TEST_S3_BUCKET").unwrap_or_else(|_| "snapshop-test".into());
        let storage = crate::config::Storage {
            images_url: None,
            s3_endpoint: Some(endpoint),
            s3_region: Some("us-east-1".into()),
            s3_allow_http: true,
        };
        let prefix = format!(
            "test-{}/images",
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        // Two replicas on one bucket and prefix; `eager` refreshes every store.
        let lazy = s3(&storage, &bucket, &prefix, Duration::from_secs(3600));
        let eager = s3(&storage, &bucket, &prefix, Duration::ZERO);
        let (one, two) = (rel(b"one"), rel(b"two"));
        lazy.store(&one, Bytes::from_static(b"one")).await.unwrap();
        eager.store(&two, Bytes::from_static(b"two")).await.unwrap();
        assert_eq!(eager.read(&one).await.unwrap(), &b"one"[..]);
        assert_eq!(lazy.read(&two).await.unwrap(), &b"two"[..]);
        assert!(lazy.read(&rel(b"none")).await.unwrap_err().is_not_found());

        let key = lazy.key(&one).unwrap();
        let written = lazy.store.head(&key).await.unwrap().last_modified;
        // S3 times have a resolution of one second.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        lazy.store(&one, Bytes::from_static(b"one")).await.unwrap();
        let head = lazy.store.head(&key).await.unwrap();
        assert_eq!(head.last_modified, written, "fresh: not put again");
        eager.store(&one, Bytes::from_static(b"one")).await.unwrap();
        let head = lazy.store.head(&key).await.unwrap();
        assert!(head.last_modified > written, "due: put again");

        let dir = tempfile::tempdir().unwrap();
        let store = sqlite(dir.path()).await;
        let grace = Duration::from_secs(3600);
        assert_eq!(lazy.sweep(store.as_ref(), grace).await.unwrap(), 0);
        assert_eq!(
            eager.sweep(store.as_ref(), Duration::ZERO).await.unwrap(),
            2
        );
        assert!(lazy.read(&one).await.unwrap_err().is_not_found());
    }
}

//! The image files: content-addressed under `<data-dir>/images/ab/cd/<sha256>.<ext>`, kept so a
//! later model can re-embed them.
//!
//! A file's lifetime is tied to the committed rows by a background sweep, never by the request
//! that deletes a product: the same bytes are often shared by several products (variants,
//! re-listings), and a concurrent create may be about to commit a row that needs a file another
//! request just stopped using. Writing a file (or finding it present) refreshes its modification
//! time, and the sweep only deletes files that no row refers to *and* that nobody has written for
//! a grace period much longer than any request. This module must never delete a referenced file.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use snapshop_store::CatalogStore;

/// How many paths one `referenced_paths` query checks.
const SWEEP_BATCH: usize = 512;

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct ImageFiles {
    data_dir: PathBuf,
}

impl ImageFiles {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            data_dir: data_dir.to_owned(),
        }
    }

    fn full(&self, relative: &str) -> PathBuf {
        self.data_dir.join(relative)
    }

    /// Writes the file unless it is there already (same name, same content), and in both cases
    /// marks it as just used. Written to a temporary name first, then renamed, so a crash never
    /// leaves a partial file.
    pub async fn store(&self, relative: &str, bytes: bytes::Bytes) -> std::io::Result<()> {
        let path = self.full(relative);
        tokio::task::spawn_blocking(move || {
            if let Ok(f) = std::fs::File::options().write(true).open(&path) {
                // Present: refresh it so that the sweep leaves it alone while we commit.
                return f.set_modified(SystemTime::now());
            }
            let parent = path
                .parent()
                .expect("image paths have a parent; this is a bug");
            std::fs::create_dir_all(parent)?;
            let tmp = tempfile::NamedTempFile::new_in(parent)?;
            std::fs::write(tmp.path(), &bytes)?;
            tmp.persist(&path).map_err(|e| e.error)?;
            Ok(())
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// Reads a stored file.
    pub async fn read(&self, relative: &str) -> std::io::Result<Vec<u8>> {
        tokio::fs::read(self.full(relative)).await
    }

    /// Deletes the files that no row refers to and that were not written for `grace`. Returns
    /// how many it deleted.
    pub async fn sweep(&self, store: &dyn CatalogStore, grace: Duration) -> anyhow::Result<usize> {
        let root = self.data_dir.clone();
        let images = root.join("images");
        let old =
            tokio::task::spawn_blocking(move || list_old_files(&images, &root, grace)).await??;
        let mut deleted = 0;
        for chunk in old.chunks(SWEEP_BATCH) {
            let referenced = store.referenced_paths(chunk).await?;
            for rel in chunk.iter().filter(|p| !referenced.contains(*p)) {
                let path = self.full(rel);
                // Re-check right before deleting: a create may have refreshed it meanwhile.
                if !is_older_than(&path, grace) {
                    continue;
                }
                match tokio::fs::remove_file(&path).await {
                    Ok(()) => deleted += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "cannot delete an unreferenced image file")
                    }
                }
            }
        }
        if deleted > 0 {
            tracing::info!(files = deleted, "swept unreferenced image files");
        }
        Ok(deleted)
    }
}

fn is_older_than(path: &Path, grace: Duration) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age >= grace)
}

/// Files under `images/` (relative to `root`) not modified for `grace`.
fn list_old_files(images: &Path, root: &Path, grace: Duration) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![images.to_owned()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let path = entry.path();
            let ty = entry.file_type()?;
            if ty.is_dir() {
                stack.push(path);
            } else if ty.is_file() && is_older_than(&path, grace) {
                if let Some(rel) = path.strip_prefix(root).ok().and_then(|p| p.to_str()) {
                    out.push(rel.to_owned());
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn store_is_idempotent_and_refreshes() {
        let dir = tempfile::tempdir().unwrap();
        let files = ImageFiles::new(dir.path());
        let rel = crate::images::relative_path(&crate::images::sha256_hex(b"x"), "jpeg");
        files
            .store(&rel, bytes::Bytes::from_static(b"x"))
            .await
            .unwrap();
        let path = dir.path().join(&rel);
        let old = SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert!(is_older_than(&path, Duration::from_secs(60)));
        files
            .store(&rel, bytes::Bytes::from_static(b"x"))
            .await
            .unwrap();
        assert!(!is_older_than(&path, Duration::from_secs(60)), "refreshed");
        assert_eq!(files.read(&rel).await.unwrap(), b"x");
    }
}

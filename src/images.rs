//! Uploaded image files: hashing, preprocessing off the async runtime, content-addressed storage.
//!
//! Decoding and resizing are CPU-heavy, so they always run on the blocking pool; this module
//! must never decode on an executor thread. Files are stored under
//! `<data-dir>/images/ab/cd/<sha256>.<ext>` so that a later model can re-embed them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ndarray::Array3;
use sha2::{Digest, Sha256};
use snapshop_inference::{ImageLimits, PreprocessError, Preprocessor};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    TooManyPixels(String),
    #[error("{0}")]
    UnsupportedFormat(String),
    #[error("{0}")]
    Undecodable(String),
    #[error("{0}")]
    Internal(String),
}

impl From<PreprocessError> for ImageError {
    fn from(e: PreprocessError) -> Self {
        let m = e.to_string();
        match e {
            PreprocessError::TooLarge { .. } => ImageError::TooLarge(m),
            PreprocessError::TooManyPixels { .. } => ImageError::TooManyPixels(m),
            PreprocessError::UnsupportedFormat(_) => ImageError::UnsupportedFormat(m),
            PreprocessError::Undecodable(_) => ImageError::Undecodable(m),
        }
    }
}

/// A decoded upload, ready for the model.
pub struct Prepared {
    pub tensor: Array3<f32>,
    pub width: u32,
    pub height: u32,
    /// `jpeg`, `png` or `webp`: also the stored file's extension.
    pub format: &'static str,
}

/// Decodes and preprocesses `bytes` on the blocking pool.
pub async fn prepare(
    pre: Arc<Preprocessor>,
    bytes: bytes::Bytes,
    limits: ImageLimits,
) -> Result<Prepared, ImageError> {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || {
        let _g = span.enter();
        pre.prepare(&bytes, &limits)
            .map(|p| Prepared {
                tensor: p.tensor,
                width: p.width,
                height: p.height,
                format: p.format,
            })
            .map_err(ImageError::from)
    })
    .await
    .map_err(|e| ImageError::Internal(format!("preprocessing task failed: {e}")))?
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The stored file's path relative to the data directory.
pub fn relative_path(sha256: &str, format: &str) -> String {
    format!(
        "images/{}/{}/{}.{}",
        &sha256[0..2],
        &sha256[2..4],
        sha256,
        format
    )
}

/// Writes the file under `data_dir` unless it is already there (same content, same name).
/// Written to a temporary name first, then renamed, so a crash never leaves a partial file.
pub async fn store_file(
    data_dir: &Path,
    relative: &str,
    bytes: bytes::Bytes,
) -> std::io::Result<PathBuf> {
    let path = data_dir.join(relative);
    if tokio::fs::try_exists(&path).await.unwrap_or(false) {
        return Ok(path);
    }
    let parent = path
        .parent()
        .expect("image paths have a parent; this is a bug");
    tokio::fs::create_dir_all(parent).await?;
    let tmp = parent.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("image"),
        std::process::id()
    ));
    tokio::fs::write(&tmp, &bytes).await?;
    tokio::fs::rename(&tmp, &path).await?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_addressed_paths() {
        let sha = sha256_hex(b"abc");
        assert_eq!(
            sha,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            relative_path(&sha, "png"),
            format!("images/ba/78/{sha}.png")
        );
    }

    #[tokio::test]
    async fn store_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let rel = relative_path(&sha256_hex(b"x"), "jpeg");
        let p1 = store_file(dir.path(), &rel, bytes::Bytes::from_static(b"x"))
            .await
            .unwrap();
        let p2 = store_file(dir.path(), &rel, bytes::Bytes::from_static(b"x"))
            .await
            .unwrap();
        assert_eq!(p1, p2);
        assert_eq!(std::fs::read(p1).unwrap(), b"x");
    }
}

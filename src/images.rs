//! Uploaded images: format sniffing, hashing, content-addressed names, and preprocessing off the
//! async runtime.
//!
//! Decoding and resizing are CPU-heavy, so they always run on the blocking pool; this module
//! must never decode on an executor thread. Storing the files is `files`' job.

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

impl crate::error::Coded for ImageError {
    fn code(&self) -> crate::error::ErrorCode {
        use crate::error::ErrorCode as C;
        match self {
            ImageError::TooLarge(_) => C::PayloadTooLarge,
            ImageError::TooManyPixels(_) => C::ImageTooLarge,
            ImageError::UnsupportedFormat(_) => C::UnsupportedMediaType,
            ImageError::Undecodable(_) => C::ImageUndecodable,
            ImageError::Internal(_) => C::Internal,
        }
    }
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
    /// `jpeg`, `png`, `webp` or `heic`: also the stored file's extension.
    pub format: &'static str,
}

/// What the first bytes of a file say it is.
#[derive(Debug, PartialEq, Eq)]
enum Sniffed {
    /// JPEG, PNG, WebP or HEIC/HEIF: left to the decoder.
    Supported,
    /// A known image format the model pipeline does not accept.
    Unsupported(&'static str),
    /// Not an image format we recognise: treated as an undecodable image.
    Unknown,
}

fn sniff(b: &[u8]) -> Sniffed {
    let starts = |m: &[u8]| b.starts_with(m);
    if starts(&[0xff, 0xd8, 0xff])
        || starts(b"\x89PNG\r\n\x1a\n")
        || (b.len() >= 12 && &b[0..4] == b"RIFF" && &b[8..12] == b"WEBP")
        || snapshop_inference::preprocess::is_heif(b)
    {
        Sniffed::Supported
    } else if starts(b"GIF87a") || starts(b"GIF89a") {
        Sniffed::Unsupported("GIF")
    } else if starts(b"BM") {
        Sniffed::Unsupported("BMP")
    } else if starts(b"II*\0") || starts(b"MM\0*") {
        Sniffed::Unsupported("TIFF")
    } else if b.len() >= 12 && &b[4..8] == b"ftyp" {
        // HEIF's container without a HEIF brand: AVIF, or a video.
        Sniffed::Unsupported("AVIF or other ISO media")
    } else if starts(&[0, 0, 1, 0]) {
        Sniffed::Unsupported("ICO")
    } else {
        Sniffed::Unknown
    }
}

/// Refuses what the first bytes show is no accepted image, before any decoding: a known
/// format the model pipeline does not take is 415, anything else unrecognised 422.
pub fn check_format(bytes: &[u8]) -> Result<(), ImageError> {
    match sniff(bytes) {
        Sniffed::Supported => {}
        Sniffed::Unsupported(name) => {
            return Err(ImageError::UnsupportedFormat(format!(
                "unsupported image format: {name} (JPEG, PNG, WebP and HEIC/HEIF are accepted)"
            )))
        }
        Sniffed::Unknown => {
            return Err(ImageError::Undecodable(
                "the data is not a JPEG, PNG, WebP or HEIC/HEIF image".into(),
            ))
        }
    }
    Ok(())
}

/// Decodes and preprocesses `bytes` on the blocking pool.
pub async fn prepare(
    pre: Arc<Preprocessor>,
    bytes: bytes::Bytes,
    limits: ImageLimits,
) -> Result<Prepared, ImageError> {
    check_format(&bytes)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_sniffed() {
        assert_eq!(sniff(b"\xff\xd8\xff\xe0rest"), Sniffed::Supported);
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\nrest"), Sniffed::Supported);
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), Sniffed::Supported);
        assert_eq!(sniff(b"GIF89a..."), Sniffed::Unsupported("GIF"));
        // HEIC by its ftyp brands; AVIF (same container, another codec) stays refused.
        assert_eq!(
            sniff(b"\0\0\0\x18ftypheic\0\0\0\0mif1heic"),
            Sniffed::Supported
        );
        assert_eq!(
            sniff(b"\0\0\0\x18ftypavif\0\0\0\0mif1miaf"),
            Sniffed::Unsupported("AVIF or other ISO media")
        );
        assert_eq!(sniff(b"hello"), Sniffed::Unknown);
        assert_eq!(sniff(b""), Sniffed::Unknown);
    }

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
}

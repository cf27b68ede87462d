//! The invariants of the `image_decode` fuzz target, shared with its replay test.
//!
//! It exists so that the libFuzzer target (`fuzz/fuzz_targets/image_decode.rs`) and the stable
//! replay of its corpus (`crates/snapshop-inference/tests/fuzz_replay.rs`) check exactly the same
//! thing: both include this file with `#[path]`. Any input must give `Ok` or a
//! [`PreprocessError`] consistent with the limits, never a panic, and a decoded image must be
//! what the limits and the bundle contract allow.

use std::sync::OnceLock;

use snapshop_inference::preprocess::{decode_with, ImageLimits, PreprocessError};
use snapshop_inference::{Manifest, Preprocessor};

/// Small limits, so that a mutated header cannot make one run decode megapixels.
pub const LIMITS: ImageLimits = ImageLimits {
    max_bytes: 64 * 1024,
    max_pixels: 400 * 400,
    max_side: 1024,
};

/// The model input size of the test preprocessor: odd and not square, so that both resize
/// passes run and a transposition would show.
pub const OUT: (u32, u32) = (7, 5);

/// A preprocessor with `preprocess.jpeg_draft` on, built once.
fn draft_preprocessor() -> &'static Preprocessor {
    static P: OnceLock<Preprocessor> = OnceLock::new();
    P.get_or_init(|| {
        let g = serde_json::json!({"file": "x.onnx", "inputs": {}, "outputs": {}});
        let (w, h) = OUT;
        let manifest: Manifest = serde_json::from_value(serde_json::json!({
            "format_version": 1, "model_version": "fuzz", "backbone": "none",
            "input": {"height": h, "width": w, "channels": 3, "layout": "NCHW", "color": "RGB"},
            "preprocess": {"exif_transpose": true,
                "resize": {"method": "pillow_bilinear", "width": w, "height": h, "keep_aspect": false},
                "scale": 1.0 / 255.0, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                "jpeg_draft": true},
            "embedding_dim": 4, "grid": {"h": 1, "w": 1}, "locations": 1,
            "tags": {"count": 0, "vocabulary": []},
            "graphs": {"shop": g, "user": g, "ctx": g}, "metric": "cosine",
            "rerank": {"candidates": 1}, "files": {}
        }))
        .expect("the fuzz manifest parses");
        Preprocessor::new(&manifest).expect("the fuzz manifest is valid")
    })
}

/// Checks that an error is one the limits explain.
fn check_error(data: &[u8], e: &PreprocessError) {
    match e {
        PreprocessError::TooLarge { bytes, max_bytes } => {
            assert_eq!(*bytes, data.len());
            assert_eq!(*max_bytes, LIMITS.max_bytes);
            assert!(data.len() > LIMITS.max_bytes);
        }
        PreprocessError::TooManyPixels { width, height, .. } => {
            let pixels = u64::from(*width) * u64::from(*height);
            assert!(
                *width > LIMITS.max_side || *height > LIMITS.max_side || pixels > LIMITS.max_pixels,
                "TooManyPixels for {width}x{height}, within the limits"
            );
        }
        PreprocessError::UnsupportedFormat(_) | PreprocessError::Undecodable(_) => {}
    }
    assert!(!e.to_string().is_empty());
}

/// The whole check: [`decode_with`] at full size, and [`Preprocessor::prepare`] with the DCT
/// draft, on the same bytes. Panics (the fuzzer's crash) when an invariant does not hold.
pub fn check(data: &[u8]) {
    if data.len() > LIMITS.max_bytes {
        // Only the size is looked at; one cheap call covers that branch.
        let e = decode_with(data, &LIMITS, None).expect_err("an oversized file is refused");
        assert!(matches!(e, PreprocessError::TooLarge { .. }), "{e:?}");
        return;
    }
    let full = decode_with(data, &LIMITS, None);
    let prepared = draft_preprocessor().prepare(data, &LIMITS);
    match &full {
        Ok(d) => {
            let (w, h) = d.image.dimensions();
            assert_eq!((w, h), d.source_size, "no draft: the full upright size");
            assert!(w > 0 && h > 0);
            assert!(w <= LIMITS.max_side && h <= LIMITS.max_side);
            assert!(u64::from(w) * u64::from(h) <= LIMITS.max_pixels);
            assert!(["jpeg", "png", "webp", "heic"].contains(&d.format));
            assert_eq!(d.image.as_raw().len(), w as usize * h as usize * 3);
        }
        Err(e) => check_error(data, e),
    }
    match (&full, &prepared) {
        (Ok(d), Ok(p)) => {
            assert_eq!((p.width, p.height), d.source_size);
            assert_eq!(p.format, d.format);
            let (w, h) = OUT;
            assert_eq!(p.tensor.shape(), &[3, h as usize, w as usize]);
            assert!(p.tensor.iter().all(|v| v.is_finite()));
        }
        (Err(_), Err(e)) => check_error(data, e),
        // The DCT draft is a decoding detail: it must not change which files are accepted.
        (Ok(_), Err(e)) => panic!("full decode accepts, the draft decode refuses: {e:?}"),
        (Err(e), Ok(_)) => panic!("the draft decode accepts, full decode refuses: {e:?}"),
    }
}

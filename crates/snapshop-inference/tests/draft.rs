//! Golden parity of the DCT-scaled JPEG decode (`preprocess.jpeg_draft`, BUNDLE.md step 1b)
//! with the Python pipeline, on the fixtures of `tests/fixtures/draft/` (a 12 MP phone photo, a
//! sideways progressive portrait, greyscale EXIF 8, a banner, CMYK, a small street photo) made
//! by `tests/fixtures/make_draft_fixtures.py` with `snapshop_ml.preprocess`.
//!
//! For each, the decoded size must be the one Pillow's `draft()` gave, and the tensor must match
//! Python's within the fixtures' tolerance (1e-3): both the whole tensor (the normalisation of
//! the committed 8-bit resized image) and Python's own sum and sampled values. Run with
//! `--nocapture` to see the measured differences.

mod common;

use serde::Deserialize;
use snapshop_inference::preprocess::ImageLimits;
use snapshop_inference::{Manifest, Preprocessor};

#[derive(Deserialize)]
struct Expected {
    size: usize,
    tolerance: f32,
    images: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    file: String,
    mode: String,
    jpeg_draft: bool,
    stored_size: (u32, u32),
    draft_scale: u32,
    decoded_size: (u32, u32),
    expected_png: String,
    preprocessed_sum: f64,
    preprocessed_sample: Vec<(usize, usize, usize, f32)>,
}

const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const STD: [f32; 3] = [0.229, 0.224, 0.225];

fn manifest(size: usize, jpeg_draft: bool) -> Manifest {
    let g = serde_json::json!({"file": "x.onnx", "inputs": {}, "outputs": {}});
    serde_json::from_value(serde_json::json!({
        "format_version": 1, "model_version": "draft-test", "backbone": "none",
        "input": {"height": size, "width": size, "channels": 3, "layout": "NCHW", "color": "RGB"},
        "preprocess": {"exif_transpose": true,
            "resize": {"method": "pillow_bilinear", "width": size, "height": size, "keep_aspect": false},
            "scale": 1.0 / 255.0, "mean": MEAN, "std": STD, "jpeg_draft": jpeg_draft},
        "embedding_dim": 4, "grid": {"h": 1, "w": 1}, "locations": 1,
        "tags": {"count": 0, "vocabulary": []},
        "graphs": {"shop": g, "user": g, "ctx": g}, "metric": "cosine",
        "rerank": {"candidates": 1}, "files": {}
    }))
    .expect("test manifest parses")
}

#[test]
fn draft_decode_matches_the_python_pipeline() {
    let dir = common::fixtures().join("draft");
    let expected: Expected =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap())
            .expect("expected.json parses");
    let limits = ImageLimits::default();
    let size = expected.size;
    let mut seen_draft_scales = Vec::new();
    for e in &expected.images {
        let pre = Preprocessor::new(&manifest(size, e.jpeg_draft)).unwrap();
        let bytes = std::fs::read(dir.join(&e.file)).unwrap();
        let decoded = pre.decode(&bytes, &limits).unwrap();
        assert_eq!(
            decoded.image.dimensions(),
            e.decoded_size,
            "{} ({}): decoded size differs from Pillow's (draft scale 1/{})",
            e.file,
            e.mode,
            e.draft_scale
        );
        let prepared = pre.prepare(&bytes, &limits).unwrap();
        let (sw, sh) = e.stored_size;
        assert!(
            (prepared.width, prepared.height) == (sw, sh)
                || (prepared.width, prepared.height) == (sh, sw),
            "{}: reports the source size, not the decoded one",
            e.file
        );
        let t = prepared.tensor;

        // The whole tensor, against the normalisation of Python's resized pixels.
        let png = image::open(dir.join(&e.expected_png)).unwrap().to_rgb8();
        assert_eq!(png.dimensions(), (size as u32, size as u32));
        let mut max_diff = 0.0f32;
        let mut bytes_off = 0usize;
        let mut max_level = 0u8;
        let resized = pre.resize(&decoded.image).unwrap();
        for (i, (got, want)) in resized.as_raw().iter().zip(png.as_raw()).enumerate() {
            if got != want {
                bytes_off += 1;
                max_level = max_level.max(got.abs_diff(*want));
            }
            let (pix, c) = (i / 3, i % 3);
            let (y, x) = (pix / size, pix % size);
            let v = (f32::from(*want) / 255.0 - MEAN[c]) / STD[c];
            max_diff = max_diff.max((t[[c, y, x]] - v).abs());
        }
        let sum: f64 = t.iter().map(|v| f64::from(*v)).sum();
        let sum_diff = (sum - e.preprocessed_sum).abs();
        let sample = e
            .preprocessed_sample
            .iter()
            .map(|&(c, y, x, v)| (t[[c, y, x]] - v).abs())
            .fold(0.0f32, f32::max);
        eprintln!(
            "{:<28} {:<5} 1/{} {:?} -> {:?}: tensor max abs diff {max_diff:.3e}, {bytes_off} bytes \
             off by up to {max_level}, sum diff {sum_diff:.3e}, sample max diff {sample:.3e}",
            e.file,
            e.mode,
            e.draft_scale,
            e.stored_size,
            e.decoded_size
        );
        assert!(
            max_diff <= expected.tolerance && sample <= expected.tolerance,
            "{} ({}): tensor max abs diff {max_diff}, sample {sample} > {}",
            e.file,
            e.mode,
            expected.tolerance
        );
        assert!(sum_diff <= 1e-2, "{}: sum diff {sum_diff}", e.file);
        if e.jpeg_draft {
            seen_draft_scales.push(e.draft_scale);
        }
    }
    // The fixtures cover every DCT scale, and the 12 MP photo is among them.
    for s in [1, 2, 4, 8] {
        assert!(seen_draft_scales.contains(&s), "no fixture at scale 1/{s}");
    }
    assert!(expected
        .images
        .iter()
        .any(|e| e.jpeg_draft && e.stored_size == (4000, 3000)));
}

/// Without the flag nothing changes: the same file decodes at its full size.
#[test]
fn no_draft_without_the_flag() {
    let dir = common::fixtures().join("draft");
    let bytes = std::fs::read(dir.join("phone_12mp.jpg")).unwrap();
    let pre = Preprocessor::new(&manifest(192, false)).unwrap();
    assert!(!pre.jpeg_draft());
    let d = pre.decode(&bytes, &ImageLimits::default()).unwrap();
    assert_eq!(d.image.dimensions(), (4000, 3000));
    assert_eq!(d.source_size, (4000, 3000));
    let d = Preprocessor::new(&manifest(192, true))
        .unwrap()
        .decode(&bytes, &ImageLimits::default())
        .unwrap();
    assert_eq!(
        (d.image.dimensions(), d.source_size),
        ((500, 375), (4000, 3000))
    );
}

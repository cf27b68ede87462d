//! Preprocessing speed on a generated 4000×3000 (12 MP) JPEG: decode and resize separately,
//! then the whole `prepare`. The resize to the model input runs the exact Pillow port; the
//! `fast_image_resize` figure (same filter, 16-bit coefficients, not bit-exact) is the speed
//! reference.
//!
//! The `draft` group is the 12 MP decode + resize to the shipped bundle's 192 × 192, without
//! `preprocess.jpeg_draft`, with it at factor 1 and at the shipped factor 2 (DCT-scaled decode,
//! BUNDLE.md step 1b), on the committed phone-style fixture
//! (`tests/fixtures/draft/phone_12mp.jpg`) and on the generated image.
//!
//! `cargo bench -p snapshop-inference --bench preprocess`

use std::hint::black_box;
use std::io::Cursor;

use criterion::{criterion_group, criterion_main, Criterion};
use fast_image_resize as fr;
use image::{ImageEncoder, RgbImage};
use snapshop_inference::preprocess::{decode, ImageLimits};
use snapshop_inference::{Manifest, Preprocessor};

const SIDE: usize = 224;

/// The shipped bundle's input size.
const SHIPPED_SIDE: usize = 192;

fn manifest() -> Manifest {
    manifest_for(SIDE, false, 1)
}

fn manifest_for(side: usize, jpeg_draft: bool, jpeg_draft_factor: u32) -> Manifest {
    let json = serde_json::json!({
        "format_version": 1, "model_version": "bench", "backbone": "none",
        "input": {"height": side, "width": side, "channels": 3, "layout": "NCHW", "color": "RGB"},
        "preprocess": {"exif_transpose": true,
            "resize": {"method": "pillow_bilinear", "width": side, "height": side, "keep_aspect": false},
            "scale": 1.0 / 255.0, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
            "jpeg_draft": jpeg_draft, "jpeg_draft_factor": jpeg_draft_factor},
        "embedding_dim": 4, "grid": {"h": 1, "w": 1}, "locations": 1,
        "tags": {"count": 0, "vocabulary": []},
        "graphs": {}, "metric": "cosine", "rerank": {"candidates": 1}, "files": {}
    });
    // `graphs` is not needed by the preprocessor; fill it with a syntactically valid value.
    let mut json = json;
    let g = serde_json::json!({"file": "x.onnx", "inputs": {}, "outputs": {}});
    json["graphs"] = serde_json::json!({"shop": g, "user": g, "ctx": g});
    serde_json::from_value(json).expect("bench manifest parses")
}

/// A photo-like 12 MP JPEG (smooth gradients, edges and some texture), quality 90.
fn jpeg_12mp() -> Vec<u8> {
    let (w, h) = (4000u32, 3000u32);
    let img = RgbImage::from_fn(w, h, |x, y| {
        let t = ((x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)) >> 28) as u8;
        let r = (x * 255 / w) as u8 ^ (t & 7);
        let g = (y * 255 / h) as u8;
        let b = if (x / 250 + y / 250) % 2 == 0 {
            200
        } else {
            40
        };
        image::Rgb([r, g.wrapping_add(t), b])
    });
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut Cursor::new(&mut out), 90)
        .write_image(img.as_raw(), w, h, image::ExtendedColorType::Rgb8)
        .expect("encoding the bench image");
    out
}

fn bench(c: &mut Criterion) {
    let bytes = jpeg_12mp();
    let limits = ImageLimits::default();
    let pre = Preprocessor::new(&manifest()).expect("preprocessor");
    let decoded = decode(&bytes, &limits).expect("decodes").image;
    let resized = pre.resize(&decoded).expect("resizes");

    let mut g = c.benchmark_group("preprocess_12mp_jpeg");
    g.sample_size(10);
    g.bench_function("decode_libjpeg_turbo", |b| {
        b.iter(|| decode(black_box(&bytes), &limits).unwrap())
    });
    g.bench_function("decode_image_crate_zune", |b| {
        b.iter(|| image::load_from_memory(black_box(&bytes)).unwrap())
    });
    g.bench_function(format!("resize_pillow_exact_to_{SIDE}"), |b| {
        b.iter(|| pre.resize(black_box(&decoded)).unwrap())
    });
    g.bench_function(format!("resize_fast_image_resize_to_{SIDE}"), |b| {
        let mut resizer = fr::Resizer::new();
        let options = fr::ResizeOptions::new()
            .resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear));
        let src =
            fr::images::ImageRef::new(4000, 3000, decoded.as_raw(), fr::PixelType::U8x3).unwrap();
        let mut dst = fr::images::Image::new(SIDE as u32, SIDE as u32, fr::PixelType::U8x3);
        b.iter(|| resizer.resize(black_box(&src), &mut dst, &options).unwrap())
    });
    g.bench_function("to_tensor", |b| {
        b.iter(|| pre.to_tensor(black_box(&resized)))
    });
    g.bench_function("prepare_total", |b| {
        b.iter(|| pre.prepare(black_box(&bytes), &limits).unwrap())
    });
    g.finish();

    // Decode + resize (+ normalise: `prepare`) to 192 x 192: a full-size decode, the draft for
    // the input size (1/8 scale here) and the shipped draft for twice the input (1/4).
    let phone = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/draft/phone_12mp.jpg"),
    )
    .expect("tests/fixtures/draft/phone_12mp.jpg");
    let mut g = c.benchmark_group("draft_12mp_to_192");
    g.sample_size(20);
    for (name, file) in [("phone_fixture", &phone), ("generated", &bytes)] {
        for (draft, factor, label) in [(false, 1, "full"), (true, 1, "draft1"), (true, 2, "draft2")]
        {
            let pre = Preprocessor::new(&manifest_for(SHIPPED_SIDE, draft, factor))
                .expect("preprocessor");
            g.bench_function(format!("{name}_decode_resize_{label}"), |b| {
                b.iter(|| {
                    let d = pre.decode(black_box(file), &limits).unwrap();
                    pre.resize(&d.image).unwrap()
                })
            });
            g.bench_function(format!("{name}_prepare_{label}"), |b| {
                b.iter(|| pre.prepare(black_box(file), &limits).unwrap())
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

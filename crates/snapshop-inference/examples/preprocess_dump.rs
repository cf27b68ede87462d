//! Writes the model input tensor the service computes for image files, as raw little-endian
//! float32 `[3, H, W]`, to compare with the Python pipeline (`preprocess.preprocess_file`).
//!
//! `cargo run -p snapshop-inference --example preprocess_dump -- WIDTH HEIGHT draft|full OUT_DIR IMAGE...`
//! writes `OUT_DIR/<n>.f32` for the n-th image (0-based) and prints `n decoded_w decoded_h` per
//! image.

use std::path::Path;

use snapshop_inference::{ImageLimits, Manifest, Preprocessor};

fn manifest(width: u32, height: u32, jpeg_draft: bool) -> Manifest {
    let g = serde_json::json!({"file": "x.onnx", "inputs": {}, "outputs": {}});
    serde_json::from_value(serde_json::json!({
        "format_version": 1, "model_version": "dump", "backbone": "none",
        "input": {"height": height, "width": width, "channels": 3, "layout": "NCHW", "color": "RGB"},
        "preprocess": {"exif_transpose": true,
            "resize": {"method": "pillow_bilinear", "width": width, "height": height, "keep_aspect": false},
            "scale": 1.0 / 255.0, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
            "jpeg_draft": jpeg_draft},
        "embedding_dim": 4, "grid": {"h": 1, "w": 1}, "locations": 1,
        "tags": {"count": 0, "vocabulary": []},
        "graphs": {"shop": g, "user": g, "ctx": g}, "metric": "cosine",
        "rerank": {"candidates": 1}, "files": {}
    }))
    .expect("manifest parses")
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 5 {
        eprintln!("usage: preprocess_dump WIDTH HEIGHT draft|full OUT_DIR IMAGE...");
        std::process::exit(2);
    }
    let width: u32 = args[0].parse().expect("WIDTH");
    let height: u32 = args[1].parse().expect("HEIGHT");
    let pre =
        Preprocessor::new(&manifest(width, height, args[2] == "draft")).expect("preprocessor");
    let out = Path::new(&args[3]);
    std::fs::create_dir_all(out).expect("OUT_DIR");
    for (n, file) in args[4..].iter().enumerate() {
        let bytes = std::fs::read(file).expect("readable image");
        let decoded = pre
            .decode(&bytes, &ImageLimits::default())
            .expect("decodes");
        let t = pre
            .prepare(&bytes, &ImageLimits::default())
            .expect("prepares")
            .tensor;
        let raw: Vec<u8> = t.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(out.join(format!("{n}.f32")), raw).expect("writes");
        let (w, h) = decoded.image.dimensions();
        println!("{n} {w} {h}");
    }
}

//! Loads a bundle and embeds one image end to end, as the service does.
//!
//! `cargo run -p snapshop-inference --example embed -- models/default path/to/image.jpg [user|shop] [cpu|cuda]`
//! (run from the repository root so that the default ONNX Runtime path resolves, or set
//! `ORT_DYLIB_PATH`).

use std::path::Path;

use snapshop_inference::{
    Bundle, Device, ImageLimits, InferenceError, InferenceQueue, OrtBackend, Preprocessor,
    QueueConfig, Threading,
};

fn main() -> Result<(), InferenceError> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: embed BUNDLE_DIR IMAGE [user|shop] [cpu|cuda]");
        std::process::exit(2);
    }
    let domain = args.get(3).map_or("user", String::as_str);
    let device = match args.get(4).map(String::as_str) {
        Some("cuda") => Device::Cuda,
        _ => Device::Cpu,
    };
    let lib = snapshop_inference::init_runtime(None)?;
    let bundle = Bundle::load(Path::new(&args[1]))?;
    let pre = Preprocessor::new(&bundle.manifest)?;
    let bytes = std::fs::read(&args[2]).map_err(|e| InferenceError::Io {
        path: args[2].clone().into(),
        source: e,
    })?;
    let prepared = pre.prepare(&bytes, &ImageLimits::default())?;
    let backend = OrtBackend::load(&bundle, device, Threading::default())?;
    let queue = InferenceQueue::start(backend, QueueConfig::default());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| InferenceError::Runtime(e.to_string()))?;
    let embedding = rt.block_on(async {
        match domain {
            "shop" => {
                let (tags, _) = bundle.tag_vector(&[]);
                queue.embed_shop(prepared.tensor, tags).await
            }
            _ => queue.embed_user(prepared.tensor).await.map(|o| o.embedding),
        }
    })?;
    println!(
        "onnxruntime {} | model {} on {} | {} {}x{} | {domain} embedding[..4] = {:?} (dim {})",
        lib.display(),
        bundle.model_version(),
        queue.device(),
        prepared.format,
        prepared.width,
        prepared.height,
        &embedding[..4.min(embedding.len())],
        embedding.len()
    );
    Ok(())
}

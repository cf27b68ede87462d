//! `OrtBackend` on the tiny fixture bundle (tests/fixtures/make_tiny_bundle.py): loading,
//! manifest/graph agreement, CUDA fallback, batched runs, and the queue in front of it.

mod common;

use std::path::Path;
use std::sync::Arc;

use ndarray::{s, Array2, Array3, Array4};
use sha2::{Digest, Sha256};
use snapshop_inference::{
    ActiveDevice, Backend, Bundle, Device, InferenceError, InferenceQueue, OrtBackend, QueueConfig,
    Threading,
};

fn tiny() -> Bundle {
    Bundle::load(&common::fixtures().join("tiny_bundle")).expect("tiny bundle loads")
}

/// A deterministic pseudo-random array (no RNG dependency).
fn filled<D: ndarray::Dimension>(shape: D, seed: u32) -> ndarray::Array<f32, D> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    ndarray::Array::from_shape_simple_fn(shape, || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        (x % 2000) as f32 / 1000.0 - 1.0
    })
}

#[test]
fn runs_all_graphs_batched() {
    if !common::init_ort() {
        return;
    }
    let bundle = tiny();
    let mut backend = OrtBackend::load(&bundle, Device::Cpu, Threading::intra(1)).unwrap();
    assert_eq!(backend.device(), ActiveDevice::Cpu);
    let (h, w) = bundle.input_size();
    let (c, l) = (bundle.embedding_dim(), bundle.locations());

    let images: Array4<f32> = filled((3, 3, h, w).into_dimension(), 1);
    let (features, embedding) = backend.embed_user(images.view()).unwrap();
    assert_eq!(features.shape(), &[3, l, c]);
    assert_eq!(embedding.shape(), &[3, c]);
    for row in embedding.rows() {
        let norm: f32 = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
    }
    // Batching does not change results: image 1 alone gives row 1.
    let (f1, e1) = backend
        .embed_user(images.slice(s![1..2, .., .., ..]))
        .unwrap();
    assert!(
        max_diff(
            f1.as_slice().unwrap(),
            features.slice(s![1, .., ..]).to_owned().as_slice().unwrap()
        ) < 1e-6
    );
    assert!(max_diff(e1.as_slice().unwrap(), embedding.row(1).to_vec().as_slice()) < 1e-6);

    // All-zero tags give the mean-pooled embedding; tags change it.
    let (zero_tags, _) = bundle.tag_vector(&[]);
    let tags = Array2::from_shape_fn(
        (3, zero_tags.len()),
        |(i, _)| if i == 0 { 0.0 } else { 1.0 },
    );
    let shop = backend.embed_shop(images.view(), tags.view()).unwrap();
    assert_eq!(shop.shape(), &[3, c]);
    assert!(
        max_diff(
            shop.row(0).to_vec().as_slice(),
            embedding.row(0).to_vec().as_slice()
        ) < 1e-5
    );
    assert!(
        max_diff(
            shop.row(1).to_vec().as_slice(),
            embedding.row(1).to_vec().as_slice()
        ) > 1e-3
    );

    // Re-rank: attention rows sum to 1; zero padding leaves the real candidates' outputs alone.
    let cand: Array3<f32> = filled((2, 5, c).into_dimension(), 2);
    let (scores, attention) = backend
        .rerank(features.slice(s![..2, .., ..]), cand.view())
        .unwrap();
    assert_eq!(scores.shape(), &[2, 5]);
    assert_eq!(attention.shape(), &[2, 5, l]);
    for row in attention.rows() {
        assert!((row.sum() - 1.0).abs() < 1e-5);
    }
    let mut padded = Array3::<f32>::zeros((2, 8, c));
    padded.slice_mut(s![.., ..5, ..]).assign(&cand);
    let (ps, pa) = backend
        .rerank(features.slice(s![..2, .., ..]), padded.view())
        .unwrap();
    assert!(
        max_diff(
            ps.slice(s![.., ..5]).to_owned().as_slice().unwrap(),
            scores.as_slice().unwrap()
        ) < 1e-6
    );
    assert!(
        max_diff(
            pa.slice(s![.., ..5, ..]).to_owned().as_slice().unwrap(),
            attention.as_slice().unwrap()
        ) < 1e-6
    );

    // Empty batches do not reach the runtime.
    let (f0, e0) = backend
        .embed_user(Array4::zeros((0, 3, h, w)).view())
        .unwrap();
    assert_eq!((f0.shape(), e0.shape()), (&[0, l, c][..], &[0, c][..]));

    // Wrong shapes are refused with a message, not a runtime crash.
    let err = backend
        .embed_user(Array4::zeros((1, 3, h + 1, w)).view())
        .unwrap_err();
    assert!(matches!(err, InferenceError::Shape(_)), "{err}");
}

use ndarray::IntoDimension;

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn cuda_falls_back_to_cpu_here() {
    if !common::init_ort() {
        return;
    }
    // This machine's wheel is CPU-only, so registering CUDA with error_on_failure fails and the
    // backend must say it runs on CPU. On a CUDA machine with the GPU wheel this reports Cuda.
    let backend = OrtBackend::load(&tiny(), Device::Cuda, Threading::intra(1)).unwrap();
    if std::env::var_os("SNAPSHOP_EXPECT_CUDA").is_some() {
        assert_eq!(backend.device(), ActiveDevice::Cuda);
    } else {
        assert_eq!(backend.device(), ActiveDevice::Cpu);
    }
}

/// Copies the tiny bundle with `user.onnx` replaced by `replacement` (checksums updated).
fn tiny_with_user_graph(replacement: &Path) -> tempfile::TempDir {
    let src = common::fixtures().join("tiny_bundle");
    let dir = tempfile::tempdir().unwrap();
    for name in ["shop.onnx", "ctx.onnx"] {
        std::fs::copy(src.join(name), dir.path().join(name)).unwrap();
    }
    let user = std::fs::read(replacement).unwrap();
    std::fs::write(dir.path().join("user.onnx"), &user).unwrap();
    let mut manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("manifest.json")).unwrap()).unwrap();
    manifest["files"]["user.onnx"] = serde_json::json!({
        "sha256": hex::encode(Sha256::digest(&user)),
        "bytes": user.len(),
    });
    std::fs::write(dir.path().join("manifest.json"), manifest.to_string()).unwrap();
    dir
}

#[test]
fn refuses_graph_disagreeing_with_manifest() {
    if !common::init_ort() {
        return;
    }
    // Batch dimension fixed to 1 where the manifest says dynamic.
    let dir = tiny_with_user_graph(&common::fixtures().join("user_fixed_batch.onnx"));
    let bundle = Bundle::load(dir.path()).unwrap();
    let err = OrtBackend::load(&bundle, Device::Cpu, Threading::intra(1))
        .unwrap_err()
        .to_string();
    assert!(err.contains("graph user (user.onnx)"), "{err}");
    assert!(err.contains("input \"image\""), "{err}");
    assert!(err.contains("expected f32[N,3,8,6]"), "{err}");
    assert!(err.contains("found f32[1,3,8,6]"), "{err}");

    // A graph with other tensor names (here: the shop graph in the user slot).
    let dir = tiny_with_user_graph(&common::fixtures().join("tiny_bundle/shop.onnx"));
    let bundle = Bundle::load(dir.path()).unwrap();
    let err = OrtBackend::load(&bundle, Device::Cpu, Threading::intra(1))
        .unwrap_err()
        .to_string();
    assert!(err.contains("graph user (user.onnx)"), "{err}");
    assert!(err.contains("\"tags\""), "{err}");
}

#[tokio::test]
async fn queue_over_ort_backend() {
    if !common::init_ort() {
        return;
    }
    let bundle = tiny();
    let backend = OrtBackend::load(&bundle, Device::Cpu, Threading::intra(1)).unwrap();
    let queue = InferenceQueue::start(backend, QueueConfig::default());
    assert_eq!(queue.device(), ActiveDevice::Cpu);
    let (h, w) = bundle.input_size();
    let c = bundle.embedding_dim();

    let mut handles = Vec::new();
    for i in 0..6 {
        let q = queue.clone();
        let image: Array3<f32> = filled((3, h, w).into_dimension(), 10 + i);
        handles.push(tokio::spawn(async move { q.embed_user(image).await }));
    }
    let mut outs = Vec::new();
    for h in handles {
        outs.push(h.await.unwrap().unwrap());
    }
    let feats = Arc::new(outs[0].features.clone());
    let cands = Array2::from_shape_fn((3, c), |(k, j)| outs[k + 1].embedding[j]);
    let r = queue.rerank(feats, cands).await.unwrap();
    assert_eq!(r.scores.len(), 3);
    assert_eq!(r.attention.dim(), (3, bundle.locations()));

    // The queue refuses a wrongly shaped image before it reaches a batch.
    let err = queue
        .embed_user(Array3::zeros((3, h, w + 2)))
        .await
        .unwrap_err();
    assert!(matches!(err, InferenceError::Shape(_)), "{err}");
    let (tags, _) = bundle.tag_vector(&["color:red".to_string()]);
    let e = queue
        .embed_shop(Array3::zeros((3, h, w)), tags)
        .await
        .unwrap();
    assert_eq!(e.len(), c);
}

//! The model as one value: bundle, preprocessor, inference queue, version and device together.
//!
//! A [`Model`] exists so that the rest of the service can hold "the model" behind one `Arc` and
//! swap it as a unit (see `swap`): nothing may pair one model's embeddings with another's
//! queue. Loading goes through a [`ModelLoader`], so tests run the real service with
//! [`FakeLoader`] and no ONNX Runtime. Decoding runs on the blocking pool and the graphs on the
//! queue's own thread: this module must never run either on an async executor thread.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use ndarray::{Array2, Array3};
use snapshop_inference::{
    ActiveDevice, Backend, Bundle, Device, FakeBackend, ImageLimits, InferenceError,
    InferenceQueue, ModelDims, OrtBackend, Preprocessor, QueueConfig, RerankOutput, Threading,
    UserOutput,
};

use crate::error::{Coded, ErrorCode};
use crate::images::{self, ImageError, Prepared};

/// A model that failed at serving time.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("inference failed: {0}")]
    Inference(#[from] InferenceError),
    #[error("the shop model returned an invalid embedding: {0}")]
    BadEmbedding(String),
}

impl Coded for ModelError {
    fn code(&self) -> ErrorCode {
        match self {
            ModelError::Image(e) => e.code(),
            ModelError::Inference(e) => e.code(),
            ModelError::BadEmbedding(_) => ErrorCode::Internal,
        }
    }
}

/// A loaded, checked model bundle with the queue that runs it.
pub struct Model {
    bundle: Bundle,
    preprocessor: Arc<Preprocessor>,
    queue: InferenceQueue,
    device: ActiveDevice,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("version", &self.version())
            .field("dir", &self.bundle.dir)
            .field("device", &self.device)
            .finish()
    }
}

/// An embedding is a finite unit vector of the model's dimension, within the index's tolerance:
/// the one check every embedding passes before it is stored or indexed.
pub fn check_embedding(v: &[f32], dim: usize) -> Result<(), String> {
    let norm = v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    if v.len() != dim {
        return Err(format!("length {} instead of {dim}", v.len()));
    }
    if !v.iter().all(|x| x.is_finite()) {
        return Err("a component is not finite".into());
    }
    if (norm - 1.0).abs() > snapshop_index::NORM_TOLERANCE {
        return Err(format!(
            "L2 norm {norm} is not within {} of 1",
            snapshop_index::NORM_TOLERANCE
        ));
    }
    Ok(())
}

impl Model {
    /// Wraps a loaded bundle and a backend; starts the backend's queue thread.
    pub fn new(
        bundle: Bundle,
        backend: Box<dyn Backend>,
        queue: QueueConfig,
    ) -> anyhow::Result<Self> {
        let preprocessor = Arc::new(
            Preprocessor::new(&bundle.manifest)
                .context("the bundle's preprocessing is not supported")?,
        );
        let device = backend.device();
        let queue = InferenceQueue::try_start(backend, queue)?;
        Ok(Self {
            bundle,
            preprocessor,
            queue,
            device,
        })
    }

    /// The version string stored with every embedding this model makes.
    pub fn version(&self) -> &str {
        self.bundle.model_version()
    }

    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    /// The bundle directory it was loaded from.
    pub fn dir(&self) -> &Path {
        &self.bundle.dir
    }

    /// `cpu` or `cuda`: the device the graphs really run on.
    pub fn device(&self) -> &'static str {
        match self.device {
            ActiveDevice::Cpu => "cpu",
            ActiveDevice::Cuda => "cuda",
        }
    }

    pub fn embedding_dim(&self) -> usize {
        self.bundle.embedding_dim()
    }

    /// The `h × w` grid of the query's attention.
    pub fn grid(&self) -> (usize, usize) {
        self.bundle.grid()
    }

    pub fn vocabulary(&self) -> &[String] {
        self.bundle.vocabulary()
    }

    /// The tags the model does not know (stored and filterable, but not embedded).
    pub fn unknown_tags(&self, tags: &[String]) -> Vec<String> {
        self.bundle.tag_vector(tags).1
    }

    /// Whether a search re-ranks when the caller does not say (`manifest.rerank.default`).
    pub fn rerank_by_default(&self) -> bool {
        self.bundle.manifest.rerank.default
    }

    /// How a re-ranked candidate's final score is made (`manifest.rerank.fusion`).
    pub fn fusion(&self) -> snapshop_inference::bundle::Fusion {
        self.bundle.manifest.rerank.fusion
    }

    pub fn queue_depth(&self) -> usize {
        self.queue.queue_depth()
    }

    /// The bundle's preprocessing (decode, resize, normalise), for callers that add a step
    /// between them (a search region).
    pub fn preprocessor(&self) -> &Arc<Preprocessor> {
        &self.preprocessor
    }

    /// Decodes and preprocesses an image on the blocking pool.
    pub async fn prepare(&self, bytes: Bytes, limits: ImageLimits) -> Result<Prepared, ImageError> {
        images::prepare(self.preprocessor.clone(), bytes, limits).await
    }

    /// The TagYNet shop embedding of a prepared image with its product's tags, checked.
    pub async fn embed_shop(
        &self,
        tensor: Array3<f32>,
        tags: &[String],
    ) -> Result<Vec<f32>, ModelError> {
        let (tag_vector, _) = self.bundle.tag_vector(tags);
        let v = self.queue.embed_shop(tensor, tag_vector).await?;
        check_embedding(&v, self.embedding_dim()).map_err(ModelError::BadEmbedding)?;
        Ok(v)
    }

    /// The user branch: location features and the mean-pooled embedding.
    pub async fn embed_user(&self, tensor: Array3<f32>) -> Result<UserOutput, InferenceError> {
        self.queue.embed_user(tensor).await
    }

    /// CtxYNet scores (and attention) of `candidates` `[K, C]` for a query's features.
    pub async fn rerank(
        &self,
        features: Arc<Array2<f32>>,
        candidates: Array2<f32>,
    ) -> Result<RerankOutput, InferenceError> {
        self.queue.rerank(features, candidates).await
    }
}

/// Loads and checks a bundle directory into a [`Model`]. Blocking: call it off the runtime.
pub trait ModelLoader: Send + Sync + 'static {
    fn load(&self, dir: &Path) -> anyhow::Result<Model>;
}

/// The production loader: ONNX Runtime sessions on the configured device.
pub struct OrtLoader {
    pub device: Device,
    pub threading: Threading,
    pub queue: QueueConfig,
}

impl ModelLoader for OrtLoader {
    fn load(&self, dir: &Path) -> anyhow::Result<Model> {
        let bundle = Bundle::load(dir)
            .with_context(|| format!("cannot load the model bundle {}", dir.display()))?;
        let backend =
            OrtBackend::load(&bundle, self.device, self.threading).with_context(|| {
                format!(
                    "the model bundle {} does not match its graphs or cannot run",
                    dir.display()
                )
            })?;
        Model::new(bundle, Box::new(backend), self.queue.clone())
    }
}

/// A loader of real bundles (manifest and checksums verified) run by the deterministic
/// [`FakeBackend`]: for tests and development without ONNX Runtime. Two model versions get
/// two different fake models.
pub struct FakeLoader {
    pub queue: QueueConfig,
}

impl ModelLoader for FakeLoader {
    fn load(&self, dir: &Path) -> anyhow::Result<Model> {
        let bundle = Bundle::load(dir)
            .with_context(|| format!("cannot load the model bundle {}", dir.display()))?;
        let seed = bundle
            .model_version()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            });
        let backend = FakeBackend::new(ModelDims::of(&bundle), seed);
        Model::new(bundle, Box::new(backend), self.queue.clone())
    }
}

/// Where the model a data directory last switched to is remembered, so that a hot swap
/// survives a restart (unless the configured bundle changed since).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ActiveModel {
    /// The bundle directory in use.
    pub bundle: PathBuf,
    /// `config.bundle` when the swap happened.
    pub configured: PathBuf,
    pub model_version: String,
}

impl ActiveModel {
    fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("active-model.json")
    }

    /// The remembered choice, if any and if it still applies to `configured`.
    pub fn read(data_dir: &Path, configured: &Path) -> Option<ActiveModel> {
        let text = std::fs::read_to_string(Self::path(data_dir)).ok()?;
        let a: ActiveModel = serde_json::from_str(&text).ok()?;
        (a.configured == configured && a.bundle.is_dir()).then_some(a)
    }

    /// Records the choice atomically (temp file, rename).
    pub fn write(&self, data_dir: &Path) -> std::io::Result<()> {
        let path = Self::path(data_dir);
        let tmp = path.with_extension("json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(tmp, path)
    }
}

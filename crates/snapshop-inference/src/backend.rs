//! The compute backend: the three graphs behind one trait, and its ONNX Runtime implementation.
//!
//! The trait exists so that the batching queue can be tested with a deterministic fake and so
//! that the service never names `ort`. `OrtBackend` checks at load time that the graphs' tensor
//! names and shapes agree with the (already validated) manifest, so a mismatched bundle stops the
//! service at start-up instead of failing on the first request. A backend must never be shared
//! between threads (ort sessions run with `&mut self`); the queue's worker thread owns it.

use std::fmt;
use std::path::Path;

use ndarray::{Array2, Array3, ArrayView2, ArrayView3, ArrayView4, Ix2, Ix3};
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::Session;
use ort::value::{TensorElementType, TensorRef, ValueType};

use crate::bundle::{shape_to_string, Bundle, Dim, GraphKind};
use crate::{runtime, InferenceError};

/// The device the service is configured to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// ONNX Runtime's CPU execution provider.
    Cpu,
    /// The CUDA execution provider; falls back to CPU (with a warning) when unavailable.
    Cuda,
}

/// The device that actually runs the graphs (after any fallback). Serialises as `"cpu"` /
/// `"cuda"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ActiveDevice {
    /// CPU execution provider.
    Cpu,
    /// CUDA execution provider.
    Cuda,
}

impl fmt::Display for ActiveDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ActiveDevice::Cpu => "cpu",
            ActiveDevice::Cuda => "cuda",
        })
    }
}

/// ONNX Runtime's CPU threading for each of a backend's sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Threading {
    /// Intra-op threads per session; 0 keeps ONNX Runtime's default (one per physical core).
    pub intra_threads: usize,
    /// Whether idle intra-op threads spin before they sleep (ONNX Runtime's default: yes).
    /// Spinning keeps a core busy between calls; on two cores that is the core the next photo's
    /// decode needs (docs/performance.md, part 2, measures both settings).
    pub spinning: bool,
}

impl Default for Threading {
    /// ONNX Runtime's own defaults.
    fn default() -> Self {
        Threading {
            intra_threads: 0,
            spinning: true,
        }
    }
}

impl Threading {
    /// `intra_threads` per session, spinning as ONNX Runtime does by default.
    pub fn intra(intra_threads: usize) -> Self {
        Threading {
            intra_threads,
            ..Threading::default()
        }
    }
}

/// The fixed dimensions of a model, used by the queue to refuse malformed requests before they
/// can spoil a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelDims {
    /// `H` of the image tensor.
    pub height: usize,
    /// `W` of the image tensor.
    pub width: usize,
    /// `T`, the tag vector length.
    pub tags: usize,
    /// `L`, feature locations.
    pub locations: usize,
    /// `C`, embedding length.
    pub embedding_dim: usize,
}

impl ModelDims {
    /// The dimensions declared by a bundle.
    pub fn of(bundle: &Bundle) -> Self {
        let (height, width) = bundle.input_size();
        ModelDims {
            height,
            width,
            tags: bundle.manifest.tags.count,
            locations: bundle.locations(),
            embedding_dim: bundle.embedding_dim(),
        }
    }
}

/// Batched model execution. Implementations are owned by one thread and called with whole
/// batches; every output row corresponds to the input row with the same index.
pub trait Backend: Send + 'static {
    /// The device really in use.
    fn device(&self) -> ActiveDevice;

    /// Shop embeddings: `images` `[N,3,H,W]`, `tags` `[N,T]` multi-hot → `[N,C]`, L2-normalised.
    fn embed_shop(
        &mut self,
        images: ArrayView4<f32>,
        tags: ArrayView2<f32>,
    ) -> Result<Array2<f32>, InferenceError>;

    /// User branch: `images` `[N,3,H,W]` → (`features` `[N,L,C]`, `embedding` `[N,C]`).
    fn embed_user(
        &mut self,
        images: ArrayView4<f32>,
    ) -> Result<(Array3<f32>, Array2<f32>), InferenceError>;

    /// Attention re-rank: `features` `[B,L,C]`, `candidates` `[B,K,C]` → (`scores` `[B,K]`,
    /// `attention` `[B,K,L]`).
    fn rerank(
        &mut self,
        features: ArrayView3<f32>,
        candidates: ArrayView3<f32>,
    ) -> Result<(Array2<f32>, Array3<f32>), InferenceError>;

    /// The model's fixed dimensions, if known; the queue then rejects requests with the wrong
    /// shape at once. The default (`None`) leaves all checking to the backend.
    fn dims(&self) -> Option<ModelDims> {
        None
    }
}

impl Backend for Box<dyn Backend> {
    fn device(&self) -> ActiveDevice {
        (**self).device()
    }
    fn embed_shop(
        &mut self,
        images: ArrayView4<f32>,
        tags: ArrayView2<f32>,
    ) -> Result<Array2<f32>, InferenceError> {
        (**self).embed_shop(images, tags)
    }
    fn embed_user(
        &mut self,
        images: ArrayView4<f32>,
    ) -> Result<(Array3<f32>, Array2<f32>), InferenceError> {
        (**self).embed_user(images)
    }
    fn rerank(
        &mut self,
        features: ArrayView3<f32>,
        candidates: ArrayView3<f32>,
    ) -> Result<(Array2<f32>, Array3<f32>), InferenceError> {
        (**self).rerank(features, candidates)
    }
    fn dims(&self) -> Option<ModelDims> {
        (**self).dims()
    }
}

/// [`Backend`] on ONNX Runtime, one session per graph.
pub struct OrtBackend {
    shop: Session,
    user: Session,
    ctx: Session,
    device: ActiveDevice,
    dims: ModelDims,
}

impl fmt::Debug for OrtBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OrtBackend")
            .field("device", &self.device)
            .field("dims", &self.dims)
            .finish_non_exhaustive()
    }
}

impl OrtBackend {
    /// Opens the bundle's three graphs on `device` and checks them against the manifest.
    ///
    /// Initialises ONNX Runtime with the default library resolution if [`runtime::init_runtime`]
    /// has not been called. With [`Device::Cuda`], the CUDA execution provider is registered with
    /// `error_on_failure`; if registration or session creation fails, the failure is logged as a
    /// warning and all graphs are opened on CPU instead ([`OrtBackend::device`] tells which).
    /// Every session gets the same `threading`.
    pub fn load(
        bundle: &Bundle,
        device: Device,
        threading: Threading,
    ) -> Result<Self, InferenceError> {
        let env = runtime::environment()?;
        let (sessions, active) = match device {
            Device::Cpu => (open_all(env, bundle, false, threading)?, ActiveDevice::Cpu),
            Device::Cuda => match open_all(env, bundle, true, threading) {
                Ok(s) => (s, ActiveDevice::Cuda),
                Err(e) => {
                    tracing::warn!(error = %e, "CUDA unavailable, falling back to CPU");
                    (open_all(env, bundle, false, threading)?, ActiveDevice::Cpu)
                }
            },
        };
        let [shop, user, ctx] = sessions;
        for (kind, session) in [
            (GraphKind::Shop, &shop),
            (GraphKind::User, &user),
            (GraphKind::Ctx, &ctx),
        ] {
            check_session(bundle, kind, session)?;
        }
        tracing::info!(
            device = %active,
            model_version = %bundle.model_version(),
            "inference sessions ready"
        );
        Ok(OrtBackend {
            shop,
            user,
            ctx,
            device: active,
            dims: ModelDims::of(bundle),
        })
    }

    fn check_images(&self, images: &ArrayView4<f32>) -> Result<usize, InferenceError> {
        let d = self.dims;
        let s = images.shape();
        if s[1..] != [3, d.height, d.width] {
            return Err(InferenceError::Shape(format!(
                "images are {s:?}, the model takes [N,3,{},{}]",
                d.height, d.width
            )));
        }
        Ok(s[0])
    }
}

fn open_all(
    env: &ort::environment::Environment,
    bundle: &Bundle,
    cuda: bool,
    threading: Threading,
) -> Result<[Session; 3], InferenceError> {
    let open = |kind: GraphKind| open_session(env, &bundle.graph_path(kind), kind, cuda, threading);
    Ok([
        open(GraphKind::Shop)?,
        open(GraphKind::User)?,
        open(GraphKind::Ctx)?,
    ])
}

fn open_session(
    env: &ort::environment::Environment,
    path: &Path,
    kind: GraphKind,
    cuda: bool,
    threading: Threading,
) -> Result<Session, InferenceError> {
    let err = |what: &str, e: &dyn fmt::Display| {
        InferenceError::Runtime(format!(
            "graph {} ({}): {what}: {e}",
            kind.name(),
            path.display()
        ))
    };
    let mut builder: SessionBuilder =
        Session::builder(env).map_err(|e| err("creating session options", &e))?;
    builder = builder
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|e| err("setting the optimisation level", &e))?;
    if threading.intra_threads > 0 {
        builder = builder
            .with_intra_threads(threading.intra_threads)
            .map_err(|e| err("setting intra-op threads", &e))?;
    }
    if !threading.spinning {
        builder = builder
            .with_intra_op_spinning(false)
            .map_err(|e| err("turning intra-op spinning off", &e))?;
    }
    if cuda {
        builder = builder
            .with_execution_providers([ort::ep::CUDA::default().build().error_on_failure()])
            .map_err(|e| err("registering the CUDA execution provider", &e))?;
    }
    builder
        .commit_from_file(path)
        .map_err(|e| err("loading the graph", &e))
}

/// Formats a session's tensor type as `f32[?,3,224,224]` (`?`, or the symbol, for dynamic).
fn describe(ty: &ValueType) -> String {
    match ty {
        ValueType::Tensor {
            ty,
            shape,
            dimension_symbols,
        } => {
            let dims: Vec<String> = shape
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    if *d >= 0 {
                        d.to_string()
                    } else {
                        match dimension_symbols.get(i) {
                            Some(s) if !s.is_empty() => s.clone(),
                            _ => "?".into(),
                        }
                    }
                })
                .collect();
            format!("{ty}[{}]", dims.join(","))
        }
        other => format!("{other:?}"),
    }
}

/// Does a session's tensor agree with the manifest's shape? Inputs are strict (a fixed
/// dimension must be that number, a dynamic one must be dynamic, or batching breaks). Outputs
/// may report a fixed dimension as unknown (`-1`), since ONNX shape inference does not always
/// resolve them; their shapes are checked again on every run.
fn agrees(ty: &ValueType, expected: &[Dim], is_input: bool) -> bool {
    let ValueType::Tensor { ty, shape, .. } = ty else {
        return false;
    };
    *ty == TensorElementType::Float32
        && shape.len() == expected.len()
        && shape.iter().zip(expected).all(|(found, exp)| match exp {
            Dim::Fixed(n) => *found == *n as i64 || (!is_input && *found < 0),
            Dim::Dynamic(_) => *found < 0,
        })
}

fn check_session(
    bundle: &Bundle,
    kind: GraphKind,
    session: &Session,
) -> Result<(), InferenceError> {
    let spec = bundle.manifest.graphs.get(kind);
    let graph = format!("graph {} ({})", kind.name(), spec.file);
    for input in session.inputs() {
        if !spec.inputs.contains_key(input.name()) {
            return Err(InferenceError::Bundle(format!(
                "{graph}: has input {:?} {} which the manifest does not declare",
                input.name(),
                describe(input.dtype())
            )));
        }
    }
    for (what, declared, found, is_input) in [
        ("input", &spec.inputs, session.inputs(), true),
        ("output", &spec.outputs, session.outputs(), false),
    ] {
        for (name, shape) in declared {
            let Some(outlet) = found.iter().find(|o| o.name() == name) else {
                let names: Vec<&str> = found.iter().map(|o| o.name()).collect();
                return Err(InferenceError::Bundle(format!(
                    "{graph}: {what} {name:?}: expected f32{}, found no such {what} (the graph has {})",
                    shape_to_string(shape),
                    names.join(", ")
                )));
            };
            if !agrees(outlet.dtype(), shape, is_input) {
                return Err(InferenceError::Bundle(format!(
                    "{graph}: {what} {name:?}: expected f32{}, found {}",
                    shape_to_string(shape),
                    describe(outlet.dtype())
                )));
            }
        }
    }
    Ok(())
}

fn run_err(kind: GraphKind) -> impl Fn(ort::Error) -> InferenceError {
    move |e| InferenceError::Runtime(format!("graph {}: {e}", kind.name()))
}

/// Copies output `name` of `outputs` into an owned array of rank `D` and checks its shape.
fn extract<D: ndarray::Dimension>(
    outputs: &ort::session::SessionOutputs<'_>,
    kind: GraphKind,
    name: &str,
    expected: &[usize],
) -> Result<ndarray::Array<f32, D>, InferenceError> {
    let value = outputs.get(name).ok_or_else(|| {
        InferenceError::Runtime(format!("graph {}: no output {name:?}", kind.name()))
    })?;
    let view = value.try_extract_array::<f32>().map_err(run_err(kind))?;
    if view.shape() != expected {
        return Err(InferenceError::Shape(format!(
            "graph {}: output {name:?} is {:?}, expected {expected:?}",
            kind.name(),
            view.shape()
        )));
    }
    Ok(view
        .into_dimensionality::<D>()
        .expect("rank checked against `expected`; this is a bug")
        .to_owned())
}

impl Backend for OrtBackend {
    fn device(&self) -> ActiveDevice {
        self.device
    }

    fn dims(&self) -> Option<ModelDims> {
        Some(self.dims)
    }

    fn embed_shop(
        &mut self,
        images: ArrayView4<f32>,
        tags: ArrayView2<f32>,
    ) -> Result<Array2<f32>, InferenceError> {
        let n = self.check_images(&images)?;
        let d = self.dims;
        if tags.shape() != [n, d.tags] {
            return Err(InferenceError::Shape(format!(
                "tags are {:?}, expected [{n},{}]",
                tags.shape(),
                d.tags
            )));
        }
        if n == 0 {
            return Ok(Array2::zeros((0, d.embedding_dim)));
        }
        let kind = GraphKind::Shop;
        let images = images.as_standard_layout();
        let tags = tags.as_standard_layout();
        let outputs = self
            .shop
            .run(ort::inputs![
                "image" => TensorRef::from_array_view(&images).map_err(run_err(kind))?,
                "tags" => TensorRef::from_array_view(&tags).map_err(run_err(kind))?,
            ])
            .map_err(run_err(kind))?;
        extract::<Ix2>(&outputs, kind, "embedding", &[n, d.embedding_dim])
    }

    fn embed_user(
        &mut self,
        images: ArrayView4<f32>,
    ) -> Result<(Array3<f32>, Array2<f32>), InferenceError> {
        let n = self.check_images(&images)?;
        let d = self.dims;
        if n == 0 {
            return Ok((
                Array3::zeros((0, d.locations, d.embedding_dim)),
                Array2::zeros((0, d.embedding_dim)),
            ));
        }
        let kind = GraphKind::User;
        let images = images.as_standard_layout();
        let outputs = self
            .user
            .run(ort::inputs![
                "image" => TensorRef::from_array_view(&images).map_err(run_err(kind))?,
            ])
            .map_err(run_err(kind))?;
        let features = extract::<Ix3>(
            &outputs,
            kind,
            "features",
            &[n, d.locations, d.embedding_dim],
        )?;
        let embedding = extract::<Ix2>(&outputs, kind, "embedding", &[n, d.embedding_dim])?;
        Ok((features, embedding))
    }

    fn rerank(
        &mut self,
        features: ArrayView3<f32>,
        candidates: ArrayView3<f32>,
    ) -> Result<(Array2<f32>, Array3<f32>), InferenceError> {
        let d = self.dims;
        let b = features.shape()[0];
        if features.shape()[1..] != [d.locations, d.embedding_dim] {
            return Err(InferenceError::Shape(format!(
                "features are {:?}, expected [B,{},{}]",
                features.shape(),
                d.locations,
                d.embedding_dim
            )));
        }
        let cs = candidates.shape();
        if cs[0] != b || cs[2] != d.embedding_dim {
            return Err(InferenceError::Shape(format!(
                "candidates are {cs:?}, expected [{b},K,{}]",
                d.embedding_dim
            )));
        }
        let k = cs[1];
        if b == 0 || k == 0 {
            return Ok((Array2::zeros((b, k)), Array3::zeros((b, k, d.locations))));
        }
        let kind = GraphKind::Ctx;
        let features = features.as_standard_layout();
        let candidates = candidates.as_standard_layout();
        let outputs = self
            .ctx
            .run(ort::inputs![
                "features" => TensorRef::from_array_view(&features).map_err(run_err(kind))?,
                "candidates" => TensorRef::from_array_view(&candidates).map_err(run_err(kind))?,
            ])
            .map_err(run_err(kind))?;
        let scores = extract::<Ix2>(&outputs, kind, "scores", &[b, k])?;
        let attention = extract::<Ix3>(&outputs, kind, "attention", &[b, k, d.locations])?;
        Ok((scores, attention))
    }
}

//! The model bundle: `manifest.json`, the three ONNX graphs and their checksums.
//!
//! It exists so that everything the service needs to reproduce the model's numbers is read from
//! one validated place (see `models/BUNDLE.md`). A bundle that disagrees with its contract must
//! make `Bundle::load` fail with a message naming what is wrong; this module must never guess a
//! missing figure, hard-code one from a particular bundle, or load a graph (that is
//! `backend.rs`'s job, once the bundle has been checked).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::InferenceError;

/// The only manifest `format_version` this crate implements.
pub const FORMAT_VERSION: u32 = 1;

/// The resize methods `Preprocessor` implements (`preprocess.resize.method`).
pub const KNOWN_RESIZE_METHODS: &[&str] = &["pillow_bilinear"];

/// The parsed `manifest.json` (see `models/BUNDLE.md`).
#[derive(Clone, Debug, Deserialize)]
pub struct Manifest {
    /// Version of the manifest format; must equal [`FORMAT_VERSION`].
    pub format_version: u32,
    /// Identifies the trained weights; reported by the service and stored with embeddings.
    pub model_version: String,
    /// Name of the backbone network (informational).
    pub backbone: String,
    /// The image input of the graphs.
    pub input: InputSpec,
    /// How an image file becomes the `image` tensor.
    pub preprocess: PreprocessSpec,
    /// `C`: the length of every embedding and feature vector.
    pub embedding_dim: usize,
    /// The `grid_h × grid_w` feature grid of the user branch.
    pub grid: GridSpec,
    /// `L`: the number of feature locations, `grid.h * grid.w`.
    pub locations: usize,
    /// The tag vocabulary of the shop branch.
    pub tags: TagsSpec,
    /// Input and output names and shapes of the three graphs.
    pub graphs: GraphsSpec,
    /// The similarity the embeddings are meant for (`"cosine"`).
    pub metric: String,
    /// Re-ranking settings.
    pub rerank: RerankSpec,
    /// The P@K table the pipeline measured (informational, passed through).
    #[serde(default)]
    pub evaluation: serde_json::Value,
    /// How the weights were trained (informational, passed through).
    #[serde(default)]
    pub training: serde_json::Value,
    /// Every file of the bundle except `manifest.json`, relative to the bundle directory.
    pub files: BTreeMap<String, FileSpec>,
}

/// `manifest.input`.
#[derive(Clone, Debug, Deserialize)]
pub struct InputSpec {
    /// `H` of the image tensor.
    pub height: usize,
    /// `W` of the image tensor.
    pub width: usize,
    /// Must be 3.
    pub channels: usize,
    /// Must be `"NCHW"`.
    pub layout: String,
    /// Must be `"RGB"`.
    pub color: String,
}

/// `manifest.preprocess`.
#[derive(Clone, Debug, Deserialize)]
pub struct PreprocessSpec {
    /// Whether the EXIF orientation tag is applied before resizing.
    pub exif_transpose: bool,
    /// How the decoded image is resized.
    pub resize: ResizeSpec,
    /// Multiplier taking an 8-bit sample to `[0, 1]` (1/255).
    pub scale: f64,
    /// Per-channel mean subtracted after scaling (R, G, B).
    pub mean: Vec<f64>,
    /// Per-channel standard deviation divided by after subtracting the mean (R, G, B).
    pub std: Vec<f64>,
    /// Whether a JPEG is decoded at a reduced DCT scale first (1/2, 1/4 or 1/8, the one Pillow's
    /// `Image.draft("RGB", size)` picks for the resize target, asked in the stored orientation),
    /// then resized as usual (BUNDLE.md step 1b). Absent: `false`, a full-size decode, as every
    /// bundle made before the field existed.
    #[serde(default)]
    pub jpeg_draft: bool,
    /// With `jpeg_draft`: the size asked of the draft is this multiple of the resize target
    /// (1-8). Absent: 1, Pillow's `draft()` for the target itself. 2 keeps at least twice the
    /// input's pixels per side, so images under twice that size decode in full and a 12 MP
    /// photo decodes at 1/4 scale, not 1/8.
    #[serde(default = "one")]
    pub jpeg_draft_factor: u32,
}

fn one() -> u32 {
    1
}

/// `manifest.preprocess.resize`.
#[derive(Clone, Debug, Deserialize)]
pub struct ResizeSpec {
    /// The resampling algorithm; one of [`KNOWN_RESIZE_METHODS`].
    pub method: String,
    /// Target width; must equal `input.width`.
    pub width: usize,
    /// Target height; must equal `input.height`.
    pub height: usize,
    /// Must be `false`: the whole image is stretched to `width × height`.
    pub keep_aspect: bool,
}

/// `manifest.grid`.
#[derive(Clone, Copy, Debug, Deserialize)]
pub struct GridSpec {
    /// Rows of the feature grid.
    pub h: usize,
    /// Columns of the feature grid.
    pub w: usize,
}

/// `manifest.tags`.
#[derive(Clone, Debug, Deserialize)]
pub struct TagsSpec {
    /// `T`: the length of the multi-hot tag vector.
    pub count: usize,
    /// The tags, in the order of the multi-hot vector (`key:value` strings).
    pub vocabulary: Vec<String>,
}

/// `manifest.rerank`.
#[derive(Clone, Copy, Debug, Deserialize)]
pub struct RerankSpec {
    /// How many nearest neighbours the service re-ranks per query.
    pub candidates: usize,
    /// Whether a search re-ranks when the caller does not say (absent: `true`). A bundle whose
    /// re-rank does not beat its own first pass sets `false`.
    #[serde(default = "yes")]
    pub default: bool,
    /// How the final score of a re-ranked candidate is made (absent: the CtxYNet score alone).
    #[serde(default)]
    pub fusion: Fusion,
}

fn yes() -> bool {
    true
}

/// `manifest.rerank.fusion`: `score = first_pass · first-pass score + ctx · CtxYNet score`,
/// with the weights the pipeline fitted on its validation split.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Fusion {
    pub first_pass: f32,
    pub ctx: f32,
}

impl Default for Fusion {
    /// The CtxYNet score alone (the paper's re-rank).
    fn default() -> Self {
        Fusion {
            first_pass: 0.0,
            ctx: 1.0,
        }
    }
}

/// `manifest.files[..]`.
#[derive(Clone, Debug, Deserialize)]
pub struct FileSpec {
    /// Lower-case hex SHA-256 of the file.
    pub sha256: String,
    /// Size of the file in bytes.
    pub bytes: u64,
}

/// `manifest.graphs`.
#[derive(Clone, Debug, Deserialize)]
pub struct GraphsSpec {
    /// The shop branch (`image`, `tags` → `embedding`).
    pub shop: GraphSpec,
    /// The user branch (`image` → `features`, `embedding`).
    pub user: GraphSpec,
    /// The attention re-ranker (`features`, `candidates` → `scores`, `attention`).
    pub ctx: GraphSpec,
}

impl GraphsSpec {
    /// The spec of one graph.
    pub fn get(&self, kind: GraphKind) -> &GraphSpec {
        match kind {
            GraphKind::Shop => &self.shop,
            GraphKind::User => &self.user,
            GraphKind::Ctx => &self.ctx,
        }
    }
}

/// One graph of the bundle.
#[derive(Clone, Debug, Deserialize)]
pub struct GraphSpec {
    /// File name relative to the bundle directory.
    pub file: String,
    /// Input tensors by name.
    pub inputs: BTreeMap<String, Vec<Dim>>,
    /// Output tensors by name.
    pub outputs: BTreeMap<String, Vec<Dim>>,
}

/// One dimension of a tensor shape in the manifest: an integer is fixed, a string (`"N"`, `"K"`)
/// is dynamic.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Dim {
    /// A fixed size.
    Fixed(u64),
    /// A dynamic size, with its symbolic name.
    Dynamic(String),
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Dynamic(s) => f.write_str(s),
        }
    }
}

/// Formats a shape as `[N,3,224,224]` for error messages.
pub fn shape_to_string(shape: &[Dim]) -> String {
    let parts: Vec<String> = shape.iter().map(Dim::to_string).collect();
    format!("[{}]", parts.join(","))
}

/// The three graphs of a bundle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GraphKind {
    /// `shop.onnx`
    Shop,
    /// `user.onnx`
    User,
    /// `ctx.onnx`
    Ctx,
}

impl GraphKind {
    /// All graphs, in load order.
    pub const ALL: [GraphKind; 3] = [GraphKind::Shop, GraphKind::User, GraphKind::Ctx];

    /// The key of the graph in `manifest.graphs`.
    pub fn name(self) -> &'static str {
        match self {
            GraphKind::Shop => "shop",
            GraphKind::User => "user",
            GraphKind::Ctx => "ctx",
        }
    }
}

/// A loaded and verified model bundle.
#[derive(Clone, Debug)]
pub struct Bundle {
    /// The bundle directory.
    pub dir: PathBuf,
    /// The validated manifest.
    pub manifest: Manifest,
    /// Position of each tag in the multi-hot vector.
    tag_index: HashMap<String, usize>,
}

impl Bundle {
    /// Reads `dir/manifest.json`, checks it against the bundle contract and verifies the size and
    /// SHA-256 of every file it lists.
    pub fn load(dir: &Path) -> Result<Bundle, InferenceError> {
        let manifest_path = dir.join("manifest.json");
        let text = std::fs::read_to_string(&manifest_path)
            .map_err(|e| InferenceError::io(&manifest_path, e))?;
        let manifest: Manifest = serde_json::from_str(&text).map_err(|e| {
            InferenceError::Bundle(format!(
                "{}: invalid manifest: {e}",
                manifest_path.display()
            ))
        })?;
        let bundle = Bundle::from_manifest(dir, manifest)?;
        bundle.verify_files()?;
        tracing::info!(
            dir = %dir.display(),
            model_version = %bundle.manifest.model_version,
            "model bundle verified"
        );
        Ok(bundle)
    }

    /// Validates `manifest` without touching the files it lists (for tests and tools; the
    /// service uses [`Bundle::load`]).
    pub fn from_manifest(dir: &Path, manifest: Manifest) -> Result<Bundle, InferenceError> {
        validate(&manifest)?;
        let tag_index = manifest
            .tags
            .vocabulary
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i))
            .collect();
        Ok(Bundle {
            dir: dir.to_path_buf(),
            manifest,
            tag_index,
        })
    }

    /// Checks the size and SHA-256 of every file in `manifest.files`.
    pub fn verify_files(&self) -> Result<(), InferenceError> {
        for (name, spec) in &self.manifest.files {
            let path = self.dir.join(name);
            let (bytes, digest) = sha256_file(&path)?;
            if bytes != spec.bytes {
                return Err(InferenceError::Bundle(format!(
                    "{}: expected {} bytes (manifest.files), found {bytes}",
                    path.display(),
                    spec.bytes
                )));
            }
            if !digest.eq_ignore_ascii_case(&spec.sha256) {
                return Err(InferenceError::Bundle(format!(
                    "{}: sha256 mismatch: manifest says {}, file has {digest}",
                    path.display(),
                    spec.sha256
                )));
            }
        }
        Ok(())
    }

    /// The version string of the trained weights.
    pub fn model_version(&self) -> &str {
        &self.manifest.model_version
    }

    /// `C`, the length of embeddings and feature vectors.
    pub fn embedding_dim(&self) -> usize {
        self.manifest.embedding_dim
    }

    /// `L`, the number of feature locations.
    pub fn locations(&self) -> usize {
        self.manifest.locations
    }

    /// `(grid_h, grid_w)`; location `l` is at row `l / grid_w`, column `l % grid_w`.
    pub fn grid(&self) -> (usize, usize) {
        (self.manifest.grid.h, self.manifest.grid.w)
    }

    /// `(H, W)` of the image tensor.
    pub fn input_size(&self) -> (usize, usize) {
        (self.manifest.input.height, self.manifest.input.width)
    }

    /// The tag vocabulary, in the order of the multi-hot vector.
    pub fn vocabulary(&self) -> &[String] {
        &self.manifest.tags.vocabulary
    }

    /// Path of one graph file.
    pub fn graph_path(&self, kind: GraphKind) -> PathBuf {
        self.dir.join(&self.manifest.graphs.get(kind).file)
    }

    /// The multi-hot vector of `tags` over the vocabulary, and the tags the model does not know
    /// (in input order, without repeats). Unknown tags are not an error: a shop may use tags
    /// the model was not trained with; they simply do not contribute.
    pub fn tag_vector(&self, tags: &[String]) -> (Vec<f32>, Vec<String>) {
        let mut vector = vec![0.0f32; self.manifest.tags.count];
        let mut unknown: Vec<String> = Vec::new();
        for tag in tags {
            match self.tag_index.get(tag) {
                Some(&i) => vector[i] = 1.0,
                None => {
                    if !unknown.contains(tag) {
                        unknown.push(tag.clone());
                    }
                }
            }
        }
        (vector, unknown)
    }
}

/// Tensor names with their contract shapes (`None` = dynamic dimension).
pub(crate) type ContractShapes = Vec<(&'static str, Vec<Option<u64>>)>;

/// The shapes the bundle contract (`models/BUNDLE.md`) prescribes for one graph, derived from the
/// manifest's scalar fields. `None` marks a dynamic dimension.
pub(crate) fn contract_shapes(m: &Manifest, kind: GraphKind) -> (ContractShapes, ContractShapes) {
    let h = Some(m.input.height as u64);
    let w = Some(m.input.width as u64);
    let c = Some(m.embedding_dim as u64);
    let l = Some(m.locations as u64);
    let t = Some(m.tags.count as u64);
    let three = Some(3);
    match kind {
        GraphKind::Shop => (
            vec![("image", vec![None, three, h, w]), ("tags", vec![None, t])],
            vec![("embedding", vec![None, c])],
        ),
        GraphKind::User => (
            vec![("image", vec![None, three, h, w])],
            vec![("features", vec![None, l, c]), ("embedding", vec![None, c])],
        ),
        GraphKind::Ctx => (
            vec![
                ("features", vec![None, l, c]),
                ("candidates", vec![None, None, c]),
            ],
            vec![
                ("scores", vec![None, None]),
                ("attention", vec![None, None, l]),
            ],
        ),
    }
}

/// Formats a contract shape (`None` = dynamic) for error messages.
pub(crate) fn contract_to_string(shape: &[Option<u64>]) -> String {
    let parts: Vec<String> = shape
        .iter()
        .map(|d| d.map_or_else(|| "?".to_string(), |n| n.to_string()))
        .collect();
    format!("[{}]", parts.join(","))
}

fn bad(msg: impl Into<String>) -> InferenceError {
    InferenceError::Bundle(msg.into())
}

fn validate(m: &Manifest) -> Result<(), InferenceError> {
    if m.format_version != FORMAT_VERSION {
        return Err(bad(format!(
            "manifest format_version is {}, this service implements {FORMAT_VERSION}",
            m.format_version
        )));
    }
    if m.model_version.trim().is_empty() {
        return Err(bad("manifest model_version is empty"));
    }
    let input = &m.input;
    if input.channels != 3 || input.layout != "NCHW" || input.color != "RGB" {
        return Err(bad(format!(
            "manifest input must be 3-channel NCHW RGB, found {} channels, layout {:?}, color {:?}",
            input.channels, input.layout, input.color
        )));
    }
    if input.height == 0 || input.width == 0 {
        return Err(bad(
            "manifest input.height and input.width must be positive",
        ));
    }
    let p = &m.preprocess;
    if !KNOWN_RESIZE_METHODS.contains(&p.resize.method.as_str()) {
        return Err(bad(format!(
            "manifest preprocess.resize.method {:?} is not implemented (known: {})",
            p.resize.method,
            KNOWN_RESIZE_METHODS.join(", ")
        )));
    }
    if p.resize.keep_aspect {
        return Err(bad(
            "manifest preprocess.resize.keep_aspect = true is not implemented",
        ));
    }
    if (p.resize.width, p.resize.height) != (input.width, input.height) {
        return Err(bad(format!(
            "manifest preprocess.resize is {}x{} but input is {}x{}",
            p.resize.width, p.resize.height, input.width, input.height
        )));
    }
    if !p.exif_transpose {
        // Preprocessing always applies the orientation (BUNDLE.md step 1); a bundle trained
        // without it would silently get different inputs.
        return Err(bad(
            "manifest preprocess.exif_transpose = false is not implemented",
        ));
    }
    if !(p.scale.is_finite() && p.scale > 0.0) {
        return Err(bad(format!(
            "manifest preprocess.scale {} must be positive",
            p.scale
        )));
    }
    if p.mean.len() != 3 || p.std.len() != 3 {
        return Err(bad(format!(
            "manifest preprocess.mean and .std need 3 values each, found {} and {}",
            p.mean.len(),
            p.std.len()
        )));
    }
    if p.mean.iter().any(|v| !v.is_finite()) || p.std.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
        return Err(bad(
            "manifest preprocess.mean must be finite and .std positive",
        ));
    }
    if !(1..=8).contains(&p.jpeg_draft_factor) {
        return Err(bad(format!(
            "manifest preprocess.jpeg_draft_factor {} must be 1 to 8",
            p.jpeg_draft_factor
        )));
    }
    if m.embedding_dim == 0 {
        return Err(bad("manifest embedding_dim must be positive"));
    }
    if m.grid.h == 0 || m.grid.w == 0 || m.locations != m.grid.h * m.grid.w {
        return Err(bad(format!(
            "manifest locations ({}) must equal grid.h * grid.w ({} * {})",
            m.locations, m.grid.h, m.grid.w
        )));
    }
    if m.tags.count != m.tags.vocabulary.len() {
        return Err(bad(format!(
            "manifest tags.count is {} but the vocabulary has {} entries",
            m.tags.count,
            m.tags.vocabulary.len()
        )));
    }
    let mut seen = HashSet::new();
    if let Some(dup) = m.tags.vocabulary.iter().find(|t| !seen.insert(t.as_str())) {
        return Err(bad(format!("manifest tag vocabulary repeats {dup:?}")));
    }
    if m.metric != "cosine" {
        return Err(bad(format!(
            "manifest metric {:?} is not implemented (only \"cosine\")",
            m.metric
        )));
    }
    let f = m.rerank.fusion;
    if !f.first_pass.is_finite() || !f.ctx.is_finite() || f.ctx <= 0.0 || f.first_pass < 0.0 {
        return Err(bad(
            "manifest rerank.fusion needs finite weights, ctx > 0 and first_pass >= 0",
        ));
    }
    if m.rerank.candidates == 0 {
        return Err(bad("manifest rerank.candidates must be positive"));
    }
    for name in m.files.keys() {
        check_relative(name)?;
    }
    for kind in GraphKind::ALL {
        validate_graph(m, kind)?;
    }
    Ok(())
}

/// A bundle file name must stay inside the bundle directory.
fn check_relative(name: &str) -> Result<(), InferenceError> {
    let path = Path::new(name);
    let ok = !name.is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(())
    } else {
        Err(bad(format!(
            "manifest file name {name:?} must be a relative path inside the bundle"
        )))
    }
}

fn validate_graph(m: &Manifest, kind: GraphKind) -> Result<(), InferenceError> {
    let spec = m.graphs.get(kind);
    let graph = kind.name();
    check_relative(&spec.file)?;
    if !m.files.contains_key(&spec.file) {
        return Err(bad(format!(
            "graph {graph}: file {:?} is not listed in manifest.files (no checksum)",
            spec.file
        )));
    }
    let (inputs, outputs) = contract_shapes(m, kind);
    for (what, declared, expected) in [
        ("input", &spec.inputs, inputs),
        ("output", &spec.outputs, outputs),
    ] {
        let expected_names: Vec<&str> = expected.iter().map(|(n, _)| *n).collect();
        if let Some(extra) = declared
            .keys()
            .find(|k| !expected_names.contains(&k.as_str()))
        {
            return Err(bad(format!(
                "graph {graph}: unexpected {what} {extra:?} (the contract has {})",
                expected_names.join(", ")
            )));
        }
        for (name, shape) in &expected {
            let Some(found) = declared.get(*name) else {
                return Err(bad(format!("graph {graph}: {what} {name:?} is missing")));
            };
            let matches = found.len() == shape.len()
                && found.iter().zip(shape).all(|(f, e)| match (f, e) {
                    (Dim::Fixed(a), Some(b)) => a == b,
                    (Dim::Dynamic(_), None) => true,
                    _ => false,
                });
            if !matches {
                return Err(bad(format!(
                    "graph {graph}: {what} {name:?}: manifest declares {}, the contract needs {} \
                     (? = dynamic)",
                    shape_to_string(found),
                    contract_to_string(shape)
                )));
            }
        }
    }
    Ok(())
}

fn sha256_file(path: &Path) -> Result<(u64, String), InferenceError> {
    let mut file = File::open(path).map_err(|e| InferenceError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| InferenceError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((total, hex::encode(hasher.finalize())))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A manifest that satisfies the contract, with small figures.
    pub(crate) fn sample_manifest_json() -> serde_json::Value {
        serde_json::json!({
            "format_version": 1,
            "model_version": "test-1",
            "backbone": "tiny",
            "input": {"height": 8, "width": 6, "channels": 3, "layout": "NCHW", "color": "RGB"},
            "preprocess": {
                "exif_transpose": true,
                "resize": {"method": "pillow_bilinear", "width": 6, "height": 8, "keep_aspect": false},
                "scale": 0.00392156862745098,
                "mean": [0.485, 0.456, 0.406],
                "std": [0.229, 0.224, 0.225]
            },
            "embedding_dim": 4,
            "grid": {"h": 2, "w": 3},
            "locations": 6,
            "tags": {"count": 3, "vocabulary": ["category:dress", "color:red", "sleeve:long"]},
            "graphs": {
                "shop": {"file": "shop.onnx", "inputs": {"image": ["N",3,8,6], "tags": ["N",3]}, "outputs": {"embedding": ["N",4]}},
                "user": {"file": "user.onnx", "inputs": {"image": ["N",3,8,6]}, "outputs": {"features": ["N",6,4], "embedding": ["N",4]}},
                "ctx":  {"file": "ctx.onnx",  "inputs": {"features": ["B",6,4], "candidates": ["B","K",4]}, "outputs": {"scores": ["B","K"], "attention": ["B","K",6]}}
            },
            "metric": "cosine",
            "rerank": {"candidates": 16},
            "evaluation": {"p@1": 0.5},
            "training": {"data": "none"},
            "files": {
                "shop.onnx": {"sha256": "00", "bytes": 0},
                "user.onnx": {"sha256": "00", "bytes": 0},
                "ctx.onnx": {"sha256": "00", "bytes": 0}
            }
        })
    }

    fn parse(v: serde_json::Value) -> Result<Bundle, InferenceError> {
        let m: Manifest = serde_json::from_value(v).expect("test manifest parses");
        Bundle::from_manifest(Path::new("/nonexistent"), m)
    }

    fn expect_err(v: serde_json::Value, needle: &str) {
        match parse(v) {
            Ok(_) => panic!("manifest accepted, expected an error containing {needle:?}"),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains(needle), "{msg:?} does not contain {needle:?}");
            }
        }
    }

    #[test]
    fn accepts_contract_manifest() {
        let b = parse(sample_manifest_json()).unwrap();
        assert_eq!(b.model_version(), "test-1");
        assert_eq!(b.embedding_dim(), 4);
        assert_eq!(b.locations(), 6);
        assert_eq!(b.grid(), (2, 3));
        assert_eq!(b.input_size(), (8, 6));
        assert_eq!(b.vocabulary().len(), 3);
    }

    #[test]
    fn jpeg_draft_is_optional_and_typed() {
        let b = parse(sample_manifest_json()).unwrap();
        assert!(
            !b.manifest.preprocess.jpeg_draft,
            "absent means a full-size decode"
        );
        let mut v = sample_manifest_json();
        v["preprocess"]["jpeg_draft"] = true.into();
        assert!(parse(v).unwrap().manifest.preprocess.jpeg_draft);
        let mut v = sample_manifest_json();
        v["preprocess"]["jpeg_draft"] = "yes".into();
        assert!(serde_json::from_value::<Manifest>(v).is_err());
        // The draft factor: 1 when absent, 1-8 accepted, the rest refused with its name.
        assert_eq!(
            parse(sample_manifest_json())
                .unwrap()
                .manifest
                .preprocess
                .jpeg_draft_factor,
            1
        );
        let mut v = sample_manifest_json();
        v["preprocess"]["jpeg_draft_factor"] = 2.into();
        assert_eq!(parse(v).unwrap().manifest.preprocess.jpeg_draft_factor, 2);
        for bad in [0, 9] {
            let mut v = sample_manifest_json();
            v["preprocess"]["jpeg_draft_factor"] = bad.into();
            let e = parse(v).unwrap_err().to_string();
            assert!(e.contains("jpeg_draft_factor"), "{e}");
        }
    }

    #[test]
    fn tag_vector_multi_hot_and_unknown() {
        let b = parse(sample_manifest_json()).unwrap();
        let tags: Vec<String> = ["sleeve:long", "brand:acme", "category:dress", "brand:acme"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (v, unknown) = b.tag_vector(&tags);
        assert_eq!(v, vec![1.0, 0.0, 1.0]);
        assert_eq!(unknown, vec!["brand:acme".to_string()]);
        let (v, unknown) = b.tag_vector(&[]);
        assert_eq!(v, vec![0.0; 3]);
        assert!(unknown.is_empty());
    }

    #[test]
    fn rejects_wrong_format_version() {
        let mut v = sample_manifest_json();
        v["format_version"] = 2.into();
        expect_err(v, "format_version is 2");
    }

    #[test]
    fn rejects_inconsistent_locations() {
        let mut v = sample_manifest_json();
        v["locations"] = 7.into();
        expect_err(v, "locations (7) must equal grid.h * grid.w (2 * 3)");
    }

    #[test]
    fn rejects_tag_count_mismatch() {
        let mut v = sample_manifest_json();
        v["tags"]["count"] = 4.into();
        expect_err(v, "tags.count is 4 but the vocabulary has 3 entries");
    }

    #[test]
    fn rejects_unknown_resize_method() {
        let mut v = sample_manifest_json();
        v["preprocess"]["resize"]["method"] = "lanczos".into();
        expect_err(v, "\"lanczos\" is not implemented");
    }

    #[test]
    fn rejects_graph_shape_disagreeing_with_scalars() {
        let mut v = sample_manifest_json();
        v["graphs"]["user"]["outputs"]["features"] = serde_json::json!(["N", 6, 5]);
        expect_err(
            v,
            "graph user: output \"features\": manifest declares [N,6,5]",
        );
        let mut v = sample_manifest_json();
        v["graphs"]["ctx"]["inputs"]["candidates"] = serde_json::json!(["B", 16, 4]);
        expect_err(v, "graph ctx: input \"candidates\"");
        let mut v = sample_manifest_json();
        v["graphs"]["shop"]["inputs"]
            .as_object_mut()
            .unwrap()
            .remove("tags");
        expect_err(v, "graph shop: input \"tags\" is missing");
    }

    #[test]
    fn rejects_escaping_file_names() {
        let mut v = sample_manifest_json();
        v["files"]["../secret"] = serde_json::json!({"sha256": "00", "bytes": 0});
        expect_err(v, "must be a relative path inside the bundle");
    }

    #[test]
    fn rejects_unlisted_graph_file() {
        let mut v = sample_manifest_json();
        v["files"].as_object_mut().unwrap().remove("ctx.onnx");
        expect_err(v, "graph ctx: file \"ctx.onnx\" is not listed");
    }

    #[test]
    fn verifies_checksums_and_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let mut v = sample_manifest_json();
        let body = b"not really onnx";
        let digest = hex::encode(Sha256::digest(body));
        for name in ["shop.onnx", "user.onnx", "ctx.onnx"] {
            std::fs::write(dir.path().join(name), body).unwrap();
            v["files"][name] = serde_json::json!({"sha256": digest, "bytes": body.len()});
        }
        std::fs::write(dir.path().join("manifest.json"), v.to_string()).unwrap();
        Bundle::load(dir.path()).unwrap();

        std::fs::write(dir.path().join("ctx.onnx"), b"not really onnX").unwrap();
        let err = Bundle::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("ctx.onnx: sha256 mismatch"), "{err}");

        std::fs::remove_file(dir.path().join("ctx.onnx")).unwrap();
        let err = Bundle::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("ctx.onnx"), "{err}");
    }

    #[test]
    fn missing_manifest_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = Bundle::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("manifest.json"), "{err}");
    }
}

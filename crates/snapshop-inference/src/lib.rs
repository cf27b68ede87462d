//! Model inference for snapshop: the model bundle, image preprocessing, the ONNX Runtime backend
//! and the batching queue that serialises access to it.
//!
//! The crate exists so that the HTTP service sees one small async API ([`InferenceQueue`]) and
//! never touches ONNX Runtime, tensors layouts or the bundle format itself. It must never do
//! network or database I/O, and must never run model code on an async executor thread: graphs
//! run on the queue's dedicated OS thread, preprocessing in the caller's `spawn_blocking`.

pub mod backend;
pub mod bundle;
mod error;
pub mod fake;
mod heic;
mod jpeg;
mod pillow;
pub mod preprocess;
pub mod queue;
pub mod runtime;

pub use backend::{ActiveDevice, Backend, Device, ModelDims, OrtBackend, Threading};
pub use bundle::{Bundle, GraphKind, Manifest};
pub use error::InferenceError;
pub use fake::FakeBackend;
pub use preprocess::{ImageLimits, PreparedImage, PreprocessError, Preprocessor};
pub use queue::{InferenceQueue, QueueConfig, RerankOutput, UserOutput};
pub use runtime::init_runtime;

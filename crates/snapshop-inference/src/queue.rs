//! The inference queue: a bounded channel in front of one OS thread that owns the backend and
//! runs requests in batches.
//!
//! It exists because ort sessions are `&mut self` and because a batched graph run is cheaper per
//! image than single runs (1.4-1.5x the images/s at batch 8-16 on two CPU cores, the
//! `user_batch` bench, docs/performance.md part 2): concurrent HTTP requests are therefore
//! funnelled to one worker, which drains whatever is already queued and runs one backend call per
//! request kind, in the manner of text-embeddings-inference's batcher. By default it never waits
//! on a timer to fill a batch; `max_queue_delay_us` (as Triton's `max_queue_delay_microseconds`)
//! lets it hold the first request that long for company, until a batch is full. The queue must
//! never block or grow without bound: a full queue answers `Overloaded` at once, and a dead worker
//! answers `WorkerGone` rather than leaving callers hanging.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ndarray::{s, Array2, Array3, Array4, Axis};
use tokio::sync::{mpsc, oneshot};
use tracing::Span;

use crate::backend::{ActiveDevice, Backend, ModelDims};
use crate::InferenceError;

/// Histogram of requests per backend call, label `kind`.
pub const METRIC_BATCH_SIZE: &str = "snapshop_inference_batch_size";
/// Gauge of requests waiting in the queue.
pub const METRIC_QUEUE_DEPTH: &str = "snapshop_inference_queue_depth";
/// Histogram of backend call durations in seconds, label `kind`.
pub const METRIC_SECONDS: &str = "snapshop_inference_seconds";
/// Histogram of the time requests wait before their batch starts, label `kind`.
pub const METRIC_WAIT_SECONDS: &str = "snapshop_inference_queue_wait_seconds";
/// Counter of requests refused because the queue was full.
pub const METRIC_OVERLOADED: &str = "snapshop_inference_overloaded_total";
/// Counter of requests dropped because their caller had gone, label `kind`.
pub const METRIC_SKIPPED: &str = "snapshop_inference_skipped_total";
/// The longest queue delay a [`QueueConfig`] may ask for (1 s); longer ones are capped.
pub const MAX_QUEUE_DELAY_US: u64 = 1_000_000;

/// Sizing of the queue and its batches. Also the service's `[queue]` config section (serde,
/// every field optional), so the defaults live only here.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// Requests that may wait; one more is refused with `Overloaded`.
    pub capacity: usize,
    /// Most images per `embed_shop` / `embed_user` call.
    pub max_batch_images: usize,
    /// Most queries per `rerank` call.
    pub max_batch_queries: usize,
    /// Microseconds the worker may hold the first request of a round for others to join it,
    /// until `max_batch_images` requests are in hand; 0 (the default) never waits. At most
    /// [`MAX_QUEUE_DELAY_US`].
    pub max_queue_delay_us: u64,
}

impl Default for QueueConfig {
    /// 256 waiting requests, 16 images or 8 re-rank queries per call, no queue delay.
    fn default() -> Self {
        QueueConfig {
            capacity: 256,
            max_batch_images: 16,
            max_batch_queries: 8,
            max_queue_delay_us: 0,
        }
    }
}

/// The user branch's result for one image.
#[derive(Clone, Debug)]
pub struct UserOutput {
    /// `[L, C]` raw location features (input of `rerank`).
    pub features: Array2<f32>,
    /// `[C]` L2-normalised embedding.
    pub embedding: Vec<f32>,
}

/// The re-ranker's result for one query.
#[derive(Clone, Debug)]
pub struct RerankOutput {
    /// `[K]` cosine scores, one per candidate, in candidate order.
    pub scores: Vec<f32>,
    /// `[K, L]` attention over the query's feature locations; rows sum to 1.
    pub attention: Array2<f32>,
}

type Reply<T> = oneshot::Sender<Result<T, InferenceError>>;

enum Job {
    Shop {
        image: Array3<f32>,
        tags: Vec<f32>,
        reply: Reply<Vec<f32>>,
    },
    User {
        image: Array3<f32>,
        reply: Reply<UserOutput>,
    },
    Rerank {
        features: Arc<Array2<f32>>,
        candidates: Array2<f32>,
        reply: Reply<RerankOutput>,
    },
}

struct Request<J> {
    job: J,
    /// The caller's span, so the worker's logs can be tied to the request.
    span: Span,
    enqueued: Instant,
}

struct ShopJob {
    image: Array3<f32>,
    tags: Vec<f32>,
    reply: Reply<Vec<f32>>,
}
struct UserJob {
    image: Array3<f32>,
    reply: Reply<UserOutput>,
}
struct RerankJob {
    features: Arc<Array2<f32>>,
    candidates: Array2<f32>,
    reply: Reply<RerankOutput>,
}

/// Handle to the inference worker; cheap to clone. The worker exits when the last handle is
/// dropped.
#[derive(Clone)]
pub struct InferenceQueue {
    inner: Arc<Shared>,
}

struct Shared {
    tx: mpsc::Sender<Request<Job>>,
    capacity: usize,
    device: ActiveDevice,
    dims: Option<ModelDims>,
}

impl InferenceQueue {
    /// Moves `backend` onto a dedicated OS thread and returns the handle feeding it.
    ///
    /// # Panics
    /// If the OS refuses to create the thread (see [`InferenceQueue::try_start`]).
    pub fn start<B: Backend>(backend: B, cfg: QueueConfig) -> Self {
        Self::try_start(backend, cfg).expect("could not spawn the inference worker thread")
    }

    /// Like [`InferenceQueue::start`], returning an error if the thread cannot be spawned.
    pub fn try_start<B: Backend>(backend: B, cfg: QueueConfig) -> Result<Self, InferenceError> {
        // Zero would make tokio's channel panic and the batcher never progress.
        let cfg = QueueConfig {
            capacity: cfg.capacity.max(1),
            max_batch_images: cfg.max_batch_images.max(1),
            max_batch_queries: cfg.max_batch_queries.max(1),
            max_queue_delay_us: cfg.max_queue_delay_us.min(MAX_QUEUE_DELAY_US),
        };
        // The worker is a plain thread; a queue delay needs a timer, hence a small runtime of its
        // own (time driver only).
        let timer = match cfg.max_queue_delay_us {
            0 => None,
            _ => Some(
                tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .map_err(|e| {
                        InferenceError::Runtime(format!("building the queue-delay timer: {e}"))
                    })?,
            ),
        };
        let (tx, rx) = mpsc::channel(cfg.capacity);
        let device = backend.device();
        let dims = backend.dims();
        let capacity = cfg.capacity;
        std::thread::Builder::new()
            .name("snapshop-inference".into())
            .spawn(move || worker(backend, rx, cfg, timer))
            .map_err(|e| InferenceError::Runtime(format!("spawning the inference worker: {e}")))?;
        Ok(InferenceQueue {
            inner: Arc::new(Shared {
                tx,
                capacity,
                device,
                dims,
            }),
        })
    }

    /// Shop embedding of one preprocessed image `[3,H,W]` with its multi-hot tag vector.
    pub async fn embed_shop(
        &self,
        image: Array3<f32>,
        tags: Vec<f32>,
    ) -> Result<Vec<f32>, InferenceError> {
        if let Some(d) = self.inner.dims {
            check_image(&image, &d)?;
            if tags.len() != d.tags {
                return Err(InferenceError::Shape(format!(
                    "tag vector has {} entries, the model has {} tags",
                    tags.len(),
                    d.tags
                )));
            }
        }
        let (reply, rx) = oneshot::channel();
        self.submit(Job::Shop { image, tags, reply })?;
        rx.await.map_err(|_| InferenceError::WorkerGone)?
    }

    /// User-branch features and embedding of one preprocessed image `[3,H,W]`.
    pub async fn embed_user(&self, image: Array3<f32>) -> Result<UserOutput, InferenceError> {
        if let Some(d) = self.inner.dims {
            check_image(&image, &d)?;
        }
        let (reply, rx) = oneshot::channel();
        self.submit(Job::User { image, reply })?;
        rx.await.map_err(|_| InferenceError::WorkerGone)?
    }

    /// Re-ranks `candidates` `[K,C]` (shop embeddings) for the query whose user-branch
    /// `features` `[L,C]` are given. `K` may differ between concurrent calls.
    pub async fn rerank(
        &self,
        features: Arc<Array2<f32>>,
        candidates: Array2<f32>,
    ) -> Result<RerankOutput, InferenceError> {
        if let Some(d) = self.inner.dims {
            if features.dim() != (d.locations, d.embedding_dim) {
                return Err(InferenceError::Shape(format!(
                    "features are {:?}, the model needs [{}, {}]",
                    features.shape(),
                    d.locations,
                    d.embedding_dim
                )));
            }
            if candidates.ncols() != d.embedding_dim {
                return Err(InferenceError::Shape(format!(
                    "candidates are {:?}, the model needs [K, {}]",
                    candidates.shape(),
                    d.embedding_dim
                )));
            }
        }
        let (reply, rx) = oneshot::channel();
        self.submit(Job::Rerank {
            features,
            candidates,
            reply,
        })?;
        rx.await.map_err(|_| InferenceError::WorkerGone)?
    }

    /// Requests waiting for the worker (not counting the batch being computed).
    pub fn queue_depth(&self) -> usize {
        self.inner.capacity - self.inner.tx.capacity()
    }

    /// The device the backend runs on.
    pub fn device(&self) -> ActiveDevice {
        self.inner.device
    }

    /// How many requests may wait before `Overloaded`.
    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    /// `false` once the worker thread has exited (after a panic); every request then fails
    /// with `WorkerGone`. For health checks.
    pub fn is_running(&self) -> bool {
        !self.inner.tx.is_closed()
    }

    /// Enqueues without waiting: a full queue is refused immediately.
    fn submit(&self, job: Job) -> Result<(), InferenceError> {
        let request = Request {
            job,
            span: Span::current(),
            enqueued: Instant::now(),
        };
        match self.inner.tx.try_send(request) {
            Ok(()) => {
                metrics::gauge!(METRIC_QUEUE_DEPTH).set(self.queue_depth() as f64);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!(METRIC_OVERLOADED).increment(1);
                Err(InferenceError::Overloaded)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(InferenceError::WorkerGone),
        }
    }
}

fn check_image(image: &Array3<f32>, d: &ModelDims) -> Result<(), InferenceError> {
    if image.dim() != (3, d.height, d.width) {
        return Err(InferenceError::Shape(format!(
            "image tensor is {:?}, the model needs [3, {}, {}]",
            image.shape(),
            d.height,
            d.width
        )));
    }
    Ok(())
}

/// The worker thread: take one request (blocking), drain what else is queued (waiting up to the
/// queue delay, with `timer`, while the batch is not full), run per kind.
fn worker<B: Backend>(
    mut backend: B,
    mut rx: mpsc::Receiver<Request<Job>>,
    cfg: QueueConfig,
    timer: Option<tokio::runtime::Runtime>,
) {
    // Enough to fill one batch of every kind; what is left waits for the next round.
    let max_drain = 2 * cfg.max_batch_images + cfg.max_batch_queries;
    tracing::debug!(?cfg, "inference worker started");
    while let Some(first) = rx.blocking_recv() {
        let mut shop = Vec::new();
        let mut user = Vec::new();
        let mut rerank = Vec::new();
        let mut sort = |r: Request<Job>| {
            let (span, enqueued) = (r.span, r.enqueued);
            match r.job {
                Job::Shop { image, tags, reply } => shop.push(Request {
                    job: ShopJob { image, tags, reply },
                    span,
                    enqueued,
                }),
                Job::User { image, reply } => user.push(Request {
                    job: UserJob { image, reply },
                    span,
                    enqueued,
                }),
                Job::Rerank {
                    features,
                    candidates,
                    reply,
                } => rerank.push(Request {
                    job: RerankJob {
                        features,
                        candidates,
                        reply,
                    },
                    span,
                    enqueued,
                }),
            }
        };
        sort(first);
        let mut taken = 1;
        while taken < max_drain {
            match rx.try_recv() {
                Ok(r) => {
                    sort(r);
                    taken += 1;
                }
                Err(_) => break,
            }
        }
        if let Some(timer) = &timer {
            let deadline =
                tokio::time::Instant::now() + Duration::from_micros(cfg.max_queue_delay_us);
            while taken < cfg.max_batch_images {
                // The timeout is made inside block_on: a timer needs the runtime's context.
                let next =
                    timer.block_on(async { tokio::time::timeout_at(deadline, rx.recv()).await });
                match next {
                    Ok(Some(r)) => {
                        sort(r);
                        taken += 1;
                    }
                    // The delay is over, or every handle is gone (the outer loop then ends).
                    Ok(None) | Err(_) => break,
                }
            }
        }
        metrics::gauge!(METRIC_QUEUE_DEPTH).set(rx.len() as f64);
        // Queries first: user embeddings and re-ranks sit on a searching user's critical path,
        // shop embeddings usually on an indexing job's.
        for chunk in chunks(user, cfg.max_batch_images) {
            run_user(&mut backend, chunk);
        }
        for chunk in chunks(rerank, cfg.max_batch_queries) {
            run_rerank(&mut backend, chunk);
        }
        for chunk in chunks(shop, cfg.max_batch_images) {
            run_shop(&mut backend, chunk);
        }
    }
    tracing::debug!("inference worker stopped: all queue handles dropped");
}

fn chunks<T>(mut items: Vec<T>, size: usize) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    while !items.is_empty() {
        let rest = items.split_off(size.min(items.len()));
        out.push(std::mem::replace(&mut items, rest));
    }
    out
}

trait HasReply {
    fn reply_closed(&self) -> bool;
}
impl HasReply for ShopJob {
    fn reply_closed(&self) -> bool {
        self.reply.is_closed()
    }
}
impl HasReply for UserJob {
    fn reply_closed(&self) -> bool {
        self.reply.is_closed()
    }
}
impl HasReply for RerankJob {
    fn reply_closed(&self) -> bool {
        self.reply.is_closed()
    }
}

/// Drops requests whose caller has gone (timed out, disconnected) before spending compute on
/// them.
fn live<J: HasReply>(requests: Vec<Request<J>>, kind: &'static str) -> Vec<Request<J>> {
    requests
        .into_iter()
        .filter(|r| {
            let gone = r.job.reply_closed();
            if gone {
                r.span
                    .in_scope(|| tracing::debug!(kind, "caller gone, request skipped"));
                metrics::counter!(METRIC_SKIPPED, "kind" => kind).increment(1);
            }
            !gone
        })
        .collect()
}

/// Opens the batch span (linked to every caller's span) and records the batch metrics.
fn batch_span<J>(requests: &[Request<J>], kind: &'static str) -> Span {
    let span = tracing::info_span!("inference_batch", kind, size = requests.len());
    let now = Instant::now();
    for r in requests {
        span.follows_from(&r.span);
        metrics::histogram!(METRIC_WAIT_SECONDS, "kind" => kind)
            .record(now.duration_since(r.enqueued).as_secs_f64());
    }
    metrics::histogram!(METRIC_BATCH_SIZE, "kind" => kind).record(requests.len() as f64);
    span
}

fn timed<T>(kind: &'static str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    metrics::histogram!(METRIC_SECONDS, "kind" => kind).record(start.elapsed().as_secs_f64());
    out
}

fn send<T>(reply: Reply<T>, value: Result<T, InferenceError>) {
    // The caller may have gone while we computed; nothing to do then.
    let _ = reply.send(value);
}

/// Requests whose tensor shapes differ from the first one's get a `Shape` error of their own
/// instead of spoiling the batch (only possible when the backend does not declare its dims).
fn split_by_shape<J, K: PartialEq + std::fmt::Debug>(
    requests: Vec<Request<J>>,
    key: impl Fn(&J) -> K,
    reject: impl Fn(J, String),
) -> Vec<Request<J>> {
    let Some(first) = requests.first().map(|r| key(&r.job)) else {
        return requests;
    };
    let mut ok = Vec::with_capacity(requests.len());
    for r in requests {
        let k = key(&r.job);
        if k == first {
            ok.push(r);
        } else {
            reject(
                r.job,
                format!("tensor shapes {k:?} differ from the batch's {first:?}"),
            );
        }
    }
    ok
}

fn run_shop<B: Backend>(backend: &mut B, requests: Vec<Request<ShopJob>>) {
    const KIND: &str = "shop";
    let requests = live(requests, KIND);
    let requests = split_by_shape(
        requests,
        |j| (j.image.dim(), j.tags.len()),
        |j, m| send(j.reply, Err(InferenceError::Shape(m))),
    );
    if requests.is_empty() {
        return;
    }
    let span = batch_span(&requests, KIND);
    let _entered = span.enter();
    let n = requests.len();
    let (c, h, w) = requests[0].job.image.dim();
    let t = requests[0].job.tags.len();
    let mut images = Array4::<f32>::zeros((n, c, h, w));
    let mut tags = Array2::<f32>::zeros((n, t));
    for (i, r) in requests.iter().enumerate() {
        images.index_axis_mut(Axis(0), i).assign(&r.job.image);
        tags.row_mut(i)
            .assign(&ndarray::ArrayView1::from(&r.job.tags[..]));
    }
    let result = timed(KIND, || backend.embed_shop(images.view(), tags.view()));
    match result.and_then(|e| rows_ok(e, n, KIND)) {
        Ok(embeddings) => {
            for (r, row) in requests.into_iter().zip(embeddings.rows()) {
                send(r.job.reply, Ok(row.to_vec()));
            }
        }
        Err(e) => fail(requests, &e, |j| j.reply),
    }
}

fn run_user<B: Backend>(backend: &mut B, requests: Vec<Request<UserJob>>) {
    const KIND: &str = "user";
    let requests = live(requests, KIND);
    let requests = split_by_shape(
        requests,
        |j| j.image.dim(),
        |j, m| send(j.reply, Err(InferenceError::Shape(m))),
    );
    if requests.is_empty() {
        return;
    }
    let span = batch_span(&requests, KIND);
    let _entered = span.enter();
    let n = requests.len();
    let (c, h, w) = requests[0].job.image.dim();
    let mut images = Array4::<f32>::zeros((n, c, h, w));
    for (i, r) in requests.iter().enumerate() {
        images.index_axis_mut(Axis(0), i).assign(&r.job.image);
    }
    let result = timed(KIND, || backend.embed_user(images.view())).and_then(|(f, e)| {
        if f.shape()[0] != n {
            return Err(InferenceError::Shape(format!(
                "backend returned {} feature maps for {n} images",
                f.shape()[0]
            )));
        }
        Ok((f, rows_ok(e, n, KIND)?))
    });
    match result {
        Ok((features, embeddings)) => {
            for (i, r) in requests.into_iter().enumerate() {
                let out = UserOutput {
                    features: features.index_axis(Axis(0), i).to_owned(),
                    embedding: embeddings.row(i).to_vec(),
                };
                send(r.job.reply, Ok(out));
            }
        }
        Err(e) => fail(requests, &e, |j| j.reply),
    }
}

fn run_rerank<B: Backend>(backend: &mut B, requests: Vec<Request<RerankJob>>) {
    const KIND: &str = "rerank";
    let requests = live(requests, KIND);
    let requests = split_by_shape(
        requests,
        |j| (j.features.dim(), j.candidates.ncols()),
        |j, m| send(j.reply, Err(InferenceError::Shape(m))),
    );
    if requests.is_empty() {
        return;
    }
    let (l, c) = requests[0].job.features.dim();
    let k_max = requests
        .iter()
        .map(|r| r.job.candidates.nrows())
        .max()
        .unwrap_or(0);
    if k_max == 0 {
        // Nothing to score; the graph is not run on empty tensors.
        for r in requests {
            let out = RerankOutput {
                scores: Vec::new(),
                attention: Array2::zeros((0, l)),
            };
            send(r.job.reply, Ok(out));
        }
        return;
    }
    let span = batch_span(&requests, KIND);
    let _entered = span.enter();
    let b = requests.len();
    let mut features = Array3::<f32>::zeros((b, l, c));
    // Shorter candidate lists are padded with zero rows (allowed by the contract); their
    // outputs are cut off below.
    let mut candidates = Array3::<f32>::zeros((b, k_max, c));
    for (i, r) in requests.iter().enumerate() {
        features.index_axis_mut(Axis(0), i).assign(&*r.job.features);
        let k = r.job.candidates.nrows();
        candidates
            .slice_mut(s![i, ..k, ..])
            .assign(&r.job.candidates);
    }
    let result = timed(KIND, || backend.rerank(features.view(), candidates.view())).and_then(
        |(scores, attention)| {
            if scores.dim() != (b, k_max) || attention.dim() != (b, k_max, l) {
                return Err(InferenceError::Shape(format!(
                    "backend returned scores {:?} and attention {:?} for [{b}, {k_max}] candidates \
                     over {l} locations",
                    scores.shape(),
                    attention.shape()
                )));
            }
            Ok((scores, attention))
        },
    );
    match result {
        Ok((scores, attention)) => {
            for (i, r) in requests.into_iter().enumerate() {
                let k = r.job.candidates.nrows();
                let out = RerankOutput {
                    scores: scores.slice(s![i, ..k]).to_vec(),
                    attention: attention.slice(s![i, ..k, ..]).to_owned(),
                };
                send(r.job.reply, Ok(out));
            }
        }
        Err(e) => fail(requests, &e, |j| j.reply),
    }
}

fn rows_ok(a: Array2<f32>, n: usize, kind: &str) -> Result<Array2<f32>, InferenceError> {
    if a.nrows() == n {
        Ok(a)
    } else {
        Err(InferenceError::Shape(format!(
            "{kind} backend returned {} rows for {n} inputs",
            a.nrows()
        )))
    }
}

fn fail<J, T>(requests: Vec<Request<J>>, e: &InferenceError, reply: impl Fn(J) -> Reply<T>) {
    tracing::error!(error = %e, size = requests.len(), "inference batch failed");
    for r in requests {
        send(reply(r.job), Err(e.replicate()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{ArrayView2, ArrayView3, ArrayView4};
    use std::sync::Mutex;
    use std::time::Duration;

    const C: usize = 4;
    const L: usize = 3;

    /// What the fake saw in one call: the marker (`image[0,0,0]`) of every image, or the
    /// re-rank batch shape.
    #[derive(Debug, Clone, PartialEq)]
    enum Call {
        Shop(Vec<f32>),
        User(Vec<f32>),
        Rerank { b: usize, k: usize },
    }

    /// A deterministic backend. Embedding rows are filled with the image's marker (plus the tag
    /// count for shop images); re-rank scores are the candidate row sums. With a gate, every
    /// call announces itself on `entered` and waits for a `release`.
    struct Fake {
        calls: Arc<Mutex<Vec<Call>>>,
        entered: Option<tokio::sync::mpsc::UnboundedSender<()>>,
        release: Option<std::sync::mpsc::Receiver<()>>,
        panic: bool,
        fail: bool,
    }

    struct Harness {
        calls: Arc<Mutex<Vec<Call>>>,
        entered: tokio::sync::mpsc::UnboundedReceiver<()>,
        release: std::sync::mpsc::Sender<()>,
    }

    impl Harness {
        fn calls(&self) -> Vec<Call> {
            self.calls.lock().unwrap().clone()
        }
    }

    fn gated() -> (Fake, Harness) {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let (etx, erx) = tokio::sync::mpsc::unbounded_channel();
        let (rtx, rrx) = std::sync::mpsc::channel();
        (
            Fake {
                calls: calls.clone(),
                entered: Some(etx),
                release: Some(rrx),
                panic: false,
                fail: false,
            },
            Harness {
                calls,
                entered: erx,
                release: rtx,
            },
        )
    }

    impl Fake {
        fn enter(&mut self, call: Call) {
            self.calls.lock().unwrap().push(call);
            if let Some(tx) = &self.entered {
                let _ = tx.send(());
            }
            if let Some(rx) = &self.release {
                let _ = rx.recv();
            }
            assert!(!self.panic, "fake backend panics on purpose");
        }
    }

    fn markers(images: &ArrayView4<f32>) -> Vec<f32> {
        images.outer_iter().map(|i| i[[0, 0, 0]]).collect()
    }

    impl Backend for Fake {
        fn device(&self) -> ActiveDevice {
            ActiveDevice::Cpu
        }
        fn embed_shop(
            &mut self,
            images: ArrayView4<f32>,
            tags: ArrayView2<f32>,
        ) -> Result<Array2<f32>, InferenceError> {
            let m = markers(&images);
            self.enter(Call::Shop(m.clone()));
            if self.fail {
                return Err(InferenceError::Runtime("boom".into()));
            }
            Ok(Array2::from_shape_fn((m.len(), C), |(i, _)| {
                m[i] + tags.row(i).sum()
            }))
        }
        fn embed_user(
            &mut self,
            images: ArrayView4<f32>,
        ) -> Result<(Array3<f32>, Array2<f32>), InferenceError> {
            let m = markers(&images);
            self.enter(Call::User(m.clone()));
            let n = m.len();
            Ok((
                Array3::from_shape_fn((n, L, C), |(i, l, _)| m[i] * 10.0 + l as f32),
                Array2::from_shape_fn((n, C), |(i, _)| m[i]),
            ))
        }
        fn rerank(
            &mut self,
            features: ArrayView3<f32>,
            candidates: ArrayView3<f32>,
        ) -> Result<(Array2<f32>, Array3<f32>), InferenceError> {
            let (b, k, _) = candidates.dim();
            self.enter(Call::Rerank { b, k });
            let scores =
                Array2::from_shape_fn((b, k), |(i, j)| candidates.slice(s![i, j, ..]).sum());
            let attention = Array3::from_shape_fn((b, k, L), |(i, j, l)| {
                features[[i, l, 0]] + 100.0 * j as f32
            });
            Ok((scores, attention))
        }
    }

    fn image(marker: f32) -> Array3<f32> {
        Array3::from_elem((3, 2, 2), marker)
    }

    /// Waits (bounded) until `n` requests are queued; deterministic in outcome.
    async fn wait_depth(q: &InferenceQueue, n: usize) {
        for _ in 0..5000 {
            if q.queue_depth() == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("queue depth never reached {n} (is {})", q.queue_depth());
    }

    async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(20), f)
            .await
            .expect("timed out: the queue hung")
    }

    type Handle<T> = tokio::task::JoinHandle<Result<T, InferenceError>>;

    fn spawn_shop(q: &InferenceQueue, marker: f32, tags: Vec<f32>) -> Handle<Vec<f32>> {
        let q = q.clone();
        tokio::spawn(async move { q.embed_shop(image(marker), tags).await })
    }

    #[tokio::test]
    async fn concurrent_requests_are_batched() {
        let (fake, mut h) = gated();
        let q = InferenceQueue::start(fake, QueueConfig::default());
        let first = spawn_shop(&q, 1.0, vec![]);
        within(h.entered.recv()).await;
        let rest: Vec<_> = (2..=4)
            .map(|m| spawn_shop(&q, m as f32, vec![1.0, 0.0]))
            .collect();
        wait_depth(&q, 3).await;
        for _ in 0..2 {
            h.release.send(()).unwrap();
        }
        assert_eq!(within(first).await.unwrap().unwrap(), vec![1.0; C]);
        for (m, r) in (2..=4).zip(rest) {
            assert_eq!(within(r).await.unwrap().unwrap(), vec![m as f32 + 1.0; C]);
        }
        assert_eq!(
            h.calls(),
            vec![Call::Shop(vec![1.0]), Call::Shop(vec![2.0, 3.0, 4.0])]
        );
        assert_eq!(q.queue_depth(), 0);
    }

    #[tokio::test]
    async fn batches_respect_max_and_group_by_kind() {
        let (fake, mut h) = gated();
        let cfg = QueueConfig {
            capacity: 64,
            max_batch_images: 2,
            max_batch_queries: 8,
            ..QueueConfig::default()
        };
        let q = InferenceQueue::start(fake, cfg);
        let first = spawn_shop(&q, 0.0, vec![]);
        within(h.entered.recv()).await;
        let shops: Vec<_> = (1..=5).map(|m| spawn_shop(&q, m as f32, vec![])).collect();
        let q2 = q.clone();
        let user = tokio::spawn(async move { q2.embed_user(image(9.0)).await });
        wait_depth(&q, 6).await;
        for _ in 0..5 {
            h.release.send(()).unwrap();
        }
        within(first).await.unwrap().unwrap();
        for s in shops {
            within(s).await.unwrap().unwrap();
        }
        let u = within(user).await.unwrap().unwrap();
        assert_eq!(u.embedding, vec![9.0; C]);
        assert_eq!(u.features.dim(), (L, C));
        assert_eq!(u.features[[2, 0]], 92.0);
        assert_eq!(
            h.calls(),
            vec![
                Call::Shop(vec![0.0]),
                Call::User(vec![9.0]),
                Call::Shop(vec![1.0, 2.0]),
                Call::Shop(vec![3.0, 4.0]),
                Call::Shop(vec![5.0]),
            ]
        );
    }

    #[tokio::test]
    async fn a_queue_delay_holds_the_first_request_until_the_batch_is_full() {
        let (fake, mut h) = gated();
        let cfg = QueueConfig {
            max_batch_images: 2,
            // Far longer than the test takes: only a full batch can end the wait.
            max_queue_delay_us: MAX_QUEUE_DELAY_US,
            ..QueueConfig::default()
        };
        let q = InferenceQueue::start(fake, cfg);
        // Submitted synchronously, so that the wait below starts from the worker's side.
        let (reply, first) = oneshot::channel();
        q.submit(Job::Shop {
            image: image(1.0),
            tags: vec![],
            reply,
        })
        .unwrap();
        // The worker has taken the first request and is waiting for company.
        wait_depth(&q, 0).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(h.calls().is_empty(), "{:?}", h.calls());
        let second = spawn_shop(&q, 2.0, vec![]);
        within(h.entered.recv()).await;
        h.release.send(()).unwrap();
        assert_eq!(within(first).await.unwrap().unwrap(), vec![1.0; C]);
        within(second).await.unwrap().unwrap();
        assert_eq!(h.calls(), vec![Call::Shop(vec![1.0, 2.0])]);
    }

    #[tokio::test]
    async fn a_queue_delay_ends_and_a_lone_request_runs() {
        let (fake, mut h) = gated();
        let cfg = QueueConfig {
            max_queue_delay_us: 5_000,
            ..QueueConfig::default()
        };
        let q = InferenceQueue::start(fake, cfg);
        let only = spawn_shop(&q, 7.0, vec![]);
        within(h.entered.recv()).await;
        h.release.send(()).unwrap();
        assert_eq!(within(only).await.unwrap().unwrap(), vec![7.0; C]);
        assert_eq!(h.calls(), vec![Call::Shop(vec![7.0])]);
    }

    #[tokio::test]
    async fn full_queue_answers_overloaded_at_once() {
        let (fake, mut h) = gated();
        let cfg = QueueConfig {
            capacity: 2,
            ..QueueConfig::default()
        };
        let q = InferenceQueue::start(fake, cfg);
        assert_eq!(q.capacity(), 2);
        let first = spawn_shop(&q, 1.0, vec![]);
        within(h.entered.recv()).await;
        let queued = [spawn_shop(&q, 2.0, vec![]), spawn_shop(&q, 3.0, vec![])];
        wait_depth(&q, 2).await;
        // Not spawned: the refusal happens on the first poll, so this cannot hang.
        let err = within(q.embed_shop(image(4.0), vec![])).await.unwrap_err();
        assert!(matches!(err, InferenceError::Overloaded), "{err:?}");
        for _ in 0..2 {
            h.release.send(()).unwrap();
        }
        within(first).await.unwrap().unwrap();
        for r in queued {
            within(r).await.unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn departed_callers_are_skipped() {
        let (fake, mut h) = gated();
        let q = InferenceQueue::start(fake, QueueConfig::default());
        let first = spawn_shop(&q, 1.0, vec![]);
        within(h.entered.recv()).await;
        let gone = spawn_shop(&q, 2.0, vec![]);
        let kept = spawn_shop(&q, 3.0, vec![]);
        wait_depth(&q, 2).await;
        gone.abort();
        assert!(within(gone).await.unwrap_err().is_cancelled());
        for _ in 0..2 {
            h.release.send(()).unwrap();
        }
        within(first).await.unwrap().unwrap();
        within(kept).await.unwrap().unwrap();
        assert_eq!(
            h.calls(),
            vec![Call::Shop(vec![1.0]), Call::Shop(vec![3.0])]
        );
    }

    #[tokio::test]
    async fn rerank_padding_is_removed() {
        let (fake, mut h) = gated();
        let q = InferenceQueue::start(fake, QueueConfig::default());
        let first = spawn_shop(&q, 0.0, vec![]);
        within(h.entered.recv()).await;
        let spawn_rerank = |marker: f32, k: usize| {
            let q = q.clone();
            let features = Arc::new(Array2::from_shape_fn((L, C), |(l, _)| marker + l as f32));
            // Row j sums to (j + 1) * C * marker.
            let candidates = Array2::from_shape_fn((k, C), |(j, _)| (j + 1) as f32 * marker);
            tokio::spawn(async move { q.rerank(features, candidates).await })
        };
        let short = spawn_rerank(1.0, 2);
        let long = spawn_rerank(2.0, 5);
        let empty = spawn_rerank(3.0, 0);
        wait_depth(&q, 3).await;
        for _ in 0..2 {
            h.release.send(()).unwrap();
        }
        within(first).await.unwrap().unwrap();
        let short = within(short).await.unwrap().unwrap();
        let long = within(long).await.unwrap().unwrap();
        let empty = within(empty).await.unwrap().unwrap();
        assert_eq!(short.scores, vec![4.0, 8.0]);
        assert_eq!(long.scores, vec![8.0, 16.0, 24.0, 32.0, 40.0]);
        assert!(empty.scores.is_empty());
        assert_eq!(empty.attention.dim(), (0, L));
        assert_eq!(short.attention.dim(), (2, L));
        assert_eq!(long.attention.dim(), (5, L));
        // attention[k, l] = features[l, 0] + 100 k: rows are the request's own, in order.
        assert_eq!(short.attention[[1, 2]], 1.0 + 2.0 + 100.0);
        assert_eq!(long.attention[[4, 0]], 2.0 + 400.0);
        assert_eq!(
            h.calls(),
            vec![Call::Shop(vec![0.0]), Call::Rerank { b: 3, k: 5 }]
        );
    }

    #[tokio::test]
    async fn backend_error_reaches_every_request_of_the_batch() {
        let (mut fake, mut h) = gated();
        fake.fail = true;
        let q = InferenceQueue::start(fake, QueueConfig::default());
        let first = spawn_shop(&q, 1.0, vec![]);
        within(h.entered.recv()).await;
        let more = [spawn_shop(&q, 2.0, vec![]), spawn_shop(&q, 3.0, vec![])];
        wait_depth(&q, 2).await;
        for _ in 0..2 {
            h.release.send(()).unwrap();
        }
        for r in std::iter::once(first).chain(more) {
            let err = within(r).await.unwrap().unwrap_err();
            assert!(
                matches!(&err, InferenceError::Runtime(m) if m == "boom"),
                "{err:?}"
            );
        }
        // The worker survives a failed batch.
        assert!(q.is_running());
    }

    #[tokio::test]
    async fn worker_panic_gives_worker_gone_not_a_hang() {
        let (mut fake, mut h) = gated();
        fake.panic = true;
        let q = InferenceQueue::start(fake, QueueConfig::default());
        let first = spawn_shop(&q, 1.0, vec![]);
        within(h.entered.recv()).await;
        let queued = spawn_shop(&q, 2.0, vec![]);
        wait_depth(&q, 1).await;
        h.release.send(()).unwrap();
        for r in [first, queued] {
            let err = within(r).await.unwrap().unwrap_err();
            assert!(matches!(err, InferenceError::WorkerGone), "{err:?}");
        }
        for _ in 0..5000 {
            if !q.is_running() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(!q.is_running());
        let err = within(q.embed_user(image(3.0))).await.unwrap_err();
        assert!(matches!(err, InferenceError::WorkerGone), "{err:?}");
    }

    #[tokio::test]
    async fn mismatched_shapes_in_one_batch_are_refused_individually() {
        // The fake declares no dims, so the queue cannot check at submit time.
        let (fake, mut h) = gated();
        let q = InferenceQueue::start(fake, QueueConfig::default());
        let first = spawn_shop(&q, 0.0, vec![]);
        within(h.entered.recv()).await;
        let good = spawn_shop(&q, 1.0, vec![]);
        let q2 = q.clone();
        let bad =
            tokio::spawn(async move { q2.embed_shop(Array3::zeros((3, 5, 5)), vec![]).await });
        wait_depth(&q, 2).await;
        for _ in 0..2 {
            h.release.send(()).unwrap();
        }
        within(first).await.unwrap().unwrap();
        within(good).await.unwrap().unwrap();
        let err = within(bad).await.unwrap().unwrap_err();
        assert!(matches!(err, InferenceError::Shape(_)), "{err:?}");
    }

    #[test]
    fn chunks_split_in_order() {
        let c = chunks((0..7).collect(), 3);
        assert_eq!(c, vec![vec![0, 1, 2], vec![3, 4, 5], vec![6]]);
        assert!(chunks(Vec::<u8>::new(), 3).is_empty());
    }
}

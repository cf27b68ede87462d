//! Server-side import jobs: a catalogue file accepted by `POST /v1/merchants/{m}/imports`,
//! written in the background through the same ingest pipeline as the product routes.
//!
//! The file is parsed by the same reader as `snapshop import` ([`crate::import::input`]: CSV,
//! JSONL, Google Cloud Vision's bulk CSV), and its rows are grouped into products the same way.
//! Each product is brought to what the file says: created when new, its fields patched and its
//! missing images added when it differs, left alone when unchanged (images compared by SHA-256),
//! or deleted and created again in `replace` mode. A bad row or image is recorded with its line
//! and error code, and the rest goes on.
//!
//! A runner claims one job at a time from the store under a lease, saves its progress (the
//! products done, in file order, without a gap) at least every [`SAVE_EVERY`], and renews the
//! lease with each save. A restart, or another replica once the lease runs out, resumes the job
//! from its saved progress; products written after the last save are found unchanged and counted
//! so. Each product's write runs in a task of its own, so stopping or cancelling never abandons a
//! write between its commit and the search view. Images are read only from the configured
//! `import.root` (or named by the hash of an image already stored): this module must never fetch
//! a URL or read a path outside the root.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use snapshop_store::jobs::{JobProgress, JobRecord, JobRowError, JobStatus, Lease, NewJob};
use snapshop_store::{ProductRecord, StoreError};
use tokio::task::JoinHandle;

use crate::auth::now_ms;
use crate::core::{AppState, Core};
use crate::error::{Coded, ErrorCode};
use crate::ids::Merchant;
use crate::import::input::{self, Format, Product};
use crate::ingest::{self, etag_of, IngestError, NewProduct, ProductPatch};

/// Progress is saved (and the lease renewed) at least this often while a job runs.
pub const SAVE_EVERY: Duration = Duration::from_millis(500);

/// How often an idle runner looks for a job without being woken (another replica's job, or one
/// whose lease ran out).
const POLL_EVERY: Duration = Duration::from_secs(2);

/// Rounds of read-compare-write for one product before it counts as contended.
const ROUNDS: usize = 5;

/// A job's options, stored with it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobOptions {
    /// Delete and create again a product that differs, instead of patching it and adding the
    /// images it lacks (which never removes an image).
    pub replace: bool,
}

/// What a job is given: the file and how to read it.
#[derive(Debug)]
pub struct Submission {
    pub merchant: Merchant,
    pub format: Option<Format>,
    pub options: JobOptions,
    pub input: Bytes,
}

/// Why a submission was refused before a job was made.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Coded for SubmitError {
    fn code(&self) -> ErrorCode {
        match self {
            SubmitError::Invalid(_) => ErrorCode::InvalidField,
            SubmitError::Store(e) => e.code(),
        }
    }
}

/// Parses the file (on the blocking pool), refuses it if it cannot be read at all, and stores a
/// queued job with the rows it refused. The job is acknowledged only once stored.
pub async fn submit(core: &AppState, s: Submission) -> Result<JobRecord, SubmitError> {
    if s.input.iter().all(u8::is_ascii_whitespace) {
        return Err(SubmitError::Invalid("the import file is empty".into()));
    }
    let input = s.input.clone();
    let given = s.format;
    let parsed = tokio::task::spawn_blocking(move || {
        let format = match given {
            Some(f) => f,
            None => input::detect_bytes(&input)?,
        };
        let parsed = input::parse(&input, format).map_err(|e| e.to_string())?;
        Ok::<_, String>((format, parsed))
    })
    .await
    .map_err(|e| SubmitError::Invalid(format!("the import file could not be read: {e}")))?;
    let (format, parsed) = parsed.map_err(SubmitError::Invalid)?;
    if parsed.rows.is_empty() && parsed.errors.is_empty() {
        return Err(SubmitError::Invalid(
            "the import file has no rows".to_owned(),
        ));
    }
    let rows = parsed.total as i64;
    let error_count = parsed.errors.len() as i64;
    let errors = parsed
        .errors
        .into_iter()
        .take(core.config().import.max_errors_kept)
        .map(|e| JobRowError {
            row: e.line,
            product_id: e.id,
            code: ErrorCode::InvalidField.as_str().to_owned(),
            message: e.message,
        })
        .collect();
    let products = input::group(parsed.rows).len() as i64;
    let job = NewJob {
        public_id: new_job_id(),
        merchant: s.merchant.to_string(),
        format: format.as_str().to_owned(),
        options: serde_json::to_value(s.options).unwrap_or_default(),
        input: s.input.to_vec(),
        rows,
        products,
        errors,
        error_count,
    };
    let job = core.store().jobs().create_job(job, now_ms()).await?;
    metrics::counter!("snapshop_import_jobs_total", "event" => "submitted").increment(1);
    core.wake_imports();
    tracing::info!(job = %job.public_id, merchant = %job.merchant, rows, products, "import job queued");
    Ok(job)
}

/// `imp_` and 20 random lowercase base-32 characters (100 bits): unguessable, so an id seen in
/// a log grants nothing, and ids never collide across replicas.
fn new_job_id() -> String {
    use rand::Rng;
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut rng = rand::rng();
    let mut id = String::from("imp_");
    for _ in 0..20 {
        id.push(ALPHABET[rng.random_range(0..32)] as char);
    }
    id
}

// ---- the runner --------------------------------------------------------------------------------

/// Runs import jobs until `stop` is set: claims the oldest claimable job, runs it, and waits for
/// a wake-up (or [`POLL_EVERY`]) when there is none.
pub async fn run(core: AppState, stop: Arc<AtomicBool>) {
    let runner = format!("{}-{}", std::process::id(), &new_job_id()[4..12]);
    if core.store().backend() == "sqlite" {
        // One process owns a SQLite store: any lease it finds is its own predecessor's.
        match core.store().jobs().release_leases().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(jobs = n, "resuming import jobs left running"),
            Err(e) => tracing::warn!(error = %e, "cannot release import job leases"),
        }
    }
    let lease = Duration::from_secs(core.config().import.lease_secs);
    while !stop.load(Ordering::Acquire) {
        let now = now_ms();
        let claimed = core
            .store()
            .jobs()
            .claim_job(&runner, now, now + lease.as_millis() as i64)
            .await;
        match claimed {
            Ok(Some((job, input))) => {
                let id = job.public_id.clone();
                if let Err(e) = run_job(&core, &runner, job, input, &stop).await {
                    tracing::warn!(job = %id, error = %e, "import job stopped on a store error; it resumes later");
                    tokio::time::sleep(POLL_EVERY).await;
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot look for import jobs"),
        }
        tokio::select! {
            _ = core.imports_woken() => {}
            _ = tokio::time::sleep(POLL_EVERY) => {}
        }
    }
}

/// What became of one product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Created,
    Updated,
    Unchanged,
    Failed,
}

#[derive(Debug)]
struct ProductOutcome {
    outcome: Outcome,
    /// Images written.
    images: usize,
    errors: Vec<JobRowError>,
}

/// Runs one claimed job to its end (or until stopped, cancelled or taken over).
async fn run_job(
    core: &AppState,
    runner: &str,
    job: JobRecord,
    input: Vec<u8>,
    stop: &AtomicBool,
) -> Result<(), StoreError> {
    let jobs = core.store().jobs();
    let started = Instant::now();
    let lease = core.config().import.lease_secs as i64 * 1000;
    let keep = core.config().import.max_errors_kept;
    let mut progress = job.progress.clone();
    let resumed_at = progress.products_done.max(0) as usize;
    tracing::info!(job = %job.public_id, merchant = %job.merchant, attempt = job.attempts, from = resumed_at, "import job running");
    let job = &job;
    let end = |status, progress: JobProgress, message: Option<String>| async move {
        let lease = jobs
            .finish_job(
                job.id,
                runner,
                status,
                &progress,
                message.as_deref(),
                now_ms(),
            )
            .await?;
        if lease == Lease::Lost {
            tracing::warn!(job = %job.public_id, "import job was taken over before it finished here");
        } else {
            metrics::counter!("snapshop_import_jobs_total", "event" => status.as_str())
                .increment(1);
            tracing::info!(job = %job.public_id, status = status.as_str(), ?progress, elapsed_ms = started.elapsed().as_millis() as u64, "import job ended");
        }
        Ok::<(), StoreError>(())
    };

    let (Some(format), Ok(options), Ok(merchant)) = (
        Format::parse(&job.format),
        serde_json::from_value::<JobOptions>(job.options.clone()),
        Merchant::parse(&job.merchant),
    ) else {
        let msg = "the job's stored format, options or merchant are not valid".to_owned();
        return end(JobStatus::Failed, progress, Some(msg)).await;
    };
    let parsed =
        match tokio::task::spawn_blocking(move || input::parse(&input, format).map(|p| p.rows))
            .await
        {
            Ok(Ok(rows)) => rows,
            Ok(Err(e)) => return end(JobStatus::Failed, progress, Some(e.to_string())).await,
            Err(e) => return end(JobStatus::Failed, progress, Some(e.to_string())).await,
        };
    let products = input::group(parsed);
    let concurrency = core.config().import.concurrency;
    // Resolved once per job: every image path is checked against the real directory.
    let root = match core.config().import.root.clone() {
        None => None,
        Some(r) => match tokio::task::spawn_blocking(move || r.canonicalize()).await {
            Ok(Ok(r)) => Some(Arc::new(r)),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "import.root cannot be read");
                let msg = "the server's import root cannot be read".to_owned();
                return end(JobStatus::Failed, progress, Some(msg)).await;
            }
            Err(e) => return end(JobStatus::Failed, progress, Some(e.to_string())).await,
        },
    };
    let mut queue = products.into_iter().skip(resumed_at);
    // The products being written, in file order: each in a task of its own, so that stopping
    // or cancelling never drops a write half-way; awaited in order, so that `products_done`
    // never skips one.
    let mut in_flight: VecDeque<JoinHandle<ProductOutcome>> = VecDeque::new();
    let mut last_save = Instant::now();
    let mut halt = None;
    loop {
        while halt.is_none() && in_flight.len() < concurrency {
            let Some(p) = queue.next() else { break };
            let (core, merchant, root) = (core.clone(), merchant.clone(), root.clone());
            in_flight.push_back(tokio::spawn(async move {
                import_product(&core, &merchant, p, options, root).await
            }));
        }
        let Some(task) = in_flight.pop_front() else {
            break;
        };
        record(&mut progress, outcome_of(task.await), keep);
        if halt.is_some() {
            continue;
        }
        if stop.load(Ordering::Acquire) {
            halt = Some(Halt::Stopping);
        } else if last_save.elapsed() >= SAVE_EVERY {
            match jobs
                .save_progress(job.id, runner, &progress, now_ms(), now_ms() + lease)
                .await?
            {
                Lease::Lost => {
                    tracing::warn!(job = %job.public_id, "import job taken over by another runner; stopping here");
                    return Ok(());
                }
                Lease::Held { cancel: true } => halt = Some(Halt::Cancelled),
                Lease::Held { cancel: false } => {}
            }
            last_save = Instant::now();
        }
    }
    let rest = queue.next().is_some();
    if halt == Some(Halt::Stopping) && rest {
        // The lease ends now, so that the next runner need not wait for it to run out.
        jobs.save_progress(job.id, runner, &progress, now_ms(), 0)
            .await?;
        tracing::info!(job = %job.public_id, done = progress.products_done, "import job paused for shutdown; it resumes at the next start");
        return Ok(());
    }
    if halt == Some(Halt::Cancelled) && rest {
        return end(JobStatus::Cancelled, progress, Some("cancelled".into())).await;
    }
    // Every product is done: a cancel that came too late changes nothing (it stays visible as
    // `cancel_requested`).
    end(JobStatus::Done, progress, None).await
}

/// Why a job stops before its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Halt {
    Stopping,
    Cancelled,
}

fn outcome_of(done: Result<ProductOutcome, tokio::task::JoinError>) -> ProductOutcome {
    done.unwrap_or_else(|e| ProductOutcome {
        outcome: Outcome::Failed,
        images: 0,
        errors: vec![JobRowError {
            row: 0,
            product_id: None,
            code: ErrorCode::Internal.as_str().into(),
            message: format!("the product's task failed: {e}"),
        }],
    })
}

fn record(progress: &mut JobProgress, out: ProductOutcome, keep: usize) {
    progress.products_done += 1;
    match out.outcome {
        Outcome::Created => progress.created += 1,
        Outcome::Updated => progress.updated += 1,
        Outcome::Unchanged => progress.unchanged += 1,
        Outcome::Failed => progress.failed += 1,
    }
    progress.images += out.images as i64;
    progress.error_count += out.errors.len() as i64;
    let room = keep.saturating_sub(progress.errors.len());
    progress.errors.extend(out.errors.into_iter().take(room));
}

// ---- one product -------------------------------------------------------------------------------

/// An image of the file, read.
#[derive(Debug, Clone)]
struct Loaded {
    line: u64,
    bytes: Bytes,
    sha256: String,
}

fn row_error(line: u64, id: &str, code: ErrorCode, message: impl Into<String>) -> JobRowError {
    JobRowError {
        row: line,
        product_id: Some(id.to_owned()),
        code: code.as_str().to_owned(),
        message: message.into(),
    }
}

/// A write's error as a row error: server errors are logged, and reported without details.
fn ingest_error(line: u64, id: &str, e: &IngestError) -> JobRowError {
    let code = e.code();
    let message = if code.is_server_error() {
        tracing::warn!(product = id, error = %e, "import: a product could not be written");
        "the server could not write this product; see its log".to_owned()
    } else {
        e.to_string()
    };
    row_error(line, id, code, message)
}

/// How long a product waits for the store or the image storage to answer again before its row
/// is recorded as failed (503 codes); retried every [`OUTAGE_RETRY`].
const OUTAGE_WAIT: Duration = Duration::from_secs(60);
const OUTAGE_RETRY: Duration = Duration::from_millis(500);

/// Whether `e` is the store or the image storage being out of reach (worth waiting for).
fn is_unavailable(e: &IngestError) -> bool {
    matches!(
        e.code(),
        ErrorCode::StoreUnavailable | ErrorCode::ImageStorageUnavailable
    )
}

fn is_image_error(e: &IngestError) -> bool {
    matches!(
        e.code(),
        ErrorCode::ImageUndecodable
            | ErrorCode::ImageTooLarge
            | ErrorCode::PayloadTooLarge
            | ErrorCode::UnsupportedMediaType
    )
}

async fn import_product(
    core: &Core,
    merchant: &Merchant,
    p: Product,
    options: JobOptions,
    root: Option<Arc<PathBuf>>,
) -> ProductOutcome {
    let first_line = p.lines.first().copied().unwrap_or(0);
    let mut errors = Vec::new();
    let mut images = Vec::new();
    for (line, reference) in &p.images {
        match load_image(
            core,
            merchant,
            reference,
            root.as_deref().map(|r| r.as_path()),
        )
        .await
        {
            Ok((bytes, sha256)) => images.push(Loaded {
                line: *line,
                bytes,
                sha256,
            }),
            Err((code, message)) => errors.push(row_error(*line, &p.id, code, message)),
        }
    }
    let desired = Desired {
        title: p.title.trim().to_owned(),
        tags: p.tags.clone(),
        attributes: Value::Object(p.attributes.clone()),
    };
    let mut written = 0;
    let mut last_error = None;
    let mut outage: Option<Instant> = None;
    let mut round = 0;
    while round < ROUNDS {
        round += 1;
        let step = match core.store().get_product(merchant.as_str(), &p.id).await {
            Err(StoreError::ProductNotFound { .. }) => {
                create(
                    core,
                    merchant,
                    &p.id,
                    &desired,
                    &images,
                    &mut errors,
                    &mut written,
                )
                .await
            }
            Ok(current) => {
                update(
                    core,
                    merchant,
                    &p.id,
                    &desired,
                    &images,
                    current,
                    options,
                    &mut errors,
                    &mut written,
                )
                .await
            }
            Err(e) => Err(IngestError::Store(e)),
        };
        match step {
            Ok(outcome) => {
                return ProductOutcome {
                    outcome,
                    images: written,
                    errors,
                }
            }
            // Changed or created by someone else meanwhile: read again.
            Err(IngestError::Store(
                e @ (StoreError::VersionConflict { .. } | StoreError::ProductExists { .. }),
            )) => last_error = Some(IngestError::Store(e)),
            // The database or the image storage does not answer: wait for it (a while, and not
            // past a shutdown) rather than record the row as failed.
            Err(e)
                if is_unavailable(&e)
                    && core.is_ready()
                    && outage.get_or_insert_with(Instant::now).elapsed() < OUTAGE_WAIT =>
            {
                round -= 1;
                last_error = Some(e);
                tokio::time::sleep(OUTAGE_RETRY).await;
            }
            Err(e) => {
                last_error = Some(e);
                break;
            }
        }
    }
    let e = last_error.unwrap_or_else(|| IngestError::Invalid("the product kept changing".into()));
    errors.push(ingest_error(first_line, &p.id, &e));
    ProductOutcome {
        outcome: Outcome::Failed,
        images: written,
        errors,
    }
}

/// What the file says a product is.
struct Desired {
    title: String,
    tags: Vec<String>,
    attributes: Value,
}

impl Desired {
    /// The fields that differ from the stored product, as a patch (`None` when none do).
    fn patch(&self, current: &ProductRecord) -> Option<ProductPatch> {
        // A file may leave the title out for a product that has one.
        let title =
            (!self.title.is_empty() && current.title != self.title).then(|| self.title.clone());
        let tags =
            (input::normalise_tags(current.tags.clone()) != self.tags).then(|| self.tags.clone());
        let stored = match &current.attributes {
            Value::Null => Value::Object(Map::new()),
            a => a.clone(),
        };
        let attributes = (stored != self.attributes).then(|| self.attributes.clone());
        (title.is_some() || tags.is_some() || attributes.is_some()).then_some(ProductPatch {
            title,
            tags,
            attributes,
        })
    }
}

impl crate::import::Checksummed for Loaded {
    fn sha256(&self) -> &str {
        &self.sha256
    }
}

async fn create(
    core: &Core,
    merchant: &Merchant,
    id: &str,
    desired: &Desired,
    images: &[Loaded],
    errors: &mut Vec<JobRowError>,
    written: &mut usize,
) -> Result<Outcome, IngestError> {
    if images.is_empty() {
        return Err(IngestError::Invalid(
            "a new product needs at least one image that can be read".into(),
        ));
    }
    let new = NewProduct {
        id: id.to_owned(),
        title: desired.title.clone(),
        tags: desired.tags.clone(),
        attributes: desired.attributes.clone(),
    };
    let per_call = core.config().limits.max_images_per_request.max(1);
    let all: Vec<&Loaded> = images.iter().collect();
    let (first, rest) = all.split_at(all.len().min(per_call));
    match ingest::create_product(core, merchant, new.clone(), bytes_of(first)).await {
        Ok(_) => *written += first.len(),
        Err(e) if is_image_error(&e) && first.len() > 1 => {
            // Find the bad ones: create with the first image that goes in, then add the rest
            // one by one.
            let mut created = false;
            for im in &all {
                let result = if created {
                    ingest::add_images(core, merchant, id, vec![im.bytes.clone()], None)
                        .await
                        .map(|_| ())
                } else {
                    ingest::create_product(core, merchant, new.clone(), vec![im.bytes.clone()])
                        .await
                        .map(|_| ())
                };
                match result {
                    Ok(()) => {
                        created = true;
                        *written += 1;
                    }
                    Err(e) if is_image_error(&e) => errors.push(ingest_error(im.line, id, &e)),
                    Err(e) => return Err(e),
                }
            }
            return if created {
                Ok(Outcome::Created)
            } else {
                Err(IngestError::Invalid(
                    "none of the product's images could be used".into(),
                ))
            };
        }
        Err(e) => return Err(e),
    }
    add_in_batches(core, merchant, id, rest, None, errors, written).await?;
    Ok(Outcome::Created)
}

#[allow(clippy::too_many_arguments)]
async fn update(
    core: &Core,
    merchant: &Merchant,
    id: &str,
    desired: &Desired,
    images: &[Loaded],
    current: ProductRecord,
    options: JobOptions,
    errors: &mut Vec<JobRowError>,
    written: &mut usize,
) -> Result<Outcome, IngestError> {
    let present: Vec<String> = current.images.iter().map(|i| i.sha256.clone()).collect();
    let patch = desired.patch(&current);
    let lacking = crate::import::missing(images, &present);
    if options.replace {
        let extra = present.len() + lacking.len() != images.len();
        if patch.is_none() && lacking.is_empty() && !extra {
            return Ok(Outcome::Unchanged);
        }
        ingest::delete_product(core, merchant, id, Some(etag_of(&current))).await?;
        return create(core, merchant, id, desired, images, errors, written)
            .await
            .map(|o| match o {
                Outcome::Created => Outcome::Updated,
                o => o,
            });
    }
    if patch.is_none() && lacking.is_empty() {
        return Ok(Outcome::Unchanged);
    }
    let mut etag = etag_of(&current);
    if let Some(patch) = patch {
        let out = ingest::update_product(core, merchant, id, patch, Some(etag)).await?;
        etag = etag_of(&out.product);
    }
    add_in_batches(core, merchant, id, &lacking, Some(etag), errors, written).await?;
    Ok(Outcome::Updated)
}

/// Adds images to an existing product, at most a request's worth per call; an image refused
/// for what it is (undecodable, too large) is recorded and the others still go in.
async fn add_in_batches(
    core: &Core,
    merchant: &Merchant,
    id: &str,
    images: &[&Loaded],
    mut etag: Option<crate::ids::ETag>,
    errors: &mut Vec<JobRowError>,
    written: &mut usize,
) -> Result<(), IngestError> {
    let per_call = core.config().limits.max_images_per_request.max(1);
    for chunk in images.chunks(per_call) {
        match ingest::add_images(core, merchant, id, bytes_of(chunk), etag).await {
            Ok(out) => {
                *written += chunk.len();
                etag = Some(etag_of(&out.product));
            }
            Err(e) if is_image_error(&e) => {
                for im in chunk {
                    match ingest::add_images(core, merchant, id, vec![im.bytes.clone()], etag).await
                    {
                        Ok(out) => {
                            *written += 1;
                            etag = Some(etag_of(&out.product));
                        }
                        Err(e) if is_image_error(&e) => errors.push(ingest_error(im.line, id, &e)),
                        Err(e) => return Err(e),
                    }
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn bytes_of(images: &[&Loaded]) -> Vec<Bytes> {
    images.iter().map(|i| i.bytes.clone()).collect()
}

// ---- images ------------------------------------------------------------------------------------

type LoadError = (ErrorCode, String);

/// Reads an image the file names: `sha256:<hex>` of an image the merchant already has, or a
/// path (or `file://` URI) under `root`. Returns the bytes and their SHA-256.
async fn load_image(
    core: &Core,
    merchant: &Merchant,
    reference: &str,
    root: Option<&Path>,
) -> Result<(Bytes, String), LoadError> {
    let max = core.config().limits.max_image_bytes;
    let bytes = match parse_reference(reference)? {
        Reference::Stored(sha) => {
            let path = core
                .store()
                .jobs()
                .merchant_image_path(merchant.as_str(), &sha)
                .await
                .map_err(|e| (e.code(), "the store could not be read".to_owned()))?
                .ok_or_else(|| {
                    (
                        ErrorCode::InvalidField,
                        format!("no stored image of this merchant has SHA-256 {sha}"),
                    )
                })?;
            core.files().read(&path).await.map(Vec::from).map_err(|e| {
                tracing::warn!(path, error = %e, "import: a stored image cannot be read");
                (e.code(), "the stored image could not be read".to_owned())
            })?
        }
        Reference::Path(p) => {
            let Some(root) = root else {
                return Err((
                    ErrorCode::InvalidField,
                    "this server reads no image paths (import.root is not set): name images \
                     already uploaded as sha256:<hex>, or use `snapshop import`, which uploads \
                     them"
                        .into(),
                ));
            };
            let root = root.to_owned();
            tokio::task::spawn_blocking(move || read_under(&root, &p, max))
                .await
                .map_err(|e| (ErrorCode::Internal, e.to_string()))??
        }
    };
    if bytes.len() > max {
        return Err((
            ErrorCode::PayloadTooLarge,
            format!("the image is larger than {max} bytes"),
        ));
    }
    let sha = hex::encode(Sha256::digest(&bytes));
    Ok((Bytes::from(bytes), sha))
}

#[derive(Debug, PartialEq)]
enum Reference {
    Stored(String),
    Path(PathBuf),
}

fn parse_reference(reference: &str) -> Result<Reference, LoadError> {
    let r = reference.trim();
    let invalid = |m: String| (ErrorCode::InvalidField, m);
    if let Some(hex) = r.strip_prefix("sha256:") {
        let hex = hex.to_ascii_lowercase();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid(format!(
                "`{r}`: sha256: must be followed by 64 hex digits"
            )));
        }
        return Ok(Reference::Stored(hex));
    }
    if let Some((scheme, _)) = r.split_once("://") {
        if !scheme.eq_ignore_ascii_case("file") {
            return Err(invalid(format!(
                "`{r}`: the server does not fetch {scheme}:// URLs; upload those images with \
                 `snapshop import`, or name images under import.root"
            )));
        }
        let url = reqwest::Url::parse(r).map_err(|e| invalid(format!("`{r}`: {e}")))?;
        let path = url
            .to_file_path()
            .map_err(|_| invalid(format!("`{r}` is not a local file URI")))?;
        return Ok(Reference::Path(path));
    }
    if r.is_empty() {
        return Err(invalid("an empty image reference".into()));
    }
    Ok(Reference::Path(PathBuf::from(r)))
}

/// Reads `path` (relative to `root`, or absolute) if, once every link is resolved, it lies under
/// `root`, which is already canonical (resolved once per job).
fn read_under(root: &Path, path: &Path, max: usize) -> Result<Vec<u8>, LoadError> {
    let shown = path.display().to_string();
    let not_found = || {
        (
            ErrorCode::InvalidField,
            format!("`{shown}`: no such file under the import root"),
        )
    };
    let full = root.join(path).canonicalize().map_err(|_| not_found())?;
    if !full.starts_with(root) {
        // Said the same way as a missing file: nothing about the server's files leaks.
        return Err(not_found());
    }
    let meta = std::fs::metadata(&full).map_err(|_| not_found())?;
    if !meta.is_file() {
        return Err(not_found());
    }
    if meta.len() > max as u64 {
        return Err((
            ErrorCode::PayloadTooLarge,
            format!("`{shown}` is larger than {max} bytes"),
        ));
    }
    std::fs::read(&full).map_err(|_| not_found())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let sha = "A".repeat(64);
        assert_eq!(
            parse_reference(&format!("sha256:{sha}")).unwrap(),
            Reference::Stored("a".repeat(64))
        );
        assert!(parse_reference("sha256:abc").is_err());
        assert_eq!(
            parse_reference(" photos/a.jpg ").unwrap(),
            Reference::Path("photos/a.jpg".into())
        );
        assert_eq!(
            parse_reference("file:///srv/a.jpg").unwrap(),
            Reference::Path("/srv/a.jpg".into())
        );
        for refused in ["https://cdn.example/a.jpg", "gs://bucket/a.jpg", ""] {
            let (code, _) = parse_reference(refused).unwrap_err();
            assert_eq!(code, ErrorCode::InvalidField, "{refused}");
        }
    }

    #[test]
    fn paths_stay_under_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        let root = root.canonicalize().unwrap();
        std::fs::write(root.join("sub/a.jpg"), b"inside").unwrap();
        std::fs::write(dir.path().join("secret.jpg"), b"outside").unwrap();
        assert_eq!(
            read_under(&root, Path::new("sub/a.jpg"), 100).unwrap(),
            b"inside"
        );
        let abs = root.join("sub/a.jpg");
        assert_eq!(read_under(&root, &abs, 100).unwrap(), b"inside");
        for escape in [
            PathBuf::from("../secret.jpg"),
            PathBuf::from("sub/../../secret.jpg"),
            dir.path().join("secret.jpg"),
            PathBuf::from("sub"),
            PathBuf::from("missing.jpg"),
        ] {
            let (code, msg) = read_under(&root, &escape, 100).unwrap_err();
            assert_eq!(code, ErrorCode::InvalidField, "{}", escape.display());
            assert!(msg.contains("no such file"), "{msg}");
        }
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(dir.path().join("secret.jpg"), root.join("link.jpg"))
                .unwrap();
            assert!(read_under(&root, Path::new("link.jpg"), 100).is_err());
        }
        let (code, _) = read_under(&root, Path::new("sub/a.jpg"), 3).unwrap_err();
        assert_eq!(code, ErrorCode::PayloadTooLarge);
    }

    #[test]
    fn progress_keeps_the_first_errors_and_counts_all() {
        let mut p = JobProgress::default();
        let e = |row| JobRowError {
            row,
            product_id: None,
            code: "invalid_field".into(),
            message: String::new(),
        };
        for row in 0..3 {
            record(
                &mut p,
                ProductOutcome {
                    outcome: Outcome::Failed,
                    images: 0,
                    errors: vec![e(row), e(row)],
                },
                4,
            );
        }
        record(
            &mut p,
            ProductOutcome {
                outcome: Outcome::Created,
                images: 2,
                errors: vec![],
            },
            4,
        );
        assert_eq!(
            (p.products_done, p.failed, p.created, p.images),
            (4, 3, 1, 2)
        );
        assert_eq!(p.error_count, 6);
        assert_eq!(p.errors.len(), 4);
        assert_eq!(p.errors[3].row, 1);
    }

    #[test]
    fn job_ids_are_unguessable_and_well_formed() {
        let a = new_job_id();
        assert!(a.starts_with("imp_") && a.len() == 24, "{a}");
        assert!(a[4..]
            .bytes()
            .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b)));
        assert_ne!(a, new_job_id());
    }
}

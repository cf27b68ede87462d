//! `snapshop import FILE`: loads a merchant's catalogue (CSV, JSONL or Google Cloud Vision
//! Product Search's bulk-import CSV) into a running server through its public HTTP API.
//!
//! It exists so that a merchant with tens of thousands of products does not have to script the
//! API: rows are read ([`input`]), grouped into products, and each product is brought to what
//! the file says, `concurrency` products at a time, through [`client`] (retries, backoff). A
//! rerun is idempotent: a product already on the server with the same title, tags, attributes
//! and image checksums is skipped; one that differs is updated (images are only ever added,
//! unless `replace`). A bad row never stops the import: it goes to the error report.
//!
//! It must never touch the store or the data directory (only the API), never print or log the
//! API key, and never remove an image the file does not name unless asked to (`replace`).

pub mod client;
pub mod input;

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::Url;
use serde_json::{json, Map, Value};

use self::client::{CallError, Client, Remote, RetryPolicy, Upload};
use self::input::{Format, InputError, Product};

/// Images per request (the server's default `limits.max_images_per_request` is 32).
const BATCH_IMAGES: usize = 16;
/// Image bytes per request (the server's default `limits.max_body_bytes` is 32 MiB).
const BATCH_BYTES: usize = 16 * 1024 * 1024;
/// Rounds of read-compare-write for one product before giving up (a round restarts when the
/// product changed under the import: 409 `product_exists`, 412 `version_conflict`).
const ROUNDS: usize = 4;
/// How often the plain progress line is printed when stderr is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// How progress is shown on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Bars on a terminal; otherwise a plain line every few seconds.
    Auto,
    /// The plain line every few seconds, even on a terminal.
    Plain,
    /// Nothing.
    Off,
}

/// What to import, where to.
#[derive(Clone)]
pub struct ImportOptions {
    pub file: PathBuf,
    /// `None`: by extension and first line ([`input::detect`]).
    pub format: Option<Format>,
    /// The server, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    pub merchant: String,
    /// A merchant key of `merchant`, or an admin key. Never printed.
    pub key: String,
    /// Products in flight at once.
    pub concurrency: usize,
    /// Attempts per HTTP call (429, 503 and connection errors are retried).
    pub max_attempts: u32,
    /// The first backoff; doubled for every retry.
    pub base_delay: Duration,
    /// A product that differs is deleted and created again (instead of changed in place).
    pub replace: bool,
    /// The error report; `None`: `<file>.errors.csv`.
    pub errors_file: Option<PathBuf>,
    pub progress: Progress,
}

impl std::fmt::Debug for ImportOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportOptions")
            .field("file", &self.file)
            .field("format", &self.format)
            .field("url", &self.url)
            .field("merchant", &self.merchant)
            .field("key", &"<redacted>")
            .field("concurrency", &self.concurrency)
            .field("max_attempts", &self.max_attempts)
            .field("replace", &self.replace)
            .field("errors_file", &self.errors_file)
            .field("progress", &self.progress)
            .finish()
    }
}

impl ImportOptions {
    /// The defaults: detected format, concurrency 4, 6 attempts, bars when on a terminal.
    pub fn new(file: impl Into<PathBuf>, url: &str, merchant: &str, key: &str) -> Self {
        Self {
            file: file.into(),
            format: None,
            url: url.to_owned(),
            merchant: merchant.to_owned(),
            key: key.to_owned(),
            concurrency: 4,
            max_attempts: RetryPolicy::default().max_attempts,
            base_delay: RetryPolicy::default().base_delay,
            replace: false,
            errors_file: None,
            progress: Progress::Auto,
        }
    }

    /// Where the error report goes.
    pub fn errors_path(&self) -> PathBuf {
        self.errors_file.clone().unwrap_or_else(|| {
            let mut name = self.file.clone().into_os_string();
            name.push(".errors.csv");
            PathBuf::from(name)
        })
    }
}

/// An import that could not start (exit code 2): bad options, an unreadable or unusable file,
/// a server that cannot be reached or refuses the key.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("{0}")]
    Server(String),
    #[error("cannot write the error report {path}: {source}")]
    Report {
        path: String,
        source: std::io::Error,
    },
}

/// One line of the error report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowFailure {
    /// The row's line in the input file.
    pub row: u64,
    pub product_id: String,
    /// The API's `error.code`, or the importer's own: `bad_row`, `file_not_found`,
    /// `file_unreadable`, `empty_file`, `unsupported_uri`, `network`, `image_fetch_failed`,
    /// `no_title`, `no_images`.
    pub code: String,
    pub message: String,
}

/// What an import did.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Data rows read (good and bad).
    pub rows: usize,
    /// Distinct product ids among the rows that could be read.
    pub products: usize,
    pub created: usize,
    pub updated: usize,
    pub unchanged: usize,
    /// Products that could not be brought to what the file says.
    pub failed: usize,
    /// Images uploaded by this run.
    pub images: usize,
    /// Lines of the error report: failed rows (a row with several bad images has one per image).
    pub errors: usize,
    /// HTTP retries (429, 503, connection errors).
    pub retries: u64,
    pub elapsed: Duration,
    pub errors_file: PathBuf,
    /// The error report's lines, by row.
    pub failures: Vec<RowFailure>,
}

impl Summary {
    /// `import: N rows, P products (C created, U updated, S unchanged), I images, E errors in T s`
    pub fn line(&self) -> String {
        format!(
            "import: {} rows, {} products ({} created, {} updated, {} unchanged), {} images, {} errors in {:.1} s",
            self.rows,
            self.products,
            self.created,
            self.updated,
            self.unchanged,
            self.images,
            self.errors,
            self.elapsed.as_secs_f64()
        )
    }

    /// 0 when every row was imported, 1 when some failed.
    pub fn exit_code(&self) -> u8 {
        if self.errors == 0 && self.failed == 0 {
            0
        } else {
            1
        }
    }
}

/// Runs an import to the end.
pub async fn run(opts: ImportOptions) -> Result<Summary, ImportError> {
    let started = Instant::now();
    if opts.concurrency == 0 {
        return Err(ImportError::Usage(
            "--concurrency must be at least 1".into(),
        ));
    }
    if opts.max_attempts == 0 {
        return Err(ImportError::Usage(
            "--max-attempts must be at least 1".into(),
        ));
    }
    if opts.key.trim().is_empty() {
        return Err(ImportError::Usage(
            "no API key: --key or SNAPSHOP_KEY (a merchant key of the merchant, or an admin key)"
                .into(),
        ));
    }
    crate::ids::Merchant::parse(&opts.merchant)
        .map_err(|e| ImportError::Usage(format!("--merchant {}: {e}", opts.merchant)))?;
    let format = match opts.format {
        Some(f) => f,
        None => input::detect(&opts.file)?,
    };
    let parsed = input::read(&opts.file, format)?;
    let retry = RetryPolicy {
        max_attempts: opts.max_attempts,
        base_delay: opts.base_delay,
        ..RetryPolicy::default()
    };
    let client =
        Client::new(&opts.url, &opts.merchant, &opts.key, retry).map_err(ImportError::Usage)?;
    client.check_merchant().await.map_err(|e| {
        ImportError::Server(format!("{}: merchant `{}`: {e}", opts.url, opts.merchant))
    })?;

    let mut failures: Vec<RowFailure> = parsed
        .errors
        .iter()
        .map(|e| RowFailure {
            row: e.line,
            product_id: e.id.clone().unwrap_or_default(),
            code: "bad_row".into(),
            message: e.message.clone(),
        })
        .collect();
    let products = input::group(parsed.rows);
    let base_dir = opts
        .file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let ctx = Arc::new(Ctx {
        client,
        base_dir,
        replace: opts.replace,
        title_from_id: format == Format::Gcp,
    });

    let total_images: u64 = products.iter().map(|p| p.images.len() as u64).sum();
    let progress = Bars::new(
        opts.progress,
        products.len() as u64,
        total_images,
        failures.len() as u64,
    );
    let ticker = progress.plain_ticker();

    let mut summary = Summary {
        rows: parsed.total,
        products: products.len(),
        created: 0,
        updated: 0,
        unchanged: 0,
        failed: 0,
        images: 0,
        errors: 0,
        retries: 0,
        elapsed: Duration::ZERO,
        errors_file: opts.errors_path(),
        failures: Vec::new(),
    };
    let mut outcomes = futures_util::stream::iter(products.into_iter().map(|p| {
        let ctx = ctx.clone();
        let progress = progress.clone();
        async move { import_product(&ctx, p, &progress).await }
    }))
    .buffer_unordered(opts.concurrency);
    while let Some(o) = outcomes.next().await {
        match o.result {
            Outcome::Created => summary.created += 1,
            Outcome::Updated => summary.updated += 1,
            Outcome::Unchanged => summary.unchanged += 1,
            Outcome::Failed => summary.failed += 1,
        }
        summary.images += o.uploaded;
        progress.product_done(o.failures.len() as u64);
        failures.extend(o.failures);
    }
    if let Some(t) = ticker {
        t.abort();
    }
    progress.finish();

    failures.sort_by(|a, b| a.row.cmp(&b.row).then_with(|| a.code.cmp(&b.code)));
    write_report(&summary.errors_file, &failures)?;
    summary.errors = failures.len();
    summary.failures = failures;
    summary.retries = ctx.client.retries();
    summary.elapsed = started.elapsed();
    Ok(summary)
}

struct Ctx {
    client: Client,
    base_dir: PathBuf,
    replace: bool,
    /// GCP's display name is optional: the product id stands in for it.
    title_from_id: bool,
}

enum Outcome {
    Created,
    Updated,
    Unchanged,
    Failed,
}

struct ProductOutcome {
    result: Outcome,
    uploaded: usize,
    failures: Vec<RowFailure>,
}

/// An image read from its source, with the row that named it.
struct Loaded {
    row: u64,
    sha256: String,
    upload: Upload,
}

async fn import_product(ctx: &Ctx, mut p: Product, progress: &Bars) -> ProductOutcome {
    if p.title.is_empty() && ctx.title_from_id {
        p.title = p.id.clone();
    }
    let p = p;
    let mut failures = Vec::new();
    let fail = |failures: &mut Vec<RowFailure>, row: u64, code: &str, message: String| {
        failures.push(RowFailure {
            row,
            product_id: p.id.clone(),
            code: code.to_owned(),
            message,
        })
    };
    if p.title.is_empty() {
        for &row in &p.lines {
            fail(
                &mut failures,
                row,
                "no_title",
                "no row of this product has a title".into(),
            );
        }
        progress.images_done(p.images.len() as u64);
        return ProductOutcome {
            result: Outcome::Failed,
            uploaded: 0,
            failures,
        };
    }

    let mut images = Vec::with_capacity(p.images.len());
    for (row, reference) in &p.images {
        match load_image(ctx, reference).await {
            Ok(upload) => images.push(Loaded {
                row: *row,
                sha256: crate::images::sha256_hex(&upload.bytes),
                upload,
            }),
            Err(e) => fail(
                &mut failures,
                *row,
                &e.code,
                format!("{reference}: {}", e.message),
            ),
        }
        progress.images_done(1);
    }

    let desired = Desired {
        title: p.title.trim().to_owned(),
        tags: p.tags.clone(),
        attributes: Value::Object(p.attributes.clone()),
    };
    let mut refused = Vec::new();
    let mut uploaded = 0;
    let result = reconcile(ctx, &p, &desired, &images, &mut refused, &mut uploaded).await;
    refused.sort_by_key(|(row, _)| *row);
    refused.dedup();
    failures.extend(refused.into_iter().map(|(row, e)| RowFailure {
        row,
        product_id: p.id.clone(),
        code: e.code,
        message: e.message,
    }));
    match result {
        Ok(result) => ProductOutcome {
            result,
            uploaded,
            failures,
        },
        Err(e) => {
            // The product as a whole failed: every row not reported yet is.
            let reported: Vec<u64> = failures.iter().map(|f| f.row).collect();
            for &row in p.lines.iter().filter(|r| !reported.contains(r)) {
                fail(&mut failures, row, &e.code, e.message.clone());
            }
            ProductOutcome {
                result: Outcome::Failed,
                uploaded,
                failures,
            }
        }
    }
}

/// What the file says a product is.
struct Desired {
    title: String,
    tags: Vec<String>,
    attributes: Value,
}

impl Desired {
    fn fields_json(&self, id: &str) -> Value {
        json!({"id": id, "title": self.title, "tags": self.tags, "attributes": self.attributes})
    }

    /// The fields that differ from the server's, as a PATCH body (empty when none do).
    fn patch(&self, remote: &Value) -> Map<String, Value> {
        let mut patch = Map::new();
        if remote["title"].as_str() != Some(self.title.as_str()) {
            patch.insert("title".into(), json!(self.title));
        }
        let remote_tags: Vec<String> = remote["tags"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        if input::normalise_tags(remote_tags) != self.tags {
            patch.insert("tags".into(), json!(self.tags));
        }
        let remote_attributes = match &remote["attributes"] {
            Value::Null => Value::Object(Map::new()),
            a => a.clone(),
        };
        if remote_attributes != self.attributes {
            patch.insert("attributes".into(), self.attributes.clone());
        }
        patch
    }
}

/// An image known by its content hash.
pub(crate) trait Checksummed {
    fn sha256(&self) -> &str;
}

impl Checksummed for Loaded {
    fn sha256(&self) -> &str {
        &self.sha256
    }
}

/// The images of `wanted` that `present` lacks, as multisets of checksums (a product may hold
/// the same bytes twice). Shared with the server-side import jobs (`crate::jobs`).
pub(crate) fn missing<'a, T: Checksummed>(wanted: &'a [T], present: &[String]) -> Vec<&'a T> {
    let mut have: HashMap<&str, usize> = HashMap::new();
    for s in present {
        *have.entry(s.as_str()).or_default() += 1;
    }
    wanted
        .iter()
        .filter(|im| match have.get_mut(im.sha256()) {
            Some(n) if *n > 0 => {
                *n -= 1;
                false
            }
            _ => true,
        })
        .collect()
}

type ImageFailures = Vec<(u64, CallError)>;

/// Brings the product on the server to `desired` with `images`: read, compare, write, again
/// when the product changed meanwhile. Images the server refused go to `refused`; `uploaded`
/// counts those it took.
async fn reconcile(
    ctx: &Ctx,
    p: &Product,
    desired: &Desired,
    images: &[Loaded],
    refused: &mut ImageFailures,
    uploaded: &mut usize,
) -> Result<Outcome, CallError> {
    let mut last = None;
    for _ in 0..ROUNDS {
        let step = match ctx.client.get(&p.id).await? {
            None => create(ctx, p, desired, images, refused, uploaded)
                .await
                .map(|()| Outcome::Created),
            Some(remote) => update(ctx, p, desired, images, remote, refused, uploaded).await,
        };
        match step {
            Ok(outcome) => return Ok(outcome),
            // Changed (or created) by someone else meanwhile, or an earlier attempt of ours
            // that was committed although its answer was lost: read again.
            Err(e) if e.code == "version_conflict" || e.code == "product_exists" => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| CallError {
        code: "version_conflict".into(),
        message: "the product kept changing".into(),
        status: None,
    }))
}

async fn create(
    ctx: &Ctx,
    p: &Product,
    desired: &Desired,
    images: &[Loaded],
    refused: &mut ImageFailures,
    uploaded: &mut usize,
) -> Result<(), CallError> {
    if images.is_empty() {
        return Err(CallError {
            code: "no_images".into(),
            message: "a new product needs at least one image, and none of its images could be read"
                .into(),
            status: None,
        });
    }
    let all: Vec<&Loaded> = images.iter().collect();
    let fields = desired.fields_json(&p.id);
    let wrote = upload(ctx, &p.id, Some(&fields), None, &all, refused, uploaded).await?;
    if wrote.is_none() {
        // Every image was refused, one by one: those rows carry their images' errors, the
        // product's other rows this one.
        return Err(CallError {
            code: "no_images".into(),
            message: "the server refused every image of this new product".into(),
            status: None,
        });
    }
    Ok(())
}

async fn update(
    ctx: &Ctx,
    p: &Product,
    desired: &Desired,
    images: &[Loaded],
    remote: Remote,
    refused: &mut ImageFailures,
    uploaded: &mut usize,
) -> Result<Outcome, CallError> {
    let patch = desired.patch(&remote.body);
    let present = remote.image_shas();
    let to_add = missing(images, &present);
    if patch.is_empty() && to_add.is_empty() {
        // Images on the server that the file does not name are kept (only `replace` removes
        // them): the product is as the file says.
        let exact = present.len() == images.len();
        if !(ctx.replace && !exact && !images.is_empty()) {
            return Ok(Outcome::Unchanged);
        }
    }
    if ctx.replace && !images.is_empty() {
        ctx.client.delete(&p.id, remote.etag.as_deref()).await?;
        create(ctx, p, desired, images, refused, uploaded).await?;
        return Ok(Outcome::Updated);
    }
    let mut etag = remote.etag;
    if !patch.is_empty() {
        let r = ctx
            .client
            .patch(&p.id, &Value::Object(patch), etag.as_deref())
            .await?;
        etag = r.etag;
    }
    if !to_add.is_empty() {
        upload(ctx, &p.id, None, etag, &to_add, refused, uploaded).await?;
    }
    Ok(Outcome::Updated)
}

/// Uploads `images` in batches: the first batch creates the product when `create` is given,
/// the others are added (conditional on the previous answer's `ETag`). A batch refused for one
/// of its images is sent again image by image, so that the bad one is reported with its row
/// and the others go in (to `refused`). Returns the last `ETag` (`None`: nothing was written).
async fn upload(
    ctx: &Ctx,
    id: &str,
    mut create: Option<&Value>,
    mut etag: Option<String>,
    images: &[&Loaded],
    refused: &mut ImageFailures,
    uploaded: &mut usize,
) -> Result<Option<String>, CallError> {
    let mut wrote = false;
    for batch in batches(images) {
        let uploads: Vec<Upload> = batch.iter().map(|im| im.upload.clone()).collect();
        match send_batch(ctx, id, create, etag.as_deref(), &uploads).await {
            Ok(r) => {
                etag = r.etag;
                create = None;
                wrote = true;
                *uploaded += batch.len();
            }
            Err(e) if e.is_about_an_image() && batch.len() == 1 => refused.push((batch[0].row, e)),
            Err(e) if e.is_about_an_image() => {
                for im in batch {
                    let one = [im.upload.clone()];
                    match send_batch(ctx, id, create, etag.as_deref(), &one).await {
                        Ok(r) => {
                            etag = r.etag;
                            create = None;
                            wrote = true;
                            *uploaded += 1;
                        }
                        Err(e) if e.is_about_an_image() => refused.push((im.row, e)),
                        Err(e) => return Err(e),
                    }
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(wrote.then(|| etag.unwrap_or_default()))
}

async fn send_batch(
    ctx: &Ctx,
    id: &str,
    create: Option<&Value>,
    etag: Option<&str>,
    uploads: &[Upload],
) -> Result<Remote, CallError> {
    match create {
        Some(product) => ctx.client.create(product, uploads).await,
        None => {
            ctx.client
                .add_images(id, uploads, etag.filter(|e| !e.is_empty()))
                .await
        }
    }
}

/// Consecutive batches of at most [`BATCH_IMAGES`] images and [`BATCH_BYTES`] bytes (an image
/// larger than that goes alone).
fn batches<'a, 'b>(images: &'b [&'a Loaded]) -> Vec<&'b [&'a Loaded]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, im) in images.iter().enumerate() {
        let len = im.upload.bytes.len();
        if i > start && (i - start >= BATCH_IMAGES || bytes + len > BATCH_BYTES) {
            out.push(&images[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += len;
    }
    if start < images.len() {
        out.push(&images[start..]);
    }
    out
}

/// Reads an image: a path (relative to the input file's directory), `file://`, `http(s)://`,
/// or `gs://bucket/object` (read as `https://storage.googleapis.com/bucket/object`, so public
/// objects only).
async fn load_image(ctx: &Ctx, reference: &str) -> Result<Upload, CallError> {
    let err = |code: &str, message: String| CallError {
        code: code.to_owned(),
        message,
        status: None,
    };
    let (bytes, name) = if let Some(rest) = reference.strip_prefix("gs://") {
        let url = Url::parse(&format!("https://storage.googleapis.com/{rest}"))
            .map_err(|e| err("bad_row", format!("bad URI: {e}")))?;
        (ctx.client.fetch(&url).await?, last_segment(&url))
    } else if reference.starts_with("http://") || reference.starts_with("https://") {
        let url = Url::parse(reference).map_err(|e| err("bad_row", format!("bad URI: {e}")))?;
        (ctx.client.fetch(&url).await?, last_segment(&url))
    } else {
        let path = if reference.starts_with("file:") {
            Url::parse(reference)
                .ok()
                .and_then(|u| u.to_file_path().ok())
                .ok_or_else(|| err("bad_row", "not a usable file:// URI".into()))?
        } else if reference.contains("://") {
            return Err(err(
                "unsupported_uri",
                "only paths, file://, http(s):// and gs:// URIs are read".into(),
            ));
        } else {
            ctx.base_dir.join(reference)
        };
        let bytes = tokio::fs::read(&path).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                err("file_not_found", format!("no file {}", path.display()))
            }
            _ => err("file_unreadable", format!("{}: {e}", path.display())),
        })?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".into());
        (Bytes::from(bytes), name)
    };
    if bytes.is_empty() {
        return Err(err("empty_file", "the image is empty".into()));
    }
    Ok(Upload {
        mime: sniff(&bytes),
        bytes,
        file_name: name,
    })
}

fn last_segment(url: &Url) -> String {
    url.path_segments()
        .and_then(|mut s| s.next_back().map(str::to_owned))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "image".into())
}

/// The part's content type (the server sniffs the bytes itself; this is a courtesy).
fn sniff(bytes: &[u8]) -> &'static str {
    if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        "image/jpeg"
    } else if bytes.starts_with(b"\x89PNG") {
        "image/png"
    } else if bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        "image/webp"
    } else {
        "application/octet-stream"
    }
}

fn write_report(path: &Path, failures: &[RowFailure]) -> Result<(), ImportError> {
    let io = |source: std::io::Error| ImportError::Report {
        path: path.display().to_string(),
        source,
    };
    let mut w = csv::Writer::from_path(path).map_err(|e| io(e.into()))?;
    w.write_record(["row", "product_id", "code", "message"])
        .map_err(|e| io(e.into()))?;
    for f in failures {
        w.write_record([&f.row.to_string(), &f.product_id, &f.code, &f.message])
            .map_err(|e| io(e.into()))?;
    }
    w.flush().map_err(io)
}

/// The progress display: indicatif bars on a terminal, else a plain line every few seconds.
#[derive(Clone)]
struct Bars {
    products: ProgressBar,
    images: ProgressBar,
    errors: Arc<AtomicU64>,
    plain: bool,
    _multi: Option<MultiProgress>,
    started: Instant,
}

impl Bars {
    fn new(mode: Progress, products: u64, images: u64, errors: u64) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let bars = mode == Progress::Auto && terminal;
        let products_bar =
            ProgressBar::with_draw_target(Some(products), ProgressDrawTarget::hidden());
        let images_bar = ProgressBar::with_draw_target(Some(images), ProgressDrawTarget::hidden());
        let multi = bars.then(|| {
            let m = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let style = |t: &str| {
                ProgressStyle::with_template(t)
                    .expect("a valid template")
                    .with_key(
                        "rate",
                        |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                            let _ = write!(w, "{:.1}/s", s.per_sec());
                        },
                    )
                    .progress_chars("=> ")
            };
            products_bar.set_style(style(
                "products [{bar:32}] {pos}/{len} {rate:>8} ETA {eta:>4} {msg}",
            ));
            images_bar.set_style(style("images   [{bar:32}] {pos}/{len} {rate:>8}"));
            let products_bar = m.add(products_bar.clone());
            m.add(images_bar.clone());
            products_bar.set_message(format!("{errors} errors"));
            m
        });
        let b = Self {
            products: products_bar,
            images: images_bar,
            errors: Arc::new(AtomicU64::new(errors)),
            plain: match mode {
                Progress::Auto => !terminal,
                Progress::Plain => true,
                Progress::Off => false,
            },
            _multi: multi,
            started: Instant::now(),
        };
        b.products.reset_elapsed();
        b
    }

    fn images_done(&self, n: u64) {
        self.images.inc(n);
    }

    fn product_done(&self, new_errors: u64) {
        let errors = self.errors.fetch_add(new_errors, Ordering::Relaxed) + new_errors;
        self.products.set_message(format!("{errors} errors"));
        self.products.inc(1);
    }

    fn plain_line(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let done = self.products.position();
        let rate = done as f64 / secs;
        let left = self.products.length().unwrap_or(0).saturating_sub(done);
        let eta = if rate > 0.0 {
            format!("{:.0} s", left as f64 / rate)
        } else {
            "?".into()
        };
        format!(
            "import: {done}/{} products, {}/{} images, {} errors, {rate:.1} products/s, ETA {eta}",
            self.products.length().unwrap_or(0),
            self.images.position(),
            self.images.length().unwrap_or(0),
            self.errors.load(Ordering::Relaxed),
        )
    }

    /// The task printing the plain line, when that is the display.
    fn plain_ticker(&self) -> Option<tokio::task::JoinHandle<()>> {
        if !self.plain {
            return None;
        }
        let me = self.clone();
        Some(tokio::spawn(async move {
            let mut every = tokio::time::interval(PLAIN_EVERY);
            every.tick().await;
            loop {
                every.tick().await;
                eprintln!("{}", me.plain_line());
            }
        }))
    }

    fn finish(&self) {
        self.products.finish();
        self.images.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loaded(sha: &str, len: usize) -> Loaded {
        Loaded {
            row: 1,
            sha256: sha.into(),
            upload: Upload {
                bytes: Bytes::from(vec![0u8; len]),
                file_name: "x".into(),
                mime: "image/jpeg",
            },
        }
    }

    #[test]
    fn missing_is_a_multiset_difference() {
        let wanted = [loaded("a", 1), loaded("a", 1), loaded("b", 1)];
        let present = vec!["a".to_owned(), "c".to_owned()];
        let m: Vec<&str> = missing(&wanted, &present)
            .iter()
            .map(|l| l.sha256.as_str())
            .collect();
        assert_eq!(m, vec!["a", "b"]);
        assert!(missing(&wanted, &["b".into(), "a".into(), "a".into()]).is_empty());
    }

    #[test]
    fn batches_by_count_and_bytes() {
        let many: Vec<Loaded> = (0..40).map(|_| loaded("a", 10)).collect();
        let refs: Vec<&Loaded> = many.iter().collect();
        let sizes: Vec<usize> = batches(&refs).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, vec![16, 16, 8]);
        let big: Vec<Loaded> = (0..3).map(|_| loaded("a", BATCH_BYTES - 1)).collect();
        let refs: Vec<&Loaded> = big.iter().collect();
        let sizes: Vec<usize> = batches(&refs).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, vec![1, 1, 1]);
        assert!(batches(&[]).is_empty());
    }

    #[test]
    fn patch_holds_only_what_differs() {
        let d = Desired {
            title: "T".into(),
            tags: vec!["a:b".into(), "c:d".into()],
            attributes: json!({"price": 1}),
        };
        let same = json!({"title": "T", "tags": ["c:d", "a:b"], "attributes": {"price": 1}});
        assert!(d.patch(&same).is_empty());
        let other = json!({"title": "U", "tags": ["a:b"], "attributes": {}});
        let p = d.patch(&other);
        assert_eq!(
            Value::Object(p),
            json!({"title": "T", "tags": ["a:b", "c:d"], "attributes": {"price": 1}})
        );
        let none = Desired {
            title: "T".into(),
            tags: vec![],
            attributes: json!({}),
        };
        assert!(none
            .patch(&json!({"title": "T", "tags": [], "attributes": null}))
            .is_empty());
    }

    #[test]
    fn sniffing_and_report_path() {
        assert_eq!(sniff(&[0xff, 0xd8, 0xff, 0xe0]), "image/jpeg");
        assert_eq!(sniff(b"\x89PNG\r\n"), "image/png");
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), "image/webp");
        assert_eq!(sniff(b"GIF89a"), "application/octet-stream");
        let o = ImportOptions::new("/data/products.csv", "http://x", "acme", "sk_secret");
        assert_eq!(
            o.errors_path(),
            PathBuf::from("/data/products.csv.errors.csv")
        );
        assert!(!format!("{o:?}").contains("sk_secret"));
    }
}

//! Server-side import jobs behind [`JobStore`]: the accepted input, the job's state, its
//! progress and its row errors.
//!
//! A job lives in the same database as the catalogue so that acknowledging it (storing its input)
//! is one transaction, and so that any replica can take over a job whose runner died: a runner
//! holds a job by a lease that each progress save renews, and a job whose lease ran out is claimed
//! again and resumes from its saved progress. Both backends run the same SQL, written once here
//! and implemented by one macro per backend (as [`crate::access`] does). This module must never
//! interpret the input: parsing and writing the products is the service's job.

use serde::{Deserialize, Serialize};

use crate::{Result, StoreError};

/// A job's state. `queued` and `running` are unfinished; the others are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Done => "done",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<JobStatus> {
        Some(match s {
            "queued" => JobStatus::Queued,
            "running" => JobStatus::Running,
            "done" => JobStatus::Done,
            "failed" => JobStatus::Failed,
            "cancelled" => JobStatus::Cancelled,
            _ => return None,
        })
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobStatus::Done | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

/// One row of the input that could not be imported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRowError {
    /// The line of the input (1-based; for a product, the line of its first row).
    pub row: u64,
    pub product_id: Option<String>,
    pub code: String,
    pub message: String,
}

/// A job to store.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// The public, unguessable id (`imp_…`).
    pub public_id: String,
    pub merchant: String,
    pub format: String,
    pub options: serde_json::Value,
    pub input: Vec<u8>,
    /// Input rows, and the products they make.
    pub rows: i64,
    pub products: i64,
    /// Rows refused while parsing, before the job runs.
    pub errors: Vec<JobRowError>,
    pub error_count: i64,
}

/// Counters a runner saves as it goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobProgress {
    /// Products completed (in file order, without a gap): where a resumed job starts.
    pub products_done: i64,
    pub created: i64,
    pub updated: i64,
    pub unchanged: i64,
    pub failed: i64,
    pub images: i64,
    pub error_count: i64,
    /// The first row errors (the store keeps what it is given).
    pub errors: Vec<JobRowError>,
}

/// A stored job, without its input.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub id: i64,
    pub public_id: String,
    pub merchant: String,
    pub status: JobStatus,
    pub format: String,
    pub options: serde_json::Value,
    pub rows: i64,
    pub products: i64,
    pub progress: JobProgress,
    pub cancel_requested: bool,
    /// Why a job failed, or how it ended.
    pub message: Option<String>,
    /// How many times a runner took it (more than 1 after a resume).
    pub attempts: i64,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub updated_at: i64,
}

/// What a running job learns when it saves its progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// Still ours; `cancel` when someone asked to cancel it.
    Held { cancel: bool },
    /// Taken over by another runner (ours ran out), or finished: stop without writing.
    Lost,
}

/// Import jobs. Object-safe; every backend that implements [`crate::CatalogStore`] implements it
/// too ([`crate::CatalogStore::jobs`]).
#[async_trait::async_trait]
pub trait JobStore: Send + Sync + 'static {
    /// Stores a queued job with its input.
    async fn create_job(&self, job: NewJob, now_ms: i64) -> Result<JobRecord>;

    /// A merchant's job. [`StoreError::JobNotFound`] if the merchant has none with that id.
    async fn get_job(&self, merchant: &str, public_id: &str) -> Result<JobRecord>;

    /// A merchant's jobs, newest first.
    async fn list_jobs(&self, merchant: &str, limit: usize) -> Result<Vec<JobRecord>>;

    /// Asks for a job to stop. A queued job is cancelled at once; a running one when its runner
    /// next saves; a finished one is left as it is. Returns the job as it now stands.
    async fn cancel_job(&self, merchant: &str, public_id: &str, now_ms: i64) -> Result<JobRecord>;

    /// Takes the oldest job that is queued, or running under a lease that ran out, for `runner`
    /// until `lease_until`, and returns it with its input. `None` when there is none.
    async fn claim_job(
        &self,
        runner: &str,
        now_ms: i64,
        lease_until: i64,
    ) -> Result<Option<(JobRecord, Vec<u8>)>>;

    /// Saves a running job's progress and renews its lease, if `runner` still holds it.
    async fn save_progress(
        &self,
        id: i64,
        runner: &str,
        progress: &JobProgress,
        now_ms: i64,
        lease_until: i64,
    ) -> Result<Lease>;

    /// Ends a job that `runner` holds with a final status, its last progress and a message; its
    /// input is dropped. [`Lease::Lost`] (and nothing written) if it no longer holds it.
    async fn finish_job(
        &self,
        id: i64,
        runner: &str,
        status: JobStatus,
        progress: &JobProgress,
        message: Option<&str>,
        now_ms: i64,
    ) -> Result<Lease>;

    /// Ends every lease (the runners of a single-process store are gone when it opens), so that
    /// running jobs resume at once instead of when their leases run out. Returns how many.
    async fn release_leases(&self) -> Result<u64>;

    /// The stored path of an image of `merchant` with this content hash, if it has one: how an
    /// import names an image already uploaded.
    async fn merchant_image_path(&self, merchant: &str, sha256: &str) -> Result<Option<String>>;
}

// ---- rows --------------------------------------------------------------------------------------

/// The columns [`JobRow`] reads, in order.
pub(crate) const JOB_COLUMNS: &str = "id, public_id, merchant, status, format, options, \
     row_count, product_count, products_done, created_count, updated_count, unchanged_count, \
     failed_count, image_count, error_count, errors, cancel_requested, message, attempts, \
     created_at, started_at, finished_at, updated_at";

#[derive(sqlx::FromRow)]
pub(crate) struct JobRow {
    id: i64,
    public_id: String,
    merchant: String,
    status: String,
    format: String,
    options: String,
    row_count: i64,
    product_count: i64,
    products_done: i64,
    created_count: i64,
    updated_count: i64,
    unchanged_count: i64,
    failed_count: i64,
    image_count: i64,
    error_count: i64,
    errors: String,
    cancel_requested: bool,
    message: Option<String>,
    attempts: i64,
    created_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    updated_at: i64,
}

impl JobRow {
    pub(crate) fn into_record(self) -> Result<JobRecord> {
        let corrupt = |what: &str, e: &dyn std::fmt::Display| {
            StoreError::Corrupt(format!("import job {}: {what}: {e}", self.id))
        };
        let status = JobStatus::parse(&self.status)
            .ok_or_else(|| corrupt("status", &self.status.as_str()))?;
        let options = serde_json::from_str(&self.options).map_err(|e| corrupt("options", &e))?;
        let errors = serde_json::from_str(&self.errors).map_err(|e| corrupt("errors", &e))?;
        Ok(JobRecord {
            id: self.id,
            public_id: self.public_id,
            merchant: self.merchant,
            status,
            format: self.format,
            options,
            rows: self.row_count,
            products: self.product_count,
            progress: JobProgress {
                products_done: self.products_done,
                created: self.created_count,
                updated: self.updated_count,
                unchanged: self.unchanged_count,
                failed: self.failed_count,
                images: self.image_count,
                error_count: self.error_count,
                errors,
            },
            cancel_requested: self.cancel_requested,
            message: self.message,
            attempts: self.attempts,
            created_at: self.created_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
            updated_at: self.updated_at,
        })
    }
}

/// `errors` as its JSON column.
pub(crate) fn errors_json(errors: &[JobRowError]) -> String {
    serde_json::to_string(errors).unwrap_or_else(|_| "[]".to_owned())
}

/// Sets the progress columns from `$3`-`$10`; `$1` id, `$2` runner. Shared by save and finish.
pub(crate) const SET_PROGRESS: &str = "products_done = $3, created_count = $4, \
     updated_count = $5, unchanged_count = $6, failed_count = $7, image_count = $8, \
     error_count = $9, errors = $10";

/// Binds `$1` (id), `$2` (runner) and the progress columns `$3`-`$10` of [`SET_PROGRESS`].
macro_rules! bind_progress {
    ($query:expr, $id:expr, $runner:expr, $p:expr) => {
        $query
            .bind($id)
            .bind($runner)
            .bind($p.products_done)
            .bind($p.created)
            .bind($p.updated)
            .bind($p.unchanged)
            .bind($p.failed)
            .bind($p.images)
            .bind($p.error_count)
            .bind($crate::jobs::errors_json(&$p.errors))
    };
}

pub(crate) use bind_progress;

/// Implements [`JobStore`] for a backend struct with a `pool` field of database `$db`.
macro_rules! impl_job_store {
    ($store:ty, $db:ty) => {
        #[async_trait::async_trait]
        impl $crate::jobs::JobStore for $store {
            async fn create_job(
                &self,
                job: $crate::jobs::NewJob,
                now_ms: i64,
            ) -> Result<$crate::jobs::JobRecord> {
                let sql = format!(
                    "INSERT INTO import_jobs (public_id, merchant, status, format, options, \
                     input, row_count, product_count, error_count, errors, created_at, \
                     updated_at) VALUES ($1, $2, 'queued', $3, $4, $5, $6, $7, $8, $9, $10, \
                     $10) RETURNING {}",
                    $crate::jobs::JOB_COLUMNS
                );
                sqlx::query_as::<$db, $crate::jobs::JobRow>(&sql)
                    .bind(&job.public_id)
                    .bind(&job.merchant)
                    .bind(&job.format)
                    .bind(job.options.to_string())
                    .bind(&job.input)
                    .bind(job.rows)
                    .bind(job.products)
                    .bind(job.error_count)
                    .bind($crate::jobs::errors_json(&job.errors))
                    .bind(now_ms)
                    .fetch_one(&self.pool)
                    .await?
                    .into_record()
            }

            async fn get_job(
                &self,
                merchant: &str,
                public_id: &str,
            ) -> Result<$crate::jobs::JobRecord> {
                let sql = format!(
                    "SELECT {} FROM import_jobs WHERE merchant = $1 AND public_id = $2",
                    $crate::jobs::JOB_COLUMNS
                );
                sqlx::query_as::<$db, $crate::jobs::JobRow>(&sql)
                    .bind(merchant)
                    .bind(public_id)
                    .fetch_optional(&self.pool)
                    .await?
                    .ok_or_else(|| StoreError::JobNotFound(public_id.to_owned()))?
                    .into_record()
            }

            async fn list_jobs(
                &self,
                merchant: &str,
                limit: usize,
            ) -> Result<Vec<$crate::jobs::JobRecord>> {
                let sql = format!(
                    "SELECT {} FROM import_jobs WHERE merchant = $1 ORDER BY id DESC LIMIT $2",
                    $crate::jobs::JOB_COLUMNS
                );
                sqlx::query_as::<$db, $crate::jobs::JobRow>(&sql)
                    .bind(merchant)
                    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                    .fetch_all(&self.pool)
                    .await?
                    .into_iter()
                    .map($crate::jobs::JobRow::into_record)
                    .collect()
            }

            async fn cancel_job(
                &self,
                merchant: &str,
                public_id: &str,
                now_ms: i64,
            ) -> Result<$crate::jobs::JobRecord> {
                let sql = format!(
                    "UPDATE import_jobs SET cancel_requested = TRUE, updated_at = $3, \
                     status = CASE WHEN status = 'queued' THEN 'cancelled' ELSE status END, \
                     finished_at = CASE WHEN status = 'queued' THEN $3 ELSE finished_at END, \
                     message = CASE WHEN status = 'queued' THEN 'cancelled' ELSE message END, \
                     input = CASE WHEN status = 'queued' THEN NULL ELSE input END \
                     WHERE merchant = $1 AND public_id = $2 \
                     AND status IN ('queued', 'running') RETURNING {}",
                    $crate::jobs::JOB_COLUMNS
                );
                let row = sqlx::query_as::<$db, $crate::jobs::JobRow>(&sql)
                    .bind(merchant)
                    .bind(public_id)
                    .bind(now_ms)
                    .fetch_optional(&self.pool)
                    .await?;
                match row {
                    Some(row) => row.into_record(),
                    // Finished already (or not this merchant's): as it stands.
                    None => self.get_job(merchant, public_id).await,
                }
            }

            async fn claim_job(
                &self,
                runner: &str,
                now_ms: i64,
                lease_until: i64,
            ) -> Result<Option<($crate::jobs::JobRecord, Vec<u8>)>> {
                // One statement, so two runners never take the same job: the candidate is
                // re-checked by the UPDATE's own WHERE under the row lock.
                let claimable = "(status = 'queued' OR (status = 'running' AND \
                                 (lease_until IS NULL OR lease_until < $2)))";
                let sql = format!(
                    "UPDATE import_jobs SET status = 'running', runner = $1, lease_until = $3, \
                     attempts = attempts + 1, started_at = COALESCE(started_at, $2), \
                     updated_at = $2 \
                     WHERE id = (SELECT id FROM import_jobs WHERE {claimable} \
                                 ORDER BY id LIMIT 1) AND {claimable} \
                     RETURNING {}, input",
                    $crate::jobs::JOB_COLUMNS
                );
                #[derive(sqlx::FromRow)]
                struct Claimed {
                    #[sqlx(flatten)]
                    job: $crate::jobs::JobRow,
                    input: Option<Vec<u8>>,
                }
                let claimed = sqlx::query_as::<$db, Claimed>(&sql)
                    .bind(runner)
                    .bind(now_ms)
                    .bind(lease_until)
                    .fetch_optional(&self.pool)
                    .await?;
                match claimed {
                    None => Ok(None),
                    Some(c) => {
                        let job = c.job.into_record()?;
                        let input = c.input.ok_or_else(|| {
                            StoreError::Corrupt(format!(
                                "import job {}: unfinished without its input",
                                job.id
                            ))
                        })?;
                        Ok(Some((job, input)))
                    }
                }
            }

            async fn save_progress(
                &self,
                id: i64,
                runner: &str,
                progress: &$crate::jobs::JobProgress,
                now_ms: i64,
                lease_until: i64,
            ) -> Result<$crate::jobs::Lease> {
                let sql = format!(
                    "UPDATE import_jobs SET {}, lease_until = $11, updated_at = $12 \
                     WHERE id = $1 AND runner = $2 AND status = 'running' \
                     RETURNING cancel_requested",
                    $crate::jobs::SET_PROGRESS
                );
                let cancel: Option<bool> =
                    $crate::jobs::bind_progress!(sqlx::query_scalar(&sql), id, runner, progress)
                    .bind(lease_until)
                    .bind(now_ms)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(match cancel {
                    Some(cancel) => $crate::jobs::Lease::Held { cancel },
                    None => $crate::jobs::Lease::Lost,
                })
            }

            async fn finish_job(
                &self,
                id: i64,
                runner: &str,
                status: $crate::jobs::JobStatus,
                progress: &$crate::jobs::JobProgress,
                message: Option<&str>,
                now_ms: i64,
            ) -> Result<$crate::jobs::Lease> {
                let sql = format!(
                    "UPDATE import_jobs SET {}, status = $11, message = $12, finished_at = $13, \
                     updated_at = $13, input = NULL, runner = NULL, lease_until = NULL \
                     WHERE id = $1 AND runner = $2 AND status = 'running' RETURNING id",
                    $crate::jobs::SET_PROGRESS
                );
                let done: Option<i64> =
                    $crate::jobs::bind_progress!(sqlx::query_scalar(&sql), id, runner, progress)
                    .bind(status.as_str())
                    .bind(message)
                    .bind(now_ms)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(match done {
                    Some(_) => $crate::jobs::Lease::Held { cancel: false },
                    None => $crate::jobs::Lease::Lost,
                })
            }

            async fn release_leases(&self) -> Result<u64> {
                let r = sqlx::query(
                    "UPDATE import_jobs SET lease_until = NULL WHERE status = 'running'",
                )
                .execute(&self.pool)
                .await?;
                Ok(r.rows_affected())
            }

            async fn merchant_image_path(
                &self,
                merchant: &str,
                sha256: &str,
            ) -> Result<Option<String>> {
                Ok(sqlx::query_scalar(
                    "SELECT i.path FROM images i JOIN products p ON p.id = i.product_id \
                     JOIN merchants m ON m.id = p.merchant_id \
                     WHERE m.name = $1 AND i.sha256 = $2 LIMIT 1",
                )
                .bind(merchant)
                .bind(sha256)
                .fetch_optional(&self.pool)
                .await?)
            }
        }
    };
}

pub(crate) use impl_job_store;

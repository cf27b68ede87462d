-- Server-side import jobs (POST /v1/merchants/{m}/imports).
--
-- The input file is stored with the job, in the same transaction that acknowledges it, so an
-- accepted job survives any restart; it is dropped once the job has finished. A runner holds a job
-- by a lease (`runner`, `lease_until`) that it renews with every progress save: a job whose
-- runner died is taken over when the lease runs out, and resumes from `products_done`, the number
-- of products (in file order) completed without a gap.
CREATE TABLE import_jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    public_id TEXT NOT NULL UNIQUE,
    merchant TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    format TEXT NOT NULL,
    -- JSON object of the job's options ({"replace": bool}).
    options TEXT NOT NULL DEFAULT '{}',
    input BLOB,
    row_count BIGINT NOT NULL DEFAULT 0,
    product_count BIGINT NOT NULL DEFAULT 0,
    products_done BIGINT NOT NULL DEFAULT 0,
    created_count BIGINT NOT NULL DEFAULT 0,
    updated_count BIGINT NOT NULL DEFAULT 0,
    unchanged_count BIGINT NOT NULL DEFAULT 0,
    failed_count BIGINT NOT NULL DEFAULT 0,
    image_count BIGINT NOT NULL DEFAULT 0,
    error_count BIGINT NOT NULL DEFAULT 0,
    -- JSON array of the first row errors ({"row", "product_id", "code", "message"}).
    errors TEXT NOT NULL DEFAULT '[]',
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
    message TEXT,
    runner TEXT,
    lease_until BIGINT,
    attempts BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT,
    updated_at BIGINT NOT NULL
);

CREATE INDEX import_jobs_by_merchant ON import_jobs (merchant, id);
CREATE INDEX import_jobs_unfinished ON import_jobs (id) WHERE status IN ('queued', 'running');

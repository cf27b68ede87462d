-- The catalogue's change sequence.
--
-- Every write transaction that changes the catalogue (create, image upload, update, image or
-- product delete, purge) inserts one row here and answers with its `seq`. A search view reports
-- the highest `seq` it has applied as its `index_version`, and after a restart starts from the
-- highest row here, so the number never goes back. AUTOINCREMENT: a `seq` is never reused, even
-- after rows are deleted. One small row per write; the scale-out change feed will read (and
-- prune) it. The same table in migrations/postgres, with an identity column.

CREATE TABLE catalog_changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    -- Milliseconds since the Unix epoch.
    at BIGINT NOT NULL
);

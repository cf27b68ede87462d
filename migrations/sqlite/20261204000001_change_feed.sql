-- The change feed (see migrations/postgres/20261204000001_change_feed.sql and
-- crates/snapshop-store/src/feed.rs). SQLite has one writer at a time, so `seq` order is commit
-- order and needs no transaction id: the feed's cursor is the `seq` alone. Old rows (before this
-- migration) have no product: a follower that meets one reloads everything.

ALTER TABLE catalog_changes ADD COLUMN op TEXT NOT NULL DEFAULT 'write';
ALTER TABLE catalog_changes ADD COLUMN merchant TEXT;
ALTER TABLE catalog_changes ADD COLUMN product_id BIGINT;
ALTER TABLE catalog_changes ADD COLUMN image_id BIGINT;
ALTER TABLE catalog_changes ADD COLUMN model_version TEXT;

CREATE TABLE feed_replicas (
    replica TEXT PRIMARY KEY,
    txid BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    model_version TEXT NOT NULL,
    seen_at BIGINT NOT NULL
);

CREATE TABLE feed_compacted (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    txid BIGINT NOT NULL,
    seq BIGINT NOT NULL
);
INSERT INTO feed_compacted (id, txid, seq) VALUES (1, 0, 0);

-- The model every replica should serve (one row, once a replica swapped): a hot swap done by one
-- replica records it here, with a `model` row in the feed, and the others follow (they load the
-- same bundle and find its embeddings already stored).
CREATE TABLE serving_model (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    model_version TEXT NOT NULL,
    bundle TEXT NOT NULL,
    set_at BIGINT NOT NULL
);

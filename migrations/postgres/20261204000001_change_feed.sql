-- The change feed every replica follows (see crates/snapshop-store/src/feed.rs).
--
-- Each row of `catalog_changes` now says what changed: the operation, the merchant, the product
-- (and the image, for an image delete), and the model version of the embeddings it wrote. A
-- follower reads rows in (txid, seq) order, and only those of transactions older than the
-- oldest one still running (`pg_snapshot_xmin(pg_current_snapshot())`): a lower `seq` can commit
-- after a higher one, but no transaction below that horizon can still commit, so a cursor that
-- moves in that order never skips a row. `txid` is the writing transaction's xid8, as a bigint.
-- Old rows (before this migration) have no product: a follower that meets one reloads everything.

ALTER TABLE catalog_changes
    ADD COLUMN txid BIGINT NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    ADD COLUMN op TEXT NOT NULL DEFAULT 'write',
    ADD COLUMN merchant TEXT,
    ADD COLUMN product_id BIGINT,
    ADD COLUMN image_id BIGINT,
    ADD COLUMN model_version TEXT;

CREATE INDEX catalog_changes_feed ON catalog_changes (txid, seq);

-- Every replica's place in the feed, written by its follower every few seconds: changes every
-- live replica has passed are compacted away. A replica seen too long ago is dropped (it loads a
-- full snapshot when it starts again).
CREATE TABLE feed_replicas (
    replica TEXT PRIMARY KEY,
    txid BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    model_version TEXT NOT NULL,
    seen_at BIGINT NOT NULL
);

-- How far the feed has been compacted (one row): a follower behind it has missed changes and
-- must reload its view from the store.
CREATE TABLE feed_compacted (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    txid BIGINT NOT NULL,
    seq BIGINT NOT NULL
);
INSERT INTO feed_compacted (id, txid, seq) VALUES (1, 0, 0);

-- A wake-up for followers: delivered at commit, coalesced per transaction. Only a hint (a
-- listener that is disconnected misses it); followers also poll.
CREATE FUNCTION snapshop_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('snapshop_changes', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER catalog_changes_notify AFTER INSERT ON catalog_changes
    FOR EACH STATEMENT EXECUTE FUNCTION snapshop_notify_change();

-- The model every replica should serve (one row, once a replica swapped): a hot swap done by one
-- replica records it here, with a `model` row in the feed, and the others follow (they load the
-- same bundle and find its embeddings already stored).
CREATE TABLE serving_model (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    model_version TEXT NOT NULL,
    bundle TEXT NOT NULL,
    set_at BIGINT NOT NULL
);

-- The catalogue's change sequence (see migrations/sqlite/20261203000001_change_log.sql).
--
-- Every write transaction that changes the catalogue inserts one row here and answers with its
-- `seq`; a search view reports the highest `seq` it has applied as its `index_version`. An
-- identity column, not a counter row: concurrent writers never wait on each other for it (a
-- sequence value is taken without a lock, and may be left unused by a rolled-back write).

CREATE TABLE catalog_changes (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at BIGINT NOT NULL
);

-- Product versions, for optimistic concurrency.
--
-- Every committed write to a product (add images, update, ...) bumps `version` by exactly one;
-- a write may name the version it expects and then fails, changing nothing, unless the product
-- is still at that version (compare-and-set, checked inside the write's transaction). Creation
-- starts at 1, so existing rows start there too. Portable: SQLite and Postgres both accept this
-- statement as written.

ALTER TABLE products ADD COLUMN version BIGINT NOT NULL DEFAULT 1;

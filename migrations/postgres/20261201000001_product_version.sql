-- Product versions, for optimistic concurrency (as `migrations/sqlite/`, same version number).
--
-- Every committed write to a product (add images, update, ...) bumps `version` by exactly one;
-- a write may name the version it expects and then fails, changing nothing, unless the product
-- is still at that version. The Postgres backend checks it under the product's row lock
-- (`SELECT ... FOR UPDATE`) and bumps with `UPDATE ... WHERE id = $1 AND version = $2`, so the
-- database, not a process lock, enforces it. Creation starts at 1.

ALTER TABLE products ADD COLUMN version BIGINT NOT NULL DEFAULT 1;

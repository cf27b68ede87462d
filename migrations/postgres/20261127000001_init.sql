-- Snapshop catalogue schema, Postgres edition.
--
-- The same tables, constraints and indexes as `migrations/sqlite/`, with the same version
-- numbers, in Postgres SQL: identity columns are `BIGINT GENERATED ALWAYS AS IDENTITY` (never
-- reused, like SQLite's AUTOINCREMENT: embedding ids are the ANN index keys) and vectors are
-- `BYTEA`. Times are milliseconds since the Unix epoch. Tags use the "C" collation so that they
-- sort by bytes, as in SQLite and in Rust.

CREATE TABLE merchants (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE TABLE products (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    merchant_id BIGINT NOT NULL REFERENCES merchants (id),
    external_id TEXT NOT NULL,
    title TEXT NOT NULL,
    -- Free JSON object, stored as text (exactly what SQLite stores).
    attributes TEXT NOT NULL DEFAULT '{}',
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    CONSTRAINT products_merchant_external_id UNIQUE (merchant_id, external_id)
);

CREATE TABLE product_tags (
    product_id BIGINT NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    -- `key:value`
    tag TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (product_id, tag)
);

CREATE INDEX product_tags_by_tag ON product_tags (tag);

CREATE TABLE images (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    product_id BIGINT NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    sha256 TEXT NOT NULL,
    byte_size BIGINT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    format TEXT NOT NULL,
    -- Relative to the data directory: images/ab/cd/<sha256>.<ext>
    path TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE INDEX images_by_product ON images (product_id);
CREATE INDEX images_by_sha256 ON images (sha256);

CREATE TABLE embeddings (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    image_id BIGINT NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    model_version TEXT NOT NULL,
    dim INTEGER NOT NULL,
    -- `dim` little-endian f32 values.
    vector BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    CONSTRAINT embeddings_image_model UNIQUE (image_id, model_version)
);

CREATE INDEX embeddings_by_model ON embeddings (model_version);

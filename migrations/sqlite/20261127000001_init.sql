-- Snapshop catalogue schema.
--
-- Written in SQL that SQLite and Postgres both accept, except for the identity columns
-- (`INTEGER PRIMARY KEY AUTOINCREMENT` here; `BIGINT GENERATED ALWAYS AS IDENTITY` in Postgres)
-- and the vector blob type (`BLOB` here, `BYTEA` there). Times are milliseconds since the Unix
-- epoch. Embedding ids are the ANN index keys, so they are never reused (AUTOINCREMENT).

CREATE TABLE merchants (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE TABLE products (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    merchant_id BIGINT NOT NULL REFERENCES merchants (id),
    external_id TEXT NOT NULL,
    title TEXT NOT NULL,
    -- Free JSON object, stored as text.
    attributes TEXT NOT NULL DEFAULT '{}',
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    CONSTRAINT products_merchant_external_id UNIQUE (merchant_id, external_id)
);

CREATE TABLE product_tags (
    product_id BIGINT NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    -- `key:value`
    tag TEXT NOT NULL,
    PRIMARY KEY (product_id, tag)
);

CREATE INDEX product_tags_by_tag ON product_tags (tag);

CREATE TABLE images (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
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
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    image_id BIGINT NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    model_version TEXT NOT NULL,
    dim INTEGER NOT NULL,
    -- `dim` little-endian f32 values.
    vector BLOB NOT NULL,
    created_at BIGINT NOT NULL,
    CONSTRAINT embeddings_image_model UNIQUE (image_id, model_version)
);

CREATE INDEX embeddings_by_model ON embeddings (model_version);

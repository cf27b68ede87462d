-- API keys, and per-merchant quotas with the counters they are checked against.
--
-- The counters are kept by every write in its own transaction (a create adds one product and its
-- images, an image upload adds images, a delete takes both off), so a quota check is one
-- conditional UPDATE of the merchant's row, never a COUNT over the catalogue. NULL limits mean
-- the service's defaults.

ALTER TABLE merchants ADD COLUMN product_count BIGINT NOT NULL DEFAULT 0;
ALTER TABLE merchants ADD COLUMN image_count BIGINT NOT NULL DEFAULT 0;
ALTER TABLE merchants ADD COLUMN max_products BIGINT;
ALTER TABLE merchants ADD COLUMN max_images BIGINT;

UPDATE merchants SET
    product_count = (SELECT COUNT(*) FROM products p WHERE p.merchant_id = merchants.id),
    image_count = (SELECT COUNT(*) FROM images i JOIN products p ON p.id = i.product_id
                   WHERE p.merchant_id = merchants.id);

-- Only a hash of each token is stored (SHA-256, lowercase hex), never the token.
CREATE TABLE api_keys (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('admin', 'merchant', 'search')),
    hash TEXT NOT NULL UNIQUE,
    -- The token's first characters, for listings.
    prefix TEXT NOT NULL,
    label TEXT NOT NULL DEFAULT '',
    -- A merchant key's merchant, or the merchant that owns a search key (by merchants.name).
    merchant TEXT,
    -- JSON array of the merchants a search key may search; NULL: every merchant.
    merchants TEXT,
    -- JSON array of allowed browser origins; empty: any.
    origins TEXT NOT NULL DEFAULT '[]',
    -- JSON rate-limit overrides; NULL: the defaults of the key's kind.
    rate_limits TEXT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT,
    last_used_at BIGINT
);

CREATE INDEX api_keys_by_merchant ON api_keys (merchant);

//! The values that cross the store boundary.
//!
//! Plain data shared by every backend and the service, so that neither side sees the other's
//! row types. It must never carry database handles, image bytes or backend-specific details.

/// A product as stored, with its tags (sorted) and images (by id).
#[derive(Debug, Clone, PartialEq)]
pub struct ProductRecord {
    /// Internal id (never reused; never shown to clients as such).
    pub id: i64,
    pub merchant: String,
    pub external_id: String,
    pub title: String,
    pub attributes: serde_json::Value,
    pub tags: Vec<String>,
    /// 1 at creation, +1 for every committed write to the product.
    pub version: i64,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    pub updated_at: i64,
    pub images: Vec<ImageRecord>,
}

/// An image row as stored: one file (by path) of one product.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRecord {
    pub id: i64,
    pub product_id: i64,
    pub sha256: String,
    pub byte_size: i64,
    pub width: u32,
    pub height: u32,
    pub format: String,
    /// Relative to the data directory (`images/ab/cd/<sha256>.<ext>`); several images may share
    /// one file.
    pub path: String,
}

/// A write's precondition: the product is this incarnation (product ids are never reused, so a
/// deleted and re-created product never matches) at this version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expect {
    pub product_id: i64,
    pub version: i64,
}

/// A product to create.
#[derive(Debug, Clone)]
pub struct NewProduct {
    pub merchant: String,
    pub external_id: String,
    pub title: String,
    pub attributes: serde_json::Value,
    /// Normalised (trimmed, sorted, deduplicated) by the caller.
    pub tags: Vec<String>,
    /// Checked with the images, atomically with the insert.
    pub quota: Quota,
}

/// An image to insert, with its embedding by the write's model version.
#[derive(Debug, Clone)]
pub struct NewImage {
    pub sha256: String,
    pub byte_size: i64,
    pub width: u32,
    pub height: u32,
    pub format: String,
    pub path: String,
    pub embedding: Vec<f32>,
}

/// Changes to a product; `None` keeps the field.
#[derive(Debug, Clone, Default)]
pub struct ProductUpdate {
    pub title: Option<String>,
    pub attributes: Option<serde_json::Value>,
    pub tags: Option<Vec<String>>,
    /// New embeddings `(image_id, vector)` of some of the product's images; an image id that is
    /// not the product's is an error ([`crate::StoreError::Corrupt`]).
    pub embeddings: Vec<(i64, Vec<f32>)>,
}

/// One embedding row by some model version: `key` is the ANN index key.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEmbedding {
    pub key: i64,
    pub image_id: i64,
    pub vector: Vec<f32>,
}

/// A product's complete searchable state, for one model version, as some commit left it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProductState {
    pub product_id: i64,
    pub version: i64,
    pub merchant: String,
    pub external_id: String,
    pub title: String,
    pub tags: Vec<String>,
    /// The product's embeddings by the model version asked for, by key.
    pub embeddings: Vec<StoredEmbedding>,
}

/// A committed change's place in the catalogue's change sequence (`catalog_changes`): every
/// write transaction that changes the catalogue takes the next `seq`, so the highest `seq` a
/// search view has applied says how fresh it is, and never goes back (a restart starts from the
/// store's highest).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct ChangeStamp {
    /// 0 before the first change; then 1, 2, ... (never reused; Postgres may leave gaps).
    pub seq: i64,
    /// When the change was written, milliseconds since the Unix epoch (0 before the first).
    pub at: i64,
}

/// What a write to a product committed.
#[derive(Debug, Clone)]
pub struct Written {
    pub product: ProductRecord,
    /// The searchable state after the write, for the write's model version.
    pub state: ProductState,
    /// The write's place in the change sequence.
    pub change: ChangeStamp,
}

/// What a delete committed.
#[derive(Debug, Clone)]
pub struct Deleted {
    /// The product as it was just before the delete.
    pub product: ProductRecord,
    /// The delete's place in the change sequence.
    pub change: ChangeStamp,
}

/// Which of a merchant's products a purge deletes: an AND of ORs over tags (every group must
/// have one of its tags); no groups: every product of the merchant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurgeFilter {
    pub all: Vec<Vec<String>>,
}

/// What a purge deleted (or, on a dry run, would delete).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Purged {
    /// Internal ids of the products, in id order.
    pub product_ids: Vec<i64>,
    /// Their images (rows; files are swept later).
    pub images: u64,
    /// The purge's place in the change sequence; `None` on a dry run or when nothing matched.
    pub change: Option<ChangeStamp>,
}

/// An image without an embedding by some model version.
#[derive(Debug, Clone, PartialEq)]
pub struct StaleImage {
    pub image_id: i64,
    pub product_id: i64,
    /// The product's version when read: pass it back in [`NewEmbedding`].
    pub product_version: i64,
    /// The product's tags at that version.
    pub tags: Vec<String>,
    pub path: String,
}

/// An embedding made from a [`StaleImage`].
#[derive(Debug, Clone)]
pub struct NewEmbedding {
    pub image_id: i64,
    pub product_id: i64,
    pub product_version: i64,
    pub vector: Vec<f32>,
}

/// Row counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub merchants: u64,
    pub products: u64,
    pub images: u64,
    pub embeddings: u64,
}

// ---- merchants and quotas ---------------------------------------------------------------------

/// The catalogue-size limits a write checks, atomically with the write: a merchant's own
/// overrides ([`MerchantRecord::max_products`], [`MerchantRecord::max_images`]) win over these
/// defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub max_products: i64,
    pub max_images: i64,
}

impl Quota {
    /// No limit a catalogue can reach.
    pub const UNLIMITED: Quota = Quota {
        max_products: i64::MAX,
        max_images: i64::MAX,
    };
}

/// A merchant, with its counters (kept by every write, in the write's transaction) and its
/// quota overrides (`None`: the service's defaults).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MerchantRecord {
    pub name: String,
    pub created_at: i64,
    pub products: i64,
    pub images: i64,
    pub max_products: Option<i64>,
    pub max_images: Option<i64>,
}

/// A merchant's quota overrides; `None` means the service's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MerchantSettings {
    pub max_products: Option<i64>,
    pub max_images: Option<i64>,
}

// ---- API keys ---------------------------------------------------------------------------------

/// What a key may do. See the service's `auth` module for the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    Admin,
    Merchant,
    Search,
}

impl KeyKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            KeyKind::Admin => "admin",
            KeyKind::Merchant => "merchant",
            KeyKind::Search => "search",
        }
    }

    pub fn parse(s: &str) -> Option<KeyKind> {
        match s {
            "admin" => Some(KeyKind::Admin),
            "merchant" => Some(KeyKind::Merchant),
            "search" => Some(KeyKind::Search),
            _ => None,
        }
    }
}

/// A key to store. The store never sees the token itself, only its hash.
#[derive(Debug, Clone, PartialEq)]
pub struct NewKey {
    pub kind: KeyKind,
    /// Lowercase hex SHA-256 of the whole token; unique.
    pub hash: String,
    /// The token's first characters, shown in listings (never enough to use it).
    pub prefix: String,
    pub label: String,
    /// The merchant a merchant key acts for, or that owns a search key (it may list and revoke
    /// it). Creating such a key registers the merchant.
    pub merchant: Option<String>,
    /// The merchants a search key may search; `None`: every merchant.
    pub merchants: Option<Vec<String>>,
    /// Browser origins a search key may be used from; empty: any.
    pub origins: Vec<String>,
    /// Per-key rate-limit overrides, as the service's JSON; the store keeps it opaque.
    pub rate_limits: Option<serde_json::Value>,
    /// Milliseconds since the Unix epoch; `None`: never.
    pub expires_at: Option<i64>,
}

/// A stored key (without any secret).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct KeyRecord {
    pub id: i64,
    pub kind: KeyKind,
    #[serde(skip)]
    pub hash: String,
    pub prefix: String,
    pub label: String,
    pub merchant: Option<String>,
    pub merchants: Option<Vec<String>>,
    pub origins: Vec<String>,
    pub rate_limits: Option<serde_json::Value>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

impl KeyRecord {
    /// Neither revoked nor expired at `now_ms`.
    pub fn is_active(&self, now_ms: i64) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|t| now_ms < t)
    }
}

/// Which keys [`crate::KeyStore::list_keys`] returns, newest first.
#[derive(Debug, Clone, Default)]
pub struct KeyQuery {
    /// Only keys owned by this merchant.
    pub merchant: Option<String>,
    pub kind: Option<KeyKind>,
    /// Revoked and expired keys too.
    pub include_inactive: bool,
}

//! API keys: minting them, recognising them, and what each kind may do.
//!
//! There are three kinds ([`KeyKind`]): **admin** keys manage merchants and keys and swap the
//! model, and may also act for any merchant; **merchant** keys read and write one merchant's
//! catalogue, search it, and manage that merchant's keys; **search** keys are publishable keys for
//! shop frontends that can only search, optionally limited to some merchants and browser origins.
//! The rules are the methods of [`Principal`]; the HTTP layer asks them and never decides itself.
//!
//! A token is a kind prefix (`sk_admin_`, `sk_live_`, `pk_live_`) and 40 random base62
//! characters (about 238 bits from the OS's generator). Only its SHA-256 is stored; a request's
//! token is hashed, looked up by hash, and the stored hash compared again in constant time.
//! Every request looks the key up in the store, so a revocation or an expiry takes effect at
//! once, on every replica. This module must never log, store or return a token except the one
//! [`mint`] hands to its caller once, and never log a hash.

pub mod limit;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use sha2::{Digest, Sha256};
use snapshop_store::{CatalogStore, KeyKind, KeyRecord, NewKey, StoreError};
use subtle::ConstantTimeEq;

use crate::error::{Coded, ErrorCode};

/// Random characters after the kind prefix.
const SECRET_LEN: usize = 40;
/// Characters of the token kept as its visible prefix (the kind prefix and 8 random ones).
const VISIBLE_RANDOM: usize = 8;
/// A key's `last_used_at` is written at most this often.
const TOUCH_EVERY: Duration = Duration::from_secs(60);
/// The shortest bootstrap admin key accepted from the configuration.
pub const MIN_BOOTSTRAP_LEN: usize = 32;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The prefix tokens of a kind start with.
pub const fn token_prefix(kind: KeyKind) -> &'static str {
    match kind {
        KeyKind::Admin => "sk_admin_",
        KeyKind::Merchant => "sk_live_",
        KeyKind::Search => "pk_live_",
    }
}

/// A new token of `kind`: the kind prefix and [`SECRET_LEN`] uniform base62 characters.
pub fn new_token(kind: KeyKind) -> String {
    let mut rng = rand::rng();
    let mut token = String::from(token_prefix(kind));
    while token.len() < token_prefix(kind).len() + SECRET_LEN {
        // 248 = 4 × 62: rejecting larger bytes keeps every character equally likely.
        let b: u8 = rng.random();
        if b < 248 {
            token.push(ALPHABET[(b % 62) as usize] as char);
        }
    }
    token
}

/// Lowercase hex SHA-256 of a token: what the store keeps.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The part of a token shown in listings: its kind prefix and a few random characters.
pub fn visible_prefix(token: &str) -> String {
    let kind_len = token.rfind('_').map(|i| i + 1).unwrap_or(0);
    token.chars().take(kind_len + VISIBLE_RANDOM).collect()
}

/// A key to create, as asked (the token is made here).
#[derive(Debug, Clone)]
pub struct KeySpec {
    pub kind: KeyKind,
    pub label: String,
    pub merchant: Option<String>,
    pub merchants: Option<Vec<String>>,
    pub origins: Vec<String>,
    pub rate_limits: Option<serde_json::Value>,
    pub expires_at: Option<i64>,
}

/// Mints a key: stores its hash and returns the record with the token, which nobody can see
/// again.
pub async fn mint(
    store: &dyn CatalogStore,
    spec: KeySpec,
) -> Result<(KeyRecord, String), StoreError> {
    let token = new_token(spec.kind);
    let record = store_token(store, spec, &token).await?;
    Ok((record, token))
}

/// Stores a key for a token the caller chose (the bootstrap admin key).
pub async fn store_token(
    store: &dyn CatalogStore,
    spec: KeySpec,
    token: &str,
) -> Result<KeyRecord, StoreError> {
    store
        .access()
        .create_key(NewKey {
            kind: spec.kind,
            hash: hash_token(token),
            prefix: visible_prefix(token),
            label: spec.label,
            merchant: spec.merchant,
            merchants: spec.merchants,
            origins: spec.origins,
            rate_limits: spec.rate_limits,
            expires_at: spec.expires_at,
        })
        .await
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Who is calling, once the key is checked.
#[derive(Debug, Clone)]
pub enum Principal {
    /// Development mode (`auth.dev_mode`): no keys, everything allowed.
    Dev,
    /// A valid key.
    Key(Arc<KeyRecord>),
}

/// The merchants a search may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchScope {
    All,
    Only(Vec<String>),
}

impl Principal {
    /// The key's kind; development mode acts as admin.
    pub fn kind(&self) -> KeyKind {
        match self {
            Principal::Dev => KeyKind::Admin,
            Principal::Key(k) => k.kind,
        }
    }

    pub fn key(&self) -> Option<&KeyRecord> {
        match self {
            Principal::Dev => None,
            Principal::Key(k) => Some(k),
        }
    }

    pub fn is_admin(&self) -> bool {
        self.kind() == KeyKind::Admin
    }

    /// May read and write `merchant`'s catalogue, and manage its keys: admin keys, and that
    /// merchant's own merchant keys.
    pub fn may_manage(&self, merchant: &str) -> bool {
        match self.kind() {
            KeyKind::Admin => true,
            KeyKind::Merchant => self.key().and_then(|k| k.merchant.as_deref()) == Some(merchant),
            KeyKind::Search => false,
        }
    }

    /// May see `merchant`'s products as search results show them (their image files): those
    /// who may manage it, and keys whose search scope holds it.
    pub fn may_view(&self, merchant: &str) -> bool {
        self.may_manage(merchant)
            || match self.search_scope() {
                SearchScope::All => true,
                SearchScope::Only(list) => list.iter().any(|m| m == merchant),
            }
    }

    /// The merchants this caller's searches may return.
    pub fn search_scope(&self) -> SearchScope {
        match (self.kind(), self.key()) {
            (KeyKind::Admin, _) | (_, None) => SearchScope::All,
            (KeyKind::Merchant, Some(k)) => SearchScope::Only(k.merchant.iter().cloned().collect()),
            (KeyKind::Search, Some(k)) => match &k.merchants {
                None => SearchScope::All,
                Some(list) => SearchScope::Only(list.clone()),
            },
        }
    }

    /// Browser origins the key is limited to (empty: not limited).
    pub fn origins(&self) -> &[String] {
        self.key().map(|k| k.origins.as_slice()).unwrap_or(&[])
    }
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("an API key is required: Authorization: Bearer <key>")]
    Missing,
    #[error("the Authorization header must be `Bearer <key>`")]
    Malformed,
    #[error("unknown API key")]
    Unknown,
    #[error("this API key was revoked")]
    Revoked,
    #[error("this API key has expired")]
    Expired,
    #[error("cannot check the API key")]
    Store(#[from] StoreError),
}

impl Coded for AuthError {
    fn code(&self) -> ErrorCode {
        match self {
            AuthError::Missing
            | AuthError::Malformed
            | AuthError::Unknown
            | AuthError::Revoked
            | AuthError::Expired => ErrorCode::Unauthenticated,
            AuthError::Store(e) => e.code(),
        }
    }
}

/// Turns tokens into principals, against the store.
pub struct Authenticator {
    store: Arc<dyn CatalogStore>,
    dev_mode: bool,
    touched: Mutex<HashMap<i64, Instant>>,
    /// The last record each key hash was found with, used only while the store is unreachable
    /// (see [`OUTAGE_GRACE`]): every other request looks the key up, so a revocation takes
    /// effect on the next request.
    last_known: Mutex<HashMap<String, (Instant, Arc<KeyRecord>)>>,
    /// Whether the store was just found unreachable: lookups then go straight to the last
    /// known records instead of each waiting out the pool's connect timeout.
    health: Arc<StoreHealth>,
}

/// How long one failed key lookup marks the store unreachable; the first request after it tries
/// the store again.
const STORE_DOWN_MS: i64 = 1_000;

/// Whether the store was found unreachable a moment ago, shared by the key lookups, the writes
/// (`crate::core::Core::check_store`) and the change feed's follower, which renews it while its
/// reads fail and clears it when one succeeds. Only real failures mark it: a request refused
/// because of it does not.
#[derive(Debug, Default)]
pub struct StoreHealth {
    down_until: std::sync::atomic::AtomicI64,
}

impl StoreHealth {
    /// The store failed to answer: treat it as unreachable for `for_ms`.
    pub fn mark_down(&self, for_ms: i64) {
        self.down_until
            .fetch_max(now_ms() + for_ms, std::sync::atomic::Ordering::AcqRel);
    }

    /// The store answered.
    pub fn mark_up(&self) {
        self.down_until
            .store(0, std::sync::atomic::Ordering::Release);
    }

    pub fn is_down(&self) -> bool {
        now_ms() < self.down_until.load(std::sync::atomic::Ordering::Acquire)
    }

    /// `Err(StoreError::Unavailable)` while [`StoreHealth::is_down`].
    pub fn check(&self) -> Result<(), StoreError> {
        if self.is_down() {
            return Err(StoreError::Unavailable(
                "the store was unreachable a moment ago".into(),
            ));
        }
        Ok(())
    }
}

/// How old a key lookup may be and still admit a request while the store cannot be reached:
/// searches keep being answered from memory through a database outage this long.
const OUTAGE_GRACE: Duration = Duration::from_secs(15 * 60);
/// At most this many remembered lookups (the map is cleared when full).
const LAST_KNOWN_MAX: usize = 10_000;

impl Authenticator {
    pub fn new(store: Arc<dyn CatalogStore>, dev_mode: bool, health: Arc<StoreHealth>) -> Self {
        Self {
            store,
            dev_mode,
            touched: Mutex::new(HashMap::new()),
            last_known: Mutex::new(HashMap::new()),
            health,
        }
    }

    /// The key record for `hash`: from the store, or, while the store is unreachable, as a
    /// lookup less than [`OUTAGE_GRACE`] ago found it.
    async fn lookup(&self, hash: &str) -> Result<Option<Arc<KeyRecord>>, AuthError> {
        let down = self.health.is_down();
        let looked_up = if down {
            Err(StoreError::Unavailable(
                "the store was unreachable a moment ago".into(),
            ))
        } else {
            self.store.access().key_by_hash(hash).await
        };
        if matches!(&looked_up, Err(e) if e.is_unavailable()) && !down {
            self.health.mark_down(STORE_DOWN_MS);
        }
        match looked_up {
            Ok(Some(record)) => {
                let record = Arc::new(record);
                let mut known = self.last_known.lock().unwrap_or_else(|e| e.into_inner());
                if known.len() >= LAST_KNOWN_MAX {
                    known.clear();
                }
                known.insert(hash.to_owned(), (Instant::now(), record.clone()));
                Ok(Some(record))
            }
            Ok(None) => {
                self.last_known
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(hash);
                Ok(None)
            }
            Err(e) if e.is_unavailable() => {
                let known = self.last_known.lock().unwrap_or_else(|e| e.into_inner());
                match known.get(hash) {
                    Some((at, record)) if at.elapsed() < OUTAGE_GRACE => {
                        tracing::debug!(key_id = record.id, error = %e, "store unreachable: using the key's last lookup");
                        Ok(Some(record.clone()))
                    }
                    _ => Err(e.into()),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    pub fn dev_mode(&self) -> bool {
        self.dev_mode
    }

    /// The principal of an `Authorization` header value (`None`: no header). In development
    /// mode every request is [`Principal::Dev`], with or without a key.
    pub async fn authenticate(&self, header: Option<&[u8]>) -> Result<Principal, AuthError> {
        if self.dev_mode {
            return Ok(Principal::Dev);
        }
        let header = header.ok_or(AuthError::Missing)?;
        let text = std::str::from_utf8(header).map_err(|_| AuthError::Malformed)?;
        let (scheme, token) = text.trim().split_once(' ').ok_or(AuthError::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Malformed);
        }
        let token = token.trim();
        if token.is_empty() || token.len() > 256 {
            return Err(AuthError::Unknown);
        }
        let hash = hash_token(token);
        let record = self.lookup(&hash).await?.ok_or(AuthError::Unknown)?;
        // The lookup found it by hash already; comparing again in constant time keeps a
        // backend's string comparison out of the picture.
        if !bool::from(record.hash.as_bytes().ct_eq(hash.as_bytes())) {
            return Err(AuthError::Unknown);
        }
        let now = now_ms();
        if record.revoked_at.is_some() {
            return Err(AuthError::Revoked);
        }
        if record.expires_at.is_some_and(|t| now >= t) {
            return Err(AuthError::Expired);
        }
        self.touch(record.id, now);
        Ok(Principal::Key(record))
    }

    /// Records the key's use in the background, at most every [`TOUCH_EVERY`].
    fn touch(&self, id: i64, now: i64) {
        {
            let mut touched = self.touched.lock().unwrap_or_else(|e| e.into_inner());
            let due = touched.get(&id).is_none_or(|t| t.elapsed() >= TOUCH_EVERY);
            if !due {
                return;
            }
            touched.insert(id, Instant::now());
        }
        let store = self.store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.access().touch_key(id, now).await {
                tracing::warn!(key_id = id, error = %e, "cannot record a key's use");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_their_kind_prefix_and_enough_randomness() {
        for kind in [KeyKind::Admin, KeyKind::Merchant, KeyKind::Search] {
            let a = new_token(kind);
            let b = new_token(kind);
            assert_ne!(a, b);
            let secret = a.strip_prefix(token_prefix(kind)).unwrap();
            assert_eq!(secret.len(), SECRET_LEN);
            assert!(secret.bytes().all(|c| c.is_ascii_alphanumeric()));
            assert_eq!(
                visible_prefix(&a).len(),
                token_prefix(kind).len() + VISIBLE_RANDOM
            );
            assert!(a.starts_with(&visible_prefix(&a)));
        }
        assert_eq!(hash_token("x").len(), 64);
        assert_ne!(hash_token("x"), hash_token("y"));
    }

    fn key(kind: KeyKind, merchant: Option<&str>, merchants: Option<&[&str]>) -> Principal {
        Principal::Key(Arc::new(KeyRecord {
            id: 1,
            kind,
            hash: String::new(),
            prefix: String::new(),
            label: String::new(),
            merchant: merchant.map(str::to_owned),
            merchants: merchants.map(|m| m.iter().map(|s| s.to_string()).collect()),
            origins: vec![],
            rate_limits: None,
            created_at: 0,
            expires_at: None,
            revoked_at: None,
            last_used_at: None,
        }))
    }

    #[test]
    fn the_rules_of_each_kind() {
        let admin = key(KeyKind::Admin, None, None);
        let merchant = key(KeyKind::Merchant, Some("a"), None);
        let search = key(KeyKind::Search, Some("a"), Some(&["a", "b"]));
        let open_search = key(KeyKind::Search, None, None);
        assert!(admin.may_manage("a") && admin.may_manage("z") && Principal::Dev.may_manage("z"));
        assert!(merchant.may_manage("a") && !merchant.may_manage("b"));
        assert!(!search.may_manage("a") && !open_search.may_manage("a"));
        assert_eq!(admin.search_scope(), SearchScope::All);
        assert_eq!(merchant.search_scope(), SearchScope::Only(vec!["a".into()]));
        assert_eq!(
            search.search_scope(),
            SearchScope::Only(vec!["a".into(), "b".into()])
        );
        assert_eq!(open_search.search_scope(), SearchScope::All);
        assert!(search.may_view("b") && !search.may_view("c") && open_search.may_view("c"));
        assert!(merchant.may_view("a") && !merchant.may_view("b"));
        // A merchant key without a merchant (a corrupt row) may search nothing.
        assert_eq!(
            key(KeyKind::Merchant, None, None).search_scope(),
            SearchScope::Only(vec![])
        );
    }
}

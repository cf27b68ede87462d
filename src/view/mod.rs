//! The search view: the one owner of everything searchable in memory, for one model.
//!
//! It holds the ANN index and the merchant and tag postings, and answers "which products are
//! behind these keys" without a database round trip. It is derived from the store and changes
//! only through [`SearchView::apply`] (one committed write) and [`SearchView::reconcile`] (the
//! whole store: at start-up, after a failed apply, at a model switch). Applies are idempotent
//! and order-independent: each carries the product's complete state at a version, and a state
//! older than what the view holds is ignored. It must never be written before the store's
//! transaction has committed, and never holds a lock across I/O. Methods block: call them off
//! the async runtime.
//!
//! It also knows how fresh it is: the highest place in the store's change sequence
//! ([`ChangeStamp`]) it has applied or been reconciled to, which every search reports as its
//! `index_version` (monotone, also across a restart: a reconcile starts from the store's).

pub mod ann;
#[cfg(feature = "milvus")]
pub mod milvus;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use roaring::RoaringTreemap;
use snapshop_index::{Hit, IndexError, IndexStats, Key};
use snapshop_store::{ChangeStamp, ProductState};

pub use ann::{AnnFilter, AnnIndex, HnswAnn, Payload};

use crate::error::{Coded, ErrorCode};
use crate::model::check_embedding;
use crate::search::filter::TagFilter;

/// What a search result shows of a product.
#[derive(Debug, Clone, PartialEq)]
pub struct ProductInfo {
    pub id: i64,
    pub merchant: String,
    pub external_id: String,
    pub title: String,
    pub tags: Vec<String>,
}

/// One committed write, as the view applies it.
#[derive(Debug, Clone)]
pub enum Change {
    /// The product's complete state after a write (for this view's model version).
    Upsert(ProductState),
    /// The product is gone (product ids are never reused).
    Delete { product_id: i64 },
    /// Several products are gone at once (a purge): one pass over the postings.
    DeleteMany { product_ids: Vec<i64> },
}

#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("embedding {key} of product {product_id} is invalid: {reason}")]
    InvalidEmbedding {
        product_id: i64,
        key: i64,
        reason: String,
    },
    #[error("index: {0}")]
    Index(#[from] IndexError),
}

impl Coded for ViewError {
    fn code(&self) -> ErrorCode {
        match self {
            ViewError::InvalidEmbedding { .. } => ErrorCode::Internal,
            ViewError::Index(e) => e.code(),
        }
    }
}

struct Slot {
    info: Arc<ProductInfo>,
    version: i64,
    keys: Vec<Key>,
}

#[derive(Default)]
struct Postings {
    products: HashMap<i64, Slot>,
    /// Key → (product id, image id).
    keys: HashMap<Key, (i64, i64)>,
    by_tag: HashMap<String, RoaringTreemap>,
    by_merchant: HashMap<String, RoaringTreemap>,
    /// Deleted products: a late apply of an older state must not bring one back.
    deleted: HashSet<i64>,
}

impl Postings {
    fn unlink(&mut self, pid: i64) -> Option<Slot> {
        let slot = self.products.remove(&pid)?;
        for key in &slot.keys {
            self.keys.remove(key);
        }
        let drop_keys = |map: &mut HashMap<String, RoaringTreemap>, name: &str| {
            if let Some(bm) = map.get_mut(name) {
                for key in &slot.keys {
                    bm.remove(*key);
                }
                if bm.is_empty() {
                    map.remove(name);
                }
            }
        };
        for t in &slot.info.tags {
            drop_keys(&mut self.by_tag, t);
        }
        drop_keys(&mut self.by_merchant, &slot.info.merchant);
        Some(slot)
    }

    fn link(&mut self, s: &ProductState) {
        let keys: Vec<Key> = s.embeddings.iter().map(|e| e.key as Key).collect();
        for e in &s.embeddings {
            self.keys.insert(e.key as Key, (s.product_id, e.image_id));
        }
        for t in &s.tags {
            self.by_tag
                .entry(t.clone())
                .or_default()
                .extend(keys.iter().copied());
        }
        self.by_merchant
            .entry(s.merchant.clone())
            .or_default()
            .extend(keys.iter().copied());
        self.products.insert(
            s.product_id,
            Slot {
                info: Arc::new(ProductInfo {
                    id: s.product_id,
                    merchant: s.merchant.clone(),
                    external_id: s.external_id.clone(),
                    title: s.title.clone(),
                    tags: s.tags.clone(),
                }),
                version: s.version,
                keys,
            },
        );
    }
}

/// What a reconcile changed.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Reconciled {
    pub products: usize,
    pub inserted: usize,
    pub removed: usize,
}

/// See the module documentation.
pub struct SearchView {
    model_version: String,
    dim: usize,
    ann: Arc<dyn AnnIndex>,
    postings: RwLock<Postings>,
    /// Serialises applies, so that postings and the index change together.
    apply: Mutex<()>,
    /// Moves with every applied change.
    version: AtomicU64,
    /// The latest change in the store's sequence this view reflects (see the module docs).
    position: RwLock<ChangeStamp>,
    /// Set when an apply failed after its commit: the view may lag the store until reconciled.
    dirty: AtomicBool,
}

impl std::fmt::Debug for SearchView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchView")
            .field("model_version", &self.model_version)
            .field("version", &self.version())
            .field("dirty", &self.is_dirty())
            .finish()
    }
}

/// Whether state `s` is newer than what the view holds: a higher version, or the same version
/// with embeddings made later (a re-embedding stores new embeddings without a new version, and
/// embedding ids only grow, so the set with the higher largest id is the later one).
fn is_newer(s: &ProductState, held: &Slot) -> bool {
    if s.version != held.version {
        return s.version > held.version;
    }
    let latest = s.embeddings.iter().map(|e| e.key as Key).max();
    latest > held.keys.iter().copied().max()
}

fn validate(s: &ProductState, dim: usize) -> Result<(), ViewError> {
    for e in &s.embeddings {
        check_embedding(&e.vector, dim).map_err(|reason| ViewError::InvalidEmbedding {
            product_id: s.product_id,
            key: e.key,
            reason,
        })?;
    }
    Ok(())
}

impl SearchView {
    /// An empty view over `ann` (which may already hold vectors: [`SearchView::reconcile`]
    /// brings it in line with the store).
    pub fn new(model_version: &str, dim: usize, ann: Arc<dyn AnnIndex>) -> Self {
        Self {
            model_version: model_version.to_owned(),
            dim,
            ann,
            postings: RwLock::new(Postings::default()),
            apply: Mutex::new(()),
            version: AtomicU64::new(0),
            position: RwLock::new(ChangeStamp::default()),
            dirty: AtomicBool::new(false),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Postings> {
        self.postings.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Postings> {
        self.postings.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn model_version(&self) -> &str {
        &self.model_version
    }

    pub fn ann(&self) -> &Arc<dyn AnnIndex> {
        &self.ann
    }

    /// Moves with each applied change and reconcile.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The latest change of the store's sequence this view reflects: `seq` never goes back.
    pub fn position(&self) -> ChangeStamp {
        *self.position.read().unwrap_or_else(|e| e.into_inner())
    }

    fn advance(&self, to: ChangeStamp) {
        let mut p = self.position.write().unwrap_or_else(|e| e.into_inner());
        if to.seq > p.seq {
            *p = to;
        }
    }

    pub fn is_dirty(&self) -> bool {
        self.dirty.load(Ordering::Acquire)
    }

    pub fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::Release);
    }

    /// Applies one committed change, made at `stamp` in the store's change sequence (the view's
    /// position moves to it, also when the change is older than what the view holds). On error
    /// nothing of it is applied to the postings (the index may hold part of it) and the position
    /// stays; the caller marks the view dirty and reconciles.
    pub fn apply(&self, change: &Change, stamp: ChangeStamp) -> Result<(), ViewError> {
        self.apply_change(change)?;
        self.advance(stamp);
        Ok(())
    }

    fn apply_change(&self, change: &Change) -> Result<(), ViewError> {
        let _serial = self.apply.lock().unwrap_or_else(|e| e.into_inner());
        match change {
            Change::Upsert(s) => {
                {
                    let p = self.read();
                    if p.deleted.contains(&s.product_id)
                        || p.products
                            .get(&s.product_id)
                            .is_some_and(|o| !is_newer(s, o))
                    {
                        return Ok(());
                    }
                }
                validate(s, self.dim)?;
                let old: HashSet<Key> = self
                    .read()
                    .products
                    .get(&s.product_id)
                    .map(|o| o.keys.iter().copied().collect())
                    .unwrap_or_default();
                let new: HashSet<Key> = s.embeddings.iter().map(|e| e.key as Key).collect();
                let payload = Payload {
                    merchant: &s.merchant,
                    tags: &s.tags,
                };
                // New vectors first, so that a failure leaves the old state searchable.
                for e in &s.embeddings {
                    if !old.contains(&(e.key as Key)) {
                        self.ann.insert(e.key as Key, &e.vector, payload)?;
                    }
                }
                {
                    let mut p = self.write();
                    p.unlink(s.product_id);
                    p.link(s);
                }
                for key in old.difference(&new) {
                    self.ann.remove(*key);
                }
            }
            Change::Delete { product_id } => {
                let slot = {
                    let mut p = self.write();
                    p.deleted.insert(*product_id);
                    p.unlink(*product_id)
                };
                for key in slot.map(|s| s.keys).unwrap_or_default() {
                    self.ann.remove(key);
                }
            }
            Change::DeleteMany { product_ids } => {
                let keys: Vec<Key> = {
                    let mut p = self.write();
                    let mut keys = Vec::new();
                    for pid in product_ids {
                        p.deleted.insert(*pid);
                        if let Some(slot) = p.unlink(*pid) {
                            keys.extend(slot.keys);
                        }
                    }
                    keys
                };
                for key in keys {
                    self.ann.remove(key);
                }
            }
        }
        self.version.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Makes the view exactly `states` (the store's, for this model): postings rebuilt, the
    /// index's extra keys removed and missing ones inserted. Clears the dirty mark, and moves the
    /// position to `position`: the store's [`snapshop_store::CatalogStore::last_change`] read
    /// *before* the states, so the view never claims more than they reflect. The caller makes
    /// sure no write commits meanwhile (it holds the write gate, or nothing serves yet).
    pub fn reconcile(
        &self,
        states: Vec<ProductState>,
        position: ChangeStamp,
    ) -> Result<Reconciled, ViewError> {
        let _serial = self.apply.lock().unwrap_or_else(|e| e.into_inner());
        let mut fresh = Postings::default();
        let mut wanted: HashSet<Key> = HashSet::new();
        let mut report = Reconciled {
            products: states.len(),
            ..Default::default()
        };
        let have: HashSet<Key> = self.ann.keys().into_iter().collect();
        for mut s in states {
            // A stored embedding that is invalid is skipped (and logged), not fatal: the rest of
            // the catalogue must stay searchable.
            s.embeddings.retain(|e| match check_embedding(&e.vector, self.dim) {
                Ok(()) => true,
                Err(reason) => {
                    tracing::warn!(key = e.key, image = e.image_id, %reason, "skipping an invalid stored embedding");
                    false
                }
            });
            for e in &s.embeddings {
                let key = e.key as Key;
                wanted.insert(key);
                if !have.contains(&key) {
                    let payload = Payload {
                        merchant: &s.merchant,
                        tags: &s.tags,
                    };
                    self.ann.insert(key, &e.vector, payload)?;
                    report.inserted += 1;
                }
            }
            // The vectors now live in the index; the postings need only the keys.
            s.embeddings.iter_mut().for_each(|e| e.vector = Vec::new());
            fresh.link(&s);
        }
        for key in have.difference(&wanted) {
            self.ann.remove(*key);
            report.removed += 1;
        }
        *self.write() = fresh;
        self.dirty.store(false, Ordering::Release);
        self.version.fetch_add(1, Ordering::AcqRel);
        self.advance(position);
        Ok(report)
    }

    /// The keys a filter allows, or `None` when nothing restricts the search. Bitmap unions and
    /// intersections: no posting list is copied into a hash set.
    pub fn allowed(
        &self,
        filter: &TagFilter,
        merchants: Option<&[String]>,
    ) -> Option<RoaringTreemap> {
        if filter.is_empty() && merchants.is_none() {
            return None;
        }
        let p = self.read();
        let mut acc: Option<RoaringTreemap> = merchants.map(|ms| {
            let mut any = RoaringTreemap::new();
            for m in ms {
                if let Some(bm) = p.by_merchant.get(m) {
                    any |= bm;
                }
            }
            any
        });
        for group in &filter.all {
            let mut any = RoaringTreemap::new();
            for tag in group {
                if let Some(bm) = p.by_tag.get(tag) {
                    any |= bm;
                }
            }
            acc = Some(match acc {
                None => any,
                Some(a) => a & any,
            });
            if acc.as_ref().is_some_and(|a| a.is_empty()) {
                break;
            }
        }
        Some(acc.unwrap_or_default())
    }

    /// The first pass: top `n` keys for `query` within the filter.
    pub fn search(
        &self,
        query: &[f32],
        n: usize,
        filter: &TagFilter,
        merchants: Option<&[String]>,
    ) -> Result<Vec<Hit>, IndexError> {
        match self.allowed(filter, merchants) {
            None => self.ann.search(query, n, None),
            Some(keys) if keys.is_empty() => Ok(Vec::new()),
            Some(keys) => self.ann.search(
                query,
                n,
                Some(AnnFilter {
                    merchants,
                    groups: &filter.all,
                    keys: &keys,
                }),
            ),
        }
    }

    /// The product and image behind a key (`None` if it left meanwhile).
    pub fn lookup(&self, key: Key) -> Option<(Arc<ProductInfo>, i64)> {
        let p = self.read();
        let (pid, image) = *p.keys.get(&key)?;
        Some((p.products.get(&pid)?.info.clone(), image))
    }

    /// The product's version the view holds.
    #[cfg(test)]
    pub fn product_version(&self, product_id: i64) -> Option<i64> {
        self.read().products.get(&product_id).map(|s| s.version)
    }

    /// The keys the view holds for a product.
    #[cfg(test)]
    pub fn product_keys(&self, product_id: i64) -> Vec<Key> {
        let mut keys = self
            .read()
            .products
            .get(&product_id)
            .map(|s| s.keys.clone())
            .unwrap_or_default();
        keys.sort_unstable();
        keys
    }

    pub fn product_count(&self) -> usize {
        self.read().products.len()
    }

    pub fn stats(&self) -> IndexStats {
        self.ann.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use snapshop_index::IndexConfig;
    use snapshop_store::StoredEmbedding;

    fn unit(i: usize, dim: usize) -> Vec<f32> {
        let mut v = vec![0.0; dim];
        v[i % dim] = 1.0;
        v
    }

    fn state(pid: i64, version: i64, merchant: &str, tags: &[&str], keys: &[i64]) -> ProductState {
        ProductState {
            product_id: pid,
            version,
            merchant: merchant.into(),
            external_id: format!("p{pid}"),
            title: format!("product {pid}"),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            embeddings: keys
                .iter()
                .map(|k| StoredEmbedding {
                    key: *k,
                    image_id: *k * 10,
                    vector: unit(*k as usize, 8),
                })
                .collect(),
        }
    }

    fn stamp(seq: i64) -> ChangeStamp {
        ChangeStamp {
            seq,
            at: seq * 1000,
        }
    }

    fn view() -> SearchView {
        let dir = tempfile::tempdir().unwrap().keep();
        SearchView::new("v1", 8, Arc::new(HnswAnn::new(IndexConfig::new(8), dir)))
    }

    fn set(v: &[Key]) -> RoaringTreemap {
        v.iter().copied().collect()
    }

    #[test]
    fn filters_resolve_to_keys() {
        let v = view();
        v.reconcile(
            vec![
                state(1, 1, "a", &["category:dress", "color:red"], &[100, 101]),
                state(2, 1, "a", &["category:dress", "color:blue"], &[200]),
                state(3, 1, "b", &["category:skirt", "color:red"], &[300]),
            ],
            stamp(0),
        )
        .unwrap();
        assert_eq!(v.allowed(&TagFilter::default(), None), None);
        let f = TagFilter::parse("color:red").unwrap();
        assert_eq!(v.allowed(&f, None), Some(set(&[100, 101, 300])));
        let ms = |m: &[&str]| m.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(v.allowed(&f, Some(&ms(&["a"]))), Some(set(&[100, 101])));
        assert_eq!(
            v.allowed(&f, Some(&ms(&["a", "b"]))),
            Some(set(&[100, 101, 300]))
        );
        assert_eq!(
            v.allowed(&f, Some(&[])),
            Some(set(&[])),
            "an empty scope sees nothing"
        );
        let f = TagFilter::parse("category:dress,color:red|color:blue").unwrap();
        assert_eq!(v.allowed(&f, None), Some(set(&[100, 101, 200])));
        assert_eq!(
            v.allowed(&TagFilter::default(), Some(&ms(&["b"]))),
            Some(set(&[300]))
        );
        assert_eq!(
            v.allowed(&TagFilter::default(), Some(&ms(&["zzz"]))),
            Some(set(&[]))
        );
        assert_eq!(
            v.allowed(&TagFilter::parse("x:y").unwrap(), None),
            Some(set(&[]))
        );
        let (p, image) = v.lookup(101).unwrap();
        assert_eq!((p.id, image), (1, 1010));
        assert_eq!(v.product_count(), 3);
        let hits = v
            .search(
                &unit(0, 8),
                2,
                &TagFilter::parse("color:red").unwrap(),
                None,
            )
            .unwrap();
        assert!(hits.iter().all(|h| [100, 101, 300].contains(&h.key)));
    }

    #[test]
    fn applies_converge_in_any_order() {
        let v = view();
        let s1 = state(1, 1, "a", &["color:red"], &[1]);
        let s2 = state(1, 2, "a", &["color:blue"], &[2, 3]);
        let s3 = state(1, 3, "a", &["color:green"], &[3, 4]);
        // Out of order: 3 first, then the older ones are ignored.
        v.apply(&Change::Upsert(s3.clone()), stamp(0)).unwrap();
        v.apply(&Change::Upsert(s1), stamp(0)).unwrap();
        v.apply(&Change::Upsert(s2), stamp(0)).unwrap();
        assert_eq!(v.product_version(1), Some(3));
        assert_eq!(v.product_keys(1), vec![3, 4]);
        assert_eq!(v.ann().keys(), vec![3, 4]);
        let green = TagFilter::parse("color:green").unwrap();
        assert_eq!(v.allowed(&green, None), Some(set(&[3, 4])));
        assert_eq!(
            v.allowed(&TagFilter::parse("color:blue").unwrap(), None),
            Some(set(&[]))
        );
        // A delete wins over any later-arriving older state.
        v.apply(&Change::Delete { product_id: 1 }, stamp(0))
            .unwrap();
        v.apply(&Change::Upsert(s3), stamp(0)).unwrap();
        assert!(v.lookup(3).is_none());
        assert!(v.ann().is_empty());
        assert_eq!(v.product_count(), 0);
    }

    #[test]
    fn invalid_embeddings_are_refused_and_reconcile_repairs() {
        let v = view();
        let mut bad = state(1, 1, "a", &[], &[1]);
        bad.embeddings[0].vector = vec![2.0; 8];
        assert!(matches!(
            v.apply(&Change::Upsert(bad.clone()), stamp(0)),
            Err(ViewError::InvalidEmbedding { .. })
        ));
        assert!(v.lookup(1).is_none());
        v.mark_dirty();
        let good = state(2, 1, "a", &[], &[5]);
        let r = v.reconcile(vec![bad, good], stamp(0)).unwrap();
        assert!(!v.is_dirty());
        assert_eq!((r.products, r.inserted), (2, 1));
        assert_eq!(v.ann().keys(), vec![5]);
    }

    #[test]
    fn purges_leave_in_one_pass_and_the_position_never_goes_back() {
        let v = view();
        v.reconcile(
            vec![
                state(1, 1, "a", &["color:red"], &[1, 2]),
                state(2, 1, "a", &["color:red"], &[3]),
                state(3, 1, "a", &["color:blue"], &[4]),
            ],
            stamp(10),
        )
        .unwrap();
        assert_eq!(v.position(), stamp(10));
        v.apply(
            &Change::DeleteMany {
                product_ids: vec![1, 2, 99],
            },
            stamp(12),
        )
        .unwrap();
        assert_eq!(v.ann().keys(), vec![4]);
        assert_eq!(
            v.allowed(&TagFilter::parse("color:red").unwrap(), None),
            Some(set(&[]))
        );
        assert_eq!(v.product_count(), 1);
        // A purged product's older state arriving late stays out.
        v.apply(
            &Change::Upsert(state(1, 1, "a", &["color:red"], &[1])),
            stamp(11),
        )
        .unwrap();
        assert!(v.lookup(1).is_none());
        assert_eq!(
            v.position(),
            stamp(12),
            "an older change does not move it back"
        );
        v.reconcile(Vec::new(), stamp(5)).unwrap();
        assert_eq!(
            v.position(),
            stamp(12),
            "nor does a reconcile to an older position"
        );
        let failed = v.apply(
            &Change::Upsert(ProductState {
                embeddings: vec![StoredEmbedding {
                    key: 9,
                    image_id: 90,
                    vector: vec![2.0; 8],
                }],
                ..state(9, 1, "a", &[], &[])
            }),
            stamp(13),
        );
        assert!(failed.is_err());
        assert_eq!(v.position(), stamp(12), "a failed apply does not move it");
    }
}

//! The ANN seam: what the search view needs from a nearest-neighbour backend.
//!
//! [`AnnIndex`] exists so that the in-process index ([`HnswAnn`], the exact-plus-HNSW
//! `snapshop-index` crate) is one backend among possible others: an external vector engine is one
//! new module implementing this trait. Backends are caches of the store and must never be the
//! only copy of a vector. Every method may block (call them from the blocking pool).

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use roaring::RoaringTreemap;
use snapshop_index::{Hit, IndexConfig, IndexError, IndexStats, Key, ShopIndex};

/// What a key is about, for backends that filter natively (an external engine stores it as the
/// point's payload). It never changes for a key: keys are never reused.
#[derive(Debug, Clone, Copy)]
pub struct Payload<'a> {
    pub merchant: &'a str,
    pub tags: &'a [String],
}

/// A typed search filter: any of some merchants, and an AND of ORs of tags, plus the set of keys the view's
/// postings resolved it to. In-process backends use `keys`; an engine with payload filters may
/// translate `merchants` and `groups` instead.
#[derive(Debug, Clone, Copy)]
pub struct AnnFilter<'a> {
    pub merchants: Option<&'a [String]>,
    pub groups: &'a [Vec<String>],
    pub keys: &'a RoaringTreemap,
}

/// A nearest-neighbour index over unit vectors, by dot product.
pub trait AnnIndex: Send + Sync + 'static {
    /// A short name for logs and `/readyz`.
    fn name(&self) -> &'static str;
    /// Inserts (or replaces) a vector; searchable on return. Rejects invalid vectors.
    fn insert(&self, key: Key, vector: &[f32], payload: Payload<'_>) -> Result<(), IndexError>;
    /// Removes a key; false when absent.
    fn remove(&self, key: Key) -> bool;
    /// The top `n` keys by score, best first, within `filter` when given.
    fn search(
        &self,
        query: &[f32],
        n: usize,
        filter: Option<AnnFilter<'_>>,
    ) -> Result<Vec<Hit>, IndexError>;
    /// The stored vectors of `keys` (`None` for absent keys), for the re-rank.
    fn vectors(&self, keys: &[Key]) -> Vec<Option<Vec<f32>>>;
    /// Every live key, ascending.
    fn keys(&self) -> Vec<Key>;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn stats(&self) -> IndexStats;
    /// Whether [`AnnIndex::maintain`] has work to do.
    fn needs_maintenance(&self) -> bool;
    /// Background upkeep (graph rebuilds); returns whether it did anything. Stops early, with
    /// `Err(Cancelled)`, when `stop` is set.
    fn maintain(&self, stop: &AtomicBool) -> Result<bool, IndexError>;
    /// Saves what a restart can reuse, tagged with the model version.
    fn persist(&self, model_version: &str) -> Result<(), IndexError>;
}

/// [`AnnIndex`] on `snapshop-index`: exact scans for small sets and selective filters, the HNSW
/// graph otherwise (chosen per query), snapshots in `dir`.
pub struct HnswAnn {
    index: ShopIndex,
    dir: PathBuf,
}

impl HnswAnn {
    /// An empty index.
    pub fn new(cfg: IndexConfig, dir: PathBuf) -> Self {
        Self {
            index: ShopIndex::new(cfg),
            dir,
        }
    }

    /// The snapshot in `dir` if it was made by `model_version` with this dimension, else `None`
    /// (missing, unreadable or stale: the caller rebuilds from the store).
    pub fn load(cfg: IndexConfig, dir: PathBuf, model_version: &str) -> Option<Self> {
        let dim = cfg.dim;
        match ShopIndex::load_snapshot(&dir, cfg) {
            Ok(Some((index, meta))) if meta.model_version == model_version && meta.dim == dim => {
                Some(Self { index, dir })
            }
            Ok(Some((_, meta))) => {
                tracing::info!(snapshot_model = %meta.model_version, snapshot_dim = meta.dim, "index snapshot is stale; rebuilding from the store");
                None
            }
            Ok(None) => {
                tracing::info!("no index snapshot; building from the store");
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "index snapshot unreadable; rebuilding from the store");
                None
            }
        }
    }

    /// An index over `items` with its graph built (all cores; honours `stop`).
    pub fn build(
        cfg: IndexConfig,
        dir: PathBuf,
        items: Vec<(Key, Vec<f32>)>,
        stop: &AtomicBool,
    ) -> Result<Self, IndexError> {
        let index = if items.is_empty() {
            cfg.validate()?;
            ShopIndex::new(cfg)
        } else {
            ShopIndex::build(cfg, items, stop)?
        };
        Ok(Self { index, dir })
    }
}

impl AnnIndex for HnswAnn {
    fn name(&self) -> &'static str {
        "hnsw"
    }
    fn insert(&self, key: Key, vector: &[f32], _payload: Payload<'_>) -> Result<(), IndexError> {
        self.index.insert(key, vector)
    }
    fn remove(&self, key: Key) -> bool {
        self.index.remove(key)
    }
    fn search(
        &self,
        query: &[f32],
        n: usize,
        filter: Option<AnnFilter<'_>>,
    ) -> Result<Vec<Hit>, IndexError> {
        self.index.search_in(
            query,
            n,
            filter.map(|f| f.keys as &dyn snapshop_index::KeySet),
        )
    }
    fn vectors(&self, keys: &[Key]) -> Vec<Option<Vec<f32>>> {
        self.index.vectors(keys)
    }
    fn keys(&self) -> Vec<Key> {
        self.index.keys()
    }
    fn len(&self) -> usize {
        self.index.len()
    }
    fn stats(&self) -> IndexStats {
        self.index.stats()
    }
    fn needs_maintenance(&self) -> bool {
        self.index.needs_maintenance()
    }
    fn maintain(&self, stop: &AtomicBool) -> Result<bool, IndexError> {
        self.index.maintain(stop)
    }
    fn persist(&self, model_version: &str) -> Result<(), IndexError> {
        let meta = self.index.save_snapshot(&self.dir, model_version)?;
        tracing::info!(count = meta.count, "index snapshot saved");
        Ok(())
    }
}

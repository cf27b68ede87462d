//! snapshop-index: the approximate-nearest-neighbour layer over shop-image embeddings.
//!
//! Exists so the service can ask "top N shop images by cosine similarity, optionally within
//! this set of keys" in milliseconds while the catalogue changes under it. The SQLite store is
//! the source of truth; this crate is a rebuildable cache of it and must never be the only copy
//! of anything. It must never panic on caller data (bad vectors, corrupt snapshots are errors).
//!
//! Layout: `vector` (validation, dot, top-k), `graph` (the hnsw_rs graph: build, incremental
//! insert, dump/reload, and the flat copy searches walk), `index` ([`ShopIndex`]: arena, fresh
//! segment, tombstones, merges, rebuilds) and `snapshot` (atomic on-disk snapshots of the
//! vectors and the graph).

mod error;
mod graph;
mod index;
mod snapshot;
#[cfg(test)]
mod testutil;
mod vector;

pub use error::IndexError;
pub use index::ShopIndex;
pub use vector::NORM_TOLERANCE;

/// The store's embedding row id.
pub type Key = u64;

/// A set of allowed keys for a filtered search. Implemented for `HashSet<Key>` and for roaring
/// bitmaps, so a caller can intersect postings without cloning them into a hash set.
pub trait KeySet: Sync {
    /// Whether `key` is allowed.
    fn contains_key(&self, key: Key) -> bool;
    /// How many keys the set holds (used to choose between an exact scan and the graph).
    fn key_count(&self) -> usize;
    /// Calls `f` with every key, in any order.
    fn for_each_key(&self, f: &mut dyn FnMut(Key));
}

impl<S: std::hash::BuildHasher + Sync> KeySet for std::collections::HashSet<Key, S> {
    fn contains_key(&self, key: Key) -> bool {
        self.contains(&key)
    }
    fn key_count(&self) -> usize {
        self.len()
    }
    fn for_each_key(&self, f: &mut dyn FnMut(Key)) {
        self.iter().for_each(|k| f(*k));
    }
}

impl KeySet for roaring::RoaringTreemap {
    fn contains_key(&self, key: Key) -> bool {
        self.contains(key)
    }
    fn key_count(&self) -> usize {
        self.len() as usize
    }
    fn for_each_key(&self, f: &mut dyn FnMut(Key)) {
        self.iter().for_each(f);
    }
}

/// Tuning knobs. Build one with [`IndexConfig::new`] and override fields as needed. It is also
/// the service's `[index]` config section (serde, every field optional), so the defaults live
/// only here; `dim` is not configurable there, it comes from the model.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IndexConfig {
    /// Embedding dimension (256 for the shipped model; always taken from the model bundle).
    #[serde(skip)]
    pub dim: usize,
    /// HNSW M: links per point per layer (twice that on layer 0). hnsw_rs allows 2..=255.
    /// 32 by default: with 16, families of more than ~32 near-identical images (one product
    /// photo under many merchants, many variants) close in on themselves and recall@256 at
    /// 100k fell to 0.75 (docs/performance.md, part 4).
    pub max_connections: usize,
    /// Candidate list width while building the graph.
    pub ef_construction: usize,
    /// Candidate list width while searching; raised to at least the neighbours asked for
    /// (`1.2 k + 8` unfiltered, more under filters). 256 gave recall@256 0.999 at 100k
    /// clustered vectors in 1.3 ms; 512 added 0.0003 for twice the time (docs/performance.md).
    pub ef_search: usize,
    /// `needs_maintenance` once the exact fresh segment holds more than this many vectors.
    pub fresh_capacity: usize,
    /// A filter whose allowed set is at most this fraction of the live set is answered exactly.
    pub exact_filter_fraction: f32,
    /// A filter with at most this many allowed keys is answered exactly whatever the fraction
    /// (an exact scan of a few thousand vectors is cheaper than a widened graph search).
    pub exact_filter_max_keys: usize,
    /// `needs_maintenance` once tombstones exceed this fraction of the graph's points.
    pub rebuild_tombstone_fraction: f32,
    /// With at most this many live keys every search is an exact scan. A top-256 graph search
    /// visits thousands of points whatever the size: at 10k × 256 it measured 3.6× slower than
    /// a full exact scan, at 30k about as fast (and the scan is exact), at 100k 11× faster
    /// (docs/performance.md), so the scan is kept up to about 32k. Set to 0 to always use the
    /// graph.
    pub exact_search_max_live: usize,
}

impl Default for IndexConfig {
    /// [`IndexConfig::new`] with `dim = 0` (to be set from the model).
    fn default() -> Self {
        Self::new(0)
    }
}

impl IndexConfig {
    /// The defaults: M = 16, ef_construction = 200, ef_search = 256, fresh_capacity = 4096,
    /// exact_filter_fraction = 0.2, exact_filter_max_keys = 4096,
    /// rebuild_tombstone_fraction = 0.2, exact_search_max_live = 32768.
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            max_connections: 32,
            ef_construction: 200,
            ef_search: 256,
            fresh_capacity: 4096,
            exact_filter_fraction: 0.2,
            exact_filter_max_keys: 4096,
            rebuild_tombstone_fraction: 0.2,
            exact_search_max_live: 32_768,
        }
    }

    /// Checks the values hnsw_rs would otherwise reject by exiting the process or panicking.
    pub fn validate(&self) -> Result<(), IndexError> {
        if self.dim == 0 {
            return Err(IndexError::InvalidConfig("dim must be positive".into()));
        }
        // hnsw_rs calls process::exit above 256 and stores M as u8 (256 would wrap to 0).
        if !(2..=255).contains(&self.max_connections) {
            return Err(IndexError::InvalidConfig(format!(
                "max_connections must be in 2..=255, got {}",
                self.max_connections
            )));
        }
        if self.ef_construction == 0 {
            return Err(IndexError::InvalidConfig(
                "ef_construction must be positive".into(),
            ));
        }
        for (name, f) in [
            ("exact_filter_fraction", self.exact_filter_fraction),
            (
                "rebuild_tombstone_fraction",
                self.rebuild_tombstone_fraction,
            ),
        ] {
            if !f.is_finite() || f < 0.0 {
                return Err(IndexError::InvalidConfig(format!(
                    "{name} must be a finite non-negative number, got {f}"
                )));
            }
        }
        Ok(())
    }

    /// A copy with every value forced into range, for the infallible [`ShopIndex::new`].
    fn sanitised(mut self) -> Self {
        if let Err(e) = self.validate() {
            tracing::warn!(error = %e, "snapshop-index: clamping invalid config");
        }
        self.max_connections = self.max_connections.clamp(2, 255);
        self.ef_construction = self.ef_construction.max(1);
        for f in [
            &mut self.exact_filter_fraction,
            &mut self.rebuild_tombstone_fraction,
        ] {
            if !f.is_finite() || *f < 0.0 {
                *f = 0.2;
            }
        }
        self
    }
}

/// One search result.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hit {
    /// The store key.
    pub key: Key,
    /// Dot product with the query (= cosine similarity); higher is better.
    pub score: f32,
}

/// Counters for monitoring.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct IndexStats {
    /// Live keys (`graph + fresh`).
    pub live: usize,
    /// Live keys searchable through the graph.
    pub graph: usize,
    /// Live keys in the exact fresh segment (not yet in a graph).
    pub fresh: usize,
    /// Graph points whose key was removed or replaced since the graph was built.
    pub tombstones: usize,
    /// Graph (re)builds since this index was created.
    pub rebuilds: u64,
}

/// What a snapshot holds, as returned by save and load.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct SnapshotMeta {
    /// Caller-provided model identifier; the caller must compare it with the running model.
    pub model_version: String,
    /// Vector dimension.
    pub dim: usize,
    /// Number of vectors.
    pub count: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_validation() {
        assert!(IndexConfig::new(256).validate().is_ok());
        for bad in [
            IndexConfig {
                max_connections: 256,
                ..IndexConfig::new(8)
            },
            IndexConfig {
                max_connections: 1,
                ..IndexConfig::new(8)
            },
            IndexConfig::new(0),
            IndexConfig {
                exact_filter_fraction: f32::NAN,
                ..IndexConfig::new(8)
            },
        ] {
            assert!(matches!(bad.validate(), Err(IndexError::InvalidConfig(_))));
            let fixed = bad.sanitised();
            assert!((2..=255).contains(&fixed.max_connections));
            assert!(fixed.exact_filter_fraction.is_finite());
        }
    }

    #[test]
    fn index_is_send_sync() {
        fn assert_send_sync<T: Send + Sync + Clone>() {}
        assert_send_sync::<ShopIndex>();
    }
}

//! `ShopIndex`: the live set of shop embeddings, searchable at once after every change.
//!
//! Exists because hnsw_rs alone cannot serve a mutable catalogue: it has no delete or update.
//! So the index keeps every live vector itself (a flat arena + key→slot map), puts new vectors
//! in a small exact "fresh" segment, and hides removed/replaced graph points behind tombstones.
//! When the fresh segment fills up, its vectors are inserted into the live graph off the state
//! lock (an incremental merge: hnsw_rs's insert takes `&self` and locks per point, so searches
//! keep running, and simply skip graph ids that are not mapped to a key yet); only when
//! tombstones pass `rebuild_tombstone_fraction` (or there is no graph worth growing) is the
//! graph rebuilt from scratch, also off the lock. It must never hold the write lock during a
//! graph build or merge, never insert into a graph from two threads at once (the
//! `maintenance` mutex), and never return a removed key.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Mutex, RwLock};

use crate::graph::{FlatGraph, Graph};
use crate::vector::{dot, validate_unit, Invalid, TopK};
use crate::{Hit, IndexConfig, IndexError, IndexStats, Key, KeySet};

/// A filter passing at most this fraction of the live keys is scanned key by key (a hash
/// look-up and a random arena access each); a looser one by walking the whole arena in order
/// and testing each key against the filter. Measured at 100k × 256 (docs/performance.md):
/// key by key cost 0.23 ms for 1k allowed keys but 5.8 ms for 10k (0.58 µs each, cache misses),
/// a full walk ~14 ms (0.14 µs per live key), so the walk wins from roughly 5-7%.
const SCAN_KEYS_MAX_FRACTION: f64 = 1.0 / 16.0;

/// Over-fetch factor of a filtered graph search: it asks for `factor × k / pass-rate`
/// neighbours. 1.2 left recall at 0.968 for a 50% filter at 100k; the unfiltered search keeps
/// 1.2 (there it only covers tombstones).
const FILTERED_OVERFETCH: f64 = 2.0;
const UNFILTERED_OVERFETCH: f64 = 1.2;

/// splitmix64's finaliser as the key hash: keys are store row ids (small, dense integers), so
/// SipHash's DoS resistance buys nothing here and its cost shows in every filtered scan.
#[derive(Clone, Copy, Default)]
pub(crate) struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        let mut z = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 ^= x;
    }
}

pub(crate) type KeyHash = std::hash::BuildHasherDefault<KeyHasher>;

/// Where a live key's current vector is searchable from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Loc {
    /// Graph id in the current graph.
    Graph(usize),
    /// Position in `State::fresh`.
    Fresh(usize),
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    /// Arena slot holding the normalised vector.
    slot: usize,
    /// Bumped on every insert of any key; lets a rebuild tell whether the vector it
    /// snapshotted is still the live one when it swaps the new graph in.
    version: u64,
    loc: Loc,
}

/// Everything behind the lock. Invariants (checked by `check_invariants` in tests):
/// every entry's slot maps back to its key; a `Loc::Graph(g)` entry has `graph_live[g]` and
/// `graph.keys[g] == key`; a `Loc::Fresh(p)` entry has `fresh[p] == slot`; no graph id is live
/// unless some entry points at it.
struct State {
    dim: usize,
    /// `slot * dim ..` holds the vector of `slot_keys[slot]`.
    arena: Vec<f32>,
    /// Slot → key, `None` for a free slot.
    slot_keys: Vec<Option<Key>>,
    free: Vec<usize>,
    entries: HashMap<Key, Entry, KeyHash>,
    /// Slots of vectors not in the graph, scanned exactly on every search.
    fresh: Vec<usize>,
    /// Shared so that a merge can insert into it off the state lock.
    graph: Option<Arc<Graph>>,
    /// What searches walk: a frozen copy of `graph`'s adjacency (see `graph.rs`), replaced
    /// after every merge or rebuild. It may cover fewer ids than `graph` during a merge.
    flat: Option<Arc<FlatGraph>>,
    /// Graph id → key. Shorter than the graph while a merge is inserting: searches skip the
    /// ids past its end.
    graph_keys: Vec<Key>,
    /// Graph id → still the live vector of its key (false = tombstone).
    graph_live: Vec<bool>,
    graph_live_count: usize,
    next_version: u64,
}

impl State {
    fn new(dim: usize) -> Self {
        Self {
            dim,
            arena: Vec::new(),
            slot_keys: Vec::new(),
            free: Vec::new(),
            entries: HashMap::default(),
            fresh: Vec::new(),
            graph: None,
            flat: None,
            graph_keys: Vec::new(),
            graph_live: Vec::new(),
            graph_live_count: 0,
            next_version: 0,
        }
    }

    #[inline]
    fn vec(&self, slot: usize) -> &[f32] {
        &self.arena[slot * self.dim..(slot + 1) * self.dim]
    }

    fn tombstones(&self) -> usize {
        self.graph_live.len() - self.graph_live_count
    }

    fn kill_graph_id(&mut self, g: usize) {
        debug_assert!(self.graph_live[g], "tombstoning a dead graph id");
        self.graph_live[g] = false;
        self.graph_live_count -= 1;
    }

    /// Removes `fresh[pos]`, keeping the moved element's entry pointing at its new position.
    fn remove_fresh_at(&mut self, pos: usize) {
        self.fresh.swap_remove(pos);
        if let Some(&moved_slot) = self.fresh.get(pos) {
            let key = self.slot_keys[moved_slot].expect("fresh slot without key: this is a bug");
            let e = self
                .entries
                .get_mut(&key)
                .expect("fresh key without entry: this is a bug");
            e.loc = Loc::Fresh(pos);
        }
    }

    /// Takes `key` out of whichever segment it is searchable from.
    fn detach(&mut self, e: Entry) {
        match e.loc {
            Loc::Graph(g) => self.kill_graph_id(g),
            Loc::Fresh(pos) => self.remove_fresh_at(pos),
        }
    }

    /// Inserts or replaces; `v` must already be validated and normalised.
    fn insert(&mut self, key: Key, v: &[f32]) {
        let version = self.next_version;
        self.next_version += 1;
        let slot = if let Some(old) = self.entries.get(&key).copied() {
            self.detach(old);
            old.slot
        } else if let Some(slot) = self.free.pop() {
            slot
        } else {
            self.arena.resize(self.arena.len() + self.dim, 0.0);
            self.slot_keys.push(None);
            self.slot_keys.len() - 1
        };
        self.arena[slot * self.dim..(slot + 1) * self.dim].copy_from_slice(v);
        self.slot_keys[slot] = Some(key);
        self.fresh.push(slot);
        let loc = Loc::Fresh(self.fresh.len() - 1);
        self.entries.insert(key, Entry { slot, version, loc });
    }

    fn remove(&mut self, key: Key) -> bool {
        let Some(e) = self.entries.remove(&key) else {
            return false;
        };
        self.detach(e);
        self.slot_keys[e.slot] = None;
        self.free.push(e.slot);
        true
    }

    fn needs_maintenance(&self, cfg: &IndexConfig) -> bool {
        self.needs_merge(cfg) || self.needs_rebuild(cfg)
    }

    fn needs_merge(&self, cfg: &IndexConfig) -> bool {
        self.fresh.len() > cfg.fresh_capacity
    }

    /// A full rebuild, rather than a merge: tombstones over the limit, or no graph to grow.
    fn needs_rebuild(&self, cfg: &IndexConfig) -> bool {
        let graph_len = self.graph_live.len();
        (graph_len > 0
            && self.tombstones() as f64 / graph_len as f64
                > f64::from(cfg.rebuild_tombstone_fraction))
            || (self.graph.is_none() && self.needs_merge(cfg))
    }

    /// Exact top-k over the allowed keys that are live (iterates the allowed set).
    fn scan_keys(&self, q: &[f32], keys: &dyn KeySet, top: &mut TopK) {
        keys.for_each_key(&mut |key| {
            if let Some(e) = self.entries.get(&key) {
                top.push(key, dot(q, self.vec(e.slot)));
            }
        });
    }

    /// Exact top-k over every live slot, in arena order (sequential memory access).
    fn scan_all(&self, q: &[f32], allowed: Option<&dyn KeySet>, top: &mut TopK) {
        for (slot, key) in self.slot_keys.iter().enumerate() {
            let Some(key) = key else { continue };
            if allowed.is_none_or(|a| a.contains_key(*key)) {
                top.push(*key, dot(q, self.vec(slot)));
            }
        }
    }

    fn scan_fresh(&self, q: &[f32], allowed: Option<&dyn KeySet>, top: &mut TopK) {
        for &slot in &self.fresh {
            let key = self.slot_keys[slot].expect("fresh slot without key: this is a bug");
            if allowed.is_none_or(|a| a.contains_key(key)) {
                top.push(key, dot(q, self.vec(slot)));
            }
        }
    }

    fn search_exact(&self, q: &[f32], k: usize, allowed: Option<&dyn KeySet>) -> Vec<Hit> {
        let mut top = TopK::new(k);
        match allowed {
            // Walking a small allowed set beats walking the whole arena.
            Some(a)
                if (a.key_count() as f64) <= SCAN_KEYS_MAX_FRACTION * self.entries.len() as f64 =>
            {
                self.scan_keys(q, a, &mut top)
            }
            _ => self.scan_all(q, allowed, &mut top),
        }
        top.into_sorted()
    }

    /// Graph + fresh segment, falling back to exact when the graph comes up short.
    fn search_graph(
        &self,
        cfg: &IndexConfig,
        q: &[f32],
        k: usize,
        allowed: Option<&dyn KeySet>,
    ) -> Vec<Hit> {
        let live = self.entries.len();
        let mut top = TopK::new(k);
        self.scan_fresh(q, allowed, &mut top);
        if let Some(graph) = self.flat.as_ref().filter(|_| self.graph_live_count > 0) {
            // hnsw_rs's own filtered search keeps walking the graph until its candidate list
            // is exhausted (~140 ms/query at 10% selectivity on 100k), so instead we ask the
            // unfiltered search for enough extra neighbours that, after dropping tombstones
            // and disallowed keys, about k remain — assuming they are spread evenly.
            let mapped = self.graph_live.len();
            let pass_live = self.graph_live_count as f64 / mapped as f64;
            let pass_allowed =
                allowed.map_or(1.0, |a| (a.key_count() as f64 / live as f64).min(1.0));
            let pass = (pass_live * pass_allowed).max(1e-6);
            let factor = if allowed.is_some() {
                FILTERED_OVERFETCH
            } else {
                UNFILTERED_OVERFETCH
            };
            let want = ((k as f64 / pass) * factor).ceil() as usize + 8;
            let want = want.min(mapped);
            let ef = cfg.ef_search.max(want);
            for g in graph.search(q, want, ef) {
                // Ids past `mapped` are being merged right now; their keys are still fresh.
                if !self.graph_live.get(g).copied().unwrap_or(false) {
                    continue;
                }
                let key = self.graph_keys[g];
                if allowed.is_some_and(|a| !a.contains_key(key)) {
                    continue;
                }
                let e = self
                    .entries
                    .get(&key)
                    .expect("live graph id without entry: this is a bug");
                // Rescore from the arena so scores are bit-identical to `search_exact`.
                top.push(key, dot(q, self.vec(e.slot)));
            }
        }
        if top.len() < k {
            // Short: either fewer than k candidates exist, or the graph missed some (skewed
            // filter, many tombstones near the query). Only an exact scan can tell.
            let available = match allowed {
                None => live,
                Some(a) => {
                    let mut n = 0;
                    a.for_each_key(&mut |key| n += usize::from(self.entries.contains_key(&key)));
                    n
                }
            };
            if top.len() < k.min(available) {
                return self.search_exact(q, k, allowed);
            }
        }
        top.into_sorted()
    }

    /// Copies the live vectors out for a rebuild: keys, their versions, and a flat data array.
    fn snapshot(&self) -> (Vec<Key>, Vec<u64>, Vec<f32>) {
        let n = self.entries.len();
        let mut keys = Vec::with_capacity(n);
        let mut versions = Vec::with_capacity(n);
        let mut data = Vec::with_capacity(n * self.dim);
        for (slot, key) in self.slot_keys.iter().enumerate() {
            let Some(key) = key else { continue };
            let e = &self.entries[key];
            keys.push(*key);
            versions.push(e.version);
            data.extend_from_slice(self.vec(slot));
        }
        (keys, versions, data)
    }

    /// Swaps in a graph built from a snapshot taken at some earlier point, replaying what
    /// happened since: a snapshotted key that was removed or re-inserted meanwhile becomes a
    /// tombstone in the new graph; anything inserted after the snapshot stays fresh.
    /// Returns the old graph so the caller can drop it after releasing the lock (dropping a
    /// big hnsw_rs graph takes a while).
    fn swap_graph(
        &mut self,
        graph: Arc<Graph>,
        flat: FlatGraph,
        keys: Vec<Key>,
        versions: &[u64],
    ) -> Option<Arc<Graph>> {
        let mut live = vec![false; keys.len()];
        let mut live_count = 0;
        for (g, (key, &version)) in keys.iter().zip(versions).enumerate() {
            let Some(e) = self.entries.get(key).copied() else {
                continue;
            };
            if e.version != version {
                continue;
            }
            if let Loc::Fresh(pos) = e.loc {
                self.remove_fresh_at(pos);
            }
            self.entries
                .get_mut(key)
                .expect("entry vanished under the write lock: this is a bug")
                .loc = Loc::Graph(g);
            live[g] = true;
            live_count += 1;
        }
        // Every entry older than the snapshot was in it, so none can still point at the old
        // graph; anything newer is fresh.
        debug_assert!(self
            .entries
            .iter()
            .all(|(k, e)| !matches!(e.loc, Loc::Graph(g) if keys.get(g) != Some(k) || !live[g])));
        self.graph_keys = keys;
        self.graph_live = live;
        self.graph_live_count = live_count;
        // The old copy only shares points with the old graph, which the caller drops later.
        self.flat = Some(Arc::new(flat));
        self.graph.replace(graph)
    }

    /// The fresh segment as (keys, versions, flat data), in fresh order, for a merge.
    fn fresh_snapshot(&self) -> (Vec<Key>, Vec<u64>, Vec<f32>) {
        let mut keys = Vec::with_capacity(self.fresh.len());
        let mut versions = Vec::with_capacity(self.fresh.len());
        let mut data = Vec::with_capacity(self.fresh.len() * self.dim);
        for &slot in &self.fresh {
            let key = self.slot_keys[slot].expect("fresh slot without key: this is a bug");
            keys.push(key);
            versions.push(self.entries[&key].version);
            data.extend_from_slice(self.vec(slot));
        }
        (keys, versions, data)
    }

    /// Maps graph ids `graph_keys.len()..` (just inserted by a merge) to `keys`: a key whose
    /// version is unchanged and still fresh moves into the graph; anything removed or replaced
    /// since the merge copied it becomes a tombstone at once.
    fn commit_merge(&mut self, flat: FlatGraph, keys: &[Key], versions: &[u64]) {
        self.flat = Some(Arc::new(flat));
        for (&key, &version) in keys.iter().zip(versions) {
            let g = self.graph_keys.len();
            self.graph_keys.push(key);
            let current = self.entries.get(&key).copied();
            match current {
                Some(e) if e.version == version => {
                    let Loc::Fresh(pos) = e.loc else {
                        unreachable!("a merged key left the fresh segment under the maintenance lock: this is a bug")
                    };
                    self.remove_fresh_at(pos);
                    self.entries
                        .get_mut(&key)
                        .expect("entry vanished under the write lock: this is a bug")
                        .loc = Loc::Graph(g);
                    self.graph_live.push(true);
                    self.graph_live_count += 1;
                }
                _ => self.graph_live.push(false),
            }
        }
    }

    /// Installs a graph reloaded from disk whose id `g` holds the vector of `keys[g]` where
    /// `live[g]`; those keys (already loaded, fresh) move into it. The caller has checked that
    /// every live id's key is loaded and that no key is live twice.
    fn install_graph(&mut self, graph: Graph, flat: FlatGraph, keys: Vec<Key>, live: Vec<bool>) {
        debug_assert!(self.graph.is_none() && keys.len() == live.len());
        for (g, (&key, &l)) in keys.iter().zip(&live).enumerate() {
            if !l {
                continue;
            }
            let e = self.entries[&key];
            if let Loc::Fresh(pos) = e.loc {
                self.remove_fresh_at(pos);
            }
            self.entries
                .get_mut(&key)
                .expect("entry vanished under the write lock: this is a bug")
                .loc = Loc::Graph(g);
        }
        self.graph_live_count = live.iter().filter(|l| **l).count();
        self.graph_keys = keys;
        self.graph_live = live;
        self.graph = Some(Arc::new(graph));
        self.flat = Some(Arc::new(flat));
    }

    #[cfg(test)]
    fn check_invariants(&self) {
        let mut live_graph_ids = 0;
        for (key, e) in &self.entries {
            assert_eq!(self.slot_keys[e.slot], Some(*key));
            match e.loc {
                Loc::Graph(g) => {
                    assert!(self.graph_live[g]);
                    assert_eq!(self.graph_keys[g], *key);
                    assert!(g < self.graph.as_ref().expect("graph").len());
                    live_graph_ids += 1;
                }
                Loc::Fresh(p) => assert_eq!(self.fresh[p], e.slot),
            }
        }
        assert_eq!(live_graph_ids, self.graph_live_count);
        assert_eq!(
            self.graph_live.iter().filter(|l| **l).count(),
            self.graph_live_count
        );
        assert_eq!(self.fresh.len() + self.graph_live_count, self.entries.len());
        assert_eq!(
            self.slot_keys.iter().filter(|k| k.is_none()).count(),
            self.free.len()
        );
    }
}

/// Whether a filter with `allowed` keys over `live` keys is answered by an exact scan.
fn is_selective(cfg: &IndexConfig, allowed: usize, live: usize) -> bool {
    allowed <= cfg.exact_filter_max_keys
        || allowed as f64 <= f64::from(cfg.exact_filter_fraction) * live as f64
}

/// See [`ShopIndex::export_for_save`].
pub(crate) struct SaveView {
    pub(crate) keys: Vec<Key>,
    pub(crate) data: Vec<f32>,
    pub(crate) graph: Option<Arc<Graph>>,
    pub(crate) graph_keys: Vec<Key>,
    pub(crate) graph_live: Vec<bool>,
}

struct Inner {
    cfg: IndexConfig,
    state: RwLock<State>,
    /// Serialises rebuilds: two concurrent ones would waste cores and race on the swap.
    maintenance: Mutex<()>,
    rebuilds: AtomicU64,
    merges: AtomicU64,
}

/// The approximate-nearest-neighbour index over shop embeddings.
///
/// Cheap to clone (an `Arc` inside); `Send + Sync`. Searches take a shared lock; `insert` and
/// `remove` take the exclusive lock only for O(dim) work; `maintain` builds graphs off the lock
/// and holds the exclusive lock only to swap one in.
#[derive(Clone)]
pub struct ShopIndex {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ShopIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShopIndex")
            .field("cfg", &self.inner.cfg)
            .field("stats", &self.stats())
            .finish()
    }
}

impl ShopIndex {
    /// An empty index. An out-of-range `max_connections` is clamped into hnsw_rs's range
    /// (with a warning) because this constructor cannot fail; use [`IndexConfig::validate`] or
    /// [`ShopIndex::build`] to get an error instead.
    pub fn new(cfg: IndexConfig) -> Self {
        let cfg = cfg.sanitised();
        let dim = cfg.dim;
        Self {
            inner: Arc::new(Inner {
                cfg,
                state: RwLock::new(State::new(dim)),
                maintenance: Mutex::new(()),
                rebuilds: AtomicU64::new(0),
                merges: AtomicU64::new(0),
            }),
        }
    }

    /// Builds an index over `items` with a graph over all of them. Blocking, uses all cores.
    ///
    /// A later duplicate key replaces an earlier one. Any invalid vector fails the whole build.
    pub fn build(
        cfg: IndexConfig,
        items: Vec<(Key, Vec<f32>)>,
        stop: &AtomicBool,
    ) -> Result<Self, IndexError> {
        cfg.validate()?;
        let index = Self::new(cfg);
        {
            let mut st = index.inner.state.write();
            st.arena.reserve(items.len() * index.inner.cfg.dim);
            for (key, v) in &items {
                let v = index.validate_insert(*key, v)?;
                st.insert(*key, &v);
            }
        }
        drop(items);
        index.rebuild(stop)?;
        Ok(index)
    }

    /// The configuration in force (after clamping, see [`ShopIndex::new`]).
    pub fn config(&self) -> &IndexConfig {
        &self.inner.cfg
    }

    fn validate_insert(&self, key: Key, v: &[f32]) -> Result<Vec<f32>, IndexError> {
        validate_unit(v, self.inner.cfg.dim).map_err(|e| match e {
            Invalid::Dim { expected, got } => IndexError::DimensionMismatch { expected, got },
            Invalid::Reason(reason) => IndexError::InvalidVector { key, reason },
        })
    }

    fn validate_query(&self, v: &[f32]) -> Result<Vec<f32>, IndexError> {
        validate_unit(v, self.inner.cfg.dim).map_err(|e| match e {
            Invalid::Dim { expected, got } => IndexError::DimensionMismatch { expected, got },
            Invalid::Reason(reason) => IndexError::InvalidQuery { reason },
        })
    }

    /// Inserts `vector` under `key`, replacing any previous vector; searchable on return.
    ///
    /// The vector must have `dim` finite components and an L2 norm within 1e-3 of 1; it is
    /// stored re-normalised.
    pub fn insert(&self, key: Key, vector: &[f32]) -> Result<(), IndexError> {
        let v = self.validate_insert(key, vector)?;
        self.inner.state.write().insert(key, &v);
        Ok(())
    }

    /// Removes `key`; no search started after this returns will see it. False if absent.
    pub fn remove(&self, key: Key) -> bool {
        self.inner.state.write().remove(key)
    }

    /// Whether `key` is live.
    pub fn contains(&self, key: Key) -> bool {
        self.inner.state.read().entries.contains_key(&key)
    }

    /// Number of live keys.
    pub fn len(&self) -> usize {
        self.inner.state.read().entries.len()
    }

    /// True when no key is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Top `k` live keys by dot product with `query`, best first (ties by key), restricted to
    /// `allowed` when given.
    ///
    /// Small indexes (at most `exact_search_max_live` keys) are always scanned exactly. A
    /// selective filter (at most `exact_filter_max_keys` keys, or at most
    /// `exact_filter_fraction` of the live set) is answered by an exact scan of the allowed
    /// keys; otherwise the graph is searched with a widened `ef` and its results post-filtered,
    /// with an exact fallback if that yields fewer than `k`. Never returns a removed key.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        allowed: Option<&HashSet<Key>>,
    ) -> Result<Vec<Hit>, IndexError> {
        self.search_in(query, k, allowed.map(|a| a as &dyn KeySet))
    }

    /// [`ShopIndex::search`] restricted to any [`KeySet`] (a roaring bitmap, a hash set, ...).
    pub fn search_in(
        &self,
        query: &[f32],
        k: usize,
        allowed: Option<&dyn KeySet>,
    ) -> Result<Vec<Hit>, IndexError> {
        let q = self.validate_query(query)?;
        if k == 0 {
            return Ok(Vec::new());
        }
        let cfg = &self.inner.cfg;
        let st = self.inner.state.read();
        let live = st.entries.len();
        if live == 0 {
            return Ok(Vec::new());
        }
        if live <= cfg.exact_search_max_live {
            return Ok(st.search_exact(&q, k, allowed));
        }
        if let Some(a) = allowed {
            if is_selective(cfg, a.key_count(), live) {
                return Ok(st.search_exact(&q, k, Some(a)));
            }
        }
        Ok(st.search_graph(cfg, &q, k, allowed))
    }

    /// Brute-force top `k`; same contract as [`ShopIndex::search`], exact by construction.
    pub fn search_exact(
        &self,
        query: &[f32],
        k: usize,
        allowed: Option<&HashSet<Key>>,
    ) -> Result<Vec<Hit>, IndexError> {
        self.search_exact_in(query, k, allowed.map(|a| a as &dyn KeySet))
    }

    /// [`ShopIndex::search_exact`] restricted to any [`KeySet`].
    pub fn search_exact_in(
        &self,
        query: &[f32],
        k: usize,
        allowed: Option<&dyn KeySet>,
    ) -> Result<Vec<Hit>, IndexError> {
        let q = self.validate_query(query)?;
        if k == 0 {
            return Ok(Vec::new());
        }
        Ok(self.inner.state.read().search_exact(&q, k, allowed))
    }

    /// The stored (normalised) vectors of `keys`, `None` for keys that are not live.
    pub fn vectors(&self, keys: &[Key]) -> Vec<Option<Vec<f32>>> {
        let st = self.inner.state.read();
        keys.iter()
            .map(|k| st.entries.get(k).map(|e| st.vec(e.slot).to_vec()))
            .collect()
    }

    /// All live keys, ascending.
    pub fn keys(&self) -> Vec<Key> {
        let mut keys: Vec<Key> = self.inner.state.read().entries.keys().copied().collect();
        keys.sort_unstable();
        keys
    }

    /// Counts for monitoring. `graph` counts live graph points only; `live = graph + fresh`.
    pub fn stats(&self) -> IndexStats {
        let st = self.inner.state.read();
        IndexStats {
            live: st.entries.len(),
            graph: st.graph_live_count,
            fresh: st.fresh.len(),
            tombstones: st.tombstones(),
            rebuilds: self.inner.rebuilds.load(Ordering::Relaxed),
        }
    }

    /// True when the fresh segment exceeds `fresh_capacity` or tombstones exceed
    /// `rebuild_tombstone_fraction` of the graph.
    pub fn needs_maintenance(&self) -> bool {
        self.inner.state.read().needs_maintenance(&self.inner.cfg)
    }

    /// If [`ShopIndex::needs_maintenance`]: when tombstones exceed
    /// `rebuild_tombstone_fraction` (or there is no graph yet), rebuilds the graph from the
    /// live vectors off the lock and swaps it in; otherwise merges the fresh segment into the
    /// live graph, also off the lock, while searches go on. Blocking; `Ok(true)` if it did
    /// either, `Err(Cancelled)` if `stop` was set before or during the work (the index stays
    /// fully usable: a cancelled merge keeps what it inserted, the rest stays fresh).
    pub fn maintain(&self, stop: &AtomicBool) -> Result<bool, IndexError> {
        let _guard = self.inner.maintenance.lock();
        let (rebuild, merge) = {
            let st = self.inner.state.read();
            (
                st.needs_rebuild(&self.inner.cfg),
                st.needs_merge(&self.inner.cfg),
            )
        };
        if rebuild {
            self.rebuild_locked(stop)?;
        } else if merge {
            self.merge_locked(stop)?;
        } else {
            return Ok(false);
        }
        Ok(true)
    }

    /// Merges the whole fresh segment into the graph now (whatever its size); a rebuild if
    /// there is no graph yet. Blocking. `Ok(false)` if there was nothing to merge.
    pub fn merge_fresh(&self, stop: &AtomicBool) -> Result<bool, IndexError> {
        let _guard = self.inner.maintenance.lock();
        let (empty, no_graph) = {
            let st = self.inner.state.read();
            (st.fresh.is_empty(), st.graph.is_none())
        };
        if empty {
            return Ok(false);
        }
        if no_graph {
            self.rebuild_locked(stop)?;
        } else {
            self.merge_locked(stop)?;
        }
        Ok(true)
    }

    /// Incremental merges since this index was created (see [`ShopIndex::maintain`]).
    pub fn merges(&self) -> u64 {
        self.inner.merges.load(Ordering::Relaxed)
    }

    /// Inserts the fresh segment into the current graph; the caller holds `maintenance` (so
    /// nothing else inserts into the graph) and has checked that there is a graph.
    fn merge_locked(&self, stop: &AtomicBool) -> Result<(), IndexError> {
        if stop.load(Ordering::Relaxed) {
            return Err(IndexError::Cancelled);
        }
        let started = Instant::now();
        let (graph, first_id, (keys, versions, data)) = {
            let st = self.inner.state.read();
            let Some(graph) = st.graph.clone() else {
                return Ok(());
            };
            (graph, st.graph_keys.len(), st.fresh_snapshot())
        };
        debug_assert_eq!(graph.len(), first_id, "graph ids not dense: this is a bug");
        let result = graph.insert(self.inner.cfg.dim, &data, first_id, stop);
        drop(data);
        // Whatever got in (all of it, or a prefix on cancel) is mapped, so ids stay dense.
        let inserted = graph.len().saturating_sub(first_id).min(keys.len());
        let flat = graph.flatten();
        self.inner
            .state
            .write()
            .commit_merge(flat, &keys[..inserted], &versions[..inserted]);
        result?;
        self.inner.merges.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            points = inserted,
            graph = first_id + inserted,
            merge_ms = started.elapsed().as_millis() as u64,
            "snapshop-index: fresh segment merged into the graph"
        );
        Ok(())
    }

    /// Unconditional rebuild (used by `build` and snapshot loading).
    pub(crate) fn rebuild(&self, stop: &AtomicBool) -> Result<(), IndexError> {
        let _guard = self.inner.maintenance.lock();
        self.rebuild_locked(stop)
    }

    /// The rebuild itself; the caller holds `maintenance`.
    fn rebuild_locked(&self, stop: &AtomicBool) -> Result<(), IndexError> {
        if stop.load(Ordering::Relaxed) {
            return Err(IndexError::Cancelled);
        }
        let started = Instant::now();
        let (keys, versions, data) = self.inner.state.read().snapshot();
        let n = keys.len();
        let graph = Arc::new(Graph::build(&self.inner.cfg, &data, stop)?);
        drop(data);
        let flat = graph.flatten();
        let built = started.elapsed();
        let old = self
            .inner
            .state
            .write()
            .swap_graph(graph, flat, keys, &versions);
        // Dropped here, off the lock: hnsw_rs's Drop walks every point.
        drop(old);
        self.inner.rebuilds.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            points = n,
            build_ms = built.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "snapshop-index: graph rebuilt"
        );
        Ok(())
    }

    /// What a snapshot save needs, copied under one read lock: live keys ascending with their
    /// vectors, and the graph with its id → key map and liveness. The caller must hold the
    /// guard from [`ShopIndex::maintenance_guard`] while it dumps the graph, so that no merge
    /// inserts into it meanwhile.
    pub(crate) fn export_for_save(&self) -> SaveView {
        let st = self.inner.state.read();
        let mut order: Vec<(Key, usize)> = st.entries.iter().map(|(k, e)| (*k, e.slot)).collect();
        order.sort_unstable_by_key(|(k, _)| *k);
        let mut data = Vec::with_capacity(order.len() * st.dim);
        for (_, slot) in &order {
            data.extend_from_slice(st.vec(*slot));
        }
        SaveView {
            keys: order.into_iter().map(|(k, _)| k).collect(),
            data,
            graph: st.graph.clone(),
            graph_keys: st.graph_keys.clone(),
            graph_live: st.graph_live.clone(),
        }
    }

    /// Serialises against merges and rebuilds (see [`ShopIndex::export_for_save`]).
    pub(crate) fn maintenance_guard(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.inner.maintenance.lock()
    }

    /// Installs a reloaded graph over the vectors loaded by `load_validated` (see
    /// `State::install_graph` for what the caller must have checked).
    pub(crate) fn install_graph(&self, graph: Graph, keys: Vec<Key>, live: Vec<bool>) {
        let flat = graph.flatten();
        self.inner
            .state
            .write()
            .install_graph(graph, flat, keys, live);
    }

    /// Loads already-validated vectors into the fresh segment (for snapshot loading, which
    /// then installs a reloaded graph or calls `rebuild`).
    pub(crate) fn load_validated(&self, keys: &[Key], data: &[f32]) {
        let mut st = self.inner.state.write();
        st.arena.reserve(data.len());
        for (key, v) in keys.iter().zip(data.chunks_exact(st.dim.max(1))) {
            st.insert(*key, v);
        }
    }

    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        self.inner.state.read().check_invariants();
    }
}

#[cfg(test)]
mod tests;

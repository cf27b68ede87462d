//! `ShopIndex`: the live set of shop embeddings, searchable at once after every change.
//!
//! Exists because hnsw_rs alone cannot serve a mutable catalogue: it has no delete or update
//! and must not be inserted into while it is searched. So the index keeps every live vector
//! itself (a flat arena + key→slot map), puts new vectors in a small exact "fresh" segment,
//! hides removed/replaced graph points behind tombstones, and periodically rebuilds an
//! immutable graph off the lock. It must never mutate a graph that is visible to searches,
//! never hold the write lock during a graph build, and never return a removed key.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Mutex, RwLock};

use crate::graph::Graph;
use crate::vector::{dot, validate_unit, Invalid, TopK};
use crate::{Hit, IndexConfig, IndexError, IndexStats, Key, KeySet};

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
    entries: HashMap<Key, Entry>,
    /// Slots of vectors not in the graph, scanned exactly on every search.
    fresh: Vec<usize>,
    graph: Option<Graph>,
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
            entries: HashMap::new(),
            fresh: Vec::new(),
            graph: None,
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
        let graph_len = self.graph_live.len();
        self.fresh.len() > cfg.fresh_capacity
            || (graph_len > 0
                && self.tombstones() as f64 / graph_len as f64
                    > f64::from(cfg.rebuild_tombstone_fraction))
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
            Some(a) if a.key_count() < self.entries.len() => self.scan_keys(q, a, &mut top),
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
        if let Some(graph) = self.graph.as_ref().filter(|_| self.graph_live_count > 0) {
            // hnsw_rs's own filtered search keeps walking the graph until its candidate list
            // is exhausted (~140 ms/query at 10% selectivity on 100k), so instead we ask the
            // unfiltered search for enough extra neighbours that, after dropping tombstones
            // and disallowed keys, about k remain — assuming they are spread evenly.
            let pass_live = self.graph_live_count as f64 / graph.len() as f64;
            let pass_allowed =
                allowed.map_or(1.0, |a| (a.key_count() as f64 / live as f64).min(1.0));
            let pass = (pass_live * pass_allowed).max(1e-6);
            let want = ((k as f64 / pass) * 1.2).ceil() as usize + 8;
            let want = want.min(graph.len());
            let ef = cfg.ef_search.max(want);
            for g in graph.search(q, want, ef) {
                if !self.graph_live[g] {
                    continue;
                }
                let key = graph.keys[g];
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
    fn swap_graph(&mut self, graph: Graph, versions: &[u64]) -> Option<Graph> {
        let mut live = vec![false; graph.len()];
        let mut live_count = 0;
        for (g, (key, &version)) in graph.keys.iter().zip(versions).enumerate() {
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
        debug_assert!(self.entries.iter().all(
            |(k, e)| !matches!(e.loc, Loc::Graph(g) if graph.keys.get(g) != Some(k) || !live[g])
        ));
        self.graph_live = live;
        self.graph_live_count = live_count;
        self.graph.replace(graph)
    }

    #[cfg(test)]
    fn check_invariants(&self) {
        let mut live_graph_ids = 0;
        for (key, e) in &self.entries {
            assert_eq!(self.slot_keys[e.slot], Some(*key));
            match e.loc {
                Loc::Graph(g) => {
                    assert!(self.graph_live[g]);
                    assert_eq!(self.graph.as_ref().expect("graph").keys[g], *key);
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

struct Inner {
    cfg: IndexConfig,
    state: RwLock<State>,
    /// Serialises rebuilds: two concurrent ones would waste cores and race on the swap.
    maintenance: Mutex<()>,
    rebuilds: AtomicU64,
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
                let mut top = TopK::new(k);
                st.scan_keys(&q, a, &mut top);
                return Ok(top.into_sorted());
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

    /// If [`ShopIndex::needs_maintenance`], rebuilds the graph from the live vectors off the
    /// lock and swaps it in. Blocking; `Ok(true)` if it rebuilt, `Err(Cancelled)` if `stop` was
    /// set before or during the build (the index is left as it was, fully usable).
    pub fn maintain(&self, stop: &AtomicBool) -> Result<bool, IndexError> {
        let _guard = self.inner.maintenance.lock();
        if !self.needs_maintenance() {
            return Ok(false);
        }
        self.rebuild_locked(stop)?;
        Ok(true)
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
        let graph = Graph::build(&self.inner.cfg, keys, &data, stop)?;
        drop(data);
        let built = started.elapsed();
        let old = self.inner.state.write().swap_graph(graph, &versions);
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

    /// Live keys sorted ascending and their vectors as one flat array, copied under the read
    /// lock (for snapshots).
    pub(crate) fn export_sorted(&self) -> (Vec<Key>, Vec<f32>) {
        let st = self.inner.state.read();
        let mut order: Vec<(Key, usize)> = st.entries.iter().map(|(k, e)| (*k, e.slot)).collect();
        order.sort_unstable_by_key(|(k, _)| *k);
        let mut data = Vec::with_capacity(order.len() * st.dim);
        for (_, slot) in &order {
            data.extend_from_slice(st.vec(*slot));
        }
        (order.into_iter().map(|(k, _)| k).collect(), data)
    }

    /// Loads already-validated vectors into the fresh segment (for snapshot loading, which
    /// then calls `rebuild`).
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

//! The HNSW graph over the live vectors, and its on-disk form.
//!
//! Exists to confine hnsw_rs's limits to one place. The graph is built in parallel (checking a
//! stop flag between chunks), grown afterwards by [`Graph::insert`] (incremental merges of the
//! fresh segment: hnsw_rs's `insert` takes `&self` and locks per point, so searches keep
//! running), and dumped/reloaded with hnsw_rs's own `file_dump` / `HnswIo`. hnsw_rs has no
//! delete or update: those stay tombstones in `index.rs`, which also owns the graph id → key
//! map. This module must never be handed an unvalidated vector, and must never pass a file
//! to hnsw_rs's loader that the caller has not verified (the loader asserts on bad input).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use hnsw_rs::api::AnnT;
use hnsw_rs::hnsw::{Hnsw, Point};
use hnsw_rs::hnswio::HnswIo;

use crate::vector::{dot, UnitDot};
use crate::{IndexConfig, IndexError};

/// hnsw_rs's own cap on layers (`NB_LAYER_MAX`); `file_dump` requires exactly this.
const MAX_LAYER: usize = 16;

/// How many points each `parallel_insert_slice` call gets: large enough that rayon has work
/// for every core, small enough that a stop request is seen within a fraction of a second.
const INSERT_CHUNK: usize = 1024;

/// The basename of the dump files: `graph.hnsw.graph` and `graph.hnsw.data`.
pub(crate) const DUMP_BASENAME: &str = "graph";

/// One graph. Its hnsw data ids are dense, `0..len()`; `index.rs` maps them to keys.
pub(crate) struct Graph {
    hnsw: Hnsw<'static, f32, UnitDot>,
}

impl Graph {
    /// An empty graph sized for about `capacity` points.
    pub(crate) fn new(cfg: &IndexConfig, capacity: usize) -> Self {
        Self {
            hnsw: Hnsw::<f32, UnitDot>::new(
                cfg.max_connections,
                capacity.max(1),
                MAX_LAYER,
                cfg.ef_construction,
                UnitDot,
            ),
        }
    }

    /// Builds a graph with ids `0..n` over `data` (`n × dim`), all cores, honouring `stop`.
    ///
    /// Blocking; meant to run off every lock. `data` must hold validated unit vectors.
    pub(crate) fn build(
        cfg: &IndexConfig,
        data: &[f32],
        stop: &AtomicBool,
    ) -> Result<Self, IndexError> {
        let n = data.len() / cfg.dim.max(1);
        let g = Self::new(cfg, n);
        g.insert(cfg.dim, data, 0, stop)?;
        Ok(g)
    }

    /// Inserts `data` (`m × dim`) with ids `first_id..first_id + m`, in parallel. Safe while
    /// other threads search this graph (they may see some of the new ids before this returns).
    /// On `Err(Cancelled)` a prefix of the points may have been inserted.
    pub(crate) fn insert(
        &self,
        dim: usize,
        data: &[f32],
        first_id: usize,
        stop: &AtomicBool,
    ) -> Result<(), IndexError> {
        let items: Vec<(&[f32], usize)> = data
            .chunks_exact(dim.max(1))
            .enumerate()
            .map(|(i, v)| (v, first_id + i))
            .collect();
        for chunk in items.chunks(INSERT_CHUNK) {
            if stop.load(Ordering::Relaxed) {
                return Err(IndexError::Cancelled);
            }
            self.hnsw.parallel_insert_slice(&chunk.to_vec());
        }
        Ok(())
    }

    /// Number of points hnsw_rs holds (inserted so far, live or tombstoned).
    pub(crate) fn len(&self) -> usize {
        self.hnsw.get_nb_point()
    }

    /// hnsw_rs's M for this graph (a reloaded graph keeps the M it was built with).
    pub(crate) fn max_connections(&self) -> usize {
        usize::from(self.hnsw.get_max_nb_connection())
    }

    /// Up to `n` nearest graph ids with a search width of `ef` (raised to `n` by hnsw_rs).
    /// hnsw_rs's own search: the index searches a [`FlatGraph`] instead; kept to check one
    /// against the other.
    #[cfg(test)]
    pub(crate) fn search(&self, query: &[f32], n: usize, ef: usize) -> Vec<usize> {
        self.hnsw
            .search(query, n, ef)
            .into_iter()
            .map(|nb| nb.d_id)
            .collect()
    }

    /// A read-only copy of the adjacency for [`FlatGraph::search`]. The caller must keep
    /// inserts away while it runs (it reads every point's neighbour lists once).
    pub(crate) fn flatten(&self) -> FlatGraph {
        let n = self.len();
        let pi = self.hnsw.get_point_indexation();
        let mut points: Vec<Option<Arc<Point<'static, f32>>>> = vec![None; n];
        let mut layer0: Vec<Vec<u32>> = vec![Vec::new(); n];
        let mut upper: HashMap<u32, Vec<Vec<u32>>> = HashMap::new();
        let mut entry = None;
        let top = usize::from(self.hnsw.get_max_level_observed());
        for layer in 0..=top.min(MAX_LAYER - 1) {
            for p in pi.get_layer_iterator(layer) {
                let d = p.get_origin_id();
                if d >= n {
                    continue;
                }
                let level = usize::from(p.get_point_id().0);
                let mut nbs = p.get_neighborhood_id();
                nbs.truncate(level + 1);
                let mut lists = nbs.into_iter().map(|l| {
                    l.into_iter()
                        .map(|nb| nb.d_id)
                        .filter(|&x| x < n)
                        .map(|x| x as u32)
                        .collect::<Vec<u32>>()
                });
                layer0[d] = lists.next().unwrap_or_default();
                if level > 0 {
                    upper.insert(d as u32, lists.collect());
                }
                if entry.is_none_or(|(_, l)| level > l) {
                    entry = Some((d as u32, level));
                }
                points[d] = Some(p);
            }
        }
        let mut offsets = Vec::with_capacity(n + 1);
        offsets.push(0u32);
        let mut adj = Vec::with_capacity(layer0.iter().map(Vec::len).sum());
        for l in &layer0 {
            adj.extend_from_slice(l);
            offsets.push(adj.len() as u32);
        }
        FlatGraph {
            points,
            offsets,
            adj,
            upper,
            entry,
        }
    }

    /// Writes `graph.hnsw.graph` and `graph.hnsw.data` into `dir` (which should be empty).
    /// The caller must keep inserts away meanwhile; searches may go on.
    pub(crate) fn dump(&self, dir: &Path) -> Result<(), IndexError> {
        let name = self
            .hnsw
            .file_dump(dir, DUMP_BASENAME)
            .map_err(|e| IndexError::Io(std::io::Error::other(format!("hnsw dump: {e}"))))?;
        if name != DUMP_BASENAME {
            // hnsw_rs picks another name only if the files already exist (reloaded graphs).
            for ext in ["hnsw.graph", "hnsw.data"] {
                std::fs::rename(
                    dir.join(format!("{name}.{ext}")),
                    dir.join(format!("{DUMP_BASENAME}.{ext}")),
                )?;
            }
        }
        Ok(())
    }

    /// Reloads a graph written by [`Graph::dump`]. The caller must have verified the files'
    /// checksums: hnsw_rs asserts on malformed input, so a panic inside it is also caught and
    /// turned into an error here, as a last line of defence.
    ///
    /// hnsw_rs ties the reloaded graph's lifetime to a `&mut HnswIo`; with mmap off (the
    /// default) the graph owns all its data and the borrow is only nominal, so the `HnswIo`
    /// (a few hundred bytes of paths and options) is leaked once per load to get `'static`.
    pub(crate) fn load(dir: &Path) -> Result<Self, IndexError> {
        let dir = dir.to_path_buf();
        let loaded = std::panic::catch_unwind(move || {
            let io: &'static mut HnswIo = Box::leak(Box::new(HnswIo::new(&dir, DUMP_BASENAME)));
            io.load_hnsw::<f32, UnitDot>()
        });
        match loaded {
            Ok(Ok(hnsw)) => Ok(Self { hnsw }),
            Ok(Err(e)) => Err(IndexError::CorruptSnapshot(format!("hnsw reload: {e}"))),
            Err(_) => Err(IndexError::CorruptSnapshot(
                "hnsw reload panicked on the graph files".into(),
            )),
        }
    }
}

/// A candidate by similarity; ordered by score, then id (for determinism).
#[derive(Clone, Copy, PartialEq)]
struct Scored(f32, u32);

impl Eq for Scored {}
impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scored {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0
            .total_cmp(&other.0)
            .then_with(|| other.1.cmp(&self.1))
    }
}

/// A frozen copy of an hnsw_rs graph's adjacency, searched without hnsw_rs.
///
/// Exists because hnsw_rs's search pays per visited point for `Arc` clones, a neighbour-list
/// lock and a hash map of visited ids; this search walks the same graph (same entry point
/// level, greedy descent, then a beam of width `ef` on layer 0) over flat `u32` lists with a
/// bitset. Vectors are read through hnsw_rs's own points (an `Arc` each, no copy). It is
/// rebuilt after every merge or rebuild; a search on an older copy simply does not see the
/// points inserted since, which are still in the fresh segment.
pub(crate) struct FlatGraph {
    /// Graph id → its point (for the vector), `None` for an id hnsw_rs did not list.
    points: Vec<Option<Arc<Point<'static, f32>>>>,
    /// Layer-0 neighbours of id `i`: `adj[offsets[i]..offsets[i + 1]]`.
    offsets: Vec<u32>,
    adj: Vec<u32>,
    /// Neighbours on layers 1..=level, for the few points above layer 0.
    upper: HashMap<u32, Vec<Vec<u32>>>,
    /// A point on the highest layer, and that layer.
    entry: Option<(u32, usize)>,
}

impl FlatGraph {
    /// Number of graph ids this copy covers.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.points.len()
    }

    fn score(&self, q: &[f32], id: u32) -> Option<f32> {
        self.points[id as usize].as_ref().map(|p| dot(q, p.get_v()))
    }

    /// Up to `n` graph ids nearest to `query` (by dot product), best first, with a layer-0
    /// beam of width `max(ef, n)`.
    pub(crate) fn search(&self, query: &[f32], n: usize, ef: usize) -> Vec<usize> {
        let Some((mut cur, top)) = self.entry else {
            return Vec::new();
        };
        let Some(mut cur_s) = self.score(query, cur) else {
            return Vec::new();
        };
        // Greedy descent through the upper layers.
        for layer in (1..=top).rev() {
            loop {
                let mut moved = false;
                if let Some(lists) = self.upper.get(&cur) {
                    if let Some(list) = lists.get(layer - 1) {
                        for &nb in list {
                            if let Some(s) = self.score(query, nb) {
                                if s > cur_s {
                                    (cur, cur_s, moved) = (nb, s, true);
                                }
                            }
                        }
                    }
                }
                if !moved {
                    break;
                }
            }
        }
        // Beam search on layer 0.
        let ef = ef.max(n).max(1);
        let mut visited = vec![0u64; self.points.len().div_ceil(64)];
        let mut mark = |id: u32| {
            let (w, b) = ((id / 64) as usize, id % 64);
            let seen = visited[w] & (1 << b) != 0;
            visited[w] |= 1 << b;
            seen
        };
        mark(cur);
        let mut candidates = BinaryHeap::with_capacity(ef * 2);
        let mut results: BinaryHeap<Reverse<Scored>> = BinaryHeap::with_capacity(ef + 1);
        candidates.push(Scored(cur_s, cur));
        results.push(Reverse(Scored(cur_s, cur)));
        while let Some(Scored(s, id)) = candidates.pop() {
            let worst = results.peek().map_or(f32::NEG_INFINITY, |r| r.0 .0);
            if results.len() >= ef && s < worst {
                break;
            }
            let (a, b) = (
                self.offsets[id as usize] as usize,
                self.offsets[id as usize + 1] as usize,
            );
            for &nb in &self.adj[a..b] {
                if mark(nb) {
                    continue;
                }
                let Some(ns) = self.score(query, nb) else {
                    continue;
                };
                let worst = results.peek().map_or(f32::NEG_INFINITY, |r| r.0 .0);
                if results.len() < ef || ns > worst {
                    candidates.push(Scored(ns, nb));
                    results.push(Reverse(Scored(ns, nb)));
                    if results.len() > ef {
                        results.pop();
                    }
                }
            }
        }
        let mut out: Vec<Scored> = results.into_iter().map(|r| r.0).collect();
        out.sort_unstable_by(|x, y| y.cmp(x));
        out.truncate(n);
        out.into_iter().map(|s| s.1 as usize).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::random_unit_vectors;
    use std::collections::HashSet;

    /// The exact top `k` of `data` (row-major, `dim` wide) for `q`, by brute force.
    fn exact_top(data: &[f32], dim: usize, q: &[f32], k: usize) -> HashSet<usize> {
        let mut exact: Vec<(f32, usize)> = data
            .chunks_exact(dim)
            .enumerate()
            .map(|(i, v)| (dot(q, v), i))
            .collect();
        exact.sort_by(|a, b| b.0.total_cmp(&a.0));
        exact[..k].iter().map(|e| e.1).collect()
    }

    #[test]
    fn build_then_search_finds_itself() {
        let cfg = IndexConfig::new(16);
        let data = random_unit_vectors(300, 16, 1);
        let g = Graph::build(&cfg, &data, &AtomicBool::new(false)).expect("build");
        assert_eq!(g.len(), 300);
        for i in [0usize, 17, 299] {
            let got = g.search(&data[i * 16..(i + 1) * 16], 1, 64);
            assert_eq!(got, vec![i]);
        }
    }

    #[test]
    fn build_honours_stop_flag() {
        let cfg = IndexConfig::new(8);
        let data = random_unit_vectors(10, 8, 2);
        let r = Graph::build(&cfg, &data, &AtomicBool::new(true));
        assert!(matches!(r, Err(IndexError::Cancelled)));
    }

    #[test]
    fn flat_search_matches_exact_top_k() {
        let cfg = IndexConfig::new(16);
        let (n, dim, k) = (2000usize, 16usize, 20usize);
        let data = random_unit_vectors(n, dim, 6);
        let g = Graph::build(&cfg, &data, &AtomicBool::new(false)).expect("build");
        let flat = g.flatten();
        let queries = random_unit_vectors(30, dim, 7);
        let mut hit = 0;
        for q in queries.chunks_exact(dim) {
            let want = exact_top(&data, dim, q, k);
            let got = flat.search(q, k, 128);
            assert_eq!(got.len(), k);
            hit += got.iter().filter(|i| want.contains(i)).count();
            // Best first.
            let scores: Vec<f32> = got
                .iter()
                .map(|&i| dot(q, &data[i * dim..(i + 1) * dim]))
                .collect();
            assert!(scores.windows(2).all(|w| w[0] >= w[1]));
        }
        let recall = hit as f64 / (30 * k) as f64;
        println!("flat recall@{k}: {recall:.4}");
        assert!(recall > 0.95, "flat recall {recall}");
    }

    /// The flat search against hnsw_rs's own on the same graph: recall@k of each vs exact.
    /// Slow in debug: `cargo test --release -p snapshop-index -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn flat_and_hnsw_rs_searches_agree_on_recall() {
        for (n, dim) in [(5000usize, 256usize), (5000, 32)] {
            let cfg = IndexConfig::new(dim);
            let k = 256;
            let data = random_unit_vectors(n, dim, 8);
            let g = Graph::build(&cfg, &data, &AtomicBool::new(false)).expect("build");
            let flat = g.flatten();
            let queries = random_unit_vectors(20, dim, 9);
            let (mut hf, mut hh) = (0, 0);
            for q in queries.chunks_exact(dim) {
                let want = exact_top(&data, dim, q, k);
                hf += flat
                    .search(q, k, 316)
                    .iter()
                    .filter(|i| want.contains(i))
                    .count();
                hh += g
                    .search(q, k, 316)
                    .iter()
                    .filter(|i| want.contains(i))
                    .count();
            }
            let (rf, rh) = (hf as f64 / (20 * k) as f64, hh as f64 / (20 * k) as f64);
            println!("{n}x{dim} uniform, ef 316: flat recall {rf:.4}, hnsw_rs recall {rh:.4}");
            assert!((rf - rh).abs() < 0.05, "flat {rf} vs hnsw_rs {rh}");
        }
    }

    #[test]
    fn empty_graph_returns_nothing() {
        let cfg = IndexConfig::new(8);
        let g = Graph::build(&cfg, &[], &AtomicBool::new(false)).expect("build");
        let q = random_unit_vectors(1, 8, 3);
        assert!(g.search(&q, 5, 10).is_empty());
        assert!(g.flatten().search(&q, 5, 10).is_empty());
    }

    #[test]
    fn inserts_after_build_are_searchable() {
        let cfg = IndexConfig::new(16);
        let data = random_unit_vectors(400, 16, 4);
        let g = Graph::build(&cfg, &data[..200 * 16], &AtomicBool::new(false)).expect("build");
        g.insert(16, &data[200 * 16..], 200, &AtomicBool::new(false))
            .expect("insert");
        assert_eq!(g.len(), 400);
        let flat = g.flatten();
        assert_eq!(flat.len(), 400);
        for i in [0usize, 199, 200, 333, 399] {
            assert_eq!(g.search(&data[i * 16..(i + 1) * 16], 1, 64), vec![i]);
            assert_eq!(flat.search(&data[i * 16..(i + 1) * 16], 1, 64), vec![i]);
        }
    }

    #[test]
    fn dump_and_load_give_the_same_searches() {
        let dir = std::env::temp_dir().join(format!("snapshop-graph-dump-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let cfg = IndexConfig::new(16);
        let data = random_unit_vectors(300, 16, 5);
        let g = Graph::build(&cfg, &data, &AtomicBool::new(false)).expect("build");
        g.dump(&dir).expect("dump");
        let h = Graph::load(&dir).expect("load");
        assert_eq!((h.len(), h.max_connections()), (300, cfg.max_connections));
        for i in 0..20 {
            let q = &data[i * 16..(i + 1) * 16];
            assert_eq!(g.search(q, 10, 64), h.search(q, 10, 64));
        }
        // A truncated graph file is an error, not a panic that escapes.
        let gp = dir.join("graph.hnsw.graph");
        let bytes = std::fs::read(&gp).expect("read");
        std::fs::write(&gp, &bytes[..bytes.len() / 2]).expect("write");
        assert!(Graph::load(&dir).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

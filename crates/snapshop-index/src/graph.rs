//! An immutable HNSW graph over one snapshot of the live vectors.
//!
//! Exists to confine hnsw_rs's limits to one place: the graph is built once (in parallel,
//! checking a stop flag between chunks) and is never inserted into afterwards, because
//! hnsw_rs has no delete/update and its docs warn against inserting while searching. Deletes,
//! updates and new vectors are handled around the graph (tombstones, fresh segment) by
//! `index.rs`. This module must never be handed an unvalidated vector.

use std::sync::atomic::{AtomicBool, Ordering};

use hnsw_rs::hnsw::Hnsw;

use crate::vector::UnitDot;
use crate::{IndexConfig, IndexError, Key};

/// hnsw_rs's own cap on layers (`NB_LAYER_MAX`); `file_dump` also requires exactly this, so we
/// use it even though we do not dump the graph (see `snapshot.rs`).
const MAX_LAYER: usize = 16;

/// How many points each `parallel_insert_slice` call gets: large enough that rayon has work
/// for every core, small enough that a stop request is seen within a fraction of a second.
const INSERT_CHUNK: usize = 1024;

/// One built graph. The hnsw data id of a point is its position in `keys`.
pub(crate) struct Graph {
    hnsw: Hnsw<'static, f32, UnitDot>,
    /// Graph id → key, as of the snapshot the graph was built from.
    pub(crate) keys: Vec<Key>,
}

impl Graph {
    /// Builds a graph over `keys[i] ↔ data[i*dim..(i+1)*dim]`, all cores, honouring `stop`.
    ///
    /// Blocking; meant to run off every lock. `data` must hold validated unit vectors.
    pub(crate) fn build(
        cfg: &IndexConfig,
        keys: Vec<Key>,
        data: &[f32],
        stop: &AtomicBool,
    ) -> Result<Self, IndexError> {
        let dim = cfg.dim;
        assert_eq!(
            data.len(),
            keys.len() * dim,
            "graph snapshot keys/data length mismatch: this is a bug"
        );
        let n = keys.len();
        let hnsw = Hnsw::<f32, UnitDot>::new(
            cfg.max_connections,
            n.max(1),
            MAX_LAYER,
            cfg.ef_construction,
            UnitDot,
        );
        let items: Vec<(&[f32], usize)> = data.chunks_exact(dim.max(1)).zip(0..n).collect();
        for chunk in items.chunks(INSERT_CHUNK) {
            if stop.load(Ordering::Relaxed) {
                return Err(IndexError::Cancelled);
            }
            hnsw.parallel_insert_slice(&chunk.to_vec());
        }
        Ok(Self { hnsw, keys })
    }

    /// Number of points in the graph, live or tombstoned.
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// Up to `n` nearest graph ids with a search width of `ef` (raised to `n` by hnsw_rs).
    pub(crate) fn search(&self, query: &[f32], n: usize, ef: usize) -> Vec<usize> {
        self.hnsw
            .search(query, n, ef)
            .into_iter()
            .map(|nb| nb.d_id)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::random_unit_vectors;

    #[test]
    fn build_then_search_finds_itself() {
        let cfg = IndexConfig::new(16);
        let data = random_unit_vectors(300, 16, 1);
        let keys: Vec<Key> = (0..300).collect();
        let g = Graph::build(&cfg, keys, &data, &AtomicBool::new(false)).expect("build");
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
        let r = Graph::build(&cfg, (0..10).collect(), &data, &AtomicBool::new(true));
        assert!(matches!(r, Err(IndexError::Cancelled)));
    }

    #[test]
    fn empty_graph_returns_nothing() {
        let cfg = IndexConfig::new(8);
        let g = Graph::build(&cfg, vec![], &[], &AtomicBool::new(false)).expect("build");
        let q = random_unit_vectors(1, 8, 3);
        assert!(g.search(&q, 5, 10).is_empty());
    }
}

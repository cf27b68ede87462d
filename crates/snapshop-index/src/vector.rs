//! Vector arithmetic shared by the exact scan and the HNSW graph.
//!
//! Exists so that validation, the dot product and top-k selection are defined once: the graph
//! and the exact scan must score identically, or "search matches search_exact" cannot hold.
//! Nothing here may panic on caller data: hnsw_rs panics on NaN distances and `DistDot`
//! asserts unit norm, so every vector is checked and re-normalised here before it gets near
//! the graph.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use hnsw_rs::prelude::Distance;

use crate::{Hit, Key};

/// How far from 1 a vector's L2 norm may be before it is rejected.
pub const NORM_TOLERANCE: f64 = 1e-3;

/// Why a vector was rejected; turned into the right [`crate::IndexError`] variant by the caller,
/// which knows whether it was an insert or a query.
#[derive(Debug, PartialEq)]
pub(crate) enum Invalid {
    Dim { expected: usize, got: usize },
    Reason(String),
}

/// Checks dimension, finiteness and unit norm, then returns an exactly re-normalised copy.
///
/// The norm is accumulated in f64 so that the tolerance test is not itself a rounding artefact
/// for large dimensions.
pub(crate) fn validate_unit(v: &[f32], dim: usize) -> Result<Vec<f32>, Invalid> {
    if v.len() != dim {
        return Err(Invalid::Dim {
            expected: dim,
            got: v.len(),
        });
    }
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(Invalid::Reason(format!(
            "component {i} is not finite ({})",
            v[i]
        )));
    }
    let norm = v
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt();
    if !norm.is_finite() || (norm - 1.0).abs() > NORM_TOLERANCE {
        return Err(Invalid::Reason(format!(
            "L2 norm {norm} is not within {NORM_TOLERANCE} of 1"
        )));
    }
    Ok(v.iter().map(|&x| (f64::from(x) / norm) as f32).collect())
}

/// Dot product with eight independent accumulators so the compiler can vectorise it
/// without `-ffast-math` style reassociation.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0.0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut tail = 0.0f32;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail += x * y;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// Cosine distance for vectors already known to be unit norm: `1 - a·b`, clamped to `[0, 2]`.
///
/// Used instead of hnsw_rs's `DistDot` because that one asserts `1 - dot >= 0` in its scalar
/// path, and rounding makes `a·a` slightly above 1 for some unit vectors; a clamped distance
/// can never trip hnsw_rs's `assert!(dist >= 0)` nor its NaN panic in `PointWithOrder::cmp`.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct UnitDot;

impl Distance<f32> for UnitDot {
    #[inline]
    fn eval(&self, va: &[f32], vb: &[f32]) -> f32 {
        let d = 1.0 - dot(va, vb);
        // Inputs are validated finite, so NaN is unreachable; map it anyway rather than let
        // hnsw_rs panic inside a search.
        if d.is_nan() {
            2.0
        } else {
            d.clamp(0.0, 2.0)
        }
    }
}

/// A scored candidate ordered so that "greater" means "better": higher score, then lower key.
#[derive(Clone, Copy, Debug)]
struct Cand(Hit);

impl PartialEq for Cand {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Cand {}
impl PartialOrd for Cand {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Cand {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0
            .score
            .total_cmp(&other.0.score)
            .then_with(|| other.0.key.cmp(&self.0.key))
    }
}

/// Keeps the best `k` hits seen so far (bounded min-heap, O(log k) per push).
pub(crate) struct TopK {
    k: usize,
    heap: BinaryHeap<Reverse<Cand>>,
}

impl TopK {
    pub(crate) fn new(k: usize) -> Self {
        // Cap the up-front allocation: callers may pass a huge k "to get everything".
        Self {
            k,
            heap: BinaryHeap::with_capacity(k.min(4096) + 1),
        }
    }

    #[inline]
    pub(crate) fn push(&mut self, key: Key, score: f32) {
        if self.k == 0 {
            return;
        }
        let c = Cand(Hit { key, score });
        if self.heap.len() < self.k {
            self.heap.push(Reverse(c));
        } else if let Some(Reverse(worst)) = self.heap.peek() {
            if c > *worst {
                self.heap.pop();
                self.heap.push(Reverse(c));
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    /// Best first: score descending, ties by key ascending.
    pub(crate) fn into_sorted(self) -> Vec<Hit> {
        // Ascending `Reverse<Cand>` is descending `Cand`, i.e. best first.
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|r| r.0 .0)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_rejects_wrong_dim_nan_inf_and_non_unit() {
        assert_eq!(
            validate_unit(&[1.0, 0.0], 3),
            Err(Invalid::Dim {
                expected: 3,
                got: 2
            })
        );
        assert!(matches!(
            validate_unit(&[f32::NAN, 0.0], 2),
            Err(Invalid::Reason(_))
        ));
        assert!(matches!(
            validate_unit(&[f32::INFINITY, 0.0], 2),
            Err(Invalid::Reason(_))
        ));
        assert!(matches!(
            validate_unit(&[0.5, 0.5], 2),
            Err(Invalid::Reason(_))
        ));
        assert!(matches!(
            validate_unit(&[0.0, 0.0], 2),
            Err(Invalid::Reason(_))
        ));
    }

    #[test]
    fn validate_renormalises_within_tolerance() {
        let v = validate_unit(&[0.6004, 0.8], 2).expect("within tolerance");
        let n = (v[0] * v[0] + v[1] * v[1]).sqrt();
        assert!((n - 1.0).abs() < 1e-6, "norm {n}");
    }

    #[test]
    fn dot_matches_naive_for_odd_lengths() {
        for len in [0usize, 1, 7, 8, 9, 31, 256] {
            let a: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos()).collect();
            let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - naive).abs() < 1e-4, "len {len}");
        }
    }

    #[test]
    fn unit_dot_is_never_negative_or_nan() {
        let v = validate_unit(&[0.1f32; 100], 100).expect("unit");
        let d = UnitDot.eval(&v, &v);
        assert!((0.0..1e-5).contains(&d), "self distance {d}");
        assert_eq!(UnitDot.eval(&[f32::NAN], &[1.0]), 2.0);
    }

    #[test]
    fn topk_keeps_best_sorted_with_key_ties() {
        let mut t = TopK::new(3);
        for (k, s) in [(5, 0.1), (1, 0.9), (4, 0.5), (2, 0.5), (3, 0.7), (9, -1.0)] {
            t.push(k, s);
        }
        let got: Vec<(Key, f32)> = t.into_sorted().iter().map(|h| (h.key, h.score)).collect();
        assert_eq!(got, vec![(1, 0.9), (3, 0.7), (2, 0.5)]);
        let mut z = TopK::new(0);
        z.push(1, 1.0);
        assert_eq!(z.len(), 0);
    }
}

//! A deterministic, model-free [`Backend`] for tests and development: no ONNX Runtime needed.
//!
//! It exists so that the service's fast tests (ingest, search, writes, hot-swap) run without the
//! runtime library and in microseconds per call, while still behaving like a retrieval model:
//! the same image gives the same embedding, similar images similar ones, the shop embedding
//! depends (a little) on the tags, and the re-rank score is a real function of the query and the
//! candidate. It must never be used to claim anything about retrieval quality.

use ndarray::{s, Array2, Array3, ArrayView2, ArrayView3, ArrayView4};

use crate::backend::{ActiveDevice, Backend, ModelDims};
use crate::InferenceError;

/// How much the tag vector moves a shop embedding (small, so a product's own photo still finds
/// it whatever its tags).
const TAG_WEIGHT: f32 = 0.05;

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct FakeBackend {
    dims: ModelDims,
    /// `[3, C]` projection of a location's mean colour.
    colour: Array2<f32>,
    /// `[L, C]` per-location offsets, so that layout matters, not only colour.
    place: Array2<f32>,
    /// `[T, C]` projection of the tag vector.
    tags: Array2<f32>,
}

/// A fixed pseudo-random sequence in [-1, 1) (SplitMix64): deterministic across platforms.
fn noise(seed: u64, n: usize) -> Vec<f32> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn normalise(mut v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 && n.is_finite() {
        v.iter_mut().for_each(|x| *x /= n);
    } else if let Some(first) = v.first_mut() {
        *first = 1.0;
    }
    v
}

impl FakeBackend {
    /// A fake with the given dimensions; `seed` picks its projections (two seeds, two "models").
    pub fn new(dims: ModelDims, seed: u64) -> Self {
        let c = dims.embedding_dim.max(1);
        let l = dims.locations.max(1);
        let t = dims.tags;
        Self {
            dims,
            colour: Array2::from_shape_vec((3, c), noise(seed, 3 * c)).expect("3 x C"),
            place: Array2::from_shape_vec((l, c), noise(seed ^ 0xA5A5, l * c)).expect("L x C")
                * 0.2,
            tags: Array2::from_shape_vec((t, c), noise(seed ^ 0x5A5A, t * c)).expect("T x C"),
        }
    }

    /// `[L, C]` location features: each grid cell's mean colour, projected, plus its place.
    fn features(&self, image: ndarray::ArrayView3<f32>) -> Array2<f32> {
        let (_, h, w) = image.dim();
        let l = self.dims.locations.max(1);
        // A square-ish grid of `l` cells (the bundle's grid is square).
        let side = (l as f64).sqrt().round().max(1.0) as usize;
        let (gh, gw) = if side * side == l {
            (side, side)
        } else {
            (l, 1)
        };
        let c = self.dims.embedding_dim.max(1);
        let mut out = Array2::<f32>::zeros((l, c));
        for cell in 0..l {
            let (gy, gx) = (cell / gw, cell % gw);
            let (y0, y1) = (gy * h / gh, ((gy + 1) * h / gh).max(gy * h / gh + 1).min(h));
            let (x0, x1) = (gx * w / gw, ((gx + 1) * w / gw).max(gx * w / gw + 1).min(w));
            let mut mean = [0f32; 3];
            for (ch, m) in mean.iter_mut().enumerate() {
                let block = image.slice(s![ch.min(image.dim().0 - 1), y0..y1, x0..x1]);
                *m = block.mean().unwrap_or(0.0);
            }
            let mut row = out.row_mut(cell);
            for (ch, m) in mean.iter().enumerate() {
                row.scaled_add(*m, &self.colour.row(ch));
            }
            row += &self.place.row(cell);
        }
        out
    }

    fn pooled(features: &Array2<f32>) -> Vec<f32> {
        normalise(features.sum_axis(ndarray::Axis(0)).to_vec())
    }
}

impl Backend for FakeBackend {
    fn device(&self) -> ActiveDevice {
        ActiveDevice::Cpu
    }

    fn embed_shop(
        &mut self,
        images: ArrayView4<f32>,
        tags: ArrayView2<f32>,
    ) -> Result<Array2<f32>, InferenceError> {
        let n = images.dim().0;
        let c = self.dims.embedding_dim;
        let mut out = Array2::<f32>::zeros((n, c));
        for i in 0..n {
            let mut v = Self::pooled(&self.features(images.slice(s![i, .., .., ..])));
            if self.dims.tags > 0 && tags.dim().1 == self.dims.tags {
                let t = tags.row(i).dot(&self.tags);
                let t = normalise(t.to_vec());
                if tags.row(i).iter().any(|x| *x != 0.0) {
                    v.iter_mut().zip(&t).for_each(|(a, b)| *a += TAG_WEIGHT * b);
                }
            }
            out.row_mut(i).assign(&ndarray::Array1::from(normalise(v)));
        }
        Ok(out)
    }

    fn embed_user(
        &mut self,
        images: ArrayView4<f32>,
    ) -> Result<(Array3<f32>, Array2<f32>), InferenceError> {
        let n = images.dim().0;
        let (l, c) = (self.dims.locations, self.dims.embedding_dim);
        let mut features = Array3::<f32>::zeros((n, l, c));
        let mut embedding = Array2::<f32>::zeros((n, c));
        for i in 0..n {
            let f = self.features(images.slice(s![i, .., .., ..]));
            embedding
                .row_mut(i)
                .assign(&ndarray::Array1::from(Self::pooled(&f)));
            features.slice_mut(s![i, .., ..]).assign(&f);
        }
        Ok((features, embedding))
    }

    fn rerank(
        &mut self,
        features: ArrayView3<f32>,
        candidates: ArrayView3<f32>,
    ) -> Result<(Array2<f32>, Array3<f32>), InferenceError> {
        let (b, k, _) = candidates.dim();
        let l = features.dim().1;
        let mut scores = Array2::<f32>::zeros((b, k));
        let mut attention = Array3::<f32>::zeros((b, k, l));
        for i in 0..b {
            let f = features.slice(s![i, .., ..]);
            for j in 0..k {
                let cand = candidates.slice(s![i, j, ..]);
                // Attention: softmax over locations of each location's agreement with the
                // candidate; the score is the cosine of the attended query with it.
                let logits: Vec<f32> = f.outer_iter().map(|row| row.dot(&cand)).collect();
                let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let exp: Vec<f32> = logits.iter().map(|x| (x - max).exp()).collect();
                let sum: f32 = exp.iter().sum::<f32>().max(f32::MIN_POSITIVE);
                let mut attended = vec![0f32; cand.len()];
                for (loc, e) in exp.iter().enumerate() {
                    let a = e / sum;
                    attention[[i, j, loc]] = a;
                    attended
                        .iter_mut()
                        .zip(f.row(loc))
                        .for_each(|(x, y)| *x += a * y);
                }
                let attended = normalise(attended);
                let cos: f32 = attended.iter().zip(cand).map(|(a, b)| a * b).sum();
                scores[[i, j]] = cos;
            }
        }
        Ok((scores, attention))
    }

    fn dims(&self) -> Option<ModelDims> {
        Some(self.dims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array4;

    fn dims() -> ModelDims {
        ModelDims {
            height: 8,
            width: 8,
            tags: 3,
            locations: 4,
            embedding_dim: 16,
        }
    }

    fn image(seed: u64) -> Array4<f32> {
        Array4::from_shape_vec((1, 3, 8, 8), noise(seed, 192)).unwrap()
    }

    #[test]
    fn same_image_same_embedding_and_unit_norm() {
        let mut f = FakeBackend::new(dims(), 7);
        let tags = Array2::<f32>::zeros((1, 3));
        let a = f.embed_shop(image(1).view(), tags.view()).unwrap();
        let (_, u) = f.embed_user(image(1).view()).unwrap();
        let norm: f32 = a.row(0).iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
        let cos: f32 = a.row(0).dot(&u.row(0));
        assert!(
            cos > 0.999,
            "untagged shop and user embeddings agree: {cos}"
        );
        let other = f.embed_shop(image(2).view(), tags.view()).unwrap();
        assert!(a.row(0).dot(&other.row(0)) < cos);
        // Tags move the shop embedding a little.
        let tagged = f
            .embed_shop(image(1).view(), Array2::from_elem((1, 3), 1.0).view())
            .unwrap();
        let moved: f32 = a.row(0).dot(&tagged.row(0));
        assert!(moved < 0.99999 && moved > 0.9, "{moved}");
    }

    #[test]
    fn rerank_scores_the_matching_candidate_highest() {
        let mut f = FakeBackend::new(dims(), 7);
        let tags = Array2::<f32>::zeros((2, 3));
        let mut both = Array4::<f32>::zeros((2, 3, 8, 8));
        both.slice_mut(s![0..1, .., .., ..]).assign(&image(1));
        both.slice_mut(s![1..2, .., .., ..]).assign(&image(2));
        let shop = f.embed_shop(both.view(), tags.view()).unwrap();
        let (feat, _) = f.embed_user(image(2).view()).unwrap();
        let cands = shop.insert_axis(ndarray::Axis(0));
        let (scores, att) = f.rerank(feat.view(), cands.view()).unwrap();
        assert!(scores[[0, 1]] > scores[[0, 0]]);
        let row_sum: f32 = att.slice(s![0, 0, ..]).sum();
        assert!((row_sum - 1.0).abs() < 1e-5);
    }
}

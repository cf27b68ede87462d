//! Deterministic test data, so tests need no RNG crate and fail reproducibly.
//! Test-only; must never be compiled into the library proper.

/// splitmix64: tiny, seedable, good enough to spread vectors over the sphere.
pub(crate) struct SplitMix(u64);

impl SplitMix {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub(crate) fn next_f32(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// One unit vector of `dim` components.
pub(crate) fn unit_vector(rng: &mut SplitMix, dim: usize) -> Vec<f32> {
    loop {
        let v: Vec<f32> = (0..dim).map(|_| rng.next_f32()).collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if n > 1e-3 {
            return v.into_iter().map(|x| x / n).collect();
        }
    }
}

/// `n` unit vectors as one flat array.
pub(crate) fn random_unit_vectors(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix::new(seed);
    (0..n).flat_map(|_| unit_vector(&mut rng, dim)).collect()
}

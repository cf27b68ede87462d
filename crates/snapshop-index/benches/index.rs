//! Criterion benchmarks for snapshop-index: graph build, top-256 queries (graph, exact,
//! filtered at 1% and 30% selectivity) and recall@256 against the exact scan.
//!
//! Exists so speed figures in README.md come from one reproducible command, never from timed
//! tests. Data is synthetic but embedding-like: unit vectors drawn around 256 random cluster
//! centres (uniform random vectors on a 256-d sphere have no neighbourhood structure and are a
//! worst case no real embedding model produces). Must never depend on files or network.
//!
//! `SNAPSHOP_BENCH_N` sets the number of indexed vectors (default 10 000).

use std::collections::HashSet;
use std::hint::black_box;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use snapshop_index::{IndexConfig, Key, ShopIndex};

const DIM: usize = 256;
const K: usize = 256;
const CLUSTERS: usize = 256;
const QUERIES: usize = 200;

/// splitmix64 + Box–Muller: deterministic Gaussian noise without an RNG dependency.
struct Rng(u64);

impl Rng {
    fn u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        ((self.u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn gauss(&mut self) -> f32 {
        let (u, v) = (self.unit(), self.unit());
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }
}

fn normalise(mut v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    v
}

/// `n` vectors around shared cluster centres; noise of 0.6 per unit-variance centre axis gives
/// intra-cluster cosines around 0.7, roughly what an image embedding shows for one product type.
fn clustered(n: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut centres_rng = Rng(0xC0FFEE);
    let centres: Vec<Vec<f32>> = (0..CLUSTERS)
        .map(|_| (0..DIM).map(|_| centres_rng.gauss()).collect())
        .collect();
    let mut rng = Rng(seed);
    (0..n)
        .map(|_| {
            let c = &centres[(rng.u64() % CLUSTERS as u64) as usize];
            normalise(c.iter().map(|x| x + 0.6 * rng.gauss()).collect())
        })
        .collect()
}

fn bench_n() -> usize {
    std::env::var("SNAPSHOP_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000)
}

fn items(vectors: &[Vec<f32>]) -> Vec<(Key, Vec<f32>)> {
    vectors
        .iter()
        .enumerate()
        .map(|(i, v)| (i as Key, v.clone()))
        .collect()
}

/// A pseudo-random `fraction` of `0..n`, independent of cluster membership.
fn allowed_subset(n: usize, fraction: f64, seed: u64) -> HashSet<Key> {
    let mut rng = Rng(seed);
    (0..n as Key).filter(|_| rng.unit() < fraction).collect()
}

fn recall(index: &ShopIndex, queries: &[Vec<f32>], allowed: Option<&HashSet<Key>>) -> f64 {
    let mut total = 0.0;
    for q in queries {
        let exact: HashSet<Key> = index
            .search_exact(q, K, allowed)
            .expect("valid query")
            .iter()
            .map(|h| h.key)
            .collect();
        let got = index.search(q, K, allowed).expect("valid query");
        total += got.iter().filter(|h| exact.contains(&h.key)).count() as f64
            / exact.len().max(1) as f64;
    }
    total / queries.len() as f64
}

fn benches(c: &mut Criterion) {
    let n = bench_n();
    let data = clustered(n, 1);
    let queries = clustered(QUERIES, 2);
    let stop = AtomicBool::new(false);
    // Route by the fraction rule only, so that the 30% case measures the graph path and the
    // "graph" case measures the graph even below the default `exact_search_max_live`.
    let cfg = IndexConfig {
        exact_search_max_live: 0,
        exact_filter_max_keys: 0,
        ..IndexConfig::new(DIM)
    };

    let mut build = c.benchmark_group("build");
    build.sample_size(10);
    build.measurement_time(Duration::from_secs(20));
    build.bench_function(BenchmarkId::new("graph_256d", n), |b| {
        b.iter_with_large_drop(|| {
            ShopIndex::build(cfg.clone(), items(&data), &stop).expect("build")
        })
    });
    build.finish();

    let index = ShopIndex::build(cfg.clone(), items(&data), &stop).expect("build");
    let one_pct = allowed_subset(n, 0.01, 3);
    let thirty_pct = allowed_subset(n, 0.30, 4);
    println!(
        "snapshop-index bench: n={n} dim={DIM} k={K}; recall@{K} vs exact over {QUERIES} queries: \
         unfiltered {:.4}, 30% filter {:.4}, 1% filter {:.4}",
        recall(&index, &queries, None),
        recall(&index, &queries, Some(&thirty_pct)),
        recall(&index, &queries, Some(&one_pct)),
    );

    let mut query = c.benchmark_group("query_top256");
    let cases: [(&str, Option<&HashSet<Key>>, bool); 4] = [
        ("graph", None, false),
        ("exact_scan", None, true),
        ("filter_1pct", Some(&one_pct), false),
        ("filter_30pct", Some(&thirty_pct), false),
    ];
    for (name, allowed, exact) in cases {
        query.bench_function(BenchmarkId::new(name, n), |b| {
            let mut i = 0;
            b.iter(|| {
                let q = &queries[i % QUERIES];
                i += 1;
                let hits = if exact {
                    index.search_exact(q, K, allowed)
                } else {
                    index.search(q, K, allowed)
                };
                black_box(hits.expect("valid query"))
            })
        });
    }
    query.finish();
}

criterion_group!(index_benches, benches);
criterion_main!(index_benches);

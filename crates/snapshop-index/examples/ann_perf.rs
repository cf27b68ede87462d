//! ANN tuning and restart figures for `ShopIndex` at N vectors (docs/performance.md).
//!
//! ```text
//! cargo run --release -p snapshop-index --example ann_perf -- [--n 100000] [--dim 256]
//!     [--queries 200] [--k 256] [--m 16] [--efc 200] [--ef 128,256,384,512,768]
//!     [--merge 4096] [--graph-filter-queries 30] [--uniform] [--dir DIR] [--keep]
//!     [--json FILE]
//! ```
//!
//! In this order, one line per step, then a JSON summary:
//!
//! 1. generates N seeded unit vectors: by default clustered (around 256 random centres, noise
//!    0.6 per axis, intra-cluster cosine ~0.7, as `benches/index.rs`), with `--uniform`
//!    uniform on the sphere, the pessimistic case for HNSW; queries are held-out vectors drawn
//!    the same way;
//! 2. inserts them and builds the graph (`maintain`, parallel), timed, with RSS and heap deltas;
//! 3. saves a snapshot (vectors + graph) and reloads it, timed: the index part of a restart;
//! 4. computes the exact top-k of every query (`search_exact_in`, also the latency of the
//!    exact route), unfiltered and under filters passing 1%, 10% and 50% of the keys (random
//!    subsets) and a 10% "category" filter correlated with the clusters;
//! 5. for each `--ef`, reloads the snapshot with that `ef_search` and every filter forced
//!    through the graph (over-fetch + post-filter), and prints p50/p99 latency and recall@k;
//!    (filtered cases over the first `--graph-filter-queries` queries only: a graph search
//!    at 1% over-fetches ~k/0.01 neighbours); then once more with the default routing (`IndexConfig::new`, M and ef_construction as
//!    given);
//! 6. inserts `--merge` new vectors and merges them into the graph incrementally
//!    (`merge_fresh`), timed, while another thread keeps searching (its worst latency is
//!    printed), then checks recall again.
//!
//! `--keep` leaves the snapshot in `--dir` and, when one made with the same n, dim, M,
//! ef_construction and data is already there, loads it instead of building (the build and
//! memory lines then say "reused"), so an ef or filter sweep can be rerun without a rebuild.
//!
//! Deterministic (fixed seeds). Single-threaded searches. Linux + glibc only (RSS from
//! /proc/self/statm, heap from mallinfo2).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use roaring::RoaringTreemap;
use snapshop_index::{Hit, IndexConfig, Key, KeySet, ShopIndex};

const CLUSTERS: u64 = 256;

#[repr(C)]
#[derive(Default)]
struct Mallinfo2 {
    arena: usize,
    ordblks: usize,
    smblks: usize,
    hblks: usize,
    hblkhd: usize,
    usmblks: usize,
    fsmblks: usize,
    uordblks: usize,
    fordblks: usize,
    keepcost: usize,
}

extern "C" {
    fn mallinfo2() -> Mallinfo2;
}

/// (RSS bytes, heap bytes in use).
fn mem() -> (i64, i64) {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: i64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    // SAFETY: mallinfo2 takes no arguments and returns a plain struct (glibc >= 2.33).
    let mi = unsafe { mallinfo2() };
    (pages * 4096, (mi.uordblks + mi.hblkhd) as i64)
}

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

/// `n` vectors and the cluster of each (0 for uniform data).
fn vectors(n: usize, dim: usize, uniform: bool, seed: u64) -> (Vec<Vec<f32>>, Vec<u64>) {
    let mut centres_rng = Rng(0xC0FFEE);
    let centres: Vec<Vec<f32>> = (0..CLUSTERS)
        .map(|_| (0..dim).map(|_| centres_rng.gauss()).collect())
        .collect();
    let mut rng = Rng(seed);
    (0..n)
        .map(|_| {
            if uniform {
                (normalise((0..dim).map(|_| rng.gauss()).collect()), 0)
            } else {
                let c = rng.u64() % CLUSTERS;
                let v = centres[c as usize]
                    .iter()
                    .map(|x| x + 0.6 * rng.gauss())
                    .collect();
                (normalise(v), c)
            }
        })
        .unzip()
}

struct Args {
    n: usize,
    dim: usize,
    queries: usize,
    k: usize,
    m: usize,
    efc: usize,
    efs: Vec<usize>,
    merge: usize,
    graph_filter_queries: usize,
    uniform: bool,
    keep: bool,
    dir: PathBuf,
    json: Option<PathBuf>,
}

fn args() -> Args {
    let mut a = Args {
        n: 100_000,
        dim: 256,
        queries: 200,
        k: 256,
        m: 16,
        efc: 200,
        efs: vec![128, 256, 384, 512, 768],
        merge: 4096,
        graph_filter_queries: 30,
        uniform: false,
        keep: false,
        dir: std::env::temp_dir().join(format!("snapshop-ann-perf-{}", std::process::id())),
        json: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--n" => a.n = val().parse().expect("--n"),
            "--dim" => a.dim = val().parse().expect("--dim"),
            "--queries" => a.queries = val().parse().expect("--queries"),
            "--k" => a.k = val().parse().expect("--k"),
            "--m" => a.m = val().parse().expect("--m"),
            "--efc" => a.efc = val().parse().expect("--efc"),
            "--ef" => a.efs = val().split(',').map(|s| s.parse().expect("--ef")).collect(),
            "--merge" => a.merge = val().parse().expect("--merge"),
            "--graph-filter-queries" => {
                a.graph_filter_queries = val().parse().expect("--graph-filter-queries")
            }
            "--uniform" => a.uniform = true,
            "--keep" => a.keep = true,
            "--dir" => a.dir = val().into(),
            "--json" => a.json = Some(val().into()),
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn recall(approx: &[Hit], exact: &[Hit]) -> f64 {
    if exact.is_empty() {
        return 1.0;
    }
    let want: std::collections::HashSet<Key> = exact.iter().map(|h| h.key).collect();
    approx.iter().filter(|h| want.contains(&h.key)).count() as f64 / exact.len() as f64
}

/// (p50 ms, p99 ms, mean recall) of `f` over the queries against `truth`.
fn measure(
    queries: &[Vec<f32>],
    truth: &[Vec<Hit>],
    mut f: impl FnMut(&[f32]) -> Vec<Hit>,
) -> (f64, f64, f64) {
    let mut times = Vec::with_capacity(queries.len());
    let mut rec = 0.0;
    for (q, t) in queries.iter().zip(truth) {
        let started = Instant::now();
        let hits = f(q);
        times.push(started.elapsed());
        rec += recall(&hits, t);
    }
    times.sort_unstable();
    (
        pct(&times, 0.5),
        pct(&times, 0.99),
        rec / queries.len().max(1) as f64,
    )
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn main() {
    let a = args();
    let no_stop = AtomicBool::new(false);
    let mut summary: Vec<(String, serde_json::Value)> = Vec::new();
    let mut put = |k: &str, v: serde_json::Value| summary.push((k.to_owned(), v));
    println!(
        "ann_perf: n={} dim={} queries={} k={} M={} ef_construction={} data={}",
        a.n,
        a.dim,
        a.queries,
        a.k,
        a.m,
        a.efc,
        if a.uniform { "uniform" } else { "clustered" }
    );
    put(
        "args",
        serde_json::json!({"n": a.n, "dim": a.dim, "queries": a.queries, "k": a.k, "m": a.m,
            "ef_construction": a.efc, "ef": a.efs, "merge": a.merge,
            "data": if a.uniform { "uniform" } else { "clustered" }}),
    );

    let (data, clusters) = vectors(a.n, a.dim, a.uniform, 1);
    let (queries, _) = vectors(a.queries, a.dim, a.uniform, 2);
    let base_cfg = IndexConfig {
        max_connections: a.m,
        ef_construction: a.efc,
        ..IndexConfig::new(a.dim)
    };

    let snap = a.dir.join(format!(
        "snap-n{}-d{}-m{}-efc{}-{}",
        a.n,
        a.dim,
        a.m,
        a.efc,
        if a.uniform { "uniform" } else { "clustered" }
    ));
    let reuse = a.keep && snap.join("graph.json").exists();
    let n = a.n as f64;

    // 2. Build.
    let (rss0, heap0) = mem();
    if reuse {
        println!("build: reused {}", snap.display());
        put("build", serde_json::json!({"reused": snap}));
    } else {
        let build_cfg = IndexConfig {
            fresh_capacity: 0,
            ..base_cfg.clone()
        };
        let idx = ShopIndex::new(build_cfg);
        for (i, v) in data.iter().enumerate() {
            idx.insert(i as Key, v).expect("insert");
        }
        let (rss1, heap1) = mem();
        let started = Instant::now();
        idx.maintain(&no_stop).expect("build");
        let build_s = started.elapsed().as_secs_f64();
        let (rss2, heap2) = mem();
        println!(
        "build: {build_s:.1} s; bytes/vector: vectors+maps {:.0} (heap {:.0}), graph {:.0} (heap {:.0}), total RSS {:.0}",
        (rss1 - rss0) as f64 / n,
        (heap1 - heap0) as f64 / n,
        (rss2 - rss1) as f64 / n,
        (heap2 - heap1) as f64 / n,
        (rss2 - rss0) as f64 / n
    );
        put(
            "build",
            serde_json::json!({"seconds": build_s,
            "rss_bytes_per_vector": (rss2 - rss0) as f64 / n,
            "heap_bytes_per_vector": (heap2 - heap0) as f64 / n,
            "heap_bytes_per_vector_vectors_and_maps": (heap1 - heap0) as f64 / n,
            "heap_bytes_per_vector_graph": (heap2 - heap1) as f64 / n}),
        );

        // 3. Persist and reload.
        let started = Instant::now();
        idx.save_snapshot(&snap, "ann-perf").expect("save");
        let save_s = started.elapsed().as_secs_f64();
        drop(idx);
        put("save_seconds", serde_json::json!(save_s));
        println!("persist: save {save_s:.2} s");
    }
    let (rss3, heap3) = mem();
    let started = Instant::now();
    let (idx, _) = ShopIndex::load_snapshot(&snap, base_cfg.clone())
        .expect("load")
        .expect("present");
    let load_s = started.elapsed().as_secs_f64();
    let (rss4, heap4) = mem();
    assert_eq!(
        idx.stats().rebuilds,
        0,
        "the graph was rebuilt, not reloaded"
    );
    println!(
        "persist: {} MB on disk, reload {load_s:.2} s (no rebuild); after reload {:.0} B/vector RSS, {:.0} heap",
        dir_bytes(&snap) / 1_000_000,
        (rss4 - rss3) as f64 / n,
        (heap4 - heap3) as f64 / n
    );
    put(
        "persist",
        serde_json::json!({"reload_seconds": load_s,
            "disk_bytes": dir_bytes(&snap),
            "rss_bytes_per_vector_after_reload": (rss4 - rss3) as f64 / n,
            "heap_bytes_per_vector_after_reload": (heap4 - heap3) as f64 / n}),
    );

    // 4. Filters and exact ground truth.
    let mut filters: Vec<(String, RoaringTreemap)> = Vec::new();
    for frac in [0.01, 0.10, 0.50] {
        let mut rng = Rng(0xF11 + (frac * 1000.0) as u64);
        let set: RoaringTreemap = (0..a.n as Key).filter(|_| rng.unit() < frac).collect();
        filters.push((format!("random {:.0}%", frac * 100.0), set));
    }
    if !a.uniform {
        let set: RoaringTreemap = (0..a.n as Key)
            .filter(|&k| clusters[k as usize] % 10 == 3)
            .collect();
        filters.push(("category ~10%".to_owned(), set));
    }
    let mut truth: HashMap<String, Vec<Vec<Hit>>> = HashMap::new();
    let started = Instant::now();
    let all: Vec<Vec<Hit>> = queries
        .iter()
        .map(|q| idx.search_exact_in(q, a.k, None).expect("exact"))
        .collect();
    let (ex50, ex99, _) = measure(&queries, &all, |q| {
        idx.search_exact_in(q, a.k, None).expect("exact")
    });
    println!(
        "exact: unfiltered p50 {ex50:.2} ms p99 {ex99:.2} ms (truth computed in {:.1} s)",
        started.elapsed().as_secs_f64()
    );
    let mut exact_rows =
        vec![serde_json::json!({"filter": "none", "p50_ms": ex50, "p99_ms": ex99})];
    truth.insert("none".into(), all);
    for (name, set) in &filters {
        let t: Vec<Vec<Hit>> = queries
            .iter()
            .map(|q| idx.search_exact_in(q, a.k, Some(set)).expect("exact"))
            .collect();
        let (p50, p99, _) = measure(&queries, &t, |q| {
            idx.search_exact_in(q, a.k, Some(set as &dyn KeySet))
                .expect("exact")
        });
        println!(
            "exact: {name} ({} keys) p50 {p50:.2} ms p99 {p99:.2} ms",
            set.len()
        );
        exact_rows.push(
            serde_json::json!({"filter": name, "keys": set.len(), "p50_ms": p50, "p99_ms": p99}),
        );
        truth.insert(name.clone(), t);
    }
    put("exact", serde_json::Value::Array(exact_rows));
    drop(idx);

    // 5. Graph route per ef, then the default routing.
    let mut rows = Vec::new();
    // A filter forced through the graph over-fetches ~k/fraction neighbours (30k at 1%), so
    // those cases use only the first `--graph-filter-queries` queries.
    let run = |label: String, cfg: IndexConfig, forced: bool, rows: &mut Vec<serde_json::Value>| {
        let (idx, _) = ShopIndex::load_snapshot(&snap, cfg)
            .expect("load")
            .expect("present");
        let mut line = format!("{label}:");
        let mut cases: Vec<(&str, Option<&RoaringTreemap>)> = vec![("none", None)];
        cases.extend(filters.iter().map(|(n, s)| (n.as_str(), Some(s))));
        for (name, set) in cases {
            let nq = if forced && set.is_some() {
                a.graph_filter_queries.min(queries.len())
            } else {
                queries.len()
            };
            let (p50, p99, rec) = measure(&queries[..nq], &truth[name][..nq], |q| {
                idx.search_in(q, a.k, set.map(|s| s as &dyn KeySet))
                    .expect("search")
            });
            line.push_str(&format!(
                " | {name}: p50 {p50:.2} p99 {p99:.2} ms recall {rec:.4}"
            ));
            rows.push(
                serde_json::json!({"config": label, "filter": name, "queries": nq,
                "p50_ms": p50, "p99_ms": p99, "recall": rec}),
            );
        }
        println!("{line}");
    };
    for &ef in &a.efs {
        let cfg = IndexConfig {
            ef_search: ef,
            exact_search_max_live: 0,
            exact_filter_max_keys: 0,
            exact_filter_fraction: 0.0,
            ..base_cfg.clone()
        };
        run(format!("graph ef={ef}"), cfg, true, &mut rows);
    }
    run("default routing".into(), base_cfg.clone(), false, &mut rows);
    put("search", serde_json::Value::Array(rows));

    // 6. Incremental merge while searching.
    let (idx, _) = ShopIndex::load_snapshot(&snap, base_cfg.clone())
        .expect("load")
        .expect("present");
    let (extra, _) = vectors(a.merge, a.dim, a.uniform, 3);
    for (i, v) in extra.iter().enumerate() {
        idx.insert((a.n + i) as Key, v).expect("insert");
    }
    let done = AtomicBool::new(false);
    let (merge_s, worst_ms, searched) = std::thread::scope(|s| {
        let searcher = s.spawn(|| {
            let (mut worst, mut count) = (Duration::ZERO, 0usize);
            while !done.load(Ordering::Relaxed) {
                let q = &queries[count % queries.len()];
                let started = Instant::now();
                idx.search_in(q, a.k, None).expect("search");
                worst = worst.max(started.elapsed());
                count += 1;
            }
            (worst, count)
        });
        let started = Instant::now();
        idx.merge_fresh(&no_stop).expect("merge");
        let merge_s = started.elapsed().as_secs_f64();
        done.store(true, Ordering::Relaxed);
        let (worst, count) = searcher.join().expect("searcher");
        (merge_s, worst.as_secs_f64() * 1e3, count)
    });
    let s = idx.stats();
    // Latency only: the truth above ignores the merged vectors, so recall is recomputed below.
    let (p50, p99, _) = measure(&queries, &truth["none"], |q| {
        idx.search_in(q, a.k, None).expect("search")
    });
    let rec_after: f64 = queries
        .iter()
        .map(|q| {
            recall(
                &idx.search_in(q, a.k, None).expect("search"),
                &idx.search_exact_in(q, a.k, None).expect("exact"),
            )
        })
        .sum::<f64>()
        / queries.len().max(1) as f64;
    println!(
        "merge: {} vectors into the live graph in {merge_s:.2} s (rebuilds {}, merges {}); {searched} searches ran meanwhile, worst {worst_ms:.1} ms; after: p50 {p50:.2} p99 {p99:.2} ms recall {rec_after:.4}",
        a.merge, s.rebuilds, idx.merges()
    );
    put(
        "merge",
        serde_json::json!({"vectors": a.merge, "seconds": merge_s, "rebuilds": s.rebuilds,
            "searches_during": searched, "worst_search_ms_during": worst_ms,
            "p50_ms_after": p50, "p99_ms_after": p99, "recall_after": rec_after}),
    );
    drop(idx);
    if !a.keep {
        let _ = std::fs::remove_dir_all(&a.dir);
    }

    let obj: serde_json::Map<String, serde_json::Value> = summary.into_iter().collect();
    let json = serde_json::to_string_pretty(&obj).expect("json");
    println!("{json}");
    if let Some(p) = a.json {
        std::fs::write(p, json).expect("write json");
    }
}

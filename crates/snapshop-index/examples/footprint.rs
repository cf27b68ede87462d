//! Memory per image, graph build and start-up time, and first-pass recall and latency of the
//! in-process index at N vectors (docs/scaling.md, "Where one node stops").
//!
//! ```text
//! cargo run --release -p snapshop-index --example footprint -- [--n 100000] [--dim 256]
//!     [--queries 200] [--k 256] [--uniform] [--distinct D] [--reload] [--dump FILE]
//! ```
//!
//! What it does, in this order, printing one line per step and a JSON summary at the end:
//!
//! 1. inserts N unit vectors into a `ShopIndex` with the service's default config (they land
//!    in the arena and the exact fresh segment): the bytes this takes are the vectors and the
//!    key maps;
//! 2. `maintain()`: builds the HNSW graph over them, timed (the same code the service runs at
//!    start-up after reading its snapshot, and in the background after a merge): the bytes
//!    this adds are the graph;
//! 3. builds the search view's postings and product info for the same images with the same
//!    container types as `src/view/mod.rs` (`Postings`, `Slot`, `ProductInfo`, mirrored here
//!    because this crate cannot depend on the service): 5 tags per image, 100 merchants,
//!    1-2 images per product;
//! 4. with `--reload`: saves a snapshot and times `load_snapshot` (read + check + graph
//!    rebuild), which is what a restart costs today;
//! 5. recall@k against the exact scan and p50/p99 latency of `search_in` over `--queries`
//!    held-out queries, unfiltered, with a filter passing ~10% (one of 10 categories) and ~1%
//!    (one of 100 merchants), routed exactly as the service routes them;
//! 6. with `--dump FILE`: writes the vectors, their merchant and category and the queries to
//!    FILE for another backend (scripts/milvus-proto.sh) to index the very same data.
//!
//! Bytes are measured two ways: the process RSS (`/proc/self/statm`) and glibc's count of heap
//! bytes in use (`mallinfo2`: `uordblks + hblkhd`), which is not blurred by freed-but-kept
//! pages. Data: by default unit vectors drawn around 256 random cluster centres (as the
//! criterion bench, "embedding-like"); `--uniform` draws them uniformly on the sphere, the
//! worst case for a graph; `--distinct D` repeats D distinct vectors (issue 9's 100k catalogue
//! was 49 copies of the 2,052-image gallery: `--distinct 2052`). Deterministic (fixed seeds).
//! Linux + glibc only.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use roaring::RoaringTreemap;
use snapshop_index::{IndexConfig, Key, KeySet, ShopIndex};

const CLUSTERS: usize = 256;
const MERCHANTS: u64 = 100;
const CATEGORIES: u64 = 10;

// ---------------------------------------------------------------------------------------------
// Measuring

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
fn mem() -> (u64, u64) {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    // SAFETY: mallinfo2 takes no arguments and returns a plain struct (glibc >= 2.33).
    let mi = unsafe { mallinfo2() };
    (pages * 4096, (mi.uordblks + mi.hblkhd) as u64)
}

/// CPU seconds this process has used (user + system, all threads), from `/proc/self/stat`.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}

struct Step {
    name: &'static str,
    rss: u64,
    heap: u64,
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

// ---------------------------------------------------------------------------------------------
// Data (the generator of benches/index.rs, so both measure the same kind of vectors)

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

struct Gen {
    dim: usize,
    uniform: bool,
    centres: Vec<Vec<f32>>,
    rng: Rng,
}

impl Gen {
    fn new(dim: usize, uniform: bool, seed: u64) -> Self {
        let mut centres_rng = Rng(0xC0FFEE);
        let centres = (0..CLUSTERS)
            .map(|_| (0..dim).map(|_| centres_rng.gauss()).collect())
            .collect();
        Self {
            dim,
            uniform,
            centres,
            rng: Rng(seed),
        }
    }

    fn next(&mut self) -> Vec<f32> {
        let mut v: Vec<f32> = if self.uniform {
            (0..self.dim).map(|_| self.rng.gauss()).collect()
        } else {
            let c = (self.rng.u64() % CLUSTERS as u64) as usize;
            let c = &self.centres[c];
            c.iter().map(|x| x + 0.6 * self.rng.gauss()).collect()
        };
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= n);
        v
    }
}

/// The payload of key `k`, independent of its vector: (merchant, category, 3 other tag values).
fn payload(k: Key) -> (u64, u64, [u64; 3]) {
    let mut r = Rng(k ^ 0x5EED_5EED);
    (
        r.u64() % MERCHANTS,
        r.u64() % CATEGORIES,
        [r.u64() % 12, r.u64() % 8, r.u64() % 3],
    )
}

fn tags_of(k: Key) -> Vec<String> {
    let (_, cat, [color, pattern, fit]) = payload(k);
    vec![
        format!("category:c{cat}"),
        format!("color:k{color}"),
        format!("pattern:p{pattern}"),
        format!("fit:f{fit}"),
        format!("length:l{}", k % 3),
    ]
}

// ---------------------------------------------------------------------------------------------
// The view's per-product structures, mirrored from src/view/mod.rs

#[allow(dead_code)]
struct ProductInfo {
    id: i64,
    merchant: String,
    external_id: String,
    title: String,
    tags: Vec<String>,
}

#[allow(dead_code)]
struct Slot {
    info: Arc<ProductInfo>,
    version: i64,
    keys: Vec<Key>,
}

#[derive(Default)]
struct Postings {
    keys: HashMap<Key, (i64, i64)>,
    by_tag: HashMap<String, RoaringTreemap>,
    by_merchant: HashMap<String, RoaringTreemap>,
}

/// Products of 1 or 2 images (35% two, as the benchmark's gallery) over keys `0..n`.
fn products(n: u64) -> Vec<Vec<Key>> {
    let mut r = Rng(7);
    let mut out = Vec::new();
    let mut k = 0;
    while k < n {
        let take = if r.unit() < 0.35 { 2 } else { 1 };
        out.push((k..(k + take).min(n)).collect());
        k += take;
    }
    out
}

// ---------------------------------------------------------------------------------------------

struct Args {
    n: usize,
    dim: usize,
    queries: usize,
    k: usize,
    uniform: bool,
    distinct: Option<usize>,
    reload: bool,
    dump: Option<std::path::PathBuf>,
}

fn args() -> Args {
    let mut a = Args {
        n: 100_000,
        dim: 256,
        queries: 200,
        k: 256,
        uniform: false,
        distinct: None,
        reload: false,
        dump: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--n" => a.n = val().parse().expect("--n"),
            "--dim" => a.dim = val().parse().expect("--dim"),
            "--queries" => a.queries = val().parse().expect("--queries"),
            "--k" => a.k = val().parse().expect("--k"),
            "--uniform" => a.uniform = true,
            "--distinct" => a.distinct = Some(val().parse().expect("--distinct")),
            "--reload" => a.reload = true,
            "--dump" => a.dump = Some(val().into()),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let a = args();
    let machine = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "footprint: n={} dim={} data={} k={} queries={} on {machine}, {cores} cores",
        a.n,
        a.dim,
        if a.uniform { "uniform" } else { "clustered" },
        a.k,
        a.queries
    );
    let stop = AtomicBool::new(false);
    // The service's defaults, but for `fresh_capacity`, which only decides when a merge is due:
    // at 0, `maintain()` builds the graph at any N (the default 4,096 would leave a smaller N
    // in the fresh segment).
    let cfg = IndexConfig {
        fresh_capacity: 0,
        ..IndexConfig::new(a.dim)
    };
    let mut steps = vec![];
    let mut mark = |name: &'static str| {
        let (rss, heap) = mem();
        println!(
            "  {name:<28} rss {:>9.1} MiB   heap in use {:>9.1} MiB",
            mib(rss),
            mib(heap)
        );
        steps.push(Step { name, rss, heap });
    };
    // A product's images share its merchant and tags: the dump carries the product's, so that
    // another backend filters exactly the key sets the postings below hold. Made before the
    // first mark: this scaffolding is not one of the measured structures.
    let groups = products(a.n as u64);
    let mut owner: Vec<Key> = vec![0; a.n];
    for keys in &groups {
        for k in keys {
            owner[*k as usize] = keys[0];
        }
    }
    mark("start");

    // 1. Vectors.
    let mut dump = a.dump.as_ref().map(|p| {
        let f = std::fs::File::create(p).expect("create dump file");
        let mut w = std::io::BufWriter::new(f);
        w.write_all(b"SNSCALE1").unwrap();
        w.write_all(&(a.n as u64).to_le_bytes()).unwrap();
        w.write_all(&(a.dim as u32).to_le_bytes()).unwrap();
        w.write_all(&(a.queries as u32).to_le_bytes()).unwrap();
        w
    });
    let index = ShopIndex::new(cfg.clone());
    let mut gen = Gen::new(a.dim, a.uniform, 1);
    let distinct: Vec<Vec<f32>> = (0..a.distinct.unwrap_or(0)).map(|_| gen.next()).collect();
    let t = Instant::now();
    for k in 0..a.n as Key {
        let v = if distinct.is_empty() {
            gen.next()
        } else {
            distinct[k as usize % distinct.len()].clone()
        };
        index.insert(k, &v).expect("valid vector");
        if let Some(w) = dump.as_mut() {
            let (m, c, _) = payload(owner[k as usize]);
            w.write_all(&k.to_le_bytes()).unwrap();
            w.write_all(&(m as u16).to_le_bytes()).unwrap();
            w.write_all(&[c as u8]).unwrap();
            for x in &v {
                w.write_all(&x.to_le_bytes()).unwrap();
            }
        }
    }
    let insert_s = t.elapsed().as_secs_f64();
    mark("vectors inserted");

    // 2. Graph.
    let (t, cpu) = (Instant::now(), cpu_seconds());
    assert!(index.maintain(&stop).expect("build"), "no graph was built");
    let build_s = t.elapsed().as_secs_f64();
    let build_cpu = cpu_seconds() - cpu;
    mark("graph built");
    println!(
        "  graph build: {build_s:.1} s wall, {build_cpu:.1} CPU-s ({:.0} vectors/s; {:.2} of {cores} cores busy)",
        a.n as f64 / build_s,
        build_cpu / build_s
    );

    // 3. Postings and product info.
    let mut postings = Postings::default();
    for (pid, keys) in groups.iter().enumerate() {
        for (i, key) in keys.iter().enumerate() {
            postings
                .keys
                .insert(*key, (pid as i64, (*key as i64) * 10 + i as i64));
        }
    }
    for keys in &groups {
        let tags = tags_of(keys[0]);
        let (m, _, _) = payload(keys[0]);
        for t in tags {
            postings
                .by_tag
                .entry(t)
                .or_default()
                .extend(keys.iter().copied());
        }
        postings
            .by_merchant
            .entry(format!("merchant-{m:03}"))
            .or_default()
            .extend(keys.iter().copied());
    }
    mark("postings built");
    let mut slots: HashMap<i64, Slot> = HashMap::new();
    for (pid, keys) in groups.iter().enumerate() {
        let (m, _, _) = payload(keys[0]);
        slots.insert(
            pid as i64,
            Slot {
                info: Arc::new(ProductInfo {
                    id: pid as i64,
                    merchant: format!("merchant-{m:03}"),
                    external_id: format!("sku-{pid:08}"),
                    title: format!("Product number {pid} in a catalogue"),
                    tags: tags_of(keys[0]),
                }),
                version: 1,
                keys: keys.clone(),
            },
        );
    }
    mark("product info built");

    // 4. Restart cost.
    let mut reload_s = None;
    let mut reload_cpu = None;
    if a.reload {
        let dir = std::env::temp_dir().join(format!("footprint-snapshot-{}", std::process::id()));
        let t = Instant::now();
        index.save_snapshot(&dir, "footprint").expect("save");
        let save_s = t.elapsed().as_secs_f64();
        let (t, cpu) = (Instant::now(), cpu_seconds());
        let (reloaded, meta) = ShopIndex::load_snapshot(&dir, cfg.clone())
            .expect("load")
            .expect("snapshot present");
        let s = t.elapsed().as_secs_f64();
        let c = cpu_seconds() - cpu;
        assert_eq!(meta.count, a.n);
        println!(
            "  snapshot save {save_s:.1} s, load_snapshot (read + check + graph) {s:.1} s wall, {c:.1} CPU-s"
        );
        reload_s = Some(s);
        reload_cpu = Some(c);
        drop(reloaded);
        let _ = std::fs::remove_dir_all(&dir);
    }

    // 5. Queries.
    let mut qgen = Gen::new(a.dim, a.uniform, 2);
    let queries: Vec<Vec<f32>> = (0..a.queries).map(|_| qgen.next()).collect();
    if let Some(mut w) = dump.take() {
        for q in &queries {
            for x in q {
                w.write_all(&x.to_le_bytes()).unwrap();
            }
        }
        w.flush().unwrap();
        println!("  dumped to {}", a.dump.as_ref().unwrap().display());
    }
    let ten = postings
        .by_tag
        .get("category:c3")
        .cloned()
        .unwrap_or_default();
    let one = postings
        .by_merchant
        .get("merchant-007")
        .cloned()
        .unwrap_or_default();
    let mut results = vec![];
    for (name, allowed) in [
        ("unfiltered", None),
        ("filter ~10% (category)", Some(&ten)),
        ("filter ~1% (merchant)", Some(&one)),
    ] {
        let allowed_dyn = allowed.map(|a| a as &dyn KeySet);
        let mut lat = Vec::with_capacity(queries.len());
        let mut recall = 0.0;
        for q in &queries {
            let t = Instant::now();
            let got = index.search_in(q, a.k, allowed_dyn).expect("search");
            lat.push(t.elapsed().as_secs_f64() * 1e3);
            let exact: std::collections::HashSet<Key> = index
                .search_exact_in(q, a.k, allowed_dyn)
                .expect("exact")
                .iter()
                .map(|h| h.key)
                .collect();
            recall += got.iter().filter(|h| exact.contains(&h.key)).count() as f64
                / exact.len().max(1) as f64;
        }
        recall /= queries.len() as f64;
        let passing = allowed.map_or(a.n as u64, |a| a.len());
        let (p50, p99) = (percentile(&mut lat, 0.5), percentile(&mut lat, 0.99));
        println!(
            "  {name:<24} passing {passing:>7}  recall@{} {recall:.4}  p50 {p50:.2} ms  p99 {p99:.2} ms",
            a.k
        );
        results.push(serde_json::json!({
            "case": name, "passing": passing, "recall": recall, "p50_ms": p50, "p99_ms": p99,
        }));
    }

    let by = |name: &str| steps.iter().find(|s| s.name == name).expect("step");
    let delta = |from: &str, to: &str| {
        let (f, t) = (by(from), by(to));
        (t.rss as f64 - f.rss as f64, t.heap as f64 - f.heap as f64)
    };
    let n = a.n as f64;
    let mut per_image = serde_json::Map::new();
    for (what, from, to) in [
        ("vectors_and_key_maps", "start", "vectors inserted"),
        ("hnsw_graph", "vectors inserted", "graph built"),
        ("postings", "graph built", "postings built"),
        ("product_info", "postings built", "product info built"),
        ("total", "start", "product info built"),
    ] {
        let (rss, heap) = delta(from, to);
        println!(
            "  per image: {what:<22} rss {:>7.0} B   heap {:>7.0} B",
            rss / n,
            heap / n
        );
        per_image.insert(
            what.into(),
            serde_json::json!({"rss_bytes": rss / n, "heap_bytes": heap / n}),
        );
    }
    let summary = serde_json::json!({
        "n": a.n, "dim": a.dim, "data": if a.uniform { "uniform" } else { "clustered" },
        "distinct": a.distinct,
        "machine": format!("{machine}, {cores} cores"),
        "products": groups.len(),
        "insert_seconds": insert_s, "graph_build_seconds": build_s,
        "graph_build_cpu_seconds": build_cpu,
        "load_snapshot_seconds": reload_s, "load_snapshot_cpu_seconds": reload_cpu,
        "per_image": per_image, "search": results,
        "config": {"M": cfg.max_connections, "ef_construction": cfg.ef_construction,
                   "ef_search": cfg.ef_search, "exact_search_max_live": cfg.exact_search_max_live,
                   "exact_filter_fraction": cfg.exact_filter_fraction,
                   "exact_filter_max_keys": cfg.exact_filter_max_keys,
                   "fresh_capacity": cfg.fresh_capacity},
    });
    println!("{}", serde_json::to_string(&summary).expect("json"));
    drop(slots);
}

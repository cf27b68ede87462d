//! Recall, latency and freshness of the Milvus backend prototype ([`MilvusAnn`]) on the vectors
//! `crates/snapshop-index/examples/footprint.rs --dump` wrote. Run by `scripts/milvus-proto.sh`
//! (which starts Milvus and makes the collection); see docs/scaling.md.
//!
//! ```text
//! cargo run --release --features milvus --example milvus_ann -- load   --data FILE [--url U] [--collection C]
//! cargo run --release --features milvus --example milvus_ann -- search --data FILE [--label L] [--k 256]
//! cargo run --release --features milvus --example milvus_ann -- fresh  --data FILE [--writes 50]
//! ```
//!
//! - `load`: every vector through `MilvusAnn::insert_batch` (1,000 rows a request), with its
//!   merchant (`merchant-NNN`, 100 of them) and category tag (`category:cN`, 10 of them);
//! - `search`: for each held-out query, `AnnIndex::search` for the top k unfiltered, within
//!   `category:c3` (~10% pass) and within `merchant-007` (~1% pass), the filters going through
//!   the same `AnnFilter` the view hands a backend; recall@k against an exact scan of the same
//!   vectors (snapshop-index's `search_exact_in`, so both backends are scored against one truth),
//!   and p50/p99 of the search's wall time and of `vectors()` for the hits (what the re-rank
//!   fetches);
//! - `fresh`: `--writes` single inserts of new keys through `AnnIndex::insert`, each followed by
//!   polling until a search finds it, then `AnnIndex::remove` and polling until it is gone:
//!   p50 and max of both times.
//!
//! Prints one JSON line at the end.

use std::collections::HashSet;
use std::io::Read;
use std::time::{Duration, Instant};

use roaring::RoaringTreemap;
use snapshop::view::ann::{AnnFilter, AnnIndex, Payload};
use snapshop::view::milvus::{filter_expr, MilvusAnn, MilvusConfig};
use snapshop_index::{IndexConfig, Key, KeySet, ShopIndex};

struct Data {
    dim: usize,
    keys: Vec<Key>,
    merchants: Vec<u16>,
    categories: Vec<u8>,
    vectors: Vec<f32>,
    queries: Vec<Vec<f32>>,
}

fn read_data(path: &str) -> Data {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .read_to_end(&mut bytes)
        .expect("read");
    assert_eq!(&bytes[..8], b"SNSCALE1", "{path} is not a footprint dump");
    let n = u64::from_le_bytes(bytes[8..16].try_into().unwrap()) as usize;
    let dim = u32::from_le_bytes(bytes[16..20].try_into().unwrap()) as usize;
    let nq = u32::from_le_bytes(bytes[20..24].try_into().unwrap()) as usize;
    let mut at = 24;
    let f32_at = |b: &[u8], i: usize| f32::from_le_bytes(b[i..i + 4].try_into().unwrap());
    let mut d = Data {
        dim,
        keys: Vec::with_capacity(n),
        merchants: Vec::with_capacity(n),
        categories: Vec::with_capacity(n),
        vectors: Vec::with_capacity(n * dim),
        queries: Vec::with_capacity(nq),
    };
    for _ in 0..n {
        d.keys
            .push(u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()));
        d.merchants.push(u16::from_le_bytes(
            bytes[at + 8..at + 10].try_into().unwrap(),
        ));
        d.categories.push(bytes[at + 10]);
        at += 11;
        for j in 0..dim {
            d.vectors.push(f32_at(&bytes, at + 4 * j));
        }
        at += 4 * dim;
    }
    for _ in 0..nq {
        d.queries
            .push((0..dim).map(|j| f32_at(&bytes, at + 4 * j)).collect());
        at += 4 * dim;
    }
    assert_eq!(at, bytes.len(), "trailing bytes in {path}");
    d
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().expect("mode: load | search | fresh");
    let (mut data, mut url, mut collection) = (
        String::new(),
        "http://127.0.0.1:19530".to_owned(),
        "snapshop_proto".to_owned(),
    );
    let (mut k, mut writes, mut label) = (256usize, 50usize, String::new());
    while let Some(flag) = args.next() {
        let mut val = || {
            args.next()
                .unwrap_or_else(|| panic!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--data" => data = val(),
            "--url" => url = val(),
            "--collection" => collection = val(),
            "--k" => k = val().parse().expect("--k"),
            "--writes" => writes = val().parse().expect("--writes"),
            "--label" => label = val(),
            other => panic!("unknown argument {other}"),
        }
    }
    let d = read_data(&data);
    let ann = MilvusAnn::connect(MilvusConfig {
        url,
        collection,
        dim: d.dim,
        timeout: Duration::from_secs(60),
        token: None,
    })
    .expect("connect to Milvus");
    let merchant = |i: usize| format!("merchant-{:03}", d.merchants[i]);
    let category = |i: usize| format!("category:c{}", d.categories[i]);
    let vector = |i: usize| &d.vectors[i * d.dim..(i + 1) * d.dim];

    match mode.as_str() {
        "load" => {
            let t = Instant::now();
            let idx: Vec<usize> = (0..d.keys.len()).collect();
            for chunk in idx.chunks(1000) {
                let names: Vec<(String, Vec<String>)> = chunk
                    .iter()
                    .map(|&i| (merchant(i), vec![category(i)]))
                    .collect();
                let items: Vec<(Key, &[f32], Payload<'_>)> = chunk
                    .iter()
                    .zip(&names)
                    .map(|(&i, (m, tags))| (d.keys[i], vector(i), Payload { merchant: m, tags }))
                    .collect();
                ann.insert_batch(&items).expect("insert_batch");
            }
            let s = t.elapsed().as_secs_f64();
            println!(
                "{}",
                serde_json::json!({"mode": "load", "rows": d.keys.len(), "seconds": s,
                                   "rows_per_second": d.keys.len() as f64 / s})
            );
        }
        "search" => {
            // The exact truth, from the same vectors, by the in-process index's exact scan.
            let exact_index = ShopIndex::new(IndexConfig::new(d.dim));
            for (i, key) in d.keys.iter().enumerate() {
                exact_index.insert(*key, vector(i)).expect("valid vector");
            }
            let mut ten = RoaringTreemap::new();
            let mut one = RoaringTreemap::new();
            for (i, key) in d.keys.iter().enumerate() {
                if d.categories[i] == 3 {
                    ten.insert(*key);
                }
                if d.merchants[i] == 7 {
                    one.insert(*key);
                }
            }
            let m7 = vec!["merchant-007".to_owned()];
            let c3 = vec![vec!["category:c3".to_owned()]];
            let cases: [(&str, Option<AnnFilter<'_>>); 3] = [
                ("unfiltered", None),
                (
                    "filter ~10% (category)",
                    Some(AnnFilter {
                        merchants: None,
                        groups: &c3,
                        keys: &ten,
                    }),
                ),
                (
                    "filter ~1% (merchant)",
                    Some(AnnFilter {
                        merchants: Some(&m7),
                        groups: &[],
                        keys: &one,
                    }),
                ),
            ];
            let mut results = vec![];
            for (name, filter) in cases {
                let allowed = filter.map(|f| f.keys as &dyn KeySet);
                let (mut lat, mut vlat, mut recall, mut returned) = (vec![], vec![], 0.0, 0);
                for q in &d.queries {
                    let t = Instant::now();
                    let got = ann.search(q, k, filter).expect("search");
                    lat.push(t.elapsed().as_secs_f64() * 1e3);
                    let keys: Vec<Key> = got.iter().map(|h| h.key).collect();
                    returned += keys.len();
                    let t = Instant::now();
                    let vs = ann.vectors(&keys);
                    vlat.push(t.elapsed().as_secs_f64() * 1e3);
                    assert!(vs.iter().all(Option::is_some), "a hit without its vector");
                    let truth: HashSet<Key> = exact_index
                        .search_exact_in(q, k, allowed)
                        .expect("exact")
                        .iter()
                        .map(|h| h.key)
                        .collect();
                    recall += keys.iter().filter(|k| truth.contains(k)).count() as f64
                        / truth.len().max(1) as f64;
                }
                recall /= d.queries.len() as f64;
                let mean_hits = returned as f64 / d.queries.len() as f64;
                let passing = filter.map_or(d.keys.len() as u64, |f| f.keys.len());
                let (p50, p99) = (percentile(&mut lat, 0.5), percentile(&mut lat, 0.99));
                let (v50, v99) = (percentile(&mut vlat, 0.5), percentile(&mut vlat, 0.99));
                let expr = filter.and_then(|f| filter_expr(f.merchants, f.groups));
                eprintln!(
                    "  {label} {name:<24} passing {passing:>7}  recall@{k} {recall:.4} (mean hits {mean_hits:.0})  search p50 {p50:.2} ms p99 {p99:.2} ms  vectors() p50 {v50:.2} ms p99 {v99:.2} ms  expr {expr:?}"
                );
                results.push(
                    serde_json::json!({"case": name, "passing": passing, "recall": recall, "mean_hits": mean_hits,
                    "p50_ms": p50, "p99_ms": p99, "vectors_p50_ms": v50, "vectors_p99_ms": v99,
                    "expr": expr}),
                );
            }
            println!(
                "{}",
                serde_json::json!({"mode": "search", "label": label, "k": k,
                                   "queries": d.queries.len(), "rows": ann.len(), "search": results})
            );
        }
        "fresh" => {
            let (mut visible, mut gone) = (vec![], vec![]);
            let tags = vec!["category:fresh".to_owned()];
            for w in 0..writes {
                let key: Key = 1_000_000_000 + w as Key;
                let v = d.queries[w % d.queries.len()].clone();
                let expr = format!("id in [{key}]");
                ann.insert(
                    key,
                    &v,
                    Payload {
                        merchant: "merchant-fresh",
                        tags: &tags,
                    },
                )
                .expect("insert");
                let t = Instant::now();
                while ann
                    .search_expr(&v, 1, Some(&expr))
                    .expect("search")
                    .is_empty()
                {
                    assert!(
                        t.elapsed() < Duration::from_secs(30),
                        "insert never visible"
                    );
                    std::thread::sleep(Duration::from_millis(2));
                }
                visible.push(t.elapsed().as_secs_f64() * 1e3);
                assert!(ann.remove(key), "just inserted, yet absent");
                let t = Instant::now();
                while !ann
                    .search_expr(&v, 1, Some(&expr))
                    .expect("search")
                    .is_empty()
                {
                    assert!(
                        t.elapsed() < Duration::from_secs(30),
                        "delete never visible"
                    );
                    std::thread::sleep(Duration::from_millis(2));
                }
                gone.push(t.elapsed().as_secs_f64() * 1e3);
            }
            let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
            let (vmax, gmax) = (max(&visible), max(&gone));
            println!(
                "{}",
                serde_json::json!({"mode": "fresh", "writes": writes,
                    "insert_to_visible_p50_ms": percentile(&mut visible, 0.5), "insert_to_visible_max_ms": vmax,
                    "delete_to_gone_p50_ms": percentile(&mut gone, 0.5), "delete_to_gone_max_ms": gmax})
            );
        }
        other => panic!("unknown mode {other}"),
    }
}

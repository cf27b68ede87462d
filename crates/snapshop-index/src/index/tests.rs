//! Tests for `ShopIndex` and its `State`; sizes are kept modest so the suite runs in debug.

use super::*;
use crate::testutil::{random_unit_vectors, unit_vector, SplitMix};

fn no_stop() -> AtomicBool {
    AtomicBool::new(false)
}

/// A config that builds quickly in debug and always searches through the graph (test sets
/// are far below the default `exact_search_max_live`); search knobs stay at their defaults.
fn test_cfg(dim: usize) -> IndexConfig {
    IndexConfig {
        ef_construction: 64,
        exact_search_max_live: 0,
        ..IndexConfig::new(dim)
    }
}

fn items(data: &[f32], dim: usize, key_offset: Key) -> Vec<(Key, Vec<f32>)> {
    data.chunks_exact(dim)
        .enumerate()
        .map(|(i, v)| (i as Key + key_offset, v.to_vec()))
        .collect()
}

fn keys_of(hits: &[Hit]) -> Vec<Key> {
    hits.iter().map(|h| h.key).collect()
}

fn recall(approx: &[Hit], exact: &[Hit]) -> f64 {
    let truth: HashSet<Key> = keys_of(exact).into_iter().collect();
    let found = approx.iter().filter(|h| truth.contains(&h.key)).count();
    found as f64 / exact.len().max(1) as f64
}

fn assert_sorted(hits: &[Hit]) {
    for w in hits.windows(2) {
        assert!(
            w[0].score > w[1].score || (w[0].score == w[1].score && w[0].key < w[1].key),
            "not sorted: {w:?}"
        );
    }
}

#[test]
fn every_vector_finds_itself_in_graph_and_fresh() {
    let dim = 64;
    let cfg = IndexConfig {
        // k = 1 needs no wide search; keeps ~1500 debug-mode searches fast.
        ef_search: 24,
        ef_construction: 32,
        ..test_cfg(dim)
    };
    let graph_data = random_unit_vectors(1200, dim, 7);
    let idx = ShopIndex::build(cfg, items(&graph_data, dim, 0), &no_stop()).expect("build");
    let fresh_data = random_unit_vectors(200, dim, 8);
    for (k, v) in items(&fresh_data, dim, 10_000) {
        idx.insert(k, &v).expect("insert");
    }
    let s = idx.stats();
    assert_eq!(
        (s.live, s.graph, s.fresh, s.tombstones),
        (1400, 1200, 200, 0)
    );
    let mut misses = Vec::new();
    for (k, v) in items(&graph_data, dim, 0)
        .into_iter()
        .chain(items(&fresh_data, dim, 10_000))
    {
        let hits = idx.search(&v, 1, None).expect("search");
        if hits.first().map(|h| h.key) != Some(k) {
            misses.push(k);
        }
    }
    assert!(
        misses.is_empty(),
        "vectors not finding themselves: {misses:?}"
    );
    idx.check_invariants();
}

#[test]
fn recall_at_256_against_exact() {
    let dim = 32;
    let n = 2000;
    let data = random_unit_vectors(n, dim, 11);
    let cfg = IndexConfig {
        ef_construction: 100,
        ..test_cfg(dim)
    };
    let idx = ShopIndex::build(cfg, items(&data, dim, 0), &no_stop()).expect("build");
    let mut rng = SplitMix::new(12);
    let queries = 20;
    let mut total = 0.0;
    for _ in 0..queries {
        let q = unit_vector(&mut rng, dim);
        let approx = idx.search(&q, 256, None).expect("search");
        let exact = idx.search_exact(&q, 256, None).expect("exact");
        assert_eq!(approx.len(), 256);
        assert_sorted(&approx);
        total += recall(&approx, &exact);
    }
    let r = total / queries as f64;
    println!("recall@256 over {queries} queries on {n}x{dim} uniform random: {r:.4}");
    assert!(r >= 0.95, "recall@256 = {r}");
}

#[test]
fn removes_and_replaces_are_visible_at_once_before_and_after_maintain() {
    let dim = 32;
    let cfg = IndexConfig {
        rebuild_tombstone_fraction: 0.05,
        ..test_cfg(dim)
    };
    let data = random_unit_vectors(600, dim, 21);
    let idx = ShopIndex::build(cfg, items(&data, dim, 0), &no_stop()).expect("build");
    let v = |k: usize| data[k * dim..(k + 1) * dim].to_vec();

    // Remove a graph key: gone from search at once, even when querying its own vector.
    assert!(idx.remove(5));
    assert!(!idx.remove(5));
    assert!(!idx.contains(5));
    assert!(!keys_of(&idx.search(&v(5), 50, None).expect("s")).contains(&5));
    assert!(!keys_of(&idx.search_exact(&v(5), 50, None).expect("s")).contains(&5));
    assert_eq!(idx.vectors(&[5, 6]), vec![None, Some(v(6))]);

    // Replace a graph key with another vector: found at its new place, not the old one.
    idx.insert(7, &v(500)).expect("replace");
    let at_new = idx.search(&v(500), 2, None).expect("s");
    assert_eq!(keys_of(&at_new), vec![7, 500]);
    assert!((at_new[0].score - 1.0).abs() < 1e-5);
    let at_old = idx.search(&v(7), 5, None).expect("s");
    assert!(at_old.iter().all(|h| h.key != 7 || h.score < 0.999));

    // A fresh key, then removed again before any rebuild.
    idx.insert(5000, &v(1)).expect("insert");
    assert!(idx.remove(5000));
    assert!(!keys_of(&idx.search(&v(1), 10, None).expect("s")).contains(&5000));
    idx.check_invariants();

    // Push tombstones past 5% and rebuild.
    for k in 100..160 {
        assert!(idx.remove(k));
    }
    let before = idx.stats();
    assert_eq!(before.tombstones, 62);
    assert!(idx.needs_maintenance());
    assert!(idx.maintain(&no_stop()).expect("maintain"));
    let after = idx.stats();
    assert_eq!(
        (
            after.live,
            after.graph,
            after.fresh,
            after.tombstones,
            after.rebuilds
        ),
        (539, 539, 0, 0, 2)
    );
    assert!(!idx.maintain(&no_stop()).expect("nothing to do"));
    idx.check_invariants();

    // Same answers after the rebuild.
    assert!(!idx.contains(5) && !idx.contains(120));
    assert_eq!(
        keys_of(&idx.search(&v(500), 2, None).expect("s")),
        vec![7, 500]
    );
    assert!(!keys_of(&idx.search(&v(120), 50, None).expect("s")).contains(&120));
    assert!(idx
        .keys()
        .iter()
        .all(|k| !(100..160).contains(k) && *k != 5));
}

#[test]
fn fresh_segment_triggers_merge() {
    let dim = 16;
    let cfg = IndexConfig {
        fresh_capacity: 100,
        ..test_cfg(dim)
    };
    let idx = ShopIndex::new(cfg);
    assert!(idx.is_empty());
    let data = random_unit_vectors(150, dim, 31);
    for (k, v) in items(&data, dim, 0).into_iter().take(100) {
        idx.insert(k, &v).expect("insert");
    }
    assert!(!idx.needs_maintenance());
    for (k, v) in items(&data, dim, 0).into_iter().skip(100) {
        idx.insert(k, &v).expect("insert");
    }
    assert!(idx.needs_maintenance());
    assert!(idx.maintain(&no_stop()).expect("maintain"));
    let s = idx.stats();
    assert_eq!((s.live, s.graph, s.fresh), (150, 150, 0));
    assert_eq!(idx.len(), 150);
    assert_eq!(idx.search(&data[..dim], 1, None).expect("s")[0].key, 0);
}

#[test]
fn filters_return_only_allowed_keys_and_match_exact() {
    let dim = 32;
    let n = 1500;
    let data = random_unit_vectors(n, dim, 41);
    let cfg = IndexConfig {
        exact_filter_max_keys: 100,
        ..test_cfg(dim)
    };
    let idx = ShopIndex::build(cfg.clone(), items(&data, dim, 0), &no_stop()).expect("build");
    // Some tombstones and fresh keys so that both segments are filtered too.
    for k in 0..40 {
        idx.remove(k * 7);
    }
    let extra = random_unit_vectors(50, dim, 42);
    for (k, v) in items(&extra, dim, 50_000) {
        idx.insert(k, &v).expect("insert");
    }
    let live = idx.len();

    // Selective: every 25th key (4%) plus keys that are not in the index at all.
    let selective: HashSet<Key> = (0..n as Key).step_by(25).chain(90_000..90_010).collect();
    assert!(is_selective(&cfg, selective.len(), live));
    // Loose: half of the keys, from both segments.
    let loose: HashSet<Key> = (0..n as Key)
        .chain(50_000..50_050)
        .filter(|k| k % 2 == 0)
        .collect();
    assert!(!is_selective(&cfg, loose.len(), live));

    let mut rng = SplitMix::new(43);
    let (mut loose_recall, queries) = (0.0, 20);
    for _ in 0..queries {
        let q = unit_vector(&mut rng, dim);
        let sel = idx.search(&q, 30, Some(&selective)).expect("s");
        assert_eq!(sel, idx.search_exact(&q, 30, Some(&selective)).expect("e"));
        assert!(sel
            .iter()
            .all(|h| selective.contains(&h.key) && idx.contains(h.key)));

        let got = idx.search(&q, 100, Some(&loose)).expect("s");
        let exact = idx.search_exact(&q, 100, Some(&loose)).expect("e");
        assert_eq!(got.len(), 100);
        assert_sorted(&got);
        assert!(got
            .iter()
            .all(|h| loose.contains(&h.key) && idx.contains(h.key)));
        // Shared keys have bit-identical scores (both rescored from the arena).
        let exact_scores: HashMap<Key, f32> = exact.iter().map(|h| (h.key, h.score)).collect();
        for h in &got {
            if let Some(s) = exact_scores.get(&h.key) {
                assert_eq!(*s, h.score);
            }
        }
        loose_recall += recall(&got, &exact);
    }
    let r = loose_recall / queries as f64;
    println!("loose-filter (50%) recall@100 vs exact: {r:.4}");
    assert!(r >= 0.95, "loose filter recall {r}");

    // An allowed set with fewer live keys than k returns exactly those keys.
    let tiny: HashSet<Key> = [1, 2, 3, 7, 999_999].into_iter().collect();
    let got = idx.search(&data[..dim], 10, Some(&tiny)).expect("s");
    let mut ks = keys_of(&got);
    ks.sort_unstable();
    assert_eq!(ks, vec![1, 2, 3]);
    // An empty allowed set returns nothing.
    assert!(idx
        .search(&data[..dim], 10, Some(&HashSet::new()))
        .expect("s")
        .is_empty());
}

#[test]
fn loose_filter_falls_back_to_exact_when_graph_comes_up_short() {
    // Allowed keys are the 60% of points least similar to the query's region: the widened
    // graph search, sized for an even spread, cannot find k of them, so the fallback must.
    let dim = 16;
    let n = 600;
    let data = random_unit_vectors(n, dim, 51);
    let cfg = IndexConfig {
        ef_search: 16,
        exact_filter_max_keys: 0,
        exact_filter_fraction: 0.0,
        ..test_cfg(dim)
    };
    let idx = ShopIndex::build(cfg, items(&data, dim, 0), &no_stop()).expect("build");
    let q = &data[..dim];
    let all = idx.search_exact(q, n, None).expect("e");
    let allowed: HashSet<Key> = all[n - 360..].iter().map(|h| h.key).collect();
    let got = idx.search(q, 300, Some(&allowed)).expect("s");
    assert_eq!(got, idx.search_exact(q, 300, Some(&allowed)).expect("e"));
}

#[test]
fn small_index_with_default_config_is_searched_exactly() {
    let dim = 16;
    let data = random_unit_vectors(300, dim, 55);
    let idx =
        ShopIndex::build(IndexConfig::new(dim), items(&data, dim, 0), &no_stop()).expect("build");
    let mut rng = SplitMix::new(56);
    for _ in 0..10 {
        let q = unit_vector(&mut rng, dim);
        assert_eq!(
            idx.search(&q, 50, None).expect("s"),
            idx.search_exact(&q, 50, None).expect("e")
        );
    }
}

#[test]
fn invalid_vectors_are_errors_not_panics() {
    let dim = 8;
    let idx = ShopIndex::new(test_cfg(dim));
    let good = random_unit_vectors(1, dim, 61);
    idx.insert(1, &good).expect("good insert");
    let stored = idx.vectors(&[1]);
    let mut nan = good.clone();
    nan[3] = f32::NAN;
    let mut inf = good.clone();
    inf[0] = f32::NEG_INFINITY;
    let long: Vec<f32> = good.iter().map(|x| x * 1.01).collect();
    let short = &good[..dim - 1];

    assert!(matches!(
        idx.insert(2, &nan),
        Err(IndexError::InvalidVector { key: 2, .. })
    ));
    assert!(matches!(
        idx.insert(2, &inf),
        Err(IndexError::InvalidVector { key: 2, .. })
    ));
    assert!(matches!(
        idx.insert(2, &long),
        Err(IndexError::InvalidVector { key: 2, .. })
    ));
    assert!(matches!(
        idx.insert(2, &[0.0; 8]),
        Err(IndexError::InvalidVector { key: 2, .. })
    ));
    assert!(matches!(
        idx.insert(2, short),
        Err(IndexError::DimensionMismatch {
            expected: 8,
            got: 7
        })
    ));
    // A failed replace leaves the old vector in place.
    assert!(idx.insert(1, &nan).is_err());
    assert_eq!(idx.vectors(&[1]), stored);
    assert_eq!(idx.len(), 1);

    for q in [&nan[..], &inf[..], &long[..]] {
        assert!(matches!(
            idx.search(q, 5, None),
            Err(IndexError::InvalidQuery { .. })
        ));
        assert!(matches!(
            idx.search_exact(q, 5, None),
            Err(IndexError::InvalidQuery { .. })
        ));
    }
    assert!(matches!(
        idx.search(short, 5, None),
        Err(IndexError::DimensionMismatch { .. })
    ));
    // Query validation happens even when k = 0 or the index is empty.
    assert!(idx.search(&nan, 0, None).is_err());
    assert!(ShopIndex::new(test_cfg(dim)).search(&nan, 5, None).is_err());

    let built = ShopIndex::build(test_cfg(dim), vec![(1, good.clone()), (2, nan)], &no_stop());
    assert!(matches!(
        built,
        Err(IndexError::InvalidVector { key: 2, .. })
    ));
    let bad_cfg = IndexConfig {
        max_connections: 300,
        ..test_cfg(dim)
    };
    assert!(matches!(
        ShopIndex::build(bad_cfg, vec![], &no_stop()),
        Err(IndexError::InvalidConfig(_))
    ));
}

#[test]
fn near_unit_vectors_are_renormalised() {
    let dim = 4;
    let idx = ShopIndex::new(test_cfg(dim));
    idx.insert(1, &[0.5, 0.5, 0.5, 0.5004])
        .expect("within 1e-3");
    let v = idx.vectors(&[1])[0].clone().expect("stored");
    let n: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((n - 1.0).abs() < 1e-6);
    let hit = idx.search(&[0.5, 0.5, 0.5, 0.5], 1, None).expect("s");
    assert_eq!(hit[0].key, 1);
    assert!(hit[0].score > 0.9999 && hit[0].score <= 1.0 + 1e-6);
}

#[test]
fn k_zero_and_empty_index_return_empty() {
    let dim = 8;
    let q = random_unit_vectors(1, dim, 71);
    let empty = ShopIndex::new(test_cfg(dim));
    assert!(empty.search(&q, 10, None).expect("s").is_empty());
    assert!(empty.search_exact(&q, 10, None).expect("s").is_empty());
    assert!(!empty.needs_maintenance());
    assert!(!empty.maintain(&no_stop()).expect("m"));
    let idx = ShopIndex::build(test_cfg(dim), vec![(3, q.clone())], &no_stop()).expect("build");
    assert!(idx.search(&q, 0, None).expect("s").is_empty());
    assert_eq!(keys_of(&idx.search(&q, 10, None).expect("s")), vec![3]);
    // Removing everything from a graph leaves a valid, empty, searchable index.
    assert!(idx.remove(3));
    assert!(idx.search(&q, 10, None).expect("s").is_empty());
    assert!(idx.maintain(&no_stop()).expect("m"));
    assert_eq!(idx.stats().tombstones, 0);
    assert!(idx.search(&q, 10, None).expect("s").is_empty());
}

#[test]
fn maintain_honours_a_set_stop_flag() {
    let dim = 16;
    let cfg = IndexConfig {
        fresh_capacity: 10,
        ..test_cfg(dim)
    };
    let idx = ShopIndex::new(cfg);
    let data = random_unit_vectors(50, dim, 81);
    for (k, v) in items(&data, dim, 0) {
        idx.insert(k, &v).expect("insert");
    }
    let stop = AtomicBool::new(true);
    assert!(matches!(idx.maintain(&stop), Err(IndexError::Cancelled)));
    // Nothing changed and the index still answers.
    let s = idx.stats();
    assert_eq!((s.live, s.fresh, s.graph, s.rebuilds), (50, 50, 0, 0));
    assert!(idx.needs_maintenance());
    assert_eq!(idx.search(&data[..dim], 1, None).expect("s")[0].key, 0);
    stop.store(false, Ordering::Relaxed);
    assert!(idx.maintain(&stop).expect("maintain"));
    assert_eq!(idx.stats().graph, 50);
}

#[test]
fn swap_replays_changes_made_during_a_build() {
    // Drive the rebuild steps by hand so that changes land between snapshot and swap.
    let dim = 16;
    let cfg = test_cfg(dim);
    let data = random_unit_vectors(400, dim, 91);
    let v = |k: usize| data[k * dim..(k + 1) * dim].to_vec();
    let mut st = State::new(dim);
    for k in 0..200 {
        st.insert(k as Key, &v(k));
    }
    let (keys, versions, snap) = st.snapshot();
    let g = Graph::build(&cfg, &snap, &no_stop()).expect("build");
    let flat = g.flatten();
    st.swap_graph(Arc::new(g), flat, keys, &versions);
    st.check_invariants();
    assert_eq!((st.graph_live_count, st.fresh.len()), (200, 0));

    // Next rebuild: snapshot, then remove / replace / insert before the swap.
    st.insert(200, &v(200)); // fresh key that will be in the snapshot
    let (keys, versions, snap) = st.snapshot();
    assert!(st.remove(3)); // graph key removed during the build
    assert!(st.remove(200)); // fresh key removed during the build
    st.insert(4, &v(300)); // graph key replaced during the build
    st.insert(201, &v(201)); // brand new key during the build
    let g = Graph::build(&cfg, &snap, &no_stop()).expect("build");
    let flat = g.flatten();
    let old = st.swap_graph(Arc::new(g), flat, keys, &versions);
    assert!(old.is_some());
    st.check_invariants();
    // 201 snapshot points; 3, 4 (old vector) and 200 are tombstones; 4 and 201 stay fresh.
    assert_eq!(st.graph.as_ref().map(|g| g.len()), Some(201));
    assert_eq!(st.tombstones(), 3);
    let mut fresh_keys: Vec<Key> = st
        .fresh
        .iter()
        .map(|s| st.slot_keys[*s].expect("key"))
        .collect();
    fresh_keys.sort_unstable();
    assert_eq!(fresh_keys, vec![4, 201]);
    let hits = st.search_graph(&cfg, &v(300), 3, None);
    assert_eq!(hits[0].key, 4);
    assert!(keys_of(&hits).iter().all(|k| *k != 3 && *k != 200));
    assert_ne!(st.search_graph(&cfg, &v(3), 1, None)[0].key, 3);
}

#[test]
fn concurrent_search_insert_remove_and_maintain() {
    use std::thread;
    let dim = 32;
    let cfg = IndexConfig {
        fresh_capacity: 200,
        rebuild_tombstone_fraction: 0.1,
        ..test_cfg(dim)
    };
    let data = random_unit_vectors(900, dim, 101);
    let v = |k: usize| data[k * dim..(k + 1) * dim].to_vec();
    let idx = ShopIndex::build(cfg, items(&data[..300 * dim], dim, 0), &no_stop()).expect("build");
    let stop = AtomicBool::new(false);
    thread::scope(|s| {
        let maint = s.spawn(|| {
            let mut rebuilt = 0;
            while !stop.load(Ordering::Relaxed) {
                match idx.maintain(&stop) {
                    Ok(true) => rebuilt += 1,
                    Ok(false) => thread::yield_now(),
                    Err(IndexError::Cancelled) => break,
                    Err(e) => panic!("maintain failed: {e}"),
                }
            }
            rebuilt
        });
        let writer = s.spawn(|| {
            for k in 300..900 {
                idx.insert(k as Key, &v(k)).expect("insert");
                if k % 3 == 0 {
                    // Removes a key that may live in the graph or the fresh segment.
                    idx.remove((k - 250) as Key);
                }
            }
        });
        let reader = s.spawn(|| {
            let mut rng = SplitMix::new(102);
            for _ in 0..200 {
                let q = unit_vector(&mut rng, dim);
                let hits = idx.search(&q, 20, None).expect("search");
                assert_sorted(&hits);
            }
        });
        writer.join().expect("writer");
        reader.join().expect("reader");
        // Let the maintainer catch up with the last inserts, then stop it.
        while idx.needs_maintenance() && !maint.is_finished() {
            thread::yield_now();
        }
        stop.store(true, Ordering::Relaxed);
        let rebuilt = maint.join().expect("maintainer");
        println!("rebuilds during concurrent run: {rebuilt}");
    });
    idx.check_invariants();
    let removed: Vec<Key> = (300..900)
        .filter(|k| k % 3 == 0)
        .map(|k| (k - 250) as Key)
        .collect();
    assert_eq!(idx.len(), 900 - removed.len());
    assert!(removed.iter().all(|k| !idx.contains(*k)));
    for &k in removed.iter().step_by(25) {
        let hits = idx.search(&v(k as usize), 10, None).expect("s");
        assert!(!keys_of(&hits).contains(&k));
    }
    assert!(idx.stats().rebuilds + idx.merges() >= 2);
}

#[test]
fn maintain_merges_fresh_vectors_into_the_graph_without_a_rebuild() {
    let dim = 16;
    let cfg = IndexConfig {
        fresh_capacity: 50,
        ..test_cfg(dim)
    };
    let data = random_unit_vectors(500, dim, 111);
    let v = |k: usize| data[k * dim..(k + 1) * dim].to_vec();
    let idx = ShopIndex::build(cfg, items(&data[..300 * dim], dim, 0), &no_stop()).expect("build");
    assert_eq!((idx.stats().rebuilds, idx.merges()), (1, 0));
    for k in 300..500 {
        idx.insert(k as Key, &v(k)).expect("insert");
    }
    assert!(idx.needs_maintenance());
    assert!(idx.maintain(&no_stop()).expect("maintain"));
    idx.check_invariants();
    let s = idx.stats();
    assert_eq!((s.live, s.graph, s.fresh, s.tombstones), (500, 500, 0, 0));
    assert_eq!((s.rebuilds, idx.merges()), (1, 1));
    for k in [0usize, 299, 300, 420, 499] {
        assert_eq!(idx.search(&v(k), 1, None).expect("s")[0].key, k as Key);
    }
    // merge_fresh merges below capacity too; a replaced key leaves a tombstone behind.
    idx.insert(7, &v(450)).expect("replace");
    assert!(idx.merge_fresh(&no_stop()).expect("merge"));
    assert!(!idx.merge_fresh(&no_stop()).expect("nothing to merge"));
    idx.check_invariants();
    let s = idx.stats();
    assert_eq!(
        (s.graph, s.fresh, s.tombstones, idx.merges()),
        (500, 0, 1, 2)
    );
    let hits = idx.search(&v(450), 2, None).expect("s");
    let mut got = keys_of(&hits);
    got.sort_unstable();
    assert_eq!(got, vec![7, 450]);
}

#[test]
fn merge_replays_changes_made_while_inserting() {
    let dim = 16;
    let cfg = test_cfg(dim);
    let data = random_unit_vectors(400, dim, 121);
    let v = |k: usize| data[k * dim..(k + 1) * dim].to_vec();
    let mut st = State::new(dim);
    for k in 0..200 {
        st.insert(k as Key, &v(k));
    }
    let (keys, versions, snap) = st.snapshot();
    let g = Arc::new(Graph::build(&cfg, &snap, &no_stop()).expect("build"));
    st.swap_graph(g.clone(), g.flatten(), keys, &versions);
    for k in 200..260 {
        st.insert(k as Key, &v(k));
    }
    let first = st.graph_keys.len();
    let (keys, versions, fresh) = st.fresh_snapshot();
    g.insert(dim, &fresh, first, &no_stop()).expect("insert");
    // Searches between the insert and the commit skip the unmapped ids and still see the
    // fresh keys exactly.
    assert_eq!(st.search_graph(&cfg, &v(230), 1, None)[0].key, 230);
    assert!(st.remove(210)); // merged key removed meanwhile
    st.insert(220, &v(300)); // merged key replaced meanwhile
    st.insert(260, &v(260)); // new key meanwhile
    st.commit_merge(g.flatten(), &keys, &versions);
    st.check_invariants();
    assert_eq!(st.graph_keys.len(), 260);
    assert_eq!(st.tombstones(), 2);
    let mut fresh_keys: Vec<Key> = st
        .fresh
        .iter()
        .map(|s| st.slot_keys[*s].expect("key"))
        .collect();
    fresh_keys.sort_unstable();
    assert_eq!(fresh_keys, vec![220, 260]);
    assert_eq!(st.search_graph(&cfg, &v(300), 1, None)[0].key, 220);
    assert_eq!(st.search_graph(&cfg, &v(245), 1, None)[0].key, 245);
    assert_ne!(st.search_graph(&cfg, &v(210), 1, None)[0].key, 210);
}

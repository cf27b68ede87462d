//! P@K over HTTP on the committed subset equals the Python pipeline's figures within 0.5 pt.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{json, Value};

use crate::common::*;

/// The subset's shop images grouped by product, in manifest order, with each product's tags.
fn gallery(rows: &[snapshop::eval::ManifestRow]) -> Vec<(String, Vec<String>, Vec<PathBuf>)> {
    let mut gallery: BTreeMap<String, (Vec<String>, Vec<PathBuf>)> = BTreeMap::new();
    let mut order = Vec::new();
    for r in rows.iter().filter(|r| r.domain == "shop") {
        let e = gallery.entry(r.product_id.clone()).or_insert_with(|| {
            order.push(r.product_id.clone());
            Default::default()
        });
        for t in &r.tags {
            if !e.0.contains(t) {
                e.0.push(t.clone());
            }
        }
        e.1.push(r.image.clone());
    }
    order
        .into_iter()
        .map(|pid| {
            let (tags, images) = gallery.remove(&pid).unwrap();
            (pid, tags, images)
        })
        .collect()
}

#[tokio::test]
async fn p_at_k_parity_with_the_pipeline() {
    let dir = subset_dir();
    let expected_path = dir.join("expected.json");
    assert!(
        expected_path.is_file(),
        "{} is missing: `scripts/train.sh` writes it with the default bundle",
        expected_path.display()
    );
    let expected: Value = serde_json::from_slice(&std::fs::read(&expected_path).unwrap()).unwrap();
    let rows = snapshop::eval::read_manifest(&dir.join("manifest.csv")).unwrap();
    let ks: Vec<usize> = expected["k"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_u64().unwrap() as usize)
        .collect();
    let max_k = *ks.iter().max().unwrap();
    let app = spawn_app().await;

    for (pid, tags, images) in gallery(&rows) {
        let product = json!({"id": pid, "title": pid, "tags": tags});
        let r = app.create_product("eval", &product, &images).await;
        assert_eq!(r.status, 201, "{pid}");
    }
    let queries: Vec<_> = rows.iter().filter(|r| r.domain == "user").collect();
    assert_eq!(queries.len() as u64, expected["queries"].as_u64().unwrap());
    let mut hits: BTreeMap<(&str, usize), usize> = BTreeMap::new();
    for q in &queries {
        for (mode, rerank) in [("first_pass", false), ("rerank", true)] {
            let r = app
                .search(&q.image, &format!("k={max_k}&rerank={rerank}"))
                .await;
            let body = r.assert_status(200).json;
            // As the pipeline counts: results scoring strictly higher than the query's product.
            let results = results(&body);
            let rank = results
                .iter()
                .find(|r| r["product_id"] == q.product_id.as_str())
                .map(|own| {
                    results
                        .iter()
                        .filter(|r| r["score"].as_f64() > own["score"].as_f64())
                        .count()
                });
            for &k in &ks {
                *hits.entry((mode, k)).or_default() += usize::from(rank.is_some_and(|r| r < k));
            }
        }
    }
    let mut report = String::new();
    let mut worst: f64 = 0.0;
    for mode in ["first_pass", "rerank"] {
        for &k in &ks {
            let ours = hits[&(mode, k)] as f64 / queries.len() as f64;
            let theirs = expected[mode][k.to_string()].as_f64().unwrap();
            worst = worst.max((ours - theirs).abs());
            report.push_str(&format!(
                "{mode} P@{k}: rust {ours:.4} python {theirs:.4}\n"
            ));
        }
    }
    eprintln!("{report}");
    assert!(
        worst <= 0.005 + 1e-9,
        "P@K differs from the pipeline by {worst:.4}:\n{report}"
    );
    app.stop().await;
}

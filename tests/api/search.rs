//! `POST /v1/search`: street photos find their products; first pass, explain, grouping and the
//! merchant and tag filters.

use std::collections::HashSet;

use serde_json::json;

use crate::common::*;

const TIMING_HEADERS: [&str; 5] = [
    "x-decode-time",
    "x-embed-time",
    "x-ann-time",
    "x-rerank-time",
    "x-total-time",
];

const RESULT_FIELDS: [&str; 8] = [
    "product_id",
    "merchant",
    "title",
    "tags",
    "image_id",
    "score",
    "first_pass_rank",
    "first_pass_score",
];

#[tokio::test]
async fn street_photos_find_their_products() {
    let (app, cat) = catalogue_app().await;
    let queries = cat.queries();
    let (mut top1, mut top5) = (0, 0);
    for p in &queries {
        let r = app
            .search(&p.user[0], "k=5&merchant=acme")
            .await
            .assert_status(200);
        for h in TIMING_HEADERS {
            let v: f64 = r.header(h).unwrap().parse().unwrap();
            assert!(v >= 0.0, "{h}");
        }
        let body = r.json;
        assert_eq!(body["reranked"], true);
        let found = ids(&body);
        assert!(found.len() <= 5);
        assert_eq!(
            found.len(),
            found.iter().collect::<HashSet<_>>().len(),
            "grouped by product"
        );
        top5 += usize::from(found.contains(&p.id));
        top1 += usize::from(found[0] == p.id);
        let first = &body["results"][0];
        for field in RESULT_FIELDS {
            assert!(!first[field].is_null(), "result lacks {field}: {first}");
        }
        assert!(first.get("attention").is_none());
        let scores: Vec<f64> = results(&body)
            .iter()
            .map(|r| r["score"].as_f64().unwrap())
            .collect();
        assert!(
            scores.windows(2).all(|w| w[0] >= w[1]),
            "sorted by score: {scores:?}"
        );
        for t in ["decode", "embed", "ann", "rerank", "total"] {
            assert!(body["timings_ms"][t].as_f64().unwrap() >= 0.0);
        }
    }
    eprintln!(
        "street photos: {top1} of {} first, {top5} in the top 5",
        queries.len()
    );
    if trained_bundle() {
        assert!(
            top5 * 4 >= queries.len() * 3,
            "only {top5} of {} queries found their product in the top 5",
            queries.len()
        );
        assert!(
            top1 * 2 >= queries.len(),
            "only {top1} of {} queries found their product first",
            queries.len()
        );
    }
}

/// First pass only: ordered by first-pass score, ranks 1.. in order.
#[tokio::test]
async fn first_pass_only_keeps_the_first_pass_order_and_scores() {
    let (app, cat) = catalogue_app().await;
    let r = app.search(&cat.query_photo(), "k=10&rerank=false").await;
    let body = r.assert_status(200).json;
    assert_eq!(body["reranked"], false);
    let results = results(&body);
    let ranks: Vec<u64> = results
        .iter()
        .map(|r| r["first_pass_rank"].as_u64().unwrap())
        .collect();
    assert!(ranks.windows(2).all(|w| w[0] < w[1]), "{ranks:?}");
    assert!(results.iter().all(|r| r["score"] == r["first_pass_score"]));
}

/// Explain: attention over the query grid, one weight per location, summing to 1.
#[tokio::test]
async fn explain_gives_attention_over_the_query_grid() {
    let (app, cat) = catalogue_app().await;
    let r = app.search(&cat.query_photo(), "k=3&explain=true").await;
    let body = r.assert_status(200).json;
    let att = &body["results"][0]["attention"];
    let (h, w) = (att["h"].as_u64().unwrap(), att["w"].as_u64().unwrap());
    let weights = att["weights"].as_array().unwrap();
    assert_eq!(weights.len() as u64, h * w);
    let sum: f64 = weights.iter().map(|v| v.as_f64().unwrap()).sum();
    assert!((sum - 1.0).abs() < 1e-3, "{sum}");
}

/// Image grouping returns shop images, possibly several of one product.
#[tokio::test]
async fn image_grouping_returns_each_shop_image_once() {
    let (app, cat) = catalogue_app().await;
    let r = app.search(&cat.query_photo(), "k=20&group=image").await;
    let body = r.assert_status(200).json;
    let images: HashSet<i64> = results(&body)
        .iter()
        .map(|r| r["image_id"].as_i64().unwrap())
        .collect();
    assert_eq!(images.len(), results(&body).len());
}

#[tokio::test]
async fn merchant_filter_keeps_that_merchants_products() {
    let (app, cat) = catalogue_app().await;
    let r = app
        .search(&cat.query_photo(), "k=20&merchant=other-shop")
        .await;
    let body = r.assert_status(200).json;
    assert_eq!(ids(&body), vec![cat.other.id.clone()]);
    assert!(results(&body)
        .iter()
        .all(|r| r["merchant"] == OTHER_MERCHANT));
}

/// Tag filter, compact form (`filter=a:b` in the query string): every result carries the tag.
#[tokio::test]
async fn compact_tag_filter_keeps_products_with_the_tag() {
    let (app, cat) = catalogue_app().await;
    let target = cat.queries()[0];
    let category = target
        .first_tag("category")
        .expect("fixture products have a category");
    let r = app
        .search(&cat.query_photo(), &format!("k=20&filter={category}"))
        .await;
    let body = r.assert_status(200).json;
    let results = results(&body);
    assert!(!results.is_empty());
    for r in results {
        assert!(
            r["tags"].as_array().unwrap().contains(&json!(category)),
            "{r}"
        );
    }
    assert!(ids(&body).contains(&target.id));
}

/// JSON form in a multipart `options` part: an AND of ORs.
#[tokio::test]
async fn json_tag_filter_in_options_is_an_and_of_ors() {
    let (app, cat) = catalogue_app().await;
    let target = cat.queries()[0];
    let category = target
        .first_tag("category")
        .expect("fixture products have a category");
    let colour = target
        .first_tag("color")
        .unwrap_or_else(|| category.clone());
    let options =
        json!({"k": 20, "filter": {"all": [[category], [colour, "color:does-not-exist"]]}});
    let r = app.search_multipart(&cat.query_photo(), &options).await;
    let body = r.assert_status(200).json;
    for r in results(&body) {
        let tags = r["tags"].as_array().unwrap();
        assert!(
            tags.contains(&json!(category)) && tags.contains(&json!(colour)),
            "{r}"
        );
    }
}

/// A tag nobody has: no results. A tag unknown to the model is still filterable.
#[tokio::test]
async fn absent_tags_find_nothing_and_tags_unknown_to_the_model_filter() {
    let (app, cat) = catalogue_app().await;
    let q = cat.query_photo();
    let r = app.search(&q, "filter=color:does-not-exist").await;
    assert!(results(&r.assert_status(200).json).is_empty());
    let r = app.search(&q, &format!("filter={OWN_TAG}")).await;
    assert_eq!(
        ids(&r.assert_status(200).json),
        vec![cat.products[0].id.clone()]
    );
}

/// A bundle whose re-rank does not beat its first pass says so in its manifest: searches then
/// skip the re-rank unless asked, and a re-ranked score is fused with the first pass as the
/// manifest's weights say.
#[tokio::test]
async fn the_bundle_decides_the_rerank_default_and_the_score_fusion() {
    let scratch = tempfile::tempdir().unwrap();
    let bundle = copy_bundle(scratch.path(), |m| {
        m["rerank"]["default"] = json!(false);
        m["rerank"]["fusion"] = json!({"first_pass": 1.0, "ctx": 0.001});
    });
    let app = spawn_fake_app_with(new_data_dir(), |c| c.bundle = bundle).await;
    let photos = fixture_photos(3);
    for (i, photo) in photos.iter().enumerate() {
        let body = json!({"id": format!("p{i}"), "title": "t"});
        app.create_product(MERCHANT, &body, std::slice::from_ref(photo))
            .await
            .assert_status(201);
    }
    let plain = app.search(&photos[0], "k=3").await.assert_status(200).json;
    assert_eq!(plain["reranked"], false, "{plain}");
    let first = &results(&plain)[0];
    assert_eq!(first["score"], first["first_pass_score"]);
    let fused = app
        .search(&photos[0], "k=3&rerank=true")
        .await
        .assert_status(200)
        .json;
    assert_eq!(fused["reranked"], true, "{fused}");
    for r in results(&fused) {
        let (score, first) = (
            r["score"].as_f64().unwrap(),
            r["first_pass_score"].as_f64().unwrap(),
        );
        // |ctx| <= ~1, so the fused score stays within 0.001 + rounding of the first pass.
        assert!(
            (score - first).abs() <= 0.0011,
            "{score} vs first pass {first}"
        );
    }
    app.stop().await;
}

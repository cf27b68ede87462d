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
        assert_eq!(body["reranked"], shipped_rerank_default());
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

/// Explain with the re-rank off: the attention comes back, and the results are exactly the
/// first pass's (explaining never changes what is found).
#[tokio::test]
async fn explain_without_the_rerank_keeps_the_first_pass_results() {
    let (app, cat) = catalogue_app().await;
    let photo = cat.query_photo();
    let plain = app
        .search(&photo, "k=5&rerank=false")
        .await
        .assert_status(200)
        .json;
    let explained = app
        .search(&photo, "k=5&rerank=false&explain=true")
        .await
        .assert_status(200)
        .json;
    assert_eq!(explained["reranked"], false);
    assert_eq!(scored(&plain), scored(&explained));
    for r in results(&explained) {
        assert_eq!(r["score"], r["first_pass_score"]);
        let weights = r["attention"]["weights"].as_array().unwrap();
        let sum: f64 = weights.iter().map(|v| v.as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-3, "{sum}");
    }
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

/// The results of a search: (product id, image id, score).
fn scored(body: &serde_json::Value) -> Vec<(String, i64, f64)> {
    results(body)
        .iter()
        .map(|r| {
            (
                r["product_id"].as_str().unwrap().to_owned(),
                r["image_id"].as_i64().unwrap(),
                r["score"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// `offset` pages through the grouped results: pages put together are the one long answer,
/// `next_offset` says where the next page starts and is null on the last; a page outside the
/// candidates is refused. The same options work in the multipart `options` part.
#[tokio::test]
async fn offset_pages_through_the_results_and_next_offset_says_where_next() {
    let (app, cat) = catalogue_app().await;
    let photo = cat.query_photo();
    let n = cat.products.len();
    assert!(n >= 6, "the catalogue has {n} products");
    let all = app
        .search(&photo, &format!("k={n}&candidates=64&merchant={MERCHANT}"))
        .await
        .assert_status(200)
        .json;
    let total = results(&all).len();
    assert!(total >= 6, "{total} results");
    assert!(all["next_offset"].is_null(), "one page holds them all");
    let mut paged = Vec::new();
    let mut offset = 0;
    loop {
        let page = app
            .search(
                &photo,
                &format!("k=4&candidates=64&merchant={MERCHANT}&offset={offset}"),
            )
            .await
            .assert_status(200)
            .json;
        paged.extend(scored(&page));
        match page["next_offset"].as_u64() {
            Some(next) => {
                assert_eq!(next as usize, offset + 4);
                offset = next as usize;
            }
            None => break,
        }
    }
    assert_eq!(
        paged,
        scored(&all),
        "the pages are the whole answer, in order"
    );
    let multipart = app
        .search_multipart(
            &photo,
            &json!({"k": 2, "candidates": 64, "merchant": MERCHANT, "offset": 2}),
        )
        .await
        .assert_status(200)
        .json;
    assert_eq!(scored(&multipart), scored(&all)[2..4]);
    assert_eq!(multipart["next_offset"], 4);
    let err = app
        .search(&photo, "k=10&candidates=20&offset=11")
        .await
        .assert_error(400, "invalid_request");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("offset + k"),
        "{err}"
    );
}

/// `min_score` leaves out results below it, in the query string and in `options`.
#[tokio::test]
async fn min_score_leaves_out_weaker_results() {
    let (app, cat) = catalogue_app().await;
    let photo = cat.query_photo();
    let all = scored(&app.search(&photo, "k=20").await.assert_status(200).json);
    assert!(all.len() >= 4);
    let cut = all[2].2;
    let kept = scored(
        &app.search(&photo, &format!("k=20&min_score={cut}"))
            .await
            .assert_status(200)
            .json,
    );
    let want: Vec<_> = all.iter().filter(|r| r.2 >= cut).cloned().collect();
    assert_eq!(kept, want);
    assert!(kept.len() >= 3 && kept.len() < all.len());
    let from_options = scored(
        &app.search_multipart(&photo, &json!({"k": 20, "min_score": 2.0}))
            .await
            .assert_status(200)
            .json,
    );
    assert!(
        from_options.is_empty(),
        "no score reaches 2: {from_options:?}"
    );
    app.search(&photo, "k=20&min_score=NaN")
        .await
        .assert_error(400, "invalid_request");
}

/// Every search states the index's freshness (body and header); it moves with every write and
/// does not go back across a restart; `/readyz` says the same.
#[tokio::test]
async fn search_responses_state_the_index_version_and_it_never_goes_back() {
    let app = spawn_fake_app().await;
    let photos = fixture_photos(2);
    let version = |r: &TestResponse| {
        let v = r.json["index_version"].as_i64().unwrap();
        assert_eq!(r.header("x-index-version"), Some(v.to_string().as_str()));
        v
    };
    let empty = app.search(&photos[0], "k=5").await.assert_status(200);
    assert_eq!(version(&empty), 0);
    assert!(empty.json["index_updated_at"].is_null());
    let started = time::OffsetDateTime::now_utc() - time::Duration::seconds(1);
    app.create_product(MERCHANT, &json!({"id": "a", "title": "A"}), &photos[..1])
        .await
        .assert_status(201);
    let one = app.search(&photos[0], "k=5").await.assert_status(200);
    let v1 = version(&one);
    assert!(v1 > 0);
    let at = time::OffsetDateTime::parse(
        one.json["index_updated_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!(at >= started, "{at} is the time of the write");
    app.add_images(MERCHANT, "a", &photos[1..2])
        .await
        .assert_status(201);
    app.delete_product(MERCHANT, "a").await.assert_status(204);
    let two = app.search(&photos[0], "k=5").await.assert_status(200);
    let v2 = version(&two);
    assert!(v2 >= v1 + 2, "two more changes: {v1} then {v2}");
    let ready = app.readyz().await.assert_status(200).json;
    assert_eq!(ready["index"]["version"], v2);
    assert_eq!(ready["index"]["updated_at"], two.json["index_updated_at"]);
    let dir = app.stop().await;
    let again = spawn_fake_app_with(dir, |_| {}).await;
    let after = again.search(&photos[0], "k=5").await.assert_status(200);
    assert_eq!(version(&after), v2, "a restart keeps the index version");
    assert_eq!(after.json["index_updated_at"], two.json["index_updated_at"]);
    again.stop().await;
}

/// `(x, y, w, h)` of a box in pixels.
type PixelBox = (u32, u32, u32, u32);

/// Two fixture photos side by side, on a white canvas, as PNG (lossless) or JPEG; with the
/// pixel boxes of each.
fn composite(
    left: &std::path::Path,
    right: &std::path::Path,
    jpeg: bool,
) -> (Vec<u8>, [PixelBox; 2]) {
    let a = image::open(left).unwrap().to_rgb8();
    let b = image::open(right).unwrap().to_rgb8();
    let (w, h) = (a.width() + b.width() + 40, a.height().max(b.height()) + 20);
    let mut canvas = image::RgbImage::from_pixel(w, h, image::Rgb([255, 255, 255]));
    image::imageops::replace(&mut canvas, &a, 10, 10);
    image::imageops::replace(&mut canvas, &b, i64::from(a.width()) + 30, 10);
    let mut out = Vec::new();
    let format = if jpeg {
        image::ImageFormat::Jpeg
    } else {
        image::ImageFormat::Png
    };
    image::DynamicImage::ImageRgb8(canvas)
        .write_to(&mut std::io::Cursor::new(&mut out), format)
        .unwrap();
    let boxes = [
        (10, 10, a.width(), a.height()),
        (a.width() + 30, 10, b.width(), b.height()),
    ];
    (out, boxes)
}

/// `region` searches with part of the photo: a box around either product of a composite finds
/// that product first (pixel and relative boxes, query string and `options`); the whole photo
/// as a region is a search without one; an empty or outside box is 422 `invalid_field`. On the
/// fake backend, whose first pass finds an image's own product (its re-rank score is no model's:
/// the order checks use the first pass).
#[tokio::test]
async fn a_region_around_a_product_in_a_composite_finds_it() {
    let app = spawn_fake_app().await;
    let photos = fixture_photos(2);
    for (i, id) in ["left", "right"].iter().enumerate() {
        app.create_product(MERCHANT, &json!({"id": id, "title": id}), &photos[i..i + 1])
            .await
            .assert_status(201);
    }
    for jpeg in [false, true] {
        let (bytes, boxes) = composite(&photos[0], &photos[1], jpeg);
        let mime = if jpeg { "image/jpeg" } else { "image/png" };
        let (w, h) = {
            let img = image::load_from_memory(&bytes).unwrap();
            (img.width(), img.height())
        };
        for (id, (x, y, bw, bh)) in ["left", "right"].iter().zip(boxes) {
            let px = format!("{x},{y},{bw},{bh}");
            let body = app
                .search_bytes(
                    mime,
                    bytes.clone(),
                    &format!("k=2&rerank=false&region={px}"),
                )
                .await
                .assert_status(200)
                .json;
            assert_eq!(ids(&body)[0], *id, "jpeg {jpeg}, region {px}: {body}");
            let rel = json!({
                "x": f64::from(x) / f64::from(w), "y": f64::from(y) / f64::from(h),
                "w": f64::from(bw) / f64::from(w), "h": f64::from(bh) / f64::from(h),
                "unit": "relative"
            });
            let form = Form::new()
                .part("image", Part::bytes(bytes.clone()).mime_str(mime).unwrap())
                .part(
                    "options",
                    Part::text(json!({"k": 2, "rerank": false, "region": rel}).to_string())
                        .mime_str("application/json")
                        .unwrap(),
                );
            let body = app.search_form(form).await.assert_status(200).json;
            assert_eq!(ids(&body)[0], *id, "jpeg {jpeg}, region {rel}: {body}");
        }
        let plain = app
            .search_bytes(mime, bytes.clone(), "k=2")
            .await
            .assert_status(200)
            .json;
        for whole in [format!("0,0,{w},{h}"), "relative:0,0,1,1".to_string()] {
            let body = app
                .search_bytes(mime, bytes.clone(), &format!("k=2&region={whole}"))
                .await
                .assert_status(200)
                .json;
            assert_eq!(body["results"], plain["results"], "region {whole}");
        }
        for bad in [
            format!("0,0,{},{h}", w + 1),
            "10,10,0,5".to_string(),
            "relative:0.5,0,0.6,1".to_string(),
            "1,2,3".to_string(),
        ] {
            app.search_bytes(mime, bytes.clone(), &format!("k=2&region={bad}"))
                .await
                .assert_error(422, "invalid_field");
        }
    }
    app.stop().await;
}

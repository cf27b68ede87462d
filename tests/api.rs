//! End-to-end tests over HTTP against the real server, the real bundle and a temporary data
//! directory: upload, search, filter, update, delete, restart, bad input, metrics, and P@K
//! parity with the Python pipeline.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use common::*;
use serde_json::{json, Value};

const MERCHANT: &str = "acme";

/// Products with street photos, plus a couple of distractors without.
fn catalogue() -> Vec<FixtureProduct> {
    let (_, products) = fixture_products();
    let mut with_user: Vec<FixtureProduct> = products
        .iter()
        .filter(|p| !p.user.is_empty() && !p.shop.is_empty())
        .take(8)
        .cloned()
        .collect();
    with_user.extend(
        products
            .iter()
            .filter(|p| p.user.is_empty() && !p.shop.is_empty())
            .take(2)
            .cloned(),
    );
    assert!(with_user.len() >= 6, "the fixture set is too small");
    with_user
}

fn ids(results: &Value) -> Vec<String> {
    results["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["product_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Whether the bundle is a trained one (the preliminary bundle's eval.json has no figures), so
/// that retrieval quality can be asserted.
fn trained_bundle() -> bool {
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(root().join("models/default/manifest.json")).unwrap(),
    )
    .unwrap();
    let eval = &manifest["evaluation"];
    let preliminary = eval.is_null()
        || eval
            .get("note")
            .is_some_and(|n| n.as_str().unwrap_or("").contains("preliminary"));
    if preliminary {
        eprintln!("the bundle is preliminary: retrieval quality is not asserted");
    }
    !preliminary
}

fn first_tag(p: &FixtureProduct, key: &str) -> Option<String> {
    p.tags
        .iter()
        .find(|t| t.starts_with(&format!("{key}:")))
        .cloned()
}

#[tokio::test]
async fn health_readiness_and_vocabulary() {
    let app = spawn_app().await;
    let r = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let ready: Value = app
        .client
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["device"], "cpu");
    assert!(!ready["model_version"].as_str().unwrap().is_empty());
    assert_eq!(ready["index"]["live"], 0);
    let tags: Value = app
        .client
        .get(app.url("/v1/tags"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let list = tags["tags"].as_array().unwrap();
    assert!(!list.is_empty());
    assert_eq!(tags["count"], list.len());
    assert!(list.iter().all(|t| t.as_str().unwrap().contains(':')));
    app.stop().await;
}

#[tokio::test]
async fn upload_search_filter_update_delete_restart() {
    let products = catalogue();
    let app = spawn_app().await;

    // Upload every product with its tags and shop images; one carries a tag the model lacks.
    for (i, p) in products.iter().enumerate() {
        let mut tags = p.tags.clone();
        if i == 0 {
            tags.push("brand:acme-own".into());
        }
        let body = json!({"id": p.id, "title": format!("Product {}", p.id), "tags": tags, "attributes": {"price": 10 + i}});
        let r = app.create_product(MERCHANT, &body, &p.shop).await;
        assert_eq!(r.status(), 201);
        let created: Value = r.json().await.unwrap();
        assert_eq!(created["id"], p.id.as_str());
        assert_eq!(created["merchant"], MERCHANT);
        assert_eq!(created["images"].as_array().unwrap().len(), p.shop.len());
        assert_eq!(created["attributes"]["price"], 10 + i);
        let unknown = created["unknown_to_model"].as_array().unwrap();
        if i == 0 {
            assert_eq!(unknown, &vec![json!("brand:acme-own")]);
        } else {
            assert!(unknown.is_empty(), "{created}");
        }
    }
    // Another merchant's product, to check the merchant filter.
    let other = &products[1];
    let r = app
        .create_product(
            "other-shop",
            &json!({"id": other.id, "title": "copy", "tags": other.tags}),
            &other.shop[..1],
        )
        .await;
    assert_eq!(r.status(), 201);

    // Street photos find their products.
    let queries: Vec<&FixtureProduct> = products.iter().filter(|p| !p.user.is_empty()).collect();
    let (mut top1, mut top5) = (0, 0);
    for p in &queries {
        let r = app.search(&p.user[0], "k=5&merchant=acme").await;
        assert_eq!(r.status(), 200);
        for h in [
            "x-decode-time",
            "x-embed-time",
            "x-ann-time",
            "x-rerank-time",
            "x-total-time",
        ] {
            let v: f64 = r.headers()[h].to_str().unwrap().parse().unwrap();
            assert!(v >= 0.0, "{h}");
        }
        let body: Value = r.json().await.unwrap();
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
        for field in [
            "product_id",
            "merchant",
            "title",
            "tags",
            "image_id",
            "score",
            "first_pass_rank",
            "first_pass_score",
        ] {
            assert!(!first[field].is_null(), "result lacks {field}: {first}");
        }
        assert!(first.get("attention").is_none());
        let scores: Vec<f64> = body["results"]
            .as_array()
            .unwrap()
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

    // First pass only: ordered by first-pass score, ranks 1.. in order.
    let q = &queries[0].user[0];
    let body = app.search_json(q, "k=10&rerank=false").await;
    assert_eq!(body["reranked"], false);
    let results = body["results"].as_array().unwrap();
    let ranks: Vec<u64> = results
        .iter()
        .map(|r| r["first_pass_rank"].as_u64().unwrap())
        .collect();
    assert!(ranks.windows(2).all(|w| w[0] < w[1]), "{ranks:?}");
    assert!(results.iter().all(|r| r["score"] == r["first_pass_score"]));

    // Explain: attention over the query grid, one weight per location, summing to 1.
    let body = app.search_json(q, "k=3&explain=true").await;
    let att = &body["results"][0]["attention"];
    let (h, w) = (att["h"].as_u64().unwrap(), att["w"].as_u64().unwrap());
    let weights = att["weights"].as_array().unwrap();
    assert_eq!(weights.len() as u64, h * w);
    let sum: f64 = weights.iter().map(|v| v.as_f64().unwrap()).sum();
    assert!((sum - 1.0).abs() < 1e-3, "{sum}");

    // Image grouping returns shop images, possibly several of one product.
    let body = app.search_json(q, "k=20&group=image").await;
    let images: HashSet<i64> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["image_id"].as_i64().unwrap())
        .collect();
    assert_eq!(images.len(), body["results"].as_array().unwrap().len());

    // Merchant filter.
    let body = app.search_json(q, "k=20&merchant=other-shop").await;
    assert_eq!(ids(&body), vec![other.id.clone()]);
    assert!(body["results"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["merchant"] == "other-shop"));

    // Tag filter, compact form: every result carries the tag.
    let target = queries[0];
    let category = first_tag(target, "category").expect("fixture products have a category");
    let body = app.search_json(q, &format!("k=20&filter={category}")).await;
    let results = body["results"].as_array().unwrap();
    assert!(!results.is_empty());
    for r in results {
        assert!(
            r["tags"].as_array().unwrap().contains(&json!(category)),
            "{r}"
        );
    }
    assert!(ids(&body).contains(&target.id));
    // JSON form in a multipart `options` part: AND of ORs.
    let colour = first_tag(target, "color").unwrap_or_else(|| category.clone());
    let options =
        json!({"k": 20, "filter": {"all": [[category], [colour, "color:does-not-exist"]]}});
    let form = reqwest::multipart::Form::new()
        .part("image", image_part(q))
        .part(
            "options",
            reqwest::multipart::Part::text(options.to_string()),
        );
    let r = app
        .client
        .post(app.url("/v1/search"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    for r in body["results"].as_array().unwrap() {
        let tags = r["tags"].as_array().unwrap();
        assert!(
            tags.contains(&json!(category)) && tags.contains(&json!(colour)),
            "{r}"
        );
    }
    // A tag nobody has: no results. A tag unknown to the model is still filterable.
    let body = app.search_json(q, "filter=color:does-not-exist").await;
    assert!(body["results"].as_array().unwrap().is_empty());
    let body = app.search_json(q, "filter=brand:acme-own").await;
    assert_eq!(ids(&body), vec![products[0].id.clone()]);

    // Read and list.
    let r = app
        .client
        .get(app.url(&format!(
            "/v1/merchants/{MERCHANT}/products/{}",
            products[2].id
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got: Value = r.json().await.unwrap();
    assert_eq!(got["title"], format!("Product {}", products[2].id));
    let mut listed = Vec::new();
    let mut cursor = String::new();
    loop {
        let page: Value = app
            .client
            .get(app.url(&format!(
                "/v1/merchants/{MERCHANT}/products?limit=3&cursor={cursor}"
            )))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        listed.extend(
            page["products"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    assert_eq!(
        listed,
        products.iter().map(|p| p.id.clone()).collect::<Vec<_>>()
    );

    // Update: title and tags; the tag change re-embeds and shows in search results.
    let upd = &products[3];
    let mut new_tags = upd.tags.clone();
    new_tags.push("season:winter".into());
    let r = app
        .client
        .patch(app.url(&format!("/v1/merchants/{MERCHANT}/products/{}", upd.id)))
        .json(&json!({"title": "Renamed", "tags": new_tags}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let patched: Value = r.json().await.unwrap();
    assert_eq!(patched["title"], "Renamed");
    assert!(patched["tags"]
        .as_array()
        .unwrap()
        .contains(&json!("season:winter")));
    let body = app
        .search_json(
            &upd.user.first().unwrap_or(&upd.shop[0]).clone(),
            "k=20&filter=season:winter",
        )
        .await;
    assert_eq!(ids(&body), vec![upd.id.clone()]);
    assert_eq!(body["results"][0]["title"], "Renamed");

    // Add an image to a product.
    let extra = &products[4];
    let form = reqwest::multipart::Form::new().part(
        "image",
        image_part(&extra.user.first().unwrap_or(&extra.shop[0]).clone()),
    );
    let r = app
        .client
        .post(app.url(&format!(
            "/v1/merchants/{MERCHANT}/products/{}/images",
            extra.id
        )))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let with_extra: Value = r.json().await.unwrap();
    assert_eq!(
        with_extra["images"].as_array().unwrap().len(),
        extra.shop.len() + 1
    );

    // Delete: gone from search at once, 404 afterwards.
    let gone = queries[1];
    let r = app
        .client
        .delete(app.url(&format!("/v1/merchants/{MERCHANT}/products/{}", gone.id)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let body = app
        .search_json(&gone.user[0], "k=100&merchant=acme&candidates=1024")
        .await;
    assert!(!ids(&body).contains(&gone.id));
    let r = app
        .client
        .get(app.url(&format!("/v1/merchants/{MERCHANT}/products/{}", gone.id)))
        .send()
        .await
        .unwrap();
    assert_error(r, 404, "product_not_found").await;

    // Metrics after a few searches.
    let m = app.metrics().await;
    for needle in [
        "snapshop_search_stage_duration_seconds_bucket{stage=\"rerank\"",
        "snapshop_search_stage_duration_seconds_bucket{stage=\"ann\"",
        "snapshop_search_stage_duration_seconds_bucket{stage=\"embed\"",
        "snapshop_search_stage_duration_seconds_bucket{stage=\"decode\"",
        "snapshop_http_requests_total{route=\"/v1/search\",method=\"POST\",status=\"200\"}",
        "snapshop_http_request_duration_seconds_bucket{route=\"/v1/merchants/{merchant}/products\"",
        "snapshop_model_info{",
        "snapshop_index_vectors{segment=\"fresh\"}",
        "snapshop_index_tombstones",
        "snapshop_inference_batch_size_bucket{kind=\"rerank\"",
        "snapshop_inference_queue_depth",
        "snapshop_errors_total{code=\"product_not_found\"}",
    ] {
        assert!(m.contains(needle), "metrics lack {needle}:\n{m}");
    }

    // Restart on the same data directory: everything is found again.
    let before: BTreeMap<String, Vec<String>> = {
        let mut out = BTreeMap::new();
        for p in &queries {
            out.insert(
                p.id.clone(),
                ids(&app.search_json(&p.user[0], "k=5&merchant=acme").await),
            );
        }
        out
    };
    let dir = app.stop().await;
    assert!(dir.path().join("index").exists(), "a snapshot was saved");
    let app = spawn_app_with(dir, |_| {}).await;
    for p in &queries {
        let found = ids(&app.search_json(&p.user[0], "k=5&merchant=acme").await);
        assert_eq!(found, before[&p.id], "results changed across a restart");
        assert!(p.id != gone.id || !found.contains(&p.id));
    }
    let got: Value = app
        .client
        .get(app.url(&format!("/v1/merchants/{MERCHANT}/products/{}", upd.id)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["title"], "Renamed");
    let r = app
        .client
        .get(app.url(&format!("/v1/merchants/{MERCHANT}/products/{}", gone.id)))
        .send()
        .await
        .unwrap();
    assert_error(r, 404, "product_not_found").await;

    // A lost snapshot is rebuilt from the store.
    let dir = app.stop().await;
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    let app = spawn_app_with(dir, |_| {}).await;
    let found = ids(&app
        .search_json(&queries[0].user[0], "k=5&merchant=acme")
        .await);
    assert_eq!(found, before[&queries[0].id]);

    // So is a corrupt one.
    let dir = app.stop().await;
    for entry in std::fs::read_dir(dir.path().join("index")).unwrap() {
        std::fs::write(entry.unwrap().path(), b"garbage").unwrap();
    }
    let app = spawn_app_with(dir, |_| {}).await;
    let found = ids(&app
        .search_json(&queries[0].user[0], "k=5&merchant=acme")
        .await);
    assert_eq!(found, before[&queries[0].id]);
    app.stop().await;
}

/// A PNG header announcing a huge image, with no pixel data: must be refused before decoding.
fn png_bomb() -> Vec<u8> {
    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &b in data {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&ihdr);
    png.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    // A tiny compressed IDAT (a real bomb inflates to gigabytes), then IEND.
    for (kind, data) in [
        (
            &b"IDAT"[..],
            &[0x78u8, 0x9c, 0x63, 0x60, 0x00, 0x00, 0x00, 0x02, 0x00, 0x01][..],
        ),
        (&b"IEND"[..], &[][..]),
    ] {
        let mut chunk = kind.to_vec();
        chunk.extend_from_slice(data);
        png.extend_from_slice(&(data.len() as u32).to_be_bytes());
        png.extend_from_slice(&chunk);
        png.extend_from_slice(&crc32(&chunk).to_be_bytes());
    }
    png
}

#[tokio::test]
async fn bad_input_gets_its_error_code() {
    let products = catalogue();
    let p = &products[0];
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let app = spawn_app_with(dir, |c| c.limits.max_body_bytes = 2 * 1024 * 1024).await;
    let jpeg = p.user.first().unwrap_or(&p.shop[0]).clone();
    let c = &app.client;
    let products_url = app.url(&format!("/v1/merchants/{MERCHANT}/products"));
    let product_url = |id: &str| app.url(&format!("/v1/merchants/{MERCHANT}/products/{id}"));

    // A valid product first, for the conflict and update cases.
    let body = json!({"id": p.id, "title": "t", "tags": p.tags});
    assert_eq!(
        app.create_product(MERCHANT, &body, &p.shop[..1])
            .await
            .status(),
        201
    );

    // --- search ---
    let search = |ct: &'static str, body: Vec<u8>| {
        c.post(app.url("/v1/search"))
            .header("content-type", ct)
            .body(body)
            .send()
    };
    assert_error(
        search("text/plain", b"hello".to_vec()).await.unwrap(),
        415,
        "unsupported_media_type",
    )
    .await;
    assert_error(
        c.post(app.url("/v1/search")).send().await.unwrap(),
        415,
        "unsupported_media_type",
    )
    .await;
    assert_error(
        search("image/jpeg", b"not a jpeg at all".to_vec())
            .await
            .unwrap(),
        422,
        "image_undecodable",
    )
    .await;
    let gif = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;".to_vec();
    assert_error(
        search("image/gif", gif).await.unwrap(),
        415,
        "unsupported_media_type",
    )
    .await;
    assert_error(
        search("image/png", png_bomb()).await.unwrap(),
        413,
        "image_too_large",
    )
    .await;
    assert_error(
        search("image/jpeg", vec![0xff; 3 * 1024 * 1024])
            .await
            .unwrap(),
        413,
        "payload_too_large",
    )
    .await;
    let big = reqwest::multipart::Form::new().part(
        "image",
        reqwest::multipart::Part::bytes(vec![0xff; 3 * 1024 * 1024])
            .mime_str("image/jpeg")
            .unwrap(),
    );
    let r = c
        .post(app.url("/v1/search"))
        .multipart(big)
        .send()
        .await
        .unwrap();
    assert_error(r, 413, "payload_too_large").await;
    assert_error(
        search("image/jpeg", Vec::new()).await.unwrap(),
        400,
        "invalid_request",
    )
    .await;
    let bytes = std::fs::read(&jpeg).unwrap();
    for (query, code) in [
        ("k=0", "invalid_request"),
        ("k=101", "invalid_request"),
        ("k=abc", "invalid_request"),
        ("candidates=5000", "invalid_request"),
        ("k=50&candidates=10", "invalid_request"),
        ("bogus=1", "invalid_request"),
        ("group=shop", "invalid_request"),
        ("filter=category", "invalid_filter"),
        ("filter=a:b,,c:d", "invalid_filter"),
        ("filter=%7B%22all%22%3A%5B%5B%5D%5D%7D", "invalid_filter"),
    ] {
        let r = c
            .post(app.url(&format!("/v1/search?{query}")))
            .header("content-type", "image/jpeg")
            .body(bytes.clone())
            .send()
            .await
            .unwrap();
        assert_error(r, 400, code).await;
    }
    // Multipart search mistakes.
    let form = reqwest::multipart::Form::new()
        .part("options", reqwest::multipart::Part::text("{\"k\": 3"));
    let r = c
        .post(app.url("/v1/search"))
        .multipart(form.part("image", image_part(&jpeg)))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "malformed_json").await;
    let form = reqwest::multipart::Form::new().part(
        "options",
        reqwest::multipart::Part::text("{\"k\": \"three\"}"),
    );
    let r = c
        .post(app.url("/v1/search"))
        .multipart(form.part("image", image_part(&jpeg)))
        .send()
        .await
        .unwrap();
    assert_error(r, 422, "invalid_field").await;
    let form = reqwest::multipart::Form::new().part(
        "options",
        reqwest::multipart::Part::text("{\"filter\": {\"all\": \"x\"}}"),
    );
    let r = c
        .post(app.url("/v1/search"))
        .multipart(form.part("image", image_part(&jpeg)))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "invalid_filter").await;
    let form =
        reqwest::multipart::Form::new().part("options", reqwest::multipart::Part::text("{}"));
    let r = c
        .post(app.url("/v1/search"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "invalid_request").await;
    let form = reqwest::multipart::Form::new()
        .part("image", image_part(&jpeg))
        .part("image", image_part(&jpeg));
    let r = c
        .post(app.url("/v1/search"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "invalid_request").await;
    let form = reqwest::multipart::Form::new().part("photo", image_part(&jpeg));
    let r = c
        .post(app.url("/v1/search"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "invalid_request").await;
    let r = c
        .post(app.url("/v1/search"))
        .header("content-type", "multipart/form-data; boundary=xyz")
        .body("--xyz\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\nabc")
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "invalid_request").await;

    // --- products ---
    let create = |product: Option<&str>, images: &[PathBuf]| {
        let mut form = reqwest::multipart::Form::new();
        if let Some(p) = product {
            form = form.part("product", reqwest::multipart::Part::text(p.to_owned()));
        }
        for i in images {
            form = form.part("image", image_part(i));
        }
        c.post(products_url.clone()).multipart(form).send()
    };
    let one = &p.shop[..1];
    assert_error(
        create(Some("{\"id\": \"x\", "), one).await.unwrap(),
        400,
        "malformed_json",
    )
    .await;
    assert_error(create(None, one).await.unwrap(), 400, "invalid_request").await;
    assert_error(
        create(Some("{\"id\": 5, \"title\": \"t\"}"), one)
            .await
            .unwrap(),
        422,
        "invalid_field",
    )
    .await;
    assert_error(
        create(Some("{\"id\": \"x\"}"), one).await.unwrap(),
        422,
        "invalid_field",
    )
    .await;
    assert_error(
        create(
            Some("{\"id\": \"x\", \"title\": \"t\", \"colour\": 1}"),
            one,
        )
        .await
        .unwrap(),
        422,
        "invalid_field",
    )
    .await;
    assert_error(
        create(
            Some("{\"id\": \"x\", \"title\": \"t\", \"tags\": [\"nocolon\"]}"),
            one,
        )
        .await
        .unwrap(),
        422,
        "invalid_field",
    )
    .await;
    assert_error(
        create(
            Some("{\"id\": \"x\", \"title\": \"t\", \"attributes\": [1]}"),
            one,
        )
        .await
        .unwrap(),
        422,
        "invalid_field",
    )
    .await;
    assert_error(
        create(Some("{\"id\": \"x\", \"title\": \"t\"}"), &[])
            .await
            .unwrap(),
        422,
        "invalid_field",
    )
    .await;
    assert_error(
        create(Some("{\"id\": \"x\", \"title\": \" \"}"), one)
            .await
            .unwrap(),
        422,
        "invalid_field",
    )
    .await;
    let dup = json!({"id": p.id, "title": "again"}).to_string();
    assert_error(
        create(Some(&dup), one).await.unwrap(),
        409,
        "product_exists",
    )
    .await;
    let r = c
        .post(products_url.clone())
        .json(&json!({"id": "x", "title": "t"}))
        .send()
        .await
        .unwrap();
    assert_error(r, 415, "unsupported_media_type").await;
    // One image part of the given bytes, declared as a JPEG.
    let create_from_bytes = |id: &str, bytes: Vec<u8>| {
        let form = reqwest::multipart::Form::new()
            .part(
                "product",
                reqwest::multipart::Part::text(json!({"id": id, "title": "t"}).to_string()),
            )
            .part(
                "image",
                reqwest::multipart::Part::bytes(bytes)
                    .mime_str("image/jpeg")
                    .unwrap(),
            );
        c.post(products_url.clone()).multipart(form).send()
    };
    let r = create_from_bytes("bad-image", b"garbage".to_vec())
        .await
        .unwrap();
    assert_error(r, 422, "image_undecodable").await;
    let r = c.get(product_url("bad-image")).send().await.unwrap();
    assert_error(r, 404, "product_not_found").await;
    // A JPEG cut off mid-upload is refused (as Pillow refuses it), not stored padded with grey.
    let whole = std::fs::read(&one[0]).unwrap();
    let r = create_from_bytes("cut-image", whole[..whole.len() / 2].to_vec())
        .await
        .unwrap();
    assert_error(r, 422, "image_undecodable").await;
    let r = c.get(product_url("cut-image")).send().await.unwrap();
    assert_error(r, 404, "product_not_found").await;
    let r = c
        .post(app.url("/v1/merchants/bad%20merchant/products"))
        .multipart(
            reqwest::multipart::Form::new()
                .part("product", reqwest::multipart::Part::text(dup.clone())),
        )
        .send()
        .await
        .unwrap();
    assert_error(r, 422, "invalid_field").await;

    for r in [
        c.get(product_url("missing")).send().await.unwrap(),
        c.delete(product_url("missing")).send().await.unwrap(),
        c.patch(product_url("missing"))
            .json(&json!({"title": "x"}))
            .send()
            .await
            .unwrap(),
        c.post(app.url(&format!("/v1/merchants/{MERCHANT}/products/missing/images")))
            .header("content-type", "image/jpeg")
            .body(bytes.clone())
            .send()
            .await
            .unwrap(),
    ] {
        assert_error(r, 404, "product_not_found").await;
    }
    let r = c
        .patch(product_url(&p.id))
        .header("content-type", "application/json")
        .body("{\"title\": ")
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "malformed_json").await;
    let r = c
        .patch(product_url(&p.id))
        .body("{\"title\": \"x\"}")
        .send()
        .await
        .unwrap();
    assert_error(r, 415, "unsupported_media_type").await;
    let r = c
        .patch(product_url(&p.id))
        .json(&json!({"tags": ["bad"]}))
        .send()
        .await
        .unwrap();
    assert_error(r, 422, "invalid_field").await;
    let r = c
        .patch(product_url(&p.id))
        .json(&json!({"price": 3}))
        .send()
        .await
        .unwrap();
    assert_error(r, 422, "invalid_field").await;
    let r = c
        .get(format!("{products_url}?limit=0"))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "invalid_request").await;
    let r = c
        .get(format!("{products_url}?cursor=zz"))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "invalid_request").await;

    // --- routing ---
    assert_error(
        c.get(app.url("/v1/nope")).send().await.unwrap(),
        404,
        "route_not_found",
    )
    .await;
    assert_error(
        c.put(app.url("/v1/search")).send().await.unwrap(),
        405,
        "method_not_allowed",
    )
    .await;

    // Errors are counted by code; the product that failed is not half-created.
    let m = app.metrics().await;
    for code in [
        "unsupported_media_type",
        "image_undecodable",
        "image_too_large",
        "payload_too_large",
        "invalid_filter",
        "malformed_json",
        "product_exists",
    ] {
        assert!(
            m.contains(&format!("snapshop_errors_total{{code=\"{code}\"}}")),
            "{code}"
        );
    }
    let ready: Value = c
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["products"], 1);
    app.stop().await;
}

/// P@K over HTTP on the committed subset equals the Python pipeline's figures within 0.5 pt.
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
    for pid in &order {
        let (tags, images) = &gallery[pid];
        let r = app
            .create_product(
                "eval",
                &json!({"id": pid, "title": pid, "tags": tags}),
                images,
            )
            .await;
        assert_eq!(r.status(), 201, "{pid}");
    }
    let queries: Vec<_> = rows.iter().filter(|r| r.domain == "user").collect();
    assert_eq!(queries.len() as u64, expected["queries"].as_u64().unwrap());
    let mut hits: BTreeMap<(&str, usize), usize> = BTreeMap::new();
    for q in &queries {
        for (mode, rerank) in [("first_pass", false), ("rerank", true)] {
            let body = app
                .search_json(&q.image, &format!("k={max_k}&rerank={rerank}"))
                .await;
            // As the pipeline counts: results scoring strictly higher than the query's product.
            let results = body["results"].as_array().unwrap();
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

/// Embeddings made by another model version are re-embedded from the stored files at start.
#[tokio::test]
async fn embeddings_of_another_model_are_redone_at_start() {
    let products: Vec<FixtureProduct> = catalogue().into_iter().take(3).collect();
    let app = spawn_app().await;
    let mut images = 0;
    for p in &products {
        let r = app
            .create_product(
                MERCHANT,
                &json!({"id": p.id, "title": p.id, "tags": p.tags}),
                &p.shop,
            )
            .await;
        assert_eq!(r.status(), 201);
        images += p.shop.len();
    }
    let q = products[0]
        .user
        .first()
        .unwrap_or(&products[0].shop[0])
        .clone();
    let before = app.search_json(&q, "k=3").await;
    let dir = app.stop().await;

    // Pretend an older model made them.
    let db = dir.path().join("snapshop.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let changed = sqlx::query("UPDATE embeddings SET model_version = 'an-older-model'")
        .execute(&pool)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(changed as usize, images);
    pool.close().await;

    let app = spawn_app_with(dir, |_| {}).await;
    let ready: Value = app
        .client
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["index"]["live"], images, "{ready}");
    let after = app.search_json(&q, "k=3").await;
    assert_eq!(ids(&after), ids(&before));
    let (a, b) = (
        &after["results"][0]["score"],
        &before["results"][0]["score"],
    );
    assert!(
        (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-4,
        "{a} vs {b}"
    );
    app.stop().await;
}

/// Past the admission limit, searches fail fast with 503 `overloaded` and `Retry-After`.
#[tokio::test]
async fn overload_is_refused_fast_with_retry_after() {
    let products = catalogue();
    let p = &products[0];
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let app = spawn_app_with(dir, |c| c.limits.max_concurrent_searches = 1).await;
    let r = app
        .create_product(
            MERCHANT,
            &json!({"id": p.id, "title": "t", "tags": p.tags}),
            &p.shop,
        )
        .await;
    assert_eq!(r.status(), 201);
    let q = p.user.first().unwrap_or(&p.shop[0]).clone();
    let responses = futures_util::future::join_all((0..8).map(|_| app.search(&q, "k=5"))).await;
    let (mut ok, mut refused) = (0, 0);
    for r in responses {
        if r.status() == 200 {
            ok += 1;
            continue;
        }
        assert_eq!(r.headers()["retry-after"], "1");
        assert_error(r, 503, "overloaded").await;
        refused += 1;
    }
    assert!(ok >= 1 && refused >= 1, "{ok} served, {refused} refused");
    app.stop().await;
}

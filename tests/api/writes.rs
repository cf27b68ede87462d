//! Writes without a global lock: versions and `ETag`/`If-Match`, opaque cursors, and a stress
//! test of concurrent writes to the same and to different products that reuse the same image
//! bytes, with zero 5xx and the store and the search view in one consistent state at the end.
//! Runs on the fake model backend (no ONNX Runtime): the behaviour under test is the core's.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use crate::common::*;

fn product(id: &str, tags: &[&str]) -> Value {
    json!({"id": id, "title": format!("Product {id}"), "tags": tags})
}

#[tokio::test]
async fn versions_etags_and_if_match() {
    let app = spawn_fake_app().await;
    let photos = fixture_photos(2);
    let created = app
        .create_product("acme", &product("sku-1", &["color:red"]), &photos[..1])
        .await
        .assert_status(201);
    let etag1 = created
        .header("etag")
        .expect("an ETag on create")
        .to_owned();
    assert_eq!(created.json["version"], 1);
    let got = app.get_product("acme", "sku-1").await.assert_status(200);
    assert_eq!(got.header("etag"), Some(etag1.as_str()));

    // A conditional change on the current version wins and moves the version.
    let patched = app
        .patch_product("acme", "sku-1", &json!({"tags": ["color:blue"]}))
        .header("if-match", &etag1)
        .await
        .assert_status(200);
    let etag2 = patched.header("etag").unwrap().to_owned();
    assert_ne!(etag1, etag2);
    assert_eq!(patched.json["version"], 2);
    // The stale ETag is refused everywhere, and nothing changes.
    app.patch_product("acme", "sku-1", &json!({"title": "stale"}))
        .header("if-match", &etag1)
        .await
        .assert_error(412, "version_conflict");
    app.add_images("acme", "sku-1", &photos[1..2])
        .header("if-match", &etag1)
        .await
        .assert_error(412, "version_conflict");
    app.delete_product("acme", "sku-1")
        .header("if-match", &etag1)
        .await
        .assert_error(412, "version_conflict");
    let still = app.get_product("acme", "sku-1").await.assert_status(200);
    assert_eq!(still.json["title"], "Product sku-1");
    assert_eq!(still.json["version"], 2);
    // Unconditional and `*` writes go through; garbage in If-Match is a 400.
    let added = app
        .add_images("acme", "sku-1", &photos[1..2])
        .header("if-match", "*")
        .await
        .assert_status(201);
    assert_eq!(added.json["version"], 3);
    app.patch_product("acme", "sku-1", &json!({"title": "x"}))
        .header("if-match", "\"17\"")
        .await
        .assert_error(400, "invalid_request");
    // A deleted and re-created product is another incarnation: its old ETags do not match.
    let etag3 = added.header("etag").unwrap().to_owned();
    app.delete_product("acme", "sku-1")
        .header("if-match", &etag3)
        .await
        .assert_status(204);
    let again = app
        .create_product("acme", &product("sku-1", &[]), &photos[..1])
        .await
        .assert_status(201);
    assert_eq!(again.json["version"], 1);
    app.delete_product("acme", "sku-1")
        .header("if-match", &etag1)
        .await
        .assert_error(412, "version_conflict");
    app.stop().await;
}

#[tokio::test]
async fn list_cursors_are_opaque() {
    let app = spawn_fake_app().await;
    let photos = fixture_photos(1);
    for i in 0..5 {
        app.create_product("acme", &product(&format!("p{i}"), &[]), &photos)
            .await
            .assert_status(201);
    }
    let page = app
        .list_products("acme", Some(3), None)
        .await
        .assert_status(200);
    let cursor = page.json["next_cursor"].as_str().unwrap().to_owned();
    assert!(cursor.parse::<i64>().is_err(), "opaque: {cursor}");
    let next = app
        .list_products("acme", Some(3), Some(&cursor))
        .await
        .assert_status(200);
    let ids: Vec<&str> = next.json["products"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["p3", "p4"]);
    assert!(next.json.get("next_cursor").is_none());
    for bad in ["17", "bm9wZQ", "%%%"] {
        app.list_products("acme", Some(3), Some(bad))
            .await
            .assert_error(400, "invalid_request");
    }
    app.stop().await;
}

/// What the store holds: product id → (version, image count).
async fn store_state(app: &TestApp, merchant: &str) -> BTreeMap<String, (i64, usize)> {
    let mut out = BTreeMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = app
            .list_products(merchant, Some(200), cursor.as_deref())
            .await
            .assert_status(200);
        for p in page.json["products"].as_array().unwrap() {
            out.insert(
                p["id"].as_str().unwrap().to_owned(),
                (
                    p["version"].as_i64().unwrap(),
                    p["images"].as_array().unwrap().len(),
                ),
            );
        }
        match page.json["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
}

#[tokio::test]
async fn concurrent_writes_to_same_and_different_products_never_fail() {
    const WORKERS: usize = 6;
    const OPS: usize = 60;
    // Sweeps run all the time, but nothing is old enough to go during the test.
    let app = spawn_fake_app_with(new_data_dir(), |c| {
        c.maintenance.sweep_interval_secs = 1;
        c.maintenance.interval_secs = 1;
    })
    .await;
    let photos = fixture_photos(4);
    let shared: Vec<&str> = vec!["s0", "s1", "s2", "s3", "s4", "s5"];
    let statuses = std::sync::Arc::new(std::sync::Mutex::new(BTreeMap::<u16, usize>::new()));
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let app = app.handle();
        let photos = photos.clone();
        let shared: Vec<String> = shared.iter().map(|s| s.to_string()).collect();
        let statuses = statuses.clone();
        tasks.push(tokio::spawn(async move {
            // A fixed pseudo-random sequence per worker: reproducible interleavings of
            // create / patch / add image / delete on the six shared products, plus one product
            // of its own that no one else touches.
            let mut x: u64 = 0x9E37_79B9 ^ w as u64;
            for i in 0..OPS {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let r = (x >> 33) as usize;
                let id = if i % 5 == 4 {
                    format!("own-{w}")
                } else {
                    shared[r % shared.len()].clone()
                };
                // The same bytes on many products and across re-creates.
                let photo = &photos[r % photos.len()];
                let resp = match (r / 7) % 4 {
                    0 => {
                        app.create_product(
                            "stress",
                            &product(&id, &["color:red"]),
                            std::slice::from_ref(photo),
                        )
                        .await
                    }
                    1 => {
                        let tags = if r.is_multiple_of(2) {
                            vec!["color:blue"]
                        } else {
                            vec!["color:red", "fit:slim"]
                        };
                        app.patch_product("stress", &id, &json!({"tags": tags}))
                            .await
                    }
                    2 => {
                        app.add_images("stress", &id, std::slice::from_ref(photo))
                            .await
                    }
                    _ => app.delete_product("stress", &id).await,
                };
                assert!(
                    resp.status < 500,
                    "worker {w} op {i} on {id}: {} {}",
                    resp.status,
                    resp.text
                );
                if resp.status >= 400 {
                    let code = resp.json["error"]["code"].as_str().unwrap_or("");
                    assert!(
                        ["product_exists", "product_not_found"].contains(&code),
                        "worker {w} op {i} on {id}: unexpected {code}: {}",
                        resp.text
                    );
                }
                *statuses.lock().unwrap().entry(resp.status).or_default() += 1;
            }
        }));
    }
    for t in tasks {
        t.await.expect("a worker failed");
    }
    let statuses = statuses.lock().unwrap().clone();
    eprintln!("statuses: {statuses:?}");
    assert_eq!(statuses.values().sum::<usize>(), WORKERS * OPS);
    assert!(statuses.keys().all(|s| *s < 500));
    assert!(
        statuses.get(&201).copied().unwrap_or(0) > 0
            && statuses.get(&204).copied().unwrap_or(0) > 0
    );

    // One consistent state: the view holds exactly the store's products and one vector per
    // stored image, and every stored image's file is on disk.
    let state = store_state(&app, "stress").await;
    let ready = app.readyz().await.assert_status(200);
    assert_eq!(ready.json["view_dirty"], false);
    assert_eq!(ready.json["products"], state.len(), "{}", ready.text);
    let images: usize = state.values().map(|(_, n)| n).sum();
    assert_eq!(ready.json["index"]["live"], images, "{}", ready.text);
    for id in state.keys() {
        let p = app.get_product("stress", id).await.assert_status(200);
        for img in p.json["images"].as_array().unwrap() {
            let sha = img["sha256"].as_str().unwrap();
            let path = app.data_dir.path().join(format!(
                "images/{}/{}/{sha}.{}",
                &sha[..2],
                &sha[2..4],
                img["format"].as_str().unwrap()
            ));
            assert!(path.is_file(), "{id}: {} is missing", path.display());
        }
        // Each surviving product is found by its own photo with its current tags.
        let tags = p.json["tags"].as_array().unwrap();
        let filter = tags
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect::<Vec<_>>()
            .join(",");
        let photo = &photos[0];
        let found = app
            .search(photo, &format!("merchant=stress&k=100&filter={filter}"))
            .await
            .assert_status(200);
        let ids: HashSet<String> = ids(&found.json).into_iter().collect();
        assert!(
            ids.contains(id.as_str()),
            "{id} with tags {filter} is not searchable: {ids:?}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn unreferenced_files_are_swept_after_the_grace_period_only() {
    let app = spawn_fake_app_with(new_data_dir(), |c| {
        c.maintenance.sweep_interval_secs = 1;
        c.maintenance.file_grace_secs = 60;
    })
    .await;
    let photos = fixture_photos(2);
    // Two products share photo 0; product b also has photo 1.
    app.create_product("m", &product("a", &[]), &photos[..1])
        .await
        .assert_status(201);
    let b = app
        .create_product("m", &product("b", &[]), &photos[..2])
        .await
        .assert_status(201);
    let files: Vec<std::path::PathBuf> = b.json["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|img| {
            let sha = img["sha256"].as_str().unwrap();
            app.data_dir.path().join(format!(
                "images/{}/{}/{sha}.{}",
                &sha[..2],
                &sha[2..4],
                img["format"].as_str().unwrap()
            ))
        })
        .collect();
    app.delete_product("m", "b").await.assert_status(204);
    // Deleting never removes a file at once; age every file past the grace period.
    assert!(files.iter().all(|f| f.is_file()));
    let old = SystemTime::now() - Duration::from_secs(3600);
    for f in &files {
        std::fs::File::options()
            .write(true)
            .open(f)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    // The sweep deletes photo 1 (no product refers to it) and keeps photo 0 (product a does).
    let mut gone = false;
    for _ in 0..100 {
        if !files[1].exists() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the unreferenced file was not swept");
    assert!(files[0].is_file(), "a referenced file was swept");
    app.stop().await;
}

/// The image files go where `storage.images_url` says (a directory replicas may share), not into
/// the data directory; a storage that fails answers 503 `image_storage_unavailable`, with
/// `Retry-After`.
#[tokio::test]
async fn image_files_live_where_images_url_says_and_a_failing_storage_is_a_503() {
    let shared = tempfile::tempdir().unwrap();
    let images = shared.path().join("images");
    let url = format!("file://{}", images.display());
    let app = spawn_fake_app_with(new_data_dir(), |c| c.storage.images_url = Some(url)).await;
    let photos = fixture_photos(2);
    let created = app
        .create_product("m", &product("a", &[]), &photos[..1])
        .await
        .assert_status(201);
    let image = &created.json["images"][0];
    let sha = image["sha256"].as_str().unwrap();
    let format = image["format"].as_str().unwrap();
    let file = images.join(format!("{}/{}/{sha}.{format}", &sha[..2], &sha[2..4]));
    assert!(file.is_file(), "{} is missing", file.display());
    assert!(!app.data_dir.path().join("images").exists());
    let id = image["id"].to_string();
    app.get_image("m", "a", &id).await.assert_status(200);

    // The storage breaks: its directory becomes a plain file.
    std::fs::remove_dir_all(&images).unwrap();
    std::fs::write(&images, b"not a directory").unwrap();
    let r = app.get_image("m", "a", &id).await;
    assert_eq!(r.header("retry-after"), Some("1"));
    r.assert_error(503, "image_storage_unavailable");
    app.create_product("m", &product("b", &[]), &photos[1..])
        .await
        .assert_error(503, "image_storage_unavailable");
    app.stop().await;
}

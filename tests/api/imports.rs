//! Server-side import jobs (`POST /v1/merchants/{m}/imports`, src/jobs.rs) over HTTP: a CSV
//! with good and bad rows becomes products while the bad rows are reported with their line and
//! code; a rerun finds everything unchanged; changed rows patch (or, with `replace`, recreate)
//! their products; images can be named by the hash of an image already stored; nothing outside
//! `import.root` is read; a job is cancelled; a job left running by a dead process resumes from
//! its saved progress at the next start; bad submissions get their codes; and other merchants
//! see nothing. Runs on the fake model backend: the behaviour under test is the job's.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::common::*;

fn imports_path(merchant: &str) -> String {
    format!("/v1/merchants/{merchant}/imports")
}

/// A fake-model app reading images under the fixture subset, and a merchant key of MERCHANT.
async fn app_with_root() -> (TestApp, String) {
    let app = spawn_fake_app_with(new_data_dir(), |c| {
        c.import.root = Some(subset_dir());
    })
    .await;
    let key = create_key(&app, &json!({"kind": "merchant", "merchant": MERCHANT})).await;
    (app, key)
}

/// `path` relative to the fixture subset (the import root).
fn rel(path: &Path) -> String {
    path.strip_prefix(subset_dir())
        .expect("a fixture under the subset")
        .to_string_lossy()
        .into_owned()
}

fn products(n: usize) -> Vec<FixtureProduct> {
    let (_, all) = fixture_products();
    let picked: Vec<FixtureProduct> = all
        .into_iter()
        .filter(|p| p.shop.len() >= 2 && !p.tags.is_empty())
        .take(n)
        .collect();
    assert_eq!(picked.len(), n, "the fixture set is too small");
    picked
}

/// One CSV row per image, the product's fields on its first row.
fn csv_of(products: &[FixtureProduct]) -> String {
    let mut csv = String::from("id,title,tags,image\n");
    for p in products {
        for (i, shop) in p.shop.iter().enumerate() {
            if i == 0 {
                csv.push_str(&format!(
                    "{},Title of {},\"{}\",{}\n",
                    p.id,
                    p.id,
                    p.tags.join(","),
                    rel(shop)
                ));
            } else {
                csv.push_str(&format!("{},,,{}\n", p.id, rel(shop)));
            }
        }
    }
    csv
}

async fn submit(app: &TestApp, key: &str, body: &str, content_type: &str, query: &str) -> Value {
    let r = app
        .request(Method::POST, &format!("{}{query}", imports_path(MERCHANT)))
        .key(key)
        .content_type(content_type)
        .body(body.to_owned())
        .send()
        .await
        .assert_status(202);
    let job = r.json.clone();
    assert_eq!(
        r.header("location"),
        Some(format!("{}/{}", imports_path(MERCHANT), job["id"].as_str().unwrap()).as_str())
    );
    assert!(
        ["queued", "running", "done"].contains(&job["status"].as_str().unwrap()),
        "{job}"
    );
    job
}

async fn get_job(app: &TestApp, key: &str, id: &str) -> Value {
    app.request(Method::GET, &format!("{}/{id}", imports_path(MERCHANT)))
        .key(key)
        .send()
        .await
        .assert_status(200)
        .json
}

/// Polls the job until it is finished (or 60 s pass).
async fn finished(app: &TestApp, key: &str, id: &str) -> Value {
    let start = Instant::now();
    loop {
        let job = get_job(app, key, id).await;
        match job["status"].as_str().unwrap() {
            "queued" | "running" => {}
            _ => return job,
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the job did not finish: {job}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn count(job: &Value, field: &str) -> i64 {
    job[field]
        .as_i64()
        .unwrap_or_else(|| panic!("{field} in {job}"))
}

fn sorted_shas(p: &Value) -> Vec<String> {
    let mut v: Vec<String> = p["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["sha256"].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

fn file_shas(paths: &[PathBuf]) -> Vec<String> {
    use sha2::{Digest, Sha256};
    let mut v: Vec<String> = paths
        .iter()
        .map(|p| hex::encode(Sha256::digest(std::fs::read(p).unwrap())))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn a_csv_job_imports_good_rows_and_reports_bad_ones() {
    let (app, key) = app_with_root().await;
    let ps = products(4);
    let outside = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(outside.path(), std::fs::read(&ps[0].shop[0]).unwrap()).unwrap();
    let mut csv = csv_of(&ps);
    let good_lines = csv.lines().count(); // the header and the good rows
                                          // Line numbers of the bad rows (1-based, the header is line 1).
    csv.push_str(",No id,,x.jpg\n"); // no id: refused when parsed
    csv.push_str("sku-missing,Missing,category:dress,nowhere/none.jpg\n"); // no such file
    csv.push_str(&format!(
        "sku-escape,Escape,category:dress,{}\n",
        outside.path().display()
    )); // outside the root
    csv.push_str("sku-url,Url,category:dress,https://cdn.example/a.jpg\n"); // never fetched
    let job = submit(&app, &key, &csv, "text/csv", "").await;
    assert_eq!(job["format"], "csv");
    assert_eq!(count(&job, "rows") as usize, good_lines - 1 + 4);
    assert_eq!(count(&job, "products"), 7);
    let id = job["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("imp_"), "{id}");

    let done = finished(&app, &key, &id).await;
    assert_eq!(done["status"], "done", "{done}");
    assert_eq!(count(&done, "products_done"), 7);
    assert_eq!(
        (
            count(&done, "created"),
            count(&done, "updated"),
            count(&done, "unchanged"),
            count(&done, "failed")
        ),
        (4, 0, 0, 3),
        "{done}"
    );
    let images: usize = ps.iter().map(|p| p.shop.len()).sum();
    assert_eq!(count(&done, "images") as usize, images);
    assert_eq!(count(&done, "attempts"), 1);
    assert!(done["finished_at"].is_string() && done["started_at"].is_string());

    // Every bad row, by line and code: the parse error and one per unusable product (its image
    // refused, then the product, which has no image left).
    let errors = done["errors"].as_array().unwrap();
    assert_eq!(count(&done, "error_count") as usize, errors.len());
    let at = |line: usize| -> Vec<&Value> {
        errors
            .iter()
            .filter(|e| e["row"].as_u64() == Some(line as u64))
            .collect()
    };
    let no_id = at(good_lines + 1);
    assert_eq!(no_id.len(), 1, "{errors:?}");
    assert_eq!(no_id[0]["code"], "invalid_field");
    for (line, id, needle) in [
        (good_lines + 2, "sku-missing", "no such file"),
        (good_lines + 3, "sku-escape", "no such file"),
        (good_lines + 4, "sku-url", "does not fetch"),
    ] {
        let e = at(line);
        assert!(!e.is_empty(), "line {line}: {errors:?}");
        assert!(e
            .iter()
            .all(|e| e["product_id"] == id && e["code"] == "invalid_field"));
        assert!(
            e.iter()
                .any(|e| e["message"].as_str().unwrap().contains(needle)),
            "{e:?}"
        );
        app.get_product(MERCHANT, id).await.assert_status(404);
    }

    for p in &ps {
        let got = app
            .get_product(MERCHANT, &p.id)
            .await
            .assert_status(200)
            .json;
        assert_eq!(got["title"], format!("Title of {}", p.id));
        let mut tags = p.tags.clone();
        tags.sort();
        assert_eq!(got["tags"], json!(tags));
        assert_eq!(sorted_shas(&got), file_shas(&p.shop));
    }

    // The list shows it; other merchants' keys and search keys see nothing.
    let list = app
        .request(Method::GET, &imports_path(MERCHANT))
        .key(&key)
        .send()
        .await
        .assert_status(200)
        .json;
    assert_eq!(list["imports"][0]["id"], id.as_str());
    let other = create_key(
        &app,
        &json!({"kind": "merchant", "merchant": OTHER_MERCHANT}),
    )
    .await;
    app.request(Method::GET, &format!("{}/{id}", imports_path(MERCHANT)))
        .key(&other)
        .send()
        .await
        .assert_error(403, "forbidden");
    app.request(
        Method::GET,
        &format!("{}/{id}", imports_path(OTHER_MERCHANT)),
    )
    .key(&other)
    .send()
    .await
    .assert_error(404, "import_not_found");
    let search = create_key(&app, &json!({"kind": "search", "merchant": MERCHANT})).await;
    app.request(Method::GET, &imports_path(MERCHANT))
        .key(&search)
        .send()
        .await
        .assert_error(403, "forbidden");
}

#[tokio::test]
async fn a_rerun_is_unchanged_and_changed_rows_update_their_products() {
    let (app, key) = app_with_root().await;
    let ps = products(3);
    let csv = csv_of(&ps);
    let first = submit(&app, &key, &csv, "text/csv", "").await;
    let first = finished(&app, &key, first["id"].as_str().unwrap()).await;
    assert_eq!(count(&first, "created"), 3, "{first}");

    let again = submit(&app, &key, &csv, "text/csv", "").await;
    let again = finished(&app, &key, again["id"].as_str().unwrap()).await;
    assert_eq!(
        (
            count(&again, "created"),
            count(&again, "updated"),
            count(&again, "unchanged"),
            count(&again, "images")
        ),
        (0, 0, 3, 0),
        "{again}"
    );
    let version_before = app.get_product(MERCHANT, &ps[1].id).await.json["version"].clone();

    // JSONL: a new title for one product, and one image fewer for another (kept by default).
    let jsonl = format!(
        "{}\n{}\n",
        json!({"id": ps[1].id, "title": "Renamed", "tags": ps[1].tags,
               "images": ps[1].shop.iter().map(|p| rel(p)).collect::<Vec<_>>()}),
        json!({"id": ps[2].id, "title": format!("Title of {}", ps[2].id), "tags": ps[2].tags,
               "images": [rel(&ps[2].shop[0])]}),
    );
    let changed = submit(&app, &key, &jsonl, "application/x-ndjson", "").await;
    assert_eq!(changed["format"], "jsonl");
    let changed = finished(&app, &key, changed["id"].as_str().unwrap()).await;
    assert_eq!(
        (count(&changed, "updated"), count(&changed, "unchanged")),
        (1, 1),
        "{changed}"
    );
    let renamed = app.get_product(MERCHANT, &ps[1].id).await.json;
    assert_eq!(renamed["title"], "Renamed");
    assert_ne!(renamed["version"], version_before);
    assert_eq!(
        sorted_shas(&app.get_product(MERCHANT, &ps[2].id).await.json),
        file_shas(&ps[2].shop),
        "without replace, no image is removed"
    );

    // With replace, the product becomes exactly what the file says.
    let replaced = submit(&app, &key, &jsonl, "application/x-ndjson", "?replace=true").await;
    assert_eq!(replaced["replace"], true);
    let replaced = finished(&app, &key, replaced["id"].as_str().unwrap()).await;
    assert_eq!(
        (count(&replaced, "updated"), count(&replaced, "unchanged")),
        (1, 1),
        "{replaced}"
    );
    assert_eq!(
        sorted_shas(&app.get_product(MERCHANT, &ps[2].id).await.json),
        file_shas(&ps[2].shop[..1])
    );
}

#[tokio::test]
async fn without_a_root_images_are_named_by_their_hash() {
    let app = spawn_fake_app().await;
    let key = create_key(&app, &json!({"kind": "merchant", "merchant": MERCHANT})).await;
    let p = &products(1)[0];
    let made = app
        .create_product(
            MERCHANT,
            &json!({"id": "original", "title": "Original", "tags": p.tags}),
            &p.shop[..1],
        )
        .key(&key)
        .send()
        .await
        .assert_status(201)
        .json;
    let sha = made["images"][0]["sha256"].as_str().unwrap().to_owned();
    let jsonl = format!(
        "{}\n{}\n",
        json!({"id": "variant", "title": "Variant", "tags": p.tags, "image": format!("sha256:{sha}")}),
        json!({"id": "by-path", "title": "By path", "image": rel(&p.shop[1])}),
    );
    let job = submit(&app, &key, &jsonl, "application/x-ndjson", "").await;
    let job = finished(&app, &key, job["id"].as_str().unwrap()).await;
    assert_eq!(
        (count(&job, "created"), count(&job, "failed")),
        (1, 1),
        "{job}"
    );
    assert!(job["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("import.root"));
    let variant = app.get_product(MERCHANT, "variant").await.json;
    assert_eq!(variant["images"][0]["sha256"], sha.as_str());

    // Another merchant cannot name acme's image by its hash.
    let other = create_key(
        &app,
        &json!({"kind": "merchant", "merchant": OTHER_MERCHANT}),
    )
    .await;
    let line = json!({"id": "stolen", "title": "Stolen", "image": format!("sha256:{sha}")});
    let r = app
        .request(Method::POST, &imports_path(OTHER_MERCHANT))
        .key(&other)
        .content_type("application/x-ndjson")
        .body(line.to_string())
        .send()
        .await
        .assert_status(202);
    let id = r.json["id"].as_str().unwrap().to_owned();
    let start = Instant::now();
    let job = loop {
        let j = app
            .request(
                Method::GET,
                &format!("{}/{id}", imports_path(OTHER_MERCHANT)),
            )
            .key(&other)
            .send()
            .await
            .assert_status(200)
            .json;
        if j["status"] != "queued" && j["status"] != "running" {
            break j;
        }
        assert!(start.elapsed() < Duration::from_secs(60));
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(count(&job, "failed"), 1, "{job}");
    app.get_product(OTHER_MERCHANT, "stolen")
        .await
        .assert_status(404);
}

#[tokio::test]
async fn bad_submissions_get_their_codes() {
    let (app, key) = app_with_root().await;
    let post = |body: &str, content_type: &str, query: &str| {
        app.request(Method::POST, &format!("{}{query}", imports_path(MERCHANT)))
            .key(&key)
            .content_type(content_type)
            .body(body.to_owned())
    };
    post("", "text/csv", "")
        .send()
        .await
        .assert_error(422, "invalid_field");
    post("just some words\n", "text/plain", "")
        .send()
        .await
        .assert_error(422, "invalid_field");
    post("id,colour\nsku,red\n", "text/csv", "")
        .send()
        .await
        .assert_error(422, "invalid_field");
    post("id\nsku\n", "image/png", "")
        .send()
        .await
        .assert_error(415, "unsupported_media_type");
    post("id\nsku\n", "text/csv", "?format=xml")
        .send()
        .await
        .assert_error(400, "invalid_request");
    post("id\nsku\n", "text/csv", "?bogus=1")
        .send()
        .await
        .assert_error(400, "invalid_request");
    app.request(
        Method::GET,
        &format!("{}/imp_nosuchjob", imports_path(MERCHANT)),
    )
    .key(&key)
    .send()
    .await
    .assert_error(404, "import_not_found");
    app.request(
        Method::POST,
        &format!("{}/imp_nosuchjob/cancel", imports_path(MERCHANT)),
    )
    .key(&key)
    .send()
    .await
    .assert_error(404, "import_not_found");
    app.request(Method::GET, &format!("{}?limit=0", imports_path(MERCHANT)))
        .key(&key)
        .send()
        .await
        .assert_error(400, "invalid_request");
    let search = create_key(&app, &json!({"kind": "search", "merchant": MERCHANT})).await;
    post("id\nsku\n", "text/csv", "")
        .key(&search)
        .send()
        .await
        .assert_error(403, "forbidden");
    post("id\nsku\n", "text/csv", "")
        .anonymous()
        .send()
        .await
        .assert_error(401, "unauthenticated");
}

#[tokio::test]
async fn a_cancelled_job_stops_and_keeps_what_it_wrote() {
    let app = spawn_fake_app_with(new_data_dir(), |c| {
        c.import.root = Some(subset_dir());
        c.import.concurrency = 1;
    })
    .await;
    let key = create_key(&app, &json!({"kind": "merchant", "merchant": MERCHANT})).await;
    let p = &products(1)[0];
    // Many products, one image each: long enough that the cancel lands while it runs.
    let mut csv = String::from("id,title,image\n");
    for i in 0..400 {
        csv.push_str(&format!(
            "bulk-{i},Bulk {i},{}\n",
            rel(&p.shop[i % p.shop.len()])
        ));
    }
    let job = submit(&app, &key, &csv, "text/csv", "").await;
    let id = job["id"].as_str().unwrap().to_owned();
    let cancel = app
        .request(
            Method::POST,
            &format!("{}/{id}/cancel", imports_path(MERCHANT)),
        )
        .key(&key)
        .send()
        .await;
    let status = cancel.status;
    let answered = cancel.json.clone();
    let end = finished(&app, &key, &id).await;
    if end["status"] == "done" {
        // It finished before the cancel took effect: a finished job is left as it is.
        assert_eq!(count(&end, "products_done"), 400, "{end}");
        return;
    }
    assert!(status == 200 || status == 202, "{status}: {answered}");
    assert_eq!(answered["cancel_requested"], true);
    assert_eq!(end["status"], "cancelled", "{end}");
    assert_eq!(end["message"], "cancelled");
    let done = count(&end, "products_done");
    assert!(done < 400, "{end}");
    // What it wrote stays, and nothing past it was written.
    let merchant = app
        .request(Method::GET, &format!("/v1/merchants/{MERCHANT}"))
        .key(&key)
        .send()
        .await
        .assert_status(200)
        .json;
    assert_eq!(
        count(&merchant, "products"),
        count(&end, "created"),
        "{end}"
    );
    assert_eq!(count(&end, "created"), done, "{end}");
    // Cancelling again leaves it as it is.
    let again = app
        .request(
            Method::POST,
            &format!("{}/{id}/cancel", imports_path(MERCHANT)),
        )
        .key(&key)
        .send()
        .await
        .assert_status(200)
        .json;
    assert_eq!(again["status"], "cancelled");
    assert_eq!(again["products_done"], end["products_done"]);
}

#[tokio::test]
async fn a_job_left_running_resumes_from_its_saved_progress_at_the_next_start() {
    use snapshop_store::jobs::{JobProgress, NewJob};
    let data = new_data_dir();
    let ps = products(4);
    let csv = csv_of(&ps);
    // A first start makes the database; then a "dead process" holds a job, with two products
    // saved as done, under a lease that never runs out.
    let app = spawn_fake_app_with(data.clone(), |c| c.import.root = Some(subset_dir())).await;
    let data = app.stop().await;
    let url = format!("sqlite://{}", data.path().join("snapshop.db").display());
    let store = snapshop_store::open(&url).await.unwrap();
    let job = store
        .jobs()
        .create_job(
            NewJob {
                public_id: "imp_resumetestjob0000000".into(),
                merchant: MERCHANT.into(),
                format: "csv".into(),
                options: json!({"replace": false}),
                input: csv.clone().into_bytes(),
                rows: csv.lines().count() as i64 - 1,
                products: 4,
                errors: vec![],
                error_count: 0,
            },
            1,
        )
        .await
        .unwrap();
    store
        .jobs()
        .claim_job("dead-process", 2, i64::MAX)
        .await
        .unwrap()
        .expect("claimed");
    let saved = JobProgress {
        products_done: 2,
        created: 2,
        images: 4,
        ..JobProgress::default()
    };
    store
        .jobs()
        .save_progress(job.id, "dead-process", &saved, 3, i64::MAX)
        .await
        .unwrap();
    store.close().await;

    let app = spawn_fake_app_with(data, |c| c.import.root = Some(subset_dir())).await;
    let key = create_key(&app, &json!({"kind": "merchant", "merchant": MERCHANT})).await;
    let end = finished(&app, &key, "imp_resumetestjob0000000").await;
    assert_eq!(end["status"], "done", "{end}");
    assert_eq!(count(&end, "attempts"), 2, "{end}");
    assert_eq!(count(&end, "products_done"), 4);
    assert_eq!(
        count(&end, "created"),
        4,
        "the saved two plus the two written now"
    );
    // It resumed after the saved progress: the products before it were not written again.
    for p in &ps[..2] {
        app.get_product(MERCHANT, &p.id).await.assert_status(404);
    }
    for p in &ps[2..] {
        app.get_product(MERCHANT, &p.id).await.assert_status(200);
    }
}

/// The image storage stops answering while a job runs and comes back a moment later: the
/// products wait for it instead of being recorded as failed, and every row is imported.
#[tokio::test]
async fn a_job_waits_out_a_short_image_storage_outage() {
    let shared = tempfile::tempdir().unwrap();
    let images = shared.path().join("images");
    let url = format!("file://{}", images.display());
    let app = spawn_fake_app_with(new_data_dir(), |c| {
        c.import.root = Some(subset_dir());
        c.storage.images_url = Some(url);
    })
    .await;
    let key = create_key(&app, &json!({"kind": "merchant", "merchant": MERCHANT})).await;
    // The storage breaks before the job starts: its directory becomes a plain file.
    std::fs::remove_dir_all(&images).unwrap();
    std::fs::write(&images, b"not a directory").unwrap();
    let ps = products(3);
    let job = submit(&app, &key, &csv_of(&ps), "text/csv", "").await;
    let id = job["id"].as_str().unwrap().to_owned();
    // Until a product has met the outage and waits: the job is running, nothing created.
    let start = Instant::now();
    loop {
        let job = get_job(&app, &key, &id).await;
        assert_eq!(count(&job, "created"), 0, "{job}");
        assert_eq!(job["errors"], json!([]), "no row failed meanwhile: {job}");
        if job["status"] == "running" && start.elapsed() > Duration::from_millis(1500) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The storage comes back.
    std::fs::remove_file(&images).unwrap();
    std::fs::create_dir_all(&images).unwrap();
    let done = finished(&app, &key, &id).await;
    assert_eq!(done["status"], "done", "{done}");
    assert_eq!(count(&done, "created"), 3, "{done}");
    assert_eq!(done["errors"], json!([]), "{done}");
    app.stop().await;
}

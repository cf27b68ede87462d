//! `snapshop import` (src/import/) against a real server: CSV one row per image, JSONL with
//! image arrays, Google Cloud Vision's bulk-import CSV, bad rows reported with their row number
//! while the rest goes in, an idempotent rerun, a changed row updated (and `--replace`), and
//! writes past a low rate limit retried. The importer runs as a library call against
//! `app.base`; every test checks the products on the server, the summary's counts and the
//! error report's rows. Runs on the fake model backend: the behaviour under test is the
//! client's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use snapshop::import::{ImportError, ImportOptions, Progress, Summary};
use tempfile::TempDir;

use crate::common::*;

/// A fake-model app and a merchant key of [`MERCHANT`].
async fn app_and_key(app: TestApp) -> (TestApp, String) {
    let key = create_key(&app, &json!({"kind": "merchant", "merchant": MERCHANT})).await;
    (app, key)
}

fn options(app: &TestApp, key: &str, file: &Path) -> ImportOptions {
    let mut o = ImportOptions::new(file, &app.base, MERCHANT, key);
    o.progress = Progress::Off;
    o
}

async fn import(app: &TestApp, key: &str, file: &Path) -> Summary {
    snapshop::import::run(options(app, key, file))
        .await
        .expect("the import runs")
}

/// Fixture products that have at least `min_images` shop images: (id, tags, shop images).
fn shop_products(n: usize, min_images: usize) -> Vec<FixtureProduct> {
    let (_, products) = fixture_products();
    let picked: Vec<FixtureProduct> = products
        .into_iter()
        .filter(|p| p.shop.len() >= min_images && !p.tags.is_empty())
        .take(n)
        .collect();
    assert_eq!(picked.len(), n, "the fixture set is too small");
    picked
}

fn sha256_file(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// The product on the server (asserting it exists).
async fn product(app: &TestApp, id: &str) -> Value {
    app.get_product(MERCHANT, id).await.assert_status(200).json
}

/// The server's image checksums of a product, sorted.
fn shas(p: &Value) -> Vec<String> {
    sorted(
        p["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["sha256"].as_str().unwrap().to_owned())
            .collect(),
    )
}

fn file_shas(paths: &[PathBuf]) -> Vec<String> {
    sorted(paths.iter().map(|p| sha256_file(p)).collect())
}

/// The error report's rows (header checked), as `row, product_id, code, message`.
fn report(path: &Path) -> Vec<Vec<String>> {
    let mut r = csv::Reader::from_path(path).expect("the error report exists");
    assert_eq!(
        r.headers().unwrap(),
        &csv::StringRecord::from(vec!["row", "product_id", "code", "message"])
    );
    r.records()
        .map(|rec| rec.unwrap().iter().map(str::to_owned).collect())
        .collect()
}

fn write(dir: &TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn csv_line(fields: &[&str]) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(fields).unwrap();
    String::from_utf8(w.into_inner().unwrap()).unwrap()
}

/// A CSV, one row per image, of `products` titled `Product {id}` with price `i`: the first
/// product's images are copied next to the file and named by relative path, the second's by
/// `file://` URI, the others' by absolute path.
fn one_row_per_image(dir: &TempDir, products: &[FixtureProduct]) -> PathBuf {
    std::fs::create_dir_all(dir.path().join("img")).unwrap();
    let mut text = String::from("id,title,tags,attributes,image\n");
    for (i, p) in products.iter().enumerate() {
        for (j, img) in p.shop.iter().enumerate() {
            let reference = match i {
                0 => {
                    let name = format!("img/{}", img.file_name().unwrap().to_string_lossy());
                    std::fs::copy(img, dir.path().join(&name)).unwrap();
                    name
                }
                1 => format!("file://{}", img.display()),
                _ => img.display().to_string(),
            };
            // The product's fields on its first row only; the other rows name an image.
            let (title, tags, attributes) = if j == 0 {
                (
                    format!("Product {}", p.id),
                    p.tags.join(","),
                    json!({"price": i}).to_string(),
                )
            } else {
                Default::default()
            };
            text += &csv_line(&[&p.id, &title, &tags, &attributes, &reference]);
        }
    }
    write(dir, "catalogue.csv", &text)
}

#[tokio::test]
async fn csv_one_row_per_image() {
    let (app, key) = app_and_key(spawn_fake_app().await).await;
    let dir = tempfile::tempdir().unwrap();
    let products = shop_products(4, 2);
    let file = one_row_per_image(&dir, &products);
    let images: usize = products.iter().map(|p| p.shop.len()).sum();

    let s = import(&app, &key, &file).await;
    assert_eq!(
        (s.rows, s.products, s.created, s.updated, s.unchanged),
        (images, 4, 4, 0, 0),
        "{}",
        s.line()
    );
    assert_eq!(
        (s.images, s.errors, s.exit_code()),
        (images, 0, 0),
        "{:?}",
        s.failures
    );
    assert!(s.line().starts_with(&format!(
        "import: {images} rows, 4 products (4 created, 0 updated, 0 unchanged), {images} images, 0 errors in "
    )));
    for (i, p) in products.iter().enumerate() {
        let got = product(&app, &p.id).await;
        assert_eq!(got["title"], format!("Product {}", p.id));
        assert_eq!(got["tags"], json!(sorted(p.tags.clone())));
        assert_eq!(got["attributes"], json!({"price": i}));
        assert_eq!(shas(&got), file_shas(&p.shop), "{}", p.id);
    }
    // The report is written, with its header only.
    assert_eq!(
        s.errors_file,
        PathBuf::from(format!("{}.errors.csv", file.display()))
    );
    assert!(report(&s.errors_file).is_empty());
}

#[tokio::test]
async fn jsonl_with_image_arrays() {
    let (app, key) = app_and_key(spawn_fake_app().await).await;
    let dir = tempfile::tempdir().unwrap();
    let products = shop_products(3, 1);
    let mut text = String::new();
    for (i, p) in products.iter().enumerate() {
        let images: Vec<String> = p.shop.iter().map(|i| i.display().to_string()).collect();
        let line = json!({"id": p.id, "title": format!("JSONL {}", p.id), "tags": p.tags,
            "attributes": {"rank": i, "colours": ["a", "b"]}, "images": images});
        text += &format!("{line}\n\n");
    }
    let file = write(&dir, "catalogue.jsonl", &text);
    let s = import(&app, &key, &file).await;
    assert_eq!((s.rows, s.created, s.errors), (3, 3, 0), "{:?}", s.failures);
    assert_eq!(
        s.images,
        products.iter().map(|p| p.shop.len()).sum::<usize>()
    );
    for (i, p) in products.iter().enumerate() {
        let got = product(&app, &p.id).await;
        assert_eq!(got["title"], format!("JSONL {}", p.id));
        assert_eq!(got["tags"], json!(sorted(p.tags.clone())));
        assert_eq!(got["attributes"], json!({"rank": i, "colours": ["a", "b"]}));
        assert_eq!(shas(&got), file_shas(&p.shop));
    }
}

#[tokio::test]
async fn google_cloud_vision_bulk_import_csv() {
    let (app, key) = app_and_key(spawn_fake_app().await).await;
    let dir = tempfile::tempdir().unwrap();
    let products = shop_products(2, 2);
    let (a, b) = (&products[0], &products[1]);
    let img = |p: &PathBuf| p.display().to_string();
    // No header; 8 columns; image-id and bounding-poly are ignored; the display name and the
    // labels may be on one row of the product only.
    let text = [
        csv_line(&[
            &img(&a.shop[0]),
            "img-1",
            "coats",
            &a.id,
            "apparel",
            "Long coat",
            "style=formal,color=pink",
            "",
        ]),
        csv_line(&[
            &img(&a.shop[1]),
            "",
            "coats",
            &a.id,
            "apparel",
            "",
            "",
            "0.1,0.1,0.9,0.1,0.9,0.9,0.1,0.9",
        ]),
        csv_line(&[
            &img(&b.shop[0]),
            "",
            "shorts",
            &b.id,
            "apparel-v2",
            "",
            "",
            "",
        ]),
    ]
    .concat();
    let file = write(&dir, "vision.csv", &text);
    let s = import(&app, &key, &file).await;
    assert_eq!(
        (s.rows, s.products, s.created, s.errors),
        (3, 2, 2, 0),
        "{:?}",
        s.failures
    );

    let got = product(&app, &a.id).await;
    assert_eq!(got["title"], "Long coat");
    assert_eq!(
        got["tags"],
        json!([
            "category:apparel",
            "color:pink",
            "set:coats",
            "style:formal"
        ])
    );
    assert_eq!(got["attributes"], json!({}));
    assert_eq!(shas(&got), file_shas(&a.shop[..2]));
    // Without a display name the product id is the title.
    let got = product(&app, &b.id).await;
    assert_eq!(got["title"], b.id.as_str());
    assert_eq!(got["tags"], json!(["category:apparel-v2", "set:shorts"]));
    assert_eq!(shas(&got), file_shas(&b.shop[..1]));
}

#[tokio::test]
async fn bad_rows_are_reported_with_their_row_and_the_rest_imported() {
    let (app, key) = app_and_key(spawn_fake_app().await).await;
    let dir = tempfile::tempdir().unwrap();
    let products = shop_products(4, 2);
    let img = |p: &PathBuf| p.display().to_string();
    let lines = [
        csv_line(&["id", "title", "tags", "attributes", "image"]),
        // 2, 3: a product with one good image and one missing file.
        csv_line(&[
            &products[0].id,
            "Has a missing image",
            "color:red",
            "",
            &img(&products[0].shop[0]),
        ]),
        csv_line(&[&products[0].id, "", "", "", "no/such/photo.jpg"]),
        // 4: bad tags: the row is skipped, its product never created.
        csv_line(&[
            &products[1].id,
            "Bad tags",
            "color-red",
            "",
            &img(&products[1].shop[0]),
        ]),
        // 5: attributes that are not an object.
        csv_line(&[
            &products[2].id,
            "Bad attributes",
            "",
            "[1, 2]",
            &img(&products[2].shop[0]),
        ]),
        // 6: not an image: the server refuses it (image_undecodable); the product's other
        // image (row 7) still goes in.
        csv_line(&[&products[3].id, "One image is not one", "", "", "notes.txt"]),
        csv_line(&[&products[3].id, "", "", "", &img(&products[3].shop[0])]),
        // 8: no title on any row of the product.
        csv_line(&["untitled", "", "", "", &img(&products[3].shop[1])]),
    ];
    write(&dir, "notes.txt", "this is not an image");
    let file = write(&dir, "catalogue.csv", &lines.concat());
    let errors = dir.path().join("report.csv");
    let mut opts = options(&app, &key, &file);
    opts.errors_file = Some(errors.clone());
    let s = snapshop::import::run(opts).await.unwrap();

    assert_eq!(s.rows, 7);
    assert_eq!(
        (s.created, s.failed, s.errors, s.exit_code()),
        (2, 1, 5, 1),
        "{:?}",
        s.failures
    );
    assert_eq!(s.errors_file, errors);
    let rows = report(&errors);
    let got: Vec<(&str, &str, &str)> = rows
        .iter()
        .map(|r| (r[0].as_str(), r[1].as_str(), r[2].as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("3", products[0].id.as_str(), "file_not_found"),
            ("4", products[1].id.as_str(), "bad_row"),
            ("5", products[2].id.as_str(), "bad_row"),
            ("6", products[3].id.as_str(), "image_undecodable"),
            ("8", "untitled", "no_title"),
        ]
    );
    assert!(rows[0][3].contains("no/such/photo.jpg"), "{:?}", rows[0]);
    assert!(rows[1][3].contains("color-red"), "{:?}", rows[1]);
    let text = std::fs::read_to_string(&errors).unwrap();
    assert!(!text.contains(&key), "the key leaked into the report");

    // The good rows are in.
    let got = product(&app, &products[0].id).await;
    assert_eq!(shas(&got), file_shas(&products[0].shop[..1]));
    let got = product(&app, &products[3].id).await;
    assert_eq!(shas(&got), file_shas(&products[3].shop[..1]));
    // The bad ones are not.
    for id in [products[1].id.as_str(), products[2].id.as_str(), "untitled"] {
        app.get_product(MERCHANT, id)
            .await
            .assert_error(404, "product_not_found");
    }
}

#[tokio::test]
async fn a_rerun_skips_everything_and_changed_rows_are_updated() {
    let (app, key) = app_and_key(spawn_fake_app().await).await;
    let dir = tempfile::tempdir().unwrap();
    let products = shop_products(4, 2);
    let file = one_row_per_image(&dir, &products);
    let images: usize = products.iter().map(|p| p.shop.len()).sum();
    let first = import(&app, &key, &file).await;
    assert_eq!(
        (first.created, first.errors),
        (4, 0),
        "{:?}",
        first.failures
    );
    let versions: BTreeMap<String, Value> = {
        let mut m = BTreeMap::new();
        for p in &products {
            m.insert(p.id.clone(), product(&app, &p.id).await["version"].clone());
        }
        m
    };

    // The same file again: nothing to do, nothing written.
    let again = import(&app, &key, &file).await;
    assert_eq!(
        (
            again.rows,
            again.created,
            again.updated,
            again.unchanged,
            again.images,
            again.errors
        ),
        (images, 0, 0, 4, 0, 0),
        "{}",
        again.line()
    );
    for p in &products {
        assert_eq!(
            product(&app, &p.id).await["version"],
            versions[&p.id],
            "{} was written",
            p.id
        );
    }

    // Change one product's title, give another a tag and an image: those two are updated.
    let text = std::fs::read_to_string(&file).unwrap();
    let changed_title = &products[2].id;
    let text = text.replacen(
        &format!("Product {changed_title}"),
        &format!("Renamed {changed_title}"),
        1,
    );
    let extra = products[0].shop[0].clone();
    let text = text
        + &csv_line(&[
            &products[3].id,
            "",
            "brand:extra",
            "",
            &extra.display().to_string(),
        ]);
    std::fs::write(&file, text).unwrap();
    let third = import(&app, &key, &file).await;
    assert_eq!(
        (
            third.created,
            third.updated,
            third.unchanged,
            third.images,
            third.errors
        ),
        (0, 2, 2, 1, 0),
        "{}",
        third.line()
    );
    let got = product(&app, changed_title).await;
    assert_eq!(got["title"], format!("Renamed {changed_title}"));
    assert_eq!(shas(&got), file_shas(&products[2].shop));
    let got = product(&app, &products[3].id).await;
    let mut want_tags = products[3].tags.clone();
    want_tags.push("brand:extra".into());
    assert_eq!(got["tags"], json!(sorted(want_tags)));
    let mut want = products[3].shop.clone();
    want.push(extra);
    assert_eq!(shas(&got), file_shas(&want));

    // An image added on the server only is kept by an update, and removed by `replace`.
    let p1 = &products[1];
    app.add_images(MERCHANT, &p1.id, &products[0].shop[1..2])
        .await
        .assert_status(201);
    let kept = import(&app, &key, &file).await;
    assert_eq!((kept.unchanged, kept.updated), (4, 0), "{}", kept.line());
    assert_eq!(shas(&product(&app, &p1.id).await).len(), p1.shop.len() + 1);
    let mut opts = options(&app, &key, &file);
    opts.replace = true;
    let replaced = snapshop::import::run(opts).await.unwrap();
    assert_eq!(
        (
            replaced.unchanged,
            replaced.updated,
            replaced.images,
            replaced.errors
        ),
        (3, 1, p1.shop.len(), 0),
        "{}",
        replaced.line()
    );
    assert_eq!(shas(&product(&app, &p1.id).await), file_shas(&p1.shop));
}

#[tokio::test]
async fn rate_limited_writes_are_retried_until_every_row_is_in() {
    let app = spawn_fake_app_with(new_data_dir(), |c| {
        c.rate_limits.merchant.write = snapshop::auth::limit::Bucket::new(2.0, 2)
    })
    .await;
    let (app, key) = app_and_key(app).await;
    let dir = tempfile::tempdir().unwrap();
    let products = shop_products(8, 1);
    let mut text = String::from("id,title,images\n");
    for p in &products {
        let images: Vec<String> = p.shop.iter().map(|i| i.display().to_string()).collect();
        text += &csv_line(&[&p.id, &format!("Product {}", p.id), &images.join("|")]);
    }
    let file = write(&dir, "catalogue.csv", &text);
    let mut opts = options(&app, &key, &file);
    opts.concurrency = 8;
    opts.max_attempts = 20;
    let s = snapshop::import::run(opts).await.unwrap();
    assert_eq!((s.created, s.errors), (8, 0), "{:?}", s.failures);
    assert!(
        s.retries > 0,
        "no write was refused: the test does not test retries"
    );
    for p in &products {
        assert_eq!(shas(&product(&app, &p.id).await), file_shas(&p.shop));
    }
}

#[tokio::test]
async fn a_refused_key_or_a_bad_file_stops_before_the_first_row() {
    let (app, _key) = app_and_key(spawn_fake_app().await).await;
    let dir = tempfile::tempdir().unwrap();
    let products = shop_products(1, 1);
    let text = format!(
        "id,title,image\n{}",
        csv_line(&[
            &products[0].id,
            "t",
            &products[0].shop[0].display().to_string()
        ])
    );
    let file = write(&dir, "catalogue.csv", &text);
    let wrong = "sk_live_0000000000000000000000000000000000000000";
    let e = snapshop::import::run(options(&app, wrong, &file))
        .await
        .unwrap_err();
    assert!(matches!(e, ImportError::Server(_)), "{e}");
    assert!(e.to_string().contains("unauthenticated"), "{e}");
    assert!(!e.to_string().contains(wrong));
    // Another merchant's key.
    let other = create_key(
        &app,
        &json!({"kind": "merchant", "merchant": OTHER_MERCHANT}),
    )
    .await;
    let e = snapshop::import::run(options(&app, &other, &file))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("forbidden"), "{e}");
    // A header the importer does not know.
    let bad = write(&dir, "bad.csv", "id,title,colour,image\n");
    let e = snapshop::import::run(options(&app, ADMIN_KEY, &bad))
        .await
        .unwrap_err();
    assert!(matches!(e, ImportError::Input(_)), "{e}");
    app.get_product(MERCHANT, &products[0].id)
        .await
        .assert_error(404, "product_not_found");
}

//! `/v1/merchants/{merchant}/products`: create, read, list, update, add images, delete, and
//! read an image file.

use serde_json::{json, Value};
use sha2::Digest;

use crate::common::*;

/// Every product is created with its tags, images and attributes; a tag the model lacks is
/// reported, not refused.
#[tokio::test]
async fn create_returns_the_product_and_tags_unknown_to_the_model() {
    let (_app, cat) = catalogue_app().await;
    for (i, (p, created)) in cat.products.iter().zip(&cat.created).enumerate() {
        assert_eq!(created["id"], p.id.as_str());
        assert_eq!(created["merchant"], MERCHANT);
        assert_eq!(created["images"].as_array().unwrap().len(), p.shop.len());
        assert_eq!(created["attributes"]["price"], 10 + i);
        let unknown = created["unknown_to_model"].as_array().unwrap();
        if i == 0 {
            assert_eq!(unknown, &vec![json!(OWN_TAG)]);
        } else {
            assert!(unknown.is_empty(), "{created}");
        }
    }
}

#[tokio::test]
async fn get_returns_the_product() {
    let (app, cat) = catalogue_app().await;
    let id = &cat.products[2].id;
    let got = app.get_product(MERCHANT, id).await.assert_status(200).json;
    assert_eq!(got["title"], format!("Product {id}"));
}

/// An image file comes back as stored, typed, immutable, with its sha256 as `ETag`; only under
/// its own product and merchant.
#[tokio::test]
async fn get_image_returns_the_stored_file() {
    let (app, cat) = catalogue_app().await;
    let (p, created) = (&cat.products[0], &cat.created[0]);
    let image = &created["images"][0];
    let image_id = image["id"].to_string();
    let sha = image["sha256"].as_str().unwrap();
    let r = app.get_image(MERCHANT, &p.id, &image_id).await;
    let r = r.assert_status(200);
    assert_eq!(r.bytes, std::fs::read(&p.shop[0]).unwrap());
    assert_eq!(hex::encode(sha2::Sha256::digest(&r.bytes)), sha);
    assert_eq!(r.header("content-type"), Some(mime_of(&p.shop[0])));
    assert_eq!(r.header("etag"), Some(format!("\"{sha}\"").as_str()));
    assert!(r.header("cache-control").unwrap().contains("immutable"));

    let etag = format!("\"{sha}\"");
    let again = app
        .get_image(MERCHANT, &p.id, &image_id)
        .header("if-none-match", &etag);
    let again = again.await;
    assert_eq!(again.status, 304);
    assert!(again.bytes.is_empty());

    // Another product's image, the same image under another merchant, and images that do not
    // exist are all 404 product_not_found.
    let theirs = cat.created[1]["images"][0]["id"].to_string();
    let other = &cat.other.id;
    for (merchant, id, image) in [
        (MERCHANT, p.id.as_str(), theirs.as_str()),
        (OTHER_MERCHANT, other.as_str(), theirs.as_str()),
        (OTHER_MERCHANT, p.id.as_str(), image_id.as_str()),
        (MERCHANT, p.id.as_str(), "999999"),
        (MERCHANT, p.id.as_str(), "one"),
        (MERCHANT, "no-such-product", image_id.as_str()),
    ] {
        app.get_image(merchant, id, image).await.assert_error_for(
            &format!("{merchant}/{id}/images/{image}"),
            404,
            "product_not_found",
        );
    }
}

/// Pages of 3 follow `next_cursor` through the merchant's products in creation order.
#[tokio::test]
async fn list_pages_through_the_products_in_creation_order() {
    let (app, cat) = catalogue_app().await;
    let mut listed = Vec::new();
    // The first page is asked with an empty cursor.
    let mut cursor = String::new();
    loop {
        let page = app
            .list_products(MERCHANT, Some(3), Some(&cursor))
            .await
            .json;
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
        cat.products
            .iter()
            .map(|p| p.id.clone())
            .collect::<Vec<_>>()
    );
}

/// Retitles and retags `products[3]` (adding `season:winter`); returns the PATCH body.
pub async fn rename_and_retag(app: &TestApp, cat: &Catalogue) -> Value {
    let upd = &cat.products[3];
    let mut new_tags = upd.tags.clone();
    new_tags.push("season:winter".into());
    let patch = json!({"title": "Renamed", "tags": new_tags});
    app.patch_product(MERCHANT, &upd.id, &patch)
        .await
        .assert_status(200)
        .json
}

/// Adds a street photo (else a shop image) to `products[4]`; returns the 201 body.
pub async fn add_an_image(app: &TestApp, cat: &Catalogue) -> Value {
    let extra = &cat.products[4];
    app.add_images(MERCHANT, &extra.id, &[extra.photo()])
        .await
        .assert_status(201)
        .json
}

/// Deletes the second product with street photos; returns it.
pub async fn delete_one(app: &TestApp, cat: &Catalogue) -> FixtureProduct {
    let gone = cat.queries()[1].clone();
    let r = app.delete_product(MERCHANT, &gone.id).await;
    assert_eq!(r.status, 204);
    gone
}

/// Title and tags change; the tag change re-embeds and shows in search results.
#[tokio::test]
async fn patch_renames_and_retags_and_search_sees_it() {
    let (app, cat) = changes_app().await;
    let patched = rename_and_retag(&app, cat).await;
    assert_eq!(patched["title"], "Renamed");
    assert!(patched["tags"]
        .as_array()
        .unwrap()
        .contains(&json!("season:winter")));
    let upd = &cat.products[3];
    let r = app.search(&upd.photo(), "k=20&filter=season:winter").await;
    let body = r.assert_status(200).json;
    assert_eq!(ids(&body), vec![upd.id.clone()]);
    assert_eq!(body["results"][0]["title"], "Renamed");
}

#[tokio::test]
async fn add_images_appends_to_the_product() {
    let (app, cat) = changes_app().await;
    let with_extra = add_an_image(&app, cat).await;
    assert_eq!(
        with_extra["images"].as_array().unwrap().len(),
        cat.products[4].shop.len() + 1
    );
}

/// Delete: gone from search at once, 404 afterwards.
#[tokio::test]
async fn delete_removes_the_product_from_search_at_once() {
    let (app, cat) = changes_app().await;
    let gone = delete_one(&app, cat).await;
    let r = app
        .search(&gone.user[0], "k=100&merchant=acme&candidates=1024")
        .await;
    assert!(!ids(&r.assert_status(200).json).contains(&gone.id));
    app.get_product(MERCHANT, &gone.id)
        .await
        .assert_error(404, "product_not_found");
}

/// `DELETE …/images/{image_id}`: one image goes (from the product and from search at once),
/// the version moves, `If-Match` is honoured, a foreign image is `image_not_found`, a product
/// left without images stays readable but unfindable, and a file another product shares stays.
#[tokio::test]
async fn delete_image_takes_one_image_out_of_the_product_and_of_search() {
    let app = spawn_fake_app().await;
    let photos = fixture_photos(3);
    let p = app
        .create_product(
            MERCHANT,
            &json!({"id": "two-photos", "title": "Two photos"}),
            &photos[..2],
        )
        .await
        .assert_status(201);
    let other = app
        .create_product(
            MERCHANT,
            &json!({"id": "shares-a-photo", "title": "Shares"}),
            &[photos[0].clone(), photos[2].clone()],
        )
        .await
        .assert_status(201)
        .json;
    let etag = p.header("etag").unwrap().to_owned();
    let (first, second) = (
        p.json["images"][0]["id"].as_i64().unwrap(),
        p.json["images"][1]["id"].as_i64().unwrap(),
    );
    let image_path =
        |id: &str, image: i64| format!("{}/images/{image}", product_path(MERCHANT, id));
    let found_images = |body: &Value| -> Vec<i64> {
        results(body)
            .iter()
            .filter(|r| r["product_id"] == "two-photos")
            .map(|r| r["image_id"].as_i64().unwrap())
            .collect()
    };
    let before = app
        .search(&photos[1], "k=10&group=image&merchant=acme")
        .await
        .assert_status(200)
        .json;
    assert!(found_images(&before).contains(&second), "{before}");

    // Refusals change nothing.
    let foreign = other["images"][1]["id"].as_i64().unwrap();
    app.request(reqwest::Method::DELETE, &image_path("two-photos", foreign))
        .await
        .assert_error(404, "image_not_found");
    app.request(
        reqwest::Method::DELETE,
        &format!("{}/images/x1", product_path(MERCHANT, "two-photos")),
    )
    .await
    .assert_error(404, "image_not_found");
    app.request(
        reqwest::Method::DELETE,
        &image_path("no-such-product", second),
    )
    .await
    .assert_error(404, "product_not_found");
    let stale = app
        .patch_product(MERCHANT, "two-photos", &json!({"title": "Two photos!"}))
        .await
        .assert_status(200);
    app.request(reqwest::Method::DELETE, &image_path("two-photos", second))
        .header("if-match", &etag)
        .await
        .assert_error(412, "version_conflict");

    // The delete: the body is the product as GET shows it, with a new ETag.
    let current = stale.header("etag").unwrap().to_owned();
    let deleted = app
        .request(reqwest::Method::DELETE, &image_path("two-photos", second))
        .header("if-match", &current)
        .await
        .assert_status(200);
    assert_eq!(deleted.json["version"], 3);
    assert_eq!(deleted.json["images"].as_array().unwrap().len(), 1);
    assert_eq!(deleted.json["images"][0]["id"], first);
    let got = app
        .get_product(MERCHANT, "two-photos")
        .await
        .assert_status(200);
    assert_eq!(got.json, deleted.json);
    assert_eq!(got.header("etag"), deleted.header("etag"));
    assert_ne!(deleted.header("etag"), Some(current.as_str()));
    app.get_image(MERCHANT, "two-photos", &second.to_string())
        .await
        .assert_error(404, "product_not_found");
    let after = app
        .search(&photos[1], "k=10&group=image&merchant=acme")
        .await
        .assert_status(200)
        .json;
    assert!(
        !found_images(&after).contains(&second),
        "gone from search at once: {after}"
    );
    assert!(
        after["index_version"].as_i64() > before["index_version"].as_i64(),
        "the index version moved: {} then {}",
        before["index_version"],
        after["index_version"]
    );

    // The last image: the product stays, without images, and no search finds it.
    let bare = app
        .request(reqwest::Method::DELETE, &image_path("two-photos", first))
        .await
        .assert_status(200)
        .json;
    assert_eq!(bare["images"], json!([]));
    app.get_product(MERCHANT, "two-photos")
        .await
        .assert_status(200);
    let none = app
        .search(&photos[0], "k=50&group=image&merchant=acme")
        .await
        .assert_status(200)
        .json;
    assert!(found_images(&none).is_empty(), "{none}");
    // The file it shared with another product is still served for that one.
    let shared = other["images"][0]["id"].to_string();
    let file = app
        .get_image(MERCHANT, "shares-a-photo", &shared)
        .await
        .assert_status(200);
    assert_eq!(file.bytes, std::fs::read(&photos[0]).unwrap());
    app.stop().await;
}

/// The ids of the merchant's products, in creation order.
async fn listed(app: &TestApp) -> Vec<String> {
    let list = app
        .list_products(MERCHANT, None, None)
        .await
        .assert_status(200)
        .json;
    list["products"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect()
}

/// `POST …/products:purge`: refused without `force`, counted by a dry run, then exactly the
/// products the filter matches go (from the store and from search), and without a filter all.
#[tokio::test]
async fn purge_deletes_the_filtered_products_only_when_forced() {
    let app = spawn_fake_app().await;
    let photos = fixture_photos(4);
    let purge_path = format!("{}:purge", products_path(MERCHANT));
    for (i, (id, tags)) in [
        ("red-dress", vec!["category:dress", "color:red"]),
        ("blue-dress", vec!["category:dress", "color:blue"]),
        ("green-dress", vec!["category:dress", "color:green"]),
        ("red-skirt", vec!["category:skirt", "color:red"]),
    ]
    .into_iter()
    .enumerate()
    {
        app.create_product(
            MERCHANT,
            &json!({"id": id, "title": id, "tags": tags}),
            &photos[i..i + 1],
        )
        .await
        .assert_status(201);
    }
    app.create_product(
        OTHER_MERCHANT,
        &json!({"id": "red-dress", "title": "theirs", "tags": ["category:dress", "color:red"]}),
        &photos[..1],
    )
    .await
    .assert_status(201);
    let purge = |body: Value| app.request(reqwest::Method::POST, &purge_path).json(&body);
    let filter = "category:dress,color:red|color:blue";
    purge(json!({"filter": filter}))
        .await
        .assert_error(400, "confirmation_required");
    purge(json!({"filter": filter, "force": false}))
        .await
        .assert_error(400, "confirmation_required");
    purge(json!({"filter": "nocolon", "force": true}))
        .await
        .assert_error(400, "invalid_filter");
    purge(json!({"force": true, "everything": true}))
        .await
        .assert_error(422, "invalid_field");
    assert_eq!(listed(&app).await.len(), 4, "nothing went");
    let dry = purge(json!({"filter": filter, "dry_run": true}))
        .await
        .assert_status(200)
        .json;
    assert_eq!(
        dry,
        json!({"deleted": 0, "matched": 2, "images": 2, "dry_run": true})
    );
    assert_eq!(listed(&app).await.len(), 4, "a dry run deletes nothing");

    let before = app
        .search(&photos[0], "k=10&merchant=acme")
        .await
        .assert_status(200)
        .json;
    assert!(ids(&before).contains(&"red-dress".to_string()), "{before}");
    let done = purge(json!({"filter": {"all": [["category:dress"], ["color:red", "color:blue"]]}, "force": true}))
        .await
        .assert_status(200)
        .json;
    assert_eq!(
        done,
        json!({"deleted": 2, "matched": 2, "images": 2, "dry_run": false})
    );
    assert_eq!(listed(&app).await, ["green-dress", "red-skirt"]);
    app.get_product(MERCHANT, "red-dress")
        .await
        .assert_error(404, "product_not_found");
    let after = app
        .search(&photos[0], "k=10&merchant=acme")
        .await
        .assert_status(200)
        .json;
    let left = ids(&after);
    assert!(
        !left.contains(&"red-dress".to_string()) && !left.contains(&"blue-dress".to_string()),
        "purged products leave search at once: {left:?}"
    );
    assert!(after["index_version"].as_i64() > before["index_version"].as_i64());
    app.get_product(OTHER_MERCHANT, "red-dress")
        .await
        .assert_status(200);
    let merchant = app
        .request(reqwest::Method::GET, &format!("/v1/merchants/{MERCHANT}"))
        .await
        .assert_status(200)
        .json;
    assert_eq!(
        (merchant["products"].as_i64(), merchant["images"].as_i64()),
        (Some(2), Some(2))
    );

    let all = purge(json!({"force": true})).await.assert_status(200).json;
    assert_eq!(all["deleted"], 2);
    assert!(listed(&app).await.is_empty());
    let nothing = purge(json!({"force": true})).await.assert_status(200).json;
    assert_eq!(nothing["deleted"], 0);
    app.stop().await;
}

/// The purge route is a custom method of the collection (`products:purge`): a product whose id
/// is `purge` keeps every route of its own.
#[tokio::test]
async fn a_product_called_purge_keeps_its_routes() {
    let app = spawn_fake_app().await;
    let photos = fixture_photos(2);
    let created = app
        .create_product(
            MERCHANT,
            &json!({"id": "purge", "title": "Called purge"}),
            &photos[..1],
        )
        .await
        .assert_status(201)
        .json;
    let got = app
        .get_product(MERCHANT, "purge")
        .await
        .assert_status(200)
        .json;
    assert_eq!(got, created);
    app.patch_product(MERCHANT, "purge", &json!({"title": "Still purge"}))
        .await
        .assert_status(200);
    let added = app
        .add_images(MERCHANT, "purge", &photos[1..2])
        .await
        .assert_status(201)
        .json;
    let image = added["images"][1]["id"].as_i64().unwrap();
    app.get_image(MERCHANT, "purge", &image.to_string())
        .await
        .assert_status(200);
    app.request(
        reqwest::Method::DELETE,
        &format!("{}/images/{image}", product_path(MERCHANT, "purge")),
    )
    .await
    .assert_status(200);
    // POST on the product is no purge: that route has no POST.
    app.request(reqwest::Method::POST, &product_path(MERCHANT, "purge"))
        .json(&json!({"force": true}))
        .await
        .assert_error(405, "method_not_allowed");
    app.get_product(MERCHANT, "purge").await.assert_status(200);
    app.delete_product(MERCHANT, "purge")
        .await
        .assert_status(204);
    app.stop().await;
}

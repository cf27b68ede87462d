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

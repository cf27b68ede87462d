//! HEIC/HEIF photos (what iPhones write) on ingest and search, with the real model: a product
//! ingested from a HEIC shop photo is found by a HEIC street photo stored sideways (irot), as
//! its JPEG twin is; HEIC bombs are refused with 413 before decoding. The fixtures are made by
//! `tests/fixtures/heic/make_heic_fixtures.py`.

use reqwest::multipart::{Form, Part};
use serde_json::json;

use crate::common::*;

/// The catalogue product whose photos have HEIC copies in `tests/fixtures/heic`.
const HEIC_PRODUCT: &str = "p02400";

fn heic(name: &str) -> Vec<u8> {
    std::fs::read(root().join("tests/fixtures/heic").join(name)).unwrap()
}

fn heic_part(name: &str, mime: &str) -> Part {
    Part::bytes(heic(name))
        .file_name(name.to_owned())
        .mime_str(mime)
        .unwrap()
}

#[tokio::test]
async fn heic_photos_are_ingested_and_searched_like_jpeg() {
    let app = spawn_app().await;
    let products = catalogue();
    let target = products
        .iter()
        .position(|p| p.id == HEIC_PRODUCT)
        .expect("p02400 is in the fixture catalogue");

    // The catalogue, with the HEIC product's shop photo sent as HEIC (multipart, image/heic).
    for p in &products {
        let body = json!({"id": p.id, "title": format!("Product {}", p.id), "tags": p.tags});
        if p.id == HEIC_PRODUCT {
            let created = app
                .create_product_raw(
                    MERCHANT,
                    Some(&body.to_string()),
                    vec![heic_part("p02400_shop_0.heic", "image/heic")],
                )
                .await
                .assert_status(201)
                .json;
            let image = &created["images"][0];
            assert_eq!(image["format"], "heic", "{created}");
            assert_eq!(
                (image["width"].as_u64(), image["height"].as_u64()),
                (Some(256), Some(320))
            );
            // Stored as sent.
            let got = app
                .get_image(MERCHANT, HEIC_PRODUCT, &image["id"].to_string())
                .await
                .assert_status(200);
            assert_eq!(got.bytes, heic("p02400_shop_0.heic"));
            assert_eq!(got.header("content-type"), Some("image/heic"));
        } else {
            app.create_product(MERCHANT, &body, &p.shop)
                .await
                .assert_status(201);
        }
    }

    // The street photo as JPEG, then as HEIC stored sideways with irot (raw body, image/heic).
    let jpeg = app
        .search(&products[target].user[0], "k=5&merchant=acme")
        .await
        .assert_status(200)
        .json;
    let r = app
        .search_bytes(
            "image/heic",
            heic("p02400_user_0_rot.heic"),
            "k=5&merchant=acme",
        )
        .await
        .assert_status(200);
    let decode_ms: f64 = r.header("x-decode-time").unwrap().parse().unwrap();
    let body = r.json;
    let (from_jpeg, from_heic) = (ids(&jpeg), ids(&body));
    eprintln!("JPEG query: {from_jpeg:?}; HEIC query (irot): {from_heic:?}; decode {decode_ms} ms");
    // The same first product as the JPEG: decoding (upright: the unit tests check the size and
    // corners) and the lossy re-encoding move the embedding too little to change it.
    assert_eq!(
        from_heic[0], from_jpeg[0],
        "JPEG {from_jpeg:?}, HEIC {from_heic:?}"
    );
    if trained_bundle() {
        assert!(
            from_heic.contains(&HEIC_PRODUCT.to_string()),
            "the HEIC product is not in the top 5 of its HEIC street photo: {from_heic:?}"
        );
    }

    // Multipart with image/heif works the same; the content type is a hint, the bytes decide.
    let form = Form::new().part("image", heic_part("p02400_user_0_rot.heic", "image/heif"));
    let multi = app.search_form(form).await.assert_status(200).json;
    assert_eq!(ids(&multi)[0], from_heic[0]);
    app.stop().await;
}

/// HEIC files whose `ispe` promises a huge image are refused from the header, with the same
/// error as PNG bombs; a truncated HEIC is undecodable, not a 500.
#[tokio::test]
async fn heic_bombs_and_broken_heic_are_refused() {
    let (app, _) = one_product_app().await;
    for name in ["bomb_ispe_20000.heic", "bomb_ispe_65535.heic"] {
        let e = app
            .search_bytes("image/heic", heic(name), "")
            .await
            .assert_error_for(name, 413, "image_too_large");
        assert!(
            e["error"]["message"].as_str().unwrap().contains("pixels"),
            "{e}"
        );
    }
    let small = heic("small.heic");
    app.search_bytes("image/heic", small[..small.len() / 2].to_vec(), "")
        .await
        .assert_error_for("half a HEIC", 422, "image_undecodable");
    app.search_bytes("image/heic", small, "")
        .await
        .assert_status(200);
}

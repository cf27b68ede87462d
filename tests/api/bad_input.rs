//! Every kind of bad input gets its own status and error code (docs/api.md, "Errors"), is
//! counted in `snapshop_errors_total` by code, and leaves nothing half-created.

use reqwest::Method;
use serde_json::json;

use crate::common::*;

/// A bad request: what it is, the request, and the status and code it must get.
type Case = (&'static str, Call, u16, &'static str);

/// Sends the cases in order, each after the previous one's answer.
async fn check(cases: Vec<Case>) {
    for (what, call, status, code) in cases {
        call.await.assert_error_for(what, status, code);
    }
}

/// Asserts that errors of each code were counted.
async fn assert_counted(app: &TestApp, codes: &[&str]) {
    let m = app.metrics().await.text;
    for code in codes {
        assert!(
            m.contains(&format!("snapshop_errors_total{{code=\"{code}\"}}")),
            "{code}"
        );
    }
}

/// An app of its own with the body limit of the shared [`one_product_app`].
async fn spawn_one_product_app() -> TestApp {
    let limit = |c: &mut snapshop::Config| c.limits.max_body_bytes = BAD_INPUT_BODY_LIMIT;
    spawn_fake_app_with(new_data_dir(), limit).await
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

const GIF: &[u8] = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;";

#[tokio::test]
async fn search_bodies_that_are_not_acceptable_images() {
    // An app of its own, on this test's runtime: a server on another runtime's threads may
    // close the connection on a 413 before the client has read it (`IncompleteMessage`).
    let app = spawn_one_product_app().await;
    let big = vec![0xff; 3 * 1024 * 1024];
    let big_form = Form::new().part("image", jpeg_part(big.clone()));
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        ("text body", app.search_bytes("text/plain", b"hello".to_vec(), ""), 415, "unsupported_media_type"),
        ("no body, no content type", app.request(Method::POST, "/v1/search"), 415, "unsupported_media_type"),
        ("garbage declared as a JPEG", app.search_bytes("image/jpeg", b"not a jpeg at all".to_vec(), ""), 422, "image_undecodable"),
        ("a GIF", app.search_bytes("image/gif", GIF.to_vec(), ""), 415, "unsupported_media_type"),
        ("a PNG announcing 10^10 pixels", app.search_bytes("image/png", png_bomb(), ""), 413, "image_too_large"),
        ("a 3 MiB raw body", app.search_bytes("image/jpeg", big, ""), 413, "payload_too_large"),
        ("a 3 MiB multipart image", app.search_form(big_form), 413, "payload_too_large"),
        ("an empty image body", app.search_bytes("image/jpeg", Vec::new(), ""), 400, "invalid_request"),
    ];
    check(cases).await;
    let codes = [
        "unsupported_media_type",
        "image_undecodable",
        "image_too_large",
        "payload_too_large",
    ];
    assert_counted(&app, &codes).await;
    app.stop().await;
}

#[tokio::test]
async fn search_parameters_out_of_bounds_or_malformed() {
    let (app, p) = one_product_app().await;
    let bytes = std::fs::read(p.photo()).unwrap();
    let cases = [
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
    ];
    let cases = cases
        .into_iter()
        .map(|(query, code)| {
            (
                query,
                app.search_bytes("image/jpeg", bytes.clone(), query),
                400,
                code,
            )
        })
        .collect();
    check(cases).await;
    assert_counted(&app, &["invalid_filter"]).await;
}

#[tokio::test]
async fn search_multipart_mistakes() {
    let (app, p) = one_product_app().await;
    let jpeg = p.photo();
    let options = |text: &str| {
        Form::new()
            .part("options", Part::text(text.to_owned()))
            .part("image", image_part(&jpeg))
    };
    let two_images = Form::new()
        .part("image", image_part(&jpeg))
        .part("image", image_part(&jpeg));
    let cut_body = "--xyz\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\nabc";
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        ("options not JSON", app.search_form(options("{\"k\": 3")), 400, "malformed_json"),
        ("options of a wrong type", app.search_form(options("{\"k\": \"three\"}")), 422, "invalid_field"),
        ("options with a bad filter", app.search_form(options("{\"filter\": {\"all\": \"x\"}}")), 400, "invalid_filter"),
        ("options but no image", app.search_form(Form::new().part("options", Part::text("{}"))), 400, "invalid_request"),
        ("two images", app.search_form(two_images), 400, "invalid_request"),
        ("an image part not named image", app.search_form(Form::new().part("photo", image_part(&jpeg))), 400, "invalid_request"),
        ("a multipart body cut short", app.search_bytes("multipart/form-data; boundary=xyz", cut_body.into(), ""), 400, "invalid_request"),
    ];
    check(cases).await;
    assert_counted(&app, &["malformed_json"]).await;
}

#[tokio::test]
async fn product_uploads_that_are_refused_leave_nothing_behind() {
    let (app, p) = one_product_app().await;
    let one = || vec![image_part(&p.shop[0])];
    let create =
        |product: &str, images: Vec<Part>| app.create_product_raw(MERCHANT, Some(product), images);
    let bad_image = |id: &str, bytes: &[u8]| {
        create(
            &json!({"id": id, "title": "t"}).to_string(),
            vec![jpeg_part(bytes.to_vec())],
        )
    };
    let whole = std::fs::read(&p.shop[0]).unwrap();
    let dup = json!({"id": p.id, "title": "again"}).to_string();
    let json_body = app
        .request(Method::POST, &products_path(MERCHANT))
        .json(&json!({"id": "x", "title": "t"}));
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        ("product not JSON", create("{\"id\": \"x\", ", one()), 400, "malformed_json"),
        ("no product part", app.create_product_raw(MERCHANT, None, one()), 400, "invalid_request"),
        ("id not a string", create("{\"id\": 5, \"title\": \"t\"}", one()), 422, "invalid_field"),
        ("no title", create("{\"id\": \"x\"}", one()), 422, "invalid_field"),
        ("an unknown field", create("{\"id\": \"x\", \"title\": \"t\", \"colour\": 1}", one()), 422, "invalid_field"),
        ("a tag without a colon", create("{\"id\": \"x\", \"title\": \"t\", \"tags\": [\"nocolon\"]}", one()), 422, "invalid_field"),
        ("attributes not an object", create("{\"id\": \"x\", \"title\": \"t\", \"attributes\": [1]}", one()), 422, "invalid_field"),
        ("no image", create("{\"id\": \"x\", \"title\": \"t\"}", vec![]), 422, "invalid_field"),
        ("a blank title", create("{\"id\": \"x\", \"title\": \" \"}", one()), 422, "invalid_field"),
        ("an existing id", create(&dup, one()), 409, "product_exists"),
        ("a JSON body, not multipart", json_body, 415, "unsupported_media_type"),
        ("an image of garbage", bad_image("bad-image", b"garbage"), 422, "image_undecodable"),
        ("... which is not created", app.get_product(MERCHANT, "bad-image"), 404, "product_not_found"),
        // A JPEG cut off mid-upload is refused (as Pillow refuses it), not stored padded with grey.
        ("a JPEG cut in half", bad_image("cut-image", &whole[..whole.len() / 2]), 422, "image_undecodable"),
        ("... which is not created", app.get_product(MERCHANT, "cut-image"), 404, "product_not_found"),
        ("a bad merchant name", app.create_product_raw("bad%20merchant", Some(&dup), vec![]), 422, "invalid_field"),
    ];
    check(cases).await;
    // Errors are counted by code; the products that failed are not half-created.
    assert_counted(
        &app,
        &[
            "product_exists",
            "image_undecodable",
            "unsupported_media_type",
            "malformed_json",
        ],
    )
    .await;
    let ready = app.readyz().await.json;
    assert_eq!(ready["products"], 1);
}

#[tokio::test]
async fn product_reads_updates_and_lists_that_are_refused() {
    let (app, p) = one_product_app().await;
    let bytes = std::fs::read(p.photo()).unwrap();
    let path = product_path(MERCHANT, &p.id);
    let patch_body = |body: &'static str| app.request(Method::PATCH, &path).body(body);
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        ("get a missing product", app.get_product(MERCHANT, "missing"), 404, "product_not_found"),
        ("delete a missing product", app.delete_product(MERCHANT, "missing"), 404, "product_not_found"),
        ("patch a missing product", app.patch_product(MERCHANT, "missing", &json!({"title": "x"})), 404, "product_not_found"),
        ("add an image to a missing product", app.add_image_bytes(MERCHANT, "missing", "image/jpeg", bytes), 404, "product_not_found"),
        ("patch not JSON", patch_body("{\"title\": ").content_type("application/json"), 400, "malformed_json"),
        ("patch without a content type", patch_body("{\"title\": \"x\"}"), 415, "unsupported_media_type"),
        ("patch a tag without a colon", app.patch_product(MERCHANT, &p.id, &json!({"tags": ["bad"]})), 422, "invalid_field"),
        ("patch an unknown field", app.patch_product(MERCHANT, &p.id, &json!({"price": 3})), 422, "invalid_field"),
        ("list with limit=0", app.list_products(MERCHANT, Some(0), None), 400, "invalid_request"),
        ("list with a bad cursor", app.list_products(MERCHANT, None, Some("zz")), 400, "invalid_request"),
    ];
    check(cases).await;
}

#[tokio::test]
async fn unknown_routes_and_methods() {
    let (app, _) = one_product_app().await;
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        ("an unknown path", app.request(Method::GET, "/v1/nope"), 404, "route_not_found"),
        ("PUT on search", app.request(Method::PUT, "/v1/search"), 405, "method_not_allowed"),
    ];
    check(cases).await;
}

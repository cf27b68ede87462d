//! Tenant isolation, tested like an attacker would: every operation of the served OpenAPI spec ×
//! every kind of caller × the caller's own and a foreign merchant, against a rule table written
//! here, independently of the server's own rules. An operation without a rule fails the test, so
//! a new route cannot ship without one.
//!
//! Each cell sends a request that would succeed for a caller allowed to make it (a valid body, an
//! existing product made fresh for the cell), so that a missing check cannot hide behind a 400.
//! A refused write must leave its target exactly as it was; a refused read must not show the
//! target's data.

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::json;

use crate::common::*;

const A: &str = "iso-a";
const B: &str = "iso-b";

/// Who may call an operation.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Rule {
    /// No key needed.
    Public,
    /// Any valid key, whatever the merchant.
    AnyKey,
    /// Any valid key whose search scope holds the merchant (see the search tests below).
    Search,
    /// Admin keys only.
    Admin,
    /// Admin keys, and the path merchant's own merchant key.
    Merchant,
    /// Admin keys, and merchant keys for their own merchant's keys.
    Keys,
    /// What search results show: admin keys, the merchant's own key, and search keys whose
    /// scope holds the merchant.
    View,
}

/// The rule table: (method, path template) → rule.
const RULES: &[(&str, &str, Rule)] = &[
    ("get", "/healthz", Rule::Public),
    ("get", "/readyz", Rule::Public),
    ("get", "/metrics", Rule::Public),
    ("get", "/", Rule::Public),
    ("get", "/console", Rule::Public),
    ("get", "/assets/{name}", Rule::Public),
    ("get", "/openapi.json", Rule::Public),
    ("get", "/docs", Rule::Public),
    ("get", "/docs/", Rule::Public),
    ("get", "/v1/tags", Rule::AnyKey),
    ("get", "/v1/whoami", Rule::AnyKey),
    ("post", "/v1/search", Rule::Search),
    ("get", "/v1/admin/model", Rule::Admin),
    ("post", "/v1/admin/model", Rule::Admin),
    ("get", "/v1/merchants", Rule::Admin),
    ("get", "/v1/merchants/{merchant}", Rule::Merchant),
    ("put", "/v1/merchants/{merchant}", Rule::Admin),
    ("post", "/v1/merchants/{merchant}/products", Rule::Merchant),
    ("get", "/v1/merchants/{merchant}/products", Rule::Merchant),
    (
        "get",
        "/v1/merchants/{merchant}/products/{id}",
        Rule::Merchant,
    ),
    (
        "patch",
        "/v1/merchants/{merchant}/products/{id}",
        Rule::Merchant,
    ),
    (
        "delete",
        "/v1/merchants/{merchant}/products/{id}",
        Rule::Merchant,
    ),
    (
        "post",
        "/v1/merchants/{merchant}/products/{id}/images",
        Rule::Merchant,
    ),
    (
        "get",
        "/v1/merchants/{merchant}/products/{id}/images/{image_id}",
        Rule::View,
    ),
    (
        "delete",
        "/v1/merchants/{merchant}/products/{id}/images/{image_id}",
        Rule::Merchant,
    ),
    (
        "post",
        "/v1/merchants/{merchant}/products:purge",
        Rule::Merchant,
    ),
    ("post", "/v1/merchants/{merchant}/imports", Rule::Merchant),
    ("get", "/v1/merchants/{merchant}/imports", Rule::Merchant),
    (
        "get",
        "/v1/merchants/{merchant}/imports/{job}",
        Rule::Merchant,
    ),
    (
        "post",
        "/v1/merchants/{merchant}/imports/{job}/cancel",
        Rule::Merchant,
    ),
    ("post", "/v1/keys", Rule::Keys),
    ("get", "/v1/keys", Rule::Keys),
    ("get", "/v1/keys/{id}", Rule::Keys),
    ("delete", "/v1/keys/{id}", Rule::Keys),
];

/// The callers of the table. Merchant and search keys belong to merchant A.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Who {
    Anonymous,
    UnknownKey,
    RevokedKey,
    ExpiredKey,
    Admin,
    MerchantA,
    SearchA,
    SearchAll,
}

const WHO: &[Who] = &[
    Who::Anonymous,
    Who::UnknownKey,
    Who::RevokedKey,
    Who::ExpiredKey,
    Who::Admin,
    Who::MerchantA,
    Who::SearchA,
    Who::SearchAll,
];

/// Whether `who` may call an operation of `rule` on `merchant`'s data.
fn allowed(rule: Rule, who: Who, merchant: &str) -> bool {
    let valid = !matches!(
        who,
        Who::Anonymous | Who::UnknownKey | Who::RevokedKey | Who::ExpiredKey
    );
    match rule {
        Rule::Public => true,
        Rule::AnyKey => valid,
        Rule::Search => valid && (merchant == A || !matches!(who, Who::MerchantA | Who::SearchA)),
        Rule::Admin => who == Who::Admin,
        Rule::View => {
            who == Who::Admin
                || who == Who::SearchAll
                || (matches!(who, Who::MerchantA | Who::SearchA) && merchant == A)
        }
        Rule::Merchant | Rule::Keys => {
            who == Who::Admin || (who == Who::MerchantA && merchant == A)
        }
    }
}

struct Keys {
    merchant_a: String,
    search_a: String,
    search_all: String,
    revoked: String,
    expired: String,
}

impl Keys {
    fn token(&self, who: Who) -> Option<&str> {
        match who {
            Who::Anonymous => None,
            Who::UnknownKey => Some("sk_live_0000000000000000000000000000000000000000"),
            Who::RevokedKey => Some(&self.revoked),
            Who::ExpiredKey => Some(&self.expired),
            Who::Admin => Some(ADMIN_KEY),
            Who::MerchantA => Some(&self.merchant_a),
            Who::SearchA => Some(&self.search_a),
            Who::SearchAll => Some(&self.search_all),
        }
    }
}

fn with(call: Call, keys: &Keys, who: Who) -> Call {
    match keys.token(who) {
        None => call.anonymous(),
        Some(t) => call.key(t),
    }
}

/// A fresh product of `merchant`, made by the admin; returns (id, image id).
async fn fresh_product(
    app: &TestApp,
    merchant: &str,
    n: usize,
    photo: &std::path::PathBuf,
) -> (String, i64) {
    let id = format!("cell-{n}");
    let r = app
        .create_product(merchant, &json!({"id": id, "title": format!("secret of {merchant} {n}"), "tags": ["category:dress"]}), std::slice::from_ref(photo))
        .await
        .assert_status(201);
    (id, r.json["images"][0]["id"].as_i64().unwrap())
}

/// A one-row import file naming the fixture photo by its hash (the seed product has it).
fn import_file(n: usize, photo: &std::path::Path) -> String {
    use sha2::{Digest, Sha256};
    let sha = hex::encode(Sha256::digest(std::fs::read(photo).unwrap()));
    format!("id,title,image\nimported-{n},Imported,sha256:{sha}\n")
}

/// A fresh import job of `merchant`, made by the admin (for the import routes' `{job}`).
async fn fresh_job(app: &TestApp, merchant: &str, n: usize, photo: &std::path::Path) -> String {
    app.request(Method::POST, &format!("/v1/merchants/{merchant}/imports"))
        .content_type("text/csv")
        .body(import_file(n, photo))
        .await
        .assert_status(202)
        .json["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A fresh key owned by `merchant` (for the key routes' `{id}`).
async fn fresh_key(app: &TestApp, merchant: &str) -> i64 {
    app.request(Method::POST, "/v1/keys")
        .json(&json!({"kind": "search", "merchant": merchant, "label": "target"}))
        .await
        .assert_status(201)
        .json["id"]
        .as_i64()
        .unwrap()
}

#[tokio::test]
async fn every_route_by_every_kind_of_key_for_own_and_foreign_merchants() {
    let app = spawn_fake_app().await;
    let photo = fixture_photos(1).remove(0);
    let keys = Keys {
        merchant_a: create_key(&app, &json!({"kind": "merchant", "merchant": A})).await,
        search_a: create_key(&app, &json!({"kind": "search", "merchant": A})).await,
        search_all: create_key(&app, &json!({"kind": "search"})).await,
        revoked: {
            let r = app
                .request(Method::POST, "/v1/keys")
                .json(&json!({"kind": "merchant", "merchant": A}))
                .await
                .assert_status(201);
            let id = r.json["id"].as_i64().unwrap();
            app.request(Method::DELETE, &format!("/v1/keys/{id}"))
                .await
                .assert_status(200);
            r.json["key"].as_str().unwrap().to_owned()
        },
        expired: {
            let r = app
                .request(Method::POST, "/v1/keys")
                .json(&json!({"kind": "merchant", "merchant": A, "expires_in_secs": 1}))
                .await
                .assert_status(201);
            r.json["key"].as_str().unwrap().to_owned()
        },
    };
    // Both merchants hold the same product, so a leak would show.
    for m in [A, B] {
        app.create_product(
            m,
            &json!({"id": "seed", "title": format!("seed of {m}")}),
            std::slice::from_ref(&photo),
        )
        .await
        .assert_status(201);
    }
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await; // the expired key expires

    let spec = app
        .request(Method::GET, "/openapi.json")
        .anonymous()
        .await
        .assert_status(200)
        .json;
    let mut ops: BTreeSet<(String, String)> = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                ops.insert((method.clone(), path.clone()));
            }
        }
    }
    let ruled: BTreeSet<(String, String)> = RULES
        .iter()
        .map(|(m, p, _)| (m.to_string(), p.to_string()))
        .collect();
    let unruled: Vec<_> = ops.difference(&ruled).collect();
    assert!(
        unruled.is_empty(),
        "operations without a rule in RULES: {unruled:?}"
    );
    let stale: Vec<_> = ruled.difference(&ops).collect();
    assert!(
        stale.is_empty(),
        "rules for operations the spec does not have: {stale:?}"
    );

    let mut cells = 0;
    let mut n = 0;
    for &(method, template, rule) in RULES {
        for &who in WHO {
            for merchant in [A, B] {
                n += 1;
                cells += 1;
                let ok = allowed(rule, who, merchant);
                let what = format!("{method} {template} as {who:?} on {merchant}");
                // The target of the cell, made fresh for writes and for the routes with ids.
                let (pid, image_id) = if template.contains("{id}") && template.contains("products")
                {
                    fresh_product(&app, merchant, n, &photo).await
                } else {
                    (String::new(), 0)
                };
                let key_id = if template == "/v1/keys/{id}" {
                    fresh_key(&app, merchant).await
                } else {
                    0
                };
                // A purge's target: a fresh product with a tag of its own, which the purge's
                // filter names (so an allowed purge takes nothing another cell needs).
                let purge_tag = format!("cell:{n}");
                let purge_target = if template.ends_with("products:purge") {
                    app.create_product(
                        merchant,
                        &json!({"id": format!("purge-{n}"), "title": format!("secret of {merchant} {n}"), "tags": [purge_tag]}),
                        std::slice::from_ref(&photo),
                    )
                    .await
                    .assert_status(201);
                    format!("purge-{n}")
                } else {
                    String::new()
                };
                let job = if template.contains("{job}") {
                    fresh_job(&app, merchant, n, &photo).await
                } else {
                    String::new()
                };
                let path = template
                    .replace("{merchant}", merchant)
                    .replace("{job}", &job)
                    .replace("{image_id}", &image_id.to_string())
                    .replace("{name}", "app.js")
                    .replace(
                        "{id}",
                        &if template.starts_with("/v1/keys") {
                            key_id.to_string()
                        } else {
                            pid.clone()
                        },
                    );
                let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                let mut call = app.request(m, &path);
                call = match (method, template) {
                    ("post", "/v1/search") => call.multipart(
                        Form::new().part("image", image_part(&photo)).part(
                            "options",
                            Part::text(json!({"merchant": merchant}).to_string())
                                .mime_str("application/json")
                                .unwrap(),
                        ),
                    ),
                    ("post", "/v1/admin/model") => call.json(&json!({"bundle": "/nonexistent"})),
                    ("put", "/v1/merchants/{merchant}") => {
                        call.json(&json!({"max_products": null}))
                    }
                    ("post", "/v1/merchants/{merchant}/products") => call.multipart(
                        Form::new()
                            .part(
                                "product",
                                Part::text(
                                    json!({"id": format!("new-{n}"), "title": "t"}).to_string(),
                                )
                                .mime_str("application/json")
                                .unwrap(),
                            )
                            .part("image", image_part(&photo)),
                    ),
                    ("patch", _) => call.json(&json!({"title": "changed by an attacker"})),
                    ("post", "/v1/merchants/{merchant}/products:purge") => {
                        call.json(&json!({"filter": purge_tag, "force": true}))
                    }
                    ("post", "/v1/merchants/{merchant}/products/{id}/images") => {
                        call.multipart(Form::new().part("image", image_part(&photo)))
                    }
                    ("post", "/v1/keys") => {
                        call.json(&json!({"kind": "search", "merchant": merchant}))
                    }
                    ("post", "/v1/merchants/{merchant}/imports") => {
                        call.content_type("text/csv").body(import_file(n, &photo))
                    }
                    ("get", "/v1/keys") => {
                        app.request(Method::GET, &format!("/v1/keys?merchant={merchant}"))
                    }
                    _ => call,
                };
                let call = with(call, &keys, who);
                let r = call.await;
                if !purge_target.is_empty() {
                    let left = app.get_product(merchant, &purge_target).await.status;
                    assert_eq!(
                        left,
                        if ok { 404 } else { 200 },
                        "{what}: the purge's target (answered {} {})",
                        r.status,
                        r.text
                    );
                }
                if ok {
                    assert!(
                        (200..300).contains(&r.status)
                            || (r.status == 422 && template == "/v1/admin/model"),
                        "{what}: expected success, got {} {}",
                        r.status,
                        r.text
                    );
                    continue;
                }
                let valid = keys.token(who).is_some()
                    && !matches!(who, Who::UnknownKey | Who::RevokedKey | Who::ExpiredKey);
                if valid {
                    let code = r.json["error"]["code"].as_str().unwrap_or("");
                    assert!(
                        (r.status == 403 && code == "forbidden")
                            || (r.status == 404 && code == "key_not_found"),
                        "{what}: expected 403 forbidden (or 404 for a key), got {} {}",
                        r.status,
                        r.text
                    );
                } else {
                    assert_eq!(r.status, 401, "{what}: {}", r.text);
                    assert_eq!(r.json["error"]["code"], "unauthenticated", "{what}");
                    assert!(
                        r.header("www-authenticate").is_some(),
                        "{what}: WWW-Authenticate"
                    );
                }
                assert!(
                    !r.text.contains("secret of") && !r.text.contains("seed of"),
                    "{what}: a refusal shows data: {}",
                    r.text
                );
                // Nothing changed.
                if !pid.is_empty() {
                    let p = app
                        .get_product(merchant, &pid)
                        .await
                        .assert_status(200)
                        .json;
                    assert_eq!(
                        (p["version"].as_i64(), p["images"].as_array().unwrap().len()),
                        (Some(1), 1),
                        "{what}: the product changed"
                    );
                }
                if !job.is_empty() {
                    let j = app
                        .request(
                            Method::GET,
                            &format!("/v1/merchants/{merchant}/imports/{job}"),
                        )
                        .await
                        .assert_status(200)
                        .json;
                    assert_eq!(
                        j["cancel_requested"], false,
                        "{what}: the job was cancelled"
                    );
                }
                if key_id != 0 {
                    let k = app
                        .request(Method::GET, &format!("/v1/keys/{key_id}"))
                        .await
                        .assert_status(200)
                        .json;
                    assert_eq!(k["active"], true, "{what}: the key was revoked");
                }
            }
        }
    }
    // The refused creates made nothing.
    for m in [A, B] {
        let list = app
            .list_products(m, Some(200), None)
            .await
            .assert_status(200)
            .json;
        let made: Vec<_> = list["products"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["id"].as_str().unwrap().starts_with("new-"))
            .collect();
        let expected = RULES
            .iter()
            .filter(|(meth, t, _)| *meth == "post" && *t == "/v1/merchants/{merchant}/products")
            .map(|(_, _, r)| WHO.iter().filter(|w| allowed(*r, **w, m)).count())
            .sum::<usize>();
        assert_eq!(made.len(), expected, "products created in {m}");
    }
    // The refused import submissions made no job.
    for m in [A, B] {
        let jobs = app
            .request(Method::GET, &format!("/v1/merchants/{m}/imports?limit=100"))
            .await
            .assert_status(200)
            .json["imports"]
            .as_array()
            .unwrap()
            .len();
        let made_for_cells =
            RULES.iter().filter(|(_, t, _)| t.contains("{job}")).count() * WHO.len();
        let submitted = RULES
            .iter()
            .filter(|(meth, t, _)| *meth == "post" && *t == "/v1/merchants/{merchant}/imports")
            .map(|(_, _, r)| WHO.iter().filter(|w| allowed(*r, **w, m)).count())
            .sum::<usize>();
        assert_eq!(jobs, made_for_cells + submitted, "import jobs of {m}");
    }
    println!(
        "isolation table: {} operations x {} callers x 2 merchants = {cells} cells",
        RULES.len(),
        WHO.len()
    );
    assert_eq!(cells, RULES.len() * WHO.len() * 2);
    app.stop().await;
}

/// Guessing ids across merchants through one's own path finds nothing.
#[tokio::test]
async fn ids_of_another_merchant_are_not_found_through_ones_own_path() {
    let app = spawn_fake_app().await;
    let photo = fixture_photos(1).remove(0);
    let key_a = create_key(&app, &json!({"kind": "merchant", "merchant": A})).await;
    app.create_product(
        A,
        &json!({"id": "mine", "title": "a"}),
        std::slice::from_ref(&photo),
    )
    .await
    .assert_status(201);
    let theirs = app
        .create_product(
            B,
            &json!({"id": "theirs", "title": "secret b"}),
            std::slice::from_ref(&photo),
        )
        .await
        .assert_status(201)
        .json;
    let their_image = theirs["images"][0]["id"].as_i64().unwrap();
    app.get_product(A, "theirs")
        .key(&key_a)
        .await
        .assert_error(404, "product_not_found");
    app.get_image(A, "mine", &their_image.to_string())
        .key(&key_a)
        .await
        .assert_error(404, "product_not_found");
    app.patch_product(A, "theirs", &json!({"title": "x"}))
        .key(&key_a)
        .await
        .assert_error(404, "product_not_found");
    app.delete_product(A, "theirs")
        .key(&key_a)
        .await
        .assert_error(404, "product_not_found");
    // A merchant in the body or query other than the path's is not an escape either.
    app.create_product(
        A,
        &json!({"id": "x", "title": "t", "merchant": B}),
        std::slice::from_ref(&photo),
    )
    .key(&key_a)
    .await
    .assert_error(422, "invalid_field");
    let list = app
        .list_products(A, None, None)
        .key(&key_a)
        .await
        .assert_status(200);
    assert!(!list.text.contains("secret b"));
    assert_eq!(
        app.get_product(B, "theirs").await.assert_status(200).json["title"],
        "secret b"
    );
    app.stop().await;
}

/// A search key limited to some merchants never returns others, whatever it sends.
#[tokio::test]
async fn a_limited_search_key_never_returns_other_merchants() {
    let app = spawn_fake_app().await;
    let photos = fixture_photos(3);
    let merchants = ["iso-x", "iso-y", "iso-z"];
    // Every merchant holds the same products: an unscoped search would find all three.
    for m in merchants {
        for (i, p) in photos.iter().enumerate() {
            app.create_product(m, &json!({"id": format!("p{i}"), "title": m, "tags": [format!("shop:{m}"), "category:dress"]}), std::slice::from_ref(p))
                .await
                .assert_status(201);
        }
    }
    let xy = create_key(
        &app,
        &json!({"kind": "search", "merchants": ["iso-x", "iso-y"]}),
    )
    .await;
    let merchant_x = create_key(&app, &json!({"kind": "merchant", "merchant": "iso-x"})).await;
    let filters = [
        "",
        "k=100",
        "k=100&candidates=1024",
        "filter=shop:iso-z",
        "filter=shop:iso-z|shop:iso-x",
        "filter=category:dress",
        "k=100&group=image",
        "merchant=iso-x",
    ];
    for (key, allowed) in [(&xy, vec!["iso-x", "iso-y"]), (&merchant_x, vec!["iso-x"])] {
        for q in filters {
            let r = app
                .search(&photos[0], q)
                .key(key)
                .await
                .assert_status(200)
                .json;
            let seen: BTreeSet<&str> = results(&r)
                .iter()
                .map(|h| h["merchant"].as_str().unwrap())
                .collect();
            assert!(seen.iter().all(|m| allowed.contains(m)), "{q}: {seen:?}");
            if !q.contains("shop:iso-z") || q.contains("iso-x") {
                assert!(!seen.is_empty(), "{q}: the key's own merchants are found");
            }
        }
        for q in ["merchant=iso-z", "merchant=iso-z&filter=shop:iso-z"] {
            app.search(&photos[0], q)
                .key(key)
                .await
                .assert_error(403, "forbidden");
        }
        app.search_multipart(&photos[0], &json!({"merchant": "iso-z"}))
            .key(key)
            .await
            .assert_error(403, "forbidden");
        app.search_multipart(&photos[0], &json!({"filter": {"all": [["shop:iso-z"]]}}))
            .key(key)
            .await
            .assert_status(200);
    }
    // The admin key sees every merchant.
    let r = app
        .search(&photos[0], "k=100&group=image")
        .await
        .assert_status(200)
        .json;
    let seen: BTreeSet<&str> = results(&r)
        .iter()
        .map(|h| h["merchant"].as_str().unwrap())
        .collect();
    assert_eq!(seen.len(), 3, "{seen:?}");
    app.stop().await;
}

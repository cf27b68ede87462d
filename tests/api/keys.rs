//! API keys end to end: their life (create, list, revoke at once, expire), who may make which,
//! rate limits (429 with `Retry-After`), quotas, CORS, the open routes and development mode,
//! `GET /v1/whoami`, and slow clients (headers and bodies that never finish).

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

#[tokio::test]
async fn a_key_lives_is_listed_without_its_token_and_dies_at_once() {
    let app = spawn_fake_app().await;
    let created = app
        .request(Method::POST, "/v1/keys")
        .json(&json!({"kind": "merchant", "merchant": "acme", "label": "acme backend"}))
        .await
        .assert_status(201);
    assert_eq!(created.header("cache-control"), Some("no-store"));
    let token = created.json["key"].as_str().unwrap().to_owned();
    let id = created.json["id"].as_i64().unwrap();
    assert!(token.starts_with("sk_live_") && token.len() == "sk_live_".len() + 40);
    let prefix = created.json["prefix"].as_str().unwrap().to_owned();
    assert!(token.starts_with(&prefix) && prefix.len() < token.len());

    // It works, and its use is recorded.
    app.list_products("acme", None, None)
        .key(&token)
        .await
        .assert_status(200);
    let list = app
        .request(Method::GET, &format!("/v1/keys?prefix={prefix}"))
        .await
        .assert_status(200);
    assert!(!list.text.contains(&token), "a listing never shows a token");
    let keys = list.json["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["id"], id);
    // The use is recorded in the background: wait for it (at most 5 s).
    let mut used = keys[0]["last_used_at"].is_string();
    for _ in 0..50 {
        if used {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let k = app
            .request(Method::GET, &format!("/v1/keys/{id}"))
            .await
            .json;
        used = k["last_used_at"].is_string();
    }
    assert!(used, "the key's use is recorded");
    let by_label = app
        .request(Method::GET, "/v1/keys?label=backend")
        .await
        .json;
    assert_eq!(by_label["keys"].as_array().unwrap().len(), 1);
    assert!(app
        .request(Method::GET, &format!("/v1/keys/{id}"))
        .await
        .json
        .get("key")
        .is_none());

    // Revoked: refused on the very next request.
    app.request(Method::DELETE, &format!("/v1/keys/{id}"))
        .await
        .assert_status(200);
    let r = app.list_products("acme", None, None).key(&token).await;
    assert_eq!(r.json["error"]["code"], "unauthenticated");
    assert_eq!(r.status, 401);
    assert!(r.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("revoked"));
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"snapshop\"")
    );
    let listed = app.request(Method::GET, "/v1/keys").await.json;
    assert!(listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .all(|k| k["id"] != id));
    let all = app
        .request(Method::GET, "/v1/keys?include_inactive=true")
        .await
        .json;
    let gone = all["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id)
        .unwrap();
    assert_eq!(
        (gone["active"].as_bool(), gone["revoked_at"].is_string()),
        (Some(false), true)
    );

    // Expiry.
    let short = create_key(&app, &json!({"kind": "search", "expires_in_secs": 1})).await;
    app.tags().key(&short).await.assert_status(200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = app
        .tags()
        .key(&short)
        .await
        .assert_error(401, "unauthenticated");
    assert!(r["error"]["message"].as_str().unwrap().contains("expired"));
    app.stop().await;
}

#[tokio::test]
async fn who_may_make_which_key() {
    let app = spawn_fake_app().await;
    let merchant = create_key(&app, &json!({"kind": "merchant", "merchant": "acme"})).await;
    let make = |body: serde_json::Value, key: &str| {
        app.request(Method::POST, "/v1/keys").json(&body).key(key)
    };
    // A merchant key makes search keys for its own merchant, limited to it.
    let r = make(
        json!({"kind": "search", "allowed_origins": ["https://acme.example"]}),
        &merchant,
    )
    .await
    .assert_status(201)
    .json;
    assert_eq!(
        (r["merchant"].as_str(), r["merchants"].clone()),
        (Some("acme"), json!(["acme"]))
    );
    make(json!({"kind": "merchant"}), &merchant)
        .await
        .assert_status(201);
    make(json!({"kind": "admin"}), &merchant)
        .await
        .assert_error(403, "forbidden");
    make(json!({"kind": "merchant", "merchant": "other"}), &merchant)
        .await
        .assert_error(403, "forbidden");
    make(
        json!({"kind": "search", "merchants": ["acme", "other"]}),
        &merchant,
    )
    .await
    .assert_error(403, "forbidden");
    // It sees only its merchant's keys.
    let listed = app
        .request(Method::GET, "/v1/keys")
        .key(&merchant)
        .await
        .assert_status(200)
        .json;
    assert!(listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .all(|k| k["merchant"] == "acme"));
    app.request(Method::GET, "/v1/keys?merchant=other")
        .key(&merchant)
        .await
        .assert_error(403, "forbidden");
    // A search key makes and sees none.
    let search = create_key(&app, &json!({"kind": "search"})).await;
    make(json!({"kind": "search"}), &search)
        .await
        .assert_error(403, "forbidden");
    app.request(Method::GET, "/v1/keys")
        .key(&search)
        .await
        .assert_error(403, "forbidden");
    // Bad requests.
    for body in [
        json!({"kind": "merchant"}),
        json!({"kind": "admin", "merchant": "acme"}),
        json!({"kind": "search", "allowed_origins": ["shop.example/path"]}),
        json!({"kind": "search", "merchants": ["not a merchant!"]}),
        json!({"kind": "search", "expires_in_secs": 5, "expires_at": "2030-01-01T00:00:00Z"}),
        json!({"kind": "search", "expires_at": "2001-01-01T00:00:00Z"}),
        json!({"kind": "search", "rate_limits": {"search": {"per_second": 0, "burst": 1}}}),
        json!({"kind": "search", "rate_limits": {"searches": {"per_second": 1, "burst": 1}}}),
        json!({"kind": "superuser"}),
        json!({"kind": "search", "expires_in_secs": 9_223_372_036_854_775_808_u64}),
        json!({"kind": "search", "expires_in_secs": 4_000_000_000_u64}),
        json!({"kind": "search", "expires_at": "9999-01-01T00:00:00Z"}),
        json!(["search", "label"]),
    ] {
        app.request(Method::POST, "/v1/keys")
            .json(&body)
            .await
            .assert_error_for(&body.to_string(), 422, "invalid_field");
    }
    app.request(Method::GET, "/v1/keys/999999")
        .await
        .assert_error(404, "key_not_found");
    app.request(Method::GET, "/v1/keys/abc")
        .await
        .assert_error(400, "invalid_request");
    app.stop().await;
}

#[tokio::test]
async fn whoami_tells_each_key_what_it_is_and_nothing_more() {
    let app = spawn_fake_app().await;
    let whoami = |key: &str| app.request(Method::GET, "/v1/whoami").key(key);
    let made = app
        .request(Method::POST, "/v1/keys")
        .json(&json!({"kind": "merchant", "merchant": "acme", "label": "acme console"}))
        .await
        .assert_status(201)
        .json;
    let merchant = made["key"].as_str().unwrap().to_owned();
    let r = whoami(&merchant).await.assert_status(200);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(
        r.json,
        json!({"kind": "merchant", "merchant": "acme", "key_id": made["id"], "label": "acme console"})
    );
    assert!(!r.text.contains(&merchant), "whoami never shows a token");
    // A search key owned by a merchant, one that is not, and the admin key.
    let search = create_key(&app, &json!({"kind": "search", "merchant": "acme"})).await;
    let r = whoami(&search).await.assert_status(200).json;
    assert_eq!(
        (r["kind"].as_str(), r["merchant"].as_str()),
        (Some("search"), Some("acme"))
    );
    assert!(r["key_id"].is_i64() && r["label"] == "");
    let everywhere = create_key(&app, &json!({"kind": "search"})).await;
    let r = whoami(&everywhere).await.assert_status(200).json;
    assert_eq!(
        (r["kind"].as_str(), r["merchant"].is_null()),
        (Some("search"), true)
    );
    let r = whoami(ADMIN_KEY).await.assert_status(200).json;
    assert_eq!(
        (r["kind"].as_str(), r["merchant"].is_null()),
        (Some("admin"), true)
    );
    assert!(r["key_id"].is_i64());
    // The key id is the one the key routes know.
    let id = r["key_id"].as_i64().unwrap();
    let k = app
        .request(Method::GET, &format!("/v1/keys/{id}"))
        .await
        .assert_status(200)
        .json;
    assert_eq!(k["kind"], "admin");
    // Without a valid key: 401, like every other route; revoked at once.
    app.request(Method::GET, "/v1/whoami")
        .anonymous()
        .await
        .assert_error(401, "unauthenticated");
    app.request(Method::DELETE, &format!("/v1/keys/{}", made["id"]))
        .await
        .assert_status(200);
    whoami(&merchant).await.assert_error(401, "unauthenticated");
    app.stop().await;

    let dev = spawn_fake_app_with(new_data_dir(), |c| {
        c.auth.dev_mode = true;
        c.auth.bootstrap_admin_key = None;
    })
    .await;
    let r = dev
        .request(Method::GET, "/v1/whoami")
        .anonymous()
        .await
        .assert_status(200)
        .json;
    assert_eq!(
        r,
        json!({"kind": "dev", "merchant": null, "key_id": null, "label": null})
    );
    dev.stop().await;
}

#[tokio::test]
async fn past_its_rate_a_key_gets_429_with_retry_after() {
    let app = spawn_fake_app_with(new_data_dir(), |c| {
        let slow = snapshop::auth::limit::Bucket::new(0.2, 3);
        c.rate_limits.merchant.read = slow;
        c.rate_limits.anonymous = snapshop::auth::limit::Bucket::new(0.2, 2);
    })
    .await;
    let key = create_key(&app, &json!({"kind": "merchant", "merchant": "acme"})).await;
    for _ in 0..3 {
        app.list_products("acme", None, None)
            .key(&key)
            .await
            .assert_status(200);
    }
    let r = app.list_products("acme", None, None).key(&key).await;
    assert_eq!(
        (r.status, r.json["error"]["code"].as_str()),
        (429, Some("rate_limited")),
        "{}",
        r.text
    );
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=5).contains(&retry), "Retry-After {retry}");
    // Writes have a bucket of their own; so do other keys.
    app.patch_product("acme", "nope", &json!({"title": "x"}))
        .key(&key)
        .await
        .assert_error(404, "product_not_found");
    app.list_products("acme", None, None)
        .await
        .assert_status(200);
    // A per-key override wins over the kind's default.
    let roomy = create_key(
        &app,
        &json!({"kind": "merchant", "merchant": "acme", "rate_limits": {"read": {"per_second": 1000, "burst": 20}}}),
    )
    .await;
    for _ in 0..10 {
        app.list_products("acme", None, None)
            .key(&roomy)
            .await
            .assert_status(200);
    }
    // Requests without a valid key share one bucket per address: guessing keys is slowed too.
    let mut codes = vec![];
    for _ in 0..4 {
        let r = app
            .list_products("acme", None, None)
            .key("sk_live_guess")
            .await;
        codes.push(r.status);
    }
    assert_eq!(codes, [401, 401, 429, 429]);
    app.stop().await;
}

#[tokio::test]
async fn quotas_refuse_with_403_and_an_admin_sets_a_merchants_own() {
    let app = spawn_fake_app_with(new_data_dir(), |c| {
        c.quotas.max_products_per_merchant = 2;
        c.quotas.max_images_per_merchant = 3;
    })
    .await;
    let photos = fixture_photos(3);
    app.create_product("acme", &json!({"id": "a", "title": "a"}), &photos[..2])
        .await
        .assert_status(201);
    let r = app
        .create_product("acme", &json!({"id": "b", "title": "b"}), &photos[..2])
        .await
        .assert_error(403, "quota_exceeded");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("3 images"),
        "{r}"
    );
    app.create_product("acme", &json!({"id": "b", "title": "b"}), &photos[..1])
        .await
        .assert_status(201);
    app.create_product("acme", &json!({"id": "c", "title": "c"}), &photos[2..])
        .await
        .assert_error(403, "quota_exceeded");
    app.add_images("acme", "a", &photos[2..])
        .await
        .assert_error(403, "quota_exceeded");
    let m = app
        .request(Method::GET, "/v1/merchants/acme")
        .await
        .assert_status(200)
        .json;
    assert_eq!(
        (
            m["products"].as_i64(),
            m["images"].as_i64(),
            m["max_products"].as_i64()
        ),
        (Some(2), Some(3), Some(2))
    );
    // The merchant's own quota.
    let merchant = create_key(&app, &json!({"kind": "merchant", "merchant": "acme"})).await;
    app.request(Method::PUT, "/v1/merchants/acme")
        .json(&json!({"max_products": 10, "max_images": 10}))
        .key(&merchant)
        .await
        .assert_error(403, "forbidden");
    let m = app
        .request(Method::PUT, "/v1/merchants/acme")
        .json(&json!({"max_products": 10, "max_images": 10}))
        .await
        .assert_status(200)
        .json;
    assert_eq!(
        m["overrides"],
        json!({"max_products": 10, "max_images": 10})
    );
    app.create_product("acme", &json!({"id": "c", "title": "c"}), &photos[2..])
        .key(&merchant)
        .await
        .assert_status(201);
    let own = app
        .request(Method::GET, "/v1/merchants/acme")
        .key(&merchant)
        .await
        .assert_status(200)
        .json;
    assert_eq!(own["products"], 3);
    app.request(Method::GET, "/v1/merchants/nobody")
        .await
        .assert_error(404, "merchant_not_found");
    app.request(Method::GET, "/v1/merchants")
        .key(&merchant)
        .await
        .assert_error(403, "forbidden");
    let all = app
        .request(Method::GET, "/v1/merchants")
        .await
        .assert_status(200)
        .json;
    assert!(all["merchants"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["id"] == "acme"));
    for bad in [json!({"max_products": -1}), json!([null, null]), json!(5)] {
        app.request(Method::PUT, "/v1/merchants/acme")
            .json(&bad)
            .await
            .assert_error_for(&bad.to_string(), 422, "invalid_field");
    }
    app.stop().await;
}

#[tokio::test]
async fn cors_follows_the_key_and_the_configuration() {
    let app = spawn_fake_app_with(new_data_dir(), |c| {
        c.auth.cors_origins = vec!["https://everyone.example".into()];
    })
    .await;
    let limited = create_key(
        &app,
        &json!({"kind": "search", "allowed_origins": ["https://shop.example"]}),
    )
    .await;
    let open = create_key(&app, &json!({"kind": "search"})).await;
    let preflight = |origin: &str| {
        app.request(Method::OPTIONS, "/v1/search")
            .anonymous()
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization")
    };
    for origin in ["https://shop.example", "https://everyone.example"] {
        let r = preflight(origin).await;
        assert_eq!(r.status, 204);
        assert_eq!(r.header("access-control-allow-origin"), Some(origin));
        assert!(r
            .header("access-control-allow-headers")
            .unwrap()
            .contains("authorization"));
    }
    let r = preflight("https://evil.example").await;
    assert_eq!(
        (r.status, r.header("access-control-allow-origin")),
        (204, None)
    );

    let tags = |key: &str, origin: &str| app.tags().key(key).header("origin", origin);
    let r = tags(&limited, "https://shop.example")
        .await
        .assert_status(200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://shop.example")
    );
    assert!(r
        .header("access-control-expose-headers")
        .unwrap()
        .contains("retry-after"));
    tags(&limited, "https://evil.example")
        .await
        .assert_error(403, "forbidden");
    let r = tags(&open, "https://everyone.example")
        .await
        .assert_status(200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://everyone.example")
    );
    let r = tags(&open, "https://evil.example").await.assert_status(200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        None,
        "the browser will block it"
    );
    app.stop().await;
}

#[tokio::test]
async fn probes_stay_open_metrics_may_take_a_token_and_dev_mode_needs_no_key() {
    let app = spawn_fake_app_with(new_data_dir(), |c| {
        c.auth.metrics_token = Some("metrics-token-0123456789".into());
    })
    .await;
    app.healthz().anonymous().await.assert_status(200);
    app.readyz().anonymous().await.assert_status(200);
    app.request(Method::GET, "/")
        .anonymous()
        .await
        .assert_status(200);
    app.request(Method::GET, "/openapi.json")
        .anonymous()
        .await
        .assert_status(200);
    app.metrics()
        .anonymous()
        .await
        .assert_error(401, "unauthenticated");
    app.metrics()
        .key(ADMIN_KEY)
        .await
        .assert_error(401, "unauthenticated");
    app.metrics()
        .key("metrics-token-0123456789")
        .await
        .assert_status(200);
    app.tags()
        .anonymous()
        .await
        .assert_error(401, "unauthenticated");
    app.request(Method::GET, "/v1/nowhere")
        .anonymous()
        .await
        .assert_error(404, "route_not_found");
    app.stop().await;

    let dev = spawn_fake_app_with(new_data_dir(), |c| {
        c.auth.dev_mode = true;
        c.auth.bootstrap_admin_key = None;
    })
    .await;
    dev.list_products("acme", None, None)
        .anonymous()
        .await
        .assert_status(200);
    dev.tags().key("anything").await.assert_status(200);
    dev.metrics().anonymous().await.assert_status(200);
    dev.stop().await;
}

#[tokio::test]
async fn the_bootstrap_admin_key_is_stored_once_and_stays_revoked() {
    let data_dir = new_data_dir();
    let app = spawn_fake_app_with(data_dir.clone(), |_| {}).await;
    let listed = app.request(Method::GET, "/v1/keys?kind=admin").await.json;
    let keys = listed["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert!(keys[0]["label"].as_str().unwrap().contains("bootstrap"));
    let second = create_key(&app, &json!({"kind": "admin", "label": "ops"})).await;
    let id = keys[0]["id"].as_i64().unwrap();
    app.request(Method::DELETE, &format!("/v1/keys/{id}"))
        .key(&second)
        .await
        .assert_status(200);
    app.tags().await.assert_error(401, "unauthenticated");
    app.stop().await;
    // A restart with the same bootstrap key does not bring it back.
    let app = spawn_fake_app_with(data_dir, |_| {}).await;
    app.tags().await.assert_error(401, "unauthenticated");
    app.tags().key(&second).await.assert_status(200);
    app.stop().await;
}

/// Reads what the server sends until it closes the connection (or 30 s pass).
async fn read_until_closed(stream: &mut tokio::net::TcpStream) -> String {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn slow_clients_cannot_hold_a_connection() {
    let app = spawn_fake_app_with(new_data_dir(), |c| {
        c.limits.header_read_timeout_secs = 1;
        c.limits.request_timeout_secs = 2;
    })
    .await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    // Headers trickled and never finished: closed after the header timeout.
    let start = Instant::now();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let _ = read_until_closed(&mut s).await;
    let took = start.elapsed();
    assert!(took < Duration::from_secs(10), "closed after {took:?}");
    // A body trickled byte by byte: answered 503 `timeout` by the request timeout.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/search HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_KEY}\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let start = Instant::now();
    let (mut rd, mut wr) = s.into_split();
    let trickle = tokio::spawn(async move {
        for _ in 0..100 {
            if wr.write_all(b"x").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), rd.read_to_end(&mut buf)).await;
    trickle.abort();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("\"timeout\""), "{text}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    // The server still serves.
    app.healthz().await.assert_status(200);
    app.stop().await;
}

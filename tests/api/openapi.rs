//! The OpenAPI contract (`GET /openapi.json`) against the live router: every operation it lists
//! is routed and answers one of its documented statuses, the document is well-formed OpenAPI
//! 3.1 (unique operation ids, resolvable references, the shared responses and security), its
//! error-code enum is `ErrorCode::ALL`, and docs/api.md names every path. The spec is generated
//! from the handlers (src/http/openapi.rs), so these tests keep the generation honest; the
//! schemathesis run (scripts/schemathesis.sh) checks the responses in depth.

use std::collections::{BTreeSet, HashSet};

use reqwest::Method;
use serde_json::Value;
use snapshop::error::ErrorCode;

use crate::common::*;

/// Paths that need no API key (as src/http/openapi.rs's `PUBLIC`).
const PUBLIC: &[&str] = &[
    "/healthz",
    "/readyz",
    "/metrics",
    "/",
    "/console",
    "/assets/{name}",
    "/openapi.json",
    "/docs",
    "/docs/",
];

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

async fn served_spec(app: &TestApp) -> Value {
    let r = app
        .request(Method::GET, "/openapi.json")
        .await
        .assert_status(200);
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "{:?}",
        r.headers
    );
    r.json
}

/// Every (path, method, operation) of the spec.
fn operations(spec: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for m in METHODS {
            if let Some(op) = item.get(*m) {
                out.push((path.clone(), m.to_string(), op.clone()));
            }
        }
    }
    out
}

/// A concrete path for a template: each `{param}` gets a plausible value.
fn concrete(path: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("a closing brace") + start;
        out.push_str(match &rest[start + 1..end] {
            "merchant" => MERCHANT,
            "id" => "sku-none",
            "image_id" => "1",
            "name" => "app.js",
            _ => "x",
        });
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Every operation of the served spec is routed (no `route_not_found`, no
/// `method_not_allowed`), and a bare request answers one of the statuses it documents.
#[tokio::test]
async fn every_operation_in_the_spec_is_routed_and_answers_a_documented_status() {
    let app = spawn_fake_app().await;
    let spec = served_spec(&app).await;
    let ops = operations(&spec);
    assert!(ops.len() >= 15, "only {} operations", ops.len());
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for (path, method, op) in &ops {
        let url = format!("{}{}", app.base, concrete(path));
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let r = no_redirects
            .request(method.clone(), &url)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        let what = format!("{method} {path} ({url})");
        assert_ne!(status, 405, "{what}: not routed for this method: {body}");
        assert_ne!(
            body["error"]["code"], "route_not_found",
            "{what}: not routed: {body}"
        );
        assert_ne!(
            body["error"]["code"], "method_not_allowed",
            "{what}: {body}"
        );
        assert!(
            op["responses"].get(status.to_string()).is_some(),
            "{what}: answered {status}, which it does not document: {body}"
        );
        if let Some(code) = body["error"]["code"].as_str() {
            let documented = op["responses"][status.to_string()]["content"]["application/json"]
                ["examples"]
                .get(code)
                .is_some();
            assert!(documented, "{what}: {status} `{code}` is not documented");
        }
    }
    app.stop().await;
}

/// The document is OpenAPI 3.1: unique operation ids, `$ref`s that resolve, path parameters
/// declared, and the shared responses and security where they belong.
#[tokio::test]
async fn the_spec_is_openapi_3_1_with_unique_operation_ids_and_shared_responses() {
    let app = spawn_fake_app().await;
    let spec = served_spec(&app).await;
    assert_eq!(spec["openapi"], "3.1.0");
    assert!(spec["info"]["title"].is_string() && spec["info"]["version"].is_string());
    let bearer = &spec["components"]["securitySchemes"]["bearer"];
    assert_eq!(bearer["type"], "http");
    assert_eq!(bearer["scheme"], "bearer");

    let mut ids = HashSet::new();
    for (path, method, op) in operations(&spec) {
        let what = format!("{method} {path}");
        let id = op["operationId"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no operationId"));
        assert!(ids.insert(id.to_owned()), "{what}: operationId {id} twice");
        // Every `{param}` of the path is a declared path parameter.
        let declared: BTreeSet<&str> = op["parameters"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .filter(|p| p["in"] == "path")
                    .filter_map(|p| p["name"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        let in_path: BTreeSet<&str> = path
            .split('{')
            .skip(1)
            .filter_map(|s| s.split('}').next())
            .collect();
        assert_eq!(declared, in_path, "{what}: path parameters");
        let responses = op["responses"].as_object().expect("responses");
        assert!(
            responses
                .keys()
                .any(|s| s.starts_with('2') || s.starts_with('3')),
            "{what}"
        );
        for (status, r) in responses {
            assert!(
                r["description"].is_string(),
                "{what} {status}: no description"
            );
            assert_eq!(
                r["headers"]["X-Request-Id"]["required"], true,
                "{what} {status}: X-Request-Id"
            );
            if status.starts_with('4') || status.starts_with('5') {
                assert_eq!(
                    r["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/Error",
                    "{what} {status}"
                );
            }
        }
        for status in ["500", "503"] {
            assert!(responses.contains_key(status), "{what}: no {status}");
        }
        assert!(
            responses["503"]["headers"]["Retry-After"].is_object(),
            "{what}"
        );
        if PUBLIC.contains(&path.as_str()) {
            assert!(op.get("security").is_none(), "{what}: public, yet secured");
        } else {
            assert_eq!(
                op["security"],
                serde_json::json!([{"bearer": []}]),
                "{what}"
            );
            let has = |status: &str, code: &str| {
                responses
                    .get(status)
                    .and_then(|r| r["content"]["application/json"]["examples"].get(code))
                    .is_some()
            };
            assert!(has("401", "unauthenticated"), "{what}: 401");
            assert!(has("403", "forbidden"), "{what}: 403");
            assert!(has("429", "rate_limited"), "{what}: 429");
            assert!(
                responses["401"]["headers"]["WWW-Authenticate"].is_object(),
                "{what}"
            );
            assert!(
                responses["429"]["headers"]["Retry-After"].is_object(),
                "{what}"
            );
        }
    }
    // Every reference resolves.
    let mut refs = Vec::new();
    collect_refs(&spec, &mut refs);
    assert!(!refs.is_empty());
    for r in refs {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("an external $ref {r}"));
        assert!(spec.pointer(pointer).is_some(), "$ref {r} does not resolve");
    }
    app.stop().await;
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => collect_refs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

/// The error body's `code` enum is exactly the codes of `crate::error`, in order.
#[tokio::test]
async fn the_error_code_enum_is_every_error_code() {
    let app = spawn_fake_app().await;
    let spec = served_spec(&app).await;
    let listed: Vec<&str> = spec["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .expect("an ErrorCode enum")
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(listed, codes);
    app.stop().await;
}

/// docs/api.md names every path of the spec, and where the spec and its UI are served.
#[tokio::test]
async fn the_api_docs_name_every_path_of_the_spec() {
    let app = spawn_fake_app().await;
    let spec = served_spec(&app).await;
    let doc = std::fs::read_to_string(root().join("docs/api.md")).unwrap();
    for path in spec["paths"].as_object().unwrap().keys() {
        assert!(
            doc.contains(&format!("`{path}")) || doc.contains(&format!(" {path}`")),
            "docs/api.md does not mention {path}"
        );
    }
    app.stop().await;
}

/// The docs UI is served from the binary: `/docs` redirects to the page, which loads its
/// files from `/docs/` and this spec.
#[tokio::test]
async fn the_docs_ui_is_served_offline() {
    let app = spawn_fake_app().await;
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_redirects
        .get(format!("{}/docs", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/docs/");
    let page = app.request(Method::GET, "/docs/").await.assert_status(200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    assert!(page.text.contains("swagger-ui"), "{}", page.text);
    let init = app
        .request(Method::GET, "/docs/swagger-initializer.js")
        .await
        .assert_status(200);
    assert!(init.text.contains("/openapi.json"), "{}", init.text);
    for file in ["swagger-ui.css", "swagger-ui-bundle.js"] {
        app.request(Method::GET, &format!("/docs/{file}"))
            .await
            .assert_status(200);
    }
    app.stop().await;
}

//! The OpenAPI 3.1 contract, generated from the code so that it cannot drift from the router.
//!
//! Each area's router is a `utoipa_axum` [`OpenApiRouter`]: a handler is registered once, with
//! `routes!`, and that one registration both routes requests to it and adds its
//! `#[utoipa::path]` operation to the spec. [`router`] merges the areas, splits the result into
//! the axum router and the spec, finishes the spec ([`finish`]) and serves it at
//! `GET /openapi.json`, with Swagger UI at `GET /docs` (its files are embedded in the binary by
//! `utoipa-swagger-ui`'s `vendored` feature: nothing is fetched at build or run time).
//!
//! What every operation shares is added here once rather than on each handler:
//! - the error body (`Error`), whose `code` enum (`ErrorCode`) is [`ErrorCode::ALL`] at run time;
//! - `500 internal` and `503 timeout`: the panic catcher and the request timeout wrap every route;
//! - `X-Request-Id` on every response, and every documented response header marked `required`
//!   (the server always sends the headers it documents);
//! - on every operation but the public ones ([`PUBLIC`]): the `bearer` security requirement, 401
//!   `unauthenticated` (with `WWW-Authenticate`), 403 `forbidden` and 429 `rate_limited` (with
//!   `Retry-After`);
//! - the multipart `encoding`: JSON parts as `application/json`, file parts as images.
//!
//! Handlers list the errors they can produce themselves, with [`errors!`]. `tests/api/openapi.rs`
//! checks the served spec against the live router.

use std::collections::BTreeMap;

use axum::Router;
use serde_json::{json, Map, Value};
use utoipa::openapi::response::Response;
use utoipa::openapi::schema::Schema;
use utoipa::openapi::RefOr;
use utoipa::{OpenApi, PartialSchema, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

use super::{admin, imports, keys, merchants, ops, products, search, web, whoami};
use crate::core::AppState;
use crate::error::ErrorCode;

/// Paths whose operations need no API key: probes, metrics, the web page and these docs.
pub const PUBLIC: &[&str] = &[
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

/// Where the spec and the docs UI are served.
pub const SPEC_PATH: &str = "/openapi.json";
pub const DOCS_PATH: &str = "/docs";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "snapshop",
        description = "Product-image search: merchants upload tagged products with catalogue \
            photos, shoppers' photos find them. Errors are always \
            `{\"error\": {\"code\": \"...\", \"message\": \"...\"}}` with a stable `code`; every \
            response carries `X-Request-Id`. The prose reference is docs/api.md.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    tags(
        (name = "products", description = "A merchant's products and their images"),
        (name = "imports", description = "Import jobs: a catalogue file written in the background"),
        (name = "search", description = "Search by photo"),
        (name = "vocabulary", description = "The model's tag vocabulary"),
        (name = "operations", description = "Liveness, readiness and metrics"),
        (name = "admin", description = "The model in service and its hot swap"),
        (name = "keys", description = "API keys: admin, merchant and search keys"),
        (name = "merchants", description = "Merchants, their catalogue sizes and quotas"),
        (name = "web", description = "The search page, the merchant console and their assets"),
        (name = "docs", description = "This contract and its UI"),
    )
)]
struct ApiDoc;

/// Every route of the API, each registered once for the router and the spec.
pub fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(products::router())
        .merge(imports::router())
        .merge(search::router())
        .merge(ops::router())
        .merge(admin::router())
        .merge(keys::router())
        .merge(merchants::router())
        .merge(web::router())
        .merge(whoami::router())
}

/// The finished spec, as served at [`SPEC_PATH`].
pub fn spec() -> Value {
    finish(api().split_for_parts().1)
}

/// The application's routes plus `GET /openapi.json` and the docs UI under `/docs`.
pub fn router() -> Router<AppState> {
    let (router, spec) = api().split_for_parts();
    router.merge(SwaggerUi::new(DOCS_PATH).external_url_unchecked(SPEC_PATH, finish(spec)))
}

/// Defines a unit type whose [`utoipa::IntoResponses`] are the error responses of `codes`,
/// grouped by status, for a handler's `responses(...)`:
/// `errors!(GetErrors: InvalidRequest, ProductNotFound);`. The shared errors ([`finish`]) come
/// on top.
macro_rules! errors {
    ($(#[$meta:meta])* $name:ident: $($code:ident),+ $(,)?) => {
        $(#[$meta])*
        pub struct $name;

        impl utoipa::IntoResponses for $name {
            fn responses() -> std::collections::BTreeMap<
                String,
                utoipa::openapi::RefOr<utoipa::openapi::response::Response>,
            > {
                $crate::http::openapi::error_responses(&[$($crate::error::ErrorCode::$code),+])
            }
        }
    };
}
pub(crate) use errors;

/// The error responses of `codes`, grouped by status (see [`errors!`]).
pub fn error_responses(codes: &[ErrorCode]) -> BTreeMap<String, RefOr<Response>> {
    let mut responses = Map::new();
    for &code in codes {
        add_error(
            &mut responses,
            code.status(),
            code.as_str(),
            code.description(),
        );
    }
    responses
        .into_iter()
        .map(|(status, r)| {
            let r = serde_json::from_value(r).expect("an error response; this is a bug");
            (status, RefOr::T(r))
        })
        .collect()
}

/// An uploaded image file: JPEG, PNG, WebP or HEIC/HEIF bytes.
pub struct ImageFile;

impl PartialSchema for ImageFile {
    fn schema() -> RefOr<Schema> {
        schema_of(json!({
            "type": "string",
            "format": "binary",
            "contentMediaType": "image/*",
            "description": "Image bytes: JPEG, PNG, WebP or HEIC/HEIF (EXIF orientation is applied; for HEIC, the file's irot/imir rotation and mirroring)."
        }))
    }
}

impl ToSchema for ImageFile {}

/// A schema written as JSON (for the few that no derive describes).
pub fn schema_of(v: Value) -> RefOr<Schema> {
    serde_json::from_value(v).expect("a valid schema; this is a bug")
}

/// The schema of a model swap's state (`crate::swap::SwapStatus`, serialized with
/// `#[serde(tag = "state", rename_all = "snake_case")]`).
#[allow(dead_code)]
#[derive(ToSchema)]
#[schema(as = SwapStatus)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SwapStatusSchema {
    /// No swap has run since start-up.
    Idle,
    /// Re-embedding the stored images with the new model.
    Running {
        from_version: String,
        to_version: String,
        /// The bundle directory, as the server sees it.
        bundle: String,
        /// Images re-embedded so far.
        done: u64,
        /// Images waiting when the swap started.
        total: u64,
        started_at_ms: i64,
    },
    /// The new model serves.
    Done {
        from_version: String,
        to_version: String,
        images: u64,
        elapsed_ms: u64,
    },
    /// The swap failed; the old model keeps serving.
    Failed {
        to_version: String,
        bundle: String,
        error: String,
    },
}

/// The schema of `/readyz`'s `index` block: the ANN index counters
/// (`snapshop_index::IndexStats`) and the view's freshness (`crate::http::ops`).
#[allow(dead_code)]
#[derive(ToSchema)]
#[schema(as = IndexStats)]
pub struct IndexStatsSchema {
    /// The catalogue change the index reflects (a search's `index_version`).
    version: i64,
    /// When that change was written (RFC 3339); `null` before any change.
    #[schema(format = DateTime)]
    updated_at: Option<String>,
    /// Live keys (`graph + fresh`).
    live: usize,
    /// Live keys searchable through the graph.
    graph: usize,
    /// Live keys in the exact fresh segment (not yet in a graph).
    fresh: usize,
    /// Graph points whose key was removed or replaced since the graph was built.
    tombstones: usize,
    /// Graph (re)builds since this index was created.
    rebuilds: u64,
}

const ERROR_REF: &str = "#/components/schemas/Error";

/// Adds error `code` to the response for `status` in an operation's `responses`: the error
/// body, an example per code, the code in the description, and the headers that status carries.
fn add_error(responses: &mut Map<String, Value>, status: u16, code: &str, what: &str) {
    let response = responses
        .entry(status.to_string())
        .or_insert_with(|| json!({"description": "An error; `error.code` is one of:"}));
    let obj = response.as_object_mut().expect("a response object");
    let line = format!("\n- `{code}`: {what}");
    match obj.get_mut("description") {
        Some(Value::String(d)) if d.contains(&format!("`{code}`")) => return,
        Some(Value::String(d)) => d.push_str(&line),
        _ => {
            obj.insert(
                "description".into(),
                Value::String(format!("An error; `error.code` is one of:{line}")),
            );
        }
    }
    let message = if status >= 500 && code == ErrorCode::Internal.as_str() {
        "internal error".to_owned()
    } else {
        what.to_owned()
    };
    let content = obj
        .entry("content")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("a content map");
    let json_body = content
        .entry("application/json")
        .or_insert_with(|| json!({"schema": {"$ref": ERROR_REF}}))
        .as_object_mut()
        .expect("a media type object");
    json_body
        .entry("examples")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("an examples map")
        .insert(
            code.to_owned(),
            json!({"summary": what, "value": {"error": {"code": code, "message": message}}}),
        );
    let headers = obj
        .entry("headers")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("a headers map");
    if status == 503 || status == 429 {
        headers.insert(
            "Retry-After".into(),
            json!({
                "description": "Seconds to wait before retrying.",
                "schema": {"type": "integer", "minimum": 0},
                "example": 1
            }),
        );
    }
    if status == 401 {
        headers.insert(
            "WWW-Authenticate".into(),
            json!({
                "description": "The scheme to authenticate with: `Bearer`.",
                "schema": {"type": "string"},
                "example": "Bearer realm=\"snapshop\""
            }),
        );
    }
}

/// The schemas that are built from the code at run time: the error body and its codes.
fn error_schemas() -> Value {
    let mut table = String::from("| code | status | when |\n|---|---|---|");
    for c in ErrorCode::ALL {
        table.push_str(&format!(
            "\n| `{}` | {} | {} |",
            c.as_str(),
            c.status(),
            c.description()
        ));
    }
    let codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    json!({
        "ErrorCode": {
            "type": "string",
            "enum": codes,
            "description": format!("A stable, machine-readable error code. Codes are never \
                renamed; new ones may be added.\n\n{table}"),
        },
        "Error": {
            "type": "object",
            "description": "The body of every error response.",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {"$ref": "#/components/schemas/ErrorCode"},
                        "message": {
                            "type": "string",
                            "description": "For people; 5xx messages never carry internal details."
                        }
                    }
                }
            },
            "example": {"error": {"code": "product_not_found",
                "message": "product `sku-9` of merchant `acme` not found"}}
        }
    })
}

/// The operations no handler describes: this spec and its UI.
fn docs_paths() -> Value {
    json!({
        SPEC_PATH: {"get": {
            "tags": ["docs"],
            "operationId": "openapi",
            "summary": "This OpenAPI 3.1 document",
            "description": "Generated from the code at start-up; the same for every request.",
            "responses": {"200": {
                "description": "The OpenAPI document.",
                "content": {"application/json": {"schema": {"type": "object",
                    "required": ["openapi", "info", "paths"]}}}
            }}
        }},
        DOCS_PATH: {"get": {
            "tags": ["docs"],
            "operationId": "docs",
            "summary": "The docs UI (Swagger UI): a redirect to `/docs/`",
            "responses": {"303": {
                "description": "See `/docs/`.",
                "headers": {"Location": {
                    "description": "`/docs/`",
                    "schema": {"type": "string", "const": format!("{DOCS_PATH}/")}
                }}
            }}
        }},
        format!("{DOCS_PATH}/"): {"get": {
            "tags": ["docs"],
            "operationId": "docs_page",
            "summary": "The docs UI (Swagger UI) for this spec",
            "description": "Swagger UI, embedded in the binary (no CDN); its files are served \
                under `/docs/`.",
            "responses": {"200": {
                "description": "The Swagger UI page.",
                "content": {"text/html": {"schema": {"type": "string"}}}
            }}
        }}
    })
}

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// What every operation shares (see the module documentation), and the parts no handler
/// describes.
pub fn finish(spec: utoipa::openapi::OpenApi) -> Value {
    let mut doc = serde_json::to_value(&spec).expect("the spec serializes");
    let components = doc
        .as_object_mut()
        .expect("a spec object")
        .entry("components")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("a components object");
    let schemas = components
        .entry("schemas")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("a schemas map");
    if let Value::Object(errors) = error_schemas() {
        schemas.extend(errors);
    }
    components.insert(
        "securitySchemes".into(),
        json!({"bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "API keys: `sk_admin_…` (admin), `sk_live_…` (merchant), \
                `pk_live_…` (search). Send `Authorization: Bearer <key>`."
        }}),
    );
    let schemas_snapshot = doc["components"]["schemas"].clone();
    let paths = doc
        .as_object_mut()
        .expect("a spec object")
        .entry("paths")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("a paths map");
    if let Value::Object(extra) = docs_paths() {
        paths.extend(extra);
    }
    for (path, item) in paths.iter_mut() {
        let public = PUBLIC.contains(&path.as_str());
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for method in METHODS {
            let Some(Value::Object(op)) = item.get_mut(*method) else {
                continue;
            };
            finish_operation(op, public, &schemas_snapshot);
        }
    }
    doc
}

fn finish_operation(op: &mut Map<String, Value>, public: bool, schemas: &Value) {
    if !public {
        op.insert("security".into(), json!([{"bearer": []}]));
    }
    let responses = op
        .entry("responses")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("a responses map");
    for code in [ErrorCode::Internal, ErrorCode::Timeout] {
        add_error(responses, code.status(), code.as_str(), code.description());
    }
    if !public {
        for (status, code, what) in [
            (
                401,
                "unauthenticated",
                "no API key, or one that is unknown, revoked or expired",
            ),
            (
                403,
                "forbidden",
                "the API key may not do this (another merchant's data, or a key of another kind)",
            ),
            (429, "rate_limited", "the API key's rate limit is exhausted"),
        ] {
            add_error(responses, status, code, what);
        }
    }
    for response in responses.values_mut() {
        let Some(response) = response.as_object_mut() else {
            continue;
        };
        let headers = response
            .entry("headers")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("a headers map");
        headers.insert(
            "X-Request-Id".into(),
            json!({
                "description": "The request's id (the client's own `X-Request-Id`, else a new \
                    UUID); the server log has it too.",
                "schema": {"type": "string"}
            }),
        );
        for header in headers.values_mut() {
            if let Some(h) = header.as_object_mut() {
                h.entry("required").or_insert(Value::Bool(true));
            }
        }
    }
    if let Some(Value::Object(media)) = op
        .get_mut("requestBody")
        .and_then(|b| b.get_mut("content"))
        .and_then(|c| c.get_mut("multipart/form-data"))
    {
        let encoding = multipart_encoding(media.get("schema"), schemas);
        if !encoding.is_empty() {
            media.insert("encoding".into(), Value::Object(encoding));
        }
    }
}

/// The `encoding` of a multipart form: object parts are JSON, file parts images.
fn multipart_encoding(schema: Option<&Value>, schemas: &Value) -> Map<String, Value> {
    let resolve = |s: &Value| -> Value {
        match s.get("$ref").and_then(Value::as_str) {
            Some(r) => r
                .strip_prefix("#/components/schemas/")
                .and_then(|name| schemas.get(name))
                .cloned()
                .unwrap_or(Value::Null),
            None => s.clone(),
        }
    };
    let mut out = Map::new();
    let Some(form) = schema.map(resolve) else {
        return out;
    };
    let Some(Value::Object(props)) = form.get("properties") else {
        return out;
    };
    for (name, prop) in props {
        let mut p = resolve(prop);
        if p.get("type") == Some(&json!("array")) {
            p = p.get("items").map(resolve).unwrap_or(Value::Null);
        }
        let content_type = if p.get("format") == Some(&json!("binary")) {
            "image/jpeg, image/png, image/webp, image/heic, image/heif"
        } else {
            "application/json"
        };
        out.insert(name.clone(), json!({"contentType": content_type}));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_is_3_1_with_the_error_codes_and_the_shared_responses() {
        let doc = spec();
        assert_eq!(doc["openapi"], "3.1.0");
        let codes = doc["components"]["schemas"]["ErrorCode"]["enum"]
            .as_array()
            .unwrap();
        assert_eq!(codes.len(), ErrorCode::ALL.len());
        let search = &doc["paths"]["/v1/search"]["post"];
        assert_eq!(search["security"], json!([{"bearer": []}]));
        for status in [
            "400", "401", "403", "413", "415", "422", "429", "500", "503",
        ] {
            assert!(search["responses"][status].is_object(), "{status}");
        }
        assert_eq!(
            search["responses"]["429"]["headers"]["Retry-After"]["required"],
            true
        );
        let healthz = &doc["paths"]["/healthz"]["get"];
        assert!(healthz.get("security").is_none());
        assert!(healthz["responses"].get("401").is_none());
        assert_eq!(
            healthz["responses"]["200"]["headers"]["X-Request-Id"]["required"],
            true
        );
        let form = &doc["paths"]["/v1/merchants/{merchant}/products"]["post"]["requestBody"]
            ["content"]["multipart/form-data"];
        assert_eq!(
            form["encoding"]["product"]["contentType"],
            "application/json"
        );
        assert!(form["encoding"]["image"]["contentType"]
            .as_str()
            .unwrap()
            .contains("image/jpeg"));
        assert!(form["encoding"]["image"]["contentType"]
            .as_str()
            .unwrap()
            .contains("image/heic"));
    }
}

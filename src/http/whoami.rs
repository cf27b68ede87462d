//! `GET /v1/whoami`: what the calling key is, so that a client (the merchant console) can tell
//! which merchant it acts for without being told twice.
//!
//! Any valid key may ask about itself, and only about itself. This module must never return a
//! token, a hash, or anything about another key.

use axum::http::{header, HeaderValue};
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Caller;
use crate::auth::Principal;
use crate::core::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(whoami))
}

/// The calling key.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Whoami, example = json!({
    "kind": "merchant", "merchant": "acme", "key_id": 7, "label": "acme backend"
}))]
pub struct WhoamiBody {
    /// `admin`, `merchant`, `search`, or `dev` (development mode: no keys, everything allowed).
    #[schema(example = "merchant")]
    pub kind: &'static str,
    /// The merchant a merchant key acts for, or that owns a search key; `null` for admin keys
    /// (they act for any merchant) and in development mode.
    pub merchant: Option<String>,
    /// The key's id, as in `GET /v1/keys/{id}`; `null` in development mode.
    pub key_id: Option<i64>,
    /// The key's label; `null` in development mode.
    pub label: Option<String>,
}

impl WhoamiBody {
    fn of(p: &Principal) -> Self {
        match p {
            Principal::Dev => WhoamiBody {
                kind: "dev",
                merchant: None,
                key_id: None,
                label: None,
            },
            Principal::Key(k) => WhoamiBody {
                kind: k.kind.as_str(),
                merchant: k.merchant.clone(),
                key_id: Some(k.id),
                label: Some(k.label.clone()),
            },
        }
    }
}

/// The calling key: its kind, merchant, id and label.
///
/// Any valid key may call it; it answers about that key only.
#[utoipa::path(
    get,
    path = "/v1/whoami",
    tag = "keys",
    responses(
        (status = 200, description = "The calling key (never its token).", body = WhoamiBody,
            headers(("Cache-Control" = String, description = "`no-store`: the answer depends on the key."))),
    ),
)]
async fn whoami(Caller(caller): Caller) -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(WhoamiBody::of(&caller)),
    )
}

//! API key routes: create (the token is shown once, in that response), list, read and revoke.
//!
//! Admin keys manage every key; a merchant key manages its own merchant's merchant and search
//! keys; search keys manage nothing. A key the caller may not see answers 404 `key_not_found`,
//! exactly like one that does not exist. This module must never log a token, and returns one
//! only from `POST /v1/keys`.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};
use snapshop_store::{KeyKind, KeyQuery, KeyRecord};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::{forbidden, Caller};
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::openapi::errors;
use super::products::rfc3339;
use crate::auth::limit::KeyLimits;
use crate::auth::{mint, now_ms, KeySpec, Principal};
use crate::core::AppState;
use crate::error::ErrorCode;
use crate::ids::Merchant;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_key, list_keys))
        .routes(routes!(get_key, revoke_key))
}

/// Most merchants one search key may be limited to, and most origins.
const MAX_LIST: usize = 100;
const MAX_LABEL: usize = 200;
/// The longest lifetime a key may be given: 100 years.
const MAX_LIFETIME_SECS: u64 = 3_155_760_000;

/// A key as listed (never its token).
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Key, example = json!({
    "id": 7, "kind": "search", "prefix": "pk_live_4fQ2xT9a", "label": "shop frontend",
    "merchant": "acme", "merchants": ["acme"], "allowed_origins": ["https://shop.example"],
    "rate_limits": null, "active": true, "created_at": "2026-12-01T12:00:00Z",
    "expires_at": null, "revoked_at": null, "last_used_at": null
}))]
pub struct KeyBody {
    pub id: i64,
    #[schema(value_type = String, example = "merchant")]
    pub kind: KeyKind,
    /// The token's first characters, to recognise it.
    pub prefix: String,
    pub label: String,
    /// The merchant a merchant key acts for, or that owns a search key.
    pub merchant: Option<String>,
    /// The merchants a search key may search; `null`: every merchant.
    pub merchants: Option<Vec<String>>,
    /// Browser origins the key is limited to; empty: any.
    pub allowed_origins: Vec<String>,
    /// The key's own rate limits (`null`: its kind's defaults).
    #[schema(value_type = Option<Object>)]
    pub rate_limits: Option<serde_json::Value>,
    /// Neither revoked nor expired.
    pub active: bool,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
    /// Updated at most once a minute.
    pub last_used_at: Option<String>,
}

impl KeyBody {
    fn from_record(k: KeyRecord) -> Self {
        KeyBody {
            active: k.is_active(now_ms()),
            id: k.id,
            kind: k.kind,
            prefix: k.prefix,
            label: k.label,
            merchant: k.merchant,
            merchants: k.merchants,
            allowed_origins: k.origins,
            rate_limits: k.rate_limits,
            created_at: rfc3339(k.created_at),
            expires_at: k.expires_at.map(rfc3339),
            revoked_at: k.revoked_at.map(rfc3339),
            last_used_at: k.last_used_at.map(rfc3339),
        }
    }
}

/// A new key, with its token.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = CreatedKey)]
pub struct CreatedBody {
    /// The token: send it as `Authorization: Bearer <key>`. It is shown only here, once.
    #[schema(example = "sk_live_4fQ2xT9aUu1mN0pQr7sTvWxYz3bC5dE6fG8hJ9kL")]
    pub key: String,
    #[serde(flatten)]
    pub record: KeyBody,
}

/// A key to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = NewKey, example = json!({
    "kind": "search", "label": "shop frontend", "merchants": ["acme"],
    "allowed_origins": ["https://shop.example"], "expires_in_secs": 31536000
}))]
pub struct NewKeyBody {
    /// `admin`, `merchant` or `search`. A merchant key may create merchant and search keys of
    /// its own merchant only.
    #[schema(value_type = String, example = "search")]
    pub kind: KeyKind,
    #[serde(default)]
    pub label: String,
    /// For `merchant` keys (required): the merchant it acts for. For `search` keys: the merchant
    /// that owns it (may list and revoke it); its `merchants` default to this one.
    pub merchant: Option<String>,
    /// `search` keys only: the merchants it may search (default: `[merchant]`, or every
    /// merchant for an admin-made key without `merchant`).
    pub merchants: Option<Vec<String>>,
    /// `search` keys only: browser origins (`https://host[:port]`) it may be used from.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Buckets overriding the kind's defaults, e.g. `{"search": {"per_second": 20, "burst": 40}}`.
    #[schema(value_type = Option<Object>)]
    pub rate_limits: Option<KeyLimits>,
    /// When it stops working (RFC 3339, before the year 10000); or give `expires_in_secs`.
    pub expires_at: Option<String>,
    /// Seconds from now until it stops working (at most 100 years).
    #[schema(minimum = 1, maximum = 3_155_760_000_u64)]
    pub expires_in_secs: Option<u64>,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidField, message)
}

/// `https://host[:port]` or `http://host[:port]`, as browsers send `Origin`.
fn valid_origin(o: &str) -> bool {
    let Some(rest) = o
        .strip_prefix("https://")
        .or_else(|| o.strip_prefix("http://"))
    else {
        return false;
    };
    !rest.is_empty()
        && rest.len() <= 253
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
}

fn merchant_name(m: &str) -> Result<String, ApiError> {
    Ok(Merchant::parse(m)?.as_str().to_owned())
}

/// Checks a request against the caller's rights and turns it into what to mint.
fn spec_for(caller: &Principal, body: NewKeyBody) -> Result<KeySpec, ApiError> {
    if body.label.chars().count() > MAX_LABEL {
        return Err(invalid(format!("label: at most {MAX_LABEL} characters")));
    }
    match (caller.kind(), body.kind) {
        (KeyKind::Search, _) => return Err(forbidden("a search key can only search")),
        (KeyKind::Merchant, KeyKind::Admin) => {
            return Err(forbidden("a merchant key cannot create admin keys"))
        }
        _ => {}
    }
    let mut merchant = body.merchant.as_deref().map(merchant_name).transpose()?;
    if caller.kind() == KeyKind::Merchant && merchant.is_none() {
        // A merchant key makes keys of its own merchant.
        merchant = caller.key().and_then(|k| k.merchant.clone());
    }
    let mut merchants = body
        .merchants
        .map(|ms| {
            ms.iter()
                .map(|m| merchant_name(m))
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    if let Some(ms) = merchants.as_mut() {
        ms.sort();
        ms.dedup();
        if ms.len() > MAX_LIST {
            return Err(invalid(format!("merchants: at most {MAX_LIST}")));
        }
    }
    if body.allowed_origins.len() > MAX_LIST {
        return Err(invalid(format!("allowed_origins: at most {MAX_LIST}")));
    }
    if let Some(o) = body.allowed_origins.iter().find(|o| !valid_origin(o)) {
        return Err(invalid(format!(
            "allowed_origins: `{o}` is not an origin like https://shop.example"
        )));
    }
    if let Some(l) = &body.rate_limits {
        l.validate().map_err(invalid)?;
    }
    let now = now_ms();
    let expires_at = match (body.expires_at.as_deref(), body.expires_in_secs) {
        (Some(_), Some(_)) => {
            return Err(invalid("give expires_at or expires_in_secs, not both"));
        }
        (Some(t), None) => {
            let at = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                .map_err(|e| invalid(format!("expires_at: not RFC 3339: {e}")))?;
            let ms = (at.unix_timestamp_nanos() / 1_000_000) as i64;
            if ms > now + MAX_LIFETIME_SECS as i64 * 1000 {
                return Err(invalid("expires_at: at most 100 years from now"));
            }
            Some(ms)
        }
        (None, Some(secs)) if (1..=MAX_LIFETIME_SECS).contains(&secs) => {
            Some(now + secs as i64 * 1000)
        }
        (None, Some(_)) => {
            return Err(invalid(format!(
                "expires_in_secs must be between 1 and {MAX_LIFETIME_SECS} (100 years)"
            )))
        }
        (None, None) => None,
    };
    if expires_at.is_some_and(|t| t <= now) {
        return Err(invalid("the key would have expired already"));
    }
    match body.kind {
        KeyKind::Admin => {
            if merchant.is_some() || merchants.is_some() || !body.allowed_origins.is_empty() {
                return Err(invalid(
                    "admin keys take no merchant, merchants or allowed_origins",
                ));
            }
        }
        KeyKind::Merchant => {
            if merchant.is_none() {
                return Err(invalid("a merchant key needs `merchant`"));
            }
            if merchants.is_some() || !body.allowed_origins.is_empty() {
                return Err(invalid(
                    "merchant keys take no merchants or allowed_origins (only search keys do)",
                ));
            }
        }
        KeyKind::Search => {
            if merchants.is_none() {
                merchants = merchant.clone().map(|m| vec![m]);
            }
        }
    }
    // What a merchant key may make (search keys and admin-kind requests were refused above).
    if caller.kind() == KeyKind::Merchant {
        let own = caller
            .key()
            .and_then(|k| k.merchant.clone())
            .ok_or_else(|| forbidden("this key has no merchant"))?;
        if merchant.as_ref() != Some(&own) {
            return Err(forbidden(
                "a merchant key creates keys of its own merchant only",
            ));
        }
        if merchants
            .as_ref()
            .is_some_and(|ms| ms.iter().any(|m| *m != own))
        {
            return Err(forbidden(
                "a merchant key's search keys may search its own merchant only",
            ));
        }
        if body.kind == KeyKind::Search {
            merchants = Some(vec![own]);
        }
    }
    Ok(KeySpec {
        kind: body.kind,
        label: body.label,
        merchant,
        merchants,
        origins: body.allowed_origins,
        rate_limits: body
            .rate_limits
            .map(|l| serde_json::to_value(l).unwrap_or_default()),
        expires_at,
    })
}

/// Whether `caller` may see and revoke `key`.
fn may_see(caller: &Principal, key: &KeyRecord) -> bool {
    match caller.kind() {
        KeyKind::Admin => true,
        KeyKind::Merchant => {
            key.merchant.is_some() && key.merchant == caller.key().and_then(|k| k.merchant.clone())
        }
        KeyKind::Search => false,
    }
}

/// Keys cannot be listed by search keys.
fn not_search(caller: &Principal) -> Result<(), ApiError> {
    if caller.kind() == KeyKind::Search {
        Err(forbidden("a search key can only search"))
    } else {
        Ok(())
    }
}

errors!(CreateKeyErrors: InvalidRequest, MalformedJson, InvalidField, UnsupportedMediaType);
errors!(ListKeysErrors: InvalidRequest, InvalidField);
errors!(KeyErrors: InvalidRequest, KeyNotFound);

/// Create a key.
///
/// The response is the only time the token is shown: store it now. Admin keys may create any
/// key; a merchant key creates merchant and search keys for its own merchant.
#[utoipa::path(
    post,
    path = "/v1/keys",
    tag = "keys",
    request_body(content = NewKeyBody, content_type = "application/json"),
    responses(
        (status = 201, description = "Created; `key` is the token, shown once.", body = CreatedBody),
        CreateKeyErrors,
    ),
)]
async fn create_key(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiJson(body): ApiJson<NewKeyBody>,
) -> Result<impl IntoResponse, ApiError> {
    let spec = spec_for(&caller, body)?;
    let (record, token) = mint(state.store(), spec).await?;
    state.forget_key_origins();
    tracing::info!(
        key_id = record.id,
        kind = record.kind.as_str(),
        "key created"
    );
    let body = CreatedBody {
        key: token,
        record: KeyBody::from_record(record),
    };
    Ok((
        StatusCode::CREATED,
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(body),
    ))
}

/// Which keys to list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Only keys of this merchant (a merchant key always sees only its own).
    pub merchant: Option<String>,
    /// Only keys of this kind.
    #[param(value_type = Option<String>, example = "search")]
    pub kind: Option<KeyKind>,
    /// Only keys whose visible prefix starts with this (e.g. `pk_live_4fQ`).
    pub prefix: Option<String>,
    /// Only keys whose label contains this.
    pub label: Option<String>,
    /// Revoked and expired keys too (default false).
    pub include_inactive: Option<bool>,
}

/// The listed keys.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = KeyList)]
pub struct KeyListBody {
    /// Newest first.
    pub keys: Vec<KeyBody>,
}

/// List keys (never their tokens).
#[utoipa::path(
    get,
    path = "/v1/keys",
    tag = "keys",
    params(ListParams),
    responses(
        (status = 200, description = "The keys the caller may see, newest first.", body = KeyListBody),
        ListKeysErrors,
    ),
)]
async fn list_keys(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<KeyListBody>, ApiError> {
    not_search(&caller)?;
    let asked = params.merchant.as_deref().map(merchant_name).transpose()?;
    let merchant = match caller.kind() {
        KeyKind::Admin => asked,
        _ => {
            let own = caller.key().and_then(|k| k.merchant.clone());
            if asked.is_some() && asked != own {
                return Err(forbidden(
                    "a merchant key lists its own merchant's keys only",
                ));
            }
            Some(own.ok_or_else(|| forbidden("this key has no merchant"))?)
        }
    };
    let query = KeyQuery {
        merchant,
        kind: params.kind,
        include_inactive: params.include_inactive.unwrap_or(false),
    };
    let keys = state.store().access().list_keys(query, now_ms()).await?;
    let wanted = |k: &KeyRecord| {
        params
            .prefix
            .as_deref()
            .is_none_or(|p| k.prefix.starts_with(p))
            && params.label.as_deref().is_none_or(|l| k.label.contains(l))
    };
    Ok(Json(KeyListBody {
        keys: keys
            .into_iter()
            .filter(wanted)
            .map(KeyBody::from_record)
            .collect(),
    }))
}

/// The `{id}` of a key.
#[allow(dead_code)]
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
struct KeyParams {
    /// The key's id (not its token).
    #[param(example = 7)]
    id: i64,
}

async fn visible_key(state: &AppState, caller: &Principal, id: i64) -> Result<KeyRecord, ApiError> {
    not_search(caller)?;
    match state.store().access().get_key(id).await {
        Ok(k) if may_see(caller, &k) => Ok(k),
        Ok(_) | Err(snapshop_store::StoreError::KeyNotFound(_)) => Err(ApiError::new(
            ErrorCode::KeyNotFound,
            format!("no key {id}"),
        )),
        Err(e) => Err(e.into()),
    }
}

/// One key (never its token).
#[utoipa::path(
    get,
    path = "/v1/keys/{id}",
    tag = "keys",
    params(KeyParams),
    responses(
        (status = 200, description = "The key.", body = KeyBody),
        KeyErrors,
    ),
)]
async fn get_key(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<KeyBody>, ApiError> {
    let key = visible_key(&state, &caller, id).await?;
    Ok(Json(KeyBody::from_record(key)))
}

/// Revoke a key, effective at once (also for a key revoking itself).
#[utoipa::path(
    delete,
    path = "/v1/keys/{id}",
    tag = "keys",
    params(KeyParams),
    responses(
        (status = 200, description = "Revoked (a second revoke keeps the first time).", body = KeyBody),
        KeyErrors,
    ),
)]
async fn revoke_key(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<KeyBody>, ApiError> {
    visible_key(&state, &caller, id).await?;
    let key = state.store().access().revoke_key(id, now_ms()).await?;
    state.forget_key_origins();
    tracing::info!(key_id = id, "key revoked");
    Ok(Json(KeyBody::from_record(key)))
}

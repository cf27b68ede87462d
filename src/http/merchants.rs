//! Merchant routes: the merchants with their catalogue sizes and quotas, and (admin only) setting
//! a merchant's own quotas.
//!
//! A merchant exists once it has a key or a product, or an admin has put it. Reading one needs
//! the right to manage it (an admin key or its own merchant key); listing all of them and
//! changing quotas need an admin key. This module must never change a catalogue.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use snapshop_store::{MerchantRecord, MerchantSettings};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::AdminKey;
use super::error::ApiError;
use super::extract::ApiJson;
use super::openapi::errors;
use super::products::rfc3339;
use crate::config::Quotas;
use crate::core::AppState;
use crate::error::ErrorCode;
use crate::ids::Merchant;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_merchants))
        .routes(routes!(get_merchant, put_merchant))
}

/// A merchant's catalogue size and quotas.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Merchant, example = json!({
    "id": "acme", "created_at": "2026-12-01T12:00:00Z", "products": 120, "images": 410,
    "max_products": 1000000, "max_images": 5000000,
    "overrides": {"max_products": null, "max_images": null}
}))]
pub struct MerchantBody {
    pub id: String,
    pub created_at: String,
    pub products: i64,
    pub images: i64,
    /// The quotas in force (403 `quota_exceeded` beyond).
    pub max_products: i64,
    pub max_images: i64,
    /// The merchant's own quotas; `null`: the service's defaults.
    pub overrides: QuotaBody,
}

/// A merchant's own quotas; `null` means the service's default (`[quotas]`).
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = MerchantQuotas, example = json!({"max_products": 5000, "max_images": null}))]
pub struct QuotaBody {
    #[serde(default)]
    #[schema(minimum = 0)]
    pub max_products: Option<i64>,
    #[serde(default)]
    #[schema(minimum = 0)]
    pub max_images: Option<i64>,
}

impl MerchantBody {
    fn new(m: MerchantRecord, defaults: &Quotas) -> Self {
        MerchantBody {
            max_products: m.max_products.unwrap_or(defaults.max_products_per_merchant),
            max_images: m.max_images.unwrap_or(defaults.max_images_per_merchant),
            overrides: QuotaBody {
                max_products: m.max_products,
                max_images: m.max_images,
            },
            id: m.name,
            created_at: rfc3339(m.created_at),
            products: m.products,
            images: m.images,
        }
    }
}

/// Every merchant.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = MerchantList)]
pub struct MerchantListBody {
    /// By id.
    pub merchants: Vec<MerchantBody>,
}

/// The `{merchant}` path parameter.
#[allow(dead_code)]
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
struct MerchantPathParams {
    /// The merchant: 1-64 characters of `A-Z a-z 0-9 . _ -`.
    #[param(pattern = r"^[A-Za-z0-9._-]{1,64}$", example = "acme")]
    merchant: String,
}

errors!(GetMerchantErrors: InvalidRequest, InvalidField, MerchantNotFound);
errors!(PutMerchantErrors: InvalidRequest, MalformedJson, InvalidField, UnsupportedMediaType);

/// List every merchant (admin keys only).
#[utoipa::path(
    get,
    path = "/v1/merchants",
    tag = "merchants",
    responses(
        (status = 200, description = "Every merchant, by id.", body = MerchantListBody),
    ),
)]
async fn list_merchants(
    State(state): State<AppState>,
    _: AdminKey,
) -> Result<Json<MerchantListBody>, ApiError> {
    let all = state.store().access().list_merchants().await?;
    let q = &state.config().quotas;
    Ok(Json(MerchantListBody {
        merchants: all.into_iter().map(|m| MerchantBody::new(m, q)).collect(),
    }))
}

/// A merchant's catalogue size and quotas (admin keys, or the merchant's own key).
#[utoipa::path(
    get,
    path = "/v1/merchants/{merchant}",
    tag = "merchants",
    params(MerchantPathParams),
    responses(
        (status = 200, description = "The merchant.", body = MerchantBody),
        GetMerchantErrors,
    ),
)]
async fn get_merchant(
    State(state): State<AppState>,
    merchant: Merchant,
) -> Result<Json<MerchantBody>, ApiError> {
    let m = state
        .store()
        .access()
        .get_merchant(merchant.as_str())
        .await?
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::MerchantNotFound,
                format!("no merchant `{merchant}`"),
            )
        })?;
    Ok(Json(MerchantBody::new(m, &state.config().quotas)))
}

/// Register a merchant, or set its own quotas (admin keys only).
///
/// The body replaces both overrides: a missing or `null` one goes back to the default.
#[utoipa::path(
    put,
    path = "/v1/merchants/{merchant}",
    tag = "merchants",
    params(MerchantPathParams),
    request_body(content = QuotaBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The merchant as it now is.", body = MerchantBody),
        PutMerchantErrors,
    ),
)]
async fn put_merchant(
    State(state): State<AppState>,
    _: AdminKey,
    merchant: Merchant,
    ApiJson(body): ApiJson<QuotaBody>,
) -> Result<Json<MerchantBody>, ApiError> {
    if body.max_products.is_some_and(|n| n < 0) || body.max_images.is_some_and(|n| n < 0) {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            "quotas must not be negative",
        ));
    }
    let m = state
        .store()
        .access()
        .put_merchant(
            merchant.as_str(),
            MerchantSettings {
                max_products: body.max_products,
                max_images: body.max_images,
            },
        )
        .await?;
    tracing::info!(merchant = %merchant, "merchant quotas set");
    Ok(Json(MerchantBody::new(m, &state.config().quotas)))
}

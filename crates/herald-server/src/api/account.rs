//! `GET /account` (CONTRACT §4.5).

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::authenticate;
use crate::api::error::{ApiError, ErrorBody};
use crate::AppState;

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AccountView {
    pub account: String,
    /// Signs this account's callbacks (Standard Webhooks).
    #[schema(example = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")]
    pub webhook_secret: String,
}

/// The calling account and the secret that signs its callbacks
#[utoipa::path(get, path = "/account", operation_id = "get_account", tag = "account",
    responses((status = 200, body = AccountView), (status = 401, body = ErrorBody)),
    security(("vgai_key" = []), ("bearer" = [])))]
pub async fn read(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<AccountView>, ApiError> {
    let id = authenticate(&app, &headers)?;
    let account = app
        .directory
        .account(id)
        .ok_or_else(ApiError::unauthorised)?;
    Ok(Json(AccountView {
        account: account.name,
        webhook_secret: account.webhook_secret,
    }))
}

//! Connections to channel providers: create, list, read, edit, delete,
//! check (CONTRACT §10). Credentials go in and are never given back: they
//! are checked, sealed under the operator's key and stored; every answer
//! shows the rest.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use herald_channels::connection::{check_credentials, check_settings};
use herald_channels::ProviderKind;
use herald_core::{AccountId, ConnectionId};
use herald_store::{ConnectionPatch, ConnectionRecord, NewConnection};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{authenticate, display_name, read_object, req_string, PathParam};
use crate::api::error::{ApiError, ErrorBody};
use crate::{providers, AppState};

/// A connection as the API shows it: everything but its credentials.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConnectionView {
    #[schema(example = "5f0c6a1e9b3d4c2a8e7f6d5c")]
    pub connection_id: String,
    pub name: String,
    pub provider: ProviderKind,
    /// The provider's settings as given (CONTRACT §10.1a).
    #[schema(value_type = Object)]
    pub settings: Map<String, Value>,
    /// The URLs to paste into the provider's console, by webhook name;
    /// empty for a provider that sends none, or on a server without a
    /// public URL.
    #[schema(example = json!({"message_status": "https://herald.example.com/providers/5f0c6a1e9b3d4c2a8e7f6d5c/message_status"}))]
    pub webhooks: BTreeMap<String, String>,
    pub created_at: String,
    pub updated_at: String,
}

/// `POST /connections`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct CreateConnection {
    #[schema(min_length = 1, max_length = 200)]
    name: String,
    provider: ProviderKind,
    /// Exactly the provider's credential names (CONTRACT §10.1a), each a
    /// string; a Vonage `private_key` is the application's PEM key.
    #[schema(value_type = Object)]
    credentials: Map<String, Value>,
    /// The provider's settings; all optional.
    #[schema(value_type = Option<Object>)]
    settings: Option<Map<String, Value>>,
}

/// `PATCH /connections/{connection_id}`: what is given replaces what was
/// there (credentials and settings whole).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct EditConnection {
    #[schema(min_length = 1, max_length = 200)]
    name: Option<String>,
    #[schema(value_type = Option<Object>)]
    credentials: Option<Map<String, Value>>,
    #[schema(value_type = Option<Object>)]
    settings: Option<Map<String, Value>>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConnectionList {
    pub connections: Vec<ConnectionView>,
}

/// What the provider said of the credentials.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CheckResult {
    pub ok: bool,
    #[schema(example = "Vonage accepted the credentials")]
    pub detail: String,
}

fn view(app: &AppState, record: ConnectionRecord) -> Result<ConnectionView, ApiError> {
    let provider: ProviderKind = record.provider.parse().map_err(|e: String| {
        ApiError::internal(
            "Internal server error",
            format!("connection {}: {e}", record.id),
        )
    })?;
    Ok(ConnectionView {
        webhooks: providers::webhooks(app.config.public_url.as_deref(), &record.id, provider),
        connection_id: record.id.to_string(),
        name: record.name,
        provider,
        settings: record.settings,
        created_at: herald_core::time::rfc3339(record.created_at),
        updated_at: herald_core::time::rfc3339(record.updated_at),
    })
}

fn bad(e: herald_channels::BadConnection) -> ApiError {
    ApiError::bad_request(e.0)
}

/// The key credentials are sealed with; a server without one cannot take
/// any.
fn sealer(app: &AppState) -> Result<&herald_core::secret::Sealer, ApiError> {
    app.config.secret_key.as_deref().ok_or_else(|| {
        ApiError::bad_request(
            "This server has no HERALD_SECRET_KEY to seal credentials with; its operator must \
             set one (herald secret-key makes one) before connections can be created",
        )
    })
}

pub(crate) fn connection_not_found(raw: &str) -> ApiError {
    ApiError::not_found(format!("Connection {raw} was not found"))
}

async fn find(app: &AppState, account: AccountId, raw: &str) -> Result<ConnectionRecord, ApiError> {
    let id: ConnectionId = raw.parse().map_err(|_| connection_not_found(raw))?;
    app.store
        .connection(account, &id)
        .await?
        .ok_or_else(|| connection_not_found(raw))
}

/// Create a connection
#[utoipa::path(post, path = "/connections", operation_id = "create_connection", tag = "connections",
    request_body = CreateConnection,
    responses((status = 201, body = ConnectionView),
        (status = 400, description = "A field is missing or wrong (the message names it), or the server lacks a setting the connection needs", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 413, description = "Body over 64 KiB", body = ErrorBody)),
    security(("vgai_key" = []), ("bearer" = [])))]
pub async fn create(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let account = authenticate(&app, &headers)?;
    let obj = read_object(body).await?;
    let absent: Vec<&str> = ["name", "provider", "credentials"]
        .into_iter()
        .filter(|f| obj.get(*f).is_none_or(Value::is_null))
        .collect();
    if !absent.is_empty() {
        return Err(ApiError::bad_request(format!(
            "Missing mandatory field(s): {}",
            absent.join(", ")
        )));
    }
    let name = display_name(&obj)?.unwrap_or_default();
    let provider: ProviderKind = req_string(&obj, "provider")?
        .parse()
        .map_err(ApiError::bad_request)?;
    let credentials = check_credentials(provider, &obj["credentials"]).map_err(bad)?;
    let settings = check_settings(provider, obj.get("settings")).map_err(bad)?;
    let sealer = sealer(&app)?;
    if !provider.webhooks().is_empty() && app.config.public_url.is_none() {
        return Err(ApiError::bad_request(format!(
            "A {provider} connection needs this server's public URL, which {provider} sends \
             webhooks to; its operator must set HERALD_PUBLIC_URL (--public-url)"
        )));
    }
    let id = ConnectionId::generate();
    let record = app
        .store
        .create_connection(NewConnection {
            sealed: providers::seal(sealer, &id, &credentials),
            id,
            account_id: account,
            name,
            provider: provider.as_str().to_owned(),
            settings,
        })
        .await?;
    tracing::info!(connection = %record.id, %provider, "connection created");
    Ok((StatusCode::CREATED, Json(view(&app, record)?)).into_response())
}

/// List the account's connections
#[utoipa::path(get, path = "/connections", operation_id = "list_connections", tag = "connections",
    responses((status = 200, body = ConnectionList), (status = 401, body = ErrorBody)),
    security(("vgai_key" = []), ("bearer" = [])))]
pub async fn list(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<ConnectionList>, ApiError> {
    let account = authenticate(&app, &headers)?;
    let connections = app
        .store
        .connections(account)
        .await?
        .into_iter()
        .map(|c| view(&app, c))
        .collect::<Result<_, _>>()?;
    Ok(Json(ConnectionList { connections }))
}

/// Read a connection
#[utoipa::path(get, path = "/connections/{connection_id}", operation_id = "get_connection", tag = "connections",
    params(("connection_id" = String, Path, description = "24 lowercase hex characters")),
    responses((status = 200, body = ConnectionView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("vgai_key" = []), ("bearer" = [])))]
pub async fn read(
    State(app): State<AppState>,
    headers: HeaderMap,
    PathParam(raw): PathParam,
) -> Result<Json<ConnectionView>, ApiError> {
    let account = authenticate(&app, &headers)?;
    Ok(Json(view(&app, find(&app, account, &raw).await?)?))
}

/// Edit a connection
#[utoipa::path(patch, path = "/connections/{connection_id}", operation_id = "edit_connection", tag = "connections",
    request_body = EditConnection,
    params(("connection_id" = String, Path, description = "24 lowercase hex characters")),
    responses((status = 200, body = ConnectionView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 413, description = "Body over 64 KiB", body = ErrorBody)),
    security(("vgai_key" = []), ("bearer" = [])))]
pub async fn edit(
    State(app): State<AppState>,
    headers: HeaderMap,
    PathParam(raw): PathParam,
    body: Body,
) -> Result<Json<ConnectionView>, ApiError> {
    let account = authenticate(&app, &headers)?;
    let current = find(&app, account, &raw).await?;
    let obj = read_object(body).await?;
    if obj.contains_key("provider") {
        return Err(ApiError::bad_request(
            "provider cannot be changed; create a new connection instead",
        ));
    }
    let provider: ProviderKind = current.provider.parse().map_err(|e: String| {
        ApiError::internal(
            "Internal server error",
            format!("connection {}: {e}", current.id),
        )
    })?;
    let name = display_name(&obj)?;
    let credentials = match obj.get("credentials") {
        None | Some(Value::Null) => None,
        Some(value) => Some(check_credentials(provider, value).map_err(bad)?),
    };
    let settings = match obj.get("settings") {
        None => None,
        given => Some(check_settings(provider, given).map_err(bad)?),
    };
    let sealed = match &credentials {
        Some(credentials) => Some(providers::seal(sealer(&app)?, &current.id, credentials)),
        None => None,
    };
    let record = app
        .store
        .update_connection(
            account,
            &current.id,
            ConnectionPatch {
                name,
                settings,
                sealed,
            },
        )
        .await?
        .ok_or_else(|| connection_not_found(&raw))?;
    app.providers.forget(&record.id);
    tracing::info!(
        connection = %record.id,
        credentials_replaced = credentials.is_some(),
        "connection edited"
    );
    Ok(Json(view(&app, record)?))
}

/// Delete a connection
#[utoipa::path(delete, path = "/connections/{connection_id}", operation_id = "delete_connection", tag = "connections",
    params(("connection_id" = String, Path, description = "24 lowercase hex characters")),
    responses((status = 204, description = "Deleted; sessions already under way on it finish"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "An agent uses it", body = ErrorBody)),
    security(("vgai_key" = []), ("bearer" = [])))]
pub async fn delete(
    State(app): State<AppState>,
    headers: HeaderMap,
    PathParam(raw): PathParam,
) -> Result<StatusCode, ApiError> {
    let account = authenticate(&app, &headers)?;
    let id: ConnectionId = raw.parse().map_err(|_| connection_not_found(&raw))?;
    if !app.store.delete_connection(account, &id).await? {
        return Err(connection_not_found(&raw));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Ask the provider whether the connection's credentials work
#[utoipa::path(post, path = "/connections/{connection_id}/check", operation_id = "check_connection", tag = "connections",
    params(("connection_id" = String, Path, description = "24 lowercase hex characters")),
    responses((status = 200, body = CheckResult), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("vgai_key" = []), ("bearer" = [])))]
pub async fn check(
    State(app): State<AppState>,
    headers: HeaderMap,
    PathParam(raw): PathParam,
) -> Result<Json<CheckResult>, ApiError> {
    let account = authenticate(&app, &headers)?;
    let record = find(&app, account, &raw).await?;
    let opened = providers::open(&app.config, &record)
        .map_err(|e| ApiError::internal("Internal server error", e))?;
    let (ok, detail) = opened.check().await;
    Ok(Json(CheckResult { ok, detail }))
}

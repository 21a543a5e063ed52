//! The account's opt-outs (CONTRACT §13.1): the recipients it must not
//! contact, per channel. People add themselves by keyword (STOP) or
//! through a flow's `opt_out` node; the account may add and remove them
//! here, as when someone asks by phone or email.

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use chrono::Utc;
use herald_core::{Channel, Destination};
use herald_store::{OptOut, OptOutCursor};
use serde::{Deserialize, Serialize};

use super::{authenticate, read_object, req_string};
use crate::api::error::{ApiError, ErrorBody};
use crate::AppState;

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OptOutView {
    pub channel: Channel,
    /// The recipient: a number's digits, or a SIP URI on voice.
    #[schema(example = "447700900123")]
    pub to: String,
    /// How it came: `api`, `keyword` (the person sent STOP or another
    /// opt-out word) or `flow` (an `opt_out` node).
    #[schema(example = "keyword")]
    pub source: String,
    /// The session that heard it, if one did.
    pub session_id: Option<String>,
    pub created_at: String,
}

impl From<OptOut> for OptOutView {
    fn from(o: OptOut) -> Self {
        OptOutView {
            channel: o.channel,
            to: o.to,
            source: o.source,
            session_id: o.session_id.map(|id| id.to_string()),
            created_at: herald_core::time::rfc3339(o.created_at),
        }
    }
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OptOutList {
    pub opt_outs: Vec<OptOutView>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[allow(dead_code)] // documents the body; the handler reads it field by field
pub struct CreateOptOut {
    pub channel: Channel,
    /// The recipient's number (`+` optional), or a SIP URI on voice.
    #[schema(example = "+447700900123")]
    pub to: String,
}

/// The recipient's canonical form on `channel`, as sessions store it.
fn recipient(channel: Channel, to: &str) -> Result<String, ApiError> {
    let parsed = if channel.is_messaging() {
        Destination::parse_messaging(to)
    } else {
        Destination::parse_voice(to)
    };
    parsed
        .map(|d| d.as_str().to_owned())
        .map_err(|_| ApiError::bad_request("to: Bad destination number format"))
}

fn channel_of(text: &str) -> Result<Channel, ApiError> {
    text.parse()
        .map_err(|_| ApiError::bad_request("channel must be one of voice, sms, whatsapp"))
}

/// A page's cursor: the channel and recipient of its last opt-out.
fn cursor_text(o: &OptOut) -> String {
    format!("{}:{}", o.channel, o.to)
}

fn parse_cursor(text: &str) -> Option<OptOutCursor> {
    let (channel, to) = text.split_once(':')?;
    Some(OptOutCursor {
        channel: channel.parse().ok()?,
        to: to.to_owned(),
    })
}

/// List the account's opt-outs, by channel then recipient
#[utoipa::path(get, path = "/opt-outs", operation_id = "list_opt_outs", tag = "opt-outs",
    params(
        ("channel" = Option<Channel>, Query, description = "Only this channel's"),
        ("limit" = Option<usize>, Query, minimum = 1, maximum = 1000, description = "1 to 1000, default 100"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page"),
    ),
    responses((status = 200, body = OptOutList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("vgai_key" = []), ("bearer" = [])))]
pub async fn list(
    State(app): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Json<OptOutList>, ApiError> {
    let account = authenticate(&app, &headers)?;
    let (mut channel, mut cursor, mut limit) = (None, None, DEFAULT_LIMIT);
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match name.as_ref() {
            "channel" => channel = Some(channel_of(&value)?),
            "cursor" => {
                cursor = Some(
                    parse_cursor(&value)
                        .ok_or_else(|| ApiError::bad_request("cursor is not valid"))?,
                )
            }
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "limit must be an integer from 1 to {MAX_LIMIT}"
                        ))
                    })?
            }
            _ => {}
        }
    }
    // One extra row says whether there is a next page.
    let mut page = app
        .store
        .opt_outs(account, channel, cursor, limit + 1)
        .await?;
    let next_cursor = if page.len() > limit {
        page.truncate(limit);
        page.last().map(cursor_text)
    } else {
        None
    };
    Ok(Json(OptOutList {
        opt_outs: page.into_iter().map(OptOutView::from).collect(),
        next_cursor,
    }))
}

/// Opt a recipient out of a channel
///
/// 201 when the recipient is added; 200, with the opt-out as it was, when
/// it was there already.
#[utoipa::path(post, path = "/opt-outs", operation_id = "create_opt_out", tag = "opt-outs",
    request_body = CreateOptOut,
    responses((status = 201, body = OptOutView), (status = 200, description = "Already opted out", body = OptOutView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 413, body = ErrorBody)),
    security(("vgai_key" = []), ("bearer" = [])))]
pub async fn create(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<OptOutView>), ApiError> {
    let account = authenticate(&app, &headers)?;
    let obj = read_object(body).await?;
    let channel = channel_of(&req_string(&obj, "channel")?)?;
    let to = recipient(channel, &req_string(&obj, "to")?)?;
    let opt_out = OptOut {
        channel,
        to: to.clone(),
        source: "api".into(),
        session_id: None,
        created_at: Utc::now(),
    };
    if app.store.add_opt_out(account, opt_out.clone()).await? {
        return Ok((StatusCode::CREATED, Json(opt_out.into())));
    }
    // The one there already, as it was recorded (or, taken off since, this).
    let existing = app.store.opt_out(account, channel, &to).await?;
    Ok((StatusCode::OK, Json(existing.unwrap_or(opt_out).into())))
}

/// Take a recipient off a channel's opt-outs
#[utoipa::path(delete, path = "/opt-outs/{channel}/{to}", operation_id = "delete_opt_out", tag = "opt-outs",
    params(("channel" = Channel, Path), ("to" = String, Path, description = "The recipient, as listed")),
    responses((status = 204, description = "Removed"), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("vgai_key" = []), ("bearer" = [])))]
pub async fn delete(
    State(app): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let account = authenticate(&app, &headers)?;
    let Path((channel, to)) = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let channel = channel_of(&channel)?;
    let to = recipient(channel, &to)?;
    if app.store.remove_opt_out(account, channel, &to).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "{to} has not opted out of {channel}"
        )))
    }
}

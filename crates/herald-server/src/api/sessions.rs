//! Sessions: read one, list with a cursor (CONTRACT §7).

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::Json;
use chrono::{DateTime, Utc};
use herald_core::session::transcript::{transcript, TranscriptEntry};
use herald_core::session::SessionEvent;
use herald_core::session::{Outcome, SessionParameter, SessionStatus};
use herald_core::time::{rfc3339, session_start_time};
use herald_core::{AccountId, AgentId, CampaignId, Channel, SessionId};
use herald_store::{EventRecord, SessionFilter, SessionRecord};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{authenticate, PathParam};
use crate::api::error::{ApiError, ErrorBody};
use crate::AppState;

const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 100;

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SessionView {
    pub session_id: String,
    pub agent_id: String,
    /// The published version the session runs.
    pub agent_version: u32,
    pub channel: Channel,
    pub to: String,
    /// The agent's number the session runs from.
    pub from: String,
    pub status: SessionStatus,
    /// Null until the session ends.
    pub outcome: Option<Outcome>,
    pub session_parameters: Vec<SessionParameter>,
    pub status_url: Option<String>,
    /// Voice only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hangup_on_answer_machine: Option<bool>,
    /// The campaign the session is an attempt of, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub campaign_id: Option<String>,
    /// Voice only, once the call is placed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversation_uuid: Option<String>,
    pub session_start_time: String,
    pub created_at: String,
    pub ended_at: Option<String>,
    /// What happened, in order; present when one session is read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<EventView>>,
}

/// One event: its type, its time, and fields of its own.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventView {
    #[serde(rename = "type")]
    #[schema(example = "queued")]
    pub kind: String,
    pub timestamp: String,
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub data: serde_json::Map<String, Value>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SessionList {
    pub sessions: Vec<SessionView>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

impl SessionView {
    fn new(s: SessionRecord, with_events: bool) -> Self {
        let events = with_events.then(|| {
            s.events
                .into_iter()
                .map(|e| EventView {
                    kind: e.kind,
                    timestamp: rfc3339(e.at),
                    data: match e.data {
                        Some(Value::Object(map)) => map,
                        Some(other) => [("data".to_owned(), other)].into_iter().collect(),
                        None => Default::default(),
                    },
                })
                .collect()
        });
        SessionView {
            session_id: s.id.to_string(),
            agent_id: s.agent_id.to_string(),
            agent_version: s.agent_version,
            channel: s.channel,
            to: s.to,
            from: s.from,
            status: s.status,
            outcome: s.outcome,
            session_parameters: s.parameters.iter().cloned().collect(),
            status_url: s.status_url,
            hangup_on_answer_machine: (s.channel == Channel::Voice).then_some(s.hangup_on_machine),
            conversation_uuid: s.conversation_uuid,
            campaign_id: s.campaign_id.map(|c| c.to_string()),
            session_start_time: session_start_time(s.created_at),
            created_at: rfc3339(s.created_at),
            ended_at: s.ended_at.map(rfc3339),
            events,
        }
    }
}

/// The account's session with the id in the path; another account's, or
/// an id that is not one, is not found (CONTRACT §4).
pub async fn owned_session(
    app: &AppState,
    account: AccountId,
    raw: &str,
) -> Result<SessionRecord, ApiError> {
    let not_found = || ApiError::not_found(format!("Session {raw} was not found"));
    let id: SessionId = raw.parse().map_err(|_| not_found())?;
    app.store.session(account, id).await?.ok_or_else(not_found)
}

/// Read a session and its events
#[utoipa::path(get, path = "/sessions/{session_id}", operation_id = "get_session", tag = "sessions",
    params(("session_id" = String, Path)),
    responses((status = 200, body = SessionView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("vgai_key" = []), ("bearer" = [])))]
pub async fn read(
    State(app): State<AppState>,
    headers: HeaderMap,
    PathParam(raw): PathParam,
) -> Result<Json<SessionView>, ApiError> {
    let account = authenticate(&app, &headers)?;
    let session = owned_session(&app, account, &raw).await?;
    Ok(Json(SessionView::new(session, true)))
}

/// List the account's sessions, newest first
#[utoipa::path(get, path = "/sessions", operation_id = "list_sessions", tag = "sessions",
    params(
        ("agent_id" = Option<String>, Query, description = "Only this agent's sessions"),
        ("campaign_id" = Option<String>, Query, description = "Only the attempts of this campaign"),
        ("status" = Option<SessionStatus>, Query, description = "queued, active or ended"),
        ("limit" = Option<usize>, Query, minimum = 1, maximum = 100, description = "1 to 100, default 20"),
        ("cursor" = Option<String>, Query,
            pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
            description = "next_cursor of the previous page"),
    ),
    responses((status = 200, body = SessionList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("vgai_key" = []), ("bearer" = [])))]
pub async fn list(
    State(app): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Json<SessionList>, ApiError> {
    let account = authenticate(&app, &headers)?;
    let mut filter = SessionFilter {
        limit: DEFAULT_LIMIT,
        ..Default::default()
    };
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match name.as_ref() {
            "agent_id" => {
                // An id that cannot exist matches nothing, like an unknown one.
                filter.agent_id =
                    Some(value.parse::<AgentId>().unwrap_or_else(|_| {
                        "000000000000000000000000".parse().expect("a valid id")
                    }));
            }
            "campaign_id" => {
                // As for agents: an id that cannot exist matches nothing.
                filter.campaign_id =
                    Some(value.parse::<CampaignId>().unwrap_or_else(|_| {
                        "000000000000000000000000".parse().expect("a valid id")
                    }));
            }
            "status" => {
                filter.status = Some(value.parse().map_err(|_| {
                    ApiError::bad_request("status must be one of queued, active, ended")
                })?)
            }
            "limit" => {
                filter.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request("limit must be an integer from 1 to 100")
                    })?
            }
            "cursor" => {
                filter.before = Some(
                    value
                        .parse()
                        .map_err(|_| ApiError::bad_request("cursor is not valid"))?,
                )
            }
            _ => {}
        }
    }
    let limit = filter.limit;
    // One extra row says whether there is a next page.
    filter.limit += 1;
    let mut sessions = app.store.sessions(account, filter).await?;
    let next_cursor = if sessions.len() > limit {
        sessions.truncate(limit);
        sessions.last().map(|s| s.id.to_string())
    } else {
        None
    };
    Ok(Json(SessionList {
        sessions: sessions
            .into_iter()
            .map(|s| SessionView::new(s, false))
            .collect(),
        next_cursor,
    }))
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Transcript {
    pub session_id: String,
    pub status: SessionStatus,
    pub outcome: Option<Outcome>,
    /// The conversation in order.
    pub transcript: Vec<TranscriptEntry>,
}

/// The conversation `events` tell; events this build cannot read (a newer
/// herald's) are not part of it.
pub fn transcript_of(events: &[EventRecord]) -> Vec<TranscriptEntry> {
    let events: Vec<(SessionEvent, DateTime<Utc>)> = events
        .iter()
        .filter_map(|e| Some((e.event().ok()?, e.at)))
        .collect();
    transcript(events.iter().map(|(e, at)| (e, *at)))
}

/// A session's conversation
#[utoipa::path(get, path = "/sessions/{session_id}/transcript", operation_id = "get_transcript", tag = "sessions",
    params(("session_id" = String, Path)),
    responses((status = 200, body = Transcript), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("vgai_key" = []), ("bearer" = [])))]
pub async fn read_transcript(
    State(app): State<AppState>,
    headers: HeaderMap,
    PathParam(raw): PathParam,
) -> Result<Json<Transcript>, ApiError> {
    let account = authenticate(&app, &headers)?;
    let session = owned_session(&app, account, &raw).await?;
    Ok(Json(Transcript {
        session_id: session.id.to_string(),
        status: session.status,
        outcome: session.outcome,
        transcript: transcript_of(&session.events),
    }))
}

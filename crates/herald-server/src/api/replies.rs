//! What people say back: inbound messages and voice input reach the open
//! session with their number, or start an inbound session of the agent that
//! owns the number; and a live agent's words and hand-over decisions reach
//! the session they hold.
//!
//! Three doors lead in:
//! - `POST /inbound/{channel}`, for channel providers, authenticated by the
//!   operator's inbound token (`--inbound-token`);
//! - `POST /simulator/inbound`, where an account plays the person to its own
//!   agents on the simulator (`herald chat` uses it);
//! - `POST /sessions/{session_id}/live-agent`, for the human a Live Agent
//!   Routing node handed the conversation to.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use chrono::Utc;
use herald_core::session::SessionInput;
use herald_core::{AccountId, Channel, Destination, SessionId};
use herald_flow::lifecycle::SessionState;
use herald_store::{AgentIndexRow, Created, NewInput, NewSession};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Digest;
use subtle::ConstantTimeEq;

use super::{authenticate, opt_string, read_object, req_string, PathParam};
use crate::api::error::{ApiError, ErrorBody};
use crate::AppState;

/// The longest text one input may carry.
const MAX_INPUT: usize = 4096;

/// Where an input went.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Delivered {
    pub session_id: String,
    /// True when the input started a new (inbound) session.
    pub started: bool,
}

/// An input from the person, as the inbound doors take it.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[allow(dead_code)] // documents the body; handlers read it field by field
pub struct InboundMessage {
    /// The person's number (a SIP URI is allowed on voice).
    pub from: String,
    /// The agent's number.
    pub to: String,
    /// Messaging: the message; voice: not allowed (use digits or speech).
    pub text: Option<String>,
    /// Voice: keypad digits (`0-9`, `*`, `#`).
    pub digits: Option<String>,
    /// Voice: a spoken phrase, as recognised text.
    pub speech: Option<String>,
}

/// A simulated input: an [`InboundMessage`] with its channel.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct SimulatedMessage {
    pub channel: Channel,
    pub from: String,
    pub to: String,
    pub text: Option<String>,
    pub digits: Option<String>,
    pub speech: Option<String>,
}

/// Answer as the person, through the simulator
#[utoipa::path(post, path = "/simulator/inbound", operation_id = "simulate_inbound", tag = "conversations",
    request_body = SimulatedMessage,
    responses((status = 200, body = Delivered), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody)),
    security(("vgai_key" = []), ("bearer" = [])))]
pub async fn simulated(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Delivered>, ApiError> {
    let account = authenticate(&app, &headers)?;
    let obj = read_object(body).await?;
    let channel_text = req_string(&obj, "channel")?;
    let channel: Channel = channel_text
        .parse()
        .map_err(|_| ApiError::bad_request(format!("Unsupported channel: {channel_text}")))?;
    let (person, number, input) = read_input(&obj, channel)?;
    let owner = app
        .directory
        .agent_by_number(account, &number, channel, app.config.region)
        .filter(|a| a.channel == channel && a.region == app.config.region);
    let conversation = Conversation {
        channel,
        person,
        number,
    };
    deliver(
        &app,
        Sender::Account(account),
        owner,
        conversation,
        input,
        None,
    )
    .await
    .map(Json)
}

/// A channel provider's inbound message or input
#[utoipa::path(post, path = "/inbound/{channel}", operation_id = "receive_inbound", tag = "conversations",
    params(("channel" = Channel, Path), ("x-herald-inbound-token" = String, Header)),
    request_body = InboundMessage,
    responses((status = 200, body = Delivered), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn provider(
    State(app): State<AppState>,
    headers: HeaderMap,
    PathParam(channel_text): PathParam,
    body: Body,
) -> Result<Json<Delivered>, ApiError> {
    let Some(expected) = &app.config.inbound_token else {
        return Err(ApiError::not_found(
            "Inbound messages are not enabled on this server",
        ));
    };
    let given = headers
        .get("x-herald-inbound-token")
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if !bool::from(given.ct_eq(expected.expose().as_bytes())) {
        return Err(ApiError::unauthorised());
    }
    let channel: Channel = channel_text
        .parse()
        .map_err(|_| ApiError::not_found(format!("Unsupported channel: {channel_text}")))?;
    let obj = read_object(body).await?;
    let (person, number, input) = read_input(&obj, channel)?;
    let owner = app
        .directory
        .agent_for_number(&number, channel, app.config.region);
    let conversation = Conversation {
        channel,
        person,
        number,
    };
    deliver(&app, Sender::Provider, owner, conversation, input, None)
        .await
        .map(Json)
}

fn no_agent(channel: Channel, number: &str) -> ApiError {
    ApiError::not_found(format!(
        "No published {channel} agent has the number {number}"
    ))
}

/// Reads `from`, `to` and the one input field the channel takes.
fn read_input(
    obj: &serde_json::Map<String, Value>,
    channel: Channel,
) -> Result<(String, String, NewInput), ApiError> {
    let from = req_string(obj, "from")?;
    let to = req_string(obj, "to")?;
    let person = if channel.is_messaging() {
        Destination::parse_messaging(&from)
    } else {
        Destination::parse_voice(&from)
    }
    .map_err(|_| ApiError::bad_request("Bad sender number format"))?;
    let number = Destination::parse_messaging(&to)
        .map_err(|_| ApiError::bad_request("Bad destination number format"))?;
    let mut given = Vec::new();
    for field in ["text", "digits", "speech"] {
        if let Some(value) = opt_string(obj, field)? {
            given.push((field, value));
        }
    }
    let allowed: &[&str] = if channel.is_messaging() {
        &["text"]
    } else {
        &["digits", "speech"]
    };
    let (field, text) = match given.as_slice() {
        [one] if allowed.contains(&one.0) => one.clone(),
        _ => {
            return Err(ApiError::bad_request(format!(
                "A {channel} input has exactly one of: {}",
                allowed.join(", ")
            )))
        }
    };
    check_text(field, &text)?;
    if field == "digits"
        && !text
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'*' || b == b'#')
    {
        return Err(ApiError::bad_request("digits may hold only 0-9, * and #"));
    }
    let input = match field {
        "digits" => SessionInput::Digits(text),
        "speech" => SessionInput::Speech {
            text,
            confidence: None,
        },
        _ => SessionInput::Text(text),
    };
    let input = NewInput {
        input,
        at: Utc::now(),
        dedupe: None,
    };
    Ok((
        person.as_str().to_owned(),
        number.as_str().to_owned(),
        input,
    ))
}

/// What a person or live agent may say: not blank, not too long, and no
/// control characters but line breaks and tabs (NUL above all, which
/// PostgreSQL cannot store).
fn check_text(field: &str, text: &str) -> Result<(), ApiError> {
    if text.trim().is_empty() || text.len() > MAX_INPUT {
        return Err(ApiError::bad_request(format!(
            "{field} must be 1 to {MAX_INPUT} bytes and not blank"
        )));
    }
    if text
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(ApiError::bad_request(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(())
}

/// Who an input comes from, which decides the sessions it may reach.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Sender {
    /// An account playing the person on the simulator: only its own
    /// sessions.
    Account(AccountId),
    /// The channel provider: the sessions of the agent that owns the number
    /// now, or, when no live agent owns it, those still open on it (an
    /// agent deleted or renumbered keeps the number for them until they
    /// end, so they are its own).
    Provider,
}

/// The person and the agent's number an input passes between.
pub(crate) struct Conversation {
    pub channel: Channel,
    pub person: String,
    pub number: String,
}

/// A message a connection's provider brought in: its connection, which the
/// sessions it reaches must run on, and the provider's id of it, which
/// makes a second delivery of it the first.
pub(crate) struct ViaConnection<'a> {
    pub connection: &'a herald_core::ConnectionId,
    pub message_id: &'a str,
}

/// Whether the session runs on `connection`.
async fn runs_on(
    app: &AppState,
    session: SessionId,
    connection: &herald_core::ConnectionId,
) -> Result<bool, ApiError> {
    let Some(record) = app.store.session_for_work(session).await? else {
        return Ok(false);
    };
    Ok(app
        .directory
        .agent_version(app.store.as_ref(), &record.agent_id, record.agent_version)
        .await?
        .is_some_and(|v| v.connection_id.as_ref() == Some(connection)))
}

/// Hands an input to the open session between the person and the agent's
/// number that `sender` may reach, or starts an inbound session of `owner`,
/// the agent whose published version has the number, with it. `via`, for
/// a message a connection brought in, narrows both to what runs on it.
pub(crate) async fn deliver(
    app: &AppState,
    sender: Sender,
    owner: Option<AgentIndexRow>,
    conversation: Conversation,
    mut input: NewInput,
    via: Option<ViaConnection<'_>>,
) -> Result<Delivered, ApiError> {
    let Conversation {
        channel,
        person,
        number,
    } = conversation;
    let owner = match (&via, owner) {
        (Some(via), Some(owner)) => {
            let on_it = match &owner.published {
                Some((version, _)) => app
                    .directory
                    .agent_version(app.store.as_ref(), &owner.agent_id, *version)
                    .await?
                    .is_some_and(|v| v.connection_id.as_ref() == Some(via.connection)),
                None => false,
            };
            on_it.then_some(owner)
        }
        (_, owner) => owner,
    };
    if let Some(via) = &via {
        input.dedupe = Some(format!("inbound:{}", via.message_id));
    }
    let open = app.store.open_sessions(channel, &person, &number).await?;
    let reachable = open.iter().filter(|s| match sender {
        Sender::Account(account) => s.account_id == account,
        Sender::Provider => owner.as_ref().is_none_or(|o| o.agent_id == s.agent_id),
    });
    for session in reachable {
        if let Some(via) = &via {
            if !runs_on(app, session.id, via.connection).await? {
                continue;
            }
        }
        if app
            .store
            .deliver_input(session.id, input.clone())
            .await?
            .is_some()
        {
            app.dispatch_wakeup.notify_one();
            return Ok(Delivered {
                session_id: session.id.to_string(),
                started: false,
            });
        }
        // It ended meanwhile: try the next, or start a session.
    }
    let Some(agent) = owner else {
        return Err(no_agent(channel, &number));
    };
    if channel == Channel::Voice {
        return Err(ApiError::not_found(format!(
            "No call with {person} is open"
        )));
    }
    // The directory finds agents by their published number, so one
    // without a published version does not get here.
    let Some((version, number)) = agent.published.clone() else {
        return Err(ApiError::not_found(format!(
            "published version for Agent {} was not found",
            agent.agent_id
        )));
    };
    let id = SessionId::generate();
    let delivered = Delivered {
        session_id: id.to_string(),
        started: true,
    };
    // The provider's id makes a second delivery of the message that
    // started a session the first (a key no client can send: it has
    // spaces).
    let idempotency = via.as_ref().map(|via| herald_store::NewIdempotency {
        key: format!("inbound {} {}", via.connection, via.message_id),
        request_hash: sha2::Sha256::digest(via.message_id.as_bytes()).into(),
        response: serde_json::to_string(&delivered).expect("a delivery serialises"),
    });
    let session = NewSession {
        id,
        account_id: agent.account_id,
        agent_id: agent.agent_id.clone(),
        agent_version: version,
        channel,
        to: person,
        from: number,
        status_url: None,
        hangup_on_machine: false,
        parameters: Default::default(),
        whatsapp: None,
        created_at: Utc::now(),
        idempotency,
        inbound: true,
        first_input: Some(input),
        campaign_id: None,
    };
    if let Created::Duplicate(first) = app.store.create_session(session).await? {
        return serde_json::from_str(&first.response).map_err(|e| {
            ApiError::internal(
                "Failed to fetch preconfigured session information",
                format!("the first delivery's answer cannot be read: {e}"),
            )
        });
    }
    app.dispatch_wakeup.notify_one();
    Ok(delivered)
}

/// What a live agent sends: `{"type": "message", "text"}`,
/// `{"type": "hand_back"}` or `{"type": "end"}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct LiveAgentInput {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

/// A live agent's message or decision
#[utoipa::path(post, path = "/sessions/{session_id}/live-agent", operation_id = "send_live_agent_input", tag = "conversations",
    params(("session_id" = String, Path)),
    request_body = LiveAgentInput,
    responses((status = 200, body = Delivered), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 413, body = ErrorBody)),
    security(("vgai_key" = []), ("bearer" = [])))]
pub async fn live_agent(
    State(app): State<AppState>,
    headers: HeaderMap,
    PathParam(raw): PathParam,
    body: Body,
) -> Result<Json<Delivered>, ApiError> {
    let account = authenticate(&app, &headers)?;
    let obj = read_object(body).await?;
    let kind = req_string(&obj, "type")?;
    let input = match kind.as_str() {
        "message" => {
            let text = req_string(&obj, "text")?;
            check_text("text", &text)?;
            SessionInput::LiveAgentMessage(text)
        }
        "hand_back" => SessionInput::LiveAgentHandBack,
        "end" => SessionInput::LiveAgentEnd,
        _ => {
            return Err(ApiError::bad_request(
                "type must be one of message, hand_back, end",
            ))
        }
    };
    let id = session_of(&app, account, &raw).await?;
    let input = NewInput {
        input,
        at: Utc::now(),
        dedupe: None,
    };
    match app.store.deliver_input(id, input).await? {
        Some(_) => {
            app.dispatch_wakeup.notify_one();
            Ok(Json(Delivered {
                session_id: id.to_string(),
                started: false,
            }))
        }
        None => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("Session {id} has ended"),
        )),
    }
}

/// The account's session with this id, held by a live agent.
async fn session_of(app: &AppState, account: AccountId, raw: &str) -> Result<SessionId, ApiError> {
    let session = super::sessions::owned_session(app, account, raw).await?;
    let id = session.id;
    let with_live_agent = session
        .flow_state
        .as_ref()
        .and_then(|state| SessionState::from_stored(state).ok())
        .is_some_and(|state| state.with_live_agent());
    if !with_live_agent {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("Session {id} is not with a live agent"),
        ));
    }
    Ok(id)
}

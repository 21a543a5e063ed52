//! Providers' webhooks (CONTRACT §11): what a connection's provider
//! reports, at `/providers/{connection_id}/{webhook}`; a call's answer and
//! input webhooks ([`voice`]) are answered with its next turn.
//!
//! Each request is verified with the connection's own secret before
//! anything is read (401 otherwise, and nothing changes); a report becomes
//! an input of the session it names, keyed so that a second delivery is
//! the first; one that names nothing herald knows is answered 200, so that
//! the provider does not retry it for days, and counted.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use herald_channels::ProviderKind;
use herald_core::session::{MessageStatus, SessionInput};
use herald_core::{Channel, ConnectionId, Destination, SessionId};
use herald_store::NewInput;

use crate::api::error::ApiError;
use crate::api::replies::{self, Conversation, Sender, ViaConnection};
use crate::providers::{Link, Opened};
use crate::session::driver::parse_client_ref;
use crate::AppState;

pub mod smpp;
mod twilio;
mod voice;
mod vonage;
mod whatsapp_cloud;

/// What herald put in the query of the URLs it gave a call: the session
/// (for a webhook that outruns the store's write of the call's id) and the
/// turn an input answers.
#[derive(Debug, Default)]
pub(crate) struct Query {
    session: Option<SessionId>,
    turn: Option<u64>,
    /// The reference of a message whose statuses come here.
    reference: Option<String>,
}

impl Query {
    fn parse(query: Option<&str>) -> Query {
        let mut parsed = Query::default();
        for pair in query.unwrap_or_default().split('&') {
            match pair.split_once('=') {
                Some(("session", v)) => parsed.session = v.parse().ok(),
                Some(("turn", v)) => parsed.turn = v.parse().ok(),
                Some(("ref", v)) => {
                    parsed.reference = url::form_urlencoded::parse(format!("r={v}").as_bytes())
                        .next()
                        .map(|(_, r)| r.into_owned())
                }
                _ => {}
            }
        }
        parsed
    }
}

/// What became of a webhook, as `/metrics` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Applied,
    /// It names nothing herald knows (or a session that is over).
    Unmatched,
    /// Verified and understood, but of nothing herald acts on.
    Ignored,
}

impl Fate {
    fn as_str(self) -> &'static str {
        match self {
            Fate::Applied => "applied",
            Fate::Unmatched => "unmatched",
            Fate::Ignored => "ignored",
        }
    }
}

fn no_such_webhook() -> ApiError {
    ApiError::not_found("No such webhook")
}

/// The longest text of an inbound message a flow is given.
const MAX_TEXT: usize = 4096;

/// A person's text as a flow takes it: without control characters but
/// line breaks and tabs, and at most [`MAX_TEXT`] bytes.
fn readable(text: &str) -> String {
    let mut out = String::new();
    for c in text
        .chars()
        .filter(|c| !c.is_control() || matches!(c, '\n' | '\r' | '\t'))
    {
        if out.len() + c.len_utf8() > MAX_TEXT {
            break;
        }
        out.push(c);
    }
    out
}

/// Receive a provider's report
#[utoipa::path(post, path = "/providers/{connection_id}/{webhook}", operation_id = "receive_provider_webhook", tag = "providers",
    params(("connection_id" = String, Path, description = "The connection's id"),
        ("webhook" = String, Path, description = "A name of the connection's `webhooks`, or `input`, where a call's `input` and `notify` actions post"),
        ("authorization" = Option<String>, Header, description = "The provider's signature (Vonage: Bearer, a JWT signed with the signature secret)")),
    request_body(content = Object, description = "The provider's report, in its own shape"),
    responses((status = 200, description = "Taken (or matched nothing herald knows; counted in /metrics). For `answer` and `input`, the call's next turn: a JSON array of NCCO actions"),
        (status = 400, description = "Not a report of the provider's", body = crate::api::error::ErrorBody),
        (status = 401, description = "The signature does not verify; nothing changed", body = crate::api::error::ErrorBody),
        (status = 404, description = "No such connection or webhook", body = crate::api::error::ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = crate::api::error::ErrorBody)))]
pub async fn receive(
    State(app): State<AppState>,
    path: Result<Path<(String, String)>, axum::extract::rejection::PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Ok(Path((raw, webhook))) = path else {
        return Err(no_such_webhook());
    };
    let opened = connection(&app, &raw).await?;
    let hook = Hook {
        app: &app,
        opened: &opened,
        query: Query::parse(query.as_deref()),
        raw_query: query.as_deref().unwrap_or_default(),
        headers: &headers,
        body: &body,
    };
    match (&opened.link, opened.provider) {
        (Link::Vonage(vonage), ProviderKind::Vonage) => {
            vonage::receive(hook, vonage, &webhook).await
        }
        (Link::Twilio(twilio), ProviderKind::Twilio) => {
            twilio::receive(hook, twilio, &webhook).await
        }
        (Link::WhatsappCloud(whatsapp), ProviderKind::WhatsappCloud) if webhook == "webhook" => {
            whatsapp_cloud::receive(hook, whatsapp).await
        }
        _ => Err(no_such_webhook()),
    }
}

/// Verify a webhook's subscription
///
/// Meta's GET handshake (CHANNELS §5): the challenge echoed when the mode
/// is `subscribe` and the token is the connection's verify token; 403
/// otherwise.
#[utoipa::path(get, path = "/providers/{connection_id}/{webhook}", operation_id = "verify_provider_webhook", tag = "providers",
    params(("connection_id" = String, Path, description = "The connection's id (a WhatsApp Cloud connection)"),
        ("webhook" = String, Path, description = "`webhook`"),
        ("hub.mode" = Option<String>, Query, description = "`subscribe`"),
        ("hub.verify_token" = Option<String>, Query, description = "The connection's verify token"),
        ("hub.challenge" = Option<String>, Query, description = "What to echo")),
    responses((status = 200, description = "The challenge, as text", body = String, content_type = "text/plain"),
        (status = 403, description = "The token is not the connection's", body = crate::api::error::ErrorBody),
        (status = 404, description = "No such connection or webhook", body = crate::api::error::ErrorBody)))]
pub async fn handshake(
    State(app): State<AppState>,
    path: Result<Path<(String, String)>, axum::extract::rejection::PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let Ok(Path((raw, webhook))) = path else {
        return Err(no_such_webhook());
    };
    let opened = connection(&app, &raw).await?;
    let Link::WhatsappCloud(whatsapp) = &opened.link else {
        return Err(no_such_webhook());
    };
    if webhook != "webhook" {
        return Err(no_such_webhook());
    }
    let pairs: Vec<(String, String)> =
        url::form_urlencoded::parse(query.as_deref().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let verify_token = whatsapp.credentials().verify_token.expose();
    match herald_channels::whatsapp_cloud::handshake(
        get("hub.mode"),
        get("hub.verify_token"),
        get("hub.challenge"),
        verify_token,
    ) {
        Some(challenge) => {
            app.metrics.webhook("whatsapp_cloud", "webhook", "verified");
            Ok((
                StatusCode::OK,
                [(axum::http::header::CONTENT_TYPE, "text/plain")],
                challenge.to_owned(),
            )
                .into_response())
        }
        None => {
            app.metrics
                .webhook("whatsapp_cloud", "webhook", "bad_signature");
            tracing::warn!(connection = %opened.id, "a webhook handshake with the wrong verify token");
            let mut error = ApiError::bad_request("The verify token is not the connection's");
            error.status = StatusCode::FORBIDDEN;
            Err(error)
        }
    }
}

/// The connection a webhook's path names, opened; 404 for none.
async fn connection(app: &AppState, raw: &str) -> Result<std::sync::Arc<Opened>, ApiError> {
    let id: ConnectionId = raw.parse().map_err(|_| no_such_webhook())?;
    app.providers
        .get(&app.config, app.store.as_ref(), &id)
        .await
        .map_err(|e| {
            // The operator's to mend (the key); the provider tries again.
            let mut error = ApiError::internal("The connection cannot be opened", format!("{e:#}"));
            error.status = StatusCode::SERVICE_UNAVAILABLE;
            error
        })?
        .ok_or_else(no_such_webhook)
}

/// One webhook's request, for the provider's module to verify and read.
struct Hook<'a> {
    app: &'a AppState,
    opened: &'a Opened,
    query: Query,
    /// The query as it came, for a signature over the URL.
    raw_query: &'a str,
    headers: &'a HeaderMap,
    body: &'a [u8],
}

impl Hook<'_> {
    /// Counts the webhook in `/metrics`.
    fn count(&self, name: &'static str, result: &'static str) {
        self.app
            .metrics
            .webhook(self.opened.provider.as_str(), name, result);
    }

    /// Counts what came of a webhook that is not a turn; 200 unless it was
    /// not a report of the provider's.
    fn answer(
        &self,
        name: &'static str,
        fate: Result<Fate, ApiError>,
    ) -> Result<Response, ApiError> {
        match fate {
            Ok(fate) => {
                self.count(name, fate.as_str());
                Ok(StatusCode::OK.into_response())
            }
            Err(error) => {
                if error.status == StatusCode::BAD_REQUEST {
                    self.count(name, "malformed");
                }
                Err(error)
            }
        }
    }

    /// Refuses a webhook whose signature does not verify: 401, counted
    /// and logged, nothing changed.
    fn refuse(&self, name: &'static str, why: &dyn std::fmt::Display) -> ApiError {
        self.count(name, "bad_signature");
        tracing::warn!(connection = %self.opened.id, webhook = name, reason = %why, "a webhook's signature does not verify");
        ApiError::unauthorised()
    }
}

fn json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("Invalid JSON body: {e}")))
}

/// When the provider says it happened; now if it says nothing readable.
fn when(timestamp: Option<&str>) -> DateTime<Utc> {
    timestamp
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(Utc::now)
}

/// A status of a message, as any provider reports it.
struct Status<'a> {
    /// The provider's id of the message.
    id: &'a str,
    /// The reference herald gave the message, where the provider echoes it.
    client_ref: Option<&'a str>,
    /// Whom the message went to.
    to: Option<&'a str>,
    /// What the status means; `None` for one herald does not act on.
    status: Option<MessageStatus>,
    /// The provider's own word for it, which keys it.
    word: &'a str,
    /// Why it failed, as the provider says, for a failure.
    reason: Option<String>,
    at: DateTime<Utc>,
}

/// A status of a message a session sent (CHANNELS §1.3).
async fn message_status(
    app: &AppState,
    opened: &Opened,
    report: Status<'_>,
) -> Result<Fate, ApiError> {
    let Some(status) = report.status else {
        return Ok(Fate::Ignored);
    };
    let Some((session, item)) = find_item(app, opened, &report).await? else {
        tracing::info!(connection = %opened.id, "a status of a message herald does not know");
        return Ok(Fate::Unmatched);
    };
    let input = if let Some(text) = item.strip_prefix("sms:") {
        if text.parse::<u32>().is_err() {
            return Ok(Fate::Unmatched);
        }
        SessionInput::SmsStatus {
            to: report.to.unwrap_or_default().to_owned(),
            status,
        }
    } else {
        match item.parse::<u32>() {
            Ok(message) => SessionInput::MessageStatus {
                message,
                status,
                reason: report.reason,
            },
            Err(_) => return Ok(Fate::Unmatched),
        }
    };
    let input = NewInput {
        input,
        at: report.at,
        dedupe: Some(format!("{}:{}", report.id, report.word)),
    };
    if app.store.deliver_input(session, input).await?.is_none() {
        return Ok(Fate::Unmatched);
    }
    app.dispatch_wakeup.notify_one();
    Ok(Fate::Applied)
}

/// The session and item a status is of: by the provider's id, as stored
/// when the message was taken; or, for a status that outran that write, by
/// the reference herald gave the message, if the session it names runs on
/// this connection (a connection's signature must not reach another's
/// sessions).
async fn find_item(
    app: &AppState,
    opened: &Opened,
    report: &Status<'_>,
) -> Result<Option<(SessionId, String)>, ApiError> {
    if let Some(found) = app.store.provider_ref(&opened.id, report.id).await? {
        return Ok(Some((found.session_id, found.item)));
    }
    let Some((session, item)) = report.client_ref.and_then(parse_client_ref) else {
        return Ok(None);
    };
    let on_it = runs_on(app, opened, session).await?;
    Ok(on_it.then(|| (session, item.to_owned())))
}

/// Whether `session` runs on the connection (a connection's signature must
/// not reach another's sessions).
async fn runs_on(app: &AppState, opened: &Opened, session: SessionId) -> Result<bool, ApiError> {
    let Some(record) = app.store.session_for_work(session).await? else {
        return Ok(false);
    };
    Ok(app
        .directory
        .agent_version(app.store.as_ref(), &record.agent_id, record.agent_version)
        .await?
        .is_some_and(|v| v.connection_id.as_ref() == Some(&opened.id)))
}

/// A person's message, as any provider reports it.
struct Message<'a> {
    /// `None` for a channel herald does not serve.
    channel: Option<Channel>,
    /// The provider's id of the message.
    id: &'a str,
    from: &'a str,
    to: &'a str,
    /// Its words; `None` for a message with none a flow reads (an image,
    /// a location).
    text: Option<&'a str>,
    at: DateTime<Utc>,
}

/// A message from a person to one of the connection's numbers: it reaches
/// the open session between them, or starts an inbound session of the
/// agent on this connection that has the number.
async fn message_inbound(
    app: &AppState,
    opened: &Opened,
    inbound: Message<'_>,
) -> Result<Fate, ApiError> {
    let (Some(channel), Some(text)) = (inbound.channel, inbound.text) else {
        return Ok(Fate::Ignored);
    };
    let text = readable(text);
    if text.trim().is_empty() {
        return Ok(Fate::Ignored);
    }
    let (Ok(person), Ok(number)) = (
        Destination::parse_messaging(inbound.from),
        Destination::parse_messaging(inbound.to),
    ) else {
        return Ok(Fate::Unmatched);
    };
    let owner = app
        .directory
        .agent_for_number(number.as_str(), channel, app.config.region);
    let input = NewInput {
        input: SessionInput::Text(text),
        at: inbound.at,
        dedupe: None,
    };
    let conversation = Conversation {
        channel,
        person: person.as_str().to_owned(),
        number: number.as_str().to_owned(),
    };
    let via = ViaConnection {
        connection: &opened.id,
        message_id: inbound.id,
    };
    match replies::deliver(app, Sender::Provider, owner, conversation, input, Some(via)).await {
        Ok(_) => Ok(Fate::Applied),
        // No agent on this connection has the number, and no session is
        // open on it: nothing to reach.
        Err(e) if e.status == StatusCode::NOT_FOUND => Ok(Fate::Unmatched),
        Err(e) => Err(e),
    }
}

//! The trigger endpoints: `POST /telephony/make-call` (CONTRACT §2) and
//! `POST /messaging/conversation` (§3).
//!
//! One pipeline serves both, running the checks of §2.2 in the contract's
//! order so that the first failure is the one answered:
//! authentication, JSON, mandatory fields, field types, destination,
//! `status_url`, agent, (WhatsApp template), rate limit, store. The body's
//! own checks (mandatory fields to `status_url`) are
//! [`herald_core::trigger`]'s; this module adds those that need the service.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use herald_core::trigger::{
    parse_messaging, parse_voice, AgentRef, StatusUrl, TemplateMessage, TriggerBody,
};
use herald_core::whatsapp::{self, Component, ComponentType};
use herald_core::{AccountId, AgentId, SessionId};
use herald_limit::Decision;
use herald_store::{AgentIndexRow, Created, NewIdempotency, NewSession, IDEMPOTENCY_WINDOW};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{authenticate, read_body};
use crate::api::error::{ApiError, ErrorBody};
use crate::AppState;

/// The contract's text for any failure to store a session (CONTRACT §2.2 step 9).
const STORE_FAILED: &str = "Failed to fetch preconfigured session information";
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// A session accepted.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TriggerResponse {
    #[schema(example = "0190b2a4-5c1e-7c3a-9b7e-2f4c1d2e3f40")]
    pub session_id: String,
    /// UTC with microseconds and no offset.
    #[schema(example = "2020-10-14T09:42:07.151657")]
    pub session_start_time: String,
}

/// The optional `Idempotency-Key` header of both trigger endpoints.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
struct IdempotencyKey {
    #[doc = "Makes retries safe: the same key and body within 24 hours answers with the first response"]
    #[param(
        rename = "Idempotency-Key",
        min_length = 1,
        max_length = 255,
        pattern = "^[!-~]+$"
    )]
    idempotency_key: Option<String>,
}

/// What both trigger endpoints answer.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum TriggerResponses {
    /// The session is stored and will be dispatched
    #[response(status = 200)]
    Accepted(TriggerResponse),
    /// Invalid request
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// Missing, unknown or revoked key
    #[response(status = 401)]
    Unauthorised(ErrorBody),
    /// The recipient has opted out of the channel
    #[response(status = 403)]
    OptedOut(ErrorBody),
    /// Unknown, unpublished or foreign agent
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// The same Idempotency-Key is being handled
    #[response(status = 409)]
    InFlight(ErrorBody),
    /// Body over 64 KiB
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// Idempotency-Key reused with a different body
    #[response(status = 422)]
    KeyReused(ErrorBody),
    /// Over the agent's rate
    #[response(status = 429, headers(("Retry-After" = u64, description = "Whole seconds to wait, at least 1")))]
    RateLimited(ErrorBody),
    /// The session could not be stored
    #[response(status = 500)]
    NotStored(ErrorBody),
    /// The shared rate limiter (Redis) could not be reached; nothing was stored
    #[response(status = 503, headers(("Retry-After" = u64, description = "Whole seconds to wait")))]
    LimiterUnavailable(ErrorBody),
}

/// `POST /telephony/make-call`: the body (CONTRACT §2.1). Unknown fields are ignored.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct MakeCallRequest {
    /// The voice agent to run. One of `agent_id` and `from` is required.
    #[schema(example = "60c09d70e6a68858f4220848", pattern = "^[0-9a-f]{24}$")]
    agent_id: Option<String>,
    /// Legacy: the published number of an agent; wins over `agent_id`.
    #[schema(pattern = r"^\+?[1-9][0-9]{6,14}$")]
    from: Option<String>,
    /// A phone number with country code (digits only, one leading `+` allowed) or a SIP URI.
    #[schema(
        example = "9725411116037",
        pattern = r"^(\+?[1-9][0-9]{6,14}|[sS][iI][pP][sS]?:[^@]+@.+)$"
    )]
    to: String,
    /// Where status callbacks go: an absolute http or https URL.
    #[schema(pattern = r"^[hH][tT][tT][pP][sS]?://[^\s/?#]+", max_length = 2048)]
    status_url: Option<String>,
    /// Hang up when an answering machine picks up.
    #[schema(default = false)]
    hangup_on_answer_machine: Option<bool>,
    #[schema(max_items = 100)]
    session_parameters: Option<Vec<herald_core::session::SessionParameter>>,
}

/// `POST /messaging/conversation`: the body (CONTRACT §3.1).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ConversationRequest {
    /// The agent to run. One of `agent_id` and `from` is required.
    #[schema(example = "60c09d70e6a68858f4220848", pattern = "^[0-9a-f]{24}$")]
    agent_id: Option<String>,
    /// Legacy: the published number of an agent; wins over `agent_id`.
    #[schema(pattern = r"^\+?[1-9][0-9]{6,14}$")]
    from: Option<String>,
    /// A phone number with country code (digits only, one leading `+` allowed).
    #[schema(example = "447700900123", pattern = r"^\+?[1-9][0-9]{6,14}$")]
    to: String,
    #[schema(value_type = crate::api::openapi::MessagingChannel)]
    channel: String,
    /// Where status callbacks go: an absolute http or https URL; required on WhatsApp.
    #[schema(pattern = r"^[hH][tT][tT][pP][sS]?://[^\s/?#]+", max_length = 2048)]
    status_url: Option<String>,
    #[schema(max_items = 100)]
    session_parameters: Option<Vec<herald_core::session::SessionParameter>>,
    /// WhatsApp: the template's namespace.
    namespace: Option<String>,
    /// WhatsApp: the template's name.
    template: Option<String>,
    /// WhatsApp: the template's locale.
    locale: Option<String>,
    /// WhatsApp: the template's parameters.
    components: Option<Vec<Component>>,
}

/// Call a person with a voice agent
#[utoipa::path(
    post,
    path = "/telephony/make-call", operation_id = "make_call",
    tag = "triggers",
    request_body = MakeCallRequest,
    params(IdempotencyKey),
    responses(TriggerResponses),
    security(("vgai_key" = []), ("bearer" = []))
)]
pub async fn make_call(State(app): State<AppState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    trigger(&app, &parts.headers, body, Endpoint::Voice)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// Start an SMS or WhatsApp conversation
#[utoipa::path(
    post,
    path = "/messaging/conversation", operation_id = "start_conversation",
    tag = "triggers",
    request_body = ConversationRequest,
    params(IdempotencyKey),
    responses(TriggerResponses),
    security(("vgai_key" = []), ("bearer" = []))
)]
pub async fn conversation(State(app): State<AppState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    trigger(&app, &parts.headers, body, Endpoint::Messaging)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Voice,
    Messaging,
}

async fn trigger(
    app: &AppState,
    headers: &HeaderMap,
    body: Body,
    endpoint: Endpoint,
) -> Result<Response, ApiError> {
    // 1. Authentication.
    let account = authenticate(app, headers)?;
    let bytes = read_body(body).await?;
    let idempotency_key = idempotency_key(headers)?;

    // 2. A JSON object, whatever the Content-Type says.
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("Invalid JSON body: {e}")))?;
    let Value::Object(obj) = &value else {
        return Err(ApiError::bad_request(
            "Invalid JSON body: expected a JSON object",
        ));
    };

    // A replay answers before any other check, so that it costs no quota
    // and does not depend on anything that changed since the first request.
    let (idempotency, _in_flight) = match idempotency_key {
        None => (None, None),
        Some(key) => {
            let request_hash = canonical_hash(&value, endpoint);
            if let Some(first) = app
                .store
                .idempotent_response(account, &key, IDEMPOTENCY_WINDOW)
                .await
                .map_err(|e| ApiError::internal(STORE_FAILED, format!("{e:#}")))?
            {
                return replay(&first, &request_hash);
            }
            let claim = InFlight::claim(app, account, &key)?;
            (Some((key, request_hash)), Some(claim))
        }
    };
    let request_hash = idempotency.as_ref().map(|(_, hash)| *hash);

    // 3 to 6: the body's own checks, then whether status_url is us.
    let mut trigger = match endpoint {
        Endpoint::Voice => parse_voice(obj),
        Endpoint::Messaging => parse_messaging(obj),
    }
    .map_err(|e| ApiError::bad_request(e.0))?;
    // Reading the body again is needed only for numbers' text.
    let numbers = obj
        .get("session_parameters")
        .and_then(Value::as_array)
        .is_some_and(|all| {
            all.iter()
                .any(|p| p.get("value").is_some_and(Value::is_number))
        });
    if numbers {
        trigger.parameters.keep_number_text(&bytes);
    }
    if let Some(url) = &trigger.status_url {
        check_not_us(app, headers, url).await?;
    }

    // 7. The agent.
    let agent = resolve_agent(app, account, &trigger)?;
    let (version, from) = agent
        .published
        .clone()
        .expect("resolve_agent checks publication");

    // WhatsApp: the template must be registered, with matching parameters.
    let whatsapp = match &trigger.whatsapp {
        Some(message) => Some(check_template(app, account, message).await?),
        None => None,
    };

    // The recipient's opt-out (CONTRACT §13.3), before the rate limit so
    // that a refused trigger costs no quota.
    if app
        .store
        .opt_out(account, trigger.channel, trigger.to.as_str())
        .await?
        .is_some()
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "Recipient {} has opted out of {}",
                trigger.to.as_str(),
                trigger.channel
            ),
        ));
    }

    // 8. The rate limit.
    let rate = app
        .directory
        .rate(&agent.agent_id)
        .unwrap_or(app.config.default_rate);
    let permit = match app.limiter.acquire(agent.agent_id.as_str(), rate).await {
        Ok(Decision::Admitted(permit)) => permit,
        Ok(Decision::Limited { retry_after }) => {
            app.metrics.rate_limited.inc();
            let mut err = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "Rate limit exceeded: agent {} may start {rate} session(s) per second",
                    agent.agent_id
                ),
            );
            err.retry_after = Some(herald_limit::retry_after_secs(retry_after));
            return Err(err);
        }
        Err(e) => {
            // Without a decision nothing is admitted: the limits are a
            // promise, not a best effort.
            tracing::error!(error = %e, "rate limiter unavailable");
            let mut err = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Rate limiter unavailable, try again shortly",
            );
            err.retry_after = Some(1);
            return Err(err);
        }
    };

    // 9. Store the session and its dispatch job, durably, then answer.
    let id = SessionId::generate();
    let now = Utc::now();
    let response = TriggerResponse {
        session_id: id.to_string(),
        session_start_time: herald_core::time::session_start_time(now),
    };
    let response_body = serde_json::to_string(&response).expect("a response serialises");
    let new = NewSession {
        inbound: false,
        first_input: None,
        id,
        account_id: account,
        agent_id: agent.agent_id.clone(),
        agent_version: version,
        channel: trigger.channel,
        to: trigger.to.as_str().to_owned(),
        from,
        status_url: trigger.status_url.map(|url| url.as_str().to_owned()),
        hangup_on_machine: trigger.hangup_on_machine,
        parameters: trigger.parameters,
        whatsapp,
        created_at: now,
        idempotency: idempotency.map(|(key, request_hash)| NewIdempotency {
            key,
            request_hash,
            response: response_body.clone(),
        }),
        campaign_id: None,
    };
    match app.store.create_session(new).await {
        Ok(Created::Stored) => {
            app.metrics
                .sessions_accepted
                .get_or_create(&crate::metrics::ChannelLabels {
                    channel: trigger.channel.as_str(),
                })
                .inc();
            app.dispatch_wakeup.notify_one();
            Ok(json_response(StatusCode::OK, response_body))
        }
        Ok(Created::Duplicate(first)) => {
            // Another instance stored the same key first: answer as a replay.
            app.limiter.release(agent.agent_id.as_str(), permit).await;
            replay(
                &first,
                &request_hash.expect("only keyed requests have duplicates"),
            )
        }
        Err(e) => {
            app.limiter.release(agent.agent_id.as_str(), permit).await;
            Err(ApiError::internal(STORE_FAILED, format!("{e:#}")))
        }
    }
}

fn json_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

fn replay(first: &herald_store::IdempotentResponse, hash: &[u8; 32]) -> Result<Response, ApiError> {
    if &first.request_hash == hash {
        Ok(json_response(StatusCode::OK, first.response.clone()))
    } else {
        Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Idempotency-Key reused with a different request",
        ))
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    // Visible ASCII only, as the message and the document say: a header
    // value may also hold spaces and tabs, which a key may not.
    let key = value
        .to_str()
        .ok()
        .filter(|k| {
            !k.is_empty()
                && k.len() <= MAX_IDEMPOTENCY_KEY
                && k.bytes().all(|b| b.is_ascii_graphic())
        })
        .ok_or_else(|| {
            ApiError::bad_request("Idempotency-Key must be 1 to 255 visible ASCII characters")
        })?;
    Ok(Some(key.to_owned()))
}

/// A hash of the request that ignores key order and whitespace, so that the
/// same body re-serialised by a client's retry still counts as the same.
fn canonical_hash(value: &Value, endpoint: Endpoint) -> [u8; 32] {
    fn feed(h: &mut Sha256, v: &Value) {
        match v {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                h.update(b"{");
                for k in keys {
                    feed(h, &Value::String(k.clone()));
                    h.update(b":");
                    feed(h, &map[k]);
                    h.update(b",");
                }
                h.update(b"}");
            }
            Value::Array(items) => {
                h.update(b"[");
                for item in items {
                    feed(h, item);
                    h.update(b",");
                }
                h.update(b"]");
            }
            other => h.update(other.to_string().as_bytes()),
        }
    }
    let mut h = Sha256::new();
    // The endpoint is part of the request: one key on both endpoints is a
    // different request.
    h.update(match endpoint {
        Endpoint::Voice => b"voice:".as_slice(),
        Endpoint::Messaging => b"messaging:".as_slice(),
    });
    feed(&mut h, value);
    h.finalize().into()
}

/// Marks an idempotency key as being handled, so that a concurrent duplicate
/// gets 409 instead of starting a second session; released on drop.
struct InFlight {
    app: AppState,
    key: (AccountId, String),
}

impl InFlight {
    fn claim(app: &AppState, account: AccountId, key: &str) -> Result<Self, ApiError> {
        let entry = (account, key.to_owned());
        let mut inflight = app.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if !inflight.insert(entry.clone()) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "A request with this Idempotency-Key is still being handled",
            ));
        }
        Ok(InFlight {
            app: app.clone(),
            key: entry,
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.app
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

/// The rest of step 6: `status_url` must not point at this service.
async fn check_not_us(
    app: &AppState,
    headers: &HeaderMap,
    url: &StatusUrl,
) -> Result<(), ApiError> {
    if points_at_us(app, headers, url.url()).await {
        return Err(ApiError::bad_request(
            "status_url must not point at this service",
        ));
    }
    Ok(())
}

/// How long the name of a `status_url` on this server's port may take to
/// resolve; a name that does not answer in time is taken for someone else's.
const RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether callbacks to `url` would reach this server: by the name and port
/// the client reached us on, or by any spelling of an address of ours on
/// our port (`localhost.`, `[::ffff:127.0.0.1]`, a name that resolves to
/// loopback, this machine's own addresses). Names are resolved only when
/// the port is ours, so a trigger pays for a lookup in that case alone.
async fn points_at_us(app: &AppState, headers: &HeaderMap, url: &url::Url) -> bool {
    let Some(host) = url.host() else { return false };
    let port = url.port_or_known_default();
    // The Host the client used to reach us. Without a port, it is the
    // default port of whatever scheme the client used (a TLS proxy in front
    // of herald receives https on 443).
    if let Some(authority) = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<axum::http::uri::Authority>().ok())
    {
        let same_host = url.host_str().is_some_and(|h| {
            h.trim_end_matches('.')
                .eq_ignore_ascii_case(authority.host().trim_end_matches('.'))
        });
        let same_port = match authority.port_u16() {
            Some(p) => port == Some(p),
            None => url.port().is_none(),
        };
        if same_host && same_port {
            return true;
        }
    }
    if port != Some(app.local_addr.port()) {
        return false;
    }
    let ours = |ip: std::net::IpAddr| is_ours(ip, app.local_addr.ip());
    match host {
        url::Host::Ipv4(ip) => ours(ip.into()),
        url::Host::Ipv6(ip) => ours(ip.into()),
        url::Host::Domain(name) => {
            let name = name.trim_end_matches('.');
            let local_name = name.eq_ignore_ascii_case("localhost")
                || name.to_ascii_lowercase().ends_with(".localhost");
            if local_name {
                return true;
            }
            let port = app.local_addr.port();
            match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((name, port))).await
            {
                Ok(Ok(mut addrs)) => addrs.any(|a| ours(a.ip())),
                _ => false,
            }
        }
    }
}

/// Whether `ip` is an address this server answers on, listening on
/// `listening`: loopback and the unspecified address always are, and so is
/// every address of this machine when it listens on all of them.
fn is_ours(ip: std::net::IpAddr, listening: std::net::IpAddr) -> bool {
    let ip = ip.to_canonical();
    if ip.is_loopback() || ip.is_unspecified() || ip == listening.to_canonical() {
        return true;
    }
    // An address of this machine's is one a socket can be bound to.
    listening.is_unspecified() && std::net::UdpSocket::bind((ip, 0)).is_ok()
}

/// Step 7, the agent: it exists in this account, is published, is deployed
/// in this server's region and serves this channel.
fn resolve_agent(
    app: &AppState,
    account: AccountId,
    trigger: &TriggerBody,
) -> Result<AgentIndexRow, ApiError> {
    let agent = match &trigger.agent {
        AgentRef::Id(raw) => {
            let not_found = || {
                ApiError::not_found(format!(
                    "ID {raw} is not an ID to any agent or published version"
                ))
            };
            let id: AgentId = raw.parse().map_err(|_| not_found())?;
            let agent = app
                .directory
                .agent(&id)
                .filter(|a| a.account_id == account)
                .ok_or_else(not_found)?;
            if agent.published.is_none() {
                return Err(ApiError::not_found(format!(
                    "published version for Agent {id} was not found"
                )));
            }
            agent
        }
        AgentRef::Number(number) => {
            let number = number.strip_prefix('+').unwrap_or(number);
            app.directory
                .agent_by_number(account, number, trigger.channel, app.config.region)
                .ok_or_else(|| {
                    ApiError::not_found(format!(
                        "Version information for number {number} doesn't exist"
                    ))
                })?
        }
    };
    if agent.region != app.config.region {
        return Err(ApiError::not_found(format!(
            "Agent {} is deployed in region {}",
            agent.agent_id, agent.region
        )));
    }
    if agent.channel != trigger.channel {
        return Err(ApiError::bad_request(format!(
            "Agent {} is a {} agent",
            agent.agent_id, agent.channel
        )));
    }
    Ok(agent)
}

/// CONTRACT §3.4: the template is registered and its placeholders match.
pub(crate) async fn check_template(
    app: &AppState,
    account: AccountId,
    message: &TemplateMessage,
) -> Result<Value, ApiError> {
    let template = app
        .store
        .template(
            account,
            &message.namespace,
            &message.template,
            &message.locale,
        )
        .await
        .map_err(|e| ApiError::internal(STORE_FAILED, format!("{e:#}")))?
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "Template {} ({}) is not registered in namespace {}",
                message.template, message.locale, message.namespace
            ))
        })?;
    for (kind, name, text) in [
        (ComponentType::Header, "header", template.header.as_deref()),
        (ComponentType::Body, "body", Some(template.body.as_str())),
    ] {
        let expected = text
            .map(|t| whatsapp::placeholder_count(t).unwrap_or(0))
            .unwrap_or(0);
        let got = whatsapp::text_parameters(&message.components, kind);
        if expected != got {
            return Err(ApiError::bad_request(format!(
                "Template {} {name} expects {expected} parameter(s), got {got}",
                message.template
            )));
        }
    }
    Ok(serde_json::json!({
        "namespace": message.namespace,
        "template": message.template,
        "locale": message.locale,
        "components": message.components,
    }))
}

//! A loopback fake of Vonage, written from its specifications (the Voice
//! API, `definitions/voice.yml`, and the Messages API,
//! `definitions/messages-olympus.yml` at version 1.4.0, of
//! `Nexmo/api-specification`) and its webhook references.
//!
//! It checks every request herald sends as Vonage would (the bearer token:
//! RS256, signed with the application's private key, its claims; the
//! query and the body's fields and types) and writes down every departure
//! from the specification in [`FakeVonage::problems`], which a test
//! expects empty; and it plays Vonage's side: it takes messages and posts
//! their statuses to the connection's status webhook, and posts a
//! person's messages to its inbound webhook; it places calls, asks the
//! answer URL for their NCCO and plays it (`talk`, `input`, `connect`,
//! `notify`) with the test as the person, and posts the calls' events;
//! each webhook signed as Vonage signs them (an HS256 JWT of the signature
//! secret carrying the body's hash). Point a server at it with
//! `vonage_api_url`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{json, Value};
use tokio::task::JoinHandle;

mod voice;

pub use voice::{CallFate, CallSummary};

/// One request herald made, as the fake read it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: &'static str,
    pub path: String,
    /// The bearer token's claims, when it verified.
    pub claims: Option<Value>,
    pub body: Value,
}

#[derive(Default)]
struct Log {
    requests: Vec<Recorded>,
    /// When each of `requests` came.
    times: Vec<std::time::Instant>,
    problems: Vec<String>,
}

/// Where and how the fake posts its webhooks.
#[derive(Clone)]
struct Webhooks {
    status_url: String,
    inbound_url: String,
    signature_secret: String,
    api_key: String,
    /// herald's public URL, which the URLs it gives begin with…
    public_url: String,
    /// …and where the test's server is reached in its stead.
    base: String,
}

impl Webhooks {
    /// Where a URL herald gave is reached from here.
    fn reach(&self, url: &str) -> Option<String> {
        Some(format!(
            "{}{}",
            self.base,
            url.strip_prefix(&self.public_url)?
        ))
    }
}

/// How the fake answers the next sends, and what it reports of them.
#[derive(Default)]
struct Script {
    /// Answers for the next sends, before any is taken: a status and body.
    answers: VecDeque<(u16, Value)>,
    /// The statuses to report of messages to a number, in Vonage's words;
    /// without an entry, `submitted`, `delivered`, and `read` on WhatsApp.
    statuses: HashMap<String, Vec<String>>,
    /// Take messages and report nothing of them.
    silent: bool,
}

struct Shared {
    application_id: String,
    key: DecodingKey,
    log: Mutex<Log>,
    /// Answer every request 401, as for credentials Vonage does not know.
    refuse: Mutex<bool>,
    webhooks: Mutex<Option<Webhooks>>,
    script: Mutex<Script>,
    /// Every message taken, as sent: its uuid and body.
    messages: Mutex<Vec<(String, Value)>>,
    /// The calls placed, and the people they reach.
    voice: voice::Voice,
    http: reqwest::Client,
}

impl Shared {
    fn problem(&self, text: String) {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .problems
            .push(text);
    }

    /// The answer the test scripted for the next request that makes
    /// something (a message, a call), if it scripted one.
    fn scripted_answer(&self) -> Option<Response> {
        let (status, answer) = self
            .script
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .answers
            .pop_front()?;
        let status = StatusCode::from_u16(status).expect("a scripted status is one");
        Some((status, Json(answer)).into_response())
    }

    fn record(&self, request: Recorded) {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.requests.push(request);
        log.times.push(std::time::Instant::now());
    }

    /// Checks the bearer token as Vonage does: an RS256 JWT signed with the
    /// application's key, naming the application, with `iat` and `jti`,
    /// not expired. `None` (and a 401 to answer) when it does not verify.
    fn token(&self, what: &str, headers: &HeaderMap) -> Option<Value> {
        if *self.refuse.lock().unwrap_or_else(|e| e.into_inner()) {
            return None;
        }
        let Some(token) = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            self.problem(format!("{what}: no Authorization: Bearer token"));
            return None;
        };
        let mut validation = Validation::new(Algorithm::RS256);
        validation.required_spec_claims.clear();
        let claims = match jsonwebtoken::decode::<Value>(token, &self.key, &validation) {
            Ok(data) => data.claims,
            Err(e) => {
                self.problem(format!("{what}: the token does not verify: {e}"));
                return None;
            }
        };
        if claims["application_id"] != self.application_id.as_str() {
            self.problem(format!(
                "{what}: the token names application {}",
                claims["application_id"]
            ));
            return None;
        }
        for claim in ["iat", "jti"] {
            if claims.get(claim).is_none() {
                self.problem(format!("{what}: the token has no {claim}"));
            }
        }
        if !claims["iat"].is_i64() {
            self.problem(format!("{what}: iat is not a whole number of seconds"));
        }
        Some(claims)
    }
}

/// Vonage's answer to a token it does not accept.
fn unauthorised() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({
            "type": "https://developer.nexmo.com/api-errors#unauthorized",
            "title": "Unauthorized",
            "detail": "You did not provide correct credentials.",
            "instance": uuid::Uuid::new_v4().to_string(),
        })),
    )
        .into_response()
}

/// A fake Vonage on 127.0.0.1; stops when dropped.
pub struct FakeVonage {
    /// Its base URL, for `vonage_api_url`.
    pub url: String,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for FakeVonage {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeVonage {
    /// A fake of the Vonage application `application_id`, whose public key
    /// is the test key pair's ([`herald_channels::testing`]).
    pub async fn start(application_id: &str) -> FakeVonage {
        let key =
            DecodingKey::from_rsa_pem(herald_channels::testing::vonage_public_key().as_bytes())
                .expect("the test public key parses");
        let shared = Arc::new(Shared {
            application_id: application_id.to_owned(),
            key,
            log: Mutex::new(Log::default()),
            refuse: Mutex::new(false),
            webhooks: Mutex::new(None),
            script: Mutex::new(Script::default()),
            messages: Mutex::new(Vec::new()),
            voice: voice::Voice::default(),
            http: reqwest::Client::new(),
        });
        let router = Router::new()
            .route("/v1/calls", get(list_calls).post(voice::create_call))
            .route("/v1/calls/{uuid}", axum::routing::put(voice::update_call))
            .route("/v1/messages", post(send_message))
            .fallback(unknown)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let url = format!("http://{}", listener.local_addr().expect("bound"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        FakeVonage { url, shared, task }
    }

    /// Every request herald made, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .requests
            .clone()
    }

    /// When each request to `path` came, in order.
    pub fn times_of(&self, method: &str, path: &str) -> Vec<std::time::Instant> {
        let log = self.shared.log.lock().unwrap_or_else(|e| e.into_inner());
        log.requests
            .iter()
            .zip(&log.times)
            .filter(|(r, _)| r.method == method && r.path == path)
            .map(|(_, at)| *at)
            .collect()
    }

    /// Every departure from the specification seen so far.
    pub fn problems(&self) -> Vec<String> {
        self.shared
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .problems
            .clone()
    }

    /// From now on, refuse (or again accept) every token, as Vonage does
    /// once the application's key is replaced.
    pub fn refuse_credentials(&self, refuse: bool) {
        *self.shared.refuse.lock().unwrap_or_else(|e| e.into_inner()) = refuse;
    }

    /// Where the fake posts statuses and inbound messages: the connection's
    /// `webhooks` (as the API shows them, under `public_url`), reached at
    /// `base` (where the test's server listens), signed with the
    /// connection's signature secret and naming its API key.
    pub fn deliver_to(
        &self,
        webhooks: &Value,
        public_url: &str,
        base: &str,
        signature_secret: &str,
        api_key: &str,
    ) {
        let url = |name: &str| {
            let shown = webhooks[name]
                .as_str()
                .expect("the connection lists the webhook");
            format!(
                "{base}{}",
                shown
                    .strip_prefix(public_url)
                    .expect("under the public URL")
            )
        };
        *self
            .shared
            .webhooks
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Webhooks {
            status_url: url("message_status"),
            inbound_url: url("message_inbound"),
            signature_secret: signature_secret.to_owned(),
            api_key: api_key.to_owned(),
            public_url: public_url.to_owned(),
            base: base.to_owned(),
        });
    }

    /// Answers the next send with `status` and `body` (429, 503, 422…),
    /// taking nothing; sends after it are answered as before.
    pub fn answer_next(&self, status: u16, body: Value) {
        self.script().answers.push_back((status, body));
    }

    /// Reports these statuses (Vonage's words: `submitted`, `delivered`,
    /// `read`, `rejected`, `undeliverable`) of every message to `to`.
    pub fn report_for(&self, to: &str, statuses: &[&str]) {
        self.script().statuses.insert(
            to.to_owned(),
            statuses.iter().map(|s| s.to_string()).collect(),
        );
    }

    /// Takes messages from now on without reporting anything of them.
    pub fn stay_silent(&self, silent: bool) {
        self.script().silent = silent;
    }

    fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        self.shared.script.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every message taken: its uuid and the body herald sent.
    pub fn messages(&self) -> Vec<(String, Value)> {
        self.shared
            .messages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until `n` messages have been taken (10 s at most).
    pub async fn wait_for_messages(&self, n: usize) -> Vec<(String, Value)> {
        for _ in 0..400 {
            let messages = self.messages();
            if messages.len() >= n {
                return messages;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("Vonage took {} messages, not {n}", self.messages().len());
    }

    /// A status report of a message taken, as Vonage posts it.
    pub fn status_report(&self, message_uuid: &str, status: &str) -> Value {
        let messages = self.messages();
        let (_, body) = messages
            .iter()
            .find(|(uuid, _)| uuid == message_uuid)
            .expect("a message the fake took");
        status_body(message_uuid, body, status)
    }

    /// Posts `body` to the status webhook, signed (or, with `secret`, signed
    /// with another secret); the answer's status.
    pub async fn post_status(&self, body: &Value, secret: Option<&str>) -> u16 {
        let hooks = self.hooks();
        post_signed(
            &self.shared.http,
            &hooks.status_url,
            body,
            secret.unwrap_or(&hooks.signature_secret),
            &hooks.api_key,
            &self.shared.application_id,
        )
        .await
    }

    /// Posts a person's message to the inbound webhook, as Vonage does when
    /// `from` writes to the agent's number `to`; the answer's status.
    pub async fn send_inbound(
        &self,
        channel: &str,
        from: &str,
        to: &str,
        text: &str,
    ) -> (u16, String) {
        let message_uuid = uuid::Uuid::new_v4().to_string();
        let body = inbound_body(channel, &message_uuid, from, to, text);
        (self.post_inbound(&body).await, message_uuid)
    }

    /// Posts `body` to the inbound webhook, signed; the answer's status.
    pub async fn post_inbound(&self, body: &Value) -> u16 {
        let hooks = self.hooks();
        post_signed(
            &self.shared.http,
            &hooks.inbound_url,
            body,
            &hooks.signature_secret,
            &hooks.api_key,
            &self.shared.application_id,
        )
        .await
    }

    /// Posts `body` to the connection's webhook at `url` (as herald gave
    /// it: under its public URL), signed with `secret` (the connection's
    /// own when `None`); the answer's status and JSON body.
    pub async fn post_webhook(
        &self,
        url: &str,
        body: &Value,
        secret: Option<&str>,
    ) -> (u16, Value) {
        let hooks = self.hooks();
        let reached = hooks.reach(url).expect("a URL under herald's public URL");
        let answer = signed_request(
            &self.shared.http,
            &reached,
            body,
            secret.unwrap_or(&hooks.signature_secret),
            &hooks.api_key,
            &self.shared.application_id,
        )
        .await;
        match answer {
            Some((status, body)) => (status, serde_json::from_slice(&body).unwrap_or(Value::Null)),
            None => (0, Value::Null),
        }
    }

    fn hooks(&self) -> Webhooks {
        self.shared
            .webhooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .expect("deliver_to names the webhooks first")
    }
}

/// An inbound message webhook's body (`inboundMessage*` of 1.4.0).
pub fn inbound_body(channel: &str, message_uuid: &str, from: &str, to: &str, text: &str) -> Value {
    let mut body = json!({
        "channel": channel,
        "message_uuid": message_uuid,
        "to": to,
        "from": from,
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "message_type": "text",
        "text": text,
    });
    if channel == "whatsapp" {
        body["profile"] = json!({"name": "Ada"});
    } else {
        body["sms"] = json!({"num_messages": "1"});
    }
    body
}

/// A status webhook's body (`messageStatus*` of 1.4.0) for a message taken.
fn status_body(message_uuid: &str, sent: &Value, status: &str) -> Value {
    let mut body = json!({
        "message_uuid": message_uuid,
        "to": sent["to"],
        "from": sent["from"],
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "status": status,
        "channel": sent["channel"],
    });
    if let Some(client_ref) = sent.get("client_ref") {
        body["client_ref"] = client_ref.clone();
    }
    if matches!(status, "rejected" | "undeliverable") {
        body["error"] = json!({
            "type": "https://developer.nexmo.com/api-errors/messages-olympus#1240",
            "title": "1240",
            "detail": "Illegal Number - The number you are trying to send messages to is blacklisted",
            "instance": uuid::Uuid::new_v4().to_string(),
        });
    }
    body
}

/// Posts `body` signed as Vonage signs webhooks; the answer's status (0
/// when there was none).
async fn post_signed(
    http: &reqwest::Client,
    url: &str,
    body: &Value,
    secret: &str,
    api_key: &str,
    application_id: &str,
) -> u16 {
    signed_request(http, url, body, secret, api_key, application_id)
        .await
        .map(|(status, _)| status)
        .unwrap_or(0)
}

/// Posts `body` signed as Vonage signs webhooks; the answer's status and
/// body, `None` when there was no answer.
async fn signed_request(
    http: &reqwest::Client,
    url: &str,
    body: &Value,
    secret: &str,
    api_key: &str,
    application_id: &str,
) -> Option<(u16, Vec<u8>)> {
    let raw = serde_json::to_vec(body).expect("a body serialises");
    let claims = json!({
        "iat": chrono::Utc::now().timestamp(),
        "jti": uuid::Uuid::new_v4().to_string(),
        "iss": "Vonage",
        "payload_hash": herald_channels::vonage::auth::payload_hash(&raw),
        "api_key": api_key,
        "application_id": application_id,
    });
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("an HS256 token signs");
    let response = http
        .post(url)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(raw)
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    Some((status, response.bytes().await.ok()?.to_vec()))
}

async fn unknown(State(shared): State<Arc<Shared>>, uri: axum::http::Uri) -> StatusCode {
    shared.problem(format!("a request to {uri}, which Vonage does not have"));
    StatusCode::NOT_FOUND
}

/// `GET /v1/calls` (getCalls): the calls of the application, a page at a
/// time.
async fn list_calls(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let claims = shared.token("GET /v1/calls", &headers);
    let mut page_size = 10;
    for (name, value) in &query {
        match name.as_str() {
            "page_size" => match value.parse::<u32>() {
                Ok(n) if (1..=100).contains(&n) => page_size = n,
                _ => shared.problem(format!(
                    "GET /v1/calls: page_size {value:?} is not 1 to 100"
                )),
            },
            "record_index" | "order" | "status" | "date_start" | "date_end"
            | "conversation_uuid" => {}
            other => shared.problem(format!("GET /v1/calls: unknown parameter {other}")),
        }
    }
    shared.record(Recorded {
        method: "GET",
        path: "/v1/calls".into(),
        claims: claims.clone(),
        body: Value::Null,
    });
    if claims.is_none() {
        return unauthorised();
    }
    Json(json!({
        "count": 0,
        "page_size": page_size,
        "record_index": 0,
        "_links": {"self": {"href": format!("/calls?page_size={page_size}&record_index=0&order=asc")}},
        "_embedded": {"calls": []},
    }))
    .into_response()
}

/// Checks a send's body against the specification: the fields of the
/// message type, their types and limits, and nothing else.
fn check_message(shared: &Shared, body: &Value) {
    let what = "POST /v1/messages";
    let Some(fields) = body.as_object() else {
        shared.problem(format!("{what}: the body is not a JSON object"));
        return;
    };
    let text = |name: &str| fields.get(name).and_then(Value::as_str);
    let channel = text("channel").unwrap_or_default();
    let message_type = text("message_type").unwrap_or_default();
    let allowed: &[&str] = match (channel, message_type) {
        ("sms", "text") => &[
            "channel",
            "message_type",
            "to",
            "from",
            "text",
            "client_ref",
        ],
        ("whatsapp", "text") => &[
            "channel",
            "message_type",
            "to",
            "from",
            "text",
            "client_ref",
        ],
        ("whatsapp", "custom") => &[
            "channel",
            "message_type",
            "to",
            "from",
            "custom",
            "client_ref",
        ],
        _ => {
            shared.problem(format!(
                "{what}: channel {channel:?} with message_type {message_type:?} is not one herald may send"
            ));
            return;
        }
    };
    for name in fields.keys() {
        if !allowed.contains(&name.as_str()) {
            shared.problem(format!("{what}: unexpected field {name}"));
        }
    }
    match text("to") {
        Some(to) if (7..=15).contains(&to.len()) && to.bytes().all(|b| b.is_ascii_digit()) => {}
        other => shared.problem(format!(
            "{what}: to {other:?} is not E.164 digits without +"
        )),
    }
    match text("from") {
        Some(from) if !from.is_empty() && !from.starts_with('+') => {}
        other => shared.problem(format!("{what}: from {other:?} is not a number without +")),
    }
    match fields.get("client_ref") {
        None => {}
        Some(Value::String(r)) if r.chars().count() <= 100 => {}
        Some(other) => shared.problem(format!(
            "{what}: client_ref {other} is not a string of at most 100"
        )),
    }
    let limit = if channel == "sms" { 1000 } else { 4096 };
    if message_type == "text" {
        match text("text") {
            Some(t) if !t.is_empty() && t.chars().count() <= limit => {}
            other => shared.problem(format!(
                "{what}: text {other:?} is not 1 to {limit} characters"
            )),
        }
    }
    if message_type == "custom" {
        let custom = &body["custom"];
        let template = &custom["template"];
        // Meta's form of a locale: `en_GB`, never `en-GB`.
        let meta_locale = template["language"]["code"]
            .as_str()
            .is_some_and(|c| !c.contains('-'));
        let is_template = custom["type"] == "template"
            && template["name"].is_string()
            && template["language"]["policy"] == "deterministic"
            && meta_locale
            && template["components"].is_array();
        if !is_template {
            shared.problem(format!(
                "{what}: custom {custom} is not a WhatsApp template"
            ));
        }
    }
}

/// `POST /v1/messages` (SendMessage): takes a message (202 and its uuid)
/// and reports its statuses; or answers as the script says.
async fn send_message(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let claims = shared.token("POST /v1/messages", &headers);
    let body: Value = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(e) => {
            shared.problem(format!("POST /v1/messages: the body is not JSON: {e}"));
            Value::Null
        }
    };
    if headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| !v.starts_with("application/json"))
    {
        shared.problem("POST /v1/messages: the body is not sent as application/json".into());
    }
    check_message(&shared, &body);
    shared.record(Recorded {
        method: "POST",
        path: "/v1/messages".into(),
        claims: claims.clone(),
        body: body.clone(),
    });
    if claims.is_none() {
        return unauthorised();
    }
    if let Some(answer) = shared.scripted_answer() {
        return answer;
    }
    let message_uuid = uuid::Uuid::new_v4().to_string();
    shared
        .messages
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((message_uuid.clone(), body.clone()));
    let statuses = {
        let script = shared.script.lock().unwrap_or_else(|e| e.into_inner());
        if script.silent {
            Vec::new()
        } else {
            let to = body["to"].as_str().unwrap_or_default();
            script.statuses.get(to).cloned().unwrap_or_else(|| {
                let mut all = vec!["submitted".to_owned(), "delivered".to_owned()];
                if body["channel"] == "whatsapp" {
                    all.push("read".to_owned());
                }
                all
            })
        }
    };
    let hooks = shared
        .webhooks
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if let (Some(hooks), false) = (hooks, statuses.is_empty()) {
        let shared = shared.clone();
        let uuid = message_uuid.clone();
        // After the answer, as Vonage does: in order, each once it was taken.
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            for status in statuses {
                let report = status_body(&uuid, &body, &status);
                let answer = post_signed(
                    &shared.http,
                    &hooks.status_url,
                    &report,
                    &hooks.signature_secret,
                    &hooks.api_key,
                    &shared.application_id,
                )
                .await;
                if answer != 200 {
                    shared.problem(format!("the status webhook answered {answer} to {status}"));
                }
            }
        });
    }
    (
        StatusCode::ACCEPTED,
        Json(json!({"message_uuid": message_uuid})),
    )
        .into_response()
}

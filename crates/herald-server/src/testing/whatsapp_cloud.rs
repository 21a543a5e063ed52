//! A loopback fake of Meta's WhatsApp Cloud API (messages only), written
//! from its specification (`business-messaging-api_v23.0.yaml` of
//! `facebook/openapi`) and Meta's references for the `messages` webhook.
//!
//! It checks every request herald sends as the Cloud API would (the bearer
//! access token, the Graph API version and the phone number ID in the
//! path; the JSON body of a send: its fields, the required ones, their
//! formats) and writes down every departure from the specification in
//! [`FakeWhatsapp::problems`], which a test expects empty; and it plays
//! Meta's side: it takes `text` and `template` messages, answers with
//! their `wamid`, and posts their statuses (`sent`, `delivered`, `read`,
//! `failed` with `errors[].code`) to the app's webhook, and posts a
//! person's messages (text, a template's quick-reply button, an
//! interactive reply) there too; each post one `whatsapp_business_account`
//! envelope, signed as Meta signs them ([`whatsapp_signature`], in
//! `X-Hub-Signature-256`). It keeps the 24-hour customer service window:
//! a `text` to a person who has not written within 24 hours is accepted and
//! then reported `failed` with code 131047, as Meta reports it. Point a
//! server at it with `whatsapp_api_url`, and the fake at the server's
//! webhook with [`FakeWhatsapp::deliver_to`].

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, USER_AGENT, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Map, Value};
use sha2::Sha256;
use tokio::task::JoinHandle;

/// The Graph API version herald is written against.
pub const API_VERSION: &str = "v23.0";

/// The WhatsApp Business Account the fake's number belongs to, named in
/// every webhook's `entry[].id`.
pub const WABA_ID: &str = "102290129340398";

/// The business number as people see it, in the webhooks' `metadata`.
pub const DISPLAY_PHONE_NUMBER: &str = "15550783881";

/// The business's verified name, as `GET /{Phone-Number-ID}` gives it.
pub const VERIFIED_NAME: &str = "Herald Tests";

/// The profile name of the people who write in the fake's webhooks.
pub const PROFILE_NAME: &str = "Ada";

/// How long a person's message opens the customer service window for.
const SERVICE_WINDOW: chrono::TimeDelta = chrono::TimeDelta::hours(24);

/// How long the fake waits for herald's answer to a webhook.
const WEBHOOK_DEADLINE: Duration = Duration::from_secs(20);

/// The message types the Cloud API has, of which herald sends two.
const MESSAGE_TYPES: &[&str] = &[
    "text",
    "audio",
    "document",
    "image",
    "location",
    "video",
    "sticker",
    "reaction",
    "interactive",
    "template",
    "contacts",
];

/// One request herald made, as the fake read it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: &'static str,
    /// The path, without the query.
    pub path: String,
    /// The JSON body (`Null` for a `GET`, or a body that is not JSON).
    pub body: Value,
}

#[derive(Default)]
struct Log {
    requests: Vec<Recorded>,
    /// When each of `requests` came.
    times: Vec<std::time::Instant>,
    problems: Vec<String>,
}

/// How the fake answers the next sends, and what it reports of messages.
#[derive(Default)]
struct Script {
    /// Answers for the next sends, before any is taken: a status and a body.
    answers: VecDeque<(u16, Value)>,
    /// The statuses to report of messages to a person (keyed by digits):
    /// `sent`, `delivered`, `read`, `failed:131026`; without an entry,
    /// `sent`, `delivered`, `read`.
    statuses: HashMap<String, Vec<String>>,
    /// Take messages and report nothing of them.
    silent: bool,
}

/// A message taken: its `wamid` and the body herald sent.
type Taken = (String, Value);

struct Shared {
    phone_number_id: String,
    access_token: String,
    app_secret: String,
    log: Mutex<Log>,
    /// Answer every request 401, as for a token Meta no longer accepts.
    refuse: Mutex<bool>,
    /// The app's webhook (herald's `/providers/{id}/webhook`), on loopback.
    webhook: Mutex<Option<String>>,
    script: Mutex<Script>,
    messages: Mutex<Vec<Taken>>,
    /// When each person (by `wa_id`) last wrote to the business.
    last_wrote: Mutex<HashMap<String, chrono::DateTime<chrono::Utc>>>,
    http: reqwest::Client,
}

/// A lock, taken even from a test that panicked holding it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn problem(&self, text: String) {
        lock(&self.log).problems.push(text);
    }

    fn problems(&self, what: &str, found: Vec<String>) {
        let mut log = lock(&self.log);
        log.problems
            .extend(found.into_iter().map(|p| format!("{what}: {p}")));
    }

    fn record(&self, method: &'static str, path: &str, body: &Value) {
        let mut log = lock(&self.log);
        log.requests.push(Recorded {
            method,
            path: path.to_owned(),
            body: body.clone(),
        });
        log.times.push(std::time::Instant::now());
    }

    fn webhook(&self) -> Option<String> {
        lock(&self.webhook).clone()
    }

    /// Checks the bearer token as the Graph API does; the refusal to
    /// answer when it fails.
    fn refusal(&self, what: &str, headers: &HeaderMap) -> Option<Response> {
        if *lock(&self.refuse) {
            return Some(unauthorised(
                190,
                Some(463),
                "Error validating access token: Session has expired.",
            ));
        }
        let given = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
        let Some(token) = given.and_then(|v| v.strip_prefix("Bearer ")) else {
            self.problem(format!(
                "{what}: no Authorization: Bearer access token (got {given:?})"
            ));
            return Some(unauthorised(
                104,
                None,
                "An access token is required to request this resource.",
            ));
        };
        if token.trim() != self.access_token {
            self.problem(format!("{what}: the bearer token is not the access token"));
            return Some(unauthorised(
                190,
                None,
                "Invalid OAuth access token - Cannot parse access token",
            ));
        }
        None
    }

    /// Checks the phone number ID in the path; the refusal to answer when
    /// it is not the fake's.
    fn unknown_number(&self, what: &str, method: &str, id: &str) -> Option<Response> {
        if id == self.phone_number_id {
            return None;
        }
        self.problem(format!(
            "{what}: the path names phone number {id}, not {}",
            self.phone_number_id
        ));
        let verb = method.to_ascii_lowercase();
        Some(error(
            400,
            100,
            Some(33),
            &format!(
                "Unsupported {verb} request. Object with ID '{id}' does not exist, cannot be \
                 loaded due to missing permissions, or does not support this operation."
            ),
            None,
        ))
    }

    /// The statuses to report of a message just taken.
    fn statuses_for(&self, to_digits: &str, body: &Value) -> Vec<String> {
        let script = lock(&self.script);
        if script.silent {
            return Vec::new();
        }
        if body["type"] == "text" && !self.window_open(to_digits) {
            return vec!["failed:131047".to_owned()];
        }
        script.statuses.get(to_digits).cloned().unwrap_or_else(|| {
            ["sent", "delivered", "read"]
                .iter()
                .map(|s| s.to_string())
                .collect()
        })
    }

    fn window_open(&self, wa_id: &str) -> bool {
        lock(&self.last_wrote)
            .get(wa_id)
            .is_some_and(|at| chrono::Utc::now() - *at < SERVICE_WINDOW)
    }

    /// The value of a `messages` change, for the fake's number.
    fn value(&self) -> Map<String, Value> {
        let mut value = Map::new();
        value.insert("messaging_product".into(), json!("whatsapp"));
        value.insert(
            "metadata".into(),
            json!({
                "display_phone_number": DISPLAY_PHONE_NUMBER,
                "phone_number_id": self.phone_number_id,
            }),
        );
        value
    }

    /// Posts an envelope to the webhook, signed with the app secret (or
    /// with `signature`); the answer's status and body.
    async fn post(
        &self,
        envelope: &Value,
        signature: Option<&str>,
    ) -> Result<(u16, String), String> {
        let url = self
            .webhook()
            .ok_or_else(|| "no webhook: deliver_to names it first".to_owned())?;
        let raw = serde_json::to_vec(envelope).expect("an envelope serialises");
        let signature = match signature {
            Some(signature) => signature.to_owned(),
            None => whatsapp_signature(&self.app_secret, &raw),
        };
        let response = self
            .http
            .post(&url)
            .header(CONTENT_TYPE, "application/json")
            .header("x-hub-signature-256", signature)
            .header(USER_AGENT, "facebookexternalua")
            .body(raw)
            .timeout(WEBHOOK_DEADLINE)
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    format!("{url} did not answer within {WEBHOOK_DEADLINE:?}")
                } else {
                    format!("{url} could not be reached: {e}")
                }
            })?;
        let status = response.status().as_u16();
        let body = response
            .text()
            .await
            .map_err(|e| format!("{url}'s answer broke off: {e}"))?;
        Ok((status, body))
    }

    /// Posts an envelope signed, writing down a failure or a non-2xx
    /// answer; the answer's status (0 when there was none).
    async fn deliver(&self, what: &str, envelope: &Value) -> u16 {
        match self.post(envelope, None).await {
            Ok((status, _)) if (200..300).contains(&status) => status,
            Ok((status, body)) => {
                self.problem(format!("the webhook answered {status} to {what}: {body:?}"));
                status
            }
            Err(e) => {
                self.problem(format!("the webhook, for {what}: {e}"));
                0
            }
        }
    }
}

/// The Graph API's error object: `code` (`100`, `190`, `130429`,
/// `131049`…), `message` as Meta writes it (`(#130429) Rate limit hit`),
/// and for the Cloud API's own errors `error_data.details`.
pub fn meta_error(code: u32, subcode: Option<u32>, message: &str, details: Option<&str>) -> Value {
    let mut error = json!({
        "message": message,
        "type": "OAuthException",
        "code": code,
        "fbtrace_id": fbtrace_id(),
    });
    if let Some(subcode) = subcode {
        error["error_subcode"] = json!(subcode);
    }
    if let Some(details) = details {
        error["error_data"] = json!({"messaging_product": "whatsapp", "details": details});
    }
    json!({ "error": error })
}

fn error(
    status: u16,
    code: u32,
    subcode: Option<u32>,
    message: &str,
    details: Option<&str>,
) -> Response {
    let status = StatusCode::from_u16(status).expect("an HTTP status");
    (status, Json(meta_error(code, subcode, message, details))).into_response()
}

fn unauthorised(code: u32, subcode: Option<u32>, message: &str) -> Response {
    let mut response = error(401, code, subcode, message, None);
    response.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("OAuth \"Facebook Platform\" \"invalid_token\""),
    );
    response
}

/// A trace ID like Meta's: 23 characters of base64url.
fn fbtrace_id() -> String {
    let mut raw = uuid::Uuid::new_v4().as_bytes().to_vec();
    raw.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)[..23].to_owned()
}

/// A new message ID: `wamid.` and base64 of the person's number and a
/// random part, as Meta's are shaped.
fn new_wamid(wa_id: &str) -> String {
    let mut raw = vec![0x15, 0x02, 0x00, 0x11, 0x18, 0x12];
    raw.extend_from_slice(wa_id.as_bytes());
    raw.extend_from_slice(
        uuid::Uuid::new_v4()
            .simple()
            .to_string()
            .to_ascii_uppercase()
            .as_bytes(),
    );
    raw.push(0);
    format!(
        "wamid.{}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// Unix seconds as a string, as the webhooks write times.
fn timestamp(at: chrono::DateTime<chrono::Utc>) -> String {
    at.timestamp().to_string()
}

/// The header Meta signs a webhook with: `sha256=` and the lowercase hex
/// HMAC-SHA256 of the raw body, keyed with the app secret.
pub fn whatsapp_signature(app_secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(app_secret.as_bytes())
        .expect("HMAC takes a key of any size");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(7 + 64);
    hex.push_str("sha256=");
    for byte in digest {
        hex.push(char::from(b"0123456789abcdef"[usize::from(byte >> 4)]));
        hex.push(char::from(b"0123456789abcdef"[usize::from(byte & 0xf)]));
    }
    hex
}

/// The title and details Meta gives a failed status's error code.
fn error_text(code: u32) -> (&'static str, &'static str) {
    match code {
        131047 => (
            "Re-engagement message",
            "Message failed to send because more than 24 hours have passed since the \
             customer last replied to this number.",
        ),
        131026 => (
            "Message undeliverable",
            "Unable to deliver message: the recipient cannot receive it.",
        ),
        131049 => (
            "This message was not delivered to maintain healthy ecosystem engagement.",
            "In order to maintain a healthy ecosystem engagement, the message failed to be \
             delivered.",
        ),
        131050 => (
            "Unable to deliver the message. This recipient has chosen to stop receiving \
             marketing messages on WhatsApp from your business.",
            "The recipient has stopped marketing messages from this business.",
        ),
        131056 => (
            "(Business Account, Consumer Account) pair rate limit hit",
            "Too many messages sent from this phone number to the same phone number in a \
             short period of time.",
        ),
        130429 => (
            "Rate limit hit",
            "Message failed to send because there were too many messages sent from this \
             phone number in a short period of time.",
        ),
        131000 => (
            "Something went wrong",
            "Message failed to send due to an unknown error.",
        ),
        _ => ("Message failed", "The message could not be delivered."),
    }
}

/// One status of a message, as Meta writes it in `statuses[]`.
#[cfg(test)]
fn status_object(wamid: &str, recipient: &str, kind: &str, status: &str) -> Value {
    status_object_of(wamid, recipient, kind, status, None)
}

/// [`status_object`], echoing the message's `biz_opaque_callback_data` as
/// Meta does.
fn status_object_of(
    wamid: &str,
    recipient: &str,
    kind: &str,
    status: &str,
    opaque: Option<&str>,
) -> Value {
    let (status, code) = match status.split_once(':') {
        Some((status, code)) => (status, code.parse::<u32>().ok()),
        None => (status, None),
    };
    let now = chrono::Utc::now();
    let mut object = json!({
        "id": wamid,
        "status": status,
        "timestamp": timestamp(now),
        "recipient_id": recipient,
    });
    if let Some(opaque) = opaque {
        object["biz_opaque_callback_data"] = json!(opaque);
    }
    // A template opens a business-initiated conversation; a free-form
    // message is answered within the person's service conversation.
    let category = if kind == "template" {
        "utility"
    } else {
        "service"
    };
    if matches!(status, "sent" | "delivered") {
        let mut conversation = json!({
            "id": format!("{:x}", conversation_number(wamid)),
            "origin": {"type": category},
        });
        if status == "sent" {
            conversation["expiration_timestamp"] = json!(timestamp(now + SERVICE_WINDOW));
        }
        object["conversation"] = conversation;
        object["pricing"] = json!({
            "billable": category != "service",
            "pricing_model": "PMP",
            "type": if category == "service" { "free_customer_service" } else { "regular" },
            "category": category,
        });
    }
    if status == "failed" {
        let code = code.unwrap_or(131000);
        let (title, details) = error_text(code);
        object["errors"] = json!([{
            "code": code,
            "title": title,
            "message": title,
            "error_data": {"details": details},
            "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/",
        }]);
    }
    object
}

/// A stable 128-bit number from a message ID, for its conversation's ID
/// (32 hex digits, as Meta's are).
fn conversation_number(text: &str) -> u128 {
    use sha2::Digest;
    let digest = Sha256::digest(text.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    u128::from_be_bytes(bytes)
}

/// Wraps a `messages` change's value in the envelope Meta posts.
fn envelope(value: Map<String, Value>) -> Value {
    json!({
        "object": "whatsapp_business_account",
        "entry": [{
            "id": WABA_ID,
            "changes": [{"field": "messages", "value": Value::Object(value)}],
        }],
    })
}

/// A fake WhatsApp Cloud API on 127.0.0.1; stops when dropped.
pub struct FakeWhatsapp {
    /// Its base URL, for `whatsapp_api_url`: sends go to
    /// `{url}/v23.0/{phone_number_id}/messages`.
    pub url: String,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for FakeWhatsapp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeWhatsapp {
    /// A fake of the business phone number `phone_number_id` (digits, as
    /// Meta's IDs are), reached with `access_token`, whose app signs its
    /// webhooks with `app_secret`.
    pub async fn start(
        phone_number_id: &str,
        access_token: &str,
        app_secret: &str,
    ) -> FakeWhatsapp {
        assert!(
            !phone_number_id.is_empty() && phone_number_id.bytes().all(|b| b.is_ascii_digit()),
            "{phone_number_id:?} is no phone number ID: Meta's are digits"
        );
        let shared = Arc::new(Shared {
            phone_number_id: phone_number_id.to_owned(),
            access_token: access_token.to_owned(),
            app_secret: app_secret.to_owned(),
            log: Mutex::new(Log::default()),
            refuse: Mutex::new(false),
            webhook: Mutex::new(None),
            script: Mutex::new(Script::default()),
            messages: Mutex::new(Vec::new()),
            last_wrote: Mutex::new(HashMap::new()),
            // Nothing but loopback is ever asked for: no proxy either.
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("an HTTP client"),
        });
        let router = Router::new().fallback(api).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let url = format!("http://{}", listener.local_addr().expect("bound"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        FakeWhatsapp { url, shared, task }
    }

    /// Every request herald made, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.shared.log).requests.clone()
    }

    /// When each request to `path` came, in order.
    pub fn times_of(&self, method: &str, path: &str) -> Vec<std::time::Instant> {
        let log = lock(&self.shared.log);
        log.requests
            .iter()
            .zip(&log.times)
            .filter(|(r, _)| r.method == method && r.path == path)
            .map(|(_, at)| *at)
            .collect()
    }

    /// Every departure from the specification seen so far.
    pub fn problems(&self) -> Vec<String> {
        lock(&self.shared.log).problems.clone()
    }

    /// From now on, refuse (or again accept) the access token, as Meta does
    /// once it has expired or been revoked: 401, code 190.
    pub fn refuse_credentials(&self, refuse: bool) {
        *lock(&self.shared.refuse) = refuse;
    }

    /// Where the webhooks go: the app's callback URL, herald's
    /// `/providers/{id}/webhook` on a loopback address.
    pub fn deliver_to(&self, url: &str) {
        assert!(is_loopback(url), "{url} is not a loopback http(s) URL");
        *lock(&self.shared.webhook) = Some(url.to_owned());
    }

    /// Answers the next send with `status` and `body` (429 with
    /// [`meta_error`] code 130429, 400 with 131049…), taking nothing;
    /// sends after it are answered as before.
    pub fn answer_next(&self, status: u16, body: Value) {
        self.script().answers.push_back((status, body));
    }

    /// Reports these statuses of every message to `to` (with or without
    /// `+`): `sent`, `delivered`, `read`, `failed`; `failed:131026` carries
    /// that error code (131000, unknown, without one). A `text` outside the
    /// person's service window fails with 131047 whatever is scripted.
    pub fn report_for(&self, to: &str, statuses: &[&str]) {
        self.script().statuses.insert(
            digits_of(to).to_owned(),
            statuses.iter().map(|s| s.to_string()).collect(),
        );
    }

    /// Takes messages from now on without reporting anything of them.
    pub fn stay_silent(&self, silent: bool) {
        self.script().silent = silent;
    }

    fn script(&self) -> MutexGuard<'_, Script> {
        lock(&self.shared.script)
    }

    /// Opens `wa_id`'s customer service window, as if the person had just
    /// written (without posting anything).
    pub fn opened_window(&self, wa_id: &str) {
        self.wrote_at(wa_id, chrono::Utc::now());
    }

    /// Closes `wa_id`'s window, as if the person had never written.
    pub fn close_window(&self, wa_id: &str) {
        lock(&self.shared.last_wrote).remove(digits_of(wa_id));
    }

    /// As if `wa_id` last wrote at `at` (25 hours ago: a window just shut).
    pub fn wrote_at(&self, wa_id: &str, at: chrono::DateTime<chrono::Utc>) {
        lock(&self.shared.last_wrote).insert(digits_of(wa_id).to_owned(), at);
    }

    /// Every message taken: its `wamid` and the body herald sent.
    pub fn messages(&self) -> Vec<(String, Value)> {
        lock(&self.shared.messages).clone()
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
        panic!(
            "the Cloud API took {} messages, not {n}",
            self.messages().len()
        );
    }

    fn message(&self, wamid: &str) -> Value {
        self.messages()
            .into_iter()
            .find(|(id, _)| id == wamid)
            .map(|(_, body)| body)
            .unwrap_or_else(|| panic!("{wamid} is not a message the fake took"))
    }

    /// The envelope Meta posts of a status of a message taken (`status` as
    /// in [`FakeWhatsapp::report_for`]).
    pub fn status_envelope(&self, wamid: &str, status: &str) -> Value {
        let body = self.message(wamid);
        let recipient = digits_of(body["to"].as_str().unwrap_or_default()).to_owned();
        let kind = body["type"].as_str().unwrap_or_default();
        let mut value = self.shared.value();
        value.insert(
            "statuses".into(),
            json!([status_object_of(
                wamid,
                &recipient,
                kind,
                status,
                body["biz_opaque_callback_data"].as_str()
            )]),
        );
        envelope(value)
    }

    /// Posts `envelope` to the webhook, signed; the answer's status (0 when
    /// there was none). A non-2xx answer is a problem.
    pub async fn post_envelope(&self, envelope: &Value) -> u16 {
        self.shared
            .deliver("an envelope the test gave", envelope)
            .await
    }

    /// Posts `envelope` to the webhook signed, or with `signature_override`
    /// as its `X-Hub-Signature-256`; the answer's status (0 when there was
    /// none), whatever it is.
    pub async fn post_webhook(&self, envelope: &Value, signature_override: Option<&str>) -> u16 {
        match self.shared.post(envelope, signature_override).await {
            Ok((status, _)) => status,
            Err(_) => 0,
        }
    }

    /// The envelope Meta posts when `from` (a `wa_id`) sends a message whose
    /// type-specific fields are `fields` (`{"type": "image", "image":
    /// {...}}`), and the message's new `wamid`.
    pub fn inbound_envelope(&self, from: &str, fields: Value) -> (Value, String) {
        let from = digits_of(from);
        let wamid = new_wamid(from);
        let mut message = json!({
            "from": from,
            "id": wamid,
            "timestamp": timestamp(chrono::Utc::now()),
        });
        if let (Some(message), Value::Object(fields)) = (message.as_object_mut(), fields) {
            message.extend(fields);
        }
        let mut value = self.shared.value();
        value.insert(
            "contacts".into(),
            json!([{"profile": {"name": PROFILE_NAME}, "wa_id": from}]),
        );
        value.insert("messages".into(), json!([message]));
        (envelope(value), wamid)
    }

    /// Posts a person's message of `fields` (as in
    /// [`FakeWhatsapp::inbound_envelope`]), signed, which opens their
    /// service window; herald's answer's status and the message's `wamid`.
    pub async fn send_message_of(&self, from: &str, fields: Value) -> (u16, String) {
        self.opened_window(from);
        let (envelope, wamid) = self.inbound_envelope(from, fields);
        let status = self
            .shared
            .deliver(&format!("the message {wamid} from {from}"), &envelope)
            .await;
        (status, wamid)
    }

    /// Posts `from`'s text message; herald's answer's status and its `wamid`.
    pub async fn send_inbound(&self, from: &str, text: &str) -> (u16, String) {
        self.send_message_of(from, json!({"type": "text", "text": {"body": text}}))
            .await
    }

    /// Posts `from`'s tap on a template's quick-reply button (`title` shown,
    /// `id` the payload herald gave), with the message it answers as its
    /// `context`; herald's answer's status and the tap's `wamid`.
    pub async fn send_button_reply(&self, from: &str, title: &str, id: &str) -> (u16, String) {
        let mut fields = json!({"type": "button", "button": {"payload": id, "text": title}});
        self.add_context(from, &mut fields);
        self.send_message_of(from, fields).await
    }

    /// Posts `from`'s choice in an interactive message: `kind` is
    /// `button_reply` or `list_reply`, with the reply's `id` and `title`.
    pub async fn send_interactive_reply(
        &self,
        from: &str,
        kind: &str,
        title: &str,
        id: &str,
    ) -> (u16, String) {
        assert!(
            matches!(kind, "button_reply" | "list_reply"),
            "{kind} is not an interactive reply"
        );
        let mut fields = json!({
            "type": "interactive",
            "interactive": {"type": kind, kind: {"id": id, "title": title}},
        });
        self.add_context(from, &mut fields);
        self.send_message_of(from, fields).await
    }

    /// Names the last message sent to `from` as the one a reply answers.
    fn add_context(&self, from: &str, fields: &mut Value) {
        let from = digits_of(from);
        let last = self
            .messages()
            .into_iter()
            .rev()
            .find(|(_, body)| body["to"].as_str().map(digits_of) == Some(from));
        if let Some((wamid, _)) = last {
            fields["context"] = json!({"from": DISPLAY_PHONE_NUMBER, "id": wamid});
        }
    }

    /// Does the webhook's verification handshake as Meta does when the
    /// callback URL is set: `GET ?hub.mode=…&hub.verify_token=…&
    /// hub.challenge=…`; herald's status and body (0 and nothing when there
    /// was no answer).
    pub async fn verify(&self, mode: &str, token: &str, challenge: &str) -> (u16, String) {
        let Some(url) = self.shared.webhook() else {
            panic!("deliver_to names the webhook first");
        };
        let mut url = url::Url::parse(&url).expect("the webhook is a URL");
        url.query_pairs_mut()
            .append_pair("hub.mode", mode)
            .append_pair("hub.verify_token", token)
            .append_pair("hub.challenge", challenge);
        let response = self
            .shared
            .http
            .get(url)
            .header(
                USER_AGENT,
                "facebookplatform/1.0 (+http://developers.facebook.com)",
            )
            .timeout(WEBHOOK_DEADLINE)
            .send()
            .await;
        match response {
            Ok(response) => {
                let status = response.status().as_u16();
                (status, response.text().await.unwrap_or_default())
            }
            Err(_) => (0, String::new()),
        }
    }
}

/// The digits of a number written with or without `+`.
fn digits_of(number: &str) -> &str {
    number.trim_start_matches('+')
}

fn is_loopback(url: &str) -> bool {
    url::Url::parse(url).is_ok_and(|parsed| {
        matches!(parsed.scheme(), "http" | "https")
            && match parsed.host() {
                Some(url::Host::Domain(name)) => name == "localhost",
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                None => false,
            }
    })
}

/// `v` and a major and minor version, as the Graph API's paths name them.
fn is_version(segment: &str) -> bool {
    segment.strip_prefix('v').is_some_and(|rest| {
        rest.split_once('.').is_some_and(|(major, minor)| {
            !major.is_empty()
                && !minor.is_empty()
                && major.bytes().all(|b| b.is_ascii_digit())
                && minor.bytes().all(|b| b.is_ascii_digit())
        })
    })
}

/// Every request, routed by hand: `/{Version}/{Phone-Number-ID}` and
/// `/{Version}/{Phone-Number-ID}/messages`.
async fn api(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let what = format!("{method} {path}");
    match (method.as_str(), segments.as_slice()) {
        ("GET", [version, id]) if is_version(version) => {
            shared.record("GET", &path, &Value::Null);
            check_version(&shared, &what, version);
            phone_number(&shared, &what, id, uri.query(), &headers)
        }
        ("POST", [version, id, "messages"]) if is_version(version) => {
            check_version(&shared, &what, version);
            send(&shared, &what, &path, id, &headers, &body)
        }
        _ => {
            shared.problem(format!(
                "a request to {method} {uri}, which the Cloud API does not have or herald has \
                 no use for"
            ));
            error(
                400,
                100,
                None,
                &format!("Unknown path components: {path}"),
                None,
            )
        }
    }
}

fn check_version(shared: &Shared, what: &str, version: &str) {
    if version != API_VERSION {
        shared.problem(format!(
            "{what}: Graph API {version}, not {API_VERSION}, which herald is written against"
        ));
    }
}

/// The fields `GET /{Phone-Number-ID}` can give.
const PHONE_NUMBER_FIELDS: &[&str] = &[
    "id",
    "display_phone_number",
    "verified_name",
    "quality_rating",
    "name_status",
    "code_verification_status",
];

/// `GET /{Version}/{Phone-Number-ID}`: the business number, as herald
/// checks a connection's credentials.
fn phone_number(
    shared: &Shared,
    what: &str,
    id: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Response {
    if let Some(refusal) = shared.refusal(what, headers) {
        return refusal;
    }
    if let Some(refusal) = shared.unknown_number(what, "GET", id) {
        return refusal;
    }
    let all = json!({
        "id": shared.phone_number_id,
        "display_phone_number": "+1 555-078-3881",
        "verified_name": VERIFIED_NAME,
        "quality_rating": "GREEN",
        "name_status": "APPROVED",
        "code_verification_status": "VERIFIED",
    });
    let mut asked: Option<Vec<String>> = None;
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match name.as_ref() {
            "fields" => asked = Some(value.split(',').map(|f| f.trim().to_owned()).collect()),
            // Graph API clients may give the token in the query too.
            "access_token" => shared.problem(format!(
                "{what}: the access token is in the query, where it is logged; send it as a \
                 bearer token"
            )),
            other => shared.problem(format!("{what}: unknown query parameter {other}")),
        }
    }
    let Some(asked) = asked else {
        return Json(json!({
            "id": all["id"],
            "display_phone_number": all["display_phone_number"],
            "verified_name": all["verified_name"],
            "quality_rating": all["quality_rating"],
        }))
        .into_response();
    };
    let mut answer = Map::new();
    answer.insert("id".into(), all["id"].clone());
    for field in &asked {
        if !PHONE_NUMBER_FIELDS.contains(&field.as_str()) {
            shared.problem(format!("{what}: fields names {field:?}, which it has not"));
            return error(
                400,
                100,
                None,
                &format!(
                    "(#100) Tried accessing nonexisting field ({field}) on node type \
                     (WhatsAppBusinessPhoneNumber)"
                ),
                None,
            );
        }
        answer.insert(field.clone(), all[field.as_str()].clone());
    }
    Json(Value::Object(answer)).into_response()
}

/// `POST /{Version}/{Phone-Number-ID}/messages` (sendMessage): takes a
/// message (200, its `wamid`) and reports its statuses; or answers as the
/// script says.
fn send(
    shared: &Arc<Shared>,
    what: &str,
    path: &str,
    id: &str,
    headers: &HeaderMap,
    raw: &[u8],
) -> Response {
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !content_type.starts_with("application/json") {
        shared.problem(format!(
            "{what}: the body is sent as {content_type:?}, not application/json"
        ));
    }
    let body = serde_json::from_slice::<Value>(raw);
    shared.record("POST", path, body.as_ref().unwrap_or(&Value::Null));
    if let Some(refusal) = shared.refusal(what, headers) {
        return refusal;
    }
    if let Some(refusal) = shared.unknown_number(what, "POST", id) {
        return refusal;
    }
    let body = match body {
        Ok(body) => body,
        Err(e) => {
            shared.problem(format!("{what}: the body is not JSON ({e})"));
            return error(
                400,
                100,
                None,
                "(#100) Invalid parameter",
                Some("The request body is not valid JSON."),
            );
        }
    };
    let found = check_message(&body);
    if let Some(first) = found.first() {
        let details = first.clone();
        shared.problems(what, found);
        return error(400, 100, None, "(#100) Invalid parameter", Some(&details));
    }
    if let Some((status, answer)) = lock(&shared.script).answers.pop_front() {
        let status = StatusCode::from_u16(status).expect("a scripted status is one");
        return (status, Json(answer)).into_response();
    }
    let input = body["to"].as_str().unwrap_or_default().to_owned();
    let wa_id = digits_of(&input).to_owned();
    let wamid = new_wamid(&wa_id);
    lock(&shared.messages).push((wamid.clone(), body.clone()));
    let statuses = shared.statuses_for(&wa_id, &body);
    let kind = body["type"].as_str().unwrap_or_default().to_owned();
    let opaque = body["biz_opaque_callback_data"].as_str().map(str::to_owned);
    let mut taken = json!({"id": wamid});
    if kind == "template" {
        taken["message_status"] = json!("accepted");
    }
    if !statuses.is_empty() && shared.webhook().is_some() {
        let shared = shared.clone();
        let wamid = wamid.clone();
        let wa_id = wa_id.clone();
        // After the answer, as Meta does: in order, each once the one
        // before it was taken.
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            for status in statuses {
                let mut value = shared.value();
                value.insert(
                    "statuses".into(),
                    json!([status_object_of(
                        &wamid,
                        &wa_id,
                        &kind,
                        &status,
                        opaque.as_deref()
                    )]),
                );
                shared
                    .deliver(&format!("{status} of {wamid}"), &envelope(value))
                    .await;
            }
        });
    }
    Json(json!({
        "messaging_product": "whatsapp",
        "contacts": [{"input": input, "wa_id": wa_id}],
        "messages": [taken],
    }))
    .into_response()
}

/// Notes each field of `object` that is not among `known`.
fn unknown_fields(
    object: &Map<String, Value>,
    known: &[&str],
    at: &str,
    problems: &mut Vec<String>,
) {
    for name in object.keys() {
        if !known.contains(&name.as_str()) {
            problems.push(format!("unknown field {at}{name}"));
        }
    }
}

/// The object at `value`, or a problem saying it should be one.
fn object<'v>(
    value: &'v Value,
    at: &str,
    problems: &mut Vec<String>,
) -> Option<&'v Map<String, Value>> {
    match value {
        Value::Object(object) => Some(object),
        Value::Null => {
            problems.push(format!("{at} is required"));
            None
        }
        other => {
            problems.push(format!("{at} is {other}, not an object"));
            None
        }
    }
}

/// The string at `value`, or a problem saying it should be one.
fn string<'v>(value: &'v Value, at: &str, problems: &mut Vec<String>) -> Option<&'v str> {
    match value {
        Value::String(text) => Some(text),
        Value::Null => {
            problems.push(format!("{at} is required"));
            None
        }
        other => {
            problems.push(format!("{at} is {other}, not a string"));
            None
        }
    }
}

/// A recipient as herald writes one: `+` optional, then 7 to 15 digits.
fn is_recipient(to: &str) -> bool {
    let digits = digits_of(to);
    (7..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

/// A language code in Meta's form: letters, and parts joined by `_`
/// (`en`, `en_US`, `pt_BR`, `zh_Hant`…), never BCP 47's `-`.
fn is_language_code(code: &str) -> bool {
    !code.is_empty()
        && code
            .split('_')
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphabetic()))
        && code.split('_').next().is_some_and(|lang| {
            (2..=3).contains(&lang.len()) && lang.bytes().all(|b| b.is_ascii_lowercase())
        })
}

/// Checks a send's body against the specification (`Message`, as herald
/// uses it: `text` and `template`); every departure.
pub fn check_message(body: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(message) = object(body, "the body", &mut problems) else {
        return problems;
    };
    let kind = message.get("type").and_then(Value::as_str);
    let mut known = vec![
        "messaging_product",
        "recipient_type",
        "to",
        "type",
        "context",
        "biz_opaque_callback_data",
    ];
    if let Some(kind) = kind.filter(|k| MESSAGE_TYPES.contains(k)) {
        known.push(kind);
    }
    unknown_fields(message, &known, "", &mut problems);
    let field = |name: &str| message.get(name).unwrap_or(&Value::Null);
    match string(
        field("messaging_product"),
        "messaging_product",
        &mut problems,
    ) {
        Some("whatsapp") | None => {}
        Some(other) => problems.push(format!("messaging_product is {other:?}, not \"whatsapp\"")),
    }
    match message.get("recipient_type") {
        None => {}
        Some(Value::String(individual)) if individual == "individual" => {}
        Some(other) => problems.push(format!(
            "recipient_type is {other}, not \"individual\" (herald writes to people)"
        )),
    }
    if let Some(to) = string(field("to"), "to", &mut problems) {
        if !is_recipient(to) {
            problems.push(format!(
                "to {to:?} is not a phone number's digits (E.164, with or without +)"
            ));
        }
    }
    if let Some(context) = message.get("context") {
        if let Some(context) = object(context, "context", &mut problems) {
            unknown_fields(context, &["message_id"], "context.", &mut problems);
            string(
                context.get("message_id").unwrap_or(&Value::Null),
                "context.message_id",
                &mut problems,
            );
        }
    }
    if let Some(data) = message.get("biz_opaque_callback_data") {
        match data.as_str() {
            Some(text) if text.chars().count() <= 512 => {}
            _ => problems
                .push("biz_opaque_callback_data is not a string of at most 512 characters".into()),
        }
    }
    match string(field("type"), "type", &mut problems) {
        None => {}
        Some("text") => check_text(field("text"), &mut problems),
        Some("template") => check_template(field("template"), &mut problems),
        Some(other) if MESSAGE_TYPES.contains(&other) => problems.push(format!(
            "type {other:?} is a message type herald does not send (only text and template)"
        )),
        Some(other) => problems.push(format!(
            "type {other:?} is not a message type ({})",
            MESSAGE_TYPES.join(", ")
        )),
    }
    problems
}

/// `TextMessage.text`: `{body, preview_url?}`, the body 1 to 4096
/// characters.
fn check_text(text: &Value, problems: &mut Vec<String>) {
    let Some(text) = object(text, "text", problems) else {
        return;
    };
    unknown_fields(text, &["body", "preview_url"], "text.", problems);
    if let Some(body) = string(
        text.get("body").unwrap_or(&Value::Null),
        "text.body",
        problems,
    ) {
        let characters = body.chars().count();
        if !(1..=4096).contains(&characters) {
            problems.push(format!(
                "text.body has {characters} characters, not 1 to 4096"
            ));
        }
    }
    if let Some(preview) = text.get("preview_url") {
        if !preview.is_boolean() {
            problems.push(format!("text.preview_url is {preview}, not true or false"));
        }
    }
}

/// `TemplateMessage.template`: `{name, language: {code, policy?},
/// components?}`.
fn check_template(template: &Value, problems: &mut Vec<String>) {
    let Some(template) = object(template, "template", problems) else {
        return;
    };
    unknown_fields(
        template,
        &["name", "language", "components"],
        "template.",
        problems,
    );
    let field = |name: &str| template.get(name).unwrap_or(&Value::Null);
    if let Some(name) = string(field("name"), "template.name", problems) {
        // Meta names templates in lowercase letters, digits and `_`.
        let fits = (1..=512).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !fits {
            problems.push(format!(
                "template.name {name:?} is not a template's name (lowercase letters, digits, _)"
            ));
        }
    }
    if let Some(language) = object(field("language"), "template.language", problems) {
        unknown_fields(
            language,
            &["code", "policy"],
            "template.language.",
            problems,
        );
        let code = language.get("code").unwrap_or(&Value::Null);
        if let Some(code) = string(code, "template.language.code", problems) {
            if !is_language_code(code) {
                problems.push(format!(
                    "template.language.code {code:?} is not in Meta's form (en, en_US, pt_BR: \
                     letters joined by _, not -)"
                ));
            }
        }
        if let Some(policy) = language.get("policy") {
            if policy != "deterministic" {
                problems.push(format!(
                    "template.language.policy is {policy}, not \"deterministic\""
                ));
            }
        }
    }
    match template.get("components") {
        None => {}
        Some(Value::Array(components)) => {
            for (i, component) in components.iter().enumerate() {
                check_component(component, &format!("template.components[{i}]"), problems);
            }
        }
        Some(other) => problems.push(format!("template.components is {other}, not an array")),
    }
}

/// A `TemplateComponent`: `header`, `body` or `button`, with the
/// parameters each takes.
fn check_component(component: &Value, at: &str, problems: &mut Vec<String>) {
    let Some(component) = object(component, at, problems) else {
        return;
    };
    let field = |name: &str| component.get(name).unwrap_or(&Value::Null);
    let kind = string(field("type"), &format!("{at}.type"), problems);
    let allowed: &[&str] = match kind {
        Some("header") => &[
            "text",
            "currency",
            "date_time",
            "image",
            "document",
            "video",
        ],
        Some("body") => &["text", "currency", "date_time"],
        Some("button") => &["payload", "text"],
        Some(other) => {
            problems.push(format!(
                "{at}.type is {other:?}, not header, body or button"
            ));
            return;
        }
        None => return,
    };
    if kind == Some("button") {
        unknown_fields(
            component,
            &["type", "sub_type", "index", "parameters"],
            &format!("{at}."),
            problems,
        );
        match string(field("sub_type"), &format!("{at}.sub_type"), problems) {
            Some("quick_reply" | "url" | "catalog") | None => {}
            Some(other) => problems.push(format!(
                "{at}.sub_type is {other:?}, not quick_reply, url or catalog"
            )),
        }
        // The position of the button in the template, 0 to 9 (Meta takes
        // a number written as a string, or a number).
        let index = match field("index") {
            Value::String(index) => index.parse::<u8>().ok(),
            Value::Number(index) => index.as_u64().and_then(|i| u8::try_from(i).ok()),
            Value::Null => {
                problems.push(format!("{at}.index is required"));
                Some(0)
            }
            _ => None,
        };
        if index.is_none_or(|i| i > 9) {
            problems.push(format!("{at}.index is {}, not 0 to 9", field("index")));
        }
    } else {
        // sub_type and index are the buttons' alone.
        unknown_fields(
            component,
            &["type", "parameters"],
            &format!("{at}."),
            problems,
        );
    }
    match component.get("parameters") {
        None if kind == Some("button") => problems.push(format!("{at}.parameters is required")),
        None => {}
        Some(Value::Array(parameters)) => {
            if parameters.is_empty() && kind != Some("body") {
                problems.push(format!("{at}.parameters is empty"));
            }
            for (i, parameter) in parameters.iter().enumerate() {
                check_parameter(
                    parameter,
                    allowed,
                    &format!("{at}.parameters[{i}]"),
                    problems,
                );
            }
        }
        Some(other) => problems.push(format!("{at}.parameters is {other}, not an array")),
    }
}

/// A parameter: its `type`, among those its component takes, and the
/// field of that name.
fn check_parameter(parameter: &Value, allowed: &[&str], at: &str, problems: &mut Vec<String>) {
    let Some(parameter) = object(parameter, at, problems) else {
        return;
    };
    let Some(kind) = string(
        parameter.get("type").unwrap_or(&Value::Null),
        &format!("{at}.type"),
        problems,
    ) else {
        return;
    };
    if !allowed.contains(&kind) {
        problems.push(format!(
            "{at}.type is {kind:?}, not one of {}",
            allowed.join(", ")
        ));
        return;
    }
    unknown_fields(parameter, &["type", kind], &format!("{at}."), problems);
    let value = parameter.get(kind).unwrap_or(&Value::Null);
    let at = format!("{at}.{kind}");
    match kind {
        "text" => {
            if let Some(text) = string(value, &at, problems) {
                let characters = text.chars().count();
                if !(1..=32768).contains(&characters) {
                    problems.push(format!("{at} has {characters} characters, not 1 to 32768"));
                }
            }
        }
        "payload" => {
            string(value, &at, problems);
        }
        "currency" => {
            if let Some(currency) = object(value, &at, problems) {
                unknown_fields(
                    currency,
                    &["fallback_value", "code", "amount_1000"],
                    &format!("{at}."),
                    problems,
                );
                let get = |name: &str| currency.get(name).unwrap_or(&Value::Null);
                string(
                    get("fallback_value"),
                    &format!("{at}.fallback_value"),
                    problems,
                );
                if let Some(code) = string(get("code"), &format!("{at}.code"), problems) {
                    if !(code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase())) {
                        problems.push(format!("{at}.code {code:?} is not an ISO 4217 code"));
                    }
                }
                if !get("amount_1000").is_i64() {
                    problems.push(format!(
                        "{at}.amount_1000 is {}, not a whole number",
                        get("amount_1000")
                    ));
                }
            }
        }
        "date_time" => {
            if let Some(date_time) = object(value, &at, problems) {
                unknown_fields(date_time, &["fallback_value"], &format!("{at}."), problems);
                string(
                    date_time.get("fallback_value").unwrap_or(&Value::Null),
                    &format!("{at}.fallback_value"),
                    problems,
                );
            }
        }
        // image, document, video: a media object, by `id` or by `link`.
        _ => {
            if let Some(media) = object(value, &at, problems) {
                let mut known = vec!["id", "link"];
                if kind == "document" {
                    known.push("filename");
                }
                unknown_fields(media, &known, &format!("{at}."), problems);
                match (media.get("id"), media.get("link")) {
                    (Some(Value::String(_)), None) => {}
                    (None, Some(Value::String(link))) => {
                        let fits = url::Url::parse(link)
                            .is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
                        if !fits {
                            problems.push(format!("{at}.link {link:?} is not an http(s) URL"));
                        }
                    }
                    _ => problems.push(format!("{at} has neither a string id nor a link, or both")),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NUMBER_ID: &str = "106540352242922";
    const TOKEN: &str = "EAAG-test-access-token";
    const SECRET: &str = "app-secret-123";
    const PERSON: &str = "447700900123";

    #[test]
    fn signs_as_meta_does() {
        // The expected values come from Python's hmac, not from this code:
        //   python3 -c "import hmac,hashlib
        //   body=b'{\"object\":\"whatsapp_business_account\",\"entry\":[]}'
        //   print(hmac.new(b'app-secret-123',body,hashlib.sha256).hexdigest())
        //   print(hmac.new(b'',b'',hashlib.sha256).hexdigest())"
        assert_eq!(
            whatsapp_signature(
                SECRET,
                br#"{"object":"whatsapp_business_account","entry":[]}"#
            ),
            "sha256=20e391a99a86fc5adf7e3a453236d20c906360291977896cf2f671e03bb95703"
        );
        assert_eq!(
            whatsapp_signature("", b""),
            "sha256=b613679a0814d9ec772f95d778c35fc5ff1697c493715653c6c712144292c5ad"
        );
    }

    fn template() -> Value {
        json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": "+447700900123",
            "type": "template",
            "template": {
                "name": "table_booked",
                "language": {"code": "en_GB", "policy": "deterministic"},
                "components": [
                    {"type": "header", "parameters": [
                        {"type": "image", "image": {"link": "https://example.com/a.jpg"}}
                    ]},
                    {"type": "body", "parameters": [
                        {"type": "text", "text": "Ada"},
                        {"type": "currency", "currency": {
                            "fallback_value": "£12.50", "code": "GBP", "amount_1000": 12500
                        }},
                        {"type": "date_time", "date_time": {"fallback_value": "7 pm"}}
                    ]},
                    {"type": "button", "sub_type": "quick_reply", "index": "0",
                     "parameters": [{"type": "payload", "payload": "confirm"}]}
                ]
            }
        })
    }

    #[test]
    fn a_good_message_passes_the_checks() {
        let text = json!({
            "messaging_product": "whatsapp",
            "to": "447700900123",
            "type": "text",
            "text": {"body": "Your table is booked", "preview_url": false}
        });
        assert_eq!(check_message(&text), Vec::<String>::new());
        assert_eq!(check_message(&template()), Vec::<String>::new());
        let mut plain = template();
        plain["template"] = json!({"name": "hello_world", "language": {"code": "en"}});
        assert_eq!(check_message(&plain), Vec::<String>::new());
    }

    #[test]
    fn a_bad_message_is_a_problem() {
        let text = json!({
            "messaging_product": "sms",
            "recipient_type": "group",
            "to": "07700 900123",
            "type": "text",
            "text": {"body": "", "colour": "blue"},
            "template": {}
        });
        let problems = check_message(&text);
        for expected in [
            "messaging_product is \"sms\", not \"whatsapp\"",
            "recipient_type is \"group\", not \"individual\" (herald writes to people)",
            "to \"07700 900123\" is not a phone number's digits (E.164, with or without +)",
            "unknown field template",
            "unknown field text.colour",
            "text.body has 0 characters, not 1 to 4096",
        ] {
            assert!(
                problems.iter().any(|p| p == expected),
                "{expected:?} is not among {problems:#?}"
            );
        }
        let mut long = text.clone();
        long["text"] = json!({"body": "x".repeat(4097)});
        assert!(check_message(&long)
            .contains(&"text.body has 4097 characters, not 1 to 4096".to_owned()));

        let mut bad = template();
        bad["template"]["language"]["code"] = json!("en-GB");
        bad["template"]["components"][1]["parameters"][0] =
            json!({"type": "payload", "payload": "x"});
        bad["template"]["components"][1]["index"] = json!("1");
        bad["template"]["components"][2]["sub_type"] = json!("tap");
        bad["template"]["components"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "footer"}));
        let problems = check_message(&bad);
        for expected in [
            "template.language.code \"en-GB\" is not in Meta's form (en, en_US, pt_BR: letters joined by _, not -)",
            "template.components[1].parameters[0].type is \"payload\", not one of text, currency, date_time",
            "unknown field template.components[1].index",
            "template.components[2].sub_type is \"tap\", not quick_reply, url or catalog",
            "template.components[3].type is \"footer\", not header, body or button",
        ] {
            assert!(
                problems.iter().any(|p| p == expected),
                "{expected:?} is not among {problems:#?}"
            );
        }
        let image = json!({
            "messaging_product": "whatsapp", "to": "447700900123", "type": "image",
            "image": {"link": "https://example.com/a.jpg"}
        });
        assert_eq!(
            check_message(&image),
            ["type \"image\" is a message type herald does not send (only text and template)"]
        );
        assert_eq!(
            check_message(&json!([1])),
            ["the body is [1], not an object"]
        );
    }

    #[test]
    fn statuses_say_what_meta_says() {
        let sent = status_object("wamid.X", PERSON, "template", "sent");
        assert_eq!(sent["status"], "sent");
        assert_eq!(sent["recipient_id"], PERSON);
        assert!(sent["timestamp"].as_str().unwrap().parse::<i64>().is_ok());
        assert_eq!(sent["conversation"]["origin"]["type"], "utility");
        assert_eq!(sent["conversation"]["id"].as_str().unwrap().len(), 32);
        assert!(sent["conversation"]["expiration_timestamp"].is_string());
        assert_eq!(sent["pricing"]["category"], "utility");
        assert!(sent.get("errors").is_none());
        let read = status_object("wamid.X", PERSON, "template", "read");
        assert!(read.get("conversation").is_none() && read.get("pricing").is_none());
        let failed = status_object("wamid.X", PERSON, "text", "failed:131047");
        assert_eq!(failed["status"], "failed");
        assert_eq!(failed["errors"][0]["code"], 131047);
        assert_eq!(failed["errors"][0]["title"], "Re-engagement message");
        assert!(failed["errors"][0]["error_data"]["details"].is_string());
        let unknown = status_object("wamid.X", PERSON, "text", "failed");
        assert_eq!(unknown["errors"][0]["code"], 131000);
    }

    #[test]
    fn wamids_are_unique_and_shaped_like_metas() {
        let a = new_wamid(PERSON);
        let b = new_wamid(PERSON);
        assert_ne!(a, b);
        let raw = base64::engine::general_purpose::STANDARD
            .decode(a.strip_prefix("wamid.").unwrap())
            .unwrap();
        assert!(raw.windows(PERSON.len()).any(|w| w == PERSON.as_bytes()));
        assert!(is_version("v23.0") && is_version("v19.12"));
        assert!(!is_version("v23") && !is_version("23.0") && !is_version("vx.0"));
        assert!(is_language_code("pt_BR") && is_language_code("en") && is_language_code("zh_Hant"));
        assert!(!is_language_code("en-US") && !is_language_code("EN") && !is_language_code("en_"));
    }

    /// A stand-in for herald: keeps every webhook with whether its
    /// signature holds, and answers the verification handshake.
    struct Receiver {
        url: String,
        seen: Arc<Mutex<Vec<(Value, bool)>>>,
        task: JoinHandle<()>,
    }

    impl Drop for Receiver {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn receiver() -> Receiver {
        let seen: Arc<Mutex<Vec<(Value, bool)>>> = Arc::default();
        let kept = seen.clone();
        let app = Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let kept = kept.clone();
                async move {
                    if method == Method::GET {
                        let query: HashMap<String, String> =
                            url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
                                .into_owned()
                                .collect();
                        let ok = query.get("hub.mode").map(String::as_str) == Some("subscribe")
                            && query.get("hub.verify_token").map(String::as_str) == Some("vt");
                        return if ok {
                            (StatusCode::OK, query["hub.challenge"].clone())
                        } else {
                            (StatusCode::FORBIDDEN, String::new())
                        };
                    }
                    let signed = headers
                        .get("x-hub-signature-256")
                        .and_then(|v| v.to_str().ok())
                        == Some(whatsapp_signature(SECRET, &body).as_str());
                    let envelope = serde_json::from_slice(&body).unwrap();
                    lock(&kept).push((envelope, signed));
                    if signed {
                        (StatusCode::OK, String::new())
                    } else {
                        (StatusCode::UNAUTHORIZED, String::new())
                    }
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/providers/c1/webhook",
            listener.local_addr().unwrap()
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { url, seen, task }
    }

    async fn wait_for(herald: &Receiver, n: usize) -> Vec<(Value, bool)> {
        for _ in 0..400 {
            if lock(&herald.seen).len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        lock(&herald.seen).clone()
    }

    fn statuses(seen: &[(Value, bool)]) -> Vec<(String, Option<i64>)> {
        seen.iter()
            .map(|(envelope, signed)| {
                assert!(signed);
                assert_eq!(envelope["object"], "whatsapp_business_account");
                assert_eq!(envelope["entry"][0]["id"], WABA_ID);
                let change = &envelope["entry"][0]["changes"][0];
                assert_eq!(change["field"], "messages");
                assert_eq!(change["value"]["metadata"]["phone_number_id"], NUMBER_ID);
                let status = &change["value"]["statuses"][0];
                (
                    status["status"].as_str().unwrap().to_owned(),
                    status["errors"][0]["code"].as_i64(),
                )
            })
            .collect()
    }

    async fn post(fake: &FakeWhatsapp, token: &str, id: &str, body: &Value) -> (u16, Value) {
        let response = reqwest::Client::new()
            .post(format!("{}/v23.0/{id}/messages", fake.url))
            .bearer_auth(token)
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (
            status,
            serde_json::from_str(&response.text().await.unwrap()).unwrap(),
        )
    }

    #[tokio::test]
    async fn takes_a_template_and_reports_its_statuses_signed() {
        let fake = FakeWhatsapp::start(NUMBER_ID, TOKEN, SECRET).await;
        let herald = receiver().await;
        fake.deliver_to(&herald.url);
        let (status, answer) = post(&fake, TOKEN, NUMBER_ID, &template()).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["messaging_product"], "whatsapp");
        assert_eq!(answer["contacts"][0]["input"], "+447700900123");
        assert_eq!(answer["contacts"][0]["wa_id"], PERSON);
        assert_eq!(answer["messages"][0]["message_status"], "accepted");
        let wamid = answer["messages"][0]["id"].as_str().unwrap().to_owned();
        assert!(wamid.starts_with("wamid."));
        let seen = wait_for(&herald, 3).await;
        assert_eq!(
            statuses(&seen),
            [
                ("sent".into(), None),
                ("delivered".into(), None),
                ("read".into(), None)
            ]
        );
        assert_eq!(
            seen[0].0["entry"][0]["changes"][0]["value"]["statuses"][0]["id"],
            wamid.as_str()
        );
        assert_eq!(fake.messages()[0].0, wamid);
        assert_eq!(fake.problems(), Vec::<String>::new());
        assert_eq!(
            fake.times_of("POST", &format!("/v23.0/{NUMBER_ID}/messages"))
                .len(),
            1
        );
        // The envelope a test builds is the one the fake posts.
        let envelope = fake.status_envelope(&wamid, "failed:131026");
        let value = &envelope["entry"][0]["changes"][0]["value"];
        assert_eq!(value["statuses"][0]["errors"][0]["code"], 131026);
        assert_eq!(fake.post_envelope(&envelope).await, 200);
        assert_eq!(fake.post_webhook(&envelope, Some("sha256=00")).await, 401);
        assert_eq!(fake.problems(), Vec::<String>::new());
    }

    #[tokio::test]
    async fn a_text_outside_the_window_fails_with_131047() {
        let fake = FakeWhatsapp::start(NUMBER_ID, TOKEN, SECRET).await;
        let herald = receiver().await;
        fake.deliver_to(&herald.url);
        let text = json!({
            "messaging_product": "whatsapp", "to": PERSON, "type": "text",
            "text": {"body": "Hello again"}
        });
        let (status, answer) = post(&fake, TOKEN, NUMBER_ID, &text).await;
        assert_eq!(status, 200);
        assert!(answer["messages"][0].get("message_status").is_none());
        assert_eq!(
            statuses(&wait_for(&herald, 1).await),
            [("failed".into(), Some(131047))]
        );

        // The person writes: the window opens, and a text goes through.
        let (status, inbound) = fake.send_inbound(PERSON, "hi").await;
        assert_eq!(status, 200);
        let seen = wait_for(&herald, 2).await;
        let value = &seen[1].0["entry"][0]["changes"][0]["value"];
        assert_eq!(value["contacts"][0]["wa_id"], PERSON);
        assert_eq!(value["contacts"][0]["profile"]["name"], PROFILE_NAME);
        assert_eq!(value["messages"][0]["id"], inbound.as_str());
        assert_eq!(value["messages"][0]["from"], PERSON);
        assert_eq!(value["messages"][0]["type"], "text");
        assert_eq!(value["messages"][0]["text"]["body"], "hi");
        fake.report_for(PERSON, &["sent", "failed:131026"]);
        post(&fake, TOKEN, NUMBER_ID, &text).await;
        let seen = wait_for(&herald, 4).await;
        assert_eq!(
            statuses(&seen[2..]),
            [("sent".into(), None), ("failed".into(), Some(131026))]
        );

        // A window 25 hours old is shut.
        fake.wrote_at(PERSON, chrono::Utc::now() - chrono::TimeDelta::hours(25));
        post(&fake, TOKEN, NUMBER_ID, &text).await;
        let seen = wait_for(&herald, 5).await;
        assert_eq!(statuses(&seen[4..]), [("failed".into(), Some(131047))]);

        // A tap on the template's button answers the last message.
        let (status, _) = fake.send_button_reply(PERSON, "Yes", "confirm").await;
        assert_eq!(status, 200);
        let seen = wait_for(&herald, 6).await;
        let message = &seen[5].0["entry"][0]["changes"][0]["value"]["messages"][0];
        assert_eq!(message["type"], "button");
        assert_eq!(
            message["button"],
            json!({"payload": "confirm", "text": "Yes"})
        );
        assert_eq!(message["context"]["id"], fake.messages()[2].0.as_str());
        fake.send_interactive_reply(PERSON, "list_reply", "Friday", "fri")
            .await;
        let seen = wait_for(&herald, 7).await;
        let message = &seen[6].0["entry"][0]["changes"][0]["value"]["messages"][0];
        assert_eq!(message["interactive"]["list_reply"]["id"], "fri");
        assert_eq!(fake.problems(), Vec::<String>::new());
    }

    #[tokio::test]
    async fn refuses_what_meta_refuses() {
        let fake = FakeWhatsapp::start(NUMBER_ID, TOKEN, SECRET).await;
        let herald = receiver().await;
        fake.deliver_to(&herald.url);
        let (status, answer) = post(&fake, "not-the-token", NUMBER_ID, &template()).await;
        assert_eq!(status, 401);
        assert_eq!(answer["error"]["code"], 190);
        assert_eq!(answer["error"]["type"], "OAuthException");
        assert!(answer["error"]["fbtrace_id"].is_string());
        assert_eq!(fake.problems().len(), 1, "{:?}", fake.problems());
        let (status, answer) = post(&fake, TOKEN, "999", &template()).await;
        assert_eq!(status, 400);
        assert_eq!(answer["error"]["code"], 100);
        assert_eq!(fake.problems().len(), 2, "{:?}", fake.problems());
        fake.refuse_credentials(true);
        let (status, _) = post(&fake, TOKEN, NUMBER_ID, &template()).await;
        assert_eq!(status, 401);
        assert_eq!(fake.problems().len(), 2);
        fake.refuse_credentials(false);

        fake.answer_next(
            429,
            meta_error(
                130429,
                None,
                "(#130429) Rate limit hit",
                Some("Too many messages"),
            ),
        );
        let (status, answer) = post(&fake, TOKEN, NUMBER_ID, &template()).await;
        assert_eq!(status, 429);
        assert_eq!(answer["error"]["code"], 130429);
        assert!(fake.messages().is_empty());

        let phone = reqwest::Client::new()
            .get(format!("{}/v23.0/{NUMBER_ID}", fake.url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(phone.status(), 200);
        let phone: Value = serde_json::from_str(&phone.text().await.unwrap()).unwrap();
        assert_eq!(phone["id"], NUMBER_ID);
        assert_eq!(phone["verified_name"], VERIFIED_NAME);
        assert!(phone["display_phone_number"].is_string());

        assert_eq!(
            fake.verify("subscribe", "vt", "1158201444").await,
            (200, "1158201444".into())
        );
        assert_eq!(fake.verify("subscribe", "wrong", "1").await.0, 403);

        // Another version is answered, and noted.
        let older = reqwest::Client::new()
            .get(format!("{}/v19.0/{NUMBER_ID}", fake.url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(older.status(), 200);
        assert_eq!(fake.problems().len(), 3, "{:?}", fake.problems());
        assert!(fake.problems()[2].contains("v19.0"));
        assert_eq!(fake.requests().len(), 6);
    }
}

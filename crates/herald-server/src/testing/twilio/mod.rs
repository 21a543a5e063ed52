//! A loopback fake of Twilio, written from its specification (the REST API
//! 2010-04-01, `spec/json/twilio_api_v2010.json` of `twilio/twilio-oai`)
//! and its references for TwiML and webhooks.
//!
//! It checks every request herald sends as Twilio would (HTTP Basic
//! `AccountSid:AuthToken` and the account in the path; the form-encoded
//! body's parameters: their names, the required ones, their formats and the
//! rules between them) and writes down every departure from the
//! specification in [`FakeTwilio::problems`], which a test expects empty;
//! and it plays Twilio's side: it takes messages and posts their statuses
//! to each message's `StatusCallback`, and posts a person's messages to the
//! number's messaging webhook; it places calls, posts their progress to
//! `StatusCallback`, asks `Url` for TwiML and plays it (`Say`, `Pause`,
//! `Gather`, `Redirect`, `Dial`, `Hangup`) with the test as the person.
//! Every webhook is signed as Twilio signs them ([`twilio_signature`], in
//! `X-Twilio-Signature`) over the URL herald gave, though it is delivered to
//! the test's server ([`FakeTwilio::deliver_to`]). Point a server at it
//! with `twilio_api_url`.

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
use serde_json::{json, Value};
use sha1::Sha1;
use tokio::task::JoinHandle;

mod voice;

pub use voice::{CallFate, CallSummary, Dialled, GatherSeen};

/// A form's parameters in the order given; a name may repeat.
pub type Form = Vec<(String, String)>;

/// The API version Twilio names in its webhooks.
const API_VERSION: &str = "2010-04-01";

/// How long Twilio waits for a webhook's answer (its default timeout for
/// fetching TwiML; it gives status callbacks no more).
const WEBHOOK_DEADLINE: Duration = Duration::from_secs(15);

/// One request herald made, as the fake read it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: &'static str,
    pub path: String,
    /// The form-encoded body, in order (empty for a `GET`).
    pub form: Form,
}

#[derive(Default)]
struct Log {
    requests: Vec<Recorded>,
    /// When each of `requests` came.
    times: Vec<std::time::Instant>,
    problems: Vec<String>,
    /// The Basic user of each request that authenticated.
    users: Vec<String>,
}

/// Where the fake's webhooks go.
#[derive(Clone, Default)]
struct Delivery {
    /// herald's public URL, which the URLs it gives begin with, and where
    /// the test's server is reached in its stead.
    mapping: Option<(String, String)>,
    /// The number's messaging webhook, which Twilio takes from the
    /// number's configuration, not from a request.
    inbound_url: Option<String>,
}

impl Delivery {
    /// Where a URL herald gave is reached from here: a URL under the public
    /// URL at the test's server, a loopback URL as it is; `None` for any
    /// other, which the fake never sends anything to.
    fn reach(&self, url: &str) -> Option<String> {
        if let Some((public_url, base)) = &self.mapping {
            if let Some(rest) = url.strip_prefix(public_url.as_str()) {
                return Some(format!("{base}{rest}"));
            }
        }
        let parsed = url::Url::parse(url).ok()?;
        let loopback = match parsed.host()? {
            url::Host::Domain(name) => name == "localhost",
            url::Host::Ipv4(ip) => ip.is_loopback(),
            url::Host::Ipv6(ip) => ip.is_loopback(),
        };
        (loopback && matches!(parsed.scheme(), "http" | "https")).then(|| url.to_owned())
    }
}

/// How the fake answers the next requests, and what it reports of messages.
#[derive(Default)]
struct Script {
    /// Answers for the next messages or calls, before any is taken: a
    /// status and a body.
    answers: VecDeque<(u16, Value)>,
    /// The statuses to report of messages to a number, in Twilio's words
    /// (`failed:30007` with its error code); without an entry, `sent`,
    /// `delivered`, and `read` on WhatsApp.
    statuses: HashMap<String, Vec<String>>,
    /// Take messages and report nothing of them.
    silent: bool,
}

struct Shared {
    account_sid: String,
    auth_token: String,
    /// The account's API keys: each key's SID and secret.
    api_keys: Mutex<Vec<(String, String)>>,
    log: Mutex<Log>,
    /// Answer every request 401, as for an auth token Twilio no longer has.
    refuse: Mutex<bool>,
    delivery: Mutex<Delivery>,
    script: Mutex<Script>,
    /// Every message taken: its SID and the form herald sent.
    messages: Mutex<Vec<(String, Form)>>,
    /// What herald answered to each inbound message: a status and a body.
    inbound_answers: Mutex<Vec<(u16, String)>>,
    /// The calls placed, and the people they reach.
    voice: voice::Voice,
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

    /// Notes each of `found`, as departures of `what`.
    fn problems(&self, what: &str, found: Vec<String>) {
        let mut log = lock(&self.log);
        log.problems
            .extend(found.into_iter().map(|p| format!("{what}: {p}")));
    }

    fn record(&self, method: &'static str, path: &str, form: &Form) {
        let mut log = lock(&self.log);
        log.requests.push(Recorded {
            method,
            path: path.to_owned(),
            form: form.clone(),
        });
        log.times.push(std::time::Instant::now());
    }

    /// The answer the test scripted for the next request that makes
    /// something (a message, a call), if it scripted one.
    fn scripted_answer(&self) -> Option<Response> {
        let (status, answer) = lock(&self.script).answers.pop_front()?;
        let status = StatusCode::from_u16(status).expect("a scripted status is one");
        Some((status, Json(answer)).into_response())
    }

    fn delivery(&self) -> Delivery {
        lock(&self.delivery).clone()
    }

    /// Checks a request's credentials as Twilio does: HTTP Basic, the
    /// account's SID and auth token or one of its API keys and that key's
    /// secret, and the same account in the path. False (and a 401 to
    /// answer) when they fail.
    fn authorised(&self, what: &str, headers: &HeaderMap, account: &str) -> bool {
        if *lock(&self.refuse) {
            return false;
        }
        let Some(encoded) = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
        else {
            self.problem(format!("{what}: no Authorization: Basic credentials"));
            return false;
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|raw| String::from_utf8(raw).ok());
        let Some((user, password)) = decoded.as_deref().and_then(|d| d.split_once(':')) else {
            self.problem(format!(
                "{what}: the Basic credentials are not base64 of user:password"
            ));
            return false;
        };
        let by_token = user == self.account_sid && password == self.auth_token;
        let by_key = lock(&self.api_keys)
            .iter()
            .any(|(key, secret)| user == key && password == secret);
        if !by_token && !by_key {
            self.problem(format!(
                "{what}: the credentials are {user}:…, neither the account's SID and auth \
                 token nor an API key and its secret"
            ));
            return false;
        }
        if account != self.account_sid {
            self.problem(format!(
                "{what}: the path names account {account}, not {}",
                self.account_sid
            ));
            return false;
        }
        lock(&self.log).users.push(user.to_owned());
        true
    }
}

/// Twilio's JSON body for an error: its code (`20429`, `21211`…), a
/// message, where it is explained, and the HTTP status.
pub fn twilio_error(status: u16, code: u32, message: &str) -> Value {
    json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status,
    })
}

fn error(status: u16, code: u32, message: &str) -> Response {
    let status_code = StatusCode::from_u16(status).expect("an HTTP status");
    (status_code, Json(twilio_error(status, code, message))).into_response()
}

/// Twilio's answer to credentials it does not accept.
fn unauthorised() -> Response {
    let mut response = error(401, 20003, "Authenticate");
    response.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"Twilio API\""),
    );
    response
}

fn not_found(path: &str) -> Response {
    error(
        404,
        20404,
        &format!("The requested resource {path} was not found"),
    )
}

/// A new SID: its two letters and 32 hex digits.
fn new_sid(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// Twilio's way of writing a time (RFC 2822, in UTC).
fn rfc2822(at: chrono::DateTime<chrono::Utc>) -> String {
    at.format("%a, %d %b %Y %H:%M:%S +0000").to_string()
}

/// The first value of parameter `name`.
fn first<'f>(form: &'f Form, name: &str) -> Option<&'f str> {
    form.iter()
        .find(|(n, _)| n == name)
        .map(|(_, value)| value.as_str())
}

fn has(form: &Form, name: &str) -> bool {
    form.iter().any(|(n, _)| n == name)
}

fn pairs(params: &[(&str, &str)]) -> Form {
    params
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

/// The signature Twilio puts in `X-Twilio-Signature`: HMAC-SHA1, keyed with
/// the auth token, of the full URL it requested (query and all) followed,
/// for a form POST, by each parameter as its name then its value, sorted by
/// name (values of a repeated name in the order given); in base64.
pub fn twilio_signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    // A stable sort, so that a repeated name keeps its values' order.
    sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut mac =
        Hmac::<Sha1>::new_from_slice(auth_token.as_bytes()).expect("HMAC takes a key of any size");
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// herald's answer to a webhook.
#[derive(Debug, Clone)]
struct Reply {
    status: u16,
    content_type: String,
    body: String,
}

/// Sends a webhook as Twilio does: a form POST (for `GET`, the parameters
/// in the query instead) signed over the URL as herald gave it (or with
/// `signature`), to where that URL is reached from here, waiting at most
/// `deadline` for the answer.
async fn send_webhook(
    shared: &Shared,
    url: &str,
    method: &str,
    params: &Form,
    signature: Option<&str>,
    deadline: Duration,
) -> Result<Reply, String> {
    let get = method == "GET";
    let encoded = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    let requested = match (get, encoded.is_empty()) {
        (true, false) if url.contains('?') => format!("{url}&{encoded}"),
        (true, false) => format!("{url}?{encoded}"),
        _ => url.to_owned(),
    };
    let signature = match signature {
        Some(signature) => signature.to_owned(),
        None if get => twilio_signature(&shared.auth_token, &requested, &[]),
        None => twilio_signature(&shared.auth_token, &requested, params),
    };
    let Some(reached) = shared.delivery().reach(&requested) else {
        return Err(format!(
            "{url} is neither under herald's public URL (deliver_to) nor on loopback"
        ));
    };
    let request = if get {
        shared.http.get(&reached)
    } else {
        shared
            .http
            .post(&reached)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(encoded)
    };
    let response = request
        .header("x-twilio-signature", signature)
        .header(
            "i-twilio-idempotency-token",
            uuid::Uuid::new_v4().to_string(),
        )
        .header(USER_AGENT, "TwilioProxy/1.1")
        .timeout(deadline)
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                format!("{url} did not answer within {deadline:?}")
            } else {
                format!("{url} could not be reached: {e}")
            }
        })?;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response
        .text()
        .await
        .map_err(|e| format!("{url}'s answer broke off: {e}"))?;
    Ok(Reply {
        status,
        content_type,
        body,
    })
}

/// Whether a content type is one Twilio reads TwiML from.
fn is_xml(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("text/xml") || essence.eq_ignore_ascii_case("application/xml")
}

/// A fake Twilio on 127.0.0.1; stops when dropped.
pub struct FakeTwilio {
    /// Its base URL, for `twilio_api_url`: requests go to
    /// `{url}/2010-04-01/Accounts/{AccountSid}/…`.
    pub url: String,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for FakeTwilio {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeTwilio {
    /// A fake of the Twilio account `account_sid` (`AC` and 32 hex digits),
    /// whose auth token is `auth_token`.
    pub async fn start(account_sid: &str, auth_token: &str) -> FakeTwilio {
        assert!(
            is_sid(account_sid, "AC"),
            "{account_sid:?} is no account SID: AC and 32 hex digits"
        );
        let shared = Arc::new(Shared {
            account_sid: account_sid.to_owned(),
            auth_token: auth_token.to_owned(),
            api_keys: Mutex::new(Vec::new()),
            log: Mutex::new(Log::default()),
            refuse: Mutex::new(false),
            delivery: Mutex::new(Delivery::default()),
            script: Mutex::new(Script::default()),
            messages: Mutex::new(Vec::new()),
            inbound_answers: Mutex::new(Vec::new()),
            voice: voice::Voice::default(),
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
        FakeTwilio { url, shared, task }
    }

    /// Gives the account an API key (`SK` and 32 hex digits), which
    /// requests may authenticate with as they may with the auth token.
    pub fn add_api_key(&self, sid: &str, secret: &str) {
        assert!(is_sid(sid, "SK"), "{sid:?} is no API key SID");
        lock(&self.shared.api_keys).push((sid.to_owned(), secret.to_owned()));
    }

    /// Who each request that authenticated did so as (the Basic user: the
    /// account SID or an API key's SID), in order.
    pub fn authenticated_as(&self) -> Vec<String> {
        lock(&self.shared.log).users.clone()
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

    /// From now on, refuse (or again accept) every request's credentials,
    /// as Twilio does once the auth token is rotated.
    pub fn refuse_credentials(&self, refuse: bool) {
        *lock(&self.shared.refuse) = refuse;
    }

    /// Where the webhooks go: a URL herald gives that begins with
    /// `public_url` is posted to `base` (where the test's server listens)
    /// followed by the rest, signed over the URL as herald gave it.
    pub fn deliver_to(&self, public_url: &str, base: &str) {
        lock(&self.shared.delivery).mapping = Some((
            public_url.trim_end_matches('/').to_owned(),
            base.trim_end_matches('/').to_owned(),
        ));
    }

    /// The number's messaging webhook (herald's `message_inbound`, as it
    /// shows it), where people's messages are posted: Twilio takes it from
    /// the number's configuration.
    pub fn inbound_webhook(&self, url: &str) {
        lock(&self.shared.delivery).inbound_url = Some(url.to_owned());
    }

    /// Answers the next message or call with `status` and `body` (429 with
    /// code 20429, 400 with 21211…; see [`twilio_error`]), taking nothing;
    /// requests after it are answered as before.
    pub fn answer_next(&self, status: u16, body: Value) {
        self.script().answers.push_back((status, body));
    }

    /// Reports these statuses of every message to `to` (with or without its
    /// `whatsapp:`), in Twilio's words: `sent`, `delivered`, `read`,
    /// `undelivered`, `failed`; `failed:30007` carries that `ErrorCode`
    /// (30008, unknown, without one).
    pub fn report_for(&self, to: &str, statuses: &[&str]) {
        // Keyed by the digits alone, however the test or herald spells them.
        let digits = to.trim_start_matches("whatsapp:").trim_start_matches('+');
        self.script().statuses.insert(
            digits.to_owned(),
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

    /// Every message taken: its SID and the form herald sent.
    pub fn messages(&self) -> Vec<(String, Form)> {
        lock(&self.shared.messages).clone()
    }

    /// Waits until `n` messages have been taken (10 s at most).
    pub async fn wait_for_messages(&self, n: usize) -> Vec<(String, Form)> {
        for _ in 0..400 {
            let messages = self.messages();
            if messages.len() >= n {
                return messages;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("Twilio took {} messages, not {n}", self.messages().len());
    }

    fn message(&self, sid: &str) -> Form {
        self.messages()
            .into_iter()
            .find(|(s, _)| s == sid)
            .map(|(_, form)| form)
            .unwrap_or_else(|| panic!("{sid} is not a message the fake took"))
    }

    /// A status callback of a message taken, as Twilio posts it (`status`
    /// as in [`FakeTwilio::report_for`]).
    pub fn status_report(&self, sid: &str, status: &str) -> Form {
        status_params(&self.shared.account_sid, sid, &self.message(sid), status)
    }

    /// Posts `params` to the `StatusCallback` of the message they name
    /// (`MessageSid`), signed; the answer's status (0 when there was none).
    pub async fn post_status(&self, params: &Form) -> u16 {
        let sid = first(params, "MessageSid").expect("a status callback names its MessageSid");
        let form = self.message(sid);
        let url = first(&form, "StatusCallback").expect("the message has a StatusCallback");
        self.post_webhook(url, params, None).await.0
    }

    /// What Twilio posts when `from` writes `text` to the number `to`
    /// (both `whatsapp:+…` for WhatsApp): a new `MessageSid` and the rest.
    pub fn inbound_params(&self, from: &str, to: &str, text: &str) -> Form {
        let sid = new_sid("SM");
        let mut params = pairs(&[
            ("MessageSid", &sid),
            ("SmsMessageSid", &sid),
            ("SmsSid", &sid),
            ("AccountSid", &self.shared.account_sid),
            ("From", from),
            ("To", to),
            ("Body", text),
            ("NumMedia", "0"),
            ("NumSegments", "1"),
            ("SmsStatus", "received"),
            ("ApiVersion", API_VERSION),
        ]);
        if let Some(number) = from.strip_prefix("whatsapp:") {
            params.extend(pairs(&[
                ("ProfileName", "Ada"),
                ("WaId", number.trim_start_matches('+')),
                ("MessageType", "text"),
            ]));
        }
        params
    }

    /// Posts a person's message to the messaging webhook, as Twilio does
    /// when `from` writes to the agent's number `to`; the answer's status
    /// and the message's SID.
    pub async fn send_inbound(&self, from: &str, to: &str, text: &str) -> (u16, String) {
        let params = self.inbound_params(from, to, text);
        let sid = first(&params, "MessageSid").unwrap_or_default().to_owned();
        (self.post_inbound(&params).await, sid)
    }

    /// Posts a person's tap on a WhatsApp quick-reply button (`text`
    /// shown, `payload` given by the template); the answer's status and the
    /// message's SID.
    pub async fn send_button_reply(
        &self,
        from: &str,
        to: &str,
        text: &str,
        payload: &str,
    ) -> (u16, String) {
        let mut params = self.inbound_params(from, to, text);
        params.retain(|(name, _)| name != "MessageType");
        params.extend(pairs(&[
            ("MessageType", "button"),
            ("ButtonText", text),
            ("ButtonPayload", payload),
        ]));
        let sid = first(&params, "MessageSid").unwrap_or_default().to_owned();
        (self.post_inbound(&params).await, sid)
    }

    /// Posts `params` to the messaging webhook, signed; the answer's status
    /// (0 when there was none). herald's answer is kept
    /// ([`FakeTwilio::inbound_answers`]) and checked: Twilio reads it as
    /// TwiML, so it is empty or an empty `<Response/>`.
    pub async fn post_inbound(&self, params: &Form) -> u16 {
        let url = self
            .shared
            .delivery()
            .inbound_url
            .expect("inbound_webhook names the messaging webhook first");
        let reply = send_webhook(&self.shared, &url, "POST", params, None, WEBHOOK_DEADLINE).await;
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) => {
                self.shared.problem(format!("the messaging webhook: {e}"));
                return 0;
            }
        };
        self.shared
            .problems("the messaging webhook's answer", check_reply(&reply));
        lock(&self.shared.inbound_answers).push((reply.status, reply.body.clone()));
        reply.status
    }

    /// What herald answered to each inbound message: its status and body.
    pub fn inbound_answers(&self) -> Vec<(u16, String)> {
        lock(&self.shared.inbound_answers).clone()
    }

    /// Posts `params` to herald's webhook at `url` (as herald gave it: under
    /// its public URL), signed, or with `signature_override` as the
    /// signature; the answer's status and body (0 and nothing when there
    /// was none).
    pub async fn post_webhook(
        &self,
        url: &str,
        params: &Form,
        signature_override: Option<&str>,
    ) -> (u16, String) {
        match send_webhook(
            &self.shared,
            url,
            "POST",
            params,
            signature_override,
            WEBHOOK_DEADLINE,
        )
        .await
        {
            Ok(reply) => (reply.status, reply.body),
            Err(_) => (0, String::new()),
        }
    }
}

/// Checks herald's answer to an inbound message: Twilio reads a 2xx
/// answer's body as TwiML, and herald replies through the API, so the body
/// is empty or `<Response/>`.
fn check_reply(reply: &Reply) -> Vec<String> {
    if !(200..300).contains(&reply.status) || reply.body.trim().is_empty() {
        return Vec::new();
    }
    let mut problems = Vec::new();
    if !is_xml(&reply.content_type) {
        problems.push(format!(
            "a body sent as {:?}, not as XML",
            reply.content_type
        ));
    }
    match voice::parse_xml(&reply.body) {
        Ok(root) if root.name == "Response" && root.is_empty() => {}
        Ok(root) if root.name == "Response" => problems.push(format!(
            "{:?} has verbs, which the fake does not play (herald sends through the API)",
            reply.body
        )),
        Ok(_) | Err(_) => problems.push(format!("{:?} is not a TwiML <Response>", reply.body)),
    }
    problems
}

/// What a parameter's value must be.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Text,
    /// Text of at most this many characters.
    Short(usize),
    Integer,
    /// A whole number in this range.
    Within(i64, i64),
    Decimal,
    Boolean,
    /// An absolute http(s) URL with a host (one without underscores).
    Url,
    HttpMethod,
    OneOf(&'static [&'static str]),
    /// A SID: these two letters and 32 hex digits.
    Sid(&'static str),
    /// A message's recipient: `+E164` or `whatsapp:+E164`.
    Address,
    /// A message's sender: an address, a short code or an alphanumeric
    /// sender ID.
    Sender,
    /// A call's callee: `+E164` or a `sip:` URI.
    Callee,
    /// A call's caller ID: `+E164` or a `sip:` URI.
    CallerId,
    /// An ISO 8601 date and time.
    DateTime,
    /// A JSON object of text values.
    JsonObject,
    /// A TwiML document of at most 4000 characters.
    Twiml,
}

/// A parameter of a request: its name, its kind, and whether it may be
/// given more than once (an array of the specification).
#[derive(Debug, Clone, Copy)]
struct Param {
    name: &'static str,
    kind: Kind,
    repeats: bool,
}

const fn once(name: &'static str, kind: Kind) -> Param {
    Param {
        name,
        kind,
        repeats: false,
    }
}

const fn many(name: &'static str, kind: Kind) -> Param {
    Param {
        name,
        kind,
        repeats: true,
    }
}

fn is_sid(value: &str, prefix: &str) -> bool {
    value.len() == 34
        && value.starts_with(prefix)
        && value[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// `+` and 7 to 15 digits, the first not 0.
fn is_e164(value: &str) -> bool {
    value.strip_prefix('+').is_some_and(|digits| {
        (7..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0')
    })
}

fn is_address(value: &str) -> bool {
    is_e164(value.strip_prefix("whatsapp:").unwrap_or(value))
}

fn is_sip_uri(value: &str) -> bool {
    value
        .strip_prefix("sip:")
        .is_some_and(|rest| rest.len() > 2 && !rest.contains(char::is_whitespace))
}

/// An absolute http(s) URL with a host, which Twilio can call.
fn is_callable_url(value: &str) -> bool {
    url::Url::parse(value).is_ok_and(|url| {
        matches!(url.scheme(), "http" | "https")
            && url
                .host_str()
                .is_some_and(|host| !host.is_empty() && !host.contains('_'))
    })
}

/// Checks one value against its kind; `Err` says what it should be.
fn check_value(kind: Kind, value: &str) -> Result<(), String> {
    let fits = match kind {
        Kind::Text => true,
        Kind::Short(max) => value.chars().count() <= max,
        Kind::Integer => value.parse::<i64>().is_ok(),
        Kind::Within(min, max) => value.parse::<i64>().is_ok_and(|n| (min..=max).contains(&n)),
        Kind::Decimal => value.parse::<f64>().is_ok_and(f64::is_finite),
        Kind::Boolean => matches!(value, "true" | "false"),
        Kind::Url => is_callable_url(value),
        Kind::HttpMethod => matches!(value, "GET" | "POST"),
        Kind::OneOf(words) => words.contains(&value),
        Kind::Sid(prefix) => is_sid(value, prefix),
        Kind::Address => is_address(value),
        Kind::Sender => {
            is_address(value)
                // A short code.
                || ((3..=8).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_digit()))
                // An alphanumeric sender ID.
                || ((1..=11).contains(&value.len())
                    && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b' ')
                    && value.bytes().any(|b| b.is_ascii_alphabetic()))
        }
        Kind::Callee => is_e164(value) || is_sip_uri(value),
        Kind::CallerId => is_e164(value) || is_sip_uri(value),
        Kind::DateTime => chrono::DateTime::parse_from_rfc3339(value).is_ok(),
        Kind::JsonObject => serde_json::from_str::<Value>(value).is_ok_and(|v| {
            v.as_object()
                .is_some_and(|o| o.values().all(Value::is_string))
        }),
        Kind::Twiml => {
            if value.chars().count() > 4000 {
                return Err("a TwiML document of at most 4000 characters".into());
            }
            return match voice::read_twiml(value) {
                Ok((_, problems)) if problems.is_empty() => Ok(()),
                Ok((_, problems)) => Err(format!(
                    "TwiML as Twilio reads it ({})",
                    problems.join("; ")
                )),
                Err(e) => Err(format!("a TwiML document ({e})")),
            };
        }
    };
    if fits {
        return Ok(());
    }
    Err(match kind {
        Kind::Text => unreachable!("any text fits"),
        Kind::Short(max) => format!("text of at most {max} characters"),
        Kind::Integer => "a whole number".into(),
        Kind::Within(min, max) => format!("a whole number from {min} to {max}"),
        Kind::Decimal => "a number".into(),
        Kind::Boolean => "true or false".into(),
        Kind::Url => "an absolute http(s) URL whose host has no underscore".into(),
        Kind::HttpMethod => "GET or POST".into(),
        Kind::OneOf(words) => format!("one of {}", words.join(", ")),
        Kind::Sid(prefix) => format!("{prefix} and 32 hex digits"),
        Kind::Address => "+E164 or whatsapp:+E164".into(),
        Kind::Sender => "+E164, whatsapp:+E164, a short code or an alphanumeric sender ID".into(),
        Kind::Callee | Kind::CallerId => "+E164 or a sip: URI".into(),
        Kind::DateTime => "an ISO 8601 date and time".into(),
        Kind::JsonObject => "a JSON object of strings".into(),
        Kind::Twiml => unreachable!("said above"),
    })
}

/// Checks a form's parameters against a request's: each known, given once
/// unless it is an array, and of its kind.
fn check_params(form: &Form, params: &[Param]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for (name, value) in form {
        let Some(param) = params.iter().find(|p| p.name == name) else {
            problems.push(format!("unknown parameter {name}"));
            continue;
        };
        if !param.repeats && seen.contains(&name.as_str()) {
            problems.push(format!("{name} is given more than once"));
        }
        seen.push(name);
        if let Err(expected) = check_value(param.kind, value) {
            problems.push(format!("{name} {value:?} is not {expected}"));
        }
    }
    problems
}

/// `CreateMessageRequest`'s parameters.
const MESSAGE_PARAMS: &[Param] = &[
    once("To", Kind::Address),
    once("From", Kind::Sender),
    once("MessagingServiceSid", Kind::Sid("MG")),
    once("Body", Kind::Short(1600)),
    many("MediaUrl", Kind::Url),
    once("ContentSid", Kind::Sid("HX")),
    once("ContentVariables", Kind::JsonObject),
    once("StatusCallback", Kind::Url),
    once("ApplicationSid", Kind::Sid("AP")),
    once("MaxPrice", Kind::Decimal),
    once("ProvideFeedback", Kind::Boolean),
    once("Attempt", Kind::Integer),
    once("ValidityPeriod", Kind::Within(1, 36000)),
    once("ForceDelivery", Kind::Boolean),
    once("ContentRetention", Kind::OneOf(&["retain", "discard"])),
    once("AddressRetention", Kind::OneOf(&["retain", "obfuscate"])),
    once("SmartEncoded", Kind::Boolean),
    many("PersistentAction", Kind::Text),
    once("TrafficType", Kind::OneOf(&["free"])),
    once("ShortenUrls", Kind::Boolean),
    once("ScheduleType", Kind::OneOf(&["fixed"])),
    once("SendAt", Kind::DateTime),
    once("SendAsMms", Kind::Boolean),
    once("RiskCheck", Kind::OneOf(&["enable", "disable"])),
    once("FallbackFrom", Kind::Sender),
];

/// Checks a send's form against the specification: its parameters, and
/// the rules between them that the parameters' descriptions give.
fn check_message(form: &Form) -> Vec<String> {
    let mut problems = check_params(form, MESSAGE_PARAMS);
    let given = |name: &str| has(form, name);
    if !given("To") {
        problems.push("To is required".into());
    }
    if !given("From") && !given("MessagingServiceSid") {
        problems.push("neither From nor MessagingServiceSid: the message has no sender".into());
    }
    let (body, media, content) = (given("Body"), given("MediaUrl"), given("ContentSid"));
    if !body && !media && !content {
        problems.push("none of Body, MediaUrl and ContentSid: the message has no content".into());
    }
    if content && (body || media) {
        problems.push(
            "ContentSid with Body or MediaUrl: a content template is the whole message".into(),
        );
    }
    if body && !media && first(form, "Body") == Some("") {
        problems.push("Body is empty".into());
    }
    if media && form.iter().filter(|(n, _)| n == "MediaUrl").count() > 10 {
        problems.push("more than 10 MediaUrl".into());
    }
    if given("ContentVariables") && !content {
        problems.push("ContentVariables without ContentSid".into());
    }
    if let (Some(to), Some(from)) = (first(form, "To"), first(form, "From")) {
        if to.starts_with("whatsapp:") != from.starts_with("whatsapp:") {
            problems.push(format!(
                "To {to:?} and From {from:?} are not on the same channel"
            ));
        }
    }
    if given("ShortenUrls") && !given("MessagingServiceSid") {
        problems.push("ShortenUrls without MessagingServiceSid".into());
    }
    if given("ScheduleType") != given("SendAt")
        || (given("SendAt") && !given("MessagingServiceSid"))
    {
        problems.push(
            "a scheduled message takes ScheduleType, SendAt and MessagingServiceSid together"
                .into(),
        );
    }
    problems
}

/// Twilio's refusal of a send it cannot make sense of.
fn message_refusal(form: &Form) -> Option<Response> {
    if !has(form, "To") {
        return Some(error(400, 21604, "A 'To' phone number is required."));
    }
    if !has(form, "From") && !has(form, "MessagingServiceSid") {
        return Some(error(400, 21603, "A 'From' phone number is required."));
    }
    if !["Body", "MediaUrl", "ContentSid"]
        .iter()
        .any(|name| has(form, name))
    {
        return Some(error(400, 21602, "Message body is required."));
    }
    None
}

/// The message resource (`api.v2010.account.message`) of a message taken.
fn message_resource(account_sid: &str, sid: &str, form: &Form) -> Value {
    let now = rfc2822(chrono::Utc::now());
    let body = first(form, "Body").unwrap_or_default();
    let characters = body.chars().count();
    let segments = if characters <= 160 {
        1
    } else {
        characters.div_ceil(153)
    };
    let status = if has(form, "ScheduleType") {
        "scheduled"
    } else if !has(form, "From") {
        "accepted"
    } else {
        "queued"
    };
    let uri = format!("/2010-04-01/Accounts/{account_sid}/Messages/{sid}");
    json!({
        "account_sid": account_sid,
        "api_version": API_VERSION,
        "body": body,
        "date_created": now,
        "date_sent": null,
        "date_updated": now,
        "direction": "outbound-api",
        "error_code": null,
        "error_message": null,
        "from": first(form, "From"),
        "messaging_service_sid": first(form, "MessagingServiceSid"),
        "num_media": form.iter().filter(|(n, _)| n == "MediaUrl").count().to_string(),
        "num_segments": segments.to_string(),
        "price": null,
        "price_unit": "USD",
        "sid": sid,
        "status": status,
        "subresource_uris": {
            "media": format!("{uri}/Media.json"),
            "feedback": format!("{uri}/Feedback.json"),
        },
        "to": first(form, "To"),
        "uri": format!("{uri}.json"),
    })
}

/// A message status callback's parameters, for `status` as scripted
/// (`failed:30007`).
fn status_params(account_sid: &str, sid: &str, form: &Form, status: &str) -> Form {
    let (status, code) = match status.split_once(':') {
        Some((status, code)) => (status, Some(code)),
        None => (status, None),
    };
    let mut params = pairs(&[
        ("MessageSid", sid),
        ("SmsSid", sid),
        ("AccountSid", account_sid),
    ]);
    for name in ["From", "To", "MessagingServiceSid"] {
        if let Some(value) = first(form, name) {
            params.push((name.to_owned(), value.to_owned()));
        }
    }
    params.extend(pairs(&[
        ("MessageStatus", status),
        ("SmsStatus", status),
        ("ApiVersion", API_VERSION),
    ]));
    if matches!(status, "failed" | "undelivered") {
        params.push(("ErrorCode".into(), code.unwrap_or("30008").to_owned()));
    }
    params
}

/// Reads a request's form-encoded body, noting one sent otherwise.
fn read_form(shared: &Shared, what: &str, headers: &HeaderMap, body: &[u8]) -> Form {
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !content_type.starts_with("application/x-www-form-urlencoded") {
        shared.problem(format!(
            "{what}: the body is sent as {content_type:?}, not application/x-www-form-urlencoded"
        ));
    }
    url::form_urlencoded::parse(body).into_owned().collect()
}

/// Every request: `/2010-04-01/Accounts/{AccountSid}/…` routed by hand, as
/// the resources' names end in `.json` within a path segment.
async fn api(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let segments: Vec<&str> = path
        .strip_prefix("/2010-04-01/Accounts/")
        .map(|rest| rest.split('/').collect())
        .unwrap_or_default();
    match (method.as_str(), segments.as_slice()) {
        ("GET", [account]) if account.ends_with(".json") => {
            fetch_account(&shared, &path, account.trim_end_matches(".json"), &headers)
        }
        ("POST", [account, "Messages.json"]) => {
            create_message(&shared, &path, account, &headers, &body)
        }
        ("POST", [account, "Calls.json"]) => {
            voice::create_call(&shared, &path, account, &headers, &body)
        }
        ("POST", [account, "Calls", call]) if call.ends_with(".json") => voice::update_call(
            &shared,
            &path,
            account,
            call.trim_end_matches(".json"),
            &headers,
            &body,
        ),
        ("GET", [account, "Calls", call]) if call.ends_with(".json") => voice::fetch_call(
            &shared,
            &path,
            account,
            call.trim_end_matches(".json"),
            &headers,
        ),
        _ => {
            shared.problem(format!(
                "a request to {method} {uri}, which Twilio does not have or herald has no use for"
            ));
            not_found(&path)
        }
    }
}

/// `GET /2010-04-01/Accounts/{Sid}.json` (FetchAccount): the account, as
/// a check of the credentials.
fn fetch_account(shared: &Arc<Shared>, path: &str, account: &str, headers: &HeaderMap) -> Response {
    let what = "GET /Accounts/{Sid}.json";
    shared.record("GET", path, &Vec::new());
    if !shared.authorised(what, headers, account) {
        return unauthorised();
    }
    let sid = &shared.account_sid;
    let created = rfc2822(chrono::Utc::now() - chrono::Duration::days(400));
    Json(json!({
        "auth_token": shared.auth_token,
        "date_created": created,
        "date_updated": created,
        "friendly_name": "herald's tests",
        "owner_account_sid": sid,
        "sid": sid,
        "status": "active",
        "subresource_uris": {
            "calls": format!("/2010-04-01/Accounts/{sid}/Calls.json"),
            "messages": format!("/2010-04-01/Accounts/{sid}/Messages.json"),
        },
        "type": "Full",
        "uri": format!("/2010-04-01/Accounts/{sid}.json"),
    }))
    .into_response()
}

/// `POST …/Messages.json` (CreateMessage): takes a message (201 and its
/// resource) and reports its statuses; or answers as the script says.
fn create_message(
    shared: &Arc<Shared>,
    path: &str,
    account: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let what = "POST /Messages.json";
    let form = read_form(shared, what, headers, body);
    shared.problems(what, check_message(&form));
    shared.record("POST", path, &form);
    if !shared.authorised(what, headers, account) {
        return unauthorised();
    }
    if let Some(answer) = shared.scripted_answer() {
        return answer;
    }
    if let Some(refusal) = message_refusal(&form) {
        return refusal;
    }
    let sid = new_sid("SM");
    lock(&shared.messages).push((sid.clone(), form.clone()));
    let statuses = {
        let script = lock(&shared.script);
        let to = first(&form, "To").unwrap_or_default();
        if script.silent {
            Vec::new()
        } else {
            script
                .statuses
                .get(to.trim_start_matches("whatsapp:").trim_start_matches('+'))
                .cloned()
                .unwrap_or_else(|| {
                    let mut all = vec!["sent".to_owned(), "delivered".to_owned()];
                    if to.starts_with("whatsapp:") {
                        all.push("read".to_owned());
                    }
                    all
                })
        }
    };
    let resource = message_resource(&shared.account_sid, &sid, &form);
    if let (Some(callback), false) = (first(&form, "StatusCallback"), statuses.is_empty()) {
        let shared = shared.clone();
        let callback = callback.to_owned();
        let sid = sid.clone();
        // After the answer, as Twilio does: in order, each once the one
        // before it was taken.
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            for status in statuses {
                let params = status_params(&shared.account_sid, &sid, &form, &status);
                let reply =
                    send_webhook(&shared, &callback, "POST", &params, None, WEBHOOK_DEADLINE).await;
                match reply {
                    Ok(reply) if (200..300).contains(&reply.status) => {}
                    Ok(reply) => shared.problem(format!(
                        "the status callback answered {} to {status} of {sid}",
                        reply.status
                    )),
                    Err(e) => shared.problem(format!("the status callback of {sid}: {e}")),
                }
            }
        });
    }
    (StatusCode::CREATED, Json(resource)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
    const TOKEN: &str = "12345-auth-token";

    #[test]
    fn signs_as_twilio_does() {
        // The expected values come from Python's hmac, not from this code:
        //   python3 -c "import hmac,hashlib,base64
        //   url='https://herald.example.com/providers/c1/message_status?attempt=1'
        //   p=[('To','+447700900123'),('MessageStatus','delivered'),
        //      ('AccountSid','AC0123456789abcdef0123456789abcdef'),
        //      ('MessageSid','SM0123456789abcdef0123456789abcdef'),
        //      ('From','+447700900999'),('ApiVersion','2010-04-01')]
        //   s=url+''.join(k+v for k,v in sorted(p,key=lambda x:x[0]))
        //   print(base64.b64encode(hmac.new(b'12345-auth-token',s.encode(),
        //         hashlib.sha1).digest()).decode())"
        let params = pairs(&[
            ("To", "+447700900123"),
            ("MessageStatus", "delivered"),
            ("AccountSid", ACCOUNT),
            ("MessageSid", "SM0123456789abcdef0123456789abcdef"),
            ("From", "+447700900999"),
            ("ApiVersion", "2010-04-01"),
        ]);
        assert_eq!(
            twilio_signature(
                TOKEN,
                "https://herald.example.com/providers/c1/message_status?attempt=1",
                &params
            ),
            "dFFjp9Zk7TLINKRb1YZmYHWmUaw="
        );
        // A repeated name keeps its values in the order given ("azayb2"
        // after the URL, in the same Python with p=[('b','2'),('a','z'),
        // ('a','y')] and the key b'tok').
        let repeated = pairs(&[("b", "2"), ("a", "z"), ("a", "y")]);
        assert_eq!(
            twilio_signature("tok", "https://x.example/cb", &repeated),
            "+MwaAGCToHjwvEB5D1hdJcKav/g="
        );
        // A GET is signed over its URL alone.
        assert_eq!(
            twilio_signature(
                "12345",
                "https://mycompany.com/myapp.php?foo=1&bar=2",
                &pairs(&[
                    ("CallSid", "CA1234567890ABCDE"),
                    ("Caller", "+12349013030"),
                    ("Digits", "1234"),
                    ("From", "+12349013030"),
                    ("To", "+18005551212"),
                ])
            ),
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        );
    }

    #[test]
    fn a_good_message_passes_the_checks() {
        let sms = pairs(&[
            ("To", "+447700900123"),
            ("From", "+447700900999"),
            ("Body", "Your table is booked"),
            (
                "StatusCallback",
                "https://herald.example.com/providers/c1/message_status",
            ),
        ]);
        assert_eq!(check_message(&sms), Vec::<String>::new());
        let template = pairs(&[
            ("To", "whatsapp:+447700900123"),
            ("From", "whatsapp:+447700900999"),
            ("ContentSid", "HX0123456789abcdef0123456789abcdef"),
            ("ContentVariables", r#"{"1":"Ada","2":"7pm"}"#),
        ]);
        assert_eq!(check_message(&template), Vec::<String>::new());
    }

    #[test]
    fn a_bad_message_is_a_problem() {
        let form = pairs(&[
            ("To", "07700900123"),
            ("From", "whatsapp:+447700900999"),
            ("Body", "hello"),
            ("ContentVariables", "[1, 2]"),
            ("StatusCallback", "/relative"),
            ("Colour", "blue"),
        ]);
        let problems = check_message(&form);
        for expected in [
            "To \"07700900123\" is not +E164 or whatsapp:+E164",
            "ContentVariables \"[1, 2]\" is not a JSON object of strings",
            "StatusCallback \"/relative\" is not an absolute http(s) URL whose host has no underscore",
            "unknown parameter Colour",
            "ContentVariables without ContentSid",
            "To \"07700900123\" and From \"whatsapp:+447700900999\" are not on the same channel",
        ] {
            assert!(
                problems.iter().any(|p| p == expected),
                "{expected:?} is not among {problems:#?}"
            );
        }
        let empty = pairs(&[("To", "+447700900123"), ("From", "+447700900999")]);
        assert_eq!(
            check_message(&empty),
            ["none of Body, MediaUrl and ContentSid: the message has no content"]
        );
    }

    #[test]
    fn a_status_callback_says_what_twilio_says() {
        let form = pairs(&[
            ("To", "whatsapp:+447700900123"),
            ("From", "whatsapp:+447700900999"),
            ("Body", "hi"),
        ]);
        let sid = "SM0123456789abcdef0123456789abcdef";
        let failed = status_params(ACCOUNT, sid, &form, "undelivered:63016");
        assert_eq!(first(&failed, "MessageStatus"), Some("undelivered"));
        assert_eq!(first(&failed, "SmsStatus"), Some("undelivered"));
        assert_eq!(first(&failed, "ErrorCode"), Some("63016"));
        assert_eq!(first(&failed, "To"), Some("whatsapp:+447700900123"));
        assert_eq!(first(&failed, "ApiVersion"), Some("2010-04-01"));
        let read = status_params(ACCOUNT, sid, &form, "read");
        assert_eq!(first(&read, "ErrorCode"), None);
    }

    /// A stand-in for herald: answers TwiML and keeps every webhook, each
    /// checked against its signature over the public URL.
    struct Receiver {
        base: String,
        seen: Arc<Mutex<Vec<(String, Form, bool)>>>,
        task: JoinHandle<()>,
    }

    impl Drop for Receiver {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    const PUBLIC_URL: &str = "https://herald.example.com";

    async fn receiver() -> Receiver {
        let seen: Arc<Mutex<Vec<(String, Form, bool)>>> = Arc::default();
        let kept = seen.clone();
        let app = Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
            let kept = kept.clone();
            async move {
                let form: Form = url::form_urlencoded::parse(&body).into_owned().collect();
                let url = format!("{PUBLIC_URL}{uri}");
                let signed = headers
                    .get("x-twilio-signature")
                    .and_then(|v| v.to_str().ok())
                    == Some(twilio_signature(TOKEN, &url, &form).as_str());
                lock(&kept).push((uri.path().to_owned(), form.clone(), signed));
                let twiml = match uri.path() {
                    "/voice" => {
                        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response>\
                         <Say voice=\"Polly.Amy\" language=\"en-GB\">Hello &amp; welcome</Say>\
                         <Gather input=\"dtmf speech\" action=\"/gathered\" timeout=\"3\" numDigits=\"1\">\
                         <Say>Press 4 or say yes</Say></Gather>\
                         <Redirect>/voice</Redirect></Response>"
                    }
                    "/wait" => {
                        "<Response><Gather timeout=\"10\"><Say>Say something</Say></Gather></Response>"
                    }
                    "/gathered" if first(&form, "Digits") == Some("4") => {
                        "<Response><Say>Thanks</Say><Dial><Number>+447700900555</Number></Dial></Response>"
                    }
                    _ => "<Response/>",
                };
                ([(CONTENT_TYPE, "text/xml")], twiml)
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { base, seen, task }
    }

    #[tokio::test]
    async fn takes_a_message_and_reports_its_statuses_signed() {
        let twilio = FakeTwilio::start(ACCOUNT, TOKEN).await;
        let herald = receiver().await;
        twilio.deliver_to(PUBLIC_URL, &herald.base);
        twilio.report_for("+447700900123", &["sent", "failed:30007"]);
        let response = reqwest::Client::new()
            .post(format!(
                "{}/2010-04-01/Accounts/{ACCOUNT}/Messages.json",
                twilio.url
            ))
            .basic_auth(ACCOUNT, Some(TOKEN))
            .form(&[
                ("To", "+447700900123"),
                ("From", "+447700900999"),
                ("Body", "Your table is booked"),
                ("StatusCallback", "https://herald.example.com/status?c=1"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let resource: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        assert_eq!(resource["status"], "queued");
        let sid = resource["sid"].as_str().unwrap().to_owned();
        assert!(is_sid(&sid, "SM"), "{sid}");
        for _ in 0..200 {
            if lock(&herald.seen).len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let seen = lock(&herald.seen).clone();
        let statuses: Vec<_> = seen
            .iter()
            .map(|(path, form, signed)| {
                assert_eq!(path, "/status");
                assert!(signed, "{form:?} is not signed over the public URL");
                assert_eq!(first(form, "MessageSid"), Some(sid.as_str()));
                (
                    first(form, "MessageStatus").unwrap().to_owned(),
                    first(form, "ErrorCode").map(str::to_owned),
                )
            })
            .collect();
        assert_eq!(
            statuses,
            [
                ("sent".into(), None),
                ("failed".into(), Some("30007".into()))
            ]
        );
        assert_eq!(twilio.problems(), Vec::<String>::new());
        assert_eq!(
            twilio
                .times_of(
                    "POST",
                    &format!("/2010-04-01/Accounts/{ACCOUNT}/Messages.json")
                )
                .len(),
            1
        );

        // Wrong credentials: 401 in Twilio's shape, and a problem.
        let refused = reqwest::Client::new()
            .post(format!(
                "{}/2010-04-01/Accounts/{ACCOUNT}/Messages.json",
                twilio.url
            ))
            .basic_auth(ACCOUNT, Some("not-the-token"))
            .form(&[
                ("To", "+447700900123"),
                ("From", "+447700900999"),
                ("Body", "x"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 401);
        let body: Value = serde_json::from_str(&refused.text().await.unwrap()).unwrap();
        assert_eq!(body["code"], 20003);
        assert_eq!(twilio.problems().len(), 1, "{:?}", twilio.problems());
    }

    #[tokio::test]
    async fn plays_a_call_with_the_test_as_the_person() {
        let twilio = FakeTwilio::start(ACCOUNT, TOKEN).await;
        let herald = receiver().await;
        twilio.deliver_to(PUBLIC_URL, &herald.base);
        twilio.person_answers("+447700900123", "4");
        let response = reqwest::Client::new()
            .post(format!(
                "{}/2010-04-01/Accounts/{ACCOUNT}/Calls.json",
                twilio.url
            ))
            .basic_auth(ACCOUNT, Some(TOKEN))
            .form(&[
                ("To", "+447700900123"),
                ("From", "+447700900999"),
                ("Url", "https://herald.example.com/voice"),
                ("StatusCallback", "https://herald.example.com/call_status"),
                ("StatusCallbackEvent", "initiated"),
                ("StatusCallbackEvent", "ringing"),
                ("StatusCallbackEvent", "answered"),
                ("StatusCallbackEvent", "completed"),
                ("MachineDetection", "Enable"),
                ("Timeout", "30"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let resource: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        assert_eq!(resource["status"], "queued");
        let calls = twilio.wait_for_calls_to_end("+447700900123").await;
        assert_eq!(twilio.problems(), Vec::<String>::new());
        let call = &calls[0];
        assert_eq!(call.sid, resource["sid"]);
        assert_eq!(
            call.said,
            ["Hello & welcome", "Press 4 or say yes", "Thanks"]
        );
        assert_eq!(call.gathers.len(), 1);
        assert_eq!(call.gathers[0].answer.as_deref(), Some("4"));
        assert_eq!(call.dialled, Some(Dialled::Number("+447700900555".into())));
        assert_eq!(call.status, "completed");
        assert_eq!(call.answered_by.as_deref(), Some("human"));

        let seen = lock(&herald.seen).clone();
        assert!(seen.iter().all(|(_, _, signed)| *signed), "{seen:#?}");
        let progress: Vec<_> = seen
            .iter()
            .filter(|(path, _, _)| path == "/call_status")
            .map(|(_, form, _)| {
                (
                    first(form, "SequenceNumber").unwrap().to_owned(),
                    first(form, "CallStatus").unwrap().to_owned(),
                )
            })
            .collect();
        let expected: Vec<(String, String)> = [
            ("0", "initiated"),
            ("1", "ringing"),
            ("2", "in-progress"),
            ("3", "completed"),
        ]
        .iter()
        .map(|(n, s)| (n.to_string(), s.to_string()))
        .collect();
        assert_eq!(progress, expected);
        let paths: Vec<_> = seen
            .iter()
            .filter(|(path, _, _)| path != "/call_status")
            .map(|(path, form, _)| (path.clone(), first(form, "AnsweredBy").map(str::to_owned)))
            .collect();
        assert_eq!(
            paths,
            [
                ("/voice".to_owned(), Some("human".to_owned())),
                ("/gathered".to_owned(), Some("human".to_owned()))
            ]
        );
    }

    #[tokio::test]
    async fn herald_changes_a_live_call() {
        let twilio = FakeTwilio::start(ACCOUNT, TOKEN).await;
        let herald = receiver().await;
        twilio.deliver_to(PUBLIC_URL, &herald.base);
        let http = reqwest::Client::new();
        let placed = http
            .post(format!(
                "{}/2010-04-01/Accounts/{ACCOUNT}/Calls.json",
                twilio.url
            ))
            .basic_auth(ACCOUNT, Some(TOKEN))
            .form(&[
                ("To", "+447700900123"),
                ("From", "+447700900999"),
                ("Url", "https://herald.example.com/wait?leg=1"),
                ("Method", "GET"),
            ])
            .send()
            .await
            .unwrap();
        let sid = serde_json::from_str::<Value>(&placed.text().await.unwrap()).unwrap()["sid"]
            .as_str()
            .unwrap()
            .to_owned();
        let call_path = format!("/2010-04-01/Accounts/{ACCOUNT}/Calls/{sid}.json");
        for _ in 0..200 {
            if twilio.calls()[0].gathers.len() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let fetched = http
            .get(format!("{}{call_path}", twilio.url))
            .basic_auth(ACCOUNT, Some(TOKEN))
            .send()
            .await
            .unwrap();
        let fetched: Value = serde_json::from_str(&fetched.text().await.unwrap()).unwrap();
        assert_eq!(fetched["status"], "in-progress");
        // The <Gather> waits 10 s for the person; herald says goodbye now.
        let updated = http
            .post(format!("{}{call_path}", twilio.url))
            .basic_auth(ACCOUNT, Some(TOKEN))
            .form(&[("Twiml", "<Response><Say>Goodbye</Say><Hangup/></Response>")])
            .send()
            .await
            .unwrap();
        assert_eq!(updated.status(), 200);
        let calls = twilio.wait_for_calls_to_end("+447700900123").await;
        assert_eq!(calls[0].said, ["Say something", "Goodbye"]);
        assert_eq!(calls[0].gathers[0].answer, None);
        let again = http
            .post(format!("{}{call_path}", twilio.url))
            .basic_auth(ACCOUNT, Some(TOKEN))
            .form(&[("Status", "completed")])
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 404);
        let body: Value = serde_json::from_str(&again.text().await.unwrap()).unwrap();
        assert_eq!(body["code"], 20404);
        // The GET carried the call in its query, signed over all of it.
        let seen = lock(&herald.seen).clone();
        assert_eq!(seen.len(), 1, "{seen:#?}");
        assert_eq!(seen[0].0, "/wait");
        assert!(seen[0].2, "the GET is not signed over its URL");
        assert_eq!(twilio.problems(), Vec::<String>::new());
        assert_eq!(twilio.times_of("POST", &call_path).len(), 2);
    }

    #[tokio::test]
    async fn posts_a_persons_message_and_keeps_the_answer() {
        let twilio = FakeTwilio::start(ACCOUNT, TOKEN).await;
        let herald = receiver().await;
        twilio.deliver_to(PUBLIC_URL, &herald.base);
        twilio.inbound_webhook("https://herald.example.com/inbound");
        let (status, sid) = twilio
            .send_button_reply(
                "whatsapp:+447700900123",
                "whatsapp:+447700900999",
                "Yes",
                "confirm",
            )
            .await;
        assert_eq!(status, 200);
        let seen = lock(&herald.seen).clone();
        let (path, form, signed) = &seen[0];
        assert_eq!(path, "/inbound");
        assert!(signed);
        assert_eq!(first(form, "MessageSid"), Some(sid.as_str()));
        assert_eq!(first(form, "WaId"), Some("447700900123"));
        assert_eq!(first(form, "ButtonPayload"), Some("confirm"));
        assert_eq!(twilio.inbound_answers(), [(200, "<Response/>".to_owned())]);
        assert_eq!(twilio.problems(), Vec::<String>::new());
        // A bad signature is herald's to refuse; the fake only carries it.
        let (status, _) = twilio
            .post_webhook("https://herald.example.com/inbound", form, Some("bm9wZQ=="))
            .await;
        assert_eq!(status, 200);
        assert!(!lock(&herald.seen)[1].2);
    }

    #[tokio::test]
    async fn an_unanswered_call_reports_how_it_ended() {
        let twilio = FakeTwilio::start(ACCOUNT, TOKEN).await;
        let herald = receiver().await;
        twilio.deliver_to(PUBLIC_URL, &herald.base);
        twilio.call_fate("+447700900123", CallFate::Unanswered("failed", Some(603)));
        let response = reqwest::Client::new()
            .post(format!(
                "{}/2010-04-01/Accounts/{ACCOUNT}/Calls.json",
                twilio.url
            ))
            .basic_auth(ACCOUNT, Some(TOKEN))
            .form(&[
                ("To", "+447700900123"),
                ("From", "+447700900999"),
                ("Twiml", "<Response><Say>Hi</Say></Response>"),
                ("StatusCallback", "https://herald.example.com/call_status"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let calls = twilio.wait_for_calls_to_end("+447700900123").await;
        assert_eq!(calls[0].status, "failed");
        assert!(calls[0].said.is_empty());
        let seen = lock(&herald.seen).clone();
        // Only `completed` was asked for (by default).
        assert_eq!(seen.len(), 1, "{seen:#?}");
        let (_, form, signed) = &seen[0];
        assert!(signed);
        assert_eq!(first(form, "CallStatus"), Some("failed"));
        assert_eq!(first(form, "SipResponseCode"), Some("603"));
        assert_eq!(first(form, "SequenceNumber"), Some("0"));
        assert_eq!(twilio.problems(), Vec::<String>::new());
    }
}

//! The fake's Voice API: `POST /v1/calls` and `PUT /v1/calls/{uuid}`
//! checked against `definitions/voice.yml`, and each call played as
//! Vonage plays it: its events (`started`, `ringing`, `answered`, the
//! machine detection's, and how it ended), the answer URL asked for the
//! NCCO, and the NCCO run with the test as the person.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use super::{signed_request, unauthorised, Recorded, Shared, Webhooks};

/// How a call to a number goes, as the test scripts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CallFate {
    /// The person picks up.
    #[default]
    Answer,
    /// An answering machine picks up.
    Machine,
    /// The call ends before anyone answers, with this status of Vonage's
    /// (`busy`, `cancelled`, `rejected`, `timeout`, `unanswered`,
    /// `failed`).
    Unanswered(&'static str),
    /// Vonage says nothing more of the call after taking it.
    Silent,
}

/// What the person does at an `input`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Digits(String),
    Speech(String),
}

/// A call as the fake played it.
#[derive(Debug, Clone, Default)]
pub struct CallSummary {
    pub uuid: String,
    pub to: String,
    /// The body herald sent to place it.
    pub request: Value,
    /// Every `talk` it played, in order.
    pub said: Vec<String>,
    /// Every `input` action it ran.
    pub inputs: Vec<Value>,
    /// Where a `connect` handed it over to.
    pub connected: Option<Value>,
    /// Whether it is over.
    pub ended: bool,
}

/// What the fake changes on a live call when herald asks it to.
enum Control {
    Transfer(Vec<Value>),
    Hangup,
}

#[derive(Default)]
pub(super) struct Voice {
    calls: Mutex<Vec<CallSummary>>,
    fates: Mutex<HashMap<String, CallFate>>,
    answers: Mutex<HashMap<String, VecDeque<Answer>>>,
    answered: Notify,
    controls: Mutex<HashMap<String, mpsc::UnboundedSender<Control>>>,
    /// How long each answer and input webhook took to give its NCCO.
    turns: Mutex<Vec<(&'static str, Duration)>>,
}

impl Voice {
    fn update(&self, uuid: &str, change: impl FnOnce(&mut CallSummary)) {
        let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(call) = calls.iter_mut().find(|c| c.uuid == uuid) {
            change(call);
        }
    }

    fn next_answer(&self, to: &str) -> Option<Answer> {
        self.answers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(to)?
            .pop_front()
    }
}

impl super::FakeVonage {
    /// How calls to `to` go from now on (they are answered by a person
    /// unless said otherwise).
    pub fn call_fate(&self, to: &str, fate: CallFate) {
        self.shared
            .voice
            .fates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(to.to_owned(), fate);
    }

    /// The person on a call to `to` answers the next `input` (now, or the
    /// next one to come): keys `text` if it is all digits, else says it.
    pub fn person_answers(&self, to: &str, text: &str) {
        let answer = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            Answer::Digits(text.to_owned())
        } else {
            Answer::Speech(text.to_owned())
        };
        self.shared
            .voice
            .answers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(to.to_owned())
            .or_default()
            .push_back(answer);
        self.shared.voice.answered.notify_waiters();
    }

    /// Every call placed, as played so far.
    pub fn calls(&self) -> Vec<CallSummary> {
        self.shared
            .voice
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How long each webhook that gave a call its NCCO took (`answer`,
    /// `input` or `notify`), in the order they were asked.
    pub fn turn_times(&self) -> Vec<(&'static str, Duration)> {
        self.shared
            .voice
            .turns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until the calls to `to` are over (10 s at most).
    pub async fn wait_for_calls_to_end(&self, to: &str) -> Vec<CallSummary> {
        for _ in 0..400 {
            let calls: Vec<_> = self.calls().into_iter().filter(|c| c.to == to).collect();
            if !calls.is_empty() && calls.iter().all(|c| c.ended) {
                return calls;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the calls to {to} did not end: {:?}", self.calls());
    }
}

/// Checks an endpoint of `to` (phone or SIP) as the spec has it.
fn check_endpoint(shared: &Shared, what: &str, endpoint: &Value) {
    match endpoint["type"].as_str() {
        Some("phone") => match endpoint["number"].as_str() {
            Some(n) if (7..=15).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_digit()) => {}
            other => shared.problem(format!("{what}: number {other:?} is not E.164 without +")),
        },
        Some("sip") => {
            if !endpoint["uri"]
                .as_str()
                .is_some_and(|u| u.starts_with("sip"))
            {
                shared.problem(format!("{what}: sip endpoint without a sip: uri"));
            }
        }
        other => shared.problem(format!(
            "{what}: endpoint type {other:?} is not phone or sip"
        )),
    }
}

fn is_url_list(value: &Value) -> bool {
    value.as_array().is_some_and(|urls| {
        urls.len() == 1
            && urls[0]
                .as_str()
                .is_some_and(|u| u.starts_with("http://") || u.starts_with("https://"))
    })
}

/// Checks a create-call body (`CreateCallRequestAnswerUrl`).
fn check_call(shared: &Shared, body: &Value) {
    let what = "POST /v1/calls";
    let Some(fields) = body.as_object() else {
        shared.problem(format!("{what}: the body is not a JSON object"));
        return;
    };
    const ALLOWED: &[&str] = &[
        "to",
        "from",
        "answer_url",
        "answer_method",
        "event_url",
        "event_method",
        "machine_detection",
        "length_timer",
        "ringing_timer",
    ];
    for name in fields.keys() {
        if !ALLOWED.contains(&name.as_str()) {
            shared.problem(format!("{what}: unexpected field {name}"));
        }
    }
    match body["to"].as_array() {
        Some(to) if to.len() == 1 => check_endpoint(shared, what, &to[0]),
        _ => shared.problem(format!("{what}: to is not a list of one endpoint")),
    }
    if body["from"]["type"] != "phone" {
        shared.problem(format!("{what}: from is not a phone endpoint"));
    } else {
        check_endpoint(shared, what, &body["from"]);
    }
    for url in ["answer_url", "event_url"] {
        if !is_url_list(&body[url]) {
            shared.problem(format!("{what}: {url} is not a list of one URL"));
        }
    }
    if body["answer_method"] != "POST" {
        shared.problem(format!(
            "{what}: answer_method is {} (herald reads the answer's body, so it must be POST)",
            body["answer_method"]
        ));
    }
    if !matches!(
        body.get("event_method").and_then(Value::as_str),
        None | Some("POST")
    ) {
        shared.problem(format!("{what}: event_method is not POST"));
    }
    if let Some(detection) = body.get("machine_detection") {
        if !matches!(detection.as_str(), Some("continue" | "hangup")) {
            shared.problem(format!(
                "{what}: machine_detection {detection} is not continue or hangup"
            ));
        }
    }
    for (name, max) in [("ringing_timer", 120), ("length_timer", 7200)] {
        if let Some(value) = body.get(name) {
            if !value.as_u64().is_some_and(|n| (1..=max).contains(&n)) {
                shared.problem(format!("{what}: {name} {value} is not 1 to {max}"));
            }
        }
    }
}

/// `POST /v1/calls` (createCall): places the call (201) and plays it; or
/// answers as the script says.
pub(super) async fn create_call(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let what = "POST /v1/calls";
    let claims = shared.token(what, &headers);
    let body: Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
        shared.problem(format!("{what}: the body is not JSON: {e}"));
        Value::Null
    });
    check_call(&shared, &body);
    shared.record(Recorded {
        method: "POST",
        path: "/v1/calls".into(),
        claims: claims.clone(),
        body: body.clone(),
    });
    if claims.is_none() {
        return unauthorised();
    }
    if let Some(answer) = shared.scripted_answer() {
        return answer;
    }
    let uuid = uuid::Uuid::new_v4().to_string();
    let conversation_uuid = format!("CON-{}", uuid::Uuid::new_v4());
    let to = body["to"][0]["number"]
        .as_str()
        .or(body["to"][0]["uri"].as_str())
        .unwrap_or_default()
        .to_owned();
    shared
        .voice
        .calls
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(CallSummary {
            uuid: uuid.clone(),
            to: to.clone(),
            request: body.clone(),
            ..CallSummary::default()
        });
    let (control, controls) = mpsc::unbounded_channel();
    shared
        .voice
        .controls
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(uuid.clone(), control);
    let call = Call {
        shared: shared.clone(),
        uuid: uuid.clone(),
        conversation_uuid: conversation_uuid.clone(),
        to,
        from: body["from"]["number"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        request: body,
        controls,
    };
    tokio::spawn(call.play());
    (
        StatusCode::CREATED,
        Json(
            json!({"uuid": uuid, "status": "started", "direction": "outbound",
                    "conversation_uuid": conversation_uuid}),
        ),
    )
        .into_response()
}

/// `PUT /v1/calls/{uuid}` (updateCall): a transfer to a new NCCO, or a
/// hang-up (204).
pub(super) async fn update_call(
    State(shared): State<Arc<Shared>>,
    Path(uuid): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let what = "PUT /v1/calls/{uuid}";
    let claims = shared.token(what, &headers);
    let body: Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
        shared.problem(format!("{what}: the body is not JSON: {e}"));
        Value::Null
    });
    shared.record(Recorded {
        method: "PUT",
        path: format!("/v1/calls/{uuid}"),
        claims: claims.clone(),
        body: body.clone(),
    });
    if claims.is_none() {
        return unauthorised();
    }
    let control = match body["action"].as_str() {
        Some("hangup") => Control::Hangup,
        Some("transfer")
            if body["destination"]["type"] == "ncco" && body["destination"]["ncco"].is_array() =>
        {
            let ncco = body["destination"]["ncco"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for action in &ncco {
                check_action(&shared, what, action);
            }
            Control::Transfer(ncco)
        }
        _ => {
            shared.problem(format!(
                "{what}: {body} is not a transfer to an NCCO or a hangup"
            ));
            return StatusCode::BAD_REQUEST.into_response();
        }
    };
    let sender = shared
        .voice
        .controls
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&uuid)
        .cloned();
    match sender {
        Some(sender) if sender.send(control).is_ok() => StatusCode::NO_CONTENT.into_response(),
        // Over, or never placed.
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Checks one NCCO action of those herald uses against the NCCO
/// reference.
fn check_action(shared: &Shared, what: &str, action: &Value) {
    let fields: &[&str] = match action["action"].as_str() {
        Some("talk") => {
            if !action["text"]
                .as_str()
                .is_some_and(|t| !t.is_empty() && t.chars().count() <= 1500)
            {
                shared.problem(format!("{what}: talk text is not 1 to 1500 characters"));
            }
            &[
                "action", "text", "bargeIn", "loop", "level", "language", "style", "premium",
            ]
        }
        Some("input") => {
            let kinds = action["type"].as_array().cloned().unwrap_or_default();
            if kinds.is_empty()
                || kinds
                    .iter()
                    .any(|k| !matches!(k.as_str(), Some("dtmf" | "speech")))
            {
                shared.problem(format!(
                    "{what}: input type {} is not dtmf and/or speech",
                    action["type"]
                ));
            }
            if let Some(dtmf) = action.get("dtmf") {
                if dtmf["timeOut"].as_u64().is_none_or(|n| n > 10) {
                    shared.problem(format!(
                        "{what}: dtmf.timeOut {} is not 0 to 10",
                        dtmf["timeOut"]
                    ));
                }
                if !dtmf["maxDigits"]
                    .as_u64()
                    .is_some_and(|n| (1..=20).contains(&n))
                {
                    shared.problem(format!(
                        "{what}: dtmf.maxDigits {} is not 1 to 20",
                        dtmf["maxDigits"]
                    ));
                }
            }
            if let Some(speech) = action.get("speech") {
                if !speech["startTimeout"]
                    .as_u64()
                    .is_some_and(|n| (1..=60).contains(&n))
                {
                    shared.problem(format!(
                        "{what}: speech.startTimeout {} is not 1 to 60",
                        speech["startTimeout"]
                    ));
                }
                if !speech["maxDuration"]
                    .as_u64()
                    .is_some_and(|n| (1..=60).contains(&n))
                {
                    shared.problem(format!(
                        "{what}: speech.maxDuration {} is not 1 to 60",
                        speech["maxDuration"]
                    ));
                }
                if !speech["endOnSilence"]
                    .as_f64()
                    .is_some_and(|n| (0.4..=10.0).contains(&n))
                {
                    shared.problem(format!(
                        "{what}: speech.endOnSilence {} is not 0.4 to 10",
                        speech["endOnSilence"]
                    ));
                }
            }
            if !is_url_list(&action["eventUrl"]) {
                shared.problem(format!("{what}: input eventUrl is not a list of one URL"));
            }
            &[
                "action",
                "type",
                "dtmf",
                "speech",
                "eventUrl",
                "eventMethod",
            ]
        }
        Some("notify") => {
            if !action["payload"].is_object() || !is_url_list(&action["eventUrl"]) {
                shared.problem(format!(
                    "{what}: notify without a payload object and an eventUrl"
                ));
            }
            &["action", "payload", "eventUrl", "eventMethod"]
        }
        Some("connect") => {
            match action["endpoint"].as_array() {
                Some(endpoints) if endpoints.len() == 1 => {
                    check_endpoint(shared, what, &endpoints[0])
                }
                _ => shared.problem(format!("{what}: connect endpoint is not a list of one")),
            }
            &[
                "action",
                "endpoint",
                "from",
                "eventType",
                "timeout",
                "limit",
                "eventUrl",
                "eventMethod",
            ]
        }
        other => {
            shared.problem(format!(
                "{what}: NCCO action {other:?} is not one herald uses"
            ));
            return;
        }
    };
    if let Some(object) = action.as_object() {
        for name in object.keys() {
            if !fields.contains(&name.as_str()) {
                shared.problem(format!(
                    "{what}: {} action has unexpected field {name}",
                    action["action"]
                ));
            }
        }
    }
}

/// One call being played.
struct Call {
    shared: Arc<Shared>,
    uuid: String,
    conversation_uuid: String,
    to: String,
    from: String,
    request: Value,
    controls: mpsc::UnboundedReceiver<Control>,
}

/// How long Vonage waits for an answer or input webhook's NCCO.
const NCCO_DEADLINE: Duration = Duration::from_secs(5);

impl Call {
    fn hooks(&self) -> Option<Webhooks> {
        self.shared
            .webhooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn now() -> String {
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    }

    /// Posts an event of the call to its `event_url`.
    async fn event(&self, status: &str) {
        let mut body = json!({
            "from": self.from, "to": self.to, "uuid": self.uuid,
            "conversation_uuid": self.conversation_uuid, "status": status,
            "direction": "outbound", "timestamp": Self::now(),
        });
        if status == "machine" {
            // Machine detection names the call so.
            body = json!({"call_uuid": self.uuid, "status": "machine",
                          "conversation_uuid": self.conversation_uuid, "timestamp": Self::now()});
        }
        let url = self.request["event_url"][0]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let answer = self.post(&url, &body).await;
        if !matches!(answer, Some((200..=299, _))) {
            self.shared.problem(format!(
                "the event webhook answered {:?} to {status}",
                answer.map(|(s, _)| s)
            ));
        }
    }

    /// Posts to a URL herald gave, signed; its answer.
    async fn post(&self, url: &str, body: &Value) -> Option<(u16, Vec<u8>)> {
        let hooks = self.hooks()?;
        let Some(reached) = hooks.reach(url) else {
            self.shared
                .problem(format!("{url} is not under herald's public URL"));
            return None;
        };
        signed_request(
            &self.shared.http,
            &reached,
            body,
            &hooks.signature_secret,
            &hooks.api_key,
            &self.shared.application_id,
        )
        .await
    }

    /// Asks a webhook for the NCCO to run next, within Vonage's deadline.
    async fn ncco_from(&self, url: &str, body: &Value, what: &'static str) -> Option<Vec<Value>> {
        let asked = Instant::now();
        let answer = self.post(url, body).await;
        self.shared
            .voice
            .turns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((what, asked.elapsed()));
        if asked.elapsed() > NCCO_DEADLINE {
            self.shared.problem(format!(
                "the {what} webhook took {:?}, past Vonage's deadline",
                asked.elapsed()
            ));
        }
        match answer {
            Some((200, body)) => match serde_json::from_slice::<Value>(&body) {
                Ok(Value::Array(ncco)) => {
                    for action in &ncco {
                        check_action(&self.shared, what, action);
                    }
                    Some(ncco)
                }
                _ => {
                    self.shared
                        .problem(format!("the {what} webhook's answer is not an NCCO array"));
                    None
                }
            },
            other => {
                self.shared.problem(format!(
                    "the {what} webhook answered {:?}",
                    other.map(|(s, _)| s)
                ));
                None
            }
        }
    }

    async fn play(mut self) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let fate = self
            .shared
            .voice
            .fates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&self.to)
            .copied()
            .unwrap_or_default();
        if fate == CallFate::Silent {
            return;
        }
        self.event("started").await;
        self.event("ringing").await;
        if let CallFate::Unanswered(status) = fate {
            self.event(status).await;
            self.end(false).await;
            return;
        }
        self.event("answered").await;
        let detection = self.request["machine_detection"]
            .as_str()
            .map(str::to_owned);
        let answer_url = self.request["answer_url"][0]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let answered = json!({"to": self.to, "from": self.from, "uuid": self.uuid,
                              "conversation_uuid": self.conversation_uuid});
        let mut ncco: VecDeque<Value> = self
            .ncco_from(&answer_url, &answered, "answer")
            .await
            .unwrap_or_default()
            .into();
        if fate == CallFate::Machine {
            match detection.as_deref() {
                Some("hangup") => {
                    self.event("machine").await;
                    return self.end(true).await;
                }
                Some(_) => self.event("machine").await,
                None => {}
            }
        }
        loop {
            while let Some(action) = ncco.pop_front() {
                if let Ok(control) = self.controls.try_recv() {
                    match control {
                        Control::Hangup => return self.end(true).await,
                        Control::Transfer(new) => {
                            ncco = new.into();
                            continue;
                        }
                    }
                }
                match action["action"].as_str() {
                    Some("talk") => {
                        let text = action["text"].as_str().unwrap_or_default().to_owned();
                        if !text.starts_with("<speak>") {
                            self.shared.voice.update(&self.uuid, |c| c.said.push(text));
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Some("input") => {
                        self.shared
                            .voice
                            .update(&self.uuid, |c| c.inputs.push(action.clone()));
                        let result = match self.collect(&action).await {
                            Ok(result) => result,
                            Err(Control::Hangup) => return self.end(true).await,
                            Err(Control::Transfer(new)) => {
                                ncco = new.into();
                                continue;
                            }
                        };
                        let url = action["eventUrl"][0]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned();
                        match self.ncco_from(&url, &result, "input").await {
                            Some(new) => ncco = new.into(),
                            None => return self.end(true).await,
                        }
                    }
                    Some("notify") => {
                        let url = action["eventUrl"][0]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned();
                        if let Some(new) = self.ncco_from(&url, &action["payload"], "notify").await
                        {
                            ncco = new.into();
                        }
                    }
                    Some("connect") => {
                        let endpoint = action["endpoint"][0].clone();
                        self.shared
                            .voice
                            .update(&self.uuid, |c| c.connected = Some(endpoint));
                        return self.end(true).await;
                    }
                    _ => {}
                }
            }
            // The NCCO ran out: Vonage hangs up, unless herald changed the
            // call just now.
            match self.controls.try_recv() {
                Ok(Control::Transfer(new)) => ncco = new.into(),
                _ => break,
            }
        }
        self.end(true).await;
    }

    /// Runs an `input`: waits for the person's answer (or herald's change
    /// of the call) until the action's own timeout, and returns the input
    /// webhook's body.
    async fn collect(&mut self, action: &Value) -> Result<Value, Control> {
        let kinds: Vec<&str> = action["type"]
            .as_array()
            .map(|k| k.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let timeout = action["speech"]["startTimeout"]
            .as_u64()
            .or(action["dtmf"]["timeOut"].as_u64())
            .unwrap_or(3);
        let until = Instant::now() + Duration::from_secs(timeout);
        let answer = loop {
            let notified = self.shared.voice.answered.notified();
            if let Some(answer) = self.shared.voice.next_answer(&self.to) {
                break Some(answer);
            }
            tokio::select! {
                _ = notified => {}
                control = self.controls.recv() => {
                    if let Some(control) = control {
                        return Err(control);
                    }
                }
                _ = tokio::time::sleep_until(until) => break None,
            }
        };
        let mut body = json!({"uuid": self.uuid, "conversation_uuid": self.conversation_uuid,
                              "timestamp": Self::now()});
        if kinds.contains(&"dtmf") {
            body["dtmf"] = match &answer {
                Some(Answer::Digits(d)) => json!({"digits": d, "timed_out": false}),
                _ => json!({"digits": "", "timed_out": answer.is_none()}),
            };
        }
        if kinds.contains(&"speech") {
            body["speech"] = match &answer {
                Some(Answer::Speech(text)) => json!({"results": [
                    {"confidence": "0.92", "text": text},
                    {"confidence": "0.41", "text": format!("{text} uh")}]}),
                Some(Answer::Digits(_)) => json!({"results": []}),
                None => json!({"timeout_reason": "start_timeout", "results": []}),
            };
        }
        if let Some(Answer::Digits(_)) = &answer {
            if !kinds.contains(&"dtmf") {
                self.shared
                    .problem("the person keyed digits at an input that takes none".into());
            }
        }
        Ok(body)
    }

    /// The call is over: `completed` if it was answered.
    async fn end(&self, answered: bool) {
        self.shared
            .voice
            .controls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.uuid);
        if answered {
            self.event("completed").await;
        }
        self.shared.voice.update(&self.uuid, |c| c.ended = true);
    }
}

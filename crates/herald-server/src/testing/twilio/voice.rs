//! The fake's Voice API: `POST …/Calls.json` and `POST …/Calls/{Sid}.json`
//! checked against the specification, and each call played as Twilio
//! plays it: its progress posted to `StatusCallback` (the events asked
//! for), `Url` asked for TwiML when it is answered, and the TwiML
//! interpreted (`Say`, `Pause`, `Gather`, `Redirect`, `Dial`, `Hangup`) with
//! the test as the person.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use quick_xml::events::{BytesRef, BytesStart, Event};
use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use super::{
    check_params, error, first, has, is_e164, is_sip_uri, is_xml, lock, many, new_sid, not_found,
    once, pairs, rfc2822, send_webhook, unauthorised, Form, Kind, Param, Shared, API_VERSION,
    WEBHOOK_DEADLINE,
};

/// How a call to a number goes, as the test scripts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CallFate {
    /// The person picks up (`AnsweredBy` `human`).
    #[default]
    Answer,
    /// An answering machine picks up (`machine_start`, or
    /// `machine_end_beep` with `DetectMessageEnd`); it keys and says
    /// nothing.
    Machine,
    /// A fax picks up (`fax`).
    Fax,
    /// The call ends before anyone answers, with this status of Twilio's
    /// (`busy`, `no-answer`, `canceled`, `failed`) and this SIP response
    /// code, if given (`failed` with 603 when the callee declines). It
    /// rings first, unless it is `busy` or a `failed` without a code.
    Unanswered(&'static str, Option<u16>),
    /// Twilio says nothing more of the call after taking it.
    Silent,
}

/// What the person does at a `<Gather>`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Input {
    Keys(String),
    Speech(String),
}

/// Where a `<Dial>` connected the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dialled {
    Number(String),
    Sip(String),
}

/// A `<Gather>` a call ran.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GatherSeen {
    /// Its attributes, as herald wrote them.
    pub attributes: Vec<(String, String)>,
    /// What its nested `<Say>`s said.
    pub prompts: Vec<String>,
    /// What the person keyed or said, as posted to its `action`; `None`
    /// when it heard nothing.
    pub answer: Option<String>,
}

impl GatherSeen {
    /// The value of attribute `name`.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A call as the fake played it.
#[derive(Debug, Clone, Default)]
pub struct CallSummary {
    pub sid: String,
    pub to: String,
    pub from: String,
    /// The form herald sent to place it.
    pub request: Form,
    /// Every `<Say>` it played (inside a `<Gather>` too), in order.
    pub said: Vec<String>,
    /// Every `<Gather>` it ran.
    pub gathers: Vec<GatherSeen>,
    /// Where a `<Dial>` connected it.
    pub dialled: Option<Dialled>,
    /// Its status in Twilio's words: `queued`, `ringing`, `in-progress`,
    /// then `completed`, `busy`, `no-answer`, `canceled` or `failed`.
    pub status: String,
    /// Who answered, when machine detection was asked for.
    pub answered_by: Option<String>,
    /// Whether it is over.
    pub ended: bool,
}

/// What herald changes on a live call (UpdateCall).
enum Control {
    /// Play this TwiML instead.
    Twiml(String),
    /// Fetch TwiML from here, and play it instead.
    Redirect { url: String, method: String },
    /// `Status=completed`.
    Hangup,
    /// `Status=canceled`, for a call not yet answered.
    Cancel,
}

/// A call placed, with its times.
struct Placed {
    summary: CallSummary,
    created: DateTime<Utc>,
    started: Option<DateTime<Utc>>,
    finished: Option<DateTime<Utc>>,
}

/// A callee as the test names it: a number's digits without `+` (a SIP
/// URI as it is), however the call's `To` spelled it.
fn number(to: &str) -> &str {
    to.trim_start_matches('+')
}

#[derive(Default)]
pub(super) struct Voice {
    calls: Mutex<Vec<Placed>>,
    fates: Mutex<HashMap<String, CallFate>>,
    inputs: Mutex<HashMap<String, VecDeque<Input>>>,
    answered: Notify,
    controls: Mutex<HashMap<String, mpsc::UnboundedSender<Control>>>,
    /// How long each webhook that gave a call its TwiML took.
    turns: Mutex<Vec<(&'static str, Duration)>>,
}

impl Voice {
    fn update(&self, sid: &str, change: impl FnOnce(&mut Placed)) {
        let mut calls = lock(&self.calls);
        if let Some(call) = calls.iter_mut().find(|c| c.summary.sid == sid) {
            change(call);
        }
    }

    fn next_input(&self, to: &str) -> Option<Input> {
        lock(&self.inputs).get_mut(number(to))?.pop_front()
    }

    fn add_input(&self, to: &str, input: Input) {
        lock(&self.inputs)
            .entry(number(to).to_owned())
            .or_default()
            .push_back(input);
        self.answered.notify_waiters();
    }
}

impl super::FakeTwilio {
    /// How calls to `to` go from now on (a person answers them unless said
    /// otherwise).
    pub fn call_fate(&self, to: &str, fate: CallFate) {
        lock(&self.shared.voice.fates).insert(number(to).to_owned(), fate);
    }

    /// The person on a call to `to` keys `keys` (digits, `*`, `#`) at the
    /// next `<Gather>` (now, or the next one to come).
    pub fn person_answers(&self, to: &str, keys: &str) {
        assert!(
            !keys.is_empty()
                && keys
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b == b'*' || b == b'#'),
            "{keys:?} is not keys of a phone's keypad"
        );
        self.shared
            .voice
            .add_input(to, Input::Keys(keys.to_owned()));
    }

    /// The person on a call to `to` says `words` at the next `<Gather>`.
    pub fn person_says(&self, to: &str, words: &str) {
        self.shared
            .voice
            .add_input(to, Input::Speech(words.to_owned()));
    }

    /// Every call placed, as played so far.
    pub fn calls(&self) -> Vec<CallSummary> {
        lock(&self.shared.voice.calls)
            .iter()
            .map(|c| c.summary.clone())
            .collect()
    }

    /// How long each webhook that gave a call its TwiML took (`answer` for
    /// `Url`, `gather` for a `<Gather>`'s action, `redirect`, `update` for
    /// a `Url` of UpdateCall), in the order they were asked.
    pub fn turn_times(&self) -> Vec<(&'static str, Duration)> {
        lock(&self.shared.voice.turns).clone()
    }

    /// Waits until the calls to `to` are over (30 s at most: a `<Gather>`
    /// that hears nothing waits its whole timeout, 5 s by default).
    pub async fn wait_for_calls_to_end(&self, to: &str) -> Vec<CallSummary> {
        for _ in 0..1200 {
            let calls: Vec<_> = self
                .calls()
                .into_iter()
                .filter(|c| number(&c.to) == number(to))
                .collect();
            if !calls.is_empty() && calls.iter().all(|c| c.ended) {
                return calls;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the calls to {to} did not end: {:#?}", self.calls());
    }
}

const STATUS_CALLBACK_EVENTS: &[&str] = &["initiated", "ringing", "answered", "completed"];

/// `CreateCallRequest`'s parameters.
const CALL_PARAMS: &[Param] = &[
    once("To", Kind::Callee),
    once("From", Kind::CallerId),
    once("Url", Kind::Url),
    once("Twiml", Kind::Twiml),
    once("ApplicationSid", Kind::Sid("AP")),
    once("Method", Kind::HttpMethod),
    once("FallbackUrl", Kind::Url),
    once("FallbackMethod", Kind::HttpMethod),
    once("StatusCallback", Kind::Url),
    many("StatusCallbackEvent", Kind::OneOf(STATUS_CALLBACK_EVENTS)),
    once("StatusCallbackMethod", Kind::HttpMethod),
    once("SendDigits", Kind::Short(32)),
    once("Timeout", Kind::Within(1, 600)),
    once("Record", Kind::Boolean),
    once("RecordingChannels", Kind::OneOf(&["mono", "dual"])),
    once("RecordingStatusCallback", Kind::Url),
    once("RecordingStatusCallbackMethod", Kind::HttpMethod),
    once("SipAuthUsername", Kind::Text),
    once("SipAuthPassword", Kind::Text),
    once(
        "MachineDetection",
        Kind::OneOf(&["Enable", "DetectMessageEnd"]),
    ),
    once("MachineDetectionTimeout", Kind::Integer),
    many("RecordingStatusCallbackEvent", Kind::Text),
    once("Trim", Kind::OneOf(&["trim-silence", "do-not-trim"])),
    once("CallerId", Kind::Text),
    once("MachineDetectionSpeechThreshold", Kind::Within(1000, 6000)),
    once(
        "MachineDetectionSpeechEndThreshold",
        Kind::Within(500, 5000),
    ),
    once("MachineDetectionSilenceTimeout", Kind::Within(2000, 10000)),
    once("AsyncAmd", Kind::OneOf(&["true", "false"])),
    once("AsyncAmdStatusCallback", Kind::Url),
    once("AsyncAmdStatusCallbackMethod", Kind::HttpMethod),
    once("Byoc", Kind::Sid("BY")),
    once("CallReason", Kind::Text),
    once("CallToken", Kind::Text),
    once(
        "RecordingTrack",
        Kind::OneOf(&["inbound", "outbound", "both"]),
    ),
    once("TimeLimit", Kind::Integer),
    once("ClientNotificationUrl", Kind::Url),
];

/// `UpdateCallRequest`'s parameters.
const UPDATE_PARAMS: &[Param] = &[
    once("Url", Kind::Url),
    once("Method", Kind::HttpMethod),
    once("Status", Kind::OneOf(&["canceled", "completed"])),
    once("FallbackUrl", Kind::Url),
    once("FallbackMethod", Kind::HttpMethod),
    once("StatusCallback", Kind::Url),
    once("StatusCallbackMethod", Kind::HttpMethod),
    once("Twiml", Kind::Twiml),
    once("TimeLimit", Kind::Integer),
];

/// Checks a create-call form against the specification: its parameters,
/// and the rules between them that their descriptions give.
fn check_call(form: &Form) -> Vec<String> {
    let mut problems = check_params(form, CALL_PARAMS);
    let given = |name: &str| has(form, name);
    for name in ["To", "From"] {
        if !given(name) {
            problems.push(format!("{name} is required"));
        }
    }
    match (given("Url"), given("Twiml"), given("ApplicationSid")) {
        (false, false, false) => {
            problems.push("none of Url, Twiml and ApplicationSid: nothing to play".into())
        }
        (true, true, _) => problems.push("both Url and Twiml (Twilio ignores Twiml)".into()),
        _ => {}
    }
    if let (Some(to), Some(from)) = (first(form, "To"), first(form, "From")) {
        if is_e164(to) && !is_e164(from) {
            problems.push(format!(
                "From {from:?} is not a phone number, which a call to one needs"
            ));
        }
    }
    if !given("StatusCallback") {
        for name in ["StatusCallbackEvent", "StatusCallbackMethod"] {
            if given(name) {
                problems.push(format!("{name} without StatusCallback"));
            }
        }
    }
    if !given("MachineDetection") {
        for name in [
            "MachineDetectionTimeout",
            "MachineDetectionSpeechThreshold",
            "MachineDetectionSpeechEndThreshold",
            "MachineDetectionSilenceTimeout",
            "AsyncAmd",
        ] {
            if given(name) {
                problems.push(format!("{name} without MachineDetection"));
            }
        }
    }
    if given("AsyncAmdStatusCallback") && first(form, "AsyncAmd") != Some("true") {
        problems.push("AsyncAmdStatusCallback without AsyncAmd=true".into());
    }
    problems
}

/// Checks an update-call form.
fn check_update(form: &Form) -> Vec<String> {
    let mut problems = check_params(form, UPDATE_PARAMS);
    if has(form, "Url") && has(form, "Twiml") {
        problems.push("Twiml and Url are mutually exclusive".into());
    }
    if !["Url", "Twiml", "Status"].iter().any(|n| has(form, n)) {
        problems.push("none of Url, Twiml and Status: it changes nothing the call does".into());
    }
    problems
}

/// Twilio's refusal of a call it cannot make sense of.
fn call_refusal(form: &Form) -> Option<Response> {
    if !has(form, "To") {
        return Some(error(400, 21201, "No 'To' number is specified"));
    }
    if !has(form, "From") {
        return Some(error(400, 21213, "No 'From' number is specified"));
    }
    if !["Url", "Twiml", "ApplicationSid"]
        .iter()
        .any(|n| has(form, n))
    {
        return Some(error(400, 21205, "Url parameter is required."));
    }
    None
}

/// The call resource (`api.v2010.account.call`) of a call placed.
fn call_resource(account_sid: &str, call: &Placed) -> Value {
    let summary = &call.summary;
    let uri = format!("/2010-04-01/Accounts/{account_sid}/Calls/{}", summary.sid);
    let duration = match (call.started, call.finished) {
        (Some(started), Some(finished)) => Some((finished - started).num_seconds().to_string()),
        (None, Some(_)) => Some("0".to_owned()),
        _ => None,
    };
    json!({
        "account_sid": account_sid,
        "answered_by": summary.answered_by,
        "api_version": API_VERSION,
        "caller_name": null,
        "date_created": rfc2822(call.created),
        "date_updated": rfc2822(call.finished.or(call.started).unwrap_or(call.created)),
        "direction": "outbound-api",
        "duration": duration,
        "end_time": call.finished.map(rfc2822),
        "forwarded_from": null,
        "from": summary.from,
        "from_formatted": summary.from,
        "group_sid": null,
        "parent_call_sid": null,
        "phone_number_sid": null,
        "price": null,
        "price_unit": "USD",
        "queue_time": "0",
        "sid": summary.sid,
        "start_time": call.started.map(rfc2822),
        "status": summary.status,
        "subresource_uris": {
            "notifications": format!("{uri}/Notifications.json"),
            "recordings": format!("{uri}/Recordings.json"),
            "events": format!("{uri}/Events.json"),
        },
        "to": summary.to,
        "to_formatted": summary.to,
        "trunk_sid": null,
        "uri": format!("{uri}.json"),
    })
}

/// `POST …/Calls.json` (CreateCall): places the call (201) and plays it;
/// or answers as the script says.
pub(super) fn create_call(
    shared: &Arc<Shared>,
    path: &str,
    account: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let what = "POST /Calls.json";
    let form = super::read_form(shared, what, headers, body);
    shared.problems(what, check_call(&form));
    shared.record("POST", path, &form);
    if !shared.authorised(what, headers, account) {
        return unauthorised();
    }
    if let Some(answer) = shared.scripted_answer() {
        return answer;
    }
    if let Some(refusal) = call_refusal(&form) {
        return refusal;
    }
    let sid = new_sid("CA");
    let to = first(&form, "To").unwrap_or_default().to_owned();
    let from = first(&form, "From").unwrap_or_default().to_owned();
    let placed = Placed {
        summary: CallSummary {
            sid: sid.clone(),
            to: to.clone(),
            from: from.clone(),
            request: form.clone(),
            status: "queued".into(),
            ..CallSummary::default()
        },
        created: Utc::now(),
        started: None,
        finished: None,
    };
    let resource = call_resource(&shared.account_sid, &placed);
    lock(&shared.voice.calls).push(placed);
    let (control, controls) = mpsc::unbounded_channel();
    lock(&shared.voice.controls).insert(sid.clone(), control);
    let events = match form
        .iter()
        .filter(|(n, _)| n == "StatusCallbackEvent")
        .map(|(_, v)| v.clone())
        .collect::<Vec<_>>()
    {
        // Without a choice, Twilio reports the end alone.
        none if none.is_empty() => vec!["completed".to_owned()],
        events => events,
    };
    let call = Call {
        shared: shared.clone(),
        sid,
        to,
        from,
        request: form,
        events,
        sequence: 0,
        status: "queued",
        answered_by: None,
        answered_at: None,
        controls,
        pending: None,
        documents: 0,
    };
    tokio::spawn(call.play());
    (StatusCode::CREATED, Json(resource)).into_response()
}

/// `POST …/Calls/{Sid}.json` (UpdateCall): new TwiML (`Twiml`, or `Url` to
/// fetch it from) or the end of the call (`Status`); 200 and the call, or
/// 404 for a call that is unknown or over.
pub(super) fn update_call(
    shared: &Arc<Shared>,
    path: &str,
    account: &str,
    sid: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let what = "POST /Calls/{Sid}.json";
    let form = super::read_form(shared, what, headers, body);
    shared.problems(what, check_update(&form));
    shared.record("POST", path, &form);
    if !shared.authorised(what, headers, account) {
        return unauthorised();
    }
    let status = lock(&shared.voice.calls)
        .iter()
        .find(|c| c.summary.sid == sid)
        .map(|c| c.summary.status.clone());
    let control = match (
        first(&form, "Status"),
        first(&form, "Twiml"),
        first(&form, "Url"),
    ) {
        (Some("completed"), _, _) => Some(Control::Hangup),
        // Canceling touches only a call not yet answered.
        (Some("canceled"), _, _) => {
            matches!(status.as_deref(), Some("queued" | "ringing")).then_some(Control::Cancel)
        }
        (_, Some(twiml), _) => Some(Control::Twiml(twiml.to_owned())),
        (_, None, Some(url)) => Some(Control::Redirect {
            url: url.to_owned(),
            method: first(&form, "Method").unwrap_or("POST").to_owned(),
        }),
        _ => None,
    };
    let sender = lock(&shared.voice.controls).get(sid).cloned();
    let Some(sender) = sender else {
        // Over, or never placed.
        return not_found(path);
    };
    // The call as it will be: ended, when that is what herald asked.
    let ending = match &control {
        Some(Control::Hangup) if status.as_deref() == Some("in-progress") => Some("completed"),
        Some(Control::Hangup | Control::Cancel) => Some("canceled"),
        _ => None,
    };
    if let Some(control) = control {
        if sender.send(control).is_err() {
            return not_found(path);
        }
    }
    let calls = lock(&shared.voice.calls);
    let call = calls
        .iter()
        .find(|c| c.summary.sid == sid)
        .expect("a call with controls was placed");
    let mut resource = call_resource(&shared.account_sid, call);
    if let Some(ending) = ending {
        resource["status"] = ending.into();
    }
    Json(resource).into_response()
}

/// `GET …/Calls/{Sid}.json` (FetchCall): the call as it is now.
pub(super) fn fetch_call(
    shared: &Arc<Shared>,
    path: &str,
    account: &str,
    sid: &str,
    headers: &HeaderMap,
) -> Response {
    let what = "GET /Calls/{Sid}.json";
    shared.record("GET", path, &Vec::new());
    if !shared.authorised(what, headers, account) {
        return unauthorised();
    }
    let calls = lock(&shared.voice.calls);
    match calls.iter().find(|c| c.summary.sid == sid) {
        Some(call) => Json(call_resource(&shared.account_sid, call)).into_response(),
        None => not_found(path),
    }
}

// ---- TwiML ----------------------------------------------------------------

/// An element of an XML document.
#[derive(Debug)]
pub(super) struct Element {
    pub(super) name: String,
    attributes: Vec<(String, String)>,
    children: Vec<Node>,
}

#[derive(Debug)]
enum Node {
    Element(Element),
    Text(String),
}

impl Element {
    /// Whether it holds no element and no text but blanks.
    pub(super) fn is_empty(&self) -> bool {
        self.children.iter().all(|child| match child {
            Node::Element(_) => false,
            Node::Text(text) => text.trim().is_empty(),
        })
    }

    fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// All the text within it, blanks run together.
    fn text(&self) -> String {
        fn gather(element: &Element, into: &mut String) {
            for child in &element.children {
                match child {
                    Node::Text(text) => into.push_str(text),
                    // `<break/>` and the like part words.
                    Node::Element(inner) if inner.children.is_empty() => into.push(' '),
                    Node::Element(inner) => gather(inner, into),
                }
            }
        }
        let mut text = String::new();
        gather(self, &mut text);
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|child| match child {
            Node::Element(element) => Some(element),
            Node::Text(_) => None,
        })
    }

    /// Whether it holds text besides blanks directly.
    fn has_text(&self) -> bool {
        self.children
            .iter()
            .any(|child| matches!(child, Node::Text(text) if !text.trim().is_empty()))
    }
}

fn element(start: &BytesStart) -> Result<Element, String> {
    let name = std::str::from_utf8(start.name().as_ref())
        .map_err(|e| format!("an element's name is not UTF-8: {e}"))?
        .to_owned();
    let mut attributes = Vec::new();
    for attribute in start.attributes() {
        let attribute = attribute.map_err(|e| format!("<{name}>: {e}"))?;
        let key = std::str::from_utf8(attribute.key.as_ref())
            .map_err(|e| format!("<{name}>: an attribute's name is not UTF-8: {e}"))?
            .to_owned();
        let value = attribute
            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
            .map_err(|e| format!("<{name} {key}>: {e}"))?
            .into_owned();
        attributes.push((key, value));
    }
    Ok(Element {
        name,
        attributes,
        children: Vec::new(),
    })
}

fn reference(reference: &BytesRef) -> Result<String, String> {
    if let Some(c) = reference.resolve_char_ref().map_err(|e| e.to_string())? {
        return Ok(c.to_string());
    }
    let name = reference.decode().map_err(|e| e.to_string())?;
    quick_xml::escape::resolve_predefined_entity(&name)
        .map(str::to_owned)
        .ok_or_else(|| format!("&{name}; is not an entity XML defines"))
}

/// Reads an XML document into its root element.
pub(super) fn parse_xml(document: &str) -> Result<Element, String> {
    fn close(
        open: &mut [Element],
        root: &mut Option<Element>,
        done: Element,
    ) -> Result<(), String> {
        match open.last_mut() {
            Some(parent) => parent.children.push(Node::Element(done)),
            None if root.is_some() => return Err("more than one root element".into()),
            None => *root = Some(done),
        }
        Ok(())
    }
    fn add_text(open: &mut [Element], text: &str) -> Result<(), String> {
        match open.last_mut() {
            Some(parent) => match parent.children.last_mut() {
                Some(Node::Text(before)) => before.push_str(text),
                _ => parent.children.push(Node::Text(text.to_owned())),
            },
            None if text.trim().is_empty() => {}
            None => return Err(format!("text {text:?} outside the root element")),
        }
        Ok(())
    }
    let mut reader = quick_xml::Reader::from_str(document);
    let mut open: Vec<Element> = Vec::new();
    let mut root = None;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| format!("at byte {}: {e}", reader.buffer_position()))?;
        match event {
            Event::Start(start) => open.push(element(&start)?),
            Event::Empty(start) => close(&mut open, &mut root, element(&start)?)?,
            Event::End(_) => {
                let done = open.pop().ok_or("an end tag with no start")?;
                close(&mut open, &mut root, done)?;
            }
            Event::Text(text) => {
                let text = text.xml10_content().map_err(|e| e.to_string())?;
                add_text(&mut open, &text)?;
            }
            Event::CData(data) => {
                let text = data.decode().map_err(|e| e.to_string())?;
                add_text(&mut open, &text)?;
            }
            Event::GeneralRef(r) => add_text(&mut open, &reference(&r)?)?,
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) | Event::DocType(_) => {}
            Event::Eof => break,
        }
    }
    if let Some(unclosed) = open.last() {
        return Err(format!("the document ends inside <{}>", unclosed.name));
    }
    root.ok_or_else(|| "the document has no element".into())
}

/// A TwiML verb the fake plays.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Verb {
    Say(String),
    Pause(u64),
    Gather(Gather),
    Redirect { url: String, method: String },
    Dial(Dialled),
    Hangup,
}

/// A `<Gather>`, as Twilio runs it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Gather {
    attributes: Vec<(String, String)>,
    dtmf: bool,
    speech: bool,
    /// Where the input goes; the document's own URL when `None`.
    action: Option<String>,
    method: String,
    /// Seconds to wait for input once the prompts are over.
    timeout: u64,
    num_digits: Option<usize>,
    finish_on_key: Option<char>,
    action_on_empty_result: bool,
    /// The nested `<Say>`s and `<Pause>`s.
    prompts: Vec<Verb>,
}

/// TwiML's voice verbs that the fake does not play.
const OTHER_VERBS: &[&str] = &[
    "Connect", "Echo", "Enqueue", "Leave", "Pay", "Play", "Prompt", "Queue", "Record", "Refer",
    "Reject", "Sms", "Start", "Stop",
];

/// What `<Say>` may hold besides text: SSML.
const SSML: &[&str] = &[
    "break",
    "emphasis",
    "lang",
    "p",
    "phoneme",
    "prosody",
    "s",
    "say-as",
    "sub",
    "w",
    "amazon:domain",
    "amazon:effect",
];

const GATHER_ATTRIBUTES: &[&str] = &[
    "action",
    "actionOnEmptyResult",
    "bargeIn",
    "debug",
    "dtmfDetection",
    "enhanced",
    "finishOnKey",
    "hints",
    "input",
    "language",
    "maxSpeechTime",
    "method",
    "numDigits",
    "partialResultCallback",
    "partialResultCallbackMethod",
    "profanityFilter",
    "speechModel",
    "speechTimeout",
    "timeout",
];

const DIAL_ATTRIBUTES: &[&str] = &[
    "action",
    "answerOnBridge",
    "callerId",
    "callReason",
    "events",
    "hangupOnStar",
    "method",
    "record",
    "recordingStatusCallback",
    "recordingStatusCallbackEvent",
    "recordingStatusCallbackMethod",
    "recordingTrack",
    "referMethod",
    "referUrl",
    "ringTone",
    "sequential",
    "timeLimit",
    "timeout",
    "trim",
];

/// The attributes `<Number>` and `<Sip>` share.
const ENDPOINT_ATTRIBUTES: &[&str] = &[
    "amdStatusCallback",
    "amdStatusCallbackMethod",
    "machineDetection",
    "machineDetectionSilenceTimeout",
    "machineDetectionSpeechEndThreshold",
    "machineDetectionSpeechThreshold",
    "machineDetectionTimeout",
    "method",
    "statusCallback",
    "statusCallbackEvent",
    "statusCallbackMethod",
    "url",
];

/// Reads a TwiML voice document: the verbs to play, and what in it
/// departs from TwiML (unknown verbs, which are skipped, and attributes).
/// `Err` for a document Twilio cannot read at all.
pub(super) fn read_twiml(document: &str) -> Result<(Vec<Verb>, Vec<String>), String> {
    let root = parse_xml(document)?;
    if root.name != "Response" {
        return Err(format!(
            "the root element is <{}>, not <Response>",
            root.name
        ));
    }
    let mut problems = Vec::new();
    known_attributes(&root, &[], &mut problems);
    let verbs = read_verbs(&root, false, &mut problems);
    Ok((verbs, problems))
}

fn known_attributes(element: &Element, known: &[&str], problems: &mut Vec<String>) {
    for (name, _) in &element.attributes {
        if !known.contains(&name.as_str()) {
            problems.push(format!("<{}> has no attribute {name}", element.name));
        }
    }
}

/// A whole number attribute of at least `min`; a problem if it is not one.
fn whole(element: &Element, name: &str, min: u64, problems: &mut Vec<String>) -> Option<u64> {
    let value = element.attribute(name)?;
    match value.parse::<u64>() {
        Ok(n) if n >= min => Some(n),
        _ => {
            problems.push(format!(
                "<{} {name}={value:?}> is not a whole number from {min}",
                element.name
            ));
            None
        }
    }
}

fn flag(element: &Element, name: &str, problems: &mut Vec<String>) -> Option<bool> {
    match element.attribute(name)? {
        "true" => Some(true),
        "false" => Some(false),
        other => {
            problems.push(format!(
                "<{} {name}={other:?}> is not true or false",
                element.name
            ));
            None
        }
    }
}

fn method(element: &Element, name: &str, problems: &mut Vec<String>) -> String {
    match element.attribute(name) {
        None => "POST".into(),
        Some(method @ ("GET" | "POST")) => method.into(),
        Some(other) => {
            problems.push(format!(
                "<{} {name}={other:?}> is not GET or POST",
                element.name
            ));
            "POST".into()
        }
    }
}

/// A BCP-47 language tag, as far as its shape goes (`en-GB`).
fn language(element: &Element, problems: &mut Vec<String>) {
    if let Some(tag) = element.attribute("language") {
        let mut parts = tag.split('-');
        let shaped = parts.next().is_some_and(|l| {
            (2..=3).contains(&l.len()) && l.bytes().all(|b| b.is_ascii_alphabetic())
        }) && parts
            .all(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()));
        if !shaped {
            problems.push(format!(
                "<{} language={tag:?}> is not a language tag",
                element.name
            ));
        }
    }
}

/// A URL in TwiML: absolute, or relative to the document's.
fn twiml_url(element: &Element, url: &str, problems: &mut Vec<String>) {
    let readable = match url::Url::parse(url) {
        Ok(absolute) => matches!(absolute.scheme(), "http" | "https"),
        Err(url::ParseError::RelativeUrlWithoutBase) => !url.trim().is_empty(),
        Err(_) => false,
    };
    if !readable {
        problems.push(format!(
            "<{}> has URL {url:?}, which is not one",
            element.name
        ));
    }
}

fn read_verbs(parent: &Element, in_gather: bool, problems: &mut Vec<String>) -> Vec<Verb> {
    if parent.has_text() {
        problems.push(format!("<{}> holds text, not verbs", parent.name));
    }
    let mut verbs = Vec::new();
    for element in parent.elements() {
        let name = element.name.as_str();
        let nestable = matches!(name, "Say" | "Pause");
        if in_gather && !nestable && name != "Play" {
            problems.push(format!(
                "<Gather> holds <{name}>: it may hold <Say>, <Play> and <Pause>"
            ));
            continue;
        }
        match name {
            "Say" => verbs.push(Verb::Say(read_say(element, problems))),
            "Pause" => {
                known_attributes(element, &["length"], problems);
                no_content(element, problems);
                verbs.push(Verb::Pause(
                    whole(element, "length", 1, problems).unwrap_or(1),
                ));
            }
            "Gather" => verbs.push(Verb::Gather(read_gather(element, problems))),
            "Redirect" => {
                known_attributes(element, &["method"], problems);
                let url = element.text();
                twiml_url(element, &url, problems);
                verbs.push(Verb::Redirect {
                    method: method(element, "method", problems),
                    url,
                });
            }
            "Dial" => {
                if let Some(dialled) = read_dial(element, problems) {
                    verbs.push(Verb::Dial(dialled));
                }
            }
            "Hangup" => {
                known_attributes(element, &[], problems);
                no_content(element, problems);
                verbs.push(Verb::Hangup);
            }
            other if OTHER_VERBS.contains(&other) => problems.push(format!(
                "<{other}> is a TwiML verb the fake does not play, nor herald should need"
            )),
            other => problems.push(format!("<{other}> is not a TwiML voice verb")),
        }
    }
    verbs
}

fn no_content(element: &Element, problems: &mut Vec<String>) {
    if !element.is_empty() {
        problems.push(format!(
            "<{}> holds something; it takes nothing",
            element.name
        ));
    }
}

fn read_say(element: &Element, problems: &mut Vec<String>) -> String {
    known_attributes(element, &["voice", "language", "loop"], problems);
    language(element, problems);
    whole(element, "loop", 0, problems);
    fn ssml_only(element: &Element, problems: &mut Vec<String>) {
        for inner in element.elements() {
            if !SSML.contains(&inner.name.as_str()) {
                problems.push(format!(
                    "<{}> holds <{}>, which is not SSML",
                    element.name, inner.name
                ));
            }
            ssml_only(inner, problems);
        }
    }
    ssml_only(element, problems);
    let text = element.text();
    if text.is_empty() {
        problems.push("<Say> says nothing".into());
    }
    if text.chars().count() > 4096 {
        problems.push("<Say> says more than 4096 characters".into());
    }
    text
}

fn read_gather(element: &Element, problems: &mut Vec<String>) -> Gather {
    known_attributes(element, GATHER_ATTRIBUTES, problems);
    let input = element.attribute("input").unwrap_or("dtmf");
    let kinds: Vec<&str> = input.split_whitespace().collect();
    if kinds.is_empty() || kinds.iter().any(|k| !matches!(*k, "dtmf" | "speech")) {
        problems.push(format!(
            "<Gather input={input:?}> is not dtmf, speech or dtmf speech"
        ));
    }
    let finish_on_key = match element.attribute("finishOnKey") {
        None => Some('#'),
        Some("") => None,
        Some(key) if key.len() == 1 && "0123456789#*".contains(key) => key.chars().next(),
        Some(other) => {
            problems.push(format!(
                "<Gather finishOnKey={other:?}> is not one key of 0-9, # and *, or empty"
            ));
            Some('#')
        }
    };
    if let Some(timeout) = element.attribute("speechTimeout") {
        if timeout != "auto" && timeout.parse::<u64>().is_err() {
            problems.push(format!(
                "<Gather speechTimeout={timeout:?}> is not a whole number or auto"
            ));
        }
    }
    if let Some(action) = element.attribute("action") {
        twiml_url(element, action, problems);
    }
    if let Some(callback) = element.attribute("partialResultCallback") {
        twiml_url(element, callback, problems);
    }
    method(element, "partialResultCallbackMethod", problems);
    language(element, problems);
    for name in [
        "actionOnEmptyResult",
        "bargeIn",
        "debug",
        "dtmfDetection",
        "enhanced",
        "profanityFilter",
    ] {
        flag(element, name, problems);
    }
    whole(element, "maxSpeechTime", 1, problems);
    let prompts = read_verbs(element, true, problems);
    Gather {
        attributes: element.attributes.clone(),
        dtmf: kinds.contains(&"dtmf"),
        speech: kinds.contains(&"speech"),
        action: element.attribute("action").map(str::to_owned),
        method: method(element, "method", problems),
        timeout: whole(element, "timeout", 1, problems).unwrap_or(5),
        num_digits: whole(element, "numDigits", 1, problems).map(|n| n as usize),
        finish_on_key,
        action_on_empty_result: flag(element, "actionOnEmptyResult", problems).unwrap_or(false),
        prompts,
    }
}

fn read_dial(element: &Element, problems: &mut Vec<String>) -> Option<Dialled> {
    known_attributes(element, DIAL_ATTRIBUTES, problems);
    if let Some(action) = element.attribute("action") {
        twiml_url(element, action, problems);
    }
    method(element, "method", problems);
    whole(element, "timeout", 1, problems);
    whole(element, "timeLimit", 1, problems);
    let mut targets = Vec::new();
    if element.has_text() {
        targets.push(Dialled::Number(element.text()));
    }
    for inner in element.elements() {
        match inner.name.as_str() {
            "Number" => {
                let mut known = ENDPOINT_ATTRIBUTES.to_vec();
                known.extend(["sendDigits", "byoc"]);
                known_attributes(inner, &known, problems);
                targets.push(Dialled::Number(inner.text()));
            }
            "Sip" => {
                let mut known = ENDPOINT_ATTRIBUTES.to_vec();
                known.extend(["username", "password"]);
                known_attributes(inner, &known, problems);
                targets.push(Dialled::Sip(inner.text()));
            }
            other => problems.push(format!(
                "<Dial> holds <{other}>: the fake dials <Number> and <Sip>"
            )),
        }
    }
    for target in &targets {
        match target {
            Dialled::Number(n) if !is_e164(n) => {
                problems.push(format!("<Dial> dials {n:?}, which is not +E164"))
            }
            Dialled::Sip(uri) if !is_sip_uri(uri) => {
                problems.push(format!("<Sip> {uri:?} is not a sip: URI"))
            }
            _ => {}
        }
    }
    if targets.is_empty() {
        problems.push("<Dial> dials nothing".into());
    }
    // Twilio rings them all and connects the first to answer: the first.
    targets.into_iter().next()
}

// ---- Playing a call -------------------------------------------------------

/// How long Twilio waits for TwiML (its default timeout).
const TWIML_DEADLINE: Duration = WEBHOOK_DEADLINE;

/// How many TwiML documents one call may go through, so that a loop of
/// redirects ends.
const MAX_DOCUMENTS: usize = 100;

/// What a call does next.
enum Next {
    /// Fetches TwiML and plays it.
    Fetch {
        url: String,
        method: String,
        /// Parameters besides the call's own (a `<Gather>`'s input).
        extra: Form,
        what: &'static str,
    },
    /// Plays these verbs, read from a document at `url` (`None` for
    /// TwiML given in a request).
    Play {
        verbs: Vec<Verb>,
        url: Option<String>,
    },
    Hangup,
}

/// One call being played.
struct Call {
    shared: Arc<Shared>,
    sid: String,
    to: String,
    from: String,
    request: Form,
    /// The progress events herald asked for.
    events: Vec<String>,
    /// How many status callbacks were sent.
    sequence: u32,
    status: &'static str,
    answered_by: Option<String>,
    answered_at: Option<Instant>,
    controls: mpsc::UnboundedReceiver<Control>,
    /// New TwiML herald gave before the call was answered.
    pending: Option<Control>,
    /// How many TwiML documents were fetched.
    documents: usize,
}

impl Call {
    fn param(&self, name: &str) -> Option<&str> {
        first(&self.request, name)
    }

    fn update(&self, change: impl FnOnce(&mut Placed)) {
        self.shared.voice.update(&self.sid, change);
    }

    fn set_status(&mut self, status: &'static str) {
        self.status = status;
        self.update(|c| c.summary.status = status.to_owned());
    }

    /// Whether `AnsweredBy` goes with the call's requests: machine
    /// detection that holds the call until it knows.
    fn detects_in_line(&self) -> bool {
        self.param("MachineDetection").is_some() && self.param("AsyncAmd") != Some("true")
    }

    /// The parameters of every request about the call.
    fn call_params(&self, status: &str) -> Form {
        let mut params = pairs(&[
            ("CallSid", &self.sid),
            ("AccountSid", &self.shared.account_sid),
            ("From", &self.from),
            ("To", &self.to),
            ("CallStatus", status),
            ("ApiVersion", API_VERSION),
            ("Direction", "outbound-api"),
        ]);
        if let (Some(answered_by), true) = (&self.answered_by, self.detects_in_line()) {
            params.push(("AnsweredBy".into(), answered_by.clone()));
        }
        params
    }

    /// Posts a progress event to `StatusCallback`, if herald asked for it.
    async fn progress(&mut self, event: &str, status: &str, extra: Form) {
        let Some(url) = self.param("StatusCallback").map(str::to_owned) else {
            return;
        };
        if !self.events.iter().any(|e| e == event) {
            return;
        }
        let mut params = self.call_params(status);
        params.extend(pairs(&[
            ("CallbackSource", "call-progress-events"),
            ("SequenceNumber", &self.sequence.to_string()),
            ("Timestamp", &rfc2822(Utc::now())),
        ]));
        params.extend(extra);
        self.sequence += 1;
        let method = self
            .param("StatusCallbackMethod")
            .unwrap_or("POST")
            .to_owned();
        match send_webhook(&self.shared, &url, &method, &params, None, WEBHOOK_DEADLINE).await {
            Ok(reply) if (200..300).contains(&reply.status) => {}
            Ok(reply) => self.shared.problem(format!(
                "the status callback answered {} to {event} of {}",
                reply.status, self.sid
            )),
            Err(e) => self
                .shared
                .problem(format!("the status callback of {}: {e}", self.sid)),
        }
    }

    /// Takes the changes herald asked for before the call was answered:
    /// whether one ends it (new TwiML waits for the answer).
    fn stopped_early(&mut self) -> bool {
        while let Ok(control) = self.controls.try_recv() {
            match control {
                Control::Hangup | Control::Cancel => return true,
                other => self.pending = Some(other),
            }
        }
        false
    }

    async fn play(mut self) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let fate = lock(&self.shared.voice.fates)
            .get(number(&self.to))
            .copied()
            .unwrap_or_default();
        if fate == CallFate::Silent {
            return;
        }
        self.progress("initiated", "initiated", Vec::new()).await;
        if self.stopped_early() {
            return self.end("canceled", Some(487)).await;
        }
        if let CallFate::Unanswered(status, code) = fate {
            if status != "busy" && (status != "failed" || code.is_some()) {
                self.set_status("ringing");
                self.progress("ringing", "ringing", Vec::new()).await;
            }
            let status = match status {
                "busy" => "busy",
                "no-answer" => "no-answer",
                "canceled" => "canceled",
                "failed" => "failed",
                other => panic!("{other:?} is not how Twilio says a call went unanswered"),
            };
            let code = code.or(match status {
                "busy" => Some(486),
                "no-answer" | "canceled" => Some(487),
                _ => None,
            });
            return self.end(status, code).await;
        }
        self.set_status("ringing");
        self.progress("ringing", "ringing", Vec::new()).await;
        if self.stopped_early() {
            return self.end("canceled", Some(487)).await;
        }
        if let Some(detection) = self.param("MachineDetection") {
            let answered_by = match (fate, detection) {
                (CallFate::Machine, "DetectMessageEnd") => "machine_end_beep",
                (CallFate::Machine, _) => "machine_start",
                (CallFate::Fax, _) => "fax",
                _ => "human",
            };
            self.answered_by = Some(answered_by.to_owned());
            self.update(|c| c.summary.answered_by = Some(answered_by.to_owned()));
        }
        self.answered_at = Some(Instant::now());
        self.update(|c| c.started = Some(Utc::now()));
        self.set_status("in-progress");
        self.progress("answered", "in-progress", Vec::new()).await;
        if self.param("AsyncAmd") == Some("true") {
            self.report_detection();
        }
        let person = fate == CallFate::Answer;
        let first = if let Some(control) = self.pending.take() {
            self.obey(control)
        } else if let Some(twiml) = self.param("Twiml") {
            match read_twiml(twiml) {
                // Its problems were noted when the call was placed.
                Ok((verbs, _)) => Next::Play { verbs, url: None },
                Err(_) => Next::Hangup,
            }
        } else if let Some(url) = self.param("Url") {
            Next::Fetch {
                url: url.to_owned(),
                method: self.param("Method").unwrap_or("POST").to_owned(),
                extra: Vec::new(),
                what: "answer",
            }
        } else {
            self.shared.problem(format!(
                "{}: a call of a TwiML application, which the fake cannot play",
                self.sid
            ));
            Next::Hangup
        };
        self.run(first, person).await;
        self.end("completed", Some(200)).await;
    }

    /// Posts the answer of machine detection run beside the call
    /// (`AsyncAmd`) to `AsyncAmdStatusCallback`, a moment after the answer.
    fn report_detection(&self) {
        let Some(url) = self.param("AsyncAmdStatusCallback").map(str::to_owned) else {
            return;
        };
        let method = self
            .param("AsyncAmdStatusCallbackMethod")
            .unwrap_or("POST")
            .to_owned();
        let params = pairs(&[
            ("CallSid", &self.sid),
            ("AccountSid", &self.shared.account_sid),
            (
                "AnsweredBy",
                self.answered_by.as_deref().unwrap_or("unknown"),
            ),
            ("MachineDetectionDuration", "1800"),
        ]);
        let shared = self.shared.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            match send_webhook(&shared, &url, &method, &params, None, WEBHOOK_DEADLINE).await {
                Ok(reply) if (200..300).contains(&reply.status) => {}
                Ok(reply) => shared.problem(format!(
                    "the machine detection callback answered {}",
                    reply.status
                )),
                Err(e) => shared.problem(format!("the machine detection callback: {e}")),
            }
        });
    }

    /// Plays TwiML, document after document, until the call ends.
    async fn run(&mut self, mut next: Next, person: bool) {
        loop {
            let (verbs, url) = match next {
                Next::Hangup => return,
                Next::Play { verbs, url } => (verbs, url),
                Next::Fetch {
                    url,
                    method,
                    extra,
                    what,
                } => {
                    self.documents += 1;
                    if self.documents > MAX_DOCUMENTS {
                        self.shared.problem(format!(
                            "{} went through {MAX_DOCUMENTS} TwiML documents: a loop?",
                            self.sid
                        ));
                        return;
                    }
                    match self.fetch(&url, &method, extra, what).await {
                        Some(verbs) => (verbs, Some(url)),
                        None => return,
                    }
                }
            };
            next = self.perform(verbs, url, person).await;
        }
    }

    /// Asks herald for TwiML, within Twilio's deadline; the verbs to play,
    /// or `None` (a problem) when Twilio could not have read any: it would
    /// say an application error occurred and hang up.
    async fn fetch(
        &mut self,
        url: &str,
        method: &str,
        extra: Form,
        what: &'static str,
    ) -> Option<Vec<Verb>> {
        let mut params = self.call_params(self.status);
        params.extend(extra);
        let asked = Instant::now();
        let reply = send_webhook(&self.shared, url, method, &params, None, TWIML_DEADLINE).await;
        lock(&self.shared.voice.turns).push((what, asked.elapsed()));
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) => {
                self.shared.problem(format!("the {what} TwiML: {e}"));
                return None;
            }
        };
        if asked.elapsed() > TWIML_DEADLINE {
            self.shared.problem(format!(
                "the {what} TwiML took {:?}, past Twilio's 15 s",
                asked.elapsed()
            ));
        }
        if reply.status != 200 {
            self.shared.problem(format!(
                "the {what} TwiML at {url} answered {}",
                reply.status
            ));
            return None;
        }
        if !is_xml(&reply.content_type) {
            self.shared.problem(format!(
                "the {what} TwiML at {url} is sent as {:?}, not text/xml or application/xml",
                reply.content_type
            ));
        }
        match read_twiml(&reply.body) {
            Ok((verbs, problems)) => {
                self.shared
                    .problems(&format!("the {what} TwiML at {url}"), problems);
                Some(verbs)
            }
            Err(e) => {
                self.shared.problem(format!(
                    "the {what} TwiML at {url} does not read: {e}: {:?}",
                    reply.body
                ));
                None
            }
        }
    }

    /// What a change herald asked for makes the call do.
    fn obey(&self, control: Control) -> Next {
        match control {
            Control::Twiml(twiml) => match read_twiml(&twiml) {
                // Its problems were noted when herald sent it.
                Ok((verbs, _)) => Next::Play { verbs, url: None },
                Err(_) => Next::Hangup,
            },
            Control::Redirect { url, method } => Next::Fetch {
                url,
                method,
                extra: Vec::new(),
                what: "update",
            },
            Control::Hangup | Control::Cancel => Next::Hangup,
        }
    }

    /// Resolves a URL of a document at `base`, as Twilio does.
    fn resolve(&self, base: Option<&str>, url: &str) -> String {
        if url::Url::parse(url).is_ok() {
            return url.to_owned();
        }
        match base.and_then(|b| url::Url::parse(b).ok()) {
            Some(base) => base.join(url).map(|u| u.to_string()).unwrap_or_default(),
            None => {
                self.shared.problem(format!(
                    "{}: relative URL {url:?} in TwiML that came with no URL",
                    self.sid
                ));
                url.to_owned()
            }
        }
    }

    /// Waits `time`, unless herald changes the call meanwhile.
    async fn wait(&mut self, time: Duration) -> Option<Control> {
        tokio::select! {
            control = self.controls.recv() => control,
            _ = tokio::time::sleep(time) => None,
        }
    }

    /// Plays a document's verbs; what the call does after them.
    async fn perform(&mut self, verbs: Vec<Verb>, url: Option<String>, person: bool) -> Next {
        for verb in verbs {
            if let Ok(control) = self.controls.try_recv() {
                return self.obey(control);
            }
            match verb {
                Verb::Say(text) => self.say(text).await,
                Verb::Pause(seconds) => {
                    if let Some(control) = self.wait(Duration::from_secs(seconds)).await {
                        return self.obey(control);
                    }
                }
                Verb::Gather(gather) => {
                    // Seen from its start, so a test can tell what the call
                    // waits for.
                    let prompts = gather
                        .prompts
                        .iter()
                        .filter_map(|prompt| match prompt {
                            Verb::Say(text) => Some(text.clone()),
                            _ => None,
                        })
                        .collect();
                    let seen = GatherSeen {
                        attributes: gather.attributes.clone(),
                        prompts,
                        answer: None,
                    };
                    self.update(|c| c.summary.gathers.push(seen));
                    for prompt in &gather.prompts {
                        match prompt {
                            Verb::Say(text) => self.say(text.clone()).await,
                            Verb::Pause(seconds) => {
                                if let Some(control) =
                                    self.wait(Duration::from_secs(*seconds)).await
                                {
                                    return self.obey(control);
                                }
                            }
                            _ => {}
                        }
                    }
                    let input = match self.listen(&gather, person).await {
                        Ok(input) => input,
                        Err(control) => return self.obey(control),
                    };
                    let (answer, extra) = match input {
                        Some(Input::Keys(keys)) if gather.dtmf => {
                            let (digits, finished_on) = gather.cut(&keys);
                            let mut extra = pairs(&[("Digits", &digits)]);
                            if let Some(key) = finished_on {
                                extra.push(("FinishedOnKey".into(), key.to_string()));
                            }
                            (Some(digits), Some(extra))
                        }
                        Some(Input::Speech(words)) if gather.speech => {
                            let extra =
                                pairs(&[("SpeechResult", &words), ("Confidence", "0.9234")]);
                            (Some(words), Some(extra))
                        }
                        // Nothing it listens for.
                        _ => (None, gather.action_on_empty_result.then(Vec::new)),
                    };
                    self.update(|c| {
                        if let Some(seen) = c.summary.gathers.last_mut() {
                            seen.answer = answer;
                        }
                    });
                    if let Some(extra) = extra {
                        let action = match &gather.action {
                            Some(action) => self.resolve(url.as_deref(), action),
                            None => match &url {
                                Some(url) => url.clone(),
                                None => {
                                    self.shared.problem(format!(
                                        "{}: a <Gather> without an action in TwiML that \
                                         came with no URL",
                                        self.sid
                                    ));
                                    return Next::Hangup;
                                }
                            },
                        };
                        return Next::Fetch {
                            url: action,
                            method: gather.method,
                            extra,
                            what: "gather",
                        };
                    }
                    // Heard nothing: on to the verb after the <Gather>.
                }
                Verb::Redirect { url: to, method } => {
                    return Next::Fetch {
                        url: self.resolve(url.as_deref(), &to),
                        method,
                        extra: Vec::new(),
                        what: "redirect",
                    };
                }
                Verb::Dial(dialled) => {
                    self.update(|c| c.summary.dialled = Some(dialled));
                    return Next::Hangup;
                }
                Verb::Hangup => return Next::Hangup,
            }
        }
        // The document ran out: Twilio hangs up, unless herald changed the
        // call just now.
        match self.controls.try_recv() {
            Ok(control) => self.obey(control),
            Err(_) => Next::Hangup,
        }
    }

    async fn say(&self, text: String) {
        self.update(|c| c.summary.said.push(text));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    /// Waits for the person's input at a `<Gather>` (none from a machine)
    /// for its timeout, unless herald changes the call meanwhile.
    async fn listen(&mut self, gather: &Gather, person: bool) -> Result<Option<Input>, Control> {
        let until = Instant::now() + Duration::from_secs(gather.timeout);
        loop {
            let answered = self.shared.voice.answered.notified();
            if person {
                if let Some(input) = self.shared.voice.next_input(&self.to) {
                    return Ok(Some(input));
                }
            }
            tokio::select! {
                _ = answered => {}
                control = self.controls.recv() => match control {
                    Some(control) => return Err(control),
                    None => {
                        tokio::time::sleep_until(until).await;
                        return Ok(None);
                    }
                },
                _ = tokio::time::sleep_until(until) => return Ok(None),
            }
        }
    }

    /// The call is over, with this status and SIP response code.
    async fn end(&mut self, status: &'static str, code: Option<u16>) {
        lock(&self.shared.voice.controls).remove(&self.sid);
        let duration = self
            .answered_at
            .map(|at| at.elapsed().as_secs())
            .unwrap_or(0);
        let mut extra = pairs(&[("CallDuration", &duration.to_string())]);
        if let Some(code) = code {
            extra.push(("SipResponseCode".into(), code.to_string()));
        }
        self.status = status;
        self.progress("completed", status, extra).await;
        self.update(|c| {
            c.summary.status = status.to_owned();
            c.summary.ended = true;
            c.finished = Some(Utc::now());
        });
    }
}

impl Gather {
    /// The digits Twilio posts of keys pressed: up to the finishing key
    /// (and which it was), or the first `numDigits`.
    fn cut(&self, keys: &str) -> (String, Option<char>) {
        let mut digits = String::new();
        for key in keys.chars() {
            if Some(key) == self.finish_on_key {
                return (digits, Some(key));
            }
            digits.push(key);
            if self.num_digits == Some(digits.len()) {
                break;
            }
        }
        (digits, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_small_document() {
        let (verbs, problems) = read_twiml(
            r#"<?xml version="1.0" encoding="UTF-8"?>
            <Response>
              <Say voice="Polly.Amy" language="en-GB">Your order
                 is <emphasis>ready</emphasis>.</Say>
              <Pause length="2"/>
              <Gather input="dtmf speech" action="https://herald.example.com/g?s=1&amp;t=2"
                      method="POST" timeout="4" numDigits="1" speechTimeout="auto"
                      language="en-GB" hints="yes, no">
                <Say>Press 1 or say yes</Say>
              </Gather>
              <Redirect method="POST">/again</Redirect>
              <Dial><Sip>sip:desk@pbx.example.com</Sip></Dial>
              <Hangup/>
            </Response>"#,
        )
        .expect("it reads");
        assert_eq!(problems, Vec::<String>::new());
        assert_eq!(verbs[0], Verb::Say("Your order is ready.".into()));
        assert_eq!(verbs[1], Verb::Pause(2));
        let Verb::Gather(gather) = &verbs[2] else {
            panic!("{:?} is no Gather", verbs[2]);
        };
        assert!(gather.dtmf && gather.speech);
        assert_eq!(
            gather.action.as_deref(),
            Some("https://herald.example.com/g?s=1&t=2")
        );
        assert_eq!((gather.timeout, gather.num_digits), (4, Some(1)));
        assert_eq!(gather.prompts, [Verb::Say("Press 1 or say yes".into())]);
        assert_eq!(
            verbs[3],
            Verb::Redirect {
                url: "/again".into(),
                method: "POST".into()
            }
        );
        assert_eq!(
            verbs[4],
            Verb::Dial(Dialled::Sip("sip:desk@pbx.example.com".into()))
        );
        assert_eq!(verbs[5], Verb::Hangup);
    }

    #[test]
    fn unknown_verbs_and_attributes_are_problems() {
        let (verbs, problems) = read_twiml(
            r#"<Response><Play>https://x.example/a.mp3</Play><Shout>hi</Shout>
               <Say tone="loud">Hi</Say><Gather input="keys" timeout="0"><Hangup/></Gather>
               <Dial>07700900123</Dial></Response>"#,
        )
        .expect("it reads");
        assert_eq!(
            problems,
            [
                "<Play> is a TwiML verb the fake does not play, nor herald should need",
                "<Shout> is not a TwiML voice verb",
                "<Say> has no attribute tone",
                "<Gather input=\"keys\"> is not dtmf, speech or dtmf speech",
                "<Gather> holds <Hangup>: it may hold <Say>, <Play> and <Pause>",
                "<Gather timeout=\"0\"> is not a whole number from 1",
                "<Dial> dials \"07700900123\", which is not +E164",
            ]
        );
        assert_eq!(verbs.len(), 3);
    }

    #[test]
    fn a_document_that_does_not_read_is_refused() {
        assert!(read_twiml("<Response><Say>Hi</Response>").is_err());
        assert!(read_twiml("<Speak>Hi</Speak>").is_err());
        assert!(read_twiml("Hello").is_err());
        assert!(read_twiml("<Response>&nbsp;</Response>").is_err());
        assert!(read_twiml("<Response/>").is_ok_and(|(verbs, p)| verbs.is_empty() && p.is_empty()));
    }

    #[test]
    fn keys_are_cut_as_twilio_cuts_them() {
        let (verbs, _) =
            read_twiml(r#"<Response><Gather numDigits="2"/><Gather finishOnKey=""/></Response>"#)
                .unwrap();
        let [Verb::Gather(two), Verb::Gather(open)] = verbs.as_slice() else {
            panic!("{verbs:?}");
        };
        assert_eq!(two.cut("12#"), ("12".into(), None));
        assert_eq!(two.cut("1#"), ("1".into(), Some('#')));
        assert_eq!(open.cut("123#"), ("123#".into(), None));
    }

    #[test]
    fn calls_are_checked_against_the_specification() {
        let good = pairs(&[
            ("To", "+447700900123"),
            ("From", "+447700900999"),
            ("Url", "https://herald.example.com/providers/c1/voice"),
            (
                "StatusCallback",
                "https://herald.example.com/providers/c1/voice_status",
            ),
            ("StatusCallbackEvent", "initiated"),
            ("StatusCallbackEvent", "answered"),
            ("MachineDetection", "Enable"),
            ("Timeout", "45"),
        ]);
        assert_eq!(check_call(&good), Vec::<String>::new());
        let bad = pairs(&[
            ("To", "sip:desk@pbx.example.com"),
            ("From", "+447700900999"),
            ("Url", "https://herald.example.com/voice"),
            ("Twiml", "<Response><Say>Hi</Say></Response>"),
            ("StatusCallbackEvent", "hungup"),
            ("MachineDetection", "enable"),
            ("Timeout", "soon"),
            ("Timeout", "30"),
        ]);
        assert_eq!(
            check_call(&bad),
            [
                "StatusCallbackEvent \"hungup\" is not one of initiated, ringing, answered, completed",
                "MachineDetection \"enable\" is not one of Enable, DetectMessageEnd",
                "Timeout \"soon\" is not a whole number from 1 to 600",
                "Timeout is given more than once",
                "both Url and Twiml (Twilio ignores Twiml)",
                "StatusCallbackEvent without StatusCallback",
            ]
        );
        assert_eq!(
            check_update(&pairs(&[("Status", "done")])),
            ["Status \"done\" is not one of canceled, completed",]
        );
    }
}

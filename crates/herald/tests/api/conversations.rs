//! Whole conversations over HTTP through the simulator: an agent asks, the
//! test plays the person through `POST /simulator/inbound`, and the session's
//! transcript shows what was said, in order. Also inbound sessions, timers
//! that outlive a restart, live agents, webhooks, and flows refused at
//! publish.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use herald_core::secret::Secret;
use herald_core::Channel;
use serde_json::{json, Value};

use crate::helpers::*;

/// A person the simulator lets every message reach: a unique number whose
/// last two digits are not one of the simulator's failures (90 to 95).
pub(crate) fn person() -> String {
    loop {
        let number = unique_number();
        if !(90..=95).contains(&number[number.len() - 2..].parse::<u8>().unwrap()) {
            return number;
        }
    }
}

/// A published agent of `channel` running `flow`; returns (key, agent, number).
pub(crate) async fn agent_with_flow(
    app: &TestApp,
    channel: Channel,
    flow: Value,
) -> (String, String, String) {
    let key = app.new_key(&format!("conv-{}", unique_number())).await;
    let number = unique_number();
    let response = app
        .post(
            "/agents",
            &key,
            json!({"name": "conversation", "type": channel, "number": number, "flow": flow}),
        )
        .await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 201, "creating the agent: {body}");
    let agent = body["agent_id"].as_str().unwrap().to_owned();
    let published = app
        .post(&format!("/agents/{agent}/publish"), &key, json!({}))
        .await;
    assert_eq!(published.status(), 200);
    (key, agent, number)
}

pub(crate) async fn trigger_sms(
    app: &TestApp,
    key: &str,
    agent: &str,
    to: &str,
    params: Value,
) -> String {
    let response = app
        .post(
            "/messaging/conversation",
            key,
            json!({"agent_id": agent, "to": to, "channel": "sms", "session_parameters": params}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["session_id"].as_str().unwrap().to_owned()
}

/// The person's side of a conversation: what they say goes from `number`
/// to the agent's number through the simulator.
pub(crate) struct Person<'a> {
    app: &'a TestApp,
    key: &'a str,
    channel: &'static str,
    number: &'a str,
    agent_number: &'a str,
}

impl<'a> Person<'a> {
    pub(crate) fn new(
        app: &'a TestApp,
        key: &'a str,
        channel: &'static str,
        number: &'a str,
        agent_number: &'a str,
    ) -> Self {
        Person {
            app,
            key,
            channel,
            number,
            agent_number,
        }
    }

    /// A message.
    pub(crate) async fn says(&self, text: &str) -> Value {
        self.sends(json!({ "text": text })).await
    }

    /// Any input: `{"text"}`, or on voice `{"digits"}` or `{"speech"}`.
    async fn sends(&self, input: Value) -> Value {
        let mut body =
            json!({"channel": self.channel, "from": self.number, "to": self.agent_number});
        body.as_object_mut()
            .unwrap()
            .extend(input.as_object().unwrap().clone());
        let response = self.app.post("/simulator/inbound", self.key, body).await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 200, "delivering an input: {body}");
        body
    }
}

pub(crate) async fn transcript(app: &TestApp, key: &str, id: &str) -> Value {
    let response = app.get(&format!("/sessions/{id}/transcript"), key).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// The agent's messages (or spoken lines) so far.
pub(crate) fn said_by_agent(t: &Value) -> Vec<String> {
    messages(t, "outbound")
}

pub(crate) fn messages(t: &Value, direction: &str) -> Vec<String> {
    t["transcript"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "message" && e["direction"] == direction)
        .map(|e| e["text"].as_str().unwrap().to_owned())
        .collect()
}

/// Waits until the agent has said `n` things; returns the transcript.
pub(crate) async fn wait_for_agent_lines(app: &TestApp, key: &str, id: &str, n: usize) -> Value {
    for _ in 0..400 {
        let t = transcript(app, key, id).await;
        if said_by_agent(&t).len() >= n {
            return t;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "the agent did not say {n} things: {}",
        transcript(app, key, id).await
    );
}

/// Waits until the session is asleep waiting (its job not leased), so that
/// what follows really wakes it from the store.
pub(crate) async fn wait_until_waiting(app: &TestApp, id: &str) {
    for _ in 0..400 {
        let asleep = app
            .db()
            .await
            .count(
                "SELECT COUNT(*) FROM dispatch_jobs WHERE session_id = $1 AND lease_until = 0",
                &[id],
            )
            .await;
        if asleep == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("session {id} never went to sleep waiting");
}

pub(crate) fn question_flow() -> Value {
    json!({
        "format": 1,
        "start": "ask",
        "parameters": [{"name": "NAME", "default": "there"}],
        "nodes": [
            {"id": "ask", "type": "collect_input", "prompt": "Hi $NAME, can you come on Friday?",
             "entity": "yes_no", "parameter": "ANSWER", "retries": 1,
             "retry_prompt": "Please answer yes or no.",
             "success": "check", "invalid": "confused", "no_input": "silent"},
            {"id": "check", "type": "conditions",
             "branches": [{"rules": [{"parameter": "ANSWER", "op": "eq", "value": "yes"}], "next": "great"}],
             "default": "sorry"},
            {"id": "great", "type": "send_message", "text": "Great, see you Friday.", "next": "end"},
            {"id": "sorry", "type": "send_message", "text": "Sorry to hear that.", "next": "end"},
            {"id": "confused", "type": "send_message", "text": "We will call you instead.", "next": "end"},
            {"id": "silent", "type": "send_message", "text": "No answer, goodbye.", "next": "end"},
            {"id": "end", "type": "end"}
        ]
    })
}

#[tokio::test]
async fn a_reply_takes_the_conversation_down_its_branch() {
    let app = TestApp::spawn().await;
    let (key, agent, number) = agent_with_flow(&app, Channel::Sms, question_flow()).await;
    let person = person();
    let id = trigger_sms(
        &app,
        &key,
        &agent,
        &person,
        json!([{"name": "NAME", "value": "Ada"}]),
    )
    .await;

    let t = wait_for_agent_lines(&app, &key, &id, 1).await;
    assert_eq!(said_by_agent(&t), ["Hi Ada, can you come on Friday?"]);
    wait_until_waiting(&app, &id).await;
    let you = Person::new(&app, &key, "sms", &person, &number);
    let delivered = you.says("Yes please").await;
    assert_eq!(delivered["session_id"], id.as_str());
    assert_eq!(delivered["started"], false);

    let session = app.ended_session(&key, &id).await;
    assert_eq!(session["outcome"], "completed");
    let t = transcript(&app, &key, &id).await;
    assert_eq!(
        said_by_agent(&t),
        ["Hi Ada, can you come on Friday?", "Great, see you Friday."]
    );
    assert_eq!(messages(&t, "inbound"), ["Yes please"]);
    // Nodes and parameter changes are in the transcript, in order.
    let kinds: Vec<String> = t["transcript"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| match e["type"].as_str().unwrap() {
            "node" => format!("node {}", e["node"].as_str().unwrap()),
            "parameter" => format!(
                "{}={}",
                e["name"].as_str().unwrap(),
                e["value"].as_str().unwrap()
            ),
            "message" => format!(
                "{} {}",
                e["direction"].as_str().unwrap(),
                e["text"].as_str().unwrap()
            ),
            other => other.to_owned(),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "node ask",
            "outbound Hi Ada, can you come on Friday?",
            "inbound Yes please",
            "LAST_INPUT=Yes please",
            "ANSWER=yes",
            "node check",
            "node great",
            "outbound Great, see you Friday.",
            "node end",
        ]
    );
}

#[tokio::test]
async fn answers_not_understood_are_asked_again_then_leave_by_invalid() {
    let app = TestApp::spawn().await;
    let (key, agent, number) = agent_with_flow(&app, Channel::Sms, question_flow()).await;
    let person = person();
    let id = trigger_sms(&app, &key, &agent, &person, json!([])).await;

    wait_for_agent_lines(&app, &key, &id, 1).await;
    let you = Person::new(&app, &key, "sms", &person, &number);
    you.says("banana").await;
    let t = wait_for_agent_lines(&app, &key, &id, 2).await;
    assert_eq!(said_by_agent(&t)[1], "Please answer yes or no.");
    you.says("maybe").await;

    app.ended_session(&key, &id).await;
    let t = transcript(&app, &key, &id).await;
    assert_eq!(
        said_by_agent(&t),
        [
            "Hi there, can you come on Friday?",
            "Please answer yes or no.",
            "We will call you instead."
        ]
    );
}

#[tokio::test]
async fn a_conversation_survives_a_restart_in_the_middle() {
    let mut app = TestApp::spawn().await;
    let (key, agent, number) = agent_with_flow(&app, Channel::Sms, question_flow()).await;
    let person = person();
    let id = trigger_sms(&app, &key, &agent, &person, json!([])).await;
    wait_for_agent_lines(&app, &key, &id, 1).await;
    wait_until_waiting(&app, &id).await;

    app.restart().await;
    let you = Person::new(&app, &key, "sms", &person, &number);
    you.says("no").await;

    let session = app.ended_session(&key, &id).await;
    assert_eq!(session["outcome"], "completed");
    let t = transcript(&app, &key, &id).await;
    assert_eq!(
        said_by_agent(&t),
        ["Hi there, can you come on Friday?", "Sorry to hear that."]
    );
}

#[tokio::test]
async fn a_timeout_fires_after_a_restart_and_leaves_by_no_input() {
    let mut app = TestApp::spawn().await;
    let mut flow = question_flow();
    flow["nodes"][0]["timeout_secs"] = json!(1);
    let (key, agent, _) = agent_with_flow(&app, Channel::Sms, flow).await;
    let id = trigger_sms(&app, &key, &agent, &person(), json!([])).await;
    wait_for_agent_lines(&app, &key, &id, 1).await;
    wait_until_waiting(&app, &id).await;

    // Nothing of the wait is in memory: a new server finds the timer.
    app.stop().await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    app.restart().await;

    app.ended_session(&key, &id).await;
    let t = transcript(&app, &key, &id).await;
    assert_eq!(said_by_agent(&t).last().unwrap(), "No answer, goodbye.");
}

#[tokio::test]
async fn a_session_ends_when_its_lifetime_runs_out() {
    let app = TestApp::spawn().await;
    let mut flow = question_flow();
    flow["max_duration_secs"] = json!(1);
    let (key, agent, _) = agent_with_flow(&app, Channel::Sms, flow).await;
    let id = trigger_sms(&app, &key, &agent, &person(), json!([])).await;
    let session = app.ended_session(&key, &id).await;
    assert_eq!(session["outcome"], "completed");
    let ended = session["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "ended")
        .unwrap();
    assert_eq!(ended["reason"], "expired");
}

#[tokio::test]
async fn voice_input_comes_as_digits_or_speech() {
    let app = TestApp::spawn().await;
    let flow = json!({
        "format": 1,
        "start": "menu",
        "nodes": [
            {"id": "menu", "type": "collect_input", "prompt": "Press a number from 1 to 9.",
             "entity": "number", "parameter": "CHOICE",
             "success": "said", "invalid": "end", "no_input": "end"},
            {"id": "said", "type": "speak", "text": "You chose $CHOICE.", "next": "again"},
            {"id": "again", "type": "collect_input", "prompt": "Say it again.",
             "entity": "number", "parameter": "CHOICE",
             "success": "bye", "invalid": "end", "no_input": "end"},
            {"id": "bye", "type": "speak", "text": "Now $CHOICE. Goodbye.", "next": "end"},
            {"id": "end", "type": "end"}
        ]
    });
    let (key, agent, number) = agent_with_flow(&app, Channel::Voice, flow).await;
    let person = person();
    let response = app
        .post(
            "/telephony/make-call",
            &key,
            json!({"agent_id": agent, "to": person}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let id = response.json::<Value>().await.unwrap()["session_id"]
        .as_str()
        .unwrap()
        .to_owned();

    wait_for_agent_lines(&app, &key, &id, 1).await;
    let you = Person::new(&app, &key, "voice", &person, &number);
    you.sends(json!({"digits": "7"})).await;
    wait_for_agent_lines(&app, &key, &id, 3).await;
    you.sends(json!({"speech": "eight"})).await;

    app.ended_session(&key, &id).await;
    let t = transcript(&app, &key, &id).await;
    assert_eq!(
        said_by_agent(&t),
        [
            "Press a number from 1 to 9.",
            "You chose 7.",
            "Say it again.",
            "Now 8. Goodbye."
        ]
    );
    let inputs: Vec<&str> = t["transcript"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["direction"] == "inbound")
        .map(|e| e["input"].as_str().unwrap())
        .collect();
    assert_eq!(inputs, ["dtmf", "speech"]);

    // Text is not a voice input, and no call is open any more.
    let response = app
        .post(
            "/simulator/inbound",
            &key,
            json!({"channel": "voice", "from": person, "to": number, "text": "hi"}),
        )
        .await;
    assert_error(
        response,
        400,
        "A voice input has exactly one of: digits, speech",
    )
    .await;
    let response = app
        .post(
            "/simulator/inbound",
            &key,
            json!({"channel": "voice", "from": person, "to": number, "digits": "1"}),
        )
        .await;
    assert_error(response, 404, &format!("No call with {person} is open")).await;
}

#[tokio::test]
async fn a_message_with_no_open_session_starts_an_inbound_one() {
    let app = TestApp::spawn().await;
    let flow = json!({
        "format": 1,
        "start": "route",
        "inbound": {"accept": true},
        "nodes": [
            {"id": "route", "type": "classify", "input": "$LAST_INPUT",
             "intents": [
                {"name": "hours", "examples": ["when are you open", "opening hours"], "next": "hours"},
                {"name": "price", "examples": ["how much does it cost", "price"], "next": "price"}
             ],
             "parameter": "INTENT", "fallback": "unknown"},
            {"id": "hours", "type": "send_message", "text": "We are open 9 to 5 ($DIRECTION).", "next": "end"},
            {"id": "price", "type": "send_message", "text": "It costs $$10.", "next": "end"},
            {"id": "unknown", "type": "send_message", "text": "Sorry?", "next": "end"},
            {"id": "end", "type": "end"}
        ]
    });
    let (key, agent, number) = agent_with_flow(&app, Channel::Sms, flow).await;
    let person = person();

    let you = Person::new(&app, &key, "sms", &person, &number);
    let delivered = you.says("What are your opening hours?").await;
    assert_eq!(delivered["started"], true);
    let id = delivered["session_id"].as_str().unwrap().to_owned();
    let session = app.ended_session(&key, &id).await;
    assert_eq!(session["agent_id"], agent.as_str());
    assert_eq!(session["to"], person.as_str());
    assert_eq!(session["from"], number.as_str());
    let t = transcript(&app, &key, &id).await;
    assert_eq!(messages(&t, "inbound"), ["What are your opening hours?"]);
    assert_eq!(said_by_agent(&t), ["We are open 9 to 5 (inbound)."]);

    // The session is over: the next message starts another.
    let again = you.says("how much does it cost").await;
    assert_eq!(again["started"], true);
    assert_ne!(again["session_id"], id.as_str());
    let id = again["session_id"].as_str().unwrap().to_owned();
    app.ended_session(&key, &id).await;
    assert_eq!(
        said_by_agent(&transcript(&app, &key, &id).await),
        ["It costs $10."]
    );
}

#[tokio::test]
async fn an_agent_may_decline_inbound_sessions_with_a_reply() {
    let app = TestApp::spawn().await;
    let flow = json!({
        "format": 1,
        "start": "hello",
        "inbound": {"accept": false, "reply": "This number does not take messages."},
        "nodes": [
            {"id": "hello", "type": "send_message", "text": "Hello!", "next": "end"},
            {"id": "end", "type": "end"}
        ]
    });
    let (key, _, number) = agent_with_flow(&app, Channel::Sms, flow).await;
    let from = person();
    let you = Person::new(&app, &key, "sms", &from, &number);
    let delivered = you.says("hi").await;
    let id = delivered["session_id"].as_str().unwrap();
    let session = app.ended_session(&key, id).await;
    assert_eq!(session["outcome"], "completed");
    assert_eq!(
        said_by_agent(&transcript(&app, &key, id).await),
        ["This number does not take messages."]
    );
}

/// A flow that says nothing of inbound sessions does not run for a
/// stranger's message: it declines, silently (docs/flows.md).
#[tokio::test]
async fn without_an_inbound_policy_a_strangers_message_is_declined_silently() {
    let app = TestApp::spawn().await;
    let (key, _, number) = agent_with_flow(&app, Channel::Sms, question_flow()).await;
    let from = person();
    let you = Person::new(&app, &key, "sms", &from, &number);
    let delivered = you.says("hello?").await;
    assert_eq!(delivered["started"], true);
    let id = delivered["session_id"].as_str().unwrap();
    let session = app.ended_session(&key, id).await;
    assert_eq!(session["outcome"], "completed");
    let kinds: Vec<&str> = session["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert!(kinds.contains(&"inbound_declined"), "{kinds:?}");
    assert!(!kinds.contains(&"node_entered"), "the flow ran: {kinds:?}");
    let t = transcript(&app, &key, id).await;
    assert_eq!(said_by_agent(&t), Vec::<String>::new(), "{t}");
    assert_eq!(messages(&t, "inbound"), ["hello?"]);
}

#[tokio::test]
async fn inputs_reach_only_the_accounts_own_agents() {
    let app = TestApp::spawn().await;
    let (_, _, number) = agent_with_flow(&app, Channel::Sms, question_flow()).await;
    let other = app.new_key("someone-else").await;
    let response = app
        .post(
            "/simulator/inbound",
            &other,
            json!({"channel": "sms", "from": person(), "to": number, "text": "hi"}),
        )
        .await;
    assert_error(
        response,
        404,
        &format!("No published sms agent has the number {number}"),
    )
    .await;
}

/// A local HTTP endpoint standing in for a business's system or a live
/// agent's desk: records what it gets and answers with a fixed body.
#[derive(Clone)]
struct Endpoint {
    url: String,
    received: Arc<Mutex<Vec<Value>>>,
}

impl Endpoint {
    async fn start(answer: Value) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let received: Arc<Mutex<Vec<Value>>> = Default::default();
        let log = received.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::any(move |body: axum::body::Bytes| {
                let log = log.clone();
                let answer = answer.clone();
                async move {
                    log.lock()
                        .unwrap()
                        .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
                    (StatusCode::OK, axum::Json(answer))
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Endpoint { url, received }
    }

    async fn wait_for(&self, n: usize) -> Vec<Value> {
        for _ in 0..400 {
            let got = self.received.lock().unwrap().clone();
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the endpoint got fewer than {n} requests");
    }
}

#[tokio::test]
async fn a_webhook_answer_fills_parameters() {
    let app = TestApp::spawn().await;
    let endpoint = Endpoint::start(json!({"order": {"status": "shipped", "eta": 2}})).await;
    let flow = json!({
        "format": 1,
        "start": "lookup",
        "parameters": [{"name": "ORDER"}],
        "nodes": [
            {"id": "lookup", "type": "webhook", "url": endpoint.url,
             "headers": [{"name": "x-order", "value": "$ORDER"}],
             "body": "{\"order\": \"$ORDER\"}",
             "response": [{"parameter": "STATUS", "path": "/order/status"},
                          {"parameter": "ETA", "path": "/order/eta"}],
             "success": "tell", "failure": "sorry"},
            {"id": "tell", "type": "send_message", "text": "Order $ORDER is $STATUS, arriving in $ETA days.", "next": "end"},
            {"id": "sorry", "type": "send_message", "text": "We could not look it up.", "next": "end"},
            {"id": "end", "type": "end"}
        ]
    });
    let (key, agent, _) = agent_with_flow(&app, Channel::Sms, flow).await;
    let id = trigger_sms(
        &app,
        &key,
        &agent,
        &person(),
        json!([{"name": "ORDER", "value": "A-17"}]),
    )
    .await;
    app.ended_session(&key, &id).await;
    assert_eq!(
        said_by_agent(&transcript(&app, &key, &id).await),
        ["Order A-17 is shipped, arriving in 2 days."]
    );
    assert_eq!(endpoint.wait_for(1).await[0], json!({"order": "A-17"}));
}

#[tokio::test]
async fn a_webhook_to_an_internal_address_leaves_by_failure() {
    // This server refuses internal addresses, as production ones do.
    let app = TestApp::spawn_with(|c| c.allow_private_callbacks = false).await;
    let endpoint = Endpoint::start(json!({})).await;
    let flow = json!({
        "format": 1,
        "start": "lookup",
        "nodes": [
            {"id": "lookup", "type": "webhook", "url": endpoint.url,
             "success": "ok", "failure": "refused"},
            {"id": "ok", "type": "send_message", "text": "reached", "next": "end"},
            {"id": "refused", "type": "send_message", "text": "refused", "next": "end"},
            {"id": "end", "type": "end"}
        ]
    });
    let (key, agent, _) = agent_with_flow(&app, Channel::Sms, flow).await;
    let id = trigger_sms(&app, &key, &agent, &person(), json!([])).await;
    let session = app.ended_session(&key, &id).await;
    assert_eq!(
        said_by_agent(&transcript(&app, &key, &id).await),
        ["refused"]
    );
    assert!(endpoint.received.lock().unwrap().is_empty());
    let failed = session["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "webhook_failed")
        .unwrap();
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("internal address"),
        "{failed}"
    );
}

#[tokio::test]
async fn a_live_agent_takes_over_and_hands_back() {
    let app = TestApp::spawn().await;
    let desk = Endpoint::start(json!({"ok": true})).await;
    let flow = json!({
        "format": 1,
        "start": "hello",
        "nodes": [
            {"id": "hello", "type": "send_message", "text": "Connecting you to a person.", "next": "human"},
            {"id": "human", "type": "live_agent", "url": desk.url, "next": "bye"},
            {"id": "bye", "type": "send_message", "text": "Back with the bot. Bye!", "next": "end"},
            {"id": "end", "type": "end"}
        ]
    });
    let (key, agent, number) = agent_with_flow(&app, Channel::Sms, flow).await;
    let person = person();
    let id = trigger_sms(&app, &key, &agent, &person, json!([])).await;

    let start = desk.wait_for(1).await.remove(0);
    assert_eq!(start["event"], "start");
    assert_eq!(start["session_id"], id.as_str());
    assert_eq!(
        start["transcript"][1]["text"],
        "Connecting you to a person."
    );

    wait_until_waiting(&app, &id).await;
    let you = Person::new(&app, &key, "sms", &person, &number);
    you.says("I need help").await;
    let forwarded = desk.wait_for(2).await.remove(1);
    assert_eq!(
        forwarded,
        json!({"session_id": id, "event": "message", "text": "I need help"})
    );

    let response = app
        .post(
            &format!("/sessions/{id}/live-agent"),
            &key,
            json!({"type": "message", "text": "Hello, I am Sam."}),
        )
        .await;
    assert_eq!(response.status(), 200);
    wait_for_agent_lines(&app, &key, &id, 2).await;
    let response = app
        .post(
            &format!("/sessions/{id}/live-agent"),
            &key,
            json!({"type": "hand_back"}),
        )
        .await;
    assert_eq!(response.status(), 200);

    app.ended_session(&key, &id).await;
    let t = transcript(&app, &key, &id).await;
    assert_eq!(
        said_by_agent(&t),
        [
            "Connecting you to a person.",
            "Hello, I am Sam.",
            "Back with the bot. Bye!"
        ]
    );
    assert_eq!(messages(&t, "inbound"), ["I need help"]);

    // Over: the live agent can no longer speak, and another account never could.
    let response = app
        .post(
            &format!("/sessions/{id}/live-agent"),
            &key,
            json!({"type": "message", "text": "still there?"}),
        )
        .await;
    assert_eq!(response.status(), 409);
    let other = app.new_key("not-the-owner").await;
    let response = app
        .post(
            &format!("/sessions/{id}/live-agent"),
            &other,
            json!({"type": "end"}),
        )
        .await;
    assert_error(response, 404, &format!("Session {id} was not found")).await;
    let response = app.get(&format!("/sessions/{id}/transcript"), &other).await;
    assert_error(response, 404, &format!("Session {id} was not found")).await;
}

#[tokio::test]
async fn a_sub_flow_runs_and_returns() {
    let app = TestApp::spawn().await;
    let flow = json!({
        "format": 1,
        "start": "first",
        "subflows": [{
            "name": "confirm",
            "start": "ask",
            "nodes": [
                {"id": "ask", "type": "collect_input", "prompt": "Is $RECIPIENT your number?",
                 "entity": "yes_no", "parameter": "CONFIRMED",
                 "success": "done", "invalid": "done", "no_input": "done"},
                {"id": "done", "type": "return"}
            ]
        }],
        "nodes": [
            {"id": "first", "type": "flow", "flow": "confirm", "next": "after"},
            {"id": "after", "type": "send_message", "text": "Confirmed: $CONFIRMED", "next": "end"},
            {"id": "end", "type": "end"}
        ]
    });
    let (key, agent, number) = agent_with_flow(&app, Channel::Sms, flow).await;
    let person = person();
    let id = trigger_sms(&app, &key, &agent, &person, json!([])).await;
    wait_for_agent_lines(&app, &key, &id, 1).await;
    let you = Person::new(&app, &key, "sms", &person, &number);
    you.says("yes").await;
    app.ended_session(&key, &id).await;
    assert_eq!(
        said_by_agent(&transcript(&app, &key, &id).await),
        [
            format!("Is {person} your number?"),
            "Confirmed: yes".to_owned()
        ]
    );
}

#[tokio::test]
async fn bad_flows_are_refused_when_written_with_the_node_named() {
    let app = TestApp::spawn().await;
    let key = app.new_key("bad-flows").await;
    let cases = [
        (
            json!({"format": 1, "start": "a", "nodes": [
                {"id": "a", "type": "set_parameter", "parameter": "X", "value": "1", "next": "b"},
                {"id": "b", "type": "send_message", "text": "loop", "next": "a"}
            ]}),
            "without waiting",
        ),
        (
            json!({"format": 1, "start": "a", "nodes": [
                {"id": "a", "type": "send_message", "text": "Hi $NOBODY", "next": "b"},
                {"id": "b", "type": "end"}
            ]}),
            "undefined parameter 'NOBODY'",
        ),
        (
            json!({"format": 1, "start": "a", "nodes": [
                {"id": "a", "type": "collect_input", "prompt": "?", "entity": "any", "parameter": "X",
                 "success": "b", "invalid": "b"},
                {"id": "b", "type": "end"}
            ]}),
            "no_input",
        ),
        (
            json!({"format": 1, "start": "a", "nodes": [{"id": "a", "type": "teleport"}]}),
            "teleport",
        ),
        (
            json!({"format": 1, "start": "a", "nodes": [
                {"id": "a", "type": "flow", "flow": "missing", "next": "b"},
                {"id": "b", "type": "end"}
            ]}),
            "missing",
        ),
    ];
    for (flow, expected) in cases {
        let response = app
            .post(
                "/agents",
                &key,
                json!({"name": "bad", "type": "sms", "number": unique_number(), "flow": flow}),
            )
            .await;
        assert_eq!(response.status(), 400, "{flow}");
        let body: Value = response.json().await.unwrap();
        let message = body["message"].as_str().unwrap();
        assert!(message.contains("node 'a'"), "{message}");
        assert!(
            message.contains(expected),
            "{message} should mention {expected}"
        );
    }
}

#[tokio::test]
async fn a_flow_sends_an_email_and_an_sms_to_others() {
    let smtp = herald_server::testing::TestSmtp::start();
    let settings = smtp.settings();
    let app = TestApp::spawn_with(move |c| c.smtp = Some(settings)).await;
    let colleague = person();
    let flow = json!({
        "format": 1,
        "start": "ask",
        "parameters": [{"name": "NAME"}],
        "nodes": [
            {"id": "ask", "type": "collect_input", "prompt": "What went wrong, $NAME?",
             "entity": "any", "parameter": "REASON",
             "success": "mail", "invalid": "end", "no_input": "end"},
            {"id": "mail", "type": "send_email", "to": "support@example.com",
             "subject": "Complaint from $NAME", "body": "$NAME ($RECIPIENT) said: $REASON", "next": "text"},
            {"id": "text", "type": "send_sms", "to": colleague, "text": "Call $NAME back", "next": "thanks"},
            {"id": "thanks", "type": "send_message", "text": "Thank you, we will be in touch.", "next": "end"},
            {"id": "end", "type": "end"}
        ]
    });
    let (key, agent, number) = agent_with_flow(&app, Channel::Sms, flow).await;
    let person = person();
    let id = trigger_sms(
        &app,
        &key,
        &agent,
        &person,
        json!([{"name": "NAME", "value": "Ada"}]),
    )
    .await;
    wait_for_agent_lines(&app, &key, &id, 1).await;
    let you = Person::new(&app, &key, "sms", &person, &number);
    you.says("The parcel was late").await;

    let session = app.ended_session(&key, &id).await;
    let kinds: Vec<&str> = session["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"email_sent"), "{kinds:?}");
    let sms = session["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "sms_status" && e["to"] == colleague.as_str())
        .map(|e| e["status"].as_str().unwrap())
        .collect::<Vec<_>>();
    assert_eq!(sms, ["sent", "delivered"]);
    // The SMS to the colleague is not part of the conversation.
    assert_eq!(
        said_by_agent(&transcript(&app, &key, &id).await),
        ["What went wrong, Ada?", "Thank you, we will be in touch."]
    );

    let received = smtp.received();
    assert_eq!(received.len(), 1, "{received:?}");
    let email = &received[0];
    use herald_server::testing::{body, header};
    assert_eq!(header(email, "X-RcptTo"), Some("support@example.com"));
    assert_eq!(header(email, "Subject"), Some("Complaint from Ada"));
    assert!(
        body(email).contains(&format!("Ada ({person}) said: The parcel was late")),
        "{email}"
    );
}

#[tokio::test]
async fn without_an_smtp_relay_an_email_node_records_the_failure_and_goes_on() {
    let app = TestApp::spawn().await;
    let flow = json!({
        "format": 1,
        "start": "mail",
        "nodes": [
            {"id": "mail", "type": "send_email", "to": "support@example.com",
             "subject": "Hello", "body": "Hi", "next": "bye"},
            {"id": "bye", "type": "send_message", "text": "Bye.", "next": "end"},
            {"id": "end", "type": "end"}
        ]
    });
    let (key, agent, _) = agent_with_flow(&app, Channel::Sms, flow).await;
    let id = trigger_sms(&app, &key, &agent, &person(), json!([])).await;
    let session = app.ended_session(&key, &id).await;
    assert_eq!(session["outcome"], "completed");
    let failed = session["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "email_failed")
        .expect("an email_failed event");
    assert_eq!(failed["error"], "no SMTP relay is configured (--smtp-url)");
    assert_eq!(said_by_agent(&transcript(&app, &key, &id).await), ["Bye."]);
}

#[tokio::test]
async fn providers_deliver_inbound_messages_with_the_operators_token() {
    let app = TestApp::spawn_with(|c| c.inbound_token = Some(Secret::new("s3cret".into()))).await;
    let mut flow = question_flow();
    flow["inbound"] = json!({"accept": true});
    let (key, _, number) = agent_with_flow(&app, Channel::Sms, flow).await;
    let message = json!({"from": person(), "to": number, "text": "hello"});
    let post = |token: Option<&'static str>| {
        let mut request = app.client.post(app.url("/inbound/sms")).json(&message);
        if let Some(token) = token {
            request = request.header("X-Herald-Inbound-Token", token);
        }
        request.send()
    };
    assert_error(post(None).await.unwrap(), 401, "Not Authorised").await;
    assert_error(post(Some("guess")).await.unwrap(), 401, "Not Authorised").await;
    let response = post(Some("s3cret")).await.unwrap();
    assert_eq!(response.status(), 200);
    let delivered: Value = response.json().await.unwrap();
    assert_eq!(delivered["started"], true);
    let id = delivered["session_id"].as_str().unwrap();
    let t = wait_for_agent_lines(&app, &key, id, 1).await;
    assert_eq!(said_by_agent(&t), ["Hi there, can you come on Friday?"]);

    // Without a token configured, the door is closed.
    let closed = TestApp::spawn().await;
    let response = closed
        .client
        .post(closed.url("/inbound/sms"))
        .header("X-Herald-Inbound-Token", "")
        .json(&message)
        .send()
        .await
        .unwrap();
    assert_error(
        response,
        404,
        "Inbound messages are not enabled on this server",
    )
    .await;
}

#[tokio::test]
async fn a_context_switch_jumps_from_any_question() {
    let app = TestApp::spawn().await;
    let mut flow = question_flow();
    flow["context_switches"] = json!([
        {"intent": "stop", "examples": ["stop", "unsubscribe me"], "next": "stopped"}
    ]);
    flow["nodes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"id": "stopped", "type": "send_message", "text": "You will hear no more from us.", "next": "end"}));
    let (key, agent, number) = agent_with_flow(&app, Channel::Sms, flow).await;
    let person = person();
    let id = trigger_sms(&app, &key, &agent, &person, json!([])).await;
    wait_for_agent_lines(&app, &key, &id, 1).await;
    let you = Person::new(&app, &key, "sms", &person, &number);
    you.says("Unsubscribe me").await;
    app.ended_session(&key, &id).await;
    assert_eq!(
        said_by_agent(&transcript(&app, &key, &id).await),
        [
            "Hi there, can you come on Friday?",
            "You will hear no more from us."
        ]
    );
}

#[tokio::test]
async fn call_routing_hands_the_call_over() {
    let app = TestApp::spawn().await;
    let flow = json!({
        "format": 1,
        "start": "hold",
        "nodes": [
            {"id": "hold", "type": "speak", "text": "Putting you through.", "next": "route"},
            {"id": "route", "type": "transfer", "to": "sip:desk@example.com"}
        ]
    });
    let (key, agent, _) = agent_with_flow(&app, Channel::Voice, flow).await;
    let response = app
        .post(
            "/telephony/make-call",
            &key,
            json!({"agent_id": agent, "to": person()}),
        )
        .await;
    let id = response.json::<Value>().await.unwrap()["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let session = app.ended_session(&key, &id).await;
    assert_eq!(session["outcome"], "completed");
    let events = session["events"].as_array().unwrap();
    let transferred = events.iter().find(|e| e["type"] == "transferred").unwrap();
    assert_eq!(transferred["to"], "sip:desk@example.com");
    let ended = events.iter().find(|e| e["type"] == "ended").unwrap();
    assert_eq!(ended["reason"], "transferred");
    // herald hands the call over rather than hanging up.
    assert!(!events.iter().any(|e| e["type"] == "hangup"));
}

#[tokio::test]
async fn a_bad_draft_is_refused_at_publish() {
    // A draft written before the rules it breaks (by an older herald) is
    // in the store without having been checked: publishing checks it.
    let app = TestApp::spawn().await;
    let key = app.new_key("old-drafts").await;
    let state = app.server().app();
    let account = state.directory.authenticate(&key).unwrap();
    let flow: herald_core::flow::FlowDefinition = serde_json::from_value(json!({
        "format": 1, "start": "a", "nodes": [
            {"id": "a", "type": "send_message", "text": "Hi $NOBODY", "next": "b"},
            {"id": "b", "type": "end"}
        ]
    }))
    .unwrap();
    let agent = state
        .store
        .create_agent(herald_store::NewAgent {
            account_id: account,
            name: "old".into(),
            channel: Channel::Sms,
            number: unique_number(),
            region: state.config.region,
            flow,
            connection_id: None,
        })
        .await
        .unwrap();
    let response = app
        .post(
            &format!("/agents/{}/publish", agent.agent_id),
            &key,
            json!({}),
        )
        .await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    let message = body["message"].as_str().unwrap();
    assert!(
        message.starts_with("node 'a'") && message.contains("NOBODY"),
        "{message}"
    );
}

/// A flow whose sub-flows run `depth` calls inside one another: the main
/// flow calls `s1`, each `s{i}` calls `s{i+1}` at its node `c{i}`, the last
/// only sends a message.
fn nested_flow(depth: usize) -> Value {
    let subflows: Vec<Value> = (1..=depth)
        .map(|i| {
            let nodes = if i == depth {
                json!([
                    {"id": format!("c{i}"), "type": "send_message", "text": "Deep down.", "next": format!("r{i}")},
                    {"id": format!("r{i}"), "type": "return"}
                ])
            } else {
                json!([
                    {"id": format!("c{i}"), "type": "flow", "flow": format!("s{}", i + 1), "next": format!("r{i}")},
                    {"id": format!("r{i}"), "type": "return"}
                ])
            };
            json!({"name": format!("s{i}"), "start": format!("c{i}"), "nodes": nodes})
        })
        .collect();
    json!({
        "format": 1,
        "start": "call",
        "subflows": subflows,
        "nodes": [
            {"id": "call", "type": "flow", "flow": "s1", "next": "end"},
            {"id": "end", "type": "end"}
        ]
    })
}

/// docs/flows.md: sub-flows nest at most 32 calls deep. A deeper flow is
/// refused when written, naming the node whose call goes too deep, and
/// when published; one stored all the same (by an older herald) ends its
/// session as failed, saying why.
#[tokio::test]
async fn sub_flows_nest_at_most_32_calls_deep() {
    let app = TestApp::spawn().await;
    let key = app.new_key("deep").await;
    let create = |flow: Value| {
        app.post(
            "/agents",
            &key,
            json!({"name": "deep", "type": "sms", "number": unique_number(), "flow": flow}),
        )
    };
    assert_eq!(create(nested_flow(32)).await.status(), 201);
    let too_deep =
        "node 'c32': flow 's33' would run 33 calls deep; sub-flows nest at most 32 calls deep";
    assert_error(create(nested_flow(33)).await, 400, too_deep).await;
    let response = create(nested_flow(200)).await;
    assert_eq!(response.status(), 400);

    // Stored behind the API's back: publishing checks the draft, and a
    // version that has it runs into the bound.
    let deep = nested_flow(40).to_string();
    let db = app.db().await;
    let (key, agent, _) =
        agent_with_flow(&app, Channel::Sms, greeting_flow(Channel::Sms, "Hi.")).await;
    db.execute(
        "UPDATE agents SET flow = $1 WHERE agent_id = $2",
        &[&deep, &agent],
    )
    .await;
    let publish = app
        .post(&format!("/agents/{agent}/publish"), &key, json!({}))
        .await;
    assert_eq!(publish.status(), 400);
    let body: Value = publish.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("would run 33 calls deep"),
        "{body}"
    );
    db.execute(
        "UPDATE agent_versions SET flow = $1 WHERE agent_id = $2",
        &[&deep, &agent],
    )
    .await;
    let id = trigger_sms(&app, &key, &agent, &person(), json!([])).await;
    let session = app.ended_session(&key, &id).await;
    assert_eq!(session["outcome"], "failed");
    let ended = session["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "ended")
        .unwrap();
    assert_eq!(ended["reason"], "subflow_too_deep");
}

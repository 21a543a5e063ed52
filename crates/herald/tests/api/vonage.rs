//! Messaging sessions over Vonage's Messages API (CHANNELS §4, CONTRACT
//! §11), against a loopback fake of Vonage that checks each request as
//! Vonage would and posts signed status and inbound webhooks: each status
//! reaching its outcome and callback; throttling, an outage and a refusal;
//! duplicate, late and out-of-order reports; bad signatures and reports of
//! nothing herald knows; a restart while statuses are awaited; a stranger's
//! message starting a session.

use std::time::Duration;

use herald_server::testing::vonage::FakeVonage;
use serde_json::{json, Value};

use crate::helpers::*;

/// A server on a fake Vonage, with an account, a Vonage connection and a
/// published agent of `channel` on it with `flow`.
struct OnVonage {
    app: TestApp,
    vonage: FakeVonage,
    key: String,
    agent: String,
    number: String,
    receiver: TestReceiver,
}

impl OnVonage {
    async fn start(channel: &str, flow: Option<Value>) -> OnVonage {
        Self::start_with(channel, flow, |_| {}).await
    }

    async fn start_with(
        channel: &str,
        flow: Option<Value>,
        configure: impl FnOnce(&mut herald_server::Config),
    ) -> OnVonage {
        let vonage = FakeVonage::start(VONAGE_APPLICATION).await;
        let url = vonage.url.clone();
        let app = TestApp::spawn_with(|c| {
            talk_to(c, &url);
            // Tests trigger several sessions at once.
            c.default_rate = 100;
            configure(c);
        })
        .await;
        let key = app.new_key("acme").await;
        let connection = vonage_connection(&app, &key, &vonage).await;
        let number = unique_number();
        let mut agent = json!({"name": "a", "type": channel, "number": number,
                               "connection_id": connection["connection_id"]});
        if let Some(flow) = flow {
            agent["flow"] = flow;
        }
        let agent = app.publish_agent(&key, agent).await;
        OnVonage {
            app,
            vonage,
            key,
            agent,
            number,
            receiver: TestReceiver::start().await,
        }
    }

    /// Triggers an SMS session to `to`; its id.
    async fn text(&self, to: &str) -> String {
        let response = self
            .app
            .post(
                "/messaging/conversation",
                &self.key,
                json!({"agent_id": self.agent, "to": to, "channel": "sms",
                       "status_url": self.receiver.url}),
            )
            .await;
        assert_eq!(response.status(), 200);
        response.json::<Value>().await.unwrap()["session_id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn session(&self, id: &str) -> Value {
        self.app
            .get(&format!("/sessions/{id}"), &self.key)
            .await
            .json()
            .await
            .unwrap()
    }

    async fn ended(&self, id: &str) -> Value {
        self.app.ended_session(&self.key, id).await
    }

    /// The statuses the session recorded, in order.
    async fn statuses(&self, id: &str) -> Vec<String> {
        events_of(&self.session(id).await, "message_status", "status")
    }

    /// The statuses the `status_url` was told, once `n` have come.
    async fn callbacks(&self, n: usize) -> Vec<String> {
        self.receiver
            .wait_for(n)
            .await
            .iter()
            .map(|c| c.body["status"].as_str().unwrap().to_owned())
            .collect()
    }

    async fn metrics(&self) -> String {
        self.app
            .client
            .get(self.app.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

fn events_of(session: &Value, kind: &str, field: &str) -> Vec<String> {
    session["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == kind)
        .map(|e| e[field].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The value of the sample of `name` whose labels include all of `labels`.
fn sample(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn each_status_reaches_its_outcome_and_callbacks() {
    let on = OnVonage::start("sms", None).await;
    on.app.set_rate(&on.agent, 100).await;
    for (statuses, outcome, reported) in [
        (
            &["submitted", "delivered"][..],
            "completed",
            &["sent", "delivered"][..],
        ),
        (
            &["submitted", "rejected"],
            "rejected",
            &["sent", "rejected"],
        ),
        (&["undeliverable"], "failed", &["failed"]),
    ] {
        let to = unique_number();
        on.vonage.report_for(&to, statuses);
        let before = on.receiver.received().len();
        let id = on.text(&to).await;
        let ended = on.ended(&id).await;
        assert_eq!(ended["outcome"], outcome, "{statuses:?}: {ended}");
        let got = on.callbacks(before + reported.len()).await[before..].to_vec();
        assert_eq!(got, reported, "{statuses:?}");
        assert_eq!(on.statuses(&id).await, reported);
    }
    // Each message as the Messages API takes it, with herald's reference.
    let messages = on.vonage.messages();
    assert_eq!(messages.len(), 3);
    let (_, body) = &messages[0];
    assert_eq!(body["channel"], "sms");
    assert_eq!(body["message_type"], "text");
    assert_eq!(body["from"], on.number.as_str());
    assert_eq!(
        body["text"],
        "Hello, this is an automated message from herald."
    );
    assert!(body["client_ref"].as_str().unwrap().len() <= 100);
    assert_eq!(on.vonage.problems(), Vec::<String>::new());
    let metrics = on.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "herald_provider_requests_total",
            &["result=\"accepted\""]
        ),
        3.0
    );
    assert_eq!(
        sample(
            &metrics,
            "herald_provider_webhooks_total",
            &["result=\"applied\""]
        ),
        5.0
    );
}

#[tokio::test]
async fn a_throttled_send_goes_once_vonage_takes_it() {
    let on = OnVonage::start("sms", None).await;
    on.vonage.answer_next(
        429,
        json!({"type": "https://developer.nexmo.com/api-errors#throttled",
               "title": "Rate Limit Hit", "detail": "Please wait, then retry your request",
               "instance": "i-1"}),
    );
    let id = on.text(&unique_number()).await;
    assert_eq!(on.ended(&id).await["outcome"], "completed");
    let sends = on
        .vonage
        .requests()
        .iter()
        .filter(|r| r.path == "/v1/messages")
        .count();
    assert_eq!(sends, 2, "refused once, then taken");
    assert_eq!(on.vonage.messages().len(), 1);
    let metrics = on.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "herald_provider_requests_total",
            &["result=\"throttled\""]
        ),
        1.0
    );
}

#[tokio::test]
async fn sends_keep_the_connection_s_pace() {
    let on = OnVonage::start("sms", None).await;
    let connection = on
        .app
        .get("/connections", &on.key)
        .await
        .json::<Value>()
        .await
        .unwrap()["connections"][0]["connection_id"]
        .clone();
    let changed = on
        .app
        .patch(
            &format!("/connections/{}", connection.as_str().unwrap()),
            &on.key,
            json!({"settings": {"messages_per_second": 4}}),
        )
        .await;
    assert_eq!(changed.status(), 200, "{}", changed.text().await.unwrap());
    let mut ids = Vec::new();
    for _ in 0..9 {
        ids.push(on.text(&unique_number()).await);
    }
    for id in &ids {
        assert_eq!(on.ended(id).await["outcome"], "completed");
    }
    let times = on.vonage.times_of("POST", "/v1/messages");
    assert_eq!(times.len(), 9);
    // Four a second, spaced evenly: nine sends span two seconds at least,
    // and no five of them fall within one second.
    let span = times[8] - times[0];
    assert!(
        span >= Duration::from_millis(1900),
        "nine sends in {span:?}"
    );
    for five in times.windows(5) {
        assert!(five[4] - five[0] >= Duration::from_millis(900), "{times:?}");
    }
}

#[tokio::test]
async fn a_vonage_that_stays_down_ends_the_session_failed_saying_why() {
    let on = OnVonage::start_with("sms", None, |c| {
        c.dispatch_max_attempts = 2;
        c.dispatch_retry_pause = Duration::from_millis(50);
    })
    .await;
    for _ in 0..6 {
        on.vonage
            .answer_next(503, json!({"title": "Service Unavailable"}));
    }
    let id = on.text(&unique_number()).await;
    let ended = on.ended(&id).await;
    assert_eq!(ended["outcome"], "failed", "{ended}");
    let errors = events_of(&ended, "error", "error");
    assert_eq!(
        errors,
        ["Vonage failed (503): Service Unavailable; gave up after 2 attempts"],
        "{ended}"
    );
    assert!(on.vonage.messages().is_empty());
    // The message that never went is told as failed.
    assert_eq!(on.callbacks(1).await, ["failed"]);
    assert_eq!(events_of(&ended, "message_status", "status"), ["failed"]);
}

#[tokio::test]
async fn a_refused_message_ends_the_session_with_vonage_s_reason() {
    let on = OnVonage::start("sms", None).await;
    on.vonage.answer_next(
        422,
        json!({"type": "https://developer.nexmo.com/api-errors/messages-olympus#1150",
               "title": "Invalid recipient",
               "detail": "The `to` parameter is invalid for the given channel.",
               "instance": "i-2"}),
    );
    let id = on.text(&unique_number()).await;
    let ended = on.ended(&id).await;
    assert_eq!(ended["outcome"], "rejected", "{ended}");
    assert_eq!(
        events_of(&ended, "error", "error"),
        [
            "Vonage refused the message (422): Invalid recipient: The `to` parameter is invalid \
          for the given channel."
        ]
    );
    assert_eq!(on.callbacks(1).await, ["rejected"]);
}

/// CONTRACT §11.2: a report delivered twice is recorded once, and statuses
/// take effect in the order they happened, however they arrive.
#[tokio::test]
async fn duplicate_late_and_out_of_order_statuses_are_recorded_once() {
    let on = OnVonage::start("sms", None).await;
    on.vonage.stay_silent(true);
    let id = on.text(&unique_number()).await;
    let (uuid, _) = on.vonage.wait_for_messages(1).await[0].clone();
    let delivered = on.vonage.status_report(&uuid, "delivered");
    let submitted = on.vonage.status_report(&uuid, "submitted");
    assert_eq!(on.vonage.post_status(&delivered, None).await, 200);
    assert_eq!(on.vonage.post_status(&delivered, None).await, 200);
    assert_eq!(on.vonage.post_status(&submitted, None).await, 200);
    assert_eq!(on.ended(&id).await["outcome"], "completed");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(on.statuses(&id).await, ["delivered"]);
    assert_eq!(on.callbacks(1).await, ["delivered"]);
    assert_eq!(on.receiver.received().len(), 1);
}

/// CONTRACT §11.1, §11.3: a report whose signature does not verify is
/// refused and changes nothing; one of nothing herald knows is answered
/// 200 and counted; one that is not a report is 400.
#[tokio::test]
async fn bad_signatures_unknown_messages_and_malformed_reports() {
    let on = OnVonage::start("sms", None).await;
    on.vonage.stay_silent(true);
    let id = on.text(&unique_number()).await;
    let (uuid, _) = on.vonage.wait_for_messages(1).await[0].clone();
    let delivered = on.vonage.status_report(&uuid, "delivered");
    assert_eq!(
        on.vonage
            .post_status(&delivered, Some("not-the-secret"))
            .await,
        401
    );
    let status_url = format!(
        "{}{}",
        on.app.base,
        on.app
            .get("/connections", &on.key)
            .await
            .json::<Value>()
            .await
            .unwrap()["connections"][0]["webhooks"]["message_status"]
            .as_str()
            .unwrap()
            .strip_prefix(PUBLIC_URL)
            .unwrap()
    );
    let unsigned = on
        .app
        .client
        .post(&status_url)
        .json(&delivered)
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 401);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let session = on.session(&id).await;
    assert_eq!(session["status"], "active", "{session}");
    assert!(on.statuses(&id).await.is_empty());

    let mut stranger = delivered.clone();
    stranger["message_uuid"] = json!(uuid::Uuid::new_v4().to_string());
    stranger.as_object_mut().unwrap().remove("client_ref");
    assert_eq!(on.vonage.post_status(&stranger, None).await, 200);
    // A reference naming a session of no one's connection: nothing either.
    stranger["client_ref"] = json!(format!("{}:0", uuid::Uuid::now_v7()));
    assert_eq!(on.vonage.post_status(&stranger, None).await, 200);
    assert_eq!(on.vonage.post_status(&json!([1, 2]), None).await, 400);
    let metrics = on.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "herald_provider_webhooks_total",
            &["result=\"unmatched\""]
        ),
        2.0
    );
    assert_eq!(
        sample(
            &metrics,
            "herald_provider_webhooks_total",
            &["result=\"bad_signature\""]
        ),
        2.0
    );
    assert_eq!(
        sample(
            &metrics,
            "herald_provider_webhooks_total",
            &["result=\"malformed\""]
        ),
        1.0
    );
    // The real report still lands.
    assert_eq!(on.vonage.post_status(&delivered, None).await, 200);
    assert_eq!(on.ended(&id).await["outcome"], "completed");
}

/// A restart while a message awaits its statuses loses nothing and sends
/// nothing twice.
#[tokio::test]
async fn statuses_awaited_across_a_restart_still_land() {
    let mut on = OnVonage::start("sms", None).await;
    on.vonage.stay_silent(true);
    let id = on.text(&unique_number()).await;
    let (uuid, _) = on.vonage.wait_for_messages(1).await[0].clone();
    on.app.restart().await;
    let base = on.app.base.clone();
    let connections: Value = on
        .app
        .get("/connections", &on.key)
        .await
        .json()
        .await
        .unwrap();
    on.vonage.deliver_to(
        &connections["connections"][0]["webhooks"],
        PUBLIC_URL,
        &base,
        VONAGE_SIGNATURE_SECRET,
        VONAGE_API_KEY,
    );
    for status in ["submitted", "delivered"] {
        let report = on.vonage.status_report(&uuid, status);
        assert_eq!(on.vonage.post_status(&report, None).await, 200);
    }
    assert_eq!(on.ended(&id).await["outcome"], "completed");
    assert_eq!(on.callbacks(2).await, ["sent", "delivered"]);
    assert_eq!(on.vonage.messages().len(), 1);
    assert_eq!(on.vonage.problems(), Vec::<String>::new());
}

/// A WhatsApp message read after its session ended is still reported.
#[tokio::test]
async fn a_read_that_comes_after_the_end_is_reported() {
    let on = OnVonage::start("whatsapp", None).await;
    let template = on
        .app
        .post(
            "/whatsapp/templates",
            &on.key,
            json!({"namespace": "acme", "name": "hello", "locale": "en-GB", "body": "Hello {{1}}"}),
        )
        .await;
    assert_eq!(template.status(), 201);
    let to = unique_number();
    on.vonage.report_for(&to, &["submitted", "delivered"]);
    let response = on
        .app
        .post(
            "/messaging/conversation",
            &on.key,
            json!({"agent_id": on.agent, "to": to, "channel": "whatsapp",
                   "status_url": on.receiver.url, "namespace": "acme", "template": "hello",
                   "locale": "en-GB",
                   "components": [{"type": "body", "parameters": [{"type": "text", "text": "Ada"}]}]}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let id = response.json::<Value>().await.unwrap()["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let ended = on.ended(&id).await;
    assert_eq!(ended["outcome"], "completed");
    let messages = on.vonage.messages();
    let template = &messages[0].1["custom"]["template"];
    assert_eq!(template["name"], "hello");
    assert_eq!(template["language"]["code"], "en_GB");
    assert_eq!(template["components"][0]["parameters"][0]["text"], "Ada");
    // The template was delivered, and the session ended so; now it is read.
    assert_eq!(messages.len(), 1);
    assert_eq!(on.callbacks(2).await, ["sent", "delivered"]);
    let read = on.vonage.status_report(&messages[0].0, "read");
    assert_eq!(on.vonage.post_status(&read, None).await, 200);
    assert_eq!(on.callbacks(3).await, ["sent", "delivered", "read"]);
    let session = on.session(&id).await;
    assert_eq!(
        events_of(&session, "message_status", "status"),
        ["sent", "delivered", "read"]
    );
    assert_eq!(session["outcome"], "completed");
    assert_eq!(on.vonage.problems(), Vec::<String>::new());
}

/// A stranger's message to the agent's number starts an inbound session
/// of the agent on this connection, once however often Vonage sends it.
#[tokio::test]
async fn a_stranger_s_message_starts_one_session_of_the_connection_s_agent() {
    let flow = json!({
        "format": 1,
        "start": "hello",
        "inbound": {"accept": true},
        "nodes": [
            {"id": "hello", "type": "send_message", "text": "You said: $LAST_INPUT", "next": "end"},
            {"id": "end", "type": "end"}
        ]
    });
    let on = OnVonage::start("sms", Some(flow)).await;
    let person = unique_number();
    let message = herald_server::testing::vonage::inbound_body(
        "sms",
        &uuid::Uuid::new_v4().to_string(),
        &person,
        &on.number,
        "Hello there",
    );
    assert_eq!(on.vonage.post_inbound(&message).await, 200);
    assert_eq!(on.vonage.post_inbound(&message).await, 200);
    let sessions: Value = on
        .app
        .get(&format!("/sessions?agent_id={}", on.agent), &on.key)
        .await
        .json()
        .await
        .unwrap();
    let sessions = sessions["sessions"].as_array().unwrap().clone();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let id = sessions[0]["session_id"].as_str().unwrap();
    assert_eq!(on.ended(id).await["outcome"], "completed");
    let messages = on.vonage.wait_for_messages(1).await;
    assert_eq!(messages[0].1["text"], "You said: Hello there");
    assert_eq!(messages[0].1["to"], person.as_str());
    // A message to a number no agent of the connection has: 200, counted.
    let (status, _) = on
        .vonage
        .send_inbound("sms", &person, &unique_number(), "anyone?")
        .await;
    assert_eq!(status, 200);
    let metrics = on.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "herald_provider_webhooks_total",
            &["webhook=\"message_inbound\"", "result=\"unmatched\""]
        ),
        1.0
    );
}

// ---- calls (Voice API) ---------------------------------------------------------

/// A flow that asks for a number and says what it heard.
fn asking_flow() -> Value {
    json!({"format": 1, "start": "ask", "nodes": [
        {"id": "ask", "type": "collect_input", "prompt": "Key or say a number.",
         "entity": "number", "parameter": "N", "timeout_secs": 20,
         "success": "heard", "invalid": "end", "no_input": "end"},
        {"id": "heard", "type": "speak", "text": "You said $N.", "next": "end"},
        {"id": "end", "type": "end"}
    ]})
}

impl OnVonage {
    /// Triggers a call to `to`; its id.
    async fn call(&self, to: &str, hangup_on_machine: bool) -> String {
        let response = self
            .app
            .post(
                "/telephony/make-call",
                &self.key,
                json!({"agent_id": self.agent, "to": to, "status_url": self.receiver.url,
                       "hangup_on_answer_machine": hangup_on_machine}),
            )
            .await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 200, "{body}");
        body["session_id"].as_str().unwrap().to_owned()
    }

    /// Waits until the fake has placed a call to `to` and reached its
    /// `n`th input.
    async fn at_input(&self, to: &str, n: usize) -> herald_server::testing::vonage::CallSummary {
        for _ in 0..400 {
            if let Some(call) = self.vonage.calls().into_iter().find(|c| c.to == to) {
                if call.inputs.len() >= n {
                    return call;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "no call to {to} reached input {n}: {:?}",
            self.vonage.calls()
        );
    }
}

#[tokio::test]
async fn each_call_status_reaches_its_outcome_and_callback() {
    use herald_server::testing::vonage::CallFate;
    let on = OnVonage::start("voice", None).await;
    let cases = [
        ("busy", "busy"),
        ("cancelled", "cancelled"),
        ("rejected", "rejected"),
        ("timeout", "timeout"),
        ("unanswered", "timeout"),
        ("failed", "failed"),
    ];
    let mut ids = Vec::new();
    for (status, _) in cases {
        let to = unique_number();
        on.vonage.call_fate(&to, CallFate::Unanswered(status));
        ids.push(on.call(&to, false).await);
    }
    let mut outcomes = Vec::new();
    for id in &ids {
        outcomes.push(on.ended(id).await["outcome"].as_str().unwrap().to_owned());
    }
    let expected: Vec<&str> = cases.iter().map(|(_, outcome)| *outcome).collect();
    assert_eq!(outcomes, expected);
    let mut told: Vec<String> = on.callbacks(cases.len()).await;
    told.sort();
    let mut expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(told, expected);
    // Each callback is the voice payload, naming the call.
    let first = &on.receiver.wait_for(1).await[0].body;
    assert!(first["conversation_uuid"].is_string(), "{first}");

    // Answered, the agent speaks and the call completes.
    let to = unique_number();
    let id = on.call(&to, false).await;
    assert_eq!(on.ended(&id).await["outcome"], "completed");
    let calls = on.vonage.wait_for_calls_to_end(&to).await;
    assert_eq!(
        calls[0].said,
        ["Hello, this is an automated call from herald. Goodbye."]
    );
    let request = &calls[0].request;
    assert_eq!(request["to"][0]["number"], to.as_str());
    assert!(request["answer_url"][0]
        .as_str()
        .unwrap()
        .starts_with(&format!("{PUBLIC_URL}/providers/")));
    assert_eq!(on.vonage.problems(), Vec::<String>::new());
    let metrics = on.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "herald_provider_requests_total",
            &["operation=\"create_call\"", "result=\"accepted\""]
        ),
        7.0
    );
    assert!(
        sample(
            &metrics,
            "herald_provider_webhooks_total",
            &["webhook=\"answer\""]
        ) >= 1.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn the_person_s_digits_and_words_are_their_answers() {
    let on = OnVonage::start("voice", Some(asking_flow())).await;
    for (answer, said) in [("42", "You said 42."), ("seven", "You said 7.")] {
        let to = unique_number();
        let id = on.call(&to, false).await;
        let call = on.at_input(&to, 1).await;
        // The input collects what the node can read, for as long as it waits.
        let input = &call.inputs[0];
        assert_eq!(input["type"], json!(["dtmf", "speech"]));
        assert_eq!(input["dtmf"]["maxDigits"], 20);
        assert_eq!(input["speech"]["startTimeout"], 20);
        assert_eq!(input["speech"]["uuid"][0], call.uuid.as_str());
        on.vonage.person_answers(&to, answer);
        assert_eq!(on.ended(&id).await["outcome"], "completed");
        let calls = on.vonage.wait_for_calls_to_end(&to).await;
        assert_eq!(calls[0].said, ["Key or say a number.", said]);
    }
    assert_eq!(on.vonage.problems(), Vec::<String>::new());
}

#[tokio::test]
async fn an_answering_machine_is_hung_up_on_only_when_the_trigger_says_so() {
    use herald_server::testing::vonage::CallFate;
    let on = OnVonage::start("voice", Some(asking_flow())).await;
    let to = unique_number();
    on.vonage.call_fate(&to, CallFate::Machine);
    let id = on.call(&to, true).await;
    let session = on.ended(&id).await;
    assert_eq!(session["outcome"], "machine");
    assert_eq!(on.callbacks(1).await, ["machine"]);
    let calls = on.vonage.wait_for_calls_to_end(&to).await;
    assert_eq!(calls[0].request["machine_detection"], "continue");
    // herald hung up: a hang-up was asked for, and the call is over.
    assert!(on
        .vonage
        .requests()
        .iter()
        .any(|r| r.method == "PUT" && r.body["action"] == "hangup"));

    // Without it, no detection is asked for and the agent runs as usual.
    let to = unique_number();
    on.vonage.call_fate(&to, CallFate::Machine);
    let id = on.call(&to, false).await;
    on.at_input(&to, 1).await;
    on.vonage.person_answers(&to, "3");
    assert_eq!(on.ended(&id).await["outcome"], "completed");
    let calls = on.vonage.wait_for_calls_to_end(&to).await;
    assert!(calls[0].request.get("machine_detection").is_none());
    assert_eq!(calls[0].said, ["Key or say a number.", "You said 3."]);
    assert_eq!(on.vonage.problems(), Vec::<String>::new());
}

#[tokio::test]
async fn silence_leaves_by_no_input_when_vonage_says_so() {
    let mut flow = asking_flow();
    flow["nodes"][0]["timeout_secs"] = json!(1);
    flow["nodes"][0]["no_input"] = json!("silent");
    flow["nodes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"id": "silent", "type": "speak", "text": "Goodbye.", "next": "end"}));
    let on = OnVonage::start("voice", Some(flow)).await;
    let to = unique_number();
    let id = on.call(&to, false).await;
    assert_eq!(on.ended(&id).await["outcome"], "completed");
    let calls = on.vonage.wait_for_calls_to_end(&to).await;
    assert_eq!(calls[0].said, ["Key or say a number.", "Goodbye."]);
    let session = on.session(&id).await;
    assert_eq!(events_of(&session, "input_received", "input"), ["no_input"]);
    assert_eq!(on.vonage.problems(), Vec::<String>::new());
}

#[tokio::test]
async fn a_call_routing_node_hands_the_call_over() {
    let flow = json!({"format": 1, "start": "hello", "nodes": [
        {"id": "hello", "type": "speak", "text": "Putting you through.", "next": "route"},
        {"id": "route", "type": "transfer", "to": "+447700900999"}
    ]});
    let on = OnVonage::start("voice", Some(flow)).await;
    let to = unique_number();
    let id = on.call(&to, false).await;
    assert_eq!(on.ended(&id).await["outcome"], "completed");
    let calls = on.vonage.wait_for_calls_to_end(&to).await;
    assert_eq!(calls[0].said, ["Putting you through."]);
    assert_eq!(
        calls[0].connected,
        Some(json!({"type": "phone", "number": "447700900999"}))
    );
    assert_eq!(on.vonage.problems(), Vec::<String>::new());
}

#[tokio::test]
async fn a_throttled_call_is_placed_once_and_a_refused_one_fails_saying_why() {
    let on = OnVonage::start("voice", None).await;
    on.vonage
        .answer_next(429, json!({"title": "Too Many Requests"}));
    let to = unique_number();
    let id = on.call(&to, false).await;
    assert_eq!(on.ended(&id).await["outcome"], "completed");
    let placed = |to: &str| {
        on.vonage
            .requests()
            .iter()
            .filter(|r| {
                r.path == "/v1/calls" && r.method == "POST" && r.body["to"][0]["number"] == to
            })
            .count()
    };
    assert_eq!(placed(&to), 2);
    assert_eq!(on.vonage.calls().iter().filter(|c| c.to == to).count(), 1);

    on.vonage.answer_next(
        400,
        json!({"type": "https://developer.nexmo.com/api-errors#bad-request",
               "title": "Bad Request", "detail": "The to number is not valid"}),
    );
    let id = on.call(&unique_number(), false).await;
    let session = on.ended(&id).await;
    assert_eq!(session["outcome"], "failed");
    let errors = events_of(&session, "error", "error");
    assert_eq!(
        errors,
        ["Vonage refused the call (400): Bad Request: The to number is not valid"]
    );
    assert_eq!(on.callbacks(1).await, ["failed"]);
}

#[tokio::test]
async fn a_vonage_that_stays_down_ends_the_call_failed_saying_why() {
    let on = OnVonage::start_with("voice", None, |c| {
        c.dispatch_max_attempts = 2;
        c.dispatch_retry_pause = Duration::from_millis(50);
    })
    .await;
    for _ in 0..6 {
        on.vonage
            .answer_next(503, json!({"title": "Service Unavailable"}));
    }
    let id = on.call(&unique_number(), false).await;
    let ended = on.ended(&id).await;
    assert_eq!(ended["outcome"], "failed", "{ended}");
    assert_eq!(
        events_of(&ended, "error", "error"),
        ["Vonage failed (503): Service Unavailable; gave up after 2 attempts"],
        "{ended}"
    );
    assert!(on.vonage.calls().is_empty());
    assert_eq!(on.callbacks(1).await, ["failed"]);
}

/// A call whose session can no longer run ends failed, and herald hangs
/// the call up rather than leave the person on a live line.
#[tokio::test]
async fn a_call_whose_session_breaks_is_hung_up() {
    let on = OnVonage::start_with("voice", Some(asking_flow()), |c| {
        c.dispatch_max_attempts = 1;
    })
    .await;
    let to = unique_number();
    let id = on.call(&to, false).await;
    on.at_input(&to, 1).await;
    on.app
        .db()
        .await
        .execute(
            "UPDATE sessions SET flow_state = '{\"flow\": 3}' WHERE id = $1",
            &[&id],
        )
        .await;
    on.vonage.person_answers(&to, "1");
    let session = on.ended(&id).await;
    assert_eq!(session["outcome"], "failed", "{session}");
    assert_eq!(
        events_of(&session, "error", "error"),
        ["the session's stored state cannot be read"]
    );
    let calls = on.vonage.wait_for_calls_to_end(&to).await;
    assert!(calls[0].ended);
    assert!(on
        .vonage
        .requests()
        .iter()
        .any(|r| r.method == "PUT" && r.body["action"] == "hangup"));
    assert_eq!(on.callbacks(1).await, ["failed"]);
}

#[tokio::test]
async fn voice_webhooks_refuse_bad_signatures_and_take_strangers_and_repeats_calmly() {
    let on = OnVonage::start("voice", Some(asking_flow())).await;
    let to = unique_number();
    let id = on.call(&to, false).await;
    let call = on.at_input(&to, 1).await;
    let answer_url = call.request["answer_url"][0].as_str().unwrap().to_owned();
    let event_url = call.request["event_url"][0].as_str().unwrap().to_owned();
    let answered = json!({"uuid": call.uuid, "to": to, "from": on.number,
                          "conversation_uuid": "CON-1"});

    // A bad signature: 401, and nothing changes.
    let before = on.session(&id).await["events"].as_array().unwrap().len();
    let (status, _) = on
        .vonage
        .post_webhook(&answer_url, &answered, Some("not-the-secret"))
        .await;
    assert_eq!(status, 401);
    let completed =
        json!({"uuid": call.uuid, "status": "completed", "timestamp": "2026-01-01T00:00:00Z"});
    let (status, _) = on
        .vonage
        .post_webhook(&event_url, &completed, Some("not-the-secret"))
        .await;
    assert_eq!(status, 401);
    assert_eq!(
        on.session(&id).await["events"].as_array().unwrap().len(),
        before
    );

    // The answer again (Vonage retrying it): the same turn, answered once.
    let (status, ncco) = on.vonage.post_webhook(&answer_url, &answered, None).await;
    assert_eq!(status, 200);
    assert_eq!(ncco[0]["action"], "talk");
    assert_eq!(ncco[1]["action"], "input");
    let session = on.session(&id).await;
    assert_eq!(events_of(&session, "answered", "by"), ["person"]);

    // A call herald never placed, and an event of one: 200, counted.
    let stranger = json!({"uuid": "2c5f3c1e-0000-4000-8000-000000000000", "to": to,
                          "from": on.number, "conversation_uuid": "CON-2"});
    let base = answer_url.split('?').next().unwrap().to_owned();
    let (status, ncco) = on.vonage.post_webhook(&base, &stranger, None).await;
    assert_eq!((status, ncco), (200, json!([])));
    let event_base = event_url.split('?').next().unwrap().to_owned();
    let unknown = json!({"uuid": "2c5f3c1e-0000-4000-8000-000000000000", "status": "completed"});
    assert_eq!(
        on.vonage.post_webhook(&event_base, &unknown, None).await.0,
        200
    );
    // Not an event at all: 400.
    assert_eq!(
        on.vonage
            .post_webhook(&event_base, &json!([1]), None)
            .await
            .0,
        400
    );
    let metrics = on.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "herald_provider_webhooks_total",
            &["webhook=\"event\"", "result=\"unmatched\""]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &metrics,
            "herald_provider_webhooks_total",
            &["result=\"bad_signature\""]
        ),
        2.0
    );

    on.vonage.person_answers(&to, "5");
    assert_eq!(on.ended(&id).await["outcome"], "completed");
    // A late duplicate of the end changes nothing.
    let (status, _) = on.vonage.post_webhook(&event_url, &completed, None).await;
    assert_eq!(status, 200);
    assert_eq!(on.ended(&id).await["outcome"], "completed");
}

#[tokio::test]
async fn a_call_waiting_for_an_answer_survives_a_restart() {
    let mut on = OnVonage::start("voice", Some(asking_flow())).await;
    let to = unique_number();
    let id = on.call(&to, false).await;
    on.at_input(&to, 1).await;
    on.app.restart().await;
    let connections: Value = on
        .app
        .get("/connections", &on.key)
        .await
        .json()
        .await
        .unwrap();
    let base = on.app.base.clone();
    on.vonage.deliver_to(
        &connections["connections"][0]["webhooks"],
        PUBLIC_URL,
        &base,
        VONAGE_SIGNATURE_SECRET,
        VONAGE_API_KEY,
    );
    on.vonage.person_answers(&to, "8");
    assert_eq!(on.ended(&id).await["outcome"], "completed");
    let calls = on.vonage.wait_for_calls_to_end(&to).await;
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].said, ["Key or say a number.", "You said 8."]);
    assert_eq!(on.vonage.problems(), Vec::<String>::new());
}

#[tokio::test]
async fn a_turn_that_takes_too_long_holds_the_call_rather_than_losing_it() {
    // The flow's first step waits on a webhook slower than Vonage's
    // deadline: herald asks the call to hold on, then gives the turn.
    let slow = TestReceiver::start().await;
    slow.answer_after(Duration::from_millis(4500));
    let flow = json!({"format": 1, "start": "lookup", "nodes": [
        {"id": "lookup", "type": "webhook", "url": slow.url, "timeout_secs": 10,
         "success": "hello", "failure": "hello"},
        {"id": "hello", "type": "speak", "text": "Thank you for waiting.", "next": "end"},
        {"id": "end", "type": "end"}
    ]});
    let on = OnVonage::start("voice", Some(flow)).await;
    let to = unique_number();
    let id = on.call(&to, false).await;
    assert_eq!(on.ended(&id).await["outcome"], "completed");
    let calls = on.vonage.wait_for_calls_to_end(&to).await;
    // No webhook took past Vonage's deadline.
    assert_eq!(on.vonage.problems(), Vec::<String>::new());
    assert_eq!(
        calls[0].said,
        ["Thank you for waiting."],
        "{}",
        on.session(&id).await
    );
    let metrics = on.metrics().await;
    assert!(
        sample(
            &metrics,
            "herald_provider_webhooks_total",
            &["webhook=\"turn\"", "result=\"held\""]
        ) >= 1.0,
        "{metrics}"
    );
}

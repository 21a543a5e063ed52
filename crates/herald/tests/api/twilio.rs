//! Sessions on a Twilio connection (CHANNELS §6, CONTRACT §10–§11),
//! against a loopback fake of Twilio that checks every request herald
//! makes against Twilio's specification and plays Twilio's side: it takes
//! messages and posts their statuses, places calls, runs herald's TwiML
//! with the test as the person, and signs every webhook as Twilio does.

use std::time::Duration;

use herald_server::testing::twilio::{
    twilio_error, twilio_signature, CallFate, Dialled, FakeTwilio,
};
use serde_json::{json, Value};

use crate::helpers::*;

struct OnTwilio {
    app: TestApp,
    twilio: FakeTwilio,
    key: String,
    agent: String,
    connection: Value,
    receiver: TestReceiver,
}

impl OnTwilio {
    async fn start(channel: &str, flow: Option<Value>) -> OnTwilio {
        OnTwilio::start_with(channel, flow, |_| {}).await
    }

    async fn start_with(
        channel: &str,
        flow: Option<Value>,
        configure: impl FnOnce(&mut herald_server::Config),
    ) -> OnTwilio {
        let twilio = FakeTwilio::start(TWILIO_ACCOUNT, TWILIO_AUTH_TOKEN).await;
        let url = twilio.url.clone();
        let app = TestApp::spawn_with(|c| {
            talk_to_twilio(c, &url);
            c.default_rate = 100;
            configure(c);
        })
        .await;
        let key = app.new_key("acme").await;
        // Calls paced for tests that place several.
        let settings = json!({"calls_per_second": 50, "language": "en-GB", "voice": "Polly.Amy"});
        let connection = twilio_connection(&app, &key, &twilio, settings).await;
        let mut agent = json!({"name": "a", "type": channel, "number": unique_number(),
                               "connection_id": connection["connection_id"]});
        if let Some(flow) = flow {
            agent["flow"] = flow;
        }
        let agent = app.publish_agent(&key, agent).await;
        OnTwilio {
            app,
            twilio,
            key,
            agent,
            connection,
            receiver: TestReceiver::start().await,
        }
    }

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

    async fn callbacks(&self, n: usize) -> Vec<String> {
        self.receiver.statuses(n).await
    }

    async fn metric(&self, labels: &[&str]) -> f64 {
        self.app.provider_metric(labels).await
    }

    /// The URL of one of the connection's webhooks, as Twilio is given it.
    fn webhook(&self, name: &str) -> String {
        self.connection["webhooks"][name]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Waits until the call to `to` has reached its `n`th `<Gather>`.
    async fn at_gather(&self, to: &str, n: usize) -> herald_server::testing::twilio::CallSummary {
        for _ in 0..400 {
            let calls = self.twilio.calls();
            if let Some(call) = calls.iter().find(|c| c.to.trim_start_matches('+') == to) {
                if call.gathers.len() >= n {
                    return call.clone();
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "no call to {to} reached gather {n}: {:?}",
            self.twilio.calls()
        );
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

// ---- messages ----------------------------------------------------------------

#[tokio::test]
async fn each_message_status_reaches_its_outcome_and_callbacks() {
    let on = OnTwilio::start("sms", None).await;
    for (statuses, outcome, reported) in [
        (
            &["sent", "delivered"][..],
            "completed",
            &["sent", "delivered"][..],
        ),
        (
            &["sent", "undelivered:30007"],
            "rejected",
            &["sent", "rejected"],
        ),
        (&["failed:30008"], "failed", &["failed"]),
    ] {
        let to = unique_number();
        on.twilio.report_for(&to, statuses);
        let before = on.receiver.received().len();
        let id = on.text(&to).await;
        let ended = on.ended(&id).await;
        assert_eq!(ended["outcome"], outcome, "{statuses:?}: {ended}");
        let got = on.callbacks(before + reported.len()).await[before..].to_vec();
        assert_eq!(got, reported, "{statuses:?}");
        // A failure says Twilio's error code in the session's events.
        let errors = events_of(&ended, "error", "error");
        match statuses.last().and_then(|s| s.split_once(':')) {
            Some((_, code)) => {
                assert_eq!(errors.len(), 1, "{ended}");
                assert!(
                    errors[0].starts_with(&format!("Twilio reported error {code}")),
                    "{errors:?}"
                );
            }
            None => assert!(errors.is_empty(), "{ended}"),
        }
    }
    let messages = on.twilio.messages();
    assert_eq!(messages.len(), 3);
    let (_, form) = &messages[0];
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert!(field("To").starts_with("+44"), "{form:?}");
    assert_eq!(
        field("Body"),
        "Hello, this is an automated message from herald."
    );
    assert!(field("StatusCallback").starts_with(&format!("{}?ref=", on.webhook("message_status"))));
    assert_eq!(on.twilio.problems(), Vec::<String>::new());
    assert_eq!(
        on.metric(&[
            "requests_total",
            "provider=\"twilio\"",
            "result=\"accepted\""
        ])
        .await,
        3.0
    );
}

#[tokio::test]
async fn a_throttled_send_goes_once_twilio_takes_it() {
    let on = OnTwilio::start("sms", None).await;
    on.twilio
        .answer_next(429, twilio_error(429, 20429, "Too Many Requests"));
    let id = on.text(&unique_number()).await;
    assert_eq!(on.ended(&id).await["outcome"], "completed");
    let sends = on
        .twilio
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/Messages.json"))
        .count();
    assert_eq!(sends, 2, "refused once, then taken");
    assert_eq!(on.twilio.messages().len(), 1);
    assert_eq!(on.metric(&["result=\"throttled\""]).await, 1.0);
}

#[tokio::test]
async fn a_refused_message_ends_the_session_with_twilio_s_reason() {
    let on = OnTwilio::start("sms", None).await;
    on.twilio.answer_next(
        400,
        twilio_error(400, 21211, "The 'To' number is not a valid phone number."),
    );
    let id = on.text(&unique_number()).await;
    let ended = on.ended(&id).await;
    assert_eq!(ended["outcome"], "rejected", "{ended}");
    assert_eq!(
        events_of(&ended, "error", "error"),
        ["Twilio refused the message (400, code 21211): The 'To' number is not a valid phone number."]
    );
    assert_eq!(on.callbacks(1).await, ["rejected"]);
}

/// CHANNELS §1.5: a Twilio that answers 5xx on every try ends the
/// session failed after the bound, saying what Twilio answered, and its
/// callback says `failed`, of the message or of the call.
#[tokio::test]
async fn a_twilio_that_stays_down_ends_the_session_failed_saying_why() {
    for channel in ["sms", "voice"] {
        let on = OnTwilio::start_with(channel, None, |c| {
            c.dispatch_max_attempts = 2;
            c.dispatch_retry_pause = Duration::from_millis(50);
        })
        .await;
        for _ in 0..6 {
            on.twilio
                .answer_next(503, twilio_error(503, 20503, "Service Unavailable"));
        }
        let to = unique_number();
        let id = match channel {
            "sms" => on.text(&to).await,
            _ => on.call(&to, false).await,
        };
        let ended = on.ended(&id).await;
        assert_eq!(ended["outcome"], "failed", "{ended}");
        assert_eq!(
            events_of(&ended, "error", "error"),
            ["Twilio failed (503, code 20503): Service Unavailable; gave up after 2 attempts"],
            "{ended}"
        );
        assert!(on.twilio.messages().is_empty());
        assert!(on.twilio.calls().is_empty());
        assert_eq!(on.callbacks(1).await, ["failed"]);
        assert_eq!(on.twilio.problems(), Vec::<String>::new());
    }
}

/// CONTRACT §11.1–§11.3: a status delivered twice counts once and statuses
/// take effect in the order they happened; a badly signed one is refused
/// and changes nothing; one of a message herald does not know is 200 and
/// counted.
#[tokio::test]
async fn duplicates_reordering_bad_signatures_and_strangers() {
    let on = OnTwilio::start("sms", None).await;
    on.twilio.stay_silent(true);
    let id = on.text(&unique_number()).await;
    let (sid, form) = on.twilio.wait_for_messages(1).await[0].clone();
    let callback = form
        .iter()
        .find(|(k, _)| k == "StatusCallback")
        .map(|(_, v)| v.clone())
        .unwrap();
    let delivered = on.twilio.status_report(&sid, "delivered");
    let (status, _) = on
        .twilio
        .post_webhook(&callback, &delivered, Some("bm90IGl0"))
        .await;
    assert_eq!(status, 401);
    // Signed over another URL than the one it came to: refused too.
    let elsewhere = twilio_signature(TWILIO_AUTH_TOKEN, "https://elsewhere.example/", &delivered);
    let (status, _) = on
        .twilio
        .post_webhook(&callback, &delivered, Some(&elsewhere))
        .await;
    assert_eq!(status, 401);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(on.session(&id).await["status"], "active");
    assert!(events_of(&on.session(&id).await, "message_status", "status").is_empty());

    assert_eq!(on.twilio.post_status(&delivered).await, 200);
    assert_eq!(on.twilio.post_status(&delivered).await, 200);
    let sent = on.twilio.status_report(&sid, "sent");
    assert_eq!(on.twilio.post_status(&sent).await, 200);
    assert_eq!(on.ended(&id).await["outcome"], "completed");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        events_of(&on.session(&id).await, "message_status", "status"),
        ["delivered"]
    );
    assert_eq!(on.callbacks(1).await, ["delivered"]);
    assert_eq!(on.receiver.received().len(), 1);

    let stranger: Vec<(String, String)> = delivered
        .iter()
        .map(|(k, v)| match k.as_str() {
            "MessageSid" | "SmsSid" => (k.clone(), format!("SM{}", "9".repeat(32))),
            _ => (k.clone(), v.clone()),
        })
        .collect();
    // (The late `sent` may itself count as unmatched, once the session is
    // over: the stranger is counted on top of what came before.)
    let unmatched = on.metric(&["result=\"unmatched\""]).await;
    let (status, _) = on
        .twilio
        .post_webhook(&on.webhook("message_status"), &stranger, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(on.metric(&["result=\"unmatched\""]).await, unmatched + 1.0);
    assert_eq!(on.metric(&["result=\"bad_signature\""]).await, 2.0);
    assert_eq!(on.twilio.problems(), Vec::<String>::new());
}

#[tokio::test]
async fn a_whatsapp_agent_needs_the_content_sids_of_its_templates() {
    let twilio = FakeTwilio::start(TWILIO_ACCOUNT, TWILIO_AUTH_TOKEN).await;
    let url = twilio.url.clone();
    let app = TestApp::spawn_with(|c| talk_to_twilio(c, &url)).await;
    let key = app.new_key("acme").await;
    let connection = twilio_connection(&app, &key, &twilio, json!({})).await;
    let id = connection["connection_id"].as_str().unwrap();
    let created: Value = app
        .post(
            "/agents",
            &key,
            json!({"name": "w", "type": "whatsapp", "number": unique_number(),
                   "connection_id": id}),
        )
        .await
        .json()
        .await
        .unwrap();
    let agent = created["agent_id"].as_str().unwrap();
    assert_error(
        app.post(&format!("/agents/{agent}/publish"), &key, json!({}))
            .await,
        400,
        &format!(
            "Connection {id} is a twilio connection without settings.content_sids, so it cannot \
             send the WhatsApp templates whatsapp sessions open with: add each template's \
             Content SID under \"namespace/name/locale\""
        ),
    )
    .await;
}

// ---- calls ---------------------------------------------------------------------

fn asking_flow() -> Value {
    json!({"format": 1, "start": "ask", "nodes": [
        {"id": "ask", "type": "collect_input", "prompt": "Key or say a number.",
         "entity": "number", "parameter": "N", "timeout_secs": 20,
         "success": "heard", "invalid": "end", "no_input": "silent"},
        {"id": "heard", "type": "speak", "text": "You said $N.", "next": "end"},
        {"id": "silent", "type": "speak", "text": "Goodbye.", "next": "end"},
        {"id": "end", "type": "end"}
    ]})
}

#[tokio::test]
async fn each_call_status_reaches_its_outcome_and_callback() {
    let on = OnTwilio::start("voice", None).await;
    let cases = [
        (CallFate::Unanswered("busy", None), "busy"),
        (CallFate::Unanswered("no-answer", None), "timeout"),
        (CallFate::Unanswered("canceled", None), "cancelled"),
        (CallFate::Unanswered("failed", Some(603)), "rejected"),
        (CallFate::Unanswered("failed", Some(500)), "failed"),
    ];
    let mut ids = Vec::new();
    for (fate, _) in cases {
        let to = unique_number();
        on.twilio.call_fate(&to, fate);
        ids.push(on.call(&to, false).await);
    }
    for (id, (_, outcome)) in ids.iter().zip(cases) {
        assert_eq!(on.ended(id).await["outcome"], outcome);
    }
    let mut told = on.callbacks(cases.len()).await;
    told.sort();
    let mut expected: Vec<String> = cases.iter().map(|(_, o)| o.to_string()).collect();
    expected.sort();
    assert_eq!(told, expected);

    // Answered, the agent speaks and the call completes.
    let to = unique_number();
    let id = on.call(&to, false).await;
    assert_eq!(on.ended(&id).await["outcome"], "completed");
    let calls = on.twilio.wait_for_calls_to_end(&to).await;
    assert_eq!(
        calls[0].said,
        ["Hello, this is an automated call from herald. Goodbye."]
    );
    assert_eq!(on.twilio.problems(), Vec::<String>::new());
}

/// CHANNELS §6 orders a call's callbacks by `SequenceNumber`. Only a
/// call's final status acts, and the first final status is kept: a late
/// progress report, a second final status and a repeat change nothing,
/// and none is told to the `status_url`.
#[tokio::test]
async fn call_statuses_out_of_order_or_repeated_change_nothing() {
    let on = OnTwilio::start("voice", Some(asking_flow())).await;
    let to = unique_number();
    let id = on.call(&to, false).await;
    let call = on.at_gather(&to, 1).await;
    let status_url = call
        .request
        .iter()
        .find(|(k, _)| k == "StatusCallback")
        .map(|(_, v)| v.clone())
        .unwrap();
    let report = |status: &str, sequence: u32| {
        let mut form: Vec<(String, String)> = [
            ("AccountSid", TWILIO_ACCOUNT),
            ("CallSid", call.sid.as_str()),
            ("CallStatus", status),
            ("From", call.from.as_str()),
            ("To", call.to.as_str()),
            ("Direction", "outbound-api"),
            ("ApiVersion", "2010-04-01"),
            ("CallbackSource", "call-progress-events"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        form.push(("SequenceNumber".into(), sequence.to_string()));
        form
    };
    // A ringing that comes after the answer, while the person is asked.
    let (status, _) = on
        .twilio
        .post_webhook(&status_url, &report("ringing", 1), None)
        .await;
    assert_eq!(status, 200);
    let session = on.session(&id).await;
    assert_ne!(session["status"], "ended", "{session}");
    on.twilio.person_answers(&to, "3");
    assert_eq!(on.ended(&id).await["outcome"], "completed");
    on.twilio.wait_for_calls_to_end(&to).await;
    // After the end: a contradicting final status, and the last one again.
    for (word, sequence) in [("busy", 9), ("completed", 4), ("in-progress", 2)] {
        let (status, _) = on
            .twilio
            .post_webhook(&status_url, &report(word, sequence), None)
            .await;
        assert_eq!(status, 200, "{word}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let session = on.session(&id).await;
    assert_eq!(session["outcome"], "completed", "{session}");
    assert!(
        on.receiver.received().is_empty(),
        "no callback for a completed call"
    );
    assert_eq!(on.twilio.problems(), Vec::<String>::new());
}

#[tokio::test]
async fn the_person_s_keys_words_and_silence_are_their_answers() {
    let mut flow = asking_flow();
    for (answer, said) in [
        (Some(("keys", "42")), "You said 42."),
        (Some(("words", "seven")), "You said 7."),
        (None, "Goodbye."),
    ] {
        if answer.is_none() {
            flow["nodes"][0]["timeout_secs"] = json!(1);
        }
        let on = OnTwilio::start("voice", Some(flow.clone())).await;
        let to = unique_number();
        let id = on.call(&to, false).await;
        let call = on.at_gather(&to, 1).await;
        let gather = &call.gathers[0];
        assert_eq!(gather.attribute("input"), Some("dtmf speech"));
        assert_eq!(gather.attribute("language"), Some("en-GB"));
        match answer {
            Some(("keys", keys)) => {
                assert_eq!(gather.attribute("numDigits"), Some("20"));
                assert_eq!(gather.attribute("timeout"), Some("20"));
                on.twilio.person_answers(&to, keys)
            }
            Some((_, words)) => on.twilio.person_says(&to, words),
            None => {}
        }
        assert_eq!(on.ended(&id).await["outcome"], "completed");
        let calls = on.twilio.wait_for_calls_to_end(&to).await;
        assert_eq!(calls[0].said, ["Key or say a number.", said]);
        if answer.is_none() {
            let session = on.session(&id).await;
            assert_eq!(events_of(&session, "input_received", "input"), ["no_input"]);
        }
        assert_eq!(on.twilio.problems(), Vec::<String>::new());
    }
}

#[tokio::test]
async fn an_answering_machine_is_hung_up_on_only_when_the_trigger_says_so() {
    let on = OnTwilio::start("voice", Some(asking_flow())).await;
    let to = unique_number();
    on.twilio.call_fate(&to, CallFate::Machine);
    let id = on.call(&to, true).await;
    assert_eq!(on.ended(&id).await["outcome"], "machine");
    assert_eq!(on.callbacks(1).await, ["machine"]);
    let calls = on.twilio.wait_for_calls_to_end(&to).await;
    let asked = |name: &str| calls[0].request.iter().any(|(k, _)| k == name);
    assert!(asked("MachineDetection"));
    assert!(calls[0].said.is_empty(), "{calls:?}");

    // Without it, no detection is asked for and the agent runs as usual,
    // on the machine, which keys nothing.
    let mut flow = asking_flow();
    flow["nodes"][0]["timeout_secs"] = json!(1);
    let on = OnTwilio::start("voice", Some(flow)).await;
    let to = unique_number();
    on.twilio.call_fate(&to, CallFate::Machine);
    let id = on.call(&to, false).await;
    assert_eq!(on.ended(&id).await["outcome"], "completed");
    let calls = on.twilio.wait_for_calls_to_end(&to).await;
    assert!(!calls[0]
        .request
        .iter()
        .any(|(k, _)| k == "MachineDetection"));
    assert_eq!(calls[0].said, ["Key or say a number.", "Goodbye."]);
    assert_eq!(on.twilio.problems(), Vec::<String>::new());
}

#[tokio::test]
async fn a_call_routing_node_dials_the_number() {
    let flow = json!({"format": 1, "start": "hello", "nodes": [
        {"id": "hello", "type": "speak", "text": "Putting you through.", "next": "route"},
        {"id": "route", "type": "transfer", "to": "+447700900999"}
    ]});
    let on = OnTwilio::start("voice", Some(flow)).await;
    let to = unique_number();
    let id = on.call(&to, false).await;
    assert_eq!(on.ended(&id).await["outcome"], "completed");
    let calls = on.twilio.wait_for_calls_to_end(&to).await;
    assert_eq!(calls[0].said, ["Putting you through."]);
    assert_eq!(
        calls[0].dialled,
        Some(Dialled::Number("+447700900999".into()))
    );
    assert_eq!(on.twilio.problems(), Vec::<String>::new());
}

#[tokio::test]
async fn a_call_waiting_for_an_answer_survives_a_restart() {
    let mut on = OnTwilio::start("voice", Some(asking_flow())).await;
    let to = unique_number();
    let id = on.call(&to, false).await;
    on.at_gather(&to, 1).await;
    on.app.restart().await;
    let base = on.app.base.clone();
    on.twilio.deliver_to(PUBLIC_URL, &base);
    on.twilio.person_answers(&to, "5");
    assert_eq!(on.ended(&id).await["outcome"], "completed");
    let calls = on.twilio.wait_for_calls_to_end(&to).await;
    assert_eq!(calls[0].said, ["Key or say a number.", "You said 5."]);
    assert_eq!(calls.len(), 1, "placed once");
    assert_eq!(on.twilio.problems(), Vec::<String>::new());
}

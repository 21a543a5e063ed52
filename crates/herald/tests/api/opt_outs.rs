//! Opt-outs (CONTRACT §13): the account's list and its API, the keywords
//! people send on SMS and WhatsApp (STOP, START, HELP and the words like
//! them), a flow's `opt_out` node and its switch for the keywords, and
//! triggers to an opted-out recipient refused before they cost quota.

use herald_core::Channel;
use serde_json::{json, Value};

use crate::conversations::{agent_with_flow, person, said_by_agent, transcript, Person};
use crate::helpers::*;

/// A question whose answers are yes or no, then a word for each.
fn yes_no_flow() -> Value {
    friday_question_flow(300)
}

/// A server whose agents start up to 100 sessions a second.
async fn spawn() -> TestApp {
    TestApp::spawn_with(|c| c.default_rate = 100).await
}

async fn text(app: &TestApp, key: &str, agent: &str, to: &str) -> reqwest::Response {
    app.post(
        "/messaging/conversation",
        key,
        json!({"agent_id": agent, "to": to, "channel": "sms"}),
    )
    .await
}

async fn started(app: &TestApp, key: &str, agent: &str, to: &str) -> String {
    let response = text(app, key, agent, to).await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    body["session_id"].as_str().unwrap().to_owned()
}

async fn listed(app: &TestApp, key: &str, query: &str) -> Value {
    let response = app.get(&format!("/opt-outs{query}"), key).await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

fn events_of(session: &Value, kind: &str) -> Vec<Value> {
    session["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == kind)
        .cloned()
        .collect()
}

/// Waits until the session has sent `n` messages; their texts.
async fn agent_said(app: &TestApp, key: &str, id: &str, n: usize) -> Vec<String> {
    for _ in 0..400 {
        let said = said_by_agent(&transcript(app, key, id).await);
        if said.len() >= n {
            return said;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!(
        "session {id} did not send {n} messages: {:?}",
        said_by_agent(&transcript(app, key, id).await)
    );
}

/// CONTRACT §13.1: the list is the account's own, per channel; adding twice
/// keeps the first; pages follow the cursor; a removal is 204 then 404;
/// bad input is a 400 naming what is wrong.
#[tokio::test]
async fn the_list_is_the_account_s_own_and_pages_by_cursor() {
    let app = spawn().await;
    let key = app.new_key("acme").await;
    let other = app.new_key("globex").await;
    let created = app
        .post(
            "/opt-outs",
            &key,
            json!({"channel": "sms", "to": "+447700900001"}),
        )
        .await;
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    assert_eq!(created["to"], "447700900001");
    assert_eq!(created["source"], "api");
    assert_eq!(created["session_id"], Value::Null);
    let again = app
        .post(
            "/opt-outs",
            &key,
            json!({"channel": "sms", "to": "447700900001"}),
        )
        .await;
    assert_eq!(again.status(), 200);
    assert_eq!(
        again.json::<Value>().await.unwrap()["created_at"],
        created["created_at"]
    );
    for (channel, to) in [
        ("sms", "447700900003"),
        ("whatsapp", "447700900002"),
        ("voice", "447700900001"),
    ] {
        let response = app
            .post("/opt-outs", &key, json!({"channel": channel, "to": to}))
            .await;
        assert_eq!(response.status(), 201);
    }

    let page = listed(&app, &key, "?limit=3").await;
    let shown: Vec<(String, String)> = page["opt_outs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["channel"].as_str().unwrap().into(),
                o["to"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        shown,
        [
            ("sms".to_owned(), "447700900001".to_owned()),
            ("sms".into(), "447700900003".into()),
            ("voice".into(), "447700900001".into()),
        ]
    );
    let cursor = page["next_cursor"].as_str().unwrap();
    let rest = listed(&app, &key, &format!("?limit=3&cursor={cursor}")).await;
    assert_eq!(rest["opt_outs"].as_array().unwrap().len(), 1);
    assert_eq!(rest["opt_outs"][0]["channel"], "whatsapp");
    assert_eq!(rest["next_cursor"], Value::Null);
    let sms = listed(&app, &key, "?channel=sms").await;
    assert_eq!(sms["opt_outs"].as_array().unwrap().len(), 2);
    let theirs = listed(&app, &other, "").await;
    assert_eq!(theirs["opt_outs"], json!([]));

    let gone = app.delete("/opt-outs/sms/+447700900001", &key).await;
    assert_eq!(gone.status(), 204);
    assert_error(
        app.delete("/opt-outs/sms/447700900001", &key).await,
        404,
        "447700900001 has not opted out of sms",
    )
    .await;
    assert_error(
        app.delete("/opt-outs/whatsapp/447700900002", &other).await,
        404,
        "447700900002 has not opted out of whatsapp",
    )
    .await;
    assert_error(
        app.post(
            "/opt-outs",
            &key,
            json!({"channel": "fax", "to": "447700900001"}),
        )
        .await,
        400,
        "channel must be one of voice, sms, whatsapp",
    )
    .await;
    assert_error(
        app.post(
            "/opt-outs",
            &key,
            json!({"channel": "sms", "to": "call me"}),
        )
        .await,
        400,
        "to: Bad destination number format",
    )
    .await;
    assert_error(
        app.get("/opt-outs?cursor=nonsense", &key).await,
        400,
        "cursor is not valid",
    )
    .await;
    assert_eq!(
        app.post(
            "/opt-outs",
            "not-a-key",
            json!({"channel": "sms", "to": "447700900001"})
        )
        .await
        .status(),
        401
    );
}

/// CONTRACT §13.3: a trigger to an opted-out recipient is 403 and starts
/// nothing, and it costs no quota: an agent of one session a second still
/// starts one right after it. The opt-out is of its channel only.
#[tokio::test]
async fn a_trigger_to_an_opted_out_recipient_is_refused_before_the_rate_limit() {
    let app = spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Sms).await;
    app.set_rate(&agent, 1).await;
    let refused = person();
    let response = app
        .post("/opt-outs", &key, json!({"channel": "sms", "to": refused}))
        .await;
    assert_eq!(response.status(), 201);
    for _ in 0..3 {
        assert_error(
            text(&app, &key, &agent, &refused).await,
            403,
            &format!("Recipient {refused} has opted out of sms"),
        )
        .await;
    }
    assert_eq!(app.stored_sessions(&agent).await, 0);
    started(&app, &key, &agent, &person()).await;

    // WhatsApp is another channel: the SMS opt-out does not hold there.
    let whatsapp = app
        .published_agent(&key, Channel::Whatsapp, &unique_number())
        .await;
    app.register_template(&key, "hello", None, "Hello").await;
    let receiver = TestReceiver::start().await;
    let response = app
        .post(
            "/messaging/conversation",
            &key,
            json!({"agent_id": whatsapp, "to": refused, "channel": "whatsapp",
                   "namespace": "ns", "template": "hello", "locale": "en",
                   "status_url": receiver.url}),
        )
        .await;
    let status = response.status();
    assert_eq!(status, 200, "{}", response.text().await.unwrap());
}

/// STOP in the middle of a conversation opts the person out, confirms
/// once and ends the session `completed` with an `opted_out` event; a
/// trigger to them is then refused. START from them later (no session is
/// open) opts them back in with its own confirmation, and triggers reach
/// them again.
#[tokio::test]
async fn stop_mid_conversation_opts_out_and_start_undoes_it() {
    let app = spawn().await;
    let (key, agent, number) = agent_with_flow(&app, Channel::Sms, yes_no_flow()).await;
    let to = person();
    let id = started(&app, &key, &agent, &to).await;
    agent_said(&app, &key, &id, 1).await;
    let them = Person::new(&app, &key, "sms", &to, &number);
    let delivered = them.says("  Stop! ").await;
    assert_eq!(delivered["session_id"], id.as_str());
    let ended = app.ended_session(&key, &id).await;
    assert_eq!(ended["outcome"], "completed", "{ended}");
    assert_eq!(events_of(&ended, "opted_out").len(), 1, "{ended}");
    assert_eq!(events_of(&ended, "opted_out")[0]["by"], "keyword");
    assert_eq!(events_of(&ended, "ended")[0]["reason"], "opted_out");
    let said = said_by_agent(&transcript(&app, &key, &id).await);
    assert_eq!(
        said,
        [
            "Can you come on Friday?",
            "You will get no more messages from us. Reply START to get them again."
        ]
    );
    let list = listed(&app, &key, "?channel=sms").await;
    assert_eq!(list["opt_outs"][0]["to"], to.as_str());
    assert_eq!(list["opt_outs"][0]["source"], "keyword");
    assert_eq!(list["opt_outs"][0]["session_id"], id.as_str());
    assert_error(
        text(&app, &key, &agent, &to).await,
        403,
        &format!("Recipient {to} has opted out of sms"),
    )
    .await;

    // YES from a person who opted out is START.
    let back = them.says("yes").await;
    assert_eq!(back["started"], true);
    let back_id = back["session_id"].as_str().unwrap();
    let ended = app.ended_session(&key, back_id).await;
    assert_eq!(ended["outcome"], "completed", "{ended}");
    assert_eq!(events_of(&ended, "opted_in").len(), 1);
    assert_eq!(
        agent_said(&app, &key, back_id, 1).await,
        ["You will get our messages again. Reply STOP to stop them."]
    );
    assert_eq!(listed(&app, &key, "").await["opt_outs"], json!([]));
    started(&app, &key, &agent, &to).await;
}

/// HELP is answered with the agent's help text and the question goes on
/// waiting; YES from a person who has not opted out is their answer; the
/// texts are the flow's own where it sets them.
#[tokio::test]
async fn help_is_answered_and_the_question_still_waits() {
    let app = spawn().await;
    let mut flow = yes_no_flow();
    flow["opt_out"] = json!({"help": "Acme reminders for $RECIPIENT. Reply STOP to stop."});
    let (key, agent, number) = agent_with_flow(&app, Channel::Sms, flow).await;
    let to = person();
    let id = started(&app, &key, &agent, &to).await;
    agent_said(&app, &key, &id, 1).await;
    let them = Person::new(&app, &key, "sms", &to, &number);
    them.says("help").await;
    agent_said(&app, &key, &id, 2).await;
    them.says("YES").await;
    assert_eq!(app.ended_session(&key, &id).await["outcome"], "completed");
    assert_eq!(
        agent_said(&app, &key, &id, 3).await,
        [
            "Can you come on Friday?".to_owned(),
            format!("Acme reminders for {to}. Reply STOP to stop."),
            "Great, see you Friday.".to_owned(),
        ]
    );
    assert_eq!(listed(&app, &key, "").await["opt_outs"], json!([]));
}

/// The appointment reminder asks whether to confirm, reschedule or cancel,
/// and CANCEL is an opt-out word: while its question waits, "cancel" is
/// its answer and cancels the appointment. STOP always opts out, and so
/// does QUIT, which the question does not list.
#[tokio::test]
async fn the_reminder_s_cancel_is_its_answer_but_stop_and_quit_opt_out() {
    let app = spawn().await;
    let example: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/agents/appointment-reminder.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let (key, agent, number) = agent_with_flow(&app, Channel::Sms, example["flow"].clone()).await;
    let params = json!([{"name": "APPOINTMENT_DATE", "value": "Friday"},
                        {"name": "APPOINTMENT_TIME", "value": "10:00"}]);
    let trigger = |to: String| {
        let (app, key, agent, params) = (&app, &key, &agent, params.clone());
        async move { crate::conversations::trigger_sms(app, key, agent, &to, params).await }
    };

    let cancels = person();
    let id = trigger(cancels.clone()).await;
    agent_said(&app, &key, &id, 1).await;
    Person::new(&app, &key, "sms", &cancels, &number)
        .says("Cancel")
        .await;
    let ended = app.ended_session(&key, &id).await;
    assert!(events_of(&ended, "opted_out").is_empty(), "{ended}");
    assert_eq!(
        agent_said(&app, &key, &id, 2).await[1],
        "Your appointment on Friday at 10:00 is cancelled. Text us any time to book again."
    );

    for word in ["STOP", "quit"] {
        let to = person();
        let id = trigger(to.clone()).await;
        agent_said(&app, &key, &id, 1).await;
        Person::new(&app, &key, "sms", &to, &number)
            .says(word)
            .await;
        let ended = app.ended_session(&key, &id).await;
        assert_eq!(events_of(&ended, "opted_out").len(), 1, "{word}: {ended}");
        let opted = listed(&app, &key, "").await;
        assert!(
            opted["opt_outs"]
                .as_array()
                .unwrap()
                .iter()
                .any(|o| o["to"] == to.as_str()),
            "{word}: {opted}"
        );
    }
    let list = listed(&app, &key, "").await;
    assert!(!list["opt_outs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|o| o["to"] == cancels.as_str()));
}

/// With `opt_out: {keywords: false}` the flow reads STOP like any answer;
/// its own `opt_out` node opts the person out, recorded as the flow's.
#[tokio::test]
async fn a_flow_may_hear_the_keywords_itself_and_opt_people_out() {
    let app = spawn().await;
    let flow = json!({"format": 1, "start": "ask", "opt_out": {"keywords": false}, "nodes": [
        {"id": "ask", "type": "classify", "prompt": "Reply STOP to leave, or anything else.",
         "intents": [{"name": "leave", "examples": ["stop", "leave"], "next": "leave"}],
         "fallback": "stay", "timeout_secs": 300},
        {"id": "leave", "type": "opt_out", "next": "bye"},
        {"id": "bye", "type": "send_message", "text": "Done, you are off our list.", "next": "end"},
        {"id": "stay", "type": "send_message", "text": "Glad to keep you.", "next": "end"},
        {"id": "end", "type": "end"}
    ]});
    let (key, agent, number) = agent_with_flow(&app, Channel::Sms, flow).await;
    let to = person();
    let id = started(&app, &key, &agent, &to).await;
    agent_said(&app, &key, &id, 1).await;
    Person::new(&app, &key, "sms", &to, &number)
        .says("stop")
        .await;
    let ended = app.ended_session(&key, &id).await;
    assert_eq!(events_of(&ended, "opted_out")[0]["by"], "flow");
    assert_eq!(events_of(&ended, "ended")[0]["reason"], "completed");
    assert_eq!(
        agent_said(&app, &key, &id, 2).await[1],
        "Done, you are off our list."
    );
    let list = listed(&app, &key, "").await;
    assert_eq!(list["opt_outs"][0]["source"], "flow");
    assert_eq!(list["opt_outs"][0]["to"], to.as_str());

    // An opt_out node that names nothing else is refused where it is bad,
    // like any node: its next must exist.
    let response = app
        .post(
            "/agents",
            &key,
            json!({"name": "bad", "type": "sms", "number": unique_number(), "flow":
                {"format": 1, "start": "out", "nodes": [{"id": "out", "type": "opt_out", "next": "nowhere"}]}}),
        )
        .await;
    assert_eq!(response.status(), 400);
}

/// A stranger's STOP to an agent's number opts them out even when the
/// agent takes no inbound sessions: it is heard before the flow's policy,
/// and confirmed once.
#[tokio::test]
async fn a_stranger_s_stop_is_heard_whatever_the_inbound_policy() {
    let app = spawn().await;
    let (key, agent, number) = agent_with_flow(&app, Channel::Sms, yes_no_flow()).await;
    let to = person();
    let delivered = Person::new(&app, &key, "sms", &to, &number)
        .says("STOP")
        .await;
    let id = delivered["session_id"].as_str().unwrap();
    let ended = app.ended_session(&key, id).await;
    assert_eq!(ended["outcome"], "completed");
    assert!(events_of(&ended, "inbound_declined").is_empty(), "{ended}");
    assert_eq!(
        agent_said(&app, &key, id, 1).await,
        ["You will get no more messages from us. Reply START to get them again."]
    );
    assert_error(
        text(&app, &key, &agent, &to).await,
        403,
        &format!("Recipient {to} has opted out of sms"),
    )
    .await;
}

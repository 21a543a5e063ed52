//! WhatsApp sessions on a WhatsApp Cloud connection (CHANNELS §5, CONTRACT
//! §10–§11), against a loopback fake of Meta's Cloud API that checks every
//! send against Meta's specification and plays Meta's side: it takes the
//! messages and posts their statuses and the person's messages in signed
//! webhook envelopes.

use std::time::Duration;

use herald_server::testing::whatsapp_cloud::{
    whatsapp_signature, FakeWhatsapp, DISPLAY_PHONE_NUMBER,
};
use serde_json::{json, Value};

use crate::helpers::*;

struct OnCloud {
    app: TestApp,
    meta: FakeWhatsapp,
    key: String,
    agent: String,
    connection: Value,
    receiver: TestReceiver,
}

impl OnCloud {
    async fn start(flow: Option<Value>) -> OnCloud {
        OnCloud::start_with(flow, |_| {}).await
    }

    async fn start_with(
        flow: Option<Value>,
        configure: impl FnOnce(&mut herald_server::Config),
    ) -> OnCloud {
        let meta =
            FakeWhatsapp::start(WHATSAPP_NUMBER_ID, WHATSAPP_TOKEN, WHATSAPP_APP_SECRET).await;
        let url = meta.url.clone();
        let app = TestApp::spawn_with(|c| {
            talk_to_whatsapp(c, &url);
            c.default_rate = 100;
            configure(c);
        })
        .await;
        let key = app.new_key("acme").await;
        let connection = whatsapp_connection(&app, &key, &meta).await;
        // The agent's number is the business number Meta's envelopes name.
        let number = DISPLAY_PHONE_NUMBER.to_owned();
        let mut agent = json!({"name": "w", "type": "whatsapp", "number": number,
                               "connection_id": connection["connection_id"]});
        if let Some(flow) = flow {
            agent["flow"] = flow;
        }
        let created = app.post("/agents", &key, agent).await;
        let status = created.status();
        let created: Value = created.json().await.unwrap();
        assert_eq!(status, 201, "{created}");
        let agent = created["agent_id"].as_str().unwrap().to_owned();
        let published = app
            .post(&format!("/agents/{agent}/publish"), &key, json!({}))
            .await;
        assert_eq!(published.status(), 200);
        let registered = app
            .post(
                "/whatsapp/templates",
                &key,
                json!({"namespace": "acme", "name": "hello", "locale": "en-GB",
                       "body": "Hello {{1}}"}),
            )
            .await;
        assert_eq!(registered.status(), 201);
        OnCloud {
            app,
            meta,
            key,
            agent,
            connection,
            receiver: TestReceiver::start().await,
        }
    }

    /// Opens a conversation with `to` by the `hello` template; its id.
    async fn open(&self, to: &str) -> String {
        let response = self
            .app
            .post(
                "/messaging/conversation",
                &self.key,
                json!({"agent_id": self.agent, "to": to, "channel": "whatsapp",
                       "status_url": self.receiver.url, "namespace": "acme",
                       "template": "hello", "locale": "en-GB",
                       "components": [{"type": "body", "parameters": [{"type": "text", "text": "Ada"}]}]}),
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

    /// Points Meta's webhook at the server again, as after a restart.
    fn redeliver(&self) {
        let public = self.connection["webhooks"]["webhook"].as_str().unwrap();
        let path = public.strip_prefix(PUBLIC_URL).unwrap();
        self.meta.deliver_to(&format!("{}{path}", self.app.base));
    }
}

fn statuses_of(session: &Value) -> Vec<String> {
    session["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "message_status")
        .map(|e| e["status"].as_str().unwrap().to_owned())
        .collect()
}

/// A flow that asks a question and answers the reply.
fn asking_flow() -> Value {
    friday_question_flow(30)
}

#[tokio::test]
async fn a_template_opens_the_conversation_and_replies_come_back() {
    let on = OnCloud::start(Some(asking_flow())).await;
    let person = unique_number();
    // The person wrote lately: the question may go as text.
    on.meta.opened_window(&person);
    let id = on.open(&person).await;
    // The template, then the question, as Meta took them.
    let sent = on.meta.wait_for_messages(2).await;
    assert_eq!(sent[0].1["type"], "template");
    assert_eq!(sent[0].1["template"]["name"], "hello");
    assert_eq!(sent[0].1["template"]["language"]["code"], "en_GB");
    assert_eq!(sent[1].1["type"], "text");
    assert_eq!(sent[1].1["text"]["body"], "Can you come on Friday?");
    let (status, _) = on.meta.send_button_reply(&person, "Yes", "yes").await;
    assert_eq!(status, 200);
    assert_eq!(on.ended(&id).await["outcome"], "completed");
    let sent = on.meta.wait_for_messages(3).await;
    assert_eq!(sent[2].1["text"]["body"], "Great, see you Friday.");
    assert_eq!(on.meta.problems(), Vec::<String>::new());
}

/// A text outside the 24-hour window fails clearly: Meta refuses it, and
/// the session ends `rejected` with its callback, rather than waiting on.
#[tokio::test]
async fn a_text_outside_the_window_ends_the_session_rejected() {
    let on = OnCloud::start(Some(asking_flow())).await;
    let person = unique_number();
    let id = on.open(&person).await;
    let ended = on.ended(&id).await;
    assert_eq!(ended["outcome"], "rejected", "{ended}");
    // Meta's reason is in the session's events.
    let errors: Vec<&str> = ended["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "error")
        .map(|e| e["error"].as_str().unwrap())
        .collect();
    assert_eq!(errors.len(), 1, "{ended}");
    assert!(
        errors[0].starts_with("WhatsApp reported error 131047"),
        "{errors:?}"
    );
    let sent = on.meta.wait_for_messages(2).await;
    assert_eq!(sent[1].1["type"], "text");
    // The text's callback says so (beside the template's statuses).
    let mut told = Vec::new();
    for _ in 0..200 {
        told = on
            .receiver
            .received()
            .iter()
            .map(|c| c.body["status"].as_str().unwrap_or_default().to_owned())
            .collect();
        if told.iter().any(|s| s == "rejected") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(told.iter().any(|s| s == "rejected"), "{told:?}");
    assert_eq!(on.meta.problems(), Vec::<String>::new());
}

/// A person's message with no session open starts an inbound session of
/// the connection's agent that has the number.
#[tokio::test]
async fn a_stranger_s_message_reaches_the_agent_with_the_number() {
    let mut flow = asking_flow();
    flow["inbound"] = json!({"accept": true});
    let on = OnCloud::start(Some(flow)).await;
    let person = unique_number();
    let (status, _) = on.meta.send_inbound(&person, "hello").await;
    assert_eq!(status, 200);
    let sent = on.meta.wait_for_messages(1).await;
    assert_eq!(sent[0].1["text"]["body"], "Can you come on Friday?");
    assert_eq!(sent[0].1["to"], person.as_str());
    let (status, _) = on.meta.send_inbound(&person, "yes").await;
    assert_eq!(status, 200);
    let sent = on.meta.wait_for_messages(2).await;
    assert_eq!(sent[1].1["text"]["body"], "Great, see you Friday.");
    assert_eq!(on.meta.problems(), Vec::<String>::new());
}

#[tokio::test]
async fn each_status_reaches_its_outcome_and_callbacks() {
    let on = OnCloud::start(None).await;
    for (statuses, outcome, reported) in [
        (
            &["sent", "delivered", "read"][..],
            "completed",
            &["sent", "delivered", "read"][..],
        ),
        (&["failed:131050"], "rejected", &["rejected"]),
        (&["sent", "failed:131026"], "failed", &["sent", "failed"]),
    ] {
        let to = unique_number();
        on.meta.report_for(&to, statuses);
        let before = on.receiver.received().len();
        let id = on.open(&to).await;
        let ended = on.ended(&id).await;
        assert_eq!(ended["outcome"], outcome, "{statuses:?}: {ended}");
        let got = on.callbacks(before + reported.len()).await[before..].to_vec();
        assert_eq!(got, reported, "{statuses:?}");
    }
    assert_eq!(on.meta.problems(), Vec::<String>::new());
}

#[tokio::test]
async fn throttling_then_success_sends_once_and_a_refusal_says_why() {
    let on = OnCloud::start(None).await;
    on.meta.answer_next(
        400,
        json!({"error": {"message": "(#130429) Rate limit hit", "type": "OAuthException",
                         "code": 130429, "fbtrace_id": "A"}}),
    );
    let id = on.open(&unique_number()).await;
    assert_eq!(on.ended(&id).await["outcome"], "completed");
    assert_eq!(on.meta.messages().len(), 1);
    assert_eq!(on.metric(&["result=\"throttled\""]).await, 1.0);

    on.meta.answer_next(
        400,
        json!({"error": {"message": "(#131049) This message was not delivered", "code": 131049,
                         "error_data": {"details": "Held back to keep the ecosystem healthy"},
                         "fbtrace_id": "B"}}),
    );
    let id = on.open(&unique_number()).await;
    let ended = on.ended(&id).await;
    assert_eq!(ended["outcome"], "rejected", "{ended}");
    let errors: Vec<&str> = ended["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "error")
        .map(|e| e["error"].as_str().unwrap())
        .collect();
    assert_eq!(
        errors,
        ["WhatsApp refused the message (400, code 131049): Held back to keep the ecosystem healthy"]
    );
}

/// CHANNELS §1.5: a Cloud API that answers 5xx on every try ends the
/// session failed after the bound, saying what Meta answered; nothing is
/// sent.
#[tokio::test]
async fn a_cloud_api_that_stays_down_ends_the_session_failed_saying_why() {
    let on = OnCloud::start_with(None, |c| {
        c.dispatch_max_attempts = 2;
        c.dispatch_retry_pause = Duration::from_millis(50);
    })
    .await;
    for _ in 0..6 {
        on.meta.answer_next(
            503,
            json!({"error": {"message": "Service temporarily unavailable", "type": "OAuthException",
                             "code": 2, "fbtrace_id": "C"}}),
        );
    }
    let id = on.open(&unique_number()).await;
    let ended = on.ended(&id).await;
    assert_eq!(ended["outcome"], "failed", "{ended}");
    let errors: Vec<&str> = ended["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "error")
        .map(|e| e["error"].as_str().unwrap())
        .collect();
    assert_eq!(
        errors,
        ["WhatsApp failed (503, code 2): Service temporarily unavailable; gave up after 2 attempts"],
        "{ended}"
    );
    assert!(on.meta.messages().is_empty());
    assert_eq!(on.callbacks(1).await, ["failed"]);
    assert_eq!(on.meta.problems(), Vec::<String>::new());
}

/// A conversation waiting on the person's answer survives a restart:
/// the answer that comes to the new server goes on from where it was,
/// and nothing is sent twice.
#[tokio::test]
async fn a_conversation_waiting_for_an_answer_survives_a_restart() {
    let mut on = OnCloud::start(Some(asking_flow())).await;
    let person = unique_number();
    on.meta.opened_window(&person);
    let id = on.open(&person).await;
    on.meta.wait_for_messages(2).await;
    // Each message's statuses land before the restart: Meta posts them
    // once here, to a server that is up.
    for _ in 0..400 {
        if statuses_of(&on.session(&id).await).len() == 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(statuses_of(&on.session(&id).await).len(), 6);
    on.app.restart().await;
    on.redeliver();
    let (status, _) = on.meta.send_inbound(&person, "yes").await;
    assert_eq!(status, 200);
    assert_eq!(on.ended(&id).await["outcome"], "completed");
    let sent = on.meta.wait_for_messages(3).await;
    let texts: Vec<&Value> = sent
        .iter()
        .map(|(_, m)| match m["type"].as_str() {
            Some("template") => &m["template"]["name"],
            _ => &m["text"]["body"],
        })
        .collect();
    assert_eq!(
        texts,
        ["hello", "Can you come on Friday?", "Great, see you Friday."]
    );
    assert_eq!(on.meta.problems(), Vec::<String>::new());
}

/// CONTRACT §13.2 on the Cloud API: the person's STOP opts them out of
/// WhatsApp, the confirmation goes through Meta inside the window their
/// message opened, and the next trigger to them is refused.
#[tokio::test]
async fn stop_opts_the_person_out_and_confirms_through_meta() {
    let on = OnCloud::start(Some(asking_flow())).await;
    let person = unique_number();
    on.meta.opened_window(&person);
    let id = on.open(&person).await;
    on.meta.wait_for_messages(2).await;
    let (status, _) = on.meta.send_inbound(&person, "STOP").await;
    assert_eq!(status, 200);
    assert_eq!(on.ended(&id).await["outcome"], "completed");
    let sent = on.meta.wait_for_messages(3).await;
    assert_eq!(
        sent[2].1["text"]["body"],
        "You will get no more messages from us. Reply START to get them again."
    );
    let listed: Value = on
        .app
        .get("/opt-outs?channel=whatsapp", &on.key)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["opt_outs"][0]["to"], person.as_str());
    let again = on
        .app
        .post(
            "/messaging/conversation",
            &on.key,
            json!({"agent_id": on.agent, "to": person, "channel": "whatsapp",
                   "status_url": on.receiver.url, "namespace": "acme",
                   "template": "hello", "locale": "en-GB",
                   "components": [{"type": "body", "parameters": [{"type": "text", "text": "Ada"}]}]}),
        )
        .await;
    assert_error(
        again,
        403,
        &format!("Recipient {person} has opted out of whatsapp"),
    )
    .await;
    assert_eq!(on.meta.messages().len(), 3);
    assert_eq!(on.meta.problems(), Vec::<String>::new());
}

/// CONTRACT §11: the handshake echoes the challenge only for the verify
/// token; a badly signed envelope is 401 and changes nothing; a status
/// twice counts once and a late `delivered` never undoes `read`.
#[tokio::test]
async fn the_handshake_signatures_and_duplicates() {
    let on = OnCloud::start(None).await;
    assert_eq!(
        on.meta
            .verify("subscribe", WHATSAPP_VERIFY_TOKEN, "1158201444")
            .await,
        (200, "1158201444".to_owned())
    );
    assert_eq!(
        on.meta
            .verify("subscribe", "not-the-token", "1158201444")
            .await
            .0,
        403
    );
    on.meta.stay_silent(true);
    let id = on.open(&unique_number()).await;
    let (wamid, _) = on.meta.wait_for_messages(1).await[0].clone();
    let read = on.meta.status_envelope(&wamid, "read");
    assert_eq!(on.meta.post_webhook(&read, Some("sha256=00")).await, 401);
    // Signed with the app secret, but over another body.
    let other = whatsapp_signature(WHATSAPP_APP_SECRET, b"{}");
    assert_eq!(on.meta.post_webhook(&read, Some(&other)).await, 401);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(on.session(&id).await["status"], "active");
    assert!(statuses_of(&on.session(&id).await).is_empty());

    assert_eq!(on.meta.post_envelope(&read).await, 200);
    assert_eq!(on.meta.post_envelope(&read).await, 200);
    let delivered = on.meta.status_envelope(&wamid, "delivered");
    assert_eq!(on.meta.post_envelope(&delivered).await, 200);
    assert_eq!(on.ended(&id).await["outcome"], "completed");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(statuses_of(&on.session(&id).await), ["read"]);
    assert_eq!(on.callbacks(1).await, ["read"]);
    assert_eq!(on.receiver.received().len(), 1);
    assert_eq!(on.metric(&["result=\"bad_signature\""]).await, 3.0);
    let _ = &on.connection;
}

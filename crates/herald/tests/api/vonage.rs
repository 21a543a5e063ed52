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
        let created = app.post("/agents", &key, agent).await;
        assert_eq!(created.status(), 201);
        let agent = created.json::<Value>().await.unwrap()["agent_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let published = app
            .post(&format!("/agents/{agent}/publish"), &key, json!({}))
            .await;
        assert_eq!(
            published.status(),
            200,
            "{}",
            published.text().await.unwrap()
        );
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

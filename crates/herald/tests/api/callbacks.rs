//! CONTRACT §5: status callbacks: payloads (§5.1, §5.2), Standard Webhooks
//! signatures (§5.3), retries, order and durability (§5.4), and the refusal
//! of internal addresses (§5.5).

use std::collections::HashSet;
use std::time::Duration;

use axum::http::StatusCode;
use herald_core::webhook::SigningKey;
use herald_core::Channel;
use serde_json::{json, Value};

use crate::helpers::*;

async fn call(
    app: &TestApp,
    key: &str,
    agent: &str,
    to: &str,
    status_url: &str,
    machine: bool,
) -> String {
    let response = app
        .post(
            "/telephony/make-call",
            key,
            json!({"agent_id": agent, "to": to, "status_url": status_url, "hangup_on_answer_machine": machine}),
        )
        .await;
    assert_eq!(response.status(), 200);
    response.json::<Value>().await.unwrap()["session_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn message(app: &TestApp, key: &str, agent: &str, to: &str, status_url: &str) -> String {
    let response = app
        .post(
            "/messaging/conversation",
            key,
            json!({"agent_id": agent, "to": to, "channel": "sms", "status_url": status_url}),
        )
        .await;
    assert_eq!(response.status(), 200);
    response.json::<Value>().await.unwrap()["session_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn unanswered_calls_report_the_seed_payload() {
    let app = TestApp::spawn().await;
    let receiver = TestReceiver::start().await;
    let (key, agent) = account_with_agent(&app, Channel::Voice).await;
    app.set_rate(&agent, 100).await;
    let cases = [
        ("447700900190", "busy"),
        ("447700900191", "rejected"),
        ("447700900192", "timeout"),
        ("447700900193", "failed"),
        ("447700900194", "cancelled"),
    ];
    for (i, (to, status)) in cases.into_iter().enumerate() {
        let id = call(&app, &key, &agent, to, &receiver.url, false).await;
        let session = app.ended_session(&key, &id).await;
        assert_eq!(session["outcome"], status);
        // One callback per call so far; this call's may still be on its way.
        let got = receiver.wait_for(i + 1).await;
        let callback = got
            .iter()
            .find(|c| c.body["to"] == to)
            .expect("a callback for the call");
        let body = callback.body.as_object().unwrap();
        let mut keys: Vec<&str> = body.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(
            keys,
            ["agent_id", "conversation_uuid", "status", "timestamp", "to"]
        );
        assert_eq!(body["agent_id"], agent.as_str());
        assert_eq!(body["status"], status);
        assert_eq!(body["conversation_uuid"], session["conversation_uuid"]);
        assert_rfc3339_millis(body["timestamp"].as_str().unwrap());
    }
    assert_eq!(receiver.received().len(), cases.len());
}

#[tokio::test]
async fn an_answering_machine_hangs_up_only_when_asked() {
    let app = TestApp::spawn().await;
    let receiver = TestReceiver::start().await;
    let (key, agent) = account_with_agent(&app, Channel::Voice).await;
    app.set_rate(&agent, 100).await;
    let id = call(&app, &key, &agent, "447700900195", &receiver.url, true).await;
    let session = app.ended_session(&key, &id).await;
    assert_eq!(session["outcome"], "machine");
    let got = receiver.wait_for(1).await;
    assert_eq!(got[0].body["status"], "machine");
    assert!(!session["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["type"] == "speak"));

    // Without the flag the agent runs as usual, and an answered call has
    // nothing to report.
    let id = call(&app, &key, &agent, "447700900195", &receiver.url, false).await;
    let session = app.ended_session(&key, &id).await;
    assert_eq!(session["outcome"], "completed");
    assert!(session["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["type"] == "speak"));
    let id = call(&app, &key, &agent, "447700900123", &receiver.url, false).await;
    assert_eq!(app.ended_session(&key, &id).await["outcome"], "completed");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        receiver.attempts().len(),
        1,
        "only the machine hang-up was reported"
    );
}

#[tokio::test]
async fn messaging_reports_every_status_of_every_message_in_order() {
    let app = TestApp::spawn().await;
    let receiver = TestReceiver::start().await;
    let (key, agent) = account_with_agent(&app, Channel::Sms).await;
    let id = message(&app, &key, &agent, "447700900123", &receiver.url).await;
    let got = receiver.wait_for(2).await;
    let statuses: Vec<&str> = got
        .iter()
        .map(|c| c.body["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["sent", "delivered"]);
    for c in &got {
        let body = c.body.as_object().unwrap();
        let mut keys: Vec<&str> = body.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "agent_id",
                "channel",
                "message_uuid",
                "session_id",
                "status",
                "timestamp",
                "to"
            ]
        );
        assert_eq!(body["session_id"], id.as_str());
        assert_eq!(body["channel"], "sms");
        assert_eq!(body["message_uuid"], got[0].body["message_uuid"]);
    }
    assert_eq!(app.ended_session(&key, &id).await["outcome"], "completed");
}

#[tokio::test]
async fn callbacks_are_signed_with_the_account_secret() {
    let app = TestApp::spawn().await;
    let receiver = TestReceiver::start().await;
    let (key, agent) = account_with_agent(&app, Channel::Sms).await;
    let account: Value = app.get("/account", &key).await.json().await.unwrap();
    let signing = SigningKey::from_secret(account["webhook_secret"].as_str().unwrap()).unwrap();
    message(&app, &key, &agent, "447700900123", &receiver.url).await;
    let got = receiver.wait_for(2).await;
    let mut ids = HashSet::new();
    for c in got {
        let header = |name: &str| c.headers.get(name).unwrap().to_str().unwrap().to_owned();
        assert_eq!(header("content-type"), "application/json");
        let id = header("webhook-id");
        let timestamp: i64 = header("webhook-timestamp").parse().unwrap();
        assert!((chrono::Utc::now().timestamp() - timestamp).abs() < 60);
        let signature = header("webhook-signature");
        assert!(signature.starts_with("v1,"));
        assert!(
            signing.verify(&id, timestamp, &c.raw, &signature),
            "the signature checks out"
        );
        // Tampering with the body breaks it.
        assert!(!signing.verify(&id, timestamp, b"{}", &signature));
        ids.insert(id);
    }
    assert_eq!(ids.len(), 2, "each callback has its own webhook-id");
}

#[tokio::test]
async fn a_failing_receiver_gets_retries_with_the_same_webhook_id() {
    let app = TestApp::spawn().await;
    let receiver = TestReceiver::start().await;
    let (key, agent) = account_with_agent(&app, Channel::Voice).await;
    receiver.fail_with(Some(StatusCode::SERVICE_UNAVAILABLE));
    call(&app, &key, &agent, "447700900190", &receiver.url, false).await;
    let failed = receiver.wait_for_attempts(2).await;
    receiver.fail_with(None);
    let delivered = receiver.wait_for(1).await;
    let attempts = receiver.attempts();
    assert!(attempts.len() >= 3);
    let id = |c: &Received| c.headers["webhook-id"].to_str().unwrap().to_owned();
    assert!(
        attempts.iter().all(|a| id(a) == id(&failed[0])),
        "one webhook-id on every attempt"
    );
    assert_eq!(id(&delivered[0]), id(&failed[0]));
    assert_eq!(delivered[0].body, failed[0].body);
}

#[tokio::test]
async fn a_session_s_callbacks_arrive_in_order_across_retries() {
    let app = TestApp::spawn().await;
    let receiver = TestReceiver::start().await;
    let key = app.new_key("acme").await;
    let agent = app
        .published_agent(&key, Channel::Whatsapp, &unique_number())
        .await;
    app.register_template(&key, "hello", None, "Hello {{1}}")
        .await;
    receiver.fail_with(Some(StatusCode::INTERNAL_SERVER_ERROR));
    let response = app
        .post(
            "/messaging/conversation",
            &key,
            json!({"agent_id": agent, "to": "447700900123", "channel": "whatsapp", "status_url": receiver.url,
                   "namespace": "ns", "template": "hello", "locale": "en",
                   "components": [{"type": "body", "parameters": [{"type": "text", "text": "Diane"}]}]}),
        )
        .await;
    assert_eq!(response.status(), 200);
    receiver.wait_for_attempts(3).await;
    receiver.fail_with(None);
    let got = receiver.wait_for(3).await;
    let statuses: Vec<&str> = got
        .iter()
        .map(|c| c.body["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["sent", "delivered", "read"]);
    // While the first was failing, the later ones were held back.
    let first_id = got[0].headers["webhook-id"].clone();
    let attempts = receiver.attempts();
    let first_success = attempts
        .iter()
        .rposition(|a| a.headers["webhook-id"] == first_id)
        .unwrap();
    assert!(attempts[..first_success]
        .iter()
        .all(|a| a.headers["webhook-id"] == first_id));
}

#[tokio::test]
async fn pending_callbacks_survive_a_restart() {
    let mut app = TestApp::spawn_with(|c| {
        c.callback_retry_schedule = vec![Duration::from_millis(300); 5];
        c.shutdown_grace = Duration::from_millis(100);
    })
    .await;
    let receiver = TestReceiver::start().await;
    let (key, agent) = account_with_agent(&app, Channel::Voice).await;
    receiver.fail_with(Some(StatusCode::BAD_GATEWAY));
    call(&app, &key, &agent, "447700900190", &receiver.url, false).await;
    let before = receiver.wait_for_attempts(1).await;
    app.stop().await;
    receiver.fail_with(None);
    let pending = app
        .db()
        .await
        .count(
            "SELECT COUNT(*) FROM callbacks WHERE state = 'pending'",
            &[],
        )
        .await;
    assert_eq!(pending, 1, "the callback waits in the outbox");
    app.restart().await;
    let got = receiver.wait_for(1).await;
    assert_eq!(
        got[0].headers["webhook-id"],
        before[0].headers["webhook-id"]
    );
    assert_eq!(got[0].body["status"], "busy");
}

#[tokio::test]
async fn an_exhausted_schedule_is_recorded_in_the_session() {
    let app =
        TestApp::spawn_with(|c| c.callback_retry_schedule = vec![Duration::from_millis(50); 2])
            .await;
    let receiver = TestReceiver::start().await;
    receiver.fail_with(Some(StatusCode::INTERNAL_SERVER_ERROR));
    let (key, agent) = account_with_agent(&app, Channel::Voice).await;
    let id = call(&app, &key, &agent, "447700900191", &receiver.url, false).await;
    receiver.wait_for_attempts(3).await;
    let failure = app.wait_for_event(&key, &id, "callback_failed").await;
    assert_eq!(failure["attempts"], 3);
    assert_eq!(
        failure["webhook_id"],
        receiver.attempts()[0].headers["webhook-id"]
            .to_str()
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        receiver.attempts().len(),
        3,
        "no attempts after the schedule ran out"
    );
}

#[tokio::test]
async fn internal_addresses_are_refused_unless_allowed() {
    let app = TestApp::spawn_with(|c| c.allow_private_callbacks = false).await;
    let receiver = TestReceiver::start().await;
    let (key, agent) = account_with_agent(&app, Channel::Voice).await;
    app.set_rate(&agent, 10).await;
    let port = receiver
        .url
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    for url in [
        receiver.url.clone(),
        format!("http://localhost:{port}/callbacks"),
    ] {
        let id = call(&app, &key, &agent, "447700900190", &url, false).await;
        let failure = app.wait_for_event(&key, &id, "callback_failed").await;
        assert!(
            failure["error"]
                .as_str()
                .unwrap()
                .contains("internal address"),
            "{failure}"
        );
        assert_eq!(failure["attempts"], 1, "refusals are not retried");
    }
    assert!(
        receiver.attempts().is_empty(),
        "nothing reached the internal receiver"
    );
}

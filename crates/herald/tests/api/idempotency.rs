//! CONTRACT §2.4 (and §3.5 for the messaging endpoint): the
//! `Idempotency-Key` header. The same key and body from one account answers
//! with the first response and starts nothing new; a different body gets 422;
//! a duplicate in flight gets 409; replays cost no rate-limit quota; keys are
//! at most 255 characters and belong to one account.

use std::time::Duration;

use herald_core::Channel;
use serde_json::{json, Value};

use crate::helpers::{account_with_agent, assert_error, TestApp};

const TO: &str = "447700900123";

fn call(agent: &str) -> Value {
    json!({"agent_id": agent, "to": TO})
}

/// POSTs `body` with an `Idempotency-Key`.
async fn post_with_key(
    app: &TestApp,
    path: &str,
    key: &str,
    idempotency_key: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .header("X-Vgai-Key", key)
        .header("Idempotency-Key", idempotency_key)
        .body(body)
        .send()
        .await
        .expect("the server answers")
}

async fn make_call(
    app: &TestApp,
    key: &str,
    idempotency_key: &str,
    body: &Value,
) -> reqwest::Response {
    post_with_key(
        app,
        "/telephony/make-call",
        key,
        idempotency_key,
        body.to_string(),
    )
    .await
}

/// Asserts a 200 trigger answer and returns its body.
async fn accepted(response: reqwest::Response) -> Value {
    let status = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(status, 200, "expected 200, got {status}: {text}");
    let body: Value = serde_json::from_str(&text).expect("a JSON body");
    assert!(body["session_id"].is_string(), "no session_id in {body}");
    assert!(
        body["session_start_time"].is_string(),
        "no session_start_time in {body}"
    );
    body
}

/// The sessions the account sees for `agent` (GET /sessions).
async fn listed_sessions(app: &TestApp, key: &str, agent: &str) -> Vec<Value> {
    let response = app
        .get(&format!("/sessions?agent_id={agent}&limit=100"), key)
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["sessions"]
        .as_array()
        .expect("a sessions array")
        .clone()
}

#[tokio::test]
async fn same_key_and_body_answers_the_first_response_and_starts_one_session() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Voice).await;
    // A high rate, so that only idempotency can stop a second session.
    app.set_rate(&agent, 100).await;

    let first = accepted(make_call(&app, &key, "retry-1", &call(&agent)).await).await;
    let again = accepted(make_call(&app, &key, "retry-1", &call(&agent)).await).await;
    let third = accepted(make_call(&app, &key, "retry-1", &call(&agent)).await).await;

    assert_eq!(again["session_id"], first["session_id"]);
    assert_eq!(again["session_start_time"], first["session_start_time"]);
    assert_eq!(again, first, "a replay is the first response again");
    assert_eq!(third, first);

    let listed = listed_sessions(&app, &key, &agent).await;
    assert_eq!(listed.len(), 1, "one session only: {listed:?}");
    assert_eq!(listed[0]["session_id"], first["session_id"]);
    assert_eq!(app.stored_sessions(&agent).await, 1);
}

#[tokio::test]
async fn a_different_key_with_the_same_body_starts_a_new_session() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Voice).await;
    app.set_rate(&agent, 100).await;

    let first = accepted(make_call(&app, &key, "key-a", &call(&agent)).await).await;
    let second = accepted(make_call(&app, &key, "key-b", &call(&agent)).await).await;

    assert_ne!(first["session_id"], second["session_id"]);
    assert_eq!(listed_sessions(&app, &key, &agent).await.len(), 2);
}

#[tokio::test]
async fn same_body_with_keys_reordered_and_whitespace_changed_counts_as_the_same_request() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Voice).await;
    app.set_rate(&agent, 100).await;

    let compact = format!(
        r#"{{"agent_id":"{agent}","to":"{TO}","hangup_on_answer_machine":true,"session_parameters":[{{"name":"order","value":"A-17"}}]}}"#
    );
    let reordered = format!(
        "{{\n  \"session_parameters\" : [ {{ \"value\" : \"A-17\", \"name\" : \"order\" }} ],\n\t\"to\": \"{TO}\",\n  \"hangup_on_answer_machine\": true,\n  \"agent_id\":   \"{agent}\"\n}}\n"
    );

    let first =
        accepted(post_with_key(&app, "/telephony/make-call", &key, "same", compact).await).await;
    let again =
        accepted(post_with_key(&app, "/telephony/make-call", &key, "same", reordered).await).await;

    assert_eq!(again, first);
    assert_eq!(listed_sessions(&app, &key, &agent).await.len(), 1);
    assert_eq!(app.stored_sessions(&agent).await, 1);
}

#[tokio::test]
async fn same_key_with_a_different_body_gets_422() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Voice).await;
    app.set_rate(&agent, 100).await;

    let first = accepted(make_call(&app, &key, "reused", &call(&agent)).await).await;

    let other_destination = json!({"agent_id": agent, "to": "447700900124"});
    assert_error(
        make_call(&app, &key, "reused", &other_destination).await,
        422,
        "Idempotency-Key reused with a different request",
    )
    .await;
    let extra_field = json!({"agent_id": agent, "to": TO, "hangup_on_answer_machine": true});
    assert_error(
        make_call(&app, &key, "reused", &extra_field).await,
        422,
        "Idempotency-Key reused with a different request",
    )
    .await;

    // Nothing new was started, and the original still replays.
    let listed = listed_sessions(&app, &key, &agent).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["session_id"], first["session_id"]);
    let again = accepted(make_call(&app, &key, "reused", &call(&agent)).await).await;
    assert_eq!(again, first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_duplicates_start_one_session_and_the_others_get_409_or_the_first_response() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Voice).await;
    // High enough that no duplicate can be refused for its rate.
    app.set_rate(&agent, 1000).await;

    let body = call(&agent).to_string();
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(20));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let client = app.client.clone();
        let url = app.url("/telephony/make-call");
        let key = key.clone();
        let body = body.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let response = client
                .post(url)
                .header("X-Vgai-Key", key)
                .header("Idempotency-Key", "all-at-once")
                .body(body)
                .send()
                .await
                .expect("the server answers");
            let status = response.status().as_u16();
            let body: Value = response.json().await.expect("a JSON body");
            (status, body)
        }));
    }
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }

    let ok: Vec<&Value> = answers
        .iter()
        .filter(|(s, _)| *s == 200)
        .map(|(_, b)| b)
        .collect();
    assert!(
        !ok.is_empty(),
        "at least one duplicate is accepted: {answers:?}"
    );
    for body in &ok {
        assert_eq!(
            body["session_id"], ok[0]["session_id"],
            "every 200 is the same session: {answers:?}"
        );
        assert_eq!(body["session_start_time"], ok[0]["session_start_time"]);
    }
    for (status, body) in answers.iter().filter(|(s, _)| *s != 200) {
        assert_eq!(*status, 409, "a duplicate in flight gets 409: {answers:?}");
        assert_eq!(body["status"], 409, "{body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
    }

    assert_eq!(
        app.stored_sessions(&agent).await,
        1,
        "exactly one session is stored"
    );
    let listed = listed_sessions(&app, &key, &agent).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["session_id"], ok[0]["session_id"]);
}

#[tokio::test]
async fn a_replay_consumes_no_quota_so_it_is_not_refused_with_429() {
    let app = TestApp::spawn().await;
    // The default rate: one session per second.
    let (key, agent) = account_with_agent(&app, Channel::Voice).await;

    let first = accepted(make_call(&app, &key, "quota", &call(&agent)).await).await;
    let replay = accepted(make_call(&app, &key, "quota", &call(&agent)).await).await;
    assert_eq!(replay, first);

    // The quota really is spent: a new request in the same second is refused.
    let response = make_call(&app, &key, "quota-other", &call(&agent)).await;
    assert_eq!(response.status(), 429);
    assert_eq!(app.stored_sessions(&agent).await, 1);
}

#[tokio::test]
async fn replays_leave_the_quota_to_new_requests() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Voice).await;

    let first = accepted(make_call(&app, &key, "early", &call(&agent)).await).await;
    // A fresh window: the slot the first request took is free again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..3 {
        let replay = accepted(make_call(&app, &key, "early", &call(&agent)).await).await;
        assert_eq!(replay, first);
    }
    // Had the replays counted, this would be over the rate of 1.
    let fresh = accepted(make_call(&app, &key, "late", &call(&agent)).await).await;
    assert_ne!(fresh["session_id"], first["session_id"]);
    assert_eq!(app.stored_sessions(&agent).await, 2);
}

#[tokio::test]
async fn an_idempotency_key_longer_than_255_characters_gets_400() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Voice).await;

    let too_long = "k".repeat(256);
    let response = make_call(&app, &key, &too_long, &call(&agent)).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], 400, "{body}");
    let message = body["message"].as_str().expect("a message");
    assert!(
        message.contains("Idempotency-Key"),
        "the message names the header: {message}"
    );
    assert_eq!(
        body.as_object().unwrap().len(),
        2,
        "only status and message: {body}"
    );
    assert_eq!(app.stored_sessions(&agent).await, 0, "nothing was started");

    // 255 characters is within the limit.
    let longest = "k".repeat(255);
    let first = accepted(make_call(&app, &key, &longest, &call(&agent)).await).await;
    let again = accepted(make_call(&app, &key, &longest, &call(&agent)).await).await;
    assert_eq!(again, first);
}

/// The message and the OpenAPI document say visible ASCII: a space or a
/// tab, which a header value may hold, is not part of a key.
#[tokio::test]
async fn an_idempotency_key_with_spaces_or_tabs_gets_400() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Voice).await;
    for bad in ["a b", "a\tb", "order 17"] {
        let response = make_call(&app, &key, bad, &call(&agent)).await;
        assert_error(
            response,
            400,
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        )
        .await;
    }
    assert_eq!(app.stored_sessions(&agent).await, 0, "nothing was started");
    accepted(make_call(&app, &key, "order-17_!~", &call(&agent)).await).await;
}

#[tokio::test]
async fn the_same_key_from_two_accounts_starts_two_sessions() {
    let app = TestApp::spawn().await;
    let (key_a, agent_a) = account_with_agent(&app, Channel::Voice).await;
    let (key_b, agent_b) = account_with_agent(&app, Channel::Voice).await;

    let a = accepted(make_call(&app, &key_a, "shared-key", &call(&agent_a)).await).await;
    let b = accepted(make_call(&app, &key_b, "shared-key", &call(&agent_b)).await).await;
    assert_ne!(a["session_id"], b["session_id"]);

    let listed_a = listed_sessions(&app, &key_a, &agent_a).await;
    let listed_b = listed_sessions(&app, &key_b, &agent_b).await;
    assert_eq!(listed_a.len(), 1);
    assert_eq!(listed_b.len(), 1);
    assert_eq!(listed_a[0]["session_id"], a["session_id"]);
    assert_eq!(listed_b[0]["session_id"], b["session_id"]);

    // Each account's key still replays its own first response.
    let again_a = accepted(make_call(&app, &key_a, "shared-key", &call(&agent_a)).await).await;
    assert_eq!(again_a, a);
}

#[tokio::test]
async fn idempotency_keys_work_on_the_messaging_endpoint() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Sms).await;
    app.set_rate(&agent, 100).await;
    let sms = json!({"agent_id": agent, "to": TO, "channel": "sms"});

    let send = |body: &Value| {
        post_with_key(
            &app,
            "/messaging/conversation",
            &key,
            "sms-retry",
            body.to_string(),
        )
    };
    let first = accepted(send(&sms).await).await;
    let again = accepted(send(&sms).await).await;
    assert_eq!(again, first);

    let different = json!({"agent_id": agent, "to": "447700900124", "channel": "sms"});
    assert_error(
        send(&different).await,
        422,
        "Idempotency-Key reused with a different request",
    )
    .await;

    let listed = listed_sessions(&app, &key, &agent).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["session_id"], first["session_id"]);
    assert_eq!(app.stored_sessions(&agent).await, 1);
}

#[tokio::test]
async fn a_replay_after_a_restart_answers_the_first_response() {
    let mut app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Voice).await;

    let first = accepted(make_call(&app, &key, "durable", &call(&agent)).await).await;
    app.restart().await;
    let again = accepted(make_call(&app, &key, "durable", &call(&agent)).await).await;

    assert_eq!(again, first);
    assert_eq!(app.stored_sessions(&agent).await, 1);
}

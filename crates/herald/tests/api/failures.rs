//! Runs that cannot succeed end: a session whose stored state, input or
//! agent version cannot be read ends `failed` with an `error` event (and,
//! on a call, its callback), and one whose runs keep failing for a reason
//! that may pass is tried again after a pause, then ended all the same.

use std::time::Duration;

use herald_core::Channel;
use serde_json::{json, Value};

use crate::conversations::{agent_with_flow, person, question_flow, trigger_sms};
use crate::conversations::{wait_for_agent_lines, wait_until_waiting, Person};
use crate::helpers::*;

/// The session once it has ended (within 20 s: a retry waits its pause).
async fn ended(app: &TestApp, key: &str, id: &str) -> Value {
    for _ in 0..800 {
        let session: Value = app
            .get(&format!("/sessions/{id}"), key)
            .await
            .json()
            .await
            .unwrap();
        if session["status"] == "ended" {
            return session;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("session {id} did not end");
}

/// The session's `error` event's text, once it has ended `failed`.
async fn failed_with(app: &TestApp, key: &str, id: &str) -> String {
    let session = ended(app, key, id).await;
    assert_eq!(session["outcome"], "failed", "{session}");
    let events = session["events"].as_array().unwrap();
    let error = events
        .iter()
        .find(|e| e["type"] == "error")
        .unwrap_or_else(|| panic!("no error event: {session}"));
    assert_eq!(events.last().unwrap()["type"], "ended");
    error["error"].as_str().unwrap().to_owned()
}

/// A question waiting for its answer; (key, agent number, person, session).
async fn waiting(app: &TestApp) -> (String, String, String, String) {
    let (key, agent, number) = agent_with_flow(app, Channel::Sms, question_flow()).await;
    let you = person();
    let id = trigger_sms(app, &key, &agent, &you, json!([])).await;
    wait_for_agent_lines(app, &key, &id, 1).await;
    wait_until_waiting(app, &id).await;
    (key, number, you, id)
}

#[tokio::test]
async fn an_unreadable_stored_state_ends_the_session_failed() {
    let app = TestApp::spawn().await;
    let (key, number, you, id) = waiting(&app).await;
    app.db()
        .await
        .execute(
            "UPDATE sessions SET flow_state = '{\"flow\": 3}' WHERE id = $1",
            &[&id],
        )
        .await;
    Person::new(&app, &key, "sms", &you, &number)
        .says("yes")
        .await;
    assert_eq!(
        failed_with(&app, &key, &id).await,
        "the session's stored state cannot be read"
    );
}

#[tokio::test]
async fn an_input_of_an_unknown_kind_is_an_error_not_text() {
    let app = TestApp::spawn().await;
    let (key, number, you, id) = waiting(&app).await;
    app.db()
        .await
        .execute(
            "INSERT INTO session_inputs (session_id, kind, text, at) \
             VALUES ($1, 'smoke_signal', 'yes', 0)",
            &[&id],
        )
        .await;
    // A real answer wakes the session, and finds the other first.
    Person::new(&app, &key, "sms", &you, &number)
        .says("yes")
        .await;
    assert_eq!(
        failed_with(&app, &key, &id).await,
        "an input of the session cannot be read"
    );
}

#[tokio::test]
async fn a_missing_agent_version_ends_a_call_failed_and_reports_it() {
    let mut app = TestApp::spawn().await;
    let receiver = TestReceiver::start().await;
    let key = app.new_key("gone").await;
    let flow = json!({
        "format": 1,
        "start": "ask",
        "nodes": [
            {"id": "ask", "type": "collect_input", "prompt": "Your score?", "entity": "number",
             "parameter": "SCORE", "success": "end", "invalid": "end", "no_input": "end",
             "timeout_secs": 600},
            {"id": "end", "type": "end"}
        ]
    });
    let created: Value = app
        .post(
            "/agents",
            &key,
            json!({"name": "v", "type": "voice", "number": unique_number(), "flow": flow}),
        )
        .await
        .json()
        .await
        .unwrap();
    let agent = created["agent_id"].as_str().unwrap().to_owned();
    app.post(&format!("/agents/{agent}/publish"), &key, json!({}))
        .await;
    let answer: Value = app
        .post(
            "/telephony/make-call",
            &key,
            json!({"agent_id": agent, "to": person(), "status_url": receiver.url}),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = answer["session_id"].as_str().unwrap().to_owned();
    app.wait_for_event(&key, &id, "speak").await;
    wait_until_waiting(&app, &id).await;
    // A restarted server has no copy of the version in memory.
    app.stop().await;
    app.db()
        .await
        .execute("DELETE FROM agent_versions WHERE agent_id = $1", &[&agent])
        .await;
    app.restart().await;
    let session: Value = app
        .get(&format!("/sessions/{id}"), &key)
        .await
        .json()
        .await
        .unwrap();
    let to = session["to"].as_str().unwrap().to_owned();
    let number = session["from"].as_str().unwrap().to_owned();
    let response = app
        .post(
            "/simulator/inbound",
            &key,
            json!({"channel": "voice", "from": to, "to": number, "digits": "9"}),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        failed_with(&app, &key, &id).await,
        "the session's agent version is missing"
    );
    let got = receiver.wait_for(1).await;
    assert_eq!(got[0].body["status"], "failed");
    assert_eq!(
        got[0].body["conversation_uuid"],
        session["conversation_uuid"]
    );
}

#[tokio::test]
async fn runs_that_keep_failing_are_retried_then_the_session_ends() {
    let app = TestApp::spawn_with(|c| {
        c.dispatch_max_attempts = 2;
        c.dispatch_lease = Duration::from_secs(1);
    })
    .await;
    let receiver = TestReceiver::start().await;
    let (key, agent, number) = agent_with_flow(&app, Channel::Sms, question_flow()).await;
    let you = person();
    let answer: Value = app
        .post(
            "/messaging/conversation",
            &key,
            json!({"agent_id": agent, "to": you, "channel": "sms", "status_url": receiver.url}),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = answer["session_id"].as_str().unwrap().to_owned();
    receiver.wait_for(2).await;
    wait_until_waiting(&app, &id).await;
    // Every run fails to write the callbacks of its messages' statuses: a
    // failure that may pass.
    let db = app.db().await;
    db.fail_inserts_into("callbacks").await;
    let answered_at = std::time::Instant::now();
    Person::new(&app, &key, "sms", &you, &number)
        .says("yes")
        .await;
    let error = failed_with(&app, &key, &id).await;
    assert_eq!(error, "the session could not run: 2 attempts failed");
    // The second run came after a pause (5 s, less a fifth at most), not
    // at once.
    assert!(
        answered_at.elapsed() >= Duration::from_secs(4),
        "tried again after {:?}",
        answered_at.elapsed()
    );
    // The runs that failed are those that took the statuses of the reply
    // to "yes" (each status has a callback): none of them is recorded.
    let session = ended(&app, &key, &id).await;
    let events = session["events"].as_array().unwrap();
    let sent: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "message_sent")
        .map(|e| &e["message_uuid"])
        .collect();
    assert_eq!(sent.len(), 2, "{session}");
    let reported = events
        .iter()
        .find(|e| e["type"] == "message_status" && &e["message_uuid"] == sent[1]);
    assert!(
        reported.is_none(),
        "a failed run recorded something: {session}"
    );
    db.allow_inserts_into("callbacks").await;
}

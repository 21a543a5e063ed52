//! CONTRACT §7 (sessions) and §8 (the simulator's outcomes).

use std::time::Duration;

use herald_core::Channel;
use serde_json::{json, Value};

use crate::helpers::*;

async fn trigger(app: &TestApp, key: &str, channel: Channel, agent: &str, to: &str) -> String {
    let (path, body) = match channel {
        Channel::Voice => ("/telephony/make-call", json!({"agent_id": agent, "to": to})),
        Channel::Sms => (
            "/messaging/conversation",
            json!({"agent_id": agent, "to": to, "channel": "sms"}),
        ),
        Channel::Whatsapp => (
            "/messaging/conversation",
            json!({"agent_id": agent, "to": to, "channel": "whatsapp", "status_url": "https://example.com/hook",
                   "namespace": "ns", "template": "plain", "locale": "en"}),
        ),
    };
    let response = app.post(path, key, body).await;
    assert_eq!(response.status(), 200, "{to}");
    response.json::<Value>().await.unwrap()["session_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_session_reads_back_whole_and_ends_with_an_outcome() {
    let app = TestApp::spawn_with(|c| c.simulator_delay = Duration::from_millis(300)).await;
    let (key, agent) = account_with_agent(&app, Channel::Voice).await;
    let id = trigger(&app, &key, Channel::Voice, &agent, "447700900123").await;
    let early: Value = app
        .get(&format!("/sessions/{id}"), &key)
        .await
        .json()
        .await
        .unwrap();
    assert!(
        early["status"] == "queued" || early["status"] == "active",
        "{early}"
    );
    assert_eq!(early["outcome"], Value::Null);
    assert_eq!(early["ended_at"], Value::Null);
    for field in [
        "session_id",
        "agent_id",
        "agent_version",
        "channel",
        "to",
        "from",
        "status",
        "outcome",
        "session_parameters",
        "created_at",
        "ended_at",
        "events",
    ] {
        assert!(early.get(field).is_some(), "{field} is present");
    }
    let session = app.ended_session(&key, &id).await;
    assert_eq!(session["session_id"], id.as_str());
    assert_eq!(session["agent_id"], agent.as_str());
    assert_eq!(session["agent_version"], 1);
    assert_eq!(session["outcome"], "completed");
    let events = session["events"].as_array().unwrap();
    assert_eq!(events.first().unwrap()["type"], "queued");
    assert_eq!(events.last().unwrap()["type"], "ended");
    let times: Vec<&str> = events
        .iter()
        .map(|e| e["timestamp"].as_str().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "events are in order: {times:?}"
    );
}

#[tokio::test]
async fn the_simulator_follows_the_outcome_table() {
    let app = TestApp::spawn().await;
    let key = app.new_key("acme").await;
    app.register_template(&key, "plain", None, "Hello").await;
    let table: [(&str, [&str; 3]); 7] = [
        ("90", ["busy", "rejected", "rejected"]),
        ("91", ["rejected", "failed", "failed"]),
        ("92", ["timeout", "completed", "completed"]),
        ("93", ["failed", "completed", "completed"]),
        ("94", ["cancelled", "completed", "completed"]),
        ("95", ["completed", "completed", "completed"]),
        ("23", ["completed", "completed", "completed"]),
    ];
    let channels = [Channel::Voice, Channel::Sms, Channel::Whatsapp];
    let mut agents = Vec::new();
    for channel in channels {
        let agent = app.published_agent(&key, channel, &unique_number()).await;
        app.set_rate(&agent, 100).await;
        agents.push(agent);
    }
    for (digits, outcomes) in table {
        for (i, channel) in channels.into_iter().enumerate() {
            let id = trigger(
                &app,
                &key,
                channel,
                &agents[i],
                &format!("4477009001{digits}"),
            )
            .await;
            let expected: &[&str] = match (channel, digits) {
                (Channel::Voice, _) => &[],
                (_, "90") => &["rejected"],
                (_, "91") => &["failed"],
                (_, "92") => &["sent", "delivered"],
                (_, "93") => &["sent"],
                (Channel::Whatsapp, _) => &["sent", "delivered", "read"],
                _ => &["sent", "delivered"],
            };
            let session = app.ended_with_statuses(&key, &id, expected.len()).await;
            assert_eq!(session["outcome"], outcomes[i], "{channel} to ...{digits}");
            let statuses: Vec<&str> = session["events"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["type"] == "message_status")
                .map(|e| e["status"].as_str().unwrap())
                .collect();
            assert_eq!(statuses, expected, "{channel} to ...{digits}");
        }
    }
    // A SIP URI's numeric user part counts too.
    let id = trigger(
        &app,
        &key,
        Channel::Voice,
        &agents[0],
        "sip:447700900190@pbx.example.com",
    )
    .await;
    assert_eq!(app.ended_session(&key, &id).await["outcome"], "busy");
}

#[tokio::test]
async fn sessions_list_newest_first_with_a_cursor() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Sms).await;
    let other_agent = app
        .published_agent(&key, Channel::Sms, &unique_number())
        .await;
    app.set_rate(&agent, 100).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(trigger(&app, &key, Channel::Sms, &agent, "447700900123").await);
    }
    let other = trigger(&app, &key, Channel::Sms, &other_agent, "447700900123").await;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/sessions?agent_id={agent}&limit=2&cursor={c}"),
            None => format!("/sessions?agent_id={agent}&limit=2"),
        };
        let page: Value = app.get(&path, &key).await.json().await.unwrap();
        let sessions = page["sessions"].as_array().unwrap();
        assert!(sessions.len() <= 2);
        seen.extend(
            sessions
                .iter()
                .map(|s| s["session_id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    ids.reverse();
    assert_eq!(seen, ids, "every session once, newest first");
    let all: Value = app.get("/sessions", &key).await.json().await.unwrap();
    assert_eq!(all["sessions"].as_array().unwrap().len(), 6);
    assert_eq!(all["sessions"][0]["session_id"], other.as_str());
    assert_eq!(all["next_cursor"], Value::Null);
}

#[tokio::test]
async fn sessions_filter_by_status() {
    // A long simulator pause holds the call in its `active` state.
    let app = TestApp::spawn_with(|c| c.simulator_delay = Duration::from_secs(30)).await;
    let (key, agent) = account_with_agent(&app, Channel::Voice).await;
    let id = trigger(&app, &key, Channel::Voice, &agent, "447700900123").await;
    for _ in 0..200 {
        let session: Value = app
            .get(&format!("/sessions/{id}"), &key)
            .await
            .json()
            .await
            .unwrap();
        if session["status"] == "active" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (status, expected) in [("queued", json!([])), ("ended", json!([]))] {
        let page: Value = app
            .get(&format!("/sessions?status={status}"), &key)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(page["sessions"], expected, "{status}");
    }
    let active: Value = app
        .get("/sessions?status=active", &key)
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = active["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["session_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [id.as_str()]);
}

#[tokio::test]
async fn bad_listing_parameters_are_400() {
    let app = TestApp::spawn().await;
    let key = app.new_key("acme").await;
    for (query, message) in [
        ("limit=0", "limit must be an integer from 1 to 100"),
        ("limit=101", "limit must be an integer from 1 to 100"),
        ("limit=ten", "limit must be an integer from 1 to 100"),
        ("status=lost", "status must be one of queued, active, ended"),
        ("cursor=xyz", "cursor is not valid"),
    ] {
        assert_error(
            app.get(&format!("/sessions?{query}"), &key).await,
            400,
            message,
        )
        .await;
    }
}

#[tokio::test]
async fn accounts_never_see_each_other_s_sessions() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Sms).await;
    let other = app.new_key("other").await;
    let id = trigger(&app, &key, Channel::Sms, &agent, "447700900123").await;
    app.ended_session(&key, &id).await;
    assert_error(
        app.get(&format!("/sessions/{id}"), &other).await,
        404,
        &format!("Session {id} was not found"),
    )
    .await;
    let listed: Value = app.get("/sessions", &other).await.json().await.unwrap();
    assert_eq!(listed["sessions"], json!([]));
    let filtered: Value = app
        .get(&format!("/sessions?agent_id={agent}"), &other)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(filtered["sessions"], json!([]));
    assert_error(
        app.get("/sessions/not-an-id", &key).await,
        404,
        "Session not-an-id was not found",
    )
    .await;
}

/// A session that runs longer than its job's lease keeps the lease and is
/// dispatched once.
#[tokio::test]
async fn a_session_longer_than_its_lease_is_dispatched_once() {
    let app = TestApp::spawn_with(|c| {
        // The call takes about three times the lease (ringing, speaking).
        c.dispatch_lease = Duration::from_millis(200);
        c.simulator_delay = Duration::from_millis(300);
    })
    .await;
    let (key, agent) = account_with_agent(&app, Channel::Voice).await;
    let id = trigger(&app, &key, Channel::Voice, &agent, "447700900123").await;
    let session = app.ended_session(&key, &id).await;
    assert_eq!(session["outcome"], "completed");
    // Events are keyed by step, so a second run would not show in them; it
    // would finish the session a second time, which the metrics count.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let ended = metrics
        .lines()
        .find(|l| {
            l.starts_with("herald_sessions_ended_total{") && l.contains("outcome=\"completed\"")
        })
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(ended.ends_with(" 1"), "{ended}");
}

//! A server's capacity is shared between accounts: one account's sessions,
//! however many and however slow the endpoints they wait on, never keep
//! another account's sessions waiting for long.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_core::Channel;
use serde_json::json;

use crate::conversations::{agent_with_flow, person, trigger_sms};
use crate::helpers::*;

/// An endpoint that takes every connection and never answers; its URL,
/// and how many connections it holds.
async fn silent_endpoint() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/slow", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
            counted.fetch_add(1, Ordering::SeqCst);
        }
    });
    (url, count)
}

#[tokio::test]
async fn one_account_s_slow_webhooks_do_not_hold_up_another_account() {
    let app = TestApp::spawn_with(|c| {
        c.max_running_sessions = 8;
        c.max_running_sessions_per_account = 4;
    })
    .await;
    let (slow, calls) = silent_endpoint().await;
    let flow = json!({
        "format": 1,
        "start": "lookup",
        "nodes": [
            {"id": "lookup", "type": "webhook", "url": slow, "timeout_secs": 30,
             "success": "end", "failure": "end"},
            {"id": "end", "type": "end"}
        ]
    });
    let (busy, agent, _) = agent_with_flow(&app, Channel::Sms, flow).await;
    app.set_rate(&agent, 100).await;
    // More sessions than the server runs at once, each waiting 30 s.
    let mut waiting = Vec::new();
    for _ in 0..12 {
        waiting.push(trigger_sms(&app, &busy, &agent, &person(), json!([])).await);
    }
    // The account's share of the server is waiting on the endpoint.
    for _ in 0..400 {
        if calls.load(Ordering::SeqCst) >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        calls.load(Ordering::SeqCst) >= 4,
        "the webhooks were not called"
    );

    let (other, plain) = account_with_agent(&app, Channel::Sms).await;
    let started = Instant::now();
    let id = trigger_sms(&app, &other, &plain, &person(), json!([])).await;
    let session = app.ended_session(&other, &id).await;
    assert_eq!(session["outcome"], "completed");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the other account's session waited {:?} behind the slow webhooks",
        started.elapsed()
    );
    // The slow sessions are all still waiting on their webhook.
    for id in &waiting {
        let session: serde_json::Value = app
            .get(&format!("/sessions/{id}"), &busy)
            .await
            .json()
            .await
            .unwrap();
        assert_ne!(session["status"], "ended", "{session}");
    }
}

//! CONTRACT §5.4 through an outage of the receiver: while nothing listens
//! at a `status_url` (connections refused, not error answers), callbacks are
//! tried again on the configured schedule and never sooner, each keeping the
//! `webhook-id` it was written with (§5.3); once a receiver listens there
//! again every callback of every session arrives, once, each session's in
//! the order its statuses happened, and signed.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use herald_core::webhook::SigningKey;
use herald_core::Channel;
use serde_json::{json, Value};

use crate::helpers::*;

/// Every retry waits this long (±20% jitter, CONTRACT §5.4)...
const STEP: Duration = Duration::from_millis(300);
/// ...and there are enough of them that the outage cannot exhaust them.
const RETRIES: usize = 40;
const SESSIONS: usize = 5;
/// Failed attempts each session's first callback makes before the
/// receiver comes up.
const FAILED_ATTEMPTS: i64 = 3;

#[tokio::test]
async fn callbacks_held_through_a_receiver_outage_all_arrive_in_order() {
    let app = TestApp::spawn_with(|c| c.callback_retry_schedule = vec![STEP; RETRIES]).await;
    let (key, agent) = account_with_agent(&app, Channel::Sms).await;
    app.set_rate(&agent, 100).await;
    let account: Value = app.get("/account", &key).await.json().await.unwrap();
    let signing = SigningKey::from_secret(account["webhook_secret"].as_str().unwrap()).unwrap();

    // A loopback port with nothing listening on it: bound, then let go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let status_url = format!("http://127.0.0.1:{port}/callbacks");

    // Each session's messages go sent, then delivered (CONTRACT §8.1).
    let mut triggered: HashMap<String, Instant> = HashMap::new();
    for _ in 0..SESSIONS {
        let at = Instant::now();
        let response = app
            .post(
                "/messaging/conversation",
                &key,
                json!({"agent_id": agent, "to": "447700900123", "channel": "sms", "status_url": status_url}),
            )
            .await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        triggered.insert(body["session_id"].as_str().unwrap().to_owned(), at);
    }
    for id in triggered.keys() {
        let session = app.ended_session(&key, id).await;
        assert_eq!(session["outcome"], "completed", "{session}");
    }

    // The outage: each session's first callback fails, again and again;
    // its second waits behind it, untried.
    let db = app.db().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let retried = db
            .count(
                &format!("SELECT COUNT(*) FROM callbacks WHERE attempts >= {FAILED_ATTEMPTS}"),
                &[],
            )
            .await;
        if retried >= SESSIONS as i64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {retried} callbacks failed {FAILED_ATTEMPTS} times in 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let count = |sql: &'static str| db.count(sql, &[]);
    assert_eq!(
        count("SELECT COUNT(*) FROM callbacks WHERE state = 'pending'").await,
        2 * SESSIONS as i64,
        "a sent and a delivered callback per session, all waiting"
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM callbacks WHERE attempts > 0").await,
        SESSIONS as i64,
        "only each session's first callback was tried"
    );
    // The callbacks as they are during the outage, webhook-ids included.
    let during_outage = db.dump().await;

    let receiver = TestReceiver::start_on(port).await;
    let got = receiver.wait_for(2 * SESSIONS).await;
    // A little longer, for any duplicate.
    tokio::time::sleep(STEP * 2).await;
    assert_eq!(
        receiver.attempts().len(),
        2 * SESSIONS,
        "each callback arrives once: {:?}",
        receiver
            .attempts()
            .iter()
            .map(|c| &c.body)
            .collect::<Vec<_>>()
    );

    let mut by_session: HashMap<String, Vec<&Received>> = HashMap::new();
    for callback in &got {
        let session = callback.body["session_id"].as_str().unwrap().to_owned();
        by_session.entry(session).or_default().push(callback);
    }
    assert_eq!(
        by_session.keys().collect::<HashSet<_>>(),
        triggered.keys().collect::<HashSet<_>>()
    );
    let mut webhook_ids = HashSet::new();
    for (session, callbacks) in &by_session {
        let statuses: Vec<&str> = callbacks
            .iter()
            .map(|c| c.body["status"].as_str().unwrap())
            .collect();
        assert_eq!(statuses, ["sent", "delivered"], "session {session}");
        for c in callbacks {
            let header = |name: &str| c.headers[name].to_str().unwrap().to_owned();
            let id = header("webhook-id");
            let timestamp: i64 = header("webhook-timestamp").parse().unwrap();
            assert!(
                signing.verify(&id, timestamp, &c.raw, &header("webhook-signature")),
                "session {session}: the signature of {id} checks out"
            );
            assert!(webhook_ids.insert(id.clone()), "webhook-id {id} twice");
            assert!(
                during_outage.contains(&id),
                "session {session}: {id} is the webhook-id the callback had during the outage"
            );
        }

        // The first callback: tried and failed while nothing listened, and
        // delivered by a later attempt under the same webhook-id.
        let (sent, delivered) = (callbacks[0], callbacks[1]);
        let sent_id = sent.headers["webhook-id"].to_str().unwrap();
        let attempts = db
            .count(
                "SELECT attempts FROM callbacks WHERE webhook_id = $1 AND state = 'delivered'",
                &[sent_id],
            )
            .await;
        assert!(
            attempts > FAILED_ATTEMPTS,
            "session {session}: sent was delivered on attempt {attempts}"
        );
        // Never sooner than the schedule allows: each of the attempts - 1
        // retries came at least 80% of a step after the attempt before, and
        // the first attempt came after the trigger.
        let least = STEP.mul_f64(0.8) * (attempts as u32 - 1);
        let took = sent.at - triggered[session];
        assert!(
            took >= least,
            "session {session}: {attempts} attempts within {took:?} of the trigger, \
             the schedule allows them no sooner than {least:?}"
        );

        // The second: held back until the first was delivered, then
        // delivered by its first attempt.
        let delivered_id = delivered.headers["webhook-id"].to_str().unwrap();
        let attempts = db
            .count(
                "SELECT attempts FROM callbacks WHERE webhook_id = $1 AND state = 'delivered'",
                &[delivered_id],
            )
            .await;
        assert_eq!(
            attempts, 1,
            "session {session}: delivered waited for sent, then went through at once"
        );
        assert!(delivered.at >= sent.at, "session {session}");
    }
}

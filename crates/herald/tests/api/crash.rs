//! A crash under load, on the suite's backend: a real `herald serve`, killed
//! with SIGKILL while triggers keep arriving and sessions are in flight, then
//! started again on the same database. CONTRACT §2.3: every session
//! acknowledged with a 200 is stored and runs to its end, and runs once (one
//! `dispatched` event, however many workers picked it up); §5.3–5.4: its
//! callbacks are all delivered, each under the one `webhook-id` it was
//! written with, even when the dead server had already sent it and the new
//! one sends it again.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::*;

/// Concurrent clients sending triggers, each one every `PACE` or so.
const LOADERS: usize = 4;
const PACE: Duration = Duration::from_millis(40);
/// The server is killed once it acknowledged this many sessions and
/// delivered this many callbacks: with work at every stage.
const ACKNOWLEDGED_BEFORE_CRASH: usize = 60;
const DELIVERED_BEFORE_CRASH: usize = 20;
const STATUSES: [&str; 2] = ["sent", "delivered"];

/// Polls until `sql` counts zero rows.
async fn until_none(db: &TestDb, sql: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n = db.count(sql, &[]).await;
        if n == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{sql}: still {n}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_killed_under_load_loses_no_acknowledged_session_or_callback() {
    let dir = tempfile::tempdir().unwrap();
    let database = crate::BACKEND.fresh_database(dir.path()).await;
    let key = create_key(&database);
    // A slow receiver: at any moment some callbacks have arrived but not yet
    // been answered, so the crash cuts them off and they are sent again.
    let receiver = TestReceiver::start().await;
    receiver.answer_after(Duration::from_millis(300));
    let client = reqwest::Client::new();
    // Steps of 100 ms keep sessions in flight; a dead worker's sessions and
    // callbacks are taken up after a lease of 1 s and 2 s respectively.
    let args = [
        "--database",
        &database,
        "--allow-private-callbacks",
        "--default-rate",
        "10000",
        "--simulator-delay-ms",
        "100",
        "--dispatch-lease-secs",
        "1",
        "--callback-timeout-secs",
        "1",
        "--callback-retry-schedule",
        "0.2,0.2,0.2,0.2,0.2,0.2,0.2,0.2,0.2,0.2",
    ];
    let server = ServeProcess::start(&args, &[]).await;

    let agent = server.published_agent(&key, "sms", &unique_number()).await;

    // Clients keep triggering until the server is gone; each keeps what it
    // was answered other than a 200.
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut loaders = Vec::new();
    for _ in 0..LOADERS {
        let client = client.clone();
        let url = format!("{}/messaging/conversation", server.base);
        let key = key.clone();
        let body = json!({"agent_id": agent, "to": "447700900123", "channel": "sms", "status_url": receiver.url});
        let acknowledged = acknowledged.clone();
        loaders.push(tokio::spawn(async move {
            let mut other_answers = Vec::new();
            loop {
                let Ok(response) = client
                    .post(&url)
                    .header("X-Vgai-Key", &key)
                    .json(&body)
                    .send()
                    .await
                else {
                    break;
                };
                let status = response.status().as_u16();
                // A 200 whose body never arrived acknowledged nothing.
                let Ok(answer) = response.json::<Value>().await else {
                    break;
                };
                match answer["session_id"].as_str() {
                    Some(id) if status == 200 => acknowledged.lock().unwrap().push(id.to_owned()),
                    _ => other_answers.push((status, answer)),
                }
                tokio::time::sleep(PACE).await;
            }
            other_answers
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let n = acknowledged.lock().unwrap().len();
        let delivered = receiver.received().len();
        if n >= ACKNOWLEDGED_BEFORE_CRASH && delivered >= DELIVERED_BEFORE_CRASH {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "in 15 s only {n} triggers acknowledged and {delivered} callbacks delivered"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.kill();
    let mut other_answers = Vec::new();
    for loader in loaders {
        other_answers.extend(loader.await.unwrap());
    }
    assert!(
        other_answers.is_empty(),
        "answers other than 200 under load: {other_answers:?}"
    );
    let acknowledged = acknowledged.lock().unwrap().clone();

    // Everything acknowledged is stored; the crash caught some of it in
    // flight.
    let db = TestDb::connect(&database).await;
    for id in &acknowledged {
        let stored = db
            .count(
                "SELECT COUNT(*) FROM sessions WHERE CAST(id AS TEXT) = $1",
                &[id],
            )
            .await;
        assert_eq!(stored, 1, "session {id} was acknowledged");
    }
    let unfinished = db
        .count("SELECT COUNT(*) FROM sessions WHERE status <> 'ended'", &[])
        .await;
    assert!(unfinished > 0, "no session was in flight at the crash");

    let server = ServeProcess::start(&args, &[]).await;
    for id in &acknowledged {
        let session = server.ended(&key, id).await;
        assert_eq!(session["outcome"], "completed", "{session}");
        let dispatched = session["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "dispatched")
            .count();
        assert_eq!(dispatched, 1, "session {id} was dispatched once: {session}");
    }
    // So do the sessions stored but never acknowledged (their 200 was cut
    // off by the crash): nothing is left behind.
    until_none(&db, "SELECT COUNT(*) FROM sessions WHERE status <> 'ended'").await;
    until_none(&db, "SELECT COUNT(*) FROM dispatch_jobs").await;
    until_none(
        &db,
        "SELECT COUNT(*) FROM callbacks WHERE state <> 'delivered'",
    )
    .await;

    // Each acknowledged session's statuses arrived, each callback under one
    // webhook-id however often it was sent; and every callback the store
    // holds arrived.
    let mut ids: HashMap<(String, String), HashSet<String>> = HashMap::new();
    for callback in receiver.received() {
        let key = (
            callback.body["session_id"].as_str().unwrap().to_owned(),
            callback.body["status"].as_str().unwrap().to_owned(),
        );
        let id = callback.headers["webhook-id"].to_str().unwrap().to_owned();
        ids.entry(key).or_default().insert(id);
    }
    for session in &acknowledged {
        for status in STATUSES {
            let got = ids
                .get(&(session.clone(), status.to_owned()))
                .unwrap_or_else(|| panic!("session {session}: no {status} callback"));
            assert_eq!(got.len(), 1, "session {session}, {status}: {got:?}");
        }
    }
    for ((session, status), got) in &ids {
        assert_eq!(got.len(), 1, "session {session}, {status}: {got:?}");
    }
    let stored = db.count("SELECT COUNT(*) FROM callbacks", &[]).await;
    assert_eq!(ids.len() as i64, stored, "every stored callback arrived");
    assert!(
        receiver.received().len() > ids.len(),
        "no callback was cut off by the crash and sent again: the test missed its point"
    );
}

//! Secrets stay secret, and the guard on outbound calls holds: a password
//! or token in a URL (a database's, a `status_url`'s, a webhook node's)
//! reaches no log line, no event and no error text, and no proxy carries a
//! call to an internal address past the guard.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

const PASSWORD: &str = "pa55w0rd-in-a-url";
const TOKEN: &str = "t0ken-in-a-query";

/// Polls the session until it has ended and recorded `n` events of `kind`.
async fn session_with(server: &ServeProcess, key: &str, id: &str, kind: &str, n: usize) -> Value {
    let client = reqwest::Client::new();
    let mut session = Value::Null;
    for _ in 0..400 {
        session = client
            .get(format!("{}/sessions/{id}", server.base))
            .header("X-Vgai-Key", key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let seen = session["events"]
            .as_array()
            .map_or(0, |e| e.iter().filter(|e| e["type"] == kind).count());
        if session["status"] == "ended" && seen >= n {
            return session;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("session {id} did not record {n} {kind} events: {session}");
}

#[tokio::test]
async fn passwords_and_tokens_in_urls_reach_no_log_line_or_event() {
    let dir = tempfile::tempdir().unwrap();
    let database = crate::BACKEND.fresh_database(dir.path()).await;
    let log = dir.path().join("herald.log");
    // Made before the server starts, so that it knows the key at once.
    let key = create_key(&database);
    // As in production: internal addresses refused, so the callbacks and
    // the webhook below are refused and logged.
    let server = ServeProcess::start_with(ServeOptions {
        args: &["--database", &database],
        envs: &[("HERALD_LOG", "debug,sqlx=warn,hyper=info")],
        log: Some(&log),
        ..ServeOptions::default()
    })
    .await;
    let client = reqwest::Client::new();
    let secret_url = format!("http://ops:{PASSWORD}@127.0.0.1:9/hook?token={TOKEN}&v=1");
    let flow = json!({
        "format": 1,
        "start": "lookup",
        "nodes": [
            {"id": "lookup", "type": "webhook", "url": secret_url,
             "success": "done", "failure": "done"},
            {"id": "done", "type": "send_message", "text": "Done.", "next": "end"},
            {"id": "end", "type": "end"}
        ]
    });
    let created: Value = client
        .post(format!("{}/agents", server.base))
        .header("X-Vgai-Key", &key)
        .json(&json!({"name": "sms", "type": "sms", "number": unique_number(), "flow": flow}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let agent = created["agent_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{created}"));
    let published = client
        .post(format!("{}/agents/{agent}/publish", server.base))
        .header("X-Vgai-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), 200);
    let status_url = format!("http://cb:{PASSWORD}@127.0.0.1:9/status?token={TOKEN}");
    let answer: Value = client
        .post(format!("{}/messaging/conversation", server.base))
        .header("X-Vgai-Key", &key)
        .json(
            &json!({"agent_id": agent, "to": "447700900123", "channel": "sms",
                      "status_url": status_url}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = answer["session_id"].as_str().expect("a session");
    // Two statuses (sent, delivered), each callback refused.
    let session = session_with(&server, &key, id, "callback_failed", 2).await;

    let events: Vec<&Value> = session["events"].as_array().unwrap().iter().collect();
    let called = events
        .iter()
        .find(|e| e["type"] == "webhook_called")
        .expect("a webhook_called event");
    assert_eq!(called["url"], "http://***@127.0.0.1:9/hook?token=***&v=***");
    assert!(events.iter().any(|e| e["type"] == "webhook_failed"));
    let metrics = client
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("is an internal address"),
        "the refusals are logged: {logged}"
    );
    let shown = serde_json::to_string(&events).unwrap();
    for (what, text) in [("events", &shown), ("log", &logged), ("metrics", &metrics)] {
        assert!(!text.contains(PASSWORD), "a password in the {what}: {text}");
        assert!(!text.contains(TOKEN), "a token in the {what}: {text}");
    }
}

#[tokio::test]
async fn a_database_password_reaches_no_error_message() {
    // Nothing listens on port 1; the password must not come back.
    let url = format!("postgres://herald:{PASSWORD}@127.0.0.1:1/herald");
    for args in [
        vec!["keys", "create", "--account", "acme", "--database", &url],
        vec!["serve", "--database", &url, "--listen", "127.0.0.1:0"],
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(&args)
            .env_remove("HERALD_DATABASE_URL")
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?} succeeded");
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(said.contains("127.0.0.1:1"), "{args:?}: {said}");
        assert!(!said.contains(PASSWORD), "{args:?}: {said}");
    }
}

/// A loopback stand-in for an HTTP proxy: records the first line of every
/// request it gets and answers 502, forwarding nothing.
async fn fake_proxy() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = vec![0; 8192];
                let n = stream.read(&mut buf).await.unwrap_or(0);
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                log.lock()
                    .unwrap()
                    .push(text.lines().next().unwrap_or_default().to_owned());
                let _ = stream
                    .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
                    .await;
            });
        }
    });
    (url, seen)
}

/// A webhook node's call, from a server started with `envs` and `args`;
/// the session's events once it ended.
async fn webhook_events(args: &[&str], envs: &[(&str, &str)], url: &str) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let database = crate::BACKEND.fresh_database(dir.path()).await;
    let mut all = vec!["--database", database.as_str()];
    all.extend_from_slice(args);
    let key = create_key(&database);
    let server = ServeProcess::start(&all, envs).await;
    let client = reqwest::Client::new();
    let flow = json!({
        "format": 1,
        "start": "lookup",
        "nodes": [
            {"id": "lookup", "type": "webhook", "url": url, "success": "end", "failure": "end"},
            {"id": "end", "type": "end"}
        ]
    });
    let created: Value = client
        .post(format!("{}/agents", server.base))
        .header("X-Vgai-Key", &key)
        .json(&json!({"name": "sms", "type": "sms", "number": unique_number(), "flow": flow}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let agent = created["agent_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{created}"));
    client
        .post(format!("{}/agents/{agent}/publish", server.base))
        .header("X-Vgai-Key", &key)
        .send()
        .await
        .unwrap();
    let answer: Value = client
        .post(format!("{}/messaging/conversation", server.base))
        .header("X-Vgai-Key", &key)
        .json(&json!({"agent_id": agent, "to": "447700900123", "channel": "sms"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let session = server
        .ended(&key, answer["session_id"].as_str().unwrap())
        .await;
    session["events"].as_array().unwrap().clone()
}

fn failure_of(events: &[Value]) -> String {
    events
        .iter()
        .find(|e| e["type"] == "webhook_failed")
        .and_then(|e| e["error"].as_str())
        .unwrap_or_else(|| panic!("no webhook_failed event: {events:?}"))
        .to_owned()
}

#[tokio::test]
async fn proxy_variables_cannot_carry_a_call_past_the_guard() {
    let (proxy, seen) = fake_proxy().await;
    let target = TestReceiver::start().await;
    let port = target
        .url
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    let envs = [
        ("HTTP_PROXY", proxy.as_str()),
        ("http_proxy", proxy.as_str()),
        ("HTTPS_PROXY", proxy.as_str()),
        ("ALL_PROXY", proxy.as_str()),
    ];
    let events = webhook_events(&[], &envs, &format!("http://localhost:{port}/callbacks")).await;
    let error = failure_of(&events);
    assert!(error.ends_with("is an internal address"), "{error}");
    assert!(seen.lock().unwrap().is_empty(), "the proxy was used");
    assert!(
        target.attempts().is_empty(),
        "the internal address was reached"
    );
}

#[tokio::test]
async fn behind_a_named_proxy_names_are_still_checked_here() {
    let (proxy, seen) = fake_proxy().await;
    let target = TestReceiver::start().await;
    let port = target
        .url
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    let args = ["--outbound-proxy", proxy.as_str()];
    // A name of loopback is refused before the proxy sees it.
    let events = webhook_events(&args, &[], &format!("http://localhost:{port}/callbacks")).await;
    let error = failure_of(&events);
    assert!(error.ends_with("is an internal address"), "{error}");
    assert!(
        seen.lock().unwrap().is_empty(),
        "{:?}",
        seen.lock().unwrap()
    );
    // A public address goes through the proxy (which forwards nothing).
    let events = webhook_events(&args, &[], "http://93.184.215.14/x").await;
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "webhook_answered" && e["status"] == 502),
        "{events:?}"
    );
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        ["POST http://93.184.215.14/x HTTP/1.1"]
    );
    assert!(target.attempts().is_empty());
}

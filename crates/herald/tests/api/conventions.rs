//! CONTRACT §1: JSON bodies, the error shape, authentication, body size,
//! time and identifier formats.

use herald_core::Channel;
use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test]
async fn a_body_is_json_whatever_its_content_type() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Voice).await;
    let response = app
        .client
        .post(app.url("/telephony/make-call"))
        .header("X-Vgai-Key", &key)
        .header("Content-Type", "text/plain")
        .body(json!({"agent_id": agent, "to": "447700900123"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_the_error_shape() {
    let app = TestApp::spawn().await;
    let response = app
        .client
        .get(app.url("/no/such/route"))
        .send()
        .await
        .unwrap();
    assert_error(response, 404, "Route not found").await;
    let response = app
        .client
        .get(app.url("/telephony/make-call"))
        .send()
        .await
        .unwrap();
    assert_error(response, 405, "Method not allowed").await;
    let response = app.client.delete(app.url("/account")).send().await.unwrap();
    assert_error(response, 405, "Method not allowed").await;
}

#[tokio::test]
async fn a_missing_unknown_or_revoked_key_is_not_authorised() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Voice).await;
    let body = json!({"agent_id": agent, "to": "447700900123"});
    for path in ["/telephony/make-call", "/messaging/conversation"] {
        let response = app
            .client
            .post(app.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_error(response, 401, "Not Authorised").await;
        let response = app.post(path, "not-a-key", body.clone()).await;
        assert_error(response, 401, "Not Authorised").await;
    }
    // Revoked in the store (as `herald keys revoke` does).
    let server = app.server().app();
    server
        .store
        .revoke_key(herald_core::keys::hash_key(&key))
        .await
        .unwrap();
    server
        .directory
        .reload_keys(server.store.as_ref())
        .await
        .unwrap();
    let response = app.post("/telephony/make-call", &key, body).await;
    assert_error(response, 401, "Not Authorised").await;
}

#[tokio::test]
async fn authentication_comes_before_every_other_check() {
    let app = TestApp::spawn().await;
    let response = app
        .client
        .post(app.url("/telephony/make-call"))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_error(response, 401, "Not Authorised").await;
}

#[tokio::test]
async fn keys_are_accepted_in_any_header_case_and_as_bearer_tokens() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Voice).await;
    for (name, value) in [
        ("x-vgai-key", key.clone()),
        ("X-VGAI-KEY", key.clone()),
        ("Authorization", format!("Bearer {key}")),
        ("authorization", format!("bearer {key}")),
    ] {
        // One session per second by default: raise it so each header is
        // judged on its own.
        app.set_rate(&agent, 10).await;
        let response = app
            .client
            .post(app.url("/telephony/make-call"))
            .header(name, value)
            .json(&json!({"agent_id": agent, "to": "447700900123"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{name}");
    }
    let response = app
        .client
        .get(app.url("/account"))
        .header("Authorization", format!("Basic {key}"))
        .send()
        .await
        .unwrap();
    assert_error(response, 401, "Not Authorised").await;
}

#[tokio::test]
async fn bodies_over_64_kib_get_413_and_store_nothing() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Voice).await;
    let padding = "x".repeat(64 * 1024);
    let body = json!({"agent_id": agent, "to": "447700900123", "padding": padding});
    let response = app.post("/telephony/make-call", &key, body).await;
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], 413);
    let count = app
        .db()
        .await
        .count("SELECT COUNT(*) FROM sessions", &[])
        .await;
    assert_eq!(count, 0);
    // Just under the limit is fine.
    let padding = "x".repeat(60 * 1024);
    let body = json!({"agent_id": agent, "to": "447700900123", "padding": padding});
    assert_eq!(
        app.post("/telephony/make-call", &key, body).await.status(),
        200
    );
}

#[tokio::test]
async fn times_and_identifiers_have_the_contract_formats() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Voice).await;
    let response = app
        .post(
            "/telephony/make-call",
            &key,
            json!({"agent_id": agent, "to": "447700900123"}),
        )
        .await;
    let body: Value = response.json().await.unwrap();
    let id = body["session_id"].as_str().unwrap();
    assert_session_id(id);
    let start = body["session_start_time"].as_str().unwrap();
    // YYYY-MM-DDTHH:MM:SS.ffffff, no offset.
    assert_eq!(start.len(), 26, "{start}");
    assert!(chrono::NaiveDateTime::parse_from_str(start, "%Y-%m-%dT%H:%M:%S%.6f").is_ok());
    assert!(
        agent.len() == 24
            && agent
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    let session = app.ended_session(&key, id).await;
    for field in ["created_at", "ended_at"] {
        let t = session[field].as_str().unwrap();
        assert_rfc3339_millis(t);
    }
    let conversation = session["conversation_uuid"].as_str().unwrap();
    assert!(
        conversation.starts_with("CON-") && is_uuid(&conversation[4..]),
        "{conversation}"
    );
}

#[tokio::test]
async fn keys_are_stored_only_as_hashes() {
    let mut app = TestApp::spawn().await;
    // The operator's way in: the key is made and stored by the command.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["keys", "create", "--account", "acme", "--database"])
        .arg(app.config.database_url.expose())
        .output()
        .unwrap();
    assert!(output.status.success());
    let key = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    let server = app.server().app();
    server
        .directory
        .reload_keys(server.store.as_ref())
        .await
        .unwrap();
    assert_eq!(app.get("/account", &key).await.status(), 200);
    app.stop().await;
    // Nowhere in the database is the key itself: not in any row, and for
    // SQLite not in any byte of its files (freed pages and the WAL too).
    let db = app.db().await;
    assert!(!db.dump().await.contains(&key));
    for entry in std::fs::read_dir(app.dir.path()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(!bytes.windows(key.len()).any(|w| w == key.as_bytes()));
    }
    assert_eq!(
        db.key_hashes().await,
        [herald_core::keys::hash_key(&key).to_vec()]
    );
}

//! CONTRACT §2: `POST /telephony/make-call`, its fields (§2.1), its checks in
//! order (§2.2), success (§2.3) and the 500 path; §1.7 destinations.

use herald_core::Channel;
use serde_json::{json, Value};

use crate::helpers::*;

const CALL: &str = "/telephony/make-call";

#[tokio::test]
async fn the_seed_example_starts_a_session() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Voice).await;
    let response = app
        .post(
            CALL,
            &key,
            json!({
                "agent_id": agent,
                "to": "9725411116037",
                "hangup_on_answer_machine": false,
                "session_parameters": [{"name": "PROPERTY_VALUE", "value": "500"}]
            }),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body.as_object().unwrap().len(), 2, "{body}");
    let session = app
        .ended_session(&key, body["session_id"].as_str().unwrap())
        .await;
    assert_eq!(session["outcome"], "completed");
    assert_eq!(session["channel"], "voice");
    assert_eq!(session["to"], "9725411116037");
    assert_eq!(
        session["session_parameters"],
        json!([{"name": "PROPERTY_VALUE", "value": "500"}])
    );
    let kinds: Vec<&str> = session["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "queued",
            "dispatched",
            "ringing",
            "answered",
            "node_entered",
            "speak",
            "node_entered",
            "hangup",
            "ended"
        ]
    );
}

#[tokio::test]
async fn sip_uris_are_destinations() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Voice).await;
    app.set_rate(&agent, 100).await;
    for to in [
        "sip:sipnumber@sipaddress",
        "sip:alice@example.com:5060",
        "sips:bob@[2001:db8::1]:5061;transport=tls",
    ] {
        let response = app
            .post(CALL, &key, json!({"agent_id": agent, "to": to}))
            .await;
        assert_eq!(response.status(), 200, "{to}");
    }
    for to in [
        "sip:",
        "sip:@host",
        "sip:user@",
        "sip:user@ho st",
        "tel:+447700900123",
    ] {
        let response = app
            .post(CALL, &key, json!({"agent_id": agent, "to": to}))
            .await;
        assert_error(response, 400, "Bad destination number format").await;
    }
}

#[tokio::test]
async fn phone_numbers_take_one_plus_and_nothing_else() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Voice).await;
    app.set_rate(&agent, 100).await;
    let response = app
        .post(
            CALL,
            &key,
            json!({"agent_id": agent, "to": "+447700900123"}),
        )
        .await;
    assert_eq!(response.status(), 200);
    for to in [
        "",
        "++447700900123",
        "44 7700 900123",
        "44-7700-900123",
        "123456",
        "4477009001234567",
        "abc",
    ] {
        let response = app
            .post(CALL, &key, json!({"agent_id": agent, "to": to}))
            .await;
        assert_error(response, 400, "Bad destination number format").await;
    }
}

#[tokio::test]
async fn the_body_must_be_a_json_object() {
    let app = TestApp::spawn().await;
    let (key, _) = account_with_agent(&app, Channel::Voice).await;
    let response = app.post_raw(CALL, &key, "{not json").await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], 400);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("Invalid JSON body: "),
        "{body}"
    );
    for raw in ["[]", "\"text\"", "42", "null", ""] {
        let response = app.post_raw(CALL, &key, raw).await;
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["status"], 400, "{raw}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .starts_with("Invalid JSON body: "),
            "{raw}"
        );
    }
}

#[tokio::test]
async fn missing_fields_are_all_named_in_table_order() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Voice).await;
    let cases = [
        (json!({}), "Missing mandatory field(s): agent_id, to"),
        (
            json!({"agent_id": null, "to": null}),
            "Missing mandatory field(s): agent_id, to",
        ),
        (json!({"agent_id": agent}), "Missing mandatory field(s): to"),
        (
            json!({"to": "447700900123"}),
            "Missing mandatory field(s): agent_id",
        ),
    ];
    for (body, message) in cases {
        assert_error(app.post(CALL, &key, body).await, 400, message).await;
    }
    // An empty string is present, and fails its own check.
    let response = app
        .post(CALL, &key, json!({"agent_id": agent, "to": ""}))
        .await;
    assert_error(response, 400, "Bad destination number format").await;
}

#[tokio::test]
async fn wrong_types_name_the_field() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Voice).await;
    let cases = [
        (
            json!({"agent_id": 7, "to": "447700900123"}),
            "agent_id must be a string",
        ),
        (
            json!({"agent_id": agent, "to": 447700900123u64}),
            "to must be a string",
        ),
        (
            json!({"agent_id": agent, "to": "447700900123", "status_url": true}),
            "status_url must be a string",
        ),
        (
            json!({"agent_id": agent, "to": "447700900123", "hangup_on_answer_machine": "no"}),
            "hangup_on_answer_machine must be a boolean",
        ),
        (
            json!({"agent_id": agent, "to": "447700900123", "session_parameters": {"a": 1}}),
            "session_parameters must be an array",
        ),
        (
            json!({"agent_id": agent, "to": "447700900123", "session_parameters": [{"name": "bad name", "value": "x"}]}),
            "session_parameters[0].name must be 1 to 64 letters, digits or underscores",
        ),
    ];
    for (body, message) in cases {
        assert_error(app.post(CALL, &key, body).await, 400, message).await;
    }
}

#[tokio::test]
async fn status_url_must_be_absolute_http_and_not_this_service() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Voice).await;
    for url in [
        "",
        "not a url",
        "/relative",
        "ftp://example.com/x",
        "http://",
        "https://example.com/a\nb",
        "http://exa mple.com",
    ] {
        let response = app
            .post(
                CALL,
                &key,
                json!({"agent_id": agent, "to": "447700900123", "status_url": url}),
            )
            .await;
        assert_error(response, 400, "Invalid status_url").await;
    }
    let port = app.server().local_addr().port();
    for url in [
        format!("http://127.0.0.1:{port}/telephony/make-call"),
        format!("http://localhost:{port}/hook"),
        format!("{}/callbacks", app.base),
    ] {
        let response = app
            .post(
                CALL,
                &key,
                json!({"agent_id": agent, "to": "447700900123", "status_url": url}),
            )
            .await;
        assert_error(response, 400, "status_url must not point at this service").await;
    }
}

/// Each check of §2.2 answers only when every earlier one passed: a body
/// that fails steps 3 to 7 at once gets the step-3 answer, and so on.
#[tokio::test]
async fn checks_run_in_the_contract_order() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Voice).await;
    let unknown = "0123456789abcdef01234567";
    let steps: [(Value, u16, String); 6] = [
        // 3 before 4: a missing `to` beats a wrong type.
        (
            json!({"agent_id": 5}),
            400,
            "Missing mandatory field(s): to".into(),
        ),
        // 4 before 5.
        (
            json!({"agent_id": unknown, "to": "bad", "hangup_on_answer_machine": 1}),
            400,
            "hangup_on_answer_machine must be a boolean".into(),
        ),
        // 5 before 6.
        (
            json!({"agent_id": unknown, "to": "bad", "status_url": "nope"}),
            400,
            "Bad destination number format".into(),
        ),
        // 6 before 7.
        (
            json!({"agent_id": unknown, "to": "447700900123", "status_url": "nope"}),
            400,
            "Invalid status_url".into(),
        ),
        // 7: the agent.
        (
            json!({"agent_id": unknown, "to": "447700900123"}),
            404,
            format!("ID {unknown} is not an ID to any agent or published version"),
        ),
        // 8: the rate (after one accepted).
        (
            json!({"agent_id": agent, "to": "447700900123"}),
            200,
            String::new(),
        ),
    ];
    for (body, status, message) in steps {
        let response = app.post(CALL, &key, body).await;
        if status == 200 {
            assert_eq!(response.status(), 200);
        } else {
            assert_error(response, status, &message).await;
        }
    }
    let response = app
        .post(CALL, &key, json!({"agent_id": agent, "to": "447700900123"}))
        .await;
    assert_eq!(response.status(), 429);
}

#[tokio::test]
async fn agent_errors_use_the_seed_texts() {
    let app = TestApp::spawn().await;
    let key = app.new_key("acme").await;
    let draft = app
        .draft_agent(&key, Channel::Voice, &unique_number())
        .await;
    let sms = app
        .published_agent(&key, Channel::Sms, &unique_number())
        .await;
    let cases = [
        (
            json!({"agent_id": "nonsense", "to": "447700900123"}),
            404,
            "ID nonsense is not an ID to any agent or published version".to_owned(),
        ),
        (
            json!({"agent_id": draft, "to": "447700900123"}),
            404,
            format!("published version for Agent {draft} was not found"),
        ),
        (
            json!({"from": "447700900999", "to": "447700900123"}),
            404,
            "Version information for number 447700900999 doesn't exist".to_owned(),
        ),
        (
            json!({"agent_id": sms, "to": "447700900123"}),
            400,
            format!("Agent {sms} is a sms agent"),
        ),
    ];
    for (body, status, message) in cases {
        assert_error(app.post(CALL, &key, body).await, status, &message).await;
    }
}

#[tokio::test]
async fn the_legacy_from_field_names_the_agent_by_its_number() {
    let app = TestApp::spawn().await;
    let key = app.new_key("acme").await;
    let number = unique_number();
    let agent = app.published_agent(&key, Channel::Voice, &number).await;
    // `from` wins over `agent_id`, even a wrong one; a `+` is accepted.
    let response = app
        .post(
            CALL,
            &key,
            json!({"from": format!("+{number}"), "agent_id": "nonsense", "to": "447700900123"}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let session = app
        .ended_session(&key, body["session_id"].as_str().unwrap())
        .await;
    assert_eq!(session["agent_id"], agent.as_str());
    assert_eq!(session["from"], number.as_str());
    // Another account's number is unknown here.
    let other = app.new_key("other").await;
    let response = app
        .post(CALL, &other, json!({"from": number, "to": "447700900123"}))
        .await;
    assert_error(
        response,
        404,
        &format!("Version information for number {number} doesn't exist"),
    )
    .await;
}

#[tokio::test]
async fn unknown_fields_are_ignored() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Voice).await;
    let response = app
        .post(CALL, &key, json!({"agent_id": agent, "to": "447700900123", "colour": "blue", "nested": {"x": [1]}}))
        .await;
    assert_eq!(response.status(), 200);
}

/// §2.2 step 9: a store failure answers 500 with the seed's text, leaves
/// nothing behind, and costs no rate-limit quota.
#[tokio::test]
async fn a_store_failure_answers_500_and_leaves_nothing() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Voice).await;
    let db = app.db().await;
    // A real failure inside the session's transaction, after the session
    // row itself is written: the dispatch job cannot be inserted.
    db.fail_inserts_into("dispatch_jobs").await;
    let body = json!({"agent_id": agent, "to": "447700900123"});
    let response = app.post(CALL, &key, body.clone()).await;
    assert_error(
        response,
        500,
        "Failed to fetch preconfigured session information",
    )
    .await;
    for table in ["sessions", "session_events", "dispatch_jobs"] {
        let count = db
            .count(&format!("SELECT COUNT(*) FROM {table}"), &[])
            .await;
        assert_eq!(count, 0, "{table} is empty");
    }
    db.allow_inserts_into("dispatch_jobs").await;
    // The failed request did not use the agent's one session per second.
    let response = app.post(CALL, &key, body).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn an_accepted_session_survives_a_restart_before_dispatch() {
    // The call rings for two seconds, so the session is in flight when we
    // stop; it rings out after the restart, as a provider's call would.
    let mut app = TestApp::spawn_with(|c| {
        c.simulator_delay = std::time::Duration::from_secs(2);
        c.shutdown_grace = std::time::Duration::from_millis(100);
    })
    .await;
    let (key, agent) = account_with_agent(&app, Channel::Voice).await;
    let response = app
        .post(CALL, &key, json!({"agent_id": agent, "to": "447700900123"}))
        .await;
    let id = response.json::<Value>().await.unwrap()["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.stop().await;
    let stored = app
        .db()
        .await
        .count(
            "SELECT COUNT(*) FROM dispatch_jobs WHERE CAST(session_id AS TEXT) = $1",
            &[&id],
        )
        .await;
    assert_eq!(stored, 1, "the dispatch job was stored with the session");
    app.config.simulator_delay = std::time::Duration::from_millis(5);
    // The stopped server gave its lease back, so the new one starts at once.
    app.restart().await;
    let session = app.ended_session(&key, &id).await;
    assert_eq!(session["outcome"], "completed");
}

#[tokio::test]
async fn status_url_naming_the_host_clients_reach_us_by_is_refused() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Voice).await;
    app.set_rate(&agent, 100).await;
    let send = |host: &'static str, url: &'static str| {
        app.client
            .post(app.url(CALL))
            .header("X-Vgai-Key", &key)
            .header("Host", host)
            .json(&json!({"agent_id": agent, "to": "447700900123", "status_url": url}))
            .send()
    };
    // Behind a proxy: clients call herald.example.com, on 443 or 80.
    for (host, url) in [
        ("herald.example.com", "https://herald.example.com/hook"),
        ("herald.example.com", "http://HERALD.example.com/hook"),
        (
            "herald.example.com:8443",
            "https://herald.example.com:8443/hook",
        ),
    ] {
        assert_error(
            send(host, url).await.unwrap(),
            400,
            "status_url must not point at this service",
        )
        .await;
    }
    for (host, url) in [
        ("herald.example.com", "https://hooks.example.com/hook"),
        ("herald.example.com:8443", "https://herald.example.com/hook"),
    ] {
        assert_eq!(send(host, url).await.unwrap().status(), 200, "{host} {url}");
    }
}

/// Every spelling of this server's own address on its port is refused,
/// not only `127.0.0.1` and `localhost`: callbacks to any of them would
/// come back to herald itself.
#[tokio::test]
async fn status_url_spelling_this_server_s_address_any_way_is_refused() {
    // On every address of the machine, so that a name that resolves to any
    // of them names this server.
    let app = TestApp::spawn_with(|c| c.listen = ([0, 0, 0, 0], 0).into()).await;
    let (key, agent) = account_with_agent(&app, Channel::Voice).await;
    app.set_rate(&agent, 100).await;
    let port = app.server().local_addr().port();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("the machine's host name")
        .trim()
        .to_owned();
    assert!(
        tokio::net::lookup_host((host.as_str(), port)).await.is_ok(),
        "this test needs the machine's own name ({host}) to resolve"
    );
    let call = |url: String| {
        app.post(
            CALL,
            &key,
            json!({"agent_id": agent, "to": "447700900123", "status_url": url}),
        )
    };
    for url in [
        format!("http://localhost.:{port}/x"),
        format!("http://LocalHost:{port}/x"),
        format!("http://api.localhost:{port}/x"),
        format!("http://[::ffff:127.0.0.1]:{port}/x"),
        format!("http://[::ffff:7f00:1]:{port}/x"),
        format!("http://[::1]:{port}/x"),
        format!("http://127.1.2.3:{port}/x"),
        format!("http://0.0.0.0:{port}/x"),
        format!("http://{host}:{port}/x"),
        format!("http://{host}.:{port}/x"),
    ] {
        assert_error(
            call(url.clone()).await,
            400,
            "status_url must not point at this service",
        )
        .await;
    }
    // Another port of this machine is someone else's.
    let elsewhere = if port == 9 { 10 } else { 9 };
    for url in [
        format!("http://localhost:{elsewhere}/x"),
        format!("http://{host}:{elsewhere}/x"),
    ] {
        assert_eq!(call(url.clone()).await.status(), 200, "{url}");
    }
}

#[tokio::test]
async fn from_prefers_the_agent_of_this_server_s_region() {
    let app = TestApp::spawn().await;
    let key = app.new_key("acme").await;
    let number = unique_number();
    for region in ["us", "eu"] {
        let response = app
            .post(
                "/agents",
                &key,
                json!({"name": region, "type": "voice", "number": number, "region": region}),
            )
            .await;
        assert_eq!(response.status(), 201);
        let id = response.json::<Value>().await.unwrap()["agent_id"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(
            app.post(&format!("/agents/{id}/publish"), &key, json!({}))
                .await
                .status(),
            200
        );
    }
    let response = app
        .post(CALL, &key, json!({"from": number, "to": "447700900123"}))
        .await;
    assert_eq!(response.status(), 200);
}

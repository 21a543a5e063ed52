//! CONTRACT §6 (with §2.2 step 7–8 and §3.5): per-agent rate limits. At
//! most N sessions per agent in any one-second window, a burst of N accepted,
//! 429 with `Retry-After` beyond it and no session; only requests that would
//! otherwise succeed count; the default rate of 1 (`HERALD_DEFAULT_RATE`);
//! `herald limits set` obeyed within 2 seconds by a running server; regions.

use std::process::Output;
use std::time::{Duration, Instant};

use herald_core::{Channel, Region};
use serde_json::{json, Value};

use crate::helpers::{account_with_agent, assert_error, unique_number, TestApp};

const TO: &str = "447700900123";

fn call(agent: &str) -> Value {
    json!({"agent_id": agent, "to": TO})
}

/// Fires `n` identical triggers at once; returns their statuses, Retry-After
/// headers and bodies in the order they were sent.
/// The status one call to `agent` is answered with.
async fn call_status(app: &TestApp, key: &str, agent: &str) -> u16 {
    app.post("/telephony/make-call", key, call(agent))
        .await
        .status()
        .as_u16()
}

async fn burst(
    app: &TestApp,
    key: &str,
    path: &str,
    body: &Value,
    n: usize,
) -> Vec<(u16, Option<String>, Value)> {
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(n));
    let mut tasks = Vec::new();
    for _ in 0..n {
        let client = app.client.clone();
        let url = app.url(path);
        let key = key.to_owned();
        let body = body.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let response = client
                .post(url)
                .header("X-Vgai-Key", key)
                .json(&body)
                .send()
                .await
                .expect("the server answers");
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            let body: Value = response.json().await.expect("a JSON body");
            (status, retry_after, body)
        }));
    }
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    answers
}

fn count(answers: &[(u16, Option<String>, Value)], status: u16) -> usize {
    answers.iter().filter(|(s, _, _)| *s == status).count()
}

/// Asserts a 429 answer of CONTRACT §6.1.
fn assert_limited(status: u16, retry_after: Option<&str>, body: &Value) {
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["status"], 429, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "a message: {body}"
    );
    assert_eq!(
        body.as_object().unwrap().len(),
        2,
        "only status and message: {body}"
    );
    let retry_after = retry_after.expect("a Retry-After header");
    let seconds: u64 = retry_after
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After is whole seconds, got {retry_after:?}"));
    assert!(seconds >= 1, "Retry-After is at least 1, got {seconds}");
}

/// Runs the real `herald` binary against the test server's database.
async fn herald(app: &TestApp, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_herald"));
    command
        .args(args)
        .arg("--database")
        .arg(app.config.database_url.expose())
        .env_remove("HERALD_MAX_RATE")
        .env_remove("HERALD_DATABASE_URL");
    for (name, value) in envs {
        command.env(name, value);
    }
    tokio::task::spawn_blocking(move || command.output().expect("herald runs"))
        .await
        .unwrap()
}

/// Asserts that a command failed and said why on stderr.
fn assert_failed_with_message(output: &Output, what: &str) {
    assert!(
        !output.status.success(),
        "{what} must fail; stdout: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.trim().is_empty(),
        "{what} explains the failure on stderr"
    );
    assert!(
        !stderr.contains("panicked"),
        "{what} fails cleanly: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn at_the_default_rate_of_one_two_requests_at_once_get_200_then_429_with_retry_after() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Voice).await;

    let answers = burst(&app, &key, "/telephony/make-call", &call(&agent), 2).await;
    assert_eq!(count(&answers, 200), 1, "{answers:?}");
    assert_eq!(count(&answers, 429), 1, "{answers:?}");
    let (status, retry_after, body) = answers.iter().find(|(s, _, _)| *s == 429).unwrap();
    assert_limited(*status, retry_after.as_deref(), body);
    assert_eq!(app.stored_sessions(&agent).await, 1);
}

#[tokio::test]
async fn after_a_second_the_next_request_is_accepted() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Voice).await;

    assert_eq!(call_status(&app, &key, &agent).await, 200);
    let refused = app.post("/telephony/make-call", &key, call(&agent)).await;
    let status = refused.status().as_u16();
    let retry_after = refused
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body: Value = refused.json().await.unwrap();
    assert_limited(status, retry_after.as_deref(), &body);

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let response = app.post("/telephony/make-call", &key, call(&agent)).await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    assert_eq!(app.stored_sessions(&agent).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn at_rate_three_a_burst_of_three_is_accepted_and_the_fourth_refused() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Voice).await;
    app.set_rate(&agent, 3).await;

    let answers = burst(&app, &key, "/telephony/make-call", &call(&agent), 4).await;
    assert_eq!(count(&answers, 200), 3, "{answers:?}");
    assert_eq!(count(&answers, 429), 1, "{answers:?}");
    let (status, retry_after, body) = answers.iter().find(|(s, _, _)| *s == 429).unwrap();
    assert_limited(*status, retry_after.as_deref(), body);
    assert_eq!(app.stored_sessions(&agent).await, 3);
}

#[tokio::test]
async fn agents_are_limited_separately() {
    let app = TestApp::spawn().await;
    let (key, first) = account_with_agent(&app, Channel::Voice).await;
    let second = app
        .published_agent(&key, Channel::Voice, &unique_number())
        .await;

    assert_eq!(call_status(&app, &key, &first).await, 200);
    assert_eq!(call_status(&app, &key, &second).await, 200);
    assert_eq!(call_status(&app, &key, &first).await, 429);
    assert_eq!(call_status(&app, &key, &second).await, 429);
}

#[tokio::test]
async fn the_messaging_endpoint_is_limited_too() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Sms).await;
    let sms = json!({"agent_id": agent, "to": TO, "channel": "sms"});

    assert_eq!(
        app.post("/messaging/conversation", &key, sms.clone())
            .await
            .status(),
        200
    );
    let refused = app.post("/messaging/conversation", &key, sms).await;
    let status = refused.status().as_u16();
    let retry_after = refused
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body: Value = refused.json().await.unwrap();
    assert_limited(status, retry_after.as_deref(), &body);
    assert_eq!(app.stored_sessions(&agent).await, 1);
}

#[tokio::test]
async fn requests_that_fail_validation_do_not_count() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Voice).await;

    assert_error(
        app.post(
            "/telephony/make-call",
            &key,
            json!({"agent_id": agent, "to": "12"}),
        )
        .await,
        400,
        "Bad destination number format",
    )
    .await;
    assert_error(
        app.post(
            "/telephony/make-call",
            &key,
            json!({"agent_id": agent, "to": TO, "status_url": "not a url"}),
        )
        .await,
        400,
        "Invalid status_url",
    )
    .await;
    assert_error(
        app.post("/telephony/make-call", &key, json!({"agent_id": agent}))
            .await,
        400,
        "Missing mandatory field(s): to",
    )
    .await;
    // The voice agent on the messaging endpoint: step 7 fails for this agent.
    assert_error(
        app.post(
            "/messaging/conversation",
            &key,
            json!({"agent_id": agent, "to": TO, "channel": "sms"}),
        )
        .await,
        400,
        &format!("Agent {agent} is a voice agent"),
    )
    .await;
    let unknown = "0123456789abcdef01234567";
    assert_error(
        app.post("/telephony/make-call", &key, call(unknown)).await,
        404,
        &format!("ID {unknown} is not an ID to any agent or published version"),
    )
    .await;

    // None of those counted: the rate of 1 is still available...
    let response = app.post("/telephony/make-call", &key, call(&agent)).await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    // ...and it is a real limit.
    assert_eq!(call_status(&app, &key, &agent).await, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn herald_limits_set_is_obeyed_by_a_running_server_within_two_seconds() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Voice).await;

    let output = herald(
        &app,
        &["limits", "set", "--agent", &agent, "--rate", "5"],
        &[],
    )
    .await;
    assert!(
        output.status.success(),
        "limits set succeeds: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let changed = Instant::now();

    // Poll with pairs: at the old rate of 1 at most one of each pair (and one
    // per second) is accepted; both are once the new rate is in effect.
    loop {
        let answers = burst(&app, &key, "/telephony/make-call", &call(&agent), 2).await;
        if count(&answers, 200) == 2 {
            break;
        }
        assert!(
            changed.elapsed() < Duration::from_secs(2),
            "the new rate of 5 was not in effect 2 s after `herald limits set`: {answers:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // In a fresh window, a burst of 5 is accepted and the sixth refused.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let answers = burst(&app, &key, "/telephony/make-call", &call(&agent), 6).await;
    assert_eq!(count(&answers, 200), 5, "{answers:?}");
    assert_eq!(count(&answers, 429), 1, "{answers:?}");
}

#[tokio::test]
async fn limits_set_with_rate_zero_fails_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Voice).await;

    let output = herald(
        &app,
        &["limits", "set", "--agent", &agent, "--rate", "0"],
        &[],
    )
    .await;
    assert_failed_with_message(&output, "limits set --rate 0");

    // Still the default rate of 1, after the caches' refresh.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(call_status(&app, &key, &agent).await, 200);
    assert_eq!(call_status(&app, &key, &agent).await, 429);
}

#[tokio::test]
async fn limits_set_over_the_configured_maximum_fails() {
    let app = TestApp::spawn().await;
    let (_key, agent) = account_with_agent(&app, Channel::Voice).await;

    let max = [("HERALD_MAX_RATE", "10")];
    let output = herald(
        &app,
        &["limits", "set", "--agent", &agent, "--rate", "11"],
        &max,
    )
    .await;
    assert_failed_with_message(&output, "limits set --rate 11 over a maximum of 10");
    // The maximum itself is allowed.
    let output = herald(
        &app,
        &["limits", "set", "--agent", &agent, "--rate", "10"],
        &max,
    )
    .await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // The default maximum is finite.
    let output = herald(
        &app,
        &["limits", "set", "--agent", &agent, "--rate", "4294967295"],
        &[],
    )
    .await;
    assert_failed_with_message(&output, "limits set --rate 4294967295");
}

#[tokio::test]
async fn limits_set_for_an_unknown_agent_fails() {
    let app = TestApp::spawn().await;

    let unknown = "0123456789abcdef01234567";
    let output = herald(
        &app,
        &["limits", "set", "--agent", unknown, "--rate", "3"],
        &[],
    )
    .await;
    assert_failed_with_message(&output, "limits set for an unknown agent");

    let output = herald(
        &app,
        &["limits", "set", "--agent", "not-an-agent", "--rate", "3"],
        &[],
    )
    .await;
    assert_failed_with_message(&output, "limits set for a malformed agent id");
}

#[tokio::test]
async fn an_agent_of_region_us_on_an_eu_server_gets_404() {
    let app = TestApp::spawn().await;
    let key = app.new_key("regions").await;
    let response = app
        .post(
            "/agents",
            &key,
            json!({"name": "us agent", "type": "voice", "number": unique_number(), "region": "us"}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let agent: Value = response.json().await.unwrap();
    let agent = agent["agent_id"].as_str().unwrap().to_owned();
    assert_eq!(
        app.post(&format!("/agents/{agent}/publish"), &key, json!({}))
            .await
            .status(),
        200
    );

    assert_error(
        app.post("/telephony/make-call", &key, call(&agent)).await,
        404,
        &format!("Agent {agent} is deployed in region us"),
    )
    .await;
    assert_eq!(app.stored_sessions(&agent).await, 0);
}

#[tokio::test]
async fn a_server_in_region_us_serves_us_agents_and_not_eu_agents() {
    let app = TestApp::spawn_with(|c| c.region = Region::Us).await;
    let key = app.new_key("us-account").await;

    let create = |region: Option<&str>| {
        let mut body = json!({"name": "agent", "type": "voice", "number": unique_number()});
        if let Some(region) = region {
            body["region"] = json!(region);
        }
        body
    };
    let mut agents = Vec::new();
    for region in [Some("us"), None, Some("eu")] {
        let response = app.post("/agents", &key, create(region)).await;
        assert_eq!(response.status(), 201);
        let body: Value = response.json().await.unwrap();
        let id = body["agent_id"].as_str().unwrap().to_owned();
        assert_eq!(
            app.post(&format!("/agents/{id}/publish"), &key, json!({}))
                .await
                .status(),
            200
        );
        agents.push(id);
    }
    let [us, default, eu] = <[String; 3]>::try_from(agents).unwrap();

    let response = app.post("/telephony/make-call", &key, call(&us)).await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    // An agent created without a region lives in the server's own (§4.1).
    let response = app.post("/telephony/make-call", &key, call(&default)).await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    assert_error(
        app.post("/telephony/make-call", &key, call(&eu)).await,
        404,
        &format!("Agent {eu} is deployed in region eu"),
    )
    .await;
}

#[tokio::test]
async fn a_refused_request_leaves_no_session() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Voice).await;

    let accepted: Value = app
        .post("/telephony/make-call", &key, call(&agent))
        .await
        .json()
        .await
        .unwrap();
    let refused = app
        .post(
            "/telephony/make-call",
            &key,
            json!({"agent_id": agent, "to": "447700900124"}),
        )
        .await;
    assert_eq!(refused.status(), 429);

    assert_eq!(app.stored_sessions(&agent).await, 1);
    let pending = app
        .db()
        .await
        .count(
            "SELECT COUNT(*) FROM sessions WHERE to_addr = '447700900124'",
            &[],
        )
        .await;
    assert_eq!(pending, 0);
    let listed: Value = app
        .get(&format!("/sessions?agent_id={agent}"), &key)
        .await
        .json()
        .await
        .unwrap();
    let listed = listed["sessions"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["session_id"], accepted["session_id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_default_rate_setting_is_honoured() {
    let app = TestApp::spawn_with(|c| c.default_rate = 2).await;
    let (key, agent) = account_with_agent(&app, Channel::Voice).await;

    let answers = burst(&app, &key, "/telephony/make-call", &call(&agent), 3).await;
    assert_eq!(count(&answers, 200), 2, "{answers:?}");
    assert_eq!(count(&answers, 429), 1, "{answers:?}");
    assert_eq!(app.stored_sessions(&agent).await, 2);
}

/// With its limits shared through a Redis that cannot be reached, a server
/// admits nothing rather than admit without a limit: 503 with Retry-After,
/// no session; everything else keeps working.
#[tokio::test]
async fn an_unreachable_shared_limiter_answers_503_and_stores_nothing() {
    // A loopback port with nothing listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let app =
        TestApp::spawn_with(|c| c.redis_url = Some(format!("redis://127.0.0.1:{port}").into()))
            .await;
    let (key, agent) = account_with_agent(&app, Channel::Voice).await;
    let response = app.post("/telephony/make-call", &key, call(&agent)).await;
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert_error(response, 503, "Rate limiter unavailable, try again shortly").await;
    assert_eq!(app.stored_sessions(&agent).await, 0);
    assert_eq!(app.get("/account", &key).await.status(), 200);
}

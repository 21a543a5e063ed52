//! CONTRACT §9: the operator's commands and settings (`herald serve`,
//! `herald keys create|revoke`, `herald openapi`, each on `--database` or
//! `HERALD_DATABASE_URL`, working while a server runs), `GET /healthz`,
//! `GET /metrics` (Prometheus text) and `GET /openapi.json` (an OpenAPI 3
//! document of every endpoint), and the committed copy of that document.

use std::collections::HashMap;
use std::process::Output;
use std::time::{Duration, Instant};

use herald_core::Channel;
use serde_json::{json, Value};

use crate::helpers::{account_with_agent, assert_error, ServeProcess, TestApp, TestReceiver};

/// Runs the real `herald` binary with `args`, `HERALD_DATABASE_URL` unset
/// and then `envs` set.
async fn herald_cmd(args: Vec<String>, envs: Vec<(String, String)>) -> Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_herald"));
    command.args(args).env_remove("HERALD_DATABASE_URL");
    for (name, value) in envs {
        command.env(name, value);
    }
    tokio::task::spawn_blocking(move || command.output().expect("herald runs"))
        .await
        .unwrap()
}

/// Runs `herald <args> --database sqlite://<the test server's database>`.
async fn herald(app: &TestApp, args: &[&str]) -> Output {
    let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    all.push("--database".into());
    all.push(database_url(app));
    herald_cmd(all, Vec::new()).await
}

fn database_url(app: &TestApp) -> String {
    app.config.database_url.expose().to_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("UTF-8 on stdout")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `herald keys create --account <account>`: asserts success and a key alone
/// on stdout; returns the key.
async fn create_key(app: &TestApp, account: &str) -> String {
    let output = herald(app, &["keys", "create", "--account", account]).await;
    assert!(
        output.status.success(),
        "keys create succeeds: {}",
        stderr(&output)
    );
    let out = stdout(&output);
    let key = out.strip_suffix('\n').unwrap_or(&out).to_owned();
    assert!(!key.contains('\n'), "stdout is one line: {out:?}");
    key
}

/// Polls `GET /account` with `key` until it answers `status`, for at most
/// 2 seconds after `since` (CONTRACT §9.2 and the CLI's promise: "within 2
/// seconds"); returns the answer.
async fn account_answers(
    app: &TestApp,
    key: &str,
    status: u16,
    since: Instant,
) -> reqwest::Response {
    loop {
        let response = app.get("/account", key).await;
        if response.status() == status {
            return response;
        }
        assert!(
            since.elapsed() < Duration::from_secs(2),
            "GET /account still answered {} instead of {status} 2 s after the command",
            response.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One sample of the Prometheus text: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: HashMap<String, String>,
    value: f64,
}

fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("a sample line: {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("a sample value: {line}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), HashMap::new()),
            Some((name, rest)) => {
                let rest = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("closed labels: {line}"));
                (name.to_owned(), parse_labels(rest, line))
            }
        };
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    samples
}

fn parse_labels(mut rest: &str, line: &str) -> HashMap<String, String> {
    let mut labels = HashMap::new();
    while !rest.is_empty() {
        let (name, after) = rest
            .split_once("=\"")
            .unwrap_or_else(|| panic!("a label: {line}"));
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => {
                    if let Some((_, c)) = chars.next() {
                        value.push(match c {
                            'n' => '\n',
                            other => other,
                        });
                    }
                }
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => panic!("an unterminated label value: {line}"),
            }
        };
        labels.insert(name.trim().to_owned(), value);
        rest = after[end + 1..].trim_start_matches(',');
    }
    labels
}

async fn metrics(app: &TestApp) -> Vec<Sample> {
    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    parse_metrics(&response.text().await.unwrap())
}

/// The sum of a metric's samples whose labels include `labels`.
fn total(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

/// Polls `/metrics` until `name` (with `labels`) reaches `at_least`.
async fn metric_reaches(
    app: &TestApp,
    name: &str,
    labels: &[(&str, &str)],
    at_least: f64,
) -> Vec<Sample> {
    for _ in 0..100 {
        let samples = metrics(app).await;
        if total(&samples, name, labels) >= at_least {
            return samples;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let samples = metrics(app).await;
    panic!(
        "{name}{labels:?} did not reach {at_least}: {:?}",
        samples
            .iter()
            .filter(|s| s.name == name)
            .collect::<Vec<_>>()
    );
}

/// Every endpoint of the contract with its methods.
const ENDPOINTS: &[(&str, &[&str])] = &[
    ("/telephony/make-call", &["post"]),
    ("/messaging/conversation", &["post"]),
    ("/agents", &["post", "get"]),
    ("/agents/{agent_id}", &["get", "patch", "delete"]),
    ("/agents/{agent_id}/publish", &["post"]),
    ("/connections", &["post", "get"]),
    ("/connections/{connection_id}", &["get", "patch", "delete"]),
    ("/connections/{connection_id}/check", &["post"]),
    ("/whatsapp/templates", &["post", "get"]),
    ("/account", &["get"]),
    ("/sessions", &["get"]),
    ("/sessions/{session_id}", &["get"]),
    ("/healthz", &["get"]),
    ("/metrics", &["get"]),
    ("/openapi.json", &["get"]),
];

#[tokio::test]
async fn keys_create_prints_only_the_key_and_the_running_server_accepts_it_within_two_seconds() {
    let app = TestApp::spawn().await;

    let output = herald(&app, &["keys", "create", "--account", "acme"]).await;
    let created = Instant::now();
    assert!(
        output.status.success(),
        "keys create succeeds: {}",
        stderr(&output)
    );
    let out = stdout(&output);
    let key = out.strip_suffix('\n').expect("the key ends its line");
    assert!(!key.contains('\n'), "stdout holds the key alone: {out:?}");
    assert_eq!(key.len(), 32, "a 32-character key: {key:?}");
    assert!(
        key.chars().all(|c| c.is_ascii_alphanumeric()),
        "an alphanumeric key: {key:?}"
    );

    let response = account_answers(&app, key, 200, created).await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["account"], "acme");
}

#[tokio::test]
async fn keys_create_for_an_existing_account_adds_a_key_to_it() {
    let app = TestApp::spawn().await;

    let first = create_key(&app, "acme").await;
    let second = create_key(&app, "acme").await;
    let since = Instant::now();
    assert_ne!(first, second);

    let a: Value = account_answers(&app, &first, 200, since)
        .await
        .json()
        .await
        .unwrap();
    let b: Value = account_answers(&app, &second, 200, since)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(a["account"], "acme");
    assert_eq!(a, b, "both keys belong to one account");

    // What one key creates, the other sees.
    let agent = app
        .draft_agent(&first, Channel::Voice, &crate::helpers::unique_number())
        .await;
    assert_eq!(
        app.get(&format!("/agents/{agent}"), &second).await.status(),
        200
    );
}

#[tokio::test]
async fn keys_create_reads_the_database_from_herald_database_url() {
    let app = TestApp::spawn().await;

    let output = herald_cmd(
        vec![
            "keys".into(),
            "create".into(),
            "--account".into(),
            "from-env".into(),
        ],
        vec![("HERALD_DATABASE_URL".into(), database_url(&app))],
    )
    .await;
    let created = Instant::now();
    assert!(
        output.status.success(),
        "keys create succeeds: {}",
        stderr(&output)
    );
    let key = stdout(&output).trim_end().to_owned();

    let body: Value = account_answers(&app, &key, 200, created)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["account"], "from-env");
}

#[tokio::test]
async fn keys_revoke_makes_the_running_server_refuse_the_key_within_two_seconds() {
    let app = TestApp::spawn().await;
    let key = create_key(&app, "acme").await;
    let other = create_key(&app, "acme").await;
    account_answers(&app, &key, 200, Instant::now()).await;
    account_answers(&app, &other, 200, Instant::now()).await;

    let output = herald(&app, &["keys", "revoke", &key]).await;
    let revoked = Instant::now();
    assert!(
        output.status.success(),
        "keys revoke succeeds: {}",
        stderr(&output)
    );

    let response = account_answers(&app, &key, 401, revoked).await;
    assert_error(response, 401, "Not Authorised").await;
    // The account's other key still works.
    assert_eq!(app.get("/account", &other).await.status(), 200);
}

#[tokio::test]
async fn keys_revoke_of_a_key_made_through_the_harness_is_obeyed() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Voice).await;

    let output = herald(&app, &["keys", "revoke", &key]).await;
    let revoked = Instant::now();
    assert!(
        output.status.success(),
        "keys revoke succeeds: {}",
        stderr(&output)
    );
    account_answers(&app, &key, 401, revoked).await;

    assert_error(
        app.post(
            "/telephony/make-call",
            &key,
            json!({"agent_id": agent, "to": "447700900123"}),
        )
        .await,
        401,
        "Not Authorised",
    )
    .await;
}

#[tokio::test]
async fn keys_revoke_of_an_unknown_key_fails() {
    let app = TestApp::spawn().await;
    let key = create_key(&app, "acme").await;

    let output = herald(
        &app,
        &["keys", "revoke", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"],
    )
    .await;
    assert!(!output.status.success(), "revoking an unknown key fails");
    assert!(!stderr(&output).trim().is_empty(), "and says why on stderr");
    assert!(!stderr(&output).contains("panicked"), "{}", stderr(&output));

    // Nothing else was revoked.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(app.get("/account", &key).await.status(), 200);
}

/// `herald secret-key` prints a key a server takes; `herald connections
/// list` and `check` read the connections with the server's settings and
/// never print a credential.
#[tokio::test]
async fn connections_are_listed_and_checked_from_the_command_line() {
    use herald_server::testing::vonage::FakeVonage;

    let output = herald_cmd(vec!["secret-key".into()], Vec::new()).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let secret_key = stdout(&output).trim().to_owned();
    let sealer = herald_core::secret::Sealer::from_base64(&secret_key).expect("a key");
    let application = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee";
    let vonage = FakeVonage::start(application).await;
    let app = TestApp::spawn_with(|c| {
        c.secret_key = Some(std::sync::Arc::new(sealer));
        c.public_url = Some("https://herald.example.com".into());
        c.vonage_api_url = vonage.url.clone();
    })
    .await;
    let key = app.new_key("acme").await;
    let created = app
        .post(
            "/connections",
            &key,
            json!({"name": "Vonage", "provider": "vonage", "credentials": {
                "application_id": application,
                "private_key": herald_channels::testing::vonage_private_key(),
                "api_key": "abcd1234", "api_secret": "s3cret-api",
                "signature_secret": "s3cret-signature"}}),
        )
        .await;
    assert_eq!(created.status(), 201);
    let id = created.json::<Value>().await.unwrap()["connection_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let envs = vec![
        ("HERALD_DATABASE_URL".to_owned(), database_url(&app)),
        ("HERALD_SECRET_KEY".to_owned(), secret_key.clone()),
        ("HERALD_VONAGE_API_URL".to_owned(), vonage.url.clone()),
    ];
    let listed = herald_cmd(vec!["connections".into(), "list".into()], envs.clone()).await;
    assert!(listed.status.success(), "{}", stderr(&listed));
    assert_eq!(
        stdout(&listed),
        format!("{id}\tvonage\tVonage\taccount 1\n")
    );
    let checked = herald_cmd(
        vec!["connections".into(), "check".into(), id.clone()],
        envs.clone(),
    )
    .await;
    assert!(checked.status.success(), "{}", stderr(&checked));
    assert_eq!(
        stdout(&checked),
        format!("connection {id} (vonage): Vonage accepted the credentials\n")
    );
    vonage.refuse_credentials(true);
    let refused = herald_cmd(
        vec!["connections".into(), "check".into(), id.clone()],
        envs.clone(),
    )
    .await;
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("Vonage refused the credentials (401)"),
        "{}",
        stderr(&refused)
    );
    let without_key: Vec<_> = envs
        .iter()
        .filter(|(name, _)| name != "HERALD_SECRET_KEY")
        .cloned()
        .collect();
    let no_key = herald_cmd(
        vec!["connections".into(), "check".into(), id.clone()],
        without_key,
    )
    .await;
    assert!(!no_key.status.success());
    assert!(
        stderr(&no_key).contains("HERALD_SECRET_KEY is not set"),
        "{}",
        stderr(&no_key)
    );
    for output in [&listed, &checked, &refused, &no_key] {
        let all = format!("{}{}", stdout(output), stderr(output));
        assert!(
            !all.contains("s3cret") && !all.contains(&secret_key),
            "{all}"
        );
    }
    assert_eq!(vonage.problems(), Vec::<String>::new());
}

#[tokio::test]
async fn healthz_answers_200() {
    let app = TestApp::spawn().await;
    let response = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn metrics_count_http_requests_by_route_and_status() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Voice).await;

    assert_eq!(app.get("/account", &key).await.status(), 200);
    assert_eq!(app.get("/account", &key).await.status(), 200);
    assert_eq!(app.get("/account", "not-a-key").await.status(), 401);
    let call = json!({"agent_id": agent, "to": "447700900123"});
    assert_eq!(
        app.post("/telephony/make-call", &key, call).await.status(),
        200
    );

    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(text.contains("herald_http_requests_total"), "{text}");
    let samples = parse_metrics(&text);
    let name = "herald_http_requests_total";
    assert_eq!(
        total(&samples, name, &[("route", "/account"), ("status", "200")]),
        2.0,
        "{text}"
    );
    assert_eq!(
        total(&samples, name, &[("route", "/account"), ("status", "401")]),
        1.0,
        "{text}"
    );
    assert_eq!(
        total(
            &samples,
            name,
            &[("route", "/telephony/make-call"), ("status", "200")]
        ),
        1.0,
        "{text}"
    );
}

#[tokio::test]
async fn metrics_count_accepted_and_ended_sessions() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Voice).await;
    let before = metrics(&app).await;
    assert_eq!(total(&before, "herald_sessions_accepted_total", &[]), 0.0);
    assert_eq!(total(&before, "herald_sessions_ended_total", &[]), 0.0);

    let response = app
        .post(
            "/telephony/make-call",
            &key,
            json!({"agent_id": agent, "to": "447700900123"}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let accepted = metrics(&app).await;
    assert_eq!(
        total(&accepted, "herald_sessions_accepted_total", &[]),
        1.0,
        "{accepted:?}"
    );

    let session = app
        .ended_session(&key, body["session_id"].as_str().unwrap())
        .await;
    assert_eq!(session["outcome"], "completed", "{session}");
    let ended = metric_reaches(&app, "herald_sessions_ended_total", &[], 1.0).await;
    assert_eq!(total(&ended, "herald_sessions_ended_total", &[]), 1.0);
}

#[tokio::test]
async fn metrics_count_rate_limited_triggers() {
    let app = TestApp::spawn().await;
    let (key, agent) = account_with_agent(&app, Channel::Voice).await;
    let call = json!({"agent_id": agent, "to": "447700900123"});
    assert_eq!(
        total(&metrics(&app).await, "herald_rate_limited_total", &[]),
        0.0
    );

    assert_eq!(
        app.post("/telephony/make-call", &key, call.clone())
            .await
            .status(),
        200
    );
    assert_eq!(
        app.post("/telephony/make-call", &key, call).await.status(),
        429
    );

    let samples = metrics(&app).await;
    assert_eq!(
        total(&samples, "herald_rate_limited_total", &[]),
        1.0,
        "{samples:?}"
    );
}

#[tokio::test]
async fn metrics_count_callbacks() {
    let app = TestApp::spawn().await;
    let receiver = TestReceiver::start().await;
    let (key, agent) = account_with_agent(&app, Channel::Voice).await;
    assert_eq!(
        total(&metrics(&app).await, "herald_callbacks_total", &[]),
        0.0
    );

    // Ending in 90: the simulator answers busy, which is called back (§5.1, §8.1).
    let response = app
        .post(
            "/telephony/make-call",
            &key,
            json!({"agent_id": agent, "to": "447700900190", "status_url": receiver.url}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let received = receiver.wait_for(1).await;
    assert_eq!(received[0].body["status"], "busy");

    metric_reaches(&app, "herald_callbacks_total", &[], 1.0).await;
}

#[tokio::test]
async fn openapi_json_is_an_openapi_3_document_of_every_endpoint() {
    let app = TestApp::spawn().await;
    let response = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let doc: Value = serde_json::from_str(&response.text().await.unwrap()).expect("valid JSON");

    let version = doc["openapi"].as_str().expect("an openapi version");
    assert!(version.starts_with("3."), "OpenAPI 3, got {version}");
    let paths = doc["paths"].as_object().expect("paths");
    for (path, methods) in ENDPOINTS {
        let entry = paths
            .get(*path)
            .unwrap_or_else(|| panic!("no path entry for {path}"));
        for method in *methods {
            assert!(
                entry.get(*method).is_some(),
                "no {method} operation for {path}"
            );
        }
    }
}

#[tokio::test]
async fn the_committed_openapi_json_is_the_generated_document() {
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../openapi.json"))
        .expect("openapi.json at the repository root; create it with `cargo run -p herald -- openapi > openapi.json`");
    let generated = herald_server::api::openapi::document();
    assert!(
        committed == generated,
        "openapi.json at the repository root is out of date with the handlers' annotations; \
         refresh it with `cargo run -p herald -- openapi > openapi.json` and commit it"
    );
}

/// The document passes the standard validator, openapi-spec-validator,
/// which refuses what the specification forbids (two operations with one
/// operationId, among others); and every operation has a summary.
#[test]
fn openapi_json_passes_the_standard_validator() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../openapi.json");
    let output = std::process::Command::new(herald_server::testing::test_python())
        .args(["-m", "openapi_spec_validator", path])
        .output()
        .expect("the test Python runs");
    assert!(
        output.status.success(),
        "openapi-spec-validator refused openapi.json:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let doc: Value = serde_json::from_str(&herald_server::api::openapi::document()).unwrap();
    let mut ids = std::collections::HashSet::new();
    for (path, methods) in doc["paths"].as_object().unwrap() {
        for (method, operation) in methods.as_object().unwrap() {
            let id = operation["operationId"].as_str().unwrap_or_default();
            assert!(
                ids.insert(id.to_owned()),
                "{method} {path}: operationId {id:?} twice"
            );
            let summary = operation["summary"].as_str().unwrap_or_default();
            assert!(!summary.is_empty(), "{method} {path} has no summary");
        }
    }
}

#[tokio::test]
async fn herald_openapi_prints_the_served_document() {
    let app = TestApp::spawn().await;
    let served = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    let served = served.text().await.unwrap();

    let output = herald_cmd(vec!["openapi".into()], Vec::new()).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), served);
}

#[tokio::test]
async fn herald_serve_takes_its_settings_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}", dir.path().join("served.db").display());
    let server = ServeProcess::start(
        &[],
        &[
            ("HERALD_DATABASE_URL", database.as_str()),
            ("HERALD_REGION", "us"),
        ],
    )
    .await;
    let base = server.base.clone();
    let client = reqwest::Client::new();

    let output = herald_cmd(
        vec![
            "keys".into(),
            "create".into(),
            "--account".into(),
            "served".into(),
            "--database".into(),
            database,
        ],
        Vec::new(),
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    let key = stdout(&output).trim_end().to_owned();

    // An agent without a region lives in the server's region, HERALD_REGION.
    let since = Instant::now();
    let agent = loop {
        let response = client
            .post(format!("{base}/agents"))
            .header("X-Vgai-Key", &key)
            .json(&json!({"name": "agent", "type": "voice", "number": "447700900555"}))
            .send()
            .await
            .unwrap();
        if response.status() == 201 {
            break response.json::<Value>().await.unwrap();
        }
        assert_eq!(response.status(), 401);
        assert!(
            since.elapsed() < Duration::from_secs(2),
            "the new key works within 2 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(agent["region"], "us", "{agent}");
}

/// `herald config` prints the built-in settings; a file of that form
/// given to `herald serve --config` is read under the variables and
/// flags, and one with a mistake stops the server, naming it.
#[tokio::test]
async fn settings_come_from_a_file_under_the_variables_and_flags() {
    let printed = herald_cmd(vec!["config".into()], Vec::new()).await;
    assert!(printed.status.success(), "{}", stderr(&printed));
    let defaults = stdout(&printed);
    assert!(
        defaults.contains("\nlisten = \"127.0.0.1:8080\"\n"),
        "{defaults}"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("herald.toml");
    // The printed defaults are a valid file as they are.
    std::fs::write(&file, &defaults).unwrap();
    let database = format!("sqlite://{}", dir.path().join("herald.db").display());
    std::fs::write(
        &file,
        format!("{defaults}\nlisten = \"127.0.0.1:1\"\ndatabase_url = \"{database}\"\n")
            .replace("\nlisten = \"127.0.0.1:8080\"\n", "\n")
            .replace("\ndatabase_url = \"sqlite://herald.db\"\n", "\n"),
    )
    .unwrap();
    // The file's database is used, and HERALD_LISTEN (which the harness
    // sets) wins over the file's address: the server answers where the
    // variable says.
    let key = crate::helpers::create_key(&database);
    let server = ServeProcess::start(&["--config", file.to_str().unwrap()], &[]).await;
    let agents = reqwest::Client::new()
        .get(format!("{}/agents", server.base))
        .header("X-Vgai-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(agents.status(), 200);
    drop(server);

    std::fs::write(&file, "lisen = \"127.0.0.1:9000\"\n").unwrap();
    let refused = herald_cmd(
        vec![
            "serve".into(),
            "--config".into(),
            file.display().to_string(),
        ],
        Vec::new(),
    )
    .await;
    assert!(!refused.status.success());
    let said = stderr(&refused);
    assert!(
        said.contains("herald.toml") && said.contains("lisen"),
        "{said}"
    );

    std::fs::write(&file, "default_rate = 0\n").unwrap();
    let refused = herald_cmd(
        vec![
            "serve".into(),
            "--config".into(),
            file.display().to_string(),
        ],
        Vec::new(),
    )
    .await;
    assert!(!refused.status.success());
    let said = stderr(&refused);
    assert!(
        said.contains("default_rate (HERALD_DEFAULT_RATE, --default-rate"),
        "{said}"
    );
}

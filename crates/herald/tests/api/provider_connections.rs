//! Connections to channel providers (CONTRACT §10): their API, their
//! credentials sealed at rest and shown nowhere, the key a server needs to
//! start, agents' connections and what publishing on one requires.

use std::sync::Arc;

use herald_core::secret::Sealer;
use herald_core::Channel;
use herald_server::testing::twilio::FakeTwilio;
use herald_server::testing::vonage::FakeVonage;
use herald_server::testing::whatsapp_cloud::FakeWhatsapp;
use serde_json::{json, Value};

use crate::helpers::*;

const APPLICATION_ID: &str = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee";
const API_SECRET: &str = "s3cret-api-Zq81";
const SIGNATURE_SECRET: &str = "s3cret-signature-Hv27";

/// A line of the test private key, to search for.
fn key_line() -> &'static str {
    herald_channels::testing::vonage_private_key()
        .lines()
        .nth(5)
        .expect("a PEM key has lines")
}

fn vonage_credentials() -> Value {
    json!({
        "application_id": APPLICATION_ID,
        "private_key": herald_channels::testing::vonage_private_key(),
        "api_key": "abcd1234",
        "api_secret": API_SECRET,
        "signature_secret": SIGNATURE_SECRET,
    })
}

fn vonage_connection() -> Value {
    json!({
        "name": "Vonage (production)",
        "provider": "vonage",
        "credentials": vonage_credentials(),
        "settings": {"language": "en-GB", "style": 2},
    })
}

/// A server with a secret key and a public URL, talking to `vonage`.
async fn spawn(vonage: Option<&FakeVonage>) -> TestApp {
    let api_url = vonage.map(|v| v.url.clone());
    TestApp::spawn_with(|c| {
        c.secret_key = Some(Arc::new(
            Sealer::from_base64(&Sealer::generate_key()).unwrap(),
        ));
        c.public_url = Some("https://herald.example.com/base".into());
        if let Some(url) = api_url {
            c.vonage_api_url = url;
        }
    })
    .await
}

async fn create(app: &TestApp, key: &str, body: Value) -> Value {
    let response = app.post("/connections", key, body).await;
    assert_eq!(response.status(), 201);
    response.json().await.unwrap()
}

async fn patch(app: &TestApp, path: &str, key: &str, body: Value) -> reqwest::Response {
    app.patch(path, key, body).await
}

async fn delete(app: &TestApp, path: &str, key: &str) -> reqwest::Response {
    app.delete(path, key).await
}

fn assert_no_credential(text: &str) {
    for secret in [API_SECRET, SIGNATURE_SECRET, key_line()] {
        assert!(!text.contains(secret), "a credential shows in: {text}");
    }
}

#[tokio::test]
async fn a_connection_shows_its_webhooks_and_never_its_credentials() {
    let app = spawn(None).await;
    let key = app.new_key("acme").await;
    let created = app.post("/connections", &key, vonage_connection()).await;
    assert_eq!(created.status(), 201);
    let text = created.text().await.unwrap();
    assert_no_credential(&text);
    let created: Value = serde_json::from_str(&text).unwrap();
    let id = created["connection_id"].as_str().unwrap();
    assert!(has_shape(id, "xxxxxxxxxxxxxxxxxxxxxxxx"), "{id}");
    assert_eq!(created["name"], "Vonage (production)");
    assert_eq!(created["provider"], "vonage");
    assert_eq!(
        created["settings"],
        json!({"language": "en-GB", "style": 2})
    );
    assert!(created.get("credentials").is_none());
    assert_rfc3339_millis(created["created_at"].as_str().unwrap());
    let base = format!("https://herald.example.com/base/providers/{id}");
    assert_eq!(
        created["webhooks"],
        json!({
            "answer": format!("{base}/answer"),
            "event": format!("{base}/event"),
            "message_status": format!("{base}/message_status"),
            "message_inbound": format!("{base}/message_inbound"),
        })
    );

    let read = app.get(&format!("/connections/{id}"), &key).await;
    assert_eq!(read.status(), 200);
    let text = read.text().await.unwrap();
    assert_no_credential(&text);
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), created);
    let list = app.get("/connections", &key).await;
    let text = list.text().await.unwrap();
    assert_no_credential(&text);
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        json!({"connections": [created]})
    );
    // A provider that sends no webhooks lists none.
    let sip = create(
        &app,
        &key,
        json!({"name": "trunk", "provider": "sip",
               "credentials": {"username": "herald", "password": "s3cret-sip"}}),
    )
    .await;
    assert_eq!(sip["webhooks"], json!({}));
    assert_eq!(sip["settings"], json!({}));
}

#[tokio::test]
async fn another_account_cannot_see_or_touch_a_connection() {
    let app = spawn(None).await;
    let acme = app.new_key("acme").await;
    let globex = app.new_key("globex").await;
    let id = create(&app, &acme, vonage_connection()).await["connection_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/connections/{id}");
    let not_found = format!("Connection {id} was not found");
    assert_error(app.get(&path, &globex).await, 404, &not_found).await;
    assert_error(
        patch(&app, &path, &globex, json!({"name": "mine"})).await,
        404,
        &not_found,
    )
    .await;
    assert_error(delete(&app, &path, &globex).await, 404, &not_found).await;
    assert_error(
        app.post(&format!("{path}/check"), &globex, json!({})).await,
        404,
        &not_found,
    )
    .await;
    let list: Value = app.get("/connections", &globex).await.json().await.unwrap();
    assert_eq!(list, json!({"connections": []}));
    assert_error(
        app.get("/connections/not-an-id", &acme).await,
        404,
        "Connection not-an-id was not found",
    )
    .await;
    assert_eq!(app.get(&path, &acme).await.status(), 200);
}

#[tokio::test]
async fn malformed_connections_get_400_naming_the_field_and_store_nothing() {
    let app = spawn(None).await;
    let key = app.new_key("acme").await;
    let with = |f: &dyn Fn(&mut Value)| {
        let mut body = vonage_connection();
        f(&mut body);
        body
    };
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({}),
            "Missing mandatory field(s): name, provider, credentials",
        ),
        (
            with(&|b| b["provider"] = json!("nexmo")),
            "provider must be one of vonage, twilio, whatsapp_cloud, smpp, sip",
        ),
        (
            with(&|b| b["provider"] = json!(7)),
            "provider must be a string",
        ),
        (
            with(&|b| b["name"] = json!("")),
            "name must be 1 to 200 characters",
        ),
        (
            with(&|b| b["credentials"] = json!("key:secret")),
            "credentials must be an object",
        ),
        (
            with(&|b| {
                b["credentials"]
                    .as_object_mut()
                    .unwrap()
                    .remove("api_secret");
            }),
            "credentials of a vonage connection need: api_secret",
        ),
        (
            with(&|b| b["credentials"]["account_sid"] = json!("AC1")),
            "credentials.account_sid is not a vonage credential (they are: application_id, \
             private_key, api_key, api_secret, signature_secret)",
        ),
        (
            with(&|b| b["credentials"]["api_key"] = json!(1234)),
            "credentials.api_key must be a string",
        ),
        (
            with(&|b| {
                b["credentials"]["private_key"] =
                    json!("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
            }),
            "credentials.private_key is not an RSA private key in PEM",
        ),
        (
            with(&|b| b["credentials"]["application_id"] = json!("my-app")),
            "credentials.application_id must be the application's id, a UUID",
        ),
        (
            with(&|b| b["settings"] = json!({"voice": "Amy"})),
            "settings.voice is not a vonage setting (they are: language, style, machine_detection, \
             calls_per_second, messages_per_second)",
        ),
        (
            with(&|b| b["settings"] = json!({"machine_detection": "detect"})),
            "settings.machine_detection must be one of continue, hangup",
        ),
        (
            with(&|b| b["settings"] = json!({"style": "two"})),
            "settings.style must be a whole number from 0",
        ),
    ];
    for (body, message) in cases {
        let response = app.post("/connections", &key, body).await;
        let text = response.text().await.unwrap();
        assert_no_credential(&text);
        let error: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(error, json!({"status": 400, "message": message}));
    }
    let list: Value = app.get("/connections", &key).await.json().await.unwrap();
    assert_eq!(list, json!({"connections": []}));
    assert_eq!(
        app.db()
            .await
            .count("SELECT COUNT(*) FROM connections", &[])
            .await,
        0
    );
}

#[tokio::test]
async fn a_server_without_a_key_or_a_public_url_says_what_its_operator_must_set() {
    let app = TestApp::spawn().await;
    let key = app.new_key("acme").await;
    assert_error(
        app.post("/connections", &key, vonage_connection()).await,
        400,
        "This server has no HERALD_SECRET_KEY to seal credentials with; its operator must set \
         one (herald secret-key makes one) before connections can be created",
    )
    .await;
    let app = TestApp::spawn_with(|c| {
        c.secret_key = Some(Arc::new(
            Sealer::from_base64(&Sealer::generate_key()).unwrap(),
        ));
    })
    .await;
    let key = app.new_key("acme").await;
    assert_error(
        app.post("/connections", &key, vonage_connection()).await,
        400,
        "A vonage connection needs this server's public URL, which vonage sends webhooks to; \
         its operator must set HERALD_PUBLIC_URL (--public-url)",
    )
    .await;
    // SMPP sends no webhooks: no public URL needed.
    create(
        &app,
        &key,
        json!({"name": "smsc", "provider": "smpp",
               "credentials": {"system_id": "herald", "password": "s3cret-smpp"},
               "settings": {"host": "127.0.0.1", "port": 2775}}),
    )
    .await;
}

#[tokio::test]
async fn credentials_are_sealed_in_the_database() {
    let app = spawn(None).await;
    let key = app.new_key("acme").await;
    let id = create(&app, &key, vonage_connection()).await["connection_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let db = app.db().await;
    assert_no_credential(&db.dump().await);
    let sealed = db.blobs("SELECT credentials FROM connections").await;
    assert_eq!(sealed.len(), 1);
    // Sealed, not dropped: the server's key opens them, under this id only.
    let sealer = app.config.secret_key.as_ref().unwrap();
    let plain = sealer.open(&id, &sealed[0]).unwrap();
    let stored: Value = serde_json::from_slice(&plain).unwrap();
    assert_eq!(stored, vonage_credentials());
    assert!(sealer.open("another id", &sealed[0]).is_err());
    if let Some(path) = app.config.database_url.expose().strip_prefix("sqlite://") {
        for file in [path.to_owned(), format!("{path}-wal")] {
            let Ok(bytes) = std::fs::read(&file) else {
                continue;
            };
            assert_no_credential(&String::from_utf8_lossy(&bytes));
        }
    }
}

#[tokio::test]
async fn an_edit_replaces_credentials_and_settings_but_not_the_provider() {
    let app = spawn(None).await;
    let key = app.new_key("acme").await;
    let created = create(&app, &key, vonage_connection()).await;
    let id = created["connection_id"].as_str().unwrap().to_owned();
    let path = format!("/connections/{id}");
    assert_error(
        patch(&app, &path, &key, json!({"provider": "twilio"})).await,
        400,
        "provider cannot be changed; create a new connection instead",
    )
    .await;
    assert_error(
        patch(&app, &path, &key, json!({"credentials": {"api_key": "k"}})).await,
        400,
        "credentials of a vonage connection need: application_id, private_key, api_secret, \
         signature_secret",
    )
    .await;
    let mut credentials = vonage_credentials();
    credentials["api_secret"] = json!("s3cret-rotated-Xy55");
    let edited = patch(
        &app,
        &path,
        &key,
        json!({"name": "Vonage", "credentials": credentials,
               "settings": {"machine_detection": "hangup"}}),
    )
    .await;
    assert_eq!(edited.status(), 200);
    let text = edited.text().await.unwrap();
    assert!(!text.contains("s3cret-rotated"), "{text}");
    let edited: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(edited["name"], "Vonage");
    assert_eq!(edited["settings"], json!({"machine_detection": "hangup"}));
    assert_eq!(edited["created_at"], created["created_at"]);
    assert_eq!(edited["webhooks"], created["webhooks"]);
    let sealed = app
        .db()
        .await
        .blobs("SELECT credentials FROM connections")
        .await;
    let plain = app
        .config
        .secret_key
        .as_ref()
        .unwrap()
        .open(&id, &sealed[0])
        .unwrap();
    let stored: Value = serde_json::from_slice(&plain).unwrap();
    assert_eq!(stored["api_secret"], "s3cret-rotated-Xy55");
    // A name alone leaves the rest as it was.
    let renamed: Value = patch(&app, &path, &key, json!({"name": "V"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(renamed["settings"], edited["settings"]);
}

/// CONTRACT §10.1, §10.3: an agent names one of its account's connections;
/// one in use cannot be deleted; publishing checks the connection carries
/// the agent's channel.
#[tokio::test]
async fn agents_run_on_their_account_s_connections_and_hold_them() {
    let app = spawn(None).await;
    let acme = app.new_key("acme").await;
    let globex = app.new_key("globex").await;
    let pbx = create(
        &app,
        &acme,
        json!({"name": "PBX", "provider": "sip",
               "credentials": {"username": "herald", "password": "s3cret-sip"}}),
    )
    .await;
    let id = pbx["connection_id"].as_str().unwrap().to_owned();
    let agent = |number: &str, connection: Value| json!({"name": "a", "type": "sms", "number": number, "connection_id": connection});
    assert_error(
        app.post("/agents", &globex, agent(&unique_number(), json!(id)))
            .await,
        400,
        &format!("connection_id: this account has no connection {id}"),
    )
    .await;
    assert_error(
        app.post("/agents", &acme, agent(&unique_number(), json!(5)))
            .await,
        400,
        "connection_id must be a string or null",
    )
    .await;
    let created = app
        .post("/agents", &acme, agent(&unique_number(), json!(id)))
        .await;
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    assert_eq!(created["connection_id"], json!(id));
    let agent_id = created["agent_id"].as_str().unwrap();

    // This build carries nothing over SIP yet: publishing says so.
    assert_error(
        app.post(&format!("/agents/{agent_id}/publish"), &acme, json!({}))
            .await,
        400,
        &format!(
            "Connection {id} is a sip connection, which cannot carry sms agents in this \
             version of herald (it carries: none yet)"
        ),
    )
    .await;
    let connection_path = format!("/connections/{id}");
    let in_use = delete(&app, &connection_path, &acme).await;
    assert_error(
        in_use,
        409,
        &format!(
            "Connection {id} is used by agent {agent_id}; move the agent to another connection \
             (or delete it) first"
        ),
    )
    .await;
    // Back onto the simulator: the connection is free.
    let moved = patch(
        &app,
        &format!("/agents/{agent_id}"),
        &acme,
        json!({"connection_id": null}),
    )
    .await;
    assert_eq!(moved.status(), 200);
    assert_eq!(
        moved.json::<Value>().await.unwrap()["connection_id"],
        Value::Null
    );
    let published = app
        .post(&format!("/agents/{agent_id}/publish"), &acme, json!({}))
        .await;
    assert_eq!(published.status(), 200);
    assert_eq!(delete(&app, &connection_path, &acme).await.status(), 204);
    assert_error(
        app.get(&connection_path, &acme).await,
        404,
        &format!("Connection {id} was not found"),
    )
    .await;
    assert_error(
        patch(
            &app,
            &format!("/agents/{agent_id}"),
            &acme,
            json!({"connection_id": id}),
        )
        .await,
        400,
        &format!("connection_id: this account has no connection {id}"),
    )
    .await;
    // The simulator's agents are as they were.
    let plain = app.draft_agent(&acme, Channel::Sms, &unique_number()).await;
    let read: Value = app
        .get(&format!("/agents/{plain}"), &acme)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(read["connection_id"], Value::Null);
}

#[tokio::test]
async fn a_check_asks_vonage_whether_the_credentials_work() {
    let vonage = FakeVonage::start(APPLICATION_ID).await;
    let app = spawn(Some(&vonage)).await;
    let key = app.new_key("acme").await;
    let id = create(&app, &key, vonage_connection()).await["connection_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/connections/{id}/check");
    assert_eq!(
        checked(&app, &path, &key).await,
        json!({"ok": true, "detail": "Vonage accepted the credentials"})
    );
    let requests = vonage.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].path, "/v1/calls");
    assert_eq!(
        requests[0].claims.as_ref().unwrap()["application_id"],
        APPLICATION_ID
    );
    vonage.refuse_credentials(true);
    assert_eq!(
        checked(&app, &path, &key).await,
        json!({"ok": false, "detail": "Vonage refused the credentials (401): check the \
               application id and private key"})
    );
    assert_eq!(vonage.problems(), Vec::<String>::new());
    drop(vonage);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(
        checked(&app, &path, &key).await,
        json!({"ok": false, "detail": "Vonage could not be reached"})
    );
    // A provider this build cannot reach yet says so; an SMPP connection
    // that names no SMSC says what to set (tests/api/smpp.rs binds).
    for (connection, detail) in [
        (
            json!({"name": "pbx", "provider": "sip",
                   "credentials": {"username": "herald", "password": "s3cret-sip"}}),
            "this version of herald cannot reach sip yet",
        ),
        (
            json!({"name": "smsc", "provider": "smpp",
                   "credentials": {"system_id": "herald", "password": "s3cret-smpp"}}),
            "settings.host must name the SMSC",
        ),
    ] {
        let created = create(&app, &key, connection).await;
        let response = app
            .post(
                &format!(
                    "/connections/{}/check",
                    created["connection_id"].as_str().unwrap()
                ),
                &key,
                json!({}),
            )
            .await;
        assert_eq!(
            response.json::<Value>().await.unwrap(),
            json!({"ok": false, "detail": detail})
        );
    }
}

/// A Twilio connection's check reads the account, with the auth token or
/// with the API key the connection holds; a WhatsApp Cloud connection's
/// reads the business number. Each says plainly when it is refused.
#[tokio::test]
async fn checks_ask_twilio_and_meta_whether_the_credentials_work() {
    let twilio = FakeTwilio::start(TWILIO_ACCOUNT, TWILIO_AUTH_TOKEN).await;
    let meta = FakeWhatsapp::start(WHATSAPP_NUMBER_ID, WHATSAPP_TOKEN, WHATSAPP_APP_SECRET).await;
    let (twilio_url, meta_url) = (twilio.url.clone(), meta.url.clone());
    let app = TestApp::spawn_with(|c| {
        talk_to_twilio(c, &twilio_url);
        c.whatsapp_api_url = meta_url;
    })
    .await;
    let key = app.new_key("acme").await;
    let check_of = |connection: &Value| {
        format!(
            "/connections/{}/check",
            connection["connection_id"].as_str().unwrap()
        )
    };

    let by_token = check_of(&twilio_connection(&app, &key, &twilio, json!({})).await);
    assert_eq!(
        checked(&app, &by_token, &key).await,
        json!({"ok": true, "detail": "Twilio accepted the credentials"})
    );
    let api_key = format!("SK{}", "5eed".repeat(8));
    twilio.add_api_key(&api_key, "s3cret-api-secret-for-twilio-tests");
    let keyed = create(
        &app,
        &key,
        json!({"name": "Twilio by key", "provider": "twilio", "credentials": {
            "account_sid": TWILIO_ACCOUNT, "auth_token": TWILIO_AUTH_TOKEN,
            "api_key": api_key, "api_secret": "s3cret-api-secret-for-twilio-tests"}}),
    )
    .await;
    let by_key = check_of(&keyed);
    assert_eq!(checked(&app, &by_key, &key).await["ok"], true);
    assert_eq!(
        twilio.authenticated_as(),
        [TWILIO_ACCOUNT, api_key.as_str()]
    );
    let account = format!("/2010-04-01/Accounts/{TWILIO_ACCOUNT}.json");
    assert!(twilio
        .requests()
        .iter()
        .all(|r| r.method == "GET" && r.path == account));
    twilio.refuse_credentials(true);
    assert_eq!(
        checked(&app, &by_token, &key).await,
        json!({"ok": false, "detail": "Twilio refused the credentials (401): check the \
               account SID and auth token"})
    );
    assert_eq!(
        checked(&app, &by_key, &key).await,
        json!({"ok": false, "detail": "Twilio refused the credentials (401): check the \
               account SID, API key and API secret"})
    );
    assert_eq!(twilio.problems(), Vec::<String>::new());

    let number = check_of(&whatsapp_connection(&app, &key, &meta).await);
    assert_eq!(
        checked(&app, &number, &key).await,
        json!({"ok": true, "detail": "Meta accepted the access token"})
    );
    meta.refuse_credentials(true);
    let refused = checked(&app, &number, &key).await;
    assert_eq!(refused["ok"], false);
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .starts_with("Meta refused the access token or the number (401)"),
        "{refused}"
    );
    assert_eq!(meta.problems(), Vec::<String>::new());
    drop((twilio, meta));
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    for (path, provider) in [(&by_token, "Twilio"), (&number, "Meta")] {
        assert_eq!(
            checked(&app, path, &key).await,
            json!({"ok": false, "detail": format!("{provider} could not be reached")})
        );
    }
}

async fn checked(app: &TestApp, path: &str, key: &str) -> Value {
    let response = app.post(path, key, json!({})).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// CONTRACT §10.4: a server whose database holds connections starts only
/// with the key they were sealed with, and says what to set otherwise.
#[tokio::test]
async fn a_server_starts_only_with_the_key_its_connections_were_sealed_with() {
    let mut app = spawn(None).await;
    let key = app.new_key("acme").await;
    let id = create(&app, &key, vonage_connection()).await["connection_id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.stop().await;
    let start = |config: herald_server::Config| async move {
        let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
        herald_server::start(config, listener).await
    };
    let mut config = app.config.clone();
    config.secret_key = None;
    let error = start(config.clone())
        .await
        .err()
        .expect("no start without a key");
    assert_eq!(
        error.to_string(),
        "connections are stored and HERALD_SECRET_KEY is not set: set it (or --secret-key) to \
         the key their credentials were sealed with"
    );
    config.secret_key = Some(Arc::new(
        Sealer::from_base64(&Sealer::generate_key()).unwrap(),
    ));
    let error = start(config)
        .await
        .err()
        .expect("no start with another key");
    assert_eq!(
        error.to_string(),
        format!(
            "HERALD_SECRET_KEY does not open the credentials of connection {id}: it is not the \
             key they were sealed with"
        )
    );
    app.restart().await;
    assert_eq!(
        app.get(&format!("/connections/{id}"), &key).await.status(),
        200
    );
}

/// CONTRACT §10.4: at the finest log level, through creation, a refused
/// edit, a check that fails and one that passes, a message and a call
/// over a Vonage and a Twilio connection, a deletion and a restart, no
/// credential and not the key reach the log.
#[tokio::test]
async fn credentials_and_the_key_reach_no_log_line() {
    let vonage = FakeVonage::start(APPLICATION_ID).await;
    let twilio =
        herald_server::testing::twilio::FakeTwilio::start(TWILIO_ACCOUNT, TWILIO_AUTH_TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    let database = crate::BACKEND.fresh_database(dir.path()).await;
    let logs = [dir.path().join("first.log"), dir.path().join("second.log")];
    let key = create_key(&database);
    let secret_key = Sealer::generate_key();
    let envs = [
        ("HERALD_LOG", "trace,sqlx=warn,hyper=info,h2=info"),
        ("HERALD_SECRET_KEY", secret_key.as_str()),
        ("HERALD_PUBLIC_URL", "https://herald.example.com"),
        ("HERALD_VONAGE_API_URL", vonage.url.as_str()),
        ("HERALD_TWILIO_API_URL", twilio.url.as_str()),
    ];
    let args = ["--database", database.as_str()];
    let serve = |n: usize| {
        ServeProcess::start_with(ServeOptions {
            args: &args,
            envs: &envs,
            log: Some(&logs[n]),
            ..ServeOptions::default()
        })
    };
    let server = serve(0).await;
    let client = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut request = client
            .request(method, format!("{}{path}", server.base))
            .header("X-Vgai-Key", &key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send()
    };
    let created: Value = call(
        reqwest::Method::POST,
        "/connections",
        Some(vonage_connection()),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let id = created["connection_id"].as_str().unwrap().to_owned();
    let path = format!("/connections/{id}");
    let mut bad = vonage_credentials();
    bad["private_key"] = json!(format!("{}x", key_line()));
    let refused = call(
        reqwest::Method::PATCH,
        &path,
        Some(json!({"credentials": bad})),
    )
    .await
    .unwrap();
    assert_eq!(refused.status(), 400);
    let check = format!("{path}/check");
    let ok: Value = call(reqwest::Method::POST, &check, None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ok["ok"], true, "{ok}");
    vonage.refuse_credentials(true);
    let refused: Value = call(reqwest::Method::POST, &check, None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(refused["ok"], false, "{refused}");
    vonage.refuse_credentials(false);
    // A session over the connection, its statuses signed and verified.
    vonage.deliver_to(
        &created["webhooks"],
        "https://herald.example.com",
        &server.base,
        SIGNATURE_SECRET,
        "abcd1234",
    );
    let on_twilio: Value = call(
        reqwest::Method::POST,
        "/connections",
        Some(
            json!({"name": "Twilio", "provider": "twilio", "credentials": {
            "account_sid": TWILIO_ACCOUNT, "auth_token": TWILIO_AUTH_TOKEN}}),
        ),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let twilio_id = on_twilio["connection_id"].as_str().unwrap().to_owned();
    twilio.deliver_to("https://herald.example.com", &server.base);
    // A message and a call on each, each in a session of its own agent.
    for (id, channel, path, extra) in [
        (
            &id,
            "sms",
            "/messaging/conversation",
            json!({"channel": "sms"}),
        ),
        (&id, "voice", "/telephony/make-call", json!({})),
        (
            &twilio_id,
            "sms",
            "/messaging/conversation",
            json!({"channel": "sms"}),
        ),
        (&twilio_id, "voice", "/telephony/make-call", json!({})),
    ] {
        let agent: Value = call(
            reqwest::Method::POST,
            "/agents",
            Some(
                json!({"name": "a", "type": channel, "number": unique_number(),
                        "connection_id": id}),
            ),
        )
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        let agent = agent["agent_id"].as_str().unwrap().to_owned();
        let published = call(
            reqwest::Method::POST,
            &format!("/agents/{agent}/publish"),
            Some(json!({})),
        )
        .await
        .unwrap();
        assert_eq!(published.status(), 200);
        let mut trigger = json!({"agent_id": agent, "to": unique_number()});
        for (k, v) in extra.as_object().unwrap() {
            trigger[k] = v.clone();
        }
        let triggered: Value = call(reqwest::Method::POST, path, Some(trigger))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = triggered["session_id"].as_str().unwrap();
        let mut ended = false;
        for _ in 0..400 {
            let read: Value = call(reqwest::Method::GET, &format!("/sessions/{session}"), None)
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if read["status"] == "ended" {
                assert_eq!(read["outcome"], "completed", "{read}");
                ended = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        assert!(ended, "the {channel} session over {id} ended");
    }
    assert_eq!(vonage.problems(), Vec::<String>::new());
    assert_eq!(twilio.problems(), Vec::<String>::new());
    let other = create_connection_over(&client, &server.base, &key).await;
    let gone = call(
        reqwest::Method::DELETE,
        &format!("/connections/{other}"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(gone.status(), 204);
    server.kill();
    let server = serve(1).await;
    let read = reqwest::Client::new()
        .get(format!("{}{path}", server.base))
        .header("X-Vgai-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    server.kill();

    let text = logs
        .iter()
        .map(|log| std::fs::read_to_string(log).unwrap())
        .collect::<String>();
    assert!(
        text.contains("connection created"),
        "the log was captured: {text}"
    );
    assert_no_credential(&text);
    assert!(!text.contains(&secret_key), "the key shows in the log");
    // Twilio's token, nor the Basic authorization that carries it.
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("{TWILIO_ACCOUNT}:{TWILIO_AUTH_TOKEN}"));
    assert!(
        !text.contains(TWILIO_AUTH_TOKEN),
        "Twilio's token shows in the log"
    );
    assert!(
        !text.contains(&basic),
        "Twilio's authorization shows in the log"
    );
}

async fn create_connection_over(client: &reqwest::Client, base: &str, key: &str) -> String {
    let created: Value = client
        .post(format!("{base}/connections"))
        .header("X-Vgai-Key", key)
        .json(&vonage_connection())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    created["connection_id"].as_str().unwrap().to_owned()
}

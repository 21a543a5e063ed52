//! The test harness: spawn herald, make accounts and agents, receive
//! callbacks.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use herald_core::flow::FlowDefinition;
use herald_core::keys::{generate_key, hash_key};
use herald_core::Channel;
use herald_server::{Config, Server};
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// One herald server on a temporary SQLite file.
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub server: Option<Server>,
    pub config: Config,
    pub db_path: PathBuf,
    _dir: Arc<tempfile::TempDir>,
}

pub fn test_config(db_path: &std::path::Path) -> Config {
    Config {
        listen: ([127, 0, 0, 1], 0).into(),
        database_url: format!("sqlite://{}", db_path.display()),
        // The test receiver is on loopback.
        allow_private_callbacks: true,
        callback_retry_schedule: vec![Duration::from_millis(200); 3],
        simulator_delay: Duration::from_millis(5),
        ..Config::default()
    }
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    pub async fn spawn_with(configure: impl FnOnce(&mut Config)) -> Self {
        let dir = Arc::new(tempfile::tempdir().expect("a temporary directory"));
        let db_path = dir.path().join("herald.db");
        let mut config = test_config(&db_path);
        configure(&mut config);
        let server = start(config.clone()).await;
        TestApp {
            base: format!("http://{}", server.local_addr()),
            client: reqwest::Client::new(),
            server: Some(server),
            config,
            db_path,
            _dir: dir,
        }
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("the server is running")
    }

    /// Stops the server gracefully and starts a new one on the same database.
    pub async fn restart(&mut self) {
        self.stop().await;
        let server = start(self.config.clone()).await;
        self.base = format!("http://{}", server.local_addr());
        self.server = Some(server);
    }

    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await;
        }
    }

    /// A new account with a key, as `herald keys create` makes them.
    pub async fn new_key(&self, account: &str) -> String {
        let key = generate_key();
        let app = self.server().app();
        app.store.add_key(account, hash_key(&key)).await.unwrap();
        app.directory.reload_keys(app.store.as_ref()).await.unwrap();
        key
    }

    /// Creates and publishes an agent through the API; returns its id.
    pub async fn published_agent(&self, key: &str, channel: Channel, number: &str) -> String {
        let id = self.draft_agent(key, channel, number).await;
        let response = self
            .post(&format!("/agents/{id}/publish"), key, json!({}))
            .await;
        assert_eq!(response.status(), 200, "publishing {id}");
        id
    }

    pub async fn draft_agent(&self, key: &str, channel: Channel, number: &str) -> String {
        let response = self
            .post(
                "/agents",
                key,
                json!({"name": format!("{channel} agent"), "type": channel, "number": number}),
            )
            .await;
        assert_eq!(response.status(), 201, "creating a {channel} agent");
        let body: Value = response.json().await.unwrap();
        body["agent_id"].as_str().unwrap().to_owned()
    }

    /// Raises an agent's rate directly in the store, as `herald limits set`
    /// does, and reloads the cache.
    pub async fn set_rate(&self, agent: &str, rate: u32) {
        let app = self.server().app();
        assert!(app
            .store
            .set_rate(&agent.parse().unwrap(), rate)
            .await
            .unwrap());
        app.directory
            .reload_rates(app.store.as_ref())
            .await
            .unwrap();
    }

    pub async fn register_template(&self, key: &str, name: &str, header: Option<&str>, body: &str) {
        let response = self
            .post(
                "/whatsapp/templates",
                key,
                json!({"namespace": "ns", "name": name, "locale": "en", "header": header, "body": body}),
            )
            .await;
        assert_eq!(response.status(), 201);
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post(&self, path: &str, key: &str, body: Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .header("X-Vgai-Key", key)
            .json(&body)
            .send()
            .await
            .expect("the server answers")
    }

    pub async fn post_raw(
        &self,
        path: &str,
        key: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .header("X-Vgai-Key", key)
            .body(body)
            .send()
            .await
            .expect("the server answers")
    }

    pub async fn get(&self, path: &str, key: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .header("X-Vgai-Key", key)
            .send()
            .await
            .expect("the server answers")
    }

    /// Waits until the session has ended; returns it.
    pub async fn ended_session(&self, key: &str, id: &str) -> Value {
        for _ in 0..200 {
            let session: Value = self
                .get(&format!("/sessions/{id}"), key)
                .await
                .json()
                .await
                .unwrap();
            if session["status"] == "ended" {
                return session;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("session {id} did not end");
    }

    /// Waits until the session records an event of `kind`; returns it.
    pub async fn wait_for_event(&self, key: &str, id: &str, kind: &str) -> Value {
        for _ in 0..200 {
            let session: Value = self
                .get(&format!("/sessions/{id}"), key)
                .await
                .json()
                .await
                .unwrap();
            let found = session["events"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["type"] == kind)
                .cloned();
            if let Some(event) = found {
                return event;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("session {id} recorded no {kind} event");
    }

    /// Opens the database directly, as an operator (or a failure) would.
    pub fn sqlite(&self) -> rusqlite::Connection {
        let conn = rusqlite::Connection::open(&self.db_path).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        conn
    }
}

async fn start(config: Config) -> Server {
    let listener = TcpListener::bind(config.listen).await.unwrap();
    herald_server::start(config, listener)
        .await
        .expect("herald starts")
}

/// Asserts an error answer's status and body (CONTRACT §1.2).
pub async fn assert_error(response: reqwest::Response, status: u16, message: &str) {
    assert_eq!(response.status(), status, "status for {message:?}");
    let body: Value = response.json().await.expect("a JSON error body");
    assert_eq!(body, json!({"status": status, "message": message}));
}

/// `s` has the shape `pattern`, where `d` is an ASCII digit, `x` a lowercase
/// hex digit, and any other character stands for itself.
pub fn has_shape(s: &str, pattern: &str) -> bool {
    s.len() == pattern.len()
        && s.bytes().zip(pattern.bytes()).all(|(c, p)| match p {
            b'd' => c.is_ascii_digit(),
            b'x' => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
            _ => c == p,
        })
}

/// A lowercase hyphenated UUID (CONTRACT §1.6).
pub fn is_uuid(s: &str) -> bool {
    has_shape(s, "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx")
}

/// A session id: a lowercase hyphenated UUID v4 or v7 (CONTRACT §1.6).
pub fn assert_session_id(id: &str) {
    assert!(
        is_uuid(id),
        "session_id {id:?} is not a lowercase hyphenated UUID"
    );
    let version = id.as_bytes()[14];
    assert!(
        version == b'4' || version == b'7',
        "session_id {id:?} is neither a v4 nor a v7 UUID"
    );
}

/// RFC 3339 UTC with milliseconds and `Z` (CONTRACT §1.5).
pub fn assert_rfc3339_millis(t: &str) {
    assert!(
        has_shape(t, "dddd-dd-ddTdd:dd:dd.dddZ"),
        "timestamp {t:?} is not RFC 3339 UTC with milliseconds"
    );
}

/// A callback as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Value,
    pub raw: Bytes,
}

/// A local HTTP receiver for callbacks that records what it gets and can be
/// told to fail.
#[derive(Clone)]
pub struct TestReceiver {
    pub url: String,
    received: Arc<Mutex<Vec<Received>>>,
    attempts: Arc<Mutex<Vec<Received>>>,
    failing: Arc<Mutex<Option<StatusCode>>>,
}

impl TestReceiver {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/callbacks", listener.local_addr().unwrap());
        let receiver = TestReceiver {
            url,
            received: Default::default(),
            attempts: Default::default(),
            failing: Default::default(),
        };
        let state = receiver.clone();
        let app = axum::Router::new().route(
            "/callbacks",
            axum::routing::post(move |headers: HeaderMap, raw: Bytes| {
                let state = state.clone();
                async move {
                    let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
                    let item = Received { headers, body, raw };
                    state.attempts.lock().unwrap().push(item.clone());
                    if let Some(status) = *state.failing.lock().unwrap() {
                        return status;
                    }
                    state.received.lock().unwrap().push(item);
                    StatusCode::OK
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        receiver
    }

    /// Answer every callback with `status` (None: accept them again).
    pub fn fail_with(&self, status: Option<StatusCode>) {
        *self.failing.lock().unwrap() = status;
    }

    /// Callbacks accepted with 2xx.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Every attempt, accepted or not.
    pub fn attempts(&self) -> Vec<Received> {
        self.attempts.lock().unwrap().clone()
    }

    /// Waits until at least `n` callbacks were accepted.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        for _ in 0..400 {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("expected {n} callbacks, got {:?}", self.received());
    }

    pub async fn wait_for_attempts(&self, n: usize) -> Vec<Received> {
        for _ in 0..400 {
            let got = self.attempts();
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("expected {n} attempts, got {}", self.attempts().len());
    }
}

/// A flow for tests that want a recognisable greeting.
pub fn greeting_flow(channel: Channel, text: &str) -> Value {
    let mut flow = FlowDefinition::default_for(channel);
    if let Some(node) = flow.nodes.iter_mut().find(|n| n.id == "greet") {
        match &mut node.kind {
            herald_core::flow::NodeKind::Speak { text: t, .. }
            | herald_core::flow::NodeKind::SendMessage { text: t, .. } => *t = text.to_owned(),
            _ => {}
        }
    }
    serde_json::to_value(flow).unwrap()
}

/// Sets up an account with one published agent of `channel`.
pub async fn account_with_agent(app: &TestApp, channel: Channel) -> (String, String) {
    let key = app.new_key(&format!("account-{}", generate_key())).await;
    let number = unique_number();
    let agent = app.published_agent(&key, channel, &number).await;
    (key, agent)
}

/// A UK mobile-range number unique within the test run.
pub fn unique_number() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed) + std::process::id() % 1000 * 1000;
    format!("4477009{:05}", n % 100_000)
}

/// `herald serve` as a child process on a free loopback port, killed
/// (SIGKILL) when dropped.
pub struct ServeProcess {
    pub base: String,
    child: std::process::Child,
}

impl ServeProcess {
    /// Starts `herald serve` with these arguments and environment and waits
    /// until it answers `/healthz`.
    pub async fn start(args: &[&str], envs: &[(&str, &str)]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .arg("serve")
            .args(args)
            .env("HERALD_LISTEN", format!("127.0.0.1:{port}"))
            .envs(envs.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("herald serve starts");
        let server = ServeProcess {
            base: format!("http://127.0.0.1:{port}"),
            child,
        };
        let client = reqwest::Client::new();
        for _ in 0..400 {
            if let Ok(response) = client.get(format!("{}/healthz", server.base)).send().await {
                assert_eq!(response.status(), 200);
                return server;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("herald serve did not answer /healthz");
    }

    /// Kills the process at once, as a crash would.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("the process is reaped");
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

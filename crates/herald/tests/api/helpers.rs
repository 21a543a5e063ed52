//! The test harness: spawn herald, make accounts and agents, receive
//! callbacks.

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

/// The stores and limiter a copy of the suite runs on: `tests/api` on the
/// embedded default, `tests/scaleout` on PostgreSQL and Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(dead_code)] // each copy of the suite names one
pub enum Backend {
    /// A SQLite file and the in-process limiter.
    Embedded,
    /// A fresh PostgreSQL schema per server and a shared Redis.
    ScaleOut,
}

impl Backend {
    /// A new, empty database; `dir` holds it if it is a file.
    pub async fn fresh_database(self, dir: &std::path::Path) -> String {
        match self {
            Backend::Embedded => format!("sqlite://{}", dir.join("herald.db").display()),
            Backend::ScaleOut => herald_store::testing::scratch_postgres_url().await,
        }
    }

    pub fn redis_url(self) -> Option<String> {
        match self {
            Backend::Embedded => None,
            Backend::ScaleOut => Some(
                std::env::var("HERALD_TEST_REDIS_URL")
                    .unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
            ),
        }
    }
}

/// One herald server on a database of its own.
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub server: Option<Server>,
    pub config: Config,
    /// Where a SQLite database keeps its files.
    pub dir: Arc<tempfile::TempDir>,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    pub async fn spawn_with(configure: impl FnOnce(&mut Config)) -> Self {
        let dir = Arc::new(tempfile::tempdir().expect("a temporary directory"));
        let mut config = Config {
            listen: ([127, 0, 0, 1], 0).into(),
            database_url: crate::BACKEND.fresh_database(dir.path()).await.into(),
            redis_url: crate::BACKEND.redis_url().map(Into::into),
            // The test receiver is on loopback.
            allow_private_callbacks: true,
            // The tests' SMSC is on loopback too.
            allow_private_smsc: true,
            callback_retry_schedule: vec![Duration::from_millis(200); 3],
            simulator_delay: Duration::from_millis(5),
            ..Config::default()
        };
        configure(&mut config);
        let server = start(config.clone()).await;
        TestApp {
            base: format!("http://{}", server.local_addr()),
            client: reqwest::Client::new(),
            server: Some(server),
            config,
            dir,
        }
    }

    /// The server's database, opened directly, as an operator would.
    pub async fn db(&self) -> TestDb {
        TestDb::connect(self.config.database_url.expose()).await
    }

    /// The sessions stored for `agent`, straight from the database.
    pub async fn stored_sessions(&self, agent: &str) -> i64 {
        self.db()
            .await
            .count(
                "SELECT COUNT(*) FROM sessions WHERE agent_id = $1",
                &[agent],
            )
            .await
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

    /// Creates the agent `body` describes and publishes it, through the
    /// API; returns its id.
    pub async fn publish_agent(&self, key: &str, body: Value) -> String {
        let created = self.post("/agents", key, body).await;
        let status = created.status();
        let created: Value = created.json().await.unwrap();
        assert_eq!(status, 201, "{created}");
        let id = created["agent_id"].as_str().unwrap().to_owned();
        let published = self
            .post(&format!("/agents/{id}/publish"), key, json!({}))
            .await;
        let status = published.status();
        assert_eq!(status, 200, "{}", published.text().await.unwrap());
        id
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

    pub async fn patch(&self, path: &str, key: &str, body: Value) -> reqwest::Response {
        self.client
            .patch(self.url(path))
            .header("X-Vgai-Key", key)
            .json(&body)
            .send()
            .await
            .expect("the server answers")
    }

    pub async fn delete(&self, path: &str, key: &str) -> reqwest::Response {
        self.client
            .delete(self.url(path))
            .header("X-Vgai-Key", key)
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

    /// Waits until the session has ended and recorded `n` message statuses
    /// (a status may come after the end, as a provider's do); returns it.
    pub async fn ended_with_statuses(&self, key: &str, id: &str, n: usize) -> Value {
        for _ in 0..200 {
            let session = self.ended_session(key, id).await;
            let statuses = session["events"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["type"] == "message_status")
                .count();
            if statuses >= n {
                return session;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("session {id} did not record {n} message statuses");
    }

    /// The sum of the samples of herald's provider counters
    /// (`herald_provider_*`) whose lines hold every one of `labels`.
    pub async fn provider_metric(&self, labels: &[&str]) -> f64 {
        let text = self
            .client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with("herald_provider_") && labels.iter().all(|x| l.contains(x)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
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
}

/// Direct access to a test server's database, whichever backend it is, for
/// what the API does not show. SQL is written once for both: the same
/// tables, `$1` parameters (SQLite numbers them the same way).
pub enum TestDb {
    Sqlite(rusqlite::Connection),
    Postgres(sqlx::PgPool),
}

impl TestDb {
    pub async fn connect(url: &str) -> Self {
        match url.strip_prefix("sqlite://") {
            Some(path) => {
                let conn = rusqlite::Connection::open(path).unwrap();
                conn.busy_timeout(Duration::from_secs(5)).unwrap();
                TestDb::Sqlite(conn)
            }
            None => TestDb::Postgres(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(2)
                    .connect(url)
                    .await
                    .unwrap_or_else(|e| panic!("connecting to {url}: {e}")),
            ),
        }
    }

    /// The one number `sql` selects (a `COUNT(*)`), with text arguments.
    pub async fn count(&self, sql: &str, args: &[&str]) -> i64 {
        match self {
            TestDb::Sqlite(conn) => conn
                .query_row(sql, rusqlite::params_from_iter(args), |r| r.get(0))
                .unwrap_or_else(|e| panic!("{sql}: {e}")),
            TestDb::Postgres(pool) => {
                let mut query = sqlx::query_scalar::<_, i64>(sql);
                for arg in args {
                    query = query.bind(*arg);
                }
                query
                    .fetch_one(pool)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"))
            }
        }
    }

    /// Runs one statement with text arguments, for changes the API would
    /// refuse (a store as an older herald or an operator left it).
    pub async fn execute(&self, sql: &str, args: &[&str]) {
        match self {
            TestDb::Sqlite(conn) => {
                conn.execute(sql, rusqlite::params_from_iter(args))
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
            }
            TestDb::Postgres(pool) => {
                let mut query = sqlx::query(sql);
                for arg in args {
                    query = query.bind(*arg);
                }
                query
                    .execute(pool)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
            }
        }
    }

    /// The hashes of every stored key.
    pub async fn key_hashes(&self) -> Vec<Vec<u8>> {
        self.blobs("SELECT hash FROM api_keys").await
    }

    /// The one binary column `sql` selects, of every row.
    pub async fn blobs(&self, sql: &str) -> Vec<Vec<u8>> {
        match self {
            TestDb::Sqlite(conn) => {
                let mut stmt = conn.prepare(sql).unwrap();
                let rows = stmt.query_map([], |r| r.get(0)).unwrap();
                rows.collect::<Result<_, _>>().unwrap()
            }
            TestDb::Postgres(pool) => sqlx::query_scalar(sql).fetch_all(pool).await.unwrap(),
        }
    }

    /// Makes every insert into `table` fail inside its transaction: a real
    /// failure of the store, part-way through a write.
    pub async fn fail_inserts_into(&self, table: &str) {
        self.batch(&match self {
            TestDb::Sqlite(_) => format!(
                "CREATE TRIGGER fail_{table} BEFORE INSERT ON {table} \
                 BEGIN SELECT RAISE(ABORT, 'disk on fire'); END;"
            ),
            TestDb::Postgres(_) => format!(
                "CREATE FUNCTION fail_insert() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN RAISE EXCEPTION 'disk on fire'; END $$; \
                 CREATE TRIGGER fail_{table} BEFORE INSERT ON {table} \
                 FOR EACH ROW EXECUTE FUNCTION fail_insert();"
            ),
        })
        .await;
    }

    pub async fn allow_inserts_into(&self, table: &str) {
        self.batch(&match self {
            TestDb::Sqlite(_) => format!("DROP TRIGGER fail_{table}"),
            TestDb::Postgres(_) => {
                format!("DROP TRIGGER fail_{table} ON {table}; DROP FUNCTION fail_insert();")
            }
        })
        .await;
    }

    async fn batch(&self, sql: &str) {
        match self {
            TestDb::Sqlite(conn) => conn.execute_batch(sql).unwrap(),
            TestDb::Postgres(pool) => {
                sqlx::raw_sql(sql).execute(pool).await.unwrap();
            }
        }
    }

    /// Every row of every herald table, as text, for searching.
    pub async fn dump(&self) -> String {
        let tables = [
            "accounts",
            "api_keys",
            "agents",
            "agent_versions",
            "sessions",
            "session_events",
            "callbacks",
            "idempotency_keys",
            "connections",
        ];
        let mut out = String::new();
        for table in tables {
            match self {
                TestDb::Sqlite(conn) => {
                    let mut stmt = conn.prepare(&format!("SELECT * FROM {table}")).unwrap();
                    let columns = stmt.column_count();
                    let mut rows = stmt.query([]).unwrap();
                    while let Some(row) = rows.next().unwrap() {
                        for i in 0..columns {
                            match row.get(i).unwrap() {
                                // As text, so that a secret kept in the
                                // clear in a BLOB is found too.
                                rusqlite::types::Value::Blob(bytes) => {
                                    out += &String::from_utf8_lossy(&bytes);
                                    out.push('\n');
                                }
                                value => out += &format!("{value:?}\n"),
                            }
                        }
                    }
                }
                TestDb::Postgres(pool) => {
                    // bytea columns print as hex; the credentials of
                    // connections are added as they are, for the same reason.
                    if table == "connections" {
                        let sealed: Vec<Vec<u8>> =
                            sqlx::query_scalar("SELECT credentials FROM connections")
                                .fetch_all(pool)
                                .await
                                .unwrap();
                        for bytes in sealed {
                            out += &String::from_utf8_lossy(&bytes);
                            out.push('\n');
                        }
                    }
                    let rows: Vec<String> =
                        sqlx::query_scalar(&format!("SELECT t::text FROM {table} t"))
                            .fetch_all(pool)
                            .await
                            .unwrap();
                    out += &rows.join("\n");
                }
            }
        }
        out
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
    /// When the receiver got it.
    pub at: std::time::Instant,
}

/// A local HTTP receiver for callbacks that records what it gets and can be
/// told to fail.
#[derive(Clone)]
pub struct TestReceiver {
    pub url: String,
    received: Arc<Mutex<Vec<Received>>>,
    attempts: Arc<Mutex<Vec<Received>>>,
    failing: Arc<Mutex<Option<StatusCode>>>,
    answer_delay: Arc<Mutex<Duration>>,
}

impl TestReceiver {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener)
    }

    /// A receiver on a given loopback port: one that callbacks were already
    /// pointed at while nothing listened there.
    pub async fn start_on(port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| panic!("binding 127.0.0.1:{port}: {e}"));
        Self::serve(listener)
    }

    fn serve(listener: TcpListener) -> Self {
        let url = format!("http://{}/callbacks", listener.local_addr().unwrap());
        let receiver = TestReceiver {
            url,
            received: Default::default(),
            attempts: Default::default(),
            failing: Default::default(),
            answer_delay: Default::default(),
        };
        let state = receiver.clone();
        let app = axum::Router::new().route(
            "/callbacks",
            axum::routing::post(move |headers: HeaderMap, raw: Bytes| {
                let state = state.clone();
                async move {
                    let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
                    let at = std::time::Instant::now();
                    let item = Received {
                        headers,
                        body,
                        raw,
                        at,
                    };
                    state.attempts.lock().unwrap().push(item.clone());
                    if let Some(status) = *state.failing.lock().unwrap() {
                        return status;
                    }
                    state.received.lock().unwrap().push(item);
                    let delay = *state.answer_delay.lock().unwrap();
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
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

    /// Answer each accepted callback only after `delay`; it counts as
    /// received as soon as it arrives.
    pub fn answer_after(&self, delay: Duration) {
        *self.answer_delay.lock().unwrap() = delay;
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
    /// The `status` of each callback, once `n` have come.
    pub async fn statuses(&self, n: usize) -> Vec<String> {
        self.wait_for(n)
            .await
            .iter()
            .map(|c| c.body["status"].as_str().unwrap().to_owned())
            .collect()
    }

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

/// `herald keys create` on `database`, as an operator runs it; the new key.
pub fn create_key(database: &str) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args([
            "keys",
            "create",
            "--account",
            "acme",
            "--database",
            database,
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// `herald serve` as a child process on a free loopback port, on the
/// suite's backend (`args` name the database), killed (SIGKILL) when
/// dropped.
pub struct ServeProcess {
    pub base: String,
    child: std::process::Child,
}

/// How [`ServeProcess::start_with`] runs `herald serve`.
#[derive(Default)]
pub struct ServeOptions<'a> {
    pub args: &'a [&'a str],
    pub envs: &'a [(&'a str, &'a str)],
    /// The file its standard error (its log) goes to; none when `None`.
    pub log: Option<&'a std::path::Path>,
    /// The limit on open files it runs under (soft and hard).
    pub open_files: Option<u64>,
}

impl ServeProcess {
    /// Starts `herald serve` with these arguments and environment and waits
    /// until it answers `/healthz`.
    pub async fn start(args: &[&str], envs: &[(&str, &str)]) -> Self {
        Self::start_with(ServeOptions {
            args,
            envs,
            ..ServeOptions::default()
        })
        .await
    }

    pub async fn start_with(options: ServeOptions<'_>) -> Self {
        use std::os::unix::process::CommandExt;

        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let stderr = match options.log {
            Some(path) => std::fs::File::create(path).unwrap().into(),
            None => std::process::Stdio::null(),
        };
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_herald"));
        command
            .arg("serve")
            .args(options.args)
            .env("HERALD_LISTEN", format!("127.0.0.1:{port}"))
            .envs(
                crate::BACKEND
                    .redis_url()
                    .map(|url| ("HERALD_REDIS_URL", url)),
            )
            .envs(options.envs.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(stderr);
        if let Some(limit) = options.open_files {
            let limit = libc::rlimit {
                rlim_cur: limit as libc::rlim_t,
                rlim_max: limit as libc::rlim_t,
            };
            // SAFETY: setrlimit is async-signal-safe and touches only the
            // child, between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let child = command.spawn().expect("herald serve starts");
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

    /// Polls `GET /sessions/{id}` until the session has ended (20 s at
    /// most); returns it.
    pub async fn ended(&self, key: &str, id: &str) -> Value {
        let client = reqwest::Client::new();
        let mut session = Value::Null;
        for _ in 0..800 {
            session = client
                .get(format!("{}/sessions/{id}", self.base))
                .header("X-Vgai-Key", key)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if session["status"] == "ended" {
                return session;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("session {id} did not end: {session}");
    }

    /// Creates and publishes an agent through this server; returns its id.
    pub async fn published_agent(&self, key: &str, channel: &str, number: &str) -> String {
        let client = reqwest::Client::new();
        let created: Value = client
            .post(format!("{}/agents", self.base))
            .header("X-Vgai-Key", key)
            .json(&json!({"name": channel, "type": channel, "number": number}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let agent = created["agent_id"]
            .as_str()
            .expect("an agent id")
            .to_owned();
        let published = client
            .post(format!("{}/agents/{agent}/publish", self.base))
            .header("X-Vgai-Key", key)
            .send()
            .await
            .unwrap();
        assert_eq!(published.status(), 200, "publishing {agent}");
        agent
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

// ---- Vonage ---------------------------------------------------------------

/// The Vonage application of the tests' connections (the fake's).
pub const VONAGE_APPLICATION: &str = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee";
pub const VONAGE_API_KEY: &str = "abcd1234";
pub const VONAGE_SIGNATURE_SECRET: &str = "s3cret-signature-for-vonage-tests";
/// The public URL of servers that take connections; the fake posts to the
/// paths under it at the server's real address.
pub const PUBLIC_URL: &str = "https://herald.example.com";

/// Settings for a server that talks to `vonage`: a secret key, a public
/// URL, Vonage's API at the fake.
pub fn talk_to(config: &mut Config, vonage_url: &str) {
    config.vonage_api_url = vonage_url.to_owned();
    config.public_url = Some(PUBLIC_URL.into());
    config.secret_key = Some(Arc::new(
        herald_core::secret::Sealer::from_base64(&herald_core::secret::Sealer::generate_key())
            .unwrap(),
    ));
}

/// Creates the account's Vonage connection and points the fake's webhooks
/// at the server; the connection as the API shows it.
pub async fn vonage_connection(
    app: &TestApp,
    key: &str,
    vonage: &herald_server::testing::vonage::FakeVonage,
) -> Value {
    let response = app
        .post(
            "/connections",
            key,
            json!({"name": "Vonage", "provider": "vonage", "credentials": {
                "application_id": VONAGE_APPLICATION,
                "private_key": herald_channels::testing::vonage_private_key(),
                "api_key": VONAGE_API_KEY, "api_secret": "s3cret-api",
                "signature_secret": VONAGE_SIGNATURE_SECRET}}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let connection: Value = response.json().await.unwrap();
    vonage.deliver_to(
        &connection["webhooks"],
        PUBLIC_URL,
        &app.base,
        VONAGE_SIGNATURE_SECRET,
        VONAGE_API_KEY,
    );
    connection
}

// ---- Twilio ---------------------------------------------------------------

/// The Twilio account of the tests' connections (the fake's).
pub const TWILIO_ACCOUNT: &str = "AC00000000000000000000000000c0ffee";
pub const TWILIO_AUTH_TOKEN: &str = "s3cret-auth-token-for-twilio-tests";

/// Settings for a server that talks to `twilio`: a secret key, a public
/// URL, Twilio's API at the fake.
pub fn talk_to_twilio(config: &mut Config, twilio_url: &str) {
    talk_to(config, &config.vonage_api_url.clone());
    config.twilio_api_url = twilio_url.to_owned();
}

/// Creates the account's Twilio connection with `settings` and points the
/// fake's webhooks at the server; the connection as the API shows it.
pub async fn twilio_connection(
    app: &TestApp,
    key: &str,
    twilio: &herald_server::testing::twilio::FakeTwilio,
    settings: Value,
) -> Value {
    let response = app
        .post(
            "/connections",
            key,
            json!({"name": "Twilio", "provider": "twilio", "credentials": {
                "account_sid": TWILIO_ACCOUNT, "auth_token": TWILIO_AUTH_TOKEN},
                "settings": settings}),
        )
        .await;
    let status = response.status();
    let connection: Value = response.json().await.unwrap();
    assert_eq!(status, 201, "{connection}");
    twilio.deliver_to(PUBLIC_URL, &app.base);
    twilio.inbound_webhook(connection["webhooks"]["message_inbound"].as_str().unwrap());
    connection
}

// ---- WhatsApp Cloud ---------------------------------------------------------

/// The WhatsApp Cloud number and app of the tests' connections (the fake's).
pub const WHATSAPP_NUMBER_ID: &str = "106540352242922";
pub const WHATSAPP_TOKEN: &str = "s3cret-access-token-for-meta-tests";
pub const WHATSAPP_APP_SECRET: &str = "s3cret-app-secret-for-meta-tests";
pub const WHATSAPP_VERIFY_TOKEN: &str = "s3cret-verify-token-for-meta-tests";

/// Settings for a server that talks to Meta's fake at `url`: a secret key,
/// a public URL, the Graph API at the fake.
pub fn talk_to_whatsapp(config: &mut Config, url: &str) {
    talk_to(config, &config.vonage_api_url.clone());
    config.whatsapp_api_url = url.to_owned();
}

/// Creates the account's WhatsApp Cloud connection and points the fake's
/// webhook at the server; the connection as the API shows it.
pub async fn whatsapp_connection(
    app: &TestApp,
    key: &str,
    meta: &herald_server::testing::whatsapp_cloud::FakeWhatsapp,
) -> Value {
    let response = app
        .post(
            "/connections",
            key,
            json!({"name": "WhatsApp", "provider": "whatsapp_cloud", "credentials": {
                "phone_number_id": WHATSAPP_NUMBER_ID, "access_token": WHATSAPP_TOKEN,
                "app_secret": WHATSAPP_APP_SECRET, "verify_token": WHATSAPP_VERIFY_TOKEN}}),
        )
        .await;
    let status = response.status();
    let connection: Value = response.json().await.unwrap();
    assert_eq!(status, 201, "{connection}");
    let public = connection["webhooks"]["webhook"].as_str().unwrap();
    let path = public.strip_prefix(PUBLIC_URL).unwrap();
    meta.deliver_to(&format!("{}{path}", app.base));
    connection
}

/// A messaging flow that asks whether the person can come on Friday and
/// answers their yes or no.
pub fn friday_question_flow(timeout_secs: u64) -> Value {
    json!({"format": 1, "start": "ask", "nodes": [
        {"id": "ask", "type": "collect_input", "prompt": "Can you come on Friday?",
         "entity": "yes_no", "parameter": "ANSWER", "timeout_secs": timeout_secs,
         "success": "check", "invalid": "end", "no_input": "end"},
        {"id": "check", "type": "conditions",
         "branches": [{"rules": [{"parameter": "ANSWER", "op": "eq", "value": "yes"}], "next": "great"}],
         "default": "sorry"},
        {"id": "great", "type": "send_message", "text": "Great, see you Friday.", "next": "end"},
        {"id": "sorry", "type": "send_message", "text": "Sorry to hear that.", "next": "end"},
        {"id": "end", "type": "end"}
    ]})
}

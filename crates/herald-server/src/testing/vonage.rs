//! A loopback fake of Vonage, written from its specifications (the Voice
//! API, `definitions/voice.yml`, and the Messages API,
//! `definitions/messages-olympus.yml`, of `Nexmo/api-specification`).
//!
//! It checks every request herald sends as Vonage would (the bearer token:
//! RS256, signed with the application's private key, its claims; the
//! query and the body's fields and types) and writes down every departure
//! from the specification in [`FakeVonage::problems`], which a test
//! expects empty; and it answers as Vonage does. Point a server at it with
//! `vonage_api_url`.

use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};
use tokio::task::JoinHandle;

/// One request herald made, as the fake read it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: &'static str,
    pub path: String,
    /// The bearer token's claims, when it verified.
    pub claims: Option<Value>,
    pub body: Value,
}

#[derive(Default)]
struct Log {
    requests: Vec<Recorded>,
    problems: Vec<String>,
}

struct Shared {
    application_id: String,
    key: DecodingKey,
    log: Mutex<Log>,
    /// Answer every request 401, as for credentials Vonage does not know.
    refuse: Mutex<bool>,
}

impl Shared {
    fn problem(&self, text: String) {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .problems
            .push(text);
    }

    fn record(&self, request: Recorded) {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .requests
            .push(request);
    }

    /// Checks the bearer token as Vonage does: an RS256 JWT signed with the
    /// application's key, naming the application, with `iat` and `jti`,
    /// not expired. `None` (and a 401 to answer) when it does not verify.
    fn token(&self, what: &str, headers: &HeaderMap) -> Option<Value> {
        if *self.refuse.lock().unwrap_or_else(|e| e.into_inner()) {
            return None;
        }
        let Some(token) = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            self.problem(format!("{what}: no Authorization: Bearer token"));
            return None;
        };
        let mut validation = Validation::new(Algorithm::RS256);
        validation.required_spec_claims.clear();
        let claims = match jsonwebtoken::decode::<Value>(token, &self.key, &validation) {
            Ok(data) => data.claims,
            Err(e) => {
                self.problem(format!("{what}: the token does not verify: {e}"));
                return None;
            }
        };
        if claims["application_id"] != self.application_id.as_str() {
            self.problem(format!(
                "{what}: the token names application {}",
                claims["application_id"]
            ));
            return None;
        }
        for claim in ["iat", "jti"] {
            if claims.get(claim).is_none() {
                self.problem(format!("{what}: the token has no {claim}"));
            }
        }
        if !claims["iat"].is_i64() {
            self.problem(format!("{what}: iat is not a whole number of seconds"));
        }
        Some(claims)
    }
}

/// Vonage's answer to a token it does not accept.
fn unauthorised() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({
            "type": "https://developer.nexmo.com/api-errors#unauthorized",
            "title": "Unauthorized",
            "detail": "You did not provide correct credentials.",
            "instance": uuid::Uuid::new_v4().to_string(),
        })),
    )
        .into_response()
}

/// A fake Vonage on 127.0.0.1; stops when dropped.
pub struct FakeVonage {
    /// Its base URL, for `vonage_api_url`.
    pub url: String,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for FakeVonage {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeVonage {
    /// A fake of the Vonage application `application_id`, whose public key
    /// is the test key pair's ([`herald_channels::testing`]).
    pub async fn start(application_id: &str) -> FakeVonage {
        let key = DecodingKey::from_rsa_pem(herald_channels::testing::VONAGE_PUBLIC_KEY.as_bytes())
            .expect("the test public key parses");
        let shared = Arc::new(Shared {
            application_id: application_id.to_owned(),
            key,
            log: Mutex::new(Log::default()),
            refuse: Mutex::new(false),
        });
        let router = Router::new()
            .route("/v1/calls", get(list_calls))
            .fallback(unknown)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let url = format!("http://{}", listener.local_addr().expect("bound"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        FakeVonage { url, shared, task }
    }

    /// Every request herald made, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .requests
            .clone()
    }

    /// Every departure from the specification seen so far.
    pub fn problems(&self) -> Vec<String> {
        self.shared
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .problems
            .clone()
    }

    /// From now on, refuse (or again accept) every token, as Vonage does
    /// once the application's key is replaced.
    pub fn refuse_credentials(&self, refuse: bool) {
        *self.shared.refuse.lock().unwrap_or_else(|e| e.into_inner()) = refuse;
    }
}

async fn unknown(State(shared): State<Arc<Shared>>, uri: axum::http::Uri) -> StatusCode {
    shared.problem(format!("a request to {uri}, which Vonage does not have"));
    StatusCode::NOT_FOUND
}

/// `GET /v1/calls` (getCalls): the calls of the application, a page at a
/// time.
async fn list_calls(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let claims = shared.token("GET /v1/calls", &headers);
    let mut page_size = 10;
    for (name, value) in &query {
        match name.as_str() {
            "page_size" => match value.parse::<u32>() {
                Ok(n) if (1..=100).contains(&n) => page_size = n,
                _ => shared.problem(format!(
                    "GET /v1/calls: page_size {value:?} is not 1 to 100"
                )),
            },
            "record_index" | "order" | "status" | "date_start" | "date_end"
            | "conversation_uuid" => {}
            other => shared.problem(format!("GET /v1/calls: unknown parameter {other}")),
        }
    }
    shared.record(Recorded {
        method: "GET",
        path: "/v1/calls".into(),
        claims: claims.clone(),
        body: Value::Null,
    });
    if claims.is_none() {
        return unauthorised();
    }
    Json(json!({
        "count": 0,
        "page_size": page_size,
        "record_index": 0,
        "_links": {"self": {"href": format!("/calls?page_size={page_size}&record_index=0&order=asc")}},
        "_embedded": {"calls": []},
    }))
    .into_response()
}

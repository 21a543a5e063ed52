//! Makes the HTTP call of a flow's Webhook node and turns its outcome into
//! the event the flow steps on next.
//!
//! Any answer is the flow's to judge ([`Event::WebhookAnswered`], even a
//! 500); [`Event::WebhookFailed`] means there was no answer to judge. The
//! URL is the customer's, so internal addresses are refused exactly as for
//! callbacks (CONTRACT §5.5): literal ones here, names that resolve to them
//! by the client's resolver. Error strings end up in the session's events,
//! so they give the reason only: never the URL (it may carry a token) nor a
//! header's value.

use std::time::Duration;

use herald_core::secret::SecretUrl;
use herald_flow::{Event, WebhookRequest};
use reqwest::header::{HeaderName, HeaderValue, CONTENT_TYPE};

use crate::outbound::guard::{refused_by_resolver, GuardedClient};

/// The most of an answer that is read; a flow maps a few fields out of it.
pub const MAX_ANSWER: usize = 64 * 1024;

/// A ceiling for a client from [`http_client`]; each call sets its own,
/// shorter timeout (a flow allows at most 30 s).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Headers that decide how the request is framed or routed: herald sets
/// them, and one from a flow could desynchronise the connection.
const RESERVED_HEADERS: [&str; 9] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

/// The client to give [`call`]: unless `allow_private`, it refuses internal
/// addresses; it follows no redirects. Build it once and share it.
pub fn http_client(allow_private: bool, proxy: Option<&SecretUrl>) -> GuardedClient {
    GuardedClient::new(allow_private, CLIENT_TIMEOUT, proxy)
}

/// Makes `request` with `client` (from [`http_client`]) and returns the
/// flow's next event.
///
/// Redirects are not followed: a 3xx comes back as the answer, which the
/// flow treats as a failure (it is not 2xx). Following one would let a
/// public URL bounce the call to an internal address.
pub async fn call(client: &GuardedClient, request: &WebhookRequest) -> Event {
    match attempt(client, request).await {
        Ok((status, body)) => Event::WebhookAnswered { status, body },
        Err(error) => Event::WebhookFailed { error },
    }
}

async fn attempt(
    client: &GuardedClient,
    request: &WebhookRequest,
) -> Result<(u16, String), String> {
    let url = reqwest::Url::parse(&request.url).map_err(|e| format!("invalid URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("only http and https URLs can be called".into());
    }
    client.check(&url).await.map_err(|e| e.to_string())?;
    let method = reqwest::Method::from_bytes(request.method.as_bytes())
        .map_err(|_| format!("invalid method {:?}", request.method))?;
    let mut builder = client
        .client()
        .request(method, url)
        .timeout(request.timeout);
    let mut has_content_type = false;
    for (name, value) in &request.headers {
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("invalid header name {name:?}"))?;
        if RESERVED_HEADERS.contains(&header.as_str()) {
            return Err(format!("the header {header} is set by herald"));
        }
        // The value may hold a secret: name the header only.
        let value = HeaderValue::from_str(value)
            .map_err(|_| format!("invalid value of header {header}"))?;
        has_content_type |= header == CONTENT_TYPE;
        builder = builder.header(header, value);
    }
    if let Some(body) = &request.body {
        if !has_content_type {
            builder = builder.header(CONTENT_TYPE, "application/json");
        }
        builder = builder.body(body.clone());
    }
    let mut response = builder.send().await.map_err(|e| describe(&e))?;
    let status = response.status().as_u16();
    let too_large = || format!("the answer is larger than {} KiB", MAX_ANSWER / 1024);
    if response
        .content_length()
        .is_some_and(|len| len > MAX_ANSWER as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| describe(&e))? {
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The reason a call got no answer. reqwest's own message names the URL,
/// so it is never used whole.
fn describe(e: &reqwest::Error) -> String {
    if let Some(internal) = refused_by_resolver(e) {
        internal.to_string()
    } else if e.is_timeout() {
        "the endpoint did not answer in time".into()
    } else if e.is_connect() {
        "could not connect".into()
    } else if e.is_body() || e.is_decode() {
        "the answer was cut off".into()
    } else {
        "the request failed".into()
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::io::{Read, Write};
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    use axum::extract::Request;
    use axum::http::{HeaderMap, Method, StatusCode};
    use axum::response::IntoResponse;
    use axum::Router;

    use super::*;

    /// What a test endpoint was sent.
    #[derive(Debug, Clone)]
    struct Received {
        method: Method,
        path: String,
        headers: HeaderMap,
        body: String,
    }

    type Log = Arc<Mutex<Vec<Received>>>;

    /// An endpoint on 127.0.0.1 that records every request and answers
    /// each with `answer().await`.
    async fn endpoint<F, A, R>(answer: F) -> (SocketAddr, Log)
    where
        F: Fn() -> A + Clone + Send + Sync + 'static,
        A: Future<Output = R> + Send,
        R: IntoResponse + Send + 'static,
    {
        let log: Log = Arc::default();
        let recorded = log.clone();
        let app = Router::new().fallback(move |request: Request| {
            let (log, answer) = (recorded.clone(), answer.clone());
            async move {
                let (parts, body) = request.into_parts();
                let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
                log.lock().unwrap().push(Received {
                    method: parts.method,
                    path: parts.uri.to_string(),
                    headers: parts.headers,
                    body: String::from_utf8(body.to_vec()).unwrap(),
                });
                answer().await
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (addr, log)
    }

    fn request(method: &str, url: String) -> WebhookRequest {
        WebhookRequest {
            method: method.into(),
            url,
            headers: Vec::new(),
            body: None,
            timeout: Duration::from_secs(5),
        }
    }

    fn failure(event: Event) -> String {
        match event {
            Event::WebhookFailed { error } => error,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn sends_the_request_as_given_and_returns_the_answer() {
        let (addr, log) = endpoint(|| async {
            (
                StatusCode::CREATED,
                [("content-type", "application/json")],
                r#"{"order":{"status":"shipped"}}"#,
            )
        })
        .await;
        let mut req = request("PUT", format!("http://{addr}/orders/42?verbose=1"));
        req.headers = vec![
            ("Authorization".into(), "Bearer t0ken".into()),
            ("X-Trace".into(), "abc".into()),
        ];
        req.body = Some(r#"{"id":42}"#.into());
        let event = call(&http_client(true, None), &req).await;
        assert_eq!(
            event,
            Event::WebhookAnswered {
                status: 201,
                body: r#"{"order":{"status":"shipped"}}"#.into()
            }
        );
        let received = log.lock().unwrap().clone();
        assert_eq!(received.len(), 1);
        let got = &received[0];
        assert_eq!(got.method, Method::PUT);
        assert_eq!(got.path, "/orders/42?verbose=1");
        assert_eq!(got.headers["authorization"], "Bearer t0ken");
        assert_eq!(got.headers["x-trace"], "abc");
        assert_eq!(got.headers["content-type"], "application/json");
        assert_eq!(got.body, r#"{"id":42}"#);
    }

    #[tokio::test]
    async fn a_content_type_given_is_kept_and_none_is_added_without_a_body() {
        let (addr, log) = endpoint(|| async { "ok" }).await;
        let mut req = request("POST", format!("http://{addr}/"));
        req.headers = vec![("Content-Type".into(), "text/plain".into())];
        req.body = Some("hello".into());
        call(&http_client(true, None), &req).await;
        call(
            &http_client(true, None),
            &request("GET", format!("http://{addr}/")),
        )
        .await;
        let received = log.lock().unwrap().clone();
        assert_eq!(
            received[0]
                .headers
                .get_all("content-type")
                .iter()
                .collect::<Vec<_>>(),
            ["text/plain"]
        );
        assert_eq!(received[0].body, "hello");
        assert_eq!(received[1].method, Method::GET);
        assert!(received[1].headers.get("content-type").is_none());
        assert_eq!(received[1].body, "");
    }

    #[tokio::test]
    async fn an_error_status_is_an_answer_for_the_flow_to_judge() {
        let (addr, _) = endpoint(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }).await;
        let event = call(
            &http_client(true, None),
            &request("POST", format!("http://{addr}/")),
        )
        .await;
        assert_eq!(
            event,
            Event::WebhookAnswered {
                status: 500,
                body: "boom".into()
            }
        );
    }

    #[tokio::test]
    async fn a_slow_endpoint_fails_after_the_timeout() {
        let (addr, _) = endpoint(|| async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            "too late"
        })
        .await;
        let mut req = request("GET", format!("http://{addr}/"));
        req.timeout = Duration::from_millis(300);
        let started = Instant::now();
        let error = failure(call(&http_client(true, None), &req).await);
        assert_eq!(error, "the endpoint did not answer in time");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn answers_up_to_64_kib_are_read_and_longer_ones_fail() {
        let (exact, _) = endpoint(|| async { "x".repeat(MAX_ANSWER) }).await;
        let event = call(
            &http_client(true, None),
            &request("GET", format!("http://{exact}/")),
        )
        .await;
        assert!(
            matches!(&event, Event::WebhookAnswered { status: 200, body } if body.len() == MAX_ANSWER),
            "{event:?}"
        );
        let (over, _) = endpoint(|| async { "x".repeat(MAX_ANSWER + 1) }).await;
        let error = failure(
            call(
                &http_client(true, None),
                &request("GET", format!("http://{over}/")),
            )
            .await,
        );
        assert_eq!(error, "the answer is larger than 64 KiB");
    }

    /// An endpoint that answers in chunks with no length given: it keeps
    /// sending, so only counting stops the read.
    fn endless_chunked_endpoint() -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut buf = [0; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
            let chunk = format!("{:x}\r\n{}\r\n", 8192, "y".repeat(8192));
            // Bounded: 1 MiB at most, then the connection closes.
            for _ in 0..128 {
                if stream.write_all(chunk.as_bytes()).is_err() {
                    break;
                }
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_long_answer_without_a_length_fails_too() {
        let addr = endless_chunked_endpoint();
        let error = failure(
            call(
                &http_client(true, None),
                &request("GET", format!("http://{addr}/")),
            )
            .await,
        );
        assert_eq!(error, "the answer is larger than 64 KiB");
    }

    #[tokio::test]
    async fn internal_addresses_are_refused_without_allow_private() {
        let (addr, log) = endpoint(|| async { "should not be reached" }).await;
        let port = addr.port();
        let client = http_client(false, None);
        let error = failure(
            call(
                &client,
                &request("POST", format!("http://127.0.0.1:{port}/")),
            )
            .await,
        );
        assert_eq!(error, "refused: 127.0.0.1 is an internal address");
        let error = failure(call(&client, &request("POST", format!("http://[::1]:{port}/"))).await);
        assert_eq!(error, "refused: ::1 is an internal address");
        // Another spelling of 127.0.0.1, which the URL parser normalises.
        let error = failure(
            call(
                &client,
                &request("POST", format!("http://2130706433:{port}/")),
            )
            .await,
        );
        assert_eq!(error, "refused: 127.0.0.1 is an internal address");
        // A name is refused by what it resolves to.
        let error = failure(
            call(
                &client,
                &request("POST", format!("http://localhost:{port}/")),
            )
            .await,
        );
        assert!(
            error == "refused: 127.0.0.1 is an internal address"
                || error == "refused: ::1 is an internal address",
            "{error}"
        );
        assert!(log.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn redirects_are_answers_not_followed() {
        let (target, target_log) = endpoint(|| async { "should not be reached" }).await;
        let location = format!("http://127.0.0.1:{}/inside", target.port());
        let (addr, _) = endpoint(move || {
            let location = location.clone();
            async move { (StatusCode::FOUND, [("location", location)], "") }
        })
        .await;
        let event = call(
            &http_client(true, None),
            &request("GET", format!("http://{addr}/")),
        )
        .await;
        assert_eq!(
            event,
            Event::WebhookAnswered {
                status: 302,
                body: String::new()
            }
        );
        assert!(target_log.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_closed_port_is_no_answer() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let error = failure(
            call(
                &http_client(true, None),
                &request("GET", format!("http://127.0.0.1:{port}/")),
            )
            .await,
        );
        assert_eq!(error, "could not connect");
    }

    #[tokio::test]
    async fn bad_requests_fail_without_a_call() {
        let (addr, log) = endpoint(|| async { "should not be reached" }).await;
        let client = http_client(true, None);
        let url = format!("http://{addr}/");
        let error = failure(call(&client, &request("POST", "not a url".into())).await);
        assert!(error.starts_with("invalid URL"), "{error}");
        let error = failure(call(&client, &request("POST", "file:///etc/passwd".into())).await);
        assert_eq!(error, "only http and https URLs can be called");
        let error = failure(call(&client, &request("GE T", url.clone())).await);
        assert_eq!(error, r#"invalid method "GE T""#);
        for (name, value, expected) in [
            ("X-Ok", "a\r\nX-Injected: 1", "invalid value of header x-ok"),
            ("Bad Name", "v", r#"invalid header name "Bad Name""#),
            (
                "Content-Length",
                "5",
                "the header content-length is set by herald",
            ),
            ("Host", "example.com", "the header host is set by herald"),
        ] {
            let mut req = request("POST", url.clone());
            req.headers = vec![(name.into(), value.into())];
            assert_eq!(failure(call(&client, &req).await), expected);
        }
        assert!(log.lock().unwrap().is_empty());
    }
}

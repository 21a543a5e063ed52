//! The connection itself: clients too slow to send their request are cut
//! off, a flood of them leaves room for health checks, and even a request
//! the HTTP parser refuses gets the JSON error of CONTRACT §1.2.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

/// Sends `request` on a new connection and reads until the server closes
/// it (or `patience` runs out); the bytes it answered.
async fn exchange(addr: &str, request: &[u8], patience: Duration) -> Option<Vec<u8>> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(patience, stream.read_to_end(&mut answer))
        .await
        .ok()
        .map(|_| answer)
}

/// The status and JSON body of a raw HTTP answer.
fn parse(answer: &[u8]) -> (u16, Value) {
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    let status = head[9..12].parse().unwrap();
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    (status, body)
}

fn addr(app: &TestApp) -> String {
    app.server().local_addr().to_string()
}

#[tokio::test]
async fn a_client_that_stops_part_way_through_its_headers_is_cut_off() {
    let app = TestApp::spawn_with(|c| c.header_timeout = Duration::from_millis(500)).await;
    let answer = exchange(
        &addr(&app),
        b"POST /telephony/make-call HTTP/1.1\r\nHost: herald\r\nX-Vgai-",
        Duration::from_secs(10),
    )
    .await;
    assert!(
        answer.is_some(),
        "the connection was still open 10 s after the client stopped"
    );
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_gets_408() {
    let app = TestApp::spawn_with(|c| c.body_timeout = Duration::from_millis(500)).await;
    let answer = exchange(
        &addr(&app),
        b"POST /telephony/make-call HTTP/1.1\r\nHost: herald\r\nContent-Length: 100\r\n\r\n{\"to\":",
        Duration::from_secs(10),
    )
    .await
    .expect("the server answered and closed");
    let (status, body) = parse(&answer);
    assert_eq!(status, 408);
    assert_eq!(body["message"], "The request body did not arrive in time");
}

/// With fewer descriptors than clients, a flood of connections that send
/// part of their headers and stop must neither take the descriptors a
/// health check needs nor keep it waiting for longer than it takes to cut
/// the flood off.
#[tokio::test]
async fn health_checks_get_through_a_flood_of_slow_clients() {
    let dir = tempfile::tempdir().unwrap();
    let database = crate::BACKEND.fresh_database(dir.path()).await;
    let server = ServeProcess::start_with(ServeOptions {
        args: &[
            "--database",
            &database,
            "--max-connections",
            "64",
            "--header-timeout-secs",
            "1",
        ],
        open_files: Some(200),
        ..ServeOptions::default()
    })
    .await;
    let address = server.base.trim_start_matches("http://").to_owned();
    let mut flood = Vec::new();
    for _ in 0..260 {
        if let Ok(mut stream) = TcpStream::connect(&address).await {
            let _ = stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: her")
                .await;
            flood.push(stream);
        }
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let health = client
        .get(format!("{}/healthz", server.base))
        .send()
        .await
        .expect("a health check is answered during the flood");
    assert_eq!(health.status(), 200);
    drop(flood);
}

#[tokio::test]
async fn connections_past_the_cap_answer_health_checks_only() {
    let app = TestApp::spawn_with(|c| {
        c.max_connections = 2;
        c.header_timeout = Duration::from_secs(30);
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(addr(&app)).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\n")
            .await
            .unwrap();
        held.push(stream);
    }
    // The two ordinary places are taken (the listener has accepted them by
    // the time a later connection is served).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let health = exchange(
        &addr(&app),
        b"GET /healthz HTTP/1.1\r\nHost: herald\r\n\r\n",
        Duration::from_secs(10),
    )
    .await
    .expect("the reserve answers and closes");
    assert!(
        String::from_utf8_lossy(&health).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&health)
    );
    let other = exchange(
        &addr(&app),
        b"GET /agents HTTP/1.1\r\nHost: herald\r\n\r\n",
        Duration::from_secs(10),
    )
    .await
    .expect("the reserve answers and closes");
    let (status, body) = parse(&other);
    assert_eq!(status, 503);
    assert_eq!(body["message"], "Too many connections, try again shortly");
    drop(held);
}

/// What hyper refuses before the router sees it still gets the error body
/// of CONTRACT §1.2; so do paths that are not UTF-8 once decoded.
#[tokio::test]
async fn requests_the_parser_refuses_get_json_errors() {
    let app = TestApp::spawn().await;
    let huge = format!(
        "GET /healthz HTTP/1.1\r\nHost: herald\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1024 * 1024)
    );
    let many: String = (0..120).map(|i| format!("X-H{i}: {i}\r\n")).collect();
    let many = format!("GET /healthz HTTP/1.1\r\nHost: herald\r\n{many}\r\n");
    let cases: [(&str, &[u8], u16); 4] = [
        ("a 1 MiB header", huge.as_bytes(), 431),
        ("120 headers", many.as_bytes(), 431),
        (
            "a NUL in a header",
            b"GET /healthz HTTP/1.1\r\nHost: herald\r\nX-A: a\0b\r\n\r\n",
            400,
        ),
        (
            "two different lengths",
            b"POST /agents HTTP/1.1\r\nHost: herald\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
            400,
        ),
    ];
    for (what, request, expected) in cases {
        let answer = exchange(&addr(&app), request, Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("{what}: no answer"));
        let (status, body) = parse(&answer);
        assert_eq!(status, expected, "{what}");
        assert_eq!(body["status"], expected, "{what}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}"
        );
    }
    let key = app.new_key("utf8").await;
    for path in [
        "/agents/%FF%FE",
        "/sessions/%FF%FE",
        "/sessions/%FF%FE/transcript",
        "/inbound/%FF%FE",
    ] {
        let response = if path.starts_with("/inbound") {
            app.client
                .post(app.url(path))
                .body("{}")
                .send()
                .await
                .unwrap()
        } else {
            app.get(path, &key).await
        };
        assert_eq!(response.status(), 400, "{path}");
        let body: Value = response.json().await.expect("a JSON body");
        assert_eq!(body["status"], 400, "{path}");
    }
}

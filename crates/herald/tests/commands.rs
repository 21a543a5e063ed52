//! The commands a user runs against a server, as a user runs them: a real
//! `herald serve` on a SQLite file, a key from `herald keys create`, an
//! agent created and published over HTTP, and `herald chat` (a child
//! process whose stdin the test types into and whose stdout it reads) or
//! `herald campaign`.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};

const HERALD: &str = env!("CARGO_BIN_EXE_herald");

/// How long any one thing may take before the test gives up.
const PATIENCE: Duration = Duration::from_secs(20);

/// `herald serve` on a fresh SQLite file and a free loopback port, killed
/// when dropped.
struct Server {
    base: String,
    key: String,
    child: Child,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let database = format!("sqlite://{}", dir.path().join("herald.db").display());
        let output = Command::new(HERALD)
            .args([
                "keys",
                "create",
                "--account",
                "chat",
                "--database",
                &database,
            ])
            .output()
            .unwrap();
        assert!(output.status.success(), "herald keys create: {output:?}");
        let key = String::from_utf8(output.stdout).unwrap().trim().to_owned();

        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(HERALD)
            .args([
                "serve",
                "--database",
                &database,
                "--simulator-delay-ms",
                "5",
            ])
            .env("HERALD_LISTEN", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("herald serve starts");
        let server = Server {
            base: format!("http://127.0.0.1:{port}"),
            key,
            child,
            client: reqwest::Client::new(),
            _dir: dir,
        };
        for _ in 0..400 {
            let health = server.client.get(format!("{}/healthz", server.base)).send();
            if health.await.is_ok() {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("herald serve did not answer /healthz");
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .header("X-Vgai-Key", &self.key)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    async fn get(&self, path: &str) -> Value {
        self.client
            .get(format!("{}{path}", self.base))
            .header("X-Vgai-Key", &self.key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Creates an agent running `flow`, published unless told otherwise.
    async fn agent(&self, channel: &str, number: &str, flow: Value, publish: bool) -> String {
        let (status, body) = self
            .post(
                "/agents",
                json!({"name": "Chat test", "type": channel, "number": number, "flow": flow}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let agent = body["agent_id"].as_str().unwrap().to_owned();
        if publish {
            let (status, body) = self
                .post(&format!("/agents/{agent}/publish"), json!({}))
                .await;
            assert_eq!(status, 200, "{body}");
        }
        agent
    }

    /// `herald chat` against this server, with stdin and stdout piped.
    fn chat(&self, args: &[&str]) -> Chat {
        let mut child = Command::new(HERALD)
            .arg("chat")
            .args(args)
            .args(["--server", &self.base, "--key", &self.key])
            .env_remove("HERALD_SERVER")
            .env_remove("HERALD_KEY")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("herald chat starts");
        // Read on a thread, so that the test can wait for a line with a
        // deadline.
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Chat {
            child: Some(child),
            lines,
            seen: Vec::new(),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `herald chat`.
struct Chat {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    /// Every line printed so far.
    seen: Vec<String>,
}

impl Chat {
    /// Waits until chat prints `expected`.
    fn wait_for(&mut self, expected: &str) {
        let deadline = std::time::Instant::now() + PATIENCE;
        while !self.seen.iter().any(|l| l == expected) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!("herald chat never printed {expected:?}: {:#?}", self.seen),
            }
        }
    }

    /// Types a line.
    fn type_line(&mut self, line: &str) {
        let child = self.child.as_mut().unwrap();
        writeln!(child.stdin.as_mut().unwrap(), "{line}").unwrap();
    }

    /// Closes stdin, as Ctrl-D does.
    fn close_stdin(&mut self) {
        drop(self.child.as_mut().unwrap().stdin.take());
    }

    /// Waits for chat to exit; returns its exit and everything it printed.
    fn finish(&mut self) -> (std::process::ExitStatus, Vec<String>, String) {
        let mut child = self.child.take().unwrap();
        let deadline = std::time::Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("herald chat did not exit: {:#?}", self.seen);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader thread ends with stdout; collect what it still holds.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        (status, self.seen.clone(), stderr)
    }
}

impl Drop for Chat {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn question_flow() -> Value {
    json!({
        "format": 1,
        "start": "ask",
        "parameters": [{"name": "NAME", "default": "there"}],
        "nodes": [
            {"id": "ask", "type": "collect_input", "prompt": "Hi $NAME, can you come on Friday?",
             "entity": "yes_no", "parameter": "ANSWER",
             "success": "check", "invalid": "end", "no_input": "end"},
            {"id": "check", "type": "conditions",
             "branches": [{"rules": [{"parameter": "ANSWER", "op": "eq", "value": "yes"}], "next": "great"}],
             "default": "sorry"},
            {"id": "great", "type": "send_message", "text": "Great, see you Friday.", "next": "end"},
            {"id": "sorry", "type": "send_message", "text": "Sorry to hear that.", "next": "end"},
            {"id": "end", "type": "end"}
        ]
    })
}

#[tokio::test]
async fn chat_prints_the_conversation_and_sends_what_is_typed() {
    let server = Server::start().await;
    let agent = server
        .agent("sms", "447700900001", question_flow(), true)
        .await;

    let mut chat = server.chat(&[&agent, "--param", "NAME=Ada"]);
    chat.wait_for("agent> Hi Ada, can you come on Friday?");
    chat.type_line("yes please");
    // With stdin closed, chat goes on printing until the session ends.
    chat.close_stdin();
    let (status, lines, stderr) = chat.finish();

    assert!(status.success(), "{status}: {stderr}");
    assert!(
        lines[0].starts_with("  · session ")
            && lines[0].ends_with(": Chat test (sms agent 447700900001) with you (447700900100)"),
        "{}",
        lines[0]
    );
    assert_eq!(
        lines[1..],
        [
            "  · node ask",
            "agent> Hi Ada, can you come on Friday?",
            "you> yes please",
            "  · LAST_INPUT = yes please",
            "  · ANSWER = yes",
            "  · node check",
            "  · node great",
            "agent> Great, see you Friday.",
            "  · node end",
            "session ended: completed",
        ]
    );

    // The session chat started is the account's, to the default person.
    let id = lines[0]["  · session ".len()..].split(':').next().unwrap();
    let session = server.get(&format!("/sessions/{id}")).await;
    assert_eq!(session["to"], "447700900100");
    assert_eq!(session["agent_id"], agent.as_str());
    assert_eq!(
        session["session_parameters"],
        json!([{"name": "NAME", "value": "Ada"}])
    );
}

#[tokio::test]
async fn chat_keys_digits_and_says_words_on_a_call() {
    let server = Server::start().await;
    let flow = json!({
        "format": 1,
        "start": "first",
        "nodes": [
            {"id": "first", "type": "collect_input", "prompt": "Key a number.",
             "entity": "number", "parameter": "KEYED",
             "success": "second", "invalid": "end", "no_input": "end"},
            {"id": "second", "type": "collect_input", "prompt": "Now say one.",
             "entity": "number", "parameter": "SAID",
             "success": "bye", "invalid": "end", "no_input": "end"},
            {"id": "bye", "type": "speak", "text": "$KEYED then $SAID. Goodbye.", "next": "end"},
            {"id": "end", "type": "end"}
        ]
    });
    let agent = server.agent("voice", "447700900002", flow, true).await;

    let mut chat = server.chat(&[&agent, "--to", "447700900200"]);
    chat.wait_for("agent> Key a number.");
    chat.type_line("42");
    chat.wait_for("agent> Now say one.");
    chat.type_line("seven");
    let (status, lines, stderr) = chat.finish();

    assert!(status.success(), "{status}: {stderr}");
    assert!(
        lines.contains(&"agent> 42 then 7. Goodbye.".to_owned()),
        "{lines:#?}"
    );
    assert_eq!(lines.last().unwrap(), "session ended: completed");

    let id = lines[0]["  · session ".len()..].split(':').next().unwrap();
    let transcript = server.get(&format!("/sessions/{id}/transcript")).await;
    let inputs: Vec<&str> = transcript["transcript"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["direction"] == "inbound")
        .map(|e| e["input"].as_str().unwrap())
        .collect();
    assert_eq!(inputs, ["dtmf", "speech"]);
}

/// Runs `herald chat` to its end with nothing typed.
fn chat_output(server: &Server, args: &[&str]) -> Output {
    Command::new(HERALD)
        .arg("chat")
        .args(args)
        .args(["--server", &server.base, "--key", &server.key])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[tokio::test]
async fn chat_shows_the_servers_refusal_and_fails() {
    let server = Server::start().await;

    let unknown = "0123456789abcdef01234567";
    let output = chat_output(&server, &[unknown]);
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains(&format!("Agent {unknown} was not found")),
        "{stderr}"
    );

    // Known but never published: the trigger's own message.
    let draft = server
        .agent("sms", "447700900003", question_flow(), false)
        .await;
    let output = chat_output(&server, &[&draft]);
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains(&format!(
            "published version for Agent {draft} was not found"
        )),
        "{stderr}"
    );

    // A WhatsApp agent needs its template and a status_url, said before
    // anything is triggered.
    let flow = json!({"format": 1, "start": "end", "nodes": [{"id": "end", "type": "end"}]});
    let whatsapp = server.agent("whatsapp", "447700900004", flow, true).await;
    let output = chat_output(&server, &[&whatsapp]);
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("--template NAMESPACE/NAME/LOCALE"),
        "{stderr}"
    );
    assert!(stderr.contains("--status-url"), "{stderr}");
    let sessions = server.get("/sessions").await;
    assert_eq!(sessions["sessions"], json!([]));
}

/// `herald campaign`: a campaign made from a CSV file (its bad rows named
/// by their line in the file), started, and watched to its end, as text
/// and as JSON lines.
#[tokio::test]
async fn campaign_creates_from_a_csv_file_starts_and_watches() {
    let server = Server::start().await;
    let flow = json!({"format": 1, "start": "hi", "parameters": [{"name": "NAME"}],
        "nodes": [{"id": "hi", "type": "send_message", "text": "Hi $NAME", "next": "end"},
                  {"id": "end", "type": "end"}]});
    let agent = server.agent("sms", "447700900555", flow, true).await;
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("people.csv");
    std::fs::write(
        &csv,
        "to,NAME\n447700900601,Ada\n447700900602,\"Grace\nHopper\"\nnonsense,X\n447700900603,Alan\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        Command::new(HERALD)
            .arg("campaign")
            .args(args)
            .args(["--server", &server.base, "--key", &server.key])
            .env_remove("HERALD_SERVER")
            .env_remove("HERALD_KEY")
            .output()
            .unwrap()
    };
    let created = run(&[
        "create",
        "--agent",
        &agent,
        "--name",
        "March",
        "--csv",
        csv.to_str().unwrap(),
        "--per-second",
        "10",
        "--days",
        "mon,tue,wed,thu,fri,sat,sun",
        "--hours",
        "00:00-24:00",
    ]);
    assert!(created.status.success(), "{created:?}");
    let id = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    let said = String::from_utf8(created.stderr).unwrap();
    assert!(
        said.contains("people.csv:5: to: bad number \"nonsense\""),
        "{said}"
    );
    assert!(said.contains("3 recipients added, 1 refused"), "{said}");
    let campaign = server.get(&format!("/campaigns/{id}")).await;
    assert_eq!(campaign["settings"]["pace"]["per_second"], 10);
    assert_eq!(campaign["settings"]["window"]["end"], "24:00");

    let started = run(&["start", &id]);
    assert!(started.status.success(), "{started:?}");
    assert_eq!(
        String::from_utf8_lossy(&started.stdout).trim(),
        format!("{id}: running")
    );
    let watched = run(&["watch", &id]);
    assert!(watched.status.success(), "{watched:?}");
    let text = String::from_utf8(watched.stdout).unwrap();
    let last = text.lines().last().unwrap();
    assert!(
        last.starts_with("[##############################] 3/3 completed"),
        "{last}"
    );
    assert!(last.contains("outcomes: completed 3"), "{last}");
    let json = run(&["watch", &id, "--json"]);
    let line: Value = serde_json::from_slice(json.stdout.trim_ascii()).unwrap();
    assert_eq!(line["state"], "completed");
    assert_eq!(line["done"], 3);
    assert_eq!(line["counts"]["completed"], 3);

    let again = run(&["start", &id]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("409: Campaign"),
        "{again:?}"
    );
}

//! SMS over SMPP 3.4 (CHANNELS §7, CONTRACT §10–§11) against an SMSC herald
//! did not write: the npm package `smpp` (pinned in `tests/smsc`), scripted
//! by `tests/smsc/smsc.js` on a free loopback port, which logs every PDU it
//! receives. The SMS example agent end to end over the bind; GSM 7-bit and
//! UCS-2; long messages in parts and in `message_payload`; a receipt for
//! every `stat`, by TLVs and by text (the id in decimal there, in hex in
//! `submit_sm_resp`); throttling then success; a person's message starting
//! a session; a bind dropped and made again, and unbound at shutdown; a
//! malformed PDU; a wrong password, which reaches no log line.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

const SYSTEM_ID: &str = "herald";
const PASSWORD: &str = "pw-7Kq2";

/// The `node_modules` holding the pinned `smpp`: `HERALD_TEST_NODE_MODULES`
/// (which `.ci/run` sets), else `target/test-node/node_modules`, installed
/// there from `tests/smsc/package-lock.json` when it is missing.
fn node_modules() -> PathBuf {
    static MODULES: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    MODULES
        .get_or_init(|| {
            if let Ok(path) = std::env::var("HERALD_TEST_NODE_MODULES") {
                let path = PathBuf::from(path);
                assert!(
                    path.join("smpp").is_dir(),
                    "HERALD_TEST_NODE_MODULES={} holds no smpp package: install it with \
                     `npm ci` from crates/herald/tests/smsc (see .ci/run)",
                    path.display()
                );
                return path;
            }
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-node");
            let modules = root.join("node_modules");
            if !modules.join("smpp").is_dir() {
                let smsc = smsc_dir();
                std::fs::create_dir_all(&root).unwrap();
                for file in ["package.json", "package-lock.json"] {
                    std::fs::copy(smsc.join(file), root.join(file)).unwrap();
                }
                let installed = Command::new("npm")
                    .args(["ci", "--ignore-scripts", "--no-audit", "--no-fund", "--prefix"])
                    .arg(&root)
                    .status()
                    .is_ok_and(|s| s.success());
                assert!(
                    installed,
                    "could not install the npm package smpp@0.5.1 into {}: the SMPP tests need \
                     Node.js and it (or set HERALD_TEST_NODE_MODULES to a node_modules that has it)",
                    root.display()
                );
            }
            modules
        })
        .clone()
}

fn smsc_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/smsc")
}

/// The SMSC, running: its port, what it logged, and its stdin.
pub(crate) struct Smsc {
    port: u16,
    child: Child,
    stdin: Mutex<ChildStdin>,
    log: Arc<Mutex<Vec<Value>>>,
}

impl Drop for Smsc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Smsc {
    fn start() -> Smsc {
        let mut child = Command::new("node")
            .arg(smsc_dir().join("smsc.js"))
            .env("NODE_PATH", node_modules())
            .env("SMSC_SYSTEM_ID", SYSTEM_ID)
            .env("SMSC_PASSWORD", PASSWORD)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("node runs (the SMPP tests need Node.js)");
        let stdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        assert_eq!(first["event"], "listening", "{first}");
        let port = first["port"].as_u64().unwrap() as u16;
        let log = Arc::new(Mutex::new(Vec::new()));
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Ok(value) = serde_json::from_str::<Value>(&line) {
                    kept.lock().unwrap().push(value);
                }
            }
        });
        Smsc {
            port,
            child,
            stdin: Mutex::new(stdin),
            log,
        }
    }

    /// Tells the SMSC `command` and waits until it has done it.
    pub(crate) async fn tell(&self, command: Value) {
        let done = |e: &Value| e["event"] == "done";
        let before = self.events().iter().filter(|e| done(e)).count();
        {
            let mut stdin = self.stdin.lock().unwrap();
            writeln!(stdin, "{command}").unwrap();
            stdin.flush().unwrap();
        }
        self.wait_for(before + 1, done).await;
    }

    pub(crate) fn events(&self) -> Vec<Value> {
        self.log.lock().unwrap().clone()
    }

    /// The PDUs of `command` herald sent.
    fn pdus(&self, command: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["event"] == "pdu" && e["command"] == command)
            .collect()
    }

    /// Waits until `n` events match `matches`; them.
    pub(crate) async fn wait_for(&self, n: usize, matches: impl Fn(&Value) -> bool) -> Vec<Value> {
        for _ in 0..400 {
            let found: Vec<Value> = self.events().into_iter().filter(&matches).collect();
            if found.len() >= n {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the SMSC did not log {n} such events: {:#?}", self.events());
    }

    async fn wait_for_pdus(&self, command: &str, n: usize) -> Vec<Value> {
        self.wait_for(n, |e| e["event"] == "pdu" && e["command"] == command)
            .await
    }
}

/// A server with an account, an SMPP connection to the SMSC and a
/// published SMS agent on it.
pub(crate) struct OnSmpp {
    pub(crate) app: TestApp,
    pub(crate) smsc: Smsc,
    key: String,
    agent: String,
    number: String,
    connection: String,
    receiver: TestReceiver,
}

/// A flow that sends the trigger's `TEXT`.
fn text_flow() -> Value {
    json!({"format": 1, "start": "say", "parameters": [{"name": "TEXT"}], "nodes": [
        {"id": "say", "type": "send_message", "text": "$TEXT", "next": "end"},
        {"id": "end", "type": "end"}
    ]})
}

impl OnSmpp {
    async fn start(agent: Value, settings: Value, password: &str) -> OnSmpp {
        let smsc = Smsc::start();
        let app = TestApp::spawn_with(|c| {
            talk_to(c, "http://127.0.0.1:9");
            c.default_rate = 100;
        })
        .await;
        let key = app.new_key("acme").await;
        let mut all = json!({"host": "127.0.0.1", "port": smsc.port, "window": 4});
        for (k, v) in settings.as_object().unwrap() {
            all[k] = v.clone();
        }
        let response = app
            .post(
                "/connections",
                &key,
                json!({"name": "SMSC", "provider": "smpp",
                       "credentials": {"system_id": SYSTEM_ID, "password": password},
                       "settings": all}),
            )
            .await;
        let status = response.status();
        let connection: Value = response.json().await.unwrap();
        assert_eq!(status, 201, "{connection}");
        let connection = connection["connection_id"].as_str().unwrap().to_owned();
        let number = unique_number();
        let mut agent = agent;
        agent["number"] = json!(number);
        agent["connection_id"] = json!(connection);
        let agent = app.publish_agent(&key, agent).await;
        OnSmpp {
            app,
            smsc,
            key,
            agent,
            number,
            connection,
            receiver: TestReceiver::start().await,
        }
    }

    pub(crate) async fn texting(settings: Value) -> OnSmpp {
        let agent = json!({"name": "a", "type": "sms", "flow": text_flow()});
        OnSmpp::start(agent, settings, PASSWORD).await
    }

    /// Triggers a session to `to` with `parameters`; its id.
    async fn trigger(&self, to: &str, parameters: Value) -> String {
        let response = self
            .app
            .post(
                "/messaging/conversation",
                &self.key,
                json!({"agent_id": self.agent, "to": to, "channel": "sms",
                       "status_url": self.receiver.url, "session_parameters": parameters}),
            )
            .await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 200, "{body}");
        body["session_id"].as_str().unwrap().to_owned()
    }

    pub(crate) async fn text(&self, to: &str, text: &str) -> String {
        self.trigger(to, json!([{"name": "TEXT", "value": text}]))
            .await
    }

    async fn session(&self, id: &str) -> Value {
        self.app
            .get(&format!("/sessions/{id}"), &self.key)
            .await
            .json()
            .await
            .unwrap()
    }

    /// The statuses the session recorded once `n` have come.
    pub(crate) async fn statuses(&self, id: &str, n: usize) -> Vec<String> {
        for _ in 0..400 {
            let got = events_of(&self.session(id).await, "message_status", "status");
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "session {id} did not record {n} statuses: {}",
            self.session(id).await
        );
    }

    /// The submit_sm PDUs to `to`.
    pub(crate) fn submits_to(&self, to: &str) -> Vec<Value> {
        self.smsc
            .pdus("submit_sm")
            .into_iter()
            .filter(|p| p["destination_addr"] == to)
            .collect()
    }
}

fn events_of(session: &Value, kind: &str, field: &str) -> Vec<String> {
    session["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == kind)
        .map(|e| e[field].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The text of a submit_sm as the SMSC read it.
fn message_of(pdu: &Value) -> String {
    pdu["short_message"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

const REMINDER: &str = "Hi Ada, this is a reminder of your appointment on Tuesday 3 March at \
    10:30. Reply YES to confirm, CHANGE to move it, or CANCEL to cancel.";

#[tokio::test]
async fn smpp_the_sms_example_agent_talks_over_the_bind() {
    let agent: Value = serde_json::from_str(include_str!(
        "../../../../examples/agents/appointment-reminder.json"
    ))
    .unwrap();
    let on = OnSmpp::start(agent, json!({}), PASSWORD).await;
    let person = unique_number();
    let id = on
        .trigger(
            &person,
            json!([
                {"name": "NAME", "value": "Ada"},
                {"name": "APPOINTMENT_DATE", "value": "Tuesday 3 March"},
                {"name": "APPOINTMENT_TIME", "value": "10:30"}
            ]),
        )
        .await;
    let first = on.smsc.wait_for_pdus("submit_sm", 1).await;
    let reminder = message_of(&first[0]);
    assert!(reminder.starts_with("Hi Ada"), "{reminder}");
    // The person answers from their phone: a mobile-originated message.
    on.smsc
        .wait_for(1, |e| e["event"] == "receipt_answered")
        .await;
    on.smsc
        .tell(json!({"cmd": "mo", "from": person, "to": on.number,
                        "text": "Yes, I'll be there"}))
        .await;
    let ended = on.app.ended_session(&on.key, &id).await;
    assert_eq!(ended["outcome"], "completed", "{ended}");
    let submits = on.smsc.wait_for_pdus("submit_sm", 2).await;
    assert_eq!(
        message_of(&submits[1]),
        "Thank you, Ada. See you on Tuesday 3 March at 10:30."
    );
    for pdu in &submits {
        assert_eq!(pdu["destination_addr"], person.as_str());
        assert_eq!(pdu["source_addr"], on.number.as_str());
        assert_eq!(pdu["registered_delivery"], 1);
    }
    // The person's message was answered once it was kept.
    let answered = on.smsc.wait_for(1, |e| e["event"] == "mo_answered").await;
    assert_eq!(answered[0]["command_status"], 0);
    // Each message's receipt reached the business's status_url.
    let callbacks = on.receiver.wait_for(2).await;
    let statuses: Vec<&str> = callbacks
        .iter()
        .map(|c| c.body["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["delivered", "delivered"], "{statuses:?}");
    assert_eq!(on.statuses(&id, 2).await, ["delivered", "delivered"]);
    let _ = REMINDER;
}

#[tokio::test]
async fn smpp_gsm_7_bit_where_the_text_fits_it_and_ucs_2_otherwise() {
    let on = OnSmpp::texting(json!({})).await;
    for (text, data_coding) in [
        ("Price: 5€ [ok] ~ {Ærø} ^|\\ @home", 0),
        ("Привет, Ada 😀", 8),
    ] {
        let to = unique_number();
        let id = on.text(&to, text).await;
        assert_eq!(on.statuses(&id, 1).await, ["delivered"]);
        let submits = on.submits_to(&to);
        assert_eq!(submits.len(), 1);
        let pdu = &submits[0];
        assert_eq!(pdu["data_coding"], data_coding, "{text}: {pdu}");
        assert_eq!(message_of(pdu), text);
        assert_eq!(pdu["esm_class"], 0);
        assert_eq!(pdu["registered_delivery"], 1);
        // To an international number, from the agent's.
        assert_eq!(
            (&pdu["dest_addr_ton"], &pdu["dest_addr_npi"]),
            (&json!(1), &json!(1))
        );
        assert_eq!(
            (&pdu["source_addr_ton"], &pdu["source_addr_npi"]),
            (&json!(1), &json!(1))
        );
        assert_eq!(pdu["source_addr"], on.number.as_str());
    }
}

#[tokio::test]
async fn smpp_a_long_message_goes_in_three_parts_or_in_one_payload() {
    let text: String = (0..40).map(|i| format!("word{i:03} ")).collect::<String>() + "end.";
    assert!(text.chars().count() > 306 && text.chars().count() <= 459);
    let on = OnSmpp::texting(json!({})).await;
    let to = unique_number();
    let id = on.text(&to, &text).await;
    assert_eq!(on.statuses(&id, 1).await, ["delivered"]);
    let parts = on.submits_to(&to);
    assert_eq!(parts.len(), 3, "{parts:#?}");
    let mut whole = String::new();
    let mut reference = None;
    for (i, part) in parts.iter().enumerate() {
        assert_eq!(part["esm_class"].as_u64().unwrap() & 0x40, 0x40);
        assert_eq!(part["data_coding"], 0);
        let udh = part["short_message"]["udh"][0].as_str().unwrap().to_owned();
        // The concatenation element: its reference, 3 parts, this one's.
        assert_eq!(&udh[..4], "0003", "{udh}");
        assert_eq!(&udh[6..], format!("03{:02x}", i + 1));
        assert_eq!(*reference.get_or_insert(udh[4..6].to_owned()), &udh[4..6]);
        whole.push_str(&message_of(part));
    }
    assert_eq!(whole, text);
    assert_eq!(message_of(&parts[0]).chars().count(), 153);
    // Each part's receipt is answered; those of the later parts at once,
    // none of them looked up as a message herald does not know.
    let answered = on
        .smsc
        .wait_for(3, |e| e["event"] == "receipt_answered")
        .await;
    assert!(answered.iter().all(|e| e["command_status"] == 0));
    assert_eq!(
        on.app
            .provider_metric(&["provider=\"smpp\"", "result=\"unmatched\""])
            .await,
        0.0
    );

    let on = OnSmpp::texting(json!({"long_messages": "payload"})).await;
    let to = unique_number();
    let id = on.text(&to, &text).await;
    assert_eq!(on.statuses(&id, 1).await, ["delivered"]);
    let sent = on.submits_to(&to);
    assert_eq!(sent.len(), 1, "{sent:#?}");
    assert_eq!(sent[0]["esm_class"], 0);
    assert_eq!(message_of(&sent[0]), "", "{}", sent[0]);
    assert_eq!(
        sent[0]["message_payload"]["message"],
        text.as_str(),
        "{}",
        sent[0]
    );
}

#[tokio::test]
async fn smpp_every_receipt_stat_reaches_its_status_and_outcome() {
    let on = OnSmpp::texting(json!({})).await;
    let cases = [
        ("DELIVRD", "delivered", Some("completed")),
        ("ACCEPTD", "sent", None),
        ("ENROUTE", "sent", None),
        ("REJECTD", "rejected", Some("rejected")),
        ("EXPIRED", "failed", Some("failed")),
        ("DELETED", "failed", Some("failed")),
        ("UNDELIV", "failed", Some("failed")),
        ("UNKNOWN", "failed", Some("failed")),
    ];
    for style in ["tlv", "text"] {
        // By text, the SMSC gives the id in decimal (in hex in
        // submit_sm_resp): herald matches it all the same.
        on.smsc
            .tell(json!({"cmd": "receipts", "style": style}))
            .await;
        for (stat, status, outcome) in cases {
            let to = unique_number();
            on.smsc
                .tell(json!({"cmd": "stat", "to": to, "stat": stat}))
                .await;
            let id = on.text(&to, "Hello").await;
            assert_eq!(on.statuses(&id, 1).await, [status], "{style} {stat}");
            if let Some(outcome) = outcome {
                let ended = on.app.ended_session(&on.key, &id).await;
                assert_eq!(ended["outcome"], outcome, "{style} {stat}: {ended}");
            }
        }
    }
    let answered = on.smsc.events();
    let answered: Vec<&Value> = answered
        .iter()
        .filter(|e| e["event"] == "receipt_answered")
        .collect();
    assert_eq!(answered.len(), 2 * cases.len());
    assert!(answered.iter().all(|e| e["command_status"] == 0));
}

#[tokio::test]
async fn smpp_a_throttled_message_goes_once_the_smsc_takes_it() {
    let on = OnSmpp::texting(json!({})).await;
    on.smsc.tell(json!({"cmd": "throttle", "n": 2})).await;
    let to = unique_number();
    let id = on.text(&to, "Hello").await;
    assert_eq!(on.statuses(&id, 1).await, ["delivered"]);
    let ended = on.app.ended_session(&on.key, &id).await;
    assert_eq!(ended["outcome"], "completed");
    // Refused twice, then taken once: one receipt.
    assert_eq!(on.submits_to(&to).len(), 3);
    let receipts = on
        .smsc
        .wait_for(1, |e| e["event"] == "receipt_answered")
        .await;
    assert_eq!(receipts.len(), 1);
    assert_eq!(
        on.app
            .provider_metric(&["provider=\"smpp\"", "result=\"throttled\""])
            .await,
        2.0
    );
}

#[tokio::test]
async fn smpp_a_wrong_password_is_reported_without_the_password() {
    let agent = json!({"name": "a", "type": "sms", "flow": text_flow()});
    let wrong = "nOt-it9";
    let on = OnSmpp::start(agent, json!({}), wrong).await;
    let check: Value = on
        .app
        .post(
            &format!("/connections/{}/check", on.connection),
            &on.key,
            json!({}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(check["ok"], false, "{check}");
    let detail = check["detail"].as_str().unwrap();
    assert!(
        detail.contains("ESME_RINVPASWD") && detail.contains("password is wrong"),
        "{detail}"
    );
    let id = on.text(&unique_number(), "Hello").await;
    let ended = on.app.ended_session(&on.key, &id).await;
    assert_eq!(ended["outcome"], "failed", "{ended}");
    let shown = ended.to_string();
    assert!(shown.contains("ESME_RINVPASWD"), "{shown}");
    for text in [detail, &shown] {
        assert!(!text.contains(wrong) && !text.contains(PASSWORD), "{text}");
    }
    assert!(on.smsc.pdus("submit_sm").is_empty());

    // Mended, the connection binds afresh and its sessions go out.
    let patched = on
        .app
        .patch(
            &format!("/connections/{}", on.connection),
            &on.key,
            json!({"credentials": {"system_id": SYSTEM_ID, "password": PASSWORD}}),
        )
        .await;
    assert_eq!(patched.status(), 200);
    let to = unique_number();
    let id = on.text(&to, "Hello again").await;
    assert_eq!(on.statuses(&id, 1).await, ["delivered"]);
    assert_eq!(on.submits_to(&to).len(), 1);
    let check: Value = on
        .app
        .post(
            &format!("/connections/{}/check", on.connection),
            &on.key,
            json!({}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(check["ok"], true, "{check}");
    assert!(!check.to_string().contains(PASSWORD));
}

#[tokio::test]
async fn smpp_a_stranger_s_message_starts_a_session_of_the_number_s_agent() {
    let flow = json!({
        "format": 1,
        "start": "hello",
        "inbound": {"accept": true},
        "nodes": [
            {"id": "hello", "type": "send_message", "text": "You said: $LAST_INPUT", "next": "end"},
            {"id": "end", "type": "end"}
        ]
    });
    let agent = json!({"name": "a", "type": "sms", "flow": flow});
    let on = OnSmpp::start(agent, json!({}), PASSWORD).await;
    on.smsc.wait_for(1, |e| e["event"] == "bound").await;
    let person = unique_number();
    on.smsc
        .tell(json!({"cmd": "mo", "from": person, "to": on.number,
                        "text": "Hello there"}))
        .await;
    let sent = on.smsc.wait_for_pdus("submit_sm", 1).await;
    assert_eq!(message_of(&sent[0]), "You said: Hello there");
    assert_eq!(sent[0]["destination_addr"], person.as_str());
    let answered = on.smsc.wait_for(1, |e| e["event"] == "mo_answered").await;
    assert_eq!(answered[0]["command_status"], 0);

    // A long message comes in parts, in any order: the flow reads it
    // whole, once, and every part is answered.
    let person = unique_number();
    let parts = ["The first part, ", "then the second, ", "and the last."];
    on.smsc
        .tell(json!({"cmd": "mo", "from": person, "to": on.number,
                     "parts": parts, "order": [2, 0, 1]}))
        .await;
    let sent = on.smsc.wait_for_pdus("submit_sm", 2).await;
    assert_eq!(
        message_of(&sent[1]),
        format!("You said: {}", parts.concat())
    );
    let answered = on.smsc.wait_for(4, |e| e["event"] == "mo_answered").await;
    assert!(answered.iter().all(|e| e["command_status"] == 0));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(on.submits_to(&person).len(), 1);
}

#[tokio::test]
async fn smpp_a_dropped_bind_is_made_again_and_nothing_is_lost_or_doubled() {
    let mut on = OnSmpp::texting(json!({"enquire_link_secs": 1})).await;
    let first = unique_number();
    let id = on.text(&first, "Before").await;
    assert_eq!(on.statuses(&id, 1).await, ["delivered"]);
    on.smsc.tell(json!({"cmd": "drop"})).await;
    on.smsc.wait_for(1, |e| e["event"] == "closed").await;
    // Messages sent while herald binds again wait for the bind.
    let people: Vec<String> = (0..3).map(|_| unique_number()).collect();
    let mut ids = vec![];
    for person in &people {
        ids.push(on.text(person, "After").await);
    }
    for id in &ids {
        assert_eq!(on.statuses(id, 1).await, ["delivered"]);
    }
    for person in &people {
        assert_eq!(on.submits_to(person).len(), 1, "{person}");
    }
    assert_eq!(on.submits_to(&first).len(), 1);
    on.smsc.wait_for(2, |e| e["event"] == "bound").await;
    // The bind is kept alive with enquire_link.
    on.smsc.wait_for_pdus("enquire_link", 1).await;
    // A server that stops unbinds.
    on.app.stop().await;
    on.smsc.wait_for_pdus("unbind", 1).await;
}

#[tokio::test]
async fn smpp_a_malformed_pdu_is_answered_with_generic_nack() {
    let on = OnSmpp::texting(json!({})).await;
    let id = on.text(&unique_number(), "Hello").await;
    assert_eq!(on.statuses(&id, 1).await, ["delivered"]);
    // A command no SMPP 3.4 SMSC sends, then a deliver_sm cut short.
    on.smsc
        .tell(json!({"cmd": "raw", "hex": "00000010000000770000000000000123"}))
        .await;
    on.smsc
        .tell(json!({"cmd": "raw", "hex": "0000001400000005000000000000012400000000"}))
        .await;
    let nacks = on.smsc.wait_for_pdus("generic_nack", 2).await;
    assert_eq!(nacks[0]["sequence_number"], 0x123);
    assert_eq!(nacks[0]["command_status"], 3);
    assert_eq!(nacks[1]["sequence_number"], 0x124);
    // The bind goes on.
    let to = unique_number();
    let id = on.text(&to, "Still here").await;
    assert_eq!(on.statuses(&id, 1).await, ["delivered"]);
    assert_eq!(
        on.smsc.wait_for(1, |e| e["event"] == "bound").await.len(),
        1
    );
}

/// The password of an SMPP connection reaches no log line, even at debug
/// level, whether the SMSC takes it or refuses it.
#[tokio::test]
async fn smpp_the_password_reaches_no_log_line() {
    let smsc = Smsc::start();
    let dir = tempfile::tempdir().unwrap();
    let database = crate::BACKEND.fresh_database(dir.path()).await;
    let log = dir.path().join("herald.log");
    let key = create_key(&database);
    let secret_key = herald_core::secret::Sealer::generate_key();
    let server = ServeProcess::start_with(ServeOptions {
        args: &["--database", &database, "--allow-private-smsc"],
        envs: &[
            ("HERALD_LOG", "debug,sqlx=warn,hyper=info"),
            ("HERALD_SECRET_KEY", &secret_key),
        ],
        log: Some(&log),
        ..ServeOptions::default()
    })
    .await;
    let client = reqwest::Client::new();
    let wrong = "nOt-it9";
    for password in [wrong, PASSWORD] {
        let connection: Value = client
            .post(format!("{}/connections", server.base))
            .header("X-Vgai-Key", &key)
            .json(&json!({"name": "SMSC", "provider": "smpp",
                "credentials": {"system_id": SYSTEM_ID, "password": password},
                "settings": {"host": "127.0.0.1", "port": smsc.port}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(!connection.to_string().contains(password), "{connection}");
        let check = client
            .post(format!(
                "{}/connections/{}/check",
                server.base,
                connection["connection_id"].as_str().unwrap()
            ))
            .header("X-Vgai-Key", &key)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(
            check.contains("\"ok\":true"),
            password == PASSWORD,
            "{check}"
        );
        assert!(!check.contains(password), "{check}");
    }
    // Both binds tried: by the checks, and by the server on its own.
    smsc.wait_for(3, |e| e["command"] == "bind_transceiver")
        .await;
    drop(server);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("ESME_RINVPASWD"), "{logged}");
    for password in [wrong, PASSWORD] {
        assert!(
            !logged.contains(password),
            "a password in the log: {logged}"
        );
    }
}

/// At most `window` submit_sm await their answer at once, however many
/// sessions send together.
#[tokio::test]
async fn smpp_at_most_a_window_of_messages_awaits_its_answer() {
    let on = OnSmpp::texting(json!({"window": 2, "per_second": 1000})).await;
    on.smsc.tell(json!({"cmd": "slow", "ms": 300})).await;
    let people: Vec<String> = (0..6).map(|_| unique_number()).collect();
    let mut ids = vec![];
    for person in &people {
        ids.push(on.text(person, "Together").await);
    }
    for id in &ids {
        assert_eq!(on.statuses(id, 1).await, ["delivered"]);
    }
    let most = on
        .smsc
        .events()
        .iter()
        .filter(|e| e["event"] == "submit_unanswered")
        .filter_map(|e| e["unanswered"].as_u64())
        .max();
    assert_eq!(most, Some(2));
    for person in &people {
        assert_eq!(on.submits_to(person).len(), 1);
    }
}

/// An account chooses its SMSC's host: unless the operator allows it,
/// herald binds to no address inside its own network, and says so.
#[tokio::test]
async fn smpp_an_smsc_at_an_internal_address_is_refused_unless_the_operator_allows_it() {
    let smsc = Smsc::start();
    let app = TestApp::spawn_with(|c| {
        talk_to(c, "http://127.0.0.1:9");
        c.allow_private_smsc = false;
    })
    .await;
    let key = app.new_key("acme").await;
    let response = app
        .post(
            "/connections",
            &key,
            json!({"name": "SMSC", "provider": "smpp",
                   "credentials": {"system_id": SYSTEM_ID, "password": PASSWORD},
                   "settings": {"host": "localhost", "port": smsc.port}}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let connection: Value = response.json().await.unwrap();
    let check: Value = app
        .post(
            &format!(
                "/connections/{}/check",
                connection["connection_id"].as_str().unwrap()
            ),
            &key,
            json!({}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(check["ok"], false, "{check}");
    let detail = check["detail"].as_str().unwrap();
    assert!(
        detail.contains("the SMSC's host localhost is at")
            && detail.contains("an internal address")
            && detail.contains("HERALD_ALLOW_PRIVATE_SMSC"),
        "{detail}"
    );
    // Nothing reached the SMSC, from the check or from the server's bind.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert!(smsc.pdus("bind_transceiver").is_empty());
}

//! Hostile input, kept as a standing corpus against the two trigger
//! endpoints (`POST /telephony/make-call`, `POST /messaging/conversation`)
//! and `POST /agents`: parser bombs (deep nesting, numbers out of any range,
//! bytes that are not UTF-8), control characters and line breaks meant to
//! slip into headers or logs, digits of other scripts posing as phone
//! numbers, duplicate keys, strings as long as the 64 KiB limit allows, every
//! wrong JSON type for every field, and bodies that are not one JSON object.
//!
//! Every refusal must be a 4xx in the error shape of CONTRACT §1.2 (never a
//! 5xx, never a dropped connection), with the text §1.7, §2.2 and §3.2–3.3
//! fix where they fix one (`Invalid JSON body: <why>` for step 2), and must
//! leave no session and no agent behind (§2.2). The few hostile inputs that
//! are valid (§2.1 free text, duplicate keys) are accepted and kept exactly.
//! Each table runs whole and reports every case that failed, by name.

use herald_core::Channel;
use serde_json::{json, Value};

use crate::helpers::*;

const CALL: &str = "/telephony/make-call";
const MESSAGE: &str = "/messaging/conversation";
const AGENTS: &str = "/agents";
const TO: &str = "447700900123";
const BAD_DESTINATION: &str = "Bad destination number format";
const BAD_AGENT_NUMBER: &str = "number must be a phone number with country code, digits only";

/// What a refusal's `message` must be.
#[derive(Debug, Clone)]
enum Message {
    Is(String),
    /// `Invalid JSON body: <why>` (CONTRACT §2.2 step 2), `why` not empty.
    InvalidJson,
}

fn is(text: impl Into<String>) -> Message {
    Message::Is(text.into())
}

/// One hostile request and the refusal it must get.
struct Case {
    name: String,
    path: &'static str,
    body: Vec<u8>,
    status: u16,
    message: Message,
}

fn case(
    name: impl Into<String>,
    path: &'static str,
    body: impl Into<Vec<u8>>,
    status: u16,
    message: Message,
) -> Case {
    Case {
        name: name.into(),
        path,
        body: body.into(),
        status,
        message,
    }
}

/// `body` with its field `name` set to `raw`, written as is: `raw` need not
/// be JSON, or may be JSON that `serde_json::Value` cannot hold.
fn with_raw(body: &Value, name: &str, raw: impl AsRef<[u8]>) -> Vec<u8> {
    let mut body = body.clone();
    body.as_object_mut().expect("an object body").remove(name);
    let mut bytes = serde_json::to_vec(&body).unwrap();
    assert_eq!(bytes.pop(), Some(b'}'));
    if bytes.len() > 1 {
        bytes.push(b',');
    }
    bytes.extend_from_slice(Value::from(name).to_string().as_bytes());
    bytes.push(b':');
    bytes.extend_from_slice(raw.as_ref());
    bytes.push(b'}');
    bytes
}

/// `body` with its field `name` set to `value`.
fn with(body: &Value, name: &str, value: Value) -> Vec<u8> {
    let mut body = body.clone();
    body[name] = value;
    serde_json::to_vec(&body).unwrap()
}

/// `s` with each ASCII digit replaced by the digit of another script whose
/// zero is `zero` (Unicode keeps each script's digits contiguous).
fn transliterate(s: &str, zero: char) -> String {
    s.chars()
        .map(|c| match c.to_digit(10) {
            Some(d) if c.is_ascii_digit() => char::from_u32(zero as u32 + d).unwrap(),
            _ => c,
        })
        .collect()
}

/// At most 200 characters of `s`, for failure reports of huge cases.
fn excerpt(s: &str) -> String {
    match s.char_indices().nth(200) {
        Some((end, _)) => format!("{}… ({} bytes)", &s[..end], s.len()),
        None => s.to_owned(),
    }
}

/// Checks one answer against the refusal expected: status, the error shape
/// of §1.2, and the message.
async fn check_refusal(
    response: reqwest::Response,
    status: u16,
    message: &Message,
) -> Result<(), String> {
    let got = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = response
        .text()
        .await
        .map_err(|e| format!("unreadable body: {e}"))?;
    if got != status {
        return Err(format!(
            "answered {got}, expected {status}: {}",
            excerpt(&text)
        ));
    }
    if !content_type.starts_with("application/json") {
        return Err(format!("Content-Type is {content_type:?}"));
    }
    let body: Value = serde_json::from_str(&text)
        .map_err(|e| format!("the body is not JSON ({e}): {}", excerpt(&text)))?;
    let shaped = body
        .as_object()
        .is_some_and(|o| o.len() == 2 && o["status"] == status && o["message"].is_string());
    if !shaped {
        return Err(format!(
            "the body is not {{\"status\": {status}, \"message\": \"…\"}}: {}",
            excerpt(&text)
        ));
    }
    let text = body["message"].as_str().unwrap();
    let right = match message {
        Message::Is(expected) => text == expected,
        Message::InvalidJson => text
            .strip_prefix("Invalid JSON body: ")
            .is_some_and(|why| !why.trim().is_empty()),
    };
    if !right {
        let expected = match message {
            Message::Is(expected) => format!("{:?}", excerpt(expected)),
            Message::InvalidJson => "\"Invalid JSON body: <why>\"".to_owned(),
        };
        return Err(format!("message {:?}, expected {expected}", excerpt(text)));
    }
    Ok(())
}

/// An account with a published agent of each channel (rates raised, so
/// that every valid trigger is judged on its body alone), a WhatsApp
/// template `hello` with one body placeholder, and a loopback receiver for
/// the callbacks of the sessions that are accepted.
struct Fixture {
    app: TestApp,
    db: TestDb,
    receiver: TestReceiver,
    key: String,
    voice: (String, String),
    sms: (String, String),
    whatsapp: (String, String),
}

impl Fixture {
    async fn new() -> Self {
        let app = TestApp::spawn().await;
        let key = app.new_key("hostile").await;
        let mut agents = Vec::new();
        for channel in [Channel::Voice, Channel::Sms, Channel::Whatsapp] {
            let number = unique_number();
            let id = app.published_agent(&key, channel, &number).await;
            app.set_rate(&id, 1000).await;
            agents.push((id, number));
        }
        app.register_template(&key, "hello", None, "Hello {{1}}")
            .await;
        let db = app.db().await;
        let mut agents = agents.into_iter();
        Fixture {
            db,
            receiver: TestReceiver::start().await,
            key,
            voice: agents.next().unwrap(),
            sms: agents.next().unwrap(),
            whatsapp: agents.next().unwrap(),
            app,
        }
    }

    fn call(&self) -> Value {
        json!({"agent_id": self.voice.0, "to": TO})
    }

    fn sms(&self) -> Value {
        json!({"agent_id": self.sms.0, "to": TO, "channel": "sms"})
    }

    fn whatsapp(&self) -> Value {
        json!({
            "agent_id": self.whatsapp.0, "to": TO, "channel": "whatsapp",
            "status_url": self.receiver.url,
            "namespace": "ns", "template": "hello", "locale": "en",
            "components": [{"type": "body", "parameters": [{"type": "text", "text": "Ada"}]}]
        })
    }

    fn agent(&self) -> Value {
        json!({"name": "hostile", "type": "sms", "number": "447700900999"})
    }

    /// Each trigger endpoint with a valid body for it and its agent's
    /// number.
    fn triggers(&self) -> [(&'static str, &'static str, Value, &str); 3] {
        [
            ("make-call", CALL, self.call(), &self.voice.1),
            ("sms", MESSAGE, self.sms(), &self.sms.1),
            ("whatsapp", MESSAGE, self.whatsapp(), &self.whatsapp.1),
        ]
    }

    /// The trigger endpoints and `POST /agents`, each with a valid body.
    fn endpoints(&self) -> [(&'static str, &'static str, Value); 4] {
        [
            ("make-call", CALL, self.call()),
            ("sms", MESSAGE, self.sms()),
            ("whatsapp", MESSAGE, self.whatsapp()),
            ("agents", AGENTS, self.agent()),
        ]
    }

    /// How many sessions and agents are stored.
    async fn stored(&self) -> (i64, i64) {
        (
            self.db.count("SELECT COUNT(*) FROM sessions", &[]).await,
            self.db.count("SELECT COUNT(*) FROM agents", &[]).await,
        )
    }

    /// Sends every case; each must be refused as it says and store nothing.
    /// Runs them all, then fails with the list of those that went wrong.
    /// Last, a valid trigger must still succeed: nothing above broke the
    /// server.
    async fn refuse_all(&self, cases: Vec<Case>) {
        assert!(!cases.is_empty());
        let mut before = self.stored().await;
        let mut failures = Vec::new();
        for case in &cases {
            let response = self
                .app
                .client
                .post(self.app.url(case.path))
                .header("X-Vgai-Key", &self.key)
                .body(case.body.clone())
                .send()
                .await;
            match response {
                Ok(response) => {
                    if let Err(why) = check_refusal(response, case.status, &case.message).await {
                        failures.push(format!("{}: {why}", case.name));
                    }
                }
                Err(e) => failures.push(format!("{}: no answer: {e}", case.name)),
            }
            let after = self.stored().await;
            if after != before {
                failures.push(format!(
                    "{}: (sessions, agents) stored went from {before:?} to {after:?}",
                    case.name
                ));
                before = after;
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {} cases failed:\n{}",
            failures.len(),
            cases.len(),
            failures.join("\n")
        );
        let response = self.app.post(MESSAGE, &self.key, self.sms()).await;
        assert_eq!(response.status(), 200, "a valid trigger after the corpus");
    }

    /// Triggers with a raw body that must be accepted; answers the session.
    async fn accepted(&self, name: &str, path: &str, body: Vec<u8>) -> Value {
        let response = self.app.post_raw(path, &self.key, body).await;
        let status = response.status();
        let text = response.text().await.unwrap();
        assert_eq!(status, 200, "{name}: {}", excerpt(&text));
        let answer: Value = serde_json::from_str(&text).unwrap();
        let id = answer["session_id"].as_str().unwrap();
        let response = self.app.get(&format!("/sessions/{id}"), &self.key).await;
        assert_eq!(response.status(), 200, "{name}: reading the session");
        response.json().await.unwrap()
    }
}

/// Nesting far past any sensible depth is refused by the parser, before
/// anything recurses into it, wherever it sits in the body.
#[tokio::test]
async fn deep_nesting_is_invalid_json_and_crashes_nothing() {
    let f = Fixture::new().await;
    let open = "[".repeat(10_000);
    let arrays = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let objects = format!("{}1{}", r#"{"a":"#.repeat(10_000), "}".repeat(10_000));
    // As deep as fits under the 64 KiB limit.
    let deepest = "[".repeat(60_000);
    let mut cases = Vec::new();
    for (name, path, valid) in f.endpoints() {
        for (what, body) in [
            ("10 000 unclosed [", &open),
            ("10 000 nested arrays", &arrays),
            ("10 000 nested objects", &objects),
            ("60 000 unclosed [", &deepest),
        ] {
            cases.push(case(
                format!("{name}: the body is {what}"),
                path,
                body.as_str(),
                400,
                Message::InvalidJson,
            ));
        }
        cases.push(case(
            format!("{name}: 10 000 nested arrays in an unknown field"),
            path,
            with_raw(&valid, "extra", &arrays),
            400,
            Message::InvalidJson,
        ));
        cases.push(case(
            format!("{name}: 10 000 nested objects in an unknown field"),
            path,
            with_raw(&valid, "extra", &objects),
            400,
            Message::InvalidJson,
        ));
        let field = if path == AGENTS {
            ("flow", format!(r#"{{"nodes":{arrays}}}"#))
        } else {
            (
                "session_parameters",
                format!(r#"[{{"name":"n","value":{arrays}}}]"#),
            )
        };
        cases.push(case(
            format!("{name}: 10 000 nested arrays inside {}", field.0),
            path,
            with_raw(&valid, field.0, field.1),
            400,
            Message::InvalidJson,
        ));
    }
    cases.push(case(
        "whatsapp: 10 000 nested arrays as a component parameter",
        MESSAGE,
        with_raw(
            &f.whatsapp(),
            "components",
            format!(r#"[{{"type":"body","parameters":[{arrays}]}}]"#),
        ),
        400,
        Message::InvalidJson,
    ));
    f.refuse_all(cases).await;
}

/// Numbers no float or integer can hold are a parse error, in any field;
/// numbers that parse are judged by the field's own check; huge numbers
/// written as strings are just bad strings.
#[tokio::test]
async fn numbers_out_of_any_range_are_refused() {
    let f = Fixture::new().await;
    let digits = "9".repeat(400);
    let unparseable = [
        "1e999999".to_owned(),
        "-1e999999".to_owned(),
        digits.clone(),
        format!("-{digits}"),
        format!("{digits}.5"),
    ];
    let mut cases = Vec::new();
    for (name, path, valid, _) in f.triggers() {
        for number in &unparseable {
            let n = excerpt(number);
            for field in ["to", "agent_id", "status_url", "unknown"] {
                cases.push(case(
                    format!("{name}: {field} = {n}"),
                    path,
                    with_raw(&valid, field, number),
                    400,
                    Message::InvalidJson,
                ));
            }
            cases.push(case(
                format!("{name}: a session parameter's value = {n}"),
                path,
                with_raw(
                    &valid,
                    "session_parameters",
                    format!(r#"[{{"name":"n","value":{number}}}]"#),
                ),
                400,
                Message::InvalidJson,
            ));
        }
        // Numbers that parse (to 0 and to 1e308) are numbers, not strings.
        for number in ["1e-999999", "1e308"] {
            cases.push(case(
                format!("{name}: to = {number}"),
                path,
                with_raw(&valid, "to", number),
                400,
                is("to must be a string"),
            ));
        }
        for text in ["1e999999", digits.as_str(), "NaN", "Infinity"] {
            let t = excerpt(text);
            cases.push(case(
                format!("{name}: to = {t:?}"),
                path,
                with(&valid, "to", json!(text)),
                400,
                is(BAD_DESTINATION),
            ));
            cases.push(case(
                format!("{name}: agent_id = {t:?}"),
                path,
                with(&valid, "agent_id", json!(text)),
                404,
                is(format!(
                    "ID {text} is not an ID to any agent or published version"
                )),
            ));
            cases.push(case(
                format!("{name}: from = {t:?}"),
                path,
                with(&valid, "from", json!(text)),
                404,
                is(format!(
                    "Version information for number {text} doesn't exist"
                )),
            ));
        }
    }
    cases.push(case(
        "make-call: hangup_on_answer_machine = 1e999999",
        CALL,
        with_raw(&f.call(), "hangup_on_answer_machine", "1e999999"),
        400,
        Message::InvalidJson,
    ));
    cases.push(case(
        "sms: channel = \"1e999999\"",
        MESSAGE,
        with(&f.sms(), "channel", json!("1e999999")),
        400,
        is("Unsupported channel: 1e999999"),
    ));
    // A button's index and a currency amount, the two numbers WhatsApp
    // components carry.
    let button = |index: &str| {
        with_raw(
            &f.whatsapp(),
            "components",
            format!(
                r#"[{{"type":"body","parameters":[{{"type":"text","text":"Ada"}}]}},
                    {{"type":"button","sub_type":"quick_reply","index":{index},
                      "parameters":[{{"type":"payload","payload":"yes"}}]}}]"#
            ),
        )
    };
    let amount = |amount: &str| {
        with_raw(
            &f.whatsapp(),
            "components",
            format!(
                r#"[{{"type":"body","parameters":[{{"type":"currency","currency":
                    {{"fallback_value":"$1","code":"USD","amount_1000":{amount}}}}}]}}]"#
            ),
        )
    };
    for number in &unparseable {
        let n = excerpt(number);
        cases.push(case(
            format!("whatsapp: a button's index = {n}"),
            MESSAGE,
            button(number),
            400,
            Message::InvalidJson,
        ));
        cases.push(case(
            format!("whatsapp: a currency amount_1000 = {n}"),
            MESSAGE,
            amount(number),
            400,
            Message::InvalidJson,
        ));
    }
    cases.push(case(
        "whatsapp: a button's index = 400 digits as a string",
        MESSAGE,
        button(&format!("\"{digits}\"")),
        400,
        is("components[1].index must be at most 9"),
    ));
    cases.push(case(
        "whatsapp: a button's index = 1e300",
        MESSAGE,
        button("1e300"),
        400,
        is("components[1].index must be a non-negative integer"),
    ));
    cases.push(case(
        "whatsapp: a currency amount_1000 = 1e300",
        MESSAGE,
        amount("1e300"),
        400,
        is("components[0].parameters[0].currency.amount_1000 must be an integer"),
    ));
    for number in &unparseable {
        for field in ["number", "name"] {
            cases.push(case(
                format!("agents: {field} = {}", excerpt(number)),
                AGENTS,
                with_raw(&f.agent(), field, number),
                400,
                Message::InvalidJson,
            ));
        }
    }
    for text in ["1e999999", digits.as_str()] {
        cases.push(case(
            format!("agents: number = {:?}", excerpt(text)),
            AGENTS,
            with(&f.agent(), "number", json!(text)),
            400,
            is(BAD_AGENT_NUMBER),
        ));
    }
    f.refuse_all(cases).await;
}

/// CONTRACT §2.1: a session parameter's number "is accepted and kept as its
/// text", also when it does not fit 64 bits: rounding it through a float
/// would quietly change an account or order number.
#[tokio::test]
async fn session_parameter_integers_beyond_64_bits_are_kept_digit_for_digit() {
    let f = Fixture::new().await;
    let numbers = [
        ("u64_max", "18446744073709551615"),
        ("i64_min", "-9223372036854775808"),
        ("over_u64", "98765432109876543210"),
        ("under_i64", "-98765432109876543210"),
        ("thirty_digits", "123456789012345678901234567890"),
    ];
    let raw: Vec<String> = numbers
        .iter()
        .map(|(name, n)| format!(r#"{{"name":"{name}","value":{n}}}"#))
        .collect();
    let body = with_raw(
        &f.sms(),
        "session_parameters",
        format!("[{}]", raw.join(",")),
    );
    let session = f.accepted("long integers", MESSAGE, body).await;
    let expected: Vec<Value> = numbers
        .iter()
        .map(|(name, n)| json!({"name": name, "value": n}))
        .collect();
    assert_eq!(session["session_parameters"], Value::from(expected));
}

/// Bytes that are not UTF-8, and escapes that name no character (lone
/// surrogates), are not JSON text (RFC 8259 §8.1): step 2 refuses them.
#[tokio::test]
async fn bodies_that_are_not_utf8_are_invalid_json() {
    let f = Fixture::new().await;
    let bytes: [(&str, &[u8]); 8] = [
        ("a lone continuation byte", b"\x80"),
        ("the byte 0xFF", b"\xff"),
        ("an overlong '/'", b"\xc0\xaf"),
        ("a UTF-8-encoded surrogate", b"\xed\xa0\x80"),
        ("a truncated sequence", b"\xe2\x82"),
        ("a code point past U+10FFFF", b"\xf4\x90\x80\x80"),
        ("Latin-1 'é'", b"\xe9"),
        ("Windows-1252 quotes", b"\x93hi\x94"),
    ];
    let escapes = [r"\ud800", r"\udfff", r"\ud800\u0041", r"\ud83d"];
    let mut cases = Vec::new();
    for (name, path, valid) in f.endpoints() {
        let field = if path == AGENTS { "name" } else { "to" };
        for (what, bad) in bytes {
            let mut value = b"\"44770".to_vec();
            value.extend_from_slice(bad);
            value.extend_from_slice(b"0900123\"");
            cases.push(case(
                format!("{name}: {what} inside {field}"),
                path,
                with_raw(&valid, field, value),
                400,
                Message::InvalidJson,
            ));
            cases.push(case(
                format!("{name}: {what} outside any string"),
                path,
                with_raw(&valid, field, bad),
                400,
                Message::InvalidJson,
            ));
        }
        for escape in escapes {
            cases.push(case(
                format!("{name}: the escape {escape} in {field}"),
                path,
                with_raw(&valid, field, format!("\"44770{escape}0900123\"")),
                400,
                Message::InvalidJson,
            ));
        }
        // A whole body in UTF-16, as some Windows tools send it.
        let utf16: Vec<u8> = [0xfeff_u16]
            .into_iter()
            .chain(valid.to_string().encode_utf16())
            .flat_map(u16::to_le_bytes)
            .collect();
        cases.push(case(
            format!("{name}: a UTF-16LE body"),
            path,
            utf16,
            400,
            Message::InvalidJson,
        ));
    }
    f.refuse_all(cases).await;
}

/// Control and invisible characters: raw ones are not JSON; escaped ones
/// are characters like any other, so each field's own check decides, and
/// none of them makes a near-miss match (an agent id or number followed by
/// a NUL is not that agent's).
#[tokio::test]
async fn control_characters_fail_each_field_s_own_check() {
    let f = Fixture::new().await;
    let controls = [
        ("NUL", "\u{0}"),
        ("BEL", "\u{7}"),
        ("ESC", "\u{1b}"),
        ("DEL", "\u{7f}"),
        ("NEL", "\u{85}"),
        ("LINE SEPARATOR", "\u{2028}"),
        ("RIGHT-TO-LEFT OVERRIDE", "\u{202e}"),
        ("ZERO WIDTH NO-BREAK SPACE", "\u{feff}"),
    ];
    let mut cases = Vec::new();
    for (name, path, valid, number) in f.triggers() {
        for raw in [b"\x00".as_slice(), b"\n", b"\t", b"\x1f"] {
            let mut value = b"\"4477009".to_vec();
            value.extend_from_slice(raw);
            value.extend_from_slice(b"00123\"");
            cases.push(case(
                format!("{name}: an unescaped byte {raw:?} inside to"),
                path,
                with_raw(&valid, "to", value),
                400,
                Message::InvalidJson,
            ));
        }
        let agent = valid["agent_id"].as_str().unwrap();
        for (what, c) in controls {
            for to in [
                format!("{TO}{c}"),
                format!("{c}{TO}"),
                format!("4477{c}00900123"),
            ] {
                cases.push(case(
                    format!("{name}: {what} in to {to:?}"),
                    path,
                    with(&valid, "to", json!(to)),
                    400,
                    is(BAD_DESTINATION),
                ));
            }
            let id = format!("{agent}{c}");
            cases.push(case(
                format!("{name}: {what} after the agent_id"),
                path,
                with(&valid, "agent_id", json!(id)),
                404,
                is(format!(
                    "ID {id} is not an ID to any agent or published version"
                )),
            ));
            let from = format!("{number}{c}");
            cases.push(case(
                format!("{name}: {what} after the agent's number in from"),
                path,
                with(&valid, "from", json!(from)),
                404,
                is(format!(
                    "Version information for number {from} doesn't exist"
                )),
            ));
            cases.push(case(
                format!("{name}: {what} in a session parameter's name"),
                path,
                with(
                    &valid,
                    "session_parameters",
                    json!([{"name": format!("first{c}name"), "value": "Ada"}]),
                ),
                400,
                is("session_parameters[0].name must be 1 to 64 letters, digits or underscores"),
            ));
        }
        for (what, c) in &controls[..5] {
            cases.push(case(
                format!("{name}: {what} in status_url"),
                path,
                with(
                    &valid,
                    "status_url",
                    json!(format!("https://hooks.example.com/cb{c}")),
                ),
                400,
                is("Invalid status_url"),
            ));
        }
    }
    for (what, c) in controls {
        let channel = format!("sms{c}");
        cases.push(case(
            format!("sms: {what} in the channel"),
            MESSAGE,
            with(&f.sms(), "channel", json!(channel)),
            400,
            is(format!("Unsupported channel: {channel}")),
        ));
        let valid = f.whatsapp();
        for field in ["namespace", "template", "locale"] {
            let mut body = valid.clone();
            body[field] = json!(format!("{}{c}", valid[field].as_str().unwrap()));
            cases.push(case(
                format!("whatsapp: {what} in the {field}"),
                MESSAGE,
                serde_json::to_vec(&body).unwrap(),
                400,
                is(format!(
                    "Template {} ({}) is not registered in namespace {}",
                    body["template"].as_str().unwrap(),
                    body["locale"].as_str().unwrap(),
                    body["namespace"].as_str().unwrap()
                )),
            ));
        }
        let agent = f.agent();
        for (field, message) in [
            ("number", BAD_AGENT_NUMBER),
            ("type", "type must be one of voice, sms, whatsapp"),
            ("region", "region must be one of eu, us"),
        ] {
            let value = agent.get(field).and_then(Value::as_str).unwrap_or("eu");
            cases.push(case(
                format!("agents: {what} in the {field}"),
                AGENTS,
                with(&agent, field, json!(format!("{value}{c}"))),
                400,
                is(message),
            ));
        }
    }
    f.refuse_all(cases).await;
}

/// Free text may hold any character but NUL: a session parameter's value
/// comes back exactly as sent, escape sequences included, on every store.
#[tokio::test]
async fn control_characters_in_a_session_parameter_are_kept_exactly() {
    let f = Fixture::new().await;
    let value = "a\u{1}b\u{1b}[31mred\u{7f}\u{85}\u{2028}\u{202e}\r\n\t\u{feff}";
    let params = json!([{"name": "note", "value": value}]);
    for (name, path, valid, _) in f.triggers() {
        let body = with(&valid, "session_parameters", params.clone());
        let session = f.accepted(name, path, body).await;
        assert_eq!(session["session_parameters"], params, "{name}");
    }
}

/// NUL has no meaning in text and PostgreSQL cannot store it: in every
/// field a client writes free text into, it gets the same 400 naming the
/// field on every store, and nothing is stored.
#[tokio::test]
async fn a_nul_in_free_text_is_refused_naming_the_field() {
    let f = Fixture::new().await;
    let mut cases = Vec::new();
    for (name, path, valid, _) in f.triggers() {
        cases.push(case(
            format!("{name}: NUL in a session parameter's value"),
            path,
            with(
                &valid,
                "session_parameters",
                json!([{"name": "note", "value": "a\u{0}b"}]),
            ),
            400,
            is("session_parameters[0].value must not contain NUL characters"),
        ));
    }
    for (field, parameter) in [
        ("text", json!({"type": "text", "text": "Ada\u{0}"})),
        (
            "currency.fallback_value",
            json!({"type": "currency", "currency": {"fallback_value": "\u{0}", "code": "EUR", "amount_1000": 1}}),
        ),
        (
            "image.link",
            json!({"type": "image", "image": {"link": "https://example.com/\u{0}.png"}}),
        ),
    ] {
        cases.push(case(
            format!("whatsapp: NUL in a parameter's {field}"),
            MESSAGE,
            with(
                &f.whatsapp(),
                "components",
                json!([{"type": "body", "parameters": [parameter]}]),
            ),
            400,
            is(format!(
                "components[0].parameters[0].{field} must not contain NUL characters"
            )),
        ));
    }
    f.refuse_all(cases).await;
    for (flow, field) in [
        (
            json!({"format": 1, "start": "a", "nodes": [
                {"id": "a", "type": "send_message", "text": "Hi\u{0}", "next": "b"},
                {"id": "b", "type": "end"}]}),
            "flow.nodes[0].text",
        ),
        (
            json!({"format": 1, "start": "a", "nodes": [
                {"id": "a", "type": "webhook", "url": "https://example.com/x",
                 "body": "note: \u{0}", "success": "b", "failure": "b"},
                {"id": "b", "type": "end"}]}),
            "flow.nodes[0].body",
        ),
    ] {
        let mut body = f.agent();
        body["flow"] = flow;
        let response = f.app.post(AGENTS, &f.key, body).await;
        assert_error(
            response,
            400,
            &format!("{field} must not contain NUL characters"),
        )
        .await;
    }
}

/// An agent's name is shown to people: control characters (NUL among them,
/// which PostgreSQL cannot store) are refused on every store, as in a
/// template's fields, and nothing is created.
#[tokio::test]
async fn control_characters_in_an_agent_name_are_refused() {
    let f = Fixture::new().await;
    let agents = || async {
        let list: Value = f.app.get(AGENTS, &f.key).await.json().await.unwrap();
        list["agents"].as_array().unwrap().len()
    };
    let before = agents().await;
    for name in [
        "Front\u{0}desk",
        "Front desk\u{1b}[2J",
        "Front desk\r\nX-Evil: 1",
        "Front\tdesk",
    ] {
        let mut body = f.agent();
        body["name"] = json!(name);
        let response = f.app.post(AGENTS, &f.key, body).await;
        assert_error(response, 400, "name must not contain control characters").await;
    }
    assert_eq!(agents().await, before, "no agent was created");
    // Other characters are a name's own business.
    let mut body = f.agent();
    body["name"] = json!("Front desk \u{202e}réception");
    assert_eq!(f.app.post(AGENTS, &f.key, body).await.status(), 201);
}

/// A `status_url` with a line break could split the callback's request into
/// forged headers or a second request: it is not a valid URL, so step 6
/// refuses it, raw or in its Unicode disguises.
#[tokio::test]
async fn line_breaks_in_status_url_cannot_inject_headers() {
    let f = Fixture::new().await;
    let urls = [
        "http://x.example/cb\r\nX-Evil: 1",
        "http://x.example/cb\nX-Evil: 1",
        "http://x.example/cb\rX-Evil: 1",
        "http://x.example/cb\r\n\r\nPOST /admin HTTP/1.1\r\nHost: x.example",
        "http://x.example\r\nX-Evil: 1/cb",
        "http://x.example/cb?next=\r\nX-Evil:1",
        "http://x.example/cb#\r\nX-Evil:1",
        "http://x.example/cb\u{85}X-Evil: 1",
        "http://x.example/cb\u{2028}X-Evil: 1",
        "http://x.example/cb\u{2029}X-Evil: 1",
        "http://x.example/cb\tX-Evil: 1",
        "http://x.example/cb X-Evil: 1",
        "\r\nhttp://x.example/cb",
    ];
    let mut cases = Vec::new();
    for (name, path, valid, _) in f.triggers() {
        for url in urls {
            cases.push(case(
                format!("{name}: status_url {url:?}"),
                path,
                with(&valid, "status_url", json!(url)),
                400,
                is("Invalid status_url"),
            ));
        }
    }
    f.refuse_all(cases).await;
}

/// The same line break percent-encoded is a valid URL; it stays encoded on
/// the way out and adds no header to the callback.
#[tokio::test]
async fn an_encoded_line_break_in_status_url_stays_encoded() {
    let f = Fixture::new().await;
    let receiver = TestReceiver::start().await;
    let url = format!("{}?next=%0D%0AX-Evil:%201", receiver.url);
    let mut body = f.sms();
    body["status_url"] = json!(url);
    let session = f
        .accepted("encoded CRLF", MESSAGE, serde_json::to_vec(&body).unwrap())
        .await;
    assert_eq!(session["status_url"], url.as_str());
    let got = receiver.wait_for(2).await;
    for callback in got {
        assert!(
            !callback.headers.contains_key("x-evil"),
            "an injected header arrived: {:?}",
            callback.headers
        );
    }
}

/// CONTRACT §1.7: a phone number is ASCII digits. The digits of other
/// scripts (which `char::is_numeric` and many regexes' `\d` accept) are
/// refused, and never match an agent's number either.
#[tokio::test]
async fn digits_of_other_scripts_are_not_phone_numbers() {
    let f = Fixture::new().await;
    let scripts = [
        ("Arabic-Indic", '\u{660}'),
        ("Extended Arabic-Indic", '\u{6f0}'),
        ("Devanagari", '\u{966}'),
        ("Bengali", '\u{9e6}'),
        ("Thai", '\u{e50}'),
        ("full-width", '\u{ff10}'),
        ("mathematical bold", '\u{1d7ce}'),
    ];
    let mut numbers: Vec<(String, String)> = scripts
        .iter()
        .map(|(script, zero)| (format!("{script} digits"), transliterate(TO, *zero)))
        .collect();
    numbers.extend([
        ("superscript digits".to_owned(), "⁴⁴⁷⁷⁰⁰⁹⁰⁰¹²³".to_owned()),
        (
            "one Arabic-Indic digit among ASCII ones".to_owned(),
            "44770090012\u{663}".to_owned(),
        ),
        ("a full-width plus".to_owned(), format!("\u{ff0b}{TO}")),
        (
            "a plus and full-width digits".to_owned(),
            format!("+{}", transliterate(TO, '\u{ff10}')),
        ),
    ]);
    let mut cases = Vec::new();
    for (name, path, valid, number) in f.triggers() {
        for (what, to) in &numbers {
            cases.push(case(
                format!("{name}: to in {what} {to:?}"),
                path,
                with(&valid, "to", json!(to)),
                400,
                is(BAD_DESTINATION),
            ));
        }
        for (script, zero) in scripts {
            let from = transliterate(number, zero);
            cases.push(case(
                format!("{name}: the agent's number in {script} digits as from"),
                path,
                with(&valid, "from", json!(from)),
                404,
                is(format!(
                    "Version information for number {from} doesn't exist"
                )),
            ));
        }
    }
    for (script, zero) in scripts {
        let to = format!("sip:{}@example.com", transliterate(TO, zero));
        cases.push(case(
            format!("make-call: a SIP URI with a {script} user part"),
            CALL,
            with(&f.call(), "to", json!(to)),
            400,
            is(BAD_DESTINATION),
        ));
    }
    for (what, number) in &numbers {
        cases.push(case(
            format!("agents: number in {what}"),
            AGENTS,
            with(&f.agent(), "number", json!(number)),
            400,
            is(BAD_AGENT_NUMBER),
        ));
    }
    f.refuse_all(cases).await;
}

/// A key given twice (RFC 8259 leaves the meaning open): herald reads the
/// last one, as it does for a session parameter named twice (§2.1). So a
/// refusal or an acceptance follows from the last value, never a 5xx.
#[tokio::test]
async fn a_duplicate_key_means_its_last_value() {
    let f = Fixture::new().await;
    let (voice, sms) = (&f.voice.0, &f.sms.0);
    let cases = vec![
        case(
            "make-call: a good to, then a bad one",
            CALL,
            format!(r#"{{"to":"{TO}","to":"nonsense","agent_id":"{voice}"}}"#),
            400,
            is(BAD_DESTINATION),
        ),
        case(
            "make-call: a good to, then null",
            CALL,
            format!(r#"{{"to":"{TO}","agent_id":"{voice}","to":null}}"#),
            400,
            is("Missing mandatory field(s): to"),
        ),
        case(
            "make-call: the agent, then an unknown one",
            CALL,
            format!(r#"{{"agent_id":"{voice}","to":"{TO}","agent_id":"nonsense"}}"#),
            404,
            is("ID nonsense is not an ID to any agent or published version"),
        ),
        case(
            "sms: channel sms, then fax",
            MESSAGE,
            format!(r#"{{"channel":"sms","to":"{TO}","agent_id":"{sms}","channel":"fax"}}"#),
            400,
            is("Unsupported channel: fax"),
        ),
        case(
            "agents: type sms, then fax",
            AGENTS,
            r#"{"name":"a","type":"sms","number":"447700900999","type":"fax"}"#,
            400,
            is("type must be one of voice, sms, whatsapp"),
        ),
    ];
    f.refuse_all(cases).await;
    let before = f.stored().await.0;

    let session = f
        .accepted(
            "make-call: a bad to, then a good one",
            CALL,
            format!(r#"{{"to":"nonsense","agent_id":"{voice}","to":"{TO}"}}"#).into_bytes(),
        )
        .await;
    assert_eq!(session["to"], TO);
    let session = f
        .accepted(
            "sms: an unknown agent, then the agent; channel voice, then sms",
            MESSAGE,
            format!(
                r#"{{"agent_id":"nonsense","channel":"voice","to":"{TO}","agent_id":"{sms}","channel":"sms"}}"#
            )
            .into_bytes(),
        )
        .await;
    assert_eq!(
        (&session["agent_id"], &session["channel"]),
        (&json!(sms), &json!("sms"))
    );
    assert_eq!(f.stored().await.0, before + 2, "one session per request");

    let response = f
        .app
        .post_raw(
            AGENTS,
            &f.key,
            r#"{"name":"first","type":"voice","number":"447700900998","name":"second"}"#,
        )
        .await;
    assert_eq!(response.status(), 201);
    let agent: Value = response.json().await.unwrap();
    assert_eq!(agent["name"], "second");
}

/// Strings as long as a 64 KiB body allows reach each field's own check,
/// which refuses them with its usual answer (echoing the value where the
/// contract's text does).
#[tokio::test]
async fn strings_as_long_as_the_body_allows_fail_their_own_check() {
    let f = Fixture::new().await;
    const LONG: usize = 60_000;
    let digits = "4".repeat(LONG);
    let letters = "a".repeat(LONG);
    let mut cases = Vec::new();
    for (name, path, valid, _) in f.triggers() {
        cases.push(case(
            format!("{name}: to of {LONG} digits"),
            path,
            with(&valid, "to", json!(digits)),
            400,
            is(BAD_DESTINATION),
        ));
        cases.push(case(
            format!("{name}: agent_id of {LONG} letters"),
            path,
            with(&valid, "agent_id", json!(letters)),
            404,
            is(format!(
                "ID {letters} is not an ID to any agent or published version"
            )),
        ));
        cases.push(case(
            format!("{name}: from of {LONG} digits"),
            path,
            with(&valid, "from", json!(digits)),
            404,
            is(format!(
                "Version information for number {digits} doesn't exist"
            )),
        ));
        cases.push(case(
            format!("{name}: a status_url of {LONG} characters"),
            path,
            with(
                &valid,
                "status_url",
                json!(format!("https://hooks.example.com/{letters}")),
            ),
            400,
            is("Invalid status_url"),
        ));
        for (what, params, message) in [
            (
                "a session parameter name of 65 characters",
                json!([{"name": "n".repeat(65), "value": "v"}]),
                "session_parameters[0].name must be 1 to 64 letters, digits or underscores",
            ),
            (
                "a session parameter value of 4097 bytes",
                json!([{"name": "n", "value": "v".repeat(4097)}]),
                "session_parameters[0].value must be at most 4096 bytes",
            ),
            (
                "a session parameter value of 2049 two-byte characters",
                json!([{"name": "n", "value": "é".repeat(2049)}]),
                "session_parameters[0].value must be at most 4096 bytes",
            ),
            (
                "101 session parameters",
                Value::from(
                    (0..101)
                        .map(|i| json!({"name": format!("p{i}"), "value": "v"}))
                        .collect::<Vec<_>>(),
                ),
                "session_parameters must have at most 100 entries",
            ),
        ] {
            cases.push(case(
                format!("{name}: {what}"),
                path,
                with(&valid, "session_parameters", params),
                400,
                is(message),
            ));
        }
    }
    cases.push(case(
        format!("make-call: a SIP URI with a user part of {LONG} letters"),
        CALL,
        with(&f.call(), "to", json!(format!("sip:{letters}@example.com"))),
        400,
        is(BAD_DESTINATION),
    ));
    cases.push(case(
        format!("sms: a channel of {LONG} letters"),
        MESSAGE,
        with(&f.sms(), "channel", json!(letters)),
        400,
        is(format!("Unsupported channel: {letters}")),
    ));
    cases.push(case(
        format!("whatsapp: a template name of {LONG} letters"),
        MESSAGE,
        with(&f.whatsapp(), "template", json!(letters)),
        400,
        is(format!(
            "Template {letters} (en) is not registered in namespace ns"
        )),
    ));
    cases.push(case(
        "whatsapp: a text parameter of 1025 characters",
        MESSAGE,
        with(
            &f.whatsapp(),
            "components",
            json!([{"type": "body", "parameters": [{"type": "text", "text": "é".repeat(1025)}]}]),
        ),
        400,
        is("components[0].parameters[0].text must be at most 1024 characters"),
    ));
    for (field, value, message) in [
        ("name", "é".repeat(201), "name must be 1 to 200 characters"),
        ("name", letters.clone(), "name must be 1 to 200 characters"),
        ("number", digits.clone(), BAD_AGENT_NUMBER),
        (
            "type",
            letters.clone(),
            "type must be one of voice, sms, whatsapp",
        ),
        ("region", letters.clone(), "region must be one of eu, us"),
    ] {
        cases.push(case(
            format!("agents: a {field} of {} characters", value.chars().count()),
            AGENTS,
            with(&f.agent(), field, json!(value)),
            400,
            is(message),
        ));
    }
    f.refuse_all(cases).await;
}

/// The limits are inclusive and count what they say: a session parameter
/// value of 4096 bytes (also as 2048 two-byte characters), 100 parameters,
/// a 64-character name, an agent name of 200 characters; all kept whole.
#[tokio::test]
async fn values_at_their_limits_are_kept_whole() {
    let f = Fixture::new().await;
    let mut params: Vec<Value> = vec![
        json!({"name": "ascii", "value": "v".repeat(4096)}),
        json!({"name": "accented", "value": "é".repeat(2048)}),
        json!({"name": "n".repeat(64), "value": "longest name"}),
    ];
    params.extend((params.len()..100).map(|i| json!({"name": format!("p{i}"), "value": "v"})));
    let params = Value::from(params);
    for (name, path, valid, _) in f.triggers() {
        let body = with(&valid, "session_parameters", params.clone());
        let session = f.accepted(name, path, body).await;
        assert_eq!(session["session_parameters"], params, "{name}");
    }
    let agent_name = "é".repeat(200);
    let mut body = f.agent();
    body["name"] = json!(agent_name);
    let response = f.app.post(AGENTS, &f.key, body).await;
    assert_eq!(response.status(), 201);
    assert_eq!(response.json::<Value>().await.unwrap()["name"], agent_name);
}

/// Every field, every wrong JSON type: step 4 names the field (and, inside
/// `session_parameters` and `components`, the path to the bad value).
#[tokio::test]
async fn every_field_refuses_every_wrong_type() {
    let f = Fixture::new().await;
    let not_strings = [
        json!(7),
        json!(-1.5),
        json!(true),
        json!(["447700900123"]),
        json!({"value": "447700900123"}),
    ];
    let not_booleans = [json!("true"), json!(1), json!(0), json!([true]), json!({})];
    let not_arrays = [
        json!("a=b"),
        json!(7),
        json!(true),
        json!({"name": "n", "value": "v"}),
    ];
    let mut cases = Vec::new();
    let mut each = |name: &str,
                    path: &'static str,
                    valid: &Value,
                    field: &str,
                    values: &[Value],
                    message: &str| {
        for value in values {
            cases.push(case(
                format!("{name}: {field} = {value}"),
                path,
                with(valid, field, value.clone()),
                400,
                is(message),
            ));
        }
    };
    let parameter_shapes = [
        (json!([7]), "session_parameters[0] must be an object"),
        (json!(["n=v"]), "session_parameters[0] must be an object"),
        (json!([[]]), "session_parameters[0] must be an object"),
        (
            json!([{"name": 7, "value": "v"}]),
            "session_parameters[0].name must be a string",
        ),
        (
            json!([{"name": ["n"], "value": "v"}]),
            "session_parameters[0].name must be a string",
        ),
        (
            json!([{"name": "n", "value": [1]}]),
            "session_parameters[0].value must be a string, number or boolean",
        ),
        (
            json!([{"name": "n", "value": {"v": 1}}]),
            "session_parameters[0].value must be a string, number or boolean",
        ),
        (
            json!([{"name": "ok", "value": "v"}, {"name": "n", "value": [1]}]),
            "session_parameters[1].value must be a string, number or boolean",
        ),
    ];
    for (name, path, valid, _) in f.triggers() {
        let mut fields = vec!["agent_id", "from", "to", "status_url"];
        match name {
            "make-call" => each(
                name,
                path,
                &valid,
                "hangup_on_answer_machine",
                &not_booleans,
                "hangup_on_answer_machine must be a boolean",
            ),
            "sms" => fields.push("channel"),
            _ => fields.extend(["namespace", "template", "locale"]),
        }
        for field in fields {
            each(
                name,
                path,
                &valid,
                field,
                &not_strings,
                &format!("{field} must be a string"),
            );
        }
        each(
            name,
            path,
            &valid,
            "session_parameters",
            &not_arrays,
            "session_parameters must be an array",
        );
        for (params, message) in &parameter_shapes {
            each(
                name,
                path,
                &valid,
                "session_parameters",
                std::slice::from_ref(params),
                message,
            );
        }
    }
    let whatsapp = f.whatsapp();
    each(
        "whatsapp",
        MESSAGE,
        &whatsapp,
        "components",
        &not_arrays,
        "components must be an array",
    );
    let text = |value: Value| json!([{"type": "body", "parameters": [value]}]);
    for (components, message) in [
        (json!([7]), "components[0] must be an object"),
        (
            json!([{"type": 7, "parameters": []}]),
            "components[0].type must be one of header, body, button",
        ),
        (
            json!([{"type": "body", "parameters": {"type": "text", "text": "Ada"}}]),
            "components[0].parameters must be an array",
        ),
        (text(json!("Ada")), "components[0].parameters[0] must be an object"),
        (
            text(json!({"type": "text", "text": 7})),
            "components[0].parameters[0].text must be a string",
        ),
        (
            text(json!({"type": ["text"], "text": "Ada"})),
            "components[0].parameters[0].type must be one of text, currency, date_time, image, document, video, payload",
        ),
        (
            text(json!({"type": "currency", "currency": {"fallback_value": "$1", "code": "USD", "amount_1000": "1000"}})),
            "components[0].parameters[0].currency.amount_1000 must be an integer",
        ),
        (
            text(json!({"type": "image", "image": "https://x.example/a.png"})),
            "components[0].parameters[0].image must be an object",
        ),
        (
            json!([{"type": "button", "sub_type": 7, "index": 0}]),
            "components[0].sub_type must be a string",
        ),
        (
            json!([{"type": "button", "sub_type": "url", "index": true}]),
            "components[0].index must be a non-negative integer",
        ),
    ] {
        each("whatsapp", MESSAGE, &whatsapp, "components", &[components], message);
    }
    let agent = f.agent();
    for field in ["name", "type", "number", "region"] {
        each(
            "agents",
            AGENTS,
            &agent,
            field,
            &not_strings,
            &format!("{field} must be a string"),
        );
    }
    each(
        "agents",
        AGENTS,
        &agent,
        "flow",
        &[json!("greet"), json!(7), json!(true), json!([])],
        "flow must be an object",
    );
    f.refuse_all(cases).await;
}

/// Step 2: a body that is not exactly one JSON object (nothing, a scalar,
/// an array even of a valid trigger, two objects, JSON's near relatives)
/// is `Invalid JSON body: <why>`.
#[tokio::test]
async fn bodies_that_are_not_one_json_object_are_invalid_json() {
    let f = Fixture::new().await;
    let mut cases = Vec::new();
    for (name, path, valid) in f.endpoints() {
        let valid = valid.to_string();
        for (what, body) in [
            ("empty", String::new()),
            ("whitespace", " \r\n\t ".to_owned()),
            ("null", "null".to_owned()),
            ("true", "true".to_owned()),
            ("a number", "42".to_owned()),
            ("a negative zero", "-0".to_owned()),
            ("a string", "\"{}\"".to_owned()),
            ("an empty array", "[]".to_owned()),
            ("the valid body in an array", format!("[{valid}]")),
            (
                "the valid body as a JSON string",
                Value::from(valid.as_str()).to_string(),
            ),
            ("the valid body twice", format!("{valid}{valid}")),
            ("the valid body and a comma", format!("{valid},")),
            (
                "the valid body, truncated",
                valid[..valid.len() - 1].to_owned(),
            ),
            ("single quotes", valid.replace('"', "'")),
            ("unquoted keys", r#"{to: "447700900123"}"#.to_owned()),
            ("a trailing comma", valid.replacen('}', ",}", 1)),
            ("a comment", format!("/* hi */ {valid}")),
            ("NaN", r#"{"extra": NaN}"#.to_owned()),
            ("Infinity", r#"{"extra": Infinity}"#.to_owned()),
            ("a hex number", r#"{"extra": 0x10}"#.to_owned()),
            ("a leading zero", r#"{"extra": 010}"#.to_owned()),
            ("a NUL byte after the object", format!("{valid}\0")),
        ] {
            cases.push(case(
                format!("{name}: {what}"),
                path,
                body,
                400,
                Message::InvalidJson,
            ));
        }
    }
    f.refuse_all(cases).await;
}

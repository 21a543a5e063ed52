//! `herald chat AGENT_ID`: talk with an agent from the terminal, as the
//! person it calls or messages.
//!
//! It reads the agent (`GET /agents/{id}`) for its channel and number,
//! triggers a session to `--to` through the simulator, and then does two
//! things at once until the session ends:
//!
//! - every 200 ms it reads the session's transcript
//!   (`GET /sessions/{id}/transcript`) and prints what is new: the agent's
//!   lines as `agent> …`, the person's as `you> …`, and the nodes the flow
//!   entered and the parameters it set as `  · …` (dim on a terminal);
//! - every line typed on stdin goes to the agent as the person's answer
//!   (`POST /simulator/inbound`): a message on SMS and WhatsApp; on a call,
//!   a line of only `0-9*#` is keyed, anything else is said.
//!
//! It is a client of the public API and nothing more: it works against any
//! herald server whose channels are the simulator, with an account's key.

use std::io::IsTerminal;
use std::time::Duration;

use clap::Args;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;

/// How often the transcript is read.
const POLL: Duration = Duration::from_millis(200);
/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Transcript reads in a row that may fail to reach the server (it may be
/// restarting) before chat gives up: 10 seconds' worth.
const MAX_UNREACHABLE_POLLS: u32 = 50;
/// The person by default: the simulator answers numbers ending in 00.
const DEFAULT_PERSON: &str = "447700900100";

#[derive(Args)]
pub struct ChatArgs {
    /// The agent to talk with; the session runs its published version.
    agent_id: String,
    /// The herald server.
    #[arg(long, env = "HERALD_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// The account's API key.
    #[arg(long, env = "HERALD_KEY", hide_env_values = true)]
    key: String,
    /// The person's number. The simulator answers numbers ending in 00;
    /// the last two digits 90 to 95 make a call busy, rejected and so on.
    #[arg(long, default_value = DEFAULT_PERSON)]
    to: String,
    /// A session parameter for the trigger, NAME=VALUE; repeat for more.
    #[arg(long = "param", value_name = "NAME=VALUE", value_parser = parse_param)]
    params: Vec<Param>,
    /// WhatsApp: the registered template the conversation opens with.
    #[arg(long, value_name = "NAMESPACE/NAME/LOCALE", value_parser = parse_template)]
    template: Option<Template>,
    /// WhatsApp: a text for the template's header placeholders, in order;
    /// repeat for more.
    #[arg(long = "header-param", value_name = "TEXT")]
    header_params: Vec<String>,
    /// WhatsApp: a text for the template's body placeholders ({{1}},
    /// {{2}}…), in order; repeat for more.
    #[arg(long = "body-param", value_name = "TEXT")]
    body_params: Vec<String>,
    /// Where herald sends the session's status callbacks. WhatsApp triggers
    /// must name one, and herald refuses its own address: give a receiver
    /// of yours (`herald demo` runs one that prints them).
    #[arg(long, value_name = "URL")]
    status_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Param {
    name: String,
    value: String,
}

fn parse_param(text: &str) -> Result<Param, String> {
    match text.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => Ok(Param {
            name: name.trim().to_owned(),
            value: value.to_owned(),
        }),
        _ => Err(format!("{text:?} is not NAME=VALUE")),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Template {
    namespace: String,
    name: String,
    locale: String,
}

/// `NAMESPACE/NAME/LOCALE`; the namespace is everything before the last two
/// slashes, so it may hold slashes itself.
fn parse_template(text: &str) -> Result<Template, String> {
    let mut parts = text.rsplitn(3, '/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(locale), Some(name), Some(namespace))
            if [locale, name, namespace].iter().all(|p| !p.is_empty()) =>
        {
            Ok(Template {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                locale: locale.to_owned(),
            })
        }
        _ => Err(format!("{text:?} is not NAMESPACE/NAME/LOCALE")),
    }
}

pub async fn run(args: ChatArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.server, &args.key)?;
    let agent = api.get(&format!("/agents/{}", args.agent_id)).await?;
    let text = |field: &str| agent[field].as_str().unwrap_or_default().to_owned();
    let (channel, number, name) = (text("type"), text("number"), text("name"));

    let (path, trigger) = trigger(&args, &channel)?;
    let started = api.post(path, &trigger).await?;
    let session = started["session_id"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("the server's answer has no session_id: {started}"))?
        .to_owned();

    let out = Printer::for_stdout();
    out.note(&format!(
        "session {session}: {name} ({channel} agent {number}) with you ({})",
        args.to
    ));
    if let Some(t) = &args.template {
        out.note(&format!(
            "opened with the template {}/{}/{}",
            t.namespace, t.name, t.locale
        ));
    }
    let person = Person {
        api: &api,
        channel,
        from: args.to.clone(),
        to: number,
        session: session.clone(),
    };
    converse(&api, &person, &out, &session).await
}

/// The trigger for an agent of `channel`: its path and body.
fn trigger(args: &ChatArgs, channel: &str) -> anyhow::Result<(&'static str, Value)> {
    let parameters: Vec<Value> = args
        .params
        .iter()
        .map(|p| json!({"name": p.name, "value": p.value}))
        .collect();
    let mut body = json!({
        "agent_id": args.agent_id,
        "to": args.to,
        "session_parameters": parameters,
    });
    if let Some(url) = &args.status_url {
        body["status_url"] = json!(url);
    }
    let path = match channel {
        "voice" => "/telephony/make-call",
        "sms" => {
            body["channel"] = json!("sms");
            "/messaging/conversation"
        }
        "whatsapp" => {
            let (Some(template), Some(_)) = (&args.template, &args.status_url) else {
                anyhow::bail!(
                    "agent {} is a WhatsApp agent: its conversations open with a registered \
                     template, and its triggers must name a status_url. Give \
                     --template NAMESPACE/NAME/LOCALE (with --header-param and --body-param \
                     for the template's placeholders) and --status-url URL (a receiver of \
                     yours: herald refuses its own address)",
                    args.agent_id
                );
            };
            body["channel"] = json!("whatsapp");
            body["namespace"] = json!(template.namespace);
            body["template"] = json!(template.name);
            body["locale"] = json!(template.locale);
            let mut components = Vec::new();
            for (kind, texts) in [("header", &args.header_params), ("body", &args.body_params)] {
                if !texts.is_empty() {
                    let parameters: Vec<Value> = texts
                        .iter()
                        .map(|t| json!({"type": "text", "text": t}))
                        .collect();
                    components.push(json!({"type": kind, "parameters": parameters}));
                }
            }
            body["components"] = json!(components);
            "/messaging/conversation"
        }
        other => anyhow::bail!("agent {} has an unknown type {other:?}", args.agent_id),
    };
    Ok((path, body))
}

/// Prints the transcript as it grows and sends what is typed, until the
/// session ends.
async fn converse(
    api: &Api,
    person: &Person<'_>,
    out: &Printer,
    session: &str,
) -> anyhow::Result<()> {
    let path = format!("/sessions/{session}/transcript");
    let mut typed = stdin_lines();
    let mut stdin_open = true;
    let mut shown = 0;
    let mut unreachable = 0;
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let transcript = match api.get(&path).await {
                    Ok(t) => t,
                    Err(CallError::Unreachable { .. }) if unreachable < MAX_UNREACHABLE_POLLS => {
                        unreachable += 1;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                unreachable = 0;
                let entries = transcript["transcript"].as_array().map(Vec::as_slice).unwrap_or_default();
                for entry in entries.iter().skip(shown) {
                    if let Some(line) = out.entry(entry) {
                        println!("{line}");
                    }
                }
                shown = shown.max(entries.len());
                if transcript["status"] == "ended" {
                    let outcome = transcript["outcome"].as_str().unwrap_or("unknown");
                    println!("session ended: {outcome}");
                    return Ok(());
                }
            }
            line = typed.recv(), if stdin_open => match line {
                Some(line) => {
                    let line = line.trim();
                    if !line.is_empty() {
                        person.say(line, out).await;
                    }
                }
                // Nothing more to say: the conversation goes on without us
                // (to its timeouts) and is printed until it ends.
                None => stdin_open = false,
            },
        }
    }
}

/// The lines typed on stdin.
///
/// They are read on a thread of their own rather than with tokio's stdin:
/// that one reads on the runtime's blocking pool, whose read cannot be
/// cancelled, so the runtime's shutdown would wait for the user to press
/// Enter after the session has ended. This thread is simply left behind
/// when `herald` exits.
fn stdin_lines() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The person's side of the conversation, on the simulator.
struct Person<'a> {
    api: &'a Api,
    channel: String,
    /// The person's number.
    from: String,
    /// The agent's number.
    to: String,
    session: String,
}

impl Person<'_> {
    /// Sends one typed line. A refusal (such as a voice input after the
    /// call ended) is printed, and the conversation goes on.
    async fn say(&self, line: &str, out: &Printer) {
        let body = json!({
            "channel": self.channel,
            "from": self.from,
            "to": self.to,
            input_field(&self.channel, line): line,
        });
        match self.api.post("/simulator/inbound", &body).await {
            Ok(delivered) if delivered["session_id"] != self.session.as_str() => {
                // Our session ended meanwhile and the agent took the line as
                // the start of a new, inbound one.
                out.note(&format!(
                    "that reached another session: {}",
                    delivered["session_id"].as_str().unwrap_or("?")
                ));
            }
            Ok(_) => {}
            Err(e) => eprintln!("herald chat: {e}"),
        }
    }
}

/// Which field of `POST /simulator/inbound` carries a typed line.
fn input_field(channel: &str, line: &str) -> &'static str {
    if channel != "voice" {
        "text"
    } else if line
        .bytes()
        .all(|b| b.is_ascii_digit() || b == b'*' || b == b'#')
    {
        "digits"
    } else {
        "speech"
    }
}

/// Formats the transcript's entries: plain when stdout is not a terminal
/// (or `NO_COLOR` is set), with the flow's bookkeeping dimmed when it is.
struct Printer {
    dim: bool,
}

impl Printer {
    fn for_stdout() -> Self {
        Printer {
            dim: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        }
    }

    fn note(&self, text: &str) {
        println!("{}", self.noted(text));
    }

    fn noted(&self, text: &str) -> String {
        if self.dim {
            format!("\x1b[2m  · {text}\x1b[0m")
        } else {
            format!("  · {text}")
        }
    }

    /// One transcript entry as a line, or `None` for a kind this version
    /// does not know.
    fn entry(&self, entry: &Value) -> Option<String> {
        let field = |name: &str| entry[name].as_str().unwrap_or_default();
        match field("type") {
            "message" => {
                let who = if field("direction") == "inbound" {
                    "you> "
                } else {
                    "agent> "
                };
                // Later lines of a message line up under its first.
                let text =
                    field("text").replace('\n', &format!("\n{:width$}", "", width = who.len()));
                Some(format!("{who}{text}"))
            }
            "node" => Some(self.noted(&format!("node {}", field("node")))),
            "parameter" => Some(self.noted(&format!("{} = {}", field("name"), field("value")))),
            _ => None,
        }
    }
}

/// The server's API, with the account's key.
struct Api {
    base: String,
    key: String,
    client: reqwest::Client,
}

/// Why a call to the server failed.
#[derive(Debug)]
enum CallError {
    /// The server answered with an error: its `message`.
    Refused {
        what: String,
        status: u16,
        message: String,
    },
    /// No answer.
    Unreachable { base: String, error: reqwest::Error },
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Refused {
                what,
                status,
                message,
            } => write!(f, "{message} (the server answered {status} to {what})"),
            CallError::Unreachable { base, error } => {
                write!(f, "cannot reach herald at {base}: {error}")?;
                let mut source = std::error::Error::source(error);
                while let Some(cause) = source {
                    write!(f, ": {cause}")?;
                    source = cause.source();
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for CallError {}

impl Api {
    fn new(server: &str, key: &str) -> anyhow::Result<Self> {
        let base = server.trim_end_matches('/').to_owned();
        match reqwest::Url::parse(&base) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => {}
            _ => {
                anyhow::bail!("--server {server:?} is not an http URL, like http://127.0.0.1:8080")
            }
        }
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()?;
        Ok(Api {
            base,
            key: key.trim().to_owned(),
            client,
        })
    }

    async fn get(&self, path: &str) -> Result<Value, CallError> {
        let request = self.client.get(format!("{}{path}", self.base));
        self.send(request, format!("GET {path}")).await
    }

    async fn post(&self, path: &str, body: &Value) -> Result<Value, CallError> {
        let request = self.client.post(format!("{}{path}", self.base)).json(body);
        self.send(request, format!("POST {path}")).await
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        what: String,
    ) -> Result<Value, CallError> {
        let unreachable = |error| CallError::Unreachable {
            base: self.base.clone(),
            error,
        };
        let response = request
            .header("X-Vgai-Key", &self.key)
            .send()
            .await
            .map_err(unreachable)?;
        let status = response.status();
        let body = response.bytes().await.map_err(unreachable)?;
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        if status.is_success() {
            return json.ok_or_else(|| CallError::Refused {
                what,
                status: status.as_u16(),
                message: "the answer is not JSON".into(),
            });
        }
        // Errors are {"status", "message"}; anything else is shown as it came.
        let message = json
            .as_ref()
            .and_then(|j| j["message"].as_str())
            .map(str::to_owned)
            .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_owned());
        Err(CallError::Refused {
            what,
            status: status.as_u16(),
            message,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_name_equals_value() {
        assert_eq!(
            parse_param("NAME=Ada Lovelace").unwrap(),
            Param {
                name: "NAME".into(),
                value: "Ada Lovelace".into()
            }
        );
        // The value may hold '=' and may be empty.
        assert_eq!(parse_param("Q=a=b").unwrap().value, "a=b");
        assert_eq!(parse_param("EMPTY=").unwrap().value, "");
        assert!(parse_param("NAME").is_err());
        assert!(parse_param("=x").is_err());
    }

    #[test]
    fn templates_are_namespace_name_locale() {
        assert_eq!(
            parse_template("demo_namespace/delivery_notice/en").unwrap(),
            Template {
                namespace: "demo_namespace".into(),
                name: "delivery_notice".into(),
                locale: "en".into()
            }
        );
        assert_eq!(
            parse_template("a/b/c/en_GB").unwrap().namespace,
            "a/b",
            "the namespace takes the extra slashes"
        );
        for bad in ["delivery_notice", "ns/name", "ns//en", "/name/en"] {
            assert!(parse_template(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn typed_lines_are_keyed_or_said_on_calls_and_texts_elsewhere() {
        assert_eq!(input_field("voice", "42#"), "digits");
        assert_eq!(input_field("voice", "*9"), "digits");
        assert_eq!(input_field("voice", "forty two"), "speech");
        assert_eq!(input_field("voice", "4 2"), "speech");
        assert_eq!(input_field("sms", "42"), "text");
        assert_eq!(input_field("whatsapp", "yes"), "text");
    }

    #[test]
    fn entries_print_as_lines() {
        let plain = Printer { dim: false };
        let line = |e: Value| plain.entry(&e);
        assert_eq!(
            line(json!({"type": "message", "direction": "outbound", "text": "Hello?"})).unwrap(),
            "agent> Hello?"
        );
        assert_eq!(
            line(
                json!({"type": "message", "direction": "inbound", "text": "yes", "input": "text"})
            )
            .unwrap(),
            "you> yes"
        );
        assert_eq!(
            line(json!({"type": "message", "direction": "outbound", "text": "one\ntwo"})).unwrap(),
            "agent> one\n       two"
        );
        assert_eq!(
            line(json!({"type": "node", "node": "ask"})).unwrap(),
            "  · node ask"
        );
        assert_eq!(
            line(json!({"type": "parameter", "name": "ANSWER", "value": "yes"})).unwrap(),
            "  · ANSWER = yes"
        );
        assert_eq!(line(json!({"type": "something new"})), None);
        let dim = Printer { dim: true };
        assert_eq!(
            dim.entry(&json!({"type": "node", "node": "ask"})).unwrap(),
            "\x1b[2m  · node ask\x1b[0m"
        );
    }
}

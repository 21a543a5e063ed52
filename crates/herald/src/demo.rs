//! `herald demo`: the embedded server with a demo account, a published agent
//! of each type running the default flow, the example agents of
//! `examples/agents/` (published, each with a number of its own), the
//! WhatsApp templates they use, a local callback receiver that prints what
//! it gets, and ready-to-paste commands: curl for each example of the seed
//! documents, and for each example agent a trigger and `herald chat`.

use std::io::Write;

use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::routing::post;
use chrono::Utc;
use herald_core::flow::FlowDefinition;
use herald_core::keys::{generate_key, hash_key};
use herald_core::webhook::SigningKey;
use herald_core::{AccountId, Channel};
use herald_store::{AgentPatch, NewAgent, Store, StoreError, Template};
use tokio::net::TcpListener;

use herald_server::Config;

const ACCOUNT: &str = "demo";
const TEMPLATE: (&str, &str, &str) = ("demo_namespace", "appointment_reminder", "en");
/// The template the delivery notice example opens with: {{1}} is the
/// parcel's tracking number, {{2}} its delivery day.
const DELIVERY_TEMPLATE: (&str, &str, &str) = ("demo_namespace", "delivery_notice", "en");
const DELIVERY_TEMPLATE_BODY: &str = "Your parcel {{1}} is on its way and will come on {{2}}.";
/// Who the printed commands play: the simulator answers numbers ending in 00.
const PERSON: &str = "447700900100";

/// The demo's agents: name, channel, number.
const AGENTS: [(&str, Channel, &str); 3] = [
    ("Demo voice agent", Channel::Voice, "447700900001"),
    ("Demo SMS agent", Channel::Sms, "447700900002"),
    ("Demo WhatsApp agent", Channel::Whatsapp, "447700900003"),
];

/// An example agent of `examples/agents/`, as the demo publishes it.
struct Example {
    /// The file: a `POST /agents` body without its `number`.
    json: &'static str,
    number: &'static str,
    /// What the printed commands send as session parameters.
    parameters: &'static [(&'static str, &'static str)],
    /// A first answer for the printed `POST /simulator/inbound`: its field
    /// and text.
    reply: (&'static str, &'static str),
}

const EXAMPLES: [Example; 3] = [
    Example {
        json: include_str!("../../../examples/agents/appointment-reminder.json"),
        number: "447700900011",
        parameters: &[
            ("NAME", "Diane"),
            ("APPOINTMENT_DATE", "Monday 3 March"),
            ("APPOINTMENT_TIME", "10:00"),
        ],
        reply: ("text", "Can I reschedule?"),
    },
    Example {
        json: include_str!("../../../examples/agents/delivery-notice.json"),
        number: "447700900012",
        parameters: &[
            ("TRACKING_NUMBER", "TRK-2041"),
            ("DELIVERY_DATE", "Friday 6 June"),
        ],
        reply: ("text", "the tracking link please"),
    },
    Example {
        json: include_str!("../../../examples/agents/satisfaction-survey.json"),
        number: "447700900013",
        parameters: &[("NAME", "Diane")],
        reply: ("digits", "9"),
    },
];

/// An example's file, read and checked as `POST /agents` would.
struct ExampleAgent {
    name: String,
    channel: Channel,
    flow: FlowDefinition,
}

impl Example {
    fn agent(&self) -> anyhow::Result<ExampleAgent> {
        let value: serde_json::Value = serde_json::from_str(self.json)?;
        let field = |name: &str| {
            value[name]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| anyhow::anyhow!("an example agent has no {name}"))
        };
        let name = field("name")?;
        let channel: Channel = field("type")?
            .parse()
            .map_err(|_| anyhow::anyhow!("example agent {name}: unknown type"))?;
        let flow = FlowDefinition::from_json(&value["flow"], channel)
            .map_err(|e| anyhow::anyhow!("example agent {name}: {e}"))?;
        Ok(ExampleAgent {
            name,
            channel,
            flow,
        })
    }
}

pub async fn run(mut config: Config, receiver_addr: std::net::SocketAddr) -> anyhow::Result<()> {
    // The demo's receiver is on this machine.
    config.allow_private_callbacks = true;
    let listener = TcpListener::bind(config.listen).await?;
    let server = herald_server::start(config, listener).await?;
    let store = server.app().store.clone();

    let key = generate_key();
    let account = store.add_key(ACCOUNT, hash_key(&key)).await?;
    let region = server.app().config.region;
    let agents = ensure_agents(store.as_ref(), account, region).await?;
    let examples = ensure_examples(store.as_ref(), account, region).await?;
    ensure_templates(store.as_ref(), account).await?;
    server.app().directory.reload_keys(store.as_ref()).await?;
    server.app().directory.reload_agents(store.as_ref()).await?;
    server.app().directory.reload_rates(store.as_ref()).await?;
    let secret = server
        .app()
        .directory
        .account(account)
        .map(|a| a.webhook_secret)
        .unwrap_or_default();

    let receiver = TcpListener::bind(receiver_addr).await?;
    let status_url = format!("http://{}/callbacks", receiver.local_addr()?);
    tokio::spawn(receive_callbacks(receiver, secret));

    let base = format!("http://{}", server.local_addr());
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", instructions(&base, &key, &agents, &status_url))?;
    writeln!(
        out,
        "{}",
        example_instructions(&base, &key, &examples, &status_url)
    )?;
    writeln!(out, "Press Ctrl-C to stop.")?;
    drop(out);
    server.run_until_signal().await;
    Ok(())
}

async fn ensure_agents(
    store: &dyn Store,
    account: AccountId,
    region: herald_core::Region,
) -> anyhow::Result<Vec<String>> {
    let existing = store.agents(account).await?;
    let mut ids = Vec::new();
    for (name, channel, number) in AGENTS {
        let agent = match existing
            .iter()
            .find(|a| a.name == name && a.channel == channel)
        {
            Some(agent) => agent.clone(),
            None => store
                .create_agent(NewAgent {
                    account_id: account,
                    name: name.into(),
                    channel,
                    number: number.into(),
                    region,
                    flow: FlowDefinition::default_for(channel),
                    connection_id: None,
                })
                .await
                .map_err(|e| anyhow::anyhow!("creating the demo agents: {e}"))?,
        };
        if agent.current_version.is_none() {
            store.publish_agent(account, &agent.agent_id).await?;
        }
        // The seed's highest tier, so the examples can be pasted quickly.
        store.set_rate(&agent.agent_id, 5).await?;
        ids.push(agent.agent_id.to_string());
    }
    Ok(ids)
}

/// Publishes each example agent, and republishes it when its file changed
/// since the last demo on this database; returns their ids in `EXAMPLES`'
/// order.
async fn ensure_examples(
    store: &dyn Store,
    account: AccountId,
    region: herald_core::Region,
) -> anyhow::Result<Vec<String>> {
    let existing = store.agents(account).await?;
    let mut ids = Vec::new();
    for example in &EXAMPLES {
        let wanted = example.agent()?;
        let found = existing
            .iter()
            .find(|a| a.name == wanted.name && a.channel == wanted.channel);
        let agent = match found {
            Some(agent) if agent.flow == wanted.flow => agent.clone(),
            Some(agent) => {
                let patch = AgentPatch {
                    flow: Some(wanted.flow),
                    ..Default::default()
                };
                let updated = store.update_agent(account, &agent.agent_id, patch).await?;
                store.publish_agent(account, &agent.agent_id).await?;
                updated.unwrap_or_else(|| agent.clone())
            }
            None => store
                .create_agent(NewAgent {
                    account_id: account,
                    name: wanted.name,
                    channel: wanted.channel,
                    number: example.number.into(),
                    region,
                    flow: wanted.flow,
                    connection_id: None,
                })
                .await
                .map_err(|e| anyhow::anyhow!("creating the example agents: {e}"))?,
        };
        if agent.current_version.is_none() {
            store.publish_agent(account, &agent.agent_id).await?;
        }
        store.set_rate(&agent.agent_id, 5).await?;
        ids.push(agent.agent_id.to_string());
    }
    Ok(ids)
}

async fn ensure_templates(store: &dyn Store, account: AccountId) -> anyhow::Result<()> {
    let templates = [
        (
            TEMPLATE,
            Some("Reminder for {{1}}"),
            "Your appointment is on {{1}}. Reply YES to confirm.",
        ),
        (DELIVERY_TEMPLATE, None, DELIVERY_TEMPLATE_BODY),
    ];
    for ((namespace, name, locale), header, body) in templates {
        let created = store
            .create_template(
                account,
                Template {
                    namespace: namespace.into(),
                    name: name.into(),
                    locale: locale.into(),
                    header: header.map(Into::into),
                    body: body.into(),
                    created_at: Utc::now(),
                },
            )
            .await;
        match created {
            Ok(()) | Err(StoreError::Conflict(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn instructions(base: &str, key: &str, agents: &[String], status_url: &str) -> String {
    let (voice, sms, whatsapp) = (&agents[0], &agents[1], &agents[2]);
    let (namespace, template, locale) = TEMPLATE;
    format!(
        r#"herald demo is running at {base}

API key (account "{ACCOUNT}"): {key}
Callbacks go to a local receiver that prints them: {status_url}
Agents: voice {voice}, sms {sms}, whatsapp {whatsapp}
The simulator picks each outcome from the last two digits of "to" (90 busy,
91 rejected, 92 timeout, 93 failed, 94 cancelled, 95 answering machine; any
other number is answered).

# A voice call, as in the seed's curl example
curl -s -X POST {base}/telephony/make-call \
  -H 'X-Vgai-Key: {key}' -H 'Content-Type: application/json' \
  -d '{{"agent_id": "{voice}", "to": "9725411116037", "hangup_on_answer_machine": false,
       "session_parameters": [{{"name": "PROPERTY_VALUE", "value": "500"}}]}}'

# A voice call to a SIP endpoint that is busy, with a status_url
curl -s -X POST {base}/telephony/make-call \
  -H 'X-Vgai-Key: {key}' \
  -d '{{"agent_id": "{voice}", "to": "sip:447700900190@sip.example.com", "status_url": "{status_url}",
       "session_parameters": [{{"name": "CALLER_NAME", "value": "Diane Miller"}}]}}'

# An SMS session
curl -s -X POST {base}/messaging/conversation \
  -H 'X-Vgai-Key: {key}' \
  -d '{{"to": "447700900123", "agent_id": "{sms}", "channel": "sms", "status_url": "{status_url}",
       "session_parameters": [{{"name": "CALLER_NAME", "value": "Diane Miller"}}]}}'

# A WhatsApp session with a template, as in the seed's request body
curl -s -X POST {base}/messaging/conversation \
  -H 'X-Vgai-Key: {key}' \
  -d '{{"components": [
         {{"type": "header", "parameters": [{{"type": "text", "text": "Diane"}}]}},
         {{"type": "body", "parameters": [{{"type": "text", "text": "Monday 10:00"}}]}}],
       "namespace": "{namespace}", "template": "{template}", "locale": "{locale}",
       "to": "447700900123", "agent_id": "{whatsapp}", "channel": "whatsapp",
       "status_url": "{status_url}"}}'

# The legacy form: trigger by the agent's published number
curl -s -X POST {base}/telephony/make-call \
  -H 'X-Vgai-Key: {key}' -d '{{"from": "447700900001", "to": "447700900123"}}'

# What happened (paste a session_id from above)
curl -s {base}/sessions/SESSION_ID -H 'X-Vgai-Key: {key}'
curl -s '{base}/sessions?limit=5' -H 'X-Vgai-Key: {key}'"#
    )
}

/// For each example agent: a trigger to paste, a first answer as the
/// person, and the `herald chat` command that does both in a terminal.
fn example_instructions(base: &str, key: &str, ids: &[String], status_url: &str) -> String {
    let mut out = format!(
        r#"
Example agents (examples/agents/README.md tells what each does, branch by branch).
The person is {PERSON}: answer as them through POST /simulator/inbound and
read the conversation with GET /sessions/SESSION_ID/transcript, or let
`herald chat` do both in another terminal (from a checkout,
`cargo run -p herald -- chat ...`): it prints the conversation as it happens
and sends each line you type (on a call, digits are keyed and words said).
"#
    );
    for (example, id) in EXAMPLES.iter().zip(ids) {
        let agent = example
            .agent()
            .expect("ensure_examples read every example first");
        let parameters: Vec<String> = example
            .parameters
            .iter()
            .map(|(name, value)| format!(r#"{{"name": "{name}", "value": "{value}"}}"#))
            .collect();
        let parameters = parameters.join(", ");
        let chat_parameters: Vec<String> = example
            .parameters
            .iter()
            .map(|(name, value)| format!("--param '{name}={value}'"))
            .collect();
        let mut chat = format!(
            "herald chat {id} --server {base} --key {key} \\\n  {}",
            chat_parameters.join(" ")
        );
        let value = |name: &str| {
            example
                .parameters
                .iter()
                .find(|(n, _)| *n == name)
                .map_or("", |(_, v)| *v)
        };
        let (kind, trigger) = match agent.channel {
            Channel::Voice => (
                "a voice",
                format!(
                    r#"curl -s -X POST {base}/telephony/make-call -H 'X-Vgai-Key: {key}' \
  -d '{{"agent_id": "{id}", "to": "{PERSON}",
       "session_parameters": [{parameters}]}}'"#
                ),
            ),
            Channel::Sms => (
                "an SMS",
                format!(
                    r#"curl -s -X POST {base}/messaging/conversation -H 'X-Vgai-Key: {key}' \
  -d '{{"agent_id": "{id}", "to": "{PERSON}", "channel": "sms", "status_url": "{status_url}",
       "session_parameters": [{parameters}]}}'"#
                ),
            ),
            Channel::Whatsapp => {
                // The template's {{1}} and {{2}} are the parcel and its day.
                let (namespace, template, locale) = DELIVERY_TEMPLATE;
                let (tracking, day) = (value("TRACKING_NUMBER"), value("DELIVERY_DATE"));
                chat += &format!(
                    " \\\n  --template {namespace}/{template}/{locale} \
                     --body-param '{tracking}' --body-param '{day}' \\\n  \
                     --status-url {status_url}"
                );
                (
                    "a WhatsApp",
                    format!(
                        r#"curl -s -X POST {base}/messaging/conversation -H 'X-Vgai-Key: {key}' \
  -d '{{"agent_id": "{id}", "to": "{PERSON}", "channel": "whatsapp", "status_url": "{status_url}",
       "namespace": "{namespace}", "template": "{template}", "locale": "{locale}",
       "components": [{{"type": "body", "parameters": [{{"type": "text", "text": "{tracking}"}},
                                                      {{"type": "text", "text": "{day}"}}]}}],
       "session_parameters": [{parameters}]}}'"#
                    ),
                )
            }
        };
        let (field, text) = example.reply;
        let then = match agent.channel {
            Channel::Voice => "then, as the person (a call waits 10 s for an answer)",
            _ => "then, as the person",
        };
        out += &format!(
            r#"
# {name}: {kind} agent, {id}, number {number}
{trigger}
# {then}:
curl -s -X POST {base}/simulator/inbound -H 'X-Vgai-Key: {key}' \
  -d '{{"channel": "{channel}", "from": "{PERSON}", "to": "{number}", "{field}": "{text}"}}'
# or all of it in a terminal:
{chat}
"#,
            name = agent.name,
            channel = agent.channel,
            number = example.number,
        );
    }
    out
}

/// Prints each callback and whether its signature checks out.
async fn receive_callbacks(listener: TcpListener, secret: String) {
    let key = SigningKey::from_secret(&secret).ok();
    let app = axum::Router::new().route(
        "/callbacks",
        post(move |headers: HeaderMap, body: Bytes| {
            let key = key.clone();
            async move {
                let header = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                let id = header("webhook-id");
                let timestamp: i64 = header("webhook-timestamp").parse().unwrap_or_default();
                let valid = key
                    .as_ref()
                    .is_some_and(|k| k.verify(&id, timestamp, &body, &header("webhook-signature")));
                println!(
                    "callback {id} (signature {}): {}",
                    if valid { "valid" } else { "INVALID" },
                    String::from_utf8_lossy(&body)
                );
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "the demo's callback receiver stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_agents_are_valid_for_their_channels() {
        let channels: Vec<Channel> = EXAMPLES
            .iter()
            .map(|e| e.agent().unwrap().channel)
            .collect();
        assert_eq!(channels, [Channel::Sms, Channel::Whatsapp, Channel::Voice]);
    }

    #[test]
    fn the_printed_commands_send_every_parameter_an_example_declares() {
        for example in &EXAMPLES {
            let agent = example.agent().unwrap();
            let sent: Vec<&str> = example.parameters.iter().map(|(n, _)| *n).collect();
            let declared: Vec<&str> = agent
                .flow
                .parameters
                .iter()
                .map(|p| p.name.as_str())
                .collect();
            assert_eq!(sent, declared, "{}", agent.name);
        }
    }

    #[test]
    fn each_example_gets_a_trigger_an_answer_and_a_chat_command() {
        let ids: Vec<String> = ["a1", "b2", "c3"].map(String::from).to_vec();
        let text = example_instructions("http://h", "KEY", &ids, "http://r/callbacks");
        for (id, endpoint) in ids.iter().zip([
            "/messaging/conversation",
            "/messaging/conversation",
            "/telephony/make-call",
        ]) {
            assert!(
                text.contains(&format!("herald chat {id} --server http://h --key KEY")),
                "{text}"
            );
            let trigger =
                format!("{endpoint} -H 'X-Vgai-Key: KEY' \\\n  -d '{{\"agent_id\": \"{id}\"");
            assert!(text.contains(&trigger), "{text}");
        }
        assert!(
            text.contains("--template demo_namespace/delivery_notice/en --body-param 'TRK-2041'")
        );
        assert!(text.contains(r#""to": "447700900013", "digits": "9""#));
    }
}

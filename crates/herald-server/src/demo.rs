//! `herald demo`: the embedded server with a demo account, a published agent
//! of each type, a registered WhatsApp template, a local callback receiver
//! that prints what it gets, and ready-to-paste curl commands for each
//! example of the seed documents.

use std::io::Write;

use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::routing::post;
use chrono::Utc;
use herald_core::flow::FlowDefinition;
use herald_core::keys::{generate_key, hash_key};
use herald_core::webhook::SigningKey;
use herald_core::{AccountId, Channel};
use herald_store::{NewAgent, Store, StoreError, Template};
use tokio::net::TcpListener;

use crate::Config;

const ACCOUNT: &str = "demo";
const TEMPLATE: (&str, &str, &str) = ("demo_namespace", "appointment_reminder", "en");

/// The demo's agents: name, channel, number.
const AGENTS: [(&str, Channel, &str); 3] = [
    ("Demo voice agent", Channel::Voice, "447700900001"),
    ("Demo SMS agent", Channel::Sms, "447700900002"),
    ("Demo WhatsApp agent", Channel::Whatsapp, "447700900003"),
];

pub async fn run(mut config: Config, receiver_addr: std::net::SocketAddr) -> anyhow::Result<()> {
    // The demo's receiver is on this machine.
    config.allow_private_callbacks = true;
    let listener = TcpListener::bind(config.listen).await?;
    let server = crate::start(config, listener).await?;
    let store = server.app().store.clone();

    let key = generate_key();
    let account = store.add_key(ACCOUNT, hash_key(&key)).await?;
    let agents = ensure_agents(store.as_ref(), account, server.app().config.region).await?;
    ensure_template(store.as_ref(), account).await?;
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

async fn ensure_template(store: &dyn Store, account: AccountId) -> anyhow::Result<()> {
    let (namespace, name, locale) = TEMPLATE;
    let created = store
        .create_template(
            account,
            Template {
                namespace: namespace.into(),
                name: name.into(),
                locale: locale.into(),
                header: Some("Reminder for {{1}}".into()),
                body: "Your appointment is on {{1}}. Reply YES to confirm.".into(),
                created_at: Utc::now(),
            },
        )
        .await;
    match created {
        Ok(()) | Err(StoreError::Conflict(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
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
curl -s '{base}/sessions?limit=5' -H 'X-Vgai-Key: {key}'

Press Ctrl-C to stop."#
    )
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

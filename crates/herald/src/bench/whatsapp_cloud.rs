//! `herald bench`'s WhatsApp Cloud scenario ([`super::providers`]): a
//! server whose WhatsApp agent runs on a WhatsApp Cloud connection,
//! against the loopback fake of Meta's Cloud API the tests use (it takes
//! each template and posts its `sent`, `delivered` and `read` in signed
//! webhook envelopes), until each status has reached the business's
//! `status_url` (WhatsApp triggers must name one). The Cloud API carries
//! no calls: messages only.

use std::path::Path;
use std::time::Instant;

use anyhow::bail;
use herald_server::testing::whatsapp_cloud::{FakeWhatsapp, DISPLAY_PHONE_NUMBER};
use serde_json::{json, Value};

use super::providers::{measure_messages, Fake, Figures};
use super::{free_port, Receiver, Server};

const NUMBER_ID: &str = "106540352242922";
const ACCESS_TOKEN: &str = "bench-access-token";
const APP_SECRET: &str = "bench-app-secret";
/// The URL the server's webhooks are named under; the fake reaches them
/// on the server's own address instead.
const PUBLIC_URL: &str = "https://herald.bench.invalid";

pub async fn measure(dir: &Path, messages: usize, connections: usize) -> anyhow::Result<Figures> {
    let meta = FakeWhatsapp::start(NUMBER_ID, ACCESS_TOKEN, APP_SECRET).await;
    let secret_key = herald_core::secret::Sealer::generate_key();
    let server = Server::start_with_env(
        dir,
        "whatsapp_cloud",
        &["--public-url", PUBLIC_URL, "--allow-private-callbacks"],
        &[
            ("HERALD_SECRET_KEY", secret_key.as_str()),
            ("HERALD_WHATSAPP_API_URL", meta.url.as_str()),
        ],
    )
    .await?;
    let (status, body) = server
        .call(
            "POST",
            "/connections",
            Some(json!({"name": "WhatsApp", "provider": "whatsapp_cloud",
                "settings": {"messages_per_second": 10000},
                "credentials": {"phone_number_id": NUMBER_ID, "access_token": ACCESS_TOKEN,
                                "app_secret": APP_SECRET, "verify_token": "bench-verify"}})),
        )
        .await?;
    if status != 201 {
        bail!(
            "creating the connection: {status} {}",
            String::from_utf8_lossy(&body)
        );
    }
    let connection: Value = serde_json::from_slice(&body)?;
    let webhook = connection["webhooks"]["webhook"]
        .as_str()
        .and_then(|url| url.strip_prefix(PUBLIC_URL))
        .unwrap_or_default();
    meta.deliver_to(&format!("http://{}{webhook}", server.addr));
    // The agent's number is the business number Meta's envelopes name.
    let agent = server
        .publish_agent(json!({"name": "bench", "type": "whatsapp",
                              "number": DISPLAY_PHONE_NUMBER,
                              "connection_id": connection["connection_id"]}))
        .await?;
    let (status, _) = server
        .call(
            "POST",
            "/whatsapp/templates",
            Some(
                json!({"namespace": "bench", "name": "hello", "locale": "en-GB",
                        "body": "Hello {{1}}, this is herald."}),
            ),
        )
        .await?;
    if status != 201 {
        bail!("registering the template: {status}");
    }
    let receiver = Receiver::start(free_port()?).await?;
    let trigger = json!({"agent_id": agent, "to": "447700900123", "channel": "whatsapp",
        "status_url": receiver.url(),
        "namespace": "bench", "template": "hello", "locale": "en-GB",
        "components": [{"type": "body", "parameters": [{"type": "text", "text": "Ada"}]}]});
    let started = Instant::now();
    let (messages, drained) =
        measure_messages(&server, &meta, trigger, messages, connections).await?;
    // Until every status has reached the business too.
    let told = receiver.wait_for(3 * messages).await?;
    let last = told.iter().map(|(at, _)| *at).max().unwrap_or(started);
    let messages_elapsed = drained.max(last - started);
    Ok(Figures {
        provider: meta.name(),
        voice: None,
        messages,
        messages_elapsed,
    })
}

impl Fake for FakeWhatsapp {
    fn name(&self) -> &'static str {
        "WhatsApp Cloud"
    }

    fn problems(&self) -> Vec<String> {
        FakeWhatsapp::problems(self)
    }

    fn messages_taken(&self) -> usize {
        self.messages().len()
    }
}

//! `herald bench`'s Vonage scenarios ([`super::providers`]): a server
//! whose agents run on a Vonage connection, against the loopback fake of
//! Vonage the tests use (it plays the calls' NCCO and posts the messages'
//! `submitted` and `delivered`, signed).

use std::path::Path;
use std::time::Duration;

use anyhow::bail;
use herald_server::testing::vonage::FakeVonage;
use serde_json::{json, Value};

use super::providers::{measure_on, Fake, Figures, VoiceFake};
use super::Server;

const APPLICATION: &str = "b0a7c1de-0000-4000-8000-00000000be0c";
const SIGNATURE_SECRET: &str = "bench-signature-secret";
const API_KEY: &str = "bench";
/// The URL the server's webhooks are named under; the fake reaches them
/// on the server's own address instead.
const PUBLIC_URL: &str = "https://herald.bench.invalid";

pub async fn measure(
    dir: &Path,
    rate: f64,
    seconds: Duration,
    messages: usize,
    connections: usize,
) -> anyhow::Result<Figures> {
    let vonage = FakeVonage::start(APPLICATION).await;
    let secret_key = herald_core::secret::Sealer::generate_key();
    let server = Server::start_with_env(
        dir,
        "vonage",
        &["--public-url", PUBLIC_URL],
        &[
            ("HERALD_SECRET_KEY", secret_key.as_str()),
            ("HERALD_VONAGE_API_URL", vonage.url.as_str()),
        ],
    )
    .await?;
    let (status, body) = server
        .call(
            "POST",
            "/connections",
            Some(json!({"name": "Vonage", "provider": "vonage",
                "settings": {"calls_per_second": 10000, "messages_per_second": 10000},
                "credentials": {
                    "application_id": APPLICATION,
                    "private_key": herald_channels::testing::vonage_private_key(),
                    "api_key": API_KEY, "api_secret": "bench-api-secret",
                    "signature_secret": SIGNATURE_SECRET}})),
        )
        .await?;
    if status != 201 {
        bail!(
            "creating the connection: {status} {}",
            String::from_utf8_lossy(&body)
        );
    }
    let connection: Value = serde_json::from_slice(&body)?;
    vonage.deliver_to(
        &connection["webhooks"],
        PUBLIC_URL,
        &format!("http://{}", server.addr),
        SIGNATURE_SECRET,
        API_KEY,
    );
    let connection_id = connection["connection_id"].clone();
    measure_on(
        &server,
        &vonage,
        connection_id,
        80_000,
        rate,
        seconds,
        messages,
        connections,
    )
    .await
}

impl Fake for FakeVonage {
    fn name(&self) -> &'static str {
        "Vonage"
    }

    fn problems(&self) -> Vec<String> {
        FakeVonage::problems(self)
    }

    fn messages_taken(&self) -> usize {
        self.messages().len()
    }
}

impl VoiceFake for FakeVonage {
    fn prefix(&self) -> &'static str {
        "4477"
    }

    fn person_answers(&self, to: &str, keys: &str) {
        FakeVonage::person_answers(self, to, keys)
    }

    fn calls_ending(&self, words: &str) -> usize {
        self.calls()
            .iter()
            .filter(|c| c.said.last().map(String::as_str) == Some(words))
            .count()
    }

    fn turn_times(&self) -> Vec<(&'static str, Duration)> {
        FakeVonage::turn_times(self)
    }

    fn input_turn(&self) -> &'static str {
        "input"
    }
}

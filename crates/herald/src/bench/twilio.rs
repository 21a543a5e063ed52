//! `herald bench`'s Twilio scenarios ([`super::providers`]): a server
//! whose agents run on a Twilio connection, against the loopback fake of
//! Twilio the tests use (it runs the calls' TwiML and posts the messages'
//! `sent` and `delivered`, signed).

use std::path::Path;
use std::time::Duration;

use anyhow::bail;
use herald_server::testing::twilio::FakeTwilio;
use serde_json::{json, Value};

use super::providers::{measure_on, Fake, Figures, VoiceFake};
use super::Server;

const ACCOUNT: &str = "AC0000000000000000000000000000be0c";
const AUTH_TOKEN: &str = "bench-auth-token";
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
    let twilio = FakeTwilio::start(ACCOUNT, AUTH_TOKEN).await;
    let secret_key = herald_core::secret::Sealer::generate_key();
    let server = Server::start_with_env(
        dir,
        "twilio",
        &["--public-url", PUBLIC_URL],
        &[
            ("HERALD_SECRET_KEY", secret_key.as_str()),
            ("HERALD_TWILIO_API_URL", twilio.url.as_str()),
        ],
    )
    .await?;
    let (status, body) = server
        .call(
            "POST",
            "/connections",
            Some(json!({"name": "Twilio", "provider": "twilio",
                "settings": {"calls_per_second": 10000, "messages_per_second": 10000},
                "credentials": {"account_sid": ACCOUNT, "auth_token": AUTH_TOKEN}})),
        )
        .await?;
    if status != 201 {
        bail!(
            "creating the connection: {status} {}",
            String::from_utf8_lossy(&body)
        );
    }
    let connection: Value = serde_json::from_slice(&body)?;
    twilio.deliver_to(PUBLIC_URL, &format!("http://{}", server.addr));
    let connection_id = connection["connection_id"].clone();
    measure_on(
        &server,
        &twilio,
        connection_id,
        81_000,
        rate,
        seconds,
        messages,
        connections,
    )
    .await
}

impl Fake for FakeTwilio {
    fn name(&self) -> &'static str {
        "Twilio"
    }

    fn problems(&self) -> Vec<String> {
        FakeTwilio::problems(self)
    }

    fn messages_taken(&self) -> usize {
        self.messages().len()
    }
}

impl VoiceFake for FakeTwilio {
    fn prefix(&self) -> &'static str {
        "4478"
    }

    fn person_answers(&self, to: &str, keys: &str) {
        FakeTwilio::person_answers(self, to, keys)
    }

    fn calls_ending(&self, words: &str) -> usize {
        self.calls()
            .iter()
            .filter(|c| c.said.last().map(String::as_str) == Some(words))
            .count()
    }

    fn turn_times(&self) -> Vec<(&'static str, Duration)> {
        FakeTwilio::turn_times(self)
    }

    fn input_turn(&self) -> &'static str {
        "gather"
    }
}

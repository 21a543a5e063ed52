//! `herald bench`'s Twilio scenarios, as Vonage's ([`super::vonage`]) but
//! on a Twilio connection against the loopback fake of Twilio the tests
//! use: voice turns answered as TwiML under load, and SMS through the
//! Messages API with their statuses back by signed callbacks.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use herald_server::testing::twilio::FakeTwilio;
use serde_json::{json, Value};

use super::load::{self, Stop};
use super::vonage::{two_questions, Figures};
use super::{expect_only, Server};

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
    let voice = server
        .agent_on(
            "voice",
            81_000,
            Some(two_questions()),
            Some(connection_id.clone()),
        )
        .await?;
    let sms = server
        .agent_on("sms", 81_001, None, Some(connection_id))
        .await?;

    let people: Vec<String> = (0..(rate * seconds.as_secs_f64() * 1.2) as usize + 10)
        .map(|n| format!("4478{n:08}"))
        .collect();
    for person in &people {
        twilio.person_answers(person, "12345");
        twilio.person_answers(person, "1");
    }
    let bodies = people
        .iter()
        .map(|to| json!({"agent_id": voice, "to": to}))
        .collect();
    let target = server.target("/telephony/make-call", bodies);
    let started = Instant::now();
    let triggered = load::open_loop(&target, rate, connections, seconds).await?;
    expect_only(&triggered, 200, "calls")?;
    let calls = triggered.latencies.len();
    if calls > people.len() {
        bail!("{calls} calls for {} people", people.len());
    }
    server.drain().await?;
    let elapsed = started.elapsed();
    let said = twilio
        .calls()
        .iter()
        .filter(|c| c.said.last().map(String::as_str) == Some("Thank you, goodbye."))
        .count();
    if said != calls {
        bail!("{said} of {calls} calls went through to the end");
    }
    let problems = twilio.problems();
    if !problems.is_empty() {
        bail!("the fake Twilio saw problems: {problems:?}");
    }
    let times = twilio.turn_times();
    let sorted = |what: &str| {
        let mut ms: Vec<f64> = times
            .iter()
            .filter(|(w, _)| *w == what)
            .map(|(_, d)| d.as_secs_f64() * 1000.0)
            .collect();
        ms.sort_by(f64::total_cmp);
        ms
    };
    let held = server
        .metric("herald_provider_webhooks_total{provider=\"twilio\",webhook=\"turn\"")
        .await
        .context("reading the held turns")? as usize;

    let target = server.target(
        "/messaging/conversation",
        vec![json!({"agent_id": sms, "to": "447700900123", "channel": "sms"})],
    );
    let started = Instant::now();
    let triggered = load::closed_loop(&target, connections, Stop::Count(messages)).await?;
    expect_only(&triggered, 200, "messages")?;
    server.drain().await?;
    let messages_elapsed = started.elapsed();
    let taken = twilio.messages().len();
    if taken != messages {
        bail!("Twilio took {taken} messages of {messages}");
    }
    Ok(Figures {
        provider: "Twilio",
        rate,
        calls,
        elapsed,
        answers: sorted("answer"),
        inputs: sorted("gather"),
        held,
        messages,
        messages_elapsed,
    })
}

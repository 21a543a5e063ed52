//! `herald bench`'s Vonage scenarios: a server whose agents run on a
//! Vonage connection, against the loopback fake of Vonage the tests use
//! (it plays the calls' NCCO and posts the messages' statuses, signed).
//!
//! - voice turns under load: calls placed at a steady rate (open loop),
//!   each answered and then answered twice more by keypad, so that many
//!   are under way at once; the time herald takes to answer each answer
//!   and input webhook with its NCCO, as the fake measures it;
//! - messages through the Messages API: SMS sessions, each sending one
//!   message whose `submitted` and `delivered` come back by webhook; from
//!   the first trigger to the last session's end.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use herald_server::testing::vonage::FakeVonage;
use serde_json::{json, Value};

use super::load::{self, Stop};
use super::{expect_only, Server};

const APPLICATION: &str = "b0a7c1de-0000-4000-8000-00000000be0c";
const SIGNATURE_SECRET: &str = "bench-signature-secret";
const API_KEY: &str = "bench";
/// The URL the server's webhooks are named under; the fake reaches them
/// on the server's own address instead.
const PUBLIC_URL: &str = "https://herald.bench.invalid";

/// What a provider's scenarios measured.
pub struct Figures {
    pub provider: &'static str,
    /// Calls placed a second, and how many.
    pub rate: f64,
    pub calls: usize,
    pub elapsed: Duration,
    /// How long answer and input webhooks took, sorted, in ms.
    pub answers: Vec<f64>,
    pub inputs: Vec<f64>,
    /// Turns herald could not give in time, and asked the call to hold.
    pub held: usize,
    pub messages: usize,
    pub messages_elapsed: Duration,
}

/// A flow of two questions on a call.
pub(super) fn two_questions() -> Value {
    json!({"format": 1, "start": "first", "nodes": [
        {"id": "first", "type": "collect_input", "prompt": "Key your account number.",
         "entity": "number", "parameter": "ACCOUNT", "timeout_secs": 10,
         "success": "second", "invalid": "end", "no_input": "end"},
        {"id": "second", "type": "collect_input", "prompt": "Key 1 to confirm.",
         "entity": "number", "parameter": "CONFIRM", "timeout_secs": 10,
         "success": "thanks", "invalid": "end", "no_input": "end"},
        {"id": "thanks", "type": "speak", "text": "Thank you, goodbye.", "next": "end"},
        {"id": "end", "type": "end"}
    ]})
}

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
    let voice = server
        .agent_on(
            "voice",
            80_000,
            Some(two_questions()),
            Some(connection_id.clone()),
        )
        .await?;
    let sms = server
        .agent_on("sms", 80_001, None, Some(connection_id))
        .await?;

    // Every person keys their answers as soon as they are asked; a few
    // more people than the run should call, so that none is called twice.
    let people: Vec<String> = (0..(rate * seconds.as_secs_f64() * 1.2) as usize + 10)
        .map(|n| format!("4477{n:08}"))
        .collect();
    for person in &people {
        vonage.person_answers(person, "12345");
        vonage.person_answers(person, "1");
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
    let said = vonage
        .calls()
        .iter()
        .filter(|c| c.said.last().map(String::as_str) == Some("Thank you, goodbye."))
        .count();
    if said != calls {
        bail!("{said} of {calls} calls went through to the end");
    }
    let problems = vonage.problems();
    if !problems.is_empty() {
        bail!("the fake Vonage saw problems: {problems:?}");
    }
    let times = vonage.turn_times();
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
        .metric("herald_provider_webhooks_total{provider=\"vonage\",webhook=\"turn\"")
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
    let taken = vonage.messages().len();
    if taken != messages {
        bail!("Vonage took {taken} messages of {messages}");
    }
    Ok(Figures {
        provider: "Vonage",
        rate,
        calls,
        elapsed,
        answers: sorted("answer"),
        inputs: sorted("input"),
        held,
        messages,
        messages_elapsed,
    })
}

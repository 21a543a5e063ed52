//! `herald bench`'s scenarios on a provider's connection, against the
//! loopback fake of the provider the tests use ([`super::vonage`],
//! [`super::twilio`] and [`super::whatsapp_cloud`] set them up):
//!
//! - voice turns under load: calls placed at a steady rate (open loop),
//!   each answered and then answered twice more by keypad, so that many
//!   are under way at once; the time herald takes to answer each answer
//!   and input webhook with the call's next turn, as the fake measures it;
//! - messages: sessions (SMS, or WhatsApp templates on WhatsApp Cloud),
//!   each sending one message whose statuses come back by webhook; from
//!   the first trigger to the last session's end.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::load::{self, Stop};
use super::{expect_only, Server};

/// What a provider's scenarios measured.
pub struct Figures {
    pub provider: &'static str,
    /// The voice scenario's, for a provider that carries calls.
    pub voice: Option<VoiceFigures>,
    pub messages: usize,
    pub messages_elapsed: Duration,
}

/// What the voice scenario measured.
pub struct VoiceFigures {
    /// Calls placed a second, and how many.
    pub rate: f64,
    pub calls: usize,
    pub elapsed: Duration,
    /// How long answer and input webhooks took, sorted, in ms.
    pub answers: Vec<f64>,
    pub inputs: Vec<f64>,
    /// Turns herald could not give in time, and asked the call to hold.
    pub held: usize,
}

/// What the messages scenario asks of a provider's fake.
pub trait Fake {
    /// The provider's name, as herald's metrics label it (lowercased).
    fn name(&self) -> &'static str;
    fn problems(&self) -> Vec<String>;
    fn messages_taken(&self) -> usize;
}

/// What the voice scenario asks of it besides.
pub trait VoiceFake: Fake {
    /// The first digits of the people called on it, apart from others'.
    fn prefix(&self) -> &'static str;
    fn person_answers(&self, to: &str, keys: &str);
    /// The calls whose last words were `words`.
    fn calls_ending(&self, words: &str) -> usize;
    /// How long each turn's webhook took, by the fake's name for it.
    fn turn_times(&self) -> Vec<(&'static str, Duration)>;
    /// The fake's name for a turn that answers the person's input.
    fn input_turn(&self) -> &'static str;
}

/// A flow of two questions on a call.
fn two_questions() -> Value {
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

/// Runs both scenarios on `server`, whose connection `connection_id` goes
/// to `fake`; `numbers` and the one after it are the agents' numbers.
#[allow(clippy::too_many_arguments)]
pub async fn measure_on(
    server: &Server,
    fake: &impl VoiceFake,
    connection_id: Value,
    numbers: u32,
    rate: f64,
    seconds: Duration,
    messages: usize,
    connections: usize,
) -> anyhow::Result<Figures> {
    let voice = measure_voice(
        server,
        fake,
        connection_id.clone(),
        numbers,
        rate,
        seconds,
        connections,
    )
    .await?;
    let sms = server
        .agent_on("sms", numbers + 1, None, Some(connection_id))
        .await?;
    let trigger = json!({"agent_id": sms, "to": "447700900123", "channel": "sms"});
    let (messages, messages_elapsed) =
        measure_messages(server, fake, trigger, messages, connections).await?;
    Ok(Figures {
        provider: fake.name(),
        voice: Some(voice),
        messages,
        messages_elapsed,
    })
}

/// The voice scenario: calls on an agent of two questions, `numbers`.
async fn measure_voice(
    server: &Server,
    fake: &impl VoiceFake,
    connection_id: Value,
    numbers: u32,
    rate: f64,
    seconds: Duration,
    connections: usize,
) -> anyhow::Result<VoiceFigures> {
    let voice = server
        .agent_on("voice", numbers, Some(two_questions()), Some(connection_id))
        .await?;

    // Every person keys their answers as soon as they are asked; a few
    // more people than the run should call, so that none is called twice.
    let people: Vec<String> = (0..(rate * seconds.as_secs_f64() * 1.2) as usize + 10)
        .map(|n| format!("{}{n:08}", fake.prefix()))
        .collect();
    for person in &people {
        fake.person_answers(person, "12345");
        fake.person_answers(person, "1");
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
    let said = fake.calls_ending("Thank you, goodbye.");
    if said != calls {
        bail!("{said} of {calls} calls went through to the end");
    }
    let provider = fake.name();
    let problems = fake.problems();
    if !problems.is_empty() {
        bail!("the fake {provider} saw problems: {problems:?}");
    }
    let times = fake.turn_times();
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
        .metric(&format!(
            "herald_provider_webhooks_total{{provider=\"{}\",webhook=\"turn\"",
            provider.to_lowercase()
        ))
        .await
        .context("reading the held turns")? as usize;
    Ok(VoiceFigures {
        rate,
        calls,
        elapsed,
        answers: sorted("answer"),
        inputs: sorted(fake.input_turn()),
        held,
    })
}

/// The messages scenario: `messages` sessions triggered by `trigger`,
/// `connections` at a time; how many, and how long until the last ended.
pub async fn measure_messages(
    server: &Server,
    fake: &dyn Fake,
    trigger: Value,
    messages: usize,
    connections: usize,
) -> anyhow::Result<(usize, Duration)> {
    let provider = fake.name();
    let target = server.target("/messaging/conversation", vec![trigger]);
    let started = Instant::now();
    let triggered = load::closed_loop(&target, connections, Stop::Count(messages)).await?;
    expect_only(&triggered, 200, "messages")?;
    server.drain().await?;
    let messages_elapsed = started.elapsed();
    let taken = fake.messages_taken();
    if taken != messages {
        bail!("{provider} took {taken} messages of {messages}");
    }
    let problems = fake.problems();
    if !problems.is_empty() {
        bail!("the fake {provider} saw problems: {problems:?}");
    }
    Ok((messages, messages_elapsed))
}

//! Micro-benchmarks of `herald_flow::step`, which the driver runs on every
//! event of every conversation.
//!
//! Run with `cargo bench -p herald-flow --bench step`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, criterion_main, Criterion};
use herald_core::flow::FlowDefinition;
use herald_core::Channel;
use herald_flow::{step, Action, Event, FlowState, Input, InputMode, Wait};
use serde_json::json;

/// Wednesday 20 November 2024, 00:00:00 UTC.
fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_732_060_800)
}

/// A small booking flow: greet, set and count parameters, branch, then ask
/// for a date.
fn booking() -> FlowDefinition {
    serde_json::from_value(json!({
        "format": 1,
        "start": "greet",
        "parameters": [{"name": "NAME", "default": "there"}],
        "nodes": [
            {"id": "greet", "type": "send_message", "text": "Hello $NAME!", "next": "mark"},
            {"id": "mark", "type": "set_parameter", "parameter": "STAGE", "value": "asking", "next": "count"},
            {"id": "count", "type": "counter", "counter": "VISITS", "next": "check"},
            {"id": "check", "type": "conditions", "branches": [
                {"rules": [{"parameter": "VISITS", "op": "gt", "value": "3"}], "next": "bye"}
            ], "default": "ask"},
            {"id": "ask", "type": "collect_input", "prompt": "Which day suits you, $NAME?",
             "entity": "date", "parameter": "DAY",
             "success": "confirm", "invalid": "bye", "no_input": "bye"},
            {"id": "confirm", "type": "send_message", "text": "Booked for $DAY.", "next": "bye"},
            {"id": "bye", "type": "end"}
        ]
    }))
    .expect("the benchmark's flow is well-formed")
}

fn started(channel: Channel) -> Event {
    let parameters: BTreeMap<String, String> = [
        ("NAME", "Ada"),
        ("RECIPIENT", "+15550100"),
        ("SESSION_ID", "0190c0de-0000-7000-8000-000000000000"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    Event::Started {
        channel,
        parameters,
    }
}

/// One `Started` event from a fresh state. `voice` and `sms` are the
/// default flows (greet and end) with no parameters, the workload these ids
/// have always measured; `booking_sms` runs the booking flow up to its
/// question with a few parameters. What is timed includes cloning the
/// event's parameters into the state, building the actions and dropping
/// the returned state and actions.
fn start(c: &mut Criterion) {
    let mut group = c.benchmark_group("flow/step/started");
    let no_parameters = |channel| Event::Started {
        channel,
        parameters: BTreeMap::new(),
    };
    let cases = [
        (
            "voice",
            FlowDefinition::default_for(Channel::Voice),
            no_parameters(Channel::Voice),
        ),
        (
            "sms",
            FlowDefinition::default_for(Channel::Sms),
            no_parameters(Channel::Sms),
        ),
        ("booking_sms", booking(), started(Channel::Sms)),
    ];
    for (name, flow, event) in cases {
        let (state, actions) = step(&flow, FlowState::default(), event.clone(), now());
        assert!(
            state.ended || state.waiting.is_some(),
            "{name}: {actions:?}"
        );
        group.bench_function(name, |b| {
            b.iter(|| {
                step(
                    black_box(&flow),
                    FlowState::default(),
                    black_box(event.clone()),
                    black_box(now()),
                )
            })
        });
    }
    group.finish();
}

/// An answer to the booking flow's date question: set `LAST_INPUT`, read
/// the date, set it and run to the end. The waiting state is cloned each
/// time, as the driver does with the state it loaded.
fn input_date(c: &mut Criterion) {
    let flow = booking();
    let (waiting, _) = step(&flow, FlowState::default(), started(Channel::Sms), now());
    assert!(matches!(waiting.waiting, Some(Wait::Input { .. })));
    let mut group = c.benchmark_group("flow/step/input_date");
    for (name, text) in [
        ("iso", "2024-12-25"),
        ("words", "the 25th of December please"),
        ("weekday", "friday"),
    ] {
        let event = Event::Input(Input {
            mode: InputMode::Text,
            text: text.into(),
        });
        let (_, actions) = step(&flow, waiting.clone(), event.clone(), now());
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, Action::ParameterSet { name, .. } if name == "DAY")),
            "{name}: {actions:?}"
        );
        group.bench_function(name, |b| {
            b.iter(|| {
                step(
                    black_box(&flow),
                    waiting.clone(),
                    black_box(event.clone()),
                    black_box(now()),
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, start, input_date);
criterion_main!(benches);

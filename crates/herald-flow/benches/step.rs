//! Micro-benchmarks of `herald_flow::step`, which the driver runs on every
//! event of every conversation.
//!
//! Run with `cargo bench -p herald-flow --bench step`.

use std::hint::black_box;
use std::time::SystemTime;

use criterion::{criterion_group, criterion_main, Criterion};
use herald_core::flow::FlowDefinition;
use herald_core::Channel;
use herald_flow::{step, Event, FlowState};

/// One `Started` event from a fresh state, on an agent's default flow: the
/// whole of a default conversation (enter the greeting, speak or send it,
/// enter the end node, end). The state is a fresh `FlowState::default()`
/// each time (no allocation: its node is `None`); what is timed includes
/// building the actions, cloning the node ids and texts into them, and
/// dropping the returned state and actions.
fn started(c: &mut Criterion) {
    let mut group = c.benchmark_group("flow/step/started");
    for (name, channel) in [("voice", Channel::Voice), ("sms", Channel::Sms)] {
        let flow = FlowDefinition::default_for(channel);
        let (state, actions) = step(
            &flow,
            FlowState::default(),
            Event::Started,
            SystemTime::UNIX_EPOCH,
        );
        assert!(state.ended && actions.len() == 4, "{name}: {actions:?}");
        group.bench_function(name, |b| {
            b.iter(|| {
                step(
                    black_box(&flow),
                    FlowState::default(),
                    black_box(Event::Started),
                    black_box(SystemTime::UNIX_EPOCH),
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, started);
criterion_main!(benches);

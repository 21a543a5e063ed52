//! Micro-benchmarks of `MemoryLimiter::check`, which runs once per trigger
//! in the embedded deployment.
//!
//! Run with `cargo bench -p herald-limit --bench limiter`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use herald_limit::{Decision, ManualClock, MemoryLimiter, MonotonicClock, WINDOW};

/// How many distinct agents the admitted case cycles through: enough that
/// the 16 shards' maps hold many keys and stop fitting in L1, as on a
/// server with many agents.
const AGENTS: usize = 4096;

const RATE: u32 = 100;

/// Keys shaped like agent ids (24 lowercase hex digits), made up front so
/// that no formatting is timed.
fn agent_keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{i:024x}")).collect()
}

fn check(c: &mut Criterion) {
    let mut group = c.benchmark_group("limiter/check");

    // Admitted path, many distinct agents. Each call checks the next of
    // 4096 agents in turn; after every pass over all of them the manual
    // clock moves on by one window, so each check finds its agent's log
    // holding one entry that has just expired. What is measured is the
    // steady state of an agent that is under its rate: hash the key, lock
    // its shard, find the log, drop the expired entry, compare the length
    // with the rate and record the new entry. The first pass (which inserts
    // the keys) happens before timing; the clock's advance is one atomic
    // add every 4096 checks, so it does not show.
    {
        let clock = ManualClock::default();
        let limiter = MemoryLimiter::with_clock(clock.clone());
        let keys = agent_keys(AGENTS);
        for key in &keys {
            assert!(matches!(limiter.check(key, RATE), Decision::Admitted(_)));
        }
        clock.advance(WINDOW);
        let mut next = 0;
        group.bench_function("admitted_4096_agents", |b| {
            b.iter(|| {
                let decision = limiter.check(black_box(&keys[next]), black_box(RATE));
                next += 1;
                if next == AGENTS {
                    next = 0;
                    clock.advance(WINDOW);
                }
                decision
            })
        });
        assert!(matches!(
            limiter.check(&keys[next], RATE),
            Decision::Admitted(_)
        ));
    }

    // Limited path: one agent whose log already holds `RATE` (100) entries
    // from within the last second. The manual clock never moves, so every
    // call is refused: hash, lock, find the log, see that its oldest entry
    // is still in the window and that the log is full, and work out the
    // Retry-After from the entry that blocks. Nothing is allocated or
    // changed; this is the cost of turning away an agent that is over its
    // rate, e.g. a client retrying in a loop.
    {
        let clock = ManualClock::default();
        let limiter = MemoryLimiter::with_clock(clock);
        let key = agent_keys(1).remove(0);
        for _ in 0..RATE {
            assert!(matches!(limiter.check(&key, RATE), Decision::Admitted(_)));
        }
        assert!(matches!(
            limiter.check(&key, RATE),
            Decision::Limited { .. }
        ));
        group.bench_function("limited_rate_100", |b| {
            b.iter(|| limiter.check(black_box(&key), black_box(RATE)))
        });
    }

    // The same limited path with the real clock the server uses, so the
    // difference from the case above is the cost of reading the monotonic
    // clock (`Instant::elapsed`). The full log's entries leave the window
    // a second after they were made, so about 100 calls per second of
    // measurement are admitted (and fill the log again): a negligible
    // share of the millions that are refused.
    {
        let limiter = MemoryLimiter::with_clock(MonotonicClock::default());
        let key = agent_keys(1).remove(0);
        for _ in 0..RATE {
            assert!(matches!(limiter.check(&key, RATE), Decision::Admitted(_)));
        }
        group.bench_function("limited_rate_100_real_clock", |b| {
            b.iter(|| limiter.check(black_box(&key), black_box(RATE)))
        });
    }

    group.finish();
}

criterion_group!(benches, check);
criterion_main!(benches);

//! The in-process limiter of the embedded deployment.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::{Decision, Permit, RateLimiter, Unavailable, WINDOW};

/// A monotonic time source in nanoseconds, so tests can drive time by hand.
pub trait Clock: Send + Sync + 'static {
    fn now_nanos(&self) -> u64;
}

/// Real time, counted from when the limiter was made.
pub struct MonotonicClock(Instant);

impl Default for MonotonicClock {
    fn default() -> Self {
        MonotonicClock(Instant::now())
    }
}

impl Clock for MonotonicClock {
    fn now_nanos(&self) -> u64 {
        // Offset by one window so that "a second before the start" is not
        // below zero.
        self.0.elapsed().as_nanos() as u64 + WINDOW.as_nanos() as u64
    }
}

/// Time that moves only when a test says so.
#[derive(Clone, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_nanos() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_nanos(&self) -> u64 {
        self.0.load(Ordering::SeqCst) + WINDOW.as_nanos() as u64
    }
}

/// Shards keep two request threads that limit different agents from waiting
/// on one lock.
const SHARDS: usize = 16;

type Log = VecDeque<u64>;

pub struct MemoryLimiter<C: Clock = MonotonicClock> {
    clock: C,
    hasher: RandomState,
    shards: Vec<Mutex<HashMap<String, Log>>>,
}

impl Default for MemoryLimiter<MonotonicClock> {
    fn default() -> Self {
        Self::with_clock(MonotonicClock::default())
    }
}

impl<C: Clock> MemoryLimiter<C> {
    pub fn with_clock(clock: C) -> Self {
        MemoryLimiter {
            clock,
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, key: &str) -> &Mutex<HashMap<String, Log>> {
        &self.shards[self.hasher.hash_one(key) as usize % SHARDS]
    }

    /// The decision itself, synchronous: the async trait only wraps it.
    pub fn check(&self, key: &str, rate: u32) -> Decision {
        let now = self.clock.now_nanos();
        let window = WINDOW.as_nanos() as u64;
        let mut shard = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        let log = match shard.get_mut(key) {
            Some(log) => log,
            None => shard.entry(key.to_owned()).or_default(),
        };
        // Entries at or before now - 1s are outside every window that
        // contains now.
        while log.front().is_some_and(|&t| t + window <= now) {
            log.pop_front();
        }
        if log.len() < rate as usize {
            log.push_back(now);
            Decision::Admitted(Permit { at: now })
        } else {
            // The log holds at least `rate` entries in the last second; a
            // slot frees when the one that makes it full leaves the window.
            // After a rate cut the log may be longer than the new rate.
            let blocking = log[log.len() - rate as usize];
            let retry_after = Duration::from_nanos(blocking + window - now);
            Decision::Limited { retry_after }
        }
    }

    pub fn give_back(&self, key: &str, permit: &Permit) {
        let mut shard = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        if let Some(log) = shard.get_mut(key) {
            // The permit is almost always among the newest entries.
            if let Some(pos) = log.iter().rposition(|&t| t == permit.at) {
                log.remove(pos);
            }
        }
    }
}

#[async_trait]
impl<C: Clock> RateLimiter for MemoryLimiter<C> {
    async fn acquire(&self, key: &str, rate: u32) -> Result<Decision, Unavailable> {
        Ok(self.check(key, rate))
    }

    async fn release(&self, key: &str, permit: Permit) {
        self.give_back(key, &permit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limiter() -> (MemoryLimiter<ManualClock>, ManualClock) {
        let clock = ManualClock::default();
        (MemoryLimiter::with_clock(clock.clone()), clock)
    }

    fn admitted(d: &Decision) -> bool {
        matches!(d, Decision::Admitted(_))
    }

    #[test]
    fn a_burst_of_n_is_admitted_and_the_next_is_not() {
        let (l, _) = limiter();
        for _ in 0..5 {
            assert!(admitted(&l.check("a", 5)));
        }
        assert_eq!(
            l.check("a", 5),
            Decision::Limited {
                retry_after: Duration::from_secs(1)
            }
        );
    }

    #[test]
    fn the_window_slides_rather_than_resets() {
        let (l, clock) = limiter();
        assert!(admitted(&l.check("a", 2)));
        clock.advance(Duration::from_millis(600));
        assert!(admitted(&l.check("a", 2)));
        // 0.9 s: both earlier sessions are still within the last second.
        clock.advance(Duration::from_millis(300));
        assert_eq!(
            l.check("a", 2),
            Decision::Limited {
                retry_after: Duration::from_millis(100)
            }
        );
        // 1.0 s: the first has left the window (exactly a second old).
        clock.advance(Duration::from_millis(100));
        assert!(admitted(&l.check("a", 2)));
        assert!(!admitted(&l.check("a", 2)));
    }

    #[test]
    fn agents_are_limited_separately() {
        let (l, _) = limiter();
        assert!(admitted(&l.check("a", 1)));
        assert!(admitted(&l.check("b", 1)));
        assert!(!admitted(&l.check("a", 1)));
    }

    #[test]
    fn a_released_slot_can_be_taken_again() {
        let (l, _) = limiter();
        let Decision::Admitted(permit) = l.check("a", 1) else {
            panic!()
        };
        assert!(!admitted(&l.check("a", 1)));
        l.give_back("a", &permit);
        assert!(admitted(&l.check("a", 1)));
    }

    #[test]
    fn raising_and_lowering_the_rate_applies_at_once() {
        let (l, clock) = limiter();
        assert!(admitted(&l.check("a", 1)));
        assert!(!admitted(&l.check("a", 1)));
        assert!(admitted(&l.check("a", 3)));
        assert!(admitted(&l.check("a", 3)));
        assert!(!admitted(&l.check("a", 3)));
        // Cut to 1 with three in the window: wait for all but none to leave.
        clock.advance(Duration::from_millis(500));
        assert!(!admitted(&l.check("a", 1)));
        clock.advance(Duration::from_millis(500));
        assert!(admitted(&l.check("a", 1)));
    }

    proptest! {
        /// Whatever the arrival pattern, no one-second window ever holds more
        /// than `rate` admitted requests, and a request is refused only when
        /// the window before it is full.
        #[test]
        fn never_more_than_rate_in_any_window(
            rate in 1u32..6,
            gaps in proptest::collection::vec(0u64..400, 1..200),
        ) {
            let (l, clock) = limiter();
            let mut admitted_at: Vec<u64> = Vec::new();
            let mut t = 0u64;
            for gap in gaps {
                clock.advance(Duration::from_millis(gap));
                t += gap;
                let in_window = admitted_at.iter().filter(|&&a| a + 1000 > t).count();
                match l.check("k", rate) {
                    Decision::Admitted(_) => {
                        prop_assert!(in_window < rate as usize);
                        admitted_at.push(t);
                    }
                    Decision::Limited { retry_after } => {
                        prop_assert_eq!(in_window, rate as usize);
                        prop_assert!(retry_after > Duration::ZERO);
                        prop_assert!(retry_after <= WINDOW);
                    }
                }
            }
        }
    }
}

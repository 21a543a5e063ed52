//! Exact per-agent rate limits (CONTRACT §6).
//!
//! An agent with rate N may start at most N sessions in any one-second
//! window, and a burst of N at once is accepted. That is a sliding log, not a
//! token bucket or a fixed window: a token bucket lets N through, then more as
//! tokens trickle back within the same second; a fixed window lets 2N through
//! across a window edge. The log keeps, per agent, the times of the last
//! accepted sessions (at most N of them), so a check is O(1) amortised: drop
//! the entries older than a second from the front, compare the length with N.
//!
//! A request that is admitted but then fails further along (its session could
//! not be stored) gives its slot back with [`RateLimiter::release`], because
//! only requests that would otherwise have succeeded count.
//!
//! [`MemoryLimiter`] keeps the logs in the process, for a single server;
//! [`RedisLimiter`] keeps them in Redis, so that several servers sharing one
//! Redis enforce one limit between them.

mod memory;
mod redis;

pub use crate::redis::{RedisLimiter, RedisOptions};
pub use memory::{Clock, ManualClock, MemoryLimiter, MonotonicClock};

use std::time::Duration;

use async_trait::async_trait;

/// The window the contract's rates are counted in.
pub const WINDOW: Duration = Duration::from_secs(1);

/// A slot taken by an admitted request; hand it back to
/// [`RateLimiter::release`] if the request fails after all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permit {
    /// Names the slot within its limiter: when it was taken, in the memory
    /// limiter's time base, or the random id of its entry in Redis.
    pub(crate) at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Admitted(Permit),
    /// Over the limit; a slot frees up after `retry_after`.
    Limited {
        retry_after: Duration,
    },
}

/// The limiter could not decide (a shared backend is unreachable).
#[derive(Debug, thiserror::Error)]
#[error("rate limiter unavailable: {0}")]
pub struct Unavailable(pub String);

#[async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    /// Admits one request for `key` if fewer than `rate` were admitted in the
    /// last second.
    async fn acquire(&self, key: &str, rate: u32) -> Result<Decision, Unavailable>;

    /// Gives back the slot of an admitted request that then failed.
    async fn release(&self, key: &str, permit: Permit);
}

/// Whole seconds for a `Retry-After` header: rounded up, at least 1.
pub fn retry_after_secs(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_at_least_one_second() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
    }
}

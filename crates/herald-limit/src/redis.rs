//! The shared limiter, for several herald servers behind one Redis.
//!
//! Each agent's log is a sorted set of its admitted requests, scored by when
//! they were admitted. One Lua script trims the log, compares its length with
//! the rate and appends, atomically and in one round trip, so the limit stays
//! exact however many servers take requests. The script reads Redis's own
//! clock, so the servers' clocks need not agree. It needs Redis 5 or later,
//! where scripts that read `TIME` and then write are replicated by effect.
//!
//! When Redis is unreachable or does not answer within
//! [`RedisOptions::timeout`], the limiter refuses to decide and returns
//! [`Unavailable`], and the server answers 503 with a Retry-After. It fails
//! closed rather than admitting without a limit, because the rates are part
//! of herald's contract, not a best effort. The connection is made lazily and
//! remade when it breaks, so a server can start while Redis is down and
//! recovers by itself when Redis is back. A check that timed out may still
//! have taken its slot once Redis caught up, which errs on the same side.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisError, RedisResult, Script};

use crate::{Decision, Permit, RateLimiter, Unavailable, WINDOW};

/// Checks one agent's log and appends to it if there is room.
///
/// KEYS[1] is the log; ARGV is the rate, the window in µs, the new entry's
/// member and the log's expiry in ms. Returns 0 when admitted, otherwise the
/// µs until a slot frees (always positive, as older entries were trimmed).
const ACQUIRE: &str = r"
local rate = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
-- An entry exactly one window old no longer counts.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local n = redis.call('ZCARD', KEYS[1])
if n < rate then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return 0
end
-- Full. Once the entry at index n - rate (oldest first) leaves the window,
-- fewer than rate remain; n may exceed rate if the rate was cut.
local blocking = redis.call('ZRANGE', KEYS[1], n - rate, n - rate, 'WITHSCORES')
return tonumber(blocking[2]) + window - now
";

/// How long a log outlives its newest entry. Expiry only reclaims the memory
/// of idle agents; the margin keeps it from dropping an entry still inside
/// the window.
const EXPIRY: Duration = WINDOW.saturating_add(Duration::from_millis(100));

/// Settings of a [`RedisLimiter`]; [`Default`] suits most deployments.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// Put before each agent's id to make its key, so that herald can share
    /// a Redis with other applications. Servers that are to share limits
    /// must use the same prefix.
    pub key_prefix: String,
    /// How long one check may take, connecting included, before the limiter
    /// reports itself unavailable.
    pub timeout: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            key_prefix: "herald:rate:".to_owned(),
            timeout: Duration::from_millis(500),
        }
    }
}

/// A [`RateLimiter`] whose logs live in Redis, shared by every server that
/// uses the same Redis and key prefix.
#[derive(Debug)]
pub struct RedisLimiter {
    conn: ConnectionManager,
    script: Script,
    options: RedisOptions,
}

impl RedisLimiter {
    /// Checks the URL (`redis://host:port/db`) but does not connect: that
    /// happens on the first check, so a server can start while Redis is down.
    /// Async because the connection's background tasks need a Tokio runtime.
    pub async fn new(url: &str, options: RedisOptions) -> Result<Self, RedisError> {
        // No retry loop of its own: a check that finds the connection broken
        // starts one new attempt, so an error names its cause (rather than
        // timing out in a back-off) and the check after Redis returns succeeds.
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(0)
            .set_connection_timeout(Some(options.timeout))
            .set_response_timeout(Some(options.timeout));
        let conn = ConnectionManager::new_lazy_with_config(Client::open(url)?, config)?;
        Ok(RedisLimiter {
            conn,
            script: Script::new(ACQUIRE),
            options,
        })
    }

    fn key(&self, agent: &str) -> String {
        format!("{}{agent}", self.options.key_prefix)
    }

    /// Runs one exchange with Redis within the per-check timeout.
    async fn bounded<T>(
        &self,
        exchange: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, Unavailable> {
        match tokio::time::timeout(self.options.timeout, exchange).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(Unavailable(format!("Redis: {e}"))),
            Err(_) => Err(Unavailable(format!(
                "Redis did not answer within {:?}",
                self.options.timeout
            ))),
        }
    }
}

/// The log entry of a slot. The id is random so that servers need not
/// coordinate; a new entry takes the name of a live one of its agent (and so
/// lets one extra request through) with a chance of at most rate / 2^64.
fn member(id: u64) -> String {
    format!("{id:016x}")
}

#[async_trait]
impl RateLimiter for RedisLimiter {
    async fn acquire(&self, key: &str, rate: u32) -> Result<Decision, Unavailable> {
        if rate == 0 {
            // Nothing is ever admitted; the script would find no entry to
            // wait for.
            return Ok(Decision::Limited {
                retry_after: WINDOW,
            });
        }
        let id: u64 = rand::random();
        let mut invocation = self.script.key(self.key(key));
        invocation
            .arg(rate)
            .arg(WINDOW.as_micros() as u64)
            .arg(member(id))
            .arg(EXPIRY.as_millis() as u64);
        let mut conn = self.conn.clone();
        let wait_micros: u64 = self.bounded(invocation.invoke_async(&mut conn)).await?;
        Ok(if wait_micros == 0 {
            Decision::Admitted(Permit { at: id })
        } else {
            Decision::Limited {
                retry_after: Duration::from_micros(wait_micros),
            }
        })
    }

    async fn release(&self, key: &str, permit: Permit) {
        let mut conn = self.conn.clone();
        let mut zrem = redis::cmd("ZREM");
        zrem.arg(self.key(key)).arg(member(permit.at));
        if let Err(e) = self.bounded(zrem.query_async::<()>(&mut conn)).await {
            // The slot stays taken until it leaves the window: at worst the
            // agent is held to one fewer request for a second.
            tracing::warn!(agent = key, error = %e, "could not give a rate-limit slot back");
        }
    }
}

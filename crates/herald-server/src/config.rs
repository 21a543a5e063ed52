//! The server's settings, each with a default and a `HERALD_*` variable
//! (read by the command line in the `herald` binary).

use std::net::SocketAddr;
use std::time::Duration;

use herald_core::Region;

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// `sqlite://PATH` or `postgres://...`.
    pub database_url: String,
    /// The Redis that rate limits are shared through; `None` keeps them in
    /// this process.
    pub redis_url: Option<String>,
    pub region: Region,
    /// Let callbacks go to loopback and private addresses (tests, demos, and
    /// receivers on the same network).
    pub allow_private_callbacks: bool,
    /// The rate of an agent with no limit of its own (CONTRACT §6.2).
    pub default_rate: u32,
    /// The highest rate `herald limits set` accepts.
    pub max_rate: u32,
    /// Delays before each retry of a failed callback (CONTRACT §5.4).
    pub callback_retry_schedule: Vec<Duration>,
    /// How long a callback attempt may take before it counts as failed.
    pub callback_timeout: Duration,
    pub simulator_delay: Duration,
    /// How long a worker holds a dispatch job before another may take it.
    pub dispatch_lease: Duration,
    /// How long a graceful shutdown lets sessions and callbacks under way
    /// finish before giving their leases back.
    pub shutdown_grace: Duration,
    /// How often caches check the store for changes made elsewhere.
    pub cache_refresh: Duration,
    /// Serve `/bench/noop`, the baseline route of the benchmark.
    pub bench_routes: bool,
    /// Wait for the disk on every commit (SQLite `synchronous=FULL`,
    /// PostgreSQL `synchronous_commit=on`).
    pub durable_commits: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: ([127, 0, 0, 1], 8080).into(),
            database_url: "sqlite://herald.db".into(),
            redis_url: None,
            region: Region::Eu,
            allow_private_callbacks: false,
            default_rate: 1,
            max_rate: 10_000,
            callback_retry_schedule: default_retry_schedule(),
            callback_timeout: Duration::from_secs(15),
            simulator_delay: Duration::from_millis(20),
            dispatch_lease: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(5),
            cache_refresh: Duration::from_millis(500),
            bench_routes: false,
            durable_commits: true,
        }
    }
}

/// 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
pub fn default_retry_schedule() -> Vec<Duration> {
    [5, 300, 1800, 7200, 18000, 36000, 36000]
        .into_iter()
        .map(Duration::from_secs)
        .collect()
}

/// Parses `HERALD_CALLBACK_RETRY_SCHEDULE`: seconds, comma-separated
/// (fractions allowed, so tests can retry quickly).
pub fn parse_retry_schedule(text: &str) -> Result<Vec<Duration>, String> {
    text.split(',')
        .map(|part| {
            let part = part.trim();
            part.parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0 && *s <= 7.0 * 86400.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| {
                    format!(
                        "retry schedule entry {part:?} is not a number of seconds between 0 and 604800"
                    )
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_schedules() {
        assert_eq!(
            parse_retry_schedule("1,1,2").unwrap(),
            [1, 1, 2].map(Duration::from_secs)
        );
        assert_eq!(
            parse_retry_schedule("0.5").unwrap(),
            [Duration::from_millis(500)]
        );
        assert!(parse_retry_schedule("1,,2").is_err());
        assert!(parse_retry_schedule("-1").is_err());
        assert!(parse_retry_schedule("soon").is_err());
    }
}

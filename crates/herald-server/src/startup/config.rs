//! The server's settings, each with a default and a `HERALD_*` variable
//! (read by the command line in the `herald` binary).

use std::net::SocketAddr;
use std::time::Duration;

use herald_core::secret::{Secret, SecretUrl};
use herald_core::Region;

/// Every secret in it (the database's and Redis's passwords, the inbound
/// token, the SMTP password) is held in a type that never prints, so the
/// whole of it may be logged.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// `sqlite://PATH` or `postgres://...`.
    pub database_url: SecretUrl,
    /// The Redis that rate limits are shared through; `None` keeps them in
    /// this process.
    pub redis_url: Option<SecretUrl>,
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
    /// The secret channel providers send in `X-Herald-Inbound-Token` with
    /// inbound messages; `None` turns `POST /inbound/{channel}` off.
    pub inbound_token: Option<Secret<String>>,
    /// Serve `/bench/noop`, the baseline route of the benchmark.
    pub bench_routes: bool,
    /// Wait for the disk on every commit (SQLite `synchronous=FULL`,
    /// PostgreSQL `synchronous_commit=on`).
    pub durable_commits: bool,
    /// The relay that flows' email nodes send through; `None`: no email.
    pub smtp: Option<SmtpSettings>,
    /// The proxy that calls to customers' URLs (callbacks, webhook nodes,
    /// live agents) go through; `None`: straight out. Proxy variables of
    /// the environment (`HTTP_PROXY`…) are never read.
    pub outbound_proxy: Option<SecretUrl>,
    /// Connections served at once; health checks have a few more.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers.
    pub header_timeout: Duration,
    /// How long a client may take to send a request's body.
    pub body_timeout: Duration,
    /// Sessions one server runs at once.
    pub max_running_sessions: usize,
    /// Sessions of one account that one server runs at once, so that no
    /// account takes every place.
    pub max_running_sessions_per_account: usize,
}

/// Where flows' emails go (`HERALD_SMTP_URL`, `HERALD_SMTP_FROM`); checked
/// by [`crate::outbound::email::Mailer::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpSettings {
    /// `smtp://HOST:PORT` (plain, such as a relay on this machine),
    /// `smtp://USER:PASSWORD@HOST:587?tls=required` (STARTTLS) or
    /// `smtps://USER:PASSWORD@HOST:465` (TLS from the start).
    pub url: SecretUrl,
    /// The `From` of every email: `herald@example.com` or
    /// `Herald <herald@example.com>`.
    pub from: String,
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
            inbound_token: None,
            bench_routes: false,
            durable_commits: true,
            smtp: None,
            outbound_proxy: None,
            max_connections: 1024,
            header_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(10),
            max_running_sessions: 1024,
            max_running_sessions_per_account: 256,
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

    #[test]
    fn no_secret_of_the_settings_prints() {
        let settings = SmtpSettings {
            url: "smtps://mailer:s3cret-smtp@mail.example.com:465".into(),
            from: "herald@example.com".into(),
        };
        let printed = format!(
            "{:?}",
            Config {
                smtp: Some(settings),
                database_url: "postgres://herald:s3cret-db@db/herald".into(),
                redis_url: Some("redis://:s3cret-redis@cache:6379".into()),
                inbound_token: Some(Secret::new("s3cret-token".into())),
                outbound_proxy: Some("http://proxy:s3cret-proxy@proxy:3128".into()),
                ..Config::default()
            }
        );
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(
            printed.contains("smtps://***@mail.example.com:465"),
            "{printed}"
        );
        assert!(printed.contains("postgres://***@db/herald"), "{printed}");
    }
}

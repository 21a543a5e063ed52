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
    /// The secret channel providers send in `X-Herald-Inbound-Token` with
    /// inbound messages; `None` turns `POST /inbound/{channel}` off.
    pub inbound_token: Option<String>,
    /// Serve `/bench/noop`, the baseline route of the benchmark.
    pub bench_routes: bool,
    /// Wait for the disk on every commit (SQLite `synchronous=FULL`,
    /// PostgreSQL `synchronous_commit=on`).
    pub durable_commits: bool,
    /// The relay that flows' email nodes send through; `None`: no email.
    pub smtp: Option<SmtpSettings>,
}

/// Where flows' emails go (`HERALD_SMTP_URL`, `HERALD_SMTP_FROM`); checked
/// by [`crate::email::Mailer::new`].
#[derive(Clone, PartialEq, Eq)]
pub struct SmtpSettings {
    /// `smtp://HOST:PORT` (plain, such as a relay on this machine),
    /// `smtp://USER:PASSWORD@HOST:587?tls=required` (STARTTLS) or
    /// `smtps://USER:PASSWORD@HOST:465` (TLS from the start).
    pub url: String,
    /// The `From` of every email: `herald@example.com` or
    /// `Herald <herald@example.com>`.
    pub from: String,
}

/// The URL's password never prints, so logging the settings is safe.
impl std::fmt::Debug for SmtpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpSettings")
            .field("url", &redact_password(&self.url))
            .field("from", &self.from)
            .finish()
    }
}

/// `url` with its password, if any, replaced by `****`; a URL that does not
/// parse is hidden whole, since where its password is cannot be told.
pub fn redact_password(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                // Only fails for URLs that cannot have a password.
                let _ = parsed.set_password(Some("****"));
            }
            parsed.to_string()
        }
        Err(_) => "(not a URL)".into(),
    }
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
    fn smtp_passwords_never_print() {
        let settings = SmtpSettings {
            url: "smtps://mailer:s3cret@mail.example.com:465".into(),
            from: "herald@example.com".into(),
        };
        let printed = format!(
            "{:?}",
            Config {
                smtp: Some(settings),
                ..Config::default()
            }
        );
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(
            printed.contains("smtps://mailer:****@mail.example.com:465"),
            "{printed}"
        );
        assert_eq!(redact_password("smtp://[bad"), "(not a URL)");
        assert_eq!(
            redact_password("smtp://127.0.0.1:25"),
            "smtp://127.0.0.1:25"
        );
    }
}

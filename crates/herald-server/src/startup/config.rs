//! The server's settings, in layers: the built-in file of defaults
//! ([`DEFAULTS`], commented setting by setting), then a configuration file,
//! then `HERALD_*` variables, then flags. [`Settings`] is one layer (every
//! setting optional); [`Settings::resolve`] checks the result once, at
//! start-up, and makes the [`Config`] the server runs with.

use std::net::SocketAddr;
use std::time::Duration;

use std::sync::Arc;

use herald_core::secret::{Sealer, Secret, SecretUrl};
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
    /// Let SMPP connections bind to SMSCs at loopback and private addresses
    /// (an operator's own SMSC on its network; tests).
    pub allow_private_smsc: bool,
    /// The rate of an agent with no limit of its own (CONTRACT §6.2).
    pub default_rate: u32,
    /// The highest rate `herald limits set` accepts.
    pub max_rate: u32,
    /// Delays before each retry of a failed callback (CONTRACT §5.4).
    pub callback_retry_schedule: Vec<Duration>,
    /// How long a callback attempt may take before it counts as failed.
    pub callback_timeout: Duration,
    /// Callbacks in flight at once.
    pub callback_max_in_flight: usize,
    pub simulator_delay: Duration,
    /// How long a worker holds a dispatch job before another may take it.
    pub dispatch_lease: Duration,
    /// Runs of a session that may fail in a row before it ends `failed`.
    pub dispatch_max_attempts: u32,
    /// The pause after a session's first failed run; it doubles after
    /// each further one, up to ten minutes.
    pub dispatch_retry_pause: Duration,
    /// How long a messaging session whose flow has ended waits for its
    /// messages to settle (delivered, read or failed) before it ends.
    pub message_settle: Duration,
    /// How long an ended session still takes what providers report late of
    /// its messages (a WhatsApp `read`).
    pub message_reports_window: Duration,
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
    /// The key connections' credentials are sealed with at rest
    /// (`HERALD_SECRET_KEY`); without one no connection can be created,
    /// and a server with connections stored does not start.
    pub secret_key: Option<Arc<Sealer>>,
    /// The base URL providers reach this server on (CONTRACT §10.5),
    /// without a final `/`; webhooks are under it.
    pub public_url: Option<String>,
    /// The base URL of Vonage's APIs (CONTRACT §10.1b).
    pub vonage_api_url: String,
    /// The base URL of Twilio's API (CONTRACT §10.1b).
    pub twilio_api_url: String,
    /// The base URL of Meta's Graph API, for WhatsApp Cloud (CONTRACT
    /// §10.1b).
    pub whatsapp_api_url: String,
    /// The clock campaigns are scheduled by: the system's, but for tests.
    pub clock: crate::clock::Clock,
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

/// The built-in settings: every default, stated here once, with a comment
/// each. `herald config` prints it.
pub const DEFAULTS: &str = include_str!("herald.toml");

/// The built-in settings, resolved: what a server runs with when nothing is
/// set. Tests start from it.
impl Default for Config {
    fn default() -> Self {
        Settings::defaults()
            .resolve()
            .expect("the built-in settings are valid")
    }
}

/// Every setting, as a file, a variable or a flag may give it; unset ones
/// are `None`. One layer of the configuration (see [`Settings::layered`]).
#[derive(Debug, Clone, Default, clap::Args, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The address the API listens on [default: 127.0.0.1:8080].
    #[arg(long, env = "HERALD_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// The store: sqlite://PATH (one server) or postgres://USER@HOST/DB (any
    /// number of servers) [default: sqlite://herald.db].
    #[arg(
        long = "database",
        alias = "database-url",
        env = "HERALD_DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,
    /// Share rate limits with other servers through this Redis
    /// (redis://HOST:PORT). Without it, limits are kept in this process,
    /// which is exact only while it is the one server.
    #[arg(
        long = "redis",
        alias = "redis-url",
        env = "HERALD_REDIS_URL",
        hide_env_values = true
    )]
    pub redis_url: Option<String>,
    /// The region this server serves: eu or us [default: eu].
    #[arg(long, env = "HERALD_REGION", value_parser = parse_region)]
    pub region: Option<Region>,
    /// The rate of agents without one of their own, in sessions a second
    /// [default: 1].
    #[arg(long, env = "HERALD_DEFAULT_RATE")]
    pub default_rate: Option<u32>,
    /// The highest rate `herald limits set` accepts [default: 10000].
    #[arg(long, env = "HERALD_MAX_RATE")]
    pub max_rate: Option<u32>,
    /// Connections served at once (16 more are kept for health checks)
    /// [default: 1024, or fewer when the limit on open files is lower].
    #[arg(long, env = "HERALD_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Seconds a client may take to send a request's headers [default: 5].
    #[arg(long, env = "HERALD_HEADER_TIMEOUT_SECS")]
    pub header_timeout_secs: Option<f64>,
    /// Seconds a client may take to send a request's body [default: 10].
    #[arg(long, env = "HERALD_BODY_TIMEOUT_SECS")]
    pub body_timeout_secs: Option<f64>,
    /// Sessions this server runs at once [default: 1024].
    #[arg(long, env = "HERALD_MAX_RUNNING_SESSIONS")]
    pub max_running_sessions: Option<usize>,
    /// Sessions of one account this server runs at once [default: 768].
    #[arg(long, env = "HERALD_MAX_RUNNING_SESSIONS_PER_ACCOUNT")]
    pub max_running_sessions_per_account: Option<usize>,
    /// Seconds a worker holds a session's dispatch job; after a crash, its
    /// sessions are taken up again once this runs out [default: 60].
    #[arg(long, env = "HERALD_DISPATCH_LEASE_SECS")]
    pub dispatch_lease_secs: Option<f64>,
    /// Runs of a session that may fail in a row before it ends `failed`
    /// [default: 8].
    #[arg(long, env = "HERALD_DISPATCH_MAX_ATTEMPTS")]
    pub dispatch_max_attempts: Option<u32>,
    /// Seconds before a failed run of a session is tried again; doubled
    /// after each further failure, up to 600 [default: 5].
    #[arg(long, env = "HERALD_DISPATCH_RETRY_SECS")]
    pub dispatch_retry_secs: Option<f64>,
    /// Seconds a messaging session whose flow has ended waits for its
    /// messages to be delivered (or to fail) before it ends [default: 60].
    #[arg(long, env = "HERALD_MESSAGE_SETTLE_SECS")]
    pub message_settle_secs: Option<f64>,
    /// Seconds an ended session still takes the statuses providers report
    /// late of its messages [default: 86400].
    #[arg(long, env = "HERALD_MESSAGE_REPORTS_SECS")]
    pub message_reports_secs: Option<f64>,
    /// Seconds a graceful shutdown lets work under way finish [default: 5].
    #[arg(long, env = "HERALD_SHUTDOWN_GRACE_SECS")]
    pub shutdown_grace_secs: Option<f64>,
    /// The simulator's pause before each step, in milliseconds [default: 20].
    #[arg(long, env = "HERALD_SIMULATOR_DELAY_MS")]
    pub simulator_delay_ms: Option<u64>,
    /// Commit with synchronous=NORMAL: safe from a crash of herald, not
    /// from a power cut [default: false].
    #[arg(long, env = "HERALD_RELAXED_COMMITS", num_args = 0..=1, default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new())]
    pub relaxed_commits: Option<bool>,
    /// Seconds before each callback retry, comma-separated
    /// [default: 5,300,1800,7200,18000,36000,36000].
    #[arg(long, env = "HERALD_CALLBACK_RETRY_SCHEDULE", value_parser = RetrySchedule::parse)]
    pub callback_retry_schedule: Option<RetrySchedule>,
    /// Seconds a callback attempt may take before it counts as failed
    /// [default: 15].
    #[arg(long, env = "HERALD_CALLBACK_TIMEOUT_SECS")]
    pub callback_timeout_secs: Option<f64>,
    /// Callbacks in flight at once [default: 256].
    #[arg(long, env = "HERALD_CALLBACK_MAX_IN_FLIGHT")]
    pub callback_max_in_flight: Option<usize>,
    /// Allow callbacks, webhook nodes and live agents to reach loopback and
    /// private addresses [default: false].
    #[arg(long, env = "HERALD_ALLOW_PRIVATE_CALLBACKS", num_args = 0..=1, default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_private_callbacks: Option<bool>,
    /// Allow SMPP connections to bind to SMSCs at loopback and private
    /// addresses [default: false].
    #[arg(long, env = "HERALD_ALLOW_PRIVATE_SMSC", num_args = 0..=1, default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_private_smsc: Option<bool>,
    /// Send those calls through this HTTP proxy (http://HOST:PORT); herald
    /// still checks each target's address itself.
    #[arg(long, env = "HERALD_OUTBOUND_PROXY", hide_env_values = true)]
    pub outbound_proxy: Option<String>,
    /// The SMTP relay of Send Email nodes: smtp://HOST:PORT,
    /// smtp://USER:PASSWORD@HOST:587?tls=required or
    /// smtps://USER:PASSWORD@HOST:465.
    // hide_env_values: --help must not print the password.
    #[arg(long, env = "HERALD_SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<String>,
    /// The From of flows' emails: ADDRESS or "NAME <ADDRESS>"
    /// [default: herald@localhost].
    #[arg(long, env = "HERALD_SMTP_FROM")]
    pub smtp_from: Option<String>,
    /// The secret providers send as X-Herald-Inbound-Token with inbound
    /// messages (POST /inbound/{channel}); without it that endpoint is off.
    #[arg(long, env = "HERALD_INBOUND_TOKEN", hide_env_values = true)]
    pub inbound_token: Option<String>,
    /// The key that seals connections' credentials in the database: 32
    /// random bytes in base64, as `herald secret-key` prints. Keep it as you
    /// keep the database's backups: without it, stored credentials are lost.
    #[arg(long, env = "HERALD_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<String>,
    /// The base URL providers reach this server on (https://herald.example.com);
    /// connections' webhooks are under it.
    #[arg(long, env = "HERALD_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// The base URL of Vonage's APIs [default: https://api.nexmo.com].
    #[arg(long, env = "HERALD_VONAGE_API_URL")]
    pub vonage_api_url: Option<String>,
    /// The base URL of Twilio's API [default: https://api.twilio.com].
    #[arg(long, env = "HERALD_TWILIO_API_URL")]
    pub twilio_api_url: Option<String>,
    /// The base URL of Meta's Graph API, for WhatsApp Cloud
    /// [default: https://graph.facebook.com].
    #[arg(long, env = "HERALD_WHATSAPP_API_URL")]
    pub whatsapp_api_url: Option<String>,
    /// Serve POST /bench/noop, the baseline route of `herald bench`
    /// [default: false].
    #[arg(long, env = "HERALD_BENCH_ROUTES", num_args = 0..=1, default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new())]
    pub bench_routes: Option<bool>,
}

fn parse_region(text: &str) -> Result<Region, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not a region: eu or us"))
}

/// Seconds before each callback retry: `[5, 300]` in a file, `5,300` in a
/// variable or flag.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "ScheduleForm", into = "Vec<f64>")]
pub struct RetrySchedule(pub Vec<f64>);

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum ScheduleForm {
    List(Vec<f64>),
    Text(String),
}

impl TryFrom<ScheduleForm> for RetrySchedule {
    type Error = String;
    fn try_from(form: ScheduleForm) -> Result<Self, String> {
        match form {
            ScheduleForm::List(secs) => Ok(RetrySchedule(secs)),
            ScheduleForm::Text(text) => RetrySchedule::parse(&text),
        }
    }
}

impl From<RetrySchedule> for Vec<f64> {
    fn from(schedule: RetrySchedule) -> Self {
        schedule.0
    }
}

impl RetrySchedule {
    pub fn parse(text: &str) -> Result<Self, String> {
        text.split(',')
            .map(|part| {
                let part = part.trim();
                part.parse::<f64>()
                    .map_err(|_| format!("{part:?} is not a number of seconds"))
            })
            .collect::<Result<_, _>>()
            .map(RetrySchedule)
    }
}

/// A setting that cannot be used, and what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: {error}")]
    File { file: String, error: String },
    #[error("{setting} (HERALD_{upper}, --{flag} or in a configuration file) {problem}",
        upper = setting.to_ascii_uppercase(), flag = setting.replace('_', "-"))]
    Invalid {
        setting: &'static str,
        problem: String,
    },
    /// A check's own message, which names the setting itself.
    #[error("{0}")]
    Checked(String),
}

fn invalid(setting: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        problem: problem.into(),
    }
}

impl Settings {
    /// The built-in layer: [`DEFAULTS`].
    pub fn defaults() -> Settings {
        toml::from_str(DEFAULTS).expect("the built-in settings parse")
    }

    /// A configuration file's layer.
    pub fn from_file(path: &std::path::Path) -> Result<Settings, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            file: file.clone(),
            error: format!("cannot be read: {e}"),
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::File {
            file,
            error: e.to_string(),
        })
    }

    /// The layers in order, each overriding the one before: the built-in
    /// settings, then `file` if any, then `given` (the variables and flags,
    /// a flag winning over its variable).
    pub fn layered(
        file: Option<&std::path::Path>,
        given: Settings,
    ) -> Result<Settings, ConfigError> {
        let mut settings = Settings::defaults();
        if let Some(path) = file {
            settings = Settings::from_file(path)?.over(settings);
        }
        Ok(given.over(settings))
    }

    /// These settings, with what they leave unset taken from `lower`.
    pub fn over(self, lower: Settings) -> Settings {
        let table = |s: &Settings| match toml::Table::try_from(s) {
            Ok(table) => table,
            Err(e) => unreachable!("settings serialise as a table: {e}"),
        };
        let mut merged = table(&lower);
        merged.extend(table(&self));
        merged.try_into().expect("a merge of valid layers is valid")
    }

    /// Checks every setting and makes the server's configuration; the error
    /// names the setting and what is wrong with it.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let secs =
            |setting: &'static str, value: Option<f64>, range: std::ops::RangeInclusive<f64>| {
                let value = value.ok_or_else(|| invalid(setting, "must be set"))?;
                if value.is_finite() && range.contains(&value) {
                    Ok(Duration::from_secs_f64(value))
                } else {
                    Err(invalid(
                        setting,
                        format!(
                            "must be a number of seconds from {} to {}, not {value}",
                            range.start(),
                            range.end()
                        ),
                    ))
                }
            };
        let required = |setting: &'static str, missing: bool| {
            if missing {
                Err(invalid(setting, "must be set"))
            } else {
                Ok(())
            }
        };
        required("listen", self.listen.is_none())?;
        let database_url = self
            .database_url
            .filter(|u| !u.is_empty())
            .ok_or_else(|| invalid("database_url", "must be set"))?;
        let max_rate = self.max_rate.unwrap_or(0);
        if max_rate == 0 {
            return Err(invalid("max_rate", "must be at least 1"));
        }
        let default_rate = self.default_rate.unwrap_or(0);
        if default_rate == 0 || default_rate > max_rate {
            return Err(invalid(
                "default_rate",
                format!("must be between 1 and max_rate ({max_rate})"),
            ));
        }
        let positive = |setting: &'static str, value: Option<usize>| {
            value
                .filter(|n| *n > 0)
                .ok_or_else(|| invalid(setting, "must be at least 1"))
        };
        let schedule = self
            .callback_retry_schedule
            .ok_or_else(|| invalid("callback_retry_schedule", "must be set"))?;
        let callback_retry_schedule = schedule
            .0
            .iter()
            .map(|s| {
                (s.is_finite() && (0.0..=7.0 * 86400.0).contains(s))
                    .then(|| Duration::from_secs_f64(*s))
                    .ok_or_else(|| {
                        invalid(
                            "callback_retry_schedule",
                            format!("entry {s} is not a number of seconds from 0 to 604800"),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let smtp = match self.smtp_url.filter(|u| !u.is_empty()) {
            Some(url) => {
                let settings = SmtpSettings {
                    url: url.into(),
                    from: self
                        .smtp_from
                        .ok_or_else(|| invalid("smtp_from", "must be set"))?,
                };
                // A mistake here stops the server now, not every email later.
                crate::outbound::email::Mailer::new(&settings)
                    .map_err(|e| ConfigError::Checked(e.to_string()))?;
                Some(settings)
            }
            None => None,
        };
        let outbound_proxy = self
            .outbound_proxy
            .filter(|p| !p.is_empty())
            .map(SecretUrl::new);
        if let Some(proxy) = &outbound_proxy {
            crate::outbound::guard::check_proxy(proxy)
                .map_err(|e| ConfigError::Checked(e.to_string()))?;
        }
        let max_connections = match self.max_connections {
            Some(n) => positive("max_connections", Some(n))?,
            None => super::listener::default_max_connections(),
        };
        let max_running_sessions = positive("max_running_sessions", self.max_running_sessions)?;
        let secret_key = self
            .secret_key
            .filter(|k| !k.trim().is_empty())
            .map(|k| {
                Sealer::from_base64(&k).map(Arc::new).map_err(|_| {
                    invalid(
                        "secret_key",
                        "must be 32 bytes in base64, as `herald secret-key` prints",
                    )
                })
            })
            .transpose()?;
        let public_url = self
            .public_url
            .filter(|u| !u.is_empty())
            .map(|u| base_url(&u).map_err(|problem| invalid("public_url", problem)))
            .transpose()?;
        let vonage_api_url = self
            .vonage_api_url
            .ok_or_else(|| invalid("vonage_api_url", "must be set"))
            .and_then(|u| base_url(&u).map_err(|problem| invalid("vonage_api_url", problem)))?;
        let twilio_api_url = self
            .twilio_api_url
            .ok_or_else(|| invalid("twilio_api_url", "must be set"))
            .and_then(|u| base_url(&u).map_err(|problem| invalid("twilio_api_url", problem)))?;
        let whatsapp_api_url = self
            .whatsapp_api_url
            .ok_or_else(|| invalid("whatsapp_api_url", "must be set"))
            .and_then(|u| base_url(&u).map_err(|problem| invalid("whatsapp_api_url", problem)))?;
        Ok(Config {
            listen: self.listen.expect("checked above"),
            database_url: database_url.into(),
            redis_url: self.redis_url.filter(|u| !u.is_empty()).map(SecretUrl::new),
            region: self
                .region
                .ok_or_else(|| invalid("region", "must be eu or us"))?,
            allow_private_callbacks: self.allow_private_callbacks.unwrap_or(false),
            allow_private_smsc: self.allow_private_smsc.unwrap_or(false),
            default_rate,
            max_rate,
            callback_retry_schedule,
            callback_timeout: secs(
                "callback_timeout_secs",
                self.callback_timeout_secs,
                0.1..=3600.0,
            )?,
            callback_max_in_flight: positive(
                "callback_max_in_flight",
                self.callback_max_in_flight,
            )?,
            simulator_delay: Duration::from_millis(
                self.simulator_delay_ms
                    .ok_or_else(|| invalid("simulator_delay_ms", "must be set"))?,
            ),
            dispatch_lease: secs(
                "dispatch_lease_secs",
                self.dispatch_lease_secs,
                0.1..=86400.0,
            )?,
            dispatch_max_attempts: self
                .dispatch_max_attempts
                .filter(|n| *n > 0)
                .ok_or_else(|| invalid("dispatch_max_attempts", "must be at least 1"))?,
            dispatch_retry_pause: secs(
                "dispatch_retry_secs",
                self.dispatch_retry_secs,
                0.01..=600.0,
            )?,
            message_settle: secs(
                "message_settle_secs",
                self.message_settle_secs,
                0.0..=86400.0,
            )?,
            message_reports_window: secs(
                "message_reports_secs",
                self.message_reports_secs,
                0.0..=30.0 * 86400.0,
            )?,
            shutdown_grace: secs(
                "shutdown_grace_secs",
                self.shutdown_grace_secs,
                0.0..=3600.0,
            )?,
            cache_refresh: Duration::from_millis(500),
            inbound_token: self
                .inbound_token
                .filter(|t| !t.is_empty())
                .map(Secret::new),
            bench_routes: self.bench_routes.unwrap_or(false),
            durable_commits: !self.relaxed_commits.unwrap_or(false),
            smtp,
            outbound_proxy,
            max_connections,
            header_timeout: secs(
                "header_timeout_secs",
                self.header_timeout_secs,
                0.1..=3600.0,
            )?,
            body_timeout: secs("body_timeout_secs", self.body_timeout_secs, 0.1..=3600.0)?,
            max_running_sessions,
            max_running_sessions_per_account: positive(
                "max_running_sessions_per_account",
                self.max_running_sessions_per_account,
            )?,
            secret_key,
            public_url,
            vonage_api_url,
            twilio_api_url,
            whatsapp_api_url,
            clock: crate::clock::Clock::system(),
        })
    }
}

/// A base URL others are reached on, or reach us on: http or https, a
/// host, perhaps a path, no credentials, query or fragment; the final `/`
/// is dropped, so that paths are appended to it as they are.
fn base_url(text: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(text.trim())
        .map_err(|e| format!("must be an http or https URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err("must be an http or https URL with a host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not hold a user name or password".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or a fragment".into());
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_settings_are_the_defaults() {
        let config = Config::default();
        assert_eq!(config.listen, ([127, 0, 0, 1], 8080).into());
        assert_eq!(config.database_url.expose(), "sqlite://herald.db");
        assert_eq!(config.region, Region::Eu);
        assert_eq!(config.default_rate, 1);
        assert_eq!(config.max_rate, 10_000);
        assert_eq!(
            config.callback_retry_schedule,
            [5, 300, 1800, 7200, 18000, 36000, 36000].map(Duration::from_secs)
        );
        assert_eq!(config.callback_timeout, Duration::from_secs(15));
        assert_eq!(config.simulator_delay, Duration::from_millis(20));
        assert_eq!(config.dispatch_lease, Duration::from_secs(60));
        assert!(config.durable_commits);
        assert!(!config.allow_private_callbacks);
        assert!(!config.allow_private_smsc);
        assert_eq!(config.inbound_token, None);
        assert_eq!(config.smtp, None);
        assert!(config.secret_key.is_none());
        assert_eq!(config.public_url, None);
        assert_eq!(config.vonage_api_url, "https://api.nexmo.com");
        assert_eq!(config.twilio_api_url, "https://api.twilio.com");
        assert_eq!(config.whatsapp_api_url, "https://graph.facebook.com");
    }

    #[test]
    fn base_urls_are_checked_and_lose_their_final_slash() {
        assert_eq!(
            base_url("https://herald.example.com/").as_deref(),
            Ok("https://herald.example.com")
        );
        assert_eq!(
            base_url("http://127.0.0.1:9000/herald/").as_deref(),
            Ok("http://127.0.0.1:9000/herald")
        );
        for bad in [
            "herald.example.com",
            "ftp://herald.example.com",
            "https://user:pw@herald.example.com",
            "https://herald.example.com/?a=1",
            "https://herald.example.com/#top",
        ] {
            assert!(base_url(bad).is_err(), "{bad}");
        }
        let error = Settings::layered(
            None,
            Settings {
                secret_key: Some("c2hvcnQ=".into()),
                ..Settings::default()
            },
        )
        .unwrap()
        .resolve()
        .unwrap_err()
        .to_string();
        assert!(
            error.starts_with("secret_key (HERALD_SECRET_KEY")
                && error.contains("herald secret-key"),
            "{error}"
        );
    }

    #[test]
    fn each_layer_overrides_the_one_before() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("herald.toml");
        std::fs::write(
            &file,
            "listen = \"0.0.0.0:9000\"\ndefault_rate = 3\ncallback_retry_schedule = [1, 2]\n",
        )
        .unwrap();
        let given = Settings {
            default_rate: Some(5),
            callback_retry_schedule: Some(RetrySchedule::parse("0.5").unwrap()),
            ..Settings::default()
        };
        let config = Settings::layered(Some(&file), given)
            .unwrap()
            .resolve()
            .unwrap();
        assert_eq!(config.listen, ([0, 0, 0, 0], 9000).into());
        assert_eq!(config.default_rate, 5);
        assert_eq!(config.callback_retry_schedule, [Duration::from_millis(500)]);
        // What no layer sets keeps its default.
        assert_eq!(config.max_rate, 10_000);
    }

    #[test]
    fn bad_settings_say_what_to_change() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("herald.toml");
        std::fs::write(&file, "lisen = \"0.0.0.0:9000\"\n").unwrap();
        let error = Settings::layered(Some(&file), Settings::default())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("herald.toml") && error.contains("lisen"),
            "{error}"
        );
        for (given, expected) in [
            (
                Settings {
                    default_rate: Some(0),
                    ..Settings::default()
                },
                "default_rate (HERALD_DEFAULT_RATE, --default-rate or in a configuration file) \
                 must be between 1 and max_rate (10000)",
            ),
            (
                Settings {
                    callback_timeout_secs: Some(-1.0),
                    ..Settings::default()
                },
                "callback_timeout_secs (HERALD_CALLBACK_TIMEOUT_SECS, --callback-timeout-secs \
                 or in a configuration file) must be a number of seconds from 0.1 to 3600, not -1",
            ),
            (
                Settings {
                    callback_retry_schedule: Some(RetrySchedule(vec![1.0, -2.0])),
                    ..Settings::default()
                },
                "entry -2 is not a number of seconds",
            ),
        ] {
            let error = Settings::layered(None, given)
                .unwrap()
                .resolve()
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{error}");
        }
        assert!(RetrySchedule::parse("1,,2").is_err());
        assert!(RetrySchedule::parse("soon").is_err());
    }

    #[test]
    fn no_secret_of_the_settings_prints() {
        let settings = SmtpSettings {
            url: "smtps://mailer:s3cret-smtp@mail.example.com:465".into(),
            from: "herald@example.com".into(),
        };
        let key = Sealer::generate_key();
        let printed = format!(
            "{:?}",
            Config {
                smtp: Some(settings),
                database_url: "postgres://herald:s3cret-db@db/herald".into(),
                redis_url: Some("redis://:s3cret-redis@cache:6379".into()),
                inbound_token: Some(Secret::new("s3cret-token".into())),
                outbound_proxy: Some("http://proxy:s3cret-proxy@proxy:3128".into()),
                secret_key: Some(Arc::new(Sealer::from_base64(&key).unwrap())),
                ..Config::default()
            }
        );
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(!printed.contains(&key), "{printed}");
        assert!(
            printed.contains("smtps://***@mail.example.com:465"),
            "{printed}"
        );
        assert!(printed.contains("postgres://***@db/herald"), "{printed}");
    }
}

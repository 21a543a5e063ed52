//! herald's command line (CONTRACT §9). Every flag has a `HERALD_*`
//! environment variable; flags win over the environment, which wins over
//! the defaults.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use herald_core::keys::{generate_key, hash_key};
use herald_core::secret::{redact_url, Secret, SecretUrl};
use herald_core::{AgentId, Region};
use herald_server::config::{parse_retry_schedule, Config, SmtpSettings};
use herald_server::outbound::email::Mailer;
use herald_store::StoreOptions;

#[derive(Parser)]
#[command(
    name = "herald",
    version,
    about = "Start conversations with people by voice, SMS and WhatsApp"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format.
    #[arg(long, global = true, env = "HERALD_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Run the server with a demo account, agents and template, and print
    /// curl commands to try it.
    Demo {
        #[command(flatten)]
        serve: ServeArgs,
        /// Where the demo's callback receiver listens.
        #[arg(long, env = "HERALD_DEMO_RECEIVER", default_value = "127.0.0.1:8081")]
        receiver: SocketAddr,
    },
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Manage agents' rate limits.
    Limits {
        #[command(subcommand)]
        command: LimitsCommand,
    },
    /// Print the OpenAPI document.
    Openapi,
    /// Measure herald on this machine: start a server on a fresh database,
    /// load it, and print throughput, latency, callback and memory figures
    /// against the targets (see BENCHMARKS.md).
    Bench(crate::bench::BenchArgs),
    /// Talk with an agent from the terminal, as the person it calls or
    /// messages (through the simulator): prints the conversation as it
    /// happens and sends each line you type as your answer.
    Chat(crate::chat::ChatArgs),
}

#[derive(Args)]
struct DatabaseArg {
    /// The store: sqlite://PATH (one server) or postgres://USER@HOST/DB
    /// (any number of servers).
    #[arg(
        long = "database",
        env = "HERALD_DATABASE_URL",
        default_value = "sqlite://herald.db"
    )]
    url: String,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key (and the account, if new); prints the key alone.
    Create {
        #[arg(long)]
        account: String,
        #[command(flatten)]
        database: DatabaseArg,
    },
    /// Revoke a key; servers stop accepting it within 2 seconds.
    Revoke {
        key: String,
        #[command(flatten)]
        database: DatabaseArg,
    },
}

#[derive(Subcommand)]
enum LimitsCommand {
    /// Set an agent's rate (sessions per second); servers obey it within 2 seconds.
    Set {
        #[arg(long)]
        agent: String,
        #[arg(long)]
        rate: u32,
        /// The highest rate allowed.
        #[arg(long, env = "HERALD_MAX_RATE", default_value_t = 10_000)]
        max_rate: u32,
        #[command(flatten)]
        database: DatabaseArg,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "HERALD_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    #[command(flatten)]
    database: DatabaseArg,
    /// The region this server serves.
    #[arg(long, env = "HERALD_REGION", default_value = "eu", value_parser = ["eu", "us"])]
    region: String,
    /// Allow callbacks to loopback and private addresses.
    #[arg(long, env = "HERALD_ALLOW_PRIVATE_CALLBACKS")]
    allow_private_callbacks: bool,
    /// The rate of agents without a limit of their own (sessions per second).
    #[arg(long, env = "HERALD_DEFAULT_RATE", default_value_t = 1)]
    default_rate: u32,
    /// The highest rate `herald limits set` accepts.
    #[arg(long, env = "HERALD_MAX_RATE", default_value_t = 10_000)]
    max_rate: u32,
    /// Seconds before each callback retry, comma-separated.
    #[arg(long, env = "HERALD_CALLBACK_RETRY_SCHEDULE", value_parser = parse_schedule)]
    callback_retry_schedule: Option<Schedule>,
    /// Seconds a callback attempt may take before it counts as failed.
    /// Twice this is how long a dead server's callbacks wait for another.
    #[arg(long, env = "HERALD_CALLBACK_TIMEOUT_SECS", default_value_t = 15.0, value_parser = parse_seconds)]
    callback_timeout_secs: f64,
    /// The simulator's pause before each step, in milliseconds.
    #[arg(long, env = "HERALD_SIMULATOR_DELAY_MS", default_value_t = 20)]
    simulator_delay_ms: u64,
    /// Seconds a worker holds a session's dispatch job; after a crash, its
    /// sessions are taken up again once this runs out.
    #[arg(long, env = "HERALD_DISPATCH_LEASE_SECS", default_value_t = 60.0, value_parser = parse_seconds)]
    dispatch_lease_secs: f64,
    /// Commit with synchronous=NORMAL: safe from a crash of herald, not
    /// from a power cut.
    #[arg(long, env = "HERALD_RELAXED_COMMITS")]
    relaxed_commits: bool,
    /// Share rate limits with other servers through this Redis
    /// (redis://HOST:PORT). Without it, limits are kept in this process,
    /// which is exact only while it is the one server.
    #[arg(long, env = "HERALD_REDIS_URL")]
    redis: Option<String>,
    /// Serve `POST /bench/noop`, the baseline route of `herald bench`.
    #[arg(long, env = "HERALD_BENCH_ROUTES")]
    bench_routes: bool,
    /// The SMTP relay that flows' email nodes send through:
    /// smtp://HOST:PORT (plain, such as a relay on this machine),
    /// smtp://USER:PASSWORD@HOST:587?tls=required (STARTTLS) or
    /// smtps://USER:PASSWORD@HOST:465. Without it, email nodes fail.
    // hide_env_values: --help must not print the password.
    #[arg(long, env = "HERALD_SMTP_URL", hide_env_values = true)]
    smtp_url: Option<String>,
    /// The From of flows' emails: ADDRESS or "NAME <ADDRESS>".
    #[arg(long, env = "HERALD_SMTP_FROM", default_value = "herald@localhost")]
    smtp_from: String,
    /// The secret channel providers send as `X-Herald-Inbound-Token` with
    /// inbound messages (`POST /inbound/{channel}`). Without it, that
    /// endpoint is off.
    #[arg(long, env = "HERALD_INBOUND_TOKEN", hide_env_values = true)]
    inbound_token: Option<String>,
    /// Send calls to customers' URLs (callbacks, webhook nodes, live
    /// agents) through this HTTP proxy: http://HOST:PORT. herald still
    /// checks each target's address itself. Proxy variables of the
    /// environment (HTTP_PROXY and the like) are never read.
    #[arg(long, env = "HERALD_OUTBOUND_PROXY", hide_env_values = true)]
    outbound_proxy: Option<String>,
    /// Connections served at once (a few more are kept for health checks).
    /// Default: 1024, or less when the limit on open files is lower.
    #[arg(long, env = "HERALD_MAX_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_connections: Option<u32>,
    /// Seconds a client may take to send a request's headers [default: 5].
    #[arg(long, env = "HERALD_HEADER_TIMEOUT_SECS", value_parser = parse_seconds)]
    header_timeout_secs: Option<f64>,
    /// Seconds a client may take to send a request's body [default: 10].
    #[arg(long, env = "HERALD_BODY_TIMEOUT_SECS", value_parser = parse_seconds)]
    body_timeout_secs: Option<f64>,
    /// Sessions this server runs at once [default: 1024].
    #[arg(long, env = "HERALD_MAX_RUNNING_SESSIONS", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_running_sessions: Option<u32>,
    /// Sessions of one account this server runs at once [default: 256].
    #[arg(long, env = "HERALD_MAX_RUNNING_SESSIONS_PER_ACCOUNT", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_running_sessions_per_account: Option<u32>,
}

fn parse_seconds(text: &str) -> Result<f64, String> {
    text.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.1 && *s <= 86_400.0)
        .ok_or_else(|| format!("{text:?} is not a number of seconds between 0.1 and 86400"))
}

/// A whole retry schedule as one value: clap would take a bare
/// `Vec<Duration>` for a flag given once per delay.
#[derive(Clone)]
struct Schedule(Vec<Duration>);

fn parse_schedule(text: &str) -> Result<Schedule, String> {
    parse_retry_schedule(text).map(Schedule)
}

impl ServeArgs {
    fn config(self) -> anyhow::Result<Config> {
        if self.default_rate == 0 || self.default_rate > self.max_rate {
            anyhow::bail!(
                "HERALD_DEFAULT_RATE must be between 1 and HERALD_MAX_RATE ({})",
                self.max_rate
            );
        }
        let smtp = self.smtp_url.map(|url| SmtpSettings {
            url: url.into(),
            from: self.smtp_from,
        });
        let outbound_proxy = self
            .outbound_proxy
            .filter(|p| !p.is_empty())
            .map(SecretUrl::new);
        if let Some(proxy) = &outbound_proxy {
            herald_server::outbound::guard::check_proxy(proxy)?;
        }
        if let Some(settings) = &smtp {
            // A mistake here stops the server now, not every email later.
            Mailer::new(settings)?;
        }
        let defaults = Config::default();
        let secs =
            |given: Option<f64>, default: Duration| given.map_or(default, Duration::from_secs_f64);
        Ok(Config {
            listen: self.listen,
            database_url: self.database.url.into(),
            region: self
                .region
                .parse::<Region>()
                .expect("clap checks the region"),
            allow_private_callbacks: self.allow_private_callbacks,
            default_rate: self.default_rate,
            max_rate: self.max_rate,
            callback_retry_schedule: self
                .callback_retry_schedule
                .map_or(defaults.callback_retry_schedule, |s| s.0),
            callback_timeout: Duration::from_secs_f64(self.callback_timeout_secs),
            simulator_delay: Duration::from_millis(self.simulator_delay_ms),
            dispatch_lease: Duration::from_secs_f64(self.dispatch_lease_secs),
            durable_commits: !self.relaxed_commits,
            redis_url: self.redis.map(SecretUrl::new),
            bench_routes: self.bench_routes,
            smtp,
            inbound_token: self
                .inbound_token
                .filter(|t| !t.is_empty())
                .map(Secret::new),
            outbound_proxy,
            max_connections: self.max_connections.map_or_else(
                herald_server::startup::listener::default_max_connections,
                |n| n as usize,
            ),
            header_timeout: secs(self.header_timeout_secs, defaults.header_timeout),
            body_timeout: secs(self.body_timeout_secs, defaults.body_timeout),
            max_running_sessions: self
                .max_running_sessions
                .map_or(defaults.max_running_sessions, |n| n as usize),
            max_running_sessions_per_account: self
                .max_running_sessions_per_account
                .map_or(defaults.max_running_sessions_per_account, |n| n as usize),
            ..defaults
        })
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HERALD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn open(database: &DatabaseArg) -> anyhow::Result<std::sync::Arc<dyn herald_store::Store>> {
    herald_store::open(&database.url, &StoreOptions::default())
        .await
        .with_context(|| format!("opening {}", redact_url(&database.url)))
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => {
            let config = args.config()?;
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("listening on {}", config.listen))?;
            herald_server::start(config, listener)
                .await?
                .run_until_signal()
                .await;
        }
        Command::Demo { serve, receiver } => {
            crate::demo::run(serve.config()?, receiver).await?;
        }
        Command::Keys { command } => match command {
            KeysCommand::Create { account, database } => {
                let account = account.trim();
                if account.is_empty() || account.len() > 200 {
                    anyhow::bail!("--account must be 1 to 200 characters");
                }
                let key = generate_key();
                open(&database)
                    .await?
                    .add_key(account, hash_key(&key))
                    .await?;
                println!("{key}");
            }
            KeysCommand::Revoke { key, database } => {
                if !open(&database)
                    .await?
                    .revoke_key(hash_key(key.trim()))
                    .await?
                {
                    anyhow::bail!("no live key matches");
                }
                eprintln!("revoked");
            }
        },
        Command::Limits { command } => match command {
            LimitsCommand::Set {
                agent,
                rate,
                max_rate,
                database,
            } => {
                if rate == 0 || rate > max_rate {
                    anyhow::bail!("--rate must be between 1 and {max_rate} (HERALD_MAX_RATE)");
                }
                let id: AgentId = agent.parse().map_err(|_| {
                    anyhow::anyhow!("{agent} is not an agent id (24 hex characters)")
                })?;
                if !open(&database).await?.set_rate(&id, rate).await? {
                    anyhow::bail!("agent {agent} does not exist");
                }
                eprintln!("agent {agent} may now start {rate} session(s) per second");
            }
        },
        Command::Openapi => print!("{}", herald_server::api::openapi::document()),
        Command::Bench(args) => crate::bench::run(args).await?,
        Command::Chat(args) => crate::chat::run(args).await?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve_config(args: &[&str]) -> Config {
        let cli = Cli::try_parse_from(["herald", "serve"].iter().chain(args)).unwrap();
        match cli.command {
            Command::Serve(args) => args.config().unwrap(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn serve_flags_reach_the_config() {
        let config = serve_config(&[
            "--callback-retry-schedule",
            "0.5,2",
            "--callback-timeout-secs",
            "3",
            "--redis",
            "redis://127.0.0.1:6379",
            "--database",
            "postgres://herald@db/herald",
        ]);
        assert_eq!(
            config.callback_retry_schedule,
            [Duration::from_millis(500), Duration::from_secs(2)]
        );
        assert_eq!(config.callback_timeout, Duration::from_secs(3));
        assert_eq!(
            config.redis_url.as_ref().map(SecretUrl::expose),
            Some("redis://127.0.0.1:6379")
        );
        assert_eq!(config.database_url.expose(), "postgres://herald@db/herald");
    }

    #[test]
    fn smtp_flags_reach_the_config_checked() {
        let config = serve_config(&[
            "--smtp-url",
            "smtps://mailer:s3cret@mail.example.com",
            "--smtp-from",
            "Herald <herald@example.com>",
        ]);
        assert_eq!(
            config.smtp,
            Some(SmtpSettings {
                url: "smtps://mailer:s3cret@mail.example.com".into(),
                from: "Herald <herald@example.com>".into(),
            })
        );
        let cli =
            Cli::try_parse_from(["herald", "serve", "--smtp-url", "mail.example.com"]).unwrap();
        let Command::Serve(args) = cli.command else {
            unreachable!()
        };
        let error = args.config().unwrap_err().to_string();
        assert!(error.starts_with("HERALD_SMTP_URL (--smtp-url)"), "{error}");
    }
}

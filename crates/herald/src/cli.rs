//! herald's command line (CONTRACT §9). The server's settings come in
//! layers (see `herald_server::config`): the built-in defaults, a file
//! (`--config`), `HERALD_*` variables, flags, each winning over the one
//! before.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use herald_core::keys::{generate_key, hash_key};
use herald_core::secret::redact_url;
use herald_core::AgentId;
use herald_server::config::{Config, Settings};
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
    /// Connections to channel providers.
    Connections {
        #[command(subcommand)]
        command: ConnectionsCommand,
    },
    /// Print a new key for HERALD_SECRET_KEY, which seals connections'
    /// credentials in the database.
    SecretKey,
    /// Print the OpenAPI document.
    Openapi,
    /// Print the built-in settings, each with its default and a comment: a
    /// start for a configuration file of your own (`herald serve --config`).
    Config,
    /// Measure herald on this machine: start a server on a fresh database,
    /// load it, and print throughput, latency, callback and memory figures
    /// against the targets (see BENCHMARKS.md).
    Bench(crate::bench::BenchArgs),
    /// Talk with an agent from the terminal, as the person it calls or
    /// messages (through the simulator): prints the conversation as it
    /// happens and sends each line you type as your answer.
    Chat(crate::chat::ChatArgs),
    /// Campaigns: create one from a CSV file, start, pause, resume or
    /// cancel it, and watch it run.
    Campaign(crate::campaign::CampaignArgs),
}

#[derive(Args)]
struct DatabaseArg {
    /// The store: sqlite://PATH (one server) or postgres://USER@HOST/DB
    /// (any number of servers) [default: sqlite://herald.db].
    #[arg(long = "database", env = "HERALD_DATABASE_URL", hide_env_values = true)]
    url: Option<String>,
}

impl DatabaseArg {
    /// The URL given, or the built-in default's.
    fn url(&self) -> String {
        self.url
            .clone()
            .or(Settings::defaults().database_url)
            .expect("the built-in settings name a database")
    }
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
        /// The highest rate allowed [default: 10000].
        #[arg(long, env = "HERALD_MAX_RATE")]
        max_rate: Option<u32>,
        #[command(flatten)]
        database: DatabaseArg,
    },
}

#[derive(Subcommand)]
enum ConnectionsCommand {
    /// List every account's connections (never their credentials).
    List {
        #[command(flatten)]
        serve: ServeArgs,
    },
    /// Ask the provider whether a connection's credentials work, with the
    /// server's settings (the key, the providers' API URLs).
    Check {
        connection: String,
        #[command(flatten)]
        serve: ServeArgs,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// A configuration file (TOML, as `herald config` prints): its settings
    /// override the built-in ones; variables and flags override it.
    #[arg(long, env = "HERALD_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: Settings,
}

impl ServeArgs {
    /// The configuration: the built-in settings, the file, the variables
    /// and the flags, checked once.
    fn config(self) -> anyhow::Result<Config> {
        Ok(Settings::layered(self.config.as_deref(), self.settings)?.resolve()?)
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
    let url = database.url();
    herald_store::open(&url, &StoreOptions::default())
        .await
        .with_context(|| format!("opening {}", redact_url(&url)))
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
                let max_rate = max_rate
                    .or(Settings::defaults().max_rate)
                    .expect("the built-in settings have a maximum rate");
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
        Command::Connections { command } => connections(command).await?,
        Command::SecretKey => println!("{}", herald_core::secret::Sealer::generate_key()),
        Command::Openapi => print!("{}", herald_server::api::openapi::document()),
        Command::Config => print!("{}", herald_server::config::DEFAULTS),
        Command::Bench(args) => crate::bench::run(args).await?,
        Command::Chat(args) => crate::chat::run(args).await?,
        Command::Campaign(args) => crate::campaign::run(args).await?,
    }
    Ok(())
}

async fn connections(command: ConnectionsCommand) -> anyhow::Result<()> {
    let (serve, wanted) = match command {
        ConnectionsCommand::List { serve } => (serve, None),
        ConnectionsCommand::Check { connection, serve } => (serve, Some(connection)),
    };
    let config = serve.config()?;
    let store = herald_store::open(config.database_url.expose(), &StoreOptions::default())
        .await
        .with_context(|| format!("opening {}", config.database_url))?;
    let Some(wanted) = wanted else {
        for c in store.all_connections().await?.iter().filter(|c| !c.deleted) {
            println!(
                "{}\t{}\t{}\taccount {}",
                c.id, c.provider, c.name, c.account_id
            );
        }
        return Ok(());
    };
    let id: herald_core::ConnectionId = wanted
        .parse()
        .map_err(|_| anyhow::anyhow!("{wanted} is not a connection id (24 hex characters)"))?;
    let record = store
        .connection_for_work(&id)
        .await?
        .filter(|c| !c.deleted)
        .ok_or_else(|| anyhow::anyhow!("connection {wanted} does not exist"))?;
    let (ok, detail) = herald_server::providers::open(&config, &record)?
        .check()
        .await;
    if !ok {
        anyhow::bail!("connection {wanted} ({}): {detail}", record.provider);
    }
    println!("connection {wanted} ({}): {detail}", record.provider);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use herald_core::secret::SecretUrl;
    use herald_server::config::SmtpSettings;

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

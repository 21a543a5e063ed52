//! Start-up and shutdown: the shared state every handler and worker holds,
//! and `start`, which opens the store, loads the caches and starts the
//! listener and the workers; a [`Server`] stops them gracefully.

pub mod config;
pub mod listener;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use herald_channels::{Provider, Simulator};
use herald_core::AccountId;
use herald_limit::{MemoryLimiter, RateLimiter, RedisLimiter, RedisOptions};
use herald_store::{Store, StoreOptions};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::outbound::{email, webhook};
use crate::{api, directory, metrics, outbound, session};

pub use config::Config;

/// What every handler and worker shares.
pub struct App {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub limiter: Arc<dyn RateLimiter>,
    pub provider: Arc<dyn Provider>,
    pub directory: directory::Directory,
    pub metrics: metrics::Metrics,
    /// Idempotency keys whose first request is being handled.
    pub inflight: Mutex<HashSet<(AccountId, String)>>,
    /// Poked when a session is stored, so the dispatcher need not poll.
    pub dispatch_wakeup: Notify,
    /// Rings the dispatcher when a job put to sleep briefly is due.
    pub dispatch_alarm: crate::session::dispatcher::Alarm,
    /// Poked when a callback is written or settled.
    pub callback_wakeup: Notify,
    /// Makes the calls of flows' webhook nodes and live-agent hand-overs;
    /// refuses internal addresses unless private callbacks are allowed.
    pub webhook_client: outbound::guard::GuardedClient,
    /// Sends the emails of Send Email nodes, when an SMTP relay is set.
    pub mailer: Option<email::Mailer>,
    /// The address this server answers on (to spot `status_url`s pointing
    /// back at it).
    pub local_addr: SocketAddr,
    /// Connections opened so far.
    pub providers: crate::providers::Providers,
    /// This server's even spacing of each campaign's attempts.
    pub campaign_paces: crate::campaigns::Paces,
}

pub type AppState = Arc<App>;

/// A receiver of the shutdown signal.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    pub fn is_set(&self) -> bool {
        *self.0.borrow()
    }
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
    app: AppState,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Server {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn app(&self) -> &AppState {
        &self.app
    }

    /// Stops gracefully: no new connections, requests under way finish,
    /// workers finish what they hold (bounded), then everything returns.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }

    /// Runs until Ctrl-C or SIGTERM, then stops gracefully.
    pub async fn run_until_signal(self) {
        shutdown_signal().await;
        tracing::info!("shutting down");
        self.stop().await;
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// Opens the store and starts the server on `listener`: the API and every
/// worker. Tests hand in a listener bound to port 0.
pub async fn start(config: Config, listener: TcpListener) -> anyhow::Result<Server> {
    let store = herald_store::open(
        config.database_url.expose(),
        &StoreOptions {
            durable: config.durable_commits,
        },
    )
    .await
    .with_context(|| format!("opening the store at {}", config.database_url))?;
    start_with_store(config, listener, store).await
}

pub async fn start_with_store(
    config: Config,
    listener: TcpListener,
    store: Arc<dyn Store>,
) -> anyhow::Result<Server> {
    let addr = listener.local_addr()?;
    crate::providers::check_key(&config, store.as_ref()).await?;
    let directory = directory::Directory::load(store.as_ref())
        .await
        .context("loading keys, agents and limits")?;
    let limiter: Arc<dyn RateLimiter> = match &config.redis_url {
        // Checks the URL only: a Redis that is down now is connected to
        // when it comes back, and until then triggers answer 503.
        Some(url) => Arc::new(
            RedisLimiter::new(url.expose(), RedisOptions::default())
                .await
                .with_context(|| format!("the Redis URL {url}"))?,
        ),
        None => Arc::new(MemoryLimiter::default()),
    };
    let mailer = match &config.smtp {
        Some(smtp) => Some(email::Mailer::new(smtp).context("the SMTP settings")?),
        None => None,
    };
    let app: AppState = Arc::new(App {
        webhook_client: webhook::http_client(
            config.allow_private_callbacks,
            config.outbound_proxy.as_ref(),
        ),
        mailer,
        provider: Arc::new(Simulator::new(config.simulator_delay)),
        limiter,
        config,
        store,
        directory,
        metrics: metrics::Metrics::default(),
        inflight: Mutex::new(HashSet::new()),
        dispatch_wakeup: Notify::new(),
        dispatch_alarm: Default::default(),
        callback_wakeup: Notify::new(),
        local_addr: addr,
        providers: Default::default(),
        campaign_paces: Default::default(),
    });
    let (stop, stop_rx) = watch::channel(false);
    let shutdown = Shutdown(stop_rx);
    let mut tasks = Vec::new();

    let limits = listener::Limits {
        max_connections: app.config.max_connections,
        header_timeout: app.config.header_timeout,
    };
    tasks.push(tokio::spawn(listener::serve(
        listener,
        api::router(app.clone()),
        api::reserve_router(app.clone()),
        limits,
        shutdown.clone(),
        app.config.shutdown_grace,
    )));
    tasks.push(tokio::spawn(session::dispatcher::run(
        app.clone(),
        shutdown.clone(),
    )));
    tasks.push(tokio::spawn(outbound::callbacks::run(
        app.clone(),
        shutdown.clone(),
    )));
    tasks.push(tokio::spawn(crate::campaigns::run(
        app.clone(),
        shutdown.clone(),
    )));
    tasks.push(tokio::spawn(refresh_directory(
        app.clone(),
        shutdown.clone(),
    )));
    tasks.push(tokio::spawn(api::webhooks::smpp::run(
        app.clone(),
        shutdown.clone(),
    )));
    tasks.push(tokio::spawn(purge_expired(app.clone(), shutdown)));
    tracing::info!(%addr, region = %app.config.region, "herald is serving");
    Ok(Server {
        addr,
        app,
        stop,
        tasks,
    })
}

/// Picks up changes made by other processes (CONTRACT §6.2: within 2 s).
async fn refresh_directory(app: AppState, mut shutdown: Shutdown) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(app.config.cache_refresh) => {}
            _ = shutdown.wait() => return,
        }
        match app.directory.refresh(app.store.as_ref()).await {
            Ok(revisions) => app.providers.saw(revisions.connections),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "could not refresh the directory")
            }
        }
    }
}

/// Forgets idempotency keys once they can no longer answer (CONTRACT §2.4:
/// 24 hours), so the table does not grow without end.
async fn purge_expired(app: AppState, mut shutdown: Shutdown) {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(3600);
    loop {
        match app
            .store
            .purge_idempotency(herald_store::IDEMPOTENCY_WINDOW)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(count = n, "forgot expired idempotency keys"),
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "could not purge idempotency keys"),
        }
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = shutdown.wait() => return,
        }
    }
}

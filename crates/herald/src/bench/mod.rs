//! `herald bench`: starts `herald serve` on a fresh database and measures,
//! in one run and against that one server, what DESIGN.md sets targets for:
//!
//! 1. a no-op JSON route, the baseline every other figure is a ratio of;
//! 2. accepted triggers (many agents with high limits), durable commits;
//! 3. rejected triggers (one agent at one session a second: the 429 path);
//! 4. accepted triggers at a quarter of the most the server took, open
//!    loop, for their latency;
//! 5. callbacks to a local receiver: throughput, and the time from a status
//!    change to its delivery;
//! 6. a second server's memory as more and more conversations wait in it
//!    for the person's reply;
//! 7. on a Vonage and a Twilio connection, against the loopback fakes of
//!    them the tests use ([`vonage`], [`twilio`]): how long voice webhooks
//!    take to answer with the call's next turn under load, and messages a
//!    second with their statuses coming back; and the messages on a
//!    WhatsApp Cloud connection ([`whatsapp_cloud`]);
//! 8. on an SMPP connection bound to a loopback SMSC ([`smpp`], [`smsc`]):
//!    SMS a second from trigger to `submit_sm`, and from the SMSC's
//!    receipts to the `delivered` callbacks.
//!
//! The server is a separate process, as in production, so its memory can
//! be read on its own; the load generator ([`load`]) shares the machine
//! with it, which is what the ratios to the baseline allow for.

mod campaign;
mod load;
mod providers;
mod smpp;
mod smsc;
mod twilio;
mod vonage;
mod whatsapp_cloud;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use serde_json::{json, Value};

use load::{Run, Stop, Target};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Seconds each measurement lasts.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Connections of the closed-loop runs.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Agents the accepted triggers are spread over.
    #[arg(long, default_value_t = 64)]
    agents: usize,
    /// SMS sessions whose callbacks are measured (two callbacks each).
    #[arg(long, default_value_t = 5_000)]
    callback_sessions: usize,
    /// Sessions left waiting in the memory measurement, in four steps.
    #[arg(long, default_value_t = 40_000)]
    waiting_sessions: usize,
    /// Calls placed a second through each provider's fake (Vonage's,
    /// Twilio's; three turns each), for `--seconds`.
    #[arg(long, alias = "vonage-call-rate", default_value_t = 100.0)]
    provider_call_rate: f64,
    /// SMS sessions sent through each provider's fake messages API.
    #[arg(long, alias = "vonage-messages", default_value_t = 2_000)]
    provider_messages: usize,
    /// Run the providers' scenarios only (the SMPP one among them).
    #[arg(long, alias = "vonage-only")]
    providers_only: bool,
    /// SMS sent through the loopback SMSC, each with its receipt back.
    #[arg(long, default_value_t = 20_000)]
    smpp_messages: usize,
    /// The SMPP connection's window: requests awaiting their answer at once.
    #[arg(long, default_value_t = 1000)]
    smpp_window: usize,
    /// Run the SMPP scenario only.
    #[arg(long)]
    smpp_only: bool,
    /// Recipients of the campaign scenario, uploaded as CSV.
    #[arg(long, default_value_t = 1_000_000)]
    campaign_recipients: usize,
    /// The pace the campaign is dispatched at, a second.
    #[arg(long, default_value_t = 200)]
    campaign_pace: u32,
    /// Seconds the campaign is dispatched for.
    #[arg(long, default_value_t = 10.0)]
    campaign_seconds: f64,
    /// Run the campaign scenario only.
    #[arg(long)]
    campaign_only: bool,
}

/// A `herald serve` child process, killed when dropped.
struct Server {
    addr: SocketAddr,
    key: String,
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Makes a database with a key in `dir` and serves it with `args`.
    async fn start(dir: &Path, name: &str, args: &[&str]) -> anyhow::Result<Server> {
        Server::start_with_env(dir, name, args, &[]).await
    }

    /// [`Server::start`] with these variables set too.
    async fn start_with_env(
        dir: &Path,
        name: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Server> {
        let exe = std::env::current_exe().context("finding the herald executable")?;
        let database = format!("sqlite://{}", dir.join(format!("{name}.db")).display());
        let output = Command::new(&exe)
            .args([
                "keys",
                "create",
                "--account",
                "bench",
                "--database",
                &database,
            ])
            .output()?;
        if !output.status.success() {
            bail!(
                "herald keys create failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let key = String::from_utf8(output.stdout)?.trim().to_owned();
        Server::serve_with_env(dir, name, key, args, env).await
    }

    /// Serves the database `start` made in `dir` under `name`, again.
    async fn serve(dir: &Path, name: &str, key: String, args: &[&str]) -> anyhow::Result<Server> {
        Server::serve_with_env(dir, name, key, args, &[]).await
    }

    async fn serve_with_env(
        dir: &Path,
        name: &str,
        key: String,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Server> {
        let exe = std::env::current_exe().context("finding the herald executable")?;
        let database = format!("sqlite://{}", dir.join(format!("{name}.db")).display());
        let addr = free_port()?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{name}.log")))?;
        let child = Command::new(&exe)
            .arg("serve")
            .args([
                "--database",
                &database,
                "--listen",
                &addr.to_string(),
                "--bench-routes",
            ])
            .args(["--default-rate", "1000000", "--max-rate", "1000000"])
            .args(args)
            .env("HERALD_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting herald serve")?;
        let server = Server { addr, key, child };
        for _ in 0..200 {
            if let Ok((200, _)) = server.call("GET", "/healthz", None).await {
                return Ok(server);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        bail!(
            "herald serve did not start; see {}",
            dir.join(format!("{name}.log")).display()
        )
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Bytes)> {
        load::call(self.addr, method, path, &self.key, body).await
    }

    /// Creates and publishes an agent with the default flow; returns its id.
    async fn agent(&self, channel: &str, number: u32) -> anyhow::Result<String> {
        self.agent_with(channel, number, None).await
    }

    /// Creates and publishes an agent running `flow`; returns its id.
    async fn agent_with(
        &self,
        channel: &str,
        number: u32,
        flow: Option<Value>,
    ) -> anyhow::Result<String> {
        self.agent_on(channel, number, flow, None).await
    }

    /// Creates and publishes an agent running `flow` on the connection
    /// `connection_id` (the simulator without one); returns its id.
    async fn agent_on(
        &self,
        channel: &str,
        number: u32,
        flow: Option<Value>,
        connection_id: Option<Value>,
    ) -> anyhow::Result<String> {
        let mut agent =
            json!({"name": "bench", "type": channel, "number": format!("4477009{number:05}")});
        if let Some(flow) = flow {
            agent["flow"] = flow;
        }
        if let Some(connection_id) = connection_id {
            agent["connection_id"] = connection_id;
        }
        self.publish_agent(agent).await
    }

    /// Creates the agent `agent` (its JSON) and publishes it; its id.
    async fn publish_agent(&self, agent: Value) -> anyhow::Result<String> {
        let (status, body) = self.call("POST", "/agents", Some(agent)).await?;
        if status != 201 {
            bail!(
                "creating an agent: {status} {}",
                String::from_utf8_lossy(&body)
            );
        }
        let id = serde_json::from_slice::<Value>(&body)?["agent_id"]
            .as_str()
            .context("an agent id")?
            .to_owned();
        let (status, _) = self
            .call("POST", &format!("/agents/{id}/publish"), Some(json!({})))
            .await?;
        if status != 200 {
            bail!("publishing {id}: {status}");
        }
        Ok(id)
    }

    fn target(&self, path: &str, bodies: Vec<Value>) -> Target {
        Target {
            addr: self.addr,
            path: path.to_owned(),
            key: self.key.clone(),
            bodies: Arc::new(
                bodies
                    .into_iter()
                    .map(|b| Bytes::from(b.to_string()))
                    .collect(),
            ),
        }
    }

    /// The sum of a counter's series in `/metrics`.
    async fn metric(&self, name: &str) -> anyhow::Result<u64> {
        let (_, body) = self.call("GET", "/metrics", None).await?;
        Ok(String::from_utf8_lossy(&body)
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64)
    }

    /// Waits until `n` sessions have asked their question (each sends one
    /// message), then a moment for the last to go to sleep.
    async fn wait_until_asked(&self, n: usize) -> anyhow::Result<()> {
        let started = Instant::now();
        while (self.metric("herald_sessions_dispatched_total").await? as usize) < n {
            if started.elapsed() > Duration::from_secs(600) {
                bail!("{n} sessions did not start within 10 minutes");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        Ok(())
    }

    /// Waits until every accepted session has ended; how long that took.
    async fn drain(&self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        loop {
            let accepted = self.metric("herald_sessions_accepted_total").await?;
            let ended = self.metric("herald_sessions_ended_total").await?;
            if ended >= accepted {
                return Ok(started.elapsed());
            }
            if started.elapsed() > Duration::from_secs(600) {
                bail!(
                    "{} sessions did not end within 10 minutes",
                    accepted - ended
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The server's resident memory, in MiB.
    fn rss_mib(&self) -> anyhow::Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .context("VmRSS in /proc")?;
        Ok(kib / 1024.0)
    }
}

fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn call_body(agent: &str) -> Value {
    json!({"agent_id": agent, "to": "447700900123"})
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let seconds = Duration::from_secs_f64(args.seconds);
    let c = args.connections;
    print_machine();
    if args.smpp_only {
        print_smpp(&measure_smpp(dir.path(), &args).await?);
        return Ok(());
    }
    if args.providers_only {
        for figures in measure_providers(dir.path(), &args, seconds).await? {
            print_provider(&figures);
        }
        print_smpp(&measure_smpp(dir.path(), &args).await?);
        return Ok(());
    }
    if args.campaign_only {
        print_campaign(&measure_campaign(dir.path(), &args).await?);
        return Ok(());
    }

    let server = Server::start(dir.path(), "bench", &["--allow-private-callbacks"]).await?;
    eprintln!("setting up {} agents...", args.agents + 2);
    let mut voice = Vec::new();
    for n in 0..args.agents {
        voice.push(server.agent("voice", n as u32).await?);
    }
    let limited = server.agent("voice", 90_000).await?;
    let sms = server.agent("sms", 90_001).await?;
    set_rate(&server, dir.path(), &limited, 1).await?;

    let noop = server.target("/bench/noop", voice.iter().map(|a| call_body(a)).collect());
    let accepted = server.target(
        "/telephony/make-call",
        voice.iter().map(|a| call_body(a)).collect(),
    );
    let rejected = server.target("/telephony/make-call", vec![call_body(&limited)]);

    eprintln!("warming up...");
    load::closed_loop(&noop, c, Stop::After(Duration::from_secs(1))).await?;

    let mut rows = Vec::new();
    eprintln!("no-op route...");
    let base = load::closed_loop(&noop, c, Stop::After(seconds)).await?;
    expect_only(&base, 200, "the no-op route")?;
    rows.push(("no-op JSON route (baseline)".to_owned(), base));

    eprintln!("accepted triggers...");
    let ok = load::closed_loop(&accepted, c, Stop::After(seconds)).await?;
    expect_only(&ok, 200, "accepted triggers")?;
    let max_accepted = ok.throughput();
    rows.push(("accepted triggers (durable)".to_owned(), ok));
    let drained = server.drain().await?;

    eprintln!("rejected triggers...");
    let limited_run = load::closed_loop(&rejected, c, Stop::After(seconds)).await?;
    if limited_run.count(429) + limited_run.count(200) != limited_run.latencies.len() as u64 {
        bail!(
            "rejected triggers got other answers: {:?}",
            limited_run.statuses
        );
    }
    rows.push(("rejected triggers (429)".to_owned(), limited_run));

    let quarter = max_accepted / 4.0;
    eprintln!("accepted triggers at {quarter:.0}/s, open loop...");
    server.drain().await?;
    let paced = load::open_loop(&accepted, quarter, c, seconds).await?;
    expect_only(&paced, 200, "paced triggers")?;
    rows.push((
        format!("accepted at 1/4 load ({quarter:.0}/s, open loop)"),
        paced,
    ));
    server.drain().await?;

    eprintln!("callbacks...");
    let callbacks = measure_callbacks(&server, &sms, args.callback_sessions, c).await?;

    drop(server);
    eprintln!("callbacks from a backlog...");
    let backlog = measure_backlog(dir.path(), args.callback_sessions, c).await?;
    eprintln!("memory with waiting sessions...");
    let memory = measure_memory(dir.path(), args.waiting_sessions, c).await?;
    let providers = measure_providers(dir.path(), &args, seconds).await?;
    let on_smpp = measure_smpp(dir.path(), &args).await?;
    let campaign = measure_campaign(dir.path(), &args).await?;

    print_report(&rows, drained, &callbacks, &backlog, &memory);
    for figures in &providers {
        print_provider(figures);
    }
    print_smpp(&on_smpp);
    print_campaign(&campaign);
    Ok(())
}

/// The providers' scenarios: Vonage's, Twilio's, then WhatsApp Cloud's.
async fn measure_providers(
    dir: &Path,
    args: &BenchArgs,
    seconds: Duration,
) -> anyhow::Result<Vec<providers::Figures>> {
    let (rate, messages, c) = (
        args.provider_call_rate,
        args.provider_messages,
        args.connections,
    );
    eprintln!("Vonage scenarios...");
    let on_vonage = vonage::measure(dir, rate, seconds, messages, c).await?;
    eprintln!("Twilio scenarios...");
    let on_twilio = twilio::measure(dir, rate, seconds, messages, c).await?;
    eprintln!("WhatsApp Cloud scenario...");
    let on_cloud = whatsapp_cloud::measure(dir, messages, c).await?;
    Ok(vec![on_vonage, on_twilio, on_cloud])
}

async fn measure_smpp(dir: &Path, args: &BenchArgs) -> anyhow::Result<smpp::SmppFigures> {
    eprintln!("SMPP scenario ({} SMS)...", args.smpp_messages);
    smpp::measure(dir, args.smpp_messages, args.connections, args.smpp_window).await
}

fn print_smpp(f: &smpp::SmppFigures) {
    let rate = |n: usize, d: Duration| n as f64 / d.as_secs_f64();
    println!();
    println!(
        "on the local SMSC (SMPP, window {}, per_second {}, {} bind{}):",
        f.window,
        smpp::PER_SECOND,
        f.binds,
        if f.binds == 1 { "" } else { "s" },
    );
    println!(
        "  trigger to submit_sm: {} SMS in {:.2} s = {:.0}/s",
        f.messages,
        f.to_submit.as_secs_f64(),
        rate(f.messages, f.to_submit),
    );
    println!(
        "  receipt to delivered callback: {} of {} in {:.2} s from the first receipt = {:.0}/s; receipts kept {} (of a message not found: {}), answered with an error and sent again {}",
        f.delivered,
        f.messages,
        f.from_receipts.as_secs_f64(),
        rate(f.delivered, f.from_receipts),
        f.receipts_kept,
        f.unmatched,
        f.receipts_refused,
    );
    let end_to_end = rate(f.delivered, f.end_to_end);
    println!(
        "  end to end, trigger to delivered callback: {} in {:.2} s = {end_to_end:.0}/s",
        f.delivered,
        f.end_to_end.as_secs_f64(),
    );
    let every = f.delivered == f.messages;
    println!(
        "  {} 5 000 SMS a second end to end, every receipt reported: {end_to_end:.0}/s, {} of {} reported",
        if every && end_to_end >= 5_000.0 {
            "met   "
        } else {
            "MISSED"
        },
        f.delivered,
        f.messages,
    );
}

async fn measure_campaign(
    dir: &Path,
    args: &BenchArgs,
) -> anyhow::Result<campaign::CampaignFigures> {
    eprintln!("campaign of {} recipients...", args.campaign_recipients);
    campaign::measure(
        dir,
        args.campaign_recipients,
        args.campaign_pace,
        Duration::from_secs_f64(args.campaign_seconds),
    )
    .await
}

fn print_campaign(f: &campaign::CampaignFigures) {
    println!();
    println!(
        "campaign: {} recipients uploaded as CSV and stored in {:.2} s ({:.0}/s); server memory {:.0} MiB before, peak {:.0} MiB after",
        f.recipients,
        f.upload.as_secs_f64(),
        f.recipients as f64 / f.upload.as_secs_f64(),
        f.rss_before_mib,
        f.peak_after_mib,
    );
    println!(
        "  the campaign read with its counts in {:.1} ms (median of 5)",
        f.counts_read.as_secs_f64() * 1000.0
    );
    let off = (f.mean_per_second / f64::from(f.pace) - 1.0) * 100.0;
    println!(
        "  dispatched at {}/s: {} sessions, {:.1}/s on average over whole seconds ({off:+.2}%), at most {} in any one second",
        f.pace, f.dispatched, f.mean_per_second, f.most_in_a_second,
    );
    println!("  each second: {:?}", f.each_second);
    let upload_met = f.upload < Duration::from_secs(20) || f.recipients < 1_000_000;
    println!(
        "  {} 1 000 000 recipients stored in under 20 s{}",
        if upload_met { "met   " } else { "MISSED" },
        if f.recipients < 1_000_000 {
            " (not measured: fewer recipients)"
        } else {
            ""
        },
    );
    let pace_met = off.abs() <= 1.0 && f.most_in_a_second as u32 <= f.pace;
    println!(
        "  {} pace within 1% of the set one and never above it in any second",
        if pace_met { "met   " } else { "MISSED" },
    );
}

async fn set_rate(server: &Server, dir: &Path, agent: &str, rate: u32) -> anyhow::Result<()> {
    let database = format!("sqlite://{}", dir.join("bench.db").display());
    let output = Command::new(std::env::current_exe()?)
        .args([
            "limits",
            "set",
            "--agent",
            agent,
            "--rate",
            &rate.to_string(),
            "--database",
            &database,
        ])
        .output()?;
    if !output.status.success() {
        bail!(
            "herald limits set failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // The server obeys within 2 s: wait until a second call is refused.
    for _ in 0..100 {
        let first = server
            .call("POST", "/telephony/make-call", Some(call_body(agent)))
            .await?
            .0;
        let second = server
            .call("POST", "/telephony/make-call", Some(call_body(agent)))
            .await?
            .0;
        if (first, second) == (200, 429) || (first, second) == (429, 429) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the rate of {agent} was not obeyed")
}

fn expect_only(run: &Run, status: u16, what: &str) -> anyhow::Result<()> {
    if run.count(status) != run.latencies.len() as u64 || run.errors > 0 {
        bail!(
            "{what}: expected only {status}, got {:?} and {} errors",
            run.statuses,
            run.errors
        );
    }
    Ok(())
}

struct Callbacks {
    delivered: usize,
    elapsed: Duration,
    /// From the status change (the callback's timestamp) to its receipt, ms.
    latencies: Vec<f64>,
}

async fn measure_callbacks(
    server: &Server,
    agent: &str,
    sessions: usize,
    connections: usize,
) -> anyhow::Result<Callbacks> {
    let receiver = Receiver::start(free_port()?).await?;
    let url = receiver.url();
    let target = server.target(
        "/messaging/conversation",
        vec![json!({"agent_id": agent, "to": "447700900123", "channel": "sms", "status_url": url})],
    );
    let started = Instant::now();
    let triggered = load::closed_loop(&target, connections, Stop::Count(sessions)).await?;
    expect_only(&triggered, 200, "callback sessions")?;
    let got = receiver.wait_for(2 * sessions).await?;
    let last = got.iter().map(|(at, _)| *at).max().unwrap_or(started);
    let mut latencies: Vec<f64> = got
        .iter()
        .map(|(_, lag)| *lag)
        .filter(|l| l.is_finite())
        .collect();
    latencies.sort_by(f64::total_cmp);
    Ok(Callbacks {
        delivered: got.len(),
        elapsed: last - started,
        latencies,
    })
}

/// A local receiver of callbacks: when each arrived, and how long after its
/// status changed (the body's `timestamp`), in ms.
struct Receiver {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<(Instant, f64)>>>,
    /// When each callback with a `status` came, and the status.
    statuses: Arc<Mutex<Vec<(Instant, String)>>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    async fn start(addr: SocketAddr) -> anyhow::Result<Receiver> {
        let received: Arc<Mutex<Vec<(Instant, f64)>>> = Arc::default();
        let statuses: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let (sink, status_sink) = (received.clone(), statuses.clone());
        let app = axum::Router::new().route(
            "/callbacks",
            axum::routing::post(move |body: Bytes| {
                let (sink, status_sink) = (sink.clone(), status_sink.clone());
                async move {
                    let now = chrono::Utc::now();
                    let body = serde_json::from_slice::<Value>(&body).ok();
                    if let Some(status) = body.as_ref().and_then(|b| b["status"].as_str()) {
                        status_sink
                            .lock()
                            .unwrap()
                            .push((Instant::now(), status.to_owned()));
                    }
                    let lag = body
                        .and_then(|b| {
                            chrono::DateTime::parse_from_rfc3339(b["timestamp"].as_str()?).ok()
                        })
                        .map(|t| {
                            (now - t.with_timezone(&chrono::Utc))
                                .num_microseconds()
                                .unwrap_or(0) as f64
                                / 1000.0
                        })
                        .unwrap_or(f64::NAN);
                    sink.lock().unwrap().push((Instant::now(), lag));
                    axum::http::StatusCode::NO_CONTENT
                }
            }),
        );
        let task = tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Receiver {
            addr,
            received,
            statuses,
            task,
        })
    }

    fn url(&self) -> String {
        format!("http://{}/callbacks", self.addr)
    }

    /// Waits until `n` callbacks of `status` have arrived, at most
    /// `within`; when each of those that came did.
    async fn wait_for_status(&self, status: &str, n: usize, within: Duration) -> Vec<Instant> {
        let deadline = Instant::now() + within;
        loop {
            let got: Vec<Instant> = self
                .statuses
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, s)| s == status)
                .map(|(at, _)| *at)
                .collect();
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `n` callbacks have arrived; what has.
    async fn wait_for(&self, n: usize) -> anyhow::Result<Vec<(Instant, f64)>> {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let got = self.received.lock().unwrap().len();
            if got >= n {
                return Ok(self.received.lock().unwrap().clone());
            }
            if Instant::now() > deadline {
                bail!("only {got} of {n} callbacks arrived");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Callbacks delivered from a backlog, the sender's own throughput: SMS
/// sessions end while their receiver is down, so that their callbacks wait
/// in the outbox; the server is then killed and, once every attempt cut off
/// by the kill has lost its lease, started again with the receiver up, so
/// that all of them are due at once. Counted from the restart to the last
/// delivery.
async fn measure_backlog(
    dir: &Path,
    sessions: usize,
    connections: usize,
) -> anyhow::Result<Backlog> {
    // Retries every second, many times, so that none gives up while the
    // sessions run; an attempt's lease is twice its 1 s timeout.
    let schedule = vec!["1"; 60].join(",");
    let args = [
        "--allow-private-callbacks",
        "--callback-retry-schedule",
        &schedule,
        "--callback-timeout-secs",
        "1",
    ];
    let server = Server::start(dir, "backlog", &args).await?;
    let agent = server.agent("sms", 90_002).await?;
    let receiver_addr = free_port()?;
    let target = server.target(
        "/messaging/conversation",
        vec![
            json!({"agent_id": agent, "to": "447700900123", "channel": "sms",
                    "status_url": format!("http://{receiver_addr}/callbacks")}),
        ],
    );
    let triggered = load::closed_loop(&target, connections, Stop::Count(sessions)).await?;
    expect_only(&triggered, 200, "backlog sessions")?;
    server.drain().await?;
    let key = server.key.clone();
    drop(server);
    // The latest retry time (1.2 s with jitter) and lease (2 s) pass.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let receiver = Receiver::start(receiver_addr).await?;
    let started = Instant::now();
    let server = Server::serve(dir, "backlog", key, &args).await?;
    let got = receiver.wait_for(2 * sessions).await?;
    let last = got.iter().map(|(at, _)| *at).max().unwrap_or(started);
    drop(server);
    Ok(Backlog {
        delivered: got.len(),
        elapsed: last - started,
    })
}

struct Backlog {
    delivered: usize,
    elapsed: Duration,
}

/// The server's resident memory as conversations pile up waiting for the
/// person's reply: each session sends its question, then waits an hour for
/// an answer that never comes, its state in the store.
async fn measure_memory(
    dir: &Path,
    sessions: usize,
    connections: usize,
) -> anyhow::Result<Vec<(usize, f64)>> {
    let server = Server::start(dir, "memory", &["--simulator-delay-ms", "1"]).await?;
    let question = json!({
        "format": 1,
        "start": "ask",
        "nodes": [
            {"id": "ask", "type": "collect_input", "prompt": "Can you come on Friday?",
             "entity": "yes_no", "parameter": "ANSWER", "timeout_secs": 3600,
             "success": "end", "invalid": "end", "no_input": "end"},
            {"id": "end", "type": "end"}
        ]
    });
    let mut agents = Vec::new();
    for n in 0..16 {
        let agent = server
            .agent_with("sms", 50_000 + n, Some(question.clone()))
            .await?;
        agents.push(agent);
    }
    let target = server.target(
        "/messaging/conversation",
        agents
            .iter()
            .map(|a| json!({"agent_id": a, "to": "447700900123", "channel": "sms"}))
            .collect(),
    );
    let mut points = vec![(0, server.rss_mib()?)];
    let step = sessions / 4;
    for i in 1..=4 {
        let run = load::closed_loop(&target, connections, Stop::Count(step)).await?;
        expect_only(&run, 200, "waiting sessions")?;
        server.wait_until_asked(i * step).await?;
        points.push((i * step, server.rss_mib()?));
    }
    Ok(points)
}

fn print_machine() {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    println!(
        "herald bench {}: {cores} cores, {cpu}",
        env!("CARGO_PKG_VERSION")
    );
}

fn print_report(
    rows: &[(String, Run)],
    drained: Duration,
    callbacks: &Callbacks,
    backlog: &Backlog,
    memory: &[(usize, f64)],
) {
    let base = rows[0].1.throughput();
    println!();
    println!("| scenario | requests/s | p50 ms | p99 ms | p99.9 ms | vs baseline |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, run) in rows {
        println!(
            "| {name} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} |",
            run.throughput(),
            run.quantile_ms(0.5),
            run.quantile_ms(0.99),
            run.quantile_ms(0.999),
            run.throughput() / base
        );
    }
    let accepted = &rows[1].1;
    println!();
    println!(
        "after the accepted run, the dispatcher finished its {} sessions {:.1} s later",
        accepted.latencies.len(),
        drained.as_secs_f64()
    );
    let q = |v: &[f64], q: f64| {
        v.get(((v.len().max(1) - 1) as f64 * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    let backlog_rate = backlog.delivered as f64 / backlog.elapsed.as_secs_f64();
    println!(
        "callbacks as sessions run: {} delivered in {:.2} s from the first trigger = {:.0}/s; status change to delivery p50 {:.1} ms, p99 {:.1} ms",
        callbacks.delivered,
        callbacks.elapsed.as_secs_f64(),
        callbacks.delivered as f64 / callbacks.elapsed.as_secs_f64(),
        q(&callbacks.latencies, 0.5),
        q(&callbacks.latencies, 0.99),
    );
    println!(
        "callbacks from a backlog: {} delivered in {:.2} s from the restart = {backlog_rate:.0}/s",
        backlog.delivered,
        backlog.elapsed.as_secs_f64(),
    );
    let memory_line: Vec<String> = memory
        .iter()
        .map(|(n, mib)| format!("{n}: {mib:.1} MiB"))
        .collect();
    println!(
        "server memory with conversations waiting for a reply: {}",
        memory_line.join(", ")
    );

    println!();
    println!("targets (DESIGN.md):");
    let paced = &rows[3].1;
    let checks = [
        (
            "accepted triggers >= 50% of the baseline",
            accepted.throughput() / base >= 0.5,
            format!("{:.0}%", 100.0 * accepted.throughput() / base),
        ),
        (
            "429 path >= 80% of the baseline",
            rows[2].1.throughput() / base >= 0.8,
            format!("{:.0}%", 100.0 * rows[2].1.throughput() / base),
        ),
        (
            "p99 of accepted triggers at 1/4 load <= 5 ms",
            paced.quantile_ms(0.99) <= 5.0,
            format!("{:.2} ms", paced.quantile_ms(0.99)),
        ),
        (
            "callbacks >= 10k/s (delivered from a backlog)",
            backlog_rate >= 10_000.0,
            format!("{backlog_rate:.0}/s"),
        ),
    ];
    for (what, met, value) in checks {
        println!(
            "  {} {what}: {value}",
            if met { "met   " } else { "MISSED" }
        );
    }
    let (first, last) = (memory[1].1, memory[memory.len() - 1].1);
    println!(
        "  memory from {} to {} waiting sessions: {:+.1} MiB",
        memory[1].0,
        memory[memory.len() - 1].0,
        last - first
    );
}

/// The value at quantile `q` of sorted `values`.
fn quantile(values: &[f64], q: f64) -> f64 {
    values
        .get(((values.len().max(1) - 1) as f64 * q).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

fn print_provider(figures: &providers::Figures) {
    println!();
    println!("on the fake {}:", figures.provider);
    if let Some(voice) = &figures.voice {
        println!(
            "  {} calls of three turns at {:.0}/s, all ended {:.2} s after the first ({:.0} turns/s), {} asked to hold on",
            voice.calls,
            voice.rate,
            voice.elapsed.as_secs_f64(),
            (voice.answers.len() + voice.inputs.len()) as f64 / voice.elapsed.as_secs_f64(),
            voice.held,
        );
        for (what, times) in [("answer", &voice.answers), ("input", &voice.inputs)] {
            println!(
                "  {what} webhook to its turn: {} answered, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                times.len(),
                quantile(times, 0.5),
                quantile(times, 0.99),
                times.last().copied().unwrap_or(f64::NAN),
            );
        }
    }
    println!(
        "  messages with their statuses back: {} in {:.2} s = {:.0}/s",
        figures.messages,
        figures.messages_elapsed.as_secs_f64(),
        figures.messages as f64 / figures.messages_elapsed.as_secs_f64(),
    );
    if let Some(voice) = &figures.voice {
        let p99 = quantile(&voice.inputs, 0.99).max(quantile(&voice.answers, 0.99));
        println!(
            "  {} voice webhook p99 under 50 ms at load: {p99:.2} ms",
            if p99 < 50.0 { "met   " } else { "MISSED" }
        );
    }
}

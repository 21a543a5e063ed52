//! What a trigger's write costs the SQLite store's one writer, and how that
//! cost depends on where the new session lands in the session indexes.
//!
//! Each scenario opens a fresh durable database (`synchronous=FULL`) and
//! has 64 tasks store sessions as fast as the store confirms them, as 64
//! connections of triggers would, for a few seconds. A trigger's write is
//! the session row (with its indexes), its `queued` event and its dispatch
//! job, in one group-committed transaction with the other writes waiting.
//!
//! `sessions_agent` (agent, id) and `sessions_open` (channel, recipient,
//! agent number, id) are ordered by something other than time, so each new
//! session lands on its agent's or its recipient's page of them rather than
//! at the end of the index, and every commit writes each page it touched
//! to the log whole. The scenarios move from one agent and one recipient,
//! where every index only grows at its end, to 64 agents and a new
//! recipient each, as real traffic does; the last one drops those two
//! indexes to show what they cost. The figures are sessions a second, the
//! ratio to the first scenario, and the bytes the writer thread wrote (the
//! write-ahead log) per session.
//!
//! Run with `cargo bench -p herald-store --bench intake`; `-- --seconds N`
//! sets each scenario's length (default 3).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_core::{AccountId, AgentId, Channel, SessionId};
use herald_store::sqlite::SqliteStore;
use herald_store::testing::new_session;
use herald_store::{AccountStore, NewSession, SessionStore, StoreOptions};

const TASKS: usize = 64;
const AGENTS: usize = 64;

struct Scenario {
    name: &'static str,
    agents: usize,
    new_recipient_each: bool,
    drop_indexes: bool,
}

const SCENARIOS: [Scenario; 4] = [
    Scenario {
        name: "one agent, one recipient",
        agents: 1,
        new_recipient_each: false,
        drop_indexes: false,
    },
    Scenario {
        name: "64 agents, one recipient (as `herald bench`)",
        agents: AGENTS,
        new_recipient_each: false,
        drop_indexes: false,
    },
    Scenario {
        name: "64 agents, a new recipient each",
        agents: AGENTS,
        new_recipient_each: true,
        drop_indexes: false,
    },
    Scenario {
        name: "the same without sessions_agent and sessions_open",
        agents: AGENTS,
        new_recipient_each: true,
        drop_indexes: true,
    },
];

struct Figures {
    per_second: f64,
    log_bytes_per_session: Option<f64>,
}

fn main() -> anyhow::Result<()> {
    let seconds = seconds_arg()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!("| scenario | sessions/s | vs the first | log KiB per session |");
    println!("|---|---:|---:|---:|");
    let mut first = None;
    for scenario in &SCENARIOS {
        let dir = tempfile::tempdir()?;
        let figures = runtime.block_on(run(&dir.path().join("intake.db"), scenario, seconds))?;
        let base = *first.get_or_insert(figures.per_second);
        let log = figures
            .log_bytes_per_session
            .map_or("n/a".to_owned(), |b| format!("{:.1}", b / 1024.0));
        println!(
            "| {} | {:.0} | {:.2} | {log} |",
            scenario.name,
            figures.per_second,
            figures.per_second / base
        );
    }
    Ok(())
}

/// `--seconds N` among the arguments cargo passes on (it adds `--bench`).
fn seconds_arg() -> anyhow::Result<Duration> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == "--seconds") {
        Some(i) => {
            let value = args
                .get(i + 1)
                .ok_or_else(|| anyhow::anyhow!("--seconds needs a value"))?;
            let secs: f64 = value
                .parse()
                .map_err(|_| anyhow::anyhow!("--seconds: not a number: {value}"))?;
            anyhow::ensure!(secs > 0.0, "--seconds must be positive");
            Ok(Duration::from_secs_f64(secs))
        }
        None => Ok(Duration::from_secs(3)),
    }
}

async fn run(path: &Path, scenario: &Scenario, length: Duration) -> anyhow::Result<Figures> {
    let file = path.to_str().expect("a UTF-8 temporary path");
    let store = Arc::new(SqliteStore::open(file, &StoreOptions { durable: true }).await?);
    if scenario.drop_indexes {
        rusqlite::Connection::open(path)?
            .execute_batch("DROP INDEX sessions_agent; DROP INDEX sessions_open;")?;
    }
    let account = store
        .add_key("bench", herald_core::keys::hash_key("intake"))
        .await?;
    // Each agent with a number of its own, as the agent's sessions' sender.
    let agents: Arc<Vec<(AgentId, String)>> = Arc::new(
        (0..scenario.agents)
            .map(|i| (AgentId::generate(), format!("44207000{i:04}")))
            .collect(),
    );

    // Warm up (the first pages, the statement cache), then measure.
    let stop = Arc::new(AtomicBool::new(false));
    let stored = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let (store, agents, stop, stored) =
            (store.clone(), agents.clone(), stop.clone(), stored.clone());
        let new_recipient_each = scenario.new_recipient_each;
        tasks.push(tokio::spawn(async move {
            let mut n: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                let (agent, number) = &agents[(task + n as usize) % agents.len()];
                let to = if new_recipient_each {
                    // Distinct per task and call, in no order.
                    format!(
                        "4477{:08}",
                        (task as u64 * 7_919_993 + n * 104_729) % 100_000_000
                    )
                } else {
                    "447700900123".to_owned()
                };
                store
                    .create_session(session(account, agent, number, to))
                    .await?;
                stored.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
            anyhow::Ok(())
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (start, at_start, log_at_start) = (
        Instant::now(),
        stored.load(Ordering::Relaxed),
        writer_bytes(),
    );
    tokio::time::sleep(length).await;
    let (elapsed, at_end, log_at_end) = (
        start.elapsed(),
        stored.load(Ordering::Relaxed),
        writer_bytes(),
    );
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await??;
    }
    let sessions = (at_end - at_start) as f64;
    Ok(Figures {
        per_second: sessions / elapsed.as_secs_f64(),
        log_bytes_per_session: log_at_start
            .zip(log_at_end)
            .map(|(a, b)| (b - a) as f64 / sessions),
    })
}

fn session(account: AccountId, agent: &AgentId, number: &str, to: String) -> NewSession {
    NewSession {
        channel: Channel::Voice,
        to,
        from: number.to_owned(),
        ..new_session(account, agent, SessionId::generate())
    }
}

/// Bytes the store's writer thread has written so far (its `wchar` in
/// `/proc`); on Linux only, where the thread can be found by name.
fn writer_bytes() -> Option<u64> {
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
        if comm.trim_end() == "herald-sqlite-w" {
            let io = std::fs::read_to_string(task.path().join("io")).ok()?;
            return io
                .lines()
                .find_map(|l| l.strip_prefix("wchar:"))
                .and_then(|v| v.trim().parse().ok());
        }
    }
    None
}

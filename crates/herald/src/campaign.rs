//! `herald campaign`: campaigns from the terminal (CONTRACT §12), as a
//! client of the public API with an account's key.
//!
//! - `create` makes a campaign from a CSV file of recipients (and the
//!   window, pace and retries given as flags), sending the file in parts
//!   of at most 100 000 rows, and says which rows were refused, by their
//!   line in the file;
//! - `start`, `pause`, `resume` and `cancel` move it;
//! - `watch` shows it as it runs: a progress bar with the counts by state
//!   and outcome, the rate and an estimate of the time left, until it is
//!   over; `--json` prints one JSON object a line instead, for scripts.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

/// Rows one request may carry (CONTRACT §12.2).
const ROWS_PER_REQUEST: usize = 100_000;
/// How often `watch` reads the campaign.
const WATCH_EVERY: Duration = Duration::from_millis(500);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Args)]
pub struct CampaignArgs {
    #[command(subcommand)]
    command: CampaignCommand,
    /// The herald server.
    #[arg(
        long,
        global = true,
        env = "HERALD_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    server: String,
    /// The account's API key.
    #[arg(long, global = true, env = "HERALD_KEY", hide_env_values = true)]
    key: Option<String>,
}

#[derive(Subcommand)]
enum CampaignCommand {
    /// Create a campaign, with its recipients from a CSV file; prints its id.
    Create(Box<CreateArgs>),
    /// Start a campaign (scheduled, if its start_at is to come).
    Start { campaign_id: String },
    /// Pause it: conversations under way finish, no new one starts.
    Pause { campaign_id: String },
    /// Resume a paused campaign.
    Resume { campaign_id: String },
    /// Cancel it, for good: conversations under way finish.
    Cancel { campaign_id: String },
    /// Show its progress until it is over.
    Watch {
        campaign_id: String,
        /// One JSON object a line, for scripts.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct CreateArgs {
    /// The agent whose published version talks to each recipient.
    #[arg(long)]
    agent: String,
    #[arg(long)]
    name: String,
    /// The recipients: a `to` column, optional `id` and `timezone` columns,
    /// every other column a parameter.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Where each attempt's callbacks go.
    #[arg(long)]
    status_url: Option<String>,
    /// The days of the window, e.g. mon,tue,wed,thu,fri.
    #[arg(long, value_delimiter = ',', requires = "hours")]
    days: Vec<String>,
    /// The hours of the window in the recipient's zone, e.g. 09:00-20:00.
    #[arg(long, requires = "days")]
    hours: Option<String>,
    /// The zone of recipients whose number says nothing of one.
    #[arg(long)]
    timezone: Option<String>,
    /// The most attempts started a second.
    #[arg(long)]
    per_second: Option<u32>,
    /// The most attempts under way at once.
    #[arg(long)]
    max_concurrent: Option<u32>,
    /// Attempts in all, the first included.
    #[arg(long)]
    max_attempts: Option<u32>,
    /// An outcome tried again and the seconds to wait, e.g. busy=600;
    /// repeat for more.
    #[arg(long = "retry", value_name = "OUTCOME=SECS")]
    retries: Vec<String>,
    /// RFC 3339: no attempt before it.
    #[arg(long)]
    start_at: Option<String>,
    /// RFC 3339: recipients not reached by then expire.
    #[arg(long)]
    end_at: Option<String>,
}

struct Api {
    server: String,
    key: String,
    client: reqwest::Client,
}

impl Api {
    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let response = request
            .header("X-Vgai-Key", &self.key)
            .send()
            .await
            .with_context(|| format!("reaching {}", self.server))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!(
                "{}: {}",
                status.as_u16(),
                body["message"].as_str().unwrap_or("no message")
            );
        }
        Ok(body)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.trim_end_matches('/'))
    }
}

pub async fn run(args: CampaignArgs) -> anyhow::Result<()> {
    let Some(key) = args.key else {
        bail!("give the account's key: --key KEY, or HERALD_KEY");
    };
    let api = Api {
        server: args.server,
        key,
        client: reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()?,
    };
    match args.command {
        CampaignCommand::Create(create) => create_campaign(&api, *create).await,
        CampaignCommand::Start { campaign_id } => act(&api, &campaign_id, "start").await,
        CampaignCommand::Pause { campaign_id } => act(&api, &campaign_id, "pause").await,
        CampaignCommand::Resume { campaign_id } => act(&api, &campaign_id, "resume").await,
        CampaignCommand::Cancel { campaign_id } => act(&api, &campaign_id, "cancel").await,
        CampaignCommand::Watch { campaign_id, json } => watch(&api, &campaign_id, json).await,
    }
}

/// The campaign's body from the flags.
fn body(args: &CreateArgs) -> anyhow::Result<Value> {
    let mut body = json!({"name": args.name, "agent_id": args.agent});
    if let Some(url) = &args.status_url {
        body["status_url"] = json!(url);
    }
    if let Some(hours) = &args.hours {
        let (start, end) = hours
            .split_once('-')
            .context("--hours is START-END, e.g. 09:00-20:00")?;
        body["window"] = json!({"days": args.days, "start": start, "end": end});
        if let Some(zone) = &args.timezone {
            body["window"]["timezone"] = json!(zone);
        }
    } else if args.timezone.is_some() {
        bail!("--timezone is the window's: give --days and --hours too");
    }
    if args.per_second.is_some() || args.max_concurrent.is_some() {
        body["pace"] =
            json!({"per_second": args.per_second, "max_concurrent": args.max_concurrent});
    }
    if args.max_attempts.is_some() || !args.retries.is_empty() {
        let mut after = serde_json::Map::new();
        for retry in &args.retries {
            let (outcome, secs) = retry
                .split_once('=')
                .context("--retry is OUTCOME=SECS, e.g. busy=600")?;
            let secs: u64 = secs
                .parse()
                .with_context(|| format!("--retry {retry}: SECS is a whole number"))?;
            after.insert(outcome.to_owned(), json!(secs));
        }
        body["retries"] = json!({"max_attempts": args.max_attempts.unwrap_or(1), "after": after});
    }
    if args.start_at.is_some() || args.end_at.is_some() {
        body["schedule"] = json!({"start_at": args.start_at, "end_at": args.end_at});
    }
    Ok(body)
}

/// Splits a CSV file into parts of at most `rows` rows, each beginning
/// with the header, at line ends outside quotes; with each part, the line
/// in the file of its first row.
fn parts(csv: &[u8], rows: usize) -> Vec<(Vec<u8>, u64)> {
    // Line ends outside quotes, each as the offset just after it.
    let mut ends = Vec::new();
    let mut quoted = false;
    for (i, b) in csv.iter().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            b'\n' if !quoted => ends.push(i + 1),
            _ => {}
        }
    }
    if ends.last() != Some(&csv.len()) {
        ends.push(csv.len());
    }
    let header_end = ends[0];
    let header = &csv[..header_end];
    let lines_before = |at: usize| csv[..at].iter().filter(|b| **b == b'\n').count() as u64;
    let mut parts = Vec::new();
    let mut start = header_end;
    for chunk in ends[1..].chunks(rows) {
        let end = *chunk.last().expect("chunks are not empty");
        let mut part = header.to_vec();
        part.extend_from_slice(&csv[start..end]);
        parts.push((part, lines_before(start) + 1));
        start = end;
    }
    parts
}

async fn create_campaign(api: &Api, args: CreateArgs) -> anyhow::Result<()> {
    let body = body(&args)?;
    let csv = match &args.csv {
        Some(path) => {
            let mut bytes = Vec::new();
            std::fs::File::open(path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .with_context(|| format!("reading {}", path.display()))?;
            Some(bytes)
        }
        None => None,
    };
    let created = api
        .send(api.client.post(api.url("/campaigns")).json(&body))
        .await?;
    let id = created["campaign_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (mut accepted, mut rejected) = (0u64, 0u64);
    if let Some(csv) = csv {
        let path = args.csv.as_ref().expect("a file was read").display();
        for (part, first_line) in parts(&csv, ROWS_PER_REQUEST) {
            let added = api
                .send(
                    api.client
                        .post(api.url(&format!("/campaigns/{id}/recipients")))
                        .header("Content-Type", "text/csv")
                        .body(part),
                )
                .await
                .with_context(|| format!("adding the recipients from line {first_line}"))?;
            accepted += added["accepted"].as_u64().unwrap_or(0);
            for row in added["rejected"].as_array().into_iter().flatten() {
                rejected += 1;
                // The part's line 2 is the file's `first_line`.
                let line = row["line"].as_u64().unwrap_or(0) + first_line - 2;
                eprintln!(
                    "{path}:{line}: {}",
                    row["reason"].as_str().unwrap_or("refused")
                );
            }
        }
        eprintln!("{accepted} recipients added, {rejected} refused");
    }
    println!("{id}");
    Ok(())
}

async fn act(api: &Api, id: &str, action: &str) -> anyhow::Result<()> {
    let campaign = api
        .send(
            api.client
                .post(api.url(&format!("/campaigns/{id}/{action}"))),
        )
        .await?;
    println!("{id}: {}", campaign["state"].as_str().unwrap_or("?"));
    Ok(())
}

/// What `watch` reports at each reading.
#[derive(Debug, PartialEq)]
struct Progress {
    state: String,
    total: u64,
    /// Recipients in a final state.
    done: u64,
    /// Attempts started a second, over the last readings.
    rate: f64,
    /// Seconds left at that rate, if there is one.
    eta: Option<f64>,
}

const FINAL: [&str; 5] = ["completed", "failed", "skipped", "expired", "cancelled"];

fn progress(campaign: &Value, rate: f64) -> Progress {
    let count = |name: &str| campaign["counts"][name].as_u64().unwrap_or(0);
    let total = count("recipients");
    let done: u64 = FINAL.iter().map(|s| count(s)).sum();
    let left = total.saturating_sub(done);
    Progress {
        state: campaign["state"].as_str().unwrap_or("?").to_owned(),
        total,
        done,
        rate,
        eta: (rate > 0.0 && left > 0).then(|| left as f64 / rate),
    }
}

/// One line of the progress bar.
fn bar_line(campaign: &Value, p: &Progress, width: usize) -> String {
    let filled = if p.total == 0 {
        width
    } else {
        (p.done as usize * width) / p.total as usize
    };
    let count = |name: &str| campaign["counts"][name].as_u64().unwrap_or(0);
    let mut line = format!(
        "[{}{}] {}/{} {} | pending {} waiting {} in progress {} | completed {} failed {} skipped {} expired {} cancelled {}",
        "#".repeat(filled),
        "-".repeat(width - filled),
        p.done,
        p.total,
        p.state,
        count("pending"),
        count("waiting"),
        count("in_progress"),
        count("completed"),
        count("failed"),
        count("skipped"),
        count("expired"),
        count("cancelled"),
    );
    if let Some(outcomes) = campaign["counts"]["by_outcome"].as_object() {
        let shown: Vec<String> = outcomes.iter().map(|(o, n)| format!("{o} {n}")).collect();
        if !shown.is_empty() {
            line += &format!(" | outcomes: {}", shown.join(", "));
        }
    }
    line += &format!(" | {:.1}/s", p.rate);
    if let Some(eta) = p.eta {
        line += &format!(" | ETA {}", clock(eta));
    }
    line
}

fn clock(secs: f64) -> String {
    let secs = secs.round() as u64;
    format!("{}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

async fn watch(api: &Api, id: &str, as_json: bool) -> anyhow::Result<()> {
    let terminal = std::io::stdout().is_terminal() && !as_json;
    let mut readings: Vec<(Instant, u64)> = Vec::new();
    loop {
        let campaign = api
            .send(api.client.get(api.url(&format!("/campaigns/{id}"))))
            .await?;
        let attempts = campaign["counts"]["attempts"].as_u64().unwrap_or(0);
        let now = Instant::now();
        readings.push((now, attempts));
        // The rate over the last ten seconds of readings.
        readings.retain(|(at, _)| now.duration_since(*at) <= Duration::from_secs(10));
        let (first_at, first) = readings[0];
        let span = now.duration_since(first_at).as_secs_f64();
        let rate = if span > 0.0 {
            (attempts - first.min(attempts)) as f64 / span
        } else {
            0.0
        };
        let p = progress(&campaign, rate);
        let over = p.state == "completed" || p.state == "cancelled";
        let mut out = std::io::stdout().lock();
        if as_json {
            let line = json!({"campaign_id": id, "state": p.state, "counts": campaign["counts"],
                              "done": p.done, "total": p.total, "rate": p.rate, "eta_secs": p.eta});
            writeln!(out, "{line}")?;
        } else if terminal {
            write!(out, "\r\x1b[2K{}", bar_line(&campaign, &p, 30))?;
            if over {
                writeln!(out)?;
            }
        } else {
            writeln!(out, "{}", bar_line(&campaign, &p, 30))?;
        }
        out.flush()?;
        if over {
            return Ok(());
        }
        tokio::time::sleep(WATCH_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_split_at_line_ends_outside_quotes_each_part_with_the_header() {
        let csv = b"to,NAME\n1,\"a\nb\"\n2,c\n3,d\n4,e";
        let parts = parts(csv, 2);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].0, b"to,NAME\n1,\"a\nb\"\n2,c\n".to_vec());
        assert_eq!(parts[0].1, 2);
        assert_eq!(parts[1].0, b"to,NAME\n3,d\n4,e".to_vec());
        assert_eq!(parts[1].1, 5, "row 3 is on the file's fifth line");
    }

    #[test]
    fn progress_counts_the_final_states_and_estimates_what_is_left() {
        let campaign = json!({"state": "running", "counts": {"recipients": 10, "completed": 3,
            "failed": 1, "skipped": 1, "pending": 5, "by_outcome": {"completed": 3, "busy": 1}}});
        let p = progress(&campaign, 2.5);
        assert_eq!((p.done, p.total), (5, 10));
        assert_eq!(p.eta, Some(2.0));
        let line = bar_line(&campaign, &p, 10);
        assert!(line.starts_with("[#####-----] 5/10 running"), "{line}");
        assert!(line.contains("outcomes: busy 1, completed 3"), "{line}");
        assert!(line.ends_with("| 2.5/s | ETA 0:00:02"), "{line}");
        assert_eq!(progress(&campaign, 0.0).eta, None);
    }

    #[test]
    fn flags_make_the_campaign_s_body() {
        let args = CreateArgs {
            agent: "a".into(),
            name: "n".into(),
            csv: None,
            status_url: None,
            days: vec!["mon".into(), "tue".into()],
            hours: Some("09:00-20:00".into()),
            timezone: Some("Europe/London".into()),
            per_second: Some(5),
            max_concurrent: None,
            max_attempts: Some(3),
            retries: vec!["busy=600".into()],
            start_at: None,
            end_at: None,
        };
        let body = body(&args).unwrap();
        assert_eq!(
            body["window"],
            json!({"days": ["mon", "tue"], "start": "09:00", "end": "20:00", "timezone": "Europe/London"})
        );
        assert_eq!(body["pace"]["per_second"], 5);
        assert_eq!(
            body["retries"],
            json!({"max_attempts": 3, "after": {"busy": 600}})
        );
        assert!(body.get("schedule").is_none());
    }
}

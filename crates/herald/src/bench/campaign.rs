//! `herald bench`'s campaign scenario (CONTRACT §12): a CSV file of
//! recipients uploaded and durably stored, in parts of 100 000 rows as
//! `herald campaign create` sends them, with the server's peak memory
//! before and after; then the campaign dispatched at a set pace on the
//! simulator, and the pace its sessions kept, measured from their
//! creation times: the mean per second, and the most in any one second.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::Server;

/// Rows a request carries, as `herald campaign create` sends them.
const ROWS_PER_REQUEST: usize = 100_000;

pub struct CampaignFigures {
    pub recipients: usize,
    pub upload: Duration,
    /// The server's resident memory before the upload, and its peak after.
    pub rss_before_mib: f64,
    pub peak_after_mib: f64,
    pub pace: u32,
    pub dispatched: usize,
    /// Sessions a second over the whole seconds of the run.
    pub mean_per_second: f64,
    /// The most sessions started in any one second (sliding).
    pub most_in_a_second: usize,
    /// Sessions started in each whole second from the first.
    pub each_second: Vec<usize>,
    /// The median time `GET /campaigns/{id}` took with every recipient
    /// stored, counts and all.
    pub counts_read: Duration,
}

/// The server's peak resident memory so far, in MiB.
fn peak_mib(server: &Server) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id()))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmHWM in /proc")?;
    Ok(kib / 1024.0)
}

pub async fn measure(
    dir: &Path,
    recipients: usize,
    pace: u32,
    seconds: Duration,
) -> anyhow::Result<CampaignFigures> {
    // The bench's servers give agents a rate far above any campaign's
    // pace: the campaign's own pace is what is measured.
    let server = Server::start(dir, "campaign", &[]).await?;
    let agent = server.agent("sms", 95_000).await?;
    let (status, body) = server
        .call(
            "POST",
            "/campaigns",
            Some(json!({"name": "bench", "agent_id": agent, "pace": {"per_second": pace}})),
        )
        .await?;
    if status != 201 {
        bail!(
            "creating the campaign: {status} {}",
            String::from_utf8_lossy(&body)
        );
    }
    let id = serde_json::from_slice::<Value>(&body)?["campaign_id"]
        .as_str()
        .context("a campaign id")?
        .to_owned();

    let client = reqwest::Client::new();
    let url = format!("http://{}/campaigns/{id}/recipients", server.addr);
    let rss_before_mib = server.rss_mib()?;
    let started = Instant::now();
    let mut stored = 0;
    for part in (0..recipients).collect::<Vec<_>>().chunks(ROWS_PER_REQUEST) {
        let mut csv = String::with_capacity(part.len() * 14 + 3);
        csv.push_str("to\n");
        for n in part {
            csv.push_str(&format!("447700{n:06}\n"));
        }
        let response = client
            .post(&url)
            .header("X-Vgai-Key", &server.key)
            .header("Content-Type", "text/csv")
            .body(csv)
            .send()
            .await?;
        let status = response.status();
        let added: Value = response.json().await?;
        if !status.is_success() || added["rejected"] != json!([]) {
            bail!("adding recipients: {status} {added}");
        }
        stored += added["accepted"].as_u64().unwrap_or(0) as usize;
    }
    let upload = started.elapsed();
    if stored != recipients {
        bail!("{stored} of {recipients} recipients stored");
    }
    let peak_after_mib = peak_mib(&server)?;
    let mut reads = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let (status, _) = server
            .call("GET", &format!("/campaigns/{id}"), None)
            .await?;
        reads.push(started.elapsed());
        if status != 200 {
            bail!("reading the campaign: {status}");
        }
    }
    reads.sort();
    let counts_read = reads[reads.len() / 2];

    let (status, body) = server
        .call("POST", &format!("/campaigns/{id}/start"), None)
        .await?;
    if status != 200 {
        bail!("starting: {status} {}", String::from_utf8_lossy(&body));
    }
    tokio::time::sleep(seconds).await;
    let (status, _) = server
        .call("POST", &format!("/campaigns/{id}/pause"), None)
        .await?;
    if status != 200 {
        bail!("pausing: {status}");
    }
    // Every session the campaign started, newest first, page by page.
    let mut times: Vec<DateTime<Utc>> = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, body) = server
            .call(
                "GET",
                &format!("/sessions?campaign_id={id}&limit=100{cursor}"),
                None,
            )
            .await?;
        if status != 200 {
            bail!("listing sessions: {status}");
        }
        let page: Value = serde_json::from_slice(&body)?;
        for session in page["sessions"].as_array().into_iter().flatten() {
            times.push(
                session["created_at"]
                    .as_str()
                    .context("created_at")?
                    .parse()?,
            );
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    times.sort();
    let (mean_per_second, most_in_a_second) = pace_of(&times);
    let each_second = times.first().map_or_else(Vec::new, |first| {
        let mut counts = Vec::new();
        for t in &times {
            let second = (*t - *first).num_seconds() as usize;
            if counts.len() <= second {
                counts.resize(second + 1, 0);
            }
            counts[second] += 1;
        }
        counts
    });
    Ok(CampaignFigures {
        recipients,
        upload,
        rss_before_mib,
        peak_after_mib,
        pace,
        dispatched: times.len(),
        mean_per_second,
        most_in_a_second,
        each_second,
        counts_read,
    })
}

/// The mean count over the whole seconds from the first time, and the most
/// in any one second, of sorted `times`.
fn pace_of(times: &[DateTime<Utc>]) -> (f64, usize) {
    let Some(first) = times.first() else {
        return (0.0, 0);
    };
    let second = chrono::Duration::seconds(1);
    let mut most = 0;
    let mut start = 0;
    for (end, t) in times.iter().enumerate() {
        while *t - times[start] >= second {
            start += 1;
        }
        most = most.max(end - start + 1);
    }
    let whole = (*times.last().expect("not empty") - *first).num_seconds();
    if whole < 1 {
        return (times.len() as f64, most);
    }
    let within = times
        .iter()
        .filter(|t| **t - *first < chrono::Duration::seconds(whole))
        .count();
    (within as f64 / whole as f64, most)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pace_is_the_mean_of_whole_seconds_and_the_most_in_any_one() {
        let at = |ms: i64| DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::milliseconds(ms);
        let times: Vec<_> = [0, 100, 200, 1000, 1100, 1900, 2000, 2500].map(at).to_vec();
        let (mean, most) = pace_of(&times);
        // Two whole seconds: 0..2000 holds six.
        assert_eq!(mean, 3.0);
        // 1000, 1100, 1900 (and not 2000): three; 1100..2000 holds 1100, 1900, 2000.
        assert_eq!(most, 3);
        assert_eq!(pace_of(&[]), (0.0, 0));
    }
}

//! `herald bench`'s SMPP scenario: a server whose SMS agent runs on an
//! SMPP connection bound to the bench's loopback SMSC ([`super::smsc`]),
//! which answers each `submit_sm` at once and sends its delivery receipt
//! straight after. SMS sessions are triggered as in the other providers'
//! messages scenario ([`super::providers::measure_messages`]), each with a
//! `status_url` on a local receiver; measured from the first trigger to
//! the last `submit_sm` the SMSC took, from the first receipt it sent to
//! the last `delivered` callback the receiver got, and end to end.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::providers::measure_messages;
use super::smsc::Smsc;
use super::{free_port, Receiver, Server};

const SYSTEM_ID: &str = "herald-bench";
const PASSWORD: &str = "bench-pw";
/// The connection's pace: far above what the run reaches, so that it is
/// the server's own throughput that is measured.
pub const PER_SECOND: u32 = 1_000_000;
/// How long the receipts' callbacks are waited for after the last session
/// ended.
const RECEIPTS_WAIT: Duration = Duration::from_secs(120);

/// What the SMPP scenario measured.
pub struct SmppFigures {
    pub window: usize,
    pub messages: usize,
    /// From the first trigger to the last `submit_sm` taken.
    pub to_submit: Duration,
    /// Receipts herald answered `ESME_ROK`, and answered with an error
    /// (each sent again by the SMSC).
    pub receipts_kept: usize,
    pub receipts_refused: usize,
    /// Receipts herald kept without finding the message they name (after
    /// looking for it a while), by its metrics.
    pub unmatched: usize,
    /// `delivered` callbacks that reached the `status_url`.
    pub delivered: usize,
    /// From the first receipt sent to the last `delivered` callback.
    pub from_receipts: Duration,
    /// From the first trigger to the last `delivered` callback.
    pub end_to_end: Duration,
    /// Binds the SMSC took (one, unless herald lost the bind).
    pub binds: usize,
}

pub async fn measure(
    dir: &Path,
    messages: usize,
    connections: usize,
    window: usize,
) -> anyhow::Result<SmppFigures> {
    let smsc = Smsc::start(SYSTEM_ID, PASSWORD).await?;
    let secret_key = herald_core::secret::Sealer::generate_key();
    let server = Server::start_with_env(
        dir,
        "smpp",
        // The SMSC and the callbacks' receiver are on loopback.
        &["--allow-private-callbacks", "--allow-private-smsc"],
        &[("HERALD_SECRET_KEY", secret_key.as_str())],
    )
    .await?;
    let (status, body) = server
        .call(
            "POST",
            "/connections",
            Some(json!({"name": "SMSC", "provider": "smpp",
                "credentials": {"system_id": SYSTEM_ID, "password": PASSWORD},
                "settings": {"host": "127.0.0.1", "port": smsc.port,
                             "window": window, "per_second": PER_SECOND}})),
        )
        .await?;
    if status != 201 {
        bail!(
            "creating the connection: {status} {}",
            String::from_utf8_lossy(&body)
        );
    }
    let connection: Value = serde_json::from_slice(&body)?;
    // The server binds within a second of the connection being made.
    let deadline = Instant::now() + Duration::from_secs(15);
    while smsc.binds() == 0 {
        if Instant::now() > deadline {
            bail!("herald did not bind to the SMSC within 15 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let agent = server
        .agent_on(
            "sms",
            90_100,
            None,
            Some(connection["connection_id"].clone()),
        )
        .await?;
    let receiver = Receiver::start(free_port()?).await?;
    let trigger = json!({"agent_id": agent, "to": "447700900123", "channel": "sms",
                         "status_url": receiver.url()});
    let started = Instant::now();
    let (messages, _) = measure_messages(&server, &smsc, trigger, messages, connections).await?;
    let delivered = receiver
        .wait_for_status("delivered", messages, RECEIPTS_WAIT)
        .await;
    // Every receipt answered: kept, or not (and then sent again).
    let _ = smsc.wait_for_kept(messages, Duration::from_secs(10)).await;
    let unmatched = server
        .metric(
            "herald_provider_webhooks_total{provider=\"smpp\",webhook=\"delivery_receipt\",result=\"unmatched\"",
        )
        .await? as usize;
    let last_submit = smsc.last_submit().context("no submit_sm")?;
    let first_receipt = smsc.first_receipt().context("no receipt")?;
    let last_delivered = delivered.iter().max().copied().unwrap_or(first_receipt);
    Ok(SmppFigures {
        window,
        messages,
        to_submit: last_submit - started,
        receipts_kept: smsc.receipts_kept(),
        receipts_refused: smsc.receipts_refused(),
        unmatched,
        delivered: delivered.len(),
        from_receipts: last_delivered.saturating_duration_since(first_receipt),
        end_to_end: last_delivered - started,
        binds: smsc.binds(),
    })
}

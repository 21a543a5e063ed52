//! What SMSCs report over their binds (CHANNELS §7): delivery receipts and
//! people's messages, which arrive over the bind rather than by webhook
//! but become session inputs exactly as providers' webhooks do
//! ([`message_status`], [`message_inbound`]).
//!
//! Each server holds a bind to every SMPP connection (any of them may take
//! the receipts), starting one within a refresh of the connection being
//! made; a `deliver_sm` is answered only once what it reports is stored,
//! so that one herald could not keep is sent again by the SMSC.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use herald_channels::smpp::{receipt, Delivered, Receipt, Report};
use herald_channels::ProviderKind;
use herald_core::{Channel, ConnectionId};
use tokio::sync::mpsc;

use super::{message_inbound, message_status, Fate, Message, Status};
use crate::api::error::ApiError;
use crate::providers::{Link, Opened};
use crate::startup::Shutdown;
use crate::AppState;

/// How often the server looks for SMPP connections to bind to.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// How long a receipt that names no message herald knows is looked up
/// again: an SMSC may report a message before the session that sent it
/// has stored the SMSC's id for it.
const RECEIPT_PATIENCE: Duration = Duration::from_secs(5);

/// Holds a bind to every SMPP connection and keeps what they report,
/// until `shutdown`; then unbinds.
pub async fn run(app: AppState, mut shutdown: Shutdown) {
    loop {
        if let Err(e) = bind_all(&app).await {
            tracing::warn!(error = %format!("{e:#}"), "could not look for SMPP connections");
        }
        tokio::select! {
            _ = tokio::time::sleep(LOOK_EVERY.min(app.config.cache_refresh)) => {}
            _ = shutdown.wait() => break,
        }
    }
    for smpp in app.providers.binds() {
        smpp.close().await;
    }
}

/// Opens each SMPP connection not deleted and starts its bind, and a
/// keeper of its reports for any bind whose reports nobody keeps yet.
async fn bind_all(app: &AppState) -> anyhow::Result<()> {
    let records = app.store.all_connections().await?;
    for record in records
        .iter()
        .filter(|r| r.provider == ProviderKind::Smpp.as_str())
    {
        if record.deleted {
            app.providers.drop_bind(&record.id);
            continue;
        }
        let Some(opened) = app
            .providers
            .get(&app.config, app.store.as_ref(), &record.id)
            .await?
        else {
            continue;
        };
        let Link::Smpp(smpp) = &opened.link else {
            continue;
        };
        smpp.start();
        if let Some(reports) = smpp.take_reports() {
            tokio::spawn(keep(app.clone(), record.id.clone(), reports));
        }
    }
    Ok(())
}

/// Keeps one bind's reports, each as it comes, until the bind is gone.
async fn keep(app: AppState, id: ConnectionId, mut reports: mpsc::Receiver<Report>) {
    while let Some(report) = reports.recv().await {
        // When the SMSC said it: the order reports are applied in.
        let at = Utc::now();
        let app = app.clone();
        let id = id.clone();
        tokio::spawn(async move {
            let kept = match app
                .providers
                .get(&app.config, app.store.as_ref(), &id)
                .await
            {
                Ok(Some(opened)) => apply(&app, &opened, report.delivered, at).await,
                Ok(None) => true,
                Err(e) => {
                    tracing::warn!(connection = %id, error = %format!("{e:#}"), "an SMPP report could not be kept");
                    false
                }
            };
            let _ = report.kept.send(kept);
        });
    }
}

/// Applies one report; whether it is kept (or need not be).
async fn apply(
    app: &AppState,
    opened: &Arc<Opened>,
    delivered: Delivered,
    at: DateTime<Utc>,
) -> bool {
    let (name, fate) = match delivered {
        Delivered::Receipt(receipt) => (
            "delivery_receipt",
            apply_receipt(app, opened, &receipt, at).await,
        ),
        Delivered::Message { from, to, text } => {
            let message_id = uuid::Uuid::new_v4().to_string();
            let message = Message {
                channel: Some(Channel::Sms),
                id: &message_id,
                from: &from,
                to: &to,
                text: Some(&text),
                at,
            };
            (
                "message_inbound",
                message_inbound(app, opened, message).await,
            )
        }
    };
    match fate {
        Ok(fate) => {
            app.metrics.webhook("smpp", name, fate.as_str());
            true
        }
        Err(e) => {
            tracing::warn!(connection = %opened.id, report = name, error = %e.message, "an SMPP report could not be kept");
            false
        }
    }
}

/// A receipt, applied to the message whose id it names (in whichever base
/// the SMSC gave it when the message was taken).
async fn apply_receipt(
    app: &AppState,
    opened: &Opened,
    receipt: &Receipt,
    at: DateTime<Utc>,
) -> Result<Fate, ApiError> {
    if receipt.status().is_none() {
        // A stat herald does not act on: nothing to look up.
        return Ok(Fate::Ignored);
    }
    // The form this server's bind was given the id in, if it was: another
    // form could be another message's id (the same number in the other
    // base) whose id is stored first.
    let forms = match &opened.link {
        Link::Smpp(smpp) => smpp.given_form(&receipt.id).map(|form| vec![form]),
        _ => None,
    }
    .unwrap_or_else(|| receipt::id_forms(&receipt.id));
    let reason = receipt.status().filter(|s| {
        matches!(
            s,
            herald_core::session::MessageStatus::Failed
                | herald_core::session::MessageStatus::Rejected
        )
    });
    let reason = reason.map(|_| match &receipt.err {
        Some(err) => format!("the SMSC reported {} (err {err})", receipt.stat),
        None => format!("the SMSC reported {}", receipt.stat),
    });
    let started = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(20);
    loop {
        let mut known = None;
        for form in &forms {
            if app.store.provider_ref(&opened.id, form).await?.is_some() {
                known = Some(form.clone());
                break;
            }
        }
        if let Some(id) = known {
            let status = Status {
                id: &id,
                client_ref: None,
                to: Some(&receipt.to),
                status: receipt.status(),
                word: &receipt.stat,
                reason: reason.clone(),
                at,
            };
            return message_status(app, opened, status).await;
        }
        if started.elapsed() >= RECEIPT_PATIENCE {
            tracing::info!(connection = %opened.id, "a receipt of a message herald does not know");
            return Ok(Fate::Unmatched);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

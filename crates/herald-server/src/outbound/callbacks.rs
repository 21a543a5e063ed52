//! The callback sender: delivers the outbox to `status_url`s (CONTRACT §5).
//!
//! Callbacks are claimed from the store with a lease, at most one per
//! session at a time (the oldest pending), so a session's statuses arrive in
//! the order they happened even across retries. Each attempt is signed anew
//! (the timestamp is the attempt's) with the `webhook-id` fixed when the
//! callback was written. Failures are retried on the configured schedule with
//! ±20% jitter; an exhausted or refused callback is recorded in the session's
//! events.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use herald_core::secret::redact_url;
use herald_store::{CallbackOutbox, DueCallback, Settlement, Verdict};
use rand::Rng;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::leases::LeasedWork;
use crate::outbound::guard::{refused_by_resolver, GuardedClient, Refused};
use crate::{AppState, Shutdown};

/// Most attempts recorded in one write.
const MAX_SETTLE_BATCH: usize = 256;

pub async fn run(app: AppState, mut shutdown: Shutdown) {
    // As many idle connections as can be in flight, so that a busy sender
    // reuses its connections rather than opening one per callback.
    let client = GuardedClient::new(
        app.config.allow_private_callbacks,
        app.config.callback_timeout,
        app.config.outbound_proxy.as_ref(),
    )
    .keeping_idle(app.config.callback_max_in_flight);
    let in_flight = Arc::new(Semaphore::new(app.config.callback_max_in_flight));
    // An attempt is cut off at the timeout; the lease lasts as long again,
    // so that recording the attempt fits well inside it. A callback whose
    // sender died is taken up by another once the lease runs out.
    let lease = app.config.callback_timeout * 2;
    // The part of the store the sender works on.
    let outbox: Arc<dyn CallbackOutbox> = app.store.clone();
    let mut work = LeasedWork::default();
    let (settle, settlements) = mpsc::unbounded_channel();
    let settler = tokio::spawn(settle_loop(app.clone(), outbox.clone(), settlements));
    loop {
        work.reap();
        let free = in_flight.available_permits();
        let due = if free == 0 {
            Vec::new()
        } else {
            outbox
                .claim_callbacks(Utc::now(), lease, free)
                .await
                .unwrap_or_else(|e| {
                    tracing::error!(error = %format!("{e:#}"), "could not claim callbacks");
                    Vec::new()
                })
        };
        // With every slot busy, wait for one to free up (each finished
        // attempt pokes the wakeup) rather than spin.
        let idle = free == 0 || due.len() < free;
        for callback in due {
            let permit = in_flight
                .clone()
                .acquire_owned()
                .await
                .expect("never closed");
            let (app, client, settle) = (app.clone(), client.clone(), settle.clone());
            work.spawn((callback.id, callback.lease), async move {
                let settlement = attempt(&app, &client, &callback).await;
                // Done once the attempt is recorded (or could not be: then
                // the lease runs out and the callback is tried again).
                let (recorded, done) = oneshot::channel();
                if settle.send((settlement, recorded)).is_ok() {
                    let _ = done.await;
                }
                drop(permit);
            });
        }
        if !idle {
            if shutdown.is_set() {
                break;
            }
            continue;
        }
        let wait = match outbox.next_callback_due().await {
            Ok(Some(at)) => (at - Utc::now()).to_std().unwrap_or(Duration::ZERO),
            _ => Duration::from_secs(1),
        }
        .clamp(Duration::from_millis(10), Duration::from_secs(1));
        tokio::select! {
            _ = app.callback_wakeup.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait() => break,
        }
    }
    // Attempts under way finish within the grace period; the leases of the
    // rest go back, so the next server sends them at once.
    let unfinished = work.drain(app.config.shutdown_grace).await;
    drop(settle);
    let _ = settler.await;
    if !unfinished.is_empty() {
        if let Err(e) = outbox.release_callbacks(unfinished).await {
            tracing::warn!(error = %format!("{e:#}"), "could not give back callbacks");
        }
    }
}

type Recorded = oneshot::Sender<()>;

/// Records finished attempts: each write takes every attempt that finished
/// while the last was being written, so that a busy sender spends one store
/// write on many callbacks rather than one each. Ends when every sender of
/// attempts has gone.
async fn settle_loop(
    app: AppState,
    outbox: Arc<dyn CallbackOutbox>,
    mut finished: mpsc::UnboundedReceiver<(Settlement, Recorded)>,
) {
    let mut batch = Vec::new();
    while finished.recv_many(&mut batch, MAX_SETTLE_BATCH).await > 0 {
        let (settlements, waiting): (Vec<_>, Vec<_>) = batch.drain(..).unzip();
        if let Err(e) = outbox.settle_callbacks(settlements).await {
            tracing::error!(error = %format!("{e:#}"), "could not record callback attempts");
        }
        for w in waiting {
            let _ = w.send(());
        }
        // The sessions' next callbacks may now be due.
        app.callback_wakeup.notify_one();
    }
}

/// One delivery attempt, and what to record of it.
async fn attempt(app: &AppState, client: &GuardedClient, cb: &DueCallback) -> Settlement {
    let attempts = cb.attempts + 1;
    let result = send(app, client, cb).await;
    let at = Utc::now();
    let verdict = match result {
        Ok(()) => {
            app.metrics.callback("delivered");
            Verdict::Delivered
        }
        Err(Failure::Refused(reason)) => {
            app.metrics.callback("refused");
            tracing::warn!(session_id = %cb.session_id, url = %redact_url(&cb.url), "{reason}");
            Verdict::Failed { error: reason }
        }
        Err(Failure::Retryable(error)) => {
            let schedule = &app.config.callback_retry_schedule;
            match schedule.get(cb.attempts as usize) {
                Some(delay) => {
                    app.metrics.callback("retry");
                    Verdict::Retry {
                        next_at: at
                            + chrono::Duration::from_std(jitter(*delay)).unwrap_or_default(),
                        error,
                    }
                }
                None => {
                    app.metrics.callback("failed");
                    Verdict::Failed {
                        error: format!("gave up after {attempts} attempts: {error}"),
                    }
                }
            }
        }
    };
    Settlement {
        id: cb.id,
        lease: cb.lease,
        attempts,
        at,
        verdict,
    }
}

enum Failure {
    /// Never to be sent (an internal address).
    Refused(String),
    Retryable(String),
}

async fn send(app: &AppState, client: &GuardedClient, cb: &DueCallback) -> Result<(), Failure> {
    let url =
        reqwest::Url::parse(&cb.url).map_err(|e| Failure::Refused(format!("invalid URL: {e}")))?;
    client.check(&url).await.map_err(refusal)?;
    let account = app.directory.account(cb.account_id);
    let timestamp = Utc::now().timestamp();
    let mut request = client
        .client()
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", &cb.webhook_id)
        .header("webhook-timestamp", timestamp.to_string());
    if let Some(key) = account.and_then(|a| a.signing_key) {
        request = request.header(
            "webhook-signature",
            key.sign(&cb.webhook_id, timestamp, cb.body.as_bytes()),
        );
    }
    match request.body(cb.body.clone()).send().await {
        Ok(response) if response.status().is_success() => Ok(()),
        Ok(response) => Err(Failure::Retryable(format!(
            "the receiver answered {}",
            response.status()
        ))),
        Err(e) => match refused_by_resolver(&e) {
            Some(refused) => Err(refusal(refused.clone())),
            None => Err(Failure::Retryable(describe(&e))),
        },
    }
}

fn refusal(refused: Refused) -> Failure {
    match refused {
        Refused::Internal(_) => Failure::Refused(refused.to_string()),
        // A name that does not resolve now may tomorrow.
        Refused::Unresolved => Failure::Retryable(refused.to_string()),
    }
}

/// Why an attempt failed, for the session's events. reqwest's own message
/// names the URL, which may carry a token, so it is never used.
fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "the receiver did not answer in time".into()
    } else if e.is_connect() {
        "could not connect to the receiver".into()
    } else if e.is_body() || e.is_decode() {
        "the connection broke before the answer was complete".into()
    } else {
        "the request failed".into()
    }
}

/// ±20%, so that many callbacks failing together do not retry together.
fn jitter(delay: Duration) -> Duration {
    delay.mul_f64(rand::thread_rng().gen_range(0.8..=1.2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_a_fifth() {
        for _ in 0..1000 {
            let d = jitter(Duration::from_secs(100));
            assert!(d >= Duration::from_secs(80) && d <= Duration::from_secs(120));
        }
    }
}

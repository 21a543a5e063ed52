//! The dispatcher: takes due session jobs off the queue (new sessions,
//! sessions with new input, sessions whose timer is due) and hands each to
//! the runtime driver ([`crate::runtime`]) under a lease it keeps renewing.
//!
//! A server runs at most `max_running_sessions` sessions at once, and at
//! most `max_running_sessions_per_account` of one account: a claim passes
//! over accounts that have their share, so one account's backlog or slow
//! endpoints never keep another's sessions waiting. A session waiting on an
//! outside call (a flow's webhook, a live agent's endpoint, an email relay)
//! gives its running place up while it waits ([`Slot::outside`]); it still
//! counts against its account's share.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use std::time::Duration;

use chrono::{DateTime, Utc};
use herald_core::AccountId;
use herald_store::{DispatchLease, DispatchQueue, StoreError};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::leases::LeasedWork;
use crate::{AppState, Shutdown};

const CLAIM_BATCH: usize = 128;

/// How long an idle dispatcher waits before it looks for due jobs again,
/// unless it is poked or its [`Alarm`] rings first.
const POLL: Duration = Duration::from_millis(250);

/// When the soonest job this server put to sleep is due, if that is
/// sooner than the next poll: a short sleep (a simulated report, a short
/// timer of a flow) ends when it is due rather than at the next poll.
#[derive(Default)]
pub struct Alarm(Mutex<Option<Instant>>);

impl Alarm {
    /// A job sleeps until `at`: rings then if that is sooner than the next
    /// poll and than the alarm already set.
    pub fn set(&self, at: DateTime<Utc>, wakeup: &Notify) {
        let Ok(wait) = (at - Utc::now()).to_std() else {
            return;
        };
        if wait >= POLL {
            return;
        }
        // A little after `at`, so that the claim finds the job due.
        let ring = Instant::now() + wait + Duration::from_millis(1);
        let mut alarm = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if alarm.is_none_or(|set| ring < set) {
            *alarm = Some(ring);
            // The dispatcher may be asleep until later: it looks again.
            wakeup.notify_one();
        }
    }

    /// When an idle dispatcher next looks for due jobs: at the next poll,
    /// or when the alarm rings. `None` when it has rung already.
    fn next(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut alarm = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match *alarm {
            Some(ring) if ring <= now => {
                *alarm = None;
                None
            }
            Some(ring) => Some(ring.min(now + POLL)),
            None => Some(now + POLL),
        }
    }
}

/// The sessions of each account this server holds (running, or waiting on
/// an outside call).
#[derive(Default)]
struct Shares(Mutex<HashMap<AccountId, usize>>);

impl Shares {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<AccountId, usize>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The accounts that have `cap` sessions or more.
    fn full(&self, cap: usize) -> Vec<AccountId> {
        self.lock()
            .iter()
            .filter(|(_, held)| **held >= cap)
            .map(|(account, _)| *account)
            .collect()
    }

    /// Takes a place for `account` unless it has `cap` already.
    fn take(&self, account: AccountId, cap: usize) -> bool {
        let mut shares = self.lock();
        let held = shares.entry(account).or_default();
        if *held >= cap {
            return false;
        }
        *held += 1;
        true
    }

    /// Gives a place of `account` back; true if the account had its whole
    /// share, so that its jobs the claims passed over may now be taken.
    fn give_back(&self, account: AccountId, cap: usize) -> bool {
        let mut shares = self.lock();
        let Some(held) = shares.get_mut(&account) else {
            return false;
        };
        let was_full = *held >= cap;
        *held -= 1;
        if *held == 0 {
            shares.remove(&account);
        }
        was_full
    }
}

/// A running session's place among the server's running sessions.
pub struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    running: Arc<Semaphore>,
}

impl Slot {
    /// A place that bounds nothing, for running a session outside the
    /// dispatcher (tests).
    pub fn unbounded() -> Self {
        Slot {
            permit: None,
            running: Arc::new(Semaphore::new(Semaphore::MAX_PERMITS)),
        }
    }

    /// Runs `call` (a request to an outside endpoint) without holding the
    /// running place, so that sessions with work to do are not kept
    /// waiting by one that waits on someone else's server; takes a place
    /// again before going on.
    pub async fn outside<F: Future>(&mut self, call: F) -> F::Output {
        let had = self.permit.take().is_some();
        let answer = call.await;
        if had {
            self.permit = Some(
                self.running
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("never closed"),
            );
        }
        answer
    }
}

pub async fn run(app: AppState, mut shutdown: Shutdown) {
    // The part of the store the dispatcher works on.
    let queue: Arc<dyn DispatchQueue> = app.store.clone();
    let running = Arc::new(Semaphore::new(app.config.max_running_sessions.max(1)));
    let per_account = app.config.max_running_sessions_per_account.max(1);
    let shares = Arc::new(Shares::default());
    let mut work = LeasedWork::default();
    loop {
        work.reap();
        let free = running.available_permits().min(CLAIM_BATCH);
        let claimed = if free == 0 {
            Vec::new()
        } else {
            let full = shares.full(per_account);
            match queue
                .claim_dispatches(Utc::now(), app.config.dispatch_lease, free, &full)
                .await
            {
                Ok(leases) => leases,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "could not claim dispatch jobs");
                    Vec::new()
                }
            }
        };
        // With every slot busy, wait a little rather than spin.
        let idle = free == 0 || claimed.len() < free;
        let mut over_share = Vec::new();
        for lease in claimed {
            // One claim may take more of an account than its share has
            // left: the rest goes back at once, to be claimed when there
            // is room.
            if !shares.take(lease.account_id, per_account) {
                over_share.push(lease);
                continue;
            }
            let permit = running.clone().acquire_owned().await.expect("never closed");
            let slot = Slot {
                permit: Some(permit),
                running: running.clone(),
            };
            let (app, shares) = (app.clone(), shares.clone());
            work.spawn(lease, async move {
                match run_holding_lease(&app, lease, slot).await {
                    Ok(()) => {}
                    Err(e) if is_lease_lost(&e) => {
                        tracing::warn!(session_id = %lease.session_id, "lost the lease on a session; another worker has it");
                    }
                    Err(e) => after_failed_run(&app, lease, e).await,
                }
                if shares.give_back(lease.account_id, per_account) {
                    app.dispatch_wakeup.notify_one();
                }
            });
        }
        if !over_share.is_empty() {
            if let Err(e) = queue.release_dispatches(over_share).await {
                tracing::warn!(error = %format!("{e:#}"), "could not give back dispatch jobs");
            }
        }
        if idle {
            let Some(next) = app.dispatch_alarm.next() else {
                continue;
            };
            tokio::select! {
                _ = app.dispatch_wakeup.notified() => {}
                _ = tokio::time::sleep_until(next) => {}
                _ = shutdown.wait() => break,
            }
        } else if shutdown.is_set() {
            break;
        }
    }
    // Let sessions under way finish, within the grace period; give the
    // leases of the rest back so the next server starts them at once.
    let unfinished = work.drain(app.config.shutdown_grace).await;
    if !unfinished.is_empty() {
        tracing::info!(
            count = unfinished.len(),
            "giving back unfinished dispatch jobs"
        );
        if let Err(e) = queue.release_dispatches(unfinished).await {
            tracing::warn!(error = %format!("{e:#}"), "could not give back dispatch jobs");
        }
    }
}

/// A run failed: a session that cannot run (for a reason that will not
/// pass, or after too many runs in a row that failed) ends `failed`; any
/// other tries again after a pause that grows with each failure.
async fn after_failed_run(app: &AppState, lease: DispatchLease, error: anyhow::Error) {
    let id = lease.session_id;
    let permanent = crate::session::driver::permanent(&error);
    let max = app.config.dispatch_max_attempts;
    if permanent.is_some() || lease.attempts >= max {
        tracing::error!(session_id = %id, attempts = lease.attempts, error = %format!("{error:#}"),
            "session run failed for good; ending the session");
        let down = error.downcast_ref::<crate::session::driver::ProviderDown>();
        let why = permanent.unwrap_or_else(|| match down {
            Some(down) => format!("{}; gave up after {} attempts", down.reason, lease.attempts),
            None => format!(
                "the session could not run: {} attempts failed",
                lease.attempts
            ),
        });
        let unsent = down.and_then(|d| d.message);
        if let Err(e) = crate::session::driver::fail_session(app, lease, why, unsent).await {
            // The lease runs out and the next claim tries again.
            tracing::error!(session_id = %id, error = %format!("{e:#}"), "could not end a failed session");
        }
        return;
    }
    let pause = retry_pause(app.config.dispatch_retry_pause, lease.attempts);
    tracing::warn!(session_id = %id, attempts = lease.attempts, error = %format!("{error:#}"),
        "session run failed; trying again in {pause:?}");
    let at = Utc::now() + chrono::Duration::from_std(pause).unwrap_or_default();
    let queue: &dyn DispatchQueue = app.store.as_ref();
    if let Err(e) = queue.retry_dispatch(lease, at).await {
        // The lease runs out all the same, and the job is due then.
        tracing::warn!(session_id = %id, error = %format!("{e:#}"), "could not put a failed run off");
    }
}

/// The pause before the next run after `attempts` runs failed in a row:
/// `base` (5 s by default), doubling, at most 10 minutes, with ±20% jitter
/// so that sessions failing together do not retry together.
fn retry_pause(base: std::time::Duration, attempts: u32) -> std::time::Duration {
    let cap = std::time::Duration::from_secs(600);
    let pause = base
        .saturating_mul(1 << attempts.saturating_sub(1).min(10))
        .min(cap);
    pause.mul_f64(rand::Rng::gen_range(&mut rand::thread_rng(), 0.8..=1.2))
}

fn is_lease_lost(e: &anyhow::Error) -> bool {
    matches!(e.downcast_ref::<StoreError>(), Some(StoreError::LeaseLost))
}

/// Runs a session, renewing its job's lease while it runs, so that a
/// session longer than the lease is not taken up a second time. If the
/// lease is lost all the same (this worker stalled past it and another took
/// the job), the run stops: its writes would be refused anyway.
async fn run_holding_lease(app: &AppState, lease: DispatchLease, slot: Slot) -> anyhow::Result<()> {
    // The run and the renewals are polled side by side: a renewal waiting on
    // the store never holds the run up, nor the other way round. The run is
    // polled first: its last write removes the job, so a renewal committed
    // with that write finds no job and reports the lease lost, and the run,
    // ready at the same time, must not be dropped for it (it still has the
    // session's end to count).
    tokio::select! {
        biased;
        result = crate::session::driver::run_session(app, lease, slot) => result,
        lost = keep_renewing(app, lease) => Err(lost.into()),
    }
}

/// Renews the lease every third of its length; returns once it is lost.
pub(crate) async fn keep_renewing(app: &AppState, lease: DispatchLease) -> StoreError {
    let length = app.config.dispatch_lease;
    let mut renew = tokio::time::interval(length / 3);
    renew.tick().await; // the first tick is immediate; the claim just set the lease
    loop {
        renew.tick().await;
        let until = Utc::now() + chrono::Duration::from_std(length).unwrap_or_default();
        let queue: &dyn DispatchQueue = app.store.as_ref();
        match queue.renew_dispatch(lease, until).await {
            Ok(true) => {}
            Ok(false) => return StoreError::LeaseLost,
            Err(e) => {
                tracing::warn!(session_id = %lease.session_id, error = %format!("{e:#}"), "could not renew a lease");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::retry_pause;

    #[test]
    fn retries_back_off_to_ten_minutes() {
        for (attempts, nominal) in [(1, 5), (2, 10), (3, 20), (4, 40), (8, 600), (40, 600)] {
            let pause = retry_pause(Duration::from_secs(5), attempts);
            let nominal = Duration::from_secs(nominal);
            assert!(
                pause >= nominal.mul_f64(0.8) && pause <= nominal.mul_f64(1.2),
                "{attempts}: {pause:?}"
            );
        }
    }
}

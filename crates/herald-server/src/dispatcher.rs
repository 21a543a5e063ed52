//! The dispatcher: takes due session jobs off the queue (new sessions,
//! sessions with new input, sessions whose timer is due) and hands each to
//! the runtime driver ([`crate::runtime`]) under a lease it keeps renewing.

use std::sync::Arc;

use chrono::Utc;
use herald_store::{DispatchLease, StoreError};
use tokio::sync::Semaphore;

use crate::work::LeasedWork;
use crate::{AppState, Shutdown};

/// Sessions run at once by one server.
const MAX_RUNNING: usize = 1024;
const CLAIM_BATCH: usize = 128;

pub async fn run(app: AppState, mut shutdown: Shutdown) {
    let running = Arc::new(Semaphore::new(MAX_RUNNING));
    let mut work = LeasedWork::default();
    loop {
        work.reap();
        let free = running.available_permits().min(CLAIM_BATCH);
        let claimed = if free == 0 {
            Vec::new()
        } else {
            match app
                .store
                .claim_dispatches(Utc::now(), app.config.dispatch_lease, free)
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
        for lease in claimed {
            let permit = running.clone().acquire_owned().await.expect("never closed");
            let app = app.clone();
            work.spawn(lease, async move {
                let id = lease.session_id;
                match run_holding_lease(&app, lease).await {
                    Ok(()) => {}
                    Err(e) if is_lease_lost(&e) => {
                        tracing::warn!(session_id = %id, "lost the lease on a session; another worker has it");
                    }
                    // The job keeps its lease and runs again when it expires.
                    Err(e) => {
                        tracing::error!(session_id = %id, error = %format!("{e:#}"), "session run failed")
                    }
                }
                drop(permit);
            });
        }
        if idle {
            tokio::select! {
                _ = app.dispatch_wakeup.notified() => {}
                _ = tokio::time::sleep(std::time::Duration::from_millis(250)) => {}
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
        if let Err(e) = app.store.release_dispatches(unfinished).await {
            tracing::warn!(error = %format!("{e:#}"), "could not give back dispatch jobs");
        }
    }
}

fn is_lease_lost(e: &anyhow::Error) -> bool {
    matches!(e.downcast_ref::<StoreError>(), Some(StoreError::LeaseLost))
}

/// Runs a session, renewing its job's lease while it runs, so that a
/// session longer than the lease is not taken up a second time. If the
/// lease is lost all the same (this worker stalled past it and another took
/// the job), the run stops: its writes would be refused anyway.
async fn run_holding_lease(app: &AppState, lease: DispatchLease) -> anyhow::Result<()> {
    // The run and the renewals are polled side by side: a renewal waiting on
    // the store never holds the run up, nor the other way round. The run is
    // polled first: its last write removes the job, so a renewal committed
    // with that write finds no job and reports the lease lost, and the run,
    // ready at the same time, must not be dropped for it (it still has the
    // session's end to count).
    tokio::select! {
        biased;
        result = crate::runtime::run_session(app, lease) => result,
        lost = keep_renewing(app, lease) => Err(lost.into()),
    }
}

/// Renews the lease every third of its length; returns once it is lost.
async fn keep_renewing(app: &AppState, lease: DispatchLease) -> StoreError {
    let length = app.config.dispatch_lease;
    let mut renew = tokio::time::interval(length / 3);
    renew.tick().await; // the first tick is immediate; the claim just set the lease
    loop {
        renew.tick().await;
        let until = Utc::now() + chrono::Duration::from_std(length).unwrap_or_default();
        match app.store.renew_dispatch(lease, until).await {
            Ok(true) => {}
            Ok(false) => return StoreError::LeaseLost,
            Err(e) => {
                tracing::warn!(session_id = %lease.session_id, error = %format!("{e:#}"), "could not renew a lease");
            }
        }
    }
}

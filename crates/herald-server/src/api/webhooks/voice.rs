//! A provider-driven call's webhooks (CHANNELS §1.2, §3): the answer and
//! each input step the session inline, under its lease, and are answered
//! with the call's next turn; events (progress, machine detection, the
//! end) become inputs that wake the session.
//!
//! The provider waits for the turn a few seconds at most (Vonage: 5 s).
//! When herald cannot answer in time (the session's lease is held, the
//! store is slow, a flow's webhook takes long) it answers with a short
//! pause and a fetch of the next turn (CONTRACT §11.4); the turn, worked
//! out meanwhile, is stored with the session and given on that fetch.

use std::time::Duration;

use chrono::{DateTime, Utc};
use herald_channels::adapter::{CallStatus, CallTurn, Heard};
use herald_core::session::{AnsweredBy, CallProgress, SessionInput, SessionStatus};
use herald_core::{Channel, SessionId};
use herald_store::NewInput;
use serde_json::Value;
use tokio::time::Instant;

use super::{readable, runs_on, Fate, Query};
use crate::api::error::ApiError;
use crate::providers::Opened;
use crate::session::dispatcher::keep_renewing;
use crate::session::driver::{self, Happening, CALL_ITEM};
use crate::AppState;

/// How long a voice webhook may take to find its turn before herald asks
/// the provider to hold on: well inside Vonage's 5 s.
const TURN_BUDGET: Duration = Duration::from_millis(3500);
/// How often a webhook tries for a lease another run holds.
const LEASE_POLL: Duration = Duration::from_millis(20);

/// The session of the call `uuid` on the connection: by the call's id, as
/// stored when it was placed; or, for a webhook that outran that write
/// (or herald's own `notify`, which names no call), the session named in
/// the URL herald gave, if it is a call on this connection and has placed
/// no other call.
async fn find_call(
    app: &AppState,
    opened: &Opened,
    uuid: Option<&str>,
    named: Option<SessionId>,
) -> Result<Option<SessionId>, ApiError> {
    if let Some(uuid) = uuid {
        if let Some(found) = app.store.provider_ref(&opened.id, uuid).await? {
            return Ok((found.item == CALL_ITEM).then_some(found.session_id));
        }
    }
    let Some(session) = named else {
        return Ok(None);
    };
    let is_call = app
        .store
        .session_for_work(session)
        .await?
        .is_some_and(|s| s.channel == Channel::Voice);
    if !is_call || !runs_on(app, opened, session).await? {
        return Ok(None);
    }
    let Some(uuid) = uuid else {
        // herald's own `notify` payload, which names no call.
        return Ok(Some(session));
    };
    let other_call = app
        .store
        .session_provider_refs(session)
        .await?
        .into_iter()
        .any(|r| r.item == CALL_ITEM && r.provider_ref != uuid);
    Ok((!other_call).then_some(session))
}

/// A provider's report of a call, as any provider makes it.
pub(super) struct CallReport<'a> {
    /// The provider's id of the call.
    pub call: Option<&'a str>,
    /// What it means; `None` for one herald does not know.
    pub status: Option<CallStatus>,
    /// The provider's own word for it, which keys it.
    pub word: &'a str,
    pub at: DateTime<Utc>,
}

/// An event of a call (CHANNELS §1.2): an input of its session, keyed by
/// the call and the status so that a second delivery is the first.
pub(super) async fn event(
    app: &AppState,
    opened: &Opened,
    query: &Query,
    report: CallReport<'_>,
) -> Result<Fate, ApiError> {
    let progress = match report.status {
        None | Some(CallStatus::Progress) => return Ok(Fate::Ignored),
        Some(CallStatus::Machine) => CallProgress::Answered {
            by: AnsweredBy::Machine,
        },
        Some(CallStatus::NotAnswered(failure)) => CallProgress::NotAnswered { failure },
        Some(CallStatus::Completed) => CallProgress::Completed,
    };
    let Some(call) = report.call else {
        return Ok(Fate::Unmatched);
    };
    let Some(session) = find_call(app, opened, Some(call), query.session).await? else {
        tracing::info!(connection = %opened.id, "an event of a call herald does not know");
        return Ok(Fate::Unmatched);
    };
    let input = NewInput {
        input: SessionInput::CallProgress(progress),
        at: report.at,
        dedupe: Some(format!("event:{call}:{}", report.word)),
    };
    if app.store.deliver_input(session, input).await?.is_none() {
        return Ok(Fate::Unmatched);
    }
    app.dispatch_wakeup.notify_one();
    Ok(Fate::Applied)
}

/// What a provider asks for a call's next turn with.
pub(super) enum Asked<'a> {
    /// The call `call` was answered.
    Answer { call: &'a str },
    /// What the person answered the turn the query names (`None`: the
    /// provider asks for the next turn again).
    Input {
        call: Option<&'a str>,
        heard: Option<Heard>,
        at: DateTime<Utc>,
        /// What keys it, so that a second delivery is the first.
        dedupe: String,
    },
}

/// The answer webhook, or a post of a turn's answer (or of herald's own
/// fetch of the next turn): the call's next turn, in the provider's form.
pub(super) async fn turn(
    app: &AppState,
    opened: &Opened,
    name: &'static str,
    query: &Query,
    asked: Asked<'_>,
) -> Result<(Fate, Value), ApiError> {
    let (session, happening) = match asked {
        Asked::Answer { call } => {
            let session = find_call(app, opened, Some(call), query.session).await?;
            let happening = Happening::Answered {
                at: Utc::now(),
                dedupe: format!("answer:{call}"),
            };
            (session, happening)
        }
        Asked::Input {
            call,
            heard,
            at,
            dedupe,
        } => {
            let session = find_call(app, opened, call, query.session).await?;
            let happening = match (query.turn, heard) {
                (Some(turn), Some(heard)) => Happening::Input {
                    turn,
                    input: match heard {
                        Heard::Digits(digits) => SessionInput::Digits(readable(&digits)),
                        Heard::Speech { text, confidence } => SessionInput::Speech {
                            text: readable(&text),
                            confidence: Some(confidence),
                        },
                        Heard::Nothing => SessionInput::NoInput,
                    },
                    at,
                    dedupe,
                },
                _ => Happening::Again,
            };
            (session, happening)
        }
    };
    let hang_up = || opened.link.render(&CallTurn::default(), "", &opened.voice);
    let Some(session) = session else {
        // A call herald did not place: nothing to say on it.
        tracing::info!(connection = %opened.id, webhook = name, "a call herald does not know");
        return Ok((Fate::Unmatched, hang_up()));
    };
    let hold_on = || match app.config.public_url.as_deref() {
        Some(base) => opened.link.hold_on(format!(
            "{base}/providers/{}/input?session={session}",
            opened.id
        )),
        None => hang_up(),
    };
    let held = || {
        app.metrics
            .webhook(opened.provider.as_str(), "turn", "held");
        (Fate::Applied, hold_on())
    };
    let deadline = Instant::now() + TURN_BUDGET;
    let task = tokio::spawn(step_call(app.clone(), session, happening, deadline));
    let turned = tokio::time::timeout_at(deadline + Duration::from_millis(500), task).await;
    Ok(match turned {
        Ok(Ok(Turned::Turn(next))) => (Fate::Applied, next.unwrap_or_else(hang_up)),
        Ok(Ok(Turned::Over(last))) => (Fate::Unmatched, last.unwrap_or_else(hang_up)),
        Ok(Ok(Turned::Busy)) => held(),
        Ok(Err(panic)) => {
            tracing::error!(error = %panic, "a call's turn failed");
            (Fate::Applied, hold_on())
        }
        // The turn goes on, and is stored for the fetch this asks for.
        Err(_) => held(),
    })
}

/// What became of a call's turn.
enum Turned {
    /// The next turn (`None`: the call has nothing more to do).
    Turn(Option<Value>),
    /// The session is over; its last turn, if it had any.
    Over(Option<Value>),
    /// It could not be worked out in time; what the webhook brought is
    /// stored, for a later wake to step on.
    Busy,
}

/// Takes the session's lease (waiting for a run that holds it, until
/// `deadline`) and steps the session on `happening`.
async fn step_call(
    app: AppState,
    session: SessionId,
    happening: Happening,
    deadline: Instant,
) -> Turned {
    let lease = loop {
        match app
            .store
            .claim_session(session, Utc::now(), app.config.dispatch_lease)
            .await
        {
            Ok(Some(lease)) => break lease,
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot lease a call's session");
            }
        }
        // Held by another run, or over (no job left).
        if let Ok(Some(record)) = app.store.session_for_work(session).await {
            if record.status == SessionStatus::Ended {
                let last = record
                    .flow_state
                    .as_ref()
                    .and_then(|s| herald_flow::lifecycle::SessionState::from_stored(s).ok())
                    .and_then(|s| s.call_turn);
                return Turned::Over(last);
            }
        }
        if Instant::now() >= deadline {
            keep(&app, session, happening).await;
            return Turned::Busy;
        }
        tokio::time::sleep(LEASE_POLL).await;
    };
    // Renewed while the turn runs, as the dispatcher renews its runs'.
    let turned = tokio::select! {
        biased;
        turned = driver::voice_turn(&app, lease, happening) => turned,
        lost = keep_renewing(&app, lease) => Err(lost.into()),
    };
    match turned {
        Ok(ncco) => Turned::Turn(ncco),
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "a call's turn failed; its session will be run again");
            // Given back at once, due now: the dispatcher runs it again
            // (and gives up on it as on any run that keeps failing).
            let _ = app.store.retry_dispatch(lease, Utc::now()).await;
            app.dispatch_wakeup.notify_one();
            Turned::Busy
        }
    }
}

/// Stores what a webhook brought that could not be stepped on in time,
/// so that the session's next wake does.
async fn keep(app: &AppState, session: SessionId, happening: Happening) {
    let input = match happening {
        Happening::Answered { at, dedupe } => NewInput {
            input: SessionInput::CallProgress(CallProgress::Answered {
                by: AnsweredBy::Person,
            }),
            at,
            dedupe: Some(dedupe),
        },
        Happening::Input {
            input, at, dedupe, ..
        } => NewInput {
            input,
            at,
            dedupe: Some(dedupe),
        },
        Happening::Again => return,
    };
    match app.store.deliver_input(session, input).await {
        Ok(_) => app.dispatch_wakeup.notify_one(),
        Err(e) => tracing::error!(error = %e, "cannot keep what a call's webhook brought"),
    }
}

//! The session driver: runs a session's conversation, one wake at a time.
//!
//! A session's dispatch job stays in the store for as long as the session
//! is open; the dispatcher hands this module a job whenever it is due: when
//! the session is new, when the person (or a live agent) has said something,
//! or when a deadline of the flow has passed. A wake:
//!
//! 1. the first time only, reaches the person: places the call (and
//!    sleeps: the flow starts when the call is answered, which a provider
//!    reports by webhook), or sends a WhatsApp session's opening template;
//! 2. feeds every input not yet handled to the flow ([`herald_flow::step`]),
//!    carries out the actions each step returns and stores the new state
//!    after every step, together with what the step recorded;
//! 3. fires the timer if its deadline has passed;
//! 4. ends the session, or puts its job to sleep until the next deadline,
//!    holding nothing in memory.
//!
//! What each happening means for the session (an outcome, a callback, the
//! end) is decided by [`herald_flow::lifecycle`]; this module carries out
//! those decisions and the flow's actions, and nothing else.
//!
//! A session whose agent version names a connection sends its messages
//! through the connection's provider (Vonage's Messages API): a send
//! returns once the provider took the message, and its id is stored at
//! once, so that a step run again never sends it twice. The statuses come
//! later, by webhook, as inputs (`api::webhooks`), and are handled here
//! before anything else of a wake. A messaging session whose flow has
//! ended waits for its messages to settle (`--message-settle-secs`) so
//! that its outcome says whether they got through; once ended, its job
//! sleeps on for what providers report late (`--message-reports-secs`).
//!
//! The simulator is a provider on the same terms: it says at once what
//! it will report of a call it dials or a message it takes, and when;
//! those reports are kept in the stored state and applied when they are
//! due (no task waits on them), as a real provider's webhooks are.
//!
//! A call through a connection is driven by its provider (CHANNELS §1.2):
//! the first wake places it and sleeps; the provider's answer webhook
//! steps the flow inline ([`voice_turn`], under the session's lease,
//! taken by `api::webhooks`), and so does each input webhook; the actions
//! of those steps are rendered as the call's next turn (NCCO) and given
//! as the webhook's answer, and kept in the state for a provider that asks
//! again. What the provider reports of the call otherwise (a failure, an
//! answering machine, the end) comes as inputs that wake the session here,
//! as a reply does; a turn such a wake makes (a deadline passed, a hang-up
//! on a machine) is pushed to the call.
//!
//! A crash anywhere loses nothing that was acknowledged: the job's lease
//! runs out and another worker starts again from the last stored state.
//! Actions of the step under way may then be carried out twice (at least
//! once), but they are recorded once, because every event is keyed by the
//! step that made it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use herald_channels::adapter::{
    self, Attempt, CallOutcome, CallStep, CallTurn, Content, Endpoint, Listen, MachineDetection,
    NewCall, Retry, SendOutcome,
};
use herald_channels::{
    CallRequest, CallResult, MessageContent, OutboundMessage, Provider, Reported,
};
use herald_core::flow::FlowDefinition;
use herald_core::secret::redact_url;
use herald_core::session::transcript::transcript;
use herald_core::session::{
    AnsweredBy, CallFailure, CallProgress, MessageStatus, Outcome, SessionEvent, SessionInput,
    ShownContent,
};
use herald_core::{Channel, ConversationUuid, Destination};
use herald_flow::keywords::{self, Keyword};
use herald_flow::lifecycle::{self, Effect, EventKeys, Inbound, PendingEnd, Report, SessionState};
use herald_flow::{Action, EndReason, Event, Input, InputMode, Wait, WebhookRequest};
use herald_store::{
    Activation, DispatchLease, Ending, InputRow, JobFate, LeaseToken, NewCallback, NewEvent,
    NewInput, OptOut, ProviderRef, SessionRecord, SessionUpdate,
};
use serde_json::json;
use uuid::Uuid;

use crate::metrics::{ChannelLabels, OutcomeLabels};
use crate::providers::Opened;
use crate::session::dispatcher::Slot;
use crate::AppState;

/// How long a live agent's endpoint may take to take a message.
const LIVE_AGENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a session cannot run, however often it is tried: the dispatcher
/// ends it (see [`fail_session`]) rather than trying again. The text is
/// for the session's owner; the log has the whole cause.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Permanent(pub &'static str);

/// A provider that could not take a message (it answered 429 or 5xx, or
/// could not be reached) however often this run tried: the run fails and
/// is tried again later, and when the provider stays down past the
/// session's attempts, the session ends `failed` with this reason.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct ProviderDown {
    pub reason: String,
    /// The session's own message that could not go, if it was one: when
    /// the session fails for it, its owner is told that it `failed`.
    pub message: Option<u32>,
}

impl ProviderDown {
    fn new(reason: String) -> Self {
        ProviderDown {
            reason,
            message: None,
        }
    }
}

/// Sends of one message a run tries before it gives up (and the
/// dispatcher tries the run again later).
const SEND_TRIES: u32 = 3;
/// The longest a run waits between two of them.
const MAX_SEND_PAUSE: Duration = Duration::from_secs(2);

/// How long a provider-driven call may ring (Vonage's `ringing_timer`).
const RINGING_SECS: u32 = 60;
/// How long after the ringing stops herald waits to hear of a placed
/// call's answer before it gives the call up.
const ANSWER_GRACE_SECS: i64 = 90;
/// How much longer than the flow's own input deadline herald waits for a
/// provider that times the person's answer to say it ran out.
const PROVIDER_INPUT_GRACE_SECS: i64 = 15;

/// Whether a run's error is [`Permanent`] (or a stored row that cannot be
/// read); the text to record if it is.
pub fn permanent(error: &anyhow::Error) -> Option<String> {
    if let Some(Permanent(why)) = error.downcast_ref::<Permanent>() {
        return Some((*why).to_owned());
    }
    match error.downcast_ref::<herald_store::StoreError>() {
        Some(herald_store::StoreError::Unreadable(_)) => {
            Some("an input of the session cannot be read".to_owned())
        }
        _ => None,
    }
}

/// Runs one wake of a session (see the module's comment).
#[tracing::instrument(skip_all, fields(session_id = %lease.session_id))]
pub async fn run_session(app: &AppState, lease: DispatchLease, slot: Slot) -> anyhow::Result<()> {
    let Some(loaded) = Loaded::load(app, lease).await? else {
        return Ok(());
    };
    let mut driver = loaded.driver(app, lease, slot);
    if driver.session.status == herald_core::session::SessionStatus::Ended {
        return driver.take_late_reports().await;
    }
    let first_wake = loaded.state.is_none();
    if !(first_wake
        && (driver.reach_person().await?.is_some() || driver.start_flow().await?.is_some()))
    {
        driver.handle_inputs_and_timer().await?;
    }
    // A call its provider drives hears what this wake made of it now.
    driver.push_turn().await;
    Ok(())
}

/// What a provider-driven call's webhook brings (CHANNELS §1.2), for
/// [`voice_turn`] to step the session on.
#[derive(Debug, Clone)]
pub enum Happening {
    /// The person picked up.
    Answered { at: DateTime<Utc>, dedupe: String },
    /// The person answered (or said nothing) to the input of turn `turn`.
    Input {
        turn: u64,
        input: SessionInput,
        at: DateTime<Utc>,
        dedupe: String,
    },
    /// The provider asks for the next turn again.
    Again,
}

/// Steps a provider-driven call's session inline, under `lease`, on what
/// its webhook brought, and returns the call's next turn in the
/// provider's form (the latest one again if nothing new came of it).
/// `None` when the session is over and the call has nothing more to do.
#[tracing::instrument(skip_all, fields(session_id = %lease.session_id))]
pub async fn voice_turn(
    app: &AppState,
    lease: DispatchLease,
    happening: Happening,
) -> anyhow::Result<Option<serde_json::Value>> {
    let Some(loaded) = Loaded::load(app, lease).await? else {
        return Ok(None);
    };
    let mut driver = loaded.driver(app, lease, Slot::unbounded());
    if driver.session.status == herald_core::session::SessionStatus::Ended {
        // Over (its end was stored): the call is told the last turn there
        // was, once more, and nothing else happens.
        let last = driver.state.call_turn.clone();
        remove_or_release(app, lease, &driver.state).await?;
        return Ok(last);
    }
    let fresh = match happening {
        Happening::Answered { at, dedupe } => Some(NewInput {
            input: SessionInput::CallProgress(CallProgress::Answered {
                by: AnsweredBy::Person,
            }),
            at,
            dedupe: Some(dedupe),
        }),
        // An answer to a turn that is not the latest (its input outran a
        // newer turn) is not the person's answer to anything now.
        Happening::Input { turn, .. } if turn != driver.state.flow.seq => {
            tracing::info!(turn, "an input of an earlier turn of the call");
            None
        }
        Happening::Input {
            input, at, dedupe, ..
        } => Some(NewInput {
            input,
            at,
            dedupe: Some(dedupe),
        }),
        Happening::Again => None,
    };
    if let Some(input) = fresh {
        app.store.deliver_input(driver.session.id, input).await?;
    }
    driver.handle_inputs_and_timer().await?;
    Ok(driver.rendered.take().or(driver.state.call_turn.clone()))
}

/// Gives back the lease of a job that has nothing to do now, or removes
/// the job of a session that has nothing more to take.
async fn remove_or_release(
    app: &AppState,
    lease: DispatchLease,
    state: &SessionState,
) -> anyhow::Result<()> {
    match state.reports_until {
        Some(until) if until > Utc::now() => {
            let update = SessionUpdate {
                job: JobFate::SleepUntil(until),
                ..SessionUpdate::keep(lease.token)
            };
            Ok(app.store.update_session(lease.session_id, update).await?)
        }
        _ => remove_job(app, lease).await,
    }
}

/// What a wake of a session reads before it runs: the session, its agent
/// version, its stored state and where its messages go.
struct Loaded {
    session: SessionRecord,
    version: Arc<herald_store::AgentVersion>,
    state: Option<SessionState>,
    outlet: Outlet,
    refs: Vec<ProviderRef>,
}

impl Loaded {
    /// `None` when there is nothing to run (the job is removed).
    async fn load(app: &AppState, lease: DispatchLease) -> anyhow::Result<Option<Loaded>> {
        let id = lease.session_id;
        let Some(session) = app.store.session_for_work(id).await? else {
            // Nothing to run or to end: the job goes.
            tracing::warn!("a dispatch job names a session that does not exist; removing it");
            remove_job(app, lease).await?;
            return Ok(None);
        };
        let state = match &session.flow_state {
            Some(state) => Some(SessionState::from_stored(state).map_err(|e| {
                tracing::error!(error = %e, "the stored flow state is unreadable");
                Permanent("the session's stored state cannot be read")
            })?),
            None => None,
        };
        let ended = session.status == herald_core::session::SessionStatus::Ended;
        if ended && state.as_ref().is_none_or(|s| s.reports_until.is_none()) {
            // A re-run after the end was recorded but before the job was removed.
            remove_job(app, lease).await?;
            return Ok(None);
        }
        let version = app
            .directory
            .agent_version(app.store.as_ref(), &session.agent_id, session.agent_version)
            .await?
            .ok_or(Permanent("the session's agent version is missing"))?;
        let outlet = match &version.connection_id {
            None => Outlet::Simulator,
            Some(connection) => {
                let opened = app
                    .providers
                    .get(&app.config, app.store.as_ref(), connection)
                    .await
                    .map_err(|e| {
                        tracing::error!(error = %format!("{e:#}"), %connection, "cannot open the session's connection");
                        Permanent("the session's connection cannot be opened")
                    })?
                    .ok_or(Permanent("the session's connection is missing"))?;
                if !opened.provider.channels().contains(&session.channel) {
                    return Err(
                        Permanent("the session's connection does not carry its channel").into(),
                    );
                }
                Outlet::Connection(opened)
            }
        };
        let refs = match &outlet {
            Outlet::Simulator => Vec::new(),
            Outlet::Connection(_) => app.store.session_provider_refs(id).await?,
        };
        Ok(Some(Loaded {
            session,
            version,
            state,
            outlet,
            refs,
        }))
    }

    fn driver<'a>(&'a self, app: &'a AppState, lease: DispatchLease, slot: Slot) -> Driver<'a> {
        let session = &self.session;
        let destination = if session.channel.is_messaging() {
            Destination::parse_messaging(&session.to)
        } else {
            Destination::parse_voice(&session.to)
        };
        let digits = destination.ok().and_then(|d| d.last_two_digits());
        let outlet = match &self.outlet {
            Outlet::Simulator => Outlet::Simulator,
            Outlet::Connection(opened) => Outlet::Connection(opened.clone()),
        };
        Driver {
            app,
            provider: app.provider.as_ref(),
            lifecycle: lifecycle_of(session),
            session,
            flow: &self.version.flow,
            lease: lease.token,
            call: CallRequest {
                to: session.to.clone(),
                from: session.from.clone(),
                last_two_digits: digits,
            },
            state: self.state.clone().unwrap_or_default(),
            pending: Vec::new(),
            reports: Vec::new(),
            keys: EventKeys::first_wake(),
            slot,
            outlet,
            sent: self.refs.iter().map(|r| r.item.clone()).collect(),
            call_uuid: self
                .refs
                .iter()
                .find(|r| r.item == CALL_ITEM)
                .map(|r| r.provider_ref.clone()),
            turn: Turn::default(),
            rendered: None,
        }
    }
}

/// The item of a session's call among what its connection took.
pub const CALL_ITEM: &str = "call";

/// Removes a job that has nothing left to run.
async fn remove_job(app: &AppState, lease: DispatchLease) -> anyhow::Result<()> {
    let update = SessionUpdate {
        job: JobFate::Finish(None),
        ..SessionUpdate::keep(lease.token)
    };
    app.store
        .update_session(lease.session_id, update)
        .await
        .map_err(Into::into)
}

/// The lifecycle of a stored session.
fn lifecycle_of(session: &SessionRecord) -> lifecycle::Session {
    lifecycle::Session {
        id: session.id,
        agent_id: session.agent_id.clone(),
        channel: session.channel,
        to: session.to.clone(),
        from: session.from.clone(),
        hangup_on_machine: session.hangup_on_machine,
        inbound: session.inbound,
        conversation_uuid: session
            .conversation_uuid
            .clone()
            .map(ConversationUuid::from_stored)
            .unwrap_or_else(ConversationUuid::generate),
    }
}

/// Ends a session that cannot run, for good, under the lease its last run
/// held: it fails with `error` recorded, and a call reports that it did,
/// as does the message `unsent`, which the provider never took.
pub async fn fail_session(
    app: &AppState,
    lease: DispatchLease,
    error: String,
    unsent: Option<u32>,
) -> anyhow::Result<()> {
    let Some(session) = app.store.session_for_work(lease.session_id).await? else {
        return Ok(());
    };
    let now = Utc::now();
    if session.status == herald_core::session::SessionStatus::Ended {
        // It ended before (and waited for late reports): its outcome
        // stands; the error is recorded and the job goes.
        let update = SessionUpdate {
            job: JobFate::Finish(None),
            events: vec![NewEvent {
                key: Some(EventKeys::failure().next_key()),
                event: SessionEvent::Error { error },
                at: now,
            }],
            ..SessionUpdate::keep(lease.token)
        };
        app.store.update_session(session.id, update).await?;
        return Ok(());
    }
    let mut update = SessionUpdate {
        job: JobFate::Finish(Some(Ending {
            outcome: Outcome::Failed,
            at: now,
        })),
        ..SessionUpdate::keep(lease.token)
    };
    let mut keys = EventKeys::failure();
    let lifecycle = lifecycle_of(&session);
    let mut effects = lifecycle.broken(error, now);
    if let Some(n) = unsent.filter(|_| session.channel != Channel::Voice) {
        // The message's failure is told before the end `broken` makes.
        let failed =
            lifecycle.message_status(&mut SessionState::default(), n, MessageStatus::Failed, now);
        let at = effects.len() - 1;
        effects.splice(
            at..at,
            failed
                .into_iter()
                .filter(|e| !matches!(e, Effect::End { .. })),
        );
    }
    for effect in effects {
        match effect {
            Effect::Record(event) => update.events.push(NewEvent {
                key: Some(keys.next_key()),
                event,
                at: now,
            }),
            Effect::Report { key, callback } => {
                if let Some(url) = session.status_url.clone() {
                    update.callbacks.push(NewCallback {
                        dedupe_key: key,
                        webhook_id: format!("msg_{}", Uuid::new_v4().simple()),
                        account_id: session.account_id,
                        url,
                        body: callback.body(),
                        created_at: now,
                    });
                }
            }
            Effect::End { outcome, reason } => update.events.push(NewEvent {
                key: Some(keys.next_key()),
                event: SessionEvent::Ended { outcome, reason },
                at: now,
            }),
            Effect::HangUp => {}
        }
    }
    app.store.update_session(session.id, update).await?;
    app.metrics
        .sessions_ended
        .get_or_create(&OutcomeLabels {
            channel: session.channel.as_str(),
            outcome: Outcome::Failed.as_str(),
        })
        .inc();
    app.callback_wakeup.notify_one();
    if session.channel == Channel::Voice {
        hang_up_placed_call(app, &session).await;
    }
    Ok(())
}

/// Ends a session's call, if its provider placed one, as best it can: a
/// session that ends for good must not leave the person on a live line.
async fn hang_up_placed_call(app: &AppState, session: &SessionRecord) {
    let version = app
        .directory
        .agent_version(app.store.as_ref(), &session.agent_id, session.agent_version)
        .await;
    let Some(connection) = version.ok().flatten().and_then(|v| v.connection_id.clone()) else {
        return;
    };
    let Ok(Some(opened)) = app
        .providers
        .get(&app.config, app.store.as_ref(), &connection)
        .await
    else {
        return;
    };
    let Ok(refs) = app.store.session_provider_refs(session.id).await else {
        return;
    };
    if let Some(call) = refs.iter().find(|r| r.item == CALL_ITEM) {
        let started = std::time::Instant::now();
        let outcome = opened.link.hang_up(&call.provider_ref).await;
        let result = outcome.result();
        app.metrics.provider_request(
            opened.provider.as_str(),
            "hang_up",
            result,
            started.elapsed(),
        );
    }
}

struct Driver<'a> {
    app: &'a AppState,
    provider: &'a dyn Provider,
    /// The session's lifecycle, which decides what each happening means.
    lifecycle: lifecycle::Session,
    session: &'a SessionRecord,
    flow: &'a FlowDefinition,
    lease: LeaseToken,
    call: CallRequest,
    state: SessionState,
    /// Events recorded since the last write; written with the next one.
    pending: Vec<NewEvent>,
    /// Callbacks made since the last write; written with the next one.
    reports: Vec<NewCallback>,
    keys: EventKeys,
    /// The session's running place, given up during outside calls.
    slot: Slot,
    /// Where the session's messages go.
    outlet: Outlet,
    /// What the connection already took from this session (a re-run of a
    /// step sends none of it again): items of [`ProviderRef`]s.
    sent: HashSet<String>,
    /// The provider's id of the session's call, once placed through a
    /// connection.
    call_uuid: Option<String>,
    /// What this wake's steps asked a provider-driven call to do.
    turn: Turn,
    /// The turn this wake rendered for the call, once its last write is
    /// made: the webhook's answer, or pushed to the call.
    rendered: Option<serde_json::Value>,
}

/// What the steps of one wake ask a provider-driven call to do: what to
/// say and where to hand the call over, then whether the call ends (else
/// it collects the person's answer, if the flow waits for one).
#[derive(Default)]
struct Turn {
    steps: Vec<CallStep>,
    hang_up: bool,
    /// Whether anything happened that the call must hear of.
    changed: bool,
}

/// Where a session's messages go: the simulator, or a connection's
/// provider, which reports their statuses later, by webhook.
enum Outlet {
    Simulator,
    Connection(Arc<Opened>),
}

/// The session ended in this wake (or waits for its messages to settle
/// before it does).
struct Ended;

/// What a connection made of a message.
enum Sent {
    /// Taken (its provider's id is stored).
    Accepted,
    /// Refused for good; the message is `status`, for `reason`.
    Refused {
        status: MessageStatus,
        reason: String,
    },
}

impl Driver<'_> {
    // ---- recording --------------------------------------------------------

    /// An event keyed by its place in the phase or step, so that a re-run of
    /// the same step records nothing twice.
    fn event(&mut self, event: SessionEvent, at: DateTime<Utc>) -> NewEvent {
        NewEvent {
            key: Some(self.keys.next_key()),
            event,
            at,
        }
    }

    fn note(&mut self, event: SessionEvent) {
        let event = self.event(event, Utc::now());
        self.pending.push(event);
    }

    /// Writes `update` with the events and callbacks noted so far, under
    /// the lease.
    async fn record(&mut self, mut update: SessionUpdate) -> anyhow::Result<()> {
        let mut events = std::mem::take(&mut self.pending);
        events.append(&mut update.events);
        update.events = events;
        let mut callbacks = std::mem::take(&mut self.reports);
        callbacks.append(&mut update.callbacks);
        let reported = !callbacks.is_empty();
        update.callbacks = callbacks;
        let sleeps_until = match update.job {
            JobFate::SleepUntil(at) | JobFate::EndAndWait { until: at, .. } => Some(at),
            _ => None,
        };
        self.app
            .store
            .update_session(self.session.id, update)
            .await?;
        if let Some(at) = sleeps_until {
            self.app.dispatch_alarm.set(at, &self.app.dispatch_wakeup);
        }
        if reported {
            self.app.callback_wakeup.notify_one();
        }
        Ok(())
    }

    fn update(&self) -> SessionUpdate {
        SessionUpdate::keep(self.lease)
    }

    /// Stores the conversation's state with what was noted.
    async fn save(&mut self, job: JobFate) -> anyhow::Result<()> {
        if !matches!(job, JobFate::Keep) {
            self.close_turn();
        }
        let update = SessionUpdate {
            job,
            flow_state: Some(self.state.to_stored()),
            inputs_consumed: Some(self.state.inputs_consumed),
            ..self.update()
        };
        self.record(update).await
    }

    /// The callback of a report, if the session has a `status_url`.
    fn callback(
        &self,
        key: String,
        callback: &herald_core::session::callback::Callback,
    ) -> Option<NewCallback> {
        let url = self.session.status_url.clone()?;
        Some(NewCallback {
            dedupe_key: key,
            webhook_id: format!("msg_{}", Uuid::new_v4().simple()),
            account_id: self.session.account_id,
            url,
            body: callback.body(),
            created_at: Utc::now(),
        })
    }

    /// Carries out the lifecycle's effects of one happening at `at`:
    /// events are noted, hang-ups happen in place; the session's end is
    /// written with all of it, and a report otherwise goes out at once with
    /// what was noted. `Some(Ended)` once the session has ended.
    async fn apply(
        &mut self,
        effects: Vec<Effect>,
        at: DateTime<Utc>,
    ) -> anyhow::Result<Option<Ended>> {
        for effect in effects {
            match effect {
                Effect::Record(event) => {
                    let event = self.event(event, at);
                    self.pending.push(event);
                }
                Effect::Report { key, callback } => {
                    let callback = self.callback(key, &callback);
                    self.reports.extend(callback);
                }
                Effect::HangUp => self.hang_up().await,
                Effect::End { outcome, reason } => {
                    self.finish(outcome, reason).await?;
                    return Ok(Some(Ended));
                }
            }
        }
        if !self.reports.is_empty() {
            self.record(self.update()).await?;
        }
        Ok(None)
    }

    /// Ends the session now. If a provider may still report something of
    /// its messages, its job waits on for that (CONTRACT §11.5: statuses
    /// reach the `status_url` whenever they come).
    async fn finish(&mut self, outcome: Outcome, reason: Option<EndReason>) -> anyhow::Result<()> {
        let at = Utc::now();
        let ended = self.event(SessionEvent::Ended { outcome, reason }, at);
        let ending = Ending { outcome, at };
        self.state.ending = None;
        let job = if self.state.awaiting_reports(self.session.channel) {
            let until = at
                + chrono::Duration::from_std(self.app.config.message_reports_window)
                    .unwrap_or_default();
            self.state.reports_until = Some(until);
            JobFate::EndAndWait {
                ending,
                until: self.by_next_report(until),
            }
        } else {
            JobFate::Finish(Some(ending))
        };
        self.turn.hang_up = true;
        self.close_turn();
        let keep_state = self.state.flow.node.is_some()
            || self.state.reports_until.is_some()
            || self.state.call_turn.is_some();
        let flow_state = keep_state.then(|| self.state.to_stored());
        self.record(SessionUpdate {
            job,
            events: vec![ended],
            flow_state,
            inputs_consumed: Some(self.state.inputs_consumed),
            ..self.update()
        })
        .await?;
        self.app
            .metrics
            .sessions_ended
            .get_or_create(&OutcomeLabels {
                channel: self.session.channel.as_str(),
                outcome: outcome.as_str(),
            })
            .inc();
        Ok(())
    }

    /// The flow has ended. A messaging session whose messages have not all
    /// settled waits for them (at most `--message-settle-secs`), so that
    /// its outcome says whether they got through; any other ends now.
    async fn flow_done(&mut self, reason: EndReason) -> anyhow::Result<()> {
        let Effect::End { outcome, reason } = self.lifecycle.flow_ended(reason) else {
            unreachable!("a flow's end is an end");
        };
        if self.session.channel.is_messaging() && !self.state.settled() {
            let by = Utc::now()
                + chrono::Duration::from_std(self.app.config.message_settle).unwrap_or_default();
            self.state.ending = Some(PendingEnd {
                outcome,
                reason,
                by,
            });
            return self
                .save(JobFate::SleepUntil(self.by_next_report(by)))
                .await;
        }
        self.finish(outcome, reason).await
    }

    /// `at`, or sooner if a report is due sooner: when a wake that waits
    /// for `at` must come.
    fn by_next_report(&self, at: DateTime<Utc>) -> DateTime<Utc> {
        self.state.next_report().map_or(at, |due| due.min(at))
    }

    /// A wake of a session that has ended but still takes what providers
    /// report late: each status is recorded and reported; the job goes
    /// once nothing more can come, or its time is up.
    async fn take_late_reports(&mut self) -> anyhow::Result<()> {
        let inputs = self
            .app
            .store
            .pending_inputs(self.session.id, self.state.inputs_consumed)
            .await?;
        for input in inputs {
            self.state.inputs_consumed = input.id;
            self.keys = EventKeys::report(input.id);
            self.report(input.input, input.at).await?;
        }
        while let Some(due) = self.state.take_due(Utc::now()) {
            self.keys = EventKeys::due(due.n);
            self.report(due.report.into(), due.at).await?;
        }
        let until = self.state.reports_until.unwrap_or_else(Utc::now);
        let job = if until <= Utc::now() || !self.state.awaiting_reports(self.session.channel) {
            JobFate::Finish(None)
        } else {
            JobFate::SleepUntil(self.by_next_report(until))
        };
        self.save(job).await
    }

    /// Applies what a provider reported (at `at`) of the call or a message;
    /// `Some(Ended)` when it ended the session (a call not answered, a
    /// message the person cannot be reached by).
    async fn report(
        &mut self,
        input: SessionInput,
        at: DateTime<Utc>,
    ) -> anyhow::Result<Option<Ended>> {
        match input {
            SessionInput::MessageStatus {
                message,
                status,
                reason,
            } => {
                if message >= self.state.messages {
                    tracing::warn!(message, "a status of a message the session never sent");
                    return Ok(None);
                }
                // What the provider said of a failure, before what it does.
                let settled = self.state.statuses.get(&message).copied();
                let failed = matches!(status, MessageStatus::Failed | MessageStatus::Rejected);
                let already = matches!(
                    settled,
                    Some(MessageStatus::Failed | MessageStatus::Rejected)
                );
                if let (true, false, Some(error)) = (failed, already, reason) {
                    let event = self.event(SessionEvent::Error { error }, at);
                    self.pending.push(event);
                }
                let effects = self
                    .lifecycle
                    .message_status(&mut self.state, message, status, at);
                if self.state.reports_until.is_some() {
                    // Ended: record and report, nothing else.
                    for effect in effects {
                        match effect {
                            Effect::Record(event) => {
                                let event = self.event(event, at);
                                self.pending.push(event);
                            }
                            Effect::Report { key, callback } => {
                                let callback = self.callback(key, &callback);
                                self.reports.extend(callback);
                            }
                            Effect::HangUp | Effect::End { .. } => {}
                        }
                    }
                    return Ok(None);
                }
                self.apply(effects, at).await
            }
            SessionInput::SmsStatus { to, status } => {
                self.note(SessionEvent::SmsStatus { to, status });
                Ok(None)
            }
            SessionInput::CallProgress(progress) if self.state.reports_until.is_none() => {
                self.call_report(progress, at).await
            }
            _ => Ok(None),
        }
    }

    // ---- the first wake: reaching the person -------------------------------

    /// Places the call or opens the messaging session; `Some(Ended)` when
    /// the person cannot be reached (or the session is declined) and the
    /// session has ended, and for a call once it is placed: the wake ends
    /// there, and the flow starts when the call is answered.
    async fn reach_person(&mut self) -> anyhow::Result<Option<Ended>> {
        let session = self.session;
        self.app
            .metrics
            .sessions_dispatched
            .get_or_create(&ChannelLabels {
                channel: session.channel.as_str(),
            })
            .inc();
        let dispatched = self.event(SessionEvent::Dispatched, Utc::now());
        let conversation_uuid = (!session.channel.is_messaging())
            .then(|| self.lifecycle.conversation_uuid.as_str().to_owned());
        self.record(SessionUpdate {
            activate: Some(Activation { conversation_uuid }),
            events: vec![dispatched],
            ..self.update()
        })
        .await?;
        if session.channel.is_messaging() {
            return self.open_messaging().await;
        }
        let now = Utc::now();
        let ringing = self.lifecycle.call_progress(CallProgress::Ringing, now);
        self.apply(ringing, now).await?;
        if let Some(opened) = self.driving_provider() {
            return self.place_call(&opened).await;
        }
        // The simulator says now what the call will come to; it takes
        // effect when due, from the stored state, like a provider's report.
        let dialled = self.provider.dial(&self.call);
        let progress = match dialled.result {
            CallResult::NotAnswered(failure) => CallProgress::NotAnswered { failure },
            CallResult::Answered(by) => CallProgress::Answered { by },
        };
        let at = Utc::now() + chrono::Duration::from_std(dialled.after).unwrap_or_default();
        self.state.schedule(Report::Call { progress }, at);
        self.save(JobFate::SleepUntil(at)).await?;
        Ok(Some(Ended))
    }

    /// Opens a messaging session; `Some(Ended)` when it ended at once.
    async fn open_messaging(&mut self) -> anyhow::Result<Option<Ended>> {
        if self.session.inbound {
            // A keyword is heard whatever the flow's inbound policy; the
            // session ends with it.
            if let Some(first) = self.first_input().await? {
                let word = match &first.input {
                    SessionInput::Text(text) => self.keyword_in(text).await?,
                    _ => None,
                };
                if let Some(word) = word {
                    self.note_input(&first);
                    self.state.inputs_consumed = first.id;
                    self.keys = EventKeys::keyword(first.id);
                    if self.hear(word).await? == KeywordFate::Handled {
                        self.flow_done(EndReason::Completed).await?;
                    }
                    return Ok(Some(Ended));
                }
            }
            let Inbound::Decline { reply } =
                lifecycle::Session::inbound(self.flow.inbound.as_ref())
            else {
                return Ok(None);
            };
            // What the person said is kept, as in a session that runs.
            if let Some(first) = self.first_input().await? {
                self.note_input(&first);
                self.state.inputs_consumed = first.id;
            }
            self.note(SessionEvent::InboundDeclined);
            if let Some(reply) = reply {
                if self
                    .send_message(MessageContent::Text(reply))
                    .await?
                    .is_some()
                {
                    return Ok(Some(Ended));
                }
            }
            self.finish(Outcome::Completed, None).await?;
            return Ok(Some(Ended));
        }
        // A WhatsApp conversation opens with the trigger's template.
        if let Some(template) = self.session.whatsapp.clone() {
            return self.send_message(MessageContent::Template(template)).await;
        }
        Ok(None)
    }

    async fn first_input(&self) -> anyhow::Result<Option<InputRow>> {
        Ok(self
            .app
            .store
            .pending_inputs(self.session.id, 0)
            .await?
            .into_iter()
            .next())
    }

    /// Starts the flow; `Some(Ended)` if it ended at once.
    async fn start_flow(&mut self) -> anyhow::Result<Option<Ended>> {
        let session = self.session;
        let mut parameters = self.lifecycle.start_parameters(
            session
                .parameters
                .iter()
                .map(|p| (p.name.as_str(), p.value.as_str())),
        );
        // An inbound session's first message is what started it: it is the
        // flow's first LAST_INPUT rather than an answer to anything.
        if session.inbound {
            if let Some(first) = self.first_input().await? {
                self.note_input(&first);
                self.state.inputs_consumed = first.id;
                parameters.insert(
                    herald_flow::LAST_INPUT.into(),
                    first.input.text().unwrap_or_default().to_owned(),
                );
            }
        }
        let started = Event::Started {
            channel: session.channel,
            parameters,
        };
        self.advance(started).await
    }

    // ---- opt-outs (CONTRACT §13) ----------------------------------------------

    /// Adds the person to the account's opt-outs of the session's channel,
    /// as `by` (`keyword`, `flow`) asked.
    async fn opt_out(&mut self, by: &str) -> anyhow::Result<()> {
        let opt_out = OptOut {
            channel: self.session.channel,
            to: self.session.to.clone(),
            source: by.to_owned(),
            session_id: Some(self.session.id),
            created_at: Utc::now(),
        };
        self.app
            .store
            .add_opt_out(self.session.account_id, opt_out)
            .await?;
        self.note(SessionEvent::OptedOut { by: by.to_owned() });
        Ok(())
    }

    /// The keyword the person's `text` is to this agent now, if it is one
    /// (CONTRACT §13.2); `None` when the flow hears it: the agent hears no
    /// keywords, the question waiting lists it as an answer, or it is the
    /// YES of a person who has not opted out.
    async fn keyword_in(&self, text: &str) -> anyhow::Result<Option<Keyword>> {
        let session = self.session;
        let heard = session.channel.is_messaging()
            && self.flow.opt_out.as_ref().is_none_or(|p| p.keywords());
        let Some(word) = keywords::keyword(text).filter(|_| heard) else {
            return Ok(None);
        };
        if keywords::answers_waiting(self.flow, &self.state.flow, text) {
            return Ok(None);
        }
        if word == Keyword::Start && keywords::is_yes(text) {
            let opted_out = self
                .app
                .store
                .opt_out(session.account_id, session.channel, &session.to)
                .await?;
            if opted_out.is_none() {
                return Ok(None);
            }
        }
        Ok(Some(word))
    }

    /// Carries out a keyword the person sent: STOP opts them out, confirms
    /// once and ends the conversation; START opts them back in; HELP
    /// answers with the agent's help text. After START and HELP the
    /// question waiting goes on waiting.
    async fn hear(&mut self, word: Keyword) -> anyhow::Result<KeywordFate> {
        let policy = self.flow.opt_out.clone().unwrap_or_default();
        let session = self.session;
        let sent = match word {
            Keyword::Stop => {
                self.opt_out("keyword").await?;
                if self.reply(policy.confirmation()).await?.is_some() {
                    return Ok(KeywordFate::Ended);
                }
                if self.state.ending.is_some() {
                    // The flow was over already; its end stands.
                    return Ok(KeywordFate::Handled);
                }
                self.state.flow.waiting = None;
                self.state.flow.ended = true;
                self.flow_done(EndReason::OptedOut).await?;
                return Ok(KeywordFate::Ended);
            }
            Keyword::Start => {
                let removed = self
                    .app
                    .store
                    .remove_opt_out(session.account_id, session.channel, &session.to)
                    .await?;
                if removed {
                    self.note(SessionEvent::OptedIn {});
                }
                self.reply(policy.resubscribed()).await?
            }
            Keyword::Help => self.reply(policy.help()).await?,
        };
        Ok(match sent {
            Some(Ended) => KeywordFate::Ended,
            None => KeywordFate::Handled,
        })
    }

    /// Sends the person `template`, filled in with the conversation's
    /// parameters.
    async fn reply(&mut self, template: &str) -> anyhow::Result<Option<Ended>> {
        let parameters = &self.state.flow.parameters;
        let text = herald_core::template::render(template, |name| {
            parameters.get(name).map(String::as_str)
        })
        .into_owned();
        self.send_message(MessageContent::Text(text)).await
    }

    // ---- later wakes --------------------------------------------------------

    async fn handle_inputs_and_timer(&mut self) -> anyhow::Result<()> {
        while let Some(due) = self.state.take_due(Utc::now()) {
            self.keys = EventKeys::due(due.n);
            if self.report(due.report.into(), due.at).await?.is_some() {
                return Ok(());
            }
        }
        loop {
            let inputs = self
                .app
                .store
                .pending_inputs(self.session.id, self.state.inputs_consumed)
                .await?;
            if inputs.is_empty() {
                break;
            }
            for input in inputs {
                self.state.inputs_consumed = input.id;
                if input.input.kind().is_provider_report() {
                    self.keys = EventKeys::report(input.id);
                    if self.report(input.input, input.at).await?.is_some() {
                        return Ok(());
                    }
                    continue;
                }
                self.note_input(&input);
                if let SessionInput::Text(text) = &input.input {
                    if let Some(word) = self.keyword_in(text).await? {
                        self.keys = EventKeys::keyword(input.id);
                        match self.hear(word).await? {
                            KeywordFate::Ended => return Ok(()),
                            KeywordFate::Handled => continue,
                        }
                    }
                }
                if self.state.ending.is_some() {
                    // The flow is over; what the person says now is kept.
                    continue;
                }
                let Some(event) = flow_event(input.input) else {
                    continue;
                };
                if self.advance(event).await?.is_some() {
                    return Ok(());
                }
            }
        }
        if let Some(ending) = self.state.ending {
            if self.state.settled() || ending.by <= Utc::now() {
                return self.finish(ending.outcome, ending.reason).await;
            }
            let wake_at = self.by_next_report(ending.by);
            return self.save(JobFate::SleepUntil(wake_at)).await;
        }
        if let (Some(_), Some(by)) = (self.driving_provider(), self.state.answer_by) {
            if self.state.flow.seq == 0 {
                // Placed, and not answered yet.
                if by > Utc::now() {
                    return self.save(JobFate::SleepUntil(by)).await;
                }
                self.note(SessionEvent::Error {
                    error: "the provider said nothing of the call's answer in time".into(),
                });
                let now = Utc::now();
                let failed = CallProgress::NotAnswered {
                    failure: CallFailure::Failed,
                };
                let effects = self.lifecycle.call_progress(failed, now);
                self.apply(effects, now).await?;
                return Ok(());
            }
        }
        if let Some(deadline) = self.timer_deadline() {
            if deadline <= Utc::now() && self.advance(Event::Timer).await?.is_some() {
                return Ok(());
            }
        }
        // Nothing more to do until the flow's next deadline, the next
        // report due, or an input.
        let wake_at = self.by_next_report(
            self.timer_deadline()
                .unwrap_or_else(|| Utc::now() + chrono::Duration::days(1)),
        );
        self.save(JobFate::SleepUntil(wake_at)).await
    }

    /// When the flow must be stepped with [`Event::Timer`]. A call its
    /// provider drives times the person's answer itself, and says when it
    /// ran out ([`Event::NoInput`]): herald's own deadline waits a little
    /// longer, for a provider that never says.
    fn timer_deadline(&self) -> Option<DateTime<Utc>> {
        let deadline = DateTime::<Utc>::from(self.state.flow.next_deadline()?);
        let provider_times_it = self.driving_provider().is_some()
            && matches!(self.state.flow.waiting, Some(Wait::Input { .. }));
        Some(if provider_times_it {
            deadline + chrono::Duration::seconds(PROVIDER_INPUT_GRACE_SECS)
        } else {
            deadline
        })
    }

    fn note_input(&mut self, input: &InputRow) {
        self.pending.push(NewEvent {
            key: Some(EventKeys::input(input.id)),
            event: lifecycle::input_received(&input.input),
            at: input.at,
        });
    }

    /// Steps the flow with `event` and carries out what it asks, again for
    /// every event an action produces (a webhook's answer), storing the
    /// state after each step. `Some(Ended)` when the session ended.
    async fn advance(&mut self, event: Event) -> anyhow::Result<Option<Ended>> {
        let mut next = Some(event);
        while let Some(event) = next.take() {
            let before = self.state.flow.seq;
            let (state, actions) =
                herald_flow::step(self.flow, self.state.flow.clone(), event, SystemTime::now());
            if state.seq == before {
                // Ignored (a stray event): only what was noted is stored.
                self.save(JobFate::Keep).await?;
                continue;
            }
            self.keys.step(state.seq);
            self.state.flow = state;
            for action in actions {
                match self.perform(action).await? {
                    Performed::Done => {}
                    Performed::Then(event) => next = Some(event),
                    Performed::Ended => return Ok(Some(Ended)),
                }
            }
            self.save(JobFate::Keep).await?;
        }
        Ok(None)
    }

    async fn perform(&mut self, action: Action) -> anyhow::Result<Performed> {
        match action {
            Action::OptOut => self.opt_out("flow").await?,
            Action::Entered { node } => self.note(SessionEvent::NodeEntered { node }),
            Action::Speak { text } => {
                match self.driving_provider() {
                    Some(_) => {
                        self.turn.steps.push(CallStep::Say(text.clone()));
                        self.turn.changed = true;
                    }
                    None => self.provider.say(&self.call, &text).await,
                }
                self.note(SessionEvent::Speak { text });
            }
            Action::SendMessage { text } => {
                if self
                    .send_message(MessageContent::Text(text))
                    .await?
                    .is_some()
                {
                    return Ok(Performed::Ended);
                }
            }
            Action::ParameterSet { name, value } => {
                self.note(SessionEvent::ParameterSet { name, value })
            }
            Action::CallWebhook(request) => {
                self.note(SessionEvent::WebhookCalled {
                    method: request.method.clone(),
                    url: redact_url(&request.url),
                });
                let app = self.app;
                let answer = self
                    .slot
                    .outside(crate::outbound::webhook::call(
                        &app.webhook_client,
                        &request,
                    ))
                    .await;
                match &answer {
                    Event::WebhookAnswered { status, .. } => {
                        self.note(SessionEvent::WebhookAnswered { status: *status })
                    }
                    Event::WebhookFailed { error } => self.note(SessionEvent::WebhookFailed {
                        error: error.clone(),
                    }),
                    _ => {}
                }
                return Ok(Performed::Then(answer));
            }
            Action::SendSms { to, text } => self.send_sms(to, text).await?,
            Action::SendEmail { to, subject, body } => {
                let app = self.app;
                let result = match &app.mailer {
                    Some(mailer) => self
                        .slot
                        .outside(mailer.send(&to, &subject, &body))
                        .await
                        .map_err(|e| e.to_string()),
                    None => Err("no SMTP relay is configured (--smtp-url)".to_owned()),
                };
                match result {
                    Ok(()) => self.note(SessionEvent::EmailSent { to, subject }),
                    Err(error) => self.note(SessionEvent::EmailFailed { to, error }),
                }
            }
            Action::Transfer { to } => {
                if self.driving_provider().is_some() {
                    self.turn.steps.push(CallStep::Connect {
                        to: to.clone(),
                        from: self.session.from.clone(),
                    });
                    self.turn.changed = true;
                } else {
                    self.provider.transfer(&self.call, &to).await;
                }
                self.note(SessionEvent::Transferred { to });
            }
            Action::LiveAgentStart { url } => {
                // The transcript so far: what is stored and what is noted.
                self.record(self.update()).await?;
                let stored = self
                    .app
                    .store
                    .session(self.session.account_id, self.session.id)
                    .await?;
                let events: Vec<(SessionEvent, DateTime<Utc>)> = stored
                    .map(|s| s.events)
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|e| Some((e.event().ok()?, e.at)))
                    .collect();
                let body = json!({
                    "session_id": self.session.id,
                    "event": "start",
                    "agent_id": self.session.agent_id,
                    "channel": self.session.channel,
                    "to": self.session.to,
                    "transcript": transcript(events.iter().map(|(e, at)| (e, *at))),
                });
                self.tell_live_agent(url, body, true).await;
            }
            Action::LiveAgentForward { url, text } => {
                let body = json!({
                    "session_id": self.session.id,
                    "event": "message",
                    "text": text,
                });
                self.tell_live_agent(url, body, false).await;
            }
            Action::LiveAgentStop => self.note(SessionEvent::LiveAgentStopped),
            Action::End { reason } => {
                if self.session.channel == Channel::Voice && reason != EndReason::Transferred {
                    self.hang_up().await;
                    self.note(SessionEvent::Hangup { reason: None });
                }
                self.flow_done(reason).await?;
                return Ok(Performed::Ended);
            }
        }
        Ok(Performed::Done)
    }

    /// Posts to a live agent's endpoint: the hand-over (`starting`) or the
    /// person's words.
    async fn tell_live_agent(&mut self, url: String, body: serde_json::Value, starting: bool) {
        // As the session's events show it: never a token the URL carries.
        let shown = redact_url(&url);
        let request = WebhookRequest {
            method: "POST".into(),
            url,
            headers: Vec::new(),
            body: Some(body.to_string()),
            timeout: LIVE_AGENT_TIMEOUT,
        };
        let app = self.app;
        let answer = self
            .slot
            .outside(crate::outbound::webhook::call(
                &app.webhook_client,
                &request,
            ))
            .await;
        let event = match answer {
            Event::WebhookAnswered { status, .. } if (200..300).contains(&status) => {
                if starting {
                    SessionEvent::LiveAgentStarted { url: shown }
                } else {
                    SessionEvent::LiveAgentForwarded { url: shown }
                }
            }
            Event::WebhookAnswered { status, .. } => SessionEvent::LiveAgentFailed {
                url: shown,
                error: format!("the live agent's endpoint answered {status}"),
            },
            Event::WebhookFailed { error } => SessionEvent::LiveAgentFailed { url: shown, error },
            _ => return,
        };
        self.note(event);
    }

    /// Sends one message to the person and records its statuses, each with
    /// its callback; `Some(Ended)` when the message could not be delivered
    /// and the session has ended so. Through a connection, the statuses
    /// come later, by webhook, as inputs.
    async fn send_message(&mut self, content: MessageContent) -> anyhow::Result<Option<Ended>> {
        let session = self.session;
        let n = self.state.messages;
        self.state.messages += 1;
        let shown = match &content {
            MessageContent::Text(t) => ShownContent::Text(t.clone()),
            MessageContent::Template(t) => ShownContent::Template(t.clone()),
        };
        let sent = self.lifecycle.message_sent(n, shown);
        self.note(sent);
        let Outlet::Connection(opened) = &self.outlet else {
            let reported = self.provider.send(&OutboundMessage {
                channel: session.channel,
                to: session.to.clone(),
                from: session.from.clone(),
                content,
                last_two_digits: self.call.last_two_digits,
            });
            self.expect(reported, |status| Report::Message { message: n, status });
            return Ok(None);
        };
        let opened = opened.clone();
        let content = match content {
            MessageContent::Text(text) => Content::Text(text),
            MessageContent::Template(t) => Content::Template {
                namespace: t["namespace"].as_str().unwrap_or_default().to_owned(),
                name: t["template"].as_str().unwrap_or_default().to_owned(),
                locale: t["locale"].as_str().unwrap_or_default().to_owned(),
                components: t["components"].clone(),
            },
        };
        let item = n.to_string();
        let message = adapter::OutboundMessage {
            channel: session.channel,
            to: session.to.clone(),
            from: session.from.clone(),
            content,
            client_ref: client_ref(session.id, &item),
            status_url: self.status_url(&opened, &client_ref(session.id, &item)),
        };
        let sent = self
            .send_through(&opened, &item, &message)
            .await
            .map_err(|e| match e.downcast::<ProviderDown>() {
                Ok(down) => ProviderDown {
                    message: Some(n),
                    ..down
                }
                .into(),
                Err(e) => e,
            })?;
        match sent {
            None => Ok(None),
            Some(Sent::Accepted) => Ok(None),
            Some(Sent::Refused { status, reason }) => {
                self.note(SessionEvent::Error { error: reason });
                let now = Utc::now();
                let effects = self
                    .lifecycle
                    .message_status(&mut self.state, n, status, now);
                self.apply(effects, now).await
            }
        }
    }

    /// Sends `message` through the connection as the session's `item`,
    /// unless the connection took it already (a step run again); the
    /// provider's id is stored at once, so that no later run sends it
    /// again. Throttling and failures are tried again a few times, at the
    /// connection's pace; past that the run fails ([`ProviderDown`]) and is
    /// tried again later. `None` when it had been sent before.
    async fn send_through(
        &mut self,
        opened: &Opened,
        item: &str,
        message: &adapter::OutboundMessage,
    ) -> anyhow::Result<Option<Sent>> {
        if self.sent.contains(item) {
            return Ok(None);
        }
        let outcome = self
            .with_retries(
                opened,
                &opened.pace,
                "send_message",
                "take messages",
                || opened.link.send(message),
            )
            .await?;
        Ok(Some(match outcome {
            SendOutcome::Accepted { id } => {
                let reference = ProviderRef {
                    connection_id: opened.id.clone(),
                    provider_ref: id,
                    session_id: self.session.id,
                    item: item.to_owned(),
                };
                self.record(SessionUpdate {
                    provider_refs: vec![reference],
                    ..self.update()
                })
                .await?;
                self.sent.insert(item.to_owned());
                Sent::Accepted
            }
            SendOutcome::Refused { status, reason } => Sent::Refused { status, reason },
            SendOutcome::Throttled { .. } | SendOutcome::Unavailable { .. } => {
                unreachable!("tried again above")
            }
        }))
    }

    /// Makes a request to the connection's provider at `pace`, trying it
    /// again a few times while the provider throttles it or fails; past
    /// that the run fails ([`ProviderDown`]) and is tried again later.
    /// Each try is counted in the metrics as `operation`; `what` says
    /// what a provider that keeps throttling kept refusing to do.
    async fn with_retries<T: Attempt, F: std::future::Future<Output = T>>(
        &mut self,
        opened: &Opened,
        pace: &crate::providers::Pace,
        operation: &'static str,
        what: &str,
        mut attempt: impl FnMut() -> F,
    ) -> anyhow::Result<T> {
        let mut tries = 0;
        loop {
            tries += 1;
            pace.wait(self.app.limiter.as_ref()).await;
            let started = std::time::Instant::now();
            let outcome = self.slot.outside(attempt()).await;
            self.app.metrics.provider_request(
                opened.provider.as_str(),
                operation,
                outcome.result(),
                started.elapsed(),
            );
            let (pause, reason) = match outcome.retry() {
                Retry::No => return Ok(outcome),
                Retry::Throttled(after) => (
                    after.unwrap_or(Duration::from_millis(500)),
                    format!("{} kept refusing to {what} (429)", opened.provider),
                ),
                Retry::Unavailable(reason) => (Duration::from_millis(250 << tries), reason),
            };
            if tries >= SEND_TRIES {
                return Err(ProviderDown::new(reason).into());
            }
            tokio::time::sleep(pause.min(MAX_SEND_PAUSE)).await;
        }
    }

    /// A Send SMS node's message: to anyone, from the agent's number; its
    /// statuses are recorded, with no callbacks (those report the session's
    /// own conversation).
    async fn send_sms(&mut self, to: String, text: String) -> anyhow::Result<()> {
        let Ok(destination) = Destination::parse_messaging(&to) else {
            // Recorded as failed; the flow goes on.
            self.note(SessionEvent::SmsFailed {
                to,
                error: "not a phone number".into(),
            });
            return Ok(());
        };
        let digits = destination.last_two_digits();
        self.note(SessionEvent::SmsSent {
            to: to.clone(),
            text: text.clone(),
        });
        if let Outlet::Connection(opened) = &self.outlet {
            let opened = opened.clone();
            let item = format!("sms:{}", self.state.texts);
            self.state.texts += 1;
            let message = adapter::OutboundMessage {
                channel: Channel::Sms,
                to: destination.as_str().to_owned(),
                from: self.session.from.clone(),
                content: Content::Text(text),
                client_ref: client_ref(self.session.id, &item),
                status_url: self.status_url(&opened, &client_ref(self.session.id, &item)),
            };
            if let Some(Sent::Refused { reason, .. }) =
                self.send_through(&opened, &item, &message).await?
            {
                self.note(SessionEvent::SmsFailed { to, error: reason });
            }
            return Ok(());
        }
        let reported = self.provider.send(&OutboundMessage {
            channel: Channel::Sms,
            to: to.clone(),
            from: self.session.from.clone(),
            content: MessageContent::Text(text),
            last_two_digits: digits,
        });
        self.expect(reported, |status| Report::Text {
            to: to.clone(),
            status,
        });
        Ok(())
    }

    /// Keeps what the simulator will report of a message it took, each
    /// status to take effect when it is due.
    fn expect(&mut self, reported: Vec<Reported>, report: impl Fn(MessageStatus) -> Report) {
        let now = Utc::now();
        for Reported { after, status } in reported {
            let at = now + chrono::Duration::from_std(after).unwrap_or_default();
            self.state.schedule(report(status), at);
        }
    }
}

// ---- calls a provider drives (CHANNELS §1.2) -------------------------------

impl Driver<'_> {
    /// The connection, if the session is a call its provider drives: the
    /// provider asks herald for each turn, by webhook.
    fn driving_provider(&self) -> Option<Arc<Opened>> {
        match &self.outlet {
            Outlet::Connection(opened) if self.session.channel == Channel::Voice => {
                Some(opened.clone())
            }
            _ => None,
        }
    }

    /// Ends the call: on the simulator at once; a provider-driven call
    /// once it has said this turn's last words.
    async fn hang_up(&mut self) {
        if self.driving_provider().is_some() {
            self.turn.hang_up = true;
            self.turn.changed = true;
        } else {
            self.provider.hang_up(&self.call).await;
        }
    }

    /// The URL of one of the connection's webhooks for this session.
    fn webhook_url(&self, opened: &Opened, name: &str, query: &str) -> anyhow::Result<String> {
        let base = self.app.config.public_url.as_deref().ok_or(Permanent(
            "a call through a connection needs the server's public URL (--public-url), \
             where the provider asks for each turn",
        ))?;
        Ok(format!(
            "{base}/providers/{}/{name}?session={}{query}",
            opened.id, self.session.id
        ))
    }

    /// Where the connection's provider posts the statuses of the message
    /// `reference` names (for a provider told so with each message): the
    /// reference rides in the query, so that a status that outruns the
    /// store's write of the message's id still finds it.
    fn status_url(&self, opened: &Opened, reference: &str) -> String {
        let base = self.app.config.public_url.as_deref().unwrap_or_default();
        format!(
            "{base}/providers/{}/message_status?ref={reference}",
            opened.id
        )
    }

    /// Renders what this wake's steps asked of a provider-driven call into
    /// its next turn (kept in the state, for a provider that asks again):
    /// the words to say, then the answer to collect if the flow waits for
    /// one, unless the call ends.
    fn close_turn(&mut self) {
        let Some(opened) = self.driving_provider() else {
            return;
        };
        if !std::mem::take(&mut self.turn.changed) {
            return;
        }
        let mut turn = CallTurn {
            steps: std::mem::take(&mut self.turn.steps),
            listen: None,
        };
        let hang_up = std::mem::take(&mut self.turn.hang_up);
        let call_id = self.call_uuid.clone().unwrap_or_default();
        if !hang_up && !self.state.flow.ended && !call_id.is_empty() {
            if let Some(awaited) =
                herald_flow::awaited(self.flow, &self.state.flow, SystemTime::now())
            {
                let seq = format!("&turn={}", self.state.flow.seq);
                match self.webhook_url(&opened, "input", &seq) {
                    Ok(answer_url) => {
                        turn.listen = Some(Listen {
                            awaited,
                            answer_url,
                        })
                    }
                    Err(e) => tracing::error!(error = %e, "the call cannot collect an answer"),
                }
            }
        }
        let rendered = opened.link.render(&turn, &call_id, &opened.voice);
        self.state.call_turn = Some(rendered.clone());
        self.rendered = Some(rendered);
    }

    /// Gives the call the turn a wake of herald's own (a deadline, a
    /// provider's event) rendered: it replaces what the call is doing, or,
    /// with nothing left to say, ends it.
    async fn push_turn(&mut self) {
        let (Some(opened), Some(rendered), Some(call_id)) = (
            self.driving_provider(),
            self.rendered.take(),
            self.call_uuid.clone(),
        ) else {
            return;
        };
        let started = std::time::Instant::now();
        let (operation, outcome) = self
            .slot
            .outside(opened.link.push_turn(&call_id, &rendered))
            .await;
        let result = outcome.result();
        self.app.metrics.provider_request(
            opened.provider.as_str(),
            operation,
            result,
            started.elapsed(),
        );
        if !matches!(outcome, CallOutcome::Done { .. }) {
            // A call that is over already refuses; nothing else to do.
            tracing::info!(operation, result, "the call did not take its new turn");
        }
    }

    /// Places the call through the connection (once: a re-run finds its
    /// id stored), then sleeps: the flow starts when the provider says the
    /// call was answered. The wake ends here, whatever happened.
    async fn place_call(&mut self, opened: &Opened) -> anyhow::Result<Option<Ended>> {
        if !self.sent.contains(CALL_ITEM) {
            let machine_detection = if self.session.hangup_on_machine {
                Some(MachineDetection::Continue)
            } else {
                opened.machine_detection
            };
            let (answer, event) = opened.link.call_webhooks();
            let request = NewCall {
                to: Endpoint::parse(&self.session.to),
                from: self.session.from.clone(),
                answer_url: self.webhook_url(opened, answer, "")?,
                event_url: self.webhook_url(opened, event, "")?,
                machine_detection,
                ringing_timer: RINGING_SECS,
            };
            let outcome = self
                .with_retries(
                    opened,
                    &opened.call_pace,
                    "create_call",
                    "place calls",
                    || opened.link.create_call(&request),
                )
                .await?;
            let uuid = match outcome {
                CallOutcome::Done { id: Some(id) } => id,
                CallOutcome::Done { id: None } => {
                    return Err(ProviderDown::new(format!(
                        "{} placed the call without saying its id",
                        opened.provider
                    ))
                    .into())
                }
                CallOutcome::Refused { reason } => {
                    self.note(SessionEvent::Error { error: reason });
                    let now = Utc::now();
                    let failed = CallProgress::NotAnswered {
                        failure: CallFailure::Failed,
                    };
                    let effects = self.lifecycle.call_progress(failed, now);
                    self.apply(effects, now).await?;
                    return Ok(Some(Ended));
                }
                CallOutcome::Throttled { .. } | CallOutcome::Unavailable { .. } => {
                    unreachable!("tried again above")
                }
            };
            self.record(SessionUpdate {
                provider_refs: vec![ProviderRef {
                    connection_id: opened.id.clone(),
                    provider_ref: uuid.clone(),
                    session_id: self.session.id,
                    item: CALL_ITEM.to_owned(),
                }],
                ..self.update()
            })
            .await?;
            self.sent.insert(CALL_ITEM.to_owned());
            self.call_uuid = Some(uuid);
        }
        let by =
            Utc::now() + chrono::Duration::seconds(i64::from(RINGING_SECS) + ANSWER_GRACE_SECS);
        self.state.answer_by = Some(by);
        self.save(JobFate::SleepUntil(by)).await?;
        Ok(Some(Ended))
    }

    /// Applies what the provider reported of the call: its answer starts
    /// the flow; a failure before it, or its end, ends the session; an
    /// answering machine ends it if the trigger said to hang up on one.
    /// `Some(Ended)` when the session ended.
    async fn call_report(
        &mut self,
        progress: CallProgress,
        at: DateTime<Utc>,
    ) -> anyhow::Result<Option<Ended>> {
        let answered = self.state.flow.seq > 0;
        match progress {
            CallProgress::Ringing => Ok(None),
            CallProgress::Answered {
                by: AnsweredBy::Person,
            } => {
                if answered {
                    return Ok(None);
                }
                let effects = self.lifecycle.call_progress(progress, at);
                if self.apply(effects, at).await?.is_some() {
                    return Ok(Some(Ended));
                }
                self.start_flow().await
            }
            // A provider's machine detection, reported beside the answer
            // (which starts the flow by itself).
            CallProgress::Answered {
                by: AnsweredBy::Machine,
            } if !self.session.hangup_on_machine && self.driving_provider().is_some() => {
                self.note(SessionEvent::Answered {
                    by: AnsweredBy::Machine,
                });
                Ok(None)
            }
            // The simulator's machine answers the call, and the agent runs.
            CallProgress::Answered {
                by: AnsweredBy::Machine,
            } if !self.session.hangup_on_machine => {
                if answered {
                    return Ok(None);
                }
                let effects = self.lifecycle.call_progress(progress, at);
                if self.apply(effects, at).await?.is_some() {
                    return Ok(Some(Ended));
                }
                self.start_flow().await
            }
            CallProgress::NotAnswered { .. } if !answered => {
                let effects = self.lifecycle.call_progress(progress, at);
                self.apply(effects, at).await
            }
            CallProgress::Answered { .. } => {
                let effects = self.lifecycle.call_progress(progress, at);
                self.apply(effects, at).await
            }
            // The call is over (the person hung up; or it failed after the
            // answer): so is the conversation.
            CallProgress::NotAnswered { .. } | CallProgress::Completed => {
                let effects = self.lifecycle.call_progress(CallProgress::Completed, at);
                self.apply(effects, at).await
            }
        }
    }
}

/// The reference a provider echoes with each status of a session's
/// `item` (CHANNELS §1.5): the session and the item, so that a status that
/// arrives before its message's id was stored still finds them.
pub fn client_ref(session: herald_core::SessionId, item: &str) -> String {
    format!("{session}:{item}")
}

/// The session and item of a [`client_ref`].
pub fn parse_client_ref(text: &str) -> Option<(herald_core::SessionId, &str)> {
    let (session, item) = text.split_once(':')?;
    Some((session.parse().ok()?, item))
}

/// The flow's event for an input; `None` for one the flow does not step on.
fn flow_event(input: SessionInput) -> Option<Event> {
    Some(match input {
        SessionInput::Text(text) => Event::Input(Input {
            mode: InputMode::Text,
            text,
        }),
        SessionInput::Digits(text) => Event::Input(Input {
            mode: InputMode::Dtmf,
            text,
        }),
        SessionInput::Speech { text, .. } => Event::Input(Input {
            mode: InputMode::Speech,
            text,
        }),
        SessionInput::LiveAgentMessage(text) => Event::LiveAgentMessage { text },
        SessionInput::LiveAgentHandBack => Event::LiveAgentHandBack,
        SessionInput::LiveAgentEnd => Event::LiveAgentEnd,
        SessionInput::NoInput => Event::NoInput,
        // Reported by providers, and handled before the flow sees them.
        SessionInput::CallProgress(_)
        | SessionInput::MessageStatus { .. }
        | SessionInput::SmsStatus { .. } => return None,
    })
}

/// What a keyword the person sent came to.
#[derive(Debug, PartialEq, Eq)]
enum KeywordFate {
    /// The session ended (or now waits only for its messages' statuses).
    Ended,
    /// It was carried out, and the conversation goes on as it was.
    Handled,
}

enum Performed {
    Done,
    /// Step again with this event.
    Then(Event),
    /// The session ended.
    Ended,
}

//! The session driver: runs a session's conversation, one wake at a time.
//!
//! A session's dispatch job stays in the store for as long as the session
//! is open; the dispatcher hands this module a job whenever it is due: when
//! the session is new, when the person (or a live agent) has said something,
//! or when a deadline of the flow has passed. A wake:
//!
//! 1. the first time only, reaches the person: places the call, or sends a
//!    WhatsApp session's opening template;
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
//! On the simulator, a message's statuses are played out in the send.
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
use herald_channels::vonage::{self, SendOutcome};
use herald_channels::{CallRequest, CallResult, MessageContent, OutboundMessage, Provider};
use herald_core::flow::FlowDefinition;
use herald_core::secret::redact_url;
use herald_core::session::transcript::transcript;
use herald_core::session::{
    CallProgress, MessageStatus, Outcome, SessionEvent, SessionInput, ShownContent,
};
use herald_core::{Channel, ConversationUuid, Destination};
use herald_flow::lifecycle::{self, Effect, EventKeys, Inbound, PendingEnd, SessionState};
use herald_flow::{Action, EndReason, Event, Input, InputMode, WebhookRequest};
use herald_store::{
    Activation, DispatchLease, Ending, InputRow, JobFate, LeaseToken, NewCallback, NewEvent,
    ProviderRef, SessionRecord, SessionUpdate,
};
use serde_json::json;
use uuid::Uuid;

use crate::metrics::{ChannelLabels, OutcomeLabels};
use crate::providers::{Link, Opened};
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
#[error("{0}")]
pub struct ProviderDown(pub String);

/// Sends of one message a run tries before it gives up (and the
/// dispatcher tries the run again later).
const SEND_TRIES: u32 = 3;
/// The longest a run waits between two of them.
const MAX_SEND_PAUSE: Duration = Duration::from_secs(2);

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
    let id = lease.session_id;
    let Some(session) = app.store.session_for_work(id).await? else {
        // Nothing to run or to end: the job goes.
        tracing::warn!("a dispatch job names a session that does not exist; removing it");
        return remove_job(app, lease).await;
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
        return remove_job(app, lease).await;
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
    let sent = match &outlet {
        Outlet::Simulator => HashSet::new(),
        Outlet::Connection(_) => app
            .store
            .session_provider_refs(id)
            .await?
            .into_iter()
            .map(|r| r.item)
            .collect(),
    };
    let destination = if session.channel.is_messaging() {
        Destination::parse_messaging(&session.to)
    } else {
        Destination::parse_voice(&session.to)
    };
    let digits = destination.ok().and_then(|d| d.last_two_digits());
    let mut driver = Driver {
        app,
        provider: app.provider.as_ref(),
        lifecycle: lifecycle_of(&session),
        session: &session,
        flow: &version.flow,
        lease: lease.token,
        call: CallRequest {
            to: session.to.clone(),
            from: session.from.clone(),
            last_two_digits: digits,
        },
        state: state.clone().unwrap_or_default(),
        pending: Vec::new(),
        reports: Vec::new(),
        keys: EventKeys::first_wake(),
        slot,
        outlet,
        sent,
    };
    if ended {
        return driver.take_late_reports().await;
    }
    let first_wake = state.is_none();
    if first_wake
        && (driver.reach_person().await?.is_some() || driver.start_flow().await?.is_some())
    {
        return Ok(());
    }
    driver.handle_inputs_and_timer().await
}

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
/// held: it fails with `error` recorded, and a call reports that it did.
pub async fn fail_session(
    app: &AppState,
    lease: DispatchLease,
    error: String,
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
    for effect in lifecycle_of(&session).broken(error, now) {
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
    Ok(())
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
        self.app
            .store
            .update_session(self.session.id, update)
            .await?;
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
                Effect::HangUp => self.provider.hang_up(&self.call).await,
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
            JobFate::EndAndWait { ending, until }
        } else {
            JobFate::Finish(Some(ending))
        };
        let keep_state = self.state.flow.node.is_some() || self.state.reports_until.is_some();
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
            return self.save(JobFate::SleepUntil(by)).await;
        }
        self.finish(outcome, reason).await
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
            self.report(input).await?;
        }
        let until = self.state.reports_until.unwrap_or_else(Utc::now);
        let job = if until <= Utc::now() || !self.state.awaiting_reports(self.session.channel) {
            JobFate::Finish(None)
        } else {
            JobFate::SleepUntil(until)
        };
        self.save(job).await
    }

    /// Applies what a provider reported of a message; `Some(Ended)` when it
    /// ended the session (a message the person cannot be reached by).
    async fn report(&mut self, input: InputRow) -> anyhow::Result<Option<Ended>> {
        match input.input {
            SessionInput::MessageStatus { message, status } => {
                if message >= self.state.messages {
                    tracing::warn!(message, "a status of a message the session never sent");
                    return Ok(None);
                }
                let effects =
                    self.lifecycle
                        .message_status(&mut self.state, message, status, input.at);
                if self.state.reports_until.is_some() {
                    // Ended: record and report, nothing else.
                    for effect in effects {
                        match effect {
                            Effect::Record(event) => {
                                let event = self.event(event, input.at);
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
                self.apply(effects, input.at).await
            }
            SessionInput::SmsStatus { to, status } => {
                self.note(SessionEvent::SmsStatus { to, status });
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    // ---- the first wake: reaching the person -------------------------------

    /// Places the call or opens the messaging session; `Some(Ended)` when
    /// the person cannot be reached (or the session is declined) and the
    /// session has ended.
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
        let progress = match self.provider.call(&self.call).await {
            CallResult::NotAnswered(failure) => CallProgress::NotAnswered { failure },
            CallResult::Answered(by) => CallProgress::Answered { by },
        };
        let now = Utc::now();
        let effects = self.lifecycle.call_progress(progress, now);
        self.apply(effects, now).await
    }

    /// Opens a messaging session; `Some(Ended)` when it ended at once.
    async fn open_messaging(&mut self) -> anyhow::Result<Option<Ended>> {
        if self.session.inbound {
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

    // ---- later wakes --------------------------------------------------------

    async fn handle_inputs_and_timer(&mut self) -> anyhow::Result<()> {
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
                if input.input.kind().is_message_report() {
                    self.keys = EventKeys::report(input.id);
                    if self.report(input).await?.is_some() {
                        return Ok(());
                    }
                    continue;
                }
                self.note_input(&input);
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
            return self.save(JobFate::SleepUntil(ending.by)).await;
        }
        if let Some(deadline) = self.state.flow.next_deadline() {
            if deadline <= SystemTime::now() && self.advance(Event::Timer).await?.is_some() {
                return Ok(());
            }
        }
        // Nothing more to do until the next deadline, or an input.
        let wake_at = self
            .state
            .flow
            .next_deadline()
            .map(DateTime::<Utc>::from)
            .unwrap_or_else(|| Utc::now() + chrono::Duration::days(1));
        self.save(JobFate::SleepUntil(wake_at)).await
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
            Action::Entered { node } => self.note(SessionEvent::NodeEntered { node }),
            Action::Speak { text } => {
                self.provider.say(&self.call, &text).await;
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
                self.provider.transfer(&self.call, &to).await;
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
                    self.provider.hang_up(&self.call).await;
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
            let mut statuses = self
                .provider
                .send(&OutboundMessage {
                    channel: session.channel,
                    to: session.to.clone(),
                    from: session.from.clone(),
                    content,
                    last_two_digits: self.call.last_two_digits,
                })
                .await;
            while let Some(status) = statuses.recv().await {
                let now = Utc::now();
                let effects = self
                    .lifecycle
                    .message_status(&mut self.state, n, status, now);
                if self.apply(effects, now).await?.is_some() {
                    return Ok(Some(Ended));
                }
            }
            // The simulator has played every status there is.
            self.state.closed.insert(n);
            return Ok(None);
        };
        let opened = opened.clone();
        let vonage_content = match content {
            MessageContent::Text(text) => vonage::messages::Content::Text(text),
            MessageContent::Template(t) => vonage::messages::Content::Template {
                namespace: t["namespace"].as_str().unwrap_or_default().to_owned(),
                name: t["template"].as_str().unwrap_or_default().to_owned(),
                locale: t["locale"].as_str().unwrap_or_default().to_owned(),
                components: t["components"].clone(),
            },
        };
        let item = n.to_string();
        let message = vonage::OutboundMessage {
            channel: session.channel,
            to: session.to.clone(),
            from: session.from.clone(),
            content: vonage_content,
            client_ref: client_ref(session.id, &item),
        };
        match self.send_through(&opened, &item, &message).await? {
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
        message: &vonage::OutboundMessage,
    ) -> anyhow::Result<Option<Sent>> {
        if self.sent.contains(item) {
            return Ok(None);
        }
        let Link::Vonage(vonage) = &opened.link else {
            return Err(Permanent("the session's connection cannot send messages").into());
        };
        let provider = opened.provider.as_str();
        let mut tries = 0;
        let outcome = loop {
            tries += 1;
            opened.pace.wait().await;
            let started = std::time::Instant::now();
            let outcome = self.slot.outside(vonage.send(message)).await;
            let result = match &outcome {
                SendOutcome::Accepted { .. } => "accepted",
                SendOutcome::Throttled { .. } => "throttled",
                SendOutcome::Unavailable { .. } => "unavailable",
                SendOutcome::Refused { .. } => "refused",
            };
            self.app
                .metrics
                .provider_request(provider, "send_message", result, started.elapsed());
            let pause = match &outcome {
                SendOutcome::Throttled { retry_after } => {
                    retry_after.unwrap_or(Duration::from_millis(500))
                }
                SendOutcome::Unavailable { .. } => Duration::from_millis(250 << tries),
                _ => break outcome,
            };
            if tries >= SEND_TRIES {
                let reason = match outcome {
                    SendOutcome::Unavailable { reason } => reason,
                    _ => format!("{} kept refusing to take messages (429)", opened.provider),
                };
                return Err(ProviderDown(reason).into());
            }
            tokio::time::sleep(pause.min(MAX_SEND_PAUSE)).await;
        };
        Ok(Some(match outcome {
            SendOutcome::Accepted { message_uuid } => {
                let reference = ProviderRef {
                    connection_id: opened.id.clone(),
                    provider_ref: message_uuid,
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
            let message = vonage::OutboundMessage {
                channel: Channel::Sms,
                to: destination.as_str().to_owned(),
                from: self.session.from.clone(),
                content: vonage::messages::Content::Text(text),
                client_ref: client_ref(self.session.id, &item),
            };
            if let Some(Sent::Refused { reason, .. }) =
                self.send_through(&opened, &item, &message).await?
            {
                self.note(SessionEvent::SmsFailed { to, error: reason });
            }
            return Ok(());
        }
        let mut statuses = self
            .provider
            .send(&OutboundMessage {
                channel: Channel::Sms,
                to: to.clone(),
                from: self.session.from.clone(),
                content: MessageContent::Text(text),
                last_two_digits: digits,
            })
            .await;
        while let Some(status) = statuses.recv().await {
            self.note(SessionEvent::SmsStatus {
                to: to.clone(),
                status,
            });
        }
        Ok(())
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
        // Reported by providers, and handled before the flow sees them;
        // no provider reports a call's progress or silence yet.
        SessionInput::NoInput
        | SessionInput::CallProgress(_)
        | SessionInput::MessageStatus { .. }
        | SessionInput::SmsStatus { .. } => return None,
    })
}

enum Performed {
    Done,
    /// Step again with this event.
    Then(Event),
    /// The session ended.
    Ended,
}

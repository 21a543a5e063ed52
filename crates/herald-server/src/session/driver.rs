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
//! A crash anywhere loses nothing that was acknowledged: the job's lease
//! runs out and another worker starts again from the last stored state.
//! Actions of the step under way may then be carried out twice (at least
//! once), but they are recorded once, because every event is keyed by the
//! step that made it.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use herald_channels::{CallRequest, CallResult, MessageContent, OutboundMessage, Provider};
use herald_core::flow::FlowDefinition;
use herald_core::secret::redact_url;
use herald_core::session::transcript::transcript;
use herald_core::session::{CallProgress, Outcome, SessionEvent, SessionInput, ShownContent};
use herald_core::{Channel, ConversationUuid, Destination};
use herald_flow::lifecycle::{self, Effect, EventKeys, Inbound, SessionState};
use herald_flow::{Action, EndReason, Event, Input, InputMode, WebhookRequest};
use herald_store::{
    Activation, DispatchLease, Ending, InputRow, JobFate, LeaseToken, NewCallback, NewEvent,
    SessionRecord, SessionUpdate,
};
use serde_json::json;
use uuid::Uuid;

use crate::metrics::{ChannelLabels, OutcomeLabels};
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
        let update = SessionUpdate {
            job: JobFate::Finish(None),
            ..SessionUpdate::keep(lease.token)
        };
        return app
            .store
            .update_session(id, update)
            .await
            .map_err(Into::into);
    };
    if session.status == herald_core::session::SessionStatus::Ended {
        // A re-run after the end was recorded but before the job was removed.
        let update = SessionUpdate {
            job: JobFate::Finish(None),
            ..SessionUpdate::keep(lease.token)
        };
        return app
            .store
            .update_session(id, update)
            .await
            .map_err(Into::into);
    }
    let version = app
        .directory
        .agent_version(app.store.as_ref(), &session.agent_id, session.agent_version)
        .await?
        .ok_or(Permanent("the session's agent version is missing"))?;
    let state = match &session.flow_state {
        Some(state) => Some(SessionState::from_stored(state).map_err(|e| {
            tracing::error!(error = %e, "the stored flow state is unreadable");
            Permanent("the session's stored state cannot be read")
        })?),
        None => None,
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
    };
    let first_wake = state.is_none();
    if first_wake
        && (driver.reach_person().await?.is_some() || driver.start_flow().await?.is_some())
    {
        return Ok(());
    }
    driver.handle_inputs_and_timer().await
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
}

/// The session ended in this wake.
struct Ended;

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

    async fn finish(&mut self, outcome: Outcome, reason: Option<EndReason>) -> anyhow::Result<()> {
        let at = Utc::now();
        let ended = self.event(SessionEvent::Ended { outcome, reason }, at);
        let flow_state = (self.state.flow.node.is_some()).then(|| self.state.to_stored());
        self.record(SessionUpdate {
            job: JobFate::Finish(Some(Ending { outcome, at })),
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
                self.note_input(&input);
                self.state.inputs_consumed = input.id;
                let Some(event) = flow_event(input.input) else {
                    continue;
                };
                if self.advance(event).await?.is_some() {
                    return Ok(());
                }
            }
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
            Action::SendSms { to, text } => self.send_sms(to, text).await,
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
                let end = self.lifecycle.flow_ended(reason);
                self.apply(vec![end], Utc::now()).await?;
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
    /// and the session has ended so.
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
            let effects = self.lifecycle.message_status(n, status, now);
            if self.apply(effects, now).await?.is_some() {
                return Ok(Some(Ended));
            }
        }
        Ok(None)
    }

    /// A Send SMS node's message: to anyone, from the agent's number; its
    /// statuses are recorded, with no callbacks (those report the session's
    /// own conversation).
    async fn send_sms(&mut self, to: String, text: String) {
        let Ok(destination) = Destination::parse_messaging(&to) else {
            // Recorded as failed; the flow goes on.
            self.note(SessionEvent::SmsFailed {
                to,
                error: "not a phone number".into(),
            });
            return;
        };
        let digits = destination.last_two_digits();
        self.note(SessionEvent::SmsSent {
            to: to.clone(),
            text: text.clone(),
        });
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
    }
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
        // Reported by providers; no provider reports them yet.
        SessionInput::NoInput
        | SessionInput::CallProgress(_)
        | SessionInput::MessageStatus { .. } => return None,
    })
}

enum Performed {
    Done,
    /// Step again with this event.
    Then(Event),
    /// The session ended.
    Ended,
}

//! The runtime driver: runs a session's conversation, one wake at a time.
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
//! A crash anywhere loses nothing that was acknowledged: the job's lease
//! runs out and another worker starts again from the last stored state.
//! Actions of the step under way may then be carried out twice (at least
//! once), but they are recorded once, because every event is keyed by the
//! step that made it.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use herald_channels::{
    CallAnswer, CallRequest, CallResult, MessageContent, OutboundMessage, Provider,
};
use herald_core::flow::FlowDefinition;
use herald_core::secret::redact_url;
use herald_core::session::{MessageStatus, Outcome, SessionStatus};
use herald_core::{Channel, ConversationUuid, Destination};
use herald_flow::{Action, EndReason, Event, FlowState, Input, InputKind, WebhookRequest};
use herald_store::{
    DispatchLease, InputRow, LeaseToken, NewCallback, NewEvent, SessionRecord, SessionUpdate,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::metrics::{ChannelLabels, OutcomeLabels};
use crate::session::dispatcher::Slot;
use crate::AppState;

/// How long a live agent's endpoint may take to take a message.
const LIVE_AGENT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the driver keeps between wakes, stored as the session's flow state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Conversation {
    flow: FlowState,
    /// The id of the last input handled.
    inputs_consumed: i64,
    /// Messages sent to the person so far; names each message's uuid.
    messages: u32,
}

/// Input kinds as the store keeps them (see `herald_store::NewInput`).
pub mod input_kind {
    pub const TEXT: &str = "text";
    pub const DTMF: &str = "dtmf";
    pub const SPEECH: &str = "speech";
    pub const LIVE_AGENT_MESSAGE: &str = "live_agent_message";
    pub const LIVE_AGENT_HAND_BACK: &str = "live_agent_hand_back";
    pub const LIVE_AGENT_END: &str = "live_agent_end";
}

/// Whether a live agent holds the session's conversation now.
pub fn with_live_agent(session: &SessionRecord) -> bool {
    session
        .flow_state
        .clone()
        .and_then(|state| serde_json::from_value::<Conversation>(state).ok())
        .is_some_and(|c| matches!(c.flow.waiting, Some(herald_flow::Wait::LiveAgent { .. })))
}

/// Runs one wake of a session (see the module's comment).
#[tracing::instrument(skip_all, fields(session_id = %lease.session_id))]
pub async fn run_session(app: &AppState, lease: DispatchLease, slot: Slot) -> anyhow::Result<()> {
    let id = lease.session_id;
    let Some(session) = app.store.session_for_work(id).await? else {
        anyhow::bail!("a dispatch job names a session that does not exist");
    };
    if session.status == SessionStatus::Ended {
        // A re-run after the end was recorded but before the job was removed.
        return app
            .store
            .update_session(
                id,
                SessionUpdate {
                    finish_dispatch: true,
                    lease: Some(lease.token),
                    ..Default::default()
                },
            )
            .await
            .map_err(Into::into);
    }
    let version = app
        .directory
        .agent_version(app.store.as_ref(), &session.agent_id, session.agent_version)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the session's agent version is missing"))?;
    let conversation = match &session.flow_state {
        Some(state) => Some(
            serde_json::from_value::<Conversation>(state.clone())
                .map_err(|e| anyhow::anyhow!("the stored flow state is unreadable: {e}"))?,
        ),
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
        session: &session,
        flow: &version.flow,
        lease: lease.token,
        call: CallRequest {
            to: session.to.clone(),
            from: session.from.clone(),
            last_two_digits: digits,
        },
        conversation_uuid: session
            .conversation_uuid
            .clone()
            .map(ConversationUuid::from_stored)
            .unwrap_or_else(ConversationUuid::generate),
        conv: conversation.clone().unwrap_or_default(),
        pending: Vec::new(),
        prefix: "run".into(),
        n: 0,
        slot,
    };
    let first_wake = conversation.is_none();
    if first_wake
        && (driver.reach_person().await?.is_some() || driver.start_flow().await?.is_some())
    {
        return Ok(());
    }
    driver.handle_inputs_and_timer().await
}

struct Driver<'a> {
    app: &'a AppState,
    provider: &'a dyn Provider,
    session: &'a SessionRecord,
    flow: &'a FlowDefinition,
    lease: LeaseToken,
    call: CallRequest,
    conversation_uuid: ConversationUuid,
    conv: Conversation,
    /// Events recorded since the last write; written with the next one.
    pending: Vec<NewEvent>,
    /// Names the phase or step events are recorded in, for their keys.
    prefix: String,
    n: u32,
    /// The session's running place, given up during outside calls.
    slot: Slot,
}

/// The session ended in this wake.
struct Ended;

impl Driver<'_> {
    // ---- recording --------------------------------------------------------

    /// An event keyed by its place in the phase or step, so that a re-run of
    /// the same step records nothing twice.
    fn event(&mut self, kind: &str, data: Option<serde_json::Value>) -> NewEvent {
        self.n += 1;
        NewEvent {
            key: Some(format!("{}:{}", self.prefix, self.n)),
            kind: kind.to_owned(),
            at: Utc::now(),
            data,
        }
    }

    fn note(&mut self, kind: &str, data: serde_json::Value) {
        let event = self.event(kind, Some(data));
        self.pending.push(event);
    }

    /// Writes `update` with the events noted so far, under the lease.
    async fn record(&mut self, mut update: SessionUpdate) -> anyhow::Result<()> {
        let mut events = std::mem::take(&mut self.pending);
        events.append(&mut update.events);
        update.events = events;
        update.lease = Some(self.lease);
        self.app
            .store
            .update_session(self.session.id, update)
            .await?;
        Ok(())
    }

    fn state_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.conv).expect("the flow state serialises")
    }

    /// Stores the conversation's state with what was noted.
    async fn save(&mut self, wake_at: Option<DateTime<Utc>>) -> anyhow::Result<()> {
        let update = SessionUpdate {
            flow_state: Some(self.state_json()),
            inputs_consumed: Some(self.conv.inputs_consumed),
            wake_at,
            ..Default::default()
        };
        self.record(update).await
    }

    fn callback(&self, dedupe_key: String, body: serde_json::Value) -> Option<NewCallback> {
        let url = self.session.status_url.clone()?;
        Some(NewCallback {
            dedupe_key,
            webhook_id: format!("msg_{}", Uuid::new_v4().simple()),
            account_id: self.session.account_id,
            url,
            body: body.to_string(),
            created_at: Utc::now(),
        })
    }

    fn voice_callback(&self, status: &str) -> Option<NewCallback> {
        let session = self.session;
        self.callback(
            format!("call:{status}"),
            json!({
                "agent_id": session.agent_id,
                "to": session.to,
                "conversation_uuid": self.conversation_uuid.as_str(),
                "status": status,
                "timestamp": herald_core::time::rfc3339(Utc::now()),
            }),
        )
    }

    async fn finish(
        &mut self,
        outcome: Outcome,
        reason: Option<EndReason>,
        callbacks: Vec<NewCallback>,
    ) -> anyhow::Result<()> {
        let mut data = json!({ "outcome": outcome });
        if let Some(reason) = reason {
            data["reason"] = json!(reason);
        }
        let event = self.event("ended", Some(data));
        let flow_state = (self.conv.flow.node.is_some()).then(|| self.state_json());
        self.record(SessionUpdate {
            status: Some(SessionStatus::Ended),
            outcome: Some(outcome),
            ended_at: Some(Utc::now()),
            events: vec![event],
            callbacks,
            flow_state,
            inputs_consumed: Some(self.conv.inputs_consumed),
            finish_dispatch: true,
            ..Default::default()
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
        self.app.callback_wakeup.notify_one();
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
        let dispatched = self.event("dispatched", None);
        self.record(SessionUpdate {
            status: Some(SessionStatus::Active),
            conversation_uuid: (!session.channel.is_messaging())
                .then(|| self.conversation_uuid.as_str().to_owned()),
            events: vec![dispatched],
            ..Default::default()
        })
        .await?;
        if session.channel.is_messaging() {
            let Some(outcome) = self.open_messaging().await? else {
                return Ok(None);
            };
            self.finish(outcome, None, Vec::new()).await?;
            return Ok(Some(Ended));
        }
        self.note("ringing", serde_json::Value::Null);
        match self.provider.call(&self.call).await {
            CallResult::NotAnswered(failure) => {
                let status = failure.as_str();
                let outcome: Outcome = status.parse().expect("call failures are outcomes");
                let callbacks = self.voice_callback(status).into_iter().collect();
                self.note("call_status", json!({ "status": status }));
                self.finish(outcome, None, callbacks).await?;
                Ok(Some(Ended))
            }
            CallResult::Answered(CallAnswer::Machine) if session.hangup_on_machine => {
                self.note("answered", json!({ "by": "machine" }));
                self.provider.hang_up(&self.call).await;
                self.note("hangup", json!({ "reason": "answering machine" }));
                let callbacks = self.voice_callback("machine").into_iter().collect();
                self.finish(Outcome::Machine, None, callbacks).await?;
                Ok(Some(Ended))
            }
            CallResult::Answered(by) => {
                let by = match by {
                    CallAnswer::Person => "person",
                    CallAnswer::Machine => "machine",
                };
                self.note("answered", json!({ "by": by }));
                Ok(None)
            }
        }
    }

    /// Opens a messaging session; `Some(outcome)` when it is to end at once.
    async fn open_messaging(&mut self) -> anyhow::Result<Option<Outcome>> {
        if self.session.inbound {
            // Only a flow that says it takes them runs for a stranger's
            // message; without an `inbound` policy it declines, silently.
            let policy = self.flow.inbound.as_ref();
            if policy.is_some_and(|p| p.accept) {
                return Ok(None);
            }
            // What the person said is kept, as in a session that runs.
            if let Some(first) = self
                .app
                .store
                .pending_inputs(self.session.id, 0)
                .await?
                .into_iter()
                .next()
            {
                self.note_input(&first);
                self.conv.inputs_consumed = first.id;
            }
            self.note("inbound_declined", serde_json::Value::Null);
            if let Some(reply) = policy.and_then(|p| p.reply.clone()) {
                let outcome = self.send_message(MessageContent::Text(reply)).await?;
                return Ok(Some(outcome));
            }
            return Ok(Some(Outcome::Completed));
        }
        // A WhatsApp conversation opens with the trigger's template.
        if let Some(template) = self.session.whatsapp.clone() {
            let outcome = self
                .send_message(MessageContent::Template(template))
                .await?;
            if outcome != Outcome::Completed {
                return Ok(Some(outcome));
            }
        }
        Ok(None)
    }

    /// Starts the flow; `Some(Ended)` if it ended at once.
    async fn start_flow(&mut self) -> anyhow::Result<Option<Ended>> {
        let session = self.session;
        let mut parameters: BTreeMap<String, String> = session
            .parameters
            .iter()
            .map(|p| (p.name.clone(), p.value.clone()))
            .collect();
        let system = [
            ("SESSION_ID", session.id.to_string()),
            ("AGENT_ID", session.agent_id.to_string()),
            ("AGENT_NUMBER", session.from.clone()),
            ("RECIPIENT", session.to.clone()),
            ("CHANNEL", session.channel.as_str().to_owned()),
            (
                "DIRECTION",
                if session.inbound {
                    "inbound"
                } else {
                    "outbound"
                }
                .to_owned(),
            ),
            ("LAST_INPUT", String::new()),
        ];
        for (name, value) in system {
            parameters.insert(name.to_owned(), value);
        }
        // An inbound session's first message is what started it: it is the
        // flow's first LAST_INPUT rather than an answer to anything.
        if session.inbound {
            if let Some(first) = self
                .app
                .store
                .pending_inputs(session.id, 0)
                .await?
                .into_iter()
                .next()
            {
                self.note_input(&first);
                self.conv.inputs_consumed = first.id;
                parameters.insert("LAST_INPUT".into(), first.text);
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
                .pending_inputs(self.session.id, self.conv.inputs_consumed)
                .await?;
            if inputs.is_empty() {
                break;
            }
            for input in inputs {
                self.note_input(&input);
                self.conv.inputs_consumed = input.id;
                let event = match input.kind.as_str() {
                    input_kind::LIVE_AGENT_MESSAGE => Event::LiveAgentMessage { text: input.text },
                    input_kind::LIVE_AGENT_HAND_BACK => Event::LiveAgentHandBack,
                    input_kind::LIVE_AGENT_END => Event::LiveAgentEnd,
                    kind => Event::Input(Input {
                        kind: match kind {
                            input_kind::DTMF => InputKind::Dtmf,
                            input_kind::SPEECH => InputKind::Speech,
                            _ => InputKind::Text,
                        },
                        text: input.text,
                    }),
                };
                if self.advance(event).await?.is_some() {
                    return Ok(());
                }
            }
        }
        if let Some(deadline) = self.conv.flow.next_deadline() {
            if deadline <= SystemTime::now() && self.advance(Event::Timer).await?.is_some() {
                return Ok(());
            }
        }
        // Nothing more to do until the next deadline, or an input.
        let wake_at = self
            .conv
            .flow
            .next_deadline()
            .map(DateTime::<Utc>::from)
            .unwrap_or_else(|| Utc::now() + chrono::Duration::days(1));
        self.save(Some(wake_at)).await
    }

    fn note_input(&mut self, input: &InputRow) {
        let data = json!({ "input": input.kind, "text": input.text });
        let event = NewEvent {
            key: Some(format!("in:{}", input.id)),
            kind: "input_received".into(),
            at: input.at,
            data: Some(data),
        };
        self.pending.push(event);
    }

    /// Steps the flow with `event` and carries out what it asks, again for
    /// every event an action produces (a webhook's answer), storing the
    /// state after each step. `Some(Ended)` when the session ended.
    async fn advance(&mut self, event: Event) -> anyhow::Result<Option<Ended>> {
        let mut next = Some(event);
        while let Some(event) = next.take() {
            let before = self.conv.flow.seq;
            let (state, actions) =
                herald_flow::step(self.flow, self.conv.flow.clone(), event, SystemTime::now());
            if state.seq == before {
                // Ignored (a stray event): only what was noted is stored.
                self.save(None).await?;
                continue;
            }
            self.prefix = format!("s{}", state.seq);
            self.n = 0;
            self.conv.flow = state;
            for action in actions {
                match self.perform(action).await? {
                    Performed::Done => {}
                    Performed::Then(event) => next = Some(event),
                    Performed::Unreachable(outcome) => {
                        // The person cannot be reached any more.
                        self.finish(outcome, None, Vec::new()).await?;
                        return Ok(Some(Ended));
                    }
                    Performed::End(reason) => {
                        let outcome = if reason.is_failure() {
                            Outcome::Failed
                        } else {
                            Outcome::Completed
                        };
                        self.finish(outcome, Some(reason), Vec::new()).await?;
                        return Ok(Some(Ended));
                    }
                }
            }
            self.save(None).await?;
        }
        Ok(None)
    }

    async fn perform(&mut self, action: Action) -> anyhow::Result<Performed> {
        match action {
            Action::Entered { node } => self.note("node_entered", json!({ "node": node })),
            Action::Speak { text } => {
                self.provider.say(&self.call, &text).await;
                self.note("speak", json!({ "text": text }));
            }
            Action::SendMessage { text } => {
                let outcome = self.send_message(MessageContent::Text(text)).await?;
                if outcome != Outcome::Completed {
                    return Ok(Performed::Unreachable(outcome));
                }
            }
            Action::ParameterSet { name, value } => {
                self.note("parameter_set", json!({ "name": name, "value": value }))
            }
            Action::CallWebhook(request) => {
                self.note(
                    "webhook_called",
                    json!({ "method": request.method, "url": redact_url(&request.url) }),
                );
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
                        self.note("webhook_answered", json!({ "status": status }))
                    }
                    Event::WebhookFailed { error } => {
                        self.note("webhook_failed", json!({ "error": error }))
                    }
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
                    Ok(()) => self.note("email_sent", json!({ "to": to, "subject": subject })),
                    Err(error) => self.note("email_failed", json!({ "to": to, "error": error })),
                }
            }
            Action::Transfer { to } => {
                self.provider.transfer(&self.call, &to).await;
                self.note("transferred", json!({ "to": to }));
            }
            Action::LiveAgentStart { url } => {
                // The transcript so far: what is stored and what is noted.
                self.record(SessionUpdate::default()).await?;
                let transcript = match self
                    .app
                    .store
                    .session(self.session.account_id, self.session.id)
                    .await?
                {
                    Some(stored) => crate::api::sessions::transcript(&stored.events),
                    None => Vec::new(),
                };
                let body = json!({
                    "session_id": self.session.id,
                    "event": "start",
                    "agent_id": self.session.agent_id,
                    "channel": self.session.channel,
                    "to": self.session.to,
                    "transcript": transcript,
                });
                self.tell_live_agent(url, body, "live_agent_started").await;
            }
            Action::LiveAgentForward { url, text } => {
                let body = json!({
                    "session_id": self.session.id,
                    "event": "message",
                    "text": text,
                });
                self.tell_live_agent(url, body, "live_agent_forwarded")
                    .await;
            }
            Action::LiveAgentStop => self.note("live_agent_stopped", serde_json::Value::Null),
            Action::End { reason } => {
                if self.session.channel == Channel::Voice && reason != EndReason::Transferred {
                    self.provider.hang_up(&self.call).await;
                    self.note("hangup", serde_json::Value::Null);
                }
                return Ok(Performed::End(reason));
            }
        }
        Ok(Performed::Done)
    }

    async fn tell_live_agent(&mut self, url: String, body: serde_json::Value, done: &str) {
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
        match answer {
            Event::WebhookAnswered { status, .. } if (200..300).contains(&status) => {
                self.note(done, json!({ "url": shown }))
            }
            Event::WebhookAnswered { status, .. } => self.note(
                "live_agent_failed",
                json!({ "url": shown, "error": format!("the live agent's endpoint answered {status}") }),
            ),
            Event::WebhookFailed { error } => {
                self.note("live_agent_failed", json!({ "url": shown, "error": error }))
            }
            _ => {}
        }
    }

    /// Sends one message to the person and records its statuses, each with
    /// its callback; answers how the message ended.
    async fn send_message(&mut self, content: MessageContent) -> anyhow::Result<Outcome> {
        let session = self.session;
        let n = self.conv.messages;
        self.conv.messages += 1;
        // Stable per session and message, so a re-run reports the same id.
        let message_uuid = Uuid::new_v5(&session.id.as_uuid(), format!("message-{n}").as_bytes());
        let shown = match &content {
            MessageContent::Text(t) => json!({ "text": t }),
            MessageContent::Template(t) => json!({ "template": t }),
        };
        self.note(
            "message_sent",
            json!({ "message_uuid": message_uuid, "content": shown }),
        );
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
        let mut outcome = Outcome::Completed;
        while let Some(status) = statuses.recv().await {
            let event = self.event(
                "message_status",
                Some(json!({ "message_uuid": message_uuid, "status": status })),
            );
            let callback = self.callback(
                format!("message:{n}:{}", status.as_str()),
                json!({
                    "agent_id": session.agent_id,
                    "to": session.to,
                    "session_id": session.id,
                    "message_uuid": message_uuid,
                    "channel": session.channel,
                    "status": status,
                    "timestamp": herald_core::time::rfc3339(event.at),
                }),
            );
            self.record(SessionUpdate {
                events: vec![event],
                callbacks: callback.into_iter().collect(),
                ..Default::default()
            })
            .await?;
            self.app.callback_wakeup.notify_one();
            match status {
                MessageStatus::Rejected => outcome = Outcome::Rejected,
                MessageStatus::Failed => outcome = Outcome::Failed,
                _ => {}
            }
        }
        Ok(outcome)
    }

    /// A Send SMS node's message: to anyone, from the agent's number; its
    /// statuses are recorded, with no callbacks (those report the session's
    /// own conversation).
    async fn send_sms(&mut self, to: String, text: String) {
        let Ok(destination) = Destination::parse_messaging(&to) else {
            // Recorded as failed; the flow goes on.
            self.note(
                "sms_failed",
                json!({ "to": to, "error": "not a phone number" }),
            );
            return;
        };
        let digits = destination.last_two_digits();
        self.note("sms_sent", json!({ "to": to, "text": text }));
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
            self.note("sms_status", json!({ "to": to, "status": status }));
        }
    }
}

enum Performed {
    Done,
    /// Step again with this event.
    Then(Event),
    /// A message could not be delivered: the session ends so.
    Unreachable(Outcome),
    End(EndReason),
}

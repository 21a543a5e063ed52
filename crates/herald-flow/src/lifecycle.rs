//! A session's lifecycle as a pure state machine, beside the flow's: what
//! becomes of a session when its call rings, is answered or fails, when a
//! message to the person gets a status, when its flow ends, and when a
//! stranger's message opens it.
//!
//! The driver (in `herald-server`) reports what happened and carries out
//! the [`Effect`]s that come back, in order: it records events, writes
//! callbacks, hangs up, ends the session. Every decision lives here: which
//! outcome a call result is, which callback a status makes and under which
//! key, when a failed message ends the session, and the keys that keep a
//! re-run step from being recorded twice. Like `step`, nothing here does
//! I/O; time is an input.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use herald_core::flow::InboundPolicy;
use herald_core::session::callback::{Callback, MessageCallback, VoiceCallback};
use herald_core::session::{
    AnsweredBy, CallProgress, EndReason, MessageStatus, Outcome, SessionEvent, SessionInput,
    ShownContent,
};
use herald_core::time::rfc3339;
use herald_core::{AgentId, Channel, ConversationUuid, SessionId};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{FlowState, Wait};

/// What the lifecycle needs to know of a session: fixed by its trigger.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: SessionId,
    pub agent_id: AgentId,
    pub channel: Channel,
    /// The person.
    pub to: String,
    /// The agent's number.
    pub from: String,
    pub hangup_on_machine: bool,
    /// Started by the person's message rather than by a trigger.
    pub inbound: bool,
    /// A call's id in voice callbacks.
    pub conversation_uuid: ConversationUuid,
}

/// What the driver keeps of a session between wakes (its stored flow
/// state): where the flow is, which inputs it has handled, the messages
/// that went to the person and what became of them, and whether the
/// session is ending.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionState {
    pub flow: FlowState,
    /// The id of the last input handled.
    pub inputs_consumed: i64,
    /// Messages sent to the person so far; names each message's uuid.
    pub messages: u32,
    /// Texts Send SMS nodes sent so far.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub texts: u32,
    /// The furthest status of each message to the person that has one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub statuses: BTreeMap<u32, MessageStatus>,
    /// Messages of which no more will be heard (the simulator's, once
    /// their last status due has been applied).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub closed: BTreeSet<u32>,
    /// The flow has ended, and the session ends so once its messages have
    /// settled, or at the latest at `by`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ending: Option<PendingEnd>,
    /// The session has ended; until this time it still takes what
    /// providers report late of its messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reports_until: Option<DateTime<Utc>>,
    /// A call a provider drives has been placed; it ends if the provider
    /// has said nothing of its answer by then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_by: Option<DateTime<Utc>>,
    /// The instructions of a provider-driven call's latest turn, in the
    /// provider's own form: given again to a provider that asks again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_turn: Option<serde_json::Value>,
    /// What the simulator will report of the session's call and messages,
    /// in the order it happens: a provider's reports, kept with the state
    /// and applied when due rather than posted by webhook.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub due: Vec<DueReport>,
    /// Reports the simulator has made so far; names each one's events.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reports_made: u32,
}

/// A provider's report that takes effect at `at`; the `n`-th of the
/// session's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DueReport {
    pub n: u32,
    pub report: Report,
    pub at: DateTime<Utc>,
}

/// What a provider reports of a session, as it reports it by webhook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "of", rename_all = "snake_case")]
pub enum Report {
    /// How the call is going.
    Call { progress: CallProgress },
    /// A status of the session's `message`-th message to the person.
    Message { message: u32, status: MessageStatus },
    /// A status of a text a Send SMS node sent to `to`.
    Text { to: String, status: MessageStatus },
}

impl From<Report> for SessionInput {
    fn from(report: Report) -> Self {
        match report {
            Report::Call { progress } => SessionInput::CallProgress(progress),
            Report::Message { message, status } => SessionInput::MessageStatus {
                message,
                status,
                reason: None,
            },
            Report::Text { to, status } => SessionInput::SmsStatus { to, status },
        }
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// How a session whose flow has ended will end.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PendingEnd {
    pub outcome: Outcome,
    pub reason: Option<EndReason>,
    pub by: DateTime<Utc>,
}

impl SessionState {
    /// Reads a stored state; an error if it is not one.
    pub fn from_stored(value: &serde_json::Value) -> Result<Self, serde_json::Error> {
        SessionState::deserialize(value)
    }

    pub fn to_stored(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a session state serialises")
    }

    /// Keeps `report` to take effect at `at`, after every report due
    /// before it.
    pub fn schedule(&mut self, report: Report, at: DateTime<Utc>) {
        let n = self.reports_made;
        self.reports_made += 1;
        let place = self.due.partition_point(|due| due.at <= at);
        self.due.insert(place, DueReport { n, report, at });
    }

    /// When the next report is due, if one is.
    pub fn next_report(&self) -> Option<DateTime<Utc>> {
        self.due.first().map(|due| due.at)
    }

    /// The next report, if it is due by `now`. A message whose last report
    /// this is will be heard of no more.
    pub fn take_due(&mut self, now: DateTime<Utc>) -> Option<DueReport> {
        if self.due.first()?.at > now {
            return None;
        }
        let due = self.due.remove(0);
        if let Report::Message { message, .. } = due.report {
            let more = self
                .due
                .iter()
                .any(|d| matches!(d.report, Report::Message { message: m, .. } if m == message));
            if !more {
                self.closed.insert(message);
            }
        }
        Some(due)
    }

    /// Whether a live agent holds the conversation now.
    pub fn with_live_agent(&self) -> bool {
        matches!(self.flow.waiting, Some(Wait::LiveAgent { .. }))
    }

    /// Whether every message to the person has settled: reached the
    /// person (`delivered`, `read`), failed, or will be heard of no more.
    /// Until then, a session whose flow has ended waits, so that its
    /// outcome says whether its messages got through.
    pub fn settled(&self) -> bool {
        (0..self.messages).all(|n| {
            self.closed.contains(&n)
                || self
                    .statuses
                    .get(&n)
                    .is_some_and(|s| *s != MessageStatus::Sent)
        })
    }

    /// Whether a provider may still report something of a message to the
    /// person on `channel`: a message not closed whose status is short of
    /// the last there is (`read` on WhatsApp, `delivered` by SMS, or a
    /// failure).
    pub fn awaiting_reports(&self, channel: Channel) -> bool {
        (0..self.messages).any(|n| {
            !self.closed.contains(&n)
                && !self.statuses.get(&n).is_some_and(|s| is_last(channel, *s))
        })
    }
}

/// Whether nothing follows `status` on `channel`.
fn is_last(channel: Channel, status: MessageStatus) -> bool {
    match status {
        MessageStatus::Rejected | MessageStatus::Failed | MessageStatus::Read => true,
        MessageStatus::Delivered => channel != Channel::Whatsapp,
        MessageStatus::Sent => false,
    }
}

/// Whether `next` moves a message on from `current`: statuses take effect
/// in the order they happen (`sent`, `delivered`, `read`), whatever order
/// they arrive in, and a failure is final.
fn advances(current: Option<MessageStatus>, next: MessageStatus) -> bool {
    let rank = |s: MessageStatus| match s {
        MessageStatus::Sent => 0,
        MessageStatus::Delivered => 1,
        MessageStatus::Read => 2,
        MessageStatus::Rejected | MessageStatus::Failed => 3,
    };
    match current {
        None => true,
        Some(MessageStatus::Rejected | MessageStatus::Failed) => false,
        Some(current) => rank(next) > rank(current),
    }
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Record this event.
    Record(SessionEvent),
    /// Report to the session's `status_url` (if it has one): the callback,
    /// and the key that makes a second report of the same status a no-op.
    Report { key: String, callback: Callback },
    /// Hang the call up.
    HangUp,
    /// The session is over.
    End {
        outcome: Outcome,
        reason: Option<EndReason>,
    },
}

/// What a stranger's message that opens a session leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// The flow runs, with the message as its first `LAST_INPUT`.
    Run,
    /// The flow does not run; `reply`, if any, goes back to the person.
    Decline { reply: Option<String> },
}

impl Session {
    /// How a call attempt went, and what follows.
    pub fn call_progress(&self, progress: CallProgress, now: DateTime<Utc>) -> Vec<Effect> {
        match progress {
            CallProgress::Ringing => vec![Effect::Record(SessionEvent::Ringing)],
            CallProgress::NotAnswered { failure } => {
                let outcome = failure.outcome();
                vec![
                    Effect::Record(SessionEvent::CallStatus { status: failure }),
                    self.voice_report(outcome, now),
                    Effect::End {
                        outcome,
                        reason: None,
                    },
                ]
            }
            CallProgress::Answered {
                by: AnsweredBy::Machine,
            } if self.hangup_on_machine => vec![
                Effect::Record(SessionEvent::Answered {
                    by: AnsweredBy::Machine,
                }),
                Effect::HangUp,
                Effect::Record(SessionEvent::Hangup {
                    reason: Some("answering machine".into()),
                }),
                self.voice_report(Outcome::Machine, now),
                Effect::End {
                    outcome: Outcome::Machine,
                    reason: None,
                },
            ],
            CallProgress::Answered { by } => vec![Effect::Record(SessionEvent::Answered { by })],
            // The person hung up: the conversation is over.
            CallProgress::Completed => vec![Effect::End {
                outcome: Outcome::Completed,
                reason: None,
            }],
        }
    }

    /// The uuid of the session's `message`-th message to the person: the
    /// same on every run of a step, so that a re-run reports the same id.
    pub fn message_uuid(&self, message: u32) -> Uuid {
        Uuid::new_v5(&self.id.as_uuid(), format!("message-{message}").as_bytes())
    }

    /// The event of a message going to the person.
    pub fn message_sent(&self, message: u32, content: ShownContent) -> SessionEvent {
        SessionEvent::MessageSent {
            message_uuid: self.message_uuid(message),
            content,
        }
    }

    /// A status of the `message`-th message to the person: its event, its
    /// callback, and the end of the session when the message could not be
    /// delivered (the person cannot be reached) and the session is still
    /// open. A status that does not move the message on (a duplicate, one
    /// that arrives after a later one, anything after a failure) changes
    /// nothing and makes nothing.
    pub fn message_status(
        &self,
        state: &mut SessionState,
        message: u32,
        status: MessageStatus,
        at: DateTime<Utc>,
    ) -> Vec<Effect> {
        if !advances(state.statuses.get(&message).copied(), status) {
            return Vec::new();
        }
        state.statuses.insert(message, status);
        let message_uuid = self.message_uuid(message);
        let mut effects = vec![
            Effect::Record(SessionEvent::MessageStatus {
                message_uuid,
                status,
            }),
            Effect::Report {
                key: format!("message:{message}:{}", status.as_str()),
                callback: Callback::Message(MessageCallback {
                    agent_id: self.agent_id.clone(),
                    channel: self.channel,
                    message_uuid,
                    session_id: self.id,
                    status,
                    timestamp: rfc3339(at),
                    to: self.to.clone(),
                }),
            },
        ];
        if let Some(outcome) = undelivered(status).filter(|_| state.reports_until.is_none()) {
            effects.push(Effect::End {
                outcome,
                reason: None,
            });
        }
        effects
    }

    /// The session's end when its flow ends: `completed`, or `failed`
    /// when the flow could not go on.
    pub fn flow_ended(&self, reason: EndReason) -> Effect {
        let outcome = if reason.is_failure() {
            Outcome::Failed
        } else {
            Outcome::Completed
        };
        Effect::End {
            outcome,
            reason: Some(reason),
        }
    }

    /// The end of a session that cannot run, for good (`error` says why):
    /// it fails, and a call's owner hears that it did.
    pub fn broken(&self, error: String, now: DateTime<Utc>) -> Vec<Effect> {
        let mut effects = vec![Effect::Record(SessionEvent::Error { error })];
        if self.channel == Channel::Voice {
            effects.push(self.voice_report(Outcome::Failed, now));
        }
        effects.push(Effect::End {
            outcome: Outcome::Failed,
            reason: None,
        });
        effects
    }

    /// What a stranger's message leads to, by the flow's `inbound` policy:
    /// without one, the flow declines, silently.
    pub fn inbound(policy: Option<&InboundPolicy>) -> Inbound {
        match policy {
            Some(p) if p.accept => Inbound::Run,
            policy => Inbound::Decline {
                reply: policy.and_then(|p| p.reply.clone()),
            },
        }
    }

    /// The parameters a flow starts with: the trigger's, then the system's
    /// (`LAST_INPUT` empty until the person says something).
    pub fn start_parameters<'a>(
        &self,
        trigger: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> BTreeMap<String, String> {
        let mut parameters: BTreeMap<String, String> = trigger
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect();
        let direction = if self.inbound { "inbound" } else { "outbound" };
        let system = [
            ("SESSION_ID", self.id.to_string()),
            ("AGENT_ID", self.agent_id.to_string()),
            ("AGENT_NUMBER", self.from.clone()),
            ("RECIPIENT", self.to.clone()),
            ("CHANNEL", self.channel.as_str().to_owned()),
            ("DIRECTION", direction.to_owned()),
            ("LAST_INPUT", String::new()),
        ];
        for (name, value) in system {
            parameters.insert(name.to_owned(), value);
        }
        parameters
    }

    fn voice_report(&self, status: Outcome, now: DateTime<Utc>) -> Effect {
        Effect::Report {
            key: format!("call:{status}"),
            callback: Callback::Voice(VoiceCallback {
                agent_id: self.agent_id.clone(),
                conversation_uuid: self.conversation_uuid.as_str().to_owned(),
                status,
                timestamp: rfc3339(now),
                to: self.to.clone(),
            }),
        }
    }
}

/// The outcome of a session whose message ends so, if it ends it.
fn undelivered(status: MessageStatus) -> Option<Outcome> {
    match status {
        MessageStatus::Rejected => Some(Outcome::Rejected),
        MessageStatus::Failed => Some(Outcome::Failed),
        _ => None,
    }
}

/// The event of an input reaching the session.
pub fn input_received(input: &SessionInput) -> SessionEvent {
    SessionEvent::InputReceived {
        input: input.kind().as_str().to_owned(),
        text: input.text().unwrap_or_default().to_owned(),
    }
}

/// The keys events are recorded under: each names its place in the phase
/// or step that made it, so that a step run again (after a crash) records
/// nothing twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventKeys {
    prefix: String,
    n: u32,
}

impl EventKeys {
    /// The keys of a session's first wake, before its flow's first step.
    pub fn first_wake() -> Self {
        EventKeys {
            prefix: "run".into(),
            n: 0,
        }
    }

    /// The keys of the events that end a session that cannot run.
    pub fn failure() -> Self {
        EventKeys {
            prefix: "fail".into(),
            n: 0,
        }
    }

    /// Starts the keys of the flow's step `seq`.
    pub fn step(&mut self, seq: u64) {
        self.prefix = format!("s{seq}");
        self.n = 0;
    }

    /// The key of the next event.
    pub fn next_key(&mut self) -> String {
        self.n += 1;
        format!("{}:{}", self.prefix, self.n)
    }

    /// The key of the event of the input with this id.
    pub fn input(id: i64) -> String {
        format!("in:{id}")
    }

    /// The keys of what the simulator's `n`-th report makes.
    pub fn due(n: u32) -> Self {
        EventKeys {
            prefix: format!("due{n}"),
            n: 0,
        }
    }

    /// The keys of what the person's keyword (the input with this id)
    /// makes: an opt-out, its confirmation, a help text.
    pub fn keyword(id: i64) -> Self {
        EventKeys {
            prefix: format!("kw{id}"),
            n: 0,
        }
    }

    /// The keys of what the report (input) with this id makes.
    pub fn report(id: i64) -> Self {
        EventKeys {
            prefix: format!("rep{id}"),
            n: 0,
        }
    }
}

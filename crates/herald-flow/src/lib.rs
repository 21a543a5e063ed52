//! The flow runtime as a pure state machine.
//!
//! `step(definition, state, event, now)` returns the new state and the
//! actions the driver must carry out. Nothing here touches the network, the
//! store or the clock: the driver (in `herald-server`) feeds in events and
//! time, performs the actions and persists the state after every step. That
//! keeps the conversation logic deterministic and testable without sockets.
//!
//! A conversation that waits (for the person's reply, a webhook's answer or
//! a live agent) returns with [`FlowState::waiting`] set and, where a
//! deadline applies, [`FlowState::next_deadline`]; the driver stores the
//! state and holds nothing in memory until an event or the deadline comes.
//!
//! The pieces: `machine` (private) walks the nodes and handles each event;
//! [`entities`] reads values out of what the person said; [`classifier`]
//! scores their words against intents; [`conditions`] evaluates the rules
//! of Conditions nodes; [`webhook`] builds a Webhook node's request and
//! reads its answer. Times are Unix milliseconds, taken only from the `now`
//! each step is given.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use herald_core::flow::FlowDefinition;
use herald_core::Channel;
use serde::{Deserialize, Serialize};

pub mod classifier;
pub mod conditions;
pub mod entities;
pub mod keywords;
pub mod lifecycle;
mod machine;
pub mod webhook;

/// Where a conversation is. Small and serialisable: the driver stores it
/// after every step, so a waiting session holds nothing in memory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FlowState {
    /// The node the conversation is at, or `None` before it starts.
    pub node: Option<String>,
    /// The channel, fixed at the start: prompts are spoken on voice and
    /// sent as messages elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<Channel>,
    /// Where each running sub-flow returns to, innermost last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stack: Vec<String>,
    /// Every parameter that is set: the trigger's, the system's and those
    /// the flow set.
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
    /// What the conversation is waiting for, if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<Wait>,
    /// Answers not understood so far at the current Collect Input node.
    #[serde(default)]
    pub retries: u32,
    /// When the session's lifetime runs out (Unix milliseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// Steps taken so far; the driver keys what it records by it, so that
    /// a step run twice (after a crash) is recorded once.
    #[serde(default)]
    pub seq: u64,
    /// Whether the conversation is over; an ended state ignores every
    /// event.
    #[serde(default)]
    pub ended: bool,
}

/// What a waiting conversation waits for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "for", rename_all = "snake_case")]
pub enum Wait {
    /// The person's answer to a Collect Input or Classification node.
    Input {
        /// When to give up and leave by `no_input` (Unix milliseconds).
        until: u64,
    },
    /// The answer to a webhook call the driver is making.
    Webhook,
    /// A live agent holds the conversation.
    LiveAgent {
        /// When to end the hand-over (Unix milliseconds).
        until: u64,
    },
}

impl FlowState {
    /// The earliest time the driver must step the conversation with
    /// [`Event::Timer`] even if nothing else happens.
    pub fn next_deadline(&self) -> Option<SystemTime> {
        if self.ended {
            return None;
        }
        let wait = match self.waiting {
            Some(Wait::Input { until }) | Some(Wait::LiveAgent { until }) => Some(until),
            _ => None,
        };
        [wait, self.expires_at]
            .into_iter()
            .flatten()
            .min()
            .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
    }
}

/// What happened to the conversation.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The person is reachable: the call was answered, or the messaging
    /// session opened. `parameters` holds the trigger's session parameters
    /// and the system parameters (`SESSION_ID`, `AGENT_ID`, `AGENT_NUMBER`,
    /// `RECIPIENT`, `CHANNEL`, `DIRECTION`, and for an inbound session
    /// `LAST_INPUT`, the person's first message); the flow's declared
    /// defaults fill what is missing.
    Started {
        channel: Channel,
        parameters: BTreeMap<String, String>,
    },
    /// The person said, typed or keyed something.
    Input(Input),
    /// A deadline passed ([`FlowState::next_deadline`]).
    Timer,
    /// The provider's own wait for the person's answer ran out (a voice
    /// provider times the input it collects): the conversation leaves the
    /// waiting node as at its deadline.
    NoInput,
    /// The answer to [`Action::CallWebhook`].
    WebhookAnswered { status: u16, body: String },
    /// [`Action::CallWebhook`] got no answer (refused, timed out, failed).
    WebhookFailed { error: String },
    /// The live agent said something to the person.
    LiveAgentMessage { text: String },
    /// The live agent gave the conversation back to the flow.
    LiveAgentHandBack,
    /// The live agent ended the conversation.
    LiveAgentEnd,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    pub mode: InputMode,
    pub text: String,
}

/// How the person answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputMode {
    /// A message (SMS, WhatsApp).
    Text,
    /// Keypad digits on a call.
    Dtmf,
    /// A spoken phrase on a call, as recognised text.
    Speech,
}

/// What a conversation waiting for the person's answer accepts, for a
/// provider that collects the answer itself (CHANNELS §1.2) to render.
pub use herald_core::flow::Awaited;

/// What the conversation in `state` waits for, if it waits for the
/// person's answer: keyed digits and speech, at most as many digits as
/// the node's entity can read (one for a yes or no, the longest digit
/// value of a flow's own entity, else 20), within what is left of the
/// node's timeout.
pub fn awaited(flow: &FlowDefinition, state: &FlowState, now: SystemTime) -> Option<Awaited> {
    let Some(Wait::Input { until }) = state.waiting else {
        return None;
    };
    let node = state.node.as_deref()?;
    let kind = flow
        .nodes
        .iter()
        .chain(flow.subflows.iter().flat_map(|s| s.nodes.iter()))
        .find(|n| n.id == node)
        .map(|n| &n.kind);
    let max_digits = match kind {
        Some(herald_core::flow::NodeKind::CollectInput { entity, .. }) => match entity.as_str() {
            "yes_no" => 1,
            name => flow
                .entities
                .iter()
                .find(|e| e.name == name)
                .and_then(|e| {
                    e.values
                        .iter()
                        .flat_map(|v| std::iter::once(&v.value).chain(v.synonyms.iter()))
                        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
                        .map(|t| t.len() as u32)
                        .max()
                })
                .unwrap_or(20),
        },
        _ => 20,
    };
    let now_ms = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    Some(Awaited {
        dtmf: true,
        speech: true,
        max_digits: max_digits.clamp(1, 20),
        timeout: Duration::from_millis(until.saturating_sub(now_ms)),
    })
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// A node was entered (recorded in the session's events).
    Entered {
        node: String,
    },
    /// Voice: say this on the call.
    Speak {
        text: String,
    },
    /// Messaging: send this to the person.
    SendMessage {
        text: String,
    },
    /// A parameter changed (recorded in the session's events).
    ParameterSet {
        name: String,
        value: String,
    },
    /// Make this HTTP call and step again with its answer.
    CallWebhook(WebhookRequest),
    SendSms {
        to: String,
        text: String,
    },
    SendEmail {
        to: String,
        subject: String,
        body: String,
    },
    /// Voice: hand the call over to a number or SIP URI.
    Transfer {
        to: String,
    },
    /// Hand the conversation to the live agent at `url`: send it the
    /// transcript so far.
    LiveAgentStart {
        url: String,
    },
    /// Pass the person's message on to the live agent at `url`.
    LiveAgentForward {
        url: String,
        text: String,
    },
    /// The live agent handed the conversation back.
    LiveAgentStop,
    /// Add the person to the account's opt-outs of the session's channel.
    OptOut,
    /// The conversation is over; hang up or close the session.
    End {
        reason: EndReason,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookRequest {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
    pub timeout: Duration,
}

/// Why a conversation ended: the session vocabulary's own.
pub use herald_core::session::EndReason;

/// The most nodes one step may pass through. Validation rejects flows that
/// could loop without waiting; this bound makes sure a step always returns.
pub const MAX_NODES_PER_STEP: usize = 1000;

/// The most sub-flows that may run inside one another. Validation refuses
/// flows that could go deeper; a `flow` node beyond this depth all the same
/// (a flow stored before that check) ends the conversation with
/// [`EndReason::SubflowTooDeep`], as a failure.
pub use herald_core::flow::MAX_SUBFLOW_DEPTH;

/// The parameter that holds the person's last input.
pub const LAST_INPUT: &str = "LAST_INPUT";

/// Advances the conversation by one event.
///
/// An event that does not apply (any event once the conversation ended, a
/// second `Started`, an input before the start, a webhook answer nobody
/// waits for, a live agent's event when no live agent holds the
/// conversation, a timer with nothing due) is ignored: the state comes back
/// unchanged, `seq` included, with no actions. Every other event adds one
/// to `seq`. The comment of the (private) `machine` module tells what
/// each node and event does.
pub fn step(
    flow: &FlowDefinition,
    state: FlowState,
    event: Event,
    now: SystemTime,
) -> (FlowState, Vec<Action>) {
    machine::step(flow, state, event, now)
}

/// Fills a template in with the conversation's parameters; an unset
/// parameter reads as `""`.
pub(crate) fn render(template: &str, parameters: &BTreeMap<String, String>) -> String {
    herald_core::template::render(template, |name| parameters.get(name).map(String::as_str))
        .into_owned()
}

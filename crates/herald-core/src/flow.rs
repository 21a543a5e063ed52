//! The flow definition format: what an agent says and does, as data.
//!
//! A flow is a JSON document:
//!
//! ```json
//! {
//!   "format": 1,
//!   "start": "greet",
//!   "nodes": [
//!     {"id": "greet", "type": "speak", "text": "Hello from herald.", "next": "bye"},
//!     {"id": "bye", "type": "end"}
//!   ]
//! }
//! ```
//!
//! `format` versions the document so that later node types extend it rather
//! than replace it: a reader rejects a format it does not know instead of
//! misreading it. Nodes are a list (their order is how editors show them) with
//! unique ids; `start` names the first. Each node type lists its own fields;
//! a node that leads somewhere names its successor in `next`.
//!
//! The runtime that walks a flow lives in `herald-flow`; this module only
//! defines and checks the format, so that an agent can be validated where it
//! is created, edited and published.

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::session::{SessionParameters, MAX_PARAMETERS, MAX_PARAMETER_BYTES, MAX_PARAMETER_NAME};
use crate::{template, Channel, Destination, PhoneNumber};

/// The format version this build reads and writes.
pub const FORMAT: u32 = 1;

/// Bounds that keep one agent's flow from growing without limit.
pub const MAX_NODES: usize = 500;
pub const MAX_TEXT: usize = 4096;
pub const MAX_NODE_ID: usize = 64;
/// The most sub-flows that may run inside one another: the main flow's
/// `flow` node is the first call, the sub-flow's own `flow` node the second.
pub const MAX_SUBFLOW_DEPTH: usize = 32;

/// What a conversation waiting for the person's answer accepts (a Collect
/// Input or Classification node), for a provider that collects the answer
/// itself to render: `herald_flow::awaited` says it of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Awaited {
    /// Whether keyed digits are an answer.
    pub dtmf: bool,
    /// Whether speech is an answer.
    pub speech: bool,
    /// The most digits an answer has; `#` ends a shorter one.
    pub max_digits: u32,
    /// How long the person has to start answering.
    pub timeout: std::time::Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FlowDefinition {
    /// The format version; this build knows format 1.
    pub format: u32,
    /// The id of the node the conversation starts at (the Start node).
    pub start: String,
    /// Parameters the flow expects from the trigger's `session_parameters`,
    /// each with the value it takes when the trigger leaves it out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parameters: Vec<ParameterDecl>,
    /// Custom list entities, usable by Collect Input nodes by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entities: Vec<CustomEntity>,
    /// Intents that, recognised in the reply to any Collect Input (or
    /// Classification) node, jump straight to their node (Context Switch).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub context_switches: Vec<ContextSwitch>,
    /// Reusable sub-flows, called by `flow` nodes and left by `return`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subflows: Vec<SubFlow>,
    /// Whether a message from a person with no open session starts one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound: Option<InboundPolicy>,
    /// How the agent hears STOP, START and HELP (CONTRACT §13.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opt_out: Option<OptOutPolicy>,
    /// The longest a session may last before it is ended, in seconds
    /// (default: one hour on voice, 24 hours on messaging).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_duration_secs: Option<u64>,
    pub nodes: Vec<Node>,
}

/// A parameter the flow expects from its trigger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ParameterDecl {
    pub name: String,
    /// The value when the trigger does not set it; unset when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
}

/// A list entity: the values a reply may name, each with its synonyms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomEntity {
    pub name: String,
    pub values: Vec<EntityValue>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EntityValue {
    /// What the parameter is set to when the value or a synonym is found.
    pub value: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub synonyms: Vec<String>,
}

/// An intent recognised anywhere the person is asked something.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContextSwitch {
    pub intent: String,
    /// Phrases that express the intent.
    pub examples: Vec<String>,
    /// The node (of the main flow) to jump to.
    pub next: String,
    /// The confidence needed, 0 to 1 (default 0.7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
}

/// A reusable piece of flow. Its node ids share the flow's id space.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubFlow {
    pub name: String,
    pub start: String,
    pub nodes: Vec<Node>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InboundPolicy {
    /// Whether inbound sessions are accepted (the flow then runs from its
    /// start, with the person's first message in `LAST_INPUT`).
    pub accept: bool,
    /// Sent to the person when inbound sessions are declined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
}

/// How an agent hears the opt-out keywords on SMS and WhatsApp (CONTRACT
/// §13.2): STOP and the other opt-out words, START and the words that undo
/// it, HELP and INFO. Each text is a template, like a node's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OptOutPolicy {
    /// Whether the keywords are heard at all (default true); without them
    /// the flow reads every message, and may opt a person out itself with
    /// an `opt_out` node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keywords: Option<bool>,
    /// Sent once when a person opts out by keyword.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmation: Option<String>,
    /// Sent when a person who had opted out opts back in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resubscribed: Option<String>,
    /// The answer to HELP or INFO.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
}

/// What an agent sends when a person opts out by keyword, unless its flow
/// says otherwise.
pub const DEFAULT_OPT_OUT_CONFIRMATION: &str =
    "You will get no more messages from us. Reply START to get them again.";
/// What it sends when a person opts back in.
pub const DEFAULT_RESUBSCRIBED: &str = "You will get our messages again. Reply STOP to stop them.";
/// What it answers to HELP.
pub const DEFAULT_HELP: &str = "Reply STOP to get no more messages from us.";

impl OptOutPolicy {
    pub fn keywords(&self) -> bool {
        self.keywords.unwrap_or(true)
    }

    pub fn confirmation(&self) -> &str {
        self.confirmation
            .as_deref()
            .unwrap_or(DEFAULT_OPT_OUT_CONFIRMATION)
    }

    pub fn resubscribed(&self) -> &str {
        self.resubscribed.as_deref().unwrap_or(DEFAULT_RESUBSCRIBED)
    }

    pub fn help(&self) -> &str {
        self.help.as_deref().unwrap_or(DEFAULT_HELP)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Node {
    /// Unique within the flow and its sub-flows: 1 to 64 letters, digits,
    /// `_` or `-`.
    pub id: String,
    #[serde(flatten)]
    pub kind: NodeKind,
}

/// What a node does. The `type` field of a node selects one. Texts are
/// templates: `$NAME` or `${NAME}` is replaced by the parameter's value (the
/// empty string when it is unset) and `$$` is a literal `$`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum NodeKind {
    /// Voice: say `text` to the person, then go on to `next`.
    Speak { text: String, next: String },
    /// SMS and WhatsApp: send `text` to the person, then go on to `next`.
    SendMessage { text: String, next: String },
    /// Ask `prompt`, wait for the reply and extract `entity` from it into
    /// `parameter`. An answer the entity cannot read is asked again (with
    /// `retry_prompt`, else `prompt`) up to `retries` times, then leaves by
    /// `invalid`; no answer within `timeout_secs` leaves by `no_input`.
    CollectInput {
        prompt: String,
        /// `any`, `number`, `yes_no`, `date`, `time`, `email`,
        /// `phone_number`, or the name of one of the flow's `entities`.
        entity: String,
        parameter: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_prompt: Option<String>,
        /// Re-asks after an answer that is not understood (default 2).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retries: Option<u32>,
        /// How long to wait for an answer (default 300 s on messaging, 10 s
        /// on voice).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_secs: Option<u64>,
        /// Whether the flow's context switches apply here (default true).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        context_switch: Option<bool>,
        success: String,
        invalid: String,
        no_input: String,
    },
    /// Classify the person's words by intent: the reply to `prompt`, or,
    /// with `input` (a template such as `$LAST_INPUT`), that text at once.
    /// The best intent at or above `threshold` wins; otherwise `fallback`.
    Classify {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prompt: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        input: Option<String>,
        intents: Vec<IntentExit>,
        /// The confidence needed, 0 to 1 (default 0.5).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        threshold: Option<f64>,
        /// Where the recognised intent's name is stored, if anywhere.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parameter: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_secs: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        context_switch: Option<bool>,
        fallback: String,
        /// Where a timeout leads (default: `fallback`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        no_input: Option<String>,
    },
    /// The first branch whose rules hold decides the next node; else
    /// `default`.
    Conditions {
        branches: Vec<Branch>,
        default: String,
    },
    /// Set `parameter` to `value` (a template).
    SetParameter {
        parameter: String,
        value: String,
        next: String,
    },
    /// Add `step` (default 1) to the integer in `counter` (0 when unset).
    Counter {
        counter: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step: Option<i64>,
        next: String,
    },
    /// Set `counter` back to 0.
    ResetCounter { counter: String, next: String },
    /// Call an HTTP endpoint; map fields of its JSON answer into parameters.
    /// A 2xx answer leaves by `success`, anything else by `failure`.
    Webhook {
        /// `GET`, `POST`, `PUT`, `PATCH` or `DELETE` (default `POST`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        method: Option<String>,
        url: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        headers: Vec<Header>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<String>,
        /// Default 10 s, at most 30 s.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_secs: Option<u64>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        response: Vec<ResponseMapping>,
        success: String,
        failure: String,
    },
    /// Send an SMS, from any channel's flow, to `to` (a template; default
    /// the session's person, `$RECIPIENT`).
    SendSms {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<String>,
        text: String,
        next: String,
    },
    /// Send an email through the server's SMTP relay.
    SendEmail {
        to: String,
        subject: String,
        body: String,
        next: String,
    },
    /// End the conversation (End Call on voice).
    End {},
    /// Voice: hand the call to a number or SIP URI (Call Routing); herald's
    /// part of the conversation ends there.
    Transfer { to: String },
    /// Run the sub-flow `flow`, then go on to `next`.
    Flow { flow: String, next: String },
    /// Leave the sub-flow, back to the node after the `flow` node.
    Return {},
    /// Add the person to the account's opt-outs of the session's channel
    /// (CONTRACT §13), then go on to `next`: no trigger reaches them on it
    /// again until they opt back in.
    OptOut { next: String },
    /// Messaging: hand the conversation to a person at `url` until they
    /// hand it back (then `next`) or end it.
    LiveAgent {
        url: String,
        next: String,
        /// How long the conversation may stay with the live agent (default
        /// one hour).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_secs: Option<u64>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IntentExit {
    /// The intent's name (stored in `parameter` when it wins).
    pub name: String,
    /// Phrases that express the intent.
    pub examples: Vec<String>,
    pub next: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Branch {
    /// `all` (every rule holds, the default) or `any`.
    #[serde(default, rename = "match")]
    pub match_: Match,
    pub rules: Vec<Rule>,
    pub next: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Match {
    #[default]
    All,
    Any,
}

/// A comparison of a parameter with a value (a template). Ordering
/// comparisons are numeric when both sides are numbers, else by text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub parameter: String,
    pub op: Op,
    /// Needed by every operator but `is_set` and `is_not_set`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Contains,
    StartsWith,
    IsSet,
    IsNotSet,
}

impl Op {
    /// The operator as the format writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "eq",
            Op::Ne => "ne",
            Op::Lt => "lt",
            Op::Le => "le",
            Op::Gt => "gt",
            Op::Ge => "ge",
            Op::Contains => "contains",
            Op::StartsWith => "starts_with",
            Op::IsSet => "is_set",
            Op::IsNotSet => "is_not_set",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub name: String,
    /// A template.
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResponseMapping {
    pub parameter: String,
    /// A JSON pointer into the answer's body, such as `/order/status`.
    pub path: String,
}

/// The parameters every session has, whatever its trigger sent.
pub const SYSTEM_PARAMETERS: &[&str] = &[
    "SESSION_ID",
    "AGENT_ID",
    "AGENT_NUMBER",
    "RECIPIENT",
    "CHANNEL",
    "DIRECTION",
    "LAST_INPUT",
];

impl NodeKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            NodeKind::Speak { .. } => "speak",
            NodeKind::SendMessage { .. } => "send_message",
            NodeKind::CollectInput { .. } => "collect_input",
            NodeKind::Classify { .. } => "classify",
            NodeKind::Conditions { .. } => "conditions",
            NodeKind::SetParameter { .. } => "set_parameter",
            NodeKind::Counter { .. } => "counter",
            NodeKind::ResetCounter { .. } => "reset_counter",
            NodeKind::Webhook { .. } => "webhook",
            NodeKind::SendSms { .. } => "send_sms",
            NodeKind::SendEmail { .. } => "send_email",
            NodeKind::End {} => "end",
            NodeKind::Transfer { .. } => "transfer",
            NodeKind::Flow { .. } => "flow",
            NodeKind::Return {} => "return",
            NodeKind::LiveAgent { .. } => "live_agent",
            NodeKind::OptOut { .. } => "opt_out",
        }
    }

    /// The node's exits, as (field, target) pairs.
    pub fn exits(&self) -> Vec<(String, &str)> {
        match self {
            NodeKind::Speak { next, .. }
            | NodeKind::SendMessage { next, .. }
            | NodeKind::SetParameter { next, .. }
            | NodeKind::Counter { next, .. }
            | NodeKind::ResetCounter { next, .. }
            | NodeKind::SendSms { next, .. }
            | NodeKind::SendEmail { next, .. }
            | NodeKind::Flow { next, .. }
            | NodeKind::OptOut { next }
            | NodeKind::LiveAgent { next, .. } => vec![("next".into(), next)],
            NodeKind::CollectInput {
                success,
                invalid,
                no_input,
                ..
            } => vec![
                ("success".into(), success),
                ("invalid".into(), invalid),
                ("no_input".into(), no_input),
            ],
            NodeKind::Classify {
                intents,
                fallback,
                no_input,
                ..
            } => {
                let mut exits: Vec<(String, &str)> = intents
                    .iter()
                    .enumerate()
                    .map(|(i, intent)| (format!("intents[{i}].next"), intent.next.as_str()))
                    .collect();
                exits.push(("fallback".into(), fallback));
                if let Some(no_input) = no_input {
                    exits.push(("no_input".into(), no_input));
                }
                exits
            }
            NodeKind::Conditions { branches, default } => {
                let mut exits: Vec<(String, &str)> = branches
                    .iter()
                    .enumerate()
                    .map(|(i, b)| (format!("branches[{i}].next"), b.next.as_str()))
                    .collect();
                exits.push(("default".into(), default));
                exits
            }
            NodeKind::Webhook {
                success, failure, ..
            } => vec![("success".into(), success), ("failure".into(), failure)],
            NodeKind::End {} | NodeKind::Transfer { .. } | NodeKind::Return {} => vec![],
        }
    }

    /// Whether the node waits for the person (or for a live agent) before
    /// it leaves. A cycle of nodes must pass through one of these.
    pub fn waits(&self) -> bool {
        match self {
            NodeKind::CollectInput { .. } | NodeKind::LiveAgent { .. } => true,
            NodeKind::Classify { input, .. } => input.is_none(),
            _ => false,
        }
    }

    /// The parameters the node sets, as (field, parameter) pairs.
    pub fn parameters_set(&self) -> Vec<(String, &str)> {
        match self {
            NodeKind::CollectInput { parameter, .. }
            | NodeKind::SetParameter { parameter, .. }
            | NodeKind::Classify {
                parameter: Some(parameter),
                ..
            } => vec![("parameter".into(), parameter)],
            NodeKind::Counter { counter, .. } | NodeKind::ResetCounter { counter, .. } => {
                vec![("counter".into(), counter)]
            }
            NodeKind::Webhook { response, .. } => response
                .iter()
                .enumerate()
                .map(|(i, m)| (format!("response[{i}].parameter"), m.parameter.as_str()))
                .collect(),
            _ => vec![],
        }
    }

    /// The node's template fields, as (field, template) pairs: the texts
    /// whose `$NAME` references are filled in when the node runs.
    pub fn templates(&self) -> Vec<(String, &str)> {
        let mut out: Vec<(String, &str)> = Vec::new();
        match self {
            NodeKind::Speak { text, .. } | NodeKind::SendMessage { text, .. } => {
                out.push(("text".into(), text))
            }
            NodeKind::CollectInput {
                prompt,
                retry_prompt,
                ..
            } => {
                out.push(("prompt".into(), prompt));
                if let Some(retry) = retry_prompt {
                    out.push(("retry_prompt".into(), retry));
                }
            }
            NodeKind::Classify { prompt, input, .. } => {
                if let Some(prompt) = prompt {
                    out.push(("prompt".into(), prompt));
                }
                if let Some(input) = input {
                    out.push(("input".into(), input));
                }
            }
            NodeKind::Conditions { branches, .. } => {
                for (i, branch) in branches.iter().enumerate() {
                    for (j, rule) in branch.rules.iter().enumerate() {
                        if let Some(value) = &rule.value {
                            out.push((format!("branches[{i}].rules[{j}].value"), value));
                        }
                    }
                }
            }
            NodeKind::SetParameter { value, .. } => out.push(("value".into(), value)),
            NodeKind::Webhook {
                url, headers, body, ..
            } => {
                out.push(("url".into(), url));
                for (i, header) in headers.iter().enumerate() {
                    out.push((format!("headers[{i}].value"), &header.value));
                }
                if let Some(body) = body {
                    out.push(("body".into(), body));
                }
            }
            NodeKind::SendSms { to, text, .. } => {
                if let Some(to) = to {
                    out.push(("to".into(), to));
                }
                out.push(("text".into(), text));
            }
            NodeKind::SendEmail {
                to, subject, body, ..
            } => {
                out.push(("to".into(), to));
                out.push(("subject".into(), subject));
                out.push(("body".into(), body));
            }
            NodeKind::Transfer { to } => out.push(("to".into(), to)),
            NodeKind::LiveAgent { url, .. } => out.push(("url".into(), url)),
            NodeKind::Counter { .. }
            | NodeKind::ResetCounter { .. }
            | NodeKind::End {}
            | NodeKind::Flow { .. }
            | NodeKind::OptOut { .. }
            | NodeKind::Return {} => {}
        }
        out
    }

    fn allowed_on(&self, channel: Channel) -> bool {
        match self {
            NodeKind::Speak { .. } | NodeKind::Transfer { .. } => channel == Channel::Voice,
            NodeKind::SendMessage { .. } | NodeKind::LiveAgent { .. } => channel.is_messaging(),
            _ => true,
        }
    }
}

/// Why a flow was refused; the message names the node and field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FlowError(pub String);

/// Returns early with a [`FlowError`] whose message is built like `format!`.
macro_rules! refuse {
    ($($arg:tt)*) => {
        return Err(FlowError(format!($($arg)*)))
    };
}

/// The entities a Collect Input node reads without the flow defining them.
pub const BUILTIN_ENTITIES: &[&str] = &[
    "any",
    "number",
    "yes_no",
    "date",
    "time",
    "email",
    "phone_number",
];

/// The methods a Webhook node may call with.
pub const WEBHOOK_METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE"];

/// The longest a node may wait for the person or a live agent: 7 days.
pub const MAX_WAIT_SECS: u64 = 7 * 24 * 60 * 60;
/// The longest a webhook call may take.
pub const MAX_WEBHOOK_TIMEOUT_SECS: u64 = 30;
/// The longest `max_duration_secs`: 30 days.
pub const MAX_DURATION_SECS: u64 = 30 * 24 * 60 * 60;
/// The longest intent name (it may be stored in a parameter).
pub const MAX_INTENT_NAME: usize = 64;

/// How many counters the loop check credits in one flow or sub-flow; it tries
/// every way of dodging them, so their number is kept small. A counter past
/// this bound does not make a loop acceptable.
const MAX_LOOP_COUNTERS: usize = 8;

/// Headers a Webhook node may not set: herald's HTTP client owns them.
const RESERVED_HEADERS: &[&str] = &["host", "content-length", "transfer-encoding", "connection"];

/// Which part of a flow a node belongs to. A node leads only to nodes of its
/// own part; sub-flows are entered by `flow` nodes and left by `return`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Graph<'a> {
    Main,
    Sub(&'a str),
}

impl fmt::Display for Graph<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Graph::Main => f.write_str("the main flow"),
            Graph::Sub(name) => write!(f, "sub-flow '{name}'"),
        }
    }
}

impl FlowDefinition {
    /// Reads and checks a flow for an agent of `channel`.
    pub fn from_json(value: &serde_json::Value, channel: Channel) -> Result<Self, FlowError> {
        // Read the format first, so that a document of a newer format gets an
        // answer about its format rather than about a field we do not know.
        match value.get("format") {
            Some(serde_json::Value::Number(n)) if n.as_u64() == Some(u64::from(FORMAT)) => {}
            Some(other) => {
                return Err(FlowError(format!(
                    "flow.format {other} is not supported (this server reads format {FORMAT})"
                )))
            }
            None => return Err(FlowError("flow.format is required".into())),
        }
        // Decode node by node first, so that an error names the node.
        if let Some(nodes) = value.get("nodes").and_then(|n| n.as_array()) {
            decode_nodes(nodes, |i| format!("flow.nodes[{i}]"))?;
        }
        if let Some(subflows) = value.get("subflows").and_then(|s| s.as_array()) {
            for (s, sub) in subflows.iter().enumerate() {
                if let Some(nodes) = sub.get("nodes").and_then(|n| n.as_array()) {
                    decode_nodes(nodes, |i| format!("flow.subflows[{s}].nodes[{i}]"))?;
                }
            }
        }
        let flow =
            FlowDefinition::deserialize(value).map_err(|e| FlowError(format!("flow: {e}")))?;
        flow.validate(channel)?;
        if let Some(path) = crate::text::nul_at(value, "flow") {
            return Err(FlowError(format!("{path} {}", crate::text::NO_NUL)));
        }
        Ok(flow)
    }

    /// Checks what the types alone cannot: ids, references between nodes,
    /// sub-flows and parameters, the fit with the channel, bounds, and loops
    /// that would never wait for the person.
    pub fn validate(&self, channel: Channel) -> Result<(), FlowError> {
        self.check_structure()?;
        self.check_settings()?;
        let defined = self.defined_parameters()?;
        for node in self.all_nodes() {
            self.check_node(node, channel, &defined)?;
        }
        self.check_loops()
    }

    /// The node with this id, in the main flow or in any sub-flow.
    pub fn node(&self, id: &str) -> Option<&Node> {
        self.all_nodes().find(|n| n.id == id)
    }

    /// The sub-flow with this name.
    pub fn subflow(&self, name: &str) -> Option<&SubFlow> {
        self.subflows.iter().find(|s| s.name == name)
    }

    /// Every node: the main flow's, then each sub-flow's, in order.
    pub fn all_nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes
            .iter()
            .chain(self.subflows.iter().flat_map(|s| &s.nodes))
    }

    fn graphs(&self) -> impl Iterator<Item = (Graph<'_>, &[Node])> {
        std::iter::once((Graph::Main, self.nodes.as_slice())).chain(
            self.subflows
                .iter()
                .map(|s| (Graph::Sub(s.name.as_str()), s.nodes.as_slice())),
        )
    }

    /// Node ids, sub-flow names, and every reference from one to another.
    fn check_structure(&self) -> Result<(), FlowError> {
        if self.nodes.is_empty() {
            refuse!("flow.nodes must not be empty");
        }
        if self.nodes.len() > MAX_NODES {
            refuse!("flow.nodes must have at most {MAX_NODES} nodes");
        }
        let total = self.all_nodes().count();
        if total > MAX_NODES {
            refuse!("flow.subflows: the flow and its sub-flows must have at most {MAX_NODES} nodes in all");
        }
        let mut names = HashSet::new();
        for (i, sub) in self.subflows.iter().enumerate() {
            if !is_valid_id(&sub.name) {
                refuse!(
                    "flow.subflows[{i}].name must be 1 to {MAX_NODE_ID} letters, digits, '_' or '-'"
                );
            }
            if !names.insert(sub.name.as_str()) {
                refuse!("sub-flow '{}': name is used twice", sub.name);
            }
            if sub.nodes.is_empty() {
                refuse!("sub-flow '{}': nodes must not be empty", sub.name);
            }
        }

        // Ids share one space across the main flow and the sub-flows, so that
        // a session's position is a node id alone.
        let mut home = HashMap::new();
        for (graph, nodes) in self.graphs() {
            for node in nodes {
                if !is_valid_id(&node.id) {
                    refuse!(
                        "node '{}': id must be 1 to {MAX_NODE_ID} letters, digits, '_' or '-'",
                        node.id
                    );
                }
                if home.insert(node.id.as_str(), graph).is_some() {
                    refuse!("node '{}': id is used twice", node.id);
                }
            }
        }

        if let Err(why) = leads_within(&home, Graph::Main, &self.start) {
            refuse!("flow.start {why}");
        }
        for sub in &self.subflows {
            if let Err(why) = leads_within(&home, Graph::Sub(&sub.name), &sub.start) {
                refuse!("sub-flow '{}': start {why}", sub.name);
            }
        }
        for (graph, nodes) in self.graphs() {
            for node in nodes {
                for (field, target) in node.kind.exits() {
                    if let Err(why) = leads_within(&home, graph, target) {
                        refuse!("node '{}': {field} {why}", node.id);
                    }
                }
                match &node.kind {
                    NodeKind::Flow { flow, .. } if self.subflow(flow).is_none() => {
                        refuse!(
                            "node '{}': flow refers to unknown sub-flow '{flow}'",
                            node.id
                        )
                    }
                    NodeKind::Return {} if graph == Graph::Main => {
                        refuse!(
                            "node '{}': type return is only allowed inside a sub-flow",
                            node.id
                        )
                    }
                    _ => {}
                }
            }
        }
        for (i, switch) in self.context_switches.iter().enumerate() {
            if let Err(why) = leads_within(&home, Graph::Main, &switch.next) {
                refuse!("flow.context_switches[{i}].next {why}");
            }
        }
        self.check_recursion()?;
        self.check_depth()
    }

    /// Refuses sub-flows that would run more than [`MAX_SUBFLOW_DEPTH`]
    /// calls inside one another, naming the node whose call goes one too
    /// deep. Runs after [`Self::check_recursion`], so the calls form no
    /// cycle.
    fn check_depth(&self) -> Result<(), FlowError> {
        /// How many calls deep running `sub` can go, itself included, and
        /// the first node of the deepest chain below it.
        fn depth<'a>(
            flow: &'a FlowDefinition,
            sub: &'a SubFlow,
            known: &mut HashMap<&'a str, (usize, Option<&'a Node>)>,
        ) -> usize {
            if let Some((d, _)) = known.get(sub.name.as_str()) {
                return *d;
            }
            let mut deepest = (1, None);
            for node in &sub.nodes {
                if let NodeKind::Flow { flow: callee, .. } = &node.kind {
                    if let Some(callee) = flow.subflow(callee) {
                        let d = 1 + depth(flow, callee, known);
                        if d > deepest.0 {
                            deepest = (d, Some(node));
                        }
                    }
                }
            }
            known.insert(&sub.name, deepest);
            deepest.0
        }
        let mut known = HashMap::new();
        for sub in &self.subflows {
            if depth(self, sub, &mut known) <= MAX_SUBFLOW_DEPTH {
                continue;
            }
            // Down the deepest chain to the call that is one too many.
            let (mut at, mut level) = (sub, 1);
            while level < MAX_SUBFLOW_DEPTH {
                let Some((_, Some(node))) = known.get(at.name.as_str()) else {
                    break;
                };
                let NodeKind::Flow { flow: callee, .. } = &node.kind else {
                    break;
                };
                at = self.subflow(callee).expect("checked above");
                level += 1;
            }
            let (_, node) = known[at.name.as_str()];
            let node = node.expect("a sub-flow deeper than the bound calls another");
            let NodeKind::Flow { flow: callee, .. } = &node.kind else {
                unreachable!("the deepest chain goes through flow nodes");
            };
            refuse!(
                "node '{}': flow '{callee}' would run {} calls deep; sub-flows nest at most \
                 {MAX_SUBFLOW_DEPTH} calls deep",
                node.id,
                MAX_SUBFLOW_DEPTH + 1
            );
        }
        Ok(())
    }

    /// Refuses a sub-flow that calls itself, directly or through others:
    /// nothing would bound the depth of its calls.
    fn check_recursion(&self) -> Result<(), FlowError> {
        fn visit<'a>(
            flow: &'a FlowDefinition,
            sub: &'a SubFlow,
            path: &mut Vec<&'a str>,
            done: &mut HashSet<&'a str>,
        ) -> Result<(), FlowError> {
            path.push(&sub.name);
            for node in &sub.nodes {
                let NodeKind::Flow { flow: callee, .. } = &node.kind else {
                    continue;
                };
                if let Some(at) = path.iter().position(|name| name == callee) {
                    let calls: Vec<&str> = path[at..]
                        .iter()
                        .copied()
                        .chain([callee.as_str()])
                        .collect();
                    refuse!(
                        "node '{}': flow '{callee}' would call itself ({})",
                        node.id,
                        calls.join(" → ")
                    );
                }
                if !done.contains(callee.as_str()) {
                    if let Some(next) = flow.subflow(callee) {
                        visit(flow, next, path, done)?;
                    }
                }
            }
            path.pop();
            done.insert(&sub.name);
            Ok(())
        }
        let mut done = HashSet::new();
        for sub in &self.subflows {
            if !done.contains(sub.name.as_str()) {
                visit(self, sub, &mut Vec::new(), &mut done)?;
            }
        }
        Ok(())
    }

    /// The flow's own settings: its duration, inbound policy, parameter
    /// declarations, custom entities and context switches.
    fn check_settings(&self) -> Result<(), FlowError> {
        if let Some(secs) = self.max_duration_secs {
            if !(1..=MAX_DURATION_SECS).contains(&secs) {
                refuse!("flow.max_duration_secs must be 1 to {MAX_DURATION_SECS} (30 days)");
            }
        }
        if let Some(InboundPolicy {
            reply: Some(reply), ..
        }) = &self.inbound
        {
            if !is_text(reply) {
                refuse!("flow.inbound.reply must be 1 to {MAX_TEXT} bytes");
            }
        }
        if let Some(policy) = &self.opt_out {
            for (field, text) in [
                ("confirmation", &policy.confirmation),
                ("resubscribed", &policy.resubscribed),
                ("help", &policy.help),
            ] {
                if text.as_deref().is_some_and(|t| !is_text(t)) {
                    refuse!("flow.opt_out.{field} must be 1 to {MAX_TEXT} bytes");
                }
            }
        }

        if self.parameters.len() > MAX_PARAMETERS {
            refuse!("flow.parameters must have at most {MAX_PARAMETERS} entries");
        }
        let mut declared = HashSet::new();
        for (i, decl) in self.parameters.iter().enumerate() {
            let name = decl.name.as_str();
            if !SessionParameters::is_valid_name(name) {
                refuse!("flow.parameters[{i}].name must be 1 to {MAX_PARAMETER_NAME} letters, digits or underscores");
            }
            if SYSTEM_PARAMETERS.contains(&name) {
                refuse!("flow.parameters[{i}].name '{name}' is a system parameter");
            }
            if !declared.insert(name) {
                refuse!("flow.parameters[{i}].name '{name}' is declared twice");
            }
            if decl
                .default
                .as_ref()
                .is_some_and(|d| d.len() > MAX_PARAMETER_BYTES)
            {
                refuse!("flow.parameters[{i}].default must be at most {MAX_PARAMETER_BYTES} bytes");
            }
        }

        let mut entities = HashSet::new();
        for (i, entity) in self.entities.iter().enumerate() {
            let name = entity.name.as_str();
            if !is_valid_id(name) {
                refuse!("flow.entities[{i}].name must be 1 to {MAX_NODE_ID} letters, digits, '_' or '-'");
            }
            if BUILTIN_ENTITIES.contains(&name) {
                refuse!("flow.entities[{i}].name '{name}' is a built-in entity");
            }
            if !entities.insert(name) {
                refuse!("flow.entities[{i}].name '{name}' is used twice");
            }
            if entity.values.is_empty() {
                refuse!("flow.entities[{i}].values must not be empty");
            }
            for (j, value) in entity.values.iter().enumerate() {
                if !is_text(&value.value) {
                    refuse!("flow.entities[{i}].values[{j}].value must be 1 to {MAX_TEXT} bytes");
                }
                if let Some(k) = value.synonyms.iter().position(|s| !is_text(s)) {
                    refuse!("flow.entities[{i}].values[{j}].synonyms[{k}] must be 1 to {MAX_TEXT} bytes");
                }
            }
        }

        let mut intents = HashSet::new();
        for (i, switch) in self.context_switches.iter().enumerate() {
            let intent = switch.intent.as_str();
            if intent.is_empty() || intent.len() > MAX_INTENT_NAME {
                refuse!("flow.context_switches[{i}].intent must be 1 to {MAX_INTENT_NAME} bytes");
            }
            if !intents.insert(intent) {
                refuse!("flow.context_switches[{i}].intent '{intent}' is used twice");
            }
            if switch.examples.is_empty() {
                refuse!("flow.context_switches[{i}].examples must not be empty");
            }
            if let Some(j) = switch.examples.iter().position(|e| !is_text(e)) {
                refuse!("flow.context_switches[{i}].examples[{j}] must be 1 to {MAX_TEXT} bytes");
            }
            if switch.threshold.is_some_and(|t| !(0.0..=1.0).contains(&t)) {
                refuse!("flow.context_switches[{i}].threshold must be between 0 and 1");
            }
        }
        Ok(())
    }

    /// The parameters a template may refer to: the system's, the declared
    /// ones, and every one some node sets. Checks the names where they are
    /// declared and set.
    fn defined_parameters(&self) -> Result<HashSet<&str>, FlowError> {
        let mut defined: HashSet<&str> = SYSTEM_PARAMETERS.iter().copied().collect();
        defined.extend(self.parameters.iter().map(|p| p.name.as_str()));
        for node in self.all_nodes() {
            for (field, name) in node.kind.parameters_set() {
                if !SessionParameters::is_valid_name(name) {
                    refuse!(
                        "node '{}': {field} must be 1 to {MAX_PARAMETER_NAME} letters, digits or underscores",
                        node.id
                    );
                }
                if SYSTEM_PARAMETERS.contains(&name) {
                    refuse!(
                        "node '{}': {field} '{name}' is a system parameter and cannot be set",
                        node.id
                    );
                }
                defined.insert(name);
            }
        }
        Ok(defined)
    }

    /// One node's fields: the channel, texts, bounds, and the parameters its
    /// templates and rules refer to.
    fn check_node(
        &self,
        node: &Node,
        channel: Channel,
        defined: &HashSet<&str>,
    ) -> Result<(), FlowError> {
        let id = node.id.as_str();
        if !node.kind.allowed_on(channel) {
            refuse!(
                "node '{id}': type {} is not available on {channel} agents",
                node.kind.type_name()
            );
        }
        let text = |field: &str, value: &str| {
            if is_text(value) {
                Ok(())
            } else {
                Err(FlowError(format!(
                    "node '{id}': {field} must be 1 to {MAX_TEXT} bytes"
                )))
            }
        };
        let at_most = |field: &str, value: &str| {
            if value.len() <= MAX_TEXT {
                Ok(())
            } else {
                Err(FlowError(format!(
                    "node '{id}': {field} must be at most {MAX_TEXT} bytes"
                )))
            }
        };
        // Header values, addresses and subjects end up in protocol headers,
        // where a line break would start a header of its own.
        let one_line = |field: &str, value: &str| {
            if value.chars().any(char::is_control) {
                Err(FlowError(format!(
                    "node '{id}': {field} must not contain line breaks or other control characters"
                )))
            } else {
                Ok(())
            }
        };
        let timeout = |secs: &Option<u64>, max: u64, why: &str| match secs {
            Some(secs) if !(1..=max).contains(secs) => Err(FlowError(format!(
                "node '{id}': timeout_secs must be 1 to {max}{why}"
            ))),
            _ => Ok(()),
        };
        let threshold = |value: &Option<f64>| match value {
            Some(t) if !(0.0..=1.0).contains(t) => Err(FlowError(format!(
                "node '{id}': threshold must be between 0 and 1"
            ))),
            _ => Ok(()),
        };

        match &node.kind {
            NodeKind::Speak { text: t, .. } | NodeKind::SendMessage { text: t, .. } => {
                text("text", t)?
            }
            NodeKind::CollectInput {
                prompt,
                entity,
                retry_prompt,
                timeout_secs,
                ..
            } => {
                text("prompt", prompt)?;
                if let Some(retry) = retry_prompt {
                    text("retry_prompt", retry)?;
                }
                timeout(timeout_secs, MAX_WAIT_SECS, " (7 days)")?;
                let known = BUILTIN_ENTITIES.contains(&entity.as_str())
                    || self.entities.iter().any(|e| e.name == *entity);
                if !known {
                    refuse!(
                        "node '{id}': entity '{entity}' is neither a built-in entity ({}) nor one of flow.entities",
                        BUILTIN_ENTITIES.join(", ")
                    );
                }
            }
            NodeKind::Classify {
                prompt,
                input,
                intents,
                threshold: t,
                timeout_secs,
                ..
            } => {
                match (prompt, input) {
                    (Some(_), Some(_)) => {
                        refuse!("node '{id}': prompt and input cannot both be set")
                    }
                    (None, None) => refuse!("node '{id}': prompt or input is required"),
                    (Some(prompt), None) => text("prompt", prompt)?,
                    (None, Some(input)) => text("input", input)?,
                }
                if intents.is_empty() {
                    refuse!("node '{id}': intents must not be empty");
                }
                let mut names = HashSet::new();
                for (i, intent) in intents.iter().enumerate() {
                    let name = intent.name.as_str();
                    if name.is_empty() || name.len() > MAX_INTENT_NAME {
                        refuse!(
                            "node '{id}': intents[{i}].name must be 1 to {MAX_INTENT_NAME} bytes"
                        );
                    }
                    if !names.insert(name) {
                        refuse!("node '{id}': intents[{i}].name '{name}' is used twice");
                    }
                    if intent.examples.is_empty() {
                        refuse!("node '{id}': intents[{i}].examples must not be empty");
                    }
                    if let Some(j) = intent.examples.iter().position(|e| !is_text(e)) {
                        refuse!(
                            "node '{id}': intents[{i}].examples[{j}] must be 1 to {MAX_TEXT} bytes"
                        );
                    }
                }
                threshold(t)?;
                timeout(timeout_secs, MAX_WAIT_SECS, " (7 days)")?;
            }
            NodeKind::Conditions { branches, .. } => {
                if branches.is_empty() {
                    refuse!("node '{id}': branches must not be empty");
                }
                for (i, branch) in branches.iter().enumerate() {
                    if branch.rules.is_empty() {
                        refuse!("node '{id}': branches[{i}].rules must not be empty");
                    }
                    for (j, rule) in branch.rules.iter().enumerate() {
                        let field = format!("branches[{i}].rules[{j}]");
                        if !SessionParameters::is_valid_name(&rule.parameter) {
                            refuse!(
                                "node '{id}': {field}.parameter must be 1 to {MAX_PARAMETER_NAME} letters, digits or underscores"
                            );
                        }
                        if !defined.contains(rule.parameter.as_str()) {
                            refuse!(
                                "node '{id}': {field}.parameter refers to undefined parameter '{}' (declare it in flow.parameters)",
                                rule.parameter
                            );
                        }
                        match &rule.value {
                            None if !matches!(rule.op, Op::IsSet | Op::IsNotSet) => refuse!(
                                "node '{id}': {field}.value is required for op {}",
                                rule.op.as_str()
                            ),
                            Some(value) => at_most(&format!("{field}.value"), value)?,
                            None => {}
                        }
                    }
                }
            }
            NodeKind::SetParameter { value, .. } => at_most("value", value)?,
            NodeKind::Counter { step, .. } => {
                if *step == Some(0) {
                    refuse!("node '{id}': step must not be 0");
                }
            }
            NodeKind::Webhook {
                method,
                url,
                headers,
                body,
                timeout_secs,
                response,
                ..
            } => {
                if let Some(method) = method {
                    if !WEBHOOK_METHODS.contains(&method.as_str()) {
                        refuse!(
                            "node '{id}': method must be one of {}",
                            WEBHOOK_METHODS.join(", ")
                        );
                    }
                }
                text("url", url)?;
                if !url.contains('$') && !is_http_url(url) {
                    refuse!("node '{id}': url must be an absolute http or https URL");
                }
                for (i, header) in headers.iter().enumerate() {
                    if !is_token(&header.name) {
                        refuse!(
                            "node '{id}': headers[{i}].name '{}' is not a valid HTTP header name",
                            header.name
                        );
                    }
                    if RESERVED_HEADERS.contains(&header.name.to_ascii_lowercase().as_str()) {
                        refuse!(
                            "node '{id}': headers[{i}].name '{}' is set by herald",
                            header.name
                        );
                    }
                    let field = format!("headers[{i}].value");
                    at_most(&field, &header.value)?;
                    one_line(&field, &header.value)?;
                }
                if let Some(body) = body {
                    at_most("body", body)?;
                }
                timeout(timeout_secs, MAX_WEBHOOK_TIMEOUT_SECS, "")?;
                for (i, mapping) in response.iter().enumerate() {
                    if !is_json_pointer(&mapping.path) {
                        refuse!(
                            "node '{id}': response[{i}].path must be a JSON pointer (\"\" or starting with \"/\")"
                        );
                    }
                }
            }
            NodeKind::SendSms { to, text: t, .. } => {
                if let Some(to) = to {
                    text("to", to)?;
                    if !to.contains('$') && PhoneNumber::parse(to).is_err() {
                        refuse!("node '{id}': to must be a phone number with its country code");
                    }
                }
                text("text", t)?;
            }
            NodeKind::SendEmail {
                to, subject, body, ..
            } => {
                text("to", to)?;
                one_line("to", to)?;
                if !to.contains('$') && !is_email(to) {
                    refuse!("node '{id}': to must be an email address");
                }
                text("subject", subject)?;
                one_line("subject", subject)?;
                text("body", body)?;
            }
            NodeKind::Transfer { to } => {
                text("to", to)?;
                if !to.contains('$') && Destination::parse_voice(to).is_err() {
                    refuse!("node '{id}': to must be a phone number or a SIP URI");
                }
            }
            NodeKind::OptOut { .. } => {}
            NodeKind::LiveAgent {
                url, timeout_secs, ..
            } => {
                text("url", url)?;
                if !url.contains('$') && !is_http_url(url) {
                    refuse!("node '{id}': url must be an absolute http or https URL");
                }
                timeout(timeout_secs, MAX_WAIT_SECS, " (7 days)")?;
            }
            NodeKind::End {} | NodeKind::ResetCounter { .. } | NodeKind::Flow { .. } => {}
            NodeKind::Return {} => {}
        }

        for (field, template) in node.kind.templates() {
            if let Some(name) = template::references(template).find(|n| !defined.contains(n)) {
                refuse!(
                    "node '{id}': {field} refers to undefined parameter '{name}' (declare it in flow.parameters)"
                );
            }
        }
        Ok(())
    }

    /// Refuses a loop of nodes none of which waits for the person: one step
    /// of the session would run round it for ever. A loop through a Counter
    /// node and a Conditions node that tests the same counter is let through:
    /// that is how a flow tries something a few times. Whether the test ever
    /// lets it out is not checked; the runtime's bound on the nodes one step
    /// may pass through ends a session that loops anyway.
    fn check_loops(&self) -> Result<(), FlowError> {
        let mut memo = HashMap::new();
        for (_, nodes) in self.graphs() {
            let holds: Vec<bool> = nodes
                .iter()
                .map(|node| match &node.kind {
                    // A call holds when its sub-flow cannot come back without
                    // waiting (or never comes back).
                    NodeKind::Flow { flow, .. } => !self.returns_at_once(flow, &mut memo),
                    kind => kind.waits(),
                })
                .collect();
            if let Some(path) = find_loop(nodes, &holds) {
                refuse!(
                    "node '{}': the flow can loop through {} without waiting for the person",
                    path[0],
                    path.join(" → ")
                );
            }
        }
        Ok(())
    }

    /// Whether sub-flow `name` can reach a `return` node without waiting for
    /// the person. Called after recursion is ruled out, so it terminates.
    fn returns_at_once<'a>(&'a self, name: &'a str, memo: &mut HashMap<&'a str, bool>) -> bool {
        if let Some(&known) = memo.get(name) {
            return known;
        }
        let Some(sub) = self.subflow(name) else {
            return false;
        };
        let mut seen = HashSet::new();
        let mut queue = vec![sub.start.as_str()];
        let mut returns = false;
        while let Some(id) = queue.pop() {
            if !seen.insert(id) {
                continue;
            }
            let Some(node) = sub.nodes.iter().find(|n| n.id == id) else {
                continue;
            };
            let passes = match &node.kind {
                NodeKind::Return {} => {
                    returns = true;
                    break;
                }
                NodeKind::Flow { flow, .. } => self.returns_at_once(flow, memo),
                kind => !kind.waits(),
            };
            if passes {
                queue.extend(node.kind.exits().into_iter().map(|(_, target)| target));
            }
        }
        memo.insert(name, returns);
        returns
    }

    /// The flow an agent gets when it is created without one: it greets and
    /// ends. A WhatsApp session's greeting is the template its trigger sends,
    /// so a WhatsApp agent's default flow only ends.
    pub fn default_for(channel: Channel) -> Self {
        let end = Node {
            id: "end".into(),
            kind: NodeKind::End {},
        };
        let greet = |kind| Node {
            id: "greet".into(),
            kind,
        };
        let nodes = match channel {
            Channel::Voice => vec![
                greet(NodeKind::Speak {
                    text: "Hello, this is an automated call from herald. Goodbye.".into(),
                    next: "end".into(),
                }),
                end,
            ],
            Channel::Sms => vec![
                greet(NodeKind::SendMessage {
                    text: "Hello, this is an automated message from herald.".into(),
                    next: "end".into(),
                }),
                end,
            ],
            Channel::Whatsapp => vec![end],
        };
        FlowDefinition {
            format: FORMAT,
            start: nodes[0].id.clone(),
            parameters: Vec::new(),
            entities: Vec::new(),
            context_switches: Vec::new(),
            subflows: Vec::new(),
            inbound: None,
            opt_out: None,
            max_duration_secs: None,
            nodes,
        }
    }
}

/// Decodes each node on its own, so that an error names the node (by its id
/// when it has one, else by its place).
fn decode_nodes(
    nodes: &[serde_json::Value],
    place: impl Fn(usize) -> String,
) -> Result<(), FlowError> {
    for (i, node) in nodes.iter().enumerate() {
        if let Err(e) = Node::deserialize(node) {
            let at = node
                .get("id")
                .and_then(|v| v.as_str())
                .map(|s| format!("node '{s}'"))
                .unwrap_or_else(|| place(i));
            refuse!("{at}: {e}");
        }
    }
    Ok(())
}

/// Node ids, sub-flow and entity names: 1 to 64 letters, digits, `_`, `-`.
fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_NODE_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A text that must say something: 1 to [`MAX_TEXT`] bytes.
fn is_text(text: &str) -> bool {
    !text.is_empty() && text.len() <= MAX_TEXT
}

/// An HTTP field name: a `token` of RFC 9110.
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A JSON pointer (RFC 6901): empty, or `/`-separated tokens in which `~`
/// only starts the escapes `~0` and `~1`.
fn is_json_pointer(path: &str) -> bool {
    let bytes = path.as_bytes();
    (path.is_empty() || path.starts_with('/'))
        && bytes
            .iter()
            .enumerate()
            .all(|(i, &b)| b != b'~' || matches!(bytes.get(i + 1), Some(b'0' | b'1')))
}

fn is_http_url(text: &str) -> bool {
    url::Url::parse(text)
        .is_ok_and(|url| matches!(url.scheme(), "http" | "https") && url.host().is_some())
}

/// A plausible single address; the relay has the last word.
fn is_email(text: &str) -> bool {
    match text.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && !text.chars().any(|c| c.is_whitespace() || c.is_control())
        }
        None => false,
    }
}

/// Whether `target` is a node of `graph`; the error completes a sentence
/// that starts with the field at fault.
fn leads_within(
    home: &HashMap<&str, Graph<'_>>,
    graph: Graph<'_>,
    target: &str,
) -> Result<(), String> {
    match home.get(target) {
        None => Err(format!("refers to unknown node '{target}'")),
        Some(found) if *found == graph => Ok(()),
        Some(found) => Err(format!(
            "refers to node '{target}' of {found}, outside {graph}"
        )),
    }
}

/// A loop through the nodes of one graph that passes no node that holds
/// (waits for the person) and that no counter bounds, as the ids along it
/// with the first repeated at the end.
///
/// A loop is bounded when, for some counter, it passes both a Counter node
/// of it and a Conditions node that tests it. So an unbounded loop misses,
/// for each counter, either all its steps or all its tests: each way of
/// choosing which is tried, by blocking those nodes and looking for a loop in
/// what is left.
fn find_loop<'a>(nodes: &'a [Node], holds: &[bool]) -> Option<Vec<&'a str>> {
    let steps = |node: &Node, counter: &str| matches!(&node.kind, NodeKind::Counter { counter: c, .. } if c == counter);
    let tests = |node: &Node, counter: &str| match &node.kind {
        NodeKind::Conditions { branches, .. } => branches
            .iter()
            .flat_map(|b| &b.rules)
            .any(|r| r.parameter == counter),
        _ => false,
    };
    let mut counters: Vec<&str> = Vec::new();
    for node in nodes {
        if let NodeKind::Counter { counter, .. } = &node.kind {
            if !counters.contains(&counter.as_str()) && nodes.iter().any(|n| tests(n, counter)) {
                counters.push(counter);
            }
        }
    }
    counters.truncate(MAX_LOOP_COUNTERS);

    let index: HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.as_str(), i))
        .collect();
    for choice in 0..1u32 << counters.len() {
        let blocked: Vec<bool> = nodes
            .iter()
            .zip(holds)
            .map(|(node, &holds)| {
                holds
                    || counters.iter().enumerate().any(|(c, counter)| {
                        if choice & (1 << c) == 0 {
                            steps(node, counter)
                        } else {
                            tests(node, counter)
                        }
                    })
            })
            .collect();
        if let Some(path) = find_cycle(nodes, &index, &blocked) {
            return Some(path);
        }
    }
    None
}

/// A cycle among the nodes not `blocked`, found depth-first in document
/// order.
fn find_cycle<'a>(
    nodes: &'a [Node],
    index: &HashMap<&str, usize>,
    blocked: &[bool],
) -> Option<Vec<&'a str>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    fn visit<'a>(
        at: usize,
        nodes: &'a [Node],
        index: &HashMap<&str, usize>,
        blocked: &[bool],
        marks: &mut [Mark],
        path: &mut Vec<usize>,
    ) -> Option<Vec<&'a str>> {
        marks[at] = Mark::OnPath;
        path.push(at);
        for (_, target) in nodes[at].kind.exits() {
            let Some(&next) = index.get(target) else {
                continue;
            };
            if blocked[next] {
                continue;
            }
            match marks[next] {
                Mark::New => {
                    if let Some(cycle) = visit(next, nodes, index, blocked, marks, path) {
                        return Some(cycle);
                    }
                }
                Mark::OnPath => {
                    let from = path.iter().position(|&p| p == next)?;
                    let mut cycle: Vec<&str> =
                        path[from..].iter().map(|&i| nodes[i].id.as_str()).collect();
                    cycle.push(&nodes[next].id);
                    return Some(cycle);
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks[at] = Mark::Done;
        None
    }
    let mut marks = vec![Mark::New; nodes.len()];
    for start in 0..nodes.len() {
        if !blocked[start] && marks[start] == Mark::New {
            if let Some(cycle) = visit(start, nodes, index, blocked, &mut marks, &mut Vec::new()) {
                return Some(cycle);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn default_flows_are_valid_and_round_trip() {
        for channel in Channel::ALL {
            let flow = FlowDefinition::default_for(channel);
            let value = serde_json::to_value(&flow).unwrap();
            assert_eq!(FlowDefinition::from_json(&value, channel), Ok(flow));
        }
    }

    fn err(value: serde_json::Value, channel: Channel) -> String {
        FlowDefinition::from_json(&value, channel).unwrap_err().0
    }

    #[test]
    fn errors_name_the_node_and_field() {
        assert_eq!(
            err(json!({"start": "a", "nodes": []}), Channel::Sms),
            "flow.format is required"
        );
        assert!(err(
            json!({"format": 9, "start": "a", "nodes": []}),
            Channel::Sms
        )
        .starts_with("flow.format 9 is not supported"));
        assert_eq!(
            err(
                json!({"format": 1, "start": "a", "nodes": []}),
                Channel::Sms
            ),
            "flow.nodes must not be empty"
        );
        assert_eq!(
            err(
                json!({"format": 1, "start": "x", "nodes": [{"id": "a", "type": "end"}]}),
                Channel::Sms
            ),
            "flow.start refers to unknown node 'x'"
        );
        let e = err(
            json!({"format": 1, "start": "a", "nodes": [{"id": "a", "type": "dance"}]}),
            Channel::Sms,
        );
        assert!(e.starts_with("node 'a': unknown variant `dance`"), "{e}");
        assert_eq!(
            err(
                json!({"format": 1, "start": "a", "nodes": [
                    {"id": "a", "type": "send_message", "text": "hi", "next": "b"}
                ]}),
                Channel::Sms
            ),
            "node 'a': next refers to unknown node 'b'"
        );
        assert_eq!(
            err(
                json!({"format": 1, "start": "a", "nodes": [
                    {"id": "a", "type": "speak", "text": "hi", "next": "b"},
                    {"id": "b", "type": "end"}
                ]}),
                Channel::Sms
            ),
            "node 'a': type speak is not available on sms agents"
        );
        assert_eq!(
            err(
                json!({"format": 1, "start": "a", "nodes": [
                    {"id": "a", "type": "end"}, {"id": "a", "type": "end"}
                ]}),
                Channel::Voice
            ),
            "node 'a': id is used twice"
        );
        let e = err(
            json!({"format": 1, "start": "a", "nodes": [{"id": "a", "type": "speak", "next": "a"}]}),
            Channel::Voice,
        );
        assert!(e.starts_with("node 'a': missing field `text`"), "{e}");
    }
    // The flows below are small: each breaks one rule and is otherwise
    // valid, so that the message asserted is the one for that rule.

    /// A format-1 flow of these nodes, starting at the first.
    fn flow(nodes: serde_json::Value) -> serde_json::Value {
        json!({"format": 1, "start": nodes[0]["id"].clone(), "nodes": nodes})
    }

    /// [`flow`] with more top-level fields.
    fn flow_with(fields: serde_json::Value, nodes: serde_json::Value) -> serde_json::Value {
        let mut doc = flow(nodes);
        let extra = fields.as_object().expect("fields is an object").clone();
        doc.as_object_mut()
            .expect("a flow is an object")
            .extend(extra);
        doc
    }

    #[track_caller]
    fn accepted(doc: serde_json::Value, channel: Channel) -> FlowDefinition {
        match FlowDefinition::from_json(&doc, channel) {
            Ok(flow) => flow,
            Err(e) => panic!("refused: {e}"),
        }
    }

    fn end() -> serde_json::Value {
        json!({"id": "end", "type": "end"})
    }

    fn say(id: &str, text: &str, next: &str) -> serde_json::Value {
        json!({"id": id, "type": "send_message", "text": text, "next": next})
    }

    fn ask(id: &str, next: &str) -> serde_json::Value {
        json!({"id": id, "type": "collect_input", "prompt": "Yes?", "entity": "yes_no",
               "parameter": "ANSWER", "success": next, "invalid": next, "no_input": next})
    }

    const EVERY_NODE_VOICE: &str = include_str!("../tests/flows/every_node_voice.json");
    const EVERY_NODE_SMS: &str = include_str!("../tests/flows/every_node_sms.json");

    #[test]
    fn flows_using_every_node_type_are_valid_and_round_trip() {
        let mut types = HashSet::new();
        for (text, channels) in [
            (EVERY_NODE_VOICE, &[Channel::Voice][..]),
            (EVERY_NODE_SMS, &[Channel::Sms, Channel::Whatsapp][..]),
        ] {
            let doc: serde_json::Value = serde_json::from_str(text).unwrap();
            for &channel in channels {
                let flow = accepted(doc.clone(), channel);
                assert_eq!(serde_json::to_value(&flow).unwrap(), doc);
                types.extend(flow.all_nodes().map(|n| n.kind.type_name()));
            }
        }
        assert_eq!(types.len(), 17, "{types:?}");
    }

    #[test]
    fn node_finds_nodes_of_sub_flows_too() {
        let flow: FlowDefinition = serde_json::from_str(EVERY_NODE_VOICE).unwrap();
        assert_eq!(flow.node("greet").unwrap().kind.type_name(), "speak");
        assert_eq!(flow.node("back").unwrap().kind.type_name(), "return");
        assert!(flow.node("nowhere").is_none());
        assert_eq!(flow.subflow("confirm").unwrap().start, "ask_ok");
        assert!(flow.subflow("greet").is_none());
    }

    #[test]
    fn sub_flows_share_the_id_space() {
        let doc = flow_with(
            json!({"subflows": [{"name": "s", "start": "end", "nodes": [{"id": "end", "type": "return"}]}]}),
            json!([end()]),
        );
        assert_eq!(err(doc, Channel::Sms), "node 'end': id is used twice");
    }

    #[test]
    fn exits_stay_within_their_own_flow() {
        let sub = json!([{"name": "s", "start": "b", "nodes": [
            say("b", "in s", "a"), {"id": "c", "type": "return"}
        ]}]);
        assert_eq!(
            err(
                flow_with(
                    json!({"subflows": sub}),
                    json!([say("a", "hi", "end"), end()])
                ),
                Channel::Sms
            ),
            "node 'b': next refers to node 'a' of the main flow, outside sub-flow 's'"
        );
        let sub = json!([{"name": "s", "start": "b", "nodes": [{"id": "b", "type": "return"}]}]);
        assert_eq!(
            err(
                flow_with(json!({"subflows": sub}), json!([say("a", "hi", "b")])),
                Channel::Sms
            ),
            "node 'a': next refers to node 'b' of sub-flow 's', outside the main flow"
        );
        assert_eq!(
            err(
                json!({"format": 1, "start": "b", "subflows": sub, "nodes": [end()]}),
                Channel::Sms
            ),
            "flow.start refers to node 'b' of sub-flow 's', outside the main flow"
        );
    }

    #[test]
    fn sub_flows_are_named_started_and_called_rightly() {
        let with_subs =
            |subs: serde_json::Value| flow_with(json!({"subflows": subs}), json!([end()]));
        let ret = json!([{"id": "r", "type": "return"}]);
        assert_eq!(
            err(
                with_subs(json!([{"name": "s", "start": "x", "nodes": ret}])),
                Channel::Sms
            ),
            "sub-flow 's': start refers to unknown node 'x'"
        );
        assert_eq!(
            err(
                with_subs(json!([{"name": "s", "start": "end", "nodes": ret}])),
                Channel::Sms
            ),
            "sub-flow 's': start refers to node 'end' of the main flow, outside sub-flow 's'"
        );
        assert_eq!(
            err(
                with_subs(json!([{"name": "a b", "start": "r", "nodes": ret}])),
                Channel::Sms
            ),
            "flow.subflows[0].name must be 1 to 64 letters, digits, '_' or '-'"
        );
        assert_eq!(
            err(
                with_subs(json!([
                    {"name": "s", "start": "r", "nodes": ret},
                    {"name": "s", "start": "q", "nodes": [{"id": "q", "type": "return"}]}
                ])),
                Channel::Sms
            ),
            "sub-flow 's': name is used twice"
        );
        assert_eq!(
            err(
                with_subs(json!([{"name": "s", "start": "r", "nodes": []}])),
                Channel::Sms
            ),
            "sub-flow 's': nodes must not be empty"
        );
        assert_eq!(
            err(
                flow(json!([{"id": "a", "type": "flow", "flow": "nope", "next": "end"}, end()])),
                Channel::Sms
            ),
            "node 'a': flow refers to unknown sub-flow 'nope'"
        );
        assert_eq!(
            err(flow(json!([{"id": "a", "type": "return"}])), Channel::Sms),
            "node 'a': type return is only allowed inside a sub-flow"
        );
        let e = err(
            with_subs(
                json!([{"name": "s", "start": "r", "nodes": [{"id": "r", "type": "return", "zz": 1}]}]),
            ),
            Channel::Sms,
        );
        assert!(e.starts_with("node 'r': unknown field `zz`"), "{e}");
    }

    #[test]
    fn sub_flows_cannot_call_themselves() {
        let call = |id: &str, sub: &str| json!({"id": id, "type": "flow", "flow": sub, "next": format!("{id}_back")});
        let back = |id: &str| json!({"id": format!("{id}_back"), "type": "return"});
        let doc = flow_with(
            json!({"subflows": [{"name": "s", "start": "b", "nodes": [call("b", "s"), back("b")]}]}),
            json!([end()]),
        );
        assert_eq!(
            err(doc, Channel::Sms),
            "node 'b': flow 's' would call itself (s → s)"
        );
        let doc = flow_with(
            json!({"subflows": [
                {"name": "s", "start": "b", "nodes": [call("b", "t"), back("b")]},
                {"name": "t", "start": "c", "nodes": [call("c", "s"), back("c")]}
            ]}),
            json!([call("a", "s"), {"id": "a_back", "type": "end"}]),
        );
        assert_eq!(
            err(doc, Channel::Sms),
            "node 'c': flow 's' would call itself (s → t → s)"
        );
        // Calling the same sub-flow from two places is no recursion.
        let doc = flow_with(
            json!({"subflows": [
                {"name": "s", "start": "b", "nodes": [call("b", "u"), call("b_back", "u"), {"id": "b_back_back", "type": "return"}]},
                {"name": "u", "start": "d", "nodes": [ask("d", "e"), {"id": "e", "type": "return"}]}
            ]}),
            json!([call("a", "s"), {"id": "a_back", "type": "end"}]),
        );
        accepted(doc, Channel::Sms);
    }

    #[test]
    fn context_switches_lead_to_main_flow_nodes() {
        let switch = |next: &str| json!({"context_switches": [{"intent": "stop", "examples": ["stop"], "next": next}]});
        assert_eq!(
            err(flow_with(switch("x"), json!([end()])), Channel::Sms),
            "flow.context_switches[0].next refers to unknown node 'x'"
        );
        let mut doc = flow_with(switch("r"), json!([end()]));
        doc["subflows"] =
            json!([{"name": "s", "start": "r", "nodes": [{"id": "r", "type": "return"}]}]);
        assert_eq!(
            err(doc, Channel::Sms),
            "flow.context_switches[0].next refers to node 'r' of sub-flow 's', outside the main flow"
        );
    }

    #[test]
    fn context_switches_are_checked() {
        let switch = |s: serde_json::Value| {
            let mut base = json!({"intent": "stop", "examples": ["stop"], "next": "end"});
            base.as_object_mut()
                .unwrap()
                .extend(s.as_object().unwrap().clone());
            flow_with(json!({"context_switches": [base]}), json!([end()]))
        };
        assert_eq!(
            err(switch(json!({"intent": ""})), Channel::Sms),
            "flow.context_switches[0].intent must be 1 to 64 bytes"
        );
        assert_eq!(
            err(switch(json!({"examples": []})), Channel::Sms),
            "flow.context_switches[0].examples must not be empty"
        );
        assert_eq!(
            err(switch(json!({"examples": ["stop", ""]})), Channel::Sms),
            "flow.context_switches[0].examples[1] must be 1 to 4096 bytes"
        );
        assert_eq!(
            err(switch(json!({"threshold": 1.5})), Channel::Sms),
            "flow.context_switches[0].threshold must be between 0 and 1"
        );
        let twice = flow_with(
            json!({"context_switches": [
                {"intent": "stop", "examples": ["stop"], "next": "end"},
                {"intent": "stop", "examples": ["quit"], "next": "end"}
            ]}),
            json!([end()]),
        );
        assert_eq!(
            err(twice, Channel::Sms),
            "flow.context_switches[1].intent 'stop' is used twice"
        );
    }

    #[test]
    fn the_node_count_includes_sub_flows() {
        let many: Vec<_> = (0..MAX_NODES)
            .map(|i| json!({"id": format!("n{i}"), "type": "end"}))
            .collect();
        let doc = flow_with(
            json!({"subflows": [{"name": "s", "start": "r", "nodes": [{"id": "r", "type": "return"}]}]}),
            json!(many),
        );
        assert_eq!(
            err(doc, Channel::Sms),
            "flow.subflows: the flow and its sub-flows must have at most 500 nodes in all"
        );
    }

    #[test]
    fn texts_must_say_something_and_not_too_much() {
        let long = "x".repeat(MAX_TEXT + 1);
        assert_eq!(
            err(flow(json!([say("a", "", "end"), end()])), Channel::Sms),
            "node 'a': text must be 1 to 4096 bytes"
        );
        assert_eq!(
            err(flow(json!([say("a", &long, "end"), end()])), Channel::Sms),
            "node 'a': text must be 1 to 4096 bytes"
        );
        accepted(
            flow(json!([say("a", &long[1..], "end"), end()])),
            Channel::Sms,
        );
        let mut node = ask("a", "end");
        node["prompt"] = json!("");
        assert_eq!(
            err(flow(json!([node, end()])), Channel::Sms),
            "node 'a': prompt must be 1 to 4096 bytes"
        );
        let mut node = ask("a", "end");
        node["retry_prompt"] = json!("");
        assert_eq!(
            err(flow(json!([node, end()])), Channel::Sms),
            "node 'a': retry_prompt must be 1 to 4096 bytes"
        );
        assert_eq!(
            err(
                flow(
                    json!([{"id": "a", "type": "set_parameter", "parameter": "P", "value": long, "next": "end"}, end()])
                ),
                Channel::Sms
            ),
            "node 'a': value must be at most 4096 bytes"
        );
        accepted(
            flow(
                json!([{"id": "a", "type": "set_parameter", "parameter": "P", "value": "", "next": "end"}, end()]),
            ),
            Channel::Sms,
        );
        assert_eq!(
            err(
                flow(
                    json!([{"id": "a", "type": "send_email", "to": "a@example.com", "subject": "", "body": "b", "next": "end"}, end()])
                ),
                Channel::Sms
            ),
            "node 'a': subject must be 1 to 4096 bytes"
        );
        assert_eq!(
            err(
                flow(json!([{"id": "a", "type": "transfer", "to": ""}])),
                Channel::Voice
            ),
            "node 'a': to must be 1 to 4096 bytes"
        );
        assert_eq!(
            err(
                flow_with(
                    json!({"inbound": {"accept": false, "reply": ""}}),
                    json!([end()])
                ),
                Channel::Sms
            ),
            "flow.inbound.reply must be 1 to 4096 bytes"
        );
    }

    #[test]
    fn templates_may_refer_only_to_defined_parameters() {
        assert_eq!(
            err(
                flow(json!([say("a", "Hello $CALLER_NAME", "end"), end()])),
                Channel::Sms
            ),
            "node 'a': text refers to undefined parameter 'CALLER_NAME' (declare it in flow.parameters)"
        );
        // Declared, set by a node (any of the five ways), or the system's.
        let defined = flow_with(
            json!({"parameters": [{"name": "CALLER_NAME"}]}),
            json!([
                say("a", "$CALLER_NAME ${ANSWER} $INTENT $P $C $R $SESSION_ID $LAST_INPUT $$NOPE $5", "b"),
                ask("b", "c"),
                {"id": "c", "type": "classify", "input": "$LAST_INPUT", "parameter": "INTENT",
                 "intents": [{"name": "x", "examples": ["x"], "next": "d"}], "fallback": "d"},
                {"id": "d", "type": "set_parameter", "parameter": "P", "value": "$ANSWER", "next": "e"},
                {"id": "e", "type": "counter", "counter": "C", "next": "f"},
                {"id": "f", "type": "webhook", "url": "https://example.com/$P",
                 "response": [{"parameter": "R", "path": "/r"}], "success": "end", "failure": "end"},
                end()
            ]),
        );
        accepted(defined, Channel::Sms);
        let fields = [
            (
                json!({"id": "a", "type": "speak", "text": "$X", "next": "end"}),
                "text",
            ),
            (
                json!({"id": "a", "type": "collect_input", "prompt": "$X", "entity": "any", "parameter": "P",
                    "success": "end", "invalid": "end", "no_input": "end"}),
                "prompt",
            ),
            (
                json!({"id": "a", "type": "collect_input", "prompt": "p", "retry_prompt": "${X}", "entity": "any",
                    "parameter": "P", "success": "end", "invalid": "end", "no_input": "end"}),
                "retry_prompt",
            ),
            (
                json!({"id": "a", "type": "classify", "prompt": "$X", "intents": [{"name": "i", "examples": ["e"], "next": "end"}],
                    "fallback": "end"}),
                "prompt",
            ),
            (
                json!({"id": "a", "type": "classify", "input": "$X", "intents": [{"name": "i", "examples": ["e"], "next": "end"}],
                    "fallback": "end"}),
                "input",
            ),
            (
                json!({"id": "a", "type": "set_parameter", "parameter": "P", "value": "$X", "next": "end"}),
                "value",
            ),
            (
                json!({"id": "a", "type": "webhook", "url": "https://e.example/$X", "success": "end", "failure": "end"}),
                "url",
            ),
            (
                json!({"id": "a", "type": "webhook", "url": "https://e.example/", "headers": [{"name": "A", "value": "$X"}],
                    "success": "end", "failure": "end"}),
                "headers[0].value",
            ),
            (
                json!({"id": "a", "type": "webhook", "url": "https://e.example/", "body": "$X",
                    "success": "end", "failure": "end"}),
                "body",
            ),
            (
                json!({"id": "a", "type": "send_sms", "to": "$X", "text": "t", "next": "end"}),
                "to",
            ),
            (
                json!({"id": "a", "type": "send_sms", "text": "$X", "next": "end"}),
                "text",
            ),
            (
                json!({"id": "a", "type": "send_email", "to": "$X", "subject": "s", "body": "b", "next": "end"}),
                "to",
            ),
            (
                json!({"id": "a", "type": "send_email", "to": "a@example.com", "subject": "$X", "body": "b", "next": "end"}),
                "subject",
            ),
            (
                json!({"id": "a", "type": "send_email", "to": "a@example.com", "subject": "s", "body": "$X", "next": "end"}),
                "body",
            ),
            (json!({"id": "a", "type": "transfer", "to": "$X"}), "to"),
            (
                json!({"id": "a", "type": "conditions", "branches": [{"rules": [{"parameter": "LAST_INPUT", "op": "eq", "value": "$X"}],
                    "next": "end"}], "default": "end"}),
                "branches[0].rules[0].value",
            ),
        ];
        for (node, field) in fields {
            assert_eq!(
                err(flow(json!([node, end()])), Channel::Voice),
                format!("node 'a': {field} refers to undefined parameter 'X' (declare it in flow.parameters)")
            );
        }
        assert_eq!(
            err(
                flow(
                    json!([{"id": "a", "type": "live_agent", "url": "https://desk.example/$X", "next": "end"}, end()])
                ),
                Channel::Sms
            ),
            "node 'a': url refers to undefined parameter 'X' (declare it in flow.parameters)"
        );
        assert_eq!(
            err(
                flow(json!([{"id": "a", "type": "conditions", "branches": [
                    {"rules": [{"parameter": "X", "op": "is_set"}], "next": "end"}
                ], "default": "end"}, end()])),
                Channel::Sms
            ),
            "node 'a': branches[0].rules[0].parameter refers to undefined parameter 'X' (declare it in flow.parameters)"
        );
        assert_eq!(
            err(
                flow(json!([{"id": "a", "type": "conditions", "branches": [
                    {"rules": [{"parameter": "a-b", "op": "is_set"}], "next": "end"}
                ], "default": "end"}, end()])),
                Channel::Sms
            ),
            "node 'a': branches[0].rules[0].parameter must be 1 to 64 letters, digits or underscores"
        );
    }

    #[test]
    fn parameter_declarations_are_checked() {
        let declare =
            |params: serde_json::Value| flow_with(json!({"parameters": params}), json!([end()]));
        assert_eq!(
            err(declare(json!([{"name": "first name"}])), Channel::Sms),
            "flow.parameters[0].name must be 1 to 64 letters, digits or underscores"
        );
        assert_eq!(
            err(declare(json!([{"name": "RECIPIENT"}])), Channel::Sms),
            "flow.parameters[0].name 'RECIPIENT' is a system parameter"
        );
        assert_eq!(
            err(
                declare(json!([{"name": "A"}, {"name": "A", "default": "x"}])),
                Channel::Sms
            ),
            "flow.parameters[1].name 'A' is declared twice"
        );
        assert_eq!(
            err(
                declare(json!([{"name": "A", "default": "x".repeat(4097)}])),
                Channel::Sms
            ),
            "flow.parameters[0].default must be at most 4096 bytes"
        );
        let many: Vec<_> = (0..=MAX_PARAMETERS)
            .map(|i| json!({"name": format!("P{i}")}))
            .collect();
        assert_eq!(
            err(declare(json!(many)), Channel::Sms),
            "flow.parameters must have at most 100 entries"
        );
    }

    #[test]
    fn parameters_set_by_nodes_are_checked() {
        assert_eq!(
            err(
                flow(
                    json!([{"id": "a", "type": "set_parameter", "parameter": "my param", "value": "x", "next": "end"}, end()])
                ),
                Channel::Sms
            ),
            "node 'a': parameter must be 1 to 64 letters, digits or underscores"
        );
        assert_eq!(
            err(
                flow(
                    json!([{"id": "a", "type": "reset_counter", "counter": "", "next": "end"}, end()])
                ),
                Channel::Sms
            ),
            "node 'a': counter must be 1 to 64 letters, digits or underscores"
        );
        assert_eq!(
            err(
                flow(
                    json!([{"id": "a", "type": "webhook", "url": "https://e.example/",
                    "response": [{"parameter": "OK", "path": ""}, {"parameter": "x.y", "path": ""}],
                    "success": "end", "failure": "end"}, end()])
                ),
                Channel::Sms
            ),
            "node 'a': response[1].parameter must be 1 to 64 letters, digits or underscores"
        );
        assert_eq!(
            err(
                flow(
                    json!([{"id": "a", "type": "set_parameter", "parameter": "CHANNEL", "value": "x", "next": "end"}, end()])
                ),
                Channel::Sms
            ),
            "node 'a': parameter 'CHANNEL' is a system parameter and cannot be set"
        );
    }

    #[test]
    fn entities_are_built_in_or_defined() {
        let collect = |entity: &str| {
            json!([{"id": "a", "type": "collect_input", "prompt": "p", "entity": entity, "parameter": "P",
                     "success": "end", "invalid": "end", "no_input": "end"}, end()])
        };
        assert_eq!(
            err(flow(collect("colour")), Channel::Sms),
            "node 'a': entity 'colour' is neither a built-in entity (any, number, yes_no, date, time, email, phone_number) nor one of flow.entities"
        );
        for entity in BUILTIN_ENTITIES {
            accepted(flow(collect(entity)), Channel::Sms);
        }
        let colours = json!({"entities": [{"name": "colour", "values": [{"value": "red"}]}]});
        accepted(flow_with(colours, collect("colour")), Channel::Sms);

        let define =
            |entities: serde_json::Value| flow_with(json!({"entities": entities}), json!([end()]));
        assert_eq!(
            err(
                define(json!([{"name": "", "values": [{"value": "x"}]}])),
                Channel::Sms
            ),
            "flow.entities[0].name must be 1 to 64 letters, digits, '_' or '-'"
        );
        assert_eq!(
            err(
                define(json!([{"name": "date", "values": [{"value": "x"}]}])),
                Channel::Sms
            ),
            "flow.entities[0].name 'date' is a built-in entity"
        );
        assert_eq!(
            err(
                define(
                    json!([{"name": "c", "values": [{"value": "x"}]}, {"name": "c", "values": [{"value": "y"}]}])
                ),
                Channel::Sms
            ),
            "flow.entities[1].name 'c' is used twice"
        );
        assert_eq!(
            err(define(json!([{"name": "c", "values": []}])), Channel::Sms),
            "flow.entities[0].values must not be empty"
        );
        assert_eq!(
            err(
                define(json!([{"name": "c", "values": [{"value": "x"}, {"value": ""}]}])),
                Channel::Sms
            ),
            "flow.entities[0].values[1].value must be 1 to 4096 bytes"
        );
        assert_eq!(
            err(
                define(json!([{"name": "c", "values": [{"value": "x", "synonyms": ["ex", ""]}]}])),
                Channel::Sms
            ),
            "flow.entities[0].values[0].synonyms[1] must be 1 to 4096 bytes"
        );
    }

    #[test]
    fn loops_must_wait_for_the_person() {
        assert_eq!(
            err(
                flow(json!([say("a", "one", "b"), say("b", "two", "a")])),
                Channel::Sms
            ),
            "node 'a': the flow can loop through a → b → a without waiting for the person"
        );
        assert_eq!(
            err(
                flow(json!([say("start", "hi", "a"),
                    {"id": "a", "type": "set_parameter", "parameter": "P", "value": "x", "next": "a"}])),
                Channel::Sms
            ),
            "node 'a': the flow can loop through a → a without waiting for the person"
        );
        // Through a question, the same loop is a conversation.
        accepted(
            flow(json!([say("a", "one", "b"), ask("b", "a")])),
            Channel::Sms,
        );
        // A Classification with `input` does not wait.
        let classify = |id: &str, how: serde_json::Value| {
            let mut node = json!({"id": id, "type": "classify",
                "intents": [{"name": "i", "examples": ["e"], "next": "a"}], "fallback": "a"});
            node.as_object_mut()
                .unwrap()
                .extend(how.as_object().unwrap().clone());
            node
        };
        assert_eq!(
            err(
                flow(json!([
                    say("a", "one", "b"),
                    classify("b", json!({"input": "$LAST_INPUT"}))
                ])),
                Channel::Sms
            ),
            "node 'a': the flow can loop through a → b → a without waiting for the person"
        );
        accepted(
            flow(json!([
                say("a", "one", "b"),
                classify("b", json!({"prompt": "?"}))
            ])),
            Channel::Sms,
        );
        // Sub-flows are checked on their own.
        let doc = flow_with(
            json!({"subflows": [{"name": "s", "start": "b", "nodes": [say("b", "x", "c"), say("c", "y", "b")]}]}),
            json!([end()]),
        );
        assert_eq!(
            err(doc, Channel::Sms),
            "node 'b': the flow can loop through b → c → b without waiting for the person"
        );
        // Unreachable drafts are fine, but not their loops.
        accepted(flow(json!([end(), say("draft", "x", "end")])), Channel::Sms);
    }

    #[test]
    fn a_call_waits_when_its_sub_flow_cannot_return_without_waiting() {
        let with_sub = |sub_nodes: serde_json::Value| {
            flow_with(
                json!({"subflows": [{"name": "s", "start": "b", "nodes": sub_nodes}]}),
                json!([say("a", "again", "call"), {"id": "call", "type": "flow", "flow": "s", "next": "a"}]),
            )
        };
        accepted(
            with_sub(json!([ask("b", "r"), {"id": "r", "type": "return"}])),
            Channel::Sms,
        );
        // A sub-flow that never returns (it ends) holds the loop too.
        accepted(
            with_sub(json!([say("b", "bye", "z"), {"id": "z", "type": "end"}])),
            Channel::Sms,
        );
        assert_eq!(
            err(
                with_sub(json!([say("b", "x", "r"), {"id": "r", "type": "return"}])),
                Channel::Sms
            ),
            "node 'a': the flow can loop through a → call → a without waiting for the person"
        );
    }

    #[test]
    fn a_loop_through_a_counter_and_its_test_is_bounded() {
        let retry = |test: &str| {
            flow(json!([
                {"id": "call", "type": "webhook", "url": "https://e.example/", "success": "end", "failure": "count"},
                {"id": "count", "type": "counter", "counter": "TRIES", "next": "check"},
                {"id": "check", "type": "conditions", "branches": [
                    {"rules": [{"parameter": test, "op": "lt", "value": "3"}], "next": "call"}
                ], "default": "end"},
                end()
            ]))
        };
        accepted(retry("TRIES"), Channel::Sms);
        assert_eq!(
            err(retry("LAST_INPUT"), Channel::Sms),
            "node 'call': the flow can loop through call → count → check → call without waiting for the person"
        );
        // A second loop that skips the counter spins.
        let mut doc = retry("TRIES");
        doc["nodes"][0]["success"] = json!("call");
        assert_eq!(
            err(doc, Channel::Sms),
            "node 'call': the flow can loop through call → call without waiting for the person"
        );
    }

    #[test]
    fn bounds_are_checked() {
        let mut node = ask("a", "end");
        node["timeout_secs"] = json!(0);
        assert_eq!(
            err(flow(json!([node, end()])), Channel::Sms),
            "node 'a': timeout_secs must be 1 to 604800 (7 days)"
        );
        assert_eq!(
            err(
                flow(
                    json!([{"id": "a", "type": "live_agent", "url": "https://d.example/", "timeout_secs": 604801, "next": "end"}, end()])
                ),
                Channel::Sms
            ),
            "node 'a': timeout_secs must be 1 to 604800 (7 days)"
        );
        assert_eq!(
            err(
                flow(
                    json!([{"id": "a", "type": "webhook", "url": "https://e.example/", "timeout_secs": 31,
                    "success": "end", "failure": "end"}, end()])
                ),
                Channel::Sms
            ),
            "node 'a': timeout_secs must be 1 to 30"
        );
        assert_eq!(
            err(
                flow_with(json!({"max_duration_secs": 0}), json!([end()])),
                Channel::Sms
            ),
            "flow.max_duration_secs must be 1 to 2592000 (30 days)"
        );
        assert_eq!(
            err(
                flow_with(json!({"max_duration_secs": 2592001}), json!([end()])),
                Channel::Sms
            ),
            "flow.max_duration_secs must be 1 to 2592000 (30 days)"
        );
        assert_eq!(
            err(
                flow(
                    json!([{"id": "a", "type": "counter", "counter": "C", "step": 0, "next": "end"}, end()])
                ),
                Channel::Sms
            ),
            "node 'a': step must not be 0"
        );
    }

    #[test]
    fn classification_nodes_are_checked() {
        let classify = |fields: serde_json::Value| {
            let mut node = json!({"id": "a", "type": "classify", "prompt": "?",
                "intents": [{"name": "yes", "examples": ["yes"], "next": "end"}], "fallback": "end"});
            node.as_object_mut()
                .unwrap()
                .extend(fields.as_object().unwrap().clone());
            flow(json!([node, end()]))
        };
        assert_eq!(
            err(classify(json!({"input": "$LAST_INPUT"})), Channel::Sms),
            "node 'a': prompt and input cannot both be set"
        );
        let mut neither = classify(json!({}));
        neither["nodes"][0]
            .as_object_mut()
            .unwrap()
            .remove("prompt");
        assert_eq!(
            err(neither, Channel::Sms),
            "node 'a': prompt or input is required"
        );
        assert_eq!(
            err(classify(json!({"threshold": -0.1})), Channel::Sms),
            "node 'a': threshold must be between 0 and 1"
        );
        assert_eq!(
            err(classify(json!({"timeout_secs": 0})), Channel::Sms),
            "node 'a': timeout_secs must be 1 to 604800 (7 days)"
        );
        assert_eq!(
            err(classify(json!({"intents": []})), Channel::Sms),
            "node 'a': intents must not be empty"
        );
        assert_eq!(
            err(
                classify(json!({"intents": [{"name": "", "examples": ["e"], "next": "end"}]})),
                Channel::Sms
            ),
            "node 'a': intents[0].name must be 1 to 64 bytes"
        );
        assert_eq!(
            err(
                classify(json!({"intents": [
                    {"name": "yes", "examples": ["yes"], "next": "end"},
                    {"name": "yes", "examples": ["sure"], "next": "end"}
                ]})),
                Channel::Sms
            ),
            "node 'a': intents[1].name 'yes' is used twice"
        );
        assert_eq!(
            err(
                classify(json!({"intents": [{"name": "yes", "examples": [], "next": "end"}]})),
                Channel::Sms
            ),
            "node 'a': intents[0].examples must not be empty"
        );
        assert_eq!(
            err(
                classify(
                    json!({"intents": [{"name": "yes", "examples": ["yes", ""], "next": "end"}]})
                ),
                Channel::Sms
            ),
            "node 'a': intents[0].examples[1] must be 1 to 4096 bytes"
        );
    }

    #[test]
    fn conditions_are_checked() {
        let conditions = |branches: serde_json::Value| {
            flow(
                json!([{"id": "a", "type": "conditions", "branches": branches, "default": "end"}, end()]),
            )
        };
        assert_eq!(
            err(conditions(json!([])), Channel::Sms),
            "node 'a': branches must not be empty"
        );
        assert_eq!(
            err(
                conditions(json!([{"rules": [], "next": "end"}])),
                Channel::Sms
            ),
            "node 'a': branches[0].rules must not be empty"
        );
        assert_eq!(
            err(
                conditions(json!([{"match": "any", "rules": [
                    {"parameter": "LAST_INPUT", "op": "is_set"},
                    {"parameter": "LAST_INPUT", "op": "starts_with"}
                ], "next": "end"}])),
                Channel::Sms
            ),
            "node 'a': branches[0].rules[1].value is required for op starts_with"
        );
        assert_eq!(
            err(
                conditions(
                    json!([{"rules": [{"parameter": "LAST_INPUT", "op": "eq", "value": "x".repeat(4097)}], "next": "end"}])
                ),
                Channel::Sms
            ),
            "node 'a': branches[0].rules[0].value must be at most 4096 bytes"
        );
        accepted(
            conditions(
                json!([{"rules": [{"parameter": "LAST_INPUT", "op": "eq", "value": ""}], "next": "end"}]),
            ),
            Channel::Sms,
        );
    }

    #[test]
    fn webhooks_are_checked() {
        let webhook = |fields: serde_json::Value| {
            let mut node = json!({"id": "a", "type": "webhook", "url": "https://api.example.com/x",
                "success": "end", "failure": "end"});
            node.as_object_mut()
                .unwrap()
                .extend(fields.as_object().unwrap().clone());
            flow(json!([node, end()]))
        };
        for method in WEBHOOK_METHODS {
            accepted(webhook(json!({"method": method})), Channel::Sms);
        }
        assert_eq!(
            err(webhook(json!({"method": "get"})), Channel::Sms),
            "node 'a': method must be one of GET, POST, PUT, PATCH, DELETE"
        );
        for url in [
            "api.example.com/x",
            "ftp://example.com/",
            "https://",
            "/relative",
        ] {
            assert_eq!(
                err(webhook(json!({"url": url})), Channel::Sms),
                "node 'a': url must be an absolute http or https URL",
                "{url}"
            );
        }
        accepted(webhook(json!({"url": "$RECIPIENT"})), Channel::Sms);
        assert_eq!(
            err(
                webhook(json!({"headers": [{"name": "X Token", "value": "v"}]})),
                Channel::Sms
            ),
            "node 'a': headers[0].name 'X Token' is not a valid HTTP header name"
        );
        assert_eq!(
            err(
                webhook(json!({"headers": [{"name": "host", "value": "v"}]})),
                Channel::Sms
            ),
            "node 'a': headers[0].name 'host' is set by herald"
        );
        assert_eq!(
            err(
                webhook(json!({"headers": [{"name": "X-Token", "value": "a\r\nHost: evil"}]})),
                Channel::Sms
            ),
            "node 'a': headers[0].value must not contain line breaks or other control characters"
        );
        for path in ["status", "/a~2b", "/a~"] {
            assert_eq!(
                err(
                    webhook(json!({"response": [{"parameter": "P", "path": path}]})),
                    Channel::Sms
                ),
                "node 'a': response[0].path must be a JSON pointer (\"\" or starting with \"/\")",
                "{path}"
            );
        }
        accepted(
            webhook(
                json!({"response": [{"parameter": "P", "path": "/a~1b/0/~0"}, {"parameter": "Q", "path": ""}]}),
            ),
            Channel::Sms,
        );
    }

    #[test]
    fn addresses_are_checked_when_they_are_literal() {
        assert_eq!(
            err(
                flow(
                    json!([{"id": "a", "type": "send_sms", "to": "not a number", "text": "t", "next": "end"}, end()])
                ),
                Channel::Sms
            ),
            "node 'a': to must be a phone number with its country code"
        );
        accepted(
            flow(
                json!([{"id": "a", "type": "send_sms", "to": "+447700900123", "text": "t", "next": "end"}, end()]),
            ),
            Channel::Sms,
        );
        let email = |to: &str, subject: &str| {
            flow(
                json!([{"id": "a", "type": "send_email", "to": to, "subject": subject, "body": "b", "next": "end"}, end()]),
            )
        };
        assert_eq!(
            err(email("nobody", "s"), Channel::Sms),
            "node 'a': to must be an email address"
        );
        assert_eq!(
            err(
                email("a@example.com", "s\nBcc: x@example.com"),
                Channel::Sms
            ),
            "node 'a': subject must not contain line breaks or other control characters"
        );
        accepted(email("$RECIPIENT@sms.example.com", "s"), Channel::Sms);
        assert_eq!(
            err(
                flow(json!([{"id": "a", "type": "transfer", "to": "12"}])),
                Channel::Voice
            ),
            "node 'a': to must be a phone number or a SIP URI"
        );
        accepted(
            flow(json!([{"id": "a", "type": "transfer", "to": "sip:desk@example.com"}])),
            Channel::Voice,
        );
        assert_eq!(
            err(
                flow(
                    json!([{"id": "a", "type": "live_agent", "url": "desk", "next": "end"}, end()])
                ),
                Channel::Sms
            ),
            "node 'a': url must be an absolute http or https URL"
        );
    }

    #[test]
    fn node_types_fit_their_channels() {
        assert_eq!(
            err(flow(json!([say("a", "hi", "end"), end()])), Channel::Voice),
            "node 'a': type send_message is not available on voice agents"
        );
        assert_eq!(
            err(
                flow(json!([{"id": "a", "type": "transfer", "to": "447700900123"}])),
                Channel::Whatsapp
            ),
            "node 'a': type transfer is not available on whatsapp agents"
        );
        assert_eq!(
            err(
                flow(
                    json!([{"id": "a", "type": "live_agent", "url": "https://d.example/", "next": "end"}, end()])
                ),
                Channel::Voice
            ),
            "node 'a': type live_agent is not available on voice agents"
        );
    }
}

//! What wakes a session: the person's words, keys and silence, what the
//! provider reports of a call or a message, and a live agent's words and
//! decisions.
//!
//! Each is stored as one row of a session's inputs, its kind, its text and
//! any other data as JSON (`StoredInput`), and read back strictly: a kind
//! this build does not know is an error, never taken for text.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{CallProgress, MessageStatus};

/// Something that happened to a session from outside, waiting for the
/// session's next step.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionInput {
    /// A message from the person (SMS, WhatsApp).
    Text(String),
    /// Keys the person pressed on a call (`0-9`, `*`, `#`).
    Digits(String),
    /// What the person said on a call, as recognised; `confidence` (0 to
    /// 1) where the recogniser gives one.
    Speech {
        text: String,
        confidence: Option<f64>,
    },
    /// The person neither spoke nor keyed before the provider stopped
    /// listening.
    NoInput,
    /// How the call is going.
    CallProgress(CallProgress),
    /// A status of the session's `message`-th message to the person
    /// (counting from 0); for a failure, why, as the provider says.
    MessageStatus {
        message: u32,
        status: MessageStatus,
        reason: Option<String>,
    },
    /// A status of a text a Send SMS node sent to `to`.
    SmsStatus { to: String, status: MessageStatus },
    /// A live agent's words for the person.
    LiveAgentMessage(String),
    /// The live agent gives the conversation back to the flow.
    LiveAgentHandBack,
    /// The live agent ends the conversation.
    LiveAgentEnd,
}

/// The kinds of input, as rows name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputKind {
    Text,
    Dtmf,
    Speech,
    NoInput,
    CallProgress,
    MessageStatus,
    SmsStatus,
    LiveAgentMessage,
    LiveAgentHandBack,
    LiveAgentEnd,
}

impl InputKind {
    const ALL: [InputKind; 10] = [
        InputKind::Text,
        InputKind::Dtmf,
        InputKind::Speech,
        InputKind::NoInput,
        InputKind::CallProgress,
        InputKind::MessageStatus,
        InputKind::SmsStatus,
        InputKind::LiveAgentMessage,
        InputKind::LiveAgentHandBack,
        InputKind::LiveAgentEnd,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InputKind::Text => "text",
            InputKind::Dtmf => "dtmf",
            InputKind::Speech => "speech",
            InputKind::NoInput => "no_input",
            InputKind::CallProgress => "call_progress",
            InputKind::MessageStatus => "message_status",
            InputKind::SmsStatus => "sms_status",
            InputKind::LiveAgentMessage => "live_agent_message",
            InputKind::LiveAgentHandBack => "live_agent_hand_back",
            InputKind::LiveAgentEnd => "live_agent_end",
        }
    }

    /// Whether the input is a provider's report (of a message's status or
    /// of the call's progress), which the session handles itself rather
    /// than its flow.
    pub fn is_provider_report(self) -> bool {
        matches!(
            self,
            InputKind::MessageStatus | InputKind::SmsStatus | InputKind::CallProgress
        )
    }

    /// Whether the input comes from the live agent rather than the person.
    pub fn is_live_agent(self) -> bool {
        matches!(
            self,
            InputKind::LiveAgentMessage | InputKind::LiveAgentHandBack | InputKind::LiveAgentEnd
        )
    }
}

impl std::str::FromStr for InputKind {
    type Err = BadInput;
    fn from_str(s: &str) -> Result<Self, BadInput> {
        InputKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| BadInput(format!("unknown input kind {s:?}")))
    }
}

/// An input as a row holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredInput {
    pub kind: InputKind,
    /// What was said, keyed or written; empty for inputs without words.
    pub text: String,
    /// Anything else, as JSON.
    pub data: Option<Value>,
}

/// A stored input this build cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreadable input: {0}")]
pub struct BadInput(String);

impl SessionInput {
    pub fn kind(&self) -> InputKind {
        match self {
            SessionInput::Text(_) => InputKind::Text,
            SessionInput::Digits(_) => InputKind::Dtmf,
            SessionInput::Speech { .. } => InputKind::Speech,
            SessionInput::NoInput => InputKind::NoInput,
            SessionInput::CallProgress(_) => InputKind::CallProgress,
            SessionInput::MessageStatus { .. } => InputKind::MessageStatus,
            SessionInput::SmsStatus { .. } => InputKind::SmsStatus,
            SessionInput::LiveAgentMessage(_) => InputKind::LiveAgentMessage,
            SessionInput::LiveAgentHandBack => InputKind::LiveAgentHandBack,
            SessionInput::LiveAgentEnd => InputKind::LiveAgentEnd,
        }
    }

    /// The words of the input, if it has any: what a flow reads as
    /// `LAST_INPUT` and a transcript shows.
    pub fn text(&self) -> Option<&str> {
        match self {
            SessionInput::Text(text)
            | SessionInput::Digits(text)
            | SessionInput::Speech { text, .. }
            | SessionInput::LiveAgentMessage(text) => Some(text),
            _ => None,
        }
    }

    pub fn to_stored(&self) -> StoredInput {
        let data = match self {
            SessionInput::Speech {
                confidence: Some(c),
                ..
            } => Some(json!({ "confidence": c })),
            SessionInput::CallProgress(progress) => {
                Some(serde_json::to_value(progress).expect("a call progress serialises"))
            }
            SessionInput::MessageStatus {
                message,
                status,
                reason,
            } => {
                let mut data = json!({ "message": message, "status": status });
                if let Some(reason) = reason {
                    data["reason"] = json!(reason);
                }
                Some(data)
            }
            SessionInput::SmsStatus { to, status } => Some(json!({ "to": to, "status": status })),
            _ => None,
        };
        StoredInput {
            kind: self.kind(),
            text: self.text().unwrap_or_default().to_owned(),
            data,
        }
    }

    pub fn from_stored(stored: StoredInput) -> Result<Self, BadInput> {
        let StoredInput { kind, text, data } = stored;
        let field = |name: &str| data.as_ref().and_then(|d| d.get(name)).cloned();
        let bad = |what: &str| BadInput(format!("a {} input {what}", kind.as_str()));
        Ok(match kind {
            InputKind::Text => SessionInput::Text(text),
            InputKind::Dtmf => SessionInput::Digits(text),
            InputKind::Speech => SessionInput::Speech {
                text,
                confidence: field("confidence").and_then(|c| c.as_f64()),
            },
            InputKind::NoInput => SessionInput::NoInput,
            InputKind::CallProgress => SessionInput::CallProgress(
                data.and_then(|d| serde_json::from_value(d).ok())
                    .ok_or_else(|| bad("without its progress"))?,
            ),
            InputKind::MessageStatus => SessionInput::MessageStatus {
                message: field("message")
                    .and_then(|m| m.as_u64())
                    .and_then(|m| u32::try_from(m).ok())
                    .ok_or_else(|| bad("without its message"))?,
                status: field("status")
                    .and_then(|s| serde_json::from_value(s).ok())
                    .ok_or_else(|| bad("without its status"))?,
                reason: field("reason").and_then(|r| r.as_str().map(str::to_owned)),
            },
            InputKind::SmsStatus => SessionInput::SmsStatus {
                to: field("to")
                    .and_then(|t| t.as_str().map(str::to_owned))
                    .ok_or_else(|| bad("without its number"))?,
                status: field("status")
                    .and_then(|s| serde_json::from_value(s).ok())
                    .ok_or_else(|| bad("without its status"))?,
            },
            InputKind::LiveAgentMessage => SessionInput::LiveAgentMessage(text),
            InputKind::LiveAgentHandBack => SessionInput::LiveAgentHandBack,
            InputKind::LiveAgentEnd => SessionInput::LiveAgentEnd,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{AnsweredBy, CallFailure};

    #[test]
    fn every_input_reads_back_as_it_was_stored() {
        let inputs = [
            SessionInput::Text("hi".into()),
            SessionInput::Digits("12#".into()),
            SessionInput::Speech {
                text: "yes please".into(),
                confidence: None,
            },
            SessionInput::Speech {
                text: "yes".into(),
                confidence: Some(0.75),
            },
            SessionInput::NoInput,
            SessionInput::CallProgress(CallProgress::Ringing),
            SessionInput::CallProgress(CallProgress::Answered {
                by: AnsweredBy::Machine,
            }),
            SessionInput::CallProgress(CallProgress::NotAnswered {
                failure: CallFailure::Busy,
            }),
            SessionInput::MessageStatus {
                message: 2,
                status: MessageStatus::Read,
                reason: None,
            },
            SessionInput::MessageStatus {
                message: 0,
                status: MessageStatus::Rejected,
                reason: Some("outside the 24-hour window".into()),
            },
            SessionInput::SmsStatus {
                to: "447700900123".into(),
                status: MessageStatus::Delivered,
            },
            SessionInput::LiveAgentMessage("Hello, Ada here".into()),
            SessionInput::LiveAgentHandBack,
            SessionInput::LiveAgentEnd,
        ];
        for input in inputs {
            let stored = input.to_stored();
            let kind: InputKind = stored.kind.as_str().parse().unwrap();
            assert_eq!(kind, stored.kind);
            assert_eq!(SessionInput::from_stored(stored).unwrap(), input);
        }
    }

    #[test]
    fn rows_of_earlier_releases_read_as_they_always_did() {
        for (kind, text, expected) in [
            ("text", "yes", SessionInput::Text("yes".into())),
            ("dtmf", "1", SessionInput::Digits("1".into())),
            (
                "speech",
                "yes",
                SessionInput::Speech {
                    text: "yes".into(),
                    confidence: None,
                },
            ),
            ("live_agent_hand_back", "", SessionInput::LiveAgentHandBack),
        ] {
            let stored = StoredInput {
                kind: kind.parse().unwrap(),
                text: text.into(),
                data: None,
            };
            assert_eq!(SessionInput::from_stored(stored).unwrap(), expected);
        }
    }

    #[test]
    fn an_unknown_or_incomplete_input_is_an_error() {
        assert!("smoke_signal".parse::<InputKind>().is_err());
        let incomplete = StoredInput {
            kind: InputKind::MessageStatus,
            text: String::new(),
            data: Some(json!({"status": "sent"})),
        };
        assert!(SessionInput::from_stored(incomplete).is_err());
    }
}

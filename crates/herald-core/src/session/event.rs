//! What a session records: every event of `GET /sessions/{id}` (CONTRACT
//! §7.1), with the fields of each.
//!
//! The store keeps an event as its kind and its other fields as JSON, as it
//! always has; [`SessionEvent::to_stored`] and [`SessionEvent::from_stored`]
//! are the one mapping between the two, so that an event is written the
//! same way wherever it is made.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::{AnsweredBy, CallFailure, EndReason, MessageStatus, Outcome};

/// One event of a session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SessionEvent {
    /// The trigger stored the session.
    Queued,
    /// A worker took the session up for the first time.
    Dispatched,
    /// The call is placed and rings.
    Ringing,
    /// The call ended before anyone answered.
    CallStatus {
        status: CallFailure,
    },
    /// The call was answered.
    Answered {
        by: AnsweredBy,
    },
    /// herald hung up.
    Hangup {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The flow entered a node.
    NodeEntered {
        node: String,
    },
    /// Said on the call.
    Speak {
        text: String,
    },
    /// A message went to the person.
    MessageSent {
        message_uuid: Uuid,
        content: ShownContent,
    },
    /// A status of a message to the person.
    MessageStatus {
        message_uuid: Uuid,
        status: MessageStatus,
    },
    /// The flow set a parameter.
    ParameterSet {
        name: String,
        value: String,
    },
    /// A webhook node called its URL (shown without secrets).
    WebhookCalled {
        method: String,
        url: String,
    },
    WebhookAnswered {
        status: u16,
    },
    WebhookFailed {
        error: String,
    },
    /// A Send SMS node's message, to someone else than the person.
    SmsSent {
        to: String,
        text: String,
    },
    SmsStatus {
        to: String,
        status: MessageStatus,
    },
    SmsFailed {
        to: String,
        error: String,
    },
    EmailSent {
        to: String,
        subject: String,
    },
    EmailFailed {
        to: String,
        error: String,
    },
    /// Call Routing handed the call over.
    Transferred {
        to: String,
    },
    /// A live agent took the conversation (`url`, shown without secrets).
    LiveAgentStarted {
        url: String,
    },
    /// The person's words went on to the live agent.
    LiveAgentForwarded {
        url: String,
    },
    LiveAgentFailed {
        url: String,
        error: String,
    },
    /// The live agent gave the conversation back.
    LiveAgentStopped,
    /// Something the person (or the live agent) said: `input` is the
    /// input's kind (`text`, `dtmf`, `speech`, `live_agent_message`…).
    InputReceived {
        input: String,
        text: String,
    },
    /// A stranger's message started a session the flow does not take.
    InboundDeclined,
    /// The person opted out of the channel (CONTRACT §13): `by` their
    /// `keyword`, or through the `flow`'s opt_out node.
    OptedOut {
        by: String,
    },
    /// The person, who had opted out, opted back in by keyword.
    OptedIn {},
    /// The session ended.
    Ended {
        outcome: Outcome,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<EndReason>,
    },
    /// The session could not run, for good: why, in words fit for its
    /// owner (the whole cause is in the server's log).
    Error {
        error: String,
    },
    /// A callback was given up on.
    CallbackFailed {
        webhook_id: String,
        attempts: u32,
        error: String,
    },
}

/// What a message to the person carried, as its event shows it: its text,
/// or the WhatsApp template it opened with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShownContent {
    Text(String),
    Template(Value),
}

/// An event as the store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub kind: String,
    pub data: Option<Value>,
}

/// A stored event this build cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreadable event: {0}")]
pub struct BadEvent(String);

impl SessionEvent {
    /// The kind, as events are listed.
    pub fn kind(&self) -> String {
        self.to_stored().kind
    }

    pub fn to_stored(&self) -> StoredEvent {
        let Value::Object(mut fields) = serde_json::to_value(self).expect("an event serialises")
        else {
            unreachable!("an internally tagged enum serialises as an object");
        };
        let kind = match fields.remove("type") {
            Some(Value::String(kind)) => kind,
            _ => unreachable!("the tag is a string"),
        };
        let data = if !fields.is_empty() {
            Some(Value::Object(fields))
        } else if self.stores_null() {
            Some(Value::Null)
        } else {
            None
        };
        StoredEvent { kind, data }
    }

    pub fn from_stored(stored: &StoredEvent) -> Result<Self, BadEvent> {
        let mut fields = match &stored.data {
            Some(Value::Object(fields)) => fields.clone(),
            None | Some(Value::Null) => Default::default(),
            Some(other) => return Err(BadEvent(format!("{}: data {other}", stored.kind))),
        };
        fields.insert("type".into(), Value::String(stored.kind.clone()));
        serde_json::from_value(Value::Object(fields))
            .map_err(|e| BadEvent(format!("{}: {e}", stored.kind)))
    }

    /// The events that carry nothing but their kind and were always
    /// written with a JSON `null` for data (which the API shows as
    /// `"data": null`), kept so.
    fn stores_null(&self) -> bool {
        matches!(
            self,
            SessionEvent::Ringing
                | SessionEvent::Hangup { reason: None }
                | SessionEvent::LiveAgentStopped
                | SessionEvent::InboundDeclined
        )
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn stored(event: &SessionEvent) -> (String, Option<Value>) {
        let s = event.to_stored();
        (s.kind, s.data)
    }

    /// Each event is stored as herald always stored it.
    #[test]
    fn events_are_stored_as_they_always_were() {
        let uuid: Uuid = "0190b2a4-5c1e-7c3a-9b7e-2f4c1d2e3f40".parse().unwrap();
        let cases = [
            (SessionEvent::Queued, "queued", None),
            (SessionEvent::Dispatched, "dispatched", None),
            (SessionEvent::Ringing, "ringing", Some(Value::Null)),
            (
                SessionEvent::CallStatus {
                    status: CallFailure::Busy,
                },
                "call_status",
                Some(json!({"status": "busy"})),
            ),
            (
                SessionEvent::Answered {
                    by: AnsweredBy::Person,
                },
                "answered",
                Some(json!({"by": "person"})),
            ),
            (
                SessionEvent::Hangup { reason: None },
                "hangup",
                Some(Value::Null),
            ),
            (
                SessionEvent::Hangup {
                    reason: Some("answering machine".into()),
                },
                "hangup",
                Some(json!({"reason": "answering machine"})),
            ),
            (
                SessionEvent::MessageSent {
                    message_uuid: uuid,
                    content: ShownContent::Text("Hi".into()),
                },
                "message_sent",
                Some(json!({"message_uuid": uuid, "content": {"text": "Hi"}})),
            ),
            (
                SessionEvent::MessageSent {
                    message_uuid: uuid,
                    content: ShownContent::Template(json!({"template": "t"})),
                },
                "message_sent",
                Some(json!({"message_uuid": uuid, "content": {"template": {"template": "t"}}})),
            ),
            (
                SessionEvent::InputReceived {
                    input: "dtmf".into(),
                    text: "1".into(),
                },
                "input_received",
                Some(json!({"input": "dtmf", "text": "1"})),
            ),
            (
                SessionEvent::Ended {
                    outcome: Outcome::Completed,
                    reason: None,
                },
                "ended",
                Some(json!({"outcome": "completed"})),
            ),
            (
                SessionEvent::Ended {
                    outcome: Outcome::Failed,
                    reason: Some(EndReason::SubflowTooDeep),
                },
                "ended",
                Some(json!({"outcome": "failed", "reason": "subflow_too_deep"})),
            ),
            (
                SessionEvent::CallbackFailed {
                    webhook_id: "msg_1".into(),
                    attempts: 3,
                    error: "gave up".into(),
                },
                "callback_failed",
                Some(json!({"webhook_id": "msg_1", "attempts": 3, "error": "gave up"})),
            ),
            (
                SessionEvent::LiveAgentStopped,
                "live_agent_stopped",
                Some(Value::Null),
            ),
            (
                SessionEvent::InboundDeclined,
                "inbound_declined",
                Some(Value::Null),
            ),
        ];
        for (event, kind, data) in cases {
            assert_eq!(stored(&event), (kind.to_owned(), data), "{event:?}");
            assert_eq!(
                SessionEvent::from_stored(&event.to_stored()).unwrap(),
                event
            );
        }
    }

    #[test]
    fn an_unknown_or_malformed_event_is_an_error() {
        for (kind, data) in [
            ("smoke_signal", None),
            ("answered", Some(json!({"by": "ghost"}))),
            ("node_entered", None),
            ("speak", Some(json!("not an object"))),
        ] {
            let stored = StoredEvent {
                kind: kind.into(),
                data,
            };
            assert!(SessionEvent::from_stored(&stored).is_err(), "{kind}");
        }
    }
}

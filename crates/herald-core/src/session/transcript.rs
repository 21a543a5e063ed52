//! The conversation a session's events tell: messages both ways, the nodes
//! entered and the parameters set, in order (`GET /sessions/{id}/transcript`,
//! and what a live agent is handed).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{InputKind, SessionEvent, ShownContent};
use crate::time::rfc3339;

/// One line of a conversation, as `GET /sessions/{id}/transcript` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TranscriptEntry {
    /// Said or sent to the person (`outbound`), or by them (`inbound`).
    Message {
        direction: Direction,
        text: String,
        /// Inbound only: `text`, `dtmf` or `speech`.
        #[serde(skip_serializing_if = "Option::is_none")]
        input: Option<String>,
        timestamp: String,
    },
    /// The flow entered a node.
    Node { node: String, timestamp: String },
    /// A parameter changed.
    Parameter {
        name: String,
        value: String,
        timestamp: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Outbound,
    Inbound,
}

/// The transcript of `events` (each with the time it happened); events
/// that are not part of the conversation are left out.
pub fn transcript<'a>(
    events: impl IntoIterator<Item = (&'a SessionEvent, DateTime<Utc>)>,
) -> Vec<TranscriptEntry> {
    events
        .into_iter()
        .filter_map(|(event, at)| {
            let timestamp = rfc3339(at);
            match event {
                SessionEvent::Speak { text } => Some(TranscriptEntry::Message {
                    direction: Direction::Outbound,
                    text: text.clone(),
                    input: None,
                    timestamp,
                }),
                // A template's text is filled in by WhatsApp; the transcript
                // shows text messages only.
                SessionEvent::MessageSent {
                    content: ShownContent::Text(text),
                    ..
                } => Some(TranscriptEntry::Message {
                    direction: Direction::Outbound,
                    text: text.clone(),
                    input: None,
                    timestamp,
                }),
                SessionEvent::InputReceived { input, text } => {
                    // A live agent's words reach the person as a message of
                    // their own, shown there.
                    if input
                        .parse::<InputKind>()
                        .is_ok_and(InputKind::is_live_agent)
                    {
                        return None;
                    }
                    Some(TranscriptEntry::Message {
                        direction: Direction::Inbound,
                        text: text.clone(),
                        input: Some(input.clone()),
                        timestamp,
                    })
                }
                SessionEvent::NodeEntered { node } => Some(TranscriptEntry::Node {
                    node: node.clone(),
                    timestamp,
                }),
                SessionEvent::ParameterSet { name, value } => Some(TranscriptEntry::Parameter {
                    name: name.clone(),
                    value: value.clone(),
                    timestamp,
                }),
                _ => None,
            }
        })
        .collect()
}

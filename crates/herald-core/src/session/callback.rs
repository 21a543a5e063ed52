//! What a session reports to its `status_url` (CONTRACT §5.1, §5.2): the
//! bodies of the callbacks, field for field.
//!
//! Fields are declared in alphabetical order, the order in which a body
//! was always written, so that a body is the same bytes it always was.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{MessageStatus, Outcome};
use crate::{AgentId, Channel, SessionId};

/// A voice callback: the call ended without a conversation (`busy`,
/// `rejected`, `timeout`, `failed`, `cancelled`), or an answering machine
/// picked up and herald hung up (`machine`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoiceCallback {
    pub agent_id: AgentId,
    /// `CON-` and a UUID (CONTRACT §1.6).
    pub conversation_uuid: String,
    pub status: Outcome,
    /// RFC 3339 with milliseconds.
    pub timestamp: String,
    pub to: String,
}

/// A messaging callback: one status of one outbound message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageCallback {
    pub agent_id: AgentId,
    pub channel: Channel,
    pub message_uuid: Uuid,
    pub session_id: SessionId,
    pub status: MessageStatus,
    /// RFC 3339 with milliseconds.
    pub timestamp: String,
    pub to: String,
}

/// A callback body of either kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Callback {
    Voice(VoiceCallback),
    Message(MessageCallback),
}

impl Callback {
    /// The body as it is sent (and signed).
    pub fn body(&self) -> String {
        serde_json::to_string(self).expect("a callback serialises")
    }
}

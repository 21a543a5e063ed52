//! The records the store reads and writes.

use chrono::{DateTime, Utc};
use herald_core::flow::FlowDefinition;
use herald_core::keys::KeyHash;
use herald_core::session::SessionParameters;
use herald_core::session::{Outcome, SessionStatus};
use herald_core::{AccountId, AgentId, Channel, Region, SessionId};

#[derive(Debug, Clone)]
pub struct KeyRow {
    pub hash: KeyHash,
    pub account_id: AccountId,
    pub revoked: bool,
}

#[derive(Debug, Clone)]
pub struct AccountRow {
    pub id: AccountId,
    pub name: String,
    pub webhook_secret: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Revisions {
    pub keys: i64,
    pub agents: i64,
    pub limits: i64,
}

#[derive(Debug, Clone)]
pub struct NewAgent {
    pub account_id: AccountId,
    pub name: String,
    pub channel: Channel,
    pub number: String,
    pub region: Region,
    pub flow: FlowDefinition,
}

#[derive(Debug, Clone, Default)]
pub struct AgentPatch {
    pub name: Option<String>,
    pub number: Option<String>,
    pub flow: Option<FlowDefinition>,
}

/// An agent's draft, with the number of its current published version.
#[derive(Debug, Clone)]
pub struct Agent {
    pub agent_id: AgentId,
    pub account_id: AccountId,
    pub name: String,
    pub channel: Channel,
    pub number: String,
    pub region: Region,
    pub flow: FlowDefinition,
    pub current_version: Option<u32>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// An immutable published snapshot.
#[derive(Debug, Clone)]
pub struct AgentVersion {
    pub agent_id: AgentId,
    pub version: u32,
    pub name: String,
    pub channel: Channel,
    pub number: String,
    pub region: Region,
    pub flow: FlowDefinition,
    pub published_at: DateTime<Utc>,
}

/// A live agent as the trigger path sees it.
#[derive(Debug, Clone)]
pub struct AgentIndexRow {
    pub agent_id: AgentId,
    pub account_id: AccountId,
    pub channel: Channel,
    pub region: Region,
    /// The current published version and its number, if published.
    pub published: Option<(u32, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub namespace: String,
    pub name: String,
    pub locale: String,
    pub header: Option<String>,
    pub body: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct NewSession {
    pub id: SessionId,
    pub account_id: AccountId,
    pub agent_id: AgentId,
    pub agent_version: u32,
    pub channel: Channel,
    pub to: String,
    pub from: String,
    pub status_url: Option<String>,
    pub hangup_on_machine: bool,
    pub parameters: SessionParameters,
    /// The WhatsApp template message the trigger asked for.
    pub whatsapp: Option<serde_json::Value>,
    pub created_at: DateTime<Utc>,
    pub idempotency: Option<NewIdempotency>,
    /// Started by the person's message rather than by a trigger.
    pub inbound: bool,
    /// The message that started an inbound session, stored as the
    /// session's first input in the same transaction.
    pub first_input: Option<NewInput>,
}

#[derive(Debug, Clone)]
pub struct NewIdempotency {
    pub key: String,
    pub request_hash: [u8; 32],
    /// The response body to answer replays with.
    pub response: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotentResponse {
    pub request_hash: [u8; 32],
    pub response: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    Stored,
    /// Another request with the same idempotency key committed first.
    Duplicate(IdempotentResponse),
}

#[derive(Debug, Clone)]
pub struct SessionRecord {
    pub id: SessionId,
    pub account_id: AccountId,
    pub agent_id: AgentId,
    pub agent_version: u32,
    pub channel: Channel,
    pub to: String,
    pub from: String,
    pub status: SessionStatus,
    pub outcome: Option<Outcome>,
    pub status_url: Option<String>,
    pub hangup_on_machine: bool,
    pub parameters: SessionParameters,
    pub whatsapp: Option<serde_json::Value>,
    pub conversation_uuid: Option<String>,
    pub created_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    /// Started by the person's message rather than by a trigger.
    pub inbound: bool,
    /// The flow runtime's state as of the last step, `None` before the
    /// session's first step. The store keeps it as opaque JSON.
    pub flow_state: Option<serde_json::Value>,
    /// Filled by [`crate::Store::session`]; empty in listings.
    pub events: Vec<SessionEvent>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SessionEvent {
    pub kind: String,
    pub at: DateTime<Utc>,
    pub data: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default)]
pub struct SessionFilter {
    pub agent_id: Option<AgentId>,
    pub status: Option<SessionStatus>,
    pub limit: usize,
    /// Only sessions older than this one (the cursor).
    pub before: Option<SessionId>,
}

#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Makes re-recording the same step a no-op; `None` always records.
    pub key: Option<String>,
    pub kind: String,
    pub at: DateTime<Utc>,
    pub data: Option<serde_json::Value>,
}

#[derive(Debug, Clone)]
pub struct NewCallback {
    /// Unique within the session: re-enqueueing the same callback is a no-op.
    pub dedupe_key: String,
    pub webhook_id: String,
    pub account_id: AccountId,
    pub url: String,
    pub body: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default)]
pub struct SessionUpdate {
    pub status: Option<SessionStatus>,
    pub outcome: Option<Outcome>,
    pub ended_at: Option<DateTime<Utc>>,
    pub conversation_uuid: Option<String>,
    pub events: Vec<NewEvent>,
    pub callbacks: Vec<NewCallback>,
    /// Remove the session's dispatch job: its work is done.
    pub finish_dispatch: bool,
    /// The flow runtime's state after this step.
    pub flow_state: Option<serde_json::Value>,
    /// The id of the last input this step consumed: inputs up to it are
    /// done with.
    pub inputs_consumed: Option<i64>,
    /// Put the session's job to sleep until this time and give up its
    /// lease (the session waits; [`crate::Store::deliver_input`] wakes it
    /// sooner). If an input newer than `inputs_consumed` has arrived
    /// meanwhile, the job is due at once instead, so no input is left
    /// unhandled.
    pub wake_at: Option<DateTime<Utc>>,
    /// The dispatch lease the update is made under. When given, nothing is
    /// written unless the job still carries this lease
    /// ([`crate::StoreError::LeaseLost`]).
    pub lease: Option<LeaseToken>,
}

/// Names one claim of a piece of leased work. Every claim draws a new
/// token, and a write made under a lease names its token: once the lease has
/// run out and another worker has claimed the work, the first worker's
/// writes are refused instead of interleaving with the second's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseToken(pub i64);

impl LeaseToken {
    pub fn generate() -> Self {
        // The low half of a random UUID: 64 random bits but for six fixed
        // ones, plenty to tell claims apart. Its top bits are the variant
        // (0b10), so it is negative: never 0, the token of a job that no
        // worker holds (a new job, or one put to sleep).
        LeaseToken(uuid::Uuid::new_v4().as_u64_pair().1 as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drawn_lease_token_is_never_that_of_an_unheld_job() {
        for _ in 0..10_000 {
            assert!(LeaseToken::generate().0 < 0);
        }
    }
}

/// A dispatch job claimed by a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DispatchLease {
    pub session_id: SessionId,
    /// The session's account, whose share of places the job takes.
    pub account_id: AccountId,
    pub token: LeaseToken,
}

#[derive(Debug, Clone)]
pub struct DueCallback {
    pub id: i64,
    pub lease: LeaseToken,
    pub webhook_id: String,
    pub session_id: SessionId,
    pub account_id: AccountId,
    pub url: String,
    pub body: String,
    /// Attempts made before this one.
    pub attempts: u32,
}

/// What became of one delivery attempt. It is recorded only while the
/// attempt's lease is still held; otherwise another worker owns the
/// callback now and its record wins.
#[derive(Debug, Clone)]
pub struct Settlement {
    pub id: i64,
    pub lease: LeaseToken,
    /// Attempts made, this one included.
    pub attempts: u32,
    pub at: DateTime<Utc>,
    pub verdict: Verdict,
}

#[derive(Debug, Clone)]
pub enum Verdict {
    Delivered,
    Retry {
        next_at: DateTime<Utc>,
        error: String,
    },
    /// No more attempts: recorded in the session's events.
    Failed {
        error: String,
    },
}

/// A session that is not over, as [`crate::Store::open_sessions`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenSession {
    pub id: SessionId,
    pub account_id: AccountId,
    pub agent_id: AgentId,
}

/// Something the person (or a live agent) said to an open session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewInput {
    /// `text`, `dtmf`, `speech`, `live_agent_message`,
    /// `live_agent_hand_back` or `live_agent_end`.
    pub kind: String,
    pub text: String,
    pub at: DateTime<Utc>,
}

/// A stored input; ids grow in arrival order within a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputRow {
    pub id: i64,
    pub kind: String,
    pub text: String,
    pub at: DateTime<Utc>,
}

//! The records the store reads and writes.

use chrono::{DateTime, Utc};
use herald_core::campaign::{CampaignState, RecipientState};
use herald_core::flow::FlowDefinition;
use herald_core::keys::KeyHash;
use herald_core::session::event::{BadEvent, StoredEvent};
use herald_core::session::{Outcome, SessionEvent, SessionInput, SessionParameters, SessionStatus};
use herald_core::{AccountId, AgentId, CampaignId, Channel, ConnectionId, Region, SessionId};

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
    pub connections: i64,
}

#[derive(Debug, Clone)]
pub struct NewAgent {
    pub account_id: AccountId,
    pub name: String,
    pub channel: Channel,
    pub number: String,
    pub region: Region,
    pub flow: FlowDefinition,
    /// `None`: the simulator.
    pub connection_id: Option<ConnectionId>,
}

#[derive(Debug, Clone, Default)]
pub struct AgentPatch {
    pub name: Option<String>,
    pub number: Option<String>,
    pub flow: Option<FlowDefinition>,
    /// `Some(None)` moves the agent back to the simulator.
    pub connection_id: Option<Option<ConnectionId>>,
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
    pub connection_id: Option<ConnectionId>,
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
    /// The connection the version's sessions run on; `None`: the simulator.
    pub connection_id: Option<ConnectionId>,
    pub published_at: DateTime<Utc>,
}

/// An account's connection to a channel provider (CONTRACT §10). The
/// store keeps the provider's name and settings as given and the
/// credentials sealed; checking and opening them is the caller's.
#[derive(Debug, Clone)]
pub struct ConnectionRecord {
    pub id: ConnectionId,
    pub account_id: AccountId,
    pub name: String,
    pub provider: String,
    pub settings: serde_json::Map<String, serde_json::Value>,
    /// The credentials, sealed under the operator's key with the
    /// connection's id as their label.
    pub sealed: Vec<u8>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Set once the account deleted it: sessions already under way on it
    /// still find it.
    pub deleted: bool,
}

#[derive(Debug, Clone)]
pub struct NewConnection {
    /// Chosen by the caller, which seals the credentials under it.
    pub id: ConnectionId,
    pub account_id: AccountId,
    pub name: String,
    pub provider: String,
    pub settings: serde_json::Map<String, serde_json::Value>,
    pub sealed: Vec<u8>,
}

#[derive(Debug, Clone, Default)]
pub struct ConnectionPatch {
    pub name: Option<String>,
    pub settings: Option<serde_json::Map<String, serde_json::Value>>,
    pub sealed: Option<Vec<u8>>,
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

/// A campaign as it is created (CONTRACT §12.1): in state `draft`.
#[derive(Debug, Clone)]
pub struct NewCampaign {
    pub id: CampaignId,
    pub account_id: AccountId,
    pub name: String,
    pub agent_id: AgentId,
    pub status_url: Option<String>,
    /// Its schedule, window, pace, retries and WhatsApp template, checked,
    /// as the JSON of the request; the store keeps it as it is.
    pub settings: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CampaignRecord {
    pub id: CampaignId,
    pub account_id: AccountId,
    pub name: String,
    pub agent_id: AgentId,
    pub status_url: Option<String>,
    pub settings: serde_json::Value,
    pub state: CampaignState,
    /// How many recipients it has.
    pub recipients: u32,
    pub created_at: DateTime<Utc>,
    /// When it was first started (or scheduled).
    pub started_at: Option<DateTime<Utc>>,
    /// When it completed or was cancelled.
    pub ended_at: Option<DateTime<Utc>>,
}

/// A recipient as it is added to a campaign, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRecipient {
    /// The number (digits) or, on voice, the SIP URI.
    pub to: String,
    /// The caller's own id of the recipient.
    pub external_id: Option<String>,
    /// The IANA zones its window is read in, `&`-separated.
    pub timezone: Option<String>,
    /// What decided them: `recipient`, `number`, `campaign`, `default`.
    pub zone_source: String,
    pub parameters: SessionParameters,
}

/// Why a recipient of an addition was not stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipientRefusal {
    /// The campaign has one with this `to` already (or the addition had it
    /// twice).
    DuplicateTo,
    DuplicateId,
}

/// What an addition of recipients came to: how many were stored, and the
/// place in the addition of each refused one, with why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecipientsAdded {
    pub accepted: u32,
    pub refused: Vec<(usize, RecipientRefusal)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RecipientRecord {
    pub campaign_id: CampaignId,
    /// Its place in the campaign, from 0, in the order it was added.
    pub n: u32,
    pub to: String,
    pub external_id: Option<String>,
    pub timezone: Option<String>,
    pub zone_source: String,
    pub parameters: SessionParameters,
    pub state: RecipientState,
    /// Sessions started for it so far.
    pub attempts: u32,
    /// When a waiting recipient is due.
    pub next_at: Option<DateTime<Utc>>,
    /// The session of its latest attempt.
    pub session_id: Option<SessionId>,
    pub last_outcome: Option<Outcome>,
    pub skip_reason: Option<String>,
    pub updated_at: DateTime<Utc>,
}

/// A recipient's next state, as the scheduler decides it: written only
/// while the recipient is still in a state it was read in.
#[derive(Debug, Clone, PartialEq)]
pub struct RecipientChange {
    pub state: RecipientState,
    pub next_at: Option<DateTime<Utc>>,
    pub last_outcome: Option<Outcome>,
    pub skip_reason: Option<String>,
}

/// An attempt under way whose session has ended.
#[derive(Debug, Clone, PartialEq)]
pub struct EndedAttempt {
    pub n: u32,
    pub session_id: SessionId,
    pub attempts: u32,
    pub outcome: Outcome,
}

/// A campaign's recipients counted (CONTRACT §12.6).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecipientCounts {
    pub by_state: Vec<(RecipientState, u64)>,
    /// Of the recipients whose last attempt ended, by its outcome.
    pub by_outcome: Vec<(Outcome, u64)>,
    pub by_skip_reason: Vec<(String, u64)>,
    /// Sessions started, over all recipients.
    pub attempts: u64,
}

/// A recipient an account must not contact on a channel (CONTRACT §13).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptOut {
    pub channel: Channel,
    /// The recipient's number (digits, as sessions store it).
    pub to: String,
    /// How it came: `api`, `keyword` (the person's STOP) or `flow` (an
    /// `opt_out` node).
    pub source: String,
    /// The session that heard it, if one did.
    pub session_id: Option<SessionId>,
    pub created_at: DateTime<Utc>,
}

/// Where a page of opt-outs starts: after this channel and recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptOutCursor {
    pub channel: Channel,
    pub to: String,
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
    /// The campaign the session is an attempt of.
    pub campaign_id: Option<CampaignId>,
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
    /// The campaign the session is an attempt of.
    pub campaign_id: Option<CampaignId>,
    /// The flow runtime's state as of the last step, `None` before the
    /// session's first step. The store keeps it as opaque JSON.
    pub flow_state: Option<serde_json::Value>,
    /// Filled by [`crate::SessionStore::session`]; empty in listings.
    pub events: Vec<EventRecord>,
}

/// An event as stored: its kind and its fields, as they were written.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    pub kind: String,
    pub at: DateTime<Utc>,
    pub data: Option<serde_json::Value>,
}

impl EventRecord {
    /// The event itself; an error for a kind this build does not know.
    pub fn event(&self) -> Result<SessionEvent, BadEvent> {
        SessionEvent::from_stored(&StoredEvent {
            kind: self.kind.clone(),
            data: self.data.clone(),
        })
    }
}

#[derive(Debug, Clone, Default)]
pub struct SessionFilter {
    pub agent_id: Option<AgentId>,
    pub campaign_id: Option<CampaignId>,
    pub status: Option<SessionStatus>,
    pub limit: usize,
    /// Only sessions older than this one (the cursor).
    pub before: Option<SessionId>,
}

#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Makes re-recording the same step a no-op; `None` always records.
    pub key: Option<String>,
    pub event: SessionEvent,
    pub at: DateTime<Utc>,
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

/// A session's progress, written in one transaction under the lease of
/// its dispatch job: all of it, or (when the lease is no longer held)
/// nothing.
#[derive(Debug, Clone)]
pub struct SessionUpdate {
    /// The dispatch lease the update is made under. Nothing is written
    /// unless the job still carries it ([`crate::StoreError::LeaseLost`]).
    pub lease: LeaseToken,
    /// What becomes of the session's dispatch job.
    pub job: JobFate,
    /// The session is under way: its first wake reached for the person.
    pub activate: Option<Activation>,
    pub events: Vec<NewEvent>,
    pub callbacks: Vec<NewCallback>,
    /// The driver's state after this step.
    pub flow_state: Option<serde_json::Value>,
    /// The id of the last input this step consumed: inputs up to it are
    /// done with.
    pub inputs_consumed: Option<i64>,
    /// Providers' ids of what the session sent or placed; one already
    /// stored is left as it is.
    pub provider_refs: Vec<ProviderRef>,
}

impl SessionUpdate {
    /// An update under `lease` that only records: the job stays leased.
    pub fn keep(lease: LeaseToken) -> Self {
        SessionUpdate {
            lease,
            job: JobFate::Keep,
            activate: None,
            events: Vec::new(),
            callbacks: Vec::new(),
            flow_state: None,
            inputs_consumed: None,
            provider_refs: Vec::new(),
        }
    }
}

/// A provider's id of a message or call of a session, and what it is
/// within the session (`item`: the driver's name for it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderRef {
    pub connection_id: ConnectionId,
    pub provider_ref: String,
    pub session_id: SessionId,
    pub item: String,
}

/// What becomes of a session's dispatch job after an update.
#[derive(Debug, Clone, PartialEq)]
pub enum JobFate {
    /// The worker goes on: the job stays leased to it.
    Keep,
    /// The session waits: the job sleeps until this time and gives up its
    /// lease ([`crate::SessionStore::deliver_input`] wakes it sooner), and
    /// its count of attempts starts again. If an input newer than
    /// `inputs_consumed` arrived meanwhile, the job is due at once instead,
    /// so that no input is left unhandled.
    SleepUntil(DateTime<Utc>),
    /// The session's work is done: the job goes. With an [`Ending`], the
    /// session ends now; without, it had ended already.
    Finish(Option<Ending>),
    /// The session ends now, but its job sleeps on until `until`, as with
    /// [`JobFate::SleepUntil`], for what providers report late of its
    /// messages.
    EndAndWait {
        ending: Ending,
        until: DateTime<Utc>,
    },
}

/// How and when a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ending {
    pub outcome: Outcome,
    pub at: DateTime<Utc>,
}

/// A session under way: `active`, with its call's conversation uuid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activation {
    pub conversation_uuid: Option<String>,
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
    /// Claims of the job since the session last went to sleep, this one
    /// included: more than one means earlier runs did not get there.
    pub attempts: u32,
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

/// Something that wakes an open session: the person's words, a provider's
/// report, a live agent's words.
#[derive(Debug, Clone, PartialEq)]
pub struct NewInput {
    pub input: SessionInput,
    pub at: DateTime<Utc>,
    /// The input's key, if it may be delivered more than once (a
    /// provider's report): a second delivery with the key of a stored
    /// input is that input.
    pub dedupe: Option<String>,
}

/// A stored input; ids grow in arrival order within a session.
#[derive(Debug, Clone, PartialEq)]
pub struct InputRow {
    pub id: i64,
    pub input: SessionInput,
    pub at: DateTime<Utc>,
}

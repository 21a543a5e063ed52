//! herald's durable store.
//!
//! Every step of a session that must survive a crash goes through a [`Store`]:
//! the trigger's session and its dispatch job (written together, before the
//! 200), the worker's progress, and the callback outbox. Handlers and workers
//! see only the trait; the backend is chosen by the database URL. SQLite is
//! the embedded default for one server ([`sqlite::SqliteStore`]); PostgreSQL
//! lets any number of servers share one database ([`postgres::PostgresStore`]).

mod model;
pub mod postgres;
mod rows;
pub mod sqlite;
pub mod testing;

pub use model::*;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use herald_core::campaign::{CampaignState, RecipientState};
use herald_core::keys::KeyHash;
use herald_core::{AccountId, AgentId, CampaignId, Channel, ConnectionId, SessionId};

/// The conflict message of an agent number already in use (CONTRACT §4.2).
fn number_taken(number: &str, channel: herald_core::Channel) -> String {
    format!("Number {number} is already used by another {channel} agent in this region")
}

/// The conflict message of a connection still in use.
fn connection_in_use(connection: &ConnectionId, agent: &str) -> String {
    format!(
        "Connection {connection} is used by agent {agent}; move the agent to another \
         connection (or delete it) first"
    )
}

/// The conflict message of an agent written onto a connection that was
/// deleted meanwhile.
fn connection_gone(connection: &ConnectionId) -> String {
    format!("Connection {connection} was deleted")
}

fn template_taken(t: &Template) -> String {
    format!(
        "Template {} ({}) is already registered in namespace {}",
        t.name, t.locale, t.namespace
    )
}

/// The event that records a callback given up on.
fn callback_failed_event(
    webhook_id: &str,
    attempts: u32,
    error: &str,
    at: DateTime<Utc>,
) -> NewEvent {
    NewEvent {
        key: None,
        event: herald_core::session::SessionEvent::CallbackFailed {
            webhook_id: webhook_id.to_owned(),
            attempts,
            error: error.to_owned(),
        },
        at,
    }
}

/// The most open sessions [`Store::open_sessions`] returns. A number is
/// held by one agent at a time, so between one person and one number there
/// is one open session, or a few after an agent was deleted and replaced.
pub const MAX_OPEN_SESSIONS: usize = 16;

/// The columns of the session row an update sets, however the update
/// says it (see [`SessionUpdate`]).
struct SessionChange {
    status: Option<herald_core::session::SessionStatus>,
    outcome: Option<herald_core::session::Outcome>,
    ended_at: Option<DateTime<Utc>>,
    conversation_uuid: Option<String>,
}

impl SessionChange {
    fn of(u: &SessionUpdate) -> Self {
        use herald_core::session::SessionStatus;
        let ending = match &u.job {
            JobFate::Finish(Some(ending)) | JobFate::EndAndWait { ending, .. } => Some(*ending),
            _ => None,
        };
        SessionChange {
            status: match (&ending, &u.activate) {
                (Some(_), _) => Some(SessionStatus::Ended),
                (None, Some(_)) => Some(SessionStatus::Active),
                (None, None) => None,
            },
            outcome: ending.map(|e| e.outcome),
            ended_at: ending.map(|e| e.at),
            conversation_uuid: u
                .activate
                .as_ref()
                .and_then(|a| a.conversation_uuid.clone()),
        }
    }

    /// Whether the session's row changes at all.
    fn touches_session(&self, u: &SessionUpdate) -> bool {
        self.status.is_some() || u.flow_state.is_some() || u.inputs_consumed.is_some()
    }
}

/// How long an idempotency key answers with its first response (CONTRACT §2.4).
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness rule refused the write; the text says which.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A write under a lease that is no longer held: the work was claimed
    /// by another worker after the lease ran out.
    #[error("the lease on this work is no longer held")]
    LeaseLost,
    /// A stored row this build cannot read (written by a newer herald, or
    /// damaged): reading it again will not help.
    #[error("unreadable: {0}")]
    Unreadable(String),
    /// Anything else: the backend failed. Never shown to clients.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Opens the store a database URL names: `sqlite://path` (or a bare path), or
/// `postgres://user@host/db` (`postgresql://` too).
pub async fn open(url: &str, options: &StoreOptions) -> anyhow::Result<Arc<dyn Store>> {
    if let Some(path) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    {
        return Ok(Arc::new(sqlite::SqliteStore::open(path, options).await?));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Arc::new(postgres::PostgresStore::open(url, options).await?));
    }
    if let Some((scheme, _)) = url.split_once("://") {
        // Only the scheme: the rest may hold a password.
        anyhow::bail!(
            "unsupported database URL scheme {scheme:?}: expected sqlite://PATH or \
             postgres://USER@HOST/DB"
        );
    }
    Ok(Arc::new(sqlite::SqliteStore::open(url, options).await?))
}

#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Wait for the disk to confirm each commit (SQLite `synchronous=FULL`,
    /// PostgreSQL `synchronous_commit=on`). Turning it off keeps commits safe
    /// from a crash of herald but not from a power cut (or, with PostgreSQL,
    /// a crash of the database host).
    pub durable: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { durable: true }
    }
}

/// Accounts and their API keys.
#[async_trait]
pub trait AccountStore: Send + Sync + 'static {
    /// Stores a key for the account called `name`, creating the account (and
    /// its webhook secret) if it is new.
    async fn add_key(&self, account: &str, hash: KeyHash) -> Result<AccountId>;
    /// Marks a key revoked; false if no such key.
    async fn revoke_key(&self, hash: KeyHash) -> Result<bool>;
    async fn keys(&self) -> Result<Vec<KeyRow>>;
    async fn accounts(&self) -> Result<Vec<AccountRow>>;
    /// Counters that change whenever keys, agents or limits change.
    async fn revisions(&self) -> Result<Revisions>;
}

/// Agents, their published versions and rates, and WhatsApp templates.
#[async_trait]
pub trait AgentStore: Send + Sync + 'static {
    async fn create_agent(&self, agent: NewAgent) -> Result<Agent>;
    async fn agents(&self, account: AccountId) -> Result<Vec<Agent>>;
    async fn agent(&self, account: AccountId, id: &AgentId) -> Result<Option<Agent>>;
    async fn update_agent(
        &self,
        account: AccountId,
        id: &AgentId,
        patch: AgentPatch,
    ) -> Result<Option<Agent>>;
    async fn delete_agent(&self, account: AccountId, id: &AgentId) -> Result<bool>;
    /// Snapshots the draft as the next version; `None` if there is no such agent.
    async fn publish_agent(&self, account: AccountId, id: &AgentId) -> Result<Option<u32>>;
    async fn agent_version(&self, id: &AgentId, version: u32) -> Result<Option<AgentVersion>>;
    /// What the trigger path needs to know of every live agent.
    async fn agent_index(&self) -> Result<Vec<AgentIndexRow>>;
    async fn set_rate(&self, id: &AgentId, rate: u32) -> Result<bool>;
    async fn rates(&self) -> Result<Vec<(AgentId, u32)>>;

    async fn create_template(&self, account: AccountId, template: Template) -> Result<()>;
    async fn templates(&self, account: AccountId) -> Result<Vec<Template>>;
    async fn template(
        &self,
        account: AccountId,
        namespace: &str,
        name: &str,
        locale: &str,
    ) -> Result<Option<Template>>;
}

/// Accounts' connections to channel providers (CONTRACT §10). The store
/// keeps credentials as it is given them, sealed; it never sees them in the
/// clear.
#[async_trait]
pub trait ConnectionStore: Send + Sync + 'static {
    async fn create_connection(&self, connection: NewConnection) -> Result<ConnectionRecord>;
    /// The account's connections, oldest first; deleted ones are left out.
    async fn connections(&self, account: AccountId) -> Result<Vec<ConnectionRecord>>;
    async fn connection(
        &self,
        account: AccountId,
        id: &ConnectionId,
    ) -> Result<Option<ConnectionRecord>>;
    /// A connection by its id alone, deleted or not: what a provider's
    /// webhook or a session under way runs on.
    async fn connection_for_work(&self, id: &ConnectionId) -> Result<Option<ConnectionRecord>>;
    async fn update_connection(
        &self,
        account: AccountId,
        id: &ConnectionId,
        patch: ConnectionPatch,
    ) -> Result<Option<ConnectionRecord>>;
    /// Deletes a connection no live agent uses (its draft or its published
    /// version); one in use is a [`StoreError::Conflict`] naming the agent.
    async fn delete_connection(&self, account: AccountId, id: &ConnectionId) -> Result<bool>;
    /// Every connection of every account, deleted ones too: what the key
    /// must open for the server to start.
    async fn all_connections(&self) -> Result<Vec<ConnectionRecord>>;
}

/// Campaigns and their recipients (CONTRACT §12). Every change of a
/// recipient is conditional on the state it was read in, so that servers
/// scheduling one campaign together never do one thing twice: above all,
/// an attempt's session is created in the same transaction that counts the
/// attempt, and only if the count is still the one read.
#[async_trait]
pub trait CampaignStore: Send + Sync + 'static {
    async fn create_campaign(&self, campaign: NewCampaign) -> Result<CampaignRecord>;
    async fn campaign(&self, account: AccountId, id: &CampaignId)
        -> Result<Option<CampaignRecord>>;
    /// The account's campaigns, newest first.
    async fn campaigns(&self, account: AccountId) -> Result<Vec<CampaignRecord>>;
    /// Every campaign that is scheduled, running or paused, or cancelled
    /// with attempts still under way, of every account: what the scheduler
    /// works on.
    async fn live_campaigns(&self) -> Result<Vec<CampaignRecord>>;
    /// Moves the campaign to `to` if it is in one of `from`; `None` when it
    /// is not (or there is no such campaign). `at` is when it started, for
    /// a first start, or ended, for a final state.
    async fn set_campaign_state(
        &self,
        account: AccountId,
        id: &CampaignId,
        from: &[CampaignState],
        to: CampaignState,
        at: DateTime<Utc>,
    ) -> Result<Option<CampaignRecord>>;
    /// Adds recipients, after those it has, in one transaction; one whose
    /// `to` or `external_id` the campaign has already (or the addition has
    /// earlier) is refused, and the rest are stored. More than `max_total`
    /// in all refuses the whole addition ([`StoreError::Conflict`]).
    async fn add_recipients(
        &self,
        campaign: &CampaignId,
        recipients: Vec<NewRecipient>,
        max_total: u32,
    ) -> Result<RecipientsAdded>;
    async fn recipient_counts(&self, campaign: &CampaignId) -> Result<RecipientCounts>;
    /// Up to `limit` recipients after the `n`th, in order; of one state if
    /// `state` says.
    async fn recipients(
        &self,
        campaign: &CampaignId,
        state: Option<RecipientState>,
        after: Option<u32>,
        limit: usize,
    ) -> Result<Vec<RecipientRecord>>;
    /// Up to `limit` recipients due at `now`: those waiting whose `next_at`
    /// has come, the longest due first, then those pending, in order.
    async fn due_recipients(
        &self,
        campaign: &CampaignId,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<RecipientRecord>>;
    /// How many of its recipients are in progress.
    async fn recipients_in_progress(&self, campaign: &CampaignId) -> Result<u32>;
    /// Whether any of its recipients is pending, waiting or in progress:
    /// whether the campaign has anything left to do.
    async fn has_open_recipients(&self, campaign: &CampaignId) -> Result<bool>;
    /// Starts attempt `attempts + 1` of the `n`th recipient, which must
    /// still be due with `attempts` made: in one transaction, the
    /// recipient is counted in progress with the session, and the session
    /// is stored with its dispatch job. False, and nothing written, when
    /// the recipient is no longer so (another server started it).
    async fn start_attempt(
        &self,
        campaign: &CampaignId,
        n: u32,
        attempts: u32,
        session: NewSession,
    ) -> Result<bool>;
    /// Changes the `n`th recipient, due with `attempts` made, as `change`
    /// says (it waits, is skipped or expires); false when it is no longer
    /// due with that count.
    async fn defer_recipient(
        &self,
        campaign: &CampaignId,
        n: u32,
        attempts: u32,
        change: RecipientChange,
    ) -> Result<bool>;
    /// Up to `limit` recipients in progress whose attempt's session has
    /// ended.
    async fn ended_attempts(
        &self,
        campaign: &CampaignId,
        limit: usize,
    ) -> Result<Vec<EndedAttempt>>;
    /// Settles the `n`th recipient's ended attempt (its session
    /// `session_id`) as `change` says; false when it was settled already.
    async fn settle_attempt(
        &self,
        campaign: &CampaignId,
        n: u32,
        session_id: SessionId,
        change: RecipientChange,
    ) -> Result<bool>;
    /// Moves every recipient still pending or waiting to `to` (expired,
    /// cancelled, or skipped for `skip_reason`); how many.
    async fn close_recipients(
        &self,
        campaign: &CampaignId,
        to: RecipientState,
        skip_reason: Option<&str>,
    ) -> Result<u64>;
}

/// The recipients each account must not contact, per channel (CONTRACT
/// §13).
#[async_trait]
pub trait OptOutStore: Send + Sync + 'static {
    /// Adds the recipient to the account's opt-outs; false (and the first
    /// one kept as it was) if it was there already.
    async fn add_opt_out(&self, account: AccountId, opt_out: OptOut) -> Result<bool>;
    /// Takes the recipient off; false if it was not there.
    async fn remove_opt_out(&self, account: AccountId, channel: Channel, to: &str) -> Result<bool>;
    /// The recipient's opt-out of the channel, if it opted out: what every
    /// trigger asks, so it is a point read.
    async fn opt_out(
        &self,
        account: AccountId,
        channel: Channel,
        to: &str,
    ) -> Result<Option<OptOut>>;
    /// Up to `limit` opt-outs, by channel then recipient, after `after`;
    /// of one channel if `channel` says.
    async fn opt_outs(
        &self,
        account: AccountId,
        channel: Option<Channel>,
        after: Option<OptOutCursor>,
        limit: usize,
    ) -> Result<Vec<OptOut>>;
}

/// Sessions: stored by triggers, read by the API, and the inputs that
/// reach them.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Stores a session, its first event and its dispatch job in one
    /// transaction, with the idempotency record if there is one. When the
    /// same idempotency key was committed first by another request, nothing
    /// is written and the stored response comes back instead.
    async fn create_session(&self, session: NewSession) -> Result<Created>;
    /// An idempotency key's stored response, if younger than `max_age`.
    async fn idempotent_response(
        &self,
        account: AccountId,
        key: &str,
        max_age: Duration,
    ) -> Result<Option<IdempotentResponse>>;
    /// Forgets idempotency keys older than `max_age`; returns how many.
    async fn purge_idempotency(&self, max_age: Duration) -> Result<usize>;
    async fn session(&self, account: AccountId, id: SessionId) -> Result<Option<SessionRecord>>;
    async fn sessions(
        &self,
        account: AccountId,
        filter: SessionFilter,
    ) -> Result<Vec<SessionRecord>>;
    /// A session by id alone, for workers.
    async fn session_for_work(&self, id: SessionId) -> Result<Option<SessionRecord>>;

    /// Stores an input for a session that is still open (its job exists)
    /// and makes the job due at once, in one transaction. `None` when the
    /// session has ended (nothing is stored). An input whose `dedupe` key
    /// a stored input of the session has is not stored again: the answer
    /// is that input's id.
    async fn deliver_input(&self, session: SessionId, input: NewInput) -> Result<Option<i64>>;
    /// The session and item a provider's id names, on a connection.
    async fn provider_ref(
        &self,
        connection: &ConnectionId,
        provider_ref: &str,
    ) -> Result<Option<ProviderRef>>;
    /// The providers' ids of everything a session sent or placed.
    async fn session_provider_refs(&self, session: SessionId) -> Result<Vec<ProviderRef>>;
    /// The session's inputs with an id above `after`, oldest first; an
    /// error if one cannot be read.
    async fn pending_inputs(&self, session: SessionId, after: i64) -> Result<Vec<InputRow>>;
    /// The sessions of `channel` that are not over between the person `to`
    /// and the agent number `from`, newest first (at most
    /// [`MAX_OPEN_SESSIONS`]), with the account and agent of each, so that
    /// the caller can route a reply to the one it may reach.
    async fn open_sessions(
        &self,
        channel: herald_core::Channel,
        to: &str,
        from: &str,
    ) -> Result<Vec<OpenSession>>;
}

/// The dispatch queue: a job per open session, leased to the worker that
/// runs it, and the session's progress written under that lease.
#[async_trait]
pub trait DispatchQueue: Send + Sync + 'static {
    /// Leases up to `limit` due dispatch jobs until `now + lease`. A job is
    /// due when its lease (if any) has run out, so a job held by a live
    /// worker is never handed to a second one. Jobs of the accounts in
    /// `skip_accounts` are passed over: they have their share of the
    /// claimer's places already.
    async fn claim_dispatches(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
        limit: usize,
        skip_accounts: &[AccountId],
    ) -> Result<Vec<DispatchLease>>;
    /// Leases the job of one session until `now + lease`, whenever it is
    /// due, if no one holds it: a provider's request that steps the
    /// session at once (a voice webhook) runs under it. `None` while
    /// another worker holds the job, or when the session has none (it is
    /// over). The job's attempts are not counted on.
    async fn claim_session(
        &self,
        session: SessionId,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<Option<DispatchLease>>;
    /// Extends a lease still held; false if it was lost (the job was claimed
    /// again, or finished), in which case the worker must stop.
    async fn renew_dispatch(&self, lease: DispatchLease, until: DateTime<Utc>) -> Result<bool>;
    /// Gives dispatch jobs back before their lease runs out (a graceful
    /// shutdown), so another worker need not wait for the lease. Leases no
    /// longer held are left alone.
    async fn release_dispatches(&self, leases: Vec<DispatchLease>) -> Result<()>;
    /// Gives a job's lease up and makes the job due at `at`, its attempts
    /// counted on: a run that failed for a reason that may pass tries
    /// again then. False if the lease was no longer held.
    async fn retry_dispatch(&self, lease: DispatchLease, at: DateTime<Utc>) -> Result<bool>;
    /// Records a session's progress in one transaction (all of it or, with
    /// a lease that is no longer held, none of it).
    async fn update_session(&self, id: SessionId, update: SessionUpdate) -> Result<()>;
}

/// The callback outbox (CONTRACT §5.4): written with the session's
/// progress, drained by the callback sender.
#[async_trait]
pub trait CallbackOutbox: Send + Sync + 'static {
    /// Leases up to `limit` due callbacks, at most one per session (the
    /// oldest pending), so that a session's callbacks go out in order.
    async fn claim_callbacks(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<DueCallback>>;
    async fn settle_callbacks(&self, settlements: Vec<Settlement>) -> Result<()>;
    /// Gives leased callbacks back (a graceful shutdown).
    async fn release_callbacks(&self, leases: Vec<(i64, LeaseToken)>) -> Result<()>;
    /// The earliest time a pending callback falls due, if any.
    async fn next_callback_due(&self) -> Result<Option<DateTime<Utc>>>;
}

/// The whole store: every part, on one backend. Workers take the part they
/// use (an `Arc<dyn Store>` coerces to an `Arc<dyn DispatchQueue>`, say).
pub trait Store:
    AccountStore
    + AgentStore
    + ConnectionStore
    + CampaignStore
    + OptOutStore
    + SessionStore
    + DispatchQueue
    + CallbackOutbox
{
}

impl<T> Store for T where
    T: AccountStore
        + AgentStore
        + ConnectionStore
        + CampaignStore
        + OptOutStore
        + SessionStore
        + DispatchQueue
        + CallbackOutbox
{
}

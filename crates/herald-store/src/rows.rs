//! Rows to records, once for both backends.
//!
//! Each backend reads a row's columns by name through [`Columns`]; the
//! records (agents, versions, templates, sessions, events, inputs, leases)
//! are built from them here, so that the two stores cannot drift apart in
//! how they read what they wrote. The column lists the queries select are
//! here too, beside the code that reads them.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use herald_core::flow::FlowDefinition;
use herald_core::session::Outcome;
use herald_core::time::{from_micros, to_micros};

use crate::*;

/// The columns of `agents` that [`agent`] reads.
pub(crate) const AGENT_COLUMNS: &str = "agent_id, account_id, name, channel, number, region, \
     flow, current_version, created_at, updated_at, connection_id";

/// The columns of `agent_versions` that [`agent_version`] reads.
pub(crate) const VERSION_COLUMNS: &str =
    "agent_id, version, name, channel, number, region, flow, published_at, connection_id";

/// The columns of `connections` that [`connection`] reads.
pub(crate) const CONNECTION_COLUMNS: &str =
    "id, account_id, name, provider, settings, credentials, created_at, updated_at, deleted_at";

/// The columns of `sessions` that [`session`] reads.
pub(crate) const SESSION_COLUMNS: &str = "id, account_id, agent_id, agent_version, channel, \
     to_addr, from_number, status, outcome, status_url, hangup_on_machine, parameters, whatsapp, \
     conversation_uuid, created_at, ended_at, inbound, campaign_id";

/// The columns of `whatsapp_templates` that [`template`] reads.
pub(crate) const TEMPLATE_COLUMNS: &str = "namespace, name, locale, header, body, created_at";

/// A row as a backend reads it, by column name.
pub(crate) trait Columns {
    fn opt_text(&self, column: &str) -> Result<Option<String>>;
    fn opt_int(&self, column: &str) -> Result<Option<i64>>;
    fn flag(&self, column: &str) -> Result<bool>;
    fn bytes(&self, column: &str) -> Result<Vec<u8>>;
}

/// A column that holds what it should not.
pub(crate) fn bad_value(column: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(anyhow::anyhow!("column {column}: {detail}"))
}

pub(crate) fn text(row: &impl Columns, column: &str) -> Result<String> {
    row.opt_text(column)?
        .ok_or_else(|| bad_value(column, "unexpected NULL"))
}

pub(crate) fn int(row: &impl Columns, column: &str) -> Result<i64> {
    row.opt_int(column)?
        .ok_or_else(|| bad_value(column, "unexpected NULL"))
}

pub(crate) fn small(row: &impl Columns, column: &str) -> Result<u32> {
    u32::try_from(int(row, column)?).map_err(|e| bad_value(column, e))
}

pub(crate) fn opt_small(row: &impl Columns, column: &str) -> Result<Option<u32>> {
    row.opt_int(column)?
        .map(u32::try_from)
        .transpose()
        .map_err(|e| bad_value(column, e))
}

pub(crate) fn parsed<T: FromStr>(row: &impl Columns, column: &str) -> Result<T> {
    let text = text(row, column)?;
    text.parse()
        .map_err(|_| bad_value(column, format_args!("unexpected value {text:?}")))
}

pub(crate) fn opt_parsed<T: FromStr>(row: &impl Columns, column: &str) -> Result<Option<T>> {
    row.opt_text(column)?
        .map(|text| {
            text.parse()
                .map_err(|_| bad_value(column, format_args!("unexpected value {text:?}")))
        })
        .transpose()
}

pub(crate) fn json<T: serde::de::DeserializeOwned>(row: &impl Columns, column: &str) -> Result<T> {
    serde_json::from_str(&text(row, column)?).map_err(|e| bad_value(column, e))
}

pub(crate) fn opt_json(row: &impl Columns, column: &str) -> Result<Option<serde_json::Value>> {
    row.opt_text(column)?
        .map(|t| serde_json::from_str(&t).map_err(|e| bad_value(column, e)))
        .transpose()
}

pub(crate) fn time(row: &impl Columns, column: &str) -> Result<DateTime<Utc>> {
    Ok(from_micros(int(row, column)?))
}

pub(crate) fn hash(row: &impl Columns, column: &str) -> Result<[u8; 32]> {
    row.bytes(column)?
        .try_into()
        .map_err(|_| bad_value(column, "not 32 bytes"))
}

pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Internal(e.into()))
}

pub(crate) fn now_micros() -> i64 {
    to_micros(Utc::now())
}

/// The revisions of `(kind, rev)` rows.
pub(crate) fn revisions(rows: Vec<(String, i64)>) -> Result<Revisions> {
    let mut revs = Revisions::default();
    for (kind, rev) in rows {
        match kind.as_str() {
            "keys" => revs.keys = rev,
            "agents" => revs.agents = rev,
            "limits" => revs.limits = rev,
            "connections" => revs.connections = rev,
            _ => {}
        }
    }
    Ok(revs)
}

/// A key of `hash, account_id, revoked`.
pub(crate) fn key(row: &impl Columns) -> Result<KeyRow> {
    Ok(KeyRow {
        hash: hash(row, "hash")?,
        account_id: int(row, "account_id")?,
        revoked: row.flag("revoked")?,
    })
}

/// An account of `id, name, webhook_secret`.
pub(crate) fn account(row: &impl Columns) -> Result<AccountRow> {
    Ok(AccountRow {
        id: int(row, "id")?,
        name: text(row, "name")?,
        webhook_secret: text(row, "webhook_secret")?,
    })
}

pub(crate) fn agent(row: &impl Columns) -> Result<Agent> {
    Ok(Agent {
        agent_id: parsed(row, "agent_id")?,
        account_id: int(row, "account_id")?,
        name: text(row, "name")?,
        channel: parsed(row, "channel")?,
        number: text(row, "number")?,
        region: parsed(row, "region")?,
        flow: json::<FlowDefinition>(row, "flow")?,
        connection_id: opt_parsed(row, "connection_id")?,
        current_version: opt_small(row, "current_version")?,
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
    })
}

pub(crate) fn agent_version(row: &impl Columns) -> Result<AgentVersion> {
    Ok(AgentVersion {
        agent_id: parsed(row, "agent_id")?,
        version: small(row, "version")?,
        name: text(row, "name")?,
        channel: parsed(row, "channel")?,
        number: text(row, "number")?,
        region: parsed(row, "region")?,
        flow: json(row, "flow")?,
        connection_id: opt_parsed(row, "connection_id")?,
        published_at: time(row, "published_at")?,
    })
}

pub(crate) fn connection(row: &impl Columns) -> Result<ConnectionRecord> {
    Ok(ConnectionRecord {
        id: parsed(row, "id")?,
        account_id: int(row, "account_id")?,
        name: text(row, "name")?,
        provider: text(row, "provider")?,
        settings: json(row, "settings")?,
        sealed: row.bytes("credentials")?,
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
        deleted: row.opt_int("deleted_at")?.is_some(),
    })
}

/// A live agent of `agent_id, account_id, channel, region, version, number`
/// (its current version's, both NULL until it is published).
pub(crate) fn agent_index(row: &impl Columns) -> Result<AgentIndexRow> {
    let version = opt_small(row, "version")?;
    let number = row.opt_text("number")?;
    Ok(AgentIndexRow {
        agent_id: parsed(row, "agent_id")?,
        account_id: int(row, "account_id")?,
        channel: parsed(row, "channel")?,
        region: parsed(row, "region")?,
        published: version.zip(number),
    })
}

/// A provider's id of `connection_id, provider_ref, session_id, item`.
pub(crate) fn provider_ref(row: &impl Columns) -> Result<ProviderRef> {
    Ok(ProviderRef {
        connection_id: parsed(row, "connection_id")?,
        provider_ref: text(row, "provider_ref")?,
        session_id: parsed(row, "session_id")?,
        item: text(row, "item")?,
    })
}

/// An open session of `id, account_id, agent_id`.
pub(crate) fn open_session(row: &impl Columns) -> Result<OpenSession> {
    Ok(OpenSession {
        id: parsed(row, "id")?,
        account_id: int(row, "account_id")?,
        agent_id: parsed(row, "agent_id")?,
    })
}

pub(crate) fn template(row: &impl Columns) -> Result<Template> {
    Ok(Template {
        namespace: text(row, "namespace")?,
        name: text(row, "name")?,
        locale: text(row, "locale")?,
        header: row.opt_text("header")?,
        body: text(row, "body")?,
        created_at: time(row, "created_at")?,
    })
}

/// The columns [`campaign`] reads, in its order.
pub(crate) const CAMPAIGN_COLUMNS: &str = "id, account_id, name, agent_id, status_url, settings, \
     state, recipients, created_at, started_at, ended_at";

pub(crate) fn campaign(row: &impl Columns) -> Result<CampaignRecord> {
    Ok(CampaignRecord {
        id: parsed(row, "id")?,
        account_id: int(row, "account_id")?,
        name: text(row, "name")?,
        agent_id: parsed(row, "agent_id")?,
        status_url: row.opt_text("status_url")?,
        settings: json(row, "settings")?,
        state: parsed(row, "state")?,
        recipients: small(row, "recipients")?,
        created_at: time(row, "created_at")?,
        started_at: row.opt_int("started_at")?.map(from_micros),
        ended_at: row.opt_int("ended_at")?.map(from_micros),
    })
}

/// Whether a campaign (`?1`) has recipients pending, waiting or in
/// progress: a probe of each state's partial index.
pub(crate) const OPEN_RECIPIENTS: &str = "SELECT \
     EXISTS (SELECT 1 FROM campaign_recipients WHERE campaign_id = ?1 AND state = 'pending') \
     OR EXISTS (SELECT 1 FROM campaign_recipients WHERE campaign_id = ?1 AND state = 'waiting') \
     OR EXISTS (SELECT 1 FROM campaign_recipients WHERE campaign_id = ?1 AND state = 'in_progress')";

/// The columns [`recipient`] reads, in its order.
pub(crate) const RECIPIENT_COLUMNS: &str = "campaign_id, n, recipient, external_id, timezone, \
     zone_source, parameters, state, attempts, next_at, session_id, last_outcome, skip_reason, \
     updated_at";

pub(crate) fn recipient(row: &impl Columns) -> Result<RecipientRecord> {
    Ok(RecipientRecord {
        campaign_id: parsed(row, "campaign_id")?,
        n: small(row, "n")?,
        to: text(row, "recipient")?,
        external_id: row.opt_text("external_id")?,
        timezone: row.opt_text("timezone")?,
        zone_source: text(row, "zone_source")?,
        parameters: json(row, "parameters")?,
        state: parsed(row, "state")?,
        attempts: small(row, "attempts")?,
        next_at: row.opt_int("next_at")?.map(from_micros),
        session_id: opt_parsed(row, "session_id")?,
        last_outcome: opt_parsed(row, "last_outcome")?,
        skip_reason: row.opt_text("skip_reason")?,
        updated_at: time(row, "updated_at")?,
    })
}

/// The columns [`opt_out`] reads, in its order.
pub(crate) const OPT_OUT_COLUMNS: &str = "channel, recipient, source, session_id, created_at";

pub(crate) fn opt_out(row: &impl Columns) -> Result<OptOut> {
    Ok(OptOut {
        channel: parsed(row, "channel")?,
        to: text(row, "recipient")?,
        source: text(row, "source")?,
        session_id: opt_parsed(row, "session_id")?,
        created_at: time(row, "created_at")?,
    })
}

/// A session of [`SESSION_COLUMNS`], without its events or flow state.
pub(crate) fn session(row: &impl Columns) -> Result<SessionRecord> {
    Ok(SessionRecord {
        id: parsed(row, "id")?,
        account_id: int(row, "account_id")?,
        agent_id: parsed(row, "agent_id")?,
        agent_version: small(row, "agent_version")?,
        channel: parsed(row, "channel")?,
        to: text(row, "to_addr")?,
        from: text(row, "from_number")?,
        status: parsed(row, "status")?,
        outcome: row
            .opt_text("outcome")?
            .and_then(|o| o.parse::<Outcome>().ok()),
        status_url: row.opt_text("status_url")?,
        hangup_on_machine: row.flag("hangup_on_machine")?,
        parameters: json(row, "parameters")?,
        whatsapp: opt_json(row, "whatsapp")?,
        conversation_uuid: row.opt_text("conversation_uuid")?,
        created_at: time(row, "created_at")?,
        ended_at: row.opt_int("ended_at")?.map(from_micros),
        events: Vec::new(),
        inbound: row.flag("inbound")?,
        campaign_id: opt_parsed(row, "campaign_id")?,
        flow_state: None,
    })
}

/// A session of [`SESSION_COLUMNS`] and `flow_state`.
pub(crate) fn session_with_state(row: &impl Columns) -> Result<SessionRecord> {
    Ok(SessionRecord {
        flow_state: opt_json(row, "flow_state")?,
        ..session(row)?
    })
}

/// An event of `type, at, data`.
pub(crate) fn event(row: &impl Columns) -> Result<EventRecord> {
    Ok(EventRecord {
        kind: text(row, "type")?,
        at: time(row, "at")?,
        data: opt_json(row, "data")?,
    })
}

/// An input of `id, kind, text, data, at`; one this build cannot read is
/// [`StoreError::Unreadable`], never taken for something else.
pub(crate) fn input(row: &impl Columns) -> Result<InputRow> {
    use herald_core::session::input::BadInput;
    use herald_core::session::{SessionInput, StoredInput};
    let unreadable = |e: BadInput| StoreError::Unreadable(e.to_string());
    let stored = StoredInput {
        kind: text(row, "kind")?.parse().map_err(unreadable)?,
        text: text(row, "text")?,
        data: opt_json(row, "data")?,
    };
    Ok(InputRow {
        id: int(row, "id")?,
        input: SessionInput::from_stored(stored).map_err(unreadable)?,
        at: time(row, "at")?,
    })
}

pub(crate) fn idempotent(row: &impl Columns) -> Result<IdempotentResponse> {
    Ok(IdempotentResponse {
        request_hash: hash(row, "request_hash")?,
        response: text(row, "response")?,
    })
}

/// A job a claim leased, of `session_id, account_id, attempts`.
pub(crate) fn dispatch_lease(row: &impl Columns, token: LeaseToken) -> Result<DispatchLease> {
    Ok(DispatchLease {
        session_id: parsed(row, "session_id")?,
        account_id: int(row, "account_id")?,
        attempts: small(row, "attempts")?,
        token,
    })
}

/// A callback a claim leased, of `id, webhook_id, session_id, account_id,
/// url, body, attempts`.
pub(crate) fn due_callback(row: &impl Columns, lease: LeaseToken) -> Result<DueCallback> {
    Ok(DueCallback {
        id: int(row, "id")?,
        lease,
        webhook_id: text(row, "webhook_id")?,
        session_id: parsed(row, "session_id")?,
        account_id: int(row, "account_id")?,
        url: text(row, "url")?,
        body: text(row, "body")?,
        attempts: small(row, "attempts")?,
    })
}

/// How a settlement leaves its callback's row.
pub(crate) struct SettledRow<'a> {
    pub state: &'static str,
    /// When to try again, if it is to be.
    pub next_at: Option<i64>,
    pub error: Option<&'a str>,
    /// When it stopped being pending, unless it still is.
    pub settled_at: Option<i64>,
}

impl Settlement {
    pub(crate) fn row(&self) -> SettledRow<'_> {
        let (state, next_at, error) = match &self.verdict {
            Verdict::Delivered => ("delivered", None, None),
            Verdict::Retry { next_at, error } => {
                ("pending", Some(to_micros(*next_at)), Some(error.as_str()))
            }
            Verdict::Failed { error } => ("failed", None, Some(error.as_str())),
        };
        SettledRow {
            state,
            next_at,
            error,
            settled_at: (state != "pending").then(|| to_micros(self.at)),
        }
    }
}

/// The one query that counts a campaign's recipients: one pass over its
/// rows, grouped by everything the counts tell apart.
pub(crate) const RECIPIENT_GROUPS: &str =
    "SELECT state, last_outcome, skip_reason, COUNT(*), SUM(attempts) \
     FROM campaign_recipients WHERE campaign_id = $1 \
     GROUP BY state, last_outcome, skip_reason";

/// One row of [`RECIPIENT_GROUPS`]: state, last outcome, skip reason, how
/// many recipients, their attempts.
pub(crate) type RecipientGroup = (String, Option<String>, Option<String>, i64, i64);

/// The counts of a campaign's recipients, from its groups.
pub(crate) fn recipient_counts(
    groups: impl IntoIterator<Item = RecipientGroup>,
) -> Result<RecipientCounts> {
    use std::collections::BTreeMap;
    let mut by_state =
        BTreeMap::<&'static str, (herald_core::campaign::RecipientState, u64)>::new();
    let mut by_outcome = BTreeMap::<&'static str, (Outcome, u64)>::new();
    let mut by_skip_reason = BTreeMap::<String, u64>::new();
    let mut attempts = 0;
    for (state, outcome, reason, count, tried) in groups {
        let count = count as u64;
        let state: herald_core::campaign::RecipientState =
            state.parse().map_err(|_| bad_value("state", &state))?;
        by_state.entry(state.as_str()).or_insert((state, 0)).1 += count;
        if let Some(outcome) = outcome {
            let outcome: Outcome = outcome
                .parse()
                .map_err(|_| bad_value("last_outcome", &outcome))?;
            by_outcome.entry(outcome.as_str()).or_insert((outcome, 0)).1 += count;
        }
        if let Some(reason) = reason {
            *by_skip_reason.entry(reason).or_default() += count;
        }
        attempts += tried as u64;
    }
    Ok(RecipientCounts {
        by_state: by_state.into_values().collect(),
        by_outcome: by_outcome.into_values().collect(),
        by_skip_reason: by_skip_reason.into_iter().collect(),
        attempts,
    })
}

//! The PostgreSQL backend, for any number of herald processes sharing one
//! database.
//!
//! - Every write is one transaction (a single statement, or an explicit
//!   one), committed before the call returns; with [`StoreOptions::durable`]
//!   the commit has also reached the database's disk.
//! - Work is leased with `FOR UPDATE SKIP LOCKED`: servers claiming at the
//!   same time get different jobs without waiting on each other, and a job
//!   is handed out again only once its lease has run out.
//! - Every claim draws a fresh lease token. Writes made under a lease lock
//!   the leased row and check its token in the same transaction, so a worker
//!   whose lease ran out cannot write over the one that took the work up.
//!
//! Connections are not encrypted: this build has no TLS.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use herald_core::campaign::{CampaignState, RecipientState};
use herald_core::keys::{generate_webhook_secret, KeyHash};
use herald_core::secret::redact_url;
use herald_core::session::{Outcome, SessionStatus};
use herald_core::time::{from_micros, to_micros};
use herald_core::{AccountId, AgentId, CampaignId, Channel, ConnectionId, Region, SessionId};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, Executor, PgConnection, Postgres, QueryBuilder, Row};

use crate::rows::{self, AGENT_COLUMNS, SESSION_COLUMNS, TEMPLATE_COLUMNS, VERSION_COLUMNS};
use crate::rows::{now_micros, to_json, CONNECTION_COLUMNS, OPT_OUT_COLUMNS};
use crate::rows::{CAMPAIGN_COLUMNS, OPEN_RECIPIENTS, RECIPIENT_COLUMNS};
use crate::*;

const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/postgres/0001_init.sql"),
    include_str!("../migrations/postgres/0002_conversations.sql"),
    include_str!("../migrations/postgres/0003_tenancy.sql"),
    include_str!("../migrations/postgres/0004_input_data.sql"),
    include_str!("../migrations/postgres/0005_connections.sql"),
    include_str!("../migrations/postgres/0006_provider_reports.sql"),
    include_str!("../migrations/postgres/0007_opt_outs.sql"),
    include_str!("../migrations/postgres/0008_campaigns.sql"),
];

/// The advisory lock migrations run under ("herald" in ASCII). Advisory
/// locks are per database, so stores in different schemas of one database
/// share it; that only makes them migrate one after another.
const MIGRATION_LOCK: i64 = 0x6865_7261_6c64;

/// Per server: enough for its handlers and workers together, and room for
/// a handful of servers under PostgreSQL's default `max_connections` (100).
const MAX_CONNECTIONS: u32 = 16;
/// How long a write waits for a free connection, and opening waits for the
/// server, before failing.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to the database `url` names and brings its schema up to date.
    pub async fn open(url: &str, options: &StoreOptions) -> anyhow::Result<Self> {
        let mut connect = PgConnectOptions::from_str(url).map_err(|e| {
            // sqlx nests its configuration errors; the innermost says what
            // is wrong.
            let mut cause: &dyn std::error::Error = &e;
            while let Some(next) = cause.source() {
                cause = next;
            }
            anyhow::anyhow!("invalid PostgreSQL URL for {}: {cause}", redact_url(url))
        })?;
        if !options.durable {
            // Commits return before their WAL is flushed. The server has
            // them, so a crash of herald loses nothing; a crash of the
            // database host can lose the last few hundred milliseconds.
            connect = connect.options([("synchronous_commit", "off")]);
        }
        // A connection of its own, so that an unreachable server is
        // reported as such (the pool would only say that it timed out).
        let connecting =
            tokio::time::timeout(ACQUIRE_TIMEOUT, PgConnection::connect_with(&connect));
        let mut conn = match connecting.await {
            Ok(connected) => connected.map_err(anyhow::Error::from),
            Err(_) => Err(anyhow::anyhow!("no answer within {ACQUIRE_TIMEOUT:?}")),
        }
        .with_context(|| format!("connecting to PostgreSQL at {}", redact_url(url)))?;
        migrate(&mut conn)
            .await
            .with_context(|| format!("migrating PostgreSQL at {}", redact_url(url)))?;
        conn.close().await?;
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(connect);
        Ok(PostgresStore { pool })
    }
}

async fn migrate(conn: &mut PgConnection) -> anyhow::Result<()> {
    let mut tx = conn.begin().await?;
    // Taken before the version is read and held to the commit: servers (and
    // `herald keys create`) starting together migrate once, in turn.
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await?;
    // Spares the log a notice that the table exists on every start.
    sqlx::raw_sql("SET LOCAL client_min_messages = warning")
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS schema_migrations \
         (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )
    .execute(&mut *tx)
    .await
    .context("creating the schema version table")?;
    let current: i64 =
        sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
            .fetch_one(&mut *tx)
            .await?;
    if current > MIGRATIONS.len() as i64 {
        anyhow::bail!(
            "the database has schema version {current}, newer than this herald knows ({}); \
             upgrade herald",
            MIGRATIONS.len()
        );
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        sqlx::raw_sql(sql)
            .execute(&mut *tx)
            .await
            .with_context(|| format!("applying migration {}", i + 1))?;
        sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
            .bind(i as i64 + 1)
            .bind(now_micros())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

trait SqlResult<T> {
    fn db(self) -> Result<T>;
}

impl<T> SqlResult<T> for Result<T, sqlx::Error> {
    fn db(self) -> Result<T> {
        self.map_err(|e| StoreError::Internal(e.into()))
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|e| e.is_unique_violation())
}

async fn bump(conn: &mut PgConnection, kind: &str) -> Result<()> {
    sqlx::query("UPDATE revisions SET rev = rev + 1 WHERE kind = $1")
        .bind(kind)
        .execute(conn)
        .await
        .db()?;
    Ok(())
}

impl rows::Columns for PgRow {
    fn opt_text(&self, column: &str) -> Result<Option<String>> {
        self.try_get(column).db()
    }

    fn opt_int(&self, column: &str) -> Result<Option<i64>> {
        self.try_get(column).db()
    }

    fn flag(&self, column: &str) -> Result<bool> {
        self.try_get(column).db()
    }

    fn bytes(&self, column: &str) -> Result<Vec<u8>> {
        self.try_get(column).db()
    }
}

/// Whether an agent other than `agent` holds `number` for `channel` in
/// `region` through what it has published or what is still under way (see
/// the SQLite store's `number_held`).
async fn number_held<'c>(
    conn: impl Executor<'c, Database = Postgres>,
    channel: Channel,
    region: Region,
    number: &str,
    agent: &AgentId,
) -> Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM agents a JOIN agent_versions v \
             ON v.agent_id = a.agent_id AND v.version = a.current_version \
           WHERE a.channel = $1 AND a.region = $2 AND a.deleted_at IS NULL \
             AND a.agent_id <> $4 AND v.number = $3) \
         OR EXISTS (SELECT 1 FROM sessions s JOIN agents a ON a.agent_id = s.agent_id \
           WHERE s.channel = $1 AND s.from_number = $3 AND s.status <> 'ended' \
             AND s.agent_id <> $4 AND a.region = $2)",
    )
    .bind(channel.as_str())
    .bind(region.as_str())
    .bind(number)
    .bind(agent.as_str())
    .fetch_one(conn)
    .await
    .db()
}

/// A live agent of the account. `lock` holds its row to the end of the
/// transaction, so that a read-modify-write of the draft is not interleaved
/// with another.
async fn agent_in<'c>(
    conn: impl Executor<'c, Database = Postgres>,
    account: AccountId,
    id: &AgentId,
    lock: bool,
) -> Result<Option<Agent>> {
    let sql = format!(
        "SELECT {AGENT_COLUMNS} FROM agents \
         WHERE agent_id = $1 AND account_id = $2 AND deleted_at IS NULL{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    sqlx::query(&sql)
        .bind(id.as_str())
        .bind(account)
        .fetch_optional(conn)
        .await
        .db()?
        .map(|row| rows::agent(&row))
        .transpose()
}

/// Checks, in a write's transaction, that the account's connection is
/// still there, and holds it so that it cannot be deleted before the write
/// commits (a delete holds it too, then looks for agents that use it).
async fn live_connection(
    conn: &mut PgConnection,
    account: AccountId,
    id: &ConnectionId,
) -> Result<()> {
    let live = sqlx::query(
        "SELECT 1 FROM connections \
         WHERE id = $1 AND account_id = $2 AND deleted_at IS NULL FOR SHARE",
    )
    .bind(id.as_str())
    .bind(account)
    .fetch_optional(conn)
    .await
    .db()?
    .is_some();
    if live {
        Ok(())
    } else {
        Err(StoreError::Conflict(connection_gone(id)))
    }
}

/// A connection: the account's live one, or with `account` `None` any,
/// deleted or not. `lock` holds its row to the end of the transaction.
async fn connection_in<'c>(
    conn: impl Executor<'c, Database = Postgres>,
    account: Option<AccountId>,
    id: &ConnectionId,
    lock: bool,
) -> Result<Option<ConnectionRecord>> {
    let sql = format!(
        "SELECT {CONNECTION_COLUMNS} FROM connections WHERE id = $1 \
         AND ($2::BIGINT IS NULL OR (account_id = $2 AND deleted_at IS NULL)){}",
        if lock { " FOR UPDATE" } else { "" }
    );
    sqlx::query(&sql)
        .bind(id.as_str())
        .bind(account)
        .fetch_optional(conn)
        .await
        .db()?
        .map(|row| rows::connection(&row))
        .transpose()
}

/// Stores an input; returns its id.
async fn insert_input(conn: &mut PgConnection, session: &str, input: &NewInput) -> Result<i64> {
    let stored = input.input.to_stored();
    let data = stored.data.as_ref().map(to_json).transpose()?;
    let inserted: Option<i64> = sqlx::query_scalar(
        "INSERT INTO session_inputs (session_id, kind, text, data, at, dedupe) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (session_id, dedupe) WHERE dedupe IS NOT NULL DO NOTHING RETURNING id",
    )
    .bind(session)
    .bind(stored.kind.as_str())
    .bind(&stored.text)
    .bind(data)
    .bind(to_micros(input.at))
    .bind(&input.dedupe)
    .fetch_optional(&mut *conn)
    .await
    .db()?;
    match inserted {
        Some(id) => Ok(id),
        None => sqlx::query_scalar(
            "SELECT id FROM session_inputs WHERE session_id = $1 AND dedupe = $2",
        )
        .bind(session)
        .bind(&input.dedupe)
        .fetch_one(conn)
        .await
        .db(),
    }
}

async fn insert_provider_ref(conn: &mut PgConnection, r: &ProviderRef) -> Result<()> {
    sqlx::query(
        "INSERT INTO provider_refs (connection_id, provider_ref, session_id, item, created_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
    )
    .bind(r.connection_id.as_str())
    .bind(&r.provider_ref)
    .bind(r.session_id.to_string())
    .bind(&r.item)
    .bind(now_micros())
    .execute(conn)
    .await
    .db()?;
    Ok(())
}

async fn insert_event(conn: &mut PgConnection, session: &str, event: &NewEvent) -> Result<()> {
    let stored = event.event.to_stored();
    let data = stored.data.as_ref().map(to_json).transpose()?;
    sqlx::query(
        "INSERT INTO session_events (session_id, key, type, at, data) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (session_id, key) DO NOTHING",
    )
    .bind(session)
    .bind(&event.key)
    .bind(&stored.kind)
    .bind(to_micros(event.at))
    .bind(data)
    .execute(conn)
    .await
    .db()?;
    Ok(())
}

/// The bodies of the writes that take more than one statement. The trait's
/// methods run them through [`detached`].
impl PostgresStore {
    async fn add_key_now(&self, account: &str, hash: KeyHash) -> Result<AccountId> {
        let mut tx = self.pool.begin().await.db()?;
        let now = now_micros();
        // A concurrent creator of the same account makes this wait for its
        // commit and then do nothing; the SELECT that follows sees its row.
        sqlx::query(
            "INSERT INTO accounts (name, webhook_secret, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(account)
        .bind(generate_webhook_secret())
        .bind(now)
        .execute(&mut *tx)
        .await
        .db()?;
        let id: AccountId = sqlx::query_scalar("SELECT id FROM accounts WHERE name = $1")
            .bind(account)
            .fetch_one(&mut *tx)
            .await
            .db()?;
        sqlx::query("INSERT INTO api_keys (hash, account_id, created_at) VALUES ($1, $2, $3)")
            .bind(&hash[..])
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await
            .db()?;
        bump(&mut tx, "keys").await?;
        tx.commit().await.db()?;
        Ok(id)
    }

    async fn revoke_key_now(&self, hash: KeyHash) -> Result<bool> {
        let mut tx = self.pool.begin().await.db()?;
        let n = sqlx::query(
            "UPDATE api_keys SET revoked_at = $2 WHERE hash = $1 AND revoked_at IS NULL",
        )
        .bind(&hash[..])
        .bind(now_micros())
        .execute(&mut *tx)
        .await
        .db()?
        .rows_affected();
        bump(&mut tx, "keys").await?;
        tx.commit().await.db()?;
        Ok(n > 0)
    }

    async fn create_agent_now(&self, agent: NewAgent) -> Result<Agent> {
        let mut tx = self.pool.begin().await.db()?;
        let now = now_micros();
        let id = AgentId::generate();
        if number_held(&mut *tx, agent.channel, agent.region, &agent.number, &id).await? {
            return Err(StoreError::Conflict(number_taken(
                &agent.number,
                agent.channel,
            )));
        }
        if let Some(connection) = &agent.connection_id {
            live_connection(&mut tx, agent.account_id, connection).await?;
        }
        let inserted = sqlx::query(&format!(
            "INSERT INTO agents ({AGENT_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, $8, $8, $9) RETURNING {AGENT_COLUMNS}"
        ))
        .bind(id.as_str())
        .bind(agent.account_id)
        .bind(&agent.name)
        .bind(agent.channel.as_str())
        .bind(&agent.number)
        .bind(agent.region.as_str())
        .bind(to_json(&agent.flow)?)
        .bind(now)
        .bind(agent.connection_id.as_ref().map(ConnectionId::as_str))
        .fetch_one(&mut *tx)
        .await;
        let row = match inserted {
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Conflict(number_taken(
                    &agent.number,
                    agent.channel,
                )))
            }
            other => other.db()?,
        };
        bump(&mut tx, "agents").await?;
        tx.commit().await.db()?;
        rows::agent(&row)
    }

    async fn update_agent_now(
        &self,
        account: AccountId,
        id: &AgentId,
        patch: AgentPatch,
    ) -> Result<Option<Agent>> {
        let mut tx = self.pool.begin().await.db()?;
        let Some(current) = agent_in(&mut *tx, account, id, true).await? else {
            return Ok(None);
        };
        let name = patch.name.unwrap_or(current.name);
        let number = patch.number.unwrap_or(current.number.clone());
        if number != current.number
            && number_held(&mut *tx, current.channel, current.region, &number, id).await?
        {
            return Err(StoreError::Conflict(number_taken(&number, current.channel)));
        }
        let flow = to_json(&patch.flow.unwrap_or(current.flow))?;
        let connection = patch.connection_id.unwrap_or(current.connection_id);
        if let Some(connection) = &connection {
            live_connection(&mut tx, account, connection).await?;
        }
        let updated = sqlx::query(&format!(
            "UPDATE agents SET name = $2, number = $3, flow = $4, updated_at = $5, \
             connection_id = $6 WHERE agent_id = $1 RETURNING {AGENT_COLUMNS}"
        ))
        .bind(id.as_str())
        .bind(&name)
        .bind(&number)
        .bind(flow)
        .bind(now_micros())
        .bind(connection.as_ref().map(ConnectionId::as_str))
        .fetch_one(&mut *tx)
        .await;
        let row = match updated {
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Conflict(number_taken(&number, current.channel)))
            }
            other => other.db()?,
        };
        bump(&mut tx, "agents").await?;
        tx.commit().await.db()?;
        rows::agent(&row).map(Some)
    }

    async fn delete_agent_now(&self, account: AccountId, id: &AgentId) -> Result<bool> {
        let mut tx = self.pool.begin().await.db()?;
        let n = sqlx::query(
            "UPDATE agents SET deleted_at = $3 \
             WHERE agent_id = $1 AND account_id = $2 AND deleted_at IS NULL",
        )
        .bind(id.as_str())
        .bind(account)
        .bind(now_micros())
        .execute(&mut *tx)
        .await
        .db()?
        .rows_affected();
        bump(&mut tx, "agents").await?;
        tx.commit().await.db()?;
        Ok(n > 0)
    }

    async fn publish_agent_now(&self, account: AccountId, id: &AgentId) -> Result<Option<u32>> {
        let mut tx = self.pool.begin().await.db()?;
        // Locked, so that two publishes number their versions in turn.
        let Some(agent) = agent_in(&mut *tx, account, id, true).await? else {
            return Ok(None);
        };
        // The draft's number was checked when it was written; this catches
        // a store from before that check.
        if number_held(&mut *tx, agent.channel, agent.region, &agent.number, id).await? {
            return Err(StoreError::Conflict(number_taken(
                &agent.number,
                agent.channel,
            )));
        }
        if let Some(connection) = &agent.connection_id {
            live_connection(&mut tx, account, connection).await?;
        }
        let version = agent.current_version.unwrap_or(0) + 1;
        sqlx::query(&format!(
            "INSERT INTO agent_versions ({VERSION_COLUMNS}) \
             SELECT agent_id, $2, name, channel, number, region, flow, $3, connection_id \
             FROM agents WHERE agent_id = $1"
        ))
        .bind(id.as_str())
        .bind(i64::from(version))
        .bind(now_micros())
        .execute(&mut *tx)
        .await
        .db()?;
        sqlx::query("UPDATE agents SET current_version = $2 WHERE agent_id = $1")
            .bind(id.as_str())
            .bind(i64::from(version))
            .execute(&mut *tx)
            .await
            .db()?;
        bump(&mut tx, "agents").await?;
        tx.commit().await.db()?;
        Ok(Some(version))
    }

    async fn set_rate_now(&self, id: &AgentId, rate: u32) -> Result<bool> {
        let mut tx = self.pool.begin().await.db()?;
        // Shared-locked, so that a concurrent delete lands before (and this
        // answers false) or after (and the rate is set while it was live).
        let live = sqlx::query(
            "SELECT 1 FROM agents WHERE agent_id = $1 AND deleted_at IS NULL FOR SHARE",
        )
        .bind(id.as_str())
        .fetch_optional(&mut *tx)
        .await
        .db()?
        .is_some();
        if !live {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO agent_limits (agent_id, rate) VALUES ($1, $2) \
             ON CONFLICT (agent_id) DO UPDATE SET rate = EXCLUDED.rate",
        )
        .bind(id.as_str())
        .bind(i64::from(rate))
        .execute(&mut *tx)
        .await
        .db()?;
        bump(&mut tx, "limits").await?;
        tx.commit().await.db()?;
        Ok(true)
    }

    async fn create_session_now(&self, s: NewSession) -> Result<Created> {
        let mut tx = self.pool.begin().await.db()?;
        let created = insert_session(&mut tx, &s).await?;
        if matches!(created, Created::Stored) {
            tx.commit().await.db()?;
        }
        Ok(created)
    }

    async fn update_session_now(&self, id: SessionId, u: SessionUpdate) -> Result<()> {
        let sid = id.to_string();
        let mut tx = self.pool.begin().await.db()?;
        // Locked to the commit: the job cannot be claimed again (nor its
        // lease checked by another write, nor an input delivered) until
        // this update lands.
        let held = sqlx::query(
            "SELECT 1 FROM dispatch_jobs \
             WHERE session_id = $1 AND lease_token = $2 FOR UPDATE",
        )
        .bind(&sid)
        .bind(u.lease.0)
        .fetch_optional(&mut *tx)
        .await
        .db()?
        .is_some();
        if !held {
            return Err(StoreError::LeaseLost);
        }
        let change = SessionChange::of(&u);
        if change.touches_session(&u) {
            let flow_state = u.flow_state.as_ref().map(to_json).transpose()?;
            sqlx::query(
                "UPDATE sessions SET status = COALESCE($2, status), \
                 outcome = COALESCE($3, outcome), ended_at = COALESCE($4, ended_at), \
                 conversation_uuid = COALESCE(conversation_uuid, $5), \
                 flow_state = COALESCE($6, flow_state), \
                 inputs_consumed = GREATEST(inputs_consumed, COALESCE($7, 0)) WHERE id = $1",
            )
            .bind(&sid)
            .bind(change.status.map(SessionStatus::as_str))
            .bind(change.outcome.map(Outcome::as_str))
            .bind(change.ended_at.map(to_micros))
            .bind(&change.conversation_uuid)
            .bind(flow_state)
            .bind(u.inputs_consumed)
            .execute(&mut *tx)
            .await
            .db()?;
        }
        for event in &u.events {
            insert_event(&mut tx, &sid, event).await?;
        }
        for r in &u.provider_refs {
            insert_provider_ref(&mut tx, r).await?;
        }
        for cb in &u.callbacks {
            // Any conflict, as SQLite's INSERT OR IGNORE: re-enqueueing a
            // callback (same dedupe key, or same webhook id) is a no-op.
            sqlx::query(
                "INSERT INTO callbacks \
                 (webhook_id, session_id, account_id, dedupe_key, url, body, \
                  next_attempt_at, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(&cb.webhook_id)
            .bind(&sid)
            .bind(cb.account_id)
            .bind(&cb.dedupe_key)
            .bind(&cb.url)
            .bind(&cb.body)
            .bind(to_micros(cb.created_at))
            .execute(&mut *tx)
            .await
            .db()?;
        }
        if let JobFate::Finish(_) = u.job {
            sqlx::query("DELETE FROM dispatch_jobs WHERE session_id = $1")
                .bind(&sid)
                .execute(&mut *tx)
                .await
                .db()?;
        } else if let JobFate::SleepUntil(wake_at) | JobFate::EndAndWait { until: wake_at, .. } =
            u.job
        {
            // The job's row has been locked since this transaction's first
            // statement, and a delivery locks it before storing its input.
            // So a delivery either committed before that lock was granted,
            // and this statement (a snapshot newer than the lock) sees its
            // input, or it waits for this commit and then makes the job due
            // itself. Checking in a statement that ran before the lock was
            // held could put the job to sleep over an input. Token 0 is
            // never drawn (a claim's token is negative): the lease is given
            // up for good, and writes under the old token are refused.
            sqlx::query(
                "UPDATE dispatch_jobs SET lease_until = 0, lease_token = 0, attempts = 0, \
                 run_at = CASE WHEN EXISTS (SELECT 1 FROM session_inputs i \
                     JOIN sessions s ON s.id = i.session_id \
                     WHERE i.session_id = $1 AND i.id > s.inputs_consumed) \
                   THEN $3 ELSE $2 END \
                 WHERE session_id = $1",
            )
            .bind(&sid)
            .bind(to_micros(wake_at))
            .bind(now_micros())
            .execute(&mut *tx)
            .await
            .db()?;
        }
        tx.commit().await.db()?;
        Ok(())
    }

    async fn deliver_input_now(&self, session: SessionId, input: NewInput) -> Result<Option<i64>> {
        let sid = session.to_string();
        let mut tx = self.pool.begin().await.db()?;
        // The job's row first, locked to the commit: a worker putting the
        // session to sleep meanwhile either sees this input or is seen by
        // this update (see update_session_now). Deliveries to one session
        // take turns, so its input ids grow in commit order. The lease is
        // left alone: its holder finds the input when it goes to sleep.
        let open = sqlx::query(
            "UPDATE dispatch_jobs SET run_at = LEAST(run_at, $2) WHERE session_id = $1",
        )
        .bind(&sid)
        .bind(now_micros())
        .execute(&mut *tx)
        .await
        .db()?
        .rows_affected()
            > 0;
        if !open {
            // Nothing was written (and no row locked).
            return Ok(None);
        }
        let id = insert_input(&mut tx, &sid, &input).await?;
        tx.commit().await.db()?;
        Ok(Some(id))
    }

    async fn settle_callbacks_now(&self, settlements: Vec<Settlement>) -> Result<()> {
        let mut tx = self.pool.begin().await.db()?;
        for s in &settlements {
            let settled = s.row();
            let failed: Option<(String, String)> = sqlx::query_as(
                "UPDATE callbacks SET state = $3, attempts = $4, \
                 next_attempt_at = COALESCE($5, next_attempt_at), \
                 last_error = COALESCE($6, last_error), settled_at = $7, \
                 lease_until = 0 \
                 WHERE id = $1 AND lease_token = $2 AND state = 'pending' \
                 RETURNING session_id, webhook_id",
            )
            .bind(s.id)
            .bind(s.lease.0)
            .bind(settled.state)
            .bind(i64::from(s.attempts))
            .bind(settled.next_at)
            .bind(settled.error)
            .bind(settled.settled_at)
            .fetch_optional(&mut *tx)
            .await
            .db()?;
            // A settlement whose lease was lost changes nothing.
            if let (Some((session, webhook_id)), Verdict::Failed { error }) = (failed, &s.verdict) {
                insert_event(
                    &mut tx,
                    &session,
                    &callback_failed_event(&webhook_id, s.attempts, error, s.at),
                )
                .await?;
            }
        }
        tx.commit().await.db()?;
        Ok(())
    }
}

/// Runs a transaction on a task of its own. A caller that stops waiting (a
/// client that hangs up, a worker that lost its lease) drops its future; a
/// transaction dropped half-way would keep its row locks until its
/// connection was next used, and a claim's SKIP LOCKED would pass over those
/// rows all that time. On its own task it commits or rolls back regardless.
async fn detached<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    tokio::spawn(work)
        .await
        .map_err(|e| StoreError::Internal(anyhow::anyhow!("a store task failed: {e}")))?
}

#[async_trait]
impl AccountStore for PostgresStore {
    async fn add_key(&self, account: &str, hash: KeyHash) -> Result<AccountId> {
        let (this, account) = (self.clone(), account.to_owned());
        detached(async move { this.add_key_now(&account, hash).await }).await
    }

    async fn revoke_key(&self, hash: KeyHash) -> Result<bool> {
        let this = self.clone();
        detached(async move { this.revoke_key_now(hash).await }).await
    }

    async fn keys(&self) -> Result<Vec<KeyRow>> {
        sqlx::query("SELECT hash, account_id, revoked_at IS NOT NULL AS revoked FROM api_keys")
            .fetch_all(&self.pool)
            .await
            .db()?
            .iter()
            .map(rows::key)
            .collect()
    }

    async fn accounts(&self) -> Result<Vec<AccountRow>> {
        sqlx::query("SELECT id, name, webhook_secret FROM accounts")
            .fetch_all(&self.pool)
            .await
            .db()?
            .iter()
            .map(rows::account)
            .collect()
    }

    async fn revisions(&self) -> Result<Revisions> {
        let rows: Vec<(String, i64)> = sqlx::query_as("SELECT kind, rev FROM revisions")
            .fetch_all(&self.pool)
            .await
            .db()?;
        rows::revisions(rows)
    }
}

#[async_trait]
impl ConnectionStore for PostgresStore {
    async fn create_connection(&self, new: NewConnection) -> Result<ConnectionRecord> {
        let this = self.clone();
        detached(async move {
            let mut tx = this.pool.begin().await.db()?;
            let row = sqlx::query(&format!(
                "INSERT INTO connections ({CONNECTION_COLUMNS}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $7, NULL) RETURNING {CONNECTION_COLUMNS}"
            ))
            .bind(new.id.as_str())
            .bind(new.account_id)
            .bind(&new.name)
            .bind(&new.provider)
            .bind(to_json(&new.settings)?)
            .bind(&new.sealed)
            .bind(now_micros())
            .fetch_one(&mut *tx)
            .await
            .db()?;
            bump(&mut tx, "connections").await?;
            tx.commit().await.db()?;
            rows::connection(&row)
        })
        .await
    }

    async fn connections(&self, account: AccountId) -> Result<Vec<ConnectionRecord>> {
        sqlx::query(&format!(
            "SELECT {CONNECTION_COLUMNS} FROM connections \
             WHERE account_id = $1 AND deleted_at IS NULL ORDER BY created_at, id"
        ))
        .bind(account)
        .fetch_all(&self.pool)
        .await
        .db()?
        .iter()
        .map(rows::connection)
        .collect()
    }

    async fn connection(
        &self,
        account: AccountId,
        id: &ConnectionId,
    ) -> Result<Option<ConnectionRecord>> {
        connection_in(&self.pool, Some(account), id, false).await
    }

    async fn connection_for_work(&self, id: &ConnectionId) -> Result<Option<ConnectionRecord>> {
        connection_in(&self.pool, None, id, false).await
    }

    async fn update_connection(
        &self,
        account: AccountId,
        id: &ConnectionId,
        patch: ConnectionPatch,
    ) -> Result<Option<ConnectionRecord>> {
        let (this, id) = (self.clone(), id.clone());
        detached(async move {
            let mut tx = this.pool.begin().await.db()?;
            let Some(current) = connection_in(&mut *tx, Some(account), &id, true).await? else {
                return Ok(None);
            };
            let row = sqlx::query(&format!(
                "UPDATE connections SET name = $2, settings = $3, credentials = $4, \
                 updated_at = $5 WHERE id = $1 RETURNING {CONNECTION_COLUMNS}"
            ))
            .bind(id.as_str())
            .bind(patch.name.unwrap_or(current.name))
            .bind(to_json(&patch.settings.unwrap_or(current.settings))?)
            .bind(patch.sealed.unwrap_or(current.sealed))
            .bind(now_micros())
            .fetch_one(&mut *tx)
            .await
            .db()?;
            bump(&mut tx, "connections").await?;
            tx.commit().await.db()?;
            rows::connection(&row).map(Some)
        })
        .await
    }

    async fn delete_connection(&self, account: AccountId, id: &ConnectionId) -> Result<bool> {
        let (this, id) = (self.clone(), id.clone());
        detached(async move {
            let mut tx = this.pool.begin().await.db()?;
            // Held first, so that an agent written onto it meanwhile either
            // commits before the search below (which then finds it) or
            // finds it deleted.
            if connection_in(&mut *tx, Some(account), &id, true)
                .await?
                .is_none()
            {
                return Ok(false);
            }
            let user: Option<String> = sqlx::query_scalar(
                "SELECT a.agent_id FROM agents a LEFT JOIN agent_versions v \
                   ON v.agent_id = a.agent_id AND v.version = a.current_version \
                 WHERE a.account_id = $2 AND a.deleted_at IS NULL \
                   AND (a.connection_id = $1 OR v.connection_id = $1) \
                 ORDER BY a.created_at LIMIT 1",
            )
            .bind(id.as_str())
            .bind(account)
            .fetch_optional(&mut *tx)
            .await
            .db()?;
            if let Some(agent) = user {
                return Err(StoreError::Conflict(connection_in_use(&id, &agent)));
            }
            sqlx::query("UPDATE connections SET deleted_at = $2 WHERE id = $1")
                .bind(id.as_str())
                .bind(now_micros())
                .execute(&mut *tx)
                .await
                .db()?;
            bump(&mut tx, "connections").await?;
            tx.commit().await.db()?;
            Ok(true)
        })
        .await
    }

    async fn all_connections(&self) -> Result<Vec<ConnectionRecord>> {
        sqlx::query(&format!(
            "SELECT {CONNECTION_COLUMNS} FROM connections ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await
        .db()?
        .iter()
        .map(rows::connection)
        .collect()
    }
}

/// Stores a session, its first event and its dispatch job (and its
/// idempotency record) in `tx`; nothing is written when the idempotency
/// key was taken first.
async fn insert_session(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    s: &NewSession,
) -> Result<Created> {
    let parameters = to_json(&s.parameters)?;
    let whatsapp = s.whatsapp.as_ref().map(to_json).transpose()?;
    let id = s.id.to_string();
    let created = to_micros(s.created_at);
    if let Some(idem) = &s.idempotency {
        // Requests with one key queue on its row: the first inserts it,
        // each later one waits for that commit and, finding the key
        // still within its window, updates nothing. A key older than the
        // window is taken over, as if it had been purged.
        let claimed = sqlx::query(
            "INSERT INTO idempotency_keys \
             (account_id, key, request_hash, response, created_at) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (account_id, key) DO UPDATE SET \
               request_hash = EXCLUDED.request_hash, response = EXCLUDED.response, \
               created_at = EXCLUDED.created_at \
             WHERE idempotency_keys.created_at <= $6 \
             RETURNING 1",
        )
        .bind(s.account_id)
        .bind(&idem.key)
        .bind(&idem.request_hash[..])
        .bind(&idem.response)
        .bind(created)
        .bind(created - IDEMPOTENCY_WINDOW.as_micros() as i64)
        .fetch_optional(&mut **tx)
        .await
        .db()?
        .is_some();
        if !claimed {
            // The conflicting row stays locked by this transaction, so
            // it is still there to read; nothing was written.
            let row = sqlx::query(
                "SELECT request_hash, response FROM idempotency_keys \
                 WHERE account_id = $1 AND key = $2",
            )
            .bind(s.account_id)
            .bind(&idem.key)
            .fetch_one(&mut **tx)
            .await
            .db()?;
            return rows::idempotent(&row).map(Created::Duplicate);
        }
    }
    sqlx::query(&format!(
        "INSERT INTO sessions ({SESSION_COLUMNS}) VALUES \
         ($1, $2, $3, $4, $5, $6, $7, 'queued', NULL, $8, $9, $10, $11, NULL, $12, NULL, $13, \
          $14)"
    ))
    .bind(&id)
    .bind(s.account_id)
    .bind(s.agent_id.as_str())
    .bind(i64::from(s.agent_version))
    .bind(s.channel.as_str())
    .bind(&s.to)
    .bind(&s.from)
    .bind(&s.status_url)
    .bind(s.hangup_on_machine)
    .bind(parameters)
    .bind(whatsapp)
    .bind(created)
    .bind(s.inbound)
    .bind(s.campaign_id.as_ref().map(|c| c.as_str()))
    .execute(&mut **tx)
    .await
    .db()?;
    if let Some(input) = &s.first_input {
        insert_input(tx, &id, input).await?;
    }
    insert_event(
        tx,
        &id,
        &NewEvent {
            key: Some("queued".into()),
            event: herald_core::session::SessionEvent::Queued,
            at: s.created_at,
        },
    )
    .await?;
    sqlx::query("INSERT INTO dispatch_jobs (session_id, run_at, account_id) VALUES ($1, $2, $3)")
        .bind(&id)
        .bind(created)
        .bind(s.account_id)
        .execute(&mut **tx)
        .await
        .db()?;
    Ok(Created::Stored)
}

/// The states a recipient is due in.
const DUE: &str = "('pending', 'waiting')";

async fn campaign_in<'c>(
    conn: impl Executor<'c, Database = Postgres>,
    account: Option<AccountId>,
    id: &CampaignId,
    lock: bool,
) -> Result<Option<CampaignRecord>> {
    let sql = format!(
        "SELECT {CAMPAIGN_COLUMNS} FROM campaigns WHERE id = $1 \
         AND ($2::BIGINT IS NULL OR account_id = $2){}",
        if lock { " FOR UPDATE" } else { "" }
    );
    sqlx::query(&sql)
        .bind(id.as_str())
        .bind(account)
        .fetch_optional(conn)
        .await
        .db()?
        .as_ref()
        .map(rows::campaign)
        .transpose()
}

/// Writes a recipient's change, if it is still as `guard` (SQL over the
/// row, `$8` its one argument) says.
async fn change_recipient(
    pool: &PgPool,
    campaign: &CampaignId,
    n: u32,
    change: &RecipientChange,
    guard: &str,
    guard_arg: String,
) -> Result<bool> {
    let changed = sqlx::query(&format!(
        "UPDATE campaign_recipients SET state = $3, next_at = $4, \
         last_outcome = COALESCE($5, last_outcome), skip_reason = $6, updated_at = $7 \
         WHERE campaign_id = $1 AND n = $2 AND {guard}"
    ))
    .bind(campaign.as_str())
    .bind(i64::from(n))
    .bind(change.state.as_str())
    .bind(change.next_at.map(to_micros))
    .bind(change.last_outcome.map(|o| o.as_str()))
    .bind(&change.skip_reason)
    .bind(now_micros())
    .bind(guard_arg)
    .execute(pool)
    .await
    .db()?;
    Ok(changed.rows_affected() == 1)
}

#[async_trait]
impl CampaignStore for PostgresStore {
    async fn create_campaign(&self, c: NewCampaign) -> Result<CampaignRecord> {
        let settings = to_json(&c.settings)?;
        sqlx::query(
            "INSERT INTO campaigns \
             (id, account_id, name, agent_id, status_url, settings, state, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 'draft', $7)",
        )
        .bind(c.id.as_str())
        .bind(c.account_id)
        .bind(&c.name)
        .bind(c.agent_id.as_str())
        .bind(&c.status_url)
        .bind(settings)
        .bind(to_micros(c.created_at))
        .execute(&self.pool)
        .await
        .db()?;
        campaign_in(&self.pool, None, &c.id, false)
            .await?
            .ok_or_else(|| StoreError::Internal(anyhow::anyhow!("the campaign just stored")))
    }

    async fn campaign(
        &self,
        account: AccountId,
        id: &CampaignId,
    ) -> Result<Option<CampaignRecord>> {
        campaign_in(&self.pool, Some(account), id, false).await
    }

    async fn campaigns(&self, account: AccountId) -> Result<Vec<CampaignRecord>> {
        sqlx::query(&format!(
            "SELECT {CAMPAIGN_COLUMNS} FROM campaigns WHERE account_id = $1 \
             ORDER BY created_at DESC, id DESC"
        ))
        .bind(account)
        .fetch_all(&self.pool)
        .await
        .db()?
        .iter()
        .map(rows::campaign)
        .collect()
    }

    async fn live_campaigns(&self) -> Result<Vec<CampaignRecord>> {
        sqlx::query(&format!(
            "SELECT {CAMPAIGN_COLUMNS} FROM campaigns \
             WHERE state IN ('scheduled', 'running', 'paused') \
                     OR (state = 'cancelled' AND EXISTS (SELECT 1 FROM campaign_recipients r \
                         WHERE r.campaign_id = campaigns.id AND r.state = 'in_progress')) \
                     ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await
        .db()?
        .iter()
        .map(rows::campaign)
        .collect()
    }

    async fn set_campaign_state(
        &self,
        account: AccountId,
        id: &CampaignId,
        from: &[CampaignState],
        to: CampaignState,
        at: DateTime<Utc>,
    ) -> Result<Option<CampaignRecord>> {
        let (this, id) = (self.clone(), id.clone());
        let from: Vec<&'static str> = from.iter().map(|s| s.as_str()).collect();
        detached(async move {
            let mut tx = this.pool.begin().await.db()?;
            let Some(campaign) = campaign_in(&mut *tx, Some(account), &id, true).await? else {
                return Ok(None);
            };
            if !from.contains(&campaign.state.as_str()) {
                return Ok(None);
            }
            sqlx::query(
                "UPDATE campaigns SET state = $2, \
                 started_at = CASE WHEN $3 THEN COALESCE(started_at, $5) ELSE started_at END, \
                 ended_at = CASE WHEN $4 THEN $5 ELSE ended_at END WHERE id = $1",
            )
            .bind(id.as_str())
            .bind(to.as_str())
            .bind(matches!(
                to,
                CampaignState::Running | CampaignState::Scheduled
            ))
            .bind(to.is_final())
            .bind(to_micros(at))
            .execute(&mut *tx)
            .await
            .db()?;
            let changed = campaign_in(&mut *tx, Some(account), &id, false).await?;
            tx.commit().await.db()?;
            Ok(changed)
        })
        .await
    }

    async fn add_recipients(
        &self,
        campaign: &CampaignId,
        recipients: Vec<NewRecipient>,
        max_total: u32,
    ) -> Result<RecipientsAdded> {
        let (this, campaign) = (self.clone(), campaign.clone());
        let rows: Vec<(NewRecipient, String)> = recipients
            .into_iter()
            .map(|r| {
                let parameters = to_json(&r.parameters)?;
                Ok((r, parameters))
            })
            .collect::<Result<_>>()?;
        detached(async move {
            let mut tx = this.pool.begin().await.db()?;
            // The campaign's row, locked: additions to one campaign number
            // their recipients one after another.
            let have: i64 =
                sqlx::query_scalar("SELECT recipients FROM campaigns WHERE id = $1 FOR UPDATE")
                    .bind(campaign.as_str())
                    .fetch_one(&mut *tx)
                    .await
                    .db()?;
            let mut added = RecipientsAdded::default();
            let now = now_micros();
            for (i, (r, parameters)) in rows.iter().enumerate() {
                let n = have + i64::from(added.accepted);
                if n >= i64::from(max_total) {
                    return Err(StoreError::Conflict(format!(
                        "a campaign has at most {max_total} recipients"
                    )));
                }
                // A duplicate `to` or id inserts nothing and says which.
                let inserted = sqlx::query(
                    "INSERT INTO campaign_recipients (campaign_id, n, recipient, external_id, \
                     timezone, zone_source, parameters, state, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', $8) \
                     ON CONFLICT DO NOTHING",
                )
                .bind(campaign.as_str())
                .bind(n)
                .bind(&r.to)
                .bind(&r.external_id)
                .bind(&r.timezone)
                .bind(&r.zone_source)
                .bind(parameters)
                .bind(now)
                .execute(&mut *tx)
                .await
                .db()?;
                if inserted.rows_affected() == 1 {
                    added.accepted += 1;
                    continue;
                }
                let same_to: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM campaign_recipients \
                     WHERE campaign_id = $1 AND recipient = $2)",
                )
                .bind(campaign.as_str())
                .bind(&r.to)
                .fetch_one(&mut *tx)
                .await
                .db()?;
                added.refused.push((
                    i,
                    if same_to {
                        RecipientRefusal::DuplicateTo
                    } else {
                        RecipientRefusal::DuplicateId
                    },
                ));
            }
            sqlx::query("UPDATE campaigns SET recipients = recipients + $2 WHERE id = $1")
                .bind(campaign.as_str())
                .bind(i64::from(added.accepted))
                .execute(&mut *tx)
                .await
                .db()?;
            tx.commit().await.db()?;
            Ok(added)
        })
        .await
    }

    async fn recipient_counts(&self, campaign: &CampaignId) -> Result<RecipientCounts> {
        let groups = sqlx::query_as::<_, rows::RecipientGroup>(
            &rows::RECIPIENT_GROUPS.replace("SUM(attempts)", "SUM(attempts)::BIGINT"),
        )
        .bind(campaign.as_str())
        .fetch_all(&self.pool)
        .await
        .db()?;
        rows::recipient_counts(groups)
    }

    async fn recipients(
        &self,
        campaign: &CampaignId,
        state: Option<RecipientState>,
        after: Option<u32>,
        limit: usize,
    ) -> Result<Vec<RecipientRecord>> {
        sqlx::query(&format!(
            "SELECT {RECIPIENT_COLUMNS} FROM campaign_recipients \
             WHERE campaign_id = $1 AND ($2::TEXT IS NULL OR state = $2) AND n > $3 \
             ORDER BY n LIMIT $4"
        ))
        .bind(campaign.as_str())
        .bind(state.map(|s| s.as_str()))
        .bind(after.map_or(-1, i64::from))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .db()?
        .iter()
        .map(rows::recipient)
        .collect()
    }

    async fn due_recipients(
        &self,
        campaign: &CampaignId,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<RecipientRecord>> {
        let mut due: Vec<RecipientRecord> = sqlx::query(&format!(
            "SELECT {RECIPIENT_COLUMNS} FROM campaign_recipients \
             WHERE campaign_id = $1 AND state = 'waiting' AND next_at <= $2 \
             ORDER BY next_at, n LIMIT $3"
        ))
        .bind(campaign.as_str())
        .bind(to_micros(now))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .db()?
        .iter()
        .map(rows::recipient)
        .collect::<Result<_>>()?;
        if due.len() < limit {
            let pending = sqlx::query(&format!(
                "SELECT {RECIPIENT_COLUMNS} FROM campaign_recipients \
                 WHERE campaign_id = $1 AND state = 'pending' ORDER BY n LIMIT $2"
            ))
            .bind(campaign.as_str())
            .bind((limit - due.len()) as i64)
            .fetch_all(&self.pool)
            .await
            .db()?;
            for row in &pending {
                due.push(rows::recipient(row)?);
            }
        }
        Ok(due)
    }

    async fn has_open_recipients(&self, campaign: &CampaignId) -> Result<bool> {
        // One probe of each state's own index, however many are done.
        let open: bool = sqlx::query_scalar(&OPEN_RECIPIENTS.replace("?1", "$1"))
            .bind(campaign.as_str())
            .fetch_one(&self.pool)
            .await
            .db()?;
        Ok(open)
    }

    async fn recipients_in_progress(&self, campaign: &CampaignId) -> Result<u32> {
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM campaign_recipients \
             WHERE campaign_id = $1 AND state = 'in_progress'",
        )
        .bind(campaign.as_str())
        .fetch_one(&self.pool)
        .await
        .db()?;
        Ok(count as u32)
    }

    async fn start_attempt(
        &self,
        campaign: &CampaignId,
        n: u32,
        attempts: u32,
        session: NewSession,
    ) -> Result<bool> {
        let (this, campaign) = (self.clone(), campaign.clone());
        detached(async move {
            let mut tx = this.pool.begin().await.db()?;
            let claimed = sqlx::query(&format!(
                "UPDATE campaign_recipients SET state = 'in_progress', \
                 attempts = attempts + 1, session_id = $4, next_at = NULL, updated_at = $5 \
                 WHERE campaign_id = $1 AND n = $2 AND attempts = $3 AND state IN {DUE}"
            ))
            .bind(campaign.as_str())
            .bind(i64::from(n))
            .bind(i64::from(attempts))
            .bind(session.id.to_string())
            .bind(now_micros())
            .execute(&mut *tx)
            .await
            .db()?;
            if claimed.rows_affected() == 0 {
                return Ok(false);
            }
            match insert_session(&mut tx, &session).await? {
                Created::Stored => {
                    tx.commit().await.db()?;
                    Ok(true)
                }
                Created::Duplicate(_) => Err(StoreError::Internal(anyhow::anyhow!(
                    "an attempt's session carries no idempotency key"
                ))),
            }
        })
        .await
    }

    async fn defer_recipient(
        &self,
        campaign: &CampaignId,
        n: u32,
        attempts: u32,
        change: RecipientChange,
    ) -> Result<bool> {
        change_recipient(
            &self.pool,
            campaign,
            n,
            &change,
            &format!("attempts = $8::BIGINT AND state IN {DUE}"),
            attempts.to_string(),
        )
        .await
    }

    async fn ended_attempts(
        &self,
        campaign: &CampaignId,
        limit: usize,
    ) -> Result<Vec<EndedAttempt>> {
        let rows: Vec<(i64, String, i64, Option<String>)> = sqlx::query_as(
            "SELECT r.n, r.session_id, r.attempts, s.outcome \
             FROM campaign_recipients r JOIN sessions s ON s.id = r.session_id \
             WHERE r.campaign_id = $1 AND r.state = 'in_progress' AND s.status = 'ended' \
             ORDER BY r.n LIMIT $2",
        )
        .bind(campaign.as_str())
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .db()?;
        rows.into_iter()
            .map(|(n, session, attempts, outcome)| {
                Ok(EndedAttempt {
                    n: n as u32,
                    session_id: session
                        .parse()
                        .map_err(|_| rows::bad_value("session_id", &session))?,
                    attempts: attempts as u32,
                    outcome: outcome
                        .as_deref()
                        .unwrap_or("failed")
                        .parse()
                        .map_err(|_| rows::bad_value("outcome", format!("{outcome:?}")))?,
                })
            })
            .collect()
    }

    async fn settle_attempt(
        &self,
        campaign: &CampaignId,
        n: u32,
        session_id: SessionId,
        change: RecipientChange,
    ) -> Result<bool> {
        change_recipient(
            &self.pool,
            campaign,
            n,
            &change,
            "state = 'in_progress' AND session_id = $8",
            session_id.to_string(),
        )
        .await
    }

    async fn close_recipients(
        &self,
        campaign: &CampaignId,
        to: RecipientState,
        skip_reason: Option<&str>,
    ) -> Result<u64> {
        let closed = sqlx::query(&format!(
            "UPDATE campaign_recipients \
             SET state = $2, next_at = NULL, skip_reason = $4, updated_at = $3 \
             WHERE campaign_id = $1 AND state IN {DUE}"
        ))
        .bind(campaign.as_str())
        .bind(to.as_str())
        .bind(now_micros())
        .bind(skip_reason)
        .execute(&self.pool)
        .await
        .db()?;
        Ok(closed.rows_affected())
    }
}

#[async_trait]
impl OptOutStore for PostgresStore {
    async fn add_opt_out(&self, account: AccountId, o: OptOut) -> Result<bool> {
        let added = sqlx::query(
            "INSERT INTO opt_outs \
             (account_id, channel, recipient, source, session_id, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(account)
        .bind(o.channel.as_str())
        .bind(&o.to)
        .bind(&o.source)
        .bind(o.session_id.map(|id| id.to_string()))
        .bind(to_micros(o.created_at))
        .execute(&self.pool)
        .await
        .db()?;
        Ok(added.rows_affected() == 1)
    }

    async fn remove_opt_out(&self, account: AccountId, channel: Channel, to: &str) -> Result<bool> {
        let removed = sqlx::query(
            "DELETE FROM opt_outs WHERE account_id = $1 AND channel = $2 AND recipient = $3",
        )
        .bind(account)
        .bind(channel.as_str())
        .bind(to)
        .execute(&self.pool)
        .await
        .db()?;
        Ok(removed.rows_affected() == 1)
    }

    async fn opt_out(
        &self,
        account: AccountId,
        channel: Channel,
        to: &str,
    ) -> Result<Option<OptOut>> {
        sqlx::query(&format!(
            "SELECT {OPT_OUT_COLUMNS} FROM opt_outs \
             WHERE account_id = $1 AND channel = $2 AND recipient = $3"
        ))
        .bind(account)
        .bind(channel.as_str())
        .bind(to)
        .fetch_optional(&self.pool)
        .await
        .db()?
        .as_ref()
        .map(rows::opt_out)
        .transpose()
    }

    async fn opt_outs(
        &self,
        account: AccountId,
        channel: Option<Channel>,
        after: Option<OptOutCursor>,
        limit: usize,
    ) -> Result<Vec<OptOut>> {
        let (after_channel, after_to) = after
            .map(|c| (c.channel.as_str().to_owned(), c.to))
            .unwrap_or_default();
        sqlx::query(&format!(
            "SELECT {OPT_OUT_COLUMNS} FROM opt_outs \
             WHERE account_id = $1 AND ($2::TEXT IS NULL OR channel = $2) \
               AND (channel, recipient) > ($3, $4) \
             ORDER BY channel, recipient LIMIT $5"
        ))
        .bind(account)
        .bind(channel.map(Channel::as_str))
        .bind(after_channel)
        .bind(after_to)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .db()?
        .iter()
        .map(rows::opt_out)
        .collect()
    }
}

#[async_trait]
impl AgentStore for PostgresStore {
    async fn create_agent(&self, agent: NewAgent) -> Result<Agent> {
        let this = self.clone();
        detached(async move { this.create_agent_now(agent).await }).await
    }

    async fn agents(&self, account: AccountId) -> Result<Vec<Agent>> {
        sqlx::query(&format!(
            "SELECT {AGENT_COLUMNS} FROM agents \
             WHERE account_id = $1 AND deleted_at IS NULL ORDER BY created_at, agent_id"
        ))
        .bind(account)
        .fetch_all(&self.pool)
        .await
        .db()?
        .iter()
        .map(rows::agent)
        .collect()
    }

    async fn agent(&self, account: AccountId, id: &AgentId) -> Result<Option<Agent>> {
        agent_in(&self.pool, account, id, false).await
    }

    async fn update_agent(
        &self,
        account: AccountId,
        id: &AgentId,
        patch: AgentPatch,
    ) -> Result<Option<Agent>> {
        let (this, id) = (self.clone(), id.clone());
        detached(async move { this.update_agent_now(account, &id, patch).await }).await
    }

    async fn delete_agent(&self, account: AccountId, id: &AgentId) -> Result<bool> {
        let (this, id) = (self.clone(), id.clone());
        detached(async move { this.delete_agent_now(account, &id).await }).await
    }

    async fn publish_agent(&self, account: AccountId, id: &AgentId) -> Result<Option<u32>> {
        let (this, id) = (self.clone(), id.clone());
        detached(async move { this.publish_agent_now(account, &id).await }).await
    }

    async fn agent_version(&self, id: &AgentId, version: u32) -> Result<Option<AgentVersion>> {
        sqlx::query(&format!(
            "SELECT {VERSION_COLUMNS} FROM agent_versions WHERE agent_id = $1 AND version = $2"
        ))
        .bind(id.as_str())
        .bind(i64::from(version))
        .fetch_optional(&self.pool)
        .await
        .db()?
        .map(|row| rows::agent_version(&row))
        .transpose()
    }

    async fn agent_index(&self) -> Result<Vec<AgentIndexRow>> {
        sqlx::query(
            "SELECT a.agent_id, a.account_id, a.channel, a.region, v.version, v.number \
             FROM agents a LEFT JOIN agent_versions v \
               ON v.agent_id = a.agent_id AND v.version = a.current_version \
             WHERE a.deleted_at IS NULL",
        )
        .fetch_all(&self.pool)
        .await
        .db()?
        .iter()
        .map(rows::agent_index)
        .collect()
    }

    async fn set_rate(&self, id: &AgentId, rate: u32) -> Result<bool> {
        let (this, id) = (self.clone(), id.clone());
        detached(async move { this.set_rate_now(&id, rate).await }).await
    }

    async fn rates(&self) -> Result<Vec<(AgentId, u32)>> {
        sqlx::query("SELECT agent_id, rate FROM agent_limits")
            .fetch_all(&self.pool)
            .await
            .db()?
            .iter()
            .map(|row| Ok((rows::parsed(row, "agent_id")?, rows::small(row, "rate")?)))
            .collect()
    }

    async fn create_template(&self, account: AccountId, t: Template) -> Result<()> {
        let inserted = sqlx::query(&format!(
            "INSERT INTO whatsapp_templates (account_id, {TEMPLATE_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)"
        ))
        .bind(account)
        .bind(&t.namespace)
        .bind(&t.name)
        .bind(&t.locale)
        .bind(&t.header)
        .bind(&t.body)
        .bind(to_micros(t.created_at))
        .execute(&self.pool)
        .await;
        match inserted {
            Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict(template_taken(&t))),
            other => other.db().map(|_| ()),
        }
    }

    async fn templates(&self, account: AccountId) -> Result<Vec<Template>> {
        sqlx::query(&format!(
            "SELECT {TEMPLATE_COLUMNS} FROM whatsapp_templates WHERE account_id = $1 \
             ORDER BY namespace, name, locale"
        ))
        .bind(account)
        .fetch_all(&self.pool)
        .await
        .db()?
        .iter()
        .map(rows::template)
        .collect()
    }

    async fn template(
        &self,
        account: AccountId,
        namespace: &str,
        name: &str,
        locale: &str,
    ) -> Result<Option<Template>> {
        // PostgreSQL text cannot hold U+0000, so no stored template has it;
        // asking would be an error rather than the "not found" it is.
        if [namespace, name, locale].iter().any(|s| s.contains('\0')) {
            return Ok(None);
        }
        sqlx::query(&format!(
            "SELECT {TEMPLATE_COLUMNS} FROM whatsapp_templates \
             WHERE account_id = $1 AND namespace = $2 AND name = $3 AND locale = $4"
        ))
        .bind(account)
        .bind(namespace)
        .bind(name)
        .bind(locale)
        .fetch_optional(&self.pool)
        .await
        .db()?
        .map(|row| rows::template(&row))
        .transpose()
    }
}

#[async_trait]
impl SessionStore for PostgresStore {
    async fn create_session(&self, s: NewSession) -> Result<Created> {
        let this = self.clone();
        detached(async move { this.create_session_now(s).await }).await
    }

    async fn idempotent_response(
        &self,
        account: AccountId,
        key: &str,
        max_age: Duration,
    ) -> Result<Option<IdempotentResponse>> {
        sqlx::query(
            "SELECT request_hash, response FROM idempotency_keys \
             WHERE account_id = $1 AND key = $2 AND created_at > $3",
        )
        .bind(account)
        .bind(key)
        .bind(now_micros() - max_age.as_micros() as i64)
        .fetch_optional(&self.pool)
        .await
        .db()?
        .map(|row| rows::idempotent(&row))
        .transpose()
    }

    async fn purge_idempotency(&self, max_age: Duration) -> Result<usize> {
        let n = sqlx::query("DELETE FROM idempotency_keys WHERE created_at <= $1")
            .bind(now_micros() - max_age.as_micros() as i64)
            .execute(&self.pool)
            .await
            .db()?
            .rows_affected();
        Ok(n as usize)
    }

    async fn session(&self, account: AccountId, id: SessionId) -> Result<Option<SessionRecord>> {
        let sid = id.to_string();
        let Some(row) = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS}, flow_state FROM sessions WHERE id = $1 AND account_id = $2"
        ))
        .bind(&sid)
        .bind(account)
        .fetch_optional(&self.pool)
        .await
        .db()?
        else {
            return Ok(None);
        };
        let mut session = rows::session_with_state(&row)?;
        session.events = sqlx::query(
            "SELECT type, at, data FROM session_events WHERE session_id = $1 ORDER BY id",
        )
        .bind(&sid)
        .fetch_all(&self.pool)
        .await
        .db()?
        .iter()
        .map(rows::event)
        .collect::<Result<_>>()?;
        Ok(Some(session))
    }

    async fn sessions(&self, account: AccountId, f: SessionFilter) -> Result<Vec<SessionRecord>> {
        let mut query = QueryBuilder::<Postgres>::new(format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE account_id = "
        ));
        query.push_bind(account);
        if let Some(agent) = &f.agent_id {
            query.push(" AND agent_id = ").push_bind(agent.as_str());
        }
        if let Some(status) = f.status {
            query.push(" AND status = ").push_bind(status.as_str());
        }
        if let Some(campaign) = &f.campaign_id {
            query
                .push(" AND campaign_id = ")
                .push_bind(campaign.as_str().to_owned());
        }
        if let Some(before) = f.before {
            query.push(" AND id < ").push_bind(before.to_string());
        }
        query
            .push(" ORDER BY id DESC LIMIT ")
            .push_bind(f.limit as i64);
        query
            .build()
            .fetch_all(&self.pool)
            .await
            .db()?
            .iter()
            .map(rows::session)
            .collect()
    }

    async fn session_for_work(&self, id: SessionId) -> Result<Option<SessionRecord>> {
        sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS}, flow_state FROM sessions WHERE id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await
        .db()?
        .map(|row| rows::session_with_state(&row))
        .transpose()
    }

    async fn deliver_input(&self, session: SessionId, input: NewInput) -> Result<Option<i64>> {
        let this = self.clone();
        detached(async move { this.deliver_input_now(session, input).await }).await
    }

    async fn provider_ref(
        &self,
        connection: &ConnectionId,
        provider_ref: &str,
    ) -> Result<Option<ProviderRef>> {
        sqlx::query(
            "SELECT connection_id, provider_ref, session_id, item FROM provider_refs \
             WHERE connection_id = $1 AND provider_ref = $2",
        )
        .bind(connection.as_str())
        .bind(provider_ref)
        .fetch_optional(&self.pool)
        .await
        .db()?
        .map(|row| rows::provider_ref(&row))
        .transpose()
    }

    async fn session_provider_refs(&self, session: SessionId) -> Result<Vec<ProviderRef>> {
        sqlx::query(
            "SELECT connection_id, provider_ref, session_id, item FROM provider_refs \
             WHERE session_id = $1 ORDER BY created_at, item",
        )
        .bind(session.to_string())
        .fetch_all(&self.pool)
        .await
        .db()?
        .iter()
        .map(rows::provider_ref)
        .collect()
    }

    async fn pending_inputs(&self, session: SessionId, after: i64) -> Result<Vec<InputRow>> {
        sqlx::query(
            "SELECT id, kind, text, data, at FROM session_inputs \
             WHERE session_id = $1 AND id > $2 ORDER BY id",
        )
        .bind(session.to_string())
        .bind(after)
        .fetch_all(&self.pool)
        .await
        .db()?
        .iter()
        .map(rows::input)
        .collect()
    }

    async fn open_sessions(
        &self,
        channel: herald_core::Channel,
        to: &str,
        from: &str,
    ) -> Result<Vec<OpenSession>> {
        // No stored address holds U+0000 (PostgreSQL text cannot).
        if to.contains('\0') || from.contains('\0') {
            return Ok(Vec::new());
        }
        // `status <> 'ended'` as the index has it, so that it serves.
        sqlx::query(
            "SELECT id, account_id, agent_id FROM sessions \
             WHERE channel = $1 AND from_number = $2 AND to_addr = $3 AND status <> 'ended' \
             ORDER BY id DESC LIMIT $4",
        )
        .bind(channel.as_str())
        .bind(from)
        .bind(to)
        .bind(MAX_OPEN_SESSIONS as i64)
        .fetch_all(&self.pool)
        .await
        .db()?
        .iter()
        .map(rows::open_session)
        .collect()
    }
}

#[async_trait]
impl DispatchQueue for PostgresStore {
    async fn claim_dispatches(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
        limit: usize,
        skip_accounts: &[AccountId],
    ) -> Result<Vec<DispatchLease>> {
        let now = to_micros(now);
        let token = LeaseToken::generate();
        // SKIP LOCKED passes over jobs another claimer (or a fenced update)
        // holds; a job that a concurrent claim leased and committed is
        // re-checked once locked, and its new lease keeps it out.
        sqlx::query(
            "UPDATE dispatch_jobs \
             SET lease_until = $2, lease_token = $4, attempts = attempts + 1 \
             WHERE session_id IN (SELECT session_id FROM dispatch_jobs \
                WHERE run_at <= $1 AND lease_until <= $1 AND NOT (account_id = ANY($5)) \
                ORDER BY run_at LIMIT $3 \
                FOR UPDATE SKIP LOCKED) \
             RETURNING session_id, account_id, attempts",
        )
        .bind(now)
        .bind(now + lease.as_micros() as i64)
        .bind(limit as i64)
        .bind(token.0)
        .bind(skip_accounts)
        .fetch_all(&self.pool)
        .await
        .db()?
        .iter()
        .map(|row| rows::dispatch_lease(row, token))
        .collect()
    }

    async fn claim_session(
        &self,
        session: SessionId,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<Option<DispatchLease>> {
        let now = to_micros(now);
        let token = LeaseToken::generate();
        sqlx::query(
            "UPDATE dispatch_jobs SET lease_until = $3, lease_token = $4 \
             WHERE session_id = $1 AND lease_until <= $2 \
             RETURNING session_id, account_id, attempts",
        )
        .bind(session.to_string())
        .bind(now)
        .bind(now + lease.as_micros() as i64)
        .bind(token.0)
        .fetch_optional(&self.pool)
        .await
        .db()?
        .map(|row| rows::dispatch_lease(&row, token))
        .transpose()
    }

    async fn renew_dispatch(&self, lease: DispatchLease, until: DateTime<Utc>) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE dispatch_jobs SET lease_until = $3 \
             WHERE session_id = $1 AND lease_token = $2",
        )
        .bind(lease.session_id.to_string())
        .bind(lease.token.0)
        .bind(to_micros(until))
        .execute(&self.pool)
        .await
        .db()?
        .rows_affected();
        Ok(n > 0)
    }

    async fn release_dispatches(&self, leases: Vec<DispatchLease>) -> Result<()> {
        if leases.is_empty() {
            return Ok(());
        }
        let (ids, tokens): (Vec<String>, Vec<i64>) = leases
            .iter()
            .map(|l| (l.session_id.to_string(), l.token.0))
            .unzip();
        sqlx::query(
            "UPDATE dispatch_jobs j SET lease_until = 0 \
             FROM UNNEST($1::text[], $2::bigint[]) AS r(session_id, token) \
             WHERE j.session_id = r.session_id AND j.lease_token = r.token",
        )
        .bind(ids)
        .bind(tokens)
        .execute(&self.pool)
        .await
        .db()?;
        Ok(())
    }

    async fn retry_dispatch(&self, lease: DispatchLease, at: DateTime<Utc>) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE dispatch_jobs SET lease_until = 0, lease_token = 0, run_at = $3 \
             WHERE session_id = $1 AND lease_token = $2",
        )
        .bind(lease.session_id.to_string())
        .bind(lease.token.0)
        .bind(to_micros(at))
        .execute(&self.pool)
        .await
        .db()?
        .rows_affected();
        Ok(n > 0)
    }

    async fn update_session(&self, id: SessionId, u: SessionUpdate) -> Result<()> {
        let this = self.clone();
        detached(async move { this.update_session_now(id, u).await }).await
    }
}

#[async_trait]
impl CallbackOutbox for PostgresStore {
    async fn claim_callbacks(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<DueCallback>> {
        let now = to_micros(now);
        let token = LeaseToken::generate();
        // Only the oldest pending callback of each session is eligible, so
        // that a session's statuses arrive in the order they happened. A
        // claimed callback is next due when its lease runs out, so that
        // claims pass over it in the index.
        sqlx::query(
            "UPDATE callbacks SET lease_until = $2, lease_token = $4, next_attempt_at = $2 \
             WHERE id IN ( \
                SELECT c.id FROM callbacks c \
                WHERE c.state = 'pending' AND c.next_attempt_at <= $1 \
                  AND c.lease_until <= $1 \
                  AND c.id = (SELECT MIN(p.id) FROM callbacks p \
                              WHERE p.session_id = c.session_id AND p.state = 'pending') \
                ORDER BY c.next_attempt_at LIMIT $3 \
                FOR UPDATE OF c SKIP LOCKED) \
             RETURNING id, webhook_id, session_id, account_id, url, body, attempts",
        )
        .bind(now)
        .bind(now + lease.as_micros() as i64)
        .bind(limit as i64)
        .bind(token.0)
        .fetch_all(&self.pool)
        .await
        .db()?
        .iter()
        .map(|row| rows::due_callback(row, token))
        .collect()
    }

    async fn settle_callbacks(&self, settlements: Vec<Settlement>) -> Result<()> {
        let this = self.clone();
        detached(async move { this.settle_callbacks_now(settlements).await }).await
    }

    async fn release_callbacks(&self, leases: Vec<(i64, LeaseToken)>) -> Result<()> {
        if leases.is_empty() {
            return Ok(());
        }
        let (ids, tokens): (Vec<i64>, Vec<i64>) =
            leases.iter().map(|(id, token)| (*id, token.0)).unzip();
        sqlx::query(
            "UPDATE callbacks c SET lease_until = 0, next_attempt_at = $3 \
             FROM UNNEST($1::bigint[], $2::bigint[]) AS r(id, token) \
             WHERE c.id = r.id AND c.lease_token = r.token AND c.state = 'pending'",
        )
        .bind(ids)
        .bind(tokens)
        .bind(to_micros(Utc::now()))
        .execute(&self.pool)
        .await
        .db()?;
        Ok(())
    }

    async fn next_callback_due(&self) -> Result<Option<DateTime<Utc>>> {
        let next: Option<i64> = sqlx::query_scalar(
            // Only each session's oldest pending callback can be sent next;
            // the others wait behind it.
            "SELECT MIN(GREATEST(c.next_attempt_at, c.lease_until)) FROM callbacks c \
             WHERE c.state = 'pending' \
               AND c.id = (SELECT MIN(p.id) FROM callbacks p \
                           WHERE p.session_id = c.session_id AND p.state = 'pending')",
        )
        .fetch_one(&self.pool)
        .await
        .db()?;
        Ok(next.map(from_micros))
    }
}

#[cfg(test)]
mod tests {
    // The behaviour every backend shares is checked in tests/conformance.rs.
    use super::*;
    use crate::testing::scratch_postgres_url;

    async fn open(url: &str, durable: bool) -> anyhow::Result<PostgresStore> {
        PostgresStore::open(url, &StoreOptions { durable }).await
    }

    fn schema_of(url: &str) -> &str {
        url.rsplit_once("search_path%3D").unwrap().1
    }

    #[tokio::test]
    async fn a_newer_schema_is_refused() {
        let url = scratch_postgres_url().await;
        let store = open(&url, true).await.unwrap();
        sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES (99, 0)")
            .execute(&store.pool)
            .await
            .unwrap();
        let err = open(&url, true).await.err().unwrap();
        assert!(
            format!("{err:#}").contains("newer than this herald knows"),
            "{err:#}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn stores_opening_a_fresh_schema_together_migrate_once() {
        let url = scratch_postgres_url().await;
        let (a, b, c) = tokio::join!(open(&url, true), open(&url, true), open(&url, true));
        let (a, _b, _c) = (a.unwrap(), b.unwrap(), c.unwrap());
        let applied: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM schema_migrations ORDER BY version")
                .fetch_all(&a.pool)
                .await
                .unwrap();
        assert_eq!(applied, (1..=MIGRATIONS.len() as i64).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_scratch_url_keeps_the_tables_in_its_own_schema() {
        let url = scratch_postgres_url().await;
        let store = open(&url, true).await.unwrap();
        let home: String = sqlx::query_scalar(
            "SELECT n.nspname::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.oid = 'sessions'::regclass",
        )
        .fetch_one(&store.pool)
        .await
        .unwrap();
        assert_eq!(home, schema_of(&url));
        // A second scratch schema starts empty.
        let other = open(&scratch_postgres_url().await, true).await.unwrap();
        store.add_key("acme", [1; 32]).await.unwrap();
        assert_eq!(store.keys().await.unwrap().len(), 1);
        assert!(other.keys().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn relaxed_commits_turn_synchronous_commit_off() {
        let url = scratch_postgres_url().await;
        for (durable, setting) in [(true, "on"), (false, "off")] {
            let store = open(&url, durable).await.unwrap();
            let shown: String = sqlx::query_scalar("SHOW synchronous_commit")
                .fetch_one(&store.pool)
                .await
                .unwrap();
            assert_eq!(shown, setting);
        }
    }

    #[tokio::test]
    async fn errors_name_the_server_but_never_the_password() {
        for (url, named) in [
            // Nothing listens on port 1.
            (
                "postgres://herald:s3cret@127.0.0.1:1/app",
                "127.0.0.1:1/app",
            ),
            (
                "postgres://herald:s3cret@127.0.0.1:5432/app?sslmode=bogus",
                "127.0.0.1:5432/app",
            ),
        ] {
            let err = format!("{:#}", open(url, true).await.err().unwrap());

            assert!(err.contains(named), "{err}");
            assert!(!err.contains("s3cret"), "{err}");
        }
    }
}

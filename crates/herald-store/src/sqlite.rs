//! The SQLite backend: one file, WAL mode, group commit.
//!
//! SQLite allows one writer at a time, and a durable commit costs an fsync.
//! Rather than give each request its own transaction (one fsync each, and
//! writers queueing on the database lock), every write goes to a single
//! writer thread ([`writer`]). It takes whatever writes are waiting, runs
//! each in its own savepoint inside one transaction, commits once and then
//! answers them all. Under load, hundreds of trigger inserts share one
//! fsync; a write that fails rolls back its savepoint alone. Reads run on a
//! small pool of connections, which WAL lets proceed while the writer works:
//! a lookup by key on the calling thread when a connection is free, anything
//! bigger (and anything that finds them all busy) on Tokio's blocking pool.

mod writer;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use herald_core::campaign::{CampaignState, RecipientState};
use herald_core::keys::{generate_webhook_secret, KeyHash};
use herald_core::session::{Outcome, SessionStatus};
use herald_core::time::{from_micros, to_micros};
use herald_core::{AccountId, AgentId, CampaignId, Channel, ConnectionId, Region, SessionId};
use rusqlite::{params, Connection, OptionalExtension, Row};
use tokio::sync::oneshot;

use crate::rows::{self, AGENT_COLUMNS, SESSION_COLUMNS, TEMPLATE_COLUMNS, VERSION_COLUMNS};
use crate::rows::{now_micros, to_json, CONNECTION_COLUMNS, OPT_OUT_COLUMNS};
use crate::rows::{CAMPAIGN_COLUMNS, OPEN_RECIPIENTS, RECIPIENT_COLUMNS};
use crate::*;

const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/sqlite/0001_init.sql"),
    include_str!("../migrations/sqlite/0002_lease_tokens.sql"),
    include_str!("../migrations/sqlite/0003_conversations.sql"),
    include_str!("../migrations/sqlite/0004_tenancy.sql"),
    include_str!("../migrations/sqlite/0005_input_data.sql"),
    include_str!("../migrations/sqlite/0006_connections.sql"),
    include_str!("../migrations/sqlite/0007_provider_reports.sql"),
    include_str!("../migrations/sqlite/0008_opt_outs.sql"),
    include_str!("../migrations/sqlite/0009_campaigns.sql"),
];

const READERS: usize = 4;
/// The `next_attempt_at` of a callback that waits for an earlier one of its
/// session to be settled: never due by time, only when that one is settled.
const WAITING_BEHIND: i64 = i64::MAX;
/// Enough for every statement the writer runs, so none is parsed twice.
const STATEMENT_CACHE: usize = 128;

use writer::{Job, Reply, Writer};

pub struct SqliteStore {
    writer: Writer,
    readers: Arc<Vec<Mutex<Connection>>>,
    next_reader: AtomicUsize,
}

fn configure(conn: &Connection, durable: bool) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", if durable { "FULL" } else { "NORMAL" })?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Each write in a batch runs in a savepoint, whose journal of the pages
    // it changes lives in temporary storage: in memory, that costs a copy
    // rather than a write to a temporary file per savepoint.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // Checkpoints run on a thread of their own (see `writer`); the writer
    // makes one itself only if that thread falls far behind.
    conn.pragma_update(None, "wal_autocheckpoint", writer::WRITER_CHECKPOINT_PAGES)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(())
}

fn migrate(conn: &mut Connection) -> anyhow::Result<()> {
    // Exclusive, and the version read inside it: a server and a
    // `herald keys create` starting together must not both migrate.
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)?;
    let current: usize = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if current > MIGRATIONS.len() {
        anyhow::bail!(
            "the database has schema version {current}, newer than this herald knows ({}); \
             upgrade herald",
            MIGRATIONS.len()
        );
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        tx.execute_batch(sql)
            .with_context(|| format!("applying migration {}", i + 1))?;
        tx.pragma_update(None, "user_version", i + 1)?;
    }
    tx.commit()?;
    Ok(())
}

impl SqliteStore {
    pub async fn open(path: &str, options: &StoreOptions) -> anyhow::Result<Self> {
        let path = path.to_owned();
        let durable = options.durable;
        tokio::task::spawn_blocking(move || Self::open_blocking(&path, durable)).await?
    }

    fn open_blocking(path: &str, durable: bool) -> anyhow::Result<Self> {
        let open = || -> anyhow::Result<Connection> {
            let conn = Connection::open(Path::new(path))
                .with_context(|| format!("opening SQLite database {path}"))?;
            configure(&conn, durable).with_context(|| format!("configuring {path}"))?;
            Ok(conn)
        };
        let mut writer = open()?;
        migrate(&mut writer)?;
        let readers = (0..READERS)
            .map(|_| open().map(Mutex::new))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let writer = Writer::start(writer, open()?)?;
        Ok(SqliteStore {
            writer,
            readers: Arc::new(readers),
            next_reader: AtomicUsize::new(0),
        })
    }

    /// Runs `f` in the writer's next transaction and answers after the commit.
    async fn write<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let (tx, rx) = oneshot::channel::<Result<R>>();
        let job: Job = Box::new(move |conn| {
            let result = f(conn);
            let ok = result.is_ok();
            let reply: Reply = Box::new(move |commit| {
                let outcome = match (result, commit) {
                    (Ok(value), Ok(())) => Ok(value),
                    (Err(e), _) => Err(e),
                    (Ok(_), Err(e)) => {
                        Err(StoreError::Internal(anyhow::anyhow!("commit failed: {e}")))
                    }
                };
                let _ = tx.send(outcome);
            });
            (ok, reply)
        });
        if !self.writer.submit(job) {
            return Err(StoreError::Internal(anyhow::anyhow!(
                "the SQLite writer has stopped"
            )));
        }
        rx.await.map_err(|_| {
            StoreError::Internal(anyhow::anyhow!("the SQLite writer dropped a write"))
        })?
    }

    /// Runs `f`, a lookup by key that reads a handful of pages, on a free
    /// reader connection on the calling thread: handing it to a blocking
    /// thread and back costs more than the lookup. With every connection
    /// busy it waits its turn off the async threads, as [`Self::read`] does.
    async fn read_point<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let start = self.next_reader.fetch_add(1, Ordering::Relaxed);
        for i in 0..self.readers.len() {
            if let Ok(conn) = self.readers[(start + i) % self.readers.len()].try_lock() {
                return f(&conn);
            }
        }
        self.read(f).await
    }

    /// Runs `f` on a reader connection, off the async threads.
    async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let readers = self.readers.clone();
        let start = self.next_reader.fetch_add(1, Ordering::Relaxed);
        tokio::task::spawn_blocking(move || {
            // Take a free connection if there is one, else wait for ours.
            for i in 0..readers.len() {
                if let Ok(conn) = readers[(start + i) % readers.len()].try_lock() {
                    return f(&conn);
                }
            }
            let conn = readers[start % readers.len()]
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            f(&conn)
        })
        .await
        .map_err(|e| StoreError::Internal(anyhow::anyhow!("reader task failed: {e}")))?
    }
}

fn internal(e: rusqlite::Error) -> StoreError {
    StoreError::Internal(e.into())
}

trait SqlResult<T> {
    fn db(self) -> Result<T>;
}

impl<T> SqlResult<T> for rusqlite::Result<T> {
    fn db(self) -> Result<T> {
        self.map_err(internal)
    }
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
            || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
}

fn bump(conn: &Connection, kind: &str) -> Result<()> {
    conn.execute("UPDATE revisions SET rev = rev + 1 WHERE kind = ?1", [kind])
        .db()?;
    Ok(())
}

impl rows::Columns for Row<'_> {
    fn opt_text(&self, column: &str) -> Result<Option<String>> {
        self.get(column).db()
    }

    fn opt_int(&self, column: &str) -> Result<Option<i64>> {
        self.get(column).db()
    }

    fn flag(&self, column: &str) -> Result<bool> {
        self.get(column).db()
    }

    fn bytes(&self, column: &str) -> Result<Vec<u8>> {
        self.get(column).db()
    }
}

/// Every row `stmt` answers with `params`, each made into a record.
fn all<T>(
    stmt: &mut rusqlite::Statement<'_>,
    params: impl rusqlite::Params,
    record: impl Fn(&Row) -> Result<T>,
) -> Result<Vec<T>> {
    let mut rows = stmt.query(params).db()?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().db()? {
        out.push(record(row)?);
    }
    Ok(out)
}

/// The first row `stmt` answers with `params`, made into a record.
fn first<T>(
    stmt: &mut rusqlite::Statement<'_>,
    params: impl rusqlite::Params,
    record: impl Fn(&Row) -> Result<T>,
) -> Result<Option<T>> {
    let mut rows = stmt.query(params).db()?;
    rows.next().db()?.map(record).transpose()
}

/// Whether an agent other than `agent` holds `number` for `channel` in
/// `region` through what it has published or what is still under way: a
/// live agent whose current version has the number, or an open session
/// (of any agent, deleted or not) from it. Drafts are kept apart by the
/// `agents_number` index. A held number cannot be given to another agent,
/// so that replies to it reach one agent's sessions only.
fn number_held(
    conn: &Connection,
    channel: Channel,
    region: Region,
    number: &str,
    agent: &AgentId,
) -> Result<bool> {
    conn.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM agents a JOIN agent_versions v \
             ON v.agent_id = a.agent_id AND v.version = a.current_version \
           WHERE a.channel = ?1 AND a.region = ?2 AND a.deleted_at IS NULL \
             AND a.agent_id <> ?4 AND v.number = ?3) \
         OR EXISTS (SELECT 1 FROM sessions s JOIN agents a ON a.agent_id = s.agent_id \
           WHERE s.channel = ?1 AND s.from_number = ?3 AND s.status <> 'ended' \
             AND s.agent_id <> ?4 AND a.region = ?2)",
    )
    .db()?
    .query_row(
        params![channel.as_str(), region.as_str(), number, agent.as_str()],
        |row| row.get(0),
    )
    .db()
}

fn agent_in(conn: &Connection, account: AccountId, id: &AgentId) -> Result<Option<Agent>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {AGENT_COLUMNS} FROM agents \
             WHERE agent_id = ?1 AND account_id = ?2 AND deleted_at IS NULL"
        ))
        .db()?;
    first(&mut stmt, params![id.as_str(), account], |row| {
        rows::agent(row)
    })
}

/// Checks, in a write's transaction, that the account's connection is
/// still there: the API checked it before, but it may have been deleted
/// since.
fn live_connection(conn: &Connection, account: AccountId, id: &ConnectionId) -> Result<()> {
    let live: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM connections \
             WHERE id = ?1 AND account_id = ?2 AND deleted_at IS NULL)",
            params![id.as_str(), account],
            |r| r.get(0),
        )
        .db()?;
    if live {
        Ok(())
    } else {
        Err(StoreError::Conflict(connection_gone(id)))
    }
}

fn connection_in(
    conn: &Connection,
    account: Option<AccountId>,
    id: &ConnectionId,
) -> Result<Option<ConnectionRecord>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {CONNECTION_COLUMNS} FROM connections WHERE id = ?1 \
             AND (?2 IS NULL OR (account_id = ?2 AND deleted_at IS NULL))"
        ))
        .db()?;
    first(&mut stmt, params![id.as_str(), account], |row| {
        rows::connection(row)
    })
}

fn session_events(conn: &Connection, id: SessionId) -> Result<Vec<EventRecord>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT type, at, data FROM session_events WHERE session_id = ?1 ORDER BY id",
        )
        .db()?;
    all(&mut stmt, [id.to_string()], |row| rows::event(row))
}

/// An event ready to insert, its data already serialised: JSON is written
/// by the caller, so that the one writer thread spends no time on it.
struct EventRow {
    key: Option<String>,
    kind: String,
    at: i64,
    data: Option<String>,
}

impl EventRow {
    fn new(event: &NewEvent) -> Result<EventRow> {
        let stored = event.event.to_stored();
        Ok(EventRow {
            key: event.key.clone(),
            kind: stored.kind,
            at: to_micros(event.at),
            data: stored.data.as_ref().map(to_json).transpose()?,
        })
    }
}

/// An input ready to insert, its data already serialised (as events are).
struct InputInsert {
    kind: &'static str,
    text: String,
    data: Option<String>,
    at: i64,
    dedupe: Option<String>,
}

impl InputInsert {
    fn new(input: &NewInput) -> Result<InputInsert> {
        let stored = input.input.to_stored();
        Ok(InputInsert {
            kind: stored.kind.as_str(),
            text: stored.text,
            data: stored.data.as_ref().map(to_json).transpose()?,
            at: to_micros(input.at),
            dedupe: input.dedupe.clone(),
        })
    }
}

fn insert_event(conn: &Connection, session: &str, event: &EventRow) -> Result<()> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO session_events (session_id, key, type, at, data) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .db()?
    .execute(params![
        session, event.key, event.kind, event.at, event.data
    ])
    .db()?;
    Ok(())
}

/// Stores an input; returns its id.
fn insert_input(conn: &Connection, session: &str, input: &InputInsert) -> Result<i64> {
    let inserted: Option<i64> = conn
        .prepare_cached(
            "INSERT INTO session_inputs (session_id, kind, text, data, at, dedupe) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
             ON CONFLICT (session_id, dedupe) WHERE dedupe IS NOT NULL DO NOTHING \
             RETURNING id",
        )
        .db()?
        .query_row(
            params![
                session,
                input.kind,
                input.text,
                input.data,
                input.at,
                input.dedupe
            ],
            |r| r.get(0),
        )
        .optional()
        .db()?;
    match inserted {
        Some(id) => Ok(id),
        None => conn
            .prepare_cached("SELECT id FROM session_inputs WHERE session_id = ?1 AND dedupe = ?2")
            .db()?
            .query_row(params![session, input.dedupe], |r| r.get(0))
            .db(),
    }
}

fn insert_provider_ref(conn: &Connection, r: &ProviderRef) -> Result<()> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO provider_refs \
         (connection_id, provider_ref, session_id, item, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .db()?
    .execute(params![
        r.connection_id.as_str(),
        r.provider_ref,
        r.session_id.to_string(),
        r.item,
        now_micros()
    ])
    .db()?;
    Ok(())
}

#[async_trait]
impl AccountStore for SqliteStore {
    async fn add_key(&self, account: &str, hash: KeyHash) -> Result<AccountId> {
        let account = account.to_owned();
        self.write(move |conn| {
            let now = now_micros();
            conn.execute(
                "INSERT INTO accounts (name, webhook_secret, created_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (name) DO NOTHING",
                params![account, generate_webhook_secret(), now],
            )
            .db()?;
            let id: AccountId = conn
                .query_row("SELECT id FROM accounts WHERE name = ?1", [&account], |r| {
                    r.get(0)
                })
                .db()?;
            conn.execute(
                "INSERT INTO api_keys (hash, account_id, created_at) VALUES (?1, ?2, ?3)",
                params![&hash[..], id, now],
            )
            .db()?;
            bump(conn, "keys")?;
            Ok(id)
        })
        .await
    }

    async fn revoke_key(&self, hash: KeyHash) -> Result<bool> {
        self.write(move |conn| {
            let n = conn
                .execute(
                    "UPDATE api_keys SET revoked_at = ?2 WHERE hash = ?1 AND revoked_at IS NULL",
                    params![&hash[..], now_micros()],
                )
                .db()?;
            bump(conn, "keys")?;
            Ok(n > 0)
        })
        .await
    }

    async fn keys(&self) -> Result<Vec<KeyRow>> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare("SELECT hash, account_id, revoked_at IS NOT NULL AS revoked FROM api_keys")
                .db()?;
            all(&mut stmt, [], |row| rows::key(row))
        })
        .await
    }

    async fn accounts(&self) -> Result<Vec<AccountRow>> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare("SELECT id, name, webhook_secret FROM accounts")
                .db()?;
            all(&mut stmt, [], |row| rows::account(row))
        })
        .await
    }

    async fn revisions(&self) -> Result<Revisions> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached("SELECT kind, rev FROM revisions")
                .db()?;
            rows::revisions(all(&mut stmt, [], |row| {
                Ok((rows::text(row, "kind")?, rows::int(row, "rev")?))
            })?)
        })
        .await
    }
}

#[async_trait]
impl ConnectionStore for SqliteStore {
    async fn create_connection(&self, new: NewConnection) -> Result<ConnectionRecord> {
        self.write(move |conn| {
            let now = now_micros();
            let settings = to_json(&new.settings)?;
            conn.execute(
                &format!(
                    "INSERT INTO connections ({CONNECTION_COLUMNS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, NULL)"
                ),
                params![
                    new.id.as_str(),
                    new.account_id,
                    new.name,
                    new.provider,
                    settings,
                    new.sealed,
                    now
                ],
            )
            .db()?;
            bump(conn, "connections")?;
            connection_in(conn, Some(new.account_id), &new.id)?
                .ok_or_else(|| anyhow::anyhow!("connection vanished after insert").into())
        })
        .await
    }

    async fn connections(&self, account: AccountId) -> Result<Vec<ConnectionRecord>> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT {CONNECTION_COLUMNS} FROM connections \
                     WHERE account_id = ?1 AND deleted_at IS NULL ORDER BY created_at, id"
                ))
                .db()?;
            all(&mut stmt, [account], |row| rows::connection(row))
        })
        .await
    }

    async fn connection(
        &self,
        account: AccountId,
        id: &ConnectionId,
    ) -> Result<Option<ConnectionRecord>> {
        let id = id.clone();
        self.read(move |conn| connection_in(conn, Some(account), &id))
            .await
    }

    async fn connection_for_work(&self, id: &ConnectionId) -> Result<Option<ConnectionRecord>> {
        let id = id.clone();
        self.read_point(move |conn| connection_in(conn, None, &id))
            .await
    }

    async fn update_connection(
        &self,
        account: AccountId,
        id: &ConnectionId,
        patch: ConnectionPatch,
    ) -> Result<Option<ConnectionRecord>> {
        let id = id.clone();
        self.write(move |conn| {
            let Some(current) = connection_in(conn, Some(account), &id)? else {
                return Ok(None);
            };
            let settings = to_json(&patch.settings.unwrap_or(current.settings))?;
            conn.execute(
                "UPDATE connections SET name = ?2, settings = ?3, credentials = ?4, \
                 updated_at = ?5 WHERE id = ?1",
                params![
                    id.as_str(),
                    patch.name.unwrap_or(current.name),
                    settings,
                    patch.sealed.unwrap_or(current.sealed),
                    now_micros()
                ],
            )
            .db()?;
            bump(conn, "connections")?;
            connection_in(conn, Some(account), &id)
        })
        .await
    }

    async fn delete_connection(&self, account: AccountId, id: &ConnectionId) -> Result<bool> {
        let id = id.clone();
        self.write(move |conn| {
            if connection_in(conn, Some(account), &id)?.is_none() {
                return Ok(false);
            }
            let user: Option<String> = conn
                .query_row(
                    "SELECT a.agent_id FROM agents a LEFT JOIN agent_versions v \
                       ON v.agent_id = a.agent_id AND v.version = a.current_version \
                     WHERE a.account_id = ?2 AND a.deleted_at IS NULL \
                       AND (a.connection_id = ?1 OR v.connection_id = ?1) \
                     ORDER BY a.created_at LIMIT 1",
                    params![id.as_str(), account],
                    |r| r.get(0),
                )
                .optional()
                .db()?;
            if let Some(agent) = user {
                return Err(StoreError::Conflict(connection_in_use(&id, &agent)));
            }
            conn.execute(
                "UPDATE connections SET deleted_at = ?2 WHERE id = ?1",
                params![id.as_str(), now_micros()],
            )
            .db()?;
            bump(conn, "connections")?;
            Ok(true)
        })
        .await
    }

    async fn all_connections(&self) -> Result<Vec<ConnectionRecord>> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT {CONNECTION_COLUMNS} FROM connections ORDER BY created_at, id"
                ))
                .db()?;
            all(&mut stmt, [], |row| rows::connection(row))
        })
        .await
    }
}

/// The states a recipient is due in.
const DUE: &str = "('pending', 'waiting')";

fn campaign_in(
    conn: &Connection,
    account: Option<AccountId>,
    id: &CampaignId,
) -> Result<Option<CampaignRecord>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {CAMPAIGN_COLUMNS} FROM campaigns WHERE id = ?1 AND (?2 IS NULL OR account_id = ?2)"
        ))
        .db()?;
    first(&mut stmt, params![id.as_str(), account], |row| {
        rows::campaign(row)
    })
}

/// Writes a recipient's change, if it is still as `guard` (SQL over the
/// row, with ?1 and ?2 the campaign and `n`, and ?8 on) says.
fn change_recipient(
    conn: &Connection,
    campaign: &CampaignId,
    n: u32,
    change: &RecipientChange,
    guard: &str,
    guard_args: &[&dyn rusqlite::ToSql],
) -> Result<bool> {
    let sql = format!(
        "UPDATE campaign_recipients SET state = ?3, next_at = ?4, \
         last_outcome = COALESCE(?5, last_outcome), skip_reason = ?6, updated_at = ?7 \
         WHERE campaign_id = ?1 AND n = ?2 AND {guard}"
    );
    let mut args: Vec<&dyn rusqlite::ToSql> = Vec::new();
    let (campaign, state, next_at, outcome, now) = (
        campaign.as_str(),
        change.state.as_str(),
        change.next_at.map(to_micros),
        change.last_outcome.map(|o| o.as_str()),
        now_micros(),
    );
    args.extend([
        &campaign as &dyn rusqlite::ToSql,
        &n,
        &state,
        &next_at,
        &outcome,
        &change.skip_reason,
        &now,
    ]);
    args.extend_from_slice(guard_args);
    let changed = conn
        .prepare_cached(&sql)
        .db()?
        .execute(rusqlite::params_from_iter(args))
        .db()?;
    Ok(changed == 1)
}

#[async_trait]
impl CampaignStore for SqliteStore {
    async fn create_campaign(&self, c: NewCampaign) -> Result<CampaignRecord> {
        let settings = to_json(&c.settings)?;
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO campaigns \
                 (id, account_id, name, agent_id, status_url, settings, state, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'draft', ?7)",
            )
            .db()?
            .execute(params![
                c.id.as_str(),
                c.account_id,
                c.name,
                c.agent_id.as_str(),
                c.status_url,
                settings,
                to_micros(c.created_at)
            ])
            .db()?;
            campaign_in(conn, None, &c.id)?
                .ok_or_else(|| StoreError::Internal(anyhow::anyhow!("the campaign just stored")))
        })
        .await
    }

    async fn campaign(
        &self,
        account: AccountId,
        id: &CampaignId,
    ) -> Result<Option<CampaignRecord>> {
        let id = id.clone();
        self.read_point(move |conn| campaign_in(conn, Some(account), &id))
            .await
    }

    async fn campaigns(&self, account: AccountId) -> Result<Vec<CampaignRecord>> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {CAMPAIGN_COLUMNS} FROM campaigns WHERE account_id = ?1 \
                     ORDER BY created_at DESC, id DESC"
                ))
                .db()?;
            all(&mut stmt, [account], |row| rows::campaign(row))
        })
        .await
    }

    async fn live_campaigns(&self) -> Result<Vec<CampaignRecord>> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {CAMPAIGN_COLUMNS} FROM campaigns \
                     WHERE state IN ('scheduled', 'running', 'paused') \
                     OR (state = 'cancelled' AND EXISTS (SELECT 1 FROM campaign_recipients r \
                         WHERE r.campaign_id = campaigns.id AND r.state = 'in_progress')) \
                     ORDER BY created_at, id"
                ))
                .db()?;
            all(&mut stmt, [], |row| rows::campaign(row))
        })
        .await
    }

    async fn set_campaign_state(
        &self,
        account: AccountId,
        id: &CampaignId,
        from: &[CampaignState],
        to: CampaignState,
        at: DateTime<Utc>,
    ) -> Result<Option<CampaignRecord>> {
        let id = id.clone();
        let from: Vec<&'static str> = from.iter().map(|s| s.as_str()).collect();
        self.write(move |conn| {
            let Some(campaign) = campaign_in(conn, Some(account), &id)? else {
                return Ok(None);
            };
            if !from.contains(&campaign.state.as_str()) {
                return Ok(None);
            }
            let at = to_micros(at);
            conn.prepare_cached(
                "UPDATE campaigns SET state = ?2, \
                 started_at = CASE WHEN ?3 THEN COALESCE(started_at, ?5) ELSE started_at END, \
                 ended_at = CASE WHEN ?4 THEN ?5 ELSE ended_at END WHERE id = ?1",
            )
            .db()?
            .execute(params![
                id.as_str(),
                to.as_str(),
                matches!(to, CampaignState::Running | CampaignState::Scheduled),
                to.is_final(),
                at
            ])
            .db()?;
            campaign_in(conn, Some(account), &id)
        })
        .await
    }

    async fn add_recipients(
        &self,
        campaign: &CampaignId,
        recipients: Vec<NewRecipient>,
        max_total: u32,
    ) -> Result<RecipientsAdded> {
        let campaign = campaign.clone();
        let rows: Vec<(NewRecipient, String)> = recipients
            .into_iter()
            .map(|r| {
                let parameters = to_json(&r.parameters)?;
                Ok((r, parameters))
            })
            .collect::<Result<_>>()?;
        self.write(move |conn| {
            let have: i64 = conn
                .prepare_cached("SELECT recipients FROM campaigns WHERE id = ?1")
                .db()?
                .query_row([campaign.as_str()], |row| row.get(0))
                .db()?;
            let mut added = RecipientsAdded::default();
            let now = now_micros();
            let mut insert = conn
                .prepare_cached(
                    "INSERT INTO campaign_recipients (campaign_id, n, recipient, external_id, \
                     timezone, zone_source, parameters, state, updated_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending', ?8)",
                )
                .db()?;
            let mut taken_to = conn
                .prepare_cached(
                    "SELECT 1 FROM campaign_recipients WHERE campaign_id = ?1 AND recipient = ?2",
                )
                .db()?;
            let mut taken_id = conn
                .prepare_cached(
                    "SELECT 1 FROM campaign_recipients WHERE campaign_id = ?1 AND external_id = ?2",
                )
                .db()?;
            for (i, (r, parameters)) in rows.iter().enumerate() {
                if taken_to.exists(params![campaign.as_str(), r.to]).db()? {
                    added.refused.push((i, RecipientRefusal::DuplicateTo));
                    continue;
                }
                if let Some(id) = &r.external_id {
                    if taken_id.exists(params![campaign.as_str(), id]).db()? {
                        added.refused.push((i, RecipientRefusal::DuplicateId));
                        continue;
                    }
                }
                let n = have + i64::from(added.accepted);
                if n >= i64::from(max_total) {
                    return Err(StoreError::Conflict(format!(
                        "a campaign has at most {max_total} recipients"
                    )));
                }
                insert
                    .execute(params![
                        campaign.as_str(),
                        n,
                        r.to,
                        r.external_id,
                        r.timezone,
                        r.zone_source,
                        parameters,
                        now
                    ])
                    .db()?;
                added.accepted += 1;
            }
            conn.prepare_cached("UPDATE campaigns SET recipients = recipients + ?2 WHERE id = ?1")
                .db()?
                .execute(params![campaign.as_str(), added.accepted])
                .db()?;
            Ok(added)
        })
        .await
    }

    async fn recipient_counts(&self, campaign: &CampaignId) -> Result<RecipientCounts> {
        let campaign = campaign.clone();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&rows::RECIPIENT_GROUPS.replace("$1", "?1"))
                .db()?;
            let groups = stmt
                .query_map([campaign.as_str()], |row| {
                    Ok((
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                    ))
                })
                .db()?
                .collect::<rusqlite::Result<Vec<rows::RecipientGroup>>>()
                .db()?;
            rows::recipient_counts(groups)
        })
        .await
    }

    async fn recipients(
        &self,
        campaign: &CampaignId,
        state: Option<RecipientState>,
        after: Option<u32>,
        limit: usize,
    ) -> Result<Vec<RecipientRecord>> {
        let campaign = campaign.clone();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {RECIPIENT_COLUMNS} FROM campaign_recipients \
                     WHERE campaign_id = ?1 AND (?2 IS NULL OR state = ?2) AND n > ?3 \
                     ORDER BY n LIMIT ?4"
                ))
                .db()?;
            all(
                &mut stmt,
                params![
                    campaign.as_str(),
                    state.map(|s| s.as_str()),
                    after.map_or(-1, i64::from),
                    limit as i64
                ],
                |row| rows::recipient(row),
            )
        })
        .await
    }

    async fn due_recipients(
        &self,
        campaign: &CampaignId,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<RecipientRecord>> {
        let campaign = campaign.clone();
        self.read(move |conn| {
            let mut waiting = conn
                .prepare_cached(&format!(
                    "SELECT {RECIPIENT_COLUMNS} FROM campaign_recipients \
                     WHERE campaign_id = ?1 AND state = 'waiting' AND next_at <= ?2 \
                     ORDER BY next_at, n LIMIT ?3"
                ))
                .db()?;
            let mut due = all(
                &mut waiting,
                params![campaign.as_str(), to_micros(now), limit as i64],
                |row| rows::recipient(row),
            )?;
            if due.len() < limit {
                let mut pending = conn
                    .prepare_cached(&format!(
                        "SELECT {RECIPIENT_COLUMNS} FROM campaign_recipients \
                         WHERE campaign_id = ?1 AND state = 'pending' ORDER BY n LIMIT ?2"
                    ))
                    .db()?;
                due.extend(all(
                    &mut pending,
                    params![campaign.as_str(), (limit - due.len()) as i64],
                    |row| rows::recipient(row),
                )?);
            }
            Ok(due)
        })
        .await
    }

    async fn has_open_recipients(&self, campaign: &CampaignId) -> Result<bool> {
        let campaign = campaign.clone();
        self.read_point(move |conn| {
            // One probe of each state's own index, however many are done.
            conn.prepare_cached(OPEN_RECIPIENTS)
                .db()?
                .query_row([campaign.as_str()], |row| row.get::<_, bool>(0))
                .db()
        })
        .await
    }

    async fn recipients_in_progress(&self, campaign: &CampaignId) -> Result<u32> {
        let campaign = campaign.clone();
        self.read_point(move |conn| {
            let count: i64 = conn
                .prepare_cached(
                    "SELECT COUNT(*) FROM campaign_recipients \
                     WHERE campaign_id = ?1 AND state = 'in_progress'",
                )
                .db()?
                .query_row([campaign.as_str()], |row| row.get(0))
                .db()?;
            Ok(count as u32)
        })
        .await
    }

    async fn start_attempt(
        &self,
        campaign: &CampaignId,
        n: u32,
        attempts: u32,
        session: NewSession,
    ) -> Result<bool> {
        let campaign = campaign.clone();
        let insert = SessionInsert::new(session)?;
        self.write(move |conn| {
            let claimed = conn
                .prepare_cached(&format!(
                    "UPDATE campaign_recipients SET state = 'in_progress', \
                     attempts = attempts + 1, session_id = ?4, next_at = NULL, updated_at = ?5 \
                     WHERE campaign_id = ?1 AND n = ?2 AND attempts = ?3 AND state IN {DUE}"
                ))
                .db()?
                .execute(params![
                    campaign.as_str(),
                    n,
                    attempts,
                    insert.s.id.to_string(),
                    now_micros()
                ])
                .db()?;
            if claimed == 0 {
                return Ok(false);
            }
            match insert_session(conn, &insert)? {
                Created::Stored => Ok(true),
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
        let campaign = campaign.clone();
        self.write(move |conn| {
            change_recipient(
                conn,
                &campaign,
                n,
                &change,
                &format!("attempts = ?8 AND state IN {DUE}"),
                &[&attempts],
            )
        })
        .await
    }

    async fn ended_attempts(
        &self,
        campaign: &CampaignId,
        limit: usize,
    ) -> Result<Vec<EndedAttempt>> {
        let campaign = campaign.clone();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT r.n, r.session_id, r.attempts, s.outcome \
                     FROM campaign_recipients r JOIN sessions s ON s.id = r.session_id \
                     WHERE r.campaign_id = ?1 AND r.state = 'in_progress' AND s.status = 'ended' \
                     ORDER BY r.n LIMIT ?2",
                )
                .db()?;
            let rows = stmt
                .query_map(params![campaign.as_str(), limit as i64], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, i64>(2)?,
                        row.get::<_, Option<String>>(3)?,
                    ))
                })
                .db()?;
            rows.map(|row| {
                let (n, session, attempts, outcome) = row.db()?;
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
        })
        .await
    }

    async fn settle_attempt(
        &self,
        campaign: &CampaignId,
        n: u32,
        session_id: SessionId,
        change: RecipientChange,
    ) -> Result<bool> {
        let campaign = campaign.clone();
        self.write(move |conn| {
            let session = session_id.to_string();
            change_recipient(
                conn,
                &campaign,
                n,
                &change,
                "state = 'in_progress' AND session_id = ?8",
                &[&session],
            )
        })
        .await
    }

    async fn close_recipients(
        &self,
        campaign: &CampaignId,
        to: RecipientState,
        skip_reason: Option<&str>,
    ) -> Result<u64> {
        let campaign = campaign.clone();
        let skip_reason = skip_reason.map(str::to_owned);
        self.write(move |conn| {
            let closed = conn
                .prepare_cached(&format!(
                    "UPDATE campaign_recipients \
                     SET state = ?2, next_at = NULL, skip_reason = ?4, updated_at = ?3 \
                     WHERE campaign_id = ?1 AND state IN {DUE}"
                ))
                .db()?
                .execute(params![
                    campaign.as_str(),
                    to.as_str(),
                    now_micros(),
                    skip_reason
                ])
                .db()?;
            Ok(closed as u64)
        })
        .await
    }
}

#[async_trait]
impl OptOutStore for SqliteStore {
    async fn add_opt_out(&self, account: AccountId, o: OptOut) -> Result<bool> {
        self.write(move |conn| {
            let added = conn
                .execute(
                    "INSERT INTO opt_outs \
                     (account_id, channel, recipient, source, session_id, created_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
                    params![
                        account,
                        o.channel.as_str(),
                        o.to,
                        o.source,
                        o.session_id.map(|id| id.to_string()),
                        to_micros(o.created_at)
                    ],
                )
                .db()?;
            Ok(added == 1)
        })
        .await
    }

    async fn remove_opt_out(&self, account: AccountId, channel: Channel, to: &str) -> Result<bool> {
        let to = to.to_owned();
        self.write(move |conn| {
            let removed = conn
                .execute(
                    "DELETE FROM opt_outs WHERE account_id = ?1 AND channel = ?2 AND recipient = ?3",
                    params![account, channel.as_str(), to],
                )
                .db()?;
            Ok(removed == 1)
        })
        .await
    }

    async fn opt_out(
        &self,
        account: AccountId,
        channel: Channel,
        to: &str,
    ) -> Result<Option<OptOut>> {
        let to = to.to_owned();
        self.read_point(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {OPT_OUT_COLUMNS} FROM opt_outs \
                     WHERE account_id = ?1 AND channel = ?2 AND recipient = ?3"
                ))
                .db()?;
            first(&mut stmt, params![account, channel.as_str(), to], |row| {
                rows::opt_out(row)
            })
        })
        .await
    }

    async fn opt_outs(
        &self,
        account: AccountId,
        channel: Option<Channel>,
        after: Option<OptOutCursor>,
        limit: usize,
    ) -> Result<Vec<OptOut>> {
        self.read(move |conn| {
            let (after_channel, after_to) = after
                .map(|c| (c.channel.as_str().to_owned(), c.to))
                .unwrap_or_default();
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {OPT_OUT_COLUMNS} FROM opt_outs \
                     WHERE account_id = ?1 AND (?2 IS NULL OR channel = ?2) \
                       AND (channel, recipient) > (?3, ?4) \
                     ORDER BY channel, recipient LIMIT ?5"
                ))
                .db()?;
            all(
                &mut stmt,
                params![
                    account,
                    channel.map(Channel::as_str),
                    after_channel,
                    after_to,
                    limit as i64
                ],
                |row| rows::opt_out(row),
            )
        })
        .await
    }
}

#[async_trait]
impl AgentStore for SqliteStore {
    async fn create_agent(&self, agent: NewAgent) -> Result<Agent> {
        self.write(move |conn| {
            let id = AgentId::generate();
            let now = now_micros();
            let flow = to_json(&agent.flow)?;
            if number_held(conn, agent.channel, agent.region, &agent.number, &id)? {
                return Err(StoreError::Conflict(number_taken(
                    &agent.number,
                    agent.channel,
                )));
            }
            if let Some(connection) = &agent.connection_id {
                live_connection(conn, agent.account_id, connection)?;
            }
            let inserted = conn.execute(
                &format!(
                    "INSERT INTO agents ({AGENT_COLUMNS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, ?8, ?8, ?9)"
                ),
                params![
                    id.as_str(),
                    agent.account_id,
                    agent.name,
                    agent.channel.as_str(),
                    agent.number,
                    agent.region.as_str(),
                    flow,
                    now,
                    agent.connection_id.as_ref().map(ConnectionId::as_str),
                ],
            );
            match inserted {
                Err(e) if is_unique_violation(&e) => {
                    return Err(StoreError::Conflict(number_taken(
                        &agent.number,
                        agent.channel,
                    )))
                }
                other => other.db()?,
            };
            bump(conn, "agents")?;
            agent_in(conn, agent.account_id, &id)?
                .ok_or_else(|| anyhow::anyhow!("agent vanished after insert").into())
        })
        .await
    }

    async fn agents(&self, account: AccountId) -> Result<Vec<Agent>> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT {AGENT_COLUMNS} FROM agents \
                     WHERE account_id = ?1 AND deleted_at IS NULL ORDER BY created_at, agent_id"
                ))
                .db()?;
            all(&mut stmt, [account], |row| rows::agent(row))
        })
        .await
    }

    async fn agent(&self, account: AccountId, id: &AgentId) -> Result<Option<Agent>> {
        let id = id.clone();
        self.read(move |conn| agent_in(conn, account, &id)).await
    }

    async fn update_agent(
        &self,
        account: AccountId,
        id: &AgentId,
        patch: AgentPatch,
    ) -> Result<Option<Agent>> {
        let id = id.clone();
        self.write(move |conn| {
            let Some(current) = agent_in(conn, account, &id)? else {
                return Ok(None);
            };
            let name = patch.name.unwrap_or(current.name);
            let number = patch.number.unwrap_or(current.number.clone());
            if number != current.number
                && number_held(conn, current.channel, current.region, &number, &id)?
            {
                return Err(StoreError::Conflict(number_taken(&number, current.channel)));
            }
            let flow = to_json(&patch.flow.unwrap_or(current.flow))?;
            let connection = patch.connection_id.unwrap_or(current.connection_id);
            if let Some(connection) = &connection {
                live_connection(conn, account, connection)?;
            }
            let updated = conn.execute(
                "UPDATE agents SET name = ?2, number = ?3, flow = ?4, updated_at = ?5, \
                 connection_id = ?6 WHERE agent_id = ?1",
                params![
                    id.as_str(),
                    name,
                    number,
                    flow,
                    now_micros(),
                    connection.as_ref().map(ConnectionId::as_str)
                ],
            );
            match updated {
                Err(e) if is_unique_violation(&e) => {
                    return Err(StoreError::Conflict(number_taken(&number, current.channel)))
                }
                other => other.db()?,
            };
            bump(conn, "agents")?;
            agent_in(conn, account, &id)
        })
        .await
    }

    async fn delete_agent(&self, account: AccountId, id: &AgentId) -> Result<bool> {
        let id = id.clone();
        self.write(move |conn| {
            let n = conn
                .execute(
                    "UPDATE agents SET deleted_at = ?3 \
                     WHERE agent_id = ?1 AND account_id = ?2 AND deleted_at IS NULL",
                    params![id.as_str(), account, now_micros()],
                )
                .db()?;
            bump(conn, "agents")?;
            Ok(n > 0)
        })
        .await
    }

    async fn publish_agent(&self, account: AccountId, id: &AgentId) -> Result<Option<u32>> {
        let id = id.clone();
        self.write(move |conn| {
            let Some(agent) = agent_in(conn, account, &id)? else {
                return Ok(None);
            };
            // The draft's number was checked when it was written; this
            // catches a store from before that check.
            if number_held(conn, agent.channel, agent.region, &agent.number, &id)? {
                return Err(StoreError::Conflict(number_taken(
                    &agent.number,
                    agent.channel,
                )));
            }
            if let Some(connection) = &agent.connection_id {
                live_connection(conn, account, connection)?;
            }
            let version = agent.current_version.unwrap_or(0) + 1;
            conn.execute(
                &format!(
                    "INSERT INTO agent_versions ({VERSION_COLUMNS}) \
                     SELECT agent_id, ?2, name, channel, number, region, flow, ?3, connection_id \
                     FROM agents WHERE agent_id = ?1"
                ),
                params![id.as_str(), version, now_micros()],
            )
            .db()?;
            conn.execute(
                "UPDATE agents SET current_version = ?2 WHERE agent_id = ?1",
                params![id.as_str(), version],
            )
            .db()?;
            bump(conn, "agents")?;
            Ok(Some(version))
        })
        .await
    }

    async fn agent_version(&self, id: &AgentId, version: u32) -> Result<Option<AgentVersion>> {
        let id = id.clone();
        self.read_point(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {VERSION_COLUMNS} FROM agent_versions \
                     WHERE agent_id = ?1 AND version = ?2"
                ))
                .db()?;
            first(&mut stmt, params![id.as_str(), version], |row| {
                rows::agent_version(row)
            })
        })
        .await
    }

    async fn agent_index(&self) -> Result<Vec<AgentIndexRow>> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT a.agent_id, a.account_id, a.channel, a.region, v.version, v.number \
                     FROM agents a LEFT JOIN agent_versions v \
                       ON v.agent_id = a.agent_id AND v.version = a.current_version \
                     WHERE a.deleted_at IS NULL",
                )
                .db()?;
            all(&mut stmt, [], |row| rows::agent_index(row))
        })
        .await
    }

    async fn set_rate(&self, id: &AgentId, rate: u32) -> Result<bool> {
        let id = id.clone();
        self.write(move |conn| {
            let exists: bool = conn
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM agents WHERE agent_id = ?1 AND deleted_at IS NULL)",
                    [id.as_str()],
                    |r| r.get(0),
                )
                .db()?;
            if !exists {
                return Ok(false);
            }
            conn.execute(
                "INSERT INTO agent_limits (agent_id, rate) VALUES (?1, ?2) \
                 ON CONFLICT (agent_id) DO UPDATE SET rate = excluded.rate",
                params![id.as_str(), rate],
            )
            .db()?;
            bump(conn, "limits")?;
            Ok(true)
        })
        .await
    }

    async fn rates(&self) -> Result<Vec<(AgentId, u32)>> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare("SELECT agent_id, rate FROM agent_limits")
                .db()?;
            all(&mut stmt, [], |row| {
                Ok((rows::parsed(row, "agent_id")?, rows::small(row, "rate")?))
            })
        })
        .await
    }

    async fn create_template(&self, account: AccountId, t: Template) -> Result<()> {
        self.write(move |conn| {
            let inserted = conn.execute(
                "INSERT INTO whatsapp_templates \
                 (account_id, namespace, name, locale, header, body, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    account,
                    t.namespace,
                    t.name,
                    t.locale,
                    t.header,
                    t.body,
                    to_micros(t.created_at)
                ],
            );
            match inserted {
                Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict(template_taken(&t))),
                other => other.db().map(|_| ()),
            }
        })
        .await
    }

    async fn templates(&self, account: AccountId) -> Result<Vec<Template>> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT {TEMPLATE_COLUMNS} FROM whatsapp_templates WHERE account_id = ?1 \
                     ORDER BY namespace, name, locale"
                ))
                .db()?;
            all(&mut stmt, [account], |row| rows::template(row))
        })
        .await
    }

    async fn template(
        &self,
        account: AccountId,
        namespace: &str,
        name: &str,
        locale: &str,
    ) -> Result<Option<Template>> {
        let key = (namespace.to_owned(), name.to_owned(), locale.to_owned());
        self.read_point(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {TEMPLATE_COLUMNS} FROM whatsapp_templates \
                     WHERE account_id = ?1 AND namespace = ?2 AND name = ?3 AND locale = ?4"
                ))
                .db()?;
            first(&mut stmt, params![account, key.0, key.1, key.2], |row| {
                rows::template(row)
            })
        })
        .await
    }
}

/// A session as [`insert_session`] writes it: its JSON made beforehand,
/// off the writer thread.
struct SessionInsert {
    s: NewSession,
    parameters: String,
    first_input: Option<InputInsert>,
    whatsapp: Option<String>,
}

impl SessionInsert {
    fn new(s: NewSession) -> Result<Self> {
        Ok(SessionInsert {
            parameters: to_json(&s.parameters)?,
            first_input: s.first_input.as_ref().map(InputInsert::new).transpose()?,
            whatsapp: s.whatsapp.as_ref().map(to_json).transpose()?,
            s,
        })
    }
}

/// Stores a session, its first event and its dispatch job (and its
/// idempotency record), in the writer's transaction.
fn insert_session(conn: &Connection, i: &SessionInsert) -> Result<Created> {
    let id = i.s.id.to_string();
    let created = to_micros(i.s.created_at);
    if let Some(idem) = &i.s.idempotency {
        let existing = conn
            .prepare_cached(
                "SELECT request_hash, response, created_at FROM idempotency_keys \
                     WHERE account_id = ?1 AND key = ?2",
            )
            .db()?
            .query_row(params![i.s.account_id, idem.key], |row| {
                let hash: Vec<u8> = row.get(0)?;
                Ok((hash, row.get::<_, String>(1)?, row.get::<_, i64>(2)?))
            })
            .optional()
            .db()?;
        if let Some((hash, response, at)) = existing {
            if created - at < IDEMPOTENCY_WINDOW.as_micros() as i64 {
                return Ok(Created::Duplicate(IdempotentResponse {
                    request_hash: hash.try_into().unwrap_or([0; 32]),
                    response,
                }));
            }
        }
        conn.prepare_cached(
            "INSERT OR REPLACE INTO idempotency_keys \
                 (account_id, key, request_hash, response, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .db()?
        .execute(params![
            i.s.account_id,
            idem.key,
            &idem.request_hash[..],
            idem.response,
            created
        ])
        .db()?;
    }
    conn.prepare_cached(&format!(
        "INSERT INTO sessions ({SESSION_COLUMNS}) VALUES \
             (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'queued', NULL, ?8, ?9, ?10, ?11, NULL, ?12, NULL, \
              ?13, ?14)"
    ))
    .db()?
    .execute(params![
        id,
        i.s.account_id,
        i.s.agent_id.as_str(),
        i.s.agent_version,
        i.s.channel.as_str(),
        i.s.to,
        i.s.from,
        i.s.status_url,
        i.s.hangup_on_machine,
        i.parameters,
        i.whatsapp,
        created,
        i.s.inbound,
        i.s.campaign_id.as_ref().map(|c| c.as_str())
    ])
    .db()?;
    if let Some(input) = &i.first_input {
        insert_input(conn, &id, input)?;
    }
    insert_event(
        conn,
        &id,
        &EventRow::new(&NewEvent {
            key: Some("queued".into()),
            event: herald_core::session::SessionEvent::Queued,
            at: i.s.created_at,
        })?,
    )?;
    conn.prepare_cached(
        "INSERT INTO dispatch_jobs (session_id, run_at, account_id) VALUES (?1, ?2, ?3)",
    )
    .db()?
    .execute(params![id, created, i.s.account_id])
    .db()?;
    Ok(Created::Stored)
}

#[async_trait]
impl SessionStore for SqliteStore {
    async fn create_session(&self, s: NewSession) -> Result<Created> {
        let insert = SessionInsert::new(s)?;
        self.write(move |conn| insert_session(conn, &insert)).await
    }

    async fn idempotent_response(
        &self,
        account: AccountId,
        key: &str,
        max_age: Duration,
    ) -> Result<Option<IdempotentResponse>> {
        let key = key.to_owned();
        self.read_point(move |conn| {
            let oldest = now_micros() - max_age.as_micros() as i64;
            let mut stmt = conn
                .prepare_cached(
                    "SELECT request_hash, response FROM idempotency_keys \
                     WHERE account_id = ?1 AND key = ?2 AND created_at > ?3",
                )
                .db()?;
            first(&mut stmt, params![account, key, oldest], |row| {
                rows::idempotent(row)
            })
        })
        .await
    }

    async fn purge_idempotency(&self, max_age: Duration) -> Result<usize> {
        self.write(move |conn| {
            let oldest = now_micros() - max_age.as_micros() as i64;
            conn.execute(
                "DELETE FROM idempotency_keys WHERE created_at <= ?1",
                [oldest],
            )
            .db()
        })
        .await
    }

    async fn session(&self, account: AccountId, id: SessionId) -> Result<Option<SessionRecord>> {
        self.read_point(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {SESSION_COLUMNS}, flow_state FROM sessions \
                     WHERE id = ?1 AND account_id = ?2"
                ))
                .db()?;
            let found = first(&mut stmt, params![id.to_string(), account], |row| {
                rows::session_with_state(row)
            })?;
            match found {
                Some(mut s) => {
                    s.events = session_events(conn, id)?;
                    Ok(Some(s))
                }
                None => Ok(None),
            }
        })
        .await
    }

    async fn sessions(&self, account: AccountId, f: SessionFilter) -> Result<Vec<SessionRecord>> {
        self.read(move |conn| {
            let mut sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE account_id = ?1");
            let mut args: Vec<Box<dyn rusqlite::ToSql>> = vec![Box::new(account)];
            if let Some(agent) = &f.agent_id {
                args.push(Box::new(agent.as_str().to_owned()));
                sql += &format!(" AND agent_id = ?{}", args.len());
            }
            if let Some(status) = f.status {
                args.push(Box::new(status.as_str()));
                sql += &format!(" AND status = ?{}", args.len());
            }
            if let Some(campaign) = &f.campaign_id {
                args.push(Box::new(campaign.as_str().to_owned()));
                sql += &format!(" AND campaign_id = ?{}", args.len());
            }
            if let Some(before) = f.before {
                args.push(Box::new(before.to_string()));
                sql += &format!(" AND id < ?{}", args.len());
            }
            args.push(Box::new(f.limit as i64));
            sql += &format!(" ORDER BY id DESC LIMIT ?{}", args.len());
            let mut stmt = conn.prepare(&sql).db()?;
            all(&mut stmt, rusqlite::params_from_iter(args.iter()), |row| {
                rows::session(row)
            })
        })
        .await
    }

    async fn session_for_work(&self, id: SessionId) -> Result<Option<SessionRecord>> {
        self.read_point(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {SESSION_COLUMNS}, flow_state FROM sessions WHERE id = ?1"
                ))
                .db()?;
            first(&mut stmt, [id.to_string()], |row| {
                rows::session_with_state(row)
            })
        })
        .await
    }

    async fn deliver_input(&self, session: SessionId, input: NewInput) -> Result<Option<i64>> {
        let input = InputInsert::new(&input)?;
        self.write(move |conn| {
            let sid = session.to_string();
            // The lease is left alone: a worker holding it sees the input
            // when it next puts the session to sleep.
            let open = conn
                .prepare_cached(
                    "UPDATE dispatch_jobs SET run_at = MIN(run_at, ?2) WHERE session_id = ?1",
                )
                .db()?
                .execute(params![sid, now_micros()])
                .db()?
                > 0;
            if !open {
                return Ok(None);
            }
            insert_input(conn, &sid, &input).map(Some)
        })
        .await
    }

    async fn provider_ref(
        &self,
        connection: &ConnectionId,
        provider_ref: &str,
    ) -> Result<Option<ProviderRef>> {
        let (connection, provider_ref) = (connection.clone(), provider_ref.to_owned());
        self.read_point(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT connection_id, provider_ref, session_id, item FROM provider_refs \
                     WHERE connection_id = ?1 AND provider_ref = ?2",
                )
                .db()?;
            first(
                &mut stmt,
                params![connection.as_str(), provider_ref],
                |row| rows::provider_ref(row),
            )
        })
        .await
    }

    async fn session_provider_refs(&self, session: SessionId) -> Result<Vec<ProviderRef>> {
        self.read_point(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT connection_id, provider_ref, session_id, item FROM provider_refs \
                     WHERE session_id = ?1 ORDER BY created_at, item",
                )
                .db()?;
            all(&mut stmt, [session.to_string()], |row| {
                rows::provider_ref(row)
            })
        })
        .await
    }

    async fn pending_inputs(&self, session: SessionId, after: i64) -> Result<Vec<InputRow>> {
        self.read_point(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT id, kind, text, data, at FROM session_inputs \
                     WHERE session_id = ?1 AND id > ?2 ORDER BY id",
                )
                .db()?;
            all(&mut stmt, params![session.to_string(), after], |row| {
                rows::input(row)
            })
        })
        .await
    }

    async fn open_sessions(
        &self,
        channel: herald_core::Channel,
        to: &str,
        from: &str,
    ) -> Result<Vec<OpenSession>> {
        let (to, from) = (to.to_owned(), from.to_owned());
        self.read_point(move |conn| {
            // `status <> 'ended'` as the index has it, so that it serves.
            let mut stmt = conn
                .prepare_cached(
                    "SELECT id, account_id, agent_id FROM sessions \
                     WHERE channel = ?1 AND from_number = ?2 AND to_addr = ?3 \
                       AND status <> 'ended' \
                     ORDER BY id DESC LIMIT ?4",
                )
                .db()?;
            all(
                &mut stmt,
                params![channel.as_str(), from, to, MAX_OPEN_SESSIONS as i64],
                |row| rows::open_session(row),
            )
        })
        .await
    }
}

#[async_trait]
impl DispatchQueue for SqliteStore {
    async fn claim_dispatches(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
        limit: usize,
        skip_accounts: &[AccountId],
    ) -> Result<Vec<DispatchLease>> {
        // The accounts to pass over, as a JSON array for `json_each`.
        let skip =
            serde_json::to_string(skip_accounts).map_err(|e| StoreError::Internal(e.into()))?;
        self.write(move |conn| {
            let now = to_micros(now);
            let until = now + lease.as_micros() as i64;
            let token = LeaseToken::generate();
            let mut stmt = conn
                .prepare_cached(
                    "UPDATE dispatch_jobs \
                     SET lease_until = ?2, lease_token = ?4, attempts = attempts + 1 \
                     WHERE session_id IN (SELECT session_id FROM dispatch_jobs \
                        WHERE run_at <= ?1 AND lease_until <= ?1 \
                          AND account_id NOT IN (SELECT value FROM json_each(?5)) \
                        ORDER BY run_at LIMIT ?3) \
                     RETURNING session_id, account_id, attempts",
                )
                .db()?;
            all(
                &mut stmt,
                params![now, until, limit as i64, token.0, skip],
                |row| rows::dispatch_lease(row, token),
            )
        })
        .await
    }

    async fn claim_session(
        &self,
        session: SessionId,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<Option<DispatchLease>> {
        self.write(move |conn| {
            let now = to_micros(now);
            let token = LeaseToken::generate();
            let mut stmt = conn
                .prepare_cached(
                    "UPDATE dispatch_jobs SET lease_until = ?3, lease_token = ?4 \
                     WHERE session_id = ?1 AND lease_until <= ?2 \
                     RETURNING session_id, account_id, attempts",
                )
                .db()?;
            let mut leases = all(
                &mut stmt,
                params![
                    session.to_string(),
                    now,
                    now + lease.as_micros() as i64,
                    token.0
                ],
                |row| rows::dispatch_lease(row, token),
            )?;
            Ok(leases.pop())
        })
        .await
    }

    async fn renew_dispatch(&self, lease: DispatchLease, until: DateTime<Utc>) -> Result<bool> {
        self.write(move |conn| {
            let n = conn
                .prepare_cached(
                    "UPDATE dispatch_jobs SET lease_until = ?3 \
                     WHERE session_id = ?1 AND lease_token = ?2",
                )
                .db()?
                .execute(params![
                    lease.session_id.to_string(),
                    lease.token.0,
                    to_micros(until)
                ])
                .db()?;
            Ok(n > 0)
        })
        .await
    }

    async fn release_dispatches(&self, leases: Vec<DispatchLease>) -> Result<()> {
        self.write(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "UPDATE dispatch_jobs SET lease_until = 0 \
                     WHERE session_id = ?1 AND lease_token = ?2",
                )
                .db()?;
            for lease in leases {
                stmt.execute(params![lease.session_id.to_string(), lease.token.0])
                    .db()?;
            }
            Ok(())
        })
        .await
    }

    async fn retry_dispatch(&self, lease: DispatchLease, at: DateTime<Utc>) -> Result<bool> {
        self.write(move |conn| {
            let n = conn
                .prepare_cached(
                    "UPDATE dispatch_jobs SET lease_until = 0, lease_token = 0, run_at = ?3 \
                     WHERE session_id = ?1 AND lease_token = ?2",
                )
                .db()?
                .execute(params![
                    lease.session_id.to_string(),
                    lease.token.0,
                    to_micros(at)
                ])
                .db()?;
            Ok(n > 0)
        })
        .await
    }

    async fn update_session(&self, id: SessionId, u: SessionUpdate) -> Result<()> {
        let flow_state = u.flow_state.as_ref().map(to_json).transpose()?;
        let events = u
            .events
            .iter()
            .map(EventRow::new)
            .collect::<Result<Vec<_>>>()?;
        let change = SessionChange::of(&u);
        self.write(move |conn| {
            let sid = id.to_string();
            let held = conn
                .prepare_cached(
                    "SELECT 1 FROM dispatch_jobs WHERE session_id = ?1 AND lease_token = ?2",
                )
                .db()?
                .exists(params![sid, u.lease.0])
                .db()?;
            if !held {
                return Err(StoreError::LeaseLost);
            }
            if change.touches_session(&u) {
                conn.prepare_cached(
                    "UPDATE sessions SET status = COALESCE(?2, status), \
                     outcome = COALESCE(?3, outcome), ended_at = COALESCE(?4, ended_at), \
                     conversation_uuid = COALESCE(conversation_uuid, ?5), \
                     flow_state = COALESCE(?6, flow_state), \
                     inputs_consumed = MAX(inputs_consumed, COALESCE(?7, 0)) WHERE id = ?1",
                )
                .db()?
                .execute(params![
                    sid,
                    change.status.map(SessionStatus::as_str),
                    change.outcome.map(Outcome::as_str),
                    change.ended_at.map(to_micros),
                    change.conversation_uuid,
                    flow_state,
                    u.inputs_consumed
                ])
                .db()?;
            }
            for event in &events {
                insert_event(conn, &sid, event)?;
            }
            for r in &u.provider_refs {
                insert_provider_ref(conn, r)?;
            }
            for cb in &u.callbacks {
                // Behind a callback of the same session still pending, it is
                // not due until that one is settled (see `settle_callbacks`).
                conn.prepare_cached(&format!(
                    "INSERT OR IGNORE INTO callbacks \
                     (webhook_id, session_id, account_id, dedupe_key, url, body, \
                      next_attempt_at, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, \
                      CASE WHEN EXISTS (SELECT 1 FROM callbacks \
                                        WHERE session_id = ?2 AND state = 'pending') \
                           THEN {WAITING_BEHIND} ELSE ?7 END, ?7)"
                ))
                .db()?
                .execute(params![
                    cb.webhook_id,
                    sid,
                    cb.account_id,
                    cb.dedupe_key,
                    cb.url,
                    cb.body,
                    to_micros(cb.created_at)
                ])
                .db()?;
            }
            if let JobFate::Finish(_) = u.job {
                conn.prepare_cached("DELETE FROM dispatch_jobs WHERE session_id = ?1")
                    .db()?
                    .execute([&sid])
                    .db()?;
            } else if let JobFate::SleepUntil(wake_at)
            | JobFate::EndAndWait { until: wake_at, .. } = u.job
            {
                // The one writer runs this and every delivery in turn, so an
                // input either is seen here or makes the job due after it.
                // Token 0 is never drawn (a claim's token is negative), so
                // the lease is given up for good.
                conn.prepare_cached(
                    "UPDATE dispatch_jobs SET lease_until = 0, lease_token = 0, attempts = 0, \
                     run_at = CASE WHEN EXISTS (SELECT 1 FROM session_inputs i, sessions s \
                         WHERE s.id = ?1 AND i.session_id = ?1 AND i.id > s.inputs_consumed) \
                       THEN ?3 ELSE ?2 END \
                     WHERE session_id = ?1",
                )
                .db()?
                .execute(params![sid, to_micros(wake_at), now_micros()])
                .db()?;
            }
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl CallbackOutbox for SqliteStore {
    async fn claim_callbacks(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<DueCallback>> {
        self.write(move |conn| {
            let now = to_micros(now);
            let until = now + lease.as_micros() as i64;
            let token = LeaseToken::generate();
            // Only the oldest pending callback of each session is eligible, so
            // that a session's statuses arrive in the order they happened.
            // A claimed callback is next due when its lease runs out, so
            // that claims pass over it without reading it.
            let mut stmt = conn
                .prepare_cached(
                    "UPDATE callbacks SET lease_until = ?2, lease_token = ?4, \
                     next_attempt_at = ?2 WHERE id IN ( \
                        SELECT c.id FROM callbacks c \
                        WHERE c.state = 'pending' AND c.next_attempt_at <= ?1 \
                          AND c.lease_until <= ?1 \
                          AND c.id = (SELECT MIN(p.id) FROM callbacks p \
                                      WHERE p.session_id = c.session_id AND p.state = 'pending') \
                        ORDER BY c.next_attempt_at LIMIT ?3) \
                     RETURNING id, webhook_id, session_id, account_id, url, body, attempts",
                )
                .db()?;
            all(
                &mut stmt,
                params![now, until, limit as i64, token.0],
                |row| rows::due_callback(row, token),
            )
        })
        .await
    }

    async fn settle_callbacks(&self, settlements: Vec<Settlement>) -> Result<()> {
        self.write(move |conn| {
            for s in &settlements {
                let settled = s.row();
                let failed = conn
                    .prepare_cached(
                        "UPDATE callbacks SET state = ?3, attempts = ?4, \
                         next_attempt_at = COALESCE(?5, next_attempt_at), \
                         last_error = COALESCE(?6, last_error), settled_at = ?7, \
                         lease_until = 0 \
                         WHERE id = ?1 AND lease_token = ?2 AND state = 'pending' \
                         RETURNING session_id, webhook_id",
                    )
                    .db()?
                    .query_row(
                        params![
                            s.id,
                            s.lease.0,
                            settled.state,
                            s.attempts,
                            settled.next_at,
                            settled.error,
                            settled.settled_at
                        ],
                        |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)),
                    )
                    .optional()
                    .db()?;
                // A settlement whose lease was lost changes nothing.
                let Some((session, webhook_id)) = failed else {
                    continue;
                };
                if let Verdict::Failed { error } = &s.verdict {
                    insert_event(
                        conn,
                        &session,
                        &EventRow::new(&callback_failed_event(
                            &webhook_id,
                            s.attempts,
                            error,
                            s.at,
                        ))?,
                    )?;
                }
                if settled.state != "pending" {
                    // The session's next callback, if any, is due now.
                    conn.prepare_cached(&format!(
                        "UPDATE callbacks SET next_attempt_at = ?2 WHERE id = ( \
                            SELECT MIN(id) FROM callbacks \
                            WHERE session_id = ?1 AND state = 'pending') \
                         AND next_attempt_at = {WAITING_BEHIND}"
                    ))
                    .db()?
                    .execute(params![session, to_micros(s.at)])
                    .db()?;
                }
            }
            Ok(())
        })
        .await
    }

    async fn release_callbacks(&self, leases: Vec<(i64, LeaseToken)>) -> Result<()> {
        self.write(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "UPDATE callbacks SET lease_until = 0, next_attempt_at = ?3 \
                     WHERE id = ?1 AND lease_token = ?2 AND state = 'pending'",
                )
                .db()?;
            let now = now_micros();
            for (id, token) in leases {
                stmt.execute(params![id, token.0, now]).db()?;
            }
            Ok(())
        })
        .await
    }

    async fn next_callback_due(&self) -> Result<Option<DateTime<Utc>>> {
        self.read_point(|conn| {
            // Only each session's oldest pending callback can be sent next;
            // the others wait behind it. (Callbacks written before
            // `WAITING_BEHIND` existed are due at their own time even when
            // waiting: the check on MIN(id) passes over them.)
            let next: Option<i64> = conn
                .prepare_cached(&format!(
                    "SELECT MAX(c.next_attempt_at, c.lease_until) FROM callbacks c \
                     WHERE c.state = 'pending' AND c.next_attempt_at < {WAITING_BEHIND} \
                       AND c.id = (SELECT MIN(p.id) FROM callbacks p \
                                   WHERE p.session_id = c.session_id \
                                     AND p.state = 'pending') \
                     ORDER BY c.next_attempt_at LIMIT 1"
                ))
                .db()?
                .query_row([], |r| r.get(0))
                .optional()
                .db()?;
            Ok(next.map(from_micros))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    // The behaviour every backend shares is checked in tests/conformance.rs.
    use super::*;

    #[tokio::test]
    async fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let err = SqliteStore::open(path.to_str().unwrap(), &StoreOptions::default())
            .await
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("newer than this herald knows"));
    }

    /// A lookup by key runs inline on a free reader; with every reader
    /// taken it must wait for one off the async thread rather than fail or
    /// block the runtime (the runtime here has one thread, so blocking it
    /// would stop the task that frees the readers).
    #[tokio::test(flavor = "current_thread")]
    async fn a_lookup_waits_for_a_reader_when_all_are_busy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let store = SqliteStore::open(path.to_str().unwrap(), &StoreOptions::default())
            .await
            .unwrap();
        let id = SessionId::generate();
        assert!(store.session_for_work(id).await.unwrap().is_none());

        let readers = store.readers.clone();
        let (held, hold) = std::sync::mpsc::channel::<()>();
        let (taken, all_taken) = tokio::sync::oneshot::channel::<()>();
        let holder = std::thread::spawn(move || {
            let guards: Vec<_> = readers.iter().map(|r| r.lock().unwrap()).collect();
            taken.send(()).unwrap();
            hold.recv().unwrap();
            drop(guards);
        });
        all_taken.await.unwrap();
        let lookup = store.session_for_work(id);
        tokio::pin!(lookup);
        // It cannot finish while every reader is held...
        assert!(
            tokio::time::timeout(Duration::from_millis(100), &mut lookup)
                .await
                .is_err()
        );
        // ...and finishes once one is free.
        held.send(()).unwrap();
        assert!(lookup.await.unwrap().is_none());
        holder.join().unwrap();
    }
}

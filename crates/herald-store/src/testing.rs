//! Support for herald's own tests; not for use in production.

use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, Executor, PgConnection};

use chrono::Utc;
use herald_core::session::SessionParameters;
use herald_core::{AccountId, AgentId, Channel, SessionId};

use crate::NewSession;
use herald_core::secret::redact_url;

const DEFAULT_TEST_URL: &str = "postgres://postgres@127.0.0.1:5432/herald_test";

/// A URL naming a new, empty schema, so that tests running at the same time
/// (and the `herald` processes they start with the URL) never see each
/// other's rows.
///
/// The database is the one `HERALD_TEST_POSTGRES_URL` names (by default
/// `herald_test` on the local server), created if missing. The schema is
/// selected through the URL's `options` (`-c search_path=...`), which every
/// connection sends at startup. Schemas are left behind for inspection;
/// dropping the database clears them.
///
/// Panics if the server cannot be reached: a test cannot go on without it.
pub async fn scratch_postgres_url() -> String {
    let base =
        std::env::var("HERALD_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_TEST_URL.into());
    let server = redact_url(&base);
    let options = PgConnectOptions::from_str(&base)
        .unwrap_or_else(|e| panic!("HERALD_TEST_POSTGRES_URL for {server}: {e}"));
    // PostgreSQL's own default: a database named after the user.
    let database = options
        .get_database()
        .unwrap_or(options.get_username())
        .to_owned();
    create_database(&options, &database)
        .await
        .unwrap_or_else(|e| panic!("creating the test database at {server}: {e}"));

    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    let mut conn = options
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connecting to {server}: {e}"));
    conn.execute(format!("CREATE SCHEMA {schema}").as_str())
        .await
        .unwrap_or_else(|e| panic!("creating schema {schema} at {server}: {e}"));
    let _ = conn.close().await;

    let separator = if base.contains('?') { '&' } else { '?' };
    format!("{base}{separator}options=-c%20search_path%3D{schema}")
}

/// Creates `database` unless it exists, through the server's `postgres`
/// database. Tests start together, so another may create it first.
async fn create_database(options: &PgConnectOptions, database: &str) -> Result<(), sqlx::Error> {
    let mut conn = PgConnection::connect_with(&options.clone().database("postgres")).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(database)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        let create = format!("CREATE DATABASE \"{}\"", database.replace('"', "\"\""));
        match conn.execute(create.as_str()).await {
            Ok(_) => {}
            // Lost the race: duplicate_database, or (when the two creates
            // overlap) the unique index of the catalog.
            Err(e)
                if e.as_database_error()
                    .and_then(|d| d.code())
                    .is_some_and(|code| code == "42P04" || code == "23505") => {}
            Err(e) => return Err(e),
        }
    }
    conn.close().await
}

/// A plain outbound SMS session of `agent` as a trigger stores it, to a
/// fixed recipient; tests and benches change the fields they care about.
pub fn new_session(account: AccountId, agent: &AgentId, id: SessionId) -> NewSession {
    NewSession {
        id,
        account_id: account,
        agent_id: agent.clone(),
        agent_version: 1,
        channel: Channel::Sms,
        to: "447700900123".into(),
        from: "447700900001".into(),
        status_url: None,
        hangup_on_machine: false,
        parameters: SessionParameters::default(),
        whatsapp: None,
        created_at: Utc::now(),
        idempotency: None,
        inbound: false,
        first_input: None,
        campaign_id: None,
    }
}

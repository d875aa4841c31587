//! The PostgreSQL pool and migrations.

use crate::config::Settings;
use anyhow::Context;
use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use std::str::FromStr;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A pool whose every statement has a time limit.
///
/// A connection is not pinged before each use (sqlx's default): that ping is a second round
/// trip for every statement, and a connection PostgreSQL has dropped fails its next statement
/// as unreachable all the same, which every caller already retries (and sqlx then discards the
/// connection).
pub async fn connect(settings: &Settings) -> anyhow::Result<PgPool> {
    open(settings, settings.db_max_connections, &[]).await
}

/// The sender's pool for recording outcomes (`outbox::record`), of `connections`, whose
/// statements use one generic plan each (`plan_cache_mode`). A statement with parameters is
/// otherwise planned again at every execution (custom plans, while they look cheaper), and a
/// profile of a fan-out showed planning as a large part of PostgreSQL's work: the record
/// statement runs hundreds of times a second. Its plan is the same whatever the values (the
/// outcomes' ids, looked up by primary key), so one generic plan loses nothing, provided it is
/// that plan: made while the outbox was a page or two (a fresh deployment), the planner chose to
/// scan the whole table for each outcome, and kept that plan as the table grew (until an
/// autovacuum's analyse); so whole-table and bitmap scans are off here too (see
/// [`connect_claimer`]). The claim is not run here: its best plan depends on how many rows are due.
pub async fn connect_recorder(settings: &Settings, connections: u32) -> anyhow::Result<PgPool> {
    open(
        settings,
        connections,
        &[
            ("plan_cache_mode", "force_generic_plan"),
            ("enable_bitmapscan", "off"),
            ("enable_seqscan", "off"),
        ],
    )
    .await
}

/// The sender's pool for claiming (`outbox::claim`): one connection (there is one claimer) on
/// which the planner reads the queue's index in order, never by bitmap or whole-table scan.
///
/// Rows that leave the queue leave their entries in `outbox_due` until a vacuum, pointing at
/// dead row versions. A plain index scan marks each such entry dead the first time it meets one,
/// so the next claims skip it; a bitmap scan never does, and visits every one of them again at
/// each claim. The planner picked a bitmap scan for a queue of a few due rows in a table whose
/// size it did not know yet (a fresh or never-analysed outbox), and 200 enquiries/s then made
/// every claim slower than the last: p50 from publish to accepted 3-5 s where it had been
/// 0.1 s. The claim's other lookups are by primary key, so switching those scans off costs it
/// nothing.
pub async fn connect_claimer(settings: &Settings) -> anyhow::Result<PgPool> {
    open(
        settings,
        1,
        &[("enable_bitmapscan", "off"), ("enable_seqscan", "off")],
    )
    .await
}

async fn open(
    settings: &Settings,
    max_connections: u32,
    more: &[(&str, &str)],
) -> anyhow::Result<PgPool> {
    let url = settings.database_url.expose_secret();
    if url.is_empty() {
        anyhow::bail!("DATABASE_URL is required (a postgres:// URL)");
    }
    let timeout_ms = settings.db_statement_timeout.as_millis().to_string();
    let mut parameters = vec![("statement_timeout", timeout_ms.as_str())];
    parameters.extend_from_slice(more);
    let options = PgConnectOptions::from_str(url)
        .context("DATABASE_URL is not a valid PostgreSQL URL")?
        .application_name("rpec-notify")
        .options(parameters);
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(settings.db_acquire_timeout)
        .test_before_acquire(false)
        .connect_with(options)
        .await
        .context("Failed to connect to PostgreSQL")
}

pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR
        .run(pool)
        .await
        .context("Failed to apply migrations")
}

/// Whether `e` says PostgreSQL could not be reached (or dropped the connection, or is starting
/// or stopping), as opposed to a statement that is wrong: only the first passes by itself, and
/// is not the fault of the work that met it.
pub fn unreachable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // Connection exceptions (08), too many connections (53300), shutting down or not yet
        // accepting connections (57P01-57P03).
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            c.starts_with("08") || c == "53300" || matches!(c.as_ref(), "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}

/// [`unreachable`] for an error with context: true if any cause in its chain is such.
pub fn unreachable_cause(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|c| c.downcast_ref::<sqlx::Error>().is_some_and(unreachable))
}

//! The PostgreSQL pool and migrations.

use crate::config::Settings;
use anyhow::Context;
use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use std::str::FromStr;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A pool whose every statement has a time limit.
pub async fn connect(settings: &Settings) -> anyhow::Result<PgPool> {
    let url = settings.database_url.expose_secret();
    if url.is_empty() {
        anyhow::bail!("DATABASE_URL is required (a postgres:// URL)");
    }
    let timeout_ms = settings.db_statement_timeout.as_millis().to_string();
    let options = PgConnectOptions::from_str(url)
        .context("DATABASE_URL is not a valid PostgreSQL URL")?
        .application_name("rpec-notify")
        .options([("statement_timeout", timeout_ms.as_str())]);
    PgPoolOptions::new()
        .max_connections(settings.db_max_connections)
        .acquire_timeout(settings.db_acquire_timeout)
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

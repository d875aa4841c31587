//! Operator tools: `rpec-notify outbox status|list|show|retry`, `rpec-notify dead-letters
//! list|replay|purge`, `rpec-notify enquiries open` and `rpec-notify suppressions list|remove`.
//!
//! Every command returns a [`Report`] (text for people, JSON for scripts) or an [`AdminError`],
//! and the command line turns them into one exit-code table:
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | done |
//! | 1 | done, but problems were found: an id that is not a failed email (`outbox retry`), no email at all (`outbox show`) or not a dead letter, a message the broker would not take back, an address that was not suppressed (`suppressions remove`) |
//! | 2 | usage or configuration: bad arguments, settings that do not load, a database without the outbox, a dead-letter queue that does not exist |
//! | 3 | a dependency cannot be reached: PostgreSQL or RabbitMQ |
//!
//! Reports hold no personal data: ids, kinds, statuses, counts, ages and error codes only. An
//! outbox row's recipients and context, a dead letter's body, the relay's reply text and a
//! bounce's recipient and diagnostic (which can quote an address) are never printed. The one
//! exception is [`suppressions`]: a suppression is an address and nothing else, and looking one
//! up is what the command is for; it prints them to the operator and logs none.

pub mod bounces;
pub mod dead_letters;
pub mod enquiries;
pub mod outbox;
pub mod suppressions;

use crate::config::Settings;
use secrecy::ExposeSecret;
use serde_json::Value;
use sqlx::postgres::PgConnectOptions;
use std::str::FromStr;

/// The command finished and found nothing wrong.
pub const EXIT_OK: u8 = 0;
/// The command finished but found problems (ids that matched nothing, ...).
pub const EXIT_PROBLEMS: u8 = 1;
/// Bad arguments or configuration (clap uses 2 for usage errors too).
pub const EXIT_USAGE: u8 = 2;
/// PostgreSQL or RabbitMQ cannot be reached.
pub const EXIT_UNAVAILABLE: u8 = 3;

/// What a command found, in both forms; the caller prints one of them.
#[derive(Debug, Clone)]
pub struct Report {
    /// For a terminal.
    pub text: String,
    /// For `--json`: one document on stdout.
    pub json: Value,
    /// Whether something the operator asked for could not be done (exit 1).
    pub problems: bool,
}

impl Report {
    pub fn exit_code(&self) -> u8 {
        if self.problems {
            EXIT_PROBLEMS
        } else {
            EXIT_OK
        }
    }
}

/// Why a command could not do its work at all.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The settings or the deployment do not fit (exit 2).
    #[error("{0}")]
    Config(String),
    /// PostgreSQL or RabbitMQ cannot be reached, or failed part-way (exit 3).
    #[error("{0:#}")]
    Unavailable(anyhow::Error),
}

impl AdminError {
    pub fn exit_code(&self) -> u8 {
        match self {
            AdminError::Config(_) => EXIT_USAGE,
            AdminError::Unavailable(_) => EXIT_UNAVAILABLE,
        }
    }
}

impl From<sqlx::Error> for AdminError {
    fn from(e: sqlx::Error) -> Self {
        // undefined_table: a database that was never migrated, or the wrong database.
        if let sqlx::Error::Database(db) = &e {
            if db.code().as_deref() == Some("42P01") {
                return AdminError::Config(
                    "the database has no outbox: is DATABASE_URL right? (`rpec-notify migrate` \
                     creates the tables)"
                        .into(),
                );
            }
        }
        AdminError::Unavailable(anyhow::Error::new(e).context("PostgreSQL"))
    }
}

/// A small pool for one command. A URL that is missing or malformed is configuration (exit 2);
/// a server that does not answer is exit 3.
pub async fn connect_database(settings: &Settings) -> Result<sqlx::PgPool, AdminError> {
    let url = settings.database_url.expose_secret();
    if url.is_empty() {
        return Err(AdminError::Config(
            "DATABASE_URL is required (a postgres:// URL)".into(),
        ));
    }
    if PgConnectOptions::from_str(url).is_err() {
        return Err(AdminError::Config(
            "DATABASE_URL is not a valid PostgreSQL URL".into(),
        ));
    }
    crate::db::connect(settings).await.map_err(|e| {
        // A server that answers but refuses this database or these credentials is a
        // configuration to fix, not an outage to wait out.
        let refused = e
            .downcast_ref::<sqlx::Error>()
            .and_then(|e| e.as_database_error())
            .and_then(|d| d.code())
            .is_some_and(|c| matches!(c.as_ref(), "3D000" | "28000" | "28P01"));
        if refused {
            AdminError::Config(format!("{e:#}"))
        } else {
            AdminError::Unavailable(e)
        }
    })
}

/// An age in seconds as people read it: `42s`, `5m 12s`, `3h 4m`, `2d 3h`.
pub fn human_age(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

/// Lines of left-aligned columns, each as wide as its widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_as_people_say_them() {
        assert_eq!(human_age(-5), "0s");
        assert_eq!(human_age(42), "42s");
        assert_eq!(human_age(312), "5m 12s");
        assert_eq!(human_age(3 * 3600 + 4 * 60 + 59), "3h 4m");
        assert_eq!(human_age(2 * 86400 + 3 * 3600), "2d 3h");
    }

    #[test]
    fn tables_line_up() {
        let t = table(
            &["id", "kind"],
            &[
                vec!["1".into(), "enquiry".into()],
                vec!["200".into(), "x".into()],
            ],
        );
        assert_eq!(t, "id   kind\n1    enquiry\n200  x\n");
    }
}

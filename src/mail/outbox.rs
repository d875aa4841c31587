//! The outbox: emails are written here in the transaction that commits their cause, and the
//! sender claims, sends and records them.

use crate::domain::EmailAddress;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use std::time::Duration;
use uuid::Uuid;

/// The channel on which a commit that adds email wakes the senders.
pub const NOTIFY_CHANNEL: &str = "rpec_outbox";

/// Which From address an email uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// One-to-one mail caused by something the person or their coordinator did.
    Transactional,
    /// Newsletters and digests.
    Bulk,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Transactional => "transactional",
            Stream::Bulk => "bulk",
        }
    }
}

/// An email to send, as a handler describes it.
#[derive(Debug, Clone)]
pub struct NewEmail {
    pub kind: &'static str,
    pub template: &'static str,
    pub stream: Stream,
    pub to: Vec<EmailAddress>,
    pub reply_to: Option<EmailAddress>,
    pub context: Value,
    /// Extra headers; values must come from trusted code, never from input.
    pub headers: Vec<(&'static str, String)>,
    pub attachments: Vec<Attachment>,
    /// Higher goes first (urgent enquiries).
    pub priority: i16,
    pub source_event: Option<Uuid>,
}

impl NewEmail {
    pub fn transactional(
        kind: &'static str,
        template: &'static str,
        to: Vec<EmailAddress>,
        context: Value,
    ) -> Self {
        NewEmail {
            kind,
            template,
            stream: Stream::Transactional,
            to,
            reply_to: None,
            context,
            headers: Vec::new(),
            attachments: Vec::new(),
            priority: 0,
            source_event: None,
        }
    }
}

/// A file attached to an email (text content: calendar files and the like).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Attachment {
    pub filename: String,
    pub content_type: String,
    pub content: String,
}

/// Adds an email to the outbox inside the caller's transaction. The NOTIFY is delivered only
/// if that transaction commits.
pub async fn enqueue(conn: &mut PgConnection, email: &NewEmail) -> sqlx::Result<i64> {
    let recipients: Vec<&str> = email.to.iter().map(EmailAddress::as_str).collect();
    let headers: serde_json::Map<String, Value> = email
        .headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::String(v.clone())))
        .collect();
    let (id,): (i64,) = sqlx::query_as(
        "INSERT INTO outbox (kind, template, stream, recipients, reply_to, context, headers,
                             attachments, message_uuid, source_event, priority)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         RETURNING id",
    )
    .bind(email.kind)
    .bind(email.template)
    .bind(email.stream.as_str())
    .bind(&recipients)
    .bind(email.reply_to.as_ref().map(EmailAddress::as_str))
    .bind(&email.context)
    .bind(Value::Object(headers))
    .bind(serde_json::to_value(&email.attachments).unwrap_or_else(|_| Value::Array(Vec::new())))
    .bind(Uuid::new_v4())
    .bind(email.source_event)
    .bind(email.priority)
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(NOTIFY_CHANNEL)
        .execute(&mut *conn)
        .await?;
    Ok(id)
}

/// A row claimed for sending.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claimed {
    pub id: i64,
    pub kind: String,
    pub template: String,
    pub stream: String,
    pub recipients: Vec<String>,
    pub reply_to: Option<String>,
    pub context: Value,
    pub headers: Value,
    pub attachments: Value,
    pub message_uuid: Uuid,
    pub source_event: Option<Uuid>,
    pub attempts: i32,
}

/// Claims up to `limit` due rows (and rows whose lease ran out) for `lease`.
pub async fn claim(pool: &PgPool, limit: i64, lease: Duration) -> sqlx::Result<Vec<Claimed>> {
    sqlx::query_as(
        "WITH due AS (
             SELECT id FROM outbox
             WHERE (status = 'pending' AND next_attempt_at <= now())
                OR (status = 'sending' AND claimed_until < now())
             ORDER BY priority DESC, next_attempt_at
             LIMIT $1
             FOR UPDATE SKIP LOCKED
         )
         UPDATE outbox o
         SET status = 'sending', claimed_until = now() + make_interval(secs => $2),
             attempts = o.attempts + 1
         FROM due WHERE o.id = due.id
         RETURNING o.id, o.kind, o.template, o.stream, o.recipients, o.reply_to, o.context,
                   o.headers, o.attachments, o.message_uuid, o.source_event, o.attempts",
    )
    .bind(limit)
    .bind(lease.as_secs_f64())
    .fetch_all(pool)
    .await
}

pub async fn mark_sent(pool: &PgPool, id: i64) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE outbox SET status = 'sent', sent_at = now(), claimed_until = NULL, last_error = NULL
         WHERE id = $1",
    )
    .bind(id)
    .execute(pool)
    .await?;
    Ok(())
}

/// Puts a row back to be tried again after `wait`.
pub async fn mark_retry(pool: &PgPool, id: i64, wait: Duration, error: &str) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE outbox SET status = 'pending', claimed_until = NULL, last_error = $2,
                next_attempt_at = now() + make_interval(secs => $3)
         WHERE id = $1",
    )
    .bind(id)
    .bind(error)
    .bind(wait.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(())
}

/// Records that a row will never be sent, and why. It stays in the outbox for operators.
pub async fn mark_failed(pool: &PgPool, id: i64, error: &str) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE outbox SET status = 'failed', claimed_until = NULL, last_error = $2 WHERE id = $1",
    )
    .bind(id)
    .bind(error)
    .execute(pool)
    .await?;
    Ok(())
}

/// Records that a row was not sent because its cause went away (see `mail::prepare`).
pub async fn mark_cancelled(pool: &PgPool, id: i64, reason: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE outbox SET status = 'cancelled', claimed_until = NULL, last_error = $2 WHERE id = $1")
        .bind(id)
        .bind(reason)
        .execute(pool)
        .await?;
    Ok(())
}

/// Emails not yet sent (pending or being sent).
pub async fn depth(pool: &PgPool) -> sqlx::Result<i64> {
    let (n,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM outbox WHERE status IN ('pending', 'sending')")
            .fetch_one(pool)
            .await?;
    Ok(n)
}

//! The sender loop: claims due outbox rows, renders and sends them, and records the outcome.
//! One round (`send_due`) is a unit the tests can call; `run` decides when the next round is.

use super::outbox::{self, Claimed, NOTIFY_CHANNEL};
use super::prepare::{prepare, Prepared};
use super::{message, Relay, SendError};
use crate::worker::Shared;
use futures_util::StreamExt;
use sqlx::postgres::PgListener;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What one send came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Sent,
    Retry,
    Failed,
    /// Not sent: its cause went away before it was due.
    Cancelled,
}

/// Claims one batch and sends it; returns how many rows it claimed.
pub async fn send_due(shared: &Shared, relay: &Relay) -> anyhow::Result<usize> {
    let s = &shared.settings;
    let batch = outbox::claim(&shared.pool, s.send_batch_size, s.send_lease).await?;
    let n = batch.len();
    futures_util::stream::iter(batch)
        .for_each_concurrent(s.send_concurrency, |row| async move {
            let id = row.id;
            if let Err(e) = send_one(shared, relay, row).await {
                // The row stays claimed; its lease runs out and it is tried again.
                tracing::warn!(outbox_id = id, error = %e, "could not record the outcome of a send");
            }
        })
        .await;
    Ok(n)
}

async fn send_one(shared: &Shared, relay: &Relay, row: Claimed) -> anyhow::Result<Outcome> {
    let s = &shared.settings;
    let from = if row.stream == "bulk" {
        &s.bulk_from
    } else {
        &s.transactional_from
    };
    // Whether the relay itself refused the message for good (a 5xx), as opposed to a message
    // that could not be built: only the first says something about the address.
    let mut refused_by_relay = false;
    let result = match prepare(shared, &row).await {
        Ok(Prepared::Skip(reason)) => {
            outbox::mark_cancelled(&shared.pool, row.id, &reason).await?;
            tracing::info!(outbox_id = row.id, kind = %row.kind, reason = %reason, "email not sent: no longer wanted");
            shared.metrics.email_outcome(&row.kind, Outcome::Cancelled);
            return Ok(Outcome::Cancelled);
        }
        Err(e) => Err(SendError::Transient(format!(
            "could not prepare the email: {e:#}"
        ))),
        Ok(Prepared::Send {
            context,
            attachments,
        }) => {
            // Bulk mail that carries the reader's unsubscribe link also announces it in headers.
            let unsubscribe_url = if row.stream == "bulk" {
                context.get("unsubscribe_url").and_then(|v| v.as_str())
            } else {
                None
            };
            let message = shared
                .templates
                .render(&row.template, &context)
                .and_then(|rendered| {
                    message::build(&row, from, &rendered, &attachments, unsubscribe_url)
                });
            match message {
                // A template or address that does not work now never will: keep the row, say why.
                Err(e) => Err(SendError::Permanent(format!("not sendable: {e}"))),
                Ok(m) => {
                    let sent = relay.send(m, s.send_timeout).await;
                    refused_by_relay = matches!(sent, Err(SendError::Permanent(_)));
                    sent
                }
            }
        }
    };
    let outcome = match result {
        Ok(()) => {
            outbox::mark_sent(&shared.pool, row.id).await?;
            tracing::info!(outbox_id = row.id, kind = %row.kind, attempts = row.attempts, "email sent");
            Outcome::Sent
        }
        Err(SendError::Transient(e)) if (row.attempts as u32) < s.send_retry.max_attempts => {
            let wait = s.send_retry.backoff_with_jitter(row.attempts as u32);
            outbox::mark_retry(&shared.pool, row.id, wait, &e).await?;
            tracing::warn!(outbox_id = row.id, kind = %row.kind, attempts = row.attempts,
                retry_in_secs = wait.as_secs_f64(), "email not sent: passing failure, will retry");
            Outcome::Retry
        }
        Err(e) => {
            if refused_by_relay && row.stream == "bulk" {
                // Before marking the row: if this fails, the row's lease runs out, it is sent
                // again, refused again, and the suppression is tried again.
                let added = suppress(&shared.pool, row.id, &row.recipients).await?;
                tracing::warn!(outbox_id = row.id, kind = %row.kind, added,
                    "address refused for good: suppressed for bulk mail");
            }
            let (SendError::Transient(text) | SendError::Permanent(text)) = &e;
            outbox::mark_failed(&shared.pool, row.id, text).await?;
            tracing::error!(outbox_id = row.id, kind = %row.kind, attempts = row.attempts,
                failure = e.log_summary(), "email failed: it will not be tried again");
            Outcome::Failed
        }
    };
    shared.metrics.email_outcome(&row.kind, outcome);
    Ok(outcome)
}

/// Suppresses `recipients` for bulk mail (newsletters, digests): a relay said they do not exist
/// or will never take our mail, and mailing such addresses again harms delivery to everyone.
/// Returns how many addresses were newly suppressed.
async fn suppress(pool: &sqlx::PgPool, outbox_id: i64, recipients: &[String]) -> sqlx::Result<u64> {
    Ok(sqlx::query(
        "INSERT INTO suppressions (email, reason)
         SELECT DISTINCT lower(r), 'refused permanently by the relay (outbox row ' || $2 || ')'
         FROM unnest($1::text[]) AS r
         ON CONFLICT (email) DO NOTHING",
    )
    .bind(recipients)
    .bind(outbox_id.to_string())
    .execute(pool)
    .await?
    .rows_affected())
}

/// Sends until `shutdown`: woken by NOTIFY on commit, and by polling as a fallback. A round in
/// progress at shutdown is finished first.
pub async fn run(shared: Arc<Shared>, relay: Relay, shutdown: CancellationToken) {
    let mut listener: Option<PgListener> = None;
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        let claimed = match send_due(&shared, &relay).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "could not claim emails from the outbox");
                0
            }
        };
        shared.metrics.sender_rounds.inc();
        if claimed as i64 >= shared.settings.send_batch_size {
            continue; // more may be due right now
        }
        if listener.is_none() {
            listener = connect_listener(&shared).await;
        }
        let wait = shared.settings.send_poll_interval;
        tokio::select! {
            _ = shutdown.cancelled() => break,
            woke = async {
                match listener.as_mut() {
                    Some(l) => l.recv().await.map(|_| ()),
                    None => { tokio::time::sleep(wait).await; Ok(()) }
                }
            } => {
                if woke.is_err() {
                    listener = None; // reconnected on the next round; polling meanwhile
                }
            }
            _ = tokio::time::sleep(wait) => {}
        }
    }
    tracing::info!("sender stopped");
}

async fn connect_listener(shared: &Shared) -> Option<PgListener> {
    let attempt = async {
        let mut l = PgListener::connect_with(&shared.pool).await?;
        l.listen(NOTIFY_CHANNEL).await?;
        Ok::<_, sqlx::Error>(l)
    };
    match tokio::time::timeout(Duration::from_secs(5), attempt).await {
        Ok(Ok(l)) => Some(l),
        _ => None,
    }
}

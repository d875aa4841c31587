//! The sender loop: claims due outbox rows, renders and sends them, and records the outcome.
//! One round (`send_due`) is a unit the tests can call; `run` decides when the next round is.

use super::outbox::{self, Claimed, Counted, NOTIFY_CHANNEL};
use super::prepare::{prepare, Prepared};
use super::{message, Relay, SendError};
use crate::db;
use crate::worker::Shared;
use futures_util::StreamExt;
use serde_json::{json, Value};
use sqlx::postgres::PgListener;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// What one send came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Sent,
    Retry,
    Failed,
    /// Not sent: its cause went away before it was due.
    Cancelled,
    /// Nothing recorded: the claim's lease ran out and another claim took the row (see
    /// `outbox::mark_sent`); that claim records the row's fate.
    Stale,
}

/// The longest wait between two tries at recording an outcome while PostgreSQL is away.
const RECORD_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The longest wait between two rounds while PostgreSQL is away.
const ROUND_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Claims one batch and sends it; returns how many rows it claimed.
pub async fn send_due(
    shared: &Shared,
    relay: &Relay,
    shutdown: &CancellationToken,
) -> anyhow::Result<usize> {
    let s = &shared.settings;
    // Taken before the claim, so it falls no later than the lease the database sets: recording
    // an outcome is retried until then, not after (the row may be someone else's by then).
    let lease_ends = Instant::now() + s.send_lease;
    let batch = outbox::claim(&shared.pool, s.send_batch_size, s.send_lease).await?;
    let n = batch.len();
    futures_util::stream::iter(batch)
        .for_each_concurrent(s.send_concurrency, |row| async move {
            let id = row.id;
            // At shutdown, what is not yet being sent goes back at once, for the next worker,
            // instead of waiting out its lease; the sends already in flight finish.
            if shutdown.is_cancelled() {
                match outbox::release(&shared.pool, row.id, row.claim_token).await {
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(outbox_id = id, error = %e, "could not give back a claimed email")
                    }
                }
                return;
            }
            if let Err(e) = send_one(shared, relay, row, lease_ends).await {
                // The row stays claimed; its lease runs out and it is tried again.
                tracing::warn!(outbox_id = id, error = %e, "could not record the outcome of a send");
            }
        })
        .await;
    Ok(n)
}

/// What is to be written for a row.
enum Record {
    Sent,
    Retry {
        wait: Duration,
        error: String,
        counted: Counted,
    },
    /// `suppress`: the relay refused bulk mail for good (the address is suppressed); `triage`:
    /// the recipients and marker of the copy that takes a failed enquiry to the triage mailbox.
    Failed {
        error: String,
        suppress: bool,
        triage: Option<(Vec<String>, Value)>,
    },
    Cancelled(String),
}

async fn send_one(
    shared: &Shared,
    relay: &Relay,
    row: Claimed,
    lease_ends: Instant,
) -> anyhow::Result<Outcome> {
    let s = &shared.settings;
    let from = if row.stream == "bulk" {
        &s.bulk_from
    } else {
        &s.transactional_from
    };
    // Whether the relay itself refused the message for good (a 5xx), as opposed to a message
    // that could not be built: only the first says something about the address.
    let mut refused_by_relay = false;
    // When the relay accepted it, by the worker's clock (for reminder lateness).
    let mut accepted_at = None;
    let result = match prepare(shared, &row).await {
        Ok(Prepared::Skip(reason)) => {
            if !record(shared, &row, &Record::Cancelled(reason.clone()), lease_ends).await? {
                return Ok(stale(shared, &row));
            }
            tracing::info!(outbox_id = row.id, kind = %row.kind, reason = %reason, "email not sent: no longer wanted");
            shared.metrics.email_outcome(&row.kind, Outcome::Cancelled);
            return Ok(Outcome::Cancelled);
        }
        // PostgreSQL away while reading current state says nothing about the email.
        Err(e) if db::unreachable_cause(&e) => Err(SendError::Unreachable(format!(
            "could not prepare the email: {e:#}"
        ))),
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
                    accepted_at = sent.is_ok().then(|| shared.clock.now());
                    sent
                }
            }
        }
    };
    let decision = match &result {
        Ok(()) => Record::Sent,
        // However long the relay (or PostgreSQL) stays away, no email fails for it: the try is
        // given back, and the wait grows with the row's own deferrals.
        Err(SendError::Unreachable(e)) => Record::Retry {
            wait: s
                .send_retry
                .backoff_with_jitter(row.deferrals.saturating_add(1).max(1) as u32),
            error: e.clone(),
            counted: Counted::Deferral,
        },
        Err(SendError::Transient(e)) if (row.attempts as u32) < s.send_retry.max_attempts => {
            Record::Retry {
                wait: s.send_retry.backoff_with_jitter(row.attempts.max(1) as u32),
                error: e.clone(),
                counted: Counted::Attempt,
            }
        }
        Err(e) => Record::Failed {
            error: e.text().to_owned(),
            suppress: refused_by_relay && row.stream == "bulk",
            triage: undeliverable_copy(shared, &row, e.text()),
        },
    };
    if !record(shared, &row, &decision, lease_ends).await? {
        return Ok(stale(shared, &row));
    }
    let outcome = match &decision {
        Record::Sent => {
            tracing::info!(outbox_id = row.id, kind = %row.kind, attempts = row.attempts, "email sent");
            if let (Some(at), "session_reminder") = (accepted_at, row.kind.as_str()) {
                observe_reminder_lateness(shared, &row, at);
            }
            Outcome::Sent
        }
        Record::Retry { wait, counted, .. } => {
            tracing::warn!(outbox_id = row.id, kind = %row.kind, attempts = row.attempts,
                counted = matches!(counted, Counted::Attempt),
                retry_in_secs = wait.as_secs_f64(), "email not sent: passing failure, will retry");
            Outcome::Retry
        }
        Record::Failed {
            suppress, triage, ..
        } => {
            if *suppress {
                tracing::warn!(outbox_id = row.id, kind = %row.kind,
                    "address refused for good: suppressed for bulk mail");
            }
            let failure = result.as_ref().err().map_or("", SendError::log_summary);
            tracing::error!(outbox_id = row.id, kind = %row.kind, attempts = row.attempts,
                failure, "email failed: it will not be tried again");
            match (row.kind.as_str(), triage) {
                ("enquiry", Some(_)) => tracing::warn!(
                    outbox_id = row.id,
                    "enquiry undeliverable: a copy goes to the triage mailbox"
                ),
                ("enquiry", None) => tracing::error!(
                    outbox_id = row.id,
                    "enquiry undeliverable to the triage mailbox itself: it waits for an operator"
                ),
                _ => {}
            }
            Outcome::Failed
        }
        Record::Cancelled(_) => Outcome::Cancelled,
    };
    shared.metrics.email_outcome(&row.kind, outcome);
    Ok(outcome)
}

/// A claim whose outcome matched nothing: counted and logged (ids only), otherwise ignored.
fn stale(shared: &Shared, row: &Claimed) -> Outcome {
    tracing::warn!(
        outbox_id = row.id,
        "outcome not recorded: the lease ran out and the email was claimed again"
    );
    shared.metrics.stale_outcomes.inc();
    Outcome::Stale
}

/// For a coordinators' copy of an enquiry that failed for good: the triage mailbox and the
/// marker naming the region it could not reach, so that somebody sees the enquiry. None for
/// other kinds (the triage copy itself included: if that fails too it stays failed, and the
/// failed-and-unresolved gauge shows it), and when the copy went to the triage mailbox already.
fn undeliverable_copy(
    shared: &Shared,
    row: &Claimed,
    reason: &str,
) -> Option<(Vec<String>, Value)> {
    if row.kind != "enquiry" {
        return None;
    }
    let triage: Vec<String> = shared
        .regions
        .triage
        .iter()
        .map(|a| a.as_str().to_owned())
        .collect();
    let same = |a: &[String], b: &[String]| {
        let norm = |v: &[String]| {
            let mut v: Vec<String> = v.iter().map(|x| x.to_lowercase()).collect();
            v.sort();
            v.dedup();
            v
        };
        norm(a) == norm(b)
    };
    if triage.is_empty() || same(&triage, &row.recipients) {
        return None;
    }
    let region_name = row
        .context
        .get("region_name")
        .and_then(Value::as_str)
        .unwrap_or("triage");
    Some((
        triage,
        json!({ "region_name": region_name, "reason": reason }),
    ))
}

/// When the relay accepted a session reminder (`accepted_at`, the worker's clock), against
/// when it was due. Rows queued before the due time was kept in the context are skipped.
fn observe_reminder_lateness(
    shared: &Shared,
    row: &Claimed,
    accepted_at: chrono::DateTime<chrono::Utc>,
) {
    let due = row
        .context
        .get("due_at")
        .and_then(Value::as_str)
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
    if let Some(due) = due {
        let late = (accepted_at - due.with_timezone(&chrono::Utc))
            .to_std()
            .unwrap_or_default();
        shared.metrics.reminder_lateness.observe(late.as_secs_f64());
    }
}

/// Writes `decision` for `row` under its claim token; false if the claim was stale. While
/// PostgreSQL cannot be reached it tries again with back-off, until the lease ends: giving up
/// earlier would let the lease run out and a sent email be sent again.
async fn record(
    shared: &Shared,
    row: &Claimed,
    decision: &Record,
    lease_ends: Instant,
) -> anyhow::Result<bool> {
    let mut wait = Duration::from_millis(100);
    let mut tried = false;
    loop {
        let attempt =
            tokio::time::timeout_at(lease_ends.into(), record_once(shared, row, decision));
        match attempt.await {
            Ok(Ok(true)) => return Ok(true),
            // A try that was lost with the connection may have committed all the same: the row
            // then still carries this claim's token and is no longer 'sending'.
            Ok(Ok(false)) if tried => return Ok(recorded_by(shared, row).await.unwrap_or(false)),
            Ok(Ok(false)) => return Ok(false),
            Ok(Err(e)) if db::unreachable(&e) && Instant::now() + wait < lease_ends => {
                tried = true;
                tracing::warn!(
                    outbox_id = row.id,
                    retry_in_ms = wait.as_millis() as u64,
                    "PostgreSQL unreachable: the outcome of a send will be recorded again"
                );
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RECORD_BACKOFF_MAX);
            }
            Ok(Err(e)) => return Err(anyhow::Error::new(e).context("recording the outcome")),
            Err(_) => anyhow::bail!("the lease ran out before the outcome could be recorded"),
        }
    }
}

/// Whether `row` was finished under this claim (an earlier try at recording committed).
async fn recorded_by(shared: &Shared, row: &Claimed) -> sqlx::Result<bool> {
    let (mine,): (bool,) = sqlx::query_as(
        "SELECT coalesce(claim_token = $2 AND status <> 'sending', false) FROM outbox WHERE id = $1",
    )
    .bind(row.id)
    .bind(row.claim_token)
    .fetch_optional(&shared.pool)
    .await?
    .unwrap_or((false,));
    Ok(mine)
}

async fn record_once(shared: &Shared, row: &Claimed, decision: &Record) -> sqlx::Result<bool> {
    let pool = &shared.pool;
    let (id, token) = (row.id, row.claim_token);
    match decision {
        Record::Sent => outbox::mark_sent(pool, id, token).await,
        Record::Retry {
            wait,
            error,
            counted,
        } => outbox::mark_retry(pool, id, token, *wait, error, *counted).await,
        Record::Cancelled(reason) => outbox::mark_cancelled(pool, id, token, reason).await,
        Record::Failed {
            error,
            suppress,
            triage,
        } => {
            // One transaction: the failure, the suppression it implies and the triage copy are
            // recorded together or not at all (a stale claim records none of them).
            let mut tx = pool.begin().await?;
            if !outbox::mark_failed(&mut *tx, id, token, error).await? {
                tx.rollback().await?;
                return Ok(false);
            }
            if *suppress {
                suppress_recipients(&mut tx, id, &row.recipients).await?;
            }
            if let Some((to, marker)) = triage {
                let to: Vec<&str> = to.iter().map(String::as_str).collect();
                outbox::enqueue_undeliverable(&mut tx, id, &to, marker).await?;
            }
            tx.commit().await?;
            Ok(true)
        }
    }
}

/// Suppresses `recipients` for bulk mail (newsletters, digests): a relay said they do not exist
/// or will never take our mail, and mailing such addresses again harms delivery to everyone.
/// Returns how many addresses were newly suppressed.
async fn suppress_recipients(
    conn: &mut sqlx::PgConnection,
    outbox_id: i64,
    recipients: &[String],
) -> sqlx::Result<u64> {
    Ok(sqlx::query(
        "INSERT INTO suppressions (email, reason)
         SELECT DISTINCT lower(r), 'refused permanently by the relay (outbox row ' || $2 || ')'
         FROM unnest($1::text[]) AS r
         ON CONFLICT (email) DO NOTHING",
    )
    .bind(recipients)
    .bind(outbox_id.to_string())
    .execute(conn)
    .await?
    .rows_affected())
}

/// Sends until `shutdown`: woken by NOTIFY on commit, and by polling as a fallback. A round in
/// progress at shutdown is finished first.
pub async fn run(shared: Arc<Shared>, relay: Relay, shutdown: CancellationToken) {
    let mut listener: Option<PgListener> = None;
    // Rounds in a row that could not claim (PostgreSQL away): each waits twice the last, up to
    // ROUND_BACKOFF_MAX, and the first round that claims again goes back to polling.
    let mut failed_rounds: u32 = 0;
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        let claimed = match send_due(&shared, &relay, &shutdown).await {
            Ok(n) => {
                failed_rounds = 0;
                n
            }
            Err(e) => {
                failed_rounds = failed_rounds.saturating_add(1);
                tracing::warn!(error = %e, failed_rounds, "could not claim emails from the outbox");
                0
            }
        };
        shared.metrics.sender_rounds.inc();
        if claimed as i64 >= shared.settings.send_batch_size {
            continue; // more may be due right now
        }
        if listener.is_none() && failed_rounds == 0 {
            listener = connect_listener(&shared).await;
        }
        let poll = shared.settings.send_poll_interval;
        let wait = if failed_rounds == 0 {
            poll
        } else {
            poll.saturating_mul(2u32.saturating_pow(failed_rounds.min(16)))
                .min(ROUND_BACKOFF_MAX.max(poll))
        };
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

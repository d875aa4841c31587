//! The scheduler: hands due reminders and coordinator briefings to the outbox (and, in
//! `digest`, fires each region's weekly digest; in `escalation`, escalates enquiries nobody
//! claimed in time). It only enqueues; the sender sends.
//!
//! Due rows are claimed with `FOR UPDATE SKIP LOCKED` and handed over in the same transaction:
//! the row lock is the lease, so two workers never take one row, and a worker that dies mid-way
//! leaves its rows pending for the next. A reminder whose session was cancelled or has already
//! started (after downtime, say), or whose registration was cancelled, is dropped, not sent late;
//! so is one handed over later than half its offset (a "7 days before" reminder found due six
//! days late would only mislead: the later reminders cover it).

pub mod digest;
pub mod escalation;
pub mod plan;

use crate::clock::Clock;
use crate::config::Regions;
use crate::metrics::Metrics;
use crate::outbox::job::{Briefing, Reminder};
use crate::outbox::{enqueue_many, Job, NewEmail};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What the scheduler uses, and nothing more: built by the composition root (`worker`).
pub struct Scheduler {
    /// Due rows are claimed and handed to the outbox in one transaction.
    pub pool: PgPool,
    /// Briefings' coordinators, digest schedules, regions' names.
    pub regions: Arc<Regions>,
    /// What is due is due by this clock.
    pub clock: Clock,
    /// Counts its rounds (`rpec_scheduler_rounds_total`), so that a stuck loop shows.
    pub metrics: Arc<Metrics>,
    /// The domain of the bulk From address, under which digests' `List-Id` is named.
    pub bulk_domain: String,
    /// `[schedule] poll_interval_ms`: the wait between two rounds.
    pub poll_interval: Duration,
}

/// Rows handed over per transaction (each batch in a few statements).
const BATCH: i64 = 500;

#[derive(sqlx::FromRow)]
struct Due {
    id: i64,
    kind: String,
    session_id: String,
    registration_id: Option<String>,
    offset_label: String,
    due_at: DateTime<Utc>,
    session_status: String,
    starts_at: DateTime<Utc>,
    region: Option<String>,
    registration_status: Option<String>,
    email: Option<String>,
}

/// What one round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    pub queued: usize,
    pub dropped: usize,
}

/// Hands every due reminder and briefing to the outbox, as of `scheduler.clock`.
pub async fn hand_over_due(scheduler: &Scheduler) -> anyhow::Result<Round> {
    let mut total = Round::default();
    loop {
        let round = hand_over_batch(scheduler).await?;
        total.queued += round.queued;
        total.dropped += round.dropped;
        if ((round.queued + round.dropped) as i64) < BATCH {
            return Ok(total);
        }
    }
}

async fn hand_over_batch(scheduler: &Scheduler) -> anyhow::Result<Round> {
    let now = scheduler.clock.now();
    let mut tx = scheduler.pool.begin().await?;
    let due: Vec<Due> = sqlx::query_as(
        "SELECT e.id, e.kind, e.session_id, e.registration_id, e.offset_label, e.due_at,
                s.status AS session_status, s.starts_at, s.region,
                r.status AS registration_status, r.email
         FROM scheduled_emails e
         JOIN sessions s ON s.session_id = e.session_id
         LEFT JOIN registrations r ON r.registration_id = e.registration_id
         WHERE e.status = 'pending' AND e.due_at <= $1
         ORDER BY e.due_at
         LIMIT $2
         FOR UPDATE OF e SKIP LOCKED",
    )
    .bind(now)
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await?;
    // Decided here, written in three statements however many rows are due: the emails, then
    // every row's fate.
    let mut emails = Vec::new();
    let mut queued_ids = Vec::new();
    let mut dropped_ids = Vec::new();
    for d in &due {
        let drop_reason = if d.session_status != "scheduled" {
            Some("session cancelled")
        } else if d.starts_at <= now {
            Some("session already started")
        } else if d.kind == "reminder"
            && (d.registration_status.as_deref() != Some("registered") || d.email.is_none())
        {
            Some("registration cancelled")
        } else if d.kind == "reminder" && now - d.due_at > offset_length(&d.offset_label) / 2 {
            Some("too late to be useful")
        } else {
            None
        };
        match drop_reason {
            Some(reason) => {
                tracing::info!(scheduled_id = d.id, kind = %d.kind, session_id = %d.session_id, reason, "dropped");
                dropped_ids.push(d.id);
            }
            None => {
                emails.push(email_for(scheduler, d)?);
                queued_ids.push(d.id);
            }
        }
    }
    let outbox_ids = enqueue_many(&mut tx, &emails).await?;
    if !queued_ids.is_empty() {
        sqlx::query(
            "UPDATE scheduled_emails e
             SET status = 'queued', outbox_id = q.outbox_id, handled_at = $3
             FROM unnest($1::bigint[], $2::bigint[]) AS q(id, outbox_id)
             WHERE e.id = q.id",
        )
        .bind(&queued_ids)
        .bind(&outbox_ids)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    if !dropped_ids.is_empty() {
        sqlx::query(
            "UPDATE scheduled_emails SET status = 'dropped', handled_at = $2 WHERE id = ANY($1)",
        )
        .bind(&dropped_ids)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(Round {
        queued: queued_ids.len(),
        dropped: dropped_ids.len(),
    })
}

/// How far before the session an offset lies (days counted as 24 hours: this is for judging
/// lateness, not for planning).
fn offset_length(label: &str) -> chrono::Duration {
    match label.parse::<crate::config::Offset>() {
        Ok(crate::config::Offset::Days(n)) => chrono::Duration::days(n.into()),
        Ok(crate::config::Offset::Exact(d)) => d,
        Err(_) => chrono::Duration::zero(),
    }
}

fn email_for(scheduler: &Scheduler, d: &Due) -> anyhow::Result<NewEmail> {
    if d.kind == "reminder" {
        let email = d
            .email
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("a reminder without an address"))?;
        let to = crate::domain::EmailAddress::parse(email).map_err(anyhow::Error::msg)?;
        let registration_id = d
            .registration_id
            .clone()
            .ok_or_else(|| anyhow::anyhow!("a reminder without its registration"))?;
        let reminder = Reminder {
            registration_id,
            session_id: d.session_id.clone(),
            offset: d.offset_label.clone(),
            starts_at: d.starts_at,
            // For rpec_reminder_lateness_seconds, observed when the relay accepts it.
            due_at: Some(d.due_at),
        };
        let mut e = NewEmail::new(Job::SessionReminder(reminder), vec![to]);
        // Closer reminders matter more when many are due at once.
        e.priority = 5;
        Ok(e)
    } else {
        let region = d.region.as_deref().and_then(|r| r.parse().ok());
        let coordinators = scheduler.regions.for_session(region).coordinators.clone();
        let briefing = Briefing {
            session_id: d.session_id.clone(),
        };
        Ok(NewEmail::new(
            Job::CoordinatorBriefing(briefing),
            coordinators,
        ))
    }
}

/// When the earliest scheduled email not yet handed over falls due (None: none is waiting).
async fn next_due_at(pool: &PgPool) -> sqlx::Result<Option<DateTime<Utc>>> {
    sqlx::query_scalar("SELECT min(due_at) FROM scheduled_emails WHERE status = 'pending'")
        .fetch_one(pool)
        .await
}

/// The shortest wait between two rounds, however soon something falls due: a row already due
/// that this worker could not take (another worker holds it) is not polled for in a loop.
const MIN_WAIT: Duration = Duration::from_millis(50);

/// How long to wait before the next round, at `now`: until `next_due`, but at least `MIN_WAIT`
/// and at most `poll` (which also bounds a clock set by hand, as in tests).
fn next_wait(poll: Duration, now: DateTime<Utc>, next_due: Option<DateTime<Utc>>) -> Duration {
    let Some(at) = next_due else {
        return poll;
    };
    let until = (at - now).to_std().unwrap_or(Duration::ZERO);
    until.clamp(MIN_WAIT.min(poll), poll)
}

/// Runs rounds until `stop`.
pub async fn run(scheduler: Scheduler, stop: CancellationToken) {
    loop {
        match hand_over_due(&scheduler).await {
            Ok(Round {
                queued: 0,
                dropped: 0,
            }) => {}
            Ok(r) => tracing::info!(
                queued = r.queued,
                dropped = r.dropped,
                "scheduled emails handed over"
            ),
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "scheduler round failed"),
        }
        match escalation::hand_over_due(&scheduler).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(escalations = n, "unclaimed enquiries escalated"),
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "escalation round failed"),
        }
        if let Err(e) = digest::fire_due(&scheduler).await {
            tracing::warn!(error = %format!("{e:#}"), "digest round failed");
        }
        scheduler.metrics.scheduler_rounds.inc();
        // The next round comes when the next reminder or briefing falls due, if that is sooner
        // than the poll interval: a reminder goes on time, not up to an interval late.
        let next_due = match next_due_at(&scheduler.pool).await {
            Ok(at) => at,
            Err(e) => {
                tracing::warn!(error = %e, "could not read when the next scheduled email is due");
                None
            }
        };
        let wait = next_wait(scheduler.poll_interval, scheduler.clock.now(), next_due);
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    tracing::info!("scheduler stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn the_next_round_comes_when_the_next_email_falls_due_within_the_poll_interval() {
        let poll = Duration::from_secs(1);
        let now = at("2024-10-10T13:00:00Z");
        // Nothing waiting, or due later than one interval: the interval.
        assert_eq!(next_wait(poll, now, None), poll);
        assert_eq!(next_wait(poll, now, Some(at("2024-10-10T13:00:05Z"))), poll);
        // Due within it: then.
        assert_eq!(
            next_wait(poll, now, Some(at("2024-10-10T13:00:00.300Z"))),
            Duration::from_millis(300)
        );
        // Already due (held by another worker) or due at once: a short wait, not a busy loop.
        assert_eq!(
            next_wait(poll, now, Some(at("2024-10-10T12:59:00Z"))),
            MIN_WAIT
        );
        assert_eq!(
            next_wait(poll, now, Some(at("2024-10-10T13:00:00.010Z"))),
            MIN_WAIT
        );
        // A poll interval shorter than the least wait is kept.
        let fast = Duration::from_millis(10);
        assert_eq!(next_wait(fast, now, Some(at("2024-10-10T12:59:00Z"))), fast);
    }
}

//! The retention sweep: every place that holds personal data (or ids that lead to it) is
//! emptied at the end of its period, as of the worker's clock. The periods are in `[retention]`
//! (README, "Retention", lists every place and its period); erasure (`handle::erasure`) is the
//! other way data goes, at once and for one person.
//!
//! Every rule runs in batches: one statement changes at most `[retention] batch_size` rows, in
//! its own transaction, and the rule repeats until a batch comes back short. So a sweep that has
//! months to catch up on (a first deployment, a long outage) never holds many row locks, nor one
//! lock for long, while the consumer and the sender work on the same tables.
//!
//! Each statement picks its batch by `ctid` and repeats its condition on the rows it changes: a
//! row that another transaction changes meanwhile (a pending subscription confirmed at the last
//! moment, a session moved) is re-checked against its new version and left alone if it no longer
//! qualifies.
//!
//! Kept whatever its age: an outbox row that failed and that no operator has resolved (it is the
//! one record that an email, an enquiry say, never arrived), a confirmed subscription (the
//! service the person asked for, until they leave), and the `erasures` audit (event ids, times
//! and counts, nothing about anyone).

use crate::clock::Clock;
use crate::config::RetentionSettings;
use crate::tokens::CONFIRM_VALIDITY;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// What the sweep uses, and nothing more: built by the composition root (`worker`), or by a
/// test that sweeps when it chooses.
pub struct Sweeper {
    /// Each batch is a transaction of its own.
    pub pool: PgPool,
    /// Periods end by this clock.
    pub clock: Clock,
    /// `[retention]`: the periods, the batch size and the time between sweeps.
    pub retention: RetentionSettings,
}

/// What one sweep removed, per place: rows deleted, or (enquiries, registrations) anonymised.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub enquiries: u64,
    pub registrations: u64,
    pub emails: u64,
    /// Never confirmed, and their link has expired.
    pub pending_subscriptions: u64,
    pub unsubscribed_subscriptions: u64,
    pub suppressions: u64,
    pub processed_events: u64,
    pub scheduled_emails: u64,
    /// Of newsletters past their period, and of the subscriptions removed above.
    pub newsletter_deliveries: u64,
    pub digest_runs: u64,
    /// Hashes of erased addresses past the time an event about them could still come.
    pub erased_addresses: u64,
    /// Bounces and complaints received (an email's go with it too, when the email goes).
    pub bounces: u64,
    /// Mail at the bounce address that was not understood.
    pub unparsed_bounces: u64,
}

/// A period in days as PostgreSQL's `make_interval` takes it. Capped so that "keep for ever"
/// written as a huge number still makes a valid timestamp (a million days is 2,700 years).
fn days(n: u32) -> i32 {
    n.min(1_000_000) as i32
}

/// `DELETE` the rows of `table` matching `condition`, one batch, oldest first: `$1` is now, `$2`
/// the period in days, `$3` the batch size. Returns (rows, 0). The order is by the indexed
/// column the condition filters on, so each batch walks that index from its oldest end (where
/// the previous batch's deleted entries are soon marked dead and skipped) instead of a scan of
/// the table from its first page, which would read every row already deleted again.
macro_rules! delete_batch {
    ($table:literal, $condition:literal, $order:literal) => {
        concat!(
            "WITH done AS (DELETE FROM ",
            $table,
            " WHERE ctid = ANY(ARRAY(SELECT ctid FROM ",
            $table,
            " WHERE ",
            $condition,
            " ORDER BY ",
            $order,
            " LIMIT $3)) AND ",
            $condition,
            " RETURNING 1) SELECT count(*), 0::bigint FROM done"
        )
    };
}

const ENQUIRIES: &str = "WITH done AS (
    UPDATE enquiries SET name = NULL, email = NULL, organisation = NULL, phone = NULL,
           area = NULL, message = NULL, claim_note = NULL, anonymised_at = $1
    WHERE ctid = ANY(ARRAY(
              SELECT ctid FROM enquiries
              WHERE anonymised_at IS NULL AND received_at < $1 - make_interval(days => $2)
              ORDER BY received_at LIMIT $3))
      AND anonymised_at IS NULL AND received_at < $1 - make_interval(days => $2)
    RETURNING 1)
SELECT count(*), 0::bigint FROM done";

/// Counted from the end of the registration's session.
const REGISTRATIONS: &str = "WITH done AS (
    UPDATE registrations r SET name = NULL, email = NULL
    WHERE r.ctid = ANY(ARRAY(
              SELECT x.ctid FROM registrations x JOIN sessions s USING (session_id)
              WHERE (x.email IS NOT NULL OR x.name IS NOT NULL)
                AND s.ends_at < $1 - make_interval(days => $2)
              LIMIT $3))
      AND (r.email IS NOT NULL OR r.name IS NOT NULL)
      AND EXISTS (SELECT 1 FROM sessions s WHERE s.session_id = r.session_id
                  AND s.ends_at < $1 - make_interval(days => $2))
    RETURNING 1)
SELECT count(*), 0::bigint FROM done";

/// Finished emails, with their recipients and content. A failed one only once an operator has
/// resolved it: `resolved_at IS NULL` keeps it, whatever its age. (Written so that the
/// `outbox_finished` index, on rows no longer `waiting`, applies.)
const EMAILS: &str = delete_batch!(
    "outbox",
    "NOT waiting AND (NOT failed OR resolved_at IS NOT NULL)
     AND created_at < $1 - make_interval(days => $2)",
    "created_at"
);

/// Subscriptions that go, with who was given which newsletter under them (ids that would
/// otherwise point at nobody; the subscription's id is never used again). One statement, so the
/// deliveries of a subscription that stays are never touched.
macro_rules! subscriptions_batch {
    ($condition:literal, $order:literal) => {
        concat!(
            "WITH gone AS (DELETE FROM subscriptions WHERE ctid = ANY(ARRAY(
                 SELECT ctid FROM subscriptions WHERE ",
            $condition,
            " ORDER BY ",
            $order,
            " LIMIT $3)) AND ",
            $condition,
            " RETURNING id),
             deliveries AS (DELETE FROM newsletter_deliveries
                 WHERE subscription_id IN (SELECT id FROM gone) RETURNING 1)
             SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM deliveries)"
        )
    };
}

/// Never confirmed: the row goes when its link stops working, `$2` (7) days after the last
/// confirmation email was queued; a row that never had one counts from its request.
const PENDING_SUBSCRIPTIONS: &str = subscriptions_batch!(
    "status = 'pending'
     AND coalesce(confirmation_sent_at, requested_at) < $1 - make_interval(days => $2)",
    "coalesce(confirmation_sent_at, requested_at)"
);

/// Unsubscribed: deleted at the next sweep (`$2` is 0). Nothing needs to remember that an
/// address left: only confirmed subscriptions get bulk mail, and coming back takes a new
/// request and a new double opt-in, which a deleted row gives exactly as an unsubscribed one
/// did. So no address, and no hash of one (guessable, see `erasures`), is kept.
const UNSUBSCRIBED_SUBSCRIPTIONS: &str = subscriptions_batch!(
    "status = 'unsubscribed' AND unsubscribed_at < $1 - make_interval(days => $2)",
    "id"
);

const SUPPRESSIONS: &str = delete_batch!(
    "suppressions",
    "suppressed_at < $1 - make_interval(days => $2)",
    "suppressed_at"
);

const PROCESSED_EVENTS: &str = delete_batch!(
    "processed_events",
    "processed_at < $1 - make_interval(days => $2)",
    "processed_at"
);

/// Reminders and briefings handed to the outbox or dropped; pending ones wait for their time.
/// Re-planning (a session moved) looks at pending rows only, so none of these is needed again.
const SCHEDULED_EMAILS: &str = delete_batch!(
    "scheduled_emails",
    "status IN ('queued', 'dropped') AND handled_at < $1 - make_interval(days => $2)",
    "handled_at"
);

/// Marks newsletters past their period as pruned, before their deliveries go: the fan-out reads
/// the mark under the row's lock, so a newsletter published again from now on is sent to
/// nobody rather than to everyone (see `handle::newsletter`).
const NEWSLETTERS_TO_PRUNE: &str = "WITH done AS (
    UPDATE newsletters SET deliveries_pruned_at = $1
    WHERE ctid = ANY(ARRAY(
              SELECT ctid FROM newsletters
              WHERE deliveries_pruned_at IS NULL AND received_at < $1 - make_interval(days => $2)
              ORDER BY received_at LIMIT $3))
      AND deliveries_pruned_at IS NULL AND received_at < $1 - make_interval(days => $2)
    RETURNING 1)
SELECT count(*), 0::bigint FROM done";

/// The deliveries of newsletters marked above (the mark decides: `$1` and `$2` are unused).
const NEWSLETTER_DELIVERIES: &str = "WITH done AS (
    DELETE FROM newsletter_deliveries WHERE ctid = ANY(ARRAY(
        SELECT d.ctid FROM newsletter_deliveries d JOIN newsletters n USING (newsletter_id)
        WHERE n.deliveries_pruned_at IS NOT NULL
        LIMIT $3))
    RETURNING 1)
SELECT count(*), 0::bigint FROM done";

/// The keyed hashes erasures leave, once no event about the person can come back (each row
/// carries its own end, the dead letters' lifetime when it was written; `$2` is unused).
const ERASED_ADDRESSES: &str = delete_batch!(
    "erased_addresses",
    "kept_until < $1 + make_interval(days => $2)",
    "kept_until"
);

const BOUNCES: &str = delete_batch!(
    "bounces",
    "received_at < $1 - make_interval(days => $2)",
    "received_at"
);

const UNPARSED_BOUNCES: &str = delete_batch!(
    "unparsed_bounces",
    "received_at < $1 - make_interval(days => $2)",
    "received_at"
);

const DIGEST_RUNS: &str = delete_batch!(
    "digest_runs",
    "ran_at < $1 - make_interval(days => $2)",
    "ran_at"
);

/// Runs `sql` (one batch: `$1` now, `$2` days, `$3` batch size; it returns the rows it changed
/// and the dependent rows it removed with them) until a batch comes back short or `stop` is
/// cancelled. Each batch is its own transaction.
async fn in_batches(
    pool: &PgPool,
    sql: &str,
    now: DateTime<Utc>,
    period_days: u32,
    batch: i64,
    stop: &CancellationToken,
) -> sqlx::Result<(u64, u64)> {
    let (mut rows, mut dependent) = (0u64, 0u64);
    loop {
        let (n, m): (i64, i64) = sqlx::query_as(sql)
            .bind(now)
            .bind(days(period_days))
            .bind(batch)
            .fetch_one(pool)
            .await?;
        rows += n.max(0) as u64;
        dependent += m.max(0) as u64;
        if n < batch || stop.is_cancelled() {
            return Ok((rows, dependent));
        }
    }
}

/// One sweep of every place, as of the worker's clock.
pub async fn sweep_once(sweeper: &Sweeper) -> sqlx::Result<Swept> {
    sweep(sweeper, &CancellationToken::new()).await
}

/// [`sweep_once`], stopping between batches once `stop` is cancelled (the next sweep goes on
/// from there).
pub async fn sweep(sweeper: &Sweeper, stop: &CancellationToken) -> sqlx::Result<Swept> {
    let s = &sweeper.retention;
    let now = sweeper.clock.now();
    let batch = s.batch_size.max(1);
    let pool = &sweeper.pool;
    let run = |sql: &'static str, period: u32| in_batches(pool, sql, now, period, batch, stop);
    let confirm_days = CONFIRM_VALIDITY.num_days() as u32;

    let (enquiries, _) = run(ENQUIRIES, s.enquiry_days).await?;
    let (registrations, _) = run(REGISTRATIONS, s.registration_days).await?;
    let (emails, _) = run(EMAILS, s.outbox_days).await?;
    let (pending_subscriptions, pending_deliveries) =
        run(PENDING_SUBSCRIPTIONS, confirm_days).await?;
    let (unsubscribed_subscriptions, unsubscribed_deliveries) =
        run(UNSUBSCRIBED_SUBSCRIPTIONS, 0).await?;
    let (suppressions, _) = run(SUPPRESSIONS, s.suppression_days).await?;
    let (processed_events, _) = run(PROCESSED_EVENTS, s.processed_event_days).await?;
    let (scheduled_emails, _) = run(SCHEDULED_EMAILS, s.scheduled_email_days).await?;
    run(NEWSLETTERS_TO_PRUNE, s.newsletter_delivery_days).await?;
    let (pruned_deliveries, _) = run(NEWSLETTER_DELIVERIES, 0).await?;
    let (digest_runs, _) = run(DIGEST_RUNS, s.digest_run_days).await?;
    let (erased_addresses, _) = run(ERASED_ADDRESSES, 0).await?;
    let (bounces, _) = run(BOUNCES, s.bounce_days).await?;
    let (unparsed_bounces, _) = run(UNPARSED_BOUNCES, s.unparsed_bounce_days).await?;
    Ok(Swept {
        enquiries,
        registrations,
        emails,
        pending_subscriptions,
        unsubscribed_subscriptions,
        suppressions,
        processed_events,
        scheduled_emails,
        newsletter_deliveries: pending_deliveries + unsubscribed_deliveries + pruned_deliveries,
        digest_runs,
        erased_addresses,
        bounces,
        unparsed_bounces,
    })
}

/// Sweeps at start and then every `[retention] sweep_interval_secs` until `stop`.
pub async fn run(sweeper: Sweeper, stop: CancellationToken) {
    loop {
        match sweep(&sweeper, &stop).await {
            // Every five minutes: a line only when something went (at debug level otherwise).
            Ok(swept) if swept == Swept::default() => {
                tracing::debug!("retention: nothing has reached the end of its period")
            }
            // Counts only (Swept holds nothing else): never an id list, never an address.
            Ok(swept) => tracing::info!(
                counts = ?swept,
                "retention: expired rows removed or anonymised"
            ),
            Err(e) => tracing::warn!(error = %e, "retention sweep failed"),
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(sweeper.retention.sweep_interval) => {}
        }
    }
}

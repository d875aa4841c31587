//! The weekly regional digest. Each region's `digest_schedule` (cron with seconds, read in UK
//! wall-clock time) fires once per occurrence: a skipped time once at the next valid instant, a
//! repeated time once (see [`plan::next_fire`]). A firing lists the sessions of the region and
//! national ones that the worker learned of since the previous firing and that are still ahead,
//! and queues one email per confirmed, not suppressed subscriber; no new sessions, no email.
//!
//! Each region's state row is locked (`FOR UPDATE SKIP LOCKED`) for the firing, so two workers
//! never fire one occurrence twice; after downtime, missed occurrences are caught up with one
//! firing, not several.

use super::{plan, Scheduler};
use crate::domain::RegionId;
use crate::outbox::{enqueue_each, Audience, ForEach, NewEmails};
use crate::state::reader::list_id;
use crate::state::session::{SessionRow, SessionView, SESSION_COLUMNS};
use chrono::{DateTime, Utc};

/// What one firing did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fired {
    pub region: RegionId,
    pub fire_at: DateTime<Utc>,
    pub sessions: usize,
    pub recipients: u64,
}

/// Fires every region whose schedule is due, as of `scheduler.clock`.
pub async fn fire_due(scheduler: &Scheduler) -> anyhow::Result<Vec<Fired>> {
    let mut fired = Vec::new();
    for (region, config) in scheduler.regions.iter() {
        let Some((_, schedule)) = &config.digest_schedule else {
            continue;
        };
        if let Some(f) = fire_region(scheduler, region, schedule).await? {
            fired.push(f);
        }
    }
    Ok(fired)
}

async fn fire_region(
    scheduler: &Scheduler,
    region: RegionId,
    schedule: &cron::Schedule,
) -> anyhow::Result<Option<Fired>> {
    let now = scheduler.clock.now();
    // Committed on its own: a round with nothing to fire rolls its transaction back.
    sqlx::query(
        "INSERT INTO digest_state (region, last_fire_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(region.as_str())
    .bind(now)
    .execute(&scheduler.pool)
    .await?;
    let mut tx = scheduler.pool.begin().await?;
    let state: Option<(DateTime<Utc>,)> = sqlx::query_as(
        "SELECT last_fire_at FROM digest_state WHERE region = $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(region.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    let Some((last,)) = state else {
        return Ok(None); // another worker is firing it
    };
    // The latest occurrence at or before now; none: nothing to do.
    let mut fire_at = None;
    let mut t = last;
    while let Some(next) = plan::next_fire(schedule, t) {
        if next > now {
            break;
        }
        fire_at = Some(next);
        t = next;
    }
    let Some(fire_at) = fire_at else {
        return Ok(None);
    };

    let sessions: Vec<SessionRow> = sqlx::query_as(&format!(
        "SELECT {SESSION_COLUMNS} FROM sessions
         WHERE status = 'scheduled' AND (region = $1 OR region IS NULL)
           AND first_seen_at > $2 AND first_seen_at <= $3 AND starts_at > $4
         ORDER BY starts_at, session_id"
    ))
    .bind(region.as_str())
    .bind(last)
    .bind(now)
    .bind(now)
    .fetch_all(&mut *tx)
    .await?;
    let mut recipients = 0;
    if !sessions.is_empty() {
        let views: Vec<SessionView> = sessions
            .iter()
            .map(|s| SessionView::new(&scheduler.regions, s))
            .collect();
        // Set-based: one row per confirmed, not suppressed subscriber; name and unsubscribe
        // link are completed at send time (`send::compose::digest`).
        let emails = NewEmails {
            job: ForEach::Digest {
                region_name: scheduler.regions.region(region).name.clone(),
                sessions: views,
            },
            to: Audience::Readers(region),
            headers: vec![("List-Id", list_id(&scheduler.bulk_domain, region))],
            priority: -10,
            source_event: None,
        };
        recipients = enqueue_each(&mut tx, &emails).await?.queued;
    }
    sqlx::query("INSERT INTO digest_runs (region, fire_at, ran_at, sessions, recipients) VALUES ($1, $2, $3, $4, $5)")
        .bind(region.as_str())
        .bind(fire_at)
        .bind(now)
        .bind(sessions.len() as i32)
        .bind(recipients as i32)
        .execute(&mut *tx)
        .await?;
    // Sessions first seen up to now were considered by this firing; the next lists later ones.
    sqlx::query("UPDATE digest_state SET last_fire_at = $2 WHERE region = $1")
        .bind(region.as_str())
        .bind(now.max(fire_at))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!(region = region.as_str(), fire_at = %fire_at, sessions = sessions.len(), recipients, "digest fired");
    Ok(Some(Fired {
        region,
        fire_at,
        sessions: sessions.len(),
        recipients,
    }))
}

//! `newsletter.published`: a region's newsletter goes to each of its confirmed, not suppressed
//! subscribers, exactly once.
//!
//! The fan-out is set-based: the database copies the audience into the outbox
//! (`INSERT ... SELECT`, `outbox::enqueue_each`), in batches, without the worker ever holding
//! the list. Each outbox row's job carries only the newsletter id and the subscription id; the
//! reader's name and unsubscribe link are filled in just before sending
//! (`send::compose::newsletter`), which also skips a reader who unsubscribed or was suppressed
//! in the meantime.
//!
//! Exactly once: `newsletter_deliveries` has one row per (newsletter, subscription), written by
//! the same statement as the outbox row and skipped when present. Each batch is committed on
//! its own, before the event is recorded as handled, so the sender starts on the first
//! readers while the database is still queuing the rest (a 100,000-reader list is twenty
//! batches). A crash in the middle leaves the batches committed so far; the event comes back
//! (it was not recorded) and the fan-out goes on with the readers who have no delivery yet.
//! The sender's leases resume the sending where it stopped. A second event with the same
//! newsletter id queues it only for readers who have not had it (those confirmed since), as
//! long as retention keeps the deliveries (`[retention] newsletter_delivery_days`); after that,
//! to nobody.

use super::{Failure, Handlers};
use crate::domain::{Envelope, NewsletterPublished, RegionId};
use crate::mail::markdown;
use crate::outbox::{enqueue_each, Audience, ForEach, NewEmails};
use crate::state::reader::{list_id, NewsletterEmail, StoredSection};
use serde_json::Value;
use sqlx::PgConnection;

/// Subscribers queued per statement: each statement stays well inside the statement timeout
/// however large a region's list grows.
const FAN_OUT_BATCH: i64 = 5_000;
/// Newsletters wait behind one-to-one mail (acknowledgements, confirmations, reminders), so a
/// large fan-out never delays them.
const BULK_PRIORITY: i16 = -10;

/// Stores the newsletter and queues it for its readers, batch by batch, each batch committed
/// (see the module's notes); `handle::handle` then records the event. Runs before that
/// record, outside the event's transaction.
pub(super) async fn publish(
    handlers: &Handlers,
    envelope: &Envelope,
    n: &NewsletterPublished,
) -> Result<(), Failure> {
    let sections: Vec<StoredSection> = n
        .sections
        .iter()
        .map(|s| {
            let body = markdown::render(&s.body_markdown);
            StoredSection {
                heading: s.heading.clone(),
                html: body.html,
                text: body.text,
            }
        })
        .collect();
    let sections = serde_json::to_value(sections).map_err(|e| Failure::Transient(e.into()))?;
    let first = sqlx::query(
        "INSERT INTO newsletters (newsletter_id, event_id, region, subject, preheader, sections,
                                  web_url, published_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (newsletter_id) DO NOTHING",
    )
    .bind(&n.newsletter_id)
    .bind(envelope.id)
    .bind(n.region.as_str())
    .bind(&n.subject)
    .bind(&n.preheader)
    .bind(&sections)
    .bind(&n.web_url)
    .bind(envelope.occurred_at)
    .execute(&handlers.pool)
    .await?
    .rows_affected()
        == 1;
    if !first {
        tracing::info!(event_id = %envelope.id, newsletter_id = %n.newsletter_id,
            "newsletter already published: queued only for subscribers who have not had it");
    }
    let queued = fan_out(handlers, &n.newsletter_id, envelope).await?;
    tracing::info!(event_id = %envelope.id, newsletter_id = %n.newsletter_id, queued,
        "newsletter queued");
    Ok(())
}

/// The newsletter's stored region, read under a share lock held to the caller's commit; None
/// once its delivery records have been pruned.
async fn stored_region(
    tx: &mut PgConnection,
    newsletter_id: &str,
    envelope: &Envelope,
) -> Result<Option<RegionId>, Failure> {
    // A newsletter published again keeps its first content and region. Read under a share
    // lock, held to the commit: retention marks a newsletter's deliveries as pruned (an update
    // of this row) before deleting them, so either that mark is seen here, or the batch is
    // committed before the mark and its deliveries are pruned with the rest.
    let (region, pruned): (String, bool) = sqlx::query_as(
        "SELECT region, deliveries_pruned_at IS NOT NULL FROM newsletters
         WHERE newsletter_id = $1 FOR SHARE",
    )
    .bind(newsletter_id)
    .fetch_one(&mut *tx)
    .await?;
    if pruned {
        // Who has it is no longer recorded (retention's period for deliveries has passed), so
        // queuing it for anyone could give them a second copy: it goes to nobody.
        tracing::info!(event_id = %envelope.id, newsletter_id,
            "newsletter published again after its delivery records were pruned: not sent");
        return Ok(None);
    }
    let region = region
        .parse()
        .map_err(|e: String| Failure::Transient(anyhow::anyhow!("stored region: {e}")))?;
    Ok(Some(region))
}

/// Queues the newsletter for every confirmed, not suppressed subscriber of its region who has
/// not had it, one committed transaction per batch; returns how many were queued.
async fn fan_out(
    handlers: &Handlers,
    newsletter_id: &str,
    envelope: &Envelope,
) -> Result<i64, Failure> {
    let mut queued: i64 = 0;
    let mut after = 0;
    loop {
        let mut tx = handlers.pool.begin().await?;
        // Read again for each batch: a prune marked since the last one ends the fan-out.
        let Some(region) = stored_region(&mut tx, newsletter_id, envelope).await? else {
            break;
        };
        // One statement per batch: pick the next subscribers in id order, record the delivery
        // (skipping anyone who has it already), and queue an email for each new delivery only.
        let emails = NewEmails {
            job: ForEach::Newsletter {
                newsletter_id: newsletter_id.to_owned(),
            },
            to: Audience::NewReaders {
                region,
                after,
                limit: FAN_OUT_BATCH,
            },
            headers: vec![("List-Id", list_id(&handlers.bulk_domain, region))],
            priority: BULK_PRIORITY,
            source_event: Some(envelope.id),
        };
        let batch = enqueue_each(&mut tx, &emails).await?;
        tx.commit().await?;
        queued += batch.queued as i64;
        match batch.last {
            Some(last) => after = last,
            None => break,
        }
    }
    Ok(queued)
}

pub(super) fn samples() -> Vec<(&'static str, Value)> {
    let section = |heading: &str, md: &str| {
        let body = markdown::render(md);
        StoredSection {
            heading: heading.into(),
            html: body.html,
            text: body.text,
        }
    };
    let full = NewsletterEmail {
        subject: "North-West Prevent update: November 2024".into(),
        preheader: Some("Regional trends, new training dates and guidance updates".into()),
        region_name: "North-West".into(),
        name: Some("Morgan Lee".into()),
        sections: vec![
            section(
                "Regional trends and risk updates",
                "Providers have reported an increase in **online** radicalisation concerns.\n\n- Review filtering and monitoring\n- Brief staff on reporting routes",
            ),
            section(
                "New training, guidance and resources",
                "Book a place on [Prevent in education: training for DSLs](https://www.eventbrite.co.uk/e/prevent-in-education-dsl-2024-11-25).",
            ),
        ],
        web_url: Some("https://example.org/newsletters/north-west/2024-11".into()),
        unsubscribe_url: "http://127.0.0.1:8080/unsubscribe?token=AQIAAAAAAAAAKgAAAABnCmOg".into(),
    };
    let sparse = NewsletterEmail {
        preheader: None,
        name: None,
        web_url: None,
        sections: vec![section(
            "News",
            "Read the latest from the Educate Against Hate website.",
        )],
        ..full.clone()
    };
    [full, sparse]
        .into_iter()
        .filter_map(|e| serde_json::to_value(e).ok())
        .map(|v| ("newsletter", v))
        .collect()
}

//! `newsletter.published`: a region's newsletter goes to each of its confirmed, not suppressed
//! subscribers, exactly once.
//!
//! The fan-out is set-based: the database copies the audience into the outbox
//! (`INSERT ... SELECT`), in batches, without the worker ever holding the list. Each outbox row
//! carries only the newsletter id and the subscription id; the reader's name and unsubscribe link
//! are filled in just before sending ([`complete`], called from `send::prepare`), which also
//! skips a reader who unsubscribed or was suppressed in the meantime.
//!
//! Exactly once: `newsletter_deliveries` has one row per (newsletter, subscription), written by
//! the same statement as the outbox row and skipped when present. The fan-out runs in the
//! event's transaction, so a crash before the commit leaves nothing (the event comes back and
//! the fan-out starts again), and a crash after it leaves every row queued; the sender's leases
//! then resume the sending where it stopped. A second event with the same newsletter id queues
//! it only for readers who have not had it (those confirmed since), as long as retention keeps
//! the deliveries (`[retention] newsletter_delivery_days`); after that, to nobody.

use super::Failure;
use crate::domain::{Envelope, NewsletterPublished, RegionId};
use crate::mail::markdown;
use crate::outbox::{Claimed, NOTIFY_CHANNEL};
use crate::send::prepare::Prepared;
use crate::tokens::{self, Purpose};
use crate::worker::Shared;
use anyhow::Context;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::PgConnection;

/// Subscribers queued per statement: each statement stays well inside the statement timeout
/// however large a region's list grows.
const FAN_OUT_BATCH: i64 = 5_000;
/// Newsletters wait behind one-to-one mail (acknowledgements, confirmations, reminders), so a
/// large fan-out never delays them.
const BULK_PRIORITY: i16 = -10;

/// A section as stored: the heading and the body in both forms.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSection {
    heading: String,
    html: String,
    text: String,
}

/// The newsletter email's context, completed per reader at send time.
#[derive(Clone, Serialize)]
struct NewsletterEmail {
    subject: String,
    preheader: Option<String>,
    region_name: String,
    /// The reader's name, when they gave one.
    name: Option<String>,
    sections: Vec<StoredSection>,
    web_url: Option<String>,
    unsubscribe_url: String,
}

/// `List-Id` for a region's newsletter (RFC 2919), from the region id and the domain of the bulk
/// From address: `<north-west.newsletters.example.org>`. Config and ids only, never input.
pub fn list_id(shared: &Shared, region: RegionId) -> String {
    format!(
        "<{}.newsletters.{}>",
        region.as_str(),
        shared.settings.bulk_from.domain
    )
}

/// Why a bulk email (a newsletter or a digest) must not go to a subscription now, if it must
/// not: the rule of `bulk_recipients` at fan-out, checked again just before sending.
pub fn bulk_skip_reason(status: Option<&str>, suppressed: bool) -> Option<&'static str> {
    match status {
        None => Some("the subscription no longer exists"),
        Some("confirmed") if suppressed => Some("the address is suppressed for bulk mail"),
        Some("confirmed") => None,
        Some(_) => Some("the reader has unsubscribed"),
    }
}

/// The reader's own unsubscribe link, signed afresh for each email.
pub fn unsubscribe_link(shared: &Shared, subscription_id: i64) -> String {
    tokens::link(
        &shared.settings,
        Purpose::Unsubscribe,
        subscription_id,
        Utc::now(),
    )
}

pub(super) async fn handle(
    tx: &mut PgConnection,
    shared: &Shared,
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
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;

    // A newsletter published again keeps its first content and region. Read under a share
    // lock, held to the commit: retention marks a newsletter's deliveries as pruned (an update
    // of this row) before deleting them, so either that mark is seen here, or the fan-out below
    // is committed before the mark and its deliveries are pruned with the rest.
    let (region, pruned): (String, bool) = sqlx::query_as(
        "SELECT region, deliveries_pruned_at IS NOT NULL FROM newsletters
         WHERE newsletter_id = $1 FOR SHARE",
    )
    .bind(&n.newsletter_id)
    .fetch_one(&mut *tx)
    .await?;
    if pruned {
        // Who has it is no longer recorded (retention's period for deliveries has passed), so
        // queuing it for anyone could give them a second copy: it goes to nobody.
        tracing::info!(event_id = %envelope.id, newsletter_id = %n.newsletter_id,
            "newsletter published again after its delivery records were pruned: not sent");
        return Ok(());
    }
    let region: RegionId = region
        .parse()
        .map_err(|e: String| Failure::Transient(anyhow::anyhow!("stored region: {e}")))?;
    if !first {
        tracing::info!(event_id = %envelope.id, newsletter_id = %n.newsletter_id,
            "newsletter already published: queued only for subscribers who have not had it");
    }
    let queued = fan_out(tx, shared, &n.newsletter_id, region, envelope).await?;
    tracing::info!(event_id = %envelope.id, newsletter_id = %n.newsletter_id,
        region = region.as_str(), queued, "newsletter queued");
    Ok(())
}

/// Queues the newsletter for every confirmed, not suppressed subscriber of `region` who has not
/// had it; returns how many were queued.
async fn fan_out(
    tx: &mut PgConnection,
    shared: &Shared,
    newsletter_id: &str,
    region: RegionId,
    envelope: &Envelope,
) -> Result<i64, Failure> {
    let headers = json!({ "List-Id": list_id(shared, region) });
    let mut after: i64 = 0;
    let mut queued: i64 = 0;
    loop {
        // One statement per batch: pick the next subscribers in id order, record the delivery
        // (skipping anyone who has it already), and queue an email for each new delivery only.
        let (last, n): (Option<i64>, i64) = sqlx::query_as(
            "WITH batch AS (
                 SELECT subscription_id, email FROM bulk_recipients
                 WHERE region = $1 AND subscription_id > $2
                 ORDER BY subscription_id
                 LIMIT $3
             ), fresh AS (
                 INSERT INTO newsletter_deliveries (newsletter_id, subscription_id)
                 SELECT $4, subscription_id FROM batch
                 ON CONFLICT DO NOTHING
                 RETURNING subscription_id
             ), queued AS (
                 INSERT INTO outbox (kind, template, stream, recipients, context, headers,
                                     message_uuid, source_event, priority)
                 SELECT 'newsletter', 'newsletter', 'bulk', ARRAY[b.email],
                        jsonb_build_object('newsletter_id', $4::text,
                                           'subscription_id', b.subscription_id),
                        $5, gen_random_uuid(), $6, $7
                 FROM fresh f JOIN batch b USING (subscription_id)
                 RETURNING 1
             )
             SELECT (SELECT max(subscription_id) FROM batch), (SELECT count(*) FROM queued)",
        )
        .bind(region.as_str())
        .bind(after)
        .bind(FAN_OUT_BATCH)
        .bind(newsletter_id)
        .bind(&headers)
        .bind(envelope.id)
        .bind(BULK_PRIORITY)
        .fetch_one(&mut *tx)
        .await?;
        queued += n;
        match last {
            Some(last) => after = last,
            None => break,
        }
    }
    if queued > 0 {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(NOTIFY_CHANNEL)
            .execute(&mut *tx)
            .await?;
    }
    Ok(queued)
}

/// Completes a newsletter email just before it is sent, from the current state: the reader's
/// name and a fresh unsubscribe link; or skips it if the reader has unsubscribed, been
/// suppressed or erased since the fan-out.
pub(crate) async fn complete(shared: &Shared, row: &Claimed) -> anyhow::Result<Prepared> {
    let newsletter_id = row
        .context
        .get("newsletter_id")
        .and_then(Value::as_str)
        .context("a newsletter email without its newsletter id")?;
    let subscription_id = row
        .context
        .get("subscription_id")
        .and_then(Value::as_i64)
        .context("a newsletter email without its subscription id")?;
    type Row = (
        String,
        Option<String>,
        Value,
        Option<String>,
        String,
        Option<String>,
        Option<String>,
        Option<bool>,
    );
    let found: Option<Row> = sqlx::query_as(
        "SELECT n.subject, n.preheader, n.sections, n.web_url, n.region, s.status, s.name,
                EXISTS (SELECT 1 FROM suppressions x WHERE x.email = lower(s.email))
         FROM newsletters n LEFT JOIN subscriptions s ON s.id = $2
         WHERE n.newsletter_id = $1",
    )
    .bind(newsletter_id)
    .bind(subscription_id)
    .fetch_optional(&shared.pool)
    .await?;
    let Some((subject, preheader, sections, web_url, region, status, name, suppressed)) = found
    else {
        return Ok(Prepared::Skip("the newsletter is no longer held".into()));
    };
    if let Some(why) = bulk_skip_reason(status.as_deref(), suppressed == Some(true)) {
        return Ok(Prepared::Skip(why.into()));
    }
    let region: RegionId = region
        .parse()
        .map_err(|e: String| anyhow::anyhow!("stored region: {e}"))?;
    let unsubscribe_url = unsubscribe_link(shared, subscription_id);
    // Rendered once per newsletter (with and without a name): each reader's copy only fills in
    // their name and their own link.
    let key = format!("newsletter {newsletter_id} {}", name.is_some());
    let shell = shared.shells.get_or_make(&key, || {
        let email = NewsletterEmail {
            subject: subject.clone(),
            preheader: preheader.clone(),
            region_name: shared.regions.region(region).name.clone(),
            name: name.as_ref().map(|_| String::new()),
            sections: serde_json::from_value(sections.clone()).map_err(|e| e.to_string())?,
            web_url: web_url.clone(),
            unsubscribe_url: String::new(),
        };
        let context = serde_json::to_value(email).map_err(|e| e.to_string())?;
        // Without a name there is no hole for it: the template's "Hello," stays.
        let holes: &[&str] = if name.is_some() {
            &["unsubscribe_url", "name"]
        } else {
            &["unsubscribe_url"]
        };
        shared.templates.shell("newsletter", &context, holes)
    });
    match shell {
        Ok(Some(shell)) => {
            let values: Vec<&str> = std::iter::once(unsubscribe_url.as_str())
                .chain(name.as_deref())
                .collect();
            let rendered = shell.fill(&values).map_err(anyhow::Error::msg)?;
            Ok(Prepared::Rendered {
                rendered,
                unsubscribe_url: Some(unsubscribe_url),
            })
        }
        // A value that holds a marker character, or a template that does not render: rendered
        // whole for this reader (and a template error is then the sender's, as for any email).
        Ok(None) | Err(_) => {
            let email = NewsletterEmail {
                subject,
                preheader,
                region_name: shared.regions.region(region).name.clone(),
                name,
                sections: serde_json::from_value(sections).context("stored sections")?,
                web_url,
                unsubscribe_url,
            };
            Ok(Prepared::Send {
                context: serde_json::to_value(email)?,
                attachments: Vec::new(),
            })
        }
    }
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

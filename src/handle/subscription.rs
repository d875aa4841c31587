//! `subscription.requested` and `subscription.cancelled`: the double opt-in for regional
//! newsletters. A request records a pending subscription per region and emails a signed link
//! per region; only following that link (and pressing the button on its page) confirms it.
//!
//! The same [`request`] is used by a contact enquiry about the newsletter, in that enquiry's
//! transaction.

use super::{Failure, Handlers};
use crate::domain::{
    EmailAddress, Envelope, RegionId, SubscriptionCancelled, SubscriptionRequested,
};
use crate::outbox::job::{Confirmation, RegionLink};
use crate::outbox::{enqueue, Job, NewEmail};
use crate::tokens::{Purpose, CONFIRM_VALIDITY};
use crate::uk_time;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

/// Advisory-lock class for "one address's subscriptions" (the second key is a hash of it).
const ADDRESS_LOCK_CLASS: i32 = 3;
/// A pending address gets at most one confirmation email in this many hours, however often it
/// is asked for (a form can be submitted in a loop; the inbox should not fill up).
const RESEND_AFTER_HOURS: i32 = 24;

/// What a request came to, for the caller (the contact acknowledgement words it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requested {
    /// A confirmation email is queued.
    ConfirmationSent,
    /// Still pending, and a confirmation went to this address less than a day ago.
    RecentlySent,
    /// Every region asked for is already confirmed: nothing changed.
    AlreadyConfirmed,
}

fn joined(names: &[String]) -> String {
    match names {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

fn confirmation(
    name: Option<&str>,
    regions: Vec<RegionLink>,
    expires: DateTime<Utc>,
) -> Confirmation {
    let names: Vec<String> = regions.iter().map(|r| r.region_name.clone()).collect();
    Confirmation {
        name: name.map(str::to_owned),
        several: regions.len() > 1,
        region_names: joined(&names),
        regions,
        expires: uk_time::date(expires),
    }
}

/// Starts, or repeats, the double opt-in of `email` for `regions`, in the caller's transaction:
///
/// - a region never asked for, or unsubscribed from, becomes pending and gets a link;
/// - a pending one keeps waiting, and its link is sent again only if no confirmation went to the
///   address in the last 24 hours (unless the same request also starts a new region);
/// - a confirmed one is left exactly as it is: asking again never un-confirms.
pub(crate) async fn request(
    tx: &mut PgConnection,
    handlers: &Handlers,
    event_id: Uuid,
    email: &EmailAddress,
    name: Option<&str>,
    regions: &[RegionId],
) -> Result<Requested, Failure> {
    // Lower-cased by PostgreSQL, as every stored address is compared (`lower(email)`), so the
    // two can never disagree about a character.
    let (address,): (String,) = sqlx::query_as("SELECT lower($1)")
        .bind(email.as_str())
        .fetch_one(&mut *tx)
        .await?;
    // Events are handled concurrently: two requests for one address must not both decide that
    // nothing was sent today. Taken for the rest of the transaction.
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(ADDRESS_LOCK_CLASS)
        .bind(&address)
        .execute(&mut *tx)
        .await?;

    let mut pending: Vec<(i64, RegionId)> = Vec::new();
    let mut started = false;
    for &region in regions {
        let existing: Option<(i64, String)> = sqlx::query_as(
            "SELECT id, status FROM subscriptions WHERE region = $1 AND lower(email) = $2
             FOR UPDATE",
        )
        .bind(region.as_str())
        .bind(&address)
        .fetch_optional(&mut *tx)
        .await?;
        match existing {
            None => {
                let (id,): (i64,) = sqlx::query_as(
                    "INSERT INTO subscriptions (region, email, name) VALUES ($1, $2, $3)
                     RETURNING id",
                )
                .bind(region.as_str())
                .bind(email.as_str())
                .bind(name)
                .fetch_one(&mut *tx)
                .await?;
                started = true;
                pending.push((id, region));
            }
            Some((_, status)) if status == "confirmed" => {}
            Some((id, status)) => {
                // The guard on status keeps a confirmation that lands meanwhile (the page does
                // not take the address lock) from being undone.
                sqlx::query(
                    "UPDATE subscriptions
                     SET status = 'pending', name = COALESCE($2, name), requested_at = now(),
                         unsubscribed_at = NULL, confirmed_at = NULL
                     WHERE id = $1 AND status <> 'confirmed'",
                )
                .bind(id)
                .bind(name)
                .execute(&mut *tx)
                .await?;
                started |= status == "unsubscribed";
                pending.push((id, region));
            }
        }
    }
    if pending.is_empty() {
        tracing::info!(%event_id, "newsletter subscription already confirmed: nothing changed");
        return Ok(Requested::AlreadyConfirmed);
    }

    let (recently_sent,): (bool,) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM subscriptions WHERE lower(email) = $1
                        AND confirmation_sent_at > now() - make_interval(hours => $2))",
    )
    .bind(&address)
    .bind(RESEND_AFTER_HOURS)
    .fetch_one(&mut *tx)
    .await?;
    let ids: Vec<i64> = pending.iter().map(|p| p.0).collect();
    if recently_sent && !started {
        tracing::info!(%event_id, subscription_ids = ?ids, "confirmation sent less than a day ago: not sent again");
        return Ok(Requested::RecentlySent);
    }

    let now = Utc::now();
    let links = pending
        .iter()
        .map(|&(id, region)| RegionLink {
            region_name: handlers.regions.region(region).name.clone(),
            confirm_url: handlers.links.link(Purpose::Confirm, id, now),
        })
        .collect();
    let job = Job::SubscriptionConfirm(confirmation(name, links, now + CONFIRM_VALIDITY));
    let mut mail = NewEmail::new(job, vec![email.clone()]);
    mail.source_event = Some(event_id);
    enqueue(tx, &mail).await?;
    sqlx::query("UPDATE subscriptions SET confirmation_sent_at = now() WHERE id = ANY($1)")
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
    tracing::info!(%event_id, subscription_ids = ?ids, "newsletter confirmation queued");
    Ok(Requested::ConfirmationSent)
}

pub(super) async fn handle_requested(
    tx: &mut PgConnection,
    handlers: &Handlers,
    envelope: &Envelope,
    r: &SubscriptionRequested,
) -> Result<(), Failure> {
    request(
        tx,
        handlers,
        envelope.id,
        &r.email,
        r.name.as_deref(),
        &r.regions,
    )
    .await
    .map(|_| ())
}

pub(super) async fn handle_cancelled(
    tx: &mut PgConnection,
    envelope: &Envelope,
    c: &SubscriptionCancelled,
) -> Result<(), Failure> {
    let regions: Option<Vec<&str>> = c
        .regions
        .as_ref()
        .map(|rs| rs.iter().map(|r| r.as_str()).collect());
    let ended = sqlx::query(
        "UPDATE subscriptions SET status = 'unsubscribed', unsubscribed_at = now()
         WHERE lower(email) = lower($1) AND status <> 'unsubscribed'
           AND ($2::text[] IS NULL OR region = ANY($2))",
    )
    .bind(c.email.as_str())
    .bind(regions)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tracing::info!(event_id = %envelope.id, ended, "newsletter subscriptions cancelled");
    Ok(())
}

pub(super) fn samples() -> Vec<(&'static str, Value)> {
    let expires = DateTime::parse_from_rfc3339("2024-10-12T14:00:00Z")
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default();
    let link = |region: &str| RegionLink {
        region_name: region.into(),
        confirm_url: "http://127.0.0.1:8080/subscriptions/confirm?token=AQEAAAAAAAAAKgAAAABnCmOg"
            .into(),
    };
    let one = confirmation(Some("Morgan Lee"), vec![link("North-West")], expires);
    let two = confirmation(None, vec![link("North-West"), link("London")], expires);
    [one, two]
        .into_iter()
        .filter_map(|c| serde_json::to_value(c).ok())
        .map(|v| ("subscription_confirm", v))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_names_read_as_a_sentence() {
        let names = |v: &[&str]| joined(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(names(&["London"]), "London");
        assert_eq!(names(&["North-West", "London"]), "North-West and London");
        assert_eq!(
            names(&["North-West", "London", "South-East"]),
            "North-West, London and South-East"
        );
    }
}

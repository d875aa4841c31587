//! `person.erasure_requested`: every piece of personal data held for an address is deleted or
//! anonymised, in one transaction, and an audit row records that it happened, with counts only.

use super::Failure;
use crate::domain::{Envelope, ErasureRequested};
use serde_json::{Map, Value};
use sqlx::PgConnection;

/// Every statement that removes personal data for one address, in the order they run. `$1` is
/// the address lower-cased by PostgreSQL: compare with `lower(column) = $1`, so that case never
/// hides a row.
/// The label is the key of the count in the audit row.
///
/// THIS LIST IS THE ONE PLACE. Whoever adds a table or column that can hold an address or a
/// name adds its statement here; `tests/it/erasure.rs` searches every text, jsonb and array
/// column of every table afterwards and fails if anything is left.
///
/// Reminders and briefings are outbox rows once due ("emails" covers them; a briefing's
/// registrant list is filled in at send time, so no copy of it waits in the outbox).
pub const ERASURE: &[(&str, &str)] = &[
    // Who was given which newsletter: ids only, but about a subscription that goes next.
    (
        "newsletter_deliveries",
        "DELETE FROM newsletter_deliveries WHERE subscription_id IN
             (SELECT id FROM subscriptions WHERE lower(email) = $1)",
    ),
    (
        "subscriptions",
        "DELETE FROM subscriptions WHERE lower(email) = $1",
    ),
    ("suppressions", "DELETE FROM suppressions WHERE email = $1"),
    // The enquiry itself stays (region, topic, dates: the coordinators' statistics); every
    // personal field goes, as the retention sweep does.
    (
        "enquiries",
        "UPDATE enquiries SET name = NULL, email = NULL, organisation = NULL, phone = NULL,
                area = NULL, message = NULL, anonymised_at = now()
         WHERE lower(email) = $1",
    ),
    // Their registrations: reminders not yet due are dropped, and the registration keeps its
    // id and session (the session's numbers) but no name or address; nothing more is sent.
    (
        "reminders",
        "UPDATE scheduled_emails SET status = 'dropped', handled_at = now()
         WHERE status = 'pending' AND registration_id IN
             (SELECT registration_id FROM registrations WHERE lower(email) = $1)",
    ),
    (
        "registrations",
        "UPDATE registrations SET name = NULL, email = NULL, status = 'cancelled',
                cancelled_at = coalesce(cancelled_at, now())
         WHERE lower(email) = $1",
    ),
    // Emails to them, with replies to them, or about them (their address in the content: a
    // coordinator's copy of their enquiry), whether sent or not yet.
    (
        "emails",
        "DELETE FROM outbox
         WHERE EXISTS (SELECT 1 FROM unnest(recipients) AS r WHERE lower(r) = $1)
            OR lower(reply_to) = $1
            OR strpos(lower(context::text), $1) > 0
            OR strpos(lower(attachments::text), $1) > 0",
    ),
];

pub(super) async fn handle(
    tx: &mut PgConnection,
    envelope: &Envelope,
    e: &ErasureRequested,
) -> Result<(), Failure> {
    let (address,): (String,) = sqlx::query_as("SELECT lower($1)")
        .bind(e.email.as_str())
        .fetch_one(&mut *tx)
        .await?;
    let mut counts = Map::new();
    for (label, statement) in ERASURE {
        let n = sqlx::query(statement)
            .bind(&address)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        counts.insert((*label).to_owned(), Value::from(n));
    }
    let counts = Value::Object(counts);
    sqlx::query("INSERT INTO erasures (event_id, requested_at, counts) VALUES ($1, $2, $3)")
        .bind(envelope.id)
        .bind(envelope.occurred_at)
        .bind(&counts)
        .execute(&mut *tx)
        .await?;
    tracing::info!(event_id = %envelope.id, %counts, "personal data erased");
    Ok(())
}

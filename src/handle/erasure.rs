//! `person.erasure_requested`: every piece of personal data held for an address is deleted or
//! anonymised, in one transaction, and an audit row records that it happened, with counts only.

use super::{Failure, Handlers};
use crate::domain::{Envelope, ErasureRequested};
use serde_json::{Map, Value};
use sqlx::PgConnection;
use std::path::Path;

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
    // Bounces of mail to them (with the remote servers' words, which can quote the address),
    // and mail at the bounce address that was not understood and names them anywhere.
    ("bounces", "DELETE FROM bounces WHERE recipient = $1"),
    (
        "unparsed_bounces",
        "DELETE FROM unparsed_bounces WHERE strpos(lower(content), $1) > 0",
    ),
    // The enquiry itself stays (region, topic, dates, and who claimed it when: the
    // coordinators' statistics); every personal field goes, as the retention sweep does,
    // including a case system's note with its claim. Its escalations are outbox rows about
    // them ("emails" below), and are not sent once it is anonymised.
    (
        "enquiries",
        "UPDATE enquiries SET name = NULL, email = NULL, organisation = NULL, phone = NULL,
                area = NULL, message = NULL, claim_note = NULL, anonymised_at = now()
         WHERE lower(email) = $1",
    ),
    // An address that claimed enquiries (a coordinator's, or a case system's `by`): the claims
    // stay, with their times, without it.
    (
        "claims",
        "UPDATE enquiries SET claimed_by = NULL WHERE lower(claimed_by) = $1",
    ),
    (
        "enquiry_copies",
        "UPDATE enquiry_copies SET mailbox = NULL
         WHERE lower(mailbox) = $1
            OR $1 = ANY(SELECT lower(trim(m)) FROM unnest(string_to_array(mailbox, ',')) AS m)",
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
    // coordinator's copy of their enquiry), whether sent or not yet: the addresses a row holds
    // are listed in `about` (kept by a trigger), matched exactly through its index.
    ("emails", "DELETE FROM outbox WHERE about @> ARRAY[$1]"),
];

/// The keyed hash an erasure leaves of `address` (lower-cased): HMAC-SHA256 with the signing
/// key, so that the table cannot be searched for a guessed address without the key.
fn address_key(handlers: &Handlers, address: &str) -> Vec<u8> {
    use hmac::{Hmac, Mac};
    let key = handlers.links.signing_key();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(b"rpec-notify erased address\0");
    mac.update(address.to_lowercase().as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// Whether `envelope` is about an address erased after the event occurred: such an event was
/// on its way (retry queue, dead-letter queue) when the erasure came, and must not bring the
/// person's data back. If so, the erasure's audit row counts it, and the event is not applied.
pub(super) async fn erased_before(
    tx: &mut PgConnection,
    handlers: &Handlers,
    envelope: &Envelope,
) -> sqlx::Result<bool> {
    let Some(address) = envelope.event.personal_address() else {
        return Ok(false);
    };
    let erasure: Option<uuid::Uuid> = sqlx::query_scalar(
        "SELECT erasure_event FROM erased_addresses
         WHERE address_key = $1 AND requested_at >= $2 AND kept_until > $3",
    )
    .bind(address_key(handlers, address.as_str()))
    .bind(envelope.occurred_at)
    .bind(handlers.clock.now())
    .fetch_optional(&mut *tx)
    .await?;
    let Some(erasure) = erasure else {
        return Ok(false);
    };
    sqlx::query(
        "UPDATE erasures SET counts = jsonb_set(counts, '{late_events_dropped}',
             to_jsonb(coalesce((counts ->> 'late_events_dropped')::bigint, 0) + 1))
         WHERE event_id = $1",
    )
    .bind(erasure)
    .execute(&mut *tx)
    .await?;
    tracing::info!(event_id = %envelope.id, erasure_event = %erasure,
        "event about an address erased after it occurred: dropped");
    Ok(true)
}

/// The `.eml` files the file relay (`file://`, for development) wrote to or about `address`:
/// those whose `To`, `Cc` or `Reply-To` holds exactly that address. Files written elsewhere are
/// not touched. Returns how many were deleted.
pub fn erase_mail_files(dir: &Path, address: &str) -> std::io::Result<u64> {
    let mut deleted = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_none_or(|x| x != "eml") {
            continue;
        }
        let Ok(raw) = std::fs::read(&path) else {
            continue; // gone already, or being written
        };
        if header_addresses(&raw).iter().any(|a| a == address) {
            std::fs::remove_file(&path)?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// The addresses in a message's `To`, `Cc` and `Reply-To` headers, lower-cased.
fn header_addresses(raw: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(raw);
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    // Unfold continuation lines, then read the headers that name people.
    let unfolded = head.replace("\r\n ", " ").replace("\r\n\t", " ");
    let mut found = Vec::new();
    for line in unfolded.split("\r\n") {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if !["to", "cc", "reply-to"].contains(&name.trim().to_ascii_lowercase().as_str()) {
            continue;
        }
        for part in value.split(',') {
            let part = part.trim();
            let address = match (part.rfind('<'), part.rfind('>')) {
                (Some(open), Some(close)) if open < close => &part[open + 1..close],
                _ => part,
            };
            found.push(address.trim().to_lowercase());
        }
    }
    found
}

pub(super) async fn handle(
    tx: &mut PgConnection,
    handlers: &Handlers,
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
    // The development relay's files hold whole emails: they go too (before the commit; if the
    // commit fails, the redelivered erasure finds nothing more to delete there).
    if let Some(dir) = &handlers.mail_dir {
        let files = erase_mail_files(dir, &address)
            .map_err(|e| anyhow::Error::new(e).context("the mail directory"))?;
        counts.insert("mail_files".to_owned(), Value::from(files));
    }
    counts.insert("late_events_dropped".to_owned(), Value::from(0));
    let counts = Value::Object(counts);
    sqlx::query("INSERT INTO erasures (event_id, requested_at, counts) VALUES ($1, $2, $3)")
        .bind(envelope.id)
        .bind(envelope.occurred_at)
        .bind(&counts)
        .execute(&mut *tx)
        .await?;
    // Kept as long as a dead letter can live: the longest an event about them can still come.
    sqlx::query(
        "INSERT INTO erased_addresses (address_key, requested_at, erasure_event, kept_until)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (address_key) DO UPDATE
         SET requested_at = greatest(erased_addresses.requested_at, excluded.requested_at),
             erasure_event = excluded.erasure_event, kept_until = excluded.kept_until",
    )
    .bind(address_key(handlers, &address))
    .bind(envelope.occurred_at)
    .bind(envelope.id)
    .bind(
        handlers.clock.now()
            + chrono::Duration::from_std(handlers.dead_letter_ttl)
                .unwrap_or(chrono::Duration::days(30)),
    )
    .execute(&mut *tx)
    .await?;
    tracing::info!(event_id = %envelope.id, %counts, "personal data erased");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mail_files_are_matched_on_their_address_headers_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, headers: &str| {
            let body = format!("{headers}\r\nSubject: x\r\n\r\nBody mentions o@x.example.org\r\n");
            std::fs::write(dir.path().join(name), body).unwrap();
        };
        write("1.eml", "To: o@x.example.org");
        write("2.eml", "To: jo@x.example.org");
        write(
            "3.eml",
            "To: rpec.london@example.org\r\nReply-To: \"O\" <O@X.example.org>",
        );
        write("4.eml", "To: a@example.org,\r\n o@x.example.org");
        write("5.txt", "To: o@x.example.org");
        let deleted = erase_mail_files(dir.path(), "o@x.example.org").unwrap();
        assert_eq!(deleted, 3);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["2.eml", "5.txt"]);
    }
}

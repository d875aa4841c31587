//! Bounces and complaints that come back after the relay took an email.
//!
//! Every email's envelope sender is a VERP return path (`tokens::ReturnPaths`, from
//! `[mail] bounce_address`): `bounces+TOKEN@bounce domain`, the token naming the outbox row and
//! the recipient, signed. Remote servers send delivery status notifications (RFC 3464),
//! feedback reports (RFC 5965) and auto-replies there. They arrive through the bounce listener
//! (`listener`, `RPEC_BOUNCE_SMTP_ADDR`) or `rpec-notify bounces ingest` (a mailbox another MTA
//! delivers, piped in); both hand each message to [`ingest`]:
//!
//! 1. `report::interpret` says what it is (hard, soft, complaint, auto-reply, unparsed) and
//!    which of our return paths it names (the envelope recipient first, then its headers and
//!    the email it returns).
//! 2. A hard bounce (5.x.x) records itself against the email (the row is `failed`, with the
//!    remote server's reason, as a refusal by the relay would be) and suppresses the address
//!    for bulk mail; a coordinator's copy of an enquiry goes to the triage mailbox as
//!    undeliverable. A soft bounce (4.x.x) is counted: `bounces.soft_limit` of them within
//!    `bounces.soft_window_days` suppress. A complaint unsubscribes the address from every
//!    newsletter and suppresses it.
//! 3. Each effect happens once: a bounce is recorded once per email, recipient and kind (the
//!    `bounces` table), and what a second copy of it would do is already done.
//!
//! A bounce whose return path is not genuine (forged, altered) changes nothing. Mail that
//! cannot be understood is kept for an operator (`unparsed_bounces`), counted, and never
//! retried. Nothing here logs an address or the content: ids, kinds and status codes only.

pub mod listener;
pub mod report;

use crate::domain::EmailAddress;
use crate::metrics::{kind_label, Metrics};
use crate::outbox::{self, StoredJob};
use crate::tokens::{ReturnPaths, Returned, EVERY_RECIPIENT};
use report::{Kind, Report};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::sync::Arc;

/// The start of a hard-bounced email's `last_error`, before the status code and the remote
/// server's words: `outbox show` and `outbox list` tell it from a refusal by the relay by it.
pub const BOUNCED: &str = "bounced after the relay took it";

/// What [`ingest`] needs, and nothing more of the worker: the database, the return paths that
/// name our emails, the triage mailbox for undeliverable enquiries, the soft-bounce rule and the
/// metrics.
#[derive(Clone)]
pub struct Bounces {
    pub pool: PgPool,
    pub paths: ReturnPaths,
    pub triage: Vec<EmailAddress>,
    pub soft_limit: u32,
    pub soft_window_days: u32,
    pub metrics: Arc<Metrics>,
}

impl Bounces {
    /// For the worker and `bounces ingest`; none when `mail.bounce_address` is not set (then
    /// nothing names our emails, and no bounce can be understood).
    pub fn from_settings(
        settings: &crate::config::Settings,
        pool: PgPool,
        regions: &crate::config::Regions,
        metrics: Arc<Metrics>,
    ) -> Option<Bounces> {
        Some(Bounces {
            pool,
            paths: ReturnPaths::from_settings(settings)?,
            triage: regions.triage.clone(),
            soft_limit: settings.bounces.soft_limit,
            soft_window_days: settings.bounces.soft_window_days,
            metrics,
        })
    }
}

/// The bounce listener's side of this module: it takes mail for genuine return paths only, and
/// answers each message only once [`ingest`] has recorded it (451 when it could not: the
/// sending server keeps the bounce and tries again).
impl listener::Sink for Bounces {
    fn accepts(&self, rcpt: &str) -> bool {
        self.paths.check(rcpt).is_some()
    }

    fn deliver(
        &self,
        _from: String,
        rcpts: Vec<String>,
        raw: Vec<u8>,
    ) -> futures_util::future::BoxFuture<'static, listener::Delivered> {
        let bounces = self.clone();
        Box::pin(async move {
            match ingest(&bounces, &rcpts, &raw).await {
                Ok(_) => listener::Delivered::Accepted,
                Err(e) => {
                    // A database error names no address.
                    tracing::warn!(error = %format!("{e:#}"), "bounce not recorded: the sender is told to try again");
                    listener::Delivered::Failed("cannot record it now, try again later".into())
                }
            }
        })
    }
}

/// The listener's limits from `[bounces]`.
pub fn limits(settings: &crate::config::BounceSettings) -> listener::Limits {
    listener::Limits {
        max_message_bytes: settings.max_message_bytes,
        max_connections: settings.max_connections,
        command_timeout: settings.command_timeout,
        ..listener::Limits::default()
    }
}

/// What became of one message (what `bounces ingest` prints: ids and kinds only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ingested {
    /// A bounce or complaint recorded against email `outbox_id`, for `recipients` of its
    /// recipients (those recorded now; the others already were).
    Recorded {
        kind: Kind,
        outbox_id: i64,
        status: Option<String>,
        recipients: usize,
    },
    /// Received before: nothing more to do.
    AlreadyRecorded { kind: Kind, outbox_id: i64 },
    /// An auto-reply (out of office, a delivery notice): nothing to do.
    AutoReply { outbox_id: Option<i64> },
    /// Not understood: kept for an operator as `unparsed_bounces` row `id` (None: the same
    /// message was kept before).
    Unparsed { id: Option<i64> },
    /// A bounce that names no email of ours (no genuine return path, or the email is gone, or
    /// none of its recipients): nothing changed.
    Unmatched { kind: Kind },
}

impl Ingested {
    /// One line for `bounces ingest` and the logs' wording.
    pub fn describe(&self) -> String {
        match self {
            Ingested::Recorded {
                kind,
                outbox_id,
                status,
                recipients,
            } => format!(
                "{} for email {outbox_id}{}: recorded ({recipients} recipient(s))",
                kind.as_str(),
                status
                    .as_ref()
                    .map_or_else(String::new, |s| format!(" ({s})"))
            ),
            Ingested::AlreadyRecorded { kind, outbox_id } => {
                format!(
                    "{} for email {outbox_id}: already recorded, nothing more to do",
                    kind.as_str()
                )
            }
            Ingested::AutoReply { outbox_id } => format!(
                "auto-reply{}: ignored",
                outbox_id.map_or_else(String::new, |id| format!(" to email {id}"))
            ),
            Ingested::Unparsed { id: Some(id) } => {
                format!("not understood: kept for an operator (unparsed bounce {id})")
            }
            Ingested::Unparsed { id: None } => {
                "not understood: kept for an operator before (the same message)".to_owned()
            }
            Ingested::Unmatched { kind } => format!(
                "{} naming no email of ours (no genuine return path, or the email is gone): \
                 nothing changed",
                kind.as_str()
            ),
        }
    }
}

/// The email a return path named, as far as a bounce needs it.
#[derive(sqlx::FromRow)]
struct Email {
    id: i64,
    kind: String,
    recipients: Vec<String>,
    #[sqlx(try_from = "serde_json::Value")]
    job: StoredJob,
}

/// Takes one message that came back: `envelope_to` are the addresses it was delivered to (the
/// listener's RCPT TO, or what an MTA that pipes it says; may be empty), `raw` the message as
/// received. An error is a passing one (PostgreSQL away): nothing was recorded, the sender
/// should try again (the listener answers 451).
pub async fn ingest(
    bounces: &Bounces,
    envelope_to: &[String],
    raw: &[u8],
) -> anyhow::Result<Ingested> {
    let report = report::interpret(raw, &|a| bounces.paths.check(a).is_some());
    let named: Option<Returned> = envelope_to
        .iter()
        .chain(&report.return_paths)
        .find_map(|a| bounces.paths.check(a));
    let email: Option<Email> = match named {
        Some(r) => {
            sqlx::query_as("SELECT id, kind, recipients, job FROM outbox WHERE id = $1")
                .bind(r.outbox_id)
                .fetch_optional(&bounces.pool)
                .await?
        }
        None => None,
    };
    let email_kind = email.as_ref().map_or("unknown", |e| kind_label(&e.kind));
    let count = |kind: Kind, n: usize| {
        bounces
            .metrics
            .bounces
            .with_label_values(&[kind.as_str(), email_kind])
            .inc_by(n as u64);
    };
    let outbox_id = email.as_ref().map(|e| e.id);
    match report.kind {
        Kind::AutoReply => {
            count(Kind::AutoReply, 1);
            tracing::info!(outbox_id, "auto-reply at the bounce address: ignored");
            Ok(Ingested::AutoReply { outbox_id })
        }
        Kind::Unparsed => {
            let id = keep_unparsed(&bounces.pool, outbox_id, raw).await?;
            if id.is_some() {
                count(Kind::Unparsed, 1);
            }
            tracing::warn!(
                unparsed_bounce_id = id,
                outbox_id,
                "mail at the bounce address not understood: kept for an operator"
            );
            Ok(Ingested::Unparsed { id })
        }
        kind => {
            let Some(email) = email else {
                bounces.metrics.bounces_unmatched.inc();
                tracing::warn!(
                    bounce = kind.as_str(),
                    outbox_id = named.map(|r| r.outbox_id),
                    "bounce names no email of ours (no genuine return path, or the email is \
                     gone): nothing changed"
                );
                return Ok(Ingested::Unmatched { kind });
            };
            let recipients = recipients_named(&email, named, &report);
            if recipients.is_empty() {
                bounces.metrics.bounces_unmatched.inc();
                tracing::warn!(
                    bounce = kind.as_str(),
                    outbox_id = email.id,
                    "bounce names none of the email's recipients: nothing changed"
                );
                return Ok(Ingested::Unmatched { kind });
            }
            let recorded = record(bounces, &email, &recipients, &report).await?;
            if recorded == 0 {
                tracing::info!(
                    bounce = kind.as_str(),
                    outbox_id = email.id,
                    "bounce received again: already recorded"
                );
                return Ok(Ingested::AlreadyRecorded {
                    kind,
                    outbox_id: email.id,
                });
            }
            count(kind, recorded);
            tracing::info!(
                bounce = kind.as_str(),
                outbox_id = email.id,
                status = report.status.as_deref(),
                recipients = recorded,
                "bounce recorded"
            );
            Ok(Ingested::Recorded {
                kind,
                outbox_id: email.id,
                status: report.status.clone(),
                recipients: recorded,
            })
        }
    }
}

/// Which of the email's recipients the bounce is about, lower-cased: the one its return path
/// names, or, for an email sent to several at once, those the bounce itself names (its
/// `Final-Recipient`s); an email with one recipient needs no more.
fn recipients_named(email: &Email, named: Option<Returned>, report: &Report) -> Vec<String> {
    let lower: Vec<String> = email.recipients.iter().map(|a| a.to_lowercase()).collect();
    match named.map(|r| r.recipient) {
        Some(EVERY_RECIPIENT) if lower.len() > 1 => {
            let said: Vec<String> = report
                .recipients
                .iter()
                .filter_map(|r| r.address.as_ref().map(|a| a.to_lowercase()))
                .collect();
            let mut out: Vec<String> = lower.into_iter().filter(|a| said.contains(a)).collect();
            out.dedup();
            out
        }
        Some(EVERY_RECIPIENT) => lower,
        Some(i) => lower.get(usize::from(i)).cloned().into_iter().collect(),
        None => Vec::new(),
    }
}

/// Records the bounce for each of `recipients` and does what it implies, in one transaction;
/// how many were recorded now (0: all of them were before, and nothing more is done).
async fn record(
    bounces: &Bounces,
    email: &Email,
    recipients: &[String],
    report: &Report,
) -> sqlx::Result<usize> {
    let kind = report.kind;
    let mut tx = bounces.pool.begin().await?;
    let mut recorded = 0;
    for address in recipients {
        let new: Option<(i64,)> = sqlx::query_as(
            "INSERT INTO bounces (outbox_id, recipient, kind, status, reason)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (outbox_id, recipient, kind) DO NOTHING RETURNING id",
        )
        .bind(email.id)
        .bind(address)
        .bind(kind.as_str())
        .bind(&report.status)
        .bind(&report.diagnostic)
        .fetch_optional(&mut *tx)
        .await?;
        if new.is_none() {
            continue;
        }
        recorded += 1;
        let status = report.status.as_deref().unwrap_or("no status");
        match kind {
            Kind::Hard => {
                let reason = format!("hard bounce {status} (outbox row {})", email.id);
                outbox::suppress(&mut tx, std::slice::from_ref(address), &reason).await?;
                let why = format!(
                    "{BOUNCED} ({status}): {}",
                    report.diagnostic.as_deref().unwrap_or("no reason given")
                );
                // Bulk mail's bounce is resolved by the suppression: nothing is left for an
                // operator, and retention takes the row in its time. Transactional mail's waits
                // for one (an enquiry's, besides, goes to the triage mailbox below).
                // A bounce can overtake the sender's record of the send (the relay took the
                // email, the row is still `sending`), or follow a try the sender counted as
                // passing (a time-out after the relay took it: `pending`): the row fails all
                // the same, and the claim's own record, fenced on `sending`, changes nothing.
                sqlx::query(
                    "UPDATE outbox SET status = 'failed', last_error = $2, claimed_until = NULL,
                            resolved_at = CASE WHEN stream = 'bulk' THEN now() END
                     WHERE id = $1 AND status IN ('sent', 'sending', 'pending')",
                )
                .bind(email.id)
                .bind(&why)
                .execute(&mut *tx)
                .await?;
                let copy = email.job.get().ok().and_then(|job| {
                    job.undeliverable_copy(&bounces.triage, &email.recipients, &why)
                });
                if let Some((to, copy)) = copy {
                    let to: Vec<&str> = to.iter().map(String::as_str).collect();
                    if outbox::enqueue_undeliverable(&mut tx, email.id, &to, &copy).await? {
                        tracing::warn!(
                            outbox_id = email.id,
                            "enquiry bounced after acceptance: a copy goes to the triage mailbox"
                        );
                    }
                }
            }
            Kind::Soft => {
                let (within,): (i64,) = sqlx::query_as(
                    "SELECT count(DISTINCT outbox_id) FROM bounces
                     WHERE recipient = $1 AND kind = 'soft'
                       AND received_at > now() - make_interval(days => $2)",
                )
                .bind(address)
                .bind(bounces.soft_window_days as i32)
                .fetch_one(&mut *tx)
                .await?;
                if within >= i64::from(bounces.soft_limit) {
                    let reason = format!(
                        "{within} soft bounces within {} days (last: outbox row {})",
                        bounces.soft_window_days, email.id
                    );
                    if outbox::suppress(&mut tx, std::slice::from_ref(address), &reason).await? > 0
                    {
                        tracing::warn!(
                            outbox_id = email.id,
                            "soft bounces reached the limit: address suppressed for bulk mail"
                        );
                    }
                }
            }
            Kind::Complaint => {
                let left = sqlx::query(
                    "UPDATE subscriptions SET status = 'unsubscribed', unsubscribed_at = now()
                     WHERE lower(email) = $1 AND status <> 'unsubscribed'",
                )
                .bind(address)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                let reason = format!("complaint (outbox row {})", email.id);
                outbox::suppress(&mut tx, std::slice::from_ref(address), &reason).await?;
                tracing::warn!(
                    outbox_id = email.id,
                    subscriptions_ended = left,
                    "complaint: unsubscribed from every newsletter and suppressed for bulk mail"
                );
            }
            Kind::AutoReply | Kind::Unparsed => {}
        }
    }
    tx.commit().await?;
    Ok(recorded)
}

/// Keeps a message that could not be understood (once: the same bytes again add nothing).
async fn keep_unparsed(
    pool: &PgPool,
    outbox_id: Option<i64>,
    raw: &[u8],
) -> sqlx::Result<Option<i64>> {
    let digest = Sha256::digest(raw).to_vec();
    // PostgreSQL text holds no NUL.
    let content = String::from_utf8_lossy(raw).replace('\0', "\u{fffd}");
    let id: Option<(i64,)> = sqlx::query_as(
        "INSERT INTO unparsed_bounces (outbox_id, content, digest) VALUES ($1, $2, $3)
         ON CONFLICT (digest) DO NOTHING RETURNING id",
    )
    .bind(outbox_id)
    .bind(content)
    .bind(digest)
    .fetch_optional(pool)
    .await?;
    Ok(id.map(|(id,)| id))
}

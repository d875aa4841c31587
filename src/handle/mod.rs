//! Event handlers: one module per event kind. Each takes the open transaction and the parsed
//! event and writes its rows and its outgoing mail; `handle` wraps them in the de-duplication
//! and the commit.

mod claim;
mod contact;
mod erasure;
pub(crate) mod newsletter;
pub mod session;
pub(crate) mod subscription;

pub use erasure::ERASURE;

use crate::clock::Clock;
use crate::config::Regions;
use crate::domain::event::ErrorCode;
use crate::domain::{Envelope, Event};
use crate::metrics::Metrics;
use crate::tokens::Links;
use serde_json::Value;
use sqlx::PgPool;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// What the handlers use, and nothing more: built by the composition root (`worker`) and held
/// by the consumer.
pub struct Handlers {
    /// Each event is handled in one transaction of its own.
    pub pool: PgPool,
    /// Where an enquiry goes; the offsets of reminders and briefings; regions' names.
    pub regions: Arc<Regions>,
    /// "Now" for planning reminders and briefings, and for when data reached us (retention
    /// counts from it).
    pub clock: Clock,
    /// Signs the links in confirmation emails; its signing key also keys the hashes that an
    /// erasure leaves of an address.
    pub links: Links,
    /// The domain of the bulk From address, under which newsletters' `List-Id` is named.
    pub bulk_domain: String,
    /// Where the file relay (`file://`, development) writes its `.eml` files: an erasure
    /// deletes those to or about the person. None with a real relay.
    pub mail_dir: Option<PathBuf>,
    /// How long a dead letter lives (`[retention] dead_letter_days`): an erased address's hash
    /// is kept as long, since an event about it can come back that late.
    pub dead_letter_ttl: Duration,
    /// A claim by event is timed (`rpec_enquiry_time_to_claim_seconds`).
    pub metrics: Arc<Metrics>,
}

/// What handling an event came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// Its effects are committed.
    Done,
    /// This event id was handled before: nothing was done.
    Duplicate,
}

/// Why handling failed, which decides what happens to the message.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// It can never succeed: dead-letter it at once.
    #[error("{}: {detail}", code.as_str())]
    Permanent { code: ErrorCode, detail: String },
    /// It depends on something not known yet (a registration before its session): wait for it
    /// (re-delivered with back-off) up to the configured time, then dead-letter with `code`.
    #[error("{}: {detail}", code.as_str())]
    Deferred { code: ErrorCode, detail: String },
    /// It may succeed later (the database is down, ...): retry with back-off.
    #[error(transparent)]
    Transient(#[from] anyhow::Error),
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        Failure::Transient(anyhow::Error::new(e).context("database"))
    }
}

/// Applies an event exactly once: records its id and its effects in one transaction. A
/// newsletter is the exception: its fan-out is committed batch by batch first, and only then is
/// the event recorded (`newsletter`'s notes say why that still gives each reader one copy).
pub async fn handle(handlers: &Handlers, envelope: &Envelope) -> Result<Handled, Failure> {
    let newsletter = match &envelope.event {
        Event::NewsletterPublished(n) => Some(n),
        _ => None,
    };
    if let Some(n) = newsletter {
        let done: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM processed_events WHERE event_id = $1)",
        )
        .bind(envelope.id)
        .fetch_one(&handlers.pool)
        .await?;
        if done {
            return Ok(Handled::Duplicate);
        }
        injected_faults(envelope)?;
        newsletter::publish(handlers, envelope, n).await?;
    }
    let mut tx = handlers.pool.begin().await?;
    let first = sqlx::query(
        "INSERT INTO processed_events (event_id, event_type, occurred_at) VALUES ($1, $2, $3)
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(envelope.id)
    .bind(envelope.event_type.as_str())
    .bind(envelope.occurred_at)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !first {
        tx.rollback().await?;
        return Ok(Handled::Duplicate);
    }
    if newsletter.is_none() {
        injected_faults(envelope)?;
    }
    if erasure::erased_before(&mut tx, handlers, envelope).await? {
        tx.commit().await?;
        return Ok(Handled::Done);
    }
    match &envelope.event {
        Event::ContactSubmitted(c) => contact::handle(&mut tx, handlers, envelope, c).await?,
        Event::SessionScheduled(s) | Event::SessionUpdated(s) => {
            session::scheduled_or_updated(&mut tx, handlers, envelope, s).await?
        }
        Event::SessionCancelled(c) => session::cancelled(&mut tx, handlers, envelope, c).await?,
        Event::RegistrationCreated(r) => {
            session::registration_created(&mut tx, handlers, envelope, r).await?
        }
        Event::RegistrationCancelled(r) => {
            session::registration_cancelled(&mut tx, handlers, envelope, r).await?
        }
        Event::SubscriptionRequested(r) => {
            subscription::handle_requested(&mut tx, handlers, envelope, r).await?
        }
        Event::SubscriptionCancelled(c) => {
            subscription::handle_cancelled(&mut tx, envelope, c).await?
        }
        // Fanned out above.
        Event::NewsletterPublished(_) => {}
        Event::PersonErasureRequested(e) => erasure::handle(&mut tx, handlers, envelope, e).await?,
        Event::EnquiryClaimed(c) => claim::handle(&mut tx, handlers, envelope, c).await?,
    }
    tx.commit().await?;
    Ok(Handled::Done)
}

/// Faults injected into handling (the `failpoints` feature, for the fault tests): events whose
/// id starts with one of `handle::panic`'s prefixes (separated by `|`) crash here, as a handler
/// bug would; those starting with `handle::passing_failure`'s fail once as a passing failure
/// (a conflict, say) would. Without the feature, nothing.
fn injected_faults(envelope: &Envelope) -> Result<(), Failure> {
    #[cfg(feature = "failpoints")]
    if let Some(Some(prefixes)) = fail::eval("handle::panic", |arg| arg) {
        let id = envelope.id.to_string();
        if prefixes
            .split('|')
            .any(|p| !p.is_empty() && id.starts_with(p))
        {
            panic!("fault injected into handling");
        }
    }
    #[cfg(feature = "failpoints")]
    if let Some(Some(prefix)) = fail::eval("handle::passing_failure", |arg| arg) {
        if envelope.id.to_string().starts_with(&prefix) {
            return Err(Failure::Transient(anyhow::anyhow!(
                "a passing failure, injected"
            )));
        }
    }
    let _ = envelope;
    Ok(())
}

/// Sample contexts for every email, built from the handlers' own types, for `check` and for
/// authors (`preview`).
pub fn samples() -> Vec<(&'static str, Value)> {
    let mut all = contact::samples();
    all.extend(session::samples());
    all.extend(subscription::samples());
    all.extend(newsletter::samples());
    all
}

//! The last look before an email is sent. Most emails are sent as they were written to the
//! outbox; some depend on state that can change after they were queued (a reminder for a session
//! that has since been cancelled, a newsletter to a reader who has since unsubscribed), or are
//! completed only now (per-reader content, calendar files with the current sequence). Each such
//! kind gets a branch here; every branch reads the current state in the database.

use crate::context::Shared;
use crate::outbox::{Attachment, Claimed};
use serde_json::Value;

/// What to do with a claimed row.
#[derive(Debug, Clone, PartialEq)]
pub enum Prepared {
    /// Send it, rendered with this context, with these files attached.
    Send {
        context: Value,
        attachments: Vec<Attachment>,
    },
    /// Send it as already rendered (a newsletter's shell filled for one reader), with this
    /// one-click unsubscribe link in its headers.
    Rendered {
        rendered: crate::mail::Rendered,
        unsubscribe_url: Option<String>,
    },
    /// Do not send it: its cause went away. The reason is recorded (ids only).
    Skip(String),
}

/// Decides, just before sending, whether and with what a row is sent. An error is a passing
/// failure (the row is retried).
pub async fn prepare(shared: &Shared, row: &Claimed) -> anyhow::Result<Prepared> {
    if let Some(p) = super::compose::session::prepare(shared, row).await? {
        return Ok(p);
    }
    if let Some(p) = super::compose::enquiry::prepare(shared, row).await? {
        return Ok(p);
    }
    if row.kind == "digest" {
        return super::compose::digest::prepare(shared, row).await;
    }
    // Kinds whose content depends on state at send time get their branch here.
    if row.kind == "newsletter" {
        // The reader's name and unsubscribe link; skipped if they left since the fan-out.
        return super::compose::newsletter::complete(shared, row).await;
    }
    let attachments: Vec<Attachment> = serde_json::from_value(row.attachments.clone())?;
    Ok(Prepared::Send {
        context: row.context.clone(),
        attachments,
    })
}

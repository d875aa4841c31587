//! The last look before an email is sent: the row's job, composed from the current state
//! (`compose`). A row whose job does not parse fails for good ([`UnreadableJob`]).

use crate::outbox::{Attachment, Claimed};
use crate::send::Mailer;
use serde_json::Value;

pub use crate::outbox::job::UnreadableJob;

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
/// failure (the row is retried), but for an [`UnreadableJob`], which never gets better.
pub async fn prepare(mailer: &Mailer, row: &Claimed) -> anyhow::Result<Prepared> {
    let job = row.job.get().map_err(|e| anyhow::Error::new(e.clone()))?;
    super::compose::compose(mailer, row, job).await
}

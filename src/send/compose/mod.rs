//! Composing an email from its job and the current state, just before it is sent: one `match`
//! over every kind of job. What was fixed when it was queued (an enquiry, an acknowledgement, a
//! confirmation with its links) is sent as it is; what can change since, or is only known now,
//! is read now, one module per family of kinds, and decides whether it still goes (a reminder
//! for a cancelled session, a newsletter to a reader who left are skipped).

pub mod digest;
pub mod enquiry;
pub mod newsletter;
pub mod session;

use crate::outbox::{Attachment, Claimed, Job};
use crate::send::prepare::Prepared;
use crate::send::Mailer;
use serde::Serialize;
use session::Email;

/// What `row` (whose job is `job`) is sent with, or why it is not sent now. An error is a
/// passing failure (the row is retried).
pub async fn compose(mailer: &Mailer, row: &Claimed, job: &Job) -> anyhow::Result<Prepared> {
    match job {
        Job::Enquiry(e) => enquiry::copy(mailer, row, e, e),
        Job::EnquiryAck(ack) => as_queued(row, ack),
        Job::EnquiryUndeliverable(copy) => enquiry::copy(mailer, row, &copy.enquiry, copy),
        Job::EnquiryReminder(e) => enquiry::waiting(mailer, row, e, e).await,
        Job::EnquiryEscalation(escalation) => {
            let shown = enquiry::EscalationShown::of(escalation);
            enquiry::waiting(mailer, row, &escalation.enquiry, &shown).await
        }
        Job::SubscriptionConfirm(confirmation) => as_queued(row, confirmation),
        Job::RegistrationConfirmation(r) => {
            session::registrant(mailer, Email::Confirmation(r)).await
        }
        Job::SessionReminder(reminder) => {
            session::registrant(mailer, Email::Reminder(reminder)).await
        }
        Job::SessionMoved(moved) => session::registrant(mailer, Email::Moved(moved)).await,
        Job::JoiningLinkChanged(r) => session::registrant(mailer, Email::JoiningLink(r)).await,
        Job::SessionCancelled(r) => session::registrant(mailer, Email::Cancelled(r)).await,
        Job::CoordinatorBriefing(briefing) => session::briefing(mailer, briefing).await,
        // The reader's name and unsubscribe link; skipped if they left since the fan-out.
        Job::Newsletter(copy) => newsletter::complete(mailer, row, copy).await,
        Job::Digest(copy) => digest::complete(mailer, row, copy).await,
    }
}

/// An email whose content was fixed when it was queued: rendered from its job as it is.
fn as_queued(row: &Claimed, content: &impl Serialize) -> anyhow::Result<Prepared> {
    let attachments: Vec<Attachment> = serde_json::from_value(row.attachments.clone())?;
    Ok(Prepared::Send {
        context: serde_json::to_value(content)?,
        attachments,
    })
}

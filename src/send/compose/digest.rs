//! A digest's copy for one reader, completed just before it is sent.

use crate::outbox::job::DigestCopy;
use crate::outbox::Claimed;
use crate::send::prepare::Prepared;
use crate::send::Mailer;
use crate::state::reader::{bulk_skip_reason, unsubscribe_link};
use serde_json::json;

/// Completes a digest email just before it is sent: the sessions the firing listed, the
/// reader's current name and their own unsubscribe link; skipped if they left, or were
/// suppressed, since the firing.
pub async fn complete(
    mailer: &Mailer,
    row: &Claimed,
    copy: &DigestCopy,
) -> anyhow::Result<Prepared> {
    // Whether it still goes was read with the claim.
    if let Some(why) = bulk_skip_reason(row.reader_status.as_deref(), row.reader_suppressed) {
        return Ok(Prepared::Skip(why.into()));
    }
    let mut context = serde_json::to_value(copy)?;
    context["count"] = json!(copy.sessions.len());
    context["name"] = json!(row.reader_name);
    context["unsubscribe_url"] = json!(unsubscribe_link(&mailer.links, copy.subscription_id));
    Ok(Prepared::Send {
        context,
        attachments: Vec::new(),
    })
}

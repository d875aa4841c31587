//! A digest's copy for one reader, completed just before it is sent.

use crate::context::Shared;
use crate::outbox::Claimed;
use crate::send::prepare::Prepared;
use crate::state::reader::{bulk_skip_reason, unsubscribe_link};
use serde_json::json;
use serde_json::Value;

/// Completes a digest email just before it is sent: the reader's current name and their own
/// unsubscribe link; skipped if they left, or were suppressed, since the firing.
pub async fn prepare(shared: &Shared, row: &Claimed) -> anyhow::Result<Prepared> {
    let subscription_id = row
        .context
        .get("subscription_id")
        .and_then(Value::as_i64)
        .ok_or_else(|| anyhow::anyhow!("a digest email without its subscription id"))?;
    // Whether it still goes was read with the claim.
    if let Some(why) = bulk_skip_reason(row.reader_status.as_deref(), row.reader_suppressed) {
        return Ok(Prepared::Skip(why.into()));
    }
    let name = row.reader_name.clone();
    let mut context = row.context.clone();
    context["name"] = json!(name);
    context["unsubscribe_url"] = json!(unsubscribe_link(&shared.settings, subscription_id));
    Ok(Prepared::Send {
        context,
        attachments: Vec::new(),
    })
}

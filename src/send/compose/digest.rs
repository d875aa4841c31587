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
    let reader: Option<(String, Option<String>, bool)> = sqlx::query_as(
        "SELECT s.status, s.name, EXISTS (SELECT 1 FROM suppressions x WHERE x.email = lower(s.email))
         FROM subscriptions s WHERE s.id = $1",
    )
    .bind(subscription_id)
    .fetch_optional(&shared.pool)
    .await?;
    let (status, name, suppressed) = match reader {
        Some((status, name, suppressed)) => (Some(status), name, suppressed),
        None => (None, None, false),
    };
    if let Some(why) = bulk_skip_reason(status.as_deref(), suppressed) {
        return Ok(Prepared::Skip(why.into()));
    }
    let mut context = row.context.clone();
    context["name"] = json!(name);
    context["unsubscribe_url"] = json!(unsubscribe_link(&shared.settings, subscription_id));
    Ok(Prepared::Send {
        context,
        attachments: Vec::new(),
    })
}

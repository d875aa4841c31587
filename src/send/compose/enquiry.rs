//! Enquiry emails completed just before they are sent: each coordinator's copy gets its own
//! claim link (signed now, so it lasts from when it was sent); a reminder or an escalation about
//! an enquiry that has been claimed since it was queued is not sent at all.

use crate::context::Shared;
use crate::outbox::Claimed;
use crate::send::prepare::Prepared;
use crate::tokens::{self, Purpose};
use crate::{uk_time, working_time};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

/// The kinds completed here.
const KINDS: [&str; 4] = [
    "enquiry",
    "enquiry_undeliverable",
    "enquiry_reminder",
    "enquiry_escalation",
];

/// The claim link for the copy the context names, if it names one.
fn claim_url(shared: &Shared, context: &Value) -> Value {
    match context.get("copy_id").and_then(Value::as_i64) {
        Some(id) => json!(tokens::link(
            &shared.settings,
            Purpose::Claim,
            id,
            Utc::now()
        )),
        None => Value::Null,
    }
}

/// Completes the enquiry emails; None for other kinds.
pub async fn prepare(shared: &Shared, row: &Claimed) -> anyhow::Result<Option<Prepared>> {
    if !KINDS.contains(&row.kind.as_str()) {
        return Ok(None);
    }
    let mut context = row.context.clone();
    // Rows queued before claiming existed have no deadline: the templates read it as absent.
    if context.get("claim_by").is_none() {
        context["claim_by"] = Value::Null;
    }
    let attachments = serde_json::from_value(row.attachments.clone())?;
    match row.kind.as_str() {
        "enquiry" => context["claim_url"] = claim_url(shared, &row.context),
        // The triage copy of a coordinator's copy that could not be delivered: the link named
        // that coordinator's mailbox, so it is not passed on.
        "enquiry_undeliverable" => context["claim_url"] = Value::Null,
        _ => {
            let enquiry_id = row
                .context
                .get("enquiry_id")
                .and_then(Value::as_str)
                .ok_or_else(|| anyhow::anyhow!("outbox row {}: no enquiry_id", row.id))?;
            type State = (Option<DateTime<Utc>>, Option<DateTime<Utc>>, DateTime<Utc>);
            let state: Option<State> = sqlx::query_as(
                "SELECT claimed_at, anonymised_at, received_at FROM enquiries WHERE enquiry_id = $1",
            )
            .bind(enquiry_id)
            .fetch_optional(&shared.pool)
            .await?;
            // Checked at send time: a claim made after this was queued stops it.
            let Some((claimed_at, anonymised_at, received_at)) = state else {
                return Ok(Some(Prepared::Skip("the enquiry is gone".into())));
            };
            if claimed_at.is_some() {
                return Ok(Some(Prepared::Skip("the enquiry has been claimed".into())));
            }
            if anonymised_at.is_some() {
                return Ok(Some(Prepared::Skip("the enquiry was erased".into())));
            }
            let wt = &shared.regions.working_time;
            let now = shared.clock.now();
            context["waited"] = json!(working_time::describe(
                wt.between(received_at, now),
                wt.day_length()
            ));
            context["waiting_since"] = json!(uk_time::date_time(received_at));
            context["claim_url"] = claim_url(shared, &row.context);
        }
    }
    Ok(Some(Prepared::Send {
        context,
        attachments,
    }))
}

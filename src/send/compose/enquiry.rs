//! Enquiry emails completed just before they are sent: each coordinator's copy gets its own
//! claim link (signed now, so it lasts from when it was sent); a reminder or an escalation about
//! an enquiry that has been claimed since it was queued is not sent at all.

use crate::config::working_time;
use crate::outbox::job::{Enquiry, Escalation};
use crate::outbox::{Attachment, Claimed};
use crate::send::prepare::Prepared;
use crate::send::Mailer;
use crate::tokens::Purpose;
use crate::uk_time;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};

/// An escalation as its templates see it: the job, and whether it is the second notice
/// (derived from its level, not stored).
#[derive(Serialize)]
pub struct EscalationShown<'a> {
    #[serde(flatten)]
    escalation: &'a Escalation,
    second: bool,
}

impl<'a> EscalationShown<'a> {
    pub fn of(escalation: &'a Escalation) -> Self {
        EscalationShown {
            escalation,
            second: escalation.level >= 2,
        }
    }
}

/// The claim link for the copy `enquiry` is, if it is one with a link.
fn claim_url(mailer: &Mailer, enquiry: &Enquiry) -> Value {
    match enquiry.copy_id {
        Some(id) => json!(mailer.links.link(Purpose::Claim, id, Utc::now())),
        None => Value::Null,
    }
}

fn send(context: Value, row: &Claimed) -> anyhow::Result<Prepared> {
    let attachments: Vec<Attachment> = serde_json::from_value(row.attachments.clone())?;
    Ok(Prepared::Send {
        context,
        attachments,
    })
}

/// A coordinator's copy (`enquiry`) or the triage copy of one that failed (whose `enquiry` has
/// no copy: the failed copy's link named the mailbox that failed, so it is not passed on).
pub fn copy(
    mailer: &Mailer,
    row: &Claimed,
    enquiry: &Enquiry,
    content: &impl Serialize,
) -> anyhow::Result<Prepared> {
    let mut context = serde_json::to_value(content)?;
    context["claim_url"] = claim_url(mailer, enquiry);
    send(context, row)
}

/// A reminder or an escalation of an unclaimed enquiry (`enquiry`, shown as `content`): skipped
/// if the enquiry has been claimed or erased since it was queued (checked now, at send time);
/// else with how long it has waited, in working time, and its own claim link.
pub async fn waiting(
    mailer: &Mailer,
    row: &Claimed,
    enquiry: &Enquiry,
    content: &impl Serialize,
) -> anyhow::Result<Prepared> {
    type State = (Option<DateTime<Utc>>, Option<DateTime<Utc>>, DateTime<Utc>);
    let state: Option<State> = sqlx::query_as(
        "SELECT claimed_at, anonymised_at, received_at FROM enquiries WHERE enquiry_id = $1",
    )
    .bind(&enquiry.enquiry_id)
    .fetch_optional(&mailer.pool)
    .await?;
    let Some((claimed_at, anonymised_at, received_at)) = state else {
        return Ok(Prepared::Skip("the enquiry is gone".into()));
    };
    if claimed_at.is_some() {
        return Ok(Prepared::Skip("the enquiry has been claimed".into()));
    }
    if anonymised_at.is_some() {
        return Ok(Prepared::Skip("the enquiry was erased".into()));
    }
    let wt = &mailer.regions.working_time;
    let now = mailer.clock.now();
    let mut context = serde_json::to_value(content)?;
    context["waited"] = json!(working_time::describe(
        wt.between(received_at, now),
        wt.day_length()
    ));
    context["waiting_since"] = json!(uk_time::date_time(received_at));
    context["claim_url"] = claim_url(mailer, enquiry);
    send(context, row)
}

//! Escalating unclaimed enquiries. At its first deadline an enquiry nobody has claimed goes to
//! the national coordinators and the triage mailbox ("UNCLAIMED: ..."), and its region's
//! coordinators are reminded; at the second, the national coordinators get a second notice.
//!
//! Due enquiries are taken with `FOR UPDATE SKIP LOCKED` and their `escalation_level` raised in
//! the transaction that queues the emails, so each level is queued once, by one worker, and a
//! worker that dies mid-way leaves it for the next. Whether the enquiry has been claimed since is
//! checked again when each email is sent (`send::compose::enquiry`).

use super::Scheduler;
use crate::domain::EmailAddress;
use crate::outbox::job::{Enquiry, Escalation};
use crate::outbox::{enqueue, Job, NewEmail};
use crate::state::enquiry::{
    new_copy, urgent_headers, StoredEnquiry, STORED_COLUMNS, URGENT_PRIORITY,
};

/// Enquiries escalated per transaction.
const BATCH: i64 = 100;

#[derive(sqlx::FromRow)]
struct Due {
    #[sqlx(flatten)]
    enquiry: StoredEnquiry,
    escalation_level: i16,
}

/// Escalates every enquiry whose next deadline has passed, as of `scheduler.clock`; returns how
/// many escalations were queued.
pub async fn hand_over_due(scheduler: &Scheduler) -> anyhow::Result<usize> {
    let mut total = 0;
    loop {
        let n = hand_over_batch(scheduler).await?;
        total += n;
        if (n as i64) < BATCH {
            return Ok(total);
        }
    }
}

async fn hand_over_batch(scheduler: &Scheduler) -> anyhow::Result<usize> {
    let now = scheduler.clock.now();
    let mut tx = scheduler.pool.begin().await?;
    let due: Vec<Due> = sqlx::query_as(&format!(
        "SELECT {STORED_COLUMNS}, escalation_level FROM enquiries
         WHERE claimed_at IS NULL AND escalation_level < 2 AND anonymised_at IS NULL
           AND claim_deadline_at <= $1
           AND (escalation_level = 0 OR second_notice_at <= $1)
         ORDER BY claim_deadline_at
         LIMIT $2
         FOR UPDATE SKIP LOCKED"
    ))
    .bind(now)
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await?;
    let n = due.len();
    for d in due {
        let level = d.escalation_level + 1;
        let e = &d.enquiry;
        match e.view(&scheduler.regions) {
            Some(view) => {
                queue(&mut tx, scheduler, e, level, view, now).await?;
                tracing::info!(enquiry_id = %e.enquiry_id, level, "unclaimed enquiry escalated");
            }
            // Nothing left to show (erased meanwhile): the level is raised all the same.
            None => {
                tracing::info!(enquiry_id = %e.enquiry_id, level, "unclaimed enquiry holds no details: not escalated")
            }
        }
        sqlx::query("UPDATE enquiries SET escalation_level = $2 WHERE enquiry_id = $1")
            .bind(&e.enquiry_id)
            .bind(level)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(n)
}

/// The emails of one escalation level.
async fn queue(
    tx: &mut sqlx::PgConnection,
    scheduler: &Scheduler,
    e: &StoredEnquiry,
    level: i16,
    enquiry: Enquiry,
    now: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<()> {
    let regions = &scheduler.regions;
    let reply_to = e.email.as_deref().and_then(|a| EmailAddress::parse(a).ok());
    let finish = |mut email: NewEmail| {
        email.reply_to = reply_to.clone();
        if e.urgent {
            email.priority = URGENT_PRIORITY;
            email.headers = urgent_headers();
        } else {
            // Ahead of bulk mail, behind urgent enquiries.
            email.priority = 5;
        }
        email
    };
    // Level 1: the national coordinators and triage; level 2: the national coordinators.
    let mut to: Vec<EmailAddress> = regions.national.coordinators.clone();
    if level == 1 {
        for t in &regions.triage {
            if !to
                .iter()
                .any(|a| a.as_str().eq_ignore_ascii_case(t.as_str()))
            {
                to.push(t.clone());
            }
        }
    }
    let mailboxes: Vec<&str> = to.iter().map(EmailAddress::as_str).collect();
    let copy_id = new_copy(tx, &e.enquiry_id, &mailboxes.join(", "), "escalation", now).await?;
    let escalation = Job::EnquiryEscalation(Escalation {
        enquiry: Enquiry {
            copy_id: Some(copy_id),
            ..enquiry.clone()
        },
        level,
    });
    enqueue(tx, &finish(NewEmail::new(escalation, to))).await?;
    // The region's coordinators are reminded with the first escalation, each with their own
    // claim link. An enquiry no region took is the triage mailbox's, which has it already.
    if let (1, Some(region)) = (level, e.region_id()) {
        for mailbox in &regions.region(region).coordinators {
            let copy_id = new_copy(tx, &e.enquiry_id, mailbox.as_str(), "reminder", now).await?;
            let reminder = Job::EnquiryReminder(Enquiry {
                copy_id: Some(copy_id),
                ..enquiry.clone()
            });
            enqueue(tx, &finish(NewEmail::new(reminder, vec![mailbox.clone()]))).await?;
        }
    }
    Ok(())
}

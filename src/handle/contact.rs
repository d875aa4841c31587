//! `contact.submitted`: route the enquiry to its region's coordinators (or triage), and
//! acknowledge it to the person who wrote, with the page's safety advice.

use super::subscription::{self, Requested};
use super::{Failure, Handlers};
use crate::config::{Regions, Routing};
use crate::domain::{ContactSubmitted, EmailAddress, Envelope, RegionId, Setting, Topic};
use crate::outbox::job::{Acknowledgement, Enquiry};
use crate::outbox::{enqueue_many, Job, NewEmail};
use crate::state::enquiry::{new_copy, routing_note, urgent_headers, URGENT_PRIORITY};
use crate::uk_time;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;

/// The coordinators' copy (with no copy id yet) and the acknowledgement.
fn jobs(
    shared_region_name: Option<&str>,
    routing: Routing,
    c: &ContactSubmitted,
    received: DateTime<Utc>,
    claim_by: Option<DateTime<Utc>>,
    subscription: Option<Requested>,
) -> (Enquiry, Acknowledgement) {
    let coordinator = Enquiry {
        enquiry_id: c.enquiry_id.clone(),
        urgent: c.topic.is_urgent(),
        received: uk_time::date_time(received),
        topic: c.topic.as_str().to_owned(),
        topic_label: c.topic.label().to_owned(),
        setting_label: c.setting.label().to_owned(),
        name: c.name.clone(),
        email: c.email.as_str().to_owned(),
        organisation: c.organisation.clone(),
        phone: c.phone.clone(),
        area: c.area.clone(),
        message: c.message.clone(),
        region_name: shared_region_name.map(str::to_owned),
        routing_note: routing_note(routing, shared_region_name, c.area.as_deref()),
        claim_by: claim_by.map(uk_time::date_time),
        copy_id: None,
    };
    let ack = Acknowledgement {
        enquiry_id: c.enquiry_id.clone(),
        name: c.name.clone(),
        topic_label: c.topic.label().to_owned(),
        urgent: c.topic.is_urgent(),
        region_name: shared_region_name.map(str::to_owned),
        expect_reply_by: claim_by.map(uk_time::date_time),
        newsletter: subscription.is_some(),
        newsletter_confirmed: subscription == Some(Requested::AlreadyConfirmed),
        newsletter_recent: subscription == Some(Requested::RecentlySent),
    };
    (coordinator, ack)
}

/// A job's content as its template sees it (`check` renders every template with these).
fn context(content: &impl serde::Serialize) -> Value {
    serde_json::to_value(content).unwrap_or_default()
}

/// The first deadline and the second notice for an enquiry received at `received`: working
/// time by the region's (or triage's) rules for its topic.
pub(crate) fn deadlines(
    regions: &Regions,
    region: Option<RegionId>,
    topic: Topic,
    received: DateTime<Utc>,
) -> (DateTime<Utc>, DateTime<Utc>) {
    let rules = regions.claims(region);
    let wt = &regions.working_time;
    let first = wt.add_offset(received, rules.deadline(topic));
    (first, wt.add_offset(first, rules.second_notice))
}

pub(super) async fn handle(
    tx: &mut PgConnection,
    handlers: &Handlers,
    envelope: &Envelope,
    c: &ContactSubmitted,
) -> Result<(), Failure> {
    let regions = &handlers.regions;
    let routing = regions.route(c.region, c.area.as_deref());
    let region_name = routing.region().map(|r| regions.region(r).name.as_str());
    let now = handlers.clock.now();
    // The deadlines count from the enquiry's arrival, as its retention does (by the worker's
    // clock, not the publisher's `occurred_at`, which another machine's clock wrote).
    let (claim_by, second_notice) = deadlines(regions, routing.region(), c.topic, now);

    // The enquiry id is the website's: a second event for the same enquiry changes nothing.
    let inserted = sqlx::query(
        "INSERT INTO enquiries (enquiry_id, event_id, region, routed_by, topic, setting, urgent,
                                name, email, organisation, phone, area, message, received_at,
                                claim_deadline_at, second_notice_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
         ON CONFLICT (enquiry_id) DO NOTHING",
    )
    .bind(&c.enquiry_id)
    .bind(envelope.id)
    .bind(routing.region().map(RegionId::as_str))
    .bind(routing.as_str())
    .bind(c.topic.as_str())
    .bind(c.setting.as_str())
    .bind(c.topic.is_urgent())
    .bind(&c.name)
    .bind(c.email.as_str())
    .bind(&c.organisation)
    .bind(&c.phone)
    .bind(&c.area)
    .bind(&c.message)
    // Retention counts from when the enquiry reached us.
    .bind(now)
    .bind(claim_by)
    .bind(second_notice)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        tracing::info!(event_id = %envelope.id, enquiry_id = %c.enquiry_id, "enquiry already recorded under another event: nothing sent");
        return Ok(());
    }

    // A newsletter enquiry starts the same double opt-in as subscription.requested, for the
    // region that answers (without a region there is no newsletter to subscribe to; the
    // coordinators who triage it can follow up).
    let subscription = match (c.topic, routing.region()) {
        (Topic::Newsletter, Some(region)) => Some(
            subscription::request(
                tx,
                handlers,
                envelope.id,
                &c.email,
                Some(&c.name),
                &[region],
            )
            .await?,
        ),
        _ => None,
    };
    let (coordinator_copy, ack_copy) = jobs(
        region_name,
        routing,
        c,
        envelope.occurred_at,
        Some(claim_by),
        subscription,
    );
    let mailboxes = regions.mailboxes(routing).to_vec();

    // Each mailbox gets its own copy, with its own claim link: a claim records who took it.
    // The copies and the acknowledgement are queued in one statement.
    let mut emails = Vec::with_capacity(mailboxes.len() + 1);
    for mailbox in &mailboxes {
        let copy_id = new_copy(tx, &c.enquiry_id, mailbox.as_str(), "enquiry", now).await?;
        let copy = Enquiry {
            copy_id: Some(copy_id),
            ..coordinator_copy.clone()
        };
        let mut to_coordinator = NewEmail::new(Job::Enquiry(copy), vec![mailbox.clone()]);
        to_coordinator.reply_to = Some(c.email.clone());
        to_coordinator.source_event = Some(envelope.id);
        if c.topic.is_urgent() {
            to_coordinator.priority = URGENT_PRIORITY;
            to_coordinator.headers = urgent_headers();
        }
        emails.push(to_coordinator);
    }

    let mut ack = NewEmail::new(Job::EnquiryAck(ack_copy), vec![c.email.clone()]);
    // A reply to the acknowledgement reaches the people who will answer.
    ack.reply_to = mailboxes.first().cloned();
    ack.source_event = Some(envelope.id);
    if c.topic.is_urgent() {
        ack.priority = URGENT_PRIORITY;
    }
    emails.push(ack);
    enqueue_many(tx, &emails).await?;

    tracing::info!(
        event_id = %envelope.id,
        enquiry_id = %c.enquiry_id,
        topic = c.topic.as_str(),
        routed_by = routing.as_str(),
        region = routing.region().map_or("triage", RegionId::as_str),
        "enquiry routed"
    );
    Ok(())
}

pub(super) fn samples() -> Vec<(&'static str, Value)> {
    let email = EmailAddress::parse("sam.okafor@school.example.org").expect("a valid address");
    let full = ContactSubmitted {
        enquiry_id: "enq-2024-000187".into(),
        name: "Sam Okafor".into(),
        email: email.clone(),
        organisation: "Riverside Academy".into(),
        setting: Setting::School,
        topic: Topic::ComplexCase,
        message: "We would like advice on a learner.\nThe DSL has spoken to the family.".into(),
        phone: Some("01228 000000".into()),
        region: None,
        area: Some("Cumbria".into()),
    };
    let sparse = ContactSubmitted {
        phone: None,
        area: None,
        topic: Topic::Newsletter,
        ..full.clone()
    };
    let received = DateTime::parse_from_rfc3339("2024-10-03T10:15:00Z")
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default();
    let north_west = Routing::Area(RegionId::NorthWest);
    let claim_by = Some(received + chrono::Duration::hours(2));
    let (c1, a1) = jobs(
        Some("North-West"),
        north_west,
        &full,
        received,
        claim_by,
        None,
    );
    let (c2, a2) = jobs(None, Routing::Triage, &sparse, received, None, None);
    let (mut c1, a1, mut c2, a2) = (context(&c1), context(&a1), context(&c2), context(&a2));
    // The claim link is added at send time (send::compose::enquiry).
    c1["claim_url"] = "http://127.0.0.1:8080/enquiries/claim?token=AQMAAAAAAAAAKgAAAABnCmOg".into();
    c2["claim_url"] = Value::Null;
    // The triage copy of a coordinators' copy that could not be delivered (send).
    let undeliverable = |mut c: Value| {
        c["undeliverable"] = serde_json::json!({
            "region_name": "North-West",
            "reason": "permanent error (550): 5.1.1 <rpec.north-west@example.org>: no such mailbox",
        });
        c
    };
    // Reminders and escalations: the coordinators' view plus what compose adds at send time.
    let waiting = |mut c: Value, level: i64| {
        c["waited"] = "2 working hours".into();
        c["waiting_since"] = "Thursday 3 October 2024, 11:15am".into();
        c["level"] = level.into();
        c["second"] = (level == 2).into();
        c
    };
    let mut samples = vec![
        ("enquiry_reminder", waiting(c1.clone(), 1)),
        ("enquiry_escalation", waiting(c1.clone(), 1)),
        ("enquiry_escalation", waiting(c1.clone(), 2)),
        ("enquiry_escalation", waiting(c2.clone(), 1)),
        ("enquiry_undeliverable", undeliverable(c1.clone())),
        ("enquiry_undeliverable", undeliverable(c2.clone())),
        ("enquiry_coordinator", c1),
        ("enquiry_coordinator", c2),
        ("enquiry_ack", a1),
        ("enquiry_ack", a2),
    ];
    for outcome in [
        Requested::ConfirmationSent,
        Requested::RecentlySent,
        Requested::AlreadyConfirmed,
    ] {
        let (_, ack) = jobs(
            Some("North-West"),
            north_west,
            &sparse,
            received,
            claim_by,
            Some(outcome),
        );
        samples.push(("enquiry_ack", context(&ack)));
    }
    samples
}

//! `contact.submitted`: route the enquiry to its region's coordinators (or triage), and
//! acknowledge it to the person who wrote, with the page's safety advice.

use super::subscription::{self, Requested};
use super::{Failure, Handlers};
use crate::config::Routing;
use crate::domain::{ContactSubmitted, EmailAddress, Envelope, RegionId, Setting, Topic};
use crate::outbox::job::{Acknowledgement, Enquiry};
use crate::outbox::{enqueue, Job, NewEmail};
use crate::uk_time;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;

/// Urgent enquiries are sent before anything else waiting.
const URGENT_PRIORITY: i16 = 10;

fn routing_note(routing: Routing, region_name: Option<&str>, area: Option<&str>) -> String {
    match (routing, region_name) {
        (Routing::Region(_), Some(name)) => format!("The enquirer chose the {name} region."),
        (Routing::Area(_), Some(name)) => format!(
            "The area the enquirer gave ({}) is in the {name} region.",
            area.unwrap_or_default()
        ),
        _ => match area {
            Some(a) => format!(
                "The area the enquirer gave ({a}) matches no region: please pass this enquiry to the right coordinator."
            ),
            None => "The enquirer gave no region or area: please pass this enquiry to the right coordinator.".into(),
        },
    }
}

/// The coordinators' copy and the acknowledgement.
fn jobs(
    shared_region_name: Option<&str>,
    routing: Routing,
    c: &ContactSubmitted,
    received: DateTime<Utc>,
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
    };
    let ack = Acknowledgement {
        enquiry_id: c.enquiry_id.clone(),
        name: c.name.clone(),
        topic_label: c.topic.label().to_owned(),
        urgent: c.topic.is_urgent(),
        region_name: shared_region_name.map(str::to_owned),
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

pub(super) async fn handle(
    tx: &mut PgConnection,
    handlers: &Handlers,
    envelope: &Envelope,
    c: &ContactSubmitted,
) -> Result<(), Failure> {
    let regions = &handlers.regions;
    let routing = regions.route(c.region, c.area.as_deref());
    let region_name = routing.region().map(|r| regions.region(r).name.as_str());

    // The enquiry id is the website's: a second event for the same enquiry changes nothing.
    let inserted = sqlx::query(
        "INSERT INTO enquiries (enquiry_id, event_id, region, routed_by, topic, setting, urgent,
                                name, email, organisation, phone, area, message, received_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
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
    .bind(handlers.clock.now())
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
    let (coordinator_copy, ack_copy) =
        jobs(region_name, routing, c, envelope.occurred_at, subscription);
    let mailboxes = regions.mailboxes(routing).to_vec();

    let mut to_coordinators = NewEmail::new(Job::Enquiry(coordinator_copy), mailboxes.clone());
    to_coordinators.reply_to = Some(c.email.clone());
    to_coordinators.source_event = Some(envelope.id);
    if c.topic.is_urgent() {
        to_coordinators.priority = URGENT_PRIORITY;
        to_coordinators.headers = vec![("Importance", "high".into()), ("X-Priority", "1".into())];
    }
    enqueue(tx, &to_coordinators).await?;

    let mut ack = NewEmail::new(Job::EnquiryAck(ack_copy), vec![c.email.clone()]);
    // A reply to the acknowledgement reaches the people who will answer.
    ack.reply_to = mailboxes.first().cloned();
    ack.source_event = Some(envelope.id);
    if c.topic.is_urgent() {
        ack.priority = URGENT_PRIORITY;
    }
    enqueue(tx, &ack).await?;

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
    let (c1, a1) = jobs(Some("North-West"), north_west, &full, received, None);
    let (c2, a2) = jobs(None, Routing::Triage, &sparse, received, None);
    let (c1, a1, c2, a2) = (context(&c1), context(&a1), context(&c2), context(&a2));
    // The triage copy of a coordinators' copy that could not be delivered (send).
    let undeliverable = |mut c: Value| {
        c["undeliverable"] = serde_json::json!({
            "region_name": "North-West",
            "reason": "permanent error (550): 5.1.1 <rpec.north-west@example.org>: no such mailbox",
        });
        c
    };
    let mut samples = vec![
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
            Some(outcome),
        );
        samples.push(("enquiry_ack", context(&ack)));
    }
    samples
}

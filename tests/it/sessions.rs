//! Training sessions: registrations, reminders at the right instants across clock changes,
//! moves, cancellations, out-of-order events, several workers, briefings and calendar files.

use crate::helpers::*;
use chrono::{DateTime, Duration, Utc};
use chrono_tz::Europe::London;
use serde_json::json;
use std::collections::HashMap;

fn due(app_planned: &[Planned], kind: &str, offset: &str) -> DateTime<Utc> {
    app_planned
        .iter()
        .find(|p| p.0 == kind && p.2 == offset)
        .unwrap_or_else(|| panic!("a {kind} at {offset} in {app_planned:?}"))
        .3
}

/// The status of a session's planned `kind` at `offset` (each registrant's, when several).
fn statuses(app_planned: &[Planned], kind: &str, offset: &str) -> Vec<String> {
    app_planned
        .iter()
        .filter(|p| p.0 == kind && p.2 == offset)
        .map(|p| p.4.clone())
        .collect()
}

/// The calendar entry's start, parsed with a strict iCalendar parser.
fn calendar_start(text: &str) -> (String, Option<u32>, String, DateTime<Utc>) {
    use icalendar::Component;
    let calendar: icalendar::Calendar = text.parse().expect("a calendar that parses");
    let method = calendar
        .property_value("METHOD")
        .unwrap_or_default()
        .to_owned();
    let event = calendar.events().next().expect("one event").clone();
    let start = match event.get_start() {
        Some(icalendar::DatePerhapsTime::DateTime(icalendar::CalendarDateTime::Utc(t))) => t,
        other => panic!("a UTC start, not {other:?}"),
    };
    (
        method,
        event.get_sequence(),
        event.get_uid().unwrap_or_default().to_owned(),
        start,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_twelve_2024_25_sessions_plan_reminders_at_the_right_utc_instants() {
    let app = spawn_app_with(Options::at("2024-09-01T00:00:00Z")).await;
    let sessions = example("sessions-2024-2025.json");
    let sessions = sessions.as_array().unwrap();
    assert_eq!(sessions.len(), 12);
    for s in sessions {
        app.publish(s).await;
    }
    app.handled(12).await;
    for s in sessions {
        let id = s["data"]["session_id"].as_str().unwrap();
        app.publish(&registration_event(
            &format!("reg-{id}"),
            id,
            &format!("{id}@school.example.org"),
        ))
        .await;
    }
    app.handled(24).await;

    let mut starts = HashMap::new();
    for s in sessions {
        let id = s["data"]["session_id"].as_str().unwrap();
        let start = utc(s["data"]["starts_at"].as_str().unwrap());
        starts.insert(id.to_owned(), start);
        let planned = app.planned(id).await;
        assert_eq!(
            planned.len(),
            4,
            "{id}: 3 reminders and a briefing: {planned:?}"
        );
        assert_eq!(
            due(&planned, "reminder", "1h"),
            start - Duration::hours(1),
            "{id}"
        );
        let wall = |t: DateTime<Utc>| t.with_timezone(&London).format("%H:%M").to_string();
        for (offset, days) in [("1d", 1), ("7d", 7)] {
            let d = due(&planned, "reminder", offset);
            assert_eq!(
                wall(d),
                wall(start),
                "{id} {offset}: same UK wall-clock time"
            );
            assert_eq!(
                d.with_timezone(&London).date_naive(),
                start.with_timezone(&London).date_naive() - Duration::days(days),
                "{id} {offset}"
            );
        }
        assert_eq!(
            due(&planned, "briefing", "1d"),
            due(&planned, "reminder", "1d")
        );
    }
    // The instants the issue names, and a few more by hand.
    let planned = app.planned("dsl-2024-10-02").await;
    assert_eq!(due(&planned, "reminder", "1h"), utc("2024-10-02T13:30:00Z"));
    assert_eq!(due(&planned, "reminder", "1d"), utc("2024-10-01T14:30:00Z"));
    assert_eq!(due(&planned, "reminder", "7d"), utc("2024-09-25T14:30:00Z"));
    let planned = app.planned("dsl-2024-11-25").await;
    assert_eq!(due(&planned, "reminder", "1h"), utc("2024-11-25T14:30:00Z"));
    assert_eq!(due(&planned, "reminder", "7d"), utc("2024-11-18T15:30:00Z"));
    let planned = app.planned("gov-2024-11-07").await;
    assert_eq!(due(&planned, "reminder", "7d"), utc("2024-10-31T12:00:00Z"));
    let planned = app.planned("gov-2024-10-17").await;
    assert_eq!(due(&planned, "reminder", "7d"), utc("2024-10-10T18:00:00Z"));

    // Twelve confirmations, each with a calendar file at the session's time.
    let confirmations = app.exactly("You are registered", 12).await;
    for m in &confirmations {
        let id = m.envelope_to[0].split('@').next().unwrap().to_owned();
        let (method, sequence, uid, start) =
            calendar_start(&m.calendar().expect("a calendar file"));
        assert_eq!(method, "REQUEST");
        assert_eq!(sequence, Some(0));
        assert_eq!(uid, format!("session-{id}@rpec-notify.education.gov.uk"));
        assert_eq!(start, starts[&id], "{id}");
        assert!(m.text().contains(&rpec_notify::uk_time::range(
            starts[&id],
            starts[&id] + Duration::hours(1)
        )));
    }
    let dsl = confirmations
        .iter()
        .find(|m| m.envelope_to[0].starts_with("dsl-2024-10-02"))
        .unwrap();
    assert!(
        dsl.text()
            .contains("Wednesday 2 October 2024, 3:30pm to 4:30pm"),
        "{}",
        dsl.text()
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn day_offsets_across_both_clock_changes_keep_the_wall_clock_time() {
    let app = spawn_app_with(Options::at("2024-10-01T00:00:00Z")).await;
    let cases = [
        // After the autumn change (27 Oct 2024): 3:30pm GMT; a week before is 3:30pm BST.
        (
            "autumn-week",
            "2024-10-30T15:30:00Z",
            "7d",
            "2024-10-23T14:30:00Z",
        ),
        (
            "autumn-day",
            "2024-10-27T15:00:00Z",
            "1d",
            "2024-10-26T14:00:00Z",
        ),
        // After the spring change (30 Mar 2025): 4pm BST; a week before is 4pm GMT.
        (
            "spring-week",
            "2025-04-02T16:00:00+01:00",
            "7d",
            "2025-03-26T16:00:00Z",
        ),
        (
            "spring-day",
            "2025-03-30T15:00:00+01:00",
            "1d",
            "2025-03-29T15:00:00Z",
        ),
    ];
    for (id, start, _, _) in cases {
        let end = (utc(start) + Duration::hours(1)).to_rfc3339();
        app.publish(&session_event(
            "session.scheduled",
            id,
            start,
            &end,
            Some("london"),
        ))
        .await;
        app.publish(&registration_event(
            &format!("r-{id}"),
            id,
            "jo@school.example.org",
        ))
        .await;
    }
    app.handled(8).await;
    for (id, start, offset, expected) in cases {
        let planned = app.planned(id).await;
        assert_eq!(due(&planned, "reminder", offset), utc(expected), "{id}");
        assert_eq!(
            due(&planned, "reminder", "1h"),
            utc(start) - Duration::hours(1),
            "{id}: hours are exact"
        );
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_two_days_before_gets_the_day_and_hour_reminders_on_time_and_not_the_week_one()
{
    let app = spawn_app_with(Options::at("2024-11-23T15:30:00Z")).await;
    app.publish(&session_event(
        "session.scheduled",
        "dsl-2024-11-25",
        "2024-11-25T15:30:00+00:00",
        "2024-11-25T16:30:00+00:00",
        None,
    ))
    .await;
    app.publish(&registration_event(
        "reg-1",
        "dsl-2024-11-25",
        "jo@school.example.org",
    ))
    .await;
    app.handled(2).await;
    let offsets: Vec<String> = app
        .planned("dsl-2024-11-25")
        .await
        .into_iter()
        .filter(|p| p.0 == "reminder")
        .map(|p| p.2)
        .collect();
    assert_eq!(offsets, ["1d", "1h"]);
    app.exactly("You are registered", 1).await;

    app.set_time("2024-11-24T15:29:59Z");
    app.exactly("Reminder:", 0).await;
    // A second early: still planned, and nothing handed to the outbox.
    let planned = app.planned("dsl-2024-11-25").await;
    assert_eq!(statuses(&planned, "reminder", "1d"), ["pending"]);
    assert!(app.outbox_of("session_reminder").await.is_empty());
    app.set_time("2024-11-24T15:30:00Z");
    let first = app.exactly("Reminder:", 1).await;
    assert!(
        first[0].subject().ends_with("starts tomorrow"),
        "{}",
        first[0].subject()
    );
    app.set_time("2024-11-25T14:30:00Z");
    let both = app.exactly("Reminder:", 2).await;
    assert!(both
        .iter()
        .any(|m| m.subject().ends_with("starts in 1 hour")));
    assert!(both
        .iter()
        .all(|m| m.envelope_to == ["jo@school.example.org"]));
    assert!(both[1]
        .text()
        .contains("Monday 25 November 2024, 3:30pm to 4:30pm"));
    assert!(both[1]
        .text()
        .contains("https://teams.example.org/join/dsl-2024-11-25"));
    app.set_time("2024-11-25T17:00:00Z");
    app.exactly("Reminder:", 2).await;
    assert_eq!(app.outbox_of("session_reminder").await, ["sent:2"]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_a_session_moves_its_reminders_and_sends_one_moved_email_with_a_newer_calendar_entry(
) {
    let app = spawn_app_with(Options::at("2024-10-01T00:00:00Z")).await;
    app.publish(&session_event(
        "session.scheduled",
        "s-move",
        "2024-10-10T15:00:00+01:00",
        "2024-10-10T16:00:00+01:00",
        Some("north-west"),
    ))
    .await;
    app.publish(&registration_event("m1", "s-move", "m1@school.example.org"))
        .await;
    app.publish(&registration_event("m2", "s-move", "m2@school.example.org"))
        .await;
    app.handled(3).await;
    app.exactly("You are registered", 2).await;

    let mut moved = session_event(
        "session.updated",
        "s-move",
        "2024-10-11T15:00:00+01:00",
        "2024-10-11T16:00:00+01:00",
        Some("north-west"),
    );
    moved["occurred_at"] = json!((Utc::now() + Duration::seconds(1)).to_rfc3339());
    app.publish(&moved).await;
    app.handled(4).await;
    let planned = app.planned("s-move").await;
    assert_eq!(planned.iter().filter(|p| p.0 == "reminder").count(), 6);
    assert!(planned.iter().all(|p| p.4 == "pending"));
    assert_eq!(due(&planned, "reminder", "1h"), utc("2024-10-11T13:00:00Z"));
    assert_eq!(due(&planned, "briefing", "1d"), utc("2024-10-10T14:00:00Z"));

    let moved_mails = app.exactly("Session moved", 2).await;
    for m in &moved_mails {
        assert!(
            m.text()
                .contains("Was:            Thursday 10 October 2024, 3:00pm to 4:00pm"),
            "{}",
            m.text()
        );
        assert!(m
            .text()
            .contains("Now:            Friday 11 October 2024, 3:00pm to 4:00pm"));
        let (method, sequence, _, start) = calendar_start(&m.calendar().unwrap());
        assert_eq!(
            (method.as_str(), sequence, start),
            ("REQUEST", Some(1), utc("2024-10-11T14:00:00Z"))
        );
    }
    // The old 1-hour point passes: nothing (the week reminder, six days late, is dropped).
    app.set_time("2024-10-10T13:00:00Z");
    app.exactly("Reminder:", 0).await;
    let planned = app.planned("s-move").await;
    assert_eq!(statuses(&planned, "reminder", "7d"), ["dropped", "dropped"]);
    assert_eq!(statuses(&planned, "reminder", "1d"), ["pending", "pending"]);
    assert_eq!(statuses(&planned, "reminder", "1h"), ["pending", "pending"]);
    assert!(app.outbox_of("session_reminder").await.is_empty());
    // The new one: each registrant is reminded once, of the new time.
    app.set_time("2024-10-11T13:00:00Z");
    let reminders = app.exactly("Reminder:", 2).await;
    assert!(
        reminders
            .iter()
            .all(|m| m.subject().ends_with("in 1 hour")
                && m.text().contains("Friday 11 October 2024"))
    );
    // An edit that changes neither time nor link is silent.
    let mut retitled = session_event(
        "session.updated",
        "s-move",
        "2024-10-11T15:00:00+01:00",
        "2024-10-11T16:00:00+01:00",
        Some("north-west"),
    );
    retitled["data"]["title"] = json!("A new title");
    retitled["occurred_at"] = json!((Utc::now() + Duration::seconds(2)).to_rfc3339());
    let before = app.outbox_len().await;
    app.publish(&retitled).await;
    app.handled(5).await;
    app.exactly("Session moved", 2).await;
    assert!(app.mails_starting("Joining link").is_empty());
    assert_eq!(
        app.outbox_len().await,
        before,
        "a new title alone queues no email: {:?}",
        app.outbox().await
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_joining_link_is_sent_to_registrants() {
    let app = spawn_app_with(Options::at("2024-10-01T00:00:00Z")).await;
    app.publish(&session_event(
        "session.scheduled",
        "s-link",
        "2024-10-10T15:00:00+01:00",
        "2024-10-10T16:00:00+01:00",
        None,
    ))
    .await;
    app.publish(&registration_event("l1", "s-link", "l1@school.example.org"))
        .await;
    app.handled(2).await;
    let mut update = session_event(
        "session.updated",
        "s-link",
        "2024-10-10T15:00:00+01:00",
        "2024-10-10T16:00:00+01:00",
        None,
    );
    update["data"]["joining_url"] = json!("https://teams.example.org/join/new-room");
    update["occurred_at"] = json!((Utc::now() + Duration::seconds(1)).to_rfc3339());
    app.publish(&update).await;
    let mails = app.exactly("Joining link", 1).await;
    assert!(mails[0]
        .text()
        .contains("https://teams.example.org/join/new-room"));
    assert_eq!(calendar_start(&mails[0].calendar().unwrap()).1, Some(1));
    app.exactly("Session moved", 0).await;
    assert!(app.outbox_of("session_moved").await.is_empty());
    assert_eq!(app.outbox_of("joining_link_changed").await, ["sent:1"]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_session_sends_one_cancellation_and_no_reminder_ever_after() {
    let app = spawn_app_with(Options::at("2024-12-01T09:00:00Z")).await;
    app.publish(&session_event(
        "session.scheduled",
        "dsl-2024-12-16",
        "2024-12-16T15:30:00+00:00",
        "2024-12-16T16:30:00+00:00",
        None,
    ))
    .await;
    app.publish(&registration_event(
        "c1",
        "dsl-2024-12-16",
        "c1@school.example.org",
    ))
    .await;
    app.publish(&registration_event(
        "c2",
        "dsl-2024-12-16",
        "c2@school.example.org",
    ))
    .await;
    app.handled(3).await;
    let cancel = example("session-cancelled.json");
    app.publish(&cancel).await;
    app.publish(&cancel).await; // delivered twice: still one cancellation each
    let cancellations = app.exactly("Cancelled:", 2).await;
    for m in &cancellations {
        assert!(m
            .text()
            .contains("Trainer unavailable; please book another date."));
        let (method, sequence, uid, _) = calendar_start(&m.calendar().unwrap());
        assert_eq!((method.as_str(), sequence), ("CANCEL", Some(1)));
        assert_eq!(uid, "session-dsl-2024-12-16@rpec-notify.education.gov.uk");
    }
    let planned = app.planned("dsl-2024-12-16").await;
    assert_eq!(
        planned.len(),
        7,
        "three reminders each and a briefing: {planned:?}"
    );
    assert!(planned.iter().all(|p| p.4 == "dropped"), "{planned:?}");
    for t in [
        "2024-12-09T15:30:00Z",
        "2024-12-15T15:30:00Z",
        "2024-12-16T14:30:00Z",
    ] {
        app.set_time(t);
        app.exactly("Reminder:", 0).await;
    }
    app.exactly("Briefing:", 0).await;
    assert!(app.outbox_of("session_reminder").await.is_empty());
    assert!(app.outbox_of("coordinator_briefing").await.is_empty());
    let planned = app.planned("dsl-2024-12-16").await;
    assert!(planned.iter().all(|p| p.4 == "dropped"), "{planned:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_registration_stops_that_registrants_reminders() {
    let app = spawn_app_with(Options::at("2024-10-01T00:00:00Z")).await;
    app.publish(&session_event(
        "session.scheduled",
        "s-rc",
        "2024-10-10T15:00:00+01:00",
        "2024-10-10T16:00:00+01:00",
        None,
    ))
    .await;
    app.publish(&registration_event(
        "keep",
        "s-rc",
        "keep@school.example.org",
    ))
    .await;
    app.publish(&registration_event(
        "leave",
        "s-rc",
        "leave@school.example.org",
    ))
    .await;
    app.handled(3).await;
    app.publish(&simple_event(
        "registration.cancelled",
        json!({"registration_id": "leave"}),
    ))
    .await;
    app.handled(4).await;
    app.set_time("2024-10-10T13:00:00Z");
    let reminders = app.exactly("Reminder:", 1).await;
    assert_eq!(reminders[0].envelope_to, ["keep@school.example.org"]);
    // Nothing of the cancelled registrant's is left to send, and none reached the outbox.
    let left: Vec<Planned> = app
        .planned("s-rc")
        .await
        .into_iter()
        .filter(|p| p.1.as_deref() == Some("leave"))
        .collect();
    assert_eq!(left.len(), 3, "{left:?}");
    assert!(left.iter().all(|p| p.4 == "dropped"), "{left:?}");
    assert_eq!(app.outbox_of("session_reminder").await, ["sent:1"]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reminder_already_handed_over_is_not_sent_once_its_session_is_cancelled() {
    let smtp = SmtpServer::reserve();
    let app = spawn_app_with(Options {
        smtp: Some(smtp.clone()),
        ..Options::at("2024-10-01T00:00:00Z")
    })
    .await;
    app.publish(&session_event(
        "session.scheduled",
        "s-late",
        "2024-10-10T15:00:00+01:00",
        "2024-10-10T16:00:00+01:00",
        None,
    ))
    .await;
    app.publish(&registration_event("q1", "s-late", "q1@school.example.org"))
        .await;
    app.handled(2).await;
    app.set_time("2024-10-10T13:00:00Z");
    eventually(std::time::Duration::from_secs(20), "the reminder handed to the outbox", || async {
        app.strings("SELECT status FROM scheduled_emails WHERE kind = 'reminder' AND offset_label = '1h'").await.contains(&"queued".to_string()).then_some(())
    })
    .await;
    app.publish(&simple_event(
        "session.cancelled",
        json!({"session_id": "s-late"}),
    ))
    .await;
    app.handled(3).await;
    smtp.start();
    app.exactly("Cancelled:", 1).await;
    app.exactly("Reminder:", 0).await;
    app.exactly("You are registered", 0).await;
    let statuses = app
        .strings("SELECT kind || ':' || status FROM outbox ORDER BY id")
        .await;
    assert!(
        statuses.contains(&"session_reminder:cancelled".to_string()),
        "{statuses:?}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_before_its_session_waits_for_it() {
    let app = spawn_app_with(Options::at("2024-10-01T00:00:00Z")).await;
    app.publish(&registration_event(
        "early",
        "s-later",
        "early@school.example.org",
    ))
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    app.publish(&session_event(
        "session.scheduled",
        "s-later",
        "2024-10-10T15:00:00+01:00",
        "2024-10-10T16:00:00+01:00",
        None,
    ))
    .await;
    let confirmations = app.exactly("You are registered", 1).await;
    assert_eq!(confirmations[0].envelope_to, ["early@school.example.org"]);
    assert!(
        app.metric("rpec_events_retried_total{type=\"registration.created\"}")
            .await
            >= 1.0
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_whose_session_never_comes_is_dead_lettered_as_unknown_session() {
    let profile = FAST_TIMINGS.replace(
        "unknown_session_wait_secs = 30",
        "unknown_session_wait_secs = 2",
    );
    let app = spawn_app_with(Options {
        profile_toml: profile,
        ..Options::at("2024-10-01T00:00:00Z")
    })
    .await;
    let event = registration_event("orphan", "s-never", "orphan@school.example.org");
    app.publish(&event).await;
    let dead = app.dead_letters(1).await;
    assert_eq!(dead[0].error, "unknown_session");
    assert!(
        dead[0]
            .detail
            .starts_with("data.session_id: session \"s-never\" is not known"),
        "{}",
        dead[0].detail
    );
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&dead[0].body).unwrap(),
        event
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_send_each_reminder_exactly_once() {
    let mut app = spawn_app_with(Options::at("2024-10-01T00:00:00Z")).await;
    app.add_worker().await;
    app.publish(&session_event(
        "session.scheduled",
        "s-two",
        "2024-10-10T15:00:00+01:00",
        "2024-10-10T16:00:00+01:00",
        None,
    ))
    .await;
    for i in 0..30 {
        app.publish(&registration_event(
            &format!("two-{i}"),
            "s-two",
            &format!("two{i}@school.example.org"),
        ))
        .await;
    }
    app.handled(31).await;
    app.exactly("You are registered", 30).await;
    app.set_time("2024-10-10T13:00:00Z");
    let reminders = app.exactly("Reminder:", 30).await;
    let mut recipients: Vec<_> = reminders.iter().map(|m| m.envelope_to[0].clone()).collect();
    recipients.sort();
    recipients.dedup();
    assert_eq!(recipients.len(), 30);
    // Each handed-over reminder names the outbox row written for it (the scheduler writes a
    // whole batch in one statement): that row is its registration's, to its registrant.
    let links: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT e.registration_id, o.job ->> 'registration_id', r.email, o.recipients[1]
         FROM scheduled_emails e
         JOIN outbox o ON o.id = e.outbox_id
         JOIN registrations r ON r.registration_id = e.registration_id
         WHERE e.kind = 'reminder' AND e.status = 'queued'",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        links.len(),
        30,
        "every reminder handed over once, with its row"
    );
    for (planned_for, job_for, registrant, recipient) in &links {
        assert_eq!(planned_for, job_for);
        assert_eq!(registrant, recipient);
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinators_get_a_briefing_listing_current_registrants() {
    let app = spawn_app_with(Options::at("2024-10-01T00:00:00Z")).await;
    app.publish(&session_event(
        "session.scheduled",
        "s-brief",
        "2024-10-10T15:00:00+01:00",
        "2024-10-10T16:00:00+01:00",
        Some("north-west"),
    ))
    .await;
    for who in ["ada", "bo", "cy"] {
        app.publish(&registration_event(
            who,
            "s-brief",
            &format!("{who}@school.example.org"),
        ))
        .await;
    }
    app.handled(4).await;
    app.publish(&simple_event(
        "registration.cancelled",
        json!({"registration_id": "bo"}),
    ))
    .await;
    app.handled(5).await;
    app.set_time("2024-10-09T14:00:00Z");
    let briefing = app.exactly("Briefing:", 1).await;
    assert_eq!(briefing[0].envelope_to, ["rpec.north-west@example.org"]);
    assert!(
        briefing[0].subject().ends_with("(2 registered)"),
        "{}",
        briefing[0].subject()
    );
    let text = briefing[0].text();
    assert!(text.contains("ada@school.example.org") && text.contains("cy@school.example.org"));
    assert!(!text.contains("bo@school.example.org"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_downtime_reminders_for_a_session_that_has_started_are_dropped() {
    let app = spawn_app_with(Options::at("2024-10-01T00:00:00Z")).await;
    app.publish(&session_event(
        "session.scheduled",
        "s-down",
        "2024-10-10T15:00:00+01:00",
        "2024-10-10T16:00:00+01:00",
        None,
    ))
    .await;
    app.publish(&registration_event("d1", "s-down", "d1@school.example.org"))
        .await;
    app.handled(2).await;
    app.exactly("You are registered", 1).await;
    assert_eq!(
        app.planned("s-down").await.len(),
        4,
        "three reminders and a briefing"
    );
    app.set_time("2024-10-10T14:30:00Z");
    eventually(
        std::time::Duration::from_secs(20),
        "every plan dropped",
        || async {
            let planned = app.planned("s-down").await;
            (planned.len() == 4 && planned.iter().all(|p| p.4 == "dropped")).then_some(())
        },
    )
    .await;
    app.exactly("Reminder:", 0).await;
    app.exactly("Briefing:", 0).await;
    assert!(app.outbox_of("session_reminder").await.is_empty());
    assert!(app.outbox_of("coordinator_briefing").await.is_empty());
    app.stop().await;
}

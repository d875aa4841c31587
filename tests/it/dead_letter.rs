//! Messages that can never succeed go to the dead-letter queue at once with their reason;
//! passing failures are retried with back-off, then dead-lettered.

use crate::helpers::*;
use serde_json::json;
use sqlx::{Connection, PgConnection};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_are_dead_lettered_with_their_reason_and_the_worker_goes_on() {
    let app = spawn_app().await;
    let mut unknown_type = contact_event(json!({}));
    unknown_type["type"] = json!("contact.deleted");
    let mut version_2 = contact_event(json!({}));
    version_2["version"] = json!(2);
    let missing_field = contact_event(json!({"organisation": null}));
    let bad_address = contact_event(json!({"email": "not-an-address"}));
    let display_name = contact_event(json!({"email": "Sam <sam@example.org>"}));
    let too_large = contact_event(json!({"message": "x".repeat(300 * 1024)}));

    app.publish_raw("contact.submitted", b"{\"id\": oops").await;
    app.publish_raw(
        "contact.submitted",
        &serde_json::to_vec(&unknown_type).unwrap(),
    )
    .await;
    app.publish(&version_2).await;
    app.publish(&missing_field).await;
    app.publish(&bad_address).await;
    app.publish(&display_name).await;
    app.publish(&too_large).await;
    let valid = contact_event(json!({"region": "london"}));
    app.publish(&valid).await;

    let mut dead = app.dead_letters(7).await;
    dead.sort_by(|a, b| a.error.cmp(&b.error).then(a.detail.cmp(&b.detail)));
    let got: Vec<(&str, &str)> = dead
        .iter()
        .map(|d| (d.error.as_str(), d.detail.as_str()))
        .collect();
    assert_eq!(
        got[0],
        ("invalid_payload", "data.email: not an email address")
    );
    assert_eq!(
        got[1],
        ("invalid_payload", "data.email: not an email address")
    );
    assert_eq!(
        got[2],
        ("invalid_payload", "data.organisation: is required")
    );
    assert_eq!(got[3].0, "malformed_json");
    assert_eq!(got[4].0, "too_large");
    assert!(got[4].1.contains("the limit is 262144"), "{}", got[4].1);
    assert_eq!(got[5].0, "unknown_type");
    // The detail names the field and the rule, never the value that broke it.
    assert_eq!(got[5].1, "type: not an event this worker handles");
    assert_eq!(
        got[6],
        (
            "unsupported_version",
            "version: 2 is not supported (expected 1)"
        )
    );
    // The dead letter is the message as it came.
    assert!(dead.iter().any(|d| d.body == b"{\"id\": oops"));

    let mails = app.mails(2).await;
    assert!(mails
        .iter()
        .any(|m| m.envelope_to == ["rpec.london@example.org"]));
    assert_eq!(app.metric("rpec_events_dead_lettered_total{reason=\"invalid_payload\",type=\"contact.submitted\"}").await, 3.0);
    app.settle().await;
    assert_eq!(
        app.outbox().await.len(),
        2,
        "nothing was queued for the bad messages"
    );
    assert_eq!(
        app.smtp.received().len(),
        2,
        "nothing was sent for the bad messages"
    );
    app.stop().await;
}

/// Makes the test database refuse connections (and drops the ones it has): a real outage.
async fn database_outage(db_name: &str, down: bool) {
    let mut admin = PgConnection::connect(&database_admin_url()).await.unwrap();
    sqlx::query(&format!(
        "ALTER DATABASE \"{db_name}\" ALLOW_CONNECTIONS {}",
        !down
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    if down {
        sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()")
            .bind(db_name)
            .execute(&mut admin)
            .await
            .unwrap();
    }
}

/// An outage of PostgreSQL is not the events' fault: arriving in it, they are held (no attempt
/// counted, nothing dead-lettered) for far longer than the retry budget would last, and every one
/// goes out once the database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_holds_events_without_counting_attempts_and_loses_none() {
    let app = spawn_app().await;
    database_outage(&app.db_name, true).await;
    let events: Vec<_> = (0..5)
        .map(|i| {
            contact_event(
                json!({"region": "south-east", "email": format!("p{i}@school.example.org")}),
            )
        })
        .collect();
    for e in &events {
        app.publish(e).await;
    }
    eventually(
        Duration::from_secs(20),
        "the consumer to hold its deliveries",
        || async { (app.metric("rpec_consumer_waiting_for_database").await == 1.0).then_some(()) },
    )
    .await;
    // FAST_TIMINGS's five attempts at 100 to 400 ms would be spent in about a second: stay down
    // for several times that.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(app.metric("rpec_consumer_waiting_for_database").await, 1.0);
    database_outage(&app.db_name, false).await;
    let mails = app.mails(10).await;
    assert_eq!(
        mails
            .iter()
            .filter(|m| m.envelope_to == ["rpec.south-east@example.org"])
            .count(),
        5
    );
    app.all_sent().await;
    assert_eq!(
        app.outbox().await.len(),
        10,
        "one enquiry and one acknowledgement each"
    );
    assert_eq!(app.metric("rpec_consumer_waiting_for_database").await, 0.0);
    for metric in [
        "rpec_events_retried_total{type=\"contact.submitted\"}",
        "rpec_events_dead_lettered_total{reason=\"retries_exhausted\",type=\"contact.submitted\"}",
    ] {
        assert_eq!(app.metric(metric).await, 0.0, "{metric}");
    }
    assert_eq!(
        app.metric("rpec_events_consumed_total{type=\"contact.submitted\"}")
            .await,
        5.0
    );
    app.stop().await;
}

/// Passing failures of the event's own (here injected: the database is up) are retried with
/// back-off, then dead-lettered with the last error.
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_five_failed_attempts_the_message_is_dead_lettered_with_the_last_error() {
    fail::cfg("handle::passing_failure", "return(feedface)").unwrap();
    let app = spawn_app().await;
    let mut event = contact_event(json!({"region": "south-east"}));
    event["id"] = json!(format!(
        "feedface-{}",
        &uuid::Uuid::new_v4().to_string()[9..]
    ));
    app.publish(&event).await;
    let dead = app.dead_letters(1).await;
    assert_eq!(dead[0].error, "retries_exhausted");
    assert_eq!(
        dead[0].detail,
        "failed 5 times; last error: a passing failure, injected"
    );
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&dead[0].body).unwrap(),
        event
    );
    assert_eq!(
        app.metric("rpec_events_retried_total{type=\"contact.submitted\"}")
            .await,
        4.0
    );
    app.stop().await;
}

/// A handler that crashes: the event is dead-lettered as `handler_failed` with a detail free of
/// its values, nothing of it is applied, the worker goes on with the next event, and its prefetch
/// is not eaten up by crashed deliveries (more crashes than the prefetch, then valid events).
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_panics_dead_letters_the_event_and_the_worker_goes_on() {
    inject_handler_bug();
    let app = spawn_app().await;
    let prefetch = app.settings.prefetch as usize;
    let crashing: Vec<_> = (0..prefetch + 4)
        .map(|i| {
            let mut e =
                contact_event(json!({"region": "london", "name": format!("Crash Person {i}")}));
            e["id"] = json!(format!(
                "deadbeef-{}",
                &uuid::Uuid::new_v4().to_string()[9..]
            ));
            e
        })
        .collect();
    for e in &crashing {
        app.publish(e).await;
    }
    let valid = contact_event(json!({"region": "london"}));
    app.publish(&valid).await;
    let dead = app.dead_letters(crashing.len()).await;
    for d in &dead {
        assert_eq!(d.error, "handler_failed");
        assert_eq!(
            d.detail,
            "handling a contact.submitted event crashed; it was not applied"
        );
    }
    app.processed(valid["id"].as_str().unwrap()).await;
    app.mails(2).await;
    // Rolled back: not recorded as handled, so a replay after the fix applies it.
    let (handled,): (i64,) = sqlx::query_as("SELECT count(*) FROM processed_events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(handled, 1);
    assert_eq!(
        app.metric(
            "rpec_events_dead_lettered_total{reason=\"handler_failed\",type=\"contact.submitted\"}"
        )
        .await,
        crashing.len() as f64
    );
    app.stop().await;
}

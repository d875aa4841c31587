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
    assert!(got[5].1.contains("contact.deleted"));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_retried_and_the_enquiry_goes_out_when_it_ends() {
    let app = spawn_app().await;
    database_outage(&app.db_name, true).await;
    app.publish(&contact_event(json!({"region": "south-east"})))
        .await;
    eventually(Duration::from_secs(20), "two retries", || async {
        (app.metric("rpec_events_retried_total{type=\"contact.submitted\"}")
            .await
            >= 2.0)
            .then_some(())
    })
    .await;
    database_outage(&app.db_name, false).await;
    let mails = app.mails(2).await;
    assert!(mails
        .iter()
        .any(|m| m.envelope_to == ["rpec.south-east@example.org"]));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_five_failed_attempts_the_message_is_dead_lettered_with_the_last_error() {
    let app = spawn_app().await;
    database_outage(&app.db_name, true).await;
    let event = contact_event(json!({"region": "south-east"}));
    app.publish(&event).await;
    let dead = app.dead_letters(1).await;
    database_outage(&app.db_name, false).await;
    assert_eq!(dead[0].error, "retries_exhausted");
    assert!(
        dead[0]
            .detail
            .starts_with("failed 5 times; last error: database"),
        "{}",
        dead[0].detail
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

//! The outbox never loses an email and never fails one silently: outcomes are fenced by a claim
//! token, outages of the relay or of PostgreSQL fail nothing and send nothing twice, and a
//! coordinators' copy of an enquiry that fails for good goes to the triage mailbox, its failed
//! row kept until an operator resolves it.

use crate::helpers::*;
use rpec_notify::outbox::{self, Counted};
use rpec_notify::retention::sweep_once;
use serde_json::json;
use std::collections::HashSet;
use std::time::Duration;

/// Outbox rows as (id, kind, status, attempts, deferrals).
async fn rows(app: &TestApp) -> Vec<(i64, String, String, i32, i32)> {
    sqlx::query_as("SELECT id, kind, status, attempts, deferrals FROM outbox ORDER BY id")
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

/// An acknowledgement row, as a handler would have queued it.
async fn insert_ack(app: &TestApp, to: &str) -> i64 {
    let job = json!({"kind": "enquiry_ack", "enquiry_id": "enq-fence", "name": "Kim", "topic_label": "Training",
        "urgent": false, "region_name": "London", "newsletter": false,
        "newsletter_confirmed": false, "newsletter_recent": false});
    sqlx::query_scalar(
        "INSERT INTO outbox (kind, template, stream, recipients, job, message_uuid)
         VALUES ('enquiry_ack', 'enquiry_ack', 'transactional', ARRAY[$1], $2, gen_random_uuid())
         RETURNING id",
    )
    .bind(to)
    .bind(&job)
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

/// (status, claim_token, last_error) of one row.
async fn fence_state(app: &TestApp, id: i64) -> (String, Option<uuid::Uuid>, Option<String>) {
    sqlx::query_as("SELECT status, claim_token, last_error FROM outbox WHERE id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_recorded_under_a_claim_whose_lease_ran_out_changes_nothing() {
    let app = spawn_app_with(Options {
        proxy_database: true,
        ..Options::default()
    })
    .await;
    // The worker's own sender must not take the row: its way to PostgreSQL is cut, while the
    // test's pool reaches PostgreSQL directly and claims through the library.
    // Settled: a claim the worker sent just before the cut cannot arrive after the insert.
    let proxy = app.database_proxy.clone().unwrap();
    proxy.cut_and_settle().await;
    let id = insert_ack(&app, "kim@school.example.org").await;

    let stale = outbox::claim(&app.pool, 10, Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(stale.len(), 1);
    let fresh = eventually(
        Duration::from_secs(10),
        "the lease to run out and the row to be claimed again",
        || async {
            let c = outbox::claim(&app.pool, 10, Duration::from_secs(60))
                .await
                .unwrap();
            (!c.is_empty()).then_some(c)
        },
    )
    .await;
    let (stale, fresh) = (&stale[0], &fresh[0]);
    assert_eq!((stale.id, fresh.id), (id, id));
    assert_ne!(stale.claim_token, fresh.claim_token);

    // Every outcome under the stale token: no row changes.
    let pool = &app.pool;
    let token = stale.claim_token;
    assert!(!outbox::mark_sent(pool, id, token).await.unwrap());
    assert!(!outbox::mark_failed(pool, id, token, "stale").await.unwrap());
    assert!(!outbox::mark_cancelled(pool, id, token, "stale")
        .await
        .unwrap());
    let wait = Duration::from_secs(1);
    assert!(
        !outbox::mark_retry(pool, id, token, wait, "stale", Counted::Attempt)
            .await
            .unwrap()
    );
    assert_eq!(
        fence_state(&app, id).await,
        ("sending".to_string(), Some(fresh.claim_token), None)
    );

    // The fresh claim's result stands, and a stale one after it still changes nothing.
    assert!(outbox::mark_sent(pool, id, fresh.claim_token)
        .await
        .unwrap());
    assert!(!outbox::mark_failed(pool, id, token, "stale").await.unwrap());
    let (status, _, last_error) = fence_state(&app, id).await;
    assert_eq!((status.as_str(), last_error), ("sent", None));

    proxy.restore();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sender_ignores_and_counts_its_outcome_when_its_claim_was_taken_over() {
    // A relay slow enough that the test can take the row over while the worker is sending it.
    let smtp = SmtpServer::reserve().with_delay(Duration::from_secs(2));
    smtp.start();
    let app = spawn_app_with(Options {
        smtp: Some(smtp.clone()),
        ..Options::default()
    })
    .await;
    let id = insert_ack(&app, "kim@school.example.org").await;
    eventually(Duration::from_secs(10), "the worker's claim", || async {
        (fence_state(&app, id).await.0 == "sending").then_some(())
    })
    .await;
    // As if the worker had stalled past its lease: the lease ends and another claim takes it.
    sqlx::query("UPDATE outbox SET claimed_until = now() - interval '1 second' WHERE id = $1")
        .bind(id)
        .execute(&app.pool)
        .await
        .unwrap();
    let taken = outbox::claim(&app.pool, 10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(taken.len(), 1, "the row was still the worker's to send");

    eventually(
        Duration::from_secs(20),
        "the stale outcome counted",
        || async { (app.metric("rpec_emails_stale_outcomes_total").await == 1.0).then_some(()) },
    )
    .await;
    assert_eq!(smtp.received().len(), 1, "the worker's send went out");
    // The worker recorded nothing: the row is the test's claim's, as the test left it.
    assert_eq!(
        fence_state(&app, id).await,
        ("sending".to_string(), Some(taken[0].claim_token), None)
    );
    assert_eq!(
        app.metric("rpec_emails_sent_total{kind=\"enquiry_ack\"}")
            .await,
        0.0
    );
    assert!(outbox::mark_sent(&app.pool, id, taken[0].claim_token)
        .await
        .unwrap());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emails_queued_together_each_get_their_own_row_and_id_in_the_order_given() {
    let app = spawn_app_with(Options {
        proxy_database: true,
        ..Options::default()
    })
    .await;
    // The worker must not send them meanwhile: only what was written is looked at.
    app.database_proxy.clone().unwrap().cut_and_settle().await;
    let email = |who: &str, to: &[&str], priority: i16| {
        let job = rpec_notify::outbox::Job::from_value(json!({"kind": "enquiry_ack",
            "enquiry_id": format!("enq-{who}"), "name": who, "topic_label": "Training",
            "urgent": false, "region_name": "London", "newsletter": false,
            "newsletter_confirmed": false, "newsletter_recent": false}))
        .unwrap();
        let to = to
            .iter()
            .map(|a| rpec_notify::domain::EmailAddress::parse(a).unwrap())
            .collect();
        let mut e = outbox::NewEmail::new(job, to);
        e.priority = priority;
        e
    };
    // (who, to, priority) of each, in the order given.
    let wanted: [(&str, &[&str], i16); 3] = [
        ("ann", &["ann@school.example.org"], 0),
        (
            "bo",
            &["bo@school.example.org", "bo2@school.example.org"],
            5,
        ),
        ("cy", &["cy@school.example.org"], 9),
    ];
    let emails: Vec<_> = wanted
        .iter()
        .map(|&(who, to, priority)| email(who, to, priority))
        .collect();
    // The senders are woken by the statement that queues them.
    let mut listener = sqlx::postgres::PgListener::connect_with(&app.pool)
        .await
        .unwrap();
    listener.listen(outbox::NOTIFY_CHANNEL).await.unwrap();
    let mut conn = app.pool.acquire().await.unwrap();
    assert!(outbox::enqueue_many(&mut conn, &[])
        .await
        .unwrap()
        .is_empty());
    let ids = outbox::enqueue_many(&mut conn, &emails).await.unwrap();
    assert_eq!(ids.len(), 3);
    let woken = tokio::time::timeout(Duration::from_secs(5), listener.recv()).await;
    assert!(matches!(woken, Ok(Ok(_))), "no NOTIFY: {woken:?}");
    for (id, &(who, to, priority)) in ids.iter().zip(&wanted) {
        let (recipients, name, got_priority, status): (Vec<String>, String, i16, String) =
            sqlx::query_as(
                "SELECT recipients, job ->> 'name', priority, status FROM outbox WHERE id = $1",
            )
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
        assert_eq!(
            (recipients, name.as_str(), got_priority),
            (
                to.iter().copied().map(String::from).collect(),
                who,
                priority
            )
        );
        assert_eq!(status, "pending");
    }
    let uuids: HashSet<String> = app
        .strings("SELECT message_uuid::text FROM outbox")
        .await
        .into_iter()
        .collect();
    assert_eq!(uuids.len(), 3, "each its own Message-ID");
    drop(conn);
    app.stop().await;
}

/// Message-IDs of everything the relay accepted, checking that none came twice.
fn once_each(mails: &[Mail]) -> HashSet<String> {
    let ids: Vec<String> = mails
        .iter()
        .map(|m| m.header("Message-ID").expect("a Message-ID"))
        .collect();
    let unique: HashSet<String> = ids.iter().cloned().collect();
    assert_eq!(unique.len(), ids.len(), "an email was sent twice: {ids:?}");
    unique
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_outage_longer_than_the_retry_budget_fails_nothing() {
    let smtp = SmtpServer::reserve();
    let app = spawn_app_with(Options {
        smtp: Some(smtp.clone()),
        ..Options::default()
    })
    .await;
    let max_attempts = app.settings.mail.send_retry.max_attempts as i32;
    for region in ["london", "north-east"] {
        app.publish(&contact_event(json!({ "region": region })))
            .await;
    }
    app.handled(2).await;
    // Every email has been tried (and put back) more often than max_attempts would allow,
    // and none of those tries was counted as an attempt.
    let waiting = eventually(
        Duration::from_secs(60),
        "more tries than the retry budget",
        || async {
            let rows = rows(&app).await;
            (rows.len() == 4
                && rows
                    .iter()
                    .all(|r| r.2 == "pending" && r.4 > max_attempts + 1))
            .then_some(rows)
        },
    )
    .await;
    assert!(waiting.iter().all(|r| r.3 == 0), "{waiting:?}");

    smtp.start();
    eventually(Duration::from_secs(20), "every email sent", || async {
        let rows = rows(&app).await;
        rows.iter().all(|r| r.2 == "sent").then_some(())
    })
    .await;
    let rows = rows(&app).await;
    assert!(rows.iter().all(|r| r.3 == 1), "one attempt each: {rows:?}");
    assert_eq!(once_each(&smtp.received()).len(), 4);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_mid_send_loses_nothing_and_sends_nothing_twice() {
    // Each message takes the relay a while, so some are at the relay when PostgreSQL goes.
    let smtp = SmtpServer::reserve().with_delay(Duration::from_millis(1500));
    smtp.start();
    let app = spawn_app_with(Options {
        smtp: Some(smtp.clone()),
        proxy_database: true,
        ..Options::default()
    })
    .await;
    let regions = ["london", "north-east", "south-west", "west-midlands"];
    for region in regions {
        app.publish(&contact_event(json!({ "region": region })))
            .await;
    }
    app.handled(regions.len() as i64).await;
    eventually(Duration::from_secs(20), "emails being sent", || async {
        rows(&app)
            .await
            .iter()
            .any(|r| r.2 == "sending")
            .then_some(())
    })
    .await;
    let proxy = app.database_proxy.clone().unwrap();
    proxy.cut();
    let at_cut = smtp.received().len();
    // The relay accepts what was in flight while the worker cannot record it.
    eventually(
        Duration::from_secs(10),
        "a send accepted during the outage",
        || async { (smtp.received().len() > at_cut).then_some(()) },
    )
    .await;
    // The outage lasts a few seconds more (this is the outage, not a wait for an outcome).
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.restore();

    eventually(Duration::from_secs(25), "every email sent", || async {
        let rows = rows(&app).await;
        (rows.len() == 2 * regions.len() && rows.iter().all(|r| r.2 == "sent")).then_some(())
    })
    .await;
    assert_eq!(once_each(&smtp.received()).len(), 2 * regions.len());
    assert_eq!(app.metric("rpec_emails_stale_outcomes_total").await, 0.0);
    app.stop().await;
}

/// The shipped regions.toml with North-West's coordinators' mailbox refused by the test relay
/// (a 550 for local parts starting "bounce"), and, if `triage_bounces`, the triage one too.
fn regions_refusing_north_west(triage_bounces: bool) -> String {
    let text = std::fs::read_to_string(manifest_dir().join("config/regions.toml")).unwrap();
    let nw = "coordinators = [\"rpec.north-west@example.org\"]";
    let triage = "triage = [\"prevent.triage@example.org\"]";
    assert!(text.contains(nw) && text.contains(triage));
    let text = text.replace(nw, "coordinators = [\"bounce.north-west@example.org\"]");
    if triage_bounces {
        text.replace(triage, "triage = [\"bounce.triage@example.org\"]")
    } else {
        text
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enquiry_its_region_refuses_goes_to_triage_once_and_its_failure_outlives_retention() {
    let now = chrono::Utc::now();
    let app = spawn_app_with(Options {
        regions_toml: Some(regions_refusing_north_west(false)),
        ..Options::at(&now.to_rfc3339())
    })
    .await;
    let event = contact_event(json!({
        "region": "north-west", "topic": "complex-case",
        "name": "Sam <b>Okafor</b>", "message": "<script>alert(1)</script> please help"
    }));
    app.publish(&event).await;
    let settled = eventually(Duration::from_secs(20), "the outcomes", || async {
        let rows = rows(&app).await;
        (rows.len() == 3 && rows.iter().all(|r| r.2 == "sent" || r.2 == "failed")).then_some(rows)
    })
    .await;
    let kinds: Vec<(&str, &str)> = settled
        .iter()
        .map(|r| (r.1.as_str(), r.2.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("enquiry", "failed"),
            ("enquiry_ack", "sent"),
            ("enquiry_undeliverable", "sent")
        ]
    );
    let enquiry_id = settled[0].0;
    let (undeliverable_of,): (Option<i64>,) =
        sqlx::query_as("SELECT undeliverable_of FROM outbox WHERE kind = 'enquiry_undeliverable'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(undeliverable_of, Some(enquiry_id));

    let to_triage: Vec<Mail> = app
        .smtp
        .received()
        .into_iter()
        .filter(|m| m.envelope_to == ["prevent.triage@example.org"])
        .collect();
    assert_eq!(to_triage.len(), 1, "one copy to triage");
    let copy = &to_triage[0];
    assert!(
        copy.subject()
            .starts_with("UNDELIVERABLE to North-West: URGENT: complex case enquiry"),
        "{}",
        copy.subject()
    );
    assert!(
        copy.text()
            .contains("could not be delivered to the North-West coordinators"),
        "{}",
        copy.text()
    );
    assert!(copy.text().contains("550"), "the relay's reply is quoted");
    let html = copy.html();
    assert!(html.contains("could not be delivered to the North-West coordinators"));
    assert!(html.contains("Sam &lt;b&gt;Okafor&lt;/b&gt;"), "{html}");
    assert!(html.contains("&lt;script&gt;"), "{html}");
    assert!(
        !html.contains("<script>") && !html.contains("<b>Okafor"),
        "{html}"
    );
    assert_eq!(
        copy.reply_to().as_deref(),
        Some("s.okafor@school.example.org")
    );
    assert_eq!(copy.header("Importance").as_deref(), Some("high"));
    assert_eq!(
        app.metric("rpec_emails_failed_unresolved{kind=\"enquiry\"}")
            .await,
        1.0
    );

    // Triage takes it (so the month below escalates nothing: this test is about the failure).
    let claim = simple_event(
        "enquiry.claimed",
        json!({"enquiry_id": event["data"]["enquiry_id"], "by": "prevent.triage@example.org"}),
    );
    app.publish(&claim).await;
    app.processed(claim["id"].as_str().unwrap()).await;

    // Past the outbox retention: the sent emails go, the unresolved failure stays...
    let sweeper = app.sweeper().await;
    app.clock.set(now + chrono::Duration::days(31));
    assert_eq!(sweep_once(&sweeper).await.unwrap().emails, 2);
    let left = rows(&app).await;
    assert_eq!(left.len(), 1);
    assert_eq!((left[0].0, left[0].2.as_str()), (enquiry_id, "failed"));
    // ... until an operator resolves it.
    sqlx::query("UPDATE outbox SET resolved_at = now() WHERE id = $1")
        .bind(enquiry_id)
        .execute(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        app.metric("rpec_emails_failed_unresolved{kind=\"enquiry\"}")
            .await,
        0.0
    );
    assert_eq!(sweep_once(&sweeper).await.unwrap().emails, 1);
    assert!(rows(&app).await.is_empty());
    sweeper.pool.close().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_triage_copy_that_fails_too_stays_failed_and_is_not_passed_on_again() {
    let app = spawn_app_with(Options {
        regions_toml: Some(regions_refusing_north_west(true)),
        ..Options::default()
    })
    .await;
    app.publish(&contact_event(json!({"region": "north-west"})))
        .await;
    let settled = eventually(Duration::from_secs(20), "the outcomes", || async {
        let rows = rows(&app).await;
        (rows.len() == 3 && rows.iter().all(|r| r.2 == "sent" || r.2 == "failed")).then_some(rows)
    })
    .await;
    let kinds: Vec<(&str, &str)> = settled
        .iter()
        .map(|r| (r.1.as_str(), r.2.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("enquiry", "failed"),
            ("enquiry_ack", "sent"),
            ("enquiry_undeliverable", "failed")
        ]
    );
    // Both failures are open for an operator; nothing else was queued after the last one
    // (its failure is recorded in the same transaction that would have queued another copy).
    for kind in ["enquiry", "enquiry_undeliverable"] {
        assert_eq!(
            app.metric(&format!("rpec_emails_failed_unresolved{{kind=\"{kind}\"}}"))
                .await,
            1.0
        );
    }
    assert_eq!(rows(&app).await.len(), 3);
    app.stop().await;
}

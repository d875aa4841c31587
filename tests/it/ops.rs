//! Operating the worker: health, readiness and metrics; the real binary end to end with the file
//! relay and `publish`; SIGTERM; logs without personal data.

use crate::binary::RealWorker;
use crate::helpers::*;
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics() {
    let app = spawn_app().await;
    assert_eq!(app.get("/healthz").await.0, 200);
    let (status, body) = eventually(Duration::from_secs(10), "ready", || async {
        let r = app.get("/readyz").await;
        (r.0 == 200).then_some(r)
    })
    .await;
    assert_eq!(status, 200);
    assert_eq!(body, "postgresql: ok\nrabbitmq: ok\nmail relay: ok\n");
    app.publish(&contact_event(json!({"region": "london"})))
        .await;
    app.mails(2).await;
    // Each is counted once its row is recorded as sent, after the relay has it: wait for both.
    eventually(Duration::from_secs(10), "sent counters", || async {
        let enquiry = app.metric("rpec_emails_sent_total{kind=\"enquiry\"}").await;
        let ack = app
            .metric("rpec_emails_sent_total{kind=\"enquiry_ack\"}")
            .await;
        (enquiry == 1.0 && ack == 1.0).then_some(())
    })
    .await;
    let (_, metrics) = app.get("/metrics").await;
    assert!(
        metrics.contains("rpec_events_consumed_total{type=\"contact.submitted\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("rpec_emails_sent_total{kind=\"enquiry_ack\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("rpec_outbox_depth 0"), "{metrics}");
    app.stop().await;
}

/// The worker as `make run` runs it: the real binary, the file relay, `publish` for the event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_turns_the_published_example_into_two_eml_files_and_stops_on_sigterm() {
    let worker = RealWorker::start().await;
    let example = manifest_dir().join("examples/events/contact-complex-case.json");
    assert!(worker
        .publish_file(&example)
        .contains("published 1 event(s)"));
    worker.wait_for("", 2, Duration::from_secs(20)).await;
    worker.settle().await;
    let mails = worker.mails();
    assert_eq!(mails.len(), 2);
    let urgent = mails
        .iter()
        .find(|m| m.subject().starts_with("URGENT:"))
        .expect("an urgent email");
    assert!(urgent
        .header("To")
        .unwrap()
        .contains("rpec.north-west@example.org"));
    assert_eq!(urgent.header("Importance").as_deref(), Some("high"));
    let ack = mails
        .iter()
        .find(|m| {
            m.header("To")
                .unwrap()
                .contains("s.okafor@school.example.org")
        })
        .expect("an acknowledgement");
    assert!(ack.text().contains("calling 999"));

    let (status, took, log) = worker.terminate().await;
    assert!(status.success(), "exit status {status:?}");
    assert!(took < Duration::from_secs(10), "stopped in {took:?}");
    // Ids only in the logs: no address, name, organisation or enquiry text.
    assert!(
        log.contains("enq-2024-000187"),
        "the enquiry id is logged: {log}"
    );
    for personal in ["s.okafor", "Sam Okafor", "Riverside", "Year 10", "01228"] {
        assert!(!log.contains(personal), "{personal} in the log:\n{log}");
    }
}

/// Issue 3's demonstration with the real clock: a session starting in just over an hour gets
/// its confirmation at once and its 1-hour reminder within 30 seconds of its due time, never
/// before; a session cancelled before its reminder is due gets one cancellation and no reminder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_sends_a_confirmation_then_the_hour_reminder_on_time_and_honours_cancellation() {
    let worker = RealWorker::start().await;
    let pool = worker.deployment.pool().await;
    // Both 1-hour reminders fall due 30 s from now: time for the worker to plan them (an offset
    // already past at registration is skipped) and to handle the cancellation first, even on a
    // loaded machine. Whole seconds, so the due time is exact.
    let now = chrono::DateTime::from_timestamp(chrono::Utc::now().timestamp(), 0).unwrap();
    let start = now + chrono::Duration::hours(1) + chrono::Duration::seconds(30);
    let due = start - chrono::Duration::hours(1);
    let iso = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339();
    let end = iso(start + chrono::Duration::hours(1));
    worker.publish_events(&[
        session_event("session.scheduled", "soon", &iso(start), &end, None),
        session_event(
            "session.scheduled",
            "later",
            &iso(start),
            &end,
            Some("london"),
        ),
        registration_event("r-soon", "soon", "jo.bloggs@school.example.org"),
        registration_event("r-later", "later", "sam@school.example.org"),
    ]);
    let confirmations = worker
        .wait_for("You are registered", 2, Duration::from_secs(20))
        .await;
    assert!(confirmations.iter().all(|m| m.calendar().is_some()));
    let planned_1h = |registration: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "SELECT status FROM scheduled_emails
                 WHERE registration_id = $1 AND offset_label = '1h'",
            )
            .bind(registration)
            .fetch_all(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(planned_1h("r-later").await, ["pending"]);

    worker.publish_events(&[simple_event(
        "session.cancelled",
        json!({"session_id": "later"}),
    )]);
    let cancelled = worker
        .wait_for("Cancelled:", 1, Duration::from_secs(20))
        .await;
    assert!(cancelled[0]
        .header("To")
        .unwrap()
        .contains("sam@school.example.org"));
    assert!(cancelled[0].calendar().unwrap().contains("METHOD:CANCEL"));
    assert!(
        chrono::Utc::now() < due,
        "the cancellation was handled before the reminders fell due"
    );
    assert_eq!(planned_1h("r-soon").await, ["pending"]);

    let wait = (due - chrono::Utc::now()).to_std().unwrap_or_default() + Duration::from_secs(30);
    let reminder = worker.wait_for("Reminder:", 1, wait).await;
    assert!(reminder[0].subject().ends_with("starts in 1 hour"));
    assert!(reminder[0]
        .header("To")
        .unwrap()
        .contains("jo.bloggs@school.example.org"));
    // Not early: the worker dates the message as it builds it, before the relay has it. `Date`
    // counts whole seconds and `due` is a whole second, so Date >= due exactly when the message
    // was built at or after its due time. (A file's write time can read a few milliseconds
    // behind the clock, so it is no proof of "not early".)
    let date = reminder[0].header("Date").expect("a Date header");
    let built = chrono::DateTime::parse_from_rfc2822(&date).expect("an RFC 5322 date");
    assert!(built >= due, "built at {built}, before its due time {due}");
    // Not late: when the relay (the file relay: the file's write time) accepted it.
    let accepted: chrono::DateTime<chrono::Utc> = worker
        .accepted_at("Reminder:")
        .into_iter()
        .next()
        .expect("the reminder's file")
        .into();
    assert!(
        accepted <= due + chrono::Duration::seconds(30),
        "sent at {accepted}, more than 30 s after its due time {due}"
    );

    // The cancelled session's reminder was due at the same instant: after two more rounds of
    // the scheduler and the sender, it has not come, and never reached the outbox.
    worker.settle().await;
    let mails = worker.mails();
    assert_eq!(
        mails.len(),
        4,
        "two confirmations, one reminder, one cancellation: {:?}",
        mails.iter().map(|m| m.subject()).collect::<Vec<_>>()
    );
    assert_eq!(planned_1h("r-later").await, ["dropped"]);
    let reminders: Vec<String> = sqlx::query_scalar(
        "SELECT array_to_string(recipients, ',') FROM outbox WHERE kind = 'session_reminder'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(reminders, ["jo.bloggs@school.example.org"]);
    pool.close().await;
    let (status, _, _) = worker.terminate().await;
    assert!(status.success());
}

/// Closes the worker's broker connection from the broker's side, as a broker restart would.
fn close_worker_connection(queue: &str) -> bool {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["list_connections", "pid", "client_properties"])
        .output()
        .expect("rabbitmqctl");
    let listing = String::from_utf8_lossy(&out.stdout);
    let wanted = format!("rpec-notify consumer {queue}");
    let Some(pid) = listing
        .lines()
        .find(|l| l.contains(&wanted))
        .and_then(|l| l.split_whitespace().next())
    else {
        return false;
    };
    std::process::Command::new("rabbitmqctl")
        .args(["close_connection", pid, "test: connection dropped"])
        .status()
        .expect("rabbitmqctl")
        .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_reconnects_when_the_broker_drops_its_connection() {
    let app = spawn_app().await;
    eventually(Duration::from_secs(10), "ready", || async {
        (app.get("/readyz").await.0 == 200).then_some(())
    })
    .await;
    let queue = app.topology.queue.clone();
    assert!(
        tokio::task::spawn_blocking(move || close_worker_connection(&queue))
            .await
            .unwrap(),
        "the worker's connection is listed by the broker"
    );
    app.publish(&contact_event(json!({"region": "north-west"})))
        .await;
    let mails = app.mails(2).await;
    assert!(mails
        .iter()
        .any(|m| m.envelope_to == ["rpec.north-west@example.org"]));
    eventually(Duration::from_secs(10), "ready again", || async {
        (app.get("/readyz").await.0 == 200).then_some(())
    })
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_json_lines_when_log_format_is_json() {
    let worker = RealWorker::start_with(&[("LOG_FORMAT", "json")]).await;
    worker.publish_events(&[contact_event(
        json!({"region": "london", "name": "Jamie Json"}),
    )]);
    worker.wait_for("", 2, Duration::from_secs(20)).await;
    let (status, _, log) = worker.terminate().await;
    assert!(status.success());
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "enquiry routed" && l["region"] == "london"),
        "{log}"
    );
    assert!(lines
        .iter()
        .all(|l| l["level"].is_string() && l["timestamp"].is_string()));
    assert!(!log.contains("Jamie"));
}

/// `/readyz` names the dependency that is down, for PostgreSQL and for RabbitMQ, and comes back
/// to 200 by itself when it returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_names_the_dependency_that_is_down() {
    let app = spawn_app_with(Options {
        proxy_database: true,
        proxy_broker: true,
        ..Options::default()
    })
    .await;
    let ready = || async {
        eventually(Duration::from_secs(20), "ready", || async {
            (app.get("/readyz").await.0 == 200).then_some(())
        })
        .await
    };
    ready().await;
    let unready = |name: &'static str| {
        let app = &app;
        async move {
            eventually(
                Duration::from_secs(20),
                "503 naming the dependency",
                || async {
                    let (status, body) = app.get("/readyz").await;
                    let down = body
                        .lines()
                        .find(|l| l.starts_with(name))
                        .is_some_and(|l| !l.ends_with(": ok"));
                    (status == 503 && down).then_some(body)
                },
            )
            .await
        }
    };

    app.database_proxy.as_ref().unwrap().cut();
    let body = unready("postgresql").await;
    assert!(body.contains("rabbitmq: ok"), "{body}");
    app.database_proxy.as_ref().unwrap().restore();
    ready().await;

    app.broker_proxy.as_ref().unwrap().cut();
    let body = unready("rabbitmq").await;
    assert!(body.contains("postgresql: ok"), "{body}");
    app.broker_proxy.as_ref().unwrap().restore();
    ready().await;
    app.stop().await;
}

/// The never-silent metrics: failed and unresolved emails by kind (only known kinds as labels),
/// the age of the oldest email that is due, the build, and how late reminders reach the relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_open_failures_waiting_mail_the_build_and_reminder_lateness() {
    let app = spawn_app_with(Options::at("2024-11-23T15:30:00Z")).await;
    let (_, metrics) = app.get("/metrics").await;
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        metrics.contains(&format!("rpec_build_info{{version=\"{version}\"}} 1")),
        "{metrics}"
    );
    // Every known kind is shown, at 0 while nothing has failed.
    for kind in ["enquiry", "newsletter", "session_reminder"] {
        assert!(
            metrics.contains(&format!(
                "rpec_emails_failed_unresolved{{kind=\"{kind}\"}} 0"
            )),
            "{metrics}"
        );
    }
    assert!(
        metrics.contains("rpec_outbox_oldest_waiting_seconds 0"),
        "{metrics}"
    );

    // A failure of a known kind, one of a kind nobody knows, one resolved; and an email due an
    // hour ago that a live claim holds.
    sqlx::query(
        "INSERT INTO outbox (kind, template, stream, recipients, job, message_uuid, status,
                             resolved_at, created_at, claimed_until)
         VALUES ('enquiry', 'enquiry_coordinator', 'transactional', ARRAY['a@example.org'],
                 jsonb_build_object('kind', 'enquiry'), gen_random_uuid(), 'failed', NULL, now(), NULL),
                ('no such kind', 'x', 'transactional', ARRAY['a@example.org'],
                 jsonb_build_object('kind', 'no such kind'), gen_random_uuid(), 'failed', NULL, now(), NULL),
                ('enquiry', 'enquiry_coordinator', 'transactional', ARRAY['a@example.org'],
                 jsonb_build_object('kind', 'enquiry'), gen_random_uuid(), 'failed', now(), now(), NULL),
                ('enquiry_ack', 'enquiry_ack', 'transactional', ARRAY['a@example.org'],
                 jsonb_build_object('kind', 'enquiry_ack'), gen_random_uuid(), 'sending', NULL,
                 now() - interval '1 hour', now() + interval '1 hour')",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        app.metric("rpec_emails_failed_unresolved{kind=\"enquiry\"}")
            .await,
        1.0
    );
    assert_eq!(
        app.metric("rpec_emails_failed_unresolved{kind=\"unknown\"}")
            .await,
        1.0
    );
    let (_, metrics) = app.get("/metrics").await;
    assert!(!metrics.contains("no such kind"), "{metrics}");
    let oldest = app.metric("rpec_outbox_oldest_waiting_seconds").await;
    assert!((3600.0..4200.0).contains(&oldest), "{oldest}");
    sqlx::query("DELETE FROM outbox WHERE status = 'sending'")
        .execute(&app.pool)
        .await
        .unwrap();

    // A reminder found due 7 seconds late (the worker's clock stands still) is 7 s late.
    app.publish(&session_event(
        "session.scheduled",
        "late-2024-11-25",
        "2024-11-25T15:30:00+00:00",
        "2024-11-25T16:30:00+00:00",
        None,
    ))
    .await;
    app.publish(&registration_event(
        "reg-late",
        "late-2024-11-25",
        "jo@school.example.org",
    ))
    .await;
    app.handled(2).await;
    app.set_time("2024-11-24T15:30:07Z");
    eventually(Duration::from_secs(20), "the reminder observed", || async {
        (app.metric("rpec_reminder_lateness_seconds_count").await == 1.0).then_some(())
    })
    .await;
    assert_eq!(app.metric("rpec_reminder_lateness_seconds_sum").await, 7.0);
    assert_eq!(
        app.metric("rpec_reminder_lateness_seconds_bucket{le=\"10\"}")
            .await,
        1.0
    );
    assert_eq!(
        app.metric("rpec_reminder_lateness_seconds_bucket{le=\"5\"}")
            .await,
        0.0
    );
    app.stop().await;
}

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
    eventually(Duration::from_secs(10), "sent counters", || async {
        (app.metric("rpec_emails_sent_total{kind=\"enquiry\"}").await == 1.0).then_some(())
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
    tokio::time::sleep(Duration::from_millis(500)).await;
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
/// its confirmation at once and its 1-hour reminder when due; a cancelled session gets one
/// cancellation and nothing after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_sends_a_confirmation_then_the_hour_reminder_on_time_and_honours_cancellation() {
    let worker = RealWorker::start().await;
    let now = chrono::Utc::now();
    let soon = now + chrono::Duration::hours(1) + chrono::Duration::seconds(8);
    let later = now + chrono::Duration::days(3);
    let iso = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339();
    worker.publish_events(&[
        session_event(
            "session.scheduled",
            "soon",
            &iso(soon),
            &iso(soon + chrono::Duration::hours(1)),
            None,
        ),
        session_event(
            "session.scheduled",
            "later",
            &iso(later),
            &iso(later + chrono::Duration::hours(1)),
            Some("london"),
        ),
        registration_event("r-soon", "soon", "jo.bloggs@school.example.org"),
        registration_event("r-later", "later", "sam@school.example.org"),
    ]);
    let confirmations = worker
        .wait_for("You are registered", 2, Duration::from_secs(20))
        .await;
    assert!(confirmations.iter().all(|m| m.calendar().is_some()));
    let reminder = worker
        .wait_for("Reminder:", 1, Duration::from_secs(40))
        .await;
    assert!(reminder[0].subject().ends_with("starts in 1 hour"));
    assert!(reminder[0]
        .header("To")
        .unwrap()
        .contains("jo.bloggs@school.example.org"));

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
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        worker.mails().len(),
        4,
        "two confirmations, one reminder, one cancellation"
    );
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

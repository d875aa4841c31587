//! Operating the worker: health, readiness and metrics; the real binary end to end with the file
//! relay and `publish`; SIGTERM; logs without personal data.

use crate::cli::binary;
use crate::helpers::*;
use serde_json::json;
use sqlx::{Connection, PgConnection};
use std::process::Stdio;
use std::time::{Duration, Instant};

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
    let id = uuid::Uuid::new_v4().simple().to_string();
    let db_name = format!("rpec_test_{id}");
    let mut admin = PgConnection::connect(&database_admin_url()).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE \"{db_name}\""))
        .execute(&mut admin)
        .await
        .unwrap();
    let mail_dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let envs = [
        ("DATABASE_URL", database_url_for(&db_name)),
        ("RPEC_AMQP_URL", amqp_url()),
        (
            "RPEC_SMTP_URL",
            format!("file://{}", mail_dir.path().display()),
        ),
        ("RPEC_EXCHANGE", format!("rpec.events.{id}")),
        ("RPEC_QUEUE", format!("rpec-notify.events.{id}")),
        ("RPEC_HTTP_ADDR", format!("127.0.0.1:{port}")),
        ("RUST_LOG", "info".into()),
    ];
    let mut worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_rpec-notify"))
        .arg("run")
        .current_dir(manifest_dir())
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stderr = worker.stderr.take().unwrap();
    let log = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut s = String::new();
        let mut stderr = stderr;
        let _ = stderr.read_to_string(&mut s).await;
        s
    });
    eventually(
        Duration::from_secs(30),
        "the worker to answer /healthz",
        || async {
            reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
                .await
                .ok()
                .filter(|r| r.status() == 200)
        },
    )
    .await;

    let example = manifest_dir().join("../shared/examples/events/contact-complex-case.json");
    let publish = binary()
        .arg("publish")
        .arg(&example)
        .current_dir(manifest_dir())
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    assert!(
        publish.status.success(),
        "{}",
        String::from_utf8_lossy(&publish.stderr)
    );
    assert!(String::from_utf8_lossy(&publish.stdout).contains("published 1 event(s)"));

    let files = eventually(Duration::from_secs(20), "two .eml files", || {
        let dir = mail_dir.path().to_owned();
        async move {
            let files: Vec<_> = std::fs::read_dir(&dir)
                .ok()?
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "eml"))
                .collect();
            (files.len() >= 2).then_some(files)
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        std::fs::read_dir(mail_dir.path())
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "eml"))
            .count(),
        2
    );
    let mails: Vec<Mail> = files
        .iter()
        .map(|f| Mail {
            envelope_to: vec![],
            raw: std::fs::read(f).unwrap(),
        })
        .collect();
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

    let started = Instant::now();
    let pid = worker.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::time::timeout(Duration::from_secs(10), worker.wait())
        .await
        .expect("exits within 10 s")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert!(started.elapsed() < Duration::from_secs(10));

    // Ids only in the logs: no address, name, organisation or enquiry text.
    let log = log.await.unwrap();
    assert!(
        log.contains("enq-2024-000187"),
        "the enquiry id is logged: {log}"
    );
    for personal in ["s.okafor", "Sam Okafor", "Riverside", "Year 10", "01228"] {
        assert!(!log.contains(personal), "{personal} in the log:\n{log}");
    }

    let _ = sqlx::query(&format!(
        "DROP DATABASE IF EXISTS \"{db_name}\" WITH (FORCE)"
    ))
    .execute(&mut admin)
    .await;
    let conn = rpec_notify::consume::topology::connect(&amqp_url(), "rpec-notify tests")
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    for q in ["", ".retry", ".dead-letter"] {
        let _ = ch
            .queue_delete(&format!("rpec-notify.events.{id}{q}"), Default::default())
            .await;
    }
    let _ = ch
        .exchange_delete(&format!("rpec.events.{id}"), Default::default())
        .await;
    let _ = ch
        .exchange_delete(
            &format!("rpec-notify.events.{id}.dead-letter"),
            Default::default(),
        )
        .await;
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

//! Nothing is lost: poison messages that cannot stop the worker, the topology the worker declares
//! (quorum queues, persistent republishes), dead letters that no queue takes, a queue declared
//! differently by an earlier version, and a worker killed between its commit and its ack.

use crate::binary::Deployment;
use crate::helpers::*;
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use rpec_notify::consume::topology::{self, Topology};
use serde_json::json;
use std::time::Duration;

/// One field of 200 KB (the body is under the 256 KiB limit) once made a dead letter's detail
/// larger than a frame: the broker closed the connection and the message came back for ever.
/// Now the detail names the field and the rule in a few bytes, and the next event goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_field_is_dead_lettered_with_a_short_detail_and_stops_nothing() {
    let app = spawn_app().await;
    let huge = contact_event(json!({"setting": "x".repeat(200 * 1024)}));
    assert!(serde_json::to_vec(&huge).unwrap().len() < 256 * 1024);
    app.publish(&huge).await;
    let valid = contact_event(json!({"region": "london"}));
    app.publish(&valid).await;
    let dead = app.dead_letters(1).await;
    assert_eq!(dead[0].error, "invalid_payload");
    assert!(
        dead[0].detail.starts_with("data.setting: is not one of"),
        "{}",
        dead[0].detail
    );
    assert!(dead[0].detail.len() <= rpec_notify::consume::MAX_DETAIL_BYTES);
    assert!(!dead[0].detail.contains("xxx"));
    app.processed(valid["id"].as_str().unwrap()).await;
    app.mails(2).await;
    app.stop().await;
}

/// The worker declares its own exchange, quorum queues (with a delivery limit) and bindings for
/// every event type; what it republishes (dead letters here) is persistent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_declares_quorum_queues_bound_to_every_type_and_republishes_persistently() {
    let app = spawn_app().await;
    let conn = topology::connect(&amqp_url(), "rpec-notify tests")
        .await
        .unwrap();

    // The same declaration as the worker's is accepted (idempotent)...
    let ch = conn.create_channel().await.unwrap();
    topology::declare(&ch, &Topology::from_settings(&app.settings))
        .await
        .unwrap();
    // ...and a classic queue of the same name is refused: the worker's is a quorum queue.
    let mut classic = FieldTable::default();
    classic.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("classic".into()),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    for queue in app.topology.queues() {
        let ch = conn.create_channel().await.unwrap();
        let refused = ch.queue_declare(queue, durable, classic.clone()).await;
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.to_string().contains("PRECONDITION_FAILED")),
            "{queue}: {refused:?}"
        );
    }

    // Every event type is routed to the worker's queue: a mandatory publish is not returned.
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    for t in rpec_notify::domain::EventType::ALL {
        topology::publish_confirmed(
            &ch,
            &app.topology.exchange,
            t.as_str(),
            b"not json",
            BasicProperties::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", t.as_str()));
    }
    let dead = app
        .dead_letters(rpec_notify::domain::EventType::ALL.len())
        .await;
    assert!(dead.iter().all(|d| d.error == "malformed_json"));
    assert!(
        dead.iter().all(|d| d.persistent),
        "dead letters are persistent even when the original was not"
    );
    let _ = conn.close(200, "done").await;
    app.stop().await;
}

/// A dead letter that no queue takes (someone deleted the dead-letter queue) is not confirmed
/// away: the original goes back to the queue after a pause, the worker opens its connection
/// anew, declares its topology again (re-creating the queue), and the dead letter arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_no_queue_takes_is_kept_and_arrives_once_the_queue_is_back() {
    let app = spawn_app().await;
    let conn = topology::connect(&amqp_url(), "rpec-notify tests")
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.queue_delete(&app.topology.dead_letter, QueueDeleteOptions::default())
        .await
        .unwrap();
    let bad = contact_event(json!({"email": "not-an-address"}));
    app.publish(&bad).await;
    // Looking into a queue that is not there would close the test's own channel: wait until the
    // worker has declared it again.
    wait_for_topology(&conn, &app.topology).await;
    let dead = app.dead_letters(1).await;
    assert_eq!(dead[0].error, "invalid_payload");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&dead[0].body).unwrap(),
        bad
    );
    assert!(
        app.metric("rpec_events_forward_failures_total").await >= 1.0,
        "the dead letter was first returned"
    );
    // And the worker consumes again on its new connection.
    app.publish(&contact_event(json!({"region": "london"})))
        .await;
    app.mails(2).await;
    let _ = conn.close(200, "done").await;
    app.stop().await;
}

/// A queue left by an earlier version as a classic queue: the worker stops with an error that
/// names the queue and says how to migrate, instead of reconnecting for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classic_queue_from_an_earlier_version_stops_the_worker_with_how_to_migrate() {
    let mail_dir = tempfile::tempdir().unwrap();
    let deployment = Deployment::new(&format!("file://{}", mail_dir.path().display()), None).await;
    let queue = deployment.env("RPEC_QUEUE");
    let conn = topology::connect(&amqp_url(), "rpec-notify tests")
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    ch.queue_declare(&queue, durable, FieldTable::default())
        .await
        .unwrap();
    let out = tokio::task::spawn_blocking({
        let command = deployment.command_builder(&["run"]);
        move || {
            let mut command = command;
            command.output().unwrap()
        }
    });
    let out = tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .expect("the worker stops by itself")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("queue \"{queue}\"")), "{stderr}");
    assert!(stderr.contains("rabbitmqctl delete_queue"), "{stderr}");
    let _ = conn.close(200, "done").await;
    deployment.remove().await;
}

/// An event is acknowledged only after its transaction committed: a worker killed between the
/// commit and the ack leaves the message on the queue, and the next worker's redelivery is a
/// no-op (no second email).
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_between_commit_and_ack_sends_nothing_twice() {
    let mail_dir = tempfile::tempdir().unwrap();
    // The sender may claim the new emails before the abort: a short lease brings them back to
    // the second worker soon (4 waves of 5 s sends and the margin fit in 30 s).
    let mut deployment = Deployment::new(
        &format!("file://{}", mail_dir.path().display()),
        Some("[mail]\nsend_timeout_secs = 5\nlease_secs = 30\n"),
    )
    .await;
    deployment.set_env("FAILPOINTS", "consume::after_commit=1*return");
    let first = deployment.start().await;
    let event = contact_event(json!({"region": "london"}));
    let file = mail_dir.path().join("event.json.in");
    std::fs::write(&file, serde_json::to_vec(&event).unwrap()).unwrap();
    deployment.publish(&[&file]);
    let (status, _) = first.exited(Duration::from_secs(20)).await;
    assert!(!status.success(), "aborted after the commit: {status:?}");
    let pool = deployment.pool().await;
    let handled: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(handled, 1, "the commit happened before the abort");

    deployment.unset_env("FAILPOINTS");
    let second = deployment.start().await;
    let url = format!("{}/metrics", deployment.admin_url());
    eventually(
        Duration::from_secs(20),
        "the redelivery to be seen as a duplicate",
        || async {
            let body = reqwest::get(&url).await.ok()?.text().await.ok()?;
            body.contains("rpec_events_duplicate_total{type=\"contact.submitted\"} 1")
                .then_some(())
        },
    )
    .await;
    eventually(Duration::from_secs(60), "both emails sent", || async {
        let sent: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE status = 'sent'")
            .fetch_one(&pool)
            .await
            .ok()?;
        (sent == 2).then_some(())
    })
    .await;
    let (status, _) = second.stop().await;
    assert!(status.success());
    // The redelivery added no email: two rows, two distinct messages. (A send cut off by the
    // abort could be repeated after its lease, with the same Message-ID: the one duplicate
    // window, not a second email.)
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 2, "the enquiry and its acknowledgement, once each");
    let mut message_ids: Vec<String> = std::fs::read_dir(mail_dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
        .map(|e| {
            let raw = std::fs::read(e.path()).unwrap();
            Mail {
                envelope_from: String::new(),
                envelope_to: vec![],
                raw,
            }
            .header("Message-ID")
            .unwrap_or_default()
        })
        .collect();
    message_ids.sort();
    message_ids.dedup();
    assert_eq!(message_ids.len(), 2, "{message_ids:?}");
    pool.close().await;
    deployment.remove().await;
}

//! Sending: transient SMTP failures are retried until they pass; permanent ones are recorded.

use crate::helpers::*;
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_waits_while_the_smtp_server_is_down_and_arrives_when_it_is_back() {
    let smtp = SmtpServer::reserve();
    let app = spawn_app_with(Options {
        smtp: Some(smtp.clone()),
        ..Options::default()
    })
    .await;
    app.publish(&contact_event(json!({"region": "west-midlands"})))
        .await;
    let rows = eventually(Duration::from_secs(20), "tries put back", || async {
        let rows = app.outbox().await;
        (rows.len() == 2 && rows.iter().all(|r| r.1 == "pending" && r.3.is_some())).then_some(rows)
    })
    .await;
    assert!(
        rows.iter()
            .all(|r| r.3.as_deref().unwrap().contains("onnection")),
        "{rows:?}"
    );
    // A relay that cannot be reached says nothing about the email: no attempt is counted.
    assert!(rows.iter().all(|r| r.2 == 0), "{rows:?}");
    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("mail relay: the relay"), "{body}");

    smtp.start();
    let mails = app.mails(2).await;
    assert!(mails
        .iter()
        .any(|m| m.envelope_to == ["rpec.west-midlands@example.org"]));
    let rows = eventually(Duration::from_secs(10), "rows marked sent", || async {
        let rows = app.outbox().await;
        rows.iter().all(|r| r.1 == "sent").then_some(rows)
    })
    .await;
    assert!(rows.iter().all(|r| r.2 == 1 && r.3.is_none()), "{rows:?}");
    assert_eq!(app.get("/readyz").await.0, 200);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_550_reply_marks_the_email_failed_and_keeps_it() {
    let app = spawn_app().await;
    app.publish(&contact_event(
        json!({"region": "east-midlands", "email": "bounce.me@school.example.org"}),
    ))
    .await;
    let mails = app.mails(1).await;
    assert_eq!(mails[0].envelope_to, ["rpec.east-midlands@example.org"]);
    let rows = eventually(
        Duration::from_secs(10),
        "the acknowledgement to fail",
        || async {
            let rows = app.outbox().await;
            rows.iter()
                .any(|r| r.0 == "enquiry_ack" && r.1 == "failed")
                .then_some(rows)
        },
    )
    .await;
    let ack = rows.iter().find(|r| r.0 == "enquiry_ack").unwrap();
    assert_eq!(ack.2, 1, "a permanent failure is not retried");
    assert!(ack.3.as_deref().unwrap().contains("550"), "{ack:?}");
    app.settle().await;
    assert_eq!(
        app.outbox()
            .await
            .iter()
            .find(|r| r.0 == "enquiry_ack")
            .unwrap()
            .2,
        1
    );
    assert_eq!(
        app.metric("rpec_emails_failed_total{kind=\"enquiry_ack\"}")
            .await,
        1.0
    );
    assert_eq!(app.smtp.received().len(), 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_claimed_by_a_worker_that_died_is_sent_once_its_lease_runs_out() {
    let app = spawn_app().await;
    // As a crashed worker leaves it: claimed ('sending'), never released.
    let job = serde_json::json!({"kind": "enquiry_ack", "enquiry_id": "enq-lease", "name": "Kim", "topic_label": "Training", "urgent": false, "region_name": "London", "newsletter": false});
    for (status, lease) in [
        ("sending", "now() - interval '1 second'"),
        ("sending", "now() + interval '1 hour'"),
    ] {
        sqlx::query(&format!(
            "INSERT INTO outbox (kind, template, stream, recipients, job, message_uuid, status, attempts, claimed_until)
             VALUES ('enquiry_ack', 'enquiry_ack', 'transactional', ARRAY['kim@school.example.org'], $1, gen_random_uuid(), '{status}', 1, {lease})"
        ))
        .bind(&job)
        .execute(&app.pool)
        .await
        .unwrap();
    }
    let mails = app.mails(1).await;
    assert_eq!(mails[0].envelope_to, ["kim@school.example.org"]);
    app.settle().await;
    // The row whose lease still runs is left to its (live) owner.
    let rows = app.outbox().await;
    assert_eq!(
        rows.iter().map(|r| r.1.as_str()).collect::<Vec<_>>(),
        ["sent", "sending"]
    );
    assert_eq!(rows[0].2, 2, "the reclaim counts as an attempt");
    assert_eq!(app.smtp.received().len(), 1);
    app.stop().await;
}

/// A private certificate authority and a certificate for 127.0.0.1 signed by it (openssl).
pub(crate) fn private_ca(dir: &std::path::Path) -> (String, String, String) {
    let path = |f: &str| dir.join(f).display().to_string();
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=rpec test CA",
        "-keyout",
        &path("ca.key"),
        "-out",
        &path("ca.pem"),
    ]);
    std::fs::write(
        dir.join("leaf.ext"),
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &path("leaf.key"),
        "-out",
        &path("leaf.csr"),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &path("leaf.csr"),
        "-CA",
        &path("ca.pem"),
        "-CAkey",
        &path("ca.key"),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &path("leaf.ext"),
        "-out",
        &path("leaf.pem"),
    ]);
    (path("leaf.pem"), path("leaf.key"), path("ca.pem"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_goes_over_starttls_to_a_relay_whose_certificate_a_private_ca_signed() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca) = private_ca(dir.path());
    let smtp = SmtpServer::reserve();
    smtp.start_with_ssl(mailin_embedded::SslConfig::Trusted {
        cert_path: cert,
        key_path: key,
        chain_path: ca.clone(),
    });
    // Trusting the private CA: delivered, over TLS (the URL requires it).
    let profile = format!("{FAST_TIMINGS}\n");
    let trusting = spawn_app_with(Options {
        smtp: Some(smtp.clone()),
        profile_toml: profile.replace("[mail]\n", &format!("[mail]\ntls_ca_file = \"{ca}\"\n")),
        url_suffix: Some("?tls=required".into()),
        ..Options::default()
    })
    .await;
    trusting
        .publish(&contact_event(json!({"region": "london"})))
        .await;
    let mails = trusting.mails(2).await;
    assert!(mails
        .iter()
        .any(|m| m.envelope_to == ["rpec.london@example.org"]));
    trusting.stop().await;

    // Not trusting it: the certificate is refused, and nothing is sent in clear instead.
    let before = smtp.received().len();
    let wary = spawn_app_with(Options {
        smtp: Some(smtp.clone()),
        url_suffix: Some("?tls=required".into()),
        ..Options::default()
    })
    .await;
    wary.publish(&contact_event(json!({"region": "london"})))
        .await;
    let rows = eventually(Duration::from_secs(20), "tries put back", || async {
        let rows = wary.outbox().await;
        (rows.len() == 2 && rows.iter().all(|r| r.1 == "pending" && r.3.is_some())).then_some(rows)
    })
    .await;
    // A relay whose certificate is refused is as good as unreachable: not the email's fault.
    assert!(rows.iter().all(|r| r.2 == 0), "{rows:?}");
    assert_eq!(smtp.received().len(), before);
    wary.stop().await;
}

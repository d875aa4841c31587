//! The two listeners and how the public one defends itself: metrics and readiness only on the
//! admin address, slow clients cut off without holding the pages, bodies and requests bounded.

use crate::helpers::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMITS: &str = r#"
[http]
header_read_timeout_secs = 2
max_body_bytes = 4096
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_readiness_are_on_the_admin_listener_only() {
    let app = spawn_app().await;
    let on = |addr: std::net::SocketAddr, path: &'static str| async move {
        reqwest::get(format!("http://{addr}{path}"))
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    // Ready comes a moment after healthy: once the consumer consumes and the relay answers.
    eventually(
        Duration::from_secs(20),
        "the worker to be ready",
        || async { (on(app.admin, "/readyz").await == 200).then_some(()) },
    )
    .await;
    for path in ["/metrics", "/readyz", "/healthz"] {
        assert_eq!(on(app.http, path).await, 404, "{path} is not public");
        assert_eq!(
            on(app.admin, path).await,
            200,
            "{path} on the admin address"
        );
    }
    assert_eq!(on(app.admin, "/unsubscribe?token=x").await, 404);
    assert_eq!(on(app.http, "/unsubscribe?token=x").await, 400);
    app.stop().await;
}

/// Two hundred clients that send half a request head and then nothing (slowloris) do not keep
/// the pages from answering, and are cut off once the head has taken too long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_slow_clients_neither_hold_the_pages_nor_stay_for_ever() {
    let app = spawn_app_with(Options {
        profile_toml: format!("{FAST_TIMINGS}\n{LIMITS}"),
        ..Options::default()
    })
    .await;
    let mut slow = Vec::new();
    for _ in 0..200 {
        let mut s = tokio::net::TcpStream::connect(app.http).await.unwrap();
        s.write_all(b"GET /unsubscribe?token=x HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(s);
    }
    // The pages answer while all two hundred are held open.
    let (status, page) = app.get("/unsubscribe?token=not-a-token").await;
    assert_eq!(status, 400);
    assert!(page.contains("<html"), "{page}");
    // Each slow client is disconnected after the header read timeout (2 s here).
    for s in &mut slow {
        let mut buf = [0u8; 1024];
        let read = tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue, // a 408 before the close is fine
                }
            }
        })
        .await;
        assert!(read.is_ok(), "a slow client was left connected");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_over_the_limit_is_refused() {
    let app = spawn_app_with(Options {
        profile_toml: format!("{FAST_TIMINGS}\n{LIMITS}"),
        ..Options::default()
    })
    .await;
    let big = format!("List-Unsubscribe=One-Click&pad={}", "x".repeat(64 * 1024));
    let (status, _) = app.post("/unsubscribe?token=x", &big).await;
    assert_eq!(status, 413);
    let (status, _) = app
        .post("/unsubscribe?token=x", "List-Unsubscribe=One-Click")
        .await;
    assert_eq!(
        status, 400,
        "a small body reaches the page (which refuses the token)"
    );
    app.stop().await;
}

/// `/readyz` says which dependency failed, never its raw error (which can name hosts, users and
/// databases).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_names_what_failed_without_the_raw_error() {
    let app = spawn_app_with(Options {
        proxy_database: true,
        ..Options::default()
    })
    .await;
    app.database_proxy.as_ref().unwrap().cut();
    let body = eventually(Duration::from_secs(20), "a 503", || async {
        let (status, body) = app.get("/readyz").await;
        (status == 503).then_some(body)
    })
    .await;
    let line = body.lines().find(|l| l.starts_with("postgresql")).unwrap();
    assert!(
        line == "postgresql: unreachable" || line == "postgresql: no answer in time",
        "{body}"
    );
    app.database_proxy.as_ref().unwrap().restore();
    app.stop().await;
}

/// Secrets never show: not in `check`'s report of a broken configuration, not in the worker's
/// log from start to stop, not where a relay URL with a password is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_appear_in_no_output() {
    let token = "SECRET-token-key-0123456789-abcdefghijkl";
    let password = "SECRET-relay-pw";
    // `check` with secrets set and the relay refused (production: a password without TLS).
    let out = crate::cli::binary()
        .arg("check")
        .current_dir(manifest_dir())
        .env("RPEC_PROFILE", "production")
        .env("RPEC_TOKEN_SECRET", token)
        .env("RPEC_PUBLIC_URL", "https://rpec.example.org")
        .env(
            "RPEC_SMTP_URL",
            format!("smtp://mailer:{password}@relay.example.org:587"),
        )
        .env(
            "DATABASE_URL",
            "postgres://app:SECRET-db-pw@127.0.0.1:1/rpec",
        )
        .output()
        .unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "the relay password without TLS is refused"
    );
    assert!(printed.contains("RPEC_SMTP_URL"), "{printed}");
    assert!(!printed.contains("SECRET"), "{printed}");

    // The worker's whole log, with its token key from a file, a password in the database URL
    // (trust authentication takes any) and an enquiry handled.
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("token");
    std::fs::write(&key_file, token).unwrap();
    let smtp = SmtpServer::start_new();
    let mut deployment = crate::binary::Deployment::new(&smtp.url(), None).await;
    let db = deployment.env("DATABASE_URL");
    assert!(db.contains("postgres@"), "{db}");
    deployment.set_env(
        "DATABASE_URL",
        &db.replacen("postgres@", "postgres:SECRET-db-pw@", 1),
    );
    deployment.unset_env("RPEC_TOKEN_SECRET");
    deployment.set_env("RPEC_TOKEN_SECRET_FILE", &key_file.display().to_string());
    deployment.set_env("RUST_LOG", "debug,lapin=off");
    let worker = deployment.start().await;
    let file = dir.path().join("event.json");
    std::fs::write(
        &file,
        serde_json::to_vec(&contact_event(serde_json::json!({"region": "london"}))).unwrap(),
    )
    .unwrap();
    deployment.publish(&[&file]);
    eventually(Duration::from_secs(20), "the enquiry's emails", || async {
        (smtp.received().len() >= 2).then_some(())
    })
    .await;
    let (status, log) = worker.stop().await;
    assert!(status.success());
    assert!(log.contains("email sent"), "the log was captured");
    assert!(!log.contains("SECRET"), "a secret in the log");
    deployment.remove().await;
}

//! Benchmarks with thresholds (`make bench`), kept out of `make test` because the machine is
//! shared and timings are noisy. Real PostgreSQL, RabbitMQ and SMTP server, as in the tests.
//!
//!     cargo test --release --test bench -- --ignored --nocapture --test-threads 1

#[path = "it/helpers.rs"]
#[allow(dead_code)]
mod helpers;
// The harness uses the fault proxy (for tests that cut a dependency).
#[path = "it/proxy.rs"]
#[allow(dead_code)]
mod proxy;

use helpers::*;
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: make bench"]
async fn enquiry_throughput() {
    const N: usize = 500;
    let app = spawn_app_with(Options {
        profile_toml: format!("{FAST_TIMINGS}\n"),
        ..Options::default()
    })
    .await;
    let events: Vec<_> = (0..N)
        .map(|i| {
            contact_event(json!({"region": "london", "email": format!("p{i}@school.example.org")}))
        })
        .collect();
    let started = Instant::now();
    for e in &events {
        app.publish(e).await;
    }
    let published = started.elapsed();
    eventually(Duration::from_secs(300), "every email", || async {
        (app.smtp.received().len() >= 2 * N).then_some(())
    })
    .await;
    let all = started.elapsed();
    println!(
        "bench enquiry_throughput: {N} enquiries published in {:.2}s; {} emails received in {:.2}s: {:.0} enquiries/s, {:.0} emails/s",
        published.as_secs_f64(),
        2 * N,
        all.as_secs_f64(),
        N as f64 / all.as_secs_f64(),
        (2 * N) as f64 / all.as_secs_f64()
    );
    // Generous: a contact form's load is a few enquiries a minute.
    assert!(all < Duration::from_secs(120), "{N} enquiries took {all:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: make bench"]
async fn reminder_latency() {
    const N: usize = 100;
    // The shipped timings (1 s scheduler poll), not the tests' fast ones.
    let app = spawn_app_with(Options {
        profile_toml: "[database]\nacquire_timeout_secs = 5\n".into(),
        ..Options::default()
    })
    .await;
    let due = chrono::Utc::now() + chrono::Duration::seconds(10);
    let start = due + chrono::Duration::hours(1);
    app.publish(&session_event(
        "session.scheduled",
        "bench",
        &start.to_rfc3339(),
        &(start + chrono::Duration::hours(1)).to_rfc3339(),
        None,
    ))
    .await;
    for i in 0..N {
        app.publish(&registration_event(
            &format!("b{i}"),
            "bench",
            &format!("b{i}@school.example.org"),
        ))
        .await;
    }
    app.handled(N as i64 + 1).await;
    let reminders = eventually(Duration::from_secs(60), "every reminder", || async {
        let m = app.mails_starting("Reminder:");
        (m.len() >= N).then_some(m)
    })
    .await;
    let arrived = chrono::Utc::now();
    let worst = (arrived - due).num_milliseconds() as f64 / 1000.0;
    println!("bench reminder_latency: {} reminders due at once; the last arrived {worst:.2}s after the due time (contract: 30 s; aim: 5 s)", reminders.len());
    assert!(worst < 30.0, "the last reminder came {worst}s late");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: make bench"]
async fn newsletter_fan_out() {
    const READERS: i64 = 2_000;
    // The shipped send settings (8 at once, batches of 32).
    let smtp = SmtpServer::reserve();
    smtp.start();
    let app = spawn_app_with(Options {
        smtp: Some(smtp),
        profile_toml: "[database]\nacquire_timeout_secs = 5\n".into(),
        ..Options::default()
    })
    .await;
    sqlx::query(
        "INSERT INTO subscriptions (region, email, name, status, confirmed_at)
         SELECT 'north-west', 'reader' || g || '@school.example.org', 'Reader ' || g, 'confirmed', now()
         FROM generate_series(1, $1) AS g",
    )
    .bind(READERS)
    .execute(&app.pool)
    .await
    .unwrap();
    let started = Instant::now();
    app.publish(&json!({
        "id": uuid::Uuid::new_v4().to_string(), "type": "newsletter.published", "version": 1,
        "occurred_at": "2024-11-01T09:00:00Z",
        "data": {
            "newsletter_id": "bench", "region": "north-west", "subject": "Bench",
            "sections": [{"heading": "News", "body_markdown": "Some **news** and a [link](https://example.org)."}]
        }
    }))
    .await;
    app.handled(1).await;
    let queued = started.elapsed();
    eventually(Duration::from_secs(600), "every newsletter", || async {
        (app.smtp.received().len() as i64 >= READERS).then_some(())
    })
    .await;
    let all = started.elapsed();
    println!(
        "bench newsletter_fan_out: {READERS} copies queued in {:.2}s and delivered in {:.2}s ({:.0} emails/s)",
        queued.as_secs_f64(),
        all.as_secs_f64(),
        READERS as f64 / all.as_secs_f64()
    );
    assert!(all < Duration::from_secs(300), "the fan-out took {all:?}");
    app.stop().await;
}

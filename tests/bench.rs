//! Benchmarks with thresholds (`make bench`), kept out of `make test` because the machine is
//! shared and timings are noisy. Real PostgreSQL, RabbitMQ and SMTP server, as in the tests.
//!
//!     cargo test --release --test bench -- --ignored --nocapture --test-threads 1

#[path = "it/helpers.rs"]
#[allow(dead_code)]
mod helpers;

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

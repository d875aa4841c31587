//! The weekly regional digest: fires exactly once per occurrence in UK time, across both clock
//! changes, with several schedulers at once; `rpec-notify schedule` shows the times.

use crate::cli::binary;
use crate::helpers::*;
use chrono::Duration;
use rpec_notify::schedule::digest;
use rpec_notify::worker::Shared;

/// Walks a manual clock through [from, to] in steps of `step_minutes`, running a digest round of its own
/// at each step while the worker's scheduler runs too; returns the london firings recorded.
async fn firings_between(
    schedule: &str,
    from: &str,
    to: &str,
    step_minutes: i64,
) -> Vec<chrono::DateTime<chrono::Utc>> {
    let app = spawn_app_with(Options {
        regions_toml: Some(regions_with_digest("London", schedule)),
        ..Options::at(from)
    })
    .await;
    // A second scheduler, stepped by hand: the two must still fire each occurrence once.
    let shared = Shared::load(app.settings.clone(), app.clock.clone())
        .await
        .unwrap();
    let end = utc(to);
    while app.clock.now() < end {
        app.clock.advance(Duration::minutes(step_minutes));
        digest::fire_due(&shared).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let fired: Vec<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
        "SELECT fire_at FROM digest_runs WHERE region = 'london' ORDER BY fire_at",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    shared.pool.close().await;
    app.stop().await;
    fired
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_in_the_skipped_spring_hour_fires_once_when_the_clocks_jump() {
    // 01:30 does not exist on 30 March 2025: it fires once, at 02:00 BST (01:00 UTC).
    let fired = firings_between(
        "0 30 1 * * *",
        "2025-03-29T22:00:00Z",
        "2025-03-30T06:00:00Z",
        5,
    )
    .await;
    assert_eq!(fired, [utc("2025-03-30T01:00:00Z")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_in_the_repeated_autumn_hour_fires_once() {
    // 01:30 happens twice on 27 October 2024: it fires once, the first time (01:30 BST).
    let fired = firings_between(
        "0 30 1 * * *",
        "2024-10-26T22:00:00Z",
        "2024-10-27T06:00:00Z",
        5,
    )
    .await;
    assert_eq!(fired, [utc("2024-10-27T00:30:00Z")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_monday_schedule_keeps_nine_oclock_uk_time_across_the_autumn_change() {
    let fired = firings_between(
        "0 0 9 * * Mon",
        "2024-10-20T00:00:00Z",
        "2024-10-29T00:00:00Z",
        30,
    )
    .await;
    assert_eq!(
        fired,
        [utc("2024-10-21T08:00:00Z"), utc("2024-10-28T09:00:00Z")]
    );
}

#[test]
fn the_schedule_command_prints_the_next_digest_times_in_uk_time() {
    let out = binary()
        .current_dir(manifest_dir())
        .args(["schedule", "--region", "north-west", "--count", "3"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "north-west (North-West): \"0 0 9 * * Mon\"");
    assert_eq!(lines.len(), 4);
    for line in &lines[1..] {
        assert!(
            line.starts_with("  Monday ")
                && (line.ends_with(", 9:00am GMT") || line.ends_with(", 9:00am BST")),
            "{line}"
        );
    }
    let bad = binary()
        .args(["schedule", "--region", "wales"])
        .current_dir(manifest_dir())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown region id"));
}

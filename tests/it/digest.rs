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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_digest_lists_only_new_sessions_of_the_region_and_national_ones_to_confirmed_readers() {
    use crate::newsletter::{add_confirmed, link_to, path_of};
    // Sunday 20 October 2024; the default schedule fires on Mondays at 9am UK time.
    let app = spawn_app_with(Options::at("2024-10-20T00:00:00Z")).await;
    let pool = &app.pool;
    add_confirmed(
        pool,
        "north-west",
        "nw1@school.example.org",
        Some("Nia West"),
    )
    .await;
    add_confirmed(pool, "north-west", "nw2@school.example.org", None).await;
    add_confirmed(pool, "north-west", "gone@school.example.org", None).await;
    sqlx::query(
        "INSERT INTO suppressions (email, reason) VALUES ('gone@school.example.org', 'test')",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO subscriptions (region, email, status) VALUES ('north-west', 'pending@school.example.org', 'pending')")
        .execute(pool)
        .await
        .unwrap();
    add_confirmed(pool, "london", "ldn@school.example.org", None).await;
    let session = |id: &str, start: &str, region: Option<&str>| {
        let end = (utc(start) + Duration::hours(1)).to_rfc3339();
        let mut e = session_event("session.scheduled", id, start, &end, region);
        e["data"]["title"] = serde_json::json!(format!("Session {id}"));
        e
    };
    // The worker's digest state starts at its first round (for every region); sessions come
    // after that.
    eventually(
        std::time::Duration::from_secs(10),
        "every region's digest state",
        || async {
            (app.strings("SELECT region FROM digest_state").await.len() == 8).then_some(())
        },
    )
    .await;
    app.set_time("2024-10-20T01:00:00Z");
    app.publish(&session("national-a", "2024-11-10T15:00:00Z", None))
        .await;
    app.publish(&session("nw-b", "2024-11-12T15:00:00Z", Some("north-west")))
        .await;
    app.publish(&session("ldn-c", "2024-11-12T15:00:00Z", Some("london")))
        .await;
    app.publish(&session(
        "nw-started",
        "2024-10-19T15:00:00Z",
        Some("north-west"),
    ))
    .await;
    app.handled(4).await;

    app.set_time("2024-10-21T08:00:00Z");
    let first = app.exactly("New Prevent training sessions", 3).await;
    let to = |m: &Mail| m.envelope_to[0].clone();
    let mut recipients: Vec<String> = first.iter().map(to).collect();
    recipients.sort();
    assert_eq!(
        recipients,
        [
            "ldn@school.example.org",
            "nw1@school.example.org",
            "nw2@school.example.org"
        ]
    );
    let nw1 = first
        .iter()
        .find(|m| to(m) == "nw1@school.example.org")
        .unwrap();
    let text = nw1.text();
    assert!(text.contains("Dear Nia West,"), "{text}");
    assert!(
        text.contains("Session national-a") && text.contains("Session nw-b"),
        "{text}"
    );
    assert!(
        !text.contains("Session ldn-c") && !text.contains("Session nw-started"),
        "{text}"
    );
    assert!(text.contains("Sunday 10 November 2024, 3:00pm to 4:00pm"));
    assert!(nw1
        .header("From")
        .unwrap()
        .contains("rpec.newsletters@example.org"));
    assert!(
        nw1.header("List-Unsubscribe").is_some() && nw1.header("List-Unsubscribe-Post").is_some()
    );
    assert_eq!(
        nw1.header("List-Id").as_deref(),
        Some("<north-west.newsletters.example.org>")
    );
    let ldn = first
        .iter()
        .find(|m| to(m) == "ldn@school.example.org")
        .unwrap();
    assert!(ldn.text().contains("Session ldn-c") && ldn.text().contains("Session national-a"));
    assert!(!ldn.text().contains("Session nw-b"));

    // nw2 unsubscribes with one click from the digest.
    let nw2 = first
        .iter()
        .find(|m| to(m) == "nw2@school.example.org")
        .unwrap();
    let (status, _) = app
        .post(
            &path_of(&link_to(&nw2.text(), "/unsubscribe")),
            "List-Unsubscribe=One-Click",
        )
        .await;
    assert_eq!(status, 200);

    // A week later: only the session that is new since, to those still subscribed.
    app.set_time("2024-10-22T10:00:00Z");
    app.publish(&session("nw-e", "2024-11-20T15:00:00Z", Some("north-west")))
        .await;
    app.handled(5).await;
    app.set_time("2024-10-28T09:00:00Z");
    let all = app.exactly("New Prevent training sessions", 4).await;
    let second: Vec<&Mail> = all
        .iter()
        .filter(|m| m.text().contains("Session nw-e"))
        .collect();
    assert_eq!(second.len(), 1);
    assert_eq!(to(second[0]), "nw1@school.example.org");
    assert!(
        !second[0].text().contains("Session nw-b")
            && !second[0].text().contains("Session national-a")
    );

    // No new sessions: no email.
    app.set_time("2024-11-04T09:00:00Z");
    eventually(
        std::time::Duration::from_secs(10),
        "the third firing",
        || async {
            let n: Vec<String> = app
                .strings("SELECT region FROM digest_runs WHERE fire_at = '2024-11-04T09:00:00Z'")
                .await;
            (n.len() == 8).then_some(())
        },
    )
    .await;
    app.exactly("New Prevent training sessions", 4).await;
    app.stop().await;
}

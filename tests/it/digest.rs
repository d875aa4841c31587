//! The weekly regional digest: readers get it exactly once per occurrence in UK time, across
//! both clock changes, with two workers scheduling at once; `rpec-notify schedule` shows the
//! times.

use crate::cli::binary;
use crate::helpers::*;
use chrono::Duration;

/// The only London reader in the digest tests below.
const READER: &str = "ldn@school.example.org";

/// Two workers on one manual clock, with London's digest on `schedule` and one confirmed
/// London reader: the workers' own schedulers fire the digest (nothing here fires it), and
/// each check of the inbox comes after both have settled.
struct Walk {
    app: TestApp,
    sessions: i64,
}

impl Walk {
    async fn start(schedule: &str, from: &str) -> Walk {
        let mut app = spawn_app_with(Options {
            regions_toml: Some(regions_with_digest("London", schedule)),
            ..Options::at(from)
        })
        .await;
        app.add_worker().await;
        crate::newsletter::add_confirmed(&app.pool, "london", READER, Some("Lee Don")).await;
        // The digest state starts at the first round, at `from`: sessions learned of later
        // are new to the first firing.
        eventually(
            std::time::Duration::from_secs(10),
            "London's digest state",
            || async {
                (app.strings("SELECT region FROM digest_state WHERE region = 'london'")
                    .await
                    .len()
                    == 1)
                    .then_some(())
            },
        )
        .await;
        Walk { app, sessions: 0 }
    }

    /// A London session (`id`, months ahead) learned of at `at`.
    async fn new_session(&mut self, id: &str, at: &str) {
        self.app.set_time(at);
        let start = (utc(at) + Duration::days(60)).to_rfc3339();
        let end = (utc(at) + Duration::days(60) + Duration::hours(1)).to_rfc3339();
        let mut e = session_event("session.scheduled", id, &start, &end, Some("london"));
        e["data"]["title"] = serde_json::json!(format!("Session {id}"));
        self.app.publish(&e).await;
        self.sessions += 1;
        self.app.handled(self.sessions).await;
    }

    /// Moves the clock to `t`, lets both workers settle and returns the digests received.
    async fn at(&self, t: &str) -> Vec<Mail> {
        self.app.set_time(t);
        self.app.settle().await;
        let digests = self.app.mails_starting("New Prevent training sessions");
        assert!(
            digests.iter().all(|m| m.envelope_to == [READER]),
            "digests only to the London reader"
        );
        digests
    }

    /// Moves the clock to each of `times` in turn; at each, exactly `n` digests so far.
    async fn still(&self, times: &[&str], n: usize) {
        for t in times {
            let got = self.at(t).await.len();
            assert_eq!(got, n, "digests received with the clock at {t}");
        }
    }

    /// Every half hour from `from` to `to` (both included).
    fn half_hours(from: &str, to: &str) -> Vec<String> {
        let (mut t, end) = (utc(from), utc(to));
        let mut out = Vec::new();
        while t <= end {
            out.push(t.to_rfc3339());
            t += Duration::minutes(30);
        }
        out
    }

    async fn still_every_half_hour(&self, from: &str, to: &str, n: usize) {
        let times = Self::half_hours(from, to);
        self.still(&times.iter().map(String::as_str).collect::<Vec<_>>(), n)
            .await;
    }

    async fn stop(self) {
        // Each digest is one row, sent: none waits, none was dropped.
        let rows = self.app.outbox_of("digest").await;
        let sent = self
            .app
            .mails_starting("New Prevent training sessions")
            .len();
        assert_eq!(rows, [format!("sent:{sent}")]);
        self.app.stop().await;
    }
}

fn lists(mail: &Mail, session: &str) -> bool {
    mail.text().contains(&format!("Session {session}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_in_the_skipped_spring_hour_fires_once_when_the_clocks_jump() {
    // 01:30 does not exist on 30 March 2025: it fires once, at 02:00 BST (01:00 UTC).
    let mut walk = Walk::start("0 30 1 * * *", "2025-03-29T22:00:00Z").await;
    walk.new_session("spring-a", "2025-03-29T22:01:00Z").await;
    walk.still_every_half_hour("2025-03-29T22:30:00Z", "2025-03-30T00:30:00Z", 0)
        .await;
    walk.still(&["2025-03-30T00:59:59Z"], 0).await;
    let first = walk.at("2025-03-30T01:00:00Z").await;
    assert_eq!(first.len(), 1, "one digest at 02:00 BST");
    assert!(lists(&first[0], "spring-a"), "{}", first[0].text());
    // A session learned of after the firing would go in a second one: there is none that day.
    walk.new_session("spring-b", "2025-03-30T01:01:00Z").await;
    walk.still_every_half_hour("2025-03-30T01:30:00Z", "2025-03-30T06:00:00Z", 1)
        .await;
    walk.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_in_the_repeated_autumn_hour_fires_once() {
    // 01:30 happens twice on 27 October 2024: it fires once, the first time (01:30 BST).
    let mut walk = Walk::start("0 30 1 * * *", "2024-10-26T22:00:00Z").await;
    walk.new_session("autumn-a", "2024-10-26T22:01:00Z").await;
    walk.still_every_half_hour("2024-10-26T22:30:00Z", "2024-10-27T00:00:00Z", 0)
        .await;
    walk.still(&["2024-10-27T00:29:59Z"], 0).await;
    let first = walk.at("2024-10-27T00:30:00Z").await;
    assert_eq!(first.len(), 1, "one digest at 01:30 BST");
    assert!(lists(&first[0], "autumn-a"), "{}", first[0].text());
    // 01:30 GMT (01:30 UTC) comes next: the new session would show a second firing.
    walk.new_session("autumn-b", "2024-10-27T00:31:00Z").await;
    walk.still(&["2024-10-27T01:29:59Z", "2024-10-27T01:30:00Z"], 1)
        .await;
    walk.still_every_half_hour("2024-10-27T02:00:00Z", "2024-10-27T06:00:00Z", 1)
        .await;
    walk.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_monday_schedule_keeps_nine_oclock_uk_time_across_the_autumn_change() {
    let mut walk = Walk::start("0 0 9 * * Mon", "2024-10-20T00:00:00Z").await;
    walk.new_session("monday-a", "2024-10-20T00:01:00Z").await;
    walk.still(&["2024-10-21T07:59:59Z"], 0).await;
    let first = walk.at("2024-10-21T08:00:00Z").await;
    assert_eq!(first.len(), 1, "9am BST");
    assert!(lists(&first[0], "monday-a"));
    walk.new_session("monday-b", "2024-10-21T08:01:00Z").await;
    // Daily through the week, then the morning after the change: 9am is 09:00 UTC now.
    walk.still(
        &[
            "2024-10-22T08:00:00Z",
            "2024-10-23T08:00:00Z",
            "2024-10-24T08:00:00Z",
            "2024-10-25T08:00:00Z",
            "2024-10-26T08:00:00Z",
            "2024-10-27T08:00:00Z",
            "2024-10-28T08:00:00Z",
            "2024-10-28T08:59:59Z",
        ],
        1,
    )
    .await;
    let both = walk.at("2024-10-28T09:00:00Z").await;
    assert_eq!(both.len(), 2, "9am GMT");
    let second = both
        .iter()
        .find(|m| lists(m, "monday-b"))
        .expect("the new session");
    assert!(!lists(second, "monday-a"), "{}", second.text());
    walk.still(&["2024-10-28T12:00:00Z", "2024-10-29T00:00:00Z"], 2)
        .await;
    walk.stop().await;
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
    assert_eq!(
        app.outbox_of("digest").await,
        ["sent:4"],
        "a firing with no new sessions queues nothing"
    );
    app.stop().await;
}

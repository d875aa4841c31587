//! Clauses of the product contract (/CONTRACT.md at the time of writing) that no other test
//! pins: shutdown with work in hand, the production profile, per-region and national offsets,
//! a cancelled registrant, the field rules, headers on scheduled mail, `migrate` and `check`
//! through the binary, and the shipped defaults behind two promises.

use crate::binary::Deployment;
use crate::cli::binary;
use crate::helpers::*;
use crate::newsletter::{add_confirmed, newsletter, simple_sections};
use chrono::{Duration, Utc};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::time::Duration as StdDuration;

// ---------------------------------------------------------------------------------------------
// "run ... until SIGTERM/SIGINT, then drains and exits 0"

/// A newsletter to `readers` readers through a relay that takes `delay` per message; `signal`
/// arrives while rows are claimed and being sent. The worker exits 0 within 10 s, leaves no row
/// claimed (a claimed row would wait out its whole lease), and after a restart every reader
/// has had the newsletter once, but for at most `window` second copies (sends cut off in flight,
/// with the same Message-ID).
async fn signal_with_work_in_hand(signal: &str, delay: StdDuration, readers: i64, window: usize) {
    let smtp = SmtpServer::reserve().with_delay(delay);
    smtp.start();
    let deployment = Deployment::new(&smtp.url(), Some(FAST_TIMINGS)).await;
    let worker = deployment.start().await;
    let pool = deployment.pool().await;
    sqlx::query(
        "INSERT INTO subscriptions (region, email, name, status, confirmed_at)
         SELECT 'london', 'reader' || g || '@school.example.org', 'Reader ' || g, 'confirmed', now()
         FROM generate_series(1, $1) AS g",
    )
    .bind(readers)
    .execute(&pool)
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("newsletter.json");
    std::fs::write(
        &file,
        serde_json::to_vec(&newsletter("ldn-signal", "london", simple_sections())).unwrap(),
    )
    .unwrap();
    deployment.publish(&[&file]);

    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    eventually(
        StdDuration::from_secs(30),
        "emails claimed and being sent",
        || async {
            let sending = count("SELECT count(*) FROM outbox WHERE status = 'sending'").await;
            (sending > 0 && !smtp.received().is_empty()).then_some(())
        },
    )
    .await;
    let (status, took, log) = worker.stop_with(signal).await;
    assert!(status.success(), "{signal}: exit status {status:?}\n{log}");
    assert!(
        took < StdDuration::from_secs(10),
        "{signal}: exited after {took:?}"
    );
    let held =
        count("SELECT count(*) FROM outbox WHERE status = 'sending' AND claimed_until > now()")
            .await;
    assert_eq!(
        held, 0,
        "{signal}: rows left claimed by a worker that has exited"
    );
    let sent_at_exit = smtp.received().len() as i64;
    assert!(
        sent_at_exit < readers,
        "the signal came with work left ({sent_at_exit} sent)"
    );

    let worker = deployment.start().await;
    eventually(
        StdDuration::from_secs(120),
        "every newsletter sent after the restart",
        || async {
            (count("SELECT count(*) FROM outbox WHERE kind = 'newsletter' AND status = 'sent'")
                .await
                == readers)
                .then_some(())
        },
    )
    .await;
    let (status, _) = worker.stop().await;
    assert!(status.success());
    let mails = smtp.received();
    let mut copies: HashMap<String, HashSet<String>> = HashMap::new();
    for m in &mails {
        assert_eq!(m.envelope_to.len(), 1);
        copies
            .entry(m.envelope_to[0].clone())
            .or_default()
            .insert(m.header("Message-ID").expect("a Message-ID"));
    }
    assert_eq!(copies.len() as i64, readers, "every reader got it");
    assert!(
        copies.values().all(|ids| ids.len() == 1),
        "one Message-ID per reader"
    );
    let twice = mails.len() - readers as usize;
    assert!(
        twice <= window,
        "{signal}: {twice} second copies, at most {window} allowed ({sent_at_exit} sent before the signal)"
    );
    pool.close().await;
    deployment.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_emails_in_hand_exits_0_leaves_nothing_claimed_and_nobody_gets_two() {
    // A round in hand (one claimed batch) takes about 2 s here: inside the grace period.
    signal_with_work_in_hand("-TERM", StdDuration::from_millis(250), 60, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_with_emails_in_hand_exits_0_leaves_nothing_claimed_and_nobody_gets_two() {
    signal_with_work_in_hand("-INT", StdDuration::from_millis(250), 60, 0).await;
}

/// A relay so slow that the claimed batch cannot be sent within the grace period: the worker
/// must still exit 0 within 10 s and give back what it could not send, rather than leave it
/// claimed for a whole lease. Second copies are allowed for the sends cut off in flight (at most
/// `mail.concurrency`, 10 by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_more_in_hand_than_the_grace_period_gives_back_what_it_did_not_send() {
    signal_with_work_in_hand("-TERM", StdDuration::from_secs(3), 60, 10).await;
}

// ---------------------------------------------------------------------------------------------
// "production refuses to start without RPEC_TOKEN_SECRET, with a file:// relay or with a plain
// http public URL"; a secret of at least 32 bytes.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_production_profile_refuses_each_unsafe_setting_by_name_and_starts_when_all_are_safe() {
    let smtp = SmtpServer::start_new();
    let mut deployment = Deployment::new(&smtp.url(), None).await;
    deployment.set_env("RPEC_PROFILE", "production");
    let faults: [(&str, Option<&str>, &str); 4] = [
        ("RPEC_TOKEN_SECRET", None, "is required"),
        (
            "RPEC_TOKEN_SECRET",
            Some("0123456789012345678901234567890"),
            "at least 32 bytes",
        ),
        ("RPEC_SMTP_URL", Some("file:///tmp/rpec-mail"), "file://"),
        ("RPEC_PUBLIC_URL", Some("http://rpec.example.org"), "https"),
    ];
    assert_eq!(faults[1].1.unwrap().len(), 31);
    let safe = [
        ("RPEC_TOKEN_SECRET", TEST_TOKEN_SECRET.to_owned()),
        ("RPEC_SMTP_URL", smtp.url()),
        ("RPEC_PUBLIC_URL", "https://rpec.example.org".to_owned()),
    ];
    for (variable, value, reason) in faults {
        // One fault at a time: every other setting is the safe one.
        for (k, v) in &safe {
            deployment.set_env(k, v);
        }
        match value {
            Some(v) => deployment.set_env(variable, v),
            None => deployment.unset_env(variable),
        }
        let out = deployment.run_to_exit(StdDuration::from_secs(30)).await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{variable}={value:?}: it started\n{err}"
        );
        let line = err
            .lines()
            .find(|l| l.contains(variable))
            .unwrap_or_else(|| panic!("{variable}={value:?}: not named in\n{err}"));
        assert!(line.contains(reason), "{variable}={value:?}: {line}");
    }
    // Every setting safe: it starts, and stops cleanly.
    for (k, v) in &safe {
        deployment.set_env(k, v);
    }
    let worker = deployment.start().await;
    let (status, log) = worker.stop().await;
    assert!(status.success(), "{log}");
    assert!(!log.contains("dev key"), "no dev key in production:\n{log}");
    deployment.remove().await;
}

// ---------------------------------------------------------------------------------------------
// "Reminders are planned at the offsets configured for the session's region (national
// sessions: [national])"; "at the region's briefing_offset ... (national sessions: [national]
// coordinators)".

/// The shipped regions.toml with overrides for London and for national sessions.
fn regions_with_overrides() -> String {
    let text = std::fs::read_to_string(manifest_dir().join("config/regions.toml")).unwrap();
    let london = "name = \"London\"\n";
    let national = "[national]\nname = \"National\"\n";
    assert!(text.contains(london) && text.contains(national));
    text.replacen(
        london,
        &format!("{london}reminder_offsets = [\"2d\", \"30m\"]\nbriefing_offset = \"3h\"\n"),
        1,
    )
    .replacen(
        national,
        &format!("{national}reminder_offsets = [\"4h\"]\nbriefing_offset = \"2d\"\n"),
        1,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn region_and_national_offsets_override_the_defaults_for_reminders_and_briefings() {
    let app = spawn_app_with(Options {
        regions_toml: Some(regions_with_overrides()),
        ..Options::at("2024-10-01T00:00:00Z")
    })
    .await;
    // Both at 3pm BST on Thursday 10 October 2024 (14:00 UTC).
    for (id, region) in [("ldn-o", Some("london")), ("nat-o", None)] {
        app.publish(&session_event(
            "session.scheduled",
            id,
            "2024-10-10T15:00:00+01:00",
            "2024-10-10T16:00:00+01:00",
            region,
        ))
        .await;
        app.publish(&registration_event(
            &format!("r-{id}"),
            id,
            &format!("{id}@school.example.org"),
        ))
        .await;
    }
    app.handled(4).await;
    app.exactly("You are registered", 2).await;
    let plan = |planned: Vec<Planned>| -> Vec<(String, String, chrono::DateTime<Utc>)> {
        planned.into_iter().map(|p| (p.0, p.2, p.3)).collect()
    };
    let t = |kind: &str, offset: &str, at: &str| (kind.to_owned(), offset.to_owned(), utc(at));
    assert_eq!(
        plan(app.planned("ldn-o").await),
        [
            t("briefing", "3h", "2024-10-10T11:00:00Z"),
            t("reminder", "2d", "2024-10-08T14:00:00Z"),
            t("reminder", "30m", "2024-10-10T13:30:00Z"),
        ]
    );
    assert_eq!(
        plan(app.planned("nat-o").await),
        [
            t("briefing", "2d", "2024-10-08T14:00:00Z"),
            t("reminder", "4h", "2024-10-10T10:00:00Z"),
        ]
    );

    // And the emails go at those instants, to the right people.
    let to = |m: &Mail| m.envelope_to.clone();
    app.set_time("2024-10-08T13:59:59Z");
    app.exactly("Reminder:", 0).await;
    app.exactly("Briefing:", 0).await;
    app.set_time("2024-10-08T14:00:00Z");
    let reminders = app.exactly("Reminder:", 1).await;
    assert_eq!(to(&reminders[0]), ["ldn-o@school.example.org"]);
    assert!(reminders[0].subject().ends_with("starts in 2 days"));
    let briefings = app.exactly("Briefing:", 1).await;
    assert_eq!(to(&briefings[0]), ["prevent.national@example.org"]);
    app.set_time("2024-10-10T10:00:00Z");
    let reminders = app.exactly("Reminder:", 2).await;
    assert_eq!(to(&reminders[1]), ["nat-o@school.example.org"]);
    assert!(reminders[1].subject().ends_with("starts in 4 hours"));
    app.set_time("2024-10-10T11:00:00Z");
    let briefings = app.exactly("Briefing:", 2).await;
    assert_eq!(to(&briefings[1]), ["rpec.london@example.org"]);
    app.set_time("2024-10-10T13:30:00Z");
    let reminders = app.exactly("Reminder:", 3).await;
    assert_eq!(to(&reminders[2]), ["ldn-o@school.example.org"]);
    assert!(reminders[2].subject().ends_with("starts in 30 minutes"));
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// "registration.cancelled: no further email to that registrant about that session."

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_registrant_gets_no_moved_cancellation_or_new_link_email() {
    let app = spawn_app_with(Options::at("2024-10-01T00:00:00Z")).await;
    let session = |kind: &str, day: u32, link: &str, seconds_later: i64| {
        let mut e = session_event(
            kind,
            "s-gone",
            &format!("2024-10-{day}T15:00:00+01:00"),
            &format!("2024-10-{day}T16:00:00+01:00"),
            Some("london"),
        );
        e["data"]["joining_url"] = json!(format!("https://teams.example.org/join/{link}"));
        e["occurred_at"] = json!((Utc::now() + Duration::seconds(seconds_later)).to_rfc3339());
        e
    };
    app.publish(&session("session.scheduled", 10, "room-1", 0))
        .await;
    app.publish(&registration_event(
        "stay",
        "s-gone",
        "stay@school.example.org",
    ))
    .await;
    app.publish(&registration_event(
        "gone",
        "s-gone",
        "gone@school.example.org",
    ))
    .await;
    app.handled(3).await;
    app.exactly("You are registered", 2).await;
    app.publish(&simple_event(
        "registration.cancelled",
        json!({"registration_id": "gone"}),
    ))
    .await;
    app.handled(4).await;

    app.publish(&session("session.updated", 11, "room-1", 1))
        .await;
    let moved = app.exactly("Session moved", 1).await;
    app.publish(&session("session.updated", 11, "room-2", 2))
        .await;
    let link = app.exactly("Joining link", 1).await;
    app.publish(&simple_event(
        "session.cancelled",
        json!({"session_id": "s-gone"}),
    ))
    .await;
    let cancelled = app.exactly("Cancelled:", 1).await;
    for m in [&moved[0], &link[0], &cancelled[0]] {
        assert_eq!(
            m.envelope_to,
            ["stay@school.example.org"],
            "{}",
            m.subject()
        );
    }
    // Nothing but the confirmation was ever queued for the cancelled registrant.
    let kinds = app
        .strings(
            "SELECT kind FROM outbox WHERE 'gone@school.example.org' = ANY(recipients) ORDER BY id",
        )
        .await;
    assert_eq!(kinds, ["registration_confirmation"]);
    let to_gone = app
        .smtp
        .received()
        .into_iter()
        .filter(|m| {
            m.envelope_to
                .contains(&"gone@school.example.org".to_string())
        })
        .count();
    assert_eq!(to_gone, 1);
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// "Strings are trimmed; required strings must be non-empty after trimming. Limits: names and
// titles 200 chars, message bodies 10,000 chars." "No header ever contains a CR or LF that came
// from input."

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blank_required_strings_and_over_long_text_are_refused_by_name_and_the_limits_are_exact() {
    let app = spawn_app_with(Options::at("2024-10-01T00:00:00Z")).await;
    let session_with_title = |id: &str, title: &str| {
        let mut e = session_event(
            "session.scheduled",
            id,
            "2024-10-10T15:00:00+01:00",
            "2024-10-10T16:00:00+01:00",
            None,
        );
        e["data"]["title"] = json!(title);
        e
    };
    // Refused, each naming its field.
    let refused = [
        (contact_event(json!({"name": "  \t  "})), "data.name:"),
        (
            contact_event(json!({"organisation": " "})),
            "data.organisation:",
        ),
        (
            contact_event(json!({"message": " \n\r\n "})),
            "data.message:",
        ),
        (
            contact_event(json!({"message": "é".repeat(10_001)})),
            "data.message: too long",
        ),
        (session_with_title("s-blank", "   "), "data.title:"),
        (
            session_with_title("s-long", &"t".repeat(201)),
            "data.title: too long",
        ),
        (registration_event("r-blank", "s-any", "  "), "data.email:"),
    ];
    for (event, _) in &refused {
        app.publish(event).await;
    }
    let dead = app.dead_letters(refused.len()).await;
    for (event, detail) in &refused {
        let body = serde_json::to_vec(event).unwrap();
        let d = dead
            .iter()
            .find(|d| d.body == body)
            .unwrap_or_else(|| panic!("{detail} was not dead-lettered"));
        assert_eq!(d.error, "invalid_payload", "{}", d.detail);
        assert!(d.detail.starts_with(detail), "{detail}: {}", d.detail);
    }
    // At the limits: accepted (characters are counted, not bytes).
    let longest = "é".repeat(10_000);
    let enquiry = contact_event(json!({"region": "london", "message": longest}));
    app.publish(&enquiry).await;
    app.processed(enquiry["id"].as_str().unwrap()).await;
    let title = "T".repeat(200);
    let session = session_with_title("s-200", &title);
    app.publish(&session).await;
    app.processed(session["id"].as_str().unwrap()).await;
    let mails = app.mails(2).await;
    let coordinator = mails
        .iter()
        .find(|m| m.envelope_to == ["rpec.london@example.org"])
        .expect("the enquiry");
    assert!(coordinator.text().contains(&longest));
    let titles = app
        .strings("SELECT title FROM sessions WHERE session_id = 's-200'")
        .await;
    assert_eq!(titles, [title]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn line_breaks_in_a_session_title_never_reach_a_header() {
    let app = spawn_app_with(Options::at("2024-10-01T00:00:00Z")).await;
    let mut e = session_event(
        "session.scheduled",
        "s-crlf",
        "2024-10-10T15:00:00+01:00",
        "2024-10-10T16:00:00+01:00",
        Some("london"),
    );
    e["data"]["title"] = json!("Safeguarding\r\nBcc: leak@example.org\nX-Injected: yes\rend");
    app.publish(&e).await;
    app.publish(&registration_event(
        "r-crlf",
        "s-crlf",
        "jo@school.example.org",
    ))
    .await;
    app.handled(2).await;
    app.set_time("2024-10-09T14:00:00Z"); // the day reminder and the briefing
    let mut mails = app.exactly("You are registered", 1).await;
    mails.extend(app.exactly("Reminder:", 1).await);
    mails.extend(app.exactly("Briefing:", 1).await);
    for m in &mails {
        let names = m.header_names();
        assert!(
            !names.iter().any(|n| n == "bcc" || n == "x-injected"),
            "{names:?}"
        );
        let subject = m.subject();
        assert!(
            subject.contains("Safeguarding Bcc: leak@example.org X-Injected: yes end"),
            "{subject}"
        );
        assert!(!subject.contains(['\r', '\n']), "{subject:?}");
        assert!(!m.envelope_to.iter().any(|t| t.contains("leak")));
    }
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// "Every email ... has Message-ID, Date and, except newsletters, Auto-Submitted:
// auto-generated."

fn assert_standard_headers(m: &Mail, ids: &mut HashSet<String>) {
    let subject = m.subject();
    let id = m
        .header("Message-ID")
        .unwrap_or_else(|| panic!("{subject}: no Message-ID"));
    assert!(
        id.starts_with('<') && id.ends_with('>') && id.contains('@'),
        "{subject}: {id}"
    );
    assert!(ids.insert(id.clone()), "{subject}: {id} used twice");
    let date = m
        .header("Date")
        .unwrap_or_else(|| panic!("{subject}: no Date"));
    chrono::DateTime::parse_from_rfc2822(&date)
        .unwrap_or_else(|e| panic!("{subject}: Date {date:?}: {e}"));
    assert_eq!(
        m.header("Auto-Submitted").as_deref(),
        Some("auto-generated"),
        "{subject}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reminders_briefings_and_digests_carry_message_id_date_and_auto_submitted() {
    // Sunday 20 October 2024: the default digest fires on Monday at 9am UK time.
    let app = spawn_app_with(Options::at("2024-10-20T00:00:00Z")).await;
    add_confirmed(&app.pool, "london", "reader@school.example.org", None).await;
    eventually(StdDuration::from_secs(10), "the digest state", || async {
        (app.strings("SELECT region FROM digest_state").await.len() == 8).then_some(())
    })
    .await;
    app.set_time("2024-10-20T01:00:00Z");
    app.publish(&session_event(
        "session.scheduled",
        "s-hdr",
        "2024-10-22T15:00:00+01:00",
        "2024-10-22T16:00:00+01:00",
        Some("london"),
    ))
    .await;
    app.publish(&registration_event(
        "r-hdr",
        "s-hdr",
        "jo@school.example.org",
    ))
    .await;
    app.handled(2).await;
    app.set_time("2024-10-21T08:00:00Z");
    let digest = app.exactly("New Prevent training sessions", 1).await;
    app.set_time("2024-10-21T14:00:00Z");
    let reminder = app.exactly("Reminder:", 1).await;
    let briefing = app.exactly("Briefing:", 1).await;
    let mut ids = HashSet::new();
    for m in [&digest[0], &reminder[0], &briefing[0]] {
        assert_standard_headers(m, &mut ids);
    }
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Command line: `migrate` on its own; `check` naming the place of a problem.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_on_its_own_applies_every_migration_once() {
    let deployment = Deployment::new("file:///tmp/rpec-unused", None).await;
    let migrations = std::fs::read_dir(manifest_dir().join("migrations"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql"))
        })
        .count() as i64;
    assert!(migrations > 0);
    let pool = deployment.pool().await;
    for run in ["first", "second"] {
        let out = deployment.command(&["migrate"]);
        assert!(
            out.status.success(),
            "{run} run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("migrations applied"));
        let (applied, ok): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE success) FROM _sqlx_migrations",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!((applied, ok), (migrations, migrations), "{run} run");
    }
    // The schema is there: the outbox the worker sends from.
    let (rows,): (i64,) = sqlx::query_as("SELECT count(*) FROM outbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);
    pool.close().await;
    deployment.remove().await;
}

/// `rpec-notify check` against a copy of the shipped config with `rpec.toml` edited by `edit`,
/// and extra environment `env`; returns (success, the problems it listed, one a line).
fn check_with(edit: impl Fn(String) -> String, env: &[(&str, &str)]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    for f in ["rpec.toml", "regions.toml", "bank-holidays.toml"] {
        std::fs::copy(manifest_dir().join("config").join(f), dir.path().join(f)).unwrap();
    }
    let path = dir.path().join("rpec.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let edited = edit(text.clone());
    std::fs::write(&path, &edited).unwrap();
    let out = binary()
        .arg("check")
        .env("RPEC_CONFIG_DIR", dir.path())
        .env("RPEC_TEMPLATES_DIR", manifest_dir().join("templates"))
        .envs(env.iter().copied())
        .output()
        .unwrap();
    // Only the problem list (`  - place: message`), not the log lines around it.
    let problems: Vec<String> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| l.strip_prefix("  - "))
        .map(str::to_owned)
        .collect();
    (out.status.success(), problems.join("\n"))
}

#[test]
fn check_names_the_place_of_a_problem_in_rpec_toml_and_in_the_environment() {
    let same = |t: String| t;
    let (ok, err) = check_with(same, &[]);
    assert!(ok, "the shipped settings pass: {err}");

    let (ok, err) = check_with(|t| t.replace("concurrency = 10", "concurrency = 0"), &[]);
    assert!(!ok);
    assert!(
        err.lines()
            .any(|l| l.ends_with("rpec.toml: mail.concurrency: must be greater than 0")),
        "{err}"
    );
    let (ok, err) = check_with(
        |t| t.replace("[mail]\n", "[mail]\ncolour = \"blue\"\n"),
        &[],
    );
    assert!(!ok);
    assert!(
        err.lines()
            .any(|l| l.contains("rpec.toml") && l.contains("colour")),
        "{err}"
    );
    let (ok, err) = check_with(|t| t.replace("prefetch = 16", "prefetch = \"many\""), &[]);
    assert!(!ok);
    assert!(
        err.lines()
            .any(|l| l.contains("rpec.toml") && l.contains("prefetch")),
        "{err}"
    );

    for (variable, value) in [
        ("RPEC_SMTP_URL", "ftp://relay.example.org"),
        ("RPEC_TOKEN_SECRET", "too short"),
        ("RPEC_HTTP_ADDR", "not an address"),
        ("RPEC_PUBLIC_URL", "rpec.example.org"),
        ("RPEC_PROFILE", "staging"),
    ] {
        let (ok, err) = check_with(same, &[(variable, value)]);
        assert!(!ok, "{variable}={value:?} passed");
        assert!(
            err.lines().any(|l| l.starts_with(variable)),
            "{variable}={value:?} not named: {err}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The shipped defaults behind two promises: a registration for an unknown session is retried
// "for up to 10 minutes", and "a reminder is sent within 30 seconds of its due time".

#[test]
fn the_shipped_defaults_keep_the_ten_minute_wait_and_the_thirty_second_reminder_promise() {
    let env: HashMap<String, String> = [(
        "RPEC_CONFIG_DIR".to_owned(),
        manifest_dir().join("config").display().to_string(),
    )]
    .into();
    let s = rpec_notify::config::Settings::load_from(&env).expect("the shipped settings");
    assert_eq!(s.unknown_session_wait, StdDuration::from_secs(600));
    // Due, then handed to the outbox by the next scheduler round, then claimed by the sender
    // (woken by the commit, or at worst by its poll): both waits together inside 30 s. (The
    // real-clock test in ops.rs sends one with these defaults and times it.)
    assert!(
        s.schedule_poll_interval + s.mail.send_poll_interval < StdDuration::from_secs(30),
        "scheduler poll {:?} + sender poll {:?}",
        s.schedule_poll_interval,
        s.mail.send_poll_interval
    );
}

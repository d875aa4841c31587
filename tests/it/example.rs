//! `rpec-notify example --future`: the set it writes is valid, and a worker given it sends a
//! confirmation at once, then a reminder and the coordinators' briefing within minutes.

use crate::cli::binary;
use crate::helpers::*;
use chrono::Utc;
use rpec_notify::clock::Clock;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_future_example_set_brings_a_confirmation_then_a_reminder_and_a_briefing() {
    let dir = tempfile::tempdir().unwrap();
    let out = binary()
        .args(["example", "--future", "--lead", "3", "--out"])
        .arg(dir.path())
        .env("RPEC_CONFIG_DIR", manifest_dir().join("config"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("first reminder (1d before)"), "{stdout}");
    let mut files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 5, "{files:?}");

    // validate takes every file.
    let validated = binary()
        .arg("validate")
        .args(&files)
        .env("RPEC_CONFIG_DIR", manifest_dir().join("config"))
        .output()
        .unwrap();
    assert_eq!(
        validated.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&validated.stdout)
    );

    // A worker whose clock stands when the set was written (however slow this machine is to
    // start it), given the set in its order (the newsletter aside: it has no confirmed
    // subscribers yet).
    let session: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&files[0]).unwrap()).unwrap();
    let written = utc(session["occurred_at"].as_str().unwrap());
    assert!(written <= Utc::now());
    let app = spawn_app_with(Options {
        clock: Some(Clock::manual(written)),
        ..Options::default()
    })
    .await;
    for file in &files[..4] {
        let event: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        app.publish(&event).await;
    }
    app.handled(4).await;
    // At once: the confirmation, the enquiry to North-West and its acknowledgement, and the
    // subscription's confirmation email.
    let first = app.mails(4).await;
    let subjects: Vec<String> = first.iter().map(Mail::subject).collect();
    assert!(
        subjects
            .iter()
            .any(|s| s.starts_with("You are registered: ")),
        "{subjects:?}"
    );
    assert!(
        !subjects.iter().any(|s| s.starts_with("Reminder: ")),
        "{subjects:?}"
    );
    assert!(
        !subjects.iter().any(|s| s.starts_with("Briefing: ")),
        "{subjects:?}"
    );

    // Within minutes: the 1-day reminder and the briefing.
    app.clock.advance(chrono::Duration::minutes(5));
    let later = app.mails(first.len() + 2).await;
    let subjects: Vec<String> = later.iter().map(Mail::subject).collect();
    let reminder = later
        .iter()
        .find(|m| m.subject().starts_with("Reminder: "))
        .unwrap_or_else(|| panic!("a reminder among {subjects:?}"));
    assert!(
        reminder.subject().ends_with("starts tomorrow"),
        "{}",
        reminder.subject()
    );
    assert!(
        subjects.iter().any(|s| s.starts_with("Briefing: ")),
        "{subjects:?}"
    );
    app.stop().await;
}

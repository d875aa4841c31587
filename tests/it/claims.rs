//! Claiming enquiries and escalating the unclaimed ones, on a manual clock: deadlines in
//! working time (weekends, bank holidays, a clock change), claims by link and by event, the
//! check at send time, several workers, `enquiries open`, erasure.

use crate::cli::binary;
use crate::helpers::*;
use crate::newsletter::{link_to, path_of};
use serde_json::{json, Value};
use std::time::Duration;

pub const NATIONAL: &str = "prevent.national@example.org";
pub const TRIAGE: &str = "prevent.triage@example.org";
pub const NORTH_WEST: &str = "rpec.north-west@example.org";

/// The shipped regions.toml with working days from `opens` (HH:MM) to 18:00.
fn regions_opening_at(opens: &str) -> String {
    let text = std::fs::read_to_string(manifest_dir().join("config/regions.toml")).unwrap();
    assert!(text.contains("opens = \"08:00\""));
    text.replacen("opens = \"08:00\"", &format!("opens = \"{opens}\""), 1)
}

pub fn complex_case() -> Value {
    contact_event(json!({"topic": "complex-case", "region": "north-west"}))
}

pub fn enquiry_id(event: &Value) -> String {
    event["data"]["enquiry_id"].as_str().unwrap().to_owned()
}

pub async fn escalation_level(app: &TestApp, enquiry_id: &str) -> i16 {
    sqlx::query_scalar("SELECT escalation_level FROM enquiries WHERE enquiry_id = $1")
        .bind(enquiry_id)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// Nothing about an escalation has been sent or is waiting (after the workers have settled).
pub async fn assert_not_escalated(app: &TestApp, id: &str) {
    app.settle().await;
    assert!(app.mails_starting("UNCLAIMED").is_empty());
    assert!(app.mails_starting("REMINDER").is_empty());
    assert_eq!(escalation_level(app, id).await, 0);
    let queued: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE kind IN ('enquiry_escalation', 'enquiry_reminder')",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(queued, 0);
}

/// The mail to `to` among `mails`.
fn to<'a>(mails: &'a [Mail], to: &str) -> &'a Mail {
    mails
        .iter()
        .find(|m| m.envelope_to == [to])
        .unwrap_or_else(|| panic!("no mail to {to}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_complex_case_on_friday_afternoon_escalates_on_monday_morning_across_the_clock_change() {
    // Working days 09:00 to 18:00. Friday 28 March 2025, 4:30pm GMT: 1.5 working hours that
    // day; the clocks go forward on Sunday; the other 0.5 hours end at 9:30am BST on Monday.
    let app = spawn_app_with(Options {
        regions_toml: Some(regions_opening_at("09:00")),
        ..Options::at("2025-03-28T16:30:00Z")
    })
    .await;
    let event = complex_case();
    let id = enquiry_id(&event);
    app.publish(&event).await;
    let mails = app.mails(2).await;
    let ack = to(&mails, "s.okafor@school.example.org");
    assert!(
        ack.text()
            .contains("A coordinator should contact you by Monday 31 March 2025, 9:30am."),
        "{}",
        ack.text()
    );
    assert!(ack.html().contains("Monday 31 March 2025, 9:30am"));
    let copy = to(&mails, NORTH_WEST);
    assert!(copy.text().contains(
        "If nobody claims it by Monday 31 March 2025, 9:30am, it is passed to the national coordinators."
    ));
    assert!(copy.text().contains("I will answer this: http://"));

    // Saturday, and Monday a minute before: nothing.
    app.set_time("2025-03-29T12:00:00Z");
    assert_not_escalated(&app, &id).await;
    app.set_time("2025-03-31T08:29:00Z");
    assert_not_escalated(&app, &id).await;

    // Monday 9:30am BST.
    app.set_time("2025-03-31T08:30:00Z");
    let escalation = app.exactly("UNCLAIMED: URGENT:", 1).await.remove(0);
    let mut recipients = escalation.envelope_to.clone();
    recipients.sort();
    assert_eq!(recipients, [NATIONAL, TRIAGE]);
    let text = escalation.text();
    assert!(
        text.contains("nobody in the North-West region has claimed this enquiry"),
        "{text}"
    );
    assert!(text.contains("It has waited 2 working hours (since Friday 28 March 2025, 4:30pm)"));
    assert!(text.contains(&id));
    assert_eq!(escalation.header("Importance").as_deref(), Some("high"));
    assert_eq!(
        escalation.reply_to().as_deref(),
        Some("s.okafor@school.example.org")
    );
    let reminder = app.exactly("REMINDER, not yet claimed: URGENT:", 1).await;
    assert_eq!(reminder[0].envelope_to, [NORTH_WEST]);
    assert_eq!(escalation_level(&app, &id).await, 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_late_august_bank_holiday_is_not_a_working_day() {
    // Friday 22 August 2025, 5:30pm BST, shipped hours (08:00 to 18:00): half an hour on Friday;
    // Monday 25th is the summer bank holiday; the deadline is Tuesday 9:30am.
    let app = spawn_app_with(Options::at("2025-08-22T16:30:00Z")).await;
    let event = complex_case();
    let id = enquiry_id(&event);
    app.publish(&event).await;
    let mails = app.mails(2).await;
    assert!(to(&mails, "s.okafor@school.example.org")
        .text()
        .contains("by Tuesday 26 August 2025, 9:30am."));
    app.set_time("2025-08-25T11:00:00Z");
    assert_not_escalated(&app, &id).await;
    app.set_time("2025-08-26T08:29:59Z");
    assert_not_escalated(&app, &id).await;
    app.set_time("2025-08-26T08:30:00Z");
    app.exactly("UNCLAIMED: URGENT:", 1).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_between_queuing_and_sending_stops_the_escalation() {
    // The relay is down, so the escalation waits in the outbox once queued. Its tries are 2 s
    // apart, so that the claim below falls between two of them: a try that had read the
    // enquiry as unclaimed just before the claim, and reached the relay just after it came
    // back, would send it (the check is when the email is composed).
    let slow_retries = FAST_TIMINGS.replace(
        "initial_secs = 0.2\nmax_secs = 1.0",
        "initial_secs = 2.0\nmax_secs = 2.0",
    );
    assert_ne!(slow_retries, FAST_TIMINGS);
    let app = spawn_app_with(Options {
        smtp: Some(SmtpServer::reserve()),
        profile_toml: slow_retries,
        ..Options::at("2025-03-25T10:00:00Z")
    })
    .await;
    let event = complex_case();
    let id = enquiry_id(&event);
    app.publish(&event).await;
    app.handled(1).await;
    // Tuesday noon GMT: two working hours later.
    app.set_time("2025-03-25T12:00:00Z");
    eventually(Duration::from_secs(20), "the escalation queued", || async {
        (escalation_level(&app, &id).await == 1).then_some(())
    })
    .await;
    assert_eq!(app.outbox_of("enquiry_escalation").await.len(), 1);
    eventually(
        Duration::from_secs(20),
        "the escalation and the reminder waiting for their next tries",
        || async {
            let waiting: bool = sqlx::query_scalar(
                "SELECT coalesce(bool_and(status = 'pending' AND deferrals > 0
                                 AND next_attempt_at > now() + interval '1 second'), false)
                 FROM outbox WHERE kind IN ('enquiry_escalation', 'enquiry_reminder')",
            )
            .fetch_one(&app.pool)
            .await
            .unwrap();
            waiting.then_some(())
        },
    )
    .await;
    // A coordinator claims it from their copy (its link, as the email would carry it).
    let copy_id: i64 = sqlx::query_scalar(
        "SELECT id FROM enquiry_copies WHERE enquiry_id = $1 AND kind = 'enquiry'",
    )
    .bind(&id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let link = rpec_notify::tokens::Links::from_settings(&app.settings).link(
        rpec_notify::tokens::Purpose::Claim,
        copy_id,
        chrono::Utc::now(),
    );
    let (status, page) = app.post(&path_of(&link), "").await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains(&format!("You have claimed enquiry {id}")),
        "{page}"
    );

    app.smtp.start();
    eventually(
        Duration::from_secs(30),
        "every email sent or cancelled",
        || async {
            let rows = app.outbox().await;
            rows.iter()
                .all(|r| r.1 == "sent" || r.1 == "cancelled")
                .then_some(())
        },
    )
    .await;
    app.settle().await;
    assert_eq!(app.outbox_of("enquiry_escalation").await, ["cancelled:1"]);
    assert_eq!(app.outbox_of("enquiry_reminder").await, ["cancelled:1"]);
    assert!(app.mails_starting("UNCLAIMED").is_empty());
    assert!(app.mails_starting("REMINDER").is_empty());
    // The enquiry and its acknowledgement did go.
    assert_eq!(app.smtp.received().len(), 2);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_claim_wins_and_the_second_page_says_who_has_it() {
    let regions = std::fs::read_to_string(manifest_dir().join("config/regions.toml"))
        .unwrap()
        .replacen(
            &format!("coordinators = [\"{NORTH_WEST}\"]"),
            &format!("coordinators = [\"{NORTH_WEST}\", \"deputy.north-west@example.org\"]"),
            1,
        );
    let app = spawn_app_with(Options {
        regions_toml: Some(regions),
        ..Options::at("2025-03-25T10:00:00Z")
    })
    .await;
    let event = contact_event(json!({"region": "north-west"}));
    let id = enquiry_id(&event);
    app.publish(&event).await;
    let mails = app.mails(3).await;
    // Each mailbox has its own copy, with its own link.
    let first = link_to(&to(&mails, NORTH_WEST).text(), "/enquiries/claim");
    let second = link_to(
        &to(&mails, "deputy.north-west@example.org").text(),
        "/enquiries/claim",
    );
    assert_ne!(first, second);
    assert!(to(&mails, NORTH_WEST)
        .html()
        .contains(">I will answer this</a>"));

    // Opening a link changes nothing.
    let (status, page) = app.get(&path_of(&first)).await;
    assert_eq!(status, 200);
    assert!(
        page.contains(&format!("Will you answer enquiry {id}?")),
        "{page}"
    );
    let claimed: Option<String> =
        sqlx::query_scalar("SELECT claimed_by FROM enquiries WHERE enquiry_id = $1")
            .bind(&id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(claimed, None);

    let (status, page) = app.post(&path_of(&first), "").await;
    assert_eq!(status, 200);
    assert!(
        page.contains(&format!("You have claimed enquiry {id}")),
        "{page}"
    );
    assert!(page.contains("taken by rpec.north-west@example.org on Tuesday 25 March 2025, 10:00am"));

    for (status, page) in [
        app.post(&path_of(&second), "").await,
        app.get(&path_of(&second)).await,
    ] {
        assert_eq!(status, 200);
        assert!(
            page.contains(&format!("Enquiry {id} is already claimed")),
            "{page}"
        );
        assert!(
            page.contains(
                "rpec.north-west@example.org claimed it on Tuesday 25 March 2025, 10:00am."
            ),
            "{page}"
        );
    }
    let (_, page) = app.post(&path_of(&first), "").await;
    assert!(page.contains("It was claimed from your mailbox"), "{page}");
    let (by, via): (Option<String>, Option<String>) =
        sqlx::query_as("SELECT claimed_by, claimed_via FROM enquiries WHERE enquiry_id = $1")
            .bind(&id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(by.as_deref(), Some(NORTH_WEST));
    assert_eq!(via.as_deref(), Some("link"));
    assert_eq!(
        app.metric(
            "rpec_enquiry_time_to_claim_seconds_count{region=\"north-west\",topic=\"training\"}"
        )
        .await,
        1.0
    );

    // A forged or altered link gets the 400 page and changes nothing.
    let mut altered = path_of(&second);
    let last = altered.len() - 1;
    let c = if &altered[last..] == "A" { "B" } else { "A" };
    altered.replace_range(last.., c);
    for (status, page) in [app.get(&altered).await, app.post(&altered, "").await] {
        assert_eq!(status, 400);
        assert!(page.contains("This link does not work"), "{page}");
    }
    let (status, _) = app.post("/enquiries/claim?token=forged", "").await;
    assert_eq!(status, 400);
    // A confirmation link's token is refused here.
    let confirm = rpec_notify::tokens::Links::from_settings(&app.settings).link(
        rpec_notify::tokens::Purpose::Confirm,
        1,
        chrono::Utc::now(),
    );
    let token = confirm.split_once("token=").unwrap().1;
    let (status, _) = app
        .post(&format!("/enquiries/claim?token={token}"), "")
        .await;
    assert_eq!(status, 400);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enquiry_claimed_from_the_bus_stops_escalation() {
    let app = spawn_app_with(Options::at("2025-03-25T10:00:00Z")).await;
    let event = complex_case();
    let id = enquiry_id(&event);
    app.publish(&event).await;
    app.mails(2).await;
    let claim = simple_event(
        "enquiry.claimed",
        json!({"enquiry_id": id, "by": "case.officer@example.org", "note": "Called the DSL back"}),
    );
    app.publish(&claim).await;
    app.processed(claim["id"].as_str().unwrap()).await;
    // A week later, past both deadlines.
    app.set_time("2025-04-01T10:00:00Z");
    assert_not_escalated(&app, &id).await;
    let (by, via, note): (Option<String>, Option<String>, Option<String>) = sqlx::query_as(
        "SELECT claimed_by, claimed_via, claim_note FROM enquiries WHERE enquiry_id = $1",
    )
    .bind(&id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(by.as_deref(), Some("case.officer@example.org"));
    assert_eq!(via.as_deref(), Some("event"));
    assert_eq!(note.as_deref(), Some("Called the DSL back"));
    assert_eq!(
        app.metric(
            "rpec_enquiry_time_to_claim_seconds_count{region=\"north-west\",topic=\"complex-case\"}"
        )
        .await,
        1.0
    );
    // A claim with a bad address is refused by name.
    app.publish(&simple_event(
        "enquiry.claimed",
        json!({"enquiry_id": id, "by": "not an address"}),
    ))
    .await;
    let dead = app.dead_letters(1).await;
    assert_eq!(dead[0].error, "invalid_payload");
    assert!(dead[0].detail.starts_with("data.by:"), "{}", dead[0].detail);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_send_one_escalation_per_deadline() {
    let mut app = spawn_app_with(Options::at("2025-03-25T10:00:00Z")).await;
    app.add_worker().await;
    app.add_worker().await;
    let event = complex_case();
    let id = enquiry_id(&event);
    app.publish(&event).await;
    app.mails(2).await;
    // The first deadline: Tuesday noon.
    app.set_time("2025-03-25T12:00:00Z");
    let first = app.exactly("UNCLAIMED: URGENT:", 1).await;
    assert_eq!(first[0].envelope_to.len(), 2);
    app.exactly("REMINDER", 1).await;
    // The second notice a working day (10 hours) later: Wednesday noon, national only.
    app.set_time("2025-03-26T11:59:00Z");
    app.settle().await;
    assert!(app.mails_starting("UNCLAIMED: SECOND NOTICE:").is_empty());
    app.set_time("2025-03-26T12:00:00Z");
    let second = app.exactly("UNCLAIMED: SECOND NOTICE: URGENT:", 1).await;
    assert_eq!(second[0].envelope_to, [NATIONAL]);
    assert!(second[0].text().contains("This is the second notice"));
    assert!(
        second[0].text().contains("It has waited 12 working hours"),
        "{}",
        second[0].text()
    );
    // And nothing more, ever.
    app.set_time("2025-04-30T12:00:00Z");
    app.settle().await;
    assert_eq!(app.mails_starting("UNCLAIMED").len(), 2);
    assert_eq!(app.mails_starting("REMINDER").len(), 1);
    assert_eq!(escalation_level(&app, &id).await, 2);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enquiries_open_lists_the_unclaimed_without_personal_data() {
    let app = spawn_app_with(Options::at("2025-03-25T10:00:00Z")).await;
    let open = contact_event(json!({"region": "north-west", "name": "Robin Private",
                                    "email": "robin.private@school.example.org"}));
    let triage = contact_event(json!({"topic": "local-risk", "name": "Robin Private"}));
    let claimed = complex_case();
    for e in [&open, &triage, &claimed] {
        app.publish(e).await;
    }
    let claim = simple_event(
        "enquiry.claimed",
        json!({"enquiry_id": enquiry_id(&claimed), "by": NORTH_WEST}),
    );
    app.publish(&claim).await;
    app.handled(4).await;

    let run = |args: &'static [&'static str]| {
        let mut c = binary();
        c.args(args)
            .current_dir(manifest_dir())
            .env("DATABASE_URL", database_url_for(&app.db_name))
            .env("RPEC_CONFIG_DIR", &app.settings.config_dir)
            .env("RPEC_TOKEN_SECRET", TEST_TOKEN_SECRET);
        tokio::process::Command::from(c).output()
    };
    let out = run(&["enquiries", "open", "--json"]).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["count"], 2, "{report}");
    let ids: Vec<&str> = report["unclaimed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["enquiry_id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&enquiry_id(&open).as_str()));
    assert!(ids.contains(&enquiry_id(&triage).as_str()));
    let row = &report["unclaimed"][0];
    for key in [
        "topic",
        "region",
        "age_working_hours",
        "deadline",
        "deadline_uk",
    ] {
        assert!(!row[key].is_null(), "{key}: {row}");
    }
    assert!(
        !stdout.contains("Robin") && !stdout.contains("robin.private"),
        "{stdout}"
    );

    let out = run(&["enquiries", "open", "--region", "north-west"])
        .await
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(table.contains(&enquiry_id(&open)), "{table}");
    assert!(!table.contains(&enquiry_id(&triage)), "{table}");
    assert!(
        table.contains("Friday 28 March 2025, 10:00am"),
        "3 working days: {table}"
    );
    assert!(table.contains("1 unclaimed"), "{table}");
    assert!(!table.contains("Robin"));

    let out = run(&["enquiries", "open", "--region", "mid-england"])
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));

    assert_eq!(
        app.metric("rpec_enquiries_open_unclaimed{region=\"north-west\",topic=\"training\"}")
            .await,
        1.0
    );
    assert_eq!(
        app.metric("rpec_enquiries_open_unclaimed{region=\"triage\",topic=\"local-risk\"}")
            .await,
        1.0
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasing_the_enquirer_keeps_the_claim_without_their_data() {
    let app = spawn_app_with(Options::at("2025-03-25T10:00:00Z")).await;
    let name = "Alex Erasable";
    let address = "alex.erasable@school.example.org";
    let event = contact_event(
        json!({"region": "north-west", "name": name, "email": address,
                                     "topic": "complex-case"}),
    );
    let id = enquiry_id(&event);
    app.publish(&event).await;
    app.mails(2).await;
    // Escalated (its emails name them), then claimed with a note that names them.
    app.set_time("2025-03-25T12:00:00Z");
    app.exactly("UNCLAIMED", 1).await;
    let claim = simple_event(
        "enquiry.claimed",
        json!({"enquiry_id": id, "by": NORTH_WEST, "note": format!("Rang {name}")}),
    );
    app.publish(&claim).await;
    app.processed(claim["id"].as_str().unwrap()).await;
    assert!(!find_everywhere(&app.pool, name).await.is_empty());

    let erasure = simple_event("person.erasure_requested", json!({"email": address}));
    app.publish(&erasure).await;
    app.processed(erasure["id"].as_str().unwrap()).await;
    assert_eq!(find_everywhere(&app.pool, name).await, []);
    assert_eq!(find_everywhere(&app.pool, address).await, []);
    let (by, at): (Option<String>, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT claimed_by, claimed_at FROM enquiries WHERE enquiry_id = $1")
            .bind(&id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(by.as_deref(), Some(NORTH_WEST));
    assert_eq!(at, Some(utc("2025-03-25T12:00:00Z")));

    // Erasing the claimer's address leaves the claim's time.
    let erasure = simple_event("person.erasure_requested", json!({"email": NORTH_WEST}));
    app.publish(&erasure).await;
    app.processed(erasure["id"].as_str().unwrap()).await;
    assert_eq!(find_everywhere(&app.pool, NORTH_WEST).await, []);
    let (by, at): (Option<String>, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT claimed_by, claimed_at FROM enquiries WHERE enquiry_id = $1")
            .bind(&id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(by, None);
    assert!(at.is_some());
    app.stop().await;
}

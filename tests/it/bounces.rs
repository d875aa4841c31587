//! Bounces and complaints that come back after the relay took an email, over real SMTP on
//! both sides: the worker sends to the test's SMTP server with a VERP return path, and the
//! test sends delivery status notifications, feedback reports and auto-replies back to the
//! worker's bounce listener (or pipes them to `rpec-notify bounces ingest`).

use crate::cli::binary;
use crate::helpers::*;
use crate::newsletter::{add_confirmed, newsletter, simple_sections, status_of};
use rpec_notify::tokens::ReturnPaths;
use secrecy::SecretString;
use serde_json::json;
use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

const READERS: [&str; 3] = [
    "ada@school.example.org",
    "ben@school.example.org",
    "cy@school.example.org",
];

/// A delivery status notification as Postfix writes one (RFC 3464): a human part, the
/// machine-readable part for `recipient`, and the returned message's headers, sent to
/// `return_path`.
fn postfix_dsn(return_path: &str, recipient: &str, status: &str, reply: &str) -> Vec<u8> {
    format!(
        "Return-Path: <>\r\n\
         Date: Mon, 3 Nov 2025 10:15:02 +0000 (GMT)\r\n\
         From: MAILER-DAEMON@mx.school.example.org (Mail Delivery System)\r\n\
         Subject: Undelivered Mail Returned to Sender\r\n\
         To: {return_path}\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\
         \tboundary=\"7F2A1C0E3.1762164902/mx.school.example.org\"\r\n\
         Message-Id: <20251103101502.7F2A1C0E3@mx.school.example.org>\r\n\
         \r\n\
         This is a MIME-encapsulated message.\r\n\
         \r\n\
         --7F2A1C0E3.1762164902/mx.school.example.org\r\n\
         Content-Description: Notification\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\
         \r\n\
         I'm sorry to have to inform you that your message could not\r\n\
         be delivered to one or more recipients.\r\n\
         \r\n\
         <{recipient}>: host mailstore.school.example.org said: {reply}\r\n\
         \r\n\
         --7F2A1C0E3.1762164902/mx.school.example.org\r\n\
         Content-Description: Delivery report\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         Reporting-MTA: dns; mx.school.example.org\r\n\
         X-Postfix-Queue-ID: 7F2A1C0E3\r\n\
         Arrival-Date: Mon,  3 Nov 2025 10:15:01 +0000 (GMT)\r\n\
         \r\n\
         Final-Recipient: rfc822; {recipient}\r\n\
         Original-Recipient: rfc822;{recipient}\r\n\
         Action: failed\r\n\
         Status: {status}\r\n\
         Remote-MTA: dns; mailstore.school.example.org\r\n\
         Diagnostic-Code: smtp; {reply}\r\n\
         \r\n\
         --7F2A1C0E3.1762164902/mx.school.example.org\r\n\
         Content-Description: Undelivered Message Headers\r\n\
         Content-Type: text/rfc822-headers\r\n\
         \r\n\
         Return-Path: <{return_path}>\r\n\
         From: Regional Prevent education coordinators <rpec.newsletters@example.org>\r\n\
         To: {recipient}\r\n\
         Subject: Prevent update\r\n\
         \r\n\
         --7F2A1C0E3.1762164902/mx.school.example.org--\r\n"
    )
    .into_bytes()
}

/// A complaint (RFC 5965 feedback report) as a mailbox provider's feedback loop sends one, to
/// the abuse address (not the return path): the return path is in the returned message.
fn arf_complaint(return_path: &str, recipient: &str) -> Vec<u8> {
    format!(
        "From: Feedback Loop <fbl@mail.example.net>\r\n\
         To: abuse@example.org\r\n\
         Subject: FW: Prevent update\r\n\
         Date: Mon, 3 Nov 2025 11:00:00 +0000\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=feedback-report; boundary=\"arf\"\r\n\
         \r\n\
         --arf\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\
         \r\n\
         This is an email abuse report for an email message received from IP 192.0.2.25.\r\n\
         \r\n\
         --arf\r\n\
         Content-Type: message/feedback-report\r\n\
         \r\n\
         Feedback-Type: abuse\r\n\
         User-Agent: ExampleFBL/1.0\r\n\
         Version: 1\r\n\
         Original-Mail-From: <{return_path}>\r\n\
         Original-Rcpt-To: <{recipient}>\r\n\
         Source-IP: 192.0.2.25\r\n\
         \r\n\
         --arf\r\n\
         Content-Type: message/rfc822\r\n\
         \r\n\
         Return-Path: <{return_path}>\r\n\
         From: Regional Prevent education coordinators <rpec.newsletters@example.org>\r\n\
         To: {recipient}\r\n\
         Subject: Prevent update\r\n\
         \r\n\
         The newsletter.\r\n\
         --arf--\r\n"
    )
    .into_bytes()
}

fn out_of_office(return_path: &str, from: &str) -> Vec<u8> {
    format!(
        "From: {from}\r\n\
         To: {return_path}\r\n\
         Subject: Automatic reply: Prevent update\r\n\
         Auto-Submitted: auto-replied\r\n\
         X-Auto-Response-Suppress: All\r\n\
         Date: Mon, 3 Nov 2025 10:20:00 +0000\r\n\
         \r\n\
         I am out of the office until Monday.\r\n"
    )
    .into_bytes()
}

/// `rpec_bounces_total` for newsletters of `kind` (hard, soft, complaint, auto_reply, ...).
async fn newsletter_bounces(app: &TestApp, kind: &str) -> f64 {
    app.metric(&format!(
        "rpec_bounces_total{{email_kind=\"newsletter\",kind=\"{kind}\"}}"
    ))
    .await
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&app.pool).await.unwrap()
}

async fn suppressed(app: &TestApp) -> Vec<String> {
    app.strings("SELECT email FROM suppressions ORDER BY email")
        .await
}

/// The mail each reader got from newsletter `id`, with its return path.
async fn newsletter_to_readers(app: &TestApp, id: &str, region: &str) -> Vec<Mail> {
    app.publish(&newsletter(id, region, simple_sections()))
        .await;
    let subject = format!("Prevent update {id}");
    let mails = eventually(
        Duration::from_secs(20),
        "the newsletter to each reader",
        || {
            let mails: Vec<Mail> = app
                .smtp
                .received()
                .into_iter()
                .filter(|m| m.subject() == subject)
                .collect();
            async move { (mails.len() == READERS.len()).then_some(mails) }
        },
    )
    .await;
    // A bounce comes after the relay took the email and the worker recorded that.
    app.all_sent().await;
    mails
}

fn to<'a>(mails: &'a [Mail], address: &str) -> &'a Mail {
    mails
        .iter()
        .find(|m| m.envelope_to == [address])
        .unwrap_or_else(|| panic!("no email to {address}"))
}

fn return_paths() -> ReturnPaths {
    let (local, domain) = BOUNCE_ADDRESS.split_once('@').unwrap();
    ReturnPaths::new(
        local,
        domain,
        vec![SecretString::from(TEST_TOKEN_SECRET.to_owned())],
    )
}

/// A worker with return paths at [`BOUNCE_ADDRESS`] and a bounce listener.
async fn with_bounces() -> TestApp {
    spawn_app_with(Options {
        bounces: true,
        ..Options::default()
    })
    .await
}

/// [`with_bounces`], with the three [`READERS`] confirmed for London.
async fn with_readers() -> TestApp {
    let app = with_bounces().await;
    for reader in READERS {
        add_confirmed(&app.pool, "london", reader, None).await;
    }
    app
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_bounce_to_the_listener_keeps_the_next_newsletter_from_that_reader_only() {
    let app = with_readers().await;
    let listener = app.bounce_addr.unwrap();
    let first = newsletter_to_readers(&app, "ldn-1", "london").await;

    // Each copy has its own return path at the bounce domain, naming its outbox row; the From
    // header is the bulk From address, as without bounces.
    let paths = return_paths();
    let mut named = Vec::new();
    for mail in &first {
        let returned = paths
            .check(&mail.envelope_from)
            .unwrap_or_else(|| panic!("{} is not a return path", mail.envelope_from));
        assert!(mail
            .header("From")
            .unwrap()
            .contains("rpec.newsletters@example.org"));
        named.push(returned.outbox_id);
    }
    named.sort();
    named.dedup();
    assert_eq!(named.len(), READERS.len());

    let ben = to(&first, READERS[1]);
    let dsn = postfix_dsn(
        &ben.envelope_from,
        READERS[1],
        "5.1.1",
        "550 5.1.1 <ben@school.example.org>: Recipient address rejected: User unknown",
    );
    send_bounce(listener, &ben.envelope_from, &dsn)
        .await
        .expect("the listener takes a DSN for a return path of ours");
    assert_eq!(suppressed(&app).await, [READERS[1]]);
    let (status, error, resolved): (String, String, bool) = sqlx::query_as(
        "SELECT status, last_error, resolved_at IS NOT NULL FROM outbox WHERE id = $1",
    )
    .bind(paths.check(&ben.envelope_from).unwrap().outbox_id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(status, "failed");
    assert!(
        error.starts_with(rpec_notify::bounce::BOUNCED) && error.contains("5.1.1"),
        "{error}"
    );
    // Bulk mail's bounce needs no operator: the suppression is its answer.
    assert!(resolved);
    assert_eq!(newsletter_bounces(&app, "hard").await, 1.0);

    // The next newsletter reaches only the other two.
    app.publish(&newsletter("ldn-2", "london", simple_sections()))
        .await;
    let second = eventually(Duration::from_secs(20), "the second newsletter", || {
        let mails: Vec<Mail> = app
            .smtp
            .received()
            .into_iter()
            .filter(|m| m.subject() == "Prevent update ldn-2")
            .collect();
        async move { (mails.len() >= 2).then_some(mails) }
    })
    .await;
    app.settle().await;
    let mut got: Vec<String> = app
        .smtp
        .received()
        .into_iter()
        .filter(|m| m.subject() == "Prevent update ldn-2")
        .flat_map(|m| m.envelope_to)
        .collect();
    got.sort();
    assert_eq!(got, [READERS[0], READERS[2]], "{} seen", second.len());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_dsn_twice_counts_once_and_a_forged_or_altered_return_path_changes_nothing() {
    let app = with_readers().await;
    let listener = app.bounce_addr.unwrap();
    let first = newsletter_to_readers(&app, "ldn-1", "london").await;
    let ada = to(&first, READERS[0]);
    let dsn = postfix_dsn(
        &ada.envelope_from,
        READERS[0],
        "5.1.1",
        "550 5.1.1 User unknown",
    );
    for _ in 0..2 {
        send_bounce(listener, &ada.envelope_from, &dsn)
            .await
            .unwrap();
    }
    assert_eq!(suppressed(&app).await, [READERS[0]]);
    assert_eq!(count(&app, "SELECT count(*) FROM bounces").await, 1);
    assert_eq!(newsletter_bounces(&app, "hard").await, 1.0);

    // Another reader's return path with one digit changed: refused at RCPT by the listener.
    let ben = to(&first, READERS[1]);
    let (local, domain) = ben.envelope_from.split_once('@').unwrap();
    let last = local.chars().last().unwrap();
    let altered = format!(
        "{}{}@{domain}",
        &local[..local.len() - 1],
        if last == '0' { '1' } else { '0' }
    );
    let refused = send_bounce(
        listener,
        &altered,
        &postfix_dsn(&altered, READERS[1], "5.1.1", "550 5.1.1 User unknown"),
    )
    .await
    .expect_err("an altered return path is refused");
    assert!(refused.contains("550"), "{refused}");
    // Mail for anyone else at all: refused too.
    let refused = send_bounce(
        listener,
        "postmaster@bounce.example.org",
        b"Subject: hi\r\n\r\nhi\r\n",
    )
    .await
    .expect_err("only return paths are taken");
    assert!(refused.contains("550"), "{refused}");

    // The same forgery through `bounces ingest` (a mailbox another MTA delivers: the headers
    // and the returned message name the altered return path): nothing changes.
    let forged = postfix_dsn(&altered, READERS[1], "5.1.1", "550 5.1.1 User unknown");
    let out = ingest(&app, &forged, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("naming no email of ours"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(suppressed(&app).await, [READERS[0]]);
    assert_eq!(count(&app, "SELECT count(*) FROM bounces").await, 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_complaint_unsubscribes_and_suppresses_and_an_out_of_office_reply_changes_nothing() {
    let app = with_readers().await;
    add_confirmed(&app.pool, "north-west", READERS[2], None).await;
    let listener = app.bounce_addr.unwrap();
    let first = newsletter_to_readers(&app, "ldn-1", "london").await;

    let ada = to(&first, READERS[0]);
    send_bounce(
        listener,
        &ada.envelope_from,
        &out_of_office(&ada.envelope_from, READERS[0]),
    )
    .await
    .unwrap();
    assert_eq!(newsletter_bounces(&app, "auto_reply").await, 1.0);
    assert!(suppressed(&app).await.is_empty());
    assert_eq!(count(&app, "SELECT count(*) FROM bounces").await, 0);
    assert_eq!(
        status_of(&app.pool, READERS[0], "london").await.as_deref(),
        Some("confirmed")
    );

    // The feedback loop reports to the abuse address; the listener takes it for the return
    // path it names inside (as an MTA forwarding abuse@ to it would deliver it).
    let cy = to(&first, READERS[2]);
    send_bounce(
        listener,
        &cy.envelope_from,
        &arf_complaint(&cy.envelope_from, READERS[2]),
    )
    .await
    .unwrap();
    assert_eq!(suppressed(&app).await, [READERS[2]]);
    // Unsubscribed from every region's newsletter, not only the one complained of.
    for region in ["london", "north-west"] {
        assert_eq!(
            status_of(&app.pool, READERS[2], region).await.as_deref(),
            Some("unsubscribed"),
            "{region}"
        );
    }
    assert_eq!(newsletter_bounces(&app, "complaint").await, 1.0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinators_copy_that_bounces_after_acceptance_reaches_the_triage_mailbox() {
    let app = with_bounces().await;
    let listener = app.bounce_addr.unwrap();
    app.publish(&contact_event(json!({
        "region": "north-west", "topic": "complex-case",
        "message": "A pupil is being drawn into extremist material online."
    })))
    .await;
    let copy = eventually(Duration::from_secs(20), "the coordinators' copy", || {
        let found = app
            .smtp
            .received()
            .into_iter()
            .find(|m| m.envelope_to == ["rpec.north-west@example.org"]);
        async move { found }
    })
    .await;
    app.all_sent().await;
    // The coordinator's mailbox was deleted after the relay took the copy.
    let dsn = postfix_dsn(
        &copy.envelope_from,
        "rpec.north-west@example.org",
        "5.1.1",
        "550 5.1.1 The email account that you tried to reach does not exist",
    );
    send_bounce(listener, &copy.envelope_from, &dsn)
        .await
        .unwrap();
    let to_triage = eventually(Duration::from_secs(20), "the copy to triage", || {
        let found = app
            .smtp
            .received()
            .into_iter()
            .find(|m| m.envelope_to == ["prevent.triage@example.org"]);
        async move { found }
    })
    .await;
    assert!(
        to_triage
            .subject()
            .starts_with("UNDELIVERABLE to North-West"),
        "{}",
        to_triage.subject()
    );
    assert!(to_triage.text().contains("drawn into extremist material"));
    let (failed,): (String,) = sqlx::query_as("SELECT status FROM outbox WHERE kind = 'enquiry'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(failed, "failed");
    // The same DSN again queues no second copy.
    send_bounce(listener, &copy.envelope_from, &dsn)
        .await
        .unwrap();
    app.settle().await;
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM outbox WHERE kind = 'enquiry_undeliverable'"
        )
        .await,
        1
    );
    app.stop().await;
}

/// The binary with the app's database and settings (and [`BOUNCE_ADDRESS`]), running `args`
/// with `stdin` on standard input; `env` changes the environment further.
fn run_binary(
    app: &TestApp,
    args: &[&str],
    stdin: &[u8],
    env: &[(&str, &str)],
) -> std::process::Output {
    let mut child = binary()
        .args(args)
        .env("DATABASE_URL", database_url_for(&app.db_name))
        .env("RPEC_CONFIG_DIR", &app.settings.config_dir)
        .env("RPEC_TOKEN_SECRET", TEST_TOKEN_SECRET)
        .env("RPEC_MAIL__BOUNCE_ADDRESS", BOUNCE_ADDRESS)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

/// `rpec-notify bounces ingest ARGS`, `raw` on standard input.
fn ingest(app: &TestApp, raw: &[u8], args: &[&str]) -> std::process::Output {
    let args: Vec<&str> = ["bounces", "ingest"]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    run_binary(app, &args, raw, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounces_ingest_from_standard_input_has_the_listeners_effects() {
    let app = with_readers().await;
    let first = newsletter_to_readers(&app, "ldn-1", "london").await;
    let ben = to(&first, READERS[1]);
    let dsn = postfix_dsn(
        &ben.envelope_from,
        READERS[1],
        "5.1.1",
        "550 5.1.1 User unknown",
    );
    // Delivered by an MTA that says whom it was for (Postfix's pipe: --to ${original_recipient}).
    let out = ingest(&app, &dsn, &["--to", &ben.envelope_from]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("hard for email") && said.contains("recorded"),
        "{said}"
    );
    // It prints ids and kinds, never the address.
    assert!(!said.contains("ben@"), "{said}");
    assert_eq!(suppressed(&app).await, [READERS[1]]);
    // Again: already recorded, still one suppression and one bounce.
    let out = ingest(&app, &dsn, &[]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("already recorded"));
    assert_eq!(count(&app, "SELECT count(*) FROM bounces").await, 1);

    // Mail nobody can read is kept for an operator (once), and still exits 0.
    let junk = b"From: someone@example.net\r\nSubject: hello\r\n\r\nAre you there?\r\n";
    for _ in 0..2 {
        let out = ingest(&app, junk, &[]);
        assert!(out.status.success());
    }
    assert_eq!(
        count(&app, "SELECT count(*) FROM unparsed_bounces").await,
        1
    );

    // An operator reads it: the list names no one, the message itself is shown whole.
    let command = |args: &[&str]| run_binary(&app, args, b"", &[]);
    let (id,): (i64,) = sqlx::query_as("SELECT id FROM unparsed_bounces")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let list = command(&["bounces", "unparsed"]);
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.status.success() && listed.contains("1 of 1"),
        "{listed}"
    );
    assert!(!listed.contains("someone@"), "{listed}");
    let shown = command(&["bounces", "unparsed", &id.to_string()]);
    assert!(shown.status.success());
    assert!(String::from_utf8_lossy(&shown.stdout).contains("Are you there?"));
    assert_eq!(
        command(&["bounces", "unparsed", &(id + 1).to_string()])
            .status
            .code(),
        Some(1)
    );
    // PostgreSQL away: 75, so that the MTA keeps the message and tries again.
    let out = run_binary(
        &app,
        &["bounces", "ingest"],
        &dsn,
        &[
            ("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none"),
            ("RPEC_DATABASE__ACQUIRE_TIMEOUT_SECS", "1"),
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(75),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    app.stop().await;
}

/// What `make run` does with `RPEC_BOUNCE_SMTP_ADDR` set, as the README's "Trying it" shows:
/// the real binary binds the listener from the variable, and the example DSN, delivered to it
/// by `scripts/send-bounce.py` for a reader's return path, suppresses that reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_with_a_bounce_listener_suppresses_a_reader_whose_dsn_it_receives() {
    let smtp = SmtpServer::start_new();
    let mut deployment = crate::binary::Deployment::new(&smtp.url(), Some(FAST_TIMINGS)).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    deployment.set_env("RPEC_MAIL__BOUNCE_ADDRESS", "bounces@bounces.localhost");
    deployment.set_env("RPEC_BOUNCE_SMTP_ADDR", &format!("127.0.0.1:{port}"));
    let worker = deployment.start().await;
    let pool = deployment.pool().await;
    add_confirmed(&pool, "north-west", "reader@school.example.org", None).await;
    add_confirmed(&pool, "north-west", "other@school.example.org", None).await;
    deployment.publish(&[&manifest_dir().join("examples/events/newsletter-published.json")]);
    let mails = eventually(Duration::from_secs(30), "the newsletter", || {
        let m = smtp.received();
        async move { (m.len() >= 2).then_some(m) }
    })
    .await;
    let reader = to(&mails, "reader@school.example.org");
    assert!(reader.envelope_from.ends_with("@bounces.localhost"));

    let sent = std::process::Command::new("python3")
        .arg(manifest_dir().join("scripts/send-bounce.py"))
        .arg(format!("127.0.0.1:{port}"))
        .arg(&reader.envelope_from)
        .arg(manifest_dir().join("examples/bounces/dsn-user-unknown.eml"))
        .arg("reader@school.example.org")
        .output()
        .unwrap();
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let list: Vec<(String,)> = sqlx::query_as("SELECT email FROM suppressions")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(list, [("reader@school.example.org".to_owned(),)]);
    pool.close().await;
    let (status, _) = worker.stop().await;
    assert!(status.success());
    deployment.remove().await;
}

/// An email the relay took, written straight into the outbox (as `sent`, so the worker leaves
/// it alone); its id.
async fn sent_email(app: &TestApp, kind: &str, to: &str) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO outbox (kind, template, stream, recipients, job, message_uuid, status,
                             sent_at)
         VALUES ($1, $1, 'bulk', ARRAY[$2], jsonb_build_object('kind', $1), gen_random_uuid(),
                 'sent', now())
         RETURNING id",
    )
    .bind(kind)
    .bind(to)
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

/// A bounce that overtakes the sender's record of the send (the relay took the email and its
/// DSN came back before the outcome was committed) fails the row all the same, and the
/// claim's own record then changes nothing; so does one for a try the sender counted as
/// passing (`pending`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_bounce_before_the_send_is_recorded_fails_the_row_and_the_late_record_changes_nothing(
) {
    let app = with_bounces().await;
    let listener = app.bounce_addr.unwrap();
    let paths = return_paths();
    let mut rows = Vec::new();
    for (status, to) in [
        ("sending", "gone.early@school.example.org"),
        ("pending", "gone.later@school.example.org"),
    ] {
        let token = uuid::Uuid::new_v4();
        // Held by a claim of its own (a lease well in the future), or waiting out a back-off:
        // the worker under test claims neither.
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO outbox (kind, template, stream, recipients, job, message_uuid, status,
                                 attempts, claim_token, claimed_until, next_attempt_at)
             VALUES ('newsletter', 'newsletter', 'bulk', ARRAY[$1],
                     jsonb_build_object('kind', 'newsletter'), gen_random_uuid(), $2, 1, $3,
                     CASE WHEN $2 = 'sending' THEN now() + interval '10 minutes' END,
                     now() + interval '10 minutes')
             RETURNING id",
        )
        .bind(to)
        .bind(status)
        .bind(token)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        let rp = paths.address(id, 0);
        let dsn = postfix_dsn(&rp, to, "5.1.1", "550 5.1.1 User unknown");
        send_bounce(listener, &rp, &dsn).await.unwrap();
        rows.push((id, token, to));
    }
    for &(id, token, to) in &rows {
        let (status, error, resolved): (String, String, bool) = sqlx::query_as(
            "SELECT status, last_error, resolved_at IS NOT NULL FROM outbox WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        assert_eq!(status, "failed", "row {id} ({to})");
        assert!(error.starts_with(rpec_notify::bounce::BOUNCED), "{error}");
        // Bulk mail: the suppression resolves it.
        assert!(resolved);
        // The claim's record comes after the bounce, and is stale.
        assert!(!rpec_notify::outbox::mark_sent(&app.pool, id, token)
            .await
            .unwrap());
        let (status,): (String,) = sqlx::query_as("SELECT status FROM outbox WHERE id = $1")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
        assert_eq!(status, "failed");
    }
    let mut expected: Vec<&str> = rows.iter().map(|r| r.2).collect();
    expected.sort();
    let mut got = suppressed(&app).await;
    got.sort();
    assert_eq!(got, expected);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_bounces_suppress_only_at_the_limit_within_the_window() {
    // The defaults: 3 within 30 days.
    let app = with_bounces().await;
    let listener = app.bounce_addr.unwrap();
    let paths = return_paths();
    let reader = "full.mailbox@school.example.org";
    let mut emails = Vec::new();
    for _ in 0..4 {
        emails.push(sent_email(&app, "newsletter", reader).await);
    }
    let soft = |id: i64| {
        let rp = paths.address(id, 0);
        let dsn = postfix_dsn(&rp, reader, "4.2.2", "452 4.2.2 Mailbox full");
        (rp, dsn)
    };
    // The first, long ago: outside the window.
    let (rp, dsn) = soft(emails[0]);
    send_bounce(listener, &rp, &dsn).await.unwrap();
    sqlx::query("UPDATE bounces SET received_at = now() - interval '31 days'")
        .execute(&app.pool)
        .await
        .unwrap();
    for &id in &emails[1..3] {
        let (rp, dsn) = soft(id);
        send_bounce(listener, &rp, &dsn).await.unwrap();
        // Each is counted, but two within the window suppress nobody; the emails stay sent.
        assert!(suppressed(&app).await.is_empty());
    }
    assert_eq!(
        count(&app, "SELECT count(*) FROM outbox WHERE status = 'sent'").await,
        4
    );
    let (rp, dsn) = soft(emails[3]);
    send_bounce(listener, &rp, &dsn).await.unwrap();
    assert_eq!(suppressed(&app).await, [reader]);
    assert_eq!(
        count(&app, "SELECT count(*) FROM bounces WHERE kind = 'soft'").await,
        4
    );
    assert_eq!(newsletter_bounces(&app, "soft").await, 4.0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_ends_bounce_records_and_unparsed_mail_at_their_periods() {
    let now = chrono::Utc::now();
    let app = spawn_app_with(Options::at(&now.to_rfc3339())).await;
    let s = app.settings.retention;
    let email = sent_email(&app, "newsletter", "old.reader@school.example.org").await;
    for (kind, age) in [("hard", s.bounce_days + 1), ("soft", s.bounce_days - 1)] {
        sqlx::query(
            "INSERT INTO bounces (outbox_id, recipient, kind, received_at)
             VALUES ($1, 'old.reader@school.example.org', $2, $3::timestamptz - make_interval(days => $4))",
        )
        .bind(email)
        .bind(kind)
        .bind(now)
        .bind(age as i32)
        .execute(&app.pool)
        .await
        .unwrap();
    }
    for (n, age) in [
        (1, s.unparsed_bounce_days + 1),
        (2, s.unparsed_bounce_days - 1),
    ] {
        sqlx::query(
            "INSERT INTO unparsed_bounces (content, digest, received_at)
             VALUES ('mentions old.reader@school.example.org ' || $1, sha256(convert_to($1::text, 'UTF8')),
                     $2::timestamptz - make_interval(days => $3))",
        )
        .bind(n.to_string())
        .bind(now)
        .bind(age as i32)
        .execute(&app.pool)
        .await
        .unwrap();
    }
    let swept = rpec_notify::retention::sweep_once(&app.sweeper().await)
        .await
        .unwrap();
    assert_eq!((swept.bounces, swept.unparsed_bounces), (1, 1));
    assert_eq!(
        app.strings("SELECT kind FROM bounces").await,
        ["soft"],
        "the younger bounce stays"
    );
    assert_eq!(
        count(&app, "SELECT count(*) FROM unparsed_bounces").await,
        1
    );
    app.stop().await;
}

/// The fixtures, in the shapes real servers send (`tests/fixtures/bounces/`), each for an email
/// of its own: through the listener, each has its kind's effect and no other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounces_in_the_shapes_real_servers_send_each_have_their_effect() {
    let app = with_bounces().await;
    let listener = app.bounce_addr.unwrap();
    let paths = return_paths();
    let cases = [
        ("postfix-user-unknown", "hard"),
        ("gmail-does-not-exist", "hard"),
        ("exchange-recipient-not-found", "hard"),
        ("exim-plain", "hard"),
        ("postfix-delayed-mailbox-full", "soft"),
        ("dmarc-rejected", "soft"),
        ("arf-abuse", "complaint"),
        ("out-of-office", "auto_reply"),
        ("delivered-notice", "auto_reply"),
        ("person-reply", "unparsed"),
    ];
    for (fixture, kind) in cases {
        let reader = format!("{fixture}@school.example.org");
        let email = sent_email(&app, "newsletter", &reader).await;
        let rp = paths.address(email, 0);
        let raw = std::fs::read_to_string(
            manifest_dir().join(format!("tests/fixtures/bounces/{fixture}.eml")),
        )
        .unwrap()
        .replace("bounces+abc123@bounce.example.org", &rp);
        send_bounce(listener, &rp, raw.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{fixture}: {e}"));
        let recorded: Vec<String> =
            sqlx::query_scalar("SELECT kind FROM bounces WHERE outbox_id = $1")
                .bind(email)
                .fetch_all(&app.pool)
                .await
                .unwrap();
        let is_suppressed = suppressed(&app).await.contains(&reader);
        let (status,): (String,) = sqlx::query_as("SELECT status FROM outbox WHERE id = $1")
            .bind(email)
            .fetch_one(&app.pool)
            .await
            .unwrap();
        match kind {
            "hard" => {
                assert_eq!(recorded, ["hard"], "{fixture}");
                assert!(is_suppressed, "{fixture}");
                assert_eq!(status, "failed", "{fixture}");
            }
            "soft" | "complaint" => {
                assert_eq!(recorded, [kind], "{fixture}");
                assert_eq!(is_suppressed, kind == "complaint", "{fixture}");
                assert_eq!(status, "sent", "{fixture}");
            }
            _ => {
                assert!(recorded.is_empty(), "{fixture}: {recorded:?}");
                assert!(!is_suppressed, "{fixture}");
                assert_eq!(status, "sent", "{fixture}");
            }
        }
        assert!(newsletter_bounces(&app, kind).await >= 1.0, "{fixture}");
    }
    assert_eq!(
        count(&app, "SELECT count(*) FROM unparsed_bounces").await,
        1
    );
    app.stop().await;
}

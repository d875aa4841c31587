//! The operator tools, run as the real binary against a test's own database and broker names:
//! `outbox status|list|show|retry`, `dead-letters list|replay|purge` and `suppressions
//! list|remove`, their JSON, their exit codes, and that they print no personal data (but for
//! `suppressions`, whose subject is addresses).

use crate::cli::binary;
use crate::helpers::*;
use lapin::options::{ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use serde_json::{json, Value};
use std::process::Output;
use std::time::Duration;

/// `rpec-notify ARGS...` with the settings of `app`'s worker.
async fn run(app: &TestApp, args: &[&str]) -> Output {
    run_with(app, args, &[]).await
}

/// The same with some settings changed.
async fn run_with(app: &TestApp, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = binary();
    c.args(args)
        .current_dir(manifest_dir())
        .env("DATABASE_URL", database_url_for(&app.db_name))
        .env("RPEC_AMQP_URL", amqp_url())
        .env("RPEC_EXCHANGE", &app.topology.exchange)
        .env("RPEC_QUEUE", &app.topology.queue)
        .env("RPEC_CONFIG_DIR", &app.settings.config_dir)
        .env("RPEC_TOKEN_SECRET", TEST_TOKEN_SECRET)
        .envs(env.iter().copied());
    tokio::process::Command::from(c).output().await.unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The exit code, with what the command said when it is not the one expected.
fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        stdout(out),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a `--json` command that must exit with `code`; returns its document.
async fn run_json(app: &TestApp, args: &[&str], code: i32) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    let out = run(app, &args).await;
    assert_exit(&out, code);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {}", stdout(&out)))
}

/// Fails if `printed` holds any of the personal data of the test's events.
fn assert_no_personal_data(printed: &str, personal: &[&str]) {
    for p in personal.iter().chain(&["@"]) {
        assert!(!printed.contains(p), "printed {p:?}: {printed}");
    }
}

/// Messages ready on the dead-letter queue, counted by the broker.
async fn dead_letter_depth(app: &TestApp) -> u32 {
    let conn = rpec_notify::consume::topology::connect(&amqp_url(), "rpec-notify tests")
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let q = ch
        .queue_declare(
            &app.topology.dead_letter,
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let _ = conn.close(200, "done").await;
    q.message_count()
}

/// Puts a message straight on the dead-letter queue (through its fanout exchange), as the
/// worker would have, with `routing_key` and `headers`.
async fn dead_letter_directly(
    app: &TestApp,
    routing_key: &str,
    body: &[u8],
    headers: Vec<(&str, AMQPValue)>,
) {
    let conn = rpec_notify::consume::topology::connect(&amqp_url(), "rpec-notify tests")
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut table = FieldTable::default();
    for (k, v) in headers {
        table.insert(k.into(), v);
    }
    let props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(table);
    rpec_notify::consume::topology::publish_confirmed(
        &ch,
        &app.topology.dead_letter,
        routing_key,
        body,
        props,
    )
    .await
    .expect("the dead-letter queue takes it");
    let _ = conn.close(200, "done").await;
}

async fn wait_for_dead_letters(app: &TestApp, n: u32) {
    eventually(
        Duration::from_secs(20),
        &format!("{n} dead letter(s)"),
        || async { (dead_letter_depth(app).await == n).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_is_listed_without_personal_data_and_replayed_once_its_session_exists() {
    let profile = FAST_TIMINGS.replace(
        "unknown_session_wait_secs = 30",
        "unknown_session_wait_secs = 1",
    );
    let app = spawn_app_with(Options {
        profile_toml: profile,
        ..Options::default()
    })
    .await;
    let registration = registration_event("reg-late", "s-late", "dana.ng@school.example.org");
    let event_id = registration["id"].as_str().unwrap().to_owned();
    app.publish(&registration).await;
    wait_for_dead_letters(&app, 1).await;

    let listed = run_json(&app, &["dead-letters", "list"], 0).await;
    assert_eq!(listed["count"], 1, "{listed}");
    let dead = &listed["dead_letters"][0];
    assert_eq!(dead["id"], event_id.as_str());
    assert_eq!(dead["type"], "registration.created");
    assert_eq!(dead["code"], "unknown_session");
    let text = run(&app, &["dead-letters", "list"]).await;
    assert_exit(&text, 0);
    assert!(stdout(&text).contains(&event_id), "{}", stdout(&text));
    assert!(stdout(&text).contains("unknown_session"));
    for printed in [listed.to_string(), stdout(&text)] {
        assert_no_personal_data(&printed, &["dana", "Registrant reg-late", "s-late"]);
    }
    // Listing took nothing off the queue.
    assert_eq!(dead_letter_depth(&app).await, 1);
    assert_eq!(
        run_json(&app, &["dead-letters", "list"], 0).await["count"],
        1
    );

    let starts = chrono::Utc::now() + chrono::Duration::days(30);
    let session = session_event(
        "session.scheduled",
        "s-late",
        &starts.to_rfc3339(),
        &(starts + chrono::Duration::hours(1)).to_rfc3339(),
        Some("london"),
    );
    app.publish(&session).await;
    app.processed(session["id"].as_str().unwrap()).await;

    let replayed = run_json(&app, &["dead-letters", "replay", "--all"], 0).await;
    assert_eq!(
        replayed["replayed"][0]["id"],
        event_id.as_str(),
        "{replayed}"
    );
    assert_eq!(replayed["replayed"].as_array().unwrap().len(), 1);
    assert_eq!(dead_letter_depth(&app).await, 0);
    let confirmations = app.exactly("You are registered", 1).await;
    assert_eq!(confirmations[0].envelope_to, ["dana.ng@school.example.org"]);
    app.processed(&event_id).await;
    assert_eq!(
        run_json(&app, &["dead-letters", "list"], 0).await["count"],
        0
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_without_an_envelope_is_named_by_a_hash_replayed_by_it_and_purged() {
    let app = spawn_app().await;
    app.publish_raw("contact.submitted", b"{\"id\": oops").await;
    wait_for_dead_letters(&app, 1).await;
    let listed = run_json(&app, &["dead-letters", "list"], 0).await;
    let dead = &listed["dead_letters"][0];
    let hash = dead["id"].as_str().unwrap().to_owned();
    assert_eq!(hash.len(), 16, "{listed}");
    assert!(hash.chars().all(|c| c.is_ascii_hexdigit()), "{hash}");
    assert_eq!(dead["type"], "unknown");
    assert_eq!(dead["code"], "malformed_json");
    assert_eq!(dead["routing_key"], "contact.submitted");

    // An id that is on no dead letter: exit 1, and the queue is as it was.
    let stranger = uuid::Uuid::new_v4().to_string();
    let missed = run_json(&app, &["dead-letters", "replay", &stranger], 1).await;
    assert_eq!(missed["not_found"], json!([stranger]));
    assert_eq!(missed["replayed"], json!([]));
    assert_eq!(dead_letter_depth(&app).await, 1);

    // Replayed by its hash, it goes back by the routing key it came with, reaches the worker
    // and is dead-lettered again under the same name.
    let replayed = run_json(&app, &["dead-letters", "replay", &hash.to_uppercase()], 0).await;
    assert_eq!(replayed["replayed"][0]["id"], hash.as_str(), "{replayed}");
    eventually(
        Duration::from_secs(20),
        "the second dead-lettering",
        || async {
            (app.metric(
                "rpec_events_dead_lettered_total{reason=\"malformed_json\",type=\"unknown\"}",
            )
            .await
                == 2.0)
                .then_some(())
        },
    )
    .await;
    wait_for_dead_letters(&app, 1).await;
    let again = run_json(&app, &["dead-letters", "list"], 0).await;
    assert_eq!(again["dead_letters"][0]["id"], hash.as_str());

    // A dead letter of a type no queue takes (and with the time it was dead-lettered): replay
    // reports it and leaves it where it was, since the exchange returned it. (The malformed one
    // is replayed beside it and soon dead-lettered again.)
    let archived = json!({"id": uuid::Uuid::new_v4().to_string(), "type": "contact.archived"});
    let an_hour_ago = chrono::Utc::now().timestamp_millis() - 3_600_000;
    dead_letter_directly(
        &app,
        "contact.archived",
        archived.to_string().as_bytes(),
        vec![
            ("x-rpec-error", AMQPValue::LongString("unknown_type".into())),
            (
                "x-rpec-dead-lettered-at",
                AMQPValue::LongLongInt(an_hour_ago),
            ),
        ],
    )
    .await;
    let listed = run_json(&app, &["dead-letters", "list"], 0).await;
    let entry = listed["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == archived["id"])
        .unwrap_or_else(|| panic!("{listed}"))
        .clone();
    assert_eq!(entry["type"], "unknown");
    assert_eq!(entry["code"], "unknown_type");
    assert!(entry["age_seconds"].as_i64().unwrap() >= 3600, "{entry}");
    let returned = run_json(&app, &["dead-letters", "replay", "--all"], 1).await;
    assert_eq!(returned["refused"][0]["id"], archived["id"], "{returned}");
    assert_eq!(returned["refused"][0]["routing_key"], "contact.archived");
    assert_eq!(returned["replayed"][0]["id"], hash.as_str());
    let after = run_json(&app, &["dead-letters", "list"], 0).await;
    assert!(
        after["dead_letters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["id"] == archived["id"]),
        "{after}"
    );
    wait_for_dead_letters(&app, 2).await;

    // An events exchange that does not exist is a configuration error, and nothing is taken.
    let elsewhere = run_with(
        &app,
        &["dead-letters", "replay", "--all"],
        &[("RPEC_EXCHANGE", "rpec.events.nowhere")],
    )
    .await;
    assert_exit(&elsewhere, 2);
    assert!(
        String::from_utf8_lossy(&elsewhere.stderr).contains("RPEC_EXCHANGE"),
        "{}",
        String::from_utf8_lossy(&elsewhere.stderr)
    );
    assert_eq!(dead_letter_depth(&app).await, 2);

    let purged = run_json(&app, &["dead-letters", "purge"], 0).await;
    assert_eq!(purged["purged"], 2);
    assert_eq!(dead_letter_depth(&app).await, 0);
    let out = run(&app, &["dead-letters", "list"]).await;
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("0 dead letter(s)"),
        "{}",
        stdout(&out)
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_emails_are_listed_by_their_smtp_code_and_retry_puts_them_back() {
    let app = spawn_app().await;
    // The relay refuses these acknowledgements' recipients for good (550).
    for who in ["bounce.sam", "bounce.kim"] {
        app.publish(&contact_event(json!({
            "region": "london",
            "email": format!("{who}@school.example.org"),
        })))
        .await;
    }
    eventually(Duration::from_secs(20), "two failed emails", || async {
        let rows = app.outbox().await;
        (rows.iter().filter(|r| r.1 == "failed").count() == 2
            && rows.iter().filter(|r| r.1 == "sent").count() == 2)
            .then_some(())
    })
    .await;

    let status = run_json(&app, &["outbox", "status"], 0).await;
    assert_eq!(status["totals"]["failed"], 2, "{status}");
    assert_eq!(status["totals"]["sent"], 2);
    assert_eq!(status["totals"]["pending"], 0);
    assert!(status["counts"]
        .as_array()
        .unwrap()
        .contains(&json!({"status": "failed", "kind": "enquiry_ack", "count": 2})));
    assert_eq!(status["oldest_waiting_seconds"], Value::Null);

    let listed = run_json(&app, &["outbox", "list", "--status", "failed"], 0).await;
    assert_eq!(listed["total"], 2, "{listed}");
    let emails = listed["emails"].as_array().unwrap();
    for e in emails {
        assert_eq!(e["kind"], "enquiry_ack");
        assert_eq!(e["status"], "failed");
        assert_eq!(e["attempts"], 1);
        assert_eq!(e["error"], "smtp_permanent");
        assert_eq!(e["smtp_code"], 550);
    }
    let text = run(&app, &["outbox", "list", "--status", "failed"]).await;
    assert_exit(&text, 0);
    assert!(
        stdout(&text).contains("smtp 550 permanent"),
        "{}",
        stdout(&text)
    );
    let status_text = run(&app, &["outbox", "status"]).await;
    for printed in [listed.to_string(), stdout(&text), stdout(&status_text)] {
        assert_no_personal_data(
            &printed,
            &["bounce", "Sam Okafor", "Riverside", "Please tell us"],
        );
    }
    let first = emails[0]["id"].as_i64().unwrap();
    let second = emails[1]["id"].as_i64().unwrap();
    let sent_enquiries = run_json(
        &app,
        &[
            "outbox", "list", "--status", "sent", "--kind", "enquiry", "--limit", "1",
        ],
        0,
    )
    .await;
    assert_eq!(sent_enquiries["total"], 2);
    assert_eq!(sent_enquiries["emails"].as_array().unwrap().len(), 1);
    let sent = sent_enquiries["emails"][0]["id"].as_i64().unwrap();

    // The addresses are put right (as after a typo fixed at the source), so a retry can work.
    sqlx::query("UPDATE outbox SET recipients = ARRAY['fixed-' || id || '@school.example.org'] WHERE status = 'failed'")
        .execute(&app.pool)
        .await
        .unwrap();

    // A sent email and an id nobody has are not failed emails: exit 1; the failed one named
    // beside them is put back all the same.
    let (first_s, sent_s) = (first.to_string(), sent.to_string());
    let retried = run_json(&app, &["outbox", "retry", &first_s, &sent_s, "999999"], 1).await;
    assert_eq!(retried["retried"], json!([first]), "{retried}");
    let mut not_failed = vec![sent, 999999];
    not_failed.sort_unstable();
    assert_eq!(retried["not_failed"], json!(not_failed));
    let fixed = |id: i64| format!("fixed-{id}@school.example.org");
    eventually(Duration::from_secs(20), "the retried email", || async {
        app.smtp
            .received()
            .iter()
            .any(|m| m.envelope_to == [fixed(first)])
            .then_some(())
    })
    .await;
    // The relay keeps the message before it replies, and the worker records "sent" after the
    // reply: wait for the record, not only for the message.
    let rows: Vec<(i64, String, i32)> = eventually(
        Duration::from_secs(20),
        "the retried email recorded as sent",
        || async {
            let rows: Vec<(i64, String, i32)> = sqlx::query_as(
                "SELECT id, status, attempts FROM outbox WHERE id = ANY($1) ORDER BY id",
            )
            .bind([first, second])
            .fetch_all(&app.pool)
            .await
            .unwrap();
            rows.iter()
                .any(|r| r.0 == first && r.1 != "sending" && r.1 != "pending")
                .then_some(rows)
        },
    )
    .await;
    let state = |id: i64| rows.iter().find(|r| r.0 == id).unwrap().clone();
    assert_eq!(
        state(first),
        (first, "sent".to_owned(), 1),
        "a fresh attempt count"
    );
    assert_eq!(
        state(second),
        (second, "failed".to_owned(), 1),
        "not named: left alone"
    );

    let all = run_json(&app, &["outbox", "retry", "--all-failed"], 0).await;
    assert_eq!(all["retried"], json!([second]), "{all}");
    eventually(
        Duration::from_secs(20),
        "the second retried email",
        || async {
            app.smtp
                .received()
                .iter()
                .any(|m| m.envelope_to == [fixed(second)])
                .then_some(())
        },
    )
    .await;
    let none_left = run_json(&app, &["outbox", "retry", "--all-failed"], 0).await;
    assert_eq!(none_left["retried"], json!([]));
    app.stop().await;
}

/// An outbox row as the sender leaves it, straight into the database; its id.
async fn insert_email(
    app: &TestApp,
    kind: &str,
    recipients: &[&str],
    status: &str,
    last_error: Option<&str>,
    undeliverable_of: Option<i64>,
) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO outbox (kind, template, stream, recipients, job, message_uuid, status,
                             attempts, last_error, sent_at, undeliverable_of)
         VALUES ($1, $1, 'transactional', $2, jsonb_build_object('kind', $1::text), $3, $4, 1,
                 $5, CASE WHEN $4 = 'sent' THEN now() END, $6)
         RETURNING id",
    )
    .bind(kind)
    .bind(recipients)
    .bind(uuid::Uuid::new_v4())
    .bind(status)
    .bind(last_error)
    .bind(undeliverable_of)
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

async fn insert_bounce(app: &TestApp, outbox_id: i64, recipient: &str, kind: &str, reason: &str) {
    sqlx::query(
        "INSERT INTO bounces (outbox_id, recipient, kind, status, reason)
         VALUES ($1, $2, $3, '5.1.1', $4)",
    )
    .bind(outbox_id)
    .bind(recipient)
    .bind(kind)
    .bind(reason)
    .execute(&app.pool)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_show_lists_an_emails_bounces_by_kind_and_code_without_address_or_diagnostic() {
    let app = spawn_app().await;
    let sam = "sam.okafor@school.example.org";
    let diagnostic = "Recipient address rejected: mailbox sam.okafor unknown";
    let sent = insert_email(&app, "enquiry_ack", &[sam], "sent", None, None).await;
    insert_bounce(
        &app,
        sent,
        sam,
        "hard",
        &format!("550 5.1.1 <{sam}>: {diagnostic}"),
    )
    .await;

    let shown = run_json(&app, &["outbox", "show", &sent.to_string()], 0).await;
    assert_eq!(shown["found"], true, "{shown}");
    assert_eq!(shown["id"], sent);
    assert_eq!(shown["kind"], "enquiry_ack");
    assert_eq!(shown["stream"], "transactional");
    assert_eq!(shown["status"], "sent");
    assert_eq!(shown["attempts"], 1);
    assert_eq!(shown["deferrals"], 0);
    assert_eq!(shown["recipients"], 1);
    assert_eq!(shown["error"], Value::Null);
    assert!(shown["sent_at"]["utc"].is_string(), "{shown}");
    assert!(shown["created_at"]["uk"].is_string(), "{shown}");
    assert_eq!(shown["return_path"], Value::Null, "no mail.bounce_address");
    assert_eq!(shown["triage_copy"], Value::Null);
    let bounces = shown["bounces"].as_array().unwrap();
    assert_eq!(bounces.len(), 1, "{shown}");
    assert_eq!(bounces[0]["kind"], "hard");
    assert_eq!(bounces[0]["status"], "5.1.1");
    assert!(bounces[0]["received_at"]["utc"].is_string());

    let text = run(&app, &["outbox", "show", &sent.to_string()]).await;
    assert_exit(&text, 0);
    let printed = stdout(&text);
    for line in ["kind         enquiry_ack", "recipients   1", "1 bounce(s):"] {
        assert!(printed.contains(line), "{line:?}: {printed}");
    }
    assert!(
        printed
            .lines()
            .any(|l| l.contains("hard") && l.contains("5.1.1")),
        "{printed}"
    );
    assert!(
        printed.contains("UTC") && printed.contains("UK time"),
        "{printed}"
    );
    for printed in [shown.to_string(), printed] {
        assert_no_personal_data(&printed, &["sam", "okafor", "Recipient address", "unknown"]);
    }

    // A coordinators' email of two recipients that bounced for good after the relay took it,
    // and whose triage copy was queued.
    let failed = insert_email(
        &app,
        "enquiry",
        &["rpec.london@example.org", "kim.lee@example.org"],
        "failed",
        Some(&format!(
            "bounced after the relay took it (5.1.1): 550 5.1.1 <kim.lee@example.org>: {diagnostic}"
        )),
        None,
    )
    .await;
    insert_bounce(&app, failed, "kim.lee@example.org", "hard", diagnostic).await;
    let triage = insert_email(
        &app,
        "enquiry_undeliverable",
        &["triage@example.org"],
        "sent",
        None,
        Some(failed),
    )
    .await;
    let shown = run_json(&app, &["outbox", "show", &failed.to_string()], 0).await;
    assert_eq!(shown["status"], "failed", "{shown}");
    assert_eq!(shown["error"], "bounced");
    assert_eq!(shown["error_text"], "bounced 5.1.1");
    assert_eq!(shown["enhanced_status"], "5.1.1");
    assert_eq!(shown["recipients"], 2);
    assert_eq!(shown["triage_copy"]["id"], triage);
    assert_eq!(shown["bounces"][0]["kind"], "hard");
    let text = run(&app, &["outbox", "show", &failed.to_string()]).await;
    assert_exit(&text, 0);
    assert!(stdout(&text).contains("bounced 5.1.1"), "{}", stdout(&text));
    assert!(
        stdout(&text).contains(&format!("triage copy  {triage} (")),
        "{}",
        stdout(&text)
    );
    for printed in [shown.to_string(), stdout(&text)] {
        assert_no_personal_data(&printed, &["kim", "rpec.london", "triage@", "Recipient"]);
    }
    // And `outbox list` gives the same code.
    let listed = run_json(&app, &["outbox", "list", "--kind", "enquiry"], 0).await;
    assert_eq!(listed["emails"][0]["error"], "bounced", "{listed}");
    assert_eq!(listed["emails"][0]["enhanced_status"], "5.1.1");

    // An id that is no email: said so, exit 1, in both forms.
    let missing = (triage + 1000).to_string();
    let out = run(&app, &["outbox", "show", &missing]).await;
    assert_exit(&out, 1);
    assert!(
        stdout(&out).contains(&format!("{missing}: no such email")),
        "{}",
        stdout(&out)
    );
    let none = run_json(&app, &["outbox", "show", &missing], 1).await;
    assert_eq!(none["found"], false, "{none}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_show_gives_the_return_path_that_names_the_email() {
    let app = spawn_app().await;
    let one = insert_email(
        &app,
        "enquiry_ack",
        &["sam@school.example.org"],
        "sent",
        None,
        None,
    )
    .await;
    let two = insert_email(
        &app,
        "enquiry",
        &["a@example.org", "b@example.org"],
        "sent",
        None,
        None,
    )
    .await;
    let env = [("RPEC_MAIL__BOUNCE_ADDRESS", "bounces@bounces.example.org")];
    let paths = rpec_notify::tokens::ReturnPaths::new(
        "bounces",
        "bounces.example.org",
        app.settings.token_keys.clone(),
    );
    for (id, recipient) in [(one, 0), (two, rpec_notify::tokens::EVERY_RECIPIENT)] {
        let out = run_with(&app, &["outbox", "show", &id.to_string(), "--json"], &env).await;
        assert_exit(&out, 0);
        let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
        let return_path = shown["return_path"]
            .as_str()
            .unwrap_or_else(|| panic!("{shown}"));
        assert_eq!(
            paths.check(return_path),
            Some(rpec_notify::tokens::Returned {
                outbox_id: id,
                recipient
            }),
            "{return_path}"
        );
        let text = run_with(&app, &["outbox", "show", &id.to_string()], &env).await;
        assert_exit(&text, 0);
        assert!(
            stdout(&text).contains(&format!("return path  {return_path}")),
            "{}",
            stdout(&text)
        );
        assert!(!stdout(&text).contains("sam"), "{}", stdout(&text));
    }
    app.stop().await;
}

/// `suppressions list|remove`: the one command that prints addresses, since it is how an
/// operator finds and lifts a suppression; any case finds the lower-cased row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suppressions_are_listed_and_removed_in_any_case_and_a_stranger_is_reported() {
    let app = spawn_app().await;
    for (address, reason) in [
        (
            "jo.bloggs@school.example.org",
            "hard bounce of outbox 12 (5.1.1)",
        ),
        ("kim.lee@school.example.org", "complaint about outbox 14"),
    ] {
        sqlx::query("INSERT INTO suppressions (email, reason) VALUES ($1, $2)")
            .bind(address)
            .bind(reason)
            .execute(&app.pool)
            .await
            .unwrap();
    }
    let all = run_json(&app, &["suppressions", "list"], 0).await;
    assert_eq!(all["total"], 2, "{all}");
    assert_eq!(all["suppressions"].as_array().unwrap().len(), 2);
    let cut = run_json(&app, &["suppressions", "list", "--limit", "1"], 0).await;
    assert_eq!(cut["total"], 2, "{cut}");
    assert_eq!(cut["suppressions"].as_array().unwrap().len(), 1);

    let jo = run_json(
        &app,
        &[
            "suppressions",
            "list",
            "--address",
            "Jo.Bloggs@School.Example.org",
        ],
        0,
    )
    .await;
    assert_eq!(jo["total"], 1, "{jo}");
    let entry = &jo["suppressions"][0];
    assert_eq!(entry["address"], "jo.bloggs@school.example.org");
    assert_eq!(entry["reason"], "hard bounce of outbox 12 (5.1.1)");
    assert!(entry["suppressed_at"].is_string() && entry["since_uk"].is_string());
    let text = run(&app, &["suppressions", "list"]).await;
    assert_exit(&text, 0);
    let printed = stdout(&text);
    assert!(printed.contains("kim.lee@school.example.org"), "{printed}");
    assert!(printed.contains("complaint about outbox 14"), "{printed}");
    assert!(printed.contains("2 of 2 suppressed"), "{printed}");

    // One suppressed (in another case), one never was: exit 1, and the first is removed.
    let out = run_json(
        &app,
        &[
            "suppressions",
            "remove",
            "JO.BLOGGS@school.example.org",
            "nobody@school.example.org",
        ],
        1,
    )
    .await;
    assert_eq!(
        out["removed"],
        json!(["jo.bloggs@school.example.org"]),
        "{out}"
    );
    assert_eq!(out["count"], 1);
    assert_eq!(out["not_suppressed"], json!(["nobody@school.example.org"]));
    let left = app.strings("SELECT email FROM suppressions").await;
    assert_eq!(left, ["kim.lee@school.example.org"]);

    let again = run(
        &app,
        &["suppressions", "remove", "jo.bloggs@school.example.org"],
    )
    .await;
    assert_exit(&again, 1);
    assert!(
        stdout(&again).contains("jo.bloggs@school.example.org: not suppressed"),
        "{}",
        stdout(&again)
    );
    let last = run(
        &app,
        &["suppressions", "remove", "Kim.Lee@school.example.org"],
    )
    .await;
    assert_exit(&last, 0);
    assert!(
        stdout(&last).contains("1 suppression(s) removed"),
        "{}",
        stdout(&last)
    );
    assert_eq!(
        run_json(&app, &["suppressions", "list"], 0).await["total"],
        0
    );
    app.stop().await;
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn exit_codes_say_whether_the_fault_is_the_configuration_or_a_dependency() {
    let config = tempfile::tempdir().unwrap();
    for f in ["rpec.toml", "regions.toml", "bank-holidays.toml"] {
        std::fs::copy(manifest_dir().join("config").join(f), config.path().join(f)).unwrap();
    }
    // A short acquire time-out, so an unreachable database is reported quickly.
    std::fs::write(config.path().join("dev.toml"), FAST_TIMINGS).unwrap();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let command = |args: &[&str], env: &[(&str, String)]| {
        let mut c = binary();
        c.args(args)
            .current_dir(manifest_dir())
            .env("RPEC_CONFIG_DIR", config.path())
            .env("RPEC_TOKEN_SECRET", TEST_TOKEN_SECRET)
            .env("RPEC_AMQP_URL", amqp_url())
            .env("RPEC_QUEUE", format!("rpec-notify.events.{id}"))
            .env_remove("DATABASE_URL");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let stderr = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();

    let no_database = format!("postgres://postgres@127.0.0.1:{}/rpec", closed_port());
    let out = command(&["outbox", "status"], &[("DATABASE_URL", no_database)]);
    assert_exit(&out, 3);
    assert!(stderr(&out).contains("PostgreSQL"), "{}", stderr(&out));

    let no_broker = format!("amqp://guest:guest@127.0.0.1:{}/%2f", closed_port());
    let out = command(&["dead-letters", "list"], &[("RPEC_AMQP_URL", no_broker)]);
    assert_exit(&out, 3);
    assert!(stderr(&out).contains("RabbitMQ"), "{}", stderr(&out));

    // No DATABASE_URL; a database without the outbox; settings that do not load; a queue that
    // was never declared; arguments that do not parse.
    assert_exit(&command(&["outbox", "status"], &[]), 2);
    let out = command(
        &["outbox", "list"],
        &[("DATABASE_URL", database_admin_url())],
    );
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("no outbox"), "{}", stderr(&out));
    assert_exit(
        &command(
            &["dead-letters", "list"],
            &[("RPEC_PROFILE", "staging".into())],
        ),
        2,
    );
    let out = command(&["dead-letters", "purge"], &[]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("RPEC_QUEUE"), "{}", stderr(&out));
    assert_exit(&command(&["outbox", "retry", "twelve"], &[]), 2);
    assert_exit(&command(&["outbox", "show", "twelve"], &[]), 2);
    assert_exit(&command(&["outbox", "show"], &[]), 2);
    assert_exit(&command(&["suppressions", "remove"], &[]), 2);
    assert_exit(&command(&["outbox", "retry"], &[]), 2);
    assert_exit(&command(&["dead-letters", "replay"], &[]), 2);
}

/// `dead-letters purge --email ADDR`: the dead letters about one person go, every other stays,
/// whatever case the address was written in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_by_address_deletes_exactly_that_persons_dead_letters() {
    let app = spawn_app().await;
    // Refused for their topic: dead-lettered with the person's address in the body.
    let bad = |email: &str| contact_event(json!({"email": email, "topic": "gossip"}));
    for e in [
        bad("O@X.example.org"),
        bad("o@x.example.org"),
        bad("jo@x.example.org"),
    ] {
        app.publish(&e).await;
    }
    app.publish_raw("contact.submitted", b"not json").await;
    eventually(Duration::from_secs(20), "four dead letters", || async {
        (dead_letter_depth(&app).await == 4).then_some(())
    })
    .await;
    let out = run_json(
        &app,
        &["dead-letters", "purge", "--email", "o@x.EXAMPLE.org"],
        0,
    )
    .await;
    assert_eq!(out["purged"], 2, "{out}");
    assert_eq!(dead_letter_depth(&app).await, 2);
    let kept = app.dead_letters(2).await;
    assert!(kept
        .iter()
        .any(|d| String::from_utf8_lossy(&d.body).contains("jo@x.example.org")));
    assert!(kept.iter().any(|d| d.body == b"not json"));
    app.stop().await;
}

/// The operator's repair, end to end: enquiries that a handler bug dead-lettered (injected, as
/// `handler_failed`) are replayed once the bug is fixed, and every one reaches its coordinators.
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_cause_is_fixed_replay_all_brings_every_dead_lettered_enquiry_to_its_coordinators(
) {
    inject_handler_bug();
    let app = spawn_app().await;
    for _ in 0..3 {
        let mut e = contact_event(json!({"region": "london", "topic": "complex-case"}));
        e["id"] = json!(format!(
            "cafef00d-{}",
            &uuid::Uuid::new_v4().to_string()[9..]
        ));
        app.publish(&e).await;
    }
    eventually(Duration::from_secs(20), "three dead letters", || async {
        (dead_letter_depth(&app).await == 3).then_some(())
    })
    .await;
    let listed = run_json(&app, &["dead-letters", "list"], 0).await;
    let codes: Vec<&str> = listed["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["handler_failed"; 3]);
    assert!(app.smtp.received().is_empty());

    // The fix: the bug no longer hits these events.
    fail::cfg("handle::panic", "return(deadbeef)").unwrap();
    let replayed = run_json(&app, &["dead-letters", "replay", "--all"], 0).await;
    assert_eq!(
        replayed["replayed"].as_array().map(Vec::len),
        Some(3),
        "{replayed}"
    );
    let mails = app.mails(6).await;
    let urgent: Vec<_> = mails
        .iter()
        .filter(|m| m.envelope_to == ["rpec.london@example.org"])
        .collect();
    assert_eq!(urgent.len(), 3);
    assert!(urgent.iter().all(|m| m.subject().starts_with("URGENT:")));
    assert_eq!(dead_letter_depth(&app).await, 0);
    app.stop().await;
}

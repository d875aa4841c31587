//! `person.erasure_requested`: afterwards no column of any table holds the address or the name,
//! whatever case they were written in; other people's data stays; an audit row without personal
//! data records it.

use crate::helpers::*;
use crate::newsletter::{add_confirmed, link_to, newsletter, path_of, simple_sections, subscribe};
use serde_json::json;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_erasure_no_table_holds_the_address_or_the_name() {
    let app = spawn_app().await;
    let pool = &app.pool;
    let address = "Jo.Bloggs@School.example.org";
    let name = "Jo Bloggs";
    let other = "keep.me@school.example.org";
    let other_name = "Kept Person";

    // Everything the worker can hold about a person: an enquiry (about the newsletter, so a
    // pending subscription and a confirmation too), a confirmed subscription with a newsletter
    // sent to it, a suppression, and an email still waiting to be sent. The same for someone
    // else, which must survive.
    for (who, whose_name) in [(address, name), (other, other_name)] {
        app.publish(&contact_event(json!({
            "topic": "newsletter", "region": "london", "email": who, "name": whose_name,
            "message": format!("Please add {whose_name} to the newsletter.")
        })))
        .await;
        add_confirmed(pool, "north-west", who, Some(whose_name)).await;
    }
    // A registration for a session ten days ahead, with its reminders planned.
    let start = chrono::Utc::now() + chrono::Duration::days(10);
    app.publish(&session_event(
        "session.scheduled",
        "s-erase",
        &start.to_rfc3339(),
        &(start + chrono::Duration::hours(1)).to_rfc3339(),
        None,
    ))
    .await;
    for (i, (who, whose_name)) in [(address, name), (other, other_name)]
        .into_iter()
        .enumerate()
    {
        let mut registration = registration_event(&format!("erase-{i}"), "s-erase", who);
        registration["data"]["name"] = json!(whose_name);
        app.publish(&registration).await;
    }
    app.publish(&newsletter("nw-1", "north-west", simple_sections()))
        .await;
    let mails = app.mails(10).await;
    let sent_to_them = mails
        .iter()
        .find(|m| m.subject() == "Prevent update nw-1" && m.envelope_to == [address])
        .expect("their newsletter");
    let their_unsubscribe = link_to(&sent_to_them.text(), "/unsubscribe");
    app.all_sent().await;
    sqlx::query("INSERT INTO suppressions (email, reason) VALUES (lower($1), 'test')")
        .bind(address)
        .execute(pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO outbox (kind, template, stream, recipients, job, message_uuid,
                             next_attempt_at)
         VALUES ('subscription_confirm', 'subscription_confirm', 'transactional', $1, $2, $3,
                 now() + interval '1 day')",
    )
    .bind(vec![address.to_uppercase()])
    .bind(json!({"kind": "subscription_confirm", "name": name, "regions": []}))
    .bind(Uuid::new_v4())
    .execute(pool)
    .await
    .unwrap();
    // Bounces of their newsletter and the other person's, and mail at the bounce address that
    // nobody could read, quoting each address in another case.
    for who in [address, other] {
        sqlx::query(
            "INSERT INTO bounces (outbox_id, recipient, kind, status, reason)
             SELECT id, lower($1), 'soft', '4.2.2', '452 4.2.2 <' || $1 || '>: mailbox full'
             FROM outbox WHERE kind = 'newsletter' AND recipients = ARRAY[$1]",
        )
        .bind(who)
        .execute(pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO unparsed_bounces (content, digest)
             VALUES ('Subject: ?\r\n\r\nNo such person: ' || upper($1), sha256(convert_to($1, 'UTF8')))",
        )
        .bind(who)
        .execute(pool)
        .await
        .unwrap();
    }
    let before = find_everywhere(pool, address).await;
    let tables: Vec<&str> = before.iter().map(|f| f.0.as_str()).collect();
    for table in [
        "enquiries",
        "subscriptions",
        "outbox",
        "suppressions",
        "registrations",
        "bounces",
        "unparsed_bounces",
    ] {
        assert!(
            tables.contains(&table),
            "{table} holds them before: {before:?}"
        );
    }

    // Asked in another case than any of the stored ones.
    let erasure = json!({
        "id": Uuid::new_v4().to_string(), "type": "person.erasure_requested", "version": 1,
        "occurred_at": "2025-02-01T09:00:00Z", "data": {"email": "JO.BLOGGS@school.EXAMPLE.org"}
    });
    app.publish(&erasure).await;
    app.processed(erasure["id"].as_str().unwrap()).await;

    assert_eq!(find_everywhere(pool, address).await, []);
    assert_eq!(find_everywhere(pool, name).await, []);
    assert_eq!(find_everywhere(pool, "jo.bloggs").await, []);
    // The same search does find the other person, so it is not vacuous.
    let kept = find_everywhere(pool, other).await;
    let kept_tables: Vec<&str> = kept.iter().map(|f| f.0.as_str()).collect();
    for table in [
        "enquiries",
        "subscriptions",
        "outbox",
        "registrations",
        "bounces",
    ] {
        assert!(kept_tables.contains(&table), "{table}: {kept:?}");
    }
    let kept_unparsed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM unparsed_bounces WHERE strpos(content, upper($1)) > 0",
    )
    .bind(other)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(kept_unparsed, 1, "the other person's unparsed bounce stays");
    assert!(!find_everywhere(pool, other_name).await.is_empty());

    // The audit row: the event, the time and counts; nothing about the person.
    let (requested_at, counts): (chrono::DateTime<chrono::Utc>, serde_json::Value) =
        sqlx::query_as("SELECT requested_at, counts FROM erasures WHERE event_id = $1")
            .bind(Uuid::parse_str(erasure["id"].as_str().unwrap()).unwrap())
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(requested_at.to_rfc3339(), "2025-02-01T09:00:00+00:00");
    assert_eq!(counts["subscriptions"], 2);
    assert_eq!(counts["enquiries"], 1);
    assert_eq!(counts["suppressions"], 1);
    assert_eq!(counts["newsletter_deliveries"], 1);
    assert_eq!(counts["registrations"], 1);
    assert_eq!(counts["reminders"], 3, "7 days, 1 day and 1 hour before");
    // The acknowledgement, the confirmation, the newsletter, the registration confirmation and
    // the waiting email to them, and the coordinators' copy of their enquiry (about them).
    assert_eq!(counts["emails"], 6);
    let reminders: Vec<String> = sqlx::query_scalar(
        "SELECT e.status FROM scheduled_emails e JOIN registrations r USING (registration_id)
         WHERE r.registration_id = 'erase-0'",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(reminders, ["dropped", "dropped", "dropped"]);
    let (anonymised,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM enquiries WHERE anonymised_at IS NOT NULL AND email IS NULL",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        anonymised, 1,
        "the enquiry stays, for the statistics, without them"
    );

    // Their old unsubscribe link finds nothing to end, and says so without an error.
    let (status, page) = app
        .post(&path_of(&their_unsubscribe), "List-Unsubscribe=One-Click")
        .await;
    assert_eq!(status, 200);
    assert!(page.contains("You are not subscribed"), "{page}");

    // A new request made after the erasure is a new person to us (one made before it, still on
    // its way, would be dropped: see below).
    let mut again = subscribe(address, None, &["london"]);
    again["occurred_at"] = json!("2025-02-01T09:00:01Z");
    app.publish(&again).await;
    app.mails(11).await;
    app.stop().await;
}

/// Two people whose addresses contain each other: erasing one finds exactly that one, in every
/// table, and leaves every row of the other, and the development relay's `.eml` files of the
/// erased person go too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_finds_exactly_the_person_even_when_another_address_contains_theirs() {
    let (erased, kept) = ("o@x.example.org", "jo@x.example.org");
    let app = spawn_app().await;
    let pool = &app.pool;
    let start = chrono::Utc::now() + chrono::Duration::days(10);
    app.publish(&session_event(
        "session.scheduled",
        "s-exact",
        &start.to_rfc3339(),
        &(start + chrono::Duration::hours(1)).to_rfc3339(),
        None,
    ))
    .await;
    for (i, who) in [erased, kept].into_iter().enumerate() {
        app.publish(&contact_event(json!({"region": "london", "email": who})))
            .await;
        add_confirmed(pool, "london", who, Some("Someone")).await;
        app.publish(&registration_event(&format!("exact-{i}"), "s-exact", who))
            .await;
    }
    // Each: an enquiry to the coordinators and its acknowledgement, a registration confirmation.
    app.mails(6).await;
    app.all_sent().await;
    let about = |who: &'static str| async move {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE about @> ARRAY[$1]")
            .bind(who)
            .fetch_one(pool)
            .await
            .unwrap();
        n
    };
    let kept_emails = about(kept).await;
    assert_eq!(
        kept_emails, 3,
        "their coordinator copy, acknowledgement and confirmation"
    );
    assert_eq!(about(erased).await, 3);

    let erasure = simple_event(
        "person.erasure_requested",
        json!({"email": "O@X.example.org"}),
    );
    app.publish(&erasure).await;
    app.processed(erasure["id"].as_str().unwrap()).await;

    assert_eq!(about(erased).await, 0);
    assert_eq!(
        about(kept).await,
        kept_emails,
        "nothing of the other person's mail went"
    );
    let count = |sql: &'static str, who: &'static str| async move {
        let n: i64 = sqlx::query_scalar(sql)
            .bind(who)
            .fetch_one(pool)
            .await
            .unwrap();
        n
    };
    for (sql, what) in [
        (
            "SELECT count(*) FROM subscriptions WHERE lower(email) = $1",
            "subscription",
        ),
        (
            "SELECT count(*) FROM enquiries WHERE lower(email) = $1",
            "enquiry",
        ),
        (
            "SELECT count(*) FROM registrations WHERE lower(email) = $1 AND status = 'registered'",
            "registration",
        ),
        (
            "SELECT count(*) FROM scheduled_emails e JOIN registrations r USING (registration_id)
             WHERE lower(r.email) = $1 AND e.status = 'pending'",
            "reminders",
        ),
    ] {
        assert_eq!(count(sql, erased).await, 0, "{what} of the erased person");
        assert!(
            count(sql, kept).await > 0,
            "{what} of the other person stays"
        );
    }
    app.stop().await;
}

/// The file relay's `.eml` files (`make run` writes them to `var/mail/`) hold whole emails:
/// erasure deletes the ones to or about the person, and only those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_reaches_the_file_relays_mail_files() {
    let worker = crate::binary::RealWorker::start().await;
    worker.publish_events(&[
        contact_event(json!({"region": "london", "email": "o@x.example.org"})),
        contact_event(json!({"region": "london", "email": "jo@x.example.org"})),
    ]);
    worker
        .wait_for("", 4, std::time::Duration::from_secs(20))
        .await;
    worker.publish_events(&[simple_event(
        "person.erasure_requested",
        json!({"email": "o@x.example.org"}),
    )]);
    eventually(
        std::time::Duration::from_secs(20),
        "the erased person's two files to go",
        || async { (worker.mails().len() == 2).then_some(()) },
    )
    .await;
    for mail in worker.mails() {
        let to = mail.header("To").unwrap_or_default();
        let reply_to = mail.header("Reply-To").unwrap_or_default();
        assert!(
            to.contains("jo@x.example.org") || reply_to.contains("jo@x.example.org"),
            "only the other person's mail is left: {to} / {reply_to}"
        );
    }
    let (status, _, _) = worker.terminate().await;
    assert!(status.success());
}

/// A registration that was waiting in the retry queue for its session when its person asked to
/// be erased does not bring them back when the session arrives: it is dropped and counted in the
/// erasure's audit row. A registration made after the erasure (new consent) goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_still_on_its_way_when_the_erasure_came_is_dropped() {
    let app = spawn_app().await;
    let who = "late@x.example.org";
    let waiting = registration_event("late-1", "s-late", who);
    app.publish(&waiting).await;
    eventually(
        std::time::Duration::from_secs(20),
        "the registration to wait for its session",
        || async {
            (app.metric("rpec_events_retried_total{type=\"registration.created\"}")
                .await
                >= 1.0)
                .then_some(())
        },
    )
    .await;
    let erasure = simple_event("person.erasure_requested", json!({"email": who}));
    app.publish(&erasure).await;
    app.processed(erasure["id"].as_str().unwrap()).await;
    let start = chrono::Utc::now() + chrono::Duration::days(10);
    app.publish(&session_event(
        "session.scheduled",
        "s-late",
        &start.to_rfc3339(),
        &(start + chrono::Duration::hours(1)).to_rfc3339(),
        None,
    ))
    .await;
    app.processed(waiting["id"].as_str().unwrap()).await;
    app.settle().await;
    let held: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM registrations WHERE lower(email) = $1)
              + (SELECT count(*) FROM outbox WHERE about @> ARRAY[$1])",
    )
    .bind(who)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(held, 0, "nothing of the erased person came back");
    let counts: serde_json::Value =
        sqlx::query_scalar("SELECT counts FROM erasures WHERE event_id = $1")
            .bind(Uuid::parse_str(erasure["id"].as_str().unwrap()).unwrap())
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(counts["late_events_dropped"], 1, "{counts}");

    // Asked again after the erasure: a new person to us.
    let mut again = registration_event("late-2", "s-late", who);
    again["occurred_at"] = json!((chrono::Utc::now() + chrono::Duration::seconds(1)).to_rfc3339());
    app.publish(&again).await;
    let confirmation = app.exactly("You are registered", 1).await;
    assert_eq!(confirmation[0].envelope_to, [who]);
    app.stop().await;
}

/// The keyed hash an erasure leaves is kept as long as a dead letter about the person can live,
/// and swept after that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hash_an_erasure_leaves_goes_once_no_dead_letter_can_bring_the_person_back() {
    let app = spawn_app_with(Options::at("2025-03-03T10:00:00Z")).await;
    let erasure = simple_event(
        "person.erasure_requested",
        json!({"email": "gone@x.example.org"}),
    );
    app.publish(&erasure).await;
    app.processed(erasure["id"].as_str().unwrap()).await;
    let hashes = || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM erased_addresses")
            .fetch_one(&app.pool)
            .await
            .unwrap();
        n
    };
    let sweeper = app.sweeper().await;
    app.set_time("2025-04-01T10:00:00Z"); // 29 days on: a dead letter may still be replayed
    rpec_notify::retention::sweep_once(&sweeper).await.unwrap();
    assert_eq!(hashes().await, 1);
    app.set_time("2025-04-03T10:00:01Z"); // past the 30 days dead letters live
    let swept = rpec_notify::retention::sweep_once(&sweeper).await.unwrap();
    assert_eq!(swept.erased_addresses, 1);
    assert_eq!(hashes().await, 0);
    app.stop().await;
}

//! Personal data is kept only as long as the configured retention says.

use crate::helpers::*;
use crate::newsletter::{add_confirmed, newsletter, simple_sections, subscribe};
use chrono::{DateTime, Duration, Utc};
use rpec_notify::retention::{sweep_once, Swept};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enquiries_registrations_and_sent_emails_are_cleared_after_their_retention() {
    let now = Utc::now();
    let app = spawn_app_with(Options::at(&now.to_rfc3339())).await;
    let enquiry = contact_event(
        json!({"region": "london", "name": "Avery Keeps", "email": "avery@school.example.org"}),
    );
    app.publish(&enquiry).await;
    // Claimed at once: this test is about retention, and an unclaimed enquiry would be
    // escalated (two more emails) in whichever scheduler round saw the clock past its deadline.
    app.publish(&simple_event(
        "enquiry.claimed",
        json!({"enquiry_id": enquiry["data"]["enquiry_id"], "by": "rpec.london@example.org"}),
    ))
    .await;
    let start = now + Duration::days(2);
    app.publish(&session_event(
        "session.scheduled",
        "s-ret",
        &start.to_rfc3339(),
        &(start + Duration::hours(1)).to_rfc3339(),
        None,
    ))
    .await;
    app.publish(&registration_event(
        "ret-1",
        "s-ret",
        "robin@school.example.org",
    ))
    .await;
    app.handled(4).await;
    app.mails(3).await;
    app.all_sent().await;
    let sweeper = app.sweeper().await;

    // Within every retention period: nothing goes.
    app.clock.set(now + Duration::days(29));
    assert_eq!(sweep_once(&sweeper).await.unwrap(), Swept::default());

    // 30 days after sending and after the session ended: emails and registrations go.
    app.clock.set(now + Duration::days(33));
    let swept = sweep_once(&sweeper).await.unwrap();
    assert_eq!(
        (swept.enquiries, swept.registrations, swept.emails),
        (0, 1, 3)
    );
    let registrant: Vec<(Option<String>, Option<String>)> =
        sqlx::query_as("SELECT name, email FROM registrations")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(registrant, [(None, None)]);

    // 90 days after it arrived: the enquiry is anonymised; its id and routing stay.
    app.clock.set(now + Duration::days(91));
    assert_eq!(sweep_once(&sweeper).await.unwrap().enquiries, 1);
    let row: (String, Option<String>, Option<String>, Option<String>) =
        sqlx::query_as("SELECT region, name, email, message FROM enquiries")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(row, ("london".to_string(), None, None, None));
    sweeper.pool.close().await;
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Every place, every period.

/// People, each (address, name), planted where the worker keeps them.
const PENDING: (&str, &str) = ("pending.person@school.example.org", "Pat Pending");
const ENQUIRER: (&str, &str) = ("ellis.enquirer@school.example.org", "Ellis Enquirer");
const REGISTRANT: (&str, &str) = ("robin.registrant@school.example.org", "Robin Registrant");
const LEFT: (&str, &str) = ("lee.left@school.example.org", "Lee Left");
const KEPT: (&str, &str) = ("kim.kept@school.example.org", "Kim Kept");
/// The test relay refuses addresses starting with "bounce" for good (550).
const BOUNCED: (&str, &str) = ("bounce.reader@school.example.org", "Bo Bounced");

/// A person's address or name in a table, until the end of its period (None: kept throughout).
struct Place {
    needle: &'static str,
    table: &'static str,
    until: Option<DateTime<Utc>>,
}

/// Rows without personal data (bookkeeping): `sql` counts them, `times` are the times their
/// periods run from, one per row.
struct Rows {
    what: &'static str,
    sql: String,
    times: Vec<DateTime<Utc>>,
    period: Duration,
}

impl Rows {
    /// How many must be left at `now`: a row goes once its time is more than the period ago.
    fn expected(&self, now: DateTime<Utc>) -> i64 {
        self.times
            .iter()
            .filter(|t| now <= **t + self.period)
            .count() as i64
    }
}

async fn time_of(pool: &sqlx::PgPool, sql: &str, bind: &str) -> DateTime<Utc> {
    sqlx::query_scalar(sql)
        .bind(bind)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql} ({bind}): {e}"))
}

async fn times_of(pool: &sqlx::PgPool, sql: &str) -> Vec<DateTime<Utc>> {
    sqlx::query_scalar(sql).fetch_all(pool).await.unwrap()
}

fn add(total: &mut Swept, s: Swept) {
    total.enquiries += s.enquiries;
    total.registrations += s.registrations;
    total.emails += s.emails;
    total.pending_subscriptions += s.pending_subscriptions;
    total.unsubscribed_subscriptions += s.unsubscribed_subscriptions;
    total.suppressions += s.suppressions;
    total.processed_events += s.processed_events;
    total.scheduled_emails += s.scheduled_emails;
    total.newsletter_deliveries += s.newsletter_deliveries;
    total.digest_runs += s.digest_runs;
}

/// Each kind of personal data, planted through the events that cause it, is found in its
/// tables (by a search of every text column of every table) up to the end of its period and
/// in none after it; bookkeeping rows likewise. Every period is checked one second inside it
/// (kept) and one second past it (gone), on the shipped defaults.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_place_of_personal_data_is_emptied_at_the_end_of_its_period() {
    let t0 = Utc::now();
    let app = spawn_app_with(Options::at(&t0.to_rfc3339())).await;
    let pool = &app.pool;
    let s = &app.settings;
    assert_eq!(
        (
            s.retention.enquiry_days,
            s.retention.outbox_days,
            s.retention.registration_days,
            s.retention.suppression_days,
            s.retention.processed_event_days,
            s.retention.scheduled_email_days,
            s.retention.newsletter_delivery_days,
            s.retention.digest_run_days,
        ),
        (90, 30, 30, 365, 45, 30, 90, 90),
        "the shipped defaults"
    );
    let days = |n: u32| Duration::days(n.into());

    app.publish(&subscribe(PENDING.0, Some(PENDING.1), &["london"]))
        .await;
    let enquiry =
        contact_event(json!({"region": "london", "email": ENQUIRER.0, "name": ENQUIRER.1}));
    app.publish(&enquiry).await;
    // Claimed by a case system, with a note that names the enquirer: the note is theirs to
    // lose with the enquiry's other details (and, claimed, it is never escalated).
    app.publish(&simple_event(
        "enquiry.claimed",
        json!({"enquiry_id": enquiry["data"]["enquiry_id"], "by": "rpec.london@example.org",
               "note": format!("Phoned {} back", ENQUIRER.1)}),
    ))
    .await;
    let start = t0 + Duration::days(2);
    app.publish(&session_event(
        "session.scheduled",
        "s-ret",
        &start.to_rfc3339(),
        &(start + Duration::hours(1)).to_rfc3339(),
        None,
    ))
    .await;
    let mut registration = registration_event("ret-1", "s-ret", REGISTRANT.0);
    registration["data"]["name"] = json!(REGISTRANT.1);
    app.publish(&registration).await;
    for (who, name) in [LEFT, KEPT, BOUNCED] {
        add_confirmed(pool, "london", who, Some(name)).await;
    }
    app.publish(&newsletter("ret-nl", "london", simple_sections()))
        .await;
    app.publish(&simple_event(
        "person.erasure_requested",
        json!({"email": "someone.else@school.example.org"}),
    ))
    .await;
    app.handled(7).await;
    // The confirmation, the enquiry and its acknowledgement, the registration's confirmation,
    // and the newsletter to two readers; the third reader's is refused (failed, suppressed).
    app.mails(6).await;
    eventually(
        std::time::Duration::from_secs(20),
        "every email sent or failed",
        || async {
            let rows = app.outbox().await;
            (rows.len() == 7 && rows.iter().all(|r| r.1 == "sent" || r.1 == "failed")).then_some(())
        },
    )
    .await;
    assert_eq!(app.outbox_of("newsletter").await, ["failed:1", "sent:2"]);
    let cancel = simple_event("subscription.cancelled", json!({"email": LEFT.0}));
    app.publish(&cancel).await;
    app.processed(cancel["id"].as_str().unwrap()).await;
    // A digest firing (counts only), from before the test's first.
    sqlx::query(
        "INSERT INTO digest_runs (region, fire_at, ran_at, sessions, recipients)
         VALUES ('london', $1 - interval '1 hour', $1, 0, 0)",
    )
    .bind(t0)
    .execute(pool)
    .await
    .unwrap();

    // The session is over: its reminders and briefing are dropped by the worker's scheduler.
    let setup = t0 + Duration::days(2) + Duration::hours(2);
    app.clock.set(setup);
    app.settle().await;
    assert_eq!(
        app.strings("SELECT status FROM scheduled_emails").await,
        ["dropped", "dropped", "dropped"],
        "1 day and 1 hour before (7 days was past already), and the briefing"
    );

    let left_unsubscribed = time_of(
        pool,
        "SELECT unsubscribed_at FROM subscriptions WHERE email = $1",
        LEFT.0,
    )
    .await;
    let mail_of = |who: &'static str| async move {
        time_of(
            pool,
            "SELECT max(created_at) FROM outbox WHERE about @> ARRAY[lower($1)] AND status = 'sent'",
            who,
        )
        .await
    };
    let pending_until = time_of(
        pool,
        "SELECT confirmation_sent_at FROM subscriptions WHERE email = $1",
        PENDING.0,
    )
    .await
        + Duration::days(7);
    let enquiry_until = time_of(
        pool,
        "SELECT received_at FROM enquiries WHERE email = $1",
        ENQUIRER.0,
    )
    .await
        + days(s.retention.enquiry_days);
    let registration_until = time_of(
        pool,
        "SELECT ends_at FROM sessions WHERE session_id = $1",
        "s-ret",
    )
    .await
        + days(s.retention.registration_days);
    let suppression_until = time_of(
        pool,
        "SELECT suppressed_at FROM suppressions WHERE email = $1",
        BOUNCED.0,
    )
    .await
        + days(s.retention.suppression_days);
    let outbox = days(s.retention.outbox_days);
    let (pending_mail, enquiry_mail, registration_mail, left_mail, kept_mail) = (
        mail_of(PENDING.0).await + outbox,
        mail_of(ENQUIRER.0).await + outbox,
        mail_of(REGISTRANT.0).await + outbox,
        mail_of(LEFT.0).await + outbox,
        mail_of(KEPT.0).await + outbox,
    );
    let place = |needle, table, until| Place {
        needle,
        table,
        until,
    };
    let places = [
        // Never confirmed: gone with the link; the confirmation email itself with the outbox.
        place(PENDING.0, "subscriptions", Some(pending_until)),
        place(PENDING.1, "subscriptions", Some(pending_until)),
        place(PENDING.0, "outbox", Some(pending_mail)),
        place(PENDING.1, "outbox", Some(pending_mail)),
        place(ENQUIRER.0, "enquiries", Some(enquiry_until)),
        place(ENQUIRER.1, "enquiries", Some(enquiry_until)),
        place(ENQUIRER.0, "outbox", Some(enquiry_mail)),
        place(ENQUIRER.1, "outbox", Some(enquiry_mail)),
        place(REGISTRANT.0, "registrations", Some(registration_until)),
        place(REGISTRANT.1, "registrations", Some(registration_until)),
        // (The confirmation's name is filled in at send time: the row holds the address only.)
        place(REGISTRANT.0, "outbox", Some(registration_mail)),
        // Unsubscribed: gone at the first sweep.
        place(LEFT.0, "subscriptions", Some(left_unsubscribed)),
        place(LEFT.1, "subscriptions", Some(left_unsubscribed)),
        place(LEFT.0, "outbox", Some(left_mail)),
        // Confirmed: kept while they are subscribed (a newsletter's copy holds only ids).
        place(KEPT.0, "subscriptions", None),
        place(KEPT.1, "subscriptions", None),
        place(KEPT.0, "outbox", Some(kept_mail)),
        place(BOUNCED.0, "subscriptions", None),
        place(BOUNCED.1, "subscriptions", None),
        place(BOUNCED.0, "suppressions", Some(suppression_until)),
        // Failed and unresolved: never deleted by retention.
        place(BOUNCED.0, "outbox", None),
    ];
    let rows = [
        Rows {
            what: "processed_events",
            sql: "SELECT count(*) FROM processed_events".into(),
            times: times_of(pool, "SELECT processed_at FROM processed_events").await,
            period: days(s.retention.processed_event_days),
        },
        Rows {
            what: "scheduled_emails",
            sql: "SELECT count(*) FROM scheduled_emails".into(),
            times: times_of(pool, "SELECT handled_at FROM scheduled_emails").await,
            period: days(s.retention.scheduled_email_days),
        },
        Rows {
            what: "newsletter_deliveries (of the readers who stay)",
            sql: "SELECT count(*) FROM newsletter_deliveries".into(),
            times: times_of(
                pool,
                "SELECT n.received_at FROM newsletter_deliveries d JOIN newsletters n
                 USING (newsletter_id) JOIN subscriptions s ON s.id = d.subscription_id
                 WHERE s.status = 'confirmed'",
            )
            .await,
            period: days(s.retention.newsletter_delivery_days),
        },
        Rows {
            what: "digest_runs (the one from before the test)",
            sql: format!(
                "SELECT count(*) FROM digest_runs WHERE fire_at < '{}'",
                t0.to_rfc3339()
            ),
            times: vec![t0],
            period: days(s.retention.digest_run_days),
        },
        Rows {
            what: "erasures (the audit: kept)",
            sql: "SELECT count(*) FROM erasures".into(),
            times: vec![t0],
            period: Duration::days(100_000),
        },
    ];
    assert_eq!(rows[0].times.len(), 8);
    assert_eq!(rows[2].times.len(), 2);

    let sweeper = app.sweeper().await;
    let check = |now: DateTime<Utc>| {
        let (places, rows) = (&places, &rows);
        async move {
            let mut needles: Vec<&str> = places.iter().map(|p| p.needle).collect();
            needles.sort();
            needles.dedup();
            for needle in needles {
                let mut expected: Vec<&str> = places
                    .iter()
                    .filter(|p| p.needle == needle && p.until.is_none_or(|u| now <= u))
                    .map(|p| p.table)
                    .collect();
                expected.sort();
                assert_eq!(
                    tables_holding(pool, needle).await,
                    expected,
                    "{needle} at {now} ({} after the start)",
                    now - t0
                );
            }
            for r in rows {
                let (n,): (i64,) = sqlx::query_as(&r.sql).fetch_one(pool).await.unwrap();
                assert_eq!(n, r.expected(now), "{} at {now}", r.what);
            }
        }
    };

    // Before any sweep, the person who left is still there; the first sweep removes them and
    // their delivery record, and nothing else.
    assert_eq!(
        tables_holding(pool, LEFT.0).await,
        ["outbox", "subscriptions"]
    );
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM newsletter_deliveries")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(n, 3);
    let first = sweep_once(&sweeper).await.unwrap();
    assert_eq!(
        first,
        Swept {
            unsubscribed_subscriptions: 1,
            newsletter_deliveries: 1,
            ..Swept::default()
        }
    );
    check(setup).await;
    let mut total = first;

    // One second inside and one second past each period, in time order.
    let second = Duration::seconds(1);
    let mut moments: Vec<DateTime<Utc>> = places
        .iter()
        .filter_map(|p| p.until)
        .chain(rows.iter().flat_map(|r| {
            let first = r.times.iter().min().copied();
            let last = r.times.iter().max().copied();
            [first, last].into_iter().flatten().map(|t| t + r.period)
        }))
        .flat_map(|u| [u - second, u + second])
        .filter(|&t| t > setup && t < t0 + Duration::days(1000))
        .collect();
    moments.sort();
    moments.dedup();
    for now in moments {
        app.clock.set(now);
        add(&mut total, sweep_once(&sweeper).await.unwrap());
        check(now).await;
    }
    assert_eq!(
        (
            total.pending_subscriptions,
            total.unsubscribed_subscriptions,
            total.suppressions,
            total.enquiries,
            total.registrations,
            total.processed_events,
            total.scheduled_emails,
            total.newsletter_deliveries,
        ),
        // Eight events: the claim of the enquiry is one.
        (1, 1, 1, 1, 1, 8, 3, 3)
    );
    // Sent: the confirmation, the enquiry and its acknowledgement, the registration's, two
    // newsletters. Not the failed one.
    assert_eq!(total.emails, 6);
    assert!(total.digest_runs >= 1, "{total:?}");

    // An operator resolves the failure: the next sweep deletes it (it is long past its period).
    assert_eq!(app.outbox_of("newsletter").await, ["failed:1"]);
    sqlx::query("UPDATE outbox SET resolved_at = now() WHERE status = 'failed'")
        .execute(pool)
        .await
        .unwrap();
    assert_eq!(sweep_once(&sweeper).await.unwrap().emails, 1);
    assert_eq!(tables_holding(pool, BOUNCED.0).await, ["subscriptions"]);

    // The newsletter's deliveries are gone: published again, it goes to nobody, not even to a
    // reader confirmed since (who would have had it while the records were kept)...
    let (pruned,): (bool,) = sqlx::query_as(
        "SELECT deliveries_pruned_at IS NOT NULL FROM newsletters WHERE newsletter_id = 'ret-nl'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert!(pruned);
    add_confirmed(pool, "london", "new.reader@school.example.org", None).await;
    let again = newsletter("ret-nl", "london", simple_sections());
    app.publish(&again).await;
    app.processed(again["id"].as_str().unwrap()).await;
    app.settle().await;
    assert_eq!(app.outbox_of("newsletter").await, Vec::<String>::new());
    // ...while a new newsletter reaches them.
    app.publish(&newsletter("ret-nl-2", "london", simple_sections()))
        .await;
    let got = app.exactly("Prevent update ret-nl-2", 2).await;
    let mut to: Vec<String> = got.iter().flat_map(|m| m.envelope_to.clone()).collect();
    to.sort();
    assert_eq!(
        to,
        [
            "kim.kept@school.example.org",
            "new.reader@school.example.org"
        ]
    );
    assert!(app.mails_starting("Prevent update ret-nl").len() == 4);
    sweeper.pool.close().await;
    app.stop().await;
}

/// A sweep with 5,000 expired pending subscriptions to remove deletes them in statements of at
/// most `[retention] batch_size` rows, each its own transaction, and keeps the ones whose link
/// still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_sweep_runs_in_short_batches_and_keeps_what_has_not_expired() {
    let now = Utc::now();
    // The worker's own sweep (at its start) runs a month earlier, so it finds nothing of these.
    let app = spawn_app_with(Options::at(&(now - Duration::days(30)).to_rfc3339())).await;
    let pool = &app.pool;
    let batch = app.settings.retention.batch_size;
    assert_eq!(batch, 1000, "the shipped batch size");
    for (n, age) in [(5_000, "8 days"), (100, "6 days 23 hours")] {
        sqlx::query(&format!(
            "INSERT INTO subscriptions (region, email, name, status, requested_at,
                                        confirmation_sent_at)
             SELECT 'london', 'p' || i || '.' || md5(random()::text) || '@school.example.org',
                    'Person ' || i, 'pending', $1::timestamptz - interval '{age}',
                    $1::timestamptz - interval '{age}'
             FROM generate_series(1, {n}) AS i"
        ))
        .bind(now)
        .execute(pool)
        .await
        .unwrap();
    }
    // Every DELETE statement on subscriptions records how many rows it removed, and in which
    // transaction.
    for ddl in [
        "CREATE TABLE test_deletes (n bigint NOT NULL, tx bigint NOT NULL)",
        "CREATE FUNCTION test_count_deletes() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO test_deletes SELECT count(*), txid_current() FROM gone;
             RETURN NULL;
         END $$",
        "CREATE TRIGGER test_count_deletes AFTER DELETE ON subscriptions
         REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION test_count_deletes()",
    ] {
        sqlx::query(ddl).execute(pool).await.unwrap();
    }

    app.clock.set(now);
    let sweeper = app.sweeper().await;
    let swept = sweep_once(&sweeper).await.unwrap();
    assert_eq!(swept.pending_subscriptions, 5_000);
    let statements: Vec<(i64, i64)> = sqlx::query_as("SELECT n, tx FROM test_deletes")
        .fetch_all(pool)
        .await
        .unwrap();
    let removing: Vec<&(i64, i64)> = statements.iter().filter(|(n, _)| *n > 0).collect();
    assert!(
        removing.iter().all(|(n, _)| *n <= batch),
        "no statement removes more than a batch: {statements:?}"
    );
    assert_eq!(removing.len(), 5, "{statements:?}");
    assert_eq!(removing.iter().map(|(n, _)| n).sum::<i64>(), 5_000);
    let mut transactions: Vec<i64> = removing.iter().map(|(_, tx)| *tx).collect();
    transactions.dedup();
    assert_eq!(transactions.len(), 5, "each batch its own transaction");
    let (left,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM subscriptions WHERE status = 'pending'")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(left, 100, "links that still work keep their subscription");
    sweeper.pool.close().await;
    app.stop().await;
}

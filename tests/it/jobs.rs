//! Typed email jobs: rows an older worker queued (a kind string and a loose context) are sent
//! by this one once its migration has run; what the set-based enqueue writes reads as the job
//! of each member; a job that does not parse fails its own row, for good, and nothing else;
//! the table keeps a row's kind equal to its job's.

use crate::helpers::*;
use crate::newsletter::add_confirmed;
use rpec_notify::outbox::job::{Member, Members};
use rpec_notify::outbox::{self, Audience, ForEach, Job, NewEmails, KINDS};
use rpec_notify::state::session::SessionView;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

/// A session far ahead, as the sessions table holds it.
fn session_row(session_id: &str, status: &str) -> String {
    format!(
        "INSERT INTO sessions (session_id, title, audience, region, starts_at, ends_at,
                               registration_url, status, first_seen_at, last_event_at)
         VALUES ('{session_id}', 'Prevent for DSLs {session_id}', 'Designated safeguarding leads',
                 'london', '2099-10-02T14:30:00Z', '2099-10-02T15:30:00Z',
                 'https://www.eventbrite.co.uk/e/{session_id}', '{status}', now(), now())"
    )
}

fn registration_row(registration_id: &str, session_id: &str, email: &str) -> String {
    format!(
        "INSERT INTO registrations (registration_id, session_id, name, email, created_at)
         VALUES ('{registration_id}', '{session_id}', 'Jo Bloggs', '{email}', now())"
    )
}

/// An outbox row as the worker before migration 0009 wrote it: a kind, its template and
/// stream, and the context.
fn old_row(kind: &str, template: &str, stream: &str, to: &str, context: Value) -> String {
    let context = context.to_string().replace('\'', "''");
    format!(
        "INSERT INTO outbox (kind, template, stream, recipients, context, message_uuid)
         VALUES ('{kind}', '{template}', '{stream}', ARRAY['{to}'], '{context}'::jsonb,
                 gen_random_uuid())"
    )
}

fn old_enquiry() -> Value {
    json!({
        "enquiry_id": "enq-old", "urgent": false, "received": "Thursday 3 October 2024, 11:15am",
        "topic": "training", "topic_label": "Training for staff", "setting_label": "School",
        "name": "Sam Okafor", "email": "sam@school.example.org", "organisation": "Riverside Academy",
        "phone": null, "area": null, "message": "Could you train our staff?",
        "region_name": "London", "routing_note": "The enquirer chose the London region."
    })
}

/// Every kind of email, queued by the previous version (and one of each of the rows it
/// needs), is sent by this one after the migration, as that version would have sent it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rows_an_older_worker_queued_are_sent_after_the_migration() {
    let view = json!({
        "session_id": "s-old", "title": "Prevent for DSLs s-old",
        "audience": "Designated safeguarding leads", "scope": "London", "national": false,
        "when": "Friday 2 October 2099, 3:30pm to 4:30pm", "date": "Friday 2 October 2099",
        "registration_url": "https://www.eventbrite.co.uk/e/s-old", "joining_url": null,
        "description": null, "cancel_reason": null
    });
    let mut undeliverable = old_enquiry();
    undeliverable["undeliverable"] =
        json!({"region_name": "London", "reason": "permanent error (550): no such mailbox"});
    let registrant = |id: &str| json!({"registration_id": id, "session_id": "s-old"});
    let statements = vec![
        session_row("s-old", "scheduled"),
        session_row("s-gone", "cancelled"),
        registration_row("r-confirm", "s-old", "confirm@school.example.org"),
        registration_row("r-remind", "s-old", "remind@school.example.org"),
        registration_row("r-moved", "s-old", "moved@school.example.org"),
        registration_row("r-link", "s-old", "link@school.example.org"),
        registration_row("r-cancel", "s-gone", "cancel@school.example.org"),
        "INSERT INTO subscriptions (id, region, email, name, status, confirmed_at)
         VALUES (101, 'london', 'reader@school.example.org', 'Rea Der', 'confirmed', now()),
                (102, 'london', 'digest@school.example.org', NULL, 'confirmed', now())"
            .into(),
        "INSERT INTO newsletters (newsletter_id, event_id, region, subject, sections,
                                  published_at)
         VALUES ('ldn-old', gen_random_uuid(), 'london', 'London Prevent update (old)',
                 '[{\"heading\": \"News\", \"html\": \"<p>News</p>\", \"text\": \"News\"}]',
                 now())"
            .into(),
        old_row(
            "enquiry",
            "enquiry_coordinator",
            "transactional",
            "rpec.london@example.org",
            old_enquiry(),
        ),
        old_row(
            "enquiry_ack",
            "enquiry_ack",
            "transactional",
            "sam@school.example.org",
            // As rows were written before the newsletter fields existed.
            json!({"enquiry_id": "enq-old", "name": "Sam Okafor", "topic_label": "Training",
                   "urgent": false, "region_name": "London", "newsletter": false}),
        ),
        old_row(
            "enquiry_undeliverable",
            "enquiry_undeliverable",
            "transactional",
            "prevent.triage@example.org",
            undeliverable,
        ),
        old_row(
            "registration_confirmation",
            "registration_confirmation",
            "transactional",
            "confirm@school.example.org",
            registrant("r-confirm"),
        ),
        old_row(
            "session_reminder",
            "session_reminder",
            "transactional",
            "remind@school.example.org",
            json!({"registration_id": "r-remind", "session_id": "s-old", "offset": "1h",
                   "starts_at": "2099-10-02T14:30:00+00:00",
                   "due_at": "2099-10-02T13:30:00+00:00"}),
        ),
        old_row(
            "session_moved",
            "session_moved",
            "transactional",
            "moved@school.example.org",
            json!({"registration_id": "r-moved", "session_id": "s-old",
                   "previous_when": "Thursday 1 October 2099, 3:30pm to 4:30pm"}),
        ),
        old_row(
            "joining_link_changed",
            "joining_link_changed",
            "transactional",
            "link@school.example.org",
            registrant("r-link"),
        ),
        old_row(
            "session_cancelled",
            "session_cancelled",
            "transactional",
            "cancel@school.example.org",
            json!({"registration_id": "r-cancel", "session_id": "s-gone"}),
        ),
        old_row(
            "coordinator_briefing",
            "coordinator_briefing",
            "transactional",
            "rpec.london@example.org",
            json!({"session_id": "s-old"}),
        ),
        old_row(
            "subscription_confirm",
            "subscription_confirm",
            "transactional",
            "new@school.example.org",
            json!({"name": null, "several": false, "region_names": "London",
                   "expires": "Saturday 12 October 2024",
                   "regions": [{"region_name": "London",
                                "confirm_url": "http://127.0.0.1:8080/subscriptions/confirm?token=x"}]}),
        ),
        old_row(
            "newsletter",
            "newsletter",
            "bulk",
            "reader@school.example.org",
            json!({"newsletter_id": "ldn-old", "subscription_id": 101}),
        ),
        old_row(
            "digest",
            "weekly_digest",
            "bulk",
            "digest@school.example.org",
            json!({"region_name": "London", "count": 1, "sessions": [view],
                   "subscription_id": 102}),
        ),
    ];
    let app = spawn_app_with(Options {
        older_database: Some(OlderDatabase {
            migrated_to: 8,
            statements,
        }),
        ..Options::default()
    })
    .await;

    // Every kind but the two that came after migration 0009 (enquiry reminders and escalations).
    let older_kinds: Vec<&str> = KINDS
        .iter()
        .copied()
        .filter(|k| !matches!(*k, "enquiry_reminder" | "enquiry_escalation"))
        .collect();
    assert_eq!(older_kinds.len(), 12);
    let mails = app.mails(older_kinds.len()).await;
    let subjects: BTreeSet<String> = mails.iter().map(Mail::subject).collect();
    let expected: BTreeSet<String> = [
        "Enquiry enq-old: Training for staff (Riverside Academy)",
        "We have received your enquiry (enq-old)",
        "UNDELIVERABLE to London: Enquiry enq-old: Training for staff (Riverside Academy)",
        "You are registered: Prevent for DSLs s-old, Friday 2 October 2099",
        "Reminder: Prevent for DSLs s-old starts in 1 hour",
        "Session moved: Prevent for DSLs s-old is now on Friday 2 October 2099, 3:30pm to 4:30pm",
        "Joining link for Prevent for DSLs s-old, Friday 2 October 2099",
        "Cancelled: Prevent for DSLs s-gone, Friday 2 October 2099, 3:30pm to 4:30pm",
        "Briefing: Prevent for DSLs s-old, Friday 2 October 2099, 3:30pm to 4:30pm (4 registered)",
        "Confirm your subscription to the London newsletter",
        "London Prevent update (old)",
        "New Prevent training sessions for London (1)",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(subjects, expected);
    let newsletter = mails
        .iter()
        .find(|m| m.envelope_to == ["reader@school.example.org"])
        .unwrap();
    assert!(
        newsletter.text().contains("Rea Der"),
        "{}",
        newsletter.text()
    );
    assert!(newsletter.header("List-Unsubscribe").is_some());
    let calendar = mails
        .iter()
        .find(|m| m.envelope_to == ["cancel@school.example.org"])
        .unwrap()
        .calendar()
        .expect("a calendar cancellation");
    assert!(calendar.contains("METHOD:CANCEL"), "{calendar}");

    app.all_sent().await;
    let (rows, unlike): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE job ->> 'kind' IS DISTINCT FROM kind) FROM outbox",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((rows, unlike), (older_kinds.len() as i64, 0));
    // The submitter's address is still what erasure finds the coordinators' copy by.
    let about: Vec<String> = sqlx::query_scalar("SELECT about FROM outbox WHERE kind = 'enquiry'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(
        about.contains(&"sam@school.example.org".to_owned()),
        "{about:?}"
    );
    assert_eq!(app.smtp.received().len(), older_kinds.len());
    app.stop().await;
}

/// What `enqueue_each` writes for each kind of fan-out, read back from the table, is exactly
/// the job of each member (`ForEach::job_for`), with kind, template and stream to match.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_fan_out_writes_reads_as_the_job_of_each_member() {
    let app = spawn_app().await;
    let pool = &app.pool;
    let readers = [
        add_confirmed(pool, "london", "a.reader@school.example.org", Some("A")).await,
        add_confirmed(pool, "london", "b.reader@school.example.org", None).await,
    ];
    add_confirmed(pool, "north-west", "elsewhere@school.example.org", None).await;
    for statement in [
        session_row("s-fan", "scheduled"),
        registration_row("r-fan-1", "s-fan", "one@school.example.org"),
        registration_row("r-fan-2", "s-fan", "two@school.example.org"),
        "INSERT INTO newsletters (newsletter_id, event_id, region, subject, sections, published_at)
         VALUES ('ldn-fan', gen_random_uuid(), 'london', 'Fan', '[]', now())"
            .into(),
    ] {
        sqlx::query(&statement).execute(pool).await.unwrap();
    }
    let session: rpec_notify::state::session::SessionRow = sqlx::query_as(&format!(
        "SELECT {} FROM sessions WHERE session_id = 's-fan'",
        rpec_notify::state::session::SESSION_COLUMNS
    ))
    .fetch_one(pool)
    .await
    .unwrap();
    let regions = rpec_notify::config::Regions::load(&manifest_dir().join("config/regions.toml"))
        .expect("the shipped regions");
    let london = "london".parse().unwrap();
    let fans = [
        (
            ForEach::Newsletter {
                newsletter_id: "ldn-fan".into(),
            },
            Audience::NewReaders {
                region: london,
                after: 0,
                limit: 10,
            },
        ),
        (
            ForEach::Digest {
                region_name: "London".into(),
                sessions: vec![SessionView::new(&regions, &session)],
            },
            Audience::Readers(london),
        ),
        (
            ForEach::SessionMoved {
                previous_when: "Thursday 1 October 2099, 3:30pm to 4:30pm".into(),
            },
            Audience::Registrants("s-fan"),
        ),
        (ForEach::JoiningLinkChanged, Audience::Registrants("s-fan")),
        (ForEach::SessionCancelled, Audience::Registrants("s-fan")),
    ];
    for (each, to) in fans {
        let members: Vec<(String, Member)> = match each.members() {
            Members::Readers => vec![
                (
                    "a.reader@school.example.org".into(),
                    Member::Reader {
                        subscription_id: readers[0],
                    },
                ),
                (
                    "b.reader@school.example.org".into(),
                    Member::Reader {
                        subscription_id: readers[1],
                    },
                ),
            ],
            Members::Registrants => ["1", "2"]
                .map(|n| {
                    let address = if n == "1" { "one" } else { "two" };
                    (
                        format!("{address}@school.example.org"),
                        Member::Registrant {
                            registration_id: format!("r-fan-{n}"),
                            session_id: "s-fan".into(),
                        },
                    )
                })
                .to_vec(),
        };
        let emails = NewEmails {
            job: each.clone(),
            to,
            headers: vec![("List-Id", "<london.newsletters.example.org>".into())],
            priority: -10,
            source_event: None,
        };
        let mut tx = pool.begin().await.unwrap();
        let fanned = outbox::enqueue_each(&mut tx, &emails).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(fanned.queued, 2, "{each:?}");
        let kind = each.job_for(members[0].1.clone()).unwrap().kind();
        let rows: Vec<(String, String, String, Vec<String>, Value, Value)> = sqlx::query_as(
            "SELECT kind, template, stream, recipients, job, headers FROM outbox
             WHERE kind = $1 ORDER BY recipients[1]",
        )
        .bind(kind)
        .fetch_all(pool)
        .await
        .unwrap();
        assert_eq!(rows.len(), 2, "{each:?}");
        for ((row_kind, template, stream, to, job, headers), (address, member)) in
            rows.into_iter().zip(members)
        {
            let expected = each.job_for(member).unwrap();
            assert_eq!(to, [address]);
            assert_eq!(Job::from_value(job).unwrap(), expected, "{each:?}");
            assert_eq!(row_kind, expected.kind());
            assert_eq!(template, expected.template());
            assert_eq!(stream, expected.stream().as_str());
            assert_eq!(headers["List-Id"], "<london.newsletters.example.org>");
        }
    }
    // The newsletter's batch recorded its deliveries: a second pass queues nobody, and says
    // where the region's readers end.
    let again = NewEmails {
        job: ForEach::Newsletter {
            newsletter_id: "ldn-fan".into(),
        },
        to: Audience::NewReaders {
            region: london,
            after: 0,
            limit: 10,
        },
        headers: Vec::new(),
        priority: -10,
        source_event: None,
    };
    let mut tx = pool.begin().await.unwrap();
    let fanned = outbox::enqueue_each(&mut tx, &again).await.unwrap();
    assert_eq!(fanned.queued, 0);
    assert_eq!(fanned.last, Some(readers[1]));
    // A job meant for others is refused, and writes nothing.
    let wrong = NewEmails {
        job: ForEach::SessionCancelled,
        to: Audience::Readers(london),
        ..again.clone()
    };
    let refused = outbox::enqueue_each(&mut tx, &wrong).await;
    assert!(
        matches!(refused, Err(sqlx::Error::InvalidArgument(_))),
        "{refused:?}"
    );
    let unrecorded = NewEmails {
        to: Audience::Readers(london),
        ..again.clone()
    };
    assert!(outbox::enqueue_each(&mut tx, &unrecorded).await.is_err());
    tx.rollback().await.unwrap();
    app.stop().await;
}

/// A row whose job does not parse (written by hand, or by a version with other kinds) fails
/// for good at its first claim, says why, and is counted; the rows beside it are sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_does_not_parse_fails_its_row_alone() {
    let app = spawn_app().await;
    let insert = |kind: &'static str, job: Value| {
        let pool = app.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "INSERT INTO outbox (kind, template, stream, recipients, job, message_uuid)
                 VALUES ($1, $1, 'transactional', ARRAY['kim@school.example.org'], $2,
                         gen_random_uuid())
                 RETURNING id",
            )
            .bind(kind)
            .bind(job)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let missing = insert(
        "session_reminder",
        json!({"kind": "session_reminder", "session_id": "s-1"}),
    )
    .await;
    let unknown = insert("carrier_pigeon", json!({"kind": "carrier_pigeon"})).await;
    let wrong_type = insert(
        "enquiry_ack",
        json!({"kind": "enquiry_ack", "enquiry_id": 7, "name": "Kim", "topic_label": "Training",
               "urgent": false}),
    )
    .await;
    insert(
        "enquiry_ack",
        json!({"kind": "enquiry_ack", "enquiry_id": "enq-ok", "name": "Kim",
               "topic_label": "Training", "urgent": false, "region_name": null}),
    )
    .await;
    let mails = app.mails(1).await;
    assert_eq!(mails[0].subject(), "We have received your enquiry (enq-ok)");
    let failed: Vec<(i64, String, i32, String)> =
        eventually(Duration::from_secs(20), "the three rows failed", || async {
            let rows: Vec<(i64, String, i32, String)> = sqlx::query_as(
                "SELECT id, status, attempts, last_error FROM outbox
                 WHERE status = 'failed' ORDER BY id",
            )
            .fetch_all(&app.pool)
            .await
            .unwrap();
            (rows.len() == 3).then_some(rows)
        })
        .await;
    assert_eq!(
        failed.iter().map(|r| r.0).collect::<Vec<_>>(),
        [missing, unknown, wrong_type]
    );
    for (_, _, attempts, error) in &failed {
        assert_eq!(*attempts, 1, "failed at once, not retried: {error}");
        assert!(
            error.starts_with("not sendable: its job does not parse:"),
            "{error}"
        );
    }
    assert!(failed[0].3.contains("missing field"), "{}", failed[0].3);
    assert!(failed[1].3.contains("carrier_pigeon"), "{}", failed[1].3);
    app.settle().await;
    assert_eq!(
        app.metric("rpec_emails_failed_total{kind=\"unknown\"}")
            .await,
        1.0
    );
    assert_eq!(
        app.metric("rpec_emails_failed_total{kind=\"session_reminder\"}")
            .await,
        1.0
    );
    assert_eq!(app.smtp.received().len(), 1);
    app.stop().await;
}

/// The table itself keeps a row's kind equal to its job's tag, and a reader's subscription id
/// a number the claim can cast.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_refuses_a_kind_that_is_not_its_jobs() {
    let app = spawn_app().await;
    let insert = |kind: &'static str, job: Value| {
        let pool = app.pool.clone();
        async move {
            sqlx::query(
                "INSERT INTO outbox (kind, template, stream, recipients, job, message_uuid,
                                     next_attempt_at)
                 VALUES ($1, $1, 'bulk', ARRAY['kim@school.example.org'], $2, gen_random_uuid(),
                         now() + interval '1 day')",
            )
            .bind(kind)
            .bind(job)
            .execute(&pool)
            .await
        }
    };
    let violates = |r: Result<sqlx::postgres::PgQueryResult, sqlx::Error>, constraint: &str| {
        let e = r.expect_err("refused");
        let db = e.as_database_error().expect("a database error");
        assert_eq!(db.constraint(), Some(constraint), "{e}");
    };
    violates(
        insert("enquiry", json!({"kind": "enquiry_ack"})).await,
        "outbox_job_kind",
    );
    violates(insert("enquiry", json!({})).await, "outbox_job_kind");
    violates(
        insert(
            "newsletter",
            json!({"kind": "newsletter", "newsletter_id": "n", "subscription_id": "1; drop"}),
        )
        .await,
        "outbox_job_subscription_id",
    );
    insert(
        "newsletter",
        json!({"kind": "newsletter", "newsletter_id": "n", "subscription_id": 1}),
    )
    .await
    .expect("a well-formed row");
    app.stop().await;
}

//! Regional newsletters: double opt-in through the pages, the list headers, one-click
//! unsubscribe, the 24-hour rule, signed links, markdown, exactly-once per newsletter, contact
//! enquiries about the newsletter, suppression, and the example events through the real binary.

use crate::binary::Deployment;
use crate::helpers::*;
use chrono::Utc;
use rpec_notify::tokens::{self, Purpose};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;

pub fn subscribe(email: &str, name: Option<&str>, regions: &[&str]) -> Value {
    json!({
        "id": Uuid::new_v4().to_string(), "type": "subscription.requested", "version": 1,
        "occurred_at": "2024-10-05T14:00:00Z",
        "data": {"email": email, "name": name, "regions": regions}
    })
}

pub fn newsletter(newsletter_id: &str, region: &str, sections: Value) -> Value {
    json!({
        "id": Uuid::new_v4().to_string(), "type": "newsletter.published", "version": 1,
        "occurred_at": "2024-11-01T09:00:00Z",
        "data": {
            "newsletter_id": newsletter_id, "region": region,
            "subject": format!("Prevent update {newsletter_id}"),
            "preheader": "Regional trends and new training dates",
            "sections": sections,
            "web_url": "https://example.org/newsletters/1"
        }
    })
}

pub fn simple_sections() -> Value {
    json!([{"heading": "Regional trends", "body_markdown": "Providers report more **online** concerns."}])
}

/// A confirmed subscriber, written straight into the database (for speed); returns its id.
pub async fn add_confirmed(pool: &PgPool, region: &str, email: &str, name: Option<&str>) -> i64 {
    let (id,): (i64,) = sqlx::query_as(
        "INSERT INTO subscriptions (region, email, name, status, confirmed_at)
         VALUES ($1, $2, $3, 'confirmed', now()) RETURNING id",
    )
    .bind(region)
    .bind(email)
    .bind(name)
    .fetch_one(pool)
    .await
    .unwrap();
    id
}

/// The first link in `text` to `path` (`/subscriptions/confirm`, `/unsubscribe`), whole.
pub fn link_to(text: &str, path: &str) -> String {
    let at = text
        .find(&format!("{path}?token="))
        .unwrap_or_else(|| panic!("no {path} link in:\n{text}"));
    let start = text[..at].rfind("http").expect("an absolute link");
    let end = text[at..]
        .find(|c: char| c.is_whitespace() || matches!(c, '"' | '<' | '>'))
        .map_or(text.len(), |e| at + e);
    text[start..end].to_owned()
}

/// A link's path and query, for the test's HTTP helpers.
pub fn path_of(link: &str) -> String {
    let rest = link.split_once("://").expect("an absolute link").1;
    rest[rest.find('/').expect("a path")..].to_owned()
}

pub async fn status_of(pool: &PgPool, email: &str, region: &str) -> Option<String> {
    sqlx::query_as::<_, (String,)>(
        "SELECT status FROM subscriptions WHERE lower(email) = lower($1) AND region = $2",
    )
    .bind(email)
    .bind(region)
    .fetch_optional(pool)
    .await
    .unwrap()
    .map(|r| r.0)
}

fn to<'a>(mails: &'a [Mail], address: &str) -> Vec<&'a Mail> {
    mails
        .iter()
        .filter(|m| m.envelope_to.iter().any(|t| t == address))
        .collect()
}

async fn outbox_count(pool: &PgPool, kind: &str) -> i64 {
    sqlx::query_as::<_, (i64,)>("SELECT count(*) FROM outbox WHERE kind = $1")
        .bind(kind)
        .fetch_one(pool)
        .await
        .unwrap()
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_confirms_gets_the_newsletter_with_list_headers_and_leaves_in_one_click() {
    let app = spawn_app().await;
    let reader = "morgan.lee@primary.example.org";
    let other = "alex.kim@college.example.org";
    app.publish(&subscribe(reader, Some("Morgan Lee"), &["north-west"]))
        .await;
    app.publish(&subscribe(other, None, &["north-west"])).await;
    let mails = app.mails(2).await;

    let confirmation = to(&mails, reader)[0];
    assert_eq!(
        confirmation.subject(),
        "Confirm your subscription to the North-West newsletter"
    );
    assert!(confirmation.text().contains("Dear Morgan Lee,"));
    assert!(confirmation
        .header("From")
        .unwrap()
        .contains("rpec.notifications@example.org"));
    let confirm_link = link_to(&confirmation.text(), "/subscriptions/confirm");
    assert!(
        confirm_link.starts_with(&format!("http://{}/subscriptions/confirm?token=", app.http)),
        "{confirm_link}"
    );
    assert!(confirmation.html().contains("/subscriptions/confirm?token"));

    // GET shows a button and changes nothing, however often a scanner follows the link.
    for _ in 0..2 {
        let (status, page) = app.get(&path_of(&confirm_link)).await;
        assert_eq!(status, 200);
        assert!(page.contains("<form method=\"post\""), "{page}");
        assert!(page.contains("Confirm subscription</button>"), "{page}");
        assert!(page.contains("North-West"), "{page}");
        assert!(!page.contains(reader), "no personal data on the page");
    }
    assert_eq!(
        status_of(&app.pool, reader, "north-west").await.as_deref(),
        Some("pending")
    );
    let (status, page) = app.post(&path_of(&confirm_link), "").await;
    assert_eq!(status, 200);
    assert!(page.contains("Subscription confirmed"), "{page}");
    assert_eq!(
        status_of(&app.pool, reader, "north-west").await.as_deref(),
        Some("confirmed")
    );
    // Pressing again is harmless.
    let (status, page) = app.post(&path_of(&confirm_link), "").await;
    assert_eq!(status, 200);
    assert!(page.contains("already subscribed"), "{page}");

    let other_link = link_to(&to(&mails, other)[0].text(), "/subscriptions/confirm");
    assert_eq!(app.post(&path_of(&other_link), "").await.0, 200);

    app.publish(&newsletter("nw-1", "north-west", simple_sections()))
        .await;
    let mails = app.mails(4).await;
    let issue = to(&mails, reader)
        .into_iter()
        .find(|m| m.subject() == "Prevent update nw-1")
        .expect("the newsletter");
    assert_eq!(
        issue.header("List-Id").as_deref(),
        Some("<north-west.newsletters.example.org>")
    );
    let list_unsubscribe = issue.header("List-Unsubscribe").unwrap();
    assert!(
        list_unsubscribe.starts_with(&format!("<http://{}/unsubscribe?token=", app.http)),
        "{list_unsubscribe}"
    );
    assert_eq!(
        issue.header("List-Unsubscribe-Post").as_deref(),
        Some("List-Unsubscribe=One-Click")
    );
    assert!(issue
        .header("From")
        .unwrap()
        .contains("rpec.newsletters@example.org"));
    assert_eq!(issue.header("Auto-Submitted"), None);
    assert!(issue.header("Message-ID").is_some());
    let text = issue.text();
    assert!(text.contains("Dear Morgan Lee,"), "{text}");
    assert!(
        text.contains("Providers report more online concerns."),
        "{text}"
    );
    // The visible link is the reader's own, the same as the header's.
    let unsubscribe_link = link_to(&text, "/unsubscribe");
    assert_eq!(format!("<{unsubscribe_link}>"), list_unsubscribe);
    assert!(issue
        .html()
        .contains("Unsubscribe from the North-West newsletter"));
    let other_issue = to(&mails, other)
        .into_iter()
        .find(|m| m.subject() == "Prevent update nw-1")
        .expect("the other reader's copy");
    assert!(other_issue.text().contains("Hello,"));
    assert_ne!(
        link_to(&other_issue.text(), "/unsubscribe"),
        unsubscribe_link,
        "each reader has their own link"
    );

    // The link works: its page has a button, and opening it changes nothing.
    let (status, page) = app.get(&path_of(&unsubscribe_link)).await;
    assert_eq!(status, 200);
    assert!(page.contains("Unsubscribe</button>"), "{page}");
    assert_eq!(
        status_of(&app.pool, reader, "north-west").await.as_deref(),
        Some("confirmed")
    );
    // One-click (RFC 8058): a POST with that body and no cookies.
    let (status, _) = app
        .post(&path_of(&unsubscribe_link), "List-Unsubscribe=One-Click")
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        status_of(&app.pool, reader, "north-west").await.as_deref(),
        Some("unsubscribed")
    );

    // The next newsletter reaches the other reader, and not them.
    app.publish(&newsletter("nw-2", "north-west", simple_sections()))
        .await;
    let mails = app.mails(5).await;
    assert!(to(&mails, other)
        .iter()
        .any(|m| m.subject() == "Prevent update nw-2"));
    let queued_for_reader: Vec<(String,)> = sqlx::query_as(
        "SELECT job->>'newsletter_id' FROM outbox WHERE kind = 'newsletter' AND $1 = ANY(recipients)",
    )
    .bind(reader)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(queued_for_reader, [("nw-1".to_string(),)]);
    assert!(!to(&app.smtp.received(), reader)
        .iter()
        .any(|m| m.subject() == "Prevent update nw-2"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asking_again_never_unconfirms_and_a_pending_address_gets_one_confirmation_a_day() {
    let app = spawn_app().await;
    let reader = "sam.patel@academy.example.org";
    let first = subscribe(reader, Some("Sam Patel"), &["london"]);
    app.publish(&first).await;
    app.processed(first["id"].as_str().unwrap()).await;
    assert_eq!(outbox_count(&app.pool, "subscription_confirm").await, 1);

    // Asked again, in another case, within the day: still one subscription, no second email.
    let again = subscribe(&reader.to_uppercase(), None, &["london"]);
    app.publish(&again).await;
    app.processed(again["id"].as_str().unwrap()).await;
    assert_eq!(outbox_count(&app.pool, "subscription_confirm").await, 1);
    let (rows, name): (i64, Option<String>) =
        sqlx::query_as("SELECT count(*), max(name) FROM subscriptions WHERE lower(email) = $1")
            .bind(reader)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!((rows, name.as_deref()), (1, Some("Sam Patel")));

    // A day later (the stored time moved back), asking again sends it again.
    sqlx::query(
        "UPDATE subscriptions SET confirmation_sent_at = confirmation_sent_at - interval '25 hours'",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let later = subscribe(reader, None, &["london"]);
    app.publish(&later).await;
    app.processed(later["id"].as_str().unwrap()).await;
    assert_eq!(outbox_count(&app.pool, "subscription_confirm").await, 2);
    let mails = app.mails(2).await;
    assert_eq!(to(&mails, reader).len(), 2);

    // Confirmed through the page; asking again then changes nothing at all.
    let link = link_to(&mails[1].text(), "/subscriptions/confirm");
    assert_eq!(app.post(&path_of(&link), "").await.0, 200);
    let confirmed_at = |pool: PgPool| async move {
        sqlx::query_as::<_, (String, Option<chrono::DateTime<Utc>>)>(
            "SELECT status, confirmed_at FROM subscriptions WHERE lower(email) = $1",
        )
        .bind(reader)
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let before = confirmed_at(app.pool.clone()).await;
    assert_eq!(before.0, "confirmed");
    sqlx::query(
        "UPDATE subscriptions SET confirmation_sent_at = confirmation_sent_at - interval '25 hours'",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let once_more = subscribe(reader, Some("Another Name"), &["london"]);
    app.publish(&once_more).await;
    app.processed(once_more["id"].as_str().unwrap()).await;
    assert_eq!(confirmed_at(app.pool.clone()).await, before);
    assert_eq!(outbox_count(&app.pool, "subscription_confirm").await, 2);

    // A new region for a confirmed reader is a new opt-in, with its own link.
    let more = subscribe(reader, None, &["london", "south-east"]);
    app.publish(&more).await;
    let mails = app.mails(3).await;
    assert_eq!(
        mails[2].subject(),
        "Confirm your subscription to the South-East newsletter"
    );
    assert_eq!(
        status_of(&app.pool, reader, "london").await.as_deref(),
        Some("confirmed")
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn altered_forged_and_expired_links_get_a_400_page_and_change_nothing() {
    let app = spawn_app().await;
    let reader = "jo.smith@school.example.org";
    app.publish(&subscribe(reader, None, &["south-west"])).await;
    let mails = app.mails(1).await;
    let link = link_to(&mails[0].text(), "/subscriptions/confirm");
    let token = link.split_once("token=").unwrap().1.to_owned();

    let mut altered = token.clone();
    let middle = altered.len() / 2;
    let c = if &altered[middle..=middle] == "A" {
        "B"
    } else {
        "A"
    };
    altered.replace_range(middle..=middle, c);
    let id: (i64,) = sqlx::query_as("SELECT id FROM subscriptions")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let secret = TEST_TOKEN_SECRET.as_bytes();
    let expired = tokens::sign(
        secret,
        Purpose::Confirm,
        id.0,
        Utc::now() - chrono::Duration::seconds(1),
    );
    let forged = tokens::sign(
        b"not the worker's secret, but long enough",
        Purpose::Confirm,
        id.0,
        Utc::now() + chrono::Duration::days(1),
    );
    for (bad, heading) in [
        (altered.as_str(), "This link does not work"),
        (&forged, "This link does not work"),
        ("", "This link does not work"),
        (&expired, "This link has expired"),
    ] {
        let path = format!("/subscriptions/confirm?token={bad}");
        for (status, page) in [app.get(&path).await, app.post(&path, "").await] {
            assert_eq!(status, 400, "{bad}");
            assert!(page.contains(heading), "{bad}: {page}");
            assert!(page.contains("Nothing has been changed"));
        }
    }
    // A confirmation link is not an unsubscribe link.
    assert_eq!(
        app.post(&format!("/unsubscribe?token={token}"), "").await.0,
        400
    );
    assert_eq!(
        status_of(&app.pool, reader, "south-west").await.as_deref(),
        Some("pending")
    );

    // And the other way round, for a confirmed reader.
    assert_eq!(app.post(&path_of(&link), "").await.0, 200);
    let unsubscribe = tokens::sign(
        secret,
        Purpose::Unsubscribe,
        id.0,
        Utc::now() + chrono::Duration::days(1),
    );
    let mut altered = unsubscribe.clone();
    let last = altered.len() - 1;
    let c = if &altered[last..] == "A" { "B" } else { "A" };
    altered.replace_range(last.., c);
    let expired = tokens::sign(
        secret,
        Purpose::Unsubscribe,
        id.0,
        Utc::now() - chrono::Duration::seconds(1),
    );
    for bad in [&altered, &expired] {
        let (status, page) = app
            .post(
                &format!("/unsubscribe?token={bad}"),
                "List-Unsubscribe=One-Click",
            )
            .await;
        assert_eq!(status, 400, "{page}");
        assert_eq!(app.get(&format!("/unsubscribe?token={bad}")).await.0, 400);
    }
    assert_eq!(
        app.post(&format!("/subscriptions/confirm?token={unsubscribe}"), "")
            .await
            .0,
        400
    );
    assert_eq!(
        status_of(&app.pool, reader, "south-west").await.as_deref(),
        Some("confirmed")
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn markdown_arrives_escaped_with_its_links_and_a_readable_text_part() {
    let app = spawn_app().await;
    add_confirmed(
        &app.pool,
        "east-midlands",
        "reader@school.example.org",
        Some("<b>Ri</b>"),
    )
    .await;
    let sections = json!([
        {"heading": "Trends & <risks>", "body_markdown": "Providers report **online** concerns.\n\n<script>alert(\"x\")</script>\n\n- Review filtering\n- Brief staff <img src=x onerror=alert(1)>"},
        {"heading": "Training", "body_markdown": "Book [DSL training](https://www.eventbrite.co.uk/e/1) or <a href=\"https://evil.example\">this</a>. [Bad](javascript:alert(1))"}
    ]);
    app.publish(&newsletter("em-1", "east-midlands", sections))
        .await;
    let mails = app.mails(1).await;
    let html = mails[0].html();
    for raw in [
        "<script",
        "<img",
        "<a href=\"https://evil",
        "javascript:",
        "<b>Ri",
    ] {
        assert!(!html.contains(raw), "{raw} passed through:\n{html}");
    }
    assert!(html.contains("&lt;script&gt;"), "{html}");
    assert!(
        html.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "{html}"
    );
    assert!(html.contains("Trends &amp; &lt;risks&gt;"), "{html}");
    assert!(html.contains("Dear &lt;b&gt;Ri&lt;/b&gt;,"), "{html}");
    assert!(
        html.contains("href=\"https://www.eventbrite.co.uk/e/1\""),
        "{html}"
    );
    assert!(html.contains("<strong"), "{html}");
    assert!(html.contains("<li"), "{html}");

    let text = mails[0].text().replace("\r\n", "\n");
    assert!(text.contains("Providers report online concerns."), "{text}");
    assert!(text.contains("- Review filtering\n- Brief staff"), "{text}");
    assert!(
        text.contains("Book DSL training (https://www.eventbrite.co.uk/e/1)"),
        "{text}"
    );
    assert!(text.contains("Read this newsletter online: https://example.org/newsletters/1"));
    assert!(
        !text.contains("**") && !text.contains("<p>") && !text.contains("<li>"),
        "{text}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newsletter_goes_once_to_confirmed_subscribers_of_its_region_only() {
    let app = spawn_app().await;
    let pool = &app.pool;
    for i in 0..3 {
        add_confirmed(
            pool,
            "london",
            &format!("reader{i}@school.example.org"),
            None,
        )
        .await;
    }
    add_confirmed(pool, "north-east", "elsewhere@school.example.org", None).await;
    add_confirmed(pool, "london", "suppressed@school.example.org", None).await;
    sqlx::query(
        "INSERT INTO suppressions (email, reason) VALUES ('suppressed@school.example.org', 'test')",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO subscriptions (region, email, status) VALUES ('london', 'pending@school.example.org', 'pending'), ('london', 'left@school.example.org', 'unsubscribed')")
        .execute(pool)
        .await
        .unwrap();

    let event = newsletter("ldn-1", "london", simple_sections());
    app.publish(&event).await;
    app.publish(&event).await; // delivered twice
    let mut republished = event.clone();
    republished["id"] = json!(Uuid::new_v4().to_string()); // the same newsletter, another event
    app.publish(&republished).await;
    app.processed(republished["id"].as_str().unwrap()).await;
    let mails = app.mails(3).await;
    let mut recipients: Vec<String> = mails.iter().flat_map(|m| m.envelope_to.clone()).collect();
    recipients.sort();
    assert_eq!(
        recipients,
        [
            "reader0@school.example.org",
            "reader1@school.example.org",
            "reader2@school.example.org"
        ]
    );
    assert_eq!(outbox_count(pool, "newsletter").await, 3);

    // Someone confirmed since gets it if it is published again; nobody else gets a second.
    add_confirmed(pool, "london", "newcomer@school.example.org", None).await;
    let mut again = event.clone();
    again["id"] = json!(Uuid::new_v4().to_string());
    app.publish(&again).await;
    let mails = app.mails(4).await;
    assert_eq!(mails[3].envelope_to, ["newcomer@school.example.org"]);
    app.processed(again["id"].as_str().unwrap()).await;
    assert_eq!(outbox_count(pool, "newsletter").await, 4);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contact_enquiry_about_the_newsletter_starts_the_double_opt_in_for_its_region() {
    let app = spawn_app().await;
    app.publish(&example("contact-newsletter.json")).await;
    let mails = app.mails(3).await;
    let person = "p.shah@college.example.org";
    let theirs = to(&mails, person);
    assert_eq!(theirs.len(), 2, "the acknowledgement and the confirmation");
    let ack = theirs
        .iter()
        .find(|m| m.subject().starts_with("We have received your enquiry"))
        .unwrap();
    assert!(
        ack.text().contains(
            "We have sent you a separate email to confirm your subscription to the South-West newsletter"
        ),
        "{}",
        ack.text()
    );
    let confirmation = theirs
        .iter()
        .find(|m| m.subject() == "Confirm your subscription to the South-West newsletter")
        .unwrap();
    assert!(confirmation.text().contains("Dear Priya Shah,"));
    assert_eq!(
        status_of(&app.pool, person, "south-west").await.as_deref(),
        Some("pending")
    );
    let link = link_to(&confirmation.text(), "/subscriptions/confirm");
    assert_eq!(app.post(&path_of(&link), "").await.0, 200);

    // Asking again through the form, once subscribed: the acknowledgement says so.
    let again =
        contact_event(json!({"topic": "newsletter", "region": "south-west", "email": person}));
    app.publish(&again).await;
    let mails = app.mails(5).await;
    let ack = to(&mails, person)
        .into_iter()
        .filter(|m| m.subject().starts_with("We have received your enquiry"))
        .nth(1)
        .unwrap();
    assert!(ack
        .text()
        .contains("You are already subscribed to the South-West newsletter"));
    assert_eq!(
        status_of(&app.pool, person, "south-west").await.as_deref(),
        Some("confirmed")
    );

    // Without a region there is nothing to subscribe to.
    let nowhere = contact_event(
        json!({"topic": "newsletter", "area": "Atlantis", "email": "nowhere@school.example.org"}),
    );
    app.publish(&nowhere).await;
    app.processed(nowhere["id"].as_str().unwrap()).await;
    let (n,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM subscriptions WHERE email LIKE 'nowhere@%'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(n, 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_refusal_of_a_newsletter_suppresses_the_address_for_bulk_mail_only() {
    let app = spawn_app().await;
    // The test SMTP server answers 550 for local parts starting with "bounce".
    add_confirmed(
        &app.pool,
        "london",
        "bounce.Reader@School.example.org",
        None,
    )
    .await;
    add_confirmed(&app.pool, "london", "reader@school.example.org", None).await;
    app.publish(&newsletter("ldn-1", "london", simple_sections()))
        .await;
    app.mails(1).await;
    eventually(
        Duration::from_secs(20),
        "the refused newsletter to fail",
        || async {
            let rows = app.outbox().await;
            rows.iter()
                .any(|r| r.0 == "newsletter" && r.1 == "failed")
                .then_some(())
        },
    )
    .await;
    let suppressed: Vec<(String,)> = sqlx::query_as("SELECT email FROM suppressions")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        suppressed,
        [("bounce.reader@school.example.org".to_string(),)]
    );

    // The next newsletter is not even queued for them.
    let next = newsletter("ldn-2", "london", simple_sections());
    app.publish(&next).await;
    app.mails(2).await;
    let (queued,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM outbox WHERE job->>'newsletter_id' = 'ldn-2'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(queued, 1);

    // A refused transactional email (a confirmation) suppresses nothing.
    let request = subscribe("bounce.other@school.example.org", None, &["london"]);
    app.publish(&request).await;
    eventually(
        Duration::from_secs(20),
        "the confirmation to fail",
        || async {
            let rows = app.outbox().await;
            rows.iter()
                .any(|r| r.0 == "subscription_confirm" && r.1 == "failed")
                .then_some(())
        },
    )
    .await;
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM suppressions")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(n, 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_who_leaves_between_fan_out_and_send_is_skipped() {
    // The relay is down while the newsletter is queued, so nothing is sent before they leave.
    let smtp = SmtpServer::reserve();
    let app = spawn_app_with(Options {
        smtp: Some(smtp.clone()),
        ..Options::default()
    })
    .await;
    add_confirmed(&app.pool, "london", "stays@school.example.org", None).await;
    add_confirmed(&app.pool, "london", "leaves@school.example.org", None).await;
    add_confirmed(&app.pool, "north-west", "leaves@school.example.org", None).await;
    let event = newsletter("ldn-1", "london", simple_sections());
    app.publish(&event).await;
    app.processed(event["id"].as_str().unwrap()).await;

    let cancel = json!({
        "id": Uuid::new_v4().to_string(), "type": "subscription.cancelled", "version": 1,
        "occurred_at": "2024-11-01T10:00:00Z",
        "data": {"email": "LEAVES@school.example.org", "regions": ["london"]}
    });
    app.publish(&cancel).await;
    app.processed(cancel["id"].as_str().unwrap()).await;
    assert_eq!(
        status_of(&app.pool, "leaves@school.example.org", "london")
            .await
            .as_deref(),
        Some("unsubscribed")
    );
    assert_eq!(
        status_of(&app.pool, "leaves@school.example.org", "north-west")
            .await
            .as_deref(),
        Some("confirmed"),
        "only the region named"
    );

    smtp.start();
    let mails = app.mails(1).await;
    assert_eq!(mails[0].envelope_to, ["stays@school.example.org"]);
    let rows = eventually(
        Duration::from_secs(20),
        "the leaver's copy to be dropped",
        || async {
            let rows = app.outbox().await;
            rows.iter().any(|r| r.1 == "cancelled").then_some(rows)
        },
    )
    .await;
    let cancelled = rows.iter().find(|r| r.1 == "cancelled").unwrap();
    assert_eq!(cancelled.3.as_deref(), Some("the reader has unsubscribed"));
    assert_eq!(app.smtp.received().len(), 1);

    // Cancelling without regions ends them all.
    let all = json!({
        "id": Uuid::new_v4().to_string(), "type": "subscription.cancelled", "version": 1,
        "occurred_at": "2024-11-01T10:00:00Z", "data": {"email": "leaves@school.example.org"}
    });
    app.publish(&all).await;
    app.processed(all["id"].as_str().unwrap()).await;
    assert_eq!(
        status_of(&app.pool, "leaves@school.example.org", "north-west")
            .await
            .as_deref(),
        Some("unsubscribed")
    );
    app.stop().await;
}

/// What the README says to do with `make run`: the real binary with the file relay, the
/// example events published with `rpec-notify publish`, the link in the confirmation email
/// followed, and the newsletter lands in the mail directory with its list headers and a working
/// unsubscribe link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_events_through_the_binary_put_the_newsletter_in_the_mail_directory() {
    let mail_dir = tempfile::tempdir().unwrap();
    let deployment = Deployment::new(&format!("file://{}", mail_dir.path().display()), None).await;
    let worker = deployment.start().await;
    let examples = manifest_dir().join("examples/events");
    let eml = |dir: std::path::PathBuf| {
        let mut files: Vec<Mail> = std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "eml"))
                    .map(|p| Mail {
                        envelope_from: String::new(),
                        envelope_to: vec![],
                        raw: std::fs::read(p).unwrap(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        files.sort_by_key(|m| m.subject());
        files
    };

    deployment.publish(&[&examples.join("subscription-requested.json")]);
    let dir = mail_dir.path().to_owned();
    let confirmation = eventually(Duration::from_secs(20), "the confirmation .eml", || {
        let dir = dir.clone();
        async move { eml(dir).into_iter().next() }
    })
    .await;
    assert!(confirmation
        .header("To")
        .unwrap()
        .contains("dsl@primary.example.org"));
    let link = link_to(&confirmation.text(), "/subscriptions/confirm");
    assert!(link.starts_with(&deployment.base_url()), "{link}");
    let client = reqwest::Client::new();
    let page = client.get(&link).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page
        .text()
        .await
        .unwrap()
        .contains("Confirm subscription</button>"));
    let page = client.post(&link).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page
        .text()
        .await
        .unwrap()
        .contains("Subscription confirmed"));

    deployment.publish(&[&examples.join("newsletter-published.json")]);
    let issue = eventually(Duration::from_secs(20), "the newsletter .eml", || {
        let dir = dir.clone();
        async move {
            eml(dir)
                .into_iter()
                .find(|m| m.subject() == "North-West Prevent update: November 2024")
        }
    })
    .await;
    assert_eq!(
        issue.header("List-Id").as_deref(),
        Some("<north-west.newsletters.example.org>")
    );
    assert_eq!(
        issue.header("List-Unsubscribe-Post").as_deref(),
        Some("List-Unsubscribe=One-Click")
    );
    let header = issue.header("List-Unsubscribe").unwrap();
    let unsubscribe = header.trim_start_matches('<').trim_end_matches('>');
    assert_eq!(unsubscribe, link_to(&issue.text(), "/unsubscribe"));
    assert!(issue.text().contains("Dear Morgan Lee,"));
    assert!(issue
        .html()
        .contains("href=\"https://www.eventbrite.co.uk/e/prevent-in-education-dsl-2024-11-25\""));
    let answer = client
        .post(unsubscribe)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let pool = deployment.pool().await;
    assert_eq!(
        status_of(&pool, "dsl@primary.example.org", "north-west")
            .await
            .as_deref(),
        Some("unsubscribed")
    );
    pool.close().await;

    let (status, log) = worker.stop().await;
    assert!(status.success(), "{status:?}");
    for personal in ["dsl@primary", "Morgan Lee"] {
        assert!(!log.contains(personal), "{personal} in the log:\n{log}");
    }
    deployment.remove().await;
}

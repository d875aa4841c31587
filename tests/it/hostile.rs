//! Hostile input through every user field of every event type, on the real binary: header
//! injection (CR/LF), markup, `javascript:` links, bidirectional overrides and 10,000-character
//! words. Every email it produces is parsed and checked (headers as the worker wrote them, HTML
//! escaped, links safe), and neither the log nor a dead letter's detail carries any of the values.

use crate::binary::RealWorker;
use crate::helpers::*;
use crate::newsletter::add_confirmed;
use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::types::AMQPValue;
use serde_json::{json, Value};
use std::time::Duration;

/// Every value carries MARK, which the log and the dead letters must never show.
fn hostile_values() -> Vec<String> {
    vec![
        "MARK Sam\r\nBcc: evil@attacker.example\r\nX-Injected: yes".into(),
        "MARK <script>alert('x')</script> <b onmouseover=alert(1)>bold</b>".into(),
        "MARK javascript:alert(1) [click](javascript:alert(1)) <a href=\"javascript:x\">a</a>"
            .into(),
        "MARK \u{202E}gnp.exe\u{2066} and \u{200F}marks".into(),
        format!("MARK{}", "W".repeat(9_996)),
    ]
}

fn event(kind: &str, data: Value) -> Value {
    let mut e = simple_event(kind, data);
    e["occurred_at"] = json!("2024-10-01T09:00:00Z");
    e
}

/// One event of every type with `v` in every field a person or the website types.
fn events_with(i: usize, v: &str) -> Vec<Value> {
    let start = chrono::Utc::now() + chrono::Duration::days(20);
    let iso = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339();
    vec![
        contact_event(json!({
            "name": v, "organisation": v, "message": v, "phone": v, "area": v,
            "region": "london", "enquiry_id": format!("hostile-{i}")
        })),
        contact_event(json!({
            "name": v, "organisation": v, "message": v, "area": v, "topic": "newsletter",
            "email": format!("n{i}@school.example.org")
        })),
        event(
            "session.scheduled",
            json!({
                "session_id": format!("hostile-{i}"), "title": v, "audience": v,
                "description": v, "region": "london",
                "starts_at": iso(start), "ends_at": iso(start + chrono::Duration::hours(1)),
                "registration_url": "https://www.eventbrite.co.uk/e/1",
                "joining_url": "https://teams.example.org/join/1"
            }),
        ),
        event(
            "registration.created",
            json!({
                "registration_id": format!("hostile-{i}"), "session_id": format!("hostile-c-{i}"),
                "name": v, "email": format!("r{i}@school.example.org")
            }),
        ),
        event(
            "subscription.requested",
            json!({"email": format!("s{i}@school.example.org"), "name": v, "regions": ["london"]}),
        ),
        event(
            "newsletter.published",
            json!({
                "newsletter_id": format!("hostile-{i}"), "region": "london", "subject": v,
                "preheader": v,
                "sections": [{"heading": v, "body_markdown": format!(
                    "{v}\n\n[bad](javascript:alert(1)) [good](https://example.org/a) <img src=x onerror=alert(1)>"
                )}],
                "web_url": "https://example.org/n"
            }),
        ),
        event(
            "session.updated",
            json!({
                "session_id": format!("hostile-{i}"), "title": v, "audience": v,
                "description": v, "region": "london",
                "starts_at": iso(start + chrono::Duration::hours(2)),
                "ends_at": iso(start + chrono::Duration::hours(3)),
                "registration_url": "https://www.eventbrite.co.uk/e/1",
                "joining_url": "https://teams.example.org/join/2"
            }),
        ),
        // A plain session (so that it exists whatever `v` does to the one above), a registrant
        // with `v` for a name, and its cancellation with `v` for a reason.
        event(
            "session.scheduled",
            json!({
                "session_id": format!("hostile-c-{i}"), "title": "A plain session",
                "audience": "DSLs", "region": "london",
                "starts_at": iso(start), "ends_at": iso(start + chrono::Duration::hours(1)),
                "registration_url": "https://www.eventbrite.co.uk/e/2"
            }),
        ),
        event(
            "registration.created",
            json!({
                "registration_id": format!("hostile-c-{i}"), "session_id": format!("hostile-c-{i}"),
                "name": v, "email": format!("c{i}@school.example.org")
            }),
        ),
        event(
            "session.cancelled",
            json!({"session_id": format!("hostile-c-{i}"), "reason": v}),
        ),
        // Links the website sends are refused unless https.
        event(
            "session.scheduled",
            json!({
                "session_id": format!("hostile-link-{i}"), "title": "A session",
                "audience": "DSLs", "region": "london",
                "starts_at": iso(start), "ends_at": iso(start + chrono::Duration::hours(1)),
                "registration_url": format!("javascript:alert('{v}')")
            }),
        ),
    ]
}

/// The `href` of every real `<a>` tag in `html` (lower-cased). Text that merely looks like a
/// tag is escaped (`&lt;a href=...`) and has no `<` to start one.
fn link_targets(html: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut rest = html;
    while let Some(at) = rest.find("<a ") {
        let tag_end = rest[at..].find('>').map_or(rest.len(), |e| at + e);
        let tag = &rest[at..tag_end];
        if let Some(h) = tag.find("href=") {
            let value = tag[h + 5..].trim_start_matches(['"', '\'']);
            let end = value.find(['"', '\'', ' ']).unwrap_or(value.len());
            targets.push(value[..end].trim().to_owned());
        }
        rest = &rest[tag_end..];
    }
    targets
}

/// Header names the worker writes; anything else came from input.
const WRITTEN_HEADERS: &[&str] = &[
    "from",
    "to",
    "reply-to",
    "subject",
    "message-id",
    "date",
    "auto-submitted",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "importance",
    "x-priority",
    "list-id",
    "list-unsubscribe",
    "list-unsubscribe-post",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_values_in_every_field_never_reach_a_header_markup_a_link_or_the_log() {
    let worker = RealWorker::start().await;
    let pool = worker.deployment.pool().await;
    add_confirmed(
        &pool,
        "london",
        "reader@school.example.org",
        Some("MARK\r\nBcc: x@y.z"),
    )
    .await;
    let mut published = 0;
    for (i, v) in hostile_values().iter().enumerate() {
        let events = events_with(i, v);
        published += events.len();
        worker.publish_events(&events);
    }
    // Every event is either applied or dead-lettered.
    let queue = worker.deployment.env("RPEC_QUEUE");
    let conn = rpec_notify::consume::topology::connect(&amqp_url(), "rpec-notify tests")
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let mut dead = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        while let Some(m) = ch
            .basic_get(&format!("{queue}.dead-letter"), BasicGetOptions::default())
            .await
            .unwrap()
        {
            let headers = m.delivery.properties.headers().clone().unwrap_or_default();
            let text = |k: &str| match headers.inner().get(k) {
                Some(AMQPValue::LongString(s)) => {
                    String::from_utf8_lossy(s.as_bytes()).into_owned()
                }
                _ => String::new(),
            };
            dead.push((text("x-rpec-error"), text("x-rpec-error-detail")));
            m.delivery.ack(BasicAckOptions::default()).await.unwrap();
        }
        let handled: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_events")
            .fetch_one(&pool)
            .await
            .unwrap();
        if handled as usize + dead.len() == published {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "every event handled or dead-lettered: {handled} + {} of {published}",
            dead.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !dead.is_empty(),
        "the 10,000-character names and javascript: links are refused"
    );
    for (code, detail) in &dead {
        assert_eq!(code, "invalid_payload", "{detail}");
        assert!(
            !detail.contains("MARK"),
            "a dead letter quotes the value: {detail}"
        );
    }
    worker.settle().await;
    eventually(Duration::from_secs(30), "every email written", || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM outbox WHERE status IN ('pending', 'sending')",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        (waiting == 0).then_some(())
    })
    .await;

    let mails = worker.mails();
    assert!(mails.len() >= 20, "emails of every kind: {}", mails.len());
    for mail in &mails {
        let headers = mail.raw_headers();
        for name in mail.header_names() {
            assert!(
                WRITTEN_HEADERS.contains(&name.as_str()),
                "a header from input: {name}\n{headers}"
            );
        }
        // The text may stand in the Subject, folded onto one line; it never adds a recipient.
        for recipient in ["To", "Cc", "Bcc", "Reply-To"] {
            let value = mail.header(recipient).unwrap_or_default();
            assert!(
                !value.contains("attacker"),
                "{recipient}: {value}\n{headers}"
            );
        }
        let subject = mail.subject();
        assert!(
            !subject.contains(['\u{202E}', '\u{2066}', '\u{200F}', '\r', '\n']),
            "{subject:?}"
        );
        let html = mail.html().to_ascii_lowercase();
        assert!(!html.contains("<script"), "unescaped script in {subject}");
        assert!(
            !html.contains("<b onmouseover"),
            "unescaped markup in {subject}"
        );
        assert!(
            !html.contains("<img src=x"),
            "unescaped markup in {subject}"
        );
        for href in link_targets(&html) {
            assert!(
                href.starts_with("https:")
                    || href.starts_with("http:")
                    || href.starts_with("mailto:"),
                "a link to {href:?} in {subject}"
            );
        }
    }
    let (status, _, log) = worker.terminate().await;
    assert!(status.success());
    assert!(!log.contains("MARK"), "a value from an event in the log");
    assert!(log.contains("event handled"), "the log was captured");
    pool.close().await;
}

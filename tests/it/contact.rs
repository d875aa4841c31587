//! contact.submitted: routing, the urgent marking, acknowledgements, exactly-once, header safety.

use crate::helpers::*;
use serde_json::json;
use std::time::Duration;

const TOPICS: [&str; 8] = [
    "training",
    "newsletter",
    "complex-case",
    "prevent-advocate",
    "local-risk",
    "good-practice-forum",
    "new-provider-forum-access",
    "other",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_topic_routes_by_region_by_area_in_any_spelling_or_to_triage() {
    let app = spawn_app().await;
    // (region, area, expected coordinator mailbox, region named in the acknowledgement)
    type Route = (
        Option<&'static str>,
        Option<&'static str>,
        &'static str,
        Option<&'static str>,
    );
    let routes: [Route; 6] = [
        (
            Some("london"),
            Some("Cumbria"),
            "rpec.london@example.org",
            Some("London"),
        ),
        (
            None,
            Some("avon and somerset"),
            "rpec.south-west@example.org",
            Some("South-West"),
        ),
        (
            None,
            Some("  AVON & Somerset Police "),
            "rpec.south-west@example.org",
            Some("South-West"),
        ),
        (
            None,
            Some("greater-manchester"),
            "rpec.north-west@example.org",
            Some("North-West"),
        ),
        (
            None,
            Some("Manchester"),
            "rpec.north-west@example.org",
            Some("North-West"),
        ),
        (
            None,
            Some("somewhere unlisted"),
            "prevent.triage@example.org",
            None,
        ),
    ];
    let mut expected = Vec::new();
    for (i, topic) in TOPICS.iter().enumerate() {
        let (region, area, mailbox, region_name) = routes[i % routes.len()];
        let email = format!("person{i}@school.example.org");
        let event =
            contact_event(json!({"topic": topic, "region": region, "area": area, "email": email}));
        let enquiry_id = event["data"]["enquiry_id"].as_str().unwrap().to_owned();
        app.publish(&event).await;
        expected.push((enquiry_id, email, mailbox, region_name));
    }
    // No area at all goes to triage too.
    let event = contact_event(json!({"topic": "other"}));
    expected.push((
        event["data"]["enquiry_id"].as_str().unwrap().to_owned(),
        "s.okafor@school.example.org".into(),
        "prevent.triage@example.org",
        None,
    ));
    app.publish(&event).await;

    // Two emails per enquiry, and for the newsletter enquiry (routed to South-West by its area)
    // a subscription confirmation as well.
    let mails = app.mails(expected.len() * 2 + 1).await;
    assert_eq!(mails.len(), expected.len() * 2 + 1);
    let confirmations: Vec<_> = mails
        .iter()
        .filter(|m| m.subject() == "Confirm your subscription to the South-West newsletter")
        .collect();
    assert_eq!(confirmations.len(), 1);
    assert_eq!(confirmations[0].envelope_to, ["person1@school.example.org"]);
    for (enquiry_id, email, mailbox, region_name) in &expected {
        let for_enquiry: Vec<_> = mails
            .iter()
            .filter(|m| m.subject().contains(enquiry_id.as_str()))
            .collect();
        assert_eq!(for_enquiry.len(), 2, "two emails for {enquiry_id}");
        let coordinator = for_enquiry
            .iter()
            .find(|m| m.envelope_to == vec![mailbox.to_string()])
            .unwrap_or_else(|| panic!("{enquiry_id} reached {mailbox}"));
        assert_eq!(
            coordinator.reply_to().as_deref(),
            Some(email.as_str()),
            "Reply-To is the submitter"
        );
        assert!(coordinator.text().contains(email.as_str()));
        let ack = for_enquiry
            .iter()
            .find(|m| m.envelope_to == vec![email.clone()])
            .expect("an acknowledgement");
        match region_name {
            Some(name) => assert!(ack.text().contains(&format!("The {name} regional Prevent education coordinator will answer")), "{}", ack.text()),
            None => assert!(ack.text().contains("We will pass your enquiry to the regional Prevent education coordinator for your area")),
        }
        assert!(
            ack.text().contains("999"),
            "safety advice in every acknowledgement"
        );
        assert!(ack.html().contains("calling 999"));
        assert!(ack.text().contains("making a Prevent referral"));
    }
    // Rows record the routing.
    let routed: Vec<(Option<String>, String)> =
        sqlx::query_as("SELECT region, routed_by FROM enquiries ORDER BY region NULLS LAST")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(routed.iter().filter(|r| r.1 == "triage").count(), 2);
    assert_eq!(routed.iter().filter(|r| r.1 == "region").count(), 2);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_complex_case_is_urgent_and_its_acknowledgement_carries_the_safety_advice() {
    let app = spawn_app().await;
    app.publish(&example("contact-complex-case.json")).await;
    let mails = app.mails(2).await;
    let coordinator = mails
        .iter()
        .find(|m| m.envelope_to == ["rpec.north-west@example.org"])
        .expect("to North-West");
    assert!(
        coordinator.subject().starts_with("URGENT:"),
        "{}",
        coordinator.subject()
    );
    assert_eq!(coordinator.header("Importance").as_deref(), Some("high"));
    assert_eq!(coordinator.header("X-Priority").as_deref(), Some("1"));
    assert_eq!(
        coordinator.header("Auto-Submitted").as_deref(),
        Some("auto-generated")
    );
    assert!(coordinator.header("Message-ID").is_some() && coordinator.header("Date").is_some());
    assert_eq!(
        coordinator.reply_to().as_deref(),
        Some("s.okafor@school.example.org")
    );
    let text = coordinator.text();
    for field in [
        "enq-2024-000187",
        "Sam Okafor",
        "Riverside Academy",
        "School",
        "Cumbria",
        "01228 000000",
        "Year 10 learner",
    ] {
        assert!(text.contains(field), "{field} in {text}");
    }
    let ack = mails
        .iter()
        .find(|m| m.envelope_to == ["s.okafor@school.example.org"])
        .expect("an acknowledgement");
    assert!(!ack.subject().starts_with("URGENT"));
    assert!(ack.text().contains("North-West"));
    assert!(ack.text().contains("calling 999"));
    let content_type = ack.header("Content-Type").unwrap();
    assert!(
        content_type.starts_with("multipart/alternative"),
        "{content_type}"
    );
    // The latency histograms saw it: its handling, both sends, and both from the event on.
    app.all_sent().await;
    let handled = "rpec_event_handling_seconds_count{type=\"contact.submitted\"}";
    let n = eventually(Duration::from_secs(10), handled, || async {
        let n = app.metric(handled).await;
        (n > 0.0).then_some(n)
    })
    .await;
    assert_eq!(n, 1.0, "{handled}");
    for kind in ["enquiry", "enquiry_ack"] {
        for histogram in ["rpec_email_send_seconds", "rpec_event_to_email_seconds"] {
            // Observed when the outcome is reported, just after it is recorded.
            let series = format!("{histogram}_count{{kind=\"{kind}\"}}");
            let n = eventually(Duration::from_secs(10), &series, || async {
                let n = app.metric(&series).await;
                (n > 0.0).then_some(n)
            })
            .await;
            assert_eq!(n, 1.0, "{series}");
        }
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_twice_sends_each_email_once() {
    let app = spawn_app().await;
    let event = contact_event(json!({"region": "north-east"}));
    app.publish(&event).await;
    app.publish(&event).await;
    eventually(
        Duration::from_secs(20),
        "the duplicate to be seen",
        || async {
            (app.metric("rpec_events_duplicate_total{type=\"contact.submitted\"}")
                .await
                >= 1.0)
                .then_some(())
        },
    )
    .await;
    app.mails(2).await;
    // Two more rounds of the sender: a second pair would have been sent by then.
    app.settle().await;
    assert_eq!(app.smtp.received().len(), 2);
    assert_eq!(app.outbox().await.len(), 2);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn line_breaks_add_no_header_and_markup_arrives_escaped() {
    let app = spawn_app().await;
    let event = contact_event(json!({
        "topic": "complex-case",
        "name": "Eve\r\nBcc: x@example.org",
        "organisation": "Acme\r\nBcc: y@example.org\r\n",
        "message": "<script>alert('x')</script> & <b>bold</b>",
        "region": "london"
    }));
    app.publish(&event).await;
    let mails = app.mails(2).await;
    for m in &mails {
        assert!(
            !m.header_names().contains(&"bcc".to_string()),
            "no Bcc header: {}",
            m.raw_headers()
        );
        assert!(!m.raw_headers().contains("\r\nBcc"), "{}", m.raw_headers());
        assert!(m
            .envelope_to
            .iter()
            .all(|t| !t.contains("x@example.org") && !t.contains("y@example.org")));
    }
    let coordinator = mails
        .iter()
        .find(|m| m.envelope_to == ["rpec.london@example.org"])
        .unwrap();
    assert_eq!(
        coordinator.subject(),
        format!(
            "URGENT: complex case enquiry {} from Acme Bcc: y@example.org",
            event["data"]["enquiry_id"].as_str().unwrap()
        )
    );
    let html = coordinator.html();
    assert!(!html.contains("<script>"), "{html}");
    assert!(html.contains("&lt;script&gt;alert("), "{html}");
    assert!(html.contains("&lt;b&gt;bold&lt;/b&gt;"));
    // The plain text shows what was typed.
    assert!(coordinator
        .text()
        .contains("<script>alert('x')</script> & <b>bold</b>"));
    app.stop().await;
}

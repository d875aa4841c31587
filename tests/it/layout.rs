//! Every email and every page, in headless Chromium at 320 and 800 pixels wide: nothing may
//! stick out sideways. Rendered from the samples that `rpec-notify check` renders, and from the
//! same samples with long values (a Microsoft Teams joining link, a long unbroken word in an
//! enquiry, a long trust's name, long addresses and links), since those are what break a
//! layout on a phone.
//!
//! Each rendering is kept with a screenshot at each width under `target/screenshots/` (the
//! HTML beside them), to look at when a template changes.

use crate::browser::Chromedriver;
use crate::helpers::manifest_dir;
use base64::Engine;
use rpec_notify::mail::{markdown, Templates};
use serde_json::{json, Value};
use std::path::PathBuf;

/// A real Microsoft Teams joining link is about this long, and has no space to break at.
const TEAMS_LINK: &str = "https://teams.microsoft.com/l/meetup-join/19%3ameeting_NzQ4ZjM2YzEtYjU1Ni00ZGNhLWE4MjUtOGE2OTc5YjU5ZTRmMmQ1%40thread.v2/0?context=%7b%22Tid%22%3a%2272f988bf-86f1-41af-91ab-2d7cd011db47%22%2c%22Oid%22%3a%22a1b2c3d4-e5f6-47a8-99b0-c1d2e3f4a5b6%22%2c%22MessageId%22%3a%220%22%7d";

/// What a token in a signed link looks like at its longest (several keys, a long id).
const LONG_TOKEN: &str =
    "AQMAAAAAAAAAKgAAAABnCmOgZ3Vlc3Qtc2Vzc2lvbi0yMDI0LTEwLTAyLWRzbC1ub3J0aC13ZXN0LXJlZ2lvbmFsLXNlc3Npb24tZm9yLWRlc2lnbmF0ZWQtc2FmZWd1YXJkaW5nLWxlYWRz";

/// Nowhere to break it (no hyphen, no space), as a pasted reference or a word typed without
/// spaces can be.
const LONG_WORD: &str =
    "PneumonoultramicroscopicsilicovolcanoconiosisREF2024ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

const LONG_ORGANISATION: &str = "The Northumberland, Tyne and Wear and County Durham Catholic Education Multi-Academy Trust (St-Cuthbert-of-Lindisfarne-and-Venerable-Bede-Partnership)";

const LONG_EMAIL: &str =
    "bartholomew.featherstonehaugh-cholmondeley@stcuthbertoflindisfarneandvenerablebede.catholic-trust.example.org.uk";

fn long_link(base: &str) -> String {
    format!("{base}?token={LONG_TOKEN}")
}

/// The long stand-in for a value under `key`, if it has one.
fn long_value(key: &str, value: &Value) -> Option<Value> {
    if !value.is_string() {
        return None;
    }
    let long = match key {
        "joining_url" => TEAMS_LINK.to_owned(),
        "registration_url" => format!(
            "https://www.eventbrite.co.uk/e/prevent-in-education-training-for-designated-safeguarding-leads-dsls-tickets-1029384756473829?aff=oddtdtcreator&utm_source={LONG_TOKEN}"
        ),
        "confirm_url" => long_link("http://127.0.0.1:8080/subscriptions/confirm"),
        "unsubscribe_url" => long_link("http://127.0.0.1:8080/unsubscribe"),
        "claim_url" => long_link("http://127.0.0.1:8080/enquiries/claim"),
        "action" => long_link("/unsubscribe"),
        "web_url" => format!("https://www.example.org/newsletters/north-west/2024-11/{LONG_WORD}"),
        "message" => format!(
            "We would like advice on a learner. The reference the police gave us is {LONG_WORD}.\nThe DSL has spoken to the family; the minutes are at {TEAMS_LINK}"
        ),
        "organisation" => LONG_ORGANISATION.to_owned(),
        "name" => "Bartholomew Alexander Featherstonehaugh-Cholmondeley-Worthington-Smythe".to_owned(),
        "email" | "holder" => LONG_EMAIL.to_owned(),
        "title" | "subject" => format!(
            "Prevent in education: training for designated safeguarding leads (DSLs) and their deputies in {LONG_WORD}"
        ),
        "audience" => "Designated safeguarding leads, deputy designated safeguarding leads and Prevent leads in further-education-and-sixth-form-colleges".to_owned(),
        "area" => format!("Northumberland, Tyne and Wear, {LONG_WORD}"),
        "description" => format!("An introduction to the Prevent duty. Slides: {TEAMS_LINK}"),
        "reason" => format!("permanent error (550): 5.1.1 <{LONG_EMAIL}>: Recipient address rejected: {LONG_WORD}"),
        "cancel_reason" => format!("Trainer unavailable: see {TEAMS_LINK}"),
        "routing_note" => format!("Routed by the area typed: {LONG_WORD}."),
        "region_name" | "region_names" => "East-of-England".to_owned(),
        "heading" => format!("Regional trends and risk updates from {LONG_ORGANISATION}"),
        _ => return None,
    };
    Some(Value::String(long))
}

/// The same context with every value that can be long made long.
fn lengthen(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if let Some(long) = long_value(key, v) {
                    *v = long;
                } else {
                    lengthen(v);
                }
            }
            // A newsletter section is HTML and text made from markdown: make it from long
            // markdown the same way.
            if map.contains_key("html") && map.contains_key("text") {
                let body = markdown::render(&format!(
                    "Book a place: <{TEAMS_LINK}>, or [the session page]({TEAMS_LINK}).\n\nThe {LONG_WORD} report.\n\n| Date | Place |\n| --- | --- |\n| Wednesday 2 October 2024 | {TEAMS_LINK} |"
                ));
                map.insert("html".into(), body.html.into());
                map.insert("text".into(), body.text.into());
            }
            // A briefing with many registrants, some with long names and addresses.
            if let Some(Value::Array(registrants)) = map.get_mut("registrants") {
                if let Some(first) = registrants.first().cloned() {
                    registrants.extend(std::iter::repeat_n(first, 3));
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(lengthen),
        _ => {}
    }
}

/// Where screenshots and the rendered HTML go.
fn screenshots_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir().join("target"));
    let target = if target.is_absolute() {
        target
    } else {
        manifest_dir().join(target)
    };
    target.join("screenshots")
}

/// Every email and page: (a file name, the HTML).
fn renderings() -> Vec<(String, String)> {
    let templates = Templates::load(&manifest_dir().join("templates"), "http://127.0.0.1:8080")
        .expect("the templates load");
    let mut out = Vec::new();
    let mut count = std::collections::HashMap::<String, usize>::new();
    let mut name_of = |kind: &str, name: &str, long: bool| {
        let key = format!("{kind}{name}");
        let n = count.entry(format!("{key}{long}")).or_default();
        *n += 1;
        format!("{key}-{}{}", n, if long { "-long" } else { "" })
    };
    let mut email = |name: &str, file: String, context: &Value| {
        let rendered = templates
            .render(name, context)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        out.push((file, rendered.html));
    };
    let samples = rpec_notify::handle::samples();
    for (name, context) in &samples {
        let mut long = context.clone();
        lengthen(&mut long);
        email(name, name_of("", name, false), context);
        email(name, name_of("", name, true), &long);
    }
    // One long value alone, in the two emails where each is most likely: a confirmation with
    // a Teams joining link, and a coordinator's copy of an enquiry with a long unbroken word.
    let first = |kind: &str| {
        samples
            .iter()
            .find(|(name, _)| *name == kind)
            .map(|(_, c)| c.clone())
            .unwrap_or_else(|| panic!("no {kind} sample"))
    };
    let mut teams = first("registration_confirmation");
    teams["session"]["joining_url"] = TEAMS_LINK.into();
    email(
        "registration_confirmation",
        "registration_confirmation-teams-link".into(),
        &teams,
    );
    let mut word = first("enquiry_coordinator");
    word["message"] =
        format!("Our reference for this is {LONG_WORD}, as the police gave it.").into();
    email(
        "enquiry_coordinator",
        "enquiry_coordinator-long-word".into(),
        &word,
    );
    for (name, context) in rpec_notify::http::page_samples() {
        let mut long = context.clone();
        lengthen(&mut long);
        if long.get("enquiry_id").is_some_and(Value::is_string) {
            long["enquiry_id"] = json!("enq-2024-000187-north-west-regional-prevent-education");
        }
        for (context, is_long) in [(context, false), (long, true)] {
            let html = templates
                .render_page(name, &context)
                .unwrap_or_else(|e| panic!("page {name}: {e}"));
            out.push((name_of("page-", name, is_long), html));
        }
    }
    out
}

/// Measures the page at the window's width: the document's scroll width, and the innermost
/// elements whose right edge, or whose content's (text that does not wrap sticks out of its
/// element), passes the window's, each named by its place and its text.
const MEASURE: &str = r#"
const width = window.innerWidth;
const over = [];
for (const e of document.querySelectorAll('*')) {
  const r = e.getBoundingClientRect();
  if (r.width === 0 && r.height === 0) continue;
  const right = Math.max(r.right, r.left + e.scrollWidth);
  if (right > width + 1) over.push([e, right]);
}
const named = (e) => {
  const parts = [];
  for (let n = e; n && n.nodeType === 1 && parts.length < 4; n = n.parentElement) {
    let s = n.tagName.toLowerCase();
    if (n.id) s += '#' + n.id;
    if (n.classList.length) s += '.' + Array.from(n.classList).join('.');
    parts.unshift(s);
  }
  return parts.join(' > ');
};
const innermost = over.filter(([e]) => !over.some(([o]) => o !== e && e.contains(o)));
return {
  scrollWidth: document.documentElement.scrollWidth,
  innerWidth: width,
  clientWidth: document.documentElement.clientWidth,
  height: document.documentElement.scrollHeight,
  over: innermost.slice(0, 8).map(([e, right]) =>
    named(e) + ' (right edge ' + Math.round(right) + 'px): "' +
      (e.textContent || '').trim().replace(/\s+/g, ' ').slice(0, 70) + '"'),
};
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_email_and_page_fits_at_320_and_800_pixels_wide() {
    let dir = screenshots_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let renderings = renderings();
    let mut files = Vec::new();
    for (name, html) in &renderings {
        let path = dir.join(format!("{name}.html"));
        std::fs::write(&path, html).unwrap();
        files.push((name, path));
    }

    let driver = Chromedriver::start().await;
    let profile = tempfile::tempdir().unwrap();
    let browser = driver.session(profile.path()).await;
    let mut failures = Vec::new();
    // Phones' scrollbars take no width: hidden here, the viewport is the whole width.
    browser
        .devtools("Emulation.setScrollbarsHidden", json!({"hidden": true}))
        .await;
    for width in [320, 800] {
        // The viewport itself, not the window (whose smallest width is the platform's).
        browser
            .devtools(
                "Emulation.setDeviceMetricsOverride",
                json!({"width": width, "height": 800, "deviceScaleFactor": 1, "mobile": false}),
            )
            .await;
        for (name, path) in &files {
            browser.open(&format!("file://{}", path.display())).await;
            let m = browser.execute(MEASURE).await;
            assert_eq!(m["innerWidth"], width, "{name}: the viewport");
            assert_eq!(
                m["clientWidth"], width,
                "{name}: the viewport, scrollbar aside"
            );
            let scroll_width = m["scrollWidth"].as_i64().unwrap_or(i64::MAX);
            let over: Vec<String> = m["over"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            if scroll_width > width || !over.is_empty() {
                failures.push(format!(
                    "{name} at {width}px: scroll width {scroll_width}px\n    {}",
                    over.join("\n    ")
                ));
            }
            let shot = browser
                .devtools(
                    "Page.captureScreenshot",
                    json!({"format": "png", "captureBeyondViewport": true}),
                )
                .await;
            let png = base64::engine::general_purpose::STANDARD
                .decode(shot["data"].as_str().unwrap_or_default())
                .unwrap_or_else(|e| panic!("{name}: the screenshot: {e}"));
            std::fs::write(dir.join(format!("{name}-{width}.png")), png).unwrap();
        }
    }
    // Dark mode, for the emails (the pages are GOV.UK's light pages): the kept style block
    // turns the content dark and its text light; a screenshot of each at 800 pixels.
    browser
        .devtools(
            "Emulation.setEmulatedMedia",
            json!({"features": [{"name": "prefers-color-scheme", "value": "dark"}]}),
        )
        .await;
    for (name, path) in files.iter().filter(|(n, _)| !n.starts_with("page-")) {
        browser.open(&format!("file://{}", path.display())).await;
        let colours = browser
            .execute(
                "const s = getComputedStyle(document.querySelector('td.content'));
                 return [s.color, s.backgroundColor];",
            )
            .await;
        if colours != json!(["rgb(243, 242, 241)", "rgb(29, 30, 31)"]) {
            failures.push(format!("{name} in dark mode: content colours {colours}"));
        }
        let shot = browser
            .devtools(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{name}: the screenshot: {e}"));
        std::fs::write(dir.join(format!("{name}-800-dark.png")), png).unwrap();
    }
    browser.close().await;
    drop(driver);
    assert!(
        failures.is_empty(),
        "{} of {} renderings stick out sideways (screenshots in {}):\n{}",
        failures.len(),
        renderings.len() * 2,
        dir.display(),
        failures.join("\n")
    );
}

fn templates() -> Templates {
    Templates::load(
        &manifest_dir().join("templates"),
        "https://rpec.example.org",
    )
    .expect("the templates load")
}

/// What the layout promises every client, in every email's HTML.
#[test]
fn every_email_is_laid_out_on_tables_for_every_client() {
    let templates = templates();
    for (name, context) in rpec_notify::handle::samples() {
        let html = templates.render(name, &context).unwrap().html;
        for mark in [
            "<html lang=\"en-GB\"",
            "<meta name=\"color-scheme\" content=\"light dark\">",
            "<meta name=\"supported-color-schemes\" content=\"light dark\">",
            "<!--[if (gte mso 9)|(IE)]><table role=\"presentation\" width=\"580\"",
            "<!--[if (gte mso 9)|(IE)]></td></tr></table><![endif]-->",
            "@media (prefers-color-scheme: dark)",
            "@media only screen and (max-width: 480px)",
        ] {
            assert!(html.contains(mark), "{name}: no {mark}");
        }
        // The content table: full width up to 580px (css-inline orders its attributes).
        let container = html
            .split("<table ")
            .find(|t| t.starts_with("class=\"container\""))
            .and_then(|t| t.split('>').next())
            .unwrap_or_else(|| panic!("{name}: no content table"));
        for attribute in [
            "role=\"presentation\"",
            "width=\"100%\"",
            "max-width: 580px",
        ] {
            assert!(container.contains(attribute), "{name}: {container}");
        }
        // Data tables are not presentation, and their headers are header cells.
        assert!(
            !html.contains("<td><strong>"),
            "{name}: a header in a data cell"
        );
        for box_class in ["inset", "warning", "urgent", "message"] {
            assert!(
                !html.contains(&format!("<div class=\"{box_class}")),
                "{name}: a {box_class} box in a div, not a table"
            );
        }
    }
    // An enquiry's lines are broken with <br>, which Outlook keeps (it drops pre-wrap).
    let (name, context) = rpec_notify::handle::samples()
        .into_iter()
        .find(|(n, _)| *n == "enquiry_coordinator")
        .unwrap();
    let html = templates.render(name, &context).unwrap().html;
    assert!(
        html.contains("We would like advice on a learner.<br>The DSL has spoken to the family."),
        "{html}"
    );
    let briefing = rpec_notify::handle::samples()
        .into_iter()
        .find(|(n, c)| *n == "coordinator_briefing" && c["count"] == 1)
        .unwrap();
    let html = templates.render(briefing.0, &briefing.1).unwrap().html;
    assert!(html.contains(">Email</th>"), "{html}");
    assert!(html.contains("<th scope=\"col\""), "{html}");
}

#[test]
fn the_acknowledgement_says_when_to_expect_a_reply_urgent_or_not() {
    let templates = templates();
    let acks: Vec<_> = rpec_notify::handle::samples()
        .into_iter()
        .filter(|(n, _)| *n == "enquiry_ack")
        .map(|(n, c)| (c.clone(), templates.render(n, &c).unwrap()))
        .collect();
    let urgent = acks
        .iter()
        .find(|(c, _)| c["urgent"] == true && c["expect_reply_by"].is_string())
        .expect("an urgent sample with a deadline");
    let by = urgent.0["expect_reply_by"].as_str().unwrap();
    for part in [&urgent.1.text, &urgent.1.html] {
        assert!(part.contains("Enquiries about complex cases are dealt with first."));
        assert!(part.contains(&format!("A coordinator should contact you by {by}.")));
        assert!(part.contains("do not wait for a reply: call 999 now"));
    }
    let other = acks
        .iter()
        .find(|(c, _)| c["urgent"] == false && c["expect_reply_by"].is_string())
        .expect("another sample with a deadline");
    let by = other.0["expect_reply_by"].as_str().unwrap();
    for part in [&other.1.text, &other.1.html] {
        assert!(part.contains(&format!("You should hear from a coordinator by {by}.")));
        assert!(part.contains("Monday to Friday, except on bank holidays"));
        assert!(!part.contains("dealt with first"));
    }
    // Queued before claiming: no deadline, no promise.
    let old = acks
        .iter()
        .find(|(c, _)| c["expect_reply_by"].is_null())
        .expect("a sample without a deadline");
    assert!(!old.1.text.contains("hear from a coordinator by"));
}

#[test]
fn the_digest_greets_as_the_newsletter_does_and_says_what_unsubscribing_stops() {
    let templates = templates();
    for (name, context) in rpec_notify::handle::samples() {
        if !matches!(name, "weekly_digest" | "newsletter") {
            continue;
        }
        let r = templates.render(name, &context).unwrap();
        let greeting = match context["name"].as_str() {
            Some(n) => format!("Dear {n},"),
            None => "Hello,".to_owned(),
        };
        assert!(r.text.contains(&greeting), "{name}: {}", r.text);
        assert!(r.html.contains(&format!(">{greeting}</p>")), "{name}");
        assert!(!r.text.contains("subscriber,"), "{name}");
    }
    let (name, context) = rpec_notify::handle::samples()
        .into_iter()
        .find(|(n, _)| *n == "weekly_digest")
        .unwrap();
    let r = templates.render(name, &context).unwrap();
    assert!(r.text.contains(
        "To unsubscribe from the North-West newsletter and these emails, open this link: http"
    ));
    assert!(r
        .html
        .contains(">Unsubscribe from the North-West newsletter and these emails</a>"));
}

#[test]
fn the_unsubscribe_pages_say_what_the_button_will_do_and_then_that_it_did() {
    let templates = templates();
    let page = |name: &str, already: bool| {
        let (_, context) = rpec_notify::http::page_samples()
            .into_iter()
            .find(|(n, c)| *n == name && c["already"] == already && c["region_name"].is_string())
            .unwrap_or_else(|| panic!("no {name} sample"));
        templates.render_page(name, &context).unwrap()
    };
    let before = page("unsubscribe", false);
    assert!(before.contains("If you unsubscribe, you will stop receiving the North-West regional Prevent newsletter by email, and the weekly emails about new training sessions in North-West."), "{before}");
    assert!(!before.contains("You will no longer receive"), "{before}");
    let after = page("unsubscribed", false);
    assert!(after.contains("You have been unsubscribed from the North-West regional Prevent newsletter. You will no longer receive it, or the weekly emails about new training sessions in North-West."), "{after}");
    // The contact form is a link, to the public site.
    assert!(
        after.contains("<a href=\"https://rpec.example.org\">coordinator contact form</a>"),
        "{after}"
    );
    for (name, context) in rpec_notify::http::page_samples() {
        let html = templates.render_page(name, &context).unwrap();
        assert!(html.contains("<html lang=\"en-GB\">"), "{name}");
        if html.contains("contact form") {
            assert!(
                html.contains("coordinator contact form</a>"),
                "{name}: {html}"
            );
        }
    }
}

/// `v` with `tail` added to every non-empty string in it (but the site's own values).
fn with_tail(v: &Value, tail: &str) -> Value {
    match v {
        Value::String(s) if !s.is_empty() => Value::String(format!("{s}{tail}")),
        Value::Array(a) => Value::Array(a.iter().map(|v| with_tail(v, tail)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), with_tail(v, tail)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// HTML as a parser reads it: parsed and written out again (by the CSS inliner, which has no
/// style left to inline into an inlined part, and so only does that).
fn as_parsed(html: &str) -> String {
    css_inline::inline(html).expect("the HTML parses")
}

/// The CSS of an email is inlined once per shape (the part rendered with a hole for each value)
/// and each email fills in its own values: that must be the email inlined whole, whatever the
/// values hold, and it must be what most emails get.
#[test]
fn every_email_inlined_by_its_shape_is_the_email_inlined_whole() {
    let templates = templates();
    let mut shaped = Vec::new();
    for (name, context) in rpec_notify::handle::samples() {
        for tail in ["", " & <b>\"Ann\"</b> O'Neil", "\u{a0}é\r\nline two =3D"] {
            let context = with_tail(&context, tail);
            // Twice: the first makes the shape, the second is taken from it.
            for _ in 0..2 {
                let (by_shape, was_shaped) = templates.render_traced(name, &context, true).unwrap();
                let (whole, _) = templates.render_traced(name, &context, false).unwrap();
                assert_eq!(
                    as_parsed(&by_shape.html),
                    as_parsed(&whole.html),
                    "{name} with {tail:?}"
                );
                assert_eq!(
                    (&by_shape.subject, &by_shape.text),
                    (&whole.subject, &whole.text)
                );
                if was_shaped {
                    shaped.push((name, tail));
                }
            }
        }
    }
    for name in [
        "session_reminder",
        "registration_confirmation",
        "enquiry_ack",
        "enquiry_coordinator",
    ] {
        assert!(
            shaped.contains(&(name, "")),
            "{name} was never inlined by shape: {:?}",
            shaped
                .iter()
                .map(|s| s.0)
                .collect::<std::collections::BTreeSet<_>>()
        );
    }
}

//! The `data` of the newsletter events: subscriptions, publications and erasure requests.

use super::event::{Fields, MAX_NAME};
use super::text::FieldError;
use super::{EmailAddress, RegionId};

/// The contract's limit on the markdown of one newsletter, all sections together.
pub const MAX_MARKDOWN_BYTES: usize = 100 * 1024;

/// `subscription.requested`: start (or repeat) a double opt-in for one or more regions.
#[derive(Debug, Clone)]
pub struct SubscriptionRequested {
    pub email: EmailAddress,
    pub name: Option<String>,
    /// At least one, without repeats.
    pub regions: Vec<RegionId>,
}

impl SubscriptionRequested {
    pub(crate) fn parse(data: &Fields<'_>) -> Result<Self, FieldError> {
        Ok(SubscriptionRequested {
            email: data.email("email")?,
            name: data.optional_str("name", MAX_NAME)?,
            regions: data
                .optional_regions("regions")?
                .ok_or_else(|| data.err("regions", "is required"))?,
        })
    }
}

/// `subscription.cancelled`: end subscriptions, for some regions or (None) for all.
#[derive(Debug, Clone)]
pub struct SubscriptionCancelled {
    pub email: EmailAddress,
    pub regions: Option<Vec<RegionId>>,
}

impl SubscriptionCancelled {
    pub(crate) fn parse(data: &Fields<'_>) -> Result<Self, FieldError> {
        Ok(SubscriptionCancelled {
            email: data.email("email")?,
            regions: data.optional_regions("regions")?,
        })
    }
}

/// One section of a newsletter, as the coordinator wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub heading: String,
    pub body_markdown: String,
}

/// `newsletter.published`: a region's newsletter, to go to its confirmed subscribers.
#[derive(Debug, Clone)]
pub struct NewsletterPublished {
    /// The website's id: the same newsletter under a second event id is not sent twice.
    pub newsletter_id: String,
    pub region: RegionId,
    pub subject: String,
    pub preheader: Option<String>,
    /// At least one.
    pub sections: Vec<Section>,
    pub web_url: Option<String>,
}

impl NewsletterPublished {
    pub(crate) fn parse(data: &Fields<'_>) -> Result<Self, FieldError> {
        let newsletter_id = data.required_str("newsletter_id", MAX_NAME)?;
        let region = data
            .optional_region("region")?
            .ok_or_else(|| data.err("region", "is required"))?;
        let subject = data.required_str("subject", MAX_NAME)?;
        let preheader = data.optional_str("preheader", MAX_NAME)?;
        let mut sections = Vec::new();
        let mut markdown_bytes = 0;
        for section in data.objects("sections")? {
            // The whole newsletter is bounded, not each section: the limit is about the size of
            // the email.
            let body_markdown = section.required_text("body_markdown", MAX_MARKDOWN_BYTES)?;
            markdown_bytes += body_markdown.len();
            sections.push(Section {
                heading: section.required_str("heading", MAX_NAME)?,
                body_markdown,
            });
        }
        if markdown_bytes > MAX_MARKDOWN_BYTES {
            return Err(data.err(
                "sections",
                format!(
                    "the markdown is {markdown_bytes} bytes in total; at most {MAX_MARKDOWN_BYTES}"
                ),
            ));
        }
        Ok(NewsletterPublished {
            newsletter_id,
            region,
            subject,
            preheader,
            sections,
            web_url: data.optional_url("web_url")?,
        })
    }
}

/// `person.erasure_requested`: remove every piece of personal data held for an address.
#[derive(Debug, Clone)]
pub struct ErasureRequested {
    pub email: EmailAddress,
}

impl ErasureRequested {
    pub(crate) fn parse(data: &Fields<'_>) -> Result<Self, FieldError> {
        Ok(ErasureRequested {
            email: data.email("email")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::domain::{Envelope, Event};
    use serde_json::{json, Value};

    const LIMIT: usize = 256 * 1024;

    fn event(kind: &str, data: Value) -> Result<Event, String> {
        let body = serde_json::to_vec(&json!({
            "id": "8a5b0c32-3e4d-4f6a-8b7c-9d0e1f2a3b01", "type": kind, "version": 1,
            "occurred_at": "2024-10-05T14:00:00Z", "data": data
        }))
        .unwrap();
        Envelope::parse(&body, LIMIT)
            .map(|e| e.event)
            .map_err(|e| format!("{}: {}", e.code.as_str(), e.detail))
    }

    fn newsletter() -> Value {
        json!({
            "newsletter_id": "nw-2024-11", "region": "north-west", "subject": " Update ",
            "sections": [{"heading": "Trends", "body_markdown": "Some **news**.\r\n"}],
            "web_url": "https://example.org/n/1", "unknown": true
        })
    }

    #[test]
    fn a_subscription_request_needs_an_address_and_a_region() {
        let Ok(Event::SubscriptionRequested(r)) = event(
            "subscription.requested",
            json!({"email": "a@example.org", "regions": ["london", "north-west", "london"]}),
        ) else {
            panic!("not parsed")
        };
        assert_eq!(r.regions.len(), 2);
        assert_eq!(r.name, None);
        assert_eq!(
            event("subscription.requested", json!({"email": "a@example.org"})).unwrap_err(),
            "invalid_payload: data.regions: is required"
        );
        assert_eq!(
            event(
                "subscription.requested",
                json!({"email": "a@example.org", "regions": []})
            )
            .unwrap_err(),
            "invalid_payload: data.regions: must name at least one region"
        );
        assert!(event(
            "subscription.requested",
            json!({"email": "a@example.org", "regions": ["north-west", "wales"]})
        )
        .unwrap_err()
        .starts_with("invalid_payload: data.regions[1]: unknown region id"));
    }

    #[test]
    fn a_cancellation_without_regions_means_all() {
        let Ok(Event::SubscriptionCancelled(c)) =
            event("subscription.cancelled", json!({"email": "a@example.org"}))
        else {
            panic!("not parsed")
        };
        assert_eq!(c.regions, None);
    }

    #[test]
    fn a_newsletter_is_parsed_and_bounded() {
        let Ok(Event::NewsletterPublished(n)) = event("newsletter.published", newsletter()) else {
            panic!("not parsed")
        };
        assert_eq!(n.subject, "Update");
        assert_eq!(n.sections[0].body_markdown, "Some **news**.");
        assert_eq!(n.web_url.as_deref(), Some("https://example.org/n/1"));

        let mut d = newsletter();
        d["sections"] = json!([]);
        assert_eq!(
            event("newsletter.published", d).unwrap_err(),
            "invalid_payload: data.sections: must hold at least one item"
        );
        let mut d = newsletter();
        d["sections"][0]["heading"] = json!("x".repeat(201));
        assert!(event("newsletter.published", d)
            .unwrap_err()
            .starts_with("invalid_payload: data.sections[0].heading: too long"));
        let mut d = newsletter();
        let half = "a".repeat(60 * 1024);
        d["sections"] = json!([
            {"heading": "One", "body_markdown": half},
            {"heading": "Two", "body_markdown": half}
        ]);
        assert!(event("newsletter.published", d)
            .unwrap_err()
            .starts_with("invalid_payload: data.sections: the markdown is 122880 bytes"));
        let mut d = newsletter();
        d["web_url"] = json!("http://example.org/n/1");
        assert_eq!(
            event("newsletter.published", d).unwrap_err(),
            "invalid_payload: data.web_url: must be https (http only for localhost)"
        );
        let mut d = newsletter();
        d["subject"] = json!("Hello\r\nBcc: x@example.org");
        let Ok(Event::NewsletterPublished(n)) = event("newsletter.published", d) else {
            panic!("not parsed")
        };
        assert_eq!(n.subject, "Hello Bcc: x@example.org");
    }

    /// The contract's 100 KiB of markdown, all sections together: exactly that is accepted, one
    /// byte more is refused.
    #[test]
    fn a_newsletter_may_hold_exactly_the_limit_of_markdown() {
        let mut d = newsletter();
        let half = "a".repeat(50 * 1024);
        d["sections"] = json!([
            {"heading": "One", "body_markdown": half},
            {"heading": "Two", "body_markdown": half}
        ]);
        let Ok(Event::NewsletterPublished(n)) = event("newsletter.published", d.clone()) else {
            panic!("not parsed")
        };
        let total: usize = n.sections.iter().map(|s| s.body_markdown.len()).sum();
        assert_eq!(total, super::MAX_MARKDOWN_BYTES);
        d["sections"][1]["body_markdown"] = json!(format!("{half}a"));
        assert_eq!(
            event("newsletter.published", d).unwrap_err(),
            "invalid_payload: data.sections: the markdown is 102401 bytes in total; at most 102400"
        );
    }

    #[test]
    fn an_erasure_request_needs_a_real_address() {
        assert_eq!(
            event("person.erasure_requested", json!({"email": "nobody"})).unwrap_err(),
            "invalid_payload: data.email: not an email address"
        );
    }
}

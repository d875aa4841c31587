//! Readers of bulk mail (newsletters and digests): what their emails hold, and whether one
//! still goes to them.

use crate::domain::RegionId;
use crate::tokens::{Links, Purpose};
use chrono::Utc;
use serde::{Deserialize, Serialize};

/// A section as stored: the heading and the body in both forms.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredSection {
    pub heading: String,
    pub html: String,
    pub text: String,
}

/// The newsletter email's context, completed per reader at send time.
#[derive(Clone, Serialize)]
pub struct NewsletterEmail {
    pub subject: String,
    pub preheader: Option<String>,
    pub region_name: String,
    /// The reader's name, when they gave one.
    pub name: Option<String>,
    pub sections: Vec<StoredSection>,
    pub web_url: Option<String>,
    pub unsubscribe_url: String,
}

/// `List-Id` for a region's newsletter (RFC 2919), from the region id and `bulk_domain`, the
/// domain of the bulk From address: `<north-west.newsletters.example.org>`. Config and ids only,
/// never input.
pub fn list_id(bulk_domain: &str, region: RegionId) -> String {
    format!("<{}.newsletters.{bulk_domain}>", region.as_str())
}

/// Why a bulk email (a newsletter or a digest) must not go to a subscription now, if it must
/// not: the rule of `bulk_recipients` at fan-out, checked again just before sending.
pub fn bulk_skip_reason(status: Option<&str>, suppressed: bool) -> Option<&'static str> {
    match status {
        None => Some("the subscription no longer exists"),
        Some("confirmed") if suppressed => Some("the address is suppressed for bulk mail"),
        Some("confirmed") => None,
        Some(_) => Some("the reader has unsubscribed"),
    }
}

/// The reader's own unsubscribe link, signed afresh for each email.
pub fn unsubscribe_link(links: &Links, subscription_id: i64) -> String {
    links.link(Purpose::Unsubscribe, subscription_id, Utc::now())
}

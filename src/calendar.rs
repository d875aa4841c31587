//! Calendar files (RFC 5545) for training sessions. Times are written in UTC (`...Z`), which
//! Outlook, Google and Apple calendars all place correctly in the reader's own zone. The UID is
//! stable per session, so a later file with a higher SEQUENCE replaces the entry, and a
//! METHOD:CANCEL file removes it.

use crate::mail::Attachment;
use chrono::{DateTime, Utc};
use icalendar::{Calendar, Component, EventLike, EventStatus};

/// What a calendar file says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Add or update the entry.
    Request,
    /// Remove the entry.
    Cancel,
}

/// The facts of a session a calendar entry needs.
pub struct CalendarSession<'a> {
    pub session_id: &'a str,
    pub title: &'a str,
    pub description: &'a str,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub joining_url: Option<&'a str>,
    pub sequence: u32,
}

/// The UID domain: stable for the life of the service.
const UID_DOMAIN: &str = "rpec-notify.education.gov.uk";

pub fn uid(session_id: &str) -> String {
    format!("session-{session_id}@{UID_DOMAIN}")
}

/// Builds the `.ics` attachment for one registrant.
pub fn session_file(
    s: &CalendarSession<'_>,
    method: Method,
    organizer: &str,
    attendee: &str,
    now: DateTime<Utc>,
) -> Attachment {
    let method_name = match method {
        Method::Request => "REQUEST",
        Method::Cancel => "CANCEL",
    };
    let mut event = icalendar::Event::new();
    event
        .uid(&uid(s.session_id))
        .sequence(s.sequence)
        .timestamp(now)
        .starts(s.starts_at)
        .ends(s.ends_at)
        .summary(s.title)
        .description(s.description)
        .add_property("ORGANIZER", format!("mailto:{organizer}"))
        .add_property("ATTENDEE", format!("mailto:{attendee}"));
    if let Some(url) = s.joining_url {
        event.location(url).url(url);
    }
    match method {
        Method::Request => event.status(EventStatus::Confirmed),
        Method::Cancel => event.status(EventStatus::Cancelled),
    };
    let mut calendar = Calendar::new();
    calendar.append_property(("METHOD", method_name));
    calendar.push(event.done());
    Attachment {
        filename: "session.ics".into(),
        content_type: format!("text/calendar; charset=utf-8; method={method_name}"),
        content: calendar.done().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_has_the_uid_sequence_method_and_utc_times() {
        let s = CalendarSession {
            session_id: "dsl-2024-10-02",
            title: "Prevent in education, for DSLs",
            description: "Line one\nLine two; with, punctuation",
            starts_at: "2024-10-02T14:30:00Z".parse().unwrap(),
            ends_at: "2024-10-02T15:30:00Z".parse().unwrap(),
            joining_url: Some("https://teams.example.org/join/x"),
            sequence: 2,
        };
        let f = session_file(
            &s,
            Method::Cancel,
            "rpec@example.org",
            "jo@example.org",
            "2024-09-01T00:00:00Z".parse().unwrap(),
        );
        let text = f.content;
        assert!(text.contains("METHOD:CANCEL"), "{text}");
        assert!(text.contains("UID:session-dsl-2024-10-02@rpec-notify.education.gov.uk"));
        assert!(text.contains("SEQUENCE:2"));
        assert!(text.contains("DTSTART:20241002T143000Z"));
        assert!(text.contains("DTEND:20241002T153000Z"));
        assert!(text.contains("STATUS:CANCELLED"));
        assert!(
            text.contains("SUMMARY:Prevent in education\\, for DSLs"),
            "{text}"
        );
        assert!(text.lines().all(|l| l.len() <= 75 + 1), "lines are folded");
        assert_eq!(
            f.content_type,
            "text/calendar; charset=utf-8; method=CANCEL"
        );
    }
}

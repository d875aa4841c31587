//! `rpec-notify example --future`: a set of events dated from now, for trying the worker.
//!
//! The session is placed so that the region's briefing falls `lead` from now: with the shipped
//! offsets (reminders 7d, 1d and 1h, briefing 1d) it starts tomorrow a few minutes later than
//! now, so its 1-day reminder and its coordinators' briefing are both due within minutes, the
//! 7-day reminder is already past (skipped, never sent late) and the 1-hour one comes tomorrow.
//! A registrant's confirmation is sent at once. The time is worked out from the region's own
//! offsets, so an edited `regions.toml` still gives a briefing within minutes; when no reminder
//! offset matches the briefing offset the set says when its first reminder will come.

use crate::config::{Offset, Regions};
use crate::domain::RegionId;
use crate::schedule::plan::due_at;
use crate::uk_time::london_instant;
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use chrono_tz::Europe::London;
use serde_json::{json, Value};

/// The region the example's session, enquiry and newsletter belong to.
pub const REGION: &str = "north-west";

/// One generated set: its files, in the order to publish them, and when its emails are due.
#[derive(Debug, Clone)]
pub struct ExampleSet {
    /// (file name, event): names sort in publishing order (the session before its registration).
    pub files: Vec<(String, Value)>,
    pub session_id: String,
    pub starts_at: DateTime<Utc>,
    /// When the coordinators' briefing is due (None: its offset is already past, not planned).
    pub briefing_due: Option<DateTime<Utc>>,
    /// The first reminder the registrant will get, with its offset (None: every offset is past).
    pub first_reminder: Option<(Offset, DateTime<Utc>)>,
}

impl ExampleSet {
    /// What the set is and when to expect its emails, for a terminal.
    pub fn describe(&self, now: DateTime<Utc>) -> String {
        let at = |t: DateTime<Utc>| {
            let minutes = (t - now).num_minutes();
            format!("{} (in {minutes} min)", crate::uk_time::date_time(t))
        };
        let mut s = format!(
            "session {} ({REGION}) starts {}\n",
            self.session_id,
            crate::uk_time::date_time(self.starts_at)
        );
        s += "  registration confirmation: at once\n";
        match &self.first_reminder {
            Some((offset, due)) => {
                s += &format!("  first reminder ({offset} before): {}\n", at(*due))
            }
            None => s += "  no reminder: every reminder offset is already past\n",
        }
        match self.briefing_due {
            Some(due) => s += &format!("  coordinator briefing: {}\n", at(due)),
            None => s += "  no briefing: its offset is already past\n",
        }
        s
    }
}

/// When a session must start for something `offset` before it to be due at `due`: the inverse
/// of [`due_at`] (day offsets counted in UK calendar days, the rest exact).
fn start_for(due: DateTime<Utc>, offset: Offset) -> DateTime<Utc> {
    match offset {
        Offset::Exact(d) => due + d,
        Offset::Days(n) => {
            let local = due.with_timezone(&London).naive_local();
            london_instant(local + Duration::days(n.into()))
        }
    }
}

fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn envelope(kind: &str, now: DateTime<Utc>, data: Value) -> Value {
    json!({
        "id": uuid::Uuid::new_v4().to_string(),
        "type": kind,
        "version": 1,
        "occurred_at": stamp(now),
        "data": data,
    })
}

/// The set for `now`: the briefing of the example region's session due `lead` from now.
pub fn future(regions: &Regions, now: DateTime<Utc>, lead: Duration) -> ExampleSet {
    let region: RegionId = REGION.parse().expect("the example region is a region id");
    let config = regions.for_session(Some(region));
    // Whole minutes read better in the emails ("3:42pm").
    let now_minute = now - Duration::seconds(now.timestamp() % 60);
    let briefing_at = now_minute + lead + Duration::minutes(1);
    let starts_at = start_for(briefing_at, config.briefing_offset);
    let ends_at = starts_at + Duration::hours(1);
    let briefing_due = Some(due_at(starts_at, config.briefing_offset)).filter(|d| *d > now);
    let first_reminder = config
        .reminder_offsets
        .iter()
        .map(|o| (*o, due_at(starts_at, *o)))
        .filter(|(_, d)| *d > now)
        .min_by_key(|(_, d)| *d);

    let tag = now.format("%Y%m%d%H%M%S").to_string();
    let session_id = format!("example-{tag}");
    let registration_id = format!("example-reg-{tag}");
    let files = vec![
        (
            "1-session-scheduled.json".to_owned(),
            envelope(
                "session.scheduled",
                now,
                json!({
                    "session_id": session_id,
                    "title": "Prevent in education: training for designated safeguarding leads (DSLs)",
                    "audience": "Designated safeguarding leads",
                    "region": REGION,
                    "starts_at": stamp(starts_at),
                    "ends_at": stamp(ends_at),
                    "registration_url": format!("https://www.eventbrite.co.uk/e/{session_id}"),
                    "joining_url": format!("https://teams.example.org/join/{session_id}"),
                    "description": "An example session made by `rpec-notify example --future`."
                }),
            ),
        ),
        (
            "2-registration-created.json".to_owned(),
            envelope(
                "registration.created",
                now,
                json!({
                    "registration_id": registration_id,
                    "session_id": session_id,
                    "name": "Jo Bloggs",
                    "email": "jo.bloggs@school.example.org"
                }),
            ),
        ),
        (
            "3-contact-submitted.json".to_owned(),
            envelope(
                "contact.submitted",
                now,
                json!({
                    "enquiry_id": format!("example-enq-{tag}"),
                    "name": "Sam Okafor",
                    "email": "s.okafor@school.example.org",
                    "organisation": "Riverside Academy",
                    "setting": "school",
                    "topic": "training",
                    "region": REGION,
                    "message": "Could you tell us about Prevent training for our staff this term?"
                }),
            ),
        ),
        (
            "4-subscription-requested.json".to_owned(),
            envelope(
                "subscription.requested",
                now,
                json!({
                    "email": "alex.reader@school.example.org",
                    "name": "Alex Reader",
                    "regions": [REGION]
                }),
            ),
        ),
        (
            "5-newsletter-published.json".to_owned(),
            envelope(
                "newsletter.published",
                now,
                json!({
                    "newsletter_id": format!("example-nw-{tag}"),
                    "region": REGION,
                    "subject": "North-West Prevent update (example)",
                    "preheader": "An example newsletter",
                    "sections": [
                        {
                            "heading": "New training",
                            "body_markdown": format!(
                                "A session for **designated safeguarding leads** on {}.",
                                crate::uk_time::date(starts_at)
                            )
                        }
                    ]
                }),
            ),
        ),
    ];
    ExampleSet {
        files,
        session_id,
        starts_at,
        briefing_due,
        first_reminder,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn shipped() -> Regions {
        Regions::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/regions.toml"))
            .expect("the shipped regions.toml")
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn with_the_shipped_offsets_a_reminder_and_the_briefing_are_due_within_minutes() {
        // Ordinary days, and the evenings before both clock changes (a 1-day offset is a UK
        // calendar day, so the session keeps the wall-clock time across the change).
        for now in [
            "2026-12-01T14:11:30Z",
            "2025-03-29T18:00:00Z",
            "2025-10-25T23:30:00Z",
        ] {
            let now = utc(now);
            let set = future(&shipped(), now, Duration::minutes(3));
            let briefing = set.briefing_due.expect("a briefing");
            let (offset, reminder) = set.first_reminder.expect("a reminder");
            assert_eq!(offset.to_string(), "1d");
            assert_eq!(briefing, reminder);
            assert!(briefing > now + Duration::minutes(2), "{now}: {briefing}");
            assert!(briefing <= now + Duration::minutes(4), "{now}: {briefing}");
            assert!(set.starts_at > now + Duration::hours(22), "{now}");
        }
    }

    #[test]
    fn every_event_of_the_set_is_one_the_worker_takes() {
        let set = future(&shipped(), Utc::now(), Duration::minutes(3));
        assert_eq!(set.files.len(), 5);
        for (name, event) in &set.files {
            let body = serde_json::to_vec(event).unwrap();
            let outcome = crate::consume::admit(&body, 256 * 1024);
            assert!(outcome.is_ok(), "{name}: {outcome:?}");
        }
        let mut names: Vec<_> = set.files.iter().map(|(n, _)| n.clone()).collect();
        names.sort();
        assert_eq!(names[0], "1-session-scheduled.json");
    }

    #[test]
    fn a_region_whose_offsets_differ_still_gets_its_briefing_in_minutes() {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("config/regions.toml"),
        )
        .unwrap()
        .replacen(
            "name = \"North-West\"\n",
            "name = \"North-West\"\nreminder_offsets = [\"2h\", \"30m\"]\nbriefing_offset = \"2h\"\n",
            1,
        );
        let regions = Regions::parse(&text, "regions.toml").unwrap();
        let now = utc("2026-12-01T14:11:00Z");
        let set = future(&regions, now, Duration::minutes(3));
        assert_eq!(set.starts_at, utc("2026-12-01T16:15:00Z"));
        assert_eq!(set.briefing_due, Some(utc("2026-12-01T14:15:00Z")));
        assert_eq!(set.first_reminder.unwrap().1, utc("2026-12-01T14:15:00Z"));
    }
}

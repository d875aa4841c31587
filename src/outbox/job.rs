//! What an outbox row holds: one [`Job`] per email, a serde enum with one variant per kind of
//! email, each with the ids it needs and whatever is fixed when it is queued. It is stored as
//! JSON in `outbox.job`, tagged with its kind (`{"kind": "session_reminder", ...}`), and the
//! row's `kind` column always equals that tag (written from the job by the enqueue paths, and
//! checked by the table). The sender composes each email from its job and the current state
//! (`send::compose`), in one `match` over this enum.
//!
//! Fan-outs (a newsletter to its readers, a digest, a session email to every registrant) are
//! written by the database, one row per member of an audience (`outbox::enqueue_each`): each
//! row's job is a [`ForEach`]'s job with the member's own ids put in by SQL that lives here too
//! (`Members::ids_sql`).
//!
//! The JSON of each variant has the keys the outbox `context` of earlier versions held for that
//! kind (a digest's `count` aside: it is counted when the digest is sent), so a row queued by an
//! older worker reads as its job once migration 0009 has added its `kind`.

use super::Stream;
use crate::state::session::SessionView;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;

/// Every kind of email the worker writes to the outbox: the tags of [`Job`]'s variants, in the
/// order of the enum. Metrics label by kind only from this list (anything else is "unknown"),
/// so a bad row cannot grow the number of series. A test checks that it holds every tag and
/// nothing else.
pub const KINDS: [&str; 14] = [
    "enquiry",
    "enquiry_ack",
    "enquiry_undeliverable",
    "enquiry_reminder",
    "enquiry_escalation",
    "registration_confirmation",
    "session_reminder",
    "session_moved",
    "joining_link_changed",
    "session_cancelled",
    "coordinator_briefing",
    "subscription_confirm",
    "newsletter",
    "digest",
];

/// One email, as the outbox holds it until it is sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Job {
    /// The coordinators' copy of a contact enquiry (every field, as received).
    Enquiry(Enquiry),
    /// The acknowledgement to the person who wrote.
    EnquiryAck(Acknowledgement),
    /// The coordinators' copy that could not be delivered, passed to the triage mailbox.
    EnquiryUndeliverable(UndeliverableEnquiry),
    /// An unclaimed enquiry at its first deadline, to one of its region's coordinators, with
    /// their own claim link.
    EnquiryReminder(Enquiry),
    /// An unclaimed enquiry at a deadline, to the national coordinators (and at the first, the
    /// triage mailbox): "UNCLAIMED: ...".
    EnquiryEscalation(Escalation),
    /// A registration's confirmation, with the session's calendar file.
    RegistrationConfirmation(Registrant),
    /// A reminder at one of the region's offsets before the session.
    SessionReminder(Reminder),
    /// The session has a new time.
    SessionMoved(Moved),
    /// The session has a new joining link.
    JoiningLinkChanged(Registrant),
    /// The session was cancelled (or was already, when they registered).
    SessionCancelled(Registrant),
    /// The list of current registrants, to the session's coordinators.
    CoordinatorBriefing(Briefing),
    /// The double opt-in: a link per region asked for.
    SubscriptionConfirm(Confirmation),
    /// A newsletter's copy for one reader.
    Newsletter(NewsletterCopy),
    /// A weekly digest's copy for one reader.
    Digest(DigestCopy),
}

impl Job {
    /// The variant's tag: the row's `kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            Job::Enquiry(_) => "enquiry",
            Job::EnquiryAck(_) => "enquiry_ack",
            Job::EnquiryUndeliverable(_) => "enquiry_undeliverable",
            Job::EnquiryReminder(_) => "enquiry_reminder",
            Job::EnquiryEscalation(_) => "enquiry_escalation",
            Job::RegistrationConfirmation(_) => "registration_confirmation",
            Job::SessionReminder(_) => "session_reminder",
            Job::SessionMoved(_) => "session_moved",
            Job::JoiningLinkChanged(_) => "joining_link_changed",
            Job::SessionCancelled(_) => "session_cancelled",
            Job::CoordinatorBriefing(_) => "coordinator_briefing",
            Job::SubscriptionConfirm(_) => "subscription_confirm",
            Job::Newsletter(_) => "newsletter",
            Job::Digest(_) => "digest",
        }
    }

    /// The template it is rendered with (`templates/NAME/`).
    pub fn template(&self) -> &'static str {
        match self {
            Job::Enquiry(_) => "enquiry_coordinator",
            Job::Digest(_) => "weekly_digest",
            Job::EnquiryAck(_)
            | Job::EnquiryUndeliverable(_)
            | Job::EnquiryReminder(_)
            | Job::EnquiryEscalation(_)
            | Job::RegistrationConfirmation(_)
            | Job::SessionReminder(_)
            | Job::SessionMoved(_)
            | Job::JoiningLinkChanged(_)
            | Job::SessionCancelled(_)
            | Job::CoordinatorBriefing(_)
            | Job::SubscriptionConfirm(_)
            | Job::Newsletter(_) => self.kind(),
        }
    }

    /// Which From address it is sent from.
    pub fn stream(&self) -> Stream {
        match self {
            Job::Newsletter(_) | Job::Digest(_) => Stream::Bulk,
            Job::Enquiry(_)
            | Job::EnquiryAck(_)
            | Job::EnquiryUndeliverable(_)
            | Job::EnquiryReminder(_)
            | Job::EnquiryEscalation(_)
            | Job::RegistrationConfirmation(_)
            | Job::SessionReminder(_)
            | Job::SessionMoved(_)
            | Job::JoiningLinkChanged(_)
            | Job::SessionCancelled(_)
            | Job::CoordinatorBriefing(_)
            | Job::SubscriptionConfirm(_) => Stream::Transactional,
        }
    }

    /// Whether it is marked `Auto-Submitted: auto-generated`: every email but newsletters (the
    /// contract exempts them: people asked for them, and some clients hide auto-submitted mail).
    pub fn auto_submitted(&self) -> bool {
        !matches!(self, Job::Newsletter(_))
    }

    /// Reads a stored job; the reason when it does not parse (an unknown kind, a missing field).
    pub fn from_value(value: Value) -> Result<Job, UnreadableJob> {
        serde_json::from_value(value).map_err(|e| UnreadableJob(e.to_string()))
    }
}

/// Why a row's job could not be read. The row is failed for good with this as its reason
/// (kept in `last_error`, which only the database shows: serde can quote a value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("its job does not parse: {0}")]
pub struct UnreadableJob(String);

impl Job {
    /// For a coordinators' copy of an enquiry that failed for good (refused by the relay, or
    /// bounced after it took it), sent to `recipients`: the `triage` mailbox and the copy for
    /// it, naming the region it could not reach and `reason`, so that somebody sees the enquiry.
    /// None for other kinds (the triage copy itself included: if that fails too it stays
    /// failed, and the failed-and-unresolved gauge shows it), and when the copy went to the
    /// triage mailbox already.
    pub fn undeliverable_copy(
        &self,
        triage: &[crate::domain::EmailAddress],
        recipients: &[String],
        reason: &str,
    ) -> Option<(Vec<String>, Box<Job>)> {
        let Job::Enquiry(enquiry) = self else {
            return None;
        };
        let triage: Vec<String> = triage.iter().map(|a| a.as_str().to_owned()).collect();
        let norm = |v: &[String]| {
            let mut v: Vec<String> = v.iter().map(|x| x.to_lowercase()).collect();
            v.sort();
            v.dedup();
            v
        };
        if triage.is_empty() || norm(&triage) == norm(recipients) {
            return None;
        }
        let region_name = enquiry.region_name.as_deref().unwrap_or("triage");
        let copy = Job::EnquiryUndeliverable(UndeliverableEnquiry {
            // Without the failed copy's claim link, which named the mailbox that failed.
            enquiry: Enquiry {
                copy_id: None,
                ..enquiry.clone()
            },
            undeliverable: Undeliverable {
                region_name: region_name.to_owned(),
                reason: reason.to_owned(),
            },
        });
        Some((triage, Box::new(copy)))
    }
}

/// A claimed row's job, read with the claim. A job that does not parse is kept with the reason
/// instead of failing the claim (which would stop every other row too): that row alone fails.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredJob(Result<Job, UnreadableJob>);

impl StoredJob {
    pub fn get(&self) -> Result<&Job, &UnreadableJob> {
        self.0.as_ref()
    }
}

impl From<Job> for StoredJob {
    fn from(job: Job) -> Self {
        StoredJob(Ok(job))
    }
}

/// For `sqlx::FromRow` (`#[sqlx(try_from = "Value")]`): never fails, see [`StoredJob`].
impl From<Value> for StoredJob {
    fn from(value: Value) -> Self {
        StoredJob(Job::from_value(value))
    }
}

// ---------------------------------------------------------------------------------------------
// What each kind holds. Debug of anything that holds personal data (names, addresses, enquiry
// text) shows ids only: Debug output ends up in logs.

pub use crate::state::enquiry::Enquiry;

/// The acknowledgement to the person who wrote.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Acknowledgement {
    pub enquiry_id: String,
    pub name: String,
    pub topic_label: String,
    pub urgent: bool,
    /// The region that will answer, or None when the national team passes it on.
    pub region_name: Option<String>,
    /// When they can expect to hear from a coordinator, in UK time: the claim deadline (None
    /// for acknowledgements queued before claiming).
    #[serde(default)]
    pub expect_reply_by: Option<String>,
    /// A newsletter enquiry with a region: a subscription to that region's newsletter was asked
    /// for. The next two say how it stands (absent from rows older than newsletters: false).
    #[serde(default)]
    pub newsletter: bool,
    /// They were subscribed already: nothing changed.
    #[serde(default)]
    pub newsletter_confirmed: bool,
    /// A confirmation went to them less than a day ago: no new one was sent.
    #[serde(default)]
    pub newsletter_recent: bool,
}

impl fmt::Debug for Acknowledgement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acknowledgement")
            .field("enquiry_id", &self.enquiry_id)
            .finish_non_exhaustive()
    }
}

/// An escalation of an unclaimed enquiry: the enquiry, and which notice this is.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Escalation {
    #[serde(flatten)]
    pub enquiry: Enquiry,
    /// 1 at the first deadline, 2 at the second (the templates' `second`, added when it is
    /// sent).
    pub level: i16,
}

impl fmt::Debug for Escalation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Escalation")
            .field("enquiry", &self.enquiry)
            .field("level", &self.level)
            .finish_non_exhaustive()
    }
}

/// The coordinators' copy of an enquiry that failed for good, for the triage mailbox: the
/// enquiry and which region it could not reach.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct UndeliverableEnquiry {
    #[serde(flatten)]
    pub enquiry: Enquiry,
    pub undeliverable: Undeliverable,
}

impl fmt::Debug for UndeliverableEnquiry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UndeliverableEnquiry")
            .field("enquiry", &self.enquiry)
            .finish_non_exhaustive()
    }
}

/// Where a coordinators' copy could not go, and why.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Undeliverable {
    /// The region whose coordinators it was for ("triage" when it had none).
    pub region_name: String,
    /// The relay's reply (it can quote the address it refused).
    pub reason: String,
}

/// A registrant's email about a session: completed at send time from the session and the
/// registration as they are then.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registrant {
    pub registration_id: String,
    pub session_id: String,
}

/// A reminder, planned at an offset before the session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reminder {
    pub registration_id: String,
    pub session_id: String,
    /// The configured offset it was planned from ("7d", "1h").
    pub offset: String,
    /// The session's start it was planned against: a session moved since makes it stale.
    pub starts_at: DateTime<Utc>,
    /// When it was due, for `rpec_reminder_lateness_seconds` (absent from older rows).
    #[serde(default)]
    pub due_at: Option<DateTime<Utc>>,
}

/// "The session has moved": the registrant, and the time it used to have.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Moved {
    pub registration_id: String,
    pub session_id: String,
    /// "Tuesday 1 October 2024, 3:30pm to 4:30pm"
    pub previous_when: String,
}

/// A coordinators' briefing: the registrants are read at send time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Briefing {
    pub session_id: String,
}

/// The double opt-in email: one signed link per region asked for.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Confirmation {
    pub name: Option<String>,
    pub regions: Vec<RegionLink>,
    /// "North-West and London", for the subject and the first sentence.
    pub region_names: String,
    pub several: bool,
    /// The last day the links work: "Saturday 12 October 2024".
    pub expires: String,
}

impl fmt::Debug for Confirmation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Confirmation")
            .field("regions", &self.regions.len())
            .finish_non_exhaustive()
    }
}

/// One region in the confirmation email, with its signed link.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionLink {
    pub region_name: String,
    pub confirm_url: String,
}

/// A newsletter's copy for one reader: name and unsubscribe link are filled in at send time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewsletterCopy {
    pub newsletter_id: String,
    pub subscription_id: i64,
}

/// A digest's copy for one reader: the sessions as the firing listed them; the reader's name
/// and unsubscribe link are filled in at send time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DigestCopy {
    pub subscription_id: i64,
    pub region_name: String,
    pub sessions: Vec<SessionView>,
}

// ---------------------------------------------------------------------------------------------
// Fan-outs.

/// A job for every member of an audience, the same for all but the member's own ids, which the
/// database puts in as it writes each row (`outbox::enqueue_each`).
#[derive(Debug, Clone, PartialEq)]
pub enum ForEach {
    /// A newsletter to each reader.
    Newsletter { newsletter_id: String },
    /// A digest of these sessions to each reader.
    Digest {
        region_name: String,
        sessions: Vec<SessionView>,
    },
    /// "The session has moved" to each registrant.
    SessionMoved { previous_when: String },
    /// "New joining link" to each registrant.
    JoiningLinkChanged,
    /// The cancellation to each registrant.
    SessionCancelled,
}

/// Which sort of member a fan-out's jobs are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Members {
    /// Readers of bulk mail, by subscription.
    Readers,
    /// Registrants of a session, by registration.
    Registrants,
}

/// One member of an audience, by the ids their job takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Member {
    Reader {
        subscription_id: i64,
    },
    Registrant {
        registration_id: String,
        session_id: String,
    },
}

impl ForEach {
    /// Who it is for.
    pub fn members(&self) -> Members {
        match self {
            ForEach::Newsletter { .. } | ForEach::Digest { .. } => Members::Readers,
            ForEach::SessionMoved { .. }
            | ForEach::JoiningLinkChanged
            | ForEach::SessionCancelled => Members::Registrants,
        }
    }

    /// The newsletter it is, if it is one (its deliveries are recorded as it is queued).
    pub fn newsletter_id(&self) -> Option<&str> {
        match self {
            ForEach::Newsletter { newsletter_id } => Some(newsletter_id),
            ForEach::Digest { .. }
            | ForEach::SessionMoved { .. }
            | ForEach::JoiningLinkChanged
            | ForEach::SessionCancelled => None,
        }
    }

    /// The job of one member (None for a member of the other sort): what the database writes
    /// for them.
    pub fn job_for(&self, member: Member) -> Option<Job> {
        Some(match (self, member) {
            (ForEach::Newsletter { newsletter_id }, Member::Reader { subscription_id }) => {
                Job::Newsletter(NewsletterCopy {
                    newsletter_id: newsletter_id.clone(),
                    subscription_id,
                })
            }
            (
                ForEach::Digest {
                    region_name,
                    sessions,
                },
                Member::Reader { subscription_id },
            ) => Job::Digest(DigestCopy {
                subscription_id,
                region_name: region_name.clone(),
                sessions: sessions.clone(),
            }),
            (
                ForEach::SessionMoved { previous_when },
                Member::Registrant {
                    registration_id,
                    session_id,
                },
            ) => Job::SessionMoved(Moved {
                registration_id,
                session_id,
                previous_when: previous_when.clone(),
            }),
            (
                ForEach::JoiningLinkChanged,
                Member::Registrant {
                    registration_id,
                    session_id,
                },
            ) => Job::JoiningLinkChanged(Registrant {
                registration_id,
                session_id,
            }),
            (
                ForEach::SessionCancelled,
                Member::Registrant {
                    registration_id,
                    session_id,
                },
            ) => Job::SessionCancelled(Registrant {
                registration_id,
                session_id,
            }),
            (ForEach::Newsletter { .. } | ForEach::Digest { .. }, Member::Registrant { .. })
            | (
                ForEach::SessionMoved { .. }
                | ForEach::JoiningLinkChanged
                | ForEach::SessionCancelled,
                Member::Reader { .. },
            ) => return None,
        })
    }

    /// The job every row starts from: placeholders where the member's ids go, which the
    /// database writes over with each member's own (`$shared::jsonb || ids_sql`: the keys on
    /// the right replace those on the left).
    pub(super) fn shared_job(&self) -> Option<Job> {
        let placeholder = match self.members() {
            Members::Readers => Member::Reader { subscription_id: 0 },
            Members::Registrants => Member::Registrant {
                registration_id: String::new(),
                session_id: String::new(),
            },
        };
        self.job_for(placeholder)
    }
}

impl Members {
    /// SQL: the member's ids, as the keys of their job, from a row `a` of the audience (columns
    /// `subscription_id`, or `registration_id` and `session_id`).
    pub(super) fn ids_sql(self) -> &'static str {
        match self {
            Members::Readers => "jsonb_build_object('subscription_id', a.subscription_id)",
            Members::Registrants => {
                "jsonb_build_object('registration_id', a.registration_id, 'session_id', a.session_id)"
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeSet;

    fn enquiry() -> Enquiry {
        Enquiry {
            enquiry_id: "enq-1".into(),
            urgent: true,
            received: "Thursday 3 October 2024, 11:15am".into(),
            topic: "complex-case".into(),
            topic_label: "A complex case".into(),
            setting_label: "School".into(),
            name: "Sam Okafor".into(),
            email: "sam@school.example.org".into(),
            organisation: "Riverside Academy".into(),
            phone: None,
            area: Some("Cumbria".into()),
            message: "Advice, please.".into(),
            region_name: Some("North-West".into()),
            routing_note: "The area the enquirer gave (Cumbria) is in the North-West region."
                .into(),
            claim_by: Some("Thursday 3 October 2024, 1:15pm".into()),
            copy_id: Some(7),
        }
    }

    fn registrant() -> Registrant {
        Registrant {
            registration_id: "reg-1".into(),
            session_id: "s-1".into(),
        }
    }

    /// One job of every kind.
    pub(crate) fn samples() -> Vec<Job> {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        vec![
            Job::Enquiry(enquiry()),
            Job::EnquiryAck(Acknowledgement {
                enquiry_id: "enq-1".into(),
                name: "Sam Okafor".into(),
                topic_label: "Training".into(),
                urgent: false,
                region_name: None,
                expect_reply_by: Some("Monday 7 October 2024, 11:15am".into()),
                newsletter: true,
                newsletter_confirmed: false,
                newsletter_recent: true,
            }),
            Job::EnquiryUndeliverable(UndeliverableEnquiry {
                enquiry: enquiry(),
                undeliverable: Undeliverable {
                    region_name: "North-West".into(),
                    reason: "permanent error (550): no such mailbox".into(),
                },
            }),
            Job::EnquiryReminder(enquiry()),
            Job::EnquiryEscalation(Escalation {
                enquiry: enquiry(),
                level: 2,
            }),
            Job::RegistrationConfirmation(registrant()),
            Job::SessionReminder(Reminder {
                registration_id: "reg-1".into(),
                session_id: "s-1".into(),
                offset: "1h".into(),
                starts_at: at("2024-10-02T14:30:00Z"),
                due_at: Some(at("2024-10-02T13:30:00.123456Z")),
            }),
            Job::SessionMoved(Moved {
                registration_id: "reg-1".into(),
                session_id: "s-1".into(),
                previous_when: "Tuesday 1 October 2024, 3:30pm to 4:30pm".into(),
            }),
            Job::JoiningLinkChanged(registrant()),
            Job::SessionCancelled(registrant()),
            Job::CoordinatorBriefing(Briefing {
                session_id: "s-1".into(),
            }),
            Job::SubscriptionConfirm(Confirmation {
                name: None,
                regions: vec![RegionLink {
                    region_name: "London".into(),
                    confirm_url: "http://127.0.0.1:8080/subscriptions/confirm?token=x".into(),
                }],
                region_names: "London".into(),
                several: false,
                expires: "Saturday 12 October 2024".into(),
            }),
            Job::Newsletter(NewsletterCopy {
                newsletter_id: "nw-1".into(),
                subscription_id: 42,
            }),
            Job::Digest(DigestCopy {
                subscription_id: 42,
                region_name: "London".into(),
                sessions: Vec::new(),
            }),
        ]
    }

    /// Which variant a job is: this match has no wildcard, so a new variant does not compile
    /// until it is given a number here, and `every_variant_has_a_sample` then asks for its
    /// sample and its place in `KINDS`.
    fn variant(job: &Job) -> usize {
        match job {
            Job::Enquiry(_) => 0,
            Job::EnquiryAck(_) => 1,
            Job::EnquiryUndeliverable(_) => 2,
            Job::EnquiryReminder(_) => 3,
            Job::EnquiryEscalation(_) => 4,
            Job::RegistrationConfirmation(_) => 5,
            Job::SessionReminder(_) => 6,
            Job::SessionMoved(_) => 7,
            Job::JoiningLinkChanged(_) => 8,
            Job::SessionCancelled(_) => 9,
            Job::CoordinatorBriefing(_) => 10,
            Job::SubscriptionConfirm(_) => 11,
            Job::Newsletter(_) => 12,
            Job::Digest(_) => 13,
        }
    }

    #[test]
    fn every_variant_has_a_sample() {
        let seen: BTreeSet<usize> = samples().iter().map(variant).collect();
        assert_eq!(seen, (0..KINDS.len()).collect(), "one sample per variant");
        assert_eq!(samples().len(), KINDS.len());
    }

    #[test]
    fn kinds_are_exactly_the_tags_of_the_variants() {
        let tags: Vec<String> = samples()
            .iter()
            .map(|job| {
                let value = serde_json::to_value(job).unwrap();
                let tag = value["kind"].as_str().unwrap().to_owned();
                assert_eq!(tag, job.kind(), "the serde tag is kind()");
                tag
            })
            .collect();
        assert_eq!(tags, KINDS, "KINDS lists every tag, in the enum's order");
        let distinct: BTreeSet<&String> = tags.iter().collect();
        assert_eq!(distinct.len(), KINDS.len());
    }

    #[test]
    fn every_job_reads_back_as_it_was_written() {
        for job in samples() {
            let value = serde_json::to_value(&job).unwrap();
            assert_eq!(Job::from_value(value).unwrap(), job);
        }
    }

    #[test]
    fn templates_and_streams_are_those_of_the_kinds() {
        for job in samples() {
            let expected = match job.kind() {
                "enquiry" => "enquiry_coordinator",
                "digest" => "weekly_digest",
                kind => kind,
            };
            assert_eq!(job.template(), expected);
            let bulk = matches!(job.kind(), "newsletter" | "digest");
            assert_eq!(job.stream() == Stream::Bulk, bulk, "{}", job.kind());
            assert_eq!(job.auto_submitted(), job.kind() != "newsletter");
        }
    }

    #[test]
    fn a_job_that_does_not_parse_says_why() {
        let unknown = Job::from_value(json!({"kind": "carrier_pigeon"})).unwrap_err();
        assert!(unknown.to_string().contains("carrier_pigeon"), "{unknown}");
        let missing =
            Job::from_value(json!({"kind": "session_reminder", "session_id": "s-1"})).unwrap_err();
        assert!(missing.to_string().contains("missing field"), "{missing}");
        assert!(Job::from_value(json!({"session_id": "s-1"})).is_err());
        assert!(Job::from_value(json!("enquiry")).is_err());
        let stored = StoredJob::from(json!({"kind": 7}));
        assert!(stored.get().is_err());
    }

    /// The context an older worker stored for each kind, with `kind` added as migration 0009
    /// adds it, reads as the job of that kind.
    #[test]
    fn contexts_of_the_previous_version_read_as_jobs() {
        let old = [
            json!({"kind": "enquiry_ack", "enquiry_id": "enq-lease", "name": "Kim",
                   "topic_label": "Training", "urgent": false, "region_name": "London",
                   "newsletter": false}),
            json!({"kind": "session_reminder", "registration_id": "r", "session_id": "s",
                   "offset": "1d", "starts_at": "2024-11-25T15:30:00+00:00"}),
            json!({"kind": "session_moved", "registration_id": "r", "session_id": "s",
                   "previous_when": "Monday"}),
            json!({"kind": "coordinator_briefing", "session_id": "s"}),
            json!({"kind": "newsletter", "newsletter_id": "n", "subscription_id": 3}),
            json!({"kind": "digest", "region_name": "London", "count": 0, "sessions": [],
                   "subscription_id": 3}),
        ];
        for value in old {
            let kind = value["kind"].as_str().unwrap().to_owned();
            let job = Job::from_value(value).unwrap_or_else(|e| panic!("{kind}: {e}"));
            assert_eq!(job.kind(), kind);
        }
    }

    #[test]
    fn debug_shows_ids_not_people() {
        for job in samples() {
            let debug = format!("{job:?}");
            for personal in ["Sam", "sam@", "Advice", "Riverside", "token="] {
                assert!(!debug.contains(personal), "{debug}");
            }
        }
    }

    #[test]
    fn a_fan_out_job_is_only_for_its_sort_of_member() {
        let reader = Member::Reader { subscription_id: 9 };
        let registrant = Member::Registrant {
            registration_id: "reg-9".into(),
            session_id: "s-9".into(),
        };
        let each = [
            ForEach::Newsletter {
                newsletter_id: "nw-1".into(),
            },
            ForEach::Digest {
                region_name: "London".into(),
                sessions: Vec::new(),
            },
            ForEach::SessionMoved {
                previous_when: "Monday".into(),
            },
            ForEach::JoiningLinkChanged,
            ForEach::SessionCancelled,
        ];
        for e in each {
            let (theirs, other) = match e.members() {
                Members::Readers => (reader.clone(), registrant.clone()),
                Members::Registrants => (registrant.clone(), reader.clone()),
            };
            assert!(e.job_for(theirs).is_some(), "{e:?}");
            assert!(e.job_for(other).is_none(), "{e:?}");
            assert!(e.shared_job().is_some(), "{e:?}");
        }
    }
}

//! Enquiries as the coordinators' emails show them, and claiming them: the one rule (the first
//! claim wins) that the claim page, the `enquiry.claimed` event and the escalations' send-time
//! check share.

use crate::config::{Regions, Routing};
use crate::domain::{RegionId, Setting, Topic};
use crate::uk_time;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use std::fmt;

/// An enquiry as the coordinators' emails show it (their copy, its reminders and
/// escalations, the triage copy of one that failed): every field, as the enquirer sent it.
/// Values are escaped by the templates. It is also what those emails' jobs hold
/// (`outbox::job`).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Enquiry {
    pub enquiry_id: String,
    pub urgent: bool,
    /// When it was received, as the page writes times ("Thursday 3 October 2024, 11:15am").
    pub received: String,
    pub topic: String,
    pub topic_label: String,
    pub setting_label: String,
    pub name: String,
    /// The enquirer's address (the row's `about` lists it, for erasure).
    pub email: String,
    pub organisation: String,
    pub phone: Option<String>,
    pub area: Option<String>,
    pub message: String,
    /// The region that answers, or None for triage.
    pub region_name: Option<String>,
    /// Why it came here, in a sentence.
    pub routing_note: String,
    /// When it must be claimed by, in UK time ("Monday 31 March 2025, 9:30am"); None for
    /// enquiries from before claiming.
    #[serde(default)]
    pub claim_by: Option<String>,
    /// The copy this email is (`enquiry_copies`), whose id its claim link signs; None for
    /// copies without a link (queued before claiming, or the triage copy of a failed one).
    #[serde(default)]
    pub copy_id: Option<i64>,
}

impl fmt::Debug for Enquiry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Enquiry")
            .field("enquiry_id", &self.enquiry_id)
            .finish_non_exhaustive()
    }
}

/// Urgent enquiries (and their escalations) are sent before anything else waiting.
pub const URGENT_PRIORITY: i16 = 10;

/// The headers that mark an urgent email (trusted values only).
pub fn urgent_headers() -> Vec<(&'static str, String)> {
    vec![("Importance", "high".into()), ("X-Priority", "1".into())]
}

/// Records a copy of an enquiry with a claim link to `mailbox`; its id is what the link signs.
pub async fn new_copy(
    conn: &mut PgConnection,
    enquiry_id: &str,
    mailbox: &str,
    kind: &str,
    now: DateTime<Utc>,
) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "INSERT INTO enquiry_copies (enquiry_id, mailbox, kind, created_at)
         VALUES ($1, $2, $3, $4) RETURNING id",
    )
    .bind(enquiry_id)
    .bind(mailbox)
    .bind(kind)
    .bind(now)
    .fetch_one(conn)
    .await
}

/// Why an enquiry came to the mailbox it came to, in a sentence.
pub fn routing_note(routing: Routing, region_name: Option<&str>, area: Option<&str>) -> String {
    match (routing, region_name) {
        (Routing::Region(_), Some(name)) => format!("The enquirer chose the {name} region."),
        (Routing::Area(_), Some(name)) => format!(
            "The area the enquirer gave ({}) is in the {name} region.",
            area.unwrap_or_default()
        ),
        _ => match area {
            Some(a) => format!(
                "The area the enquirer gave ({a}) matches no region: please pass this enquiry to the right coordinator."
            ),
            None => "The enquirer gave no region or area: please pass this enquiry to the right coordinator.".into(),
        },
    }
}

/// An enquiry as stored, with its personal fields (None once erased or anonymised).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredEnquiry {
    pub enquiry_id: String,
    pub region: Option<String>,
    pub routed_by: String,
    pub topic: String,
    pub setting: String,
    pub urgent: bool,
    pub name: Option<String>,
    pub email: Option<String>,
    pub organisation: Option<String>,
    pub phone: Option<String>,
    pub area: Option<String>,
    pub message: Option<String>,
    pub received_at: DateTime<Utc>,
    pub claim_deadline_at: Option<DateTime<Utc>>,
    pub second_notice_at: Option<DateTime<Utc>>,
    pub anonymised_at: Option<DateTime<Utc>>,
}

/// The columns of [`StoredEnquiry`], for queries that read one.
pub const STORED_COLUMNS: &str = "enquiry_id, region, routed_by, topic, setting, urgent, name, \
     email, organisation, phone, area, message, received_at, claim_deadline_at, \
     second_notice_at, anonymised_at";

impl StoredEnquiry {
    pub fn region_id(&self) -> Option<RegionId> {
        self.region.as_deref().and_then(|r| r.parse().ok())
    }

    pub fn routing(&self) -> Routing {
        match (self.routed_by.as_str(), self.region_id()) {
            ("region", Some(r)) => Routing::Region(r),
            ("area", Some(r)) => Routing::Area(r),
            _ => Routing::Triage,
        }
    }

    /// The coordinators' view, or None once the enquiry holds no personal data any more
    /// (erased or anonymised): there is nothing left to show.
    pub fn view(&self, regions: &Regions) -> Option<Enquiry> {
        if self.anonymised_at.is_some() {
            return None;
        }
        let topic = Topic::parse(&self.topic).unwrap_or(Topic::Other);
        let setting = Setting::parse(&self.setting).unwrap_or(Setting::Other);
        let region_name = self.region_id().map(|r| regions.region(r).name.clone());
        Some(Enquiry {
            enquiry_id: self.enquiry_id.clone(),
            urgent: self.urgent,
            received: uk_time::date_time(self.received_at),
            topic: topic.as_str().to_owned(),
            topic_label: topic.label().to_owned(),
            setting_label: setting.label().to_owned(),
            name: self.name.clone()?,
            email: self.email.clone()?,
            organisation: self.organisation.clone().unwrap_or_default(),
            phone: self.phone.clone(),
            area: self.area.clone(),
            message: self.message.clone().unwrap_or_default(),
            routing_note: routing_note(
                self.routing(),
                region_name.as_deref(),
                self.area.as_deref(),
            ),
            region_name,
            claim_by: self.claim_deadline_at.map(uk_time::date_time),
            copy_id: None,
        })
    }
}

/// Reads one enquiry.
pub async fn load(
    conn: &mut PgConnection,
    enquiry_id: &str,
) -> sqlx::Result<Option<StoredEnquiry>> {
    sqlx::query_as(&format!(
        "SELECT {STORED_COLUMNS} FROM enquiries WHERE enquiry_id = $1"
    ))
    .bind(enquiry_id)
    .fetch_optional(conn)
    .await
}

/// How a claim was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// A coordinator's claim link (the page's button).
    Link,
    /// An `enquiry.claimed` event.
    Event,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Link => "link",
            Via::Event => "event",
        }
    }
}

/// Who holds an enquiry, and since when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// None once that mailbox's address has been erased.
    pub by: Option<String>,
    pub at: DateTime<Utc>,
}

/// What a claim came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claimed {
    /// This claim took it: the enquiry's region (None: triage), topic and arrival, for the
    /// time-to-claim metric.
    Now {
        region: Option<String>,
        topic: String,
        received_at: DateTime<Utc>,
    },
    /// Someone had it already.
    Already(Holder),
    /// No such enquiry.
    Unknown,
}

/// Claims `enquiry_id` for `by` (None: a copy whose mailbox was erased) at `now`, unless it is claimed already: the first claim wins.
/// One statement, so two claims at once cannot both win.
pub async fn claim(
    conn: &mut PgConnection,
    enquiry_id: &str,
    by: Option<&str>,
    via: Via,
    note: Option<&str>,
    now: DateTime<Utc>,
) -> sqlx::Result<Claimed> {
    let took: Option<(Option<String>, String, DateTime<Utc>)> = sqlx::query_as(
        "UPDATE enquiries SET claimed_at = $3, claimed_by = $2, claimed_via = $4, claim_note = $5
         WHERE enquiry_id = $1 AND claimed_at IS NULL
         RETURNING region, topic, received_at",
    )
    .bind(enquiry_id)
    .bind(by)
    .bind(now)
    .bind(via.as_str())
    .bind(note)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some((region, topic, received_at)) = took {
        return Ok(Claimed::Now {
            region,
            topic,
            received_at,
        });
    }
    Ok(match holder(conn, enquiry_id).await? {
        Some(h) => Claimed::Already(h),
        None => Claimed::Unknown,
    })
}

/// Who holds the enquiry; None if it is not claimed (or does not exist).
pub async fn holder(conn: &mut PgConnection, enquiry_id: &str) -> sqlx::Result<Option<Holder>> {
    let row: Option<(Option<String>, Option<DateTime<Utc>>)> =
        sqlx::query_as("SELECT claimed_by, claimed_at FROM enquiries WHERE enquiry_id = $1")
            .bind(enquiry_id)
            .fetch_optional(conn)
            .await?;
    Ok(row.and_then(|(by, at)| at.map(|at| Holder { by, at })))
}

/// Unclaimed enquiries (with a deadline, not yet anonymised) by region (None: triage) and
/// topic, for the gauge.
pub async fn open_counts(pool: &sqlx::PgPool) -> sqlx::Result<Vec<(Option<String>, String, i64)>> {
    sqlx::query_as(
        "SELECT region, topic, count(*) FROM enquiries
         WHERE claimed_at IS NULL AND claim_deadline_at IS NOT NULL AND anonymised_at IS NULL
         GROUP BY region, topic",
    )
    .fetch_all(pool)
    .await
}

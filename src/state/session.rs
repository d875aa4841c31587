//! Sessions as stored, and as emails show them.

use crate::config::{Offset, Regions};
use crate::domain::RegionId;
use crate::uk_time;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

/// A session as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SessionRow {
    pub session_id: String,
    pub title: String,
    pub audience: String,
    pub region: Option<String>,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub registration_url: String,
    pub joining_url: Option<String>,
    pub description: Option<String>,
    pub status: String,
    pub cancel_reason: Option<String>,
    pub sequence: i32,
    pub last_event_at: DateTime<Utc>,
}

impl SessionRow {
    pub fn region_id(&self) -> Option<RegionId> {
        self.region.as_deref().and_then(|r| r.parse().ok())
    }

    pub fn is_cancelled(&self) -> bool {
        self.status == "cancelled"
    }
}

pub const SESSION_COLUMNS: &str =
    "session_id, title, audience, region, starts_at, ends_at, registration_url, \
     joining_url, description, status, cancel_reason, sequence, last_event_at";

pub async fn load_session(
    conn: &mut PgConnection,
    session_id: &str,
    lock: bool,
) -> sqlx::Result<Option<SessionRow>> {
    let lock = if lock { " FOR UPDATE" } else { "" };
    sqlx::query_as(&format!(
        "SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = $1{lock}"
    ))
    .bind(session_id)
    .fetch_optional(conn)
    .await
}

/// A session as emails show it (and as a digest's job keeps it: see `outbox::job`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionView {
    session_id: String,
    title: String,
    audience: String,
    /// "National" or the region's name.
    scope: String,
    national: bool,
    /// "Wednesday 2 October 2024, 3:30pm to 4:30pm"
    when: String,
    date: String,
    registration_url: String,
    joining_url: Option<String>,
    description: Option<String>,
    cancel_reason: Option<String>,
}

impl SessionView {
    pub fn new(regions: &Regions, s: &SessionRow) -> SessionView {
        SessionView {
            session_id: s.session_id.clone(),
            title: s.title.clone(),
            audience: s.audience.clone(),
            scope: regions.for_session(s.region_id()).name.clone(),
            national: s.region.is_none(),
            when: uk_time::range(s.starts_at, s.ends_at),
            date: uk_time::date(s.starts_at),
            registration_url: s.registration_url.clone(),
            joining_url: s.joining_url.clone(),
            description: s.description.clone(),
            cancel_reason: s.cancel_reason.clone(),
        }
    }
}

/// "in 7 days", "tomorrow", "in 1 hour", "in 30 minutes".
pub fn offset_phrase(label: &str) -> String {
    match label.parse::<Offset>() {
        Ok(Offset::Days(1)) => "tomorrow".into(),
        Ok(Offset::Days(n)) => format!("in {n} days"),
        Ok(Offset::Exact(d)) if d.num_minutes() % 60 == 0 => match d.num_hours() {
            1 => "in 1 hour".into(),
            h => format!("in {h} hours"),
        },
        Ok(Offset::Exact(d)) => format!("in {} minutes", d.num_minutes()),
        Err(_) => "soon".into(),
    }
}

//! `rpec-notify enquiries open`: the enquiries nobody has claimed yet, with their reference,
//! topic, region, age in working hours and deadline. Never a name, an address or the text.

use super::{table, AdminError, Report};
use crate::config::Regions;
use crate::domain::RegionId;
use crate::uk_time;
use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::PgPool;

#[derive(sqlx::FromRow)]
struct Open {
    enquiry_id: String,
    topic: String,
    region: Option<String>,
    received_at: DateTime<Utc>,
    claim_deadline_at: DateTime<Utc>,
    escalation_level: i16,
}

/// Unclaimed enquiries (those with a deadline, not yet anonymised), oldest deadline first; only
/// `region`'s when given ("triage" is not a region: `--region` takes region ids).
pub async fn open(
    pool: &PgPool,
    regions: &Regions,
    region: Option<RegionId>,
    now: DateTime<Utc>,
) -> Result<Report, AdminError> {
    let rows: Vec<Open> = sqlx::query_as(
        "SELECT enquiry_id, topic, region, received_at, claim_deadline_at, escalation_level
         FROM enquiries
         WHERE claimed_at IS NULL AND claim_deadline_at IS NOT NULL AND anonymised_at IS NULL
           AND ($1::text IS NULL OR region = $1)
         ORDER BY claim_deadline_at, enquiry_id",
    )
    .bind(region.map(RegionId::as_str))
    .fetch_all(pool)
    .await?;
    let wt = &regions.working_time;
    let hours = |r: &Open| wt.between(r.received_at, now).num_minutes() as f64 / 60.0;
    let text_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.enquiry_id.clone(),
                r.topic.clone(),
                r.region.clone().unwrap_or_else(|| "triage".into()),
                format!("{:.1}", hours(r)),
                uk_time::date_time(r.claim_deadline_at),
                match r.escalation_level {
                    0 if r.claim_deadline_at <= now => "overdue".into(),
                    0 => "".into(),
                    1 => "escalated".into(),
                    _ => "second notice".into(),
                },
            ]
        })
        .collect();
    let mut text = table(
        &[
            "enquiry",
            "topic",
            "region",
            "working hours",
            "deadline (UK time)",
            "escalation",
        ],
        &text_rows,
    );
    text.push_str(&format!("{} unclaimed\n", rows.len()));
    let json = json!({
        "unclaimed": rows.iter().map(|r| json!({
            "enquiry_id": r.enquiry_id,
            "topic": r.topic,
            "region": r.region.clone().unwrap_or_else(|| "triage".into()),
            "age_working_hours": (hours(r) * 10.0).round() / 10.0,
            "received_at": r.received_at.to_rfc3339(),
            "deadline": r.claim_deadline_at.to_rfc3339(),
            "deadline_uk": uk_time::date_time(r.claim_deadline_at),
            "overdue": r.claim_deadline_at <= now,
            "escalation_level": r.escalation_level,
        })).collect::<Vec<_>>(),
        "count": rows.len(),
    });
    Ok(Report {
        text,
        json,
        problems: false,
    })
}

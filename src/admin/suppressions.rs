//! `rpec-notify suppressions list|remove`: the addresses bulk mail (newsletters, digests) must
//! not go to, and lifting a suppression once its cause is put right (a mailbox that exists
//! again, a complaint withdrawn).
//!
//! The one operator tool that prints addresses: looking up who is suppressed is what it is
//! for, and an address is the only thing a suppression has. Its output is for the operator's
//! terminal; nothing here is logged (no `tracing`), so the addresses reach no log store.

use super::{table, AdminError, Report};
use crate::uk_time;
use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::PgPool;

/// What `suppressions list` selects.
#[derive(Debug, Clone)]
pub struct ListFilter {
    /// Only this address (any case: the table holds them lower-cased).
    pub address: Option<String>,
    pub limit: i64,
}

/// `suppressions list`: the newest first, with the total so that a cut list says so.
pub async fn list(pool: &PgPool, filter: &ListFilter) -> Result<Report, AdminError> {
    let rows: Vec<(String, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT email, reason, suppressed_at FROM suppressions
         WHERE $1::text IS NULL OR email = lower($1)
         ORDER BY suppressed_at DESC, email LIMIT $2",
    )
    .bind(&filter.address)
    .bind(filter.limit.max(0))
    .fetch_all(pool)
    .await?;
    let total: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM suppressions WHERE $1::text IS NULL OR email = lower($1)",
    )
    .bind(&filter.address)
    .fetch_one(pool)
    .await?;

    let text_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|(email, reason, at)| vec![email.clone(), reason.clone(), uk_time::date_time(*at)])
        .collect();
    let mut text = if text_rows.is_empty() {
        String::new()
    } else {
        table(&["address", "reason", "since (UK time)"], &text_rows)
    };
    text.push_str(&format!(
        "{} of {total} suppressed address(es)\n",
        rows.len()
    ));
    Ok(Report {
        text,
        json: json!({
            "total": total,
            "suppressions": rows.iter().map(|(email, reason, at)| json!({
                "address": email,
                "reason": reason,
                "suppressed_at": at.to_rfc3339(),
                "since_uk": uk_time::date_time(*at),
            })).collect::<Vec<_>>(),
        }),
        problems: false,
    })
}

/// `suppressions remove`: each address (any case) is suppressed no longer, so bulk mail may go
/// to it again. An address that was not suppressed is reported (exit 1); the others are still
/// removed, as `rm a b` still removes `a`.
pub async fn remove(pool: &PgPool, addresses: &[String]) -> Result<Report, AdminError> {
    // Lower-cased by PostgreSQL, as the table's CHECK and `outbox::suppress` do, so that an
    // address outside ASCII is matched the way it was stored.
    let outcome: Vec<(String, bool)> = sqlx::query_as(
        "WITH asked AS (SELECT DISTINCT lower(a) AS email FROM unnest($1::text[]) AS a),
              gone AS (DELETE FROM suppressions s USING asked WHERE s.email = asked.email
                       RETURNING s.email)
         SELECT asked.email, gone.email IS NOT NULL FROM asked LEFT JOIN gone USING (email)
         ORDER BY asked.email",
    )
    .bind(addresses)
    .fetch_all(pool)
    .await?;
    let removed: Vec<&str> = outcome
        .iter()
        .filter(|o| o.1)
        .map(|o| o.0.as_str())
        .collect();
    let not_suppressed: Vec<&str> = outcome
        .iter()
        .filter(|o| !o.1)
        .map(|o| o.0.as_str())
        .collect();
    let mut text = format!(
        "{} suppression(s) removed: bulk mail may go to them again\n",
        removed.len()
    );
    for a in &removed {
        text.push_str(&format!("{a}: removed\n"));
    }
    for a in &not_suppressed {
        text.push_str(&format!("{a}: not suppressed\n"));
    }
    Ok(Report {
        text,
        json: json!({
            "removed": removed,
            "count": removed.len(),
            "not_suppressed": not_suppressed,
        }),
        problems: !not_suppressed.is_empty(),
    })
}

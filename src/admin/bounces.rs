//! `rpec-notify bounces unparsed [ID]`: the mail at the bounce address that could not be
//! understood (`unparsed_bounces`), kept for an operator to read until
//! `retention.unparsed_bounce_days`.
//!
//! The list holds ids, times, sizes and the email a message named (when its return path did);
//! `bounces unparsed ID` prints one message whole, which can quote anyone: like `suppressions
//! list`, it is for the operator's terminal, and nothing here is logged.

use super::{table, AdminError, Report};
use crate::uk_time;
use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::PgPool;

/// The newest first, at most `limit`, with the total.
pub async fn list(pool: &PgPool, limit: i64) -> Result<Report, AdminError> {
    let rows: Vec<(i64, Option<i64>, i32, DateTime<Utc>)> = sqlx::query_as(
        "SELECT id, outbox_id, octet_length(content), received_at FROM unparsed_bounces
         ORDER BY received_at DESC, id DESC LIMIT $1",
    )
    .bind(limit.max(0))
    .fetch_all(pool)
    .await?;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM unparsed_bounces")
        .fetch_one(pool)
        .await?;
    let text_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|(id, outbox_id, bytes, at)| {
            vec![
                id.to_string(),
                uk_time::date_time(*at),
                outbox_id.map_or_else(|| "-".to_owned(), |o| o.to_string()),
                bytes.to_string(),
            ]
        })
        .collect();
    let mut text = if text_rows.is_empty() {
        String::new()
    } else {
        table(&["id", "received (UK time)", "email", "bytes"], &text_rows)
    };
    text.push_str(&format!(
        "{} of {total} message(s) not understood; `bounces unparsed ID` shows one\n",
        rows.len()
    ));
    Ok(Report {
        text,
        json: json!({
            "total": total,
            "unparsed": rows.iter().map(|(id, outbox_id, bytes, at)| json!({
                "id": id, "outbox_id": outbox_id, "bytes": bytes, "received_at": at,
            })).collect::<Vec<_>>(),
        }),
        problems: false,
    })
}

/// One message whole (exit 1 when there is no such id).
pub async fn show(pool: &PgPool, id: i64) -> Result<Report, AdminError> {
    let row: Option<(Option<i64>, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT outbox_id, content, received_at FROM unparsed_bounces WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(match row {
        None => Report {
            text: format!("{id}: no such unparsed bounce (retention may have removed it)\n"),
            json: json!({"id": id, "found": false}),
            problems: true,
        },
        Some((outbox_id, content, at)) => Report {
            text: format!(
                "unparsed bounce {id}, received {}{}\n\n{content}\n",
                uk_time::date_time(at),
                outbox_id.map_or_else(String::new, |o| format!(", about email {o}"))
            ),
            json: json!({
                "id": id, "found": true, "outbox_id": outbox_id, "received_at": at,
                "content": content,
            }),
            problems: false,
        },
    })
}

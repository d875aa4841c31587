//! `rpec-notify outbox status|list|retry`: what the outbox holds, which emails failed and why
//! (as a code, never the relay's words), and putting failed emails back to be sent.

use super::{human_age, table, AdminError, Report};
use crate::outbox::NOTIFY_CHANNEL;
use serde_json::{json, Value};
use sqlx::PgPool;

/// The statuses an outbox row can have (the table's CHECK constraint).
pub const STATUSES: [&str; 5] = ["pending", "sending", "sent", "failed", "cancelled"];

/// Why an email was not sent, reduced to something safe to print. The relay's reply is kept
/// whole in `last_error` for the database's eyes only, because it can quote the address
/// (`550 5.1.1 <sam@example.org>: no such user`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorSummary {
    /// A stable code: `smtp_permanent`, `smtp_transient`, `not_sendable`, `prepare_failed`,
    /// `relay_timeout`, `relay_unreachable`, `relay_tls`, `no_longer_wanted` or `other`.
    pub class: &'static str,
    /// The relay's reply code, when it gave one.
    pub smtp_code: Option<u16>,
}

impl ErrorSummary {
    /// `smtp 550 permanent`, `relay_timeout`, ...
    pub fn text(&self) -> String {
        match (self.class, self.smtp_code) {
            ("smtp_permanent", Some(c)) => format!("smtp {c} permanent"),
            ("smtp_transient", Some(c)) => format!("smtp {c} transient"),
            (class, _) => class.to_owned(),
        }
    }
}

/// The three digits after `marker` (lettre writes `permanent error (550): ...`).
fn code_after(text: &str, marker: &str) -> Option<u16> {
    let rest = &text[text.find(marker)? + marker.len()..];
    let digits: String = rest.chars().take(3).collect();
    (digits.len() == 3 && digits.chars().all(|c| c.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// Classifies a row's `last_error` by the shapes the sender writes (see `send` and
/// `mail::relay`); anything else is `other`, never the text itself.
pub fn summarise_error(status: &str, last_error: Option<&str>) -> Option<ErrorSummary> {
    if status == "cancelled" {
        // The reason names ids only, but a code is all an operator needs here.
        return Some(ErrorSummary {
            class: "no_longer_wanted",
            smtp_code: None,
        });
    }
    let e = last_error?;
    let (class, smtp_code) = if let Some(c) = code_after(e, "permanent error (") {
        ("smtp_permanent", Some(c))
    } else if let Some(c) = code_after(e, "transient error (") {
        ("smtp_transient", Some(c))
    } else if e.starts_with("not sendable") {
        ("not_sendable", None)
    } else if e.starts_with("could not prepare") {
        ("prepare_failed", None)
    } else if e.starts_with("no answer from the relay") {
        ("relay_timeout", None)
    } else if e.contains("tls error") {
        ("relay_tls", None)
    } else if e.contains("Connection error") || e.contains("network error") {
        ("relay_unreachable", None)
    } else {
        ("other", None)
    };
    Some(ErrorSummary { class, smtp_code })
}

/// `outbox status`: counts by status and kind, and how long the oldest unsent email has waited.
pub async fn status(pool: &PgPool) -> Result<Report, AdminError> {
    let counts: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT status, kind, count(*) FROM outbox GROUP BY status, kind ORDER BY status, kind",
    )
    .fetch_all(pool)
    .await?;
    // Waiting: not yet sent, whether due now, waiting out a back-off or being sent.
    let oldest: Option<f64> = sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM now() - min(created_at))::float8 FROM outbox
         WHERE status IN ('pending', 'sending')",
    )
    .fetch_one(pool)
    .await?;
    let oldest = oldest.map(|s| s.floor() as i64);

    let totals: serde_json::Map<String, Value> = STATUSES
        .iter()
        .map(|s| {
            let n: i64 = counts.iter().filter(|c| c.0 == *s).map(|c| c.2).sum();
            ((*s).to_owned(), json!(n))
        })
        .collect();
    let rows: Vec<Vec<String>> = counts
        .iter()
        .map(|(s, k, n)| vec![s.clone(), k.clone(), n.to_string()])
        .collect();
    let mut text = if rows.is_empty() {
        "the outbox is empty\n".to_owned()
    } else {
        table(&["status", "kind", "count"], &rows)
    };
    text.push_str(&format!(
        "totals: {}\n",
        STATUSES
            .iter()
            .map(|s| format!("{s} {}", totals[*s]))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    text.push_str(&match oldest {
        Some(s) => format!("oldest email waiting: {}\n", human_age(s)),
        None => "oldest email waiting: none\n".to_owned(),
    });
    Ok(Report {
        text,
        json: json!({
            "counts": counts.iter().map(|(s, k, n)| json!({"status": s, "kind": k, "count": n})).collect::<Vec<_>>(),
            "totals": totals,
            "oldest_waiting_seconds": oldest,
        }),
        problems: false,
    })
}

/// What `outbox list` selects.
#[derive(Debug, Clone)]
pub struct ListFilter {
    /// One of [`STATUSES`].
    pub status: String,
    pub kind: Option<String>,
    pub limit: i64,
}

/// `outbox list`: the oldest matching rows first, with the total so a cut list says so.
pub async fn list(pool: &PgPool, filter: &ListFilter) -> Result<Report, AdminError> {
    if !STATUSES.contains(&filter.status.as_str()) {
        return Err(AdminError::Config(format!(
            "--status {:?}: not a status ({})",
            filter.status,
            STATUSES.join(", ")
        )));
    }
    let rows: Vec<(i64, String, String, i32, f64, Option<String>)> = sqlx::query_as(
        "SELECT id, kind, status, attempts,
                EXTRACT(EPOCH FROM now() - created_at)::float8, last_error
         FROM outbox WHERE status = $1 AND ($2::text IS NULL OR kind = $2)
         ORDER BY created_at, id LIMIT $3",
    )
    .bind(&filter.status)
    .bind(&filter.kind)
    .bind(filter.limit.max(0))
    .fetch_all(pool)
    .await?;
    let total: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE status = $1 AND ($2::text IS NULL OR kind = $2)",
    )
    .bind(&filter.status)
    .bind(&filter.kind)
    .fetch_one(pool)
    .await?;

    let mut json_rows = Vec::new();
    let mut text_rows = Vec::new();
    for (id, kind, status, attempts, age, last_error) in &rows {
        let age = age.floor() as i64;
        let error = summarise_error(status, last_error.as_deref());
        json_rows.push(json!({
            "id": id,
            "kind": kind,
            "status": status,
            "attempts": attempts,
            "age_seconds": age,
            "error": error.as_ref().map(|e| e.class),
            "smtp_code": error.as_ref().and_then(|e| e.smtp_code),
        }));
        text_rows.push(vec![
            id.to_string(),
            kind.clone(),
            status.clone(),
            attempts.to_string(),
            human_age(age),
            error.map_or_else(|| "-".to_owned(), |e| e.text()),
        ]);
    }
    let mut text = if text_rows.is_empty() {
        String::new()
    } else {
        table(
            &["id", "kind", "status", "attempts", "age", "error"],
            &text_rows,
        )
    };
    text.push_str(&format!(
        "{} of {total} {} email(s){}\n",
        rows.len(),
        filter.status,
        filter
            .kind
            .as_ref()
            .map_or_else(String::new, |k| format!(" of kind {k}"))
    ));
    Ok(Report {
        text,
        json: json!({"total": total, "emails": json_rows}),
        problems: false,
    })
}

/// Which failed rows `outbox retry` puts back.
#[derive(Debug, Clone)]
pub enum RetrySelection {
    Ids(Vec<i64>),
    AllFailed,
}

/// `outbox retry`: failed rows go back to pending with a fresh attempt count, due now and
/// unclaimed, and the senders are woken. Ids that are not failed rows are reported (exit 1);
/// the others are still put back, as `rm a b` still removes `a`.
pub async fn retry(pool: &PgPool, selection: &RetrySelection) -> Result<Report, AdminError> {
    let mut tx = pool.begin().await?;
    // Only failed rows: a pending or sending row belongs to the sender, a sent one is done.
    let requeued: Vec<i64> = match selection {
        RetrySelection::Ids(ids) => {
            sqlx::query_scalar(
                "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = now(),
                        claimed_until = NULL
                 WHERE status = 'failed' AND id = ANY($1) RETURNING id",
            )
            .bind(ids)
            .fetch_all(&mut *tx)
            .await?
        }
        RetrySelection::AllFailed => {
            sqlx::query_scalar(
                "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = now(),
                        claimed_until = NULL
                 WHERE status = 'failed' RETURNING id",
            )
            .fetch_all(&mut *tx)
            .await?
        }
    };
    if !requeued.is_empty() {
        // Delivered on commit: the senders need not wait for their next poll.
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(NOTIFY_CHANNEL)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;

    let mut requeued_sorted = requeued.clone();
    requeued_sorted.sort_unstable();
    let not_failed: Vec<i64> = match selection {
        RetrySelection::Ids(ids) => {
            let mut v: Vec<i64> = ids
                .iter()
                .copied()
                .filter(|id| requeued_sorted.binary_search(id).is_err())
                .collect();
            v.sort_unstable();
            v.dedup();
            v
        }
        RetrySelection::AllFailed => Vec::new(),
    };
    let mut text = format!("{} failed email(s) put back to be sent\n", requeued.len());
    for id in &not_failed {
        text.push_str(&format!("{id}: not a failed email: left as it is\n"));
    }
    Ok(Report {
        text,
        json: json!({"retried": requeued_sorted, "not_failed": not_failed}),
        problems: !not_failed.is_empty(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_recipient_is_shown_as_its_code_without_the_address() {
        let e = summarise_error(
            "failed",
            Some("permanent error (550): 5.1.1 <bounce@school.example.org>: no such user"),
        )
        .unwrap();
        assert_eq!(e.class, "smtp_permanent");
        assert_eq!(e.smtp_code, Some(550));
        assert_eq!(e.text(), "smtp 550 permanent");
    }

    #[test]
    fn every_shape_the_sender_writes_has_a_class() {
        let class = |s: &str| summarise_error("failed", Some(s)).unwrap().class;
        assert_eq!(class("transient error (451): try later"), "smtp_transient");
        assert_eq!(class("not sendable: bad template"), "not_sendable");
        assert_eq!(
            class("could not prepare the email: db gone"),
            "prepare_failed"
        );
        assert_eq!(
            class("no answer from the relay within 30s"),
            "relay_timeout"
        );
        assert_eq!(class("Connection error: refused"), "relay_unreachable");
        assert_eq!(class("network error: reset"), "relay_unreachable");
        assert_eq!(class("tls error: bad certificate"), "relay_tls");
        assert_eq!(class("sam@example.org said no"), "other");
        assert_eq!(class("permanent error (5x): odd"), "other");
        assert_eq!(summarise_error("sent", None), None);
        assert_eq!(
            summarise_error("cancelled", Some("session s-1 was cancelled"))
                .unwrap()
                .class,
            "no_longer_wanted"
        );
    }
}

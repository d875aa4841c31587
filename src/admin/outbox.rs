//! `rpec-notify outbox status|list|show|retry`: what the outbox holds, which emails failed and
//! why (as a code, never the relay's words), one email in detail, and putting failed emails back
//! to be sent.

use super::{human_age, table, AdminError, Report};
use crate::outbox::NOTIFY_CHANNEL;
use crate::tokens::{self, ReturnPaths};
use crate::uk_time;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::PgPool;

/// The statuses an outbox row can have (the table's CHECK constraint).
pub const STATUSES: [&str; 5] = ["pending", "sending", "sent", "failed", "cancelled"];

/// Why an email was not sent, reduced to something safe to print. The relay's reply is kept
/// whole in `last_error` for the database's eyes only, because it can quote the address
/// (`550 5.1.1 <sam@example.org>: no such user`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorSummary {
    /// A stable code: `smtp_permanent`, `smtp_transient`, `bounced`, `not_sendable`,
    /// `prepare_failed`, `relay_timeout`, `relay_unreachable`, `relay_tls`, `no_longer_wanted`
    /// or `other`.
    pub class: &'static str,
    /// The relay's reply code, when it gave one.
    pub smtp_code: Option<u16>,
    /// For `bounced`: the enhanced status code the bounce gave (`5.1.1`), when it gave one
    /// that is only digits and dots (so never a fragment of the diagnostic text).
    pub enhanced_status: Option<String>,
}

impl ErrorSummary {
    /// `smtp 550 permanent`, `bounced 5.1.1`, `relay_timeout`, ...
    pub fn text(&self) -> String {
        match (self.class, self.smtp_code, &self.enhanced_status) {
            ("smtp_permanent", Some(c), _) => format!("smtp {c} permanent"),
            ("smtp_transient", Some(c), _) => format!("smtp {c} transient"),
            ("bounced", _, Some(s)) => format!("bounced {s}"),
            (class, _, _) => class.to_owned(),
        }
    }
}

// What the bounce handler writes at the start of `last_error` when a hard bounce fails a row
// the relay had taken: `bounced after the relay took it (5.1.1): <the remote server's
// diagnostic>`.
use crate::bounce::BOUNCED;

/// An enhanced status code (RFC 3463): class 2, 4 or 5, then subject and detail of one to three
/// digits each. Anything else is not printed, since it could be the diagnostic's words.
fn enhanced_status(text: &str) -> Option<String> {
    let mut parts = text.split('.');
    let class = parts.next()?;
    let ok = matches!(class, "2" | "4" | "5")
        && parts.clone().count() == 2
        && parts.all(|p| (1..=3).contains(&p.len()) && p.chars().all(|c| c.is_ascii_digit()));
    ok.then(|| text.to_owned())
}

/// The status code of a bounce's `last_error`: what is between the parentheses right after
/// [`BOUNCED`], if it is an enhanced status code.
fn bounce_status(text: &str) -> Option<String> {
    let rest = text.strip_prefix(BOUNCED)?.trim_start().strip_prefix('(')?;
    enhanced_status(&rest[..rest.find(')')?])
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
            enhanced_status: None,
        });
    }
    let e = last_error?;
    // First: a bounce's diagnostic, quoted after the prefix, could hold any of the shapes below.
    if e.starts_with(BOUNCED) {
        return Some(ErrorSummary {
            class: "bounced",
            smtp_code: None,
            enhanced_status: bounce_status(e),
        });
    }
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
    Some(ErrorSummary {
        class,
        smtp_code,
        enhanced_status: None,
    })
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
         WHERE waiting",
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
            "enhanced_status": error.as_ref().and_then(|e| e.enhanced_status.clone()),
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

#[derive(sqlx::FromRow)]
struct Shown {
    id: i64,
    kind: String,
    stream: String,
    status: String,
    attempts: i32,
    deferrals: i32,
    created_at: DateTime<Utc>,
    sent_at: Option<DateTime<Utc>>,
    last_error: Option<String>,
    recipients: i32,
}

/// A time in both forms an operator needs: UTC to compare with logs, UK time to talk about.
fn both_times(t: DateTime<Utc>) -> String {
    format!(
        "{} ({} UK time)",
        t.format("%Y-%m-%d %H:%M:%S UTC"),
        uk_time::date_time(t)
    )
}

fn time_json(t: Option<DateTime<Utc>>) -> Value {
    t.map_or(
        Value::Null,
        |t| json!({"utc": t.to_rfc3339(), "uk": uk_time::date_time(t)}),
    )
}

/// `outbox show ID`: one email in detail. Its recipients are counted, never shown; its bounces
/// are shown by kind, status code and time only, since their recipient and the remote server's
/// diagnostic can both quote the address. The return path (when `mail.bounce_address` is set)
/// is a signed token naming the row, no personal data. An id that is no email: exit 1.
pub async fn show(
    pool: &PgPool,
    id: i64,
    return_paths: Option<&ReturnPaths>,
) -> Result<Report, AdminError> {
    let row: Option<Shown> = sqlx::query_as(
        "SELECT id, kind, stream, status, attempts, deferrals, created_at, sent_at, last_error,
                coalesce(cardinality(recipients), 0) AS recipients
         FROM outbox WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else {
        return Ok(Report {
            text: format!("{id}: no such email in the outbox\n"),
            json: json!({"id": id, "found": false}),
            problems: true,
        });
    };
    // The triage mailbox's copy of a coordinators' email that failed for good (at most one:
    // outbox_undeliverable_once).
    let triage: Option<(i64, String)> =
        sqlx::query_as("SELECT id, status FROM outbox WHERE undeliverable_of = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?;
    let bounces: Vec<(String, Option<String>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT kind, status, received_at FROM bounces WHERE outbox_id = $1
         ORDER BY received_at, id",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    // As `send::send_one` names it: one recipient by its index, several all at once.
    let return_path = return_paths.map(|paths| {
        let recipient = match row.recipients {
            1 => 0,
            _ => tokens::EVERY_RECIPIENT,
        };
        paths.address(row.id, recipient)
    });
    let error = summarise_error(&row.status, row.last_error.as_deref());
    // Only a code from the bounce's row: its `status` column is the remote server's words too.
    let bounce_status = |s: &Option<String>| s.as_deref().and_then(enhanced_status);

    let dash = || "-".to_owned();
    let fields: Vec<(&str, String)> = vec![
        ("id", row.id.to_string()),
        ("kind", row.kind.clone()),
        ("stream", row.stream.clone()),
        ("status", row.status.clone()),
        ("attempts", row.attempts.to_string()),
        ("deferrals", row.deferrals.to_string()),
        ("created", both_times(row.created_at)),
        ("sent", row.sent_at.map_or_else(dash, both_times)),
        (
            "error",
            error.as_ref().map_or_else(dash, ErrorSummary::text),
        ),
        ("recipients", row.recipients.to_string()),
        (
            "return path",
            return_path
                .clone()
                .unwrap_or_else(|| "- (mail.bounce_address is not set)".into()),
        ),
        (
            "triage copy",
            triage
                .as_ref()
                .map_or_else(|| "none".into(), |(t, s)| format!("{t} ({s})")),
        ),
    ];
    let width = fields.iter().map(|f| f.0.len()).max().unwrap_or(0);
    let mut text: String = fields
        .iter()
        .map(|(k, v)| format!("{k:width$}  {v}\n"))
        .collect();
    if bounces.is_empty() {
        text.push_str("no bounces\n");
    } else {
        text.push_str(&format!("{} bounce(s):\n", bounces.len()));
        let rows: Vec<Vec<String>> = bounces
            .iter()
            .map(|(kind, status, at)| {
                vec![
                    kind.clone(),
                    bounce_status(status).unwrap_or_else(dash),
                    both_times(*at),
                ]
            })
            .collect();
        for line in table(&["kind", "status", "received"], &rows).lines() {
            text.push_str(&format!("  {line}\n"));
        }
    }
    Ok(Report {
        text,
        json: json!({
            "found": true,
            "id": row.id,
            "kind": row.kind,
            "stream": row.stream,
            "status": row.status,
            "attempts": row.attempts,
            "deferrals": row.deferrals,
            "created_at": time_json(Some(row.created_at)),
            "sent_at": time_json(row.sent_at),
            "error": error.as_ref().map(|e| e.class),
            "error_text": error.as_ref().map(ErrorSummary::text),
            "smtp_code": error.as_ref().and_then(|e| e.smtp_code),
            "enhanced_status": error.as_ref().and_then(|e| e.enhanced_status.clone()),
            "recipients": row.recipients,
            "return_path": return_path,
            "triage_copy": triage.map(|(t, s)| json!({"id": t, "status": s})),
            "bounces": bounces.iter().map(|(kind, status, at)| json!({
                "kind": kind,
                "status": bounce_status(status),
                "received_at": time_json(Some(*at)),
            })).collect::<Vec<_>>(),
        }),
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

    #[test]
    fn a_bounce_is_shown_as_its_enhanced_status_code_without_the_diagnostic() {
        let e = summarise_error(
            "failed",
            Some(
                "bounced after the relay took it (5.1.1): 550 permanent error (550): \
                 <sam@school.example.org>: no such user",
            ),
        )
        .unwrap();
        assert_eq!(e.class, "bounced");
        assert_eq!(e.enhanced_status.as_deref(), Some("5.1.1"));
        assert_eq!(
            e.smtp_code, None,
            "the diagnostic's own shapes are not read"
        );
        assert_eq!(e.text(), "bounced 5.1.1");
    }

    #[test]
    fn a_bounce_without_a_plain_status_code_is_only_bounced() {
        let text = |s: &str| summarise_error("failed", Some(s)).unwrap().text();
        assert_eq!(
            text("bounced after the relay took it: no status"),
            "bounced"
        );
        assert_eq!(
            text("bounced after the relay took it (sam@example.org): x"),
            "bounced"
        );
        assert_eq!(text("bounced after the relay took it (5.1): x"), "bounced");
        assert_eq!(
            text("bounced after the relay took it (5.1.1234): x"),
            "bounced"
        );
        assert_eq!(
            text("bounced after the relay took it (3.1.1): x"),
            "bounced"
        );
        assert_eq!(text("bounced after the relay took it (5.1.1"), "bounced");
        assert_eq!(
            text("bounced after the relay took it (4.2.2): x"),
            "bounced 4.2.2"
        );
        assert_eq!(enhanced_status("5.7.26").as_deref(), Some("5.7.26"));
        assert_eq!(enhanced_status("5.1.1 user"), None);
    }
}

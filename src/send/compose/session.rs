//! Session emails (confirmations with calendar files, reminders, "session moved", new joining
//! links, cancellations, coordinator briefings), completed from the session's current state: a
//! registrant never gets stale details, and nothing about a cancelled session or registration
//! goes out.

use crate::calendar::{self, CalendarSession, Method};
use crate::context::Shared;
use crate::outbox::Claimed;
use crate::send::prepare::Prepared;
use crate::state::session::{load_session, offset_phrase, SessionView};
use serde_json::{json, Value};

#[derive(sqlx::FromRow)]
struct RegistrantRow {
    name: Option<String>,
    email: Option<String>,
    status: String,
}

fn context_str<'a>(row: &'a Claimed, key: &str) -> anyhow::Result<&'a str> {
    row.context
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow::anyhow!("outbox row {}: context has no {key}", row.id))
}

/// Completes the session emails; None for other kinds.
pub async fn prepare(shared: &Shared, row: &Claimed) -> anyhow::Result<Option<Prepared>> {
    const KINDS: [&str; 6] = [
        "registration_confirmation",
        "session_reminder",
        "session_moved",
        "joining_link_changed",
        "session_cancelled",
        "coordinator_briefing",
    ];
    if !KINDS.contains(&row.kind.as_str()) {
        return Ok(None);
    }
    let skip = |why: &str| Ok(Some(Prepared::Skip(why.to_owned())));
    let mut conn = shared.pool.acquire().await?;
    let session_id = context_str(row, "session_id")?;
    let Some(session) = load_session(&mut conn, session_id, false).await? else {
        return skip("the session is gone");
    };
    let now = shared.clock.now();
    let view = SessionView::new(&shared.regions, &session);

    if row.kind == "coordinator_briefing" {
        if session.is_cancelled() {
            return skip("the session was cancelled");
        }
        if session.starts_at <= now {
            return skip("the session has started");
        }
        let registrants: Vec<(Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT name, email FROM registrations
             WHERE session_id = $1 AND status = 'registered' AND email IS NOT NULL ORDER BY lower(name), registration_id",
        )
        .bind(session_id)
        .fetch_all(&mut *conn)
        .await?;
        let list: Vec<Value> = registrants
            .iter()
            .map(|(n, e)| json!({ "name": n, "email": e }))
            .collect();
        return Ok(Some(Prepared::Send {
            context: json!({ "session": view, "count": list.len(), "registrants": list }),
            attachments: Vec::new(),
        }));
    }

    let registration_id = context_str(row, "registration_id")?;
    let registrant: Option<RegistrantRow> =
        sqlx::query_as("SELECT name, email, status FROM registrations WHERE registration_id = $1")
            .bind(registration_id)
            .fetch_optional(&mut *conn)
            .await?;
    let Some(RegistrantRow {
        name: Some(name),
        email: Some(email),
        status,
    }) = registrant
    else {
        return skip("the registration is gone");
    };
    if status != "registered" {
        return skip("the registration was cancelled");
    }
    let cancelled_kind = row.kind == "session_cancelled";
    if session.is_cancelled() != cancelled_kind {
        return skip(if cancelled_kind {
            "the session is not cancelled"
        } else {
            "the session was cancelled"
        });
    }
    let mut context = json!({ "name": name, "session": view });
    match row.kind.as_str() {
        "session_reminder" => {
            if session.starts_at <= now {
                return skip("the session has started");
            }
            if row.context.get("starts_at").and_then(Value::as_str)
                != Some(session.starts_at.to_rfc3339().as_str())
            {
                return skip("the session has moved since this reminder was due");
            }
            context["offset_phrase"] = json!(offset_phrase(context_str(row, "offset")?));
        }
        "session_moved" => context["previous_when"] = json!(context_str(row, "previous_when")?),
        _ => {}
    }
    let with_calendar = [
        "registration_confirmation",
        "session_moved",
        "joining_link_changed",
        "session_cancelled",
    ];
    let attachments = if with_calendar.contains(&row.kind.as_str()) {
        let description = format!(
            "{}\n\nFor: {}\nRegistration: {}",
            session.description.as_deref().unwrap_or(&session.title),
            session.audience,
            session.registration_url
        );
        let method = if cancelled_kind {
            Method::Cancel
        } else {
            Method::Request
        };
        let file = calendar::session_file(
            &CalendarSession {
                session_id: &session.session_id,
                title: &session.title,
                description: &description,
                starts_at: session.starts_at,
                ends_at: session.ends_at,
                joining_url: session.joining_url.as_deref(),
                sequence: session.sequence.max(0) as u32,
            },
            method,
            shared.settings.transactional_from.mailbox.email.as_ref(),
            &email,
            now,
        );
        vec![file]
    } else {
        Vec::new()
    };
    Ok(Some(Prepared::Send {
        context,
        attachments,
    }))
}

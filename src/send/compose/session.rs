//! Session emails (confirmations with calendar files, reminders, "session moved", new joining
//! links, cancellations, coordinator briefings), completed from the session's current state: a
//! registrant never gets stale details, and nothing about a cancelled session or registration
//! goes out.

use crate::calendar::{self, CalendarSession, Method};
use crate::outbox::job::{Briefing, Moved, Registrant, Reminder};
use crate::send::prepare::Prepared;
use crate::send::Mailer;
use crate::state::session::{
    load_session, offset_phrase, SessionRow, SessionView, SESSION_COLUMNS,
};
use serde_json::{json, Value};

/// A session as stored, with one registration as stored (all None if there is no such
/// registration), read in one statement.
#[derive(sqlx::FromRow)]
struct SessionAndRegistrant {
    #[sqlx(flatten)]
    session: SessionRow,
    registrant_name: Option<String>,
    registrant_email: Option<String>,
    registrant_status: Option<String>,
}

/// Session `session_id` and registration `registration_id`, as they are now.
async fn load_with_registrant(
    pool: &sqlx::PgPool,
    session_id: &str,
    registration_id: &str,
) -> sqlx::Result<Option<SessionAndRegistrant>> {
    // Made once: this runs for every registrant's email.
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let columns = SESSION_COLUMNS
            .split(", ")
            .map(|c| format!("s.{}", c.trim()))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "SELECT {columns}, r.name AS registrant_name, r.email AS registrant_email,
                    r.status AS registrant_status
             FROM sessions s LEFT JOIN registrations r ON r.registration_id = $2
             WHERE s.session_id = $1"
        )
    });
    sqlx::query_as(SQL.as_str())
        .bind(session_id)
        .bind(registration_id)
        .fetch_optional(pool)
        .await
}

/// An email to one registrant about their session, by kind.
#[derive(Debug, Clone, Copy)]
pub enum Email<'a> {
    Confirmation(&'a Registrant),
    Reminder(&'a Reminder),
    Moved(&'a Moved),
    JoiningLink(&'a Registrant),
    Cancelled(&'a Registrant),
}

impl Email<'_> {
    /// (registration id, session id)
    fn ids(&self) -> (&str, &str) {
        match self {
            Email::Confirmation(r) | Email::JoiningLink(r) | Email::Cancelled(r) => {
                (&r.registration_id, &r.session_id)
            }
            Email::Reminder(r) => (&r.registration_id, &r.session_id),
            Email::Moved(m) => (&m.registration_id, &m.session_id),
        }
    }

    /// Whether it carries the session's calendar file (a reminder does not: the entry is
    /// already in their calendar, and unchanged).
    fn with_calendar(&self) -> bool {
        match self {
            Email::Confirmation(_)
            | Email::Moved(_)
            | Email::JoiningLink(_)
            | Email::Cancelled(_) => true,
            Email::Reminder(_) => false,
        }
    }
}

fn skip(why: &str) -> anyhow::Result<Prepared> {
    Ok(Prepared::Skip(why.to_owned()))
}

/// Completes a coordinators' briefing: the session's registrants as they are now; skipped if
/// the session was cancelled or has started.
pub async fn briefing(mailer: &Mailer, briefing: &Briefing) -> anyhow::Result<Prepared> {
    let mut conn = mailer.pool.acquire().await?;
    let Some(session) = load_session(&mut conn, &briefing.session_id, false).await? else {
        return skip("the session is gone");
    };
    if session.is_cancelled() {
        return skip("the session was cancelled");
    }
    if session.starts_at <= mailer.clock.now() {
        return skip("the session has started");
    }
    let view = SessionView::new(&mailer.regions, &session);
    let registrants: Vec<(Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT name, email FROM registrations
         WHERE session_id = $1 AND status = 'registered' AND email IS NOT NULL ORDER BY lower(name), registration_id",
    )
    .bind(&briefing.session_id)
    .fetch_all(&mut *conn)
    .await?;
    let list: Vec<Value> = registrants
        .iter()
        .map(|(n, e)| json!({ "name": n, "email": e }))
        .collect();
    Ok(Prepared::Send {
        context: json!({ "session": view, "count": list.len(), "registrants": list }),
        attachments: Vec::new(),
    })
}

/// Completes an email to a registrant from the session and the registration as they are now;
/// skipped if either is gone or cancelled (a cancellation goes only for a cancelled session),
/// and a reminder also if the session has started or moved since it was planned.
pub async fn registrant(mailer: &Mailer, email: Email<'_>) -> anyhow::Result<Prepared> {
    let (registration_id, session_id) = email.ids();
    let Some(SessionAndRegistrant {
        session,
        registrant_name,
        registrant_email,
        registrant_status,
    }) = load_with_registrant(&mailer.pool, session_id, registration_id).await?
    else {
        return skip("the session is gone");
    };
    let now = mailer.clock.now();
    let view = SessionView::new(&mailer.regions, &session);
    let (Some(name), Some(address), Some(status)) =
        (registrant_name, registrant_email, registrant_status)
    else {
        return skip("the registration is gone");
    };
    if status != "registered" {
        return skip("the registration was cancelled");
    }
    let cancellation = matches!(email, Email::Cancelled(_));
    if session.is_cancelled() != cancellation {
        return skip(if cancellation {
            "the session is not cancelled"
        } else {
            "the session was cancelled"
        });
    }
    let mut context = json!({ "name": name, "session": view });
    match email {
        Email::Reminder(reminder) => {
            if session.starts_at <= now {
                return skip("the session has started");
            }
            if reminder.starts_at != session.starts_at {
                return skip("the session has moved since this reminder was due");
            }
            context["offset_phrase"] = json!(offset_phrase(&reminder.offset));
        }
        Email::Moved(moved) => context["previous_when"] = json!(moved.previous_when),
        Email::Confirmation(_) | Email::JoiningLink(_) | Email::Cancelled(_) => {}
    }
    let attachments = if email.with_calendar() {
        let description = format!(
            "{}\n\nFor: {}\nRegistration: {}",
            session.description.as_deref().unwrap_or(&session.title),
            session.audience,
            session.registration_url
        );
        let method = if cancellation {
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
            mailer.settings.transactional_from.mailbox.email.as_ref(),
            &address,
            now,
        );
        vec![file]
    } else {
        Vec::new()
    };
    Ok(Prepared::Send {
        context,
        attachments,
    })
}

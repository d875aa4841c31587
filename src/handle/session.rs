//! Training sessions and registrations: `session.scheduled`, `session.updated`,
//! `session.cancelled`, `registration.created`, `registration.cancelled`, and the emails they
//! cause (confirmations with calendar files, "session moved", new joining links, cancellations).
//!
//! Per-registrant emails are written to the outbox with ids only and completed just before
//! sending (`send::compose::session`) from the session's current state, so a registrant never gets stale
//! details, and nothing about a cancelled session or registration goes out.

use super::{Failure, Handlers};

use crate::config::Offset;
use crate::domain::event::ErrorCode;
use crate::domain::{
    Envelope, RegionId, RegistrationCancelled, RegistrationCreated, SessionCancelled,
    SessionDetails,
};
use crate::outbox::job::Registrant;
use crate::outbox::{enqueue, enqueue_each, Audience, ForEach, Job, NewEmail, NewEmails};
use crate::schedule::plan::due_at;
pub use crate::state::session::{
    load_session, offset_phrase, SessionRow, SessionView, SESSION_COLUMNS,
};
use crate::uk_time;
use chrono::{DateTime, Utc};

use serde_json::{json, Value};
use sqlx::PgConnection;

fn unknown_session(session_id: &str) -> Failure {
    Failure::Deferred {
        code: ErrorCode::UnknownSession,
        detail: format!("data.session_id: session {session_id:?} is not known"),
    }
}

// ---------------------------------------------------------------------------------------------
// Planning reminders and briefings.

async fn plan(
    conn: &mut PgConnection,
    kind: &str,
    session: &SessionRow,
    registration_id: Option<&str>,
    offset: Offset,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    let due = due_at(session.starts_at, offset);
    // An offset already past is skipped, never sent late.
    if due <= now {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO scheduled_emails (kind, session_id, registration_id, offset_label, due_at)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
    )
    .bind(kind)
    .bind(&session.session_id)
    .bind(registration_id)
    .bind(offset.to_string())
    .bind(due)
    .execute(conn)
    .await?;
    Ok(())
}

async fn plan_reminders(
    conn: &mut PgConnection,
    handlers: &Handlers,
    session: &SessionRow,
    registration_id: &str,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    let offsets = handlers
        .regions
        .for_session(session.region_id())
        .reminder_offsets
        .clone();
    for offset in offsets {
        plan(
            conn,
            "reminder",
            session,
            Some(registration_id),
            offset,
            now,
        )
        .await?;
    }
    Ok(())
}

async fn plan_briefing(
    conn: &mut PgConnection,
    handlers: &Handlers,
    session: &SessionRow,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    let offset = handlers
        .regions
        .for_session(session.region_id())
        .briefing_offset;
    plan(conn, "briefing", session, None, offset, now).await
}

/// Throws away what was planned for a session and plans again against its current time.
async fn replan(
    conn: &mut PgConnection,
    handlers: &Handlers,
    session: &SessionRow,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM scheduled_emails WHERE session_id = $1 AND status = 'pending'")
        .bind(&session.session_id)
        .execute(&mut *conn)
        .await?;
    plan_briefing(conn, handlers, session, now).await?;
    let registrations: Vec<(String,)> = sqlx::query_as(
        "SELECT registration_id FROM registrations WHERE session_id = $1 AND status = 'registered'",
    )
    .bind(&session.session_id)
    .fetch_all(&mut *conn)
    .await?;
    for (registration_id,) in registrations {
        plan_reminders(conn, handlers, session, &registration_id, now).await?;
    }
    Ok(())
}

/// Whose planned reminders and briefings to drop.
enum Planned<'a> {
    OfSession(&'a str),
    OfRegistration(&'a str),
}

/// Drops what was planned and is not yet due: its cause went away (kept, marked, for the record).
async fn drop_pending(
    conn: &mut PgConnection,
    whose: Planned<'_>,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    let (column, id) = match whose {
        Planned::OfSession(id) => ("session_id", id),
        Planned::OfRegistration(id) => ("registration_id", id),
    };
    sqlx::query(&format!(
        "UPDATE scheduled_emails SET status = 'dropped', handled_at = $2 WHERE {column} = $1 AND status = 'pending'"
    ))
    .bind(id)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// One email to every current registrant of a session, set-based.
async fn email_registrants(
    conn: &mut PgConnection,
    envelope: &Envelope,
    session_id: &str,
    job: ForEach,
) -> sqlx::Result<u64> {
    let emails = NewEmails {
        job,
        to: Audience::Registrants(session_id),
        headers: Vec::new(),
        priority: 0,
        source_event: Some(envelope.id),
    };
    Ok(enqueue_each(conn, &emails).await?.queued)
}

// ---------------------------------------------------------------------------------------------
// Handlers.

/// `session.scheduled` and `session.updated` (either may come first; a session is created by
/// whichever arrives first, and an older event than the last applied one changes nothing).
pub(super) async fn scheduled_or_updated(
    conn: &mut PgConnection,
    handlers: &Handlers,
    envelope: &Envelope,
    s: &SessionDetails,
) -> Result<(), Failure> {
    let now = handlers.clock.now();
    let Some(old) = load_session(conn, &s.session_id, true).await? else {
        sqlx::query(
            "INSERT INTO sessions (session_id, title, audience, region, starts_at, ends_at, registration_url,
                                   joining_url, description, first_seen_at, last_event_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&s.session_id)
        .bind(&s.title)
        .bind(&s.audience)
        .bind(s.region.map(RegionId::as_str))
        .bind(s.starts_at)
        .bind(s.ends_at)
        .bind(&s.registration_url)
        .bind(&s.joining_url)
        .bind(&s.description)
        .bind(now)
        .bind(envelope.occurred_at)
        .execute(&mut *conn)
        .await?;
        let session = load_session(conn, &s.session_id, false)
            .await?
            .ok_or_else(|| anyhow::anyhow!("the session just stored is missing"))?;
        plan_briefing(conn, handlers, &session, now).await?;
        tracing::info!(event_id = %envelope.id, session_id = %s.session_id, "session scheduled");
        return Ok(());
    };
    if envelope.occurred_at < old.last_event_at {
        tracing::info!(event_id = %envelope.id, session_id = %s.session_id, "an older update than the one applied: ignored");
        return Ok(());
    }
    if old.is_cancelled() {
        tracing::info!(event_id = %envelope.id, session_id = %s.session_id, "update to a cancelled session: ignored");
        return Ok(());
    }
    let moved = old.starts_at != s.starts_at || old.ends_at != s.ends_at;
    let new_link = s.joining_url.is_some() && old.joining_url != s.joining_url;
    let region_changed = old.region.as_deref() != s.region.map(RegionId::as_str);
    sqlx::query(
        "UPDATE sessions SET title = $2, audience = $3, region = $4, starts_at = $5, ends_at = $6,
                registration_url = $7, joining_url = $8, description = $9, last_event_at = $10,
                sequence = sequence + $11
         WHERE session_id = $1",
    )
    .bind(&s.session_id)
    .bind(&s.title)
    .bind(&s.audience)
    .bind(s.region.map(RegionId::as_str))
    .bind(s.starts_at)
    .bind(s.ends_at)
    .bind(&s.registration_url)
    .bind(&s.joining_url)
    .bind(&s.description)
    .bind(envelope.occurred_at)
    .bind(i32::from(moved || new_link))
    .execute(&mut *conn)
    .await?;
    if moved || region_changed {
        let session = load_session(conn, &s.session_id, false)
            .await?
            .ok_or_else(|| anyhow::anyhow!("the session just updated is missing"))?;
        replan(conn, handlers, &session, now).await?;
    }
    if moved {
        let previous = uk_time::range(old.starts_at, old.ends_at);
        let n = email_registrants(
            conn,
            envelope,
            &s.session_id,
            ForEach::SessionMoved {
                previous_when: previous,
            },
        )
        .await?;
        tracing::info!(event_id = %envelope.id, session_id = %s.session_id, registrants = n, "session moved");
    } else if new_link {
        let n =
            email_registrants(conn, envelope, &s.session_id, ForEach::JoiningLinkChanged).await?;
        tracing::info!(event_id = %envelope.id, session_id = %s.session_id, registrants = n, "new joining link");
    }
    Ok(())
}

pub(super) async fn cancelled(
    conn: &mut PgConnection,
    handlers: &Handlers,
    envelope: &Envelope,
    c: &SessionCancelled,
) -> Result<(), Failure> {
    let old = load_session(conn, &c.session_id, true)
        .await?
        .ok_or_else(|| unknown_session(&c.session_id))?;
    if old.is_cancelled() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE sessions SET status = 'cancelled', cancel_reason = $2, sequence = sequence + 1,
                last_event_at = greatest(last_event_at, $3)
         WHERE session_id = $1",
    )
    .bind(&c.session_id)
    .bind(&c.reason)
    .bind(envelope.occurred_at)
    .execute(&mut *conn)
    .await?;
    drop_pending(
        conn,
        Planned::OfSession(&c.session_id),
        handlers.clock.now(),
    )
    .await?;
    let n = email_registrants(conn, envelope, &c.session_id, ForEach::SessionCancelled).await?;
    tracing::info!(event_id = %envelope.id, session_id = %c.session_id, registrants = n, "session cancelled");
    Ok(())
}

pub(super) async fn registration_created(
    conn: &mut PgConnection,
    handlers: &Handlers,
    envelope: &Envelope,
    r: &RegistrationCreated,
) -> Result<(), Failure> {
    let now = handlers.clock.now();
    let session = load_session(conn, &r.session_id, true)
        .await?
        .ok_or_else(|| unknown_session(&r.session_id))?;
    let inserted = sqlx::query(
        "INSERT INTO registrations (registration_id, session_id, name, email, created_at)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (registration_id) DO NOTHING",
    )
    .bind(&r.registration_id)
    .bind(&r.session_id)
    .bind(&r.name)
    .bind(r.email.as_str())
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 0 {
        tracing::info!(event_id = %envelope.id, registration_id = %r.registration_id, "registration already recorded: nothing sent");
        return Ok(());
    }
    let registrant = Registrant {
        registration_id: r.registration_id.clone(),
        session_id: r.session_id.clone(),
    };
    let job = if session.is_cancelled() {
        Job::SessionCancelled(registrant)
    } else {
        Job::RegistrationConfirmation(registrant)
    };
    let mut email = NewEmail::new(job, vec![r.email.clone()]);
    email.source_event = Some(envelope.id);
    enqueue(conn, &email).await?;
    if !session.is_cancelled() {
        plan_reminders(conn, handlers, &session, &r.registration_id, now).await?;
    }
    tracing::info!(event_id = %envelope.id, registration_id = %r.registration_id, session_id = %r.session_id, "registration confirmed");
    Ok(())
}

pub(super) async fn registration_cancelled(
    conn: &mut PgConnection,
    handlers: &Handlers,
    envelope: &Envelope,
    r: &RegistrationCancelled,
) -> Result<(), Failure> {
    let now = handlers.clock.now();
    let status: Option<(String,)> =
        sqlx::query_as("SELECT status FROM registrations WHERE registration_id = $1 FOR UPDATE")
            .bind(&r.registration_id)
            .fetch_optional(&mut *conn)
            .await?;
    match status {
        None => {
            // It may be overtaking its own registration.created: wait for it like an unknown session.
            return Err(Failure::Deferred {
                code: ErrorCode::UnknownSession,
                detail: format!(
                    "data.registration_id: registration {:?} is not known",
                    r.registration_id
                ),
            });
        }
        Some((s,)) if s == "cancelled" => return Ok(()),
        Some(_) => {}
    }
    sqlx::query("UPDATE registrations SET status = 'cancelled', cancelled_at = $2 WHERE registration_id = $1")
        .bind(&r.registration_id)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    drop_pending(conn, Planned::OfRegistration(&r.registration_id), now).await?;
    tracing::info!(event_id = %envelope.id, registration_id = %r.registration_id, "registration cancelled");
    Ok(())
}

/// Sample contexts for `check`, shaped as `prepare` shapes them.
pub(super) fn samples() -> Vec<(&'static str, Value)> {
    let session = json!({
        "session_id": "dsl-2024-10-02",
        "title": "Prevent in education: training for designated safeguarding leads (DSLs)",
        "audience": "Designated safeguarding leads",
        "scope": "National", "national": true,
        "when": "Wednesday 2 October 2024, 3:30pm to 4:30pm",
        "date": "Wednesday 2 October 2024",
        "registration_url": "https://www.eventbrite.co.uk/e/prevent-in-education-dsl-2024-10-02",
        "joining_url": "https://teams.example.org/join/dsl-2024-10-02",
        "description": "An introduction to the Prevent duty.",
        "cancel_reason": "Trainer unavailable."
    });
    let mut bare = session.clone();
    for key in ["joining_url", "description", "cancel_reason"] {
        bare[key] = Value::Null;
    }
    let mut out = Vec::new();
    for s in [&session, &bare] {
        out.push((
            "registration_confirmation",
            json!({ "name": "Jo Bloggs", "session": s }),
        ));
        out.push((
            "session_reminder",
            json!({ "name": "Jo Bloggs", "session": s, "offset_phrase": "in 1 hour" }),
        ));
        out.push(("session_moved", json!({ "name": "Jo Bloggs", "session": s, "previous_when": "Tuesday 1 October 2024, 3:30pm to 4:30pm" })));
        out.push((
            "joining_link_changed",
            json!({ "name": "Jo Bloggs", "session": s }),
        ));
        out.push((
            "session_cancelled",
            json!({ "name": "Jo Bloggs", "session": s }),
        ));
        out.push(("coordinator_briefing", json!({ "session": s, "count": 1, "registrants": [{ "name": "Jo Bloggs", "email": "jo@example.org" }] })));
    }
    out.push((
        "coordinator_briefing",
        json!({ "session": session, "count": 0, "registrants": [] }),
    ));
    for name in [json!("Morgan Lee"), Value::Null] {
        out.push((
            "weekly_digest",
            json!({
                "name": name, "subscription_id": 1, "region_name": "North-West", "count": 2,
                "sessions": [session, bare],
                "unsubscribe_url": "http://127.0.0.1:8080/unsubscribe?token=AQIAAAAAAAAAKgAAAABnCmOg"
            }),
        ));
    }
    out
}

//! The outbox: emails are written here in the transaction that commits their cause, and the
//! sender claims, sends and records them.
//!
//! Each row holds a typed [`Job`] (`job`). There are two ways in, both here: [`enqueue`] for one
//! email, and [`enqueue_each`] for an email to every member of an audience, written by the
//! database in one `INSERT … SELECT` (the sender's copy of a failed enquiry to the triage
//! mailbox, [`enqueue_undeliverable`], is the one other).

pub mod job;

use crate::domain::{EmailAddress, RegionId};
pub use job::{ForEach, Job, Members, StoredJob, KINDS};
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor, PgPool};
use std::time::Duration;
use uuid::Uuid;

/// The channel on which a commit that adds email wakes the senders.
pub const NOTIFY_CHANNEL: &str = "rpec_outbox";

/// Which From address an email uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// One-to-one mail caused by something the person or their coordinator did.
    Transactional,
    /// Newsletters and digests.
    Bulk,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Transactional => "transactional",
            Stream::Bulk => "bulk",
        }
    }
}

/// An email to send, as a handler describes it.
#[derive(Debug, Clone)]
pub struct NewEmail {
    /// What it is: its kind (and so its template and From address) and what it needs.
    pub job: Job,
    pub to: Vec<EmailAddress>,
    pub reply_to: Option<EmailAddress>,
    /// Extra headers; values must come from trusted code, never from input.
    pub headers: Vec<(&'static str, String)>,
    pub attachments: Vec<Attachment>,
    /// Higher goes first (urgent enquiries).
    pub priority: i16,
    pub source_event: Option<Uuid>,
}

impl NewEmail {
    pub fn new(job: Job, to: Vec<EmailAddress>) -> Self {
        NewEmail {
            job,
            to,
            reply_to: None,
            headers: Vec::new(),
            attachments: Vec::new(),
            priority: 0,
            source_event: None,
        }
    }
}

pub use crate::mail::Attachment;

/// Adds an email to the outbox inside the caller's transaction. The NOTIFY is delivered only
/// if that transaction commits.
pub async fn enqueue(conn: &mut PgConnection, email: &NewEmail) -> sqlx::Result<i64> {
    let ids = enqueue_many(conn, std::slice::from_ref(email)).await?;
    ids.first()
        .copied()
        .ok_or_else(|| sqlx::Error::Protocol("the outbox insert returned no id".into()))
}

/// Adds emails to the outbox inside the caller's transaction, all in one statement (the
/// scheduler hands hundreds of reminders over at once); their ids, in the order given. The
/// NOTIFY is delivered only if that transaction commits.
pub async fn enqueue_many(conn: &mut PgConnection, emails: &[NewEmail]) -> sqlx::Result<Vec<i64>> {
    if emails.is_empty() {
        return Ok(Vec::new());
    }
    // Each row goes as one JSON object; its Message-ID's uuid, made here, finds its id again.
    let uuids: Vec<Uuid> = emails.iter().map(|_| Uuid::new_v4()).collect();
    let rows = emails
        .iter()
        .zip(&uuids)
        .map(|(email, uuid)| {
            let job = &email.job;
            Ok(serde_json::json!({
                "kind": job.kind(),
                "template": job.template(),
                "stream": job.stream().as_str(),
                "recipients": email.to.iter().map(EmailAddress::as_str).collect::<Vec<_>>(),
                "reply_to": email.reply_to.as_ref().map(EmailAddress::as_str),
                "job": job_json(job)?,
                "headers": headers_json(&email.headers),
                "attachments": serde_json::to_value(&email.attachments)
                    .unwrap_or_else(|_| Value::Array(Vec::new())),
                "message_uuid": uuid,
                "source_event": email.source_event,
                "priority": email.priority,
            }))
        })
        .collect::<sqlx::Result<Vec<Value>>>()?;
    // The NOTIFY goes with the insert, in the same statement (one round trip, not two).
    let written: Vec<(i64, Uuid)> = sqlx::query_as(
        "WITH written AS (
             INSERT INTO outbox (kind, template, stream, recipients, reply_to, job, headers,
                                 attachments, message_uuid, source_event, priority)
             SELECT kind, template, stream, recipients, reply_to, job, headers, attachments,
                    message_uuid, source_event, priority
             FROM jsonb_to_recordset($1) AS r(kind text, template text, stream text,
                  recipients text[], reply_to text, job jsonb, headers jsonb, attachments jsonb,
                  message_uuid uuid, source_event uuid, priority smallint)
             RETURNING id, message_uuid
         )
         SELECT w.id, w.message_uuid FROM written w CROSS JOIN (SELECT pg_notify($2, '')) AS n",
    )
    .bind(Value::Array(rows))
    .bind(NOTIFY_CHANNEL)
    .fetch_all(&mut *conn)
    .await?;
    let by_uuid: std::collections::HashMap<Uuid, i64> =
        written.into_iter().map(|(id, uuid)| (uuid, id)).collect();
    uuids
        .iter()
        .map(|uuid| {
            by_uuid
                .get(uuid)
                .copied()
                .ok_or_else(|| sqlx::Error::Protocol("an outbox row was not written".into()))
        })
        .collect()
}

fn job_json(job: &Job) -> sqlx::Result<Value> {
    serde_json::to_value(job).map_err(|e| sqlx::Error::Encode(Box::new(e)))
}

fn headers_json(headers: &[(&'static str, String)]) -> Value {
    Value::Object(
        headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::String(v.clone())))
            .collect(),
    )
}

/// Who [`enqueue_each`] writes one email to. The database reads them: the worker never holds
/// the list, however long it is.
#[derive(Debug, Clone, PartialEq)]
pub enum Audience<'a> {
    /// Every confirmed, not suppressed reader of a region (`bulk_recipients`): for a digest.
    Readers(RegionId),
    /// For a newsletter ([`ForEach::Newsletter`]), a batch of a region's readers: the next
    /// `limit` by subscription id after `after` who have not been given it. Each one's delivery
    /// is recorded (`newsletter_deliveries`) by the same statement that queues their copy, and
    /// skipped when present, so nobody is ever queued two.
    NewReaders {
        region: RegionId,
        after: i64,
        limit: i64,
    },
    /// Every current registrant (registered, with an address) of the session with this id.
    Registrants(&'a str),
}

/// Emails to every member of an audience, as a handler or the scheduler describes them.
#[derive(Debug, Clone)]
pub struct NewEmails<'a> {
    /// The job each member gets, but for their own ids.
    pub job: ForEach,
    pub to: Audience<'a>,
    /// Extra headers; values must come from trusted code, never from input.
    pub headers: Vec<(&'static str, String)>,
    /// Higher goes first.
    pub priority: i16,
    pub source_event: Option<Uuid>,
}

/// What [`enqueue_each`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fanned {
    /// Rows queued.
    pub queued: u64,
    /// For [`Audience::NewReaders`]: the last subscription id of the batch (None: the batch
    /// was empty, the fan-out is done). The next batch starts after it.
    pub last: Option<i64>,
}

/// Adds an email for every member of an audience to the outbox, in one `INSERT … SELECT`
/// inside the caller's transaction; the NOTIFY is delivered only if it commits. Each row's job
/// is the shared job with the member's ids written in by the database (`outbox::job`).
pub async fn enqueue_each(conn: &mut PgConnection, emails: &NewEmails<'_>) -> sqlx::Result<Fanned> {
    // A newsletter goes only with its delivery records; a digest to every reader.
    let newsletter_id = emails.job.newsletter_id();
    let fits = match emails.to {
        Audience::Readers(_) => matches!(emails.job, ForEach::Digest { .. }),
        Audience::NewReaders { .. } => newsletter_id.is_some(),
        Audience::Registrants(_) => emails.job.members() == Members::Registrants,
    };
    let shared = emails.job.shared_job().filter(|_| fits).ok_or_else(|| {
        sqlx::Error::InvalidArgument(format!("{:?} is not for {:?}", emails.job, emails.to))
    })?;
    // `audience` yields the members (an address and the ids their job takes); `last` how far a
    // batch got. `$8` on are the audience's own parameters.
    let (audience, last) = match emails.to {
        Audience::Readers(_) => (
            "audience AS (SELECT subscription_id, email FROM bulk_recipients WHERE region = $8)",
            "NULL::bigint",
        ),
        Audience::NewReaders { .. } => (
            "batch AS (
                 SELECT subscription_id, email FROM bulk_recipients
                 WHERE region = $8 AND subscription_id > $9
                 ORDER BY subscription_id
                 LIMIT $10
             ), fresh AS (
                 INSERT INTO newsletter_deliveries (newsletter_id, subscription_id)
                 SELECT $11, subscription_id FROM batch
                 ON CONFLICT DO NOTHING
                 RETURNING subscription_id
             ), audience AS (
                 SELECT b.subscription_id, b.email FROM fresh f JOIN batch b USING (subscription_id)
             )",
            "(SELECT max(subscription_id) FROM batch)",
        ),
        Audience::Registrants(_) => (
            "audience AS (
                 SELECT registration_id, session_id, email FROM registrations
                 WHERE session_id = $8 AND status = 'registered' AND email IS NOT NULL
             )",
            "NULL::bigint",
        ),
    };
    let sql = format!(
        "WITH {audience}, queued AS (
             INSERT INTO outbox (kind, template, stream, recipients, job, headers, message_uuid,
                                 source_event, priority)
             SELECT $1, $2, $3, ARRAY[a.email], $4::jsonb || {ids}, $5, gen_random_uuid(), $6, $7
             FROM audience a
             RETURNING 1
         )
         SELECT {last}, (SELECT count(*) FROM queued)",
        ids = emails.job.members().ids_sql(),
    );
    let query = sqlx::query_as(&sql)
        .bind(shared.kind())
        .bind(shared.template())
        .bind(shared.stream().as_str())
        .bind(job_json(&shared)?)
        .bind(headers_json(&emails.headers))
        .bind(emails.source_event)
        .bind(emails.priority);
    let query = match &emails.to {
        Audience::Readers(region) => query.bind(region.as_str()),
        Audience::NewReaders {
            region,
            after,
            limit,
        } => query
            .bind(region.as_str())
            .bind(*after)
            .bind(*limit)
            .bind(newsletter_id.unwrap_or_default()),
        Audience::Registrants(session_id) => query.bind(*session_id),
    };
    let (last, queued): (Option<i64>, i64) = query.fetch_one(&mut *conn).await?;
    if queued > 0 {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(NOTIFY_CHANNEL)
            .execute(&mut *conn)
            .await?;
    }
    Ok(Fanned {
        queued: queued.max(0) as u64,
        last,
    })
}

/// What one send came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Sent,
    Retry,
    Failed,
    /// Not sent: its cause went away before it was due.
    Cancelled,
    /// Nothing recorded: the claim's lease ran out and another claim took the row (see
    /// `record`); that claim records the row's fate.
    Stale,
}

/// A row claimed for sending.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claimed {
    pub id: i64,
    pub kind: String,
    pub template: String,
    pub stream: String,
    pub recipients: Vec<String>,
    pub reply_to: Option<String>,
    /// What the email is, read with the claim (a job that does not parse fails its row alone).
    #[sqlx(try_from = "Value")]
    pub job: StoredJob,
    pub headers: Value,
    pub attachments: Value,
    pub message_uuid: Uuid,
    pub source_event: Option<Uuid>,
    /// When it was queued.
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub attempts: i32,
    /// Tries put back because the relay or the database could not be reached (not attempts).
    pub deferrals: i32,
    /// This claim's token: the outcome is recorded only while the row still carries it.
    pub claim_token: Uuid,
    /// For bulk mail to a reader (a `subscription_id` in the job), read with the claim: the
    /// subscription's status (None: it no longer exists), the reader's name, and whether the
    /// address is suppressed for bulk mail.
    pub reader_status: Option<String>,
    pub reader_name: Option<String>,
    pub reader_suppressed: bool,
    /// Whether the newsletter the job names (if any) is still held.
    pub newsletter_held: bool,
}

impl Claimed {
    /// Everything about the email but its content, for `mail::message::build`.
    pub fn draft(&self) -> crate::mail::Draft<'_> {
        crate::mail::Draft {
            message_uuid: self.message_uuid,
            recipients: &self.recipients,
            reply_to: self.reply_to.as_deref(),
            auto_submitted: self.job.get().map_or(true, Job::auto_submitted),
            headers: &self.headers,
        }
    }
}

/// Claims up to `limit` due rows (and rows whose lease ran out) for `lease`, each with a fresh
/// claim token, most urgent first. Bulk mail to a reader comes with what decides whether it
/// still goes (see `Claimed::reader_status`), read in the same statement, so that sending it
/// needs no read of its own.
pub async fn claim(pool: &PgPool, limit: i64, lease: Duration) -> sqlx::Result<Vec<Claimed>> {
    sqlx::query_as(
        "WITH due AS (
             SELECT id FROM outbox
             WHERE waiting
               AND ((status = 'pending' AND next_attempt_at <= now())
                    OR (status = 'sending' AND claimed_until < now()))
             ORDER BY priority DESC, next_attempt_at
             LIMIT $1
             FOR UPDATE SKIP LOCKED
         ), claimed AS (
             UPDATE outbox o
             SET status = 'sending', claimed_until = now() + make_interval(secs => $2),
                 attempts = o.attempts + 1, claim_token = gen_random_uuid()
             FROM due WHERE o.id = due.id
             RETURNING o.id, o.kind, o.template, o.stream, o.recipients, o.reply_to, o.job,
                       o.headers, o.attachments, o.message_uuid, o.source_event, o.attempts,
                       o.deferrals, o.claim_token, o.priority, o.next_attempt_at, o.created_at
         )
         SELECT c.*, s.status AS reader_status, s.name AS reader_name,
                coalesce(EXISTS (SELECT 1 FROM suppressions x WHERE x.email = lower(s.email)),
                         false) AS reader_suppressed,
                EXISTS (SELECT 1 FROM newsletters n
                        WHERE n.newsletter_id = c.job ->> 'newsletter_id') AS newsletter_held
         FROM claimed c
         LEFT JOIN subscriptions s ON s.id = (c.job ->> 'subscription_id')::bigint
         ORDER BY c.priority DESC, c.next_attempt_at, c.id",
    )
    .bind(limit)
    .bind(lease.as_secs_f64())
    .fetch_all(pool)
    .await
}

// Every outcome below matches `id AND claim_token AND status = 'sending'` and returns whether
// it changed the row: false means the claim is stale (its lease ran out and another claim took
// the row, or the row was finished meanwhile), and the caller must change nothing else.

/// What a claim records for one of its rows: the outcomes that need no other change with them
/// (a failure, which may suppress addresses and queue a triage copy, has `mark_failed`).
#[derive(Debug, Clone, PartialEq)]
pub enum Mark {
    /// The relay accepted it, at `at`.
    Sent { at: chrono::DateTime<chrono::Utc> },
    /// Due again after `wait`.
    Retry {
        wait: Duration,
        error: String,
        counted: Counted,
    },
    /// Not sent: its cause went away (see `send::prepare`).
    Cancelled { reason: String },
}

/// A row's outcome under one claim.
#[derive(Debug, Clone, PartialEq)]
pub struct Marked {
    pub id: i64,
    pub claim_token: Uuid,
    pub mark: Mark,
}

/// Records many outcomes in one statement, each fenced by its claim; returns the ids of the
/// rows it changed (the others' claims are stale).
pub async fn record(conn: impl PgExecutor<'_>, marks: &[Marked]) -> sqlx::Result<Vec<i64>> {
    if marks.is_empty() {
        return Ok(Vec::new());
    }
    let n = marks.len();
    let (mut ids, mut tokens, mut statuses) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut ats, mut errors, mut waits, mut deferrals) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for m in marks {
        ids.push(m.id);
        tokens.push(m.claim_token);
        let (status, at, error, wait, deferral) = match &m.mark {
            Mark::Sent { at } => ("sent", Some(*at), None, 0.0, false),
            Mark::Retry {
                wait,
                error,
                counted,
            } => (
                "pending",
                None,
                Some(error.as_str()),
                wait.as_secs_f64(),
                *counted == Counted::Deferral,
            ),
            Mark::Cancelled { reason } => ("cancelled", None, Some(reason.as_str()), 0.0, false),
        };
        statuses.push(status);
        ats.push(at);
        errors.push(error);
        waits.push(wait);
        deferrals.push(deferral);
    }
    let rows: Vec<(i64,)> = sqlx::query_as(
        "UPDATE outbox o SET
             status = u.status,
             sent_at = CASE WHEN u.status = 'sent' THEN u.at ELSE o.sent_at END,
             claimed_until = NULL,
             last_error = u.error,
             next_attempt_at = CASE WHEN u.status = 'pending'
                                    THEN now() + make_interval(secs => u.wait)
                                    ELSE o.next_attempt_at END,
             attempts = CASE WHEN u.deferral THEN greatest(o.attempts - 1, 0) ELSE o.attempts END,
             deferrals = CASE WHEN u.deferral THEN o.deferrals + 1 ELSE o.deferrals END
         FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::timestamptz[], $5::text[],
                     $6::float8[], $7::bool[]) AS u(id, token, status, at, error, wait, deferral)
         WHERE o.id = u.id AND o.claim_token = u.token AND o.status = 'sending'
         RETURNING o.id",
    )
    .bind(&ids)
    .bind(&tokens)
    .bind(&statuses)
    .bind(&ats)
    .bind(&errors)
    .bind(&waits)
    .bind(&deferrals)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// Of `claims` (row id, claim token), the rows that were finished under that claim: after a
/// try at recording that was lost with its connection, which may have committed all the same.
pub async fn finished_under(
    conn: impl PgExecutor<'_>,
    claims: &[(i64, Uuid)],
) -> sqlx::Result<Vec<i64>> {
    let (ids, tokens): (Vec<i64>, Vec<Uuid>) = claims.iter().copied().unzip();
    let rows: Vec<(i64,)> = sqlx::query_as(
        "SELECT o.id FROM outbox o
         JOIN unnest($1::bigint[], $2::uuid[]) AS u(id, token)
           ON o.id = u.id AND o.claim_token = u.token
         WHERE o.status <> 'sending'",
    )
    .bind(&ids)
    .bind(&tokens)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

async fn record_one(
    conn: impl PgExecutor<'_>,
    id: i64,
    claim_token: Uuid,
    mark: Mark,
) -> sqlx::Result<bool> {
    let marked = Marked {
        id,
        claim_token,
        mark,
    };
    Ok(record(conn, std::slice::from_ref(&marked)).await? == [id])
}

/// Records that the relay accepted the row (now).
pub async fn mark_sent(
    conn: impl PgExecutor<'_>,
    id: i64,
    claim_token: Uuid,
) -> sqlx::Result<bool> {
    let at = chrono::Utc::now();
    record_one(conn, id, claim_token, Mark::Sent { at }).await
}

/// Whether a failed try counts toward `mail.retry.max_attempts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// The relay answered about this email (a 4xx, a time-out mid-send, ...).
    Attempt,
    /// Nothing was learned about the email (the relay or the database could not be reached):
    /// the attempt the claim took is given back, and the try is counted as a deferral.
    Deferral,
}

/// Puts a row back to be tried again after `wait`.
pub async fn mark_retry(
    conn: impl PgExecutor<'_>,
    id: i64,
    claim_token: Uuid,
    wait: Duration,
    error: &str,
    counted: Counted,
) -> sqlx::Result<bool> {
    let error = error.to_owned();
    record_one(
        conn,
        id,
        claim_token,
        Mark::Retry {
            wait,
            error,
            counted,
        },
    )
    .await
}

/// Records that a row will never be sent, and why. It stays in the outbox for operators (and
/// retention keeps it until one resolves it).
pub async fn mark_failed(
    conn: impl PgExecutor<'_>,
    id: i64,
    claim_token: Uuid,
    error: &str,
) -> sqlx::Result<bool> {
    mark_finished(conn, id, claim_token, "failed", error).await
}

/// Records that a row was not sent because its cause went away (see `send::prepare`).
pub async fn mark_cancelled(
    conn: impl PgExecutor<'_>,
    id: i64,
    claim_token: Uuid,
    reason: &str,
) -> sqlx::Result<bool> {
    let reason = reason.to_owned();
    record_one(conn, id, claim_token, Mark::Cancelled { reason }).await
}

/// Gives claimed rows back unsent (the worker is stopping, or a row waited too long in the
/// worker to be sent under its lease): due again at once for any worker, with the attempt each
/// claim counted taken back. Fenced by the claims; returns how many were given back.
pub async fn release(conn: impl PgExecutor<'_>, claims: &[(i64, Uuid)]) -> sqlx::Result<u64> {
    let (ids, tokens): (Vec<i64>, Vec<Uuid>) = claims.iter().copied().unzip();
    Ok(sqlx::query(
        "UPDATE outbox o SET status = 'pending', claimed_until = NULL, claim_token = NULL,
                attempts = greatest(o.attempts - 1, 0)
         FROM unnest($1::bigint[], $2::uuid[]) AS u(id, token)
         WHERE o.id = u.id AND o.claim_token = u.token AND o.status = 'sending'",
    )
    .bind(&ids)
    .bind(&tokens)
    .execute(conn)
    .await?
    .rows_affected())
}

/// Ends a claimed row with `status` and why, fenced by its claim.
async fn mark_finished(
    conn: impl PgExecutor<'_>,
    id: i64,
    claim_token: Uuid,
    status: &str,
    why: &str,
) -> sqlx::Result<bool> {
    Ok(sqlx::query(
        "UPDATE outbox SET status = $4, claimed_until = NULL, last_error = $3
         WHERE id = $1 AND claim_token = $2 AND status = 'sending'",
    )
    .bind(id)
    .bind(claim_token)
    .bind(why)
    .bind(status)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

/// Queues, for the failed coordinators' copy of an enquiry (row `failed_id`), `job` (an
/// `enquiry_undeliverable`: the enquiry with which region it could not reach, and why) to
/// `recipients` (the triage mailbox), with the failed row's Reply-To, headers and priority. At
/// most once per failed row (a unique index); returns whether it was queued now. Meant for the
/// transaction that marks the row failed.
pub async fn enqueue_undeliverable(
    conn: &mut PgConnection,
    failed_id: i64,
    recipients: &[&str],
    job: &Job,
) -> sqlx::Result<bool> {
    let queued = sqlx::query(
        "INSERT INTO outbox (kind, template, stream, recipients, reply_to, job, headers,
                             attachments, message_uuid, source_event, priority, undeliverable_of)
         SELECT $4, $5, $6, $2, o.reply_to, $3, o.headers,
                o.attachments, gen_random_uuid(), o.source_event, o.priority, o.id
         FROM outbox o WHERE o.id = $1
         ON CONFLICT (undeliverable_of) WHERE undeliverable_of IS NOT NULL DO NOTHING",
    )
    .bind(failed_id)
    .bind(recipients)
    .bind(job_json(job)?)
    .bind(job.kind())
    .bind(job.template())
    .bind(job.stream().as_str())
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    if queued {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(NOTIFY_CHANNEL)
            .execute(&mut *conn)
            .await?;
    }
    Ok(queued)
}

/// Suppresses `addresses` for bulk mail (newsletters, digests), lower-cased, with `reason`
/// (ids and codes, no address): a relay or a bounce said they do not exist or will never take
/// our mail, or their owner complained, and mailing them again harms delivery to everyone.
/// Returns how many addresses were newly suppressed.
pub async fn suppress(
    conn: &mut PgConnection,
    addresses: &[String],
    reason: &str,
) -> sqlx::Result<u64> {
    Ok(sqlx::query(
        "INSERT INTO suppressions (email, reason)
         SELECT DISTINCT lower(r), $2 FROM unnest($1::text[]) AS r
         ON CONFLICT (email) DO NOTHING",
    )
    .bind(addresses)
    .bind(reason)
    .execute(conn)
    .await?
    .rows_affected())
}

/// Emails not yet sent (pending or being sent).
pub async fn depth(pool: &PgPool) -> sqlx::Result<i64> {
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM outbox WHERE waiting")
        .fetch_one(pool)
        .await?;
    Ok(n)
}

/// Failed rows that no operator has resolved, by kind (for the metric).
pub async fn failed_unresolved(pool: &PgPool) -> sqlx::Result<Vec<(String, i64)>> {
    sqlx::query_as(
        "SELECT kind, count(*) FROM outbox WHERE failed AND resolved_at IS NULL
         GROUP BY kind",
    )
    .fetch_all(pool)
    .await
}

/// How long the oldest row that is due (pending or being sent, next attempt not in the future)
/// has existed, in seconds; 0 when none is due. A number that keeps growing means mail is stuck.
pub async fn oldest_waiting_secs(pool: &PgPool) -> sqlx::Result<f64> {
    let (secs,): (f64,) = sqlx::query_as(
        "SELECT coalesce(extract(epoch FROM now() - min(created_at))::float8, 0)
         FROM outbox WHERE waiting AND next_attempt_at <= now()",
    )
    .fetch_one(pool)
    .await?;
    Ok(secs)
}

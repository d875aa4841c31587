//! The sender: a pipeline that claims due outbox rows in bulk, sends them on `concurrency`
//! connections at once, and records their outcomes in batches.
//!
//! - The claimer claims, in one statement, as many due rows as the pipeline has room for
//!   (`mail.batch_size` held at most), most urgent first, and hands them on. A claim that found
//!   less than it had room for ends a round once everything claimed so far is recorded; the
//!   claimer then waits for a NOTIFY (or polls).
//! - The senders take rows in that order, `mail.concurrency` at a time. A row is started only
//!   while its lease still has room for a whole send and its recording; otherwise, and at
//!   shutdown, it is given back unsent.
//! - The recorder writes outcomes as they come, as many per statement as have come, each fenced
//!   by its claim (a stale claim changes nothing), and only then logs and counts them.

pub mod compose;
pub mod prepare;

use crate::clock::Clock;
use crate::config::{MailSettings, Regions};
use crate::db;
use crate::mail::{message, Relay, SendError, Shells, Templates};
use crate::metrics::kind_label;
use crate::metrics::Metrics;
use crate::outbox::job::Reminder;
use crate::outbox::{self, Claimed, Counted, Job, Mark, Marked, Outcome, NOTIFY_CHANNEL};
use crate::tokens::{self, Links, ReturnPaths};
use prepare::{prepare, Prepared, UnreadableJob};
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The longest wait between two tries at recording outcomes while PostgreSQL is away.
const RECORD_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The longest wait between two rounds while PostgreSQL is away.
const ROUND_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Outcomes written in one statement at most.
const RECORD_BATCH_MAX: usize = 512;

/// Batches of outcomes written at once at most. Each is a statement and a commit, and with at
/// most one outcome waiting per slot the batches are small: with four at once, a fan-out made
/// 1,400 commits a second for about 2,400 emails. Two gave 2,350-2,490 emails/s where four gave
/// 2,040-2,170 (quick bench, 50,000 readers); one gave 2,330-2,370.
pub const RECORDS_IN_FLIGHT: usize = 2;

/// Time a row's lease must still have, besides the send itself, for it to be started.
const RECORDING_MARGIN: Duration = Duration::from_secs(crate::config::RECORDING_MARGIN_SECS);

/// A claimed row on its way through the pipeline.
struct Work {
    row: Claimed,
    /// Taken before the claim, so it falls no later than the lease the database set.
    lease_ends: Instant,
}

/// Rows claimed and not yet recorded (or given back), and a wake-up whenever that falls.
#[derive(Default)]
struct Held {
    rows: AtomicUsize,
    fell: Notify,
}

impl Held {
    fn add(&self, n: usize) {
        self.rows.fetch_add(n, Ordering::SeqCst);
    }

    fn done(&self, n: usize) {
        self.rows.fetch_sub(n, Ordering::SeqCst);
        self.fell.notify_waiters();
    }

    fn now(&self) -> usize {
        self.rows.load(Ordering::SeqCst)
    }

    /// Waits until at most `n` rows are held (or `stop`).
    async fn at_most(&self, n: usize, stop: &CancellationToken) {
        loop {
            let fell = self.fell.notified();
            if self.now() <= n {
                return;
            }
            tokio::select! {
                _ = fell => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}

/// What is to be written for a row.
enum Record {
    /// `at`: when the relay accepted it (kept as `sent_at`); `by_clock`: the same by the
    /// worker's clock, which decides what is due (for reminder lateness).
    Sent {
        at: chrono::DateTime<chrono::Utc>,
        by_clock: chrono::DateTime<chrono::Utc>,
    },
    Retry {
        wait: Duration,
        error: String,
        counted: Counted,
    },
    /// `suppress`: the relay refused bulk mail for good (the address is suppressed); `triage`:
    /// the recipients and marker of the copy that takes a failed enquiry to the triage mailbox.
    Failed {
        error: String,
        suppress: bool,
        /// For the log: what kind of failure (never the relay's text, which can quote addresses).
        summary: &'static str,
        triage: Option<(Vec<String>, Box<Job>)>,
    },
    Cancelled(String),
    /// Not sent, given back for the next claim (shutdown, or too little lease left).
    Release,
}

/// A row's outcome on its way to the recorder.
struct Done {
    row: Claimed,
    lease_ends: Instant,
    record: Record,
    /// Answered once the outcome is written (or given up on), for the slot's next send.
    recorded: Option<oneshot::Sender<()>>,
}

/// What the sender uses, and nothing more: built by the composition root (`worker`).
pub struct Mailer {
    /// `[mail]`: how many rows to hold and send at once, the lease, the time-outs and retries,
    /// the From addresses.
    pub settings: MailSettings,
    /// Rows are read, and failures recorded, through it.
    pub pool: PgPool,
    /// Plain outcomes are recorded through this one (`db::connect_recorder`: one generic plan
    /// for the record statement), with a connection for each batch in flight.
    pub record_pool: PgPool,
    /// Rows are claimed through this one (`db::connect_claimer`: the queue's index read in
    /// order, so that each claim passes over the entries of rows already sent only once).
    pub claim_pool: PgPool,
    pub templates: Arc<Templates>,
    /// Bulk emails rendered once, filled in for each reader.
    pub shells: Shells,
    /// Regions' names, the triage mailbox that an undeliverable enquiry goes to, and the
    /// working time in which an unclaimed enquiry's wait is told.
    pub regions: Arc<Regions>,
    /// Signs each reader's unsubscribe link and each coordinator's claim link.
    pub links: Links,
    /// `[mail] bounce_address`: each email's envelope sender is then a return path naming it
    /// (`bounce`); none: the From address.
    pub return_paths: Option<ReturnPaths>,
    pub metrics: Arc<Metrics>,
    /// "Now" for whether a session has started, for reminders' lateness and for how long an
    /// unclaimed enquiry has waited.
    pub clock: Clock,
}

/// Runs the pipeline until `shutdown`: claimed rows not yet started then go back, sends in
/// flight finish, and their outcomes are recorded before it returns.
pub async fn run(mailer: Arc<Mailer>, relay: Relay, shutdown: CancellationToken) {
    let capacity = (mailer.settings.send_batch_size.max(1) as usize).max(1);
    let held = Arc::new(Held::default());
    let (work_tx, work_rx) = mpsc::channel::<Work>(capacity);
    let (done_tx, done_rx) = mpsc::unbounded_channel::<Done>();
    let recorder = tokio::spawn(record_all(mailer.clone(), done_rx, held.clone()));
    let senders = tokio::spawn(send_all(
        mailer.clone(),
        relay,
        work_rx,
        done_tx,
        shutdown.clone(),
    ));
    claim_all(&mailer, work_tx, &held, capacity, &shutdown).await;
    let _ = senders.await;
    let _ = recorder.await;
    tracing::info!("sender stopped");
}

/// The claimer (see the module's notes). Ends at `shutdown`, dropping `work` so that the
/// senders end once they have taken what it holds.
async fn claim_all(
    mailer: &Mailer,
    work: mpsc::Sender<Work>,
    held: &Held,
    capacity: usize,
    shutdown: &CancellationToken,
) {
    let mut listener: Option<PgListener> = None;
    // Rounds in a row that could not claim (PostgreSQL away): each waits twice the last, up to
    // ROUND_BACKOFF_MAX, and the first round that claims again goes back to polling.
    let mut failed_rounds: u32 = 0;
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        // Claims are made in large bites: a pipeline that is still more than half full is
        // refilled only when it falls to half, so one statement claims many rows and the
        // database spends its time on the sends' records, not on claims of a few rows each.
        let held_now = held.now();
        let room = capacity.saturating_sub(held_now);
        if held_now > 0 && room < refill_at(capacity) {
            held.at_most(capacity - refill_at(capacity), shutdown).await;
            continue;
        }
        let lease_ends = Instant::now() + mailer.settings.send_lease;
        match outbox::claim(&mailer.claim_pool, room as i64, mailer.settings.send_lease).await {
            Ok(rows) => {
                failed_rounds = 0;
                let n = rows.len();
                held.add(n);
                for row in rows {
                    // Room was made for these: the channel takes them without waiting long.
                    if work.send(Work { row, lease_ends }).await.is_err() {
                        return;
                    }
                }
                if n == room {
                    continue; // more may be due right now
                }
                // Everything due is claimed: the round ends once it is all recorded.
                held.at_most(0, shutdown).await;
            }
            Err(e) => {
                failed_rounds = failed_rounds.saturating_add(1);
                tracing::warn!(error = %e, failed_rounds, "could not claim emails from the outbox");
            }
        }
        mailer.metrics.sender_rounds.inc();
        if listener.is_none() && failed_rounds == 0 {
            listener = connect_listener(mailer).await;
        }
        let poll = mailer.settings.send_poll_interval;
        let wait = if failed_rounds == 0 {
            poll
        } else {
            poll.saturating_mul(2u32.saturating_pow(failed_rounds.min(16)))
                .min(ROUND_BACKOFF_MAX.max(poll))
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            woke = async {
                match listener.as_mut() {
                    Some(l) => l.recv().await.map(|_| ()),
                    None => { tokio::time::sleep(wait).await; Ok(()) }
                }
            } => {
                if woke.is_err() {
                    listener = None; // reconnected on the next round; polling meanwhile
                }
            }
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// How much room the pipeline must have before the claimer claims again: half of it (at
/// least one row).
fn refill_at(capacity: usize) -> usize {
    (capacity / 2).max(1)
}

/// The senders: `mail.concurrency` slots, each taking rows in the order claimed. A slot lets
/// the relay take an email only once the outcome of its last one is recorded, so a worker that
/// dies leaves at most one accepted-but-unrecorded email per slot (the duplicate window); it
/// prepares the next one meanwhile, and sends all of it but its final "." (`Relay::send_after`).
async fn send_all(
    mailer: Arc<Mailer>,
    relay: Relay,
    work: mpsc::Receiver<Work>,
    done: mpsc::UnboundedSender<Done>,
    shutdown: CancellationToken,
) {
    let work = Arc::new(tokio::sync::Mutex::new(work));
    let mut slots = tokio::task::JoinSet::new();
    for _ in 0..mailer.settings.send_concurrency.max(1) {
        let (mailer, relay, work, done, shutdown) = (
            mailer.clone(),
            relay.clone(),
            work.clone(),
            done.clone(),
            shutdown.clone(),
        );
        slots.spawn(async move {
            let mut last: Option<oneshot::Receiver<()>> = None;
            loop {
                let next = work.lock().await.recv().await;
                let Some(Work { row, lease_ends }) = next else {
                    break;
                };
                // At shutdown, what is not yet being sent goes back at once, for the next
                // worker, instead of waiting out its lease; the sends already in flight finish.
                // So does a row whose lease no longer has room for a whole send and its
                // recording.
                let room = mailer.settings.send_timeout + RECORDING_MARGIN;
                let (record, recorded) =
                    if shutdown.is_cancelled() || Instant::now() + room >= lease_ends {
                        (Record::Release, None)
                    } else {
                        let (tx, rx) = oneshot::channel();
                        let started = Instant::now();
                        let record = send_one(&mailer, &relay, &row, last.take()).await;
                        if !matches!(record, Record::Cancelled(_)) {
                            mailer
                                .metrics
                                .email_send
                                .with_label_values(&[kind_label(&row.kind)])
                                .observe(started.elapsed().as_secs_f64());
                        }
                        last = Some(rx);
                        (record, Some(tx))
                    };
                let _ = done.send(Done {
                    row,
                    lease_ends,
                    record,
                    recorded,
                });
            }
        });
    }
    while slots.join_next().await.is_some() {}
}

/// Prepares, renders and sends one row; what is to be recorded for it. `previous`, when the
/// slot has one, resolves once the slot's last outcome is recorded: the relay gets this email's
/// final "." only after that.
async fn send_one(
    mailer: &Mailer,
    relay: &Relay,
    row: &Claimed,
    previous: Option<oneshot::Receiver<()>>,
) -> Record {
    let s = &mailer.settings;
    let from = if row.stream == "bulk" {
        &s.bulk_from
    } else {
        &s.transactional_from
    };
    // Whether the relay itself refused the message for good (a 5xx), as opposed to a message
    // that could not be built: only the first says something about the address.
    let mut refused_by_relay = false;
    let result = match prepare(mailer, row).await {
        // A job that does not parse never will: keep the row, say why.
        Err(e) if e.is::<UnreadableJob>() => {
            Err(SendError::Permanent(format!("not sendable: {e}")))
        }
        // PostgreSQL away while reading current state says nothing about the email.
        Err(e) if db::unreachable_cause(&e) => Err(SendError::Unreachable(format!(
            "could not prepare the email: {e:#}"
        ))),
        Err(e) => Err(SendError::Transient(format!(
            "could not prepare the email: {e:#}"
        ))),
        Ok(prepared) => {
            let message = match prepared {
                Prepared::Send {
                    context,
                    attachments,
                } => {
                    // Bulk mail that carries the reader's unsubscribe link also announces it
                    // in headers.
                    let unsubscribe_url = if row.stream == "bulk" {
                        context.get("unsubscribe_url").and_then(|v| v.as_str())
                    } else {
                        None
                    };
                    mailer
                        .templates
                        .render(&row.template, &context)
                        .and_then(|rendered| {
                            message::build(
                                &row.draft(),
                                from,
                                &rendered,
                                &attachments,
                                unsubscribe_url,
                            )
                        })
                }
                Prepared::Rendered {
                    rendered,
                    unsubscribe_url,
                } => message::build(
                    &row.draft(),
                    from,
                    &rendered,
                    &[],
                    unsubscribe_url.as_deref(),
                ),
                Prepared::Skip(reason) => return Record::Cancelled(reason),
            };
            match message {
                // A template or address that does not work now never will: keep the row, say why.
                Err(e) => Err(SendError::Permanent(format!("not sendable: {e}"))),
                Ok(m) => {
                    // The relay may take it once the slot's last outcome is recorded (dropped
                    // unanswered only if the recorder gave up: go on either way); all of it
                    // but its final "." goes meanwhile.
                    let recorded = async move {
                        if let Some(previous) = previous {
                            let _ = previous.await;
                        }
                    };
                    // Bounces come back to a return path that names this row and recipient.
                    let return_path = mailer.return_paths.as_ref().map(|paths| {
                        let recipient = match row.recipients.len() {
                            1 => 0,
                            _ => tokens::EVERY_RECIPIENT,
                        };
                        paths.address(row.id, recipient)
                    });
                    let sent = relay
                        .send_after(m, return_path.as_deref(), s.send_timeout, recorded)
                        .await;
                    refused_by_relay = matches!(sent, Err(SendError::Permanent(_)));
                    sent
                }
            }
        }
    };
    match result {
        Ok(()) => Record::Sent {
            at: chrono::Utc::now(),
            by_clock: mailer.clock.now(),
        },
        // However long the relay (or PostgreSQL) stays away, no email fails for it: the try is
        // given back, and the wait grows with the row's own deferrals.
        Err(SendError::Unreachable(e)) => Record::Retry {
            wait: s
                .send_retry
                .backoff_with_jitter(row.deferrals.saturating_add(1).max(1) as u32),
            error: e,
            counted: Counted::Deferral,
        },
        Err(SendError::Transient(e)) if (row.attempts as u32) < s.send_retry.max_attempts => {
            Record::Retry {
                wait: s.send_retry.backoff_with_jitter(row.attempts.max(1) as u32),
                error: e,
                counted: Counted::Attempt,
            }
        }
        Err(e) => Record::Failed {
            suppress: refused_by_relay && row.stream == "bulk",
            triage: row.job.get().ok().and_then(|job| {
                job.undeliverable_copy(&mailer.regions.triage, &row.recipients, e.text())
            }),
            summary: e.log_summary(),
            error: e.text().to_owned(),
        },
    }
}

/// The recorder: writes what has come, as one batch, until the senders are gone. Up to
/// RECORDS_IN_FLIGHT batches are written at once (each on its own connection), so an outcome
/// that comes while a batch is being written is written at once too, not after it: a slot
/// waits for one statement, not for one and a half.
async fn record_all(mailer: Arc<Mailer>, mut done: mpsc::UnboundedReceiver<Done>, held: Arc<Held>) {
    let mut writing = tokio::task::JoinSet::new();
    loop {
        if writing.len() >= RECORDS_IN_FLIGHT {
            // Outcomes gather meanwhile, for a larger next batch.
            writing.join_next().await;
            continue;
        }
        let first = tokio::select! {
            biased;
            Some(_) = writing.join_next(), if !writing.is_empty() => continue,
            first = done.recv() => first,
        };
        let Some(first) = first else { break };
        let mut batch = Vec::with_capacity(RECORD_BATCH_MAX);
        batch.push(first);
        while batch.len() < RECORD_BATCH_MAX {
            match done.try_recv() {
                Ok(d) => batch.push(d),
                Err(_) => break,
            }
        }
        let (mailer, held) = (mailer.clone(), held.clone());
        writing.spawn(async move {
            let n = batch.len();
            record_batch(&mailer, batch).await;
            held.done(n);
        });
    }
    while writing.join_next().await.is_some() {}
}

/// Records one batch: rows given back, plain outcomes in one statement, failures each in
/// their own transaction; then logs and counts what was recorded.
async fn record_batch(mailer: &Mailer, batch: Vec<Done>) {
    let (mut marks, mut failures, mut releases) = (Vec::new(), Vec::new(), Vec::new());
    for d in batch {
        match d.record {
            Record::Release => releases.push(d),
            Record::Failed { .. } => failures.push(d),
            _ => marks.push(d),
        }
    }
    if !releases.is_empty() {
        let claims: Vec<(i64, Uuid)> = releases
            .iter()
            .map(|d| (d.row.id, d.row.claim_token))
            .collect();
        if let Err(e) = outbox::release(&mailer.pool, &claims).await {
            // They stay claimed until their lease runs out, and are then claimed again.
            tracing::warn!(error = %e, emails = claims.len(), "could not give back claimed emails");
        }
    }
    if !marks.is_empty() {
        let recorded: std::collections::HashSet<i64> = with_retry(mailer, &marks, record_marks)
            .await
            .into_iter()
            .collect();
        // The slots go on first; logging and counting can wait that long.
        marks.iter_mut().for_each(answer);
        for d in &marks {
            report(mailer, d, recorded.contains(&d.row.id));
        }
    }
    for mut d in failures {
        let recorded = with_retry(mailer, std::slice::from_ref(&d), record_failure).await;
        answer(&mut d);
        report(mailer, &d, recorded.contains(&d.row.id));
    }
}

/// Tells the slot that sent `d` that its outcome is written.
fn answer(d: &mut Done) {
    if let Some(tx) = d.recorded.take() {
        let _ = tx.send(());
    }
}

/// Runs `write` (which returns the ids it recorded) until it succeeds, trying again with
/// back-off while PostgreSQL cannot be reached, until the last lease in `batch` ends: giving up
/// earlier would let the lease run out and a sent email be sent again. After a try that was lost
/// with its connection (and may have committed all the same), rows finished under their claim
/// count as recorded. Trying on past a lease is harmless: every write is fenced by its claim.
async fn with_retry<'a, F, Fut>(mailer: &'a Mailer, batch: &'a [Done], write: F) -> Vec<i64>
where
    F: Fn(&'a Mailer, &'a [Done]) -> Fut,
    Fut: std::future::Future<Output = sqlx::Result<Vec<i64>>>,
{
    let lease_ends = batch
        .iter()
        .map(|d| d.lease_ends)
        .max()
        .unwrap_or_else(Instant::now);
    let mut wait = Duration::from_millis(100);
    let mut tried = false;
    loop {
        match tokio::time::timeout_at(lease_ends.into(), write(mailer, batch)).await {
            Ok(Ok(mut ids)) => {
                if tried && ids.len() < batch.len() {
                    let claims: Vec<(i64, Uuid)> = batch
                        .iter()
                        .map(|d| (d.row.id, d.row.claim_token))
                        .collect();
                    if let Ok(mine) = outbox::finished_under(&mailer.pool, &claims).await {
                        ids.extend(mine);
                    }
                }
                return ids;
            }
            Ok(Err(e)) if db::unreachable(&e) && Instant::now() + wait < lease_ends => {
                tried = true;
                tracing::warn!(
                    emails = batch.len(),
                    retry_in_ms = wait.as_millis() as u64,
                    "PostgreSQL unreachable: the outcomes of sends will be recorded again"
                );
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RECORD_BACKOFF_MAX);
            }
            Ok(Err(e)) => {
                // The rows stay claimed; their leases run out and they are tried again.
                tracing::warn!(error = %e, emails = batch.len(), "could not record the outcomes of sends");
                return Vec::new();
            }
            Err(_) => {
                tracing::warn!(
                    emails = batch.len(),
                    "the lease ran out before the outcomes of sends could be recorded"
                );
                return Vec::new();
            }
        }
    }
}

async fn record_marks(mailer: &Mailer, batch: &[Done]) -> sqlx::Result<Vec<i64>> {
    let marks: Vec<Marked> = batch
        .iter()
        .filter_map(|d| {
            let mark = match &d.record {
                Record::Sent { at, .. } => Mark::Sent { at: *at },
                Record::Retry {
                    wait,
                    error,
                    counted,
                } => Mark::Retry {
                    wait: *wait,
                    error: error.clone(),
                    counted: *counted,
                },
                Record::Cancelled(reason) => Mark::Cancelled {
                    reason: reason.clone(),
                },
                Record::Failed { .. } | Record::Release => return None,
            };
            Some(Marked {
                id: d.row.id,
                claim_token: d.row.claim_token,
                mark,
            })
        })
        .collect();
    outbox::record(&mailer.record_pool, &marks).await
}

/// One transaction: the failure, the suppression it implies and the triage copy are recorded
/// together or not at all (a stale claim records none of them).
async fn record_failure(mailer: &Mailer, batch: &[Done]) -> sqlx::Result<Vec<i64>> {
    let mut ids = Vec::new();
    for d in batch {
        let Record::Failed {
            error,
            suppress,
            triage,
            ..
        } = &d.record
        else {
            continue;
        };
        let row = &d.row;
        let mut tx = mailer.pool.begin().await?;
        if !outbox::mark_failed(&mut *tx, row.id, row.claim_token, error).await? {
            tx.rollback().await?;
            continue;
        }
        if *suppress {
            let reason = format!("refused permanently by the relay (outbox row {})", row.id);
            outbox::suppress(&mut tx, &row.recipients, &reason).await?;
        }
        if let Some((to, copy)) = triage {
            let to: Vec<&str> = to.iter().map(String::as_str).collect();
            outbox::enqueue_undeliverable(&mut tx, row.id, &to, copy).await?;
        }
        tx.commit().await?;
        ids.push(row.id);
    }
    Ok(ids)
}

/// Logs (ids only) and counts a recorded outcome; a stale one is counted as such.
fn report(mailer: &Mailer, d: &Done, recorded: bool) {
    let row = &d.row;
    if !recorded {
        stale(mailer, row);
        return;
    }
    let outcome = match &d.record {
        Record::Sent { at, by_clock } => {
            tracing::info!(outbox_id = row.id, kind = %row.kind, attempts = row.attempts, "email sent");
            if row.source_event.is_some() {
                let waited = (*at - row.created_at).to_std().unwrap_or_default();
                mailer
                    .metrics
                    .event_to_email
                    .with_label_values(&[kind_label(&row.kind)])
                    .observe(waited.as_secs_f64());
            }
            if let Ok(Job::SessionReminder(reminder)) = row.job.get() {
                observe_reminder_lateness(mailer, reminder, *by_clock);
            }
            if let Ok(Job::EnquiryEscalation(escalation)) = row.job.get() {
                let level = if escalation.level >= 2 { "2" } else { "1" };
                mailer.metrics.escalations.with_label_values(&[level]).inc();
            }
            Outcome::Sent
        }
        Record::Retry { wait, counted, .. } => {
            tracing::warn!(outbox_id = row.id, kind = %row.kind, attempts = row.attempts,
                counted = matches!(counted, Counted::Attempt),
                retry_in_secs = wait.as_secs_f64(), "email not sent: passing failure, will retry");
            Outcome::Retry
        }
        Record::Cancelled(reason) => {
            tracing::info!(outbox_id = row.id, kind = %row.kind, reason = %reason, "email not sent: no longer wanted");
            Outcome::Cancelled
        }
        Record::Failed {
            suppress,
            triage,
            summary,
            ..
        } => {
            if *suppress {
                tracing::warn!(outbox_id = row.id, kind = %row.kind,
                    "address refused for good: suppressed for bulk mail");
            }
            tracing::error!(outbox_id = row.id, kind = %row.kind, attempts = row.attempts,
                failure = summary, "email failed: it will not be tried again");
            if let Ok(Job::Enquiry(_)) = row.job.get() {
                match triage {
                    Some(_) => tracing::warn!(
                        outbox_id = row.id,
                        "enquiry undeliverable: a copy goes to the triage mailbox"
                    ),
                    None => tracing::error!(
                        outbox_id = row.id,
                        "enquiry undeliverable to the triage mailbox itself: it waits for an operator"
                    ),
                }
            }
            Outcome::Failed
        }
        Record::Release => return,
    };
    mailer.metrics.email_outcome(&row.kind, outcome);
}

/// A claim whose outcome matched nothing: counted and logged (ids only), otherwise ignored.
fn stale(mailer: &Mailer, row: &Claimed) {
    tracing::warn!(
        outbox_id = row.id,
        "outcome not recorded: the row was claimed again (the lease ran out) or finished meanwhile (a bounce failed it)"
    );
    mailer.metrics.stale_outcomes.inc();
}

/// When the relay accepted a session reminder (`accepted_at`, the worker's clock), against
/// when it was due. Rows queued before the due time was kept in the job are skipped.
fn observe_reminder_lateness(
    mailer: &Mailer,
    reminder: &Reminder,
    accepted_at: chrono::DateTime<chrono::Utc>,
) {
    if let Some(due) = reminder.due_at {
        let late = (accepted_at - due).to_std().unwrap_or_default();
        mailer.metrics.reminder_lateness.observe(late.as_secs_f64());
    }
}

async fn connect_listener(mailer: &Mailer) -> Option<PgListener> {
    let attempt = async {
        let mut l = PgListener::connect_with(&mailer.pool).await?;
        l.listen(NOTIFY_CHANNEL).await?;
        Ok::<_, sqlx::Error>(l)
    };
    match tokio::time::timeout(Duration::from_secs(5), attempt).await {
        Ok(Ok(l)) => Some(l),
        _ => None,
    }
}

//! Consuming: one connection with a consuming channel (bounded prefetch, manual acks) and a
//! confirming channel for dead letters and retries. Each delivery is handled in its own task;
//! the decision of what becomes of it is [`decide`], and is carried out by [`settle`]:
//!
//! - handled (or a duplicate): ack, after the transaction committed;
//! - can never succeed: published to the dead-letter exchange with `x-rpec-error` and
//!   `x-rpec-error-detail`, confirmed, then acked;
//! - failed for a passing reason of its own: published to the retry queue with a per-message
//!   expiry (the back-off) and `x-rpec-attempt`, confirmed, then acked; it expires back into the
//!   queue. After the last attempt it is dead-lettered with the last error;
//! - handling crashed (a panic): dead-lettered as `handler_failed`, never retried in a loop;
//! - PostgreSQL unreachable: not the event's fault. The delivery is held, unacknowledged and
//!   with no attempt counted, while the database is checked with back-off; no new delivery is
//!   taken meanwhile; when the database answers, it is handled again.
//!
//! Retries and dead letters are published `mandatory` with confirms. If one cannot be handed
//! over (no queue took it, the broker refused it, the channel is gone), the delivery waits a
//! moment and goes back to the queue, and the connection is opened anew with both channels
//! (and the topology declared again, which re-creates a queue someone deleted). A dropped
//! connection is re-established with doubling waits.
//!
//! A dead letter's detail names the field and the rule broken, never a value from the event,
//! and is at most [`MAX_DETAIL_BYTES`] long.

pub mod topology;

use crate::config::RetryPolicy;
use crate::domain::event::ErrorCode;
use crate::domain::{Envelope, EventType, ParseError};
use crate::handle::{self, Failure, Handled, Handlers};
use crate::metrics::Metrics;
use anyhow::Context;
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel};
use secrecy::{ExposeSecret, SecretString};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
pub use topology::Topology;

pub const HEADER_ERROR: &str = "x-rpec-error";
pub const HEADER_ERROR_DETAIL: &str = "x-rpec-error-detail";
pub const HEADER_ATTEMPT: &str = "x-rpec-attempt";
pub const HEADER_DEFERRALS: &str = "x-rpec-deferrals";
pub const HEADER_FIRST_SEEN: &str = "x-rpec-first-seen-ms";
pub const HEADER_LAST_ERROR: &str = "x-rpec-last-error";
/// When the worker dead-lettered the message (ms since the epoch), for `dead-letters list`.
pub const HEADER_DEAD_LETTERED_AT: &str = "x-rpec-dead-lettered-at";

/// The longest a dead letter's detail (or a retry's last error) may be. Headers travel in one
/// frame: an unbounded detail once made a dead letter larger than a frame, the broker closed the
/// connection, and the message came back for ever.
pub const MAX_DETAIL_BYTES: usize = 1024;

/// The longest a deferred event waits between two tries.
const MAX_DEFERRAL_DELAY: Duration = Duration::from_secs(30);

/// How often the dead-letter queue's depth is read for `/metrics`.
const DEAD_LETTER_DEPTH_EVERY: Duration = Duration::from_secs(5);

/// A declaration that only asks whether the queue is there (and how many messages it holds).
fn passive() -> lapin::options::QueueDeclareOptions {
    lapin::options::QueueDeclareOptions {
        passive: true,
        ..lapin::options::QueueDeclareOptions::default()
    }
}

/// What the consumer uses, and nothing more: built by the composition root (`worker`).
pub struct Consumer {
    /// The broker (it may hold credentials: never log it).
    pub amqp_url: SecretString,
    /// The names on the broker, and the limits of the queues behind them.
    pub topology: Topology,
    /// Deliveries held unacknowledged at once.
    pub prefetch: u16,
    /// A larger body is dead-lettered unread.
    pub max_body_bytes: usize,
    /// The back-off of events that failed for a passing reason of their own.
    pub retry: RetryPolicy,
    /// How long an event keeps waiting for a session not yet known.
    pub unknown_session_wait: Duration,
    /// How long the deliveries in hand may take to finish at shutdown.
    pub shutdown_grace: Duration,
    /// What each event is handled with. Their pool is also the database the consumer waits
    /// for when it cannot be reached.
    pub handlers: Handlers,
    pub metrics: Arc<Metrics>,
    /// Whether the consumer holds a working broker connection: set here, read by `/readyz`.
    pub amqp_ready: Arc<AtomicBool>,
}

/// How long a delivery whose retry or dead letter could not be handed over waits before it goes
/// back to the queue (so that a broken publishing channel is never a hot loop).
const FORWARD_FAILURE_DELAY: Duration = Duration::from_secs(1);

/// What a message has been through, carried in its headers from one delivery to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Redelivery {
    /// Attempts that failed for a passing reason, plus this one (from 1).
    pub attempt: u32,
    /// Times it waited for something not yet known (a session).
    pub deferrals: u32,
    /// When it was first deferred (ms since the epoch, wall clock).
    pub first_seen_ms: Option<i64>,
}

impl Default for Redelivery {
    fn default() -> Self {
        Redelivery {
            attempt: 1,
            deferrals: 0,
            first_seen_ms: None,
        }
    }
}

/// What becomes of one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Ack,
    DeadLetter {
        code: ErrorCode,
        detail: String,
    },
    Retry {
        next: Redelivery,
        delay: Duration,
        error: String,
    },
    /// PostgreSQL cannot be reached: not the event's fault. Hold it, wait for the database, and
    /// handle it again, with no attempt counted.
    Unavailable,
}

/// `detail` cut to at most [`MAX_DETAIL_BYTES`] (on a character boundary).
pub fn bounded(mut detail: String) -> String {
    if detail.len() > MAX_DETAIL_BYTES {
        let mut end = MAX_DETAIL_BYTES - '…'.len_utf8();
        while !detail.is_char_boundary(end) {
            end -= 1;
        }
        detail.truncate(end);
        detail.push('…');
    }
    detail
}

/// The `type` label for metrics: only the known event types, so that a message body cannot
/// create new series.
pub fn type_label(event_type: Option<&str>) -> &'static str {
    event_type
        .and_then(EventType::parse)
        .map_or("unknown", EventType::as_str)
}

/// Whether a handler's passing failure came from the database being out of reach (the event is
/// not at fault), as opposed to something about this event (a conflict, a deadlock).
async fn database_unreachable(consumer: &Consumer, error: &anyhow::Error) -> bool {
    crate::db::unreachable_cause(error) || !database_answers(consumer).await
}

async fn database_answers(consumer: &Consumer) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_secs(2),
            sqlx::query("SELECT 1").execute(&consumer.handlers.pool)
        )
        .await,
        Ok(Ok(_))
    )
}

/// Waits, checking with doubling waits, until PostgreSQL answers; false if `shutdown` came first.
async fn wait_for_database(consumer: &Consumer, shutdown: &CancellationToken) -> bool {
    let mut wait = Duration::from_millis(200);
    loop {
        if database_answers(consumer).await {
            return true;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}

/// The first judgement of a message body, before any handler or the database sees it: the
/// parsed envelope, or what its dead letter carries (`x-rpec-error` is the code, and
/// `x-rpec-error-detail` the detail, already bounded). The consumer and `rpec-notify validate`
/// both judge with this one function, so that what `validate` reports is what the dead-letter
/// queue would hold.
pub fn admit(body: &[u8], max_body_bytes: usize) -> Result<Envelope, ParseError> {
    Envelope::parse(body, max_body_bytes).map_err(|mut e| {
        e.detail = bounded(e.detail);
        e
    })
}

/// Parses and handles one message body.
pub async fn decide(
    consumer: &Consumer,
    body: &[u8],
    seen: Redelivery,
) -> (Option<String>, Decision) {
    let attempt = seen.attempt;
    let envelope = match admit(body, consumer.max_body_bytes) {
        Ok(e) => e,
        Err(e) => {
            return (
                e.event_type,
                Decision::DeadLetter {
                    code: e.code,
                    detail: e.detail,
                },
            );
        }
    };
    let event_type = Some(envelope.event_type.as_str().to_owned());
    // A panic in a handler is a bug of ours, not a passing failure: caught here, so that the
    // delivery is settled (not left holding a prefetch slot) and never retried in a loop. The
    // transaction it held is rolled back when it is dropped.
    let handled = AssertUnwindSafe(handle::handle(&consumer.handlers, &envelope))
        .catch_unwind()
        .await;
    let decision = match handled {
        Err(_panic) => {
            // The panic's message is not logged: it may quote a value from the event.
            tracing::error!(event_id = %envelope.id, event_type = envelope.event_type.as_str(),
                "handling the event crashed: dead-lettered as handler_failed");
            Decision::DeadLetter {
                code: ErrorCode::HandlerFailed,
                detail: format!(
                    "handling a {} event crashed; it was not applied",
                    envelope.event_type.as_str()
                ),
            }
        }
        Ok(Ok(Handled::Done)) => {
            consumer
                .metrics
                .events_consumed
                .with_label_values(&[envelope.event_type.as_str()])
                .inc();
            tracing::info!(event_id = %envelope.id, event_type = envelope.event_type.as_str(), "event handled");
            Decision::Ack
        }
        Ok(Ok(Handled::Duplicate)) => {
            consumer
                .metrics
                .events_duplicate
                .with_label_values(&[envelope.event_type.as_str()])
                .inc();
            tracing::info!(event_id = %envelope.id, "event already handled: ignored");
            Decision::Ack
        }
        Ok(Err(Failure::Permanent { code, detail })) => Decision::DeadLetter {
            code,
            detail: bounded(detail),
        },
        Ok(Err(Failure::Deferred { code, detail })) => {
            let now_ms = chrono::Utc::now().timestamp_millis();
            let first = seen.first_seen_ms.unwrap_or(now_ms);
            let waited = Duration::from_millis((now_ms - first).max(0) as u64);
            let limit = consumer.unknown_session_wait;
            if waited >= limit {
                Decision::DeadLetter {
                    code,
                    detail: bounded(format!("{detail} (waited {}s for it)", waited.as_secs())),
                }
            } else {
                let deferrals = seen.deferrals + 1;
                // Try again soon, and once more right at the deadline.
                let delay = consumer
                    .retry
                    .backoff(deferrals)
                    .min(MAX_DEFERRAL_DELAY)
                    .min(limit - waited)
                    .max(Duration::from_millis(1));
                tracing::info!(event_id = %envelope.id, deferrals, reason = code.as_str(), "event waits for something not yet known");
                Decision::Retry {
                    next: Redelivery {
                        deferrals,
                        first_seen_ms: Some(first),
                        ..seen
                    },
                    delay,
                    error: bounded(detail),
                }
            }
        }
        Ok(Err(Failure::Transient(e))) if database_unreachable(consumer, &e).await => {
            tracing::warn!(event_id = %envelope.id, error = %format!("{e:#}"),
                "PostgreSQL cannot be reached: the event is held until it can (no attempt counted)");
            Decision::Unavailable
        }
        Ok(Err(Failure::Transient(e))) => {
            let policy = consumer.retry;
            let error = bounded(format!("{e:#}"));
            if attempt >= policy.max_attempts {
                Decision::DeadLetter {
                    code: ErrorCode::RetriesExhausted,
                    detail: bounded(format!("failed {attempt} times; last error: {error}")),
                }
            } else {
                tracing::warn!(event_id = %envelope.id, attempt, error = %error, "event failed for a passing reason: will retry");
                Decision::Retry {
                    next: Redelivery {
                        attempt: attempt + 1,
                        ..seen
                    },
                    delay: policy.backoff_with_jitter(attempt),
                    error,
                }
            }
        }
    };
    (event_type, decision)
}

fn header<'a>(delivery: &'a Delivery, name: &str) -> Option<&'a AMQPValue> {
    delivery.properties.headers().as_ref()?.inner().get(name)
}

fn integer_header(delivery: &Delivery, name: &str) -> Option<i64> {
    match header(delivery, name)? {
        AMQPValue::LongUInt(n) => Some((*n).into()),
        AMQPValue::LongInt(n) => Some((*n).into()),
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::ShortShortUInt(n) => Some((*n).into()),
        AMQPValue::ShortUInt(n) => Some((*n).into()),
        _ => None,
    }
}

/// What the delivery's headers say it has been through.
fn redelivery_of(delivery: &Delivery) -> Redelivery {
    Redelivery {
        attempt: integer_header(delivery, HEADER_ATTEMPT)
            .unwrap_or(1)
            .clamp(1, u32::MAX.into()) as u32,
        deferrals: integer_header(delivery, HEADER_DEFERRALS)
            .unwrap_or(0)
            .clamp(0, u32::MAX.into()) as u32,
        first_seen_ms: integer_header(delivery, HEADER_FIRST_SEEN),
    }
}

/// Copies the original properties, persistent, with `extra` headers laid over its headers.
fn forwarded(delivery: &Delivery, extra: Vec<(&str, AMQPValue)>) -> BasicProperties {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    for (k, v) in extra {
        headers.insert(ShortString::from(k), v);
    }
    delivery
        .properties
        .clone()
        .with_headers(headers)
        .with_delivery_mode(2)
}

/// The retry or dead letter could not be handed over: the connection must be opened anew.
#[derive(Debug)]
struct ForwardFailed;

/// Carries out a decision. Only after the dead letter or retry is confirmed is the original
/// acked; if it cannot be handed over, the original waits a moment and goes back to the queue.
async fn settle(
    consumer: &Consumer,
    publisher: &Channel,
    topology: &Topology,
    delivery: &Delivery,
    event_type: Option<&str>,
    decision: Decision,
) -> Result<(), ForwardFailed> {
    let label = type_label(event_type);
    let forwarded_ok = match &decision {
        Decision::Ack => Ok(()),
        // Held by the caller until the database is back; never settled as such.
        Decision::Unavailable => Ok(()),
        Decision::DeadLetter { code, detail } => {
            consumer
                .metrics
                .events_dead_lettered
                .with_label_values(&[label, code.as_str()])
                .inc();
            tracing::warn!(reason = code.as_str(), detail = %detail, event_type = label, "message dead-lettered");
            let props = forwarded(
                delivery,
                vec![
                    (HEADER_ERROR, AMQPValue::LongString(code.as_str().into())),
                    (
                        HEADER_ERROR_DETAIL,
                        AMQPValue::LongString(detail.as_str().into()),
                    ),
                    (
                        HEADER_DEAD_LETTERED_AT,
                        AMQPValue::LongLongInt(chrono::Utc::now().timestamp_millis()),
                    ),
                ],
            );
            topology::publish_confirmed(
                publisher,
                &topology.dead_letter,
                delivery.routing_key.as_str(),
                &delivery.data,
                props,
            )
            .await
        }
        Decision::Retry { next, delay, error } => {
            consumer
                .metrics
                .events_retried
                .with_label_values(&[label])
                .inc();
            let mut headers = vec![
                (HEADER_ATTEMPT, AMQPValue::LongUInt(next.attempt)),
                (HEADER_DEFERRALS, AMQPValue::LongUInt(next.deferrals)),
                (
                    HEADER_LAST_ERROR,
                    AMQPValue::LongString(error.as_str().into()),
                ),
            ];
            if let Some(first) = next.first_seen_ms {
                headers.push((HEADER_FIRST_SEEN, AMQPValue::LongLongInt(first)));
            }
            let props = forwarded(delivery, headers)
                .with_expiration(delay.as_millis().max(1).to_string().into());
            topology::publish_confirmed(publisher, "", &topology.retry, &delivery.data, props).await
        }
    };
    let (settled, result) = match forwarded_ok {
        Ok(()) => (delivery.ack(BasicAckOptions::default()).await, Ok(())),
        Err(e) => {
            consumer.metrics.forward_failures.inc();
            tracing::warn!(error = %e, event_type = label,
                "could not hand the message over: it goes back to the queue and the connection is opened anew");
            tokio::time::sleep(FORWARD_FAILURE_DELAY).await;
            (
                delivery.reject(BasicRejectOptions { requeue: true }).await,
                Err(ForwardFailed),
            )
        }
    };
    if let Err(e) = settled {
        // The channel is gone: the broker redelivers, and de-duplication makes that harmless.
        tracing::warn!(error = %e, "could not settle a delivery");
    }
    result
}

/// Handles one delivery to the end: held while the database is unreachable (with `db_up` saying
/// so, which stops the consumer taking more), then settled.
async fn process(
    consumer: &Consumer,
    publisher: &Channel,
    topology: &Topology,
    delivery: Delivery,
    db_up: &watch::Sender<bool>,
    shutdown: &CancellationToken,
) -> Result<(), ForwardFailed> {
    let seen = redelivery_of(&delivery);
    let started = std::time::Instant::now();
    loop {
        let (event_type, decision) = decide(consumer, &delivery.data, seen).await;
        if decision == Decision::Unavailable {
            db_up.send_replace(false);
            consumer.metrics.consumer_waiting_for_database.set(1);
            if !wait_for_database(consumer, shutdown).await {
                // Shutting down: back to the queue, untouched, for the next worker.
                let _ = delivery.reject(BasicRejectOptions { requeue: true }).await;
                return Ok(());
            }
            if !db_up.send_replace(true) {
                consumer.metrics.consumer_waiting_for_database.set(0);
                tracing::info!("PostgreSQL answers again: handling resumes");
            }
            continue;
        }
        // A worker killed between the commit and the ack (fault tests): the broker redelivers.
        fail::fail_point!("consume::after_commit", |_| -> Result<(), ForwardFailed> {
            std::process::abort()
        });
        let settled = settle(
            consumer,
            publisher,
            topology,
            &delivery,
            event_type.as_deref(),
            decision,
        )
        .await;
        consumer
            .metrics
            .event_handling
            .with_label_values(&[type_label(event_type.as_deref())])
            .observe(started.elapsed().as_secs_f64());
        return settled;
    }
}

/// Why the consumer stopped.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    /// Nothing a reconnect can mend (a queue declared differently before): the worker stops.
    #[error(transparent)]
    Fatal(topology::DeclareError),
}

/// Consumes until `shutdown`, reconnecting whenever the broker connection is lost. Returns an
/// error only for what reconnecting cannot mend.
pub async fn run(consumer: Arc<Consumer>, shutdown: CancellationToken) -> Result<(), ConsumeError> {
    let topology = &consumer.topology;
    let initial = Duration::from_millis(250);
    let mut wait = initial;
    while !shutdown.is_cancelled() {
        match consume(&consumer, topology, &shutdown).await {
            Ok(()) => break,
            Err(Lost::Fatal(e)) => {
                consumer.amqp_ready.store(false, Ordering::SeqCst);
                tracing::error!(error = %e, "cannot consume");
                return Err(ConsumeError::Fatal(e));
            }
            Err(Lost::After { consumed, error }) => {
                consumer.amqp_ready.store(false, Ordering::SeqCst);
                if consumed {
                    // It worked for a while: the next failure starts the waits afresh.
                    wait = initial;
                }
                tracing::warn!(error = %format!("{error:#}"), retry_in_ms = wait.as_millis() as u64, "broker connection lost");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
    }
    tracing::info!("consumer stopped");
    Ok(())
}

/// How one connection's life ended.
enum Lost {
    Fatal(topology::DeclareError),
    /// `consumed`: whether it got as far as consuming.
    After {
        consumed: bool,
        error: anyhow::Error,
    },
}

fn lost_before_consuming(error: impl Into<anyhow::Error>) -> Lost {
    Lost::After {
        consumed: false,
        error: error.into(),
    }
}

/// One connection's life: returns Ok at shutdown, Err when the connection fails.
async fn consume(
    consumer: &Arc<Consumer>,
    topology: &Topology,
    shutdown: &CancellationToken,
) -> Result<(), Lost> {
    let connection = topology::connect(
        consumer.amqp_url.expose_secret(),
        &format!("rpec-notify consumer {}", topology.queue),
    )
    .await
    .context("Failed to connect to RabbitMQ")
    .map_err(lost_before_consuming)?;
    let setup = async {
        let channel = connection.create_channel().await?;
        match topology::declare(&channel, topology).await {
            Ok(()) => {}
            Err(e) if e.is_permanent() => return Ok(Err(Lost::Fatal(e))),
            Err(e) => return Err(anyhow::Error::new(e).context("Failed to declare the topology")),
        }
        channel
            .basic_qos(consumer.prefetch, BasicQosOptions::default())
            .await?;
        let publisher = connection.create_channel().await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok::<_, anyhow::Error>(Ok((channel, publisher)))
    };
    let (channel, publisher) = match setup.await {
        Ok(Ok(channels)) => channels,
        Ok(Err(fatal)) => {
            let _ = connection.close(200, "cannot consume").await;
            return Err(fatal);
        }
        Err(e) => {
            let _ = connection.close(200, "set-up failed").await;
            return Err(lost_before_consuming(e));
        }
    };
    let tag = format!("rpec-notify-{}", uuid::Uuid::new_v4());
    let mut deliveries = channel
        .basic_consume(
            &topology.queue,
            &tag,
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(lost_before_consuming)?;
    consumer.amqp_ready.store(true, Ordering::SeqCst);
    tracing::info!(queue = %topology.queue, "consuming");

    let (db_up, mut db_state) = watch::channel(true);
    let db_up = Arc::new(db_up);
    let forward_failed = Arc::new(Notify::new());
    let mut in_hand = JoinSet::new();
    let mut depth_tick = tokio::time::interval(DEAD_LETTER_DEPTH_EVERY);
    let result = loop {
        let taking = *db_state.borrow_and_update();
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            _ = depth_tick.tick() => {
                match channel.queue_declare(&topology.dead_letter, passive(), FieldTable::default()).await {
                    Ok(q) => consumer.metrics.dead_letter_depth.set(q.message_count().into()),
                    Err(e) => break Err(anyhow::Error::new(e).context("the dead-letter queue is gone")),
                }
            }
            _ = forward_failed.notified() => {
                break Err(anyhow::anyhow!("a retry or dead letter could not be handed over"));
            }
            // While the database is out of reach, no new delivery is taken: those in hand wait
            // for it, and the rest stay on the queue for workers that can reach it.
            _ = db_state.changed(), if !taking => {}
            Some(joined) = in_hand.join_next(), if !in_hand.is_empty() => {
                if let Err(e) = joined {
                    // Its delivery was never settled: only a new channel gives it back.
                    break Err(anyhow::Error::new(e).context("a delivery's task failed"));
                }
            }
            next = deliveries.next(), if taking => match next {
                Some(Ok(delivery)) => {
                    let consumer = consumer.clone();
                    let publisher = publisher.clone();
                    let topology = topology.clone();
                    let db_up = db_up.clone();
                    let shutdown = shutdown.clone();
                    let forward_failed = forward_failed.clone();
                    in_hand.spawn(async move {
                        let settled = process(&consumer, &publisher, &topology, delivery, &db_up, &shutdown).await;
                        if settled.is_err() {
                            forward_failed.notify_one();
                        }
                    });
                }
                Some(Err(e)) => break Err(anyhow::Error::new(e).context("the consumer failed")),
                None => break Err(anyhow::anyhow!("the broker cancelled the consumer")),
            },
        }
    };
    consumer.amqp_ready.store(false, Ordering::SeqCst);
    // Stop new deliveries, then finish and settle what is in hand before closing the channel
    // (deliveries prefetched but not started are returned to the queue when it closes).
    let _ = channel
        .basic_cancel(&tag, BasicCancelOptions::default())
        .await;
    let finished = tokio::time::timeout(consumer.shutdown_grace, async {
        while in_hand.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        tracing::warn!(
            left = in_hand.len(),
            "shutdown grace ran out with deliveries in hand: they will be redelivered"
        );
        in_hand.abort_all();
    }
    let _ = channel.close(200, "shutting down").await;
    let _ = publisher.close(200, "shutting down").await;
    let _ = connection.close(200, "shutting down").await;
    result.map_err(|error| Lost::After {
        consumed: true,
        error,
    })
}

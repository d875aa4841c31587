//! Consuming: one connection with a consuming channel (bounded prefetch, manual acks) and a
//! confirming channel for dead letters and retries. Each delivery is handled in its own task;
//! the decision of what becomes of it is [`decide`], and is carried out by [`settle`]:
//!
//! - handled (or a duplicate): ack, after the transaction committed;
//! - can never succeed: published to the dead-letter exchange with `x-rpec-error` and
//!   `x-rpec-error-detail`, confirmed, then acked;
//! - failed for a passing reason: published to the retry queue with a per-message expiry (the
//!   back-off) and `x-rpec-attempt`, confirmed, then acked; it expires back into the queue. After
//!   the last attempt it is dead-lettered with the last error.
//!
//! If publishing the dead letter or retry fails, the delivery is rejected with requeue: nothing
//! is lost. A dropped connection is re-established with doubling waits.

pub mod topology;

use crate::domain::event::ErrorCode;
use crate::domain::Envelope;
use crate::handle::{self, Failure, Handled};
use crate::worker::Shared;
use anyhow::Context;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel};
use secrecy::ExposeSecret;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
pub use topology::Topology;

pub const HEADER_ERROR: &str = "x-rpec-error";
pub const HEADER_ERROR_DETAIL: &str = "x-rpec-error-detail";
pub const HEADER_ATTEMPT: &str = "x-rpec-attempt";
pub const HEADER_DEFERRALS: &str = "x-rpec-deferrals";
pub const HEADER_FIRST_SEEN: &str = "x-rpec-first-seen-ms";

/// The longest a deferred event waits between two tries.
const MAX_DEFERRAL_DELAY: Duration = Duration::from_secs(30);

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
}

/// Parses and handles one message body.
pub async fn decide(shared: &Shared, body: &[u8], seen: Redelivery) -> (Option<String>, Decision) {
    let attempt = seen.attempt;
    let envelope = match Envelope::parse(body, shared.settings.max_body_bytes) {
        Ok(e) => e,
        Err(e) => {
            let detail = e.detail.clone();
            return (
                e.event_type,
                Decision::DeadLetter {
                    code: e.code,
                    detail,
                },
            );
        }
    };
    let event_type = Some(envelope.event_type.as_str().to_owned());
    let decision = match handle::handle(shared, &envelope).await {
        Ok(Handled::Done) => {
            shared
                .metrics
                .events_consumed
                .with_label_values(&[envelope.event_type.as_str()])
                .inc();
            tracing::info!(event_id = %envelope.id, event_type = envelope.event_type.as_str(), "event handled");
            Decision::Ack
        }
        Ok(Handled::Duplicate) => {
            shared
                .metrics
                .events_duplicate
                .with_label_values(&[envelope.event_type.as_str()])
                .inc();
            tracing::info!(event_id = %envelope.id, "event already handled: ignored");
            Decision::Ack
        }
        Err(Failure::Permanent { code, detail }) => Decision::DeadLetter { code, detail },
        Err(Failure::Deferred { code, detail }) => {
            let now_ms = chrono::Utc::now().timestamp_millis();
            let first = seen.first_seen_ms.unwrap_or(now_ms);
            let waited = Duration::from_millis((now_ms - first).max(0) as u64);
            let limit = shared.settings.unknown_session_wait;
            if waited >= limit {
                Decision::DeadLetter {
                    code,
                    detail: format!("{detail} (waited {}s for it)", waited.as_secs()),
                }
            } else {
                let deferrals = seen.deferrals + 1;
                // Try again soon, and once more right at the deadline.
                let delay = shared
                    .settings
                    .consume_retry
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
                    error: detail,
                }
            }
        }
        Err(Failure::Transient(e)) => {
            let policy = shared.settings.consume_retry;
            let error = format!("{e:#}");
            if attempt >= policy.max_attempts {
                Decision::DeadLetter {
                    code: ErrorCode::RetriesExhausted,
                    detail: format!("failed {attempt} times; last error: {error}"),
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

/// Copies the original properties, with `extra` headers laid over its headers.
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

async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    props: BasicProperties,
) -> anyhow::Result<()> {
    let confirm = channel
        .basic_publish(exchange, key, BasicPublishOptions::default(), body, props)
        .await?
        .await?;
    anyhow::ensure!(confirm.is_ack(), "the broker did not confirm the message");
    Ok(())
}

/// Carries out a decision. Only after the dead letter or retry is confirmed is the original acked.
async fn settle(
    shared: &Shared,
    publisher: &Channel,
    topology: &Topology,
    delivery: &Delivery,
    event_type: Option<&str>,
    decision: Decision,
) {
    let label = event_type.unwrap_or("unknown");
    let forwarded_ok = match &decision {
        Decision::Ack => Ok(()),
        Decision::DeadLetter { code, detail } => {
            shared
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
                ],
            );
            publish_confirmed(
                publisher,
                &topology.dead_letter,
                delivery.routing_key.as_str(),
                &delivery.data,
                props,
            )
            .await
        }
        Decision::Retry { next, delay, error } => {
            shared
                .metrics
                .events_retried
                .with_label_values(&[label])
                .inc();
            let mut headers = vec![
                (HEADER_ATTEMPT, AMQPValue::LongUInt(next.attempt)),
                (HEADER_DEFERRALS, AMQPValue::LongUInt(next.deferrals)),
                (
                    "x-rpec-last-error",
                    AMQPValue::LongString(error.as_str().into()),
                ),
            ];
            if let Some(first) = next.first_seen_ms {
                headers.push((HEADER_FIRST_SEEN, AMQPValue::LongLongInt(first)));
            }
            let props = forwarded(delivery, headers)
                .with_expiration(delay.as_millis().max(1).to_string().into());
            publish_confirmed(publisher, "", &topology.retry, &delivery.data, props).await
        }
    };
    let settled = match forwarded_ok {
        Ok(()) => delivery.ack(BasicAckOptions::default()).await,
        Err(e) => {
            tracing::warn!(error = %e, "could not forward the message: returning it to the queue");
            delivery.reject(BasicRejectOptions { requeue: true }).await
        }
    };
    if let Err(e) = settled {
        // The channel is gone: the broker redelivers, and de-duplication makes that harmless.
        tracing::warn!(error = %e, "could not settle a delivery");
    }
}

/// Consumes until `shutdown`, reconnecting whenever the broker connection is lost.
pub async fn run(shared: Arc<Shared>, shutdown: CancellationToken) {
    let topology = Topology::new(&shared.settings.exchange, &shared.settings.queue);
    let mut wait = Duration::from_millis(250);
    while !shutdown.is_cancelled() {
        match consume(&shared, &topology, &shutdown).await {
            Ok(()) => break,
            Err(e) => {
                shared.amqp_ready.store(false, Ordering::SeqCst);
                tracing::warn!(error = %format!("{e:#}"), retry_in_ms = wait.as_millis() as u64, "broker connection lost");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
    }
    tracing::info!("consumer stopped");
}

/// One connection's life: returns Ok at shutdown, Err when the connection fails.
async fn consume(
    shared: &Arc<Shared>,
    topology: &Topology,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let connection = topology::connect(
        shared.settings.amqp_url.expose_secret(),
        &format!("rpec-notify consumer {}", topology.queue),
    )
    .await
    .context("Failed to connect to RabbitMQ")?;
    let channel = connection.create_channel().await?;
    topology::declare(&channel, topology)
        .await
        .context("Failed to declare the topology")?;
    channel
        .basic_qos(shared.settings.prefetch, BasicQosOptions::default())
        .await?;
    let publisher = connection.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let tag = format!("rpec-notify-{}", uuid::Uuid::new_v4());
    let mut consumer = channel
        .basic_consume(
            &topology.queue,
            &tag,
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    shared.amqp_ready.store(true, Ordering::SeqCst);
    tracing::info!(queue = %topology.queue, "consuming");

    let mut in_hand = JoinSet::new();
    let result = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            Some(_) = in_hand.join_next(), if !in_hand.is_empty() => {}
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    let shared = shared.clone();
                    let publisher = publisher.clone();
                    let topology = topology.clone();
                    in_hand.spawn(async move {
                        let seen = redelivery_of(&delivery);
                        let (event_type, decision) = decide(&shared, &delivery.data, seen).await;
                        settle(&shared, &publisher, &topology, &delivery, event_type.as_deref(), decision).await;
                    });
                }
                Some(Err(e)) => break Err(anyhow::Error::new(e).context("the consumer failed")),
                None => break Err(anyhow::anyhow!("the broker cancelled the consumer")),
            },
        }
    };
    shared.amqp_ready.store(false, Ordering::SeqCst);
    // Stop new deliveries, then finish and settle what is in hand before closing the channel
    // (deliveries prefetched but not started are returned to the queue when it closes).
    let _ = channel
        .basic_cancel(&tag, BasicCancelOptions::default())
        .await;
    let finished = tokio::time::timeout(shared.settings.shutdown_grace, async {
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
    result
}

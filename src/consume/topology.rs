//! The broker topology, declared idempotently by the worker at start-up and by `publish`.
//!
//! Every queue is a **quorum queue**: replicated across a RabbitMQ cluster's nodes, durable, and
//! counting how often each message went back to the queue, so that a message that crashes every
//! worker that takes it is dead-lettered by the broker after `delivery_limit` returns. Messages
//! that the broker itself dead-letters (expired retries going back to the main queue, messages
//! past the delivery limit) are moved at-least-once, which quorum queues offer only with
//! `reject-publish` overflow.

use crate::config::Settings;
use crate::domain::EventType;
use lapin::options::{
    BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use std::time::Duration;

/// The names on the broker, and the limits of the queues behind them.
#[derive(Debug, Clone)]
pub struct Topology {
    /// The topic exchange publishers send to; the routing key is the event type.
    pub exchange: String,
    /// The worker's durable queue.
    pub queue: String,
    /// Exchange and queue (same name) holding messages that can never succeed.
    pub dead_letter: String,
    /// Messages waiting out a back-off; each expires back into `queue`.
    pub retry: String,
    /// Returns to the queue after which the broker dead-letters a message.
    pub delivery_limit: u32,
    /// How long a dead letter is kept (they hold personal data).
    pub dead_letter_ttl: Duration,
    /// How many dead letters are kept at most.
    pub dead_letter_max: u32,
}

impl Topology {
    /// The names for `exchange` and `queue` with the shipped limits (tests, tools).
    pub fn new(exchange: &str, queue: &str) -> Topology {
        Topology {
            exchange: exchange.to_owned(),
            queue: queue.to_owned(),
            dead_letter: format!("{queue}.dead-letter"),
            retry: format!("{queue}.retry"),
            delivery_limit: 20,
            dead_letter_ttl: Duration::from_secs(30 * 86_400),
            dead_letter_max: 100_000,
        }
    }

    /// The topology the settings describe (names and limits).
    pub fn from_settings(s: &Settings) -> Topology {
        Topology {
            delivery_limit: s.delivery_limit,
            dead_letter_ttl: s.dead_letter_ttl,
            dead_letter_max: s.dead_letter_max_messages,
            ..Topology::new(&s.exchange, &s.queue)
        }
    }

    /// Every queue the worker declares.
    pub fn queues(&self) -> [&str; 3] {
        [&self.queue, &self.retry, &self.dead_letter]
    }
}

/// Connects with a `name` that shows in the broker's connection list (operators can tell the
/// worker's connections from a publisher's).
pub async fn connect(url: &str, name: &str) -> lapin::Result<Connection> {
    let properties = ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio)
        .with_connection_name(name.into());
    Connection::connect(url, properties).await
}

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

fn string(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

fn quorum() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), string("quorum"));
    args
}

/// A queue whose messages the broker moves on at-least-once (when they expire or pass the
/// delivery limit) to `exchange` with `routing_key`.
fn quorum_dead_lettering(t: &Topology, exchange: &str, routing_key: Option<&str>) -> FieldTable {
    let mut args = quorum();
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(t.delivery_limit.into()),
    );
    args.insert("x-dead-letter-exchange".into(), string(exchange));
    if let Some(key) = routing_key {
        args.insert("x-dead-letter-routing-key".into(), string(key));
    }
    args.insert("x-dead-letter-strategy".into(), string("at-least-once"));
    args.insert("x-overflow".into(), string("reject-publish"));
    args
}

/// Why the topology could not be declared.
#[derive(Debug, thiserror::Error)]
pub enum DeclareError {
    /// A queue of the same name exists with other arguments (a classic queue from an earlier
    /// version, say): the broker will refuse it every time, so the worker must not loop on it.
    #[error(
        "queue {queue:?} already exists with other settings (a classic queue from before \
         version 0.2?); this version needs a quorum queue. To migrate: stop the publishers, let \
         the old worker empty the queue, delete it (rabbitmqctl delete_queue {queue:?}, and the \
         same for \"{queue}.retry\" and \"{queue}.dead-letter\" once their messages are handled), \
         then start this version, which declares them anew. The broker said: {reply}"
    )]
    Mismatch { queue: String, reply: String },
    #[error(transparent)]
    Broker(#[from] lapin::Error),
}

impl DeclareError {
    /// Whether trying again can help (a broker that went away) or cannot (a mismatch).
    pub fn is_permanent(&self) -> bool {
        matches!(self, DeclareError::Mismatch { .. })
    }
}

async fn declare_queue(
    channel: &Channel,
    name: &str,
    args: FieldTable,
) -> Result<(), DeclareError> {
    channel
        .queue_declare(name, durable_queue(), args)
        .await
        .map(|_| ())
        .map_err(|e| {
            let reply = e.to_string();
            if reply.contains("PRECONDITION_FAILED") || reply.contains("inequivalent arg") {
                DeclareError::Mismatch {
                    queue: name.to_owned(),
                    reply,
                }
            } else {
                DeclareError::Broker(e)
            }
        })
}

/// Declares everything; safe to run any number of times.
pub async fn declare(channel: &Channel, t: &Topology) -> Result<(), DeclareError> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            &t.exchange,
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            &t.dead_letter,
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        )
        .await?;
    // Dead letters are kept for a bounded time and number: they hold whole events.
    let mut dead_letter_args = quorum();
    dead_letter_args.insert(
        "x-message-ttl".into(),
        AMQPValue::LongLongInt(t.dead_letter_ttl.as_millis().min(i64::MAX as u128) as i64),
    );
    dead_letter_args.insert(
        "x-max-length".into(),
        AMQPValue::LongLongInt(t.dead_letter_max.into()),
    );
    declare_queue(channel, &t.dead_letter, dead_letter_args).await?;
    channel
        .queue_bind(
            &t.dead_letter,
            &t.dead_letter,
            "",
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    // Past the delivery limit, the broker moves a message to the dead-letter exchange.
    declare_queue(
        channel,
        &t.queue,
        quorum_dead_lettering(t, &t.dead_letter, None),
    )
    .await?;
    for event_type in EventType::ALL {
        channel
            .queue_bind(
                &t.queue,
                &t.exchange,
                event_type.as_str(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }

    // Expired messages go through the default exchange straight back to the worker's queue.
    declare_queue(
        channel,
        &t.retry,
        quorum_dead_lettering(t, "", Some(&t.queue)),
    )
    .await?;
    Ok(())
}

/// Why a message could not be handed to the broker for good.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// No queue took it (`mandatory`): it would have been lost.
    #[error("no queue took the message")]
    Returned,
    /// The broker refused it (a nack: a queue at its limit, an internal error).
    #[error("the broker did not confirm the message")]
    Nacked,
    #[error(transparent)]
    Broker(#[from] lapin::Error),
}

/// Publishes `mandatory` on a channel in confirm mode and waits for the broker's confirm: Ok
/// only when a queue holds the message.
pub async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<(), PublishError> {
    let mandatory = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    let confirm = channel
        .basic_publish(exchange, routing_key, mandatory, body, properties)
        .await?
        .await?;
    match confirm {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => Err(PublishError::Returned),
        Confirmation::Nack(_) | Confirmation::NotRequested => Err(PublishError::Nacked),
    }
}

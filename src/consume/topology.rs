//! The broker topology, declared idempotently by the worker at start-up and by `publish`.

use crate::domain::EventType;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

/// The names on the broker.
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
}

impl Topology {
    pub fn new(exchange: &str, queue: &str) -> Topology {
        Topology {
            exchange: exchange.to_owned(),
            queue: queue.to_owned(),
            dead_letter: format!("{queue}.dead-letter"),
            retry: format!("{queue}.retry"),
        }
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

/// Declares everything; safe to run any number of times.
pub async fn declare(channel: &Channel, t: &Topology) -> lapin::Result<()> {
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
    channel
        .queue_declare(&t.dead_letter, durable_queue(), FieldTable::default())
        .await?;
    channel
        .queue_bind(
            &t.dead_letter,
            &t.dead_letter,
            "",
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    let mut main_args = FieldTable::default();
    main_args.insert("x-dead-letter-exchange".into(), string(&t.dead_letter));
    channel
        .queue_declare(&t.queue, durable_queue(), main_args)
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
    let mut retry_args = FieldTable::default();
    retry_args.insert("x-dead-letter-exchange".into(), string(""));
    retry_args.insert("x-dead-letter-routing-key".into(), string(&t.queue));
    channel
        .queue_declare(&t.retry, durable_queue(), retry_args)
        .await?;
    Ok(())
}

//! Publishing events as the website does (persistent, mandatory, with publisher confirms), but
//! without waiting for each confirm before the next message: a paced stream of 200 enquiries a
//! second cannot wait for a disk flush per message. Every confirm is checked by `confirmed`.
//!
//! The machine's RabbitMQ is shared, and other suites restart it (the fault suite does): a
//! publisher whose connection has gone connects again and publishes again what was not
//! confirmed, as a website's would (the worker's de-duplication by event id absorbs a second
//! copy). How often that happened is counted, so that a row can say its figures include an
//! outage of the broker.

use anyhow::{bail, Context};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::publisher_confirm::Confirmation;
use lapin::{BasicProperties, Channel, Connection};
use rpec_notify::consume::topology;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// How long one message may take to be published through broker outages before the row fails.
const PATIENCE: Duration = Duration::from_secs(180);

/// What became of one confirm.
enum Confirmed {
    Ack,
    /// The broker refused it (a nack, or returned: no queue took it).
    Refused(String),
    /// The connection went before the confirm came: it is published again.
    Lost,
}

struct Pending {
    key: String,
    body: Vec<u8>,
    confirm: JoinHandle<Confirmed>,
}

pub struct Publisher {
    exchange: String,
    conn: Option<(Connection, Channel)>,
    pending: Vec<Pending>,
    /// Connections opened again after the first.
    reconnects: usize,
    opened: bool,
}

impl Publisher {
    pub async fn new(exchange: &str) -> anyhow::Result<Publisher> {
        let mut p = Publisher {
            exchange: exchange.to_owned(),
            conn: None,
            pending: Vec::new(),
            reconnects: 0,
            opened: false,
        };
        p.channel().await?;
        Ok(p)
    }

    async fn open() -> anyhow::Result<(Connection, Channel)> {
        let conn = tokio::time::timeout(
            Duration::from_secs(10),
            topology::connect(&crate::helpers::amqp_url(), "rpec-notify bench"),
        )
        .await
        .context("RabbitMQ did not answer")?
        .context("RabbitMQ (TEST_AMQP_URL)")?;
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok((conn, channel))
    }

    async fn channel(&mut self) -> anyhow::Result<Channel> {
        if let Some((_, ch)) = &self.conn {
            if ch.status().connected() {
                return Ok(ch.clone());
            }
        }
        self.drop_connection().await;
        if self.opened {
            self.reconnects += 1;
        }
        self.opened = true;
        let (conn, ch) = Self::open().await?;
        self.conn = Some((conn, ch.clone()));
        Ok(ch)
    }

    async fn drop_connection(&mut self) {
        if let Some((conn, _)) = self.conn.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.close(200, "again")).await;
        }
    }

    /// Hands one message to the broker (connecting again while it is away); its confirm is
    /// awaited later, by `confirmed`.
    pub async fn send(&mut self, routing_key: &str, body: &[u8]) -> anyhow::Result<()> {
        let deadline = Instant::now() + PATIENCE;
        let mut wait = Duration::from_millis(100);
        loop {
            let attempt = async {
                let ch = self.channel().await?;
                let props = BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into());
                let options = BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                };
                let confirm = tokio::time::timeout(
                    Duration::from_secs(10),
                    ch.basic_publish(&self.exchange, routing_key, options, body, props),
                )
                .await
                .context("publishing took over 10 s")??;
                anyhow::Ok(confirm)
            };
            match attempt.await {
                Ok(confirm) => {
                    self.pending.push(Pending {
                        key: routing_key.to_owned(),
                        body: body.to_vec(),
                        confirm: tokio::spawn(async move {
                            match tokio::time::timeout(Duration::from_secs(60), confirm).await {
                                Ok(Ok(Confirmation::Ack(None))) => Confirmed::Ack,
                                Ok(Ok(Confirmation::Ack(Some(_)))) => {
                                    Confirmed::Refused("returned: no queue took it".into())
                                }
                                Ok(Ok(Confirmation::Nack(_))) => Confirmed::Refused("nack".into()),
                                // No confirm at all: the channel or connection went.
                                _ => Confirmed::Lost,
                            }
                        }),
                    });
                    return Ok(());
                }
                Err(e) => {
                    if Instant::now() > deadline {
                        return Err(
                            e.context(format!("could not publish for {} s", PATIENCE.as_secs()))
                        );
                    }
                    self.drop_connection().await;
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Publishes an event (its routing key is its type).
    pub async fn event(&mut self, event: &serde_json::Value) -> anyhow::Result<()> {
        let key = event["type"].as_str().context("an event type")?.to_owned();
        self.send(&key, &serde_json::to_vec(event)?).await
    }

    /// Waits for the confirm of everything sent so far, publishing again what a lost
    /// connection left unconfirmed; fails if the broker refused any.
    pub async fn confirmed(&mut self) -> anyhow::Result<usize> {
        let mut ok = 0;
        for _round in 0..10 {
            let mut again = Vec::new();
            let mut refused = Vec::new();
            for p in std::mem::take(&mut self.pending) {
                match p.confirm.await {
                    Ok(Confirmed::Ack) => ok += 1,
                    Ok(Confirmed::Refused(why)) => refused.push(why),
                    Ok(Confirmed::Lost) | Err(_) => again.push((p.key, p.body)),
                }
            }
            if let Some(first) = refused.first() {
                bail!(
                    "{} message(s) refused by the broker, the first: {first}",
                    refused.len()
                );
            }
            if again.is_empty() {
                return Ok(ok);
            }
            for (key, body) in again {
                self.send(&key, &body).await?;
            }
        }
        bail!("messages still unconfirmed after publishing them ten times")
    }

    /// How often the connection to the broker was found gone (the figures of a row that saw
    /// one include an outage of the broker).
    pub fn outages(&self) -> usize {
        let now = match &self.conn {
            Some((_, ch)) => !ch.status().connected(),
            None => true,
        };
        self.reconnects + usize::from(now)
    }

    pub async fn close(mut self) -> anyhow::Result<usize> {
        let n = self.confirmed().await;
        self.drop_connection().await;
        n
    }
}

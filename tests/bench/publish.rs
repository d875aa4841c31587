//! Publishing events as the website does (persistent, mandatory, with publisher confirms), but
//! without waiting for each confirm before the next message: a paced stream of 200 enquiries a
//! second cannot wait for a disk flush per message. Every confirm is checked by `confirmed`.

use anyhow::{bail, Context};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::publisher_confirm::Confirmation;
use lapin::{BasicProperties, Channel, Connection};
use rpec_notify::consume::topology;
use std::time::Duration;
use tokio::task::JoinHandle;

pub struct Publisher {
    conn: Connection,
    channel: Channel,
    exchange: String,
    confirms: Vec<JoinHandle<Result<(), String>>>,
}

impl Publisher {
    pub async fn new(exchange: &str) -> anyhow::Result<Publisher> {
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
        Ok(Publisher {
            conn,
            channel,
            exchange: exchange.to_owned(),
            confirms: Vec::new(),
        })
    }

    /// Hands one message to the broker; its confirm is awaited later, by `confirmed`.
    pub async fn send(&mut self, routing_key: &str, body: &[u8]) -> anyhow::Result<()> {
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let confirm = tokio::time::timeout(
            Duration::from_secs(10),
            self.channel
                .basic_publish(&self.exchange, routing_key, options, body, props),
        )
        .await
        .context("publishing took over 10 s")??;
        self.confirms.push(tokio::spawn(async move {
            match tokio::time::timeout(Duration::from_secs(60), confirm).await {
                Ok(Ok(Confirmation::Ack(None))) => Ok(()),
                Ok(Ok(Confirmation::Ack(Some(_)))) => Err("returned: no queue took it".into()),
                Ok(Ok(other)) => Err(format!("not confirmed: {other:?}")),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("no confirm within 60 s".into()),
            }
        }));
        Ok(())
    }

    /// Publishes an event (its routing key is its type).
    pub async fn event(&mut self, event: &serde_json::Value) -> anyhow::Result<()> {
        let key = event["type"].as_str().context("an event type")?.to_owned();
        self.send(&key, &serde_json::to_vec(event)?).await
    }

    /// Waits for the confirm of everything sent so far; fails if the broker refused any.
    pub async fn confirmed(&mut self) -> anyhow::Result<usize> {
        let mut ok = 0;
        let mut first_error = None;
        let mut failed = 0;
        for c in self.confirms.drain(..) {
            match c.await {
                Ok(Ok(())) => ok += 1,
                Ok(Err(e)) => {
                    failed += 1;
                    first_error.get_or_insert(e);
                }
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert(e.to_string());
                }
            }
        }
        if let Some(e) = first_error {
            bail!("{failed} message(s) not confirmed by the broker, the first: {e}");
        }
        Ok(ok)
    }

    pub async fn close(mut self) -> anyhow::Result<usize> {
        let n = self.confirmed().await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.conn.close(200, "done")).await;
        n
    }
}

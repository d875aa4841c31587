//! `rpec-notify publish FILE...`: publishes event files (one event or a JSON array of them) to
//! the exchange, persistent, with publisher confirms. The topology is declared first so that
//! nothing published before the worker's first start is lost.

use crate::consume::topology::{self, Topology};
use anyhow::{bail, Context};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::publisher_confirm::Confirmation;
use lapin::BasicProperties;
use serde_json::Value;
use std::path::Path;

/// The events of a file's contents: the JSON value itself, or each item of a top-level array.
/// `publish` sends each as a message of its own and `validate` judges exactly those, so both
/// read files with this one function.
pub fn events_in(bytes: &[u8]) -> Result<Vec<Value>, serde_json::Error> {
    Ok(match serde_json::from_slice(bytes)? {
        Value::Array(items) => items,
        other => vec![other],
    })
}

/// The message body `publish` sends for one event of a file: the event re-serialised on its
/// own, compactly (its size is what the worker's `max_body_bytes` limit sees).
pub fn body_of(event: &Value) -> Vec<u8> {
    event.to_string().into_bytes()
}

/// Reads the events in a file, each re-serialised on its own.
pub fn read_events(path: &Path) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("{}: cannot be read", path.display()))?;
    let events =
        events_in(&bytes).with_context(|| format!("{}: not valid JSON", path.display()))?;
    events
        .into_iter()
        .enumerate()
        .map(|(i, event)| {
            let Some(event_type) = event.get("type").and_then(Value::as_str) else {
                bail!("{}: event {} has no \"type\"", path.display(), i + 1);
            };
            Ok((event_type.to_owned(), body_of(&event)))
        })
        .collect()
}

/// Publishes every event of every file; returns how many were confirmed.
pub async fn publish(
    amqp_url: &str,
    topology: &Topology,
    files: &[impl AsRef<Path>],
) -> anyhow::Result<usize> {
    let exchange = topology.exchange.as_str();
    let mut events = Vec::new();
    for f in files {
        events.extend(read_events(f.as_ref())?);
    }
    let connection = topology::connect(amqp_url, "rpec-notify publish")
        .await
        .context("Failed to connect to RabbitMQ")?;
    let channel = connection.create_channel().await?;
    topology::declare(&channel, topology).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut confirmed = 0;
    let mut undelivered = Vec::new();
    for (i, (event_type, body)) in events.iter().enumerate() {
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        // Mandatory: an event that no queue takes comes back instead of vanishing.
        let mandatory = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let confirm = channel
            .basic_publish(exchange, event_type, mandatory, body, props)
            .await?
            .await?;
        match confirm {
            Confirmation::Ack(None) => confirmed += 1,
            Confirmation::Ack(Some(_)) => undelivered.push(format!(
                "event {}: no queue takes {event_type:?} events: not delivered",
                i + 1
            )),
            _ => undelivered.push(format!("event {}: the broker refused it", i + 1)),
        }
    }
    let _ = channel.close(200, "done").await;
    let _ = connection.close(200, "done").await;
    if !undelivered.is_empty() {
        bail!(
            "{confirmed} event(s) published; {} not:\n  {}",
            undelivered.len(),
            undelivered.join("\n  ")
        );
    }
    Ok(confirmed)
}

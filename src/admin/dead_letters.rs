//! `rpec-notify dead-letters list|replay|purge`: the messages on `<queue>.dead-letter`.
//!
//! RabbitMQ has no way to read a queue without taking messages off it, so every command here
//! takes them with `basic.get` and *no* ack. What is not acked goes back when the channel
//! closes, in its place, and a crash of this command (the connection drops) returns them just
//! the same: reading never loses a message. Replay acks a message only after the events
//! exchange confirmed its copy and no `basic.return` said that no queue took it. If this command
//! dies between the two, the message is on both queues; the worker's de-duplication by event id
//! makes the second copy harmless.
//!
//! Each command handles at most the messages that were on the queue when it started (the
//! queue's message count). Messages dead-lettered while it runs (a replayed event that fails
//! again, say) join the queue behind those and are left alone, so a replay cannot go round in
//! circles.

use super::{human_age, table, AdminError, Report};
use crate::consume::topology::{self, PublishError, Topology};
use crate::consume::HEADER_ERROR;
use crate::domain::EventType;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// When the consumer dead-lettered the message (ms since the epoch). Older dead letters and
/// ones the broker itself dead-lettered do not carry it.
pub use crate::consume::HEADER_DEAD_LETTERED_AT;

/// What a dead letter is, safe to print: never its body or its error detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The envelope's `id` when the body is JSON with a UUID `id`; otherwise the first 16 hex
    /// digits of the body's SHA-256, the same on every listing.
    pub id: String,
    /// The body's `type` when it is an event type the worker knows, else `unknown`.
    pub event_type: String,
    /// `x-rpec-error`; for a message the broker dead-lettered itself, its `x-first-death-reason`
    /// (`rejected`, `expired`, `maxlen`, `delivery_limit`); else `unknown`.
    pub code: String,
    /// Seconds since it was dead-lettered, when `x-rpec-dead-lettered-at` says.
    pub age_seconds: Option<i64>,
    /// Where a replay sends it: its known event type, else the routing key it came with.
    pub routing_key: String,
}

fn header<'a>(headers: &'a Option<FieldTable>, name: &str) -> Option<&'a AMQPValue> {
    headers.as_ref()?.inner().get(name)
}

fn string_value(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

fn integer_value(v: &AMQPValue) -> Option<i64> {
    match v {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some((*n).into()),
        AMQPValue::LongUInt(n) => Some((*n).into()),
        AMQPValue::ShortInt(n) => Some((*n).into()),
        AMQPValue::ShortUInt(n) => Some((*n).into()),
        AMQPValue::Timestamp(n) => i64::try_from(*n).ok(),
        other => string_value(other)?.trim().parse().ok(),
    }
}

/// The short stable hash that names a body without an envelope id.
pub fn body_hash(body: &[u8]) -> String {
    Sha256::digest(body)
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Reads what may be printed about a dead letter. `now_ms` is the wall clock.
pub fn summarise(
    body: &[u8],
    headers: &Option<FieldTable>,
    routing_key: &str,
    now_ms: i64,
) -> Summary {
    let envelope: Option<Value> = serde_json::from_slice(body).ok();
    let field = |name: &str| {
        envelope
            .as_ref()
            .and_then(|v| v.get(name))
            .and_then(Value::as_str)
    };
    let id = field("id")
        .and_then(|s| Uuid::parse_str(s.trim()).ok())
        .map_or_else(|| body_hash(body), |u| u.hyphenated().to_string());
    let known_type = field("type").and_then(|t| EventType::parse(t.trim()));
    let code = header(headers, HEADER_ERROR)
        .or_else(|| header(headers, "x-first-death-reason"))
        .and_then(string_value)
        .unwrap_or_else(|| "unknown".into());
    let age_seconds = header(headers, HEADER_DEAD_LETTERED_AT)
        .and_then(integer_value)
        .map(|at| (now_ms - at).max(0) / 1000);
    Summary {
        id,
        event_type: known_type.map_or("unknown", EventType::as_str).to_owned(),
        code,
        age_seconds,
        routing_key: known_type.map_or_else(|| routing_key.to_owned(), |t| t.as_str().to_owned()),
    }
}

/// Whether `wanted` (as an operator typed it) names the dead letter `id`.
fn same_id(wanted: &str, id: &str) -> bool {
    match Uuid::parse_str(wanted.trim()) {
        Ok(u) => u.hyphenated().to_string() == id,
        Err(_) => wanted.trim().eq_ignore_ascii_case(id),
    }
}

/// The properties of a replayed copy: the publisher's own properties and headers, persistent,
/// without anything the worker or the broker added on the way to the dead-letter queue (its
/// attempt and deferral counts start afresh) and without an expiry or a user id, which could
/// make the exchange drop or refuse it.
pub fn replay_properties(original: &BasicProperties) -> BasicProperties {
    let mut headers = FieldTable::default();
    if let Some(h) = original.headers() {
        for (k, v) in h.inner() {
            let name = k.as_str();
            let added_on_the_way = name.starts_with("x-rpec-")
                || name == "x-death"
                || name.starts_with("x-first-death-")
                || name.starts_with("x-last-death-")
                || name == "x-delivery-count";
            if !added_on_the_way {
                headers.insert(k.clone(), v.clone());
            }
        }
    }
    let mut p = BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(headers);
    if let Some(v) = original.content_type() {
        p = p.with_content_type(v.clone());
    }
    if let Some(v) = original.content_encoding() {
        p = p.with_content_encoding(v.clone());
    }
    if let Some(v) = original.priority() {
        p = p.with_priority(*v);
    }
    if let Some(v) = original.correlation_id() {
        p = p.with_correlation_id(v.clone());
    }
    if let Some(v) = original.message_id() {
        p = p.with_message_id(v.clone());
    }
    if let Some(v) = original.timestamp() {
        p = p.with_timestamp(*v);
    }
    if let Some(v) = original.kind() {
        p = p.with_type(v.clone());
    }
    if let Some(v) = original.app_id() {
        p = p.with_app_id(v.clone());
    }
    p
}

/// The broker's 404: the queue or exchange named does not exist.
fn is_not_found(e: &lapin::Error) -> bool {
    matches!(e, lapin::Error::ProtocolError(p)
        if matches!(p.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)))
}

fn unavailable(e: lapin::Error, what: &str) -> AdminError {
    AdminError::Unavailable(anyhow::Error::new(e).context(format!("RabbitMQ: {what}")))
}

/// The broker connection and the dead-letter queue's depth, checked without declaring it (a
/// declaration would create a queue under a mistyped RPEC_QUEUE, or clash with the worker's
/// arguments).
struct DeadLetterQueue {
    connection: Connection,
    channel: Channel,
    name: String,
    exchange: String,
    depth: u32,
}

impl DeadLetterQueue {
    async fn open(amqp_url: &str, t: &Topology, purpose: &str) -> Result<Self, AdminError> {
        let connection =
            topology::connect(amqp_url, &format!("rpec-notify dead-letters {purpose}"))
                .await
                .map_err(|e| unavailable(e, "cannot connect"))?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| unavailable(e, "cannot open a channel"))?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let queue = match channel
            .queue_declare(&t.dead_letter, passive, FieldTable::default())
            .await
        {
            Ok(q) => q,
            Err(e) if is_not_found(&e) => {
                let _ = connection.close(200, "done").await;
                return Err(AdminError::Config(format!(
                    "there is no queue {:?} on the broker: is RPEC_QUEUE right? (the worker \
                     declares it when it starts)",
                    t.dead_letter
                )));
            }
            Err(e) => return Err(unavailable(e, "cannot look at the dead-letter queue")),
        };
        Ok(DeadLetterQueue {
            connection,
            channel,
            name: t.dead_letter.clone(),
            exchange: t.exchange.clone(),
            depth: queue.message_count(),
        })
    }

    /// The next message, unacked; None when the queue has no more ready.
    async fn take(&self) -> Result<Option<Delivery>, AdminError> {
        let got = self
            .channel
            .basic_get(&self.name, BasicGetOptions { no_ack: false })
            .await
            .map_err(|e| unavailable(e, "cannot read the dead-letter queue"))?;
        Ok(got.map(|m| m.delivery))
    }

    /// Closing the channel returns every message taken and not acked to the queue.
    async fn close(self) {
        let _ = self.channel.close(200, "done").await;
        let _ = self.connection.close(200, "done").await;
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn summary_json(s: &Summary) -> Value {
    json!({
        "id": s.id,
        "type": s.event_type,
        "code": s.code,
        "age_seconds": s.age_seconds,
        "routing_key": s.routing_key,
    })
}

/// `dead-letters list`: every dead letter, in queue order, left where it was.
pub async fn list(amqp_url: &str, t: &Topology) -> Result<Report, AdminError> {
    let queue = DeadLetterQueue::open(amqp_url, t, "list").await?;
    let mut summaries = Vec::new();
    let result = async {
        for _ in 0..queue.depth {
            let Some(d) = queue.take().await? else { break };
            summaries.push(summarise(
                &d.data,
                d.properties.headers(),
                d.routing_key.as_str(),
                now_ms(),
            ));
        }
        Ok::<_, AdminError>(())
    }
    .await;
    queue.close().await;
    result?;

    let rows: Vec<Vec<String>> = summaries
        .iter()
        .map(|s| {
            vec![
                s.id.clone(),
                s.event_type.clone(),
                s.code.clone(),
                s.age_seconds.map_or_else(|| "unknown".into(), human_age),
            ]
        })
        .collect();
    let mut text = if rows.is_empty() {
        String::new()
    } else {
        table(&["id", "type", "code", "age"], &rows)
    };
    text.push_str(&format!(
        "{} dead letter(s) on {}\n",
        summaries.len(),
        t.dead_letter
    ));
    Ok(Report {
        text,
        json: json!({
            "queue": t.dead_letter,
            "count": summaries.len(),
            "dead_letters": summaries.iter().map(summary_json).collect::<Vec<_>>(),
        }),
        problems: false,
    })
}

/// Which dead letters `replay` sends back.
#[derive(Debug, Clone)]
pub enum ReplaySelection {
    Ids(Vec<String>),
    All,
}

/// `dead-letters replay`: each chosen dead letter is published again to the events exchange
/// (mandatory, persistent, confirmed) and only then acked off the dead-letter queue.
pub async fn replay(
    amqp_url: &str,
    t: &Topology,
    selection: &ReplaySelection,
) -> Result<Report, AdminError> {
    let queue = DeadLetterQueue::open(amqp_url, t, "replay").await?;
    let publisher = match queue.connection.create_channel().await {
        Ok(c) => c,
        Err(e) => {
            queue.close().await;
            return Err(unavailable(e, "cannot open a channel"));
        }
    };
    // A mistyped RPEC_EXCHANGE would otherwise surface as the broker closing the channel on
    // the first publish.
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..ExchangeDeclareOptions::default()
    };
    if let Err(e) = publisher
        .exchange_declare(
            &queue.exchange,
            ExchangeKind::Topic,
            passive,
            FieldTable::default(),
        )
        .await
    {
        let error = if is_not_found(&e) {
            AdminError::Config(format!(
                "there is no exchange {:?} on the broker: is RPEC_EXCHANGE right?",
                queue.exchange
            ))
        } else {
            unavailable(e, "cannot look at the events exchange")
        };
        queue.close().await;
        return Err(error);
    }
    let outcome = replay_on(&queue, &publisher, selection).await;
    let _ = publisher.close(200, "done").await;
    queue.close().await;
    let (replayed, refused) = outcome?;

    let not_found: Vec<String> = match selection {
        ReplaySelection::Ids(ids) => ids
            .iter()
            .filter(|w| {
                !replayed.iter().any(|s: &Summary| same_id(w, &s.id))
                    && !refused.iter().any(|(s, _)| same_id(w, &s.id))
            })
            .cloned()
            .collect(),
        ReplaySelection::All => Vec::new(),
    };
    let mut text = format!(
        "{} dead letter(s) replayed to {}\n",
        replayed.len(),
        t.exchange
    );
    for (s, why) in &refused {
        text.push_str(&format!("{}: {why}: left on the dead-letter queue\n", s.id));
    }
    for id in &not_found {
        text.push_str(&format!("{id}: not on the dead-letter queue\n"));
    }
    Ok(Report {
        text,
        json: json!({
            "replayed": replayed.iter().map(summary_json).collect::<Vec<_>>(),
            "refused": refused.iter().map(|(s, why)| json!({"id": s.id, "routing_key": s.routing_key, "reason": why})).collect::<Vec<_>>(),
            "not_found": not_found,
        }),
        problems: !refused.is_empty() || !not_found.is_empty(),
    })
}

/// The replayed dead letters, and the chosen ones the exchange did not take (with why).
type ReplayOutcome = (Vec<Summary>, Vec<(Summary, String)>);

async fn replay_on(
    queue: &DeadLetterQueue,
    publisher: &Channel,
    selection: &ReplaySelection,
) -> Result<ReplayOutcome, AdminError> {
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| unavailable(e, "cannot turn on publisher confirms"))?;
    let mut replayed = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..queue.depth {
        let Some(d) = queue.take().await? else { break };
        let s = summarise(
            &d.data,
            d.properties.headers(),
            d.routing_key.as_str(),
            now_ms(),
        );
        let chosen = match selection {
            ReplaySelection::All => true,
            ReplaySelection::Ids(ids) => ids.iter().any(|w| same_id(w, &s.id)),
        };
        if !chosen {
            continue; // stays unacked: back in its place when the channel closes
        }
        // Mandatory, confirmed: a copy that no queue takes comes back instead of vanishing.
        match topology::publish_confirmed(
            publisher,
            &queue.exchange,
            &s.routing_key,
            &d.data,
            replay_properties(&d.properties),
        )
        .await
        {
            Ok(()) => {
                d.ack(BasicAckOptions::default())
                    .await
                    .map_err(|e| unavailable(e, "cannot ack a replayed message"))?;
                replayed.push(s);
            }
            Err(PublishError::Returned) => {
                let why = format!("no queue takes {:?} events", s.routing_key);
                refused.push((s, why));
            }
            Err(PublishError::Nacked) => {
                refused.push((s, "the broker refused it".to_owned()));
            }
            Err(PublishError::Broker(e)) => {
                return Err(unavailable(e, "cannot publish a replayed message"));
            }
        }
    }
    Ok((replayed, refused))
}

/// Whether a dead letter is about `address` (lower-cased): its body is an event whose `data`
/// holds that address in a field named `email` (the fields through which events carry people).
fn is_about(body: &[u8], address: &str) -> bool {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v.get("data")?
                .get("email")?
                .as_str()
                .map(|e| e.trim().to_lowercase() == address)
        })
        .unwrap_or(false)
}

/// `dead-letters purge --email ADDR`: deletes the dead letters about one person (an erasure's
/// reach into the dead-letter queue); every other stays where it was. Says how many.
pub async fn purge_about(
    amqp_url: &str,
    t: &Topology,
    address: &str,
) -> Result<Report, AdminError> {
    let address = address.trim().to_lowercase();
    let queue = DeadLetterQueue::open(amqp_url, t, "purge").await?;
    let mut purged = 0u64;
    let result = async {
        for _ in 0..queue.depth {
            let Some(d) = queue.take().await? else { break };
            if is_about(&d.data, &address) {
                d.ack(BasicAckOptions::default())
                    .await
                    .map_err(|e| unavailable(e, "cannot delete a dead letter"))?;
                purged += 1;
            }
            // Others stay unacked: back in their place when the channel closes.
        }
        Ok::<_, AdminError>(())
    }
    .await;
    queue.close().await;
    result?;
    Ok(Report {
        text: format!(
            "{purged} dead letter(s) about that address deleted from {}\n",
            t.dead_letter
        ),
        json: json!({"queue": t.dead_letter, "purged": purged}),
        problems: false,
    })
}

/// `dead-letters purge`: deletes every ready dead letter; says how many.
pub async fn purge(amqp_url: &str, t: &Topology) -> Result<Report, AdminError> {
    let queue = DeadLetterQueue::open(amqp_url, t, "purge").await?;
    let purged = queue
        .channel
        .queue_purge(&queue.name, QueuePurgeOptions::default())
        .await;
    queue.close().await;
    let n = purged.map_err(|e| unavailable(e, "cannot purge the dead-letter queue"))?;
    Ok(Report {
        text: format!("{n} dead letter(s) deleted from {}\n", t.dead_letter),
        json: json!({"queue": t.dead_letter, "purged": n}),
        problems: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::ShortString;

    fn headers(pairs: &[(&str, AMQPValue)]) -> Option<FieldTable> {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert(ShortString::from(*k), v.clone());
        }
        Some(t)
    }

    fn long(s: &str) -> AMQPValue {
        AMQPValue::LongString(s.into())
    }

    #[test]
    fn an_envelope_is_named_by_its_id_and_type_and_never_by_its_data() {
        let body =
            br#"{"id": "0F8C1D3E-2B4A-4C5D-9E6F-7A8B9C0D1E2F", "type": "registration.created",
                        "data": {"email": "sam@school.example.org"}}"#;
        let h = headers(&[
            (HEADER_ERROR, long("unknown_session")),
            ("x-rpec-error-detail", long("data.session_id: not known")),
            (HEADER_DEAD_LETTERED_AT, AMQPValue::LongLongInt(1_000_000)),
        ]);
        let s = summarise(body, &h, "registration.created", 1_090_500);
        assert_eq!(
            s,
            Summary {
                id: "0f8c1d3e-2b4a-4c5d-9e6f-7a8b9c0d1e2f".into(),
                event_type: "registration.created".into(),
                code: "unknown_session".into(),
                age_seconds: Some(90),
                routing_key: "registration.created".into(),
            }
        );
    }

    #[test]
    fn a_body_without_a_usable_envelope_is_named_by_a_stable_hash() {
        let s = summarise(b"{\"id\": oops", &None, "contact.submitted", 0);
        assert_eq!(s.id, body_hash(b"{\"id\": oops"));
        assert_eq!(s.id.len(), 16);
        assert_eq!(s.event_type, "unknown");
        assert_eq!(s.code, "unknown");
        assert_eq!(s.age_seconds, None);
        assert_eq!(s.routing_key, "contact.submitted");

        // An id that is not a UUID and a type nobody handles: the hash, "unknown", and the
        // routing key it came with.
        let s = summarise(
            br#"{"id": "42", "type": "contact.deleted"}"#,
            &headers(&[("x-first-death-reason", long("delivery_limit"))]),
            "contact.deleted",
            0,
        );
        assert_eq!(s.id.len(), 16);
        assert_eq!(s.event_type, "unknown");
        assert_eq!(s.code, "delivery_limit");
        assert_eq!(s.routing_key, "contact.deleted");
    }

    #[test]
    fn ids_match_as_typed() {
        assert!(same_id(
            "0F8C1D3E-2B4A-4C5D-9E6F-7A8B9C0D1E2F",
            "0f8c1d3e-2b4a-4c5d-9e6f-7a8b9c0d1e2f"
        ));
        assert!(same_id("ABCDEF0123456789", "abcdef0123456789"));
        assert!(!same_id("abcdef", "abcdef0123456789"));
    }

    #[test]
    fn a_replayed_copy_keeps_the_publishers_headers_and_loses_what_was_added_on_the_way() {
        let original = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_message_id("m-1".into())
            .with_expiration("400".into())
            .with_user_id("someone-else".into())
            .with_headers(
                headers(&[
                    ("trace-id", long("t-1")),
                    (HEADER_ERROR, long("retries_exhausted")),
                    ("x-rpec-attempt", AMQPValue::LongUInt(5)),
                    ("x-rpec-first-seen-ms", AMQPValue::LongLongInt(1)),
                    ("x-death", AMQPValue::FieldArray(Default::default())),
                    ("x-first-death-reason", long("rejected")),
                    ("x-delivery-count", AMQPValue::LongUInt(3)),
                ])
                .unwrap(),
            );
        let p = replay_properties(&original);
        let names: Vec<&str> = p
            .headers()
            .as_ref()
            .unwrap()
            .inner()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(names, ["trace-id"]);
        assert_eq!(p.delivery_mode(), &Some(2));
        assert_eq!(
            p.content_type().as_ref().unwrap().as_str(),
            "application/json"
        );
        assert_eq!(p.message_id().as_ref().unwrap().as_str(), "m-1");
        assert_eq!(p.expiration(), &None);
        assert_eq!(p.user_id(), &None);
    }
}

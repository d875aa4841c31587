//! What was published and what each message should cause, a publisher that keeps trying through
//! a broker outage, and the count at the end: events lost, emails lost, duplicates, recovery.

use crate::relay::{Received, Relay};
use lapin::options::{BasicAckOptions, BasicGetOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection};
use rpec_notify::consume::topology::{self, PublishError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One message to publish and what it must cause.
#[derive(Clone, Debug)]
pub struct Item {
    pub key: String,
    pub body: Vec<u8>,
    /// The event id, when the message has a usable one.
    pub id: Option<String>,
    /// Dead-lettered on purpose with this code (a poison message), instead of committed.
    pub dead_letter: Option<&'static str>,
    /// The emails it causes, by [`email_key`].
    pub emails: Vec<String>,
    /// What kind of message it is, for the notes.
    pub label: String,
}

impl Item {
    pub fn event(event: &serde_json::Value, emails: Vec<String>) -> Item {
        Item {
            key: event["type"]
                .as_str()
                .unwrap_or("contact.submitted")
                .to_owned(),
            body: serde_json::to_vec(event).unwrap(),
            id: event["id"].as_str().map(str::to_owned),
            dead_letter: None,
            emails,
            label: event["type"].as_str().unwrap_or_default().to_owned(),
        }
    }

    pub fn poison(key: &str, body: Vec<u8>, code: &'static str) -> Item {
        Item {
            key: key.to_owned(),
            body,
            id: None,
            dead_letter: Some(code),
            emails: Vec::new(),
            label: String::new(),
        }
    }

    pub fn labelled(mut self, label: &str) -> Item {
        self.label = label.to_owned();
        self
    }
}

/// The mailbox domains of the region and national coordinators (config/regions.toml): an email
/// to one of them is the coordinators' copy of an enquiry, known by its Reply-To.
fn to_coordinators(to: &str) -> bool {
    to.ends_with("@example.org")
}

/// What an accepted email is, for matching it to what the events should cause: the
/// coordinators' copy of an enquiry by the submitter it replies to, everything else by its
/// recipient (every address in a run is unique to one email).
pub fn email_key(m: &Received) -> String {
    let to = m.envelope_to.first().cloned().unwrap_or_default();
    if to_coordinators(&to) {
        format!("enquiry:{}", m.reply_to.clone().unwrap_or_default())
    } else {
        format!("to:{to}")
    }
}

pub fn to_key(address: &str) -> String {
    format!("to:{}", address.to_ascii_lowercase())
}

pub fn enquiry_key(submitter: &str) -> String {
    format!("enquiry:{}", submitter.to_ascii_lowercase())
}

fn digest(body: &[u8]) -> [u8; 32] {
    Sha256::digest(body).into()
}

/// Everything published (confirmed by the broker) in one fault's run.
#[derive(Default)]
pub struct Ledger {
    pub items: Vec<Item>,
    /// Emails expected that no event causes (a newsletter's readers are counted here).
    pub extra_emails: Vec<String>,
    /// What publishing went through: confirms refused (nack), messages returned (no queue
    /// took them), connections opened anew.
    pub nacks: usize,
    pub returns: usize,
    pub reconnects: usize,
}

impl Ledger {
    /// A note on what publishing went through, if anything.
    pub fn publishing_note(&self) -> Option<String> {
        (self.nacks + self.returns + self.reconnects > 0).then(|| {
            format!(
                "publisher: {} nacks, {} returns, {} new connections",
                self.nacks, self.returns, self.reconnects
            )
        })
    }
}

pub type SharedLedger = Arc<Mutex<Ledger>>;

/// Publishes persistent, mandatory, confirmed messages; through a broker outage it reconnects
/// and publishes again until the broker confirms (a message may then arrive twice, which the
/// worker's de-duplication by event id must absorb).
pub struct Publisher {
    url: String,
    exchange: String,
    conn: Option<(Connection, Channel)>,
    /// Whether a connection was opened before (the next one is a reconnection).
    opened: bool,
    ledger: SharedLedger,
    /// How long one message may take to be confirmed before the run gives up.
    pub patience: Duration,
}

impl Publisher {
    pub fn new(url: &str, exchange: &str, ledger: SharedLedger) -> Publisher {
        Publisher {
            url: url.to_owned(),
            exchange: exchange.to_owned(),
            conn: None,
            opened: false,
            ledger,
            patience: Duration::from_secs(300),
        }
    }

    async fn channel(&mut self) -> Option<Channel> {
        if let Some((_, ch)) = &self.conn {
            if ch.status().connected() {
                return Some(ch.clone());
            }
        }
        self.drop_connection().await;
        if self.opened {
            self.ledger.lock().unwrap().reconnects += 1;
        }
        self.opened = true;
        let open = async {
            let conn = topology::connect(&self.url, "rpec-notify fault suite")
                .await
                .ok()?;
            let ch = conn.create_channel().await.ok()?;
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .ok()?;
            Some((conn, ch))
        };
        let (conn, ch) = tokio::time::timeout(Duration::from_secs(10), open)
            .await
            .ok()??;
        self.conn = Some((conn, ch.clone()));
        Some(ch)
    }

    /// Closes the connection, if any, without waiting long for a broker that may be gone.
    async fn drop_connection(&mut self) {
        if let Some((conn, _)) = self.conn.take() {
            let _ =
                tokio::time::timeout(Duration::from_secs(2), conn.close(200, "reconnecting")).await;
        }
    }

    /// Publishes `item` until confirmed, then records it in the ledger.
    pub async fn publish(&mut self, item: Item) {
        let deadline = Instant::now() + self.patience;
        let mut wait = Duration::from_millis(100);
        // Refusals in a row on one channel: after a few, the channel is opened anew (a channel
        // on a surviving cluster node may keep refusing a queue whose leader has gone).
        let mut refused = 0;
        loop {
            assert!(
                Instant::now() < deadline,
                "could not publish a message for {:?}",
                self.patience
            );
            let Some(ch) = self.channel().await else {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
                continue;
            };
            let props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into());
            let sent = tokio::time::timeout(
                Duration::from_secs(10),
                topology::publish_confirmed(&ch, &self.exchange, &item.key, &item.body, props),
            )
            .await;
            match sent {
                Ok(Ok(())) => break,
                // The worker has not declared its queue yet (or a cluster is electing).
                Ok(Err(e @ (PublishError::Returned | PublishError::Nacked))) => {
                    {
                        let mut l = self.ledger.lock().unwrap();
                        if matches!(e, PublishError::Returned) {
                            l.returns += 1;
                        } else {
                            l.nacks += 1;
                        }
                    }
                    refused += 1;
                    if refused >= 3 {
                        refused = 0;
                        self.drop_connection().await;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                _ => {
                    self.drop_connection().await;
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
            }
        }
        self.ledger.lock().unwrap().items.push(item);
    }

    pub async fn close(mut self) {
        self.drop_connection().await;
    }
}

/// Publishes `items` one after another, `pace` apart, on a task of its own.
pub fn stream(
    mut publisher: Publisher,
    items: Vec<Item>,
    pace: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for item in items {
            publisher.publish(item).await;
            tokio::time::sleep(pace).await;
        }
        publisher.close().await;
    })
}

/// Dead letters taken off the queue so far: body digest -> codes.
#[derive(Default)]
pub struct DeadLetters {
    by_body: HashMap<[u8; 32], Vec<String>>,
    pub count: usize,
}

impl DeadLetters {
    /// Takes every dead letter now on `queue` (via `amqp_url`).
    pub async fn drain(&mut self, amqp_url: &str, queue: &str) {
        let Ok(Ok(conn)) = tokio::time::timeout(
            Duration::from_secs(10),
            topology::connect(amqp_url, "rpec-notify fault suite"),
        )
        .await
        else {
            return;
        };
        if let Ok(Ok(ch)) =
            tokio::time::timeout(Duration::from_secs(10), conn.create_channel()).await
        {
            while let Ok(Ok(Some(msg))) = tokio::time::timeout(
                Duration::from_secs(10),
                ch.basic_get(queue, BasicGetOptions::default()),
            )
            .await
            {
                let code = msg
                    .delivery
                    .properties
                    .headers()
                    .as_ref()
                    .and_then(|h| h.inner().get("x-rpec-error").cloned())
                    .map(|v| match v {
                        lapin::types::AMQPValue::LongString(s) => {
                            String::from_utf8_lossy(s.as_bytes()).into_owned()
                        }
                        other => format!("{other:?}"),
                    })
                    .unwrap_or_else(|| "(no x-rpec-error)".into());
                self.by_body
                    .entry(digest(&msg.delivery.data))
                    .or_default()
                    .push(code);
                self.count += 1;
                let _ = msg.delivery.ack(BasicAckOptions::default()).await;
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.close(200, "done")).await;
    }
}

/// What one fault's run came to: one row of the table.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Row {
    pub fault: String,
    pub scale: String,
    pub events_published: usize,
    pub events_lost: usize,
    pub dead_letters_expected: usize,
    pub emails_expected: usize,
    pub emails_received: usize,
    pub emails_distinct: usize,
    pub emails_lost: usize,
    pub duplicates: usize,
    pub duplicate_bound: usize,
    /// Distinct emails beyond those expected (a second email for the same thing, or one that
    /// nothing asked for): never allowed.
    pub emails_unexpected: usize,
    /// From the end of the fault to the last expected email accepted; None if some never came.
    pub recovery_secs: Option<f64>,
    pub passed: bool,
    pub notes: Vec<String>,
    pub measured_at: String,
}

/// The state of a run at one moment.
pub struct Count {
    pub events_lost: usize,
    pub events_published: usize,
    pub dead_letters_expected: usize,
    pub misfiled: Vec<String>,
    pub emails_expected: usize,
    pub emails_lost: usize,
    pub received: usize,
    pub distinct: usize,
    pub unexpected: usize,
    pub last_expected_at: Option<Instant>,
    pub unsettled_outbox: i64,
    pub lost_samples: Vec<String>,
}

pub async fn count(ledger: &Ledger, pool: &PgPool, dead: &DeadLetters, relay: &Relay) -> Count {
    let processed: HashSet<String> =
        sqlx::query_scalar::<_, String>("SELECT event_id::text FROM processed_events")
            .fetch_all(pool)
            .await
            .unwrap_or_default()
            .into_iter()
            .collect();
    let mut events_lost = 0;
    let mut misfiled = Vec::new();
    let mut lost_samples = Vec::new();
    let mut ids_seen = HashSet::new();
    let mut bodies_seen = HashSet::new();
    let mut dead_letters_expected = 0;
    for item in &ledger.items {
        // The same message published twice (through an outage) is one message.
        let d = digest(&item.body);
        if !bodies_seen.insert(d) {
            continue;
        }
        if let Some(id) = &item.id {
            ids_seen.insert(id.clone());
        }
        let codes = dead.by_body.get(&d);
        match item.dead_letter {
            Some(code) => {
                dead_letters_expected += 1;
                match codes {
                    Some(c) if c.iter().any(|c| c == code) => {}
                    Some(c) => misfiled.push(format!("{}: expected {code}, got {c:?}", item.label)),
                    None => {
                        events_lost += 1;
                        if lost_samples.len() < 5 {
                            lost_samples
                                .push(format!("{}: not dead-lettered ({code})", item.label));
                        }
                    }
                }
            }
            None => {
                let committed = item.id.as_ref().is_some_and(|id| processed.contains(id));
                if !committed {
                    events_lost += 1;
                    if lost_samples.len() < 5 {
                        lost_samples.push(format!(
                            "{} {} not committed{}",
                            item.key,
                            item.id.clone().unwrap_or_default(),
                            codes
                                .map(|c| format!(", dead-lettered {c:?}"))
                                .unwrap_or_default()
                        ));
                    }
                }
            }
        }
    }
    let expected: HashSet<String> = ledger
        .items
        .iter()
        .flat_map(|i| i.emails.iter().cloned())
        .chain(ledger.extra_emails.iter().cloned())
        .collect();
    let received = relay.received();
    // The first acceptance of each distinct Message-ID, and of each logical email.
    let mut first_by_id: HashMap<&str, &Received> = HashMap::new();
    for m in &received {
        first_by_id.entry(m.message_id.as_str()).or_insert(m);
    }
    let mut first_by_key: HashMap<String, Instant> = HashMap::new();
    for m in first_by_id.values() {
        let at = first_by_key.entry(email_key(m)).or_insert(m.at);
        *at = (*at).min(m.at);
    }
    let emails_lost = expected
        .iter()
        .filter(|k| !first_by_key.contains_key(*k))
        .count();
    for k in expected.iter().filter(|k| !first_by_key.contains_key(*k)) {
        if lost_samples.len() >= 10 {
            break;
        }
        lost_samples.push(format!("email {k} never accepted"));
    }
    let distinct = first_by_id.len();
    let matched = first_by_key
        .keys()
        .filter(|k| expected.contains(*k))
        .count();
    let last_expected_at = expected
        .iter()
        .filter_map(|k| first_by_key.get(k))
        .max()
        .copied();
    let unsettled_outbox: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE status IN ('pending', 'sending')")
            .fetch_one(pool)
            .await
            .unwrap_or(-1);
    Count {
        events_lost,
        events_published: bodies_seen.len(),
        dead_letters_expected,
        misfiled,
        emails_expected: expected.len(),
        emails_lost,
        received: received.len(),
        distinct,
        unexpected: distinct - matched,
        last_expected_at,
        unsettled_outbox,
        lost_samples,
    }
}

/// Waits until every event is accounted for, every expected email accepted and the outbox
/// settled (so that re-sends after a lease have come too), or until nothing has moved for
/// `stall`; returns the final count.
pub async fn settle(
    ledger: &SharedLedger,
    pool: &PgPool,
    amqp_url: &str,
    dead_letter_queue: &str,
    relay: &Relay,
    stall: Duration,
) -> Count {
    let mut dead = DeadLetters::default();
    let mut last_progress = Instant::now();
    let mut last = (usize::MAX, usize::MAX, usize::MAX, i64::MAX);
    loop {
        dead.drain(amqp_url, dead_letter_queue).await;
        let c = {
            let l = std::mem::take(&mut *ledger.lock().unwrap());
            let c = count(&l, pool, &dead, relay).await;
            *ledger.lock().unwrap() = l;
            c
        };
        let done = c.events_lost == 0 && c.emails_lost == 0 && c.unsettled_outbox == 0;
        if done {
            // A moment more for anything still on its way.
            tokio::time::sleep(Duration::from_secs(2)).await;
            dead.drain(amqp_url, dead_letter_queue).await;
            let l = std::mem::take(&mut *ledger.lock().unwrap());
            let c = count(&l, pool, &dead, relay).await;
            *ledger.lock().unwrap() = l;
            return c;
        }
        let now = (c.events_lost, c.emails_lost, c.received, c.unsettled_outbox);
        if now != last {
            last = now;
            last_progress = Instant::now();
        } else if last_progress.elapsed() > stall {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub fn row(
    fault: &str,
    scale: &str,
    c: &Count,
    fault_end: Instant,
    bound: usize,
    mut notes: Vec<String>,
) -> Row {
    let duplicates = c.received - c.distinct;
    let recovery_secs = if c.emails_lost == 0 {
        Some(
            c.last_expected_at
                .map(|t| t.saturating_duration_since(fault_end).as_secs_f64())
                .unwrap_or(0.0),
        )
    } else {
        None
    };
    notes.extend(c.misfiled.iter().take(5).cloned());
    notes.extend(c.lost_samples.iter().cloned());
    if c.unsettled_outbox != 0 {
        notes.push(format!("{} outbox rows never settled", c.unsettled_outbox));
    }
    let passed = c.events_lost == 0
        && c.emails_lost == 0
        && c.misfiled.is_empty()
        && c.unexpected == 0
        && duplicates <= bound;
    Row {
        fault: fault.to_owned(),
        scale: scale.to_owned(),
        events_published: c.events_published,
        events_lost: c.events_lost,
        dead_letters_expected: c.dead_letters_expected,
        emails_expected: c.emails_expected,
        emails_received: c.received,
        emails_distinct: c.distinct,
        emails_lost: c.emails_lost,
        duplicates,
        duplicate_bound: bound,
        emails_unexpected: c.unexpected,
        recovery_secs: recovery_secs.map(|s| (s * 10.0).round() / 10.0),
        passed,
        notes,
        measured_at: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
    }
}

fn report_path(scale: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let name = if scale == "long" {
        "faults.json".to_owned()
    } else {
        format!("faults-{scale}.json")
    };
    target.join("faults").join(name)
}

pub fn load(scale: &str) -> Vec<Row> {
    std::fs::read(report_path(scale))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Records `row` (replacing an earlier row of the same fault) and prints the table.
pub fn record(row: &Row) {
    let path = report_path(&row.scale);
    let mut rows = load(&row.scale);
    rows.retain(|r| r.fault != row.fault);
    rows.push(row.clone());
    rows.sort_by(|a, b| a.fault.cmp(&b.fault));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, serde_json::to_vec_pretty(&rows).unwrap()).unwrap();
    println!("{}", table(&rows));
    println!("(written to {})", path.display());
}

pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "{:<32} {:>6} {:>5} {:>7} {:>5} {:>11} {:>9} {:>7}  {:<20} {}\n",
        "fault",
        "events",
        "lost",
        "emails",
        "lost",
        "dup (bound)",
        "recovery",
        "result",
        "measured",
        "notes"
    ));
    for r in rows {
        let recovery = r
            .recovery_secs
            .map(|s| format!("{s:.1}s"))
            .unwrap_or_else(|| "never".into());
        let mut notes = r.notes.clone();
        if r.emails_unexpected > 0 {
            notes.insert(0, format!("{} unexpected emails", r.emails_unexpected));
        }
        out.push_str(&format!(
            "{:<32} {:>6} {:>5} {:>7} {:>5} {:>11} {:>9} {:>7}  {:<20} {}\n",
            r.fault,
            r.events_published,
            r.events_lost,
            r.emails_expected,
            r.emails_lost,
            format!("{} ({})", r.duplicates, r.duplicate_bound),
            recovery,
            if r.notes.iter().any(|n| n.starts_with("SKIPPED")) {
                "skipped"
            } else if r.passed {
                "ok"
            } else {
                "FAILED"
            },
            r.measured_at,
            notes.join("; ")
        ));
    }
    out
}

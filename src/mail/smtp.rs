//! Our SMTP client (RFC 5321), for sending to one relay at the rate the relay can take: a pool
//! of long-lived connections, each with TCP_NODELAY and one message in flight at a time, whose
//! commands are pipelined (RFC 2920) when the relay offers it; STARTTLS (RFC 3207) or implicit
//! TLS; AUTH PLAIN or LOGIN (RFC 4954).
//!
//! A message is tried on a pooled connection, or a new one when none is free, and tried again
//! (once, on a new connection) only when the pooled connection turned out to be dead before
//! the relay had answered anything about the message: nothing of it can have been taken then.
//! Once its content has been written, a failure is the caller's to retry, never ours. Nothing
//! is sent on an idle connection; one idle for over a minute is closed instead of used.

mod conn;
mod data;
mod endpoint;
mod reply;
mod tls;

pub(crate) use conn::Hold;
pub(crate) use endpoint::{Endpoint, Security};

use crate::mail::SendError;
use conn::{Conn, Message};
use rustls::pki_types::ServerName;
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// A connection idle for longer is closed rather than used (lettre's pool had the same
/// limit): relays close idle sessions after a few minutes (Postfix after 300 s), and a
/// firewall may forget one without a word, which only a send that never gets an answer would
/// find out.
const IDLE_LIMIT: Duration = Duration::from_secs(60);

/// How far a send got, for what its time running out means.
#[repr(u8)]
#[derive(Clone, Copy)]
enum Phase {
    /// Waiting for one of the pool's connections.
    Waiting = 0,
    /// Connecting, until the relay's greeting.
    Connecting = 1,
    /// The relay has answered.
    Session = 2,
}

/// Seconds, for messages.
fn seconds(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// What every connection is made with.
struct Config {
    endpoint: Endpoint,
    /// The TLS connector and the name the relay's certificate must carry, when the URL asks
    /// for TLS.
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    /// The name given in EHLO.
    hello: String,
    /// For connecting and the greeting together, and then for each reply and each write (but
    /// the reply to the message's content: see `Conn::content`).
    limit: Duration,
}

impl Config {
    async fn handshake(
        &self,
        tcp: TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, SendError> {
        let Some((connector, name)) = &self.tls else {
            return Err(SendError::Unreachable(
                "tls error: TLS without TLS settings".into(),
            ));
        };
        connector
            .connect(name.clone(), tcp)
            .await
            .map_err(|e| SendError::Unreachable(format!("tls error: {e}")))
    }
}

struct Shared {
    config: Config,
    /// One permit per connection the pool may have.
    slots: Semaphore,
    /// Connections waiting for a message, with when each was parked, the most recent last.
    idle: Mutex<Vec<(Conn, Instant)>>,
}

/// The pool of connections to one relay. Clones share it.
#[derive(Clone)]
pub(crate) struct Client {
    shared: Arc<Shared>,
}

impl Client {
    /// At most `connections` connections, opened as messages need them and kept open. `limit`
    /// bounds connecting with the greeting, and each reply and write after it. `ca_file` is
    /// trusted besides the public roots.
    pub fn new(
        endpoint: Endpoint,
        connections: u32,
        limit: Duration,
        ca_file: Option<&Path>,
    ) -> anyhow::Result<Client> {
        let tls = if endpoint.security.uses_tls() {
            let name = match &endpoint.host {
                endpoint::Host::Name(n) => ServerName::try_from(n.clone())?,
                endpoint::Host::Ip(ip) => ServerName::from(*ip),
            };
            let connector = tokio_rustls::TlsConnector::from(tls::client_config(ca_file)?);
            Some((connector, name))
        } else {
            None
        };
        let hello = endpoint
            .hello
            .clone()
            .unwrap_or_else(endpoint::default_hello);
        let connections = connections.max(1) as usize;
        Ok(Client {
            shared: Arc::new(Shared {
                config: Config {
                    endpoint,
                    tls,
                    hello,
                    limit,
                },
                slots: Semaphore::new(connections),
                idle: Mutex::new(Vec::with_capacity(connections)),
            }),
        })
    }

    /// Sends `message` from `from` ("" for the null sender) to `to`, within `timeout` in all.
    pub async fn send(
        &self,
        from: &str,
        to: &[&str],
        message: &[u8],
        timeout: Duration,
    ) -> Result<(), SendError> {
        self.send_after(from, to, message, timeout, Hold::none())
            .await
    }

    /// [`Client::send`], but the relay is given the message's final "." only once `hold` is
    /// lifted: the rest of it goes meanwhile. When the hold outlasts its patience, the
    /// message is withdrawn (its connection closed before its end, so the relay throws it
    /// away) and, once the hold is lifted, sent again from the start, within `timeout` again.
    pub async fn send_after(
        &self,
        from: &str,
        to: &[&str],
        message: &[u8],
        timeout: Duration,
        mut hold: Hold<'_>,
    ) -> Result<(), SendError> {
        for address in std::iter::once(&from).chain(to) {
            if address
                .chars()
                .any(|c| c.is_control() || c.is_whitespace() || c == '<' || c == '>')
            {
                return Err(SendError::Permanent(
                    "not sendable: an envelope address has a character SMTP cannot carry".into(),
                ));
            }
        }
        if to.is_empty() {
            return Err(SendError::Permanent(
                "not sendable: the envelope has no recipient".into(),
            ));
        }
        let payload = data::payload(message);
        let m = Message {
            from,
            to,
            payload: &payload,
            size: message.len(),
            eight_bit: !message.is_ascii(),
            utf8_addresses: !from.is_ascii() || to.iter().any(|a| !a.is_ascii()),
        };
        match self.timed_send(&m, timeout, &mut hold).await {
            Sent::Done(result) => result,
            Sent::Withdrawn => {
                hold.lifted().await;
                match self.timed_send(&m, timeout, &mut hold).await {
                    Sent::Done(result) => result,
                    Sent::Withdrawn => unreachable!("a lifted hold withdraws nothing"),
                }
            }
        }
    }

    async fn timed_send(&self, m: &Message<'_>, timeout: Duration, hold: &mut Hold<'_>) -> Sent {
        let phase = AtomicU8::new(Phase::Waiting as u8);
        match tokio::time::timeout(timeout, self.try_send(m, &phase, hold)).await {
            Ok(sent) => sent,
            Err(_) => Sent::Done(Err(match phase.load(Ordering::SeqCst) {
                p if p == Phase::Waiting as u8 => SendError::Unreachable(format!(
                    "Connection error: no connection to the relay came free within {}",
                    seconds(timeout)
                )),
                p if p == Phase::Connecting as u8 => SendError::Unreachable(format!(
                    "Connection error: the relay did not answer within {}",
                    seconds(timeout)
                )),
                _ => SendError::Transient(format!(
                    "no answer from the relay within {}s",
                    timeout.as_secs()
                )),
            })),
        }
    }

    async fn try_send(&self, m: &Message<'_>, phase: &AtomicU8, hold: &mut Hold<'_>) -> Sent {
        let shared = &self.shared;
        let Ok(_slot) = shared.slots.acquire().await else {
            return Sent::Done(Err(SendError::Unreachable(
                "Connection error: the relay client is closed".into(),
            )));
        };
        let (mut conn, mut pooled) = match self.idle_connection() {
            Some(conn) => (conn, true),
            None => {
                phase.store(Phase::Connecting as u8, Ordering::SeqCst);
                match Conn::open(&shared.config, phase).await {
                    Ok(conn) => (conn, false),
                    Err(e) => return Sent::Done(Err(e)),
                }
            }
        };
        phase.store(Phase::Session as u8, Ordering::SeqCst);
        loop {
            let outcome = conn.transaction(m, hold).await;
            if outcome.stale && pooled {
                // The relay had closed it while it waited: nothing of this message went.
                tracing::debug!("a pooled SMTP connection had been closed: sending on a new one");
                drop(conn);
                phase.store(Phase::Connecting as u8, Ordering::SeqCst);
                conn = match Conn::open(&shared.config, phase).await {
                    Ok(conn) => conn,
                    Err(e) => return Sent::Done(Err(e)),
                };
                pooled = false;
                continue;
            }
            if outcome.withdrawn {
                // Closed with the message unended: the relay discards what it has of it.
                return Sent::Withdrawn;
            }
            if outcome.reusable {
                self.park(conn);
            }
            return Sent::Done(outcome.result);
        }
    }

    /// A pooled connection that still looks open; the ones the relay has closed, and the ones
    /// idle for longer than [`IDLE_LIMIT`], are dropped.
    fn idle_connection(&self) -> Option<Conn> {
        loop {
            let (mut conn, since) = self.lock_idle().pop()?;
            if since.elapsed() <= IDLE_LIMIT && conn.looks_alive() {
                return Some(conn);
            }
        }
    }

    /// Back to the pool, which drops whatever has waited there too long.
    fn park(&self, conn: Conn) {
        let mut idle = self.lock_idle();
        idle.retain(|(_, since)| since.elapsed() <= IDLE_LIMIT);
        idle.push((conn, Instant::now()));
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<(Conn, Instant)>> {
        self.shared
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether the relay answers now (for /readyz): NOOP on a pooled connection, or a new one
    /// that then joins the pool. When every connection is busy sending, a connection of its
    /// own, closed after.
    pub async fn check(&self, timeout: Duration) -> Result<(), String> {
        let phase = AtomicU8::new(Phase::Connecting as u8);
        let checking = async {
            let checked: Result<(), SendError> = match self.shared.slots.try_acquire() {
                Ok(_slot) => {
                    let mut conn = match self.idle_connection() {
                        Some(conn) => conn,
                        None => Conn::open(&self.shared.config, &phase).await?,
                    };
                    conn.noop().await?;
                    self.park(conn);
                    Ok(())
                }
                Err(_) => {
                    let mut conn = Conn::open(&self.shared.config, &phase).await?;
                    conn.noop().await
                }
            };
            checked
        };
        match tokio::time::timeout(timeout, checking).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!(
                "the relay cannot be reached: {}",
                reply_code(&e).map_or("no reply".to_string(), |c| c.to_string())
            )),
            Err(_) => Err("the relay did not answer in time".into()),
        }
    }
}

/// How one try at a message ended.
enum Sent {
    Done(Result<(), SendError>),
    /// Written but for its end, and withdrawn: the hold outlasted its patience.
    Withdrawn,
}

/// The relay's reply code in a failure's text, when the failure was a reply.
fn reply_code(e: &SendError) -> Option<u16> {
    let text = e.text();
    let rest = text
        .strip_prefix("permanent error (")
        .or_else(|| text.strip_prefix("transient error ("))?;
    rest.get(..3)?.parse().ok()
}

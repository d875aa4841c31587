//! One SMTP connection: opening it (greeting, EHLO, STARTTLS, AUTH) and one mail transaction
//! at a time on it, pipelined (RFC 2920) when the relay offers it.

use super::endpoint::{Endpoint, Host, Security};
use super::reply::{self, Extensions, Reply};
use super::{Config, Phase};
use crate::mail::SendError;
use base64::Engine as _;
use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Why a connection cannot go on.
#[derive(Debug)]
pub(super) enum Broken {
    Io(std::io::Error),
    Closed,
    Timeout,
    Protocol(String),
}

impl Broken {
    /// A connection that was closed or reset (not one that stalled, nor one that talks
    /// nonsense): what a pooled connection the relay has given up on looks like.
    fn is_dead(&self) -> bool {
        matches!(self, Broken::Io(_) | Broken::Closed)
    }

    /// As a failure of the send, `what` being the command it came at. The shapes are lettre's
    /// (`network error`, `no answer from the relay`, `response error`) that `admin::outbox`
    /// classes errors by.
    fn error(&self, what: &str, limit: Duration) -> SendError {
        SendError::Transient(match self {
            Broken::Io(e) => format!("network error: {e} ({what})"),
            Broken::Closed => format!("network error: the relay closed the connection ({what})"),
            Broken::Timeout => format!(
                "no answer from the relay within {} ({what})",
                super::seconds(limit)
            ),
            Broken::Protocol(p) => format!("response error: {p} ({what})"),
        })
    }
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Broken::Io(e) => write!(f, "{e}"),
            Broken::Closed => f.write_str("the relay closed the connection"),
            Broken::Timeout => f.write_str("no answer in time"),
            Broken::Protocol(p) => f.write_str(p),
        }
    }
}

/// What a transaction left behind.
pub(super) struct Outcome {
    pub result: Result<(), SendError>,
    /// The connection is in step with the relay and can carry the next message.
    pub reusable: bool,
    /// It failed before the relay answered anything about this message, the way a connection
    /// the relay has already closed fails (closed, reset, or 421): no byte of the message's
    /// content was written, so the relay cannot have taken it, and it may go again on a new
    /// connection.
    pub stale: bool,
    /// Its content was written but for the final ".", and the hold was not lifted in time:
    /// the connection is to be closed unended, which makes the relay throw the message away
    /// (RFC 5321 4.1.1.4), and the message sent again once the hold is lifted.
    pub withdrawn: bool,
}

impl Outcome {
    fn done(result: Result<(), SendError>, reusable: bool) -> Outcome {
        Outcome {
            result,
            reusable,
            stale: false,
            withdrawn: false,
        }
    }
}

/// The end of a message's content (after its last line's CRLF).
const END: &[u8] = b".\r\n";

/// What a message's final "." waits for: until it is lifted, the relay may be given all of the
/// message but its end, so it cannot take it yet (how a sender keeps the relay from taking an
/// email before the outcome of the last one is recorded, without waiting to start it). Waited
/// for `patience` at most.
pub(crate) struct Hold<'g> {
    gate: Option<std::pin::Pin<&'g mut (dyn Future<Output = ()> + Send)>>,
    patience: Duration,
}

impl<'g> Hold<'g> {
    /// Nothing to wait for.
    pub fn none() -> Hold<'static> {
        Hold {
            gate: None,
            patience: Duration::ZERO,
        }
    }

    pub fn new(
        gate: std::pin::Pin<&'g mut (dyn Future<Output = ()> + Send)>,
        patience: Duration,
    ) -> Hold<'g> {
        Hold {
            gate: Some(gate),
            patience,
        }
    }

    /// Whether it is lifted already (it is looked at, not waited for).
    pub fn is_lifted(&mut self) -> bool {
        let Some(gate) = self.gate.as_mut() else {
            return true;
        };
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        if gate.as_mut().poll(&mut cx).is_ready() {
            self.gate = None;
            return true;
        }
        false
    }

    /// Waits for it to be lifted, `patience` at most: whether it was.
    async fn wait(&mut self) -> bool {
        let Some(gate) = self.gate.as_mut() else {
            return true;
        };
        if tokio::time::timeout(self.patience, gate.as_mut())
            .await
            .is_ok()
        {
            self.gate = None;
            return true;
        }
        false
    }

    /// Waits for it to be lifted, however long that takes.
    pub async fn lifted(&mut self) {
        if let Some(gate) = self.gate.as_mut() {
            gate.as_mut().await;
            self.gate = None;
        }
    }
}

/// One message, ready to go: the envelope and its content as written after DATA.
pub(super) struct Message<'a> {
    /// The reverse path ("" for the null sender).
    pub from: &'a str,
    pub to: &'a [&'a str],
    /// Dot-stuffed, ending with the terminating ".".
    pub payload: &'a [u8],
    /// The size declared with SIZE: the message's own length.
    pub size: usize,
    /// It has bytes beyond ASCII.
    pub eight_bit: bool,
    /// An address has characters beyond ASCII.
    pub utf8_addresses: bool,
}

pub(super) struct Conn {
    stream: Stream,
    /// Received, not yet read as a reply.
    inbox: Vec<u8>,
    ext: Extensions,
    /// For each write, and each reply but the one to the content (which the whole send's
    /// time bounds).
    limit: Duration,
}

async fn timed<T>(
    limit: Duration,
    f: impl Future<Output = std::io::Result<T>>,
) -> Result<T, Broken> {
    match tokio::time::timeout(limit, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Broken::Io(e)),
        Err(_) => Err(Broken::Timeout),
    }
}

/// A TCP connection to the first of the host's addresses that takes one, with TCP_NODELAY
/// (each write goes at once: nothing waits for the relay's delayed acknowledgement).
async fn connect(endpoint: &Endpoint) -> std::io::Result<TcpStream> {
    let addresses: Vec<std::net::SocketAddr> = match &endpoint.host {
        Host::Ip(ip) => vec![(*ip, endpoint.port).into()],
        Host::Name(name) => tokio::net::lookup_host((name.as_str(), endpoint.port))
            .await?
            .collect(),
    };
    let mut last = None;
    for address in addresses {
        match TcpStream::connect(address).await {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("the host has no address")))
}

impl Conn {
    /// A connection ready for mail: greeted, EHLO (HELO when EHLO is refused), encrypted as
    /// the URL asks, authenticated when it carries a password. `phase` becomes
    /// [`Phase::Session`] once the relay has greeted.
    ///
    /// Not reaching the relay (no connection, no greeting within `limit`, TLS refused, or
    /// STARTTLS required and not offered) is [`SendError::Unreachable`]; after the greeting,
    /// replies are classed by their code and a broken session is transient.
    pub async fn open(config: &Config, phase: &AtomicU8) -> Result<Conn, SendError> {
        let limit = config.limit;
        let unreachable = |e: String| SendError::Unreachable(format!("Connection error: {e}"));
        let opening = async {
            let tcp = connect(&config.endpoint)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let stream = match config.endpoint.security {
                Security::Implicit => Stream::Tls(Box::new(config.handshake(tcp).await?)),
                _ => Stream::Plain(tcp),
            };
            let mut conn = Conn {
                stream,
                inbox: Vec::with_capacity(1024),
                ext: Extensions::default(),
                limit,
            };
            let greeting = conn
                .read_reply_untimed()
                .await
                .map_err(|e| unreachable(format!("{e} (before its greeting)")))?;
            Ok::<_, SendError>((conn, greeting))
        };
        let (mut conn, greeting) = tokio::time::timeout(limit, opening).await.map_err(|_| {
            unreachable(format!(
                "the relay did not answer within {}",
                super::seconds(limit)
            ))
        })??;
        phase.store(Phase::Session as u8, Ordering::SeqCst);
        if greeting.code != 220 {
            return Err(greeting.error());
        }
        conn.hello(&config.hello).await?;
        let starttls = match config.endpoint.security {
            Security::Required if !conn.ext.starttls => {
                return Err(SendError::Unreachable(
                    "tls error: the relay does not offer STARTTLS, which the URL requires \
                     (?tls=required): nothing was sent"
                        .into(),
                ))
            }
            Security::Required => true,
            Security::Opportunistic => conn.ext.starttls,
            Security::None | Security::Implicit => false,
        };
        if starttls {
            conn = conn.starttls(config).await?;
        }
        if let Some((user, password)) = &config.endpoint.credentials {
            conn.auth(user, password).await?;
        }
        Ok(conn)
    }

    async fn starttls(mut self, config: &Config) -> Result<Conn, SendError> {
        let reply = self.command("STARTTLS\r\n", "STARTTLS").await?;
        if reply.code != 220 {
            return Err(SendError::Unreachable(format!(
                "tls error: the relay refused STARTTLS ({}): {}",
                reply.code,
                reply.text()
            )));
        }
        // Whatever came with the reply came before encryption: it cannot be trusted.
        if !self.inbox.is_empty() {
            return Err(SendError::Unreachable(
                "tls error: the relay sent more than its reply to STARTTLS".into(),
            ));
        }
        let Stream::Plain(tcp) = self.stream else {
            return Err(SendError::Unreachable(
                "tls error: STARTTLS on an encrypted connection".into(),
            ));
        };
        let tls = tokio::time::timeout(self.limit, config.handshake(tcp))
            .await
            .map_err(|_| {
                SendError::Unreachable(format!(
                    "tls error: no TLS handshake within {}",
                    super::seconds(self.limit)
                ))
            })??;
        let mut conn = Conn {
            stream: Stream::Tls(Box::new(tls)),
            inbox: self.inbox,
            ext: Extensions::default(),
            limit: self.limit,
        };
        // RFC 3207: what was learned before TLS is forgotten; the relay is asked again.
        conn.hello(&config.hello).await?;
        Ok(conn)
    }

    async fn hello(&mut self, name: &str) -> Result<(), SendError> {
        let ehlo = self.command(&format!("EHLO {name}\r\n"), "EHLO").await?;
        if ehlo.code == 250 {
            self.ext = Extensions::from_ehlo(&ehlo);
            return Ok(());
        }
        if ehlo.code / 100 != 5 {
            return Err(self.unexpected(&ehlo, "EHLO"));
        }
        // A relay that does not know EHLO: plain SMTP, without extensions.
        let helo = self.command(&format!("HELO {name}\r\n"), "HELO").await?;
        if helo.code != 250 {
            return Err(self.unexpected(&helo, "HELO"));
        }
        self.ext = Extensions::default();
        Ok(())
    }

    /// AUTH PLAIN (RFC 4616) when offered, else LOGIN, as lettre chose.
    async fn auth(&mut self, user: &str, password: &str) -> Result<(), SendError> {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let mut reply = if self.ext.auth_plain {
            let plain = b64(&format!("\0{user}\0{password}"));
            let mut reply = self
                .command(&format!("AUTH PLAIN {plain}\r\n"), "AUTH")
                .await?;
            // A relay that ignores the initial response asks for it.
            if reply.code == 334 {
                reply = self.command(&format!("{plain}\r\n"), "AUTH").await?;
            }
            reply
        } else if self.ext.auth_login {
            let mut reply = self.command("AUTH LOGIN\r\n", "AUTH").await?;
            for answer in [user, password] {
                if reply.code != 334 {
                    break;
                }
                reply = self
                    .command(&format!("{}\r\n", b64(answer)), "AUTH")
                    .await?;
            }
            reply
        } else {
            return Err(SendError::Transient(
                "internal client error: No compatible authentication mechanism was found".into(),
            ));
        };
        if reply.code == 334 {
            // More challenges than the mechanism has: give up on the exchange.
            reply = self.command("*\r\n", "AUTH").await?;
        }
        match reply.code {
            235 => Ok(()),
            _ if reply.is_refusal() => Err(reply.error()),
            _ => Err(SendError::Transient(format!(
                "response error: unexpected reply to AUTH ({})",
                reply.code
            ))),
        }
    }

    /// Whether the connection still looks open, without sending anything: nothing unread, and
    /// no end of stream, error or unasked-for data (a relay's 421 before it closes) waiting.
    pub fn looks_alive(&mut self) -> bool {
        if !self.inbox.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        let ready = match &mut self.stream {
            Stream::Plain(s) => futures_util::FutureExt::now_or_never(s.read(&mut probe)),
            Stream::Tls(s) => futures_util::FutureExt::now_or_never(s.read(&mut probe)),
        };
        ready.is_none()
    }

    /// NOOP, for the readiness check.
    pub async fn noop(&mut self) -> Result<(), SendError> {
        let reply = self.command("NOOP\r\n", "NOOP").await?;
        if reply.is_completion() {
            Ok(())
        } else {
            Err(reply.error())
        }
    }

    /// Sends one message. With PIPELINING, MAIL FROM, every RCPT TO and DATA go in one write
    /// and their replies are read after, every one of them, in order; without it, one command
    /// at a time. The content and its final "." go in one write. A refusal leaves the
    /// connection usable after RSET; a broken session, a stall or a 421 leaves it to be closed.
    ///
    /// The final "." waits for `hold` (see [`Hold`]).
    pub async fn transaction(&mut self, m: &Message<'_>, hold: &mut Hold<'_>) -> Outcome {
        let mut mail = format!("MAIL FROM:<{}>", m.from);
        if self.ext.size {
            mail.push_str(&format!(" SIZE={}", m.size));
        }
        if m.eight_bit {
            if !self.ext.eight_bit_mime {
                return Outcome::done(
                    Err(SendError::Transient(
                        "internal client error: Message contains non-ascii chars but server \
                         does not support 8BITMIME"
                            .into(),
                    )),
                    true,
                );
            }
            mail.push_str(" BODY=8BITMIME");
        }
        if m.utf8_addresses {
            if !self.ext.smtputf8 {
                return Outcome::done(
                    Err(SendError::Transient(
                        "internal client error: Envelope contains non-ascii chars but server \
                         does not support SMTPUTF8"
                            .into(),
                    )),
                    true,
                );
            }
            mail.push_str(" SMTPUTF8");
        }
        mail.push_str("\r\n");
        if self.ext.pipelining {
            self.pipelined(&mail, m, hold).await
        } else {
            self.lock_step(&mail, m, hold).await
        }
    }

    async fn pipelined(&mut self, mail: &str, m: &Message<'_>, hold: &mut Hold<'_>) -> Outcome {
        let mut group = String::with_capacity(mail.len() + 40 * m.to.len() + 6);
        group.push_str(mail);
        for to in m.to {
            group.push_str(&format!("RCPT TO:<{to}>\r\n"));
        }
        group.push_str("DATA\r\n");
        if let Err(b) = self.write(group.as_bytes()).await {
            return self.broken_before_any_reply(b, "MAIL FROM");
        }
        let mail_reply = match self.read_reply().await {
            Ok(r) if r.code == 421 => return self.closing_before_any_reply(r),
            Ok(r) => r,
            Err(b) => return self.broken_before_any_reply(b, "MAIL FROM"),
        };
        if !(mail_reply.is_completion() || mail_reply.is_refusal()) {
            return self.out_of_step(&mail_reply, "MAIL FROM");
        }
        // Every reply is read, whatever came before, so that the next one read is this
        // group's last. A refused MAIL FROM is the reason (what follows it only says there was
        // no transaction); else a recipient refused for good wins over one refused for now.
        let sender_refused = !mail_reply.is_completion();
        let mut refused: Option<Reply> = sender_refused.then_some(mail_reply);
        let mut accepted = 0;
        for _ in m.to {
            let r = match self.read_reply().await {
                Ok(r) if r.code == 421 => return Outcome::done(Err(r.error()), false),
                Ok(r) => r,
                Err(b) => return Outcome::done(Err(self.broken(b, "RCPT TO")), false),
            };
            if r.is_completion() {
                accepted += 1;
            } else if !r.is_refusal() {
                return self.out_of_step(&r, "RCPT TO");
            } else if !sender_refused
                && refused
                    .as_ref()
                    .is_none_or(|f| f.code / 100 == 4 && r.code / 100 == 5)
            {
                refused = Some(r);
            }
        }
        let data = match self.read_reply().await {
            Ok(r) if r.code == 421 => return Outcome::done(Err(r.error()), false),
            Ok(r) => r,
            Err(b) => return Outcome::done(Err(self.broken(b, "DATA")), false),
        };
        match (refused, data.code) {
            (None, 354) => self.content(m.payload, hold).await,
            (None, _) if data.is_refusal() => self.refused(&data).await,
            (None, _) => self.out_of_step(&data, "DATA"),
            (Some(refusal), 354) if accepted > 0 => {
                // The relay would deliver whatever comes now to the recipients it took: the
                // only way to take the transaction back is to close the connection.
                Outcome::done(Err(refusal.error()), false)
            }
            (Some(refusal), 354) => {
                // DATA taken with nobody to deliver to (RFC 2920 3.1): end the empty content.
                if let Err(b) = self.write(b".\r\n").await {
                    return Outcome::done(Err(self.broken(b, "DATA")), false);
                }
                match self.read_reply().await {
                    Ok(r) if r.code != 421 => self.refused(&refusal).await,
                    _ => Outcome::done(Err(refusal.error()), false),
                }
            }
            (Some(refusal), _) if data.is_refusal() => self.refused(&refusal).await,
            (Some(_), _) => self.out_of_step(&data, "DATA"),
        }
    }

    async fn lock_step(&mut self, mail: &str, m: &Message<'_>, hold: &mut Hold<'_>) -> Outcome {
        let r = match self.command_broken(mail).await {
            Ok(r) if r.code == 421 => return self.closing_before_any_reply(r),
            Ok(r) => r,
            Err(b) => return self.broken_before_any_reply(b, "MAIL FROM"),
        };
        if r.is_refusal() {
            return self.refused(&r).await;
        }
        if !r.is_completion() {
            return self.out_of_step(&r, "MAIL FROM");
        }
        for to in m.to {
            let r = match self.command_broken(&format!("RCPT TO:<{to}>\r\n")).await {
                Ok(r) if r.code == 421 => return Outcome::done(Err(r.error()), false),
                Ok(r) => r,
                Err(b) => return Outcome::done(Err(self.broken(b, "RCPT TO")), false),
            };
            if r.is_refusal() {
                return self.refused(&r).await;
            }
            if !r.is_completion() {
                return self.out_of_step(&r, "RCPT TO");
            }
        }
        match self.command_broken("DATA\r\n").await {
            Ok(r) if r.code == 354 => self.content(m.payload, hold).await,
            Ok(r) if r.code == 421 => Outcome::done(Err(r.error()), false),
            Ok(r) if r.is_refusal() => self.refused(&r).await,
            Ok(r) => self.out_of_step(&r, "DATA"),
            Err(b) => Outcome::done(Err(self.broken(b, "DATA")), false),
        }
    }

    /// The content and its final "." in one write, then the relay's verdict. From here on
    /// nothing is tried again: the relay may have the message. The verdict may take the relay
    /// a while (RFC 5321 4.5.3.2 gives it ten minutes): it is waited for as long as the whole
    /// send may take, not just one reply's time, since giving up early is how a message the
    /// relay then takes would be sent twice.
    ///
    /// While `hold` is not yet lifted, everything but the final "." is written first, and the
    /// "." only once it is: the relay cannot take the message before then.
    async fn content(&mut self, payload: &[u8], hold: &mut Hold<'_>) -> Outcome {
        let written = if hold.is_lifted() {
            self.write(payload).await
        } else {
            let (body, end) = payload.split_at(payload.len() - END.len());
            debug_assert_eq!(end, END);
            match self.write(body).await {
                Err(b) => Err(b),
                Ok(()) if !hold.wait().await => {
                    return Outcome {
                        result: Err(SendError::Transient(
                            "internal client error: the message was withdrawn before its end"
                                .into(),
                        )),
                        reusable: false,
                        stale: false,
                        withdrawn: true,
                    };
                }
                Ok(()) => self.write(end).await,
            }
        };
        if let Err(b) = written {
            return Outcome::done(Err(self.broken(b, "the message's content")), false);
        }
        match self.read_reply_untimed().await {
            Ok(r) if r.is_completion() => Outcome::done(Ok(()), true),
            Ok(r) if r.code == 421 => Outcome::done(Err(r.error()), false),
            Ok(r) if r.is_refusal() => self.refused(&r).await,
            Ok(r) => self.out_of_step(&r, "the message's final dot"),
            Err(b) => Outcome::done(Err(self.broken(b, "the message's final dot")), false),
        }
    }

    /// The message failed with `reply`; RSET puts the connection back at the start for the
    /// next one (and it is closed when RSET does not work either).
    async fn refused(&mut self, reply: &Reply) -> Outcome {
        let reset = matches!(self.command_broken("RSET\r\n").await, Ok(r) if r.is_completion());
        Outcome::done(Err(reply.error()), reset)
    }

    fn out_of_step(&self, reply: &Reply, what: &str) -> Outcome {
        Outcome::done(Err(self.unexpected(reply, what)), false)
    }

    /// A refusal as its code says; any other reply than the one expected as a relay out of
    /// step.
    fn unexpected(&self, reply: &Reply, what: &str) -> SendError {
        if reply.is_refusal() {
            reply.error()
        } else {
            SendError::Transient(format!(
                "response error: unexpected reply ({}) to {what}: {}",
                reply.code,
                reply.text()
            ))
        }
    }

    fn broken(&self, b: Broken, what: &str) -> SendError {
        b.error(what, self.limit)
    }

    fn broken_before_any_reply(&self, b: Broken, what: &str) -> Outcome {
        Outcome {
            withdrawn: false,
            stale: b.is_dead(),
            result: Err(self.broken(b, what)),
            reusable: false,
        }
    }

    fn closing_before_any_reply(&self, reply: Reply) -> Outcome {
        Outcome {
            withdrawn: false,
            result: Err(reply.error()),
            reusable: false,
            stale: true,
        }
    }

    /// Writes `line` and reads its reply, a broken session being a passing failure.
    async fn command(&mut self, line: &str, what: &str) -> Result<Reply, SendError> {
        self.command_broken(line)
            .await
            .map_err(|b| b.error(what, self.limit))
    }

    async fn command_broken(&mut self, line: &str) -> Result<Reply, Broken> {
        self.write(line.as_bytes()).await?;
        self.read_reply().await
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), Broken> {
        let limit = self.limit;
        match &mut self.stream {
            Stream::Plain(s) => timed(limit, s.write_all(bytes)).await,
            Stream::Tls(s) => {
                timed(limit, async {
                    s.write_all(bytes).await?;
                    s.flush().await
                })
                .await
            }
        }
    }

    async fn read_reply(&mut self) -> Result<Reply, Broken> {
        let limit = self.limit;
        match tokio::time::timeout(limit, self.read_reply_untimed()).await {
            Ok(r) => r,
            Err(_) => Err(Broken::Timeout),
        }
    }

    async fn read_reply_untimed(&mut self) -> Result<Reply, Broken> {
        loop {
            if let Some((reply, used)) = reply::parse(&self.inbox).map_err(Broken::Protocol)? {
                self.inbox.drain(..used);
                return Ok(reply);
            }
            self.inbox.reserve(4096);
            let n = match &mut self.stream {
                Stream::Plain(s) => s.read_buf(&mut self.inbox).await,
                Stream::Tls(s) => s.read_buf(&mut self.inbox).await,
            }
            .map_err(Broken::Io)?;
            if n == 0 {
                return Err(Broken::Closed);
            }
        }
    }
}

//! The SMTP server (RFC 5321) that receives bounces: every email goes out with a VERP return
//! path (`bounces+TOKEN@…`), and the delivery status notifications that remote servers send
//! back to it arrive here, one whole message at a time, for a [`Sink`] to take.
//!
//! It has no AUTH and no STARTTLS: it sits behind the organisation's relay, which takes mail
//! for the bounce domain from the internet and hands it on to us, so nothing but the relay
//! should reach it. What it does check is cheap: a recipient is taken only if the sink says so
//! (a signature check on the token), so anything else is refused before its content is read.
//!
//! mailin gives the protocol's states and parses the commands; the I/O, the framing of lines
//! and the message content are ours, so that every read is bounded: a command line by
//! [`MAX_COMMAND_LINE`], a message by [`Limits::max_message_bytes`] (the rest of a larger one
//! is read and thrown away), the connections by [`Limits::max_connections`] and the time by
//! the two timeouts. mailin 0.6 cannot parse `MAIL FROM:<>` (the null sender every bounce
//! has) nor a `SIZE=` parameter, advertises only 8BITMIME, and its replies carry no enhanced
//! status codes: so MAIL is parsed here and given to mailin in a form it takes, the EHLO reply
//! is ours, and its replies are written with enhanced codes (RFC 3463).
//!
//! Nothing here logs an address or any of a message: only the peer's IP, counts and codes.
//! mailin itself logs each command line it is given (a RCPT line holds an address) and each
//! reply, at trace level through `log`: its target `mailin` must stay below trace, as the
//! default filter keeps it. It is never given a message's content, nor a real sender.

use futures_util::future::BoxFuture;
use mailin::{Action, Handler, Response, SessionBuilder};
use std::io;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The longest command line taken, CRLF included. RFC 5321 allows clients 512 octets; this is
/// more lenient and still small. A longer line is read to its end, thrown away and answered
/// with 500.
pub const MAX_COMMAND_LINE: usize = 4096;

/// How much is read from the socket at a time.
const READ_CHUNK: usize = 8192;

/// How long the last words to a client (a 421, the refusal of one connection too many) may
/// take: they are written when its time may already be up, and a client that reads nothing
/// must not hold the connection open.
const LAST_WORDS: Duration = Duration::from_secs(1);

/// What one client may take of us.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The largest message content taken, in octets after dot-unstuffing; advertised as SIZE.
    /// A larger one gets 552 5.3.4 (at MAIL when it declares its SIZE, else after its final
    /// dot, the rest of its content read and thrown away, not kept).
    pub max_message_bytes: usize,
    /// Connections served at once; one more gets "421 4.3.2 too many connections" and is
    /// closed. Each may hold up to `max_message_bytes` while it receives a message.
    pub max_connections: usize,
    /// Recipients taken per message; more get 452 4.5.3 (the client sends them again later).
    pub max_recipients: usize,
    /// How long any one read may wait, for a command or for more of a message's content (and
    /// how long writing a reply may take); then "421 4.4.2 timeout" and the connection closes.
    pub command_timeout: Duration,
    /// How long a whole connection may last, the sink's delivery included.
    pub session_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 10 * 1024 * 1024,
            max_connections: 32,
            max_recipients: 10,
            command_timeout: Duration::from_secs(60),
            session_timeout: Duration::from_secs(600),
        }
    }
}

/// What became of a message handed to the [`Sink`]: the reply to its final dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivered {
    /// Taken: 250.
    Accepted,
    /// Refused for good: 554 5.6.0 and this text (which reaches the remote server, so it
    /// should say what was wrong without quoting the message).
    Rejected(String),
    /// Not taken this time (the database is away, say): 451 4.3.0 and this text, so that the
    /// remote server tries again later and nothing is lost.
    Failed(String),
}

/// Where received messages go.
pub trait Sink: Send + Sync + 'static {
    /// Whether mail to this address is taken at RCPT TO (cheap, no I/O: a signature check).
    /// No → 550 5.1.1.
    fn accepts(&self, rcpt: &str) -> bool;

    /// One whole message as received: envelope sender ("" for the null sender <>), the
    /// accepted recipients, and the content (dot-unstuffed, exactly the bytes between DATA and
    /// the final dot). The reply to the final dot waits for this. It runs within the
    /// connection's `session_timeout`: the future is dropped when that runs out (the client
    /// gets 421 and will send the message again, so a sink must take the same message twice
    /// calmly, as it must anyway: a reply lost on the way back has the same effect).
    fn deliver(
        &self,
        from: String,
        rcpts: Vec<String>,
        raw: Vec<u8>,
    ) -> BoxFuture<'static, Delivered>;
}

/// Serves until `shutdown` is cancelled: then stops accepting, lets each session finish the
/// message it is receiving (a session between messages gets 421 and is closed), and returns.
/// Waiting for those messages is bounded by `session_timeout`.
///
/// An error accepting one connection is not the end: those that concern only that connection
/// are passed over, others (out of file descriptors, say) logged and tried again after a
/// second, as `axum::serve` does. So today this returns only `Ok`.
pub async fn serve(
    listener: TcpListener,
    hostname: String,
    sink: Arc<dyn Sink>,
    limits: Limits,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(
        limits.max_connections.min(Semaphore::MAX_PERMITS),
    ));
    let shared = Arc::new(Shared {
        ehlo: ehlo_reply(&hostname, limits.max_message_bytes),
        hostname,
        sink,
        limits,
    });
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(done) = sessions.join_next(), if !sessions.is_empty() => reaped(done),
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let ip = peer.ip();
                    match slots.clone().try_acquire_owned() {
                        Ok(slot) => {
                            let shared = shared.clone();
                            let shutdown = shutdown.clone();
                            sessions.spawn(async move {
                                session(stream, ip, &shared, &shutdown).await;
                                drop(slot);
                            });
                        }
                        Err(_) => {
                            tracing::info!(peer = %ip, "bounce listener: too many connections, one refused");
                            sessions.spawn(refuse(stream));
                        }
                    }
                }
                Err(e) if connection_error(&e) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "bounce listener: accepting a connection failed");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        () = shutdown.cancelled() => break,
                    }
                }
            },
        }
    }
    drop(listener);
    while let Some(done) = sessions.join_next().await {
        reaped(done);
    }
    Ok(())
}

/// An accept error that concerns only the connection being accepted.
fn connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

fn reaped(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        if e.is_panic() {
            tracing::error!("bounce listener: a session panicked");
        }
    }
}

/// One connection too many: told so and closed, none of its commands served.
async fn refuse(mut stream: TcpStream) {
    let _ = tokio::time::timeout(LAST_WORDS, async {
        stream
            .write_all(b"421 4.3.2 too many connections\r\n")
            .await?;
        linger(&mut stream).await
    })
    .await;
}

/// Closes our side, then reads (and throws away) what the client still sends until it closes
/// its own: closing with its commands unread would reset the connection, and a reset can lose
/// the last reply (a 421) before the client has read it. The caller bounds how long.
async fn linger(stream: &mut TcpStream) -> io::Result<()> {
    stream.shutdown().await?;
    let mut sink = [0u8; 1024];
    while stream.read(&mut sink).await? > 0 {}
    Ok(())
}

/// What all sessions share.
struct Shared {
    hostname: String,
    sink: Arc<dyn Sink>,
    limits: Limits,
    /// The EHLO reply, the same for every session.
    ehlo: Vec<u8>,
}

fn ehlo_reply(hostname: &str, max_message_bytes: usize) -> Vec<u8> {
    format!(
        "250-{hostname}\r\n250-SIZE {max_message_bytes}\r\n250-8BITMIME\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n"
    )
    .into_bytes()
}

/// Why a session ends.
enum Stop {
    /// QUIT.
    Quit,
    /// The client closed the connection, or it failed.
    Gone,
    /// A read or write waited longer than `command_timeout`, or the session outlasted
    /// `session_timeout`.
    Timeout,
    /// The listener is shutting down and the session is between messages.
    Shutdown,
}

impl From<io::Error> for Stop {
    fn from(_: io::Error) -> Self {
        Stop::Gone
    }
}

/// One session: the greeting, then commands until QUIT, the client going, a timeout or
/// shutdown.
async fn session(stream: TcpStream, peer: IpAddr, shared: &Shared, shutdown: &CancellationToken) {
    tracing::debug!(peer = %peer, "bounce listener: connection");
    let _ = stream.set_nodelay(true);
    let envelope = Arc::new(Mutex::new(Envelope::default()));
    let handler = Txn {
        sink: shared.sink.clone(),
        max_recipients: shared.limits.max_recipients,
        envelope: envelope.clone(),
    };
    let mut smtp = SessionBuilder::new(shared.hostname.clone()).build(peer, handler);
    let mut conn = Conn::new(stream, &shared.limits);
    conn.output
        .extend_from_slice(&render(Verb::Other, &smtp.greeting(), shared));
    let mut messages = 0usize;
    let stop = loop {
        let line = match conn.command_line(shutdown).await {
            Ok(Some(line)) => line,
            Ok(None) => {
                conn.reply(b"500 5.5.2 line too long\r\n");
                continue;
            }
            Err(stop) => break stop,
        };
        let line = trim_line_end(&line);
        let verb = Verb::of(line);
        let fed;
        let to_mailin: &[u8] = match verb {
            Verb::Mail => match parse_mail(line, shared.limits.max_message_bytes) {
                Ok(mail) => {
                    lock(&envelope).pending_from = mail.from;
                    fed = if mail.eight_bit {
                        b"MAIL FROM:<sender> BODY=8BITMIME\r\n".to_vec()
                    } else {
                        b"MAIL FROM:<sender>\r\n".to_vec()
                    };
                    &fed
                }
                Err(reply) => {
                    tracing::debug!(peer = %peer, code = &reply[..3], "bounce listener: MAIL refused");
                    conn.reply(reply.as_bytes());
                    continue;
                }
            },
            Verb::StartTls | Verb::Auth => {
                conn.reply(b"502 5.5.1 not offered here\r\n");
                continue;
            }
            _ => {
                fed = [line, b"\r\n"].concat();
                &fed
            }
        };
        let res = smtp.process(to_mailin);
        if res.code >= 400 {
            tracing::debug!(peer = %peer, command = verb.name(), code = res.code, "bounce listener: refused");
        }
        let in_transaction = lock(&envelope).from.is_some();
        if verb == Verb::Data && res.code == 503 && in_transaction {
            // mailin's Mail state (MAIL taken, no recipient yet) answers DATA with 503; RFC
            // 2920 asks for 554 when no recipient was taken.
            conn.reply(b"554 5.5.1 no valid recipients\r\n");
            continue;
        }
        conn.reply(&render(verb, &res, shared));
        if matches!(verb, Verb::Helo | Verb::Ehlo | Verb::Rset) && res.code == 250 {
            lock(&envelope).reset();
        }
        if res.action == Action::Close {
            break Stop::Quit;
        }
        if verb == Verb::Data && res.code == 354 {
            let (from, rcpts) = lock(&envelope).take();
            let recipients = rcpts.len();
            let reply = match message(&mut conn, shared, from, rcpts).await {
                Ok(reply) => reply,
                Err(stop) => break stop,
            };
            // The final dot, for mailin to leave its Data state: its handler always says OK,
            // and the reply sent is the sink's.
            smtp.process(b".\r\n");
            messages += 1;
            tracing::info!(peer = %peer, recipients, code = &reply[..3], "bounce listener: message received");
            conn.reply(reply.as_bytes());
        }
    };
    let last: &[u8] = match stop {
        Stop::Timeout => b"421 4.4.2 timeout\r\n",
        Stop::Shutdown => b"421 4.3.2 shutting down\r\n",
        Stop::Quit | Stop::Gone => b"",
    };
    if !last.is_empty() {
        conn.reply(last);
    }
    conn.close().await;
    tracing::debug!(peer = %peer, messages, "bounce listener: connection closed");
}

/// A message's content after DATA, and the reply to its final dot.
async fn message(
    conn: &mut Conn,
    shared: &Shared,
    from: String,
    rcpts: Vec<String>,
) -> Result<String, Stop> {
    let Some(raw) = conn.content(shared.limits.max_message_bytes).await? else {
        return Ok("552 5.3.4 message too big\r\n".to_string());
    };
    conn.flush().await?;
    let delivered =
        tokio::time::timeout_at(conn.session_deadline, shared.sink.deliver(from, rcpts, raw))
            .await
            .map_err(|_| Stop::Timeout)?;
    Ok(match delivered {
        Delivered::Accepted => "250 2.0.0 OK\r\n".to_string(),
        Delivered::Rejected(text) => format!("554 5.6.0 {}\r\n", reply_text(&text, "rejected")),
        Delivered::Failed(text) => {
            format!("451 4.3.0 {}\r\n", reply_text(&text, "try again later"))
        }
    })
}

/// A sink's text as one reply line: printable ASCII only, not too long.
fn reply_text(text: &str, otherwise: &str) -> String {
    let clean: String = text
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { ' ' })
        .take(200)
        .collect();
    let clean = clean.trim();
    if clean.is_empty() {
        otherwise.to_string()
    } else {
        clean.to_string()
    }
}

/// Makes room for `more` octets, growing as a Vec does (doubling) but never beyond `max`: a
/// message of the largest size taken holds `max` octets, not the next power of two.
fn grow_within(content: &mut Vec<u8>, more: usize, max: usize) {
    let needed = content.len() + more;
    if needed > content.capacity() {
        let grown = (content.capacity() * 2).clamp(needed, max.max(needed));
        content.reserve_exact(grown - content.len());
    }
}

/// A line without its CRLF (or bare LF), nor trailing spaces: mailin takes `EHLO name\r\n`
/// but not `EHLO name \r\n`.
fn trim_line_end(line: &[u8]) -> &[u8] {
    let mut end = line.len();
    while end > 0 && matches!(line[end - 1], b'\r' | b'\n' | b' ' | b'\t') {
        end -= 1;
    }
    &line[..end]
}

/// The command of a line, for what its reply says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Helo,
    Ehlo,
    Mail,
    Rcpt,
    Data,
    Rset,
    Quit,
    StartTls,
    Auth,
    Other,
}

impl Verb {
    fn of(line: &[u8]) -> Verb {
        let word = line.split(|&b| b == b' ').next().unwrap_or_default();
        let is = |name: &[u8]| word.eq_ignore_ascii_case(name);
        if is(b"HELO") {
            Verb::Helo
        } else if is(b"EHLO") {
            Verb::Ehlo
        } else if is(b"MAIL") {
            Verb::Mail
        } else if is(b"RCPT") {
            Verb::Rcpt
        } else if is(b"DATA") {
            Verb::Data
        } else if is(b"RSET") {
            Verb::Rset
        } else if is(b"QUIT") {
            Verb::Quit
        } else if is(b"STARTTLS") {
            Verb::StartTls
        } else if is(b"AUTH") {
            Verb::Auth
        } else {
            Verb::Other
        }
    }

    /// For logs (never the line itself).
    fn name(self) -> &'static str {
        match self {
            Verb::Helo => "HELO",
            Verb::Ehlo => "EHLO",
            Verb::Mail => "MAIL",
            Verb::Rcpt => "RCPT",
            Verb::Data => "DATA",
            Verb::Rset => "RSET",
            Verb::Quit => "QUIT",
            Verb::StartTls => "STARTTLS",
            Verb::Auth => "AUTH",
            Verb::Other => "other",
        }
    }
}

/// A reply of mailin's as we send it. Our handler's replies carry their enhanced code already;
/// mailin's own are rewritten by code (and command), with one.
fn render(verb: Verb, res: &Response, shared: &Shared) -> Vec<u8> {
    let written = res.buffer().unwrap_or_default();
    if has_enhanced_code(&written) {
        return written;
    }
    let host = &shared.hostname;
    let line = match (res.code, verb) {
        (220, _) => format!("220 {host} ESMTP"),
        (250, Verb::Ehlo) => return shared.ehlo.clone(),
        (250, Verb::Helo) => format!("250 {host}"),
        (250, Verb::Mail) => "250 2.1.0 OK".to_string(),
        (250, Verb::Rcpt) => "250 2.1.5 OK".to_string(),
        (250, _) => "250 2.0.0 OK".to_string(),
        (221, _) => format!("221 2.0.0 {host} closing connection"),
        (252, _) => "252 2.5.0 cannot verify, send mail to try".to_string(),
        (354, _) => "354 end data with <CR><LF>.<CR><LF>".to_string(),
        (500, _) => "500 5.5.2 syntax error".to_string(),
        // mailin's "missing parameter" (a parser's Incomplete) is a syntax error in a
        // parameter, 501 (502 means a command not implemented).
        (502, _) => "501 5.5.4 missing parameter".to_string(),
        (503, _) => "503 5.5.1 bad sequence of commands".to_string(),
        (code @ 400..=499, _) => format!("{code} 4.0.0 try again later"),
        (code @ 500..=599, _) => format!("{code} 5.0.0 refused"),
        (code, _) => format!("{code} 2.0.0 OK"),
    };
    format!("{line}\r\n").into_bytes()
}

/// Whether a written reply's text begins with an enhanced status code (`2.1.5 …`).
fn has_enhanced_code(written: &[u8]) -> bool {
    let text = written.get(4..).unwrap_or_default();
    text.len() >= 5 && text[0].is_ascii_digit() && text[1] == b'.' && text[2].is_ascii_digit()
}

/// A MAIL command as we parse it: mailin 0.6 takes neither the null sender nor SIZE=.
#[derive(Debug, PartialEq, Eq)]
struct MailFrom {
    /// The reverse path without its angle brackets: "" for the null sender.
    from: String,
    eight_bit: bool,
}

/// `MAIL FROM:<path> [SIZE=n] [BODY=7BIT|8BITMIME]`, or the reply refusing it. A space after
/// the colon is tolerated (some clients write one).
fn parse_mail(line: &[u8], max_message_bytes: usize) -> Result<MailFrom, String> {
    const SYNTAX: &str = "501 5.5.4 syntax: MAIL FROM:<address>\r\n";
    let prefix = b"MAIL FROM:";
    if line.len() < prefix.len() || !line[..prefix.len()].eq_ignore_ascii_case(prefix) {
        return Err(SYNTAX.into());
    }
    let rest = line[prefix.len()..].trim_ascii_start();
    let Some(rest) = rest.strip_prefix(b"<") else {
        return Err(SYNTAX.into());
    };
    let Some(close) = rest.iter().position(|&b| b == b'>') else {
        return Err(SYNTAX.into());
    };
    let path = &rest[..close];
    let from = match std::str::from_utf8(path) {
        Ok(p) if !p.contains(|c: char| c.is_whitespace() || c.is_control() || c == '<') => p,
        _ => return Err("501 5.1.7 bad sender address syntax\r\n".into()),
    };
    let params = &rest[close + 1..];
    if !params.is_empty() && !params.starts_with(b" ") {
        return Err(SYNTAX.into());
    }
    let mut eight_bit = false;
    for param in params.split(|&b| b == b' ').filter(|p| !p.is_empty()) {
        let (key, value) = match param.iter().position(|&b| b == b'=') {
            Some(eq) => (&param[..eq], &param[eq + 1..]),
            None => (param, &b""[..]),
        };
        if key.eq_ignore_ascii_case(b"SIZE") {
            let size = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| "501 5.5.4 bad SIZE\r\n".to_string())?;
            if size > max_message_bytes as u64 {
                return Err("552 5.3.4 message too big\r\n".into());
            }
        } else if key.eq_ignore_ascii_case(b"BODY") {
            if value.eq_ignore_ascii_case(b"8BITMIME") {
                eight_bit = true;
            } else if !value.eq_ignore_ascii_case(b"7BIT") {
                return Err("501 5.5.4 bad BODY\r\n".into());
            }
        } else {
            return Err("555 5.5.4 parameter not supported\r\n".into());
        }
    }
    Ok(MailFrom {
        from: from.to_string(),
        eight_bit,
    })
}

/// The transaction under way, shared between the session (which parses MAIL) and the handler
/// mailin calls (which sees RCPT and DATA): mailin keeps its handler to itself.
#[derive(Default)]
struct Envelope {
    /// The sender of the MAIL command being given to mailin.
    pending_from: String,
    /// The sender, once mailin has taken MAIL.
    from: Option<String>,
    /// Recipients taken since MAIL.
    rcpts: usize,
    /// Sender and recipients, once mailin has taken DATA.
    ready: Option<(String, Vec<String>)>,
}

impl Envelope {
    fn reset(&mut self) {
        *self = Envelope::default();
    }

    /// The sender and recipients of the message whose content comes next, and the end of
    /// the transaction.
    fn take(&mut self) -> (String, Vec<String>) {
        let ready = self.ready.take().unwrap_or_default();
        self.reset();
        ready
    }
}

fn lock(envelope: &Mutex<Envelope>) -> std::sync::MutexGuard<'_, Envelope> {
    envelope.lock().unwrap_or_else(PoisonError::into_inner)
}

/// mailin's handler: the decisions at MAIL, RCPT and DATA.
struct Txn {
    sink: Arc<dyn Sink>,
    max_recipients: usize,
    envelope: Arc<Mutex<Envelope>>,
}

impl Handler for Txn {
    fn mail(&mut self, _ip: IpAddr, _domain: &str, _from: &str) -> Response {
        // `_from` is the stand-in given to mailin; the real one was parsed before.
        let mut envelope = lock(&self.envelope);
        let from = std::mem::take(&mut envelope.pending_from);
        envelope.reset();
        envelope.from = Some(from);
        Response::custom(250, "2.1.0 OK".into())
    }

    fn rcpt(&mut self, to: &str) -> Response {
        let mut envelope = lock(&self.envelope);
        if envelope.rcpts >= self.max_recipients {
            Response::custom(452, "4.5.3 too many recipients".into())
        } else if !self.sink.accepts(to) {
            Response::custom(550, "5.1.1 mailbox unavailable".into())
        } else {
            envelope.rcpts += 1;
            Response::custom(250, "2.1.5 OK".into())
        }
    }

    fn data_start(&mut self, _domain: &str, _from: &str, _is8bit: bool, to: &[String]) -> Response {
        let mut envelope = lock(&self.envelope);
        let from = envelope.from.clone().unwrap_or_default();
        envelope.ready = Some((from, to.to_vec()));
        mailin::response::OK
    }
}

/// A connection's bytes: what has been read and not yet taken, and replies not yet written.
struct Conn {
    stream: TcpStream,
    input: Vec<u8>,
    /// Where the bytes not yet taken begin in `input`.
    start: usize,
    output: Vec<u8>,
    command_timeout: Duration,
    session_deadline: Instant,
}

impl Conn {
    fn new(stream: TcpStream, limits: &Limits) -> Self {
        Self {
            stream,
            input: Vec::with_capacity(READ_CHUNK),
            start: 0,
            output: Vec::new(),
            command_timeout: limits.command_timeout,
            session_deadline: Instant::now() + limits.session_timeout,
        }
    }

    /// Until when the next read or write may wait.
    fn deadline(&self) -> Instant {
        (Instant::now() + self.command_timeout).min(self.session_deadline)
    }

    /// A reply, written before the next read waits (so pipelined commands get theirs in one
    /// write).
    fn reply(&mut self, reply: &[u8]) {
        self.output.extend_from_slice(reply);
    }

    async fn flush(&mut self) -> Result<(), Stop> {
        if !self.output.is_empty() {
            tokio::time::timeout_at(self.deadline(), self.stream.write_all(&self.output))
                .await
                .map_err(|_| Stop::Timeout)??;
            self.output.clear();
        }
        Ok(())
    }

    /// Writes the replies not yet written, then reads more: at most `READ_CHUNK` octets.
    /// Waiting for a command (`shutdown` given) ends when the listener shuts down.
    async fn fill(&mut self, shutdown: Option<&CancellationToken>) -> Result<(), Stop> {
        self.flush().await?;
        self.input.drain(..self.start);
        self.start = 0;
        let len = self.input.len();
        self.input.resize(len + READ_CHUNK, 0);
        let deadline = self.deadline();
        let read = tokio::time::timeout_at(deadline, self.stream.read(&mut self.input[len..]));
        let read = match shutdown {
            Some(shutdown) => tokio::select! {
                read = read => Some(read),
                () = shutdown.cancelled() => None,
            },
            None => Some(read.await),
        };
        let n = match read {
            Some(Ok(Ok(n))) => n,
            stopped => {
                self.input.truncate(len);
                return Err(match stopped {
                    None => Stop::Shutdown,
                    Some(Err(_)) => Stop::Timeout,
                    Some(Ok(_)) => Stop::Gone,
                });
            }
        };
        self.input.truncate(len + n);
        if n == 0 {
            return Err(Stop::Gone);
        }
        Ok(())
    }

    /// The next command line, LF included; `None` for one longer than [`MAX_COMMAND_LINE`],
    /// which has been read to its end and thrown away. Between messages is where shutdown
    /// ends a session, even with pipelined commands still unread.
    async fn command_line(
        &mut self,
        shutdown: &CancellationToken,
    ) -> Result<Option<Vec<u8>>, Stop> {
        let mut too_long = false;
        loop {
            if shutdown.is_cancelled() {
                return Err(Stop::Shutdown);
            }
            let unread = &self.input[self.start..];
            if let Some(lf) = unread.iter().position(|&b| b == b'\n') {
                let line = unread[..=lf].to_vec();
                self.start += lf + 1;
                if too_long || line.len() > MAX_COMMAND_LINE {
                    return Ok(None);
                }
                return Ok(Some(line));
            }
            if unread.len() >= MAX_COMMAND_LINE {
                too_long = true;
                self.start = self.input.len();
            }
            self.fill(Some(shutdown)).await?;
        }
    }

    /// A message's content after the 354, to its final dot (which is taken, not kept),
    /// dot-unstuffed; `None` when it was larger than `max` (the rest was read and thrown away).
    /// A line begins after CRLF only: a bare LF neither ends the content nor unstuffs a dot.
    async fn content(&mut self, max: usize) -> Result<Option<Vec<u8>>, Stop> {
        let mut content = Vec::new();
        let mut size = 0usize;
        let mut too_big = false;
        let mut line_start = true;
        // Whether the last octet taken was a CR (a CRLF may be split between reads).
        let mut after_cr = false;
        loop {
            let unread = &self.input[self.start..];
            if line_start {
                match unread {
                    [] | [b'.'] | [b'.', b'\r'] => {
                        self.fill(None).await?;
                        continue;
                    }
                    [b'.', b'\r', b'\n', ..] => {
                        self.start += 3;
                        return Ok((!too_big).then_some(content));
                    }
                    // A line's leading dot is the client's doubling of it (RFC 5321 4.5.2).
                    [b'.', ..] => self.start += 1,
                    _ => {}
                }
                line_start = false;
                continue;
            }
            if unread.is_empty() {
                self.fill(None).await?;
                continue;
            }
            let (taken, ends_line) = match unread.iter().position(|&b| b == b'\n') {
                Some(lf) => {
                    let cr = if lf == 0 {
                        after_cr
                    } else {
                        unread[lf - 1] == b'\r'
                    };
                    (&unread[..=lf], cr)
                }
                None => (unread, false),
            };
            size += taken.len();
            if size > max {
                too_big = true;
                content = Vec::new();
            } else {
                grow_within(&mut content, taken.len(), max);
                content.extend_from_slice(taken);
            }
            after_cr = taken.last() == Some(&b'\r');
            line_start = ends_line;
            self.start += taken.len();
        }
    }

    /// Writes what is left to write and closes, within [`LAST_WORDS`].
    async fn close(mut self) {
        let _ = tokio::time::timeout(LAST_WORDS, async {
            self.stream.write_all(&self.output).await?;
            linger(&mut self.stream).await
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::task::JoinHandle;

    /// A message as the sink was given it: sender, recipients, content.
    type Got = (String, Vec<String>, Vec<u8>);

    /// Records what it is given; takes recipients starting with `bounces+`; answers what it is
    /// told to.
    struct Recorder {
        got: Mutex<Vec<Got>>,
        /// None: never answers.
        answer: Mutex<Option<Delivered>>,
    }

    impl Recorder {
        fn new() -> Arc<Self> {
            Arc::new(Self {
                got: Mutex::new(Vec::new()),
                answer: Mutex::new(Some(Delivered::Accepted)),
            })
        }

        fn got(&self) -> Vec<Got> {
            self.got.lock().unwrap().clone()
        }

        fn answer(&self, answer: Option<Delivered>) {
            *self.answer.lock().unwrap() = answer;
        }
    }

    impl Sink for Recorder {
        fn accepts(&self, rcpt: &str) -> bool {
            rcpt.starts_with("bounces+")
        }

        fn deliver(
            &self,
            from: String,
            rcpts: Vec<String>,
            raw: Vec<u8>,
        ) -> BoxFuture<'static, Delivered> {
            self.got.lock().unwrap().push((from, rcpts, raw));
            let answer = self.answer.lock().unwrap().clone();
            Box::pin(async move {
                match answer {
                    Some(answer) => answer,
                    None => std::future::pending().await,
                }
            })
        }
    }

    struct Server {
        addr: SocketAddr,
        shutdown: CancellationToken,
        served: JoinHandle<io::Result<()>>,
    }

    async fn start(sink: Arc<Recorder>, limits: Limits) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let served = tokio::spawn(serve(
            listener,
            "bounce.test".into(),
            sink,
            limits,
            shutdown.clone(),
        ));
        Server {
            addr,
            shutdown,
            served,
        }
    }

    /// A client that writes exact bytes and reads whole replies.
    struct Client {
        stream: TcpStream,
        buf: Vec<u8>,
    }

    const WAIT: Duration = Duration::from_secs(5);

    impl Client {
        async fn connect(addr: SocketAddr) -> Self {
            let stream = TcpStream::connect(addr).await.unwrap();
            Self {
                stream,
                buf: Vec::new(),
            }
        }

        /// Connects and reads the greeting.
        async fn greeted(addr: SocketAddr) -> Self {
            let mut client = Self::connect(addr).await;
            let greeting = client.reply().await;
            assert_eq!(greeting, "220 bounce.test ESMTP\r\n");
            client
        }

        async fn send(&mut self, bytes: &[u8]) {
            self.stream.write_all(bytes).await.unwrap();
        }

        async fn line(&mut self) -> Option<String> {
            loop {
                if let Some(lf) = self.buf.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = self.buf.drain(..=lf).collect();
                    return Some(String::from_utf8(line).unwrap());
                }
                let mut chunk = [0u8; 4096];
                let n = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
                    .await
                    .expect("no reply in time")
                    .unwrap_or(0);
                if n == 0 {
                    return None;
                }
                self.buf.extend_from_slice(&chunk[..n]);
            }
        }

        /// One reply, all its lines.
        async fn reply(&mut self) -> String {
            let mut reply = String::new();
            loop {
                let line = self.line().await.expect("connection closed before a reply");
                let last = line.as_bytes().get(3) == Some(&b' ');
                reply.push_str(&line);
                if last {
                    return reply;
                }
            }
        }

        async fn code(&mut self) -> u16 {
            self.reply().await[..3].parse().unwrap()
        }

        /// Sends one command, returns its reply's code.
        async fn cmd(&mut self, line: &str) -> u16 {
            self.send(format!("{line}\r\n").as_bytes()).await;
            self.code().await
        }

        async fn closed(&mut self) -> bool {
            self.line().await.is_none()
        }
    }

    const BOUNCE: &str = "bounces+tok1@bounce.example.org";

    /// A message from the null sender to `BOUNCE`, to its DATA's 354.
    async fn envelope(client: &mut Client) {
        assert_eq!(client.cmd("MAIL FROM:<>").await, 250);
        assert_eq!(client.cmd(&format!("RCPT TO:<{BOUNCE}>")).await, 250);
        assert_eq!(client.cmd("DATA").await, 354);
    }

    #[tokio::test]
    async fn a_dsn_from_the_null_sender_arrives_whole_and_unstuffed() {
        let sink = Recorder::new();
        let server = start(sink.clone(), Limits::default()).await;
        let mut client = Client::greeted(server.addr).await;
        client.send(b"EHLO mx.remote.example\r\n").await;
        let ehlo = client.reply().await;
        assert_eq!(
            ehlo,
            "250-bounce.test\r\n250-SIZE 10485760\r\n250-8BITMIME\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n"
        );
        client
            .send(b"MAIL FROM:<> SIZE=400 BODY=8BITMIME\r\n")
            .await;
        assert_eq!(client.reply().await, "250 2.1.0 OK\r\n");
        client
            .send(format!("RCPT TO:<{BOUNCE}>\r\n").as_bytes())
            .await;
        assert_eq!(client.reply().await, "250 2.1.5 OK\r\n");
        assert_eq!(client.cmd("DATA").await, 354);
        let sent = concat!(
            "From: Mail Delivery System <MAILER-DAEMON@remote.example>\r\n",
            "Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n",
            "\r\n",
            "--b\r\n",
            "Content-Type: message/delivery-status\r\n",
            "\r\n",
            "Action: failed\r\n",
            "Status: 5.1.1\r\n",
            "..a line that began with a dot\r\n",
            "..\r\n",
            "...\r\n",
            "a dot . inside\r\n",
            "8bit: caf\u{e9}\r\n",
            "--b--\r\n",
            ".\r\n",
        );
        client.send(sent.as_bytes()).await;
        assert_eq!(client.reply().await, "250 2.0.0 OK\r\n");
        assert_eq!(client.cmd("QUIT").await, 221);
        assert!(client.closed().await);
        let expected = concat!(
            "From: Mail Delivery System <MAILER-DAEMON@remote.example>\r\n",
            "Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n",
            "\r\n",
            "--b\r\n",
            "Content-Type: message/delivery-status\r\n",
            "\r\n",
            "Action: failed\r\n",
            "Status: 5.1.1\r\n",
            ".a line that began with a dot\r\n",
            ".\r\n",
            "..\r\n",
            "a dot . inside\r\n",
            "8bit: caf\u{e9}\r\n",
            "--b--\r\n",
        );
        let got = sink.got();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "");
        assert_eq!(got[0].1, vec![BOUNCE.to_string()]);
        assert_eq!(got[0].2, expected.as_bytes());
        server.shutdown.cancel();
        server.served.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn an_empty_message_and_a_bare_lf_are_content() {
        let sink = Recorder::new();
        let server = start(sink.clone(), Limits::default()).await;
        let mut client = Client::greeted(server.addr).await;
        assert_eq!(client.cmd("HELO mx.remote.example").await, 250);
        envelope(&mut client).await;
        assert_eq!(client.cmd(".").await, 250);
        envelope(&mut client).await;
        // Split reads: the final dot's CRLF arrives apart from the dot.
        client.send(b"a\n.\r\nb\r").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        client.send(b"\n.").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        client.send(b"\r\n").await;
        assert_eq!(client.code().await, 250);
        let got = sink.got();
        assert_eq!(got[0].2, b"");
        assert_eq!(got[1].2, b"a\n.\r\nb\r\n");
    }

    #[tokio::test]
    async fn a_recipient_not_ours_is_refused_and_data_without_one_too() {
        let sink = Recorder::new();
        let server = start(sink.clone(), Limits::default()).await;
        let mut client = Client::greeted(server.addr).await;
        assert_eq!(client.cmd("DATA").await, 503);
        assert_eq!(client.cmd("EHLO mx.remote.example").await, 250);
        assert_eq!(client.cmd("DATA").await, 503);
        assert_eq!(client.cmd("MAIL FROM:<someone@remote.example>").await, 250);
        client
            .send(b"RCPT TO:<someone@elsewhere.example>\r\n")
            .await;
        assert_eq!(client.reply().await, "550 5.1.1 mailbox unavailable\r\n");
        client.send(b"DATA\r\n").await;
        assert_eq!(client.reply().await, "554 5.5.1 no valid recipients\r\n");
        // The transaction is still open: a good recipient makes it one.
        assert_eq!(client.cmd(&format!("RCPT TO:<{BOUNCE}>")).await, 250);
        assert_eq!(client.cmd("DATA").await, 354);
        assert_eq!(client.cmd("hello\r\n.").await, 250);
        let got = sink.got();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "someone@remote.example");
        assert_eq!(got[0].1, vec![BOUNCE.to_string()]);
    }

    #[tokio::test]
    async fn too_many_recipients_get_452() {
        let sink = Recorder::new();
        let limits = Limits {
            max_recipients: 2,
            ..Limits::default()
        };
        let server = start(sink.clone(), limits).await;
        let mut client = Client::greeted(server.addr).await;
        assert_eq!(client.cmd("EHLO mx.remote.example").await, 250);
        assert_eq!(client.cmd("MAIL FROM:<>").await, 250);
        assert_eq!(client.cmd("RCPT TO:<bounces+a@b.example>").await, 250);
        assert_eq!(client.cmd("RCPT TO:<bounces+b@b.example>").await, 250);
        client.send(b"RCPT TO:<bounces+c@b.example>\r\n").await;
        assert_eq!(client.reply().await, "452 4.5.3 too many recipients\r\n");
        assert_eq!(client.cmd("DATA").await, 354);
        assert_eq!(client.cmd("x\r\n.").await, 250);
        assert_eq!(sink.got()[0].1.len(), 2);
    }

    #[tokio::test]
    async fn a_message_too_big_gets_552_and_the_next_one_is_taken() {
        let sink = Recorder::new();
        let limits = Limits {
            max_message_bytes: 1000,
            ..Limits::default()
        };
        let server = start(sink.clone(), limits).await;
        let mut client = Client::greeted(server.addr).await;
        client.send(b"EHLO mx.remote.example\r\n").await;
        assert!(client.reply().await.contains("250-SIZE 1000\r\n"));
        // Declared too big: refused at MAIL.
        client.send(b"MAIL FROM:<> SIZE=1001\r\n").await;
        assert_eq!(client.reply().await, "552 5.3.4 message too big\r\n");
        // Not declared: found out while reading (one long line, lines too).
        envelope(&mut client).await;
        let line = "x".repeat(99) + "\r\n";
        let mut big = line.repeat(30);
        big.push_str(&"y".repeat(50_000));
        big.push_str("\r\n.\r\n");
        client.send(big.as_bytes()).await;
        assert_eq!(client.reply().await, "552 5.3.4 message too big\r\n");
        // Exactly the limit is taken.
        envelope(&mut client).await;
        let fits = "z".repeat(998) + "\r\n";
        client.send(format!("{fits}.\r\n").as_bytes()).await;
        assert_eq!(client.code().await, 250);
        let got = sink.got();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].2, fits.as_bytes());
    }

    #[tokio::test]
    async fn a_sink_that_fails_gives_451_and_one_that_rejects_554() {
        let sink = Recorder::new();
        let server = start(sink.clone(), Limits::default()).await;
        let mut client = Client::greeted(server.addr).await;
        assert_eq!(client.cmd("EHLO mx.remote.example").await, 250);
        sink.answer(Some(Delivered::Failed("database unavailable".into())));
        envelope(&mut client).await;
        client.send(b"x\r\n.\r\n").await;
        assert_eq!(client.reply().await, "451 4.3.0 database unavailable\r\n");
        sink.answer(Some(Delivered::Rejected(
            "not a delivery report\r\n".into(),
        )));
        envelope(&mut client).await;
        client.send(b"x\r\n.\r\n").await;
        assert_eq!(client.reply().await, "554 5.6.0 not a delivery report\r\n");
        sink.answer(Some(Delivered::Failed(String::new())));
        envelope(&mut client).await;
        client.send(b"x\r\n.\r\n").await;
        assert_eq!(client.reply().await, "451 4.3.0 try again later\r\n");
        assert_eq!(sink.got().len(), 3);
    }

    #[tokio::test]
    async fn a_sink_that_never_answers_is_given_up_at_the_session_timeout() {
        let sink = Recorder::new();
        sink.answer(None);
        let limits = Limits {
            session_timeout: Duration::from_millis(300),
            ..Limits::default()
        };
        let server = start(sink.clone(), limits).await;
        let mut client = Client::greeted(server.addr).await;
        assert_eq!(client.cmd("HELO mx.remote.example").await, 250);
        envelope(&mut client).await;
        client.send(b"x\r\n.\r\n").await;
        assert_eq!(client.reply().await, "421 4.4.2 timeout\r\n");
        assert!(client.closed().await);
        assert_eq!(sink.got().len(), 1);
    }

    #[test]
    fn content_grows_to_the_limit_and_no_further() {
        let mut content = Vec::new();
        for _ in 0..1000 {
            grow_within(&mut content, 10, 10_000);
            content.extend_from_slice(&[0; 10]);
        }
        assert_eq!(content.capacity(), 10_000);
    }

    #[tokio::test]
    async fn one_connection_too_many_gets_421() {
        let sink = Recorder::new();
        let limits = Limits {
            max_connections: 2,
            ..Limits::default()
        };
        let server = start(sink, limits).await;
        let mut first = Client::greeted(server.addr).await;
        let _second = Client::greeted(server.addr).await;
        let mut third = Client::connect(server.addr).await;
        assert_eq!(third.reply().await, "421 4.3.2 too many connections\r\n");
        assert!(third.closed().await);
        // A slot given back is taken again.
        assert_eq!(first.cmd("QUIT").await, 221);
        assert!(first.closed().await);
        drop(first);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _fourth = Client::greeted(server.addr).await;
    }

    #[tokio::test]
    async fn a_silent_client_gets_421_after_the_command_timeout() {
        let limits = Limits {
            command_timeout: Duration::from_millis(200),
            ..Limits::default()
        };
        let server = start(Recorder::new(), limits).await;
        let began = std::time::Instant::now();
        let mut client = Client::greeted(server.addr).await;
        assert_eq!(client.reply().await, "421 4.4.2 timeout\r\n");
        assert!(client.closed().await);
        let waited = began.elapsed();
        assert!(waited >= Duration::from_millis(200), "{waited:?}");
        assert!(waited < Duration::from_secs(2), "{waited:?}");
        // Silent in the middle of a message too.
        let mut client = Client::greeted(server.addr).await;
        assert_eq!(client.cmd("HELO mx.remote.example").await, 250);
        envelope(&mut client).await;
        client.send(b"part of it\r\n").await;
        assert_eq!(client.reply().await, "421 4.4.2 timeout\r\n");
        assert!(client.closed().await);
    }

    #[tokio::test]
    async fn a_busy_client_gets_421_after_the_session_timeout() {
        let limits = Limits {
            session_timeout: Duration::from_millis(300),
            ..Limits::default()
        };
        let server = start(Recorder::new(), limits).await;
        let mut client = Client::greeted(server.addr).await;
        let began = std::time::Instant::now();
        loop {
            client.send(b"NOOP\r\n").await;
            let reply = client.reply().await;
            if reply.starts_with("421") {
                assert_eq!(reply, "421 4.4.2 timeout\r\n");
                break;
            }
            assert_eq!(reply, "250 2.0.0 OK\r\n");
            assert!(began.elapsed() < Duration::from_secs(2));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(client.closed().await);
    }

    #[tokio::test]
    async fn pipelined_commands_get_their_replies_in_order() {
        let sink = Recorder::new();
        let server = start(sink.clone(), Limits::default()).await;
        let mut client = Client::greeted(server.addr).await;
        client
            .send(
                format!(
                    "EHLO mx.remote.example\r\nMAIL FROM:<>\r\nRCPT TO:<nobody@x.example>\r\nRCPT TO:<{BOUNCE}>\r\nDATA\r\n"
                )
                .as_bytes(),
            )
            .await;
        assert!(client.reply().await.starts_with("250-bounce.test\r\n"));
        assert_eq!(client.reply().await, "250 2.1.0 OK\r\n");
        assert_eq!(client.code().await, 550);
        assert_eq!(client.reply().await, "250 2.1.5 OK\r\n");
        assert_eq!(client.code().await, 354);
        client
            .send(b"pipelined\r\n.\r\nRSET\r\nNOOP\r\nQUIT\r\n")
            .await;
        assert_eq!(client.code().await, 250);
        assert_eq!(client.code().await, 250);
        assert_eq!(client.code().await, 250);
        assert_eq!(client.code().await, 221);
        assert!(client.closed().await);
        assert_eq!(sink.got()[0].2, b"pipelined\r\n");
    }

    #[tokio::test]
    async fn shutdown_lets_a_message_under_way_finish_then_serve_returns() {
        let sink = Recorder::new();
        let server = start(sink.clone(), Limits::default()).await;
        let mut receiving = Client::greeted(server.addr).await;
        let mut idle = Client::greeted(server.addr).await;
        assert_eq!(receiving.cmd("EHLO mx.remote.example").await, 250);
        assert_eq!(idle.cmd("EHLO mx.remote.example").await, 250);
        envelope(&mut receiving).await;
        receiving.send(b"first half\r\n").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        server.shutdown.cancel();
        // Between messages: told at once.
        assert_eq!(idle.reply().await, "421 4.3.2 shutting down\r\n");
        assert!(idle.closed().await);
        // No new connections.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(TcpStream::connect(server.addr).await.is_err());
        assert!(!server.served.is_finished());
        receiving.send(b"second half\r\n.\r\n").await;
        assert_eq!(receiving.reply().await, "250 2.0.0 OK\r\n");
        assert_eq!(receiving.reply().await, "421 4.3.2 shutting down\r\n");
        assert!(receiving.closed().await);
        tokio::time::timeout(WAIT, server.served)
            .await
            .expect("serve did not return")
            .unwrap()
            .unwrap();
        assert_eq!(sink.got()[0].2, b"first half\r\nsecond half\r\n");
    }

    #[tokio::test]
    async fn two_messages_in_one_session() {
        let sink = Recorder::new();
        let server = start(sink.clone(), Limits::default()).await;
        let mut client = Client::greeted(server.addr).await;
        assert_eq!(client.cmd("EHLO mx.remote.example").await, 250);
        envelope(&mut client).await;
        assert_eq!(client.cmd("one\r\n.").await, 250);
        // A transaction begun and reset is not one.
        assert_eq!(client.cmd("MAIL FROM:<a@remote.example>").await, 250);
        assert_eq!(client.cmd("RSET").await, 250);
        assert_eq!(client.cmd("RCPT TO:<bounces+x@b.example>").await, 503);
        assert_eq!(client.cmd("NOOP").await, 250);
        assert_eq!(client.cmd("MAIL FROM:<b@remote.example>").await, 250);
        assert_eq!(client.cmd("MAIL FROM:<c@remote.example>").await, 503);
        assert_eq!(client.cmd("RCPT TO:<bounces+tok2@b.example>").await, 250);
        assert_eq!(client.cmd("DATA").await, 354);
        assert_eq!(client.cmd("two\r\n.").await, 250);
        assert_eq!(client.cmd("QUIT").await, 221);
        let got = sink.got();
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[0],
            ("".into(), vec![BOUNCE.into()], b"one\r\n".to_vec())
        );
        assert_eq!(
            got[1],
            (
                "b@remote.example".into(),
                vec!["bounces+tok2@b.example".into()],
                b"two\r\n".to_vec()
            )
        );
    }

    #[tokio::test]
    async fn a_command_line_too_long_is_refused_and_the_session_goes_on() {
        let server = start(Recorder::new(), Limits::default()).await;
        let mut client = Client::greeted(server.addr).await;
        let long = format!("NOOP {}\r\n", "a".repeat(100_000));
        client.send(long.as_bytes()).await;
        assert_eq!(client.reply().await, "500 5.5.2 line too long\r\n");
        assert_eq!(client.cmd("EHLO mx.remote.example").await, 250);
        for refused in ["STARTTLS", "AUTH PLAIN AGFiAGM="] {
            client.send(format!("{refused}\r\n").as_bytes()).await;
            assert_eq!(client.reply().await, "502 5.5.1 not offered here\r\n");
        }
        client.send(b"HELP\r\n").await;
        assert_eq!(client.reply().await, "500 5.5.2 syntax error\r\n");
        client.send(b"MAIL FROM:<> RET=HDRS\r\n").await;
        assert_eq!(
            client.reply().await,
            "555 5.5.4 parameter not supported\r\n"
        );
        assert_eq!(client.cmd("MAIL FROM:<a b@c>").await, 501);
        assert_eq!(client.cmd("MAIL FROM: <>").await, 250);
    }

    #[test]
    fn mail_from_is_parsed_here() {
        let parse = |line: &str| parse_mail(line.as_bytes(), 100);
        let mail = |from: &str, eight_bit| {
            Ok(MailFrom {
                from: from.into(),
                eight_bit,
            })
        };
        assert_eq!(parse("MAIL FROM:<>"), mail("", false));
        assert_eq!(
            parse("mail from:<a@b.example> body=8bitmime size=100"),
            mail("a@b.example", true)
        );
        assert_eq!(parse("MAIL FROM:<a@b> BODY=7BIT"), mail("a@b", false));
        assert_eq!(
            parse("MAIL FROM:<> SIZE=101").unwrap_err(),
            "552 5.3.4 message too big\r\n"
        );
        assert!(parse("MAIL FROM:<> SIZE=lots")
            .unwrap_err()
            .starts_with("501"));
        assert!(parse("MAIL FROM:<>SIZE=1").unwrap_err().starts_with("501"));
        assert!(parse("MAIL FROM:a@b").unwrap_err().starts_with("501"));
        assert!(parse("MAIL TO:<>").unwrap_err().starts_with("501"));
        assert!(parse("MAIL").unwrap_err().starts_with("501"));
        assert!(parse("MAIL FROM:<> BODY=BINARYMIME")
            .unwrap_err()
            .starts_with("501"));
    }
}

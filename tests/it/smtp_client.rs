//! Our SMTP client (`mail::smtp`, through `Relay`) against real servers over TCP: Postfix's
//! smtp-sink, which offers PIPELINING, for hundreds of messages over the pool's connections;
//! and a relay each test scripts by hand on a tokio listener, for the protocol's edges.

use crate::helpers::*;
use rpec_notify::mail::{Relay, SendError};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------------------------------------
// Postfix's smtp-sink.

/// smtp-sink on a free port, dumping each message it accepts into `dump`; killed when dropped.
struct SmtpSink {
    child: std::process::Child,
    port: u16,
    dump: tempfile::TempDir,
}

impl SmtpSink {
    fn start() -> SmtpSink {
        let root = manifest_dir().join("var/postfix");
        let binary = root.join("usr/sbin/smtp-sink");
        assert!(
            binary.is_file(),
            "{} is missing: run `bash scripts/postfix-tools.sh` (scripts/setup.sh \
             --with-test-tools does)",
            binary.display()
        );
        let dump = tempfile::tempdir().unwrap();
        // Root's smtp-sink drops to nobody, who must be able to write the dumps.
        std::fs::set_permissions(
            dump.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let is_root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
        let mut command = std::process::Command::new(&binary);
        command.env("LD_LIBRARY_PATH", root.join("usr/lib/postfix"));
        if is_root {
            command.args(["-u", "nobody"]);
        }
        let child = command
            .arg("-d")
            .arg(format!("{}/%H%M%S.", dump.path().display()))
            .arg(format!("127.0.0.1:{port}"))
            .arg("1024")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("smtp-sink starts");
        let sink = SmtpSink { child, port, dump };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "smtp-sink did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        sink
    }

    fn dumps(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.dump.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A front door to `target` that counts the connections made through it.
async fn counting_proxy(target: u16) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
                    return;
                };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
    (port, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_messages_go_to_smtp_sink_over_the_pools_ten_connections() {
    const MESSAGES: usize = 600;
    const SENDERS: usize = 40;
    let sink = SmtpSink::start();
    let (port, connections) = counting_proxy(sink.port).await;
    let relay = Relay::new(
        &format!("smtp://127.0.0.1:{port}"),
        10,
        Duration::from_secs(10),
        None,
    )
    .unwrap();
    let started = Instant::now();
    let mut senders = tokio::task::JoinSet::new();
    for s in 0..SENDERS {
        let relay = relay.clone();
        senders.spawn(async move {
            for i in (s..MESSAGES).step_by(SENDERS) {
                let message = lettre::Message::builder()
                    .from("RPEC <rpec.notifications@example.org>".parse().unwrap())
                    .to(format!("reader{i}@school.example.org").parse().unwrap())
                    .message_id(Some(format!("<{i}.sink@test.example.org>")))
                    .subject(format!("Message {i}"))
                    .body(format!(
                        "Hello reader {i},\r\n.a line that starts with a dot\r\nbye\r\n"
                    ))
                    .unwrap();
                relay
                    .send(message, Duration::from_secs(10))
                    .await
                    .unwrap_or_else(|e| panic!("message {i}: {e:?}"));
            }
        });
    }
    while let Some(done) = senders.join_next().await {
        done.unwrap();
    }
    let took = started.elapsed();
    eprintln!(
        "{MESSAGES} messages to smtp-sink in {took:?} ({:.0}/s) over {} connections",
        MESSAGES as f64 / took.as_secs_f64(),
        connections.load(Ordering::SeqCst)
    );
    let dumps = eventually(Duration::from_secs(10), "every message dumped", || async {
        let d = sink.dumps();
        (d.len() >= MESSAGES).then_some(d)
    })
    .await;
    assert_eq!(dumps.len(), MESSAGES);
    let mut ids = HashSet::new();
    for path in &dumps {
        let text = std::fs::read_to_string(path).unwrap();
        let id = text
            .lines()
            .find_map(|l| l.strip_prefix("Message-ID: "))
            .unwrap_or_else(|| panic!("no Message-ID in {text}"))
            .to_owned();
        let i: usize = id
            .trim_start_matches('<')
            .split('.')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            text.contains(&format!("X-Rcpt-Args: <reader{i}@school.example.org>")),
            "{text}"
        );
        // Stuffed on the way, unstuffed by the relay: the line arrives as written.
        assert!(
            text.lines()
                .any(|l| l.trim_end() == ".a line that starts with a dot"),
            "{text}"
        );
        assert!(ids.insert(id), "a message arrived twice");
    }
    assert_eq!(ids.len(), MESSAGES);
    assert_eq!(
        connections.load(Ordering::SeqCst),
        10,
        "{SENDERS} senders share the pool's 10 connections"
    );
}

// ---------------------------------------------------------------------------------------------
// A relay scripted by hand.

const PATIENCE: Duration = Duration::from_secs(5);

/// A connection's byte stream, in clear or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// The server's end of one connection.
struct Peer {
    stream: Box<dyn Io>,
    buf: Vec<u8>,
}

impl Peer {
    async fn send(&mut self, text: &str) {
        self.stream.write_all(text.as_bytes()).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    /// The same connection, now TLS (after a 220 to STARTTLS, or at once for smtps://).
    async fn tls(self, acceptor: &tokio_rustls::TlsAcceptor) -> Peer {
        assert!(self.buf.is_empty(), "nothing may come before the handshake");
        let stream = tokio::time::timeout(PATIENCE, acceptor.accept(self.stream))
            .await
            .expect("a TLS handshake")
            .expect("the client's TLS");
        Peer {
            stream: Box::new(stream),
            buf: Vec::new(),
        }
    }

    /// What the next read gives (what one write of the client's brought, on loopback).
    async fn chunk(&mut self) -> Vec<u8> {
        if !self.buf.is_empty() {
            return std::mem::take(&mut self.buf);
        }
        let mut b = vec![0; 65536];
        let n = tokio::time::timeout(PATIENCE, self.stream.read(&mut b))
            .await
            .expect("the client to write")
            .unwrap();
        assert!(n > 0, "the client closed the connection");
        b.truncate(n);
        b
    }

    /// Everything up to and including `end`.
    async fn until(&mut self, end: &str) -> String {
        loop {
            if let Some(at) = find(&self.buf, end.as_bytes()) {
                let rest = self.buf.split_off(at + end.len());
                let got = std::mem::replace(&mut self.buf, rest);
                return String::from_utf8(got).unwrap();
            }
            let mut b = vec![0; 65536];
            let n = tokio::time::timeout(PATIENCE, self.stream.read(&mut b))
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "waited for {end:?}, got {:?}",
                        String::from_utf8_lossy(&self.buf)
                    )
                })
                .unwrap();
            assert!(
                n > 0,
                "closed while waiting for {end:?} after {:?}",
                String::from_utf8_lossy(&self.buf)
            );
            self.buf.extend_from_slice(&b[..n]);
        }
    }

    /// One line the client sent.
    async fn line(&mut self) -> String {
        self.until("\r\n").await
    }

    /// Whether the client closes the connection (sending nothing more) within a while.
    async fn closed(&mut self) -> bool {
        let mut b = [0; 1024];
        assert!(
            self.buf.is_empty(),
            "{:?}",
            String::from_utf8_lossy(&self.buf)
        );
        matches!(
            tokio::time::timeout(PATIENCE, self.stream.read(&mut b)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    /// The greeting, the client's EHLO and a reply offering `extensions`.
    async fn hello(&mut self, extensions: &[&str]) {
        self.send("220 scripted.example.org ESMTP\r\n").await;
        self.ehlo(extensions).await;
    }

    /// The client's EHLO and a reply offering `extensions`.
    async fn ehlo(&mut self, extensions: &[&str]) {
        let ehlo = self.line().await;
        assert!(ehlo.starts_with("EHLO "), "{ehlo}");
        self.send(&format!(
            "250-scripted.example.org\r\n{}",
            lines(extensions)
        ))
        .await;
    }

    /// Takes a one-recipient pipelined group and answers it 250, 250, 354: what comes next is
    /// the message's content.
    async fn one_recipient_to_content(&mut self) {
        self.group(1).await;
        self.send("250 Ok\r\n250 Ok\r\n354 go on\r\n").await;
    }

    /// Reads one pipelined group (MAIL FROM, the RCPT TOs, DATA), which must come in one write.
    async fn group(&mut self, recipients: usize) -> String {
        let got = String::from_utf8(self.chunk().await).unwrap();
        assert!(got.starts_with("MAIL FROM:<"), "{got}");
        assert_eq!(got.matches("RCPT TO:<").count(), recipients, "{got}");
        assert!(got.ends_with("\r\nDATA\r\n"), "one write: {got:?}");
        got
    }
}

/// The EHLO reply's extension lines after its first: `250-A\r\n250 B\r\n`.
fn lines(extensions: &[&str]) -> String {
    let mut out = String::new();
    for (i, e) in extensions.iter().enumerate() {
        let sep = if i + 1 == extensions.len() { ' ' } else { '-' };
        out.push_str(&format!("250{sep}{e}\r\n"));
    }
    if extensions.is_empty() {
        out.push_str("250 \r\n");
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A listener the test answers by hand.
struct Script {
    listener: TcpListener,
    port: u16,
}

impl Script {
    async fn start() -> Script {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        Script { listener, port }
    }

    async fn accept(&self) -> Peer {
        let (stream, _) = tokio::time::timeout(PATIENCE, self.listener.accept())
            .await
            .expect("a connection from the client")
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Peer {
            stream: Box::new(stream),
            buf: Vec::new(),
        }
    }

    /// Whether no connection comes within `wait`.
    async fn no_connection_within(&self, wait: Duration) -> bool {
        tokio::time::timeout(wait, self.listener.accept())
            .await
            .is_err()
    }

    /// The relay for it: `pool` connections, 2 s for a send (1 s for each reply).
    fn relay(&self, pool: u32) -> Relay {
        self.relay_at(&format!("smtp://127.0.0.1:{}", self.port), pool)
    }

    fn relay_at(&self, url: &str, pool: u32) -> Relay {
        Relay::new(url, pool, Duration::from_secs(2), None).unwrap()
    }
}

const BODY: &[u8] = b"Subject: x\r\n\r\nhello\r\n";

async fn send(relay: &Relay, to: &[&str]) -> Result<(), SendError> {
    let to: Vec<String> = to.iter().map(|s| s.to_string()).collect();
    relay
        .send_raw("rpec@example.org", &to, BODY, Duration::from_secs(2))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_commands_go_in_one_write_and_replies_are_read_however_they_are_cut() {
    let script = Script::start().await;
    let relay = script.relay(1);
    let body: &[u8] = b"Subject: dots\r\n\r\n.leading dot\r\n..two\r\nmid.dle\r\nno line end";
    let server = tokio::spawn(async move {
        let mut peer = script.accept().await;
        // A multi-line greeting, and an EHLO reply cut across writes.
        peer.send("220-scripted.example.org ESMTP\r\n220 welcome\r\n")
            .await;
        let ehlo = peer.line().await;
        assert!(ehlo.starts_with("EHLO "), "{ehlo}");
        for piece in [
            "250-scripted.example.org\r\n250-PIPE",
            "LINING\r\n250-8BITM",
            "IME\r",
            "\n250 SIZE 1000000\r\n",
        ] {
            peer.send(piece).await;
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        // Nothing is answered until the whole group is in: a client that waited for each
        // reply would never send it.
        let group = String::from_utf8(peer.chunk().await).unwrap();
        assert_eq!(
            group,
            format!(
                "MAIL FROM:<rpec@example.org> SIZE={}\r\nRCPT TO:<a@school.example.org>\r\n\
                 RCPT TO:<b@school.example.org>\r\nDATA\r\n",
                body.len()
            )
        );
        // The replies, cut in odd places and two of them together.
        for piece in [
            "250 2.1.0 Ok\r\n25",
            "0 2.1.5 Ok\r\n250-2.1.5 and\r\n",
            "250 more\r\n354 go on\r\n",
        ] {
            peer.send(piece).await;
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        // The content, stuffed, with its terminator, in one write.
        let content = String::from_utf8(peer.chunk().await).unwrap();
        assert_eq!(
            content,
            "Subject: dots\r\n\r\n..leading dot\r\n...two\r\nmid.dle\r\nno line end\r\n.\r\n"
        );
        peer.send("250 2.0.0 Ok: queued\r\n").await;
        (script, peer)
    });
    let to = [
        "a@school.example.org".to_string(),
        "b@school.example.org".to_string(),
    ];
    relay
        .send_raw("rpec@example.org", &to, body, Duration::from_secs(2))
        .await
        .unwrap();
    let (_script, _peer) = server.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_recipient_fails_the_message_and_the_next_one_goes_on_the_same_connection() {
    let script = Script::start().await;
    let relay = script.relay(1);
    let server = tokio::spawn(async move {
        let mut peer = script.accept().await;
        peer.hello(&["PIPELINING", "8BITMIME"]).await;
        // The only recipient refused: DATA fails too, and both replies are read.
        peer.group(1).await;
        peer.send("250 2.1.0 Ok\r\n550 5.1.1 <bounce@school.example.org>: no such user\r\n554 5.5.1 Error: no valid recipients\r\n")
            .await;
        assert_eq!(peer.line().await, "RSET\r\n");
        peer.send("250 2.0.0 Ok\r\n").await;
        // The next message, on the same connection, in step.
        peer.group(1).await;
        peer.send("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go on\r\n")
            .await;
        peer.until("\r\n.\r\n").await;
        peer.send("250 2.0.0 Ok: queued\r\n").await;
        assert!(
            script
                .no_connection_within(Duration::from_millis(300))
                .await
        );
        (script, peer)
    });
    let e = send(&relay, &["bounce@school.example.org"])
        .await
        .unwrap_err();
    assert!(
        matches!(&e, SendError::Permanent(t) if t.starts_with("permanent error (550): 5.1.1")),
        "{e:?}"
    );
    send(&relay, &["kim@school.example.org"]).await.unwrap();
    let _ = server.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_recipient_among_accepted_ones_sends_no_content_to_anyone() {
    let script = Script::start().await;
    let relay = script.relay(1);
    let server = tokio::spawn(async move {
        let mut first = script.accept().await;
        first.hello(&["PIPELINING"]).await;
        first.group(2).await;
        // One taken, one refused, and DATA taken: whatever came now would reach the first.
        first
            .send("250 Ok\r\n250 Ok\r\n550 5.1.1 no such user\r\n354 go on\r\n")
            .await;
        assert!(first.closed().await, "the client closes instead of sending");
        // The next message on a new connection.
        let mut second = script.accept().await;
        second.hello(&["PIPELINING"]).await;
        second.one_recipient_to_content().await;
        second.until("\r\n.\r\n").await;
        second.send("250 Ok\r\n").await;
        (script, second)
    });
    let e = send(
        &relay,
        &["kim@school.example.org", "bounce@school.example.org"],
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&e, SendError::Permanent(t) if t.contains("(550)")),
        "{e:?}"
    );
    send(&relay, &["kim@school.example.org"]).await.unwrap();
    let _ = server.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_taken_with_every_recipient_refused_is_ended_with_a_lone_dot() {
    let script = Script::start().await;
    let relay = script.relay(1);
    let server = tokio::spawn(async move {
        let mut peer = script.accept().await;
        peer.hello(&["PIPELINING"]).await;
        peer.group(1).await;
        peer.send("250 Ok\r\n450 4.2.0 mailbox busy\r\n354 go on\r\n")
            .await;
        // RFC 2920 3.1: a single dot, then RSET.
        assert_eq!(peer.line().await, ".\r\n");
        peer.send("554 5.5.1 no valid recipients\r\n").await;
        assert_eq!(peer.line().await, "RSET\r\n");
        peer.send("250 Ok\r\n").await;
        peer.one_recipient_to_content().await;
        peer.until("\r\n.\r\n").await;
        peer.send("250 Ok\r\n").await;
        (script, peer)
    });
    let e = send(&relay, &["busy@school.example.org"])
        .await
        .unwrap_err();
    assert!(
        matches!(&e, SendError::Transient(t) if t.starts_with("transient error (450)")),
        "{e:?}"
    );
    send(&relay, &["kim@school.example.org"]).await.unwrap();
    let _ = server.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_pipelining_one_command_at_a_time_and_451_keeps_the_connection() {
    let script = Script::start().await;
    let relay = script.relay(1);
    let server = tokio::spawn(async move {
        let mut peer = script.accept().await;
        peer.hello(&["8BITMIME"]).await;
        assert_eq!(peer.line().await, "MAIL FROM:<rpec@example.org>\r\n");
        peer.send("451 4.3.0 try again later\r\n").await;
        assert_eq!(peer.line().await, "RSET\r\n");
        peer.send("250 Ok\r\n").await;
        // Lock-step: each command alone, after the reply to the one before.
        assert_eq!(peer.chunk().await, b"MAIL FROM:<rpec@example.org>\r\n");
        peer.send("250 Ok\r\n").await;
        assert_eq!(peer.chunk().await, b"RCPT TO:<kim@school.example.org>\r\n");
        peer.send("250 Ok\r\n").await;
        assert_eq!(peer.chunk().await, b"DATA\r\n");
        peer.send("354 go on\r\n").await;
        assert_eq!(peer.chunk().await, b"Subject: x\r\n\r\nhello\r\n.\r\n");
        peer.send("250 Ok\r\n").await;
        assert!(
            script
                .no_connection_within(Duration::from_millis(300))
                .await
        );
        (script, peer)
    });
    let e = send(&relay, &["kim@school.example.org"]).await.unwrap_err();
    assert_eq!(
        e,
        SendError::Transient("transient error (451): 4.3.0 try again later".into())
    );
    send(&relay, &["kim@school.example.org"]).await.unwrap();
    let _ = server.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_421_is_transient_and_the_next_message_goes_on_a_new_connection() {
    let script = Script::start().await;
    let relay = script.relay(1);
    let server = tokio::spawn(async move {
        let mut first = script.accept().await;
        first.hello(&["PIPELINING"]).await;
        first.group(1).await;
        first.send("421 4.3.2 shutting down\r\n").await;
        drop(first);
        let mut second = script.accept().await;
        second.hello(&["PIPELINING"]).await;
        second.one_recipient_to_content().await;
        second.until("\r\n.\r\n").await;
        second.send("250 Ok\r\n").await;
        (script, second)
    });
    let e = send(&relay, &["kim@school.example.org"]).await.unwrap_err();
    assert!(
        matches!(&e, SendError::Transient(t) if t.starts_with("transient error (421)")),
        "{e:?}"
    );
    send(&relay, &["kim@school.example.org"]).await.unwrap();
    let _ = server.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reply_after_the_final_dot_is_transient_and_the_message_is_not_sent_again() {
    let script = Script::start().await;
    let relay = script.relay(1);
    let server = tokio::spawn(async move {
        let mut peer = script.accept().await;
        peer.hello(&["PIPELINING"]).await;
        peer.one_recipient_to_content().await;
        peer.until("\r\n.\r\n").await;
        // Silence: the relay may or may not have the message.
        assert!(peer.closed().await, "the client gives up on the connection");
        assert!(
            script.no_connection_within(Duration::from_secs(2)).await,
            "the message is not tried again on another connection"
        );
        (script, peer)
    });
    let started = Instant::now();
    let e = send(&relay, &["kim@school.example.org"]).await.unwrap_err();
    // Waited for as long as the whole send may take (2 s), not only one reply's time (1 s).
    assert_eq!(
        e,
        SendError::Transient("no answer from the relay within 2s".into())
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    let _ = server.await.unwrap();
}

/// Sends BODY from the test's sender to `to` once `gate` resolves (`Relay::send_raw_after`).
async fn send_after(
    relay: &Relay,
    to: &[&str],
    gate: impl std::future::Future<Output = ()> + Send,
) -> Result<(), SendError> {
    let to: Vec<String> = to.iter().map(|s| s.to_string()).collect();
    relay
        .send_raw_after("rpec@example.org", &to, BODY, Duration::from_secs(2), gate)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_message_goes_all_but_its_final_dot_until_the_hold_is_lifted() {
    let script = Script::start().await;
    let relay = script.relay(1);
    let (lift, lifted) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let mut peer = script.accept().await;
        peer.hello(&["PIPELINING"]).await;
        peer.one_recipient_to_content().await;
        // The content comes at once, without its end.
        let content = peer.until("hello\r\n").await;
        assert!(content.starts_with("Subject: x\r\n"), "{content:?}");
        let mut b = [0; 64];
        assert!(
            tokio::time::timeout(Duration::from_millis(300), peer.stream.read(&mut b))
                .await
                .is_err(),
            "nothing more before the hold is lifted"
        );
        lift.send(()).unwrap();
        assert_eq!(peer.line().await, ".\r\n");
        peer.send("250 Ok: queued\r\n").await;
        (script, peer)
    });
    let gate = async {
        let _ = lifted.await;
    };
    send_after(&relay, &["kim@school.example.org"], gate)
        .await
        .unwrap();
    let _ = server.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_that_outlasts_its_patience_withdraws_the_message_and_sends_it_once_after() {
    let script = Script::start().await;
    // 2 s for a send: a hold is waited for half a second before the message is withdrawn.
    let relay = script.relay(1);
    let (lift, lifted) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let mut first = script.accept().await;
        first.hello(&["PIPELINING"]).await;
        first.one_recipient_to_content().await;
        first.until("hello\r\n").await;
        // Closed unended: a relay throws such a message away.
        assert!(first.closed().await, "the unended message is withdrawn");
        assert!(
            script
                .no_connection_within(Duration::from_millis(500))
                .await,
            "nothing goes again before the hold is lifted"
        );
        lift.send(()).unwrap();
        let mut second = script.accept().await;
        second.hello(&["PIPELINING"]).await;
        second.one_recipient_to_content().await;
        let whole = second.until("\r\n.\r\n").await;
        assert!(whole.starts_with("Subject: x\r\n"), "{whole:?}");
        second.send("250 Ok: queued\r\n").await;
        (script, second)
    });
    let gate = async {
        let _ = lifted.await;
    };
    send_after(&relay, &["kim@school.example.org"], gate)
        .await
        .unwrap();
    let _ = server.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_relay_closed_while_idle_is_replaced_unseen() {
    let script = Script::start().await;
    let relay = script.relay(1);
    let server = tokio::spawn(async move {
        let mut first = script.accept().await;
        first.hello(&["PIPELINING"]).await;
        first.one_recipient_to_content().await;
        first.until("\r\n.\r\n").await;
        first.send("250 Ok\r\n").await;
        // An idle time-out, the way Postfix's smtpd says it.
        first
            .send("421 4.4.2 scripted.example.org Error: timeout exceeded\r\n")
            .await;
        drop(first);
        let mut second = script.accept().await;
        second.hello(&["PIPELINING"]).await;
        second.one_recipient_to_content().await;
        second.until("\r\n.\r\n").await;
        second.send("250 Ok\r\n").await;
        (script, second)
    });
    send(&relay, &["kim@school.example.org"]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    send(&relay, &["jo@school.example.org"]).await.unwrap();
    let _ = server.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_found_closed_before_any_reply_is_retried_once_on_a_new_one() {
    let script = Script::start().await;
    let relay = script.relay(1);
    let server = tokio::spawn(async move {
        let mut first = script.accept().await;
        first.hello(&["PIPELINING"]).await;
        first.one_recipient_to_content().await;
        first.until("\r\n.\r\n").await;
        first.send("250 Ok\r\n").await;
        // The next group comes, and the relay closes without a word (it had just timed out):
        // nothing of the message's content came, so it goes again on a new connection.
        let group = first.group(1).await;
        assert!(group.contains("<jo@school.example.org>"), "{group}");
        drop(first);
        let mut second = script.accept().await;
        second.hello(&["PIPELINING"]).await;
        let group = second.group(1).await;
        assert!(group.contains("<jo@school.example.org>"), "{group}");
        second.send("250 Ok\r\n250 Ok\r\n354 go on\r\n").await;
        second.until("\r\n.\r\n").await;
        second.send("250 Ok\r\n").await;
        // Once only: when the new connection fails the same way, the failure is the caller's.
        let group = second.group(1).await;
        assert!(group.contains("<sam@school.example.org>"), "{group}");
        drop(second);
        let mut third = script.accept().await;
        third.hello(&["PIPELINING"]).await;
        let group = third.group(1).await;
        assert!(group.contains("<sam@school.example.org>"), "{group}");
        drop(third);
        assert!(
            script
                .no_connection_within(Duration::from_millis(500))
                .await
        );
        script
    });
    send(&relay, &["kim@school.example.org"]).await.unwrap();
    send(&relay, &["jo@school.example.org"]).await.unwrap();
    let e = send(&relay, &["sam@school.example.org"]).await.unwrap_err();
    assert!(
        matches!(&e, SendError::Transient(t) if t.starts_with("network error")),
        "{e:?}"
    );
    let _ = server.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_refuses_connections_or_never_greets_is_unreachable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let relay = Relay::new(
        &format!("smtp://127.0.0.1:{port}"),
        1,
        Duration::from_secs(2),
        None,
    )
    .unwrap();
    let e = send(&relay, &["kim@school.example.org"]).await.unwrap_err();
    assert!(
        matches!(&e, SendError::Unreachable(t) if t.starts_with("Connection error")),
        "{e:?}"
    );
    assert!(relay.check(Duration::from_secs(2)).await.is_err());

    // Accepted, never greeted.
    let script = Script::start().await;
    let relay = script.relay(1);
    let server = tokio::spawn(async move {
        let mut peer = script.accept().await;
        assert!(peer.closed().await);
        (script, peer)
    });
    let e = send(&relay, &["kim@school.example.org"]).await.unwrap_err();
    assert!(matches!(&e, SendError::Unreachable(_)), "{e:?}");
    let _ = server.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_does_not_know_ehlo_gets_helo() {
    let script = Script::start().await;
    let relay = script.relay(1);
    let server = tokio::spawn(async move {
        let mut peer = script.accept().await;
        peer.send("220 old.example.org SMTP\r\n").await;
        assert!(peer.line().await.starts_with("EHLO "));
        peer.send("502 5.5.2 command not recognised\r\n").await;
        assert!(peer.line().await.starts_with("HELO "));
        peer.send("250 old.example.org\r\n").await;
        assert_eq!(peer.line().await, "MAIL FROM:<rpec@example.org>\r\n");
        peer.send("250 Ok\r\n").await;
        assert_eq!(peer.line().await, "RCPT TO:<kim@school.example.org>\r\n");
        peer.send("250 Ok\r\n").await;
        assert_eq!(peer.line().await, "DATA\r\n");
        peer.send("354 go on\r\n").await;
        peer.until("\r\n.\r\n").await;
        peer.send("250 Ok\r\n").await;
        (script, peer)
    });
    send(&relay, &["kim@school.example.org"]).await.unwrap();
    let _ = server.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_required_and_not_offered_sends_nothing_and_is_unreachable() {
    let script = Script::start().await;
    let relay = script.relay_at(&format!("smtp://127.0.0.1:{}?tls=required", script.port), 1);
    let server = tokio::spawn(async move {
        let mut peer = script.accept().await;
        peer.hello(&["PIPELINING", "AUTH PLAIN"]).await;
        assert!(peer.closed().await, "nothing is sent in clear");
        (script, peer)
    });
    let e = send(&relay, &["kim@school.example.org"]).await.unwrap_err();
    assert!(
        matches!(&e, SendError::Unreachable(t) if t.contains("STARTTLS")),
        "{e:?}"
    );
    let _ = server.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_go_with_auth_plain_or_login_and_a_refusal_is_permanent() {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let script = Script::start().await;
    // Percent-encoded in the URL, decoded on the wire.
    let url = format!(
        "smtp://mail%40er:p%C3%A4ss%3Aword@127.0.0.1:{}",
        script.port
    );
    let plain = script.relay_at(&url, 1);
    let login = script.relay_at(&url, 1);
    let refused = script.relay_at(&url, 1);
    let server = tokio::spawn(async move {
        let mut peer = script.accept().await;
        peer.hello(&["PIPELINING", "AUTH LOGIN PLAIN"]).await;
        assert_eq!(
            peer.line().await,
            format!("AUTH PLAIN {}\r\n", b64("\0mail@er\0päss:word"))
        );
        peer.send("235 2.7.0 Authentication successful\r\n").await;
        peer.one_recipient_to_content().await;
        peer.until("\r\n.\r\n").await;
        peer.send("250 Ok\r\n").await;

        let mut peer = script.accept().await;
        peer.hello(&["AUTH LOGIN"]).await;
        assert_eq!(peer.line().await, "AUTH LOGIN\r\n");
        peer.send("334 VXNlcm5hbWU6\r\n").await;
        assert_eq!(peer.line().await, format!("{}\r\n", b64("mail@er")));
        peer.send("334 UGFzc3dvcmQ6\r\n").await;
        assert_eq!(peer.line().await, format!("{}\r\n", b64("päss:word")));
        peer.send("235 2.7.0 Authentication successful\r\n").await;
        assert_eq!(peer.line().await, "MAIL FROM:<rpec@example.org>\r\n");
        peer.send("250 Ok\r\n").await;
        peer.line().await;
        peer.send("250 Ok\r\n").await;
        assert_eq!(peer.line().await, "DATA\r\n");
        peer.send("354 go on\r\n").await;
        peer.until("\r\n.\r\n").await;
        peer.send("250 Ok\r\n").await;

        let mut peer = script.accept().await;
        peer.hello(&["AUTH PLAIN"]).await;
        assert!(peer.line().await.starts_with("AUTH PLAIN "));
        peer.send("535 5.7.8 Error: authentication failed\r\n")
            .await;
        assert!(peer.closed().await, "no mail without authentication");
        script
    });
    send(&plain, &["kim@school.example.org"]).await.unwrap();
    send(&login, &["kim@school.example.org"]).await.unwrap();
    let e = send(&refused, &["kim@school.example.org"])
        .await
        .unwrap_err();
    assert!(
        matches!(&e, SendError::Permanent(t) if t.starts_with("permanent error (535)")),
        "{e:?}"
    );
    let _ = server.await.unwrap();
}

/// A TLS server for 127.0.0.1 with a certificate a private CA signed, and that CA's file.
fn tls_server(dir: &std::path::Path) -> (tokio_rustls::TlsAcceptor, String) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    rpec_notify::mail::install_tls_provider();
    let (cert, key, ca) = crate::delivery::private_ca(dir);
    let certs = CertificateDer::pem_file_iter(&cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&key).unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    (tokio_rustls::TlsAcceptor::from(Arc::new(config)), ca)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtps_is_tls_from_the_first_byte_and_its_connection_carries_the_next_message() {
    let dir = tempfile::tempdir().unwrap();
    let (acceptor, ca) = tls_server(dir.path());
    let script = Script::start().await;
    let url = format!("smtps://127.0.0.1:{}", script.port);
    let relay = Relay::new(&url, 1, Duration::from_secs(2), Some(ca.as_ref())).unwrap();
    let untrusting = Relay::new(&url, 1, Duration::from_secs(2), None).unwrap();
    let server = tokio::spawn(async move {
        let mut peer = script.accept().await.tls(&acceptor).await;
        peer.hello(&["PIPELINING"]).await;
        for to in ["kim@school.example.org", "jo@school.example.org"] {
            let group = peer.group(1).await;
            assert!(group.contains(to), "{group}");
            peer.send("250 Ok\r\n250 Ok\r\n354 go on\r\n").await;
            assert_eq!(
                peer.until("\r\n.\r\n").await,
                "Subject: x\r\n\r\nhello\r\n.\r\n"
            );
            peer.send("250 Ok\r\n").await;
        }
        // A relay whose certificate the client does not trust gets nothing.
        let refused = script.accept().await;
        let stream = refused.stream;
        assert!(acceptor.accept(stream).await.is_err());
        (script, peer)
    });
    send(&relay, &["kim@school.example.org"]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    send(&relay, &["jo@school.example.org"]).await.unwrap();
    let e = send(&untrusting, &["kim@school.example.org"])
        .await
        .unwrap_err();
    assert!(
        matches!(&e, SendError::Unreachable(t) if t.starts_with("tls error")),
        "{e:?}"
    );
    let _ = server.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_starts_again_with_ehlo_and_credentials_go_only_once_encrypted() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let (acceptor, ca) = tls_server(dir.path());
    let script = Script::start().await;
    let url = format!(
        "smtp://mailer:pw@127.0.0.1:{}?tls=opportunistic",
        script.port
    );
    let relay = Relay::new(&url, 1, Duration::from_secs(2), Some(ca.as_ref())).unwrap();
    let server = tokio::spawn(async move {
        let mut peer = script.accept().await;
        peer.hello(&["PIPELINING", "STARTTLS"]).await;
        assert_eq!(peer.line().await, "STARTTLS\r\n");
        peer.send("220 2.0.0 Ready to start TLS\r\n").await;
        let mut peer = peer.tls(&acceptor).await;
        // What was offered in clear is forgotten: the client asks again.
        peer.ehlo(&["PIPELINING", "AUTH PLAIN"]).await;
        let plain = base64::engine::general_purpose::STANDARD.encode("\0mailer\0pw");
        assert_eq!(peer.line().await, format!("AUTH PLAIN {plain}\r\n"));
        peer.send("235 2.7.0 Ok\r\n").await;
        peer.one_recipient_to_content().await;
        peer.until("\r\n.\r\n").await;
        peer.send("250 Ok\r\n").await;
        (script, peer)
    });
    send(&relay, &["kim@school.example.org"]).await.unwrap();
    let _ = server.await.unwrap();
}

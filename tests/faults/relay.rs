//! A programmable mail relay: a real SMTP server (mailin-embedded) behind a front door the test
//! controls. Its mode is one switch shared by the front door and the SMTP handler:
//!
//! - `Accept`: takes every message and records it (with the moment it was accepted);
//! - `Gone`: nothing listens (connections are refused) and open connections are cut;
//! - `Reply421`: answers `MAIL FROM` with 421 and closes the connection;
//! - `Reply451`: takes the whole message, then answers 451 (not accepted, nothing recorded).

use std::net::TcpListener as StdListener;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    Accept = 0,
    Gone = 1,
    Reply421 = 2,
    Reply451 = 3,
}

impl Mode {
    fn from_u8(v: u8) -> Mode {
        match v {
            1 => Mode::Gone,
            2 => Mode::Reply421,
            3 => Mode::Reply451,
            _ => Mode::Accept,
        }
    }
}

/// One message the relay accepted.
#[derive(Debug, Clone)]
pub struct Received {
    pub message_id: String,
    /// Lower-cased.
    pub envelope_to: Vec<String>,
    /// Lower-cased.
    pub reply_to: Option<String>,
    pub at: Instant,
}

#[derive(Clone)]
struct Handler {
    mode: Arc<AtomicU8>,
    received: Arc<Mutex<Vec<Received>>>,
    to: Vec<String>,
    data: Vec<u8>,
}

impl mailin_embedded::Handler for Handler {
    fn mail(
        &mut self,
        _ip: std::net::IpAddr,
        _domain: &str,
        _from: &str,
    ) -> mailin_embedded::Response {
        if Mode::from_u8(self.mode.load(Ordering::SeqCst)) == Mode::Reply421 {
            mailin_embedded::response::NO_SERVICE
        } else {
            mailin_embedded::response::OK
        }
    }

    fn data_start(
        &mut self,
        _domain: &str,
        _from: &str,
        _is8bit: bool,
        to: &[String],
    ) -> mailin_embedded::Response {
        self.to = to.to_vec();
        self.data.clear();
        mailin_embedded::response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.data.extend_from_slice(buf);
        Ok(())
    }

    fn data_end(&mut self) -> mailin_embedded::Response {
        let raw = std::mem::take(&mut self.data);
        let to = std::mem::take(&mut self.to);
        if Mode::from_u8(self.mode.load(Ordering::SeqCst)) == Mode::Reply451 {
            return mailin_embedded::response::INTERNAL_ERROR;
        }
        let parsed = mail_parser::MessageParser::default().parse_headers(&raw[..]);
        let message_id = parsed
            .as_ref()
            .and_then(|m| m.message_id())
            .unwrap_or_default()
            .to_owned();
        let reply_to = parsed
            .as_ref()
            .and_then(|m| m.reply_to())
            .and_then(|a| a.first())
            .and_then(|a| a.address())
            .map(|a| a.to_ascii_lowercase());
        let envelope_to = to
            .iter()
            .map(|t| {
                t.trim_matches(|c| c == '<' || c == '>')
                    .to_ascii_lowercase()
            })
            .collect();
        self.received.lock().unwrap().push(Received {
            message_id,
            envelope_to,
            reply_to,
            at: Instant::now(),
        });
        mailin_embedded::response::OK
    }
}

/// The relay; it lives until the test process ends.
#[derive(Clone)]
pub struct Relay {
    /// The front door the worker is given.
    pub port: u16,
    mode: Arc<AtomicU8>,
    switch: watch::Sender<Mode>,
    received: Arc<Mutex<Vec<Received>>>,
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Relay {
    /// Starts the SMTP server (serving `threads` connections at once) and its front door, in
    /// `Accept` mode.
    pub async fn start(threads: u32) -> Relay {
        rpec_notify::mail::install_tls_provider();
        let inner = free_port();
        let mode = Arc::new(AtomicU8::new(Mode::Accept as u8));
        let received = Arc::new(Mutex::new(Vec::new()));
        let handler = Handler {
            mode: mode.clone(),
            received: received.clone(),
            to: Vec::new(),
            data: Vec::new(),
        };
        let mut server = mailin_embedded::Server::new(handler);
        server
            .with_name("relay.faults.example.org")
            .with_num_threads(threads)
            .with_addr(("127.0.0.1", inner))
            .expect("the relay's port");
        std::thread::spawn(move || {
            let _ = server.serve();
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", inner)).is_err() {
            assert!(Instant::now() < deadline, "the SMTP server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        let port = free_port();
        let (switch, watching) = watch::channel(Mode::Accept);
        tokio::spawn(front_door(port, inner, watching));
        let relay = Relay {
            port,
            mode,
            switch,
            received,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "the relay's front door did not open"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        relay
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    pub fn set_mode(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
        self.switch.send_replace(mode);
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

/// Listens on `port` except while the mode is `Gone`; forwards every connection to `inner`.
async fn front_door(port: u16, inner: u16, mut mode: watch::Receiver<Mode>) {
    loop {
        if *mode.borrow_and_update() == Mode::Gone {
            if mode.changed().await.is_err() {
                return;
            }
            continue;
        }
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", port)).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        loop {
            tokio::select! {
                changed = mode.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if *mode.borrow_and_update() == Mode::Gone {
                        break; // the listener is dropped: connections are refused
                    }
                }
                accepted = listener.accept() => {
                    if let Ok((inbound, _)) = accepted {
                        tokio::spawn(pipe(inbound, ("127.0.0.1", inner), mode.clone()));
                    }
                }
            }
        }
    }
}

/// Copies both ways until either side closes or the relay goes away.
async fn pipe(inbound: TcpStream, target: (&'static str, u16), mut mode: watch::Receiver<Mode>) {
    let Ok(outbound) = TcpStream::connect(target).await else {
        return;
    };
    let (mut ri, mut wi) = inbound.into_split();
    let (mut ro, mut wo) = outbound.into_split();
    let gone = async {
        loop {
            if *mode.borrow_and_update() == Mode::Gone {
                return;
            }
            if mode.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::io::copy(&mut ri, &mut wo) => {}
        _ = tokio::io::copy(&mut ro, &mut wi) => {}
        _ = gone => {}
    }
}

/// A TCP balancer in front of several brokers: each new connection goes to the first of
/// `targets` that accepts one (the worker takes a single AMQP URL; this gives it failover).
pub async fn balancer(targets: Vec<u16>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((inbound, _)) = listener.accept().await else {
                continue;
            };
            let targets = targets.clone();
            tokio::spawn(async move {
                for t in targets {
                    let attempt = tokio::time::timeout(
                        Duration::from_secs(1),
                        TcpStream::connect(("127.0.0.1", t)),
                    )
                    .await;
                    if let Ok(Ok(outbound)) = attempt {
                        let (mut ri, mut wi) = inbound.into_split();
                        let (mut ro, mut wo) = outbound.into_split();
                        tokio::select! {
                            _ = tokio::io::copy(&mut ri, &mut wo) => {}
                            _ = tokio::io::copy(&mut ro, &mut wi) => {}
                        }
                        return;
                    }
                }
            });
        }
    });
    port
}

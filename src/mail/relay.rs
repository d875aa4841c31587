//! The mail relay: our SMTP client's pool of connections (plain, STARTTLS or implicit TLS, as
//! the URL says; see `mail::smtp`) or lettre's file transport, which writes one `.eml` file per
//! email.

use crate::mail::smtp;
use lettre::address::{Address, Envelope};
use lettre::{AsyncFileTransport, AsyncTransport, Message, Tokio1Executor};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `RPEC_SMTP_URL`, parsed. It may hold the relay's password: its `Debug` shows neither the
/// password nor the user.
#[derive(Clone, PartialEq, Eq)]
pub enum RelayUrl {
    /// smtp://, smtps:// (TLS mode and credentials are read from the URL, see `mail::smtp`).
    Smtp(String),
    /// file:///dir or file://./relative/dir.
    File(PathBuf),
}

impl std::fmt::Debug for RelayUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RelayUrl::Smtp(url) => {
                let shown = url::Url::parse(url).map_or("<not a URL>".to_string(), |u| {
                    format!(
                        "{}://{}:{}",
                        u.scheme(),
                        u.host_str().unwrap_or_default(),
                        u.port().map_or("default".to_string(), |p| p.to_string())
                    )
                });
                f.debug_tuple("Smtp").field(&shown).finish()
            }
            RelayUrl::File(dir) => f.debug_tuple("File").field(dir).finish(),
        }
    }
}

impl RelayUrl {
    /// Whether the URL carries a user name or password.
    pub fn has_credentials(&self) -> bool {
        match self {
            RelayUrl::Smtp(url) => url::Url::parse(url)
                .is_ok_and(|u| !u.username().is_empty() || u.password().is_some()),
            RelayUrl::File(_) => false,
        }
    }

    /// Whether everything sent to the relay is encrypted: implicit TLS, or STARTTLS required.
    pub fn is_encrypted(&self) -> bool {
        match self {
            RelayUrl::Smtp(url) => url::Url::parse(url).is_ok_and(|u| {
                u.scheme() == "smtps" || u.query_pairs().any(|(k, v)| k == "tls" && v == "required")
            }),
            RelayUrl::File(_) => false,
        }
    }

    pub fn parse(url: &str) -> Result<RelayUrl, String> {
        if let Some(path) = url.strip_prefix("file://") {
            if path.is_empty() {
                return Err("file:// needs a directory, e.g. file://./var/mail".into());
            }
            return Ok(RelayUrl::File(PathBuf::from(path)));
        }
        if url.starts_with("smtp://") || url.starts_with("smtps://") {
            smtp::Endpoint::parse(url).map_err(|e| format!("not a usable SMTP URL: {e}"))?;
            return Ok(RelayUrl::Smtp(url.to_owned()));
        }
        Err("must start with smtp://, smtps:// or file://".into())
    }
}

/// How long a message may wait for its final "." before it is withdrawn: a second, or a
/// quarter of the send's time if that is less, so that a hold never eats the send's time.
fn hold_patience(timeout: Duration) -> Duration {
    (timeout / 4).min(Duration::from_secs(1))
}

/// Why a send failed, which decides whether it is tried again and whether the try counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// 4xx replies, a session broken or stalled mid-send: try again later, as an attempt.
    Transient(String),
    /// 5xx replies: the relay will never take it.
    Permanent(String),
    /// The relay could not be reached at all (connection refused, no answer to connect or no
    /// greeting, its TLS refused, STARTTLS required and not offered, no connection of the pool
    /// free in time) or, before sending, the database could not be read: nothing was learned
    /// about this email, so the try does not count toward `mail.retry.max_attempts`.
    Unreachable(String),
}

impl SendError {
    /// A short, personal-data-free description for logs (replies can quote addresses).
    pub fn log_summary(&self) -> &'static str {
        match self {
            SendError::Transient(_) => "transient",
            SendError::Permanent(_) => "permanent",
            SendError::Unreachable(_) => "unreachable",
        }
    }

    pub fn text(&self) -> &str {
        let (SendError::Transient(t) | SendError::Permanent(t) | SendError::Unreachable(t)) = self;
        t
    }
}

/// Chooses rustls's cryptography (ring) for the whole process, once. Several crates in one
/// build can enable more than one provider, and rustls then refuses to guess.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[derive(Clone)]
pub struct Relay(Kind);

#[derive(Clone)]
enum Kind {
    Smtp(smtp::Client),
    File(AsyncFileTransport<Tokio1Executor>, PathBuf),
}

/// The envelope of a raw send, checked as lettre checks addresses; "" is the null sender.
fn envelope(from: &str, to: &[String]) -> Result<Envelope, SendError> {
    let address = |a: &str| {
        a.parse::<Address>()
            .map_err(|e| SendError::Permanent(format!("not sendable: an envelope address: {e}")))
    };
    let from = match from {
        "" => None,
        a => Some(address(a)?),
    };
    let to = to
        .iter()
        .map(|a| address(a))
        .collect::<Result<Vec<_>, _>>()?;
    Envelope::new(from, to).map_err(|e| SendError::Permanent(format!("not sendable: {e}")))
}

impl Relay {
    /// The relay `url` names: `pool_max_size` connections at most, `timeout` the whole of one
    /// send (connecting with the greeting, and each reply, get half of it, so that a relay that
    /// does not answer a connection shows as unreachable, not this email's fault, before the
    /// whole send is given up). `ca_file` (PEM) is a private certificate authority to trust for
    /// the relay's TLS certificate, for relays inside an organisation, besides the usual public
    /// roots.
    pub fn new(
        url: &str,
        pool_max_size: u32,
        timeout: Duration,
        ca_file: Option<&Path>,
    ) -> anyhow::Result<Relay> {
        match RelayUrl::parse(url).map_err(anyhow::Error::msg)? {
            RelayUrl::File(dir) => {
                std::fs::create_dir_all(&dir)?;
                Ok(Relay(Kind::File(AsyncFileTransport::new(&dir), dir)))
            }
            RelayUrl::Smtp(url) => {
                install_tls_provider();
                let endpoint = smtp::Endpoint::parse(&url).map_err(anyhow::Error::msg)?;
                if ca_file.is_some() && endpoint.security == smtp::Security::None {
                    anyhow::bail!(
                        "a CA file is set, but the relay URL asks for no TLS (use smtps:// or \
                         ?tls=required)"
                    );
                }
                let client = smtp::Client::new(endpoint, pool_max_size, timeout / 2, ca_file)?;
                Ok(Relay(Kind::Smtp(client)))
            }
        }
    }

    /// Sends one message, giving up (as a passing failure) after `timeout`.
    pub async fn send(&self, message: Message, timeout: Duration) -> Result<(), SendError> {
        let envelope = message.envelope();
        let from = envelope.from().map_or("", |a| a.as_ref());
        let to: Vec<String> = envelope.to().iter().map(|a| a.to_string()).collect();
        self.send_raw(from, &to, &message.formatted(), timeout)
            .await
    }

    /// Sends `message`, but lets the relay take it only once `gate` resolves: see
    /// [`Relay::send_raw_after`]. `return_path`, when given, is the envelope sender (where
    /// bounces go) instead of the message's From address.
    pub async fn send_after(
        &self,
        message: Message,
        return_path: Option<&str>,
        timeout: Duration,
        gate: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), SendError> {
        let envelope = message.envelope();
        let from = return_path.unwrap_or_else(|| envelope.from().map_or("", |a| a.as_ref()));
        let to: Vec<String> = envelope.to().iter().map(|a| a.to_string()).collect();
        self.send_raw_after(from, &to, &message.formatted(), timeout, gate)
            .await
    }

    /// [`Relay::send_raw`], but the relay may take the message only once `gate` resolves:
    /// everything but its final "." goes meanwhile (for a second at most; after that it is
    /// withdrawn and sent whole once `gate` resolves). A sender that must not have two emails
    /// accepted and unrecorded at once thus waits for the last one's record only for the
    /// final "." of the next. The file relay waits for `gate`, then writes.
    pub async fn send_raw_after(
        &self,
        from: &str,
        to: &[String],
        bytes: &[u8],
        timeout: Duration,
        gate: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), SendError> {
        let mut gate = std::pin::pin!(gate);
        match &self.0 {
            Kind::Smtp(client) => {
                let envelope = envelope(from, to)?;
                let to: Vec<&str> = envelope.to().iter().map(|a| a.as_ref()).collect();
                let from = envelope.from().map_or("", |a| a.as_ref());
                let hold = smtp::Hold::new(gate.as_mut(), hold_patience(timeout));
                client.send_after(from, &to, bytes, timeout, hold).await
            }
            Kind::File(..) => {
                gate.await;
                self.send_raw(from, to, bytes, timeout).await
            }
        }
    }

    /// Sends a message already formatted (lettre's `Message::formatted`), with its envelope:
    /// `from` the sender's address ("" for the null sender), `to` the recipients' addresses.
    /// Gives up (as a passing failure) after `timeout`.
    pub async fn send_raw(
        &self,
        from: &str,
        to: &[String],
        bytes: &[u8],
        timeout: Duration,
    ) -> Result<(), SendError> {
        let envelope = envelope(from, to)?;
        match &self.0 {
            Kind::Smtp(client) => {
                let to: Vec<&str> = envelope.to().iter().map(|a| a.as_ref()).collect();
                let from = envelope.from().map_or("", |a| a.as_ref());
                client.send(from, &to, bytes, timeout).await
            }
            Kind::File(t, _) => {
                match tokio::time::timeout(timeout, t.send_raw(&envelope, bytes)).await {
                    Ok(r) => r
                        .map(|_| ())
                        .map_err(|e| SendError::Transient(e.to_string())),
                    Err(_) => Err(SendError::Transient(format!(
                        "no answer from the relay within {}s",
                        timeout.as_secs()
                    ))),
                }
            }
        }
    }

    /// Whether the relay can be reached now (for /readyz).
    pub async fn check(&self, timeout: Duration) -> Result<(), String> {
        match &self.0 {
            Kind::Smtp(client) => client.check(timeout).await,
            Kind::File(_, dir) => {
                let meta = tokio::fs::metadata(dir)
                    .await
                    .map_err(|e| format!("mail directory: {e}"))?;
                if meta.is_dir() && !meta.permissions().readonly() {
                    Ok(())
                } else {
                    Err("the mail directory is not writable".into())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_relay_nobody_listens_on_is_unreachable_not_an_attempt() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let relay = Relay::new(
            &format!("smtp://127.0.0.1:{port}"),
            1,
            Duration::from_secs(2),
            None,
        )
        .expect("a relay");
        let message = Message::builder()
            .from("a@example.org".parse().expect("an address"))
            .to("b@example.org".parse().expect("an address"))
            .subject("x")
            .body(String::from("x"))
            .expect("a message");
        let e = relay
            .send(message, Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(matches!(e, SendError::Unreachable(_)), "{e:?}");
    }

    #[tokio::test]
    async fn a_raw_send_to_the_file_relay_writes_one_eml_file_as_lettre_did() {
        let dir = tempfile::tempdir().unwrap();
        let relay = Relay::new(
            &format!("file://{}", dir.path().display()),
            1,
            Duration::from_secs(2),
            None,
        )
        .unwrap();
        let bytes = b"To: kim@school.example.org\r\nSubject: x\r\n\r\n.dot\r\n";
        relay
            .send_raw(
                "rpec@example.org",
                &["kim@school.example.org".into()],
                bytes,
                Duration::from_secs(2),
            )
            .await
            .unwrap();
        let files: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].extension().unwrap(), "eml");
        assert_eq!(std::fs::read(&files[0]).unwrap(), bytes);
    }

    #[tokio::test]
    async fn a_raw_envelope_that_is_not_one_is_never_sendable() {
        let dir = tempfile::tempdir().unwrap();
        let relay = Relay::new(
            &format!("file://{}", dir.path().display()),
            1,
            Duration::from_secs(2),
            None,
        )
        .unwrap();
        let to = ["kim@school.example.org".to_string()];
        for (from, to) in [
            ("not an address", &to[..]),
            ("rpec@example.org", &[][..]),
            (
                "rpec@example.org",
                &["kim@school.example.org>\r\nRSET".to_string()][..],
            ),
        ] {
            let e = relay
                .send_raw(from, to, b"x\r\n", Duration::from_secs(2))
                .await
                .unwrap_err();
            assert!(
                matches!(&e, SendError::Permanent(t) if t.starts_with("not sendable")),
                "{e:?}"
            );
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_ca_file_needs_a_url_that_asks_for_tls() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "").unwrap();
        let no_tls = Relay::new("smtp://127.0.0.1:25", 1, Duration::from_secs(2), Some(&ca));
        assert!(no_tls.is_err_and(|e| e.to_string().contains("asks for no TLS")));
        for url in ["smtps://127.0.0.1", "smtp://127.0.0.1?tls=opportunistic"] {
            assert!(Relay::new(url, 1, Duration::from_secs(2), Some(&ca)).is_ok());
        }
    }

    #[test]
    fn relay_urls() {
        assert_eq!(
            RelayUrl::parse("file://./var/mail"),
            Ok(RelayUrl::File("./var/mail".into()))
        );
        assert_eq!(
            RelayUrl::parse("file:///tmp/m"),
            Ok(RelayUrl::File("/tmp/m".into()))
        );
        assert!(matches!(
            RelayUrl::parse("smtp://127.0.0.1:2525"),
            Ok(RelayUrl::Smtp(_))
        ));
        assert!(matches!(
            RelayUrl::parse("smtp://relay.example.org:587?tls=required"),
            Ok(RelayUrl::Smtp(_))
        ));
        assert!(matches!(
            RelayUrl::parse("smtps://user:pass@relay.example.org"),
            Ok(RelayUrl::Smtp(_))
        ));
        assert!(RelayUrl::parse("http://relay").is_err());
        let with_password = RelayUrl::parse("smtps://mailer:s3cret-pw@relay.example.org").unwrap();
        let shown = format!("{with_password:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("mailer"),
            "{shown}"
        );
        assert!(with_password.has_credentials() && with_password.is_encrypted());
        let plain = RelayUrl::parse("smtp://mailer:pw@relay.example.org:587").unwrap();
        assert!(plain.has_credentials() && !plain.is_encrypted());
        let starttls = RelayUrl::parse("smtp://mailer:pw@relay.example.org:587?tls=required");
        assert!(starttls.unwrap().is_encrypted());
        assert!(!RelayUrl::parse("smtp://127.0.0.1:25")
            .unwrap()
            .has_credentials());
        assert!(RelayUrl::parse("file://").is_err());
        // What lettre's from_url refused, refused still.
        for bad in [
            "smtp://relay.example.org?tls=maybe",
            "smtp://",
            "smtps://u:%FF@relay.example.org",
        ] {
            let e = RelayUrl::parse(bad).unwrap_err();
            assert!(e.starts_with("not a usable SMTP URL: "), "{e}");
        }
    }
}

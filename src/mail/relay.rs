//! The mail relay: a pooled lettre SMTP transport (plain, STARTTLS or implicit TLS, as the URL
//! says) or lettre's file transport, which writes one `.eml` file per email.

use anyhow::Context;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `RPEC_SMTP_URL`, parsed. It may hold the relay's password: its `Debug` shows neither the
/// password nor the user.
#[derive(Clone, PartialEq, Eq)]
pub enum RelayUrl {
    /// smtp://, smtps:// (lettre reads TLS mode and credentials from the URL).
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
            AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                .map_err(|e| format!("not a usable SMTP URL: {e}"))?;
            return Ok(RelayUrl::Smtp(url.to_owned()));
        }
        Err("must start with smtp://, smtps:// or file://".into())
    }
}

/// Why a send failed, which decides whether it is tried again and whether the try counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// 4xx replies, a session broken or stalled mid-send: try again later, as an attempt.
    Transient(String),
    /// 5xx replies: the relay will never take it.
    Permanent(String),
    /// The relay could not be reached at all (connection refused, no answer to connect, its
    /// TLS refused) or, before sending, the database could not be read: nothing was learned
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

/// How a failed SMTP send is classed. lettre has no public test for its `Connection` kind (the
/// connection, or its TLS, could not be set up) nor for `Network` (the socket failed later), so
/// they are told apart by lettre's text for the kind; the unit test below notices if that
/// changes. A `Network` error stays an attempt: the relay was reached, and an email that keeps
/// breaking sessions must not be retried for ever.
fn classify(e: &lettre::transport::smtp::Error) -> SendError {
    let text = e.to_string();
    if e.is_permanent() {
        SendError::Permanent(text)
    } else if e.is_transient() || e.is_response() || e.is_client() || e.is_transport_shutdown() {
        SendError::Transient(text)
    } else if e.is_tls() || text.starts_with("Connection error") {
        SendError::Unreachable(text)
    } else {
        SendError::Transient(text)
    }
}

/// Chooses rustls's cryptography (ring) for the whole process, once. Several crates in one
/// build can enable more than one provider, and rustls then refuses to guess.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The TLS mode the URL asks for (as lettre reads it), trusting `ca_file`.
fn tls_with_ca(url: &str, ca_file: &Path) -> anyhow::Result<Tls> {
    let parsed = url::Url::parse(url).context("the relay URL")?;
    let host = parsed.host_str().context("the relay URL has no host")?;
    let pem =
        std::fs::read(ca_file).with_context(|| format!("{}: cannot be read", ca_file.display()))?;
    let parameters = TlsParameters::builder(host.to_owned())
        .add_root_certificate(
            Certificate::from_pem(&pem).context("the CA file is not a PEM certificate")?,
        )
        .build()?;
    let mode = parsed
        .query_pairs()
        .find(|(k, _)| k == "tls")
        .map(|(_, v)| v.into_owned());
    Ok(match (parsed.scheme(), mode.as_deref()) {
        ("smtps", _) => Tls::Wrapper(parameters),
        (_, Some("required")) => Tls::Required(parameters),
        (_, Some("opportunistic")) => Tls::Opportunistic(parameters),
        _ => anyhow::bail!(
            "a CA file is set, but the relay URL asks for no TLS (use smtps:// or ?tls=required)"
        ),
    })
}

#[derive(Clone)]
pub enum Relay {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    File(AsyncFileTransport<Tokio1Executor>, PathBuf),
}

impl Relay {
    /// The relay `url` names. `ca_file` (PEM) is a private certificate authority to trust for
    /// the relay's TLS certificate, for relays inside an organisation; None trusts the usual
    /// public roots.
    pub fn new(
        url: &str,
        pool_max_size: u32,
        timeout: Duration,
        ca_file: Option<&Path>,
    ) -> anyhow::Result<Relay> {
        match RelayUrl::parse(url).map_err(anyhow::Error::msg)? {
            RelayUrl::File(dir) => {
                std::fs::create_dir_all(&dir)?;
                Ok(Relay::File(AsyncFileTransport::new(&dir), dir))
            }
            RelayUrl::Smtp(url) => {
                install_tls_provider();
                let mut builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(&url)?;
                if let Some(ca_file) = ca_file {
                    builder = builder.tls(tls_with_ca(&url, ca_file)?);
                }
                // Connecting and each command get half the time a whole send may take, so a
                // relay that does not answer a connection shows as lettre's connection error
                // (unreachable: not this email's fault) before the whole send is given up.
                let transport = builder
                    .timeout(Some(timeout / 2))
                    .pool_config(PoolConfig::new().max_size(pool_max_size))
                    .build();
                Ok(Relay::Smtp(transport))
            }
        }
    }

    /// Sends one message, giving up (as a passing failure) after `timeout`.
    pub async fn send(&self, message: Message, timeout: Duration) -> Result<(), SendError> {
        let attempt = async {
            match self {
                Relay::Smtp(t) => t.send(message).await.map(|_| ()).map_err(|e| classify(&e)),
                Relay::File(t, _) => t
                    .send(message)
                    .await
                    .map(|_| ())
                    .map_err(|e| SendError::Transient(e.to_string())),
            }
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(SendError::Transient(format!(
                "no answer from the relay within {}s",
                timeout.as_secs()
            ))),
        }
    }

    /// Whether the relay can be reached now (for /readyz).
    pub async fn check(&self, timeout: Duration) -> Result<(), String> {
        match self {
            Relay::Smtp(t) => match tokio::time::timeout(timeout, t.test_connection()).await {
                Ok(Ok(true)) => Ok(()),
                Ok(Ok(false)) => Err("the relay did not accept a connection".into()),
                Ok(Err(e)) => Err(format!(
                    "the relay cannot be reached: {}",
                    e.status().map_or("no reply".to_string(), |c| c.to_string())
                )),
                Err(_) => Err("the relay did not answer in time".into()),
            },
            Relay::File(_, dir) => {
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
    }
}

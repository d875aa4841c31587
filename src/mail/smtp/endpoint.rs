//! Where the relay is and how to talk to it, read from an `smtp://` or `smtps://` URL with the
//! rules lettre's `from_url` had: `smtp://` is plain on port 25, `?tls=required` and
//! `?tls=opportunistic` use STARTTLS on port 587, `smtps://` is TLS from the first byte on port
//! 465 (whatever `tls=` says); a path names the client in EHLO; a user and password, both
//! percent-decoded, are sent with AUTH when there is a password.

use std::net::IpAddr;

/// How the connection is encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Security {
    /// Never.
    None,
    /// STARTTLS when the relay offers it, else in clear.
    Opportunistic,
    /// STARTTLS, and nothing is sent if the relay does not offer it.
    Required,
    /// TLS from the first byte (smtps://).
    Implicit,
}

impl Security {
    pub fn uses_tls(self) -> bool {
        self != Security::None
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Host {
    Name(String),
    Ip(IpAddr),
}

/// The relay, as the URL names it. Its `Debug` leaves the credentials out.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub host: Host,
    pub port: u16,
    pub security: Security,
    /// User and password (the URL's, percent-decoded).
    pub credentials: Option<(String, String)>,
    /// The name to give in EHLO, when the URL's path names one.
    pub hello: Option<String>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("credentials", &self.credentials.as_ref().map(|_| "<set>"))
            .field("hello", &self.hello)
            .finish()
    }
}

const SMTP_PORT: u16 = 25;
const SUBMISSION_PORT: u16 = 587;
const SUBMISSIONS_PORT: u16 = 465;

impl Endpoint {
    /// The relay `url` names. The error never quotes the URL (it may hold a password).
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
        let tls = parsed
            .query_pairs()
            .find(|(k, _)| k == "tls")
            .map(|(_, v)| v.into_owned());
        let (security, default_port) = match (parsed.scheme(), tls.as_deref()) {
            ("smtp", None) => (Security::None, SMTP_PORT),
            ("smtp", Some("required")) => (Security::Required, SUBMISSION_PORT),
            ("smtp", Some("opportunistic")) => (Security::Opportunistic, SUBMISSION_PORT),
            ("smtps", _) => (Security::Implicit, SUBMISSIONS_PORT),
            ("smtp", Some(other)) => {
                return Err(format!(
                    "unknown tls parameter {other:?} (use tls=required or tls=opportunistic)"
                ))
            }
            (scheme, _) => return Err(format!("unknown scheme {scheme:?}")),
        };
        // smtp:// is not a scheme the URL standard knows, so an IPv4 address comes back as a
        // name: read it as an address here.
        let host = match parsed.host() {
            Some(url::Host::Domain(d)) if !d.is_empty() => match d.parse::<IpAddr>() {
                Ok(ip) => Host::Ip(ip),
                Err(_) => Host::Name(d.to_owned()),
            },
            Some(url::Host::Ipv4(ip)) => Host::Ip(ip.into()),
            Some(url::Host::Ipv6(ip)) => Host::Ip(ip.into()),
            _ => return Err("smtp host undefined".into()),
        };
        if let Host::Name(name) = &host {
            if security.uses_tls()
                && rustls::pki_types::ServerName::try_from(name.as_str()).is_err()
            {
                return Err("the host is not a name a TLS certificate can carry".into());
            }
            if percent_encoding::percent_decode_str(name).any(|b| b.is_ascii_control() || b == b' ')
            {
                return Err("the host is not a host name".into());
            }
        }
        let credentials = match parsed.password() {
            Some(password) => {
                let decode = |s: &str| {
                    percent_encoding::percent_decode_str(s)
                        .decode_utf8()
                        .map(|c| c.into_owned())
                        .map_err(|_| "the user or password is not percent-encoded UTF-8")
                };
                Some((decode(parsed.username())?, decode(password)?))
            }
            None => None,
        };
        let hello = match parsed.path().trim_matches('/') {
            "" => None,
            name if name.bytes().all(is_hello_byte) => Some(name.to_owned()),
            _ => return Err("the path (the name to give in EHLO) is not a domain".into()),
        };
        Ok(Endpoint {
            host,
            port: parsed.port().unwrap_or(default_port),
            security,
            credentials,
            hello,
        })
    }
}

/// A byte of a domain or an address literal ("[192.0.2.1]", "[IPv6:...]").
fn is_hello_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'[' | b']' | b':')
}

/// The name the client gives in EHLO when the URL names none: this machine's host name, as
/// lettre did, or the address literal for localhost when it has none that can be sent.
pub(crate) fn default_hello() -> String {
    hostname::get()
        .ok()
        .and_then(|n| n.into_string().ok())
        .filter(|n| !n.is_empty() && n.bytes().all(is_hello_byte))
        .unwrap_or_else(|| "[127.0.0.1]".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(url: &str) -> Endpoint {
        Endpoint::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    #[test]
    fn schemes_modes_and_default_ports_as_lettre_read_them() {
        let plain = ok("smtp://relay.example.org");
        assert_eq!(
            (plain.host, plain.port, plain.security),
            (Host::Name("relay.example.org".into()), 25, Security::None)
        );
        let required = ok("smtp://relay.example.org?tls=required");
        assert_eq!(
            (required.port, required.security),
            (587, Security::Required)
        );
        let opportunistic = ok("smtp://relay.example.org:2525?tls=opportunistic");
        assert_eq!(
            (opportunistic.port, opportunistic.security),
            (2525, Security::Opportunistic)
        );
        let implicit = ok("smtps://relay.example.org?tls=whatever");
        assert_eq!(
            (implicit.port, implicit.security),
            (465, Security::Implicit)
        );
        assert!(Endpoint::parse("smtp://relay.example.org?tls=sometimes").is_err());
        assert!(Endpoint::parse("smtp://relay.example.org?tls=").is_err());
        assert!(Endpoint::parse("http://relay.example.org").is_err());
        assert!(Endpoint::parse("smtp://").is_err());
        assert!(Endpoint::parse("smtp:relay").is_err());
        assert!(Endpoint::parse("not a url").is_err());
    }

    #[test]
    fn addresses_as_hosts() {
        assert_eq!(
            ok("smtp://127.0.0.1:2525").host,
            Host::Ip("127.0.0.1".parse().unwrap())
        );
        assert_eq!(
            ok("smtps://[::1]:465").host,
            Host::Ip("::1".parse().unwrap())
        );
        // An address can be checked against a certificate too.
        assert_eq!(ok("smtps://127.0.0.1").security, Security::Implicit);
    }

    #[test]
    fn credentials_need_a_password_and_are_percent_decoded() {
        let e = ok("smtps://mailer%40example.org:p%C3%A4ss%2Fw%3Ard@relay.example.org");
        assert_eq!(
            e.credentials,
            Some(("mailer@example.org".into(), "päss/w:rd".into()))
        );
        assert_eq!(ok("smtps://mailer@relay.example.org").credentials, None);
        assert!(Endpoint::parse("smtps://u:%FF%FE@relay.example.org").is_err());
        let shown = format!("{e:?}");
        assert!(
            !shown.contains("mailer") && !shown.contains("ss"),
            "{shown}"
        );
    }

    #[test]
    fn the_path_names_the_client() {
        assert_eq!(
            ok("smtp://relay.example.org/worker-1.example.org").hello,
            Some("worker-1.example.org".into())
        );
        assert_eq!(ok("smtp://relay.example.org/").hello, None);
        assert!(Endpoint::parse("smtp://relay.example.org/a%20b").is_err());
        assert!(Endpoint::parse("smtp://relay.example.org/a%0D%0AMAIL").is_err());
    }

    #[test]
    fn errors_never_quote_the_url() {
        for url in [
            "smtp://mailbot:s3cret@relay.example.org?tls=maybe",
            "smtps://mailbot:s3cret%FF@relay.example.org",
            "smtp://mailbot:s3cret@relay.example.org/bad%20path",
        ] {
            let e = Endpoint::parse(url).unwrap_err();
            assert!(!e.contains("s3cret") && !e.contains("mailbot"), "{e}");
        }
    }

    #[test]
    fn the_default_hello_name_is_sendable() {
        let name = default_hello();
        assert!(
            !name.is_empty() && name.bytes().all(is_hello_byte),
            "{name}"
        );
    }
}

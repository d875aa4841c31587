//! DKIM signing (RFC 6376) of finished messages, with lettre's signer.
//!
//! A [`DkimSigner`] is made once, from the settings, per From address; [`sign`] is applied to
//! each message once it is complete, just before it goes to the relay.

use base64::Engine as _;
use lettre::message::dkim::{
    DkimCanonicalization, DkimCanonicalizationType, DkimConfig, DkimSigningAlgorithm,
    DkimSigningKey,
};
use lettre::message::header::{self, ContentTransferEncoding, HeaderName, HeaderValue};
use lettre::message::Body;
use lettre::Message;
use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey};
use rsa::pkcs8::DecodePrivateKey;
use rsa::traits::PublicKeyParts;
use rsa::RsaPrivateKey;

/// The headers the signature covers. Those a message lacks are signed as absent, so that nobody
/// on the way can add them (a Reply-To or an unsubscribe link of their own) without breaking
/// the signature. Each appears at most once in our messages, which lettre's signer requires.
const SIGNED_HEADERS: [&str; 16] = [
    "From",
    "Reply-To",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "Auto-Submitted",
    "Importance",
    "X-Priority",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
];

/// The object identifier rsaEncryption (1.2.840.113549.1.1.1), DER-encoded: how a PKCS#8 key
/// says it is RSA.
const RSA_OID: [u8; 11] = [
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
];

/// Verifiers refuse RSA keys shorter than this (RFC 8301).
const MIN_RSA_BITS: usize = 1024;

/// The fixed start of a PKCS#8 Ed25519 private key (RFC 8410): what follows is the 32-byte seed.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// How the mail of one From address is signed: `d=` domain, `s=` selector and the private key.
/// Its `Debug` shows the domain, the selector and the algorithm, never the key.
pub struct DkimSigner {
    domain: String,
    selector: String,
    algorithm: DkimSigningAlgorithm,
    config: DkimConfig,
}

impl std::fmt::Debug for DkimSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DkimSigner")
            .field("domain", &self.domain)
            .field("selector", &self.selector)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl DkimSigner {
    /// A signer from a PEM private key: RSA (PKCS#1 `BEGIN RSA PRIVATE KEY`, or PKCS#8
    /// `BEGIN PRIVATE KEY` as OpenSSL 3 writes by default) or Ed25519 (PKCS#8, as
    /// `openssl genpkey -algorithm ed25519` writes). Errors never quote the key.
    pub fn new(selector: &str, domain: &str, pem: &str) -> Result<DkimSigner, String> {
        if !is_dns_name(selector) {
            return Err(format!(
                "selector {selector:?} is not a DNS label (letters, digits, '-', '.')"
            ));
        }
        if !is_dns_name(domain) {
            return Err(format!("domain {domain:?} is not a domain name"));
        }
        let (key, algorithm) = signing_key(pem)?;
        // relaxed/relaxed: relays that re-fold a header or re-wrap white space at line ends
        // (some do) do not break the signature; anything else they change does.
        let config = DkimConfig::new(
            selector.to_owned(),
            domain.to_ascii_lowercase(),
            key,
            SIGNED_HEADERS
                .iter()
                .map(|h| HeaderName::new_from_ascii_str(h))
                .collect(),
            DkimCanonicalization {
                header: DkimCanonicalizationType::Relaxed,
                body: DkimCanonicalizationType::Relaxed,
            },
        );
        Ok(DkimSigner {
            domain: domain.to_ascii_lowercase(),
            selector: selector.to_owned(),
            algorithm,
            config,
        })
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    pub fn selector(&self) -> &str {
        &self.selector
    }
}

/// The message with a `DKIM-Signature` header added; its bytes are otherwise those of
/// `message`.
///
/// lettre keeps the headers of a message's top MIME part (`Content-Type` with the boundary,
/// which decides how the body is read) with the body, where its signer does not look: signed
/// as it is, the `Content-Type` would be covered as absent and every verifier would refuse the
/// message. So the message is first rewritten as all its headers over a pre-encoded body, which
/// formats to the same bytes, and then signed.
pub fn sign(message: Message, signer: &DkimSigner) -> Result<Message, String> {
    let mut flat = flatten(&message)?;
    flat.sign(&signer.config);
    Ok(flat)
}

/// `message` with its top part's headers moved into the message's headers and the rest as a
/// raw body: the same bytes on the wire, the same envelope.
fn flatten(message: &Message) -> Result<Message, String> {
    let wire = message.formatted();
    let mut headers = message.headers().clone();
    let rest = wire
        .get(headers.to_string().len()..)
        .ok_or("the message is shorter than its headers")?;
    let (part_headers, body) = match rest.strip_prefix(b"\r\n") {
        // A body without part headers (lettre's plain `body`).
        Some(body) => (&b""[..], body),
        None => {
            let end = rest
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .ok_or("the message has no end of headers")?;
            (&rest[..end + 2], &rest[end + 4..])
        }
    };
    let part_headers =
        std::str::from_utf8(part_headers).map_err(|_| "a MIME header is not ASCII")?;
    for (name, value) in unfold_headers(part_headers)? {
        let name = HeaderName::new_from_ascii(name.to_owned())
            .map_err(|_| format!("{name:?} is not a header name"))?;
        // Already encoded and folded by lettre: kept byte for byte.
        headers.insert_raw(HeaderValue::dangerous_new_pre_encoded(
            name,
            value.replace("\r\n", ""),
            value.to_owned(),
        ));
    }
    let from = message
        .headers()
        .get::<header::From>()
        .ok_or("the message has no From")?;
    let mut flat = Message::builder()
        .envelope(message.envelope().clone())
        .header(from)
        .body(Body::dangerous_pre_encoded(
            body.to_vec(),
            ContentTransferEncoding::Binary,
        ))
        .map_err(|e| format!("the message could not be rebuilt: {e}"))?;
    *flat.headers_mut() = headers;
    Ok(flat)
}

/// `Name: value` pairs of a header block (each line ending in CRLF), folded values kept whole.
fn unfold_headers(block: &str) -> Result<Vec<(&str, &str)>, String> {
    let mut out = Vec::new();
    let mut start = 0;
    let bytes = block.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        // A CRLF not followed by white space ends a header.
        if bytes[i..].starts_with(b"\r\n") && !matches!(bytes.get(i + 2), Some(b' ' | b'\t')) {
            let line = &block[start..i];
            let (name, value) = line
                .split_once(':')
                .ok_or("a MIME header without a colon")?;
            out.push((name, value.strip_prefix(' ').unwrap_or(value)));
            start = i + 2;
            i += 2;
        } else {
            i += 1;
        }
    }
    Ok(out)
}

/// lettre's key from a PEM file's text.
fn signing_key(pem: &str) -> Result<(DkimSigningKey, DkimSigningAlgorithm), String> {
    let pem = pem.trim();
    if pem.contains("ENCRYPTED") {
        return Err(
            "an encrypted private key: store it unencrypted, readable by the worker only".into(),
        );
    }
    if pem.starts_with("-----BEGIN RSA PRIVATE KEY-----") {
        let key = RsaPrivateKey::from_pkcs1_pem(pem)
            .map_err(|_| "not a valid RSA private key".to_string())?;
        return rsa_key(&key);
    }
    if pem.starts_with("-----BEGIN PRIVATE KEY-----") {
        let der = pem_body(pem).ok_or("not a valid PEM private key")?;
        if let Some(seed) = der.strip_prefix(&ED25519_PKCS8_PREFIX[..]) {
            if seed.len() != 32 {
                return Err("not a valid Ed25519 private key".into());
            }
            let seed = base64::engine::general_purpose::STANDARD.encode(seed);
            let key = DkimSigningKey::new(&seed, DkimSigningAlgorithm::Ed25519)
                .map_err(|_| "not a valid Ed25519 private key".to_string())?;
            return Ok((key, DkimSigningAlgorithm::Ed25519));
        }
        if !der.windows(RSA_OID.len()).any(|w| w == RSA_OID) {
            return Err(
                "a private key that is neither RSA nor Ed25519 (what DKIM signs with)".into(),
            );
        }
        let key = RsaPrivateKey::from_pkcs8_pem(pem)
            .map_err(|_| "not a valid RSA private key".to_string())?;
        return rsa_key(&key);
    }
    Err("not a PEM private key (BEGIN RSA PRIVATE KEY or BEGIN PRIVATE KEY)".into())
}

fn rsa_key(key: &RsaPrivateKey) -> Result<(DkimSigningKey, DkimSigningAlgorithm), String> {
    let bits = key.size() * 8;
    if bits < MIN_RSA_BITS {
        return Err(format!(
            "an RSA key of {bits} bits: verifiers refuse keys under {MIN_RSA_BITS} (use 2048)"
        ));
    }
    // lettre reads PKCS#1 only: re-encoded, in memory that is wiped when dropped.
    let pkcs1 = key
        .to_pkcs1_pem(rsa::pkcs8::LineEnding::LF)
        .map_err(|_| "the RSA key could not be re-encoded".to_string())?;
    let key = DkimSigningKey::new(&pkcs1, DkimSigningAlgorithm::Rsa)
        .map_err(|_| "not a valid RSA private key".to_string())?;
    Ok((key, DkimSigningAlgorithm::Rsa))
}

/// The bytes of a one-block PEM.
fn pem_body(pem: &str) -> Option<Vec<u8>> {
    let b64: String = pem
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("-----"))
        .collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// Whether `s` is a dot-separated sequence of DNS labels (what `s=` and `d=` may hold: nothing
/// that could end the tag, such as ';', or break the header).
fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use lettre::message::{Mailbox, MultiPart};

    /// A key made by the openssl command (`args` after `openssl`), as PEM text.
    pub(crate) fn openssl_key(args: &[&str]) -> String {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("the openssl command (scripts/setup.sh installs it)");
        assert!(out.status.success(), "openssl {args:?} failed");
        String::from_utf8(out.stdout).expect("PEM is text")
    }

    fn rsa_pkcs8() -> String {
        openssl_key(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
    }

    fn message() -> Message {
        Message::builder()
            .from("Sender <rpec.notifications@example.org>".parse().unwrap())
            .to(Mailbox::new(None, "a@example.net".parse().unwrap()))
            .subject("Über 100 characters? a long subject that lettre folds over more than one line of the header block")
            .message_id(Some("<id@example.org>".into()))
            .multipart(MultiPart::alternative_plain_html(
                "Text ünïcode\r\n.\r\nline".to_string(),
                "<p>HTML</p>".to_string(),
            ))
            .unwrap()
    }

    #[test]
    fn signing_adds_one_header_and_changes_no_other_byte() {
        let signer = DkimSigner::new("s1", "example.org", &rsa_pkcs8()).unwrap();
        let original = message();
        let before = original.formatted();
        let signed = sign(original.clone(), &signer).unwrap();
        let after = String::from_utf8(signed.formatted()).unwrap();
        let (dkim_line, rest) = {
            let start = after.find("DKIM-Signature: ").expect("a signature");
            let end = start
                + after[start..]
                    .match_indices("\r\n")
                    .find(|(i, _)| {
                        !matches!(after.as_bytes().get(start + i + 2), Some(b' ' | b'\t'))
                    })
                    .map(|(i, _)| i + 2)
                    .unwrap();
            (
                after[start..end].to_string(),
                format!("{}{}", &after[..start], &after[end..]),
            )
        };
        assert_eq!(rest.as_bytes(), &before[..], "only the signature was added");
        assert!(dkim_line.contains("d=example.org;"), "{dkim_line}");
        assert!(dkim_line.contains("s=s1;"), "{dkim_line}");
        assert!(dkim_line.contains("a=rsa-sha256;"), "{dkim_line}");
        assert!(dkim_line.contains("c=relaxed/relaxed;"), "{dkim_line}");
        assert!(
            dkim_line.contains("content-type") && dkim_line.contains("list-unsubscribe"),
            "{dkim_line}"
        );
        assert_eq!(signed.envelope(), original.envelope());
        // Both part headers are the message's now, where the signer sees them.
        assert!(signed
            .headers()
            .get_raw("Content-Type")
            .is_some_and(|v| v.starts_with("multipart/alternative")));
    }

    #[test]
    fn rsa_in_both_pem_forms_and_ed25519_are_read_and_bad_keys_refused_unquoted() {
        let pkcs8 = rsa_pkcs8();
        assert!(pkcs8.starts_with("-----BEGIN PRIVATE KEY-----"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        std::fs::write(&path, &pkcs8).unwrap();
        let pkcs1 = openssl_key(&["rsa", "-in", path.to_str().unwrap(), "-traditional"]);
        assert!(pkcs1.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        let ed = openssl_key(&["genpkey", "-algorithm", "ed25519"]);
        for (pem, algorithm) in [(&pkcs8, "rsa"), (&pkcs1, "rsa"), (&ed, "ed25519")] {
            let signer = DkimSigner::new("sel", "Example.ORG", pem).unwrap();
            assert_eq!(format!("{:?}", signer.algorithm).to_lowercase(), algorithm);
            assert_eq!(signer.domain(), "example.org");
            let signed = String::from_utf8(sign(message(), &signer).unwrap().formatted()).unwrap();
            assert!(
                signed.contains(&format!("a={algorithm}-sha256;")),
                "{signed}"
            );
            let shown = format!("{signer:?}");
            assert!(
                !shown.contains("PRIVATE") && shown.contains("sel"),
                "{shown}"
            );
        }

        let small = openssl_key(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:512",
        ]);
        let e = DkimSigner::new("sel", "example.org", &small).unwrap_err();
        assert!(e.contains("512 bits"), "{e}");
        let mangled = pkcs8.replacen('M', "%", 3);
        let ec = openssl_key(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ]);
        let first = if pkcs8.lines().nth(3).unwrap().starts_with('A') {
            "B"
        } else {
            "A"
        };
        let line = pkcs8.lines().nth(3).unwrap();
        let corrupted = pkcs8.replacen(line, &format!("{first}{}", &line[1..]), 1);
        for (bad, says) in [
            (mangled.as_str(), "not a valid PEM"),
            (corrupted.as_str(), "not a valid RSA private key"),
            (ec.as_str(), "neither RSA nor Ed25519"),
            ("hello", "not a PEM private key"),
            ("", "not a PEM private key"),
        ] {
            let e = DkimSigner::new("sel", "example.org", bad).unwrap_err();
            assert!(e.contains(says), "{e}");
            let body_line = bad.lines().nth(1).unwrap_or("hello");
            assert!(!body_line.is_empty() && !e.contains(body_line), "{e}");
        }
        for (selector, domain) in [
            ("a;b", "example.org"),
            ("sel", "example.org; x=1"),
            ("", "e.org"),
        ] {
            assert!(DkimSigner::new(selector, domain, &pkcs8).is_err());
        }
    }
}

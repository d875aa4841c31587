//! DKIM: what the worker sends through a real SMTP server is checked by an independent verifier,
//! dkimpy (Debian's python3-dkim, which `scripts/setup.sh --with-test-tools` installs), against
//! DNS records built here from keys made by the openssl command. The verifier must accept the
//! message as received and refuse it once a single byte of a signed header is changed.

use crate::helpers::*;
use crate::newsletter::{add_confirmed, newsletter, simple_sections};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Verifies each file with dkimpy; `records` maps `<selector>._domainkey.<domain>` to its TXT
/// record, standing in for DNS. Prints one line per file: "pass" or "fail", then the path; the
/// reasons go to stderr.
const VERIFIER: &str = r#"
import json, logging, sys
import dkim
records = json.loads(sys.argv[1])
def dnsfunc(name, timeout=5):
    key = name.decode().rstrip(".").lower()
    record = records.get(key)
    return record.encode() if record is not None else None
logging.basicConfig(stream=sys.stderr, level=logging.DEBUG)
for path in sys.argv[2:]:
    with open(path, "rb") as f:
        message = f.read()
    try:
        ok = dkim.verify(message, logger=logging.getLogger(path), dnsfunc=dnsfunc)
    except Exception as e:  # a key of the wrong type, say: refused all the same
        logging.getLogger(path).error("refused: %r", e)
        ok = False
    print("pass" if ok else "fail", path)
"#;

/// The first python that can import dkimpy and PyNaCl (the order scripts/setup.sh looks in).
/// None only when neither is there; under `make test` (RPEC_REQUIRE_DKIM_VERIFIER=1) that fails
/// the test instead, so that the check cannot be skipped where it is meant to run.
fn verifier_python() -> Option<&'static str> {
    let found = ["python3", "/usr/bin/python3"].into_iter().find(|py| {
        Command::new(py)
            .args(["-c", "import dkim, nacl"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if found.is_none() {
        assert!(
            std::env::var("RPEC_REQUIRE_DKIM_VERIFIER").is_err(),
            "no DKIM verifier (dkimpy): run `bash scripts/setup.sh --with-test-tools`"
        );
        eprintln!(
            "\n{bar}\nSKIPPED: no DKIM verifier. dkimpy could not be imported by python3 or \
             /usr/bin/python3; `bash scripts/setup.sh --with-test-tools` installs Debian's \
             python3-dkim and python3-nacl.\n{bar}\n",
            bar = "!".repeat(78)
        );
    }
    found
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("the openssl command (scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A new private key in `dir/name` (PEM, as `openssl genpkey` writes it: PKCS#8) and the TXT
/// record that publishes its public key.
fn key_pair(dir: &Path, name: &str, ed25519: bool) -> (PathBuf, String) {
    use base64::Engine as _;
    let path = dir.join(name);
    let path_s = path.to_str().unwrap();
    if ed25519 {
        openssl(&["genpkey", "-algorithm", "ed25519", "-out", path_s]);
    } else {
        openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            path_s,
        ]);
    }
    let spki = openssl(&["pkey", "-in", path_s, "-pubout", "-outform", "DER"]);
    let b64 = base64::engine::general_purpose::STANDARD;
    let record = if ed25519 {
        // RFC 8463: the bare 32-byte public key, the end of its SubjectPublicKeyInfo.
        format!(
            "v=DKIM1; k=ed25519; p={}",
            b64.encode(&spki[spki.len() - 32..])
        )
    } else {
        format!("v=DKIM1; k=rsa; p={}", b64.encode(&spki))
    };
    (path, record)
}

/// The verdict of the verifier on each message, in order: true for a pass.
fn verify(python: &str, records: &[(&str, &str)], messages: &[Vec<u8>]) -> Vec<bool> {
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<PathBuf> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let p = dir.path().join(format!("{i}.eml"));
            std::fs::write(&p, m).unwrap();
            p
        })
        .collect();
    let records: serde_json::Map<String, serde_json::Value> = records
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    let out = Command::new(python)
        .arg("-c")
        .arg(VERIFIER)
        .arg(serde_json::Value::Object(records).to_string())
        .args(&paths)
        .output()
        .expect("the verifier runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the verifier failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verdicts: Vec<bool> = stdout.lines().map(|l| l.starts_with("pass ")).collect();
    assert_eq!(verdicts.len(), messages.len(), "{stdout}");
    if verdicts.iter().any(|v| !v) {
        // The verifier's reasons, for whoever reads a failure.
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    }
    verdicts
}

/// `raw` with the last byte of `needle`, found in the header block, changed (a letter's case
/// flipped, or a digit moved on by one). The last, so that a needle can start with a header's
/// name, whose case a relaxed signature rightly ignores.
fn altered_header(raw: &[u8], needle: &str) -> Vec<u8> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header block");
    let at = raw[..end]
        .windows(needle.len())
        .position(|w| w == needle.as_bytes())
        .unwrap_or_else(|| panic!("{needle:?} in the headers"))
        + needle.len()
        - 1;
    let mut out = raw.to_vec();
    let b = &mut out[at];
    *b = match *b {
        b'0'..=b'8' => *b + 1,
        b'9' => b'0',
        c if c.is_ascii_alphabetic() => c ^ 0x20,
        c => panic!("{:?} cannot be altered simply", c as char),
    };
    out
}

/// `raw` with the first byte of `needle` in the body changed.
fn altered_body(raw: &[u8], needle: &str) -> Vec<u8> {
    let start = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header block");
    let at = start
        + raw[start..]
            .windows(needle.len())
            .position(|w| w == needle.as_bytes())
            .unwrap_or_else(|| panic!("{needle:?} in the body"));
    let mut out = raw.to_vec();
    out[at] ^= 0x20;
    out
}

/// The tags of a message's DKIM-Signature, e.g. "d" -> "example.org".
fn dkim_tags(mail: &Mail) -> std::collections::HashMap<String, String> {
    let value = mail.header("DKIM-Signature").expect("a DKIM-Signature");
    value
        .split(';')
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.split_whitespace().collect()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enquiry_mail_is_dkim_signed_the_verifier_accepts_it_and_refuses_any_altered_byte() {
    let Some(python) = verifier_python() else {
        return;
    };
    let keys = tempfile::tempdir().unwrap();
    let (key, record) = key_pair(keys.path(), "rpec.pem", false);
    // Configured through the environment only: the key file as a secret (NAME_FILE), the selector.
    let app = spawn_app_with(Options {
        env: vec![
            (
                "RPEC_DKIM_PRIVATE_KEY_FILE".into(),
                key.display().to_string(),
            ),
            ("RPEC_DKIM_SELECTOR".into(), "rpec2026".into()),
        ],
        ..Options::default()
    })
    .await;
    app.publish(&contact_event(json!({
        "region": "north-west",
        "topic": "complex-case",
        "name": "Zoë Ångström",
        "message": "A line\n.\nthat starts with a dot, and ünïcode."
    })))
    .await;
    let mails = app.mails(2).await;
    let enquiry = mails
        .iter()
        .find(|m| m.envelope_to == ["rpec.north-west@example.org"])
        .expect("the enquiry to the coordinators");
    let ack = mails
        .iter()
        .find(|m| m.envelope_to == ["s.okafor@school.example.org"])
        .expect("the acknowledgement");

    let tags = dkim_tags(enquiry);
    assert_eq!(tags["d"], "example.org", "the From address's domain");
    assert_eq!(tags["s"], "rpec2026");
    assert_eq!(tags["a"], "rsa-sha256");
    let signed: Vec<&str> = tags["h"].split(':').collect();
    for h in [
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "reply-to",
        "mime-version",
        "content-type",
        "importance",
        "x-priority",
        "list-unsubscribe",
        "list-unsubscribe-post",
    ] {
        assert!(signed.contains(&h), "{h} in h={}", tags["h"]);
    }

    let records = [("rpec2026._domainkey.example.org", record.as_str())];
    let raw = enquiry.raw.clone();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("the enquiry as received", raw.clone()),
        ("the acknowledgement as received", ack.raw.clone()),
        ("Subject altered", altered_header(&raw, "URGENT")),
        (
            "Reply-To altered",
            altered_header(&raw, "Reply-To: s.okafor"),
        ),
        ("From altered", altered_header(&raw, "rpec.notifications")),
        ("To altered", altered_header(&raw, "rpec.north-west")),
        (
            "Content-Type altered",
            altered_header(&raw, "Content-Type: multipart/alternative"),
        ),
        ("X-Priority altered", altered_header(&raw, "X-Priority: 1")),
        ("Date altered", {
            let date = enquiry.header("Date").expect("a Date");
            altered_header(&raw, &format!("Date: {date}"))
        }),
        ("the body altered", altered_body(&raw, "Riverside")),
    ];
    let messages: Vec<Vec<u8>> = cases.iter().map(|(_, m)| m.clone()).collect();
    let verdicts = verify(python, &records, &messages);
    let expected: Vec<bool> = cases
        .iter()
        .map(|(what, _)| what.ends_with("received"))
        .collect();
    let named = |v: &[bool]| {
        cases
            .iter()
            .zip(v)
            .map(|((what, _), ok)| format!("{what}: {}", if *ok { "pass" } else { "fail" }))
            .collect::<Vec<_>>()
    };
    assert_eq!(named(&verdicts), named(&expected));

    // A record with another key (the DNS naming someone else's) fails the genuine message.
    let (_, other) = key_pair(keys.path(), "other.pem", false);
    assert_eq!(
        verify(
            python,
            &[("rpec2026._domainkey.example.org", other.as_str())],
            &[raw]
        ),
        [false]
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_mail_is_signed_for_its_own_domain_with_its_own_selector_and_ed25519_key() {
    let Some(python) = verifier_python() else {
        return;
    };
    let keys = tempfile::tempdir().unwrap();
    let (shared_key, shared_record) = key_pair(keys.path(), "shared.pem", false);
    let (bulk_key, bulk_record) = key_pair(keys.path(), "bulk.pem", true);
    // Bulk mail from a domain of its own; a key file and selector shared by default, and the
    // bulk stream's own in [mail.dkim.bulk].
    let profile = format!(
        "{}\n[mail.dkim]\nselector = \"tx1\"\nprivate_key_file = \"{}\"\n\n\
         [mail.dkim.bulk]\nselector = \"news1\"\nprivate_key_file = \"{}\"\n",
        FAST_TIMINGS.replacen(
            "[mail]\n",
            "[mail]\nbulk_from = \"RPEC newsletters <rpec@news.example.org>\"\n",
            1
        ),
        shared_key.display(),
        bulk_key.display()
    );
    let app = spawn_app_with(Options {
        profile_toml: profile,
        ..Options::default()
    })
    .await;
    add_confirmed(
        &app.pool,
        "london",
        "reader@school.example.org",
        Some("Ada"),
    )
    .await;
    app.publish(&newsletter("nl-dkim", "london", simple_sections()))
        .await;
    app.publish(&contact_event(json!({"region": "london"})))
        .await;
    let mails = app.mails(3).await;
    let news = mails
        .iter()
        .find(|m| m.subject().starts_with("Prevent update nl-dkim"))
        .expect("the newsletter");
    let ack = mails
        .iter()
        .find(|m| m.envelope_to == ["s.okafor@school.example.org"])
        .expect("the acknowledgement");

    let tags = dkim_tags(news);
    assert_eq!(
        (tags["d"].as_str(), tags["s"].as_str(), tags["a"].as_str()),
        ("news.example.org", "news1", "ed25519-sha256")
    );
    let tags = dkim_tags(ack);
    assert_eq!(
        (tags["d"].as_str(), tags["s"].as_str(), tags["a"].as_str()),
        ("example.org", "tx1", "rsa-sha256")
    );

    let records = [
        ("tx1._domainkey.example.org", shared_record.as_str()),
        ("news1._domainkey.news.example.org", bulk_record.as_str()),
    ];
    let verdicts = verify(
        python,
        &records,
        &[
            news.raw.clone(),
            ack.raw.clone(),
            altered_header(&news.raw, "/unsubscribe?token"),
            altered_header(&news.raw, "List-Unsubscribe=One-Click"),
            altered_body(&news.raw, "Regional trends"),
        ],
    );
    assert_eq!(verdicts, [true, true, false, false, false]);
    // Each stream's record verifies its own mail only.
    let swapped = [
        ("tx1._domainkey.example.org", bulk_record.as_str()),
        ("news1._domainkey.news.example.org", shared_record.as_str()),
    ];
    assert_eq!(
        verify(python, &swapped, &[news.raw.clone(), ack.raw.clone()]),
        [false, false]
    );
    app.stop().await;
}

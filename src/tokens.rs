//! Signed links: the tokens in `/subscriptions/confirm?token=`, `/unsubscribe?token=` and
//! `/enquiries/claim?token=` (where the id is that of a copy of an enquiry, not a subscription).
//!
//! A token is the URL-safe base64 (no padding) of
//!
//! ```text
//! version (1 byte) | purpose (1 byte) | subscription id (8 bytes, big-endian)
//!   | expiry (8 bytes, Unix seconds, big-endian) | HMAC-SHA256 of the 18 bytes before it
//! ```
//!
//! keyed with `RPEC_TOKEN_SECRET`. Nothing is stored: the signature is the proof, so a link works
//! on any worker and after a restart. The purpose is signed too, so a confirmation link cannot
//! be turned into an unsubscribe link (or the other way round). The signature is checked in
//! constant time before anything else in the token is believed, so a forged token learns nothing
//! (not even whether it would have expired).

use crate::config::Settings;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const VERSION: u8 = 1;
const PAYLOAD_LEN: usize = 18;
const MAC_LEN: usize = 32;
/// Longer input is refused before decoding: a real token is 67 characters.
const MAX_TOKEN_CHARS: usize = 128;

/// How long a confirmation link works (the contract: 7 days).
pub const CONFIRM_VALIDITY: Duration = Duration::days(7);
/// How long an unsubscribe link works. Long, because people unsubscribe from old newsletters
/// too; it is renewed with every newsletter sent.
pub const UNSUBSCRIBE_VALIDITY: Duration = Duration::days(400);
/// How long a claim link in a coordinator's copy of an enquiry works: long past any deadline,
/// well within the enquiry's retention.
pub const CLAIM_VALIDITY: Duration = Duration::days(30);

/// What a link is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Confirm,
    Unsubscribe,
    /// "I will answer this": claiming an enquiry, from one coordinator's copy.
    Claim,
}

impl Purpose {
    fn byte(self) -> u8 {
        match self {
            Purpose::Confirm => 1,
            Purpose::Unsubscribe => 2,
            Purpose::Claim => 3,
        }
    }

    /// The path of the page that takes this token.
    pub fn path(self) -> &'static str {
        match self {
            Purpose::Confirm => "/subscriptions/confirm",
            Purpose::Unsubscribe => "/unsubscribe",
            Purpose::Claim => "/enquiries/claim",
        }
    }

    fn validity(self) -> Duration {
        match self {
            Purpose::Confirm => CONFIRM_VALIDITY,
            Purpose::Unsubscribe => UNSUBSCRIBE_VALIDITY,
            Purpose::Claim => CLAIM_VALIDITY,
        }
    }
}

/// What signed links need, and nothing more of the settings: where the pages are and the keys.
/// The handlers (confirmation links), the sender (unsubscribe and claim links) and the pages
/// (checking tokens) each hold one.
#[derive(Debug, Clone)]
pub struct Links {
    /// `[http] public_url`, without a trailing slash: links point at the pages there.
    public_url: String,
    /// The first signs, every one verifies (so keys can be rotated).
    keys: Vec<SecretString>,
}

impl Links {
    pub fn from_settings(settings: &Settings) -> Links {
        Links {
            public_url: settings.public_url.clone(),
            keys: settings.token_keys.clone(),
        }
    }

    /// The key that signs. Erasure keys its hashes of erased addresses with it too.
    pub fn signing_key(&self) -> &[u8] {
        // Settings never hold an empty list (they refuse to load without one).
        self.keys
            .first()
            .map_or(&[][..], |k| k.expose_secret().as_bytes())
    }

    /// The link to put in an email: `{public url}/subscriptions/confirm?token=...`,
    /// `{public url}/unsubscribe?token=...` or `{public url}/enquiries/claim?token=...`, valid
    /// from `now` for the purpose's validity.
    pub fn link(&self, purpose: Purpose, subscription_id: i64, now: DateTime<Utc>) -> String {
        let token = sign(
            self.signing_key(),
            purpose,
            subscription_id,
            now + purpose.validity(),
        );
        format!("{}{}?token={token}", self.public_url, purpose.path())
    }

    /// Checks a token with each configured key in turn (see [`verify`]): a link signed with a
    /// key that has since been replaced as the signing key still works while that key is
    /// listed.
    pub fn check(&self, token: &str, purpose: Purpose) -> Result<i64, TokenError> {
        let mut result = Err(TokenError::BadSignature);
        for key in &self.keys {
            result = verify(key.expose_secret().as_bytes(), token, purpose, Utc::now());
            if result != Err(TokenError::BadSignature) {
                break;
            }
        }
        result
    }
}

/// Why a token was refused. Every variant gets the same 400 page; only an expired (but genuine)
/// link is worded differently, so that the reader knows to ask for a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Not base64, or the wrong length.
    Malformed,
    /// The signature does not match: forged or altered.
    BadSignature,
    /// Genuine, but made for another purpose or by another version of this format.
    WrongPurpose,
    /// Genuine, but past its expiry.
    Expired,
}

/// Signs a link for `purpose` on subscription `subscription_id`, valid until `expires_at`.
pub fn sign(
    secret: &[u8],
    purpose: Purpose,
    subscription_id: i64,
    expires_at: DateTime<Utc>,
) -> String {
    let mut bytes = Vec::with_capacity(PAYLOAD_LEN + MAC_LEN);
    bytes.push(VERSION);
    bytes.push(purpose.byte());
    bytes.extend_from_slice(&subscription_id.to_be_bytes());
    bytes.extend_from_slice(&expires_at.timestamp().to_be_bytes());
    let mac = mac(secret).chain_update(&bytes).finalize().into_bytes();
    bytes.extend_from_slice(&mac);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Checks a token and returns the subscription id it was made for.
pub fn verify(
    secret: &[u8],
    token: &str,
    purpose: Purpose,
    now: DateTime<Utc>,
) -> Result<i64, TokenError> {
    let token = token.trim();
    if token.len() > MAX_TOKEN_CHARS {
        return Err(TokenError::Malformed);
    }
    // The decoder refuses non-zero trailing bits, so every character of a token matters: a
    // changed last character cannot decode to the same bytes.
    let bytes = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| TokenError::Malformed)?;
    if bytes.len() != PAYLOAD_LEN + MAC_LEN {
        return Err(TokenError::Malformed);
    }
    let (payload, signature) = bytes.split_at(PAYLOAD_LEN);
    mac(secret)
        .chain_update(payload)
        .verify_slice(signature)
        .map_err(|_| TokenError::BadSignature)?;
    if payload[0] != VERSION || payload[1] != purpose.byte() {
        return Err(TokenError::WrongPurpose);
    }
    let id = i64::from_be_bytes(
        payload[2..10]
            .try_into()
            .map_err(|_| TokenError::Malformed)?,
    );
    let expiry = i64::from_be_bytes(
        payload[10..18]
            .try_into()
            .map_err(|_| TokenError::Malformed)?,
    );
    if now.timestamp() >= expiry {
        return Err(TokenError::Expired);
    }
    Ok(id)
}

fn mac(secret: &[u8]) -> HmacSha256 {
    // HMAC accepts a key of any length; this cannot fail.
    <HmacSha256 as Mac>::new_from_slice(secret).expect("HMAC takes keys of any length")
}

/// The recipient part of a return path whose email had several recipients: the bounce itself
/// says which of them it is about (its `Final-Recipient`), among that email's only.
pub const EVERY_RECIPIENT: u8 = u8::MAX;

/// What a return path names: an email of the outbox and which of its recipients (an index into
/// its `recipients`, or [`EVERY_RECIPIENT`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Returned {
    pub outbox_id: i64,
    pub recipient: u8,
}

/// VERP return paths: each email's envelope sender is `{local}+{token}@{domain}`, from
/// `[mail] bounce_address`, so that a bounce sent back to it says which email and which
/// recipient it is about, whatever the bounce's content looks like.
///
/// The token is 30 lower-case hex digits (case does not matter: some servers change the case
/// of addresses):
///
/// ```text
/// outbox id (6 bytes, big-endian) | recipient (1 byte) | HMAC-SHA256 of them and a purpose
///   byte, first 8 bytes
/// ```
///
/// Signed with the link keys (the first signs, every one verifies), so a forged or altered
/// bounce names nobody. It never expires: a bounce can come days later, and the outbox row it
/// names goes with retention anyway.
#[derive(Debug, Clone)]
pub struct ReturnPaths {
    local: String,
    domain: String,
    keys: Vec<SecretString>,
}

const RETURN_PATH_PURPOSE: u8 = 0x52;
const RETURN_PATH_ID_BYTES: usize = 6;
const RETURN_PATH_MAC_BYTES: usize = 8;
const RETURN_PATH_TOKEN_CHARS: usize = 2 * (RETURN_PATH_ID_BYTES + 1 + RETURN_PATH_MAC_BYTES);

impl ReturnPaths {
    /// From `[mail] bounce_address` (already checked: `local@domain`, no `+` in `local`);
    /// none when it is not set, and the envelope sender is the From address.
    pub fn from_settings(settings: &Settings) -> Option<ReturnPaths> {
        let (local, domain) = settings.mail.bounce_address.as_deref()?.rsplit_once('@')?;
        Some(ReturnPaths::new(local, domain, settings.token_keys.clone()))
    }

    pub fn new(local: &str, domain: &str, keys: Vec<SecretString>) -> ReturnPaths {
        ReturnPaths {
            local: local.to_ascii_lowercase(),
            domain: domain.to_ascii_lowercase(),
            keys,
        }
    }

    /// The bounce domain: the listener's name, and what it takes mail for.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The envelope sender for `recipient` of outbox row `outbox_id`.
    pub fn address(&self, outbox_id: i64, recipient: u8) -> String {
        let key = self
            .keys
            .first()
            .map_or(&[][..], |k| k.expose_secret().as_bytes());
        let payload = return_path_payload(outbox_id, recipient);
        let mac = return_path_mac(key, &payload);
        let mut token = String::with_capacity(RETURN_PATH_TOKEN_CHARS);
        for b in payload.iter().chain(&mac) {
            token.push_str(&format!("{b:02x}"));
        }
        format!("{}+{token}@{}", self.local, self.domain)
    }

    /// What a return path names, if it is one of ours with a genuine signature (any case, with
    /// or without angle brackets).
    pub fn check(&self, address: &str) -> Option<Returned> {
        let address = address.trim().trim_start_matches('<').trim_end_matches('>');
        let (local, domain) = address.rsplit_once('@')?;
        if !domain.eq_ignore_ascii_case(&self.domain) {
            return None;
        }
        let (base, token) = local.split_once('+')?;
        if !base.eq_ignore_ascii_case(&self.local) || token.len() != RETURN_PATH_TOKEN_CHARS {
            return None;
        }
        let bytes: Vec<u8> = (0..token.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok())
            .collect::<Option<_>>()?;
        let (payload, signature) = bytes.split_at(RETURN_PATH_ID_BYTES + 1);
        // Checked in constant time (hmac's own truncated check): the comparison says nothing
        // about how close a forgery came.
        let genuine = self.keys.iter().any(|key| {
            return_path_hmac(key.expose_secret().as_bytes(), payload)
                .verify_truncated_left(signature)
                .is_ok()
        });
        if !genuine {
            return None;
        }
        let mut id = [0u8; 8];
        id[8 - RETURN_PATH_ID_BYTES..].copy_from_slice(&payload[..RETURN_PATH_ID_BYTES]);
        Some(Returned {
            outbox_id: i64::from_be_bytes(id),
            recipient: payload[RETURN_PATH_ID_BYTES],
        })
    }
}

fn return_path_payload(outbox_id: i64, recipient: u8) -> [u8; RETURN_PATH_ID_BYTES + 1] {
    let mut payload = [0u8; RETURN_PATH_ID_BYTES + 1];
    payload[..RETURN_PATH_ID_BYTES]
        .copy_from_slice(&outbox_id.to_be_bytes()[8 - RETURN_PATH_ID_BYTES..]);
    payload[RETURN_PATH_ID_BYTES] = recipient;
    payload
}

fn return_path_hmac(key: &[u8], payload: &[u8]) -> HmacSha256 {
    mac(key)
        .chain_update([RETURN_PATH_PURPOSE])
        .chain_update(payload)
}

fn return_path_mac(key: &[u8], payload: &[u8]) -> [u8; RETURN_PATH_MAC_BYTES] {
    let full = return_path_hmac(key, payload).finalize().into_bytes();
    let mut out = [0u8; RETURN_PATH_MAC_BYTES];
    out.copy_from_slice(&full[..RETURN_PATH_MAC_BYTES]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"a test secret that is at least 32 bytes long";

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2024-10-05T14:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    /// The contract's 7 days, written out rather than taken from the code's constant.
    const SEVEN_DAYS: Duration = Duration::hours(7 * 24);
    /// The README's 400 days for unsubscribe links.
    const FOUR_HUNDRED_DAYS: Duration = Duration::hours(400 * 24);

    fn return_paths() -> ReturnPaths {
        ReturnPaths::new(
            "bounces",
            "bounce.example.org",
            vec![SecretString::from(
                String::from_utf8(SECRET.to_vec()).unwrap(),
            )],
        )
    }

    #[test]
    fn a_return_path_names_its_email_and_recipient_in_any_case() {
        let paths = return_paths();
        let address = paths.address(123_456_789, 0);
        assert!(address.starts_with("bounces+") && address.ends_with("@bounce.example.org"));
        // Short enough for any server: a local part is at most 64 octets.
        assert!(address.split('@').next().unwrap().len() <= 64, "{address}");
        let named = Returned {
            outbox_id: 123_456_789,
            recipient: 0,
        };
        assert_eq!(paths.check(&address), Some(named));
        assert_eq!(paths.check(&address.to_uppercase()), Some(named));
        assert_eq!(paths.check(&format!("<{address}>")), Some(named));
        let several = paths.address(7, EVERY_RECIPIENT);
        assert_eq!(
            paths.check(&several),
            Some(Returned {
                outbox_id: 7,
                recipient: EVERY_RECIPIENT
            })
        );
        assert_ne!(several, paths.address(7, 0));
    }

    #[test]
    fn a_forged_or_altered_return_path_names_nobody() {
        let paths = return_paths();
        let address = paths.address(42, 0);
        let (local, domain) = address.split_once('@').unwrap();
        // Every single hex digit changed.
        for i in "bounces+".len()..local.len() {
            let mut altered = local.as_bytes().to_vec();
            altered[i] = if altered[i] == b'0' { b'1' } else { b'0' };
            let altered = format!("{}@{domain}", String::from_utf8(altered).unwrap());
            assert_eq!(paths.check(&altered), None, "{altered}");
        }
        // Another key, another domain, another local part, junk.
        let other = ReturnPaths::new(
            "bounces",
            "bounce.example.org",
            vec![SecretString::from(
                "another secret of at least 32 bytes!!".to_string(),
            )],
        );
        assert_eq!(other.check(&address), None);
        assert_eq!(
            paths.check(&address.replace("bounce.example.org", "example.net")),
            None
        );
        assert_eq!(paths.check(&address.replace("bounces+", "other+")), None);
        for junk in [
            "",
            "bounces@bounce.example.org",
            "bounces+@bounce.example.org",
            "bounces+zz@bounce.example.org",
            "@",
            "bounces+ééééééééééééééééééééééééééééé@bounce.example.org",
        ] {
            assert_eq!(paths.check(junk), None, "{junk}");
        }
        // A key rotated out of signing still verifies.
        let rotated = ReturnPaths::new(
            "bounces",
            "bounce.example.org",
            vec![
                SecretString::from("a new signing secret of at least 32 bytes".to_string()),
                SecretString::from(String::from_utf8(SECRET.to_vec()).unwrap()),
            ],
        );
        assert_eq!(rotated.check(&address).map(|r| r.outbox_id), Some(42));
    }

    #[test]
    fn a_token_round_trips_until_it_expires() {
        let t = sign(SECRET, Purpose::Confirm, 42, now() + SEVEN_DAYS);
        assert_eq!(t.len(), 67);
        assert!(t
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(verify(SECRET, &t, Purpose::Confirm, now()), Ok(42));
        let almost = now() + SEVEN_DAYS - Duration::seconds(1);
        assert_eq!(verify(SECRET, &t, Purpose::Confirm, almost), Ok(42));
        assert_eq!(
            verify(SECRET, &t, Purpose::Confirm, now() + SEVEN_DAYS),
            Err(TokenError::Expired)
        );
    }

    /// The links put in emails: a confirmation link works for 7 × 24 hours from when it was
    /// made and no longer; an unsubscribe link for 400 × 24 hours.
    #[test]
    fn links_last_seven_days_to_confirm_and_four_hundred_to_unsubscribe() {
        let secret = "a token secret for this test, 32 bytes or more";
        let env: std::collections::HashMap<String, String> = [
            (
                "RPEC_CONFIG_DIR",
                concat!(env!("CARGO_MANIFEST_DIR"), "/config"),
            ),
            ("RPEC_TOKEN_SECRET", secret),
            ("RPEC_PUBLIC_URL", "https://rpec.example.org"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let links = Links::from_settings(&Settings::load_from(&env).expect("settings"));
        for (purpose, validity) in [
            (Purpose::Confirm, SEVEN_DAYS),
            (Purpose::Unsubscribe, FOUR_HUNDRED_DAYS),
            (Purpose::Claim, Duration::hours(30 * 24)),
        ] {
            let url = links.link(purpose, 9, now());
            let prefix = format!("https://rpec.example.org{}?token=", purpose.path());
            let token = url.strip_prefix(&prefix).expect("a link to the page");
            let at = |t| verify(secret.as_bytes(), token, purpose, t);
            assert_eq!(
                at(now() + validity - Duration::seconds(1)),
                Ok(9),
                "{purpose:?}"
            );
            assert_eq!(
                at(now() + validity),
                Err(TokenError::Expired),
                "{purpose:?}"
            );
        }
    }

    #[test]
    fn every_single_character_change_is_refused() {
        let t = sign(SECRET, Purpose::Unsubscribe, 7, now() + FOUR_HUNDRED_DAYS);
        let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        for (i, original) in t.char_indices() {
            for replacement in alphabet.chars().filter(|c| *c != original) {
                let mut altered = t.clone();
                altered.replace_range(i..i + 1, &replacement.to_string());
                assert!(
                    verify(SECRET, &altered, Purpose::Unsubscribe, now()).is_err(),
                    "position {i}: {original} -> {replacement} accepted"
                );
            }
        }
    }

    #[test]
    fn another_key_purpose_or_junk_is_refused() {
        let t = sign(SECRET, Purpose::Confirm, 1, now() + SEVEN_DAYS);
        assert_eq!(
            verify(
                b"another secret, also long enough to use",
                &t,
                Purpose::Confirm,
                now()
            ),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            verify(SECRET, &t, Purpose::Unsubscribe, now()),
            Err(TokenError::WrongPurpose)
        );
        for junk in ["", "abc", "not a token!", &"A".repeat(500), &t[..66]] {
            assert!(
                verify(SECRET, junk, Purpose::Confirm, now()).is_err(),
                "{junk}"
            );
        }
        assert_eq!(
            verify(SECRET, &format!("{t}AAAA"), Purpose::Confirm, now()),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn an_expired_token_is_refused_only_once_its_signature_is_good() {
        let expired = sign(SECRET, Purpose::Confirm, 3, now() - Duration::seconds(1));
        assert_eq!(
            verify(SECRET, &expired, Purpose::Confirm, now()),
            Err(TokenError::Expired)
        );
        assert_eq!(
            verify(
                b"wrong key, long enough to be a key!!",
                &expired,
                Purpose::Confirm,
                now()
            ),
            Err(TokenError::BadSignature)
        );
    }

    /// Keys rotate without breaking links: with "new" and "old" configured (one per line), a link signed with the old
    /// key still works, new links are signed with the new key, and a key no longer listed fails.
    #[test]
    fn a_rotated_key_still_verifies_the_links_it_signed() {
        let (new, old) = ("n".repeat(32), "o".repeat(32));
        let links = |keys: &str| {
            let env: std::collections::HashMap<String, String> = [
                ("DATABASE_URL", "postgres://x@127.0.0.1/db"),
                ("RPEC_TOKEN_SECRET", keys),
                (
                    "RPEC_CONFIG_DIR",
                    concat!(env!("CARGO_MANIFEST_DIR"), "/config"),
                ),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
            Links::from_settings(&Settings::load_from(&env).unwrap())
        };
        let rotated = links(&format!("{new}\n{old}"));
        let by_old = sign(
            old.as_bytes(),
            Purpose::Unsubscribe,
            9,
            Utc::now() + Duration::days(1),
        );
        assert_eq!(rotated.check(&by_old, Purpose::Unsubscribe), Ok(9));
        let fresh = rotated.link(Purpose::Unsubscribe, 9, Utc::now());
        let token = fresh.rsplit_once("token=").unwrap().1;
        assert_eq!(links(&new).check(token, Purpose::Unsubscribe), Ok(9));
        assert_eq!(
            links(&new).check(&by_old, Purpose::Unsubscribe),
            Err(TokenError::BadSignature)
        );
    }

    /// The pages the links lead to are part of the contract (and of every email already sent).
    #[test]
    fn links_lead_to_the_contracts_pages() {
        assert_eq!(Purpose::Confirm.path(), "/subscriptions/confirm");
        assert_eq!(Purpose::Unsubscribe.path(), "/unsubscribe");
        assert_eq!(Purpose::Claim.path(), "/enquiries/claim");
    }

    /// A claim link is not a confirmation or unsubscribe link for the same number, nor the
    /// other way round.
    #[test]
    fn a_claim_link_works_for_claiming_only() {
        let t = sign(SECRET, Purpose::Claim, 5, now() + Duration::days(1));
        assert_eq!(verify(SECRET, &t, Purpose::Claim, now()), Ok(5));
        for other in [Purpose::Confirm, Purpose::Unsubscribe] {
            assert_eq!(
                verify(SECRET, &t, other, now()),
                Err(TokenError::WrongPurpose)
            );
            let u = sign(SECRET, other, 5, now() + Duration::days(1));
            assert_eq!(
                verify(SECRET, &u, Purpose::Claim, now()),
                Err(TokenError::WrongPurpose)
            );
        }
    }

    /// A real token is 67 characters; anything past 128 is refused before decoding, and one of
    /// exactly 128 is decoded (and refused for its length, not its size).
    #[test]
    fn long_input_is_refused_as_malformed_at_any_length() {
        for n in [68, 127, 128, 129, 100_000] {
            let long = "A".repeat(n);
            assert_eq!(
                verify(SECRET, &long, Purpose::Confirm, now()),
                Err(TokenError::Malformed),
                "{n}"
            );
        }
    }
}

//! Settings, layered: `rpec.toml`, then `<profile>.toml` when present, then environment
//! variables. Secrets (database URL, token key, relay credentials) are held as `SecretString`
//! and never printed.

use super::Problem;
use crate::mail::Sender;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Time allowed, on top of the sends, to record the last outcome of a claimed batch.
pub const RECORDING_MARGIN_SECS: u64 = 2;

/// Used for signed links in the dev profile only, with a warning.
const DEV_TOKEN_SECRET: &str = "rpec-notify-dev-only-token-secret-do-not-use-in-production";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Dev,
    Production,
}

/// Exponential back-off: `initial` doubling to `max`, at most `max_attempts` attempts.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial: Duration,
    pub max: Duration,
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1`, after `attempt` failures (1-based), without jitter.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(20));
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The same with up to 25% random jitter either way, so that many failures spread out.
    pub fn backoff_with_jitter(&self, attempt: u32) -> Duration {
        let base = self.backoff(attempt).as_millis() as f64;
        let jitter = (fastrand::f64() - 0.5) * 0.5;
        Duration::from_millis((base * (1.0 + jitter)).max(1.0) as u64)
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub profile: Profile,
    pub config_dir: PathBuf,
    pub templates_dir: PathBuf,
    pub database_url: SecretString,
    pub db_max_connections: u32,
    pub db_acquire_timeout: Duration,
    pub db_statement_timeout: Duration,
    pub amqp_url: SecretString,
    pub exchange: String,
    pub queue: String,
    pub prefetch: u16,
    pub max_body_bytes: usize,
    /// Retries of messages that failed for a passing reason.
    pub consume_retry: RetryPolicy,
    /// How long an event that needs a session not yet known (events can arrive out of order)
    /// keeps being retried before it is dead-lettered as unknown_session.
    pub unknown_session_wait: Duration,
    /// The broker's last guard against a message that crashes every worker that takes it: after
    /// this many returns to the queue (quorum queues count them), the broker dead-letters it.
    pub delivery_limit: u32,
    /// Dead letters hold whole events (enquiries included): each is kept this long at most...
    pub dead_letter_ttl: Duration,
    /// ...and the dead-letter queue holds at most this many (the oldest go first).
    pub dead_letter_max_messages: u32,
    /// How often the scheduler looks for due reminders, briefings and digests.
    pub schedule_poll_interval: Duration,
    /// `[mail]`: the relay and the sender.
    pub mail: MailSettings,
    /// The public pages (confirm, unsubscribe): the address the internet reaches.
    pub http_addr: SocketAddr,
    /// `/metrics`, `/readyz`, `/healthz`: for the monitoring, never exposed publicly.
    pub admin_addr: SocketAddr,
    pub http_limits: HttpLimits,
    pub public_url: String,
    /// Keys for signed links: the first signs, every one verifies (so keys can be rotated).
    pub token_keys: Vec<SecretString>,
    /// `[retention]`: how long each place keeps personal data, and how the sweep goes.
    pub retention: RetentionSettings,
    /// `[bounces]`: the bounce listener and what bounces do.
    pub bounces: BounceSettings,
    pub shutdown_grace: Duration,
}

/// `[mail]`: the relay, the From addresses and the sender pipeline. The sender is given this
/// section (and none of the rest); the relay client is built from its first fields.
#[derive(Debug, Clone)]
pub struct MailSettings {
    pub smtp_url: SecretString,
    /// A private certificate authority (PEM) to trust for the relay's TLS certificate.
    pub smtp_ca_file: Option<PathBuf>,
    pub transactional_from: Sender,
    pub bulk_from: Sender,
    pub send_timeout: Duration,
    pub smtp_pool_max_size: u32,
    pub send_concurrency: usize,
    pub send_batch_size: i64,
    pub send_lease: Duration,
    pub send_poll_interval: Duration,
    /// Retries of emails that failed for a passing reason.
    pub send_retry: RetryPolicy,
    /// `bounce_address` (lower-cased `local@domain`): every email's envelope sender is then a
    /// VERP address at it (`tokens::ReturnPaths`); none: the From address, as before.
    pub bounce_address: Option<String>,
}

impl MailSettings {
    /// The mail relay URL (it may hold credentials: never log it).
    pub fn smtp_url(&self) -> &str {
        self.smtp_url.expose_secret()
    }
}

/// `[bounces]`: receiving the bounces and complaints that come back after the relay took an
/// email (`bounce`), and what they do.
#[derive(Debug, Clone)]
pub struct BounceSettings {
    /// `RPEC_BOUNCE_SMTP_ADDR` / `bounces.smtp_addr`: where the bounce listener takes SMTP;
    /// none (the default): no listener (`bounces ingest` still works).
    pub smtp_addr: Option<SocketAddr>,
    /// Larger messages are refused (552): a bounce quotes at most the email it returns.
    pub max_message_bytes: usize,
    /// Connections served at once; more are turned away with 421.
    pub max_connections: usize,
    /// A connection silent this long is closed (421).
    pub command_timeout: Duration,
    /// Soft bounces (4.x.x) of one address within `soft_window_days` that suppress it for bulk
    /// mail.
    pub soft_limit: u32,
    pub soft_window_days: u32,
}

/// `[retention]`: the periods the retention sweep applies, in days, and how it goes about them.
/// The sweep is given this section (and none of the rest). The dead letters' limits, set in
/// `[retention]` too, are the broker's to apply: they stay beside the topology's settings.
#[derive(Debug, Clone, Copy)]
pub struct RetentionSettings {
    pub enquiry_days: u32,
    pub outbox_days: u32,
    pub registration_days: u32,
    /// Suppressions (lower-cased addresses) are kept this long, then bulk mail may be tried again.
    pub suppression_days: u32,
    /// The exactly-once record of handled events: never shorter than [`redelivery_window`].
    pub processed_event_days: u32,
    /// Reminders and briefings handed to the outbox or dropped.
    pub scheduled_email_days: u32,
    /// Who was given each newsletter, counted from when the newsletter arrived.
    pub newsletter_delivery_days: u32,
    /// The record of each digest firing.
    pub digest_run_days: u32,
    /// Bounces and complaints received, with the address and the remote server's reason.
    pub bounce_days: u32,
    /// Mail at the bounce address that could not be understood, kept for an operator.
    pub unparsed_bounce_days: u32,
    /// Rows each retention statement changes at most (each batch is its own transaction).
    pub batch_size: i64,
    pub sweep_interval: Duration,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    /// Read from the table before the profile file is chosen; declared so it is not "unknown".
    #[allow(dead_code)]
    profile: String,
    templates_dir: String,
    database: RawDatabase,
    amqp: RawAmqp,
    mail: RawMail,
    http: RawHttp,
    retention: RawRetention,
    schedule: RawSchedule,
    shutdown: RawShutdown,
    /// Added with bounces: a default, so that a file written before still loads.
    #[serde(default)]
    bounces: RawBounces,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
struct RawBounces {
    smtp_addr: String,
    max_message_bytes: usize,
    max_connections: usize,
    command_timeout_secs: u64,
    soft_limit: u32,
    soft_window_days: u32,
}

impl Default for RawBounces {
    fn default() -> Self {
        RawBounces {
            smtp_addr: String::new(),
            // At worst every connection holds a whole message: 16 × 2 MiB = 32 MiB.
            max_message_bytes: 2 * 1024 * 1024,
            max_connections: 16,
            command_timeout_secs: 60,
            soft_limit: 3,
            soft_window_days: 30,
        }
    }
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    poll_interval_ms: u64,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    max_connections: u32,
    acquire_timeout_secs: u64,
    statement_timeout_secs: u64,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawAmqp {
    url: String,
    exchange: String,
    queue: String,
    prefetch: u16,
    max_body_bytes: usize,
    unknown_session_wait_secs: u64,
    retry: RawRetryMs,
    /// Added after 0.1: a default, so that a file written for 0.1 still loads.
    #[serde(default = "default_delivery_limit")]
    delivery_limit: u32,
}

fn default_delivery_limit() -> u32 {
    20
}

fn default_dead_letter_days() -> u32 {
    30
}

fn default_dead_letter_max_messages() -> u32 {
    100_000
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawRetryMs {
    max_attempts: u32,
    initial_ms: u64,
    max_ms: u64,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawMail {
    smtp_url: String,
    tls_ca_file: String,
    transactional_from: String,
    bulk_from: String,
    send_timeout_secs: u64,
    pool_max_size: u32,
    concurrency: usize,
    batch_size: i64,
    lease_secs: u64,
    poll_interval_ms: u64,
    retry: RawRetrySecs,
    /// Added after 0.1: absent means no signing, so that a file written for 0.1 still loads.
    #[serde(default)]
    dkim: RawDkim,
    /// Added with bounces; empty: the envelope sender is the From address.
    #[serde(default)]
    bounce_address: String,
}

/// `[mail.dkim]`: signing for both From addresses; `[mail.dkim.bulk]` changes any of it for
/// the bulk one (a key and selector of its own, say). Empty strings mean "not set".
#[derive(Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawDkim {
    selector: String,
    domain: String,
    private_key_file: String,
    bulk: RawDkimBulk,
}

#[derive(Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawDkimBulk {
    selector: String,
    domain: String,
    private_key_file: String,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawRetrySecs {
    max_attempts: u32,
    initial_secs: f64,
    max_secs: f64,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    addr: String,
    public_url: String,
    #[serde(default = "default_admin_addr")]
    admin_addr: String,
    #[serde(default = "default_max_connections")]
    max_connections: usize,
    #[serde(default = "default_header_read_timeout_secs")]
    header_read_timeout_secs: u64,
    #[serde(default = "default_request_timeout_secs")]
    request_timeout_secs: u64,
    #[serde(default = "default_max_request_body_bytes")]
    max_body_bytes: usize,
}

fn default_admin_addr() -> String {
    "127.0.0.1:9090".into()
}

fn default_max_connections() -> usize {
    1024
}

fn default_header_read_timeout_secs() -> u64 {
    10
}

fn default_request_timeout_secs() -> u64 {
    15
}

fn default_max_request_body_bytes() -> usize {
    16 * 1024
}

/// How the HTTP listeners defend themselves (both use the same limits).
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Connections held open at once; more wait to be accepted.
    pub max_connections: usize,
    /// A client that has not sent its request head within this is disconnected (slowloris).
    pub header_read_timeout: Duration,
    /// A request not answered within this gets a 503 (a handler stuck on a dependency).
    pub request_timeout: Duration,
    /// Larger request bodies are refused with 413 (the pages' forms are a few bytes).
    pub max_body_bytes: usize,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    enquiry_days: u32,
    outbox_days: u32,
    registration_days: u32,
    sweep_interval_secs: u64,
    #[serde(default = "default_dead_letter_days")]
    dead_letter_days: u32,
    #[serde(default = "default_dead_letter_max_messages")]
    dead_letter_max_messages: u32,
    #[serde(default = "default_suppression_days")]
    suppression_days: u32,
    #[serde(default = "default_processed_event_days")]
    processed_event_days: u32,
    #[serde(default = "default_scheduled_email_days")]
    scheduled_email_days: u32,
    #[serde(default = "default_newsletter_delivery_days")]
    newsletter_delivery_days: u32,
    #[serde(default = "default_digest_run_days")]
    digest_run_days: u32,
    #[serde(default = "default_bounce_days")]
    bounce_days: u32,
    #[serde(default = "default_unparsed_bounce_days")]
    unparsed_bounce_days: u32,
    #[serde(default = "default_retention_batch_size")]
    batch_size: i64,
}

// Added with retention for everything personal: defaults, so that files written before still
// load (config/rpec.toml explains each).
fn default_suppression_days() -> u32 {
    365
}

fn default_processed_event_days() -> u32 {
    45
}

fn default_scheduled_email_days() -> u32 {
    30
}

fn default_newsletter_delivery_days() -> u32 {
    90
}

fn default_digest_run_days() -> u32 {
    90
}

fn default_bounce_days() -> u32 {
    90
}

fn default_unparsed_bounce_days() -> u32 {
    30
}

fn default_retention_batch_size() -> i64 {
    1000
}

/// The longest a copy of an event that was already handled can still come back to the worker:
/// the consumer's own retries (every back-off, at its most jittered), the wait for a session
/// not yet known, and the dead-letter queue's TTL, since an operator may replay a dead letter
/// (`dead-letters replay`) whose event another copy has since completed. The record of handled
/// events must outlast it, or that copy would have its effects a second time.
pub fn redelivery_window(
    retry: &RetryPolicy,
    unknown_session_wait: Duration,
    dead_letter_ttl: Duration,
) -> Duration {
    let retries: Duration = (1..retry.max_attempts)
        .map(|a| retry.backoff(a).mul_f64(1.25))
        .sum();
    retries + unknown_session_wait + dead_letter_ttl
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawShutdown {
    grace_secs: u64,
}

/// Why `mail.lease_secs` is too short, if it is. The sender starts an email only while its
/// claim's lease still has room for a whole send (`send_timeout_secs`) and for recording the
/// outcome; claimed emails that wait longer than that are given back unsent. So the lease must
/// be longer than one send plus the margin: if it ended before an outcome was recorded, another
/// worker (or this one) would claim the row again and send it twice.
fn lease_problem(mail: &RawMail) -> Option<String> {
    let send_timeout = mail.send_timeout_secs.max(1);
    let needed = send_timeout.saturating_add(RECORDING_MARGIN_SECS);
    (needed >= mail.lease_secs.max(1)).then(|| {
        format!(
            "{}s is too short for one send: send_timeout_secs {} + {}s to record the outcome \
             = {}s; raise lease_secs above {} (or lower send_timeout_secs)",
            mail.lease_secs, send_timeout, RECORDING_MARGIN_SECS, needed, needed
        )
    })
}

/// `mail.bounce_address`, checked: empty is none; otherwise one plain address whose local part
/// has no `+` (the return paths add `+token`), lower-cased.
fn bounce_address(
    raw: &str,
    at: &dyn Fn(&str) -> String,
    problems: &mut Vec<Problem>,
) -> Option<String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return None;
    }
    let address: Option<lettre::Address> = raw.parse().ok();
    match address {
        Some(a) if !a.user().contains('+') => Some(a.to_string().to_ascii_lowercase()),
        Some(_) => {
            problems.push(Problem::new(
                at("mail.bounce_address"),
                "its local part may not hold '+': the return paths are local+token@domain",
            ));
            None
        }
        None => {
            problems.push(Problem::new(
                at("mail.bounce_address"),
                format!("{raw:?} is not an email address (e.g. bounces@rpec-notify.example.org)"),
            ));
            None
        }
    }
}

/// The variables that hold secrets. Each can instead name a file that holds it (`NAME_FILE`), as
/// container platforms and systemd's credentials mount them.
pub const SECRET_VARIABLES: [&str; 6] = [
    "DATABASE_URL",
    "RPEC_AMQP_URL",
    "RPEC_SMTP_URL",
    "RPEC_SMTP_PASSWORD",
    "RPEC_TOKEN_SECRET",
    // The DKIM private key (PEM); RPEC_DKIM_PRIVATE_KEY_FILE names the file that holds it.
    "RPEC_DKIM_PRIVATE_KEY",
];

/// `env` with every `NAME_FILE` of [`SECRET_VARIABLES`] read into `NAME` (trailing white space
/// and line breaks removed), and the problems found on the way (never a file's content).
fn with_secret_files(env: &HashMap<String, String>) -> (HashMap<String, String>, Vec<Problem>) {
    let mut env = env.clone();
    let mut problems = Vec::new();
    for name in SECRET_VARIABLES {
        let file_var = format!("{name}_FILE");
        let Some(path) = env.get(&file_var).map(|p| p.trim().to_owned()) else {
            continue;
        };
        if path.is_empty() {
            continue;
        }
        if env.get(name).is_some_and(|v| !v.trim().is_empty()) {
            problems.push(Problem::new(
                &file_var,
                format!("set {name} or {file_var}, not both"),
            ));
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(secret) => {
                env.insert(name.to_owned(), secret.trim_end().to_owned());
            }
            Err(e) => problems.push(Problem::new(
                &file_var,
                format!("{path} cannot be read: {}", e.kind()),
            )),
        }
    }
    (env, problems)
}

/// The DKIM signers of the transactional and the bulk From address (`from_domains`), from
/// `[mail.dkim]` and the environment: a signer for each address that has a key. The key is read
/// here, so that `check` and `run` refuse one that cannot be read or used; no problem quotes it.
fn dkim_signers(
    raw: &RawDkim,
    var: &dyn Fn(&str) -> Option<String>,
    from_domains: (&str, &str),
    at: &dyn Fn(&str) -> String,
    problems: &mut Vec<Problem>,
) -> (
    Option<std::sync::Arc<crate::mail::DkimSigner>>,
    Option<std::sync::Arc<crate::mail::DkimSigner>>,
) {
    let set = |s: &str| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
    // A key file named in rpec.toml, read now; the place says where it was named.
    let read_key = |key: &str, path: &str, problems: &mut Vec<Problem>| {
        std::fs::read_to_string(path)
            .map_err(|e| {
                problems.push(Problem::new(
                    at(key),
                    format!("{path} cannot be read: {}", e.kind()),
                ))
            })
            .ok()
    };
    // RPEC_DKIM_PRIVATE_KEY holds the key itself, or was read from RPEC_DKIM_PRIVATE_KEY_FILE.
    let (shared_key, shared_key_place) = match var("RPEC_DKIM_PRIVATE_KEY") {
        Some(pem) => (Some(pem), "RPEC_DKIM_PRIVATE_KEY(_FILE)".to_string()),
        None => match set(&raw.private_key_file) {
            Some(path) => (
                read_key("mail.dkim.private_key_file", &path, problems),
                at("mail.dkim.private_key_file"),
            ),
            None => (None, String::new()),
        },
    };
    let selector = var("RPEC_DKIM_SELECTOR").or_else(|| set(&raw.selector));
    let domain = var("RPEC_DKIM_DOMAIN").or_else(|| set(&raw.domain));
    if shared_key.is_none() && shared_key_place.is_empty() && selector.is_some() {
        // Not an error (signing is off until a key is set), but most likely a key forgotten.
        tracing::warn!(
            "a DKIM selector is set but no private key (RPEC_DKIM_PRIVATE_KEY_FILE or \
             mail.dkim.private_key_file): mail is sent unsigned"
        );
    }
    let (bulk_key, bulk_key_place) = match set(&raw.bulk.private_key_file) {
        Some(path) => (
            read_key("mail.dkim.bulk.private_key_file", &path, problems),
            at("mail.dkim.bulk.private_key_file"),
        ),
        None => (shared_key.clone(), shared_key_place.clone()),
    };
    // Where each stream's selector and domain were set, for the problems (inherited: the shared
    // table's, where a fix belongs).
    let bulk_domain_table = if set(&raw.bulk.domain).is_some() {
        "mail.dkim.bulk"
    } else {
        "mail.dkim"
    };
    let streams = [
        (
            shared_key,
            shared_key_place,
            selector.clone(),
            domain.clone(),
            "mail.dkim",
            from_domains.0,
        ),
        (
            bulk_key,
            bulk_key_place,
            set(&raw.bulk.selector).or(selector),
            set(&raw.bulk.domain).or(domain),
            bulk_domain_table,
            from_domains.1,
        ),
    ];
    let mut signers = streams.into_iter().map(
        |(key, key_place, selector, domain, domain_table, from_domain)| {
            let pem = key?;
            let Some(selector) = selector else {
                problems.push(Problem::new(
                    format!("{} / RPEC_DKIM_SELECTOR", at("mail.dkim.selector")),
                    "a DKIM key is set, but no selector (the name its public key is published \
                     under, <selector>._domainkey.<domain>)",
                ));
                return None;
            };
            let domain = domain.unwrap_or_else(|| from_domain.to_owned());
            // DMARC passes on DKIM only when d= is the From address's domain or a parent of it.
            let (d, f) = (
                domain.to_ascii_lowercase(),
                from_domain.to_ascii_lowercase(),
            );
            if d != f && !f.ends_with(&format!(".{d}")) {
                problems.push(Problem::new(
                    format!(
                        "{} / RPEC_DKIM_DOMAIN",
                        at(&format!("{domain_table}.domain"))
                    ),
                    format!(
                        "{domain:?} is neither the From address's domain ({from_domain}) nor a \
                         parent of it: receivers would not count the signature for DMARC"
                    ),
                ));
                return None;
            }
            match crate::mail::DkimSigner::new(&selector, &domain, &pem) {
                Ok(signer) => Some(std::sync::Arc::new(signer)),
                Err(e) => {
                    problems.push(Problem::new(key_place, e));
                    None
                }
            }
        },
    );
    let transactional = signers.next().flatten();
    let bulk = signers.next().flatten();
    // A shared key or setting that is wrong is said once, not once per From address.
    problems.dedup();
    (transactional, bulk)
}

/// Whether `host` names this machine only (a loopback address or `localhost`).
fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The keys for signed links from `RPEC_TOKEN_SECRET`: one key, or several, one per line (the
/// first signs, every one verifies, so that a key can be replaced without breaking the links
/// already sent). Lines, because a key may hold any other character (spaces, commas).
fn token_keys(raw: &str, problems: &mut Vec<Problem>) -> Vec<SecretString> {
    let keys: Vec<&str> = raw
        .lines()
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .collect();
    for (i, key) in keys.iter().enumerate() {
        if key.len() < 32 {
            problems.push(Problem::new(
                "RPEC_TOKEN_SECRET",
                if keys.len() == 1 {
                    "must be at least 32 bytes".to_string()
                } else {
                    format!("key {} of {} must be at least 32 bytes", i + 1, keys.len())
                },
            ));
        }
    }
    keys.into_iter()
        .map(|k| SecretString::from(k.to_owned()))
        .collect()
}

fn read_table(path: &Path) -> Result<toml::Table, Problem> {
    let place = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| Problem::new(&place, format!("cannot be read: {e}")))?;
    text.parse::<toml::Table>()
        .map_err(|e| Problem::new(&place, e.to_string().trim().replace('\n', " ")))
}

/// The defaults, in code: a `config/rpec.toml` need only set what differs (the shipped file
/// repeats every one of them, with what it means).
impl Default for RawSettings {
    fn default() -> Self {
        RawSettings {
            profile: "dev".into(),
            templates_dir: "templates".into(),
            database: RawDatabase {
                max_connections: 10,
                acquire_timeout_secs: 5,
                statement_timeout_secs: 15,
            },
            amqp: RawAmqp {
                url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
                exchange: "rpec.events".into(),
                queue: "rpec-notify.events".into(),
                prefetch: 16,
                max_body_bytes: 262_144,
                unknown_session_wait_secs: 600,
                retry: RawRetryMs {
                    max_attempts: 5,
                    initial_ms: 2000,
                    max_ms: 60_000,
                },
                delivery_limit: default_delivery_limit(),
            },
            mail: RawMail {
                smtp_url: "file://./var/mail".into(),
                tls_ca_file: String::new(),
                transactional_from:
                    "Regional Prevent education coordinators <rpec.notifications@example.org>"
                        .into(),
                bulk_from: "Regional Prevent education coordinators <rpec.newsletters@example.org>"
                    .into(),
                send_timeout_secs: 30,
                pool_max_size: 10,
                concurrency: 10,
                batch_size: 256,
                lease_secs: 300,
                poll_interval_ms: 1000,
                retry: RawRetrySecs {
                    max_attempts: 15,
                    initial_secs: 10.0,
                    max_secs: 3600.0,
                },
                dkim: RawDkim::default(),
                bounce_address: String::new(),
            },
            http: RawHttp {
                addr: "127.0.0.1:8080".into(),
                public_url: "http://127.0.0.1:8080".into(),
                admin_addr: default_admin_addr(),
                max_connections: default_max_connections(),
                header_read_timeout_secs: default_header_read_timeout_secs(),
                request_timeout_secs: default_request_timeout_secs(),
                max_body_bytes: default_max_request_body_bytes(),
            },
            retention: RawRetention {
                enquiry_days: 90,
                outbox_days: 30,
                registration_days: 30,
                sweep_interval_secs: 300,
                dead_letter_days: default_dead_letter_days(),
                dead_letter_max_messages: default_dead_letter_max_messages(),
                suppression_days: default_suppression_days(),
                processed_event_days: default_processed_event_days(),
                scheduled_email_days: default_scheduled_email_days(),
                newsletter_delivery_days: default_newsletter_delivery_days(),
                digest_run_days: default_digest_run_days(),
                bounce_days: default_bounce_days(),
                unparsed_bounce_days: default_unparsed_bounce_days(),
                batch_size: default_retention_batch_size(),
            },
            schedule: RawSchedule {
                poll_interval_ms: 1000,
            },
            shutdown: RawShutdown { grace_secs: 8 },
            bounces: RawBounces::default(),
        }
    }
}

/// The environment variable that sets a key (`mail.concurrency`: `RPEC_MAIL__CONCURRENCY`).
/// The two top-level keys have the names they always had.
pub fn env_name(key: &str) -> String {
    match key {
        "profile" => "RPEC_PROFILE".into(),
        "templates_dir" => "RPEC_TEMPLATES_DIR".into(),
        _ => format!("RPEC_{}", key.replace('.', "__").to_uppercase()),
    }
}

/// The older variables that set a key, laid over `RPEC_SECTION__KEY` (binding: CONTRACT.md).
pub fn alias_of(key: &str) -> Option<&'static str> {
    Some(match key {
        "amqp.url" => "RPEC_AMQP_URL",
        "amqp.exchange" => "RPEC_EXCHANGE",
        "amqp.queue" => "RPEC_QUEUE",
        "mail.smtp_url" => "RPEC_SMTP_URL",
        "mail.tls_ca_file" => "RPEC_SMTP_CA_FILE",
        "mail.dkim.selector" => "RPEC_DKIM_SELECTOR",
        "mail.dkim.domain" => "RPEC_DKIM_DOMAIN",
        "mail.dkim.private_key_file" => "RPEC_DKIM_PRIVATE_KEY_FILE",
        "http.addr" => "RPEC_HTTP_ADDR",
        "http.public_url" => "RPEC_PUBLIC_URL",
        "http.admin_addr" => "RPEC_ADMIN_ADDR",
        "bounces.smtp_addr" => "RPEC_BOUNCE_SMTP_ADDR",
        _ => return None,
    })
}

/// Every settings key (`section.key`), in the order of the code's defaults: what the README's
/// table and `config show` list.
pub fn keys() -> Vec<String> {
    fn walk(prefix: &str, value: &figment::value::Value, out: &mut Vec<String>) {
        match value {
            figment::value::Value::Dict(_, dict) => {
                for (k, v) in dict {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            _ => out.push(prefix.to_owned()),
        }
    }
    let value =
        figment::value::Value::serialize(RawSettings::default()).expect("the defaults serialize");
    let mut out = Vec::new();
    walk("", &value, &mut out);
    out
}

/// One `RPEC_SECTION__KEY` variable, as a provider of its own so that an error or
/// `config show` names the very variable.
struct EnvVar {
    name: String,
    key: String,
    value: figment::value::Value,
}

/// A variable's text as the value its key holds: a number or a boolean where the default is
/// one (and the text reads as one), otherwise the text itself, so that `RPEC_AMQP__QUEUE=10`
/// is the queue "10" and `RPEC_MAIL__CONCURRENCY=many` a type error naming the variable.
fn typed(key: &str, text: &str, defaults: &figment::value::Value) -> figment::value::Value {
    use figment::value::Value;
    let parsed: Value = text.parse().unwrap_or_else(|e| match e {});
    match (defaults.find_ref(key), &parsed) {
        (Some(Value::Num(..)), Value::Num(..)) | (Some(Value::Bool(..)), Value::Bool(..)) => parsed,
        _ => Value::from(text.to_owned()),
    }
}

impl figment::Provider for EnvVar {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("environment variable")
            .source(figment::Source::Custom(self.name.clone()))
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        let value = figment::util::nest(&self.key, self.value.clone());
        let dict = value.into_dict().unwrap_or_default();
        Ok(figment::Profile::Default.collect(dict))
    }
}

/// The place a figment error came from: the file, the variable, or the defaults.
fn source_name(metadata: Option<&figment::Metadata>) -> String {
    match metadata.and_then(|m| m.source.as_ref()) {
        Some(figment::Source::File(path)) => path.display().to_string(),
        Some(figment::Source::Custom(name)) => name.clone(),
        _ => "default".into(),
    }
}

/// The line of `key` in the TOML file at `path`, where the file says (the layers keep no
/// positions, so the file is read again for them).
fn line_of(path: &Path, key: &[String]) -> Option<usize> {
    let text = std::fs::read_to_string(path).ok()?;
    let doc = toml_edit::ImDocument::parse(text.as_str()).ok()?;
    let mut item = doc.as_item();
    for k in key {
        item = item.get(k.as_str())?;
    }
    let start = item.span()?.start;
    Some(text[..start].matches('\n').count() + 1)
}

fn figment_problems(e: figment::Error) -> Vec<Problem> {
    e.into_iter()
        .map(|e| {
            let source = source_name(e.metadata.as_ref());
            let place = if e.path.is_empty() {
                source
            } else {
                format!("{source}: {}", e.path.join("."))
            };
            let line = match e.metadata.as_ref().and_then(|m| m.source.as_ref()) {
                Some(figment::Source::File(path)) => line_of(path, &e.path),
                _ => None,
            };
            let message = match line {
                Some(line) => format!("{} (line {line})", e.kind),
                None => e.kind.to_string(),
            };
            Problem::new(place, message)
        })
        .collect()
}

/// The layers, lowest first: the defaults in code, `rpec.toml`, `<profile>.toml` when
/// present, then every `RPEC_SECTION__KEY` variable. Returns the figment, the profile and the
/// config directory; the older variables (`RPEC_SMTP_URL`, ...) are laid over it afterwards.
fn layers(
    var: &dyn Fn(&str) -> Option<String>,
    env: &HashMap<String, String>,
) -> Result<(figment::Figment, Profile, PathBuf), Vec<Problem>> {
    use figment::providers::{Format, Serialized, Toml};
    let config_dir = PathBuf::from(var("RPEC_CONFIG_DIR").unwrap_or_else(|| "config".into()));
    let base_path = config_dir.join("rpec.toml");
    // Read first for the messages they always had (the line of a syntax error, a missing file).
    read_table(&base_path).map_err(|p| vec![p])?;
    let mut figment = figment::Figment::from(Serialized::defaults(RawSettings::default()))
        .merge(Toml::file_exact(&base_path));
    let profile_name = var("RPEC_PROFILE").or_else(|| {
        figment
            .find_value("profile")
            .ok()
            .and_then(|v| v.into_string())
    });
    let profile = match profile_name.as_deref() {
        Some("dev") | None => Profile::Dev,
        Some("production") => Profile::Production,
        Some(other) => {
            return Err(vec![Problem::new(
                "RPEC_PROFILE",
                format!("{other:?} is not a profile (dev or production)"),
            )])
        }
    };
    let profile_file = config_dir.join(match profile {
        Profile::Dev => "dev.toml",
        Profile::Production => "production.toml",
    });
    if profile_file.exists() {
        read_table(&profile_file).map_err(|p| vec![p])?;
        figment = figment.merge(Toml::file_exact(&profile_file));
    }
    let mut names: Vec<&String> = env
        .keys()
        .filter(|k| k.starts_with("RPEC_") && k.contains("__"))
        .collect();
    names.sort();
    let defaults =
        figment::value::Value::serialize(RawSettings::default()).expect("the defaults serialize");
    for name in names {
        let Some(text) = var(name) else { continue };
        let key = name["RPEC_".len()..].to_lowercase().replace("__", ".");
        figment = figment.merge(EnvVar {
            name: name.clone(),
            value: typed(&key, &text, &defaults),
            key,
        });
    }
    Ok((figment, profile, config_dir))
}

/// Keys whose values are never shown.
fn is_secret(key: &str) -> bool {
    matches!(key, "amqp.url" | "mail.smtp_url")
}

/// One row of `config show`.
#[derive(Debug, Clone, Serialize)]
pub struct Shown {
    pub key: String,
    /// The environment variable that sets it.
    pub env: String,
    /// The effective value, or `(hidden)` for a secret.
    pub value: String,
    /// `default`, the file it came from, or the variable that set it.
    pub source: String,
}

/// The text of a URL with its password (if any) replaced by `(hidden)`.
fn hide_password(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("(hidden)"));
            u.to_string()
        }
        Ok(_) => url.to_owned(),
        Err(_) => "(hidden)".into(),
    }
}

impl Settings {
    /// `config show`: every key with its effective value and where it came from, secrets
    /// hidden; then the settings only the environment holds (database URL, token keys, relay
    /// password, DKIM key). Fails with the same problems `check` would list for the layers.
    pub fn show_from(env: &HashMap<String, String>) -> Result<Vec<Shown>, Vec<Problem>> {
        let (env, _) = with_secret_files(env);
        let var = |k: &str| {
            env.get(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let (figment, _, _) = layers(&var, &env)?;
        figment.extract::<RawSettings>().map_err(figment_problems)?;
        let mut rows = Vec::new();
        for key in keys() {
            let alias = match key.as_str() {
                "profile" => Some("RPEC_PROFILE"),
                "templates_dir" => Some("RPEC_TEMPLATES_DIR"),
                k => alias_of(k),
            };
            let (value, source) = match alias.and_then(|a| var(a).map(|v| (v, a))) {
                Some((v, a)) => (v, a.to_owned()),
                None => {
                    let v = figment.find_value(&key).ok();
                    let text = match v {
                        Some(figment::value::Value::String(_, s)) => s,
                        Some(other) => serde_json::to_string(&other).unwrap_or_default(),
                        None => String::new(),
                    };
                    (text, source_name(figment.find_metadata(&key)))
                }
            };
            let value = if is_secret(&key) {
                hide_password(&value)
            } else {
                value
            };
            rows.push(Shown {
                env: env_name(&key),
                key,
                value,
                source,
            });
        }
        let from_env_only = [
            ("database.url", "DATABASE_URL"),
            ("token_secret", "RPEC_TOKEN_SECRET"),
            ("mail.smtp_password", "RPEC_SMTP_PASSWORD"),
            ("mail.dkim.private_key", "RPEC_DKIM_PRIVATE_KEY"),
        ];
        for (key, name) in from_env_only {
            let file_var = format!("{name}_FILE");
            let source = if var(&file_var).is_some() {
                file_var
            } else if var(name).is_some() {
                name.to_owned()
            } else {
                "not set".to_owned()
            };
            let value = match var(name) {
                Some(v) if key == "database.url" => hide_password(&v),
                Some(_) => "(hidden)".to_owned(),
                None => String::new(),
            };
            rows.push(Shown {
                key: key.to_owned(),
                env: name.to_owned(),
                value,
                source,
            });
        }
        Ok(rows)
    }
}

impl Settings {
    /// Loads from the process environment (`RPEC_CONFIG_DIR`, default `./config`).
    pub fn load() -> Result<Settings, Vec<Problem>> {
        let env: HashMap<String, String> = std::env::vars().collect();
        Self::load_from(&env)
    }

    /// Loads with an explicit environment, so tests need not touch the process's.
    pub fn load_from(env: &HashMap<String, String>) -> Result<Settings, Vec<Problem>> {
        let (env, file_problems) = with_secret_files(env);
        let var = |k: &str| {
            env.get(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let (figment, profile, config_dir) = layers(&var, &env)?;
        let raw: RawSettings = figment.extract().map_err(figment_problems)?;
        // A problem with a value names the layer it came from: a file, or the variable; a
        // default (or a whole table) is named after rpec.toml, where it would be changed.
        let base = config_dir.join("rpec.toml").display().to_string();
        let place_of = |key: &str| match figment.find_metadata(key).and_then(|m| m.source.as_ref())
        {
            Some(figment::Source::File(path)) => path.display().to_string(),
            Some(figment::Source::Custom(name)) => name.clone(),
            _ => base.clone(),
        };
        Self::from_raw(raw, profile, config_dir, &var, &place_of, file_problems)
    }

    fn from_raw(
        raw: RawSettings,
        profile: Profile,
        config_dir: PathBuf,
        var: &dyn Fn(&str) -> Option<String>,
        place_of: &dyn Fn(&str) -> String,
        mut problems: Vec<Problem>,
    ) -> Result<Settings, Vec<Problem>> {
        let at = |key: &str| format!("{}: {key}", place_of(key));

        if let Some(message) = lease_problem(&raw.mail) {
            problems.push(Problem::new(at("mail.lease_secs"), message));
        }
        // Checked where a connection is made (`check` and `preview` need no database).
        let database_url = var("DATABASE_URL").unwrap_or_default();
        let sender = |key: &str, raw: &str, problems: &mut Vec<Problem>| {
            Sender::parse(raw).unwrap_or_else(|e| {
                problems.push(Problem::new(at(key), e));
                Sender::parse("invalid@example.org").expect("a valid fallback")
            })
        };
        let mut transactional_from = sender(
            "mail.transactional_from",
            &raw.mail.transactional_from,
            &mut problems,
        );
        let mut bulk_from = sender("mail.bulk_from", &raw.mail.bulk_from, &mut problems);
        let (transactional_dkim, bulk_dkim) = dkim_signers(
            &raw.mail.dkim,
            var,
            (&transactional_from.domain, &bulk_from.domain),
            &at,
            &mut problems,
        );
        transactional_from.dkim = transactional_dkim;
        bulk_from.dkim = bulk_dkim;
        let http_addr_raw = var("RPEC_HTTP_ADDR").unwrap_or(raw.http.addr);
        let http_addr = http_addr_raw.parse().unwrap_or_else(|_| {
            problems.push(Problem::new(
                "RPEC_HTTP_ADDR / http.addr",
                format!("{http_addr_raw:?} is not a host:port address"),
            ));
            SocketAddr::from(([127, 0, 0, 1], 8080))
        });
        let admin_addr_raw = var("RPEC_ADMIN_ADDR").unwrap_or(raw.http.admin_addr.clone());
        let admin_addr = admin_addr_raw.parse().unwrap_or_else(|_| {
            problems.push(Problem::new(
                "RPEC_ADMIN_ADDR / http.admin_addr",
                format!("{admin_addr_raw:?} is not a host:port address"),
            ));
            SocketAddr::from(([127, 0, 0, 1], 9090))
        });
        if admin_addr == http_addr {
            problems.push(Problem::new(
                "RPEC_ADMIN_ADDR / http.admin_addr",
                "must differ from the public address: metrics and readiness are not public",
            ));
        }
        let public_url = var("RPEC_PUBLIC_URL")
            .unwrap_or(raw.http.public_url)
            .trim_end_matches('/')
            .to_owned();
        if !(public_url.starts_with("https://") || public_url.starts_with("http://")) {
            problems.push(Problem::new(
                "RPEC_PUBLIC_URL / http.public_url",
                "must be an http(s) URL",
            ));
        }
        let mut smtp_url = var("RPEC_SMTP_URL").unwrap_or(raw.mail.smtp_url);
        if let Some(password) = var("RPEC_SMTP_PASSWORD") {
            let with_password = url::Url::parse(&smtp_url).ok().and_then(|mut u| {
                (!u.username().is_empty() && u.set_password(Some(&password)).is_ok())
                    .then(|| u.to_string())
            });
            match with_password {
                Some(url) => smtp_url = url,
                None => problems.push(Problem::new(
                    "RPEC_SMTP_PASSWORD",
                    "needs a user name in RPEC_SMTP_URL (smtps://user@host)",
                )),
            }
        }
        let relay = crate::mail::RelayUrl::parse(&smtp_url);
        if let Err(e) = &relay {
            problems.push(Problem::new("RPEC_SMTP_URL / mail.smtp_url", e.clone()));
        }
        let smtp_ca_file = var("RPEC_SMTP_CA_FILE")
            .or(Some(raw.mail.tls_ca_file.clone()).filter(|f| !f.trim().is_empty()))
            .map(PathBuf::from);
        if let Some(f) = &smtp_ca_file {
            if !f.is_file() {
                problems.push(Problem::new(
                    "RPEC_SMTP_CA_FILE / mail.tls_ca_file",
                    format!("{} is not a readable file", f.display()),
                ));
            }
        }
        // The key in the source may sign links only where nobody else can follow them: the
        // links point at this machine and the pages are served on it alone. Anywhere else a
        // forgotten setting would let anyone forge confirm and unsubscribe links.
        let only_this_machine = http_addr.ip().is_loopback()
            && url::Url::parse(&public_url)
                .ok()
                .and_then(|u| u.host_str().map(is_loopback_host))
                .unwrap_or(false);
        let token_keys = match var("RPEC_TOKEN_SECRET") {
            Some(raw) => token_keys(&raw, &mut problems),
            None if profile == Profile::Dev && only_this_machine => {
                tracing::warn!(
                    "RPEC_TOKEN_SECRET is not set: using the fixed dev key (this machine only)"
                );
                vec![SecretString::from(DEV_TOKEN_SECRET)]
            }
            None if profile == Profile::Dev => {
                problems.push(Problem::new(
                    "RPEC_TOKEN_SECRET",
                    "is required unless the public URL and the HTTP listener are both on this \
                     machine (loopback): the dev key is public",
                ));
                Vec::new()
            }
            None => {
                problems.push(Problem::new(
                    "RPEC_TOKEN_SECRET",
                    "is required in the production profile",
                ));
                Vec::new()
            }
        };
        if profile == Profile::Production {
            if relay
                .as_ref()
                .is_ok_and(|r| r.has_credentials() && !r.is_encrypted())
            {
                problems.push(Problem::new(
                    "RPEC_SMTP_URL",
                    "the production profile refuses a relay password sent without TLS: use \
                     smtps:// or ?tls=required",
                ));
            }
            if smtp_url.starts_with("file:") {
                problems.push(Problem::new(
                    "RPEC_SMTP_URL",
                    "the production profile needs a real mail relay, not file://",
                ));
            }
            if public_url.starts_with("http://") {
                problems.push(Problem::new(
                    "RPEC_PUBLIC_URL",
                    "the production profile needs an https public URL",
                ));
            }
        }
        let positive = |key: &str, v: u64, problems: &mut Vec<Problem>| {
            if v == 0 {
                problems.push(Problem::new(at(key), "must be greater than 0"));
            }
        };
        positive("amqp.prefetch", raw.amqp.prefetch.into(), &mut problems);
        positive(
            "amqp.delivery_limit",
            raw.amqp.delivery_limit.into(),
            &mut problems,
        );
        positive(
            "retention.dead_letter_days",
            raw.retention.dead_letter_days.into(),
            &mut problems,
        );
        positive(
            "retention.dead_letter_max_messages",
            raw.retention.dead_letter_max_messages.into(),
            &mut problems,
        );
        positive(
            "retention.batch_size",
            raw.retention.batch_size.max(0) as u64,
            &mut problems,
        );
        let consume_retry = RetryPolicy {
            max_attempts: raw.amqp.retry.max_attempts,
            initial: Duration::from_millis(raw.amqp.retry.initial_ms),
            max: Duration::from_millis(raw.amqp.retry.max_ms),
        };
        let unknown_session_wait = Duration::from_secs(raw.amqp.unknown_session_wait_secs);
        let dead_letter_ttl =
            Duration::from_secs(u64::from(raw.retention.dead_letter_days) * 86_400);
        let window = redelivery_window(&consume_retry, unknown_session_wait, dead_letter_ttl);
        let kept = Duration::from_secs(u64::from(raw.retention.processed_event_days) * 86_400);
        if kept < window {
            problems.push(Problem::new(
                at("retention.processed_event_days"),
                format!(
                    "{} days is shorter than the time a handled event can still be delivered \
                     again ({}s: the consumer's retries, unknown_session_wait_secs and \
                     dead_letter_days, as a dead letter can be replayed); raise it to at least {}",
                    raw.retention.processed_event_days,
                    window.as_secs(),
                    window.as_secs().div_ceil(86_400)
                ),
            ));
        }
        positive(
            "amqp.retry.max_attempts",
            raw.amqp.retry.max_attempts.into(),
            &mut problems,
        );
        positive(
            "mail.concurrency",
            raw.mail.concurrency as u64,
            &mut problems,
        );
        positive(
            "mail.batch_size",
            raw.mail.batch_size.max(0) as u64,
            &mut problems,
        );
        positive(
            "mail.pool_max_size",
            raw.mail.pool_max_size.into(),
            &mut problems,
        );
        positive(
            "database.max_connections",
            raw.database.max_connections.into(),
            &mut problems,
        );
        let bounce_address = bounce_address(&raw.mail.bounce_address, &at, &mut problems);
        let bounce_smtp_raw = var("RPEC_BOUNCE_SMTP_ADDR").unwrap_or(raw.bounces.smtp_addr.clone());
        let bounce_smtp_addr = match bounce_smtp_raw.trim() {
            "" => None,
            addr => match addr.parse::<SocketAddr>() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    problems.push(Problem::new(
                        "RPEC_BOUNCE_SMTP_ADDR / bounces.smtp_addr",
                        format!("{addr:?} is not a host:port address"),
                    ));
                    None
                }
            },
        };
        if bounce_smtp_addr.is_some() && bounce_address.is_none() {
            problems.push(Problem::new(
                "RPEC_BOUNCE_SMTP_ADDR / bounces.smtp_addr",
                "needs mail.bounce_address (RPEC_MAIL__BOUNCE_ADDRESS): the listener takes mail \
                 only for the return paths at it",
            ));
        }
        positive(
            "bounces.soft_limit",
            raw.bounces.soft_limit.into(),
            &mut problems,
        );
        if raw.retention.outbox_days < raw.bounces.soft_window_days {
            problems.push(Problem::new(
                at("retention.outbox_days"),
                format!(
                    "{} days is shorter than bounces.soft_window_days ({}): an email's bounces \
                     go with it, so soft bounces would be forgotten before they are counted",
                    raw.retention.outbox_days, raw.bounces.soft_window_days
                ),
            ));
        }
        if raw.retention.bounce_days < raw.bounces.soft_window_days {
            problems.push(Problem::new(
                at("retention.bounce_days"),
                format!(
                    "{} days is shorter than bounces.soft_window_days ({}): soft bounces \
                     would be forgotten before they are counted",
                    raw.retention.bounce_days, raw.bounces.soft_window_days
                ),
            ));
        }
        if !(raw.mail.retry.initial_secs > 0.0
            && raw.mail.retry.max_secs >= raw.mail.retry.initial_secs)
        {
            problems.push(Problem::new(
                at("mail.retry"),
                "needs 0 < initial_secs <= max_secs",
            ));
        }

        if !problems.is_empty() {
            return Err(problems);
        }
        let templates_dir = PathBuf::from(var("RPEC_TEMPLATES_DIR").unwrap_or(raw.templates_dir));
        Ok(Settings {
            profile,
            config_dir,
            templates_dir,
            database_url: SecretString::from(database_url),
            db_max_connections: raw.database.max_connections,
            db_acquire_timeout: Duration::from_secs(raw.database.acquire_timeout_secs),
            db_statement_timeout: Duration::from_secs(raw.database.statement_timeout_secs),
            amqp_url: SecretString::from(var("RPEC_AMQP_URL").unwrap_or(raw.amqp.url)),
            exchange: var("RPEC_EXCHANGE").unwrap_or(raw.amqp.exchange),
            queue: var("RPEC_QUEUE").unwrap_or(raw.amqp.queue),
            prefetch: raw.amqp.prefetch,
            max_body_bytes: raw.amqp.max_body_bytes,
            consume_retry,
            unknown_session_wait,
            delivery_limit: raw.amqp.delivery_limit,
            dead_letter_ttl,
            dead_letter_max_messages: raw.retention.dead_letter_max_messages,
            schedule_poll_interval: Duration::from_millis(raw.schedule.poll_interval_ms.max(10)),
            mail: MailSettings {
                smtp_url: SecretString::from(smtp_url),
                smtp_ca_file,
                transactional_from,
                bulk_from,
                send_timeout: Duration::from_secs(raw.mail.send_timeout_secs.max(1)),
                smtp_pool_max_size: raw.mail.pool_max_size,
                send_concurrency: raw.mail.concurrency,
                send_batch_size: raw.mail.batch_size,
                send_lease: Duration::from_secs(raw.mail.lease_secs.max(1)),
                send_poll_interval: Duration::from_millis(raw.mail.poll_interval_ms.max(10)),
                send_retry: RetryPolicy {
                    max_attempts: raw.mail.retry.max_attempts.max(1),
                    initial: Duration::from_secs_f64(raw.mail.retry.initial_secs),
                    max: Duration::from_secs_f64(raw.mail.retry.max_secs),
                },
                bounce_address,
            },
            bounces: BounceSettings {
                smtp_addr: bounce_smtp_addr,
                max_message_bytes: raw.bounces.max_message_bytes.max(64 * 1024),
                max_connections: raw.bounces.max_connections.max(1),
                command_timeout: Duration::from_secs(raw.bounces.command_timeout_secs.max(1)),
                soft_limit: raw.bounces.soft_limit,
                soft_window_days: raw.bounces.soft_window_days,
            },
            http_addr,
            admin_addr,
            http_limits: HttpLimits {
                max_connections: raw.http.max_connections.max(1),
                header_read_timeout: Duration::from_secs(raw.http.header_read_timeout_secs.max(1)),
                request_timeout: Duration::from_secs(raw.http.request_timeout_secs.max(1)),
                max_body_bytes: raw.http.max_body_bytes.max(1024),
            },
            public_url,
            token_keys,
            retention: RetentionSettings {
                enquiry_days: raw.retention.enquiry_days,
                outbox_days: raw.retention.outbox_days,
                registration_days: raw.retention.registration_days,
                suppression_days: raw.retention.suppression_days,
                processed_event_days: raw.retention.processed_event_days,
                scheduled_email_days: raw.retention.scheduled_email_days,
                newsletter_delivery_days: raw.retention.newsletter_delivery_days,
                digest_run_days: raw.retention.digest_run_days,
                bounce_days: raw.retention.bounce_days,
                unparsed_bounce_days: raw.retention.unparsed_bounce_days,
                batch_size: raw.retention.batch_size,
                sweep_interval: Duration::from_secs(raw.retention.sweep_interval_secs.max(1)),
            },
            shutdown_grace: Duration::from_secs(raw.shutdown.grace_secs),
        })
    }

    pub fn regions_path(&self) -> PathBuf {
        self.config_dir.join("regions.toml")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        let mut m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        m.insert(
            "RPEC_CONFIG_DIR".into(),
            concat!(env!("CARGO_MANIFEST_DIR"), "/config").into(),
        );
        m
    }

    #[test]
    fn the_shipped_files_load_and_env_overrides_them() {
        let s = Settings::load_from(&env(&[
            ("DATABASE_URL", "postgres://x@127.0.0.1/db"),
            ("RPEC_QUEUE", "q1"),
            ("RPEC_HTTP_ADDR", "127.0.0.1:9999"),
        ]))
        .unwrap();
        assert_eq!(s.queue, "q1");
        assert_eq!(s.exchange, "rpec.events");
        assert_eq!(s.http_addr.port(), 9999);
        assert_eq!(s.profile, Profile::Dev);
        assert_eq!(s.max_body_bytes, 256 * 1024);
    }

    #[test]
    fn production_refuses_unsafe_settings_and_names_each() {
        let problems = Settings::load_from(&env(&[
            ("DATABASE_URL", "postgres://x@127.0.0.1/db"),
            ("RPEC_PROFILE", "production"),
        ]))
        .unwrap_err();
        let places: Vec<&str> = problems.iter().map(|p| p.place.as_str()).collect();
        assert!(places.contains(&"RPEC_TOKEN_SECRET"), "{places:?}");
        assert!(places.contains(&"RPEC_SMTP_URL"), "{places:?}");
        assert!(places.contains(&"RPEC_PUBLIC_URL"), "{places:?}");
        let token = problems
            .iter()
            .find(|p| p.place == "RPEC_TOKEN_SECRET")
            .unwrap();
        assert!(
            token.message.contains("production profile"),
            "production never hears of the dev key: {token}"
        );
    }

    /// A config directory whose rpec.toml holds only `rpec` (and a production.toml `prod`).
    fn minimal_config(
        rpec: &str,
        prod: Option<&str>,
    ) -> (tempfile::TempDir, HashMap<String, String>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rpec.toml"), rpec).unwrap();
        if let Some(prod) = prod {
            std::fs::write(dir.path().join("production.toml"), prod).unwrap();
        }
        let mut e = env(&[("DATABASE_URL", "postgres://x@127.0.0.1/db")]);
        e.insert("RPEC_CONFIG_DIR".into(), dir.path().display().to_string());
        (dir, e)
    }

    #[test]
    fn an_rpec_toml_with_one_key_loads_with_the_defaults_in_code() {
        let (_dir, e) = minimal_config("[amqp]\nprefetch = 4\n", None);
        let s = Settings::load_from(&e).unwrap();
        assert_eq!(s.prefetch, 4);
        assert_eq!(s.exchange, "rpec.events");
        assert_eq!(s.mail.send_concurrency, 10);
        assert_eq!(s.retention.processed_event_days, 45);
        assert_eq!(s.http_addr.port(), 8080);
    }

    #[test]
    fn the_shipped_rpec_toml_repeats_the_defaults_in_code() {
        use figment::providers::{Format, Serialized, Toml};
        let shipped: RawSettings =
            figment::Figment::from(Serialized::defaults(RawSettings::default()))
                .merge(Toml::file_exact(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/config/rpec.toml"
                )))
                .extract()
                .unwrap();
        assert_eq!(
            figment::value::Value::serialize(&shipped).unwrap(),
            figment::value::Value::serialize(RawSettings::default()).unwrap()
        );
    }

    #[test]
    fn every_key_is_settable_as_rpec_section_key() {
        let (_dir, mut e) = minimal_config("", None);
        e.insert("RPEC_MAIL__CONCURRENCY".into(), "20".into());
        e.insert("RPEC_AMQP__RETRY__MAX_ATTEMPTS".into(), "7".into());
        e.insert("RPEC_AMQP__QUEUE".into(), "10".into());
        e.insert("RPEC_MAIL__RETRY__INITIAL_SECS".into(), "2.5".into());
        let s = Settings::load_from(&e).unwrap();
        assert_eq!(s.mail.send_concurrency, 20);
        assert_eq!(s.consume_retry.max_attempts, 7);
        assert_eq!(
            s.queue, "10",
            "a string that looks like a number stays a string"
        );
        assert_eq!(s.mail.send_retry.initial, Duration::from_millis(2500));
        // The older names stay on top.
        e.insert("RPEC_QUEUE".into(), "q2".into());
        assert_eq!(Settings::load_from(&e).unwrap().queue, "q2");
        // The variable beats the files, and names itself when it is wrong.
        e.insert("RPEC_MAIL__CONCURRENCY".into(), "many".into());
        let problems = Settings::load_from(&e).unwrap_err();
        assert!(
            problems
                .iter()
                .any(|p| p.place == "RPEC_MAIL__CONCURRENCY: mail.concurrency"),
            "{problems:?}"
        );
        for key in keys() {
            let name = env_name(&key);
            assert!(name.starts_with("RPEC_"), "{name}");
        }
    }

    #[test]
    fn a_type_error_in_the_profile_file_names_that_file_and_the_key() {
        let (dir, mut e) = minimal_config("", Some("[mail]\nconcurrency = \"lots\"\n"));
        e.insert("RPEC_PROFILE".into(), "production".into());
        let problems = Settings::load_from(&e).unwrap_err();
        let place = format!(
            "{}: mail.concurrency",
            dir.path().join("production.toml").display()
        );
        assert!(
            problems
                .iter()
                .any(|p| p.place == place && p.message.ends_with("(line 2)")),
            "{problems:?}"
        );
        // So does a value of the right type that breaks a rule.
        std::fs::write(
            dir.path().join("production.toml"),
            "[mail]\nconcurrency = 0\n",
        )
        .unwrap();
        let problems = Settings::load_from(&e).unwrap_err();
        assert!(
            problems
                .iter()
                .any(|p| p.place == place && p.message == "must be greater than 0"),
            "{problems:?}"
        );
        // A syntax error names the line.
        std::fs::write(
            dir.path().join("production.toml"),
            "[mail]\nconcurrency = \n",
        )
        .unwrap();
        let problems = Settings::load_from(&e).unwrap_err();
        assert!(
            problems[0].place.ends_with("production.toml"),
            "{problems:?}"
        );
        assert!(problems[0].message.contains("line 2"), "{problems:?}");
    }

    #[test]
    fn config_show_names_each_source_and_hides_secrets() {
        let (_dir, mut e) = minimal_config("[amqp]\nprefetch = 4\n", None);
        e.insert("RPEC_MAIL__CONCURRENCY".into(), "20".into());
        e.insert(
            "DATABASE_URL".into(),
            "postgres://u:pw-db@127.0.0.1/db".into(),
        );
        e.insert("RPEC_TOKEN_SECRET".into(), "t".repeat(40));
        e.insert(
            "RPEC_SMTP_URL".into(),
            "smtps://u:pw-relay@relay.example.org".into(),
        );
        let rows = Settings::show_from(&e).unwrap();
        let row = |k: &str| rows.iter().find(|r| r.key == k).unwrap().clone();
        assert_eq!(row("amqp.prefetch").value, "4");
        assert!(row("amqp.prefetch").source.ends_with("rpec.toml"));
        assert_eq!(row("mail.concurrency").source, "RPEC_MAIL__CONCURRENCY");
        assert_eq!(row("amqp.exchange").source, "default");
        assert_eq!(row("mail.smtp_url").source, "RPEC_SMTP_URL");
        assert_eq!(row("token_secret").value, "(hidden)");
        let all = format!("{rows:?}");
        for secret in ["pw-db", "pw-relay", "tttt", "guest:guest"] {
            assert!(!all.contains(secret), "{secret} shown: {all}");
        }
        assert_eq!(
            rows.iter().filter(|r| keys().contains(&r.key)).count(),
            keys().len()
        );
    }

    /// Prints the README's table of keys (`cargo test --lib print_the_key_table -- --ignored
    /// --nocapture`), to paste when a key is added.
    #[test]
    #[ignore]
    fn print_the_key_table() {
        let (_dir, e) = minimal_config("", None);
        for row in Settings::show_from(&e).unwrap() {
            if keys().contains(&row.key) {
                println!("| `{}` | `{}` | `{}` |", row.key, row.env, row.value);
            }
        }
    }

    /// The README's table lists every key with its variable: a key added without a line there
    /// fails here.
    #[test]
    fn the_readme_lists_every_key_with_its_variable() {
        let readme = include_str!("../../README.md");
        for key in keys() {
            let line = format!("| `{key}` | `{}` |", env_name(&key));
            assert!(readme.contains(&line), "README.md lacks the row {line}");
        }
    }

    /// A config directory holding the shipped rpec.toml and `dev` as the profile file.
    fn config_with(dev: &str) -> (tempfile::TempDir, HashMap<String, String>) {
        let dir = tempfile::tempdir().unwrap();
        let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/config/rpec.toml");
        std::fs::copy(shipped, dir.path().join("rpec.toml")).unwrap();
        std::fs::write(dir.path().join("dev.toml"), dev).unwrap();
        let mut e = env(&[("DATABASE_URL", "postgres://x@127.0.0.1/db")]);
        e.insert("RPEC_CONFIG_DIR".into(), dir.path().display().to_string());
        (dir, e)
    }

    /// An operator's rpec.toml from 0.1 (kept as it shipped, in tests/fixtures) still loads: every
    /// key added since has its default.
    #[test]
    fn an_rpec_toml_from_0_1_loads_with_every_new_key_at_its_default() {
        let (dir, e) = config_with("");
        std::fs::copy(
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/rpec-0.1.toml"),
            dir.path().join("rpec.toml"),
        )
        .unwrap();
        let s = Settings::load_from(&e).unwrap();
        assert_eq!(s.delivery_limit, 20);
        assert_eq!(s.dead_letter_ttl, Duration::from_secs(30 * 86_400));
        assert_eq!(s.dead_letter_max_messages, 100_000);
        assert_eq!(s.admin_addr, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(s.http_limits.max_connections, 1024);
        assert_eq!(s.http_limits.header_read_timeout, Duration::from_secs(10));
        assert_eq!(s.http_limits.request_timeout, Duration::from_secs(15));
        assert_eq!(s.http_limits.max_body_bytes, 16 * 1024);
    }

    #[test]
    fn a_lease_no_longer_than_one_send_and_its_recording_is_refused() {
        // One send of up to 30 s, plus the margin to record = 32 s, whatever the batch.
        for lease in [20, 32] {
            let (_dir, e) = config_with(&format!(
                "[mail]\nbatch_size = 512\nconcurrency = 8\nsend_timeout_secs = 30\nlease_secs = {lease}\n"
            ));
            let problems = Settings::load_from(&e).unwrap_err();
            let lease_problem = problems
                .iter()
                .find(|p| p.place.ends_with("mail.lease_secs"))
                .unwrap_or_else(|| panic!("lease {lease}: {problems:?}"));
            assert!(lease_problem.message.contains("32s"), "{lease_problem}");
        }
        let (_dir, e) = config_with(
            "[mail]\nbatch_size = 512\nconcurrency = 8\nsend_timeout_secs = 30\nlease_secs = 33\n",
        );
        assert!(Settings::load_from(&e).is_ok());
        let (_dir, e) = config_with(
            "[mail]\nbatch_size = 512\nconcurrency = 8\nsend_timeout_secs = 40\nlease_secs = 33\n",
        );
        assert!(Settings::load_from(&e).is_err());
    }

    #[test]
    fn the_shipped_lease_covers_one_send_with_room() {
        let s =
            Settings::load_from(&env(&[("DATABASE_URL", "postgres://x@127.0.0.1/db")])).unwrap();
        let one_send = s.mail.send_timeout.as_secs() + RECORDING_MARGIN_SECS;
        assert!(
            s.mail.send_lease.as_secs() >= 4 * one_send,
            "lease {:?} for a {one_send}s send",
            s.mail.send_lease
        );
    }

    #[test]
    fn handled_events_are_remembered_longer_than_any_copy_can_come_back() {
        let s =
            Settings::load_from(&env(&[("DATABASE_URL", "postgres://x@127.0.0.1/db")])).unwrap();
        let window = redelivery_window(&s.consume_retry, s.unknown_session_wait, s.dead_letter_ttl);
        assert!(
            window > s.dead_letter_ttl + s.unknown_session_wait,
            "{window:?}"
        );
        assert!(
            u64::from(s.retention.processed_event_days) * 86_400 >= window.as_secs(),
            "the shipped default covers it"
        );
        // 30 days of dead letters need more than 30 days of the record; a shorter record only
        // where dead letters are kept shorter too.
        let (_dir, e) = config_with("[retention]\nprocessed_event_days = 30\n");
        let problems = Settings::load_from(&e).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0]
                .place
                .ends_with("retention.processed_event_days"),
            "{problems:?}"
        );
        assert!(
            problems[0].message.contains("at least 31"),
            "{}",
            problems[0]
        );
        let (_dir, e) =
            config_with("[retention]\nprocessed_event_days = 8\ndead_letter_days = 7\n");
        assert!(Settings::load_from(&e).is_ok());
        let (_dir, e) = config_with("[retention]\nbatch_size = 0\n");
        assert!(Settings::load_from(&e).is_err());
    }

    #[test]
    fn a_retention_section_written_before_the_new_keys_still_loads() {
        let (_dir, e) = config_with(
            "[retention]\nenquiry_days = 90\noutbox_days = 30\nregistration_days = 30\n\
             sweep_interval_secs = 3600\n",
        );
        let dir = e["RPEC_CONFIG_DIR"].clone();
        let base = std::fs::read_to_string(format!("{dir}/rpec.toml")).unwrap();
        let old: String = base
            .lines()
            .filter(|l| {
                ![
                    "suppression_days",
                    "processed_event_days",
                    "scheduled_email_days",
                    "newsletter_delivery_days",
                    "digest_run_days",
                    "batch_size = 1000",
                ]
                .iter()
                .any(|k| l.starts_with(k))
            })
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(!old.contains("suppression_days"));
        std::fs::write(format!("{dir}/rpec.toml"), old).unwrap();
        let s = Settings::load_from(&e).unwrap();
        assert_eq!(
            (
                s.retention.suppression_days,
                s.retention.processed_event_days,
                s.retention.scheduled_email_days,
                s.retention.newsletter_delivery_days,
                s.retention.digest_run_days,
                s.retention.batch_size
            ),
            (365, 45, 30, 90, 90, 1000)
        );
    }

    fn places(problems: &[Problem]) -> Vec<&str> {
        problems.iter().map(|p| p.place.as_str()).collect()
    }

    #[test]
    fn the_dev_key_signs_only_where_the_links_and_the_pages_stay_on_this_machine() {
        let db = ("DATABASE_URL", "postgres://x@127.0.0.1/db");
        let local = Settings::load_from(&env(&[db])).unwrap();
        assert_eq!(local.token_keys.len(), 1, "the dev key, on loopback");
        for exposed in [
            vec![db, ("RPEC_PUBLIC_URL", "https://rpec.example.org")],
            vec![db, ("RPEC_HTTP_ADDR", "0.0.0.0:8080")],
            vec![db, ("RPEC_PUBLIC_URL", "http://192.0.2.10:8080")],
        ] {
            let problems = Settings::load_from(&env(&exposed)).unwrap_err();
            assert_eq!(places(&problems), ["RPEC_TOKEN_SECRET"], "{exposed:?}");
            assert!(problems[0].message.contains("loopback"));
        }
        let keyed = Settings::load_from(&env(&[
            db,
            ("RPEC_HTTP_ADDR", "0.0.0.0:8080"),
            ("RPEC_TOKEN_SECRET", &"k".repeat(32)),
        ]));
        assert!(keyed.is_ok());
    }

    #[test]
    fn several_token_keys_are_each_checked_for_length_without_being_shown() {
        let db = ("DATABASE_URL", "postgres://x@127.0.0.1/db");
        let two = format!("{}\n{}", "a".repeat(32), "b".repeat(40));
        let s = Settings::load_from(&env(&[db, ("RPEC_TOKEN_SECRET", &two)])).unwrap();
        assert_eq!(s.token_keys.len(), 2);
        assert_eq!(s.token_keys[0].expose_secret(), "a".repeat(32));
        let short = format!("{}\r\nshort-key\n", "a".repeat(32));
        let problems = Settings::load_from(&env(&[db, ("RPEC_TOKEN_SECRET", &short)])).unwrap_err();
        assert_eq!(problems[0].message, "key 2 of 2 must be at least 32 bytes");
        assert!(!format!("{problems:?}").contains("short-key"));
    }

    #[test]
    fn secrets_can_come_from_files_and_never_show_in_debug() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("token");
        std::fs::write(&key_file, format!("{}\n", "f".repeat(33))).unwrap();
        let pw_file = dir.path().join("smtp-password");
        std::fs::write(&pw_file, "pa55-w0rd\n").unwrap();
        let db_file = dir.path().join("db");
        std::fs::write(&db_file, "postgres://app:db-s3cret@127.0.0.1/rpec\n").unwrap();
        let key_path = key_file.display().to_string();
        let pw_path = pw_file.display().to_string();
        let db_path = db_file.display().to_string();
        let s = Settings::load_from(&env(&[
            ("DATABASE_URL_FILE", &db_path),
            ("RPEC_TOKEN_SECRET_FILE", &key_path),
            ("RPEC_SMTP_URL", "smtps://mailer@relay.example.org"),
            ("RPEC_SMTP_PASSWORD_FILE", &pw_path),
        ]))
        .unwrap();
        assert_eq!(s.token_keys[0].expose_secret(), "f".repeat(33));
        assert_eq!(
            s.database_url.expose_secret(),
            "postgres://app:db-s3cret@127.0.0.1/rpec"
        );
        assert_eq!(
            s.mail.smtp_url(),
            "smtps://mailer:pa55-w0rd@relay.example.org"
        );
        let shown = format!("{s:?}");
        for secret in ["fffff", "pa55-w0rd", "db-s3cret"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }

        let both = Settings::load_from(&env(&[
            ("DATABASE_URL", "postgres://x@127.0.0.1/db"),
            ("RPEC_TOKEN_SECRET", &"k".repeat(32)),
            ("RPEC_TOKEN_SECRET_FILE", &key_path),
        ]))
        .unwrap_err();
        assert_eq!(places(&both), ["RPEC_TOKEN_SECRET_FILE"]);
        let missing = Settings::load_from(&env(&[
            ("DATABASE_URL", "postgres://x@127.0.0.1/db"),
            ("RPEC_TOKEN_SECRET_FILE", "/nonexistent/token"),
        ]))
        .unwrap_err();
        assert_eq!(places(&missing)[0], "RPEC_TOKEN_SECRET_FILE");
    }

    /// An RSA key made by the openssl command, written to `dir/name`.
    fn dkim_key(dir: &Path, name: &str) -> PathBuf {
        let pem = crate::mail::dkim::tests::openssl_key(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ]);
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    }

    #[test]
    fn dkim_is_off_unless_a_key_is_set_and_a_file_without_mail_dkim_still_loads() {
        let s =
            Settings::load_from(&env(&[("DATABASE_URL", "postgres://x@127.0.0.1/db")])).unwrap();
        assert!(s.mail.transactional_from.dkim.is_none() && s.mail.bulk_from.dkim.is_none());
        // rpec.toml as 0.1 wrote it: no [mail.dkim] tables at all.
        let (dir, e) = config_with("");
        let path = dir.path().join("rpec.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let start = text
            .find("[mail.dkim]")
            .expect("the shipped file documents [mail.dkim]");
        let end = start + text[start..].find("\n[http]").expect("[http] after it");
        std::fs::write(&path, format!("{}{}", &text[..start], &text[end..])).unwrap();
        let s = Settings::load_from(&e).unwrap();
        assert!(s.mail.transactional_from.dkim.is_none() && s.mail.bulk_from.dkim.is_none());
    }

    #[test]
    fn a_dkim_key_from_the_environment_signs_both_from_addresses_each_for_its_own_domain() {
        let (dir, mut e) = config_with("[mail]\nbulk_from = \"News <rpec@news.example.org>\"\n");
        let key = dkim_key(dir.path(), "dkim.pem");
        e.insert(
            "RPEC_DKIM_PRIVATE_KEY_FILE".into(),
            key.display().to_string(),
        );
        e.insert("RPEC_DKIM_SELECTOR".into(), "sel1".into());
        let s = Settings::load_from(&e).unwrap();
        let (t, b) = (
            s.mail.transactional_from.dkim.as_ref().unwrap(),
            s.mail.bulk_from.dkim.as_ref().unwrap(),
        );
        assert_eq!((t.domain(), t.selector()), ("example.org", "sel1"));
        assert_eq!((b.domain(), b.selector()), ("news.example.org", "sel1"));
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("PRIVATE KEY") && shown.contains("sel1"),
            "{shown}"
        );

        // One domain for both: a parent of each From address's domain, so DMARC still aligns.
        e.insert("RPEC_DKIM_DOMAIN".into(), "Example.org".into());
        let s = Settings::load_from(&e).unwrap();
        assert_eq!(
            s.mail.bulk_from.dkim.as_ref().unwrap().domain(),
            "example.org"
        );
        // A domain that is not: refused, by name.
        e.insert("RPEC_DKIM_DOMAIN".into(), "mailer.example.net".into());
        let problems = Settings::load_from(&e).unwrap_err();
        assert_eq!(problems.len(), 2, "one per From address: {problems:?}");
        for (p, from) in problems.iter().zip(["(example.org)", "(news.example.org)"]) {
            assert!(
                p.place.ends_with("mail.dkim.domain / RPEC_DKIM_DOMAIN"),
                "{p}"
            );
            assert!(
                p.message.contains("DMARC") && p.message.contains(from),
                "{p}"
            );
        }

        // The key itself in the environment, and no selector: refused, once, without the key.
        let pem = std::fs::read_to_string(&key).unwrap();
        let (_dir, mut e) = config_with("");
        e.insert("RPEC_DKIM_PRIVATE_KEY".into(), pem.clone());
        let problems = Settings::load_from(&e).unwrap_err();
        assert_eq!(places(&problems).len(), 1, "{problems:?}");
        assert!(
            problems[0].message.contains("no selector"),
            "{}",
            problems[0]
        );
        e.insert("RPEC_DKIM_SELECTOR".into(), "sel1".into());
        assert!(Settings::load_from(&e).is_ok());
    }

    #[test]
    fn an_unreadable_or_invalid_dkim_key_is_a_problem_that_never_shows_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = dkim_key(dir.path(), "good.pem");
        let pem = std::fs::read_to_string(&key).unwrap();
        let secret_line = pem.lines().nth(5).unwrap().to_owned();
        // A byte of the key changed: still PEM, no longer a key.
        let first = if secret_line.starts_with('A') {
            "B"
        } else {
            "A"
        };
        let broken = pem.replacen(&secret_line, &format!("{first}{}", &secret_line[1..]), 1);
        let broken_path = dir.path().join("broken.pem");
        std::fs::write(&broken_path, &broken).unwrap();
        let db = ("DATABASE_URL", "postgres://x@127.0.0.1/db");
        let sel = ("RPEC_DKIM_SELECTOR", "sel1");
        for (var, value, place) in [
            (
                "RPEC_DKIM_PRIVATE_KEY_FILE",
                "/nonexistent/dkim.pem",
                "RPEC_DKIM_PRIVATE_KEY_FILE",
            ),
            (
                "RPEC_DKIM_PRIVATE_KEY_FILE",
                broken_path.to_str().unwrap(),
                "RPEC_DKIM_PRIVATE_KEY(_FILE)",
            ),
            (
                "RPEC_DKIM_PRIVATE_KEY",
                broken.as_str(),
                "RPEC_DKIM_PRIVATE_KEY(_FILE)",
            ),
        ] {
            let problems = Settings::load_from(&env(&[db, sel, (var, value)])).unwrap_err();
            assert_eq!(places(&problems), [place], "{var}={value}: {problems:?}");
            let shown = format!("{problems:?}");
            assert!(!shown.contains(&secret_line[..20]), "{shown}");
        }
        // Named in rpec.toml (a profile file here): the place is the key's.
        let (_dir, e) = config_with(
            "[mail.dkim]\nselector = \"s\"\nprivate_key_file = \"/nonexistent/k.pem\"\n",
        );
        let problems = Settings::load_from(&e).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].place.ends_with("mail.dkim.private_key_file"),
            "{}",
            problems[0]
        );
        assert!(
            problems[0].message.contains("cannot be read"),
            "{}",
            problems[0]
        );
    }

    #[test]
    fn production_refuses_a_relay_password_without_tls() {
        let base = [
            ("DATABASE_URL", "postgres://x@127.0.0.1/db"),
            ("RPEC_PROFILE", "production"),
            ("RPEC_PUBLIC_URL", "https://rpec.example.org"),
        ];
        let key = "k".repeat(32);
        let with = |url: &'static str| {
            let mut e = base.to_vec();
            e.push(("RPEC_TOKEN_SECRET", &key));
            e.push(("RPEC_SMTP_URL", url));
            Settings::load_from(&env(&e))
        };
        let problems = with("smtp://mailer:pw@relay.example.org:587").unwrap_err();
        assert_eq!(places(&problems), ["RPEC_SMTP_URL"]);
        assert!(with("smtp://mailer:pw@relay.example.org:587?tls=required").is_ok());
        assert!(with("smtps://mailer:pw@relay.example.org").is_ok());
        assert!(
            with("smtp://relay.internal:25").is_ok(),
            "no password, nothing to leak"
        );
    }

    /// Jitter spreads waits by up to a quarter either way, never to nothing.
    #[test]
    fn jitter_stays_within_a_quarter_of_the_back_off() {
        let p = RetryPolicy {
            max_attempts: 5,
            initial: Duration::from_secs(2),
            max: Duration::from_secs(60),
        };
        let waits: Vec<u128> = (0..500)
            .map(|_| p.backoff_with_jitter(3).as_millis())
            .collect();
        assert!(
            waits.iter().all(|w| (6_000..=10_000).contains(w)),
            "{waits:?}"
        );
        // Spread out, not one value.
        assert!(waits.iter().any(|w| *w < 7_500) && waits.iter().any(|w| *w > 8_500));
    }

    #[test]
    fn backoff_doubles_to_the_cap() {
        let p = RetryPolicy {
            max_attempts: 5,
            initial: Duration::from_secs(2),
            max: Duration::from_secs(10),
        };
        let waits: Vec<u64> = (1..=5).map(|a| p.backoff(a).as_secs()).collect();
        assert_eq!(waits, [2, 4, 8, 10, 10]);
    }

    /// No email at a time, or a batch of none, is its own setting's one problem: there is no
    /// lease to judge for a batch that cannot be sent (and loading never divides by zero).
    #[test]
    fn a_batch_that_cannot_be_sent_is_reported_on_its_own() {
        for (dev, place) in [
            ("[mail]\nconcurrency = 0\n", "mail.concurrency"),
            ("[mail]\nbatch_size = 0\n", "mail.batch_size"),
            ("[mail]\nbatch_size = -1\n", "mail.batch_size"),
        ] {
            let (_dir, e) = config_with(dev);
            let problems = Settings::load_from(&e).unwrap_err();
            assert_eq!(problems.len(), 1, "{dev}: {problems:?}");
            assert!(problems[0].place.ends_with(place), "{dev}: {problems:?}");
        }
    }

    /// The record of handled events may be exactly as long as the time a copy can come back,
    /// and not a day less.
    #[test]
    fn a_record_exactly_as_long_as_the_redelivery_window_is_enough() {
        // One attempt (no retries), a day's wait for an unknown session and 7 days of dead
        // letters: 8 days exactly.
        let base = "[amqp]\nunknown_session_wait_secs = 86400\n[amqp.retry]\nmax_attempts = 1\n\
                    [retention]\ndead_letter_days = 7\nprocessed_event_days = ";
        let (_dir, e) = config_with(&format!("{base}8\n"));
        let s = Settings::load_from(&e).unwrap();
        assert_eq!(
            redelivery_window(&s.consume_retry, s.unknown_session_wait, s.dead_letter_ttl),
            Duration::from_secs(8 * 86_400)
        );
        let (_dir, e) = config_with(&format!("{base}7\n"));
        let problems = Settings::load_from(&e).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].message.contains("at least 8"),
            "{}",
            problems[0]
        );
    }

    #[test]
    fn the_mail_retry_needs_a_positive_first_wait_no_longer_than_its_cap() {
        for retry in [
            "initial_secs = 0.0\n",
            "initial_secs = -1.0\n",
            "initial_secs = 20.0\nmax_secs = 10.0\n",
        ] {
            let (_dir, e) = config_with(&format!("[mail.retry]\n{retry}"));
            let problems = Settings::load_from(&e).unwrap_err();
            assert_eq!(problems.len(), 1, "{retry}: {problems:?}");
            assert!(problems[0].place.ends_with("mail.retry"), "{problems:?}");
        }
        let (_dir, e) = config_with("[mail.retry]\ninitial_secs = 10.0\nmax_secs = 10.0\n");
        let s = Settings::load_from(&e).unwrap();
        assert_eq!(s.mail.send_retry.backoff(3), Duration::from_secs(10));
    }

    #[test]
    fn a_relay_password_needs_a_user_name_in_the_relay_url() {
        let db = ("DATABASE_URL", "postgres://x@127.0.0.1/db");
        let problems = Settings::load_from(&env(&[
            db,
            ("RPEC_SMTP_URL", "smtps://relay.example.org"),
            ("RPEC_SMTP_PASSWORD", "pa55-w0rd"),
        ]))
        .unwrap_err();
        assert_eq!(places(&problems), ["RPEC_SMTP_PASSWORD"]);
        assert!(!format!("{problems:?}").contains("pa55-w0rd"));
    }

    #[test]
    fn a_ca_file_for_the_relay_must_be_a_readable_file() {
        let db = ("DATABASE_URL", "postgres://x@127.0.0.1/db");
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
        let s =
            Settings::load_from(&env(&[db, ("RPEC_SMTP_CA_FILE", ca.to_str().unwrap())])).unwrap();
        assert_eq!(s.mail.smtp_ca_file.as_deref(), Some(ca.as_path()));
        for missing in ["/nonexistent/ca.pem", dir.path().to_str().unwrap()] {
            let problems =
                Settings::load_from(&env(&[db, ("RPEC_SMTP_CA_FILE", missing)])).unwrap_err();
            assert_eq!(
                places(&problems),
                ["RPEC_SMTP_CA_FILE / mail.tls_ca_file"],
                "{missing}"
            );
        }
        let s = Settings::load_from(&env(&[db])).unwrap();
        assert_eq!(
            s.mail.smtp_ca_file, None,
            "the shipped empty tls_ca_file is none"
        );
    }

    #[test]
    fn the_regions_file_is_read_from_the_config_directory() {
        let s =
            Settings::load_from(&env(&[("DATABASE_URL", "postgres://x@127.0.0.1/db")])).unwrap();
        assert_eq!(
            s.regions_path(),
            Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config/regions.toml"))
        );
        assert!(crate::config::Regions::load(&s.regions_path()).is_ok());
    }

    /// What `f` logs at warning level and above, on this thread.
    fn warnings_while(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let out = buf.0.lock().unwrap().clone();
        String::from_utf8(out).unwrap()
    }

    /// A selector with no key most likely means a key forgotten: the operator is told that mail
    /// goes out unsigned. With a key, mail is signed and nothing says otherwise; with a key named
    /// that cannot be read, the problem says so and nothing claims there is no key.
    #[test]
    fn a_dkim_selector_without_a_key_is_warned_about_and_only_then() {
        let db = ("DATABASE_URL", "postgres://x@127.0.0.1/db");
        let sel = ("RPEC_DKIM_SELECTOR", "sel1");
        let unsigned = "a DKIM selector is set but no private key";
        let logs = warnings_while(|| {
            Settings::load_from(&env(&[db, sel])).unwrap();
        });
        assert!(logs.contains(unsigned), "{logs}");

        let dir = tempfile::tempdir().unwrap();
        let key = dkim_key(dir.path(), "dkim.pem");
        let logs = warnings_while(|| {
            let s = Settings::load_from(&env(&[
                db,
                sel,
                ("RPEC_DKIM_PRIVATE_KEY_FILE", key.to_str().unwrap()),
            ]))
            .unwrap();
            assert!(s.mail.transactional_from.dkim.is_some());
        });
        assert!(!logs.contains(unsigned), "{logs}");

        let (_dir, mut e) = config_with("[mail.dkim]\nprivate_key_file = \"/nonexistent/k.pem\"\n");
        e.insert("RPEC_DKIM_SELECTOR".into(), "sel1".into());
        let logs = warnings_while(|| {
            let problems = Settings::load_from(&e).unwrap_err();
            assert!(
                problems[0].message.contains("cannot be read"),
                "{problems:?}"
            );
        });
        assert!(!logs.contains(unsigned), "{logs}");
    }
}

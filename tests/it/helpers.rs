//! The test harness: every test gets its own database, its own exchange and queues on the real
//! RabbitMQ, its own real SMTP server on a free port, and its own worker.

use crate::proxy::FaultProxy;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};
use rpec_notify::clock::Clock;
use rpec_notify::config::Settings;
use rpec_notify::consume::topology::{self, Topology};
use rpec_notify::retention::Sweeper;
use serde_json::Value;
use sqlx::{Connection as _, PgConnection, PgPool};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use uuid::Uuid;

pub fn database_admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn amqp_url() -> String {
    std::env::var("TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The key for signed links in tests, so a test can make its own (expired) tokens.
pub const TEST_TOKEN_SECRET: &str = "rpec-notify integration tests: a token secret of 32+ bytes";

/// Retry timings short enough for tests, laid over the shipped rpec.toml as a profile file.
pub const FAST_TIMINGS: &str = r#"
[database]
acquire_timeout_secs = 1

[amqp]
unknown_session_wait_secs = 30

[amqp.retry]
max_attempts = 5
initial_ms = 100
max_ms = 400

[mail]
poll_interval_ms = 200
lease_secs = 30
send_timeout_secs = 5

[mail.retry]
max_attempts = 15
initial_secs = 0.2
max_secs = 1.0

[schedule]
poll_interval_ms = 100

[shutdown]
grace_secs = 5
"#;

// ---------------------------------------------------------------------------------------------
// A real SMTP server (mailin-embedded) that keeps what it receives.

/// One message as the SMTP server received it.
#[derive(Clone, Debug)]
pub struct Mail {
    /// MAIL FROM (the return path), without angle brackets; "" for the null sender.
    pub envelope_from: String,
    pub envelope_to: Vec<String>,
    pub raw: Vec<u8>,
}

impl Mail {
    pub fn parsed(&self) -> mail_parser::Message<'_> {
        mail_parser::MessageParser::default()
            .parse(&self.raw)
            .expect("a parsable message")
    }

    pub fn subject(&self) -> String {
        self.parsed().subject().unwrap_or_default().to_owned()
    }

    pub fn text(&self) -> String {
        self.parsed()
            .body_text(0)
            .map(|c| c.into_owned())
            .unwrap_or_default()
    }

    pub fn html(&self) -> String {
        self.parsed()
            .body_html(0)
            .map(|c| c.into_owned())
            .unwrap_or_default()
    }

    /// The header block as sent (up to the first blank line).
    pub fn raw_headers(&self) -> String {
        let s = String::from_utf8_lossy(&self.raw);
        s.split("\r\n\r\n").next().unwrap_or_default().to_owned()
    }

    /// Header names, in order, as sent.
    pub fn header_names(&self) -> Vec<String> {
        self.raw_headers()
            .lines()
            .filter(|l| !l.starts_with([' ', '\t']))
            .filter_map(|l| l.split_once(':').map(|(n, _)| n.to_ascii_lowercase()))
            .collect()
    }

    /// A header's raw value (unfolded), if present.
    pub fn header(&self, name: &str) -> Option<String> {
        self.parsed()
            .header_raw(name)
            .map(|v| v.replace("\r\n", "").trim().to_owned())
    }

    pub fn reply_to(&self) -> Option<String> {
        self.parsed()
            .reply_to()
            .and_then(|a| a.first())
            .and_then(|a| a.address())
            .map(str::to_owned)
    }
}

#[derive(Clone, Default)]
struct SinkHandler {
    received: Arc<Mutex<Vec<Mail>>>,
    from: String,
    to: Vec<String>,
    data: Vec<u8>,
    /// How long each message takes to be accepted (a slow relay).
    delay: Duration,
}

/// Connections served at once by a test SMTP server unless a test asks for more.
const SMTP_THREADS: u32 = 32;

impl mailin_embedded::Handler for SinkHandler {
    fn rcpt(&mut self, to: &str) -> mailin_embedded::Response {
        // Recipients whose local part starts with "bounce" do not exist: a real 550.
        if to.trim_start_matches('<').starts_with("bounce") {
            mailin_embedded::response::NO_MAILBOX
        } else {
            mailin_embedded::response::OK
        }
    }

    fn data_start(
        &mut self,
        _domain: &str,
        from: &str,
        _is8bit: bool,
        to: &[String],
    ) -> mailin_embedded::Response {
        self.from = from
            .trim_start_matches('<')
            .trim_end_matches('>')
            .to_owned();
        self.to = to.to_vec();
        self.data.clear();
        mailin_embedded::response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.data.extend_from_slice(buf);
        Ok(())
    }

    fn data_end(&mut self) -> mailin_embedded::Response {
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
        let mail = Mail {
            envelope_from: std::mem::take(&mut self.from),
            envelope_to: std::mem::take(&mut self.to),
            raw: std::mem::take(&mut self.data),
        };
        self.received.lock().unwrap().push(mail);
        mailin_embedded::response::OK
    }
}

/// A real SMTP server on 127.0.0.1; it runs until the test process ends.
#[derive(Clone)]
pub struct SmtpServer {
    pub port: u16,
    received: Arc<Mutex<Vec<Mail>>>,
    delay: Duration,
    /// Each SMTP connection holds a thread for its whole life (pooled ones too).
    threads: u32,
}

impl SmtpServer {
    /// A port nobody listens on yet; `start` opens it later (an SMTP server "down").
    pub fn reserve() -> SmtpServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        SmtpServer {
            port,
            received: Arc::default(),
            delay: Duration::ZERO,
            threads: SMTP_THREADS,
        }
    }

    /// A server that can hold `threads` connections at once (set before `start`): a worker with
    /// a high send concurrency opens more connections than its pool keeps.
    pub fn with_threads(mut self, threads: u32) -> SmtpServer {
        self.threads = threads;
        self
    }

    /// A server that takes `delay` to accept each message (set before `start`).
    pub fn with_delay(mut self, delay: Duration) -> SmtpServer {
        self.delay = delay;
        self
    }

    pub fn start_new() -> SmtpServer {
        let s = Self::reserve();
        s.start();
        s
    }

    pub fn start(&self) {
        self.start_with_ssl(mailin_embedded::SslConfig::None);
    }

    /// Starts it offering STARTTLS with the given certificate.
    pub fn start_with_ssl(&self, ssl: mailin_embedded::SslConfig) {
        rpec_notify::mail::install_tls_provider();
        let handler = SinkHandler {
            received: self.received.clone(),
            delay: self.delay,
            ..SinkHandler::default()
        };
        let mut server = mailin_embedded::Server::new(handler);
        server
            .with_name("smtp.test.example.org")
            .with_num_threads(self.threads)
            .with_addr(("127.0.0.1", self.port))
            .expect("the SMTP port");
        server.with_ssl(ssl).expect("the test certificate");
        std::thread::spawn(move || {
            let _ = server.serve();
        });
        // serve() binds on its thread: wait until it accepts.
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "the SMTP server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    pub fn received(&self) -> Vec<Mail> {
        self.received.lock().unwrap().clone()
    }
}

// ---------------------------------------------------------------------------------------------
// The worker under test.

pub struct TestApp {
    pub pool: PgPool,
    pub db_name: String,
    pub topology: Topology,
    pub smtp: SmtpServer,
    /// The public pages of the (first) worker.
    pub http: SocketAddr,
    /// Its `/metrics`, `/readyz` and `/healthz`.
    pub admin: SocketAddr,
    /// Kept so the directory lives as long as the worker that reads it.
    _config_dir: tempfile::TempDir,
    pub clock: Clock,
    pub settings: Settings,
    amqp: Connection,
    channel: Channel,
    workers: Vec<Worker>,
    /// Between the worker and PostgreSQL, when the test asked for it (`Options::proxy_database`).
    pub database_proxy: Option<FaultProxy>,
    /// Between the worker and RabbitMQ, when the test asked for it (`Options::proxy_broker`).
    pub broker_proxy: Option<FaultProxy>,
    /// Set once `stop` has removed the database and broker names.
    removed: bool,
    /// The (first) worker's bounce listener, when the test asked for one (`Options::bounces`).
    pub bounce_addr: Option<SocketAddr>,
}

/// One running worker.
struct Worker {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// Its admin listener (its /metrics tell how many rounds it has done).
    http: SocketAddr,
}

/// Both listeners of one worker, on free ports.
async fn listeners() -> (rpec_notify::worker::Listeners, SocketAddr, SocketAddr) {
    let public = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (http, admin_addr) = (public.local_addr().unwrap(), admin.local_addr().unwrap());
    (
        rpec_notify::worker::Listeners {
            public,
            admin,
            bounces: None,
        },
        http,
        admin_addr,
    )
}

/// Whether `path` is served on the admin listener rather than with the public pages.
fn is_admin_path(path: &str) -> bool {
    ["/metrics", "/readyz", "/healthz"]
        .iter()
        .any(|p| path.starts_with(p))
}

fn start_worker(
    settings: Settings,
    listener: rpec_notify::worker::Listeners,
    clock: Clock,
) -> Worker {
    let http = listener.admin.local_addr().expect("a bound listener");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(rpec_notify::worker::run_with_clock(
        settings,
        listener,
        async move {
            let _ = stopped.await;
        },
        clock,
    ));
    Worker { stop, task, http }
}

pub struct Options {
    pub smtp: Option<SmtpServer>,
    /// Laid over rpec.toml as the dev profile file.
    pub profile_toml: String,
    /// The worker's clock (the system clock when None).
    pub clock: Option<Clock>,
    /// Replaces the shipped regions.toml.
    pub regions_toml: Option<String>,
    /// Appended to the SMTP server's URL (`?tls=required`).
    pub url_suffix: Option<String>,
    /// The worker reaches PostgreSQL through a [`FaultProxy`] the test can cut.
    pub proxy_database: bool,
    /// The worker reaches RabbitMQ through a [`FaultProxy`] the test can cut.
    pub proxy_broker: bool,
    /// More environment for the worker's settings (added to, or replacing, the harness's own).
    pub env: Vec<(String, String)>,
    /// The database as an older version of the worker left it, for this one to migrate.
    pub older_database: Option<OlderDatabase>,
    /// VERP return paths at [`BOUNCE_ADDRESS`] and a bounce listener on a free port.
    pub bounces: bool,
}

/// `mail.bounce_address` of a test that asks for bounces.
pub const BOUNCE_ADDRESS: &str = "bounces@bounce.example.org";

/// A database migrated only up to `migrated_to` (the migrations of an older version), holding
/// what `statements` write (rows in the shape that version wrote them).
pub struct OlderDatabase {
    pub migrated_to: i64,
    pub statements: Vec<String>,
}

/// Applies `migrations/` up to and including version `up_to` only (through a copy of them:
/// the same files, so the worker's own migrator later finds their checksums unchanged).
async fn migrate_up_to(pool: &PgPool, up_to: i64) {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(manifest_dir().join("migrations")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let version: i64 = name.split('_').next().unwrap().parse().unwrap();
        if version <= up_to {
            std::fs::copy(&path, dir.path().join(&name)).unwrap();
        }
    }
    sqlx::migrate::Migrator::new(dir.path())
        .await
        .unwrap()
        .run(pool)
        .await
        .unwrap();
}

impl Default for Options {
    fn default() -> Self {
        Options {
            smtp: None,
            profile_toml: FAST_TIMINGS.into(),
            clock: None,
            regions_toml: None,
            url_suffix: None,
            proxy_database: false,
            proxy_broker: false,
            env: Vec::new(),
            older_database: None,
            bounces: false,
        }
    }
}

impl Options {
    /// The fast timings with a manual clock standing at `now`.
    pub fn at(now: &str) -> Options {
        Options {
            clock: Some(Clock::manual(utc(now))),
            ..Options::default()
        }
    }
}

/// The shipped regions.toml with one region's digest schedule replaced.
pub fn regions_with_digest(region_name: &str, schedule: &str) -> String {
    let text = std::fs::read_to_string(manifest_dir().join("config/regions.toml")).unwrap();
    let name_line = format!("name = \"{region_name}\"\n");
    assert!(text.contains(&name_line), "a region named {region_name}");
    text.replacen(
        &name_line,
        &format!("{name_line}digest_schedule = \"{schedule}\"\n"),
        1,
    )
}

pub fn utc(s: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(s)
        .expect("an RFC 3339 time")
        .with_timezone(&chrono::Utc)
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

pub async fn spawn_app_with(options: Options) -> TestApp {
    // Worker logs only when asked for (RUST_LOG=info cargo test ...).
    if std::env::var("RUST_LOG").is_ok() {
        rpec_notify::telemetry::init();
    }
    let id = Uuid::new_v4().simple().to_string();
    let db_name = format!("rpec_test_{id}");
    let mut admin = PgConnection::connect(&database_admin_url())
        .await
        .expect("PostgreSQL (TEST_DATABASE_URL)");
    sqlx::query(&format!("CREATE DATABASE \"{db_name}\""))
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.unwrap();
    let db_url = database_url_for(&db_name);
    if let Some(older) = &options.older_database {
        let pool = PgPool::connect(&db_url).await.unwrap();
        migrate_up_to(&pool, older.migrated_to).await;
        for statement in &older.statements {
            sqlx::query(statement).execute(&pool).await.unwrap();
        }
        pool.close().await;
    }
    let database_proxy = if options.proxy_database {
        Some(FaultProxy::start(host_port(&db_url, 5432)).await)
    } else {
        None
    };
    let broker_proxy = if options.proxy_broker {
        Some(FaultProxy::start(host_port(&amqp_url(), 5672)).await)
    } else {
        None
    };
    let worker_db_url = match &database_proxy {
        Some(p) => with_port(&db_url, p.port()),
        None => db_url.clone(),
    };
    let worker_amqp_url = match &broker_proxy {
        Some(p) => with_port(&amqp_url(), p.port()),
        None => amqp_url(),
    };

    let config_dir = tempfile::tempdir().unwrap();
    for f in ["rpec.toml", "regions.toml", "bank-holidays.toml"] {
        std::fs::copy(
            manifest_dir().join("config").join(f),
            config_dir.path().join(f),
        )
        .unwrap();
    }
    std::fs::write(config_dir.path().join("dev.toml"), &options.profile_toml).unwrap();
    if let Some(regions) = &options.regions_toml {
        std::fs::write(config_dir.path().join("regions.toml"), regions).unwrap();
    }

    let smtp = options.smtp.unwrap_or_else(SmtpServer::start_new);
    // Bound first, so that links in emails point at this worker.
    let (mut listener, http, admin) = listeners().await;
    let mut bounce_addr = None;
    if options.bounces {
        let bounces = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        bounce_addr = Some(bounces.local_addr().unwrap());
        listener.bounces = Some(bounces);
    }
    let topology = Topology::new(
        &format!("rpec.events.{id}"),
        &format!("rpec-notify.events.{id}"),
    );
    let mut env: HashMap<String, String> = [
        ("DATABASE_URL", worker_db_url),
        ("RPEC_AMQP_URL", worker_amqp_url),
        (
            "RPEC_SMTP_URL",
            smtp.url() + options.url_suffix.as_deref().unwrap_or_default(),
        ),
        ("RPEC_EXCHANGE", topology.exchange.clone()),
        ("RPEC_QUEUE", topology.queue.clone()),
        ("RPEC_CONFIG_DIR", config_dir.path().display().to_string()),
        (
            "RPEC_TEMPLATES_DIR",
            manifest_dir().join("templates").display().to_string(),
        ),
        ("RPEC_PUBLIC_URL", format!("http://{http}")),
        ("RPEC_TOKEN_SECRET", TEST_TOKEN_SECRET.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    if let Some(addr) = bounce_addr {
        env.insert("RPEC_MAIL__BOUNCE_ADDRESS".into(), BOUNCE_ADDRESS.into());
        env.insert("RPEC_BOUNCE_SMTP_ADDR".into(), addr.to_string());
    }
    env.extend(options.env.iter().cloned());
    let settings = Settings::load_from(&env).expect("test settings");

    let amqp = topology::connect(&amqp_url(), "rpec-notify tests")
        .await
        .expect("RabbitMQ (TEST_AMQP_URL)");
    let clock = options.clock.unwrap_or_default();
    let worker = start_worker(settings.clone(), listener, clock.clone());
    // The worker declares the exchange, its queues and bindings itself (the contract says so):
    // the test publishes only once they are there.
    wait_for_topology(&amqp, &topology).await;
    let channel = amqp.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let pool = PgPool::connect(&db_url).await.unwrap();
    // HTTP is served once migrations are applied and every task has started.
    wait_healthy(format!("http://{admin}/healthz")).await;
    TestApp {
        pool,
        db_name,
        topology,
        smtp,
        http,
        admin,
        _config_dir: config_dir,
        clock,
        settings,
        amqp,
        channel,
        workers: vec![worker],
        database_proxy,
        broker_proxy,
        removed: false,
        bounce_addr,
    }
}

/// Waits until the exchange and every queue of `topology` exist on the broker. A passive
/// declaration of something missing closes its channel, so each look takes a fresh one.
pub async fn wait_for_topology(amqp: &Connection, topology: &Topology) {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    eventually(
        Duration::from_secs(30),
        "the worker to declare its exchange and queues",
        || async {
            let ch = amqp.create_channel().await.ok()?;
            let exchange = ExchangeDeclareOptions {
                passive: true,
                ..ExchangeDeclareOptions::default()
            };
            ch.exchange_declare(
                &topology.exchange,
                lapin::ExchangeKind::Topic,
                exchange,
                FieldTable::default(),
            )
            .await
            .ok()?;
            for q in topology.queues() {
                ch.queue_declare(q, passive, FieldTable::default())
                    .await
                    .ok()?;
            }
            let _ = ch.close(200, "seen").await;
            Some(())
        },
    )
    .await;
}

/// The host and port a URL names (`default` when it names no port), resolved for a proxy.
fn host_port(url: &str, default: u16) -> SocketAddr {
    let u = url::Url::parse(url).expect("a URL");
    let host = u.host_str().unwrap_or("127.0.0.1");
    let host = if host == "localhost" {
        "127.0.0.1"
    } else {
        host
    };
    format!("{host}:{}", u.port().unwrap_or(default))
        .parse()
        .expect("a numeric host in the test URL")
}

/// `url` pointing at 127.0.0.1:`port` (a proxy) instead.
fn with_port(url: &str, port: u16) -> String {
    let mut u = url::Url::parse(url).expect("a URL");
    u.set_host(Some("127.0.0.1")).unwrap();
    u.set_port(Some(port)).unwrap();
    u.to_string()
}

pub fn database_url_for(db_name: &str) -> String {
    let admin = database_admin_url();
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
    format!("{base}/{db_name}")
}

/// A metric's value from the /metrics of the worker at `base` (0 when absent).
pub async fn metric_at(base: &str, name_and_labels: &str) -> f64 {
    let body = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("the worker's /metrics")
        .text()
        .await
        .expect("the worker's /metrics");
    body.lines()
        .find_map(|l| {
            l.strip_prefix(name_and_labels)
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// Waits until each worker at `bases` has completed two more scheduler rounds, then two more
/// sender rounds (see [`TestApp::settle`]).
pub async fn settle_workers(bases: &[String]) {
    for counter in ["rpec_scheduler_rounds_total", "rpec_sender_rounds_total"] {
        for base in bases {
            let start = metric_at(base, counter).await;
            eventually(
                Duration::from_secs(30),
                &format!("two more {counter} at {base}"),
                || async { (metric_at(base, counter).await >= start + 2.0).then_some(()) },
            )
            .await;
        }
    }
}

/// Waits until a worker answers `GET /healthz` at `url` (it serves HTTP once migrations are
/// applied and every task has started).
pub async fn wait_healthy(url: String) {
    eventually(
        Duration::from_secs(30),
        "the worker to answer /healthz",
        || async {
            reqwest::get(url.as_str())
                .await
                .ok()
                .filter(|r| r.status() == 200)
        },
    )
    .await;
}

/// Polls `f` every 50 ms until it returns Some, or panics after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A dead-lettered message.
pub struct DeadLetter {
    pub error: String,
    pub detail: String,
    pub body: Vec<u8>,
    /// delivery_mode 2: it survives a broker restart.
    pub persistent: bool,
}

fn header_string(headers: &FieldTable, name: &str) -> String {
    match headers.inner().get(name) {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// Delivers `raw` over SMTP to a bounce listener at `addr`, from the null sender (as bounces
/// come) to `rcpt`: Ok when the listener accepted it, its reply otherwise.
pub async fn send_bounce(addr: SocketAddr, rcpt: &str, raw: &[u8]) -> Result<(), String> {
    let relay =
        rpec_notify::mail::Relay::new(&format!("smtp://{addr}"), 1, Duration::from_secs(10), None)
            .expect("a client for the bounce listener");
    relay
        .send_raw("", &[rcpt.to_owned()], raw, Duration::from_secs(10))
        .await
        .map_err(|e| e.text().to_owned())
}

impl TestApp {
    /// The retention sweep with the worker's settings and clock, on a pool of its own (as the
    /// worker's is), for tests that sweep when they choose.
    pub async fn sweeper(&self) -> Sweeper {
        Sweeper {
            pool: rpec_notify::db::connect(&self.settings)
                .await
                .expect("a pool for the sweep"),
            clock: self.clock.clone(),
            retention: self.settings.retention,
        }
    }

    /// Publishes raw bytes with routing key `key`, persistent, confirmed.
    pub async fn publish_raw(&self, key: &str, body: &[u8]) {
        let props = BasicProperties::default().with_delivery_mode(2);
        let confirm = self
            .channel
            .basic_publish(
                &self.topology.exchange,
                key,
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack());
    }

    pub async fn publish(&self, event: &Value) {
        let key = event["type"]
            .as_str()
            .unwrap_or("contact.submitted")
            .to_owned();
        self.publish_raw(&key, &serde_json::to_vec(event).unwrap())
            .await;
    }

    /// Waits until the SMTP server holds at least `n` messages; returns them all.
    pub async fn mails(&self, n: usize) -> Vec<Mail> {
        let smtp = self.smtp.clone();
        eventually(Duration::from_secs(20), &format!("{n} email(s)"), || {
            let m = smtp.received();
            async move { (m.len() >= n).then_some(m) }
        })
        .await
    }

    /// Waits for `n` dead letters, taking them off the dead-letter queue.
    pub async fn dead_letters(&self, n: usize) -> Vec<DeadLetter> {
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while out.len() < n {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {n} dead letters (got {})",
                out.len()
            );
            match self
                .channel
                .basic_get(&self.topology.dead_letter, BasicGetOptions::default())
                .await
                .unwrap()
            {
                Some(msg) => {
                    let headers = msg
                        .delivery
                        .properties
                        .headers()
                        .clone()
                        .unwrap_or_default();
                    out.push(DeadLetter {
                        error: header_string(&headers, "x-rpec-error"),
                        detail: header_string(&headers, "x-rpec-error-detail"),
                        body: msg.delivery.data.clone(),
                        persistent: msg.delivery.properties.delivery_mode() == &Some(2),
                    });
                    msg.delivery.ack(BasicAckOptions::default()).await.unwrap();
                }
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        out
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        // Health and metrics are on the admin listener, the pages on the public one.
        let addr = if is_admin_path(path) {
            self.admin
        } else {
            self.http
        };
        let r = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// A counter's value from /metrics (0 when absent).
    pub async fn metric(&self, name_and_labels: &str) -> f64 {
        metric_at(&format!("http://{}", self.admin), name_and_labels).await
    }

    /// Lets every worker of the test complete two more scheduler rounds, then two more sender
    /// rounds (counted on each one's /metrics). Whatever was due when this was called has then
    /// been handed to the outbox and sent: a round already under way may have looked before
    /// the call, but the second began after it, and the sender's rounds began after the
    /// scheduler's had ended. A "nothing was sent" check made after this can fail.
    pub async fn settle(&self) {
        let bases: Vec<String> = self
            .workers
            .iter()
            .map(|w| format!("http://{}", w.http))
            .collect();
        settle_workers(&bases).await;
    }

    /// POSTs `body` (form-encoded) to `path`; returns the status and the page.
    pub async fn post(&self, path: &str, body: &str) -> (u16, String) {
        let r = reqwest::Client::new()
            .post(format!("http://{}{path}", self.http))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// Waits until the worker has committed the effects of event `id`.
    pub async fn processed(&self, id: &str) {
        let id = Uuid::parse_str(id).unwrap();
        eventually(
            Duration::from_secs(20),
            "the event to be handled",
            || async {
                let (n,): (i64,) =
                    sqlx::query_as("SELECT count(*) FROM processed_events WHERE event_id = $1")
                        .bind(id)
                        .fetch_one(&self.pool)
                        .await
                        .unwrap();
                (n == 1).then_some(())
            },
        )
        .await;
    }

    /// Waits until the outbox holds emails and every one of them is recorded as sent.
    pub async fn all_sent(&self) {
        eventually(
            Duration::from_secs(20),
            "every email recorded as sent",
            || async {
                let rows = self.outbox().await;
                (!rows.is_empty() && rows.iter().all(|r| r.1 == "sent")).then_some(())
            },
        )
        .await;
    }

    /// Outbox rows of `kind` in each status, as "status:count" sorted by status.
    pub async fn outbox_of(&self, kind: &str) -> Vec<String> {
        sqlx::query_scalar(
            "SELECT status || ':' || count(*) FROM outbox WHERE kind = $1
             GROUP BY status ORDER BY status",
        )
        .bind(kind)
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    /// How many rows the outbox holds, of every kind and status.
    pub async fn outbox_len(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Outbox rows as (kind, status, attempts, last_error).
    pub async fn outbox(&self) -> Vec<(String, String, i32, Option<String>)> {
        sqlx::query_as("SELECT kind, status, attempts, last_error FROM outbox ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }

    /// Starts one more worker on the same database, queue, relay and clock.
    pub async fn add_worker(&mut self) {
        let (listener, _, addr) = listeners().await;
        self.workers.push(start_worker(
            self.settings.clone(),
            listener,
            self.clock.clone(),
        ));
        wait_healthy(format!("http://{addr}/healthz")).await;
    }

    /// Moves the workers' clock.
    pub fn set_time(&self, now: &str) {
        self.clock.set(utc(now));
    }

    /// Rows of a query with one text column, for quick assertions.
    pub async fn strings(&self, sql: &str) -> Vec<String> {
        sqlx::query_scalar(sql).fetch_all(&self.pool).await.unwrap()
    }

    /// Stops the workers gracefully and removes the database, queues and exchanges.
    pub async fn stop(mut self) {
        for worker in self.workers.drain(..) {
            let _ = worker.stop.send(());
            let result = tokio::time::timeout(Duration::from_secs(15), worker.task).await;
            let result = result
                .expect("the worker stops within 15 s")
                .expect("the worker task");
            result.expect("the worker exits cleanly");
        }
        let _ = self.amqp.close(200, "done").await;
        self.pool.close().await;
        remove_test_resources(&self.db_name).await;
        self.removed = true;
    }
}

/// A test that fails (panics) never reaches `stop`: its database and broker names are removed
/// here, so failed runs do not pile up on a shared machine.
impl Drop for TestApp {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        let db_name = self.db_name.clone();
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(remove_test_resources(&db_name));
            }
        })
        .join();
    }
}

/// Drops a test's database (`rpec_test_{id}`) and deletes its queues and exchanges.
pub async fn remove_test_resources(db_name: &str) {
    if let Ok(mut admin) = PgConnection::connect(&database_admin_url()).await {
        let _ = sqlx::query(&format!(
            "DROP DATABASE IF EXISTS \"{db_name}\" WITH (FORCE)"
        ))
        .execute(&mut admin)
        .await;
    }
    if let Some(id) = db_name.strip_prefix("rpec_test_") {
        delete_broker_names(id).await;
    }
}

/// A contact.submitted event with a fresh id; `data` fields override the defaults.
pub fn contact_event(data: Value) -> Value {
    let mut d = serde_json::json!({
        "enquiry_id": format!("enq-{}", Uuid::new_v4().simple()),
        "name": "Sam Okafor",
        "email": "s.okafor@school.example.org",
        "organisation": "Riverside Academy",
        "setting": "school",
        "topic": "training",
        "message": "Please tell us about training in our region."
    });
    for (k, v) in data.as_object().cloned().unwrap_or_default() {
        if v.is_null() {
            d.as_object_mut().unwrap().remove(&k);
        } else {
            d[k] = v;
        }
    }
    serde_json::json!({
        "id": Uuid::new_v4().to_string(),
        "type": "contact.submitted",
        "version": 1,
        "occurred_at": "2024-10-03T10:15:00Z",
        "data": d
    })
}

/// One of the example events the repository carries (`examples/events/`).
pub fn example(name: &str) -> Value {
    let path = manifest_dir().join("examples/events").join(name);
    serde_json::from_str(
        &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap()
}

impl Mail {
    /// The text of the first calendar attachment, if any.
    pub fn calendar(&self) -> Option<String> {
        let parsed = self.parsed();
        let part = parsed.attachments().find(|p| {
            use mail_parser::MimeHeaders;
            p.content_type()
                .is_some_and(|c| c.ctype() == "text" && c.subtype() == Some("calendar"))
        })?;
        Some(String::from_utf8_lossy(part.contents()).into_owned())
    }
}

/// A session.scheduled (or .updated) event.
pub fn session_event(
    kind: &str,
    session_id: &str,
    starts: &str,
    ends: &str,
    region: Option<&str>,
) -> Value {
    serde_json::json!({
        "id": Uuid::new_v4().to_string(),
        "type": kind,
        "version": 1,
        "occurred_at": chrono::Utc::now().to_rfc3339(),
        "data": {
            "session_id": session_id,
            "title": "Prevent in education: training for designated safeguarding leads (DSLs)",
            "audience": "Designated safeguarding leads",
            "region": region,
            "starts_at": starts,
            "ends_at": ends,
            "registration_url": format!("https://www.eventbrite.co.uk/e/{session_id}"),
            "joining_url": format!("https://teams.example.org/join/{session_id}")
        }
    })
}

pub fn registration_event(registration_id: &str, session_id: &str, email: &str) -> Value {
    serde_json::json!({
        "id": Uuid::new_v4().to_string(),
        "type": "registration.created",
        "version": 1,
        "occurred_at": chrono::Utc::now().to_rfc3339(),
        "data": {
            "registration_id": registration_id,
            "session_id": session_id,
            "name": format!("Registrant {registration_id}"),
            "email": email
        }
    })
}

pub fn simple_event(kind: &str, data: Value) -> Value {
    serde_json::json!({
        "id": Uuid::new_v4().to_string(),
        "type": kind,
        "version": 1,
        "occurred_at": chrono::Utc::now().to_rfc3339(),
        "data": data
    })
}

/// A planned reminder or briefing: (kind, registration, offset, due, status).
pub type Planned = (
    String,
    Option<String>,
    String,
    chrono::DateTime<chrono::Utc>,
    String,
);

impl TestApp {
    /// Waits until `n` events have been handled (committed).
    pub async fn handled(&self, n: i64) {
        eventually(
            Duration::from_secs(30),
            &format!("{n} events handled"),
            || async {
                let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM processed_events")
                    .fetch_one(&self.pool)
                    .await
                    .unwrap();
                (count >= n).then_some(())
            },
        )
        .await;
    }

    /// Planned reminders and briefings of a session: (kind, registration, offset, due, status).
    pub async fn planned(&self, session_id: &str) -> Vec<Planned> {
        sqlx::query_as(
            "SELECT kind, registration_id, offset_label, due_at, status FROM scheduled_emails
             WHERE session_id = $1 ORDER BY kind, registration_id, due_at",
        )
        .bind(session_id)
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    /// Received emails whose subject starts with `prefix`.
    pub fn mails_starting(&self, prefix: &str) -> Vec<Mail> {
        self.smtp
            .received()
            .into_iter()
            .filter(|m| m.subject().starts_with(prefix))
            .collect()
    }

    /// Waits for exactly `n` emails whose subject starts with `prefix`, then lets every worker
    /// settle (two more rounds of its scheduler and sender) to see that no more come.
    pub async fn exactly(&self, prefix: &str, n: usize) -> Vec<Mail> {
        eventually(
            Duration::from_secs(20),
            &format!("{n} emails '{prefix}...'"),
            || async { (self.mails_starting(prefix).len() >= n).then_some(()) },
        )
        .await;
        self.settle().await;
        let got = self.mails_starting(prefix);
        assert_eq!(
            got.len(),
            n,
            "emails '{prefix}...': {:?}",
            got.iter().map(|m| m.subject()).collect::<Vec<_>>()
        );
        got
    }
}

/// Deletes the queues and exchanges named after test id `id` (`rpec.events.{id}`, ...).
pub async fn delete_broker_names(id: &str) {
    let Ok(conn) = topology::connect(&amqp_url(), "rpec-notify tests").await else {
        return;
    };
    if let Ok(ch) = conn.create_channel().await {
        let queue = format!("rpec-notify.events.{id}");
        for q in [
            queue.clone(),
            format!("{queue}.retry"),
            format!("{queue}.dead-letter"),
        ] {
            let _ = ch.queue_delete(&q, QueueDeleteOptions::default()).await;
        }
        for e in [format!("rpec.events.{id}"), format!("{queue}.dead-letter")] {
            let _ = ch
                .exchange_delete(&e, ExchangeDeleteOptions::default())
                .await;
        }
    }
    let _ = conn.close(200, "done").await;
}

// ---------------------------------------------------------------------------------------------
// Where personal data is: erasure and retention tests search every table for a person.

/// Every (table, column) in the public schema that can hold text: text and character types,
/// json and jsonb, and arrays (text[] recipients), in tables and views alike.
pub async fn text_columns(pool: &PgPool) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT c.table_name::text, c.column_name::text
         FROM information_schema.columns c
         JOIN information_schema.tables t
           ON t.table_schema = c.table_schema AND t.table_name = c.table_name
         WHERE c.table_schema = 'public'
           AND (c.data_type IN ('text', 'character varying', 'character', 'json', 'jsonb', 'ARRAY')
                OR c.udt_name IN ('citext'))
         ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Where `needle` occurs (case-insensitively) in any text column: (table, column, rows).
pub async fn find_everywhere(pool: &PgPool, needle: &str) -> Vec<(String, String, i64)> {
    let mut found = Vec::new();
    for (table, column) in text_columns(pool).await {
        let (n,): (i64,) = sqlx::query_as(&format!(
            "SELECT count(*) FROM \"{table}\" WHERE strpos(lower(\"{column}\"::text), $1) > 0"
        ))
        .bind(needle.to_lowercase())
        .fetch_one(pool)
        .await
        .unwrap();
        if n > 0 {
            found.push((table, column, n));
        }
    }
    found
}

/// The tables (not views: they hold nothing of their own) where [`find_everywhere`] finds
/// `needle`, sorted.
pub async fn tables_holding(pool: &PgPool, needle: &str) -> Vec<String> {
    let views: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.views WHERE table_schema = 'public'",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut tables: Vec<String> = find_everywhere(pool, needle)
        .await
        .into_iter()
        .map(|(table, _, _)| table)
        .filter(|t| !views.contains(t))
        .collect();
    tables.sort();
    tables.dedup();
    tables
}

/// Turns on the injected handler bug (the `handle::panic` fault point) for events whose id
/// starts with `deadbeef` or `cafef00d`, once per test process: tests run side by side, and one
/// of them "fixes" the `cafef00d` bug later (see `admin.rs`), which a second set-up must not undo.
#[cfg(feature = "failpoints")]
pub fn inject_handler_bug() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| fail::cfg("handle::panic", "return(deadbeef|cafef00d)").unwrap());
}
